// Whether Adapprox's S-RSIs would gain from running phase by phase over all of d12's
// side matrices at once (each cuBLAS product for all of them in one grouped-batched
// call, CholeskyQR2's Cholesky and triangular solve as one batched kernel each) instead
// of one matrix's chain of ~20 launches after another on a few streams, as
// kernels/adapprox.cu's lanes do. Both run the same S-RSI up to its Gram matrix (sketch
// given, l = 2, CholeskyQR2, G = Om^T Om) on the 49 matrices of d12 but wte, each at
// width s, from one host thread; the tool checks that both give the same Gram matrices
// and prints the median of 20 runs with cudaEvents, ms.
//   build/bench_adapprox_grouped            s = 19 (rank 14 + p, real text) and 33
//   build/bench_adapprox_grouped 45         other widths (up to 64)
// H100 80GB HBM3 (2026-11-27): s 19: chains 8.128 ms, grouped 4.342 (1.87x); s 33: 7.158
// and 4.628 (1.55x); Gram matrices agree to 1.7e-6. 49 chains at bench_adapprox_thin's
// 0.14-0.18 ms each (H200) add up to about the chains' time here: the four streams
// hardly overlap, as one host thread issues ~20 calls per chain. The grouped run is 9
// grouped SGEMMs, 8 batched kernels and the sketch's 49 copies: ~0.2 ms per launch on
// average, where reading the 49 V_t once takes ~0.11 ms at 3 TB/s (which part weighs
// most is not timed yet). So grouping alone would leave two S-RSIs a step at ~8.7 ms,
// against the ~3.4 ms the update may take to stay within 10% of a d12 step.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda_timing.cuh"

namespace {

constexpr int kMaxS = 64;

// cholesky_upper of each matrix's Gram matrix G (s x s, column-major, upper triangle) in
// double, one block each (a thread per row), R written over G in fp32. No failure
// handling: the tool's matrices are well conditioned.
__global__ void batched_cholesky(float* const* Gs, int s) {
  __shared__ double a[kMaxS][kMaxS + 1];
  float* G = Gs[blockIdx.x];
  const int i = threadIdx.x;
  for (int c = 0; c < s; c++)
    if (i < s) a[i][c] = i <= c ? G[i + size_t(c) * s] : G[c + size_t(i) * s];
  __syncthreads();
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

__global__ void fill(float* p, size_t n, unsigned salt, float lo) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    unsigned h = unsigned(i) * 2654435761u ^ salt * 40503u;
    h ^= h >> 13, h *= 0x5bd1e995u, h ^= h >> 15;
    p[i] = lo + float(h & 0xffffff) / float(0x1000000);
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
    const int max_m = 3072;
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
    now(), cudaDeviceSynchronize();
    const auto a = grams();
    grouped(), cudaDeviceSynchronize();
    const auto b = grams();
    double worst = 0;
    for (size_t i = 0; i < a.size(); i++) {
      double diff = 0, norm = 0;
      for (size_t j = 0; j < a[i].size(); j++)
        diff += std::pow(double(a[i][j]) - b[i][j], 2), norm += std::pow(double(a[i][j]), 2);
      worst = std::max(worst, std::sqrt(diff / norm));
    }
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(worst < 1e-3);
    const double t_now = bench::median_ms(now, 20), t_grouped = bench::median_ms(grouped, 20);
    std::printf(
        "s %2d, %zu matrices: chains on %d streams %.3f ms, grouped %.3f ms (%.2fx); Gram "
        "matrices agree to %.1e\n",
        s, mats.size(), lanes, t_now, t_grouped, t_now / t_grouped, worst);
    for (const Matrix& x : mats)
      cudaFree(x.V), cudaFree(x.Om0), cudaFree(x.Om), cudaFree(x.Y), cudaFree(x.G);
    cudaFree(dV), cudaFree(dOm), cudaFree(dY), cudaFree(dG), cudaFree(dRows);
  }
  return 0;
}
