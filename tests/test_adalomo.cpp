#include <cmath>

#include "catch.hpp"
#include "factored_oracle.hpp"
#include "optim_fixture.hpp"
#include "optim_batch_check.hpp"

using namespace gpt2;
using namespace gpt2::test;

// Spec 3.2 in double: alpha = lr * max(eps2, RMS(W_old)) scales both the step and decay.
static void adalomo_oracle(std::vector<double>& w, const std::vector<double>& g, FactoredOracle& s,
                           int t, double lr, double wd) {
  const double alpha = lr * std::max(1e-3, rms_of(w));
  const std::vector<double> U = oracle_direction(s, g, 1 - std::pow(t, -0.8), 1e-30, 1.0);
  for (size_t i = 0; i < w.size(); i++) w[i] = w[i] - alpha * wd * w[i] - alpha * U[i];
}

static void check_against_oracle(double wd, bool decay_vectors, double lr, float shrink = 1.0f) {
  json cfg = optimizer_cfg("adalomo");
  cfg["optimizer"]["weight_decay"] = wd;
  cfg["optimizer"]["decay_vectors"] = decay_vectors;
  CpuDevice dev;
  auto opt = make_optimizer(cfg, tiny_table(), dev, 0);
  const TinyRun got = run_tiny(*opt, 3, lr, shrink);
  std::vector<double> wm = to_double(tiny_w_matrix()), wv = to_double(tiny_w_vector());
  FactoredOracle sm(2, 3), sv(1, 3);
  for (int t = 1; t <= 3; t++) {
    adalomo_oracle(wm, to_double(tiny_g_matrix(t, shrink)), sm, t, lr, wd);
    adalomo_oracle(wv, to_double(tiny_g_vector(t, shrink)), sv, t, lr, decay_vectors ? wd : 0.0);
  }
  for (int i = 0; i < 6; i++) CHECK(got.wm[i] == Approx(wm[i]).epsilon(2e-6));
  for (int i = 0; i < 3; i++) CHECK(got.wv[i] == Approx(wv[i]).epsilon(2e-6));
}

TEST_CASE("AdaLomo matches a double-precision re-derivation over three steps") {
  SECTION("no weight decay") { check_against_oracle(0.0, false, 0.5); }
  SECTION("decay on matrices only") { check_against_oracle(0.1, false, 0.5); }
  SECTION("decay on vectors too") { check_against_oracle(0.1, true, 0.5); }
  // Shrinking gradients leave RMS(U) < 1 on later steps: the unclipped path.
  SECTION("unclipped steps") { check_against_oracle(0.0, false, 0.5, 0.2f); }
}

TEST_CASE("AdaLomo clips the update to RMS(U) <= 1 before scaling by alpha") {
  // Vector, g = 0.1 then 1.0 in all three entries. t = 1: v = g^2, U = 1 (RMS 1, unclipped).
  // t = 2: beta2 = 1 - 2^-0.8 = 0.425651, v = 0.425651 * 0.01 + 0.574349 * 1 = 0.578606,
  // U = 1 / sqrt(v) = 1.314660 > 1, so clipping brings it back to exactly 1.
  // W0 = 0.5 (RMS 0.5): W1 = 0.5 - 0.1 * 0.5 = 0.45; W2 = 0.45 - 0.1 * 0.45 = 0.405.
  const ParamTable t = table_of({spec(0, 1, 3)});
  CpuDevice dev;
  auto opt = make_optimizer(optimizer_cfg("adalomo"), t, dev, 0);
  std::vector<float> w = {0.5f, 0.5f, 0.5f};
  for (int s = 1; s <= 2; s++) {
    std::vector<float> g(3, s == 1 ? 0.1f : 1.0f);
    opt->begin_step(s, 0.1f);
    opt->update(t.params[0], w.data(), nullptr, g.data());
  }
  for (float x : w) CHECK(x == Approx(0.405).epsilon(1e-6));
}

TEST_CASE("AdaLomo's factored moment is exact for a rank-one g^2") {
  // g_ij = s_ij sqrt(a_i b_j): at t = 1 (beta2_1 = 0) V_hat = g^2 exactly, so U = sign(g),
  // RMS(U) = 1 (no clipping) and W1 = W0 - alpha sign(g), alpha = lr * RMS(W0).
  const double a[3] = {1.0, 4.0, 0.25}, b[4] = {2.0, 0.5, 1.0, 9.0};
  const ParamTable t = table_of({spec(0, 3, 4)});
  json cfg = optimizer_cfg("adalomo");
  CpuDevice dev;
  auto opt = make_optimizer(cfg, t, dev, 0);
  std::vector<float> w(12), g(12);
  for (int i = 0; i < 12; i++) w[i] = 0.1f * float(i - 5);
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 4; j++) g[i * 4 + j] = float((i + j) % 2 ? -1 : 1) * std::sqrt(a[i] * b[j]);
  const std::vector<float> w0 = w, g0 = g;
  const double alpha = 0.01 * rms_of(to_double(w0));
  opt->begin_step(1, 0.01f);
  opt->update(t.params[0], w.data(), nullptr, g.data());
  for (int i = 0; i < 12; i++) CHECK(w[i] == Approx(w0[i] - alpha * (g0[i] > 0 ? 1 : -1)).epsilon(1e-6));
}

TEST_CASE("AdaLomo minimizes a convex quadratic and its state round-trips") {
  const json cfg = optimizer_cfg("adalomo");
  const auto [first, last] = convex_descent(cfg, 300, 0.05);
  CHECK(last < 0.05 * first);
  CHECK(state_round_trips(cfg, 2, 2));
  CHECK_FALSE(state_round_trips(cfg, 2, 2, false));
}

TEST_CASE("AdaLomo's grad_scale equals scaling the gradient first, bit for bit") {
  // The pipeline skips clip_scale for AdaLomo on this promise.
  json cfg = optimizer_cfg("adalomo");
  cfg["optimizer"]["weight_decay"] = 0.1;
  CHECK(grad_scale_matches_prescaled(cfg));
}

TEST_CASE("AdaLomo on the GPU applies grad_scale as the CPU reference does", "[gpu]") {
  json cfg = optimizer_cfg("adalomo");
  cfg["optimizer"]["weight_decay"] = 0.1;
  check_gpu_grad_scale(cfg);
}

TEST_CASE("AdaLomo on the GPU matches the CPU reference", "[gpu]") {
  json cfg = optimizer_cfg("adalomo");
  cfg["optimizer"]["weight_decay"] = 0.1;
  check_gpu_against_reference(cfg);
  CHECK_FALSE(gpu_state_round_trips(cfg, 2, 2, false));
}

TEST_CASE("AdaLomo's batched GPU update equals its update() per tensor, bit for bit", "[gpu]") {
  json cfg = optimizer_cfg("adalomo");
  cfg["optimizer"]["weight_decay"] = 0.1;
  check_batched_matches_single(cfg);
}
