// tests/hub/task_review_test.cpp — adversarial review of hub/task.cpp, hub/pool.cpp and
// hub/timeout.cpp against the promises of their headers. A1, A2, B1, C and D failed before the fix
// that came with this file (a task killed before it started now drops its function and runs its
// links in its own fiber, before it counts as finished; timeout::owns() tells apart two scopes at
// one address); B2 and B3 were rewritten for it (the killer no longer runs the links). F failed
// before a later fix: a task that caught a kill and then failed reported nothing. Not fixed
// (closing note): an imap_unordered stream dropped early does not report a member's error it
// never reached.
#include "hub/pool.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/child.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;
using cogent::clock;

struct custom_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// slow_arg is a task argument whose destructor blocks (allowed: "a destructor may block").
struct slow_arg {
  bool* inside = nullptr;
  int* done = nullptr;
  std::chrono::milliseconds d{5};
  slow_arg(bool* in, int* dn, std::chrono::milliseconds dd = 5ms) : inside(in), done(dn), d(dd) {}
  slow_arg(slow_arg&& o) noexcept
      : inside(std::exchange(o.inside, nullptr)), done(std::exchange(o.done, nullptr)), d(o.d) {}
  ~slow_arg() {
    if (done == nullptr) {
      return;
    }
    *inside = true;
    cogent::sleep(d);
    *inside = false;
    ++*done;
  }
};

}  // namespace

// ---- A: a task killed before it started counts as finished before its function/arguments go ----

COGENT_TEST_CASE("review A1: a joiner of a task killed before it started returns only after its arguments went",
                 doctest::timeout(10)) {
  bool inside = false;
  int done = 0;
  auto m = cogent::spawn_later(1s, [](const slow_arg&) {}, slow_arg(&inside, &done));
  bool saw_inside = true;
  int saw_done = -1;
  auto j = cogent::spawn([&] {
    m.join();
    saw_inside = inside;
    saw_done = done;
  });
  cogent::yield();  // j parks in join()
  m.kill();
  j.join();
  CHECK(done == 1);
  CHECK_FALSE(saw_inside);  // the joiner ran while the argument's destructor was still blocked
  CHECK(saw_done == 1);
}

COGENT_TEST_CASE("review A2: a pool member killed before it started holds its slot until its arguments went",
                 doctest::timeout(10)) {
  bool inside = false;
  int done = 0;
  cogent::pool p(1);
  auto m = cogent::spawn_later(1s, [](const slow_arg&) {}, slow_arg(&inside, &done));
  p.add(m);  // the pool is full
  bool next_saw_inside = false;
  auto w = cogent::spawn([&] { p.spawn([&] { next_saw_inside = inside; }); });
  cogent::yield();  // w waits for the slot
  m.kill();
  w.join();
  p.join();
  CHECK(done == 1);
  CHECK_FALSE(next_saw_inside);  // the next member ran while the killed one's argument was being destroyed
}

// ---- B: links of a task killed before it started run in the killer's fiber ----

COGENT_TEST_CASE("review B1: a link of a task killed before it started runs in that task's fiber",
                 doctest::timeout(10)) {
  auto m = cogent::spawn_later(1s, [] {});
  cogent::task_base in_link;
  m.link([&](const cogent::task_base&) { in_link = cogent::current_task(); });
  m.kill();
  CHECK(in_link == m);  // header: "fn runs in the finishing task's fiber"
  CHECK(in_link != cogent::current_task());
}

COGENT_TEST_CASE("review B2: a never-started task's blocking link runs in its own fiber, not the killer's",
                 doctest::timeout(10)) {
  auto m = cogent::spawn_later(1s, [] {});
  cogent::task_base in_link;
  m.link([&](const cogent::task_base&) {
    in_link = cogent::current_task();
    cogent::sleep(500ms);
  });
  bool after = false;
  auto k = cogent::spawn([&] {
    m.kill();  // returns once m finished; its link goes on in m's fiber
    cogent::sleep(1s);
    after = true;  // must not be reached: k is killed in its sleep
  });
  cogent::sleep(5ms);
  auto t0 = clock::now();
  k.kill();
  CHECK(k.killed());
  CHECK_FALSE(after);
  CHECK(clock::now() - t0 < 250ms);  // not held up by the link's 500 ms sleep
  CHECK(in_link == m);
  cogent::sleep(550ms);  // the link's own sleep ends (join() returns before links are through)
}

COGENT_TEST_CASE("review B3: the killer's Timeout is not swallowed by a never-started task's blocking link",
                 doctest::timeout(10)) {
  auto m = cogent::spawn_later(1s, [] {});
  m.link([](const cogent::task_base&) { cogent::sleep(50ms); });
  bool timed_out = false;
  bool after = false;
  try {
    cogent::timeout t(5ms);
    m.kill();               // the link runs in m's fiber, not here
    cogent::sleep(200ms);   // so the Timeout reaches its own scope here
    after = true;
  } catch (const cogent::timeout_error&) {
    timed_out = true;
  }
  CHECK(timed_out);
  CHECK_FALSE(after);
  cogent::sleep(60ms);  // the link's own sleep ends
}

// ---- C: a never-started task's blocking argument destructor runs in the killer, interruptibly ----

TEST_CASE("review C: a kill of the killer while a never-started task's argument is destroyed does not terminate" *
          doctest::timeout(20)) {
  cogent::test::child_result r = cogent::test::run_in_child([] {
    std::thread([] {
      bool inside = false;
      int done = 0;
      auto m = cogent::spawn_later(1s, [](const slow_arg&) {}, slow_arg(&inside, &done, 50ms));
      auto k = cogent::spawn([&] { m.kill(); });
      cogent::sleep(5ms);  // k is in the argument's destructor
      k.kill();
      cogent::sleep(100ms);
      std::fprintf(stderr, "survived done=%d\n", done);
    }).join();
  });
  INFO("child stderr: " << r.err);
  CHECK(r.exited(0));
  CHECK(r.err.find("survived done=1") != std::string::npos);
}

// ---- D: timeout::owns() / try_with_timeout keyed on a scope's address ----

namespace {
// Both tasks run the same code, so their timeout scopes sit at the same offset of their stacks.
int same_code(cogent::task<int>* other) {
  cogent::timeout t(other != nullptr ? 1s : 2ms);
  try {
    if (other == nullptr) {
      cogent::sleep(1s);
      return 0;
    }
    return other->get();
  } catch (const cogent::timeout_error& e) {
    if (other == nullptr) {
      throw;  // first task: its timeout escapes, it fails with timeout_error
    }
    if (t.owns(e)) {
      return -1;  // "our own timeout"
    }
    throw;
  }
}
}  // namespace

COGENT_TEST_CASE("review D: owns() is false for another task's timeout_error rethrown by get()",
                 doctest::timeout(10)) {
  cogent::set_task_error_handler([](const cogent::task_base&, std::exception_ptr) {});
  cogent::task<int> a = cogent::spawn([] { return same_code(nullptr); });
  a.join();
  REQUIRE_FALSE(a.successful());
  cogent::sleep(1ms);  // a's stack goes back to the pool
  cogent::task<int> c = cogent::spawn([&a] { return same_code(&a); });
  c.join();
  // c's own 1 s timeout never expired: a's error is not c's.
  CHECK_FALSE(c.successful());
  if (c.successful()) {
    CHECK_MESSAGE(c.get() != -1, "c's timeout scope claimed a's timeout_error as its own");
  }
  cogent::set_task_error_handler(nullptr);
}

// ---- E: imap_unordered stream left early: a member's error nobody saw ----

COGENT_TEST_CASE("review ok: killall/joinall with duplicates and finished tasks; iwait sees early finishers",
                 doctest::timeout(10)) {
  auto a = cogent::spawn([] { return 1; });
  auto b = cogent::spawn([] { cogent::sleep(10s); });
  cogent::sleep(1ms);
  REQUIRE(a.ready());
  std::vector<cogent::task_base> ts{a, b, b, a};
  cogent::iwait it(ts);
  cogent::killall(ts);
  CHECK(b.killed());
  CHECK(cogent::joinall(ts).size() == 4);
  int n = 0;
  while (it.next()) {
    ++n;
  }
  CHECK(n == 4);
}

COGENT_TEST_CASE("review ok: nested try_with_timeout, the outer fires inside the inner", doctest::timeout(10)) {
  bool outer_caught = false;
  try {
    cogent::timeout outer(5ms);
    auto r = cogent::try_with_timeout(1s, [] { cogent::sleep(200ms); });
    (void)r;
  } catch (const cogent::timeout_error&) {
    outer_caught = true;
  }
  CHECK(outer_caught);
  // silent variant does not swallow a kill
  bool after = false;
  auto t = cogent::spawn([&] {
    cogent::try_with_timeout(1s, [] { cogent::sleep(10s); });
    after = true;
  });
  cogent::sleep(1ms);
  t.kill();
  CHECK(t.killed());
  CHECK_FALSE(after);
}

// ---- F: a task that caught a kill and then failed otherwise ----

COGENT_TEST_CASE("review F: a task that catches a kill and then fails reports that error, once",
                 doctest::timeout(10)) {
  std::vector<std::string> reports;
  cogent::set_task_error_handler([&](const cogent::task_base&, std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      reports.emplace_back(x.what());
    }
  });
  auto body = [] {
    try {
      cogent::sleep(10s);
    } catch (const cogent::fiber_exit&) {
      throw custom_error("cleanup failed");  // not the outcome the killer asked for
    }
  };
  for (bool block : {false, true}) {
    reports.clear();
    auto t = cogent::spawn(body);
    cogent::sleep(1ms);
    t.kill(nullptr, block);
    cogent::sleep(1ms);
    CHECK_FALSE(t.killed());
    CHECK(reports == std::vector<std::string>{"cleanup failed"});
    t.join();  // joining afterwards does not report again
    CHECK(reports.size() == 1);
  }
  // killall(block) does not look at the error either.
  reports.clear();
  auto a = cogent::spawn(body);
  cogent::sleep(1ms);
  cogent::killall({a});
  CHECK(reports == std::vector<std::string>{"cleanup failed"});
  // Not reported: the kill's own outcome (killed, or the custom exception it passed), an error that a
  // join() or get() sees, and an error while a joiner that looks is waiting.
  reports.clear();
  auto k = cogent::spawn([] { cogent::sleep(10s); });
  auto c = cogent::spawn([] { cogent::sleep(10s); });
  auto j = cogent::spawn(body);
  cogent::sleep(1ms);
  k.kill();
  c.kill(std::make_exception_ptr(custom_error("stop")));
  auto joiner = cogent::spawn([&j] { j.join(); });
  cogent::sleep(1ms);
  j.kill(nullptr, false);
  joiner.join();
  CHECK(k.killed());
  CHECK_THROWS_AS(c.get(), custom_error);
  CHECK_THROWS_AS(j.get(), custom_error);
  CHECK(reports.empty());
  cogent::set_task_error_handler(nullptr);
}
