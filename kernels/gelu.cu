// GELU (tanh approximation) forward and backward, elementwise. Deterministic. The
// forward usually runs fused into the matmul (cuBLASLt GELU_AUX epilogue); this kernel
// is the standalone op, which train.recompute >= 1 runs once per layer in backward to
// rebuild the activation it dropped (d12, B 16: 50M elements a call).
// The forward is memory-bound only if its math is cheap: with one thread per bf16 and
// tanhf it took 0.16 ms a call on an H100, 2.4x the 67 us its 200 MB take at 3 TB/s. It
// now moves 16 bytes per thread and evaluates 0.5 x (1 + tanh u) as x / (1 + e^{-2u})
// (the same function: 1 + tanh u = 2 / (1 + e^{-2u})), one __expf and no cancellation
// in 1 + tanh u for negative x; pointers not 16-byte aligned take the scalar kernel.
// H100, tools/bench_ops, d12 B 16 with train.recompute=1: 1.95 -> 0.90 ms a step for
// the 12 calls (75 us each, 2.7 TB/s).
#include <algorithm>
#include <cstdint>

#include "cuda_check.cuh"
#include "kernels.cuh"

namespace gpt2::cuda {
namespace {

constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2/pi)

__device__ __forceinline__ float gelu(float x) {
  const float u = kGeluScale * (x + 0.044715f * x * x * x);
  return __fdividef(x, 1.f + __expf(-2.f * u));
}

template <class D>
__global__ void gelu_forward_kernel(D* out, const D* inp, size_t n) {
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = from_f<D>(gelu(to_f(inp[i])));
}

// 16 bytes per thread; the n % kVec elements past the last full vector go to the first
// threads one each.
template <class D>
__global__ void gelu_forward_vec_kernel(D* out, const D* inp, size_t n) {
  constexpr int kVec = 16 / sizeof(D);
  struct alignas(16) Pack { D v[kVec]; };
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x, packs = n / kVec;
  if (i < packs) {
    Pack p = reinterpret_cast<const Pack*>(inp)[i];
#pragma unroll
    for (int j = 0; j < kVec; j++) p.v[j] = from_f<D>(gelu(to_f(p.v[j])));
    reinterpret_cast<Pack*>(out)[i] = p;
  }
  const size_t tail = packs * kVec + i;
  if (tail < n) out[tail] = from_f<D>(gelu(to_f(inp[tail])));
}

template <class D>
__global__ void gelu_backward_kernel(D* dinp, const D* inp, const D* dout, size_t n) {
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float x = to_f(inp[i]);
  const float u = kGeluScale * (x + 0.044715f * x * x * x);
  const float th = tanhf(u);
  // d/dx [0.5 x (1 + tanh u)] = 0.5 (1 + tanh u) + 0.5 x sech^2(u) du/dx
  const float du = kGeluScale * (1.f + 3.f * 0.044715f * x * x);
  const float grad = 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * du;
  dinp[i] = from_f<D>(grad * to_f(dout[i]));
}

}  // namespace

template <class D> void gelu_forward(D* out, const D* inp, size_t n) {
  if (n == 0) return;
  if ((reinterpret_cast<uintptr_t>(out) | reinterpret_cast<uintptr_t>(inp)) % 16 == 0) {
    const size_t packs = n / (16 / sizeof(D));
    gelu_forward_vec_kernel<<<ceil_div(std::max<size_t>(packs, 1), 256), 256, 0,
                              compute_stream()>>>(out, inp, n);
  } else {
    gelu_forward_kernel<<<ceil_div(n, 256), 256, 0, compute_stream()>>>(out, inp, n);
  }
  CUDA_CHECK_LAUNCH();
}

template <class D> void gelu_backward(D* dinp, const D* inp, const D* dout, size_t n) {
  if (n == 0) return;
  gelu_backward_kernel<<<ceil_div(n, 256), 256, 0, compute_stream()>>>(dinp, inp, dout, n);
  CUDA_CHECK_LAUNCH();
}

template void gelu_forward<float>(float*, const float*, size_t);
template void gelu_forward<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*, size_t);
template void gelu_backward<float>(float*, const float*, const float*, size_t);
template void gelu_backward<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*,
                                           const __nv_bfloat16*, size_t);

}  // namespace gpt2::cuda
