// The non-template kernels of factored.cuh: column means from the chunk partials, and
// the inverse-square-root factors of X_hat.
#include "factored.cuh"

namespace gpt2::cuda {

__global__ void col_mean_ema(const double* partials, int chunks, int64_t m, int64_t n,
                             double beta, float* c) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  double s = 0;
  for (int k = 0; k < chunks; k++) s += partials[k * n + j];  // chunk order: deterministic
  c[j] = float(beta * c[j] + (1 - beta) * (s / double(m)));
}

// X_hat_ij = (r_i / mean(r)) c_j; the factors are computed in double and rounded once.
__global__ void inv_sqrt_factors(const float* r, const float* c, const double* sum_r,
                                 int64_t m, int64_t n, float* rf, float* cf) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const double mean_r = *sum_r / double(m);
  if (i < m) rf[i] = float(1.0 / sqrt(double(r[i]) / mean_r));
  if (i < n) cf[i] = float(1.0 / sqrt(double(c[i])));
}

}  // namespace gpt2::cuda
