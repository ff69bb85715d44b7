// Adafactor with HF semantics (spec optimizers.md section 4; twin of src/reference/optim/
// adafactor.cpp), and through AdafactorRule also AdaLomo (adalomo.cu). All on the device.
// A matrix is three passes (factored.cuh): a sweep for the r/c EMAs and factors (and
// sum(W^2) if scale_parameter, read in the same pass), a sweep for sum(U^2), and one
// elementwise pass that applies clipping, the step size, the optional first moment of
// the lr-scaled update and decoupled decay scaled by alpha: 2 reads of g, bf16 16-byte
// runs. A vector is one block (the ~100 biases and layernorm tensors of GPT-2 are
// dominated by launch count, not bytes) that keeps its whole update, both reductions
// included. update_many puts every vector of the batch in one launch and each pass of
// every matrix in one launch: a d12 after_backward step is 10 launches, not 248.
#include <algorithm>
#include <cmath>

#include "factored.cuh"

namespace gpt2::cuda {
namespace {

enum Slot { kSumW2, kSumU2, kSlots };
// Each tensor's kSlots double sums, filled on the device by the sweeps.
size_t scalar_slots(const ParamTable& table) { return kSlots * table.params.size(); }

// rho is the step's (g_step.d[0]).
struct StepArgs {
  double eps2, d, wd;
  bool scale_parameter;
  float beta1;
};

// alpha = rho * max(eps2, RMS(W_old)) (scale_parameter) or rho; decay scaled by alpha
// (pitfall 5).
struct StepScalars {
  float clip, step, keep;
};
__device__ __forceinline__ StepScalars step_scalars(const StepArgs& a, double sum_w2, double sum_u2,
                                                    size_t numel) {
  const double rho = g_step.d[0];
  const double alpha = a.scale_parameter ? rho * fmax(a.eps2, sqrt(sum_w2 / double(numel))) : rho;
  return {clip_divisor(sum_u2, numel, a.d), float(alpha), float(1.0 - alpha * a.wd)};
}

template <class D>
struct AdafactorApply {
  Weights<D> w;
  const D* g;
  const float *rf, *cf;
  int64_t n;
  size_t numel;
  const double* scal;
  StepArgs a;
  float* m1;
  float scale;  // the gradient is scale * g (TensorUpdate::grad_scale)
  __device__ AdafactorApply now() const {
    AdafactorApply f = *this;
    f.w = w.now();
    return f;
  }
  __device__ StepScalars constants() const { return step_scalars(a, scal[kSumW2], scal[kSumU2], numel); }
  template <bool kVec>
  __device__ void apply(const StepScalars& k, int64_t i, int64_t j, int left) const {
    const size_t at = size_t(i) * size_t(n) + j;
    float x[kRun], cv[kRun], y[kRun], mv[kRun];
    load_run<kVec>(g + at, left, x);
    load_run<kVec>(cf + j, left, cv);
    load_weights<kVec>(w, at, left, y);
    if (m1) load_run<kVec>(m1 + at, left, mv);
    const float r = rf[i];
#pragma unroll
    for (int e = 0; e < kRun; e++) {
      float u = k.step * ((x[e] * scale * r * cv[e]) / k.clip);  // lr BEFORE the momentum EMA
      if (m1) u = mv[e] = a.beta1 * mv[e] + (1.f - a.beta1) * u;
      y[e] = y[e] * k.keep - u;
    }
    if (m1) store_run<kVec>(m1 + at, left, mv);
    store_weights<kVec>(w, at, left, y);
  }
};

// Vectors: v, U, both sums, and the weights in one block per vector; GPT-2's vectors
// (at most 4C) stay in registers between the reductions and the update.
template <class D>
struct AdafactorVector {
  Weights<D> w;
  const D* g;
  float *v, *m1;
  size_t n;
  StepArgs a;
  float scale;  // as AdafactorApply::scale
};
template <class D>
__global__ void __launch_bounds__(kVectorThreads)
    adafactor_vectors(const __grid_constant__ Jobs<AdafactorVector<D>> b, double eps1) {
  __shared__ double red[32];
  const AdafactorVector<D>& job = b.job[blockIdx.x];
  const double beta2 = g_step.d[1];
  const Weights<D> w = job.w.now();
  const D* g = job.g;
  float *v = job.v, *m1 = job.m1;
  const size_t n = job.n;
  const StepArgs& a = job.a;
  const float scale = job.scale;
  double w2 = 0, u2 = 0;
  const auto first = [&](size_t i, float& x, float& vi, float& y) {
    const double xd = to_f(g[i]) * scale;
    vi = float(beta2 * v[i] + (1 - beta2) * (xd * xd + eps1));
    v[i] = vi;
    x = float(xd);
    const float u = x / sqrtf(vi);
    u2 += double(u) * u;
    y = w.load(i);
    if (a.scale_parameter) w2 += double(y) * y;
  };
  float xs[kVectorCached], vs[kVectorCached], ys[kVectorCached];
#pragma unroll
  for (int q = 0; q < kVectorCached; q++)
    if (threadIdx.x + q * kVectorThreads < n) first(threadIdx.x + q * kVectorThreads, xs[q], vs[q], ys[q]);
  for (size_t i = threadIdx.x + kVectorCached * kVectorThreads; i < n; i += kVectorThreads) {
    float x, vi, y;
    first(i, x, vi, y);
  }
  u2 = block_sum_d(u2, red);
  w2 = block_sum_d(w2, red);
  const StepScalars k = step_scalars(a, w2, u2, n);
  const auto second = [&](size_t i, float x, float vi, float y) {
    float u = k.step * ((x / sqrtf(vi)) / k.clip);
    if (m1) u = m1[i] = a.beta1 * m1[i] + (1.f - a.beta1) * u;
    w.store(i, y * k.keep - u);
  };
#pragma unroll
  for (int q = 0; q < kVectorCached; q++)
    if (threadIdx.x + q * kVectorThreads < n) second(threadIdx.x + q * kVectorThreads, xs[q], vs[q], ys[q]);
  for (size_t i = threadIdx.x + kVectorCached * kVectorThreads; i < n; i += kVectorThreads)
    second(i, to_f(g[i]) * scale, v[i], w.load(i));
}

template <class T>
class Adafactor final : public Optimizer<T> {
 public:
  Adafactor(const json& cfg, const AdafactorRule& rule, const ParamTable& table, Device& dev,
            uint64_t seed)
      : common_(cfg), rule_(rule), seed_(seed), store_(dev), fac_(dev, table),
        scal_(dev, scalar_slots(table), MemCategory::workspace, rule.prefix + " scalars") {
    for (const ParamSpec& p : table.params) {
      moments_.push_back(optim::add_second_moment(store_, rule.prefix, p));
      m1_.push_back(rule.momentum ? store_.add(p, rule.prefix + ".m1", p.numel) : nullptr);
    }
  }

  void begin_step(int64_t t, float lr) override {
    const double inv_sqrt_t = 1.0 / std::sqrt(double(t));
    const double rho = !rule_.relative_step ? lr
                       : rule_.warmup_init  ? std::min(1e-6 * t, inv_sqrt_t)
                                            : std::min(1e-2, inv_sqrt_t);
    set_step({t, lr, {0, 0}, {rho, 1.0 - std::pow(double(t), rule_.decay_rate)}});
  }

  void update(const ParamSpec& p, T* param, float* master, T* grad) override {
    update_many({{&p, param, master, grad}});
  }

  void update_many(const std::vector<TensorUpdate<T>>& us) override {
    using D = device_t<T>;
    std::vector<AdafactorVector<D>> vectors;
    std::vector<SweepJob<GradStats<D>>> stats[2];  // [vectorizable]
    std::vector<SweepJob<DirectionSquares<D>>> squares[2];
    std::vector<RunsJob<AdafactorApply<D>>> applies[2];
    for (const TensorUpdate<T>& u : us) {
      const ParamSpec& p = *u.p;
      const Weights<D> w = weights(u.param, u.master, seed_, p.id);
      const D* g = dev_ptr<T>(u.grad);
      const optim::SecondMoment& s = moments_[p.id];
      float* m1 = m1_[p.id];
      const StepArgs a{rule_.eps2, rule_.clip, common_.wd(p), rule_.scale_parameter,
                       float(rule_.beta1)};
      if (!p.is_matrix()) {
        vectors.push_back({w, g, s.v, m1, p.numel, a, u.grad_scale});
        continue;
      }
      double* sc = scal_.get() + kSlots * p.id;
      const int vec = vectorizable(p.cols, {u.grad, u.master, u.param, m1});
      const Factored::Matrix x = fac_.matrix(p);
      stats[vec].push_back(
          {GradStats<D>{g, p.cols, w, rule_.scale_parameter, float(rule_.eps1), u.grad_scale}, x.s,
           x.parts, Ema{0, s.r, s.c, x.rf, x.cf, true},
           rule_.scale_parameter ? sc + kSumW2 : nullptr});
      squares[vec].push_back({DirectionSquares<D>{g, x.rf, x.cf, p.cols, u.grad_scale}, x.s,
                              x.parts, Ema{}, sc + kSumU2});
      applies[vec].push_back(Factored::runs_job(
          AdafactorApply<D>{w, g, x.rf, x.cf, p.cols, p.numel, sc, a, m1, u.grad_scale}, p.rows,
          p.cols));
    }
    launch_jobs(vectors, [](const AdafactorVector<D>&) { return 1u; },
                [&](const Jobs<AdafactorVector<D>>& b, unsigned grid) {
                  adafactor_vectors<<<grid, kVectorThreads, 0, update_stream()>>>(b, rule_.eps1);
                });
    for (int vec = 0; vec < 2; vec++) {
      fac_.sweep(stats[vec], vec, true);
      fac_.sweep(squares[vec], vec, false);
      fac_.elementwise(applies[vec], vec);
    }
  }

  // Every pass that reads the gradient takes TensorUpdate::grad_scale with it, sparing
  // the pipeline's clip pass over every gradient.
  bool scales_grads() const override { return true; }
  bool replayable() const override { return true; }
  std::vector<StateBlob> state() override { return store_.blobs(); }

 private:
  optim::Common common_;
  AdafactorRule rule_;
  uint64_t seed_;
  optim::StateStore store_;
  Factored fac_;
  DeviceBuffer<double> scal_;
  std::vector<optim::SecondMoment> moments_;
  std::vector<float*> m1_;
};

bool flag(const json& cfg, const std::string& key) {
  const json& v = optim::entry(cfg, "adafactor", key);
  if (!v.is_boolean())
    fail("config key optimizer.adafactor.", key, " = ", v.dump(), " must be true or false");
  return v.get<bool>();
}

}  // namespace

template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_adafactor_rule(const json& cfg, const AdafactorRule& rule,
                                                       const ParamTable& table, Device& dev,
                                                       uint64_t seed) {
  return std::make_unique<Adafactor<T>>(cfg, rule, table, dev, seed);
}

template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_adafactor(const json& cfg, const ParamTable& table,
                                                  Device& dev, uint64_t seed) {
  AdafactorRule r;
  r.prefix = "adafactor";
  r.momentum = !optim::entry(cfg, "adafactor", "beta1").is_null();
  r.beta1 = r.momentum ? optim::number(cfg, "adafactor", "beta1", 0.0, 0.999999) : 0.0;
  r.eps1 = optim::number(cfg, "adafactor", "eps1", 0.0, 1.0);
  r.eps2 = optim::number(cfg, "adafactor", "eps2", 0.0, 1.0);
  r.clip = optim::number(cfg, "adafactor", "clip_threshold", 1e-12, 1e12);
  r.decay_rate = optim::number(cfg, "adafactor", "decay_rate", -1.0, -1e-6);
  r.scale_parameter = flag(cfg, "scale_parameter");
  r.relative_step = flag(cfg, "relative_step");
  r.warmup_init = flag(cfg, "warmup_init");
  if (r.warmup_init && !r.relative_step)
    fail("config key optimizer.adafactor.warmup_init = true needs "
         "optimizer.adafactor.relative_step = true; set one of them accordingly");
  return make_cuda_adafactor_rule<T>(cfg, r, table, dev, seed);
}

#define INSTANTIATE(T)                                                                      \
  template std::unique_ptr<Optimizer<T>> make_cuda_adafactor_rule<T>(                       \
      const json&, const AdafactorRule&, const ParamTable&, Device&, uint64_t);             \
  template std::unique_ptr<Optimizer<T>> make_cuda_adafactor<T>(const json&, const ParamTable&, \
                                                                Device&, uint64_t);
INSTANTIATE(float)
INSTANTIATE(bf16)
#undef INSTANTIATE

size_t adafactor_workspace_bytes(const ParamTable& table, int sms) {
  return Factored::workspace_bytes(table, sms) + scalar_slots(table) * sizeof(double);
}

}  // namespace gpt2::cuda
