// An independent double-precision re-derivation of the Adafactor-family direction for
// the optimizer tests, written in the PAPER's sum form (Shazeer & Stern, Alg. 4:
// R = row sums, C = column sums, V_hat = R C^T / sum(R)) rather than the mean form the
// code uses, so a slip in either normalization shows up as a mismatch.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

namespace gpt2::test {

inline double rms_of(const std::vector<double>& x) {
  double s = 0;
  for (double v : x) s += v * v;
  return std::sqrt(s / x.size());
}

// EMA state of a nonnegative statistic X (m x n): factored (R, C) when m > 1, full otherwise.
struct FactoredOracle {
  int m, n;
  std::vector<double> R, C, full;
  FactoredOracle(int m_, int n_) : m(m_), n(n_), R(m_), C(n_), full(size_t(m_) * n_) {}

  // Updates the EMA with X and returns the smoothed estimate X_hat.
  std::vector<double> update(const std::vector<double>& X, double beta) {
    std::vector<double> hat(X.size());
    if (m == 1) {
      for (size_t i = 0; i < X.size(); i++) hat[i] = full[i] = beta * full[i] + (1 - beta) * X[i];
      return hat;
    }
    for (int i = 0; i < m; i++) {
      double s = 0;
      for (int j = 0; j < n; j++) s += X[i * n + j];
      R[i] = beta * R[i] + (1 - beta) * s;
    }
    for (int j = 0; j < n; j++) {
      double s = 0;
      for (int i = 0; i < m; i++) s += X[i * n + j];
      C[j] = beta * C[j] + (1 - beta) * s;
    }
    double total = 0;
    for (double r : R) total += r;
    for (int i = 0; i < m; i++)
      for (int j = 0; j < n; j++) hat[i * n + j] = R[i] * C[j] / total;
    return hat;
  }
};

// U = g / sqrt(V_hat) of S = g^2 + eps1, then clipped to RMS(U) <= d.
inline std::vector<double> oracle_direction(FactoredOracle& s, const std::vector<double>& g,
                                            double beta2, double eps1, double d) {
  std::vector<double> S(g.size());
  for (size_t i = 0; i < g.size(); i++) S[i] = g[i] * g[i] + eps1;
  const std::vector<double> V = s.update(S, beta2);
  std::vector<double> U(g.size());
  for (size_t i = 0; i < g.size(); i++) U[i] = g[i] / std::sqrt(V[i]);
  const double clip = std::max(1.0, rms_of(U) / d);
  for (double& u : U) u /= clip;
  return U;
}

}  // namespace gpt2::test
