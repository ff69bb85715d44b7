#include <cstdio>
#include <cstdint>
#include <vector>

#include "catch.hpp"
#include "error.hpp"
#include "shard.hpp"
#include "temp_dir.hpp"

using namespace gpt2;
using Catch::Matchers::Contains;

namespace {

// Writes a shard byte by byte (not through write_shard) so each field can be wrong.
void write_raw(const std::string& path, int32_t magic, int32_t version, int32_t count,
               size_t actual_tokens) {
  std::vector<int32_t> header(256, 0);
  header[0] = magic, header[1] = version, header[2] = count;
  std::vector<uint16_t> tokens(actual_tokens, 7);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  REQUIRE(f);
  std::fwrite(header.data(), 4, header.size(), f);
  std::fwrite(tokens.data(), 2, tokens.size(), f);
  std::fclose(f);
}

}  // namespace

TEST_CASE("write_shard then read_shard gives the tokens back, in llm.c's layout") {
  TempDir dir;
  const std::string path = dir / "train_000000.bin";
  const std::vector<int> tokens = {50256, 0, 1, 65535, 31373, 995};
  write_shard(path, tokens);
  CHECK(read_shard_header(path) == tokens.size());
  const std::vector<uint16_t> back = read_shard(path);
  CHECK(std::vector<int>(back.begin(), back.end()) == tokens);

  // The byte layout itself, read independently: 256 int32 header then uint16 tokens.
  std::FILE* f = std::fopen(path.c_str(), "rb");
  REQUIRE(f);
  int32_t header[256];
  REQUIRE(std::fread(header, 4, 256, f) == 256);
  uint16_t raw[7];
  CHECK(std::fread(raw, 2, 7, f) == 6);
  std::fclose(f);
  CHECK(header[0] == 20240520);
  CHECK(header[1] == 1);
  CHECK(header[2] == 6);
  CHECK(raw[0] == 50256);
  CHECK(raw[3] == 65535);
}

TEST_CASE("write_shard refuses ids that do not fit uint16 and leaves no file") {
  TempDir dir;
  const std::string path = dir / "bad.bin";
  CHECK_THROWS_WITH(write_shard(path, {1, 65536}), Contains(path) && Contains("65536"));
  CHECK_THROWS_AS(write_shard(path, {-1}), Error);
  CHECK(std::filesystem::is_empty(dir.path));
}

TEST_CASE("an empty shard round-trips") {
  TempDir dir;
  write_shard(dir / "empty.bin", {});
  CHECK(read_shard(dir / "empty.bin").empty());
}

TEST_CASE("malformed shards each give one Error naming the file and the problem") {
  TempDir dir;
  const std::string path = dir / "s.bin";
  SECTION("wrong magic (a model file)") {
    write_raw(path, 20240326, 1, 4, 4);
    CHECK_THROWS_WITH(read_shard(path), Contains(path) && Contains("magic 20240326") &&
                                            Contains("expected 20240520"));
  }
  SECTION("wrong version") {
    write_raw(path, 20240520, 2, 4, 4);
    CHECK_THROWS_WITH(read_shard(path), Contains(path) && Contains("version 2"));
  }
  SECTION("count larger than the file holds (truncated)") {
    write_raw(path, 20240520, 1, 10, 4);
    CHECK_THROWS_WITH(read_shard(path), Contains(path) && Contains("10 tokens") &&
                                            Contains("truncated"));
  }
  SECTION("count smaller than the file holds") {
    write_raw(path, 20240520, 1, 2, 4);
    CHECK_THROWS_WITH(read_shard_header(path), Contains(path) && Contains("longer than"));
  }
  SECTION("file shorter than the header") {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    std::fputs("not a shard", f);
    std::fclose(f);
    CHECK_THROWS_WITH(read_shard(path), Contains(path) && Contains("11 bytes"));
  }
  SECTION("empty file") {
    std::fclose(std::fopen(path.c_str(), "wb"));
    CHECK_THROWS_WITH(read_shard(path), Contains(path) && Contains("empty"));
  }
  SECTION("missing file") {
    CHECK_THROWS_WITH(read_shard(dir / "nope.bin"),
                      Contains(dir / "nope.bin") && Contains("No such file"));
  }
}

TEST_CASE("glob_shards sorts its matches and names the pattern when none match") {
  TempDir dir;
  for (const char* name : {"train_000002.bin", "train_000000.bin", "val_000000.bin", "train_000001.bin"})
    write_shard(dir / name, {1, 2});
  const std::vector<std::string> got = glob_shards(dir / "train_*.bin");
  CHECK(got == std::vector<std::string>{dir / "train_000000.bin", dir / "train_000001.bin",
                                        dir / "train_000002.bin"});
  const std::string pattern = dir / "test_*.bin";
  CHECK_THROWS_WITH(glob_shards(pattern), Contains(pattern) && Contains("no token shards"));
}
