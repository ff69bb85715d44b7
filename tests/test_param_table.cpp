#include "catch.hpp"
#include "param_table.hpp"

using namespace gpt2;

TEST_CASE("GPT-2 124M has the parameter count the papers use") {
  ParamTable t(ModelConfig::from_depth(12));
  // optimizers.md section 0: P = 124,439,808 counting wte once (V = 50257 rows).
  CHECK(t.num_parameters() == 124439808);
  // The buffer holds wte padded to 50304 rows, as llm.c's model file does.
  CHECK(t.total == 124439808 + size_t(50304 - 50257) * 768);
  CHECK(t.params.size() == size_t(2 + 12 * 12 + 2));
}

TEST_CASE("GPT-2 345M has the parameter count the papers use") {
  ParamTable t(ModelConfig::from_depth(24));
  CHECK(t.num_parameters() == 354823168);
  CHECK(t.cfg.channels == 1024);
  CHECK(t.cfg.num_heads == 16);
}

TEST_CASE("ParamTable lays tensors out in llm.c order with per-layer slices") {
  ModelConfig c = ModelConfig::from_depth(2);
  c.vocab_size = 10, c.padded_vocab_size = 16, c.max_seq_len = 8;
  ParamTable t(c);
  const int64_t C = 128;
  const ParamSpec& wte = t.get(ParamKind::wte);
  CHECK(wte.offset == 0);
  CHECK(wte.numel == size_t(10 * C));
  CHECK(t.get(ParamKind::wpe).offset == size_t(16 * C));
  const ParamSpec& q1 = t.get(ParamKind::qkvw, 1);
  CHECK(q1.name == "h.1.attn.qkvw");
  CHECK(q1.rows == 3 * C);
  CHECK(q1.cols == C);
  CHECK(q1.offset == t.kind_offset[int(ParamKind::qkvw)] + size_t(3 * C * C));
  CHECK(q1.decay());
  CHECK_FALSE(t.get(ParamKind::qkvb, 1).decay());
  const ParamSpec& lnfb = t.get(ParamKind::lnfb);
  CHECK(lnfb.offset + lnfb.numel == t.total);
  for (size_t i = 0; i < t.params.size(); i++) CHECK(t.params[i].id == int(i));
}
