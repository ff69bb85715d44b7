// Adafactor's factored second-moment statistic (Shazeer & Stern 2018, section 3; HF
// transformers' mean form), shared by AdaLomo, Adafactor and CAME: a nonnegative
// m x n statistic X is kept only as the EMAs of its row means r (length m) and column
// means c (length n), and read back as X_hat_ij = (r_i / mean(r)) * c_j, which equals
// X exactly whenever X is rank one. Storage: 4(m + n) bytes instead of 4mn.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "optim_common.hpp"

namespace gpt2::optim {

// r <- beta r + (1 - beta) rowmean(X); c <- beta c + (1 - beta) colmean(X), with
// X_ij = x(i, j) (e.g. g^2 + eps1). Means accumulate in double.
template <class Entry>
void factored_ema(int64_t m, int64_t n, Entry x, double beta, float* r, float* c) {
  std::vector<double> col(n, 0.0);
  for (int64_t i = 0; i < m; i++) {
    double row = 0;
    for (int64_t j = 0; j < n; j++) {
      const double v = x(i, j);
      row += v;
      col[j] += v;
    }
    r[i] = float(beta * r[i] + (1 - beta) * (row / n));
  }
  for (int64_t j = 0; j < n; j++) c[j] = float(beta * c[j] + (1 - beta) * (col[j] / m));
}

// y_ij *= 1 / sqrt(X_hat_ij) = rsqrt(r_i / mean(r)) * rsqrt(c_j) (y row-major m x n).
inline void factored_inv_sqrt_scale(int64_t m, int64_t n, const float* r, const float* c,
                                    float* y) {
  double mean_r = 0;
  for (int64_t i = 0; i < m; i++) mean_r += r[i];
  mean_r /= m;
  for (int64_t i = 0; i < m; i++) {
    const double row = 1.0 / std::sqrt(r[i] / mean_r);
    for (int64_t j = 0; j < n; j++) y[i * n + j] = float(y[i * n + j] * row / std::sqrt(c[j]));
  }
}

// Second-moment state of one tensor: r, c for a matrix, the full v for a vector.
struct SecondMoment {
  float* r = nullptr;
  float* c = nullptr;
  float* v = nullptr;
};

// The Adafactor-family direction (AdaLomo 3.2 steps 5-7, Adafactor 4.2 steps 5-7, CAME
// 5.2 steps 2-4), written over g: update the EMA of S = g^2 + eps1 (eps1 inside, before
// the means), U = g / sqrt(S_hat), then update clipping U /= max(1, RMS(U) / d).
inline void normalized_update(const ParamSpec& p, SecondMoment s, double beta2, double eps1,
                              double d, float* g) {
  if (p.is_matrix()) {
    const int64_t n = p.cols;
    factored_ema(
        p.rows, n, [&](int64_t i, int64_t j) { return double(g[i * n + j]) * g[i * n + j] + eps1; },
        beta2, s.r, s.c);
    factored_inv_sqrt_scale(p.rows, n, s.r, s.c, g);
  } else {
    for (size_t i = 0; i < p.numel; i++) {
      s.v[i] = float(beta2 * s.v[i] + (1 - beta2) * (double(g[i]) * g[i] + eps1));
      g[i] = float(g[i] / std::sqrt(double(s.v[i])));
    }
  }
  const double clip = std::max(1.0, rms(g, p.numel) / d);
  for (size_t i = 0; i < p.numel; i++) g[i] = float(g[i] / clip);
}

// Allocates tensor p's second moment in `store` (4(m + n) or 4n bytes).
inline SecondMoment add_second_moment(StateStore& store, const std::string& prefix,
                                      const ParamSpec& p) {
  SecondMoment s;
  if (p.is_matrix()) {
    s.r = store.add(p, prefix + ".r", size_t(p.rows));
    s.c = store.add(p, prefix + ".c", size_t(p.cols));
  } else {
    s.v = store.add(p, prefix + ".v", p.numel);
  }
  return s;
}
inline size_t second_moment_bytes(const ParamSpec& p) {
  return (p.is_matrix() ? size_t(p.rows + p.cols) : p.numel) * sizeof(float);
}

}  // namespace gpt2::optim
