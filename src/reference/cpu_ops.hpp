// The CPU backend of Ops: the matmuls through Eigen (row-major Maps, threaded by
// OpenMP), every other op the plain reference loops of ops_ref.hpp, which run
// one row / one (batch, head) per OpenMP iteration. Results are bit-identical from
// run to run; all ops but the matmuls are also identical for any thread count
// (Eigen's GEMM blocks its sums by thread count).
#pragma once
#include "ops.hpp"

namespace gpt2 {

class CpuOps final : public Ops<float> {
 public:
  void encoder_forward(float* out, const int* inp, const float* wte, const float* wpe, int B,
                       int T_, int C) override;
  void encoder_backward(float* dwte, float* dwpe, const float* dout, const int* inp, int B,
                        int T_, int C) override;
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                         const float* weight, const float* bias, int N, int C,
                         bool padded = false) override;
  void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const float* weight, const float* mean,
                          const float* rstd, int N, int C,
                          float* dinp_colsum = nullptr) override;
  void matmul_forward(float* out, float* gelu_out, const float* inp, const float* weight,
                      const float* bias, int N, int C, int OC, bool padded = false,
                      const float* residual = nullptr) override;
  void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* pre_gelu, int N,
                       int C, int OC, const float* dout_colsum = nullptr,
                       bool padded = false) override;
  void attention_forward(float* out, float* lse, const float* qkv, int B, int T_, int C,
                         int NH) override;
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                          const float* lse, int B, int T_, int C, int NH) override;
  void gelu_forward(float* out, const float* inp, size_t n) override;
  void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) override;
  void classifier(float* logits, float* losses, const int* targets, int N, int V, int Vp,
                  float dloss) override;
};

}  // namespace gpt2
