// Fused softmax + cross-entropy + dlogits, in place over logits[N, Vp]; the model calls
// it once per row chunk, so N is a chunk of B*T rows, never the whole B*T x Vp.
// Launch: one 512-thread block per row. The row is read once for the statistics: each
// thread keeps an online (max, sum of exp) over its packs of W columns, rescaling its sum
// once per pack rather than once per new maximum; then read once more and overwritten
// with dlogits = (softmax - onehot) * dloss. Packs are 16 bytes (8 bf16 or 4 fp32
// columns) whenever Vp and the row start allow it (Vp = 50304 is a multiple of 64), else
// single columns. The kernel is bound by memory, 3 x Vp x sizeof(D) bytes per row: on an
// H200 (tools/bench_ops, d12 B16 T1024 bf16, unchunked) it takes 1.35 ms for the 16384
// rows, 3.7 TB/s; the first version, 2-byte loads and a rescale per new maximum, took
// 3.5 ms in an earlier session's profile.
// Padded columns [V, Vp) are written as 0 without being read. Deterministic (fixed
// reductions).
#include <cstdint>

#include "cuda_check.cuh"
#include "kernels.cuh"

namespace gpt2::cuda {
namespace {

constexpr int kThreads = 512;

template <class D, int W>
struct alignas(sizeof(D) * W) Pack {
  D x[W];
};

template <class D, int W>
__global__ void classifier_kernel(D* logits, float* losses, const int* targets, int V, int Vp,
                                  float dloss) {
  __shared__ float shared[32];
  D* row = logits + size_t(blockIdx.x) * Vp;
  Pack<D, W>* packs = reinterpret_cast<Pack<D, W>*>(row);
  const int target = targets[blockIdx.x];
  const float x_target = to_f(row[target]);  // read before any thread overwrites the row
  const int real_packs = (V + W - 1) / W;    // packs holding at least one real column
  float m = -INFINITY, s = 0.f;
  for (int p = threadIdx.x; p < real_packs; p += blockDim.x) {
    const Pack<D, W> v = packs[p];
    float x[W], pack_max = -INFINITY;
#pragma unroll
    for (int k = 0; k < W; k++) {
      x[k] = p * W + k < V ? to_f(v.x[k]) : -INFINITY;
      pack_max = fmaxf(pack_max, x[k]);
    }
    if (pack_max > m) {
      s *= expf(m - pack_max);
      m = pack_max;
    }
#pragma unroll
    for (int k = 0; k < W; k++) s += expf(x[k] - m);
  }
  const float row_max = block_max(m, shared);
  // A thread without columns has s = 0; a NaN logit keeps s NaN, so the loss shows it.
  const float sum = block_sum(s == 0.f ? 0.f : s * expf(m - row_max), shared);
  if (threadIdx.x == 0 && losses) losses[blockIdx.x] = logf(sum) + row_max - x_target;
  if (dloss == 0.f) return;
  const float inv_sum = 1.f / sum;
  for (int p = threadIdx.x; p < Vp / W; p += blockDim.x) {
    Pack<D, W> v;
    if (p < real_packs) v = packs[p];
#pragma unroll
    for (int k = 0; k < W; k++) {
      const int c = p * W + k;
      float d = 0.f;
      if (c < V) d = (expf(to_f(v.x[k]) - row_max) * inv_sum - (c == target ? 1.f : 0.f)) * dloss;
      v.x[k] = from_f<D>(d);
    }
    packs[p] = v;
  }
}

}  // namespace

template <class D>
void classifier(D* logits, float* losses, const int* targets, int N, int V, int Vp,
                float dloss) {
  if (N == 0) return;
  constexpr int W = 16 / sizeof(D);
  if (Vp % W == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0)
    classifier_kernel<D, W><<<N, kThreads>>>(logits, losses, targets, V, Vp, dloss);
  else
    classifier_kernel<D, 1><<<N, kThreads>>>(logits, losses, targets, V, Vp, dloss);
  CUDA_CHECK_LAUNCH();
}

template void classifier<float>(float*, float*, const int*, int, int, int, float);
template void classifier<__nv_bfloat16>(__nv_bfloat16*, float*, const int*, int, int, int,
                                        float);

}  // namespace gpt2::cuda
