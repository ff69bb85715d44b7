// Adafactor's factored second moment on the GPU (twin of src/reference/optim/
// factored.hpp), shared by adalomo.cu, adafactor.cu and came.cu: the row and column
// mean EMAs of an m x n statistic X, and the factors rf_i = rsqrt(r_i / mean(r)),
// cf_j = rsqrt(c_j) with X_hat^-1/2 = rf_i cf_j.
//
// Launch shapes: row means, one 128-thread block per row (double sums, block reduce);
// column means, kColChunks fixed row chunks x 256-column blocks writing double partials
// that a second kernel adds in chunk order. Fixed shapes and orders: deterministic.
// Everything stays on the device (r, c, factors, and the RMS(U) sum in a device double).
#pragma once
#include "optim_common.cuh"
#include "reference/optim/factored.hpp"

namespace gpt2::cuda {

constexpr int kColChunks = 64, kRowThreads = 128;

template <class F>
__global__ void __launch_bounds__(kRowThreads)
    row_mean_ema(F f, int64_t n, double beta, float* r) {
  __shared__ double shared[32];
  const int64_t i = blockIdx.x;
  double s = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += f(size_t(i * n + j));
  s = block_sum_d(s, shared);
  if (threadIdx.x == 0) r[i] = float(beta * r[i] + (1 - beta) * (s / double(n)));
}

template <class F>
__global__ void col_partials(F f, int64_t m, int64_t n, int chunks, double* partials) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const int64_t rows = (m + chunks - 1) / chunks, i0 = blockIdx.y * rows;
  const int64_t i1 = i0 + rows < m ? i0 + rows : m;
  double s = 0;
  for (int64_t i = i0; i < i1; i++) s += f(size_t(i * n + j));
  partials[blockIdx.y * n + j] = s;
}

__global__ void col_mean_ema(const double* partials, int chunks, int64_t m, int64_t n,
                             double beta, float* c);
__global__ void inv_sqrt_factors(const float* r, const float* c, const double* sum_r,
                                 int64_t m, int64_t n, float* rf, float* cf);

struct FloatSum {
  const float* x;
  __device__ double operator()(size_t i) const { return x[i]; }
};

// U = g / sqrt(X_hat) (matrix: rf, cf; vector: the full v), unclipped.
template <class D>
struct Direction {
  const D* g;
  const float *rf, *cf, *v;
  uint32_t n;
  __device__ float operator()(size_t idx) const {
    const float x = to_f(g[idx]);
    if (!rf) return x / sqrtf(v[idx]);
    const uint32_t i = uint32_t(idx) / n;
    return x * rf[i] * cf[uint32_t(idx) - i * n];
  }
};
template <class D>
struct DirectionSquares {
  Direction<D> u;
  __device__ double operator()(size_t i) const {
    const double x = u(i);
    return x * x;
  }
};
template <class D>
struct GradSquaresPlus {  // S = g^2 + eps1, eps1 inside before the means
  const D* g;
  double eps;
  __device__ double operator()(size_t i) const {
    const double x = to_f(g[i]);
    return x * x + eps;
  }
};

// U's clip divisor max(1, RMS(U) / d) from the device sum of U^2.
__device__ __forceinline__ float clip_divisor(const double* sum_u2, size_t numel, double d) {
  return float(fmax(1.0, sqrt(*sum_u2 / double(numel)) / d));
}

template <class D>
__global__ void vector_second_moment(const D* g, float* v, size_t n, double beta, double eps) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const double x = to_f(g[i]);
    v[i] = float(beta * v[i] + (1 - beta) * (x * x + eps));
  }
}

// Scratch for the factored statistics of the table's matrices (MemCategory::workspace).
class Factored {
 public:
  Factored(Device& dev, const ParamTable& table) {
    int64_t m = 1, n = 1;
    for (const ParamSpec& p : table.params)
      if (p.is_matrix()) m = std::max(m, p.rows), n = std::max(n, p.cols);
    partials_ = DeviceBuffer<double>(dev, size_t(kColChunks) * n, MemCategory::workspace,
                                     "factored column partials");
    rf_ = DeviceBuffer<float>(dev, size_t(m), MemCategory::workspace, "factored row factors");
    cf_ = DeviceBuffer<float>(dev, size_t(n), MemCategory::workspace, "factored column factors");
  }

  // r <- beta r + (1 - beta) rowmean(X), c likewise with column means; X_ij = f(i n + j).
  template <class F>
  void ema(const F& f, int64_t m, int64_t n, double beta, float* r, float* c) {
    row_mean_ema<<<unsigned(m), kRowThreads, 0, update_stream()>>>(f, n, beta, r);
    CUDA_CHECK_LAUNCH();
    const int chunks = int(std::min<int64_t>(kColChunks, m));
    col_partials<<<dim3(ceil_div(n, 256), chunks), 256, 0, update_stream()>>>(f, m, n, chunks, partials_.get());
    CUDA_CHECK_LAUNCH();
    col_mean_ema<<<ceil_div(n, 256), 256, 0, update_stream()>>>(partials_.get(), chunks, m, n, beta, c);
    CUDA_CHECK_LAUNCH();
  }

  // rf, cf from r, c (sum_r: a device double to hold sum(r)).
  void factors(Reducer& red, const float* r, const float* c, int64_t m, int64_t n, double* sum_r) {
    red.sum(FloatSum{r}, size_t(m), sum_r);
    inv_sqrt_factors<<<ceil_div(std::max(m, n), 256), 256, 0, update_stream()>>>(r, c, sum_r, m, n, rf_.get(), cf_.get());
    CUDA_CHECK_LAUNCH();
  }

  // Adafactor-family steps "S = g^2 + eps1, EMA, U = g / sqrt(S_hat)" for tensor p with
  // second moment s: returns U (unclipped) and leaves sum(U^2) in *sum_u2 (sum_r: scratch).
  template <class D>
  Direction<D> direction(Reducer& red, const ParamSpec& p, optim::SecondMoment s, double beta2,
                         double eps1, const D* g, double* sum_r, double* sum_u2) {
    Direction<D> u{g, nullptr, nullptr, s.v, uint32_t(p.cols)};
    if (p.is_matrix()) {
      ema(GradSquaresPlus<D>{g, eps1}, p.rows, p.cols, beta2, s.r, s.c);
      factors(red, s.r, s.c, p.rows, p.cols, sum_r);
      u.rf = rf_.get(), u.cf = cf_.get();
    } else {
      vector_second_moment<<<elementwise_blocks(p.numel), kThreads, 0, update_stream()>>>(g, s.v, p.numel, beta2, eps1);
      CUDA_CHECK_LAUNCH();
    }
    red.sum(DirectionSquares<D>{u}, p.numel, sum_u2);
    return u;
  }

  const float* rf() const { return rf_.get(); }
  const float* cf() const { return cf_.get(); }

 private:
  DeviceBuffer<double> partials_;
  DeviceBuffer<float> rf_, cf_;
};

}  // namespace gpt2::cuda

namespace gpt2::cuda {

// Adafactor's update rule as both adafactor.cu and adalomo.cu configure it (AdaLomo is
// Adafactor with scale_parameter, no first moment and no relative step; spec 3.2).
struct AdafactorRule {
  std::string prefix;  // state blob names: "<prefix>.r.<tensor>", as the CPU reference
  double eps1, eps2, clip, decay_rate, beta1;
  bool momentum, scale_parameter, relative_step, warmup_init;
};
template <class T>
std::unique_ptr<Optimizer<T>> make_cuda_adafactor_rule(const json& cfg, const AdafactorRule& rule,
                                                       const ParamTable& table, Device& dev,
                                                       uint64_t seed);

}  // namespace gpt2::cuda
