#include "gpt2.hpp"

#include <algorithm>
#include <cmath>

#include "dtype.hpp"
#include "error.hpp"
#include "rng.hpp"

namespace gpt2 {

size_t ActivationPlan::total() const {
  size_t t = 0;
  for (const Entry& e : entries) t += e.bytes;
  return t;
}

namespace {

// Buffers of an activation that the first R of L layers recompute: one they share, one
// for each other layer; slot() is layer l's.
size_t kept_buffers(size_t L, int R) { return L - R + (R > 0); }
size_t slot(int l, int R) { return size_t(l < R ? 0 : l - R + (R > 0)); }

}  // namespace

ActivationPlan activation_plan(const ModelConfig& cfg, int B, int T, Recompute recompute,
                               int classifier_chunk, size_t E, bool late_wte_grad,
                               bool padded_ln) {
  const size_t S = E == 8 ? 8 : 4;  // Stat<T>: double only for the double model
  const size_t L = cfg.num_layers, C = cfg.channels, NH = cfg.num_heads,
               Vp = cfg.padded_vocab_size, BT = size_t(B) * T, BTC = BT * C;
  const size_t ln_layers = kept_buffers(L, recompute.ln(int(L))),
               gelu_layers = kept_buffers(L, recompute.gelu(int(L))),
               ln_row = C + (padded_ln ? kOnesPad : 0);
  ActivationPlan p;
  p.entries = {
      {"inputs", BT * 4},
      {"targets", BT * 4},
      {"encoded", BTC * E},
      {"ln1", ln_layers * BT * ln_row * E},
      {"ln1_stats", L * 2 * BT * S},
      {"qkv", L * BTC * 3 * E},
      {"atty", L * BTC * E},
      {"lse", L * B * NH * T * S},
      {"residual2", L * BTC * E},
      {"ln2", ln_layers * BT * ln_row * E},
      {"ln2_stats", L * 2 * BT * S},
      {"fch", std::max(L * BTC * 4, late_wte_grad ? Vp * C : 0) * E},
      {"fch_gelu", gelu_layers * BTC * 4 * E},
      {"residual3", L * BTC * E},
      {"lnf", BTC * E},
      {"lnf_stats", 2 * BT * S},
      {"logits", size_t(classifier_chunk) * Vp * E},  // one chunk of rows
      {"losses", BT * S},
      {"dresidual", BTC * E},
      {"dbtc", BTC * E},
      {"dresidual_colsum", C * S},
  };
  return p;
}

int classifier_chunk_rows(int requested, int rows, const ModelConfig& cfg, size_t elem_size,
                          bool cuda) {
  int chunk = requested;
  // cuBLASLt assumes 256-byte aligned matrices; chunk starts 8k rows apart keep the
  // chunk's rows of lnf and d(lnf) so aligned whenever C is a multiple of 16.
  if (cuda && chunk % 8 != 0) chunk = std::max(8, chunk / 8 * 8);
  if (chunk == 0 && !cuda) chunk = 256;
  if (chunk == 0) {
    // Each chunk rereads and rewrites wte's whole gradient (its dweight GEMM accumulates),
    // so fewer chunks are faster: on an H100 at d12 B16 T1024 bf16 (same call), 4096 rows
    // took 30.6 / 30.8 ms a step against 2048's 31.3 / 31.1, for 196 MiB more logits.
    // 512 MiB keeps d12 B16 at 7.73 GiB, under llm.c's 8.1.
    const size_t budget = size_t(512) << 20, row = size_t(cfg.padded_vocab_size) * elem_size;
    chunk = 1;
    while (chunk < rows && size_t(chunk) * 2 * row <= budget) chunk *= 2;
  }
  return std::min(chunk, rows);
}

namespace {

void fill_normal(float* out, size_t n, float std, SplitMix64& rng) {
  for (size_t i = 0; i < n; i += 2) {
    const double u1 = 1.0 - rng.uniform(), u2 = rng.uniform();  // u1 in (0, 1]
    const double r = std::sqrt(-2.0 * std::log(u1));
    out[i] = float(std * r * std::cos(2 * M_PI * u2));
    if (i + 1 < n) out[i + 1] = float(std * r * std::sin(2 * M_PI * u2));
  }
}

}  // namespace

std::vector<float> init_params(const ParamTable& table, uint64_t seed) {
  std::vector<float> w(table.total, 0.0f);
  const float std_resid = 0.02f / std::sqrt(2.0f * table.cfg.num_layers);
  for (const ParamSpec& p : table.params) {
    // One stream per tensor so a tensor's init does not depend on the others' sizes.
    SplitMix64 rng{seed * 0x100000001b3ull + uint64_t(p.id) * kSplitMixGamma};
    float* dst = w.data() + p.offset;
    switch (p.kind) {
      case ParamKind::ln1w: case ParamKind::ln2w: case ParamKind::lnfw:
        std::fill(dst, dst + p.numel, 1.0f);
        break;
      case ParamKind::attprojw: case ParamKind::fcprojw:
        fill_normal(dst, p.numel, std_resid, rng);
        break;
      case ParamKind::wte: case ParamKind::wpe: case ParamKind::qkvw: case ParamKind::fcw:
        fill_normal(dst, p.numel, 0.02f, rng);
        break;
      default:
        break;  // biases start at 0
    }
  }
  return w;
}

template <class T>
GPT2<T>::GPT2(const ModelConfig& cfg, Ops<T>& ops, Device& dev, int B, int T_, Recompute rc,
              int chunk, bool late)
    : table(cfg),
      batch(B),
      seq_len(T_),
      recompute(rc),
      classifier_chunk(classifier_chunk_rows(chunk, B * T_, cfg, sizeof(T), dev.is_cuda())),
      late_wte_grad(late),
      ops_(ops),
      dev_(dev),
      padded_(ops.pads_rows(cfg.channels)),
      ln_row_(cfg.channels + (padded_ ? kOnesPad : 0)) {
  if (T_ > cfg.max_seq_len)
    fail("sequence length ", T_, " exceeds the model's max_seq_len ", cfg.max_seq_len);
  params_ = DeviceBuffer<T>(dev, table.total, MemCategory::params, "parameters");
  const ActivationPlan plan =
      activation_plan(cfg, B, T_, rc, classifier_chunk, sizeof(T), late_wte_grad, padded_);
  auto bytes = [&](const char* name) {
    for (const auto& e : plan.entries)
      if (std::string(e.name) == name) return e.bytes;
    fail("internal: no activation entry ", name);
  };
  auto act = [&](auto& buf, const char* name) {
    using Elem = std::remove_pointer_t<decltype(buf.get())>;
    buf = DeviceBuffer<Elem>(dev, bytes(name) / sizeof(Elem), MemCategory::activations, name);
  };
  act(inputs_, "inputs"), act(targets_, "targets"), act(encoded_, "encoded");
  act(ln1_, "ln1"), act(ln1_stats_, "ln1_stats"), act(qkv_, "qkv"), act(atty_, "atty");
  act(lse_, "lse"), act(residual2_, "residual2"), act(ln2_, "ln2");
  act(ln2_stats_, "ln2_stats"), act(fch_, "fch"), act(fch_gelu_, "fch_gelu");
  act(residual3_, "residual3"), act(lnf_, "lnf"), act(lnf_stats_, "lnf_stats");
  act(logits_, "logits"), act(losses_, "losses");
  act(dresidual_, "dresidual"), act(dbtc_, "dbtc");
  act(dresidual_colsum_, "dresidual_colsum");
  host_losses_.resize(size_t(B) * T_);
}

template <class T>
typename GPT2<T>::Layer GPT2<T>::layer(int l) {
  const size_t BT = size_t(batch) * seq_len, BTC = BT * table.cfg.channels, LN = BT * ln_row_;
  const int L = table.cfg.num_layers;
  const size_t ln = slot(l, recompute.ln(L)), gl = slot(l, recompute.gelu(L));
  const size_t lse = size_t(batch) * table.cfg.num_heads * seq_len;
  return Layer{
      ln1_.get() + ln * LN,           qkv_.get() + l * 3 * BTC,
      atty_.get() + l * BTC,          residual2_.get() + l * BTC,
      ln2_.get() + ln * LN,           fch_.get() + l * 4 * BTC,
      fch_gelu_.get() + gl * 4 * BTC, residual3_.get() + l * BTC,
      ln1_stats_.get() + l * 2 * BT,  ln1_stats_.get() + l * 2 * BT + BT,
      ln2_stats_.get() + l * 2 * BT,  ln2_stats_.get() + l * 2 * BT + BT,
      lse_.get() + l * lse,
  };
}

template <class T>
void GPT2<T>::set_params(const std::vector<float>& host) {
  if (host.size() != table.total)
    fail("internal: parameter count ", host.size(), " != ", table.total);
  std::vector<T> h(host.size());
  for (size_t i = 0; i < h.size(); i++) {
    if constexpr (std::is_same_v<T, bf16>) h[i] = float_to_bf16(host[i]);
    else h[i] = T(host[i]);
  }
  dev_.to_device(params_.get(), h.data(), h.size() * sizeof(T));
}

template <class T>
std::vector<float> GPT2<T>::get_params() const {
  std::vector<T> h(table.total);
  dev_.to_host(h.data(), params_.get(), h.size() * sizeof(T));
  std::vector<float> host(h.size());
  for (size_t i = 0; i < h.size(); i++) {
    if constexpr (std::is_same_v<T, bf16>) host[i] = bf16_to_float(h[i]);
    else host[i] = float(h[i]);
  }
  return host;
}

template <class T>
void GPT2<T>::forward_to_lnf() {
  using K = ParamKind;
  const ModelConfig& c = table.cfg;
  const int B = batch, Tn = seq_len, C = c.channels, NH = c.num_heads, BT = B * Tn;
  train_sink_ = nullptr;  // the activations backward would use are overwritten
  ops_.encoder_forward(encoded_.get(), inputs_.get(), param(K::wte), param(K::wpe), B, Tn, C);
  ops_.layernorm_forward(layer(0).ln1, layer(0).ln1_mean, layer(0).ln1_rstd, encoded_.get(),
                         param(K::ln1w, 0), param(K::ln1b, 0), BT, C, padded_);
  Stat<T>* lnf_mean = lnf_stats_.get();
  for (int l = 0; l < c.num_layers; l++) {
    const T* residual = l == 0 ? encoded_.get() : layer(l - 1).residual3;
    Layer y = layer(l);
    ops_.matmul_forward(y.qkv, nullptr, y.ln1, param(K::qkvw, l), param(K::qkvb, l), BT, C,
                        3 * C, padded_);
    ops_.attention_forward(y.atty, y.lse, y.qkv, B, Tn, C, NH);
    // The block's projections add the residual stream in their GEMM's epilogue, so it is
    // written once, as the sum, and the layernorm that follows reads one input.
    ops_.matmul_forward(y.residual2, nullptr, y.atty, param(K::attprojw, l), param(K::attprojb, l),
                        BT, C, C, false, residual);
    ops_.layernorm_forward(y.ln2, y.ln2_mean, y.ln2_rstd, y.residual2, param(K::ln2w, l),
                           param(K::ln2b, l), BT, C, padded_);
    ops_.matmul_forward(y.fch, y.fch_gelu, y.ln2, param(K::fcw, l), param(K::fcb, l), BT, C,
                        4 * C, padded_);
    ops_.matmul_forward(y.residual3, nullptr, y.fch_gelu, param(K::fcprojw, l),
                        param(K::fcprojb, l), BT, 4 * C, C, false, y.residual2);
    // residual3, normalized by the next layer's ln1 or, after the last layer, by lnf.
    if (l + 1 < c.num_layers) {
      const Layer next = layer(l + 1);
      ops_.layernorm_forward(next.ln1, next.ln1_mean, next.ln1_rstd, y.residual3,
                             param(K::ln1w, l + 1), param(K::ln1b, l + 1), BT, C, padded_);
    } else {
      ops_.layernorm_forward(lnf_.get(), lnf_mean, lnf_mean + BT, y.residual3, param(K::lnfw),
                             param(K::lnfb), BT, C);
    }
  }
}

template <class T>
void GPT2<T>::load_batch(const int* inputs, const int* targets) {
  if (!targets) fail("internal: GPT2::load_batch needs targets (forward_logits samples)");
  const size_t bytes = size_t(batch) * seq_len * sizeof(int);
  dev_.to_device(inputs_.get(), inputs, bytes);
  dev_.to_device(targets_.get(), targets, bytes);
}

template <class T>
void GPT2<T>::queue_forward(float dloss, GradSink<T>* sink) {
  if ((sink != nullptr) != (dloss != 0.0f))
    fail("internal: GPT2::queue_forward trains with a sink and dloss != 0, or evaluates "
         "with neither");
  forward_to_lnf();
  T* dwte = sink && !late_wte_grad ? sink->grad(table.get(ParamKind::wte)) : nullptr;
  classify(dloss, sink != nullptr, dwte);
  train_sink_ = sink, dwte_ = dwte, dloss_ = dloss;
}

template <class T>
void GPT2<T>::classify(float dloss, bool dlnf, T* dwte) {
  const ModelConfig& c = table.cfg;
  const int C = c.channels, Vp = c.padded_vocab_size, BT = batch * seq_len;
  T* wte = param(ParamKind::wte);
  for (int r0 = 0; r0 < BT; r0 += classifier_chunk) {
    const int n = std::min(classifier_chunk, BT - r0);
    const T* lnf = lnf_.get() + size_t(r0) * C;
    ops_.matmul_forward(logits_.get(), nullptr, lnf, wte, nullptr, n, C, Vp);
    ops_.classifier(logits_.get(), losses_.get() + r0, targets_.get() + r0, n, c.vocab_size,
                    Vp, dloss);
    // The chunk now holds dlogits: d(lnf) of its rows (into dbtc, where backward's final
    // layernorm reads it) and its share of wte's gradient.
    T* dbtc = dlnf ? dbtc_.get() + size_t(r0) * C : nullptr;
    if (dbtc || dwte)
      ops_.matmul_backward(dbtc, dwte, nullptr, logits_.get(), lnf, wte, nullptr, n, C, Vp);
  }
}

template <class T>
double GPT2<T>::loss() {
  const int BT = batch * seq_len;
  dev_.to_host(host_losses_.data(), losses_.get(), BT * sizeof(Stat<T>));
  double sum = 0;
  for (Stat<T> x : host_losses_) sum += x;
  return sum / BT;
}

template <class T>
std::vector<float> GPT2<T>::forward_logits(const int* inputs, int row) {
  const ModelConfig& c = table.cfg;
  if (row < 0 || row >= batch * seq_len)
    fail("internal: forward_logits row ", row, " outside [0, ", batch * seq_len, ")");
  dev_.to_device(inputs_.get(), inputs, size_t(batch) * seq_len * sizeof(int));
  forward_to_lnf();
  ops_.matmul_forward(logits_.get(), nullptr, lnf_.get() + size_t(row) * c.channels,
                      param(ParamKind::wte), nullptr, 1, c.channels, c.padded_vocab_size);
  std::vector<T> h(c.vocab_size);
  dev_.to_host(h.data(), logits_.get(), h.size() * sizeof(T));
  std::vector<float> out(h.size());
  for (size_t i = 0; i < h.size(); i++) {
    if constexpr (std::is_same_v<T, bf16>) out[i] = bf16_to_float(h[i]);
    else out[i] = float(h[i]);
  }
  return out;
}

template <class T>
void GPT2<T>::backward(GradSink<T>& sink) {
  using K = ParamKind;
  const ModelConfig& c = table.cfg;
  const int B = batch, Tn = seq_len, C = c.channels, NH = c.num_heads, BT = B * Tn;
  auto grad = [&](K k, int l = -1) { return sink.grad(table.get(k, l)); };
  auto ready = [&](K k, int l = -1) { sink.ready(table.get(k, l)); };
  if (&sink != train_sink_)
    fail("internal: GPT2::backward needs a training forward with the same sink just before it");
  train_sink_ = nullptr;
  T* dresidual = dresidual_.get();
  T* dbtc = dbtc_.get();  // d(lnf), left by the forward's classifier chunks
  T* dwte = dwte_;        // holds the classifier's part already, unless late_wte_grad
  dev_.zero(dresidual, size_t(BT) * C * sizeof(T));
  // Each layernorm backward below leaves colsum(dresidual) in `colsum`, and the matmul
  // whose dout dresidual is next (fcproj, attproj) takes its bias gradient from there
  // instead of reading dresidual again.
  Stat<T>* colsum = dresidual_colsum_.get();
  const Stat<T>* lnf_mean = lnf_stats_.get();
  ops_.layernorm_backward(dresidual, grad(K::lnfw), grad(K::lnfb), dbtc,
                          layer(c.num_layers - 1).residual3, param(K::lnfw), lnf_mean,
                          lnf_mean + BT, BT, C, colsum);
  ready(K::lnfw), ready(K::lnfb);

  for (int l = c.num_layers - 1; l >= 0; l--) {
    const T* residual = l == 0 ? encoded_.get() : layer(l - 1).residual3;
    Layer y = layer(l);
    // Recompute what the forward did not keep (train.recompute).
    if (l < recompute.ln(c.num_layers)) {
      ops_.layernorm_forward(y.ln1, y.ln1_mean, y.ln1_rstd, residual, param(K::ln1w, l),
                             param(K::ln1b, l), BT, C, padded_);
      ops_.layernorm_forward(y.ln2, y.ln2_mean, y.ln2_rstd, y.residual2, param(K::ln2w, l),
                             param(K::ln2b, l), BT, C, padded_);
    }
    if (l < recompute.gelu(c.num_layers)) ops_.gelu_forward(y.fch_gelu, y.fch, size_t(BT) * 4 * C);

    // dresidual holds d(residual3[l]); the residual adds pass it straight through.
    // Gradients the layer's own dead activations hold: d(fch) in fch_gelu (fcproj's
    // backward reads its input before it writes dinp), d(qkv) in fch (read last by that
    // same call, through DGELU).
    T* dfch = y.fch_gelu;
    T* dqkv = y.fch;
    ops_.matmul_backward(dfch, grad(K::fcprojw, l), grad(K::fcprojb, l), dresidual, y.fch_gelu,
                         param(K::fcprojw, l), y.fch, BT, 4 * C, C, colsum);
    ready(K::fcprojw, l), ready(K::fcprojb, l);
    ops_.matmul_backward(dbtc, grad(K::fcw, l), grad(K::fcb, l), dfch, y.ln2, param(K::fcw, l),
                         nullptr, BT, C, 4 * C, nullptr, padded_);
    ready(K::fcw, l), ready(K::fcb, l);
    ops_.layernorm_backward(dresidual, grad(K::ln2w, l), grad(K::ln2b, l), dbtc, y.residual2,
                            param(K::ln2w, l), y.ln2_mean, y.ln2_rstd, BT, C, colsum);
    ready(K::ln2w, l), ready(K::ln2b, l);
    // dresidual now holds d(residual2[l]).
    ops_.matmul_backward(dbtc, grad(K::attprojw, l), grad(K::attprojb, l), dresidual, y.atty,
                         param(K::attprojw, l), nullptr, BT, C, C, colsum);
    ready(K::attprojw, l), ready(K::attprojb, l);
    ops_.attention_backward(dqkv, dbtc, y.qkv, y.atty, y.lse, B, Tn, C, NH);
    ops_.matmul_backward(dbtc, grad(K::qkvw, l), grad(K::qkvb, l), dqkv, y.ln1, param(K::qkvw, l),
                         nullptr, BT, C, 3 * C, nullptr, padded_);
    ready(K::qkvw, l), ready(K::qkvb, l);
    ops_.layernorm_backward(dresidual, grad(K::ln1w, l), grad(K::ln1b, l), dbtc, residual,
                            param(K::ln1w, l), y.ln1_mean, y.ln1_rstd, BT, C,
                            l > 0 ? colsum : nullptr);  // layer 0's feeds the encoder, no bias
    ready(K::ln1w, l), ready(K::ln1b, l);
  }
  if (late_wte_grad) {
    // fch is free now (layer 0's qkv backward was its last reader). Zeroed, then the
    // classifier's chunks, then the encoder: the order of the path without the key, so
    // the sums are bit-identical. Recomputing the chunks rewrites the same losses.
    dwte = grad(K::wte);
    classify(dloss_, false, dwte);
  }
  ops_.encoder_backward(dwte, grad(K::wpe), dresidual, inputs_.get(), B, Tn, C);
  ready(K::wte), ready(K::wpe);
}

template class GPT2<float>;
template class GPT2<bf16>;
template class GPT2<double>;

}  // namespace gpt2
