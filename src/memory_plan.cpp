#include "memory_plan.hpp"

#include <algorithm>
#include <cstdio>
#include <random>

#include "backend.hpp"
#include "gpt2.hpp"
#include "run_backend.hpp"
#include "optimizer.hpp"
#include "update_pipeline.hpp"

namespace gpt2 {

size_t MemoryPlan::total() const {
  size_t t = 0;
  for (size_t b : bytes) t += b;
  return t;
}

size_t GpuWorkspacePlan::total() const {
  return cublaslt + kernel_scratch + grad_norms + optimizer;
}

GpuWorkspacePlan gpu_workspace_plan(const json& cfg, const ParamTable& table, int world) {
  const PlanGpu gpu = plan_gpu();
  GpuWorkspacePlan w;
  w.cublaslt = kLtWorkspaceBytes;
  w.kernel_scratch = cuda_kernel_scratch_bytes(table.cfg, cfg["data"]["batch_size"].get<int>(),
                                               cfg["data"]["seq_len"].get<int>(), gpu);
  w.grad_norms = cuda_grad_ops_workspace_bytes(table.params.size());  // one slot per tensor
  // ZeRO-1: the optimizer sees its rank's shard (as for its state, the largest rank's).
  const bool zero1 = cfg["train"]["zero1"].get<bool>() && world > 1;
  for (int r = 0; r < (zero1 ? world : 1); r++)
    w.optimizer = std::max(w.optimizer, cuda_optimizer_workspace_bytes(
                                            cfg, zero1 ? zero1_shard(table, world, r) : table, gpu));
  return w;
}

MemoryPlan plan_memory(const json& cfg, bool cuda, int world) {
  const ParamTable table(model_config(cfg));
  const json& tr = cfg["train"];
  MemoryPlan p;
  p.cuda = cuda;
  p.elem_size = cuda && tr["precision"].get<std::string>() != "fp32" ? 2 : 4;
  auto& b = p.bytes;
  b[int(MemCategory::params)] = table.total * p.elem_size;
  if (p.elem_size == 2 && tr["master_weights"].get<bool>())
    b[int(MemCategory::master_weights)] = table.total * 4;
  const bool fused = resolved_update(cfg) == "fused";
  const bool late = tr["late_wte_grad"].get<bool>();
  b[int(MemCategory::grads)] = grad_memory_plan(table, fused, world, late).grad_elems * p.elem_size;
  // NCCL's scratch for host values; CPU ranks talk over sockets and allocate nothing.
  if (world > 1 && cuda) b[int(MemCategory::communication)] = kCommScratchDoubles * sizeof(double);
  // ZeRO-1: the largest rank's share of the optimizer state (the plan is per GPU).
  size_t state = optimizer_state_bytes(cfg, table);
  if (tr["zero1"].get<bool>() && world > 1) {
    state = 0;
    for (int r = 0; r < world; r++)
      state = std::max(state, optimizer_state_bytes(cfg, zero1_shard(table, world, r)));
  }
  b[int(MemCategory::optimizer_state)] = state;
  const int B = cfg["data"]["batch_size"].get<int>(), T = cfg["data"]["seq_len"].get<int>();
  const int chunk = classifier_chunk_rows(tr["classifier_chunk"].get<int>(), B * T, table.cfg,
                                          p.elem_size, cuda);
  b[int(MemCategory::activations)] =
      activation_plan(table.cfg, B, T, recompute_of(cfg), chunk, p.elem_size, late,
                      cuda && cuda_pads_rows(table.cfg.channels))
          .total();
  b[int(MemCategory::workspace)] = cuda ? gpu_workspace_plan(cfg, table, world).total()
                                        : optimizer_workspace_bytes(cfg, table);
  if (cuda) p.note = plan_gpu().note;
  return p;
}

MemoryLedger measure_memory(const json& cfg, int steps, size_t* driver_bytes) {
  MemoryLedger ledger;
  with_backend(cfg, 0, [&](auto& be) {
    using T = typename std::remove_reference_t<decltype(*be.ops)>::Elem;
    const int B = cfg["data"]["batch_size"].get<int>(), T_ = cfg["data"]["seq_len"].get<int>();
    const uint64_t seed = cfg["train"]["seed"].get<uint64_t>();
    GPT2<T> model(model_config(cfg), *be.ops, *be.dev, B, T_, recompute_of(cfg),
                  cfg["train"]["classifier_chunk"].get<int>(),
                  cfg["train"]["late_wte_grad"].get<bool>());
    std::unique_ptr<Optimizer<T>> opt = be.optimizer(model.table);
    UpdatePipeline<T> pipeline(cfg, model, *opt, *be.gops, *be.dev);
    pipeline.set_weights(init_params(model.table, seed));
    std::mt19937 rng{uint32_t(seed)};
    std::uniform_int_distribution<int> token(0, model.table.cfg.vocab_size - 1);
    for (int s = 1; s <= steps; s++)
      pipeline.step(s, 1e-4f, [&](int* in, int* tg) {
        for (int i = 0; i < B * T_; i++) in[i] = token(rng), tg[i] = token(rng);
      });
    be.dev->synchronize();
    ledger = be.dev->ledger();
    if (driver_bytes) *driver_bytes = be.dev->driver_bytes_in_use();
  });
  return ledger;
}

std::string memory_plan_table(const MemoryPlan& plan) {
  std::string s;
  char line[128];
  const double total = double(plan.total());
  for (int c = 0; c < kMemCategories; c++) {
    std::snprintf(line, sizeof line, "  %-15s %12s %6.1f%%\n", mem_category_name(MemCategory(c)),
                  format_bytes(plan.bytes[c]).c_str(), 100.0 * plan.bytes[c] / total);
    s += line;
  }
  std::snprintf(line, sizeof line, "  %-15s %12s\n", "total", format_bytes(total).c_str());
  return s + line;
}

}  // namespace gpt2
