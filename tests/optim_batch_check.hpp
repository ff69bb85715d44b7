// Shared by the [gpu] tests of AdamW, LOMO and the factored optimizers (AdaLomo,
// Adafactor, CAME), whose update_many runs many tensors per kernel launch and whose
// passes move 16-byte runs when the pointers allow. The oracle is update() on one tensor
// at a time through the element-by-element loads and stores, which optim_gpu_check.hpp
// holds to the CPU reference (its 37 x 129 matrix takes that path). Both sides compute
// the same fp32 arithmetic in the same order, so they must agree bit for bit.
#pragma once
#include <random>

#include "optim_gpu_check.hpp"

namespace gpt2::test {

// 40 matrices (more than one launch's 32 jobs) of odd and 16-byte-run shapes, 20 vectors.
inline ParamTable many_shapes() {
  const int64_t shapes[][2] = {{37, 129}, {64, 256}, {8, 40}, {300, 24}, {1, 1001}, {1, 64}};
  std::vector<ParamSpec> s;
  for (int id = 0; id < 60; id++) s.push_back(spec(id, shapes[id % 6][0], shapes[id % 6][1]));
  return table_of(s);
}

// Runs `steps` steps of two optimizers from the same weights and gradients: one by a
// single update_many over all tensors, the other by update() per tensor with every param
// one element past a 16-byte boundary (so no 16-byte path). True if their params, master
// weights and state blobs end bit-identical.
template <class T>
bool batched_matches_single(const json& cfg, bool master, int steps = 3) {
  const ParamTable t = many_shapes();
  auto dev = make_cuda_device(0);
  auto batched = make_cuda_optimizer<T>(cfg, t, *dev, 7), single = make_cuda_optimizer<T>(cfg, t, *dev, 7);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const auto random = [&](size_t n, float scale) {
    std::vector<T> h(n);
    for (T& x : h) x = store_as<T>(scale * u(rng));
    return h;
  };
  struct Side {
    std::vector<DeviceBuffer<T>> param, grad;
    std::vector<DeviceBuffer<float>> master;
  };
  Side a, b;  // b's param starts one element into its buffer
  for (const ParamSpec& p : t.params) {
    const std::vector<T> w = random(p.numel, 1.f);
    std::vector<float> wf(p.numel);
    for (size_t i = 0; i < p.numel; i++) wf[i] = value_of(w[i]);
    for (Side* s : {&a, &b}) {
      const size_t shift = s == &b ? 1 : 0;
      s->param.emplace_back(*dev, p.numel + 1, MemCategory::params, "test params");
      s->grad.emplace_back(*dev, p.numel, MemCategory::grads, "test grads");
      dev->to_device(s->param.back().get() + shift, w.data(), p.numel * sizeof(T));
      if (master) {
        s->master.emplace_back(*dev, p.numel, MemCategory::master_weights, "test master");
        dev->to_device(s->master.back().get(), wf.data(), p.numel * sizeof(float));
      }
    }
  }
  for (int step = 1; step <= steps; step++) {
    batched->begin_step(step, 0.05f), single->begin_step(step, 0.05f);
    std::vector<TensorUpdate<T>> all;
    for (const ParamSpec& p : t.params) {
      const std::vector<T> g = random(p.numel, step % 3 == 0 ? 0.01f : 1.f);
      for (Side* s : {&a, &b}) dev->to_device(s->grad[p.id].get(), g.data(), p.numel * sizeof(T));
      all.push_back({&p, a.param[p.id].get(), master ? a.master[p.id].get() : nullptr, a.grad[p.id].get()});
      single->update(p, b.param[p.id].get() + 1, master ? b.master[p.id].get() : nullptr, b.grad[p.id].get());
    }
    batched->update_many(all);
  }
  const auto same = [&](const void* x, const void* y, size_t bytes) {
    std::vector<char> hx(bytes), hy(bytes);
    dev->to_host(hx.data(), x, bytes), dev->to_host(hy.data(), y, bytes);
    return hx == hy;
  };
  bool equal = true;
  for (const ParamSpec& p : t.params) {
    equal = equal && same(a.param[p.id].get(), b.param[p.id].get() + 1, p.numel * sizeof(T));
    if (master) equal = equal && same(a.master[p.id].get(), b.master[p.id].get(), p.numel * sizeof(float));
  }
  const std::vector<StateBlob> sa = batched->state(), sb = single->state();
  equal = equal && sa.size() == sb.size();
  for (size_t i = 0; equal && i < sa.size(); i++)
    equal = sa[i].bytes == sb[i].bytes && same(sa[i].data, sb[i].data, sa[i].bytes);
  return equal;
}

// batched_matches_single in the three weight setups: fp32; bf16 with an fp32 master copy;
// bf16 alone, stochastically rounded (its 16-byte stores where the optimizer has them).
inline void check_batched_matches_single(const json& cfg) {
  CHECK(batched_matches_single<float>(cfg, false));
  CHECK(batched_matches_single<bf16>(cfg, true));
  CHECK(batched_matches_single<bf16>(cfg, false));
}

}  // namespace gpt2::test
