// What the six CUDA optimizers (kernels/<name>.cu) share: how a kernel reads and writes
// the weights (fp32 in place; bf16 through the fp32 master copy; bf16 alone with
// stochastic rounding), deterministic device reductions, and the factories
// make_cuda_optimizer (make_cuda_optimizer.cu) picks from.
//
// Reductions: kernel 1 runs a grid whose size depends only on n, each block summing a
// fixed grid-stride slice in double; kernel 2 (one block) adds the per-block partials
// in index order. No float atomics and a fixed order, so a run is bit-reproducible, and
// the result lands in device memory: update() never waits for the host.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "cuda_check.cuh"
#include "cuda_common.cuh"
#include "optimizer.hpp"
#include "reference/optim/sketch_rng.hpp"

namespace gpt2::cuda {

// Stochastic rounding to bf16: add 16 uniform random bits below the bf16 mantissa and
// truncate, so x rounds up with probability (x - down) / ulp (unbiased) and never
// lands more than one ulp away. Inf and NaN keep round-to-nearest.
__device__ __forceinline__ __nv_bfloat16 bf16_stochastic(float x, uint32_t bits) {
  uint32_t u = __float_as_uint(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return __float2bfloat16_rn(x);
  u += bits & 0xffffu;
  return __ushort_as_bfloat16(static_cast<unsigned short>(u >> 16));
}

// What changes from step to step (Optimizer::begin_step), which the update kernels read
// from device memory rather than take as arguments: a recorded backward with fused
// updates (Device::make_replay) then stays right at every step. One copy per translation
// unit (an optimizer's kernels live in one) and device; begin_step rewrites it with
// set_step on update_stream(), in order before the step's updates, and an optimizer's
// kernels read only their own unit's copy. So two optimizers of one unit (AdaLomo and
// Adafactor, or one kind in fp32 and bf16) must not interleave their steps: the last
// begin_step would set the values for both. A run has one optimizer.
struct StepValues {
  int64_t t;   // the step, 1-based: the stochastic-rounding streams
  float lr;
  float f[2];   // the optimizer's own (AdamW: 1 / the bias corrections)
  double d[2];  // (Adafactor: rho, beta2_t); zero where set_step's braces leave them out
};
static __device__ StepValues g_step;
static inline void set_step(const StepValues& s) {
  // From pageable memory the copy is staged before the call returns.
  CUDA_CHECK(cudaMemcpyToSymbolAsync(g_step, &s, sizeof s, 0, cudaMemcpyHostToDevice,
                                     update_stream()));
}
// 1 - lr wd with the step's lr: decoupled weight decay on the raw lr (LOMO, CAME).
__device__ __forceinline__ float decay_keep(double wd) {
  return float(1.0 - double(g_step.lr) * wd);
}

// The weights one update writes. With a master copy the fp32 master is the truth and
// the bf16 param its round-to-nearest; without one a bf16 param is read as fp32 and
// written back stochastically rounded, the random bits a hash of (seed, step, tensor
// id, element index) so a run is deterministic for its seed. The step comes from
// g_step: a kernel takes now() once before it stores.
template <class D>
struct Weights {
  D* param;
  float* master;
  uint64_t seed;
  int id;
  uint64_t stream;  // optim::mix_seed(seed, step, tensor id), set by now()

  __device__ Weights now() const {
    Weights w = *this;
    if (!master) w.stream = optim::mix_seed(seed, g_step.t, id) ^ 0x5352u;  // "SR"
    return w;
  }

  __device__ float load(size_t i) const { return master ? master[i] : to_f(param[i]); }
  __device__ void store(size_t i, float w) const {
    if (master) master[i] = w;
    if constexpr (std::is_same_v<D, __nv_bfloat16>) {
      param[i] = master ? __float2bfloat16_rn(w)
                        : bf16_stochastic(w, uint32_t(splitmix64(stream ^ i)));
    } else {
      param[i] = w;
    }
  }
};

template <class T>
Weights<device_t<T>> weights(T* param, float* master, uint64_t seed, int id) {
  return {dev_ptr(param), master, seed, id, 0};
}

__device__ __forceinline__ double block_sum_d(double v, double* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < nwarps ? shared[lane] : 0.0;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

constexpr int kReduceThreads = 256, kReduceBlocks = 1024;
// The first stage's grid for n elements: it depends on n alone (reproducible sums).
inline int reduce_blocks(size_t n) {
  return int(std::min<size_t>(kReduceBlocks, std::max<size_t>(1, ceil_div(n, kReduceThreads))));
}

// sum of squares of a fp32 or bf16 buffer.
template <class D>
struct Squares {
  const D* x;
  __device__ double operator()(size_t i) const {
    const double v = to_f(x[i]);
    return v * v;
  }
};

// Up to kMaxJobs tensors' work in one launch, passed by value (__grid_constant__, read
// in place): job k owns blocks [first[k], first[k + 1]) of a 1-D grid.
constexpr int kMaxJobs = 32;
template <class J>
struct Jobs {
  int count;
  unsigned first[kMaxJobs + 1];
  J job[kMaxJobs];
};
template <class J>
__device__ __forceinline__ int job_of(const Jobs<J>& b) {
  int k = 0;
  while (k + 1 < b.count && blockIdx.x >= b.first[k + 1]) k++;
  return k;
}
// Job k's grid-stride loop over its own blocks, as a launch of its own would run it:
// this thread's first index and the stride.
struct GridStride {
  size_t start, step;
};
template <class J>
__device__ __forceinline__ GridStride job_stride(const Jobs<J>& b, int k) {
  return {size_t(blockIdx.x - b.first[k]) * blockDim.x + threadIdx.x,
          size_t(b.first[k + 1] - b.first[k]) * blockDim.x};
}

// Launches jobs in groups of at most kMaxJobs on update_stream():
// launch(const Jobs<J>&, unsigned grid) with job k given blocks(job k) blocks.
template <class J, class Blocks, class Launch>
void launch_jobs(const std::vector<J>& jobs, const Blocks& blocks, const Launch& launch) {
  static_assert(sizeof(Jobs<J>) <= 32764, "a kernel's parameters are at most 32764 bytes");
  for (size_t a = 0; a < jobs.size(); a += kMaxJobs) {
    Jobs<J> b{};
    b.count = int(std::min<size_t>(kMaxJobs, jobs.size() - a));
    unsigned grid = 0;
    for (int k = 0; k < b.count; k++) {
      b.first[k] = grid, b.job[k] = jobs[a + k];
      grid += blocks(jobs[a + k]);
    }
    b.first[b.count] = grid;
    launch(b, grid);
    CUDA_CHECK_LAUNCH();
  }
}

// Deterministic sums into device doubles, many tensors in two launches: each job gets
// reduce_blocks(n) blocks over its own grid-stride loop, as a launch of its own would,
// then one block per job adds its partials in index order, so a sum does not depend on
// the company it comes in.
template <class F>
struct SumJob {
  F f;
  size_t n;
  double* out;
};

template <class F>
__global__ void __launch_bounds__(kReduceThreads)
    sum_partials(const __grid_constant__ Jobs<SumJob<F>> b, double* partials) {
  __shared__ double shared[32];
  const int k = job_of(b);
  const GridStride st = job_stride(b, k);
  double s = 0;
  for (size_t i = st.start; i < b.job[k].n; i += st.step) s += b.job[k].f(i);
  s = block_sum_d(s, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// The second stage for any job type with an `out` (SumJob, grad_ops.cu's SquaresJob).
template <class J>
__global__ void __launch_bounds__(kReduceThreads)
    sum_final(const __grid_constant__ Jobs<J> b, const double* partials) {
  __shared__ double shared[32];
  const int k = blockIdx.x;
  double s = 0;
  for (unsigned i = b.first[k] + threadIdx.x; i < b.first[k + 1]; i += blockDim.x) s += partials[i];
  s = block_sum_d(s, shared);
  if (threadIdx.x == 0) *b.job[k].out = s;
}

// partials: one double per block of a launch, i.e. the sum of reduce_blocks(n) over any
// kMaxJobs of the jobs.
template <class F>
void sum_jobs(const std::vector<SumJob<F>>& jobs, DeviceBuffer<double>& partials) {
  launch_jobs(
      jobs, [](const SumJob<F>& j) { return unsigned(reduce_blocks(j.n)); },
      [&](const Jobs<SumJob<F>>& b, unsigned grid) {
        if (grid > partials.size())
          fail("internal: a deterministic sum of ", grid, " blocks into ", partials.size(),
               " partials");
        sum_partials<<<grid, kReduceThreads, 0, update_stream()>>>(b, partials.get());
        CUDA_CHECK_LAUNCH();
        sum_final<<<b.count, kReduceThreads, 0, update_stream()>>>(b, partials.get());
      });
}

// Four consecutive elements as fp32, loaded or stored in one access (16 bytes of fp32, 8
// of bf16, rounded to nearest on the way out); the caller checks alignment (aligned()).
struct F4 {
  float x[4];
};
__device__ __forceinline__ F4 load4(const float* p) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  return {{t.x, t.y, t.z, t.w}};
}
__device__ __forceinline__ F4 load4(const __nv_bfloat16* p) {
  const uint2 t = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&t.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&t.y));
  return {{a.x, a.y, b.x, b.y}};
}
__device__ __forceinline__ void store4(float* p, const F4& v) {
  *reinterpret_cast<float4*>(p) = make_float4(v.x[0], v.x[1], v.x[2], v.x[3]);
}
__device__ __forceinline__ void store4(__nv_bfloat16* p, const F4& v) {
  uint2 t;
  *reinterpret_cast<__nv_bfloat162*>(&t.x) = __floats2bfloat162_rn(v.x[0], v.x[1]);
  *reinterpret_cast<__nv_bfloat162*>(&t.y) = __floats2bfloat162_rn(v.x[2], v.x[3]);
  *reinterpret_cast<uint2*>(p) = t;
}

// Whether p (null counts as aligned: an absent buffer) is a multiple of `bytes`, for the
// kernels' vector paths.
inline bool aligned(const void* p, size_t bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Launch shape of the elementwise kernels: grid-stride, at most 4 waves of blocks.
constexpr int kThreads = 256;
inline unsigned elementwise_blocks(size_t n) {
  return std::max(1u, std::min(ceil_div(n, kThreads), 132u * 8u * 4u));
}

template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_adamw(const json& cfg, const ParamTable& t, Device& dev, uint64_t seed);
template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_lomo(const json& cfg, const ParamTable& t, Device& dev, uint64_t seed);
template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_adalomo(const json& cfg, const ParamTable& t, Device& dev, uint64_t seed);
template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_adafactor(const json& cfg, const ParamTable& t, Device& dev, uint64_t seed);
template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_came(const json& cfg, const ParamTable& t, Device& dev, uint64_t seed);
template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_adapprox(const json& cfg, const ParamTable& t, Device& dev, uint64_t seed);
// The workspace each allocates (MemCategory::workspace), for cuda_optimizer_workspace_bytes
// (make_cuda_optimizer.cu); AdamW and LOMO have none, AdaLomo is Adafactor's. `sms` sizes
// the factored optimizers' sweeps (Factored::shape).
size_t adafactor_workspace_bytes(const ParamTable& t, int sms);
size_t came_workspace_bytes(const ParamTable& t, int sms);
size_t adapprox_workspace_bytes(const json& cfg, const ParamTable& t);

}  // namespace gpt2::cuda
