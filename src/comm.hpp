// Data-parallel communication as the update pipeline and the trainer see it. Ranks
// train on different batches and must end every step with the same weights, so each
// gradient is averaged over ranks before the optimizer sees it, and host values (loss,
// val loss) are summed over ranks before anyone acts on them.
//
// Two streams on the GPU: the compute stream (the per-thread default stream, where
// forward and backward run) and a communication stream. reduce_grads queues the all-reduce on the
// communication stream behind everything the compute stream has queued so far, so
// backward goes on while the reduction (and, in fused mode, the update that
// on_comm_stream puts behind it) runs. join() makes the compute stream wait for all of it.
//
// LocalComm (world 1) does nothing, so the CPU and single-GPU runs are unchanged;
// kernels/nccl_comm.cu is the NCCL implementation for GPU ranks, src/host_comm.cpp the
// TCP one for CPU ranks.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "distributed.hpp"
#include "dtype.hpp"

namespace gpt2 {

class Device;

struct GradBuf {
  void* data;
  size_t n;
  DType dtype;
  int owner = 0;  // ZeRO-1's reduce_to/broadcast: the rank that keeps this tensor
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  // Sums x[0, n) over ranks in place; every rank gets the total. Blocks the host.
  virtual void all_reduce_sum(double* x, size_t n) = 0;
  // Replaces each buffer by its average over ranks, as one group on the communication
  // stream, after the compute stream's queued work (which produced the buffers).
  virtual void reduce_grads(const std::vector<GradBuf>& bufs) = 0;
  // ZeRO-1, both on the communication stream like reduce_grads, each call one group:
  // reduce_to leaves each b's average over ranks in its owner's b (the others' b is
  // undefined afterwards); broadcast makes every rank's b a copy of its owner's.
  virtual void reduce_to(const std::vector<GradBuf>& bufs) = 0;
  virtual void broadcast(const std::vector<GradBuf>& bufs) = 0;
  // Runs fn with update_stream() = the communication stream, so the kernels fn launches
  // run after the reductions queued before them.
  virtual void on_comm_stream(const std::function<void()>& fn) = 0;
  // mark(slot): remembers this point of the communication stream under `slot` (0 or 1);
  // wait_mark(slot): the compute stream waits for the last such point before it goes
  // on, e.g. before it overwrites a buffer the communication stream still reads.
  virtual void mark(int slot) = 0;
  virtual void wait_mark(int slot) = 0;
  // The compute stream waits for everything queued on the communication stream.
  virtual void join() = 0;

  double mean(double x) {
    all_reduce_sum(&x, 1);
    return x / world();
  }
};

// World 1: every operation is a no-op (averaging over one rank changes nothing).
Comm& local_comm();

// Doubles all_reduce_sum moves per round trip; their device scratch is the ledger's
// MemCategory::communication (NCCL's own buffers are outside it, in the driver's count).
constexpr size_t kCommScratchDoubles = 64;

// NCCL over the ranks of `env` on the current GPU: rank 0 makes the NCCL id and hands it
// out through rendezvous() with the config-hash check (timeout_s). Small host values go
// through a scratch buffer of kCommScratchDoubles on `dev`.
// CPU ranks: host collectives over the rendezvous's TCP links (src/host_comm.cpp), with
// the same config-hash check and timeout.
std::unique_ptr<Comm> make_host_comm(const LaunchEnv& env, uint64_t config_hash, double timeout_s);

std::unique_ptr<Comm> make_nccl_comm(const LaunchEnv& env, uint64_t config_hash, double timeout_s,
                                     Device& dev);

}  // namespace gpt2
