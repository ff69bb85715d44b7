// Encoder (token + position embedding): hand-computed forward, finite-difference
// backward, += convention, CpuOps against the double reference.
#include <random>

#include "catch.hpp"
#include "gpu_check.hpp"
#include "op_check.hpp"
#include "reference/cpu_ops.hpp"
#include "reference/ops_ref.hpp"

using namespace gpt2;
using namespace gpt2::test;

TEST_CASE("encoder forward adds the token row and the position row") {
  const double wte[] = {1, 2, 3, 4, 5, 6};  // V = 3, C = 2
  const double wpe[] = {10, 20, 30, 40};    // T = 2
  const int inp[] = {2, 0};
  double out[4];
  ref::encoder_forward(out, inp, wte, wpe, 1, 2, 2);
  CHECK(out[0] == 15);
  CHECK(out[1] == 26);
  CHECK(out[2] == 31);
  CHECK(out[3] == 42);
}

TEST_CASE("encoder backward matches finite differences and accumulates") {
  const int B = 2, T = 7, C = 12, V = 5;
  std::mt19937 rng(1);
  // Token 3 repeats across and within rows: its wte gradient must sum all of them.
  const std::vector<int> inp = {3, 0, 3, 4, 1, 3, 2, 4, 4, 3, 0, 1, 2, 3};
  Vec wte = random_vec(size_t(V) * C, rng), wpe = random_vec(size_t(T) * C, rng);
  const Vec dout = random_vec(size_t(B) * T * C, rng);
  Vec out(dout.size());
  auto loss = [&] {
    ref::encoder_forward(out.data(), inp.data(), wte.data(), wpe.data(), B, T, C);
    return dot(out, dout);
  };
  const Vec want_wte = numeric_grad(wte, loss), want_wpe = numeric_grad(wpe, loss);

  // Start from non-zero buffers and run twice: both outputs are accumulated.
  const Vec g0_wte = random_vec(wte.size(), rng), g0_wpe = random_vec(wpe.size(), rng);
  Vec dwte = g0_wte, dwpe = g0_wpe;
  ref::encoder_backward(dwte.data(), dwpe.data(), dout.data(), inp.data(), B, T, C);
  Vec once_wte(dwte.size()), once_wpe(dwpe.size());
  for (size_t i = 0; i < dwte.size(); i++) once_wte[i] = dwte[i] - g0_wte[i];
  for (size_t i = 0; i < dwpe.size(); i++) once_wpe[i] = dwpe[i] - g0_wpe[i];
  const double err_wte = rel_err(once_wte, want_wte), err_wpe = rel_err(once_wpe, want_wpe);
  INFO("FD rel err dwte " << err_wte << " dwpe " << err_wpe);
  CHECK(err_wte < 1e-6);
  CHECK(err_wpe < 1e-6);

  ref::encoder_backward(dwte.data(), dwpe.data(), dout.data(), inp.data(), B, T, C);
  for (size_t i = 0; i < dwte.size(); i++) CHECK(dwte[i] == Approx(g0_wte[i] + 2 * once_wte[i]));
  for (size_t i = 0; i < dwpe.size(); i++) CHECK(dwpe[i] == Approx(g0_wpe[i] + 2 * once_wpe[i]));

  // A null gradient pointer skips that output.
  Vec dwpe_only(wpe.size(), 0.0);
  ref::encoder_backward<double>(nullptr, dwpe_only.data(), dout.data(), inp.data(), B, T, C);
  CHECK(rel_err(dwpe_only, once_wpe) < 1e-15);
}

TEST_CASE("CpuOps encoder matches the double reference") {
  const int B = 3, T = 16, C = 36, V = 11;
  std::mt19937 rng(2);
  std::vector<int> inp(size_t(B) * T);
  for (int& t : inp) t = int(rng() % V);
  const Vec wte = random_vec(size_t(V) * C, rng), wpe = random_vec(size_t(T) * C, rng);
  const Vec dout = random_vec(size_t(B) * T * C, rng);
  Vec out(dout.size()), dwte(wte.size(), 0.0), dwpe(wpe.size(), 0.0);
  ref::encoder_forward(out.data(), inp.data(), wte.data(), wpe.data(), B, T, C);
  ref::encoder_backward(dwte.data(), dwpe.data(), dout.data(), inp.data(), B, T, C);

  CpuOps ops;
  const auto wte_f = to_float(wte), wpe_f = to_float(wpe), dout_f = to_float(dout);
  std::vector<float> out_f(out.size()), dwte_f(wte.size(), 0.f), dwpe_f(wpe.size(), 0.f);
  ops.encoder_forward(out_f.data(), inp.data(), wte_f.data(), wpe_f.data(), B, T, C);
  ops.encoder_backward(dwte_f.data(), dwpe_f.data(), dout_f.data(), inp.data(), B, T, C);
  CHECK(rel_err(out_f, out) < 1e-5);
  CHECK(rel_err(dwte_f, dwte) < 1e-5);
  CHECK(rel_err(dwpe_f, dwpe) < 1e-5);
}

TEMPLATE_TEST_CASE("CudaOps encoder matches the reference (repeated tokens, odd sizes)", "[gpu]",
                   float, bf16) {
  using R = RefScalar<TestType>;
  Gpu gpu;
  auto ops = make_cuda_ops<TestType>(*gpu.dev);
  struct Shape { int B, T, C, V; };
  // V far below B*T makes tokens repeat, which the sorted dwte reduction must sum.
  for (const Shape s : {Shape{1, 7, 72, 50}, Shape{4, 65, 100, 30}, Shape{2, 130, 768, 1000}}) {
    INFO("B " << s.B << " T " << s.T << " C " << s.C << " V " << s.V);
    std::mt19937 rng(s.B * 1000 + s.T);
    const int N = s.B * s.T;
    std::vector<int> inp(N);
    std::uniform_int_distribution<int> tok(0, s.V - 1);
    for (int& t : inp) t = tok(rng);
    const Vec wte = rounded<TestType>(random_vec(size_t(s.V) * s.C, rng)),
              wpe = rounded<TestType>(random_vec(size_t(s.T) * s.C, rng)),
              dout = rounded<TestType>(random_vec(size_t(N) * s.C, rng)),
              dwte0 = rounded<TestType>(random_vec(wte.size(), rng)),
              dwpe0 = rounded<TestType>(random_vec(wpe.size(), rng));
    auto d_inp = gpu.upload_ints(inp);
    auto d_wte = gpu.upload<TestType>(wte), d_wpe = gpu.upload<TestType>(wpe);
    auto d_out = gpu.zeros<TestType>(dout.size());
    ops->encoder_forward(d_out.get(), d_inp.get(), d_wte.get(), d_wpe.get(), s.B, s.T, s.C);
    std::vector<R> want(dout.size());
    ref::encoder_forward<R>(want.data(), inp.data(), as<R>(wte).data(), as<R>(wpe).data(), s.B,
                            s.T, s.C);
    CHECK(rel_err(gpu.download(d_out, want.size()), want) <= tolerance<TestType>());

    auto d_dout = gpu.upload<TestType>(dout);
    auto d_dwte = gpu.upload<TestType>(dwte0), d_dwpe = gpu.upload<TestType>(dwpe0);
    ops->encoder_backward(d_dwte.get(), d_dwpe.get(), d_dout.get(), d_inp.get(), s.B, s.T, s.C);
    std::vector<R> want_dwte = as<R>(dwte0), want_dwpe = as<R>(dwpe0);
    ref::encoder_backward<R>(want_dwte.data(), want_dwpe.data(), as<R>(dout).data(), inp.data(),
                             s.B, s.T, s.C);
    CHECK(rel_err(gpu.download(d_dwte, wte.size()), want_dwte) <= tolerance<TestType>());
    CHECK(rel_err(gpu.download(d_dwpe, wpe.size()), want_dwpe) <= tolerance<TestType>());
  }
}
