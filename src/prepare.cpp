#include "prepare.hpp"

#include <omp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>

#include "atomic_file.hpp"
#include "error.hpp"
#include "shard.hpp"
#include "tokenizer.hpp"

namespace gpt2 {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;

std::string shard_path(const std::string& out, const char* split, size_t index) {
  char name[32];
  std::snprintf(name, sizeof name, "%s_%06zu.bin", split, index);
  return (fs::path(out) / name).string();
}

std::string read_document(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail("cannot read document ", path, ": ", std::strerror(errno));
  struct stat st;
  std::string text;
  try {
    if (fstat(fileno(f), &st) != 0) fail("cannot read document ", path, ": ", std::strerror(errno));
    text.resize(size_t(st.st_size));
    read_all(f, text.data(), text.size(), path);
  } catch (...) {
    std::fclose(f);
    throw;
  }
  std::fclose(f);
  return text;
}

// Fills shards of exactly `capacity` tokens in document order (a document may straddle
// two shards, as in llm.c's fineweb.py); the last shard holds the rest.
class ShardWriter {
 public:
  ShardWriter(std::string out, const char* split, size_t capacity)
      : out_(std::move(out)), split_(split), capacity_(capacity) {}
  void add(const std::vector<int>& tokens) {
    tokens_ += tokens.size();
    for (size_t at = 0; at < tokens.size();) {
      const size_t take = std::min(capacity_ - buffer_.size(), tokens.size() - at);
      buffer_.insert(buffer_.end(), tokens.begin() + long(at), tokens.begin() + long(at + take));
      at += take;
      if (buffer_.size() == capacity_) flush();
    }
  }
  void finish() {
    if (!buffer_.empty()) flush();
  }
  size_t shards() const { return shards_; }
  size_t tokens() const { return tokens_; }

 private:
  void flush() {
    write_shard(shard_path(out_, split_, shards_++), buffer_);
    buffer_.clear();
  }
  std::string out_;
  const char* split_;
  size_t capacity_;
  std::vector<int> buffer_;
  size_t shards_ = 0, tokens_ = 0;
};

// Shards of an earlier run would otherwise be picked up by the data.train/val globs.
void remove_old_shards(const std::string& out) {
  for (const char* split : {"train", "val"})
    for (size_t i = 0; fs::exists(shard_path(out, split, i)); i++) {
      std::error_code ec;
      if (!fs::remove(shard_path(out, split, i), ec))
        fail("prepare: cannot remove the old shard ", shard_path(out, split, i), ": ", ec.message());
    }
}

void draw_progress(size_t done, size_t total, double seconds) {
  const int width = 40;
  const double frac = total ? double(done) / double(total) : 1.0;
  const int filled = int(frac * width);
  std::fprintf(stderr, "\rprepare [%s%s] %3.0f%% %6.1f MB/s", std::string(size_t(filled), '#').c_str(),
               std::string(size_t(width - filled), ' ').c_str(), 100 * frac,
               seconds > 0 ? double(done) / 1e6 / seconds : 0.0);
  std::fflush(stderr);
}

}  // namespace

std::vector<std::string> list_documents(const std::vector<std::string>& inputs) {
  if (inputs.empty()) fail("prepare: no --input given: name text files or directories of them");
  std::vector<std::string> docs;
  for (const std::string& input : inputs) {
    std::error_code ec;
    const fs::file_status status = fs::status(input, ec);
    if (status.type() == fs::file_type::regular) {
      docs.push_back(input);
    } else if (status.type() == fs::file_type::directory) {
      std::vector<std::string> files;
      for (fs::directory_iterator it(input, ec), end; !ec && it != end; it.increment(ec))
        if (it->is_regular_file() && it->path().filename().string()[0] != '.') files.push_back(it->path().string());
      if (ec) fail("prepare: cannot list --input directory ", input, ": ", ec.message());
      if (files.empty()) fail("prepare: --input directory ", input, " holds no documents (regular files)");
      std::sort(files.begin(), files.end());
      docs.insert(docs.end(), files.begin(), files.end());
    } else {
      fail("prepare: --input ", input, " is not a file or directory",
           ec ? cat(" (", ec.message(), ")") : std::string());
    }
  }
  return docs;
}

bool is_val_document(size_t i, size_t n, double fraction) {
  if (fraction <= 0) return false;
  const size_t n_val = std::max<size_t>(1, size_t(std::llround(fraction * double(n))));
  return (i + 1) * n_val / n > i * n_val / n;
}

PrepareStats prepare(const PrepareOptions& opts) {
  if (!(opts.val_fraction >= 0 && opts.val_fraction < 1))
    fail("prepare: --val-fraction ", opts.val_fraction,
         " is out of range: use a fraction of the documents in [0, 1), e.g. 0.05");
  if (opts.shard_tokens < 1 || opts.shard_tokens > std::numeric_limits<int32_t>::max())
    fail("prepare: --shard-tokens ", opts.shard_tokens, " is out of range: use 1 to ",
         std::numeric_limits<int32_t>::max(), " (the shard header holds an int32 count)");
  const std::vector<std::string> docs = list_documents(opts.inputs);
  std::vector<bool> val(docs.size());
  size_t n_val = 0;
  for (size_t i = 0; i < docs.size(); i++) {
    val[i] = is_val_document(i, docs.size(), opts.val_fraction);
    n_val += val[i] ? 1 : 0;
  }
  if (n_val == docs.size())
    fail("prepare: --val-fraction ", opts.val_fraction, " of ", docs.size(),
         " documents leaves none for training: give more documents or a smaller fraction");
  const Tokenizer tokenizer(opts.encoder, opts.vocab);

  size_t total_bytes = 0;
  std::error_code ec;
  for (const std::string& d : docs) {
    total_bytes += fs::file_size(d, ec);
    if (ec) fail("cannot read document ", d, ": ", ec.message());
  }
  fs::create_directories(opts.out, ec);
  if (ec) fail("prepare: cannot create --out directory ", opts.out, ": ", ec.message());
  remove_old_shards(opts.out);
  ShardWriter train(opts.out, "train", size_t(opts.shard_tokens));
  ShardWriter valw(opts.out, "val", size_t(opts.shard_tokens));

  const Clock::time_point start = Clock::now();
  const auto seconds = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  std::atomic<size_t> done_bytes{0};
  // Documents are read in order, tokenized in parallel a chunk at a time (bounding
  // memory), and appended in order, so the shards do not depend on the thread count.
  constexpr size_t kChunkBytes = size_t(1) << 24, kChunkDocs = 256;
  for (size_t begin = 0; begin < docs.size();) {
    std::vector<std::string> texts;
    size_t chunk_bytes = 0;
    while (begin + texts.size() < docs.size() && texts.size() < kChunkDocs && chunk_bytes < kChunkBytes) {
      texts.push_back(read_document(docs[begin + texts.size()]));
      chunk_bytes += texts.back().size();
    }
    std::vector<std::vector<int>> tokens(texts.size());
    std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < texts.size(); i++) {
      try {
        tokens[i] = tokenizer.encode(texts[i]);
        tokens[i].insert(tokens[i].begin(), kEndOfText);
      } catch (...) {
#pragma omp critical
        error = std::current_exception();
      }
      done_bytes += texts[i].size();
      if (opts.progress && omp_get_thread_num() == 0) draw_progress(done_bytes, total_bytes, seconds());
    }
    if (error) std::rethrow_exception(error);
    for (size_t i = 0; i < texts.size(); i++) (val[begin + i] ? valw : train).add(tokens[i]);
    begin += texts.size();
  }
  train.finish();
  valw.finish();
  if (opts.progress) {
    draw_progress(total_bytes, total_bytes, seconds());
    std::fputc('\n', stderr);
  }

  PrepareStats s;
  s.val_documents = n_val;
  s.train_documents = docs.size() - n_val;
  s.train_tokens = train.tokens(), s.val_tokens = valw.tokens();
  s.train_shards = train.shards(), s.val_shards = valw.shards();
  s.bytes = total_bytes;
  s.seconds = seconds();
  return s;
}

}  // namespace gpt2
