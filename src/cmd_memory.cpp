// `train_gpt2 memory`: where every byte of a run goes, computed without a GPU.
//   train_gpt2 memory --model d12 --optimizer adalomo --batch 16 --seq 1024
//   train_gpt2 memory --model d24 --optimizer adapprox --rank 8 --no-first-moment --json
//   train_gpt2 memory --table adapprox       (the Adapprox paper's state-memory table)
//   train_gpt2 memory --table adapprox --measure   (... and each optimizer built for real)
//   train_gpt2 memory --config configs/quickstart.json --device cpu --measure
//   train_gpt2 memory --model d12 --optimizer adalomo --gpus 8   (per GPU, data parallel)
#include <cmath>
#include <cstdio>
#include <map>

#include "commands.hpp"
#include "error.hpp"
#include "memory_plan.hpp"
#include "report.hpp"
#include "optimizer.hpp"
#include "run_backend.hpp"

namespace gpt2 {

namespace {

struct MemoryArgs {
  std::string config, model, optimizer, update, precision, device = "cuda", table;
  int rank = 0, batch = 0, seq = 0, recompute = -1, gpus = 1;
  bool no_first_moment = false, as_json = false, measure = false;
  std::vector<std::string> sets;
};

// The flags are shorthands for config keys; everything goes through load_config, so
// a bad combination gets the same checked error a training run would.
json resolve(const MemoryArgs& a) {
  std::vector<std::string> o;
  if (!a.model.empty()) {
    if (a.model.size() < 2 || a.model[0] != 'd' ||
        a.model.find_first_not_of("0123456789", 1) != std::string::npos)
      fail("--model ", a.model, ": expected dN, e.g. d12 (124M) or d24 (345M)");
    o.push_back("model.depth=" + a.model.substr(1));
  }
  if (!a.optimizer.empty()) o.push_back("optimizer.name=\"" + a.optimizer + "\"");
  if (!a.update.empty()) o.push_back("optimizer.update=\"" + a.update + "\"");
  if (a.batch) o.push_back(cat("data.batch_size=", a.batch));
  if (a.seq) o.push_back(cat("data.seq_len=", a.seq));
  if (a.recompute >= 0) o.push_back(cat("train.recompute=", a.recompute));
  o.push_back("train.device=\"" + a.device + "\"");
  if (!a.precision.empty()) o.push_back("train.precision=\"" + a.precision + "\"");
  if (a.rank) o.push_back(cat("optimizer.adapprox.k_max=", a.rank));
  o.insert(o.end(), a.sets.begin(), a.sets.end());
  json cfg = load_config(a.config, o);
  if (a.no_first_moment) {
    const std::string name = cfg["optimizer"]["name"].get<std::string>();
    if (name == "adafactor") o.push_back("optimizer.adafactor.beta1=null");
    else if (name == "adapprox") o.push_back("optimizer.adapprox.beta1=0");
    else if (name == "adamw" || name == "came")
      fail("--no-first-moment: ", name, " always keeps a first moment (only adafactor and ",
           "adapprox have it as an option; lomo and adalomo have none)");
    cfg = load_config(a.config, o);
  }
  return cfg;
}

void print_plan(const json& cfg, const MemoryPlan& plan, bool as_json, const json& measured,
                int gpus) {
  const ModelConfig mc = model_config(cfg);
  const ParamTable table(mc);
  const bool sharded = gpus > 1 && cfg["train"]["zero1"].get<bool>();
  if (as_json) {
    json j = {{"model", cat("d", mc.num_layers)}, {"parameters", table.num_parameters()},
              {"optimizer", cfg["optimizer"]["name"]}, {"update", resolved_update(cfg)},
              {"device", plan.cuda ? "cuda" : "cpu"},
              {"precision", plan.elem_size == 2 ? "bf16" : "fp32"},
              {"batch_size", cfg["data"]["batch_size"]}, {"seq_len", cfg["data"]["seq_len"]},
              {"gpus", gpus}, {"zero1", sharded}, {"total", plan.total()}};
    for (int c = 0; c < kMemCategories; c++) j["bytes"][mem_category_name(MemCategory(c))] = plan.bytes[c];
    if (!plan.note.empty()) j["note"] = plan.note;
    if (!measured.is_null()) j["measured"] = measured;
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("memory plan: d%d (%.2fM parameters), %s, %s update, %s on %s, batch %d x %d\n",
              mc.num_layers, table.num_parameters() / 1e6,
              cfg["optimizer"]["name"].get<std::string>().c_str(), resolved_update(cfg).c_str(),
              plan.elem_size == 2 ? "bf16" : "fp32", plan.cuda ? "GPU" : "CPU",
              cfg["data"]["batch_size"].get<int>(), cfg["data"]["seq_len"].get<int>());
  if (gpus > 1)
    std::printf("per GPU of %d, %s\n", gpus,
                sharded ? "each holding its ZeRO-1 share of the optimizer state (the largest shown)"
                        : "each holding the whole optimizer state");
  std::printf("%s", memory_plan_table(plan).c_str());
  if (!plan.note.empty()) std::printf("(%s)\n", plan.note.c_str());
}

// Optimizer-state bytes as the device ledger files them once `cfg`'s optimizer has
// been built on its backend (state is allocated at construction, at k_max for Adapprox).
size_t measured_state_bytes(const json& cfg) {
  size_t bytes = 0;
  with_backend(cfg, 0, [&](auto& be) {
    const ParamTable table(model_config(cfg));
    const auto opt = be.optimizer(table);
    bytes = be.dev->ledger().current[int(MemCategory::optimizer_state)];
  });
  return bytes;
}

// The Adapprox paper's optimizer-state savings vs AdamW (arXiv 2403.14958, abstract and
// its LaTeX source): the two ends of each range are the paper's numbers; the middle rows
// are our calculator's, which reproduces both ends exactly (shared/docs/optimizers.md 6.6).
// With `measure`, every optimizer is also built on `device` and its state read from the
// ledger, so the table shows what a run really allocates beside the formula.
void print_adapprox_table(bool measure, const std::string& device) {
  struct Row { int depth; int divisor; double paper_m1, paper_no_m1; };  // divisor 0: k = 1
  const Row rows[] = {{12, 0, 49.9, 99.9},     {12, 32, NAN, NAN}, {12, 16, NAN, NAN},
                      {12, 8, NAN, NAN},       {12, 4, 34.5, 84.5}, {24, 0, 49.9, 99.9},
                      {24, 4, 33.8, 83.8}};
  std::printf("Adapprox optimizer-state saving vs AdamW (fp32 state, vocab 50257, k per matrix%s)\n",
              measure ? cat("; measured: allocated on ", device).c_str() : "");
  const char* cols = measure ? "ours measured paper delta" : "ours paper delta";
  std::printf("%-6s %-12s | with first moment: %s | without first moment: %s\n", "model",
              "rank", cols, cols);
  std::map<int, double> adamw_measured;  // per depth: AdamW's state is the same on every row
  for (const Row& r : rows) {
    const std::vector<std::string> base = {cat("model.depth=", r.depth),
                                           "train.device=\"" + device + "\""};
    std::vector<std::string> o = base;
    o.push_back("optimizer.name=\"adamw\"");
    const json adamw = load_config("", o);
    const ParamTable t(model_config(adamw));
    const double adamw_bytes = double(optimizer_state_bytes(adamw, t));
    if (measure && !adamw_measured.count(r.depth))
      adamw_measured[r.depth] = double(measured_state_bytes(adamw));
    std::string cells[2];
    for (int m1 = 0; m1 < 2; m1++) {
      o = base;
      o.push_back("optimizer.name=\"adapprox\"");
      o.push_back(r.divisor ? cat("optimizer.adapprox.rank_divisor=", r.divisor)
                            : std::string("optimizer.adapprox.k_max=1"));
      o.push_back(m1 ? "optimizer.adapprox.beta1=0.9" : "optimizer.adapprox.beta1=0");
      const json ada = load_config("", o);
      const double ours = 100.0 * (1.0 - double(optimizer_state_bytes(ada, t)) / adamw_bytes);
      const double paper = m1 ? r.paper_m1 : r.paper_no_m1;
      char c[96];
      int n = std::snprintf(c, sizeof c, "%6.1f%%", ours);
      if (measure)
        n += std::snprintf(c + n, sizeof c - n, " %6.1f%%",
                           100.0 * (1.0 - double(measured_state_bytes(ada)) /
                                            adamw_measured.at(r.depth)));
      if (std::isnan(paper)) std::snprintf(c + n, sizeof c - n, " %6s %7s", "-", "-");
      else std::snprintf(c + n, sizeof c - n, " %5.1f%% %+5.1fpp", paper, ours - paper);
      cells[m1] = c;
    }
    std::printf("%-6s %-12s | %s | %s\n", r.depth == 12 ? "117M" : "345M",
                r.divisor ? cat("min(m,n)/", r.divisor).c_str() : "k = 1", cells[1].c_str(),
                cells[0].c_str());
  }
}

}  // namespace

void add_memory_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "memory", "where every byte of a run goes (analytic; --measure allocates for real)");
  static MemoryArgs a;
  cmd->add_option("--config", a.config, "start from this config (default: built-in defaults)");
  cmd->add_option("--model", a.model, "model size: d12 (124M), d24 (345M), any dN");
  cmd->add_option("--optimizer", a.optimizer, "adamw, lomo, adalomo, adafactor, came, adapprox");
  cmd->add_option("--rank", a.rank, "Adapprox rank k for every matrix (optimizer.adapprox.k_max)");
  cmd->add_flag("--no-first-moment", a.no_first_moment,
                "Adafactor/Adapprox without the first moment");
  cmd->add_option("--batch", a.batch, "batch size B");
  cmd->add_option("--seq", a.seq, "sequence length T");
  cmd->add_option("--update", a.update, "fused or after_backward");
  cmd->add_option("--precision", a.precision, "bf16 or fp32 (GPU)");
  cmd->add_option("--recompute", a.recompute, "activation recompute level 0, 1, 2");
  cmd->add_option("--device", a.device, "cuda (default) or cpu")->check(CLI::IsMember({"cuda", "cpu"}));
  cmd->add_option("--set", a.sets, "any other config key: --set optimizer.adapprox.k_max=16");
  cmd->add_flag("--json", a.as_json, "print JSON");
  cmd->add_option("--table", a.table, "print a paper's table: adapprox")
      ->check(CLI::IsMember({"adapprox"}));
  cmd->add_flag("--measure", a.measure, "also allocate the run for real and compare");
  cmd->add_option("--gpus", a.gpus, "per GPU of a data-parallel run on N GPUs")
      ->check(CLI::PositiveNumber);
  cmd->callback([] {
    if (!a.table.empty()) return print_adapprox_table(a.measure, a.device);
    const json cfg = resolve(a);
    const MemoryPlan plan = plan_memory(cfg, a.device == "cuda", a.gpus);
    if (a.measure && a.gpus > 1)
      fail("--measure allocates a single-GPU run, not one rank of --gpus ", a.gpus,
           ": drop --gpus, or read the ledger a `train --gpus ", a.gpus, "` run prints");
    if (a.measure) {
      size_t driver = 0;
      const MemoryLedger m = measure_memory(cfg, 2, &driver);
      if (a.as_json) {
        json measured = memory_json(m);
        if (driver) measured["driver_bytes_in_use"] = driver;
        return print_plan(cfg, plan, true, measured, a.gpus);
      }
      print_plan(cfg, plan, false, nullptr, a.gpus);
      std::printf("measured (2 steps on random tokens):\n%s", memory_table(m).c_str());
      std::printf("measured peak %s vs plan %s (%+.3f%%)\n", format_bytes(m.total_peak).c_str(),
                  format_bytes(plan.total()).c_str(),
                  100.0 * (double(m.total_peak) - double(plan.total())) / double(plan.total()));
      if (driver)
        std::printf("GPU memory in use per the driver (incl. CUDA context): %s\n",
                    format_bytes(driver).c_str());
      return;
    }
    print_plan(cfg, plan, a.as_json, nullptr, a.gpus);
  });
}

}  // namespace gpt2
