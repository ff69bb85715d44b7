// make_cuda_optimizer: the CUDA twin of src/reference/optim/make_optimizer.cpp, picking
// kernels/<name>.cu by optimizer.name, for fp32 and bf16 weights.
#include "backend.hpp"
#include "optim_common.cuh"
#include "reference/optim/optim_common.hpp"

namespace gpt2 {

template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_optimizer(const json& cfg, const ParamTable& table,
                                                  Device& dev, uint64_t seed) {
  if (!dev.is_cuda()) fail("make_cuda_optimizer needs a CUDA device (train.device = cuda)");
  const json& name = optim::entry(cfg, "", "name");
  const std::string n = name.is_string() ? name.get<std::string>() : "";
  if (n == "adamw") return cuda::make_cuda_adamw<T>(cfg, table, dev, seed);
  if (n == "lomo") return cuda::make_cuda_lomo<T>(cfg, table, dev, seed);
  if (n == "adalomo") return cuda::make_cuda_adalomo<T>(cfg, table, dev, seed);
  if (n == "adafactor") return cuda::make_cuda_adafactor<T>(cfg, table, dev, seed);
  if (n == "came") return cuda::make_cuda_came<T>(cfg, table, dev, seed);
  if (n == "adapprox") return cuda::make_cuda_adapprox<T>(cfg, table, dev, seed);
  fail("config key optimizer.name = ", name.dump(),
       " is not an optimizer; use one of adamw, lomo, adalomo, adafactor, came, adapprox");
}

size_t cuda_optimizer_workspace_bytes(const json& cfg, const ParamTable& table,
                                      const PlanGpu& gpu) {
  const json& name = optim::entry(cfg, "", "name");
  const std::string n = name.is_string() ? name.get<std::string>() : "";
  if (n == "adalomo" || n == "adafactor") return cuda::adafactor_workspace_bytes(table, gpu.sms);
  if (n == "came") return cuda::came_workspace_bytes(table, gpu.sms);
  if (n == "adapprox") return cuda::adapprox_workspace_bytes(cfg, table);
  return 0;  // adamw, lomo
}

template std::unique_ptr<Optimizer<float>> make_cuda_optimizer<float>(const json&, const ParamTable&,
                                                                      Device&, uint64_t);
template std::unique_ptr<Optimizer<bf16>> make_cuda_optimizer<bf16>(const json&, const ParamTable&,
                                                                    Device&, uint64_t);

}  // namespace gpt2
