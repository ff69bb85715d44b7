#include "atomic_file.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "error.hpp"

namespace gpt2 {

void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& write) {
  const std::string tmp = cat(path, ".tmp.", getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail("cannot create ", tmp, ": ", std::strerror(errno));
  try {
    write(f);
    if (std::fflush(f) != 0 || fsync(fileno(f)) != 0)
      fail("cannot write ", path, ": ", std::strerror(errno));
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  if (std::fclose(f) != 0) {
    std::remove(tmp.c_str());
    fail("cannot write ", path, ": ", std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail("cannot rename ", tmp, " to ", path, ": ", std::strerror(errno));
  }
}

void write_all(std::FILE* f, const void* data, size_t bytes, const std::string& path) {
  if (bytes && std::fwrite(data, 1, bytes, f) != bytes)
    fail("cannot write ", path, ": ", std::strerror(errno));
}

void read_all(std::FILE* f, void* data, size_t bytes, const std::string& path) {
  const long at = std::ftell(f);
  if (bytes && std::fread(data, 1, bytes, f) != bytes)
    fail(path, ": file is truncated (wanted ", bytes, " bytes at offset ", at, ")");
}

}  // namespace gpt2
