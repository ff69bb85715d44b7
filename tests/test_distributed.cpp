// Launcher environment parsing and the TCP rendezvous, with real processes on loopback.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "distributed.hpp"
#include "error.hpp"

using gpt2::LaunchEnv;
using Catch::Contains;

namespace {

LaunchEnv env_of(const std::map<std::string, std::string>& vars) {
  return gpt2::launch_env_from([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

}  // namespace

TEST_CASE("no launcher variables means one process") {
  LaunchEnv e = env_of({{"MASTER_ADDR", "ignored"}});
  CHECK(e.launcher == "none");
  CHECK(e.rank == 0);
  CHECK(e.world_size == 1);
  CHECK(e.local_rank == 0);
}

TEST_CASE("torchrun variables") {
  LaunchEnv e = env_of({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"},
                        {"MASTER_ADDR", "10.0.0.7"}, {"MASTER_PORT", "1234"}});
  CHECK(e.launcher == "torchrun");
  CHECK(e.rank == 5);
  CHECK(e.world_size == 8);
  CHECK(e.local_rank == 1);
  CHECK(e.master_addr == "10.0.0.7");
  CHECK(e.master_port == 1234);
}

TEST_CASE("torchrun inside a SLURM allocation wins over SLURM's variables") {
  LaunchEnv e = env_of({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"},
                        {"MASTER_ADDR", "h"}, {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"},
                        {"SLURM_LOCALID", "0"}});
  CHECK(e.launcher == "torchrun");
  CHECK(e.rank == 1);
  CHECK(e.world_size == 2);
}

TEST_CASE("OpenMPI variables, default port") {
  LaunchEnv e = env_of({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                        {"OMPI_COMM_WORLD_LOCAL_RANK", "3"}, {"MASTER_ADDR", "node0"}});
  CHECK(e.launcher == "openmpi");
  CHECK(e.rank == 3);
  CHECK(e.world_size == 4);
  CHECK(e.local_rank == 3);
  CHECK(e.master_addr == "node0");
  CHECK(e.master_port == 29500);
}

TEST_CASE("SLURM variables: MASTER_ADDR, else the first plain host of SLURM_NODELIST") {
  std::map<std::string, std::string> vars = {{"SLURM_PROCID", "6"},
                                             {"SLURM_NTASKS", "16"},
                                             {"SLURM_LOCALID", "6"},
                                             {"SLURM_NODELIST", "gpu01,gpu02"}};
  LaunchEnv e = env_of(vars);
  CHECK(e.launcher == "slurm");
  CHECK(e.rank == 6);
  CHECK(e.world_size == 16);
  CHECK(e.local_rank == 6);
  CHECK(e.master_addr == "gpu01");

  vars["MASTER_ADDR"] = "head";
  vars["MASTER_PORT"] = "40000";
  e = env_of(vars);
  CHECK(e.master_addr == "head");
  CHECK(e.master_port == 40000);

  vars.erase("MASTER_ADDR");
  vars["SLURM_NODELIST"] = "gpu[01-02]";
  REQUIRE_THROWS_WITH(env_of(vars), Contains("SLURM_NODELIST='gpu[01-02]'") &&
                                        Contains("MASTER_ADDR"));
}

TEST_CASE("malformed launcher variables name the variable and its value") {
  using Vars = std::map<std::string, std::string>;
  const Vars good = {{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"},
                     {"MASTER_ADDR", "127.0.0.1"}};
  auto with = [&](const std::string& key, const std::string& value) {
    Vars v = good;
    v[key] = value;
    return v;
  };
  auto without = [&](const std::string& key) {
    Vars v = good;
    v.erase(key);
    return v;
  };
  REQUIRE_NOTHROW(env_of(good));
  CHECK_THROWS_WITH(env_of(with("RANK", "abc")), Contains("RANK='abc'"));
  CHECK_THROWS_WITH(env_of(with("RANK", "")), Contains("RANK=''"));
  CHECK_THROWS_WITH(env_of(with("WORLD_SIZE", "2 ")), Contains("WORLD_SIZE='2 '"));
  CHECK_THROWS_WITH(env_of(with("RANK", "2")),
                    Contains("RANK='2'") && Contains("WORLD_SIZE='2'"));
  CHECK_THROWS_WITH(env_of(with("RANK", "-1")), Contains("RANK='-1'"));
  CHECK_THROWS_WITH(env_of(with("LOCAL_RANK", "2")), Contains("LOCAL_RANK='2'"));
  CHECK_THROWS_WITH(env_of({{"RANK", "0"}, {"WORLD_SIZE", "0"}, {"LOCAL_RANK", "0"}}),
                    Contains("WORLD_SIZE='0'"));
  CHECK_THROWS_WITH(env_of(without("LOCAL_RANK")), Contains("LOCAL_RANK is not set"));
  CHECK_THROWS_WITH(env_of(without("WORLD_SIZE")), Contains("WORLD_SIZE is not set"));
  CHECK_THROWS_WITH(env_of(without("MASTER_ADDR")),
                    Contains("MASTER_ADDR is not set") && Contains("WORLD_SIZE='2'"));
  CHECK_THROWS_WITH(env_of(with("MASTER_PORT", "70000")), Contains("MASTER_PORT='70000'"));
  CHECK_THROWS_WITH(env_of(with("MASTER_PORT", "0")), Contains("MASTER_PORT='0'"));
  CHECK_THROWS_WITH(env_of(with("MASTER_PORT", "80x")), Contains("MASTER_PORT='80x'"));
  CHECK_THROWS_WITH(env_of({{"OMPI_COMM_WORLD_RANK", "x1"}, {"OMPI_COMM_WORLD_SIZE", "2"},
                            {"OMPI_COMM_WORLD_LOCAL_RANK", "0"}, {"MASTER_ADDR", "h"}}),
                    Contains("OMPI_COMM_WORLD_RANK='x1'"));
  // One process needs no master: launchers set RANK=0 WORLD_SIZE=1 without it.
  CHECK(env_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"LOCAL_RANK", "0"}}).world_size == 1);
}

namespace {

struct Outcome {
  bool ok = false;
  std::string text;  // the blob received, or the error message
};

struct Rank {
  int rank;
  uint64_t config_hash;
};

const std::vector<uint8_t> kBlob = [] {
  std::vector<uint8_t> b(128);  // the size of an ncclUniqueId
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i * 37 + 11);
  return b;
}();

// Ports from a range outside Linux's ephemeral range (32768-60999), so a concurrent
// test's outgoing connection cannot be sitting on it.
int random_port() {
  std::random_device rd;
  return std::uniform_int_distribution<int>(20000, 32000)(rd);
}

// Runs each rank in its own forked process on 127.0.0.1 and collects what each got.
std::vector<Outcome> run_ranks(const std::vector<Rank>& ranks, int world_size, double timeout_s) {
  const int port = random_port();
  std::vector<std::pair<pid_t, int>> children;
  for (const Rank& r : ranks) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(fds[0]);
      LaunchEnv env;
      env.rank = r.rank;
      env.world_size = world_size;
      env.master_addr = "127.0.0.1";
      env.master_port = port;
      env.launcher = "torchrun";
      // Rank 0 comes up last, so the peers' connect retries are exercised every time.
      if (r.rank == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      std::string report;
      try {
        // Peers pass a different blob: only rank 0's may come back.
        std::vector<uint8_t> mine = r.rank == 0 ? kBlob : std::vector<uint8_t>(128, 0);
        std::vector<uint8_t> got = gpt2::rendezvous(env, mine, r.config_hash, timeout_s);
        report = "O" + std::string(got.begin(), got.end());
      } catch (const std::exception& e) {
        report = std::string("E") + e.what();
      }
      ssize_t written = ::write(fds[1], report.data(), report.size());
      ::_exit(written == static_cast<ssize_t>(report.size()) ? 0 : 1);
    }
    ::close(fds[1]);
    children.push_back({pid, fds[0]});
  }
  std::vector<Outcome> outcomes;
  for (auto [pid, fd] : children) {
    std::string report;
    char buf[4096];
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) report.append(buf, n);
    ::close(fd);
    int status = 0;
    ::waitpid(pid, &status, 0);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
    REQUIRE(!report.empty());
    outcomes.push_back({report[0] == 'O', report.substr(1)});
  }
  return outcomes;
}

const std::string kBlobText(kBlob.begin(), kBlob.end());

}  // namespace

TEST_CASE("one process needs no rendezvous") {
  LaunchEnv single;
  CHECK(gpt2::rendezvous(single, kBlob, 7, 0.0) == kBlob);
}

TEST_CASE("two and three ranks all receive rank 0's blob") {
  for (int world : {2, 3}) {
    std::vector<Rank> ranks;
    for (int r = 0; r < world; ++r) ranks.push_back({r, 0xfeed});
    std::vector<Outcome> got = run_ranks(ranks, world, 5.0);
    for (int r = 0; r < world; ++r) {
      INFO("world " << world << ", rank " << r << ": " << got[r].text);
      CHECK(got[r].ok);
      CHECK(got[r].text == kBlobText);
    }
  }
}

TEST_CASE("a config hash mismatch fails every rank with the same message") {
  std::vector<Outcome> got = run_ranks({{0, 0xaa}, {1, 0xaa}, {2, 0xbb}}, 3, 5.0);
  for (const Outcome& o : got) {
    INFO(o.text);
    CHECK_FALSE(o.ok);
    CHECK(o.text ==
          "rank 2's config differs from rank 0's (hash 00000000000000bb vs 00000000000000aa):"
          " start every rank with the same config");
  }
}

TEST_CASE("a missing peer times out on rank 0 and on the peers that came") {
  auto start = std::chrono::steady_clock::now();
  std::vector<Outcome> got = run_ranks({{0, 1}, {1, 1}}, 3, 1.0);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(seconds < 3.0);
  for (const Outcome& o : got) {
    INFO(o.text);
    CHECK_FALSE(o.ok);
    CHECK_THAT(o.text, Contains("only 2 of 3 ranks arrived within 1 s") &&
                           Contains("missing rank 2"));
  }
}

TEST_CASE("a peer without rank 0 gives up after the timeout") {
  std::vector<Outcome> got = run_ranks({{1, 1}}, 2, 0.3);
  REQUIRE(got.size() == 1);
  CHECK_FALSE(got[0].ok);
  CHECK_THAT(got[0].text, Contains("rank 1 could not reach rank 0 at") &&
                              Contains("127.0.0.1:") && Contains("within 0.3 s"));
}

TEST_CASE("two processes claiming the same rank fail instead of hanging") {
  std::vector<Outcome> got = run_ranks({{0, 1}, {1, 1}, {1, 1}}, 3, 2.0);
  CHECK_FALSE(got[0].ok);
  CHECK_THAT(got[0].text, Contains("claiming rank 1"));
  for (const Outcome& o : got) CHECK_FALSE(o.ok);
}
