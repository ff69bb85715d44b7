// CudaGradOps: the update pipeline's gradient arithmetic (src/update_pipeline.hpp) on
// the GPU. Per-tensor squared norms go to a device array of doubles through a two-stage
// reduction (fixed order, double accumulation), so the global norm is reproducible and
// computed without waiting for the host; take_squares is the one sync per step.
// Up to kMaxSlices tensors share each stage's launch: one launch per tensor cost d12
// ~300 launches a step, most of them for 768-element vectors. Each tensor keeps the
// grid and order Reducer::sum (optim_common.cuh) gives it alone, so its sum does not
// depend on the company. clip_scale is one grid-stride kernel.
#include "backend.hpp"
#include "optim_common.cuh"
#include "update_pipeline.hpp"

namespace gpt2::cuda {
namespace {

template <class D>
__global__ void clip_scale_kernel(D* g, size_t n, float clip_value, float scale) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    float x = to_f(g[i]);
    if (clip_value > 0) x = fminf(fmaxf(x, -clip_value), clip_value);
    g[i] = from_f<D>(x * scale);
  }
}

constexpr int kMaxSlices = 32;

// A launch's tensors: tensor j owns blocks [first[j], first[j + 1]) of the first stage.
template <class D>
struct Slices {
  const D* g[kMaxSlices];
  size_t n[kMaxSlices];
  int slot[kMaxSlices];
  int first[kMaxSlices + 1];
  int count;
};

template <class D>
__device__ int slice_of(const Slices<D>& s, int block) {
  int j = 0;
  while (block >= s.first[j + 1]) j++;
  return j;
}

template <class D>
__global__ void __launch_bounds__(kReduceThreads) squares_partials(const __grid_constant__ Slices<D> s,
                                                                   double* partials) {
  __shared__ double shared[32];
  const int j = slice_of(s, blockIdx.x), blocks = s.first[j + 1] - s.first[j];
  const D* g = s.g[j];
  double sum = 0;
  for (size_t i = size_t(blockIdx.x - s.first[j]) * blockDim.x + threadIdx.x; i < s.n[j];
       i += size_t(blocks) * blockDim.x) {
    const double v = to_f(g[i]);
    sum += v * v;
  }
  sum = block_sum_d(sum, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// One block per tensor, reduce_final's order.
template <class D>
__global__ void __launch_bounds__(kReduceThreads) squares_final(const __grid_constant__ Slices<D> s,
                                                                const double* partials, double* sq) {
  __shared__ double shared[32];
  const int j = blockIdx.x;
  double sum = 0;
  for (int b = s.first[j] + threadIdx.x; b < s.first[j + 1]; b += blockDim.x) sum += partials[b];
  sum = block_sum_d(sum, shared);
  if (threadIdx.x == 0) sq[s.slot[j]] = sum;
}

template <class T>
class CudaGradOps final : public GradOps<T> {
 public:
  CudaGradOps(size_t slots, Device& dev)
      : dev_(dev),
        partials_(dev, size_t(kMaxSlices) * kReduceBlocks, MemCategory::workspace,
                  "gradient squared norm partials"),
        sq_(dev, std::max<size_t>(slots, 1), MemCategory::workspace, "gradient squared norms"),
        slots_(slots) {}

  void sum_squares(const std::vector<GradSlice<T>>& slices) override {
    for (size_t at = 0; at < slices.size(); at += kMaxSlices) {
      Slices<device_t<T>> s{};
      s.count = int(std::min<size_t>(kMaxSlices, slices.size() - at));
      for (int j = 0; j < s.count; j++) {
        const GradSlice<T>& x = slices[at + j];
        if (x.slot < 0 || size_t(x.slot) >= slots_)
          fail("gradient norm slot ", x.slot, " is outside the ", slots_,
               " slots the pipeline asked for");
        s.g[j] = dev_ptr(x.g), s.n[j] = x.n, s.slot[j] = x.slot;
        s.first[j + 1] = s.first[j] + reduce_blocks(x.n);
      }
      for (int j = s.count; j < kMaxSlices; j++) s.first[j + 1] = s.first[s.count];
      squares_partials<<<s.first[s.count], kReduceThreads, 0, update_stream()>>>(s, partials_.get());
      CUDA_CHECK_LAUNCH();
      squares_final<<<s.count, kReduceThreads, 0, update_stream()>>>(s, partials_.get(), sq_.get());
      CUDA_CHECK_LAUNCH();
    }
  }

  std::vector<double> take_squares() override {
    std::vector<double> out(slots_);
    copy_to_host_on_update_stream(out.data(), sq_.get(), slots_ * sizeof(double));
    CUDA_CHECK(cudaMemsetAsync(sq_.get(), 0, sq_.bytes(), update_stream()));
    return out;
  }

  void clip_scale(T* g, size_t n, float clip_value, float scale) override {
    if (!(clip_value > 0) && scale == 1.0f) return;
    clip_scale_kernel<<<elementwise_blocks(n), kThreads, 0, update_stream()>>>(dev_ptr(g), n, clip_value, scale);
    CUDA_CHECK_LAUNCH();
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

}  // namespace gpt2
