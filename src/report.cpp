#include "report.hpp"

#include <unistd.h>

#include <filesystem>

#include "error.hpp"

namespace gpt2 {

RunLog::RunLog(const json& cfg, bool append) : cfg_(cfg) {
  const json& log = cfg["log"];
  every_ = std::max(1, log["every"].get<int>());
  const std::string p = log["progress"].get<std::string>();
  progress_ = p == "on" || (p == "auto" && isatty(fileno(stdout)));
  std::string path = log["metrics"].get<std::string>();
  if (path.empty())
    path = (std::filesystem::path(cfg["checkpoint"]["dir"].get<std::string>()) / "metrics.jsonl")
               .string();
  // Appended line by line (a crash loses at most the last line); a resumed run appends.
  metrics_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (!metrics_) fail("cannot open metrics file ", path, " (log.metrics) for writing");
}

RunLog::~RunLog() {
  if (metrics_) std::fclose(metrics_);
}

void RunLog::metric(const json& j) {
  std::fprintf(metrics_, "%s\n", j.dump().c_str());
  std::fflush(metrics_);
}

std::string memory_table(const MemoryLedger& m) {
  std::string s = "  category          current        peak\n";
  char line[128];
  for (int c = 0; c < kMemCategories; c++) {
    if (!m.peak[c]) continue;
    std::snprintf(line, sizeof line, "  %-15s %11s %11s\n", mem_category_name(MemCategory(c)),
                  format_bytes(m.current[c]).c_str(), format_bytes(m.peak[c]).c_str());
    s += line;
  }
  std::snprintf(line, sizeof line, "  %-15s %11s %11s\n", "total", format_bytes(m.total).c_str(),
                format_bytes(m.total_peak).c_str());
  return s + line;
}

json memory_json(const MemoryLedger& m) {
  json j = json::object();
  for (int c = 0; c < kMemCategories; c++)
    j[mem_category_name(MemCategory(c))] = {{"current", m.current[c]}, {"peak", m.peak[c]}};
  j["total"] = {{"current", m.total}, {"peak", m.total_peak}};
  return j;
}

void RunLog::startup(const ParamTable& table, const MemoryLedger& ledger, bool fused) {
  const ModelConfig& c = table.cfg;
  const json& o = cfg_["optimizer"];
  std::printf("model      d%d: %d layers, %d channels, %d heads, %.2fM parameters\n",
              c.num_layers, c.num_layers, c.channels, c.num_heads, table.num_parameters() / 1e6);
  std::printf("data       batch %d x seq %d, train %s, val %s\n",
              cfg_["data"]["batch_size"].get<int>(), cfg_["data"]["seq_len"].get<int>(),
              cfg_["data"]["train"].get<std::string>().c_str(),
              cfg_["data"]["val"].get<std::string>().c_str());
  // The clip norm in force (train.grad_clip, or its default for the update mode): the
  // step lines' norm says which steps it scales.
  const double clip_value = cfg_["train"]["grad_clip_value"].get<double>();
  std::printf("optimizer  %s, %s update, lr %g, weight_decay %g, grad_clip %g%s\n",
              o["name"].get<std::string>().c_str(), fused ? "fused" : "after_backward",
              o["lr"].get<double>(), o["weight_decay"].get<double>(), resolved_grad_clip(cfg_),
              clip_value > 0 ? cat(", grad_clip_value ", clip_value).c_str() : "");
  std::printf("schedule   %lld steps, warmup %lld, %s decay to %g x lr\n",
              (long long)cfg_["schedule"]["steps"].get<int64_t>(),
              (long long)cfg_["schedule"]["warmup_steps"].get<int64_t>(),
              cfg_["schedule"]["decay"].get<std::string>().c_str(),
              cfg_["schedule"]["min_lr_fraction"].get<double>());
  std::printf("memory at start:\n%s", memory_table(ledger).c_str());
  std::fflush(stdout);
  metric({{"event", "start"}, {"config", cfg_}, {"memory", memory_json(ledger)}});
}

void RunLog::step(int64_t step, int64_t steps, float loss, float lr, double grad_norm, double ms,
                  double tokens, double flops_per_token, double peak_flops,
                  const MemoryLedger& ledger, bool skipped,
                  const std::vector<std::pair<std::string, double>>& stats) {
  const double tok_s = tokens / (ms / 1000.0);
  const double mfu = peak_flops > 0 ? tok_s * flops_per_token / peak_flops : 0.0;
  json m = {{"event", "step"}, {"step", step + 1}, {"loss", loss}, {"lr", lr},
            {"grad_norm", grad_norm}, {"ms", ms}, {"tokens_per_s", tok_s},
            {"memory", ledger.total}, {"skipped", skipped}};
  if (peak_flops > 0) m["mfu"] = mfu;
  std::string stats_text;
  for (const auto& [name, value] : stats) {
    m[name] = value;
    stats_text += cat(" | ", name, " ", value);
  }
  metric(m);
  if ((step + 1) % every_ != 0 && step + 1 != steps) return;
  if (progress_) {
    const int width = 20, done = int(width * (step + 1) / steps);
    std::printf("[%s%s] ", std::string(done, '#').c_str(), std::string(width - done, '.').c_str());
  }
  char mfu_text[32] = "";
  if (peak_flops > 0) std::snprintf(mfu_text, sizeof mfu_text, " | MFU %.1f%%", 100 * mfu);
  std::printf("step %5lld/%lld | loss %.4f | lr %.2e | norm %.3f | %.1f ms | %.0f tok/s%s | mem %s%s%s\n",
              (long long)step + 1, (long long)steps, loss, lr, grad_norm, ms, tok_s, mfu_text,
              format_bytes(ledger.total).c_str(), stats_text.c_str(),
              skipped ? " | SKIPPED (loss not finite)" : "");
  std::fflush(stdout);
}

void RunLog::val(int64_t step, double loss) {
  std::printf("val loss %.4f at step %lld\n", loss, (long long)step);
  std::fflush(stdout);
  metric({{"event", "val"}, {"step", step}, {"val_loss", loss}});
}

void RunLog::sample(int64_t step, const std::string& text) {
  std::printf("---- sample at step %lld\n%s\n----\n", (long long)step, text.c_str());
  std::fflush(stdout);
  metric({{"event", "sample"}, {"step", step}, {"text", text}});
}

void RunLog::finish(const MemoryLedger& ledger, size_t driver_bytes) {
  std::printf("memory peak:\n%s", memory_table(ledger).c_str());
  json end = {{"event", "end"}, {"memory", memory_json(ledger)}};
  if (driver_bytes) {
    std::printf("  GPU memory in use (driver, incl. CUDA context): %s\n",
                format_bytes(driver_bytes).c_str());
    end["driver_bytes_in_use"] = driver_bytes;
  }
  metric(end);
}

}  // namespace gpt2
