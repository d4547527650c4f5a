// tests/hub/raw_switch_review_test.cpp — review of the raw fiber API (fiber::switch_to,
// throw_in, parent chains) against the hub: hub::suspend hands control back to a fiber that
// switched a value into a parked fiber (detail::resume_noting_switcher), throw_in into a
// parked fiber becomes its pending interrupt, plain fibers created in tasks or main, tasks
// killed or timed out while suspended in a raw switch, switches into the hub fiber itself.
// Cases that could hang run in a fork()ed child's fresh thread (its own hub), under alarm().
#include <unistd.h>

#include <any>
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "fiber/fiber.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/threadpool.hpp"
#include "hub/timeout.hpp"
#include "tests/child.hpp"
#include "tests/job_gate.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;

struct custom_error : std::runtime_error {
  explicit custom_error(const std::string& s = "custom") : std::runtime_error(s) {}
};

double ms_since(cogent::clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(cogent::clock::now() - t0).count();
}

using cogent::test::in_fresh_thread_child;

// ---- 1. plain fibers switching into parked tasks -----------------------------------------

// A plain fiber (parent: the test task) switches values into a task parked in sleep, many
// times: each switch comes straight back, the value is dropped, the sleep is not cut short,
// and the plain fiber's return reaches its parent's raw switch.
COGENT_TEST_CASE("raw switch review: plain fiber switches into a sleeping task repeatedly") {
  cogent::fiber bf;
  double slept = -1;
  auto b = cogent::spawn([&] {
    bf = cogent::fiber::current();
    auto t0 = cogent::clock::now();
    cogent::sleep(60ms);
    slept = ms_since(t0);
    return 3;
  });
  cogent::sleep(5ms);  // b is parked
  REQUIRE(bf);
  int back = 0;
  cogent::fiber p([&] {
    for (int i = 0; i < 1000; ++i) {
      std::any r = bf.switch_to(i);
      if (!r.has_value()) {
        ++back;
      }
    }
    return 7;
  });
  CHECK(std::any_cast<int>(p.switch_to()) == 7);
  CHECK(back == 1000);
  CHECK(p.dead());
  CHECK(b.get() == 3);
  CHECK(slept >= 55);
  bf = cogent::fiber();
}

// The test task itself switches many times into a task parked on an event, with values of
// a type that allocates: nothing leaks (ASan), the event wait still returns once.
COGENT_TEST_CASE("raw switch review: task switches into a task waiting on an event, 10000 times") {
  cogent::fiber bf;
  cogent::event e;
  int woke = 0;
  auto b = cogent::spawn([&] {
    bf = cogent::fiber::current();
    CHECK(e.wait(2s));
    ++woke;
  });
  cogent::sleep(1ms);
  REQUIRE(bf);
  for (int i = 0; i < 10000; ++i) {
    std::any r = bf.switch_to(std::string(100, 'x'));
    REQUIRE_FALSE(r.has_value());
  }
  CHECK(woke == 0);
  e.set();
  CHECK(b.join(1s));
  CHECK(woke == 1);
  bf = cogent::fiber();
}

// A fiber_exit / custom exception thrown into a sleeping task from a plain fiber: the plain
// fiber's throw_in returns at once, the task raises the exception from its sleep.
COGENT_TEST_CASE("raw switch review: plain fiber throw_in(custom) into a sleeping task") {
  cogent::fiber bf;
  auto b = cogent::spawn([&] {
    bf = cogent::fiber::current();
    cogent::sleep(2s);
  });
  cogent::sleep(1ms);
  REQUIRE(bf);
  bool returned = false;
  cogent::fiber p([&] {
    std::any r = bf.throw_in(std::make_exception_ptr(custom_error("into b")));
    returned = !r.has_value();
    return 1;
  });
  auto t0 = cogent::clock::now();
  CHECK(std::any_cast<int>(p.switch_to()) == 1);
  CHECK(returned);
  CHECK(b.join(1s));
  CHECK(ms_since(t0) < 1000);
  REQUIRE_FALSE(b.successful());
  CHECK_THROWS_WITH_AS(b.rethrow(), "into b", custom_error);
  bf = cogent::fiber();
}

// A task parked non-interruptibly in a thread-pool job: switches into it come straight back;
// a throw_in stays pending and is raised once the job is done (its work is not lost). The job
// runs until the test opens its gate (a fixed sleep could end first on a descheduled thread).
COGENT_TEST_CASE("raw switch review: switch_to and throw_in into a task in run_in_thread") {
  cogent::fiber bf;
  std::atomic<bool> job_done{false};
  cogent::test::job_gate gate;
  auto b = cogent::spawn([&] {
    bf = cogent::fiber::current();
    cogent::run_in_thread([&, wait = gate.job()] {
      wait();
      job_done = true;
    });
  });
  cogent::sleep(5ms);
  REQUIRE(bf);
  for (int i = 0; i < 50; ++i) {
    CHECK_FALSE(bf.switch_to(i).has_value());
  }
  CHECK_FALSE(bf.throw_in(std::make_exception_ptr(custom_error("late"))).has_value());
  CHECK_FALSE(b.ready());
  CHECK_FALSE(job_done);
  gate.open();
  CHECK(b.join(2s));
  CHECK(job_done);
  CHECK_THROWS_WITH_AS(b.rethrow(), "late", custom_error);
  bf = cogent::fiber();
}

// Nested: plain fiber A (parent: the test task) switches into parked task B, B's park hands
// control back to A; A then switches into B again via a second plain fiber it created
// (parent A), which finishes: its value goes to A (its parent), A's return to the test task.
// (B's sleep is long: were it over when the fiber_exit goes in, B would return 1, not killed.)
COGENT_TEST_CASE("raw switch review: nested plain fibers switching into a parked task") {
  cogent::fiber bf;
  auto b = cogent::spawn([&] {
    bf = cogent::fiber::current();
    cogent::sleep(500ms);
    return 1;
  });
  cogent::sleep(1ms);
  REQUIRE(bf);
  cogent::fiber a([&] {
    CHECK_FALSE(bf.switch_to(1).has_value());
    cogent::fiber inner([&] {
      CHECK_FALSE(bf.switch_to(2).has_value());
      CHECK_FALSE(bf.throw_in(std::make_exception_ptr(cogent::fiber_exit(std::any(9)))).has_value());
      return 20;
    });
    int got = std::any_cast<int>(inner.switch_to());
    return got + 1;
  });
  CHECK(std::any_cast<int>(a.switch_to()) == 21);
  CHECK(b.join(1s));
  CHECK(b.killed());
  bf = cogent::fiber();
}

// ---- 2. main (the thread's main fiber) parked in join -----------------------------------

// A task switches values into main, parked in join(), and throws a custom error into it:
// each comes back at once; main's join() raises the custom error.
TEST_CASE("raw switch review: task switches into / throws into main parked in join") {
  int code = in_fresh_thread_child([] {
    cogent::fiber m = cogent::fiber::current();
    bool came_back = false;
    auto t = cogent::spawn([&] {
      for (int i = 0; i < 100; ++i) {
        if (m.switch_to(i).has_value()) {
          return;
        }
      }
      m.throw_in(std::make_exception_ptr(custom_error("into main")));
      came_back = true;
      cogent::sleep(20ms);
    });
    auto keep = cogent::spawn([] { cogent::sleep(100ms); });
    try {
      t.join(2s);
      return 10;  // the custom error was not raised
    } catch (const custom_error&) {
    }
    if (!came_back) {
      return 11;
    }
    if (!t.join(1s) || !t.successful()) {
      return 12;
    }
    keep.join(1s);
    return 0;
  });
  CHECK(code == 0);
}

// ---- 3. tasks suspended inside a raw switch --------------------------------------------------

// Task T switches into plain fiber F (parent T), which sleeps in the hub: T is suspended in
// a raw switch, not parked. A kill of T can only land at T's next blocking point: kill with
// block and a short timeout returns; once F is done, T's next sleep raises the kill. (F sleeps
// 600 ms: the kill's 20 ms wait ends well before, even on a descheduled thread; a kill that
// waited for F would take 600 ms, one that waited for T's own sleep 2 s.)
COGENT_TEST_CASE("raw switch review: kill a task suspended in a raw switch to a sleeping plain fiber") {
  bool f_done = false;
  bool t_after_switch = false;
  auto t = cogent::spawn([&] {
    cogent::fiber f([&] {
      cogent::sleep(600ms);
      f_done = true;
      return 5;
    });
    CHECK(std::any_cast<int>(f.switch_to()) == 5);
    t_after_switch = true;
    cogent::sleep(2s);
  });
  cogent::sleep(5ms);
  auto t0 = cogent::clock::now();
  t.kill(nullptr, true, 20ms);
  CHECK(ms_since(t0) < 400);
  CHECK_FALSE(t.ready());
  CHECK(t.join(2s));
  CHECK(f_done);
  CHECK(t_after_switch);
  CHECK(t.killed());
  CHECK(ms_since(t0) < 1500);
}

// The same with a Timeout of T expiring while T is inside the raw switch: it is raised at T's
// next blocking call, not lost.
COGENT_TEST_CASE("raw switch review: Timeout expires while the task is in a raw switch") {
  bool timed_out = false;
  double at = -1;
  auto t0 = cogent::clock::now();
  auto t = cogent::spawn([&] {
    cogent::timeout to(20ms);
    try {
      cogent::fiber f([&] {
        cogent::sleep(60ms);
        return 1;
      });
      CHECK(std::any_cast<int>(f.switch_to()) == 1);
      cogent::sleep(2s);
    } catch (const cogent::timeout_error& e) {
      timed_out = e.source() == &to;
      at = ms_since(t0);
    }
  });
  CHECK(t.join(3s));
  CHECK(timed_out);
  CHECK(at < 1000);
}

// ---- 4. two tasks switching manually -------------------------------------------------

// A is woken (ready, not yet run) when B switches into it: B gets control back at once and A
// runs its wait's end exactly once, at its turn.
COGENT_TEST_CASE("raw switch review: switch into a task that is ready but not yet run") {
  cogent::fiber af;
  cogent::event e;
  int after = 0;
  auto a = cogent::spawn([&] {
    af = cogent::fiber::current();
    CHECK(e.wait(1s));
    ++after;
  });
  cogent::sleep(1ms);
  REQUIRE(af);
  e.set();  // a is ready now
  CHECK_FALSE(af.switch_to(1).has_value());
  CHECK_FALSE(af.switch_to(2).has_value());
  CHECK(after == 0);
  CHECK(a.join(1s));
  CHECK(after == 1);
  af = cogent::fiber();
}


// ---- 5. fork child: where does control go? ------------------------------------------------

// probe_join() spawns body in a task and reports: 0 it finished within 1 s, 2 it did not
// (stranded), 3 the join raised.
template <class Body>
int probe_join(Body body) {
  auto t = cogent::spawn(body);
  try {
    return t.join(1s) ? 0 : 2;
  } catch (...) {
    return 3;
  }
}

// Fixed in stop 21 (hub::run_one answers a fiber that switched into the hub fiber by hand with
// fiber_error; it goes on). Was, in three forms: a task that switches a value into the hub fiber
// (fiber::current().parent(), public API) was never resumed (the hub dropped the value and went
// on); throw_in(custom) into it reported "exception escaped into the hub from a finished fiber
// whose parent is the hub: hub" and stranded the thrower; throw_in() (fiber_exit) unwound the
// hub's loop and the thread hung.
// refused_by_hub() runs `hand` in a task: 0 if it raised fiber_error and the task finished, 6 if
// it returned without one, else probe_join's code.
template <class Hand>
int refused_by_hub(Hand hand) {
  bool refused = false;
  int r = probe_join([&] {
    try {
      hand();
    } catch (const cogent::fiber_error&) {
      refused = true;
    }
  });
  return r != 0 ? r : (refused ? 0 : 6);
}

TEST_CASE("raw switch review: task switches into the hub fiber (its parent)") {
  int code = in_fresh_thread_child([] {
    return refused_by_hub([] { cogent::fiber::current().parent().switch_to(1); });
  });
  CHECK(code == 0);
}

TEST_CASE("raw switch review: task throw_in(custom) into the hub fiber") {
  int code = in_fresh_thread_child([] {
    return refused_by_hub(
        [] { cogent::fiber::current().parent().throw_in(std::make_exception_ptr(custom_error("hub"))); });
  });
  CHECK(code == 0);
}

TEST_CASE("raw switch review: task throw_in(fiber_exit) into the hub fiber") {
  int code = in_fresh_thread_child([] {
    int r = refused_by_hub([] { cogent::fiber::current().parent().throw_in(); });
    if (r != 0) {
      return r;
    }
    // Is the hub still usable?
    auto t = cogent::spawn([] { cogent::sleep(5ms); return 4; });
    return t.join(1s) && t.get() == 4 ? 0 : 5;
  });
  CHECK(code == 0);
}

// KNOWN LIMIT, documented in hub/core.hpp (greenlet-faithful, but a silent hang; kept skipped):
// a plain fiber created in a task that has
// finished, resumed from another task, finishes: its value goes up its dead parent chain to
// the hub, which drops it; the resuming task is never resumed (code 2).
TEST_CASE("raw switch review: plain fiber whose creating task died, resumed from another task" *
          doctest::skip(true)) {
  int code = in_fresh_thread_child([] {
    cogent::fiber keep;
    auto t = cogent::spawn([&] {
      cogent::fiber me = cogent::fiber::current();
      keep = cogent::fiber([me]() mutable {
        me.switch_to();  // back to T (suspended, not parked)
        return 1;
      });
      keep.switch_to();
    });
    t.join(1s);
    if (!t.ready()) {
      return 4;
    }
    return probe_join([&] { keep.switch_to(); });  // keep finishes: value to dead T -> the hub
  });
  CHECK(code == 0);
}

// KNOWN LIMIT (as above; kept skipped): task Y resumes plain
// fiber C whose parent X is parked in sleep; C finishes, its value goes to X's suspend(),
// which hands control back to previous_impl() = C — dead — so to the hub: Y is stranded for
// ever (code 2). The hand-back covers only a live switcher; nothing records that Y resumed C.
TEST_CASE("raw switch review: task resumes the plain child of a parked task, child finishes" *
          doctest::skip(true)) {
  int code = in_fresh_thread_child([] {
    cogent::fiber child;
    auto x = cogent::spawn([&] {
      cogent::fiber me = cogent::fiber::current();
      child = cogent::fiber([me]() mutable {
        me.switch_to();
        return 1;  // to X, parked in sleep
      });
      child.switch_to();
      cogent::sleep(300ms);
    });
    cogent::sleep(5ms);
    int r = probe_join([&] { child.switch_to(); });
    x.join(1s);
    return r;
  });
  CHECK(code == 0);
}

// Fixed in stop 21 (the value leaves the slot before it is destroyed: drop_value in resume() and
// hub::suspend, which holds the switcher meanwhile). Was: a value whose destructor switches (the last handle to a suspended plain fiber g)
// switched into a parked task B. resume_noting_switcher() (fiber/detail/fiber_impl.hpp, and
// resume() the same) drops it with `t_current->in_value.reset()`: std::any::reset() runs the
// destructor while the slot still holds the value; ~fiber unwinds g with B as its parent, and
// g's entry() (fiber.cpp:284 `target->in_value = std::move(result)`) assigns into that same
// slot, destroying the handle a second time: g is destroyed while running on its own stack
// (ASan use-after-poison in release_stack; a double unref without ASan). Expected: the value
// dropped once (detail::drop_value), g unwound, the switcher handed control back (code 0).
// Actual: the child dies with ASan's exit code 1.
TEST_CASE("raw switch review: value holding the last handle of a suspended fiber into a parked task") {
  int code = in_fresh_thread_child([] {
    cogent::fiber bf;
    auto b = cogent::spawn([&] {
      bf = cogent::fiber::current();
      cogent::sleep(300ms);
    });
    cogent::sleep(5ms);
    bool unwound = false;
    int r = probe_join([&] {
      cogent::fiber me = cogent::fiber::current();
      cogent::fiber g([me, &unwound]() mutable {
        struct mark {
          bool& b;
          ~mark() { b = true; }
        } m{unwound};
        me.switch_to();
      });
      g.switch_to();  // g suspended, holds only itself via our handle
      bf.switch_to(std::move(g));  // b drops it: unwinds g
    });
    b.join(1s);
    return r != 0 ? r : (unwound ? 0 : 6);
  });
  CHECK(code == 0);
}

}  // namespace
