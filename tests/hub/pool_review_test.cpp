// tests/hub/pool_review_test.cpp — groups, pools and fiber_local against the
// task semantics of the one-block merge: a task's function and arguments go
// when it finishes, on its own stack; fiber_local values go once its fiber
// has switched away for the last time.
#include "hub/local.hpp"
#include "hub/pool.hpp"
#include "hub/task.hpp"

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/child.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;

// slow_to_destroy blocks in its destructor (as a captured object whose
// teardown waits, e.g. on another task) and records when it is done.
struct slow_to_destroy {
  int* done = nullptr;
  bool* inside = nullptr;
  slow_to_destroy(int* d, bool* in) : done(d), inside(in) {}
  slow_to_destroy(slow_to_destroy&& o) noexcept
      : done(std::exchange(o.done, nullptr)), inside(std::exchange(o.inside, nullptr)) {}
  ~slow_to_destroy() {
    if (done == nullptr) {
      return;
    }
    if (inside != nullptr) {
      *inside = true;
    }
    cogent::sleep(5ms);
    if (inside != nullptr) {
      *inside = false;
    }
    ++*done;
  }
};

// item_slow_to_destroy is a range item whose armed copies block in their destructor.
struct item_slow_to_destroy {
  int* done;
  item_slow_to_destroy(int* d) : done(d) {}
  item_slow_to_destroy(const item_slow_to_destroy& o) : done(o.done) {}
  item_slow_to_destroy(item_slow_to_destroy&& o) noexcept : done(std::exchange(o.done, nullptr)) {}
  ~item_slow_to_destroy() {
    if (done != nullptr) {
      cogent::sleep(1ms);
      ++*done;
    }
  }
};

COGENT_TEST_CASE("group: join() returns once a member's function is destroyed, not before", doctest::timeout(10)) {
  // The caller's frame may go as soon as join() returns: what the member's
  // function refers to must not be used after that.
  int done = 0;
  cogent::group g;
  g.spawn([s = slow_to_destroy(&done, nullptr)] { (void)s; });
  CHECK(g.join());
  CHECK(done == 1);
  // map(): the members' copies of the items go before map() returns.
  int items_done = 0;
  {
    std::vector<item_slow_to_destroy> tracked;
    tracked.emplace_back(&items_done);
    tracked.emplace_back(&items_done);
    auto r = g.map([](const item_slow_to_destroy&) { return 1; }, tracked);
    CHECK(r.size() == 2);
    CHECK(items_done == 2);
  }
  // A plain get() of the task handle also waits for its function to go.
  int t_done = 0;
  auto t = cogent::spawn([s = slow_to_destroy(&t_done, nullptr)] { return 3; });
  CHECK(t.get() == 3);
  CHECK(t_done == 1);
}

COGENT_TEST_CASE("pool: a member still destroying its function holds its slot", doctest::timeout(10)) {
  int done = 0;
  bool inside = false;
  bool overlapped = false;
  cogent::pool p(1);
  p.spawn([s = slow_to_destroy(&done, &inside)] { (void)s; });
  p.spawn([&] { overlapped = inside; });  // waits for the slot
  CHECK(p.join());
  CHECK(done == 1);
  CHECK_FALSE(overlapped);
}

COGENT_TEST_CASE("group: a kill while a member is in its function's destructor is moot, and block waits for it",
                 doctest::timeout(10)) {
  // The body has ended: a kill must not go off in the destructor (noexcept: terminate).
  int done = 0;
  bool inside = false;
  cogent::group g;
  auto t = g.spawn([s = slow_to_destroy(&done, &inside)] { return 1; });
  while (!inside) {
    cogent::sleep(0ms);
  }
  g.kill();  // block: waits until it is done
  CHECK(done == 1);
  CHECK(t.ready());
  CHECK(t.get() == 1);  // it finished by itself: not killed
  CHECK_FALSE(t.killed());
  // A task that kills itself from its function's destructor.
  struct kills_itself {
    bool armed = true;
    kills_itself() = default;
    kills_itself(kills_itself&& o) noexcept : armed(std::exchange(o.armed, false)) {}
    ~kills_itself() {
      if (armed) {
        cogent::current_task().kill();
      }
    }
  };
  auto u = cogent::spawn([k = kills_itself{}] { return 2; });
  CHECK(u.get() == 2);
}

COGENT_TEST_CASE("imap_unordered: a stream left early waits for the items its tasks still destroy",
                 doctest::timeout(10)) {
  int done = 0;
  cogent::pool p(2);
  std::vector<item_slow_to_destroy> items;
  for (int i = 0; i < 4; ++i) {
    items.emplace_back(&done);
  }
  {
    auto stream = p.imap_unordered([](const item_slow_to_destroy&) { return 1; }, items);
    CHECK(stream.next() == 1);
  }
  // The stream's copies of the items (in the members, in the feeder) are all gone.
  CHECK(done == 4);
  CHECK(p.join());
}

COGENT_TEST_CASE("fiber_local: read from a function argument's destructor, it is the task's and it goes",
                 doctest::timeout(10)) {
  struct probe {
    int* gone = nullptr;
    ~probe() {
      if (gone != nullptr) {
        ++*gone;
      }
    }
  };
  static cogent::fiber_local<probe> local;
  static cogent::fiber_local<int> marker;
  int gone = 0;
  int seen = -1;
  struct touches_local {
    int* gone;
    int* seen;
    touches_local(int* g, int* s) : gone(g), seen(s) {}
    touches_local(touches_local&& o) noexcept : gone(std::exchange(o.gone, nullptr)), seen(o.seen) {}
    ~touches_local() {
      if (gone != nullptr) {
        *seen = *marker;  // the dying task's own value
        local->gone = gone;
      }
    }
  };
  auto t = cogent::spawn(
      [](const touches_local&) {
        *marker = 42;
        cogent::sleep(1ms);
      },
      touches_local(&gone, &seen));
  t.join();
  cogent::sleep(1ms);
  CHECK(seen == 42);
  CHECK(gone == 1);  // made in the dying task's storage, freed with it
  CHECK_FALSE(marker.has_value());
  CHECK_FALSE(local.has_value());
}

COGENT_TEST_CASE("fiber_local: a value's destructor that spawns a task and touches other locals",
                 doctest::timeout(10)) {
  static cogent::fiber_local<int> other;
  static bool spawned_ran = false;
  static int other_seen = -1;
  struct spawner {
    bool armed = false;
    ~spawner() {
      if (armed) {
        other_seen = *other;  // the fiber destroying us (not the dead task's storage)
        cogent::spawn([] { spawned_ran = true; });
      }
    }
  };
  static cogent::fiber_local<spawner> local;
  auto t = cogent::spawn([] {
    *other = 9;
    local->armed = true;
  });
  t.join();
  cogent::sleep(5ms);
  CHECK(spawned_ran);
  CHECK(other_seen != 9);
}

COGENT_TEST_CASE("fiber_local: a value holding the last handle to its own task or fiber", doctest::timeout(10)) {
  // The values go once the fiber has finished, before the fiber layer looks
  // at its reference count: dropping the last handle there must not free the
  // control block under it.
  static cogent::fiber_local<cogent::task_base> own_task;
  static int ran = 0;
  cogent::spawn([] {
    *own_task = cogent::current_task();
    ++ran;
  });  // the returned handle is dropped at once
  cogent::sleep(2ms);
  CHECK(ran == 1);
  static cogent::fiber_local<cogent::fiber> own_fiber;
  cogent::fiber f([] {
    *own_fiber = cogent::fiber::current();
    return 2;
  });
  CHECK(f.switch_to<int>() == 2);
  f = {};
}

}  // namespace

// A task killed by spawn_later's timer before it started, kept by a handle:
// like a finished task that ran, it must not hold the hub fiber (dropping the
// handle after the thread ended reached into that thread's dead hub).
TEST_CASE("a task killed before spawn_later started it, its handle dropped after its thread ended" *
          doctest::timeout(20)) {
  cogent::test::child_result r = cogent::test::run_in_child([] {
    cogent::task<int> kept;
    std::thread([&] {
      cogent::sleep(1ms);  // the hub fiber has run (it is suspended in its loop from now on)
      kept = cogent::spawn_later(1s, [] { return 5; });
      kept.kill();
      std::fprintf(stderr, "killed=%d\n", kept.killed() ? 1 : 0);
    }).join();
    kept = {};
    std::fprintf(stderr, "dropped\n");
  });
  INFO("child stderr: " << r.err);
  CHECK(r.exited(0));
  CHECK(r.err.find("killed=1") != std::string::npos);
  CHECK(r.err.find("dropped") != std::string::npos);
  CHECK(r.err.find("cogent:") == std::string::npos);
  CHECK(r.err.find("Sanitizer") == std::string::npos);
}
