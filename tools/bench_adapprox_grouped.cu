// Whether Adapprox's S-RSIs would gain from running phase by phase over all of d12's
// side matrices at once (each cuBLAS product for all of them in one grouped-batched
// call, CholeskyQR2's Cholesky and triangular solve as one batched kernel each) instead
// of one matrix's chain of ~20 launches after another on a few streams, as
// kernels/adapprox.cu's lanes do. Both run the same S-RSI up to its Gram matrix (sketch
// given, l = 2, CholeskyQR2, G = Om^T Om) on the 49 matrices of d12 but wte, each at
// width s, from one host thread; the tool checks that both give the same Gram matrices
// and prints the median of 20 runs with cudaEvents, ms. Then the grouped run's parts
// alone, and (s = 19, 33) the same S-RSI with hand-written products, which read each V_t
// once per product: V Om a warp per 4 rows, V^T Y and the Gram matrices as split sums
// over chunks of rows added in order, the Cholesky in the Gram matrix's second stage.
// Last, that S-RSI on a bf16 gradient's square, read from the gradient and squared on
// the fly against stored in fp32 (same bits): what never storing V_t's g^2 part saves
// (V_t = beta2 Q U^T + (1 - beta2) g^2, and V_t Om = beta2 Q (U^T Om) + (1 - beta2) g^2 Om).
//   build/bench_adapprox_grouped            s = 19 (rank 14 + p, real text) and 33
//   build/bench_adapprox_grouped 45         other widths (up to 64)
// H100 80GB HBM3 (2026-11-28, `bench_adapprox_grouped 19 33`), ms:
//   s 19: chains on 4 streams 7.972, grouped 4.408 (1.81x), hand-written 1.727 (V Om
//         0.341, V^T Y 0.283, a QR pass 0.060, Gram(Om) 0.029); from bf16 g squared on
//         the fly 1.823 against 1.732 from the same square stored in fp32.
//   s 33: chains 7.587, grouped 4.645, hand-written 7.781, of which V Om 2.997 on fp32
//         V_t against 0.699 on bf16 g (both without spills, 168 and 209 registers: not
//         explained yet); from bf16 g 3.310 in all.
// Gram matrices within 1.7e-6 of one another every way. Earlier (2026-11-27, same card)
// chains 8.128 / 7.158 and grouped 4.342 / 4.628. So at the widths real text settles at,
// hand-written products over all matrices at once take 1.7 ms for one S-RSI (l = 2) of
// each of the 49 matrices, what a step at steady ranks runs, 4.6x less than the lanes' chains
// and 2.6x less than cuBLAS's grouped calls (~0.2 ms per launch on average, where reading the 49
// V_t once takes ~0.11 ms at 3 TB/s): the way to Adapprox's ~3.4 ms budget (10% of a d12 step) is
// a phase-by-phase update of every narrow matrix with kernels like these.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <type_traits>
#include <vector>

#include "cuda_timing.cuh"

namespace {

constexpr int kMaxS = 64;

// cholesky_upper in double on a (s x s, upper triangle: a[i][c] for i <= c) in place, a
// thread per row. No failure handling: the tool's matrices are well conditioned.
__device__ void factor_upper(double (*a)[kMaxS + 1], int s) {
  const int i = threadIdx.x;
  for (int j = 0; j < s; j++) {
    const double r = sqrt(a[j][j]);
    __syncthreads();
    if (i > j && i < s) a[j][i] /= r;
    __syncthreads();
    if (i == j) a[j][j] = r;
    if (i > j && i < s)
      for (int c = i; c < s; c++) a[i][c] -= a[j][i] * a[j][c];
    __syncthreads();
  }
}

// Each matrix's Gram matrix G (s x s, column-major, upper triangle) factored, one block
// each, R written over G in fp32 (zero below the diagonal).
__global__ void batched_cholesky(float* const* Gs, int s) {
  __shared__ double a[kMaxS][kMaxS + 1];
  float* G = Gs[blockIdx.x];
  const int i = threadIdx.x;
  for (int c = i; c < s; c++) a[i][c] = G[i + size_t(c) * s];
  __syncthreads();
  factor_upper(a, s);
  for (int c = 0; c < s; c++)
    if (i < s) G[i + size_t(c) * s] = i <= c ? float(a[i][c]) : 0.f;
}

// Y <- Y R^-1 for each matrix (Y: rows[b] x s, column-major; R upper triangular): a
// thread per row of Y, forward substitution along it with R in shared memory.
__global__ void batched_solve(float* const* Ys, const float* const* Rs, const int* rows, int s) {
  __shared__ float R[kMaxS * kMaxS];
  const int b = blockIdx.y, m = rows[b];
  if (int(blockIdx.x) * blockDim.x >= m) return;  // the whole block is past this matrix
  for (int i = threadIdx.x; i < s * s; i += blockDim.x) R[i] = Rs[b][i];
  __syncthreads();
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= m) return;
  float* Y = Ys[b];
  float x[kMaxS];
  for (int c = 0; c < s; c++) {
    float acc = Y[r + size_t(c) * m];
    for (int j = 0; j < c; j++) acc -= x[j] * R[j + c * s];
    x[c] = acc / R[c + c * s];
    Y[r + size_t(c) * m] = x[c];
  }
}

// Y = V Om for each matrix, hand-written: a warp per 4 rows of V, its lanes along the
// row (coalesced), S sums per row and lane, then a warp reduction. Only the read of V
// needs DRAM; Om (n x S) stays in L1/L2 across a block's warps.
// What the products read of V: V_t itself, or (for the part of V_t that is a fresh g^2)
// a bf16 gradient squared as it is read, which halves the bytes.
__device__ __forceinline__ float second(float v) { return v; }
__device__ __forceinline__ float second(__nv_bfloat16 g) {
  const float x = __bfloat162float(g);
  return x * x;
}

template <int S, class E>
__global__ void skinny_v_om(const E* const* Vs, const float* const* Oms, float* const* Ys,
                            const int* rows, const int* cols) {
  const int b = blockIdx.y, m = rows[b], n = cols[b], lane = threadIdx.x % 32;
  const int r0 = (blockIdx.x * blockDim.x + threadIdx.x) / 32 * 4;
  if (r0 >= m) return;
  const E* V = Vs[b];
  const float* Om = Oms[b];
  float acc[4][S] = {};
  for (int j = lane; j < n; j += 32) {
    float v[4];
#pragma unroll
    for (int r = 0; r < 4; r++) v[r] = r0 + r < m ? second(V[size_t(r0 + r) * n + j]) : 0.f;
#pragma unroll
    for (int c = 0; c < S; c++) {
      const float o = Om[j + size_t(c) * n];
#pragma unroll
      for (int r = 0; r < 4; r++) acc[r][c] += v[r] * o;
    }
  }
#pragma unroll
  for (int r = 0; r < 4; r++)
#pragma unroll
    for (int c = 0; c < S; c++) {
      float x = acc[r][c];
      for (int off = 16; off > 0; off /= 2) x += __shfl_down_sync(0xffffffffu, x, off);
      if (lane == 0 && r0 + r < m) Ys[b][r0 + r + size_t(c) * m] = x;
    }
}

// Rows of V (or of a thin X) per block in the split sums below: each block writes its
// partial sums, and a second kernel adds a matrix's chunks in order, so the result does
// not depend on the GPU's schedule.
constexpr int kChunk = 128;

// Om = V^T Y, first stage: a block per (128 columns of V, kChunk rows, matrix), a thread
// per column j summing V[i][j] Y[i][c] over the chunk's rows (V read along its rows,
// coalesced; the chunk of Y in shared memory). Partials: chunk k of matrix b at
// parts[b] + k n S, laid out as Om.
template <int S, class E>
__global__ void skinny_vt_y_part(const E* const* Vs, const float* const* Ys, float* const* parts,
                                 const int* rows, const int* cols) {
  __shared__ float y[kChunk][S];
  const int b = blockIdx.z, m = rows[b], n = cols[b], i0 = blockIdx.y * kChunk;
  if (i0 >= m || int(blockIdx.x * blockDim.x) >= n) return;  // the whole block is outside
  const int len = min(kChunk, m - i0);
  for (int e = threadIdx.x; e < len * S; e += blockDim.x)
    y[e % len][e / len] = Ys[b][i0 + e % len + size_t(e / len) * m];
  __syncthreads();
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const E* V = Vs[b] + size_t(i0) * n + j;
  float acc[S] = {};
  for (int i = 0; i < len; i++) {
    const float v = second(V[size_t(i) * n]);
#pragma unroll
    for (int c = 0; c < S; c++) acc[c] += v * y[i][c];
  }
  float* out = parts[b] + size_t(blockIdx.y) * n * S;
#pragma unroll
  for (int c = 0; c < S; c++) out[j + size_t(c) * n] = acc[c];
}

// Second stage: out[b] (size[b] floats) = the sum of its chunks' partials, in order.
__global__ void sum_parts(const float* const* parts, float* const* outs, const int* rows,
                          const int* size) {
  const int b = blockIdx.y, chunks = (rows[b] + kChunk - 1) / kChunk;
  const size_t total = size_t(size[b]);
  for (size_t e = size_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += size_t(gridDim.x) * blockDim.x) {
    float acc = 0.f;
    for (int k = 0; k < chunks; k++) acc += parts[b][size_t(k) * total + e];
    outs[b][e] = acc;
  }
}

// Gram matrix X^T X of each thin X (rows[b] x S, column-major), first stage: a block
// per (kChunk rows, matrix) with the chunk in shared memory, a thread per entry of the
// upper triangle. Partials: chunk k at parts[b] + k S S.
template <int S>
__global__ void gram_part(const float* const* Xs, float* const* parts, const int* rows) {
  __shared__ float x[kChunk][S + 1];
  const int b = blockIdx.y, m = rows[b], i0 = blockIdx.x * kChunk;
  if (i0 >= m) return;
  const int len = min(kChunk, m - i0);
  for (int e = threadIdx.x; e < len * S; e += blockDim.x)
    x[e % len][e / len] = Xs[b][i0 + e % len + size_t(e / len) * m];
  __syncthreads();
  float* out = parts[b] + size_t(blockIdx.x) * S * S;
  for (int q = threadIdx.x; q < S * S; q += blockDim.x) {
    const int r = q % S, c = q / S;
    if (r > c) continue;
    float acc = 0.f;
    for (int i = 0; i < len; i++) acc += x[i][r] * x[i][c];
    out[q] = acc;
  }
}

// Second stage, a block per matrix: the chunks summed in order, then either R (the
// Cholesky factor, zero below the diagonal) or the Gram matrix itself (both triangles,
// as cuBLAS writes it) into G.
template <int S>
__global__ void gram_finish(const float* const* parts, float* const* Gs, const int* rows,
                            bool factor) {
  __shared__ double a[kMaxS][kMaxS + 1];
  const int b = blockIdx.x, chunks = (rows[b] + kChunk - 1) / kChunk;
  for (int q = threadIdx.x; q < S * S; q += blockDim.x) {
    const int r = q % S, c = q / S;
    if (r > c) continue;
    float acc = 0.f;
    for (int k = 0; k < chunks; k++) acc += parts[b][size_t(k) * S * S + q];
    a[r][c] = acc;
  }
  __syncthreads();
  if (factor) factor_upper(a, S);
  float* G = Gs[b];
  for (int q = threadIdx.x; q < S * S; q += blockDim.x) {
    const int r = q % S, c = q / S;
    G[q] = r <= c ? float(a[r][c]) : factor ? 0.f : float(a[c][r]);
  }
}

__global__ void fill(float* p, size_t n, unsigned salt, float lo) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    unsigned h = unsigned(i) * 2654435761u ^ salt * 40503u;
    h ^= h >> 13, h *= 0x5bd1e995u, h ^= h >> 15;
    p[i] = lo + float(h & 0xffffff) / float(0x1000000);
  }
}

// A bf16 "gradient" g = bf16(V - 0.6) and its square in fp32.
__global__ void to_gradient(__nv_bfloat16* g, float* sq, const float* V, size_t n) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    g[i] = __float2bfloat16(V[i] - 0.6f);
    const float x = __bfloat162float(g[i]);
    sq[i] = x * x;
  }
}

struct Matrix {
  int m, n;  // V is row-major m x n (column-major n x m, ld n), as in adapprox.cu
  float *V = nullptr, *Om0 = nullptr, *Om = nullptr, *Y = nullptr, *G = nullptr;
};

// Device copies of per-matrix pointers, for the batched calls.
template <class T>
T** pointers(const std::vector<T*>& host) {
  T** d = bench::device<T*>(host.size());
  cudaMemcpy(d, host.data(), host.size() * sizeof(T*), cudaMemcpyHostToDevice);
  return d;
}

// One grouped-batched SGEMM over all matrices, one group per shape (same m, n) of the
// same transposes; Cs[i] = op(As[i]) Bs[i].
struct Grouped {
  cublasHandle_t blas;
  std::vector<int> size;  // matrices per group, in Matrix order
  void operator()(cublasOperation_t ta, const std::vector<int>& M, const std::vector<int>& N,
                  const std::vector<int>& K, const float* const* A, const std::vector<int>& lda,
                  const float* const* B, const std::vector<int>& ldb, float* const* C,
                  const std::vector<int>& ldc) const {
    const int g = int(size.size());
    const std::vector<cublasOperation_t> opa(g, ta), opb(g, CUBLAS_OP_N);
    const std::vector<float> one(g, 1.f), zero(g, 0.f);
    CHECK(cublasSgemmGroupedBatched(blas, opa.data(), opb.data(), M.data(), N.data(), K.data(),
                                    one.data(), A, lda.data(), B, ldb.data(), zero.data(), C,
                                    ldc.data(), g, size.data()) == CUBLAS_STATUS_SUCCESS);
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> widths;
  for (int i = 1; i < argc; i++) widths.push_back(std::atoi(argv[i]));
  if (widths.empty()) widths = {19, 33};
  // d12's matrices but wte, grouped by shape: qkv, attention projection, MLP up, MLP
  // down (12 each), wpe.
  const std::vector<std::pair<int, int>> shapes = {
      {2304, 768}, {768, 768}, {3072, 768}, {768, 3072}, {1024, 768}};
  const std::vector<int> counts = {12, 12, 12, 12, 1};
  cublasHandle_t blas;
  CHECK(cublasCreate(&blas) == CUBLAS_STATUS_SUCCESS);
  const int lanes = 4;
  std::vector<cudaStream_t> streams(lanes);
  std::vector<cublasHandle_t> handles(lanes);
  for (int l = 0; l < lanes; l++) {
    CHECK(cudaStreamCreateWithFlags(&streams[l], cudaStreamNonBlocking) == cudaSuccess);
    CHECK(cublasCreate(&handles[l]) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasSetStream(handles[l], streams[l]) == CUBLAS_STATUS_SUCCESS);
  }
  cudaEvent_t fork, joined[lanes];
  cudaEventCreateWithFlags(&fork, cudaEventDisableTiming);
  for (cudaEvent_t& e : joined) cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
  const float one = 1.f, zero = 0.f;
  for (int s : widths) {
    CHECK(s >= 1 && s <= kMaxS);
    std::vector<Matrix> mats;
    Grouped gemm{blas, counts};
    std::vector<int> Mm, Mn, Ss, Ms;  // per group: m, n, s; per matrix: m
    for (size_t g = 0; g < shapes.size(); g++) {
      const auto [m, n] = shapes[g];
      Mm.push_back(m), Mn.push_back(n), Ss.push_back(s);
      for (int c = 0; c < counts[g]; c++) {
        auto buf = [](size_t k) { return bench::device<float>(k); };
        Matrix x{m, n};
        x.V = buf(size_t(m) * n), x.Om0 = buf(size_t(n) * s), x.Om = buf(size_t(n) * s);
        x.Y = buf(size_t(m) * s), x.G = buf(size_t(s) * s);
        fill<<<1024, 256>>>(x.V, size_t(m) * n, unsigned(mats.size()) + 1, 0.1f);
        fill<<<256, 256>>>(x.Om0, size_t(n) * s, unsigned(mats.size()) + 1000, -0.5f);
        mats.push_back(x), Ms.push_back(m);
      }
    }
    std::vector<float*> V, Om, Y, G;
    for (const Matrix& x : mats)
      V.push_back(x.V), Om.push_back(x.Om), Y.push_back(x.Y), G.push_back(x.G);
    float **dV = pointers(V), **dOm = pointers(Om), **dY = pointers(Y), **dG = pointers(G);
    int* dRows = bench::device<int>(Ms.size());
    cudaMemcpy(dRows, Ms.data(), Ms.size() * sizeof(int), cudaMemcpyHostToDevice);
    int max_m = 0;  // the longest side of any matrix: what the grids below cover
    for (const Matrix& x : mats) max_m = std::max({max_m, x.m, x.n});
    auto restart = [&](cudaStream_t st) {  // every run starts from the same sketch
      for (const Matrix& x : mats)
        cudaMemcpyAsync(x.Om, x.Om0, size_t(x.n) * s * sizeof(float), cudaMemcpyDeviceToDevice, st);
    };
    // Now: each matrix's chain in turn, the matrices dealt round the lanes' streams.
    auto chain = [&](const Matrix& x, cublasHandle_t h, cudaStream_t st) {
      const int m = x.m, n = x.n;
      for (int it = 0; it < 2; it++) {
        CHECK(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, m, s, n, &one, x.V, n, x.Om, n, &zero, x.Y,
                          m) == 0);
        for (int pass = 0; pass < 2; pass++) {
          CHECK(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, s, s, m, &one, x.Y, m, x.Y, m, &zero, x.G,
                            s) == 0);
          float* const* one_g = dG + (&x - mats.data());
          batched_cholesky<<<1, (s + 31) / 32 * 32, 0, st>>>(one_g, s);
          CHECK(cublasStrsm(h, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N,
                            CUBLAS_DIAG_NON_UNIT, m, s, &one, x.G, s, x.Y, m) == 0);
        }
        CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, s, m, &one, x.V, n, x.Y, m, &zero, x.Om,
                          n) == 0);
      }
      CHECK(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, s, s, n, &one, x.Om, n, x.Om, n, &zero, x.G,
                        s) == 0);
    };
    auto now = [&] {
      restart(0);
      cudaEventRecord(fork, 0);
      for (int l = 0; l < lanes; l++) cudaStreamWaitEvent(streams[l], fork, 0);
      for (size_t i = 0; i < mats.size(); i++)
        chain(mats[i], handles[i % lanes], streams[i % lanes]);
      for (int l = 0; l < lanes; l++)
        cudaEventRecord(joined[l], streams[l]), cudaStreamWaitEvent(0, joined[l], 0);
    };
    // Phase by phase: each product for all matrices in one grouped call.
    const std::vector<int> ones_s(shapes.size(), s);
    auto qr2 = [&] {
      for (int pass = 0; pass < 2; pass++) {
        gemm(CUBLAS_OP_T, Ss, Ss, Mm, dY, Mm, dY, Mm, dG, Ss);
        batched_cholesky<<<unsigned(mats.size()), (s + 31) / 32 * 32>>>(dG, s);
        batched_solve<<<dim3((max_m + 127) / 128, unsigned(mats.size())), 128>>>(dY, dG, dRows, s);
      }
    };
    auto grouped = [&] {
      restart(0);
      for (int it = 0; it < 2; it++) {
        gemm(CUBLAS_OP_T, Mm, ones_s, Mn, dV, Mn, dOm, Mn, dY, Mm);
        qr2();
        gemm(CUBLAS_OP_N, Mn, ones_s, Mm, dV, Mn, dY, Mm, dOm, Mn);
      }
      gemm(CUBLAS_OP_T, Ss, Ss, Mn, dOm, Mn, dOm, Mn, dG, Ss);
    };
    // Same Gram matrices both ways, to fp32 rounding of different summation orders.
    auto grams = [&] {
      std::vector<std::vector<float>> out;
      for (const Matrix& x : mats) {
        out.emplace_back(size_t(s) * s);
        cudaMemcpy(out.back().data(), x.G, out.back().size() * sizeof(float),
                   cudaMemcpyDeviceToHost);
      }
      return out;
    };
    // The largest relative Frobenius difference of any matrix's Gram matrix from ref's.
    using Grams = std::vector<std::vector<float>>;
    auto worst_rel = [](const Grams& x, const Grams& ref) {
      double worst = 0;
      for (size_t i = 0; i < x.size(); i++) {
        double diff = 0, norm = 0;
        for (size_t j = 0; j < x[i].size(); j++)
          diff += std::pow(double(x[i][j]) - ref[i][j], 2), norm += std::pow(double(ref[i][j]), 2);
        worst = std::max(worst, std::sqrt(diff / norm));
      }
      return worst;
    };
    auto part = [&](const char* name, const std::function<void()>& f) {
      std::printf("  %s %.3f", name, bench::median_ms(f, 20));
    };
    // The same S-RSI with every product hand-written (kernels above), each stage one
    // launch for all matrices: V Om, the split sums of V^T Y and of the Gram matrices,
    // the Cholesky in the Gram matrix's second stage. Compiled for a few widths only.
    std::vector<int> Ns, OmSize;
    for (const Matrix& x : mats) Ns.push_back(x.n), OmSize.push_back(x.n * s);
    int *dCols = bench::device<int>(Ns.size()), *dOmSize = bench::device<int>(Ns.size());
    cudaMemcpy(dCols, Ns.data(), Ns.size() * sizeof(int), cudaMemcpyHostToDevice);
    cudaMemcpy(dOmSize, OmSize.data(), Ns.size() * sizeof(int), cudaMemcpyHostToDevice);
    std::vector<float*> vt_parts, gram_parts;
    const auto chunks = [](int rows) { return (rows + kChunk - 1) / kChunk; };
    for (const Matrix& x : mats) {
      vt_parts.push_back(bench::device<float>(size_t(chunks(x.m)) * x.n * s));
      gram_parts.push_back(bench::device<float>(size_t(chunks(std::max(x.m, x.n))) * s * s));
    }
    float **dVtParts = pointers(vt_parts), **dGramParts = pointers(gram_parts);
    std::vector<__nv_bfloat16*> grads;
    std::vector<float*> squares;
    for (const Matrix& x : mats) {
      const size_t n = size_t(x.m) * x.n;
      grads.push_back(bench::device<__nv_bfloat16>(n)), squares.push_back(bench::device<float>(n));
      to_gradient<<<1024, 256>>>(grads.back(), squares.back(), x.V, n);
    }
    __nv_bfloat16** dGrad = pointers(grads);
    float** dSq = pointers(squares);
    const unsigned count = unsigned(mats.size());
    auto hand_written = [&](auto width, const std::vector<std::vector<float>>& grouped_grams) {
      constexpr int S = decltype(width)::value;
      auto v_om_of = [&](auto src) {
        using E = std::remove_const_t<std::remove_pointer_t<std::remove_pointer_t<decltype(src)>>>;
        skinny_v_om<S, E>
            <<<dim3(((max_m + 3) / 4 * 32 + 127) / 128, count), 128>>>(src, dOm, dY, dRows, dCols);
      };
      auto vt_y_of = [&](auto src) {
        using E = std::remove_const_t<std::remove_pointer_t<std::remove_pointer_t<decltype(src)>>>;
        skinny_vt_y_part<S, E><<<dim3((max_m + 127) / 128, chunks(max_m), count), 128>>>(
            src, dY, dVtParts, dRows, dCols);
        sum_parts<<<dim3(64, count), 256>>>(dVtParts, dOm, dRows, dOmSize);
      };
      auto v_om = [&] { v_om_of(dV); };
      auto vt_y = [&] { vt_y_of(dV); };
      auto gram = [&](float** X, const int* rows, bool factor) {
        gram_part<S><<<dim3(chunks(max_m), count), 256>>>(X, dGramParts, rows);
        gram_finish<S><<<count, 64>>>(dGramParts, dG, rows, factor);
      };
      auto qr_pass = [&] {
        gram(dY, dRows, true);
        batched_solve<<<dim3((max_m + 127) / 128, count), 128>>>(dY, dG, dRows, s);
      };
      auto srsi_of = [&](auto src) {
        restart(0);
        for (int it = 0; it < 2; it++) v_om_of(src), qr_pass(), qr_pass(), vt_y_of(src);
        gram(dOm, dCols, false);
      };
      auto srsi = [&] { srsi_of(dV); };
      srsi(), cudaDeviceSynchronize();
      const double worst_hand = worst_rel(grams(), grouped_grams);
      std::printf("  hand-written %.3f ms (%s; Gram matrices within %.1e of grouped):",
                  bench::median_ms(srsi, 20), cudaGetErrorString(cudaGetLastError()), worst_hand);
      part("V Om", v_om), part("V^T Y", vt_y), part("QR pass", qr_pass);
      part("Gram(Om)", [&] { gram(dOm, dCols, false); });
      std::printf(" ms\n");
      // On a bf16 gradient's square read as it goes, against the same square stored in
      // fp32 (exact: a bf16's square fits fp32's mantissa), so the same bits.
      srsi_of(dSq), cudaDeviceSynchronize();
      const auto stored = grams();
      srsi_of(dGrad), cudaDeviceSynchronize();
      std::printf(
          "  from g^2 stored (fp32) %.3f ms, from bf16 g squared on the fly %.3f ms "
          "(%s; same Gram matrices: %s); V Om %.3f / %.3f, V^T Y %.3f / %.3f\n",
          bench::median_ms([&] { srsi_of(dSq); }, 20),
          bench::median_ms([&] { srsi_of(dGrad); }, 20), cudaGetErrorString(cudaGetLastError()),
          grams() == stored ? "yes" : "NO", bench::median_ms([&] { v_om_of(dSq); }, 20),
          bench::median_ms([&] { v_om_of(dGrad); }, 20),
          bench::median_ms([&] { vt_y_of(dSq); }, 20),
          bench::median_ms([&] { vt_y_of(dGrad); }, 20));
    };
    now(), cudaDeviceSynchronize();
    const auto a = grams();
    grouped(), cudaDeviceSynchronize();
    const auto b = grams();
    const double worst = worst_rel(b, a);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(worst < 1e-3);
    const double t_now = bench::median_ms(now, 20), t_grouped = bench::median_ms(grouped, 20);
    std::printf(
        "s %2d, %zu matrices: chains on %d streams %.3f ms, grouped %.3f ms (%.2fx); Gram "
        "matrices agree to %.1e\n",
        s, mats.size(), lanes, t_now, t_grouped, t_now / t_grouped, worst);
    // The grouped run's parts, each alone (it runs V Om, V^T Y twice each, the Gram(Y),
    // Cholesky and solve 4 times each, Gram(Om) once).
    part("V Om", [&] { gemm(CUBLAS_OP_T, Mm, ones_s, Mn, dV, Mn, dOm, Mn, dY, Mm); });
    part("V^T Y", [&] { gemm(CUBLAS_OP_N, Mn, ones_s, Mm, dV, Mn, dY, Mm, dOm, Mn); });
    part("Gram(Y)", [&] { gemm(CUBLAS_OP_T, Ss, Ss, Mm, dY, Mm, dY, Mm, dG, Ss); });
    part("Cholesky",
         [&] { batched_cholesky<<<unsigned(mats.size()), (s + 31) / 32 * 32>>>(dG, s); });
    part("solve", [&] {
      batched_solve<<<dim3((max_m + 127) / 128, unsigned(mats.size())), 128>>>(dY, dG, dRows, s);
    });
    part("Gram(Om)", [&] { gemm(CUBLAS_OP_T, Ss, Ss, Mn, dOm, Mn, dOm, Mn, dG, Ss); });
    std::printf(" ms\n");
    if (s == 19) hand_written(std::integral_constant<int, 19>(), b);
    if (s == 33) hand_written(std::integral_constant<int, 33>(), b);
    for (float* x : vt_parts) cudaFree(x);
    for (float* x : gram_parts) cudaFree(x);
    cudaFree(dVtParts), cudaFree(dGramParts), cudaFree(dCols), cudaFree(dOmSize);
    for (__nv_bfloat16* x : grads) cudaFree(x);
    for (float* x : squares) cudaFree(x);
    cudaFree(dGrad), cudaFree(dSq);
    for (const Matrix& x : mats)
      cudaFree(x.V), cudaFree(x.Om0), cudaFree(x.Om), cudaFree(x.Y), cudaFree(x.G);
    cudaFree(dV), cudaFree(dOm), cudaFree(dY), cudaFree(dG), cudaFree(dRows);
  }
  return 0;
}
