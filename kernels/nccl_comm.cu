// Comm over NCCL (src/comm.hpp): one communicator per process, one GPU per rank.
// The communication stream is created non-blocking, so the legacy default stream does not
// serialize it with the compute stream (where forward and backward run); ordering between
// the two is only ever by events. Gradients are averaged with ncclAvg in their own dtype (bf16
// gradients as ncclBfloat16), in place.
//
// TRAIN_GPT2_SKIP_GRAD_REDUCE=1 turns reduce_grads (and ZeRO-1's reduce_to and
// broadcast) into no-ops, ordering kept: the ranks then drift
// apart, but the step time shows what communication costs that backward does not hide
// (tools/bench_dp.sh). Nothing else reads it.
#include <nccl.h>

#include <cstdlib>
#include <cstring>

#include "comm.hpp"
#include "cuda_check.cuh"
#include "cuda_common.cuh"
#include "memory.hpp"

#define NCCL_CHECK(call)                                                                  \
  do {                                                                                    \
    ncclResult_t r_ = (call);                                                             \
    if (r_ != ncclSuccess)                                                                \
      ::gpt2::fail("NCCL error ", ncclGetErrorString(r_), " in ", #call, " at ", __FILE__, \
                   ":", __LINE__, " (NCCL_DEBUG=WARN says more)");                        \
  } while (0)

namespace gpt2 {
namespace {

ncclDataType_t nccl_type(DType t) { return t == DType::f32 ? ncclFloat32 : ncclBfloat16; }

class NcclComm final : public Comm {
 public:
  NcclComm(const LaunchEnv& env, uint64_t config_hash, double timeout_s, Device& dev)
      : rank_(env.rank), world_(env.world_size),
        scratch_(dev, kCommScratchDoubles, MemCategory::communication, "all-reduce scratch (host values)") {
    // NVLink multicast (NVLS) reserves a lot of memory and is not needed here.
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    const char* skip = std::getenv("TRAIN_GPT2_SKIP_GRAD_REDUCE");
    skip_ = skip != nullptr && std::strcmp(skip, "1") == 0;
    ncclUniqueId id{};
    std::vector<uint8_t> blob;
    if (rank_ == 0) {
      NCCL_CHECK(ncclGetUniqueId(&id));
      blob.assign(reinterpret_cast<uint8_t*>(&id), reinterpret_cast<uint8_t*>(&id) + sizeof id);
    }
    blob = rendezvous(env, blob, config_hash, timeout_s);
    if (blob.size() != sizeof id)
      fail("rendezvous: rank 0 sent ", blob.size(), " bytes, not an NCCL id of ", sizeof id,
           " (do all ranks run the same train_gpt2 build?)");
    std::memcpy(&id, blob.data(), sizeof id);
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    for (cudaEvent_t* e : {&produced_, &done_, &marks_[0], &marks_[1]})
      CUDA_CHECK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
    NCCL_CHECK(ncclCommInitRank(&comm_, world_, id, rank_));
  }

  ~NcclComm() override {
    cudaStreamSynchronize(stream_);
    ncclCommDestroy(comm_);
    for (cudaEvent_t e : {produced_, done_, marks_[0], marks_[1]}) cudaEventDestroy(e);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int world() const override { return world_; }

  void all_reduce_sum(double* x, size_t n) override {
    for (size_t at = 0; at < n; at += kCommScratchDoubles) {
      const size_t m = std::min(kCommScratchDoubles, n - at);
      CUDA_CHECK(cudaMemcpyAsync(scratch_.get(), x + at, m * sizeof(double),
                                 cudaMemcpyHostToDevice, stream_));
      NCCL_CHECK(ncclAllReduce(scratch_.get(), scratch_.get(), m, ncclFloat64, ncclSum, comm_,
                               stream_));
      CUDA_CHECK(cudaMemcpyAsync(x + at, scratch_.get(), m * sizeof(double),
                                 cudaMemcpyDeviceToHost, stream_));
      CUDA_CHECK(cudaStreamSynchronize(stream_));
    }
  }

  void reduce_grads(const std::vector<GradBuf>& bufs) override {
    grouped(bufs, [&](const GradBuf& b) {
      return ncclAllReduce(b.data, b.data, b.n, nccl_type(b.dtype), ncclAvg, comm_, stream_);
    });
  }

  void reduce_to(const std::vector<GradBuf>& bufs) override {
    grouped(bufs, [&](const GradBuf& b) {
      return ncclReduce(b.data, b.data, b.n, nccl_type(b.dtype), ncclAvg, b.owner, comm_, stream_);
    });
  }

  void broadcast(const std::vector<GradBuf>& bufs) override {
    grouped(bufs, [&](const GradBuf& b) {
      return ncclBroadcast(b.data, b.data, b.n, nccl_type(b.dtype), b.owner, comm_, stream_);
    });
  }

  void on_comm_stream(const std::function<void()>& fn) override {
    cuda::UpdateStreamScope scope(stream_);
    fn();
  }

  void mark(int slot) override { CUDA_CHECK(cudaEventRecord(marks_[slot], stream_)); }
  void wait_mark(int slot) override {
    CUDA_CHECK(cudaStreamWaitEvent(cuda::compute_stream(), marks_[slot], 0));
  }

  void join() override {
    CUDA_CHECK(cudaEventRecord(done_, stream_));
    CUDA_CHECK(cudaStreamWaitEvent(cuda::compute_stream(), done_, 0));
  }

 private:
  // One NCCL group of op(b) for every buffer, on the communication stream after the
  // compute stream's queued work (also when skipping: what is queued behind must see
  // the buffers).
  template <class Op>
  void grouped(const std::vector<GradBuf>& bufs, const Op& op) {
    if (bufs.empty()) return;
    after_compute();
    if (skip_) return;
    NCCL_CHECK(ncclGroupStart());
    for (const GradBuf& b : bufs) NCCL_CHECK(op(b));
    NCCL_CHECK(ncclGroupEnd());
  }
  // The communication stream goes on only after what the compute stream queued so far.
  void after_compute() {
    CUDA_CHECK(cudaEventRecord(produced_, cuda::compute_stream()));
    CUDA_CHECK(cudaStreamWaitEvent(stream_, produced_, 0));
  }
  int rank_, world_;
  bool skip_ = false;
  DeviceBuffer<double> scratch_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t produced_ = nullptr, done_ = nullptr, marks_[2] = {nullptr, nullptr};
};

}  // namespace

std::unique_ptr<Comm> make_nccl_comm(const LaunchEnv& env, uint64_t config_hash, double timeout_s,
                                     Device& dev) {
  return std::make_unique<NcclComm>(env, config_hash, timeout_s, dev);
}

}  // namespace gpt2
