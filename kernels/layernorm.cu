// LayerNorm over the last dim (eps 1e-5, biased variance) and its backward.
// Forward: one warp per row (8 rows per 256-thread block); mean, then variance of
// (x - mean) in a second pass over the row, which avoids the cancellation of
// E[x^2] - E[x]^2. When C is a multiple of 32 lanes x 16 bytes (768, 1024, 1280 ...)
// the row lives in registers, loaded with 16-byte vectors: the scalar version kept too
// few bytes in flight and ran at ~200 GB/s (12.7 ms of a 52.6 ms d12 step, H200,
// tools/bench_ops); other C take the scalar path. Backward:
// - dinp (accumulated): one warp per row, the two row means of the standard formula
//   dinp += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), dnorm = dout * w.
// - dweight/dbias (accumulated): a column reduction over N rows, in two deterministic
//   stages: blocks of 32 columns x kRowChunks row chunks write fp32 partials to scratch,
//   then one thread per column sums the chunks in order. No atomics anywhere.
#include "cuda_check.cuh"
#include "kernels.cuh"

namespace gpt2::cuda {
namespace {

constexpr int kRowChunks = 256;
constexpr int kMaxVecs = 8;  // vectors per lane kept in registers: C <= 8 * 32 * (16 / size)

template <class D>
constexpr int vec_elems() { return 16 / int(sizeof(D)); }

template <class D>
bool vector_path(int C) {
  return C % (32 * vec_elems<D>()) == 0 && C / (32 * vec_elems<D>()) <= kMaxVecs;
}

// Loads lane's vectors of one row into x (as float).
template <class D>
__device__ __forceinline__ void load_row(float (&x)[kMaxVecs][vec_elems<D>()], const D* row,
                                         int nv, int lane) {
  const int4* v = reinterpret_cast<const int4*>(row);
#pragma unroll
  for (int i = 0; i < kMaxVecs; i++) {
    if (i >= nv) break;
    const int4 raw = v[i * 32 + lane];
    const D* e = reinterpret_cast<const D*>(&raw);
#pragma unroll
    for (int j = 0; j < vec_elems<D>(); j++) x[i][j] = to_f(e[j]);
  }
}

template <class D>
__global__ void layernorm_forward_vec_kernel(D* out, float* mean_out, float* rstd_out,
                                             const D* inp, const D* weight, const D* bias,
                                             int N, int C) {
  constexpr int V = vec_elems<D>();
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const int nv = C / (32 * V);
  float x[kMaxVecs][V], w[kMaxVecs][V], b[kMaxVecs][V];
  load_row<D>(x, inp + size_t(row) * C, nv, lane);
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxVecs; i++)
    if (i < nv)
      for (int j = 0; j < V; j++) sum += x[i][j];
  const float mean = warp_sum(sum) / C;
  float var = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxVecs; i++)
    if (i < nv)
      for (int j = 0; j < V; j++) var += (x[i][j] - mean) * (x[i][j] - mean);
  const float rstd = rsqrtf(warp_sum(var) / C + 1e-5f);
  load_row<D>(w, weight, nv, lane);
  if (bias) load_row<D>(b, bias, nv, lane);
  int4* y = reinterpret_cast<int4*>(out + size_t(row) * C);
#pragma unroll
  for (int i = 0; i < kMaxVecs; i++) {
    if (i >= nv) break;
    int4 raw;
    D* e = reinterpret_cast<D*>(&raw);
#pragma unroll
    for (int j = 0; j < V; j++)
      e[j] = from_f<D>((x[i][j] - mean) * rstd * w[i][j] + (bias ? b[i][j] : 0.f));
    y[i * 32 + lane] = raw;
  }
  if (lane == 0) {
    if (mean_out) mean_out[row] = mean;
    if (rstd_out) rstd_out[row] = rstd;
  }
}

template <class D>
__global__ void layernorm_dinp_vec_kernel(D* dinp, const D* dout, const D* inp, const D* weight,
                                          const float* mean, const float* rstd, int N, int C) {
  constexpr int V = vec_elems<D>();
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const int nv = C / (32 * V);
  float n[kMaxVecs][V], dn[kMaxVecs][V], w[kMaxVecs][V];
  load_row<D>(n, inp + size_t(row) * C, nv, lane);
  load_row<D>(dn, dout + size_t(row) * C, nv, lane);
  load_row<D>(w, weight, nv, lane);
  const float m = mean[row], r = rstd[row];
  float sum_dn = 0.f, sum_dn_n = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxVecs; i++)
    if (i < nv)
      for (int j = 0; j < V; j++) {
        n[i][j] = (n[i][j] - m) * r;
        dn[i][j] *= w[i][j];
        sum_dn += dn[i][j];
        sum_dn_n += dn[i][j] * n[i][j];
      }
  const float mean_dn = warp_sum(sum_dn) / C, mean_dn_n = warp_sum(sum_dn_n) / C;
  int4* dx = reinterpret_cast<int4*>(dinp + size_t(row) * C);
#pragma unroll
  for (int i = 0; i < kMaxVecs; i++) {
    if (i >= nv) break;
    int4 raw = dx[i * 32 + lane];
    D* e = reinterpret_cast<D*>(&raw);
#pragma unroll
    for (int j = 0; j < V; j++)
      e[j] = from_f<D>(to_f(e[j]) + r * (dn[i][j] - mean_dn - n[i][j] * mean_dn_n));
    dx[i * 32 + lane] = raw;
  }
}

template <class D>
__global__ void layernorm_forward_kernel(D* out, float* mean_out, float* rstd_out, const D* inp,
                                         const D* weight, const D* bias, int N, int C) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const D* x = inp + size_t(row) * C;
  float sum = 0.f;
  for (int c = lane; c < C; c += 32) sum += to_f(x[c]);
  const float mean = warp_sum(sum) / C;
  float var = 0.f;
  for (int c = lane; c < C; c += 32) {
    const float d = to_f(x[c]) - mean;
    var += d * d;
  }
  const float rstd = rsqrtf(warp_sum(var) / C + 1e-5f);
  D* y = out + size_t(row) * C;
  for (int c = lane; c < C; c += 32) {
    const float n = (to_f(x[c]) - mean) * rstd;
    y[c] = from_f<D>(n * to_f(weight[c]) + (bias ? to_f(bias[c]) : 0.f));
  }
  if (lane == 0) {
    if (mean_out) mean_out[row] = mean;
    if (rstd_out) rstd_out[row] = rstd;
  }
}

template <class D>
__global__ void layernorm_dinp_kernel(D* dinp, const D* dout, const D* inp, const D* weight,
                                      const float* mean, const float* rstd, int N, int C) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const D* x = inp + size_t(row) * C;
  const D* dy = dout + size_t(row) * C;
  const float m = mean[row], r = rstd[row];
  float sum_dn = 0.f, sum_dn_n = 0.f;
  for (int c = lane; c < C; c += 32) {
    const float dn = to_f(dy[c]) * to_f(weight[c]);
    sum_dn += dn;
    sum_dn_n += dn * (to_f(x[c]) - m) * r;
  }
  const float mean_dn = warp_sum(sum_dn) / C, mean_dn_n = warp_sum(sum_dn_n) / C;
  D* dx = dinp + size_t(row) * C;
  for (int c = lane; c < C; c += 32) {
    const float n = (to_f(x[c]) - m) * r;
    const float dn = to_f(dy[c]) * to_f(weight[c]);
    dx[c] = from_f<D>(to_f(dx[c]) + r * (dn - mean_dn - n * mean_dn_n));
  }
}

// grid (ceil(C/32), kRowChunks), block 32 x 8: the 8 warps split the chunk's rows and
// combine through shared memory in a fixed order.
template <class D>
__global__ void layernorm_dparams_partial_kernel(float* partial, const D* dout, const D* inp,
                                                 const float* mean, const float* rstd, int N,
                                                 int C) {
  __shared__ float sw[8][32], sb[8][32];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int rows_per_chunk = (N + gridDim.y - 1) / gridDim.y;
  const int r0 = blockIdx.y * rows_per_chunk, r1 = min(N, r0 + rows_per_chunk);
  float dw = 0.f, db = 0.f;
  if (c < C) {
    for (int row = r0 + threadIdx.y; row < r1; row += blockDim.y) {
      const float dy = to_f(dout[size_t(row) * C + c]);
      dw += dy * (to_f(inp[size_t(row) * C + c]) - mean[row]) * rstd[row];
      db += dy;
    }
  }
  sw[threadIdx.y][threadIdx.x] = dw;
  sb[threadIdx.y][threadIdx.x] = db;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int k = 1; k < blockDim.y; k++) dw += sw[k][threadIdx.x], db += sb[k][threadIdx.x];
    partial[size_t(blockIdx.y) * 2 * C + c] = dw;
    partial[size_t(blockIdx.y) * 2 * C + C + c] = db;
  }
}

// The same with 16-byte loads: block 32 x 8 covers 32 * V columns (V = 16 / sizeof(D)).
template <class D>
__global__ void layernorm_dparams_partial_vec_kernel(float* partial, const D* dout,
                                                     const D* inp, const float* mean,
                                                     const float* rstd, int N, int C) {
  constexpr int V = vec_elems<D>();
  __shared__ float sw[8][32 * V], sb[8][32 * V];
  const int v = blockIdx.x * 32 + threadIdx.x;  // vector index within the row
  const int rows_per_chunk = (N + gridDim.y - 1) / gridDim.y;
  const int r0 = blockIdx.y * rows_per_chunk, r1 = min(N, r0 + rows_per_chunk);
  float dw[V] = {}, db[V] = {};
  for (int row = r0 + threadIdx.y; row < r1; row += blockDim.y) {
    const int4 rdy = reinterpret_cast<const int4*>(dout + size_t(row) * C)[v];
    const int4 rx = reinterpret_cast<const int4*>(inp + size_t(row) * C)[v];
    const D* dy = reinterpret_cast<const D*>(&rdy);
    const D* x = reinterpret_cast<const D*>(&rx);
    const float m = mean[row], r = rstd[row];
#pragma unroll
    for (int j = 0; j < V; j++) {
      dw[j] += to_f(dy[j]) * (to_f(x[j]) - m) * r;
      db[j] += to_f(dy[j]);
    }
  }
#pragma unroll
  for (int j = 0; j < V; j++) sw[threadIdx.y][threadIdx.x * V + j] = dw[j], sb[threadIdx.y][threadIdx.x * V + j] = db[j];
  __syncthreads();
  // 256 threads sum the 8 row groups of the block's 32 * V columns in a fixed order.
  const int t = threadIdx.y * 32 + threadIdx.x;
  for (int col = t; col < 32 * V; col += 256) {
    float w = 0.f, b = 0.f;
    for (int k = 0; k < 8; k++) w += sw[k][col], b += sb[k][col];
    const int c = blockIdx.x * 32 * V + col;
    partial[size_t(blockIdx.y) * 2 * C + c] = w;
    partial[size_t(blockIdx.y) * 2 * C + C + c] = b;
  }
}

template <class D>
__global__ void layernorm_dparams_final_kernel(D* dweight, D* dbias, const float* partial,
                                               int chunks, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float dw = 0.f, db = 0.f;
  for (int k = 0; k < chunks; k++) {
    dw += partial[size_t(k) * 2 * C + c];
    db += partial[size_t(k) * 2 * C + C + c];
  }
  if (dweight) dweight[c] = from_f<D>(to_f(dweight[c]) + dw);
  if (dbias) dbias[c] = from_f<D>(to_f(dbias[c]) + db);
}

}  // namespace

template <class D>
void layernorm_forward(D* out, float* mean, float* rstd, const D* inp, const D* weight,
                       const D* bias, int N, int C) {
  if (N == 0) return;
  if (vector_path<D>(C))
    layernorm_forward_vec_kernel<<<ceil_div(N, 8), 256>>>(out, mean, rstd, inp, weight, bias, N, C);
  else
    layernorm_forward_kernel<<<ceil_div(N, 8), 256>>>(out, mean, rstd, inp, weight, bias, N, C);
  CUDA_CHECK_LAUNCH();
}

size_t layernorm_backward_scratch_bytes(int, int C) {
  return size_t(kRowChunks) * 2 * C * sizeof(float);
}

template <class D>
void layernorm_backward(D* dinp, D* dweight, D* dbias, const D* dout, const D* inp,
                        const D* weight, const float* mean, const float* rstd, int N, int C,
                        void* scratch) {
  if (N == 0) return;
  if (dinp) {
    if (vector_path<D>(C))
      layernorm_dinp_vec_kernel<<<ceil_div(N, 8), 256>>>(dinp, dout, inp, weight, mean, rstd, N, C);
    else
      layernorm_dinp_kernel<<<ceil_div(N, 8), 256>>>(dinp, dout, inp, weight, mean, rstd, N, C);
    CUDA_CHECK_LAUNCH();
  }
  if (!dweight && !dbias) return;
  float* partial = static_cast<float*>(scratch);
  if (vector_path<D>(C))
    layernorm_dparams_partial_vec_kernel<<<dim3(C / (32 * vec_elems<D>()), kRowChunks),
                                           dim3(32, 8)>>>(partial, dout, inp, mean, rstd, N, C);
  else
    layernorm_dparams_partial_kernel<<<dim3(ceil_div(C, 32), kRowChunks), dim3(32, 8)>>>(
        partial, dout, inp, mean, rstd, N, C);
  CUDA_CHECK_LAUNCH();
  layernorm_dparams_final_kernel<<<ceil_div(C, 256), 256>>>(dweight, dbias, partial, kRowChunks,
                                                            C);
  CUDA_CHECK_LAUNCH();
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*,
                                       const float*, int, int);
template void layernorm_forward<__nv_bfloat16>(__nv_bfloat16*, float*, float*,
                                               const __nv_bfloat16*, const __nv_bfloat16*,
                                               const __nv_bfloat16*, int, int);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*,
                                        const float*, const float*, const float*, int, int,
                                        void*);
template void layernorm_backward<__nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*, __nv_bfloat16*,
                                                const __nv_bfloat16*, const __nv_bfloat16*,
                                                const __nv_bfloat16*, const float*, const float*,
                                                int, int, void*);

}  // namespace gpt2::cuda
