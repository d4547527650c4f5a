// tests/hub/threadpool_review2_test.cpp — second adversarial review of hub/threadpool, hub::post,
// net/resolver and monkey's resolver hooks. Every case here failed on the code it was written against:
// a job can give its worker a hub (cogent::sleep/spawn on a worker are not refused), and a
// subprocess started from a job inherits the workers' blocked asynchronous signals.
#include <sys/wait.h>
#include <spawn.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/threadpool.hpp"
#include "hub/timeout.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;

}  // namespace

// ---- a job that calls back into cogent on a worker -----------------------------------------------

// threadpool.hpp: "Workers are plain threads with no hub"; threadpool.cpp: "A worker has no hub (and
// must not get one)"; monkey.hpp: thread-pool workers "get exactly libc". But nothing stops a job
// from calling cogent::sleep()/spawn(): hub::current() makes a hub on the worker, which then stays
// for every later job on that worker (monkey's enter() checks only for a hub, so later hooked calls
// on that worker cooperate with it; a task spawned by one job runs inside some later job's blocking
// call, or never).
COGENT_TEST_CASE("a job calling cogent::sleep on a worker is refused, or leaves the worker without a hub",
                 doctest::timeout(10)) {
  cogent::threadpool tp(1);
  bool refused = false;
  tp.run([&] {
    try {
      cogent::sleep(1ms);
    } catch (const cogent::hub_error&) {
      refused = true;
    }
  });
  bool has_hub = tp.run([] { return cogent::hub::current_if_exists() != nullptr; });
  CHECK_MESSAGE((refused || !has_hub), "the worker thread kept the hub a job created on it");
}

COGENT_TEST_CASE("a task spawned by a job on a worker is refused with hub_error, not silently never run",
                 doctest::timeout(10)) {
  std::atomic<bool> ran{false};
  bool refused = false;
  {
    cogent::threadpool tp(1);
    tp.run([&] {
      try {
        auto t = cogent::spawn([&] { ran = true; });
        (void)t;
      } catch (const cogent::hub_error&) {
        refused = true;
      }
    });
    tp.run([] {});  // the worker goes back to its queue: the task's hub never runs
    cogent::sleep(20ms);
  }
  CHECK_MESSAGE((refused || ran.load()), "spawn() on a worker succeeded and its task never ran");
}

// ---- signal masks leaking into subprocesses -------------------------------------------------------

namespace {
// sigblk_of_subprocess() starts `grep SigBlk /proc/self/status` with fork() + execvp() (the child
// inherits the calling thread's signal mask, as across exec) and returns grep's blocked mask.
// (posix_spawn() runs no fork handlers: threadpool.hpp tells jobs to pass the mask themselves.)
unsigned long long sigblk_of_subprocess() {
  int p[2];
  if (::pipe(p) != 0) {
    return ~0ull;
  }
  char* argv[] = {const_cast<char*>("grep"), const_cast<char*>("SigBlk"),
                  const_cast<char*>("/proc/self/status"), nullptr};
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(p[1], STDOUT_FILENO);
    ::close(p[0]);
    ::execvp("grep", argv);
    ::_exit(127);
  }
  int rc = pid < 0 ? -1 : 0;
  ::close(p[1]);
  std::string out;
  char buf[256];
  for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0;) {
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(p[0]);
  if (rc != 0) {
    return ~0ull;
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  unsigned long long mask = ~0ull;
  std::sscanf(out.c_str(), "SigBlk: %llx", &mask);
  return mask;
}
constexpr unsigned long long bit(int sig) {
  return 1ull << (sig - 1);
}
}  // namespace

// threadpool.hpp: workers are created "with every signal blocked but the synchronous ones". A
// signal mask survives fork() and exec(): a program started from a job (fork + exec: the classic
// blocking call one offloads to a thread pool) started with SIGTERM, SIGINT, SIGHUP, SIGALRM,
// SIGCHLD... blocked, so `kill <pid>`, Ctrl-C or its own alarm() never ended it. The same fork +
// exec from a plain std::thread starts the program with nothing blocked.
COGENT_TEST_CASE("a subprocess started from a threadpool job does not inherit blocked SIGTERM/SIGINT",
                 doctest::timeout(10)) {
  unsigned long long plain = ~0ull;
  std::thread([&] { plain = sigblk_of_subprocess(); }).join();
  REQUIRE(plain != ~0ull);
  REQUIRE((plain & (bit(SIGTERM) | bit(SIGINT))) == 0);  // baseline: libc outside the pool
  unsigned long long from_job = cogent::run_in_thread([] { return sigblk_of_subprocess(); });
  REQUIRE(from_job != ~0ull);
  CHECK_MESSAGE((from_job & bit(SIGTERM)) == 0, "SIGTERM blocked in the subprocess, SigBlk=", from_job);
  CHECK_MESSAGE((from_job & bit(SIGINT)) == 0, "SIGINT blocked in the subprocess, SigBlk=", from_job);
  CHECK_MESSAGE((from_job & bit(SIGALRM)) == 0, "SIGALRM blocked in the subprocess, SigBlk=", from_job);
}
