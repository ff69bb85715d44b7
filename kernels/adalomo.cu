// AdaLomo (spec optimizers.md section 3; twin of src/reference/optim/adalomo.cpp). In
// math it is HF Adafactor with scale_parameter, no first moment and no relative step
// (spec 3.2: alpha = lr * max(eps2, RMS(W_old)) also scales the decay), so the GPU runs
// adafactor.cu's kernels with AdaLomo's keys and state names. Fused into backward by the
// update pipeline; every reduction (RMS(W), row/column means, RMS(U)) stays on the device.
#include "factored.cuh"

namespace gpt2::cuda {

template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_adalomo(const json& cfg, const ParamTable& table,
                                                Device& dev, uint64_t seed) {
  AdafactorRule r;
  r.prefix = "adalomo";
  r.eps1 = optim::number(cfg, "adalomo", "eps1", 0.0, 1.0);
  r.eps2 = optim::number(cfg, "adalomo", "eps2", 0.0, 1.0);
  r.clip = optim::number(cfg, "adalomo", "clip_threshold", 1e-12, 1e12);
  r.decay_rate = optim::number(cfg, "adalomo", "decay_rate", -1.0, -1e-6);
  r.beta1 = 0.0;
  r.momentum = false, r.scale_parameter = true, r.relative_step = false, r.warmup_init = false;
  return make_cuda_adafactor_rule<T>(cfg, r, table, dev, seed);
}
template std::unique_ptr<Optimizer<float>> make_cuda_adalomo<float>(const json&, const ParamTable&, Device&, uint64_t);
template std::unique_ptr<Optimizer<bf16>> make_cuda_adalomo<bf16>(const json&, const ParamTable&, Device&, uint64_t);

}  // namespace gpt2::cuda
