// LOMO (spec optimizers.md section 2; twin of src/reference/optim/lomo.cpp): SGD with
// decoupled weight decay, no state. One grid-stride elementwise kernel, up to kMaxJobs
// tensors per launch (launch_jobs; most of GPT-2's tensors are short vectors, so a launch
// per tensor would cost more than the arithmetic), each tensor with the grid a launch of
// its own would get; the global-norm clip coefficient comes as grad_scale, applied as g
// is read (with an elementwise clamp, train.grad_clip_value, the pipeline clamps and
// scales in a pass of its own and grad_scale is 1).
#include "optim_common.cuh"
#include "reference/optim/optim_common.hpp"

namespace gpt2::cuda {
namespace {

template <class D>
struct LomoJob {
  Weights<D> w;
  const D* grad;
  size_t n;
  double wd;
  float scale;  // the gradient is scale * grad (TensorUpdate::grad_scale)
};

// lr from g_step (the step's, see optim_common.cuh).
template <class D>
__global__ void lomo_kernel(const __grid_constant__ Jobs<LomoJob<D>> b) {
  const int k = job_of(b);
  const LomoJob<D>& j = b.job[k];
  const float lr = g_step.lr, keep = decay_keep(j.wd);
  const Weights<D> w = j.w.now();
  const GridStride stride = job_stride(b, k);
  for (size_t i = stride.start; i < j.n; i += stride.step)
    w.store(i, w.load(i) * keep - lr * (to_f(j.grad[i]) * j.scale));
}

template <class T>
class Lomo final : public Optimizer<T> {
 public:
  Lomo(const json& cfg, uint64_t seed) : common_(cfg), seed_(seed) {}

  void begin_step(int64_t t, float lr) override { set_step({t, lr}); }

  void update(const ParamSpec& p, T* param, float* master, T* grad) override {
    update_many({{&p, param, master, grad}});
  }

  void update_many(const std::vector<TensorUpdate<T>>& us) override {
    using D = device_t<T>;
    std::vector<LomoJob<D>> jobs;
    for (const TensorUpdate<T>& u : us)
      jobs.push_back({weights(u.param, u.master, seed_, u.p->id), dev_ptr(u.grad), u.p->numel,
                      common_.wd(*u.p), u.grad_scale});
    launch_jobs(jobs, [](const LomoJob<D>& j) { return elementwise_blocks(j.n); },
                [&](const Jobs<LomoJob<D>>& b, unsigned grid) {
                  lomo_kernel<<<grid, kThreads, 0, update_stream()>>>(b);
                });
  }

  bool scales_grads() const override { return true; }
  bool replayable() const override { return true; }
  std::vector<StateBlob> state() override { return {}; }

 private:
  optim::Common common_;
  uint64_t seed_;
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
