#include "launch_ranks.hpp"

#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "backend.hpp"
#include "error.hpp"

namespace gpt2 {
namespace {

std::vector<pid_t> g_children;

// The ranks run in their own process group, so a terminal's Ctrl-C reaches only us and
// each rank gets it exactly once, from here (a second Ctrl-C then stops them at once).
void forward_signal(int sig) {
  for (pid_t p : g_children)
    if (p > 0) ::kill(p, sig);
}

// A socket already listening on a port the kernel chose, handed to rank 0 (which
// inherits it) through TRAIN_GPT2_LISTEN_FD: choosing a free port and letting rank 0 bind
// it later lost the race to other programs (seen on the GPU machine as "Address already
// in use").
struct Listener {
  int fd;
  int port;
};
Listener listen_on_free_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) fail("cannot create a socket for the ranks' rendezvous: ", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  const bool ok = ::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  ::getsockname(s, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
                  ::listen(s, 128) == 0;
  if (!ok) fail("cannot listen on a free port on 127.0.0.1: ", std::strerror(errno));
  return {s, ntohs(addr.sin_port)};
}

std::string describe(int status) {
  if (WIFEXITED(status)) return cat("exited with code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return cat("was killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)), ")");
  return "stopped";
}

}  // namespace

void launch_ranks(int n, const std::vector<std::string>& args, bool gpus) {
  const char* flag = gpus ? "--gpus" : "--ranks";
  for (const char* v : {"RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"})
    if (std::getenv(v) != nullptr)
      fail(flag, " ", n, " starts its own ranks, but ", v, " is set (this process is ",
           "already one rank of a launch): drop ", flag, ", or run train_gpt2 directly");
  if (gpus) {
    std::string why;
    const int have = cuda_device_count(&why);
    if (n > have)
      fail("--gpus ", n, " needs ", n, " GPUs, but this machine has ", have,
           have == 0 ? cat(" (", why, ")") : std::string(), ": pass --gpus ",
           have > 0 ? cat("1 to ", have) : std::string("only on a machine with GPUs"));
  }
  // CPU ranks share the cores instead of each starting a thread per core.
  const std::string threads = std::to_string(std::max(1u, std::thread::hardware_concurrency() / unsigned(n)));

  const std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  const Listener listener = listen_on_free_port();
  const std::string port = std::to_string(listener.port), listen_fd = std::to_string(listener.fd);
  std::vector<std::string> argv_s = {exe};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::fflush(stdout), std::fflush(stderr);  // or the children print our buffers again
  const pid_t parent = ::getpid();
  g_children.assign(n, 0);
  for (int r = 0; r < n; r++) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      forward_signal(SIGTERM);
      fail(flag, ": cannot start rank ", r, ": ", std::strerror(errno));
    }
    if (pid == 0) {
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // a killed launcher takes its ranks along
      if (::getppid() != parent) ::_exit(1);
      const std::string rank = std::to_string(r), world = std::to_string(n);
      ::setenv("RANK", rank.c_str(), 1);
      ::setenv("LOCAL_RANK", rank.c_str(), 1);
      ::setenv("WORLD_SIZE", world.c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", port.c_str(), 1);
      if (r == 0)
        ::setenv("TRAIN_GPT2_LISTEN_FD", listen_fd.c_str(), 1);
      else
        ::close(listener.fd);
      ::setenv("NCCL_NVLS_ENABLE", "0", 1);
      if (!gpus) ::setenv("OMP_NUM_THREADS", threads.c_str(), 0);
      ::execv(exe.c_str(), argv.data());
      std::fprintf(stderr, "error: %s: cannot run %s: %s\n", flag, exe.c_str(), std::strerror(errno));
      ::_exit(127);
    }
    g_children[r] = pid;
  }
  ::close(listener.fd);  // rank 0 holds it now
  struct sigaction forward{}, old_int{}, old_term{};
  forward.sa_handler = forward_signal;
  sigemptyset(&forward.sa_mask);
  ::sigaction(SIGINT, &forward, &old_int);
  ::sigaction(SIGTERM, &forward, &old_term);

  int failed_rank = -1, failed_status = 0, left = n;
  while (left > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    int r = 0;
    while (r < n && g_children[r] != pid) r++;
    if (r == n) continue;
    g_children[r] = 0;
    left--;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok && failed_rank < 0) {
      failed_rank = r, failed_status = status;
      // The others would wait for the failed rank inside NCCL forever.
      forward_signal(SIGTERM);
    }
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  if (failed_rank >= 0)
    fail("rank ", failed_rank, " of ", n, " ", describe(failed_status),
         " (its error is printed above); the other ranks were stopped");
}

}  // namespace gpt2
