// tests/hub/fork_test.cpp — fork() and the hub: a child process must not use the hub it inherited
// (its io_uring instance is the parent's: the rings are shared memory), so every cogent call that needs
// it raises hub_error there, and the parent's operations are untouched by the child. A thread without
// a hub forks freely: the child makes its own.
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "hub/core.hpp"
#include "hub/detail/engine.hpp"
#include "hub/task.hpp"
#include "hub/threadpool.hpp"
#include "tests/child.hpp"

using namespace std::chrono_literals;

namespace {

using cogent::test::exit_code_in_child;

// uses_hub_error() is 0 if calling fn() in the child raises hub_error naming fork(), else 1..3.
template <class Fn>
int uses_hub_error(Fn fn) {
  try {
    fn();
    return 1;
  } catch (const cogent::hub_error& e) {
    return std::strstr(e.what(), "fork") != nullptr ? 0 : 2;
  } catch (...) {
    return 3;
  }
}

}  // namespace

TEST_CASE("fork: the child of a thread with a hub gets hub_error from sleep, spawn and join, not the parent's ring") {
  cogent::sleep(1ms);  // this thread's hub exists
  auto parent_task = cogent::spawn([] { cogent::sleep(50ms); return 7; });
  cogent::sleep(0s);
  CHECK(exit_code_in_child([] { return uses_hub_error([] { cogent::sleep(5ms); }); }) == 0);
  CHECK(exit_code_in_child([] { return uses_hub_error([] { cogent::spawn([] {}).join(); }); }) == 0);
  CHECK(exit_code_in_child([&] { return uses_hub_error([&] { parent_task.join(); }); }) == 0);
  CHECK(exit_code_in_child([] { return uses_hub_error([] { cogent::hub::current(); }); }) == 0);
  CHECK(parent_task.get() == 7);  // the parent goes on as if nothing happened
}

TEST_CASE("fork: an op the parent has in flight completes in the parent even if the child tries to wait") {
  int p[2];
  REQUIRE(::pipe(p) == 0);
  char got = 0;
  auto reader = cogent::spawn([&] {
    cogent::detail::io_op op;
    op.code = cogent::detail::op_code::read;
    op.fd = p[0];
    op.buf = &got;
    op.len = 1;
    return cogent::hub::current().await_io(op);
  });
  cogent::sleep(0s);  // the read is in the kernel
  REQUIRE(::write(p[1], "x", 1) == 1);
  // The child waits for 20 ms "through the hub" if it can: with a shared ring it could take the
  // parent's completion (or submit into the parent's queue).
  int code = exit_code_in_child([] {
    (void)uses_hub_error([] { cogent::sleep(20ms); });
    return 0;
  });
  CHECK(code == 0);
  CHECK(reader.join(2s));
  CHECK(reader.ready());
  if (reader.ready()) {
    CHECK(reader.get() == 1);
    CHECK(got == 'x');
  }
  ::close(p[0]);
  ::close(p[1]);
}

TEST_CASE("fork: a thread without a hub forks, and the child makes a hub of its own") {
  int code = 0;
  std::thread([&] {
    CHECK(cogent::hub::current_if_exists() == nullptr);
    code = exit_code_in_child([] {
      auto t = cogent::spawn([] { cogent::sleep(5ms); return 3; });
      return t.get() == 3 ? 0 : 1;
    });
  }).join();
  CHECK(code == 0);
}

TEST_CASE("fork: a child that forgot its parent's hub exits normally (exit(), thread-locals and atexit run)") {
  auto sleeper = cogent::spawn([] { cogent::sleep(20ms); });
  cogent::sleep(0s);  // a fiber of the parent's hub is parked on a timer at the fork
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int code = uses_hub_error([] { cogent::sleep(1ms); });
    std::exit(code);  // not _exit: the thread's exit handlers must cope with the forgotten hub
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
  }
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(sleeper.join(1s));
}

// A pool made before fork(): the child has none of its worker threads. As gevent's threadpool does
// after a fork, the child's copy starts workers of its own when it is first used; jobs the parent had
// queued belong to the parent's fibers and never run in the child.
TEST_CASE("fork: a threadpool made before fork() runs the child's jobs on workers started anew") {
  cogent::threadpool tp(2);
  CHECK(tp.run([] { return 1; }) == 1);  // the parent's workers have run a job
  int code = 0;
  std::thread([&] {  // a thread without a hub forks: the child makes its own
    code = exit_code_in_child(
        [&] {
          if (tp.size() != 2) {
            return 1;
          }
          auto t = cogent::spawn([&] { return tp.run([] { return 7; }) + tp.run([] { return 1; }); });
          return t.get() == 8 ? 0 : 2;
        },
        10);
  }).join();
  CHECK(code == 0);
  CHECK(tp.run([] { return 5; }) == 5);  // the parent's pool is untouched
}

TEST_CASE("fork: jobs queued in the parent at fork() time do not run in the child") {
  cogent::threadpool tp(1);
  int block[2];
  REQUIRE(::pipe(block) == 0);
  int ran_queued = 0;
  // The worker is held in a job (reading the pipe); a second job waits in the queue behind it.
  auto busy = cogent::spawn([&] { tp.run([&] { char c; return ::read(block[0], &c, 1); }); });
  auto queued = cogent::spawn([&] { tp.run([&] { ++ran_queued; }); });
  while (tp.pending() < 2) {
    cogent::sleep(1ms);
  }
  int code = 0;
  std::thread([&] {
    code = exit_code_in_child(
        [&] {
          auto t = cogent::spawn([&] { return tp.run([&] { return ran_queued; }); });
          return t.get() == 0 && ran_queued == 0 ? 0 : 1;
        },
        10);
  }).join();
  CHECK(code == 0);
  REQUIRE(::write(block[1], "x", 1) == 1);
  CHECK(busy.join(5s));
  CHECK(queued.join(5s));
  CHECK(ran_queued == 1);
  ::close(block[0]);
  ::close(block[1]);
}

TEST_CASE("fork: a child can destroy a threadpool it inherited, used or not") {
  auto tp = std::make_unique<cogent::threadpool>(3);
  CHECK(tp->run([] { return 1; }) == 1);
  int unused = 0;
  int used = 0;
  std::thread([&] {
    unused = exit_code_in_child([&] { tp.reset(); return 0; }, 10);
    used = exit_code_in_child(
        [&] {
          auto t = cogent::spawn([&] { return tp->run([] { return 4; }); });
          int got = t.get();
          tp.reset();
          return got == 4 ? 0 : 1;
        },
        10);
  }).join();
  CHECK(unused == 0);
  CHECK(used == 0);
}
