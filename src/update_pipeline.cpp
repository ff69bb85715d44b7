#include "update_pipeline.hpp"

#include <algorithm>
#include <cmath>
#include <map>

#include "error.hpp"

namespace gpt2 {

namespace {

// Tensors that backward announces together share the arena: one layer, or lnf, or
// wpe (which ends the backward beside wte). wte has its own buffer.
int group_of(const ParamSpec& p) {
  if (p.layer >= 0) return p.layer;
  return p.kind == ParamKind::wpe ? -2 : -1;
}

}  // namespace

GradMemoryPlan grad_memory_plan(const ParamTable& table, bool fused) {
  if (!fused) return {table.total, 0};
  std::vector<size_t> group_size(table.cfg.num_layers + 2, 0);
  for (const ParamSpec& p : table.params)
    if (p.kind != ParamKind::wte) group_size[group_of(p) + 2] += p.storage;
  const size_t arena = *std::max_element(group_size.begin(), group_size.end());
  return {table.get(ParamKind::wte).storage + arena, arena};
}

class UpdatePipeline::FullSink final : public GradSink<float> {
 public:
  FullSink(const ParamTable& table, Device& dev)
      : grads_(dev, table.total, MemCategory::grads, "gradients (full buffer)") {}
  float* grad(const ParamSpec& p) override { return grads_.get() + p.offset; }
  void ready(const ParamSpec&) override {}
  void zero() { std::fill(grads_.get(), grads_.get() + grads_.size(), 0.0f); }

 private:
  DeviceBuffer<float> grads_;
};

class UpdatePipeline::FusedSink final : public GradSink<float> {
 public:
  FusedSink(UpdatePipeline& pipe, const ParamTable& table, Device& dev)
      : pipe_(pipe),
        wte_(dev, table.get(ParamKind::wte).storage, MemCategory::grads, "wte gradient"),
        arena_(dev, grad_memory_plan(table, true).arena_elems, MemCategory::grads,
               "gradient arena (one layer)") {}
  bool measuring = false;  // first pass of two-pass clipping: norms only, no update

  float* grad(const ParamSpec& p) override {
    float* g;
    if (p.kind == ParamKind::wte) {
      g = wte_.get();
    } else {
      if (group_of(p) != group_) {
        if (pending_ != 0) fail("internal: arena reused while ", pending_, " gradients pending");
        group_ = group_of(p), used_ = 0;
      }
      g = arena_.get() + used_;
      used_ += p.storage;
      pending_++;
    }
    std::fill(g, g + p.storage, 0.0f);
    slot_[p.id] = g;
    return g;
  }

  void ready(const ParamSpec& p) override {
    float* g = slot_.at(p.id);
    pipe_.sq_[p.id] = pipe_.sum_squares(g, p.numel);
    if (!measuring) pipe_.apply(p, g);
    if (p.kind != ParamKind::wte) pending_--;
  }

  void reset() { group_ = -3, used_ = 0, pending_ = 0; }

 private:
  UpdatePipeline& pipe_;
  DeviceBuffer<float> wte_, arena_;
  std::map<int, float*> slot_;
  int group_ = -3, pending_ = 0;
  size_t used_ = 0;
};

UpdatePipeline::UpdatePipeline(const json& cfg, GPT2<float>& model, Optimizer& opt, Device& dev)
    : model_(model), opt_(opt) {
  const json& tr = cfg["train"];
  fused_ = resolved_update(cfg) == "fused";
  two_pass_ = tr["two_pass_clip"].get<bool>();
  skip_nan_ = tr["nan_policy"].get<std::string>() == "skip";
  accum_ = tr["grad_accum_steps"].get<int>();
  clip_norm_ = float(resolved_grad_clip(cfg));
  clip_value_ = tr["grad_clip_value"].get<float>();
  // The config check rejects these with a message naming the keys; this guards callers
  // that build a pipeline from an unchecked config.
  if (fused_ && accum_ != 1) fail("fused update needs train.grad_accum_steps = 1");
  if (fused_ && clip_norm_ > 0 && !two_pass_)
    fail("fused update with train.grad_clip > 0 needs train.two_pass_clip = true");
  sq_.assign(model.table.params.size(), 0.0);
  if (fused_)
    fused_sink_ = std::make_unique<FusedSink>(*this, model.table, dev);
  else
    full_ = std::make_unique<FullSink>(model.table, dev);
  const size_t n = size_t(model.batch) * model.seq_len;
  inputs_.resize(n), targets_.resize(n);
}

UpdatePipeline::~UpdatePipeline() = default;

double UpdatePipeline::sum_squares(const float* g, size_t n) const {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += double(g[i]) * g[i];
  return s;
}

double UpdatePipeline::total_norm() const {
  double s = 0;
  for (double x : sq_) s += x;
  return std::sqrt(s);
}

void UpdatePipeline::apply(const ParamSpec& p, float* g) {
  if (clip_value_ > 0)
    for (size_t i = 0; i < p.numel; i++) g[i] = std::clamp(g[i], -clip_value_, clip_value_);
  if (clip_coef_ != 1.0f)
    for (size_t i = 0; i < p.numel; i++) g[i] *= clip_coef_;
  opt_.update(p, model_.params() + p.offset, g);
}

UpdatePipeline::StepResult UpdatePipeline::step(
    int64_t t, float lr, const std::function<void(int*, int*)>& next_batch) {
  const float dloss = 1.0f / (float(inputs_.size()) * accum_);
  auto loss_ok = [&](float loss) {
    if (std::isfinite(loss)) return true;
    if (!skip_nan_)
      fail("step ", t, ": loss is ", loss, "; stopping before the weights change (set ",
           "train.nan_policy=skip to skip such steps, or lower optimizer.lr)");
    return false;
  };
  auto clip_coef = [&](double norm) {
    return clip_norm_ > 0 ? float(std::min(1.0, clip_norm_ / (norm + 1e-6))) : 1.0f;
  };
  opt_.begin_step(t, lr);

  if (!fused_) {
    full_->zero();
    double loss_sum = 0;
    for (int micro = 0; micro < accum_; micro++) {
      next_batch(inputs_.data(), targets_.data());
      const float loss = model_.forward(inputs_.data(), targets_.data(), dloss);
      if (!loss_ok(loss)) return {loss, 0.0, true};
      loss_sum += loss;
      model_.backward(*full_);
    }
    for (const ParamSpec& p : model_.table.params)
      sq_[p.id] = sum_squares(full_->grad(p), p.numel);
    const double norm = total_norm();
    clip_coef_ = clip_coef(norm);
    for (const ParamSpec& p : model_.table.params) apply(p, full_->grad(p));
    return {float(loss_sum / accum_), norm, false};
  }

  next_batch(inputs_.data(), targets_.data());
  const float loss = model_.forward(inputs_.data(), targets_.data(), dloss);
  if (!loss_ok(loss)) return {loss, 0.0, true};
  clip_coef_ = 1.0f;
  if (two_pass_) {
    fused_sink_->measuring = true;
    fused_sink_->reset();
    model_.backward(*fused_sink_);
    clip_coef_ = clip_coef(total_norm());
  }
  fused_sink_->measuring = false;
  fused_sink_->reset();
  model_.backward(*fused_sink_);
  return {loss, total_norm(), false};
}

}  // namespace gpt2
