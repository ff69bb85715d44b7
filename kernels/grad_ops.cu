// CudaGradOps: the update pipeline's gradient arithmetic (src/update_pipeline.hpp) on
// the GPU. Per-tensor squared norms go to a device array of doubles through a two-stage
// reduction (fixed order, double accumulation), so the global norm is reproducible and
// computed without waiting for the host; take_squares is the one sync per step.
// Up to kMaxJobs tensors share each stage's launch (launch_jobs, optim_common.cuh): one
// launch per tensor cost d12 ~300 launches a step, most of them for 768-element vectors.
// Each tensor keeps the grid and order sum_jobs (optim_common.cuh) gives it alone, so its
// sum does not depend on the company. clip_scale batches the same way: one launch per
// tensor was 148 launches of ~5 us a d12 step whenever the norm was clipped (0.35 ms a
// step on average, ncu, H100). AdamW skips it unless train.grad_clip_value is set: it
// applies the clip coefficient as it reads each gradient (UpdatePipeline::update).
#include "backend.hpp"
#include "optim_common.cuh"
#include "update_pipeline.hpp"

namespace gpt2::cuda {
namespace {

// A job whose buffer is 16-byte aligned moves V = 16 / sizeof(D) elements per access,
// then its last n % V one by one: with one 2-byte load in flight per thread both kernels
// were bound by latency (sum_squares ~0.95 TB/s, ncu, H100, d12). Each thread still
// visits a fixed set of elements in a fixed order, so a tensor's sum stays its own.
template <class D>
struct ClipJob {
  D* g;
  size_t n;
  bool vec;
};

__device__ __forceinline__ float clip_one(float x, float clip_value, float scale) {
  if (clip_value > 0) x = fminf(fmaxf(x, -clip_value), clip_value);
  return x * scale;
}

template <class D>
__global__ void clip_scale_kernel(const __grid_constant__ Jobs<ClipJob<D>> b, float clip_value,
                                  float scale) {
  constexpr int V = vec_elems<D>();
  const int k = job_of(b);
  const ClipJob<D>& job = b.job[k];
  const GridStride stride = job_stride(b, k);
  const size_t nv = job.vec ? job.n / V : 0;
  for (size_t i = stride.start; i < nv; i += stride.step) {
    int4 raw = reinterpret_cast<const int4*>(job.g)[i];
    D* e = reinterpret_cast<D*>(&raw);
#pragma unroll
    for (int j = 0; j < V; j++) e[j] = from_f<D>(clip_one(to_f(e[j]), clip_value, scale));
    reinterpret_cast<int4*>(job.g)[i] = raw;
  }
  for (size_t i = nv * V + stride.start; i < job.n; i += stride.step)
    job.g[i] = from_f<D>(clip_one(to_f(job.g[i]), clip_value, scale));
}

// One tensor's squared norm: reduce_blocks(n) first-stage blocks, then sum_final
// (optim_common.cuh) into out, its slot of the squared norms.
template <class D>
struct SquaresJob {
  Squares<D> f;
  size_t n;
  double* out;
  bool vec;
};

template <class D>
__global__ void __launch_bounds__(kReduceThreads) squares_partials(const __grid_constant__ Jobs<SquaresJob<D>> b,
                                                                   double* partials) {
  __shared__ double shared[32];
  const int k = job_of(b);
  const SquaresJob<D>& job = b.job[k];
  const GridStride stride = job_stride(b, k);
  constexpr int V = vec_elems<D>();
  double sum = 0;
  const size_t nv = job.vec ? job.n / V : 0;
  for (size_t i = stride.start; i < nv; i += stride.step) {
    const int4 raw = reinterpret_cast<const int4*>(job.f.x)[i];
    const D* e = reinterpret_cast<const D*>(&raw);
#pragma unroll
    for (int j = 0; j < V; j++) {
      const double x = to_f(e[j]);
      sum += x * x;
    }
  }
  for (size_t i = nv * V + stride.start; i < job.n; i += stride.step) sum += job.f(i);
  sum = block_sum_d(sum, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// The workspace: every job of a launch may take kReduceBlocks first-stage partials; one
// double per tensor (at least one, so the buffer exists) for the squared norms.
constexpr size_t kPartials = size_t(kMaxJobs) * kReduceBlocks;
size_t norm_slots(size_t slots) { return std::max<size_t>(slots, 1); }

template <class T>
class CudaGradOps final : public GradOps<T> {
 public:
  CudaGradOps(size_t slots, Device& dev)
      : dev_(dev),
        partials_(dev, kPartials, MemCategory::workspace, "gradient squared norm partials"),
        sq_(dev, norm_slots(slots), MemCategory::workspace, "gradient squared norms"),
        slots_(slots) {}

  void sum_squares(const std::vector<GradSlice<T>>& slices) override {
    std::vector<SquaresJob<device_t<T>>> jobs;
    for (const GradSlice<T>& x : slices) {
      if (x.slot < 0 || size_t(x.slot) >= slots_)
        fail("gradient norm slot ", x.slot, " is outside the ", slots_, " slots the pipeline asked for");
      jobs.push_back({{dev_ptr(x.g)}, x.n, sq_.get() + x.slot, aligned(x.g, 16)});
    }
    launch_jobs(jobs, [](const SquaresJob<device_t<T>>& j) { return unsigned(reduce_blocks(j.n)); },
                [&](const Jobs<SquaresJob<device_t<T>>>& b, unsigned grid) {
                  squares_partials<<<grid, kReduceThreads, 0, update_stream()>>>(b, partials_.get());
                  CUDA_CHECK_LAUNCH();
                  sum_final<<<b.count, kReduceThreads, 0, update_stream()>>>(b, partials_.get());
                });
  }

  std::vector<double> take_squares() override {
    std::vector<double> out(slots_);
    copy_to_host_on_update_stream(out.data(), sq_.get(), slots_ * sizeof(double));
    CUDA_CHECK(cudaMemsetAsync(sq_.get(), 0, sq_.bytes(), update_stream()));
    return out;
  }

  void clip_scale(const std::vector<GradSlice<T>>& slices, float clip_value, float scale) override {
    if (!(clip_value > 0) && scale == 1.0f) return;
    std::vector<ClipJob<device_t<T>>> jobs;
    for (const GradSlice<T>& x : slices) jobs.push_back({dev_ptr(x.g), x.n, aligned(x.g, 16)});
    launch_jobs(jobs, [](const ClipJob<device_t<T>>& j) { return elementwise_blocks(j.n); },
                [&](const Jobs<ClipJob<device_t<T>>>& b, unsigned grid) {
                  clip_scale_kernel<<<grid, kThreads, 0, update_stream()>>>(b, clip_value, scale);
                });
  }

 private:
  Device& dev_;
  DeviceBuffer<double> partials_, sq_;
  size_t slots_;
};

}  // namespace
}  // namespace gpt2::cuda

namespace gpt2 {

template <class T>
std::unique_ptr<GradOps<T>> make_cuda_grad_ops(size_t slots, Device& dev) {
  return std::make_unique<cuda::CudaGradOps<T>>(slots, dev);
}
template std::unique_ptr<GradOps<float>> make_cuda_grad_ops<float>(size_t, Device&);
template std::unique_ptr<GradOps<bf16>> make_cuda_grad_ops<bf16>(size_t, Device&);

size_t cuda_grad_ops_workspace_bytes(size_t slots) {
  return (cuda::kPartials + cuda::norm_slots(slots)) * sizeof(double);
}

}  // namespace gpt2
