// Residual add: hand values, output aliasing either input, CpuOps against the double
// reference. It has no backward op: the model adds dout into both branches' gradients,
// and its derivative (the identity) needs no finite-difference check beyond the sum.
#include <random>

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
