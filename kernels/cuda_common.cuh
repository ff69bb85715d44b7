// Shared by every kernel file: the device element types (float, __nv_bfloat16) and how
// they map from the host's storage types, fp32 load/store, and warp/block reductions.
// All arithmetic happens in fp32; bf16 is only a storage format.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <map>
#include <mutex>

#include "cuda_check.cuh"
#include "dtype.hpp"

namespace gpt2::cuda {

// Host storage type -> device element type (gpt2::bf16 and __nv_bfloat16 share a layout).
template <class T> struct DeviceType { using type = T; };
template <> struct DeviceType<gpt2::bf16> { using type = __nv_bfloat16; };
template <class T> using device_t = typename DeviceType<T>::type;

// Elements of D in one 16-byte vector access (8 bf16, 4 fp32).
template <class D>
constexpr int vec_elems() { return 16 / int(sizeof(D)); }

template <class T> device_t<T>* dev_ptr(T* p) { return reinterpret_cast<device_t<T>*>(p); }
template <class T> const device_t<T>* dev_ptr(const T* p) {
  return reinterpret_cast<const device_t<T>*>(p);
}

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class D> __device__ __forceinline__ D from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. Fixed reduction order, so deterministic. `shared` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < nwarps ? shared[lane] : 0.f;
  return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < nwarps ? shared[lane] : -INFINITY;
  return warp_max(v);
}

// The last-block pattern: true for the block that completes `ticket` at `total` arrivals
// (it also resets it), which then finishes from every block's partial results. Every
// thread's earlier writes are fenced first, so the finisher sees them.
__device__ __forceinline__ bool arrive(unsigned* ticket, unsigned total, bool* flag) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    *flag = atomicAdd(ticket, 1u) == total - 1;
    if (*flag) *ticket = 0;
  }
  __syncthreads();
  if (*flag) __threadfence();
  return *flag;
}

// make(device) for the current device, run once per device and kept for the process: for
// what the runtime wants asked or set per device (a kernel's opt-in shared memory, its
// occupancy) and is too slow to ask at every launch. Each call site, a Make type of its
// own, keeps its own results.
template <class Make>
auto once_per_device(const Make& make) {
  static std::mutex mutex;
  static std::map<int, decltype(make(0))> results;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = results.find(device); it != results.end()) return it->second;
  return results[device] = make(device);
}

// The stream every kernel, copy and cuBLASLt call of this host thread goes to: the
// per-thread default stream. Unlike the legacy default stream a CUDA graph can capture
// it (Device::make_replay), and it still orders itself after anything left on the legacy one.
inline cudaStream_t compute_stream() { return cudaStreamPerThread; }

// The stream the optimizer and gradient-arithmetic kernels (and their copies) run on.
// The compute stream, unless multi-GPU fused training moves each update behind its
// gradient's all-reduce on the communication stream, where it overlaps the rest of
// backward. Per host thread; set through UpdateStreamScope.
cudaStream_t update_stream();
class UpdateStreamScope {
 public:
  explicit UpdateStreamScope(cudaStream_t s);
  ~UpdateStreamScope();
  UpdateStreamScope(const UpdateStreamScope&) = delete;
  UpdateStreamScope& operator=(const UpdateStreamScope&) = delete;

 private:
  cudaStream_t saved_;
};
// Stream-ordered device-to-host copy on update_stream(), waiting for it to land.
void copy_to_host_on_update_stream(void* host, const void* dev, size_t bytes);

__host__ __device__ inline unsigned ceil_div(size_t a, size_t b) {
  return unsigned((a + b - 1) / b);
}

}  // namespace gpt2::cuda
