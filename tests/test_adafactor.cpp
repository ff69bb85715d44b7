#include <cmath>
#include <optional>

#include "catch.hpp"
#include "factored_oracle.hpp"
#include "optim_fixture.hpp"
#include "optim_batch_check.hpp"

using namespace gpt2;
using namespace gpt2::test;

// HF transformers Adafactor semantics (spec 4.2) in double, relative_step = False.
struct AdafactorOracle {
  std::optional<double> beta1;
  bool scale_parameter;
  double wd;
  FactoredOracle s;
  std::vector<double> m1;
  void step(std::vector<double>& w, const std::vector<double>& g, int t, double lr) {
    const double alpha = scale_parameter ? lr * std::max(1e-3, rms_of(w)) : lr;
    std::vector<double> U = oracle_direction(s, g, 1 - std::pow(t, -0.8), 1e-30, 1.0);
    m1.resize(w.size());
    for (size_t i = 0; i < w.size(); i++) {
      U[i] *= alpha;
      if (beta1) U[i] = m1[i] = *beta1 * m1[i] + (1 - *beta1) * U[i];
      w[i] = w[i] - wd * alpha * w[i] - U[i];
    }
  }
};

static void check_against_oracle(std::optional<double> beta1, bool scale_parameter, double wd,
                                 float shrink = 1.0f) {
  json cfg = optimizer_cfg("adafactor");
  cfg["optimizer"]["adafactor"]["beta1"] = beta1 ? json(*beta1) : json(nullptr);
  cfg["optimizer"]["adafactor"]["scale_parameter"] = scale_parameter;
  cfg["optimizer"]["weight_decay"] = wd;
  const double lr = scale_parameter ? 0.5 : 0.01;
  CpuDevice dev;
  auto opt = make_optimizer(cfg, tiny_table(), dev, 0);
  const TinyRun got = run_tiny(*opt, 3, lr, shrink);
  std::vector<double> wm = to_double(tiny_w_matrix()), wv = to_double(tiny_w_vector());
  AdafactorOracle om{beta1, scale_parameter, wd, FactoredOracle(2, 3), {}};
  AdafactorOracle ov{beta1, scale_parameter, 0.0, FactoredOracle(1, 3), {}};
  for (int t = 1; t <= 3; t++) {
    om.step(wm, to_double(tiny_g_matrix(t, shrink)), t, lr);
    ov.step(wv, to_double(tiny_g_vector(t, shrink)), t, lr);
  }
  for (int i = 0; i < 6; i++) CHECK(got.wm[i] == Approx(wm[i]).epsilon(2e-6));
  for (int i = 0; i < 3; i++) CHECK(got.wv[i] == Approx(wv[i]).epsilon(2e-6));
}

TEST_CASE("Adafactor matches a double-precision HF re-derivation over three steps") {
  // Flags: relative_step = False, warmup_init = False, eps = (1e-30, 1e-3), d = 1, c = -0.8.
  SECTION("beta1 = None, scale_parameter = False") { check_against_oracle({}, false, 0.0); }
  SECTION("beta1 = 0.9, scale_parameter = False, wd") { check_against_oracle(0.9, false, 0.1); }
  SECTION("beta1 = None, scale_parameter = True, wd") { check_against_oracle({}, true, 0.1); }
  SECTION("beta1 = 0.9, scale_parameter = True") { check_against_oracle(0.9, true, 0.0); }
  // Shrinking gradients leave RMS(U) < 1 on later steps: the unclipped path.
  SECTION("unclipped steps") { check_against_oracle({}, false, 0.0, 0.2f); }
}

TEST_CASE("Adafactor with beta1 applies the lr before the momentum EMA") {
  // Step 1 at lr, step 2 at lr = 0: alpha_2 = 0 so m1 <- beta1 m1 and W2 - W1 = beta1 (W1 - W0).
  // Adam-style momentum of raw updates with lr applied afterwards would not move at all.
  json cfg = optimizer_cfg("adafactor");
  cfg["optimizer"]["adafactor"]["beta1"] = 0.9;
  const ParamTable t = tiny_table();
  CpuDevice dev;
  auto opt = make_optimizer(cfg, t, dev, 0);
  std::vector<float> w = tiny_w_matrix();
  const std::vector<float> w0 = w;
  std::vector<float> w1;
  for (int s = 1; s <= 2; s++) {
    std::vector<float> g = tiny_g_matrix(s);
    opt->begin_step(s, s == 1 ? 0.01f : 0.0f);
    opt->update(t.params[0], w.data(), nullptr, g.data());
    if (s == 1) w1 = w;
  }
  for (int i = 0; i < 6; i++) {
    CHECK(w1[i] != w0[i]);
    CHECK(w[i] - w1[i] == Approx(0.9 * (w1[i] - w0[i])).epsilon(1e-4));  // fp32 differences
  }
}

TEST_CASE("Adafactor scales weight decay by alpha and starts with beta2_1 = 0") {
  json cfg = optimizer_cfg("adafactor");
  cfg["optimizer"]["adafactor"]["scale_parameter"] = true;
  cfg["optimizer"]["weight_decay"] = 0.5;
  const ParamTable t = tiny_table();
  CpuDevice dev;
  auto opt = make_optimizer(cfg, t, dev, 0);
  // Zero gradient: U = 0 / sqrt(eps1) = 0, so only decay acts: W1 = W0 (1 - wd lr RMS(W0)).
  // W0 = 0.5, -0.3, 0.8, 0.1, -0.7, 0.2: RMS = sqrt(1.52 / 6) = 0.503322.
  std::vector<float> w = tiny_w_matrix(), g(6, 0.0f);
  opt->begin_step(1, 0.2f);
  opt->update(t.params[0], w.data(), nullptr, g.data());
  for (int i = 0; i < 6; i++)
    CHECK(w[i] == Approx(tiny_w_matrix()[i] * (1 - 0.5 * 0.2 * 0.503322)).epsilon(1e-6));
  // beta2_1 = 0: after step 1 the stats hold exactly this step's means of g^2 + eps1.
  std::vector<float> g2 = {1, 2, 3, 4, 5, 6};
  auto fresh = make_optimizer(cfg, t, dev, 0);
  fresh->begin_step(1, 0.2f);
  fresh->update(t.params[0], w.data(), nullptr, g2.data());
  const auto st = fresh->state();
  REQUIRE(st[0].name == "adafactor.r.matrix0");
  const float* r = static_cast<const float*>(st[0].data);
  const float* c = static_cast<const float*>(st[1].data);
  CHECK(r[0] == Approx(14.0 / 3));  // (1 + 4 + 9) / 3
  CHECK(r[1] == Approx(77.0 / 3));  // (16 + 25 + 36) / 3
  CHECK(c[0] == Approx(8.5));       // (1 + 16) / 2
  CHECK(c[2] == Approx(22.5));      // (9 + 36) / 2
}

TEST_CASE("Adafactor's relative step ignores the schedule's lr") {
  // relative_step, scale_parameter off: rho_1 = min(1e-2, 1) = 0.01. Vector g with a
  // single nonzero entry: v = g^2 there, U = (1, 0, 0) has RMS 1/sqrt(3) (no clip).
  json cfg = optimizer_cfg("adafactor");
  cfg["optimizer"]["adafactor"]["relative_step"] = true;
  const ParamTable t = table_of({spec(0, 1, 3)});
  CpuDevice dev;
  auto opt = make_optimizer(cfg, t, dev, 0);
  std::vector<float> w = {1, 1, 1}, g = {3, 0, 0};
  opt->begin_step(1, 123.0f);
  opt->update(t.params[0], w.data(), nullptr, g.data());
  CHECK(w[0] == Approx(0.99));
  CHECK(w[1] == 1.0f);
}

TEST_CASE("Adafactor's factored moment is exact for a rank-one g^2") {
  // g^2 = outer(a, b): V_hat = g^2, U = sign(g), RMS 1, W1 = W0 - lr sign(g) (scale off).
  const double a[2] = {9.0, 0.04}, b[3] = {1.0, 16.0, 0.25};
  const ParamTable t = table_of({spec(0, 2, 3)});
  CpuDevice dev;
  auto opt = make_optimizer(optimizer_cfg("adafactor"), t, dev, 0);
  std::vector<float> w(6, 0.0f), g(6);
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 3; j++) g[i * 3 + j] = float(j == 1 ? -1 : 1) * std::sqrt(a[i] * b[j]);
  opt->begin_step(1, 0.01f);
  opt->update(t.params[0], w.data(), nullptr, g.data());
  for (int i = 0; i < 6; i++) CHECK(w[i] == Approx(i % 3 == 1 ? 0.01 : -0.01).epsilon(1e-6));
}

TEST_CASE("Adafactor minimizes a convex quadratic and its state round-trips") {
  json cfg = optimizer_cfg("adafactor");
  for (json beta1 : {json(nullptr), json(0.9)}) {
    cfg["optimizer"]["adafactor"]["beta1"] = beta1;
    const auto [first, last] = convex_descent(cfg, 300, 0.02);
    CHECK(last < 0.05 * first);
    CHECK(state_round_trips(cfg, 2, 2));
    CHECK_FALSE(state_round_trips(cfg, 2, 2, false));
  }
  cfg["optimizer"]["adafactor"]["warmup_init"] = true;
  CpuDevice dev;
  CHECK_THROWS_WITH(make_optimizer(cfg, tiny_table(), dev, 0),
                    Catch::Contains("optimizer.adafactor.warmup_init"));
}

TEST_CASE("Adafactor's grad_scale equals scaling the gradient first, bit for bit") {
  // The pipeline skips clip_scale for Adafactor on this promise.
  json cfg = optimizer_cfg("adafactor");
  cfg["optimizer"]["weight_decay"] = 0.1;
  CHECK(grad_scale_matches_prescaled(cfg));
  cfg["optimizer"]["adafactor"]["beta1"] = 0.9;
  cfg["optimizer"]["adafactor"]["scale_parameter"] = true;
  CHECK(grad_scale_matches_prescaled(cfg));
}

// Both configurations: every kernel that reads g (the two sweeps, the apply, the vectors).
TEST_CASE("Adafactor on the GPU applies grad_scale as the CPU reference does", "[gpu]") {
  json cfg = optimizer_cfg("adafactor");
  cfg["optimizer"]["weight_decay"] = 0.1;
  check_gpu_grad_scale(cfg);
  cfg["optimizer"]["adafactor"]["beta1"] = 0.9;
  cfg["optimizer"]["adafactor"]["scale_parameter"] = true;
  check_gpu_grad_scale(cfg);
}

TEST_CASE("Adafactor on the GPU matches the CPU reference", "[gpu]") {
  json cfg = optimizer_cfg("adafactor");  // HF defaults: no first moment, lr from schedule
  cfg["optimizer"]["weight_decay"] = 0.1;
  check_gpu_against_reference(cfg);
  cfg["optimizer"]["adafactor"]["beta1"] = 0.9;  // first moment of the lr-scaled update
  cfg["optimizer"]["adafactor"]["scale_parameter"] = true;
  check_gpu_against_reference(cfg);
  // relative_step (rho = min(1e-2, 1/sqrt(t))); warmup_init is left to the CPU tests: its
  // steps of ~1e-6 are below the fp32 resolution of the weights this test compares.
  cfg["optimizer"]["adafactor"]["relative_step"] = true;
  check_gpu_against_reference(cfg);
}

TEST_CASE("Adafactor's batched GPU update equals its update() per tensor, bit for bit", "[gpu]") {
  json cfg = optimizer_cfg("adafactor");
  cfg["optimizer"]["weight_decay"] = 0.1;
  CHECK(batched_matches_single<float>(cfg, false));
  cfg["optimizer"]["adafactor"]["beta1"] = 0.9;
  cfg["optimizer"]["adafactor"]["scale_parameter"] = true;
  check_batched_matches_single(cfg);
}
