#include "schedule.hpp"

#include <cmath>

namespace gpt2 {

Schedule::Schedule(const json& cfg) {
  const json& s = cfg["schedule"];
  lr = cfg["optimizer"]["lr"].get<double>();
  min_lr = lr * s["min_lr_fraction"].get<double>();
  steps = s["steps"].get<int64_t>();
  warmup = s["warmup_steps"].get<int64_t>();
  const std::string d = s["decay"].get<std::string>();
  decay = d == "cosine" ? cosine : d == "linear" ? linear : constant;
}

double Schedule::at(int64_t step) const {
  if (step < warmup) return lr * double(step + 1) / double(warmup);
  if (decay == constant || steps <= warmup + 1) return lr;
  const double ratio = double(step - warmup) / double(steps - 1 - warmup);  // 0 .. 1
  const double shape = decay == cosine ? 0.5 * (1.0 + std::cos(M_PI * ratio)) : 1.0 - ratio;
  return min_lr + shape * (lr - min_lr);
}

}  // namespace gpt2
