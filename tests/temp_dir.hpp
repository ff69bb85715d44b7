// A fresh directory under /tmp for one test, removed with everything in it at scope exit.
#pragma once
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

struct TempDir {
  std::string path;
  TempDir() {
    char name[] = "/tmp/train_gpt2_test_XXXXXX";
    path = mkdtemp(name);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// A file's whole contents ("" if it does not exist).
inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Waits (at most ~60 s) until a file another process writes has `lines` lines, e.g. a
// run's metrics.jsonl after that many steps.
inline void wait_for_lines(const std::string& path, long lines) {
  for (int i = 0; i < 1200; i++) {
    const std::string all = slurp(path);
    if (std::count(all.begin(), all.end(), '\n') >= lines) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}
