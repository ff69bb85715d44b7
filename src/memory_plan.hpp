// The memory ledger a run will have, computed without allocating anything: the same
// sizes the model, the update pipeline and the optimizer allocate (they share these
// functions), so on the CPU the measured peak equals this plan to the byte. On the GPU
// the workspace line also comes from the functions the CUDA backend allocates with
// (backend.hpp): cuBLASLt's workspace, the kernels' scratch, the gradient norms'
// partials and the optimizer's workspace. What a GPU plan cannot know: cuSOLVER's work
// for Adapprox (only a handle on a GPU sizes it), and, without a GPU, the encoder's CUB
// sort storage and the SM count (assumed 132); MemoryPlan::note says which applies.
#pragma once
#include <array>
#include <string>

#include "config.hpp"
#include "memory.hpp"
#include "param_table.hpp"

namespace gpt2 {

struct MemoryPlan {
  std::array<size_t, kMemCategories> bytes{};
  size_t total() const;
  bool cuda;
  size_t elem_size;  // bytes per parameter/activation element (4 fp32, 2 bf16)
  std::string note;  // GPU plans: which GPU the workspace is sized for (plan_gpu)
};

// A GPU run's MemCategory::workspace, by owner (one rank of `world`).
struct GpuWorkspacePlan {
  size_t cublaslt = 0;        // CudaOps's cuBLASLt workspace
  size_t kernel_scratch = 0;  // CudaOps's scratch at its largest
  size_t grad_norms = 0;      // CudaGradOps's partials and squared norms
  size_t optimizer = 0;       // the CUDA optimizer's own
  size_t total() const;
};
GpuWorkspacePlan gpu_workspace_plan(const json& cfg, const ParamTable& table, int world = 1);

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
