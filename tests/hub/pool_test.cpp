// tests/hub/pool_test.cpp — group and pool: membership kept by links, join and
// kill, map / imap / imap_unordered, the pool's concurrency bound and slot waits.
#include "hub/pool.hpp"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;
using cogent::clock;

COGENT_TEST_CASE("group: spawned and added tasks leave when they finish", doctest::timeout(10)) {
  cogent::group g;
  auto a = g.spawn([] {
    cogent::sleep(10ms);
    return 1;
  });
  auto b = cogent::spawn([] { cogent::sleep(20ms); });
  g.add(b);
  g.add(b);  // adding twice is a no-op
  CHECK(g.size() == 2);
  CHECK(g.contains(a));
  CHECK(g.contains(b));
  a.join();
  CHECK(g.size() == 1);
  CHECK_FALSE(g.contains(a));
  CHECK(g.join());
  CHECK(g.size() == 0);
  CHECK(a.get() == 1);
  auto done = cogent::spawn([] {});
  done.join();
  g.add(done);  // already finished: not added
  CHECK(g.size() == 0);
}

COGENT_TEST_CASE("group: discard, join(timeout), kill", doctest::timeout(10)) {
  cogent::group g;
  auto slow = g.spawn([] { cogent::sleep(10s); });
  auto other = g.spawn([] { cogent::sleep(10s); });
  g.discard(other);
  CHECK(g.size() == 1);
  CHECK_FALSE(g.contains(other));
  auto t0 = clock::now();
  CHECK_FALSE(g.join(10ms));
  CHECK(clock::now() - t0 >= 10ms);
  g.kill();
  CHECK(slow.killed());
  CHECK(g.size() == 0);
  CHECK_FALSE(other.ready());  // discarded: not killed with the group
  other.kill();
}

COGENT_TEST_CASE("group: join(raise_error) rethrows the first member error", doctest::timeout(10)) {
  cogent::group g;
  g.spawn([] { cogent::sleep(1ms); });
  g.spawn([] {
    cogent::sleep(2ms);
    throw std::runtime_error("member failed");
  });
  CHECK_THROWS_WITH_AS(g.join(std::nullopt, true), "member failed", std::runtime_error);
  CHECK(g.failures().size() == 1);
  CHECK(g.join(std::nullopt, true));  // cleared after being raised
}

COGENT_TEST_CASE("group: map keeps order, imap_unordered gives finish order", doctest::timeout(10)) {
  cogent::group g;
  std::vector<int> in{30, 10, 20};
  auto out = g.map(
      [](int ms) {
        cogent::sleep(std::chrono::milliseconds(ms));
        return ms * 2;
      },
      in);
  CHECK(out == std::vector<int>{60, 20, 40});
  auto unordered = g.imap_unordered(
      [](int ms) {
        cogent::sleep(std::chrono::milliseconds(ms));
        return ms;
      },
      in);
  CHECK(unordered.to_vector() == std::vector<int>{10, 20, 30});
  int sum = 0;
  g.map([&sum](int x) { sum += x; }, in);  // void fn
  CHECK(sum == 60);
  CHECK(g.size() == 0);
}

COGENT_TEST_CASE("imap_unordered streams: each result arrives as its task finishes", doctest::timeout(10)) {
  cogent::pool p(2);
  std::vector<int> in{50, 10, 200, 20};
  auto t0 = clock::now();
  std::vector<std::pair<int, clock::duration>> got;
  for (int ms : p.imap_unordered(
           [](int ms) {
             cogent::sleep(std::chrono::milliseconds(ms));
             return ms;
           },
           in)) {
    got.emplace_back(ms, clock::now() - t0);
  }
  // Two slots: 50 and 10 start; 10 ends (10 ms), 200 starts; 50 ends (50 ms), 20 starts and ends
  // (70 ms); 200 last (210 ms). The first result came long before the last task finished.
  REQUIRE(got.size() == 4);
  CHECK(got[0].first == 10);
  CHECK(got[1].first == 50);
  CHECK(got[2].first == 20);
  CHECK(got[3].first == 200);
  CHECK(got[0].second < 150ms);  // (10 ms, with room for a stalled machine; the last ends at 210 ms)
  CHECK(got[3].second >= 200ms);
  CHECK(p.size() == 0);
}

COGENT_TEST_CASE("imap_unordered: an error kills the rest; leaving early kills them too",
                 doctest::timeout(10)) {
  cogent::pool p(3);
  int finished = 0;
  auto work = [&finished](int ms) {
    cogent::sleep(std::chrono::milliseconds(ms));
    if (ms == 20) {
      throw std::runtime_error("item 20 failed");
    }
    ++finished;
    return ms;
  };
  {
    auto s = p.imap_unordered(work, std::vector<int>{10, 20, 500, 600});
    CHECK(s.next() == 10);
    CHECK_THROWS_WITH_AS(s.next(), "item 20 failed", std::runtime_error);
    CHECK_FALSE(s.next().has_value());  // the stream ended; 500 was killed, 600 never started
  }
  CHECK(finished == 1);
  CHECK(p.size() == 0);
  finished = 0;
  auto t0 = clock::now();
  {
    auto s = p.imap_unordered(work, std::vector<int>{5, 300, 400, 10});
    CHECK(s.next() == 5);
  }  // destroyed early: the feeder and the members still running are killed and waited for
  CHECK(clock::now() - t0 < 200ms);
  CHECK(finished == 1);
  CHECK(p.size() == 0);
}

COGENT_TEST_CASE("imap: results in item order, each as soon as it and those before it are there",
                 doctest::timeout(10)) {
  cogent::pool p(2);
  std::vector<int> in{50, 10, 200, 20, 30};
  auto t0 = clock::now();
  std::vector<std::pair<int, clock::duration>> got;
  auto s = p.imap(
      [](int ms) {
        cogent::sleep(std::chrono::milliseconds(ms));
        return ms;
      },
      in);
  for (int ms : s) {
    got.emplace_back(ms, clock::now() - t0);
  }
  // Two slots: 50 and 10 start; 10 ends (10 ms) but waits for 50 (50 ms); 200 starts at 10 ms,
  // 20 at 50 ms (ends 70), 30 at 70 ms (ends 100); 200 ends at 210 ms, then 20 and 30 at once.
  REQUIRE(got.size() == 5);
  for (std::size_t i = 0; i < in.size(); ++i) {
    CHECK(got[i].first == in[i]);
  }
  CHECK(got[0].second >= 50ms);
  CHECK(got[1].second < 150ms);  // 10 came with 50, not after 200
  CHECK(got[2].second >= 200ms);
  CHECK(got[4].second - got[2].second < 50ms);  // 20 and 30 were done already
  CHECK_FALSE(s.next().has_value());
  CHECK(p.size() == 0);
  std::vector<std::string> names = cogent::group{}.imap([](int i) { return std::to_string(i); },
                                                        std::vector<int>{3, 1, 2}).to_vector();
  CHECK(names == std::vector<std::string>{"3", "1", "2"});
}

COGENT_TEST_CASE("imap: an error is raised when the stream reaches it; earlier results come first",
                 doctest::timeout(10)) {
  cogent::pool p(3);
  int finished = 0;
  auto work = [&finished](int ms) {
    cogent::sleep(std::chrono::milliseconds(ms));
    if (ms == 5) {
      throw std::runtime_error("item 5 failed");
    }
    ++finished;
    return ms;
  };
  auto s = p.imap(work, std::vector<int>{30, 5, 500, 600});
  CHECK(s.next() == 30);  // item 5 failed first, but 30 comes before it
  CHECK_THROWS_WITH_AS(s.next(), "item 5 failed", std::runtime_error);
  CHECK_FALSE(s.next().has_value());  // the stream ended: 500 was killed, 600 never started
  CHECK(finished == 1);
  CHECK(p.size() == 0);
}

COGENT_TEST_CASE("imap: a Timeout while waiting for the next item loses nothing", doctest::timeout(10)) {
  cogent::pool p(2);
  auto s = p.imap(
      [](int ms) {
        cogent::sleep(std::chrono::milliseconds(ms));
        return ms;
      },
      std::vector<int>{80, 10, 20});
  CHECK_THROWS_AS(cogent::with_timeout(20ms, [&] { return s.next(); }), cogent::timeout_error);
  CHECK(s.next() == 80);  // the same item, still first
  CHECK(s.next() == 10);
  CHECK(s.next() == 20);
  CHECK_FALSE(s.next().has_value());
}

COGENT_TEST_CASE("imap_unordered: a member killed before it started does not hang the stream",
                 doctest::timeout(10)) {
  cogent::group g;
  // The feeder spawns both members before either runs; the first kills the second, which so never
  // runs its body. Its end must still reach the stream.
  auto s = g.imap_unordered(
      [&g](int i) {
        if (i == 0) {
          for (const cogent::task_base& t : g.tasks()) {
            if (t != cogent::current_task()) {
              t.kill(nullptr, false);
            }
          }
        }
        return i;
      },
      std::vector<int>{0, 1});
  bool hung = false;
  bool killed_seen = false;
  try {
    cogent::timeout to(2s);
    while (s.next()) {
    }
  } catch (const cogent::timeout_error&) {
    hung = true;
  } catch (const cogent::task_killed&) {
    killed_seen = true;  // the killed member's result
  }
  CHECK_FALSE(hung);
  CHECK(killed_seen);
  if (!hung) {  // a hung stream would hang here too
    CHECK_FALSE(s.next().has_value());
  }
}

COGENT_TEST_CASE("imap_unordered: a kill while leaving early waits for the members, then is raised",
                 doctest::timeout(10)) {
  cogent::pool p(2);
  bool unwound = false;
  bool went_on = false;
  auto consumer = cogent::spawn([&] {
    {
      auto s = p.imap_unordered(
          [&unwound](int ms) {
            try {
              cogent::sleep(std::chrono::milliseconds(ms));
            } catch (const cogent::fiber_exit&) {
              cogent::sleep(30ms);  // takes its time to unwind: the consumer is still waiting
              unwound = true;
              throw;
            }
            return ms;
          },
          std::vector<int>{1, 300});
      s.next();
    }                    // leaving: the stream kills the 300 ms member and waits for it to unwind
    cogent::sleep(1ms);  // the kill that arrived meanwhile is raised here
    went_on = true;
  });
  cogent::sleep(3ms);
  consumer.kill();  // arrives while the stream's destructor waits: must not cut it short, nor be lost
  CHECK(consumer.ready());
  CHECK(unwound);
  CHECK_FALSE(went_on);
  CHECK(p.size() == 0);
}

COGENT_TEST_CASE("group: map rethrows the first error and kills the rest", doctest::timeout(10)) {
  cogent::group g;
  int finished = 0;
  std::vector<int> in{1, 2, 3};
  auto t0 = clock::now();
  CHECK_THROWS_WITH_AS(g.map(
                           [&finished](int i) {
                             if (i == 1) {
                               cogent::sleep(5ms);
                               throw std::runtime_error("item 1");
                             }
                             cogent::sleep(10s);
                             ++finished;
                             return i;
                           },
                           in),
                       "item 1", std::runtime_error);
  CHECK(clock::now() - t0 < 1s);
  CHECK(finished == 0);
  CHECK(g.size() == 0);
}

COGENT_TEST_CASE("group: a killed caller of map takes its tasks down", doctest::timeout(10)) {
  cogent::group g;
  auto caller = cogent::spawn([&] { g.map([](int) { cogent::sleep(10s); }, std::vector<int>{1, 2, 3}); });
  cogent::sleep(5ms);
  CHECK(g.size() == 3);
  caller.kill();
  CHECK(caller.killed());
  CHECK(g.size() == 0);
}

COGENT_TEST_CASE("group: destroying it forgets members without killing them", doctest::timeout(10)) {
  cogent::task<void> t;
  {
    cogent::group g;
    t = g.spawn([] { cogent::sleep(5ms); });
  }
  CHECK(t.join());  // its link to the dead group was removed: no use-after-free
  CHECK(t.successful());
}

COGENT_TEST_CASE("pool: spawn waits while full, concurrency is bounded", doctest::timeout(10)) {
  cogent::pool p(2);
  CHECK(p.capacity() == 2);
  CHECK(p.free_count() == 2);
  int running = 0;
  int peak = 0;
  auto job = [&] {
    ++running;
    peak = std::max(peak, running);
    cogent::sleep(20ms);
    --running;
  };
  auto t0 = clock::now();
  for (int i = 0; i < 6; ++i) {
    p.spawn(job);
    CHECK(p.size() <= 2);
  }
  CHECK(p.full());
  CHECK(p.free_count() == 0);
  CHECK(p.join());
  auto took = clock::now() - t0;
  CHECK(peak == 2);
  CHECK(took >= 60ms);
  CHECK(took < 200ms);
  CHECK(p.free_count() == 2);
}

COGENT_TEST_CASE("pool: wait_available and add", doctest::timeout(10)) {
  cogent::pool p(1);
  auto a = p.spawn([] { cogent::sleep(20ms); });
  CHECK(p.full());
  CHECK_FALSE(p.wait_available(5ms));
  CHECK(p.wait_available(1s));
  CHECK(a.ready());
  auto b = cogent::spawn([] { cogent::sleep(20ms); });
  auto c = cogent::spawn([] { cogent::sleep(100ms); });
  p.add(b);
  auto t0 = clock::now();
  p.add(c);  // waits for b to finish
  CHECK(clock::now() - t0 >= 10ms);
  CHECK(b.ready());
  CHECK(p.contains(c));
  p.join();
  CHECK_THROWS_AS(cogent::pool(0), std::invalid_argument);
}

COGENT_TEST_CASE("pool: map with a bound runs in waves, results in order", doctest::timeout(10)) {
  cogent::pool p(3);
  std::vector<int> in;
  for (int i = 0; i < 9; ++i) {
    in.push_back(i);
  }
  auto t0 = clock::now();
  auto out = p.map(
      [](int i) {
        cogent::sleep(20ms);
        return i * i;
      },
      in);
  auto took = clock::now() - t0;
  for (int i = 0; i < 9; ++i) {
    CHECK(out[i] == i * i);
  }
  CHECK(took >= 60ms);
  CHECK(took < 200ms);
  auto names = p.imap_unordered([](int i) { return std::to_string(i); }, std::vector<int>{1, 2});
  CHECK(names.to_vector().size() == 2);
}

COGENT_TEST_CASE("pool: kill frees slots for waiting spawners", doctest::timeout(10)) {
  cogent::pool p(1);
  auto blocker = p.spawn([] { cogent::sleep(10s); });
  bool spawned = false;
  auto spawner = cogent::spawn([&] {
    p.spawn([] {});
    spawned = true;
  });
  cogent::sleep(5ms);
  CHECK_FALSE(spawned);
  p.kill();
  spawner.join();
  CHECK(spawned);
  p.join();
  CHECK(blocker.killed());
}

COGENT_TEST_CASE("pool: a spawner killed or timed out while waiting for a slot spawns nothing",
                 doctest::timeout(10)) {
  cogent::pool p(1);
  auto blocker = p.spawn([] { cogent::sleep(10s); });
  bool ran = false;
  auto spawner = cogent::spawn([&] { p.spawn([&] { ran = true; }); });
  cogent::sleep(2ms);
  spawner.kill();  // raised in wait_for_slot()
  CHECK(spawner.ready());
  CHECK_FALSE(cogent::try_with_timeout(5ms, [&] { return p.spawn([&] { ran = true; }); }).has_value());
  CHECK(p.size() == 1);  // only the blocker
  p.kill();
  cogent::sleep(2ms);
  CHECK_FALSE(ran);
  CHECK(p.size() == 0);
}

COGENT_TEST_CASE("group: join() is interrupted by kill and Timeout; the members carry on",
                 doctest::timeout(10)) {
  cogent::group g;
  auto member = g.spawn([] { cogent::sleep(50ms); });
  auto joiner = cogent::spawn([&] { g.join(); });
  cogent::sleep(2ms);
  joiner.kill();
  CHECK(joiner.ready());
  CHECK_FALSE(cogent::try_with_timeout(5ms, [&] { return g.join(); }).has_value());
  CHECK_FALSE(member.ready());
  CHECK(g.join());  // the member finishes on its own
  CHECK(member.ready());
}

COGENT_TEST_CASE("group: a member's error nobody joins is still reported once", doctest::timeout(10)) {
  int reports = 0;
  std::string name;
  cogent::set_task_error_handler([&](const cogent::task_base& t, std::exception_ptr) {
    ++reports;
    name = t.name();
  });
  cogent::group g;
  auto t = cogent::spawn(cogent::spawn_options{"member"}, [] { throw std::runtime_error("lost"); });
  g.add(t);
  while (!t.ready()) {
    cogent::sleep(1ms);
  }
  cogent::set_task_error_handler(nullptr);
  CHECK(reports == 1);
  CHECK(name == "member");
  CHECK(g.size() == 0);
}

// Slot wake-ups: member_left() wakes one waiter; if that waiter does not take
// the slot, the next one must still get in.

COGENT_TEST_CASE("pool: add() of a task that finished meanwhile must not swallow the slot wake-up",
                 doctest::timeout(5)) {
  cogent::pool p(1);
  auto m = p.spawn([] { cogent::sleep(20ms); });
  auto quick = cogent::spawn([] { cogent::sleep(5ms); });
  auto a = cogent::spawn([&] { p.add(quick); });  // waits; quick finishes before the slot frees
  cogent::yield();
  bool b_ran = false;
  auto b = cogent::spawn([&] { p.spawn([&] { b_ran = true; }); });
  cogent::yield();
  CHECK(a.join(1s));
  CHECK(b.join(500ms));
  CHECK(p.join(200ms));
  CHECK(b_ran);
  b.kill();
  m.kill();
}

COGENT_TEST_CASE("pool: add() of a task another waiter added meanwhile must not swallow the slot wake-up",
                 doctest::timeout(5)) {
  cogent::pool p(2);
  auto m1 = p.spawn([] { cogent::sleep(10ms); });
  auto m2 = p.spawn([] { cogent::sleep(20ms); });
  auto t = cogent::spawn([] { cogent::sleep(10s); });
  auto a = cogent::spawn([&] { p.add(t); });  // gets m1's slot
  auto c = cogent::spawn([&] { p.add(t); });  // gets m2's slot, but t is a member already
  cogent::yield();
  bool b_ran = false;
  auto b = cogent::spawn([&] { p.spawn([&] { b_ran = true; }); });
  cogent::yield();
  CHECK(a.join(1s));
  CHECK(c.join(1s));
  CHECK(b.join(500ms));
  cogent::sleep(1ms);  // b's member runs
  CHECK(b_ran);
  CHECK(p.size() == 1);
  t.kill();
  b.kill();
  CHECK(p.join(200ms));
}

COGENT_TEST_CASE("pool: a spawn() that fails after its slot wait passes the slot wake-up on",
                 doctest::timeout(5)) {
  cogent::pool p(1);
  auto m = p.spawn([] { cogent::sleep(10ms); });
  bool raised = false;
  auto bad = cogent::spawn([&] {
    try {
      p.spawn(cogent::spawn_options{"bad", 1}, [] {});  // a bad stack size: fiber_error after the wait
    } catch (const cogent::fiber_error&) {
      raised = true;
    }
  });
  cogent::yield();
  bool b_ran = false;
  auto b = cogent::spawn([&] { p.spawn([&] { b_ran = true; }); });
  cogent::yield();
  CHECK(bad.join(1s));
  CHECK(raised);
  CHECK(b.join(500ms));
  CHECK(p.join(200ms));
  CHECK(b_ran);
  b.kill();
  m.kill();
}

COGENT_TEST_CASE("group: kill() from a member kills all the others, then the caller", doctest::timeout(10)) {
  cogent::group g;
  std::vector<cogent::task<void>> sleepers;
  for (int i = 0; i < 6; ++i) {
    sleepers.push_back(g.spawn([] { cogent::sleep(10s); }));
  }
  bool after = false;
  auto killer = g.spawn([&] {
    g.kill(nullptr, false);
    after = true;
  });
  CHECK(killer.join(1s));
  CHECK(killer.killed());
  CHECK_FALSE(after);
  CHECK(g.join(1s));
  for (auto& s : sleepers) {
    CHECK(s.killed());
    s.kill();
  }
}

}  // namespace
