// The checks a merged config must pass beyond its keys and types: ranges, enums and
// settings that contradict each other. Shared by config.cpp (which knows where each value
// came from) and config_rules.cpp (which holds the table of rules).
#pragma once
#include <map>
#include <string>

#include "config.hpp"

namespace gpt2 {

// JSON path ("optimizer.lr") -> where its value was set ("configs/x.json" or
// "--set optimizer.lr=-1"); paths not in the map hold their default.
using ConfigOrigins = std::map<std::string, std::string>;

// kDefaultConfig parsed once: the defaults, and the type of each key.
const json& config_schema();

// Throws one Error naming the origin, the JSON path, the value and what is accepted.
void check_config_rules(const json& cfg, const ConfigOrigins& origins);

// A value as the user would write it, cut short so an error stays one readable line.
std::string shown(const json& value);

}  // namespace gpt2
