// tests/child.hpp — run a test scenario in a fork()ed child and collect how it ended.
//
// For what cannot run in the test process itself: an expected abort (stack
// overflow reports), a process-wide setting (a seccomp filter, a hub configured
// before it exists), or a report printed on stderr.
#pragma once

#include <doctest/doctest.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>

namespace cogent::test {

// child_result is how a fork()ed child ended and what it wrote on stderr.
struct child_result {
  int status = 0;
  std::string err;
  bool exited(int code) const { return WIFEXITED(status) && WEXITSTATUS(status) == code; }
};

// child_setup_failed is the exit code of a child that could not set up its scenario.
inline constexpr int child_setup_failed = 3;

// limit_address_space() caps this (child) process's address space at what it
// maps now plus `extra_kib`, so the next large mapping (a 1 GiB fiber stack)
// fails. Exits the child with child_setup_failed if it cannot.
inline void limit_address_space(long extra_kib) {
  long vm_kb = 0;
  if (FILE* f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    while (std::fgets(line, sizeof line, f) != nullptr) {
      if (std::sscanf(line, "VmSize: %ld", &vm_kb) == 1) {
        break;
      }
    }
    std::fclose(f);
  }
  rlimit rl{};
  rl.rlim_cur = rl.rlim_max = static_cast<rlim_t>(vm_kb + extra_kib) * 1024;
  if (vm_kb == 0 || ::setrlimit(RLIMIT_AS, &rl) != 0) {
    ::_exit(child_setup_failed);
  }
}

// run_in_child() forks, runs body() in the child with stderr captured, and
// waits for it. The child exits 0 if body() returns; SIGABRT takes its default
// action there (doctest's crash handler would otherwise report the expected
// abort as a failure).
template <class Body>
child_result run_in_child(Body&& body) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  std::fflush(nullptr);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    ::dup2(fds[1], STDERR_FILENO);
    ::close(fds[1]);
    std::signal(SIGABRT, SIG_DFL);
    body();
    std::fflush(nullptr);
    ::_exit(0);
  }
  ::close(fds[1]);
  child_result r;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) {
    r.err.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  REQUIRE(::waitpid(pid, &r.status, 0) == pid);
  return r;
}

// exit_code_in_child() forks; the child (crash handlers reset, bounded by alarm(seconds)) runs
// fn() and _exit()s with the int it returns (98 if it threw). The parent waits with a plain
// waitpid (not through the hub) and returns the exit code, or -signal if the child was killed
// by one (SIGALRM: it hung).
template <class Fn>
int exit_code_in_child(Fn fn, unsigned seconds = 2) {
  std::fflush(nullptr);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    for (int s : {SIGSEGV, SIGABRT, SIGBUS, SIGALRM}) {
      std::signal(s, SIG_DFL);
    }
    ::alarm(seconds);
    int code = 99;
    try {
      code = fn();
    } catch (...) {
      code = 98;
    }
    ::_exit(code);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

// in_fresh_thread_child() is exit_code_in_child() with fn() run on a new thread of the child (a
// fresh hub: the test process's own hub cannot be used in a fork child), which _exit()s with the
// int fn returns (96 if it threw) — no thread-exit teardown of fibers a test may leave stranded.
template <class Fn>
int in_fresh_thread_child(Fn fn, unsigned seconds = 3) {
  return exit_code_in_child(
      [&] {
        int code = 97;
        std::thread th([&] {
          try {
            code = fn();
          } catch (...) {
            code = 96;
          }
          std::fflush(nullptr);
          ::_exit(code);
        });
        th.join();
        return code;
      },
      seconds);
}

}  // namespace cogent::test
