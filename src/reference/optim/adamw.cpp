// AdamW (Loshchilov & Hutter, arXiv 1711.05101), spec optimizers.md section 1: the
// torch.optim.AdamW / llm.c update with bias correction from the global step and eps
// added after the square root of the bias-corrected v. State: m, v (8 B/param).
#include <cmath>

#include "optim_common.hpp"

namespace gpt2::optim {

namespace {

class AdamW final : public Optimizer<float> {
 public:
  AdamW(const json& cfg, const ParamTable& table, Device& dev)
      : common_(cfg),
        beta1_(number(cfg, "adamw", "beta1", 0.0, 0.999999)),
        beta2_(number(cfg, "adamw", "beta2", 0.0, 0.999999)),
        eps_(number(cfg, "adamw", "eps", 0.0, 1.0)),
        store_(dev) {
    for (const ParamSpec& p : table.params) {
      m_.push_back(store_.add(p, "adamw.m", p.numel));
      v_.push_back(store_.add(p, "adamw.v", p.numel));
    }
  }

  void begin_step(int64_t t, float lr) override {
    lr_ = lr;
    bc1_ = 1.0 - std::pow(beta1_, double(t));
    bc2_ = 1.0 - std::pow(beta2_, double(t));
  }

  void update(const ParamSpec& p, float* w, float*, float* g) override { adamw(p, w, g, 1.0f); }

  void update_many(const std::vector<TensorUpdate<float>>& us) override {
    for (const TensorUpdate<float>& u : us) adamw(*u.p, u.param, u.grad, u.grad_scale);
  }

  bool scales_grads() const override { return true; }

  std::vector<StateBlob> state() override { return store_.blobs(); }

 private:
  void adamw(const ParamSpec& p, float* w, const float* grad, float scale) {
    float* m = m_[p.id];
    float* v = v_[p.id];
    const double wd = common_.wd(p);
    for (size_t i = 0; i < p.numel; i++) {
      // The fp32 product the pipeline's clip_scale would have stored: the same weights
      // bit for bit as scaling the gradient first.
      const float g = grad[i] * scale;
      m[i] = float(beta1_ * m[i] + (1 - beta1_) * g);
      v[i] = float(beta2_ * v[i] + (1 - beta2_) * double(g) * g);
      const double step = (m[i] / bc1_) / (std::sqrt(v[i] / bc2_) + eps_);
      w[i] = float(w[i] - lr_ * (step + wd * w[i]));  // decay term uses W_old
    }
  }

  Common common_;
  double beta1_, beta2_, eps_;
  StateStore store_;
  std::vector<float*> m_, v_;
  double lr_ = 0, bc1_ = 1, bc2_ = 1;
};

}  // namespace

std::unique_ptr<Optimizer<float>> make_adamw(const json& cfg, const ParamTable& table, Device& dev,
                                      uint64_t) {
  return std::make_unique<AdamW>(cfg, table, dev);
}

size_t adamw_state_bytes(const json&, const ParamSpec& p) { return 2 * p.numel * sizeof(float); }

}  // namespace gpt2::optim
