// llm.c token shards: 256 int32 header (magic 20240520, version 1, token count), then
// the tokens as uint16.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace gpt2 {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;

// Writes atomically. Throws Error if a token does not fit in uint16.
void write_shard(const std::string& path, const std::vector<int>& tokens);
// Validates magic, version and count against the file size; errors name the file.
std::vector<uint16_t> read_shard(const std::string& path);
// The same checks, reading only the header: the token count, for loaders that visit
// shards one at a time and must not read them all up front.
size_t read_shard_header(const std::string& path);
// Sorted paths matching a glob; Error naming the pattern if none match.
std::vector<std::string> glob_shards(const std::string& pattern);

}  // namespace gpt2
