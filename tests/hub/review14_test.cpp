// tests/hub/review14_test.cpp — adversarial review of 0e5d374..9fb1035 (hub/ fiber/):
// cogent::wait() (hub/wait.cpp, detail::ready_links in hub/sync.hpp), hub::suspend's hand-back
// of manual switches into parked fibers, the Timeout queued behind a pending kill
// (timeout.cpp), throw_in() into finished fibers (fiber.cpp).
#include <any>
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
#include "hub/wait.hpp"
#include "tests/child.hpp"
#include "tests/job_gate.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;
using positions = std::vector<std::size_t>;

struct custom_error : std::runtime_error {
  explicit custom_error(const std::string& s = "custom") : std::runtime_error(s) {}
};

using cogent::test::in_fresh_thread_child;

// ---- 1. wake order against gevent ----------------------------------------------------------

// A difference from gevent, documented in hub/wait.hpp: gevent's Event keeps one list of links
// (Event.wait() and gevent.wait() both rawlink()), run in arrival order; cogent's event::set(),
// async_result::set() and a finishing task wake the object's own waiters first, then run the
// wait() links. Pinned here for each.
//
// wake_order: a cogent::wait({obj}) caller links first, then a caller of the object's own wait
// (`own`, named `own_name`) parks; fire() makes obj ready. Returns the order the two went on in.
template <class Obj, class Own, class Fire>
std::vector<std::string> wake_order(Obj& obj, const char* own_name, Own own, Fire fire) {
  std::vector<std::string> order;
  auto a = cogent::spawn([&] {
    cogent::wait({obj});
    order.push_back("wait");
  });
  cogent::sleep(1ms);  // a has run and linked
  auto b = cogent::spawn([&] {
    own();
    order.push_back(own_name);
  });
  cogent::sleep(1ms);  // b has run and parked
  fire();
  cogent::joinall({a, b});
  INFO("order: " << (order.empty() ? std::string() : order.front() + ", " + order.back()));
  return order;
}

COGENT_TEST_CASE(
    "review14: event::set wakes its own waiters before a cogent::wait begun first (documented order)",
    doctest::timeout(10)) {
  cogent::event e;
  CHECK(wake_order(
            e, "event.wait", [&] { e.wait(); }, [&] { e.set(); }) ==
        std::vector<std::string>{"event.wait", "wait"});
}

COGENT_TEST_CASE(
    "review14: async_result::set wakes its getters before a cogent::wait begun first (documented order)",
    doctest::timeout(10)) {
  cogent::async_result<int> r;
  CHECK(wake_order(
            r, "get", [&] { (void)r.get(); }, [&] { r.set(1); }) == std::vector<std::string>{"get", "wait"});
}

COGENT_TEST_CASE(
    "review14: a finishing task wakes its joiners before a cogent::wait begun first (documented order)",
    doctest::timeout(10)) {
  cogent::event go;  // the task ends when told, after both waiters are parked
  auto t = cogent::spawn([&] { go.wait(); });
  CHECK(wake_order(
            t, "join", [&] { t.join(); }, [&] { go.set(); }) == std::vector<std::string>{"join", "wait"});
}

// Sanity: two cogent::wait() callers on one event are woken in the order they linked.
COGENT_TEST_CASE("review14: two cogent::wait callers run in link order", doctest::timeout(10)) {
  cogent::event e;
  std::vector<int> order;
  std::vector<cogent::task<void>> ts;
  for (int i = 0; i < 4; ++i) {
    ts.push_back(cogent::spawn([&, i] {
      cogent::wait({e});
      order.push_back(i);
    }));
    cogent::sleep(1ms);
  }
  e.set();
  for (auto& t : ts) {
    t.join();
  }
  CHECK(order == std::vector<int>{0, 1, 2, 3});
}

// ---- 2. result order and counts ------------------------------------------------------------

COGENT_TEST_CASE("review14: results in the order objects became ready, not list order",
                 doctest::timeout(10)) {
  cogent::event e0;
  cogent::event e1;
  cogent::async_result<void> r2;
  cogent::event finish3;
  auto t3 = cogent::spawn([&] { finish3.wait(); });
  // One setter makes them ready in turn (a stalled thread cannot reorder them, as separate timers could).
  auto setter = cogent::spawn([&] {
    cogent::sleep(2ms);
    r2.set_exception(std::make_exception_ptr(custom_error()));
    cogent::sleep(2ms);
    e1.set();
    cogent::sleep(2ms);
    finish3.set();
    t3.join();
    cogent::sleep(2ms);
    e0.set();
  });
  CHECK(cogent::wait({e0, e1, r2, t3}, 2s) == positions{2, 1, 3, 0});
  setter.join();
}

COGENT_TEST_CASE("review14: count reached by ready-at-call objects does not block; timeout returns partial",
                 doctest::timeout(10)) {
  cogent::event a;
  cogent::event b;
  cogent::event c;
  c.set();
  a.set();
  CHECK(cogent::wait({a, b, c}, std::nullopt, 2) == positions{0, 2});  // (blocking would hang here)
  auto t0 = cogent::clock::now();
  CHECK(cogent::wait({a, b, c}, 1s, 2) == positions{0, 2});
  CHECK(cogent::clock::now() - t0 < 500ms);  // returned at once, not at the 1 s timeout
  CHECK(cogent::wait({b, c, a}, 5ms) == positions{1, 2});
}

// ---- 3. manual switches into a fiber parked in cogent::wait --------------------------------

// A plain fiber switches a value into a task parked in cogent::wait(): the value is dropped,
// control comes straight back, the wait is not ended early and later returns its answer.
COGENT_TEST_CASE("review14: switch_to into a task parked in cogent::wait leaves the wait going",
                 doctest::timeout(10)) {
  cogent::event e;
  cogent::async_result<int> r;
  std::optional<positions> got;
  cogent::fiber waiter_fiber;
  auto waiter = cogent::spawn([&] {
    waiter_fiber = cogent::fiber::current();
    got = cogent::wait({e, r});
  });
  cogent::sleep(1ms);
  int returned = 0;
  for (int i = 0; i < 50; ++i) {
    cogent::fiber p([&, i] {
      std::any back = waiter_fiber.switch_to(std::string("v") + std::to_string(i));
      returned += back.has_value() ? 0 : 1;
      return i;
    });
    CHECK(std::any_cast<int>(p.switch_to()) == i);
  }
  CHECK(returned == 50);
  CHECK_FALSE(got.has_value());
  CHECK_FALSE(waiter.ready());
  r.set(3);
  cogent::sleep(1ms);
  CHECK_FALSE(got.has_value());
  e.set();
  waiter.join(2s);
  REQUIRE(got.has_value());
  CHECK(*got == positions{1, 0});
  waiter_fiber = cogent::fiber();
}

// throw_in(custom) into a task parked in cogent::wait(): raised out of the wait (as a
// kill(block=false)); the links are gone (setting the objects after is safe under ASan).
COGENT_TEST_CASE("review14: throw_in into a task parked in cogent::wait raises there, links removed",
                 doctest::timeout(10)) {
  auto e = std::make_unique<cogent::event>();
  cogent::async_result<int> r;
  auto other = cogent::spawn([] { cogent::sleep(10ms); });
  cogent::fiber waiter_fiber;
  std::string caught;
  auto waiter = cogent::spawn([&] {
    waiter_fiber = cogent::fiber::current();
    try {
      cogent::wait({*e, r, other});
    } catch (const custom_error& x) {
      caught = x.what();
    }
  });
  cogent::sleep(1ms);
  bool thrower_back = false;
  cogent::fiber p([&] {
    waiter_fiber.throw_in(std::make_exception_ptr(custom_error("thrown")));
    thrower_back = true;
  });
  p.switch_to();
  CHECK(thrower_back);
  waiter.join(2s);
  REQUIRE(waiter.ready());
  CHECK(caught == "thrown");
  r.set(1);
  e.reset();  // its link must be gone (no hub_error, no stale frame write)
  other.join();
  waiter_fiber = cogent::fiber();
}

// ---- 4. objects and waiters going away mid-wait ---------------------------------------------

// A link added on the task before the wait (so run first in its finish) kills the waiter
// without blocking; the wait's own link runs after, on a waiter with a kill pending.
COGENT_TEST_CASE("review14: an earlier task link kills the waiter, then the wait's link fires",
                 doctest::timeout(10)) {
  cogent::event never;
  cogent::task<void> waiter;
  auto t = cogent::spawn([] { cogent::sleep(3ms); });
  bool killed = false;
  t.link([&](const cogent::task_base&) { waiter.kill(nullptr, false); });
  waiter = cogent::spawn([&] {
    try {
      cogent::wait({t, never});
    } catch (const cogent::fiber_exit&) {
      killed = true;
      throw;
    }
  });
  t.join();
  waiter.join(2s);
  REQUIRE(waiter.ready());
  CHECK(killed);
  never.set();
}

// A task link (run before the wait's) destroys an async_result the wait watches; count 1 is
// then met by the task itself. The doc says hub_error only if destroyed before `count` are
// ready: here it is destroyed first, so hub_error.
COGENT_TEST_CASE("review14: object destroyed by an earlier task link, before the wait's own link",
                 doctest::timeout(10)) {
  auto r = std::make_unique<cogent::async_result<int>>();
  auto t = cogent::spawn([] { cogent::sleep(2ms); });
  t.link([&](const cogent::task_base&) { r.reset(); });
  bool hub_err = false;
  try {
    cogent::wait({t, *r}, 2s, 1);
  } catch (const cogent::hub_error&) {
    hub_err = true;
  }
  CHECK(hub_err);
  CHECK(r == nullptr);
}

// An event destroyed in a post() callback (in the hub) while a task waits on it: the gone
// link runs in the hub fiber; the waiter raises hub_error.
COGENT_TEST_CASE("review14: event destroyed inside the hub while waited on", doctest::timeout(10)) {
  auto e = std::make_unique<cogent::event>();
  cogent::event other;
  bool hub_err = false;
  auto w = cogent::spawn([&] {
    try {
      cogent::wait({other, *e, other});
    } catch (const cogent::hub_error&) {
      hub_err = true;
    }
  });
  cogent::sleep(1ms);
  cogent::test::in_hub([&] { e.reset(); });
  w.join(2s);
  REQUIRE(w.ready());
  CHECK(hub_err);
  CHECK(other.waiters() == 0);
  other.set();  // its two links are gone
}

// hub/wait.hpp: an event ready at the call was counted then and is not looked at again, so
// destroying it during the wait is no error: the wait returns both positions.
COGENT_TEST_CASE("review14: an event ready at the call and destroyed during the wait is still reported",
                 doctest::timeout(10)) {
  auto e = std::make_unique<cogent::event>();
  e->set();
  cogent::event f;
  auto killer = cogent::spawn([&] {
    cogent::sleep(1ms);
    e.reset();
    cogent::sleep(1ms);
    f.set();
  });
  bool hub_err = false;
  std::optional<positions> got;
  try {
    got = cogent::wait({*e, f}, 2s);
  } catch (const cogent::hub_error&) {
    hub_err = true;
  }
  killer.join();
  CHECK_FALSE(hub_err);
  REQUIRE(got.has_value());
  CHECK(*got == positions{0, 1});
}

// The waiter's own Timeout expires in the same turn as the object becomes ready: whatever it
// answers, no link is left (setting again / destroying afterwards is clean).
COGENT_TEST_CASE("review14: Timeout and readiness in the same turn leave no link", doctest::timeout(10)) {
  for (int i = 0; i < 20; ++i) {
    auto e = std::make_unique<cogent::event>();
    bool done = false;
    auto w = cogent::spawn([&] {
      try {
        cogent::timeout to(2ms);
        (void)cogent::wait({*e});
      } catch (const cogent::timeout_error&) {
      }
      done = true;
    });
    cogent::sleep(2ms);
    e->set();
    w.join(2s);
    CHECK(done);
    e.reset();
  }
}

// ---- 5. Timeout queued behind a pending kill -------------------------------------------------

// After a kill pending during a thread-pool job has been caught inside the Timeout's scope,
// a zero-timeout cogent::wait on ready objects (which never switches) still raises the
// queued Timeout (wait() checks interrupts first).
COGENT_TEST_CASE("review14: queued Timeout raised by the next cogent::wait, even with a zero timeout",
                 doctest::timeout(10)) {
  bool got_kill = false;
  bool got_timeout = false;
  bool expired_before = false;
  cogent::test::job_gate gate;  // the job ends after the kill and the Timeout, not after a fixed sleep
  auto t = cogent::spawn([&] {
    cogent::event ready;
    ready.set();
    cogent::timeout to(100ms);
    try {
      cogent::run_in_thread(gate.job());
    } catch (const cogent::fiber_exit&) {
      got_kill = true;
    }
    expired_before = to.expired();
    try {
      (void)cogent::wait({ready}, 0s);
    } catch (const cogent::timeout_error& e) {
      got_timeout = to.owns(e);
    }
    CHECK(to.expired());
  });
  cogent::sleep(2ms);
  t.kill(nullptr, false);
  cogent::sleep(110ms);  // past the Timeout's deadline (timers fire in deadline order)
  gate.open();
  t.join(3s);
  REQUIRE(t.ready());
  CHECK(got_kill);
  CHECK(expired_before);
  CHECK(got_timeout);
}

// A Timeout queued behind a kill, whose scope is cancelled by the fiber itself once the kill is
// raised and caught: nothing is raised later, expired() is false.
COGENT_TEST_CASE("review14: self-cancel of a Timeout queued behind a caught kill", doctest::timeout(10)) {
  bool got_kill = false;
  bool late = false;
  bool expired_after = true;
  cogent::test::job_gate gate;
  auto t = cogent::spawn([&] {
    {
      cogent::timeout to(100ms);
      try {
        cogent::run_in_thread(gate.job());
      } catch (const cogent::fiber_exit&) {
        got_kill = true;
      }
      to.cancel();
      expired_after = to.expired();
      try {
        cogent::sleep(5ms);
      } catch (const cogent::timeout_error&) {
        late = true;
      }
    }
    try {
      cogent::sleep(5ms);
    } catch (const cogent::timeout_error&) {
      late = true;
    }
  });
  cogent::sleep(2ms);
  t.kill(nullptr, false);
  cogent::sleep(110ms);  // past the Timeout's deadline
  gate.open();
  t.join(3s);
  CHECK(got_kill);
  CHECK_FALSE(late);
  CHECK_FALSE(expired_after);
}

// A throw_in() into a task parked non-interruptibly (run_in_thread) is a pending interrupt like
// a kill; its scope's Timeout expires meanwhile and is queued behind it; a custom exception
// caught inside the scope, then the Timeout.
COGENT_TEST_CASE("review14: Timeout queued behind a throw_in'd custom exception", doctest::timeout(10)) {
  cogent::fiber tf;
  std::vector<std::string> seen;
  cogent::test::job_gate gate;
  auto t = cogent::spawn([&] {
    tf = cogent::fiber::current();
    cogent::timeout to(100ms);
    try {
      cogent::run_in_thread(gate.job());
    } catch (const custom_error&) {
      seen.push_back("custom");
    }
    try {
      cogent::sleep(1s);
    } catch (const cogent::timeout_error& e) {
      seen.push_back(to.owns(e) ? "timeout" : "other timeout");
    }
  });
  cogent::sleep(2ms);
  cogent::fiber p([&] { tf.throw_in(std::make_exception_ptr(custom_error())); });
  p.switch_to();
  cogent::sleep(110ms);  // past the Timeout's deadline
  gate.open();
  t.join(3s);
  REQUIRE(t.ready());
  CHECK(seen == std::vector<std::string>{"custom", "timeout"});
  tf = cogent::fiber();
}

// ---- 6. throw_in into finished fibers -------------------------------------------------------

// Was a bug (fixed): fiber/fiber.cpp:617-618 `catch (fiber_exit& x) { switch_slow(target,
// std::move(x.value()), ...) }` moves the value out of the shared exception object, so a second throw_in of
// the same exception_ptr (a stored/broadcast kill) carries an empty std::any (entry(), fiber.cpp:258, does
// the same for live fibers: pre-existing there). The same fiber_exit exception_ptr thrown into a finished
// fiber twice: greenlet returns the exception's value both times (it does not consume the exception object).
TEST_CASE("review14: the same fiber_exit thrown into a finished fiber twice returns its value twice") {
  cogent::fiber child([] { return 1; });
  child.switch_to();
  REQUIRE(child.dead());
  auto e = std::make_exception_ptr(cogent::fiber_exit(std::any(std::string("v"))));
  std::any first = child.throw_in(e);
  std::any second = child.throw_in(e);
  REQUIRE(first.has_value());
  CHECK(std::any_cast<std::string>(first) == "v");
  REQUIRE(second.has_value());
  CHECK(std::any_cast<std::string>(second) == "v");
}

// The same for live fibers: each one the kill unwinds returns the exception's value (entry()).
TEST_CASE("review14: the same fiber_exit thrown into two suspended fibers returns its value from each") {
  cogent::fiber main = cogent::fiber::current();
  auto body = [&main] { main.switch_to(); };
  cogent::fiber a(body);
  cogent::fiber b(body);
  a.switch_to();
  b.switch_to();
  auto e = std::make_exception_ptr(cogent::fiber_exit(std::any(std::string("w"))));
  std::any from_a = a.throw_in(e);
  std::any from_b = b.throw_in(e);
  CHECK(a.dead());
  CHECK(b.dead());
  REQUIRE(from_a.has_value());
  CHECK(std::any_cast<std::string>(from_a) == "w");
  REQUIRE(from_b.has_value());
  CHECK(std::any_cast<std::string>(from_b) == "w");
}

// ---- 7. manual switches from the main fiber into the hub fiber -----------------------------

// hub/core.hpp: "A switch_to()/throw_in() on the hub fiber itself raises fiber_error in the
// caller." From the thread's main fiber, after a join() returned (the hub is in run_one).
TEST_CASE("review14: main fiber switch_to / throw_in into the hub fiber after a join" *
          doctest::timeout(10)) {
  int code = in_fresh_thread_child([] {
    cogent::fiber hubf;
    auto t = cogent::spawn([&] { hubf = cogent::fiber::current().parent(); });
    t.join();
    try {
      hubf.switch_to(1);
      return 6;
    } catch (const cogent::fiber_error&) {
    }
    try {
      hubf.throw_in(std::make_exception_ptr(custom_error("hub")));
      return 7;
    } catch (const cogent::fiber_error&) {
    } catch (const custom_error&) {
      return 8;
    }
    auto t2 = cogent::spawn([] {
      cogent::sleep(2ms);
      return 4;
    });
    return t2.join(1s) && t2.get() == 4 ? 0 : 5;
  });
  CHECK(code == 0);
}

// Was a bug (fixed): when nothing could happen and main was suspended in a manual switch, the
// hub handed control back with a bare resume (not run_one(), so no answer_due()). A later
// switch_to(hub fiber) from main then returned an empty value (no fiber_error: code 60);
// throw_in(custom) raised inside the hub's loop, which unwound the hub fiber (code 180, every
// later wait hung); throw_in() (fiber_exit) unwound it too and returned normally (code 170).
//
// poke_hub_after_idle_handback() runs in a fresh-thread child: main switches by hand into a
// fiber that parks for good, so the idle hub hands control back to main; then poke(hub fiber)
// returns 0 if its switch was refused with fiber_error, else its own code. Returns hundreds:
// the hub fiber died; tens: poke's code; units: 5 if the hub cannot run a task afterwards.
template <class Poke>
int poke_hub_after_idle_handback(Poke poke) {
  return in_fresh_thread_child([&] {
    cogent::fiber hubf;
    auto t = cogent::spawn([&] { hubf = cogent::fiber::current().parent(); });
    t.join();
    cogent::event never;
    cogent::fiber x([&] { never.wait(); });
    (void)x.switch_to();  // back once the hub finds nothing to do
    int got = poke(hubf);
    if (hubf.dead()) {
      return got * 10 + 100;  // (every later wait would hang)
    }
    auto t2 = cogent::spawn([] {
      cogent::sleep(2ms);
      return 4;
    });
    int usable = t2.join(1s) && t2.get() == 4 ? 0 : 5;
    return got * 10 + usable;
  });
}

TEST_CASE("review14: main fiber switch_to into the hub fiber after the hub resumed it from a manual switch" *
          doctest::timeout(10)) {
  CHECK(poke_hub_after_idle_handback([](cogent::fiber& hubf) {
          try {
            hubf.switch_to(1);
            return 6;  // returned without fiber_error
          } catch (const cogent::fiber_error&) {
            return 0;
          }
        }) == 0);
}

TEST_CASE("review14: main fiber throw_in into the hub fiber after the hub resumed it from a manual switch" *
          doctest::timeout(10)) {
  CHECK(poke_hub_after_idle_handback([](cogent::fiber& hubf) {
          try {
            hubf.throw_in(std::make_exception_ptr(custom_error("hub")));
            return 7;
          } catch (const cogent::fiber_error&) {
            return 0;
          } catch (const custom_error&) {
            return 8;  // the exception came back out of the hub's loop
          }
        }) == 0);
}

TEST_CASE(
    "review14: main fiber throw_in(fiber_exit) into the hub fiber after the hub resumed it from a manual "
    "switch" *
    doctest::timeout(10)) {
  CHECK(poke_hub_after_idle_handback([](cogent::fiber& hubf) {
          try {
            hubf.throw_in();
            return 7;
          } catch (const cogent::fiber_error&) {
            return 0;
          } catch (const cogent::fiber_exit&) {
            return 8;
          }
        }) == 0);
}

}  // namespace

namespace {

// ---- 8. more main-fiber cases -----------------------------------------------------------------

// The main fiber waits with cogent::wait() on objects nothing can make ready: the hub raises
// would_block_forever in it (the links do not count as something that can happen), and the
// links are gone after.
TEST_CASE("review14: main fiber cogent::wait on objects nothing can complete raises, not hangs" *
          doctest::timeout(10)) {
  int code = in_fresh_thread_child([] {
    cogent::event e;
    cogent::async_result<int> r;
    auto never = cogent::spawn([] {
      cogent::event inner;
      inner.wait();
    });
    int got = 1;
    try {
      (void)cogent::wait({e, r, never});
    } catch (const cogent::would_block_forever&) {
      got = 0;
    } catch (...) {
      got = 2;
    }
    e.set();
    r.set(1);
    return got;
  });
  CHECK(code == 0);
}

// The main fiber, outside any wait, switches a value into and throws into a task parked in
// sleep: control comes straight back each time; the throw is raised at the task's sleep.
TEST_CASE("review14: main fiber switch_to / throw_in into a parked task from outside the hub" *
          doctest::timeout(10)) {
  int code = in_fresh_thread_child([] {
    cogent::fiber tf;
    bool caught = false;
    auto t = cogent::spawn([&] {
      tf = cogent::fiber::current();
      try {
        cogent::sleep(500ms);
      } catch (const custom_error&) {
        caught = true;
      }
    });
    cogent::sleep(1ms);  // t parks
    if (tf.switch_to(5).has_value()) {
      return 2;
    }
    if (t.ready()) {
      return 3;
    }
    tf.throw_in(std::make_exception_ptr(custom_error()));
    auto t0 = cogent::clock::now();
    if (!t.join(1s)) {
      return 4;
    }
    if (cogent::clock::now() - t0 > 200ms) {
      return 5;  // the sleep was not cut short
    }
    return caught ? 0 : 6;
  });
  CHECK(code == 0);
}

// A spawn_later task killed before it starts, watched by cogent::wait: ready, reported.
COGENT_TEST_CASE("review14: wait over a spawn_later task killed before it starts", doctest::timeout(10)) {
  auto late = cogent::spawn_later(1s, [] { return 1; });
  cogent::event e;
  auto killer = cogent::spawn([&] {
    cogent::sleep(2ms);
    late.kill(nullptr, false);
  });
  CHECK(cogent::wait({e, late}, 2s, 1) == positions{1});
  CHECK(late.ready());
  killer.join();
}

}  // namespace
