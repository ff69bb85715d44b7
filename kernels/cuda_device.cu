// The CUDA Device: cudaMalloc'ed memory filed in the run's memory ledger.
#include <cuda_runtime.h>

#include "backend.hpp"
#include "cuda_check.cuh"
#include "cuda_common.cuh"
#include "error.hpp"

namespace gpt2 {

bool cuda_usable(std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = cat("no usable CUDA driver/GPU: ", cudaGetErrorString(e));
    cudaGetLastError();
    return false;
  }
  if (n == 0) {
    if (why) *why = "no GPU found";
    return false;
  }
  return true;
}

int cuda_device_count(std::string* why) {
  int n = 0;
  if (!cuda_usable(why)) return 0;
  CUDA_CHECK(cudaGetDeviceCount(&n));
  return n;
}

PlanGpu plan_gpu() {
  PlanGpu g;
  if (!cuda_usable(nullptr)) {
    g.note = cat("no GPU here: workspace sized for an H100/H200 (", g.sms,
                 " SMs), without the encoder backward's CUB sort storage");
    return g;
  }
  // Device 0, as Factored asks: one process drives one kind of GPU.
  CUDA_CHECK(cudaDeviceGetAttribute(&g.sms, cudaDevAttrMultiProcessorCount, 0));
  g.present = true;
  g.note = cat("workspace sized for this machine's GPU 0 (", g.sms, " SMs)");
  return g;
}

// `recordings` counts the device's live recordings (Device::holds_recording).
class CudaReplay final : public Replay {
 public:
  explicit CudaReplay(int& recordings) : recordings_(recordings) {}
  ~CudaReplay() override {
    if (!exec_) return;
    cudaGraphExecDestroy(exec_);
    recordings_--;
  }
  void run(const std::function<void()>& work) override {
    const cudaStream_t s = cuda::compute_stream();
    if (!exec_ && runs_++ > 0) record(work, s);
    if (exec_) CUDA_CHECK(cudaGraphLaunch(exec_, s));
    else work();
  }
  bool recorded() const override { return exec_ != nullptr; }

 private:
  // Thread-local capture mode: a call in `work` that cannot be recorded (cudaMalloc, a
  // synchronizing copy) fails the capture instead of slipping past it.
  void record(const std::function<void()>& work, cudaStream_t s) {
    CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    cudaGraph_t graph = nullptr;
    try {
      work();
    } catch (...) {
      cudaStreamEndCapture(s, &graph);
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      throw;
    }
    CUDA_CHECK(cudaStreamEndCapture(s, &graph));
    const cudaError_t e = cudaGraphInstantiate(&exec_, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) fail("CUDA error ", cudaGetErrorString(e), " instantiating a graph");
    recordings_++;
  }
  int& recordings_;
  int runs_ = 0;
  cudaGraphExec_t exec_ = nullptr;
};

// Events on the compute stream: the update's time as the GPU runs it, host syncs and idle
// gaps inside it included, without a sync before start().
class CudaStopwatch final : public Stopwatch {
 public:
  CudaStopwatch() {
    CUDA_CHECK(cudaEventCreate(&start_));
    CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~CudaStopwatch() override { cudaEventDestroy(start_), cudaEventDestroy(stop_); }
  void start() override { CUDA_CHECK(cudaEventRecord(start_, cuda::compute_stream())); }
  void stop() override { CUDA_CHECK(cudaEventRecord(stop_, cuda::compute_stream())); }
  double ms() override {
    CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms;
  }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

class CudaDevice final : public Device {
 public:
  explicit CudaDevice(int gpu) : gpu_(gpu) { CUDA_CHECK(cudaSetDevice(gpu)); }
  bool is_cuda() const override { return true; }
  void to_host(void* host, const void* dev, size_t bytes) override {
    const cudaStream_t s = cuda::compute_stream();
    CUDA_CHECK(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
  }
  // From pageable memory (what callers pass) the copy is staged before the call returns,
  // so the host may reuse `host` at once; and unlike cudaMemcpy it does not wait for the
  // work queued before it, which would leave the device idle at every step's inputs.
  void to_device(void* dev, const void* host, size_t bytes) override {
    CUDA_CHECK(
        cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, cuda::compute_stream()));
  }
  void zero(void* dev, size_t bytes) override {
    CUDA_CHECK(cudaMemsetAsync(dev, 0, bytes, cuda::compute_stream()));
  }
  void synchronize() override { CUDA_CHECK(cudaDeviceSynchronize()); }
  std::unique_ptr<Replay> make_replay() override {
    return std::make_unique<CudaReplay>(recordings_);
  }
  bool holds_recording() const override { return recordings_ > 0; }
  std::unique_ptr<Stopwatch> make_stopwatch() override { return std::make_unique<CudaStopwatch>(); }
  size_t driver_bytes_in_use() const override {
    size_t free = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&free, &total));
    return total - free;
  }

 protected:
  void* raw_alloc(size_t bytes) override {
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    return p;
  }
  void raw_free(void* p) override { cudaFree(p); }

 private:
  int gpu_;
  int recordings_ = 0;
};

namespace {
thread_local cudaStream_t g_update_stream = nullptr;
}

namespace cuda {
cudaStream_t update_stream() { return g_update_stream ? g_update_stream : compute_stream(); }
UpdateStreamScope::UpdateStreamScope(cudaStream_t s) : saved_(g_update_stream) { g_update_stream = s; }
UpdateStreamScope::~UpdateStreamScope() { g_update_stream = saved_; }
void copy_to_host_on_update_stream(void* host, const void* dev, size_t bytes) {
  const cudaStream_t s = update_stream();
  CUDA_CHECK(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
}
}  // namespace cuda

std::unique_ptr<Device> make_cuda_device(int gpu) {
  std::string why;
  if (!cuda_usable(&why)) fail("train.device is cuda but ", why);
  return std::make_unique<CudaDevice>(gpu);
}

}  // namespace gpt2
