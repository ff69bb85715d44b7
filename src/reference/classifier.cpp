// Fused softmax + cross-entropy over the real vocabulary columns [0, V) of each row of
// logits[N, Vp]; the padded columns [V, Vp) never enter the softmax and get zero
// gradient. Rows are independent, one per OpenMP iteration.
#include <algorithm>
#include <limits>

#include "error.hpp"
#include "reference/ops_ref.hpp"

namespace gpt2::ref {

template <class S>
void classifier(S* logits, S* losses, const int* targets, int N, int V, int Vp, S dloss) {
  // Checked before the parallel loop: an exception may not leave an OpenMP region.
  for (int i = 0; i < N; i++) {
    if (targets[i] < 0 || targets[i] >= V)
      fail("classifier: target token ", targets[i], " at row ", i,
           " is outside the vocabulary [0, ", V, "); check the data shards' tokenizer");
  }
#pragma omp parallel for schedule(static) if (size_t(N) * V >= kParallelMinWork)
  for (int i = 0; i < N; i++) {
    S* row = logits + size_t(i) * Vp;
    double mx = -std::numeric_limits<double>::infinity();
    for (int j = 0; j < V; j++) mx = std::max(mx, double(row[j]));
    double sum = 0.0;
    for (int j = 0; j < V; j++) sum += std::exp(row[j] - mx);
    const double lse = mx + std::log(sum);
    losses[i] = S(lse - row[targets[i]]);
    if (dloss == S(0)) continue;
    for (int j = 0; j < V; j++) {
      const double p = std::exp(row[j] - lse);
      row[j] = S((p - (j == targets[i] ? 1.0 : 0.0)) * dloss);
    }
    for (int j = V; j < Vp; j++) row[j] = S(0);
  }
}

template void classifier<float>(float*, float*, const int*, int, int, int, float);
template void classifier<double>(double*, double*, const int*, int, int, int, double);

}  // namespace gpt2::ref
