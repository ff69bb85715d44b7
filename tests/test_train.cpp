// The training loop end to end on tiny shards: checkpoints, bit-identical resume,
// metrics, and the errors a resume can hit.
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "catch.hpp"
#include "checkpoint.hpp"
#include "shard.hpp"
#include "temp_dir.hpp"
#include "train.hpp"

using namespace gpt2;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

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
