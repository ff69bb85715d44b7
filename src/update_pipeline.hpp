// What happens to a gradient once backward has produced it:
//   [value clip] -> [global-norm scale] -> optimizer.update -> buffer released.
// An optimizer that scales_grads() (all six do) does the global-norm scale as it reads
// the gradient, when there is no value clip: one pass over the gradients fewer.
// Two modes (config optimizer.update):
// - after_backward: a full gradient buffer (category grads), micro-step accumulation,
//   global-norm clipping measured over the whole gradient, then one update per tensor.
// - fused: each tensor is updated the moment backward announces it final; gradients
//   live in a dedicated wte buffer (the tied embedding is final only after the encoder
//   backward) plus one layer's worth of arena, reused layer after layer. Global-norm
//   clipping needs the norm before the first update, so it takes LOMO's two passes: a
//   first forward + backward that only measures per-tensor norms (the forward makes
//   wte's classifier gradient), then the updating forward + backward.
// Both modes sum per-tensor squared norms in parameter-id order and apply the same
// arithmetic to each tensor, so on the CPU they produce bit-identical weights.
// On one GPU the fused updates run on the compute stream. Moving them to a second stream
// beside backward (as data parallelism does, with a doubled arena) was tried and gained
// nothing: H100, d12 B 16, same call, fused AdaLomo 35.8 / 35.5 -> 35.5 / 35.7 ms and
// fused AdamW 34.0 / 34.0 -> 33.7 / 33.9 ms, since backward's GEMMs hold every SM (one
// CTA of ~200 KB shared memory each) and leave the update kernels no room to run beside.
//
// Data parallel (Comm world > 1), every gradient is averaged over ranks before the
// norm and the update see it, on the communication stream while backward goes on:
// - fused: each tensor's all-reduce is queued the moment it is final, its update queued
//   behind it on the same stream. The arena is doubled: groups alternate halves, and
//   backward waits for a half's last update before writing into it again. wte last.
// - after_backward: on the last micro-step, final gradients are queued and sent in
//   buckets (one layer, or kBucketBytes); the norm and the updates wait for all of them.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "comm.hpp"
#include "config.hpp"
#include "gpt2.hpp"
#include "optimizer.hpp"

namespace gpt2 {

struct GradMemoryPlan {
  size_t grad_elems;      // elements of gradient memory the mode allocates
  size_t arena_elems;     // of which the fused arena (0 in after_backward)
};
// Gradient memory for a mode: after_backward = the whole parameter buffer; fused = wte's
// storage + the largest group announced together (a layer, or lnf, or wpe), twice that
// group with world > 1 (double-buffered so communication overlaps backward). With
// train.late_wte_grad, wte's gradient lives in activation memory instead
// (GPT2::wte_grad_home()).
GradMemoryPlan grad_memory_plan(const ParamTable& table, bool fused, int world = 1,
                                bool late_wte_grad = false);

// ZeRO-1 (train.zero1, after_backward): which rank keeps each tensor's optimizer state
// and updates it. Whole tensors, so the factored and low-rank optimizers keep their
// per-matrix statistics; largest first onto the least-loaded rank (ties: lower rank),
// so every rank computes the same assignment.
std::vector<int> zero1_owners(const ParamTable& table, int world);
// `table` with ParamSpec::local set for the tensors `rank` owns: the optimizer built
// from it allocates only those tensors' state.
ParamTable zero1_shard(const ParamTable& table, int world, int rank);

// One tensor's gradient; its squared norm goes to `slot`.
template <class T>
struct GradSlice {
  T* g;
  size_t n;
  int slot;
};

// The gradient arithmetic the pipeline needs from a backend (CPU loops here, CUDA
// kernels in kernels/grad_ops.cu).
template <class T>
class GradOps {
 public:
  virtual ~GradOps() = default;
  // Records sum(g^2) of each slice as its slot's squared norm. Many slices per call: on
  // the GPU a call is two launches per 32 tensors, not two per tensor.
  virtual void sum_squares(const std::vector<GradSlice<T>>& slices) = 0;
  // The squared norms recorded since the last call, indexed by slot (waits for them).
  virtual std::vector<double> take_squares() = 0;
  // g = clamp(g, -clip_value, clip_value) (if clip_value > 0), then g *= scale, for every
  // slice. Many per call, as sum_squares: one launch per tensor cost d12 148 launches.
  virtual void clip_scale(const std::vector<GradSlice<T>>& slices, float clip_value,
                          float scale) = 0;
};

class CpuGradOps final : public GradOps<float> {
 public:
  explicit CpuGradOps(size_t slots) : sq_(slots, 0.0) {}
  void sum_squares(const std::vector<GradSlice<float>>& slices) override;
  std::vector<double> take_squares() override;
  void clip_scale(const std::vector<GradSlice<float>>& slices, float clip_value,
                  float scale) override;

 private:
  std::vector<double> sq_;
};

template <class T>
class UpdatePipeline {
 public:
  // With bf16 weights and train.master_weights, the pipeline keeps the fp32 master
  // copy (MemCategory::master_weights) that the optimizer updates.
  // `comm` averages gradients and losses over ranks (local_comm(): one rank, no-op).
  // With train.zero1, `opt` must be built from zero1_shard(model.table, world, rank).
  UpdatePipeline(const json& cfg, GPT2<T>& model, Optimizer<T>& opt, GradOps<T>& gops,
                 Device& dev, Comm& comm = local_comm());
  ~UpdatePipeline();

  // Loads weights into the model (and the master copy, if any) from fp32 values.
  void set_weights(const std::vector<float>& host);
  // The weights as fp32: the master copy if there is one, else the model's. With ZeRO-1
  // a rank's master copy is current only for the tensors it owns (a step broadcasts the
  // bf16 weights alone, 1/3 of the bytes) until share_master(), which every rank calls.
  std::vector<float> weights() const;
  void share_master();

  // One optimizer step t (1-based): forward + backward over grad_accum_steps
  // micro-batches (after_backward) or one batch (fused), every tensor updated exactly
  // once. next_batch(inputs, targets) fills host arrays of batch*seq_len ids. A NaN/Inf
  // loss (the mean over ranks, so all ranks agree) is caught before any weight changes:
  // train.nan_policy "stop" throws an Error naming the step, "skip" returns skipped =
  // true with the weights untouched. update_ms: the after_backward update's time on the
  // device (Device::make_stopwatch; waits for it), -1 with fused updates, which run
  // inside backward.
  struct StepResult {
    float loss;
    double grad_norm;
    bool skipped;
    double update_ms = -1;
  };
  StepResult step(int64_t t, float lr, const std::function<void(int*, int*)>& next_batch);

  bool fused() const { return fused_; }
  // Whether steps now launch a recorded forward and backward (train.cuda_graph).
  bool replaying() const {
    return replay_ && replay_->recorded() && (!fused_ || replay_backward_->recorded());
  }

 private:
  class FullSink;
  class FusedSink;
  // Clips and scales the slices' gradients (train.grad_clip_value, clip_coef_), then
  // hands their tensors to the optimizer; or hands them over unscaled with clip_coef_ as
  // their grad_scale, to an optimizer that scales_grads() when there is no value clip.
  void update(const std::vector<GradSlice<T>>& slices);
  double total_norm();  // sqrt of the recorded per-tensor squares, summed in id order

  GPT2<T>& model_;
  Optimizer<T>& opt_;
  GradOps<T>& gops_;
  Device& dev_;
  Comm& comm_;
  bool fused_, two_pass_, skip_nan_, zero1_;
  std::vector<int> owners_;  // ZeRO-1: the rank that updates each tensor
  int accum_;
  float clip_norm_, clip_value_, clip_coef_ = 1.0f;
  DeviceBuffer<float> master_;
  std::unique_ptr<FullSink> full_;
  std::unique_ptr<FusedSink> fused_sink_;
  // With train.cuda_graph on one device, recorded once and replayed (see Replay):
  // after_backward, each micro-step's forward + backward in replay_; fused, the forward
  // in replay_ and the backward with its updates in replay_backward_, where the
  // optimizer is replayable() and clipping takes no second pass (whose coefficient the
  // host computes between the passes). The loss is read between them, so a non-finite
  // one still stops the step before any update. Null otherwise: data parallelism queues
  // its all-reduces only on a step's last micro-step.
  std::unique_ptr<Replay> replay_, replay_backward_;
  std::unique_ptr<Stopwatch> update_watch_;
  std::vector<int> inputs_, targets_;
};

}  // namespace gpt2
