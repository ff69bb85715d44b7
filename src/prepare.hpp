// Text documents -> llm.c token shards (`train_gpt2 prepare`; src/cmd_prepare.cpp is
// its command line). Each document is <|endoftext|> followed by its tokens, as llm.c's
// data scripts write them; documents are split whole between train and val.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace gpt2 {

struct PrepareOptions {
  std::vector<std::string> inputs;  // files, or directories of files (one document each)
  std::string out;                  // created if missing
  double val_fraction = 0.05;       // of the documents; > 0 means at least one
  long long shard_tokens = 100'000'000;
  std::string encoder = "data/gpt2/encoder.json";
  std::string vocab = "data/gpt2/vocab.bpe";
  bool progress = false;            // a progress bar on stderr
};

struct PrepareStats {
  size_t train_documents = 0, val_documents = 0;
  size_t train_tokens = 0, val_tokens = 0;
  size_t train_shards = 0, val_shards = 0;
  size_t bytes = 0;  // of input text
  double seconds = 0;
};

// The documents `inputs` name, in order: a file is itself; a directory gives its regular
// files, sorted, skipping dotfiles. Error if one does not exist or none are found.
std::vector<std::string> list_documents(const std::vector<std::string>& inputs);

// Whether document i of n goes to val: n_val = max(1, round(fraction * n)) documents
// (none when fraction is 0), spread evenly so that every part of a sorted corpus
// (Brown's genres) is represented.
bool is_val_document(size_t i, size_t n, double fraction);

// Writes <out>/train_000000.bin ... and <out>/val_000000.bin ... and removes any
// higher-numbered shards a previous run left there.
PrepareStats prepare(const PrepareOptions& opts);

}  // namespace gpt2
