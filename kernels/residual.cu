// Residual add out = a + b, elementwise (out may alias a or b).
// Launch: one thread per element, 256 per block. Memory-bound; deterministic.
#include "cuda_check.cuh"
#include "kernels.cuh"

namespace gpt2::cuda {
namespace {

template <class D>
__global__ void residual_forward_kernel(D* out, const D* a, const D* b, size_t n) {
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = from_f<D>(to_f(a[i]) + to_f(b[i]));
}

}  // namespace

template <class D> void residual_forward(D* out, const D* a, const D* b, size_t n) {
  if (n == 0) return;
  residual_forward_kernel<<<ceil_div(n, 256), 256, 0, compute_stream()>>>(out, a, b, n);
  CUDA_CHECK_LAUNCH();
}

template void residual_forward<float>(float*, const float*, const float*, size_t);
template void residual_forward<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*,
                                              const __nv_bfloat16*, size_t);

}  // namespace gpt2::cuda
