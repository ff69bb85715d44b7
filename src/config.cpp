// Loading a run config: read the JSON file, merge it key by key over kDefaultConfig (the
// defaults are the schema: a key they lack is unknown, their value's type is the key's
// type), apply `--set a.b=value` overrides the same way, then check the rules.
#include "config.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "config_rules.hpp"
#include "error.hpp"
#include "param_table.hpp"

namespace gpt2 {
namespace {

std::string join(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

std::string parent_of(const std::string& path) {
  const size_t dot = path.rfind('.');
  return dot == std::string::npos ? "" : path.substr(0, dot);
}

std::string name_of(const std::string& path) {
  const size_t dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); j++) row[j] = j;
  for (size_t i = 1; i <= a.size(); i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); j++) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
      diag = up;
    }
  }
  return row[b.size()];
}

void collect_paths(const json& node, const std::string& path, std::vector<std::string>& out) {
  for (const auto& [key, value] : node.items()) {
    out.push_back(join(path, key));
    if (value.is_object()) collect_paths(value, join(path, key), out);
  }
}

std::string or_list(const std::vector<std::string>& items) {
  std::string s;
  for (size_t i = 0; i < items.size(); i++)
    s += (i == 0 ? "" : i + 1 == items.size() ? " or " : ", ") + items[i];
  return s;
}

// Every schema key is ranked by the edit distance of its name to `key`; leaving the
// user's section costs half a unit, so `lr` under train finds optimizer.lr while a
// one-letter typo of a key in the same section still wins. A third of the key's length
// may differ: any one-letter key is one edit from `l` and `p`, which is no hint.
[[noreturn]] void unknown_key(const std::string& where, const std::string& parent,
                              const std::string& key, const json& section) {
  std::vector<std::string> paths;
  collect_paths(config_schema(), "", paths);
  const size_t limit = key.size() / 3;
  size_t best = SIZE_MAX;
  std::vector<std::string> hits;
  for (const std::string& p : paths) {
    const size_t d = edit_distance(key, name_of(p));
    if (d > limit) continue;
    const size_t score = 2 * d + (parent_of(p) == parent ? 0 : 1);
    if (score < best) best = score, hits.clear();
    if (score == best) hits.push_back(p);
  }
  std::string msg = cat(where, ": unknown key ", join(parent, key));
  if (!hits.empty()) {
    msg += "; did you mean " + or_list(hits) + "?";
  } else if (section.empty()) {
    msg += "; " + parent + " takes no keys";
  } else {
    std::vector<std::string> keys;
    for (const auto& [k, v] : section.items()) keys.push_back(k);
    msg += cat("; the keys", parent.empty() ? "" : " of " + parent, " are ", or_list(keys));
  }
  throw Error(msg);
}

// Checks `v` against the type of the default `def` and returns the value to store.
json typed(const json& def, const json& v, const std::string& where, const std::string& path) {
  auto wrong = [&](const char* expected) {
    fail(where, ": ", path, ": expected ", expected, ", got ", shown(v));
  };
  if (def.is_boolean()) {
    if (!v.is_boolean()) wrong("true or false");
  } else if (def.is_string()) {
    if (!v.is_string()) wrong("a string");
  } else if (def.is_number_integer()) {
    // Consumers read these with get<int>(), so the value must fit in an int. A float
    // with an integral value (1e4) is taken as that integer.
    if (v.is_number_unsigned() && v.get<uint64_t>() <= uint64_t(INT_MAX)) return v;
    if (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() >= INT_MIN &&
        v.get<int64_t>() <= INT_MAX)
      return v;
    if (v.is_number_float()) {
      const double d = v.get<double>();
      if (d == std::floor(d) && d >= INT_MIN && d <= INT_MAX) return json(int64_t(d));
    }
    wrong(v.is_number_integer() ? "an integer between -2147483648 and 2147483647"
                                : "an integer");
  } else if (def.is_number()) {
    if (!v.is_number()) wrong("a number");
  } else if (def.is_null()) {
    if (!v.is_null() && !v.is_number()) wrong("a number or null");
  }
  return v;
}

// Merges the object `from` over `into`, whose schema is `def` (both objects).
void merge(json& into, const json& def, const json& from, const std::string& path,
           const std::string& where, ConfigOrigins& origins) {
  if (!from.is_object()) {
    if (path.empty()) fail(where, ": expected a JSON object at the top level, got ", shown(from));
    fail(where, ": ", path, ": expected an object of keys, got ", shown(from));
  }
  for (const auto& [key, value] : from.items()) {
    if (!def.contains(key)) unknown_key(where, path, key, def);
    const std::string p = join(path, key);
    if (def[key].is_object()) {
      merge(into[key], def[key], value, p, where, origins);
    } else {
      into[key] = typed(def[key], value, where, p);
      origins[p] = where;
    }
  }
}

json read_json_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) fail(path, ": is a directory, expected a JSON config file");
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open config file (", std::strerror(errno), ")");
  std::ostringstream text;
  text << f.rdbuf();
  if (f.bad()) fail(path, ": cannot read config file (", std::strerror(errno), ")");
  try {
    return json::parse(text.str());
  } catch (const json::parse_error& e) {
    // nlohmann's message reads "[json.exception.parse_error.101] parse error at line 3,
    // column 7: ..."; the bracketed id means nothing to a user.
    std::string why = e.what();
    const size_t id_end = why.find("] ");
    if (id_end != std::string::npos) why = why.substr(id_end + 2);
    fail(path, ": not valid JSON: ", why);
  }
}

void apply_override(json& cfg, const std::string& text, ConfigOrigins& origins) {
  const std::string where = "--set " + text;
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0)
    fail(where, ": expected key=value with a dotted key, e.g. --set optimizer.lr=3e-4");
  const std::string key_path = text.substr(0, eq), raw = text.substr(eq + 1);

  const json* def = &config_schema();
  json* into = &cfg;
  std::string path;
  std::istringstream parts(key_path);
  std::string key;
  bool last = false;
  while (!last) {
    std::getline(parts, key, '.');
    last = parts.eof();
    if (!def->is_object()) fail(where, ": ", path, " is a single value, not a section of keys");
    if (!def->contains(key)) unknown_key(where, path, key, *def);
    def = &(*def)[key];
    into = &(*into)[key];
    path = join(path, key);
  }

  // The value is JSON when it parses as JSON; otherwise (or for a string key given
  // anything but a quoted string) it is the text itself, so `--set sample.prompt=42`
  // and `--set optimizer.name=lomo` need no shell-quoted JSON quotes.
  json value = json::parse(raw, nullptr, false);
  if (value.is_discarded() || (def->is_string() && !value.is_string())) value = raw;
  if (def->is_object()) {
    merge(*into, *def, value, path, where, origins);
  } else {
    *into = typed(*def, value, where, path);
    origins[path] = where;
  }
}

}  // namespace

const json& config_schema() {
  static const json s = json::parse(kDefaultConfig);
  return s;
}

std::string shown(const json& value) {
  std::string s = value.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

json load_config(const std::string& path, const std::vector<std::string>& overrides) {
  json cfg = config_schema();
  ConfigOrigins origins;
  if (!path.empty()) merge(cfg, config_schema(), read_json_file(path), "", path, origins);
  for (const std::string& text : overrides) apply_override(cfg, text, origins);
  if (!origins.count("train.zero1") && resolved_update(cfg) == "fused") cfg["train"]["zero1"] = false;
  check_config_rules(cfg, origins);
  return cfg;
}

ModelConfig model_config(const json& cfg) {
  const json& m = cfg.at("model");
  ModelConfig c = ModelConfig::from_depth(m.at("depth").get<int>());
  if (m.at("channels").get<int>() > 0) c.channels = m.at("channels").get<int>();
  if (m.at("heads").get<int>() > 0) c.num_heads = m.at("heads").get<int>();
  c.max_seq_len = m.at("max_seq_len").get<int>();
  c.vocab_size = m.at("vocab_size").get<int>();
  c.padded_vocab_size = m.at("padded_vocab_size").get<int>();
  return c;
}

Recompute recompute_of(const json& cfg) {
  const json& tr = cfg.at("train");
  return {tr.at("recompute").get<int>(), tr.at("recompute_layers").get<int>()};
}

std::string resolved_update(const json& cfg) {
  const json& opt = cfg.at("optimizer");
  const std::string update = opt.at("update").get<std::string>();
  if (update != "auto") return update;
  const std::string name = opt.at("name").get<std::string>();
  return name == "lomo" || name == "adalomo" ? "fused" : "after_backward";
}

double resolved_grad_clip(const json& cfg) {
  const json& clip = cfg.at("train").at("grad_clip");
  if (!clip.is_null()) return clip.get<double>();
  return resolved_update(cfg) == "fused" ? 0.0 : 1.0;
}

}  // namespace gpt2
