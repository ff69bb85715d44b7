// LayerNorm over the last dim (eps 1e-5, biased variance) and its backward.
// Forward: one warp per row (8 rows per 256-thread block); mean, then variance of
// (x - mean) in a second pass over the row, which avoids the cancellation of
// E[x^2] - E[x]^2. When C is a multiple of 32 lanes x 16 bytes (768, 1024, 1280 ...)
// the row lives in registers, loaded with 16-byte vectors: the scalar version kept too
// few bytes in flight and ran at ~200 GB/s (12.7 ms of a 52.6 ms d12 step, H200,
// tools/bench_ops); other C take the scalar path. The residual add before each
// layernorm was fused in here (reading a and b, writing a + b and its norm); the
// projection GEMM's epilogue adds it now (kernels/matmul.cu), so the sum is written
// once and read once: H100, same call, d12 B 16 31.0 / 31.0 -> 30.7 / 30.8 ms a step,
// d24 with 12 recompute layers 81.9 / 81.9 -> 81.9 / 82.0.
// Backward:
// - dinp (accumulated): one warp per row, the two row means of the standard formula
//   dinp += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), dnorm = dout * w.
// - dweight/dbias (accumulated): a column reduction over N rows, deterministic, no
//   atomics. Vector path: the dinp kernel itself keeps each lane's column sums in fp32
//   registers over the rows its warp visits, the block's warps add theirs in shared
//   memory in a fixed order and write one fp32 partial row per block; a second small
//   kernel sums the partials. (A separate partial-sum kernel re-read dout and inp.)
//   Scalar path: blocks of 32 columns x kRowChunks row chunks write the partials.
// - dinp_colsum (optional): the column sums of dinp as written, a third partial row
//   beside dweight's and dbias's: the bias gradient of the matmul whose dout this dinp
//   is (attproj's, fcproj's), which would otherwise read the whole N x C dinp again.
// Ones-padded output (src/ops.hpp): rows of ldo > C elements, the pad written as 1, 0, ...
// by the row's first lanes.
// Measured (tools/bench_ops, d12 B 16 T 1024 bf16, H200): layernorm + residual went from
// 4.5 + 1.1 ms to 3.0 ms per step with the then fused add and the fused dweight/dbias partials;
// on an H100, one wave for the backward (see its kernel) took it from 3.46 to 2.80 ms.
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "cuda_check.cuh"
#include "error.hpp"
#include "kernels.cuh"

namespace gpt2::cuda {
namespace {

constexpr int kRowChunks = 256;  // partial rows: scalar chunks, or fused backward blocks
constexpr int kMaxVecs = 8;      // vectors per lane kept in registers: C <= 8 * 32 * (16 / size)

template <class D>
bool vector_path(int C, std::initializer_list<const void*> rows) {
  for (const void* p : rows)  // 16-byte loads: every row pointer (null = unused) aligned
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return C % (32 * vec_elems<D>()) == 0 && C / (32 * vec_elems<D>()) <= kMaxVecs;
}

// Lanes 0 .. ldo - C - 1 write a padded row's tail: 1, then zeros.
template <class D>
__device__ __forceinline__ void write_pad(D* y, int C, int ldo, int lane) {
  if (lane < ldo - C) y[C + lane] = from_f<D>(lane == 0 ? 1.f : 0.f);
}

// Loads lane's vectors of one row into x (as float).
template <class D, int NV>
__device__ __forceinline__ void load_row(float (&x)[NV][vec_elems<D>()], const D* row, int nv,
                                         int lane) {
  const int4* v = reinterpret_cast<const int4*>(row);
#pragma unroll
  for (int i = 0; i < NV; i++) {
    if (i >= nv) break;
    const int4 raw = v[i * 32 + lane];
    const D* e = reinterpret_cast<const D*>(&raw);
#pragma unroll
    for (int j = 0; j < vec_elems<D>(); j++) x[i][j] = to_f(e[j]);
  }
}

// NV = C / (32 V) vectors per lane, a template argument so the row takes exactly the
// registers it needs: sized for the widest row, d12's kernel took 91 registers, two
// 256-thread blocks per SM, and moved 1.97 TB/s (ncu, H100, 40 us a call).
template <class D, int NV>
__global__ void layernorm_forward_vec_kernel(D* out, float* mean_out, float* rstd_out, const D* inp,
                                             const D* weight, const D* bias, int N, int C,
                                             int ldo) {
  constexpr int V = vec_elems<D>();
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  float x[NV][V];
  const int4* xv = reinterpret_cast<const int4*>(inp + size_t(row) * C);
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < NV; i++) {
    const int4 raw = xv[i * 32 + lane];
    const D* e = reinterpret_cast<const D*>(&raw);
#pragma unroll
    for (int j = 0; j < V; j++) sum += x[i][j] = to_f(e[j]);
  }
  const float mean = warp_sum(sum) / C;
  float var = 0.f;
#pragma unroll
  for (int i = 0; i < NV; i++)
#pragma unroll
    for (int j = 0; j < V; j++) var += (x[i][j] - mean) * (x[i][j] - mean);
  const float rstd = rsqrtf(warp_sum(var) / C + 1e-5f);
  D* const out_row = out + size_t(row) * ldo;
  int4* y = reinterpret_cast<int4*>(out_row);
#pragma unroll
  for (int i = 0; i < NV; i++) {
    const int4 raw_w = reinterpret_cast<const int4*>(weight)[i * 32 + lane];
    const int4 raw_b = bias ? reinterpret_cast<const int4*>(bias)[i * 32 + lane] : int4{};
    const D* w = reinterpret_cast<const D*>(&raw_w);
    const D* b = reinterpret_cast<const D*>(&raw_b);
    int4 raw;
    D* e = reinterpret_cast<D*>(&raw);
#pragma unroll
    for (int j = 0; j < V; j++)
      e[j] = from_f<D>((x[i][j] - mean) * rstd * to_f(w[j]) + (bias ? to_f(b[j]) : 0.f));
    y[i * 32 + lane] = raw;
  }
  write_pad(out_row, C, ldo, lane);
  if (lane == 0) {
    if (mean_out) mean_out[row] = mean;
    if (rstd_out) rstd_out[row] = rstd;
  }
}

// grid kRowChunks (at most), 256 threads; warp w of block k takes rows k * 8 + w, then
// every 8 * gridDim.x. NV = C / (32 * V) vectors per lane. partial (if non-null) gets
// [gridDim.x][P C]: dweight sums, dbias sums, and with kColsum dinp's (P = 3, else 2).
// The grid is at most one wave (layernorm_backward), so the number of partial rows, and
// with it the order of the dweight/dbias sums, depends on the GPU's SM count: runs
// repeat bit for bit on one kind of GPU, not across kinds.
// Each warp sums its rows' dweight/dbias terms in its own slice of shared memory
// ([warps][2C] floats, 8 KiB per warp at C = 1024, laid out so that lane l of vector i
// element j is word (i V + j) 32 + l: conflict-free, and no lane touches another's words,
// so no barrier until the warps' slices are added, in warp order, at the end). Held in
// registers instead, they took the kernel to 125 registers at C = 768 and 165 at 1024, two
// blocks per SM and one (d24), and ~1.95 TB/s (ncu, H100). The row's dinp is loaded with
// its inp and dout, so each row is one round trip to memory, not two. The weight row is
// re-read per row (from L1) rather than held: held, it took d12's kernel to 164 registers
// (ncu, H100, 71 us a call).
template <class D, int NV, bool kColsum>
__global__ void __launch_bounds__(256, NV <= 5 ? 2 : 1)
    layernorm_backward_vec_kernel(D* dinp, float* partial, const D* dout, const D* inp,
                                  const D* weight, const float* mean, const float* rstd, int N,
                                  int C) {
  constexpr int V = vec_elems<D>(), P = kColsum ? 3 : 2;
  extern __shared__ float acc[];  // [warps][P][C], each warp's words as above
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  float* mine = acc + size_t(warp) * P * C;
  auto word = [&](int i, int j) { return (i * V + j) * 32 + lane; };
  if (partial)
#pragma unroll
    for (int i = 0; i < NV; i++)
#pragma unroll
      for (int j = 0; j < V; j++)
#pragma unroll
        for (int q = 0; q < P; q++) mine[q * C + word(i, j)] = 0.f;
  for (int row = blockIdx.x * warps + warp; row < N; row += gridDim.x * warps) {
    float n[NV][V], dn[NV][V];
    int4 dx_raw[NV];
    int4* dx = reinterpret_cast<int4*>(dinp + size_t(row) * C);
    load_row<D>(n, inp + size_t(row) * C, NV, lane);
    load_row<D>(dn, dout + size_t(row) * C, NV, lane);
    if (dinp)
#pragma unroll
      for (int i = 0; i < NV; i++) dx_raw[i] = dx[i * 32 + lane];
    const float m = mean[row], r = rstd[row];
    float sum_dn = 0.f, sum_dn_n = 0.f;
#pragma unroll
    for (int i = 0; i < NV; i++) {
      const int4 raw_w = reinterpret_cast<const int4*>(weight)[i * 32 + lane];
      const D* w = reinterpret_cast<const D*>(&raw_w);
#pragma unroll
      for (int j = 0; j < V; j++) {
        n[i][j] = (n[i][j] - m) * r;
        if (partial) {
          mine[word(i, j)] += dn[i][j] * n[i][j];
          mine[C + word(i, j)] += dn[i][j];
        }
        dn[i][j] *= to_f(w[j]);
        sum_dn += dn[i][j];
        sum_dn_n += dn[i][j] * n[i][j];
      }
    }
    if (!dinp) continue;
    const float mean_dn = warp_sum(sum_dn) / C, mean_dn_n = warp_sum(sum_dn_n) / C;
#pragma unroll
    for (int i = 0; i < NV; i++) {
      D* e = reinterpret_cast<D*>(&dx_raw[i]);
#pragma unroll
      for (int j = 0; j < V; j++) {
        e[j] = from_f<D>(to_f(e[j]) + r * (dn[i][j] - mean_dn - n[i][j] * mean_dn_n));
        if (kColsum) mine[2 * C + word(i, j)] += to_f(e[j]);  // the value stored
      }
      dx[i * 32 + lane] = dx_raw[i];
    }
  }
  if (!partial) return;
  __syncthreads();
  for (int c = threadIdx.x; c < P * C; c += blockDim.x) {
    const int part = c / C, cc = c % C;
    const int at = part * C + ((cc / (32 * V)) * V + cc % V) * 32 + (cc / V) % 32;
    float sum = acc[at];
    for (int k = 1; k < warps; k++) sum += acc[size_t(k) * P * C + at];
    partial[size_t(blockIdx.x) * P * C + c] = sum;
  }
}

template <class D>
__global__ void layernorm_forward_kernel(D* out, float* mean_out, float* rstd_out, const D* inp,
                                         const D* weight, const D* bias, int N, int C, int ldo) {
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
  D* y = out + size_t(row) * ldo;
  for (int c = lane; c < C; c += 32) {
    const float n = (to_f(x[c]) - mean) * rstd;
    y[c] = from_f<D>(n * to_f(weight[c]) + (bias ? to_f(bias[c]) : 0.f));
  }
  write_pad(y, C, ldo, lane);
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
// combine through shared memory in a fixed order. With dinp (the finished gradient), a
// third partial row of its column sums: partial is [chunks][P C], P = 2 or 3.
template <class D>
__global__ void layernorm_dparams_partial_kernel(float* partial, const D* dout, const D* inp,
                                                 const D* dinp, const float* mean,
                                                 const float* rstd, int N, int C) {
  __shared__ float sw[8][32], sb[8][32], sx[8][32];
  const int c = blockIdx.x * 32 + threadIdx.x, P = dinp ? 3 : 2;
  const int rows_per_chunk = (N + gridDim.y - 1) / gridDim.y;
  const int r0 = blockIdx.y * rows_per_chunk, r1 = min(N, r0 + rows_per_chunk);
  float dw = 0.f, db = 0.f, dx = 0.f;
  if (c < C) {
    for (int row = r0 + threadIdx.y; row < r1; row += blockDim.y) {
      const float dy = to_f(dout[size_t(row) * C + c]);
      dw += dy * (to_f(inp[size_t(row) * C + c]) - mean[row]) * rstd[row];
      db += dy;
      if (dinp) dx += to_f(dinp[size_t(row) * C + c]);
    }
  }
  sw[threadIdx.y][threadIdx.x] = dw;
  sb[threadIdx.y][threadIdx.x] = db;
  sx[threadIdx.y][threadIdx.x] = dx;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int k = 1; k < blockDim.y; k++)
      dw += sw[k][threadIdx.x], db += sb[k][threadIdx.x], dx += sx[k][threadIdx.x];
    float* row = partial + size_t(blockIdx.y) * P * C;
    row[c] = dw, row[C + c] = db;
    if (dinp) row[2 * C + c] = dx;
  }
}

// grid ceil(C/32), block 32 x 32: the 32 warps take every 32nd partial row of 32 columns
// and combine in a fixed order. One thread per column over all rows was latency-bound,
// and so were 8 warps: 19 us a call for d12's 256 x 1536 partials (ncu, H100; 24 calls
// a step) with 24 blocks each walking 32 rows one load after another.
// With colsum, partial rows are [3C] and the third sum is written (not added) to colsum.
template <class D>
__global__ void layernorm_dparams_final_kernel(D* dweight, D* dbias, float* colsum,
                                               const float* partial, int chunks, int C) {
  __shared__ float sw[32][32], sb[32][32], sx[32][32];
  const int c = blockIdx.x * 32 + threadIdx.x, P = colsum ? 3 : 2;
  float dw = 0.f, db = 0.f, dx = 0.f;
  if (c < C)
    for (int k = threadIdx.y; k < chunks; k += blockDim.y) {
      const float* row = partial + size_t(k) * P * C;
      dw += row[c], db += row[C + c];
      if (colsum) dx += row[2 * C + c];
    }
  sw[threadIdx.y][threadIdx.x] = dw;
  sb[threadIdx.y][threadIdx.x] = db;
  sx[threadIdx.y][threadIdx.x] = dx;
  __syncthreads();
  if (threadIdx.y != 0 || c >= C) return;
  for (int k = 1; k < blockDim.y; k++)
    dw += sw[k][threadIdx.x], db += sb[k][threadIdx.x], dx += sx[k][threadIdx.x];
  if (dweight) dweight[c] = from_f<D>(to_f(dweight[c]) + dw);
  if (dbias) dbias[c] = from_f<D>(to_f(dbias[c]) + db);
  if (colsum) colsum[c] = dx;
}

// Calls f(std::integral_constant<int, nv>) for nv in 1 .. kMaxVecs.
template <class F>
void with_vecs(int nv, F&& f) {
  switch (nv) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}
static_assert(kMaxVecs == 8, "with_vecs enumerates 1 .. kMaxVecs");

// Blocks of the backward kernel that fit on the current GPU at once (occupancy x SMs),
// after allowing it the dynamic shared memory it needs (over 48 KiB for C > 768, which
// the runtime requires per device). Asked once per kernel and device rather than on each
// of a step's calls: NV fixes C and so smem.
template <class D, int NV, bool kColsum>
int backward_resident_blocks(size_t smem) {
  return once_per_device([smem](int device) {
    int sms = 0, per_sm = 0;
    CUDA_CHECK(cudaFuncSetAttribute(layernorm_backward_vec_kernel<D, NV, kColsum>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, layernorm_backward_vec_kernel<D, NV, kColsum>, 256, smem));
    return per_sm * sms;
  });
}

}  // namespace

template <class D>
void layernorm_forward(D* out, float* mean, float* rstd, const D* inp, const D* weight,
                       const D* bias, int N, int C, int ldo) {
  if (N == 0) return;
  // A padded row stays 16-byte aligned (kOnesPad elements of bf16 are 16 bytes).
  if (vector_path<D>(C, {out, inp, weight, bias}) && ldo * sizeof(D) % 16 == 0)
    with_vecs(C / (32 * vec_elems<D>()), [&](auto nv) {
      layernorm_forward_vec_kernel<D, decltype(nv)::value>
          <<<ceil_div(N, 8), 256, 0, compute_stream()>>>(out, mean, rstd, inp, weight, bias, N, C,
                                                         ldo);
    });
  else
    layernorm_forward_kernel<<<ceil_div(N, 8), 256, 0, compute_stream()>>>(out, mean, rstd, inp,
                                                                           weight, bias, N, C, ldo);
  CUDA_CHECK_LAUNCH();
}

size_t layernorm_backward_scratch_bytes(int, int C) {
  return size_t(kRowChunks) * 3 * C * sizeof(float);  // dweight, dbias, dinp_colsum
}

template <class D>
void layernorm_backward(D* dinp, D* dweight, D* dbias, const D* dout, const D* inp,
                        const D* weight, const float* mean, const float* rstd, int N, int C,
                        void* scratch, float* dinp_colsum) {
  if (dinp_colsum && !dinp) fail("internal: layernorm_backward's dinp_colsum needs dinp");
  const bool sums = dweight || dbias || dinp_colsum;
  if (N == 0 || (!dinp && !sums)) return;
  float* partial = static_cast<float*>(scratch);
  int chunks = kRowChunks;
  if (vector_path<D>(C, {dinp, dout, inp, weight})) {
    with_vecs(C / (32 * vec_elems<D>()), [&](auto nv) {
      constexpr int NV = decltype(nv)::value;
      auto launch = [&](auto colsum) {
        constexpr bool kColsum = decltype(colsum)::value;
        // <= 192 KiB (C <= 2048): 8 warps' dweight, dbias (and dinp) sums
        const size_t smem = 8 * (kColsum ? 3 : 2) * size_t(C) * sizeof(float);
        // No more blocks than fit at once: a second, partial wave would double the time.
        chunks = std::max(1, std::min<int>({kRowChunks, int(ceil_div(N, 8)),
                                            backward_resident_blocks<D, NV, kColsum>(smem)}));
        layernorm_backward_vec_kernel<D, NV, kColsum><<<chunks, 256, smem, compute_stream()>>>(
            dinp, sums ? partial : nullptr, dout, inp, weight, mean, rstd, N, C);
      };
      if (dinp_colsum) launch(std::true_type{});
      else launch(std::false_type{});
    });
    CUDA_CHECK_LAUNCH();
  } else {
    if (dinp) {
      layernorm_dinp_kernel<<<ceil_div(N, 8), 256, 0, compute_stream()>>>(dinp, dout, inp, weight,
                                                                          mean, rstd, N, C);
      CUDA_CHECK_LAUNCH();
    }
    if (sums) {
      layernorm_dparams_partial_kernel<<<dim3(ceil_div(C, 32), kRowChunks), dim3(32, 8), 0,
                                         compute_stream()>>>(
          partial, dout, inp, dinp_colsum ? dinp : nullptr, mean, rstd, N, C);
      CUDA_CHECK_LAUNCH();
    }
  }
  if (!sums) return;
  layernorm_dparams_final_kernel<<<ceil_div(C, 32), dim3(32, 32), 0, compute_stream()>>>(
      dweight, dbias, dinp_colsum, partial, chunks, C);
  CUDA_CHECK_LAUNCH();
}

#define INSTANTIATE(D)                                                                           \
  template void layernorm_forward<D>(D*, float*, float*, const D*, const D*, const D*, int, int, \
                                     int);                                                       \
  template void layernorm_backward<D>(D*, D*, D*, const D*, const D*, const D*, const float*,    \
                                      const float*, int, int, void*, float*);
INSTANTIATE(float)
INSTANTIATE(__nv_bfloat16)
#undef INSTANTIATE

}  // namespace gpt2::cuda
