// Residual add: hand values, output aliasing either input, CpuOps against the double
// reference. It has no backward op: the model adds dout into both branches' gradients,
// and its derivative (the identity) needs no finite-difference check beyond the sum.
// The add fused with the next layernorm (residual_layernorm_forward): hand values, and on
// a GPU bit-equality with the two separate kernels plus the reference tolerance.
#include <cmath>
#include <random>
#include <utility>

#include "catch.hpp"
#include "gpu_check.hpp"
#include "op_check.hpp"
#include "reference/cpu_ops.hpp"
#include "reference/ops_ref.hpp"

using namespace gpt2;
using namespace gpt2::test;

TEST_CASE("residual forward adds, also in place") {
  const double a[] = {1, -2, 0.5}, b[] = {10, 2, 0.25};
  double out[3];
  ref::residual_forward(out, a, b, 3);
  CHECK(out[0] == 11);
  CHECK(out[1] == 0);
  CHECK(out[2] == 0.75);

  double x[] = {1, 2, 3}, y[] = {4, 5, 6};
  ref::residual_forward(x, x, y, 3);  // out aliases a
  CHECK(x[2] == 9);
  ref::residual_forward(y, x, y, 3);  // out aliases b
  CHECK(y[2] == 15);
}

TEST_CASE("CpuOps residual matches the double reference") {
  const size_t n = 40001;  // above kParallelMinWork: threaded
  std::mt19937 rng(15);
  const Vec a = random_vec(n, rng), b = random_vec(n, rng);
  Vec out(n);
  ref::residual_forward(out.data(), a.data(), b.data(), n);
  const auto a_f = to_float(a), b_f = to_float(b);
  std::vector<float> out_f(n);
  CpuOps().residual_forward(out_f.data(), a_f.data(), b_f.data(), n);
  CHECK(rel_err(out_f, out) < 1e-5);
}

TEST_CASE("residual + layernorm of [1, 2, 3] by hand") {
  // a + b = [1, 2, 3]: mean 2, biased variance 2/3, xhat = [-1, 0, 1] / sqrt(2/3 + 1e-5).
  const double a[] = {0.5, 2, 4}, b[] = {0.5, 0, -1}, w[] = {1, 2, -1}, bias[] = {0, 0.5, 1};
  double res[3], out[3], mean, rstd;
  ref::residual_layernorm_forward(res, out, &mean, &rstd, a, b, w, bias, 1, 3);
  const double r = 1.0 / std::sqrt(2.0 / 3.0 + 1e-5);
  CHECK(res[0] == 1);
  CHECK(res[1] == 2);
  CHECK(res[2] == 3);
  CHECK(mean == Approx(2.0).epsilon(1e-14));
  CHECK(rstd == Approx(r).epsilon(1e-14));
  CHECK(out[0] == Approx(-r).epsilon(1e-14));
  CHECK(out[1] == Approx(0.5).epsilon(1e-14));
  CHECK(out[2] == Approx(-r + 1).epsilon(1e-14));

  float res_f[3], out_f[3], mean_f, rstd_f;
  const float a_f[] = {0.5f, 2, 4}, b_f[] = {0.5f, 0, -1}, w_f[] = {1, 2, -1},
              bias_f[] = {0, 0.5f, 1};
  CpuOps().residual_layernorm_forward(res_f, out_f, &mean_f, &rstd_f, a_f, b_f, w_f, bias_f, 1, 3);
  CHECK(res_f[2] == 3);
  CHECK(out_f[0] == Approx(-r).epsilon(1e-6));
  CHECK(out_f[2] == Approx(-r + 1).epsilon(1e-6));
}

TEMPLATE_TEST_CASE("CudaOps residual + layernorm equals the two separate ops", "[gpu]", float,
                   bf16) {
  using R = RefScalar<TestType>;
  Gpu gpu;
  auto ops = make_cuda_ops<TestType>(*gpu.dev);
  // 768 and 1024 take the 16-byte vector path in both types, 100 and 1600 the scalar one.
  for (const auto& [N, C] : {std::pair{1, 768}, std::pair{300, 1024}, std::pair{37, 100},
                             std::pair{130, 1600}}) {
    INFO("N " << N << " C " << C);
    const size_t n = size_t(N) * C;
    std::mt19937 rng(N * 5 + C);
    Vec a = random_vec(n, rng, 2.0);
    for (double& x : a) x += 0.5;  // a nonzero mean, as in the residual stream
    a = rounded<TestType>(a);
    const Vec b = rounded<TestType>(random_vec(n, rng)), w = rounded<TestType>(random_vec(C, rng)),
              bias = rounded<TestType>(random_vec(C, rng));
    auto d_a = gpu.upload<TestType>(a), d_b = gpu.upload<TestType>(b),
         d_w = gpu.upload<TestType>(w), d_bias = gpu.upload<TestType>(bias);
    auto d_res = gpu.zeros<TestType>(n), d_out = gpu.zeros<TestType>(n);
    auto d_mean = gpu.zeros<float>(N), d_rstd = gpu.zeros<float>(N);
    ops->residual_layernorm_forward(d_res.get(), d_out.get(), d_mean.get(), d_rstd.get(),
                                    d_a.get(), d_b.get(), d_w.get(), d_bias.get(), N, C);
    // The oracle stores the residual as TestType does (bf16 rounds it) and normalizes the
    // stored row, as the contract says: the unrounded sum's statistics differ by ~2e-4.
    std::vector<R> res(n), out(n), mean(N), rstd(N);
    ref::residual_forward<R>(res.data(), as<R>(a).data(), as<R>(b).data(), n);
    const std::vector<R> res_t = as<R>(rounded<TestType>(to_double(res)));
    ref::layernorm_forward<R>(out.data(), mean.data(), rstd.data(), res_t.data(),
                              as<R>(w).data(), as<R>(bias).data(), N, C);
    const Vec got_res = gpu.download(d_res, n), got_out = gpu.download(d_out, n),
              got_mean = gpu.download(d_mean, N), got_rstd = gpu.download(d_rstd, N);
    CHECK(rel_err(got_res, res) <= tolerance<TestType>());
    CHECK(rel_err(got_out, out) <= tolerance<TestType>());
    CHECK(rel_err(got_mean, mean) <= stat_tolerance<TestType>());
    CHECK(rel_err(got_rstd, rstd) <= stat_tolerance<TestType>());

    // The unfused ops, in place into a (residual_out may alias an input).
    auto d_out2 = gpu.zeros<TestType>(n);
    auto d_mean2 = gpu.zeros<float>(N), d_rstd2 = gpu.zeros<float>(N);
    ops->residual_forward(d_a.get(), d_a.get(), d_b.get(), n);
    ops->layernorm_forward(d_out2.get(), d_mean2.get(), d_rstd2.get(), d_a.get(), d_w.get(),
                           d_bias.get(), N, C);
    CHECK(gpu.download(d_a, n) == got_res);
    CHECK(gpu.download(d_out2, n) == got_out);
    CHECK(gpu.download(d_mean2, N) == got_mean);
    CHECK(gpu.download(d_rstd2, N) == got_rstd);
  }
}

TEMPLATE_TEST_CASE("CudaOps residual matches the reference, in place too", "[gpu]", float,
                   bf16) {
  using R = RefScalar<TestType>;
  Gpu gpu;
  auto ops = make_cuda_ops<TestType>(*gpu.dev);
  for (const size_t n : {size_t(1), size_t(1000), size_t(100003)}) {
    INFO("n " << n);
    std::mt19937 rng{unsigned(n)};
    const Vec a = rounded<TestType>(random_vec(n, rng)), b = rounded<TestType>(random_vec(n, rng));
    auto d_a = gpu.upload<TestType>(a), d_b = gpu.upload<TestType>(b);
    std::vector<R> want(n);
    ref::residual_forward<R>(want.data(), as<R>(a).data(), as<R>(b).data(), n);
    ops->residual_forward(d_a.get(), d_a.get(), d_b.get(), n);  // out aliases a
    CHECK(rel_err(gpu.download(d_a, n), want) <= tolerance<TestType>());
  }
}
