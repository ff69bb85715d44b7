// CholeskyQR's R for a tall thin Y (m x s, column-major fp32), for Adapprox's S-RSI
// (kernels/adapprox.cu): G = Y^T Y summed in double, then R with R^T R = G + shift
// max(diag G) I in double, one block, as srsi.hpp's cholesky_upper (its test oracle)
// computes it. One launch, no host round trip. fp32 Gram matrices (cuBLAS) made every
// d12 S-RSI's Cholesky fail on real gradients (H200, Brown text; likely cause: after the
// power iteration Y's entries are ~1e-21, its Gram matrix ~1e-38, at fp32's underflow),
// each failure a Householder redo.
#pragma once
#include <cstddef>

namespace gpt2::cuda {

// Doubles of partial sums (parts) an order-s Gram matrix needs; scratch holds s x s
// doubles when s > kCholeskyShared.
constexpr int kCholeskyShared = 64;
size_t cholesky_qr_parts(int s);

// R (s x s, column-major fp32, zero below the diagonal) on update_stream(); a pivot that
// is not positive sets *failed = 1 (else it is left as it was) and R = I, as a failed
// Eigen LLT leaves the caller to redo the factorization another way. *ticket: arrive()'s
// counter, 0 before and after (kernels of one stream may share it).
void cholesky_qr_r(const float* Y, int m, int s, double shift, float* R, double* parts,
                   double* scratch, double* failed, unsigned* ticket);

// Y <- Y R^-1 (Y m x s column-major, R as cholesky_qr_r leaves it) for s <= kSolveMax, in
// one launch: cuBLAS's Strsm costs ~15-25 us a call at these widths whatever m.
constexpr int kSolveMax = 32;
void solve_rows_upper(float* Y, int m, int s, const float* R);

// solve_rows_upper and then cholesky_qr_r of the solved Y, in one launch (the same bits):
// CholeskyQR2's first pass ends where its second begins. R: the first pass's R, then the
// second's.
void solve_cholesky_qr_r(float* Y, int m, int s, double shift, float* R, double* parts,
                         double* scratch, double* failed, unsigned* ticket);

// G = Y^T Y (s x s, column-major fp32, summed in double as cholesky_qr_r sums it), and the
// two doubles at tail copied to G + gram_tail(s), so that one copy brings both to the
// host. G holds gram_floats(s) floats.
constexpr size_t gram_tail(int s) { return (size_t(s) * s + 1) / 2 * 2; }
constexpr size_t gram_floats(int s) { return gram_tail(s) + 2 * sizeof(double) / sizeof(float); }
void gram_matrix(const float* Y, int m, int s, float* G, const double* tail, double* parts,
                 double* scratch, unsigned* ticket);

}  // namespace gpt2::cuda
