// Training throughput: runs the real trainer (train_gpt2 train) on random tokens for
// each model and batch size and reports tokens/s, ms/step, MFU and peak memory.
//   build/bench_train                          # d12 and d24, B in {16, 32, 64}, T 1024
//   build/bench_train --models 12 --batches 16 --steps 20 --set optimizer.name=adalomo
//   build/bench_train --json > bench.json
// ms/step is the median over the steps after the first `--warmup`; MFU uses llm.c's
// 6N + 6LCT flops per token against the card's bf16 dense peak (989 TFLOP/s, H100/H200
// SXM), so it compares with llm.c's reports.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "config.hpp"
#include "error.hpp"
#include "memory.hpp"
#include "shard.hpp"
#include "train.hpp"

using namespace gpt2;

namespace {

struct Result {
  int depth, batch;
  double ms, tokens_per_s, mfu;
  size_t ledger_peak, driver_bytes;
};

Result bench(int depth, int batch, int seq, int steps, int warmup,
             const std::vector<std::string>& sets, const std::string& dir) {
  std::vector<std::string> o = {cat("model.depth=", depth), cat("data.batch_size=", batch),
                                cat("data.seq_len=", seq), "data.train=\"" + dir + "/train_*.bin\"",
                                cat("schedule.steps=", steps), "schedule.warmup_steps=0",
                                "eval.every=0", "sample.every=0", "checkpoint.every=0",
                                "checkpoint.dir=\"" + dir + "/run\"", "log.progress=\"off\"",
                                "log.every=1000000"};
  o.insert(o.end(), sets.begin(), sets.end());
  train(load_config("", o));
  std::ifstream f(dir + "/run/metrics.jsonl");
  std::vector<double> ms;
  Result r{depth, batch, 0, 0, 0, 0, 0};
  double mfu_ms = 0;  // MFU x ms is the same for every step (flops per step / peak)
  for (std::string line; std::getline(f, line);) {
    const json j = json::parse(line);
    if (j["event"] == "step" && j["step"].get<int>() > warmup) {
      ms.push_back(j["ms"].get<double>());
      mfu_ms = j.value("mfu", 0.0) * j["ms"].get<double>();
    }
    if (j["event"] == "end") {
      r.ledger_peak = j["memory"]["total"]["peak"].get<size_t>();
      r.driver_bytes = j.value("driver_bytes_in_use", size_t(0));
    }
  }
  if (ms.empty()) fail("bench: no timed steps (raise --steps above --warmup)");
  std::sort(ms.begin(), ms.end());
  r.ms = ms[ms.size() / 2];
  r.tokens_per_s = double(batch) * seq / (r.ms / 1000.0);
  r.mfu = mfu_ms / r.ms;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"train_gpt2 throughput benchmark (runs the real trainer on random tokens)"};
  std::vector<int> models = {12, 24}, batches = {16, 32, 64};
  int seq = 1024, steps = 13, warmup = 3;
  bool as_json = false;
  std::vector<std::string> sets;
  app.add_option("--models", models, "model depths (12 = d12 124M, 24 = d24 345M)");
  app.add_option("--batches", batches, "batch sizes");
  app.add_option("--seq", seq, "sequence length");
  app.add_option("--steps", steps, "steps per configuration");
  app.add_option("--warmup", warmup, "first steps left out of the timing");
  app.add_option("--set", sets, "any config key, e.g. --set optimizer.name=adalomo");
  app.add_flag("--json", as_json, "print JSON");
  CLI11_PARSE(app, argc, argv);
  try {
    char tmpl[] = "/tmp/bench_train_XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    std::mt19937 rng(1);
    std::vector<int> tokens(size_t(64) * 1024 * 64 + 1);
    for (int& t : tokens) t = int(rng() % 50257);
    write_shard(dir + "/train_000000.bin", tokens);
    json out = json::array();
    for (int depth : models)
      for (int batch : batches) {
        const Result r = bench(depth, batch, seq, steps, warmup, sets, dir);
        out.push_back({{"model", cat("d", depth)}, {"batch", batch}, {"seq", seq},
                       {"ms_per_step", r.ms}, {"tokens_per_s", r.tokens_per_s}, {"mfu", r.mfu},
                       {"ledger_peak_bytes", r.ledger_peak},
                       {"driver_bytes_in_use", r.driver_bytes}});
        std::filesystem::remove_all(dir + "/run");
      }
    std::filesystem::remove_all(dir);
    if (as_json) {
      std::printf("%s\n", out.dump(2).c_str());
      return 0;
    }
    std::printf("| model | B | T | ms/step | tokens/s | MFU | ledger peak | GPU in use |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    for (const json& r : out)
      std::printf("| %s | %d | %d | %.1f | %.0f | %.1f%% | %s | %s |\n",
                  r["model"].get<std::string>().c_str(), r["batch"].get<int>(), seq,
                  r["ms_per_step"].get<double>(), r["tokens_per_s"].get<double>(),
                  100 * r["mfu"].get<double>(),
                  format_bytes(r["ledger_peak_bytes"].get<double>()).c_str(),
                  format_bytes(r["driver_bytes_in_use"].get<double>()).c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
