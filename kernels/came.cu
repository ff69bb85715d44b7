// CAME (spec optimizers.md section 5; twin of src/reference/optim/came.cpp): Adafactor's
// factored direction U, a first moment m of the clipped U, and for matrices the factored
// instability (U - m_new)^2 + eps2 whose inverse square root scales m. A matrix is four
// passes (factored.cuh): a sweep for the r/c EMAs and factors, a sweep for sum(U^2), a
// sweep that updates m and feeds the instability's row/column EMAs and factors (U
// recomputed from g, not stored), and one elementwise pass for the weights. A vector
// (no instability state) is one block. update_many runs each pass of every matrix of
// the batch, and every vector, as one launch; the global-norm clip coefficient
// (grad_scale) is applied wherever g is read.
#include "factored.cuh"
#include "reference/optim/optim_common.hpp"

namespace gpt2::cuda {
namespace {

enum Slot { kSumU2, kSlots };
// Each tensor's kSlots double sums, filled on the device by the sweeps.
size_t scalar_slots(const ParamTable& table) { return kSlots * table.params.size(); }

// Sweep: m <- beta1 m + (1 - beta1) U / clip, and I = (U / clip - m_new)^2 + eps2 (the
// NEW m, as the official code does) into rr, rc and their factors. The U factors are
// overwritten only by the last block, after every other block has read them.
template <class D>
struct CameMoment {
  const D* g;
  int64_t n;
  size_t numel;
  const double* sum_u2;
  double d;
  float* m;
  float beta1, eps2;
  const float *rf, *cf;
  float scale;  // the gradient is scale * g (TensorUpdate::grad_scale)
  template <bool kVec>
  __device__ void visit(int64_t i, int64_t j, int left, float (&x)[kRun], double&) const {
    const size_t at = size_t(i) * size_t(n) + j;
    float cv[kRun], mv[kRun];
    load_run<kVec>(g + at, left, x);
    load_run<kVec>(cf + j, left, cv);
    load_run<kVec>(m + at, left, mv);
    const float clip = clip_divisor(*sum_u2, numel, d), r = rf[i];
#pragma unroll
    for (int k = 0; k < kRun; k++) {
      const float u = (x[k] * scale * r * cv[k]) / clip;
      mv[k] = beta1 * mv[k] + (1.f - beta1) * u;
      const float e = u - mv[k];
      x[k] = (kVec || k < left) ? e * e + eps2 : 0.f;
    }
    store_run<kVec>(m + at, left, mv);
  }
};

// lr is the step's (g_step); now() also sets keep = 1 - lr wd (decoupled, raw lr).
template <class D>
struct CameApply {
  Weights<D> w;
  const float *m, *rf, *cf;
  int64_t n;
  double wd;
  float lr, keep;
  __device__ CameApply now() const {
    CameApply f = *this;
    f.w = w.now();
    f.lr = g_step.lr, f.keep = decay_keep(wd);
    return f;
  }
  __device__ int constants() const { return 0; }
  template <bool kVec>
  __device__ void apply(int, int64_t i, int64_t j, int left) const {
    const size_t at = size_t(i) * size_t(n) + j;
    float mv[kRun], cv[kRun], y[kRun];
    load_run<kVec>(m + at, left, mv);
    load_run<kVec>(cf + j, left, cv);
    load_weights<kVec>(w, at, left, y);
    const float r = rf[i];
#pragma unroll
    for (int k = 0; k < kRun; k++) y[k] = y[k] * keep - lr * (mv[k] * (r * cv[k]));
    store_weights<kVec>(w, at, left, y);
  }
};

// Vectors: v, U, sum(U^2), m and the weights (D = m, no confidence factor) in one
// block per vector, kept in registers between the reduction and the update.
template <class D>
struct CameVector {
  Weights<D> w;
  const D* g;
  float *v, *m;
  size_t n;
  double wd;
  float scale;  // as CameMoment::scale
};
struct CameVectorArgs {
  double beta2, eps1, d;
  float beta1;
};
template <class D>
__global__ void __launch_bounds__(kVectorThreads)
    came_vectors(const __grid_constant__ Jobs<CameVector<D>> b, CameVectorArgs c) {
  __shared__ double red[32];
  const CameVector<D>& job = b.job[blockIdx.x];
  const Weights<D> w = job.w.now();
  const D* g = job.g;
  float *v = job.v, *m = job.m;
  const size_t n = job.n;
  const double beta2 = c.beta2, eps1 = c.eps1, d = c.d;
  const float beta1 = c.beta1, lr = g_step.lr, keep = decay_keep(job.wd), scale = job.scale;
  double u2 = 0;
  const auto first = [&](size_t i, float& x, float& vi, float& mi, float& y) {
    const double xd = to_f(g[i]) * scale;
    vi = float(beta2 * v[i] + (1 - beta2) * (xd * xd + eps1));
    v[i] = vi;
    x = float(xd);
    const float u = x / sqrtf(vi);
    u2 += double(u) * u;
    mi = m[i], y = w.load(i);
  };
  float xs[kVectorCached], vs[kVectorCached], ms[kVectorCached], ys[kVectorCached];
#pragma unroll
  for (int q = 0; q < kVectorCached; q++)
    if (threadIdx.x + q * kVectorThreads < n)
      first(threadIdx.x + q * kVectorThreads, xs[q], vs[q], ms[q], ys[q]);
  for (size_t i = threadIdx.x + kVectorCached * kVectorThreads; i < n; i += kVectorThreads) {
    float x, vi, mi, y;
    first(i, x, vi, mi, y);
  }
  const float clip = clip_divisor(block_sum_d(u2, red), n, d);
  const auto second = [&](size_t i, float x, float vi, float mi, float y) {
    const float u = (x / sqrtf(vi)) / clip;
    mi = m[i] = beta1 * mi + (1.f - beta1) * u;
    w.store(i, y * keep - lr * mi);
  };
#pragma unroll
  for (int q = 0; q < kVectorCached; q++)
    if (threadIdx.x + q * kVectorThreads < n)
      second(threadIdx.x + q * kVectorThreads, xs[q], vs[q], ms[q], ys[q]);
  for (size_t i = threadIdx.x + kVectorCached * kVectorThreads; i < n; i += kVectorThreads)
    second(i, to_f(g[i]) * scale, v[i], m[i], w.load(i));
}

template <class T>
class Came final : public Optimizer<T> {
 public:
  Came(const json& cfg, const ParamTable& table, Device& dev, uint64_t seed)
      : common_(cfg),
        beta1_(optim::number(cfg, "came", "beta1", 0.0, 0.999999)),
        beta2_(optim::number(cfg, "came", "beta2", 0.0, 0.999999)),
        beta3_(optim::number(cfg, "came", "beta3", 0.0, 0.999999)),
        eps1_(optim::number(cfg, "came", "eps1", 0.0, 1.0)),
        eps2_(optim::number(cfg, "came", "eps2", 0.0, 1.0)),
        clip_(optim::number(cfg, "came", "clip_threshold", 1e-12, 1e12)),
        seed_(seed), store_(dev), fac_(dev, table),
        scal_(dev, scalar_slots(table), MemCategory::workspace, "came scalars") {
    for (const ParamSpec& p : table.params) {  // same blobs, same order as the reference
      moments_.push_back(optim::add_second_moment(store_, "came", p));
      m_.push_back(store_.add(p, "came.m", p.numel));
      optim::SecondMoment s;
      if (p.is_matrix()) {
        s.r = store_.add(p, "came.rr", size_t(p.rows));
        s.c = store_.add(p, "came.rc", size_t(p.cols));
      }
      instability_.push_back(s);
    }
  }

  void begin_step(int64_t t, float lr) override { set_step({t, lr}); }

  void update(const ParamSpec& p, T* param, float* master, T* grad) override {
    update_many({{&p, param, master, grad}});
  }

  void update_many(const std::vector<TensorUpdate<T>>& us) override {
    using D = device_t<T>;
    std::vector<CameVector<D>> vectors;
    std::vector<SweepJob<GradStats<D>>> stats[2];  // [vectorizable]
    std::vector<SweepJob<DirectionSquares<D>>> squares[2];
    std::vector<SweepJob<CameMoment<D>>> moments[2];
    std::vector<RunsJob<CameApply<D>>> applies[2];
    for (const TensorUpdate<T>& u : us) {
      const ParamSpec& p = *u.p;
      const Weights<D> w = weights(u.param, u.master, seed_, p.id);
      const D* g = dev_ptr<T>(u.grad);
      const optim::SecondMoment& s = moments_[p.id];
      float* m = m_[p.id];
      const double wd = common_.wd(p);
      if (!p.is_matrix()) {
        vectors.push_back({w, g, s.v, m, p.numel, wd, u.grad_scale});
        continue;
      }
      double* sum_u2 = scal_.get() + kSlots * p.id + kSumU2;
      const int vec = vectorizable(p.cols, {u.grad, u.master, u.param, m});
      const Factored::Matrix x = fac_.matrix(p);
      const optim::SecondMoment& in = instability_[p.id];
      stats[vec].push_back({GradStats<D>{g, p.cols, w, false, float(eps1_), u.grad_scale}, x.s,
                            x.parts, Ema{beta2_, s.r, s.c, x.rf, x.cf}, nullptr});
      squares[vec].push_back(
          {DirectionSquares<D>{g, x.rf, x.cf, p.cols, u.grad_scale}, x.s, x.parts, Ema{}, sum_u2});
      moments[vec].push_back({CameMoment<D>{g, p.cols, p.numel, sum_u2, clip_, m, float(beta1_),
                                            float(eps2_), x.rf, x.cf, u.grad_scale},
                              x.s, x.parts, Ema{beta3_, in.r, in.c, x.rf, x.cf}, nullptr});
      applies[vec].push_back(
          Factored::runs_job(CameApply<D>{w, m, x.rf, x.cf, p.cols, wd, 0, 0}, p.rows, p.cols));
    }
    const CameVectorArgs c{beta2_, eps1_, clip_, float(beta1_)};
    launch_jobs(vectors, [](const CameVector<D>&) { return 1u; },
                [&](const Jobs<CameVector<D>>& b, unsigned grid) {
                  came_vectors<<<grid, kVectorThreads, 0, update_stream()>>>(b, c);
                });
    for (int vec = 0; vec < 2; vec++) {
      fac_.sweep(stats[vec], vec, true);
      fac_.sweep(squares[vec], vec, false);
      fac_.sweep(moments[vec], vec, true);
      fac_.elementwise(applies[vec], vec);
    }
  }

  // Every pass that reads the gradient takes TensorUpdate::grad_scale with it, sparing
  // the pipeline's clip pass over every gradient (d12: a read and a write of 248 MB).
  bool scales_grads() const override { return true; }
  bool replayable() const override { return true; }
  std::vector<StateBlob> state() override { return store_.blobs(); }

 private:
  optim::Common common_;
  double beta1_, beta2_, beta3_, eps1_, eps2_, clip_;
  uint64_t seed_;
  optim::StateStore store_;
  Factored fac_;
  DeviceBuffer<double> scal_;
  std::vector<optim::SecondMoment> moments_, instability_;
  std::vector<float*> m_;
};

}  // namespace

template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_came(const json& cfg, const ParamTable& table, Device& dev,
                                             uint64_t seed) {
  return std::make_unique<Came<T>>(cfg, table, dev, seed);
}
template std::unique_ptr<Optimizer<float>> make_cuda_came<float>(const json&, const ParamTable&, Device&, uint64_t);
template std::unique_ptr<Optimizer<bf16>> make_cuda_came<bf16>(const json&, const ParamTable&, Device&, uint64_t);

size_t came_workspace_bytes(const ParamTable& table, int sms) {
  return Factored::workspace_bytes(table, sms) + scalar_slots(table) * sizeof(double);
}

}  // namespace gpt2::cuda
