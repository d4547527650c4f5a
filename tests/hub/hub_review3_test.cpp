// tests/hub/hub_review3_test.cpp — adversarial review (3) of hub/core, hub/task, hub/timeout and
// hub/local against their header comments and gevent's semantics. Every case but the last ("ok")
// failed when written; each names the behaviour it expects.
#include "hub/local.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"

#include <chrono>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/child.hpp"
#include "tests/support.hpp"

namespace {
using namespace std::chrono_literals;
using cogent::clock;
using reports = cogent::test::error_reports;
struct boom : std::runtime_error {
  using std::runtime_error::runtime_error;
};
}  // namespace

// ---- 1. iwait/wait_any swallow the errors of tasks they never hand out -------------------------------
// task.hpp: an error of a task nobody waits for is reported once. iwait's links OBSERVE (default
// link(), observes = true), so a task that fails while an iwait is alive counts as handled, even if
// the iwait is left (or wait_any returns another task) before it is handed out: the error vanishes.
// joinall(raise_error) got its own report_unseen() for this; iwait/wait_any did not.
COGENT_TEST_CASE("review3: wait_any reports a failure of a task it did not return", doctest::timeout(10)) {
  reports r;
  auto a = cogent::spawn([] {
    cogent::sleep(5ms);
    throw boom("a");
  });
  auto b = cogent::spawn([] {
    cogent::sleep(5ms);
    throw boom("b");
  });
  auto first = cogent::wait_any({a, b});
  CHECK(first == a);
  cogent::sleep(5ms);
  CHECK(b.ready());
  CHECK_MESSAGE(r.seen == std::vector<std::string>{"b"}, "reports seen: ", r.seen.size());
}

COGENT_TEST_CASE("review3: an iwait left early reports a failure it never returned", doctest::timeout(10)) {
  reports r;
  auto a = cogent::spawn([] { cogent::sleep(5ms); });
  auto b = cogent::spawn([] {
    cogent::sleep(5ms);
    throw boom("b");
  });
  {
    cogent::iwait it(std::vector<cogent::task_base>{a, b});
    CHECK(it.next() == a);
  }  // b finished in the same turn: its error sits in the iwait, never handed out
  cogent::sleep(5ms);
  CHECK_MESSAGE(r.seen == std::vector<std::string>{"b"}, "reports seen: ", r.seen.size());
}

// ---- 2. iwait's constructor is not exception-safe -------------------------------------------------
// iwait::iwait links each task in turn; if a later link() throws (an empty handle: logic_error, or
// bad_alloc), the destructor never runs and the earlier tasks keep a link capturing the dead
// iwait's `this`: when they finish, the link writes into freed memory.
COGENT_TEST_CASE("review3: an iwait whose constructor throws leaves no link to itself behind",
                 doctest::timeout(10)) {
  cogent::test::child_result r = cogent::test::run_in_child([] {
    std::thread([] {
      auto t = cogent::spawn([] { cogent::sleep(5ms); });
      try {
        auto it = std::make_unique<cogent::iwait>(std::vector<cogent::task_base>{t, cogent::task_base{}});
      } catch (const std::logic_error&) {
      }
      t.join();  // t's link runs: it must not touch the freed iwait
      cogent::sleep(1ms);
      std::fprintf(stderr, "survived\n");
    }).join();
  });
  INFO("child stderr: " << r.err.substr(0, 600));
  CHECK(r.exited(0));
  CHECK(r.err.find("survived") != std::string::npos);
}

// ---- 3. a kill that never went off hides the task's own error ---------------------------------------
// task.cpp run(): an error is left unreported when kill_requested, unless the task visibly caught a
// fiber_exit (nothing pending). A kill that arrives as an op completes anyway stays pending
// (await_io returns the result, core.hpp); the task then fails on its own without blocking again:
// the kill never landed (killed() is false), yet its error is treated as the kill's outcome and
// never reported.
COGENT_TEST_CASE("review3: a kill still pending when the task fails on its own does not hide that error",
                 doctest::timeout(10)) {
  reports r;
  auto t = cogent::spawn([] {
    cogent::detail::io_op op;
    op.code = cogent::detail::op_code::nop;
    (void)cogent::hub::current().await_io(op);  // completes (0): the kill stays pending
    throw boom("own");                          // fails without blocking again
  });
  cogent::yield();  // t parks on its nop
  cogent::yield();  // the hub submits and reaps it: t is ready behind us
  t.kill(nullptr, false);
  t.join_unobserved();
  cogent::sleep(1ms);
  CHECK_FALSE(t.killed());
  CHECK(t.exception() != nullptr);
  CHECK_MESSAGE(r.seen == std::vector<std::string>{"own"}, "reports seen: ", r.seen.size());
}

// ---- 4. long durations wrap instead of saturating ---------------------------------------------------
// core.hpp: "Any std::chrono duration converts" to timeout_duration, and a too-long timeout/sleep
// saturates to "forever". But the parameters are std::chrono::nanoseconds: seconds::max() or
// hours::max() (natural "forever"s) overflow in the implicit conversion (UBSan: signed overflow) and
// wrap to a negative duration — the timeout fires at once, the sleep returns at once.
COGENT_TEST_CASE("review3: a timeout of seconds::max() never fires and sleep(hours::max()) sleeps",
                 doctest::timeout(10)) {
  bool finished = cogent::try_with_timeout(std::chrono::seconds::max(), [] { cogent::sleep(20ms); });
  CHECK_MESSAGE(finished, "timeout(seconds::max()) fired");
  bool returned = cogent::try_with_timeout(30ms, [] { cogent::sleep(std::chrono::hours::max()); });
  CHECK_FALSE_MESSAGE(returned, "sleep(hours::max()) returned at once");
}

// ---- 5. a timeout scope that outlives its fiber --------------------------------------------------------
// timeout.hpp: "Must be destroyed on the fiber that created it" — but a scope kept in an object that
// outlives its task (a connection's idle timeout) is neither rejected nor safe: it holds a raw
// fiber_impl*, and its timer (timeout.cpp:50) and cancel() (timeout.cpp:76) read the freed fiber.
COGENT_TEST_CASE("review3: a timeout scope that outlives its fiber never touches the freed fiber",
                 doctest::timeout(10)) {
  cogent::test::child_result r = cogent::test::run_in_child([] {
    std::thread([] {
      std::unique_ptr<cogent::timeout> to;
      auto t = cogent::spawn([&] { to = std::make_unique<cogent::timeout>(20ms); });
      t.join();
      t = {};  // the task's control block is freed
      cogent::sleep(40ms);  // the scope's timer fires
      to.reset();
      std::fprintf(stderr, "survived\n");
    }).join();
  });
  INFO("child stderr: " << r.err.substr(0, 600));
  CHECK(r.exited(0));
  CHECK(r.err.find("survived") != std::string::npos);
}

// ---- 6. link()/unlink() from another thread are not rejected --------------------------------------
// join() and kill() from another thread raise hub_error (invariant 4); link() pushes into the task's
// link vector from the foreign thread (a data race with the owning hub) and its callback later runs
// on the task's thread.
COGENT_TEST_CASE("review3: link() from another thread raises hub_error like join() and kill()",
                 doctest::timeout(10)) {
  auto t = cogent::spawn([] { cogent::sleep(20ms); });
  bool threw = false;
  std::thread th([&] {
    try {
      t.link([](const cogent::task_base&) {});
    } catch (const cogent::hub_error&) {
      threw = true;
    }
  });
  th.join();
  t.join();
  CHECK(threw);
}

// ---- ok (kept: not covered elsewhere) ------------------------------------------------------------------
COGENT_TEST_CASE("review3 ok: a link that spawns and gets a task; sleep_until(min) and joinall(-5s) return",
                 doctest::timeout(10)) {
  int got = 0;
  auto a = cogent::spawn([] { cogent::sleep(1ms); });
  a.link([&](const cogent::task_base&) { got = cogent::spawn([] { cogent::sleep(1ms); return 7; }).get(); });
  a.join();
  cogent::sleep_until(clock::time_point::min());
  cogent::sleep(10ms);
  CHECK(got == 7);
  CHECK(cogent::joinall({a}, -5s).size() == 1);
}
