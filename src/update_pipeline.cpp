#include "update_pipeline.hpp"

#include <algorithm>
#include <cmath>
#include <map>

#include "dtype.hpp"
#include "error.hpp"

namespace gpt2 {

namespace {

// Tensors that backward announces together share the arena: one layer, or lnf, or
// wpe (which ends the backward beside wte). wte has its own buffer (with late_wte_grad,
// the model's fch activations).
int group_of(const ParamSpec& p) {
  if (p.layer >= 0) return p.layer;
  return p.kind == ParamKind::wpe ? -2 : -1;
}

// Per-group tables are indexed by group_of(p) + 2; wte, which neither sink puts in a
// group's arena or bucket, comes last.
int group_index(const ParamSpec& p, const ParamTable& table) {
  return p.kind == ParamKind::wte ? table.cfg.num_layers + 2 : group_of(p) + 2;
}

// Tensors in each group, by group_index.
std::vector<int> group_counts(const ParamTable& table) {
  std::vector<int> count(table.cfg.num_layers + 3, 0);
  for (const ParamSpec& p : table.params) count[group_index(p, table)]++;
  return count;
}

// Arena elements of each group, indexed by group_of(p) + 2.
std::vector<size_t> group_sizes(const ParamTable& table) {
  std::vector<size_t> size(table.cfg.num_layers + 2, 0);
  for (const ParamSpec& p : table.params)
    if (p.kind != ParamKind::wte) size[group_of(p) + 2] += p.storage;
  return size;
}

}  // namespace

GradMemoryPlan grad_memory_plan(const ParamTable& table, bool fused, int world,
                                bool late_wte_grad) {
  if (!fused) return {table.total, 0};
  const std::vector<size_t> group_size = group_sizes(table);
  const size_t largest = *std::max_element(group_size.begin(), group_size.end());
  const size_t arena = largest * (world > 1 ? 2 : 1);
  return {(late_wte_grad ? 0 : table.get(ParamKind::wte).storage) + arena, arena};
}

std::vector<int> zero1_owners(const ParamTable& table, int world) {
  std::vector<int> order(table.params.size());
  for (size_t i = 0; i < order.size(); i++) order[i] = int(i);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return table.params[a].numel > table.params[b].numel;
  });
  std::vector<size_t> load(world, 0);
  std::vector<int> owner(order.size());
  for (int id : order) {
    const int r = int(std::min_element(load.begin(), load.end()) - load.begin());
    owner[id] = r;
    load[r] += table.params[id].numel;
  }
  return owner;
}

ParamTable zero1_shard(const ParamTable& table, int world, int rank) {
  ParamTable shard = table;
  const std::vector<int> owner = zero1_owners(table, world);
  for (ParamSpec& p : shard.params) p.local = owner[p.id] == rank;
  return shard;
}

void CpuGradOps::sum_squares(const std::vector<GradSlice<float>>& slices) {
  for (const GradSlice<float>& x : slices) {
    double s = 0;
    for (size_t i = 0; i < x.n; i++) s += double(x.g[i]) * x.g[i];
    sq_.at(x.slot) = s;
  }
}

std::vector<double> CpuGradOps::take_squares() {
  std::vector<double> out(sq_.size(), 0.0);
  std::swap(out, sq_);
  return out;
}

void CpuGradOps::clip_scale(const std::vector<GradSlice<float>>& slices, float clip_value,
                            float scale) {
  for (const GradSlice<float>& x : slices) {
    if (clip_value > 0)
      for (size_t i = 0; i < x.n; i++) x.g[i] = std::clamp(x.g[i], -clip_value, clip_value);
    if (scale != 1.0f)
      for (size_t i = 0; i < x.n; i++) x.g[i] *= scale;
  }
}

// NCCL's own guidance for data-parallel buckets: big enough to reach bus bandwidth,
// small enough that the first ones go out while backward is still busy.
constexpr size_t kBucketBytes = size_t(25) << 20;

template <class T>
class UpdatePipeline<T>::FullSink final : public GradSink<T> {
 public:
  FullSink(const ParamTable& table, Device& dev, Comm& comm)
      : dev_(dev),
        comm_(comm),
        table_(table),
        grads_(dev, table.total, MemCategory::grads, "gradients (full buffer)"),
        group_count_(group_counts(table)) {}
  bool reducing = false;  // the last micro-step of a multi-rank step: gradients are final
  const std::vector<int>* owners = nullptr;  // ZeRO-1: each gradient goes to its owner only

  T* grad(const ParamSpec& p) override { return grads_.get() + p.offset; }
  // A bucket goes out the moment its group's last gradient is final (not when the next
  // group's first is), or once it holds kBucketBytes.
  void ready(const ParamSpec& p) override {
    if (!reducing) return;
    queue_.push_back({grad(p), p.storage, dtype_of<T>(), owners ? (*owners)[p.id] : 0});
    queued_bytes_ += p.storage * sizeof(T);
    if (--left_[group_index(p, table_)] == 0 || queued_bytes_ >= kBucketBytes) flush();
  }
  void flush() {
    if (owners) comm_.reduce_to(queue_);
    else comm_.reduce_grads(queue_);
    queue_.clear(), queued_bytes_ = 0;
  }
  void zero() {
    dev_.zero(grads_.get(), grads_.bytes());
    left_ = group_count_;
  }

 private:
  Device& dev_;
  Comm& comm_;
  const ParamTable& table_;
  DeviceBuffer<T> grads_;
  std::vector<int> group_count_, left_;  // tensors per group; not yet final this step
  std::vector<GradBuf> queue_;
  size_t queued_bytes_ = 0;
};

template <class T>
class UpdatePipeline<T>::FusedSink final : public GradSink<T> {
 public:
  FusedSink(UpdatePipeline& pipe, const ParamTable& table, Device& dev)
      : pipe_(pipe),
        dev_(dev),
        halves_(pipe.comm_.world() > 1 ? 2 : 1),
        own_wte_grad_(pipe.model_.wte_grad_home()
                          ? DeviceBuffer<T>()
                          : DeviceBuffer<T>(dev, table.get(ParamKind::wte).storage,
                                            MemCategory::grads, "wte gradient")),
        wte_grad_(own_wte_grad_.get() ? own_wte_grad_.get() : pipe.model_.wte_grad_home()),
        arena_(dev, grad_memory_plan(table, true, pipe.comm_.world()).arena_elems,
               MemCategory::grads,
               halves_ > 1 ? "gradient arena (two layers)" : "gradient arena (one layer)"),
        half_elems_(arena_.size() / halves_),
        group_count_(group_counts(table)),
        group_storage_(group_sizes(table)) {}
  bool measuring = false;  // first pass of two-pass clipping: norms only, no update

  T* grad(const ParamSpec& p) override {
    T* g;
    // Gradients accumulate, so they start at zero: wte alone, a group with one memset
    // when its first tensor is asked for (one per tensor cost ~150 launches a step).
    if (p.kind == ParamKind::wte) {
      g = wte_grad_;
      dev_.zero(g, p.storage * sizeof(T));
    } else {
      if (group_of(p) != group_) {
        if (pending_ != 0 || !final_.empty())
          fail("internal: arena reused while ", pending_, " gradients and ", final_.size(),
               " updates pending");
        group_ = group_of(p), used_ = 0, done_ = 0;
        half_ = (half_ + 1) % halves_;
        pipe_.comm_.wait_mark(half_);  // the updates that last read this half are done
        dev_.zero(arena_.get() + half_ * half_elems_, group_storage_[group_ + 2] * sizeof(T));
      }
      g = arena_.get() + half_ * half_elems_ + used_;
      used_ += p.storage;
      pending_++;
    }
    slot_[p.id] = g;
    return g;
  }

  // A group's updates go to the optimizer together once its last gradient is final
  // (wte's alone), before the arena is reused: the factored optimizers update many
  // tensors per kernel launch.
  void ready(const ParamSpec& p) override {
    T* g = slot_.at(p.id);
    Comm& comm = pipe_.comm_;
    comm.reduce_grads({{g, p.storage, dtype_of<T>()}});
    const bool group_done = p.kind == ParamKind::wte || ++done_ == group_count_[group_of(p) + 2];
    final_.push_back({&p, g});
    if (group_done)
      comm.on_comm_stream([&] {
        std::vector<GradSlice<T>> slices;
        for (auto [q, qg] : final_) slices.push_back({qg, q->numel, q->id});
        pipe_.gops_.sum_squares(slices);
        if (!measuring) pipe_.update(slices);
        final_.clear();
      });
    if (p.kind != ParamKind::wte) {
      comm.mark(half_);
      pending_--;
    }
  }

  void reset() { group_ = -3, used_ = 0, pending_ = 0, done_ = 0, final_.clear(); }

 private:
  UpdatePipeline& pipe_;
  Device& dev_;
  const int halves_;
  DeviceBuffer<T> own_wte_grad_;  // empty when the model lends one (late_wte_grad)
  T* const wte_grad_;
  DeviceBuffer<T> arena_;
  const size_t half_elems_;
  std::map<int, T*> slot_;
  std::vector<int> group_count_;  // tensors per group (group_index)
  std::vector<size_t> group_storage_;  // their elements
  // The current group's final gradients: their norms and updates go out together once
  // the last is final.
  std::vector<std::pair<const ParamSpec*, T*>> final_;
  int group_ = -3, pending_ = 0, half_ = 0, done_ = 0;
  size_t used_ = 0;
};

template <class T>
UpdatePipeline<T>::UpdatePipeline(const json& cfg, GPT2<T>& model, Optimizer<T>& opt,
                                  GradOps<T>& gops, Device& dev, Comm& comm)
    : model_(model), opt_(opt), gops_(gops), dev_(dev), comm_(comm) {
  const json& tr = cfg["train"];
  fused_ = resolved_update(cfg) == "fused";
  two_pass_ = tr["two_pass_clip"].get<bool>();
  skip_nan_ = tr["nan_policy"].get<std::string>() == "skip";
  accum_ = tr["grad_accum_steps"].get<int>();
  clip_norm_ = float(resolved_grad_clip(cfg));
  clip_value_ = tr["grad_clip_value"].get<float>();
  zero1_ = tr["zero1"].get<bool>() && comm.world() > 1;
  if (zero1_ && fused_) fail("train.zero1 needs optimizer.update = after_backward");
  if (zero1_) owners_ = zero1_owners(model.table, comm.world());
  // The config check rejects these with a message naming the keys; this guards callers
  // that build a pipeline from an unchecked config.
  if (fused_ && accum_ != 1) fail("fused update needs train.grad_accum_steps = 1");
  if (fused_ && clip_norm_ > 0 && !two_pass_)
    fail("fused update with train.grad_clip > 0 needs train.two_pass_clip = true");
  if (std::is_same_v<T, bf16> && tr["master_weights"].get<bool>())
    master_ = DeviceBuffer<float>(dev, model.table.total, MemCategory::master_weights,
                                  "fp32 master weights");
  if (model.late_wte_grad != tr["late_wte_grad"].get<bool>())
    fail("internal: the model's late_wte_grad differs from the config's");
  if (fused_) {
    fused_sink_ = std::make_unique<FusedSink>(*this, model.table, dev);
  } else {
    full_ = std::make_unique<FullSink>(model.table, dev, comm);
    update_watch_ = dev.make_stopwatch();
  }
  if (zero1_) full_->owners = &owners_;
  if (comm.world() == 1 && tr["cuda_graph"].get<bool>()) {
    if (!fused_) {
      replay_ = dev.make_replay();
    } else if (!two_pass_ && opt.replayable()) {
      replay_ = dev.make_replay();
      replay_backward_ = dev.make_replay();
    }
  }
  const size_t n = size_t(model.batch) * model.seq_len;
  inputs_.resize(n), targets_.resize(n);
}

// Out of line: the sinks are incomplete types in the header.
template <class T>
UpdatePipeline<T>::~UpdatePipeline() = default;

template <class T>
void UpdatePipeline<T>::set_weights(const std::vector<float>& host) {
  model_.set_params(host);
  if (master_.get()) dev_.to_device(master_.get(), host.data(), host.size() * sizeof(float));
}

template <class T>
std::vector<float> UpdatePipeline<T>::weights() const {
  if (!master_.get()) return model_.get_params();
  std::vector<float> host(master_.size());
  dev_.to_host(host.data(), master_.get(), master_.bytes());
  return host;
}

template <class T>
void UpdatePipeline<T>::share_master() {
  if (!zero1_ || !master_.get()) return;
  std::vector<GradBuf> bufs;
  for (const ParamSpec& p : model_.table.params)
    bufs.push_back({master_.get() + p.offset, p.storage, DType::f32, owners_[p.id]});
  comm_.broadcast(bufs);
  comm_.join();
}

template <class T>
double UpdatePipeline<T>::total_norm() {
  std::vector<double> sq = gops_.take_squares();
  // ZeRO-1: each rank measured only its own tensors (the others' slots are 0), so the
  // slots are summed over ranks first; then the id-order sum equals plain data parallel's.
  if (zero1_) comm_.all_reduce_sum(sq.data(), sq.size());
  double s = 0;
  for (double x : sq) s += x;
  return std::sqrt(s);
}

template <class T>
void UpdatePipeline<T>::update(const std::vector<GradSlice<T>>& slices) {
  // An optimizer that scales gradients as it reads them (all six) takes the global-norm
  // coefficient itself, sparing clip_scale's read and write of every gradient (H100, ncu:
  // 0.18 ms a d12 B16 step, ~0.5 ms at d24); an elementwise clamp (train.grad_clip_value)
  // still needs the pass. The same weights bit for bit in fp32; with bf16 gradients more
  // accurate ones, as g * coef is no longer rounded to bf16 before the update reads it.
  const bool opt_scales = clip_value_ <= 0 && opt_.scales_grads();
  if (!opt_scales && (clip_value_ > 0 || clip_coef_ != 1.0f))
    gops_.clip_scale(slices, clip_value_, clip_coef_);
  std::vector<TensorUpdate<T>> updates;
  for (const GradSlice<T>& x : slices) {
    const ParamSpec& p = model_.table.params[x.slot];
    updates.push_back({&p, model_.params() + p.offset,
                       master_.get() ? master_.get() + p.offset : nullptr, x.g,
                       opt_scales ? clip_coef_ : 1.0f});
  }
  opt_.update_many(updates);
}

template <class T>
typename UpdatePipeline<T>::StepResult UpdatePipeline<T>::step(
    int64_t t, float lr, const std::function<void(int*, int*)>& next_batch) {
  const float dloss = 1.0f / (float(inputs_.size()) * accum_);
  auto loss_ok = [&](double loss) {
    if (std::isfinite(loss)) return true;
    if (!skip_nan_)
      fail("step ", t, ": loss is ", loss, "; stopping before the weights change (set ",
           "train.nan_policy=skip to skip such steps, or lower optimizer.lr)");
    return false;
  };
  auto clip_coef = [&](double norm) {
    return clip_norm_ > 0 ? float(std::min(1.0, clip_norm_ / (norm + 1e-6))) : 1.0f;
  };
  auto run = [](Replay* replay, const std::function<void()>& work) {
    if (replay) replay->run(work);
    else work();
  };
  opt_.begin_step(t, lr);

  if (!fused_) {
    full_->zero();
    // Nothing changes a weight before the update below, so the loss is read (a host
    // sync) only after backward, and on the last micro-step the gradient norms, are
    // queued: the device goes from forward to backward to the norms without waiting for
    // the host, and a non-finite loss still stops the step in time. (A skipped step's
    // norms are overwritten by the next step's.)
    auto mine = [&](const ParamSpec& p) { return !zero1_ || owners_[p.id] == comm_.rank(); };
    std::vector<GradSlice<T>> slices;
    for (const ParamSpec& p : model_.table.params)
      if (mine(p)) slices.push_back({full_->grad(p), p.numel, p.id});
    double loss_sum = 0;
    for (int micro = 0; micro < accum_; micro++) {
      next_batch(inputs_.data(), targets_.data());
      model_.load_batch(inputs_.data(), targets_.data());
      full_->reducing = comm_.world() > 1 && micro == accum_ - 1;
      run(replay_.get(), [&] {
        model_.queue_forward(dloss, full_.get());
        model_.backward(*full_);
      });
      if (micro == accum_ - 1) {
        full_->flush();
        comm_.join();
        gops_.sum_squares(slices);
      }
      const double loss = comm_.mean(model_.loss());
      if (!loss_ok(loss)) {
        comm_.join();
        return {float(loss), 0.0, true};
      }
      loss_sum += loss;
    }
    const double norm = total_norm();
    clip_coef_ = clip_coef(norm);
    update_watch_->start();
    update(slices);
    update_watch_->stop();
    if (zero1_) {  // every rank takes each tensor's new weights from its owner
      std::vector<GradBuf> bufs;
      for (const ParamSpec& p : model_.table.params)
        bufs.push_back({model_.params() + p.offset, p.storage, dtype_of<T>(), owners_[p.id]});
      comm_.broadcast(bufs);
      comm_.join();
    }
    return {float(loss_sum / accum_), norm, false, update_watch_->ms()};
  }

  // The forward's chunked classifier writes d(lnf) (and, without late_wte_grad, wte's
  // gradient) for the backward that follows, which consumes it, so each pass over the
  // gradients is a forward + backward: two-pass clipping costs one extra forward besides
  // the extra backward. The measuring pass changes no weight, so the second forward's
  // loss equals the first.
  next_batch(inputs_.data(), targets_.data());
  model_.load_batch(inputs_.data(), targets_.data());
  auto forward = [&](bool measuring) {
    fused_sink_->measuring = measuring;
    fused_sink_->reset();
    run(replay_.get(), [&] { model_.queue_forward(dloss, fused_sink_.get()); });
    return comm_.mean(model_.loss());
  };
  const double loss = forward(two_pass_);
  if (!loss_ok(loss)) {
    // The forward ran (or was recorded) and the backward did not: start both recordings
    // afresh, so that they are made in the same step again.
    if (replay_backward_) replay_ = dev_.make_replay(), replay_backward_ = dev_.make_replay();
    return {float(loss), 0.0, true};
  }
  clip_coef_ = 1.0f;
  if (two_pass_) {
    model_.backward(*fused_sink_);  // measures the norm, updates nothing
    comm_.join();
    clip_coef_ = clip_coef(total_norm());
    forward(false);
  }
  run(replay_backward_.get(), [&] { model_.backward(*fused_sink_); });
  comm_.join();
  return {float(loss), total_norm(), false};
}

template class UpdatePipeline<float>;
template class UpdatePipeline<bf16>;

}  // namespace gpt2
