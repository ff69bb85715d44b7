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

// A block per (chunk of rows, 32 x 32 tile of G): kRows rows of the tile's two column
// ranges at a time in shared memory, each thread 4 entries, summed in double.
__global__ void __launch_bounds__(kThreads)
    gram_parts(const float* Y, int m, int s, int chunks, double* parts) {
  __shared__ float xs[kRows][kTile + 1], zs[kRows][kTile + 1];
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
__global__ void __launch_bounds__(kThreads)
    factor(const double* parts, int s, int chunks, double shift, float* R, double* scratch,
           double* failed) {
  __shared__ double shared[kCholeskyShared * (kCholeskyShared + 1)];
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
    double sum = 0;
    for (int ch = 0; ch < chunks; ch++) sum += parts[size_t(ch) * T * kTile * kTile + at];
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

}  // namespace

size_t cholesky_qr_parts(int s) { return size_t(std::max(kParts, tiles(s))) * kTile * kTile; }

void cholesky_qr_r(const float* Y, int m, int s, double shift, float* R, double* parts,
                   double* scratch, double* failed) {
  const int c = chunks(m, s);
  gram_parts<<<unsigned(c * tiles(s)), kThreads, 0, update_stream()>>>(Y, m, s, c, parts);
  CUDA_CHECK_LAUNCH();
  factor<<<1, kThreads, 0, update_stream()>>>(parts, s, c, shift, R, scratch, failed);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gpt2::cuda
