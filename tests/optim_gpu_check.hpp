// Shared by the [gpu] optimizer tests: runs make_cuda_optimizer<T> beside the CPU
// reference (make_optimizer, the oracle) on the same weights and gradients and measures
// how far apart they end. Host APIs only, so the tests compile in CPU-only builds too.
//
// What is compared: the weight CHANGE w_t - w_0 (the weights themselves would hide a
// wrong update under their own size), with rel_err = max |diff| / max |want| per tensor,
// and every state blob (same names and sizes as the reference's, so checkpoints move
// between CPU and GPU runs). Inputs are rounded to T first, so the reference sees the
// very numbers the kernel sees. Gradients are 100x smaller every third step, so update
// clipping is active on some steps and not on others.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>

#include "backend.hpp"
#include "op_check.hpp"
#include "optim_fixture.hpp"

namespace gpt2::test {

// Odd sizes (partial vectors, partial blocks), a GPT-2 MLP matrix, a long vector.
inline ParamTable gpu_shapes() {
  return table_of({spec(0, 37, 129), spec(1, 768, 3072), spec(2, 1, 1001)});
}

template <class T> T store_as(float x);
template <> inline float store_as<float>(float x) { return x; }
template <> inline bf16 store_as<bf16>(float x) { return float_to_bf16(x); }
inline float value_of(float x) { return x; }
inline float value_of(bf16 x) { return bf16_to_float(x); }

struct GpuComparison {
  double weights = 0;  // max error of w_t - w_0 relative to its max (rounding floor discounted)
  std::map<std::string, double> state;            // max rel_err per state blob
  std::map<std::string, std::vector<float>> cpu_state, gpu_state;  // at the last step
  size_t not_rounded = 0;  // bf16 + master: params that differ from bf16_rn(master)
  bool same_blobs = true;  // names and sizes equal to the reference's
  bool state_bytes_match = false;  // GPU ledger == optimizer_state_bytes
};

// `checks`: steps after which to compare (the last one ends the run). `handoff` > 0:
// after that step the reference's state is copied into the GPU optimizer (a CPU
// checkpoint resumed on the GPU). `scaled` (optimizers that scales_grads()): both sides
// update through update_many with a grad_scale that changes every step, as the clip
// coefficient does. `shift`: every param, master and gradient starts that many elements
// into its buffer (1: no pointer aligned for vector access, so the element path).
template <class T>
GpuComparison compare_with_reference(const json& cfg, const ParamTable& t, bool master,
                                     std::vector<int> checks = {1, 2, 10}, int handoff = 0,
                                     float lr = 0.05f, uint64_t seed = 11, bool scaled = false,
                                     size_t shift = 0) {
  CpuDevice cdev;
  auto ref = make_optimizer(cfg, t, cdev, seed);
  auto gdev = make_cuda_device(0);
  auto opt = make_cuda_optimizer<T>(cfg, t, *gdev, seed);
  if (scaled) REQUIRE((ref->scales_grads() && opt->scales_grads()));
  GpuComparison out;
  out.state_bytes_match = gdev->ledger().current[int(MemCategory::optimizer_state)] ==
                          optimizer_state_bytes(cfg, t);
  std::mt19937 rng{unsigned(seed)};
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  struct Tensor {
    std::vector<float> w0, w;
    DeviceBuffer<T> param, grad;
    DeviceBuffer<float> master;
  };
  std::vector<Tensor> ts;
  for (const ParamSpec& p : t.params) {
    Tensor x;
    std::vector<T> h(p.numel);
    for (size_t i = 0; i < p.numel; i++) h[i] = store_as<T>(u(rng)), x.w0.push_back(value_of(h[i]));
    x.w = x.w0;
    x.param = DeviceBuffer<T>(*gdev, p.numel + shift, MemCategory::params, "test params");
    x.grad = DeviceBuffer<T>(*gdev, p.numel + shift, MemCategory::grads, "test grads");
    gdev->to_device(x.param.get() + shift, h.data(), p.numel * sizeof(T));
    if (master) {
      x.master = DeviceBuffer<float>(*gdev, p.numel + shift, MemCategory::master_weights,
                                     "test master");
      gdev->to_device(x.master.get() + shift, x.w0.data(), p.numel * sizeof(float));
    }
    ts.push_back(std::move(x));
  }
  const auto blobs = [&]() {
    std::vector<StateBlob> c = ref->state(), g = opt->state();
    out.same_blobs = out.same_blobs && c.size() == g.size();
    for (size_t b = 0; b < c.size() && b < g.size(); b++)
      out.same_blobs = out.same_blobs && c[b].name == g[b].name && c[b].bytes == g[b].bytes;
    return std::make_pair(c, g);
  };
  for (int s = 1; s <= checks.back(); s++) {
    ref->begin_step(s, lr), opt->begin_step(s, lr);
    const float scale = s % 3 == 0 ? 0.01f : 1.0f;
    const float grad_scale = scaled ? 1.0f / (1.0f + 0.7f * float(s)) : 1.0f;
    for (size_t k = 0; k < ts.size(); k++) {
      const ParamSpec& p = t.params[k];
      std::vector<T> g(p.numel);
      std::vector<float> gf(p.numel);
      for (size_t i = 0; i < p.numel; i++) g[i] = store_as<T>(scale * u(rng)), gf[i] = value_of(g[i]);
      T* const grad = ts[k].grad.get() + shift;
      T* const param = ts[k].param.get() + shift;
      float* const mw = master ? ts[k].master.get() + shift : nullptr;
      gdev->to_device(grad, g.data(), p.numel * sizeof(T));
      if (scaled) {
        ref->update_many({{&p, ts[k].w.data(), nullptr, gf.data(), grad_scale}});
        opt->update_many({{&p, param, mw, grad, grad_scale}});
      } else {
        ref->update(p, ts[k].w.data(), nullptr, gf.data());
        opt->update(p, param, mw, grad);
      }
    }
    if (s == handoff) {
      auto [c, g] = blobs();
      for (size_t b = 0; b < c.size() && b < g.size(); b++)
        gdev->to_device(g[b].data, c[b].data, std::min(c[b].bytes, g[b].bytes));
    }
    if (std::find(checks.begin(), checks.end(), s) == checks.end()) continue;
    for (size_t k = 0; k < ts.size(); k++) {
      const size_t n = t.params[k].numel;
      std::vector<float> w(n);
      std::vector<T> param(n);
      gdev->to_host(param.data(), ts[k].param.get() + shift, n * sizeof(T));
      if (master) gdev->to_host(w.data(), ts[k].master.get() + shift, n * sizeof(float));
      for (size_t i = 0; i < n; i++) {
        if (!master) w[i] = value_of(param[i]);
        else if (value_of(param[i]) != value_of(store_as<T>(w[i])))
          out.not_rounded++;
      }
      // Both sides keep w in fp32 and round it independently each step: the reference
      // once (half an ulp), the kernel's w * keep - x up to twice (an ulp); an ulp of w is
      // at most 2^-23 |w|, so the two may be 3 * 2^-24 * max|w| apart per step whatever the
      // update. That floor is discounted, so small steps (momentum, relative_step) are
      // held to the same 1e-5 as large ones.
      double diff = 0, scale = 0, w_max = 0;
      for (size_t i = 0; i < n; i++) {
        diff = std::max(diff, std::abs(double(w[i]) - ts[k].w[i]));
        scale = std::max(scale, std::abs(double(ts[k].w[i]) - ts[k].w0[i]));
        w_max = std::max(w_max, double(std::abs(ts[k].w[i])));
      }
      const double floor = 3.0 * s * std::ldexp(w_max, -24);
      out.weights = std::max(out.weights, std::max(0.0, diff - floor) / scale);
    }
    auto [c, g] = blobs();
    for (size_t b = 0; b < c.size() && b < g.size(); b++) {
      const size_t n = std::min(c[b].bytes, g[b].bytes) / sizeof(float);
      std::vector<float> gv(n), cv(static_cast<float*>(c[b].data), static_cast<float*>(c[b].data) + n);
      gdev->to_host(gv.data(), g[b].data, n * sizeof(float));
      out.state[c[b].name] = std::max(out.state[c[b].name], rel_err(gv, cv));
      out.cpu_state[c[b].name] = cv, out.gpu_state[c[b].name] = gv;
    }
  }
  return out;
}

// The largest state error over blobs whose name does not contain `skip` (if given).
inline double max_state_err(const GpuComparison& c, const std::string& skip = "") {
  double e = 0;
  for (const auto& [name, err] : c.state)
    if (skip.empty() || name.find(skip) == std::string::npos) e = std::max(e, err);
  return e;
}

// Two GPU optimizers: after `split` steps the first's state is copied into the second
// (device -> host -> device, as a checkpoint does); both run `more` steps on the same
// gradients. True if their weights end bit-identical.
inline bool gpu_state_round_trips(const json& cfg, int split, int more, bool restore = true) {
  const ParamTable t = tiny_table();
  auto dev = make_cuda_device(0);
  auto a = make_cuda_optimizer<float>(cfg, t, *dev, 3), b = make_cuda_optimizer<float>(cfg, t, *dev, 3);
  std::vector<DeviceBuffer<float>> wa, wb, g;
  for (const ParamSpec& p : t.params) {
    const std::vector<float> w = p.id == 0 ? tiny_w_matrix() : tiny_w_vector();
    wa.emplace_back(*dev, p.numel, MemCategory::params, "a"), wb.emplace_back(*dev, p.numel, MemCategory::params, "b");
    g.emplace_back(*dev, p.numel, MemCategory::grads, "g");
    dev->to_device(wa.back().get(), w.data(), w.size() * 4);
  }
  auto step = [&](Optimizer<float>& o, std::vector<DeviceBuffer<float>>& w, int s) {
    o.begin_step(s, 0.01f);
    for (const ParamSpec& p : t.params) {
      const std::vector<float> h = p.id == 0 ? tiny_g_matrix(s) : tiny_g_vector(s);
      dev->to_device(g[p.id].get(), h.data(), h.size() * 4);
      o.update(p, w[p.id].get(), nullptr, g[p.id].get());
    }
  };
  for (int s = 1; s <= split; s++) step(*a, wa, s);
  const auto sa = a->state(), sb = b->state();
  if (sa.size() != sb.size()) return false;
  for (size_t i = 0; i < sa.size(); i++) {
    if (sa[i].bytes != sb[i].bytes || sa[i].name != sb[i].name) return false;
    std::vector<char> h(sa[i].bytes);
    dev->to_host(h.data(), sa[i].data, h.size());
    if (restore) dev->to_device(sb[i].data, h.data(), h.size());
  }
  for (const ParamSpec& p : t.params) {
    std::vector<float> h(p.numel);
    dev->to_host(h.data(), wa[p.id].get(), p.numel * 4);
    dev->to_device(wb[p.id].get(), h.data(), p.numel * 4);
  }
  for (int s = split + 1; s <= split + more; s++) step(*a, wa, s), step(*b, wb, s);
  for (const ParamSpec& p : t.params) {
    std::vector<float> x(p.numel), y(p.numel);
    dev->to_host(x.data(), wa[p.id].get(), p.numel * 4), dev->to_host(y.data(), wb[p.id].get(), p.numel * 4);
    if (x != y) return false;
  }
  return true;
}

// The CUDA optimizer against the CPU reference:
// fp32 after 1, 2 and 10 steps on odd and GPT-2 shapes, bf16 + master (master as the
// fp32 run, param == bf16_rn(master) exactly), a CPU checkpoint resumed on the GPU, and
// GPU state round-trips. 1e-5: both sides compute in fp32 with double (reference) or
// double/fp32 (kernel) sums, ~1e-6 apart after 10 steps; any wrong term is far larger.
// An optimizer that scales_grads() against its CPU reference, both given a grad_scale
// that changes every step: fp32 and bf16 (master weights), aligned buffers (the 16-byte
// path) and buffers one element in (the element path).
inline void check_gpu_grad_scale(const json& cfg) {
  for (size_t shift : {0, 1}) {
    INFO((shift == 0 ? "aligned buffers" : "buffers one element in"));
    const auto f = compare_with_reference<float>(cfg, gpu_shapes(), false, {1, 2, 10}, 0, 0.05f, 11,
                                                 true, shift);
    CHECK(f.weights <= 1e-5);
    CHECK(max_state_err(f) <= 1e-5);
    const auto b = compare_with_reference<bf16>(cfg, gpu_shapes(), true, {1, 2, 10}, 0, 0.05f, 11,
                                                true, shift);
    CHECK(b.weights <= 1e-5);
    CHECK(b.not_rounded == 0);
  }
}

inline void check_gpu_against_reference(const json& cfg) {
  const auto f = compare_with_reference<float>(cfg, gpu_shapes(), false);
  CHECK(f.weights <= 1e-5);
  CHECK(max_state_err(f) <= 1e-5);
  CHECK(f.same_blobs);
  CHECK(f.state_bytes_match);
  const auto b = compare_with_reference<bf16>(cfg, gpu_shapes(), true);
  CHECK(b.weights <= 1e-5);
  CHECK(b.not_rounded == 0);
  CHECK(compare_with_reference<float>(cfg, gpu_shapes(), false, {4}, 2).weights <= 1e-5);
  CHECK(gpu_state_round_trips(cfg, 2, 2));
}

}  // namespace gpt2::test
