#include "shard.hpp"

#include <glob.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>

#include "atomic_file.hpp"
#include "error.hpp"

namespace gpt2 {
namespace {

constexpr size_t kHeaderInts = 256;
constexpr size_t kHeaderBytes = kHeaderInts * sizeof(int32_t);

using File = std::unique_ptr<std::FILE, int (*)(std::FILE*)>;

File open_shard(const std::string& path) {
  File f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) fail("cannot open token shard ", path, ": ", std::strerror(errno));
  return f;
}

// Checks the header of an open shard against its size; leaves f just past the header.
size_t check_header(std::FILE* f, const std::string& path) {
  struct stat st;
  if (fstat(fileno(f), &st) != 0) fail("cannot stat token shard ", path, ": ", std::strerror(errno));
  const size_t size = size_t(st.st_size);
  if (size == 0) fail("token shard ", path, " is empty (0 bytes); expected a ", kHeaderBytes,
                      "-byte header and tokens: rerun `train_gpt2 prepare`");
  if (size < kHeaderBytes)
    fail("token shard ", path, " is ", size, " bytes, shorter than its ", kHeaderBytes,
         "-byte header: the file is truncated or not a token shard");
  int32_t header[kHeaderInts];
  read_all(f, header, kHeaderBytes, path);
  if (header[0] != kShardMagic)
    fail("token shard ", path, " has magic ", header[0], ", expected ", kShardMagic,
         ": not an llm.c token shard (a model file has magic 20240326)");
  if (header[1] != kShardVersion)
    fail("token shard ", path, " has version ", header[1], ", expected ", kShardVersion,
         ": rewrite it with `train_gpt2 prepare`");
  if (header[2] < 0) fail("token shard ", path, " has a negative token count ", header[2]);
  const size_t count = size_t(header[2]);
  const size_t expected = kHeaderBytes + count * sizeof(uint16_t);
  if (size != expected)
    fail("token shard ", path, " is ", size, " bytes but its header promises ", count,
         " tokens (", expected, " bytes): the file is ",
         size < expected ? "truncated" : "longer than its header says", "; rerun `train_gpt2 prepare`");
  return count;
}

}  // namespace

void write_shard(const std::string& path, const std::vector<int>& tokens) {
  if (tokens.size() > size_t(std::numeric_limits<int32_t>::max()))
    fail("cannot write token shard ", path, ": ", tokens.size(),
         " tokens do not fit the header's int32 count; use a smaller --shard-tokens");
  std::vector<uint16_t> packed(tokens.size());
  for (size_t i = 0; i < tokens.size(); i++) {
    if (tokens[i] < 0 || tokens[i] > 65535)
      fail("cannot write token shard ", path, ": token ", tokens[i], " at position ", i,
           " does not fit in uint16 (llm.c shards hold ids 0..65535)");
    packed[i] = uint16_t(tokens[i]);
  }
  int32_t header[kHeaderInts] = {};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = int32_t(tokens.size());
  write_file_atomic(path, [&](std::FILE* f) {
    write_all(f, header, kHeaderBytes, path);
    write_all(f, packed.data(), packed.size() * sizeof(uint16_t), path);
  });
}

size_t read_shard_header(const std::string& path) {
  File f = open_shard(path);
  return check_header(f.get(), path);
}

std::vector<uint16_t> read_shard(const std::string& path) {
  File f = open_shard(path);
  std::vector<uint16_t> tokens(check_header(f.get(), path));
  read_all(f.get(), tokens.data(), tokens.size() * sizeof(uint16_t), path);
  return tokens;
}

std::vector<std::string> glob_shards(const std::string& pattern) {
  glob_t g{};
  const int rc = glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> paths(g.gl_pathv, g.gl_pathv + g.gl_pathc);
  globfree(&g);
  if (rc == GLOB_NOMATCH || (rc == 0 && paths.empty()))
    fail("no token shards match ", pattern,
         ": check the data.train/data.val pattern or run `make data` (train_gpt2 prepare)");
  if (rc != 0) fail("cannot list token shards matching ", pattern, ": glob error ", rc);
  std::sort(paths.begin(), paths.end());
  return paths;
}

}  // namespace gpt2
