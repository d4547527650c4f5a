// tests/hub/queue_test.cpp — queue, lifo_queue, priority_queue, joinable_queue
// and channel: blocking and nowait calls, timeouts, FIFO service of getters and
// putters, kill/Timeout of a blocked getter or putter (nothing lost, nothing
// left behind), priority order, producer–consumer with sentinel shutdown and
// channel rendezvous.
#include "hub/queue.hpp"

#include <chrono>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;
using cogent::clock;

std::chrono::milliseconds since(clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - t0);
}

// ---- queue: basics ---------------------------------------------------------------

COGENT_TEST_CASE("queue: FIFO put/get, size, empty, full, maxsize", doctest::timeout(10)) {
  cogent::queue<int> q;
  CHECK(q.empty());
  CHECK_FALSE(q.full());
  CHECK(q.maxsize() == 0);
  for (int i = 0; i < 100; ++i) {
    q.put(i);
  }
  CHECK(q.size() == 100);
  CHECK_FALSE(q.full());  // unbounded
  for (int i = 0; i < 100; ++i) {
    CHECK(q.get() == i);
  }
  CHECK(q.empty());

  cogent::queue<std::string> b(2);
  CHECK(b.maxsize() == 2);
  b.put_nowait("a");
  b.put_nowait("b");
  CHECK(b.full());
  CHECK_THROWS_AS(b.put_nowait("c"), cogent::queue_full);
  CHECK(b.size() == 2);
  CHECK(b.peek() == "a");
  CHECK(b.peek_nowait() == "a");
  CHECK(b.get_nowait() == "a");
  CHECK(b.get_nowait() == "b");
  CHECK_THROWS_AS(b.get_nowait(), cogent::queue_empty);
  CHECK_THROWS_AS(b.peek_nowait(), cogent::queue_empty);
}

COGENT_TEST_CASE("queue: move-only items", doctest::timeout(10)) {
  cogent::queue<std::unique_ptr<int>> q(1);
  auto getter = cogent::spawn([&] { return *q.get() + *q.get(); });
  q.put(std::make_unique<int>(1));
  q.put(std::make_unique<int>(2));  // may block until the getter took the first
  CHECK(getter.get() == 3);
}

COGENT_TEST_CASE("queue: get blocks until put; get, peek and put time out", doctest::timeout(10)) {
  cogent::queue<int> q(1);
  auto getter = cogent::spawn([&] { return q.get(); });
  cogent::sleep(2ms);
  CHECK(q.getters() == 1);
  q.put(7);
  CHECK(q.empty());  // handed straight to the getter
  CHECK(getter.get() == 7);

  auto t0 = clock::now();
  CHECK_THROWS_AS(q.get(20ms), cogent::queue_empty);
  CHECK(since(t0) >= 19ms);
  CHECK_THROWS_AS(q.peek(5ms), cogent::queue_empty);
  CHECK(q.getters() == 0);

  q.put(1);
  t0 = clock::now();
  CHECK_THROWS_AS(q.put(2, 20ms), cogent::queue_full);
  CHECK(since(t0) >= 19ms);
  CHECK(q.size() == 1);  // the timed-out item was not added
  CHECK(q.putters() == 0);
  CHECK(q.get() == 1);
}

COGENT_TEST_CASE("queue: zero timeouts never switch", doctest::timeout(10)) {
  cogent::queue<int> q(1);
  bool other_ran = false;
  auto t = cogent::spawn([&] { other_ran = true; });
  CHECK_THROWS_AS(q.get(0ms), cogent::queue_empty);
  q.put(1);
  CHECK_THROWS_AS(q.put(2, 0ms), cogent::queue_full);
  CHECK_FALSE(other_ran);
  t.join();
  CHECK(q.get() == 1);
}

COGENT_TEST_CASE("queue: put blocks while full and resumes in FIFO order", doctest::timeout(10)) {
  cogent::queue<int> q(1);
  q.put(0);
  std::vector<cogent::task<void>> putters;
  for (int i = 1; i <= 4; ++i) {
    putters.push_back(cogent::spawn([&q, i] { q.put(i); }));
    cogent::yield();
  }
  CHECK(q.putters() == 4);
  std::vector<int> got;
  for (int i = 0; i <= 4; ++i) {
    got.push_back(q.get());
  }
  cogent::joinall(putters);
  CHECK(got == std::vector<int>{0, 1, 2, 3, 4});
  CHECK(q.empty());
}

COGENT_TEST_CASE("queue: waiting getters are served in FIFO order", doctest::timeout(10)) {
  cogent::queue<int> q;
  std::vector<cogent::task<int>> getters;
  for (int i = 0; i < 4; ++i) {
    getters.push_back(cogent::spawn([&] { return q.get(); }));
    cogent::yield();
  }
  CHECK(q.getters() == 4);
  for (int i = 0; i < 4; ++i) {
    q.put(i * 10);
  }
  CHECK_THROWS_AS(q.get_nowait(), cogent::queue_empty);  // a newcomer cannot barge
  for (int i = 0; i < 4; ++i) {
    CHECK(getters[i].get() == i * 10);
  }
}

COGENT_TEST_CASE("queue: peek waits for an item without taking it", doctest::timeout(10)) {
  cogent::queue<int> q;
  auto peeker = cogent::spawn([&] { return q.peek(); });
  cogent::sleep(1ms);
  q.put(5);
  CHECK(peeker.get() == 5);
  CHECK(q.size() == 1);
  CHECK(q.get() == 5);
}

// ---- queue: kill and Timeout of a waiter -------------------------------------------

COGENT_TEST_CASE("queue: a peeker is killed or timed out at its wait, and the queue is intact",
                 doctest::timeout(10)) {
  cogent::queue<int> q;
  auto peeker = cogent::spawn([&] { return q.peek(); });
  cogent::sleep(1ms);
  peeker.kill();
  CHECK(peeker.ready());
  CHECK(peeker.successful());  // fiber_exit: a quiet finish
  CHECK_FALSE(cogent::try_with_timeout(5ms, [&] { return q.peek(); }).has_value());
  q.put(9);  // nobody is left waiting: the item is stored, not handed to a dead peeker
  CHECK(q.size() == 1);
  CHECK(q.get() == 9);
}

COGENT_TEST_CASE("queue: a killed getter loses no item", doctest::timeout(10)) {
  cogent::queue<int> q;
  auto victim = cogent::spawn([&] { return q.get(); });
  auto other = cogent::spawn([&] { return q.get(); });
  cogent::sleep(1ms);
  victim.kill(nullptr, false);  // still linked when the put comes
  q.put(1);                     // must skip the victim
  victim.join();
  CHECK(victim.killed());
  CHECK(other.get() == 1);

  auto lone = cogent::spawn([&] { return q.get(); });
  cogent::sleep(1ms);
  lone.kill();
  q.put(2);
  CHECK(q.size() == 1);  // nobody waiting: stored
  CHECK(q.get() == 2);
}

COGENT_TEST_CASE("queue: a getter whose Timeout fires loses no item", doctest::timeout(10)) {
  cogent::queue<int> q;
  auto g = cogent::spawn([&] {
    cogent::timeout t(5ms);
    try {
      return q.get();
    } catch (const cogent::timeout_error&) {
      return -1;
    }
  });
  CHECK(g.get() == -1);
  q.put(3);
  CHECK(q.size() == 1);
  CHECK(q.get() == 3);
}

COGENT_TEST_CASE("queue: an item handed to a getter before its kill is returned", doctest::timeout(10)) {
  cogent::queue<int> q;
  std::vector<int> received;
  auto g = cogent::spawn([&] {
    received.push_back(q.get());
    cogent::sleep(1s);  // the pending kill is raised here
  });
  cogent::sleep(1ms);
  q.put(9);                // handed over
  g.kill(nullptr, false);  // same turn
  g.join();
  CHECK(g.killed());
  CHECK(received == std::vector<int>{9});
  CHECK(q.empty());
}

COGENT_TEST_CASE("queue: a killed or timed-out putter leaves no item behind", doctest::timeout(10)) {
  cogent::queue<int> q(1);
  q.put(0);
  auto victim = cogent::spawn([&] { q.put(1); });
  auto other = cogent::spawn([&] { q.put(2); });
  cogent::sleep(1ms);
  CHECK(q.putters() == 2);
  victim.kill(nullptr, false);
  CHECK(q.get() == 0);  // frees a slot: must go to `other`, not the victim
  victim.join();
  other.join();
  CHECK(victim.killed());
  CHECK(q.size() == 1);
  CHECK(q.get() == 2);

  q.put(3);
  auto timed = cogent::spawn([&] {
    cogent::timeout t(5ms);
    try {
      q.put(4);
      return false;
    } catch (const cogent::timeout_error&) {
      return true;
    }
  });
  CHECK(timed.get());
  CHECK(q.size() == 1);
  CHECK(q.get() == 3);
  CHECK(q.empty());
  CHECK(q.putters() == 0);
}

// ---- lifo and priority --------------------------------------------------------------

COGENT_TEST_CASE("lifo_queue: last in, first out; blocking get", doctest::timeout(10)) {
  cogent::lifo_queue<int> s;
  s.put(1);
  s.put(2);
  s.put(3);
  CHECK(s.peek() == 3);
  CHECK(s.get() == 3);
  CHECK(s.get() == 2);
  CHECK(s.get() == 1);
  auto g = cogent::spawn([&] { return s.get(); });
  cogent::sleep(1ms);
  s.put(4);
  CHECK(g.get() == 4);
  cogent::lifo_queue<int> b(1);
  b.put(1);
  CHECK_THROWS_AS(b.put(2, 1ms), cogent::queue_full);
}

COGENT_TEST_CASE("priority_queue: smallest first, custom compare, bounded", doctest::timeout(10)) {
  cogent::priority_queue<int> pq;
  for (int v : {5, 1, 4, 2, 3, 9, 0}) {
    pq.put(v);
  }
  CHECK(pq.peek() == 0);
  std::vector<int> out;
  while (!pq.empty()) {
    out.push_back(pq.get());
  }
  CHECK(out == std::vector<int>{0, 1, 2, 3, 4, 5, 9});

  cogent::priority_queue<std::pair<int, std::string>> jobs;
  jobs.put({2, "later"});
  jobs.put({1, "first"});
  jobs.put({3, "last"});
  CHECK(jobs.get().second == "first");
  CHECK(jobs.get().second == "later");
  CHECK(jobs.get().second == "last");

  cogent::priority_queue<int, std::greater<int>> maxq(3);
  auto producer = cogent::spawn([&] {
    for (int v : {1, 7, 3, 8, 2}) {
      maxq.put(v);
    }
  });
  cogent::sleep(1ms);
  CHECK(maxq.full());
  CHECK(maxq.get() == 7);  // {1,7,3} stored; then the blocked 8 is admitted
  CHECK(maxq.get() == 8);  // then the blocked 2
  producer.join();
  out.clear();
  while (!maxq.empty()) {
    out.push_back(maxq.get());
  }
  CHECK(out == std::vector<int>{3, 2, 1});
}

// ---- joinable_queue -------------------------------------------------------------------

COGENT_TEST_CASE("joinable_queue: task_done, join, unfinished_tasks, over-call", doctest::timeout(10)) {
  cogent::joinable_queue<int> q;
  CHECK(q.join(0ms));
  CHECK_THROWS_AS(q.task_done(), cogent::queue_error);
  q.put(1);
  q.put(2);
  CHECK(q.unfinished_tasks() == 2);
  CHECK_FALSE(q.join(5ms));
  auto joiner = cogent::spawn([&] { return q.join(); });
  q.get();
  q.task_done();
  cogent::sleep(1ms);
  CHECK_FALSE(joiner.ready());
  q.get();
  q.task_done();
  CHECK(q.unfinished_tasks() == 0);
  CHECK(joiner.get());
  CHECK_THROWS_AS(q.task_done(), cogent::queue_error);

  // An item handed straight to a waiting getter counts too.
  auto g = cogent::spawn([&] { return q.get(); });
  cogent::sleep(1ms);
  q.put(3);
  CHECK(q.unfinished_tasks() == 1);
  CHECK(g.get() == 3);
  auto killed_joiner = cogent::spawn([&] { q.join(); });
  cogent::sleep(1ms);
  killed_joiner.kill();
  CHECK(killed_joiner.killed());
  q.task_done();
  CHECK(q.join(0ms));
}

COGENT_TEST_CASE("joinable_queue: producers and consumers with sentinel shutdown", doctest::timeout(20)) {
  constexpr int producers = 4;
  constexpr int consumers = 3;
  constexpr int per_producer = 250;
  cogent::joinable_queue<int> q(8);
  std::vector<long> consumed(consumers, 0);
  std::vector<int> counts(consumers, 0);
  std::vector<cogent::task<void>> cs;
  for (int c = 0; c < consumers; ++c) {
    cs.push_back(cogent::spawn([&, c] {
      for (;;) {
        int v = q.get();
        if (v < 0) {
          q.task_done();
          return;
        }
        consumed[c] += v;
        ++counts[c];
        if (v % 7 == 0) {
          cogent::yield();
        }
        q.task_done();
      }
    }));
  }
  std::vector<cogent::task<void>> ps;
  for (int p = 0; p < producers; ++p) {
    ps.push_back(cogent::spawn([&, p] {
      for (int i = 1; i <= per_producer; ++i) {
        q.put(p * per_producer + i);
        if (i % 11 == 0) {
          cogent::sleep(0ms);
        }
      }
    }));
  }
  cogent::joinall(ps);
  CHECK(q.join(5s));  // every item processed
  for (int c = 0; c < consumers; ++c) {
    q.put(-1);  // one sentinel per consumer
  }
  cogent::joinall(cs);
  for (auto& c : cs) {
    CHECK(c.successful());
  }
  long total = std::accumulate(consumed.begin(), consumed.end(), 0L);
  int n = producers * per_producer;
  CHECK(total == static_cast<long>(n) * (n + 1) / 2);
  CHECK(std::accumulate(counts.begin(), counts.end(), 0) == n);
  for (int c = 0; c < consumers; ++c) {
    CHECK(counts[c] > 0);  // the work was shared
  }
  CHECK(q.unfinished_tasks() == 0);
  CHECK(q.empty());
}

// ---- channel ----------------------------------------------------------------------------

COGENT_TEST_CASE("channel: put blocks until a getter takes the item", doctest::timeout(10)) {
  cogent::channel<int> ch;
  CHECK(ch.size() == 0);
  CHECK(ch.empty());
  CHECK(ch.full());
  CHECK(ch.maxsize() == 0);
  bool put_returned = false;
  auto putter = cogent::spawn([&] {
    ch.put(7);
    put_returned = true;
  });
  cogent::sleep(5ms);
  CHECK_FALSE(put_returned);
  CHECK(ch.putters() == 1);
  CHECK(ch.balance() == 1);
  CHECK(ch.get() == 7);
  putter.join();
  CHECK(put_returned);

  auto getter = cogent::spawn([&] { return ch.get(); });
  cogent::sleep(1ms);
  CHECK(ch.balance() == -1);
  ch.put(8);  // a getter waits: handed over at once
  CHECK(getter.get() == 8);
}

COGENT_TEST_CASE("channel: nowait and timeouts; a timed-out put leaves nothing behind",
                 doctest::timeout(10)) {
  cogent::channel<std::string> ch;
  CHECK_THROWS_AS(ch.put_nowait("x"), cogent::queue_full);
  CHECK_THROWS_AS(ch.get_nowait(), cogent::queue_empty);
  auto t0 = clock::now();
  CHECK_THROWS_AS(ch.put("lost?", 20ms), cogent::queue_full);
  CHECK(since(t0) >= 19ms);
  CHECK(ch.putters() == 0);
  CHECK_THROWS_AS(ch.get(5ms), cogent::queue_empty);
  CHECK(ch.getters() == 0);

  auto getter = cogent::spawn([&] { return ch.get(); });
  cogent::sleep(1ms);
  ch.put_nowait("direct");
  CHECK(getter.get() == "direct");
  auto putter = cogent::spawn([&] { ch.put("waiting"); });
  cogent::sleep(1ms);
  CHECK(ch.get_nowait() == "waiting");
  putter.join();
}

COGENT_TEST_CASE("channel: killed putters and getters lose and leave nothing", doctest::timeout(10)) {
  cogent::channel<int> ch;
  auto victim_putter = cogent::spawn([&] { ch.put(1); });
  auto other_putter = cogent::spawn([&] { ch.put(2); });
  cogent::sleep(1ms);
  victim_putter.kill(nullptr, false);
  CHECK(ch.get() == 2);  // skips the leaving putter
  victim_putter.join();
  other_putter.join();
  CHECK(victim_putter.killed());
  CHECK(ch.putters() == 0);
  CHECK_THROWS_AS(ch.get_nowait(), cogent::queue_empty);

  auto victim_getter = cogent::spawn([&] { return ch.get(); });
  auto other_getter = cogent::spawn([&] { return ch.get(); });
  cogent::sleep(1ms);
  victim_getter.kill(nullptr, false);
  ch.put(3);
  victim_getter.join();
  CHECK(victim_getter.killed());
  CHECK(other_getter.get() == 3);
  CHECK(ch.getters() == 0);
}

COGENT_TEST_CASE("channel: rendezvous order with several putters and getters", doctest::timeout(10)) {
  cogent::channel<int> ch;
  std::vector<cogent::task<void>> ps;
  for (int i = 0; i < 5; ++i) {
    ps.push_back(cogent::spawn([&ch, i] { ch.put(i); }));
    cogent::yield();
  }
  std::vector<int> got;
  for (int i = 0; i < 5; ++i) {
    got.push_back(ch.get());
  }
  cogent::joinall(ps);
  CHECK(got == std::vector<int>{0, 1, 2, 3, 4});

  std::vector<cogent::task<int>> gs;
  for (int i = 0; i < 3; ++i) {
    gs.push_back(cogent::spawn([&] { return ch.get(); }));
    cogent::yield();
  }
  for (int i = 0; i < 3; ++i) {
    ch.put(100 + i);
  }
  for (int i = 0; i < 3; ++i) {
    CHECK(gs[i].get() == 100 + i);
  }
}

}  // namespace
