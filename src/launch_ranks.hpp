// `train_gpt2 train --gpus N`: a one-node launcher, so a single machine needs no
// torchrun or mpirun. It re-runs this executable N times with the torchrun variables
// (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, a free MASTER_PORT) and
// NCCL_NVLS_ENABLE=0, forwards Ctrl-C to every rank, and waits; when a rank fails, it
// stops the others and reports which rank failed.
#pragma once
#include <string>
#include <vector>

namespace gpt2 {

// Runs `args` (what follows the executable, without --gpus) as ranks 0..gpus-1 and
// returns when all have exited 0; throws Error otherwise. Error at once when gpus
// exceeds the GPUs this machine has, or a launcher's variables are already set.
void launch_ranks(int gpus, const std::vector<std::string>& args);

}  // namespace gpt2
