// Adafactor with HF semantics (spec optimizers.md section 4; twin of src/reference/optim/
// adafactor.cpp), and through AdafactorRule also AdaLomo (adalomo.cu). Per tensor, all
// on the device: RMS(W_old) (if scale_parameter) and the factored direction U with its
// RMS (factored.cuh), then one elementwise kernel applies clipping, the step size, the
// optional first moment of the lr-scaled update and decoupled decay scaled by alpha.
// About 9 launches per matrix; the passes over g are what cost (4 reads of g).
#include <algorithm>
#include <cmath>

#include "factored.cuh"

namespace gpt2::cuda {
namespace {

enum Slot { kSumW2, kSumR, kSumU2, kSlots };

template <class D>
__global__ void adafactor_apply(Weights<D> w, Direction<D> u, const double* scal, size_t n,
                                double rho, double eps2, bool scale_parameter, double d,
                                double wd, float* m1, float beta1) {
  const double alpha = scale_parameter ? rho * fmax(eps2, sqrt(scal[kSumW2] / double(n))) : rho;
  const float clip = clip_divisor(scal + kSumU2, n, d), step = float(alpha);
  const float keep = float(1.0 - alpha * wd);  // decay scaled by alpha (pitfall 5)
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    float x = step * (u(i) / clip);  // lr applied BEFORE the momentum EMA
    if (m1) x = m1[i] = beta1 * m1[i] + (1.f - beta1) * x;
    w.store(i, w.load(i) * keep - x);
  }
}

template <class T>
class Adafactor final : public Optimizer<T> {
 public:
  Adafactor(const json& cfg, const AdafactorRule& rule, const ParamTable& table, Device& dev,
            uint64_t seed)
      : common_(cfg), rule_(rule), seed_(seed), store_(dev), red_(dev), fac_(dev, table),
        scal_(dev, kSlots, MemCategory::workspace, rule.prefix + " scalars") {
    for (const ParamSpec& p : table.params) {
      moments_.push_back(optim::add_second_moment(store_, rule.prefix, p));
      m1_.push_back(rule.momentum ? store_.add(rule.prefix + ".m1." + p.name, p.numel) : nullptr);
    }
  }

  void begin_step(int64_t t, float lr) override {
    t_ = t;
    const double inv_sqrt_t = 1.0 / std::sqrt(double(t));
    rho_ = !rule_.relative_step ? lr
           : rule_.warmup_init  ? std::min(1e-6 * t, inv_sqrt_t)
                                : std::min(1e-2, inv_sqrt_t);
    beta2_ = 1.0 - std::pow(double(t), rule_.decay_rate);
  }

  void update(const ParamSpec& p, T* param, float* master, T* grad) override {
    using D = device_t<T>;
    const Weights<D> w = weights(param, master, seed_, t_, p.id);
    double* s = scal_.get();
    if (rule_.scale_parameter) red_.sum(WeightSquares<D>{w}, p.numel, s + kSumW2);
    const Direction<D> u = fac_.direction(red_, p, moments_[p.id], beta2_, rule_.eps1,
                                          dev_ptr<T>(grad), s + kSumR, s + kSumU2);
    adafactor_apply<<<elementwise_blocks(p.numel), kThreads, 0, update_stream()>>>(
        w, u, s, p.numel, rho_, rule_.eps2, rule_.scale_parameter, rule_.clip, common_.wd(p),
        m1_[p.id], float(rule_.beta1));
    CUDA_CHECK_LAUNCH();
  }

  std::vector<StateBlob> state() override { return store_.blobs(); }

 private:
  optim::Common common_;
  AdafactorRule rule_;
  uint64_t seed_;
  optim::StateStore store_;
  Reducer red_;
  Factored fac_;
  DeviceBuffer<double> scal_;
  std::vector<optim::SecondMoment> moments_;
  std::vector<float*> m1_;
  int64_t t_ = 0;
  double rho_ = 0, beta2_ = 0;
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

}  // namespace gpt2::cuda
