// Adafactor's factored second moment on the GPU (twin of src/reference/optim/
// factored.hpp), shared by adalomo.cu, adafactor.cu and came.cu: the row and column
// mean EMAs of an m x n statistic X, and the factors rf_i = rsqrt(r_i / mean(r)),
// cf_j = rsqrt(c_j) with X_hat^-1/2 = rf_i cf_j.
//
// The idea that makes it fast: every pass over a matrix is ONE launch, and one launch
// serves many matrices. A sweep reads the matrix once in tiles (256 threads; a tile is
// 256 columns x rows_per_block rows; each lane owns a run of 8 columns moved with 16-byte
// loads, each warp every 8th row, 8 rows an iteration) and writes per tile fp32 row sums
// (warp sums) and column sums (shared memory across the warps) of X, plus a double
// per-block sum of a scalar (W^2, U^2). The reduction finishes inside the same launch,
// in three ticketed stages (atomic counters, no float atomics): the last block of a row
// chunk adds its rows' partials and updates r, the last block of a column tile does c
// and cf, and the last block of the matrix takes mean(r), writes rf and the scalar.
// Every sum has a fixed order, so runs are bit-reproducible, and nothing waits for the
// host. Each matrix owns its partials, factors and tickets, so the optimizers hand the
// sweeps of up to kMaxJobs matrices (the tensors of a backward group, or of a whole
// after_backward step) to one launch as a table of jobs passed by value: the grid is the
// jobs' blocks end to end, and one matrix's serial finishing stages overlap the others'
// sweeps. Same per-matrix grid either way, so batched and one-at-a-time updates agree
// bit for bit. Lost variants: a block per row with double column partials and separate
// EMA/factor/reduction kernels (about 9 launches and 4 reads of g per matrix); one last
// block finishing everything (its serial loop over ~10^5 partials cost ~30 us per
// matrix); one launch per matrix and pass (d12 step on an H200: AdaLomo 2.5 ms, Adafactor
// 2.3, CAME 3.5, AdamW 1.3: 248-298 launches, latency more than bytes).
// Where CAME's 1.3x AdamW comes from, at AdamW's bytes (28 per element either way, bf16
// weights + fp32 master): ncu, H100, bench_optimizers d12, ms a step: the g^2 sweep 0.29
// (0.9 TB/s), sum U^2 0.12 (2.2 TB/s), the moment sweep 0.55 (2.25 TB/s), the apply 0.57
// (3.0 TB/s), against AdamW's one kernel at 1.18 (2.95 TB/s). The two row/column sweeps
// kept 8 rows x 8 columns in registers (122-128 a thread: 2 blocks an SM, 25% occupancy)
// and issued 0.26 instructions per scheduler cycle, waiting on loads. So each row is now
// summed into its row partial and the column sums as soon as it is loaded (the same sums
// in the same order: the same bits). H100, bench_optimizers, one call, two runs each:
// CAME 1.722 / 1.730 -> 1.667 / 1.630 ms (1.32-1.34x -> 1.27-1.28x AdamW), Adafactor
// 1.070 / 1.074 -> 1.006 / 0.969, AdaLomo 1.222 / 1.235 -> 1.180 / 1.130; the rows' loop
// not unrolled at all did the same (CAME 1.656, one run). Lost before that (same calls,
// CAME against AdamW's 1.26-1.30 ms in bench_optimizers): at least 128 / 256 / 512 rows per
// block (training update_ms 1.76 / 1.78 / 1.83 against 1.76); 4 rows in flight, alone or
// with __launch_bounds__ asking 3 or 4 blocks an SM (1.66-1.76 against 1.66-1.70); 3 blocks
// at 8 rows (spills, 1.85-1.89); an L2 prefetch of the next 8 rows, one or two iterations
// ahead, at 256 or 512 rows per block (1.80-1.90). Lost since (H100, bench_optimizers, one call,
// two runs each, 2026-11-28): each warp's rows fetched first as raw 16-byte words (bf16 still
// packed), then unpacked and summed (8 rows in flight for the g^2 and U^2 sweeps, 4 for CAME's
// moment: 106 / 60 / 122 registers against 44 / 29 / 78), CAME 1.610 / 1.645 -> 1.687 /
// 1.671 ms, Adafactor 0.980 / 0.986 -> 1.019 / 0.985, AdaLomo 1.135 / 1.156 -> 1.169 /
// 1.152; with __launch_bounds__(256, 3) on top, CAME 1.846 / 1.810. Neither occupancy
// nor loads in flight moves these sweeps, so what is left to try changes what they do:
// the g^2 sums taken in the pipeline's norm pass (one read of g fewer).
#pragma once
#include <type_traits>
#include <vector>

#include "backend.hpp"
#include "optim_common.cuh"
#include "reference/optim/factored.hpp"

namespace gpt2::cuda {

constexpr int kRun = 8, kSweepThreads = 256, kTileCols = 32 * kRun, kRowsPerIteration = 8;
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
  } else if constexpr (kVec) {  // stochastic rounding as Weights::store, one 16-byte store
    uint4 t;
    __nv_bfloat16* h = reinterpret_cast<__nv_bfloat16*>(&t);
#pragma unroll
    for (int k = 0; k < kRun; k++) h[k] = bf16_stochastic(x[k], uint32_t(splitmix64(w.stream ^ (at + k))));
    *reinterpret_cast<uint4*>(w.param + at) = t;
  } else {
    for (int k = 0; k < kRun && k < left; k++) w.store(at + k, x[k]);
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
  unsigned tiles, chunks;  // of 256 columns, of rows_per_block rows
};
struct SweepParts {
  float* row;        // [tile][m]: row sums over the tile's 256 columns
  float* col;        // [chunk][n]: column sums over the chunk's rows
  double* scal;      // [block]: the scalar's per-block sums
  double* chunk_r;   // [chunk]: sum of the chunk's new r
  unsigned* ticket;  // [chunk] blocks done per row chunk, [tile] per column tile, then
                     // one for the matrix; whoever finishes a stage resets its ticket
};
// Where a statistic sweep leaves its EMAs: r <- beta r + (1 - beta) rowmean(X), c
// likewise, and the factors rf_i = rsqrt(r_i / mean(r)), cf_j = rsqrt(c_j) (double,
// rounded once, as the reference's factored_inv_sqrt_scale). With step_beta, beta is
// the step's (g_step.d[1], Adafactor's beta2_t) rather than a constant.
struct Ema {
  double beta;
  float *r, *c, *rf, *cf;
  bool step_beta = false;
  __device__ double now() const { return step_beta ? g_step.d[1] : beta; }
};

// Stage "row chunk done" (its last tile): the chunk's rows, summed over the tiles in
// order, into r; the chunk's sum of the new r into chunk_r.
__device__ __forceinline__ void finish_rows(const SweepShape& s, const SweepParts& p,
                                            const Ema& e, unsigned chunk, double* red) {
  const int64_t i0 = int64_t(chunk) * s.rows_per_block;
  const int64_t i1 = i0 + s.rows_per_block < s.m ? i0 + s.rows_per_block : s.m;
  double sum_r = 0;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
    double t = 0;
    for (unsigned b = 0; b < s.tiles; b++) t += __ldcg(p.row + b * s.m + i);
    const double beta = e.now();
    const float ri = float(beta * e.r[i] + (1 - beta) * (t / double(s.n)));
    e.r[i] = ri;
    sum_r += ri;
  }
  sum_r = block_sum_d(sum_r, red);
  if (threadIdx.x == 0) p.chunk_r[chunk] = sum_r;
}

// Stage "column tile done" (its last chunk): the tile's columns, summed over the chunks
// in order, into c and cf. One column per thread, 8 chunks' loads in flight.
__device__ __forceinline__ void finish_cols(const SweepShape& s, const SweepParts& p,
                                            const Ema& e, unsigned tile) {
  const int64_t j = int64_t(tile) * kTileCols + threadIdx.x;
  if (j >= s.n) return;
  double t = 0;
#pragma unroll 8
  for (unsigned b = 0; b < s.chunks; b++) t += __ldcg(p.col + b * s.n + j);
  const double beta = e.now();
  const float cj = float(beta * e.c[j] + (1 - beta) * (t / double(s.m)));
  e.c[j] = cj;
  e.cf[j] = float(1.0 / sqrt(double(cj)));
}

// Stage "matrix done": mean(r) from the chunk sums, then rf.
__device__ __forceinline__ void finish_factors(const SweepShape& s, const SweepParts& p,
                                               const Ema& e, double* red) {
  double t = 0;
  for (unsigned b = threadIdx.x; b < s.chunks; b += blockDim.x) t += __ldcg(p.chunk_r + b);
  const double mean_r = block_sum_d(t, red) / double(s.m);
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < s.m; i += blockDim.x)
    e.rf[i] = float(1.0 / sqrt(double(__ldcg(e.r + i)) / mean_r));
}

// One matrix's sweep: f.visit<kVec>(i, j, left, x, scal) fills x with X over columns
// j..j+7 of row i (0 past the row) and adds its scalar to `scal`. With kRowCol the sums
// of X go into `ema`; the scalar's total goes to *scal_out (if given).
template <class F>
struct SweepJob {
  F f;
  SweepShape s;
  SweepParts parts;
  Ema ema;
  double* scal_out;
};

template <class F, bool kVec, bool kRowCol>
__global__ void __launch_bounds__(kSweepThreads) sweep(const __grid_constant__ Jobs<SweepJob<F>> b) {
  __shared__ float cols[kSweepWarps][kTileCols];
  __shared__ double red[32];
  __shared__ bool flag;
  const int q = job_of(b);
  const SweepJob<F>& job = b.job[q];
  const SweepShape& s = job.s;
  const SweepParts& parts = job.parts;
  const unsigned block = blockIdx.x - b.first[q], tile = block % s.tiles, chunk = block / s.tiles;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t j = int64_t(tile) * kTileCols + lane * kRun;
  const int left = int(s.n - j < kRun ? s.n - j : kRun);  // <= 0: past the row's end
  const int64_t i0 = int64_t(chunk) * s.rows_per_block;
  const int64_t i1 = i0 + s.rows_per_block < s.m ? i0 + s.rows_per_block : s.m;
  float col[kRun] = {};
  double scal = 0;
  for (int64_t i = i0 + warp; i < i1; i += kSweepWarps * kRowsPerIteration) {
#pragma unroll
    for (int u = 0; u < kRowsPerIteration; u++) {
      const int64_t r = i + u * kSweepWarps;
      float x[kRun];
      if (r < i1 && left > 0) {
        job.f.template visit<kVec>(r, j, left, x, scal);
      } else {
#pragma unroll
        for (int k = 0; k < kRun; k++) x[k] = 0.f;
      }
      if constexpr (kRowCol) {
        float rs = 0;
#pragma unroll
        for (int k = 0; k < kRun; k++) rs += x[k], col[k] += x[k];
        rs = warp_sum(rs);
        if (lane == 0 && r < i1) parts.row[tile * s.m + r] = rs;
      }
    }
  }
  if constexpr (kRowCol) {
#pragma unroll
    for (int k = 0; k < kRun; k++) cols[warp][lane * kRun + k] = col[k];
    __syncthreads();
    const int64_t jc = int64_t(tile) * kTileCols + threadIdx.x;
    if (jc < s.n) {
      float t = 0;
      for (int w = 0; w < kSweepWarps; w++) t += cols[w][threadIdx.x];
      parts.col[chunk * s.n + jc] = t;
    }
    if (arrive(parts.ticket + chunk, s.tiles, &flag)) finish_rows(s, parts, job.ema, chunk, red);
    if (arrive(parts.ticket + s.chunks + tile, s.chunks, &flag)) finish_cols(s, parts, job.ema, tile);
  }
  if (job.scal_out) {
    scal = block_sum_d(scal, red);
    if (threadIdx.x == 0) parts.scal[block] = scal;
  }
  if (!arrive(parts.ticket + s.chunks + s.tiles, s.tiles * s.chunks, &flag)) return;
  if constexpr (kRowCol) finish_factors(s, parts, job.ema, red);
  if (job.scal_out) {
    double t = 0;
    for (unsigned k = threadIdx.x; k < s.tiles * s.chunks; k += blockDim.x) t += __ldcg(parts.scal + k);
    t = block_sum_d(t, red);
    if (threadIdx.x == 0) *job.scal_out = t;
  }
}

// One matrix's elementwise pass over its runs of 8: f.apply<kVec>(k, i, j, left) on
// f.now() (the step's copy: its weights' stochastic-rounding stream), k = f.constants()
// computed once per thread; grid-stride over the job's own blocks.
template <class F>
struct RunsJob {
  F f;
  int64_t m, n;
  unsigned blocks;
};

template <class F, bool kVec>
__global__ void runs(const __grid_constant__ Jobs<RunsJob<F>> b) {
  const int q = job_of(b);
  const RunsJob<F>& job = b.job[q];
  const F f = job.f.now();
  const auto k = f.constants();
  const int64_t per_row = (job.n + kRun - 1) / kRun, total = job.m * per_row;
  for (int64_t r = int64_t(blockIdx.x - b.first[q]) * blockDim.x + threadIdx.x; r < total;
       r += int64_t(job.blocks) * blockDim.x) {
    const int64_t i = r / per_row, j = (r - i * per_row) * kRun;
    f.template apply<kVec>(k, i, j, int(job.n - j < kRun ? job.n - j : kRun));
  }
}

// Vectors (biases, layernorm) run as one block each, many per launch: their cost is
// launches, not bytes.
constexpr int kVectorThreads = 1024, kVectorCached = 4;

// U's clip divisor max(1, RMS(U) / d) from the sum of U^2.
__device__ __forceinline__ float clip_divisor(double sum_u2, size_t numel, double d) {
  return float(fmax(1.0, sqrt(sum_u2 / double(numel)) / d));
}

// Sweep: S = g^2 + eps1 (eps1 inside, before the means) into the EMAs; with_w, sum(W^2)
// as the scalar.
template <class D>
struct GradStats {
  const D* g;
  int64_t n;
  Weights<D> w;
  bool with_w;
  float eps1;
  float scale = 1.f;  // the gradient is scale * g (TensorUpdate::grad_scale)
  template <bool kVec>
  __device__ void visit(int64_t i, int64_t j, int left, float (&x)[kRun], double& scal) const {
    const size_t at = size_t(i) * size_t(n) + j;
    load_run<kVec>(g + at, left, x);
#pragma unroll
    for (int k = 0; k < kRun; k++) {
      const float y = x[k] * scale;
      x[k] = (kVec || k < left) ? y * y + eps1 : 0.f;
    }
    if (with_w) {
      float y[kRun];
      load_weights<kVec>(w, at, left, y);
      float t = 0;
#pragma unroll
      for (int k = 0; k < kRun; k++) t += y[k] * y[k];
      scal += t;
    }
  }
};

// Sweep: U^2, U = g rf_i cf_j, as the scalar.
template <class D>
struct DirectionSquares {
  const D* g;
  const float *rf, *cf;
  int64_t n;
  float scale = 1.f;  // as GradStats::scale
  template <bool kVec>
  __device__ void visit(int64_t i, int64_t j, int left, float (&x)[kRun], double& scal) const {
    float cv[kRun];
    load_run<kVec>(g + size_t(i) * n + j, left, x);
    load_run<kVec>(cf + j, left, cv);
    const float a = rf[i];
    float t = 0;
#pragma unroll
    for (int k = 0; k < kRun; k++) {
      const float u = x[k] * scale * a * cv[k];
      t += u * u;
    }
    scal += t;
  }
};

// Each matrix's partials, factors and tickets for its sweeps (MemCategory::workspace; 8
// MiB for d12, where one shared set was 1 MiB: the price of many matrices per launch);
// launches batches of sweeps and elementwise passes on update_stream().
class Factored {
 public:
  struct Offsets {
    size_t row, col, rf, cf, scal, chunk_r, ticket;
  };
  // Each local matrix's slices of the buffers below (by tensor id) and the buffers'
  // lengths (`end`) on a GPU of `sms` SMs; the constructor allocates exactly these and
  // workspace_bytes() is the memory plan's figure for them.
  struct Layout {
    std::vector<Offsets> at;
    Offsets end;
  };
  static Layout layout(const ParamTable& table, int sms) {
    Layout l{std::vector<Offsets>(table.params.size()), Offsets{}};
    // Every slice starts on a 32-byte boundary: cf is read in 16-byte runs.
    const auto slice = [](size_t& end, size_t k) {
      const size_t at = end;
      end += (k + kRun - 1) / kRun * kRun;
      return at;
    };
    Offsets& end = l.end;
    for (const ParamSpec& p : table.params) {
      if (!p.is_matrix() || !p.local) continue;
      const SweepShape s = shape(p.rows, p.cols, sms);
      const size_t m = size_t(p.rows), n = size_t(p.cols);
      Offsets& o = l.at[p.id];
      o.row = slice(end.row, s.tiles * m), o.col = slice(end.col, s.chunks * n);
      o.rf = slice(end.rf, m), o.cf = slice(end.cf, n);
      o.scal = slice(end.scal, size_t(s.tiles) * s.chunks), o.chunk_r = slice(end.chunk_r, s.chunks);
      o.ticket = slice(end.ticket, size_t(s.chunks) + s.tiles + 1);
    }
    return l;
  }
  // Elements of a buffer of length k: at least one, so every buffer exists.
  static size_t elems(size_t k) { return std::max<size_t>(1, k); }
  static size_t workspace_bytes(const ParamTable& table, int sms) {
    const Offsets e = layout(table, sms).end;
    return (elems(e.row) + elems(e.col) + elems(e.rf) + elems(e.cf)) * sizeof(float) +
           (elems(e.scal) + elems(e.chunk_r)) * sizeof(double) + elems(e.ticket) * sizeof(unsigned);
  }

  Factored(Device& dev, const ParamTable& table) : sms_(plan_gpu().sms) {
    Layout l = layout(table, sms_);
    at_ = std::move(l.at);
    const Offsets& end = l.end;
    const auto floats = [&](size_t k, const char* what) {
      return DeviceBuffer<float>(dev, elems(k), MemCategory::workspace, std::string("factored ") + what);
    };
    const auto doubles = [&](size_t k, const char* what) {
      return DeviceBuffer<double>(dev, elems(k), MemCategory::workspace, std::string("factored ") + what);
    };
    row_ = floats(end.row, "row partials"), col_ = floats(end.col, "column partials");
    rf_ = floats(end.rf, "row factors"), cf_ = floats(end.cf, "column factors");
    scal_ = doubles(end.scal, "scalar partials"), chunk_r_ = doubles(end.chunk_r, "chunk sums of r");
    ticket_ = DeviceBuffer<unsigned>(dev, elems(end.ticket), MemCategory::workspace, "factored tickets");
    dev.zero(ticket_.get(), ticket_.bytes());
  }

  // Row chunks sized for about 2 blocks per SM, in whole iterations of 8 rows per warp;
  // more blocks only lengthen the partial sums the finishers add.
  static SweepShape shape(int64_t m, int64_t n, int sms) {
    const int64_t tiles = ceil_div(n, kTileCols), want = std::max<int64_t>(1, 2 * sms / tiles);
    const int64_t step = kSweepWarps * kRowsPerIteration;
    const int64_t rows = int64_t(ceil_div(ceil_div(m, want), step)) * step;
    return {m, n, int(rows), unsigned(tiles), ceil_div(m, rows)};
  }
  SweepShape shape(int64_t m, int64_t n) const { return shape(m, n, sms_); }

  // Matrix p's sweep shape and workspace, and its factors rf (rows) and cf (columns).
  struct Matrix {
    SweepShape s;
    SweepParts parts;
    float *rf, *cf;
  };
  Matrix matrix(const ParamSpec& p) const {
    const Offsets& o = at_[p.id];
    return {shape(p.rows, p.cols),
            {row_.get() + o.row, col_.get() + o.col, scal_.get() + o.scal, chunk_r_.get() + o.chunk_r,
             ticket_.get() + o.ticket},
            rf_.get() + o.rf, cf_.get() + o.cf};
  }

  // kRowCol: the jobs' sums of X go into their ema.
  template <class F>
  void sweep(const std::vector<SweepJob<F>>& jobs, bool vec, bool row_col) {
    cudaStream_t st = update_stream();
    launch_jobs(jobs, [](const SweepJob<F>& j) { return j.s.tiles * j.s.chunks; },
                [&](const Jobs<SweepJob<F>>& b, unsigned grid) {
                  if (vec && row_col) gpt2::cuda::sweep<F, true, true><<<grid, kSweepThreads, 0, st>>>(b);
                  else if (vec) gpt2::cuda::sweep<F, true, false><<<grid, kSweepThreads, 0, st>>>(b);
                  else if (row_col) gpt2::cuda::sweep<F, false, true><<<grid, kSweepThreads, 0, st>>>(b);
                  else gpt2::cuda::sweep<F, false, false><<<grid, kSweepThreads, 0, st>>>(b);
                });
  }

  template <class F>
  static RunsJob<F> runs_job(const F& f, int64_t m, int64_t n) {
    return {f, m, n, elementwise_blocks(size_t(m) * size_t(ceil_div(n, kRun)))};
  }
  template <class F>
  void elementwise(const std::vector<RunsJob<F>>& jobs, bool vec) {
    cudaStream_t st = update_stream();
    launch_jobs(jobs, [](const RunsJob<F>& j) { return j.blocks; },
                [&](const Jobs<RunsJob<F>>& b, unsigned grid) {
                  if (vec) runs<F, true><<<grid, kThreads, 0, st>>>(b);
                  else runs<F, false><<<grid, kThreads, 0, st>>>(b);
                });
  }

 private:
  int sms_;
  std::vector<Offsets> at_;  // by tensor id
  DeviceBuffer<float> row_, col_, rf_, cf_;
  DeviceBuffer<double> scal_, chunk_r_;
  DeviceBuffer<unsigned> ticket_;
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
