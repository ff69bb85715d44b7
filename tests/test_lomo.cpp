#include "catch.hpp"
#include "optim_fixture.hpp"

using namespace gpt2;
using namespace gpt2::test;

TEST_CASE("LOMO is SGD with decoupled decay on matrices only") {
  // Hand-derived, one step, lr = 0.1, wd = 0.5: W <- W (1 - lr wd) - lr g.
  // matrix: w0 = 0.5, g = 0.2 - 0.02 = 0.18 -> 0.5 * 0.95 - 0.018 = 0.457
  // vector: w0 = 0.4, g = 0.3 - 0.1 = 0.2 (no decay) -> 0.4 - 0.02 = 0.38
  json cfg = optimizer_cfg("lomo");
  cfg["optimizer"]["weight_decay"] = 0.5;
  CpuDevice dev;
  auto opt = make_optimizer(cfg, tiny_table(), dev, 0);
  const TinyRun r = run_tiny(*opt, 1, 0.1);
  CHECK(r.wm[0] == Approx(0.457).epsilon(1e-6));
  CHECK(r.wv[0] == Approx(0.38).epsilon(1e-6));
  // Three steps against a double re-derivation, vectors decayed too.
  cfg["optimizer"]["decay_vectors"] = true;
  auto opt3 = make_optimizer(cfg, tiny_table(), dev, 0);
  const TinyRun r3 = run_tiny(*opt3, 3, 0.1);
  std::vector<double> wm = to_double(tiny_w_matrix());
  std::vector<double> wv = to_double(tiny_w_vector());
  for (int t = 1; t <= 3; t++) {
    for (int i = 0; i < 6; i++) wm[i] = wm[i] * 0.95 - 0.1 * tiny_g_matrix(t)[i];
    for (int i = 0; i < 3; i++) wv[i] = wv[i] * 0.95 - 0.1 * tiny_g_vector(t)[i];
  }
  for (int i = 0; i < 6; i++) CHECK(r3.wm[i] == Approx(wm[i]).epsilon(1e-6));
  for (int i = 0; i < 3; i++) CHECK(r3.wv[i] == Approx(wv[i]).epsilon(1e-6));
}

TEST_CASE("LOMO minimizes a convex quadratic and keeps no state") {
  const json cfg = optimizer_cfg("lomo");
  const auto [first, last] = convex_descent(cfg, 200, 0.3);
  CHECK(last < 0.01 * first);
  CpuDevice dev;
  auto opt = make_optimizer(cfg, tiny_table(), dev, 0);
  CHECK(opt->state().empty());
  CHECK(dev.ledger().current[int(MemCategory::optimizer_state)] == 0);
  CHECK(state_round_trips(cfg, 2, 2));
}
