// Learning rate at a step: linear warmup from lr/warmup to lr over warmup_steps, then
// cosine or linear decay to lr * min_lr_fraction at the last step (llm.c's schedule),
// or constant.
#pragma once
#include <cstdint>

#include "config.hpp"

namespace gpt2 {

struct Schedule {
  double lr, min_lr;
  int64_t steps, warmup;
  enum { cosine, linear, constant } decay;

  explicit Schedule(const json& cfg);
  // step is 0-based: the lr used for the update that ends step `step`.
  double at(int64_t step) const;
};

}  // namespace gpt2
