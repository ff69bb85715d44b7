// GELU (tanh approximation) forward and backward, elementwise.
// Launch: one thread per element, 256 per block. Memory-bound; nothing to be clever
// about except fp32 math on bf16 storage. Deterministic. The forward usually runs fused
// into the matmul (cuBLASLt GELU_AUX epilogue); this kernel is the fallback and the
// standalone op.
#include "cuda_check.cuh"
#include "kernels.cuh"

namespace gpt2::cuda {
namespace {

constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2/pi)

template <class D>
__global__ void gelu_forward_kernel(D* out, const D* inp, size_t n) {
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float x = to_f(inp[i]);
  const float u = kGeluScale * (x + 0.044715f * x * x * x);
  out[i] = from_f<D>(0.5f * x * (1.f + tanhf(u)));
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
  gelu_forward_kernel<<<ceil_div(n, 256), 256>>>(out, inp, n);
  CUDA_CHECK_LAUNCH();
}

template <class D> void gelu_backward(D* dinp, const D* inp, const D* dout, size_t n) {
  if (n == 0) return;
  gelu_backward_kernel<<<ceil_div(n, 256), 256>>>(dinp, inp, dout, n);
  CUDA_CHECK_LAUNCH();
}

template void gelu_forward<float>(float*, const float*, size_t);
template void gelu_forward<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*, size_t);
template void gelu_backward<float>(float*, const float*, const float*, size_t);
template void gelu_backward<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*,
                                           const __nv_bfloat16*, size_t);

}  // namespace gpt2::cuda
