// CpuOps: Eigen GEMMs for the linear layers (nearly all of GPT-2's FLOPs), the
// reference loops for the rest. Eigen built with -fopenmp threads its GEMM over
// omp_get_max_threads(), so OMP_NUM_THREADS governs both halves.
#include "reference/cpu_ops.hpp"

#include <Eigen/Core>
#include <vector>

#include "reference/ops_ref.hpp"

namespace gpt2 {

namespace {
using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const RowMajor>;
using Map = Eigen::Map<RowMajor>;
}  // namespace

void CpuOps::encoder_forward(float* out, const int* inp, const float* wte, const float* wpe,
                             int B, int T_, int C) {
  ref::encoder_forward(out, inp, wte, wpe, B, T_, C);
}

void CpuOps::encoder_backward(float* dwte, float* dwpe, const float* dout, const int* inp,
                              int B, int T_, int C) {
  ref::encoder_backward(dwte, dwpe, dout, inp, B, T_, C);
}

void CpuOps::layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                               const float* weight, const float* bias, int N, int C,
                               bool padded) {
  require_unpadded(padded, "layernorm_forward");
  ref::layernorm_forward(out, mean, rstd, inp, weight, bias, N, C);
}

void CpuOps::layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                                const float* inp, const float* weight, const float* mean,
                                const float* rstd, int N, int C, float* dinp_colsum) {
  ref::layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C, dinp_colsum);
}

void CpuOps::matmul_forward(float* out, float* gelu_out, const float* inp, const float* weight,
                            const float* bias, int N, int C, int OC, bool padded,
                            const float* residual) {
  require_unpadded(padded, "matmul_forward");
  require_residual_without_gelu(gelu_out, residual);
  Map y(out, N, OC);
  y.noalias() = ConstMap(inp, N, C) * ConstMap(weight, OC, C).transpose();
  if (bias) y.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(bias, OC);
  if (residual) y += ConstMap(residual, N, OC);
  if (gelu_out) ref::gelu_forward(gelu_out, out, size_t(N) * OC);
}

void CpuOps::matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                             const float* inp, const float* weight, const float* pre_gelu,
                             int N, int C, int OC, const float* dout_colsum, bool padded) {
  require_unpadded(padded, "matmul_backward");
  const ConstMap dy(dout, N, OC);
  if (dweight) Map(dweight, OC, C).noalias() += dy.transpose() * ConstMap(inp, N, C);
  if (dbias) {
    std::vector<float> sum(OC);
    if (!dout_colsum) ref::column_sums(sum.data(), dout, N, OC);
    for (int o = 0; o < OC; o++) dbias[o] += dout_colsum ? dout_colsum[o] : sum[o];
  }
  if (dinp) {  // last: it may overwrite inp
    Map(dinp, N, C).noalias() = dy * ConstMap(weight, OC, C);
    if (pre_gelu) ref::gelu_backward(dinp, pre_gelu, dinp, size_t(N) * C);
  }
}

void CpuOps::attention_forward(float* out, float* lse, const float* qkv, int B, int T_, int C,
                               int NH) {
  ref::attention_forward(out, lse, qkv, B, T_, C, NH);
}

void CpuOps::attention_backward(float* dqkv, const float* dout, const float* qkv,
                                const float* out, const float* lse, int B, int T_, int C,
                                int NH) {
  ref::attention_backward(dqkv, dout, qkv, out, lse, B, T_, C, NH);
}

void CpuOps::gelu_forward(float* out, const float* inp, size_t n) {
  ref::gelu_forward(out, inp, n);
}

void CpuOps::gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  ref::gelu_backward(dinp, inp, dout, n);
}

void CpuOps::classifier(float* logits, float* losses, const int* targets, int N, int V, int Vp,
                        float dloss) {
  ref::classifier(logits, losses, targets, N, V, Vp, dloss);
}

}  // namespace gpt2
