// Batches of B*T tokens from llm.c token shards, for training (shuffled, endless) and
// validation (in order). Each batch is one window of B*T+1 consecutive tokens of one
// shard: inputs are its first B*T tokens, targets the same shifted by one. Windows
// start every B*T tokens, so consecutive windows share one token, as in llm.c.
//
// The windows form one stream per seed: epoch after epoch, the shards in a seeded
// shuffled order, within each shard the windows in a seeded shuffled order (both in
// file order when shuffle is false). Rank r of W takes stream items r, r+W, r+2W, ...:
// ranks see disjoint windows and together see exactly what a single rank would.
// Only the shard being read is held in memory.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace gpt2 {

class DataLoader {
 public:
  // Throws Error if nothing matches pattern, a shard is malformed or shorter than
  // B*T+1 tokens, or B, T, rank, world_size are out of range.
  DataLoader(const std::string& pattern, int B, int T, int rank, int world_size, uint64_t seed,
             bool shuffle);
  // inputs and targets are host arrays of B*T; targets[i] is the token after inputs[i].
  void next(int* inputs, int* targets);
  // Back to this rank's first window of epoch 0 (validation restarts this way).
  void reset();
  // The position, with enough of the setup to refuse a state from another loader.
  std::vector<uint8_t> state() const;
  // Error if s was not made by a loader with the same shards, B, T, rank, world size,
  // seed and shuffle. from_rank0: s is rank 0's state (the one a checkpoint keeps);
  // every rank has taken as many windows as rank 0, so this rank's position follows.
  void restore(const std::vector<uint8_t>& s, bool from_rank0 = false);
  size_t num_tokens() const { return num_tokens_; }
  size_t num_shards() const { return paths_.size(); }
  // The epoch the next window comes from.
  uint64_t epoch() const { return epoch_; }

 private:
  void advance(uint64_t steps);
  void load(size_t shard);  // makes shard the one in memory with this epoch's window order

  std::string pattern_;
  int B_, T_, rank_, world_size_;
  uint64_t seed_;
  bool shuffle_;
  std::vector<std::string> paths_;
  std::vector<size_t> windows_;  // per shard, in file order
  size_t num_tokens_ = 0;
  size_t num_windows_ = 0;  // per epoch, all shards

  // Position: the next window is item index_ of epoch epoch_'s stream.
  uint64_t epoch_ = 0;
  uint64_t index_ = 0;

  // This epoch's shard order and, for the visit position of each shard, the stream
  // index where it starts (prefix sums of windows_ in visit order).
  uint64_t order_epoch_ = UINT64_MAX;
  std::vector<size_t> order_;
  std::vector<size_t> starts_;

  // The shard in memory and its window order for order_epoch_.
  size_t loaded_ = SIZE_MAX;
  uint64_t loaded_epoch_ = UINT64_MAX;
  std::vector<uint16_t> tokens_;
  std::vector<uint32_t> window_order_;
};

}  // namespace gpt2
