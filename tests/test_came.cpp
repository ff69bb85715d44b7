#include <cmath>

#include "catch.hpp"
#include "factored_oracle.hpp"
#include "optim_fixture.hpp"
#include "optim_batch_check.hpp"

using namespace gpt2;
using namespace gpt2::test;

// came_pytorch semantics (spec 5.2) in double, betas (0.9, 0.999, 0.9999), eps (1e-30, 1e-16).
struct CameOracle {
  FactoredOracle second, instability;
  std::vector<double> m;
  double wd;
  void step(std::vector<double>& w, const std::vector<double>& g, double lr) {
    const std::vector<double> U = oracle_direction(second, g, 0.999, 1e-30, 1.0);
    m.resize(w.size());
    for (size_t i = 0; i < w.size(); i++) m[i] = 0.9 * m[i] + 0.1 * U[i];
    std::vector<double> D = m;
    if (second.m > 1) {
      std::vector<double> I(w.size());
      for (size_t i = 0; i < w.size(); i++) I[i] = (U[i] - m[i]) * (U[i] - m[i]) + 1e-16;
      const std::vector<double> S = instability.update(I, 0.9999);
      for (size_t i = 0; i < w.size(); i++) D[i] = m[i] / std::sqrt(S[i]);
    }
    for (size_t i = 0; i < w.size(); i++) w[i] = w[i] - lr * wd * w[i] - lr * D[i];
  }
};

static void check_against_oracle(double wd) {
  json cfg = optimizer_cfg("came");
  cfg["optimizer"]["weight_decay"] = wd;
  const double lr = 1e-3;
  CpuDevice dev;
  auto opt = make_optimizer(cfg, tiny_table(), dev, 0);
  const TinyRun got = run_tiny(*opt, 3, lr);
  std::vector<double> wm = to_double(tiny_w_matrix()), wv = to_double(tiny_w_vector());
  CameOracle om{FactoredOracle(2, 3), FactoredOracle(2, 3), {}, wd};
  CameOracle ov{FactoredOracle(1, 3), FactoredOracle(1, 3), {}, 0.0};
  for (int t = 1; t <= 3; t++) {
    om.step(wm, to_double(tiny_g_matrix(t)), lr);
    ov.step(wv, to_double(tiny_g_vector(t)), lr);
  }
  for (int i = 0; i < 6; i++) CHECK(got.wm[i] == Approx(wm[i]).epsilon(2e-6));
  for (int i = 0; i < 3; i++) CHECK(got.wv[i] == Approx(wv[i]).epsilon(2e-6));
}

TEST_CASE("CAME matches a double-precision came_pytorch re-derivation over three steps") {
  SECTION("no weight decay") { check_against_oracle(0.0); }
  SECTION("decay on matrices (raw lr)") { check_against_oracle(0.1); }
}

TEST_CASE("CAME at t = 1: vectors take m, matrices the confidence-scaled m") {
  // Vector: v = 0.001 g^2, U = sign(g) / sqrt(0.001), RMS 31.6 -> clipped to sign(g);
  // m = 0.1 sign(g) and vectors skip the confidence factor: W1 = W0 - lr 0.1 sign(g).
  // Matrix with g^2 = outer(a, b) (factored V exact): same U = sign(g), m = 0.1 sign(g);
  // the instability uses the NEW m: (U - m)^2 + eps2 = 0.81 everywhere, S_hat = 1e-4 * 0.81,
  // D = 0.1 / sqrt(0.81e-4) = 11.1111 sign(g). (With the old m = 0 it would be 10.)
  const ParamTable t = table_of({spec(0, 2, 3), spec(1, 1, 3)});
  CpuDevice dev;
  auto opt = make_optimizer(optimizer_cfg("came"), t, dev, 0);
  const double a[2] = {4.0, 0.01}, b[3] = {1.0, 0.36, 25.0};
  std::vector<float> wm(6, 0.0f), gm(6), wv(3, 0.0f), gv = {0.5f, -2.0f, 1e-3f};
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 3; j++) gm[i * 3 + j] = float(i == j ? -1 : 1) * std::sqrt(a[i] * b[j]);
  const std::vector<float> g0 = gm;
  opt->begin_step(1, 0.01f);
  opt->update(t.params[0], wm.data(), nullptr, gm.data());
  opt->update(t.params[1], wv.data(), nullptr, gv.data());
  for (int i = 0; i < 6; i++)
    CHECK(wm[i] == Approx(-0.01 * (0.1 / 0.009) * (g0[i] > 0 ? 1 : -1)).epsilon(1e-5));
  CHECK(wv[0] == Approx(-0.001).epsilon(1e-5));
  CHECK(wv[1] == Approx(0.001).epsilon(1e-5));
  CHECK(wv[2] == Approx(-0.001).epsilon(1e-5));
}

TEST_CASE("CAME minimizes a convex quadratic and its state round-trips") {
  const json cfg = optimizer_cfg("came");
  const auto [first, last] = convex_descent(cfg, 300, 0.005);
  CHECK(last < 0.05 * first);
  CHECK(state_round_trips(cfg, 2, 2));
  CHECK_FALSE(state_round_trips(cfg, 2, 2, false));
}

TEST_CASE("CAME's grad_scale equals scaling the gradient first, bit for bit") {
  // The pipeline skips clip_scale for CAME on this promise.
  json cfg = optimizer_cfg("came");
  cfg["optimizer"]["weight_decay"] = 0.1;
  CHECK(grad_scale_matches_prescaled(cfg));
}

TEST_CASE("CAME on the GPU applies grad_scale as the CPU reference does", "[gpu]") {
  json cfg = optimizer_cfg("came");
  cfg["optimizer"]["weight_decay"] = 0.1;
  check_gpu_grad_scale(cfg);
}

TEST_CASE("CAME on the GPU matches the CPU reference", "[gpu]") {
  json cfg = optimizer_cfg("came");
  cfg["optimizer"]["weight_decay"] = 0.1;
  check_gpu_against_reference(cfg);
  CHECK_FALSE(gpu_state_round_trips(cfg, 2, 2, false));
}

TEST_CASE("CAME's batched GPU update equals its update() per tensor, bit for bit", "[gpu]") {
  json cfg = optimizer_cfg("came");
  cfg["optimizer"]["weight_decay"] = 0.1;
  check_batched_matches_single(cfg);
}
