// tests/monkey/children.hpp — helpers of the child-process hook tests (monkey_wait*_test.cpp):
// spawn_sh() starts a shell command with posix_spawn (no fork handlers, nothing of the hub in the
// child); ticks_during() counts a ticker's turns across a call, to tell a cooperating wait (the
// ticker runs) from one that blocked the thread (it does not).
#pragma once

#include <doctest/doctest.h>
#include <spawn.h>
#include <sys/types.h>

#include <chrono>
#include <utility>

#include "hub/task.hpp"
#include "tests/monkey/fibers.hpp"

extern char** environ;

namespace cogent::test {

// spawn_sh() starts `sh -c cmd` (stdin from stdin_fd if >= 0, with attributes `at` if given) and
// returns its pid.
inline pid_t spawn_sh(const char* cmd, int stdin_fd = -1, const posix_spawnattr_t* at = nullptr) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (stdin_fd >= 0) {
    posix_spawn_file_actions_adddup2(&fa, stdin_fd, 0);
  }
  const char* argv[] = {"sh", "-c", cmd, nullptr};
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, "/bin/sh", &fa, at, const_cast<char**>(argv), environ);
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE(rc == 0);
  return pid;
}

// ticks_during() runs call() while a ticker (10 ms period) runs, and returns the call's result with
// the ticks counted across it alone.
template <class F>
auto ticks_during(F call) {
  using namespace std::chrono_literals;
  ticker tk(10ms);
  cogent::sleep(1ms);  // the ticker has started
  long before = tk.ticks;
  auto r = call();
  return std::make_pair(r, tk.ticks - before);
}

}  // namespace cogent::test
