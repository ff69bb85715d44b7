// Adafactor (Shazeer & Stern, arXiv 1804.04235) with HF transformers semantics, spec
// optimizers.md section 4: factored second moment, update clipping, optional parameter
// scaling and relative step, and an optional first moment that averages the
// already lr-scaled update (so a schedule change reaches the momentum; spec pitfall 3).
// beta1 = null means no first moment; any number (even 0) keeps one, as HF does.
#include <algorithm>
#include <cmath>

#include "error.hpp"
#include "factored.hpp"

namespace gpt2::optim {

namespace {

bool flag(const json& cfg, const std::string& key) {
  const json& v = entry(cfg, "adafactor", key);
  if (!v.is_boolean())
    fail("config key optimizer.adafactor.", key, " = ", v.dump(), " must be true or false");
  return v.get<bool>();
}

bool has_first_moment(const json& cfg) { return !entry(cfg, "adafactor", "beta1").is_null(); }

class Adafactor final : public ScalingOptimizer {
 public:
  Adafactor(const json& cfg, const ParamTable& table, Device& dev)
      : common_(cfg),
        momentum_(has_first_moment(cfg)),
        beta1_(momentum_ ? number(cfg, "adafactor", "beta1", 0.0, 0.999999) : 0.0),
        eps1_(number(cfg, "adafactor", "eps1", 0.0, 1.0)),
        eps2_(number(cfg, "adafactor", "eps2", 0.0, 1.0)),
        clip_(number(cfg, "adafactor", "clip_threshold", 1e-12, 1e12)),
        decay_rate_(number(cfg, "adafactor", "decay_rate", -1.0, -1e-6)),
        scale_parameter_(flag(cfg, "scale_parameter")),
        relative_step_(flag(cfg, "relative_step")),
        warmup_init_(flag(cfg, "warmup_init")),
        store_(dev) {
    if (warmup_init_ && !relative_step_)
      fail("config key optimizer.adafactor.warmup_init = true needs "
           "optimizer.adafactor.relative_step = true; set one of them accordingly");
    for (const ParamSpec& p : table.params) {
      moments_.push_back(add_second_moment(store_, "adafactor", p));
      m1_.push_back(momentum_ ? store_.add(p, "adafactor.m1", p.numel) : nullptr);
    }
  }

  void begin_step(int64_t t, float lr) override {
    const double inv_sqrt_t = 1.0 / std::sqrt(double(t));
    // relative_step ignores the schedule's lr, as HF does (spec 4.2 step 3).
    rho_ = !relative_step_ ? lr : warmup_init_ ? std::min(1e-6 * t, inv_sqrt_t)
                                               : std::min(1e-2, inv_sqrt_t);
    beta2_ = 1.0 - std::pow(double(t), decay_rate_);
  }

  void update(const ParamSpec& p, float* w, float*, float* g) override {
    const double alpha = scale_parameter_ ? rho_ * std::max(eps2_, rms(w, p.numel)) : rho_;
    normalized_update(p, moments_[p.id], beta2_, eps1_, clip_, g);
    float* m1 = m1_[p.id];
    const double keep = 1.0 - alpha * common_.wd(p);  // decay scaled by alpha (pitfall 5)
    for (size_t i = 0; i < p.numel; i++) {
      double u = alpha * g[i];  // lr applied BEFORE the momentum EMA
      if (m1) u = m1[i] = float(beta1_ * m1[i] + (1 - beta1_) * u);
      w[i] = float(w[i] * keep - u);
    }
  }

  std::vector<StateBlob> state() override { return store_.blobs(); }

 private:
  Common common_;
  bool momentum_;
  double beta1_, eps1_, eps2_, clip_, decay_rate_;
  bool scale_parameter_, relative_step_, warmup_init_;
  StateStore store_;
  std::vector<SecondMoment> moments_;
  std::vector<float*> m1_;
  double rho_ = 0, beta2_ = 0;
};

}  // namespace

std::unique_ptr<Optimizer<float>> make_adafactor(const json& cfg, const ParamTable& table, Device& dev,
                                          uint64_t) {
  return std::make_unique<Adafactor>(cfg, table, dev);
}

size_t adafactor_state_bytes(const json& cfg, const ParamSpec& p) {
  return second_moment_bytes(p) + (has_first_moment(cfg) ? p.numel * sizeof(float) : 0);
}

}  // namespace gpt2::optim
