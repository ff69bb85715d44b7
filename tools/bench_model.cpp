// Forward + backward time of the model alone (no optimizer) on the CPU backend:
//   build/bench_model --depth 12 --batch 1 --seq 64 --repeat 5
// Prints the median forward and forward+backward milliseconds; the forward includes the
// classifier's backward, which the chunked classifier does in place.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "gpt2.hpp"
#include "reference/cpu_ops.hpp"

using namespace gpt2;

namespace {

class DiscardSink final : public GradSink<float> {
 public:
  explicit DiscardSink(const ParamTable& t, Device& d)
      : grads_(d, t.total, MemCategory::grads, "grads") {}
  float* grad(const ParamSpec& p) override { return grads_.get() + p.offset; }
  void ready(const ParamSpec&) override {}

 private:
  DeviceBuffer<float> grads_;
};

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CPU forward/backward timing of GPT-2"};
  int depth = 12, batch = 1, seq = 64, repeat = 5;
  app.add_option("--depth", depth, "model depth (12 = d12)");
  app.add_option("--batch", batch, "batch size");
  app.add_option("--seq", seq, "sequence length");
  app.add_option("--repeat", repeat, "timed repetitions (after one warmup)");
  CLI11_PARSE(app, argc, argv);
  CpuDevice dev;
  CpuOps ops;
  GPT2<float> model(ModelConfig::from_depth(depth), ops, dev, batch, seq, 0);
  model.set_params(init_params(model.table, 1));
  DiscardSink sink(model.table, dev);
  std::vector<int> in(size_t(batch) * seq), tg(in.size());
  for (size_t i = 0; i < in.size(); i++) in[i] = int(i * 7919 % 50257), tg[i] = int(i * 104729 % 50257);
  std::vector<double> fwd, both;
  for (int r = 0; r <= repeat; r++) {
    const auto t0 = std::chrono::steady_clock::now();
    model.forward(in.data(), tg.data(), 1.0f / in.size(), &sink);
    const double f = ms_since(t0);
    model.backward(sink);
    if (r > 0) fwd.push_back(f), both.push_back(ms_since(t0));
  }
  std::sort(fwd.begin(), fwd.end()), std::sort(both.begin(), both.end());
  std::printf("d%d B=%d T=%d on the CPU: forward %.1f ms, forward+backward %.1f ms (median of %d)\n",
              depth, batch, seq, fwd[fwd.size() / 2], both[both.size() / 2], repeat);
}
