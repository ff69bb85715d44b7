// Sum of squares of a buffer, added to a device float: the global gradient norm for
// clipping is the sqrt of these sums over all tensors.
// Launch: a fixed grid of 256 blocks x 512 threads, grid-stride over the buffer, fp32
// partials per block; the last block to finish (atomic ticket) adds the 256 partials in
// index order. A fixed grid and order make the result deterministic and identical on
// any GPU, and a single launch needs no scratch. Calls must not overlap (the partials
// are one static array), which holds on the single default stream.
#include "backend.hpp"
#include "cuda_check.cuh"
#include "kernels.cuh"

namespace gpt2 {
namespace {

constexpr int kBlocks = 256, kThreads = 512;  // kBlocks <= kThreads: one final pass
__device__ float g_partials[kBlocks];
__device__ unsigned g_finished = 0;

template <class D>
__global__ void __launch_bounds__(kThreads) sum_squares_kernel(float* acc, const D* x, size_t n) {
  __shared__ float shared[32];
  __shared__ bool last;
  float s = 0.f;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const float v = cuda::to_f(x[i]);
    s += v * v;
  }
  s = cuda::block_sum(s, shared);
  if (threadIdx.x == 0) {
    g_partials[blockIdx.x] = s;
    __threadfence();  // publish the partial before taking a ticket
    last = atomicAdd(&g_finished, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  const volatile float* partials = g_partials;  // bypass L1: other blocks wrote them
  float t = threadIdx.x < gridDim.x ? partials[threadIdx.x] : 0.f;
  t = cuda::block_sum(t, shared);
  if (threadIdx.x == 0) {
    *acc += t;
    g_finished = 0;
  }
}

}  // namespace

template <class T>
void cuda_sum_squares(float* acc, const T* x, size_t n) {
  sum_squares_kernel<<<kBlocks, kThreads>>>(acc, cuda::dev_ptr(x), n);
  CUDA_CHECK_LAUNCH();
}

template void cuda_sum_squares<float>(float*, const float*, size_t);
template void cuda_sum_squares<bf16>(float*, const bf16*, size_t);

}  // namespace gpt2
