// tests/hub/fixes_review_test.cpp — review of the hub fixes of 1 Dec 2026 (05a118a, 36a2b82,
// c0632ed, e6f32ea, 1e95138). Each case states the behaviour the headers promise.
#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "fiber/fiber.hpp"
#include "hub/hub.hpp"
#include "tests/support.hpp"

namespace {

using cogent::test::in_hub;

using namespace std::chrono_literals;

// A capture whose last copy blocks in its destructor: the task's function is
// destroyed after its body returned (status releasing), and that takes a while.
struct slow_to_destroy {
  ~slow_to_destroy() { cogent::sleep(50ms); }
};

// e6f32ea: hub/task.hpp, task_base::kill(): "From a timer or post() callback (in the hub), which
// cannot wait, it never blocks (block is ignored there: the kill is sent and kill() returns)."
COGENT_TEST_CASE("kill() with the default block from a post() callback does not raise hub_error for a task whose function is being destroyed",
                 doctest::timeout(10)) {
  auto t = cogent::spawn([g = std::make_shared<slow_to_destroy>()] { (void)g; });
  cogent::sleep(5ms);  // the body has returned; its capture's destructor sleeps (releasing)
  REQUIRE(!t.ready());
  bool threw = false;
  std::string what;
  in_hub([&] {
    try {
      t.kill();
    } catch (const cogent::hub_error& e) {
      threw = true;
      what = e.what();
    }
  });
  CHECK_MESSAGE(!threw, "kill() raised in the hub: ", what);
  t.join(1s);
  CHECK(t.ready());
}

// 36a2b82: hub/sync.hpp, "destroying one of them (...) while fibers wait on it is a bug in the
// program; each of those waits raises cogent::hub_error (...) rather than touch freed memory".
// A getter woken by set() but not yet run is still inside get(): destroying the result right
// after set() (the producer's frame ends) must not make get() read freed memory.
COGENT_TEST_CASE("async_result destroyed right after set() with a getter not yet run: get() returns the value or raises hub_error, never reads freed memory",
                 doctest::timeout(10)) {
  auto r = std::make_unique<cogent::async_result<std::string>>();
  std::string got;
  bool orphaned = false;
  auto getter = cogent::spawn([&] {
    try {
      got = r->get();
    } catch (const cogent::hub_error&) {
      orphaned = true;
    }
  });
  cogent::yield();  // the getter is parked in get()
  REQUIRE(r->waiters() == 1);
  r->set(std::string(64, 'x'));
  r.reset();  // destroyed before the woken getter runs
  getter.join(1s);
  CHECK(getter.ready());
  CHECK((orphaned || got == std::string(64, 'x')));
}

// Same gap for a pool: a slot waiter woken by a member leaving, the pool then destroyed before
// the waiter ran: wait_available() reads the freed pool (full()).
COGENT_TEST_CASE("pool destroyed after a slot freed and before the woken wait_available() ran: the wait raises hub_error, never reads freed memory",
                 doctest::timeout(10)) {
  auto p = std::make_unique<cogent::pool>(1);
  auto member = p->spawn([] { cogent::sleep(5ms); });
  bool orphaned = false;
  bool available = false;
  auto waiter = cogent::spawn([&] {
    try {
      available = p->wait_available();
    } catch (const cogent::hub_error&) {
      orphaned = true;
    }
  });
  cogent::yield();  // the waiter is parked in wait_available()
  member.join();    // we are woken before the waiter (joiners go before the pool's link)
  p.reset();
  waiter.join(1s);
  CHECK(waiter.ready());
  CHECK((orphaned || available));
}

// Same gap for queue::peek(): a peeker woken by a put, the queue destroyed before it ran.
COGENT_TEST_CASE("queue destroyed after a put woke a peeker and before it ran: peek() raises hub_error, never reads freed memory",
                 doctest::timeout(10)) {
  auto q = std::make_unique<cogent::queue<std::string>>();
  bool orphaned = false;
  std::string seen;
  auto peeker = cogent::spawn([&] {
    try {
      seen = q->peek();
    } catch (const cogent::hub_error&) {
      orphaned = true;
    }
  });
  cogent::yield();
  q->put(std::string(64, 'y'));
  q.reset();
  peeker.join(1s);
  CHECK(peeker.ready());
  CHECK((orphaned || seen == std::string(64, 'y')));
}

}  // namespace
