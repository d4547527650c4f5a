// tests/hub/doc_claims_test.cpp — checks concrete promises made in the public headers' comments
// and Example: blocks. The "doc:" cases failed on the code they were written against:
//  - task_base::kill() (default block = true) from a post()/timer callback raises hub_error
//    instead of "not blocking" as hub/task.hpp promises, for a task that has started;
//    killall() and group::kill() from the hub do the same;
//  - killall(block = true) from a task that is among the tasks raises in the caller at once,
//    before the others have finished: block is silently dropped.
// The "doc ok:" cases pass and stay as coverage of header examples no other test runs.
#include <doctest/doctest.h>

#include <signal.h>

#include <chrono>
#include <string>
#include <vector>

#include "fiber/fiber.hpp"
#include "hub/hub.hpp"
#include "net/server.hpp"
#include "tests/support.hpp"

namespace {

using cogent::test::in_hub;

using namespace std::chrono_literals;

// hub/task.hpp, task_base::kill(): "From a timer or post() callback (in the hub) that cannot
// wait it does not block."
COGENT_TEST_CASE("doc: kill() with the default block from a post() callback kills a started task without raising hub_error",
                 doctest::timeout(10)) {
  auto sleeper = cogent::spawn([] { cogent::sleep(10s); });
  cogent::yield();  // it has started and is parked in sleep()
  bool threw = false;
  std::string what;
  in_hub([&] {
    try {
      sleeper.kill();
    } catch (const cogent::hub_error& e) {
      threw = true;
      what = e.what();
    }
  });
  CHECK_MESSAGE(!threw, "kill() raised in the hub: ", what);
  sleeper.join(1s);
  CHECK(sleeper.ready());
  CHECK(sleeper.killed());
}

// hub/task.hpp, killall(): "kills every task (see task_base::kill)" — which, from the hub,
// does not block. group::kill() ("see task_base::kill") goes through the same path.
COGENT_TEST_CASE("doc: killall() and group::kill() with the default block from a post() callback do not raise hub_error",
                 doctest::timeout(10)) {
  auto sleeper = cogent::spawn([] { cogent::sleep(10s); });
  cogent::group g;
  g.spawn([] { cogent::sleep(10s); });
  cogent::yield();
  bool killall_threw = false;
  bool group_threw = false;
  in_hub([&] {
    try {
      cogent::killall({sleeper});
    } catch (const cogent::hub_error&) {
      killall_threw = true;
    }
    try {
      g.kill();
    } catch (const cogent::hub_error&) {
      group_threw = true;
    }
  });
  CHECK_FALSE(killall_threw);
  CHECK_FALSE(group_threw);
  sleeper.join(1s);
  CHECK(sleeper.killed());
  CHECK(g.join(1s));
}

// hub/task.hpp, killall(): "If the calling task is among them it is killed last, after all the
// others (its kill raises at once)", with block = true (the default): the others have been
// killed and waited for — as gevent, whose kills of the others run before the caller's — so
// the caller's frame, which they may use, is not unwound while they still run.
COGENT_TEST_CASE("doc: killall(block) by a task among the tasks waits for the others before raising in the caller",
                 doctest::timeout(10)) {
  cogent::task<void> other;
  bool other_done_when_raised = false;
  auto killer = cogent::spawn([&] {
    other = cogent::spawn([] { cogent::sleep(10s); });
    cogent::yield();  // other is parked in sleep()
    try {
      cogent::killall({other, cogent::current_task()});
    } catch (const cogent::fiber_exit&) {
      other_done_when_raised = other.ready();
      throw;
    }
  });
  killer.join(1s);
  CHECK(killer.killed());
  CHECK(other_done_when_raised);
  other.join(1s);
  CHECK(other.killed());
}

// fiber/fiber.hpp's Example and README's manual-switching block.
TEST_CASE("doc ok: the fiber.hpp ping/pong example returns 4 to main and values travel on switch") {
  cogent::fiber ping, pong;
  ping = cogent::fiber([&](int n) {
    while (n < 3) n = pong.switch_to<int>(n + 1);
    return n;
  });
  pong = cogent::fiber([&](int n) {
    while (true) n = ping.switch_to<int>(n + 1);
  });
  CHECK(ping.switch_to<int>(0) == 4);
  CHECK(ping.dead());
  CHECK(cogent::fiber([](int x) { return x * 2; }).switch_to<int>(21) == 42);
  CHECK(cogent::fiber::current().switch_to<int>(7) == 7);  // to the running fiber: at once
  CHECK(cogent::fiber::current().name() == "main");
  pong = {};  // unwinds the suspended pong
  ping = {};
}

// net/server.hpp, wait_for_signal(): "Returns the signal number, or 0 on timeout."
COGENT_TEST_CASE("doc ok: wait_for_signal() returns 0 when its timeout passes", doctest::timeout(10)) {
  CHECK(cogent::net::wait_for_signal({SIGUSR2}, 2ms) == 0);
}

}  // namespace
