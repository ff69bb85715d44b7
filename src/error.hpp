// One exception type for every user-facing failure (bad config, bad file, bad flag).
// main() prints its message as a single line and exits non-zero; nothing else in the
// program prints errors, so every message must name the file, key and value at fault.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace gpt2 {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// cat("file ", path, ": bad magic ", m) builds a message from any streamable parts.
template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  return s.str();
}

template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  throw Error(cat(parts...));
}

}  // namespace gpt2
