// Files we write (shards, checkpoints, metrics snapshots) appear whole or not at all:
// the content goes to "<path>.tmp.<pid>", is fsync'ed, then renamed over <path>.
#pragma once
#include <cstdio>
#include <functional>
#include <string>

namespace gpt2 {

// Calls write(f) on a temporary file and renames it to path on success. If write
// throws or any I/O fails, the temporary file is removed and an Error names path.
void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& write);

// fwrite that throws an Error naming path when the write is short (disk full, ...).
void write_all(std::FILE* f, const void* data, size_t bytes, const std::string& path);

// Reads exactly `bytes` or throws an Error naming path and the offset.
void read_all(std::FILE* f, void* data, size_t bytes, const std::string& path);

}  // namespace gpt2
