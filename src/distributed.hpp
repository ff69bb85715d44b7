// Bootstrap for multi-GPU data parallelism: who am I (rank, world size, local GPU) from
// whichever launcher started us, and a tiny TCP rendezvous through which rank 0 hands
// every rank an opaque blob (the NCCL unique id) after checking that all ranks run the
// same config. NCCL itself does the heavy lifting afterwards; this only gets it started.
//
//   one node:   torchrun --standalone --nproc_per_node=8 ./train_gpt2 train ...
//   OpenMPI:    mpirun -np 16 -x MASTER_ADDR=node0 ./train_gpt2 train ...
//   SLURM:      srun --ntasks-per-node=8 ./train_gpt2 train ...
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace gpt2 {

struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  // which GPU of this node
  std::string master_addr;
  int master_port = 0;
  std::string launcher = "none";  // "torchrun", "openmpi", "slurm" or "none"
};

// Reads the launcher's variables through `getenv` (so tests can pass a map). Checked in
// this order: torchrun (RANK/WORLD_SIZE/LOCAL_RANK), OpenMPI (OMPI_COMM_WORLD_*), SLURM
// (SLURM_PROCID/NTASKS/LOCALID); none of them means a single process. Malformed or
// inconsistent values throw an Error naming the variable and its value.
LaunchEnv launch_env_from(const std::function<const char*(const char*)>& getenv);

// Every rank calls this once. Rank 0 listens on master_port and waits for the other
// world_size-1 ranks, each of which sends its rank and config hash; if all hashes match
// rank 0's, every rank returns `blob_from_rank0` (only rank 0's argument is used),
// otherwise every rank throws the same Error. Peers retry connecting until timeout_s;
// rank 0 gives up after timeout_s, naming how many ranks arrived.
std::vector<uint8_t> rendezvous(const LaunchEnv& env, const std::vector<uint8_t>& blob_from_rank0,
                                uint64_t config_hash, double timeout_s);

// The rendezvous's TCP connections kept open for host-side collectives between CPU ranks
// (src/host_comm.cpp): rank 0 holds a link to every other rank, the others one to rank 0.
// A rank that dies closes its link, and whoever waits on it fails naming that rank.
class RankLinks {
 public:
  ~RankLinks();
  RankLinks(const RankLinks&) = delete;
  RankLinks& operator=(const RankLinks&) = delete;
  int rank() const { return rank_; }
  int world() const { return int(fds_.size()); }
  void send(int peer, const void* data, size_t bytes);
  void recv(int peer, void* data, size_t bytes);  // exactly `bytes`

 private:
  friend std::unique_ptr<RankLinks> connect_ranks(const LaunchEnv&, uint64_t, double);
  RankLinks(int rank, int world) : rank_(rank), fds_(world, -1) {}
  int link(int peer) const;
  int rank_;
  std::vector<int> fds_;
};

// rendezvous() with an empty blob, keeping the connections: the same config-hash check,
// timeout and errors.
std::unique_ptr<RankLinks> connect_ranks(const LaunchEnv& env, uint64_t config_hash,
                                         double timeout_s);

}  // namespace gpt2
