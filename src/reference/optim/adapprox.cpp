// Adapprox (Zhao et al., arXiv 2403.14958), spec optimizers.md 6.2-6.5 and 6.7: Adam's
// second moment without bias correction, stored for each matrix as a rank-k product
// Q U^T (Q m x k orthonormal, U n x k) re-fitted every step by AS-RSI, with RMS update
// clipping, an optional first moment of the clipped update and decoupled decay (raw lr).
// Q and U are allocated at k_max columns (column-major, first k in use; the rest kept
// zero), as the paper's ICLR-2025 version reserves them. Per matrix two more floats of
// state: the current rank k and the smoothed AS-RSI error xi_bar. Vectors keep a full v.
//
// "our choice" points, flagged per the spec: V_hat = max(V_t, 0) of the REBUILT V_t
// (denominator "rebuilt", default) or max(Q_t U_t^T, 0) ("refactored"); at t = 1 the
// factors are zero so V_1 = (1 - beta2) g^2; xi_bar <- rho xi_bar + (1 - rho) xi gates
// rank decreases (shrink only while the smoothed past error is below xi_thr / 2, so a
// rank just grown is not dropped on one lucky step); cos_guidance (6.7) is of our own
// design: the paper's formula was never retrieved.
#include <algorithm>
#include <cmath>

#include "optim_common.hpp"
#include "srsi.hpp"

namespace gpt2::optim {

namespace {

// (Q U^T)_ij over the first k of kmax columns, column-major factors.
inline double qut(const float* Q, const float* U, int64_t m, int64_t n, int k, int64_t i,
                  int64_t j) {
  double s = 0;
  for (int c = 0; c < k; c++) s += double(Q[c * m + i]) * U[c * n + j];
  return s;
}

class Adapprox final : public ScalingOptimizer {
 public:
  Adapprox(const json& cfg, const ParamTable& table, Device& dev, uint64_t seed)
      : common_(cfg), s_(cfg), seed_(seed), store_(dev) {
    size_t largest = 0;
    for (const ParamSpec& p : table.params) {
      Tensor t;
      if (p.is_matrix()) {
        t.k_max = s_.rule(p).k_max;
        t.Q = store_.add(p, "adapprox.Q", size_t(p.rows) * t.k_max);
        t.U = store_.add(p, "adapprox.U", size_t(p.cols) * t.k_max);
        t.rank_err = store_.add(p, "adapprox.rank_err", 2);
        if (t.rank_err) t.rank_err[0] = float(s_.initial_rank(p));
        largest = std::max(largest, p.numel);
      } else {
        t.v = store_.add(p, "adapprox.v", p.numel);
      }
      if (s_.beta1 > 0) t.m1 = store_.add(p, "adapprox.m1", p.numel);
      tensors_.push_back(t);
    }
    if (largest) scratch_ = DeviceBuffer<float>(dev, largest, MemCategory::workspace, "adapprox V_t");
  }

  void begin_step(int64_t t, float lr) override {
    t_ = t;
    lr_ = lr;
    srsi_calls_ = 0;
  }

  void update(const ParamSpec& p, float* w, float*, float* g) override {
    if (p.is_matrix())
      matrix_direction(p, g);
    else
      vector_direction(p, g);
    apply(p, w, g);
  }

  std::vector<StateBlob> state() override { return store_.blobs(); }

  // Mean rank over the matrices this optimizer keeps (all, or a ZeRO-1 rank's), the
  // S-RSIs since begin_step, and the largest rank (a few wide matrices can cost more than
  // the mean suggests).
  std::vector<std::pair<std::string, double>> step_stats() const override {
    double ranks = 0, widest = 0;
    int matrices = 0;
    for (const Tensor& t : tensors_)
      if (t.rank_err)
        ranks += t.rank_err[0], widest = std::max(widest, double(t.rank_err[0])), matrices++;
    if (matrices == 0) return {};
    return {{"adapprox_rank", ranks / matrices},
            {"adapprox_srsi", srsi_calls_},
            {"adapprox_rank_max", widest}};
  }

 private:
  struct Tensor {
    int k_max = 0;
    float *Q = nullptr, *U = nullptr, *rank_err = nullptr, *v = nullptr, *m1 = nullptr;
  };

  // Spec 6.5 steps 1-4 for a matrix, D written over g.
  void matrix_direction(const ParamSpec& p, float* g) {
    const Tensor& T = tensors_[p.id];
    const int64_t m = p.rows, n = p.cols;
    const double b2 = s_.beta2;
    float* V = scratch_.get();
    const int k = int(T.rank_err[0]);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) {
        const double gij = g[i * n + j];
        V[i * n + j] = float(b2 * qut(T.Q, T.U, m, n, k, i, j) + (1 - b2) * gij * gij);
      }
    const bool allow_shrink = T.rank_err[1] < s_.xi_thr / 2;
    const AsrsiResult r =
        as_rsi({V, m, n}, k, s_.rule(p), allow_shrink, mix_seed(seed_, t_, p.id));
    std::fill(T.Q, T.Q + m * T.k_max, 0.0f);
    std::fill(T.U, T.U + n * T.k_max, 0.0f);
    for (int c = 0; c < r.k; c++) {
      for (int64_t i = 0; i < m; i++) T.Q[c * m + i] = float(r.f.Q(i, c));
      for (int64_t j = 0; j < n; j++) T.U[c * n + j] = float(r.f.U(j, c));
    }
    T.rank_err[0] = float(r.k);
    T.rank_err[1] = float(s_.rho * T.rank_err[1] + (1 - s_.rho) * r.xi);
    srsi_calls_ += r.calls;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) {
        const double v = s_.refactored ? qut(T.Q, T.U, m, n, r.k, i, j) : V[i * n + j];
        g[i * n + j] = float(g[i * n + j] / (std::sqrt(std::max(v, 0.0)) + s_.eps));
      }
  }

  void vector_direction(const ParamSpec& p, float* g) {
    float* v = tensors_[p.id].v;
    for (size_t i = 0; i < p.numel; i++) {
      v[i] = float(s_.beta2 * v[i] + (1 - s_.beta2) * double(g[i]) * g[i]);
      g[i] = float(g[i] / (std::sqrt(double(v[i])) + s_.eps));
    }
  }

  // Spec 6.5 steps 5-8 (and 6.7): clip D, momentum, guidance, decoupled decay.
  void apply(const ParamSpec& p, float* w, float* D) {
    const double clip = std::max(1.0, rms(D, p.numel) / s_.clip);
    for (size_t i = 0; i < p.numel; i++) D[i] = float(D[i] / clip);
    const float* S = D;
    double guide = 1.0;
    if (float* m1 = tensors_[p.id].m1) {
      double dot = 0;
      for (size_t i = 0; i < p.numel; i++) {
        m1[i] = float(s_.beta1 * m1[i] + (1 - s_.beta1) * D[i]);
        dot += double(D[i]) * m1[i];
      }
      if (s_.cos_guidance) {
        const double c = dot / (std::sqrt(sum_sq(D, p.numel) * sum_sq(m1, p.numel)) + 1e-12);
        guide = (1 + c) / 2;
      }
      S = m1;
    }
    const double wd = common_.wd(p);
    for (size_t i = 0; i < p.numel; i++) w[i] = float(w[i] - lr_ * (guide * S[i] + wd * w[i]));
  }

  Common common_;
  Settings s_;
  uint64_t seed_;
  StateStore store_;
  std::vector<Tensor> tensors_;
  DeviceBuffer<float> scratch_;
  int64_t t_ = 0;
  double lr_ = 0;
  int srsi_calls_ = 0;  // this step's
};

}  // namespace

std::unique_ptr<Optimizer<float>> make_adapprox(const json& cfg, const ParamTable& table, Device& dev,
                                         uint64_t seed) {
  return std::make_unique<Adapprox>(cfg, table, dev, seed);
}

size_t adapprox_state_bytes(const json& cfg, const ParamSpec& p) {
  const Settings s(cfg);
  const size_t first_moment = s.beta1 > 0 ? p.numel : 0;
  const size_t second = p.is_matrix() ? size_t(p.rows + p.cols) * s.rule(p).k_max + 2 : p.numel;
  return (first_moment + second) * sizeof(float);
}

size_t adapprox_workspace_bytes(const ParamTable& table) {
  // The CPU reference's dense V_t scratch: the largest matrix. (The GPU's workspace is
  // kernels/adapprox.cu's sizes(), counted by cuda_optimizer_workspace_bytes.)
  size_t largest = 0;
  for (const ParamSpec& p : table.params)
    if (p.is_matrix()) largest = std::max(largest, p.numel);
  return largest * sizeof(float);
}

}  // namespace gpt2::optim
