// Times one full optimizer step (every tensor's update in one update_many, as the
// after_backward pipeline runs it) on the GPT-2 d12 parameter table, bf16 weights + fp32
// master, random weights and gradients on the GPU; median of 20 steps with cudaEvents
// on the default stream.
// Prints ms per step and the ratio to AdamW, and AdamW's bytes moved / bandwidth.
//   build/bench_optimizers            table
//   build/bench_optimizers --json     one JSON object on stdout
//   build/bench_optimizers --depth 24 other model sizes
//   build/bench_optimizers --only adapprox --steps 5   AdamW and one other (e.g. for nsys)
//   build/bench_optimizers --only adapprox --per-step   every step's ms, and Adapprox's
//                                                       smoothed errors (xi_bar)
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <random>

#include "backend.hpp"
#include "config.hpp"
#include "error.hpp"

using namespace gpt2;

namespace {

struct Result {
  std::string name;
  double median_ms;
  std::vector<double> step_ms;      // in step order; the first includes any warm-up
  std::vector<float> ranks, xi_bar;  // Adapprox: each matrix's after the last step
};

Result bench(const std::string& name, const ParamTable& table, Device& dev, bf16* params,
             float* master, bf16* grads, const std::vector<bf16>& grad_host, int steps) {
  json cfg = json::parse(kDefaultConfig);
  cfg["optimizer"]["name"] = name;
  cfg["optimizer"]["weight_decay"] = 0.1;
  auto opt = make_cuda_optimizer<bf16>(cfg, table, dev, 1337);
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  std::vector<double> ms;
  for (int s = 1; s <= steps; s++) {
    // Gradients are scratch for the optimizers: restore them outside the timed region.
    dev.to_device(grads, grad_host.data(), grad_host.size() * sizeof(bf16));
    cudaEventRecord(a);
    opt->begin_step(s, 1e-4f);
    std::vector<TensorUpdate<bf16>> updates;
    for (const ParamSpec& p : table.params)
      updates.push_back({&p, params + p.offset, master + p.offset, grads + p.offset});
    opt->update_many(updates);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  Result r{name, 0, ms, {}, {}};
  std::sort(ms.begin(), ms.end());
  r.median_ms = ms[ms.size() / 2];
  for (const StateBlob& s : opt->state())
    if (s.name.rfind("adapprox.rank_err.", 0) == 0) {
      float k[2];
      dev.to_host(k, s.data, sizeof(k));
      r.ranks.push_back(k[0]), r.xi_bar.push_back(k[1]);
    }
  cudaEventDestroy(a), cudaEventDestroy(b);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Times one optimizer step on the GPT-2 parameter table (bf16 + fp32 master)"};
  bool as_json = false, per_step = false;
  int depth = 12, steps = 20;
  std::string only;
  app.add_flag("--json", as_json, "print one JSON object");
  app.add_option("--depth", depth, "GPT-2 depth (12 = 124M)");
  app.add_option("--steps", steps, "timed steps (median reported)");
  app.add_option("--only", only, "time AdamW and this optimizer only");
  app.add_flag("--per-step", per_step, "print every step's time (and Adapprox's xi_bar)");
  CLI11_PARSE(app, argc, argv);
  try {
    ModelConfig mc = ModelConfig::from_depth(depth);
    const ParamTable table(mc);
    auto dev = make_cuda_device(0);
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.f, 0.02f);
    std::vector<bf16> w(table.total), g(table.total);
    std::vector<float> wf(table.total);
    for (size_t i = 0; i < table.total; i++) {
      w[i] = float_to_bf16(nd(rng)), wf[i] = bf16_to_float(w[i]);
      g[i] = float_to_bf16(0.01f * nd(rng));
    }
    DeviceBuffer<bf16> params(*dev, table.total, MemCategory::params, "params");
    DeviceBuffer<bf16> grads(*dev, table.total, MemCategory::grads, "grads");
    DeviceBuffer<float> master(*dev, table.total, MemCategory::master_weights, "master");
    dev->to_device(params.get(), w.data(), w.size() * sizeof(bf16));
    dev->to_device(master.get(), wf.data(), wf.size() * sizeof(float));
    std::vector<Result> rs;
    for (const char* name : {"adamw", "lomo", "adalomo", "adafactor", "came", "adapprox"})
      if (only.empty() || only == name || std::string(name) == "adamw")
        rs.push_back(bench(name, table, *dev, params.get(), master.get(), grads.get(), g, steps));
    if (!only.empty() && rs.size() == 1 && only != "adamw")
      fail("--only ", only, " names no optimizer; use lomo, adalomo, adafactor, came or adapprox");
    // AdamW with bf16 params + fp32 master: read g (2), master, m, v (12); write master,
    // m, v (12), param (2).
    const double bytes = 28.0 * double(table.total);
    const double adamw_ms = rs[0].median_ms, gbps = bytes / (adamw_ms * 1e-3) / 1e9;
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    if (as_json) {
      json j = {{"device", prop.name}, {"depth", depth}, {"params", table.total}, {"steps", steps},
                {"adamw_bytes", bytes}, {"adamw_GBps", gbps}};
      for (const Result& r : rs)
        j["optimizers"][r.name] = {{"median_ms", r.median_ms}, {"first_ms", r.step_ms.front()},
                                   {"ratio_to_adamw", r.median_ms / adamw_ms},
                                   {"step_ms", r.step_ms}};
      if (!rs.back().ranks.empty()) {
        j["optimizers"]["adapprox"]["ranks"] = rs.back().ranks;
        j["optimizers"]["adapprox"]["xi_bar"] = rs.back().xi_bar;
      }
      std::cout << j.dump(2) << "\n";
    } else {
      std::printf("%s, d%d (%zu params), bf16 weights + fp32 master, median of %d steps\n",
                  prop.name, depth, table.total, steps);
      std::printf("%-10s %10s %10s %8s\n", "optimizer", "median ms", "first ms", "x AdamW");
      for (const Result& r : rs)
        std::printf("%-10s %10.3f %10.3f %8.2f\n", r.name.c_str(), r.median_ms, r.step_ms.front(),
                    r.median_ms / adamw_ms);
      std::printf("AdamW: %.2f GB moved per step, %.0f GB/s\n", bytes / 1e9, gbps);
      if (!rs.back().ranks.empty()) {
        std::printf("Adapprox ranks after %d steps:", steps);
        for (float k : rs.back().ranks) std::printf(" %g", k);
        std::printf("\n");
        if (per_step) {
          std::printf("Adapprox xi_bar after %d steps:", steps);
          for (float x : rs.back().xi_bar) std::printf(" %.4f", x);
          std::printf("\n");
        }
      }
      if (per_step)
        for (const Result& r : rs) {
          std::printf("%s ms per step:", r.name.c_str());
          for (double t : r.step_ms) std::printf(" %.2f", t);
          std::printf("\n");
        }
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
