// AdaLomo (Lv et al., arXiv 2310.10195), spec optimizers.md section 3: LOMO's fused
// update with Adafactor's factored second moment (no first moment), grouped (per-tensor)
// update normalization and a step scaled by RMS(W_old). Equivalent to HF Adafactor with
// beta1=None, scale_parameter=True, relative_step=False; one global t per step.
// loss_scale = 1: we train in bf16/fp32, so there is nothing to divide out.
#include <algorithm>
#include <cmath>

#include "factored.hpp"

namespace gpt2::optim {

namespace {

class AdaLomo final : public ScalingOptimizer {
 public:
  AdaLomo(const json& cfg, const ParamTable& table, Device& dev)
      : common_(cfg),
        eps1_(number(cfg, "adalomo", "eps1", 0.0, 1.0)),
        eps2_(number(cfg, "adalomo", "eps2", 0.0, 1.0)),
        clip_(number(cfg, "adalomo", "clip_threshold", 1e-12, 1e12)),
        decay_rate_(number(cfg, "adalomo", "decay_rate", -1.0, -1e-6)),
        store_(dev) {
    for (const ParamSpec& p : table.params) moments_.push_back(add_second_moment(store_, "adalomo", p));
  }

  void begin_step(int64_t t, float lr) override {
    lr_ = lr;
    beta2_ = 1.0 - std::pow(double(t), decay_rate_);  // beta2_1 = 0: step 1 sees only g^2
  }

  void update(const ParamSpec& p, float* w, float*, float* g) override {
    const double alpha = lr_ * std::max(eps2_, rms(w, p.numel));  // RMS of W_old
    normalized_update(p, moments_[p.id], beta2_, eps1_, clip_, g);
    const double keep = 1.0 - alpha * common_.wd(p);  // decay scaled by alpha, not lr
    for (size_t i = 0; i < p.numel; i++) w[i] = float(w[i] * keep - alpha * g[i]);
  }

  std::vector<StateBlob> state() override { return store_.blobs(); }

 private:
  Common common_;
  double eps1_, eps2_, clip_, decay_rate_;
  StateStore store_;
  std::vector<SecondMoment> moments_;
  double lr_ = 0, beta2_ = 0;
};

}  // namespace

std::unique_ptr<Optimizer<float>> make_adalomo(const json& cfg, const ParamTable& table, Device& dev,
                                        uint64_t) {
  return std::make_unique<AdaLomo>(cfg, table, dev);
}

size_t adalomo_state_bytes(const json&, const ParamSpec& p) { return second_moment_bytes(p); }

}  // namespace gpt2::optim
