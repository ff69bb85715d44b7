// The second stage of optim_common.cuh's deterministic reductions.
#include "optim_common.cuh"

namespace gpt2::cuda {

__global__ void reduce_final(const double* partials, int blocks, double* out) {
  __shared__ double shared[32];
  double s = 0;
  for (int b = threadIdx.x; b < blocks; b += blockDim.x) s += partials[b];
  s = block_sum_d(s, shared);
  if (threadIdx.x == 0) *out = s;
}

}  // namespace gpt2::cuda
