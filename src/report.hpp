// What a training run prints and records: the startup table (resolved settings and the
// memory ledger), one dense line per step, val loss, samples, the peak memory at the
// end; the same as JSON lines in the metrics file (log.metrics, default
// <checkpoint.dir>/metrics.jsonl).
#pragma once
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "config.hpp"
#include "memory.hpp"
#include "param_table.hpp"

namespace gpt2 {

class RunLog {
 public:
  RunLog(const json& cfg, bool append);
  ~RunLog();
  void startup(const ParamTable& table, const MemoryLedger& ledger, bool fused);
  // peak_flops 0: no MFU (CPU runs).
  // stats: the optimizer's step_stats(), appended to the line and the metrics record.
  void step(int64_t step, int64_t steps, float loss, float lr, double grad_norm, double ms,
            double tokens, double flops_per_token, double peak_flops, const MemoryLedger& ledger,
            bool skipped, const std::vector<std::pair<std::string, double>>& stats = {});
  void val(int64_t step, double loss);
  void sample(int64_t step, const std::string& text);
  // driver_bytes: the device's own count of bytes in use (0 on the CPU).
  void finish(const MemoryLedger& ledger, size_t driver_bytes);

 private:
  void metric(const json& j);
  const json& cfg_;
  std::FILE* metrics_ = nullptr;
  int every_;
  bool progress_;
};

// The ledger as a table: category, bytes now, peak.
std::string memory_table(const MemoryLedger& ledger);
json memory_json(const MemoryLedger& ledger);

}  // namespace gpt2
