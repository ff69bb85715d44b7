// LayerNorm: the [1, 2, 3] worked example, finite-difference backward, the += convention
// of all three gradients, CpuOps against the double reference and thread-count
// independence.
#include <omp.h>

#include <cmath>
#include <random>

#include "catch.hpp"
#include "gpu_check.hpp"
#include "op_check.hpp"
#include "reference/cpu_ops.hpp"
#include "reference/ops_ref.hpp"

using namespace gpt2;
using namespace gpt2::test;

TEST_CASE("layernorm of [1, 2, 3] by hand") {
  // mean 2, biased variance 2/3, so xhat = [-1, 0, 1] / sqrt(2/3 + 1e-5).
  const double x[] = {1, 2, 3}, w[] = {1, 2, -1}, b[] = {0, 0.5, 1};
  double out[3], mean, rstd;
  ref::layernorm_forward(out, &mean, &rstd, x, w, b, 1, 3);
  const double r = 1.0 / std::sqrt(2.0 / 3.0 + 1e-5);
  CHECK(mean == Approx(2.0).epsilon(1e-14));
  CHECK(rstd == Approx(r).epsilon(1e-14));
  CHECK(out[0] == Approx(-r).epsilon(1e-14));
  CHECK(out[1] == Approx(0.5).epsilon(1e-14));
  CHECK(out[2] == Approx(-r + 1).epsilon(1e-14));
  CHECK(r == Approx(1.2247357).epsilon(1e-7));  // the eps visibly shifts 1.2247449
}

TEST_CASE("layernorm backward matches finite differences and accumulates") {
  const int N = 7, C = 12;
  std::mt19937 rng(3);
  Vec inp = random_vec(size_t(N) * C, rng, 2.0), w = random_vec(C, rng), b = random_vec(C, rng);
  const Vec dout = random_vec(inp.size(), rng);
  Vec out(inp.size()), mean(N), rstd(N);
  auto loss = [&] {
    ref::layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(),
                           N, C);
    return dot(out, dout);
  };
  const Vec want_inp = numeric_grad(inp, loss), want_w = numeric_grad(w, loss),
            want_b = numeric_grad(b, loss);
  loss();  // mean and rstd of the unperturbed input

  const Vec g0_inp = random_vec(inp.size(), rng), g0_w = random_vec(C, rng),
            g0_b = random_vec(C, rng);
  Vec dinp = g0_inp, dw = g0_w, db = g0_b;
  auto backward = [&] {
    ref::layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                            mean.data(), rstd.data(), N, C);
  };
  auto minus = [](const Vec& a, const Vec& b) {
    Vec d(a.size());
    for (size_t i = 0; i < a.size(); i++) d[i] = a[i] - b[i];
    return d;
  };
  backward();
  const Vec once_inp = minus(dinp, g0_inp), once_w = minus(dw, g0_w), once_b = minus(db, g0_b);
  const double e_inp = rel_err(once_inp, want_inp), e_w = rel_err(once_w, want_w),
               e_b = rel_err(once_b, want_b);
  INFO("FD rel err dinp " << e_inp << " dweight " << e_w << " dbias " << e_b);
  CHECK(e_inp < 1e-6);
  CHECK(e_w < 1e-6);
  CHECK(e_b < 1e-6);

  backward();  // all three outputs are += (dinp carries the residual stream's gradient)
  for (size_t i = 0; i < dinp.size(); i++) CHECK(dinp[i] == Approx(g0_inp[i] + 2 * once_inp[i]));
  for (int c = 0; c < C; c++) CHECK(dw[c] == Approx(g0_w[c] + 2 * once_w[c]));
  for (int c = 0; c < C; c++) CHECK(db[c] == Approx(g0_b[c] + 2 * once_b[c]));
}

TEST_CASE("layernorm backward's dinp_colsum is the column sums of dinp as left") {
  const int N = 9, C = 70;
  std::mt19937 rng(11);
  const Vec inp = random_vec(size_t(N) * C, rng, 2.0), w = random_vec(C, rng),
            b = random_vec(C, rng), dout = random_vec(inp.size(), rng),
            dinp0 = random_vec(inp.size(), rng);
  Vec out(inp.size()), mean(N), rstd(N);
  ref::layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N,
                         C);
  Vec dinp = dinp0, colsum(C, 7.0);
  ref::layernorm_backward<double>(dinp.data(), nullptr, nullptr, dout.data(),
                          inp.data(), w.data(), mean.data(), rstd.data(), N, C, colsum.data());
  Vec plain = dinp0;  // without the sums: the same dinp
  ref::layernorm_backward<double>(plain.data(), nullptr, nullptr, dout.data(),
                          inp.data(), w.data(), mean.data(), rstd.data(), N, C);
  CHECK(dinp == plain);
  for (int c = 0; c < C; c++) {
    double s = 0;  // the accumulated gradient, not just this call's part
    for (int i = 0; i < N; i++) s += dinp[size_t(i) * C + c];
    CHECK(colsum[c] == s);
  }
  // CpuOps: the same sums rounded to float, so its matmul's dbias is unchanged bit for bit.
  const auto inp_f = to_float(inp), w_f = to_float(w), dout_f = to_float(dout);
  const auto mean_f = to_float(mean), rstd_f = to_float(rstd);
  std::vector<float> dinp_f = to_float(dinp0), colsum_f(C, 7.f);
  CpuOps ops;
  ops.layernorm_backward(dinp_f.data(), nullptr, nullptr, dout_f.data(), inp_f.data(), w_f.data(),
                         mean_f.data(), rstd_f.data(), N, C, colsum_f.data());
  for (int c = 0; c < C; c++) {
    double s = 0;
    for (int i = 0; i < N; i++) s += dinp_f[size_t(i) * C + c];
    CHECK(colsum_f[c] == float(s));
  }
}

TEST_CASE("CpuOps layernorm matches the double reference, for any thread count") {
  // C = 520 spans nine of the backward's 64-column blocks, the last one partial;
  // N * C is above kParallelMinWork, so the loops really run threaded.
  const int N = 70, C = 520;
  std::mt19937 rng(4);
  const Vec inp = random_vec(size_t(N) * C, rng, 3.0), w = random_vec(C, rng),
            b = random_vec(C, rng), dout = random_vec(inp.size(), rng);
  Vec out(inp.size()), mean(N), rstd(N), dinp(inp.size(), 0.0), dw(C, 0.0), db(C, 0.0);
  ref::layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N,
                         C);
  ref::layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                          mean.data(), rstd.data(), N, C);

  const auto inp_f = to_float(inp), w_f = to_float(w), b_f = to_float(b), dout_f = to_float(dout);
  struct Result { std::vector<float> out, mean, rstd, dinp, dw, db; };
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    Result r{std::vector<float>(inp.size()), std::vector<float>(N), std::vector<float>(N),
             std::vector<float>(inp.size()), std::vector<float>(C), std::vector<float>(C)};
    CpuOps ops;
    ops.layernorm_forward(r.out.data(), r.mean.data(), r.rstd.data(), inp_f.data(), w_f.data(),
                          b_f.data(), N, C);
    ops.layernorm_backward(r.dinp.data(), r.dw.data(), r.db.data(), dout_f.data(), inp_f.data(),
                           w_f.data(), r.mean.data(), r.rstd.data(), N, C);
    return r;
  };
  const int max_threads = omp_get_max_threads();
  const Result one = run(1), three = run(3);
  omp_set_num_threads(max_threads);
  CHECK(rel_err(one.out, out) < 1e-5);
  CHECK(rel_err(one.rstd, rstd) < 1e-5);
  CHECK(rel_err(one.dinp, dinp) < 1e-5);
  CHECK(rel_err(one.dw, dw) < 1e-5);
  CHECK(rel_err(one.db, db) < 1e-5);
  CHECK(one.out == three.out);
  CHECK(one.dinp == three.dinp);
  CHECK(one.dw == three.dw);
  CHECK(one.db == three.db);
}

TEMPLATE_TEST_CASE("CudaOps layernorm matches the reference (odd sizes, accumulation)", "[gpu]",
                   float, bf16) {
  using R = RefScalar<TestType>;
  Gpu gpu;
  auto ops = make_cuda_ops<TestType>(*gpu.dev);
  for (const auto& [N, C] : {std::pair{1, 768}, std::pair{300, 1024}, std::pair{37, 100},
                             std::pair{130, 1600}, std::pair{64, 2048}}) {
    INFO("N " << N << " C " << C);
    std::mt19937 rng(N * 7 + C);
    Vec inp = random_vec(size_t(N) * C, rng, 2.0);
    for (double& x : inp) x += 0.5;  // a nonzero mean, as in the residual stream
    inp = rounded<TestType>(inp);
    const Vec w = rounded<TestType>(random_vec(C, rng)), b = rounded<TestType>(random_vec(C, rng)),
              dout = rounded<TestType>(random_vec(inp.size(), rng)),
              dinp0 = rounded<TestType>(random_vec(inp.size(), rng)),
              dw0 = rounded<TestType>(random_vec(C, rng)),
              db0 = rounded<TestType>(random_vec(C, rng));
    auto d_inp = gpu.upload<TestType>(inp), d_w = gpu.upload<TestType>(w),
         d_b = gpu.upload<TestType>(b), d_out = gpu.zeros<TestType>(inp.size());
    auto d_mean = gpu.zeros<float>(N), d_rstd = gpu.zeros<float>(N);
    ops->layernorm_forward(d_out.get(), d_mean.get(), d_rstd.get(), d_inp.get(), d_w.get(),
                           d_b.get(), N, C);
    std::vector<R> out(inp.size()), mean(N), rstd(N);
    ref::layernorm_forward<R>(out.data(), mean.data(), rstd.data(), as<R>(inp).data(),
                              as<R>(w).data(), as<R>(b).data(), N, C);
    CHECK(rel_err(gpu.download(d_out, out.size()), out) <= tolerance<TestType>());
    CHECK(rel_err(gpu.download(d_mean, N), mean) <= stat_tolerance<TestType>());
    CHECK(rel_err(gpu.download(d_rstd, N), rstd) <= stat_tolerance<TestType>());
    // Ones-padded rows (src/ops.hpp), where the GPU pads them: the same values bit for bit,
    // then 1, 0, ..., 0 over what was there.
    if (ops->pads_rows(C)) {
      const int P = C + kOnesPad;
      auto d_pad = gpu.upload<TestType>(Vec(size_t(N) * P, 7.0));
      ops->layernorm_forward(d_pad.get(), nullptr, nullptr, d_inp.get(), d_w.get(), d_b.get(),
                             N, C, true);
      const Vec plain = gpu.download(d_out, inp.size()), pad = gpu.download(d_pad, size_t(N) * P);
      size_t differ = 0;
      for (int i = 0; i < N; i++)
        for (int c = 0; c < P; c++)
          differ += pad[size_t(i) * P + c] != (c < C ? plain[size_t(i) * C + c] : c == C);
      CHECK(differ == 0);
    }

    // Both sides get the same fp32 statistics, as the model passes them on.
    const Vec mean_f = rounded<float>(to_double(mean)), rstd_f = rounded<float>(to_double(rstd));
    auto d_dout = gpu.upload<TestType>(dout), d_dinp = gpu.upload<TestType>(dinp0),
         d_dw = gpu.upload<TestType>(dw0), d_db = gpu.upload<TestType>(db0);
    auto d_mean_f = gpu.upload<float>(mean_f), d_rstd_f = gpu.upload<float>(rstd_f);
    ops->layernorm_backward(d_dinp.get(), d_dw.get(), d_db.get(), d_dout.get(), d_inp.get(),
                            d_w.get(), d_mean_f.get(), d_rstd_f.get(), N, C);
    std::vector<R> dinp = as<R>(dinp0), dw = as<R>(dw0), db = as<R>(db0);
    ref::layernorm_backward<R>(dinp.data(), dw.data(), db.data(), as<R>(dout).data(),
                               as<R>(inp).data(), as<R>(w).data(), as<R>(mean_f).data(),
                               as<R>(rstd_f).data(), N, C);
    CHECK(rel_err(gpu.download(d_dinp, dinp.size()), dinp) <= tolerance<TestType>());
    CHECK(rel_err(gpu.download(d_dw, C), dw) <= tolerance<TestType>());
    CHECK(rel_err(gpu.download(d_db, C), db) <= tolerance<TestType>());

    // Again with dinp_colsum, from the same starting gradients: the same dinp bit for bit
    // (rows do not depend on the sums), dweight/dbias to the reference (their partial rows
    // may be fewer, with more shared memory per block), and the column sums of the dinp it
    // stored, summed here in double: fp32 sums of the same values, so within 1e-5.
    auto d_dinp2 = gpu.upload<TestType>(dinp0), d_dw2 = gpu.upload<TestType>(dw0),
         d_db2 = gpu.upload<TestType>(db0);
    auto d_colsum = gpu.upload<float>(Vec(C, 7.0));  // overwritten
    ops->layernorm_backward(d_dinp2.get(), d_dw2.get(), d_db2.get(), d_dout.get(), d_inp.get(),
                            d_w.get(), d_mean_f.get(), d_rstd_f.get(), N, C, d_colsum.get());
    const Vec dinp2 = gpu.download(d_dinp2, dinp.size());
    CHECK(dinp2 == gpu.download(d_dinp, dinp.size()));
    CHECK(rel_err(gpu.download(d_dw2, C), dw) <= tolerance<TestType>());
    CHECK(rel_err(gpu.download(d_db2, C), db) <= tolerance<TestType>());
    Vec sums(C, 0.0);
    for (int i = 0; i < N; i++)
      for (int c = 0; c < C; c++) sums[c] += dinp2[size_t(i) * C + c];
    CHECK(rel_err(gpu.download(d_colsum, C), sums) <= 1e-5);
  }
}
