// Causal self-attention on tensor cores, bf16, head size 64: flash-attention-2. Same
// contract as attention.cu, which dispatches here for bf16 with HS = 64 and keeps the
// exact FMA kernels for fp32 and other head sizes. Each kernel comes twice: on mma.sync
// (described first) and, in sm_90a builds on Hopper, on wgmma (the section further down),
// with equal results.
//
// Launch shape: grid (NH * B, ceil(T/64)), 128 threads = 4 warps. A block owns a 64-row
// tile (queries in forward and dq, keys in dkdv); each warp owns 16 of those rows and keeps
// their accumulators in registers for the whole kernel. The other operands stream
// through shared memory in 64-row tiles, double-buffered with cp.async so the next tile's
// load overlaps this tile's math. Every product is mma.sync m16n8k16 (bf16 in, fp32
// accumulate) fed by ldmatrix (.trans where the operand is needed transposed); shared rows
// are padded by 16 bytes so the 8 rows one ldmatrix reads fall in distinct banks.
// The idea that makes it fast (FA2): an mma's fp32 accumulator layout, packed pairwise to
// bf16, is exactly the layout of its A operand, so P = softmax(QK^T) goes from the QK^T
// product into the PV product without leaving registers (likewise dS into dS K, and P^T,
// dS^T in dkdv). The softmax works in base 2: scores are scaled by log2(e)/sqrt(HS) so each
// exp is one ex2. Tiles above the causal diagonal are never loaded; only the diagonal tile
// is masked. The grid's first row holds every head's longest tile, so the blocks launched
// first are the longest and the tail is made of the shortest (launching one head's tiles
// longest to shortest before the next head's was 10-17% slower in the forward, 4-13% in
// the backward).
// Backward (deterministic, no atomics), P recomputed from lse:
//   dq kernel, per query tile over key tiles j <= i: dQ += dS K;  dS = P (dO V^T - delta),
//     delta_i = dO_i . O_i computed from its dO tile and one O tile, and stored for dkdv
//     (a separate delta kernel cost 55 us of 0.51 ms at B 16);
//   dkdv kernel, then, per key tile over query tiles i >= j: dV += P^T dO, dK += dS^T Q.
// Both reload their own rows' A fragments (Q, dO in dq; K, V in dkdv) from shared memory
// per tile instead of holding them: dkdv fits 168 registers (3 blocks per SM) instead of
// 236 (2), 5-7% off the backward.
// Numerics: P and dS are rounded to bf16 as mma inputs (at most 2^-8 relative per term);
// tests/test_attention.cpp bounds the resulting error.
// Measured (tools/bench_attention.cpp, H200, T 1024, 12 heads of 64): B 8 forward 0.075 ms
// (173 TFLOP/s), backward 0.222 ms (145, at 2.5x the forward's flops); B 16: 0.138 ms
// (187) and 0.434 ms (148); 16-20x the FMA kernels. Since then (H100, B 16 NH 12, same
// call): ex2.approx.ftz instead of exp2f (which wraps each ex2 in a compare and two
// multiplies for subnormals), the max taken over unscaled scores so each exp's argument is
// one fma, and the causal mask only in the diagonal tile cut the instructions 17% (fwd),
// 15% (dq), 13% (dkdv): forward 0.138 -> 0.131 ms, backward 0.440 -> 0.415.
// Where the time goes (ncu, H100, B 16 NH 12, % of peak): not MUFU. The XU pipe (ex2) is at
// 25% in the forward, 18% in dq, 12% in dkdv; the tensor pipe at 35-39%; issue slots 55%,
// 44%, 35% busy, the warps stalled on short dependency chains with 4 (forward) or 3 warps
// per scheduler. The dq kernel recomputes S and dP (2 of its 3 products), the price of a
// deterministic backward without atomics. Tried and dropped (H200, B 16 NH 12, unless said):
// - dQ inside dkdv by fp32 atomics (FA2's way, 5 products instead of 7): 0.464 ms against
//   0.473 for this backward (both then with the separate delta kernel), not worth a
//   nondeterministic dQ and a 4 B T C-byte fp32 accumulator (50 MB at d12 B 16);
// - a forward with 8 warps (128 queries per block sharing each K/V tile): 0.156 ms
//   against 0.138; with 32 query rows per warp instead: 241 registers, no faster;
// - a share of each tile's exps on the FMA pipe (2^frac by a degree-4 polynomial, 2^int
//   added to the exponent bits) so MUFU and FMA split the load (H100): 1 of 8 column tiles
//   0.138 / 0.420 ms, 2 of 8 0.141 / 0.424, against 0.134 / 0.416 all on MUFU: MUFU was
//   not the limit, and each exp moved costs ~9 instructions instead of 1;
// - (H100, bench_attention and bench_train in one call) the qkv bias gradient summed by
//   dq and dkdv as they store their tiles (shuffles and a 4-warp shared-memory add per
//   64 x 64 block, one partial row per tile, then a small reduction) in place of the
//   matmul's column-sum kernel over dqkv: backward 0.336 -> 0.366 ms at B 16 NH 12, so
//   the d12 step stayed at 31.7 / 31.6 -> 31.8 / 31.6 ms and d24 at 82.0 / 81.9;
// - (H100) in the wgmma kernels, the A operands that stay for the whole kernel (Q in the
//   forward and dq, dO in dq, K and V in dkdv) held in registers (wgmma with A from
//   registers) instead of re-read from shared memory per tile, on the guess that shared
//   memory bandwidth bounds these kernels: forward 0.109 -> 0.112 ms, backward 0.336 ->
//   0.350 (dkdv then spilled at 3 blocks per SM; at 2 blocks 0.386). That build also
//   disagreed with the reference, so the timing settles little, but nothing in it
//   pointed at shared memory.
#include "cuda_check.cuh"
#include "kernels.cuh"

namespace gpt2::cuda {
namespace {

using bf = __nv_bfloat16;
constexpr int kHS = 64;
constexpr int kRows = 64;             // rows of every tile, owned or streamed
constexpr int kThreads = 32 * kRows / 16;
constexpr int kStride = kHS + 8;      // padded shared row: 144 bytes, 4 banks apart
constexpr int kTile = kRows * kStride;
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 2^x on the MUFU pipe without exp2f's subnormal handling (exp2f adds a compare and two
// multiplies around each ex2); ftz: results below 2^-126 are 0, and 2^-inf = 0.
__device__ __forceinline__ float exp2_mufu(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Rows r0 .. r0+63 of a head (64 bf16 at `src`, rows `stride` apart) into a shared tile;
// rows >= T are zero-filled (cp.async with source size 0).
__device__ __forceinline__ void load_tile(bf* dst, const bf* src, size_t stride, int r0, int T) {
  for (int c = threadIdx.x; c < kRows * kHS / 8; c += kThreads) {
    const int r = c / (kHS / 8), col = c % (kHS / 8) * 8;
    const bool valid = r0 + r < T;
    const bf* g = src + size_t(valid ? r0 + r : 0) * stride + col;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                     smem_u32(dst + r * kStride + col)),
                 "l"(g), "r"(valid ? 16 : 0));
  }
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;\n"); }
// All but the newest group landed; then the block sees every thread's copies.
__device__ __forceinline__ void wait_all_but_newest() {
  asm volatile("cp.async.wait_group 1;\n");
  __syncthreads();
}

__device__ __forceinline__ void ldsm(unsigned (&r)[4], const bf* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_trans(unsigned (&r)[4], const bf* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void mma(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                    unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A warp's 16 x 64 block is a[k16 step][4] as A operand, or acc[n8 tile][4] as fp32
// accumulator, where lane holds rows lane/4 (+8 for elements 2, 3) and columns
// 8n + 2(lane%4) (+1 for odd elements).
using AFrag = unsigned[4][4];
using Acc = float[8][4];
__device__ __forceinline__ int acc_row(int e) { return threadIdx.x % 32 / 4 + e / 2 * 8; }
__device__ __forceinline__ int acc_col(int n, int e) { return n * 8 + threadIdx.x % 4 * 2 + e % 2; }

// 16 rows of a shared tile (starting at `rows`) as A operand.
__device__ __forceinline__ void load_a(AFrag& a, const bf* rows) {
  const int lane = threadIdx.x % 32;
  const bf* p = rows + lane % 16 * kStride + lane / 16 * 8;
#pragma unroll
  for (int k = 0; k < 4; k++) ldsm(a[k], p + k * 16);
}

// Accumulator layout -> A operand: columns 16k .. 16k+15 are n8 tiles 2k and 2k+1.
__device__ __forceinline__ unsigned pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const unsigned*>(&v);
}
__device__ __forceinline__ void to_a(AFrag& a, const Acc& c) {
#pragma unroll
  for (int k = 0; k < 4; k++) {
    a[k][0] = pack(c[2 * k][0], c[2 * k][1]);
    a[k][1] = pack(c[2 * k][2], c[2 * k][3]);
    a[k][2] = pack(c[2 * k + 1][0], c[2 * k + 1][1]);
    a[k][3] = pack(c[2 * k + 1][2], c[2 * k + 1][3]);
  }
}

// acc = A X^T for a shared 64 x 64 tile X (e.g. S = Q K^T): X's rows are acc's columns.
__device__ __forceinline__ void mma_abt(Acc& acc, const AFrag& a, const bf* x) {
  const int lane = threadIdx.x % 32;
  const bf* p = x + (lane % 8 + lane / 16 * 8) * kStride + lane / 8 % 2 * 8;
#pragma unroll
  for (int n = 0; n < 8; n++)
#pragma unroll
    for (int e = 0; e < 4; e++) acc[n][e] = 0.f;
#pragma unroll
  for (int n2 = 0; n2 < 4; n2++)
#pragma unroll
    for (int k = 0; k < 4; k++) {
      unsigned b[4];
      ldsm(b, p + n2 * 16 * kStride + k * 16);
      mma(acc[2 * n2], a[k], b[0], b[1]);
      mma(acc[2 * n2 + 1], a[k], b[2], b[3]);
    }
}

// acc += A X for a shared 64 x 64 tile X (e.g. O += P V): X's rows are A's columns.
__device__ __forceinline__ void mma_ab(Acc& acc, const AFrag& a, const bf* x) {
  const int lane = threadIdx.x % 32;
  const bf* p = x + lane % 16 * kStride + lane / 16 * 8;
#pragma unroll
  for (int k = 0; k < 4; k++)
#pragma unroll
    for (int n2 = 0; n2 < 4; n2++) {
      unsigned b[4];
      ldsm_trans(b, p + k * 16 * kStride + n2 * 16);
      mma(acc[2 * n2], a[k], b[0], b[1]);
      mma(acc[2 * n2 + 1], a[k], b[2], b[3]);
    }
}

// Rows r of a warp's accumulator, scaled, into out[(row0 + r) * stride ...] for rows < T.
__device__ __forceinline__ void store_rows(bf* out, size_t stride, int row0, int T,
                                           const Acc& acc, const float (&scale)[2]) {
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int i = row0 + acc_row(2 * half);
    if (i >= T) continue;
#pragma unroll
    for (int n = 0; n < 8; n++)
      *reinterpret_cast<__nv_bfloat162*>(out + size_t(i) * stride + acc_col(n, 0)) =
          __floats2bfloat162_rn(acc[n][2 * half] * scale[half],
                                acc[n][2 * half + 1] * scale[half]);
  }
}

// (tile, head, batch) of this block. The grid is (NH * B, tiles), so the first blocks to
// launch hold every head's longest tile, and the grid's tail is made of the shortest.
struct Block {
  int tile, h, b;
};
__device__ __forceinline__ Block block_of(int NH) {
  return {int(blockIdx.y), int(blockIdx.x % NH), int(blockIdx.x / NH)};
}
dim3 grid_of(int B, int T, int NH) { return dim3(NH * B, ceil_div(T, kRows)); }

// The diagonal tile of a forward block (queries and keys the same 64 rows): scores of
// keys after their query to -inf.
__device__ __forceinline__ void mask_diagonal(Acc& s) {
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int n = 0; n < 8; n++)
#pragma unroll
    for (int e = 0; e < 4; e++)
      if (acc_col(n, e) > warp * 16 + acc_row(e)) s[n][e] = -INFINITY;
}

// One key tile of the online softmax: raises each row's running max m (scaled, base 2)
// by the tile's scores s, rescales l and o, and turns s into p = 2^(s scale - m).
__device__ __forceinline__ void online_softmax(Acc& s, Acc& o, float (&m)[2], float (&l)[2],
                                               float scale_log2) {
  // The max of unscaled scores, scaled once (the scale is positive): m is in scaled
  // units and each exp's argument is one fma.
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int n = 0; n < 8; n++)
#pragma unroll
    for (int e = 0; e < 4; e++) mx[e / 2] = fmaxf(mx[e / 2], s[n][e]);
  // Every row sees its own key in the diagonal tile and key 0 in tile 0, so the
  // running max is finite from the first tile on (no -inf - -inf).
#pragma unroll
  for (int r = 0; r < 2; r++) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    const float m_new = fmaxf(m[r], mx[r] * scale_log2), correction = exp2_mufu(m[r] - m_new);
    m[r] = m_new;
    l[r] *= correction;
#pragma unroll
    for (int n = 0; n < 8; n++) o[n][2 * r] *= correction, o[n][2 * r + 1] *= correction;
  }
#pragma unroll
  for (int n = 0; n < 8; n++)
#pragma unroll
    for (int e = 0; e < 4; e++) {
      s[n][e] = exp2_mufu(fmaf(s[n][e], scale_log2, -m[e / 2]));
      l[e / 2] += s[n][e];  // this lane's columns only; the quad is summed at the end
    }
}

// The forward's epilogue: o / l into out, and lse = ln(sum of exp) per query.
__device__ __forceinline__ void finish_forward(bf* out, float* lse, const Acc& o,
                                               const float (&m)[2], float (&l)[2], int q0,
                                               int T, int C, int NH, int b, int h) {
  const int warp = threadIdx.x / 32;
  float inv_l[2];
  const int row0 = q0 + warp * 16;
#pragma unroll
  for (int r = 0; r < 2; r++) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv_l[r] = 1.f / l[r];
    const int i = row0 + acc_row(2 * r);
    if (lse && threadIdx.x % 4 == 0 && i < T)
      lse[(size_t(b) * NH + h) * T + i] = m[r] * kLn2 + logf(l[r]);
  }
  store_rows(out + size_t(b) * T * C + size_t(h) * kHS, C, row0, T, o, inv_l);
}

__global__ void __launch_bounds__(kThreads)
    forward_kernel(bf* out, float* lse, const bf* qkv, int T, int C, int NH, float scale_log2) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf* qs = reinterpret_cast<bf*>(smem);
  bf* ks = qs + kTile;      // 2 buffers
  bf* vs = ks + 2 * kTile;  // 2 buffers
  const Block blk = block_of(NH);
  const int qt = (T - 1) / kRows - blk.tile, h = blk.h, b = blk.b;
  const int warp = threadIdx.x / 32, q0 = qt * kRows;
  const size_t row = 3 * size_t(C);
  const bf* q_g = qkv + size_t(b) * T * row + size_t(h) * kHS;
  load_tile(qs, q_g, row, q0, T);
  load_tile(ks, q_g + C, row, 0, T);
  load_tile(vs, q_g + 2 * C, row, 0, T);
  commit();

  AFrag qa;
  Acc o = {}, s;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  for (int t = 0; t <= qt; t++) {
    if (t < qt) {
      load_tile(ks + (t + 1) % 2 * kTile, q_g + C, row, (t + 1) * kRows, T);
      load_tile(vs + (t + 1) % 2 * kTile, q_g + 2 * C, row, (t + 1) * kRows, T);
    }
    commit();
    wait_all_but_newest();
    if (t == 0) load_a(qa, qs + warp * 16 * kStride);
    mma_abt(s, qa, ks + t % 2 * kTile);
    if (t == qt) mask_diagonal(s);
    online_softmax(s, o, m, l, scale_log2);
    AFrag pa;
    to_a(pa, s);
    mma_ab(o, pa, vs + t % 2 * kTile);
    __syncthreads();  // the next iteration's prefetch overwrites this buffer
  }
  finish_forward(out, lse, o, m, l, q0, T, C, NH, b, h);
}

// The kernels on Hopper's warpgroup MMA (wgmma, sm_90a): forward_wgmma_kernel,
// dq_wgmma_kernel and dkdv_wgmma_kernel have the same tiles, softmax and arithmetic as
// forward_kernel, dq_kernel and dkdv_kernel, and their outputs are equal bit for bit
// (tools/bench_attention checks it on every shape it times; tests/test_attention.cpp holds
// whichever path attention_forward/backward take to the CPU reference: wgmma in a 90a
// build on Hopper, mma.sync in a 90 build). But each 64 x 64 x 16 product of the block's
// four warps is one asynchronous instruction reading its operands from shared memory (P
// and dS stay in registers as the A operand, as above), and independent products (S and
// dP; dV and dK) are issued together. Tiles are stored in the 128-byte swizzle the
// instruction's descriptors describe: row r (64 bf16 = 128 bytes) at r * 128, its 16-byte
// chunk j at (j ^ r % 8) * 16, so the eight rows an access reads fall in distinct banks.
// Measured (tools/bench_attention, H200, same run, T 1024, B 8/16 x NH 12/16): forward
// 1.20-1.22x, backward 1.27-1.29x the mma.sync kernels (B 16 NH 12: 0.133 -> 0.110 ms and
// 0.410 -> 0.323 ms). bench_train against the same tree built for sm_90 (H200, same call,
// two runs each): d12 B 16 32.1 / 32.2 -> 30.8 / 30.6 ms, d24 B 16 81.9 / 82.0 -> 78.3 /
// 77.8 ms. Tried for the forward (same session, H200) and slower: the plain core-matrix
// layout without swizzle (0.200 ms: bank conflicts), 128-key tiles (0.114), the next
// tile's S = Q K^T issued before this tile's softmax (0.118).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void load_tile_sw(unsigned char* dst, const bf* src, size_t stride,
                                             int r0, int T) {
  for (int c = threadIdx.x; c < kRows * 8; c += kThreads) {
    const int r = c / 8, j = c % 8;
    const bool valid = r0 + r < T;
    const bf* g = src + size_t(valid ? r0 + r : 0) * stride + j * 8;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                     smem_u32(dst + r * 128 + (j ^ (r & 7)) * 16)),
                 "l"(g), "r"(valid ? 16 : 0));
  }
}
// Shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride
// byte offsets (each >> 4). K-major operands (Q, K: the product's k runs along the row)
// use stride 1024 between 8-row groups and advance the start by 32 bytes per k16 step;
// V, transposed (k runs down the rows), steps 16 rows = 2048 bytes and takes 1024 for both.
__device__ __forceinline__ uint64_t sw_desc(const void* p, int lbo, int sbo) {
  return (uint64_t(smem_u32(p) & 0x3FFFF) >> 4) | (uint64_t((lbo >> 4) & 0x3FFF) << 16) |
         (uint64_t((sbo >> 4) & 0x3FFF) << 32) | (uint64_t(1) << 62);
}
#define GPT2_ACC32(a)                                                                        \
  "+f"(a[0][0]), "+f"(a[0][1]), "+f"(a[0][2]), "+f"(a[0][3]), "+f"(a[1][0]), "+f"(a[1][1]),  \
      "+f"(a[1][2]), "+f"(a[1][3]), "+f"(a[2][0]), "+f"(a[2][1]), "+f"(a[2][2]),             \
      "+f"(a[2][3]), "+f"(a[3][0]), "+f"(a[3][1]), "+f"(a[3][2]), "+f"(a[3][3]),             \
      "+f"(a[4][0]), "+f"(a[4][1]), "+f"(a[4][2]), "+f"(a[4][3]), "+f"(a[5][0]),             \
      "+f"(a[5][1]), "+f"(a[5][2]), "+f"(a[5][3]), "+f"(a[6][0]), "+f"(a[6][1]),             \
      "+f"(a[6][2]), "+f"(a[6][3]), "+f"(a[7][0]), "+f"(a[7][1]), "+f"(a[7][2]), "+f"(a[7][3])
#define GPT2_REGS32                                                                          \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23," \
  "%24,%25,%26,%27,%28,%29,%30,%31}"
// acc (= or +=) A B^T over k16, A and B K-major in shared memory. The accumulator layout
// per warp is Acc's (warp w holds rows 16w .. 16w + 15).
__device__ __forceinline__ void wgmma_ss(Acc& acc, uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " GPT2_REGS32
      ", %32, %33, p, 1, 1, 0, 0;\n}\n"
      : GPT2_ACC32(acc)
      : "l"(a), "l"(b), "r"(accumulate));
}
// acc += A B over k16, A from registers (one AFrag k-step per warp), B transposed.
__device__ __forceinline__ void wgmma_rs(Acc& acc, const unsigned (&a)[4], uint64_t b) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " GPT2_REGS32
               ", {%32,%33,%34,%35}, %36, 1, 1, 1, 1;\n"
               : GPT2_ACC32(acc)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
#undef GPT2_ACC32
#undef GPT2_REGS32
// Issue the instructions queued since the last fence and wait for all of them.
// wait_all_but_newest for tiles that wgmma reads: cp.async wrote them through the generic
// proxy, wgmma reads through the async one, so each thread fences its copies first.
__device__ __forceinline__ void wait_all_but_newest_for_wgmma() {
  asm volatile("cp.async.wait_group 1;\n");
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.commit_group.sync.aligned;\nwgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
#endif

__global__ void __launch_bounds__(kThreads)
    forward_wgmma_kernel(bf* out, float* lse, const bf* qkv, int T, int C, int NH,
                         float scale_log2) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kBytes = kRows * kHS * 2;
  extern __shared__ __align__(1024) unsigned char smem[];  // swizzle atoms: 1024-aligned
  unsigned char* qs = smem;
  unsigned char* ks = qs + kBytes;      // 2 buffers
  unsigned char* vs = ks + 2 * kBytes;  // 2 buffers
  const Block blk = block_of(NH);
  const int qt = (T - 1) / kRows - blk.tile, h = blk.h, b = blk.b;
  const int q0 = qt * kRows;
  const size_t row = 3 * size_t(C);
  const bf* q_g = qkv + size_t(b) * T * row + size_t(h) * kHS;
  load_tile_sw(qs, q_g, row, q0, T);
  load_tile_sw(ks, q_g + C, row, 0, T);
  load_tile_sw(vs, q_g + 2 * C, row, 0, T);
  commit();
  Acc o = {}, s;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  for (int t = 0; t <= qt; t++) {
    if (t < qt) {
      load_tile_sw(ks + (t + 1) % 2 * kBytes, q_g + C, row, (t + 1) * kRows, T);
      load_tile_sw(vs + (t + 1) % 2 * kBytes, q_g + 2 * C, row, (t + 1) * kRows, T);
    }
    commit();
    wait_all_but_newest_for_wgmma();
    const unsigned char* kt = ks + t % 2 * kBytes;
    const unsigned char* vt = vs + t % 2 * kBytes;
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < 4; k++)
      wgmma_ss(s, sw_desc(qs + k * 32, 16, 1024), sw_desc(kt + k * 32, 16, 1024), k > 0);
    wgmma_wait();
    if (t == qt) mask_diagonal(s);
    online_softmax(s, o, m, l, scale_log2);
    AFrag pa;
    to_a(pa, s);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < 4; k++) wgmma_rs(o, pa[k], sw_desc(vt + k * 2048, 1024, 1024));
    wgmma_wait();
    __syncthreads();  // the next iteration's prefetch overwrites this buffer
  }
  finish_forward(out, lse, o, m, l, q0, T, C, NH, b, h);
#else
  __trap();  // launched only where wgmma_available() found sm_90a code and a Hopper GPU
#endif
}

// dq's dS = P (dP - delta), in place of S, with P = 2^(S scale - lse) recomputed from the
// (base-2) lse of the warp's two rows; in the diagonal tile keys after the query get
// P = 0 (their exp may be inf).
__device__ __forceinline__ void dq_ds(Acc& s, const Acc& dp, const float (&lse2)[2],
                                      const float (&dl)[2], bool diagonal, float scale_log2) {
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int n = 0; n < 8; n++)
#pragma unroll
    for (int e = 0; e < 4; e++) s[n][e] = exp2_mufu(fmaf(s[n][e], scale_log2, -lse2[e / 2]));
  if (diagonal)
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int e = 0; e < 4; e++)
        if (acc_col(n, e) > warp * 16 + acc_row(e)) s[n][e] = 0.f;
#pragma unroll
  for (int n = 0; n < 8; n++)
#pragma unroll
    for (int e = 0; e < 4; e++) s[n][e] *= dp[n][e] - dl[e / 2];
}

// dkdv's transposed tiles: S^T becomes P^T and dP^T becomes dS^T = P^T (dP^T - delta),
// with the query tile's lse (l2, base 2) and delta (d) per column; in the diagonal tile
// queries before the key get P = 0 (their exp may be inf).
__device__ __forceinline__ void dkdv_ds(Acc& s, Acc& dp, const float* l2, const float* d,
                                        bool diagonal, float scale_log2) {
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int n = 0; n < 8; n++)
#pragma unroll
    for (int e = 0; e < 4; e++)
      s[n][e] = exp2_mufu(fmaf(s[n][e], scale_log2, -l2[acc_col(n, e)]));
  if (diagonal)
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int e = 0; e < 4; e++)
        if (acc_col(n, e) < warp * 16 + acc_row(e)) s[n][e] = 0.f;
#pragma unroll
  for (int n = 0; n < 8; n++)
#pragma unroll
    for (int e = 0; e < 4; e++) dp[n][e] = s[n][e] * (dp[n][e] - d[acc_col(n, e)]);
}

// Query tile t's base-2 lse and delta into buffer t % 2 of dkdv's statistics. Queries past
// T get lse = +inf, so their p = exp2(s - inf) = 0.
__device__ __forceinline__ void load_stats(float* lse2s, float* dls, const float* lse_bh,
                                           const float* delta_bh, int t, int T) {
  if (threadIdx.x < kRows) {
    const int i = t * kRows + threadIdx.x, buf = t % 2 * kRows;
    lse2s[buf + threadIdx.x] = i < T ? lse_bh[i] * kLog2e : INFINITY;
    dls[buf + threadIdx.x] = i < T ? delta_bh[i] : 0.f;
  }
}

// Runs before dkdv_kernel: it also computes delta_i = dO_i . O_i for its queries (the
// dO tile is loaded anyway) and stores it for dkdv.
__global__ void __launch_bounds__(kThreads, 3)
    dq_kernel(bf* dqkv, float* delta, const bf* dout, const bf* qkv, const bf* out,
              const float* lse, int T, int C, int NH, float scale, float scale_log2) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf* qs = reinterpret_cast<bf*>(smem);
  bf* dos = qs + kTile;
  bf* ks = dos + kTile;     // 2 buffers
  bf* vs = ks + 2 * kTile;  // 2 buffers
  bf* os = vs + 2 * kTile;
  float* dls = reinterpret_cast<float*>(os + kTile);  // [kRows]
  const Block blk = block_of(NH);
  const int qt = (T - 1) / kRows - blk.tile, h = blk.h, b = blk.b;
  const int warp = threadIdx.x / 32, q0 = qt * kRows, row0 = q0 + warp * 16;
  const size_t row = 3 * size_t(C), head = size_t(b) * T * C + size_t(h) * kHS;
  const bf* q_g = qkv + size_t(b) * T * row + size_t(h) * kHS;
  load_tile(qs, q_g, row, q0, T);
  load_tile(dos, dout + head, C, q0, T);
  load_tile(os, out + head, C, q0, T);
  load_tile(ks, q_g + C, row, 0, T);
  load_tile(vs, q_g + 2 * C, row, 0, T);
  commit();

  float lse2[2], dl[2];
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int i = row0 + acc_row(2 * r);
    lse2[r] = i < T ? lse[(size_t(b) * NH + h) * T + i] * kLog2e : 0.f;
  }
  Acc dq = {}, s, dp;
  for (int t = 0; t <= qt; t++) {
    if (t < qt) {
      load_tile(ks + (t + 1) % 2 * kTile, q_g + C, row, (t + 1) * kRows, T);
      load_tile(vs + (t + 1) % 2 * kTile, q_g + 2 * C, row, (t + 1) * kRows, T);
    }
    commit();
    wait_all_but_newest();
    if (t == 0) {
      // Two threads per query, 32 channels each; rows past T are zero-filled: delta 0.
      const int r = threadIdx.x / 2, c0 = threadIdx.x % 2 * (kHS / 2);
      float sum = 0.f;
#pragma unroll
      for (int c = c0; c < c0 + kHS / 2; c += 2) {
        const float2 x = __bfloat1622float2(
            *reinterpret_cast<const __nv_bfloat162*>(dos + r * kStride + c));
        const float2 y = __bfloat1622float2(
            *reinterpret_cast<const __nv_bfloat162*>(os + r * kStride + c));
        sum += x.x * y.x + x.y * y.y;
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      if (threadIdx.x % 2 == 0) {
        dls[r] = sum;
        if (q0 + r < T) delta[(size_t(b) * NH + h) * T + q0 + r] = sum;
      }
      __syncthreads();
      dl[0] = dls[warp * 16 + acc_row(0)];
      dl[1] = dls[warp * 16 + acc_row(2)];
    }
    const bf* kt = ks + t % 2 * kTile;
    {
      // Q and dO fragments are reloaded per tile (8 ldmatrix) rather than held: 32 registers.
      AFrag a;
      load_a(a, qs + warp * 16 * kStride);
      mma_abt(s, a, kt);
      load_a(a, dos + warp * 16 * kStride);
      mma_abt(dp, a, vs + t % 2 * kTile);
    }
    dq_ds(s, dp, lse2, dl, t == qt, scale_log2);
    AFrag dsa;
    to_a(dsa, s);
    mma_ab(dq, dsa, kt);
    __syncthreads();
  }
  const float sc[2] = {scale, scale};
  store_rows(dqkv + size_t(b) * T * row + size_t(h) * kHS, row, row0, T, dq, sc);
}

// dq_kernel on wgmma (see above): S = Q K^T and dP = dO V^T issued together, then
// dQ += dS K with K transposed.
__global__ void __launch_bounds__(kThreads, 3)
    dq_wgmma_kernel(bf* dqkv, float* delta, const bf* dout, const bf* qkv, const bf* out,
                    const float* lse, int T, int C, int NH, float scale, float scale_log2) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kBytes = kRows * kHS * 2;
  extern __shared__ __align__(1024) unsigned char smem[];
  unsigned char* qs = smem;
  unsigned char* dos = qs + kBytes;
  unsigned char* ks = dos + kBytes;     // 2 buffers
  unsigned char* vs = ks + 2 * kBytes;  // 2 buffers
  unsigned char* os = vs + 2 * kBytes;
  float* dls = reinterpret_cast<float*>(os + kBytes);  // [kRows]
  const Block blk = block_of(NH);
  const int qt = (T - 1) / kRows - blk.tile, h = blk.h, b = blk.b;
  const int warp = threadIdx.x / 32, q0 = qt * kRows, row0 = q0 + warp * 16;
  const size_t row = 3 * size_t(C), head = size_t(b) * T * C + size_t(h) * kHS;
  const bf* q_g = qkv + size_t(b) * T * row + size_t(h) * kHS;
  load_tile_sw(qs, q_g, row, q0, T);
  load_tile_sw(dos, dout + head, C, q0, T);
  load_tile_sw(os, out + head, C, q0, T);
  load_tile_sw(ks, q_g + C, row, 0, T);
  load_tile_sw(vs, q_g + 2 * C, row, 0, T);
  commit();
  float lse2[2], dl[2];
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int i = row0 + acc_row(2 * r);
    lse2[r] = i < T ? lse[(size_t(b) * NH + h) * T + i] * kLog2e : 0.f;
  }
  Acc dq = {}, s, dp;
  for (int t = 0; t <= qt; t++) {
    if (t < qt) {
      load_tile_sw(ks + (t + 1) % 2 * kBytes, q_g + C, row, (t + 1) * kRows, T);
      load_tile_sw(vs + (t + 1) % 2 * kBytes, q_g + 2 * C, row, (t + 1) * kRows, T);
    }
    commit();
    wait_all_but_newest_for_wgmma();
    if (t == 0) {
      // delta as dq_kernel computes it, reading the swizzled rows.
      const int r = threadIdx.x / 2, c0 = threadIdx.x % 2 * (kHS / 2);
      float sum = 0.f;
#pragma unroll
      for (int c = c0; c < c0 + kHS / 2; c += 2) {
        const int at = r * 128 + ((c / 8) ^ (r & 7)) * 16 + c % 8 * 2;
        const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(dos + at));
        const float2 y = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(os + at));
        sum += x.x * y.x + x.y * y.y;
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      if (threadIdx.x % 2 == 0) {
        dls[r] = sum;
        if (q0 + r < T) delta[(size_t(b) * NH + h) * T + q0 + r] = sum;
      }
      __syncthreads();
      dl[0] = dls[warp * 16 + acc_row(0)];
      dl[1] = dls[warp * 16 + acc_row(2)];
    }
    const unsigned char* kt = ks + t % 2 * kBytes;
    const unsigned char* vt = vs + t % 2 * kBytes;
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < 4; k++)
      wgmma_ss(s, sw_desc(qs + k * 32, 16, 1024), sw_desc(kt + k * 32, 16, 1024), k > 0);
#pragma unroll
    for (int k = 0; k < 4; k++)
      wgmma_ss(dp, sw_desc(dos + k * 32, 16, 1024), sw_desc(vt + k * 32, 16, 1024), k > 0);
    wgmma_wait();
    dq_ds(s, dp, lse2, dl, t == qt, scale_log2);
    AFrag dsa;
    to_a(dsa, s);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < 4; k++) wgmma_rs(dq, dsa[k], sw_desc(kt + k * 2048, 1024, 1024));
    wgmma_wait();
    __syncthreads();
  }
  const float sc[2] = {scale, scale};
  store_rows(dqkv + size_t(b) * T * row + size_t(h) * kHS, row, row0, T, dq, sc);
#else
  __trap();  // launched only where attention_wgmma_available()
#endif
}

__global__ void __launch_bounds__(kThreads, 3)
    dkdv_kernel(bf* dqkv, const bf* dout, const bf* qkv, const float* lse, const float* delta,
                int T, int C, int NH, float scale, float scale_log2) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf* ks = reinterpret_cast<bf*>(smem);
  bf* vs = ks + kTile;
  bf* qs = vs + kTile;       // 2 buffers
  bf* dos = qs + 2 * kTile;  // 2 buffers
  float* lse2s = reinterpret_cast<float*>(dos + 2 * kTile);  // [2][kRows]
  float* dls = lse2s + 2 * kRows;                            // [2][kRows]
  const Block blk = block_of(NH);
  const int kt = blk.tile, h = blk.h, b = blk.b, nq = (T + kRows - 1) / kRows;
  const int warp = threadIdx.x / 32, k0 = kt * kRows, row0 = k0 + warp * 16;
  const size_t row = 3 * size_t(C);
  const bf* q_g = qkv + size_t(b) * T * row + size_t(h) * kHS;
  const bf* do_g = dout + size_t(b) * T * C + size_t(h) * kHS;
  const float* lse_bh = lse + (size_t(b) * NH + h) * T;
  const float* delta_bh = delta + (size_t(b) * NH + h) * T;
  load_tile(ks, q_g + C, row, k0, T);
  load_tile(vs, q_g + 2 * C, row, k0, T);
  load_tile(qs + kt % 2 * kTile, q_g, row, k0, T);
  load_tile(dos + kt % 2 * kTile, do_g, C, k0, T);
  load_stats(lse2s, dls, lse_bh, delta_bh, kt, T);
  commit();

  Acc dk = {}, dv = {}, s, dp;
  for (int t = kt; t < nq; t++) {
    if (t + 1 < nq) {
      load_tile(qs + (t + 1) % 2 * kTile, q_g, row, (t + 1) * kRows, T);
      load_tile(dos + (t + 1) % 2 * kTile, do_g, C, (t + 1) * kRows, T);
      load_stats(lse2s, dls, lse_bh, delta_bh, t + 1, T);
    }
    commit();
    wait_all_but_newest();
    const bf* qtile = qs + t % 2 * kTile;
    const bf* dotile = dos + t % 2 * kTile;
    const float* l2 = lse2s + t % 2 * kRows;
    const float* d = dls + t % 2 * kRows;
    {
      // K and V fragments are reloaded per tile (8 ldmatrix) rather than held: 32 registers.
      AFrag ka;
      load_a(ka, ks + warp * 16 * kStride);
      mma_abt(s, ka, qtile);  // S^T: rows are this warp's keys, columns the tile's queries
      load_a(ka, vs + warp * 16 * kStride);
      mma_abt(dp, ka, dotile);  // dP^T
    }
    dkdv_ds(s, dp, l2, d, t == kt, scale_log2);
    AFrag pa;
    to_a(pa, s);
    mma_ab(dv, pa, dotile);
    to_a(pa, dp);
    mma_ab(dk, pa, qtile);
    __syncthreads();  // the next iteration's prefetch overwrites these buffers
  }
  bf* g = dqkv + size_t(b) * T * row + size_t(h) * kHS;
  const float sk[2] = {scale, scale}, one[2] = {1.f, 1.f};
  store_rows(g + C, row, row0, T, dk, sk);
  store_rows(g + 2 * C, row, row0, T, dv, one);
}

// dkdv_kernel on wgmma (see above): S^T = K Q^T and dP^T = V dO^T issued together, then
// dV += P^T dO and dK += dS^T Q together (dO and Q transposed).
__global__ void __launch_bounds__(kThreads, 3)
    dkdv_wgmma_kernel(bf* dqkv, const bf* dout, const bf* qkv, const float* lse,
                      const float* delta, int T, int C, int NH, float scale, float scale_log2) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kBytes = kRows * kHS * 2;
  extern __shared__ __align__(1024) unsigned char smem[];
  unsigned char* ks = smem;
  unsigned char* vs = ks + kBytes;
  unsigned char* qs = vs + kBytes;        // 2 buffers
  unsigned char* dos = qs + 2 * kBytes;   // 2 buffers
  float* lse2s = reinterpret_cast<float*>(dos + 2 * kBytes);  // [2][kRows]
  float* dls = lse2s + 2 * kRows;                              // [2][kRows]
  const Block blk = block_of(NH);
  const int kt = blk.tile, h = blk.h, b = blk.b, nq = (T + kRows - 1) / kRows;
  const int warp = threadIdx.x / 32, k0 = kt * kRows, row0 = k0 + warp * 16;
  const size_t row = 3 * size_t(C);
  const bf* q_g = qkv + size_t(b) * T * row + size_t(h) * kHS;
  const bf* do_g = dout + size_t(b) * T * C + size_t(h) * kHS;
  const float* lse_bh = lse + (size_t(b) * NH + h) * T;
  const float* delta_bh = delta + (size_t(b) * NH + h) * T;
  load_tile_sw(ks, q_g + C, row, k0, T);
  load_tile_sw(vs, q_g + 2 * C, row, k0, T);
  load_tile_sw(qs + kt % 2 * kBytes, q_g, row, k0, T);
  load_tile_sw(dos + kt % 2 * kBytes, do_g, C, k0, T);
  load_stats(lse2s, dls, lse_bh, delta_bh, kt, T);
  commit();
  Acc dk = {}, dv = {}, s, dp;
  for (int t = kt; t < nq; t++) {
    if (t + 1 < nq) {
      load_tile_sw(qs + (t + 1) % 2 * kBytes, q_g, row, (t + 1) * kRows, T);
      load_tile_sw(dos + (t + 1) % 2 * kBytes, do_g, C, (t + 1) * kRows, T);
      load_stats(lse2s, dls, lse_bh, delta_bh, t + 1, T);
    }
    commit();
    wait_all_but_newest_for_wgmma();
    const unsigned char* qtile = qs + t % 2 * kBytes;
    const unsigned char* dotile = dos + t % 2 * kBytes;
    const float* l2 = lse2s + t % 2 * kRows;
    const float* d = dls + t % 2 * kRows;
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < 4; k++)
      wgmma_ss(s, sw_desc(ks + k * 32, 16, 1024), sw_desc(qtile + k * 32, 16, 1024), k > 0);
#pragma unroll
    for (int k = 0; k < 4; k++)
      wgmma_ss(dp, sw_desc(vs + k * 32, 16, 1024), sw_desc(dotile + k * 32, 16, 1024), k > 0);
    wgmma_wait();
    dkdv_ds(s, dp, l2, d, t == kt, scale_log2);
    AFrag pa, dsa;
    to_a(pa, s);
    to_a(dsa, dp);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < 4; k++) wgmma_rs(dv, pa[k], sw_desc(dotile + k * 2048, 1024, 1024));
#pragma unroll
    for (int k = 0; k < 4; k++) wgmma_rs(dk, dsa[k], sw_desc(qtile + k * 2048, 1024, 1024));
    wgmma_wait();
    __syncthreads();  // the next iteration's prefetch overwrites these buffers
  }
  bf* g = dqkv + size_t(b) * T * row + size_t(h) * kHS;
  const float sk[2] = {scale, scale}, one[2] = {1.f, 1.f};
  store_rows(g + C, row, row0, T, dk, sk);
  store_rows(g + 2 * C, row, row0, T, dv, one);
#else
  __trap();  // launched only where attention_wgmma_available()
#endif
}

}  // namespace

bool attention_mma_supports(int HS) { return HS == kHS; }

bool attention_wgmma_available() {
#if defined(TRAIN_GPT2_WGMMA)
  int device = 0, major = 0, minor = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0;
#else
  return false;
#endif
}

void attention_forward_mma(bf* out, float* lse, const bf* qkv, int B, int T, int C, int NH,
                           bool allow_wgmma) {
  const float scale_log2 = kLog2e * rsqrtf(float(kHS));
  if (allow_wgmma && attention_wgmma_available()) {
    const size_t smem = 5 * kRows * kHS * sizeof(bf);  // 40 KiB: Q, two K and two V tiles
    forward_wgmma_kernel<<<grid_of(B, T, NH), kThreads, smem, compute_stream()>>>(
        out, lse, qkv, T, C, NH, scale_log2);
  } else {
    const size_t smem = 5 * kTile * sizeof(bf);  // 45 KiB (Q, two K and two V buffers) < 48
    forward_kernel<<<grid_of(B, T, NH), kThreads, smem, compute_stream()>>>(out, lse, qkv, T, C, NH,
                                                                            scale_log2);
  }
  CUDA_CHECK_LAUNCH();
}

void attention_backward_mma(bf* dqkv, float* delta, const bf* dout, const bf* qkv,
                            const bf* out, const float* lse, int B, int T, int C, int NH,
                            bool allow_wgmma) {
  const float scale = rsqrtf(float(kHS));
  const dim3 grid = grid_of(B, T, NH);
  if (allow_wgmma && attention_wgmma_available()) {
    // The same tiles unpadded (64 x 128 bytes) plus the statistics.
    const size_t dq_w = 7 * kRows * kHS * sizeof(bf) + kRows * sizeof(float);
    const size_t dkdv_w = 6 * kRows * kHS * sizeof(bf) + 4 * kRows * sizeof(float);
    CUDA_CHECK(cudaFuncSetAttribute(dq_wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    int(dq_w)));
    CUDA_CHECK(cudaFuncSetAttribute(dkdv_wgmma_kernel,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(dkdv_w)));
    dq_wgmma_kernel<<<grid, kThreads, dq_w, compute_stream()>>>(dqkv, delta, dout, qkv, out, lse, T,
                                                                C, NH, scale, scale * kLog2e);
    CUDA_CHECK_LAUNCH();
    dkdv_wgmma_kernel<<<grid, kThreads, dkdv_w, compute_stream()>>>(dqkv, dout, qkv, lse, delta, T,
                                                                    C, NH, scale, scale * kLog2e);
    CUDA_CHECK_LAUNCH();
    return;
  }
  // Both above the 48 KiB default: 7 tiles (Q, dO, O, two K, two V) and delta in dq;
  // 6 tiles (K, V, two Q, two dO) and the per-query statistics in dkdv.
  const size_t dq_smem = 7 * kTile * sizeof(bf) + kRows * sizeof(float);
  const size_t dkdv_smem = 6 * kTile * sizeof(bf) + 4 * kRows * sizeof(float);
  CUDA_CHECK(cudaFuncSetAttribute(dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(dq_smem)));
  CUDA_CHECK(cudaFuncSetAttribute(dkdv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(dkdv_smem)));
  dq_kernel<<<grid, kThreads, dq_smem, compute_stream()>>>(dqkv, delta, dout, qkv, out, lse, T, C,
                                                           NH, scale, scale * kLog2e);
  CUDA_CHECK_LAUNCH();
  dkdv_kernel<<<grid, kThreads, dkdv_smem, compute_stream()>>>(dqkv, dout, qkv, lse, delta, T, C,
                                                               NH, scale, scale * kLog2e);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gpt2::cuda
