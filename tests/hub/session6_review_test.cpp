// tests/hub/session6_review_test.cpp — adversarial review of de1c7ed: a task's error stays unseen
// until an observing link is actually called or a joiner returns (task.cpp finish(), running_links),
// and a Timeout whose pending error a kill replaced goes back on (hub::interrupt, displaced_timer).
#include <chrono>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "hub/pool.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/threadpool.hpp"
#include "hub/timeout.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;

void wait_ready(const cogent::task_base& t) {
  while (!t.ready()) {
    cogent::sleep(1ms);
  }
}

// ---- unjoined-error reports ----------------------------------------------------------------

// finish() now leaves the report pending while its links run (the flag is cleared only by an
// observing link as it is called, or by a joiner that returns). But link() on a task that is
// already done (task.cpp link(): st == done) clears the flag at once, and iwait's constructor links
// every task of its list, so a wait_any()/iwait/joinall made while an earlier link of a failed task
// blocks takes the report away from finish() — and then disowns the error itself
// (_done_not_ours = _linking: "its error was reported then if nobody saw it", no longer true).
// Before de1c7ed finish() had decided at its start (no observer, nobody in join()) and reported
// after its links. Here wait_any() hands out the other task, so t's error is seen by nobody.
// FIXED in stop 19: an iwait holds each finished task (held_reports); the last holder reports.
// Was: task.cpp link() (the st == done branch, `s.error_unseen (was report_left_to_joiners) = false`)
// together
// with iwait::iwait() (task.cpp, `_done_not_ours.push_back(_linking || ...)`). Fix: iwait's
// constructor must not take the report over for a task that is already done — link it with
// observes = !g.ready() (or have link() on a done task whose finish() is still running its links,
// running_links, leave the flag to finish()); iwait then stays "not ours" and finish() reports.
COGENT_TEST_CASE("reports: a wait_any made while a failed task's link blocks does not swallow its report",
                 doctest::timeout(10)) {
  cogent::test::error_reports reports;
  auto u = cogent::spawn([] {});
  auto t = cogent::spawn([] {
    cogent::sleep(5ms);
    throw std::runtime_error("nobody saw this");
  });
  t.link([](const cogent::task_base&) { cogent::sleep(50ms); }, false);  // slow bookkeeping
  wait_ready(t);  // t is done, its first link is still sleeping
  REQUIRE(u.ready());
  cogent::task_base first = cogent::wait_any({u, t});
  CHECK(first == u);  // u is handed out; t's error never was
  cogent::sleep(100ms);  // t's links have run
  CHECK(reports.seen.size() == 1);
}

// The same through joinall(count = 1) (gevent's joinall(count=1)).
COGENT_TEST_CASE("reports: a joinall(count=1) made while a failed task's link blocks does not swallow its report",
                 doctest::timeout(10)) {
  // FIXED in stop 19: as above (task.cpp link()'s done branch + iwait's _linking).
  cogent::test::error_reports reports;
  auto u = cogent::spawn([] {});
  auto t = cogent::spawn([] {
    cogent::sleep(5ms);
    throw std::runtime_error("nobody saw this");
  });
  t.link([](const cogent::task_base&) { cogent::sleep(50ms); }, false);
  wait_ready(t);
  auto done = cogent::joinall({u, t}, std::nullopt, false, 1);
  (void)done;
  cogent::sleep(100ms);
  CHECK(reports.seen.size() == 1);
}

// shared_observers (task.cpp finish()) still counts, at the start, every observing link and "a fiber
// in join()" as observers — the very counting de1c7ed removed for error_unseen (was
// report_left_to_joiners). An iwait
// whose link is called then disowns the error (_done_not_ours) because another observer was
// counted, while its own link cleared the flag: if that other observer never looks — a joiner
// killed after the finish, before it ran — nobody reports the error.
// FIXED in stop 19: an iwait holds each finished task (held_reports); the last holder reports.
// Was: task.cpp finish() `shared_observers = ... (waiting > 0 ? 1U : 0U) > 1` with iwait's
// _done_not_ours. Fix: do not decide "shared" up front. E.g. the iwait link leaves the flag alone
// (observes only in the sense of holding the report) and iwait's destructor reports an error it did
// not hand out only if the flag is still set (clearing it), the joiners' rule; or count the
// observers still holding the report and let the last one to leave without looking report it.
COGENT_TEST_CASE("reports: a joiner killed after the finish does not make an iwait disown the error",
                 doctest::timeout(10)) {
  cogent::test::error_reports reports;
  auto v = cogent::spawn([] { cogent::sleep(1ms); });
  auto t = cogent::spawn([] {
    cogent::sleep(10ms);
    throw std::runtime_error("nobody saw this");
  });
  bool joiner_killed = false;
  auto j = cogent::spawn([&] {
    try {
      t.join();
    } catch (const cogent::fiber_exit&) {
      joiner_killed = true;
      throw;
    }
  });
  // Kills the joiner once t has finished, before the joiner ran (it was notified, not yet run).
  t.link([&](const cogent::task_base&) { j.kill(nullptr, false); }, false);
  {
    cogent::iwait it({v, t});
    CHECK(it.next() == v);  // the first to finish; t's error is not handed out
    wait_ready(t);
    wait_ready(j);
  }
  CHECK(joiner_killed);
  CHECK(reports.seen.size() == 1);
}

// The same with an observing link unlinked before its turn (the session 5 case that de1c7ed fixed
// for the flag): it still counts in shared_observers, so the iwait whose link is called disowns the
// error, and the uncalled one never saw it.
// FIXED in stop 19: an iwait holds each finished task (held_reports); the last holder reports.
// Was: task.cpp finish(), shared_observers counts `observing_links` before any is called.
// Fix: as above.
COGENT_TEST_CASE("reports: an observing link unlinked before its turn does not make an iwait disown the error",
                 doctest::timeout(10)) {
  cogent::test::error_reports reports;
  auto v = cogent::spawn([] { cogent::sleep(1ms); });
  auto t = cogent::spawn([] {
    cogent::sleep(10ms);
    throw std::runtime_error("nobody saw this");
  });
  std::size_t second = 0;
  bool second_called = false;
  t.link([&](const cogent::task_base& done) { done.unlink(second); }, false);
  second = t.link([&](const cogent::task_base&) { second_called = true; });  // observes; never called
  {
    cogent::iwait it({v, t});
    CHECK(it.next() == v);
    wait_ready(t);
    cogent::sleep(1ms);
  }
  REQUIRE_FALSE(second_called);
  CHECK(reports.seen.size() == 1);
}

// Pins the running_links rule: the only joiner, killed while a link of the failed task blocks,
// leaves the report to finish(), which makes it once after the links.
COGENT_TEST_CASE("reports: a joiner killed while a link blocks leaves exactly one report, after the links",
                 doctest::timeout(10)) {
  cogent::test::error_reports reports;
  auto t = cogent::spawn([] {
    cogent::sleep(5ms);
    throw std::runtime_error("failed");
  });
  bool link_done = false;
  std::size_t reports_when_link_done = 99;
  auto j = cogent::spawn([&] { t.join(); });
  t.link(
      [&](const cogent::task_base&) {
        j.kill(nullptr, false);
        cogent::sleep(30ms);
        reports_when_link_done = reports.seen.size();
        link_done = true;
      },
      false);
  wait_ready(t);
  wait_ready(j);
  while (!link_done) {
    cogent::sleep(1ms);
  }
  cogent::sleep(5ms);
  CHECK(reports_when_link_done == 0);
  CHECK(reports.seen.size() == 1);
}

// Pins: a joiner that returns while a link blocks has looked: no report, also not after the links.
COGENT_TEST_CASE("reports: a joiner that returns while a link blocks suppresses the report",
                 doctest::timeout(10)) {
  cogent::test::error_reports reports;
  auto t = cogent::spawn([] {
    cogent::sleep(5ms);
    throw std::runtime_error("failed");
  });
  bool link_done = false;
  t.link(
      [&](const cogent::task_base&) {
        cogent::sleep(30ms);
        link_done = true;
      },
      false);
  CHECK(t.join());
  CHECK_FALSE(link_done);
  while (!link_done) {
    cogent::sleep(1ms);
  }
  cogent::sleep(5ms);
  CHECK(reports.seen.empty());
}

// Pins: kill(block=true) of a task whose body has ended with an error and is releasing (a
// destructor blocks) is a joiner that cannot look: the error is reported once.
COGENT_TEST_CASE("reports: kill(block) of a failed task still releasing reports its error once",
                 doctest::timeout(10)) {
  cogent::test::error_reports reports;
  struct slow_dtor {
    bool armed = true;
    slow_dtor() = default;
    slow_dtor(slow_dtor&& o) noexcept : armed(std::exchange(o.armed, false)) {}
    ~slow_dtor() {
      if (armed) {
        cogent::sleep(20ms);
      }
    }
  };
  auto t = cogent::spawn([d = slow_dtor{}] {
    (void)d;
    cogent::sleep(2ms);
    throw std::runtime_error("failed");
  });
  cogent::sleep(8ms);  // the body failed; its function's destructor sleeps
  REQUIRE_FALSE(t.ready());
  t.kill(nullptr, true);
  CHECK(t.ready());
  cogent::sleep(2ms);
  CHECK(reports.seen.size() == 1);
}

// ---- Timeout displaced by a kill ---------------------------------------------------------

// de1c7ed re-arms a Timeout whose pending error a kill replaced — but only through
// sched.displaced_timer, which only the timer's own firing sets (timeout.cpp). A Timeout error made
// pending again with defer_interrupt() (the documented way to postpone one: "A timeout_error keeps
// its scope") has no displaced_timer, so a kill that replaces it still leaves the scope dead: after
// the kill is handled, a blocking call in the scope waits as long as it likes.
// FIXED in stop 19: a displaced Timeout error is kept in sched.displaced and made pending again
// once the kill is raised. Was: timeout.cpp defer_interrupt() / hub::interrupt() (core.cpp, the
// displacement branch).
// Fix: rather than re-arming a timer found through a pointer (which defer_interrupt cannot safely
// set: the error's source scope may be gone), keep the displaced Timeout error itself
// (sched.displaced + its owner) and make it pending again once the kill has been raised
// (throw_if_interrupted); timeout::cancel() withdraws it as it withdraws `pending`.
COGENT_TEST_CASE("timeout: a deferred Timeout error replaced by a kill still ends a later wait in its scope",
                 doctest::timeout(10)) {
  bool deferred = false;
  bool caught_kill = false;
  bool timed_out = false;
  auto t = cogent::spawn([&] {
    cogent::timeout to(5ms);
    try {
      cogent::sleep(2s);
    } catch (const cogent::timeout_error&) {
      cogent::defer_interrupt(std::current_exception());  // cannot honour it here
      deferred = true;
      try {
        cogent::yield();  // the kill comes meanwhile and takes the deferred error's place
      } catch (const cogent::fiber_exit&) {
        caught_kill = true;
      }
    }
    try {
      cogent::sleep(300ms);  // in the scope, long after its 5 ms
    } catch (const cogent::timeout_error& e) {
      timed_out = to.owns(e);
    }
  });
  while (!deferred) {
    cogent::yield();
  }
  t.kill(nullptr, false);
  t.join();
  CHECK(caught_kill);
  CHECK(timed_out);
}

// Pins: the re-armed Timeout fires once (not again after its error was raised and caught).
COGENT_TEST_CASE("timeout: a Timeout displaced by a kill fires exactly once afterwards", doctest::timeout(10)) {
  int timeouts = 0;
  bool caught_kill = false;
  auto t = cogent::spawn([&] {
    cogent::timeout to(5ms);
    try {
      cogent::run_in_thread([] { std::this_thread::sleep_for(40ms); });  // fires at 5, kill at ~15
    } catch (const cogent::fiber_exit&) {
      caught_kill = true;
    }
    for (int i = 0; i < 3; ++i) {
      try {
        cogent::sleep(30ms);
      } catch (const cogent::timeout_error& e) {
        timeouts += to.owns(e) ? 1 : 100;
      }
    }
  });
  cogent::sleep(15ms);
  t.kill(nullptr, false);
  t.join();
  CHECK(caught_kill);
  CHECK(timeouts == 1);
}

// Pins: a Timeout whose error was raised (and caught) is not brought back by a later kill
// (throw_if_interrupted clears displaced_timer).
COGENT_TEST_CASE("timeout: a Timeout already raised is not re-armed by a later kill", doctest::timeout(10)) {
  int timeouts = 0;
  bool caught_kill = false;
  auto t = cogent::spawn([&] {
    cogent::timeout to(2ms);
    try {
      cogent::sleep(1s);
    } catch (const cogent::timeout_error& e) {
      timeouts += to.owns(e) ? 1 : 100;
    }
    try {
      cogent::run_in_thread([] { std::this_thread::sleep_for(30ms); });  // the kill comes meanwhile
    } catch (const cogent::fiber_exit&) {
      caught_kill = true;
    }
    try {
      cogent::sleep(40ms);
    } catch (const cogent::timeout_error&) {
      ++timeouts;
    }
  });
  cogent::sleep(15ms);
  t.kill(nullptr, false);
  t.join();
  CHECK(caught_kill);
  CHECK(timeouts == 1);
}

// Pins: a heap Timeout deleted by another fiber while its error is pending (not delivered: the
// fiber waits non-interruptibly) leaves no displaced_timer behind — a later kill must not re-add
// the freed node (ASan) nor raise a Timeout.
COGENT_TEST_CASE("timeout: a fired heap Timeout deleted by another fiber is not re-armed by a kill",
                 doctest::timeout(10)) {
  cogent::timeout* to = nullptr;
  bool caught_kill = false;
  bool timed_out = false;
  auto t = cogent::spawn([&] {
    to = new cogent::timeout(3ms);
    try {
      cogent::run_in_thread([] { std::this_thread::sleep_for(40ms); });
    } catch (const cogent::fiber_exit&) {
      caught_kill = true;
    }
    try {
      cogent::sleep(30ms);
    } catch (const cogent::timeout_error&) {
      timed_out = true;
    }
  });
  cogent::sleep(10ms);
  REQUIRE(to != nullptr);
  CHECK(to->expired());
  delete to;  // withdraws its pending error
  to = nullptr;
  cogent::sleep(5ms);
  t.kill(nullptr, false);
  t.join();
  CHECK(caught_kill);
  CHECK_FALSE(timed_out);
}

// Pins: nested scopes, the inner one's error displaced by a kill; after the kill both scopes
// still bound a wait, and nothing stays armed (leak check) once the task ends.
COGENT_TEST_CASE("timeout: nested scopes under a displacing kill leave no timer armed", doctest::timeout(10)) {
  bool caught_kill = false;
  bool timed_out = false;
  auto t = cogent::spawn([&] {
    cogent::timeout outer(8ms);
    cogent::timeout inner(3ms);
    try {
      cogent::run_in_thread([] { std::this_thread::sleep_for(30ms); });
    } catch (const cogent::fiber_exit&) {
      caught_kill = true;
    }
    try {
      cogent::sleep(1s);
    } catch (const cogent::timeout_error& e) {
      timed_out = inner.owns(e) || outer.owns(e);
    }
  });
  cogent::sleep(15ms);
  t.kill(nullptr, false);
  auto start = std::chrono::steady_clock::now();
  t.join();
  CHECK(caught_kill);
  CHECK(timed_out);
  CHECK(std::chrono::steady_clock::now() - start < 500ms);
}

// Pins: a task killed (uncaught) while its Timeout's error is displaced ends with no timer armed,
// and the kill is its outcome (no report).
COGENT_TEST_CASE("timeout: a task ended by the displacing kill leaves no timer and no report",
                 doctest::timeout(10)) {
  cogent::test::error_reports reports;
  auto t = cogent::spawn([&] {
    cogent::timeout to(3ms);
    cogent::run_in_thread([] { std::this_thread::sleep_for(20ms); });
    cogent::sleep(1s);
  });
  cogent::sleep(10ms);
  t.kill(nullptr, false);
  t.join();
  CHECK(t.exception() == nullptr);
  cogent::sleep(3ms);
  CHECK(reports.seen.empty());
  CHECK(cogent::hub::current().timer_count() == 0);
}

}  // namespace
