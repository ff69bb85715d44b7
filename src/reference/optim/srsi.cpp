#include "srsi.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace gpt2::optim {

using Eigen::MatrixXd;

double frobenius_sq(DenseView A) {
  double s = 0;
  for (int64_t i = 0; i < A.m * A.n; i++) s += double(A.a[i]) * A.a[i];
  return s;
}

// A X (m x s) for X n x s.
static MatrixXd times(DenseView A, const MatrixXd& X) {
  const int64_t s = X.cols();
  const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> Xr = X;
  MatrixXd Y(A.m, s);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < A.m; i++) {
    std::vector<double> acc(s, 0.0);
    const float* row = A.a + i * A.n;
    for (int64_t j = 0; j < A.n; j++)
      for (int64_t c = 0; c < s; c++) acc[c] += row[j] * Xr(j, c);
    for (int64_t c = 0; c < s; c++) Y(i, c) = acc[c];
  }
  return Y;
}

// A^T Q (n x s) for Q m x s; threads own disjoint column blocks of A.
static MatrixXd times_transposed(DenseView A, const MatrixXd& Q) {
  const int64_t s = Q.cols(), block = 64;
  const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> Qr = Q;
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> Z =
      Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>::Zero(A.n, s);
#pragma omp parallel for schedule(static)
  for (int64_t j0 = 0; j0 < A.n; j0 += block) {
    const int64_t j1 = std::min(A.n, j0 + block);
    for (int64_t i = 0; i < A.m; i++)
      for (int64_t j = j0; j < j1; j++) {
        const double a = A.a[i * A.n + j];
        for (int64_t c = 0; c < s; c++) Z(j, c) += a * Qr(i, c);
      }
  }
  return Z;
}

void rotate_to_singular_order(LowRank& f, int k) {
  Eigen::SelfAdjointEigenSolver<MatrixXd> eig(f.U.transpose() * f.U);
  // Eigen sorts ascending; take the k largest, largest first.
  const int s = int(f.U.cols());
  MatrixXd W(s, k);
  f.lambda.resize(k);
  for (int j = 0; j < k; j++) {
    W.col(j) = eig.eigenvectors().col(s - 1 - j);
    f.lambda(j) = std::max(0.0, eig.eigenvalues()(s - 1 - j));
  }
  f.Q = f.Q * W;
  f.U = f.U * W;
}

LowRank srsi(DenseView A, int k, int p, int l, uint64_t seed) {
  const int64_t full = std::min(A.m, A.n);
  k = int(std::min<int64_t>(k, full));
  const int64_t s = std::min<int64_t>(k + p, full);
  LowRank f;
  f.U.resize(A.n, s);
  for (int64_t c = 0; c < s; c++)
    for (int64_t j = 0; j < A.n; j++) f.U(j, c) = gaussian(seed, uint64_t(c * A.n + j));
  for (int it = 0; it < l; it++) {
    Eigen::HouseholderQR<MatrixXd> qr(times(A, f.U));
    f.Q = qr.householderQ() * MatrixXd::Identity(A.m, s);
    f.U = times_transposed(A, f.Q);
  }
  rotate_to_singular_order(f, k);
  return f;
}

static double rel_error(double norm_sq, double kept) {
  return norm_sq > 0 ? std::sqrt(std::max(0.0, norm_sq - kept) / norm_sq) : 0.0;
}

AsrsiResult as_rsi(DenseView A, int k, const RankRule& rule, bool allow_shrink, uint64_t seed) {
  const double norm_sq = frobenius_sq(A);
  AsrsiResult r{srsi(A, k, rule.p, rule.l, seed), 0, 0.0, 1};
  r.k = int(r.f.Q.cols());
  r.xi = rel_error(norm_sq, r.f.lambda.sum());
  while (r.xi > rule.xi_thr && r.k < rule.k_max) {
    r.k = std::min(r.k + rule.delta_k, rule.k_max);
    r.f = srsi(A, r.k, rule.p, rule.l, seed);
    r.calls++;
    r.xi = rel_error(norm_sq, r.f.lambda.sum());
  }
  if (allow_shrink) {
    int k_new = r.k;
    while (k_new > rule.k_min &&
           rel_error(norm_sq, r.f.lambda.head(k_new - 1).sum()) < rule.xi_thr / 2)
      k_new--;
    if (k_new < r.k) {
      r.k = k_new;
      r.f.Q.conservativeResize(Eigen::NoChange, k_new);
      r.f.U.conservativeResize(Eigen::NoChange, k_new);
      r.f.lambda.conservativeResize(k_new);
      r.xi = rel_error(norm_sq, r.f.lambda.sum());
    }
  }
  return r;
}

static MatrixXd upper_to_double(const float* G, int s) {
  MatrixXd A(s, s);
  for (int c = 0; c < s; c++)
    for (int r = 0; r <= c; r++) A(r, c) = A(c, r) = G[r + size_t(c) * s];
  return A;
}

bool cholesky_upper(const float* G, int s, float* R) {
  const Eigen::LLT<MatrixXd> llt(upper_to_double(G, s));
  if (llt.info() != Eigen::Success) return false;
  const MatrixXd U = llt.matrixU();
  for (int c = 0; c < s; c++)
    for (int r = 0; r < s; r++) R[r + size_t(c) * s] = r <= c ? float(U(r, c)) : 0.f;
  return true;
}

void symmetric_eigen(const float* G, int s, double* values, double* vectors) {
  const Eigen::SelfAdjointEigenSolver<MatrixXd> eig(upper_to_double(G, s));
  Eigen::Map<Eigen::VectorXd>(values, s) = eig.eigenvalues();
  Eigen::Map<MatrixXd>(vectors, s, s) = eig.eigenvectors();
}

}  // namespace gpt2::optim
