// cholesky_qr.cuh: G = Y^T Y in double over chunks of rows (each chunk's sums in a fixed
// order, the chunks added in order), then the Cholesky of G in one block, or G itself.
#include <algorithm>

#include "cholesky_qr.cuh"
#include "cuda_common.cuh"

namespace gpt2::cuda {
namespace {

constexpr int kTile = 32, kRows = 64, kParts = 64, kThreads = 256;

__host__ __device__ int tiles(int s) { return int(ceil_div(s, kTile) * ceil_div(s, kTile)); }
// Chunks of rows the sums run in: enough blocks for a long Y, within kParts x tiles.
int chunks(int m, int s) {
  return std::max(1, std::min(int(ceil_div(m, kRows)), kParts / tiles(s)));
}

// Shared memory: the factor's order-kCholeskyShared triangle, or the Gram sums' staging
// (two kRows x (kTile + 1) floats) in its front.
constexpr int kSharedDoubles = kCholeskyShared * (kCholeskyShared + 1);
static_assert(2 * kRows * (kTile + 1) * sizeof(float) <= kSharedDoubles * sizeof(double));
using Staging = float[kRows][kTile + 1];

// Y <- Y R^-1 on a staged block of rows, a thread per row, as solve_rows computes it (the
// same bits); then the solved rows back into Y.
__device__ void solve_staged(Staging& xs, float* Y, int m, int s, int r0, int r_end,
                             const float* rs) {
  if (threadIdx.x < kRows)
    for (int c = 0; c < s; c++) {
      float x = xs[threadIdx.x][c];
      for (int p = 0; p < c; p++) x -= xs[threadIdx.x][p] * rs[p + c * kSolveMax];
      xs[threadIdx.x][c] = x / rs[c + c * kSolveMax];
    }
  __syncthreads();
  for (int e = threadIdx.x; e < kRows * s; e += kThreads) {
    const int r = e % kRows, c = e / kRows;
    if (r0 + r < r_end) Y[r0 + r + size_t(c) * m] = xs[r][c];
  }
}

// A block per (chunk of rows, 32 x 32 tile of G): kRows rows of the tile's two column
// ranges at a time in shared memory (one range on the diagonal), each thread 4 entries,
// summed in double. With rs (R in shared memory, s <= kSolveMax: one tile), the rows are
// first solved by R and written back.
__device__ void gram_parts(float* Y, int m, int s, int chunks, const float* rs, double* parts,
                           double* shared) {
  const int T = tiles(s), per_side = int(ceil_div(s, kTile));
  const int tile = int(blockIdx.x) % T, chunk = int(blockIdx.x) / T;
  const int a0 = tile % per_side * kTile, b0 = tile / per_side * kTile;
  Staging& xs = reinterpret_cast<Staging*>(shared)[0];
  Staging& zs = reinterpret_cast<Staging*>(shared)[a0 == b0 ? 0 : 1];
  const int per = int(ceil_div(m, chunks));
  const int r_begin = chunk * per, r_end = min(m, r_begin + per);
  const int i = threadIdx.x % kTile, jc = threadIdx.x / kTile;  // entries (i, jc + 8 q)
  double acc[4] = {};
  for (int r0 = r_begin; r0 < r_end; r0 += kRows) {
    for (int e = threadIdx.x; e < kRows * kTile; e += kThreads) {
      const int r = e % kRows, c = e / kRows, row = r0 + r;
      xs[r][c] = row < r_end && a0 + c < s ? Y[row + size_t(a0 + c) * m] : 0.f;
      if (a0 != b0) zs[r][c] = row < r_end && b0 + c < s ? Y[row + size_t(b0 + c) * m] : 0.f;
    }
    __syncthreads();
    if (rs) solve_staged(xs, Y, m, s, r0, r_end, rs);
    for (int r = 0; r < kRows; r++)
#pragma unroll
      for (int q = 0; q < 4; q++) acc[q] += double(xs[r][i]) * zs[r][jc + 8 * q];
    __syncthreads();
  }
  double* out = parts + (size_t(chunk) * T + tile) * kTile * kTile;
  for (int q = 0; q < 4; q++) out[i + (jc + 8 * q) * kTile] = acc[q];
}

// G's upper triangle (r <= c) at a[r * ld + c]: in shared memory up to kCholeskyShared,
// else in scratch.
struct Upper {
  double* a;
  int ld;
  __device__ Upper(int s, double* scratch, double* shared)
      : a(s <= kCholeskyShared ? shared : scratch),
        ld(s <= kCholeskyShared ? kCholeskyShared + 1 : s) {}
  __device__ double& operator()(int r, int c) const { return a[r * ld + c]; }
};

// The chunks added in order into G's upper triangle.
__device__ void sum_parts(const double* parts, int s, int chunks, const Upper& A) {
  const int T = tiles(s), per_side = int(ceil_div(s, kTile));
  for (int e = threadIdx.x; e < s * s; e += kThreads) {
    const int r = e % s, c = e / s;
    if (r > c) continue;
    const size_t at =
        size_t(r / kTile + c / kTile * per_side) * kTile * kTile + r % kTile + c % kTile * kTile;
    // The chunks' sums in chunk order, loaded 8 at a time: a load per add, one after the
    // other, made this loop most of the kernel's ~24 us (H200, ncu, 64 chunks at s ~ 17).
    const size_t stride = size_t(T) * kTile * kTile;
    double sum = 0;
    int ch = 0;
    for (; ch + 8 <= chunks; ch += 8) {
      double v[8];
#pragma unroll
      for (int u = 0; u < 8; u++) v[u] = __ldcg(parts + size_t(ch + u) * stride + at);
#pragma unroll
      for (int u = 0; u < 8; u++) sum += v[u];
    }
    for (; ch < chunks; ch++) sum += __ldcg(parts + size_t(ch) * stride + at);
    A(r, c) = sum;
  }
  __syncthreads();
}

// G (sum_parts) with its diagonal raised by shift times its largest entry, factored row
// p by row p, the trailing rows a warp each. A pivot that is not positive fails (R = I);
// a NaN pivot does not, as in Eigen's LLT, and reaches the eigenvalues instead.
__device__ void factor(int s, double shift, float* R, double* failed, const Upper& A) {
  __shared__ bool ok;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  if (tid == 0) {
    ok = true;
    double top = 0;
    for (int p = 0; p < s; p++) top = fmax(top, A(p, p));
    for (int p = 0; p < s; p++) A(p, p) += shift * top;
  }
  __syncthreads();
  for (int p = 0; p < s; p++) {
    const double pivot = A(p, p);
    if (pivot <= 0) {
      if (tid == 0) ok = false;
      break;  // every thread read the same pivot
    }
    const double root = sqrt(pivot);
    __syncthreads();
    for (int c = p + 1 + tid; c < s; c += kThreads) A(p, c) /= root;
    __syncthreads();
    if (tid == 0) A(p, p) = root;
    for (int r = p + 1 + warp; r < s; r += kThreads / 32)
      for (int c = r + lane; c < s; c += 32) A(r, c) -= A(p, r) * A(p, c);
    __syncthreads();
  }
  __syncthreads();
  if (!ok && tid == 0) *failed = 1.0;
  for (int e = tid; e < s * s; e += kThreads) {
    const int r = e % s, c = e / s;
    R[e] = ok ? (r <= c ? float(A(r, c)) : 0.f) : (r == c ? 1.f : 0.f);
  }
}

// One launch for the sums and what follows them, done by the block that finishes its sums
// last (arrive) from every block's: R = chol(G + shift) into R (with solve, of Y <- Y R^-1,
// R read before it is overwritten), or with gram, G itself (fp32, both triangles) and the
// two doubles at tail after it (gram_tail).
__global__ void __launch_bounds__(kThreads)
    gram_factor(float* Y, int m, int s, int chunks, double shift, double* parts, float* R,
                bool solve, float* gram, const double* tail, double* scratch, double* failed,
                unsigned* ticket) {
  __shared__ double shared[kSharedDoubles];
  __shared__ float rs[kSolveMax * kSolveMax];
  __shared__ bool last;
  if (solve) {
    for (int e = threadIdx.x; e < s * s; e += kThreads) rs[e % s + e / s * kSolveMax] = R[e];
    __syncthreads();
  }
  gram_parts(Y, m, s, chunks, solve ? rs : nullptr, parts, shared);
  if (!arrive(ticket, gridDim.x, &last)) return;
  const Upper A(s, scratch, shared);
  sum_parts(parts, s, chunks, A);
  if (!gram) return factor(s, shift, R, failed, A);
  for (int e = threadIdx.x; e < s * s; e += kThreads) {
    const int r = e % s, c = e / s;
    gram[e] = float(r <= c ? A(r, c) : A(c, r));
  }
  if (threadIdx.x < 2)
    reinterpret_cast<double*>(gram + gram_tail(s))[threadIdx.x] = tail[threadIdx.x];
}

// Y <- Y R^-1, a thread per row: the row in registers (every index a constant, the
// columns past s masked), R in shared memory; y_c = (x_c - sum_{p<c} y_p R_pc) / R_cc.
__global__ void __launch_bounds__(kThreads) solve_rows(float* Y, int m, int s, const float* R) {
  constexpr int S = kSolveMax;
  __shared__ float r[S * S];  // R_pc at r[p + c * S]
  for (int e = threadIdx.x; e < s * s; e += blockDim.x) r[e % s + e / s * S] = R[e];
  __syncthreads();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= m) return;
  float y[S];
#pragma unroll
  for (int c = 0; c < S; c++) y[c] = c < s ? Y[i + size_t(c) * m] : 0.f;
#pragma unroll
  for (int c = 0; c < S; c++) {
    if (c >= s) break;
    float x = y[c];
#pragma unroll
    for (int p = 0; p < c; p++) x -= y[p] * r[p + c * S];
    y[c] = x / r[c + c * S];
    Y[i + size_t(c) * m] = y[c];
  }
}

// gram_factor over Y's chunks of rows, a block per (chunk, tile of G).
void launch_gram_factor(float* Y, int m, int s, double shift, double* parts, float* R, bool solve,
                        float* gram, const double* tail, double* scratch, double* failed,
                        unsigned* ticket) {
  const int c = chunks(m, s);
  gram_factor<<<unsigned(c * tiles(s)), kThreads, 0, update_stream()>>>(
      Y, m, s, c, shift, parts, R, solve, gram, tail, scratch, failed, ticket);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void solve_rows_upper(float* Y, int m, int s, const float* R) {
  if (s > kSolveMax) fail("internal: solve_rows_upper takes s <= ", kSolveMax, ", got ", s);
  solve_rows<<<unsigned(ceil_div(m, kThreads)), kThreads, 0, update_stream()>>>(Y, m, s, R);
  CUDA_CHECK_LAUNCH();
}

size_t cholesky_qr_parts(int s) { return size_t(std::max(kParts, tiles(s))) * kTile * kTile; }

void cholesky_qr_r(const float* Y, int m, int s, double shift, float* R, double* parts,
                   double* scratch, double* failed, unsigned* ticket) {
  launch_gram_factor(const_cast<float*>(Y), m, s, shift, parts, R, false, nullptr, nullptr, scratch,
                     failed, ticket);
}

void solve_cholesky_qr_r(float* Y, int m, int s, double shift, float* R, double* parts,
                         double* scratch, double* failed, unsigned* ticket) {
  if (s > kSolveMax) fail("internal: solve_cholesky_qr_r takes s <= ", kSolveMax, ", got ", s);
  launch_gram_factor(Y, m, s, shift, parts, R, true, nullptr, nullptr, scratch, failed, ticket);
}

void gram_matrix(const float* Y, int m, int s, float* G, const double* tail, double* parts,
                 double* scratch, unsigned* ticket) {
  launch_gram_factor(const_cast<float*>(Y), m, s, 0, parts, nullptr, false, G, tail, scratch,
                     nullptr, ticket);
}

}  // namespace gpt2::cuda
