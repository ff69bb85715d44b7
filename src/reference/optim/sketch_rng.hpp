// The counter-based random numbers behind Adapprox's Gaussian sketch. One definition
// serves the CPU reference (srsi.cpp) and the CUDA kernel (kernels/adapprox.cu, where
// it runs as a device function), so both draw the same sketch and make the same rank
// decisions; counters (not a stateful generator) let every sketch entry be drawn
// independently, by any thread, in any order. C++17: kernels include it.
#pragma once
#include <cmath>
#include <cstdint>

#include "rng.hpp"

namespace gpt2::optim {

// Standard normal number `i` of stream `seed`: splitmix64 counters fed to Box-Muller,
// so sketches do not depend on the standard library's distributions.
GPT2_HOST_DEVICE inline double gaussian(uint64_t seed, uint64_t i) {
  const uint64_t a = splitmix64(seed ^ splitmix64(2 * i));
  const uint64_t b = splitmix64(seed ^ splitmix64(2 * i + 1));
  const double u1 = double((a >> 11) + 1) * 0x1p-53;  // (0, 1]: log stays finite
  const double u2 = double(b >> 11) * 0x1p-53;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

GPT2_HOST_DEVICE inline uint64_t mix_seed(uint64_t run_seed, int64_t step, int tensor_id) {
  return splitmix64(splitmix64(splitmix64(run_seed) ^ uint64_t(step)) ^ uint64_t(tensor_id));
}

}  // namespace gpt2::optim
