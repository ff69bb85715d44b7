// Adapprox's hyperparameters (cfg["optimizer"]["adapprox"], each checked with one clear
// error) and the per-matrix rank rule derived from them. Shared by the CPU reference
// (adapprox.cpp) and the CUDA optimizer (kernels/adapprox.cu) so both read the same
// keys, reject the same configs and choose the same k_min, k_max and delta_k. C++17.
#pragma once
#include <algorithm>

#include "error.hpp"
#include "optim_common.hpp"

namespace gpt2::optim {

struct RankRule {
  int k_min, k_max, delta_k, p, l;
  double xi_thr;
};

struct Settings {
  double beta1, beta2, eps, clip, xi_thr, rho;
  int k0, k_min, k_max, rank_divisor, delta_k, l, p;
  // GPU only: side lanes, host threads + streams that factorize beside the update stream
  // (and with any, V_t of every matrix kept for them); none on the CPU.
  int lanes;
  bool cos_guidance, refactored;

  explicit Settings(const json& cfg)
      : beta1(number(cfg, "adapprox", "beta1", 0.0, 0.999999)),
        beta2(number(cfg, "adapprox", "beta2", 0.0, 0.999999)),
        eps(number(cfg, "adapprox", "eps", 0.0, 1.0)),
        clip(number(cfg, "adapprox", "clip_threshold", 1e-12, 1e12)),
        xi_thr(number(cfg, "adapprox", "xi_thr", 1e-12, 1.0)),
        rho(number(cfg, "adapprox", "rho", 0.0, 0.999999)),
        k0(int(number(cfg, "adapprox", "k0", 1, 1e6))),
        k_min(int(number(cfg, "adapprox", "k_min", 1, 1e6))),
        k_max(int(number(cfg, "adapprox", "k_max", 0, 1e6))),
        rank_divisor(int(number(cfg, "adapprox", "rank_divisor", 1, 1e6))),
        delta_k(int(number(cfg, "adapprox", "delta_k", 0, 1e6))),
        l(int(number(cfg, "adapprox", "l", 1, 100))),
        p(int(number(cfg, "adapprox", "p", 0, 1e6))),
        lanes(int(number(cfg, "adapprox", "lanes", 0, 64))) {
    const json& cos = entry(cfg, "adapprox", "cos_guidance");
    if (!cos.is_boolean())
      fail("config key optimizer.adapprox.cos_guidance = ", cos.dump(), " must be true or false");
    cos_guidance = cos.get<bool>();
    if (cos_guidance && beta1 == 0)
      fail("config key optimizer.adapprox.cos_guidance = true needs a first moment, but "
           "optimizer.adapprox.beta1 = 0; set beta1 > 0 (e.g. 0.9) or turn the guidance off");
    const json& den = entry(cfg, "adapprox", "denominator");
    if (den != "rebuilt" && den != "refactored")
      fail("config key optimizer.adapprox.denominator = ", den.dump(),
           " is unknown; use \"rebuilt\" (V_t, the default) or \"refactored\" (Q_t U_t^T)");
    refactored = den == "refactored";
    if (k_min > k0)
      fail("config key optimizer.adapprox.k_min = ", k_min, " exceeds optimizer.adapprox.k0 = ",
           k0, "; the initial rank must be at least the minimum rank");
    if (k_max != 0 && k_max < k0)
      fail("config key optimizer.adapprox.k_max = ", k_max, " is below optimizer.adapprox.k0 = ",
           k0, "; raise k_max (0 means floor(min(m, n) / rank_divisor)) or lower k0");
  }

  // Ranks for one m x n matrix; configured ranks above min(m, n) are capped there.
  RankRule rule(const ParamSpec& p) const {
    const int full = int(std::min(p.rows, p.cols));
    RankRule r;
    r.k_max = k_max == 0 ? std::max(1, full / rank_divisor) : std::min(k_max, full);
    r.k_min = std::min(k_min, r.k_max);
    r.delta_k = delta_k == 0 ? std::max(1, (r.k_max + 15) / 16) : delta_k;
    r.p = this->p;
    r.l = l;
    r.xi_thr = xi_thr;
    return r;
  }
  // Columns of the S-RSI iterates at k_max with oversampling: what the CUDA optimizer
  // allocates its thin buffers for, and what the memory plan counts.
  int thin_cols(const ParamSpec& p) const {
    return int(std::min<int64_t>(rule(p).k_max + this->p, std::min(p.rows, p.cols)));
  }
  int initial_rank(const ParamSpec& p) const {
    const RankRule r = rule(p);
    return std::clamp(k0, r.k_min, r.k_max);
  }
};

}  // namespace gpt2::optim
