// Text generation from a GPT2 model: row 0 of the model's batch carries the sequence,
// each new token is drawn from softmax(logits / temperature) restricted to the top_k
// most likely real tokens (top_k <= 0: all of them).
#pragma once
#include <cstdint>
#include <vector>

#include "gpt2.hpp"

namespace gpt2 {

struct SampleOptions {
  int tokens = 64;
  float temperature = 1.0f;
  int top_k = 40;
  uint64_t seed = 1337;
};

// Returns prompt + generated ids (the prompt is truncated to its last seq_len - 1 ids;
// generation stops at seq_len). An empty prompt starts from <|endoftext|>.
template <class T>
std::vector<int> generate(GPT2<T>& model, std::vector<int> prompt, const SampleOptions& opt);

// Draws one token from logits[0, V) (the model's dtype converted to float).
int sample_token(const std::vector<float>& logits, float temperature, int top_k, uint64_t& rng);

}  // namespace gpt2
