#include <set>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "dataloader.hpp"
#include "error.hpp"
#include "shard.hpp"
#include "temp_dir.hpp"

using namespace gpt2;
using Catch::Matchers::Contains;

namespace {

constexpr int B = 2, T = 4;  // windows of 9 tokens starting every 8

// Shard k holds k*1000 + i at position i, so a window's first token says where it
// came from and consecutive tokens differ by one.
struct Shards {
  TempDir dir;
  std::string pattern = dir / "train_*.bin";
  std::vector<int> windows;  // per shard: (size - 1) / (B*T)
  explicit Shards(std::vector<int> sizes) {
    for (size_t k = 0; k < sizes.size(); k++) {
      std::vector<int> tokens(size_t(sizes[k]));
      for (int i = 0; i < sizes[k]; i++) tokens[size_t(i)] = int(k) * 1000 + i;
      write_shard(dir / ("train_00000" + std::to_string(k) + ".bin"), tokens);
      windows.push_back((sizes[k] - 1) / (B * T));
    }
  }
};

// 5 + 3 + 4 = 12 windows; the middle shard has 3 tokens no window can use.
Shards three_shards() { return Shards({41, 28, 33}); }

using Window = std::pair<int, int>;  // (shard, start)

// Takes one batch, checks it is a window of B*T+1 consecutive shard tokens starting at
// a multiple of B*T, and says which.
Window take(DataLoader& loader) {
  std::vector<int> in(B * T), tg(B * T);
  loader.next(in.data(), tg.data());
  const int shard = in[0] / 1000, start = in[0] % 1000;
  CHECK(start % (B * T) == 0);
  for (int i = 0; i < B * T; i++) {
    CHECK(in[size_t(i)] == in[0] + i);
    CHECK(tg[size_t(i)] == in[size_t(i)] + 1);  // the targets are the inputs shifted by one
  }
  return {shard, start};
}

std::vector<Window> take(DataLoader& loader, int n) {
  std::vector<Window> out;
  for (int i = 0; i < n; i++) out.push_back(take(loader));
  return out;
}

}  // namespace

TEST_CASE("a shuffled epoch visits every window once, then a new epoch begins") {
  Shards s = three_shards();
  DataLoader loader(s.pattern, B, T, 0, 1, 42, true);
  CHECK(loader.num_shards() == 3);
  CHECK(loader.num_tokens() == 41 + 28 + 33);
  const std::vector<Window> epoch0 = take(loader, 12);
  CHECK(std::set<Window>(epoch0.begin(), epoch0.end()).size() == 12);
  for (const auto& [shard, start] : epoch0) CHECK(start + B * T < (shard == 1 ? 25 : 41));
  CHECK(loader.epoch() == 1);
  const std::vector<Window> epoch1 = take(loader, 12);
  CHECK(std::set<Window>(epoch1.begin(), epoch1.end()) == std::set<Window>(epoch0.begin(), epoch0.end()));
  CHECK(epoch1 != epoch0);  // each epoch has its own order
  // Shuffled, not file order.
  DataLoader in_order(s.pattern, B, T, 0, 1, 42, false);
  CHECK(take(in_order, 12) != epoch0);
}

TEST_CASE("the same seed gives the same sequence, another seed another") {
  Shards s = three_shards();
  DataLoader a(s.pattern, B, T, 0, 1, 7, true), b(s.pattern, B, T, 0, 1, 7, true),
      c(s.pattern, B, T, 0, 1, 8, true);
  const std::vector<Window> seq = take(a, 30);
  CHECK(take(b, 30) == seq);
  CHECK(take(c, 30) != seq);
}

TEST_CASE("state() and restore() resume the identical sequence") {
  Shards s = three_shards();
  DataLoader a(s.pattern, B, T, 1, 2, 5, true);
  take(a, 7);  // across an epoch boundary: 7 steps of 2 ranks > 12 windows
  const std::vector<uint8_t> saved = a.state();
  const uint64_t epoch = a.epoch();
  const std::vector<Window> rest = take(a, 20);

  DataLoader b(s.pattern, B, T, 1, 2, 5, true);
  take(b, 3);
  b.restore(saved);
  CHECK(b.epoch() == epoch);
  CHECK(take(b, 20) == rest);

  DataLoader other_batch(s.pattern, B, 2, 1, 2, 5, true);
  CHECK_THROWS_WITH(other_batch.restore(saved), Contains(s.pattern) && Contains("data.seq_len 4"));
  DataLoader other_rank(s.pattern, B, T, 0, 2, 5, true);
  CHECK_THROWS_WITH(other_rank.restore(saved), Contains("rank 1"));
  DataLoader other_seed(s.pattern, B, T, 1, 2, 6, true);
  CHECK_THROWS_WITH(other_seed.restore(saved), Contains("train.seed 5"));
  std::vector<uint8_t> garbage(saved.size(), 0xab);
  CHECK_THROWS_WITH(b.restore(garbage), Contains("magic"));
  CHECK_THROWS_WITH(b.restore({1, 2, 3}), Contains("3 bytes"));
}

TEST_CASE("ranks 0..W-1 split the single-rank sequence between them") {
  Shards s = three_shards();
  const int W = 3, steps = 9;  // 27 windows: more than two epochs of 12
  DataLoader one(s.pattern, B, T, 0, 1, 99, true);
  const std::vector<Window> all = take(one, W * steps);
  for (int r = 0; r < W; r++) {
    DataLoader rank(s.pattern, B, T, r, W, 99, true);
    for (int k = 0; k < steps; k++) CHECK(take(rank) == all[size_t(k * W + r)]);
  }
}

TEST_CASE("every rank resumes from rank 0's state where it would have been") {
  Shards s = three_shards();
  const int W = 3;
  DataLoader rank0(s.pattern, B, T, 0, W, 11, true);
  take(rank0, 5);  // 15 windows of the stream: into the second epoch
  const std::vector<uint8_t> saved = rank0.state();
  for (int r = 0; r < W; r++) {
    INFO("rank " << r);
    DataLoader uninterrupted(s.pattern, B, T, r, W, 11, true), resumed(s.pattern, B, T, r, W, 11, true);
    take(uninterrupted, 5);
    resumed.restore(saved, /*from_rank0=*/true);
    CHECK(take(resumed, 10) == take(uninterrupted, 10));
  }
  DataLoader rank1(s.pattern, B, T, 1, W, 11, true);
  CHECK_THROWS_WITH(rank1.restore(rank1.state(), true), Contains("rank 1"));
  DataLoader other_world(s.pattern, B, T, 1, 2, 11, true);
  CHECK_THROWS_WITH(other_world.restore(saved, true), Contains("world size 3"));
}

TEST_CASE("validation walks the shards in order and reset() restarts it") {
  Shards s = three_shards();
  DataLoader val(s.pattern, B, T, 0, 1, 0, false);
  std::vector<Window> expected;
  for (int k = 0; k < 3; k++)
    for (int w = 0; w < s.windows[size_t(k)]; w++) expected.push_back({k, w * B * T});
  CHECK(take(val, 12) == expected);
  CHECK(take(val) == Window{0, 0});  // wraps around
  val.reset();
  CHECK(val.epoch() == 0);
  CHECK(take(val, 12) == expected);
}

TEST_CASE("a shard shorter than one batch is an Error naming it") {
  Shards s({41, 8});
  CHECK_THROWS_WITH(DataLoader(s.pattern, B, T, 0, 1, 0, true),
                    Contains(s.dir / "train_000001.bin") && Contains("8 tokens") && Contains("9"));
  CHECK_THROWS_WITH(DataLoader(s.dir / "val_*.bin", B, T, 0, 1, 0, false), Contains("val_*.bin"));
  CHECK_THROWS_AS(DataLoader(s.pattern, B, T, 2, 2, 0, true), Error);
}
