// fp32 <-> fp64 copies around the small dense solves Adapprox runs in double (cuSOLVER's
// potrf and syev on s x s Gram matrices): kernels/adapprox.cu and
// tools/bench_adapprox_parts.cu, which times those pieces alone.
#pragma once
#include <cstddef>

namespace gpt2::cuda {
namespace {

__global__ void widen(double* out, const float* in, size_t n) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = in[i];
}
__global__ void narrow(float* out, const double* in, size_t n) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = float(in[i]);
}

}  // namespace
}  // namespace gpt2::cuda
