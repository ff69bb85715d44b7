// The operations GPT-2's forward and backward are made of. The model (src/gpt2.cpp)
// is written once against this interface; CpuOps (src/reference/) and CudaOps
// (kernels/) implement it, and the tests hold CudaOps to CpuOps.
//
// Conventions, shared by every implementation:
// - Pointers are device pointers of the backend. Shapes: N = B*T rows, C channels,
//   OC output channels, NH heads, HS = C / NH head size. Row-major everywhere.
// - Linear weights are [OC, C] (out x in, as in llm.c and torch.nn.Linear).
// - layernorm mean/rstd, attention lse and per-token losses are Stat<T>: fp32 for
//   fp32 and bf16 tensors, double for the double-precision model the whole-model
//   gradient check runs.
// - Backward outputs: parameter gradients (dweight, dbias, dwte, dwpe) are ACCUMULATED
//   (+=), so a tied or micro-batched gradient can sum into one buffer; dinp of
//   layernorm_backward is ACCUMULATED (it carries the residual stream's gradient);
//   every other dinp/dqkv/dlogits is OVERWRITTEN. Any gradient pointer may be null
//   to skip that output.
// - Ones-padded rows (`padded`): a layernorm output that feeds a biased matmul may be
//   stored in rows of C + kOnesPad elements, its C values, then 1, then zeros, where the
//   backend asks for it (pads_rows). layernorm_forward writes such rows; matmul_forward
//   and matmul_backward read them. The column of ones lets matmul_backward take dbias
//   from the dweight GEMM (dout^T @ [inp, 1] sums dout's columns as it multiplies),
//   instead of reading the N x OC dout once more.
#pragma once
#include <cstddef>
#include <type_traits>

#include "error.hpp"

namespace gpt2 {

template <class T>
using Stat = std::conditional_t<std::is_same_v<T, double>, double, float>;

constexpr int kOnesPad = 8;  // 16 bytes of bf16: the padded rows stay 16-byte aligned

// For a backend without padded rows (it never asks for them).
inline void require_unpadded(bool padded, const char* op) {
  if (padded) fail("internal: ", op, " got ones-padded rows, which this backend does not use");
}
// matmul_forward's contract: a residual is added only without the GELU epilogue.
inline void require_residual_without_gelu(const void* gelu_out, const void* residual) {
  if (gelu_out && residual) fail("internal: matmul_forward adds a residual only without GELU");
}

template <class T>
class Ops {
 public:
  using Elem = T;
  virtual ~Ops() = default;
  // Whether the model should store layernorm outputs of width C as ones-padded rows.
  virtual bool pads_rows(int C) const { return false; }

  // out[b,t,:] = wte[inp[b,t],:] + wpe[t,:]
  virtual void encoder_forward(T* out, const int* inp, const T* wte, const T* wpe,
                               int B, int T_, int C) = 0;
  virtual void encoder_backward(T* dwte, T* dwpe, const T* dout, const int* inp,
                                int B, int T_, int C) = 0;

  // out = (inp - mean) * rstd * weight + bias, eps 1e-5, biased variance (as GPT-2).
  virtual void layernorm_forward(T* out, Stat<T>* mean, Stat<T>* rstd, const T* inp,
                                 const T* weight, const T* bias, int N, int C,
                                 bool padded = false) = 0;
  // dinp_colsum (optional, needs dinp): the column sums of dinp as it is left (after the
  // add), for the bias gradient of the matmul whose dout dinp is (matmul_backward's
  // dout_colsum): the pass over dinp that sum would need is one this kernel already makes.
  virtual void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout,
                                  const T* inp, const T* weight, const Stat<T>* mean,
                                  const Stat<T>* rstd, int N, int C,
                                  Stat<T>* dinp_colsum = nullptr) = 0;

  // pre = inp @ weight^T + bias (bias may be null). If gelu_out is non-null the GELU
  // epilogue also writes gelu_out = gelu(pre) (and `out` holds pre), else out = pre, or
  // pre + residual where residual[N,OC] is given (the projections that end a block add
  // the residual stream in the GEMM's epilogue; not with gelu_out).
  virtual void matmul_forward(T* out, T* gelu_out, const T* inp, const T* weight, const T* bias,
                              int N, int C, int OC, bool padded = false,
                              const T* residual = nullptr) = 0;
  // dinp = dout @ weight, then, if pre_gelu is non-null, dinp *= gelu'(pre_gelu)
  // (the backward of the GELU that produced this matmul's input from pre_gelu).
  // dweight += dout^T @ inp, dbias += colsum(dout), or += dout_colsum where the caller
  // has that sum already (layernorm_backward's dinp_colsum). dweight and dbias come
  // first, so dinp may alias inp (the model's fcproj writes fc's dout over its input).
  virtual void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
                               const T* weight, const T* pre_gelu, int N, int C, int OC,
                               const Stat<T>* dout_colsum = nullptr, bool padded = false) = 0;

  // Causal self-attention. qkv[B,T,3C] holds q, k, v (each [NH, HS] per token);
  // out[B,T,C]; lse[B,NH,T] = logsumexp of each query's scaled scores, kept for the
  // backward, which recomputes probabilities from it (no T x T matrix is stored).
  virtual void attention_forward(T* out, Stat<T>* lse, const T* qkv, int B, int T_, int C,
                                 int NH) = 0;
  virtual void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out,
                                  const Stat<T>* lse, int B, int T_, int C, int NH) = 0;

  // GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
  virtual void gelu_forward(T* out, const T* inp, size_t n) = 0;
  // dinp = dout * gelu'(inp); dinp may alias dout.
  virtual void gelu_backward(T* dinp, const T* inp, const T* dout, size_t n) = 0;

  // Fused softmax + cross-entropy over logits[N, Vp] of which the first V columns are
  // real: losses[i] = -log softmax(logits[i, :V])[targets[i]]. If dloss != 0, logits is
  // overwritten in place by dlogits = (softmax - onehot) * dloss, and padded columns
  // [V, Vp) by 0.
  virtual void classifier(T* logits, Stat<T>* losses, const int* targets, int N, int V,
                          int Vp, float dloss) = 0;
};

}  // namespace gpt2
