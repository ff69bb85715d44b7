// `train_gpt2 prepare --input <files|dirs>... --out <dir>`: tokenize text documents into
// llm.c token shards <dir>/train_000000.bin ... and <dir>/val_000000.bin ...
//   train_gpt2 prepare --input data/brown/text --out data/brown     (what `make data` runs)
#include <unistd.h>

#include <cstdio>
#include <memory>

#include "commands.hpp"
#include "prepare.hpp"

namespace gpt2 {

void add_prepare_command(CLI::App& app) {
  auto opts = std::make_shared<PrepareOptions>();
  CLI::App* cmd = app.add_subcommand("prepare", "Tokenize text documents into llm.c token shards");
  cmd->add_option("--input", opts->inputs, "Text files, or directories of them (one document per file)")
      ->required();
  cmd->add_option("--out", opts->out, "Directory for train_*.bin and val_*.bin")->required();
  cmd->add_option("--val-fraction", opts->val_fraction, "Fraction of documents for validation")
      ->capture_default_str();
  cmd->add_option("--shard-tokens", opts->shard_tokens, "Tokens per shard")->capture_default_str();
  cmd->add_option("--encoder", opts->encoder, "GPT-2 encoder.json")->capture_default_str();
  cmd->add_option("--vocab", opts->vocab, "GPT-2 vocab.bpe")->capture_default_str();
  cmd->callback([opts] {
    opts->progress = isatty(fileno(stderr));
    const PrepareStats s = prepare(*opts);
    std::printf("prepare: %zu documents (%zu train, %zu val) -> %s\n",
                s.train_documents + s.val_documents, s.train_documents, s.val_documents,
                opts->out.c_str());
    std::printf("prepare: train %zu tokens in %zu shard(s), val %zu tokens in %zu shard(s)\n",
                s.train_tokens, s.train_shards, s.val_tokens, s.val_shards);
    std::printf("prepare: %.1f MB of text in %.2f s (%.1f MB/s)\n", double(s.bytes) / 1e6, s.seconds,
                s.seconds > 0 ? double(s.bytes) / 1e6 / s.seconds : 0.0);
  });
}

}  // namespace gpt2
