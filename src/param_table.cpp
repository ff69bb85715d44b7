#include "param_table.hpp"

#include "error.hpp"

namespace gpt2 {

ModelConfig ModelConfig::from_depth(int depth) {
  if (depth < 1) fail("model depth must be >= 1, got ", depth);
  ModelConfig c;
  c.num_layers = depth;
  switch (depth) {
    case 12: c.channels = 768, c.num_heads = 12; break;
    case 24: c.channels = 1024, c.num_heads = 16; break;
    case 36: c.channels = 1280, c.num_heads = 20; break;
    case 48: c.channels = 1600, c.num_heads = 25; break;
    default: c.channels = 64 * depth, c.num_heads = depth;
  }
  return c;
}

ParamTable::ParamTable(const ModelConfig& c) : cfg(c) {
  const int64_t C = c.channels, L = c.num_layers, V = c.vocab_size, Vp = c.padded_vocab_size;
  if (C % c.num_heads != 0) fail("channels ", C, " is not divisible by num_heads ", c.num_heads);
  if (Vp < V) fail("padded_vocab_size ", Vp, " is smaller than vocab_size ", V);
  struct Shape { const char* name; int64_t rows, cols; bool per_layer; };
  const Shape shapes[int(ParamKind::count)] = {
      {"wte", V, C, false},          {"wpe", c.max_seq_len, C, false},
      {"ln_1.w", 1, C, true},        {"ln_1.b", 1, C, true},
      {"attn.qkvw", 3 * C, C, true}, {"attn.qkvb", 1, 3 * C, true},
      {"attn.projw", C, C, true},    {"attn.projb", 1, C, true},
      {"ln_2.w", 1, C, true},        {"ln_2.b", 1, C, true},
      {"mlp.fcw", 4 * C, C, true},   {"mlp.fcb", 1, 4 * C, true},
      {"mlp.projw", C, 4 * C, true}, {"mlp.projb", 1, C, true},
      {"lnf.w", 1, C, false},        {"lnf.b", 1, C, false},
  };
  size_t offset = 0;
  for (int k = 0; k < int(ParamKind::count); k++) {
    const Shape& s = shapes[k];
    const size_t one = size_t(s.rows * s.cols);
    const size_t slot = k == int(ParamKind::wte) ? size_t(Vp * C) : one;
    kind_offset[k] = offset;
    kind_size[k] = s.per_layer ? slot * L : slot;
    for (int l = 0; l < (s.per_layer ? L : 1); l++) {
      ParamSpec p;
      p.id = int(params.size());
      p.kind = ParamKind(k);
      p.layer = s.per_layer ? l : -1;
      p.name = s.per_layer ? cat("h.", l, ".", s.name) : std::string(s.name);
      p.rows = s.rows;
      p.cols = s.cols;
      p.offset = offset + l * slot;
      p.numel = one;
      p.storage = slot;
      params.push_back(p);
    }
    offset += kind_size[k];
  }
  total = offset;
}

const ParamSpec& ParamTable::get(ParamKind kind, int layer) const {
  const int k = int(kind);
  const bool per_layer = kind != ParamKind::wte && kind != ParamKind::wpe &&
                         kind != ParamKind::lnfw && kind != ParamKind::lnfb;
  // ids: wte 0, wpe 1, then L per kind for the 12 layer kinds, then lnfw, lnfb.
  const int L = cfg.num_layers;
  int id = k < 2 ? k : per_layer ? 2 + (k - 2) * L + layer : 2 + 12 * L + (k - int(ParamKind::lnfw));
  return params.at(id);
}

size_t ParamTable::num_parameters() const {
  size_t n = 0;
  for (const ParamSpec& p : params) n += p.numel;
  return n;
}

}  // namespace gpt2
