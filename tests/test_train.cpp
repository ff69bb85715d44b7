// The training loop end to end on tiny shards: checkpoints, bit-identical resume,
// metrics, and the errors a resume can hit.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "catch.hpp"
#include "checkpoint.hpp"
#include "cli.hpp"
#include "shard.hpp"
#include "temp_dir.hpp"
#include "train.hpp"

using namespace gpt2;

namespace {

json tiny_run(const TempDir& dir, std::vector<std::string> extra = {}) {
  std::mt19937 rng(1);
  for (const char* split : {"train", "val"}) {
    std::vector<int> tokens(3000);
    for (int& t : tokens) t = int(rng() % 50);
    write_shard(dir / (std::string(split) + "_000000.bin"), tokens);
  }
  std::vector<std::string> o = {
      "model.depth=2", "model.channels=16", "model.heads=2", "model.max_seq_len=16",
      "model.vocab_size=50", "model.padded_vocab_size=64", "data.batch_size=2",
      "data.seq_len=8", "train.device=\"cpu\"", "data.train=\"" + dir / "train_*.bin" + "\"",
      "data.val=\"" + dir / "val_*.bin" + "\"", "checkpoint.dir=\"" + dir / "run" + "\"",
      "schedule.steps=12", "schedule.warmup_steps=2", "checkpoint.every=6", "eval.every=4",
      "eval.batches=2", "sample.every=0", "log.progress=\"off\""};
  o.insert(o.end(), extra.begin(), extra.end());
  return load_config("", o);
}

}  // namespace

TEST_CASE("a run resumed from a checkpoint ends bit-identical to an uninterrupted run") {
  for (const char* opt : {"adamw", "adapprox", "adalomo"}) {
    INFO(opt);
    TempDir dir;
    const json cfg = tiny_run(dir, {std::string("optimizer.name=\"") + opt + "\""});
    train(cfg);
    const std::string last = model_checkpoint_path(dir / "run", 12);
    const std::string uninterrupted = slurp(last);
    REQUIRE(uninterrupted.size() > 1024);
    REQUIRE(latest_checkpoint(dir / "run") == last);
    // Throw away the end, as if the run had stopped at step 6, and resume.
    std::filesystem::remove(last);
    std::filesystem::remove(state_checkpoint_path(dir / "run", 12));
    REQUIRE(latest_checkpoint(dir / "run") == model_checkpoint_path(dir / "run", 6));
    json resume = cfg;
    resume["checkpoint"]["resume"] = true;
    train(resume);
    CHECK(slurp(last) == uninterrupted);
  }
}

TEST_CASE("the metrics file records start, steps, val loss and the memory peak") {
  TempDir dir;
  train(tiny_run(dir));
  std::ifstream f(dir / "run/metrics.jsonl");
  std::string line;
  int steps = 0, vals = 0;
  json start, end;
  while (std::getline(f, line)) {
    const json j = json::parse(line);
    if (j["event"] == "step") {
      steps++;
      CHECK(std::isfinite(j["loss"].get<double>()));
    }
    if (j["event"] == "val") vals++;
    if (j["event"] == "start") start = j;
    if (j["event"] == "end") end = j;
  }
  CHECK(steps == 12);
  CHECK(vals == 4);  // steps 0, 4, 8 and the end
  CHECK(start["memory"]["total"]["current"].get<size_t>() > 0);
  CHECK(end["memory"]["total"]["peak"].get<size_t>() ==
        start["memory"]["total"]["current"].get<size_t>());
}

TEST_CASE("an Adapprox run's step records carry its mean rank and S-RSI count; AdamW's none") {
  for (const char* opt : {"adapprox", "adamw"}) {
    INFO(opt);
    TempDir dir;
    train(tiny_run(dir, {std::string("optimizer.name=\"") + opt + "\"", "schedule.steps=3"}));
    std::ifstream f(dir / "run/metrics.jsonl");
    std::string line;
    int steps = 0;
    while (std::getline(f, line)) {
      const json j = json::parse(line);
      if (j["event"] != "step") continue;
      steps++;
      if (std::string(opt) == "adamw") {
        CHECK_FALSE(j.contains("adapprox_rank"));
        continue;
      }
      // 10 matrices (wte, wpe, 4 per layer), each k_max = 4 (min side 16 / 4): at least
      // one S-RSI each, a rank in [1, 4].
      CHECK(j["adapprox_srsi"].get<double>() >= 10);
      CHECK(j["adapprox_rank"].get<double>() >= 1);
      CHECK(j["adapprox_rank"].get<double>() <= 4);
    }
    CHECK(steps == 3);
  }
}

TEST_CASE("resuming with another optimizer config is refused") {
  TempDir dir;
  const json cfg = tiny_run(dir, {"schedule.steps=6"});
  train(cfg);
  json other = cfg;
  other["optimizer"]["lr"] = 0.5;
  other["checkpoint"]["resume"] = true;
  other["schedule"]["steps"] = 8;
  REQUIRE_THROWS_WITH(train(other), Catch::Contains("state_00000006.bin") &&
                                        Catch::Contains("different model/optimizer/batch"));
}

TEST_CASE("init_from loads a model file and refuses one of another shape") {
  TempDir dir;
  train(tiny_run(dir, {"schedule.steps=2", "checkpoint.every=0"}));
  const std::string model = model_checkpoint_path(dir / "run", 2);
  CHECK_NOTHROW(train(tiny_run(dir, {"schedule.steps=2", "model.init_from=\"" + model + "\"",
                                     "checkpoint.dir=\"" + dir / "run2" + "\""})));
  REQUIRE_THROWS_WITH(train(tiny_run(dir, {"schedule.steps=2", "model.depth=3",
                                           "model.init_from=\"" + model + "\""})),
                      Catch::Contains(model) && Catch::Contains("num_layers"));
}

TEST_CASE("Ctrl-C saves a checkpoint at the step reached and exits cleanly") {
  TempDir dir;
  const json cfg = tiny_run(dir, {"schedule.steps=100000", "checkpoint.every=0", "eval.every=0"});
  const std::string config = dir / "run.json";
  std::ofstream(config) << cfg.dump();
  const std::string exe = train_gpt2_path(), log = dir / "log";
  const pid_t pid = fork();
  if (pid == 0) {
    freopen(log.c_str(), "w", stdout);
    execl(exe.c_str(), exe.c_str(), "train", config.c_str(), (char*)nullptr);
    _exit(127);
  }
  wait_for_lines(dir / "run/metrics.jsonl", 4);  // interrupt once a few steps are done
  kill(pid, SIGINT);
  int status = 0;
  waitpid(pid, &status, 0);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  const std::string saved = latest_checkpoint(dir / "run");
  REQUIRE_FALSE(saved.empty());
  const std::string printed = slurp(log);
  CHECK_THAT(printed, Catch::Contains("interrupted at step") && Catch::Contains(saved));
  // What it saved is a complete checkpoint: the run resumes from it.
  json resume = cfg;
  resume["checkpoint"]["resume"] = true;
  resume["schedule"]["steps"] = 100000;
  const int64_t step = std::stoll(saved.substr(saved.size() - 12, 8));
  resume["schedule"]["steps"] = step + 1;
  CHECK_NOTHROW(train(resume));
}

namespace {

// d12 on shards that repeat one 97-token phrase: structure a model can learn fast.
json d12_run(const TempDir& dir, const std::string& device, const std::string& precision,
             int steps) {
  std::vector<int> tokens(40000);
  for (size_t i = 0; i < tokens.size(); i++) tokens[i] = int((i % 97) * 331 % 50257);
  write_shard(dir / "train_000000.bin", tokens);
  return load_config("", {"model.depth=12", "data.batch_size=4", "data.seq_len=64",
                          "data.train=\"" + dir / "train_*.bin" + "\"",
                          "train.device=\"" + device + "\"",
                          "train.precision=\"" + precision + "\"",
                          "checkpoint.dir=\"" + dir / device + precision + "\"",
                          "schedule.steps=" + std::to_string(steps), "schedule.warmup_steps=0",
                          "schedule.decay=\"constant\"", "eval.every=0", "sample.every=0",
                          "checkpoint.every=0", "log.progress=\"off\""});
}

std::vector<double> step_losses(const std::string& metrics) {
  std::ifstream f(metrics);
  std::vector<double> out;
  for (std::string line; std::getline(f, line);) {
    const json j = json::parse(line);
    if (j["event"] == "step") out.push_back(j["loss"].get<double>());
  }
  return out;
}

}  // namespace

TEST_CASE("d12 on the GPU follows the CPU's fp32 loss curve; bf16 learns", "[gpu]") {
  TempDir dir;
  train(d12_run(dir, "cpu", "fp32", 10));
  train(d12_run(dir, "cuda", "fp32", 10));
  const std::vector<double> cpu = step_losses(dir / "cpufp32/metrics.jsonl");
  const std::vector<double> gpu = step_losses(dir / "cudafp32/metrics.jsonl");
  REQUIRE(cpu.size() == 10);
  REQUIRE(gpu.size() == 10);
  for (int i = 0; i < 10; i++) {
    INFO("step " << i + 1);
    // Same math, other summation orders: fp32 rounding differences that AdamW's
    // normalized steps carry forward, so the bound grows from 1e-5 at step 1.
    CHECK(gpu[i] == Approx(cpu[i]).epsilon(i == 0 ? 1e-5 : 1e-3));
  }
  train(d12_run(dir, "cuda", "bf16", 50));
  const std::vector<double> bf = step_losses(dir / "cudabf16/metrics.jsonl");
  REQUIRE(bf.size() == 50);
  CHECK(bf[0] == Approx(cpu[0]).epsilon(1e-2));  // bf16 weights and activations
  CHECK(bf[49] < bf[0] - 3.0);                    // the repeated phrase is being learned
}
