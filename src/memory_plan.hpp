// The memory ledger a run will have, computed without allocating anything: the same
// sizes the model, the update pipeline and the optimizer allocate (they share these
// functions), so on the CPU the measured peak equals this plan to the byte. On the GPU
// the plan counts the cuBLASLt workspace but not yet the kernels' scratch and the
// optimizers' partial sums (9.8 MiB for AdaLomo at d12, B 16).
#pragma once
#include <array>

#include "config.hpp"
#include "memory.hpp"

namespace gpt2 {

struct MemoryPlan {
  std::array<size_t, kMemCategories> bytes{};
  size_t total() const;
  bool cuda;
  size_t elem_size;  // bytes per parameter/activation element (4 fp32, 2 bf16)
};

// For a validated config on the CPU (fp32) or a GPU (train.precision; auto = bf16), per
// rank of a `world`-rank data-parallel run.
MemoryPlan plan_memory(const json& cfg, bool cuda, int world = 1);

// Builds the run of `cfg` on its device (model, optimizer, update pipeline), trains
// `steps` steps on random tokens and returns the device ledger: the measured side of
// the plan. On a GPU, *driver_bytes (if given) receives cudaMemGetInfo's bytes in use.
MemoryLedger measure_memory(const json& cfg, int steps, size_t* driver_bytes = nullptr);

// The plan as a table: category, bytes, share of the total.
std::string memory_plan_table(const MemoryPlan& plan);

}  // namespace gpt2
