// Encoder (token + position embedding): hand-computed forward, finite-difference
// backward, += convention, CpuOps against the double reference.
#include <random>

#include "catch.hpp"
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
