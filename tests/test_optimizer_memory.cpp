#include "catch.hpp"
#include "optim_fixture.hpp"

using namespace gpt2;
using namespace gpt2::test;

static double state_mib(const std::string& name, int depth, json extra = json::object()) {
  json cfg = optimizer_cfg(name);
  cfg["optimizer"][name].update(extra);
  return optimizer_state_bytes(cfg, ParamTable(ModelConfig::from_depth(depth))) / 1048576.0;
}

TEST_CASE("optimizer_state_bytes reproduces the spec's GPT-2 124M numbers (section 0)") {
  // Adapprox also keeps 2 floats (rank, smoothed error) per matrix: 400 B here, < 0.001 MiB.
  CHECK(state_mib("adamw", 12) == Approx(949.40).margin(0.01));
  CHECK(state_mib("lomo", 12) == 0.0);
  CHECK(state_mib("adalomo", 12) == Approx(1.23).margin(0.01));
  CHECK(state_mib("adafactor", 12) == Approx(1.23).margin(0.01));
  CHECK(state_mib("adafactor", 12, {{"beta1", 0.9}}) == Approx(475.93).margin(0.01));
  CHECK(state_mib("came", 12) == Approx(476.69).margin(0.01));
  CHECK(state_mib("adapprox", 12) == Approx(621.85).margin(0.01));
  CHECK(state_mib("adapprox", 12, {{"beta1", 0.0}}) == Approx(147.15).margin(0.01));
  CHECK(state_mib("adapprox", 12, {{"k_max", 1}}) == Approx(475.93).margin(0.01));
  CHECK(state_mib("adapprox", 12, {{"k_max", 1}, {"beta1", 0.0}}) == Approx(1.23).margin(0.01));
}

TEST_CASE("optimizer_state_bytes reproduces the spec's GPT-2 345M numbers") {
  CHECK(state_mib("adamw", 24) == Approx(2707.09).margin(0.01));
  CHECK(state_mib("adafactor", 24, {{"beta1", 0.9}}) == Approx(1356.47).margin(0.01));
  CHECK(state_mib("came", 24) == Approx(1358.18).margin(0.01));
  CHECK(state_mib("adapprox", 24) == Approx(1790.85).margin(0.01));
  CHECK(state_mib("adapprox", 24, {{"beta1", 0.0}}) == Approx(437.31).margin(0.01));
  CHECK(state_mib("adalomo", 24) == Approx(2.93).margin(0.01));
  CHECK(state_mib("adapprox", 24, {{"k_max", 1}}) == Approx(1356.47).margin(0.01));
}

TEST_CASE("The Device ledger after make_optimizer equals the predicted bytes") {
  ModelConfig c = ModelConfig::from_depth(2);
  c.vocab_size = 100, c.padded_vocab_size = 128, c.max_seq_len = 16;
  const ParamTable table(c);
  for (const char* name : {"adamw", "lomo", "adalomo", "adafactor", "came", "adapprox"}) {
    for (bool variant : {false, true}) {
      json cfg = optimizer_cfg(name);
      if (variant) cfg["optimizer"]["adafactor"]["beta1"] = 0.9, cfg["optimizer"]["adapprox"]["beta1"] = 0.0;
      CpuDevice dev;
      auto opt = make_optimizer(cfg, table, dev, 1);
      INFO(name << (variant ? " (variant)" : ""));
      CHECK(dev.ledger().current[int(MemCategory::optimizer_state)] ==
            optimizer_state_bytes(cfg, table));
      CHECK(dev.ledger().current[int(MemCategory::workspace)] ==
            optimizer_workspace_bytes(cfg, table));
      size_t listed = 0;
      for (const StateBlob& b : opt->state()) listed += b.bytes;
      CHECK(listed == optimizer_state_bytes(cfg, table));  // every byte is checkpointed
    }
  }
  // Adapprox's V_t scratch is the largest matrix, mlp.fcw here: 4C x C = 512 x 128 floats.
  CHECK(optimizer_workspace_bytes(optimizer_cfg("adapprox"), table) == 512 * 128 * 4);
  CHECK(optimizer_workspace_bytes(optimizer_cfg("adamw"), table) == 0);
  // The CUDA optimizers' workspace (cuda_optimizer_workspace_bytes) is tested in
  // tests/test_memory_plan.cpp.
}

TEST_CASE("An unknown optimizer name fails naming the key and the choices") {
  CpuDevice dev;
  CHECK_THROWS_WITH(make_optimizer(optimizer_cfg("sgd"), tiny_table(), dev, 0),
                    Catch::Contains("optimizer.name = \"sgd\"") && Catch::Contains("adapprox"));
  json cfg = optimizer_cfg("adapprox");
  cfg["optimizer"]["adapprox"]["denominator"] = "exact";
  CHECK_THROWS_WITH(make_optimizer(cfg, tiny_table(), dev, 0),
                    Catch::Contains("optimizer.adapprox.denominator"));
  cfg = optimizer_cfg("adamw");
  cfg["optimizer"]["adamw"]["beta2"] = 1.5;
  CHECK_THROWS_WITH(make_optimizer(cfg, tiny_table(), dev, 0),
                    Catch::Contains("optimizer.adamw.beta2 = 1.5"));
}
