// Linear layer: hand-computed forward, finite-difference backward (also through the
// GELU of the input), the overwrite/accumulate conventions, CpuOps' Eigen path against
// the double loops, and a hidden benchmark: ./build/test_matmul "[bench]".
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <random>

#include "catch.hpp"
#include "gpu_check.hpp"
#include "op_check.hpp"
#include "reference/cpu_ops.hpp"
#include "reference/ops_ref.hpp"

using namespace gpt2;
using namespace gpt2::test;

TEST_CASE("matmul forward by hand: inp @ weight^T + bias (+ residual)") {
  const double inp[] = {1, 2, -1, 3};          // N = 2, C = 2
  const double w[] = {1, 0, 0, 1, 1, 1};       // OC = 3: rows e1, e2, e1 + e2
  const double bias[] = {0.5, 0, -1};
  const double residual[] = {1, -2, 0.25, 0, 4, -8};
  double out[6], gelu_out[6], no_bias[6], with_residual[6];
  ref::matmul_forward(out, gelu_out, inp, w, bias, 2, 2, 3);
  const double want[] = {1.5, 2, 2, -0.5, 3, 1};
  for (int i = 0; i < 6; i++) CHECK(out[i] == want[i]);
  ref::matmul_forward<double>(no_bias, nullptr, inp, w, nullptr, 2, 2, 3);
  const double want_no_bias[] = {1, 2, 3, -1, 3, 2};
  for (int i = 0; i < 6; i++) CHECK(no_bias[i] == want_no_bias[i]);
  ref::matmul_forward<double>(with_residual, nullptr, inp, w, bias, 2, 2, 3, residual);
  const double want_residual[] = {2.5, 0, 2.25, -0.5, 7, -7};
  for (int i = 0; i < 6; i++) CHECK(with_residual[i] == want_residual[i]);
  CHECK_THROWS_WITH(ref::matmul_forward(out, gelu_out, inp, w, bias, 2, 2, 3, residual),
                    Catch::Contains("only without GELU"));
  // The epilogue writes gelu(pre) and leaves pre in out; gelu(2) = 1.9545976941 and
  // gelu(-0.5) = -0.1542859902 (tanh form, worked out independently in Python).
  CHECK(gelu_out[1] == Approx(1.9545976941).epsilon(1e-9));
  CHECK(gelu_out[3] == Approx(-0.1542859902).epsilon(1e-9));
}

namespace {
Vec minus(const Vec& a, const Vec& b) {
  Vec d(a.size());
  for (size_t i = 0; i < a.size(); i++) d[i] = a[i] - b[i];
  return d;
}
}  // namespace

TEST_CASE("matmul backward matches finite differences; dinp is overwritten, dweight/dbias +=") {
  const int N = 7, C = 12, OC = 9;
  std::mt19937 rng(5);
  Vec inp = random_vec(size_t(N) * C, rng), w = random_vec(size_t(OC) * C, rng),
      b = random_vec(OC, rng);
  const Vec dout = random_vec(size_t(N) * OC, rng);
  Vec out(dout.size());
  auto loss = [&] {
    ref::matmul_forward<double>(out.data(), nullptr, inp.data(), w.data(), b.data(), N, C, OC);
    return dot(out, dout);
  };
  const Vec want_inp = numeric_grad(inp, loss), want_w = numeric_grad(w, loss),
            want_b = numeric_grad(b, loss);

  const Vec g0_w = random_vec(w.size(), rng), g0_b = random_vec(OC, rng);
  Vec dinp = random_vec(inp.size(), rng), dw = g0_w, db = g0_b;
  auto backward = [&] {
    ref::matmul_backward<double>(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(),
                                 w.data(), nullptr, N, C, OC);
  };
  backward();
  const Vec once_w = minus(dw, g0_w), once_b = minus(db, g0_b);
  const double e_inp = rel_err(dinp, want_inp), e_w = rel_err(once_w, want_w),
               e_b = rel_err(once_b, want_b);
  INFO("FD rel err dinp " << e_inp << " dweight " << e_w << " dbias " << e_b);
  CHECK(e_inp < 1e-6);
  CHECK(e_w < 1e-6);
  CHECK(e_b < 1e-6);

  const Vec dinp_once = dinp;
  backward();
  CHECK(dinp == dinp_once);
  for (size_t i = 0; i < dw.size(); i++) CHECK(dw[i] == Approx(g0_w[i] + 2 * once_w[i]));
  for (int o = 0; o < OC; o++) CHECK(db[o] == Approx(g0_b[o] + 2 * once_b[o]));
}

TEST_CASE("matmul backward through the input's GELU matches finite differences") {
  // The MLP's projection: its input is gelu(pre); pre_gelu folds gelu' into dinp.
  const int N = 7, C = 12, OC = 5;
  std::mt19937 rng(6);
  Vec pre = random_vec(size_t(N) * C, rng, 3.0);
  const Vec w = random_vec(size_t(OC) * C, rng), dout = random_vec(size_t(N) * OC, rng);
  Vec act(pre.size()), out(dout.size());
  auto loss = [&] {
    ref::gelu_forward(act.data(), pre.data(), act.size());
    ref::matmul_forward<double>(out.data(), nullptr, act.data(), w.data(), nullptr, N, C, OC);
    return dot(out, dout);
  };
  const Vec want = numeric_grad(pre, loss);
  loss();
  Vec dpre(pre.size());
  ref::matmul_backward<double>(dpre.data(), nullptr, nullptr, dout.data(), act.data(), w.data(),
                               pre.data(), N, C, OC);
  const double e = rel_err(dpre, want);
  INFO("FD rel err dpre " << e);
  CHECK(e < 1e-6);
}

TEST_CASE("matmul backward adds a given dout_colsum as dbias and leaves the rest alone") {
  const int N = 6, C = 5, OC = 7;
  std::mt19937 rng(3);
  const Vec inp = random_vec(size_t(N) * C, rng), w = random_vec(size_t(OC) * C, rng),
            dout = random_vec(size_t(N) * OC, rng), db0 = random_vec(OC, rng);
  Vec colsum(OC);
  ref::column_sums(colsum.data(), dout.data(), N, OC);
  // The reference: given its own sums, the same dbias bit for bit; given others, db0 + them.
  Vec dinp(size_t(N) * C), dw(w.size(), 0.0), db = db0;
  ref::matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                       static_cast<const double*>(nullptr), N, C, OC);
  Vec dinp2(dinp.size()), dw2(w.size(), 0.0), db2 = db0;
  ref::matmul_backward(dinp2.data(), dw2.data(), db2.data(), dout.data(), inp.data(), w.data(),
                       static_cast<const double*>(nullptr), N, C, OC, colsum.data());
  CHECK(db2 == db);
  CHECK(dinp2 == dinp);
  CHECK(dw2 == dw);
  const Vec other = random_vec(OC, rng);
  Vec db3 = db0;
  ref::matmul_backward<double>(nullptr, nullptr, db3.data(), dout.data(),
                       inp.data(), w.data(), nullptr, N, C, OC, other.data());
  for (int o = 0; o < OC; o++) CHECK(db3[o] == db0[o] + other[o]);
  // CpuOps likewise.
  const auto inp_f = to_float(inp), w_f = to_float(w), dout_f = to_float(dout);
  std::vector<float> colsum_f(OC), dbf = to_float(db0), dbf2 = to_float(db0);
  ref::column_sums(colsum_f.data(), dout_f.data(), N, OC);
  CpuOps ops;
  ops.matmul_backward(nullptr, nullptr, dbf.data(), dout_f.data(), inp_f.data(), w_f.data(),
                      nullptr, N, C, OC);
  ops.matmul_backward(nullptr, nullptr, dbf2.data(), dout_f.data(), inp_f.data(), w_f.data(),
                      nullptr, N, C, OC, colsum_f.data());
  CHECK(dbf2 == dbf);
}

TEST_CASE("CpuOps matmul (Eigen) matches the double loops and repeats bit for bit") {
  // Big enough for Eigen's blocked, threaded GEMM; odd sizes exercise its edges.
  const int N = 67, C = 96, OC = 130;
  std::mt19937 rng(7);
  const Vec inp = random_vec(size_t(N) * C, rng), w = random_vec(size_t(OC) * C, rng),
            b = random_vec(OC, rng), pre = random_vec(inp.size(), rng, 3.0),
            dout = random_vec(size_t(N) * OC, rng);
  const Vec g0_w = random_vec(w.size(), rng), g0_b = random_vec(OC, rng);
  Vec out(dout.size()), gout(dout.size()), dinp(inp.size()), dw = g0_w, db = g0_b;
  ref::matmul_forward(out.data(), gout.data(), inp.data(), w.data(), b.data(), N, C, OC);
  ref::matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                       pre.data(), N, C, OC);

  const auto inp_f = to_float(inp), w_f = to_float(w), b_f = to_float(b), pre_f = to_float(pre),
             dout_f = to_float(dout);
  struct Result { std::vector<float> out, gout, dinp, dw, db; };
  auto run = [&] {
    Result r{std::vector<float>(out.size()), std::vector<float>(out.size()),
             std::vector<float>(inp.size(), 7.f), to_float(g0_w), to_float(g0_b)};
    CpuOps ops;
    ops.matmul_forward(r.out.data(), r.gout.data(), inp_f.data(), w_f.data(), b_f.data(), N, C,
                       OC);
    ops.matmul_backward(r.dinp.data(), r.dw.data(), r.db.data(), dout_f.data(), inp_f.data(),
                        w_f.data(), pre_f.data(), N, C, OC);
    return r;
  };
  const Result first = run(), second = run();
  CHECK(rel_err(first.out, out) < 1e-5);
  CHECK(rel_err(first.gout, gout) < 1e-5);
  CHECK(rel_err(first.dinp, dinp) < 1e-5);
  CHECK(rel_err(first.dw, dw) < 1e-5);
  CHECK(rel_err(first.db, db) < 1e-5);
  CHECK(first.out == second.out);
  CHECK(first.dinp == second.dinp);
  CHECK(first.dw == second.dw);
  {  // dinp written over inp (the model's fcproj): the same bits
    std::vector<float> alias = inp_f, dw_a = to_float(g0_w), db_a = to_float(g0_b);
    CpuOps().matmul_backward(alias.data(), dw_a.data(), db_a.data(), dout_f.data(), alias.data(),
                             w_f.data(), pre_f.data(), N, C, OC);
    CHECK(alias == first.dinp);
    CHECK(dw_a == first.dw);
    CHECK(db_a == first.db);
  }

  // Null bias in forward; null dinp and dbias in backward leave those untouched.
  Vec out_nb(out.size());
  ref::matmul_forward<double>(out_nb.data(), nullptr, inp.data(), w.data(), nullptr, N, C, OC);
  std::vector<float> out_nb_f(out.size()), dw_f = to_float(g0_w);
  CpuOps ops;
  ops.matmul_forward(out_nb_f.data(), nullptr, inp_f.data(), w_f.data(), nullptr, N, C, OC);
  ops.matmul_backward(nullptr, dw_f.data(), nullptr, dout_f.data(), inp_f.data(), w_f.data(),
                      nullptr, N, C, OC);
  CHECK(rel_err(out_nb_f, out_nb) < 1e-5);
  CHECK(dw_f == first.dw);
  // The residual added in the forward (the block's projections).
  Vec out_res(out.size());
  const Vec res = random_vec(out.size(), rng);
  const auto res_f = to_float(res);
  ref::matmul_forward<double>(out_res.data(), nullptr, inp.data(), w.data(), b.data(), N, C, OC,
                              res.data());
  std::vector<float> out_res_f(out.size());
  ops.matmul_forward(out_res_f.data(), nullptr, inp_f.data(), w_f.data(), b_f.data(), N, C, OC,
                     false, res_f.data());
  CHECK(rel_err(out_res_f, out_res) < 1e-5);
  std::vector<float> gelu_f(out.size());
  CHECK_THROWS_WITH(ops.matmul_forward(out_res_f.data(), gelu_f.data(), inp_f.data(), w_f.data(),
                                       b_f.data(), N, C, OC, false, res_f.data()),
                    Catch::Contains("only without GELU"));
  // The CPU keeps rows contiguous: it never asks for ones-padded rows, and refuses them.
  CHECK_FALSE(ops.pads_rows(C));
  CHECK_THROWS_WITH(ops.matmul_forward(out_nb_f.data(), nullptr, inp_f.data(), w_f.data(),
                                       nullptr, N, C, OC, true),
                    Catch::Contains("ones-padded"));
}

TEST_CASE("CpuOps matmul speed at GPT-2 124M's MLP shape", "[.][bench]") {
  const int N = 256, C = 768, OC = 3072;
  std::mt19937 rng(8);
  const auto inp = to_float(random_vec(size_t(N) * C, rng)),
             w = to_float(random_vec(size_t(OC) * C, rng)), b = to_float(random_vec(OC, rng)),
             dout = to_float(random_vec(size_t(N) * OC, rng));
  std::vector<float> out(size_t(N) * OC), dinp(inp.size()), dw(w.size()), db(OC);
  CpuOps ops;
  const double flop = 2.0 * N * C * OC;
  auto time = [&](auto&& f) {
    f();  // warm-up
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
      const auto t0 = std::chrono::steady_clock::now();
      f();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                                .count());
    }
    return best;
  };
  const double fwd = time([&] {
    ops.matmul_forward(out.data(), nullptr, inp.data(), w.data(), b.data(), N, C, OC);
  });
  const double bwd = time([&] {
    ops.matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                        nullptr, N, C, OC);
  });
  std::printf("matmul %d x %d x %d, %d threads: forward %.2f ms (%.1f GFLOP/s), backward %.2f ms"
              " (%.1f GFLOP/s)\n",
              N, C, OC, omp_get_max_threads(), fwd * 1e3, flop / fwd * 1e-9, bwd * 1e3,
              2 * flop / bwd * 1e-9);
}

TEMPLATE_TEST_CASE("CudaOps matmul matches the reference: bias, GELU epilogue, DGELU, +=",
                   "[gpu]", float, bf16) {
  using R = RefScalar<TestType>;
  constexpr double tol = tolerance<TestType>();
  Gpu gpu;
  auto ops = make_cuda_ops<TestType>(*gpu.dev);
  struct Shape { int N, C, OC; };
  // OC = 97 gives an aux leading dimension cuBLASLt's GELU epilogue may refuse (the
  // fallback path); 64 x 768 x 2304 is GPT-2's qkv projection at a small batch.
  for (const Shape s : {Shape{37, 72, 200}, Shape{1, 64, 97}, Shape{64, 768, 2304}}) {
    INFO("N " << s.N << " C " << s.C << " OC " << s.OC);
    std::mt19937 rng(s.N + s.C + s.OC);
    const size_t nin = size_t(s.N) * s.C, nout = size_t(s.N) * s.OC;
    const Vec inp = rounded<TestType>(random_vec(nin, rng)),
              w = rounded<TestType>(random_vec(size_t(s.OC) * s.C, rng, 0.1)),
              b = rounded<TestType>(random_vec(s.OC, rng)),
              dout = rounded<TestType>(random_vec(nout, rng)),
              pre_gelu = rounded<TestType>(random_vec(nin, rng, 3.0)),
              dw0 = rounded<TestType>(random_vec(w.size(), rng)),
              db0 = rounded<TestType>(random_vec(s.OC, rng));
    auto d_inp = gpu.upload<TestType>(inp), d_w = gpu.upload<TestType>(w),
         d_b = gpu.upload<TestType>(b), d_out = gpu.zeros<TestType>(nout),
         d_gelu = gpu.zeros<TestType>(nout);

    ops->matmul_forward(d_out.get(), d_gelu.get(), d_inp.get(), d_w.get(), d_b.get(), s.N, s.C,
                        s.OC);
    std::vector<R> out(nout), gelu_out(nout);
    ref::matmul_forward<R>(out.data(), gelu_out.data(), as<R>(inp).data(), as<R>(w).data(),
                           as<R>(b).data(), s.N, s.C, s.OC);
    CHECK(rel_err(gpu.download(d_out, nout), out) <= tol);
    CHECK(rel_err(gpu.download(d_gelu, nout), gelu_out) <= tol);
    ops->matmul_forward(d_out.get(), nullptr, d_inp.get(), d_w.get(), nullptr, s.N, s.C, s.OC);
    ref::matmul_forward<R>(out.data(), nullptr, as<R>(inp).data(), as<R>(w).data(), nullptr,
                           s.N, s.C, s.OC);
    CHECK(rel_err(gpu.download(d_out, nout), out) <= tol);
    // + residual, the epilogue's C operand with beta = 1 (into d_gelu: out and residual
    // are different buffers in the model).
    const Vec res = rounded<TestType>(random_vec(nout, rng));
    auto d_res = gpu.upload<TestType>(res);
    ops->matmul_forward(d_gelu.get(), nullptr, d_inp.get(), d_w.get(), d_b.get(), s.N, s.C, s.OC,
                        false, d_res.get());
    ref::matmul_forward<R>(out.data(), nullptr, as<R>(inp).data(), as<R>(w).data(), as<R>(b).data(),
                           s.N, s.C, s.OC, as<R>(res).data());
    CHECK(rel_err(gpu.download(d_gelu, nout), out) <= tolerance_twice_rounded<TestType>());

    auto d_dout = gpu.upload<TestType>(dout), d_pre = gpu.upload<TestType>(pre_gelu),
         d_dinp = gpu.upload<TestType>(random_vec(nin, rng)),  // overwritten
        d_dw = gpu.upload<TestType>(dw0), d_db = gpu.upload<TestType>(db0);
    ops->matmul_backward(d_dinp.get(), d_dw.get(), d_db.get(), d_dout.get(), d_inp.get(),
                         d_w.get(), d_pre.get(), s.N, s.C, s.OC);
    std::vector<R> dinp(nin), dw = as<R>(dw0), db = as<R>(db0);
    ref::matmul_backward<R>(dinp.data(), dw.data(), db.data(), as<R>(dout).data(),
                            as<R>(inp).data(), as<R>(w).data(), as<R>(pre_gelu).data(), s.N,
                            s.C, s.OC);
    // DGELU and beta = 1 epilogues round twice in bf16 (see gpu_check.hpp).
    constexpr double tol2 = tolerance_twice_rounded<TestType>();
    CHECK(rel_err(gpu.download(d_dinp, nin), dinp) <= tol2);
    CHECK(rel_err(gpu.download(d_dw, w.size()), dw) <= tol2);
    CHECK(rel_err(gpu.download(d_db, s.OC), db) <= tol);
    // dinp written over inp (the model's fcproj): the same bits, dweight and dbias too.
    auto d_alias = gpu.upload<TestType>(inp), d_dw2 = gpu.upload<TestType>(dw0),
         d_db2 = gpu.upload<TestType>(db0);
    ops->matmul_backward(d_alias.get(), d_dw2.get(), d_db2.get(), d_dout.get(), d_alias.get(),
                         d_w.get(), d_pre.get(), s.N, s.C, s.OC);
    CHECK(gpu.download(d_alias, nin) == gpu.download(d_dinp, nin));
    CHECK(gpu.download(d_dw2, w.size()) == gpu.download(d_dw, w.size()));
    CHECK(gpu.download(d_db2, s.OC) == gpu.download(d_db, s.OC));
    // dbias alone, twice more: each call adds colsum(dout) again (the bias reduction's
    // last-block counters must be back at 0 after every call). The reference starts each
    // call from the kernel's stored (T-rounded) result, so the bound stays one rounding.
    for (int again = 0; again < 2; again++) {
      db = as<R>(gpu.download(d_db, s.OC));
      ops->matmul_backward(nullptr, nullptr, d_db.get(), d_dout.get(), d_inp.get(), d_w.get(),
                           nullptr, s.N, s.C, s.OC);
      ref::matmul_backward<R>(nullptr, nullptr, db.data(), as<R>(dout).data(), as<R>(inp).data(),
                              as<R>(w).data(), nullptr, s.N, s.C, s.OC);
      CHECK(rel_err(gpu.download(d_db, s.OC), db) <= tol);
    }
    ops->matmul_backward(d_dinp.get(), nullptr, nullptr, d_dout.get(), d_inp.get(), d_w.get(),
                         nullptr, s.N, s.C, s.OC);
    ref::matmul_backward<R>(dinp.data(), nullptr, nullptr, as<R>(dout).data(), as<R>(inp).data(),
                            as<R>(w).data(), nullptr, s.N, s.C, s.OC);
    CHECK(rel_err(gpu.download(d_dinp, nin), dinp) <= tol);
    // A given dout_colsum (fp32) is what dbias gets, rounded once: not colsum(dout).
    const Vec sums = random_vec(s.OC, rng, 10.0);
    auto d_sums = gpu.upload<float>(sums);
    db = as<R>(gpu.download(d_db, s.OC));
    const Vec sums_f = rounded<float>(sums);
    ops->matmul_backward(nullptr, nullptr, d_db.get(), d_dout.get(), d_inp.get(), d_w.get(),
                         nullptr, s.N, s.C, s.OC, d_sums.get());
    Vec want(s.OC);
    for (int o = 0; o < s.OC; o++) want[o] = double(db[o]) + sums_f[o];
    CHECK(rel_err(gpu.download(d_db, s.OC), want) <= tol);
  }
}

TEMPLATE_TEST_CASE("CudaOps matmul on ones-padded input rows: dbias from the dweight GEMM",
                   "[gpu]", float, bf16) {
  // The input as layernorm_forward leaves it with `padded` (src/ops.hpp): rows of C + 8,
  // the values, then 1, 0, ... The forward reads past the padding; the backward's dweight
  // and dbias come from one GEMM over it, added to the given gradients with one rounding.
  using R = RefScalar<TestType>;
  constexpr double tol = tolerance<TestType>();
  Gpu gpu;
  auto ops = make_cuda_ops<TestType>(*gpu.dev);
  struct Shape { int N, C, OC; };
  for (const Shape s : {Shape{37, 72, 200}, Shape{5, 16, 8}, Shape{64, 768, 3072}}) {
    INFO("N " << s.N << " C " << s.C << " OC " << s.OC);
    REQUIRE(ops->pads_rows(s.C));
    std::mt19937 rng(s.N * 3 + s.C + s.OC);
    const int P = s.C + kOnesPad;
    const size_t nin = size_t(s.N) * s.C, nout = size_t(s.N) * s.OC;
    const Vec inp = rounded<TestType>(random_vec(nin, rng)),
              w = rounded<TestType>(random_vec(size_t(s.OC) * s.C, rng, 0.1)),
              b = rounded<TestType>(random_vec(s.OC, rng)),
              dout = rounded<TestType>(random_vec(nout, rng)),
              dw0 = rounded<TestType>(random_vec(w.size(), rng)),
              db0 = rounded<TestType>(random_vec(s.OC, rng));
    Vec padded(size_t(s.N) * P, 0.0);
    for (int i = 0; i < s.N; i++) {
      for (int c = 0; c < s.C; c++) padded[size_t(i) * P + c] = inp[size_t(i) * s.C + c];
      padded[size_t(i) * P + s.C] = 1.0;
    }
    auto d_inp = gpu.upload<TestType>(padded), d_w = gpu.upload<TestType>(w),
         d_b = gpu.upload<TestType>(b), d_out = gpu.zeros<TestType>(nout);
    ops->matmul_forward(d_out.get(), nullptr, d_inp.get(), d_w.get(), d_b.get(), s.N, s.C, s.OC,
                        true);
    std::vector<R> out(nout);
    ref::matmul_forward<R>(out.data(), nullptr, as<R>(inp).data(), as<R>(w).data(),
                           as<R>(b).data(), s.N, s.C, s.OC);
    CHECK(rel_err(gpu.download(d_out, nout), out) <= tol);

    auto d_dout = gpu.upload<TestType>(dout), d_dinp = gpu.zeros<TestType>(nin),
         d_dw = gpu.upload<TestType>(dw0), d_db = gpu.upload<TestType>(db0);
    ops->matmul_backward(d_dinp.get(), d_dw.get(), d_db.get(), d_dout.get(), d_inp.get(),
                         d_w.get(), nullptr, s.N, s.C, s.OC, nullptr, true);
    std::vector<R> dinp(nin), dw = as<R>(dw0), db = as<R>(db0);
    ref::matmul_backward<R>(dinp.data(), dw.data(), db.data(), as<R>(dout).data(),
                            as<R>(inp).data(), as<R>(w).data(), nullptr, s.N, s.C, s.OC);
    CHECK(rel_err(gpu.download(d_dinp, nin), dinp) <= tol);
    CHECK(rel_err(gpu.download(d_dw, w.size()), dw) <= tol);
    CHECK(rel_err(gpu.download(d_db, s.OC), db) <= tol);
  }
}
