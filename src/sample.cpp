#include "sample.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "dtype.hpp"
#include "rng.hpp"
#include "tokenizer.hpp"

namespace gpt2 {

int sample_token(const std::vector<float>& logits, float temperature, int top_k, uint64_t& rng) {
  const int V = int(logits.size());
  std::vector<int> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  const int k = top_k > 0 && top_k < V ? top_k : V;
  // Ties break toward the lower id so the draw is reproducible.
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  if (temperature <= 0) return idx[0];
  std::vector<double> p(k);
  const double top = logits[idx[0]];
  double sum = 0;
  for (int i = 0; i < k; i++) sum += p[i] = std::exp((logits[idx[i]] - top) / temperature);
  SplitMix64 gen{rng};
  double u = gen.uniform() * sum;
  rng = gen.state;
  for (int i = 0; i < k; i++)
    if ((u -= p[i]) < 0) return idx[i];
  return idx[k - 1];
}

template <class T>
std::vector<int> generate(GPT2<T>& model, std::vector<int> seq, const SampleOptions& opt) {
  const int Tn = model.seq_len;
  if (seq.empty()) seq.push_back(kEndOfText);
  if (int(seq.size()) > Tn - 1) seq.erase(seq.begin(), seq.end() - (Tn - 1));
  std::vector<int> inputs(size_t(model.batch) * Tn, kEndOfText);
  uint64_t rng = opt.seed;
  for (int n = 0; n < opt.tokens && int(seq.size()) < Tn; n++) {
    std::copy(seq.begin(), seq.end(), inputs.begin());
    // Causal attention: positions after seq.size() - 1 do not affect this row.
    const std::vector<float> logits = model.forward_logits(inputs.data(), int(seq.size()) - 1);
    seq.push_back(sample_token(logits, opt.temperature, opt.top_k, rng));
  }
  return seq;
}

template std::vector<int> generate(GPT2<float>&, std::vector<int>, const SampleOptions&);
template std::vector<int> generate(GPT2<bf16>&, std::vector<int>, const SampleOptions&);

}  // namespace gpt2
