// [gpu] CudaGradOps (kernels/grad_ops.cu) against CpuGradOps and double sums: per-slot
// squared norms (deterministic, zeroed by take_squares, the same batched as one by one)
// and clip_scale (every slice of one call, more than one launch's worth, against CpuGradOps).
#include <algorithm>
#include <cmath>
#include <random>

#include "catch.hpp"
#include "backend.hpp"
#include "update_pipeline.hpp"

using namespace gpt2;

namespace {

template <class T> T store_as(float x);
template <> float store_as<float>(float x) { return x; }
template <> bf16 store_as<bf16>(float x) { return float_to_bf16(x); }
float value_of(float x) { return x; }
float value_of(bf16 x) { return bf16_to_float(x); }

// clip_scale over every tensor in one call: the same fp32 arithmetic as CpuGradOps,
// rounded once to T, element for element. h: the tensors' values before, d: on the GPU.
template <class T>
void check_clip_scale(Device& dev, GradOps<T>& ops, const std::vector<std::vector<T>>& h,
                      std::vector<DeviceBuffer<T>>& d, float clip_value, float scale,
                      const std::vector<size_t>& skip = {}) {
  auto at = [&](size_t s) { return d[s].get() + (skip.empty() ? 0 : skip[s]); };
  CpuGradOps cpu(1);
  std::vector<std::vector<float>> ref(h.size());
  std::vector<GradSlice<float>> ref_slices;
  std::vector<GradSlice<T>> slices;
  for (size_t s = 0; s < h.size(); s++) {
    for (T x : h[s]) ref[s].push_back(value_of(x));
    ref_slices.push_back({ref[s].data(), ref[s].size(), int(s)});
    slices.push_back({at(s), h[s].size(), int(s)});
  }
  cpu.clip_scale(ref_slices, clip_value, scale);
  ops.clip_scale(slices, clip_value, scale);
  size_t wrong = 0, clamped = 0;
  for (size_t s = 0; s < h.size(); s++) {
    std::vector<T> back(h[s].size());
    dev.to_host(back.data(), at(s), back.size() * sizeof(T));
    for (size_t i = 0; i < back.size(); i++) {
      wrong += value_of(back[i]) != value_of(store_as<T>(ref[s][i]));
      clamped += std::abs(value_of(h[s][i])) > clip_value;
    }
  }
  CHECK(wrong == 0);
  CHECK(clamped > 0);  // the clamp was exercised, not only the scale
}

template <class T>
void check_grad_ops() {
  auto dev = make_cuda_device(0);
  auto ops = make_cuda_grad_ops<T>(3, *dev);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  const std::vector<size_t> sizes = {1001, 37 * 129, 768 * 3072};
  std::vector<std::vector<T>> h(3);
  std::vector<DeviceBuffer<T>> d;
  std::vector<double> want(3, 0.0);
  for (int s = 0; s < 3; s++) {
    for (size_t i = 0; i < sizes[s]; i++) {
      h[s].push_back(store_as<T>(u(rng)));
      want[s] += double(value_of(h[s].back())) * value_of(h[s].back());
    }
    d.emplace_back(*dev, sizes[s], MemCategory::grads, "g");
    dev->to_device(d[s].get(), h[s].data(), sizes[s] * sizeof(T));
  }
  ops->sum_squares({{d[0].get(), sizes[0], 0}, {d[1].get(), sizes[1], 1}, {d[2].get(), sizes[2], 2}});
  const std::vector<double> got = ops->take_squares();
  REQUIRE(got.size() == 3);
  // Double accumulation of exact squares: only summation order differs (~1e-15).
  for (int s = 0; s < 3; s++) CHECK(got[s] == Approx(want[s]).epsilon(1e-12));
  for (double x : ops->take_squares()) CHECK(x == 0.0);  // taken means zeroed
  for (int s = 2; s >= 0; s--) ops->sum_squares({{d[s].get(), sizes[s], s}});
  CHECK(ops->take_squares() == got);  // bit-identical: each tensor's order is its own

  check_clip_scale(*dev, *ops, h, d, 1.5f, 0.25f);
}

// More tensors than one launch takes (32), of every size from 1 element to several
// blocks' worth, in the slot order a layer group uses and shuffled, every third one
// starting an element past a 16-byte boundary (the kernels' one-element path): one call
// equals one call per tensor bit for bit, and each slot equals its double sum.
template <class T>
void check_many_squares() {
  auto dev = make_cuda_device(0);
  const int count = 75;
  auto ops = make_cuda_grad_ops<T>(count, *dev);
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-3.f, 3.f);
  std::vector<DeviceBuffer<T>> d;
  std::vector<std::vector<T>> h(count);
  std::vector<double> want(count, 0.0);
  std::vector<GradSlice<T>> slices;
  std::vector<size_t> skip(count);
  for (int s = 0; s < count; s++) {
    skip[s] = s % 3 == 2;
    const size_t n = s % 5 == 0 ? 1 + s : s % 5 == 1 ? 768 : size_t(257) * (s + 3) * (s % 3 + 1);
    h[s].resize(n);
    for (T& x : h[s]) {
      x = store_as<T>(u(rng));
      want[s] += double(value_of(x)) * value_of(x);
    }
    d.emplace_back(*dev, n + skip[s], MemCategory::grads, "g");
    dev->to_device(d.back().get() + skip[s], h[s].data(), n * sizeof(T));
    slices.push_back({d.back().get() + skip[s], n, s});
  }
  std::shuffle(slices.begin(), slices.end(), rng);
  ops->sum_squares(slices);
  const std::vector<double> many = ops->take_squares();
  for (const GradSlice<T>& x : slices) ops->sum_squares({x});
  CHECK(ops->take_squares() == many);
  for (int s = 0; s < count; s++) CHECK(many[s] == Approx(want[s]).epsilon(1e-12));
  check_clip_scale(*dev, *ops, h, d, 2.5f, 0.5f, skip);  // 75 tensors: three launches
}

}  // namespace

TEST_CASE("CUDA gradient ops: 75 squared norms in one call equal one call each; clip_scale of all 75", "[gpu]") {
  check_many_squares<float>();
  check_many_squares<bf16>();
}

TEST_CASE("CUDA gradient ops: per-slot squared norms and clip_scale (fp32)", "[gpu]") {
  check_grad_ops<float>();
}
TEST_CASE("CUDA gradient ops: per-slot squared norms and clip_scale (bf16)", "[gpu]") {
  check_grad_ops<bf16>();
}

TEST_CASE("CpuGradOps clamps before it scales") {
  CpuGradOps cpu(1);
  std::vector<float> g = {3.0f, -0.5f, -4.0f}, g2 = {0.25f, 2.0f};
  cpu.clip_scale({{g.data(), g.size(), 0}, {g2.data(), g2.size(), 1}}, 1.0f, 0.5f);
  CHECK(g == std::vector<float>{0.5f, -0.25f, -0.5f});
  CHECK(g2 == std::vector<float>{0.125f, 0.5f});
}
