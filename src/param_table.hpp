// GPT-2's shape and where every parameter tensor lives. Parameters sit in one buffer
// in llm.c's order (wte, wpe, then each per-layer kind stacked over layers, then lnf),
// so a model file is that buffer verbatim and llm.c models load unchanged.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace gpt2 {

struct ModelConfig {
  int max_seq_len = 1024;
  int vocab_size = 50257;
  int padded_vocab_size = 50304;  // multiple of 128 so the classifier matmul tiles evenly
  int num_layers = 12;
  int num_heads = 12;
  int channels = 768;

  // "d12" -> GPT-2 124M, "d24" -> 345M, "d36", "d48"; other dN use C = 64N, N heads
  // (llm.c's rule for depths outside the GPT-2 family).
  static ModelConfig from_depth(int depth);
  bool operator==(const ModelConfig& o) const {
    return max_seq_len == o.max_seq_len && vocab_size == o.vocab_size &&
           padded_vocab_size == o.padded_vocab_size && num_layers == o.num_layers &&
           num_heads == o.num_heads && channels == o.channels;
  }
};

// train.recompute: level 0 keeps every activation, 1 recomputes GELU in backward, 2 also
// the layernorms; train.recompute_layers: only the first `layers` layers do (-1: all), the
// others keep everything. Layers that recompute share one buffer for what they drop, so
// each layer taken out of recompute costs a buffer (d24 B 16 T 1024 bf16: 128 MiB of
// GELU output) and saves its recompute: a memory budget between two levels.
struct Recompute {
  int level = 0, layers = -1;
  Recompute(int level_ = 0, int layers_ = -1) : level(level_), layers(layers_) {}
  // How many of L layers recompute the GELU, the layernorms.
  int gelu(int L) const { return level >= 1 ? count(L) : 0; }
  int ln(int L) const { return level >= 2 ? count(L) : 0; }

 private:
  int count(int L) const { return layers < 0 ? L : std::min(layers, L); }
};

// The 16 tensor kinds in llm.c order. Per-layer kinds are stacked [L, ...].
enum class ParamKind {
  wte, wpe, ln1w, ln1b, qkvw, qkvb, attprojw, attprojb,
  ln2w, ln2b, fcw, fcb, fcprojw, fcprojb, lnfw, lnfb, count
};

// One optimizer-visible tensor: a single layer's slice of a stacked kind.
struct ParamSpec {
  int id;              // index in ParamTable::params (optimizer state is keyed by it)
  ParamKind kind;
  int layer;           // -1 for wte, wpe, lnf
  std::string name;    // "wte", "h.3.attn.qkvw", "lnf.w" ...
  int64_t rows, cols;  // matrix m x n; vectors have rows == 1
  size_t offset;       // element offset in the parameter buffer
  size_t numel;        // elements the optimizer updates (wte: V x C, padding rows excluded)
  size_t storage;      // elements the tensor occupies in the buffer (wte: Vp x C)
  bool local = true;   // this rank keeps its optimizer state (false: another rank's ZeRO-1 shard)
  bool is_matrix() const { return rows > 1; }
  bool decay() const { return is_matrix(); }  // llm.c: weight decay on 2-D tensors only
};

struct ParamTable {
  ModelConfig cfg;
  std::vector<ParamSpec> params;
  size_t kind_offset[int(ParamKind::count)];
  size_t kind_size[int(ParamKind::count)];
  size_t total = 0;  // elements in the parameter buffer (wte padded to Vp rows)

  explicit ParamTable(const ModelConfig& cfg);
  // The tensor of `kind` in `layer` (layer ignored for non-layer kinds).
  const ParamSpec& get(ParamKind kind, int layer = -1) const;
  // Real parameter count (wte counted with V rows, as GPT-2 papers count it).
  size_t num_parameters() const;
};

}  // namespace gpt2
