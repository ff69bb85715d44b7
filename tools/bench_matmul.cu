// How good is cuBLASLt's first heuristic answer for the GEMMs of a training step? For
// each GEMM shape kernels/matmul.cu issues for one model (forward, dinp, dweight; bf16,
// fp32 accumulation), with the epilogue matmul.cu asks for (bias on the forwards,
// GELU_AUX_BIAS on fc's, DGELU on fcproj's dinp; dweight accumulates, beta = 1), times
// the heuristic's first algorithm and each of its next candidates, and prints both with
// TFLOP/s; `--plain` drops the epilogues (and beta), to see what they cost. A large gap
// would make per-shape autotuning worth its cost (a timing pass at start, and
// run-to-run differences in rounding if the choice depends on timing noise). `--list`
// prints every candidate's time and configuration (tile, stages, split-K).
//   build/bench_matmul --model d12 --batch 16 --seq 1024 [--candidates 16] [--plain] [--list]
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
  cublasLtEpilogue_t epilogue;
  float beta;
};

// What distinguishes one algorithm from another in the --list output.
std::string describe(const cublasLtMatmulAlgo_t& algo) {
  auto get = [&](cublasLtMatmulAlgoConfigAttributes_t attr) {
    uint32_t v = 0;
    size_t written = 0;
    cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &v, sizeof v, &written);
    return v;
  };
  return "algo " + std::to_string(get(CUBLASLT_ALGO_CONFIG_ID)) + " tile " +
         std::to_string(get(CUBLASLT_ALGO_CONFIG_TILE_ID)) + " stages " +
         std::to_string(get(CUBLASLT_ALGO_CONFIG_STAGES_ID)) + " splitK " +
         std::to_string(get(CUBLASLT_ALGO_CONFIG_SPLITK_NUM)) + " cluster " +
         std::to_string(get(CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID));
}

float time_ms(cublasLtHandle_t lt, cublasLtMatmulDesc_t desc, const cublasLtMatmulAlgo_t& algo,
              const void* a, cublasLtMatrixLayout_t la, const void* b, cublasLtMatrixLayout_t lb,
              void* d, cublasLtMatrixLayout_t ld, void* ws, size_t ws_bytes, float beta) {
  const float alpha = 1.f;
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
  bool plain = false, list = false;
  app.add_option("--model", model, "dN: N layers (channels as GPT-2's sizes)");
  app.add_option("--batch", B);
  app.add_option("--seq", T);
  app.add_option("--candidates", candidates, "heuristic answers to time per shape");
  app.add_flag("--plain", plain, "no epilogues, beta 0 (the GEMMs alone)");
  app.add_flag("--list", list, "print every candidate's time and configuration");
  CLI11_PARSE(app, argc, argv);
  const int layers = std::stoi(model.substr(1));
  const int C = layers <= 12 ? 768 : layers <= 24 ? 1024 : layers <= 36 ? 1280 : 1600;
  const int N = B * T, Vp = 50304, chunk = 2048;
  // Forward out^T = W^T-as-stored @ inp^T; dinp^T = W @ dout^T; dweight^T += inp^T @ dout.
  std::vector<Shape> shapes;
  const auto none = CUBLASLT_EPILOGUE_DEFAULT;
  for (auto [name, OC, IC] : std::vector<std::tuple<std::string, int, int>>{
           {"qkv", 3 * C, C}, {"attproj", C, C}, {"fc", 4 * C, C}, {"fcproj", C, 4 * C}}) {
    const auto fwd = name == "fc" ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_BIAS;
    const auto dinp = name == "fcproj" ? CUBLASLT_EPILOGUE_DGELU : none;
    shapes.push_back({name + " fwd", OC, N, IC, true, false, fwd, 0.f});
    shapes.push_back({name + " dinp", IC, N, OC, false, false, dinp, 0.f});
    shapes.push_back({name + " dweight", IC, OC, N, false, true, none, 1.f});
  }
  shapes.push_back({"classifier fwd (chunk)", Vp, chunk, C, true, false, none, 0.f});
  shapes.push_back({"classifier dinp (chunk)", C, chunk, Vp, false, false, none, 0.f});
  shapes.push_back({"classifier dweight (chunk)", C, Vp, chunk, false, true, none, 1.f});
  if (plain)
    for (Shape& s : shapes) s.epilogue = none, s.beta = 0.f;

  cublasLtHandle_t lt;
  if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) fail("cannot create a cuBLASLt handle");
  size_t biggest = 0;
  for (const Shape& s : shapes)
    biggest = std::max({biggest, size_t(s.m) * s.k, size_t(s.k) * s.n, size_t(s.m) * s.n});
  const size_t ws_bytes = size_t(32) << 20;
  void *a, *b, *d, *aux, *bias, *ws;
  CUDA_CHECK(cudaMalloc(&a, biggest * 2));
  CUDA_CHECK(cudaMalloc(&b, biggest * 2));
  CUDA_CHECK(cudaMalloc(&d, biggest * 2));
  CUDA_CHECK(cudaMalloc(&aux, biggest * 2));
  CUDA_CHECK(cudaMalloc(&bias, size_t(Vp) * 2));
  CUDA_CHECK(cudaMemset(aux, 0x3c, biggest * 2));
  CUDA_CHECK(cudaMemset(bias, 0x3c, size_t(Vp) * 2));
  CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
  CUDA_CHECK(cudaMemset(a, 0x3c, biggest * 2));  // bf16 ~0.01: finite, nonzero data
  CUDA_CHECK(cudaMemset(b, 0x3c, biggest * 2));

  std::printf("%s B=%d T=%d, bf16 in/out, fp32 accumulate, %s; median of 20 runs each\n",
              model.c_str(), B, T, plain ? "no epilogues" : "matmul.cu's epilogues");
  std::printf("| GEMM | m x n x k | heuristic #0 ms | TFLOP/s | best ms | TFLOP/s | best is # | per step, #0 | per step, best |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  double step0 = 0, step_best = 0;
  for (const Shape& s : shapes) {
    cublasLtMatmulDesc_t desc;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t opa = s.ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = s.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &s.epilogue,
                                                sizeof s.epilogue));
    if (s.epilogue == CUBLASLT_EPILOGUE_BIAS || s.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS)
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                  sizeof bias));
    if (s.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || s.epilogue == CUBLASLT_EPILOGUE_DGELU) {
      const int64_t ldaux = s.m;
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                                  &aux, sizeof aux));
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                                                  &ldaux, sizeof ldaux));
    }
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
      const float ms = time_ms(lt, desc, found[i].algo, a, la, b, lb, d, ld, ws, ws_bytes, s.beta);
      if (list)
        std::printf("  %s #%d: %.4f ms, %s\n", s.name.c_str(), i, ms, describe(found[i].algo).c_str());
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
