// Times the pieces of one Adapprox S-RSI (kernels/adapprox.cu) at the GPT-2 d12 shapes,
// every rank at k_max = 192 (s = k_max + p = 197): the eigensolvers of the s x s Gram
// matrix (cuSOLVER's Dsyevd, Xsyevd, XsyevBatched alone and batched as adapprox.cu's
// deferred S-RSIs use it, eigenvalues alone, in fp32 alone and batched, Dsyevj) with
// their distance from Dsyevd, CholeskyQR2's Dpotrf (with its fp32 <-> fp64 copies; alone
// and batched, fp64 and fp32), and per weight shape the GEMMs and the trsm.
// Median of 20 runs with cudaEvents on the default stream.
//   build/bench_adapprox_parts          s = 197
//   build/bench_adapprox_parts 261      d24's s
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#include "cuda_timing.cuh"
#include "fp64_copy.cuh"

using gpt2::cuda::narrow;
using gpt2::cuda::widen;

namespace {

double median_ms(const std::function<void()>& f) { return bench::median_ms(f, 20); }
using bench::device;

}  // namespace

int main(int argc, char** argv) {
  const int s = argc > 1 ? std::atoi(argv[1]) : 197, k = s - 5, rows = 4 * s;
  cublasHandle_t blas;
  cusolverDnHandle_t solver;
  cusolverDnParams_t params;
  CHECK(cublasCreate(&blas) == CUBLAS_STATUS_SUCCESS);
  CHECK(cusolverDnCreate(&solver) == CUSOLVER_STATUS_SUCCESS);
  CHECK(cusolverDnCreateParams(&params) == CUSOLVER_STATUS_SUCCESS);
  const float one = 1.f, zero = 0.f;
  const size_t ss = size_t(s) * s;

  // A Gram matrix like S-RSI's: B^T B, B rows x s with geometrically decaying columns
  // (a second moment's spectrum), computed in fp32 as the kernel does.
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> hB(size_t(rows) * s);
  for (int c = 0; c < s; c++)
    for (int r = 0; r < rows; r++) hB[r + size_t(c) * rows] = normal(rng) * std::pow(0.97f, float(c));
  float *B = device<float>(hB.size()), *G = device<float>(ss), *Gc = device<float>(ss);
  cudaMemcpy(B, hB.data(), hB.size() * sizeof(float), cudaMemcpyHostToDevice);
  CHECK(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, s, s, rows, &one, B, rows, B, rows, &zero, G, s) == 0);
  const int batch = 50;  // d12's matrices, all at s = 197
  double *Gd = device<double>(ss), *A = device<double>(ss * batch), *w = device<double>(size_t(s) * batch);
  int* info = device<int>(batch);
  widen<<<64, 256>>>(Gd, G, ss);
  for (int b = 0; b < batch; b++) cudaMemcpy(A + b * ss, Gd, ss * sizeof(double), cudaMemcpyDeviceToDevice);
  auto reset = [&](int copies) {
    for (int b = 0; b < copies; b++)
      cudaMemcpyAsync(A + b * ss, Gd, ss * sizeof(double), cudaMemcpyDeviceToDevice);
  };
  const double copy_ms = median_ms([&] { reset(1); });

  // Eigensolvers: time minus the reset copy; accuracy against Dsyevd (eigenvalues
  // relative to the largest, top-k eigenvectors up to sign).
  std::vector<double> ref_vals(s), ref_vecs(ss);
  auto compare = [&](const char* name, double ms) {
    std::vector<double> vals(s), vecs(ss);
    cudaMemcpy(vals.data(), w, s * sizeof(double), cudaMemcpyDeviceToHost);
    cudaMemcpy(vecs.data(), A, ss * sizeof(double), cudaMemcpyDeviceToHost);
    if (ref_vals[s - 1] == 0) ref_vals = vals, ref_vecs = vecs;
    double dval = 0, dvec = 0;
    for (int j = 0; j < s; j++) dval = std::max(dval, std::abs(vals[j] - ref_vals[j]) / ref_vals[s - 1]);
    for (int j = s - k; j < s; j++) {
      double dot = 0;
      for (int i = 0; i < s; i++) dot += vecs[i + size_t(j) * s] * ref_vecs[i + size_t(j) * s];
      dvec = std::max(dvec, 1 - std::abs(dot));
    }
    std::printf("%-34s %8.3f ms   eigenvalues %.1e   top-%d vectors 1-|cos| %.1e\n", name, ms, dval, k, dvec);
  };
  {
    int lwork = 0;
    cusolverDnDsyevd_bufferSize(solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, s, A, s, w, &lwork);
    double* work = device<double>(lwork);
    const double ms = median_ms([&] {
      reset(1);
      cusolverDnDsyevd(solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, s, A, s, w, work, lwork, info);
    });
    compare("Dsyevd", ms - copy_ms);
    cudaFree(work);
  }
  {
    size_t dev_bytes = 0, host_bytes = 0;
    cusolverDnXsyevd_bufferSize(solver, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, s, CUDA_R_64F,
                                A, s, CUDA_R_64F, w, CUDA_R_64F, &dev_bytes, &host_bytes);
    char* work = device<char>(dev_bytes + 1);
    std::vector<char> host(host_bytes + 1);
    const double ms = median_ms([&] {
      reset(1);
      cusolverDnXsyevd(solver, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, s, CUDA_R_64F, A, s,
                       CUDA_R_64F, w, CUDA_R_64F, work, dev_bytes, host.data(), host_bytes, info);
    });
    compare("Xsyevd", ms - copy_ms);
    cudaFree(work);
  }
  // One XsyevBatched call over b matrices of `type` at a, eigenvalues to vals, timed
  // with restore(b) putting the inputs back first.
  auto syev_batched_ms = [&](cusolverEigMode_t mode, cudaDataType type, void* a, void* vals, int b,
                             const std::function<void(int)>& restore) {
    size_t dev_bytes = 0, host_bytes = 0;
    CHECK(cusolverDnXsyevBatched_bufferSize(solver, params, mode, CUBLAS_FILL_MODE_UPPER, s, type, a, s, type, vals,
                                            type, &dev_bytes, &host_bytes, b) == CUSOLVER_STATUS_SUCCESS);
    char* work = device<char>(dev_bytes + 1);
    std::vector<char> host(host_bytes + 1);
    const double ms = median_ms([&] {
      restore(b);
      CHECK(cusolverDnXsyevBatched(solver, params, mode, CUBLAS_FILL_MODE_UPPER, s, type, a, s, type, vals, type,
                                   work, dev_bytes, host.data(), host_bytes, info, b) == CUSOLVER_STATUS_SUCCESS);
    });
    cudaFree(work);
    return ms;
  };
  for (int b : {1, 12, batch}) {
    const double ms = syev_batched_ms(CUSOLVER_EIG_MODE_VECTOR, CUDA_R_64F, A, w, b, reset);
    char name[64];
    std::snprintf(name, sizeof(name), "XsyevBatched x%d (per matrix)", b);
    compare(name, (ms - b * copy_ms) / b);
  }
  // Eigenvalues alone: what the rank loop needs to decide.
  std::printf("%-34s %8.3f ms\n", "XsyevBatched x1, eigenvalues only",
              syev_batched_ms(CUSOLVER_EIG_MODE_NOVECTOR, CUDA_R_64F, A, w, 1, reset) - copy_ms);
  // The same Gram matrices in fp32 (the S-RSI forms them in fp32): eigenvalues and
  // vectors against Dsyevd's, widened for the comparison.
  {
    float *Af = device<float>(ss * batch), *wf = device<float>(size_t(s) * batch);
    auto reset_f = [&](int copies) {
      for (int b = 0; b < copies; b++)
        cudaMemcpyAsync(Af + b * ss, G, ss * sizeof(float), cudaMemcpyDeviceToDevice);
    };
    const double fcopy = median_ms([&] { reset_f(1); });
    for (int b : {1, 4, 12, batch}) {
      const double ms = syev_batched_ms(CUSOLVER_EIG_MODE_VECTOR, CUDA_R_32F, Af, wf, b, reset_f);
      widen<<<64, 256>>>(A, Af, ss);
      widen<<<64, 256>>>(w, wf, size_t(s));
      char name[64];
      std::snprintf(name, sizeof(name), "fp32 XsyevBatched x%d (per matrix)", b);
      compare(name, (ms - b * fcopy) / b);
    }
    for (int b : {1, 12, batch}) {  // CholeskyQR2's Cholesky for b matrices at once
      std::vector<double*> ptrs(b);
      for (int i = 0; i < b; i++) ptrs[i] = A + i * ss;
      double** dptrs = device<double*>(b);
      cudaMemcpy(dptrs, ptrs.data(), b * sizeof(double*), cudaMemcpyHostToDevice);
      const double ms = median_ms([&] {
        for (int i = 0; i < b; i++) widen<<<64, 256>>>(A + i * ss, G, ss);
        CHECK(cusolverDnDpotrfBatched(solver, CUBLAS_FILL_MODE_UPPER, s, dptrs, s, info, b) == CUSOLVER_STATUS_SUCCESS);
      });
      std::printf("%-34s %8.3f ms (batch of %d, widen included)\n", "DpotrfBatched", ms, b);
      std::vector<float*> fp(b);
      for (int i = 0; i < b; i++) fp[i] = Af + i * ss;
      float** fptrs = device<float*>(b);
      cudaMemcpy(fptrs, fp.data(), b * sizeof(float*), cudaMemcpyHostToDevice);
      const double fms = median_ms([&] {
        reset_f(b);
        CHECK(cusolverDnSpotrfBatched(solver, CUBLAS_FILL_MODE_UPPER, s, fptrs, s, info, b) == CUSOLVER_STATUS_SUCCESS);
      });
      std::printf("%-34s %8.3f ms (batch of %d, copies included)\n", "SpotrfBatched", fms, b);
      cudaFree(dptrs), cudaFree(fptrs);
    }
    widen<<<64, 256>>>(Gd, G, ss);
    cudaFree(Af), cudaFree(wf);
  }
  for (double tol : {0.0, 1e-10}) {
    syevjInfo_t j;
    cusolverDnCreateSyevjInfo(&j);
    if (tol > 0) cusolverDnXsyevjSetTolerance(j, tol);
    int lwork = 0;
    cusolverDnDsyevj_bufferSize(solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, s, A, s, w, &lwork, j);
    double* work = device<double>(lwork);
    const double ms = median_ms([&] {
      reset(1);
      cusolverDnDsyevj(solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, s, A, s, w, work, lwork, info, j);
    });
    compare(tol > 0 ? "Dsyevj tol 1e-10" : "Dsyevj tol default", ms - copy_ms);
    cudaFree(work);
    cusolverDnDestroySyevjInfo(j);
  }

  // CholeskyQR2's Cholesky: widen + Dpotrf + narrow; its R feeds the trsm below.
  std::vector<float> R1(ss);
  {
    int lwork = 0;
    cusolverDnDpotrf_bufferSize(solver, CUBLAS_FILL_MODE_UPPER, s, A, s, &lwork);
    double* work = device<double>(lwork);
    const double ms = median_ms([&] {
      cudaMemcpyAsync(Gc, G, ss * sizeof(float), cudaMemcpyDeviceToDevice);
      widen<<<ceil(ss / 256.0), 256>>>(A, Gc, ss);
      cusolverDnDpotrf(solver, CUBLAS_FILL_MODE_UPPER, s, A, s, work, lwork, info);
      narrow<<<ceil(ss / 256.0), 256>>>(Gc, A, ss);
    });
    cudaMemcpy(R1.data(), Gc, ss * sizeof(float), cudaMemcpyDeviceToHost);
    std::printf("%-34s %8.3f ms\n", "widen + Dpotrf + narrow", ms);
    cudaFree(work);
  }
  const double fcopy_ms = median_ms([&] { cudaMemcpyAsync(Gc, G, ss * sizeof(float), cudaMemcpyDeviceToDevice); });
  std::printf("%-34s %8.3f ms   (included in the row above)\n", "fp32 Gram copy", fcopy_ms);

  // The GEMMs and trsm of one S-RSI, per matrix shape (m x n weight, V_t row-major).
  for (const auto& shape : std::vector<std::pair<int, int>>{{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}, {50304, 768}, {1024, 768}}) {
    const int m = shape.first, n = shape.second;
    float *V = device<float>(size_t(m) * n), *Y = device<float>(size_t(m) * s), *Om = device<float>(size_t(n) * s);
    cudaMemset(V, 0, size_t(m) * n * sizeof(float));
    cudaMemset(Om, 0, size_t(n) * s * sizeof(float));
    cudaMemset(Y, 0, size_t(m) * s * sizeof(float));
    const double vy = median_ms([&] {
      cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, m, s, n, &one, V, n, Om, n, &zero, Y, m);
    });
    const double vt = median_ms([&] {
      cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, n, s, m, &one, V, n, Y, m, &zero, Om, n);
    });
    const double gram = median_ms([&] {
      cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, s, s, m, &one, Y, m, Y, m, &zero, G, s);
    });
    cudaMemcpy(Gc, R1.data(), ss * sizeof(float), cudaMemcpyHostToDevice);  // Dpotrf's R
    const double trsm = median_ms([&] {
      cublasStrsm(blas, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, m, s, &one,
                  Gc, s, Y, m);
    });
    const double rebuild = median_ms([&] {
      cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, n, m, k, &one, Om, n, Y, m, &one, V, n);
    });
    std::printf("%5d x %-5d V Om %.3f  V^T Y %.3f  Gram(m) %.3f  trsm %.3f  rebuild Q U^T %.3f ms\n", m, n, vy, vt,
                gram, trsm, rebuild);
    cudaFree(V), cudaFree(Y), cudaFree(Om);
  }
  std::vector<double> host(s + 2);
  const double sync = median_ms([&] {
    cudaMemcpyAsync(host.data(), w, host.size() * sizeof(double), cudaMemcpyDeviceToHost);
    cudaStreamSynchronize(0);
  });
  std::printf("%-34s %8.3f ms\n", "eigenvalues to the host + sync", sync);
  return 0;
}
