// Shared tools of the [gpu] op tests: CudaOps<T> (T = float or bf16) on GPU 0, host <->
// device copies through double vectors, and the reference precision and tolerance each
// T is held to. Host APIs only, so the tests compile in CPU-only builds too (where
// tests/main.cpp skips the [gpu] cases).
//
// What each T is compared with:
// - float: the double reference on the same (float-rounded) inputs, rel_err <= 1e-5.
//   fp32 kernels accumulate in fp32, so their error grows like 2^-24 * sqrt(K) for
//   K-term sums, ~1e-6 relative at K = 10^4: 1e-5 leaves a margin but catches any bug.
// - bf16: the fp32 reference on the same bf16-rounded inputs. The kernels compute in
//   fp32 and round each output to bf16 once. bf16 keeps 8 significant bits, so rounding
//   to nearest errs by at most u = 2^-8 of |value| (half the 2^-7 spacing in [1, 2)),
//   hence by at most u of the tensor's max; the fp32 math on both sides differs by
//   < 1e-5 (the fp32 tests' bound), so one rounding is held to u + 1e-5.
//   cuBLASLt's bf16 epilogues round an intermediate to bf16 once more (measured on an
//   H200: DGELU dinp and beta = 1 dweight reach 1.2 u), so those outputs get 2u + 1e-5
//   (tolerance_twice_rounded).
//   fp32 outputs of bf16 kernels (losses, lse, layernorm statistics) are not rounded and
//   keep an fp32 bound, a little wider (1e-4) because their fp32 inputs (e.g. the sum of
//   exp over a bf16 row) are summed in a different order than the reference's.
#pragma once
#include <memory>
#include <type_traits>
#include <vector>

#include "backend.hpp"
#include "dtype.hpp"
#include "memory.hpp"
#include "op_check.hpp"

namespace gpt2::test {

template <class T> T from_double(double x);
template <> inline float from_double<float>(double x) { return float(x); }
template <> inline bf16 from_double<bf16>(double x) { return float_to_bf16(float(x)); }
inline double as_double(float x) { return x; }
inline double as_double(bf16 x) { return bf16_to_float(x); }

// x as T stores it (float- or bf16-rounded), kept in double.
template <class T> Vec rounded(const Vec& x) {
  Vec r(x.size());
  for (size_t i = 0; i < x.size(); i++) r[i] = as_double(from_double<T>(x[i]));
  return r;
}

// The reference's scalar type for a kernel of element type T (see the header comment).
template <class T> using RefScalar = std::conditional_t<std::is_same_v<T, float>, double, float>;

template <class S> std::vector<S> as(const Vec& x) { return std::vector<S>(x.begin(), x.end()); }

// Bound on rel_err for outputs stored as T; for fp32 outputs (statistics, losses).
constexpr double kBf16Unit = 1.0 / 256;  // u = 2^-8
template <class T> constexpr double tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : kBf16Unit + 1e-5;
}
template <class T> constexpr double tolerance_twice_rounded() {
  return std::is_same_v<T, float> ? 1e-5 : 2 * kBf16Unit + 1e-5;
}
template <class T> constexpr double stat_tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-4;
}

struct Gpu {
  std::unique_ptr<Device> dev = make_cuda_device(0);

  template <class T> DeviceBuffer<T> upload(const Vec& x) {
    std::vector<T> h(x.size());
    for (size_t i = 0; i < x.size(); i++) h[i] = from_double<T>(x[i]);
    DeviceBuffer<T> d(*dev, std::max<size_t>(x.size(), 1), MemCategory::activations, "test");
    dev->to_device(d.get(), h.data(), h.size() * sizeof(T));
    return d;
  }
  DeviceBuffer<int> upload_ints(const std::vector<int>& x) {
    DeviceBuffer<int> d(*dev, x.size(), MemCategory::activations, "test");
    dev->to_device(d.get(), x.data(), x.size() * sizeof(int));
    return d;
  }
  template <class T> DeviceBuffer<T> zeros(size_t n) {
    return DeviceBuffer<T>(*dev, std::max<size_t>(n, 1), MemCategory::activations, "test");
  }
  template <class T> Vec download(const DeviceBuffer<T>& d, size_t n) {
    std::vector<T> h(n);
    dev->to_host(h.data(), d.get(), n * sizeof(T));
    Vec r(n);
    for (size_t i = 0; i < n; i++) r[i] = as_double(h[i]);
    return r;
  }
};

}  // namespace gpt2::test
