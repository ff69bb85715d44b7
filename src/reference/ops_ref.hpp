// The CPU reference of every GPT-2 op: plain loops, double accumulation, the oracle
// that CpuOps' fast paths and the CUDA kernels are tested against. Each op follows
// the semantics of the same-named method of Ops<T> (src/ops.hpp), with the same
// argument order, over a scalar type S (float for CpuOps, double for the tests'
// finite differences). The fp32 statistics of Ops (layernorm mean/rstd, attention
// lse, classifier losses) are S here, so a double run stays double end to end.
//
// Instantiated for float and double in src/reference/<op>.cpp.
// C++17: CUDA tests include this header.
#pragma once
#include <cmath>
#include <cstddef>

namespace gpt2::ref {

// encoder.cpp
template <class S>
void encoder_forward(S* out, const int* inp, const S* wte, const S* wpe, int B, int T, int C);
template <class S>
void encoder_backward(S* dwte, S* dwpe, const S* dout, const int* inp, int B, int T, int C);

// layernorm.cpp (mean and rstd may be null in forward when no backward follows)
template <class S>
void layernorm_forward(S* out, S* mean, S* rstd, const S* inp, const S* weight, const S* bias,
                       int N, int C);
template <class S>
void layernorm_backward(S* dinp, S* dweight, S* dbias, const S* dout, const S* inp,
                        const S* weight, const S* mean, const S* rstd, int N, int C,
                        S* dinp_colsum = nullptr);

// matmul.cpp
template <class S>
void matmul_forward(S* out, S* gelu_out, const S* inp, const S* weight, const S* bias, int N, int C,
                    int OC, const S* residual = nullptr);
template <class S>
void matmul_backward(S* dinp, S* dweight, S* dbias, const S* dout, const S* inp,
                     const S* weight, const S* pre_gelu, int N, int C, int OC,
                     const S* dout_colsum = nullptr);
// out[c] = sum over rows of x[n][c] (N x C), in double, rows in order: a bias gradient.
template <class S>
void column_sums(S* out, const S* x, int N, int C);

// attention.cpp (lse may be null in forward when no backward follows)
template <class S>
void attention_forward(S* out, S* lse, const S* qkv, int B, int T, int C, int NH);
template <class S>
void attention_backward(S* dqkv, const S* dout, const S* qkv, const S* out, const S* lse,
                        int B, int T, int C, int NH);

// gelu.cpp
template <class S>
void gelu_forward(S* out, const S* inp, size_t n);
template <class S>
void gelu_backward(S* dinp, const S* inp, const S* dout, size_t n);

// classifier.cpp. Throws gpt2::Error if a target is outside [0, V).
template <class S>
void classifier(S* logits, S* losses, const int* targets, int N, int V, int Vp, S dloss);

// Loops go parallel (OpenMP `if` clause) only above this many inner iterations: a
// parallel region costs microseconds on an idle machine and milliseconds on a loaded
// one, which the tests' finite differences (thousands of tiny forwards) would feel.
constexpr size_t kParallelMinWork = size_t(1) << 15;

// GELU (tanh form, as GPT-2) and its derivative, shared by gelu.cpp and matmul.cpp's
// GELU epilogue/backward so both use one formula.
constexpr double kGeluScale = 0.7978845608028654;  // sqrt(2 / pi)
constexpr double kGeluCubic = 0.044715;

inline double gelu(double x) {
  return 0.5 * x * (1.0 + std::tanh(kGeluScale * (x + kGeluCubic * x * x * x)));
}

inline double gelu_grad(double x) {
  const double t = std::tanh(kGeluScale * (x + kGeluCubic * x * x * x));
  const double du = kGeluScale * (1.0 + 3.0 * kGeluCubic * x * x);
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
}

}  // namespace gpt2::ref
