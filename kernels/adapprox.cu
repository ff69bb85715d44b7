// Adapprox (spec optimizers.md 6.2-6.5, 6.7; twin of src/reference/optim/adapprox.cpp):
// Adam's second moment without bias correction, kept per matrix as Q U^T (Q m x k
// orthonormal, U n x k) and re-fitted every step by AS-RSI; vectors keep a full v.
//
// Per matrix and step:
//   V_t = beta2 Q U^T + (1 - beta2) g^2   dense m x n fp32 scratch (workspace), one
//   with ||V_t||_F^2 and sum D^2            kernel (build_second_moment); ||V_t||^2
//                                         reaches the host with the first S-RSI's copy
//   S-RSI(k), once per rank tried          device sketch, l x (SGEMM, CholeskyQR2 in
//                                         three launches at s <= 32, else four, SGEMM),
//                                         Gram U^T U summed in double (gram_matrix, the
//                                         failure flag and ||V_t||^2 after it: one copy
//                                         down), eigendecomposition in double ((k+p) x
//                                         (k+p), on the host up to kHostSolveMax; 1 sync),
//                                         Q W and U W into state (at s <= 32 one launch,
//                                         rotate, W a kernel parameter; else 2 SGEMMs)
//   clip, first moment, guidance, decay    one kernel (finish_kernel) that recomputes D =
//                                         g / (sqrt(max(V_t, 0)) + eps) from the scratch
//                                         and g, no sync (the "refactored" denominator
//                                         forms D in place and sums it first)
// The rank loop (grow by delta_k while xi > xi_thr, shrink with hysteresis) runs on the
// host exactly as as_rsi does: its branches need xi, so each S-RSI ends with one small
// copy, the only host sync. The rank k and smoothed error xi_bar live on the host;
// state() copies them into the "rank_err" blobs and marks them to be read back once
// (a checkpoint may have written them), so a step does not read them from the device.
// Deferred S-RSI: once a matrix sits at k = k_max with shrinking barred (xi_bar >=
// xi_thr / 2; with the default xi_thr every d12 matrix from the first steps on), no
// branch depends on this step's eigenvalues: they only feed xi_bar, and Q_t, U_t are
// first read by the next step's V_t (the "refactored" denominator reads them at once,
// so it never defers). Such an S-RSI stops at its Gram matrix, parks Y and Om in the
// factors' own state (first k_max columns) plus side_ (the p columns past them), and
// finish_deferred() -- at the next begin_step() or state() -- solves every parked Gram
// matrix of the same s in one XsyevBatched call, then does xi_bar and Q W, U W per
// matrix: same arithmetic, same decisions, only later. The one sync left per matrix
// brings the failure flag and ||V_t||^2: a failed Cholesky (or a non-finite Gram) is
// redone at once with Householder QR, as before.
// GEMMs are fp32 with cuBLAS's default math (no TF32); the sketch comes from
// sketch_rng.hpp's counter-based generator run as a device function: the same Gaussian
// numbers as the CPU reference (rounded to fp32), so both make the same rank decisions
// without shipping the sketch from the host. Eigenvector signs may differ from Eigen's:
// Q and U can differ column by column in sign; Q U^T, V_t and the weights do not.
// Small Gram matrices (s <= kHostSolveMax = 128) go to the host for the eigensystem, in
// double with Eigen (srsi.hpp's symmetric_eigen: microseconds at s ~ 20, 0.74 ms at s =
// 110 on one core) where cuSOLVER's syevd costs ~1.6 ms of latency whatever s; it costs
// one host sync, and the lanes run them on host cores at once. (Until 2026-11-27
// CholeskyQR's Cholesky went that way too, at 32 < s <= 128.) H200, same
// call, against cuSOLVER for every s: d12 B 16 on Brown text, where the mean rank falls
// to ~16 by step 150, 68.2 / 70.0 -> 56.0 / 54.5 ms a step at steps 150 / 200 (AdamW:
// 33.3 ms); random tokens (mean rank ~104) steps 151-200 134.9 -> 125.7 ms, steps 11-30
// 163.3 -> 152.6 ms; bench_optimizers (every s = 197, deferred) 46.4 -> 45.0 ms.
// CholeskyQR's Gram matrix is summed in double and factored on the GPU, one block, for
// every s (cholesky_qr.cuh). With the Gram matrix from cuBLAS in fp32, every d12 S-RSI's
// Cholesky failed on real gradients (likely cause: the power iteration leaves Y's entries
// ~1e-21, its Gram matrix at fp32's underflow, ~1e-38), so every S-RSI was redone with
// Householder QR -- the "100 S-RSIs a step" for 50 matrices that the notes below took for
// rank growth. Same ranks either way (the redo is exact); H200, d12 B 16 on Brown text,
// lr 2e-3, median of steps 101-120, one run each: 42.10 -> 36.95 ms a step, 100 -> 50
// S-RSIs a step, mean rank 13.64 / 15.20 at step 120 (AdamW: 30.05-30.70 ms). On d4
// (fp32, 40 steps) the fp32 path made 21-36 S-RSIs a step where the CPU reference makes
// 18, one per matrix. Before that, s <= 32 went to one warp (warp_cholesky) and 32 < s
// <= 128 to the host (H100: 49.1 -> 47.9 ms a step when the warp took s <= 32).
// orth() is CholeskyQR2 (spec 6.3: GEMM-friendly; timed alone on an H200 at s = 197
// it beats cuSOLVER's geqrf + orgqr 1.5x at 768 rows, 3.4x at wte's 50304); a
// Cholesky that fails (a Gram matrix not positive definite in rounding) or non-finite
// eigenvalues send that S-RSI back to Householder QR, decided with the eigenvalues'
// copy, so no extra sync.
// Where the time goes (tools/bench_adapprox_parts, H200, s = 197, ms): eigensolver
// Dsyevd 1.62, Xsyevd 1.62, syevj 2.5-2.9, XsyevBatched 1.64 alone but 0.63 per matrix
// in a batch of 12 and 0.16 in a batch of 50 (d12's 50 matrices; same eigenvalues to
// 1e-15); widen + Dpotrf + narrow 0.19 (x4 per matrix); Strsm 0.06 (768 rows) - 0.37
// (wte); Gram SGEMM 0.02 - 0.21; V Om and V^T Y 0.025 - 0.045 (0.42 for wte); host sync
// 0.01. bench_optimizers (d12, every rank at 192, H200), one step: 152.5 ms with Dsyevd
// per matrix; 142.6 ms measured with the deferral but also the two lost kernels below
// in CholeskyQR2 (together +0.28 ms per call, 4 calls per matrix: ~57 ms); this file,
// with Dpotrf + Strsm back, adds up from the parts to ~85 ms (not timed end to end
// yet). What is left: CholeskyQR2's latency-bound Dpotrf + Strsm (~1 ms per matrix,
// ~50 ms a step), the GEMMs (~15 ms), the batched eigensolver (~8 ms).
// Lost, deleted: a one-block Cholesky in shared memory (fp64 packed triangle) took 0.29
// ms column by column and 0.36 ms with 8-column panels (one warp per panel) against
// Dpotrf's 0.19; a one-lane-per-row triangular solve with R in shared memory (2 warps
// per SM) took 0.17 ms at 768 rows against Strsm's 0.06 -- both too little parallelism
// for one SM; a batched Cholesky needs the S-RSIs of several matrices interleaved.
// Also lost (H100, same call): a right-looking one-block Cholesky plus inverse, so that
// Y R^-1 is an in-place Strmm, took 0.582 ms at s = 197 against widen + Dpotrf + narrow's
// 0.203 (its trailing updates load and store 24 bytes of shared memory per FMA), and the
// d12 step went from 88.9 / 83.6 to 156.4 / 162.5 ms. The Strmm by an explicit R^-1 is
// itself twice as fast as the Strsm (0.039 against 0.085 ms at 768 rows, 0.252 against
// 0.524 at wte's), if R^-1 ever comes cheaper than Dpotrf's R.
// Also lost (H200, same call, bench_train d12 B 16, median of steps 151-200 and 11-30):
// one S-RSI pass fitting rank k and k + delta_k at once (a wider pass's leading columns
// are the narrower pass: the sketch numbers each entry by its place and CholeskyQR's R is
// upper triangular), so each growth of the rank loop reuses the pass: 135.0 -> 138.0 and
// 162.1 -> 166.0 ms a step (the first step, every rank growing from 1: 880 -> 729 ms);
// solving the narrower fit for its eigenvalues alone (1.57 ms against 1.69 with vectors
// at s = 197): 135.5 -> 147.6 ms. (The "growth once a step" that this was for were the
// Householder redos above, not growth.) The passes are not where the lanes' time goes: the
// unbatched eigensolves are, ~1.6 ms each. fp32 XsyevBatched solves 4, 12 or 50 Gram matrices at s
// = 197 in 2.1, 2.2 or 2.55 ms (eigenvalues within 5e-7 of the largest; fp64 takes 8.7-12 ms for
// 12), and DpotrfBatched 50 in 0.48 ms. Also lost (H200, same call): the side lanes' eigensolves in
// one fp32 XsyevBatched, each lane's Gram matrix zero-padded into a slot, the last lane to arrive
// solving every slot (it passed the [gpu] tests, bits of update() == update_many included): d12
// steps 11-30 163.5 -> 179.5 ms, the first step 842 -> 947 ms (the lanes wait for one another at
// every eigensolve), and fp32 eigenvalues are too coarse for the rank loop: its error sums,
// compared with (xi_thr / 2)^2 = 2.5e-5 of ||V_t||^2, carry ~5e-7 of the largest eigenvalue per
// term, and by step 200 the mean rank was 36 instead of 104 (110-122 S-RSIs a step instead of 100;
// 134.3 -> 181.9 ms). Instrumenting the lanes (4 lanes, d12 steps 121-160, summed over lanes per
// step) showed the passes' GPU time at 200 ms and the eigensolves' at 226 for 135 ms of
// update_many, against 118 and 161 ms on one lane: the lanes overlap ~2.2x and no further (8 lanes:
// the same 130-141 ms). Besides the V_t scratch the thin iterates (Y m x s, Om n x s, Gram,
// cuSOLVER work, s = min(k_max + p, min(m, n))) take "adapprox thin" workspace, and the deferred
// S-RSIs one fp64 Gram matrix per matrix (15.5 MB for d12) plus side_ (4 MB). The
// memory plan counts all of these but cuSOLVER's work (adapprox_workspace_bytes), whose
// size only cuSOLVER knows; the batched eigensolver's (~125 MB for d12, 2.7% of the
// peak when it had its own buffer) borrows the V_t scratch, idle when it runs.
// Side lanes (optimizer.adapprox.lanes, default 8): the pieces above are latency-bound
// and leave most of the GPU idle, so they ran on that many host threads, each with a
// lane of its own (stream, V_t scratch sized for the largest matrix but one, thin
// buffers, cuBLAS and cuSOLVER handles), the largest and the vectors on the calling
// thread meanwhile, and update_many() waited for them. Since 2026-11-28 they are "split"
// (update_many): the update needs V_t, not its factors, which only the next step's V_t
// reads, so every matrix's V_t is kept (kept_, no lane scratch) and the weights updated
// from it on the calling thread; the lanes' threads (lane 0 now one as well, for the
// largest) factorize it after update_many() returns, beside the next step's forward.
// H100, Brown d12 B 16, median of steps 101-120 (tools/bench_adapprox.sh, AdamW in the
// same call), every rank at 16 (FIXED=16): 34.80 ms a step, update_ms 4.31 (AdamW 31.20,
// 1.24); the lanes before, in another call, 34.90 and 5.63 (AdamW 30.80). A temporary
// profiler: join() waits 0.2 ms on the host, the factorizations being done long before;
// with none queued at all (state wrong, a timing floor) 33.20 ms and 3.17: beside the
// forward and the finish they still cost ~2 ms of the step. The kept V_t: d12 B 16's
// plan 6.89 -> 7.12 GiB (measured peak 7.19, +0.98%). Then the finish 4-wide (finish_kernel;
// same call): 34.30 ms, update_ms 3.09 (AdamW 30.95, 1.25); with no factorization 32.05
// and 2.52.
// The weights and state are those of update() on each tensor in turn, bit for bit
// (tested). The lanes before the split, H100, same call,
// against one lane: bench_optimizers --only adapprox (every rank at 192, deferred)
// 88.8 / 98.3 -> 49.9 / 51.5 ms, its first step (every rank grows from 1) 1829 -> 910
// ms; bench_train d12 B 16 (real gradients, steps 11-30, the rank loop still running)
// 319.4 -> 173.3 ms a step (AdamW 34.5). Cost at d12: 4 lanes x ~20 MB in the ledger
// (planned), and ~0.65 GiB more in the driver's count (the lanes' cuBLAS and cuSOLVER
// handles keep workspaces of their own): 7.67 -> 8.40 GiB in use.
// The vectors (d12: 98 biases and layernorm parameters) go through update_many in
// batches of kMaxJobs, one launch of each kernel per batch (VectorJob, SumJob,
// FinishJob), instead of five launches each one after another on the calling thread;
// a batch's tensors are each computed as update() computes them alone (tested bit for
// bit). H200, same call, Brown text d12 B 16, median of steps 101-120, two runs: 4
// lanes 45.45 / 45.30 -> 44.60 / 44.25 ms, 8 lanes 42.15 -> 40.65 (AdamW 30.50).
// Each lane's host-side buffers (a pass's Gram matrix and flags down, W and R up) are
// page-locked (Pinned): the copies go by DMA instead of through the driver's staging of
// pageable memory, which the lanes' threads share. H200, Brown as above, the same ranks
// and S-RSI counts (the same arithmetic), but NOT the same call: 44.15-44.60 -> 41.85 ms
// at 4 lanes, 40.65-40.75 -> 39.35 at 8 (each from one machine and call, 2026-11-27).
// Where the rest goes, at the widths real text settles at (tools/bench_adapprox_thin,
// H200): one S-RSI's GEMMs, Gram matrices and trsm (l = 2) take 0.14-0.18 ms at s = 21
// and 33 for every d12 shape but wte, each call ~15-25 us whatever its size, and 0.72
// / 0.92 ms for wte. Split-K (one strided-batched SGEMM over chunks of the long side,
// the chunks summed in order) and Y R^-1 by an explicit inverse instead of the trsm do
// not pay there (0.15-0.20 ms); only wte would gain (0.72 -> 0.46 ms at s = 21). So the
// chain's length, ~20 dependent launches per S-RSI and two S-RSIs per matrix a step,
// is the cost, and the lanes are what shortens it.
// Also lost (H200, same call, Brown text, 4 lanes): every S-RSI pass widened to cover
// the rank loop's next growth step too (k + delta_k, read off the pass's leading Gram
// block) while CholeskyQR's Cholesky stayed on the GPU (s <= 64): at steady state the
// second S-RSI grows past k + delta_k, so a step still ran 100 passes, and 45.10 /
// 45.15 -> 47.65 / 47.45 ms. Batching each shape's matrices (one host round trip per
// batch and round, host eigensolves on OpenMP threads) lost too, from one host thread:
// 66.55 ms with each member's cuBLAS calls on 8 streams, 147.8 ms with cuBLAS's batched
// GEMM and trsm (its batched trsm at wte's 50304 rows alone took 27 ms a step), against
// 45.15 for the lanes.
// Where update_many's time goes (H200, Brown as above, step 100, host clocks in a
// temporary build, a device sync before and after): 15.0 ms at 4 lanes, each lane busy
// to the end with 12-13 matrices, 3-6 ms of it waiting in the S-RSIs' host syncs; 11-12
// ms at 8 lanes; 11-13 at 16 (10-11 with CUDA_DEVICE_MAX_CONNECTIONS=32, one run: 38.40
// against 40.10 ms a step); the calling thread (vectors, then wte) is done at 4-5 ms.
// On one thread (lanes 0) 40-41 ms: 25 inside iterate() (its ~20 calls per S-RSI, and
// the host Cholesky's round trips at s > 32), 7 in the eigenvalue syncs.
// Also lost (H200, same call, 4 / 8 lanes): each S-RSI pass with s <= 32 recorded once
// as a CUDA graph per lane, matrix and width and replayed (50 of the 100 passes a step
// replayed): 43.35 / 43.70 -> 44.00 / 43.75 ms, 39.70 -> 40.15. On one thread it cut
// iterate()'s host time 16.2 -> 10.9 ms while the syncs' waits grew 18.9 -> 23.3: the
// GPU then runs the chains no faster than the host had issued them. The Cholesky on
// the GPU up to s = 64 (one block) instead of the host's round trips for 32 < s <= 64:
// 42.15 / 42.20 -> 41.55 / 41.90 ms, 39.15 -> 39.15 at 8 lanes. Grouping every side
// matrix's products into one cuBLAS grouped-batched call per phase halves the S-RSIs'
// GPU time at most (tools/bench_adapprox_grouped, H100: 8.13 -> 4.34 ms for 49 S-RSIs
// at s = 19): ~0.2 ms per launch on average where reading every V_t once takes ~0.11,
// so the 10% goal needs products that read V_t at bandwidth (hand-written, or V_t never
// stored: beta2 Q (U^T Om) + (1 - beta2) (g o g) Om from the bf16 gradient).
// 2026-11-27 (H200, Brown d12 B 16 as above, median of steps 101-120, AdamW in the same
// call): V_t, its norm and sum D^2 in one kernel and the finish recomputing D (g^2's
// kernel, the SGEMM adding Q U^T, the direction kernel and two sums gone): 35.10 / 35.00
// -> 33.80 / 33.90 ms a step (AdamW 30.10 / 30.15), with the memsets of columns already
// zero and the flag's memset dropped as well. Then CholeskyQR's Gram sums and Cholesky
// in one launch (last block factors) and Y R^-1 by a row kernel at s <= 32 instead of
// Strsm: 33.70 / 34.40 / 34.05 against AdamW's 30.60 / 29.95 / 30.40, within the noise.
// Host clocks per step (8 lanes, temporary build): update_many 5.5 ms, each lane job
// 0.84 ms of which 0.59 ms waiting in its sync; 16 lanes: 5.5 ms, 1.57 / 1.10 ms per job;
// 2 lanes: 9.3 ms: past 8 lanes the GPU, not the lanes' latency, is the limit. ncu, two
// steps at step 100 (H200, ms a step): gram_factor 4.8 (200 launches, 24 us each, most
// of it its chunk sums loaded one at a time; loaded 8 at a time since, same bits, no
// change in step time), finish 1.4, build 1.25, cuBLAS SGEMMs ~3.5 (the TN products
// split-K plus their reduce), solve_rows 0.9; forward and backward ~26. Stream priority
// for the lanes and CUDA_DEVICE_MAX_CONNECTIONS=32 changed nothing (36.35 / 36.50 ms
// fused against 36.65).
// 2026-11-27, timed by update_ms (the update's own time on the device, events around
// update_many): H200, Brown d12 B 16, median of steps 101-120, the update took 5.39-5.56
// ms of a 33.5 ms step (16.6%; AdamW's 0.91). Marginal costs, each piece of every side
// job repeated once in a temporary build (same call): orth (4 launches) +1.13 ms, the 4
// V products (cuBLAS) +1.23, build_second_moment +0.56, 20 empty kernel launches +0.84,
// 100 us of host work +0.27; 4 lanes 7.11, 16 lanes 5.63: every operation on a lane's
// chain costs ~0.04 ms of the step in launch latency alone, beyond its own run time.
// So: the first pass's solve fused with the second pass's Gram and Cholesky
// (solve_cholesky_qr_r), the final Gram matrix by gram_matrix instead of an SGEMM (its
// flag and ||V_t||^2 in the same copy down), Q W and U W by one kernel with W passed by
// value (no copy up): 5 operations fewer per matrix. Same call, at a fixed rank (k0 =
// k_min = k_max = 16, xi_thr 1: one S-RSI per matrix and step in both): 5.61 / 5.67 ->
// 5.42 / 5.47 ms. At the default rank loop the trajectory moves (Gram sums in double):
// mean rank 12.34 -> 15.12 at step 120, 5.41 -> 5.63 ms; such drifts come and go with
// any change of rounding (15.2 -> 12.34 with build_second_moment's sums).
#include <cublas_v2.h>
#include <cusolverDn.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "cholesky_qr.cuh"
#include "fp64_copy.cuh"
#include "kernels.cuh"
#include "optim_common.cuh"
#include "reference/optim/adapprox_settings.hpp"
#include "reference/optim/srsi.hpp"

#define CUSOLVER_CHECK(call)                                                          \
  do {                                                                                \
    cusolverStatus_t st_ = (call);                                                    \
    if (st_ != CUSOLVER_STATUS_SUCCESS)                                               \
      ::gpt2::fail("cuSOLVER error ", int(st_), " in ", #call, " at ", __FILE__, ":", \
                   __LINE__);                                                         \
  } while (0)

namespace gpt2::cuda {
namespace {

enum Slot { kSumD2, kDot, kSumM2, kSlots };

// Gram matrices up to this order are solved for their eigensystem on the host (srsi.hpp's
// symmetric_eigen); larger ones by cuSOLVER in double. CholeskyQR's Cholesky runs on the
// GPU whatever the order (cholesky_qr.cuh).
constexpr int kHostSolveMax = 128;
// CholeskyQR's shift, relative to the Gram matrix's largest diagonal entry: far above
// its fp64 rounding, far below the fp32 iterates' own, so columns that are fp32 noise do
// not fail the Cholesky.
constexpr double kCholeskyShift = 1e-12;

// V_t = beta2 Q U^T + (1 - beta2) g o g (row-major m x n; Q m x k and U n x k
// column-major), and in the same pass ||V_t||^2 and sum D^2, D = g / (sqrt(max(V_t, 0)) +
// eps): the rebuilt denominator's clip scale needs no pass over D of its own, and the
// finish recomputes D from V_t and g instead of storing it. Against g^2's kernel, an
// SGEMM adding Q U^T and two sums, V_t is written once and read not at all. A block
// takes tiles of kBuildRows rows by kBuildCols columns, a thread per column: U's entry
// is loaded once per tile, Q's rows come from shared memory (kBuildK columns at a time,
// 4 rows a load). The sums: per block in double, then the last block to finish (arrive)
// adds the blocks' partials in index order (a fixed grid: the same bits every run).
// D = x / (sqrt(max(V, 0)) + eps) for x = scale g, each rounding IEEE and spelled out, so
// that build_second_moment's sum D^2 and the finish's recomputed D agree whatever the
// compiler's flags.
__device__ __forceinline__ float rebuilt_d(float x, float v, float eps) {
  return __fdiv_rn(x, __fadd_rn(__fsqrt_rn(fmaxf(v, 0.f)), eps));
}

constexpr int kBuildRows = 16, kBuildCols = 256, kBuildK = 64, kBuildBlocks = kReduceBlocks / 2;

template <class D>
__global__ void __launch_bounds__(kBuildCols)
    build_second_moment(float* V, const D* g, const float* Q, const float* U, int m, int n, int k,
                        float b2, float eps, float scale, double* partials, unsigned* ticket,
                        double* norm_sq, double* sum_d2) {
  __shared__ float4 q4[kBuildK * kBuildRows / 4];  // column c's rows at q4[c * kBuildRows / 4]
  float* qs = reinterpret_cast<float*>(q4);
  __shared__ double red[32];
  __shared__ bool last;
  const int strips = int(ceil_div(n, kBuildCols)), tiles = strips * int(ceil_div(m, kBuildRows));
  double v2 = 0, d2 = 0;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {  // the same count per thread
    const int i0 = (tile / strips) * kBuildRows, j = (tile % strips) * kBuildCols + threadIdx.x;
    float acc[kBuildRows] = {};
    for (int c0 = 0; c0 < k; c0 += kBuildK) {
      const int kc = min(kBuildK, k - c0);
      __syncthreads();  // the last reads of qs are done
      for (int e = threadIdx.x; e < kBuildRows * kc; e += blockDim.x) {
        const int r = e % kBuildRows, c = c0 + e / kBuildRows;
        qs[e] = i0 + r < m ? Q[i0 + r + size_t(c) * m] : 0.f;
      }
      __syncthreads();
      if (j >= n) continue;
      for (int c = 0; c < kc; c++) {
        const float u = U[j + size_t(c0 + c) * n];
#pragma unroll
        for (int r4 = 0; r4 < kBuildRows / 4; r4++) {
          const float4 q = q4[c * (kBuildRows / 4) + r4];
          acc[4 * r4] = fmaf(q.x, u, acc[4 * r4]);
          acc[4 * r4 + 1] = fmaf(q.y, u, acc[4 * r4 + 1]);
          acc[4 * r4 + 2] = fmaf(q.z, u, acc[4 * r4 + 2]);
          acc[4 * r4 + 3] = fmaf(q.w, u, acc[4 * r4 + 3]);
        }
      }
    }
    if (j >= n) continue;
#pragma unroll
    for (int r = 0; r < kBuildRows; r++) {
      if (i0 + r >= m) break;
      const size_t at = size_t(i0 + r) * n + j;
      const float x = to_f(g[at]) * scale;
      const float v = b2 * acc[r] + (1.f - b2) * x * x;
      const float d = rebuilt_d(x, v, eps);
      V[at] = v;
      v2 += double(v) * v, d2 += double(d) * d;
    }
  }
  v2 = block_sum_d(v2, red);
  d2 = block_sum_d(d2, red);
  if (threadIdx.x == 0) partials[blockIdx.x] = v2, partials[gridDim.x + blockIdx.x] = d2;
  if (!arrive(ticket, gridDim.x, &last)) return;
  double a = 0, b = 0;
  for (unsigned i = threadIdx.x; i < gridDim.x; i += blockDim.x) {
    a += __ldcg(partials + i);  // from L2: other blocks wrote them
    b += __ldcg(partials + gridDim.x + i);
  }
  a = block_sum_d(a, red);
  b = block_sum_d(b, red);
  if (threadIdx.x == 0) *norm_sq = a, *sum_d2 = b;
}

// Also clears the lane's failure flag for the S-RSI it starts.
__global__ void sketch(float* om, size_t n, uint64_t seed, double* failed) {
  if (blockIdx.x == 0 && threadIdx.x == 0) *failed = 0;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    om[i] = float(optim::gaussian(seed, i));  // entry (j, c) is number c * rows + j
}

// A deferred S-RSI's Gram matrix into its batch slot; a non-finite entry counts as a
// failure (the immediate path checks the eigenvalues instead, which come too late here).
__global__ void widen_checked(double* out, const float* in, size_t n, double* failed) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    out[i] = in[i];
    if (!isfinite(in[i])) *failed = 1.0;
  }
}

// W (s x k): the eigenvectors of the k largest eigenvalues, largest first (syevd sorts
// ascending).
__global__ void top_eigenvectors(float* W, const double* vecs, int s, int k) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= s * k) return;
  const int r = i % s, j = i / s;
  W[i] = float(vecs[(s - 1 - j) * s + r]);
}

// W (s x k, s <= kSolveMax) by value: a kernel parameter (up to 32 KiB since CUDA 12.1),
// so the host's eigenvectors need no copy of their own on the lane's chain.
struct Rotation {
  float w[kSolveMax * kSolveMax];  // W_cj at w[c + j * kSolveMax], zero past s
};

// Q = Y W and U = Om W (Y m x s, Om n x s, column-major) in one launch, a thread per row of
// Q or U: against two cuBLAS SGEMMs and W's copy, two operations less on the lane's chain.
__global__ void __launch_bounds__(kThreads)
    rotate(float* Q, float* U, const float* Y, const float* Om, const __grid_constant__ Rotation r,
           int m, int n, int s, int k) {
  constexpr int S = kSolveMax;
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= m + n) return;
  const bool q = i < m;
  const float* in = q ? Y : Om;
  float* out = q ? Q : U;
  const int rows = q ? m : n;
  if (!q) i -= m;
  float y[S];
#pragma unroll
  for (int c = 0; c < S; c++) y[c] = c < s ? in[i + size_t(c) * rows] : 0.f;
  for (int j = 0; j < k; j++) {
    float x = 0;
#pragma unroll
    for (int c = 0; c < S; c++) x = fmaf(y[c], r.w[c + j * S], x);
    out[i + size_t(j) * rows] = x;
  }
}

template <class D>
__global__ void matrix_direction(float* V, const D* g, float scale, size_t n, float eps) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    V[i] = to_f(g[i]) * scale / (sqrtf(fmaxf(V[i], 0.f)) + eps);
}

template <class D>
struct VectorJob {
  float *out, *v;
  const D* g;
  float scale;  // the gradient is scale * g (TensorUpdate::grad_scale)
  size_t n;
};

template <class D>
__global__ void vector_direction(const __grid_constant__ Jobs<VectorJob<D>> b, float b2,
                                 float eps) {
  const int k = job_of(b);
  const VectorJob<D>& j = b.job[k];
  const GridStride st = job_stride(b, k);
  for (size_t i = st.start; i < j.n; i += st.step) {
    const float x = to_f(j.g[i]) * j.scale;
    j.v[i] = b2 * j.v[i] + (1.f - b2) * x * x;
    j.out[i] = x / (sqrtf(j.v[i]) + eps);
  }
}

// Spec 6.5 steps 5-8 (and 6.7) over a tensor's direction D. kFused: clip, momentum and
// the decoupled-decay update in one pass; with guidance, kClip (clip and momentum, D
// written back) and, once the cosine's sums are in, kApply.
enum Pass { kFused, kClip, kApply };

// dir holds D, or with g (a matrix, rebuilt denominator) V_t, and D is recomputed from
// V_t and g as build_second_moment computed it.
template <class D>
struct FinishJob {
  Weights<D> w;
  float *dir, *m1;
  double* scal;  // this tensor's kSumD2 slot; kDot and kSumM2 follow `stride` apart
  size_t stride, n;
  float wd;
  const D* g = nullptr;
  float scale = 1, eps = 0;
  bool vec = false;  // set by finish_jobs()
};

// One element of finish_kernel, its roundings spelled out (__f*_rn) so that the 4-wide
// and the element path give the same bits (adamw.cu found the compiler fusing different
// products into FMAs in each). x: D, or with g V_t; m1 (if any) and w updated in place.
template <class D>
__device__ __forceinline__ void finish_element(const FinishJob<D>& j, Pass pass, float clip,
                                               float beta1, float lr, float guide, float& x,
                                               float g, float& m1, float& w) {
  if (pass != kApply) {
    if (j.g) x = rebuilt_d(__fmul_rn(g, j.scale), x, j.eps);
    x = __fdiv_rn(x, clip);
    if (j.m1) m1 = __fadd_rn(__fmul_rn(beta1, m1), __fmul_rn(__fsub_rn(1.f, beta1), x));
    if (pass == kClip) return;
  }
  const float step = j.m1 ? m1 : x;
  w = __fsub_rn(w, __fmul_rn(lr, __fadd_rn(__fmul_rn(guide, step), __fmul_rn(j.wd, w))));
}

// j.vec: dir, m1, g and the weights aligned for 4-wide accesses (aligned()).
template <class D>
__global__ void finish_kernel(const __grid_constant__ Jobs<FinishJob<D>> b, Pass pass,
                              double clip_d, float beta1, float lr) {
  const int k = job_of(b);
  const FinishJob<D>& j = b.job[k];
  const GridStride st = job_stride(b, k);
  const Weights<D> w = j.w.now();
  const double* s = j.scal;
  const float clip = float(fmax(1.0, sqrt(s[0] / double(j.n)) / clip_d));
  const float guide =
      pass == kApply ? float((1 + s[j.stride] / (sqrt(s[0] * s[2 * j.stride]) + 1e-12)) / 2) : 1.f;
  const bool reads_dir = pass != kApply, writes_w = pass != kClip;
  for (size_t q = st.start; 4 * q < j.n; q += st.step) {
    const size_t i0 = 4 * q;
    if (j.vec && i0 + 4 <= j.n) {
      F4 x{}, g{}, m{}, ww{};
      if (reads_dir) x = load4(j.dir + i0);
      if (reads_dir && j.g) g = load4(j.g + i0);
      if (j.m1) m = load4(j.m1 + i0);
      if (writes_w) ww = w.master ? load4(w.master + i0) : load4(w.param + i0);
      for (int e = 0; e < 4; e++)
        finish_element(j, pass, clip, beta1, lr, guide, x.x[e], g.x[e], m.x[e], ww.x[e]);
      if (j.m1 && reads_dir) store4(j.m1 + i0, m);
      if (pass == kClip) {
        store4(j.dir + i0, x);
      } else if (w.master) {
        store4(w.master + i0, ww), store4(w.param + i0, ww);
      } else if constexpr (std::is_same_v<D, float>) {
        store4(w.param + i0, ww);
      } else {
        for (int e = 0; e < 4; e++) w.store(i0 + e, ww.x[e]);  // bf16, stochastic rounding
      }
      continue;
    }
    for (size_t i = i0; i < j.n && i < i0 + 4; i++) {
      float x = reads_dir ? j.dir[i] : 0.f, g = reads_dir && j.g ? to_f(j.g[i]) : 0.f;
      float m = j.m1 ? j.m1[i] : 0.f, ww = writes_w ? w.load(i) : 0.f;
      finish_element(j, pass, clip, beta1, lr, guide, x, g, m, ww);
      if (j.m1 && reads_dir) j.m1[i] = m;
      if (pass == kClip)
        j.dir[i] = x;
      else
        w.store(i, ww);
    }
  }
}

struct Dot {
  const float *a, *b;
  __device__ double operator()(size_t i) const { return double(a[i]) * b[i]; }
};

// A deferred S-RSI that failed gives its batch slot back as the identity, so the batched
// eigensolver never sees a half-written matrix.
__global__ void identity(double* a, int s) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < s * s; i += gridDim.x * blockDim.x)
    a[i] = i % (s + 1) == 0 ? 1.0 : 0.0;
}

// A vector's share of the vectors' D buffer: whole 16-byte words, so that every share
// starts aligned for finish_kernel's 4-wide path.
inline size_t vec_span(size_t n) { return (n + 3) / 4 * 4; }

// One lane's buffers: the V_t scratch (v floats) and the thin iterates of matrices up to
// s_max wide (Y m x s, Om n x s).
struct LaneSizes {
  size_t v = 0, y = 1, om = 1;
  int s_max = 1;
  void add(const ParamSpec& p, int s) {
    v = std::max(v, p.numel), s_max = std::max(s_max, s);
    y = std::max(y, size_t(p.rows) * s), om = std::max(om, size_t(p.cols) * s);
  }
  size_t bytes() const {
    const size_t ss = size_t(s_max) * s_max;
    // V, Y, Om, G (with gram_matrix's tail), W, tau
    const size_t floats = v + y + om + gram_floats(s_max) + ss + size_t(s_max);
    // Gd, eigenvalues with flag and ||V||^2, scalars, Gram partial sums, reduction partials
    const size_t doubles =
        ss + size_t(s_max) + 2 + kSlots + cholesky_qr_parts(s_max) + kReduceBlocks;
    return floats * sizeof(float) + doubles * sizeof(double) + sizeof(int) +  // + info
           sizeof(unsigned);                                                  // + ticket
  }
};

// The lengths of the workspace buffers the constructor allocates, from one loop shared
// with the memory plan (cuda_optimizer_workspace_bytes); cuSOLVER's work, which only a
// handle on a GPU can size, is not among them.
struct Sizes {
  LaneSizes main, side;  // lane 0 (every matrix), each side lane (all but the largest)
  int side_lanes = 0;
  bool split = false;  // side lanes: V_t kept, factorized beside the next step (Adapprox::split_)
  int largest = -1;    // the id of the matrix side lanes are not sized for
  size_t vec = 1;      // the vectors' D, side by side
  size_t kept = 1;     // split: every matrix's V_t
  size_t side_cols = 1, grams = 1, eigs = 1;  // deferred S-RSIs: columns past k_max, Gram64, eigenvalues
  int matrices = 0;

  size_t bytes() const {
    // The lanes, the vectors' D, scalars and partials; split: the kept V_t, each matrix's
    // scalars and ||V_t||^2, the builds' partials and ticket; else the deferred S-RSIs'
    // columns, Gram matrices, eigenvalues and batch info.
    size_t b = main.bytes() + side_lanes * side.bytes() + vec * sizeof(float) +
               size_t(kSlots + kReduceBlocks) * kMaxJobs * sizeof(double);
    if (split)
      return b + kept * sizeof(float) +
             (size_t(matrices) * (kSlots + 1) + kReduceBlocks) * sizeof(double) + sizeof(unsigned);
    return b + side_cols * sizeof(float) + (grams + eigs) * sizeof(double) +
           (size_t(matrices) + 1) * sizeof(int);
  }
};

// Side lanes take the matrices no larger than the largest but one (d12: all but wte),
// where at least two share them.
Sizes sizes(const optim::Settings& st, const ParamTable& table) {
  Sizes z;
  const ParamSpec* largest = nullptr;
  for (const ParamSpec& p : table.params) {
    if (!p.is_matrix()) {
      z.vec += vec_span(p.numel);
      continue;
    }
    const int s = st.thin_cols(p), k_max = st.rule(p).k_max;
    z.main.add(p, s);
    z.side_cols += size_t(p.rows + p.cols) * (s - k_max);
    z.grams += size_t(s) * s, z.eigs += size_t(s);
    z.matrices++;
    if (!largest || p.numel > largest->numel) largest = &p;
  }
  int fits = 0;
  for (const ParamSpec& p : table.params)
    if (p.is_matrix() && &p != largest) z.side.add(p, st.thin_cols(p)), fits++;
  z.side_lanes = fits >= 2 ? st.lanes : 0;
  if (largest) z.largest = largest->id;
  z.split = z.side_lanes > 0;
  if (z.split) {  // the lanes read the kept V_t: no scratch of their own
    z.main.v = z.side.v = 0;
    z.kept = 0;
    for (const ParamSpec& p : table.params)
      if (p.is_matrix()) z.kept += vec_span(p.numel);
  }
  return z;
}

// Page-locked host memory: copies to and from it go by DMA, not through the driver's
// staging of pageable memory, which every lane's thread would share.
template <class X>
class Pinned {
 public:
  explicit Pinned(size_t n) {
    CUDA_CHECK(cudaHostAlloc(&p_, std::max<size_t>(1, n) * sizeof(X), cudaHostAllocDefault));
  }
  ~Pinned() { cudaFreeHost(p_); }
  Pinned(const Pinned&) = delete;
  Pinned& operator=(const Pinned&) = delete;
  X* get() const { return p_; }

 private:
  X* p_ = nullptr;
};

// One S-RSI pipeline: cuBLAS and cuSOLVER handles, the V_t scratch, the thin iterates,
// reductions. Lane 0 runs on the caller's update stream; side lanes on their own.
struct Lane {
  Lane(Device& dev, const LaneSizes& z, const std::string& name)
      : partials(dev, kReduceBlocks, MemCategory::workspace, name + " reduction partials"),
        scal(dev, kSlots, MemCategory::workspace, name + " scalars"),
        Gd(dev, size_t(z.s_max) * z.s_max, MemCategory::workspace, name + " thin Gram64"),
        eig(dev, size_t(z.s_max) + 2, MemCategory::workspace,
            name + " thin eigenvalues, failure flag, ||V||^2"),
        info(dev, 1, MemCategory::workspace, name + " cuSOLVER info"),
        ticket(dev, 1, MemCategory::workspace, name + " arrive ticket"),
        gram_parts(dev, cholesky_qr_parts(z.s_max), MemCategory::workspace,
                   name + " thin Gram64 partial sums"),
        host_g(gram_floats(z.s_max)),
        host_r(size_t(z.s_max) * z.s_max),
        host_eig(size_t(z.s_max) + 2) {
    if (z.v) V = DeviceBuffer<float>(dev, z.v, MemCategory::workspace, name + " V_t");
    vt = V.get();
    auto thin = [&](size_t n, const char* what) {
      return DeviceBuffer<float>(dev, n, MemCategory::workspace, name + " thin " + what);
    };
    const size_t ss = size_t(z.s_max) * z.s_max;
    Y = thin(z.y, "Y"), Om = thin(z.om, "Om"), G = thin(gram_floats(z.s_max), "Gram");
    W = thin(ss, "W");
    tau = thin(size_t(z.s_max), "tau");
    dev.zero(ticket.get(), ticket.bytes());  // arrive() counts from 0
    CUBLAS_CHECK(cublasCreate(&blas));
    CUSOLVER_CHECK(cusolverDnCreate(&solver));
    CUSOLVER_CHECK(cusolverDnCreateParams(&params));
  }
  ~Lane() {
    if (stream) cudaStreamSynchronize(stream);
    cusolverDnDestroyParams(params);
    cusolverDnDestroy(solver);
    cublasDestroy(blas);
    if (stream) cudaStreamDestroy(stream);
  }
  Lane(const Lane&) = delete;
  Lane& operator=(const Lane&) = delete;
  // A stream of its own (non-blocking: the legacy default stream does not order it).
  void make_side() { CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)); }
  // Points the handles at the stream this lane's work goes to now.
  void bind() {
    CUBLAS_CHECK(cublasSetStream(blas, update_stream()));
    CUSOLVER_CHECK(cusolverDnSetStream(solver, update_stream()));
  }
  double* flag() { return eig.get() + (eig.size() - 2); }  // failure flag, then ||V_t||^2

  cudaStream_t stream = nullptr;  // null: the update stream
  float* vt = nullptr;  // the V_t its S-RSIs read: V, or (split) a matrix's share of the kept V_t
  int srsi_count = 0;   // S-RSIs run on this lane, Householder redos included
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  cusolverDnParams_t params = nullptr;
  DeviceBuffer<double> partials, scal, Gd, eig;
  DeviceBuffer<int> info;
  // arrive()'s counter for build_second_moment and CholeskyQR: one, as the lane's
  // kernels run one at a time.
  DeviceBuffer<unsigned> ticket;
  DeviceBuffer<double> gram_parts;  // CholeskyQR's Gram matrix, Gd its Cholesky scratch
  DeviceBuffer<float> V, Y, Om, G, W, tau, work;
  DeviceBuffer<char> eig_work;
  std::vector<char> eig_host_work;
  Pinned<float> host_g, host_r;  // host solves: a Gram matrix down, W up
  Pinned<double> host_eig;       // eigenvalues, failure flag, ||V_t||^2
  std::vector<double> host_vecs;
};

template <class T>
class Adapprox final : public Optimizer<T> {
 public:
  Adapprox(const json& cfg, const ParamTable& table, Device& dev, uint64_t seed)
      : common_(cfg), s_(cfg), seed_(seed), dev_(dev), store_(dev) {
    const Sizes z = sizes(s_, table);
    largest_ = z.largest;
    split_ = z.split;
    size_t side = 1, kept = 0;
    int mat = 0;
    for (const ParamSpec& p : table.params) {  // same blobs, same order as the reference
      Tensor t;
      if (p.is_matrix()) {
        t.k_max = s_.rule(p).k_max;
        t.nonzero = t.k_max;
        t.rows = int(p.rows), t.cols = int(p.cols);
        t.kept = kept, t.mat = mat++;
        kept += vec_span(p.numel);  // 16-byte aligned for the finish's 4-wide path
        t.Q = store_.add(p, "adapprox.Q", size_t(p.rows) * t.k_max);
        t.U = store_.add(p, "adapprox.U", size_t(p.cols) * t.k_max);
        t.rank_err = store_.add(p, "adapprox.rank_err", 2);
        t.rank = s_.initial_rank(p);
        const float k0 = float(t.rank);
        if (t.rank_err) dev.to_device(t.rank_err, &k0, sizeof(float));
        const int s = s_.thin_cols(p);
        t.side = side;
        side += size_t(p.rows + p.cols) * (s - t.k_max);
        auto g = std::find_if(groups_.begin(), groups_.end(), [&](const Group& x) { return x.s == s; });
        if (g == groups_.end()) g = groups_.insert(groups_.end(), Group{s});
        t.group = int(g - groups_.begin());
        g->capacity++;
      } else {
        t.v = store_.add(p, "adapprox.v", p.numel);
      }
      if (s_.beta1 > 0) t.m1 = store_.add(p, "adapprox.m1", p.numel);
      if (p.is_matrix() && z.side_lanes > 0) {
        CUDA_CHECK(cudaEventCreateWithFlags(&t.ready, cudaEventDisableTiming));
        CUDA_CHECK(cudaEventCreateWithFlags(&t.done, cudaEventDisableTiming));
      }
      tensors_.push_back(t);
    }
    lanes_.push_back(std::make_unique<Lane>(dev, z.main, "adapprox"));
    if (split_) lanes_[0]->make_side();
    for (int l = 1; l <= z.side_lanes; l++) {
      lanes_.push_back(std::make_unique<Lane>(dev, z.side, "adapprox lane " + std::to_string(l)));
      lanes_.back()->make_side();
    }
    dvec_ = DeviceBuffer<float>(dev, z.vec, MemCategory::workspace, "adapprox vectors' D");
    vec_scal_ = DeviceBuffer<double>(dev, size_t(kSlots) * kMaxJobs, MemCategory::workspace,
                                     "adapprox vectors' scalars");
    vec_partials_ =
        DeviceBuffer<double>(dev, size_t(kReduceBlocks) * kMaxJobs, MemCategory::workspace,
                             "adapprox vectors' reduction partials");
    size_t grams = 1, eigs = 1;
    int matrices = 0;
    for (Group& g : groups_) {
      g.gram = grams - 1, g.eig = eigs - 1, g.info = matrices;
      grams += size_t(g.capacity) * g.s * g.s, eigs += size_t(g.capacity) * g.s, matrices += g.capacity;
    }
    // The groups' offsets end where sizes() says, so the plan is what is allocated here.
    if (side != z.side_cols || grams != z.grams || eigs != z.eigs || matrices != z.matrices ||
        (split_ && kept != z.kept))
      fail("internal: Adapprox's workspace layout disagrees with its sizes()");
    if (split_) {
      kept_ =
          DeviceBuffer<float>(dev, z.kept, MemCategory::workspace, "adapprox V_t of every matrix");
      kept_scal_ =
          DeviceBuffer<double>(dev, size_t(z.matrices) * (kSlots + 1), MemCategory::workspace,
                               "adapprox matrices' scalars and ||V_t||^2");
      kept_partials_ = DeviceBuffer<double>(dev, kReduceBlocks, MemCategory::workspace,
                                            "adapprox builds' reduction partials");
      kept_ticket_ =
          DeviceBuffer<unsigned>(dev, 1, MemCategory::workspace, "adapprox builds' arrive ticket");
      dev.zero(kept_ticket_.get(), kept_ticket_.bytes());
    } else {
      side_ = DeviceBuffer<float>(dev, z.side_cols, MemCategory::workspace,
                                  "adapprox thin deferred S-RSI, iterate columns past k_max");
      batch_grams_ = DeviceBuffer<double>(dev, z.grams, MemCategory::workspace,
                                          "adapprox thin deferred Gram64 batch");
      batch_eig_ = DeviceBuffer<double>(dev, z.eigs, MemCategory::workspace,
                                        "adapprox thin deferred eigenvalues");
      batch_info_ = DeviceBuffer<int>(dev, size_t(z.matrices) + 1, MemCategory::workspace,
                                      "adapprox deferred cuSOLVER info");
    }
    Lane& L0 = *lanes_[0];
    for (auto& lane : lanes_) {  // cuSOLVER's work for the matrices each lane takes
      Lane& L = *lane;
      int lwork = 1;
      size_t eig_bytes = 1, eig_host_bytes = 1;
      for (const ParamSpec& p : table.params) {
        if (!p.is_matrix() || (&L != &L0 && p.id == largest_)) continue;
        const int m = int(p.rows), s = s_.thin_cols(p);
        int a = 0, b = 0;
        size_t c = 0, ch = 0;
        CUSOLVER_CHECK(cusolverDnSgeqrf_bufferSize(L.solver, m, s, L.Y.get(), m, &a));
        CUSOLVER_CHECK(cusolverDnSorgqr_bufferSize(L.solver, m, s, s, L.Y.get(), m, L.tau.get(), &b));
        CUSOLVER_CHECK(cusolverDnXsyevBatched_bufferSize(
            L.solver, L.params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, s, CUDA_R_64F,
            L.Gd.get(), s, CUDA_R_64F, L.eig.get(), CUDA_R_64F, &c, &ch, 1));
        lwork = std::max({lwork, a, b});
        eig_bytes = std::max(eig_bytes, c), eig_host_bytes = std::max(eig_host_bytes, ch);
      }
      L.work = DeviceBuffer<float>(dev, size_t(lwork), MemCategory::workspace,
                                   "adapprox thin cuSOLVER work");
      L.eig_work = DeviceBuffer<char>(dev, eig_bytes, MemCategory::workspace, "adapprox thin syevBatched work");
      L.eig_host_work.resize(eig_host_bytes);
    }
    // The batched solve runs at begin_step() or state(), on the update stream after every
    // update that uses the V_t scratch, so its work lives there: ~125 MB for d12's 50
    // matrices in one call; d24's 98 larger ones (~0.4 GB, measured 2.35% over the plan)
    // go in as many calls as it takes to fit.
    size_t batch_bytes = 1, batch_host_bytes = 1;
    for (Group& g : groups_) {
      if (split_) break;  // nothing is deferred: no batched eigensolver
      auto work = [&](int count, size_t* host) {
        size_t c = 0;
        CUSOLVER_CHECK(cusolverDnXsyevBatched_bufferSize(
            L0.solver, L0.params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, g.s, CUDA_R_64F,
            batch_grams_.get(), g.s, CUDA_R_64F, batch_eig_.get(), CUDA_R_64F, &c, host, count));
        return c;
      };
      size_t ch = 0, c = work(g.chunk = g.capacity, &ch);
      while (c > L0.V.bytes() && g.chunk > 1) c = work(g.chunk = (g.chunk + 1) / 2, &ch);
      batch_bytes = std::max(batch_bytes, c), batch_host_bytes = std::max(batch_host_bytes, ch);
    }
    batch_work_bytes_ = batch_bytes;
    if (!split_ && batch_bytes > L0.V.bytes())
      batch_work_ = DeviceBuffer<char>(dev, batch_bytes, MemCategory::workspace, "adapprox deferred syevBatched work");
    L0.eig_host_work.resize(std::max(L0.eig_host_work.size(), batch_host_bytes));
    int device = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    if (split_)
      for (size_t l = 0; l < lanes_.size(); l++)
        servers_.emplace_back([this, l, device] { serve(int(l), device); });
  }
  ~Adapprox() override {
    {
      // Unsettled work (an error cut a step short) is dropped: the pipeline's buffers it
      // would read may be gone (~UpdatePipeline settles what was already running).
      const std::lock_guard<std::mutex> lock(pool_mutex_);
      for (Job& job : queue_) job.call->left--;
      queue_.clear();
      stop_ = true;
    }
    work_cv_.notify_all();
    for (std::thread& s : servers_) s.join();
    for (Tensor& t : tensors_) {
      if (t.ready) cudaEventDestroy(t.ready);
      if (t.done) cudaEventDestroy(t.done);
    }
  }

  void begin_step(int64_t t, float lr) override {
    if (!split_) finish_deferred();
    t_ = t, lr_ = lr;
    set_step({t, lr});  // the stochastic-rounding streams' step
    joined_ = false;
  }

  // As the reference's: the mean rank over the matrices kept here, the S-RSIs (a
  // Householder redo counts as one more) and the largest rank (past k + p = kSolveMax a
  // matrix leaves the one-launch paths). Split, each matrix as its latest finished
  // factorization left it: that of the step before, which runs beside this one's forward.
  std::vector<std::pair<std::string, double>> step_stats() const override {
    double ranks = 0, widest = 0, srsis = 0;
    int matrices = 0;
    const std::lock_guard<std::mutex> lock(pool_mutex_);
    for (const Tensor& t : tensors_)
      if (t.rank_err) {
        ranks += t.shown_rank, widest = std::max(widest, double(t.shown_rank)), matrices++;
        if (t.shown_step == t_ || split_) srsis += t.shown_srsi;
      }
    if (matrices == 0) return {};
    return {{"adapprox_rank", ranks / matrices},
            {"adapprox_srsi", srsis},
            {"adapprox_rank_max", widest}};
  }

  void update(const ParamSpec& p, T* param, float* master, T* grad) override {
    update_one({&p, param, master, grad});
  }

  // One tensor on this thread (lane 0 bound to the update stream), on grad_scale * grad.
  void update_one(const TensorUpdate<T>& u) {
    if (!u.p->is_matrix()) return update_vectors({&u});
    Lane& L = *lanes_[0];
    Tensor& t = tensors_[u.p->id];
    if (split_) {
      join();  // lane 0 and the factors are this thread's again
      refresh(t);
      L.bind();
      const Scratch x = kept_scratch(t);
      build_v(u, x);
      if (!finish_late()) finish_matrix(u, x);
      factorize(L, u, t_);
      if (finish_late()) finish_matrix(u, x);
      return;
    }
    L.bind();
    if (t.slot >= 0) finish_deferred();  // updated again without begin_step
    refresh(t);
    matrix_step(L, u);
  }

  // The same arithmetic as update() on each in turn. Split (side lanes): V_t of every
  // matrix is built into its share of the kept V_t and the weights updated from it on
  // this thread, a few launches for all; the factorizations (S-RSIs, rank loop, host
  // syncs) are queued for the lanes' host threads (lane 0 takes the largest, the side
  // lanes the rest), each with a stream, thin buffers and handles of its own, and run
  // beside whatever the caller queues next (the next step's forward): Q_t, U_t are
  // first read by the next step's V_t, which waits for them (join()). Where the finish
  // needs the factorization (the "refactored" denominator reads Q_t U_t^T, cos guidance
  // writes the clipped D over V_t) this call waits for its lanes before finishing.
  // Without side lanes, everything on this thread.
  void update_many(const std::vector<TensorUpdate<T>>& us) override {
    std::vector<const TensorUpdate<T>*> matrices, vectors;
    for (const TensorUpdate<T>& u : us) (u.p->is_matrix() ? matrices : vectors).push_back(&u);
    if (split_) {
      bool again = !joined_;  // the step's first call takes the last step's factors
      for (const TensorUpdate<T>* u : matrices) again = again || tensors_[u->p->id].queued;
      if (again) join();
    }
    for (const TensorUpdate<T>* u : matrices) refresh(tensors_[u->p->id]);
    if (!split_) {
      for (size_t at = 0; at < vectors.size(); at += kMaxJobs)
        update_vectors(
            {vectors.begin() + at, vectors.begin() + std::min(vectors.size(), at + kMaxJobs)});
      for (const TensorUpdate<T>* u : matrices) update_one(*u);
      return;
    }
    // Largest first: its factorization is the longest.
    std::stable_sort(matrices.begin(), matrices.end(),
                     [](const TensorUpdate<T>* a, const TensorUpdate<T>* b) {
                       return a->p->numel > b->p->numel;
                     });
    for (const TensorUpdate<T>* u : matrices) build_v(*u, kept_scratch(tensors_[u->p->id]));
    // Released before the finish, not after: H100, Brown d12 B 16 at rank 16, one call,
    // 34.30 ms a step (update_ms 3.09) against 34.70 (2.93), AdamW 30.95.
    release(matrices);
    if (finish_late()) join();
    for (size_t at = 0; at < vectors.size(); at += kMaxJobs)
      update_vectors({vectors.begin() + at, vectors.begin() + std::min(vectors.size(), at + kMaxJobs)});
    std::vector<FinishJob<device_t<T>>> jobs;
    for (const TensorUpdate<T>* u : matrices) {
      Tensor& t = tensors_[u->p->id];
      if (finish_late()) {
        finish_matrix(*u, kept_scratch(t));
        continue;
      }
      jobs.push_back(finish_job(*u, kept_scratch(t)));
      if (jobs.size() == size_t(kMaxJobs) || u == matrices.back())
        finish_jobs(jobs, kept_partials_, true), jobs.clear();
    }
  }

  // Every gradient read multiplies by grad_scale (build_second_moment, the finish's
  // recomputed D, vector_direction, matrix_direction), sparing the pipeline's clip pass
  // over every gradient, which update_ms counts.
  bool scales_grads() const override { return true; }

  std::vector<StateBlob> state() override {
    join();
    finish_deferred();
    for (Tensor& t : tensors_)
      if (t.rank_err && !t.stale) {
        const float host[2] = {float(t.rank), t.xi_bar};
        // Pageable source: cudaMemcpyAsync copies it before returning.
        CUDA_CHECK(cudaMemcpyAsync(t.rank_err, host, sizeof(host), cudaMemcpyHostToDevice, update_stream()));
        t.stale = true;  // the caller may write the blob (a checkpoint load)
      }
    return store_.blobs();
  }

 private:
  struct Tensor {
    int k_max = 0;
    float *Q = nullptr, *U = nullptr, *rank_err = nullptr, *v = nullptr, *m1 = nullptr;
    int rank = 0;       // the truth between state() calls
    float xi_bar = 0;
    bool stale = false;  // rank_err on the device may be newer than rank, xi_bar
    // Columns of Q and U past it are zero (the rank loop zeroes those it wrote past the
    // rank it keeps, and only those: two memsets a matrix and step fewer at a steady rank).
    int nonzero = 0;
    bool queued = false;                          // split: its factorization is queued or running
    cudaEvent_t ready = nullptr, done = nullptr;  // split: its V_t built, its factors written
    // step_stats()'s view (pool_mutex_): the rank and S-RSIs of its latest factorization,
    // and the step that ran it.
    int shown_rank = 0, shown_srsi = 0;
    int64_t shown_step = 0;
    int group = 0;       // groups_ entry of its s
    size_t side = 0;     // its iterate columns past k_max in side_ (Y's, then Om's)
    int slot = -1;       // position in its group's batch while its S-RSI is deferred
    int rows = 0, cols = 0;
    double norm_sq = 0;  // ||V_t||^2 of the deferred S-RSI
    size_t kept = 0;     // split: its V_t's offset in kept_
    int mat = 0;         // its place among the matrices (kept_scal_)
  };
  // The matrices of one thin width s: their deferred Gram matrices sit side by side (at
  // most capacity of them) for one batched eigensolver call.
  struct Group {
    int s = 0, capacity = 0, count = 0;
    int chunk = 0;             // matrices per eigensolver call (its work fits the V_t scratch)
    size_t gram = 0, eig = 0;  // offsets into batch_grams_, batch_eig_
    int info = 0;              // offset into batch_info_
  };

  // Where a matrix's V_t and its sums go: a lane's scratch, or (split) its share of the
  // kept V_t and scalars, with the builds' own partials and ticket.
  struct Scratch {
    float* V;
    double *scal, *norm_sq;  // kSlots scalars (kSumD2 first), ||V_t||^2
    DeviceBuffer<double>* partials;
    unsigned* ticket;
  };
  static Scratch lane_scratch(Lane& L) {
    return {L.V.get(), L.scal.get(), L.flag() + 1, &L.partials, L.ticket.get()};
  }
  Scratch kept_scratch(const Tensor& t) {
    double* scal = kept_scal_.get() + size_t(t.mat) * (kSlots + 1);
    return {kept_.get() + t.kept, scal, scal + kSlots, &kept_partials_, kept_ticket_.get()};
  }

  // The finish reads this step's factors (Q_t U_t^T for the "refactored" denominator)
  // or writes over V_t (cos guidance's clipped D), so it follows the factorization.
  bool finish_late() const { return s_.refactored || (s_.cos_guidance && s_.beta1 > 0); }

  // Queues the matrices' factorizations, each to start once what the update stream has
  // queued so far is done (their V_t built).
  void release(const std::vector<const TensorUpdate<T>*>& matrices) {
    for (const TensorUpdate<T>* u : matrices)
      CUDA_CHECK(cudaEventRecord(tensors_[u->p->id].ready, update_stream()));
    {
      const std::lock_guard<std::mutex> lock(pool_mutex_);
      Call& call = calls_.emplace_back();
      for (const TensorUpdate<T>* u : matrices) {
        queue_.push_back({*u, &call, t_});
        call.left++, call.ids.push_back(u->p->id);  // counted once queued
        tensors_[u->p->id].queued = true;
      }
    }
    work_cv_.notify_all();
  }

  // Waits for every queued factorization: its host thread done, its stream work ordered
  // before the update stream's next; then rethrows a lane's error.
  void join() {
    std::unique_lock<std::mutex> lock(pool_mutex_);
    while (!calls_.empty()) {
      Call& call = calls_.front();
      done_cv_.wait(lock, [&] { return call.left == 0; });
      for (int id : call.ids) {
        Tensor& t = tensors_[id];
        CUDA_CHECK(cudaStreamWaitEvent(update_stream(), t.done, 0));
        t.queued = false;
      }
      calls_.pop_front();
    }
    joined_ = true;
    if (!error_) return;
    const std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }

  // Lane l's host thread: takes the next queued factorization it may run (lane 0 the
  // largest matrix's, which only its thin buffers fit; the side lanes the others') once
  // the matrix's V_t is built, and marks it done, until the destructor stops it.
  void serve(int l, int device) {
    Lane& L = *lanes_[l];
    std::unique_ptr<cuda::UpdateStreamScope> scope;
    try {
      CUDA_CHECK(cudaSetDevice(device));
      scope = std::make_unique<cuda::UpdateStreamScope>(L.stream);
    } catch (...) {
      const std::lock_guard<std::mutex> lock(pool_mutex_);
      if (!error_) error_ = std::current_exception();
    }
    auto mine = [&](const Job& job) { return (job.u.p->id == largest_) == (l == 0); };
    for (;;) {
      Job job{};
      {
        std::unique_lock<std::mutex> lock(pool_mutex_);
        auto next = queue_.end();
        work_cv_.wait(lock, [&] {
          next = std::find_if(queue_.begin(), queue_.end(), mine);
          return stop_ || next != queue_.end();
        });
        if (next == queue_.end()) return;
        job = *next;
        queue_.erase(next);
      }
      const Tensor& t = tensors_[job.u.p->id];
      try {
        if (!scope) fail("internal: Adapprox lane ", l, " has no stream");
        L.bind();  // lane 0's handles were the calling thread's in between
        CUDA_CHECK(cudaStreamWaitEvent(L.stream, t.ready, 0));
        factorize(L, job.u, job.t);
      } catch (...) {
        const std::lock_guard<std::mutex> lock(pool_mutex_);
        if (!error_) error_ = std::current_exception();
      }
      // Also after an error: what the lane queued before it still orders join()'s wait.
      if (scope) cudaEventRecord(t.done, L.stream);
      {
        const std::lock_guard<std::mutex> lock(pool_mutex_);
        job.call->left--;
      }
      done_cv_.notify_all();
    }
  }

  // Spec 6.5 steps 2-4 for a matrix whose V_t is kept (split), on lane L: AS-RSI of
  // step `step` into (Q, U), the rank and xi_bar.
  void factorize(Lane& L, const TensorUpdate<T>& u, int64_t step) {
    const ParamSpec& p = *u.p;
    Tensor& t = tensors_[p.id];
    const int before = L.srsi_count;
    L.vt = kept_.get() + t.kept;
    // ||V_t||^2 rides with the S-RSI's first Gram matrix (gram_matrix's tail).
    CUDA_CHECK(cudaMemcpyAsync(L.flag() + 1, kept_scratch(t).norm_sq, sizeof(double),
                               cudaMemcpyDeviceToDevice, update_stream()));
    const uint64_t seed = optim::mix_seed(seed_, step, p.id);
    double norm_sq = 0;
    const std::vector<double> lambda = srsi(L, p, t.rank, seed, &norm_sq);
    adapt(L, p, lambda, norm_sq, seed);
    show(t, L.srsi_count - before, step);
  }

  void show(Tensor& t, int srsis, int64_t step) {
    const std::lock_guard<std::mutex> lock(pool_mutex_);
    t.shown_rank = t.rank, t.shown_srsi = srsis, t.shown_step = step;
  }

  // rank and xi_bar from the device after state() handed out the blobs.
  void refresh(Tensor& t) {
    if (!t.stale) return;
    float rank_err[2];
    copy_to_host_on_update_stream(rank_err, t.rank_err, sizeof(rank_err));
    t.rank = int(rank_err[0]), t.xi_bar = rank_err[1], t.stale = false;
    t.nonzero = t.k_max;  // a checkpoint's factors: any column may be nonzero
  }

  // Neither growth nor shrinking can follow this step's S-RSI: its eigenvalues only feed
  // xi_bar, and Q_t, U_t are first read by the next step's V_t (the "refactored"
  // denominator reads them at once), so the eigensolver may wait for finish_deferred().
  bool deferrable(const ParamSpec& p) const {
    const Tensor& t = tensors_[p.id];
    return !s_.refactored && t.rank == s_.rule(p).k_max && !(t.xi_bar < s_.xi_thr / 2);
  }

  // Tensor p's share of a finish_jobs() launch; its scalars at scal, `stride` apart.
  FinishJob<device_t<T>> finish_job(const ParamSpec& p, T* param, float* master, float* Dir,
                                    double* scal, size_t stride) const {
    return {weights(param, master, seed_, p.id),
            Dir,
            tensors_[p.id].m1,
            scal + kSumD2 * stride,
            stride,
            p.numel,
            float(common_.wd(p))};
  }

  // Spec 6.5 steps 5-8 (and 6.7): clip, momentum, guidance, decoupled decay, for up to
  // kMaxJobs tensors in one launch of each kernel; partials as sum_jobs() needs them for
  // the jobs' sums, one sum per job and launch. `summed`: sum D^2 is in already.
  void finish_jobs(const std::vector<FinishJob<device_t<T>>>& jobs, DeviceBuffer<double>& partials,
                   bool summed) {
    using J = FinishJob<device_t<T>>;
    auto slot = [](const J& j, Slot k) { return j.scal + size_t(k) * j.stride; };
    std::vector<SumJob<Squares<float>>> d2;
    for (const J& j : jobs) d2.push_back({{j.dir}, j.n, slot(j, kSumD2)});
    if (!summed) sum_jobs(d2, partials);
    std::vector<J> vjobs = jobs;
    for (J& j : vjobs)
      j.vec = aligned(j.dir, 16) && aligned(j.m1, 16) && aligned(j.g, 4 * sizeof(*j.g)) &&
              aligned(j.w.param, 4 * sizeof(*j.w.param)) && aligned(j.w.master, 16);
    auto run = [&](Pass pass) {
      launch_jobs(
          vjobs, [](const J& j) { return elementwise_blocks((j.n + 3) / 4); },
          [&](const Jobs<J>& b, unsigned grid) {
            finish_kernel<<<grid, kThreads, 0, update_stream()>>>(b, pass, s_.clip, float(s_.beta1),
                                                                  lr_);
          });
    };
    if (!(s_.cos_guidance && s_.beta1 > 0)) return run(kFused);
    run(kClip);
    std::vector<SumJob<Dot>> dot;
    std::vector<SumJob<Squares<float>>> m2;
    for (const J& j : jobs) {
      dot.push_back({{j.dir, j.m1}, j.n, slot(j, kDot)});
      m2.push_back({{j.m1}, j.n, slot(j, kSumM2)});
    }
    sum_jobs(dot, partials);
    sum_jobs(d2, partials);  // the same jobs again, now over the clipped D
    sum_jobs(m2, partials);
    run(kApply);
  }

  // Spec 6.5's vector form for up to kMaxJobs vectors, each with its own share of the
  // D buffer and the scalars: three launches and two sums for all of them.
  void update_vectors(const std::vector<const TensorUpdate<T>*>& us) {
    std::vector<VectorJob<device_t<T>>> jobs;
    std::vector<FinishJob<device_t<T>>> finishing;
    size_t at = 0;
    for (size_t i = 0; i < us.size(); i++) {
      const ParamSpec& p = *us[i]->p;
      float* Dir = dvec_.get() + at;
      jobs.push_back({Dir, tensors_[p.id].v, dev_ptr<T>(us[i]->grad), us[i]->grad_scale, p.numel});
      finishing.push_back(
          finish_job(p, us[i]->param, us[i]->master, Dir, vec_scal_.get() + i, kMaxJobs));
      at += vec_span(p.numel);
    }
    launch_jobs(
        jobs, [](const VectorJob<device_t<T>>& j) { return elementwise_blocks(j.n); },
        [&](const Jobs<VectorJob<device_t<T>>>& b, unsigned grid) {
          vector_direction<<<grid, kThreads, 0, update_stream()>>>(b, float(s_.beta2),
                                                                   float(s_.eps));
        });
    finish_jobs(finishing, vec_partials_, false);
  }

  // V_t into x.V, ||V_t||^2 and sum D^2 (rebuilt denominator) into x's slots.
  void build_v(const TensorUpdate<T>& u, const Scratch& x) {
    const ParamSpec& p = *u.p;
    const Tensor& t = tensors_[p.id];
    const int m = int(p.rows), n = int(p.cols);
    const int tiles = int(ceil_div(n, kBuildCols) * ceil_div(m, kBuildRows));
    build_second_moment<<<std::min(tiles, kBuildBlocks), kBuildCols, 0, update_stream()>>>(
        x.V, dev_ptr(u.grad), t.Q, t.U, m, n, t.rank, float(s_.beta2), float(s_.eps), u.grad_scale,
        x.partials->get(), x.ticket, x.norm_sq, x.scal + kSumD2);
    CUDA_CHECK_LAUNCH();
  }

  // A matrix's share of a finish_jobs() launch, V_hat in x.V: with the rebuilt
  // denominator, sum D^2 came with V_t (build_v) and the finish recomputes D from V_t
  // and g; with the refactored one, D is formed in place first (finish_matrix).
  FinishJob<device_t<T>> finish_job(const TensorUpdate<T>& u, const Scratch& x) const {
    FinishJob<device_t<T>> job = finish_job(*u.p, u.param, u.master, x.V, x.scal, 1);
    if (!s_.refactored) job.g = dev_ptr(u.grad), job.scale = u.grad_scale, job.eps = float(s_.eps);
    return job;
  }

  // Steps 5-8 for one matrix (the refactored denominator's D summed first).
  void finish_matrix(const TensorUpdate<T>& u, const Scratch& x) {
    if (s_.refactored) {
      matrix_direction<<<elementwise_blocks(u.p->numel), kThreads, 0, update_stream()>>>(
          x.V, dev_ptr(u.grad), u.grad_scale, u.p->numel, float(s_.eps));
      CUDA_CHECK_LAUNCH();
    }
    finish_jobs({finish_job(u, x)}, *x.partials, !s_.refactored);
  }

  // Spec 6.5 steps 1-4 on lane L: V_t, AS-RSI into (Q, U), D over the V_t scratch; then
  // steps 5-8.
  void matrix_step(Lane& L, const TensorUpdate<T>& u) {
    const ParamSpec& p = *u.p;
    Tensor& t = tensors_[p.id];
    const int before = L.srsi_count;
    if (deferrable(p)) {
      deferred_step(L, u);
    } else {
      build_v(u, lane_scratch(L));
      double norm_sq = 0;  // arrives with the first S-RSI's eigenvalues
      const uint64_t seed = optim::mix_seed(seed_, t_, p.id);
      const std::vector<double> lambda = srsi(L, p, t.rank, seed, &norm_sq);
      adapt(L, p, lambda, norm_sq, seed);
      finish_matrix(u, lane_scratch(L));
    }
    show(t, L.srsi_count - before, t_);
  }

  // as_rsi (srsi.cpp) from the first S-RSI's eigenvalues on, step for step: grow while
  // the error is above xi_thr, shrink with hysteresis, then rank, xi_bar and (with the
  // "refactored" denominator) Q_t U_t^T into the V_t scratch.
  void adapt(Lane& L, const ParamSpec& p, std::vector<double> lambda, double norm_sq,
             uint64_t seed) {
    Tensor& t = tensors_[p.id];
    const int m = int(p.rows), n = int(p.cols);
    const optim::RankRule rule = s_.rule(p);
    auto rel_error = [&](double kept) {
      return norm_sq > 0 ? std::sqrt(std::max(0.0, norm_sq - kept) / norm_sq) : 0.0;
    };
    auto head = [](const std::vector<double>& x, int j) {
      double s = 0;
      for (int i = 0; i < j; i++) s += x[i];
      return s;
    };
    int rank = int(lambda.size());
    double xi = rel_error(head(lambda, rank));
    while (xi > rule.xi_thr && rank < rule.k_max) {
      rank = std::min(rank + rule.delta_k, rule.k_max);
      lambda = srsi(L, p, rank, seed, nullptr);
      xi = rel_error(head(lambda, rank));
    }
    const int written = std::max(rank, t.nonzero);  // columns of Q and U that may be nonzero
    if (t.xi_bar < s_.xi_thr / 2) {  // shrink allowed
      int k_new = rank;
      while (k_new > rule.k_min && rel_error(head(lambda, k_new - 1)) < rule.xi_thr / 2) k_new--;
      if (k_new < rank) rank = k_new, xi = rel_error(head(lambda, rank));
    }
    if (written > rank) {
      CUDA_CHECK(cudaMemsetAsync(t.Q + size_t(m) * rank, 0, size_t(m) * (written - rank) * sizeof(float), update_stream()));
      CUDA_CHECK(cudaMemsetAsync(t.U + size_t(n) * rank, 0, size_t(n) * (written - rank) * sizeof(float), update_stream()));
    }
    t.nonzero = rank, t.rank = rank, t.xi_bar = float(s_.rho * t.xi_bar + (1 - s_.rho) * xi);
    if (s_.refactored) {  // V_hat = Q_t U_t^T instead of the rebuilt V_t
      const float one = 1.f, zero = 0.f;
      CUBLAS_CHECK(cublasSgemm(L.blas, CUBLAS_OP_N, CUBLAS_OP_T, n, m, rank, &one, t.U, n, t.Q, m,
                               &zero, L.vt, n));
    }
  }

  // S-RSI of the lane's V_t scratch at rank k: writes the first k columns of Q and U and
  // returns lambda (the k largest eigenvalues of U^T U, descending); with norm_sq, also
  // ||V_t||^2 from the slot after the eigenvalues, in the same copy.
  std::vector<double> srsi(Lane& L, const ParamSpec& p, int k, uint64_t seed, double* norm_sq,
                           bool householder = false) {
    const Tensor& t = tensors_[p.id];
    const optim::RankRule rule = s_.rule(p);
    const int m = int(p.rows), n = int(p.cols), full = std::min(m, n);
    k = std::min(k, full);
    const int s = std::min(k + rule.p, full);
    const float one = 1.f, zero = 0.f;
    L.srsi_count++;
    iterate(L, p, s, seed, householder);
    const bool host = s <= kHostSolveMax;
    const std::vector<double> eig = host ? host_eigen(L, s, k) : device_eigen(L, s);
    if (norm_sq) *norm_sq = eig.back();
    const bool finite = std::all_of(eig.begin(), eig.begin() + s, [](double x) { return std::isfinite(x); });
    if (!householder && (eig[eig.size() - 2] != 0 || !finite)) return srsi(L, p, k, seed, nullptr, true);
    std::vector<double> lambda(k);
    for (int j = 0; j < k; j++) lambda[j] = std::max(0.0, eig[s - 1 - j]);
    if (!host) {
      top_eigenvectors<<<ceil_div(size_t(s) * k, kThreads), kThreads, 0, update_stream()>>>(L.W.get(), L.Gd.get(), s, k);
      CUDA_CHECK_LAUNCH();
    }
    if (s <= kSolveMax) {
      Rotation r{};
      for (int j = 0; j < k; j++)
        for (int c = 0; c < s; c++) r.w[c + j * kSolveMax] = L.host_r.get()[c + size_t(j) * s];
      rotate<<<ceil_div(size_t(m) + n, kThreads), kThreads, 0, update_stream()>>>(
          t.Q, t.U, L.Y.get(), L.Om.get(), r, m, n, s, k);
      CUDA_CHECK_LAUNCH();
    } else {
      CUBLAS_CHECK(cublasSgemm(L.blas, CUBLAS_OP_N, CUBLAS_OP_N, m, k, s, &one, L.Y.get(), m,
                               L.W.get(), s, &zero, t.Q, m));
      CUBLAS_CHECK(cublasSgemm(L.blas, CUBLAS_OP_N, CUBLAS_OP_N, n, k, s, &one, L.Om.get(), n,
                               L.W.get(), s, &zero, t.U, n));
    }
    return lambda;
  }

  // The lane's Gram matrix (s x s) solved by cuSOLVER in double, the eigenvectors left
  // in its Gram64; returns its eigenvalues (ascending), failure flag and ||V_t||^2.
  std::vector<double> device_eigen(Lane& L, int s) {
    widen<<<ceil_div(size_t(s) * s, kThreads), kThreads, 0, update_stream()>>>(L.Gd.get(), L.G.get(), size_t(s) * s);
    CUDA_CHECK_LAUNCH();
    CUSOLVER_CHECK(cusolverDnXsyevBatched(L.solver, L.params, CUSOLVER_EIG_MODE_VECTOR,
                                          CUBLAS_FILL_MODE_UPPER, s, CUDA_R_64F, L.Gd.get(), s,
                                          CUDA_R_64F, L.eig.get(), CUDA_R_64F, L.eig_work.get(),
                                          L.eig_work.size(), L.eig_host_work.data(),
                                          L.eig_host_work.size(), L.info.get(), 1));
    copy_to_host_on_update_stream(L.host_eig.get(), L.eig.get(), L.eig.size() * sizeof(double));
    return std::vector<double>(L.host_eig.get(), L.host_eig.get() + L.eig.size());
  }

  // The same on the host, in double: the Gram matrix with the failure flag and ||V_t||^2
  // after it (gram_matrix) down in one copy, the top k eigenvectors (largest first) into
  // host_r and, for s > kSolveMax, up into the lane's W.
  std::vector<double> host_eigen(Lane& L, int s, int k) {
    L.host_vecs.resize(size_t(s) * s);
    copy_to_host_on_update_stream(L.host_g.get(), L.G.get(), gram_floats(s) * sizeof(float));
    std::vector<double> eig(size_t(s) + 2);
    std::memcpy(&eig[s], L.host_g.get() + gram_tail(s), 2 * sizeof(double));
    optim::symmetric_eigen(L.host_g.get(), s, eig.data(), L.host_vecs.data());
    float* W = L.host_r.get();
    for (int j = 0; j < k; j++)
      for (int r = 0; r < s; r++)
        W[r + size_t(j) * s] = float(L.host_vecs[r + size_t(s - 1 - j) * s]);
    // Pinned: copied when the stream gets there; host_r is next written after this lane's
    // next sync, which waits for it. At s <= kSolveMax, rotate takes W by value instead.
    if (s > kSolveMax)
      CUDA_CHECK(cudaMemcpyAsync(L.W.get(), W, size_t(s) * k * sizeof(float),
                                 cudaMemcpyHostToDevice, update_stream()));
    return eig;
  }

  // S-RSI up to its Gram matrix: the sketch, l rounds of Y = V Om, orth(Y), Om = V^T Y,
  // then G = Om^T Om (summed in double, rounded to fp32; the failure flag and ||V_t||^2
  // after it); a failed Cholesky is flagged in the lane's failure slot.
  void iterate(Lane& L, const ParamSpec& p, int s, uint64_t seed, bool householder) {
    const int m = int(p.rows), n = int(p.cols);
    const float one = 1.f, zero = 0.f;
    float *V = L.vt, *Y = L.Y.get(), *Om = L.Om.get();
    sketch<<<elementwise_blocks(size_t(n) * s), kThreads, 0, update_stream()>>>(Om, size_t(n) * s, seed,
                                                                                 L.flag());
    CUDA_CHECK_LAUNCH();
    for (int it = 0; it < s_.rule(p).l; it++) {
      CUBLAS_CHECK(cublasSgemm(L.blas, CUBLAS_OP_T, CUBLAS_OP_N, m, s, n, &one, V, n, Om, n, &zero, Y, m));
      orthonormalize(L, Y, m, s, householder);
      CUBLAS_CHECK(cublasSgemm(L.blas, CUBLAS_OP_N, CUBLAS_OP_N, n, s, m, &one, V, n, Y, m, &zero, Om, n));
    }
    gram_matrix(Om, n, s, L.G.get(), L.flag(), L.gram_parts.get(), L.Gd.get(), L.ticket.get());
  }

  // A deferred S-RSI (k = k_max): up to its Gram matrix, which goes into the next slot of
  // its group's batch, then one small copy brings its failure flag and ||V_t||^2. Y and
  // Om wait in the factors' own state (first k_max columns) and side_ (the rest) for
  // finish_deferred(); a failed Cholesky (or a non-finite Gram) gives the slot back as
  // the identity and redoes the S-RSI with Householder QR. Then D over the V_t scratch,
  // and steps 5-8.
  void deferred_step(Lane& L, const TensorUpdate<T>& u) {
    const ParamSpec& p = *u.p;
    Tensor& t = tensors_[p.id];
    const Group& grp = groups_[t.group];
    build_v(u, lane_scratch(L));
    L.srsi_count++;
    const uint64_t seed = optim::mix_seed(seed_, t_, p.id);
    iterate(L, p, grp.s, seed, false);
    const size_t ss = size_t(grp.s) * grp.s;
    t.slot = groups_[t.group].count++;
    double* gram = batch_grams_.get() + grp.gram + size_t(t.slot) * ss;
    widen_checked<<<ceil_div(ss, kThreads), kThreads, 0, update_stream()>>>(gram, L.G.get(), ss, L.flag());
    CUDA_CHECK_LAUNCH();
    double flag_norm[2];
    copy_to_host_on_update_stream(flag_norm, L.flag(), sizeof(flag_norm));
    t.norm_sq = flag_norm[1];
    if (flag_norm[0] == 0) {
      pending_.push_back(p.id);
      const int m = t.rows, n = t.cols, k = t.rank;
      const size_t extra = size_t(grp.s - k);
      auto stash = [&](float* to, float* side, const float* from, size_t rows) {
        CUDA_CHECK(cudaMemcpyAsync(to, from, rows * k * sizeof(float), cudaMemcpyDeviceToDevice, update_stream()));
        CUDA_CHECK(cudaMemcpyAsync(side, from + rows * k, rows * extra * sizeof(float), cudaMemcpyDeviceToDevice,
                                   update_stream()));
      };
      stash(t.Q, side_.get() + t.side, L.Y.get(), size_t(m));
      stash(t.U, side_.get() + t.side + size_t(m) * extra, L.Om.get(), size_t(n));
    } else {
      identity<<<ceil_div(ss, kThreads), kThreads, 0, update_stream()>>>(gram, grp.s);
      CUDA_CHECK_LAUNCH();
      t.slot = -1;
      adapt(L, p, srsi(L, p, t.rank, seed, nullptr, true), t.norm_sq, seed);
    }
    finish_matrix(u, lane_scratch(L));
  }

  // The deferred S-RSIs' second half: batched eigensolver calls per group, one copy of
  // all eigenvalues, then per matrix xi_bar (its rank stays k_max) and Q = Y W, U = Om W.
  // A slot whose S-RSI failed holds the identity and no pending matrix.
  void finish_deferred() {
    if (pending_.empty() && std::all_of(groups_.begin(), groups_.end(), [](const Group& g) { return g.count == 0; }))
      return;
    Lane& L = *lanes_[0];
    L.bind();
    for (const Group& g : groups_)
      for (int at = 0; at < g.count; at += g.chunk) {
        const size_t ss = size_t(g.s) * g.s;
        CUSOLVER_CHECK(cusolverDnXsyevBatched(
            L.solver, L.params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, g.s, CUDA_R_64F,
            batch_grams_.get() + g.gram + at * ss, g.s, CUDA_R_64F,
            batch_eig_.get() + g.eig + size_t(at) * g.s, CUDA_R_64F, batch_work(), batch_work_bytes_,
            L.eig_host_work.data(), L.eig_host_work.size(), batch_info_.get() + g.info + at,
            std::min(g.chunk, g.count - at)));
      }
    std::vector<double> eig(batch_eig_.size());
    copy_to_host_on_update_stream(eig.data(), batch_eig_.get(), eig.size() * sizeof(double));
    const float one = 1.f, zero = 0.f;
    for (int id : pending_) {
      Tensor& t = tensors_[id];
      const Group& g = groups_[t.group];
      const int m = t.rows, n = t.cols, s = g.s, k = t.rank;
      const double* vals = eig.data() + g.eig + size_t(t.slot) * s;
      double kept = 0;  // the k largest, largest first, as srsi() sums them
      for (int j = 0; j < k; j++) kept += std::max(0.0, vals[s - 1 - j]);
      const double norm_sq = t.norm_sq;
      const double xi = norm_sq > 0 ? std::sqrt(std::max(0.0, norm_sq - kept) / norm_sq) : 0.0;
      t.xi_bar = float(s_.rho * t.xi_bar + (1 - s_.rho) * xi);
      top_eigenvectors<<<ceil_div(size_t(s) * k, kThreads), kThreads, 0, update_stream()>>>(
          L.W.get(), batch_grams_.get() + g.gram + size_t(t.slot) * s * s, s, k);
      CUDA_CHECK_LAUNCH();
      const size_t extra = size_t(s - k);
      auto unstash = [&](float* to, const float* from, const float* side, size_t rows) {
        CUDA_CHECK(cudaMemcpyAsync(to, from, rows * k * sizeof(float), cudaMemcpyDeviceToDevice, update_stream()));
        CUDA_CHECK(cudaMemcpyAsync(to + rows * k, side, rows * extra * sizeof(float), cudaMemcpyDeviceToDevice,
                                   update_stream()));
      };
      unstash(L.Y.get(), t.Q, side_.get() + t.side, size_t(m));
      unstash(L.Om.get(), t.U, side_.get() + t.side + size_t(m) * extra, size_t(n));
      CUBLAS_CHECK(cublasSgemm(L.blas, CUBLAS_OP_N, CUBLAS_OP_N, m, k, s, &one, L.Y.get(), m, L.W.get(), s, &zero, t.Q, m));
      CUBLAS_CHECK(cublasSgemm(L.blas, CUBLAS_OP_N, CUBLAS_OP_N, n, k, s, &one, L.Om.get(), n, L.W.get(), s, &zero, t.U, n));
      t.slot = -1;
    }
    for (Group& g : groups_) g.count = 0;
    pending_.clear();
  }

  // orth(Y) in place, Y m x s: CholeskyQR2 (twice: R = chol(Y^T Y) with the Gram matrix
  // summed in double, Y <- Y R^-1), a failed Cholesky flagged in the lane's failure
  // slot; or Householder QR.
  void orthonormalize(Lane& L, float* Y, int m, int s, bool householder) {
    if (householder) {
      CUSOLVER_CHECK(cusolverDnSgeqrf(L.solver, m, s, Y, m, L.tau.get(), L.work.get(), int(L.work.size()), L.info.get()));
      CUSOLVER_CHECK(cusolverDnSorgqr(L.solver, m, s, s, Y, m, L.tau.get(), L.work.get(), int(L.work.size()),
                                      L.info.get()));
      return;
    }
    cholesky_qr_r(Y, m, s, kCholeskyShift, L.G.get(), L.gram_parts.get(), L.Gd.get(), L.flag(),
                  L.ticket.get());
    if (s <= kSolveMax) {  // the first pass's solve and the second's R in one launch
      solve_cholesky_qr_r(Y, m, s, kCholeskyShift, L.G.get(), L.gram_parts.get(), L.Gd.get(),
                          L.flag(), L.ticket.get());
      return solve_rows_upper(Y, m, s, L.G.get());
    }
    const float one = 1.f;
    auto trsm = [&] {
      CUBLAS_CHECK(cublasStrsm(L.blas, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N,
                               CUBLAS_DIAG_NON_UNIT, m, s, &one, L.G.get(), s, Y, m));
    };
    trsm();
    cholesky_qr_r(Y, m, s, kCholeskyShift, L.G.get(), L.gram_parts.get(), L.Gd.get(), L.flag(),
                  L.ticket.get());
    trsm();
  }

  optim::Common common_;
  optim::Settings s_;
  uint64_t seed_;
  Device& dev_;
  optim::StateStore store_;
  std::vector<Tensor> tensors_;
  // [0] for every matrix (split: its thread takes the largest's factorization); then the
  // side lanes.
  std::vector<std::unique_ptr<Lane>> lanes_;
  // Split: the lanes' host threads (serve), a queue of factorizations, and the
  // update_many() calls not yet joined, oldest first (a deque: a queued job's Call stays put).
  struct Call {
    int left = 0;  // its matrices not yet done
    std::vector<int> ids;
  };
  struct Job {
    TensorUpdate<T> u;
    Call* call;
    int64_t t;  // the step, for its sketch's seed (begin_step moves t_ on meanwhile)
  };
  std::vector<std::thread> servers_;
  std::deque<Job> queue_;
  std::deque<Call> calls_;
  mutable std::mutex pool_mutex_;  // queue_, calls_, error_, stop_, Tensor::shown_*
  std::condition_variable work_cv_, done_cv_;
  std::exception_ptr error_;  // the first a lane met, for join() to throw
  bool stop_ = false;
  bool split_ = false;   // side lanes: sizes()'s split
  bool joined_ = false;  // join() ran since begin_step
  int largest_ = -1;     // the matrix only lane 0 is sized for (Sizes::largest)
  DeviceBuffer<float> dvec_;
  DeviceBuffer<double> vec_scal_;  // slot-major: slot k of vector i at k * kMaxJobs + i
  DeviceBuffer<double> vec_partials_;
  DeviceBuffer<char> batch_work_;
  size_t batch_work_bytes_ = 0;
  void* batch_work() {
    return batch_work_.get() ? static_cast<void*>(batch_work_.get()) : static_cast<void*>(lanes_[0]->V.get());
  }
  std::vector<Group> groups_;
  std::vector<int> pending_;  // ids of the matrices whose S-RSI waits in finish_deferred()
  DeviceBuffer<float> side_;
  DeviceBuffer<float> kept_;  // split: V_t of every matrix
  DeviceBuffer<double> kept_scal_, kept_partials_;
  DeviceBuffer<unsigned> kept_ticket_;
  DeviceBuffer<double> batch_grams_, batch_eig_;
  DeviceBuffer<int> batch_info_;
  int64_t t_ = 0;
  float lr_ = 0;
};

}  // namespace

template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_adapprox(const json& cfg, const ParamTable& table,
                                                 Device& dev, uint64_t seed) {
  return std::make_unique<Adapprox<T>>(cfg, table, dev, seed);
}
template std::unique_ptr<Optimizer<float>> make_cuda_adapprox<float>(const json&, const ParamTable&, Device&, uint64_t);
template std::unique_ptr<Optimizer<bf16>> make_cuda_adapprox<bf16>(const json&, const ParamTable&, Device&, uint64_t);

size_t adapprox_workspace_bytes(const json& cfg, const ParamTable& table) {
  return sizes(optim::Settings(cfg), table).bytes();
}

}  // namespace gpt2::cuda
