// Times the thin products of one Adapprox S-RSI (kernels/adapprox.cu) at the small
// widths real text settles at, per d12 weight shape, against two alternatives:
// split-K (the long dimension cut into c chunks, one strided-batched SGEMM, the chunks
// summed in a fixed order, so the result does not depend on the GPU's schedule) for the
// products with a long inner dimension, and Y R^-1 as an SGEMM by an explicit inverse
// instead of cuBLAS's trsm. Then one S-RSI's chain of them (l = 2, CholeskyQR2, the
// final Gram matrix) both ways. Median of 50 runs with cudaEvents, ms.
//   build/bench_adapprox_thin            s = 21 (rank 16 + p) and 33 (one growth wider)
//   build/bench_adapprox_thin 13 45      other widths
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "cuda_timing.cuh"

namespace {

double median_ms(const std::function<void()>& f) { return bench::median_ms(f, 50); }
float* device(size_t n) { return bench::device<float>(n); }

__global__ void sum_chunks(float* out, const float* parts, size_t n, int c) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    float acc = parts[i];
    for (int j = 1; j < c; j++) acc += parts[size_t(j) * n + i];
    out[i] = acc;
  }
}

struct Gemm {
  cublasHandle_t blas;
  float* parts;
  // C (M x N, ld M) = op(A) B, B K x N; with c > 1, K goes in c chunks: advancing k by
  // one moves A by a_step (1 for op T, lda for op N) and B by one row.
  void operator()(cublasOperation_t op, int M, int N, int K, const float* A, int lda,
                  long long a_step, const float* B, int ldb, float* C, int c) const {
    const float one = 1.f, zero = 0.f;
    if (c == 1) {
      CHECK(cublasSgemm(blas, op, CUBLAS_OP_N, M, N, K, &one, A, lda, B, ldb, &zero, C, M) == 0);
      return;
    }
    const int kc = (K + c - 1) / c, full = K / kc, tail = K - full * kc;
    const long long mn = (long long)M * N;
    CHECK(cublasSgemmStridedBatched(blas, op, CUBLAS_OP_N, M, N, kc, &one, A, lda, a_step * kc, B,
                                    ldb, kc, &zero, parts, M, mn, full) == 0);
    if (tail)
      CHECK(cublasSgemm(blas, op, CUBLAS_OP_N, M, N, tail, &one, A + a_step * full * kc, lda,
                        B + full * kc, ldb, &zero, parts + mn * full, M) == 0);
    const int chunks = full + (tail ? 1 : 0);
    sum_chunks<<<int(std::min<long long>((mn + 255) / 256, 1024)), 256>>>(C, parts, size_t(mn),
                                                                          chunks);
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> widths;
  for (int i = 1; i < argc; i++) widths.push_back(std::atoi(argv[i]));
  if (widths.empty()) widths = {21, 33};
  cublasHandle_t blas;
  CHECK(cublasCreate(&blas) == CUBLAS_STATUS_SUCCESS);
  const float one = 1.f, zero = 0.f;
  const std::vector<int> cs = {4, 16, 64};
  std::printf("columns: cuBLAS alone, then split-K with c = 4 / 16 / 64 chunks\n");
  for (int s : widths) {
    const Gemm gemm{blas, device(size_t(cs.back()) * 50304 * s)};  // the widest split's partials
    float *G = device(size_t(s) * s), *R = device(size_t(s) * s);
    {  // a well-conditioned upper triangle: trsm and its inverse do the same work on any R
      std::vector<float> h(size_t(s) * s, 0.f);
      for (int j = 0; j < s; j++)
        for (int i = 0; i <= j; i++) h[i + size_t(j) * s] = i == j ? 2.f : 0.01f;
      cudaMemcpy(R, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice);
    }
    for (const auto& shape : std::vector<std::pair<int, int>>{
             {768, 2304}, {768, 768}, {768, 3072}, {3072, 768}, {50304, 768}, {1024, 768}}) {
      const int m = shape.first, n = shape.second;
      float *V = device(size_t(m) * n), *Y = device(size_t(m) * s), *Y2 = device(size_t(m) * s),
            *Om = device(size_t(n) * s);
      // V is row-major m x n, i.e. column-major n x m with ld n, as in adapprox.cu.
      auto v_om = [&](int c) { gemm(CUBLAS_OP_T, m, s, n, V, n, 1, Om, n, Y, c); };
      auto vt_y = [&](int c) { gemm(CUBLAS_OP_N, n, s, m, V, n, n, Y, m, Om, c); };
      auto gram_y = [&](int c) { gemm(CUBLAS_OP_T, s, s, m, Y, m, 1, Y, m, G, c); };
      auto gram_om = [&](int c) { gemm(CUBLAS_OP_T, s, s, n, Om, n, 1, Om, n, G, c); };
      auto trsm = [&] {
        CHECK(cublasStrsm(blas, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N,
                          CUBLAS_DIAG_NON_UNIT, m, s, &one, R, s, Y, m) == 0);
      };
      auto by_inverse = [&] {
        CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, m, s, s, &one, Y, m, R, s, &zero, Y2,
                          m) == 0);
      };
      std::printf("s %2d %5d x %-5d", s, m, n);
      struct Row {
        const char* name;
        std::function<void(int)> f;
        int best_c = 1;
      };
      std::vector<Row> rows = {
          {"V Om", v_om}, {"V^T Y", vt_y}, {"Gram(Y)", gram_y}, {"Gram(Om)", gram_om}};
      for (Row& r : rows) {
        double best = median_ms([&] { r.f(1); });
        std::printf(" | %s %.3f", r.name, best);
        for (int c : cs) {
          const double ms = median_ms([&] { r.f(c); });
          std::printf(" %.3f", ms);
          if (ms < best) best = ms, r.best_c = c;
        }
      }
      const double t_trsm = median_ms(trsm), t_inv = median_ms(by_inverse);
      std::printf(" | trsm %.3f  Y R^-1 %.3f\n", t_trsm, t_inv);
      // One S-RSI's products, l = 2: now (cuBLAS alone, trsm) and with each product's
      // best c and the inverse (the Cholesky kernels and the host round trip aside).
      auto chain = [&](bool best) {
        for (int it = 0; it < 2; it++) {
          rows[0].f(best ? rows[0].best_c : 1);
          for (int pass = 0; pass < 2; pass++) {
            rows[2].f(best ? rows[2].best_c : 1);
            best ? by_inverse() : trsm();
          }
          rows[1].f(best ? rows[1].best_c : 1);
        }
        rows[3].f(best ? rows[3].best_c : 1);
      };
      const double now = median_ms([&] { chain(false); }), alt = median_ms([&] { chain(true); });
      std::printf("     chain now %.3f  split-K + inverse %.3f ms (c: %d %d %d %d)\n", now, alt,
                  rows[0].best_c, rows[1].best_c, rows[2].best_c, rows[3].best_c);
      cudaFree(V), cudaFree(Y), cudaFree(Y2), cudaFree(Om);
    }
    cudaFree(G), cudaFree(R), cudaFree(gemm.parts);
  }
  std::vector<double> host(40);
  double* d = nullptr;
  CHECK(cudaMalloc(&d, host.size() * sizeof(double)) == cudaSuccess);
  const double sync = median_ms([&] {
    cudaMemcpyAsync(host.data(), d, host.size() * sizeof(double), cudaMemcpyDeviceToHost);
    cudaStreamSynchronize(0);
  });
  std::printf("a small copy to the host + sync %.3f ms\n", sync);
  return 0;
}
