// GPT-2 forward and backward, written once against Ops<T> (CPU reference or CUDA).
// Backward announces each parameter tensor's gradient the moment it is final, in the
// order backward produces them, so an optimizer can consume it inside backward.
#pragma once
#include <cstdint>
#include <vector>

#include "memory.hpp"
#include "ops.hpp"
#include "param_table.hpp"

namespace gpt2 {

// Where backward writes parameter gradients. grad(p) returns a buffer of p.storage
// elements that backward ACCUMULATES into (zero at the first call in a backward unless
// the sink is summing micro-steps); ready(p) says p's gradient is complete. The tied
// wte is requested first (classifier) and becomes ready last (encoder).
template <class T>
class GradSink {
 public:
  virtual ~GradSink() = default;
  virtual T* grad(const ParamSpec& p) = 0;
  virtual void ready(const ParamSpec& p) = 0;
};

// Activation memory for batch B x T: what forward keeps for backward plus backward's
// scratch. One function serves the allocation and `train_gpt2 memory`, so the
// analytic table is the allocation plan itself.
struct ActivationPlan {
  struct Entry { const char* name; size_t bytes; };
  std::vector<Entry> entries;
  size_t total() const;
};
ActivationPlan activation_plan(const ModelConfig& cfg, int B, int T, int recompute,
                               size_t elem_size);

// Host-side initial weights, GPT-2/llm.c style: N(0, 0.02), residual projections
// (attn.projw, mlp.projw) N(0, 0.02/sqrt(2L)), biases 0, layernorm gains 1, wte padding
// rows 0. Our own splitmix64 + Box-Muller, so every backend and compiler starts from
// the same bits for a given seed.
std::vector<float> init_params(const ParamTable& table, uint64_t seed);

template <class T>
class GPT2 {
 public:
  // recompute: 0 keep everything, 1 recompute GELU in backward, 2 also the layernorms.
  GPT2(const ModelConfig& cfg, Ops<T>& ops, Device& dev, int batch, int seq_len, int recompute);

  const ParamTable table;
  const int batch, seq_len, recompute;

  T* params() { return params_.get(); }
  void set_params(const std::vector<float>& host);  // converts to T (fp32, bf16, or double)
  std::vector<float> get_params() const;

  // inputs/targets are host arrays of batch*seq_len token ids. With targets, runs the classifier
  // and returns the mean loss; if `dloss` != 0 it also leaves dlogits (scaled by dloss)
  // ready for backward(). Without targets, only the logits are computed (sampling).
  double forward(const int* inputs, const int* targets, float dloss);
  void backward(GradSink<T>& sink);
  const T* logits() const { return logits_.get(); }  // [B*T, padded_vocab_size]
  Device& device() const { return dev_; }

 private:
  struct Layer {
    T *ln1, *qkv, *atty, *residual2, *ln2, *fch, *fch_gelu, *residual3;
    Stat<T> *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd, *lse;
  };
  Layer layer(int l);
  T* param(ParamKind k, int l = -1) { return params_.get() + table.get(k, l).offset; }

  Ops<T>& ops_;
  Device& dev_;
  DeviceBuffer<T> params_;
  DeviceBuffer<int> inputs_, targets_;
  DeviceBuffer<T> encoded_, ln1_, qkv_, atty_, residual2_, ln2_, fch_, fch_gelu_, residual3_,
      lnf_, logits_, scratch_;
  DeviceBuffer<Stat<T>> ln1_stats_, ln2_stats_, lnf_stats_, lse_, losses_;
  DeviceBuffer<T> dresidual_, dbtc_, dfch_, dqkv_;
  std::vector<Stat<T>> host_losses_;
};

}  // namespace gpt2
