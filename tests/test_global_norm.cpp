// cuda_sum_squares (kernels/global_norm.cu), the gradient-clipping norm: a sum in double
// over the same stored values is the oracle; repeated calls must accumulate and agree
// bit for bit (the kernel's reduction order is fixed).
#include <cmath>
#include <random>

#include "catch.hpp"
#include "gpu_check.hpp"

using namespace gpt2;
using namespace gpt2::test;

TEMPLATE_TEST_CASE("cuda_sum_squares adds sum(x^2) to a device float, deterministically",
                   "[gpu]", float, bf16) {
  Gpu gpu;
  for (const size_t n : {size_t(1), size_t(1000), size_t(3000001)}) {
    INFO("n " << n);
    std::mt19937 rng{unsigned(n)};
    const Vec x = rounded<TestType>(random_vec(n, rng));
    double want = 2.5;
    for (double v : x) want += v * v;
    auto d_x = gpu.upload<TestType>(x);
    auto d_acc = gpu.upload<float>({2.5});
    cuda_sum_squares(d_acc.get(), d_x.get(), n);
    const double once = gpu.download(d_acc, 1)[0];
    // fp32 partial sums of ~n/131072 terms then 256 partials: error ~1e-7 * log terms.
    CHECK(std::abs(once - want) <= 1e-5 * want);
    cuda_sum_squares(d_acc.get(), d_x.get(), n);
    const double twice = gpu.download(d_acc, 1)[0];
    CHECK(std::abs(twice - (2 * want - 2.5)) <= 1e-5 * twice);
    auto d_again = gpu.upload<float>({2.5});
    cuda_sum_squares(d_again.get(), d_x.get(), n);
    CHECK(gpu.download(d_again, 1)[0] == once);
  }
}
