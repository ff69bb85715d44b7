#include "comm.hpp"

namespace gpt2 {

namespace {

class LocalComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  void all_reduce_sum(double*, size_t) override {}
  void reduce_grads(const std::vector<GradBuf>&) override {}
  void reduce_to(const std::vector<GradBuf>&) override {}
  void broadcast(const std::vector<GradBuf>&) override {}
  void on_comm_stream(const std::function<void()>& fn) override { fn(); }
  void mark(int) override {}
  void wait_mark(int) override {}
  void join() override {}
};

}  // namespace

Comm& local_comm() {
  static LocalComm comm;
  return comm;
}

}  // namespace gpt2
