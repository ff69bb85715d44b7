// AdamW (spec optimizers.md section 1; twin of src/reference/optim/adamw.cpp): one
// fused elementwise kernel per tensor, m and v in fp32.
// Launch: grid-stride, each thread owns 4 consecutive elements and moves them with
// 16-byte (fp32) / 8-byte (bf16) loads and stores when every pointer is aligned for it;
// otherwise (an odd tensor offset) the same kernel runs element by element. The step is
// memory-bound: bf16 weights + fp32 master read 2 + 4 + 4 + 4 and write 4 + 4 + 4 + 2
// bytes per parameter, and vector access is what brings it to HBM bandwidth.
#include <cmath>

#include "optim_common.cuh"
#include "reference/optim/optim_common.hpp"

namespace gpt2::cuda {
namespace {

struct AdamArgs {
  float beta1, beta2, eps, lr, wd, inv_bc1, inv_bc2;
};

struct F4 {
  float x[4];
};
__device__ __forceinline__ F4 load4(const float* p) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  return {{t.x, t.y, t.z, t.w}};
}
__device__ __forceinline__ F4 load4(const __nv_bfloat16* p) {
  const uint2 t = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&t.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&t.y));
  return {{a.x, a.y, b.x, b.y}};
}
__device__ __forceinline__ void store4(float* p, const F4& v) {
  *reinterpret_cast<float4*>(p) = make_float4(v.x[0], v.x[1], v.x[2], v.x[3]);
}
__device__ __forceinline__ void store4(__nv_bfloat16* p, const F4& v) {
  uint2 t;
  *reinterpret_cast<__nv_bfloat162*>(&t.x) = __floats2bfloat162_rn(v.x[0], v.x[1]);
  *reinterpret_cast<__nv_bfloat162*>(&t.y) = __floats2bfloat162_rn(v.x[2], v.x[3]);
  *reinterpret_cast<uint2*>(p) = t;
}

__device__ __forceinline__ float adam(float& m, float& v, float g, float w, const AdamArgs& a) {
  m = a.beta1 * m + (1.f - a.beta1) * g;
  v = a.beta2 * v + (1.f - a.beta2) * g * g;
  const float step = (m * a.inv_bc1) / (sqrtf(v * a.inv_bc2) + a.eps);
  return w - a.lr * (step + a.wd * w);  // decay term uses W_old
}

template <class D, bool kVector>
__global__ void adamw_kernel(Weights<D> w, const D* grad, float* m, float* v, size_t n,
                             AdamArgs a) {
  for (size_t q = size_t(blockIdx.x) * blockDim.x + threadIdx.x; 4 * q < n;
       q += size_t(gridDim.x) * blockDim.x) {
    const size_t i0 = 4 * q;
    if (kVector && i0 + 4 <= n) {
      const F4 g = load4(grad + i0);
      F4 mm = load4(m + i0), vv = load4(v + i0);
      F4 ww = w.master ? load4(w.master + i0) : load4(w.param + i0);
      for (int k = 0; k < 4; k++) ww.x[k] = adam(mm.x[k], vv.x[k], g.x[k], ww.x[k], a);
      store4(m + i0, mm), store4(v + i0, vv);
      if (w.master) {
        store4(w.master + i0, ww), store4(w.param + i0, ww);
      } else {
        for (int k = 0; k < 4; k++) w.store(i0 + k, ww.x[k]);  // fp32 in place, or bf16 SR
      }
    } else {
      for (size_t i = i0; i < n && i < i0 + 4; i++) {
        float mi = m[i], vi = v[i];
        w.store(i, adam(mi, vi, to_f(grad[i]), w.load(i), a));
        m[i] = mi, v[i] = vi;
      }
    }
  }
}

bool aligned(const void* p, size_t bytes) { return p == nullptr || uintptr_t(p) % bytes == 0; }

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
    t_ = t;
    lr_ = lr;
    inv_bc1_ = float(1.0 / (1.0 - std::pow(beta1_, double(t))));
    inv_bc2_ = float(1.0 / (1.0 - std::pow(beta2_, double(t))));
  }

  void update(const ParamSpec& p, T* param, float* master, T* grad) override {
    using D = device_t<T>;
    const AdamArgs a{float(beta1_), float(beta2_), float(eps_), lr_, float(common_.wd(p)),
                     inv_bc1_, inv_bc2_};
    const Weights<D> w = weights(param, master, seed_, t_, p.id);
    float *m = m_[p.id], *v = v_[p.id];
    const bool vec = aligned(master, 16) && aligned(m, 16) && aligned(v, 16) &&
                     aligned(param, 4 * sizeof(T)) && aligned(grad, 4 * sizeof(T));
    const unsigned blocks = elementwise_blocks((p.numel + 3) / 4);
    if (vec)
      adamw_kernel<D, true><<<blocks, kThreads, 0, update_stream()>>>(w, dev_ptr(grad), m, v, p.numel, a);
    else
      adamw_kernel<D, false><<<blocks, kThreads, 0, update_stream()>>>(w, dev_ptr(grad), m, v, p.numel, a);
    CUDA_CHECK_LAUNCH();
  }

  std::vector<StateBlob> state() override { return store_.blobs(); }

 private:
  optim::Common common_;
  double beta1_, beta2_, eps_;
  uint64_t seed_;
  optim::StateStore store_;
  std::vector<float*> m_, v_;
  int64_t t_ = 0;
  float lr_ = 0, inv_bc1_ = 1, inv_bc2_ = 1;
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
