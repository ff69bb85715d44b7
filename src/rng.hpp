// splitmix64: the one mixer behind every seeded stream of ours (weight init, sampling,
// data shuffling, Adapprox's sketch, stochastic rounding), written out so results do not
// depend on the standard library. C++17 and __host__ __device__: kernels include it.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define GPT2_HOST_DEVICE __host__ __device__
#else
#define GPT2_HOST_DEVICE
#endif

namespace gpt2 {

constexpr uint64_t kSplitMixGamma = 0x9E3779B97F4A7C15ull;

// splitmix64's output function (a bijection of 64-bit values).
GPT2_HOST_DEVICE inline uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The counter form: value number x of the stream starting at 0.
GPT2_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) { return splitmix64_mix(x + kSplitMixGamma); }

// The stateful form: each next() advances the state by the gamma.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() { return splitmix64_mix(state += kSplitMixGamma); }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
};

}  // namespace gpt2
