// tests/hub/coord_review_test.cpp — adversarial review of hub/threadpool, hub/sync and hub/queue.
// Each case targets one broken promise of the header docs; the failing ones failed before the fix
// that came with this file (a pending kill raised at every blocking call's entry; waits that
// look again after a withdrawn Timeout; event/async_result/join not reading the object after
// their wake-up; threadpool::pending() counted out before the waiter resumes).
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "hub/queue.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/threadpool.hpp"
#include "hub/timeout.hpp"
#include "tests/job_gate.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;
using cogent::clock;

// ---- 1. a kill left pending by an honoured grant ----------------------------------------
// sync.hpp: "If the grant reached a waiter before its kill could act ... the call succeeds and the
// kill is raised at the fiber's next blocking call." queue.hpp / sync.hpp on get/acquire: "Raises a
// pending kill or Timeout (nothing is removed / the lock is then not taken)". The next blocking call
// that happens not to switch (get on a non-empty queue, acquire of a free unit/lock) does not raise it.

template <class Op>
bool next_call_raises_pending_kill(Op op) {
  cogent::lock mu;
  mu.acquire();
  bool op_returned = false;
  auto w = cogent::spawn([&] {
    mu.acquire();  // granted, then killed in the same turn: returns, the kill stays pending
    mu.release();
    op();  // the next blocking call: must raise the pending kill
    op_returned = true;
    cogent::sleep(1s);
  });
  cogent::sleep(1ms);
  mu.release();
  w.kill(nullptr, false);
  w.join();
  CHECK(w.killed());
  return !op_returned;
}

COGENT_TEST_CASE("review: pending kill after an honoured grant is raised by queue::get (non-empty)",
                 doctest::timeout(10)) {
  cogent::queue<int> q;
  q.put(1);
  CHECK(next_call_raises_pending_kill([&] { (void)q.get(); }));
  CHECK(q.size() == 1);  // "nothing is removed"
}

COGENT_TEST_CASE("review: pending kill after an honoured grant is raised by semaphore::acquire (unit free)",
                 doctest::timeout(10)) {
  cogent::semaphore s(1);
  CHECK(next_call_raises_pending_kill([&] { (void)s.acquire(); }));
  CHECK(s.counter() == 1);  // "nothing is then taken"
}

COGENT_TEST_CASE("review: pending kill after an honoured grant is raised by mutex::acquire (free)",
                 doctest::timeout(10)) {
  cogent::lock other;
  CHECK(next_call_raises_pending_kill([&] { (void)other.acquire(); }));
  CHECK_FALSE(other.locked());  // "the lock is then not taken"
}

// The consequence: a consumer that keeps finding work never sees its kill; kill(block) hangs.
COGENT_TEST_CASE("review: a killed consumer on a well-fed queue keeps consuming", doctest::timeout(10)) {
  cogent::lock mu;
  cogent::queue<int> q;
  for (int i = 0; i < 100; ++i) {
    q.put(i);
  }
  int consumed = 0;
  auto w = cogent::spawn([&] {
    mu.acquire();
    mu.release();
    while (!q.empty()) {  // bounded for the test; a real consumer loops forever
      (void)q.get();
      ++consumed;
    }
    cogent::sleep(1s);
  });
  mu.acquire();
  cogent::sleep(1ms);
  mu.release();
  w.kill(nullptr, false);
  w.join();
  CHECK(w.killed());
  CHECK(consumed == 0);  // the kill should have been raised at the first get()
}

// ---- 2. set() then destroy: the woken waiter reads the destroyed primitive -------------------
// set() has already woken every waiter ("they return true even if clear() runs before they
// resume"); like std::condition_variable after notify_all, the primitive is then destroyed.
// Before the fix, an ASan heap-use-after-free (in the release build the read goes unnoticed).

COGENT_TEST_CASE("review: event set then destroyed before the woken waiter runs (ASan)",
                 doctest::timeout(10)) {
  auto* e = new cogent::event;
  bool r = false;
  auto w = cogent::spawn([&] { r = e->wait(); });
  cogent::sleep(1ms);
  e->set();
  delete e;  // w is already woken: nothing waits on e any more
  w.join();
  CHECK(r);
}

COGENT_TEST_CASE("review: async_result set then destroyed before the woken reader runs (ASan)",
                 doctest::timeout(10)) {
  auto* a = new cogent::async_result<int>;
  bool r = false;
  auto w = cogent::spawn([&] { r = a->wait(); });
  cogent::sleep(1ms);
  a->set(5);
  delete a;
  w.join();
  CHECK(r);
}

// ---- 3. pending() after run() returned ------------------------------------------------
// threadpool.hpp: "pending() is the number of jobs queued or running right now." Once run() has
// returned its job is neither; the worker decrements only after posting the completion.
COGENT_TEST_CASE("review: threadpool::pending() is 0 once run() has returned", doctest::timeout(30)) {
  cogent::threadpool tp(1);
  int nonzero = 0;
  int i = 0;
  for (; i < 20000 && nonzero == 0; ++i) {
    tp.run([] {});
    if (tp.pending() != 0) {
      ++nonzero;
    }
  }
  INFO("first non-zero pending() after run() at iteration ", i);
  CHECK(nonzero == 0);
}

// ---- 4. a Timeout cancelled by another fiber after it woke its waiter -------------------
// timeout.hpp: an error that already woke the fiber from a blocking call is raised there even if
// another fiber cancels the Timeout before the woken one runs (gevent throws an expired Timeout into
// the greenlet at once). What was released meanwhile must stay available, not be lost with the
// leaving waiter. (Until 2026-12-01 the cancel withdrew the error and the waiter waited on: every
// wait had to handle a wake-up for nothing, and two of them did not.)

using cogent::test::cancel_when_expired;

COGENT_TEST_CASE("review: event::wait() woken by its Timeout raises it even if another fiber cancels it",
                 doctest::timeout(10)) {
  cogent::event e;
  cogent::timeout* to = nullptr;
  auto w = cogent::spawn([&] {
    cogent::timeout t(5ms);
    to = &t;
    struct reset {
      cogent::timeout*& p;
      ~reset() { p = nullptr; }
    } r{to};
    return e.wait();  // no timeout: returns true (set) or raises
  });
  auto c = cogent::spawn([&] { cancel_when_expired(to); });
  c.join();
  CHECK_THROWS_AS(w.get(), cogent::timeout_error);
}

COGENT_TEST_CASE("review: a semaphore unit released past a waiter its Timeout woke stays free",
                 doctest::timeout(10)) {
  cogent::semaphore s(0);
  cogent::timeout* to = nullptr;
  auto w = cogent::spawn([&] {
    cogent::timeout t(5ms);
    to = &t;
    struct reset {
      cogent::timeout*& p;
      ~reset() { p = nullptr; }
    } r{to};
    return s.acquire(200ms);
  });
  auto c = cogent::spawn([&] {
    cancel_when_expired(to, [&s] { s.release(); });  // w is leaving: the unit stays free
  });
  c.join();
  CHECK_THROWS_AS(w.get(), cogent::timeout_error);
  CHECK(s.counter() == 1);
}

COGENT_TEST_CASE("review: an item put past a getter its Timeout woke stays stored",
                 doctest::timeout(10)) {
  cogent::queue<int> q;
  cogent::timeout* to = nullptr;
  auto w = cogent::spawn([&]() -> int {
    cogent::timeout t(5ms);
    to = &t;
    struct reset {
      cogent::timeout*& p;
      ~reset() { p = nullptr; }
    } r{to};
    return q.get(200ms);
  });
  auto c = cogent::spawn([&] {
    cancel_when_expired(to, [&q] { q.put(7); });  // w is leaving: 7 is stored
  });
  c.join();
  CHECK_THROWS_AS(w.get(), cogent::timeout_error);
  CHECK(q.get_nowait() == 7);
}

// ---- controls: things that should (and do) work ---------------------------------------------

COGENT_TEST_CASE("review: getter whose own deadline expired in the same turn as a put keeps the item",
                 doctest::timeout(10)) {
  cogent::queue<int> q;
  std::optional<int> got;
  bool empty_raised = false;
  auto g = cogent::spawn([&] {
    try {
      got = q.get(5ms);
    } catch (const cogent::queue_empty&) {
      empty_raised = true;
    }
  });
  // Spin past g's deadline in the ready queue, so g's park timer fires before we put.
  auto p = cogent::spawn([&] {
    auto until = clock::now() + 6ms;
    while (clock::now() < until) {
      cogent::yield();
    }
    q.put(3);
  });
  p.join();
  g.join();
  CHECK((got.has_value() != empty_raised));
  CHECK((got.has_value() || q.size() == 1));  // never lost, never duplicated
}

COGENT_TEST_CASE("review: bounded_semaphore over-release and lock misuse messages", doctest::timeout(10)) {
  cogent::bounded_semaphore b(2);
  CHECK_THROWS_AS(b.release(), cogent::lock_error);
  CHECK(b.counter() == 2);
  cogent::rlock r;
  CHECK_THROWS_WITH_AS(r.release(), "cogent::rlock::release(): the lock is not locked", cogent::lock_error);
  r.acquire();
  auto other = cogent::spawn([&] {
    CHECK_THROWS_WITH_AS(r.release(), "cogent::rlock::release(): the calling fiber does not own the lock",
                         cogent::lock_error);
    CHECK_FALSE(r.acquire(0ms));
  });
  other.join();
  r.release();
  CHECK_FALSE(r.locked());
}

COGENT_TEST_CASE("review: kill of a run() waiter while its job runs, then the frame is reused",
                 doctest::timeout(10)) {
  cogent::threadpool tp(2);
  for (int i = 0; i < 20; ++i) {
    std::atomic<bool> started{false};
    cogent::test::job_gate gate;  // (not a fixed sleep: a stalled hub could see the job done before its kill)
    auto t = cogent::spawn([&] {
      std::string s(100, 'x');
      tp.run([&, wait_for_gate = gate.job()] {
        started = true;
        wait_for_gate();
        s[0] = 'y';
        return s.size();
      });
    });
    while (!started) {
      cogent::sleep(100us);
    }
    // The job ends only after the kill below is requested (no switch before it).
    auto opener = cogent::spawn([&] { gate.open(); });
    t.kill();
    CHECK(t.killed());
    opener.join();
  }
}

}  // namespace
