// Causal multi-head self-attention, flash style: no T x T matrix is ever stored.
// qkv[B,T,3C] holds q|k|v per token, heads of HS = C/NH channels; out[B,T,C];
// lse[B,NH,T] = logsumexp of each query's scaled scores (scale 1/sqrt(HS)).
//
// Forward: grid (ceil(T/64), NH, B), 64 threads, one query per thread. The query and
// its output accumulator live in registers; keys and values stream through shared
// memory in tiles of 32 (every thread reads the same key: a broadcast, no bank
// conflicts) and the softmax is online: per tile, the running max is raised once and
// the accumulator rescaled by exp(m_old - m_new). Tiles past the block's last query are
// never loaded (causality halves the work).
// Backward recomputes p = exp(s - lse) instead of storing it:
//   delta_i = dO_i . O_i                          (attention_delta_kernel)
//   dV_j = sum_i p_ij dO_i,  dK_j = scale sum_i p_ij (dO_i.V_j - delta_i) Q_i
//                                                 (dkdv kernel: one key per thread)
//   dQ_i = scale sum_j p_ij (dO_i.V_j - delta_i) K_j
//                                                 (dq kernel: one query per thread)
// Splitting dK/dV from dQ costs one extra recompute of p but needs no atomics, so the
// backward is deterministic. All math is fp32 (bf16 only as storage); exp is the
// accurate expf so fp32 results match the reference to rounding.
// These FMA kernels are the exact path (fp32, and bf16 with head sizes other than 64);
// bf16 with HS = 64 runs on tensor cores (attention_mma.cu, whose dq kernel computes delta
// itself). Measured on an H200 at B 8, T 1024, 12 heads of 64 (tools/bench_attention.cpp):
// forward 1.19 ms, backward 4.43 ms in bf16 (11 and 7 TFLOP/s) against 0.075 and 0.222 ms
// on tensor cores.
#include <type_traits>

#include "cuda_check.cuh"
#include "error.hpp"
#include "kernels.cuh"

namespace gpt2::cuda {
namespace {

constexpr int kQ = 64;   // queries per block in forward and dq
constexpr int kK = 32;   // keys per shared-memory tile in forward and dq
constexpr int kKB = 64;  // keys per block in dkdv
constexpr int kQT = 16;  // queries per shared-memory tile in dkdv

template <class D, int HS>
__global__ void __launch_bounds__(kQ) attention_forward_kernel(D* out, float* lse, const D* qkv,
                                                               int T, int C, int NH,
                                                               float scale) {
  __shared__ float ks[kK][HS], vs[kK][HS];
  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * kQ, i = q0 + threadIdx.x;
  const size_t row = 3 * size_t(C);
  const D* base = qkv + size_t(b) * T * row + size_t(h) * HS;
  const bool active = i < T;
  float q[HS], o[HS];
#pragma unroll
  for (int d = 0; d < HS; d++) {
    q[d] = active ? to_f(base[size_t(i) * row + d]) * scale : 0.f;
    o[d] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  const int kend = min(T, q0 + kQ);
  for (int k0 = 0; k0 < kend; k0 += kK) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kK * HS; idx += kQ) {
      const int r = idx / HS, d = idx % HS, j = k0 + r;
      ks[r][d] = j < T ? to_f(base[size_t(j) * row + C + d]) : 0.f;
      vs[r][d] = j < T ? to_f(base[size_t(j) * row + 2 * C + d]) : 0.f;
    }
    __syncthreads();
    if (!active || k0 > i) continue;
    float s[kK];
    float tile_max = -INFINITY;
#pragma unroll
    for (int r = 0; r < kK; r++) {
      float dot = 0.f;
#pragma unroll
      for (int d = 0; d < HS; d++) dot += q[d] * ks[r][d];
      s[r] = k0 + r <= i ? dot : -INFINITY;
      tile_max = fmaxf(tile_max, s[r]);
    }
    const float m_new = fmaxf(m, tile_max);
    const float correction = expf(m - m_new);
    l *= correction;
#pragma unroll
    for (int d = 0; d < HS; d++) o[d] *= correction;
#pragma unroll
    for (int r = 0; r < kK; r++) {
      const float p = expf(s[r] - m_new);
      l += p;
#pragma unroll
      for (int d = 0; d < HS; d++) o[d] += p * vs[r][d];
    }
    m = m_new;
  }
  if (!active) return;
  D* y = out + (size_t(b) * T + i) * C + size_t(h) * HS;
  const float inv_l = 1.f / l;
#pragma unroll
  for (int d = 0; d < HS; d++) y[d] = from_f<D>(o[d] * inv_l);
  lse[(size_t(b) * NH + h) * T + i] = m + logf(l);
}

// One warp per (b, t, h).
template <class D>
__global__ void attention_delta_kernel(float* delta, const D* dout, const D* out, int B, int T,
                                       int C, int NH) {
  const size_t idx = size_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (idx >= size_t(B) * T * NH) return;
  const int HS = C / NH, h = int(idx % NH), lane = threadIdx.x % 32;
  const size_t bt = idx / NH;
  const size_t off = bt * C + size_t(h) * HS;
  float sum = 0.f;
  for (int d = lane; d < HS; d += 32) sum += to_f(dout[off + d]) * to_f(out[off + d]);
  sum = warp_sum(sum);
  const size_t b = bt / T, t = bt % T;
  if (lane == 0) delta[(b * NH + h) * T + t] = sum;
}

// grid (ceil(T/64), NH, B), 64 threads, one key j per thread; queries i >= j stream
// through shared memory. The thread's own k_j and v_j sit in shared memory transposed
// ([d][thread], padded) so per-thread rows are read without bank conflicts.
template <class D, int HS>
__global__ void __launch_bounds__(kKB) attention_dkdv_kernel(D* dqkv, const D* dout,
                                                             const D* qkv, const float* lse,
                                                             const float* delta, int T, int C,
                                                             int NH, float scale) {
  __shared__ float ks[HS][kKB + 1], vs[HS][kKB + 1];
  __shared__ float qs[kQT][HS], dos[kQT][HS], lses[kQT], deltas[kQT];
  const int b = blockIdx.z, h = blockIdx.y, k0 = blockIdx.x * kKB, j = k0 + threadIdx.x;
  const size_t row = 3 * size_t(C);
  const D* base = qkv + size_t(b) * T * row + size_t(h) * HS;
  const D* dbase = dout + size_t(b) * T * C + size_t(h) * HS;
  const float* lse_bh = lse + (size_t(b) * NH + h) * T;
  const float* delta_bh = delta + (size_t(b) * NH + h) * T;
  for (int idx = threadIdx.x; idx < kKB * HS; idx += kKB) {
    const int r = idx / HS, d = idx % HS, jj = k0 + r;
    ks[d][r] = jj < T ? to_f(base[size_t(jj) * row + C + d]) : 0.f;
    vs[d][r] = jj < T ? to_f(base[size_t(jj) * row + 2 * C + d]) : 0.f;
  }
  const bool active = j < T;
  float dk[HS], dv[HS];
#pragma unroll
  for (int d = 0; d < HS; d++) dk[d] = dv[d] = 0.f;
  for (int q0 = k0; q0 < T; q0 += kQT) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kQT * HS; idx += kKB) {
      const int r = idx / HS, d = idx % HS, i = q0 + r;
      qs[r][d] = i < T ? to_f(base[size_t(i) * row + d]) : 0.f;
      dos[r][d] = i < T ? to_f(dbase[size_t(i) * C + d]) : 0.f;
    }
    if (threadIdx.x < kQT) {
      const int i = q0 + threadIdx.x;
      lses[threadIdx.x] = i < T ? lse_bh[i] : 0.f;
      deltas[threadIdx.x] = i < T ? delta_bh[i] : 0.f;
    }
    __syncthreads();
    if (!active) continue;
    for (int r = 0; r < kQT; r++) {
      const int i = q0 + r;
      if (i < j || i >= T) continue;
      float s = 0.f;
#pragma unroll
      for (int d = 0; d < HS; d++) s += qs[r][d] * ks[d][threadIdx.x];
      const float p = expf(s * scale - lses[r]);
      float dp = 0.f;
#pragma unroll
      for (int d = 0; d < HS; d++) {
        dv[d] += p * dos[r][d];
        dp += dos[r][d] * vs[d][threadIdx.x];
      }
      const float ds = p * (dp - deltas[r]);
#pragma unroll
      for (int d = 0; d < HS; d++) dk[d] += ds * qs[r][d];
    }
  }
  if (!active) return;
  D* g = dqkv + (size_t(b) * T + j) * row + size_t(h) * HS;
#pragma unroll
  for (int d = 0; d < HS; d++) {
    g[C + d] = from_f<D>(dk[d] * scale);
    g[2 * C + d] = from_f<D>(dv[d]);
  }
}

// grid (ceil(T/64), NH, B), 64 threads, one query i per thread; keys j <= i stream
// through shared memory as in the forward.
template <class D, int HS>
__global__ void __launch_bounds__(kQ) attention_dq_kernel(D* dqkv, const D* dout, const D* qkv,
                                                          const float* lse, const float* delta,
                                                          int T, int C, int NH, float scale) {
  __shared__ float dos[HS][kQ + 1];
  __shared__ float ks[kK][HS], vs[kK][HS];
  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * kQ, i = q0 + threadIdx.x;
  const size_t row = 3 * size_t(C);
  const D* base = qkv + size_t(b) * T * row + size_t(h) * HS;
  const D* dbase = dout + size_t(b) * T * C + size_t(h) * HS;
  for (int idx = threadIdx.x; idx < kQ * HS; idx += kQ) {
    const int r = idx / HS, d = idx % HS, ii = q0 + r;
    dos[d][r] = ii < T ? to_f(dbase[size_t(ii) * C + d]) : 0.f;
  }
  const bool active = i < T;
  float q[HS], dq[HS];
#pragma unroll
  for (int d = 0; d < HS; d++) {
    q[d] = active ? to_f(base[size_t(i) * row + d]) * scale : 0.f;
    dq[d] = 0.f;
  }
  const float l = active ? lse[(size_t(b) * NH + h) * T + i] : 0.f;
  const float dl = active ? delta[(size_t(b) * NH + h) * T + i] : 0.f;
  const int kend = min(T, q0 + kQ);
  for (int k0 = 0; k0 < kend; k0 += kK) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kK * HS; idx += kQ) {
      const int r = idx / HS, d = idx % HS, j = k0 + r;
      ks[r][d] = j < T ? to_f(base[size_t(j) * row + C + d]) : 0.f;
      vs[r][d] = j < T ? to_f(base[size_t(j) * row + 2 * C + d]) : 0.f;
    }
    __syncthreads();
    if (!active || k0 > i) continue;
    const int rend = min(kK, i - k0 + 1);
    for (int r = 0; r < rend; r++) {
      float s = 0.f, dp = 0.f;
#pragma unroll
      for (int d = 0; d < HS; d++) {
        s += q[d] * ks[r][d];
        dp += dos[d][threadIdx.x] * vs[r][d];
      }
      const float ds = expf(s - l) * (dp - dl);
#pragma unroll
      for (int d = 0; d < HS; d++) dq[d] += ds * ks[r][d];
    }
  }
  if (!active) return;
  D* g = dqkv + (size_t(b) * T + i) * row + size_t(h) * HS;
#pragma unroll
  for (int d = 0; d < HS; d++) g[d] = from_f<D>(dq[d] * scale);
}

template <int HS, class D>
void forward_hs(D* out, float* lse, const D* qkv, int B, int T, int C, int NH) {
  const dim3 grid(ceil_div(T, kQ), NH, B);
  attention_forward_kernel<D, HS>
      <<<grid, kQ, 0, compute_stream()>>>(out, lse, qkv, T, C, NH, rsqrtf(float(HS)));
  CUDA_CHECK_LAUNCH();
}

template <int HS, class D>
void backward_hs(D* dqkv, const D* dout, const D* qkv, const float* lse, const float* delta,
                 int B, int T, int C, int NH) {
  const float scale = rsqrtf(float(HS));
  attention_dkdv_kernel<D, HS><<<dim3(ceil_div(T, kKB), NH, B), kKB, 0, compute_stream()>>>(
      dqkv, dout, qkv, lse, delta, T, C, NH, scale);
  CUDA_CHECK_LAUNCH();
  attention_dq_kernel<D, HS><<<dim3(ceil_div(T, kQ), NH, B), kQ, 0, compute_stream()>>>(
      dqkv, dout, qkv, lse, delta, T, C, NH, scale);
  CUDA_CHECK_LAUNCH();
}

int head_size(int C, int NH) {
  const int hs = NH > 0 && C % NH == 0 ? C / NH : 0;
  // 128 would need dynamic shared memory (> 48 KiB) in the backward; GPT-2 uses 64.
  if (hs != 32 && hs != 64)
    fail("the CUDA attention kernel supports head sizes 32 and 64, but model channels ",
         C, " / heads ", NH, " give ", hs, " (set model.channels = 64 * model.heads)");
  return hs;
}

// The tensor-core path's head size, or 0 where the FMA kernels run.
template <class D>
int mma_head_size(int C, int NH) {
  if constexpr (std::is_same_v<D, __nv_bfloat16>) {
    if (NH > 0 && C % NH == 0 && attention_mma_supports(C / NH)) return C / NH;
  }
  return 0;
}

template <class D>
void delta_forward(float* delta, const D* dout, const D* out, int B, int T, int C, int NH) {
  attention_delta_kernel<<<ceil_div(size_t(B) * T * NH, 8), 256, 0, compute_stream()>>>(
      delta, dout, out, B, T, C, NH);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

template <class D>
void attention_forward_fma(D* out, float* lse, const D* qkv, int B, int T, int C, int NH) {
  const int hs = head_size(C, NH);
  if (B == 0 || T == 0) return;
  if (hs == 32) forward_hs<32>(out, lse, qkv, B, T, C, NH);
  if (hs == 64) forward_hs<64>(out, lse, qkv, B, T, C, NH);
}

template <class D>
void attention_forward(D* out, float* lse, const D* qkv, int B, int T, int C, int NH) {
  if (!mma_head_size<D>(C, NH)) return attention_forward_fma(out, lse, qkv, B, T, C, NH);
  if (B == 0 || T == 0) return;
  if constexpr (std::is_same_v<D, __nv_bfloat16>)
    attention_forward_mma(out, lse, qkv, B, T, C, NH);
}

size_t attention_backward_scratch_bytes(int B, int T, int NH) {
  return size_t(B) * T * NH * sizeof(float);
}

template <class D>
void attention_backward_fma(D* dqkv, const D* dout, const D* qkv, const D* out,
                            const float* lse, int B, int T, int C, int NH, void* scratch) {
  const int hs = head_size(C, NH);
  if (B == 0 || T == 0) return;
  float* delta = static_cast<float*>(scratch);
  delta_forward(delta, dout, out, B, T, C, NH);
  if (hs == 32) backward_hs<32>(dqkv, dout, qkv, lse, delta, B, T, C, NH);
  if (hs == 64) backward_hs<64>(dqkv, dout, qkv, lse, delta, B, T, C, NH);
}

template <class D>
void attention_backward(D* dqkv, const D* dout, const D* qkv, const D* out, const float* lse,
                        int B, int T, int C, int NH, void* scratch) {
  if (!mma_head_size<D>(C, NH))
    return attention_backward_fma(dqkv, dout, qkv, out, lse, B, T, C, NH, scratch);
  if (B == 0 || T == 0) return;
  if constexpr (std::is_same_v<D, __nv_bfloat16>)
    attention_backward_mma(dqkv, static_cast<float*>(scratch), dout, qkv, out, lse, B, T, C, NH);
}

#define INSTANTIATE(D)                                                                      \
  template void attention_forward<D>(D*, float*, const D*, int, int, int, int);            \
  template void attention_forward_fma<D>(D*, float*, const D*, int, int, int, int);        \
  template void attention_backward<D>(D*, const D*, const D*, const D*, const float*, int, \
                                      int, int, int, void*);                               \
  template void attention_backward_fma<D>(D*, const D*, const D*, const D*, const float*,  \
                                          int, int, int, int, void*);
INSTANTIATE(float)
INSTANTIATE(__nv_bfloat16)
#undef INSTANTIATE

}  // namespace gpt2::cuda
