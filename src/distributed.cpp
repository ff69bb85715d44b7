#include "distributed.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <thread>
#include <utility>

#include "error.hpp"

namespace gpt2 {
namespace {

using Getenv = std::function<const char*(const char*)>;

struct LauncherVars {
  const char* launcher;
  const char* rank;
  const char* size;
  const char* local_rank;
};

// The order is the precedence: torchrun under SLURM (srun torchrun ...) sets both, and
// then torchrun's per-process values are the right ones.
constexpr LauncherVars kLaunchers[] = {
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
    {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
};

constexpr int kDefaultMasterPort = 29500;  // torchrun's default, so plain launches agree

int env_int(const Getenv& getenv, const char* name, const LauncherVars& l) {
  const char* value = getenv(name);
  if (value == nullptr)
    fail("environment variable ", name, " is not set although ", l.rank, " or ", l.size,
         " is (", l.launcher, " launch): set all of ", l.rank, ", ", l.size, " and ",
         l.local_rank, ", or none of them");
  std::string_view s(value);
  int out = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size())
    fail("environment variable ", name, "='", value, "' is not a whole number (", l.launcher,
         " launch): set it to a whole number such as 0");
  return out;
}

// Only a plain first entry ("gpu01,gpu02") can be used as is; a compressed range
// ("gpu[01-04]") needs scontrol to expand, which we don't shell out to.
std::string slurm_first_host(const std::string& nodelist) {
  std::string first = nodelist.substr(0, nodelist.find(','));
  if (first.empty() || first.find_first_of("[]") != std::string::npos)
    fail("MASTER_ADDR is not set and SLURM_NODELIST='", nodelist,
         "' does not start with a plain host name: export MASTER_ADDR=$(scontrol show "
         "hostnames \"$SLURM_NODELIST\" | head -n1) before srun");
  return first;
}

std::string hex64(uint64_t v) {
  char buf[19];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

LaunchEnv launch_env_from(const Getenv& getenv) {
  LaunchEnv env;
  const LauncherVars* found = nullptr;
  for (const LauncherVars& l : kLaunchers)
    if (getenv(l.rank) != nullptr || getenv(l.size) != nullptr) {
      found = &l;
      break;
    }
  if (found == nullptr) return env;
  const LauncherVars& l = *found;
  env.launcher = l.launcher;
  env.world_size = env_int(getenv, l.size, l);
  env.rank = env_int(getenv, l.rank, l);
  env.local_rank = env_int(getenv, l.local_rank, l);
  if (env.world_size < 1)
    fail("environment variable ", l.size, "='", env.world_size, "' (", l.launcher,
         " launch) must be at least 1");
  if (env.rank < 0 || env.rank >= env.world_size)
    fail("environment variable ", l.rank, "='", env.rank, "' is not below ", l.size, "='",
         env.world_size, "' (", l.launcher, " launch): ranks run from 0 to ",
         env.world_size - 1);
  if (env.local_rank < 0 || env.local_rank >= env.world_size)
    fail("environment variable ", l.local_rank, "='", env.local_rank, "' is not below ",
         l.size, "='", env.world_size, "' (", l.launcher,
         " launch): it is this process's GPU index on its node");

  if (const char* addr = getenv("MASTER_ADDR"); addr != nullptr && *addr != '\0')
    env.master_addr = addr;
  else if (const char* nodes = getenv("SLURM_NODELIST");
           env.launcher == "slurm" && env.world_size > 1 && nodes != nullptr)
    env.master_addr = slurm_first_host(nodes);
  if (env.world_size > 1 && env.master_addr.empty())
    fail("environment variable MASTER_ADDR is not set but ", l.size, "='", env.world_size,
         "' (", l.launcher, " launch): set MASTER_ADDR to rank 0's host name or address");

  env.master_port = kDefaultMasterPort;
  if (const char* port = getenv("MASTER_PORT"); port != nullptr) {
    std::string_view s(port);
    int p = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), p);
    if (s.empty() || ec != std::errc() || end != s.data() + s.size() || p < 1 || p > 65535)
      fail("environment variable MASTER_PORT='", port,
           "' is not a TCP port: set it to a free port between 1024 and 65535");
    env.master_port = p;
  }
  return env;
}

namespace {

using Clock = std::chrono::steady_clock;

class Socket {
 public:
  explicit Socket(int fd = -1) : fd_(fd) {}
  Socket(Socket&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Socket& operator=(Socket&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }
  bool open() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// Waits for `events` on fd until the deadline; false on timeout.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) fail("rendezvous: poll failed: ", std::strerror(errno));
  }
}

void send_all(int fd, const void* data, size_t n, const std::string& context) {
  const uint8_t* bytes = static_cast<const uint8_t*>(data);
  size_t done = 0;
  while (done < n) {
    ssize_t sent = ::send(fd, bytes + done, n - done, MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent <= 0) fail(context, ": send failed: ", std::strerror(errno));
    done += static_cast<size_t>(sent);
  }
}
void send_all(int fd, const std::vector<uint8_t>& bytes, const std::string& context) {
  send_all(fd, bytes.data(), bytes.size(), context);
}

// Reads exactly n bytes into out; throws naming `context` on timeout or when the other
// side hangs up.
void recv_into(int fd, void* out, size_t n, Clock::time_point deadline,
               const std::string& context) {
  uint8_t* bytes = static_cast<uint8_t*>(out);
  size_t done = 0;
  while (done < n) {
    if (!wait_for(fd, POLLIN, deadline)) fail(context, ": timed out");
    ssize_t got = ::recv(fd, bytes + done, n - done, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) fail(context, ": ", std::strerror(errno));
    if (got == 0) fail(context, ": connection closed");
    done += static_cast<size_t>(got);
  }
}
std::vector<uint8_t> recv_exact(int fd, size_t n, Clock::time_point deadline,
                                const std::string& context) {
  std::vector<uint8_t> out(n);
  recv_into(fd, out.data(), n, deadline, context);
  return out;
}

// Wire format, little-endian. Hello (peer -> rank 0): magic u32, rank u32, config hash
// u64. Reply (rank 0 -> peer): status u8 (0 = blob follows, 1 = error message follows),
// length u32, payload.
constexpr uint32_t kMagic = 0x47505431;  // "GPT1"
constexpr size_t kHelloBytes = 16;
constexpr uint32_t kMaxPayload = 1 << 20;

void put(std::vector<uint8_t>& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

uint64_t get(const std::vector<uint8_t>& in, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{in[at + i]} << (8 * i);
  return v;
}

std::vector<uint8_t> reply(bool ok, const std::vector<uint8_t>& payload) {
  std::vector<uint8_t> out;
  out.push_back(ok ? 0 : 1);
  put(out, payload.size(), 4);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

Socket listen_on(int port) {
  // `train --gpus N` / `--ranks N` bound and listens on the port already (launch_ranks.cpp).
  if (const char* fd = std::getenv("TRAIN_GPT2_LISTEN_FD")) {
    Socket inherited(std::atoi(fd));
    ::unsetenv("TRAIN_GPT2_LISTEN_FD");
    return inherited;
  }
  Socket s(::socket(AF_INET, SOCK_STREAM, 0));
  if (!s.open()) fail("rank 0: cannot create a socket: ", std::strerror(errno));
  // A restarted job reuses the port while the last run's connections sit in TIME_WAIT.
  int one = 1;
  ::setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(s.fd(), 128) != 0)
    fail("rank 0 cannot listen on MASTER_PORT=", port, ": ", std::strerror(errno),
         ": set MASTER_PORT to a free port");
  return s;
}

std::vector<uint8_t> serve(const LaunchEnv& env, const std::vector<uint8_t>& blob,
                           uint64_t config_hash, double timeout_s, std::vector<Socket>* keep) {
  if (blob.size() > kMaxPayload)
    fail("rendezvous: rank 0's blob is ", blob.size(), " bytes, more than ", kMaxPayload);
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(timeout_s));
  Socket listener = listen_on(env.master_port);
  std::vector<Socket> peers(env.world_size);
  std::vector<uint64_t> hashes(env.world_size, config_hash);
  int arrived = 1;
  std::string problem;
  while (arrived < env.world_size && problem.empty()) {
    if (!wait_for(listener.fd(), POLLIN, deadline)) break;
    Socket conn(::accept(listener.fd(), nullptr, nullptr));
    if (!conn.open()) continue;
    std::vector<uint8_t> hello;
    try {
      hello = recv_exact(conn.fd(), kHelloBytes, deadline, "rank 0 reading a peer's hello");
    } catch (const Error&) {
      continue;  // a peer that died mid-hello retries or is reported missing below
    }
    if (get(hello, 0, 4) != kMagic) continue;  // not one of ours (e.g. a port scanner)
    uint64_t rank = get(hello, 4, 4);
    if (rank == 0 || rank >= static_cast<uint64_t>(env.world_size) || peers[rank].open()) {
      problem = cat("rank 0 got a peer claiming rank ", rank, " (world size ", env.world_size,
                    "): give every process a distinct rank between 1 and ",
                    env.world_size - 1);
      break;
    }
    hashes[rank] = get(hello, 8, 8);
    peers[rank] = std::move(conn);
    ++arrived;
  }
  if (problem.empty() && arrived < env.world_size) {
    std::string missing;
    for (int r = 1; r < env.world_size; ++r)
      if (!peers[r].open()) missing += cat(missing.empty() ? "" : ", ", r);
    problem = cat("rendezvous on port ", env.master_port, ": only ", arrived, " of ",
                  env.world_size, " ranks arrived within ", timeout_s, " s (missing rank ",
                  missing, "): start every rank and point MASTER_ADDR/MASTER_PORT at rank 0");
  }
  for (int r = 1; r < env.world_size && problem.empty(); ++r)
    if (hashes[r] != config_hash)
      problem = cat("rank ", r, "'s config differs from rank 0's (hash ", hex64(hashes[r]),
                    " vs ", hex64(config_hash), "): start every rank with the same config");
  const std::vector<uint8_t> message = problem.empty()
                                           ? reply(true, blob)
                                           : reply(false, {problem.begin(), problem.end()});
  for (int r = 1; r < env.world_size; ++r) {
    if (!peers[r].open()) continue;
    if (problem.empty()) {
      send_all(peers[r].fd(), message, cat("rank 0 sending the blob to rank ", r));
    } else {
      try {
        send_all(peers[r].fd(), message, "");
      } catch (const Error&) {
        // Best effort: the peer that hung up already failed; rank 0 reports `problem`.
      }
    }
  }
  if (!problem.empty()) fail(problem);
  if (keep) *keep = std::move(peers);
  return blob;
}

// Non-blocking connect, so an unreachable host costs at most the time left, not the
// kernel's two-minute SYN timeout. Returns a closed Socket and sets `error` on failure.
Socket try_connect(const addrinfo* ai, Clock::time_point deadline, std::string& error) {
  Socket s(::socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol));
  if (!s.open()) {
    error = std::strerror(errno);
    return Socket();
  }
  int flags = ::fcntl(s.fd(), F_GETFL, 0);
  ::fcntl(s.fd(), F_SETFL, flags | O_NONBLOCK);
  int rc = ::connect(s.fd(), ai->ai_addr, ai->ai_addrlen);
  if (rc != 0 && errno != EINPROGRESS) {
    error = std::strerror(errno);
    return Socket();
  }
  if (rc != 0) {
    if (!wait_for(s.fd(), POLLOUT, deadline)) {
      error = "connect timed out";
      return Socket();
    }
    int so_error = 0;
    socklen_t len = sizeof so_error;
    ::getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &so_error, &len);
    if (so_error != 0) {
      error = std::strerror(so_error);
      return Socket();
    }
  }
  ::fcntl(s.fd(), F_SETFL, flags);
  return s;
}

std::vector<uint8_t> join(const LaunchEnv& env, uint64_t config_hash, double timeout_s,
                          Socket* keep) {
  const auto timeout = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(timeout_s));
  const auto deadline = Clock::now() + timeout;
  const std::string where = cat(env.master_addr, ":", env.master_port);
  const std::string port = std::to_string(env.master_port);
  std::string error = "no attempt";
  Socket s;
  // Rank 0 may start later than us, so refused connections are retried until the deadline.
  while (!s.open() && Clock::now() < deadline) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    int gai = ::getaddrinfo(env.master_addr.c_str(), port.c_str(), &hints, &found);
    if (gai != 0) {
      error = ::gai_strerror(gai);
    } else {
      for (addrinfo* ai = found; ai != nullptr && !s.open(); ai = ai->ai_next)
        s = try_connect(ai, deadline, error);
      ::freeaddrinfo(found);
    }
    if (!s.open()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!s.open())
    fail("rank ", env.rank, " could not reach rank 0 at MASTER_ADDR:MASTER_PORT=", where,
         " within ", timeout_s, " s (", error,
         "): check that rank 0 is running and MASTER_ADDR/MASTER_PORT point at it");

  std::vector<uint8_t> hello;
  put(hello, kMagic, 4);
  put(hello, static_cast<uint64_t>(env.rank), 4);
  put(hello, config_hash, 8);
  const std::string context = cat("rank ", env.rank, " waiting for rank 0 at ", where);
  send_all(s.fd(), hello, context);
  // Rank 0 was already listening when we connected, so it answers within its own timeout
  // from now; the extra second covers the two clocks' start-up skew.
  const auto reply_deadline = Clock::now() + timeout + std::chrono::seconds(1);
  std::vector<uint8_t> head;
  try {
    head = recv_exact(s.fd(), 5, reply_deadline, context);
  } catch (const Error& e) {
    fail(e.what(), " (rank 0 failed before answering; its log says why)");
  }
  const uint64_t length = get(head, 1, 4);
  if (head[0] > 1 || length > kMaxPayload)
    fail(context, ": malformed reply (status ", int{head[0]}, ", length ", length,
         "): is MASTER_PORT used by another program?");
  std::vector<uint8_t> payload = recv_exact(s.fd(), length, reply_deadline, context);
  if (head[0] == 1) fail(std::string(payload.begin(), payload.end()));
  if (keep) *keep = std::move(s);
  return payload;
}

}  // namespace

std::vector<uint8_t> rendezvous(const LaunchEnv& env, const std::vector<uint8_t>& blob_from_rank0,
                                uint64_t config_hash, double timeout_s) {
  if (env.world_size == 1) return blob_from_rank0;
  return env.rank == 0 ? serve(env, blob_from_rank0, config_hash, timeout_s, nullptr)
                       : join(env, config_hash, timeout_s, nullptr);
}

RankLinks::~RankLinks() {
  for (int fd : fds_)
    if (fd >= 0) ::close(fd);
}

int RankLinks::link(int peer) const {
  const int fd = peer >= 0 && size_t(peer) < fds_.size() ? fds_[peer] : -1;
  if (fd < 0) fail("internal: rank ", rank_, " has no link to rank ", peer);
  return fd;
}

void RankLinks::send(int peer, const void* data, size_t bytes) {
  send_all(link(peer), data, bytes,
           cat("rank ", rank_, " sending to rank ", peer, " (did it stop? its log says why)"));
}

void RankLinks::recv(int peer, void* data, size_t bytes) {
  // Ranks do the same work between collectives, so a long wait means a stuck rank.
  const auto deadline = Clock::now() + std::chrono::minutes(10);
  recv_into(link(peer), data, bytes, deadline,
            cat("rank ", rank_, " waiting for rank ", peer, " (did it stop? its log says why)"));
}

std::unique_ptr<RankLinks> connect_ranks(const LaunchEnv& env, uint64_t config_hash,
                                         double timeout_s) {
  auto links = std::unique_ptr<RankLinks>(new RankLinks(env.rank, env.world_size));
  if (env.world_size == 1) return links;
  if (env.rank == 0) {
    std::vector<Socket> peers;
    serve(env, {}, config_hash, timeout_s, &peers);
    for (int r = 1; r < env.world_size; r++) links->fds_[r] = peers[r].release();
  } else {
    Socket root;
    join(env, config_hash, timeout_s, &root);
    links->fds_[0] = root.release();
  }
  // Collectives are request-reply; Nagle's algorithm would hold each small message back
  // until the last one is acknowledged (tens of ms per round trip).
  int one = 1;
  for (int fd : links->fds_)
    if (fd >= 0) ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return links;
}

}  // namespace gpt2
