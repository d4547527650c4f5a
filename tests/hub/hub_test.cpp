// tests/hub/hub_test.cpp — the hub loop: sleep ordering and precision, sleep(0)
// fairness, IO not starved by always-ready fibers, would-block-forever, posts
// from other threads, blocking inside the hub, wait().
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "hub/core.hpp"
#include "hub/task.hpp"
#include "tests/child.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;
using cogent::clock;

std::chrono::milliseconds ms_since(clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - t0);
}

// Each task has its own C++ exception state: one that sleeps inside a catch
// block keeps its exception while others catch and leave theirs (before, the
// state was the thread's: ASan saw B's exception freed by A's handler ending).
COGENT_TEST_CASE("tasks that park inside catch blocks keep their own exceptions", doctest::timeout(10)) {
  std::string seen_a, seen_b, rethrown_a;
  auto a = cogent::spawn([&] {
    try {
      try {
        throw std::runtime_error("A");
      } catch (const std::exception& e) {
        cogent::sleep(20ms);
        seen_a = e.what();
        throw;
      }
    } catch (const std::exception& e) {
      rethrown_a = e.what();
    }
  });
  auto b = cogent::spawn([&] {
    cogent::sleep(5ms);
    try {
      throw std::runtime_error("B");
    } catch (const std::exception& e) {
      cogent::sleep(40ms);  // A leaves its handler meanwhile
      seen_b = e.what();
    }
  });
  a.join();
  b.join();
  CHECK(seen_a == "A");
  CHECK(rethrown_a == "A");
  CHECK(seen_b == "B");
}

COGENT_TEST_CASE("a task unwinding through a blocking destructor does not count as uncaught elsewhere",
                 doctest::timeout(10)) {
  struct blocking_dtor {
    ~blocking_dtor() { cogent::hub::current().park(clock::now() + 20ms, false); }
  };
  int in_victim = -1;
  auto victim = cogent::spawn([&] {
    struct probe {
      int* out;
      ~probe() { *out = std::uncaught_exceptions(); }
    } p{&in_victim};
    blocking_dtor d;
    cogent::sleep(1s);
  });
  int seen = -1;
  auto other = cogent::spawn([&] {
    cogent::sleep(10ms);  // the victim is unwinding now, parked in its destructor
    seen = std::uncaught_exceptions();
  });
  cogent::sleep(2ms);
  victim.kill(nullptr, false);
  other.join();
  victim.join();
  CHECK(seen == 0);
  CHECK(in_victim == 1);  // and the victim's own count survived its park
}

COGENT_TEST_CASE("after throw_in() into a parked task the thrower is not inside a handler",
                 doctest::timeout(10)) {
  cogent::fiber tf;
  auto t = cogent::spawn([&] {
    tf = cogent::fiber::current();
    cogent::sleep(1s);
  });
  cogent::sleep(2ms);
  tf.throw_in(std::make_exception_ptr(std::runtime_error("into t")));
  CHECK(std::current_exception() == nullptr);
  t.join();
  CHECK(t.exception() != nullptr);
  tf = cogent::fiber();
}

COGENT_TEST_CASE("sleeps wake in deadline order", doctest::timeout(10)) {
  std::vector<int> order;
  auto a = cogent::spawn([&] {
    cogent::sleep(30ms);
    order.push_back(30);
  });
  auto b = cogent::spawn([&] {
    cogent::sleep(10ms);
    order.push_back(10);
  });
  auto c = cogent::spawn([&] {
    cogent::sleep(20ms);
    order.push_back(20);
  });
  auto d = cogent::spawn([&] {
    cogent::sleep(20ms);
    order.push_back(21);
  });  // equal deadline after c: FIFO
  cogent::joinall({a, b, c, d});
  CHECK(order == std::vector<int>{10, 20, 21, 30});
}

// The hub keeps timers in a heap plus a sorted run (timers added in deadline order append to the run):
// mixed orders, equal deadlines and cancellations from both must still fire in (deadline, arming) order.
COGENT_TEST_CASE("timers in any order, some cancelled, fire in deadline order", doctest::timeout(10)) {
  struct probe : cogent::detail::timer_node {
    int id = 0;
    std::vector<int>* fired = nullptr;
  };
  cogent::hub& h = cogent::hub::current();
  constexpr int n = 3000;
  std::vector<probe> timers(n);
  std::vector<int> fired;
  auto base = clock::now() + 5ms;
  std::uint32_t x = 12345;
  for (int i = 0; i < n; ++i) {
    x = x * 1103515245u + 12345u;
    // A third rising (the run), the rest scattered over 8 ms in steps of 0.5 ms (many equal deadlines).
    auto at = i % 3 == 0 ? base + std::chrono::microseconds(i)
                         : base + std::chrono::microseconds(500 * ((x >> 8) % 16));
    timers[i].deadline = at;
    timers[i].id = i;
    timers[i].fired = &fired;
    timers[i].fire = [](cogent::detail::timer_node* t) {
      auto* p = static_cast<probe*>(t);
      p->fired->push_back(p->id);
    };
    h.add_timer(timers[i]);
  }
  std::size_t cancelled = 0;
  for (int i = 0; i < n; i += 7) {
    h.cancel_timer(timers[i]);
    CHECK_FALSE(timers[i].armed());
    ++cancelled;
  }
  CHECK(h.timer_count() == n - cancelled);
  cogent::sleep(15ms);
  CHECK(h.timer_count() == 0);
  REQUIRE(fired.size() == n - cancelled);
  for (std::size_t k = 0; k < fired.size(); ++k) {
    CHECK(fired[k] % 7 != 0);
    if (k > 0) {
      const probe& a = timers[fired[k - 1]];
      const probe& b = timers[fired[k]];
      CHECK((a.deadline < b.deadline || (a.deadline == b.deadline && a.seq < b.seq)));
    }
  }
}

COGENT_TEST_CASE("a 20 ms sleep takes [20, 40) ms", doctest::timeout(10)) {
  // Never shorter, every time; not much longer, in the best of 5 (one stalled turn of a noisy
  // machine must not fail it, a timer that always fires late must).
  auto best = clock::duration::max();
  for (int i = 0; i < 5; ++i) {
    auto t0 = clock::now();
    cogent::sleep(20ms);
    auto took = clock::now() - t0;
    CHECK(took >= 20ms);
    best = std::min(best, took);
  }
  CHECK(best < 40ms);
}

COGENT_TEST_CASE("sleeps of many fibers overlap", doctest::timeout(10)) {
  auto t0 = clock::now();
  std::vector<cogent::task<void>> ts;
  for (int i = 0; i < 100; ++i) {
    ts.push_back(cogent::spawn([] { cogent::sleep(50ms); }));
  }
  cogent::joinall(ts);
  CHECK(ms_since(t0) < 150ms);
}

COGENT_TEST_CASE("sleep(0) yields to every other ready fiber, round robin", doctest::timeout(10)) {
  std::string log;
  auto body = [&](char name) {
    for (int i = 0; i < 3; ++i) {
      log += name;
      cogent::sleep(0ms);
    }
  };
  auto a = cogent::spawn(body, 'a');
  auto b = cogent::spawn(body, 'b');
  auto c = cogent::spawn(body, 'c');
  cogent::joinall({a, b, c});
  CHECK(log == "abcabcabc");
}

COGENT_TEST_CASE("IO completions are not starved by always-ready fibers", doctest::timeout(10)) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  bool stop = false;
  long spins = 0;
  auto spinner = [&] {
    while (!stop) {
      ++spins;
      cogent::yield();
    }
  };
  auto s1 = cogent::spawn(spinner);
  auto s2 = cogent::spawn(spinner);
  std::thread writer([&] {
    std::this_thread::sleep_for(20ms);
    char c = 'x';
    CHECK(::write(fds[1], &c, 1) == 1);
  });
  auto t0 = clock::now();
  char buf = 0;
  cogent::detail::io_op op;
  op.code = cogent::detail::op_code::read;
  op.fd = fds[0];
  op.buf = &buf;
  op.len = 1;
  int r = cogent::hub::current().await_io(op);
  stop = true;
  writer.join();
  cogent::joinall({s1, s2});
  CHECK(r == 1);
  CHECK(buf == 'x');
  CHECK(ms_since(t0) < 500ms);
  CHECK(spins > 10);  // the spinners really ran meanwhile
  ::close(fds[0]);
  ::close(fds[1]);
}

COGENT_TEST_CASE("timers fire while fibers are always ready", doctest::timeout(10)) {
  bool stop = false;
  auto spinner = cogent::spawn([&] {
    while (!stop) {
      cogent::yield();
    }
  });
  auto t0 = clock::now();
  cogent::sleep(20ms);
  stop = true;
  spinner.join();
  CHECK(ms_since(t0) < 100ms);
}

// Not a COGENT_TEST_CASE: would_block_forever is raised in the main fiber.
TEST_CASE("waiting in main on a wait_list nobody can notify raises would_block_forever" *
          doctest::timeout(10)) {
  cogent::detail::wait_list wl;
  CHECK_THROWS_AS(wl.wait(), cogent::would_block_forever);
  CHECK(wl.empty());
  // The hub is still usable afterwards.
  auto t = cogent::spawn([] { return 7; });
  CHECK(t.get() == 7);
}

TEST_CASE("joining in main a task that waits forever raises would_block_forever" * doctest::timeout(10)) {
  cogent::detail::wait_list wl;
  auto t = cogent::spawn([&] { wl.wait(); });
  CHECK_THROWS_AS(t.join(), cogent::would_block_forever);
  CHECK_FALSE(t.ready());
  t.kill();  // clean up: it is parked on wl
  CHECK(t.ready());
  CHECK(t.killed());
  CHECK(cogent::hub::current().parked_count() == 0);
}

TEST_CASE("sleeping in main never raises would_block_forever" * doctest::timeout(10)) {
  CHECK_NOTHROW(cogent::sleep(5ms));
}

COGENT_TEST_CASE("hub::post from another thread runs on the hub's thread", doctest::timeout(10)) {
  cogent::hub& h = cogent::hub::current();
  cogent::detail::wait_list done;
  std::thread::id ran_on;
  int value = 0;
  h.hold();  // a post is coming: not "would block forever"
  std::thread other([&] {
    std::this_thread::sleep_for(10ms);
    h.post([&] {
      ran_on = std::this_thread::get_id();
      value = 42;
      h.release();
      done.notify_all();
    });
  });
  while (value == 0) {
    done.wait();
  }
  other.join();
  CHECK(value == 42);
  CHECK(ran_on == std::this_thread::get_id());
}

COGENT_TEST_CASE("many posts from several threads all arrive", doctest::timeout(10)) {
  cogent::hub& h = cogent::hub::current();
  cogent::detail::wait_list done;
  int count = 0;
  constexpr int per_thread = 1000;
  h.hold();
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      for (int j = 0; j < per_thread; ++j) {
        h.post([&] {
          if (++count == 4 * per_thread) {
            h.release();
            done.notify_all();
          }
        });
      }
    });
  }
  while (count < 4 * per_thread) {
    done.wait();
  }
  for (auto& t : threads) {
    t.join();
  }
  CHECK(count == 4 * per_thread);
}

COGENT_TEST_CASE("blocking inside the hub throws hub_error", doctest::timeout(10)) {
  cogent::hub& h = cogent::hub::current();
  cogent::detail::wait_list done;
  bool sleep_threw = false;
  bool yield_threw = false;
  bool ran = false;
  h.post([&] {
    ran = true;
    try {
      cogent::sleep(1ms);
    } catch (const cogent::hub_error&) {
      sleep_threw = true;
    }
    try {
      cogent::yield();
    } catch (const cogent::hub_error&) {
      yield_threw = true;
    }
    done.notify_all();
  });
  while (!ran) {
    done.wait(clock::now() + 1s);
  }
  CHECK(sleep_threw);
  CHECK(yield_threw);

  // The same from a timer callback.
  struct probe : cogent::detail::timer_node {
    bool threw = false;
    cogent::detail::wait_list* wl = nullptr;
  } p;
  p.wl = &done;
  p.deadline = clock::now() + 1ms;
  p.fire = [](cogent::detail::timer_node* n) {
    auto* self = static_cast<probe*>(n);
    try {
      cogent::detail::wait_list never;
      never.wait();
    } catch (const cogent::hub_error&) {
      self->threw = true;
    }
    self->wl->notify_all();
  };
  h.add_timer(p);
  done.wait(clock::now() + 1s);
  CHECK(p.threw);
}

COGENT_TEST_CASE("wait() returns once every task finished", doctest::timeout(10)) {
  int finished = 0;
  for (int i = 1; i <= 5; ++i) {
    cogent::spawn([&finished, i] {
      cogent::sleep(std::chrono::milliseconds(5 * i));
      ++finished;
    });
  }
  auto t0 = clock::now();
  cogent::wait();
  CHECK(finished == 5);
  CHECK(ms_since(t0) >= 25ms);
  CHECK(cogent::hub::current().timer_count() == 0);
}

TEST_CASE("wait() from main and from a task: both return once the hub is idle" * doctest::timeout(10)) {
  bool slept = false;
  bool task_waited = false;
  auto sleeper = cogent::spawn([&] {
    cogent::sleep(30ms);
    slept = true;
  });
  auto waiter = cogent::spawn([&] {
    cogent::wait();  // a second wait() caller must not displace main's
    task_waited = slept;
  });
  cogent::yield();  // the waiter is parked in wait() before main waits
  cogent::wait();
  CHECK(slept);
  waiter.join();
  CHECK(task_waited);
}

COGENT_TEST_CASE("hub::configure() once the hub exists is a hub_error", doctest::timeout(10)) {
  cogent::hub::current();  // exists (we run in a fiber on it)
  CHECK_THROWS_WITH_AS(cogent::hub::configure(cogent::hub_config{}),
                       "cogent: hub::configure() called after this thread's hub was created",
                       cogent::hub_error);
}

TEST_CASE("wait() from main with nothing to do returns at once" * doctest::timeout(10)) {
  auto t0 = clock::now();
  cogent::wait();
  CHECK(ms_since(t0) < 50ms);
}

COGENT_TEST_CASE("wait_until reports deadline vs wake-up", doctest::timeout(10)) {
  cogent::hub& h = cogent::hub::current();
  CHECK_FALSE(h.wait_until(clock::now() + 5ms));
  auto self = cogent::detail::current_impl();
  auto waker = cogent::spawn([&] { h.schedule(self); });
  CHECK(h.wait_until(clock::now() + 1s));
  waker.join();
}

TEST_CASE("max_blocking_time: the watchdog names a fiber that hogs the hub" * doctest::timeout(20)) {
  // In a child, on a new thread (the forked main thread may already have a hub from earlier tests): the
  // watchdog is configured before that thread's hub exists.
  cogent::test::child_result r = cogent::test::run_in_child([] {
    std::thread([] {
      cogent::hub_config cfg;
      cfg.max_blocking_time = std::chrono::milliseconds(50);
      cogent::hub::configure(cfg);
      auto hog = cogent::spawn(cogent::spawn_options{"cpu-hog"}, [] {
        auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(400);
        while (std::chrono::steady_clock::now() < until) {
          // never switches
        }
      });
      auto polite = cogent::spawn(cogent::spawn_options{"polite"}, [] {
        for (int i = 0; i < 20; ++i) {
          cogent::sleep(std::chrono::milliseconds(10));
        }
      });
      cogent::joinall({hog, polite});
    }).join();
  });
  INFO("child stderr: " << r.err);
  CHECK(r.exited(0));
  CHECK(r.err.find("fiber 'cpu-hog' has run") != std::string::npos);
  CHECK(r.err.find("'polite'") == std::string::npos);
}

// The watchdog reads the running fiber's name from its own thread; fibers that hog the hub and then
// finish are freed at once. Many short hogs make the report race the free (ASan: no use-after-free,
// the name in each report is a real one).
TEST_CASE("max_blocking_time: reports race fibers being freed, safely" * doctest::timeout(30)) {
  cogent::test::child_result r = cogent::test::run_in_child([] {
    std::thread([] {
      cogent::hub_config cfg;
      cfg.max_blocking_time = std::chrono::milliseconds(2);
      cogent::hub::configure(cfg);
      for (int i = 0; i < 200; ++i) {
        auto hog = cogent::spawn(cogent::spawn_options{"hog-" + std::to_string(i)}, [] {
          auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(2500);
          while (std::chrono::steady_clock::now() < until) {
          }
        });
        hog.join();
      }
    }).join();
  });
  INFO("child stderr: " << r.err);
  CHECK(r.exited(0));
  CHECK(r.err.find("fiber 'hog-") != std::string::npos);
  CHECK(r.err.find("ERROR: AddressSanitizer") == std::string::npos);
}

}  // namespace
