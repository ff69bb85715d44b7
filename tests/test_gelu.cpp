// GELU (tanh form): values worked out independently in Python, finite-difference
// backward, in-place backward (dinp aliasing dout), CpuOps against the double reference.
#include <random>

#include "catch.hpp"
#include "gpu_check.hpp"
#include "op_check.hpp"
#include "reference/cpu_ops.hpp"
#include "reference/ops_ref.hpp"

using namespace gpt2;
using namespace gpt2::test;

TEST_CASE("gelu forward matches values computed in Python") {
  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) with Python's math module.
  const double x[] = {-3, -1, 0, 0.5, 2, 5};
  const double want[] = {-0.0036373920817729943, -0.15880800939172324, 0.0,
                         0.34571400982514394,    1.954597694087775,    4.999999770820381};
  double out[6];
  ref::gelu_forward(out, x, 6);
  for (int i = 0; i < 6; i++) CHECK(out[i] == Approx(want[i]).epsilon(1e-13).margin(1e-300));
}

TEST_CASE("gelu backward matches finite differences, in place too") {
  const size_t n = 7 * 12;
  std::mt19937 rng(13);
  Vec inp = random_vec(n, rng, 4.0);
  const Vec dout = random_vec(n, rng);
  Vec out(n);
  auto loss = [&] {
    ref::gelu_forward(out.data(), inp.data(), n);
    return dot(out, dout);
  };
  const Vec want = numeric_grad(inp, loss);
  Vec dinp = random_vec(n, rng);  // overwritten, not accumulated
  ref::gelu_backward(dinp.data(), inp.data(), dout.data(), n);
  const double e = rel_err(dinp, want);
  INFO("FD rel err dinp " << e);
  CHECK(e < 1e-6);

  Vec inplace = dout;
  ref::gelu_backward(inplace.data(), inp.data(), inplace.data(), n);
  CHECK(inplace == dinp);
}

TEST_CASE("CpuOps gelu matches the double reference") {
  const size_t n = 40009;  // above kParallelMinWork: threaded
  std::mt19937 rng(14);
  const Vec inp = random_vec(n, rng, 6.0), dout = random_vec(n, rng);
  Vec out(n), dinp(n);
  ref::gelu_forward(out.data(), inp.data(), n);
  ref::gelu_backward(dinp.data(), inp.data(), dout.data(), n);
  const auto inp_f = to_float(inp), dout_f = to_float(dout);
  std::vector<float> out_f(n), dinp_f(n);
  CpuOps ops;
  ops.gelu_forward(out_f.data(), inp_f.data(), n);
  ops.gelu_backward(dinp_f.data(), inp_f.data(), dout_f.data(), n);
  CHECK(rel_err(out_f, out) < 1e-5);
  CHECK(rel_err(dinp_f, dinp) < 1e-5);
}

TEMPLATE_TEST_CASE("CudaOps gelu matches the reference, in place too", "[gpu]", float, bf16) {
  using R = RefScalar<TestType>;
  Gpu gpu;
  auto ops = make_cuda_ops<TestType>(*gpu.dev);
  for (const size_t n : {size_t(1), size_t(1000), size_t(100003)}) {
    INFO("n " << n);
    std::mt19937 rng{unsigned(n)};
    const Vec inp = rounded<TestType>(random_vec(n, rng, 4.0)),
              dout = rounded<TestType>(random_vec(n, rng));
    auto d_inp = gpu.upload<TestType>(inp), d_out = gpu.zeros<TestType>(n);
    ops->gelu_forward(d_out.get(), d_inp.get(), n);
    std::vector<R> out(n), dinp(n);
    ref::gelu_forward<R>(out.data(), as<R>(inp).data(), n);
    const Vec got = gpu.download(d_out, n);
    CHECK(rel_err(got, out) <= tolerance<TestType>());
    // Element by element too, so the tails (x near -4, where 1 + tanh u is small) count:
    // fp32 within 1e-5 relative, bf16 within one bf16 ulp (2^-7 relative at most; the
    // final rounding alone takes up to half of it). The form 0.5 x (1 + tanh u) in fp32
    // misses the fp32 bound near x = -4 (8.4e-4 with glibc's tanhf).
    const double elem_tol = std::is_same_v<TestType, float> ? 1e-5 : 1.0 / 128;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
      if (std::abs(got[i] - double(out[i])) > elem_tol * std::abs(double(out[i])) + 1e-30) bad++;
    CHECK(bad == 0);
    // One element in: pointers off 16-byte alignment take the scalar kernel.
    if (n > 1) {
      auto d_shifted = gpu.zeros<TestType>(n);
      ops->gelu_forward(d_shifted.get() + 1, d_inp.get() + 1, n - 1);
      const Vec shifted = gpu.download(d_shifted, n);
      CHECK(shifted[0] == 0);
      CHECK(rel_err(Vec(shifted.begin() + 1, shifted.end()), std::vector<R>(out.begin() + 1, out.end())) <=
            tolerance<TestType>());
    }

    auto d_dout = gpu.upload<TestType>(dout);
    ops->gelu_backward(d_dout.get(), d_inp.get(), d_dout.get(), n);  // dinp aliases dout
    ref::gelu_backward<R>(dinp.data(), as<R>(inp).data(), as<R>(dout).data(), n);
    CHECK(rel_err(gpu.download(d_dout, n), dinp) <= tolerance<TestType>());
  }
}
