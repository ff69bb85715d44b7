// Comm for CPU ranks (src/comm.hpp) over the rendezvous's TCP links: data parallel on
// the CPU, so the whole multi-rank path (per-rank data, averaged gradients in fused and
// after_backward mode, ZeRO-1, rank-0 output, resume) runs and is tested without GPUs.
// Rank 0 is the hub: it gathers every rank's values, sums them in rank order (so the
// result does not depend on arrival order) and sends the result back. Slow for big
// models (2 x world x bytes through rank 0 per reduction), which the CPU never trains.
// TRAIN_GPT2_SKIP_GRAD_REDUCE=1 skips the gradient averaging and ZeRO-1's reduce and
// broadcast, as in kernels/nccl_comm.cu.
#include <cstdlib>
#include <cstring>

#include "comm.hpp"
#include "error.hpp"

namespace gpt2 {

namespace {

class HostComm final : public Comm {
 public:
  explicit HostComm(std::unique_ptr<RankLinks> links) : links_(std::move(links)) {
    const char* skip = std::getenv("TRAIN_GPT2_SKIP_GRAD_REDUCE");
    skip_ = skip != nullptr && std::strcmp(skip, "1") == 0;
  }
  int rank() const override { return links_->rank(); }
  int world() const override { return links_->world(); }

  void all_reduce_sum(double* x, size_t n) override { sum_to_all(x, n, false); }

  void reduce_grads(const std::vector<GradBuf>& bufs) override {
    if (skip_) return;
    for (const GradBuf& b : bufs) {
      if (b.dtype != DType::f32) fail("internal: CPU ranks average fp32 gradients only");
      sum_to_all(static_cast<float*>(b.data), b.n, true);
    }
  }

  void reduce_to(const std::vector<GradBuf>& bufs) override {
    if (skip_) return;
    for (const GradBuf& b : bufs) {
      if (b.dtype != DType::f32) fail("internal: CPU ranks average fp32 gradients only");
      float* x = static_cast<float*>(b.data);
      gather_sum(x, b.n, true);
      if (b.owner == 0) continue;
      if (rank() == 0) links_->send(b.owner, x, b.n * sizeof(float));
      if (rank() == b.owner) links_->recv(0, x, b.n * sizeof(float));
    }
  }

  void broadcast(const std::vector<GradBuf>& bufs) override {
    if (skip_) return;
    for (const GradBuf& b : bufs) {
      const size_t bytes = b.n * (b.dtype == DType::f32 ? 4 : 2);
      if (b.owner != 0) {
        if (rank() == b.owner) links_->send(0, b.data, bytes);
        if (rank() == 0) links_->recv(b.owner, b.data, bytes);
      }
      spread(b.data, bytes);
    }
  }

  void on_comm_stream(const std::function<void()>& fn) override { fn(); }
  void mark(int) override {}
  void wait_mark(int) override {}
  void join() override {}

 private:
  // Rank 0 ends with sum (or mean) over ranks of x, added in rank order.
  template <class V>
  void gather_sum(V* x, size_t n, bool mean) {
    if (rank() != 0) {
      links_->send(0, x, n * sizeof(V));
      return;
    }
    std::vector<V> peer(n);
    for (int r = 1; r < world(); r++) {
      links_->recv(r, peer.data(), n * sizeof(V));
      for (size_t i = 0; i < n; i++) x[i] += peer[i];
    }
    if (mean)
      for (size_t i = 0; i < n; i++) x[i] /= V(world());
  }
  void spread(void* x, size_t bytes) {
    if (rank() == 0)
      for (int r = 1; r < world(); r++) links_->send(r, x, bytes);
    else
      links_->recv(0, x, bytes);
  }
  template <class V>
  void sum_to_all(V* x, size_t n, bool mean) {
    gather_sum(x, n, mean);
    spread(x, n * sizeof(V));
  }

  std::unique_ptr<RankLinks> links_;
  bool skip_ = false;
};

}  // namespace

std::unique_ptr<Comm> make_host_comm(const LaunchEnv& env, uint64_t config_hash,
                                     double timeout_s) {
  return std::make_unique<HostComm>(connect_ranks(env, config_hash, timeout_s));
}

}  // namespace gpt2
