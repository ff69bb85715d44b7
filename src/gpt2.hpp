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
// wte is requested first (by the training forward, whose chunked classifier adds its
// part) and becomes ready last (encoder); with late_wte_grad it is requested only after
// the last layer's backward, which then adds the classifier's part.
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
// classifier_chunk: rows of logits that exist at once (classifier_chunk_rows()).
// late_wte_grad: wte's gradient lives in the fch buffer (dead once the layers' backward
// is done), which grows to wte's size if it is smaller.
// padded_ln: ln1 and ln2 are stored as ones-padded rows (Ops::pads_rows, src/ops.hpp).
ActivationPlan activation_plan(const ModelConfig& cfg, int B, int T, Recompute recompute,
                               int classifier_chunk, size_t elem_size, bool late_wte_grad,
                               bool padded_ln = false);

// The classifier's row chunk for train.classifier_chunk = `requested` (0 = auto) over
// `rows` = B*T rows: never more than `rows`. Auto on the GPU: the largest power of two
// whose logits stay within 512 MiB (4096 rows of bf16 at Vp = 50304); on the CPU, 256.
// On the GPU a requested chunk is rounded down to a multiple of 8 rows (at least 8).
int classifier_chunk_rows(int requested, int rows, const ModelConfig& cfg, size_t elem_size,
                          bool cuda);

// Host-side initial weights, GPT-2/llm.c style: N(0, 0.02), residual projections
// (attn.projw, mlp.projw) N(0, 0.02/sqrt(2L)), biases 0, layernorm gains 1, wte padding
// rows 0. Our own splitmix64 + Box-Muller, so every backend and compiler starts from
// the same bits for a given seed.
std::vector<float> init_params(const ParamTable& table, uint64_t seed);

template <class T>
class GPT2 {
 public:
  // classifier_chunk: train.classifier_chunk (0 = auto, see classifier_chunk_rows).
  // late_wte_grad (train.late_wte_grad): the training forward computes only d(lnf) from
  // its classifier chunks; backward, after the last layer, recomputes each chunk's logits
  // and dlogits to add the classifier's part of wte's gradient. One more logits matmul
  // per step, so that wte's gradient need not exist during backward: it can live in
  // activation memory that is dead by then (wte_grad_home()).
  GPT2(const ModelConfig& cfg, Ops<T>& ops, Device& dev, int batch, int seq_len,
       Recompute recompute, int classifier_chunk = 0, bool late_wte_grad = false);

  const ParamTable table;
  const int batch, seq_len;
  const Recompute recompute;
  const int classifier_chunk;  // resolved rows
  const bool late_wte_grad;

  T* params() { return params_.get(); }
  void set_params(const std::vector<float>& host);  // converts to T (fp32, bf16, or double)
  std::vector<float> get_params() const;

  // inputs/targets are host arrays of batch*seq_len token ids; returns the mean loss.
  // The B*T x Vp logits never exist whole: the classifier runs over chunks of
  // classifier_chunk rows. Training (a sink, and dloss != 0 scaling the loss gradient):
  // each chunk's dlogits go straight into d(lnf) and into sink.grad(wte) (with
  // late_wte_grad, d(lnf) only: backward recomputes wte's part), and backward(sink) must
  // follow with the same sink. Evaluation (no sink, dloss = 0) computes the losses only.
  double forward(const int* inputs, const int* targets, float dloss,
                 GradSink<T>* sink = nullptr) {
    start_forward(inputs, targets, dloss, sink);
    return loss();
  }
  // forward without reading the loss back: the device work is queued, the host does not
  // wait for it, so backward can be queued behind it at once. loss() (a host sync) reads
  // the last forward's mean loss; backward leaves it alone (with late_wte_grad it
  // rewrites the same values).
  void start_forward(const int* inputs, const int* targets, float dloss,
                     GradSink<T>* sink = nullptr) {
    load_batch(inputs, targets);
    queue_forward(dloss, sink);
  }
  // start_forward in two: the batch's copy to the device, then the forward over the
  // batch on the device. queue_forward + backward queue the same device work on the same
  // buffers at every step, what Device::make_replay records.
  void load_batch(const int* inputs, const int* targets);
  void queue_forward(float dloss, GradSink<T>* sink = nullptr);
  double loss();
  void backward(GradSink<T>& sink);
  // Runs the forward over inputs and returns the logits of one row (b * seq_len + t)
  // over the real vocabulary, as floats: what sampling needs, with no B*T x Vp buffer.
  std::vector<float> forward_logits(const int* inputs, int row);
  Device& device() const { return dev_; }
  // With late_wte_grad, where a sink may keep wte's gradient (wte's storage elements, free
  // from the end of the layers' backward to the next forward); else null.
  T* wte_grad_home() { return late_wte_grad ? fch_.get() : nullptr; }

 private:
  struct Layer {
    T *ln1, *qkv, *atty, *residual2, *ln2, *fch, *fch_gelu, *residual3;
    Stat<T> *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd, *lse;
  };
  Layer layer(int l);
  void forward_to_lnf();  // encoder, layers, final layernorm, over inputs_
  // The classifier over all B*T rows, chunk by chunk: logits and dlogits in logits_, the
  // losses in losses_; with dlnf, d(lnf) into dbtc_, and with dwte non-null, wte's
  // classifier gradient added there.
  void classify(float dloss, bool dlnf, T* dwte);
  T* param(ParamKind k, int l = -1) { return params_.get() + table.get(k, l).offset; }

  Ops<T>& ops_;
  Device& dev_;
  // ln1 and ln2 are ones-padded rows of ln_row_ = C + kOnesPad elements where the backend
  // asks for it (Ops::pads_rows): qkv's and fc's backward then get dbias from the
  // dweight GEMM.
  const bool padded_;
  const int ln_row_;
  DeviceBuffer<T> params_;
  DeviceBuffer<int> inputs_, targets_;
  DeviceBuffer<T> encoded_, ln1_, qkv_, atty_, residual2_, ln2_, fch_, fch_gelu_, residual3_, lnf_,
      logits_;
  // dresidual_colsum_: the residual gradient's column sums, which each layernorm backward
  // leaves for the next matmul_backward's bias (see backward()).
  DeviceBuffer<Stat<T>> ln1_stats_, ln2_stats_, lnf_stats_, lse_, losses_, dresidual_colsum_;
  DeviceBuffer<T> dresidual_, dbtc_;
  std::vector<Stat<T>> host_losses_;
  // The training forward's sink, its loss scale and its wte gradient, which backward
  // finishes.
  GradSink<T>* train_sink_ = nullptr;
  T* dwte_ = nullptr;
  float dloss_ = 0.0f;
};

}  // namespace gpt2
