// tests/hub/timers_review_test.cpp — adversarial review of time in the hub: the timer heap and
// run list, sleep ordering, spawn_later, timeout scopes, timeout_duration conversions.
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"

#include <chrono>
#include <cstdio>
#include <new>
#include <ratio>
#include <string>
#include <vector>

#include "tests/child.hpp"
#include "tests/support.hpp"

namespace {
using namespace std::chrono_literals;
using cogent::clock;
}  // namespace

// ---- findings and guards ----------------------------------------------------------------------

COGENT_TEST_CASE("timers ok: equal deadlines across run list and heap keep FIFO order", doctest::timeout(10)) {
  auto base = clock::now() + 30ms;
  std::vector<int> order;
  std::vector<cogent::task<void>> ts;
  // 0: T+10 (run list), then 1..4: T (heap, before the run's tail), 5: T+10 (run), 6: T (heap)
  clock::time_point dl[] = {base + 10ms, base, base, base, base, base + 10ms, base};
  for (int i = 0; i < 7; ++i) {
    ts.push_back(cogent::spawn([&, i] {
      cogent::sleep_until(dl[i]);
      order.push_back(i);
    }));
  }
  cogent::joinall(ts);
  CHECK(order == std::vector<int>{1, 2, 3, 4, 6, 0, 5});
}

COGENT_TEST_CASE("timers ok: spawn_later with delay 0, negative, short, and an hour killed before it starts", doctest::timeout(10)) {
  auto a = cogent::spawn_later(0ms, [] { return 1; });
  auto b = cogent::spawn_later(-5ms, [] { return 2; });
  auto c = cogent::spawn_later(20ms, [] { return 3; });
  auto t0 = clock::now();
  CHECK(c.get() == 3);
  CHECK(clock::now() - t0 >= 15ms);
  CHECK(a.get() == 1);
  CHECK(b.get() == 2);
  auto d = cogent::spawn_later(1h, [] { return 4; });
  CHECK_THROWS_AS(d.get(10ms), cogent::timeout_error);
  d.kill();
  CHECK(d.ready());
  CHECK(d.killed());
  CHECK_FALSE(d.started());
}

COGENT_TEST_CASE("timeout_duration: a 158-year duration in 1/3 s ticks does not wrap negative",
                 doctest::timeout(10)) {
  using third = std::chrono::duration<long long, std::ratio<1, 3>>;
  // 1.5e10 thirds of a second = 5e9 s = 5e18 ns: well inside nanoseconds (max ~9.22e18).
  cogent::timeout_duration td = third(15'000'000'000LL);
  REQUIRE(td.has_value());
  CHECK(td->count() > 0);
  CHECK(td->count() == 5'000'000'000'000'000'000LL);
}

COGENT_TEST_CASE("timeout_duration: a sleep and a Timeout of 158 years in 1/3 s ticks do not end at once",
                 doctest::timeout(10)) {
  using third = std::chrono::duration<long long, std::ratio<1, 3>>;
  // Any unit whose ratio to nanoseconds is not an integer (1/3 s, 1/60 s frames, 90 kHz ticks)
  // goes through duration_cast's count * num / den, which overflows long before the result does.
  bool finished = cogent::try_with_timeout(third(15'000'000'000LL), [] { cogent::sleep(30ms); });
  CHECK_MESSAGE(finished, "a 158-year Timeout fired after 30 ms");
  auto t0 = clock::now();
  auto sleeper = cogent::spawn([] { cogent::sleep(third(15'000'000'000LL)); });
  cogent::sleep(30ms);
  CHECK_MESSAGE(!sleeper.ready(), "a 158-year sleep returned after ", (clock::now() - t0).count(), " ns");
  sleeper.kill();
}

COGENT_TEST_CASE("defer_interrupt: a deferred timeout_error is not withdrawn by a later scope at its old address",
                 doctest::timeout(10)) {
  alignas(cogent::timeout) unsigned char buf[sizeof(cogent::timeout)];
  std::exception_ptr saved;
  auto* first = new (buf) cogent::timeout(1ms);
  try {
    cogent::sleep(1s);
  } catch (const cogent::timeout_error&) {
    saved = std::current_exception();
  }
  first->~timeout();
  REQUIRE(saved);
  // "defer_interrupt() makes `e` the calling fiber's pending interrupt again: it is raised at the
  // fiber's next blocking call" — its own scope is gone, nothing may withdraw it...
  cogent::defer_interrupt(saved);
  // ...but a new, unrelated scope that happens to live at the same address (the next iteration of a
  // loop, the next call of a helper) takes it for its own (timeout::cancel compares addresses only;
  // owns() knows better: it compares serials) and silently drops it when it is left.
  auto* second = new (buf) cogent::timeout(10s);
  second->~timeout();
  bool raised = false;
  try {
    cogent::sleep(1ms);
  } catch (const cogent::timeout_error&) {
    raised = true;
  }
  CHECK_MESSAGE(raised, "the deferred timeout_error was withdrawn by another scope at the same address");
}

COGENT_TEST_CASE("timers ok: a Timeout that fires behind a pending kill still fires once the kill is caught",
                 doctest::timeout(10)) {
  // The kill wakes the task; its Timeout expires before it runs (pending kill: the Timeout retries).
  // The task catches the kill and blocks again inside the scope: the Timeout must still end that wait.
  bool caught_kill = false;
  bool timed_out = false;
  auto t = cogent::spawn([&] {
    bool done = cogent::try_with_timeout(5ms, [&] {
      try {
        cogent::sleep(1s);
      } catch (const cogent::fiber_exit&) {
        caught_kill = true;
      }
      cogent::sleep(2s);
    });
    timed_out = !done;
  });
  cogent::sleep(1ms);
  t.kill(nullptr, false);
  cogent::test::busy_for(10ms);  // the Timeout's deadline passes before the task runs
  CHECK(t.join(3s));
  CHECK(caught_kill);
  CHECK(timed_out);
}
