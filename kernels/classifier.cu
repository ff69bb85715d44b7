// Fused softmax + cross-entropy + dlogits, in place over logits[N, Vp].
// Launch: one 512-thread block per row. Each thread keeps an online (max, sum of exp)
// over its strided columns, so the row is read once for the statistics and once more to
// write dlogits = (softmax - onehot) * dloss; the N x Vp probabilities never exist
// separately. Padded columns [V, Vp) are written as 0. Deterministic (fixed reductions).
#include "cuda_check.cuh"
#include "kernels.cuh"

namespace gpt2::cuda {
namespace {

template <class D>
__global__ void classifier_kernel(D* logits, float* losses, const int* targets, int V, int Vp,
                                  float dloss) {
  __shared__ float shared[32];
  D* x = logits + size_t(blockIdx.x) * Vp;
  const int target = targets[blockIdx.x];
  const float x_target = to_f(x[target]);  // read before any thread overwrites the row
  float m = -INFINITY, s = 0.f;
  for (int c = threadIdx.x; c < V; c += blockDim.x) {
    const float v = to_f(x[c]);
    if (v > m) {
      s *= expf(m - v);
      m = v;
    }
    s += expf(v - m);
  }
  const float row_max = block_max(m, shared);
  const float sum = block_sum(m == -INFINITY ? 0.f : s * expf(m - row_max), shared);
  if (threadIdx.x == 0 && losses) losses[blockIdx.x] = logf(sum) + row_max - x_target;
  if (dloss == 0.f) return;
  const float inv_sum = 1.f / sum;
  for (int c = threadIdx.x; c < Vp; c += blockDim.x) {
    float d = 0.f;
    if (c < V) d = (expf(to_f(x[c]) - row_max) * inv_sum - (c == target ? 1.f : 0.f)) * dloss;
    x[c] = from_f<D>(d);
  }
}

}  // namespace

template <class D>
void classifier(D* logits, float* losses, const int* targets, int N, int V, int Vp,
                float dloss) {
  if (N == 0) return;
  classifier_kernel<<<N, 512>>>(logits, losses, targets, V, Vp, dloss);
  CUDA_CHECK_LAUNCH();
}

template void classifier<float>(float*, float*, const int*, int, int, int, float);
template void classifier<__nv_bfloat16>(__nv_bfloat16*, float*, const int*, int, int, int,
                                        float);

}  // namespace gpt2::cuda
