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

}  // namespace gpt2
