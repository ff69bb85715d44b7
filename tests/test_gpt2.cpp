// The whole model: gradients against central finite differences in double (with a
// classifier chunk that does not divide B*T), chunked against unchunked classifier,
// CpuOps against the plain-loop oracle, the order backward announces gradients in, the
// forward/backward contract, sampling logits, the loss at initialization, and the
// activation ledger against the plan.
#include <algorithm>
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

// Gradients accumulate into one zeroed device buffer, read back with host().
template <class T>
class DeviceSink final : public GradSink<T> {
 public:
  DeviceSink(const ParamTable& t, Device& d)
      : dev(d), buf(d, t.total, MemCategory::grads, "grads") {}
  T* grad(const ParamSpec& p) override { return buf.get() + p.offset; }
  void ready(const ParamSpec&) override {}
  std::vector<T> host() const {
    std::vector<T> h(buf.size());
    dev.to_host(h.data(), buf.get(), buf.bytes());
    return h;
  }
  Device& dev;
  DeviceBuffer<T> buf;
};

}  // namespace

TEST_CASE("whole-model gradients match central finite differences in double") {
  const ModelConfig c = tiny_config();
  const int B = 2, T = 5;
  CpuDevice dev;
  RefOps<double> ops;
  GPT2<double> model(c, ops, dev, B, T, 0, 3);  // classifier chunks of 3, 3, 3, 1 rows
  model.set_params(spread_params(model.table, 7));
  const Batch b = random_batch(B * T, c.vocab_size, 11);
  const float dloss = 1.0f / (B * T);  // a power of two's reciprocal would be exact; 1/10 is
                                       // off by 1e-9 relative, far below the tolerance
  RecordingSink<double> sink(model.table);
  model.forward(b.inputs.data(), b.targets.data(), dloss, &sink);
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

// Relative error of a whole tensor, so fp32 rounding of tiny entries does not dominate.
template <class A, class B>
double tensor_rel_err(const A& got, const B& want, const ParamSpec& p) {
  double num = 0, den = 0;
  for (size_t i = p.offset; i < p.offset + p.numel; i++) {
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

TEST_CASE("chunked classifier gives the unchunked loss and every gradient") {
  const ModelConfig c = tiny_config();
  const int B = 2, T = 7;  // 14 rows
  CpuDevice dev;
  CpuOps ops;
  const Batch b = random_batch(B * T, c.vocab_size, 21);
  auto run = [&](int chunk, double* loss) {
    GPT2<float> m(c, ops, dev, B, T, 0, chunk);
    REQUIRE(m.classifier_chunk == chunk);
    m.set_params(spread_params(m.table, 6));
    RecordingSink<float> g(m.table);
    *loss = m.forward(b.inputs.data(), b.targets.data(), 1.0f / (B * T), &g);
    m.backward(g);
    return g.grads;
  };
  double whole_loss;
  const std::vector<float> whole = run(B * T, &whole_loss);
  for (int chunk : {1, 3, 5, 13}) {  // none divides 14 except 1
    INFO("chunk " << chunk);
    double loss;
    const std::vector<float> g = run(chunk, &loss);
    CHECK(loss == Approx(whole_loss).epsilon(1e-6));
    // Only wte's gradient sums over chunks in another order; fp32 rounding is ~1e-7.
    for (const ParamSpec& p : ParamTable(c).params) {
      INFO(p.name);
      CHECK(tensor_rel_err(g, whole, p) < 1e-5);
    }
  }
}

TEST_CASE("backward needs a training forward with the same sink just before it") {
  const ModelConfig c = tiny_config();
  CpuDevice dev;
  CpuOps ops;
  GPT2<float> m(c, ops, dev, 1, 4, 0);
  m.set_params(init_params(m.table, 1));
  const Batch b = random_batch(4, c.vocab_size, 2);
  RecordingSink<float> sink(m.table), other(m.table);
  const auto needs_forward = Catch::Contains("needs a training forward with the same sink");
  CHECK_THROWS_WITH(m.backward(sink), needs_forward);
  m.forward(b.inputs.data(), b.targets.data(), 0.25f, &sink);
  CHECK_THROWS_WITH(m.backward(other), needs_forward);
  m.forward(b.inputs.data(), b.targets.data(), 0.25f, &sink);
  m.forward(b.inputs.data(), b.targets.data(), 0.0f);  // evaluation overwrites activations
  CHECK_THROWS_WITH(m.backward(sink), needs_forward);
  m.forward(b.inputs.data(), b.targets.data(), 0.25f, &sink);
  m.forward_logits(b.inputs.data(), 0);
  CHECK_THROWS_WITH(m.backward(sink), needs_forward);
  m.forward(b.inputs.data(), b.targets.data(), 0.25f, &sink);
  m.backward(sink);
  CHECK_THROWS_WITH(m.backward(sink), needs_forward);  // once per forward
  const auto both = Catch::Contains("with a sink and dloss != 0");
  CHECK_THROWS_WITH(m.forward(b.inputs.data(), b.targets.data(), 0.25f), both);
  CHECK_THROWS_WITH(m.forward(b.inputs.data(), b.targets.data(), 0.0f, &sink), both);
}

TEST_CASE("forward_logits gives each row the logits whose cross-entropy forward averages") {
  const ModelConfig c = tiny_config();
  const int B = 2, T = 5;
  CpuDevice dev;
  CpuOps ops;
  GPT2<float> m(c, ops, dev, B, T, 0, 3);
  m.set_params(spread_params(m.table, 4));
  const Batch b = random_batch(B * T, c.vocab_size, 8);
  double sum = 0;
  for (int row = 0; row < B * T; row++) {
    const std::vector<float> z = m.forward_logits(b.inputs.data(), row);
    REQUIRE(int(z.size()) == c.vocab_size);
    double mx = z[0], s = 0;
    for (float v : z) mx = std::max(mx, double(v));
    for (float v : z) s += std::exp(v - mx);
    sum += mx + std::log(s) - z[b.targets[row]];
  }
  CHECK(sum / (B * T) == Approx(m.forward(b.inputs.data(), b.targets.data(), 0.0f)).epsilon(1e-6));
}

TEST_CASE("backward announces each tensor once, layer by layer from the top, wte last") {
  const ModelConfig c = tiny_config();
  CpuDevice dev;
  RefOps<double> ops;
  GPT2<double> model(c, ops, dev, 1, 4, 0);
  model.set_params(init_params(model.table, 1));
  const Batch b = random_batch(4, c.vocab_size, 2);
  RecordingSink<double> sink(model.table);
  model.forward(b.inputs.data(), b.targets.data(), 0.25f, &sink);
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
  const double la = a.forward(b.inputs.data(), b.targets.data(), 1.0f / (B * T), &ga);
  const double lr = r.forward(b.inputs.data(), b.targets.data(), 1.0f / (B * T), &gr);
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

TEST_CASE("recompute levels and late_wte_grad give the same loss and every gradient") {
  ModelConfig c = tiny_config();
  c.num_layers = 4;  // room for layers that recompute beside layers that keep
  const int B = 2, T = 7;
  CpuDevice dev;
  CpuOps ops;
  const Batch b = random_batch(B * T, c.vocab_size, 4);
  std::vector<float> base;
  double base_loss = 0;
  struct Variant {
    int rc, layers;
    bool late;
  };
  const Variant variants[] = {{0, -1, false}, {1, -1, false}, {2, -1, false}, {0, -1, true},
                              {2, -1, true},  {1, 2, false},  {2, 3, false},  {2, 1, true},
                              {1, 9, false}};
  for (auto [rc, layers, late] : variants) {
    INFO("recompute " << rc << " in " << layers << " layers, late_wte_grad " << late);
    GPT2<float> m(c, ops, dev, B, T, {rc, layers}, 5, late);  // classifier chunks of 5, 5, 4 rows
    m.set_params(spread_params(m.table, 8));
    RecordingSink<float> g(m.table);
    const double loss = m.forward(b.inputs.data(), b.targets.data(), 1.0f / (B * T), &g);
    m.backward(g);
    CHECK((m.wte_grad_home() != nullptr) == late);
    if (rc == 0 && !late) {
      base = g.grads, base_loss = loss;
      continue;
    }
    // Same ops on the same numbers, and wte's two parts added in the same order.
    CHECK(loss == base_loss);
    CHECK(m.loss() == loss);  // late_wte_grad's backward rewrote the losses: the same ones
    CHECK(g.grads == base);
    if (late) {  // wte asked for once, after the layers, before wpe
      const int wte = m.table.get(ParamKind::wte).id;
      CHECK(std::count(g.requested.begin(), g.requested.end(), wte) == 1);
      CHECK(g.requested.end()[-2] == wte);
    }
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
        activation_plan(c, 3, 8, 1, m.classifier_chunk, sizeof(float), false).total());
  CHECK(dev.ledger().current[int(MemCategory::params)] == m.table.total * sizeof(float));
  const size_t full = activation_plan(c, 3, 8, 0, 24, 4, false).total();
  const size_t gelu = activation_plan(c, 3, 8, 1, 24, 4, false).total();
  const size_t both = activation_plan(c, 3, 8, 2, 24, 4, false).total();
  const size_t BTC = 3 * 8 * 12;
  CHECK(full - gelu == (c.num_layers - 1) * BTC * 4 * 4);   // fch_gelu kept for one layer
  CHECK(gelu - both == 2 * (c.num_layers - 1) * BTC * 4);   // ln1 and ln2 likewise
  // The first R of L layers share one buffer, the other L - R keep one each.
  ModelConfig deep = c;
  deep.num_layers = 6;
  auto plan = [&](Recompute rc) { return activation_plan(deep, 3, 8, rc, 24, 4, false).total(); };
  const size_t all = plan({1, -1});
  CHECK(plan({1, 6}) == all);
  CHECK(plan({1, 99}) == all);
  CHECK(plan({1, 4}) - all == 2 * BTC * 4 * 4);  // two layers keep their GELU output
  CHECK(plan({1, 1}) == plan({0, -1}));          // one layer alone shares with nobody
  CHECK(plan({1, 0}) == plan({0, -1}));
  CHECK(plan({2, 4}) - plan({2, -1}) == 2 * (4 + 2) * BTC * 4);  // GELU, ln1 and ln2 at level 2
  GPT2<float> partial(deep, ops, dev, 3, 8, {2, 4}, 24);
  CHECK(dev.ledger().current[int(MemCategory::activations)] ==
        activation_plan(c, 3, 8, 1, m.classifier_chunk, sizeof(float), false).total() + plan({2, 4}));
}

TEST_CASE("late_wte_grad: fch grows to wte's gradient only where it is smaller") {
  const ModelConfig c = tiny_config();  // wte storage: 40 x 12 = 480 elements
  auto fch = [&](int B, int T, bool late) {
    for (const auto& e : activation_plan(c, B, T, 0, 24, 4, late).entries)
      if (std::string(e.name) == "fch") return e.bytes;
    FAIL("no fch entry");
    return size_t(0);
  };
  CHECK(fch(3, 8, false) == 2 * 3 * 8 * 48 * 4);  // L x B*T x 4C floats: 2304 elements
  CHECK(fch(3, 8, true) == fch(3, 8, false));
  CHECK(fch(1, 2, false) == 2 * 2 * 48 * 4);      // 192 elements < 480
  CHECK(fch(1, 2, true) == 480 * 4);
  CpuDevice dev;
  CpuOps ops;
  GPT2<float> m(c, ops, dev, 1, 2, 0, 0, true), early(c, ops, dev, 1, 2, 0, 0, false);
  const size_t allocated = dev.ledger().current[int(MemCategory::activations)];
  CHECK(allocated == activation_plan(c, 1, 2, 0, m.classifier_chunk, sizeof(float), true).total() +
                         activation_plan(c, 1, 2, 0, m.classifier_chunk, sizeof(float), false).total());
  // and the grown fch holds wte's whole gradient: the same gradients as without the key
  const Batch b = random_batch(2, c.vocab_size, 5);
  RecordingSink<float> g(m.table), ge(early.table);
  for (auto [model, sink] : {std::pair{&m, &g}, std::pair{&early, &ge}}) {
    model->set_params(spread_params(model->table, 2));
    model->forward(b.inputs.data(), b.targets.data(), 0.5f, sink);
    model->backward(*sink);
  }
  CHECK(g.grads == ge.grads);
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
  CpuDevice cpu;
  RefOps<double> slow;
  GPT2<double> r(c, slow, cpu, B, T, 0);
  const std::vector<float> w = spread_params(r.table, 5);
  r.set_params(w);
  const Batch b = random_batch(B * T, c.vocab_size, 9);
  RecordingSink<double> gr(r.table);
  const double lr = r.forward(b.inputs.data(), b.targets.data(), 1.0f / (B * T), &gr);
  r.backward(gr);

  std::unique_ptr<Device> gpu = make_cuda_device(0);
  std::unique_ptr<Ops<float>> cuda = make_cuda_ops<float>(*gpu);
  // Classifier chunks: auto (all 14 rows at once), and 8 and 6; recompute level 2 rewrites
  // the (ones-padded, C = 64) layernorm outputs in backward.
  for (const auto& [chunk, rc] : {std::pair{0, 0}, std::pair{8, 0}, std::pair{8, 2}}) {
    INFO("classifier chunk " << chunk << ", train.recompute " << rc);
    GPT2<float> a(c, *cuda, *gpu, B, T, Recompute(rc), chunk);
    a.set_params(w);
    DeviceSink<float> ga(a.table, *gpu);
    const double la = a.forward(b.inputs.data(), b.targets.data(), 1.0f / (B * T), &ga);
    CHECK(la == Approx(lr).epsilon(1e-5));
    a.backward(ga);
    const std::vector<float> g = ga.host();
    for (const ParamSpec& p : a.table.params) {
      INFO(p.name);
      CHECK(tensor_rel_err(g, gr.grads, p) < 1e-5);
    }
  }
}

TEST_CASE("a recorded forward + backward replays the queued one bit for bit, batch after batch",
          "[gpu]") {
  // bf16 with GELU recompute and three classifier chunks: most of the kernels a training
  // step launches. Each batch is loaded outside the recorded work, and another batch's
  // evaluation overwrites the activations and losses just before, so a recording that
  // kept a stale input or skipped an op gives another loss or gradient.
  ModelConfig c = tiny_config();
  c.channels = 64, c.num_heads = 2;
  const int B = 2, T = 7;
  const float dloss = 1.0f / (B * T);
  std::unique_ptr<Device> gpu = make_cuda_device(0);
  std::unique_ptr<Ops<bf16>> cuda = make_cuda_ops<bf16>(*gpu);
  GPT2<bf16> m(c, *cuda, *gpu, B, T, Recompute(1), 6);
  m.set_params(spread_params(m.table, 5));
  std::unique_ptr<Replay> replay = gpu->make_replay();
  DeviceSink<bf16> sink(m.table, *gpu);  // one for every run: a recording keeps its buffers
  for (int step = 0; step < 4; step++) {
    INFO("batch " << step);
    const Batch b = random_batch(B * T, c.vocab_size, 20 + step);
    DeviceSink<bf16> queued(m.table, *gpu);
    m.load_batch(b.inputs.data(), b.targets.data());
    m.queue_forward(dloss, &queued);
    m.backward(queued);
    const double loss = m.loss();
    const Batch other = random_batch(B * T, c.vocab_size, 90 + step);
    m.forward(other.inputs.data(), other.targets.data(), 0.0f);
    m.load_batch(b.inputs.data(), b.targets.data());
    gpu->zero(sink.buf.get(), sink.buf.bytes());
    replay->run([&] {
      m.queue_forward(dloss, &sink);
      m.backward(sink);
    });
    CHECK(replay->recorded() == (step >= 1));
    CHECK(m.loss() == loss);
    const std::vector<bf16> a = queued.host(), r = sink.host();
    size_t differ = 0;
    for (size_t i = 0; i < a.size(); i++) differ += a[i].bits != r[i].bits;
    CHECK(differ == 0);
  }
}
