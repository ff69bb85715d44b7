// GPT-2's byte-level BPE, matching the JS reference encoder (npm gpt-3-encoder 1.1.4,
// a port of openai/gpt-2 encoder.py) id for id:
//  1. the input bytes are repaired to valid UTF-8 the way Node decodes a Buffer, since
//     the JS encoder only ever sees a JS string (src/utf8.hpp);
//  2. a regex splits the text into pre-tokens (words with their leading space, number
//     runs, punctuation runs, whitespace runs);
//  3. each pre-token's UTF-8 bytes become one symbol per byte via GPT-2's
//     byte-to-unicode table, and the lowest-ranked adjacent pair in vocab.bpe is merged
//     until none is left; the final symbols are looked up in encoder.json.
// Results per pre-token are cached, as the JS does, which is what makes it fast: text
// is Zipfian, so nearly every pre-token is a cache hit.
#include "tokenizer.hpp"

#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <shared_mutex>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>
#include <pcre2.h>

#include "error.hpp"
#include "utf8.hpp"

namespace gpt2 {
namespace {

// The JS regex is /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/u.
// PCRE2's \s is not JavaScript's (it adds U+0085 and U+180E, lacks U+FEFF), so the JS
// set is spelled out. JS (Node 20, Unicode 17) also knows letters and digits that
// PCRE2 10.42 (Unicode 14) does not; they are listed so the split is the same on every
// machine whatever its libpcre2's Unicode version (list: node's /\p{L}/u minus PCRE2's).
constexpr const char* kJsSpace =
    R"(\t\n\x{0B}\f\r\x{20}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F})"
    R"(\x{3000}\x{FEFF})";
constexpr const char* kLettersAfterUnicode14 =
    R"(\x{88F}\x{C5C}\x{CDC}\x{1C89}-\x{1C8A}\x{A7CB}-\x{A7CF}\x{A7D2}\x{A7D4})"
    R"(\x{A7DA}-\x{A7DC}\x{A7F1}\x{105C0}-\x{105F3}\x{10940}-\x{10959})"
    R"(\x{10D4A}-\x{10D65}\x{10D6F}-\x{10D85}\x{10EC2}-\x{10EC7}\x{1123F}-\x{11240})"
    R"(\x{11380}-\x{11389}\x{1138B}\x{1138E}\x{11390}-\x{113B5}\x{113B7}\x{113D1})"
    R"(\x{113D3}\x{11BC0}-\x{11BE0}\x{11DB0}-\x{11DDB}\x{11F02}\x{11F04}-\x{11F10})"
    R"(\x{11F12}-\x{11F33}\x{1342F}\x{13441}-\x{13446}\x{13460}-\x{143FA})"
    R"(\x{16100}-\x{1611D}\x{16D40}-\x{16D6C}\x{16EA0}-\x{16EB8}\x{16EBB}-\x{16ED3})"
    R"(\x{16FF2}-\x{16FF3}\x{187F8}-\x{187FF}\x{18CFF}\x{18D09}-\x{18D1E})"
    R"(\x{18D80}-\x{18DF2}\x{1B132}\x{1B155}\x{1DF25}-\x{1DF2A}\x{1E030}-\x{1E06D})"
    R"(\x{1E4D0}-\x{1E4EB}\x{1E5D0}-\x{1E5ED}\x{1E5F0}\x{1E6C0}-\x{1E6DE})"
    R"(\x{1E6E0}-\x{1E6E2}\x{1E6E4}-\x{1E6E5}\x{1E6E7}-\x{1E6ED}\x{1E6F0}-\x{1E6F4})"
    R"(\x{1E6FE}-\x{1E6FF}\x{2B739}-\x{2B73F}\x{2CEA2}-\x{2CEAD}\x{2EBF0}-\x{2EE5D})"
    R"(\x{31350}-\x{33479})";
constexpr const char* kNumbersAfterUnicode14 =
    R"(\x{10D40}-\x{10D49}\x{116D0}-\x{116E3}\x{11BF0}-\x{11BF9}\x{11DE0}-\x{11DE9})"
    R"(\x{11F50}-\x{11F59}\x{16130}-\x{16139}\x{16D70}-\x{16D79}\x{16FF4}-\x{16FF6})"
    R"(\x{1CCF0}-\x{1CCF9}\x{1D2C0}-\x{1D2D3}\x{1E4F0}-\x{1E4F9}\x{1E5F1}-\x{1E5FA})";

std::string pretokenizer_pattern() {
  const std::string s = kJsSpace;
  const std::string l = std::string(R"(\p{L})") + kLettersAfterUnicode14;
  const std::string n = std::string(R"(\p{N})") + kNumbersAfterUnicode14;
  return "'s|'t|'re|'ve|'m|'ll|'d| ?[" + l + "]+| ?[" + n + "]+| ?[^" + s + l + n + "]+|[" +
         s + "]+(?![^" + s + "])|[" + s + "]+";
}

// Heterogeneous lookup: probe maps with a string_view without building a std::string.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

void append_utf8(std::string& out, unsigned cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else {  // byte symbols are all below U+0800
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  }
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open tokenizer file ", path, ": ", std::strerror(errno));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Bounds memory on corpora with millions of distinct words; past it, rare words are
// simply re-merged each time.
constexpr size_t kMaxCacheEntries = size_t(1) << 20;

}  // namespace

struct Tokenizer::Impl {
  std::string encoder_path, vocab_path;
  // GPT-2's byte-to-unicode table: printable Latin-1 bytes stand for themselves, the
  // other 68 bytes for U+0100.., so every symbol is printable and space-free.
  std::array<std::string, 256> byte_symbol;
  std::array<int, 324> symbol_byte;  // code point -> byte, -1 if not a byte symbol
  StringMap<int> encoder;             // symbol string -> id
  std::vector<std::string> decoder;   // id -> raw bytes
  // The JS looks merge ranks up as bpe_ranks[[first, second]], which JavaScript keys
  // by the string "first,second"; keying ours the same way keeps its collisions
  // (e.g. ['",', '"'] gets the rank of ['"', ',"']) and hence its output.
  StringMap<int> ranks;
  pcre2_code* regex = nullptr;

  mutable std::shared_mutex cache_mutex;
  mutable StringMap<std::vector<int>> cache;  // pre-token bytes -> ids

  void build_byte_table();
  void load_encoder();
  void load_merges();
  void compile_regex();
  std::vector<int> bpe(std::string_view piece) const;
};

void Tokenizer::Impl::build_byte_table() {
  symbol_byte.fill(-1);
  unsigned next = 256;
  for (unsigned b = 0; b < 256; b++) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const unsigned cp = printable ? b : next++;
    append_utf8(byte_symbol[b], cp);
    symbol_byte[cp] = int(b);
  }
}

void Tokenizer::Impl::load_encoder() {
  const std::string text = read_text_file(encoder_path);
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(encoder_path, " is not valid JSON (", e.what(), "); fetch it again with data/fetch_tokenizer.sh");
  }
  if (!json.is_object() || json.empty())
    fail(encoder_path, ": expected a non-empty JSON object mapping token strings to ids, found ",
         json.is_object() ? "an empty object" : json.type_name());
  const size_t n = json.size();
  decoder.assign(n, std::string());
  std::vector<bool> seen(n, false);
  for (const auto& [key, value] : json.items()) {
    if (!value.is_number_integer())
      fail(encoder_path, ": key \"", key, "\" maps to ", value.dump(), "; expected an integer id");
    const int64_t id = value.get<int64_t>();
    if (id < 0 || size_t(id) >= n || seen[id])
      fail(encoder_path, ": key \"", key, "\" has id ", id, "; the ", n,
           " ids must be 0..", n - 1, ", each used once");
    if (key.empty()) fail(encoder_path, ": id ", id, " has an empty token string");
    seen[id] = true;
    // Keys are valid UTF-8 (the JSON parser checks); each code point must be a byte symbol.
    std::string& bytes = decoder[id];
    for (size_t i = 0; i < key.size();) {
      const unsigned char c = key[i];
      const int len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
      unsigned cp = len == 1 ? c : len == 2 ? (c & 0x1Fu) << 6 | (key[i + 1] & 0x3Fu) : ~0u;
      if (cp >= symbol_byte.size() || symbol_byte[cp] < 0)
        fail(encoder_path, ": key \"", key, "\" (id ", id, ") contains '", key.substr(i, len),
             "', which is not one of GPT-2's 256 byte symbols");
      bytes += char(symbol_byte[cp]);
      i += len;
    }
    encoder.emplace(key, int(id));
  }
}

void Tokenizer::Impl::load_merges() {
  const std::string text = read_text_file(vocab_path);
  if (text.empty())
    fail(vocab_path, " is empty; expected a '#version: 0.2' line, then one merge per line");
  std::istringstream lines(text);
  std::string line;
  std::getline(lines, line);
  if (line.rfind("#version", 0) != 0)
    fail(vocab_path, " line 1: expected the '#version: 0.2' header, found '", line, "'");
  int rank = 0;
  for (int number = 2; std::getline(lines, line); number++) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::istringstream fields(line);
    std::string first, second, extra;
    if (!(fields >> first >> second) || (fields >> extra))
      fail(vocab_path, " line ", number, ": expected two symbols separated by a space, found '",
           line, "'");
    const std::string merged = first + second;
    for (const std::string& symbol : {first, second})
      if (encoder.find(symbol) == encoder.end())
        fail(vocab_path, " line ", number, ": merge '", line, "' uses '", symbol,
             "', which is not a token in ", encoder_path);
    if (encoder.find(merged) == encoder.end())
      fail(vocab_path, " line ", number, ": merge '", line, "' makes '", merged,
           "', which is not a token in ", encoder_path);
    // Later duplicates overwrite earlier ranks, as the JS object assignment does.
    ranks[first + "," + second] = rank++;
  }
}

void Tokenizer::Impl::compile_regex() {
  const std::string pattern = pretokenizer_pattern();
  int code = 0;
  PCRE2_SIZE offset = 0;
  // ANCHORED: every character starts some alternative, so JS's scan always matches at
  // the previous match's end; anchoring makes a gap an error instead of skipped text.
  regex = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(),
                        PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &code, &offset, nullptr);
  if (!regex) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(code, message, sizeof message);
    fail("cannot compile the GPT-2 pre-tokenizer regex at offset ", offset, ": ",
         reinterpret_cast<const char*>(message), " (is libpcre2-8 built with Unicode support?)");
  }
  pcre2_jit_compile(regex, PCRE2_JIT_COMPLETE);  // optional: pcre2_match falls back if absent
}

std::vector<int> Tokenizer::Impl::bpe(std::string_view piece) const {
  std::vector<std::string> word;
  word.reserve(piece.size());
  for (unsigned char b : piece) word.push_back(byte_symbol[b]);
  std::string key;
  while (word.size() > 1) {
    // Ties go to the last pair, as in the JS (it overwrites minPairs[rank]); only
    // pairs colliding under the "first,second" key can tie with different content.
    int best = -1;
    size_t at = 0;
    for (size_t i = 0; i + 1 < word.size(); i++) {
      key.assign(word[i]).append(",").append(word[i + 1]);
      const auto it = ranks.find(key);
      if (it != ranks.end() && (best < 0 || it->second <= best)) {
        best = it->second;
        at = i;
      }
    }
    if (best < 0) break;
    const std::string first = word[at], second = word[at + 1];
    std::vector<std::string> merged;
    merged.reserve(word.size());
    for (size_t i = 0; i < word.size();) {
      if (i + 1 < word.size() && word[i] == first && word[i + 1] == second) {
        merged.push_back(first + second);
        i += 2;
      } else {
        merged.push_back(std::move(word[i++]));
      }
    }
    word.swap(merged);
  }
  std::vector<int> ids;
  ids.reserve(word.size());
  for (const std::string& symbol : word) {
    const auto it = encoder.find(symbol);
    // Only a "first,second" key collision can build a symbol that is not a token.
    if (it == encoder.end())
      fail("BPE of '", piece, "' made the symbol '", symbol, "', which is not a token in ",
           encoder_path, " (", vocab_path, " and ", encoder_path, " do not belong together)");
    ids.push_back(it->second);
  }
  return ids;
}

Tokenizer::Tokenizer(const std::string& encoder_json, const std::string& vocab_bpe)
    : impl_(new Impl) {
  try {
    impl_->encoder_path = encoder_json;
    impl_->vocab_path = vocab_bpe;
    impl_->build_byte_table();
    impl_->load_encoder();
    impl_->load_merges();
    impl_->compile_regex();
  } catch (...) {
    delete impl_;
    throw;
  }
}

Tokenizer::~Tokenizer() {
  if (!impl_) return;
  pcre2_code_free(impl_->regex);
  delete impl_;
}

Tokenizer::Tokenizer(Tokenizer&& other) noexcept : impl_(other.impl_) { other.impl_ = nullptr; }

int Tokenizer::vocab_size() const { return int(impl_->decoder.size()); }

std::vector<int> Tokenizer::encode(std::string_view input) const {
  const std::string text = replace_invalid_utf8(input);
  const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(impl_->regex, nullptr);
  if (!match) fail("out of memory allocating regex match data");
  std::vector<int> ids;
  ids.reserve(text.size() / 3);
  StringMap<std::vector<int>> fresh;  // misses, added to the shared cache at the end
  try {
    std::shared_lock lock(impl_->cache_mutex);
    for (size_t at = 0; at < text.size();) {
      const int rc = pcre2_match(impl_->regex, subject, text.size(), at, PCRE2_NO_UTF_CHECK,
                                 match, nullptr);
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof message);
        fail("the GPT-2 pre-tokenizer regex failed at byte ", at, ": ",
             reinterpret_cast<const char*>(message));
      }
      const size_t end = pcre2_get_ovector_pointer(match)[1];
      const std::string_view piece(text.data() + at, end - at);
      at = end;
      auto hit = impl_->cache.find(piece);
      if (hit == impl_->cache.end()) {
        hit = fresh.find(piece);
        if (hit == fresh.end()) hit = fresh.emplace(piece, impl_->bpe(piece)).first;
      }
      ids.insert(ids.end(), hit->second.begin(), hit->second.end());
    }
  } catch (...) {
    pcre2_match_data_free(match);
    throw;
  }
  pcre2_match_data_free(match);
  if (!fresh.empty()) {
    std::unique_lock lock(impl_->cache_mutex);
    for (auto& entry : fresh) {
      if (impl_->cache.size() >= kMaxCacheEntries) break;
      impl_->cache.insert(std::move(entry));
    }
  }
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  std::string bytes;
  for (const int id : ids) {
    if (id < 0 || id >= vocab_size())
      fail("token id ", id, " is out of range: the vocabulary (", impl_->encoder_path, ") has ids 0..",
           vocab_size() - 1);
    bytes += impl_->decoder[id];
  }
  return replace_invalid_utf8(bytes);
}

Tokenizer load_default_tokenizer() {
  const std::string encoder = "data/gpt2/encoder.json", vocab = "data/gpt2/vocab.bpe";
  for (const std::string& path : {encoder, vocab})
    if (!std::filesystem::exists(path))
      fail("GPT-2 tokenizer file ", path, " not found (relative to ",
           std::filesystem::current_path().string(),
           "); run `make data` (or data/fetch_tokenizer.sh) in the repository root");
  return Tokenizer(encoder, vocab);
}

}  // namespace gpt2
