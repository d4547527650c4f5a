// tests/hub/coord_review3_test.cpp — third adversarial review of the coordination toolkit
// (hub/pool.hpp, hub/queue.hpp, hub/sync.hpp) against gevent's documented semantics
// (gevent.pool, gevent.queue, gevent.event, gevent.lock). Each case names the behaviour
// it expects.
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "hub/pool.hpp"
#include "hub/queue.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;

// ---- reordering queues: one waiting getter, two puts in one turn -----------------------
// gevent's PriorityQueue/LifoQueue getter takes the top item when it runs (Queue.get:
// `waiter.get(); return self._get()`). Put 5 then 1 in one turn with one getter waiting:
// when it runs the queue holds {5, 1} and it returns 1; 5 stays. cogent hands 5 to the
// getter at once and stores 1: the getter returns 5 while a smaller item sits in the queue.
// (give() keeps order among granted getters, but not between a granted getter and the store.)

COGENT_TEST_CASE("priority_queue: one waiting getter, two puts in one turn: the getter gets the smallest",
                 doctest::timeout(10)) {
  cogent::priority_queue<int> q;
  std::optional<int> got;
  auto g = cogent::spawn([&] { got = q.get(1s); });
  cogent::yield();
  REQUIRE(q.getters() == 1);
  q.put(5);
  q.put(1);  // same turn: the getter has not run
  g.join();
  REQUIRE(got.has_value());
  CHECK(*got == 1);
  REQUIRE(q.size() == 1);
  CHECK(q.get_nowait() == 5);
}

COGENT_TEST_CASE("lifo_queue: one waiting getter, two puts in one turn: the getter gets the last put",
                 doctest::timeout(10)) {
  cogent::lifo_queue<int> q;
  std::optional<int> got;
  auto g = cogent::spawn([&] { got = q.get(1s); });
  cogent::yield();
  REQUIRE(q.getters() == 1);
  q.put(1);
  q.put(2);  // same turn
  g.join();
  REQUIRE(got.has_value());
  CHECK(*got == 2);
  REQUIRE(q.size() == 1);
  CHECK(q.get_nowait() == 1);
}

// ---- group::kill(block): a member's own error after the kill is dropped, not reported --------
// task.hpp (kill): "a task that catches a fiber_exit kill and then fails with an error of its own
// has that error reported like any other (the killer, even with block, does not see it)".
// task_base::kill(block) and killall(block) wait as joiners that cannot look; group::kill(block)
// (pool.cpp) waits with joinall(), whose iwait hands every task out, i.e. counts as having
// looked: the error is never reported although group::kill() returns nothing.

struct own_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

COGENT_TEST_CASE("group::kill(block) reports a member's own error raised after the kill", doctest::timeout(10)) {
  cogent::test::error_reports r;
  cogent::group g;
  g.spawn([] {
    try {
      cogent::sleep(10s);
    } catch (const cogent::fiber_exit&) {
      throw own_error("cleanup failed");
    }
  });
  cogent::yield();  // it sleeps
  g.kill();         // block: waits for it
  CHECK(g.size() == 0);
  cogent::sleep(1ms);
  CHECK_MESSAGE(r.seen == std::vector<std::string>{"cleanup failed"}, "reports seen: ", r.seen.size());
}

COGENT_TEST_CASE("control: task_base::kill(block) reports the same member's own error", doctest::timeout(10)) {
  cogent::test::error_reports r;
  auto t = cogent::spawn([] {
    try {
      cogent::sleep(10s);
    } catch (const cogent::fiber_exit&) {
      throw own_error("cleanup failed");
    }
  });
  cogent::yield();
  t.kill();
  cogent::sleep(1ms);
  CHECK(r.seen == std::vector<std::string>{"cleanup failed"});
}

// ---- zero timeouts in the hub: pool::wait_available(0), group::join(0) ----------------------
// pool.hpp: "Inside the hub ... a call that would have to wait (join, spawn into a full pool,
// map) raises cogent::hub_error". With a zero timeout nothing has to wait (queue.hpp/sync.hpp:
// "zero never switches", "with a zero timeout it works there"; gevent's Pool.wait_available(0)
// is Semaphore.wait(0)). Both park on a wait_list with a deadline already passed instead.

COGENT_TEST_CASE("pool::wait_available(0) and group::join(0) on a busy pool answer false inside the hub",
                 doctest::timeout(10)) {
  cogent::pool p(1);
  cogent::event stop;
  p.spawn([&] { stop.wait(); });
  cogent::yield();
  REQUIRE(p.full());
  std::string avail = "not run", joined = "not run";
  cogent::test::in_hub([&] {
    try {
      avail = p.wait_available(0ms) ? "true" : "false";
    } catch (const cogent::hub_error& e) {
      avail = std::string("hub_error: ") + e.what();
    }
    try {
      joined = p.join(0ms) ? "true" : "false";
    } catch (const cogent::hub_error& e) {
      joined = std::string("hub_error: ") + e.what();
    }
  });
  CHECK(avail == "false");
  CHECK(joined == "false");
  stop.set();
  p.join();
}

}  // namespace
