// Every byte a run allocates on its compute device goes through a Device, which files
// it under one category. The run prints this ledger at start and its peak at the end;
// `train_gpt2 memory` predicts the same ledger analytically, and tests hold the two
// equal on the CPU.
#pragma once
#include <array>
#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>

namespace gpt2 {

enum class MemCategory {
  params, master_weights, grads, optimizer_state, activations, workspace, communication, count
};
constexpr int kMemCategories = int(MemCategory::count);
const char* mem_category_name(MemCategory c);

struct MemoryLedger {
  std::array<size_t, kMemCategories> current{};
  std::array<size_t, kMemCategories> peak{};  // per-category high-water marks
  size_t total = 0;
  size_t total_peak = 0;  // high-water mark of the sum (not the sum of the peaks)

  void add(MemCategory c, size_t bytes);
  void remove(MemCategory c, size_t bytes);
};

// A compute device's memory: CPU (aligned host memory) or one CUDA GPU.
// Device work queued the same way again and again: a training step's forward and
// backward. run(work) queues what `work` queues. A CUDA device runs `work` directly the
// first time (one-time setup such as lazy allocations happens then), records it into a
// CUDA graph the second time, and from then on launches that graph without calling
// `work`: one launch instead of some 400, and shorter gaps between the kernels. So
// `work` must queue the same operations on the same buffers each time and leave no host
// state that a later call relies on; what changes between calls (inputs, targets) must
// be in device memory, copied outside `work`.
class Replay {
 public:
  virtual ~Replay() = default;
  virtual void run(const std::function<void()>& work) { work(); }
  virtual bool recorded() const { return false; }  // run() launches a recording now
};

// Times work queued on a device as the device runs it: start() and stop() mark the
// queue, ms() waits for the stop mark and returns the milliseconds between the marks. On
// the CPU, where queued work runs as it is queued, the host clock.
class Stopwatch {
 public:
  virtual ~Stopwatch() = default;
  virtual void start() { t0_ = std::chrono::steady_clock::now(); }
  virtual void stop() { t1_ = std::chrono::steady_clock::now(); }
  virtual double ms() { return std::chrono::duration<double, std::milli>(t1_ - t0_).count(); }

 private:
  std::chrono::steady_clock::time_point t0_, t1_;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual bool is_cuda() const = 0;
  // Zero-filled, 256-byte aligned. Throws Error (naming `what` and the ledger) if out of memory.
  void* alloc(size_t bytes, MemCategory c, const std::string& what);
  void free(void* p);
  virtual void to_host(void* host, const void* dev, size_t bytes) = 0;
  virtual void to_device(void* dev, const void* host, size_t bytes) = 0;
  virtual void zero(void* dev, size_t bytes) = 0;
  virtual void synchronize() {}
  // A Replay for work queued on this device; other devices just run it.
  virtual std::unique_ptr<Replay> make_replay() { return std::make_unique<Replay>(); }
  virtual std::unique_ptr<Stopwatch> make_stopwatch() { return std::make_unique<Stopwatch>(); }
  // Whether a Replay of this device holds recorded work: the buffers it uses must stay.
  virtual bool holds_recording() const { return false; }
  // Bytes in use on the device as its driver sees them (cudaMemGetInfo: total - free,
  // which includes the CUDA context and other processes); 0 where not applicable (CPU).
  virtual size_t driver_bytes_in_use() const { return 0; }
  const MemoryLedger& ledger() const { return ledger_; }

 protected:
  virtual void* raw_alloc(size_t bytes) = 0;  // nullptr when out of memory
  virtual void raw_free(void* p) = 0;

 private:
  struct Block { size_t bytes; MemCategory category; };
  std::map<void*, Block> blocks_;
  MemoryLedger ledger_;
};

class CpuDevice final : public Device {
 public:
  bool is_cuda() const override { return false; }
  void to_host(void* host, const void* dev, size_t bytes) override;
  void to_device(void* dev, const void* host, size_t bytes) override;
  void zero(void* dev, size_t bytes) override;

 protected:
  void* raw_alloc(size_t bytes) override;
  void raw_free(void* p) override;
};

// A typed allocation that frees itself.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Device& dev, size_t n, MemCategory c, const std::string& what)
      : dev_(&dev), n_(n), p_(static_cast<T*>(dev.alloc(n * sizeof(T), c, what))) {}
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(dev_, o.dev_), std::swap(n_, o.n_), std::swap(p_, o.p_);
    return *this;
  }
  ~DeviceBuffer() { if (p_) dev_->free(p_); }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }

 private:
  Device* dev_ = nullptr;
  size_t n_ = 0;
  T* p_ = nullptr;
};

std::string format_bytes(double bytes);  // "1.23 GiB", "512.0 MiB", "42 B"

}  // namespace gpt2
