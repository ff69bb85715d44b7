// Fused softmax + cross-entropy + dlogits, in place over logits[N, Vp]; the model calls
// it once per row chunk, so N is a chunk of B*T rows, never the whole B*T x Vp.
// Launch: one 512-thread block per row. Each thread keeps an online (max, sum of exp) over
// its packs of W columns (pack p goes to thread p % 512, in increasing p), rescaling its
// sum once per pack rather than once per new maximum; block reductions give the row's max
// and sum, the loss, and then dlogits = (softmax - onehot) * dloss overwrite the row.
// Packs are 16 bytes (8 bf16 or 4 fp32 columns) whenever Vp and the row start allow it
// (Vp = 50304 is a multiple of 64), else single columns.
// The kernel is bound by memory, so what makes it fast is reading each row from global
// memory once: in training (dloss != 0) a row whose real packs fit in a block's opt-in
// shared memory is copied there with cp.async, and both the statistics and dlogits read it
// back from there, 2 x Vp x sizeof(D) bytes per row. GPT-2's bf16 row takes 98.3 KiB, so
// two blocks share an H100/H200 SM (228 KiB) and one's loads overlap the other's stores;
// an fp32 row (196.5 KiB) gets an SM to itself. On an H100 (ncu, d12 B16, chunks of 2048
// rows) it takes 177 us a chunk against the two-read kernel's 217 (1.42 against 1.73 ms a
// step). Tried and dropped: persistent blocks, each double-buffering its rows (the next
// row's copies in flight during this row's work, one 512-thread block per SM): 223 us.
// The two-read variant, still run for rows too big to stage and for single-column packs,
// reads the row again for dlogits, 3 x Vp x sizeof(D) bytes (evaluation runs it too: it
// reads the row only once without dlogits, and so is no slower than staging); on an H200
// (tools/bench_ops, d12 B16 T1024 bf16, unchunked) it takes 1.35 ms for the 16384 rows,
// 3.7 TB/s; the first version, 2-byte loads and a rescale per new maximum, took 3.5 ms in
// an earlier session's profile. Its lesson: 3.7 TB/s is near all an H200's memory gives, so
// only fewer bytes per row could make it faster.
// Both variants give bit-identical losses and dlogits (same pack-to-thread assignment,
// same inlined arithmetic, same reductions), so evaluation and training losses agree
// exactly. Padded columns [V, Vp) are written as 0 without being read. Deterministic
// (fixed reductions).
#include <cstdint>

#include "cuda_check.cuh"
#include "kernels.cuh"

namespace gpt2::cuda {
namespace {

constexpr int kThreads = 512;
// The block reductions' 32 floats. The staged kernel keeps them at the start of its
// dynamic shared memory, so that with no static shared memory its request can reach the
// whole opt-in limit.
constexpr int kScratchBytes = 32 * sizeof(float);

template <class D, int W>
struct alignas(sizeof(D) * W) Pack {
  D x[W];
};

// Folds pack p (columns >= V are padding) into a thread's online max m and sum s of
// exp(x - m). v by value: from a reference the compiler split the two-read kernel's
// 16-byte load into one conditional load per column.
template <class D, int W>
__device__ __forceinline__ void add_pack(Pack<D, W> v, int p, int V, float& m, float& s) {
  float x[W], pack_max = -INFINITY;
#pragma unroll
  for (int k = 0; k < W; k++) {
    x[k] = p * W + k < V ? to_f(v.x[k]) : -INFINITY;
    pack_max = fmaxf(pack_max, x[k]);
  }
  if (pack_max > m) {
    s *= expf(m - pack_max);
    m = pack_max;
  }
#pragma unroll
  for (int k = 0; k < W; k++) s += expf(x[k] - m);
}

struct RowStats {
  float max, sum;  // sum of exp(x - max)
};

// Every thread's (m, s) combined over the block; every thread gets the result.
__device__ __forceinline__ RowStats row_stats(float m, float s, float* shared) {
  const float row_max = block_max(m, shared);
  // A thread without columns has s = 0; a NaN logit keeps s NaN, so the loss shows it.
  return {row_max, block_sum(s == 0.f ? 0.f : s * expf(m - row_max), shared)};
}

template <class D, int W>
__device__ __forceinline__ Pack<D, W> dlogits_pack(Pack<D, W> v, int p, int V, int target,
                                                   const RowStats& r, float inv_sum,
                                                   float dloss) {
#pragma unroll
  for (int k = 0; k < W; k++) {
    const int c = p * W + k;
    float d = 0.f;
    if (c < V) d = (expf(to_f(v.x[k]) - r.max) * inv_sum - (c == target ? 1.f : 0.f)) * dloss;
    v.x[k] = from_f<D>(d);
  }
  return v;
}

template <class D, int W>
__global__ void classifier_kernel(D* logits, float* losses, const int* targets, int V, int Vp,
                                  float dloss) {
  __shared__ float shared[32];
  D* row = logits + size_t(blockIdx.x) * Vp;
  Pack<D, W>* packs = reinterpret_cast<Pack<D, W>*>(row);
  const int target = targets[blockIdx.x];
  const float x_target = to_f(row[target]);  // read before any thread overwrites the row
  const int real_packs = (V + W - 1) / W;    // packs holding at least one real column
  float m = -INFINITY, s = 0.f;
  for (int p = threadIdx.x; p < real_packs; p += blockDim.x) add_pack(packs[p], p, V, m, s);
  const RowStats r = row_stats(m, s, shared);
  if (threadIdx.x == 0 && losses) losses[blockIdx.x] = logf(r.sum) + r.max - x_target;
  if (dloss == 0.f) return;
  const float inv_sum = 1.f / r.sum;
  for (int p = threadIdx.x; p < Vp / W; p += blockDim.x)
    packs[p] =
        p < real_packs ? dlogits_pack(packs[p], p, V, target, r, inv_sum, dloss) : Pack<D, W>{};
}

// 16 bytes global -> shared without a trip through registers; cached in L2 only (.cg), as
// every byte is read once. Both addresses 16-byte aligned.
__device__ __forceinline__ void copy_16_async(void* shared_dst, const void* global_src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(
                   static_cast<unsigned>(__cvta_generic_to_shared(shared_dst))),
               "l"(global_src)
               : "memory");
}

// The row read once, into dynamic shared memory (kScratchBytes, then the real packs);
// training only (dloss != 0). kThreads as in the two-read kernel, whose pack assignment
// and reductions it must share to give the same results; registers capped for two blocks
// per SM, which shared memory allows for GPT-2's bf16 rows.
template <class D>
__global__ void __launch_bounds__(kThreads, 2)
    classifier_staged_kernel(D* logits, float* losses, const int* targets, int V, int Vp,
                             float dloss) {
  constexpr int W = 16 / sizeof(D);
  extern __shared__ __align__(16) unsigned char smem[];
  float* shared = reinterpret_cast<float*>(smem);
  Pack<D, W>* staged = reinterpret_cast<Pack<D, W>*>(smem + kScratchBytes);
  Pack<D, W>* packs = reinterpret_cast<Pack<D, W>*>(logits + size_t(blockIdx.x) * Vp);
  const int target = targets[blockIdx.x];
  const int real_packs = (V + W - 1) / W;
  for (int p = threadIdx.x; p < real_packs; p += blockDim.x) copy_16_async(staged + p, packs + p);
  for (int p = real_packs + threadIdx.x; p < Vp / W; p += blockDim.x) packs[p] = Pack<D, W>{};
  // Each thread reads back only the packs it copied, which wait_all makes visible to it:
  // no barrier before the statistics.
  asm volatile("cp.async.wait_all;\n" ::: "memory");
  float m = -INFINITY, s = 0.f;
  for (int p = threadIdx.x; p < real_packs; p += blockDim.x) add_pack(staged[p], p, V, m, s);
  const RowStats r = row_stats(m, s, shared);
  // The reductions' barriers have made every thread's copies visible to thread 0.
  if (threadIdx.x == 0 && losses)
    losses[blockIdx.x] = logf(r.sum) + r.max - to_f(reinterpret_cast<const D*>(staged)[target]);
  const float inv_sum = 1.f / r.sum;
  for (int p = threadIdx.x; p < real_packs; p += blockDim.x)
    packs[p] = dlogits_pack(staged[p], p, V, target, r, inv_sum, dloss);
}

// The most dynamic shared memory classifier_staged_kernel<D> may request on the current
// GPU: the per-block opt-in limit, which the runtime grants a kernel only when asked, per
// device. Asked once per device, for the limit itself rather than each row size, so any
// row that fits launches without another call.
template <class D>
size_t staged_smem_limit() {
  return once_per_device([](int device) {
    int optin = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    CUDA_CHECK(cudaFuncSetAttribute(classifier_staged_kernel<D>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
    return size_t(optin);
  });
}

}  // namespace

template <class D>
void classifier(D* logits, float* losses, const int* targets, int N, int V, int Vp,
                float dloss) {
  if (N == 0) return;
  constexpr int W = 16 / sizeof(D);
  if (Vp % W == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0) {
    // Evaluation (dloss = 0) reads the row once either way; staging it would only add a
    // trip through shared memory and cost occupancy.
    const size_t smem = kScratchBytes + size_t(V + W - 1) / W * sizeof(Pack<D, W>);
    if (dloss != 0.f && smem <= staged_smem_limit<D>())
      classifier_staged_kernel<D>
          <<<N, kThreads, smem, compute_stream()>>>(logits, losses, targets, V, Vp, dloss);
    else
      classifier_kernel<D, W>
          <<<N, kThreads, 0, compute_stream()>>>(logits, losses, targets, V, Vp, dloss);
  } else {
    classifier_kernel<D, 1>
        <<<N, kThreads, 0, compute_stream()>>>(logits, losses, targets, V, Vp, dloss);
  }
  CUDA_CHECK_LAUNCH();
}

template void classifier<float>(float*, float*, const int*, int, int, int, float);
template void classifier<__nv_bfloat16>(__nv_bfloat16*, float*, const int*, int, int, int,
                                        float);

}  // namespace gpt2::cuda
