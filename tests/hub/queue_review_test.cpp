// tests/hub/queue_review_test.cpp — adversarial review of hub/queue.hpp and hub/sync.hpp/.cpp.
// Cases 1-4 failed before the fix that came with this file: a get() whose admission of a waiting
// putter's item threw lost its own item (now the putter's put() raises it), async_result::set()
// whose T construction threw left a destroyed value "ready", a getter whose Timeout was withdrawn
// was handed a newer item while older ones were stored, a priority_queue put() whose move threw
// left its item half-sifted in the heap (now a node-based ordered store: FIFO among equals too).
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "hub/queue.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "tests/support.hpp"

namespace {

using cogent::test::picky;

using namespace std::chrono_literals;

// ---- 1. get() loses the item it removed when admitting a waiting putter's item throws ----------
// queue.hpp: "Loses nothing ... a waiting putter's item straight into the freed slot". get() pops
// its item into a local slot, then admit_putter() moves the putter's item into the queue; if that
// move throws, get() propagates the exception and the item it popped is destroyed with the slot.
COGENT_TEST_CASE("review: get() that cannot admit a waiting putter's item loses no item",
                 doctest::timeout(10)) {
  picky::throw_on = -1;
  cogent::queue<picky> q(1);
  q.put(picky(1));
  bool put_returned = false;
  auto p = cogent::spawn([&] {
    try {
      q.put(picky(2));  // blocks: the queue is full
      put_returned = true;
    } catch (const std::runtime_error&) {
    }
  });
  cogent::sleep(1ms);
  REQUIRE(q.putters() == 1);
  picky::throw_on = 2;  // moving the putter's item into the queue now throws
  std::optional<int> got;
  try {
    got = q.get().v;
  } catch (const std::runtime_error&) {
  }
  picky::throw_on = -1;
  // Either get() returned item 1, or it failed and item 1 is still in the queue.
  bool item1_kept = got == 1 || (q.size() >= 1 && q.peek_nowait().v == 1);
  CHECK_MESSAGE(item1_kept, "item 1 was removed from the queue and destroyed");
  // Nor may the putter stay blocked on a queue that has room.
  CHECK_FALSE((q.putters() == 1 && !q.full()));
  p.kill();
}

// ---- 2. async_result::set() that throws while replacing a value ----------------------------------
// sync.hpp: "set() again replaces the stored outcome". set() calls _value.emplace(), which destroys
// the old value before constructing the new one; if that construction throws, _ready stays true and
// _error null: successful() is true while no value is stored, and get() copies a destroyed object
// (with std::string: an ASan heap-use-after-free). Checked here by counting live values, without
// reading the dead one.
struct bad_source {};
struct tracked {
  static inline int alive = 0;
  int v;
  explicit tracked(int x) : v(x) { ++alive; }
  explicit tracked(bad_source) : v(0) { throw std::runtime_error("tracked: construction throws"); }
  tracked(const tracked& o) : v(o.v) { ++alive; }
  tracked& operator=(const tracked&) = default;
  ~tracked() { --alive; }
};

COGENT_TEST_CASE("review: async_result set() that throws keeps the previous value readable",
                 doctest::timeout(10)) {
  {
    cogent::async_result<tracked> r;
    r.set(tracked(1));
    REQUIRE(tracked::alive == 1);
    CHECK_THROWS_AS(r.set(bad_source{}), std::runtime_error);
    REQUIRE(r.ready());
    CHECK(r.successful());
    // A successful result must hold a live value for get() to return.
    CHECK_MESSAGE(tracked::alive == 1, "the stored value was destroyed; get() would read a dead object");
  }
  tracked::alive = 0;
}

// ---- 3. FIFO order around a getter its Timeout woke ------------------------------------------------
// queue.hpp: FIFO; "get() removes and returns the next item". While getter w's Timeout is pending,
// put(1) skips it (first() passes over leaving waiters) and stores 1. Another fiber then cancels the
// Timeout — too late: w was woken by it and raises it (timeout.hpp) — and put(2) must queue 2 behind
// 1, not hand it to w. (When such a cancel still withdrew the error, w stayed linked as an ordinary
// waiter and got 2 while 1 was stored ahead of it.)
COGENT_TEST_CASE("review: items put around a getter its Timeout woke stay in FIFO order",
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
    return q.get(500ms);
  });
  auto c = cogent::spawn([&] {
    cogent::test::cancel_when_expired(to, [&q] { q.put(1); });  // w is leaving: 1 is stored
    q.put(2);
  });
  c.join();
  CHECK_THROWS_AS(w.get(), cogent::timeout_error);
  CHECK(q.get_nowait() == 1);
  CHECK(q.get_nowait() == 2);
}

// ---- 4. priority_queue put() whose item's move throws inside push_heap -----------------------------
// heap_store::push() does push_back() then std::push_heap(), which moves the new item again; if that
// move throws, the item stays in the vector (unsifted: the heap order is broken) while put() reports
// failure, so a caller that retries adds it twice, and later gets come out of order.
// counted is an item whose move constructor throws at a chosen move of a chosen value.
struct counted {
  static inline int target = -1;
  static inline int moves_left = 0;  // moves of `target` still allowed before one throws
  int v;
  explicit counted(int x) : v(x) {}
  counted(const counted&) = default;
  counted& operator=(const counted&) = default;
  counted& operator=(counted&&) = default;
  counted(counted&& o) : v(o.v) {
    if (o.v == target && moves_left-- == 0) {
      throw std::runtime_error("counted: move throws");
    }
  }
  bool operator<(const counted& o) const { return v < o.v; }
};

COGENT_TEST_CASE("review: priority_queue put() whose item move throws adds no item and keeps the order", doctest::timeout(10)) {
  cogent::priority_queue<counted> q;
  q.put(counted(5));
  q.put(counted(7));
  // put(T) takes the prvalue without a move; store -> push_back is move 1; push_heap moves it again.
  counted::target = 1;
  counted::moves_left = 1;
  bool threw = false;
  try {
    q.put(counted(1));
  } catch (const std::runtime_error&) {
    threw = true;
  }
  counted::target = -1;
  if (threw) {
    CHECK_MESSAGE(q.size() == 2, "put() threw, yet the item is in the queue");
    std::vector<int> out;
    while (!q.empty()) {
      out.push_back(q.get_nowait().v);
    }
    CHECK(out == std::vector<int>{5, 7});
  }
}

// ---- controls (passing; not covered elsewhere) ------------------------------------------------------

TEST_CASE("control: primitives work on a thread without a hub; blocking with nothing to wait for raises") {
  std::thread th([] {
    cogent::lock mu;
    CHECK(mu.try_lock());
    CHECK(mu.owned());
    mu.unlock();
    cogent::rlock r;
    r.acquire();
    r.acquire();
    CHECK(r.count() == 2);
    r.release();
    r.release();
    CHECK_FALSE(r.locked());
    cogent::semaphore s(0);
    CHECK_FALSE(s.acquire(0ms));
    CHECK_FALSE(s.acquire(-5ms));
    cogent::event e;
    CHECK_FALSE(e.wait(0ms));
    cogent::queue<int> q;
    CHECK_THROWS_AS(q.get_nowait(), cogent::queue_empty);
    q.put(1);
    CHECK(q.get() == 1);
    CHECK(cogent::hub::current_if_exists() == nullptr);
    CHECK_FALSE(s.acquire(5ms));
    CHECK_THROWS_AS(e.wait(), cogent::would_block_forever);
    CHECK(e.waiters() == 0);
    CHECK_THROWS_AS(q.get(), cogent::would_block_forever);
    CHECK(q.getters() == 0);
    cogent::joinable_queue<int> jq;
    jq.put(1);
    CHECK_THROWS_AS(jq.join(), cogent::would_block_forever);
    CHECK_FALSE(jq.join(-1ms));
  });
  th.join();
}

COGENT_TEST_CASE("control: Timeout scopes and zero/negative timeouts on peek, join, put, get, async_result", doctest::timeout(10)) {
  cogent::joinable_queue<int> q(1);
  {
    cogent::timeout t(5ms);
    CHECK_THROWS_AS(q.peek(), cogent::timeout_error);
  }
  q.put(1);
  {
    cogent::timeout t(5ms);
    CHECK_THROWS_AS(q.join(), cogent::timeout_error);
  }
  {
    cogent::timeout t(5ms);
    CHECK_THROWS_AS(q.put(2), cogent::timeout_error);
  }
  CHECK(q.size() == 1);
  CHECK(q.unfinished_tasks() == 1);
  CHECK(q.get() == 1);
  q.task_done();
  {
    cogent::timeout t(5ms);
    CHECK_THROWS_AS(q.get(), cogent::timeout_error);
  }
  CHECK(q.getters() == 0);
  CHECK(q.putters() == 0);
  cogent::async_result<void> ar;
  CHECK_THROWS_AS(ar.get(0ms), cogent::timeout_error);
  CHECK_THROWS_AS(ar.get(-1ms), cogent::timeout_error);
  CHECK_FALSE(ar.wait(-1ms));
  {
    cogent::timeout t(5ms);
    CHECK_THROWS_AS(ar.get(), cogent::timeout_error);
  }
  ar.set();
  ar.get();
  cogent::async_result<std::unique_ptr<int>> mo;
  mo.set(std::make_unique<int>(4));
  CHECK(*mo.get() == 4);
}

}  // namespace

COGENT_TEST_CASE("review: priority_queue gives equal items in the order they were put", doctest::timeout(10)) {
  using job = std::pair<int, int>;  // (priority, sequence): compared on the priority only
  auto by_priority = [](const job& a, const job& b) { return a.first < b.first; };
  cogent::priority_queue<job, decltype(by_priority)> q(0, by_priority);
  for (int i = 0; i < 20; ++i) {
    q.put({i % 3, i});
  }
  std::vector<int> seq;
  int last_priority = -1;
  while (!q.empty()) {
    job j = q.get_nowait();
    CHECK(j.first >= last_priority);
    if (j.first == last_priority) {
      CHECK(j.second > seq.back());
    }
    last_priority = j.first;
    seq.push_back(j.second);
  }
  CHECK(seq.size() == 20);
}
