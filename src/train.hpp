#pragma once
#include "config.hpp"

namespace gpt2 {

// Runs a training job from a validated config (see src/train.cpp).
void train(const json& cfg);

}  // namespace gpt2
