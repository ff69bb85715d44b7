#include "utf8.hpp"

namespace gpt2 {

std::string replace_invalid_utf8(std::string_view bytes) {
  static constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD
  std::string out;
  out.reserve(bytes.size());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char lead = bytes[i];
    if (lead < 0x80) {
      out += char(lead);
      i++;
      continue;
    }
    // The lead byte fixes how many continuation bytes follow and narrows the range of
    // the first one; that narrowing is what rejects overlongs (E0 80..9F, F0 80..8F),
    // surrogates (ED A0..BF) and code points past U+10FFFF (F4 90..BF).
    int need = 0;
    unsigned char lower = 0x80, upper = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
      need = 1;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      need = 2;
      if (lead == 0xE0) lower = 0xA0;
      if (lead == 0xED) upper = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      need = 3;
      if (lead == 0xF0) lower = 0x90;
      if (lead == 0xF4) upper = 0x8F;
    } else {
      out += kReplacement;
      i++;
      continue;
    }
    size_t j = i + 1;
    bool complete = true;
    for (int k = 0; k < need; k++, j++) {
      if (j >= n || (unsigned char)bytes[j] < lower || (unsigned char)bytes[j] > upper) {
        complete = false;
        break;
      }
      lower = 0x80;
      upper = 0xBF;
    }
    if (complete) {
      out.append(bytes.substr(i, j - i));
    } else {
      // One U+FFFD for the lead and the continuations accepted so far; the byte that
      // broke the sequence is looked at again as a possible lead (WHATWG "prepend").
      out += kReplacement;
    }
    i = j;
  }
  return out;
}

}  // namespace gpt2
