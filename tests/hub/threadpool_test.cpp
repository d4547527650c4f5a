// tests/hub/threadpool_test.cpp — threadpool::run / run_in_thread: results and
// exceptions come back, jobs overlap, other fibers run meanwhile, a kill or
// timeout waits for the job and then raises, workers have no hub.
#include "hub/threadpool.hpp"

#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;
using cogent::clock;

COGENT_TEST_CASE("results of every kind come back", doctest::timeout(10)) {
  cogent::threadpool tp(2);
  CHECK(tp.size() == 2);
  CHECK(tp.run([] { return 42; }) == 42);
  CHECK(tp.run([] { return std::string("from a thread"); }) == "from a thread");
  int x = 0;
  tp.run([&] { x = 5; });
  CHECK(x == 5);
  int& ref = tp.run([&]() -> int& { return x; });
  CHECK(&ref == &x);
  auto p = tp.run([] { return std::make_unique<int>(9); });
  CHECK(*p == 9);
  CHECK(tp.run([] { return std::this_thread::get_id(); }) != std::this_thread::get_id());
}

COGENT_TEST_CASE("exceptions come back to the fiber", doctest::timeout(10)) {
  cogent::threadpool tp(1);
  CHECK_THROWS_WITH_AS(tp.run([]() -> int { throw std::runtime_error("worker failed"); }), "worker failed",
                       std::runtime_error);
  CHECK(tp.run([] { return 1; }) == 1);  // the worker survives
}

COGENT_TEST_CASE("10 jobs of 100 ms overlap on 4+ workers", doctest::timeout(10)) {
  cogent::threadpool tp(10);
  auto t0 = clock::now();
  std::vector<cogent::task<int>> ts;
  for (int i = 0; i < 10; ++i) {
    ts.push_back(cogent::spawn([&tp, i] {
      return tp.run([i] {
        std::this_thread::sleep_for(100ms);
        return i;
      });
    }));
  }
  for (int i = 0; i < 10; ++i) {
    CHECK(ts[i].get() == i);
  }
  auto took = clock::now() - t0;
  CHECK(took >= 100ms);
  CHECK(took < 300ms);
}

COGENT_TEST_CASE("the default pool has at least 4 workers and overlaps jobs", doctest::timeout(10)) {
  CHECK(cogent::default_threadpool().size() >= 4);
  auto t0 = clock::now();
  std::vector<cogent::task<void>> ts;
  for (int i = 0; i < 4; ++i) {
    ts.push_back(cogent::spawn([] { cogent::run_in_thread([] { std::this_thread::sleep_for(100ms); }); }));
  }
  cogent::joinall(ts);
  CHECK(clock::now() - t0 < 300ms);
}

COGENT_TEST_CASE("other fibers run while a job blocks a worker", doctest::timeout(10)) {
  int ticks = 0;
  bool stop = false;
  auto ticker = cogent::spawn([&] {
    while (!stop) {
      cogent::sleep(5ms);
      ++ticks;
    }
  });
  cogent::run_in_thread([] { std::this_thread::sleep_for(100ms); });
  stop = true;
  ticker.join();
  CHECK(ticks >= 5);
}

TEST_CASE("main waiting only on a job is not 'would block forever'" * doctest::timeout(10)) {
  int v = 0;
  CHECK_NOTHROW(v = cogent::run_in_thread([] {
                  std::this_thread::sleep_for(20ms);
                  return 3;
                }));
  CHECK(v == 3);
}

COGENT_TEST_CASE("kill while waiting: the fiber waits for the job, then dies", doctest::timeout(10)) {
  cogent::threadpool tp(1);
  std::atomic<bool> job_finished{false};
  bool after = false;
  auto t = cogent::spawn([&] {
    std::vector<char> frame_data(64, 'a');  // state in the fiber's frame the job writes
    tp.run([&] {
      std::this_thread::sleep_for(50ms);
      frame_data[0] = 'b';
      job_finished = true;
    });
    after = true;
  });
  cogent::sleep(10ms);
  auto t0 = clock::now();
  t.kill();
  CHECK(t.killed());
  CHECK(job_finished.load());  // kill returned only after the job finished
  CHECK(clock::now() - t0 >= 30ms);
  CHECK_FALSE(after);
  CHECK(tp.pending() == 0);
}

COGENT_TEST_CASE("a timeout while waiting raises after the job finished", doctest::timeout(10)) {
  std::atomic<bool> job_finished{false};
  auto t0 = clock::now();
  bool raised = false;
  try {
    cogent::timeout to(10ms);
    cogent::run_in_thread([&] {
      std::this_thread::sleep_for(50ms);
      job_finished = true;
    });
  } catch (const cogent::timeout_error&) {
    raised = true;
  }
  CHECK(raised);
  CHECK(job_finished.load());
  CHECK(clock::now() - t0 >= 50ms);
}

COGENT_TEST_CASE("run_detachable: results, exceptions, and a timeout that fires at once",
                 doctest::timeout(10)) {
  cogent::threadpool tp(2);
  CHECK(tp.run_detachable([] { return std::string("owned"); }) == "owned");
  CHECK_THROWS_WITH_AS(tp.run_detachable([]() -> int { throw std::runtime_error("from worker"); }),
                       "from worker", std::runtime_error);

  // The job owns its state (a shared flag): the fiber leaves at the timeout, the job keeps running.
  auto finished = std::make_shared<std::atomic<bool>>(false);
  auto t0 = clock::now();
  bool raised = false;
  try {
    cogent::timeout to(20ms);
    tp.run_detachable([finished, big = std::vector<char>(1 << 16, 'x')] {
      std::this_thread::sleep_for(150ms);
      *finished = big.size() == (1u << 16);
    });
  } catch (const cogent::timeout_error&) {
    raised = true;
  }
  CHECK(raised);
  CHECK(clock::now() - t0 < 120ms);  // did not wait for the job
  CHECK_FALSE(finished->load());
  // The abandoned job completes on its worker; its completion frees it on this hub.
  while (tp.pending() != 0 || !finished->load()) {
    cogent::sleep(5ms);
  }
  cogent::sleep(5ms);  // let the posted completion run (it releases the hub's hold)
  CHECK(finished->load());
}

COGENT_TEST_CASE("a kill while in run_detachable is raised at once", doctest::timeout(10)) {
  cogent::threadpool tp(1);
  auto finished = std::make_shared<std::atomic<bool>>(false);
  bool after = false;
  auto t = cogent::spawn([&] {
    tp.run_detachable([finished] {
      std::this_thread::sleep_for(500ms);
      *finished = true;
    });
    after = true;
  });
  cogent::sleep(10ms);
  auto t0 = clock::now();
  t.kill();
  CHECK(t.killed());
  CHECK(clock::now() - t0 < 300ms);  // not after the job's 500 ms
  CHECK_FALSE(after);
  while (tp.pending() != 0) {
    cogent::sleep(5ms);
  }
  cogent::sleep(5ms);
  CHECK(finished->load());
}

// The waiter's thread (and so its hub) may be gone when an abandoned job finishes: the worker must
// then dispose of the job without touching that hub.
COGENT_TEST_CASE("an abandoned job outlives its thread and hub", doctest::timeout(10)) {
  cogent::threadpool tp(1);
  auto finished = std::make_shared<std::atomic<bool>>(false);
  std::atomic<bool> raised{false};
  std::thread other([&] {
    try {
      cogent::timeout to(20ms);
      tp.run_detachable([finished] {
        std::this_thread::sleep_for(150ms);
        *finished = true;
        return 1;
      });
    } catch (const cogent::timeout_error&) {
      raised = true;
    }
  });  // its hub is destroyed when it ends, long before the job does
  other.join();
  CHECK(raised.load());
  while (tp.pending() != 0) {
    cogent::sleep(5ms);
  }
  CHECK(finished->load());
}

// The same with run(): its waiter cannot leave (the job points into its frame), so when the thread
// ends the fiber stays parked, its stack kept, and the hub goes. The worker's completion must then
// be dropped, not posted into the destroyed hub (ASan: heap-use-after-free before the mailbox).
COGENT_TEST_CASE("a job finishing after its waiter's thread ended posts nowhere", doctest::timeout(10)) {
  cogent::threadpool tp(1);
  auto finished = std::make_shared<std::atomic<bool>>(false);
  std::atomic<bool> parked{false};
  std::thread other([&] {
#if defined(__SANITIZE_ADDRESS__)
    __lsan_disable();  // the parked fiber's control blocks are left behind on purpose
#endif
    auto t = cogent::spawn([&tp, finished] {
      tp.run([finished] {
        std::this_thread::sleep_for(150ms);
        *finished = true;
      });
    });
    while (tp.pending() == 0) {
      cogent::sleep(1ms);
    }
    parked = true;
  });  // returns while t waits in run(): the hub is destroyed, the job still runs
  other.join();
  CHECK(parked.load());
  CHECK_FALSE(finished->load());
  while (tp.pending() != 0) {
    cogent::sleep(5ms);
  }
  CHECK(finished->load());
}

COGENT_TEST_CASE("a kill pending at entry means the job never runs", doctest::timeout(10)) {
  std::atomic<bool> ran{false};
  auto u = cogent::spawn([&] {
    // An interrupt already pending (as a kill or an expired Timeout leaves it
    // when the fiber has not blocked since) is raised by run() before queuing.
    cogent::hub::current().interrupt(cogent::detail::current_impl(),
                                     std::make_exception_ptr(std::runtime_error("pending")));
    cogent::run_in_thread([&] { ran = true; });
  });
  CHECK_THROWS_WITH_AS(u.get(), "pending", std::runtime_error);
  CHECK_FALSE(ran.load());
  CHECK(cogent::default_threadpool().pending() == 0);
}

COGENT_TEST_CASE("workers have no hub and know they are workers", doctest::timeout(10)) {
  CHECK_FALSE(cogent::threadpool::in_worker());
  bool has_hub = true;
  bool in_worker = false;
  cogent::run_in_thread([&] {
    has_hub = cogent::hub::current_if_exists() != nullptr;
    in_worker = cogent::threadpool::in_worker();
    // Blocking libc behaves as libc: a plain sleep and a pipe read block this thread.
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    char c = 'q';
    REQUIRE(::write(fds[1], &c, 1) == 1);
    char got = 0;
    REQUIRE(::read(fds[0], &got, 1) == 1);
    ::close(fds[0]);
    ::close(fds[1]);
  });
  CHECK_FALSE(has_hub);
  CHECK(in_worker);
}

COGENT_TEST_CASE("run() from inside a worker runs inline", doctest::timeout(10)) {
  cogent::threadpool tp(1);
  auto outer = tp.run([&] {
    auto id = std::this_thread::get_id();
    auto inner = tp.run([] { return std::this_thread::get_id(); });  // would deadlock if queued
    return id == inner && cogent::hub::current_if_exists() == nullptr;
  });
  CHECK(outer);
}

COGENT_TEST_CASE("many small jobs from many fibers", doctest::timeout(20)) {
  cogent::threadpool tp(4);
  std::atomic<int> sum{0};
  std::vector<cogent::task<void>> ts;
  for (int i = 0; i < 50; ++i) {
    ts.push_back(cogent::spawn([&, i] {
      for (int j = 0; j < 20; ++j) {
        sum += tp.run([i, j] { return i * j; });
      }
    }));
  }
  cogent::joinall(ts);
  int expect = 0;
  for (int i = 0; i < 50; ++i) {
    for (int j = 0; j < 20; ++j) {
      expect += i * j;
    }
  }
  CHECK(sum.load() == expect);
}

TEST_CASE("a threadpool is joined at destruction" * doctest::timeout(10)) {
  std::atomic<int> done{0};
  std::vector<cogent::task<void>> ts;
  {
    cogent::threadpool tp(3);
    for (int i = 0; i < 3; ++i) {
      ts.push_back(cogent::spawn([&] {
        tp.run([&] {
          std::this_thread::sleep_for(100ms);
          ++done;
        });
      }));
    }
    while (tp.pending() < 3) {
      cogent::sleep(1ms);
    }
    CHECK(done.load() == 0);
  }  // the destructor waits for the three jobs
  CHECK(done.load() == 3);
  cogent::joinall(ts);  // their completions were posted before the workers ended
}

}  // namespace
