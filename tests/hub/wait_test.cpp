// tests/hub/wait_test.cpp — cogent::wait(objects, t, count) (hub/wait.hpp): gevent.wait over
// tasks, events and async results.
#include "hub/wait.hpp"

#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;
using positions = std::vector<std::size_t>;

COGENT_TEST_CASE("wait: count 1 returns the first of a task, an event and a result to be ready",
                 doctest::timeout(10)) {
  // The worker runs until released and the reply comes after the worker has finished: the
  // order is caused, not a race of timers a descheduled thread could fire in one turn.
  cogent::event shutdown;
  cogent::event release;
  cogent::async_result<std::string> reply;
  auto worker = cogent::spawn([&] { release.wait(); });
  auto setter = cogent::spawn([&] {
    cogent::sleep(10ms);
    shutdown.set();
  });
  auto start = std::chrono::steady_clock::now();
  CHECK(cogent::wait({worker, shutdown, reply}, 2s, 1) == positions{1});
  // Returned at the event, not at the 2 s timeout (which would also give {1}).
  CHECK(std::chrono::steady_clock::now() - start < 1s);
  CHECK_FALSE(worker.ready());
  // All of them now: the event is ready at the call (listed first), then the task, then the reply.
  auto replier = cogent::spawn([&] {
    worker.join();
    reply.set("ok");
  });
  release.set();
  CHECK(cogent::wait({worker, shutdown, reply}) == positions{1, 0, 2});
  CHECK(worker.ready());
  CHECK(reply.get() == "ok");
  cogent::joinall({setter, replier});
}

COGENT_TEST_CASE("wait: what is ready at the call comes in list order, without switching",
                 doctest::timeout(10)) {
  cogent::event a;
  cogent::event b;
  cogent::async_result<void> r;
  b.set();
  r.set();
  a.set();
  bool other_ran = false;
  auto other = cogent::spawn([&] { other_ran = true; });
  CHECK(cogent::wait({a, b, r}, 0s) == positions{0, 1, 2});
  CHECK(cogent::wait({a, b, r}) == positions{0, 1, 2});  // all ready: no switch either
  CHECK_FALSE(other_ran);
  CHECK(cogent::wait({r, a}, std::nullopt, 1) == positions{0});
  other.join();
}

COGENT_TEST_CASE("wait: a timeout returns the ones that became ready, in that order", doctest::timeout(10)) {
  cogent::event never;
  cogent::async_result<int> late;
  cogent::async_result<int> failing;
  auto t1 = cogent::spawn([&] {
    cogent::sleep(20ms);
    failing.set_exception(std::make_exception_ptr(std::runtime_error("no")));
    cogent::sleep(10ms);
    late.set(1);
  });
  auto start = std::chrono::steady_clock::now();
  // (200 ms: far past t1's second step even if the thread is descheduled after its first.)
  CHECK(cogent::wait({never, late, failing}, 200ms) == positions{2, 1});
  CHECK(std::chrono::steady_clock::now() - start >= 195ms);
  CHECK(never.waiters() == 0);
  t1.join();
  CHECK(cogent::wait({never}, 0s).empty());
  CHECK(cogent::wait({never, late}, 0s, 0).empty());
}

COGENT_TEST_CASE("wait: an event set then cleared before the waiter runs still counts", doctest::timeout(10)) {
  cogent::event e;
  auto t = cogent::spawn([&] {
    cogent::sleep(5ms);
    e.set();
    e.clear();  // in the same turn: the waiter has not run yet
  });
  CHECK(cogent::wait({e}, 2s) == positions{0});
  CHECK_FALSE(e.is_set());
  t.join();
}

COGENT_TEST_CASE("wait: the same event listed twice is reported at both positions", doctest::timeout(10)) {
  cogent::event e;
  auto t = cogent::spawn([&] {
    cogent::sleep(5ms);
    e.set();
  });
  CHECK(cogent::wait({e, e}, 2s) == positions{0, 1});  // links run in the order they were added
  t.join();
}

COGENT_TEST_CASE("wait: an event destroyed while waited on raises hub_error", doctest::timeout(10)) {
  auto e = std::make_unique<cogent::event>();
  cogent::event keep;
  auto t = cogent::spawn([&] {
    cogent::sleep(5ms);
    e.reset();
  });
  CHECK_THROWS_AS(cogent::wait({keep, *e}, 2s), cogent::hub_error);
  CHECK(keep.waiters() == 0);
  keep.set();  // its link is gone: nothing touches the finished wait
  t.join();
}

COGENT_TEST_CASE("wait: a killed waiter leaves no link behind", doctest::timeout(10)) {
  cogent::event e;
  cogent::async_result<int> r;
  auto never = cogent::spawn([] { cogent::sleep(10s); });
  bool killed = false;
  auto w = cogent::spawn([&] {
    try {
      cogent::wait({e, r, never});
    } catch (const cogent::fiber_exit&) {
      killed = true;
      throw;
    }
  });
  cogent::sleep(5ms);
  w.kill();
  CHECK(killed);
  e.set();  // the wait's frame is gone: a link left behind would write to it (ASan)
  r.set(3);
  never.kill();
  CHECK(never.ready());
}

COGENT_TEST_CASE("wait: a task's error is not taken as looked at", doctest::timeout(10)) {
  cogent::test::error_reports reports;
  {
    auto t = cogent::spawn([]() -> int {
      cogent::sleep(5ms);
      throw std::runtime_error("boom");
    });
    CHECK(cogent::wait({t}, 2s) == positions{0});
    CHECK(t.ready());
    CHECK_FALSE(t.successful());
  }  // nobody joined it
  cogent::sleep(1ms);
  REQUIRE(reports.seen.size() == 1);
  CHECK(reports.seen[0].find("boom") != std::string::npos);
}

COGENT_TEST_CASE("wait: misuse and interrupts", doctest::timeout(10)) {
  cogent::event e;
  CHECK_THROWS_AS(cogent::wait({e, cogent::task_base()}), std::logic_error);
  CHECK(cogent::wait(std::vector<cogent::waitable>{}).empty());
  // A Timeout around it raises timeout_error and unlinks.
  bool timed_out = false;
  try {
    cogent::timeout to(10ms);
    cogent::wait({e});
  } catch (const cogent::timeout_error&) {
    timed_out = true;
  }
  CHECK(timed_out);
  e.set();
  // Inside the hub: a zero timeout answers; a wait that would block raises hub_error.
  cogent::event set_one;
  set_one.set();
  std::optional<positions> in_hub;
  bool refused = false;
  cogent::event done;
  cogent::hub::current().post([&] {
    in_hub = cogent::wait({set_one}, 0s);
    try {
      cogent::wait({done}, 1s);
    } catch (const cogent::hub_error&) {
      refused = true;
    }
    done.set();
  });
  CHECK(done.wait(2s));
  REQUIRE(in_hub.has_value());
  CHECK(*in_hub == positions{0});
  CHECK(refused);
}

}  // namespace
