// Linear layer, the plain triple loop with double sums: the oracle for CpuOps' Eigen
// path and for cuBLASLt. Each output element is one independent dot product, so the
// OpenMP split (over rows of out, dinp and dweight) never changes the result.
#include <vector>

#include "ops.hpp"
#include "reference/ops_ref.hpp"

namespace gpt2::ref {

template <class S>
void matmul_forward(S* out, S* gelu_out, const S* inp, const S* weight, const S* bias, int N, int C,
                    int OC, const S* residual) {
  require_residual_without_gelu(gelu_out, residual);
#pragma omp parallel for schedule(static) if (size_t(N) * C * OC >= kParallelMinWork)
  for (int n = 0; n < N; n++) {
    const S* x = inp + size_t(n) * C;
    for (int o = 0; o < OC; o++) {
      const S* w = weight + size_t(o) * C;
      double sum = bias ? double(bias[o]) : 0.0;
      for (int c = 0; c < C; c++) sum += double(x[c]) * w[c];
      if (residual) sum += double(residual[size_t(n) * OC + o]);
      out[size_t(n) * OC + o] = S(sum);
      if (gelu_out) gelu_out[size_t(n) * OC + o] = S(gelu(sum));
    }
  }
}

template <class S>
void matmul_backward(S* dinp, S* dweight, S* dbias, const S* dout, const S* inp, const S* weight,
                     const S* pre_gelu, int N, int C, int OC, const S* dout_colsum) {
  if (dweight || dbias) {
#pragma omp parallel for schedule(static) if (size_t(N) * C * OC >= kParallelMinWork)
    for (int o = 0; o < OC; o++) {
      std::vector<double> dw(dweight ? C : 0, 0.0);
      double db = 0.0;
      for (int n = 0; n < N; n++) {
        const double d = dout[size_t(n) * OC + o];
        db += d;
        const S* x = inp + size_t(n) * C;
        for (size_t c = 0; c < dw.size(); c++) dw[c] += d * x[c];
      }
      if (dbias) dbias[o] += dout_colsum ? dout_colsum[o] : S(db);
      for (size_t c = 0; c < dw.size(); c++) dweight[size_t(o) * C + c] += S(dw[c]);
    }
  }
  if (dinp) {  // last: it may overwrite inp
#pragma omp parallel for schedule(static) if (size_t(N) * C * OC >= kParallelMinWork)
    for (int n = 0; n < N; n++) {
      const S* d = dout + size_t(n) * OC;
      for (int c = 0; c < C; c++) {
        double sum = 0.0;
        for (int o = 0; o < OC; o++) sum += double(d[o]) * weight[size_t(o) * C + c];
        if (pre_gelu) sum *= gelu_grad(pre_gelu[size_t(n) * C + c]);
        dinp[size_t(n) * C + c] = S(sum);
      }
    }
  }
}

template void matmul_forward<float>(float*, float*, const float*, const float*, const float*, int,
                                    int, int, const float*);
template void matmul_forward<double>(double*, double*, const double*, const double*, const double*,
                                     int, int, int, const double*);
template <class S>
void column_sums(S* out, const S* x, int N, int C) {
  std::vector<double> sum(C, 0.0);
  for (int n = 0; n < N; n++)
    for (int c = 0; c < C; c++) sum[c] += x[size_t(n) * C + c];
  for (int c = 0; c < C; c++) out[c] = S(sum[c]);
}

template void matmul_backward<float>(float*, float*, float*, const float*, const float*,
                                     const float*, const float*, int, int, int, const float*);
template void matmul_backward<double>(double*, double*, double*, const double*, const double*,
                                      const double*, const double*, int, int, int,
                                      const double*);
template void column_sums<float>(float*, const float*, int, int);
template void column_sums<double>(double*, const double*, int, int);

}  // namespace gpt2::ref
