// Fused softmax + cross-entropy: worked values, uniform logits give ln(V), padded
// columns neither win nor get gradient, finite-difference dlogits, bad targets, CpuOps
// against the double reference and thread-count independence.
#include <omp.h>

#include <cmath>
#include <random>

#include "catch.hpp"
#include "error.hpp"
#include "gpu_check.hpp"
#include "op_check.hpp"
#include "reference/cpu_ops.hpp"
#include "reference/ops_ref.hpp"

using namespace gpt2;
using namespace gpt2::test;

TEST_CASE("classifier of logits [1, 2, 3] by hand") {
  // loss = ln(e + e^2 + e^3) - 3; softmax worked out in Python.
  double logits[] = {1, 2, 3, 0};  // V = 3, Vp = 4
  const int target = 2;
  double loss;
  ref::classifier(logits, &loss, &target, 1, 3, 4, 0.5);
  CHECK(loss == Approx(0.40760596444438013).epsilon(1e-14));
  CHECK(logits[0] == Approx(0.5 * 0.09003057317038046).epsilon(1e-14));
  CHECK(logits[1] == Approx(0.5 * 0.24472847105479767).epsilon(1e-14));
  CHECK(logits[2] == Approx(0.5 * (0.6652409557748219 - 1)).epsilon(1e-14));
  CHECK(logits[3] == 0);
}

TEST_CASE("classifier: uniform logits cost ln(V); padded columns never win") {
  const int N = 3, V = 50257, Vp = 50304;
  std::vector<double> logits(size_t(N) * Vp, 0.25);
  for (int i = 0; i < N; i++)
    for (int j = V; j < Vp; j++) logits[size_t(i) * Vp + j] = 1e4;  // would dominate
  const int targets[] = {0, 17, V - 1};
  std::vector<double> losses(N);
  ref::classifier(logits.data(), losses.data(), targets, N, V, Vp, 1.0 / N);
  for (int i = 0; i < N; i++) {
    CHECK(losses[i] == Approx(std::log(double(V))).epsilon(1e-12));
    for (int j = V; j < Vp; j++) REQUIRE(logits[size_t(i) * Vp + j] == 0);
    // dlogits = (1/V - onehot) / N
    CHECK(logits[size_t(i) * Vp + targets[i]] == Approx((1.0 / V - 1) / N).epsilon(1e-12));
    CHECK(logits[size_t(i) * Vp + (targets[i] + 1) % V] == Approx(1.0 / V / N).epsilon(1e-12));
  }
}

TEST_CASE("classifier dlogits match finite differences of dloss * sum(losses)") {
  const int N = 7, V = 12, Vp = 16;
  const double dloss = 0.37;
  std::mt19937 rng(16);
  Vec logits = random_vec(size_t(N) * Vp, rng, 3.0);
  const int targets[] = {0, 11, 3, 3, 7, 5, 1};
  Vec work(logits.size()), losses(N);
  auto loss = [&] {
    work = logits;
    ref::classifier(work.data(), losses.data(), targets, N, V, Vp, 0.0);
    double s = 0.0;
    for (double l : losses) s += l;
    return dloss * s;
  };
  const Vec want = numeric_grad(logits, loss);  // padded columns: exactly 0
  Vec dlogits = logits;  // overwritten in place, padded columns included
  ref::classifier(dlogits.data(), losses.data(), targets, N, V, Vp, dloss);
  const double e = rel_err(dlogits, want);
  INFO("FD rel err dlogits " << e);
  CHECK(e < 1e-6);

  Vec untouched = logits;  // dloss = 0: losses only, logits kept
  ref::classifier(untouched.data(), losses.data(), targets, N, V, Vp, 0.0);
  CHECK(untouched == logits);
}

TEST_CASE("classifier rejects a target outside the vocabulary") {
  std::vector<double> logits(2 * 8, 0.0), losses(2);
  const int targets[] = {3, 6};
  CHECK_THROWS_AS(ref::classifier(logits.data(), losses.data(), targets, 2, 6, 8, 1.0), Error);
  CHECK_THROWS_WITH(ref::classifier(logits.data(), losses.data(), targets, 2, 6, 8, 1.0),
                    Catch::Contains("target token 6 at row 1") && Catch::Contains("[0, 6)"));
}

TEST_CASE("CpuOps classifier matches the double reference, for any thread count") {
  const int N = 37, V = 1000, Vp = 1024;  // N * V > kParallelMinWork: threaded
  std::mt19937 rng(17);
  const Vec logits = random_vec(size_t(N) * Vp, rng, 8.0);
  std::vector<int> targets(N);
  for (int& t : targets) t = int(rng() % V);
  Vec dlogits = logits, losses(N);
  ref::classifier(dlogits.data(), losses.data(), targets.data(), N, V, Vp, 1.0 / N);

  struct Result { std::vector<float> dlogits, losses; };
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    Result r{to_float(logits), std::vector<float>(N)};
    CpuOps().classifier(r.dlogits.data(), r.losses.data(), targets.data(), N, V, Vp, 1.f / N);
    return r;
  };
  const int max_threads = omp_get_max_threads();
  const Result one = run(1), three = run(3);
  omp_set_num_threads(max_threads);
  CHECK(rel_err(one.losses, losses) < 1e-5);
  CHECK(rel_err(one.dlogits, dlogits) < 1e-5);
  CHECK(one.losses == three.losses);
  CHECK(one.dlogits == three.dlogits);
}

TEMPLATE_TEST_CASE("CudaOps classifier matches the reference and zeroes padded columns",
                   "[gpu]", float, bf16) {
  using R = RefScalar<TestType>;
  Gpu gpu;
  auto ops = make_cuda_ops<TestType>(*gpu.dev);
  struct Shape { int N, V, Vp; };
  // Training stages a row in shared memory when it fits (up to 227 KiB on an H100/H200):
  // 4000 / 4096 leaves threads of the 512 without a pack and fully padded packs; 9001 /
  // 9008 packs that wrap around the threads with a part-padded last one. 119993 / 120000
  // is too big for either type and takes the two-read kernel, as evaluation always does.
  // Vp = 41 is no multiple of a 16-byte pack: the one-column path.
  for (const Shape s : {Shape{1, 10, 16}, Shape{5, 1000, 1024}, Shape{3, 50257, 50304},
                        Shape{2, 4000, 4096}, Shape{2, 9001, 9008}, Shape{2, 119993, 120000},
                        Shape{4, 37, 41}}) {
    INFO("N " << s.N << " V " << s.V << " Vp " << s.Vp);
    std::mt19937 rng(s.N + s.V);
    const size_t n = size_t(s.N) * s.Vp;
    // Padded columns hold garbage: they must not enter the softmax and must come back 0.
    const Vec logits = rounded<TestType>(random_vec(n, rng, 4.0));
    std::vector<int> targets(s.N);
    std::uniform_int_distribution<int> tok(0, s.V - 1);
    for (int& t : targets) t = tok(rng);
    auto d_targets = gpu.upload_ints(targets);
    auto d_logits = gpu.upload<TestType>(logits);
    auto d_losses = gpu.zeros<float>(s.N);
    const R dloss = R(1.0 / s.N);
    ops->classifier(d_logits.get(), d_losses.get(), d_targets.get(), s.N, s.V, s.Vp, 0.f);
    std::vector<R> dlogits = as<R>(logits), losses(s.N);
    ref::classifier<R>(dlogits.data(), losses.data(), targets.data(), s.N, s.V, s.Vp, dloss);
    const auto eval_losses = gpu.download(d_losses, s.N);
    CHECK(rel_err(eval_losses, losses) <= stat_tolerance<TestType>());
    CHECK(gpu.download(d_logits, n) == logits);  // dloss 0: logits left alone

    ops->classifier(d_logits.get(), d_losses.get(), d_targets.get(), s.N, s.V, s.Vp,
                    float(dloss));
    // Staged or not, the kernels share their arithmetic and reduction order.
    CHECK(gpu.download(d_losses, s.N) == eval_losses);
    CHECK(rel_err(gpu.download(d_logits, n), dlogits) <= tolerance<TestType>());
  }
}
