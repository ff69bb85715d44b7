// Causal self-attention: hand-computed forward (uniform and two-key softmax), finite-
// difference backward from the stored lse, the overwrite convention, CpuOps against the
// double reference and thread-count independence; on a GPU, CudaOps against the reference
// (bf16 within a bound derived below for its rounded matrix-product inputs).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <type_traits>

#include "catch.hpp"
#include "gpu_check.hpp"
#include "op_check.hpp"
#include "reference/cpu_ops.hpp"
#include "reference/ops_ref.hpp"

using namespace gpt2;
using namespace gpt2::test;

TEST_CASE("attention with zero queries averages the causal prefix of each head") {
  // B = 1, T = 3, C = 4, NH = 2: with q = 0 every visible key scores 0, so
  // out[t] = mean(v[0..t]) per head and lse[t] = ln(t + 1).
  const int T = 3, C = 4, NH = 2;
  std::vector<double> qkv(size_t(T) * 3 * C, 0.0);
  const double k[T][4] = {{1, -2, 3, 0.5}, {2, 1, -1, 4}, {-3, 2, 2, 1}};
  const double v[T][4] = {{1, 2, 10, 0}, {3, 4, 20, -6}, {5, 9, 60, 3}};
  for (int t = 0; t < T; t++) {
    for (int c = 0; c < C; c++) {
      qkv[t * 3 * C + C + c] = k[t][c];
      qkv[t * 3 * C + 2 * C + c] = v[t][c];
    }
  }
  std::vector<double> out(size_t(T) * C), lse(size_t(NH) * T);
  ref::attention_forward(out.data(), lse.data(), qkv.data(), 1, T, C, NH);
  const double want[T][4] = {{1, 2, 10, 0}, {2, 3, 15, -3}, {3, 5, 30, -1}};
  for (int t = 0; t < T; t++)
    for (int c = 0; c < C; c++) CHECK(out[t * C + c] == Approx(want[t][c]).epsilon(1e-14));
  for (int h = 0; h < NH; h++)
    for (int t = 0; t < T; t++) CHECK(lse[h * T + t] == Approx(std::log(t + 1.0)).epsilon(1e-14));
}

TEST_CASE("attention forward by hand: two keys, scaled scores") {
  // HS = 4, scale 1/2. Query 1 = (2, 0, 0, 0) scores key 0 = 0 and key 1 = (ln 3, ...)
  // as 2 * ln 3 / 2 = ln 3, so p = (1/4, 3/4): out = (4 + 3 * 8) / 4 = 7, lse = ln 4.
  const int T = 2, C = 4;
  std::vector<double> qkv(size_t(T) * 3 * C, 0.0);
  qkv[0] = 5;                       // query 0 only sees key 0: out = v0
  qkv[3 * C] = 2;                   // query 1
  qkv[3 * C + C] = std::log(3.0);   // key 1
  qkv[C + 1] = 7;                   // key 0 (orthogonal to query 1)
  qkv[2 * C] = 4, qkv[3 * C + 2 * C] = 8;  // values, first component
  std::vector<double> out(size_t(T) * C), lse(T);
  ref::attention_forward(out.data(), lse.data(), qkv.data(), 1, T, C, 1);
  CHECK(out[0] == Approx(4).epsilon(1e-14));
  CHECK(lse[0] == Approx(0).margin(1e-14));
  CHECK(out[C] == Approx(7).epsilon(1e-14));
  CHECK(lse[1] == Approx(std::log(4.0)).epsilon(1e-14));
}

TEST_CASE("attention backward matches finite differences and overwrites dqkv") {
  const int T = 7, C = 12, NH = 3;
  for (int B : {1, 2}) {
    std::mt19937 rng(9 + B);
    Vec qkv = random_vec(size_t(B) * T * 3 * C, rng, 1.5);
    const Vec dout = random_vec(size_t(B) * T * C, rng);
    Vec out(dout.size()), lse(size_t(B) * NH * T);
    auto loss = [&] {
      ref::attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
      return dot(out, dout);
    };
    const Vec want = numeric_grad(qkv, loss);
    loss();
    Vec dqkv = random_vec(qkv.size(), rng);  // garbage the backward must overwrite
    ref::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T,
                            C, NH);
    const double e = rel_err(dqkv, want);
    INFO("B = " << B << ": FD rel err dqkv " << e);
    CHECK(e < 1e-6);
  }
}

TEST_CASE("CpuOps attention matches the double reference, for any thread count") {
  const int B = 2, T = 33, C = 48, NH = 4;  // B*NH*T*T*HS > kParallelMinWork: threaded
  std::mt19937 rng(12);
  const Vec qkv = random_vec(size_t(B) * T * 3 * C, rng, 2.0),
            dout = random_vec(size_t(B) * T * C, rng);
  Vec out(dout.size()), lse(size_t(B) * NH * T), dqkv(qkv.size());
  ref::attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  ref::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, C,
                          NH);

  const auto qkv_f = to_float(qkv), dout_f = to_float(dout);
  struct Result { std::vector<float> out, lse, dqkv; };
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    Result r{std::vector<float>(out.size()), std::vector<float>(lse.size()),
             std::vector<float>(qkv.size())};
    CpuOps ops;
    ops.attention_forward(r.out.data(), r.lse.data(), qkv_f.data(), B, T, C, NH);
    ops.attention_backward(r.dqkv.data(), dout_f.data(), qkv_f.data(), r.out.data(),
                           r.lse.data(), B, T, C, NH);
    return r;
  };
  const int max_threads = omp_get_max_threads();
  const Result one = run(1), three = run(3);
  omp_set_num_threads(max_threads);
  CHECK(rel_err(one.out, out) < 1e-5);
  CHECK(rel_err(one.lse, lse) < 1e-5);
  CHECK(rel_err(one.dqkv, dqkv) < 1e-5);
  CHECK(one.out == three.out);
  CHECK(one.dqkv == three.dqkv);

  // Inference may skip the statistics.
  std::vector<float> out_no_lse(out.size());
  CpuOps().attention_forward(out_no_lse.data(), nullptr, qkv_f.data(), B, T, C, NH);
  CHECK(out_no_lse == one.out);
}

// The bf16 tensor-core kernels round P and dS to bf16 as inputs of their matrix products
// (as flash-attention 2 does). Rounding to nearest errs by at most u = 2^-8 of each term,
// so on top of the output's own rounding each output element may move by u times the sum
// of its terms' magnitudes (p normalized, dS_ij = p_ij (dO_i . v_j - delta_i)):
//   out_i: u sum_j p_ij |v_j|        dV_j: u sum_i p_ij |dO_i|
//   dK_j:  u scale sum_i |dS_ij| |q_i|   dQ_i: u scale sum_j |dS_ij| |k_j|
// These sums (elementwise, laid out like out and dqkv) are computed here in double. With
// |got - want| <= u |want| + u (1 + u) sum + fp32 noise elementwise, rel_err (max norm) is
// at most u + u (1 + u) max(sum) / max|want| + 1e-5.
struct RoundingBound {
  Vec out, dqkv;
};
RoundingBound rounding_bound(const Vec& qkv, const Vec& dout, int B, int T, int C, int NH) {
  const int HS = C / NH;
  const double scale = 1.0 / std::sqrt(double(HS));
  RoundingBound r{Vec(size_t(B) * T * C, 0.0), Vec(size_t(B) * T * 3 * C, 0.0)};
  Vec p(T), o(HS);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++)
      for (int i = 0; i < T; i++) {
        auto at = [&](int t, int part) { return (size_t(b) * T + t) * 3 * C + part * C + h * HS; };
        const double* q = &qkv[at(i, 0)];
        double mx = -INFINITY, sum = 0.0;
        for (int j = 0; j <= i; j++) {
          double s = 0.0;
          for (int d = 0; d < HS; d++) s += q[d] * qkv[at(j, 1) + d];
          p[j] = s * scale;
          mx = std::max(mx, p[j]);
        }
        for (int j = 0; j <= i; j++) sum += p[j] = std::exp(p[j] - mx);
        std::fill(o.begin(), o.end(), 0.0);
        for (int j = 0; j <= i; j++) {
          p[j] /= sum;
          for (int d = 0; d < HS; d++) o[d] += p[j] * qkv[at(j, 2) + d];
        }
        const double* dO = &dout[(size_t(b) * T + i) * C + h * HS];
        double delta = 0.0;
        for (int d = 0; d < HS; d++) delta += dO[d] * o[d];
        for (int j = 0; j <= i; j++) {
          double dp = 0.0;
          for (int d = 0; d < HS; d++) dp += dO[d] * qkv[at(j, 2) + d];
          const double ds = std::abs(p[j] * (dp - delta)) * scale;
          for (int d = 0; d < HS; d++) {
            r.out[(size_t(b) * T + i) * C + h * HS + d] += p[j] * std::abs(qkv[at(j, 2) + d]);
            r.dqkv[at(j, 2) + d] += p[j] * std::abs(dO[d]);
            r.dqkv[at(j, 1) + d] += ds * std::abs(q[d]);
            r.dqkv[at(i, 0) + d] += ds * std::abs(qkv[at(j, 1) + d]);
          }
        }
      }
  return r;
}

template <class T, class W>
double rounded_product_tolerance(const Vec& sum, const W& want) {
  if (std::is_same_v<T, float>) return tolerance<T>();  // fp32 kernels round nothing
  double max_sum = 0.0, max_want = 0.0;
  for (double x : sum) max_sum = std::max(max_sum, x);
  for (auto x : want) max_want = std::max(max_want, std::abs(double(x)));
  return tolerance<T>() + kBf16Unit * (1 + kBf16Unit) * max_sum / max_want;
}

TEMPLATE_TEST_CASE("CudaOps attention matches the reference (T not a multiple of the tiles)",
                   "[gpu]", float, bf16) {
  using R = RefScalar<TestType>;
  Gpu gpu;
  auto ops = make_cuda_ops<TestType>(*gpu.dev);
  struct Shape { int B, T, NH, HS; };
  // The bf16 tensor-core kernels tile by 64: T = 64, 130, 200, 300 cover exact, partial
  // and several tiles; 1024 is GPT-2's context. HS 32 runs the FMA kernels in both types.
  for (const Shape s : {Shape{1, 37, 3, 32}, Shape{2, 130, 2, 64}, Shape{1, 200, 4, 64},
                        Shape{3, 64, 1, 64}, Shape{2, 300, 3, 64}, Shape{1, 1024, 2, 64}}) {
    INFO("B " << s.B << " T " << s.T << " NH " << s.NH << " HS " << s.HS);
    const int C = s.NH * s.HS;
    const size_t n = size_t(s.B) * s.T * C;
    std::mt19937 rng(s.B * 100 + s.T + s.NH);
    // Scale 2 makes scores of O(1..10): peaked rows that exercise the online max.
    const Vec qkv = rounded<TestType>(random_vec(3 * n, rng, 2.0)),
              dout = rounded<TestType>(random_vec(n, rng));
    auto d_qkv = gpu.upload<TestType>(qkv), d_out = gpu.zeros<TestType>(n);
    auto d_lse = gpu.zeros<float>(size_t(s.B) * s.NH * s.T);
    ops->attention_forward(d_out.get(), d_lse.get(), d_qkv.get(), s.B, s.T, C, s.NH);
    std::vector<R> out(n), lse(size_t(s.B) * s.NH * s.T);
    ref::attention_forward<R>(out.data(), lse.data(), as<R>(qkv).data(), s.B, s.T, C, s.NH);
    const RoundingBound bound = std::is_same_v<TestType, float>
                                    ? RoundingBound{}
                                    : rounding_bound(qkv, dout, s.B, s.T, C, s.NH);
    const double out_tol = rounded_product_tolerance<TestType>(bound.out, out);
    const double out_err = rel_err(gpu.download(d_out, n), out);
    INFO("out rel err " << out_err << " (tolerance " << out_tol << ")");
    CHECK(out_err <= out_tol);
    CHECK(rel_err(gpu.download(d_lse, lse.size()), lse) <= stat_tolerance<TestType>());

    // Backward from the reference's forward, stored as the model would store it.
    const Vec out_t = rounded<TestType>(to_double(out)), lse_f = rounded<float>(to_double(lse));
    auto d_dout = gpu.upload<TestType>(dout), d_out_t = gpu.upload<TestType>(out_t);
    auto d_lse_f = gpu.upload<float>(lse_f);
    auto d_dqkv = gpu.upload<TestType>(random_vec(3 * n, rng));  // must be overwritten
    ops->attention_backward(d_dqkv.get(), d_dout.get(), d_qkv.get(), d_out_t.get(),
                            d_lse_f.get(), s.B, s.T, C, s.NH);
    std::vector<R> dqkv(3 * n);
    ref::attention_backward<R>(dqkv.data(), as<R>(dout).data(), as<R>(qkv).data(),
                               as<R>(out_t).data(), as<R>(lse_f).data(), s.B, s.T, C, s.NH);
    const double dqkv_tol = rounded_product_tolerance<TestType>(bound.dqkv, dqkv);
    const double dqkv_err = rel_err(gpu.download(d_dqkv, 3 * n), dqkv);
    INFO("dqkv rel err " << dqkv_err << " (tolerance " << dqkv_tol << ")");
    CHECK(dqkv_err <= dqkv_tol);
    std::printf("%s B %d T %d NH %d HS %d: out err %.2e (tol %.2e), dqkv err %.2e (tol %.2e)\n",
                std::is_same_v<TestType, float> ? "fp32" : "bf16", s.B, s.T, s.NH, s.HS,
                out_err, out_tol, dqkv_err, dqkv_tol);
  }
}
