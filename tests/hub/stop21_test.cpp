// tests/hub/stop21_test.cpp — fixes of stop 21: a Timeout expiring behind a pending kill queues its
// error behind the kill (no 1 ms re-arming); expired() after a withdrawing cancel(); try_with_timeout
// of a function returning a reference.
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>

#include "hub/task.hpp"
#include "hub/threadpool.hpp"
#include "hub/timeout.hpp"
#include "tests/job_gate.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;

COGENT_TEST_CASE("timeout: expiring behind a pending kill, it queues its error instead of re-arming",
                 doctest::timeout(20)) {
  // The task is in a thread-pool job (a wait a kill does not end). The kill lands at ~5 ms and
  // stays pending; the Timeout's deadline (15 ms) passes while it is. The Timeout used to re-arm
  // itself every 1 ms until the job ended; now no timer is left armed for it. (The job waits on
  // a gate opened after the checks, not a fixed sleep a descheduled hub thread could outlast.)
  bool caught_kill = false;
  bool timed_out = false;
  bool expired_while_pending = false;
  cogent::test::job_gate gate;
  auto t = cogent::spawn([&] {
    cogent::timeout to(15ms);
    try {
      cogent::run_in_thread(gate.job());
    } catch (const cogent::fiber_exit&) {
      caught_kill = true;  // gevent: except GreenletExit, and carry on
    }
    try {
      cogent::sleep(2s);  // still in the scope, past its deadline: raises at once
    } catch (const cogent::timeout_error& e) {
      timed_out = to.owns(e);
    }
  });
  cogent::sleep(5ms);
  t.kill(nullptr, false);
  cogent::sleep(50ms);  // the Timeout has expired behind the kill; the job runs on
  // This fiber's own sleep timer has fired: any armed timer left is the Timeout's.
  CHECK(cogent::hub::current().timer_count() == 0);
  expired_while_pending = !t.ready();
  auto start = std::chrono::steady_clock::now();
  gate.open();
  CHECK(t.join(3s));
  CHECK(expired_while_pending);
  CHECK(caught_kill);
  CHECK(timed_out);
  CHECK(std::chrono::steady_clock::now() - start < 1s);
}

COGENT_TEST_CASE("timeout: an error queued behind a kill is withdrawn when its scope ends first",
                 doctest::timeout(20)) {
  // The kill is raised and ends the scope: the queued Timeout error must not outlive it (the next
  // wait, outside the scope, runs its full length).
  bool caught_kill = false;
  bool later_wait_ok = false;
  cogent::test::job_gate gate;  // the job ends once the kill is sent and the Timeout fired
  auto t = cogent::spawn([&] {
    try {
      cogent::timeout to(10ms);
      cogent::run_in_thread(gate.job());
    } catch (const cogent::fiber_exit&) {
      caught_kill = true;
    }
    cogent::sleep(20ms);  // outside the scope
    later_wait_ok = true;
  });
  cogent::sleep(3ms);
  t.kill(nullptr, false);
  cogent::sleep(15ms);  // past the Timeout's deadline (timers fire in deadline order)
  gate.open();
  CHECK(t.join(3s));
  CHECK(caught_kill);
  CHECK(later_wait_ok);
}

}  // namespace

namespace {

using namespace std::chrono_literals;

COGENT_TEST_CASE("timeout: expired() is false again once another fiber's cancel() withdrew the error",
                 doctest::timeout(20)) {
  // The Timeout fires while its fiber is in a thread-pool job (its error waits, pending); another
  // fiber cancels it before the job ends: nothing is raised, and expired() says so.
  cogent::timeout* scope = nullptr;
  bool raised = false;
  bool expired_after = true;
  cogent::test::job_gate gate;  // the job runs until the cancel() is done
  auto t = cogent::spawn([&] {
    cogent::timeout to(5ms);
    scope = &to;
    try {
      cogent::run_in_thread(gate.job());
      cogent::sleep(1ms);
    } catch (const cogent::timeout_error&) {
      raised = true;
    }
    expired_after = to.expired();
    scope = nullptr;
  });
  cogent::sleep(30ms);  // past the deadline, the job still running
  REQUIRE(scope != nullptr);
  CHECK(scope->expired());  // fired: its error is pending
  scope->cancel();
  CHECK_FALSE(scope->expired());
  gate.open();
  CHECK(t.join(3s));
  CHECK_FALSE(raised);
  CHECK_FALSE(expired_after);
}

}  // namespace

namespace {

using namespace std::chrono_literals;

COGENT_TEST_CASE("try_with_timeout: a function returning a reference", doctest::timeout(10)) {
  int slot = 1;
  auto r = cogent::try_with_timeout(1s, [&]() -> int& { return slot; });
  static_assert(std::is_same_v<decltype(r), std::optional<std::reference_wrapper<int>>>);
  REQUIRE(r.has_value());
  r->get() = 7;
  CHECK(slot == 7);
  auto late = cogent::try_with_timeout(5ms, [&]() -> int& {
    cogent::sleep(1s);
    return slot;
  });
  CHECK_FALSE(late.has_value());
  std::string s = "moved";
  auto m = cogent::try_with_timeout(1s, [&]() -> std::string&& { return std::move(s); });
  static_assert(std::is_same_v<decltype(m), std::optional<std::string>>);
  REQUIRE(m.has_value());
  CHECK(*m == "moved");
}

}  // namespace
