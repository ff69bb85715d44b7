// Element types of device tensors. Host code never does arithmetic on bf16; it only
// stores, converts and hands pointers to kernels, so a 16-bit storage struct suffices
// and keeps CUDA headers out of the host build.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace gpt2 {

enum class DType { f32, bf16 };

struct bf16 {
  uint16_t bits;
};

inline size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }
inline const char* dtype_name(DType t) { return t == DType::f32 ? "fp32" : "bf16"; }

inline float bf16_to_float(bf16 h) {
  uint32_t u = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, NaN kept quiet: the same rounding as __float2bfloat16_rn.
inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }

}  // namespace gpt2
