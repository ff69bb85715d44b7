// LayerNorm over the last dim (eps 1e-5, biased variance) and its backward.
// Forward: one warp per row (8 rows per 256-thread block); mean, then variance of
// (x - mean) in a second pass over the row (cached in L1), which avoids the
// cancellation of E[x^2] - E[x]^2. Backward:
// - dinp (accumulated): one warp per row, the two row means of the standard formula
//   dinp += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), dnorm = dout * w.
// - dweight/dbias (accumulated): a column reduction over N rows, in two deterministic
//   stages: blocks of 32 columns x kRowChunks row chunks write fp32 partials to scratch,
//   then one thread per column sums the chunks in order. No atomics anywhere.
#include "cuda_check.cuh"
#include "kernels.cuh"

namespace gpt2::cuda {
namespace {

constexpr int kRowChunks = 64;

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
    layernorm_dinp_kernel<<<ceil_div(N, 8), 256>>>(dinp, dout, inp, weight, mean, rstd, N, C);
    CUDA_CHECK_LAUNCH();
  }
  if (!dweight && !dbias) return;
  float* partial = static_cast<float*>(scratch);
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
