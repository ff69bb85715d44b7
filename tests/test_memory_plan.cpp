// The analytic memory plan against what a CPU run really allocates, for every
// optimizer in both update modes and for classifier chunks, the fused mode's gradient
// saving, the chunked classifier's logits, and the Adapprox paper table's measured column.
#include <algorithm>
#include <sstream>

#include "backend.hpp"
#include "catch.hpp"
#include "cli.hpp"
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

TEST_CASE("late_wte_grad: the plan's gradients lose wte and a CPU run allocates the plan") {
  for (const char* name : {"adamw", "adalomo"}) {
    INFO(name);
    json cfg = tiny(name, "fused");
    const MemoryPlan early = plan_memory(cfg, false);
    cfg["train"]["late_wte_grad"] = true;
    const MemoryPlan late = plan_memory(cfg, false);
    const size_t wte = 64 * 16 * sizeof(float);  // padded vocab x C
    CHECK(late.bytes[int(MemCategory::grads)] == early.bytes[int(MemCategory::grads)] - wte);
    // fch (2 layers x 16 rows x 64 floats) already holds wte's 1024 elements.
    CHECK(late.bytes[int(MemCategory::activations)] ==
          early.bytes[int(MemCategory::activations)]);
    const MemoryLedger m = measure_memory(cfg, 2);
    for (int c = 0; c < kMemCategories; c++) {
      INFO(mem_category_name(MemCategory(c)));
      CHECK(m.peak[c] == late.bytes[c]);
    }
  }
}

TEST_CASE("a CPU run with classifier chunks that do not divide B*T matches the plan too") {
  for (int chunk : {5, 100}) {  // 16 rows: chunks of 5, 5, 5, 1; and all 16 at once
    INFO("chunk " << chunk);
    json cfg = tiny("adalomo", "fused");
    cfg["train"]["classifier_chunk"] = chunk;
    const MemoryPlan plan = plan_memory(cfg, false);
    const MemoryLedger m = measure_memory(cfg, 2);
    CHECK(m.peak[int(MemCategory::activations)] == plan.bytes[int(MemCategory::activations)]);
    CHECK(m.total_peak == plan.total());
  }
}

TEST_CASE("the logits take one chunk of rows: auto stays within 512 MiB on the GPU") {
  const ModelConfig c = ModelConfig::from_depth(12);
  auto logits = [&](int chunk, size_t elem) {
    for (const auto& e : activation_plan(c, 16, 1024, 0, chunk, elem, false).entries)
      if (std::string(e.name) == "logits") return e.bytes;
    FAIL("no logits entry");
    return size_t(0);
  };
  CHECK(logits(16 * 1024, 2) == size_t(16) * 1024 * 50304 * 2);  // 1.57 GiB unchunked
  CHECK(logits(2048, 2) == size_t(2048) * 50304 * 2);
  CHECK(classifier_chunk_rows(0, 16 * 1024, c, 2, true) == 4096);  // 393 MiB of bf16
  CHECK(classifier_chunk_rows(0, 16 * 1024, c, 4, true) == 2048);  // fp32
  CHECK(classifier_chunk_rows(0, 16 * 1024, c, 4, false) == 256);
  CHECK(classifier_chunk_rows(0, 100, c, 2, true) == 100);  // never more than B*T rows
  CHECK(classifier_chunk_rows(5000, 4096, c, 2, true) == 4096);
  CHECK(classifier_chunk_rows(777, 4096, c, 2, false) == 777);
  CHECK(classifier_chunk_rows(777, 4096, c, 2, true) == 776);  // 8-row steps keep alignment
  CHECK(classifier_chunk_rows(5, 4096, c, 2, true) == 8);
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

TEST_CASE("fused Adapprox's gradients take one arena, side lanes or not") {
  // The lanes factorize the kept V_t and never read a gradient, so the arena is reused
  // as soon as update_many() returns, as for the other optimizers.
  auto grads = [](const std::string& name, int lanes, bool cuda, int world = 1) {
    const json cfg = load_config("", {"optimizer.name=\"" + name + "\"", "optimizer.update=\"fused\"",
                                      "optimizer.adapprox.lanes=" + std::to_string(lanes)});
    return plan_memory(cfg, cuda, world).bytes[int(MemCategory::grads)];
  };
  const ParamTable t(ModelConfig::from_depth(12));
  CHECK(grads("adapprox", 8, true) == grads("adapprox", 0, true));
  CHECK(grads("adapprox", 8, true) == grads("adalomo", 8, true));
  CHECK(grads("adapprox", 8, true, 2) == grads("adalomo", 8, true, 2));  // two halves
  CHECK(grads("adapprox", 8, true, 2) ==
        grads("adapprox", 8, true) + grad_memory_plan(t, true).arena_elems * 2);  // bf16
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
  // cuBLASLt's workspace and the kernels' scratch (AdamW has none of its own); a CPU
  // plan has none
  CHECK(p.bytes[int(MemCategory::workspace)] > kLtWorkspaceBytes);
  CHECK(p.bytes[int(MemCategory::workspace)] == gpu_workspace_plan(cfg, t).total());
  CHECK(plan_memory(cfg, false).bytes[int(MemCategory::workspace)] == 0);
}

// The GPU workspace line is the CUDA backend's own size functions, summed. The figures
// here are computed from the kernels' constants (layernorm.cu: 256 row chunks x 3C
// floats; matmul.cu: 128 row chunks x OC floats, or with ones-padded input rows the
// dweight GEMM's (C + 8) x OC floats; attention.cu: B T NH floats;
// optim_common.cuh: kMaxJobs = 32 jobs x kReduceBlocks = 1024 double partials).
#ifdef TRAIN_GPT2_CUDA
namespace {
void check_parts(const json& cfg, size_t scratch) {
  const ParamTable t(model_config(cfg));
  const GpuWorkspacePlan w = gpu_workspace_plan(cfg, t);
  const PlanGpu gpu = plan_gpu();
  CHECK(w.cublaslt == size_t(32) << 20);
  // With a GPU the encoder's CUB sort storage may be the largest (not at these sizes).
  if (!gpu.present) CHECK(w.kernel_scratch == scratch);
  CHECK(w.kernel_scratch >= scratch);
  CHECK(w.grad_norms == (size_t(32) * 1024 + t.params.size()) * sizeof(double));
  CHECK(w.optimizer == cuda_optimizer_workspace_bytes(cfg, t, gpu));
  CHECK(plan_memory(cfg, true).bytes[int(MemCategory::workspace)] == w.total());
  CHECK(w.total() == w.cublaslt + w.kernel_scratch + w.grad_norms + w.optimizer);
}
}  // namespace

TEST_CASE("GPU workspace plan: cuBLASLt, kernel scratch, gradient norms, optimizer") {
  json small = tiny("adalomo", "fused");
  small["train"]["device"] = "cuda";
  // C = 16, B*T = 16: layernorm 256 * 3 * 16 floats (dweight, dbias and dinp partial
  // sums) = 48 KiB, above fc's padded dweight GEMM, (16 + 8) * 4C floats.
  check_parts(small, 256 * 3 * 16 * 4);
  // d12, B 16 x 1024: fc's padded dweight GEMM, (768 + 8) * 3072 floats = 9.09 MiB, above
  // layernorm's 256 * 3 * 768 floats (2.25 MiB) and attention's 16 * 1024 * 12 floats.
  const json d12 = load_config("", {"optimizer.name=\"adalomo\"", "data.batch_size=16",
                                    "data.seq_len=1024"});
  check_parts(d12, size_t(776) * 3072 * 4);
  const ParamTable t(model_config(d12));
  CHECK(t.params.size() == 148);  // 2 + 12 x 12 + 2 tensors: 263,328 bytes of norms
  CHECK(gpu_workspace_plan(d12, t).grad_norms == 263328);
  const PlanGpu gpu = plan_gpu();
  auto opt = [&](const char* name) {
    json c = d12;
    c["optimizer"]["name"] = name;
    return cuda_optimizer_workspace_bytes(c, t, gpu);
  };
  CHECK(opt("adamw") == 0);
  CHECK(opt("lomo") == 0);
  CHECK(opt("adalomo") == opt("adafactor"));         // AdaLomo runs Adafactor's kernels
  CHECK(opt("adafactor") == opt("came") + 148 * 8);  // 2 scalar slots per tensor against 1
  // Adapprox: at least its V_t scratch (wte, 50304 x 768 floats) and thin buffers.
  CHECK(opt("adapprox") > size_t(50304) * 768 * 4);
  // With side lanes (optimizer.adapprox.lanes) every matrix's V_t is kept for the
  // lanes to factorize; each lane adds the same thin buffers, no V_t scratch of its own.
  auto lanes = [&](int n) {
    json c = d12;
    c["optimizer"]["name"] = "adapprox";
    c["optimizer"]["adapprox"]["lanes"] = n;
    return cuda_optimizer_workspace_bytes(c, t, gpu);
  };
  size_t matrix_elems = 0;
  for (const ParamSpec& p : t.params)
    if (p.is_matrix()) matrix_elems += p.numel;
  CHECK(lanes(1) > matrix_elems * 4);
  CHECK(lanes(0) < matrix_elems * 4);
  const size_t lane = lanes(2) - lanes(1);
  CHECK(lane > 0);
  CHECK(lane < size_t(768) * 3072 * 4);
  CHECK(lanes(4) == lanes(1) + 3 * lane);
  CHECK(opt("adapprox") == lanes(8));  // the default
  // AdaLomo's factored partials, factors and tickets on 132 SMs, with the kernel scratch
  // and the norms above.
  if (gpu.sms == 132) {
    CHECK(opt("adalomo") == 8438368);
    CHECK(gpu_workspace_plan(d12, t).total() - (size_t(32) << 20) ==
          8438368 + size_t(776) * 3072 * 4 + 263328);
  }
}

// The GPU twin of the first test case: a GPU run's workspace is the plan's to the byte
// (the ledger files requested bytes; cudaMalloc's rounding is not in it), and so is the
// total peak, except Adapprox's cuSOLVER work, which the plan cannot size.
TEST_CASE("a GPU run's measured memory equals the plan, every optimizer, both modes", "[gpu]") {
  for (const char* name : {"adamw", "lomo", "adalomo", "adafactor", "came", "adapprox"}) {
    for (const char* update : {"fused", "after_backward"}) {
      json cfg = tiny(name, update);
      cfg["model"]["channels"] = 64;
      cfg["model"]["heads"] = 1;  // head size 64: the tensor-core attention in bf16
      cfg["train"]["device"] = "cuda";
      const MemoryPlan plan = plan_memory(cfg, true);
      const MemoryLedger m = measure_memory(cfg, 2);
      INFO(name << " " << update << ": " << plan.note);
      const int ws = int(MemCategory::workspace);
      for (int c = 0; c < kMemCategories; c++) {
        INFO(mem_category_name(MemCategory(c)));
        if (c == ws && std::string(name) == "adapprox") CHECK(m.peak[c] > plan.bytes[c]);
        else CHECK(m.peak[c] == plan.bytes[c]);
      }
      if (std::string(name) == "adapprox") CHECK(m.total_peak > plan.total());
      else CHECK(m.total_peak == plan.total());
    }
  }
}
#endif

// The Adapprox paper table's measured column: every optimizer built for real on the CPU,
// its state read from the ledger, must give the same saving as the formula column.
// (Allocates AdamW and Adapprox state for 117M and 345M: ~8 s of zero-filling here.)
TEST_CASE("memory --table adapprox --measure: allocated state matches the formula") {
  const CliRun r = run_cli("memory --table adapprox --measure --device cpu");
  REQUIRE(r.exit_code() == 0);
  std::istringstream lines(r.out);
  int rows = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("117M", 0) != 0 && line.rfind("345M", 0) != 0) continue;
    rows++;
    // "<model> <rank> | ours measured paper delta | ours measured paper delta"
    for (size_t bar = line.find('|'); bar != std::string::npos; bar = line.find('|', bar + 1)) {
      std::istringstream cell(line.substr(bar + 1));
      std::string ours, measured;
      cell >> ours >> measured;
      INFO(line);
      CHECK(ours == measured);
      CHECK(!ours.empty());
    }
  }
  CHECK(rows == 7);
}

TEST_CASE("ZeRO-1 splits the optimizer state over the ranks, whole tensors, balanced") {
  const json cfg = load_config("", {"model.depth=12", "optimizer.name=\"adamw\""});
  const ParamTable table(model_config(cfg));
  const size_t whole = optimizer_state_bytes(cfg, table);
  size_t largest = 0;
  for (const ParamSpec& p : table.params) largest = std::max(largest, p.numel);
  for (int world : {2, 3, 8}) {
    INFO("world " << world);
    const std::vector<int> owner = zero1_owners(table, world);
    REQUIRE(owner.size() == table.params.size());
    std::vector<size_t> load(world, 0);
    for (const ParamSpec& p : table.params) {
      REQUIRE(owner[p.id] >= 0);
      REQUIRE(owner[p.id] < world);
      load[owner[p.id]] += p.numel;
    }
    const auto [lo, hi] = std::minmax_element(load.begin(), load.end());
    CHECK(*hi - *lo <= largest);  // greedy largest-first: within one tensor of even
    CHECK(zero1_owners(table, world) == owner);
    size_t sum = 0, most = 0;
    for (int r = 0; r < world; r++) {
      const size_t share = optimizer_state_bytes(cfg, zero1_shard(table, world, r));
      sum += share, most = std::max(most, share);
    }
    CHECK(sum == whole);
    CHECK(plan_memory(load_config("", {"model.depth=12", "optimizer.name=\"adamw\"",
                                       "optimizer.update=\"after_backward\"", "train.zero1=true"}),
                      true, world)
              .bytes[int(MemCategory::optimizer_state)] == most);
  }
}

TEST_CASE("memory --gpus says whether each GPU holds a ZeRO-1 share or the whole state") {
  const CliRun sharded = run_cli("memory --model d12 --gpus 4 --json");
  REQUIRE(sharded.exit_code() == 0);
  const json s = json::parse(sharded.out);
  const CliRun whole = run_cli("memory --model d12 --gpus 4 --json --set train.zero1=false");
  REQUIRE(whole.exit_code() == 0);
  const json w = json::parse(whole.out);
  CHECK(s["zero1"] == true);
  CHECK(w["zero1"] == false);
  CHECK(s["gpus"] == 4);
  const size_t share = s["bytes"]["optimizer_state"], all = w["bytes"]["optimizer_state"];
  // The largest of 4 shares: at least a quarter; at d12 wte's 31% alone sets it.
  CHECK(4 * share >= all);
  CHECK(share < all / 2);
  const CliRun text = run_cli("memory --model d12 --gpus 4 --optimizer adalomo");
  CHECK_THAT(text.out, Catch::Contains("per GPU of 4, each holding the whole optimizer state"));
}
