// `train_gpt2 train --gpus N` (or --ranks N: CPU processes too): a one-node launcher, so
// a single machine needs no torchrun or mpirun. It re-runs this executable N times with the torchrun variables
// (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, a free MASTER_PORT) and
// NCCL_NVLS_ENABLE=0, forwards Ctrl-C to every rank, and waits; when a rank fails, it
// stops the others and reports which rank failed.
#pragma once
#include <string>
#include <vector>

namespace gpt2 {

// Runs `args` (what follows the executable, without --gpus/--ranks) as ranks 0..n-1 and
// returns when all have exited 0; throws Error otherwise. Error at once when `gpus` and
// n exceeds the GPUs this machine has, or when a launcher's variables are already set.
// CPU ranks get OMP_NUM_THREADS = cores / n unless it is set.
void launch_ranks(int n, const std::vector<std::string>& args, bool gpus);

}  // namespace gpt2
