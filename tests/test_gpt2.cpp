// The whole model: gradients against central finite differences in double, CpuOps
// against the plain-loop oracle, the order backward announces gradients in, the loss at
// initialization, and the activation ledger against the plan.
#include <cmath>
#include <map>
#include <random>

#include "catch.hpp"
#include "backend.hpp"
#include "gpt2.hpp"
#include "reference/cpu_ops.hpp"
#include "reference/ref_ops.hpp"

using namespace gpt2;

namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.num_layers = 2, c.channels = 12, c.num_heads = 3;
  c.vocab_size = 37, c.padded_vocab_size = 40, c.max_seq_len = 8;
  return c;
}

// Collects gradients in a full buffer and records the order of events.
template <class T>
class RecordingSink final : public GradSink<T> {
 public:
  explicit RecordingSink(const ParamTable& t) : table(t), grads(t.total, T(0)) {}
  T* grad(const ParamSpec& p) override {
    requested.push_back(p.id);
    return grads.data() + p.offset;
  }
  void ready(const ParamSpec& p) override { readied.push_back(p.id); }
  const ParamTable& table;
  std::vector<T> grads;
  std::vector<int> requested, readied;
};

struct Batch {
  std::vector<int> inputs, targets;
};

Batch random_batch(int n, int V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> tok(0, V - 1);
  Batch b{std::vector<int>(n), std::vector<int>(n)};
  for (int i = 0; i < n; i++) b.inputs[i] = tok(rng), b.targets[i] = tok(rng);
  return b;
}

// Weights with more spread than GPT-2's init, so every tensor has gradients well above
// rounding noise (init's 0.02 makes the attention nearly uniform).
std::vector<float> spread_params(const ParamTable& t, uint32_t seed) {
  std::vector<float> w = init_params(t, seed);
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 0.3f);
  for (const ParamSpec& p : t.params)
    for (size_t i = 0; i < p.numel; i++) w[p.offset + i] += n(rng);
  return w;
}

}  // namespace

TEST_CASE("whole-model gradients match central finite differences in double") {
  const ModelConfig c = tiny_config();
  const int B = 2, T = 5;
  CpuDevice dev;
  RefOps<double> ops;
  GPT2<double> model(c, ops, dev, B, T, 0);
  model.set_params(spread_params(model.table, 7));
  const Batch b = random_batch(B * T, c.vocab_size, 11);
  const float dloss = 1.0f / (B * T);  // a power of two's reciprocal would be exact; 1/10 is
                                       // off by 1e-9 relative, far below the tolerance
  RecordingSink<double> sink(model.table);
  model.forward(b.inputs.data(), b.targets.data(), dloss);
  model.backward(sink);
  const double scale = double(dloss) * (B * T);  // the float dloss's deviation from 1/BT

  std::mt19937 rng(3);
  double worst = 0;
  int checked = 0;
  for (const ParamSpec& p : model.table.params) {
    for (int k = 0; k < 3; k++) {
      const size_t i = p.offset + rng() % p.numel;
      double* w = model.params() + i;
      const double saved = *w, h = 1e-5;
      *w = saved + h;
      const double up = model.forward(b.inputs.data(), b.targets.data(), 0.0f);
      *w = saved - h;
      const double down = model.forward(b.inputs.data(), b.targets.data(), 0.0f);
      *w = saved;
      const double fd = (up - down) / (2 * h) * scale, an = sink.grads[i];
      const double err = std::abs(fd - an) / std::max(1e-6, std::abs(fd) + std::abs(an));
      worst = std::max(worst, err);
      INFO(p.name << "[" << i - p.offset << "] fd " << fd << " analytic " << an);
      CHECK(err < 1e-6);
      checked++;
    }
  }
  CHECK(checked == int(3 * model.table.params.size()));
  WARN("worst relative error over " << checked << " parameters: " << worst);
}

TEST_CASE("backward announces each tensor once, layer by layer from the top, wte last") {
  const ModelConfig c = tiny_config();
  CpuDevice dev;
  RefOps<double> ops;
  GPT2<double> model(c, ops, dev, 1, 4, 0);
  model.set_params(init_params(model.table, 1));
  const Batch b = random_batch(4, c.vocab_size, 2);
  RecordingSink<double> sink(model.table);
  model.forward(b.inputs.data(), b.targets.data(), 0.25f);
  model.backward(sink);
  const ParamTable& t = model.table;
  REQUIRE(sink.readied.size() == t.params.size());
  std::map<int, int> ready_at;
  for (size_t i = 0; i < sink.readied.size(); i++) ready_at[sink.readied[i]] = int(i);
  CHECK(ready_at.size() == t.params.size());  // each exactly once
  CHECK(sink.readied.front() == t.get(ParamKind::lnfw).id);
  CHECK(ready_at[t.get(ParamKind::wte).id] == int(t.params.size()) - 2);
  CHECK(ready_at[t.get(ParamKind::wpe).id] == int(t.params.size()) - 1);
  // Every tensor of layer 1 is final before any tensor of layer 0.
  for (const ParamSpec& p : t.params)
    for (const ParamSpec& q : t.params)
      if (p.layer == 1 && q.layer == 0) CHECK(ready_at[p.id] < ready_at[q.id]);
  // wte's buffer is requested first (classifier) and released last (encoder).
  CHECK(sink.requested.front() == t.get(ParamKind::wte).id);
}

TEST_CASE("CpuOps model matches the plain-loop model: loss and every gradient") {
  const ModelConfig c = tiny_config();
  const int B = 2, T = 7;
  CpuDevice dev;
  CpuOps fast;
  RefOps<double> slow;
  GPT2<float> a(c, fast, dev, B, T, 0);
  GPT2<double> r(c, slow, dev, B, T, 0);
  const std::vector<float> w = spread_params(a.table, 5);
  a.set_params(w), r.set_params(w);
  const Batch b = random_batch(B * T, c.vocab_size, 9);
  RecordingSink<float> ga(a.table);
  RecordingSink<double> gr(r.table);
  const double la = a.forward(b.inputs.data(), b.targets.data(), 1.0f / (B * T));
  const double lr = r.forward(b.inputs.data(), b.targets.data(), 1.0f / (B * T));
  CHECK(la == Approx(lr).epsilon(1e-5));
  a.backward(ga), r.backward(gr);
  for (const ParamSpec& p : a.table.params) {
    double num = 0, den = 0;  // relative error of the whole tensor (fp32 rounding ~1e-6)
    for (size_t i = p.offset; i < p.offset + p.numel; i++) {
      num += (ga.grads[i] - gr.grads[i]) * (ga.grads[i] - gr.grads[i]);
      den += gr.grads[i] * gr.grads[i];
    }
    INFO(p.name);
    CHECK(std::sqrt(num / std::max(den, 1e-30)) < 1e-5);
  }
}

TEST_CASE("recompute levels give the same gradients as keeping every activation") {
  const ModelConfig c = tiny_config();
  const int B = 2, T = 6;
  CpuDevice dev;
  CpuOps ops;
  const Batch b = random_batch(B * T, c.vocab_size, 4);
  std::vector<float> base;
  for (int rc = 0; rc <= 2; rc++) {
    GPT2<float> m(c, ops, dev, B, T, rc);
    m.set_params(spread_params(m.table, 8));
    RecordingSink<float> g(m.table);
    m.forward(b.inputs.data(), b.targets.data(), 1.0f / (B * T));
    m.backward(g);
    if (rc == 0) base = g.grads;
    else CHECK(g.grads == base);  // same ops on the same numbers: bit-identical
  }
}

TEST_CASE("loss at initialization is about ln(vocab)") {
  ModelConfig c = ModelConfig::from_depth(1);
  c.channels = 32, c.num_heads = 2, c.max_seq_len = 16;
  CpuDevice dev;
  CpuOps ops;
  GPT2<float> m(c, ops, dev, 2, 16, 0);
  m.set_params(init_params(m.table, 1337));
  const Batch b = random_batch(32, c.vocab_size, 1);
  const double loss = m.forward(b.inputs.data(), b.targets.data(), 0.0f);
  CHECK(std::abs(loss - std::log(50257.0)) < 0.05);
}

TEST_CASE("activation memory equals the plan, and the plan shrinks with recompute") {
  const ModelConfig c = tiny_config();
  CpuDevice dev;
  CpuOps ops;
  GPT2<float> m(c, ops, dev, 3, 8, 1);
  CHECK(dev.ledger().current[int(MemCategory::activations)] ==
        activation_plan(c, 3, 8, 1, sizeof(float)).total());
  CHECK(dev.ledger().current[int(MemCategory::params)] == m.table.total * sizeof(float));
  const size_t full = activation_plan(c, 3, 8, 0, 4).total();
  const size_t gelu = activation_plan(c, 3, 8, 1, 4).total();
  const size_t both = activation_plan(c, 3, 8, 2, 4).total();
  const size_t BTC = 3 * 8 * 12;
  CHECK(full - gelu == (c.num_layers - 1) * BTC * 4 * 4);   // fch_gelu kept for one layer
  CHECK(gelu - both == 2 * (c.num_layers - 1) * BTC * 4);   // ln1 and ln2 likewise
}

TEST_CASE("init is seeded and follows GPT-2's recipe") {
  const ParamTable t(tiny_config());
  const std::vector<float> a = init_params(t, 42), b = init_params(t, 42), d = init_params(t, 43);
  CHECK(a == b);
  CHECK(a != d);
  auto stddev = [&](ParamKind k, int l) {
    const ParamSpec& p = t.get(k, l);
    double s = 0;
    for (size_t i = 0; i < p.numel; i++) s += double(a[p.offset + i]) * a[p.offset + i];
    return std::sqrt(s / p.numel);
  };
  CHECK(stddev(ParamKind::fcw, 0) == Approx(0.02).epsilon(0.1));
  CHECK(stddev(ParamKind::fcprojw, 1) == Approx(0.02 / std::sqrt(4.0)).epsilon(0.1));
  CHECK(a[t.get(ParamKind::ln1w, 0).offset] == 1.0f);
  CHECK(a[t.get(ParamKind::qkvb, 1).offset] == 0.0f);
  const ParamSpec& wte = t.get(ParamKind::wte);
  for (size_t i = wte.numel; i < wte.storage; i++) REQUIRE(a[wte.offset + i] == 0.0f);
}

TEST_CASE("GPU fp32 model matches the double reference: loss and every gradient", "[gpu]") {
  ModelConfig c = tiny_config();
  c.channels = 64, c.num_heads = 2;  // head size 32: the CUDA attention's smallest
  const int B = 2, T = 7;
  std::unique_ptr<Device> gpu = make_cuda_device(0);
  std::unique_ptr<Ops<float>> cuda = make_cuda_ops<float>(*gpu);
  GPT2<float> a(c, *cuda, *gpu, B, T, 0);
  CpuDevice cpu;
  RefOps<double> slow;
  GPT2<double> r(c, slow, cpu, B, T, 0);
  const std::vector<float> w = spread_params(a.table, 5);
  a.set_params(w), r.set_params(w);
  const Batch b = random_batch(B * T, c.vocab_size, 9);

  // Gradients accumulate into one device buffer, read back at the end.
  class DeviceSink final : public GradSink<float> {
   public:
    DeviceSink(const ParamTable& t, Device& d) : buf(d, t.total, MemCategory::grads, "grads") {}
    float* grad(const ParamSpec& p) override { return buf.get() + p.offset; }
    void ready(const ParamSpec&) override {}
    DeviceBuffer<float> buf;
  } ga(a.table, *gpu);
  RecordingSink<double> gr(r.table);
  const double la = a.forward(b.inputs.data(), b.targets.data(), 1.0f / (B * T));
  const double lr = r.forward(b.inputs.data(), b.targets.data(), 1.0f / (B * T));
  CHECK(la == Approx(lr).epsilon(1e-5));
  a.backward(ga), r.backward(gr);
  std::vector<float> g(a.table.total);
  gpu->to_host(g.data(), ga.buf.get(), ga.buf.bytes());
  for (const ParamSpec& p : a.table.params) {
    double num = 0, den = 0;
    for (size_t i = p.offset; i < p.offset + p.numel; i++) {
      num += (g[i] - gr.grads[i]) * (g[i] - gr.grads[i]);
      den += gr.grads[i] * gr.grads[i];
    }
    INFO(p.name);
    CHECK(std::sqrt(num / std::max(den, 1e-30)) < 1e-5);
  }
}
