// Ops<S> made of the plain reference loops alone (no Eigen): RefOps<double> runs the
// whole model in double for the whole-model gradient check; RefOps<float> is the
// oracle for CpuOps inside the model.
#pragma once
#include "ops.hpp"
#include "reference/ops_ref.hpp"

namespace gpt2 {

template <class S>
class RefOps final : public Ops<S> {
 public:
  void encoder_forward(S* out, const int* inp, const S* wte, const S* wpe, int B, int T_,
                       int C) override {
    ref::encoder_forward(out, inp, wte, wpe, B, T_, C);
  }
  void encoder_backward(S* dwte, S* dwpe, const S* dout, const int* inp, int B, int T_,
                        int C) override {
    ref::encoder_backward(dwte, dwpe, dout, inp, B, T_, C);
  }
  void layernorm_forward(S* out, S* mean, S* rstd, const S* inp, const S* w, const S* b,
                         int N, int C, bool padded = false) override {
    require_unpadded(padded, "layernorm_forward");
    ref::layernorm_forward(out, mean, rstd, inp, w, b, N, C);
  }
  void layernorm_backward(S* dinp, S* dw, S* db, const S* dout, const S* inp, const S* w,
                          const S* mean, const S* rstd, int N, int C,
                          S* dinp_colsum = nullptr) override {
    ref::layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C, dinp_colsum);
  }
  void matmul_forward(S* out, S* gelu_out, const S* inp, const S* w, const S* b, int N, int C,
                      int OC, bool padded = false, const S* residual = nullptr) override {
    require_unpadded(padded, "matmul_forward");
    ref::matmul_forward(out, gelu_out, inp, w, b, N, C, OC, residual);
  }
  void matmul_backward(S* dinp, S* dw, S* db, const S* dout, const S* inp, const S* w,
                       const S* pre_gelu, int N, int C, int OC,
                       const S* dout_colsum = nullptr, bool padded = false) override {
    require_unpadded(padded, "matmul_backward");
    ref::matmul_backward(dinp, dw, db, dout, inp, w, pre_gelu, N, C, OC, dout_colsum);
  }
  void attention_forward(S* out, S* lse, const S* qkv, int B, int T_, int C, int NH) override {
    ref::attention_forward(out, lse, qkv, B, T_, C, NH);
  }
  void attention_backward(S* dqkv, const S* dout, const S* qkv, const S* out, const S* lse,
                          int B, int T_, int C, int NH) override {
    ref::attention_backward(dqkv, dout, qkv, out, lse, B, T_, C, NH);
  }
  void gelu_forward(S* out, const S* inp, size_t n) override { ref::gelu_forward(out, inp, n); }
  void gelu_backward(S* dinp, const S* inp, const S* dout, size_t n) override {
    ref::gelu_backward(dinp, inp, dout, n);
  }
  void classifier(S* logits, S* losses, const int* targets, int N, int V, int Vp,
                  float dloss) override {
    ref::classifier(logits, losses, targets, N, V, Vp, S(dloss));
  }
};

}  // namespace gpt2
