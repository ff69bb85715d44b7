// cholesky_qr.cuh: G = Y^T Y in double over chunks of rows (each chunk's sums in a fixed
// order, the chunks added in order), then the Cholesky of G in one block.
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

// A block per (chunk of rows, 32 x 32 tile of G): kRows rows of the tile's two column
// ranges at a time in shared memory, each thread 4 entries, summed in double.
__device__ void gram_parts(const float* Y, int m, int s, int chunks, double* parts, double* shared) {
  Staging& xs = reinterpret_cast<Staging*>(shared)[0];
  Staging& zs = reinterpret_cast<Staging*>(shared)[1];
  const int T = tiles(s), per_side = int(ceil_div(s, kTile));
  const int tile = int(blockIdx.x) % T, chunk = int(blockIdx.x) / T;
  const int a0 = tile % per_side * kTile, b0 = tile / per_side * kTile;
  const int per = int(ceil_div(m, chunks));
  const int r_begin = chunk * per, r_end = min(m, r_begin + per);
  const int i = threadIdx.x % kTile, jc = threadIdx.x / kTile;  // entries (i, jc + 8 q)
  double acc[4] = {};
  for (int r0 = r_begin; r0 < r_end; r0 += kRows) {
    for (int e = threadIdx.x; e < kRows * kTile; e += kThreads) {
      const int r = e % kRows, c = e / kRows, row = r0 + r;
      xs[r][c] = row < r_end && a0 + c < s ? Y[row + size_t(a0 + c) * m] : 0.f;
      zs[r][c] = row < r_end && b0 + c < s ? Y[row + size_t(b0 + c) * m] : 0.f;
    }
    __syncthreads();
    for (int r = 0; r < kRows; r++)
#pragma unroll
      for (int q = 0; q < 4; q++) acc[q] += double(xs[r][i]) * zs[r][jc + 8 * q];
    __syncthreads();
  }
  double* out = parts + (size_t(chunk) * T + tile) * kTile * kTile;
  for (int q = 0; q < 4; q++) out[i + (jc + 8 * q) * kTile] = acc[q];
}

// The chunks added in order into G's upper triangle (shared memory up to
// kCholeskyShared, else scratch), the diagonal raised by shift times its largest entry,
// then factored row p by row p, the trailing rows a warp each. A pivot that is not
// positive fails (R = I); a NaN pivot does not, as in Eigen's LLT, and reaches the
// eigenvalues instead.
__device__ void factor(const double* parts, int s, int chunks, double shift, float* R,
                       double* scratch, double* failed, double* shared) {
  __shared__ bool ok;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const bool in_shared = s <= kCholeskyShared;
  double* a = in_shared ? shared : scratch;
  const int ld = in_shared ? kCholeskyShared + 1 : s;
  auto A = [&](int r, int c) -> double& { return a[r * ld + c]; };  // upper: r <= c
  const int T = tiles(s), per_side = int(ceil_div(s, kTile));
  for (int e = tid; e < s * s; e += kThreads) {
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

// One launch for both: the block that finishes its sums last (arrive) factors G from
// every block's sums.
__global__ void __launch_bounds__(kThreads)
    gram_factor(const float* Y, int m, int s, int chunks, double shift, double* parts, float* R,
                double* scratch, double* failed, unsigned* ticket) {
  __shared__ double shared[kSharedDoubles];
  __shared__ bool last;
  gram_parts(Y, m, s, chunks, parts, shared);
  if (arrive(ticket, gridDim.x, &last)) factor(parts, s, chunks, shift, R, scratch, failed, shared);
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

}  // namespace

void solve_rows_upper(float* Y, int m, int s, const float* R) {
  if (s > kSolveMax) fail("internal: solve_rows_upper takes s <= ", kSolveMax, ", got ", s);
  solve_rows<<<unsigned(ceil_div(m, kThreads)), kThreads, 0, update_stream()>>>(Y, m, s, R);
  CUDA_CHECK_LAUNCH();
}

size_t cholesky_qr_parts(int s) { return size_t(std::max(kParts, tiles(s))) * kTile * kTile; }

void cholesky_qr_r(const float* Y, int m, int s, double shift, float* R, double* parts,
                   double* scratch, double* failed, unsigned* ticket) {
  const int c = chunks(m, s);
  gram_factor<<<unsigned(c * tiles(s)), kThreads, 0, update_stream()>>>(Y, m, s, c, shift, parts, R,
                                                                        scratch, failed, ticket);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gpt2::cuda
