#include <Eigen/Dense>
#include <cmath>
#include <cstring>

#include "catch.hpp"
#include "optim_fixture.hpp"
#include "optim_gpu_check.hpp"
#include "reference/optim/srsi.hpp"
#ifdef TRAIN_GPT2_CUDA
#include "cholesky_qr.cuh"
#endif

using namespace gpt2;
using namespace gpt2::optim;
using namespace gpt2::test;
using Eigen::MatrixXd;

// A nonnegative m x n matrix of exact rank r (sum of r outer products of positive vectors).
static std::vector<float> rank_r(int m, int n, int r, unsigned salt) {
  std::vector<float> a(size_t(m) * n, 0.0f);
  for (int q = 0; q < r; q++)
    for (int i = 0; i < m; i++)
      for (int j = 0; j < n; j++)
        a[i * n + j] += float((1.1 + std::sin(0.7 * i * (q + 1) + salt)) *
                              (1.1 + std::cos((0.9 + 0.4 * q) * j + salt)));
  return a;
}

static MatrixXd dense(const std::vector<float>& a, int m, int n) {
  MatrixXd A(m, n);
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) A(i, j) = a[i * n + j];
  return A;
}

TEST_CASE("S-RSI reconstructs an exact low-rank nonnegative matrix") {
  const int m = 40, n = 30;
  const std::vector<float> a = rank_r(m, n, 3, 1);
  const MatrixXd A = dense(a, m, n);
  for (int k : {3, 5}) {
    const LowRank f = srsi({a.data(), m, n}, k, 2, 2, 42);
    CHECK((A - f.Q * f.U.transpose()).norm() / A.norm() < 1e-6);
    CHECK((f.Q.transpose() * f.Q - MatrixXd::Identity(k, k)).norm() < 1e-10);
  }
}

TEST_CASE("S-RSI is near the Eckart-Young optimum and its error identity is exact") {
  const int m = 50, n = 35, k = 4;
  std::vector<float> a(size_t(m) * n);
  for (size_t i = 0; i < a.size(); i++) a[i] = float(std::fabs(gaussian(9, i)));
  const MatrixXd A = dense(a, m, n);
  const LowRank f = srsi({a.data(), m, n}, k, 5, 2, 7);
  const double err_sq = (A - f.Q * f.U.transpose()).squaredNorm();
  // ||A - Q U^T||^2 = ||A||^2 - ||U||^2 for orthonormal Q (spec 6.3).
  CHECK(err_sq == Approx(A.squaredNorm() - f.U.squaredNorm()).epsilon(1e-9));
  CHECK(f.lambda.sum() == Approx(f.U.squaredNorm()).epsilon(1e-12));
  // Optimal rank-k error from the SVD (the test's independent oracle).
  Eigen::JacobiSVD<MatrixXd> svd(A);
  const Eigen::VectorXd sv = svd.singularValues();
  const double best_sq = sv.tail(sv.size() - k).squaredNorm();
  CHECK(err_sq >= best_sq * (1 - 1e-9));
  CHECK(err_sq <= 1.2 * best_sq);  // l = 2, p = 5 is close to optimal on this spectrum
}

TEST_CASE("Rotating to singular order leaves Q U^T unchanged") {
  const int m = 12, n = 9, s = 5;
  Eigen::HouseholderQR<MatrixXd> qr(MatrixXd::NullaryExpr(m, s, [](Eigen::Index i, Eigen::Index j) {
    return gaussian(3, uint64_t(i * 100 + j));
  }));
  LowRank f;
  f.Q = qr.householderQ() * MatrixXd::Identity(m, s);
  f.U = MatrixXd::NullaryExpr(n, s, [](Eigen::Index i, Eigen::Index j) { return gaussian(4, uint64_t(i * 100 + j)); });
  const MatrixXd before = f.Q * f.U.transpose();
  rotate_to_singular_order(f, s);
  CHECK((f.Q * f.U.transpose() - before).norm() < 1e-6 * before.norm());
  const MatrixXd G = f.U.transpose() * f.U;
  for (int i = 0; i < s; i++) {
    CHECK(G(i, i) == Approx(f.lambda(i)).epsilon(1e-10));
    if (i > 0) CHECK(f.lambda(i) <= f.lambda(i - 1));
    for (int j = 0; j < i; j++) CHECK(std::fabs(G(i, j)) < 1e-9 * f.lambda(0));
  }
}

// The GPU's host solves read the Gram matrix's upper triangle only, as cuSOLVER does: the
// lower one holds garbage here. Oracles: R^T R = G, G v = lambda v, and Eigen's own
// eigenvalues of the dense symmetric matrix.
TEST_CASE("Host solves of a small Gram matrix: Cholesky R and the eigensystem") {
  const int s = 23;
  MatrixXd B = MatrixXd::NullaryExpr(40, s, [](Eigen::Index i, Eigen::Index j) {
    return gaussian(5, uint64_t(i * 100 + j)) * std::pow(0.8, double(j));
  });
  const MatrixXd G = B.transpose() * B;
  std::vector<float> g(size_t(s) * s);
  for (int c = 0; c < s; c++)
    for (int r = 0; r < s; r++) g[r + size_t(c) * s] = r <= c ? float(G(r, c)) : -1e30f;
  MatrixXd Gf(s, s);  // what the host sees: the fp32 upper triangle, mirrored
  for (int c = 0; c < s; c++)
    for (int r = 0; r <= c; r++) Gf(r, c) = Gf(c, r) = g[r + size_t(c) * s];
  std::vector<float> R(size_t(s) * s);
  REQUIRE(cholesky_upper(g.data(), s, R.data()));
  const MatrixXd Rd = Eigen::Map<const Eigen::MatrixXf>(R.data(), s, s).cast<double>();
  CHECK(Rd.isUpperTriangular(0.0));
  CHECK((Rd.transpose() * Rd - Gf).norm() < 1e-6 * Gf.norm());
  std::vector<double> values(s), vectors(size_t(s) * s);
  symmetric_eigen(g.data(), s, values.data(), vectors.data());
  const Eigen::Map<const MatrixXd> V(vectors.data(), s, s);
  const Eigen::VectorXd want = Eigen::SelfAdjointEigenSolver<MatrixXd>(Gf).eigenvalues();
  for (int j = 0; j < s; j++) {
    CHECK(values[j] == Approx(want(j)).margin(1e-12 * want(s - 1)));
    if (j > 0) CHECK(values[j] >= values[j - 1]);
    CHECK((Gf * V.col(j) - values[j] * V.col(j)).norm() < 1e-9 * want(s - 1));
  }
  CHECK((V.transpose() * V - MatrixXd::Identity(s, s)).norm() < 1e-12);
  g[s + 1] = -1.f;  // (1, 1): no longer positive definite
  CHECK_FALSE(cholesky_upper(g.data(), s, R.data()));
}

TEST_CASE("AS-RSI grows the rank while the error is above xi_thr, up to k_max") {
  const int m = 30, n = 24;
  const std::vector<float> a = rank_r(m, n, 6, 2);
  const DenseView A{a.data(), m, n};
  RankRule rule{1, 10, 1, 3, 2, 1e-4};
  AsrsiResult r = as_rsi(A, 1, rule, false, 5);
  CHECK(r.k == 6);  // the first rank whose error drops below 1e-4
  CHECK(r.xi < 1e-4);
  rule.k_max = 4;
  r = as_rsi(A, 1, rule, false, 5);
  CHECK(r.k == 4);
  CHECK(r.xi > 1e-4);
  rule.k_max = 10, rule.delta_k = 4;  // 1 -> 5 -> 9: steps of delta_k
  CHECK(as_rsi(A, 1, rule, false, 5).k == 9);
}

TEST_CASE("AS-RSI shrinks the rank when allowed, never below k_min") {
  const int m = 30, n = 24;
  const std::vector<float> a6 = rank_r(m, n, 6, 2), a1 = rank_r(m, n, 1, 3);
  const RankRule rule{2, 10, 1, 3, 2, 1e-4};
  CHECK(as_rsi({a6.data(), m, n}, 10, rule, true, 5).k == 6);
  CHECK(as_rsi({a6.data(), m, n}, 10, rule, false, 5).k == 10);
  const AsrsiResult r = as_rsi({a1.data(), m, n}, 10, rule, true, 5);
  CHECK(r.k == 2);
  CHECK(r.f.Q.cols() == 2);
  CHECK(r.xi < 1e-6);
}

// Dense "Adam without bias correction + RMS update clipping + momentum" (spec section 8
// item 3), double precision: Adapprox's full-rank limit.
struct DenseAdapprox {
  std::vector<double> v, m1;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  void step(std::vector<double>& w, const std::vector<double>& g, double lr, double wd) {
    v.resize(w.size()), m1.resize(w.size());
    std::vector<double> D(w.size());
    double ss = 0;
    for (size_t i = 0; i < w.size(); i++) {
      v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
      D[i] = g[i] / (std::sqrt(v[i]) + eps);
      ss += D[i] * D[i];
    }
    const double clip = std::max(1.0, std::sqrt(ss / w.size()));
    for (size_t i = 0; i < w.size(); i++) {
      m1[i] = beta1 * m1[i] + (1 - beta1) * D[i] / clip;
      w[i] -= lr * ((beta1 > 0 ? m1[i] : D[i] / clip) + wd * w[i]);
    }
  }
};

static json full_rank_cfg(const char* denominator, double beta1) {
  json cfg = optimizer_cfg("adapprox");
  auto& a = cfg["optimizer"]["adapprox"];
  a["k0"] = 2, a["k_min"] = 2, a["k_max"] = 2;  // min(2, 3): the full rank of the 2x3 matrix
  a["denominator"] = denominator;
  a["beta1"] = beta1;
  cfg["optimizer"]["weight_decay"] = 0.1;
  return cfg;
}

TEST_CASE("Adapprox at full rank equals dense Adam without bias correction") {
  for (const char* den : {"rebuilt", "refactored"})
    for (double beta1 : {0.9, 0.0}) {
      INFO(den << " beta1 " << beta1);
      CpuDevice dev;
      auto opt = make_optimizer(full_rank_cfg(den, beta1), tiny_table(), dev, 11);
      const TinyRun got = run_tiny(*opt, 3, 0.01);
      std::vector<double> wm = to_double(tiny_w_matrix()), wv = to_double(tiny_w_vector());
      DenseAdapprox om, ov;
      om.beta1 = ov.beta1 = beta1;
      for (int t = 1; t <= 3; t++) {
        om.step(wm, to_double(tiny_g_matrix(t)), 0.01, 0.1);
        ov.step(wv, to_double(tiny_g_vector(t)), 0.01, 0.0);
      }
      // V passes through fp32 factors Q, U each step: ~1e-6 relative in D.
      for (int i = 0; i < 6; i++) CHECK(got.wm[i] == Approx(wm[i]).epsilon(1e-5));
      for (int i = 0; i < 3; i++) CHECK(got.wv[i] == Approx(wv[i]).epsilon(1e-5));
    }
}

static const float* blob(Optimizer<float>& o, const std::string& name) {
  for (const StateBlob& b : o.state())
    if (b.name == name) return static_cast<const float*>(b.data);
  return nullptr;
}

// Runs `steps` steps of Adapprox on one 16x12 matrix with full-rank gradients.
static std::vector<float> run_matrix(Optimizer<float>& o, const ParamTable& t, int steps) {
  std::vector<float> w(16 * 12, 0.1f);
  for (int s = 1; s <= steps; s++) {
    std::vector<float> g(w.size());
    for (size_t i = 0; i < g.size(); i++) g[i] = float(gaussian(100 + s, i));
    o.begin_step(s, 0.01f);
    o.update(t.params[0], w.data(), nullptr, g.data());
  }
  return w;
}

TEST_CASE("Adapprox's step stats: mean and largest rank of its matrices, S-RSIs this step") {
  const ParamTable t = table_of({spec(0, 37, 129), spec(1, 200, 96), spec(2, 1, 1001)});
  json cfg = optimizer_cfg("adapprox");
  // Growth by 1 from rank 1 against an unreachable error bound: k_max S-RSIs per matrix
  // (k_max 9 and 24), and no shrinking (every dropped column raises the error).
  cfg["optimizer"]["adapprox"]["delta_k"] = 1;
  cfg["optimizer"]["adapprox"]["xi_thr"] = 1e-12;
  CpuDevice dev;
  auto opt = make_optimizer(cfg, t, dev, 3);
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  opt->begin_step(1, 0.01f);
  for (const ParamSpec& p : t.params) {
    std::vector<float> w(p.numel), g(p.numel);
    for (size_t i = 0; i < p.numel; i++) w[i] = u(rng), g[i] = u(rng);
    opt->update(p, w.data(), nullptr, g.data());
  }
  const auto stats = opt->step_stats();
  REQUIRE(stats.size() == 3);
  CHECK(stats[0].first == "adapprox_rank");
  CHECK(stats[0].second == Approx((9 + 24) / 2.0));
  CHECK(stats[1].first == "adapprox_srsi");
  CHECK(stats[1].second == 9 + 24);
  CHECK(stats[2].first == "adapprox_rank_max");
  CHECK(stats[2].second == 24);
  opt->begin_step(2, 0.01f);  // a new step starts the count again
  CHECK(opt->step_stats()[1].second == 0);
  CHECK(make_optimizer(optimizer_cfg("adamw"), t, dev, 3)->step_stats().empty());
}

TEST_CASE("Adapprox adapts the rank inside the optimizer and is deterministic") {
  const ParamTable t = table_of({spec(0, 16, 12)});
  json cfg = optimizer_cfg("adapprox");
  cfg["optimizer"]["adapprox"]["xi_thr"] = 1e-3;  // unreachable below full rank
  CpuDevice dev;
  auto a = make_optimizer(cfg, t, dev, 5), b = make_optimizer(cfg, t, dev, 5);
  CHECK(blob(*a, "adapprox.rank_err.matrix0")[0] == 1.0f);  // k0
  const std::vector<float> wa = run_matrix(*a, t, 3), wb = run_matrix(*b, t, 3);
  CHECK(blob(*a, "adapprox.rank_err.matrix0")[0] == 3.0f);  // k_max = floor(12 / 4)
  CHECK(blob(*a, "adapprox.rank_err.matrix0")[1] > 0.0f);  // smoothed error kept
  CHECK(std::memcmp(wa.data(), wb.data(), wa.size() * 4) == 0);
  for (size_t i = 0; i < a->state().size(); i++)
    CHECK(std::memcmp(a->state()[i].data, b->state()[i].data, a->state()[i].bytes) == 0);
  auto c = make_optimizer(cfg, t, dev, 6);  // another seed, another sketch
  run_matrix(*c, t, 3);
  CHECK(std::memcmp(blob(*a, "adapprox.Q.matrix0"), blob(*c, "adapprox.Q.matrix0"), 16 * 3 * 4) != 0);
}

TEST_CASE("Adapprox with beta1 = 0 allocates no first moment") {
  json cfg = optimizer_cfg("adapprox");
  cfg["optimizer"]["adapprox"]["beta1"] = 0.0;
  CpuDevice dev;
  auto opt = make_optimizer(cfg, tiny_table(), dev, 0);
  for (const StateBlob& b : opt->state()) CHECK(b.name.find("m1") == std::string::npos);
  // Q, U at k_max = 1 (floor(2/4) -> at least 1): (2 + 3) floats, rank/error 2, vector v 3.
  CHECK(dev.ledger().current[int(MemCategory::optimizer_state)] == (5 + 2 + 3) * 4);
}

TEST_CASE("Adapprox cos_guidance scales the step by (1 + cos(D, m1)) / 2") {
  // Vector path (exact v): step 1 has m1 = 0.1 D so cos = 1 and the steps agree; at step 2
  // the test derives D2, m1 and c itself and expects dW_on = (1 + c) / 2 * dW_off.
  const ParamTable t = table_of({spec(0, 1, 3)});
  json off = optimizer_cfg("adapprox"), on = off;
  on["optimizer"]["adapprox"]["cos_guidance"] = true;
  CpuDevice dev;
  auto a = make_optimizer(off, t, dev, 0), b = make_optimizer(on, t, dev, 0);
  const std::vector<std::vector<double>> g = {{1.0, -2.0, 0.5}, {-1.0, 2.0, 0.0}};
  std::vector<float> wa(3, 0.0f), wb(3, 0.0f), wa1, wb1;
  for (int s = 0; s < 2; s++) {
    std::vector<float> ga(g[s].begin(), g[s].end()), gb = ga;
    a->begin_step(s + 1, 0.01f), b->begin_step(s + 1, 0.01f);
    a->update(t.params[0], wa.data(), nullptr, ga.data());
    b->update(t.params[0], wb.data(), nullptr, gb.data());
    if (s == 0) wa1 = wa, wb1 = wb;
  }
  for (int i = 0; i < 3; i++) CHECK(wb1[i] == Approx(wa1[i]).epsilon(1e-6));
  std::vector<double> v(3), m1(3), D(3);
  for (int s = 0; s < 2; s++) {
    double ss = 0;
    for (int i = 0; i < 3; i++) {
      v[i] = 0.999 * v[i] + 0.001 * g[s][i] * g[s][i];
      D[i] = g[s][i] / (std::sqrt(v[i]) + 1e-8);
      ss += D[i] * D[i];
    }
    const double clip = std::max(1.0, std::sqrt(ss / 3));
    for (int i = 0; i < 3; i++) D[i] /= clip, m1[i] = 0.9 * m1[i] + 0.1 * D[i];
  }
  double dot = 0, nd = 0, nm = 0;
  for (int i = 0; i < 3; i++) dot += D[i] * m1[i], nd += D[i] * D[i], nm += m1[i] * m1[i];
  const double c = dot / std::sqrt(nd * nm);
  REQUIRE(c < 0.6);  // the gradients were chosen to disagree
  for (int i = 0; i < 3; i++)
    CHECK(wb[i] - wb1[i] == Approx((1 + c) / 2 * (wa[i] - wa1[i])).epsilon(1e-5));
  json bad = on;
  bad["optimizer"]["adapprox"]["beta1"] = 0.0;
  CHECK_THROWS_WITH(make_optimizer(bad, t, dev, 0), Catch::Contains("cos_guidance"));
}

TEST_CASE("Adapprox minimizes a convex quadratic and its state round-trips") {
  const json cfg = optimizer_cfg("adapprox");
  const auto [first, last] = convex_descent(cfg, 300, 0.01);
  CHECK(last < 0.05 * first);
  CHECK(state_round_trips(cfg, 2, 2));
  CHECK_FALSE(state_round_trips(cfg, 2, 2, false));
}

// [gpu] Adapprox on the GPU against the reference, on shapes small enough for the CPU's
// double S-RSI (37 x 129: k_max 9, delta_k 1; 200 x 96: k_max 24, delta_k 2), so the
// rank loop runs many S-RSI calls per step. Tolerance 1e-4 (spec 8): the GPU runs the
// thin iterates (sketch, QR, Gram) in fp32 where the reference uses doubles, and the
// eigen-decomposition of an fp32 Gram matrix; ~1e-6 on V_t becomes ~1e-5 on the
// factors. Q and U are skipped: eigenvector signs are arbitrary per column (Q U^T and
// the weights are not). The ranks chosen must be the same, step for step. `scaled`: both
// take the gradient with a grad_scale that changes every step, through update_many.
static void check_adapprox_gpu(const json& cfg, const ParamTable& t, bool scaled = false) {
  for (int last : {1, 2, 10}) {
    const auto f = compare_with_reference<float>(cfg, t, false, {last}, 0, 0.05f, 11, scaled);
    CHECK(f.weights <= 1e-4);
    CHECK(f.same_blobs);
    CHECK(f.state_bytes_match);
    for (const ParamSpec& p : t.params) {
      if (!p.is_matrix()) continue;
      const std::string name = "adapprox.rank_err.matrix" + std::to_string(p.id);
      CHECK(f.gpu_state.at(name)[0] == f.cpu_state.at(name)[0]);  // rank k
      // xi = sqrt(1 - sum(lambda) / ||V||^2) cancels: at xi ~ 0.09 an fp32-level error
      // in sum(lambda) is amplified ~1 / (2 xi^2) ~ 60 times (measured 3e-4 on an H200).
      CHECK(f.gpu_state.at(name)[1] == Approx(f.cpu_state.at(name)[1]).epsilon(2e-3));  // xi_bar
    }
    double err = 0;
    for (const auto& [name, e] : f.state)
      if (name.find(".Q.") == std::string::npos && name.find(".U.") == std::string::npos &&
          name.find("rank_err") == std::string::npos)
        err = std::max(err, e);
    CHECK(err <= 1e-4);
  }
  const auto b = compare_with_reference<bf16>(cfg, t, true, {10}, 0, 0.05f, 11, scaled);
  CHECK(b.weights <= 1e-4);
  CHECK(b.not_rounded == 0);
  if (scaled) return;
  CHECK(compare_with_reference<float>(cfg, t, false, {4}, 2).weights <= 1e-4);
  CHECK(gpu_state_round_trips(cfg, 2, 2));
  CHECK_FALSE(gpu_state_round_trips(cfg, 2, 2, false));
}

// Two matrices leave no side lanes (everything on the calling thread, deferred S-RSIs);
// a third makes them (split: V_t kept, the factorizations on the lanes' threads).
TEST_CASE("Adapprox on the GPU matches the CPU reference and its rank decisions", "[gpu]") {
  const ParamTable t = table_of({spec(0, 37, 129), spec(1, 200, 96), spec(2, 1, 1001)});
  const ParamTable split =
      table_of({spec(0, 37, 129), spec(1, 200, 96), spec(2, 1, 1001), spec(3, 64, 50)});
  json cfg = optimizer_cfg("adapprox");
  cfg["optimizer"]["weight_decay"] = 0.1;
  check_adapprox_gpu(cfg, t);
  check_adapprox_gpu(cfg, split);
  cfg["optimizer"]["adapprox"]["cos_guidance"] = true;
  cfg["optimizer"]["adapprox"]["denominator"] = "refactored";
  cfg["optimizer"]["adapprox"]["xi_thr"] = 0.3;  // low enough ranks to shrink as well
  check_adapprox_gpu(cfg, t);
  check_adapprox_gpu(cfg, split);
  // Over 131,072 elements a matrix's sums take more than half a lane's reduction
  // partials, which cos_guidance's two post-clip sums once overran by sharing a launch.
  check_adapprox_gpu(cfg, table_of({spec(0, 400, 401), spec(1, 1, 777)}));
}

TEST_CASE("Adapprox's grad_scale equals scaling the gradient first, bit for bit") {
  // The pipeline skips clip_scale for Adapprox on this promise.
  json cfg = optimizer_cfg("adapprox");
  cfg["optimizer"]["weight_decay"] = 0.1;
  CHECK(grad_scale_matches_prescaled(cfg));
  cfg["optimizer"]["adapprox"]["denominator"] = "refactored";
  CHECK(grad_scale_matches_prescaled(cfg));
}

// Through update_many, with and without side lanes; the "refactored" denominator forms
// D in a kernel of its own (matrix_direction).
TEST_CASE("Adapprox on the GPU applies grad_scale as the CPU reference does", "[gpu]") {
  for (const ParamTable& t :
       {table_of({spec(0, 37, 129), spec(1, 200, 96), spec(2, 1, 1001)}),
        table_of({spec(0, 37, 129), spec(1, 200, 96), spec(2, 1, 1001), spec(3, 64, 50)})}) {
    json cfg = optimizer_cfg("adapprox");
    cfg["optimizer"]["weight_decay"] = 0.1;
    check_adapprox_gpu(cfg, t, true);
    cfg["optimizer"]["adapprox"]["denominator"] = "refactored";
    check_adapprox_gpu(cfg, t, true);
  }
}

// update_many builds every matrix's V_t and updates the weights on the update stream,
// and factorizes on the lanes (host threads, each with a stream, thin buffers and
// handles of its own, several S-RSIs at once; lane 0 the largest), returning before
// they are done: the weights and every state blob must equal per-tensor update() calls
// (everything on the calling thread) bit for bit, through the steps where ranks grow
// (the rank loop's host syncs on every lane) and then sit at k_max, and for the
// "refactored" denominator, whose finish waits for the lanes. The vectors go through
// update_many in one batched launch of each kernel. The fused pipeline's calls, a
// group at a time: the steps also go in two calls, the second before the first's
// factorizations are done.
TEST_CASE("Adapprox update_many on side lanes equals update() bit for bit", "[gpu]") {
  std::vector<ParamSpec> specs = {spec(0, 300, 410)};  // the largest: the update stream
  for (int i = 1; i <= 7; i++) specs.push_back(spec(i, i % 2 ? 96 : 200, i % 2 ? 200 : 96));
  for (int i = 8; i <= 10; i++)
    specs.push_back(spec(i, 1, 333 + 600 * (i - 8)));  // one batch of vectors
  // As many elements as the largest, another shape: it goes to the side lanes (sized for
  // it), the largest does not (a side lane's Om is too short for its 410 columns).
  specs.push_back(spec(11, 410, 300));
  const ParamTable t = table_of(specs);
  for (const char* denominator : {"rebuilt", "refactored"}) {
    INFO(denominator);
    json cfg = optimizer_cfg("adapprox");
    cfg["optimizer"]["weight_decay"] = 0.1;
    cfg["optimizer"]["adapprox"]["denominator"] = denominator;
    auto dev = make_cuda_device(0);
    auto one = make_cuda_optimizer<float>(cfg, t, *dev, 3), many = make_cuda_optimizer<float>(cfg, t, *dev, 3);
    auto over = make_cuda_optimizer<float>(cfg, t, *dev, 3);
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    struct Buffers { DeviceBuffer<float> w1, wm, wo, g1, gm, go; };
    std::vector<Buffers> b;
    for (const ParamSpec& p : t.params) {
      std::vector<float> w(p.numel);
      for (float& x : w) x = u(rng);
      auto buf = [&](MemCategory c) { return DeviceBuffer<float>(*dev, p.numel, c, "w or g"); };
      Buffers x{buf(MemCategory::params), buf(MemCategory::params), buf(MemCategory::params),
                buf(MemCategory::grads),  buf(MemCategory::grads),  buf(MemCategory::grads)};
      for (float* to : {x.w1.get(), x.wm.get(), x.wo.get()}) dev->to_device(to, w.data(), p.numel * 4);
      b.push_back(std::move(x));
    }
    for (int step = 1; step <= 5; step++) {
      one->begin_step(step, 0.01f), many->begin_step(step, 0.01f), over->begin_step(step, 0.01f);
      std::vector<TensorUpdate<float>> us, first, second;
      for (const ParamSpec& p : t.params) {
        std::vector<float> g(p.numel);
        for (float& x : g) x = u(rng);
        dev->to_device(b[p.id].g1.get(), g.data(), p.numel * 4);
        dev->to_device(b[p.id].gm.get(), g.data(), p.numel * 4);
        dev->to_device(b[p.id].go.get(), g.data(), p.numel * 4);
        one->update(p, b[p.id].w1.get(), nullptr, b[p.id].g1.get());
        us.push_back({&t.params[p.id], b[p.id].wm.get(), nullptr, b[p.id].gm.get()});
        (p.id % 2 ? first : second).push_back({&t.params[p.id], b[p.id].wo.get(), nullptr, b[p.id].go.get()});
      }
      many->update_many(us);
      over->update_many(first);
      over->update_many(second);
      for (const ParamSpec& p : t.params) {
        std::vector<float> w1(p.numel), wm(p.numel), wo(p.numel);
        dev->to_host(w1.data(), b[p.id].w1.get(), p.numel * 4);
        dev->to_host(wm.data(), b[p.id].wm.get(), p.numel * 4);
        dev->to_host(wo.data(), b[p.id].wo.get(), p.numel * 4);
        INFO("step " << step << ", " << p.name);
        CHECK(w1 == wm);
        CHECK(w1 == wo);
      }
    }
    const std::vector<StateBlob> s1 = one->state(), sm = many->state(), so = over->state();
    REQUIRE(s1.size() == sm.size());
    REQUIRE(s1.size() == so.size());
    for (size_t i = 0; i < s1.size(); i++) {
      INFO(s1[i].name);
      std::vector<char> a(s1[i].bytes), c(sm[i].bytes), o(so[i].bytes);
      dev->to_host(a.data(), s1[i].data, a.size());
      dev->to_host(c.data(), sm[i].data, c.size());
      dev->to_host(o.data(), so[i].data, o.size());
      CHECK(a == c);
      CHECK(a == o);
    }
    CHECK(one->step_stats() == many->step_stats());  // S-RSIs counted on every lane
    CHECK(one->step_stats() == over->step_stats());
    // The ranks grew to k_max (the rank loop ran on every lane).
    std::vector<float> rank_err(2);
    for (const StateBlob& s : s1)
      if (s.name == "adapprox.rank_err.matrix1") dev->to_host(rank_err.data(), s.data, 8);
    CHECK(rank_err[0] == 24);
  }
}

#ifdef TRAIN_GPT2_CUDA
// CholeskyQR's R on the GPU (the Gram matrix summed in double, one block) against
// cholesky_upper on the same Gram matrix: in shared memory (s = 23) and in its global
// scratch (s = 80), columns of falling norm as the power iteration leaves them; a zero
// column fails the Cholesky (R = I, flagged) unless the shift lifts it. At s <= kSolveMax
// the row solve Y R^-1 against Eigen's triangular solve with the same R, and the solve
// fused with the next pass's R against the two launches. The Gram matrix alone
// (gram_matrix) against Eigen's in double.
TEST_CASE("CholeskyQR's R on the GPU matches cholesky_upper", "[gpu]") {
  auto dev = make_cuda_device(0);
  for (int s : {23, 80}) {
    INFO("s = " << s);
    const int m = 3001;
    std::vector<float> y(size_t(m) * s);
    for (size_t i = 0; i < y.size(); i++)
      y[i] = float(gaussian(7, i) * std::pow(0.8, double(i / m)));
    MatrixXd G = Eigen::Map<const Eigen::MatrixXf>(y.data(), m, s).cast<double>();
    G = G.transpose() * G;
    std::vector<float> g(size_t(s) * s), want(size_t(s) * s), got(size_t(s) * s);
    for (int c = 0; c < s; c++)
      for (int r = 0; r < s; r++) g[r + size_t(c) * s] = float(G(r, c));
    REQUIRE(cholesky_upper(g.data(), s, want.data()));
    DeviceBuffer<float> Y(*dev, y.size(), MemCategory::workspace, "Y"),
        R(*dev, g.size(), MemCategory::workspace, "R");
    DeviceBuffer<double> parts(*dev, cuda::cholesky_qr_parts(s), MemCategory::workspace, "parts"),
        scratch(*dev, g.size(), MemCategory::workspace, "scratch");
    DeviceBuffer<double> failed(*dev, 1, MemCategory::workspace, "failed");
    DeviceBuffer<unsigned> ticket(*dev, 1, MemCategory::workspace, "ticket");
    dev->zero(ticket.get(), ticket.bytes());
    auto factor = [&](double shift) {
      double zero = 0, flag = 0;
      dev->to_device(Y.get(), y.data(), y.size() * 4);
      dev->to_device(failed.get(), &zero, 8);
      cuda::cholesky_qr_r(Y.get(), m, s, shift, R.get(), parts.get(), scratch.get(), failed.get(),
                          ticket.get());
      dev->to_host(got.data(), R.get(), got.size() * 4);
      dev->to_host(&flag, failed.get(), 8);
      return flag;
    };
    CHECK(factor(0) == 0);
    double err = 0;
    for (size_t i = 0; i < got.size(); i++) err = std::max(err, double(std::abs(got[i] - want[i])));
    CHECK(err <= 1e-5 * std::abs(want[0]));
    for (int c = 0; c < s; c++)
      for (int r = c + 1; r < s; r++) CHECK(got[r + size_t(c) * s] == 0.f);
    if (s <= cuda::kSolveMax) {
      // The oracle in double from the same fp32 R; fp32 forward substitution errs by up
      // to ~s u cond(R) (~2e-4 here, columns falling 0.8 a column), typically far less.
      const MatrixXd Rd = Eigen::Map<const Eigen::MatrixXf>(got.data(), s, s).cast<double>();
      const MatrixXd want_q = Rd.triangularView<Eigen::Upper>().solve<Eigen::OnTheRight>(
          Eigen::Map<const Eigen::MatrixXf>(y.data(), m, s).cast<double>());
      cuda::solve_rows_upper(Y.get(), m, s, R.get());
      std::vector<float> q(y.size());
      dev->to_host(q.data(), Y.get(), q.size() * 4);
      const MatrixXd got_q = Eigen::Map<const Eigen::MatrixXf>(q.data(), m, s).cast<double>();
      CHECK((got_q - want_q).cwiseAbs().maxCoeff() <= 1e-4 * want_q.cwiseAbs().maxCoeff());
      // R was this Y's: its columns come out orthonormal
      CHECK((got_q.transpose() * got_q - MatrixXd::Identity(s, s)).cwiseAbs().maxCoeff() < 1e-3);
    } else {
      CHECK_THROWS(cuda::solve_rows_upper(Y.get(), m, s, R.get()));
    }
    {  // G = Y^T Y against Eigen's in double, and the tail after it
      const double tail[2] = {1.5, -2.25};
      DeviceBuffer<double> tail_d(*dev, 2, MemCategory::workspace, "tail");
      DeviceBuffer<float> Gd(*dev, cuda::gram_floats(s), MemCategory::workspace, "G");
      dev->to_device(Y.get(), y.data(), y.size() * 4);
      dev->to_device(tail_d.get(), tail, sizeof tail);
      cuda::gram_matrix(Y.get(), m, s, Gd.get(), tail_d.get(), parts.get(), scratch.get(),
                        ticket.get());
      std::vector<float> gram(cuda::gram_floats(s));
      dev->to_host(gram.data(), Gd.get(), gram.size() * 4);
      double err = 0;
      for (int c = 0; c < s; c++)
        for (int r = 0; r < s; r++) {
          err = std::max(err, std::abs(gram[r + size_t(c) * s] - G(r, c)));
          CHECK(gram[r + size_t(c) * s] == gram[c + size_t(r) * s]);
        }
      CHECK(err <= 1e-6 * G.cwiseAbs().maxCoeff());  // fp32 rounding of double sums
      double got_tail[2];
      std::memcpy(got_tail, gram.data() + cuda::gram_tail(s), sizeof got_tail);
      CHECK(got_tail[0] == tail[0]);
      CHECK(got_tail[1] == tail[1]);
    }
    if (s <= cuda::kSolveMax) {
      // The fused launch against its two parts: Y R^-1 and the next pass's R, same bits.
      // factor(0) loads Y afresh and leaves the first pass's R in R (and got).
      std::vector<float> y2(y.size()), r2(got.size()), y2_fused(y.size()), r2_fused(got.size());
      CHECK(factor(0) == 0);
      cuda::solve_rows_upper(Y.get(), m, s, R.get());
      cuda::cholesky_qr_r(Y.get(), m, s, 0, R.get(), parts.get(), scratch.get(), failed.get(),
                          ticket.get());
      dev->to_host(y2.data(), Y.get(), y2.size() * 4);
      dev->to_host(r2.data(), R.get(), r2.size() * 4);
      CHECK(factor(0) == 0);
      cuda::solve_cholesky_qr_r(Y.get(), m, s, 0, R.get(), parts.get(), scratch.get(), failed.get(),
                                ticket.get());
      dev->to_host(y2_fused.data(), Y.get(), y2.size() * 4);
      dev->to_host(r2_fused.data(), R.get(), r2.size() * 4);
      CHECK(y2_fused == y2);
      CHECK(r2_fused == r2);
      CHECK(r2 != got);  // the second pass's R, not the first's
    } else {
      CHECK_THROWS(cuda::solve_cholesky_qr_r(Y.get(), m, s, 0, R.get(), parts.get(), scratch.get(),
                                             failed.get(), ticket.get()));
    }
    for (int i = 0; i < m; i++) y[i + size_t(m) * (s / 2)] = 0.f;  // a zero column
    CHECK(factor(0) == 1);
    for (size_t i = 0; i < got.size(); i++) CHECK(got[i] == (i % (size_t(s) + 1) == 0 ? 1.f : 0.f));
    CHECK(factor(1e-12) == 0);
  }
}
#endif
