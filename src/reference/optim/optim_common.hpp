// What the six CPU reference optimizers share: reading their hyperparameters from
// cfg["optimizer"] with one clear error per bad value, the per-tensor weight-decay
// rule, RMS with double accumulation, and a StateStore that allocates persistent
// state on the run's Device (so its ledger counts it) and lists it for checkpoints.
// Each optimizer's file exports its factory and its per-tensor state size next to
// the code that allocates that state, so optimizer_state_bytes cannot drift from it.
#pragma once
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "optimizer.hpp"

namespace gpt2::optim {

// The number at cfg["optimizer"][sub][key] (sub empty: cfg["optimizer"][key]), checked
// to lie in [lo, hi]; anything else fails naming the key, the value and the range.
double number(const json& cfg, const std::string& sub, const std::string& key, double lo,
              double hi);
const json& entry(const json& cfg, const std::string& sub, const std::string& key);

// Hyperparameters every optimizer takes from cfg["optimizer"].
struct Common {
  double weight_decay;
  bool decay_vectors;
  explicit Common(const json& cfg);
  // llm.c's rule: decay 2-D tensors only, unless optimizer.decay_vectors.
  double wd(const ParamSpec& p) const {
    return p.decay() || decay_vectors ? weight_decay : 0.0;
  }
};

// A reference that scales_grads() by scaling in place: update_many takes the pipeline's
// clip coefficient as the fp32 product its clip_scale would store (the gradient is
// scratch), then update() on each tensor, as the CUDA twin does in its own passes.
class ScalingOptimizer : public Optimizer<float> {
 public:
  void update_many(const std::vector<TensorUpdate<float>>& us) override;
  bool scales_grads() const override { return true; }
};

inline double sum_sq(const float* x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += double(x[i]) * x[i];
  return s;
}
inline double rms(const float* x, size_t n) { return n ? std::sqrt(sum_sq(x, n) / n) : 0.0; }

// Zero-initialised fp32 state on the Device, under MemCategory::optimizer_state.
class StateStore {
 public:
  explicit StateStore(Device& dev) : dev_(dev) {}
  // n floats of tensor p's state, named "<what>.<p.name>" in checkpoints; nullptr when
  // another rank keeps p's state (ZeRO-1: p.local is false, update() never sees p).
  float* add(const ParamSpec& p, const std::string& what, size_t n);
  std::vector<StateBlob> blobs() const;

 private:
  Device& dev_;
  std::vector<DeviceBuffer<float>> bufs_;
  std::vector<std::string> names_;
};

// Per optimizer: its factory and the bytes of optimizer_state it allocates for tensor p.
std::unique_ptr<Optimizer<float>> make_adamw(const json& cfg, const ParamTable& table, Device& dev,
                                      uint64_t seed);
size_t adamw_state_bytes(const json& cfg, const ParamSpec& p);
std::unique_ptr<Optimizer<float>> make_lomo(const json& cfg, const ParamTable& table, Device& dev,
                                     uint64_t seed);
size_t lomo_state_bytes(const json& cfg, const ParamSpec& p);
std::unique_ptr<Optimizer<float>> make_adalomo(const json& cfg, const ParamTable& table, Device& dev,
                                        uint64_t seed);
size_t adalomo_state_bytes(const json& cfg, const ParamSpec& p);
std::unique_ptr<Optimizer<float>> make_adafactor(const json& cfg, const ParamTable& table, Device& dev,
                                          uint64_t seed);
size_t adafactor_state_bytes(const json& cfg, const ParamSpec& p);
std::unique_ptr<Optimizer<float>> make_came(const json& cfg, const ParamTable& table, Device& dev,
                                     uint64_t seed);
size_t came_state_bytes(const json& cfg, const ParamSpec& p);
std::unique_ptr<Optimizer<float>> make_adapprox(const json& cfg, const ParamTable& table, Device& dev,
                                         uint64_t seed);
size_t adapprox_state_bytes(const json& cfg, const ParamSpec& p);

// Adapprox's one shared dense V_t scratch (MemCategory::workspace): the largest matrix.
size_t adapprox_workspace_bytes(const ParamTable& table);

}  // namespace gpt2::optim
