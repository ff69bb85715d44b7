// LOMO (spec optimizers.md section 2; twin of src/reference/optim/lomo.cpp): SGD with
// decoupled weight decay, no state. One grid-stride elementwise kernel per tensor;
// clipping already happened in the update pipeline.
#include "optim_common.cuh"
#include "reference/optim/optim_common.hpp"

namespace gpt2::cuda {
namespace {

template <class D>
__global__ void lomo_kernel(Weights<D> w, const D* grad, size_t n, float keep, float lr) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    w.store(i, w.load(i) * keep - lr * to_f(grad[i]));
}

template <class T>
class Lomo final : public Optimizer<T> {
 public:
  Lomo(const json& cfg, uint64_t seed) : common_(cfg), seed_(seed) {}

  void begin_step(int64_t t, float lr) override { t_ = t, lr_ = lr; }

  void update(const ParamSpec& p, T* param, float* master, T* grad) override {
    const float keep = float(1.0 - double(lr_) * common_.wd(p));
    lomo_kernel<<<elementwise_blocks(p.numel), kThreads, 0, update_stream()>>>(
        weights(param, master, seed_, t_, p.id), dev_ptr(grad), p.numel, keep, lr_);
    CUDA_CHECK_LAUNCH();
  }

  std::vector<StateBlob> state() override { return {}; }

 private:
  optim::Common common_;
  uint64_t seed_;
  int64_t t_ = 0;
  float lr_ = 0;
};

}  // namespace

template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_lomo(const json& cfg, const ParamTable&, Device&,
                                             uint64_t seed) {
  return std::make_unique<Lomo<T>>(cfg, seed);
}
template std::unique_ptr<Optimizer<float>> make_cuda_lomo<float>(const json&, const ParamTable&, Device&, uint64_t);
template std::unique_ptr<Optimizer<bf16>> make_cuda_lomo<bf16>(const json&, const ParamTable&, Device&, uint64_t);

}  // namespace gpt2::cuda
