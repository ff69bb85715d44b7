// Fused softmax + cross-entropy + dlogits, in place over logits[N, Vp]; the model calls
// it once per row chunk, so N is a chunk of B*T rows, never the whole B*T x Vp.
// A row is handled by one 512-thread block. Each thread keeps an online (max, sum of exp)
// over its packs of W columns (pack p goes to thread p % 512, in increasing p), rescaling
// its sum once per pack rather than once per new maximum; block reductions give the row's
// max and sum, the loss, and then dlogits = (softmax - onehot) * dloss overwrite the row.
// Packs are 16 bytes (8 bf16 or 4 fp32 columns) whenever Vp and the row start allow it
// (Vp = 50304 is a multiple of 64), else single columns.
// The kernel is bound by memory, so what makes it fast is reading each row from global
// memory once: in training (dloss != 0) a row whose real packs fit in a block's opt-in
// shared memory is copied there with cp.async, and both the statistics and dlogits read it
// back from there, 2 x Vp x sizeof(D) bytes per row.
// The first staged kernel launched one block per row and took 177 us per 2048-row chunk
// of GPT-2's bf16 logits (404 MB; d12, ncu, H100): 2.28 TB/s, where a copy reaches
// 2.9-3.0 TB/s on that card. With at most two blocks per SM, one block's load, wait,
// reductions and stores overlapped too little with the other's. So the staged kernel is
// persistent (grid: the blocks resident at once, at most N; block b takes rows b,
// b + gridDim.x, ...) and, when two rows fit in its shared memory (GPT-2's bf16 row is
// 98.3 KiB, two fit an H100/H200's 227 KiB opt-in), software-pipelined: a block issues the
// copies of its next row as it starts on a row, so they are in flight during that row's
// statistics and dlogits. An fp32 row (196.5 KiB) fits once, so its block loads and
// computes in turn. Speed of the pipelined kernel: to be measured.
// The two-read variant, one block per row, still run for rows too big to stage and for
// single-column packs, reads the row again for dlogits, 3 x Vp x sizeof(D) bytes
// (evaluation runs it too: it reads the row only once without dlogits, and so is no slower
// than staging); on an H200 (tools/bench_ops, d12 B16 T1024 bf16, unchunked) it takes
// 1.35 ms for the 16384 rows, 3.7 TB/s; the first version, 2-byte loads and a rescale per
// new maximum, took 3.5 ms in an earlier session's profile. Its lesson: 3.7 TB/s is near
// all an H200's memory gives, so only fewer bytes per row could make it faster.
// Both variants give bit-identical losses and dlogits (same pack-to-thread assignment,
// same inlined arithmetic, same reductions), so evaluation and training losses agree
// exactly. Padded columns [V, Vp) are written as 0 without being read. Deterministic
// (fixed reductions).
#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

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

// Waits until at most Pending of this thread's committed cp.async groups are unfinished.
// The finished copies are then visible to this thread; to others only after a barrier.
template <int Pending>
__device__ __forceinline__ void wait_async_groups() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

// Training only (dloss != 0). Persistent: block b takes rows b, b + gridDim.x, ..., each
// read once from global memory into one of Buffers row buffers in dynamic shared memory
// (kScratchBytes, then the buffers, of the real packs each). With two, the copies of a
// block's next row into the other buffer are issued as it starts on a row, and fly during
// that row's statistics and dlogits. kThreads as in the two-read kernel, whose pack
// assignment and reductions it must share to give the same results; registers capped for
// two blocks per SM, which shared memory allows where both rows take at most half an SM's.
template <class D, int Buffers>
__global__ void __launch_bounds__(kThreads, 2)
    classifier_staged_kernel(D* logits, float* losses, const int* targets, int N, int V,
                             int Vp, float dloss) {
  constexpr int W = 16 / sizeof(D);
  using P = Pack<D, W>;
  extern __shared__ __align__(16) unsigned char smem[];
  float* shared = reinterpret_cast<float*>(smem);
  P* const buffers = reinterpret_cast<P*>(smem + kScratchBytes);
  const int real_packs = (V + W - 1) / W;
  const int stride = gridDim.x;
  // Each thread copies exactly the packs it reads back in add_pack and dlogits_pack, so
  // its own wait makes them readable to it with no barrier; thread 0's read of the
  // target logit is the one that crosses threads.
  auto stage = [&](int row, P* buffer) {
    const P* src = reinterpret_cast<const P*>(logits + size_t(row) * Vp);
    for (int p = threadIdx.x; p < real_packs; p += blockDim.x) copy_16_async(buffer + p, src + p);
    asm volatile("cp.async.commit_group;\n" ::: "memory");
  };
  if (Buffers == 2) stage(blockIdx.x, buffers);  // the grid has no more blocks than rows
  for (int row = blockIdx.x, k = 0; row < N; row += stride, k++) {
    P* const staged = buffers + size_t(k % Buffers) * real_packs;
    const int target = targets[row];
    // The buffer filled next held the previous row, read by every thread for dlogits and
    // by thread 0 for the loss: cp.async must not overwrite it before all of them are done.
    __syncthreads();
    const bool prefetch = Buffers == 2 && row + stride < N;
    if (Buffers == 1)
      stage(row, staged);
    else if (prefetch)
      stage(row + stride, buffers + size_t((k + 1) % 2) * real_packs);
    P* packs = reinterpret_cast<P*>(logits + size_t(row) * Vp);
    for (int p = real_packs + threadIdx.x; p < Vp / W; p += blockDim.x) packs[p] = P{};
    // This row's group; the next row's, committed last, stays in flight.
    if (prefetch)
      wait_async_groups<1>();
    else
      wait_async_groups<0>();
    float m = -INFINITY, s = 0.f;
    for (int p = threadIdx.x; p < real_packs; p += blockDim.x) add_pack(staged[p], p, V, m, s);
    // Its leading barrier keeps the previous row's reduction readers off the scratch.
    const RowStats r = row_stats(m, s, shared);
    // The reductions' barriers have made every thread's copies visible to thread 0.
    if (threadIdx.x == 0 && losses)
      losses[row] = logf(r.sum) + r.max - to_f(reinterpret_cast<const D*>(staged)[target]);
    const float inv_sum = 1.f / r.sum;
    for (int p = threadIdx.x; p < real_packs; p += blockDim.x)
      packs[p] = dlogits_pack(staged[p], p, V, target, r, inv_sum, dloss);
  }
}

// Blocks of classifier_staged_kernel<D, Buffers> resident on the current GPU at once with
// smem bytes of dynamic shared memory each; 0 where smem exceeds the per-block opt-in
// limit. The kernel is granted the whole limit, which the runtime requires per device
// beyond 48 KiB. Asked once per device and size, not on each chunk: a run's rows keep
// theirs.
template <class D, int Buffers>
int staged_resident_blocks(size_t smem) {
  static std::mutex mutex;
  static std::map<std::pair<int, size_t>, int> blocks;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(device, smem);
  if (const auto it = blocks.find(key); it != blocks.end()) return it->second;
  int optin = 0, sms = 0, per_sm = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (smem <= size_t(optin)) {
    CUDA_CHECK(cudaFuncSetAttribute(classifier_staged_kernel<D, Buffers>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, classifier_staged_kernel<D, Buffers>, kThreads, smem));
  }
  return blocks[key] = sms * per_sm;
}

// Launches the staged kernel with Buffers row buffers per block, or returns false if they
// do not fit.
template <class D, int Buffers>
bool launch_staged(D* logits, float* losses, const int* targets, int N, int V, int Vp,
                   float dloss) {
  constexpr int W = 16 / sizeof(D);
  const size_t smem = kScratchBytes + Buffers * (size_t(V + W - 1) / W) * sizeof(Pack<D, W>);
  const int resident = staged_resident_blocks<D, Buffers>(smem);
  if (resident == 0) return false;
  classifier_staged_kernel<D, Buffers><<<std::min(N, resident), kThreads, smem>>>(
      logits, losses, targets, N, V, Vp, dloss);
  return true;
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
    if (dloss == 0.f || !(launch_staged<D, 2>(logits, losses, targets, N, V, Vp, dloss) ||
                          launch_staged<D, 1>(logits, losses, targets, N, V, Vp, dloss)))
      classifier_kernel<D, W><<<N, kThreads>>>(logits, losses, targets, V, Vp, dloss);
  } else {
    classifier_kernel<D, 1><<<N, kThreads>>>(logits, losses, targets, V, Vp, dloss);
  }
  CUDA_CHECK_LAUNCH();
}

template void classifier<float>(float*, float*, const int*, int, int, int, float);
template void classifier<__nv_bfloat16>(__nv_bfloat16*, float*, const int*, int, int, int,
                                        float);

}  // namespace gpt2::cuda
