// LOMO (Lv et al., arXiv 2306.09782), spec optimizers.md section 2: plain SGD with
// decoupled weight decay, no state. Its memory saving is the trainer's doing (the
// gradient is consumed the moment it is final); value/norm clipping happen before
// update() in the trainer's pipeline.
#include "optim_common.hpp"

namespace gpt2::optim {

namespace {

class Lomo final : public ScalingOptimizer {
 public:
  explicit Lomo(const json& cfg) : common_(cfg) {}

  void begin_step(int64_t, float lr) override { lr_ = lr; }

  void update(const ParamSpec& p, float* w, float*, float* g) override {
    const double keep = 1.0 - lr_ * common_.wd(p);
    for (size_t i = 0; i < p.numel; i++) w[i] = float(w[i] * keep - lr_ * g[i]);
  }

  std::vector<StateBlob> state() override { return {}; }

 private:
  Common common_;
  double lr_ = 0;
};

}  // namespace

std::unique_ptr<Optimizer<float>> make_lomo(const json& cfg, const ParamTable&, Device&, uint64_t) {
  return std::make_unique<Lomo>(cfg);
}

size_t lomo_state_bytes(const json&, const ParamSpec&) { return 0; }

}  // namespace gpt2::optim
