// LayerNorm over the last axis (eps 1e-5, biased variance, as GPT-2), double sums.
// Rows are independent, so forward and dinp run one row per OpenMP iteration;
// dweight/dbias sum over rows, so they run one column block per iteration and sum
// the rows in order: the result is the same for any thread count.
#include <algorithm>
#include <vector>

#include "reference/ops_ref.hpp"

namespace gpt2::ref {

namespace {
constexpr double kEps = 1e-5;
constexpr int kColumnBlock = 64;
}  // namespace

template <class S>
void layernorm_forward(S* out, S* mean, S* rstd, const S* inp, const S* weight, const S* bias,
                       int N, int C) {
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMinWork)
  for (int i = 0; i < N; i++) {
    const S* x = inp + size_t(i) * C;
    double sum = 0.0;
    for (int c = 0; c < C; c++) sum += x[c];
    const double m = sum / C;
    double var = 0.0;
    for (int c = 0; c < C; c++) var += (x[c] - m) * (x[c] - m);
    const double s = 1.0 / std::sqrt(var / C + kEps);
    S* o = out + size_t(i) * C;
    for (int c = 0; c < C; c++) o[c] = S((x[c] - m) * s * weight[c] + bias[c]);
    if (mean) mean[i] = S(m);
    if (rstd) rstd[i] = S(s);
  }
}

// With xhat = (x - mean) * rstd and g = dout * weight (llm.c's derivation):
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
template <class S>
void layernorm_backward(S* dinp, S* dweight, S* dbias, const S* dout, const S* inp,
                        const S* weight, const S* mean, const S* rstd, int N, int C,
                        S* dinp_colsum) {
  if (dinp) {
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMinWork)
    for (int i = 0; i < N; i++) {
      const S* x = inp + size_t(i) * C;
      const S* d = dout + size_t(i) * C;
      const double m = mean[i], s = rstd[i];
      double g_mean = 0.0, gx_mean = 0.0;
      for (int c = 0; c < C; c++) {
        const double g = double(d[c]) * weight[c];
        g_mean += g;
        gx_mean += g * (x[c] - m) * s;
      }
      g_mean /= C, gx_mean /= C;
      S* dx = dinp + size_t(i) * C;
      for (int c = 0; c < C; c++) {
        const double g = double(d[c]) * weight[c];
        dx[c] += S(s * (g - g_mean - (x[c] - m) * s * gx_mean));
      }
    }
    if (dinp_colsum) column_sums(dinp_colsum, dinp, N, C);
  }
  if (!dweight && !dbias) return;
  const int blocks = (C + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMinWork)
  for (int blk = 0; blk < blocks; blk++) {
    const int c0 = blk * kColumnBlock, c1 = std::min(C, c0 + kColumnBlock);
    std::vector<double> dw(c1 - c0, 0.0), db(c1 - c0, 0.0);
    for (int i = 0; i < N; i++) {
      const S* x = inp + size_t(i) * C;
      const S* d = dout + size_t(i) * C;
      const double m = mean[i], s = rstd[i];
      for (int c = c0; c < c1; c++) {
        dw[c - c0] += double(d[c]) * (x[c] - m) * s;
        db[c - c0] += d[c];
      }
    }
    for (int c = c0; c < c1; c++) {
      if (dweight) dweight[c] += S(dw[c - c0]);
      if (dbias) dbias[c] += S(db[c - c0]);
    }
  }
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*,
                                       const float*, int, int);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*,
                                        const double*, int, int);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*,
                                        const float*, const float*, const float*, int, int,
                                        float*);
template void layernorm_backward<double>(double*, double*, double*, const double*,
                                         const double*, const double*, const double*,
                                         const double*, int, int, double*);

}  // namespace gpt2::ref
