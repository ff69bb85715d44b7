// Where a training step's time goes: runs real steps (forward, backward, optimizer) with
// every Ops call wrapped in a device synchronize + timer, and prints the time per op
// family and the rest (optimizer updates, gradient memsets, host copies).
//   build/bench_ops --model d12 --batch 16 --seq 1024 --steps 5
//   build/bench_ops --set optimizer.name=adalomo
// Synchronizing around each call removes overlap between kernels, so the total is a
// little above an unprofiled step; the shares are what this tool is for.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <map>
#include <random>

#include "error.hpp"
#include "gpt2.hpp"
#include "run_backend.hpp"

using namespace gpt2;

namespace {

using Clock = std::chrono::steady_clock;

template <class T>
class ProfiledOps final : public Ops<T> {
 public:
  ProfiledOps(Ops<T>& inner, Device& dev) : in_(inner), dev_(dev) {}
  std::map<std::string, double> ms;

  void encoder_forward(T* o, const int* i, const T* a, const T* b, int B, int T_, int C) override {
    time("encoder", [&] { in_.encoder_forward(o, i, a, b, B, T_, C); });
  }
  void encoder_backward(T* a, T* b, const T* d, const int* i, int B, int T_, int C) override {
    time("encoder", [&] { in_.encoder_backward(a, b, d, i, B, T_, C); });
  }
  bool pads_rows(int C) const override { return in_.pads_rows(C); }
  void layernorm_forward(T* o, Stat<T>* m, Stat<T>* r, const T* i, const T* w, const T* b, int N,
                         int C, bool p = false) override {
    time("layernorm", [&] { in_.layernorm_forward(o, m, r, i, w, b, N, C, p); });
  }
  void layernorm_backward(T* di, T* dw, T* db, const T* d, const T* i, const T* w,
                          const Stat<T>* m, const Stat<T>* r, int N, int C,
                          Stat<T>* cs = nullptr) override {
    time("layernorm", [&] { in_.layernorm_backward(di, dw, db, d, i, w, m, r, N, C, cs); });
  }
  void matmul_forward(T* o, T* g, const T* i, const T* w, const T* b, int N, int C, int OC,
                      bool p = false, const T* res = nullptr) override {
    time(OC > 4 * C ? "matmul (classifier)" : "matmul",
         [&] { in_.matmul_forward(o, g, i, w, b, N, C, OC, p, res); });
  }
  void matmul_backward(T* di, T* dw, T* db, const T* d, const T* i, const T* w, const T* pg,
                       int N, int C, int OC, const Stat<T>* cs = nullptr,
                       bool p = false) override {
    time(OC > 4 * C ? "matmul (classifier)" : "matmul", [&] {
      in_.matmul_backward(di, dw, db, d, i, w, pg, N, C, OC, cs, p);
    });
  }
  void attention_forward(T* o, Stat<T>* l, const T* q, int B, int T_, int C, int NH) override {
    time("attention", [&] { in_.attention_forward(o, l, q, B, T_, C, NH); });
  }
  void attention_backward(T* dq, const T* d, const T* q, const T* o, const Stat<T>* l, int B,
                          int T_, int C, int NH) override {
    time("attention", [&] { in_.attention_backward(dq, d, q, o, l, B, T_, C, NH); });
  }
  void gelu_forward(T* o, const T* i, size_t n) override {
    time("gelu", [&] { in_.gelu_forward(o, i, n); });
  }
  void gelu_backward(T* di, const T* i, const T* d, size_t n) override {
    time("gelu", [&] { in_.gelu_backward(di, i, d, n); });
  }
  void classifier(T* l, Stat<T>* ls, const int* t, int N, int V, int Vp, float d) override {
    time("classifier (softmax+CE)", [&] { in_.classifier(l, ls, t, N, V, Vp, d); });
  }

 private:
  template <class F>
  void time(const char* name, F&& f) {
    dev_.synchronize();
    const auto t0 = Clock::now();
    f();
    dev_.synchronize();
    ms[name] += std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  }
  Ops<T>& in_;
  Device& dev_;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"per-op time of real training steps"};
  std::string model = "d12";
  int batch = 16, seq = 1024, steps = 5;
  std::vector<std::string> sets;
  app.add_option("--model", model, "dN");
  app.add_option("--batch", batch, "batch size");
  app.add_option("--seq", seq, "sequence length");
  app.add_option("--steps", steps, "timed steps (after one warmup step)");
  app.add_option("--set", sets, "any config key");
  CLI11_PARSE(app, argc, argv);
  try {
    // Each op is timed between device synchronizations, which a CUDA graph's capture
    // does not allow (and a replayed step would not time at all): no graph.
    std::vector<std::string> o = {"model.depth=" + model.substr(1), cat("data.batch_size=", batch),
                                  cat("data.seq_len=", seq), "train.cuda_graph=false"};
    o.insert(o.end(), sets.begin(), sets.end());
    const json cfg = load_config("", o);
    with_backend(cfg, 0, [&](auto& be) {
      using T = typename std::remove_reference_t<decltype(*be.ops)>::Elem;
      ProfiledOps<T> ops(*be.ops, *be.dev);
      GPT2<T> m(model_config(cfg), ops, *be.dev, batch, seq, recompute_of(cfg),
                cfg["train"]["classifier_chunk"].get<int>(),
                cfg["train"]["late_wte_grad"].get<bool>());
      auto opt = be.optimizer(m.table);
      UpdatePipeline<T> pipe(cfg, m, *opt, *be.gops, *be.dev);
      pipe.set_weights(init_params(m.table, 1));
      std::mt19937 rng(1);
      auto batch_fn = [&](int* in, int* tg) {
        for (int i = 0; i < batch * seq; i++) in[i] = int(rng() % 50257), tg[i] = int(rng() % 50257);
      };
      pipe.step(1, 1e-4f, batch_fn);  // warmup: cuBLASLt heuristics, scratch growth
      ops.ms.clear();
      be.dev->synchronize();
      const auto t0 = Clock::now();
      for (int s = 2; s <= steps + 1; s++) pipe.step(s, 1e-4f, batch_fn);
      be.dev->synchronize();
      const double total = std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / steps;
      double in_ops = 0;
      std::printf("%s B=%d T=%d %s, %s: %.1f ms/step (profiled, mean of %d)\n",
                  model.c_str(), batch, seq, be.cuda ? "GPU" : "CPU",
                  cfg["optimizer"]["name"].get<std::string>().c_str(), total, steps);
      std::printf("| part | ms/step | share |\n|---|---|---|\n");
      for (const auto& [name, ms] : ops.ms) {
        in_ops += ms / steps;
        std::printf("| %s | %.2f | %.1f%% |\n", name.c_str(), ms / steps, 100 * ms / steps / total);
      }
      std::printf("| optimizer, grad memsets, norms, host copies | %.2f | %.1f%% |\n",
                  total - in_ops, 100 * (total - in_ops) / total);
    });
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
