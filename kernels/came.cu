// CAME (spec optimizers.md section 5; twin of src/reference/optim/came.cpp): Adafactor's
// factored direction U (factored.cuh), a first moment m of the clipped U, and for
// matrices the factored instability (U - m_new)^2 + eps2 whose inverse square root
// scales m. Per matrix, all on the device: direction + RMS(U) (factored.cuh), one
// kernel for m, the instability's row/column EMAs (U recomputed from g, not stored),
// its factors, one kernel for the weights.
#include "factored.cuh"
#include "reference/optim/optim_common.hpp"

namespace gpt2::cuda {
namespace {

enum Slot { kSumR, kSumU2, kSumRR, kSlots };

template <class D>
__global__ void came_moment(Direction<D> u, const double* sum_u2, size_t n, double d, float* m,
                            float beta1) {
  const float clip = clip_divisor(sum_u2, n, d);
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    m[i] = beta1 * m[i] + (1.f - beta1) * (u(i) / clip);
}

// (U - m_new)^2 + eps2: the NEW m, as the official code does.
template <class D>
struct Instability {
  Direction<D> u;
  const double* sum_u2;
  size_t numel;
  double d, eps2;
  const float* m;
  __device__ double operator()(size_t i) const {
    const double x = double(u(i) / clip_divisor(sum_u2, numel, d)) - m[i];
    return x * x + eps2;
  }
};

template <class D>
__global__ void came_apply(Weights<D> w, const float* m, const float* rf, const float* cf,
                           uint32_t cols, size_t n, float lr, float keep) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    float step = m[i];  // vectors: no confidence factor, D = m
    if (rf) {
      const uint32_t r = uint32_t(i) / cols;
      step *= rf[r] * cf[uint32_t(i) - r * cols];
    }
    w.store(i, w.load(i) * keep - lr * step);
  }
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
        seed_(seed), store_(dev), red_(dev), fac_(dev, table),
        scal_(dev, kSlots, MemCategory::workspace, "came scalars") {
    for (const ParamSpec& p : table.params) {  // same blobs, same order as the reference
      moments_.push_back(optim::add_second_moment(store_, "came", p));
      m_.push_back(store_.add("came.m." + p.name, p.numel));
      optim::SecondMoment s;
      if (p.is_matrix()) {
        s.r = store_.add("came.rr." + p.name, size_t(p.rows));
        s.c = store_.add("came.rc." + p.name, size_t(p.cols));
      }
      instability_.push_back(s);
    }
  }

  void begin_step(int64_t t, float lr) override { t_ = t, lr_ = lr; }

  void update(const ParamSpec& p, T* param, float* master, T* grad) override {
    using D = device_t<T>;
    double* s = scal_.get();
    const Direction<D> u =
        fac_.direction(red_, p, moments_[p.id], beta2_, eps1_, dev_ptr<T>(grad), s + kSumR, s + kSumU2);
    float* m = m_[p.id];
    came_moment<<<elementwise_blocks(p.numel), kThreads, 0, update_stream()>>>(u, s + kSumU2, p.numel, clip_, m, float(beta1_));
    CUDA_CHECK_LAUNCH();
    const float *rf = nullptr, *cf = nullptr;
    if (p.is_matrix()) {
      const optim::SecondMoment& in = instability_[p.id];
      fac_.ema(Instability<D>{u, s + kSumU2, p.numel, clip_, eps2_, m}, p.rows, p.cols, beta3_,
               in.r, in.c);
      fac_.factors(red_, in.r, in.c, p.rows, p.cols, s + kSumRR);  // u's factors are spent
      rf = fac_.rf(), cf = fac_.cf();
    }
    const float keep = float(1.0 - double(lr_) * common_.wd(p));  // decoupled, raw lr
    came_apply<<<elementwise_blocks(p.numel), kThreads, 0, update_stream()>>>(
        weights(param, master, seed_, t_, p.id), m, rf, cf, uint32_t(p.cols), p.numel, lr_, keep);
    CUDA_CHECK_LAUNCH();
  }

  std::vector<StateBlob> state() override { return store_.blobs(); }

 private:
  optim::Common common_;
  double beta1_, beta2_, beta3_, eps1_, eps2_, clip_;
  uint64_t seed_;
  optim::StateStore store_;
  Reducer red_;
  Factored fac_;
  DeviceBuffer<double> scal_;
  std::vector<optim::SecondMoment> moments_, instability_;
  std::vector<float*> m_;
  int64_t t_ = 0;
  float lr_ = 0;
};

}  // namespace

template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_came(const json& cfg, const ParamTable& table, Device& dev,
                                             uint64_t seed) {
  return std::make_unique<Came<T>>(cfg, table, dev, seed);
}
template std::unique_ptr<Optimizer<float>> make_cuda_came<float>(const json&, const ParamTable&, Device&, uint64_t);
template std::unique_ptr<Optimizer<bf16>> make_cuda_came<bf16>(const json&, const ParamTable&, Device&, uint64_t);

}  // namespace gpt2::cuda
