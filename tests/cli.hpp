// Runs the train_gpt2 that sits beside the test executable in the build folder, the
// way a user would, and captures what it printed.
#pragma once
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "catch.hpp"
#include "temp_dir.hpp"

struct CliRun {
  int status;           // as from waitpid: WIFEXITED / WEXITSTATUS / WIFSIGNALED
  std::string out, err;
  int exit_code() const { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }
};

inline std::string train_gpt2_path() {
  namespace fs = std::filesystem;
  const fs::path exe = fs::read_symlink("/proc/self/exe").parent_path() / "train_gpt2";
  REQUIRE(fs::exists(exe));
  return exe.string();
}

// `args` go through the shell; `input` is fed on stdin.
inline CliRun run_cli(const std::string& args, const std::string& input = "") {
  TempDir dir;
  std::ofstream(dir / "in", std::ios::binary) << input;
  const std::string cmd =
      train_gpt2_path() + " " + args + " < " + (dir / "in") + " 2> " + (dir / "err");
  CliRun r{};
  FILE* pipe = popen(cmd.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) r.out.append(buf, n);
  r.status = pclose(pipe);
  std::ifstream f(dir / "err", std::ios::binary);
  r.err.assign(std::istreambuf_iterator<char>(f), {});
  return r;
}
