// AdamW (spec optimizers.md section 1; twin of src/reference/optim/adamw.cpp): one
// fused elementwise kernel, m and v in fp32, up to kMaxJobs tensors per launch
// (launch_jobs): d12 has 148 tensors, 98 of them 768-element vectors, and a launch per
// tensor cost more than those vectors' arithmetic. Each tensor keeps the grid a launch
// of its own would get: grid-stride, each thread owns 4 consecutive elements and moves
// them with 16-byte (fp32) / 8-byte (bf16) loads and stores when every pointer is
// aligned for it; otherwise (an odd tensor offset) element by element. The step is
// memory-bound: bf16 weights + fp32 master read 2 + 4 + 4 + 4 and write 4 + 4 + 4 + 2
// bytes per parameter, and vector access is what brings it to HBM bandwidth.
#include <cmath>

#include "optim_common.cuh"
#include "reference/optim/optim_common.hpp"

namespace gpt2::cuda {
namespace {

// lr and the bias corrections come from g_step, wd and grad_scale from the job.
struct AdamArgs {
  float beta1, beta2, eps, lr, wd, inv_bc1, inv_bc2, grad_scale;
};

// Every rounding spelled out: left to itself the compiler fused a different multiply
// into each FMA in the vector and the element path (b1 * m + (1 - b1) * g fused either
// way), so the two paths disagreed in the last bit; now they agree bit for bit.
// g is scaled here, where both paths pass: the fp32 product that the pipeline's
// clip_scale used to store, so fp32 weights are the same bit for bit; bf16 gradients gain
// accuracy, since the product is no longer rounded to bf16 before use.
__device__ __forceinline__ float adam(float& m, float& v, float g, float w, const AdamArgs& a) {
  g = __fmul_rn(g, a.grad_scale);
  m = __fmaf_rn(a.beta1, m, __fmul_rn(1.f - a.beta1, g));
  v = __fmaf_rn(a.beta2, v, __fmul_rn(__fmul_rn(1.f - a.beta2, g), g));
  const float step = __fdiv_rn(__fmul_rn(m, a.inv_bc1),
                               __fadd_rn(__fsqrt_rn(__fmul_rn(v, a.inv_bc2)), a.eps));
  return __fsub_rn(w, __fmul_rn(a.lr, __fmaf_rn(a.wd, w, step)));  // decay term uses W_old
}

// One tensor of a batched launch; vec: every pointer aligned for the vector path.
template <class D>
struct AdamJob {
  Weights<D> w;
  const D* grad;
  float *m, *v;
  size_t n;
  float wd, grad_scale;
  bool vec;
};

// Each job's blocks run grid-stride over its tensor as one launch per tensor would.
template <class D>
__global__ void adamw_kernel(const __grid_constant__ Jobs<AdamJob<D>> b, AdamArgs a) {
  const int k = job_of(b);
  const AdamJob<D>& j = b.job[k];
  a.wd = j.wd, a.grad_scale = j.grad_scale;
  a.lr = g_step.lr, a.inv_bc1 = g_step.f[0], a.inv_bc2 = g_step.f[1];
  const Weights<D> w = j.w.now();
  const GridStride stride = job_stride(b, k);
  for (size_t q = stride.start; 4 * q < j.n; q += stride.step) {
    const size_t i0 = 4 * q;
    if (j.vec && i0 + 4 <= j.n) {
      const F4 g = load4(j.grad + i0);
      F4 mm = load4(j.m + i0), vv = load4(j.v + i0);
      F4 ww = w.master ? load4(w.master + i0) : load4(w.param + i0);
      for (int e = 0; e < 4; e++) ww.x[e] = adam(mm.x[e], vv.x[e], g.x[e], ww.x[e], a);
      store4(j.m + i0, mm), store4(j.v + i0, vv);
      if (w.master) {
        store4(w.master + i0, ww), store4(w.param + i0, ww);
      } else {
        for (int e = 0; e < 4; e++) w.store(i0 + e, ww.x[e]);  // fp32 in place, or bf16 SR
      }
    } else {
      for (size_t i = i0; i < j.n && i < i0 + 4; i++) {
        float mi = j.m[i], vi = j.v[i];
        w.store(i, adam(mi, vi, to_f(j.grad[i]), w.load(i), a));
        j.m[i] = mi, j.v[i] = vi;
      }
    }
  }
}

template <class T>
class AdamW final : public Optimizer<T> {
 public:
  AdamW(const json& cfg, const ParamTable& table, Device& dev, uint64_t seed)
      : common_(cfg),
        beta1_(optim::number(cfg, "adamw", "beta1", 0.0, 0.999999)),
        beta2_(optim::number(cfg, "adamw", "beta2", 0.0, 0.999999)),
        eps_(optim::number(cfg, "adamw", "eps", 0.0, 1.0)),
        seed_(seed),
        store_(dev) {
    for (const ParamSpec& p : table.params) {
      m_.push_back(store_.add(p, "adamw.m", p.numel));
      v_.push_back(store_.add(p, "adamw.v", p.numel));
    }
  }

  void begin_step(int64_t t, float lr) override {
    set_step({t, lr, {float(1.0 / (1.0 - std::pow(beta1_, double(t)))),
                      float(1.0 / (1.0 - std::pow(beta2_, double(t))))}});
  }

  void update(const ParamSpec& p, T* param, float* master, T* grad) override {
    update_many({{&p, param, master, grad}});
  }

  void update_many(const std::vector<TensorUpdate<T>>& us) override {
    using D = device_t<T>;
    std::vector<AdamJob<D>> jobs;
    for (const TensorUpdate<T>& u : us) {
      const ParamSpec& p = *u.p;
      float *m = m_[p.id], *v = v_[p.id];
      const bool vec = aligned(u.master, 16) && aligned(m, 16) && aligned(v, 16) &&
                       aligned(u.param, 4 * sizeof(T)) && aligned(u.grad, 4 * sizeof(T));
      jobs.push_back({weights(u.param, u.master, seed_, p.id), dev_ptr(u.grad), m, v,
                      p.numel, float(common_.wd(p)), u.grad_scale, vec});
    }
    const AdamArgs a{float(beta1_), float(beta2_), float(eps_), 0.f, 0.f, 0.f, 0.f, 1.f};
    launch_jobs(jobs, [](const AdamJob<D>& j) { return elementwise_blocks((j.n + 3) / 4); },
                [&](const Jobs<AdamJob<D>>& b, unsigned grid) {
                  adamw_kernel<<<grid, kThreads, 0, update_stream()>>>(b, a);
                });
  }

  bool scales_grads() const override { return true; }
  bool replayable() const override { return true; }

  std::vector<StateBlob> state() override { return store_.blobs(); }

 private:
  optim::Common common_;
  double beta1_, beta2_, eps_;
  uint64_t seed_;
  optim::StateStore store_;
  std::vector<float*> m_, v_;
};

}  // namespace

template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_adamw(const json& cfg, const ParamTable& t, Device& dev,
                                              uint64_t seed) {
  return std::make_unique<AdamW<T>>(cfg, t, dev, seed);
}
template std::unique_ptr<Optimizer<float>> make_cuda_adamw<float>(const json&, const ParamTable&, Device&, uint64_t);
template std::unique_ptr<Optimizer<bf16>> make_cuda_adamw<bf16>(const json&, const ParamTable&, Device&, uint64_t);

}  // namespace gpt2::cuda
