// tests/monkey/monkey_wait_test.cpp — waitpid/wait/wait3/wait4, system() and pclose() from fibers.
//
// A fiber that waits for a child must let the other fibers of its hub run (a ticker counts their
// turns during the wait: a call that went to libc blocks the thread, and the ticker does not run
// at all), get the child's status exactly as libc's call, and, when killed or timed out, come
// back -1/EINTR having reaped nothing (a plain waitpid afterwards still gets the child) and
// having closed its pidfd. Children are started with posix_spawn (no fork handlers, nothing of
// the hub in them); those that must not end before the test says so wait on a pipe ("read x").
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dirent.h>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "monkey/monkey.hpp"
#include "tests/monkey/children.hpp"
#include "tests/monkey/fibers.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

using result = cogent::test::call_result;
using cogent::test::since;
using cogent::test::spawn_sh;
using cogent::test::ticks_during;

using cogent::test::open_fds;

// fallback_write writes "go\n" to fd from a plain thread after 3 s unless destroyed first: if a
// wait went to libc and blocks the hub, the child it waits for ends all the same, so the test
// fails (the call returned the child) instead of hanging.
struct fallback_write {
  int fd;
  std::atomic<bool> done{false};
  std::thread t;
  explicit fallback_write(int fd_) : fd(fd_) {
    t = std::thread([this] {
      for (int i = 0; i < 300 && !done.load(); ++i) {
        std::this_thread::sleep_for(10ms);
      }
      if (!done.load()) {
        [[maybe_unused]] ssize_t n = ::write(fd, "go\n", 3);
      }
    });
  }
  ~fallback_write() {
    done = true;
    t.join();
  }
};

// A child that exits with `code` once told to (release()), not before: `sh -c "read x; exit code"`
// with its stdin on a pipe (and after 3 s if the hub is stuck: fallback_write). The destructor
// releases it and reaps it with libc's call (a plain std::thread) if the test did not.
struct held_child {
  int p[2] = {-1, -1};
  pid_t pid = -1;
  bool reaped = false;
  std::unique_ptr<fallback_write> fallback;
  explicit held_child(int code) {
    REQUIRE(::pipe(p) == 0);
    std::string cmd = "read x; exit " + std::to_string(code);
    pid = spawn_sh(cmd.c_str(), p[0]);
    fallback = std::make_unique<fallback_write>(p[1]);
  }
  void release() {
    fallback.reset();
    if (p[1] >= 0) {
      [[maybe_unused]] ssize_t n = ::write(p[1], "go\n", 3);
    }
  }
  // reap_libc() is libc's blocking waitpid on a plain thread: {pid, status}.
  std::pair<pid_t, int> reap_libc() {
    std::pair<pid_t, int> out{-2, 0};
    std::thread([&] { out.first = ::waitpid(pid, &out.second, 0); }).join();
    reaped = out.first == pid;
    return out;
  }
  // alive() is true if the child has not been reaped (nor exited): WNOHANG says 0.
  bool alive() {
    int st = 0;
    return ::waitpid(pid, &st, WNOHANG) == 0;
  }
  ~held_child() {
    release();
    if (!reaped) {
      reap_libc();
    }
    ::close(p[0]);
    ::close(p[1]);
  }
};

}  // namespace

// ---- the waits cooperate and return libc's status -------------------------------------------------

// The ticker ticks every 10 ms: ~20 times across a 200 ms wait. A waitpid that went to libc blocks
// the thread, and no other fiber runs until it returns: 0 ticks. The lower bound (3) is far from
// both, so a loaded machine does not make it fail.
COGENT_TEST_CASE(
    "wait: waitpid(pid) of a child that sleeps 200 ms lets other fibers run; status is its exit code",
    doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int fds0 = open_fds();
  pid_t pid = spawn_sh("sleep 0.2; exit 7");
  int st = -1;
  auto t0 = steady::now();
  auto [r, ticks] = ticks_during([&] { return ::waitpid(pid, &st, 0); });
  double took = since(t0);
  CHECK(r == pid);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 7);
  CHECK(ticks >= 3);
  CHECK(took >= 0.15);
  MESSAGE("waitpid(pid) of sleep 0.2: ", ticks, " ticks in ", took, " s");
  CHECK(open_fds() == fds0);  // the pidfd is closed
}

COGENT_TEST_CASE(
    "wait: waitpid(-1), wait(), wait3() and wait4() cooperate and return the child and its status",
    doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int fds0 = open_fds();
  // reaps(code, call): a child that sleeps 200 ms then exits `code`, waited for by call(&status).
  auto reaps = [](int code, auto call) {
    std::string cmd = "sleep 0.2; exit " + std::to_string(code);
    pid_t pid = spawn_sh(cmd.c_str());
    int st = -1;
    auto [r, ticks] = ticks_during([&] { return call(&st); });
    CHECK(r == pid);
    CHECK(WEXITSTATUS(st) == code);
    CHECK(ticks >= 3);
  };
  SUBCASE("waitpid(-1)") {
    reaps(11, [](int* st) { return ::waitpid(-1, st, 0); });
  }
  SUBCASE("waitpid(0): this process group") {
    reaps(12, [](int* st) { return ::waitpid(0, st, 0); });
  }
  SUBCASE("wait()") {
    reaps(13, [](int* st) { return ::wait(st); });
  }
  SUBCASE("wait3()") {
    reaps(14, [](int* st) {
      rusage ru{};
      return ::wait3(st, 0, &ru);
    });
  }
  SUBCASE("wait4(pid) with rusage, and a null status") {
    pid_t pid = spawn_sh("sleep 0.2; exit 15");
    rusage ru{};
    ru.ru_maxrss = -1;
    auto [r, ticks] = ticks_during([&] { return ::wait4(pid, nullptr, 0, &ru); });
    CHECK(r == pid);
    CHECK(ru.ru_maxrss > 0);  // filled in by the kernel
    CHECK(ticks >= 3);
  }
  SUBCASE("a child already exited: at once, without parking") {
    pid_t pid = spawn_sh("exit 16");
    siginfo_t si{};
    REQUIRE(::waitid(P_PID, static_cast<id_t>(pid), &si, WEXITED | WNOWAIT) == 0);  // a zombie now
    int st = -1;
    auto p = cogent::test::parks([&] { return ::waitpid(pid, &st, 0); });
    CHECK(p.result == pid);
    CHECK_FALSE(p.parked);
    CHECK(WEXITSTATUS(st) == 16);
  }
  CHECK(open_fds() == fds0);
}

// WUNTRACED: no pidfd tells a stop, so the wait polls (1 to 16 ms pauses); it still cooperates.
COGENT_TEST_CASE("wait: waitpid(pid, WUNTRACED) sees the child stop, cooperatively", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  pid_t pid = spawn_sh("sleep 0.2; kill -STOP $$; exit 1");
  int st = -1;
  auto [r, ticks] = ticks_during([&] { return ::waitpid(pid, &st, WUNTRACED); });
  CHECK(r == pid);
  CHECK(WIFSTOPPED(st));
  CHECK(WSTOPSIG(st) == SIGSTOP);
  CHECK(ticks >= 3);
  ::kill(pid, SIGKILL);
  st = -1;
  CHECK(::waitpid(pid, &st, 0) == pid);
  CHECK(WIFSIGNALED(st));
  CHECK(WTERMSIG(st) == SIGKILL);
}

// ---- what stays libc's ------------------------------------------------------------------------------

COGENT_TEST_CASE("wait: WNOHANG is libc's and never parks; ECHILD and EINVAL are libc's",
                 doctest::timeout(20)) {
  cogent::monkey::patch_all();
  {
    held_child ch(3);
    int st = -1;
    auto p = cogent::test::parks([&] { return ::waitpid(ch.pid, &st, WNOHANG); });
    CHECK(p.result == 0);
    CHECK_FALSE(p.parked);
    CHECK(st == -1);  // not written
    p = cogent::test::parks([&] { return ::wait4(-1, &st, WNOHANG, nullptr); });
    CHECK(p.result == 0);
    CHECK_FALSE(p.parked);
    ch.release();
    // libc's WNOHANG loop, on a child that exits once released.
    pid_t r = 0;
    auto t0 = steady::now();
    while ((r = ::waitpid(ch.pid, &st, WNOHANG)) == 0 && since(t0) < 5) {
      cogent::sleep(1ms);
    }
    CHECK(r == ch.pid);
    CHECK(WEXITSTATUS(st) == 3);
    ch.reaped = true;
  }
  // No child at all (every one above is reaped): ECHILD at once, as libc's.
  auto libc = cogent::test::libc_result([] { return ::waitpid(-1, nullptr, 0); });
  CHECK(libc == result{-1, ECHILD});
  CHECK(cogent::test::here_result([] { return ::waitpid(-1, nullptr, 0); }) == libc);
  CHECK(cogent::test::here_result([] { return ::wait(nullptr); }) == libc);
  CHECK(cogent::test::here_result([] { return ::wait3(nullptr, 0, nullptr); }) == libc);
  // A pid that is not our child (init), and one that does not exist.
  CHECK(cogent::test::here_result([] { return ::waitpid(1, nullptr, 0); }) == result{-1, ECHILD});
  CHECK(cogent::test::here_result([] { return ::wait4(1, nullptr, 0, nullptr); }) == result{-1, ECHILD});
  // Bad options: EINVAL, as libc's.
  auto bad = cogent::test::libc_result([] { return ::waitpid(-1, nullptr, 0x4000); });
  CHECK(bad == result{-1, EINVAL});
  CHECK(cogent::test::here_result([] { return ::waitpid(-1, nullptr, 0x4000); }) == bad);
  // errno is the caller's after a wait that parked and succeeded.
  pid_t pid = spawn_sh("sleep 0.05; exit 2");
  errno = 1234;
  int st = -1;
  CHECK(::waitpid(pid, &st, 0) == pid);
  CHECK(errno == 1234);
}

COGENT_TEST_CASE("wait: on a plain std::thread and in the hub fiber the waits are libc's",
                 doctest::timeout(20)) {
  cogent::monkey::patch_all();
  {
    pid_t pid = spawn_sh("sleep 0.1; exit 21");
    int st = -1;
    pid_t r = -2;
    std::thread([&] { r = ::waitpid(pid, &st, 0); }).join();
    CHECK(r == pid);
    CHECK(WEXITSTATUS(st) == 21);
  }
  {
    pid_t pid = spawn_sh("sleep 0.1; exit 22");
    int st = -1;
    pid_t r = -2;
    std::thread([&] { r = ::wait(&st); }).join();
    CHECK(r == pid);
    CHECK(WEXITSTATUS(st) == 22);
  }
  {
    // In the hub (a post() callback) a wait never parks: libc's. A zombie, so it does not block.
    pid_t pid = spawn_sh("exit 23");
    siginfo_t si{};
    REQUIRE(::waitid(P_PID, static_cast<id_t>(pid), &si, WEXITED | WNOWAIT) == 0);
    int st = -1;
    pid_t r = -2;
    cogent::test::in_hub([&] { r = ::waitpid(pid, &st, 0); });
    CHECK(r == pid);
    CHECK(WEXITSTATUS(st) == 23);
  }
  {
    int st = -1;
    std::thread([&] { CHECK(::system("exit 24") == 24 << 8); }).join();
    FILE* f = nullptr;
    std::thread([&] {
      f = ::popen("exit 25", "r");
      st = f != nullptr ? ::pclose(f) : -2;
    }).join();
    CHECK(st == 25 << 8);
  }
}

// ---- kill and Timeout ------------------------------------------------------------------------------

// A kill or a Timeout during a waiting waitpid: -1/EINTR, the interrupt raised at the next switch
// point, nothing reaped (the child, released afterwards, is reaped by libc's waitpid with its
// status) and no fd left open (the pidfd). Both ways: a pid (the pidfd wait) and -1 (the pauses).
COGENT_TEST_CASE("wait: a kill during waitpid gives EINTR, reaps nothing and leaks no fd",
                 doctest::timeout(20)) {
  cogent::monkey::patch_all();
  for (pid_t which : {pid_t{1}, pid_t{-1}}) {
    CAPTURE(which);
    int fds0 = open_fds();
    held_child ch(5);
    result got{-2, 0};
    int st = -1;
    std::atomic<bool> started{false}, after{false};
    auto t = cogent::spawn([&] {
      started = true;
      got = cogent::test::here_result([&] { return ::waitpid(which > 0 ? ch.pid : -1, &st, 0); });
      cogent::sleep(1ms);  // the pending kill is raised here
      after = true;
    });
    while (!started) {
      cogent::sleep(1ms);
    }
    cogent::sleep(50ms);  // it waits
    CHECK(ch.alive());
    auto t0 = steady::now();
    t.kill();
    CHECK(since(t0) < 1.0);
    CHECK(got == result{-1, EINTR});
    CHECK(st == -1);
    CHECK_FALSE(after.load());
    CHECK(t.successful());
    CHECK(ch.alive());              // not reaped
    CHECK(open_fds() == fds0 + 2);  // the held child's pipe only
    ch.release();
    auto [r, status] = ch.reap_libc();
    CHECK(r == ch.pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 5);
  }
}

COGENT_TEST_CASE("wait: a Timeout during waitpid or wait gives EINTR, then raises; the child stays waitable",
                 doctest::timeout(20)) {
  cogent::monkey::patch_all();
  for (int which = 0; which < 3; ++which) {
    CAPTURE(which);
    int fds0 = open_fds();
    held_child ch(6);
    result got{-2, 0};
    int st = -1;
    bool raised = false;
    auto t0 = steady::now();
    try {
      cogent::timeout guard(100ms);
      got = cogent::test::here_result([&] {
        if (which == 0) {
          return ::waitpid(ch.pid, &st, 0);
        }
        if (which == 1) {
          return ::wait(&st);
        }
        return ::wait4(ch.pid, &st, 0, nullptr);
      });
      cogent::yield();
    } catch (const cogent::timeout_error&) {
      raised = true;
    }
    CHECK(raised);
    CHECK(got == result{-1, EINTR});
    CHECK(st == -1);
    CHECK(since(t0) < 2.0);
    CHECK(ch.alive());
    CHECK(open_fds() == fds0 + 2);
    ch.release();
    auto [r, status] = ch.reap_libc();
    CHECK(r == ch.pid);
    CHECK(WEXITSTATUS(status) == 6);
  }
}

// A second wait while the interrupt is still pending (C code looping on EINTR) does not block:
// ECANCELED (monkey.hpp); a child that is already there is returned all the same.
COGENT_TEST_CASE("wait: a retry with the interrupt pending fails at once", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  held_child ch(8);
  std::vector<result> got;
  auto t = cogent::spawn([&] {
    for (int i = 0; i < 3; ++i) {
      got.push_back(cogent::test::here_result([&] { return ::waitpid(ch.pid, nullptr, 0); }));
    }
    cogent::sleep(1ms);
  });
  cogent::sleep(50ms);
  t.kill();
  REQUIRE(got.size() == 3);
  CHECK(got[0] == result{-1, EINTR});
  CHECK(got[1] == result{-1, ECANCELED});
  CHECK(got[2] == result{-1, ECANCELED});
  CHECK(ch.alive());
}

// ---- system() and pclose() ---------------------------------------------------------------------------

COGENT_TEST_CASE("wait: system() runs on the thread pool: other fibers run; its status is libc's",
                 doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int fds0 = open_fds();
  auto [r, ticks] = ticks_during([] { return ::system("sleep 0.2; exit 3"); });
  CHECK(WIFEXITED(r));
  CHECK(WEXITSTATUS(r) == 3);
  CHECK(ticks >= 3);
  CHECK(::system("exit 3") == 3 << 8);
  CHECK(::system(nullptr) != 0);  // a shell exists
  // The shell starts with this thread's signal mask, as from libc (a worker's blocks SIGTERM).
  int libc = -1;
  std::thread([&] { libc = ::system("kill -TERM $$; exit 9"); }).join();
  CHECK(WIFSIGNALED(libc));
  CHECK(WTERMSIG(libc) == SIGTERM);
  CHECK(::system("kill -TERM $$; exit 9") == libc);
  // SIGINT: the command gets it back at its default (glibc's system() ignores it meanwhile).
  std::thread([&] { libc = ::system("kill -INT $$; exit 9"); }).join();
  CHECK(WIFSIGNALED(libc));
  CHECK(::system("kill -INT $$; exit 9") == libc);
  CHECK(open_fds() == fds0);
}

// A kill while system() runs waits for the command (a thread-pool job cannot be cancelled; it
// runs to its end, as getaddrinfo's does): system() returns the command's status, and the kill is
// raised at the fiber's next switch point. With the kill pending at entry the command never runs.
COGENT_TEST_CASE("wait: a kill during system() waits for the command, which ran to its end",
                 doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int p[2];
  REQUIRE(::pipe(p) == 0);
  std::string cmd = "read x <&" + std::to_string(p[0]) + "; exit 4";
  int got = -2;
  std::atomic<bool> after{false};
  auto fallback = std::make_unique<fallback_write>(p[1]);
  auto t = cogent::spawn([&] {
    got = ::system(cmd.c_str());
    cogent::sleep(1ms);
    after = true;
  });
  cogent::sleep(100ms);
  t.kill(nullptr, false);
  cogent::sleep(20ms);
  CHECK(got == -2);  // still in system(): the command waits on the pipe
  CHECK_FALSE(t.ready());
  fallback.reset();
  REQUIRE(::write(p[1], "go\n", 3) == 3);
  t.join();
  CHECK(got == 4 << 8);
  CHECK_FALSE(after.load());
  CHECK(t.successful());
  ::close(p[0]);
  ::close(p[1]);
}

// With an interrupt already pending (a waitpid that a kill ended, retried by C code that loops on
// EINTR), system() does not run the command (ECANCELED, as every hooked call's retry), but pclose()
// still closes the stream and reaps the child, in place: failing would leave both behind.
COGENT_TEST_CASE("wait: with a kill pending, system() fails at once and pclose() still closes",
                 doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int fds0 = open_fds();
  FILE* f = ::popen("exit 6", "r");
  REQUIRE(f != nullptr);
  std::vector<result> got;
  {
    held_child ch(1);
    auto t = cogent::spawn([&] {
      got.push_back(cogent::test::here_result([&] { return ::waitpid(ch.pid, nullptr, 0); }));
      got.push_back(cogent::test::here_result([&] { return ::system("exit 5"); }));
      got.push_back(cogent::test::here_result([&] { return ::pclose(f); }));
      cogent::sleep(1ms);
    });
    cogent::sleep(50ms);
    t.kill();
    CHECK(t.successful());
  }
  REQUIRE(got.size() == 3);
  CHECK(got[0] == result{-1, EINTR});
  CHECK(got[1] == result{-1, ECANCELED});
  CHECK(got[2] == result{6 << 8, 0});
  CHECK(open_fds() == fds0);
}

COGENT_TEST_CASE("wait: pclose() waits for the child on the thread pool; read(fileno()) of popen cooperates",
                 doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int fds0 = open_fds();
  {
    FILE* f = ::popen("exit 6", "r");
    REQUIRE(f != nullptr);
    CHECK(::pclose(f) == 6 << 8);
  }
  {
    FILE* f = ::popen("sleep 0.2; exit 7", "r");
    REQUIRE(f != nullptr);
    auto [r, ticks] = ticks_during([&] { return ::pclose(f); });
    CHECK(r == 7 << 8);
    CHECK(ticks >= 3);
  }
  {
    // stdio reads of the pipe are glibc's own (they block the thread); read() of its fd is hooked.
    FILE* f = ::popen("sleep 0.2; echo hi", "r");
    REQUIRE(f != nullptr);
    char buf[8] = {};
    auto [n, ticks] = ticks_during([&] { return ::read(fileno(f), buf, sizeof buf); });
    CHECK(n == 3);
    CHECK(std::string(buf) == "hi\n");
    CHECK(ticks >= 3);
    CHECK(::pclose(f) == 0);
  }
  CHECK(open_fds() == fds0);
}
