// UTF-8 repair exactly as browsers and Node's Buffer.toString('utf8') do it (WHATWG
// Encoding standard, "UTF-8 decode" without BOM handling): each maximal subpart of an
// ill-formed sequence becomes one U+FFFD. The tokenizer uses it so that invalid input
// tokenizes as the JS GPT-2 encoder sees it, and so that decode never emits bad UTF-8.
#pragma once
#include <string>
#include <string_view>

namespace gpt2 {

// Valid UTF-8 comes back unchanged; overlongs, surrogates (ED A0..BF xx), code points
// above U+10FFFF, stray continuation bytes and truncated sequences are replaced.
std::string replace_invalid_utf8(std::string_view bytes);

}  // namespace gpt2
