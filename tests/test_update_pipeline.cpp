// The update pipeline: fused and after_backward give bit-identical weights for every
// optimizer (clipping included), every optimizer's own scaling of clipped gradients, NaN
// handling, gradient accumulation, the update's stopwatch, and a tiny model memorizing one
// batch.
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <thread>

#include "backend.hpp"
#include "catch.hpp"
#include "reference/cpu_ops.hpp"
#include "update_pipeline.hpp"

using namespace gpt2;

namespace {

json tiny(const std::string& optimizer, std::vector<std::string> extra = {}) {
  std::vector<std::string> o = {"model.depth=2", "model.channels=16", "model.heads=2",
                                "model.max_seq_len=16", "model.vocab_size=50",
                                "model.padded_vocab_size=64", "data.batch_size=2",
                                "data.seq_len=8", "train.device=\"cpu\"",
                                "optimizer.name=\"" + optimizer + "\"", "optimizer.lr=1e-2",
                                "optimizer.weight_decay=0.1"};
  o.insert(o.end(), extra.begin(), extra.end());
  return load_config("", o);
}

// CpuGradOps that counts its clip_scale calls.
class CountingGradOps final : public GradOps<float> {
 public:
  explicit CountingGradOps(size_t slots) : cpu_(slots) {}
  void sum_squares(const std::vector<GradSlice<float>>& slices) override {
    cpu_.sum_squares(slices);
  }
  std::vector<double> take_squares() override { return cpu_.take_squares(); }
  void clip_scale(const std::vector<GradSlice<float>>& slices, float clip_value,
                  float scale) override {
    clip_scale_calls++;
    cpu_.clip_scale(slices, clip_value, scale);
  }
  int clip_scale_calls = 0;

 private:
  CpuGradOps cpu_;
};

// Another optimizer behind a wrapper that can hide its scales_grads(), so that the
// pipeline scales gradients for it with clip_scale as it does for the optimizers that do
// not scale them themselves, or sleep sleep_ms on the host before each update_many, so
// that a stopwatch around the update must read at least that.
template <class T>
class WrappedOptimizer final : public Optimizer<T> {
 public:
  WrappedOptimizer(std::unique_ptr<Optimizer<T>> o, bool hide_scaling, int sleep_ms = 0)
      : o_(std::move(o)), hide_scaling_(hide_scaling), sleep_ms_(sleep_ms) {}
  void begin_step(int64_t t, float lr) override { o_->begin_step(t, lr); }
  void update(const ParamSpec& p, T* param, float* master, T* grad) override {
    o_->update(p, param, master, grad);
  }
  void update_many(const std::vector<TensorUpdate<T>>& us) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms_));
    o_->update_many(us);
  }
  bool scales_grads() const override { return !hide_scaling_ && o_->scales_grads(); }
  std::vector<StateBlob> state() override { return o_->state(); }

 private:
  std::unique_ptr<Optimizer<T>> o_;
  bool hide_scaling_;
  int sleep_ms_;
};
constexpr int kSlowMs = 30;

// A CPU model of batch B x 8 with its optimizer and pipeline, weights from init_params.
// !opt_scales: the optimizer's scales_grads() is hidden from the pipeline.
struct CpuRun {
  CpuDevice dev;
  CpuOps ops;
  GPT2<float> model;
  std::unique_ptr<Optimizer<float>> opt;
  CountingGradOps gops;
  UpdatePipeline<float> pipe;
  CpuRun(const json& cfg, int B, uint64_t init_seed, bool opt_scales = true)
      : model(model_config(cfg), ops, dev, B, 8, 0, 0, cfg["train"]["late_wte_grad"].get<bool>()),
        opt(opt_scales ? make_optimizer(cfg, model.table, dev, 5)
                       : std::make_unique<WrappedOptimizer<float>>(
                             make_optimizer(cfg, model.table, dev, 5), true)),
        gops(model.table.params.size()),
        pipe(cfg, model, *opt, gops, dev) {
    pipe.set_weights(init_params(model.table, init_seed));
  }
};

// Runs `steps` optimizer steps from a fixed init on a fixed stream of random batches.
std::vector<float> train_steps(CpuRun& run, int steps) {
  std::mt19937 rng(17);
  std::uniform_int_distribution<int> tok(0, 49);
  for (int t = 1; t <= steps; t++) {
    const auto r = run.pipe.step(t, 1e-2f * (1.0f - 0.03f * t), [&](int* in, int* tg) {
      for (int i = 0; i < 16; i++) in[i] = tok(rng), tg[i] = tok(rng);
    });
    REQUIRE(std::isfinite(r.loss));
  }
  return run.model.get_params();
}

std::vector<float> train_steps(const json& cfg, int steps) {
  CpuRun run(cfg, 2, 1);
  return train_steps(run, steps);
}

// CpuRun's GPU twin: batch 2 x 8 on GPU 0, the CUDA optimizer, weights from init_params.
template <class T>
struct GpuRun {
  std::unique_ptr<Device> dev = make_cuda_device(0);
  std::unique_ptr<Ops<T>> ops = make_cuda_ops<T>(*dev);
  GPT2<T> model;
  std::unique_ptr<Optimizer<T>> opt;
  std::unique_ptr<GradOps<T>> gops;
  UpdatePipeline<T> pipe;
  explicit GpuRun(const json& cfg)
      : model(model_config(cfg), *ops, *dev, 2, 8, 0, 0,
              cfg["train"]["late_wte_grad"].get<bool>()),
        opt(make_cuda_optimizer<T>(cfg, model.table, *dev, 5)),
        gops(make_cuda_grad_ops<T>(model.table.params.size(), *dev)),
        pipe(cfg, model, *opt, *gops, *dev) {
    pipe.set_weights(init_params(model.table, 1));
  }
  // `steps` steps at lr 1e-2 (1 - decay t) on a fixed stream of random batches; their losses.
  std::vector<float> train(int steps, float decay = 0) {
    std::mt19937 rng(17);
    std::uniform_int_distribution<int> tok(0, 49);
    auto batch = [&](int* in, int* tg) {
      for (int i = 0; i < 16; i++) in[i] = tok(rng), tg[i] = tok(rng);
    };
    std::vector<float> losses;
    for (int t = 1; t <= steps; t++)
      losses.push_back(pipe.step(t, 1e-2f * (1 - decay * t), batch).loss);
    return losses;
  }
};

// Six bf16 steps of `name` on the GPU with `sets`, train.cuda_graph on and off: the graph
// must be replaying, and the losses and weights bit-identical (the same kernels on the
// same numbers).
void check_graph_exact(const std::string& name, std::vector<std::string> sets, float decay) {
  auto run = [&](bool graph, std::vector<float>* losses) {
    INFO("train.cuda_graph " << graph);
    std::vector<std::string> o = sets;
    o.insert(o.end(), {"train.device=\"cuda\"", "train.precision=\"bf16\"", "model.channels=64",
                       std::string("train.cuda_graph=") + (graph ? "true" : "false")});
    GpuRun<bf16> r(tiny(name, o));
    *losses = r.train(6, decay);
    CHECK(r.pipe.replaying() == graph);
    return r.pipe.weights();
  };
  std::vector<float> loss_graph, loss_plain;
  const std::vector<float> graph = run(true, &loss_graph), plain = run(false, &loss_plain);
  CHECK(loss_graph == loss_plain);
  size_t differ = 0;
  for (size_t i = 0; i < graph.size(); i++) differ += graph[i] != plain[i];
  CHECK(differ == 0);
}

}  // namespace

TEST_CASE("fused and after_backward updates give bit-identical weights after 20 steps") {
  for (const char* name : {"adamw", "lomo", "adalomo", "adafactor", "came", "adapprox"}) {
    INFO(name);
    const std::vector<float> fused =
        train_steps(tiny(name, {"optimizer.update=\"fused\"", "train.grad_clip=0"}), 20);
    const std::vector<float> after =
        train_steps(tiny(name, {"optimizer.update=\"after_backward\"", "train.grad_clip=0"}), 20);
    CHECK(fused == after);
    const std::vector<float> init = init_params(ParamTable(model_config(tiny(name))), 1);
    CHECK(fused != init);  // the optimizer really moved the weights
  }
}

TEST_CASE("late_wte_grad gives the fused weights bit for bit, one pass or two-pass clipping") {
  for (const char* name : {"adamw", "lomo", "adalomo", "adafactor", "came", "adapprox"}) {
    for (bool two_pass : {false, true}) {
      INFO(name << (two_pass ? ", two-pass clipping" : ", one pass"));
      const std::vector<std::string> o = {
          "optimizer.update=\"fused\"", two_pass ? "train.grad_clip=0.5" : "train.grad_clip=0",
          two_pass ? "train.two_pass_clip=true" : "train.two_pass_clip=false"};
      std::vector<std::string> late = o;
      late.push_back("train.late_wte_grad=true");
      CHECK(train_steps(tiny(name, late), 8) == train_steps(tiny(name, o), 8));
    }
  }
}

TEST_CASE("two-pass clipping in fused mode equals global clipping after backward") {
  for (const char* name : {"lomo", "adalomo", "adamw"}) {
    INFO(name);
    const std::vector<std::string> clip = {"train.grad_clip=0.05", "train.grad_clip_value=0.01"};
    auto with = [&](std::vector<std::string> a) {
      a.insert(a.end(), clip.begin(), clip.end());
      return a;
    };
    const auto fused = train_steps(
        tiny(name, with({"optimizer.update=\"fused\"", "train.two_pass_clip=true"})), 10);
    const auto after = train_steps(tiny(name, with({"optimizer.update=\"after_backward\""})), 10);
    const auto unclipped =
        train_steps(tiny(name, {"optimizer.update=\"after_backward\"", "train.grad_clip=0"}), 10);
    CHECK(fused == after);
    CHECK(after != unclipped);  // the clip was active
  }
}

TEST_CASE(
    "Every optimizer scales clipped gradients itself: the weights of clip_scale then update") {
  // fp32: an optimizer's g * coef is the product clip_scale stores, so the two routes agree
  // bit for bit. The coefficient changes every step, so an optimizer that ignored
  // grad_scale would end at other weights than the clip_scale route's.
  for (const char* name : {"adamw", "lomo", "adalomo", "adafactor", "came", "adapprox"}) {
    INFO(name);
    const std::vector<float> unclipped =
        train_steps(tiny(name, {"optimizer.update=\"after_backward\"", "train.grad_clip=0"}), 10);
    for (const char* mode : {"after_backward", "fused"}) {
      INFO(mode);
      const json cfg = tiny(name, {std::string("optimizer.update=\"") + mode + "\"",
                                   "train.grad_clip=0.05", "train.two_pass_clip=true"});
      CpuRun scaling(cfg, 2, 1), pipeline_scales(cfg, 2, 1, false);
      const std::vector<float> a = train_steps(scaling, 10), b = train_steps(pipeline_scales, 10);
      CHECK(scaling.gops.clip_scale_calls == 0);
      CHECK(pipeline_scales.gops.clip_scale_calls > 0);
      CHECK(a == b);
      CHECK(a != unclipped);  // the clip was active
    }
  }
  // A value clip comes before the scale, so the optimizers too get it from clip_scale.
  CpuRun value_clip(tiny("adamw", {"train.grad_clip=0.05", "train.grad_clip_value=0.01"}), 2, 1);
  train_steps(value_clip, 2);
  CHECK(value_clip.gops.clip_scale_calls > 0);
}

TEST_CASE("a non-finite loss stops before any weight changes, or skips the step") {
  for (const char* policy : {"stop", "skip"}) {
    const json cfg = tiny("adamw", {std::string("train.nan_policy=\"") + policy + "\""});
    CpuRun run(cfg, 2, 1);
    GPT2<float>& model = run.model;
    UpdatePipeline<float>& pipe = run.pipe;
    std::vector<float> w = init_params(model.table, 1);
    w[model.table.get(ParamKind::lnfb).offset] = std::numeric_limits<float>::quiet_NaN();
    pipe.set_weights(w);
    auto batch = [](int* in, int* tg) {
      for (int i = 0; i < 16; i++) in[i] = i, tg[i] = i + 1;
    };
    const std::vector<float> before = model.get_params();
    if (std::string(policy) == "stop") {
      REQUIRE_THROWS_WITH(pipe.step(7, 1e-3f, batch),
                          Catch::Contains("step 7") && Catch::Contains("nan_policy=skip"));
    } else {
      CHECK(pipe.step(7, 1e-3f, batch).skipped);
    }
    const std::vector<float> after = model.get_params();
    CHECK(std::memcmp(before.data(), after.data(), before.size() * 4) == 0);  // NaN-safe
  }
}

TEST_CASE("gradient accumulation over micro-batches equals one batch of the same tokens") {
  // Two micro-batches of 2x8 with dloss 1/32 each sum to the gradient of the 4x8 mean loss.
  const json one = load_config("", {"model.depth=1", "model.channels=16", "model.heads=2",
                                    "model.max_seq_len=8", "model.vocab_size=50",
                                    "model.padded_vocab_size=64", "data.batch_size=4",
                                    "data.seq_len=8", "optimizer.name=\"lomo\"",
                                    "optimizer.update=\"after_backward\"", "train.grad_clip=0"});
  json two = one;
  two["data"]["batch_size"] = 2;
  two["train"]["grad_accum_steps"] = 2;
  std::vector<int> tokens(64);
  for (int i = 0; i < 64; i++) tokens[i] = (i * 7 + 3) % 50;
  auto run = [&](const json& cfg) {
    const int B = cfg["data"]["batch_size"].get<int>();
    CpuRun r(cfg, B, 3);
    size_t at = 0;
    r.pipe.step(1, 0.5f, [&](int* in, int* tg) {
      for (int i = 0; i < B * 8; i++, at++) in[i] = tokens[at], tg[i] = tokens[at + 32];
    });
    return r.model.get_params();
  };
  const std::vector<float> a = run(one), b = run(two);
  const std::vector<float> init = init_params(ParamTable(model_config(one)), 3);
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); i++) {
    num += (a[i] - b[i]) * double(a[i] - b[i]);
    den += (a[i] - init[i]) * double(a[i] - init[i]);
  }
  CHECK(den > 0);
  CHECK(std::sqrt(num / den) < 1e-5);  // same sums in another order: fp32 rounding only
}

// Steps of `pipe` on random batches: each one's update_ms and the host's time for the step.
template <class Pipe>
std::vector<std::pair<double, double>> timed_steps(Pipe& pipe, int steps) {
  std::mt19937 rng(17);
  std::uniform_int_distribution<int> tok(0, 49);
  auto batch = [&](int* in, int* tg) {
    for (int i = 0; i < 16; i++) in[i] = tok(rng), tg[i] = tok(rng);
  };
  std::vector<std::pair<double, double>> out;
  for (int t = 1; t <= steps; t++) {
    const auto t0 = std::chrono::steady_clock::now();
    const double update_ms = pipe.step(t, 1e-2f, batch).update_ms;
    const std::chrono::duration<double, std::milli> host = std::chrono::steady_clock::now() - t0;
    out.push_back({update_ms, host.count()});
  }
  return out;
}

TEST_CASE("an after_backward step times its update; a fused one reports none") {
  const json cfg = tiny("adamw", {"optimizer.update=\"after_backward\""});
  CpuDevice dev;
  CpuOps ops;
  GPT2<float> model(model_config(cfg), ops, dev, 2, 8, 0, 0, false);
  WrappedOptimizer<float> opt(make_optimizer(cfg, model.table, dev, 5), false, kSlowMs);
  CpuGradOps gops(model.table.params.size());
  UpdatePipeline<float> pipe(cfg, model, opt, gops, dev);
  pipe.set_weights(init_params(model.table, 1));
  for (const auto& [update_ms, step_ms] : timed_steps(pipe, 3)) {
    CHECK(update_ms >= kSlowMs);
    CHECK(update_ms <= step_ms);
  }
  CpuRun fused(tiny("adamw", {"optimizer.update=\"fused\"", "train.grad_clip=0"}), 2, 1);
  for (const auto& step : timed_steps(fused.pipe, 2)) CHECK(step.first == -1);
}

TEST_CASE("a tiny model memorizes one batch") {
  CpuRun run(tiny("adamw", {"optimizer.lr=3e-3", "optimizer.weight_decay=0"}), 2, 1);
  UpdatePipeline<float>& pipe = run.pipe;
  std::vector<int> in(16), tg(16);
  std::mt19937 rng(4);
  for (int i = 0; i < 16; i++) in[i] = int(rng() % 50), tg[i] = int(rng() % 50);
  float loss = 0;
  int t = 1;
  for (; t <= 400 && !(loss < 0.1f && t > 1); t++)
    loss = pipe.step(t, 3e-3f, [&](int* i, int* g) {
      std::copy(in.begin(), in.end(), i), std::copy(tg.begin(), tg.end(), g);
    }).loss;
  WARN("loss " << loss << " after " << t - 1 << " steps");
  CHECK(loss < 0.1f);
}

TEST_CASE("on the GPU, fused and after_backward updates agree after 20 steps", "[gpu]") {
  // fp32 kernels: the two modes run the same kernels on the same gradients, but the
  // gradients come from different buffers (arena vs full), so cuBLAS may pick other
  // algorithms; the weights must still agree to fp32 rounding (1e-6 relative). Fused
  // with train.late_wte_grad recomputes the classifier's chunks (the same kernels on
  // the same numbers): same bound.
  for (const char* name : {"adamw", "lomo", "adalomo", "adafactor", "came", "adapprox"}) {
    INFO(name);
    auto run = [&](const char* update, bool late) {
      const json cfg = tiny(name, {std::string("optimizer.update=\"") + update + "\"",
                                   "train.grad_clip=0", "train.device=\"cuda\"",
                                   "train.precision=\"fp32\"", "model.channels=64",
                                   late ? "train.late_wte_grad=true" : "train.late_wte_grad=false"});
      GpuRun<float> r(cfg);
      r.train(20);
      return r.pipe.weights();
    };
    auto rel = [](const std::vector<float>& a, const std::vector<float>& b) {
      double num = 0, den = 0;
      for (size_t i = 0; i < a.size(); i++) {
        num += double(a[i] - b[i]) * (a[i] - b[i]);
        den += double(b[i]) * b[i];
      }
      return std::sqrt(num / den);
    };
    const std::vector<float> fused = run("fused", false), after = run("after_backward", false),
                             late = run("fused", true);
    CHECK(rel(fused, after) < 1e-6);
    INFO("late_wte_grad vs fused, relative RMS difference " << rel(late, fused));
    CHECK(rel(late, fused) < 1e-6);
  }
}

TEST_CASE("on the GPU, an after_backward step times its update on the device", "[gpu]") {
  // The events bracket update_many (its host sleep included) and are read after the
  // update has run: not less than the sleep, not more than the host's time for the step.
  const json cfg = tiny("adamw", {"optimizer.update=\"after_backward\"", "train.device=\"cuda\"",
                                  "train.precision=\"bf16\"", "model.channels=64"});
  std::unique_ptr<Device> dev = make_cuda_device(0);
  std::unique_ptr<Ops<bf16>> ops = make_cuda_ops<bf16>(*dev);
  GPT2<bf16> model(model_config(cfg), *ops, *dev, 2, 8, 0, 0, false);
  WrappedOptimizer<bf16> opt(make_cuda_optimizer<bf16>(cfg, model.table, *dev, 5), false, kSlowMs);
  std::unique_ptr<GradOps<bf16>> gops = make_cuda_grad_ops<bf16>(model.table.params.size(), *dev);
  UpdatePipeline<bf16> pipe(cfg, model, opt, *gops, *dev);
  pipe.set_weights(init_params(model.table, 1));
  for (const auto& [update_ms, step_ms] : timed_steps(pipe, 3)) {
    CHECK(update_ms >= kSlowMs);
    CHECK(update_ms <= step_ms);
  }
}

TEST_CASE("on the GPU, train.cuda_graph changes no weight and no loss", "[gpu]") {
  // AdamW after backward with fp32 master weights, 2 micro-steps: the first step runs the
  // forward + backward directly, its second micro-step records it, and every later one
  // launches the recording.
  check_graph_exact("adamw", {"optimizer.update=\"after_backward\"", "train.grad_accum_steps=2"},
                    0);
}

TEST_CASE("on the GPU, fused updates replayed from a CUDA graph change no weight and no loss",
          "[gpu]") {
  // bf16 without master weights (stochastic rounding, whose streams take the step from
  // device memory too) and a learning rate that falls every step: a recording that kept
  // the first step's lr, t or rounding streams would give other weights.
  for (const char* name : {"adamw", "lomo", "adalomo", "adafactor", "came"}) {
    INFO(name);
    check_graph_exact(
        name, {"optimizer.update=\"fused\"", "train.master_weights=false", "train.grad_clip=0"},
        0.1f);
  }
}
