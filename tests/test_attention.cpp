// Causal self-attention: hand-computed forward (uniform and two-key softmax), finite-
// difference backward from the stored lse, the overwrite convention, CpuOps against the
// double reference and thread-count independence.
#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

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

TEMPLATE_TEST_CASE("CudaOps attention matches the reference (T not a multiple of the tiles)",
                   "[gpu]", float, bf16) {
  using R = RefScalar<TestType>;
  constexpr double tol = tolerance<TestType>();
  Gpu gpu;
  auto ops = make_cuda_ops<TestType>(*gpu.dev);
  struct Shape { int B, T, NH, HS; };
  for (const Shape s : {Shape{1, 37, 3, 32}, Shape{2, 130, 2, 64}, Shape{1, 200, 4, 64},
                        Shape{3, 64, 1, 64}}) {
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
    CHECK(rel_err(gpu.download(d_out, n), out) <= tol);
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
    CHECK(rel_err(gpu.download(d_dqkv, 3 * n), dqkv) <= tol);
  }
}

// Hidden: ./build/test_attention "[cudabench]" times the attention kernels at GPT-2
// 124M's shape (B 8, T 1024, 12 heads of 64) against the qkv matmul that feeds them.
TEMPLATE_TEST_CASE("CudaOps attention speed at GPT-2 124M's shape", "[.][cudabench]", float,
                   bf16) {
  const int B = 8, T = 1024, NH = 12, C = 768, N = B * T;
  Gpu gpu;
  auto ops = make_cuda_ops<TestType>(*gpu.dev);
  std::mt19937 rng(1);
  auto qkv = gpu.upload<TestType>(random_vec(size_t(N) * 3 * C, rng));
  auto dout = gpu.upload<TestType>(random_vec(size_t(N) * C, rng));
  auto w = gpu.upload<TestType>(random_vec(size_t(3) * C * C, rng, 0.03));
  auto out = gpu.zeros<TestType>(size_t(N) * C), dqkv = gpu.zeros<TestType>(size_t(N) * 3 * C);
  auto lse = gpu.zeros<float>(size_t(B) * NH * T);
  auto time_ms = [&](auto&& f) {
    f();
    gpu.dev->synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 10; i++) f();
    gpu.dev->synchronize();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
               .count() / 10;
  };
  const double fwd = time_ms(
      [&] { ops->attention_forward(out.get(), lse.get(), qkv.get(), B, T, C, NH); });
  const double bwd = time_ms([&] {
    ops->attention_backward(dqkv.get(), dout.get(), qkv.get(), out.get(), lse.get(), B, T, C,
                            NH);
  });
  const double mm = time_ms([&] {
    ops->matmul_forward(dqkv.get(), nullptr, out.get(), w.get(), nullptr, N, C, 3 * C);
  });
  // Causal attention: 2 matmuls of T^2/2 x HS per head forward, 5 (with recompute) backward.
  const double flop = 2.0 * B * NH * (double(T) * T / 2) * 64;
  std::printf("%s attention fwd %.3f ms (%.1f TFLOP/s), bwd %.3f ms (%.1f TFLOP/s); "
              "qkv matmul %.3f ms (%.1f TFLOP/s)\n",
              std::is_same_v<TestType, float> ? "fp32" : "bf16", fwd, 2 * flop / fwd / 1e9, bwd,
              5 * flop / bwd / 1e9, mm, 2.0 * N * C * 3 * C / mm / 1e9);
  CHECK(fwd > 0);
}
