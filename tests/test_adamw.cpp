#include <cmath>
#include <cstring>
#include <random>

#include "catch.hpp"
#include "optim_batch_check.hpp"
#include "optim_fixture.hpp"
#include "optim_gpu_check.hpp"

using namespace gpt2;
using namespace gpt2::test;

// Independent double-precision AdamW (spec 1.2; torch.optim.AdamW semantics).
static void adamw_oracle(std::vector<double>& w, const std::vector<double>& g, std::vector<double>& m,
                         std::vector<double>& v, int t, double lr, double b1, double b2, double eps,
                         double wd) {
  for (size_t i = 0; i < w.size(); i++) {
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    const double mhat = m[i] / (1 - std::pow(b1, t)), vhat = v[i] / (1 - std::pow(b2, t));
    w[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * w[i]);
  }
}

static void check_against_oracle(double wd, bool decay_vectors) {
  json cfg = optimizer_cfg("adamw");
  cfg["optimizer"]["weight_decay"] = wd;
  cfg["optimizer"]["decay_vectors"] = decay_vectors;
  const double b1 = 0.9, b2 = 0.95, eps = 1e-8, lr = 0.01;  // kDefaultConfig's betas/eps
  CpuDevice dev;
  auto opt = make_optimizer(cfg, tiny_table(), dev, 0);
  const TinyRun got = run_tiny(*opt, 3, lr);

  std::vector<double> wm = to_double(tiny_w_matrix());
  std::vector<double> wv = to_double(tiny_w_vector());
  std::vector<double> mm(6), vm(6), mv(3), vv(3);
  for (int t = 1; t <= 3; t++) {
    std::vector<float> gm = tiny_g_matrix(t), gv = tiny_g_vector(t);
    adamw_oracle(wm, to_double(gm), mm, vm, t, lr, b1, b2, eps, wd);
    adamw_oracle(wv, to_double(gv), mv, vv, t, lr, b1, b2, eps, decay_vectors ? wd : 0.0);
  }
  // fp32 state vs double oracle: ~1e-7 relative per op over three steps.
  for (int i = 0; i < 6; i++) CHECK(got.wm[i] == Approx(wm[i]).epsilon(2e-6));
  for (int i = 0; i < 3; i++) CHECK(got.wv[i] == Approx(wv[i]).epsilon(2e-6));
}

TEST_CASE("AdamW matches a double-precision re-derivation over three steps") {
  SECTION("no weight decay") { check_against_oracle(0.0, false); }
  SECTION("decay on matrices only (llm.c rule)") { check_against_oracle(0.1, false); }
  SECTION("decay on vectors too") { check_against_oracle(0.1, true); }
}

TEST_CASE("AdamW first step moves every weight by lr * sign(g) (bias correction)") {
  // At t = 1, m_hat = g and v_hat = g^2 exactly, so the step is lr * g / (|g| + eps).
  json cfg = optimizer_cfg("adamw");
  CpuDevice dev;
  auto opt = make_optimizer(cfg, tiny_table(), dev, 0);
  const TinyRun r = run_tiny(*opt, 1, 0.01);
  const std::vector<float> w0 = tiny_w_matrix(), g = tiny_g_matrix(1);
  for (int i = 0; i < 6; i++)
    CHECK(r.wm[i] == Approx(w0[i] - 0.01 * (g[i] > 0 ? 1 : -1)).epsilon(1e-6));
}

TEST_CASE("AdamW minimizes a convex quadratic and its state round-trips") {
  const json cfg = optimizer_cfg("adamw");
  const auto [first, last] = convex_descent(cfg, 200, 0.02);
  CHECK(last < 0.01 * first);
  CHECK(state_round_trips(cfg, 2, 2));
  CHECK_FALSE(state_round_trips(cfg, 2, 2, false));
}

TEST_CASE("AdamW's grad_scale equals scaling the gradient first, bit for bit") {
  // The pipeline skips clip_scale for AdamW on this promise.
  json cfg = optimizer_cfg("adamw");
  cfg["optimizer"]["weight_decay"] = 0.1;
  CHECK(grad_scale_matches_prescaled(cfg));
}

TEST_CASE("AdamW on the GPU matches the CPU reference", "[gpu]") {
  json cfg = optimizer_cfg("adamw");
  cfg["optimizer"]["weight_decay"] = 0.1;
  check_gpu_against_reference(cfg);
  CHECK_FALSE(gpu_state_round_trips(cfg, 2, 2, false));  // the round trip carries m and v
}

TEST_CASE("AdamW's batched GPU update equals its update() per tensor, bit for bit", "[gpu]") {
  json cfg = optimizer_cfg("adamw");
  cfg["optimizer"]["weight_decay"] = 0.1;
  check_batched_matches_single(cfg);
}

TEST_CASE("AdamW on the GPU applies grad_scale as the CPU reference does", "[gpu]") {
  json cfg = optimizer_cfg("adamw");
  cfg["optimizer"]["weight_decay"] = 0.1;
  check_gpu_grad_scale(cfg);
}
