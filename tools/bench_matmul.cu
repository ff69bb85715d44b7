// How good is cuBLASLt's first heuristic answer for the GEMMs of a training step? For
// each GEMM shape kernels/matmul.cu issues for one model (forward, dinp, dweight; bf16,
// fp32 accumulation, no epilogue), times the heuristic's first algorithm and each of its
// next candidates, and prints both with TFLOP/s. A large gap would make per-shape
// autotuning worth its cost (a timing pass at start, and run-to-run differences in
// rounding if the choice depends on timing noise).
//   build/bench_matmul --model d12 --batch 16 --seq 1024 [--candidates 16]
#include <cublasLt.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda_check.cuh"
#include "error.hpp"
#include "kernels.cuh"

using namespace gpt2;

namespace {

struct Shape {
  std::string name;
  int m, n, k;  // column-major D[m,n] = op(A)[m,k] op(B)[k,n], as matmul.cu issues it
  bool ta, tb;
};

float time_ms(cublasLtHandle_t lt, cublasLtMatmulDesc_t desc, const cublasLtMatmulAlgo_t& algo,
              const void* a, cublasLtMatrixLayout_t la, const void* b, cublasLtMatrixLayout_t lb,
              void* d, cublasLtMatrixLayout_t ld, void* ws, size_t ws_bytes) {
  const float alpha = 1.f, beta = 0.f;
  cudaEvent_t t0, t1;
  CUDA_CHECK(cudaEventCreate(&t0));
  CUDA_CHECK(cudaEventCreate(&t1));
  std::vector<float> ms;
  for (int rep = 0; rep < 23; rep++) {
    CUDA_CHECK(cudaEventRecord(t0));
    if (cublasLtMatmul(lt, desc, &alpha, a, la, b, lb, &beta, d, ld, d, ld, &algo, ws, ws_bytes,
                       0) != CUBLAS_STATUS_SUCCESS)
      return -1.f;
    CUDA_CHECK(cudaEventRecord(t1));
    CUDA_CHECK(cudaEventSynchronize(t1));
    float x = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&x, t0, t1));
    if (rep >= 3) ms.push_back(x);  // the first runs warm the caches and clocks
  }
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"cuBLASLt's first heuristic choice against its other candidates"};
  std::string model = "d12";
  int B = 16, T = 1024, candidates = 16;
  app.add_option("--model", model, "dN: N layers (channels as GPT-2's sizes)");
  app.add_option("--batch", B);
  app.add_option("--seq", T);
  app.add_option("--candidates", candidates, "heuristic answers to time per shape");
  CLI11_PARSE(app, argc, argv);
  const int layers = std::stoi(model.substr(1));
  const int C = layers <= 12 ? 768 : layers <= 24 ? 1024 : layers <= 36 ? 1280 : 1600;
  const int N = B * T, Vp = 50304, chunk = 2048;
  // Forward out^T = W^T-as-stored @ inp^T; dinp^T = W @ dout^T; dweight^T += inp^T @ dout.
  std::vector<Shape> shapes;
  for (auto [name, OC, IC] : std::vector<std::tuple<std::string, int, int>>{
           {"qkv", 3 * C, C}, {"attproj", C, C}, {"fc", 4 * C, C}, {"fcproj", C, 4 * C}}) {
    shapes.push_back({name + " fwd", OC, N, IC, true, false});
    shapes.push_back({name + " dinp", IC, N, OC, false, false});
    shapes.push_back({name + " dweight", IC, OC, N, false, true});
  }
  shapes.push_back({"classifier fwd (chunk)", Vp, chunk, C, true, false});
  shapes.push_back({"classifier dinp (chunk)", C, chunk, Vp, false, false});
  shapes.push_back({"classifier dweight (chunk)", C, Vp, chunk, false, true});

  cublasLtHandle_t lt;
  if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) fail("cannot create a cuBLASLt handle");
  size_t biggest = 0;
  for (const Shape& s : shapes)
    biggest = std::max({biggest, size_t(s.m) * s.k, size_t(s.k) * s.n, size_t(s.m) * s.n});
  const size_t ws_bytes = size_t(32) << 20;
  void *a, *b, *d, *ws;
  CUDA_CHECK(cudaMalloc(&a, biggest * 2));
  CUDA_CHECK(cudaMalloc(&b, biggest * 2));
  CUDA_CHECK(cudaMalloc(&d, biggest * 2));
  CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
  CUDA_CHECK(cudaMemset(a, 0x3c, biggest * 2));  // bf16 ~0.01: finite, nonzero data
  CUDA_CHECK(cudaMemset(b, 0x3c, biggest * 2));

  std::printf("%s B=%d T=%d, bf16 in/out, fp32 accumulate; median of 20 runs each\n",
              model.c_str(), B, T);
  std::printf("| GEMM | m x n x k | heuristic #0 ms | TFLOP/s | best ms | TFLOP/s | best is # | per step, #0 | per step, best |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  double step0 = 0, step_best = 0;
  for (const Shape& s : shapes) {
    cublasLtMatmulDesc_t desc;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t opa = s.ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = s.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    cublasLtMatrixLayout_t la, lb, ld;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.ta ? s.k : s.m, s.ta ? s.m : s.k, s.ta ? s.k : s.m));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s.tb ? s.n : s.k, s.tb ? s.k : s.n, s.tb ? s.n : s.k));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, s.m, s.n, s.m));
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &ws_bytes, sizeof ws_bytes));
    std::vector<cublasLtMatmulHeuristicResult_t> found(candidates);
    int n_found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, ld, ld, pref, candidates,
                                                found.data(), &n_found));
    float first = -1.f, best = 1e30f;
    int best_i = -1;
    for (int i = 0; i < n_found; i++) {
      const float ms = time_ms(lt, desc, found[i].algo, a, la, b, lb, d, ld, ws, ws_bytes);
      if (i == 0) first = ms;
      if (ms > 0 && ms < best) best = ms, best_i = i;
    }
    const double flop = 2.0 * s.m * s.n * s.k;
    // Per step: each layer GEMM runs once per layer; the classifier's once per chunk.
    const double times = s.name.rfind("classifier", 0) == 0 ? double(N) / chunk : layers;
    step0 += first * times, step_best += best * times;
    std::printf("| %s | %d x %d x %d | %.4f | %.0f | %.4f | %.0f | %d | %.2f | %.2f |\n", s.name.c_str(),
                s.m, s.n, s.k, first, flop / first / 1e9, best, flop / best / 1e9, best_i,
                first * times, best * times);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatmulDescDestroy(desc);
  }
  std::printf("all GEMMs of a step: heuristic #0 %.2f ms, best candidate %.2f ms (%.3fx)\n", step0,
              step_best, step0 / step_best);
  cublasLtDestroy(lt);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
