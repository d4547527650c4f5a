// tests/hub/session4_review_test.cpp — adversarial review of session 4's changes: the per-fiber
// kill_raised bit (hub/core.cpp throw_if_interrupted, hub/task.cpp run()) that decides whether a
// killed task's failure is reported as unjoined.
#include <chrono>
#include <exception>
#include <stdexcept>
#include <string>

#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;

struct stop_a {};  // custom kill exceptions (not std::exception: nothing catches them by accident)
struct stop_b {};

// wait_ready() waits (without joining: a joiner observes the error) for t to finish.
void wait_ready(const cogent::task_base& t) {
  for (int i = 0; i < 2000 && !t.ready(); ++i) {
    cogent::sleep(1ms);
  }
  REQUIRE(t.ready());
}

// kill_raised is never cleared: once one custom kill has been raised in a task (and caught), a
// later custom kill that never lands (the task's wait was granted first, so the kill stays pending)
// is taken for "raised" and the task's own failure is not reported. Before this session run()
// checked `sched.pending != nullptr` (the kill never landed) and reported it; task.cpp's own comment
// still says "or the kill never landed (...) the task failed on its own before blocking again".
COGENT_TEST_CASE("kill_raised: an earlier custom kill caught does not hide a later one that never landed",
                 doctest::timeout(10)) {
  cogent::test::error_reports reports;
  cogent::semaphore sem(0);
  int stage = 0;
  auto t = cogent::spawn([&] {
    try {
      cogent::sleep(10s);
    } catch (const stop_a&) {
      stage = 1;  // the first kill landed, and is handled
    }
    sem.acquire();  // granted below before the second kill is raised
    stage = 2;
    throw std::runtime_error("own failure");  // fails on its own, before blocking again
  });
  cogent::sleep(1ms);
  t.kill(std::make_exception_ptr(stop_a{}), false);
  cogent::sleep(1ms);
  REQUIRE(stage == 1);
  REQUIRE(sem.waiters() == 1);
  sem.release();                                     // t is granted: ready, not parked
  t.kill(std::make_exception_ptr(stop_b{}), false);  // stays pending: never raised
  wait_ready(t);
  CHECK(stage == 2);
  bool own = false;
  try {
    std::rethrow_exception(t.exception());
  } catch (const std::runtime_error&) {
    own = true;
  } catch (...) {
  }
  REQUIRE(own);
  CHECK_MESSAGE(reports.seen.size() == 1,
                "the task's own failure (the second kill never landed) was not reported as unjoined");
}

// Control: the same without the first kill is reported (the bit is clear) — passes.
COGENT_TEST_CASE("kill_raised (control): a custom kill that never landed leaves the own failure reported",
                 doctest::timeout(10)) {
  cogent::test::error_reports reports;
  cogent::semaphore sem(0);
  auto t = cogent::spawn([&] {
    sem.acquire();
    throw std::runtime_error("own failure");
  });
  cogent::sleep(1ms);
  REQUIRE(sem.waiters() == 1);
  sem.release();
  t.kill(std::make_exception_ptr(stop_b{}), false);
  wait_ready(t);
  CHECK(reports.seen.size() == 1);
}

// task.hpp: "a task that catches a fiber_exit kill and then fails with an error of its own has
// that error reported like any other". Not so if a custom kill came first: kill_custom is sticky
// and kill_raised is set, so run() takes the own error for the custom kill's outcome.
COGENT_TEST_CASE("kill_raised: a caught fiber_exit kill after a caught custom kill still reports the own error",
                 doctest::timeout(10)) {
  cogent::test::error_reports reports;
  int stage = 0;
  auto t = cogent::spawn([&] {
    try {
      cogent::sleep(10s);
    } catch (const stop_a&) {
      stage = 1;
    }
    try {
      cogent::sleep(10s);
    } catch (const cogent::fiber_exit&) {
      stage = 2;  // a fiber_exit kill caught
    }
    throw std::runtime_error("own failure");
  });
  cogent::sleep(1ms);
  t.kill(std::make_exception_ptr(stop_a{}), false);
  cogent::sleep(1ms);
  REQUIRE(stage == 1);
  t.kill(nullptr, false);
  wait_ready(t);
  CHECK(stage == 2);
  CHECK_MESSAGE(reports.seen.size() == 1,
                "a task that caught a fiber_exit kill and failed on its own was not reported");
}

// The same property, custom kill only: the kill raised and caught is not the task's outcome; the
// own error is a failure like any other (task.hpp: only "the kill's outcome is not reported").
// (Pre-existing and arguable: the docs spell it out only for fiber_exit.)
COGENT_TEST_CASE("kill_raised: a custom kill caught, then an own failure, is reported (its outcome is not the kill)",
                 doctest::timeout(10)) {
  cogent::test::error_reports reports;
  int stage = 0;
  auto t = cogent::spawn([&] {
    try {
      cogent::sleep(10s);
    } catch (const stop_a&) {
      stage = 1;
    }
    throw std::runtime_error("own failure");
  });
  cogent::sleep(1ms);
  t.kill(std::make_exception_ptr(stop_a{}), false);
  wait_ready(t);
  CHECK(stage == 1);
  CHECK_MESSAGE(reports.seen.size() == 1, "the own failure after a caught custom kill was not reported");
}

// Control for the chaos fix: the custom kill's own exception is its outcome (not reported) — passes.
COGENT_TEST_CASE("kill_raised (control): a custom kill that ends the task is not reported", doctest::timeout(10)) {
  cogent::test::error_reports reports;
  auto t = cogent::spawn([&] { cogent::sleep(10s); });
  cogent::sleep(1ms);
  t.kill(std::make_exception_ptr(stop_a{}), false);
  wait_ready(t);
  CHECK(reports.seen.empty());
}

}  // namespace

