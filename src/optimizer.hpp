// The optimizer interface shared by the CPU references (src/reference/optim/,
// Optimizer<float>) and the CUDA kernels (kernels/<name>.cu, Optimizer<float> and
// Optimizer<bf16>). The trainer's update pipeline calls update() once per tensor per
// step, either the moment the tensor's gradient is final (fused) or after the whole
// backward (after_backward); clipping is the pipeline's job, done the same way in both
// modes so they feed optimizers the same numbers: to the gradient before update() sees
// it, or, for the global-norm coefficient alone, by an optimizer that scales_grads() as
// it reads the gradient (TensorUpdate::grad_scale), which saves a pass over every one.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "config.hpp"
#include "memory.hpp"
#include "param_table.hpp"

namespace gpt2 {

// A piece of persistent state, saved to and restored from checkpoints in order.
struct StateBlob {
  std::string name;
  void* data;
  size_t bytes;
};

// One tensor's update() arguments, for update_many.
template <class T>
struct TensorUpdate {
  const ParamSpec* p;
  T* param;
  float* master;
  T* grad;
  float grad_scale = 1.0f;  // the gradient to use is grad_scale * grad
};

template <class T>
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // Once per training step before its first update; t = 1 on the first step.
  virtual void begin_step(int64_t t, float lr) = 0;
  // Updates the p.numel parameters at `param` from their final gradient `grad`
  // (which the optimizer may overwrite as scratch). `master` is the fp32 master copy
  // of bf16 weights (updated, then rounded into param) or null: fp32 weights, or bf16
  // weights updated with stochastic rounding. The CPU references take fp32 only.
  virtual void update(const ParamSpec& p, T* param, float* master, T* grad) = 0;
  // The updates of tensors whose gradients are final together (after_backward: all of
  // them; fused: one backward group), with the same result as update() on each in turn
  // (on grad_scale * grad, if scales_grads()).
  // The CUDA optimizers but Adapprox override it to update many tensors per kernel launch.
  virtual void update_many(const std::vector<TensorUpdate<T>>& us) {
    for (const TensorUpdate<T>& u : us) update(*u.p, u.param, u.master, u.grad);
  }
  // An optimizer that returns true applies TensorUpdate::grad_scale in update_many
  // itself; the others get gradients the pipeline has already scaled, in a pass of its
  // own over every gradient, and ignore it.
  virtual bool scales_grads() const { return false; }
  // Whether a backward that calls update_many can be recorded once and replayed at later
  // steps (Device::make_replay): the update kernels read the step's values (t, lr) from
  // device memory, which begin_step rewrites, and never wait for the host. The CUDA
  // optimizers but Adapprox (host round trips for its ranks) say yes.
  virtual bool replayable() const { return false; }
  virtual std::vector<StateBlob> state() = 0;
  // What the last step did beyond the update itself, as (name, value) for the progress
  // line and the metrics log: Adapprox's mean rank and S-RSI count. Most say nothing.
  virtual std::vector<std::pair<std::string, double>> step_stats() const { return {}; }
};

// Builds the CPU reference optimizer named by cfg["optimizer"]["name"]; its state is
// allocated on `dev` under MemCategory::optimizer_state. `seed` drives any randomness.
std::unique_ptr<Optimizer<float>> make_optimizer(const json& cfg, const ParamTable& table,
                                          Device& dev, uint64_t seed);

// Bytes make_optimizer allocates under MemCategory::optimizer_state for `table`
// (Adapprox: Q and U at k_max columns; the CUDA optimizers allocate the same), and under
// MemCategory::workspace (Adapprox's dense V_t scratch for the largest matrix; 0 for the
// others; the CUDA optimizers' workspace is cuda_optimizer_workspace_bytes, backend.hpp).
// The memory table uses these; tests hold them equal to a CpuDevice's ledger.
size_t optimizer_state_bytes(const json& cfg, const ParamTable& table);
size_t optimizer_workspace_bytes(const json& cfg, const ParamTable& table);

}  // namespace gpt2
