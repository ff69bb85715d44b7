// Adapprox's randomized low-rank factorization of its second moment (Zhao et al., arXiv
// 2403.14958; spec optimizers.md 6.3-6.4): S-RSI (Gaussian sketch, l rounds of
// "multiply, orthonormalize", oversampling p reduced to rank k through the small
// eigendecomposition of U^T U) and AS-RSI (adaptive rank). Products with the dense
// fp32 matrix are plain loops with double accumulation; the thin iterates are Eigen
// doubles. Every output element is written by one thread in a fixed order, so results
// are bit-identical for any thread count.
#pragma once
#include <Eigen/Dense>
#include <cstdint>

#include "adapprox_settings.hpp"
#include "sketch_rng.hpp"

namespace gpt2::optim {

// A dense nonnegative m x n matrix, row-major fp32 (Adapprox's V_t).
struct DenseView {
  const float* a;
  int64_t m, n;
};
double frobenius_sq(DenseView A);

// A ~= Q U^T with Q (m x k) orthonormal and U = A^T Q (n x k), columns in singular-value
// order: lambda_j = ||U_j||^2 descending, U's columns mutually orthogonal.
struct LowRank {
  Eigen::MatrixXd Q, U;
  Eigen::VectorXd lambda;
};

// Rotates (Q, U) by the eigenvectors W of U^T U (descending): Q W (W^T U^T) = Q U^T, and
// U W has orthogonal columns of squared norms lambda. Keeps the first k columns.
void rotate_to_singular_order(LowRank& f, int k);

// S-RSI at rank k (capped at min(m, n)) with oversampling p and l >= 1 iterations.
// Sketch column c is the same for every k, so a rank increase extends the sketch.
LowRank srsi(DenseView A, int k, int p, int l, uint64_t seed);

struct AsrsiResult {
  LowRank f;
  int k;      // rank chosen
  double xi;  // relative Frobenius error ||A - Q U^T|| / ||A|| at that rank
  int calls;  // S-RSIs run (1 + the rank increases)
};

// AS-RSI (spec 6.4, "our choice" details): grow k by delta_k while xi > xi_thr and
// k < k_max; then, if allow_shrink, drop trailing columns while k > k_min and the error
// after dropping stays below xi_thr / 2 (hysteresis against oscillation). The error
// uses ||A - Q U^T||^2 = ||A||^2 - ||U||^2, exact for orthonormal Q.
AsrsiResult as_rsi(DenseView A, int k, const RankRule& rule, bool allow_shrink, uint64_t seed);

// Small dense solves, reading G's upper triangle as cuSOLVER does. R (s x s,
// column-major, fp32, zero below the diagonal) with G = R^T R, false when G is not
// positive definite: the oracle of the GPU's CholeskyQR (kernels/cholesky_qr.cuh).
bool cholesky_upper(const float* G, int s, float* R);
// G's eigenvalues, ascending, and their eigenvectors (s x s, column-major).
void symmetric_eigen(const float* G, int s, double* values, double* vectors);

}  // namespace gpt2::optim
