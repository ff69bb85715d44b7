#include "dataloader.hpp"

#include <algorithm>
#include <numeric>

#include "error.hpp"
#include "rng.hpp"
#include "shard.hpp"

namespace gpt2 {
namespace {

// Our own generator and shuffle rather than <random>'s: std::shuffle and the standard
// distributions are implementation-defined, and a resumed run must see the same data
// order whatever standard library built it.
// Stream 0 orders the shards of an epoch; stream s+1 orders the windows of shard s.
uint64_t shuffle_key(uint64_t seed, uint64_t epoch, uint64_t stream) {
  return splitmix64_mix(splitmix64_mix(splitmix64_mix(seed) ^ epoch) ^ stream);
}

template <class T>
void shuffle(std::vector<T>& v, uint64_t key) {
  SplitMix64 rng{key};
  for (size_t i = v.size(); i > 1; i--) {
    // Multiply-shift maps 64 random bits onto [0, i); its bias, i / 2^64, is nil here.
    const size_t j = size_t((unsigned __int128)rng.next() * i >> 64);
    std::swap(v[i - 1], v[j]);
  }
}

constexpr uint64_t kStateMagic = 0x3174735f61746164ULL;  // "data_st1" little-endian
constexpr int kStateFields = 12;

std::vector<uint64_t> decode(const std::vector<uint8_t>& bytes) {
  std::vector<uint64_t> fields(kStateFields, 0);
  for (int i = 0; i < kStateFields; i++)
    for (int b = 0; b < 8; b++) fields[size_t(i)] |= uint64_t(bytes[size_t(i * 8 + b)]) << (8 * b);
  return fields;
}

}  // namespace

DataLoader::DataLoader(const std::string& pattern, int B, int T, int rank, int world_size,
                       uint64_t seed, bool shuffle)
    : pattern_(pattern), B_(B), T_(T), rank_(rank), world_size_(world_size), seed_(seed),
      shuffle_(shuffle) {
  if (B < 1 || T < 1) fail("data loader for ", pattern, ": batch size ", B, " and sequence length ", T,
                           " must both be at least 1");
  if (world_size < 1 || rank < 0 || rank >= world_size)
    fail("data loader for ", pattern, ": rank ", rank, " is not in [0, world size ", world_size, ")");
  paths_ = glob_shards(pattern);
  const size_t window = size_t(B) * size_t(T);
  for (const std::string& path : paths_) {
    const size_t count = read_shard_header(path);
    if (count < window + 1)
      fail("token shard ", path, " has ", count, " tokens, fewer than one batch needs (B*T+1 = ",
           B, "*", T, "+1 = ", window + 1, "): lower data.batch_size or data.seq_len, or prepare ",
           "larger shards");
    windows_.push_back((count - 1) / window);
    num_tokens_ += count;
    num_windows_ += windows_.back();
  }
  reset();
}

void DataLoader::reset() {
  epoch_ = 0;
  index_ = 0;
  advance(uint64_t(rank_));
}

void DataLoader::advance(uint64_t steps) {
  index_ += steps;
  epoch_ += index_ / num_windows_;
  index_ %= num_windows_;
}

void DataLoader::load(size_t shard) {
  if (loaded_ != shard) {
    tokens_ = read_shard(paths_[shard]);
    // The shard may have been rewritten since the constructor checked it.
    if (tokens_.size() < windows_[shard] * size_t(B_) * size_t(T_) + 1)
      fail("token shard ", paths_[shard], " changed while training: it now has ", tokens_.size(),
           " tokens; restart the run");
    loaded_ = shard;
    loaded_epoch_ = UINT64_MAX;
  }
  if (loaded_epoch_ != epoch_) {
    window_order_.resize(windows_[shard]);
    std::iota(window_order_.begin(), window_order_.end(), 0u);
    if (shuffle_) shuffle(window_order_, shuffle_key(seed_, epoch_, shard + 1));
    loaded_epoch_ = epoch_;
  }
}

void DataLoader::next(int* inputs, int* targets) {
  if (order_epoch_ != epoch_) {
    order_.resize(paths_.size());
    std::iota(order_.begin(), order_.end(), size_t(0));
    if (shuffle_) shuffle(order_, shuffle_key(seed_, epoch_, 0));
    starts_.assign(1, 0);
    for (size_t s : order_) starts_.push_back(starts_.back() + windows_[s]);
    order_epoch_ = epoch_;
  }
  const size_t visit = size_t(std::upper_bound(starts_.begin(), starts_.end(), index_) - starts_.begin()) - 1;
  const size_t shard = order_[visit];
  load(shard);
  const size_t window = size_t(B_) * size_t(T_);
  const uint16_t* w = tokens_.data() + size_t(window_order_[index_ - starts_[visit]]) * window;
  for (size_t i = 0; i < window; i++) {
    inputs[i] = w[i];
    targets[i] = w[i + 1];
  }
  advance(uint64_t(world_size_));
}

std::vector<uint8_t> DataLoader::state() const {
  const uint64_t fields[kStateFields] = {
      kStateMagic, uint64_t(B_),         uint64_t(T_), uint64_t(rank_), uint64_t(world_size_),
      seed_,       uint64_t(shuffle_),   paths_.size(), num_tokens_,    num_windows_,
      epoch_,      index_};
  // Little-endian byte by byte, so a checkpoint reads back on any host.
  std::vector<uint8_t> out;
  for (uint64_t f : fields)
    for (int b = 0; b < 8; b++) out.push_back(uint8_t(f >> (8 * b)));
  return out;
}

void DataLoader::restore(const std::vector<uint8_t>& s, bool from_rank0) {
  if (s.size() != kStateFields * 8)
    fail("cannot resume the data loader for ", pattern_, ": its saved state is ", s.size(),
         " bytes, expected ", kStateFields * 8, " (the checkpoint is corrupt or from another version)");
  const std::vector<uint64_t> saved = decode(s), now = decode(state());
  if (saved[0] != kStateMagic)
    fail("cannot resume the data loader for ", pattern_,
         ": the saved state does not start with the data loader's magic (corrupt checkpoint?)");
  // Fields 1..9 describe the setup; the last two are the position.
  const char* names[] = {"", "data.batch_size", "data.seq_len", "rank", "world size", "train.seed",
                         "data.shuffle", "number of shards", "number of tokens", "number of windows"};
  for (int i = 1; i < kStateFields - 2; i++)
    if (saved[i] != (from_rank0 && i == 3 ? 0 : now[i]))
      fail("cannot resume the data loader for ", pattern_, ": the checkpoint was saved with ",
           names[i], " ", saved[i], " but this run has ", now[i],
           "; resume with the same data and settings, or start a fresh run");
  if (saved[11] >= num_windows_)
    fail("cannot resume the data loader for ", pattern_, ": saved position ", saved[11],
         " is past the ", num_windows_, " windows of an epoch (corrupt checkpoint?)");
  epoch_ = saved[10];
  index_ = saved[11];
  if (from_rank0) advance(uint64_t(rank_));
}

}  // namespace gpt2
