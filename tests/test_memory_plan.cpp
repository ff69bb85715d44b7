// The analytic memory plan against what a CPU run really allocates, for every
// optimizer in both update modes, and the fused mode's gradient saving.
#include "catch.hpp"
#include "memory_plan.hpp"
#include "update_pipeline.hpp"

using namespace gpt2;

namespace {

json tiny(const std::string& optimizer, const std::string& update) {
  return load_config("", {"model.depth=2", "model.channels=16", "model.heads=2",
                          "model.max_seq_len=16", "model.vocab_size=50", "model.padded_vocab_size=64",
                          "data.batch_size=2", "data.seq_len=8", "train.device=\"cpu\"",
                          "optimizer.name=\"" + optimizer + "\"",
                          "optimizer.update=\"" + update + "\"", "train.grad_clip=0"});
}

}  // namespace

TEST_CASE("a CPU run's measured memory equals the plan, every optimizer, both modes") {
  for (const char* name : {"adamw", "lomo", "adalomo", "adafactor", "came", "adapprox"}) {
    for (const char* update : {"fused", "after_backward"}) {
      const json cfg = tiny(name, update);
      const MemoryPlan plan = plan_memory(cfg, false);
      const MemoryLedger m = measure_memory(cfg, 2);
      INFO(name << " " << update);
      for (int c = 0; c < kMemCategories; c++) {
        INFO(mem_category_name(MemCategory(c)));
        CHECK(m.peak[c] == plan.bytes[c]);
      }
      CHECK(m.total_peak == plan.total());
    }
  }
}

TEST_CASE("fused gradients take wte plus one layer, not the whole model") {
  const ParamTable t(ModelConfig::from_depth(12));
  const GradMemoryPlan full = grad_memory_plan(t, false), fused = grad_memory_plan(t, true);
  CHECK(full.grad_elems == t.total);
  const size_t C = 768;
  const size_t layer = 12 * C * C + 13 * C;  // qkv 3C^2, proj C^2, fc 4C^2, fcproj 4C^2 + biases/ln
  CHECK(fused.arena_elems == layer);
  CHECK(fused.grad_elems == size_t(50304) * C + layer);
  CHECK(double(fused.grad_elems) / full.grad_elems < 0.4);
}

TEST_CASE("with several ranks the fused arena holds two layers; after_backward is unchanged") {
  const ParamTable t(ModelConfig::from_depth(12));
  const GradMemoryPlan one = grad_memory_plan(t, true), two = grad_memory_plan(t, true, 2);
  CHECK(two.arena_elems == 2 * one.arena_elems);
  CHECK(two.grad_elems == one.grad_elems + one.arena_elems);
  CHECK(grad_memory_plan(t, false, 2).grad_elems == t.total);
}

TEST_CASE("a data-parallel rank's plan: the second arena half and the comm scratch") {
  const json cfg = load_config("", {"optimizer.name=\"adalomo\"", "data.batch_size=16"});
  const MemoryPlan one = plan_memory(cfg, true), two = plan_memory(cfg, true, 2);
  const ParamTable t(ModelConfig::from_depth(12));
  const size_t arena = grad_memory_plan(t, true).arena_elems;
  CHECK(two.bytes[int(MemCategory::grads)] == one.bytes[int(MemCategory::grads)] + arena * 2);
  CHECK(one.bytes[int(MemCategory::communication)] == 0);
  CHECK(two.bytes[int(MemCategory::communication)] == 64 * sizeof(double));
  CHECK(two.total() == one.total() + arena * 2 + 64 * sizeof(double));
}

TEST_CASE("bf16 GPU plan: 2-byte params and grads, fp32 master weights and state") {
  const json cfg = load_config("", {"optimizer.name=\"adamw\"", "data.batch_size=16",
                                    "data.seq_len=1024"});
  const MemoryPlan p = plan_memory(cfg, true);
  const ParamTable t(ModelConfig::from_depth(12));
  CHECK(p.bytes[int(MemCategory::params)] == t.total * 2);
  CHECK(p.bytes[int(MemCategory::master_weights)] == t.total * 4);
  CHECK(p.bytes[int(MemCategory::grads)] == t.total * 2);
  CHECK(p.bytes[int(MemCategory::optimizer_state)] == t.num_parameters() * 8);
}
