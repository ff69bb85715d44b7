// CAME (Luo et al., ACL 2023, arXiv 2307.02047, Algorithm 1), spec optimizers.md
// section 5, matching came_pytorch: Adafactor's factored second moment with a CONSTANT
// beta2 and no bias correction, a first moment m of the clipped update, and for
// matrices a factored "instability" (U - m_new)^2 + eps2 whose inverse square root
// scales m (the confidence guidance). Vectors skip the confidence factor (D = m).
// The large first steps (no bias correction, states start at 0) are the official
// behaviour (spec 5.2); the trainer's warmup handles them.
#include <cmath>

#include "factored.hpp"

namespace gpt2::optim {

namespace {

class Came final : public ScalingOptimizer {
 public:
  Came(const json& cfg, const ParamTable& table, Device& dev)
      : common_(cfg),
        beta1_(number(cfg, "came", "beta1", 0.0, 0.999999)),
        beta2_(number(cfg, "came", "beta2", 0.0, 0.999999)),
        beta3_(number(cfg, "came", "beta3", 0.0, 0.999999)),
        eps1_(number(cfg, "came", "eps1", 0.0, 1.0)),
        eps2_(number(cfg, "came", "eps2", 0.0, 1.0)),
        clip_(number(cfg, "came", "clip_threshold", 1e-12, 1e12)),
        store_(dev) {
    for (const ParamSpec& p : table.params) {
      moments_.push_back(add_second_moment(store_, "came", p));
      m_.push_back(store_.add(p, "came.m", p.numel));
      Instability s;
      if (p.is_matrix()) {
        s.rr = store_.add(p, "came.rr", size_t(p.rows));
        s.rc = store_.add(p, "came.rc", size_t(p.cols));
      }
      instability_.push_back(s);
    }
  }

  void begin_step(int64_t, float lr) override { lr_ = lr; }

  void update(const ParamSpec& p, float* w, float*, float* g) override {
    normalized_update(p, moments_[p.id], beta2_, eps1_, clip_, g);  // g now holds U
    float* m = m_[p.id];
    for (size_t i = 0; i < p.numel; i++) m[i] = float(beta1_ * m[i] + (1 - beta1_) * g[i]);
    if (p.is_matrix()) {
      const int64_t n = p.cols;
      const Instability& s = instability_[p.id];
      factored_ema(
          p.rows, n,
          [&](int64_t i, int64_t j) {  // uses the NEW m, as the official code does
            const double d = double(g[i * n + j]) - m[i * n + j];
            return d * d + eps2_;
          },
          beta3_, s.rr, s.rc);
      std::copy(m, m + p.numel, g);
      factored_inv_sqrt_scale(p.rows, n, s.rr, s.rc, g);  // g now holds D
    } else {
      std::copy(m, m + p.numel, g);
    }
    const double keep = 1.0 - lr_ * common_.wd(p);  // decoupled, raw lr
    for (size_t i = 0; i < p.numel; i++) w[i] = float(w[i] * keep - lr_ * g[i]);
  }

  std::vector<StateBlob> state() override { return store_.blobs(); }

 private:
  struct Instability {
    float* rr = nullptr;
    float* rc = nullptr;
  };
  Common common_;
  double beta1_, beta2_, beta3_, eps1_, eps2_, clip_;
  StateStore store_;
  std::vector<SecondMoment> moments_;
  std::vector<float*> m_;
  std::vector<Instability> instability_;
  double lr_ = 0;
};

}  // namespace

std::unique_ptr<Optimizer<float>> make_came(const json& cfg, const ParamTable& table, Device& dev,
                                     uint64_t) {
  return std::make_unique<Came>(cfg, table, dev);
}

size_t came_state_bytes(const json&, const ParamSpec& p) {
  const size_t instability = p.is_matrix() ? size_t(p.rows + p.cols) * sizeof(float) : 0;
  return second_moment_bytes(p) + p.numel * sizeof(float) + instability;
}

}  // namespace gpt2::optim
