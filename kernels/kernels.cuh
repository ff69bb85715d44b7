// Launchers of the forward/backward kernels, one group per kernels/<op>.cu, templated on
// the device element type D (float or __nv_bfloat16) and explicitly instantiated for
// both in their file. CudaOps (cuda_ops.cu) is their only caller; it owns the cuBLASLt
// handle and the scratch memory that some of them need (sized by *_scratch_bytes).
// Everything runs on compute_stream().
#pragma once
#include <cublasLt.h>

#include <cstddef>

#include "cuda_common.cuh"
#include "error.hpp"
#include "ops.hpp"

#define CUBLAS_CHECK(call)                                                             \
  do {                                                                                 \
    cublasStatus_t st_ = (call);                                                       \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                  \
      ::gpt2::fail("cuBLASLt error ", int(st_), " (see cublasStatus_t) in ", #call,     \
                   " at ", __FILE__, ":", __LINE__);                                   \
  } while (0)

namespace gpt2::cuda {

// encoder.cu
template <class D>
void encoder_forward(D* out, const int* inp, const D* wte, const D* wpe, int B, int T, int C);
size_t encoder_backward_scratch_bytes(int N);
template <class D>
void encoder_backward(D* dwte, D* dwpe, const D* dout, const int* inp, int B, int T, int C,
                      void* scratch, size_t scratch_bytes);

// layernorm.cu. `ldo`: out's row stride; past C the rows are ones-padded (src/ops.hpp).
template <class D>
void layernorm_forward(D* out, float* mean, float* rstd, const D* inp, const D* weight,
                       const D* bias, int N, int C, int ldo);
size_t layernorm_backward_scratch_bytes(int N, int C);
template <class D>
void layernorm_backward(D* dinp, D* dweight, D* dbias, const D* dout, const D* inp,
                        const D* weight, const float* mean, const float* rstd, int N, int C,
                        void* scratch, float* dinp_colsum = nullptr);

// matmul.cu. `workspace` is cuBLASLt's; `scratch` holds dbias partial sums, or with
// ones-padded input rows (`ld_inp` = C + kOnesPad) the dweight GEMM's fp32 output.
struct Lt {
  cublasLtHandle_t handle;
  void* workspace;
  size_t workspace_bytes;
};
template <class D>
void matmul_forward(const Lt& lt, D* out, D* gelu_out, const D* inp, const D* weight, const D* bias,
                    int N, int C, int OC, int ld_inp, const D* residual = nullptr);
// Whether matmul_backward takes dbias from the dweight GEMM: both wanted, no dout_colsum
// given, and the input's rows ones-padded (ld_inp > C).
inline bool bias_from_dweight_gemm(bool dweight, bool dbias, bool dout_colsum, int C,
                                   int ld_inp) {
  return dweight && dbias && !dout_colsum && ld_inp > C;
}
// bias_gemm: scratch for that GEMM's fp32 output, else for the column sums' partials.
size_t matmul_backward_scratch_bytes(int N, int C, int OC, bool bias_gemm);
template <class D>
void matmul_backward(const Lt& lt, D* dinp, D* dweight, D* dbias, const D* dout, const D* inp,
                     const D* weight, const D* pre_gelu, int N, int C, int OC, void* scratch,
                     const float* dout_colsum, int ld_inp);

// attention.cu. attention_forward/backward run the tensor-core kernels of
// attention_mma.cu for bf16 with head size 64, else the exact FMA kernels; the _fma entry
// points stay public so tools/bench_attention.cpp can time the two side by side.
template <class D>
void attention_forward(D* out, float* lse, const D* qkv, int B, int T, int C, int NH);
template <class D>
void attention_forward_fma(D* out, float* lse, const D* qkv, int B, int T, int C, int NH);
size_t attention_backward_scratch_bytes(int B, int T, int NH);
template <class D>
void attention_backward(D* dqkv, const D* dout, const D* qkv, const D* out, const float* lse,
                        int B, int T, int C, int NH, void* scratch);
template <class D>
void attention_backward_fma(D* dqkv, const D* dout, const D* qkv, const D* out,
                            const float* lse, int B, int T, int C, int NH, void* scratch);

// attention_mma.cu (B, T > 0). The backward also writes delta[B,NH,T] = rowsum(dout * out)
// (see attention.cu) into `delta`, its scratch. The forward and dq run on wgmma where
// attention_wgmma_available() (a build with sm_90a code, the current GPU a Hopper) unless
// allow_wgmma is false (the tests compare the two).
bool attention_mma_supports(int HS);
bool attention_wgmma_available();
void attention_forward_mma(__nv_bfloat16* out, float* lse, const __nv_bfloat16* qkv, int B,
                           int T, int C, int NH, bool allow_wgmma = true);
void attention_backward_mma(__nv_bfloat16* dqkv, float* delta, const __nv_bfloat16* dout,
                            const __nv_bfloat16* qkv, const __nv_bfloat16* out, const float* lse,
                            int B, int T, int C, int NH, bool allow_wgmma = true);

// gelu.cu
template <class D> void gelu_forward(D* out, const D* inp, size_t n);
template <class D> void gelu_backward(D* dinp, const D* inp, const D* dout, size_t n);

// classifier.cu
template <class D>
void classifier(D* logits, float* losses, const int* targets, int N, int V, int Vp, float dloss);

}  // namespace gpt2::cuda
