// Sampling: the token draw (greedy, top-k, temperature) and `train_gpt2 sample` on a
// model file.
#include <map>

#include "catch.hpp"
#include "checkpoint.hpp"
#include "cli.hpp"
#include "gpt2.hpp"
#include "sample.hpp"
#include "temp_dir.hpp"

using namespace gpt2;

TEST_CASE("temperature 0 is greedy; top-k never leaves the k best") {
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.9f, 0.5f};
  uint64_t rng = 7;
  CHECK(sample_token(logits, 0.0f, 0, rng) == 1);
  for (int i = 0; i < 200; i++) {
    const int t = sample_token(logits, 1.0f, 2, rng);
    REQUIRE((t == 1 || t == 3));
  }
}

TEST_CASE("draws follow softmax(logits / temperature)") {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 1/4, 3/4
  uint64_t rng = 11;
  std::map<int, int> count;
  const int n = 20000;
  for (int i = 0; i < n; i++) count[sample_token(logits, 1.0f, 0, rng)]++;
  CHECK(count[1] / double(n) == Approx(0.75).margin(0.015));  // ~5 sigma of a binomial
  // Temperature 2 flattens to p ∝ (1, sqrt 3): 0.634 for token 1.
  count.clear();
  for (int i = 0; i < n; i++) count[sample_token(logits, 2.0f, 0, rng)]++;
  CHECK(count[1] / double(n) == Approx(std::sqrt(3.0) / (1 + std::sqrt(3.0))).margin(0.016));
}

TEST_CASE("train_gpt2 sample continues a prompt from a model file, reproducibly") {
  TempDir dir;
  ModelConfig c = ModelConfig::from_depth(1);
  c.channels = 32, c.num_heads = 1, c.max_seq_len = 64;
  const ParamTable t(c);
  const std::string model = dir / "model.bin";
  save_model(model, c, init_params(t, 3).data(), t.total, DType::f32);
  const std::string args = "sample --model " + model + " --prompt 'The jury said' --tokens 12 --seed 5";
  const CliRun a = run_cli(args), b = run_cli(args);
  INFO(a.err);
  CHECK(a.exit_code() == 0);
  CHECK(a.out.rfind("The jury said", 0) == 0);
  CHECK(a.out.size() > std::string("The jury said\n").size());
  CHECK(a.out == b.out);
  CHECK(run_cli(args + " --seed 6").out != a.out);
  const CliRun bad = run_cli("sample --model " + dir / "missing.bin" + " --prompt x");
  CHECK(bad.exit_code() == 1);
  CHECK_THAT(bad.err, Catch::Contains("missing.bin"));
}
