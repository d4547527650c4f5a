// tests/hub/sync_review3_test.cpp — third adversarial review of hub/sync and hub/queue:
// interrupts (kill, Timeout) landing in the same hub turn as a grant, notify or put,
// primitives destroyed under woken-but-not-yet-run fibers, and queue edge cases.
// Each case names the behaviour it expects.
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "hub/queue.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;

bool says_destroyed(const cogent::hub_error& e) {
  return std::string(e.what()).find("waited on it") != std::string::npos;
}

// ---- destroyed after a grant, before the granted fiber ran ---------------------------
// sync.hpp: "destroying one of them ... while fibers wait on it — or were woken by it and
// have not run yet — is a bug in the program; each of those waits raises cogent::hub_error".
// wait_list keeps its notified-not-yet-run waiters (_woken) for this; handoff_list forgets a
// node once granted, so a mutex/semaphore acquire granted by a release() right before the
// object was destroyed returns success: the fiber believes it owns a lock that no longer
// exists (its std::lock_guard then unlocks freed memory).

COGENT_TEST_CASE("mutex destroyed right after release() granted it to a waiter not yet run: acquire raises hub_error",
                 doctest::timeout(10)) {
  auto mu = std::make_unique<cogent::mutex>();
  mu->acquire();
  enum { none, acquired, orphaned, other } outcome = none;
  auto waiter = cogent::spawn([&] {
    try {
      if (mu->acquire(5s)) {
        outcome = acquired;  // (does not touch *mu again: it is gone)
      }
    } catch (const cogent::hub_error& e) {
      outcome = says_destroyed(e) ? orphaned : other;
    }
  });
  cogent::yield();  // the waiter parks in acquire()
  REQUIRE(mu->waiters() == 1);
  mu->release();  // hands the lock to the waiter, which has not run yet
  mu.reset();     // ... and the lock is destroyed under it
  waiter.join(1s);
  REQUIRE(waiter.ready());
  CHECK(outcome == orphaned);  // failed before the fix: acquired (owner of a destroyed lock)
}

COGENT_TEST_CASE("semaphore destroyed right after release() granted its unit to a waiter not yet run: acquire raises hub_error",
                 doctest::timeout(10)) {
  auto sem = std::make_unique<cogent::semaphore>(0);
  enum { none, acquired, orphaned, other } outcome = none;
  auto waiter = cogent::spawn([&] {
    try {
      if (sem->acquire(5s)) {
        outcome = acquired;
      }
    } catch (const cogent::hub_error& e) {
      outcome = says_destroyed(e) ? orphaned : other;
    }
  });
  cogent::yield();
  REQUIRE(sem->waiters() == 1);
  sem->release();
  sem.reset();
  waiter.join(1s);
  REQUIRE(waiter.ready());
  CHECK(outcome == orphaned);  // failed before the fix: acquired
}

// ---- priority_queue / lifo_queue with getters already waiting -------------------------
// queue.hpp: "priority_queue ... get() returns the item that comes first under Compare". In
// gevent, put() stores the item and wakes getters later (Queue._unlock): each getter pops the
// queue's top when it runs, so two items put in one turn to two waiting getters come out
// smallest first. Here put() hands each item to the longest-waiting getter at once, in the
// order they were put, so the first get() to return gives the larger item while the smaller
// one is already "in" the queue.

COGENT_TEST_CASE("priority_queue: two items put in one turn to waiting getters come out smallest first",
                 doctest::timeout(10)) {
  cogent::priority_queue<int> q;
  std::vector<int> order;
  auto g1 = cogent::spawn([&] { order.push_back(q.get(1s)); });
  auto g2 = cogent::spawn([&] { order.push_back(q.get(1s)); });
  cogent::yield();  // both getters wait
  REQUIRE(q.getters() == 2);
  q.put(5);
  q.put(1);  // same turn: neither getter has run
  g1.join();
  g2.join();
  REQUIRE(order.size() == 2);
  CHECK(order == std::vector<int>{1, 5});  // failed before the fix: {5, 1}
}

COGENT_TEST_CASE("lifo_queue: two items put in one turn to waiting getters come out last put first",
                 doctest::timeout(10)) {
  cogent::lifo_queue<int> q;
  std::vector<int> order;
  auto g1 = cogent::spawn([&] { order.push_back(q.get(1s)); });
  auto g2 = cogent::spawn([&] { order.push_back(q.get(1s)); });
  cogent::yield();
  REQUIRE(q.getters() == 2);
  q.put(1);
  q.put(2);  // same turn: gevent's LifoQueue gives 2 to the first getter that runs
  g1.join();
  g2.join();
  REQUIRE(order.size() == 2);
  CHECK(order == std::vector<int>{2, 1});  // failed before the fix: {1, 2}
}

// ---- passing, kept: a Timeout that fires after a grant, in the same turn ---------------------
// The grant wins (acquire() returns true); the Timeout fired while the fiber was already ready,
// so it is withdrawn when its scope ends and never escapes as a timeout_error outside it.

COGENT_TEST_CASE("mutex grant honoured over a Timeout firing in the same turn; the Timeout does not escape its scope",
                 doctest::timeout(10)) {
  cogent::mutex mu;
  mu.acquire();
  bool acquired = false;
  bool raised_outside = false;
  auto w = cogent::spawn([&] {
    {
      cogent::timeout t(5ms);
      acquired = mu.acquire();
      mu.release();
    }
    try {
      cogent::sleep(2ms);
    } catch (const cogent::timeout_error&) {
      raised_outside = true;
    }
  });
  cogent::yield();               // w waits for the lock
  cogent::test::busy_for(10ms);  // w's Timeout is due: it fires after this turn's fibers ran
  mu.release();                  // ... so the grant comes first
  w.join();
  CHECK(acquired);
  CHECK_FALSE(raised_outside);
  CHECK_FALSE(mu.locked());
}

}  // namespace
