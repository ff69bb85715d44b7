// GPT-2's byte-level BPE: encoder.json (token -> id) and vocab.bpe (merge ranks).
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace gpt2 {

constexpr int kEndOfText = 50256;  // <|endoftext|>

// encode and decode may be called from several threads at once (the word cache is
// shared under a lock taken once per call).
class Tokenizer {
 public:
  // Throws Error naming the file if either is missing or malformed.
  Tokenizer(const std::string& encoder_json, const std::string& vocab_bpe);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  // Text (any bytes; invalid UTF-8 is encoded byte-wise, as the JS encoder does
  // after its own decoding) -> ids. "<|endoftext|>" in text is NOT special.
  std::vector<int> encode(std::string_view text) const;
  // ids -> UTF-8; byte sequences that are not valid UTF-8 become U+FFFD.
  std::string decode(const std::vector<int>& ids) const;
  int vocab_size() const;

 private:
  struct Impl;
  Impl* impl_;
};

// data/gpt2/encoder.json and data/gpt2/vocab.bpe unless overridden.
Tokenizer load_default_tokenizer();

}  // namespace gpt2
