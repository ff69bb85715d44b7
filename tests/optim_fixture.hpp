// Shared by the optimizer tests: the default config with one optimizer selected, and a
// tiny "model" of a 2x3 matrix (id 0, decayed) and a length-3 vector (id 1, not decayed).
#pragma once
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "config.hpp"
#include "optimizer.hpp"

namespace gpt2::test {

inline json optimizer_cfg(const std::string& name) {
  json cfg = json::parse(kDefaultConfig);
  cfg["optimizer"]["name"] = name;
  return cfg;
}

inline ParamSpec spec(int id, int64_t rows, int64_t cols) {
  ParamSpec p;
  p.id = id;
  p.kind = rows > 1 ? ParamKind::qkvw : ParamKind::qkvb;
  p.layer = 0;
  p.name = rows > 1 ? "matrix" + std::to_string(id) : "vector" + std::to_string(id);
  p.rows = rows;
  p.cols = cols;
  p.offset = 0;
  p.numel = size_t(rows * cols);
  return p;
}

// A ParamTable holding just the given tensors (ids must be 0, 1, ...).
inline ParamTable table_of(const std::vector<ParamSpec>& specs) {
  ModelConfig c = ModelConfig::from_depth(1);
  c.vocab_size = c.padded_vocab_size = 8, c.max_seq_len = 4;
  ParamTable t(c);
  t.params = specs;
  return t;
}

inline ParamTable tiny_table() { return table_of({spec(0, 2, 3), spec(1, 1, 3)}); }

// Fixed inputs of the hand-derived tests: weights and three steps of gradients.
inline std::vector<float> tiny_w_matrix() { return {0.5f, -0.3f, 0.8f, 0.1f, -0.7f, 0.2f}; }
inline std::vector<float> tiny_w_vector() { return {0.4f, -0.2f, 0.6f}; }
inline std::vector<float> tiny_g_matrix(int step, float shrink = 1.0f) {
  std::vector<float> g = {0.2f, -0.1f, 0.4f, -0.3f, 0.05f, 0.15f};
  const float scale = std::pow(shrink, float(step - 1));
  for (size_t i = 0; i < g.size(); i++) g[i] = (g[i] * float(step) + 0.01f * float(i) - 0.02f) * scale;
  return g;
}
inline std::vector<float> tiny_g_vector(int step, float shrink = 1.0f) {
  const float scale = std::pow(shrink, float(step - 1));
  return {(0.3f - 0.1f * step) * scale, -0.2f * scale, 0.1f * step * scale};
}

inline std::vector<double> to_double(const std::vector<float>& x) { return {x.begin(), x.end()}; }

// Runs `steps` steps on the tiny table with the given lr per step; returns the weights.
struct TinyRun {
  std::vector<float> wm = tiny_w_matrix(), wv = tiny_w_vector();
};
// Gradients of step s are multiplied by shrink^(s-1): shrink < 1 makes later updates
// fall below the RMS clipping threshold, so unclipped steps get tested too.
inline TinyRun run_tiny(Optimizer<float>& opt, int steps, double lr, float shrink = 1.0f) {
  const ParamTable t = tiny_table();
  TinyRun r;
  for (int s = 1; s <= steps; s++) {
    opt.begin_step(s, float(lr));
    std::vector<float> gm = tiny_g_matrix(s, shrink), gv = tiny_g_vector(s, shrink);
    opt.update(t.params[0], r.wm.data(), nullptr, gm.data());
    opt.update(t.params[1], r.wv.data(), nullptr, gv.data());
  }
  return r;
}

// Minimizes f(W) = 0.5 * sum_i c_i (W_i - target_i)^2 over a 4x6 matrix and a length-6
// vector; returns (initial loss, final loss).
inline std::pair<double, double> convex_descent(const json& cfg, int steps, double lr) {
  const ParamTable t = table_of({spec(0, 4, 6), spec(1, 1, 6)});
  CpuDevice dev;
  auto opt = make_optimizer(cfg, t, dev, 7);
  std::vector<std::vector<float>> w(2), target(2);
  for (int k = 0; k < 2; k++)
    for (size_t i = 0; i < t.params[k].numel; i++) {
      w[k].push_back(0.3f * std::sin(1.0f + float(i) + 5.0f * k));
      target[k].push_back(0.5f * std::cos(2.0f * float(i) + k));
    }
  auto loss = [&]() {
    double l = 0;
    for (int k = 0; k < 2; k++)
      for (size_t i = 0; i < w[k].size(); i++)
        l += 0.5 * (1.0 + 0.1 * i) * std::pow(w[k][i] - target[k][i], 2);
    return l;
  };
  const double first = loss();
  for (int s = 1; s <= steps; s++) {
    opt->begin_step(s, float(lr));
    for (int k = 0; k < 2; k++) {
      std::vector<float> g(w[k].size());
      for (size_t i = 0; i < g.size(); i++) g[i] = float((1.0 + 0.1 * i) * (w[k][i] - target[k][i]));
      opt->update(t.params[k], w[k].data(), nullptr, g.data());
    }
  }
  return {first, loss()};
}

// Runs two copies of an optimizer; after `split` steps copies the first's state into
// the second (checkpoint restore, skipped when !restore), runs both `more` steps on the
// same gradients and returns whether the weights end bit-identical.
inline bool state_round_trips(const json& cfg, int split, int more, bool restore = true) {
  const ParamTable t = tiny_table();
  CpuDevice dev;
  auto a = make_optimizer(cfg, t, dev, 3);
  auto b = make_optimizer(cfg, t, dev, 3);
  TinyRun wa;
  auto step = [&](Optimizer<float>& o, TinyRun& w, int s) {
    o.begin_step(s, 0.01f);
    std::vector<float> gm = tiny_g_matrix(s), gv = tiny_g_vector(s);
    o.update(t.params[0], w.wm.data(), nullptr, gm.data());
    o.update(t.params[1], w.wv.data(), nullptr, gv.data());
  };
  for (int s = 1; s <= split; s++) step(*a, wa, s);
  const auto sa = a->state(), sb = b->state();
  if (sa.size() != sb.size()) return false;
  for (size_t i = 0; i < sa.size(); i++) {
    if (sa[i].bytes != sb[i].bytes || sa[i].name != sb[i].name) return false;
    if (restore) std::memcpy(sb[i].data, sa[i].data, sa[i].bytes);
  }
  TinyRun wb = wa;
  for (int s = split + 1; s <= split + more; s++) step(*a, wa, s), step(*b, wb, s);
  return wa.wm == wb.wm && wa.wv == wb.wv;
}

// For an optimizer that scales_grads(): whether update_many with a grad_scale that
// changes every step (as the clip coefficient does) leaves the weights and state of
// update() on fp32 g * scale, the very number the pipeline's clip_scale would store, bit
// for bit; and other weights than update() on the raw g (an ignored grad_scale; Adam and
// CAME are invariant, but for eps, to a constant scale, under which it would pass unseen).
inline bool grad_scale_matches_prescaled(const json& cfg) {
  const ParamTable t = table_of({spec(0, 37, 29), spec(1, 1, 101)});
  CpuDevice dev;
  auto scaled = make_optimizer(cfg, t, dev, 0), first = make_optimizer(cfg, t, dev, 0),
       unscaled = make_optimizer(cfg, t, dev, 0);
  if (!scaled->scales_grads()) return false;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<std::vector<float>> w_scaled, w_first, w_unscaled;
  for (const ParamSpec& p : t.params) {
    std::vector<float> w(p.numel);
    for (float& x : w) x = u(rng);
    w_scaled.push_back(w), w_first.push_back(w), w_unscaled.push_back(w);
  }
  for (int s = 1; s <= 4; s++) {
    const float scale = 1.0f / (1.0f + 0.7f * float(s));
    scaled->begin_step(s, 0.01f), first->begin_step(s, 0.01f), unscaled->begin_step(s, 0.01f);
    std::vector<std::vector<float>> g(t.params.size());
    std::vector<TensorUpdate<float>> us;
    for (const ParamSpec& p : t.params) {
      for (size_t i = 0; i < p.numel; i++) g[p.id].push_back(u(rng));
      std::vector<float> pre = g[p.id], raw = g[p.id];
      for (float& x : pre) x *= scale;
      first->update(p, w_first[p.id].data(), nullptr, pre.data());
      unscaled->update(p, w_unscaled[p.id].data(), nullptr, raw.data());
      us.push_back({&p, w_scaled[p.id].data(), nullptr, g[p.id].data(), scale});
    }
    scaled->update_many(us);
  }
  const std::vector<StateBlob> a = scaled->state(), b = first->state();
  bool same_state = a.size() == b.size();
  for (size_t i = 0; same_state && i < a.size(); i++)
    same_state = a[i].bytes == b[i].bytes && std::memcmp(a[i].data, b[i].data, a[i].bytes) == 0;
  return w_scaled == w_first && same_state && w_scaled != w_unscaled;
}

}  // namespace gpt2::test
