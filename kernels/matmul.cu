// Linear layers through cuBLASLt: out[N,OC] = inp[N,C] @ weight[OC,C]^T + bias, and the
// backward dinp = dout @ weight, dweight += dout^T @ inp, dbias += colsum(dout).
// cuBLASLt is column-major and a row-major X reads as column-major X^T, so each
// product is issued transposed (the comment at each call gives the column-major form).
// Epilogues fold the elementwise neighbours into the GEMM: BIAS, GELU_AUX_BIAS (writes
// gelu(pre) and keeps pre as the aux output) and DGELU (dinp *= gelu'(pre_gelu)), each
// saving a full read and write of an N x OC activation; the projections that end a block
// (attproj, fcproj) take the residual stream as C with beta = 1, so the sum is written
// once, by the GEMM, instead of the product being written and read back by an add (see
// kernels/layernorm.cu for what that measured). Where cuBLASLt offers no
// algorithm for an epilogue (e.g. an aux leading dimension that is not a multiple of 8)
// we fall back to the plain GEMM plus gelu.cu. BGRADB is not used for dbias: it
// overwrites, while dbias accumulates, so it would need a scratch vector and an extra
// add; the two-stage column-sum kernel below is deterministic and costs one read of dout
// (16-byte loads where OC allows: 2-byte loads left it far below the memory's bandwidth).
// Tried (H100, same call, d12 B 16): BGRADB into fp32 scratch plus that add took the
// matmul family from 16.69 to 17.19 ms a step (tools/bench_ops) and the step from
// 34.3 / 34.2 to 34.3 / 34.4 ms: the epilogue slows the dweight GEMM by more than the
// column-sum kernel costs. Nor is DGELU_BGRAD (fc's bias gradient from fcproj's dinp
// GEMM): a standalone timing (H100, d12's 3072 x 16384 x 768) put it at 0.47 ms against
// DGELU's 0.15, and it offers no fp32 output. Where dout is a layernorm backward's dinp
// (attproj's and fcproj's dout is the residual gradient), that kernel sums the columns
// as it writes them (dout_colsum) and dbias only adds them.
// Where inp is ones-padded (src/ops.hpp: qkv's and fc's, the layernorm outputs), dbias
// comes out of the dweight GEMM itself, as the product of dout with the column of ones:
// the GEMM grows from C to C + 8 rows and writes fp32 scratch, which a small kernel adds
// to dweight and dbias, instead of a pass over dout.
// Also tried and dropped (H100, same call, d12 / d24 B 16): the column sums, or the
// dweight GEMM too, on a second stream beside this call's GEMMs: d12 31.7 / 31.6 ms a
// step -> 31.6 / 31.8 (sums) and 31.5 / 31.3 (dweight too); d24 with recompute 82.8 ->
// 83.2 / 83.2 and 83.9 / 84.0. And row chunks cut so that the vector kernel's grid is one
// wave (at 128 chunks fc's 12 column groups make 1.45 waves, qkv's 9 make 1.09): d12
// 31.2 / 31.5 -> 31.4 / 31.2 ms, d24 (11 recompute layers) 81.3 -> 80.9, within the noise.
// cuBLASLt's heuristic query costs tens of microseconds of host time, about as long as a
// small GEMM runs, so its answer is kept per device and shape for the process. Together
// the two took the non-classifier matmuls from 17.3 to 15.7 ms of a d12 B 16 T 1024 bf16
// step (tools/bench_ops, H200; that tool synchronizes around each call, so host time shows).
// Tried and dropped: autotuning, i.e. timing the heuristic's first 8 candidates in place
// at a shape's first call and keeping the fastest. tools/bench_matmul, which times each
// GEMM alone, had the best candidates 3.5% faster over a d12 step (H100), but in the
// step the picks ran slower than the first answers (fc's GELU forward 159 -> 174 us, the
// classifier's dinp 211 -> 251 us; ncu, H100): timed alone and repeated, a GEMM finds its
// operands in L2.
// Precision: fp32 uses CUBLAS_COMPUTE_32F (no TF32), so it matches the reference to
// fp32 rounding; bf16 keeps bf16 in/out with fp32 accumulation.
#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "cuda_check.cuh"
#include "error.hpp"
#include "kernels.cuh"

namespace gpt2::cuda {
namespace {

constexpr int kRowChunks = 128;

template <class D> constexpr cudaDataType_t cuda_type();
template <> constexpr cudaDataType_t cuda_type<float>() { return CUDA_R_32F; }
template <> constexpr cudaDataType_t cuda_type<__nv_bfloat16>() { return CUDA_R_16BF; }

struct Gemm {
  int m, n, k;         // column-major D[m,n] = op(A)[m,k] op(B)[k,n]
  bool ta, tb;         // op = transpose
  int lda, ldb, ldd;
  float beta;  // 1 adds C (D itself unless c is given)
  const void* c = nullptr;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  void* aux = nullptr;
  int ldaux = 0;
};

// The largest power of two (up to 256) that divides a pointer: cuBLASLt's algorithms
// assume 256-byte-aligned operands unless told otherwise, and row-offset pointers (a
// classifier chunk, one sampled row) can be less aligned for some channel counts.
uint32_t alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  return uint32_t(std::min<uintptr_t>(256, a & (~a + 1)));
}

// The heuristic's first algorithm for a GEMM, or found = false if it has none.
struct Choice {
  bool found;
  cublasLtMatmulAlgo_t algo;
};
Choice choose_algo(const Lt& lt, const Gemm& g, cudaDataType_t t, cudaDataType_t to,
                   cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t la,
                   cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t ld,
                   const uint32_t (&align)[3]) {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  // Everything the heuristic sees: shapes, layouts, epilogue, workspace, operand
  // alignment (A, B, the lesser of C's and D's), not beta.
  const auto key = std::make_tuple(device, int(t), int(to), g.m, g.n, g.k, g.ta, g.tb, g.lda, g.ldb,
                                   g.ldd, int(g.epilogue), g.bias != nullptr, g.ldaux,
                                   lt.workspace_bytes, align[0], align[1], align[2]);
  static std::mutex mutex;
  static std::map<decltype(key), Choice> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = cache.find(key); it != cache.end()) return it->second;
  cublasLtMatmulPreference_t pref;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &lt.workspace_bytes,
      sizeof lt.workspace_bytes));
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligned[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align[0]},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align[1]},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align[2]},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align[2]}};
  for (const auto& [attr, bytes] : aligned)
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &bytes, sizeof bytes));
  cublasLtMatmulHeuristicResult_t heuristic;
  int found = 0;
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(lt.handle, desc, la, lb, ld, ld, pref,
                                                           1, &heuristic, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  Choice c{hs == CUBLAS_STATUS_SUCCESS && found > 0, {}};
  if (c.found) c.algo = heuristic.algo;
  return cache[key] = c;
}

// Runs the GEMM; returns false (doing nothing) if cuBLASLt has no algorithm for it. The
// output D and C (D itself, or g.c) are of type O, the operands of type D.
template <class D, class O>
bool run_gemm(const Lt& lt, const Gemm& g, O* d, const D* a, const D* b) {
  const cudaDataType_t t = cuda_type<D>(), to = cuda_type<O>();
  cublasLtMatmulDesc_t desc;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t opa = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opb = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &g.epilogue,
                                              sizeof g.epilogue));
  if (g.bias)
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias,
                                                sizeof g.bias));
  if (g.aux) {
    const int64_t ld = g.ldaux;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                                &g.aux, sizeof g.aux));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld,
                                                sizeof ld));
  }
  cublasLtMatrixLayout_t la, lb, ld;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, t, g.ta ? g.k : g.m, g.ta ? g.m : g.k, g.lda));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, t, g.tb ? g.n : g.k, g.tb ? g.k : g.n, g.ldb));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld, to, g.m, g.n, g.ldd));
  const void* c = g.c ? g.c : d;
  const uint32_t align[3] = {alignment(a), alignment(b), std::min(alignment(c), alignment(d))};
  const Choice choice = choose_algo(lt, g, t, to, desc, la, lb, ld, align);
  if (choice.found) {
    const float alpha = 1.f;
    CUBLAS_CHECK(cublasLtMatmul(lt.handle, desc, &alpha, a, la, b, lb, &g.beta, c, ld, d, ld,
                                &choice.algo, lt.workspace, lt.workspace_bytes, compute_stream()));
  }
  cublasLtMatrixLayoutDestroy(ld);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatmulDescDestroy(desc);
  return choice.found;
}

template <class D, class O>
void must_run_gemm(const Lt& lt, const Gemm& g, O* d, const D* a, const D* b) {
  if (!run_gemm(lt, g, d, a, b))
    fail("cuBLASLt found no algorithm for a ", g.m, "x", g.n, "x", g.k,
         " matmul (check that the model's channel sizes are positive)");
}

// Column sums of dout[N,OC] in two fixed-order stages (see layernorm.cu).
template <class D>
__global__ void bias_partial_kernel(float* partial, const D* dout, int N, int OC) {
  __shared__ float s[8][32];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int rows_per_chunk = (N + gridDim.y - 1) / gridDim.y;
  const int r0 = blockIdx.y * rows_per_chunk, r1 = min(N, r0 + rows_per_chunk);
  float sum = 0.f;
  if (c < OC)
    for (int row = r0 + threadIdx.y; row < r1; row += blockDim.y)
      sum += to_f(dout[size_t(row) * OC + c]);
  s[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < OC) {
    for (int k = 1; k < blockDim.y; k++) sum += s[k][threadIdx.x];
    partial[size_t(blockIdx.y) * OC + c] = sum;
  }
}

// Per column group (blockIdx.x), blocks that have written their partial row; the last of
// a group resets its count to 0, so the counts are 0 between launches. Static device
// memory (4 KiB, in the CUDA context rather than the ledger) because scratch is shared
// with other ops and would not keep them. One set per device, so two bias reductions
// must not run at once on one device: they don't, both the model's backward and its
// scratch being on the device's one compute stream.
constexpr int kMaxBiasGroups = 1024;
__device__ unsigned bias_arrivals[kMaxBiasGroups];

// The same with one 16-byte vector of V columns per thread (OC a multiple of V): grid
// (ceil(OC / (32 V)), kRowChunks), block 32 x 8. The last block of each column group to
// finish also sums the group's kRowChunks partial rows, in a fixed order whichever block
// that is, and adds them to dbias: a separate final kernel cost ~10 us a call, 48 calls
// a d12 step (0.47 ms, ncu, H100), for work that is one block's tail here.
template <class D>
__global__ void bias_partial_vec_kernel(float* partial, D* dbias, const D* dout, int N, int OC) {
  constexpr int V = 16 / int(sizeof(D));
  __shared__ __align__(16) float s[8][32 * V];
  __shared__ bool last;
  const int v = blockIdx.x * 32 + threadIdx.x, c0 = blockIdx.x * 32 * V;
  const int rows_per_chunk = (N + gridDim.y - 1) / gridDim.y;
  const int r0 = blockIdx.y * rows_per_chunk, r1 = min(N, r0 + rows_per_chunk);
  const int tid = threadIdx.y * 32 + threadIdx.x;
  float sum[V] = {};
  // U rows' loads are issued before their adds: with one load in flight per thread the
  // kernel was bound by latency, 2.0 TB/s (ncu, H100, d12 B16). The adds keep row order.
  constexpr int U = 4;
  if (v * V < OC)
    for (int row = r0 + threadIdx.y; row < r1; row += U * blockDim.y) {
      int4 raw[U];
#pragma unroll
      for (int u = 0; u < U; u++)
        if (row + u * int(blockDim.y) < r1)
          raw[u] = reinterpret_cast<const int4*>(dout + size_t(row + u * blockDim.y) * OC)[v];
#pragma unroll
      for (int u = 0; u < U; u++) {
        if (row + u * int(blockDim.y) >= r1) break;
        const D* e = reinterpret_cast<const D*>(&raw[u]);
#pragma unroll
        for (int j = 0; j < V; j++) sum[j] += to_f(e[j]);
      }
    }
#pragma unroll
  for (int j = 0; j < V; j++) s[threadIdx.y][threadIdx.x * V + j] = sum[j];
  __syncthreads();
  for (int col = tid; col < 32 * V; col += 256) {
    if (c0 + col >= OC) break;
    float total = 0.f;
    for (int k = 0; k < 8; k++) total += s[k][col];
    partial[size_t(blockIdx.y) * OC + c0 + col] = total;
  }
  __threadfence();  // this block's partial row is visible device-wide before it counts
  __syncthreads();
  if (tid == 0) last = atomicAdd(&bias_arrivals[blockIdx.x], 1u) == gridDim.y - 1;
  __syncthreads();
  if (!last) return;
  // 8V float4 columns (the group's 32V) x R row sets; each thread sums every R-th partial
  // row of its 4 columns (independent loads, unrolled), then the R sums are added in order.
  constexpr int Q = 8 * V, R = 256 / Q;
  const int q = tid % Q, rs = tid / Q;
  float4 acc = {0.f, 0.f, 0.f, 0.f};
  if (c0 + 4 * q < OC) {
#pragma unroll 8
    for (int k = rs; k < int(gridDim.y); k += R) {
      const float4 p = __ldcg(reinterpret_cast<const float4*>(partial + size_t(k) * OC + c0) + q);
      acc.x += p.x, acc.y += p.y, acc.z += p.z, acc.w += p.w;
    }
  }
  float4* part = reinterpret_cast<float4*>(&s[0][0]);  // R x Q float4, reusing s
  part[rs * Q + q] = acc;
  __syncthreads();
  if (rs == 0 && c0 + 4 * q < OC) {
    for (int r = 1; r < R; r++) {
      const float4 p = part[r * Q + q];
      acc.x += p.x, acc.y += p.y, acc.z += p.z, acc.w += p.w;
    }
    const float add[4] = {acc.x, acc.y, acc.z, acc.w};
    for (int j = 0; j < 4; j++) {
      D* b = dbias + c0 + 4 * q + j;
      *b = from_f<D>(to_f(*b) + add[j]);
    }
  }
  if (tid == 0) bias_arrivals[blockIdx.x] = 0;
}

// grid ceil(OC/32), block 32 x 8: the warps take every 8th chunk and combine in order.
template <class D>
__global__ void bias_final_kernel(D* dbias, const float* partial, int chunks, int OC) {
  __shared__ float s[8][32];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float sum = 0.f;
  if (c < OC)
    for (int k = threadIdx.y; k < chunks; k += blockDim.y) sum += partial[size_t(k) * OC + c];
  s[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || c >= OC) return;
  for (int k = 1; k < blockDim.y; k++) sum += s[k][threadIdx.x];
  dbias[c] = from_f<D>(to_f(dbias[c]) + sum);
}

// dweight[OC, C] += wb[:, :C] and dbias += wb[:, C], from the fp32 [dweight | dbias] rows
// (row stride ld) of the GEMM over ones-padded input. grid ceil(OC C / 4 / 256), 256
// threads, 4 columns a thread (C is a multiple of 8 where rows are padded).
template <class D>
__global__ void add_weight_bias_kernel(D* dweight, D* dbias, const float* wb, int OC, int C,
                                       int ld) {
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x, q = C / 4;
  if (i >= size_t(OC) * q) return;
  const int oc = int(i / q), c = int(i % q) * 4;
  const float* row = wb + size_t(oc) * ld;
  const float4 s = *reinterpret_cast<const float4*>(row + c);
  D* w = dweight + size_t(oc) * C + c;
  const float add[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
  for (int j = 0; j < 4; j++) w[j] = from_f<D>(to_f(w[j]) + add[j]);
  if (c == 0) dbias[oc] = from_f<D>(to_f(dbias[oc]) + row[C]);
}

// dbias += colsum, a column sum the caller has already (layernorm_backward's dinp_colsum).
template <class D>
__global__ void add_colsum_kernel(D* dbias, const float* colsum, int OC) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c < OC) dbias[c] = from_f<D>(to_f(dbias[c]) + colsum[c]);
}

// matmul_backward's dweight and dbias.
template <class D>
void weight_grads(const Lt& lt, D* dweight, D* dbias, const D* dout, const D* inp, int N, int C,
                  int OC, void* scratch, const float* dout_colsum, int ld_inp) {
  if (bias_from_dweight_gemm(dweight, dbias, dout_colsum, C, ld_inp)) {
    // [dweight | dbias]^T[ld_inp, OC] = [inp, 1, 0..]^T @ dout: the row of ones sums dout's
    // columns. Into fp32 scratch (the GEMM cannot put row C elsewhere), then added.
    float* wb = static_cast<float*>(scratch);
    must_run_gemm(lt, Gemm{ld_inp, OC, N, false, true, ld_inp, OC, ld_inp, 0.f}, wb, inp, dout);
    add_weight_bias_kernel<<<ceil_div(size_t(OC) * C / 4, 256), 256, 0, compute_stream()>>>(
        dweight, dbias, wb, OC, C, ld_inp);
    CUDA_CHECK_LAUNCH();
    return;
  }
  if (dweight) {
    // dweight^T[C,OC] += inp^T[C,N] @ dout[N,OC] (dout^T stored col-major OC x N, transposed)
    Gemm g{C, OC, N, false, true, ld_inp, OC, C, 1.f};
    must_run_gemm(lt, g, dweight, inp, dout);
  }
  if (dbias && dout_colsum) {
    add_colsum_kernel<<<ceil_div(OC, 256), 256, 0, compute_stream()>>>(dbias, dout_colsum, OC);
    CUDA_CHECK_LAUNCH();
  } else if (dbias) {
    float* partial = static_cast<float*>(scratch);
    constexpr int V = 16 / int(sizeof(D));
    const int groups = ceil_div(OC, 32 * V);
    if (OC % V == 0 && groups <= kMaxBiasGroups &&
        reinterpret_cast<uintptr_t>(dout) % 16 == 0 && reinterpret_cast<uintptr_t>(partial) % 16 == 0) {
      bias_partial_vec_kernel<<<dim3(groups, kRowChunks), dim3(32, 8), 0, compute_stream()>>>(
          partial, dbias, dout, N, OC);
      CUDA_CHECK_LAUNCH();
      return;
    }
    bias_partial_kernel<<<dim3(ceil_div(OC, 32), kRowChunks), dim3(32, 8), 0, compute_stream()>>>(
        partial, dout, N, OC);
    CUDA_CHECK_LAUNCH();
    bias_final_kernel<<<ceil_div(OC, 32), dim3(32, 8), 0, compute_stream()>>>(dbias, partial,
                                                                              kRowChunks, OC);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

template <class D>
void matmul_forward(const Lt& lt, D* out, D* gelu_out, const D* inp, const D* weight, const D* bias,
                    int N, int C, int OC, int ld_inp, const D* residual) {
  if (N == 0 || OC == 0) return;
  require_residual_without_gelu(gelu_out, residual);
  // out^T[OC,N] = weight[OC,C] (stored as col-major C x OC, transposed) @ inp^T[C,N]
  // (+ residual^T as C, with beta 1)
  Gemm g{OC, N, C, true, false, C, ld_inp, OC, residual ? 1.f : 0.f};
  g.bias = bias, g.c = residual;
  if (gelu_out) {
    Gemm ge = g;
    ge.epilogue = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    ge.aux = out;
    ge.ldaux = OC;
    if (run_gemm(lt, ge, gelu_out, weight, inp)) return;
  }
  g.epilogue = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  must_run_gemm(lt, g, out, weight, inp);
  if (gelu_out) gelu_forward(gelu_out, out, size_t(N) * OC);
}

size_t matmul_backward_scratch_bytes(int, int C, int OC, bool bias_gemm) {
  return (bias_gemm ? size_t(C + kOnesPad) : size_t(kRowChunks)) * OC * sizeof(float);
}

// dweight and dbias first: dinp may then take inp's memory (src/ops.hpp).
template <class D>
void matmul_backward(const Lt& lt, D* dinp, D* dweight, D* dbias, const D* dout, const D* inp,
                     const D* weight, const D* pre_gelu, int N, int C, int OC, void* scratch,
                     const float* dout_colsum, int ld_inp) {
  if (N == 0) return;
  weight_grads(lt, dweight, dbias, dout, inp, N, C, OC, scratch, dout_colsum, ld_inp);
  if (!dinp) return;
  // dinp^T[C,N] = weight^T[C,OC] (col-major C x OC as stored) @ dout^T[OC,N]
  Gemm g{C, N, OC, false, false, C, OC, C, 0.f};
  if (pre_gelu) {
    Gemm gd = g;
    gd.epilogue = CUBLASLT_EPILOGUE_DGELU;
    gd.aux = const_cast<D*>(pre_gelu);
    gd.ldaux = C;
    if (run_gemm(lt, gd, dinp, weight, dout)) return;
  }
  must_run_gemm(lt, g, dinp, weight, dout);
  if (pre_gelu) gelu_backward(dinp, pre_gelu, dinp, size_t(N) * C);
}

template void matmul_forward<float>(const Lt&, float*, float*, const float*, const float*,
                                    const float*, int, int, int, int, const float*);
template void matmul_forward<__nv_bfloat16>(const Lt&, __nv_bfloat16*, __nv_bfloat16*,
                                            const __nv_bfloat16*, const __nv_bfloat16*,
                                            const __nv_bfloat16*, int, int, int, int,
                                            const __nv_bfloat16*);
template void matmul_backward<float>(const Lt&, float*, float*, float*, const float*,
                                     const float*, const float*, const float*, int, int, int,
                                     void*, const float*, int);
template void matmul_backward<__nv_bfloat16>(const Lt&, __nv_bfloat16*, __nv_bfloat16*,
                                             __nv_bfloat16*, const __nv_bfloat16*,
                                             const __nv_bfloat16*, const __nv_bfloat16*,
                                             const __nv_bfloat16*, int, int, int, void*,
                                             const float*, int);

}  // namespace gpt2::cuda
