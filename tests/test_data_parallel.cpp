// Data parallel training end to end through the real binary: `--gpus 2` at batch B must
// train the same model as one GPU at batch 2B (the ranks' windows together are the
// single rank's window, and the gradients are averaged), in both update modes; and the
// launcher's errors. GPU cases skip with a warning when fewer than 2 GPUs answer.
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>

#include "backend.hpp"
#include "catch.hpp"
#include "checkpoint.hpp"
#include "cli.hpp"
#include "shard.hpp"
#include "temp_dir.hpp"

using namespace gpt2;
using Catch::Contains;

namespace {

constexpr int kSteps = 20;

// Unshuffled data, long enough that 20 steps of 2 x 2 x 16 tokens never wrap an epoch
// (the 1-rank and 2-rank streams only line up within one).
void write_data(const TempDir& dir) {
  std::mt19937 rng(3);
  std::vector<int> tokens(4000);
  for (int& t : tokens) t = int(rng() % 50);
  write_shard(dir / "train_000000.bin", tokens);
  std::ofstream(dir / "cfg.json") << "{}";
}

std::string train_args(const TempDir& dir, const std::string& run, int gpus, int batch,
                       const std::vector<std::string>& extra) {
  std::vector<std::string> o = {
      "model.depth=2", "model.channels=64", "model.heads=2", "model.max_seq_len=16",
      "model.vocab_size=50", "model.padded_vocab_size=64", "data.seq_len=16",
      "data.batch_size=" + std::to_string(batch), "data.shuffle=false",
      "data.train=\"" + dir / "train_*.bin" + "\"", "train.device=\"cuda\"",
      "train.precision=\"fp32\"", "checkpoint.dir=\"" + dir / run + "\"",
      "schedule.steps=" + std::to_string(kSteps), "schedule.warmup_steps=2", "eval.every=0",
      "sample.every=0", "checkpoint.every=0", "log.progress=\"off\"", "optimizer.lr=1e-2"};
  o.insert(o.end(), extra.begin(), extra.end());
  std::string args = "train " + dir / "cfg.json";
  if (gpus > 0) args += " --gpus " + std::to_string(gpus);
  for (const std::string& s : o) args += " --set '" + s + "'";
  return args;
}

std::vector<float> train_model(const TempDir& dir, const std::string& run, int gpus, int batch,
                               const std::vector<std::string>& extra) {
  const CliRun r = run_cli(train_args(dir, run, gpus, batch, extra));
  INFO(r.out << r.err);
  REQUIRE(r.exit_code() == 0);
  return load_model(model_checkpoint_path(dir / run, kSteps)).params;
}

double rel_rms(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); i++) {
    num += double(a[i] - b[i]) * (a[i] - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

bool two_gpus() {
  std::string why;
  const int n = cuda_device_count(&why);
  if (n >= 2) return true;
  WARN("SKIPPED: data-parallel tests need 2 GPUs, this machine has " << n << " " << why);
  return false;
}

// Different batch splits sum the gradient in other orders (per-rank matmuls over B
// rows, then NCCL's average, vs one matmul over 2B rows): fp32 rounding, ~1e-7 relative
// per step, which 20 optimizer steps (AdamW's normalized steps most) carry forward:
// 2e-5 to 6e-5 measured on 2 H200s; without the all-reduce it is 0.6.
constexpr double kTolerance = 1e-4;

}  // namespace

TEST_CASE("--gpus asks for no more GPUs than the machine has") {
  TempDir dir;
  write_data(dir);
  const CliRun r = run_cli(train_args(dir, "run", 99, 2, {}));
  CHECK(r.exit_code() == 1);
  CHECK_THAT(r.err, Contains("--gpus 99 needs 99 GPUs, but this machine has"));
}

TEST_CASE("a multi-rank launch on the CPU is a clear error") {
  TempDir dir;
  write_data(dir);
  setenv("RANK", "0", 1), setenv("WORLD_SIZE", "2", 1), setenv("LOCAL_RANK", "0", 1);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  const CliRun cpu = run_cli(train_args(dir, "cpu", 0, 2, {"train.device=\"cpu\""}));
  const CliRun nested = run_cli(train_args(dir, "run", 2, 2, {}));
  for (const char* v : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"}) unsetenv(v);
  CHECK(cpu.exit_code() == 1);
  CHECK_THAT(cpu.err, Contains("torchrun launch with 2 ranks needs a GPU per rank"));
  CHECK(nested.exit_code() == 1);
  CHECK_THAT(nested.err, Contains("but RANK is set"));
}

TEST_CASE("2 GPUs x batch B train the same weights as 1 GPU x batch 2B", "[gpu]") {
  if (!two_gpus()) return;
  // Adafactor's eps1 = 1e-30 lets a gradient that is zero up to rounding (the attention
  // key bias) take full-size sign-like steps: on the CPU, 1 x 4 rows vs 2 micro-steps x 2
  // rows already differ by 4e-2 after 20 steps (5e-7 with eps1 = 1e-10), so eps1 is
  // raised. Adapprox's adaptive rank is a threshold decision such differences flip, so
  // its rank is fixed.
  const std::string af_eps = "optimizer.adafactor.eps1=1e-10";
  const std::vector<std::string> ap_rank = {"optimizer.adapprox.k0=4", "optimizer.adapprox.k_min=4",
                                            "optimizer.adapprox.k_max=4"};
  // Adafactor without scale_parameter takes absolute steps of lr = 1e-2, too big for this
  // model (its loss rises over the 20 steps), and rounding grows accordingly: measured on
  // 2 H200s 3.2e-2 (fused) and 4.1e-3 (two-pass clipping) with eps1 = 1e-10. Whether that
  // is all numerics is open: the after_backward case (same reduction path as AdamW's,
  // which agrees to 6e-5) says so if it differs as much. Adapprox: 1.5e-4 measured (its
  // QR and eigendecompositions amplify rounding; adaptive rank after_backward: 6e-2).
  constexpr double kAdafactorTolerance = 0.1, kAdapproxTolerance = 5e-4;
  struct Case { const char* name; std::vector<std::string> set; double tolerance; };
  const std::vector<Case> cases = {
      {"adamw after_backward", {"optimizer.name=\"adamw\"", "optimizer.update=\"after_backward\""},
       kTolerance},
      {"adamw after_backward, 2 micro-steps",
       {"optimizer.name=\"adamw\"", "optimizer.update=\"after_backward\"", "train.grad_accum_steps=2"},
       kTolerance},
      {"adalomo fused", {"optimizer.name=\"adalomo\"", "optimizer.update=\"fused\""}, kTolerance},
      {"adafactor fused", {"optimizer.name=\"adafactor\"", "optimizer.update=\"fused\"", af_eps},
       kAdafactorTolerance},
      {"adafactor after_backward",
       {"optimizer.name=\"adafactor\"", "optimizer.update=\"after_backward\"", af_eps},
       kAdafactorTolerance},
      {"adafactor fused, two-pass clipping",
       {"optimizer.name=\"adafactor\"", "optimizer.update=\"fused\"", af_eps, "train.grad_clip=0.5",
        "train.two_pass_clip=true"},
       kAdafactorTolerance},
      {"adapprox fused",
       {"optimizer.name=\"adapprox\"", "optimizer.update=\"fused\"", ap_rank[0], ap_rank[1], ap_rank[2]},
       kAdapproxTolerance},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    TempDir dir;
    write_data(dir);
    // With 2 micro-steps, 1 GPU takes 2 x 2B and each of the 2 ranks 2 x B.
    const std::vector<float> one = train_model(dir, "one", 1, 4, c.set);
    const std::vector<float> two = train_model(dir, "two", 2, 2, c.set);
    const double d = rel_rms(two, one);
    WARN(c.name << ": relative RMS difference of the weights after " << kSteps << " steps: " << d);
    CHECK(d < c.tolerance);
  }
}

TEST_CASE("without the all-reduce the ranks train another model (the test can fail)", "[gpu]") {
  if (!two_gpus()) return;
  TempDir dir;
  write_data(dir);
  const std::vector<std::string> set = {"optimizer.name=\"adamw\"",
                                        "optimizer.update=\"after_backward\""};
  const std::vector<float> one = train_model(dir, "one", 1, 4, set);
  setenv("TRAIN_GPT2_SKIP_GRAD_REDUCE", "1", 1);
  const std::vector<float> two = train_model(dir, "two", 2, 2, set);
  unsetenv("TRAIN_GPT2_SKIP_GRAD_REDUCE");
  const double d = rel_rms(two, one);
  WARN("relative RMS difference with the reduction skipped: " << d);
  CHECK(d > 100 * kTolerance);
}

TEST_CASE("2 ranks: one log, and a resume ends bit-identical to an uninterrupted run", "[gpu]") {
  if (!two_gpus()) return;
  TempDir dir;
  write_data(dir);
  const std::vector<std::string> set = {"optimizer.name=\"adalomo\"", "checkpoint.every=10"};
  const CliRun full = run_cli(train_args(dir, "run", 2, 2, set));
  INFO(full.out << full.err);
  REQUIRE(full.exit_code() == 0);
  // Only rank 0 prints: each step line once.
  size_t lines = 0;
  for (size_t at = 0; (at = full.out.find("step    20/20", at)) != std::string::npos; at++) lines++;
  CHECK(lines == 1);
  CHECK_THAT(full.out, Contains("ranks      2"));
  const std::string last = model_checkpoint_path(dir / "run", kSteps);
  const std::vector<float> uninterrupted = load_model(last).params;
  std::filesystem::remove(last);
  std::filesystem::remove(state_checkpoint_path(dir / "run", kSteps));
  std::vector<std::string> resume = set;
  resume.push_back("checkpoint.resume=true");
  const CliRun r = run_cli(train_args(dir, "run", 2, 2, resume));
  INFO(r.out << r.err);
  REQUIRE(r.exit_code() == 0);
  CHECK_THAT(r.out, Contains("resumed from"));
  CHECK(load_model(last).params == uninterrupted);
}
