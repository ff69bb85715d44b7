// CudaGradOps: the update pipeline's gradient arithmetic (src/update_pipeline.hpp) on
// the GPU. Per-tensor squared norms go to a device array of doubles through
// optim_common.cuh's two-stage reduction (fixed order, double accumulation), so the
// global norm is reproducible and computed without waiting for the host;
// take_squares is the one sync per step. clip_scale is one grid-stride kernel.
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

template <class T>
class CudaGradOps final : public GradOps<T> {
 public:
  CudaGradOps(size_t slots, Device& dev)
      : dev_(dev), red_(dev), sq_(dev, std::max<size_t>(slots, 1), MemCategory::workspace,
                                  "gradient squared norms"),
        slots_(slots) {}

  void sum_squares(const T* g, size_t n, int slot) override {
    if (slot < 0 || size_t(slot) >= slots_)
      fail("gradient norm slot ", slot, " is outside the ", slots_, " slots the pipeline asked for");
    red_.sum(Squares<device_t<T>>{dev_ptr(g)}, n, sq_.get() + slot);
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
  Reducer red_;
  DeviceBuffer<double> sq_;
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
