// Picks the optimizer named by optimizer.name. Each entry pairs a factory with the
// per-tensor state size that factory allocates, so the memory table and the run agree.
#include "error.hpp"
#include "optim_common.hpp"

namespace gpt2 {

namespace {

struct Entry {
  const char* name;
  std::unique_ptr<Optimizer<float>> (*make)(const json&, const ParamTable&, Device&, uint64_t);
  size_t (*state_bytes)(const json&, const ParamSpec&);
};

constexpr Entry kOptimizers[] = {
    {"adamw", optim::make_adamw, optim::adamw_state_bytes},
    {"lomo", optim::make_lomo, optim::lomo_state_bytes},
    {"adalomo", optim::make_adalomo, optim::adalomo_state_bytes},
    {"adafactor", optim::make_adafactor, optim::adafactor_state_bytes},
    {"came", optim::make_came, optim::came_state_bytes},
    {"adapprox", optim::make_adapprox, optim::adapprox_state_bytes},
};

const Entry& find(const json& cfg) {
  const json& name = optim::entry(cfg, "", "name");
  for (const Entry& e : kOptimizers)
    if (name.is_string() && name.get<std::string>() == e.name) return e;
  fail("config key optimizer.name = ", name.dump(),
       " is not an optimizer; use one of adamw, lomo, adalomo, adafactor, came, adapprox");
}

}  // namespace

std::unique_ptr<Optimizer<float>> make_optimizer(const json& cfg, const ParamTable& table, Device& dev,
                                          uint64_t seed) {
  return find(cfg).make(cfg, table, dev, seed);
}

size_t optimizer_state_bytes(const json& cfg, const ParamTable& table) {
  const Entry& e = find(cfg);
  size_t bytes = 0;
  for (const ParamSpec& p : table.params)
    if (p.local) bytes += e.state_bytes(cfg, p);
  return bytes;
}

size_t optimizer_workspace_bytes(const json& cfg, const ParamTable& table) {
  return std::string(find(cfg).name) == "adapprox" ? optim::adapprox_workspace_bytes(table) : 0;
}

}  // namespace gpt2
