// Ranges, enums and contradictions of a merged config. Types were checked while merging,
// so every value read here already has its schema type.
#include <cmath>
#include <limits>
#include <set>
#include <vector>

#include "config_rules.hpp"
#include "error.hpp"
#include "param_table.hpp"

namespace gpt2 {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// lo/hi bounds; an open end excludes the bound itself. Null values (the "number or
// null" keys) are not checked: null means "off".
struct Range {
  const char* path;
  double lo;
  bool lo_open;
  double hi;
  bool hi_open;
};

const Range kRanges[] = {
    {"model.depth", 1, false, kInf, true},
    {"model.channels", 0, false, kInf, true},
    {"model.heads", 0, false, kInf, true},
    {"model.max_seq_len", 1, false, kInf, true},
    {"model.vocab_size", 1, false, kInf, true},
    {"model.padded_vocab_size", 1, false, kInf, true},
    {"data.batch_size", 1, false, kInf, true},
    {"data.seq_len", 1, false, kInf, true},
    {"optimizer.lr", 0, true, kInf, true},
    {"optimizer.weight_decay", 0, false, kInf, true},
    {"optimizer.adamw.beta1", 0, false, 1, true},
    {"optimizer.adamw.beta2", 0, false, 1, true},
    {"optimizer.adamw.eps", 0, true, kInf, true},
    {"optimizer.adalomo.eps1", 0, true, kInf, true},
    {"optimizer.adalomo.eps2", 0, true, kInf, true},
    {"optimizer.adalomo.clip_threshold", 0, true, kInf, true},
    // beta2_t = 1 - t^decay_rate (optimizers.md 3/4) rises towards 1 only for c < 0.
    {"optimizer.adalomo.decay_rate", -kInf, true, 0, true},
    {"optimizer.adafactor.beta1", 0, false, 1, true},
    {"optimizer.adafactor.eps1", 0, true, kInf, true},
    {"optimizer.adafactor.eps2", 0, true, kInf, true},
    {"optimizer.adafactor.clip_threshold", 0, true, kInf, true},
    {"optimizer.adafactor.decay_rate", -kInf, true, 0, true},
    {"optimizer.came.beta1", 0, false, 1, true},
    {"optimizer.came.beta2", 0, false, 1, true},
    {"optimizer.came.beta3", 0, false, 1, true},
    {"optimizer.came.eps1", 0, true, kInf, true},
    {"optimizer.came.eps2", 0, true, kInf, true},
    {"optimizer.came.clip_threshold", 0, true, kInf, true},
    {"optimizer.adapprox.beta1", 0, false, 1, true},
    {"optimizer.adapprox.beta2", 0, false, 1, true},
    {"optimizer.adapprox.eps", 0, true, kInf, true},
    {"optimizer.adapprox.clip_threshold", 0, true, kInf, true},
    {"optimizer.adapprox.k0", 1, false, kInf, true},
    {"optimizer.adapprox.k_min", 1, false, kInf, true},
    {"optimizer.adapprox.k_max", 0, false, kInf, true},  // 0: floor(min(m, n) / rank_divisor)
    {"optimizer.adapprox.rank_divisor", 1, false, kInf, true},
    {"optimizer.adapprox.delta_k", 0, false, kInf, true},
    {"optimizer.adapprox.xi_thr", 0, true, kInf, true},
    {"optimizer.adapprox.rho", 0, false, 1, true},
    {"optimizer.adapprox.l", 1, false, kInf, true},
    {"optimizer.adapprox.p", 0, false, kInf, true},
    {"schedule.steps", 1, false, kInf, true},
    {"schedule.warmup_steps", 0, false, kInf, true},
    {"schedule.min_lr_fraction", 0, false, 1, false},
    {"train.seed", 0, false, kInf, true},
    {"train.grad_accum_steps", 1, false, kInf, true},
    {"train.grad_clip", 0, false, kInf, true},
    {"train.grad_clip_value", 0, false, kInf, true},
    {"train.recompute", 0, false, 2, false},
    {"train.recompute_layers", -1, false, kInf, true},  // -1: every layer
    {"train.classifier_chunk", 0, false, kInf, true},  // 0: auto
    {"train.threads", 0, false, kInf, true},
    {"eval.every", 0, false, kInf, true},
    {"eval.batches", 1, false, kInf, true},
    {"sample.every", 0, false, kInf, true},
    {"sample.tokens", 1, false, kInf, true},
    {"sample.temperature", 0, true, kInf, true},  // logits are divided by it
    {"sample.top_k", 0, false, kInf, true},       // 0: no top-k cut
    {"checkpoint.every", 0, false, kInf, true},
    {"log.every", 0, false, kInf, true},
};

struct Choice {
  const char* path;
  std::vector<const char*> allowed;
};

const Choice kChoices[] = {
    {"optimizer.name", {"adamw", "lomo", "adalomo", "adafactor", "came", "adapprox"}},
    {"optimizer.update", {"auto", "fused", "after_backward"}},
    {"optimizer.adapprox.denominator", {"rebuilt", "refactored"}},
    {"schedule.decay", {"cosine", "linear", "constant"}},
    {"train.device", {"auto", "cpu", "cuda"}},
    {"train.precision", {"auto", "fp32", "bf16"}},
    {"train.nan_policy", {"stop", "skip"}},
    {"log.progress", {"auto", "on", "off"}},
};

const json& at(const json& cfg, const std::string& path) {
  std::string pointer = "/" + path;
  for (char& c : pointer) c = c == '.' ? '/' : c;
  return cfg.at(json::json_pointer(pointer));
}

// Where the values of `paths` were set, joined: "a.json and --set train.threads=2".
std::string origin(const ConfigOrigins& origins, std::initializer_list<const char*> paths) {
  std::set<std::string> seen;
  std::string s;
  for (const char* p : paths) {
    const auto it = origins.find(p);
    if (it == origins.end() || !seen.insert(it->second).second) continue;
    s += (s.empty() ? "" : " and ") + it->second;
  }
  return s.empty() ? "built-in defaults" : s;
}

std::string accepted(const Range& r, const json& def) {
  const std::string what = def.is_number_integer() ? "an integer"
                           : def.is_null()         ? "null or a number"
                                                   : "a number";
  if (r.hi == kInf) return cat(what, r.lo_open ? " > " : " >= ", cat(r.lo));
  if (r.lo == -kInf) return cat(what, r.hi_open ? " < " : " <= ", cat(r.hi));
  return cat(what, " in ", r.lo_open ? "(" : "[", cat(r.lo), ", ", cat(r.hi),
             r.hi_open ? ")" : "]");
}

void check_range(const json& cfg, const ConfigOrigins& origins, const Range& r) {
  const json& v = at(cfg, r.path);
  if (v.is_null()) return;
  const double x = v.get<double>();
  const bool below = r.lo_open ? x <= r.lo : x < r.lo;
  const bool above = r.hi_open ? x >= r.hi : x > r.hi;
  if (below || above || std::isnan(x))
    fail(origin(origins, {r.path}), ": ", r.path, ": expected ",
         accepted(r, at(config_schema(), r.path)), ", got ", shown(v));
}

void check_choice(const json& cfg, const ConfigOrigins& origins, const Choice& c) {
  const std::string v = at(cfg, c.path).get<std::string>();
  std::string list;
  for (size_t i = 0; i < c.allowed.size(); i++) {
    if (v == c.allowed[i]) return;
    list += cat(i == 0 ? "" : i + 1 == c.allowed.size() ? " or " : ", ", c.allowed[i]);
  }
  fail(origin(origins, {c.path}), ": ", c.path, ": expected one of ", list, ", got ",
       shown(at(cfg, c.path)));
}

}  // namespace

void check_config_rules(const json& cfg, const ConfigOrigins& origins) {
  for (const Range& r : kRanges) check_range(cfg, origins, r);
  for (const Choice& c : kChoices) check_choice(cfg, origins, c);
  auto num = [&](const char* path) { return at(cfg, path).get<double>(); };
  auto str = [&](const char* path) { return at(cfg, path).get<std::string>(); };
  auto flag = [&](const char* path) { return at(cfg, path).get<bool>(); };

  const ModelConfig m = model_config(cfg);
  if (m.channels % m.num_heads != 0)
    fail(origin(origins, {"model.channels", "model.heads", "model.depth"}),
         ": model.channels: ", m.channels, " is not divisible by model.heads = ", m.num_heads,
         " (a 0 in either takes model.depth's value); pick channels a multiple of heads");
  if (m.padded_vocab_size < m.vocab_size)
    fail(origin(origins, {"model.padded_vocab_size", "model.vocab_size"}),
         ": model.padded_vocab_size: ", m.padded_vocab_size, " is smaller than model.vocab_size = ",
         m.vocab_size, "; set it to vocab_size rounded up to a multiple of 128");
  if (num("data.seq_len") > m.max_seq_len)
    fail(origin(origins, {"data.seq_len", "model.max_seq_len"}), ": data.seq_len: ",
         shown(at(cfg, "data.seq_len")), " exceeds model.max_seq_len = ", m.max_seq_len,
         "; lower data.seq_len or raise model.max_seq_len");
  if (num("schedule.warmup_steps") > num("schedule.steps"))
    fail(origin(origins, {"schedule.warmup_steps", "schedule.steps"}),
         ": schedule.warmup_steps: ", shown(at(cfg, "schedule.warmup_steps")),
         " exceeds schedule.steps = ", shown(at(cfg, "schedule.steps")));

  const double k0 = num("optimizer.adapprox.k0"), k_max = num("optimizer.adapprox.k_max");
  if (num("optimizer.adapprox.k_min") > k0)
    fail(origin(origins, {"optimizer.adapprox.k_min", "optimizer.adapprox.k0"}),
         ": optimizer.adapprox.k_min: ", shown(at(cfg, "optimizer.adapprox.k_min")),
         " exceeds optimizer.adapprox.k0 = ", k0, "; the rank starts at k0 and never goes below k_min");
  if (k_max != 0 && k0 > k_max)
    fail(origin(origins, {"optimizer.adapprox.k0", "optimizer.adapprox.k_max"}),
         ": optimizer.adapprox.k0: ", k0, " exceeds optimizer.adapprox.k_max = ", k_max,
         "; raise k_max or set it to 0 for floor(min(m, n) / 4)");

  // Fused updates consume each gradient the moment backward produces it, so there is
  // no buffer to accumulate micro-steps in, and the global norm is unknown before the
  // first update unless a first backward pass measures it (LOMO's two-pass clipping).
  const std::string update = resolved_update(cfg);
  const std::string update_text =
      str("optimizer.update") == "auto"
          ? cat("optimizer.update: \"auto\" (fused for ", str("optimizer.name"), ")")
          : std::string("optimizer.update: \"fused\"");
  if (update == "fused" && num("train.grad_accum_steps") > 1)
    fail(origin(origins, {"optimizer.update", "optimizer.name", "train.grad_accum_steps"}), ": ",
         update_text, " needs train.grad_accum_steps = 1, got ",
         shown(at(cfg, "train.grad_accum_steps")),
         "; set train.grad_accum_steps=1 or optimizer.update=after_backward");
  if (update == "fused" && resolved_grad_clip(cfg) > 0 && !flag("train.two_pass_clip"))
    fail(origin(origins, {"optimizer.update", "optimizer.name", "train.grad_clip",
                          "train.two_pass_clip"}),
         ": ", update_text, " cannot clip to train.grad_clip = ",
         shown(at(cfg, "train.grad_clip")),
         " in one backward pass; set train.two_pass_clip=true or train.grad_clip=0");
  if (flag("train.zero1") && update == "fused")
    fail(origin(origins, {"train.zero1", "optimizer.update", "optimizer.name"}),
         ": train.zero1: true shards the optimizer state of after_backward updates, but ",
         update_text, " updates each tensor inside backward; set optimizer.update=after_backward "
         "or train.zero1=false");
  if (flag("train.late_wte_grad") && update != "fused")
    fail(origin(origins, {"train.late_wte_grad", "optimizer.update", "optimizer.name"}),
         ": train.late_wte_grad: true moves wte's gradient out of the fused updates' gradient "
         "memory, but ",
         str("optimizer.update") == "auto"
             ? cat("optimizer.update: \"auto\" (after_backward for ", str("optimizer.name"), ")")
             : std::string("optimizer.update: \"after_backward\""),
         " keeps a whole gradient buffer, which holds it anyway; set optimizer.update=fused or "
         "train.late_wte_grad=false");
  if (str("train.device") == "cpu" && str("train.precision") == "bf16")
    fail(origin(origins, {"train.precision", "train.device"}),
         ": train.precision: \"bf16\" is GPU-only but train.device is \"cpu\"; "
         "set train.precision=fp32 (or auto) or train.device=cuda");
  if (flag("optimizer.adapprox.cos_guidance") && num("optimizer.adapprox.beta1") == 0)
    fail(origin(origins, {"optimizer.adapprox.cos_guidance", "optimizer.adapprox.beta1"}),
         ": optimizer.adapprox.cos_guidance: true compares the update with the first moment, "
         "which optimizer.adapprox.beta1 = 0 turns off; set beta1 > 0 or cos_guidance=false");
  if (flag("optimizer.adafactor.warmup_init") && !flag("optimizer.adafactor.relative_step"))
    fail(origin(origins, {"optimizer.adafactor.warmup_init", "optimizer.adafactor.relative_step"}),
         ": optimizer.adafactor.warmup_init: true only shapes the relative step size, which "
         "optimizer.adafactor.relative_step = false turns off; set relative_step=true or "
         "warmup_init=false");
}

}  // namespace gpt2
