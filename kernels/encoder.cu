// Token + position embedding: out[b,t,:] = wte[inp[b,t],:] + wpe[t,:], and its backward.
// Forward launch: one thread per output element. Backward:
// - dwpe[t,c] += sum_b dout[b,t,c]: one thread per (t,c) looping over b in order.
// - dwte: a token may appear at many positions, so rows collide. Instead of atomics
//   (non-deterministic, and in bf16 each atomic would round) the positions are sorted by
//   token id with CUB's radix sort (stable, so equal tokens keep position order); then
//   one block per run of equal tokens sums its rows in fp32 and adds once to dwte.
//   Deterministic, one rounding per row. The sort costs far less than the matmuls.
#include <cub/device/device_radix_sort.cuh>

#include "cuda_check.cuh"
#include "kernels.cuh"

namespace gpt2::cuda {
namespace {

template <class D>
__global__ void encoder_forward_kernel(D* out, const int* inp, const D* wte, const D* wpe,
                                       int N, int T, int C) {
  const size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= size_t(N) * C) return;
  const int row = int(idx / C), c = int(idx % C), t = row % T;
  out[idx] = from_f<D>(to_f(wte[size_t(inp[row]) * C + c]) + to_f(wpe[size_t(t) * C + c]));
}

template <class D>
__global__ void wpe_backward_kernel(D* dwpe, const D* dout, int B, int T, int C) {
  const size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= size_t(T) * C) return;
  float sum = 0.f;
  for (int b = 0; b < B; b++) sum += to_f(dout[size_t(b) * T * C + idx]);
  dwpe[idx] = from_f<D>(to_f(dwpe[idx]) + sum);
}

__global__ void iota_kernel(int* v, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) v[i] = i;
}

// Block i handles sorted slot i only if it starts a run of equal tokens.
template <class D>
__global__ void wte_backward_kernel(D* dwte, const D* dout, const int* tokens,
                                    const int* rows, int N, int C) {
  const int start = blockIdx.x;
  const int token = tokens[start];
  if (start > 0 && tokens[start - 1] == token) return;
  int end = start + 1;
  while (end < N && tokens[end] == token) end++;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float sum = 0.f;
    for (int s = start; s < end; s++) sum += to_f(dout[size_t(rows[s]) * C + c]);
    D* w = dwte + size_t(token) * C + c;
    *w = from_f<D>(to_f(*w) + sum);
  }
}

size_t sort_temp_bytes(int N) {
  size_t bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, (const int*)nullptr, (int*)nullptr,
                                             (const int*)nullptr, (int*)nullptr, N));
  return bytes;
}

}  // namespace

template <class D>
void encoder_forward(D* out, const int* inp, const D* wte, const D* wpe, int B, int T, int C) {
  const size_t n = size_t(B) * T * C;
  if (n == 0) return;
  encoder_forward_kernel<<<ceil_div(n, 256), 256, 0, compute_stream()>>>(out, inp, wte, wpe, B * T,
                                                                         T, C);
  CUDA_CHECK_LAUNCH();
}

// Three int arrays of N (sorted tokens, positions, sorted positions) + CUB's temp storage.
size_t encoder_backward_scratch_bytes(int N) {
  return 3 * ((size_t(N) * sizeof(int) + 255) / 256 * 256) + sort_temp_bytes(N);
}

template <class D>
void encoder_backward(D* dwte, D* dwpe, const D* dout, const int* inp, int B, int T, int C,
                      void* scratch, size_t scratch_bytes) {
  const int N = B * T;
  if (N == 0) return;
  if (dwpe) {
    wpe_backward_kernel<<<ceil_div(size_t(T) * C, 256), 256, 0, compute_stream()>>>(dwpe, dout, B,
                                                                                    T, C);
    CUDA_CHECK_LAUNCH();
  }
  if (!dwte) return;
  const size_t arr = (size_t(N) * sizeof(int) + 255) / 256 * 256;
  char* p = static_cast<char*>(scratch);
  int* tokens = reinterpret_cast<int*>(p);
  int* positions = reinterpret_cast<int*>(p + arr);
  int* rows = reinterpret_cast<int*>(p + 2 * arr);
  void* temp = p + 3 * arr;
  size_t temp_bytes = scratch_bytes - 3 * arr;
  iota_kernel<<<ceil_div(N, 256), 256, 0, compute_stream()>>>(positions, N);
  CUDA_CHECK_LAUNCH();
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, inp, tokens, positions, rows, N, 0,
                                             int(sizeof(int) * 8), compute_stream()));
  wte_backward_kernel<<<N, 256, 0, compute_stream()>>>(dwte, dout, tokens, rows, N, C);
  CUDA_CHECK_LAUNCH();
}

template void encoder_forward<float>(float*, const int*, const float*, const float*, int, int,
                                     int);
template void encoder_forward<__nv_bfloat16>(__nv_bfloat16*, const int*, const __nv_bfloat16*,
                                             const __nv_bfloat16*, int, int, int);
template void encoder_backward<float>(float*, float*, const float*, const int*, int, int, int,
                                      void*, size_t);
template void encoder_backward<__nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*,
                                              const __nv_bfloat16*, const int*, int, int, int,
                                              void*, size_t);

}  // namespace gpt2::cuda
