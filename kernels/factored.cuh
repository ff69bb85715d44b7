// Adafactor's factored second moment on the GPU (twin of src/reference/optim/
// factored.hpp), shared by adalomo.cu, adafactor.cu and came.cu: the row and column
// mean EMAs of an m x n statistic X, and the factors rf_i = rsqrt(r_i / mean(r)),
// cf_j = rsqrt(c_j) with X_hat^-1/2 = rf_i cf_j.
//
// The idea that makes it fast: every pass over a matrix is ONE launch. A sweep reads the
// matrix once in tiles (256 threads; a tile is 256 columns x rows_per_block rows; each
// lane owns a run of 8 columns moved with 16-byte loads, each warp every 8th row, 4
// rows in flight) and produces, per tile, fp32 row sums (warp sums) and column sums
// (shared memory across the warps) of X plus a double sum of some scalar (W^2, U^2).
// The last block to finish (atomic ticket, no float atomics) adds the partials in a
// fixed order in double and finishes the pass: the r/c EMAs and both factor vectors, or
// the scalar into a device slot. So a matrix costs one sweep per statistic plus one
// elementwise launch, and nothing waits for the host. Deterministic: fixed shapes,
// fixed orders. Lost variants: a block per row plus chunked column partials in double
// and separate EMA/factor/reduction kernels (about 9 launches and 4 reads of g per
// matrix, ~4x slower on d12).
#pragma once
#include <type_traits>

#include "optim_common.cuh"
#include "reference/optim/factored.hpp"

namespace gpt2::cuda {

constexpr int kRun = 8, kSweepThreads = 256, kTileCols = 32 * kRun, kRowsInFlight = 4;
constexpr int kSweepWarps = kSweepThreads / 32;
static_assert(kTileCols == kSweepThreads, "the column reduction gives each thread one column");

// A run of 8 consecutive elements as fp32: 16-byte accesses when kVec (run aligned and
// whole), else element by element with the `left` elements that exist (0 beyond).
template <bool kVec, class D>
__device__ __forceinline__ void load_run(const D* p, int left, float (&x)[kRun]) {
  if constexpr (kVec && std::is_same_v<D, float>) {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
  } else if constexpr (kVec) {
    const uint4 t = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&t);
#pragma unroll
    for (int k = 0; k < kRun / 2; k++) {
      const float2 f = __bfloat1622float2(h[k]);
      x[2 * k] = f.x, x[2 * k + 1] = f.y;
    }
  } else {
#pragma unroll
    for (int k = 0; k < kRun; k++) x[k] = k < left ? to_f(p[k]) : 0.f;
  }
}
// Stores rounded to nearest (bf16).
template <bool kVec, class D>
__device__ __forceinline__ void store_run(D* p, int left, const float (&x)[kRun]) {
  if constexpr (kVec && std::is_same_v<D, float>) {
    reinterpret_cast<float4*>(p)[0] = make_float4(x[0], x[1], x[2], x[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(x[4], x[5], x[6], x[7]);
  } else if constexpr (kVec) {
    uint4 t;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&t);
#pragma unroll
    for (int k = 0; k < kRun / 2; k++) h[k] = __floats2bfloat162_rn(x[2 * k], x[2 * k + 1]);
    *reinterpret_cast<uint4*>(p) = t;
  } else {
#pragma unroll
    for (int k = 0; k < kRun; k++)
      if (k < left) p[k] = from_f<D>(x[k]);
  }
}
template <bool kVec, class D>
__device__ __forceinline__ void load_weights(const Weights<D>& w, size_t at, int left, float (&x)[kRun]) {
  if (w.master) load_run<kVec>(w.master + at, left, x);
  else load_run<kVec>(w.param + at, left, x);
}
template <bool kVec, class D>
__device__ __forceinline__ void store_weights(const Weights<D>& w, size_t at, int left, const float (&x)[kRun]) {
  if (w.master) {
    store_run<kVec>(w.master + at, left, x);
    store_run<kVec>(w.param + at, left, x);
  } else if constexpr (std::is_same_v<D, float>) {
    store_run<kVec>(w.param + at, left, x);
  } else {
    for (int k = 0; k < kRun && k < left; k++) w.store(at + k, x[k]);  // stochastic rounding
  }
}

// True if runs of 8 can move with 16-byte accesses: whole runs per row, aligned rows.
inline bool vectorizable(int64_t n, std::initializer_list<const void*> ptrs) {
  if (n % kRun != 0) return false;
  for (const void* p : ptrs)
    if (p && uintptr_t(p) % 16 != 0) return false;
  return true;
}

struct SweepShape {
  int64_t m, n;
  int rows_per_block;
};
struct SweepParts {
  float* row;        // [tile][m]: row sums over the tile's 256 columns
  float* col;        // [chunk][n]: column sums over the chunk's rows
  double* scal;      // [block]: the scalar's per-block sums
  unsigned* ticket;  // blocks done; the last resets it to 0
};

// Sweep over an m x n matrix: f.visit<kVec>(i, j, left, x, scal) fills x with X over
// columns j..j+7 of row i (0 past the row) and adds its scalar to `scal`; the last block
// calls f.finish(shape, parts, tiles, chunks, red).
template <class F, bool kVec, bool kRowCol>
__global__ void __launch_bounds__(kSweepThreads) sweep(F f, SweepShape s, SweepParts parts) {
  __shared__ float cols[kSweepWarps][kTileCols];
  __shared__ double red[32];
  __shared__ bool last;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t j = int64_t(blockIdx.x) * kTileCols + lane * kRun;
  const int left = int(s.n - j < kRun ? s.n - j : kRun);  // <= 0: past the row's end
  const int64_t i0 = int64_t(blockIdx.y) * s.rows_per_block;
  const int64_t i1 = i0 + s.rows_per_block < s.m ? i0 + s.rows_per_block : s.m;
  float col[kRun] = {};
  double scal = 0;
  for (int64_t i = i0 + warp; i < i1; i += kSweepWarps * kRowsInFlight) {
    float x[kRowsInFlight][kRun];
#pragma unroll
    for (int u = 0; u < kRowsInFlight; u++) {
      const int64_t r = i + u * kSweepWarps;
      if (r < i1 && left > 0) {
        f.template visit<kVec>(r, j, left, x[u], scal);
      } else {
#pragma unroll
        for (int k = 0; k < kRun; k++) x[u][k] = 0.f;
      }
    }
    if constexpr (kRowCol) {
#pragma unroll
      for (int u = 0; u < kRowsInFlight; u++) {
        float rs = 0;
#pragma unroll
        for (int k = 0; k < kRun; k++) rs += x[u][k], col[k] += x[u][k];
        rs = warp_sum(rs);
        const int64_t r = i + u * kSweepWarps;
        if (lane == 0 && r < i1) parts.row[blockIdx.x * s.m + r] = rs;
      }
    }
  }
  if constexpr (kRowCol) {
#pragma unroll
    for (int k = 0; k < kRun; k++) cols[warp][lane * kRun + k] = col[k];
    __syncthreads();
    const int64_t jc = int64_t(blockIdx.x) * kTileCols + threadIdx.x;
    if (jc < s.n) {
      float t = 0;
      for (int w = 0; w < kSweepWarps; w++) t += cols[w][threadIdx.x];
      parts.col[blockIdx.y * s.n + jc] = t;
    }
  }
  scal = block_sum_d(scal, red);
  if (threadIdx.x == 0) parts.scal[blockIdx.y * gridDim.x + blockIdx.x] = scal;
  __threadfence();  // this block's partials are visible before its ticket
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(parts.ticket, 1u) == gridDim.x * gridDim.y - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  f.finish(s, parts, gridDim.x, gridDim.y, red);
  if (threadIdx.x == 0) *parts.ticket = 0;
}

// The sum of the per-block scalars, in block order (every thread gets it).
__device__ __forceinline__ double finish_scalar(const SweepParts& p, unsigned blocks, double* red) {
  double t = 0;
  for (unsigned b = threadIdx.x; b < blocks; b += blockDim.x) t += __ldcg(p.scal + b);
  return block_sum_d(t, red);
}

// r <- beta r + (1 - beta) rowmean(X), c likewise, then rf_i = rsqrt(r_i / mean(r)) and
// cf_j = rsqrt(c_j) in double, rounded once: the reference's factored_ema and
// factored_inv_sqrt_scale. Partials are read 8 rows / columns at a time so one block
// keeps enough loads in flight for wte's 50304 rows.
__device__ __forceinline__ void finish_factors(const SweepShape& s, const SweepParts& p,
                                               unsigned tiles, unsigned chunks, double beta,
                                               float* r, float* c, float* rf, float* cf,
                                               double* red) {
  constexpr int kBatch = 8;
  double sum_r = 0;
  for (int64_t i0 = int64_t(threadIdx.x) * kBatch; i0 < s.m; i0 += int64_t(blockDim.x) * kBatch) {
    double t[kBatch] = {};
    for (unsigned b = 0; b < tiles; b++)
#pragma unroll
      for (int k = 0; k < kBatch; k++)
        if (i0 + k < s.m) t[k] += __ldcg(p.row + b * s.m + i0 + k);
#pragma unroll
    for (int k = 0; k < kBatch; k++)
      if (i0 + k < s.m) {
        const float ri = float(beta * r[i0 + k] + (1 - beta) * (t[k] / double(s.n)));
        r[i0 + k] = ri;
        sum_r += ri;
      }
  }
  const double mean_r = block_sum_d(sum_r, red) / double(s.m);
  for (int64_t i = threadIdx.x; i < s.m; i += blockDim.x)
    rf[i] = float(1.0 / sqrt(double(r[i]) / mean_r));
  for (int64_t j0 = int64_t(threadIdx.x) * kBatch; j0 < s.n; j0 += int64_t(blockDim.x) * kBatch) {
    double t[kBatch] = {};
    for (unsigned b = 0; b < chunks; b++)
#pragma unroll
      for (int k = 0; k < kBatch; k++)
        if (j0 + k < s.n) t[k] += __ldcg(p.col + b * s.n + j0 + k);
#pragma unroll
    for (int k = 0; k < kBatch; k++)
      if (j0 + k < s.n) {
        const float cj = float(beta * c[j0 + k] + (1 - beta) * (t[k] / double(s.m)));
        c[j0 + k] = cj;
        cf[j0 + k] = float(1.0 / sqrt(double(cj)));
      }
  }
}

// Elementwise pass over the runs of an m x n matrix: f.apply<kVec>(k, i, j, left), k =
// f.constants() computed once per thread.
template <class F, bool kVec>
__global__ void runs(F f, int64_t m, int64_t n) {
  const auto k = f.constants();
  const int64_t per_row = (n + kRun - 1) / kRun;
  for (int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; q < m * per_row;
       q += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = q / per_row, j = (q - i * per_row) * kRun;
    f.template apply<kVec>(k, i, j, int(n - j < kRun ? n - j : kRun));
  }
}

// U's clip divisor max(1, RMS(U) / d) from the sum of U^2.
__device__ __forceinline__ float clip_divisor(double sum_u2, size_t numel, double d) {
  return float(fmax(1.0, sqrt(sum_u2 / double(numel)) / d));
}

// Sweep: S = g^2 + eps1 (eps1 inside, before the means) into r, c and the factors; with
// w, also sum(W^2) into *sum_w2.
template <class D>
struct GradStats {
  const D* g;
  int64_t n;
  Weights<D> w;
  bool with_w;
  float eps1;
  double beta;
  float *r, *c, *rf, *cf;
  double* sum_w2;
  template <bool kVec>
  __device__ void visit(int64_t i, int64_t j, int left, float (&x)[kRun], double& scal) const {
    const size_t at = size_t(i) * size_t(n) + j;
    load_run<kVec>(g + at, left, x);
#pragma unroll
    for (int k = 0; k < kRun; k++) x[k] = (kVec || k < left) ? x[k] * x[k] + eps1 : 0.f;
    if (with_w) {
      float y[kRun];
      load_weights<kVec>(w, at, left, y);
      float t = 0;
#pragma unroll
      for (int k = 0; k < kRun; k++) t += y[k] * y[k];
      scal += t;
    }
  }
  __device__ void finish(const SweepShape& s, const SweepParts& p, unsigned tiles,
                         unsigned chunks, double* red) const {
    finish_factors(s, p, tiles, chunks, beta, r, c, rf, cf, red);
    const double t = finish_scalar(p, tiles * chunks, red);
    if (threadIdx.x == 0 && with_w) *sum_w2 = t;
  }
};

// Sweep: sum over the matrix of U^2, U = g rf_i cf_j, into *out.
template <class D>
struct DirectionSquares {
  const D* g;
  const float *rf, *cf;
  int64_t n;
  double* out;
  template <bool kVec>
  __device__ void visit(int64_t i, int64_t j, int left, float (&x)[kRun], double& scal) const {
    float cv[kRun];
    load_run<kVec>(g + size_t(i) * n + j, left, x);
    load_run<kVec>(cf + j, left, cv);
    const float a = rf[i];
    float t = 0;
#pragma unroll
    for (int k = 0; k < kRun; k++) {
      const float u = x[k] * a * cv[k];
      t += u * u;
    }
    scal += t;
  }
  __device__ void finish(const SweepShape&, const SweepParts& p, unsigned tiles,
                         unsigned chunks, double* red) const {
    const double t = finish_scalar(p, tiles * chunks, red);
    if (threadIdx.x == 0) *out = t;
  }
};

// Partials, factors and the ticket for the sweeps over the table's matrices
// (MemCategory::workspace); launches them on update_stream().
class Factored {
 public:
  Factored(Device& dev, const ParamTable& table) {
    CUDA_CHECK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, 0));
    size_t rows = 1, cols = 1, blocks = 1;
    int64_t m = 1, n = 1;
    for (const ParamSpec& p : table.params) {
      if (!p.is_matrix()) continue;
      const SweepShape s = shape(p.rows, p.cols);
      const int64_t tiles = ceil_div(p.cols, kTileCols), chunks = ceil_div(p.rows, s.rows_per_block);
      rows = std::max(rows, size_t(tiles * p.rows)), cols = std::max(cols, size_t(chunks * p.cols));
      blocks = std::max(blocks, size_t(tiles * chunks));
      m = std::max(m, p.rows), n = std::max(n, p.cols);
    }
    row_ = DeviceBuffer<float>(dev, rows, MemCategory::workspace, "factored row partials");
    col_ = DeviceBuffer<float>(dev, cols, MemCategory::workspace, "factored column partials");
    scal_ = DeviceBuffer<double>(dev, blocks, MemCategory::workspace, "factored scalar partials");
    ticket_ = DeviceBuffer<unsigned>(dev, 1, MemCategory::workspace, "factored ticket");
    dev.zero(ticket_.get(), sizeof(unsigned));
    rf_ = DeviceBuffer<float>(dev, size_t(m), MemCategory::workspace, "factored row factors");
    cf_ = DeviceBuffer<float>(dev, size_t(n), MemCategory::workspace, "factored column factors");
  }

  // Row chunks sized so a sweep has about 4 blocks per SM.
  SweepShape shape(int64_t m, int64_t n) const {
    const int64_t tiles = ceil_div(n, kTileCols), want = std::max<int64_t>(1, 4 * sms_ / tiles);
    const int64_t step = kSweepWarps * kRowsInFlight;
    const int64_t rows = ceil_div(ceil_div(m, want), step) * step;
    return {m, n, int(rows)};
  }

  template <class F>
  void sweep(const F& f, int64_t m, int64_t n, bool vec, bool rowcol) {
    const SweepShape s = shape(m, n);
    const dim3 grid(ceil_div(n, kTileCols), ceil_div(m, s.rows_per_block));
    const SweepParts p{row_.get(), col_.get(), scal_.get(), ticket_.get()};
    cudaStream_t st = update_stream();
    if (vec && rowcol) gpt2::cuda::sweep<F, true, true><<<grid, kSweepThreads, 0, st>>>(f, s, p);
    else if (vec) gpt2::cuda::sweep<F, true, false><<<grid, kSweepThreads, 0, st>>>(f, s, p);
    else if (rowcol) gpt2::cuda::sweep<F, false, true><<<grid, kSweepThreads, 0, st>>>(f, s, p);
    else gpt2::cuda::sweep<F, false, false><<<grid, kSweepThreads, 0, st>>>(f, s, p);
    CUDA_CHECK_LAUNCH();
  }

  template <class F>
  void elementwise(const F& f, int64_t m, int64_t n, bool vec) {
    const unsigned blocks = elementwise_blocks(size_t(m) * size_t(ceil_div(n, kRun)));
    if (vec) runs<F, true><<<blocks, kThreads, 0, update_stream()>>>(f, m, n);
    else runs<F, false><<<blocks, kThreads, 0, update_stream()>>>(f, m, n);
    CUDA_CHECK_LAUNCH();
  }

  float* rf() const { return rf_.get(); }
  float* cf() const { return cf_.get(); }

 private:
  int sms_ = 132;
  DeviceBuffer<float> row_, col_;
  DeviceBuffer<double> scal_;
  DeviceBuffer<unsigned> ticket_;
  DeviceBuffer<float> rf_, cf_;
};

}  // namespace gpt2::cuda

namespace gpt2::cuda {

// Adafactor's update rule as both adafactor.cu and adalomo.cu configure it (AdaLomo is
// Adafactor with scale_parameter, no first moment and no relative step; spec 3.2).
struct AdafactorRule {
  std::string prefix;  // state blob names: "<prefix>.r.<tensor>", as the CPU reference
  double eps1, eps2, clip, decay_rate, beta1;
  bool momentum, scale_parameter, relative_step, warmup_init;
};
template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_adafactor_rule(const json& cfg, const AdafactorRule& rule,
                                                       const ParamTable& table, Device& dev,
                                                       uint64_t seed);

}  // namespace gpt2::cuda
