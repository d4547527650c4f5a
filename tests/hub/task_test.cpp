// tests/hub/task_test.cpp — tasks: spawn/join/get with values and exceptions,
// timeouts on get/join, kill at every kind of blocking point, links, the
// collection helpers, the registry and the unjoined-error report.
#include "hub/task.hpp"
#include "hub/sync.hpp"
#include "hub/threadpool.hpp"
#include "hub/timeout.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/child.hpp"
#include "tests/job_gate.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;
using cogent::test::pipe_fds;
using cogent::clock;

struct custom_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};


// read_one() reads one byte through hub::await_io (parks on IO).
int read_one(int fd, char* buf, cogent::clock::time_point deadline = cogent::clock::time_point::max()) {
  cogent::detail::io_op op;
  op.code = cogent::detail::op_code::read;
  op.fd = fd;
  op.buf = buf;
  op.len = 1;
  return cogent::hub::current().await_io(op, deadline);
}

COGENT_TEST_CASE("spawn and get values, arguments and move-only results", doctest::timeout(10)) {
  auto a = cogent::spawn([](int x, int y) { return x * y; }, 6, 7);
  auto b = cogent::spawn([](std::string s) { return s + "!"; }, std::string("hi"));
  auto c = cogent::spawn([] { return std::make_unique<int>(5); });
  auto d = cogent::spawn([] {});
  CHECK(a.get() == 42);
  CHECK(b.get() == "hi!");
  CHECK(*c.get() == 5);
  d.get();
  CHECK(d.successful());
  CHECK(a.ready());
  CHECK(a.started());
}

COGENT_TEST_CASE("spawn never switches; the task starts at the next turn", doctest::timeout(10)) {
  bool ran = false;
  auto t = cogent::spawn([&] { ran = true; });
  CHECK_FALSE(ran);
  CHECK_FALSE(t.started());
  t.join();
  CHECK(ran);
}

COGENT_TEST_CASE("exceptions come back through get and exception()", doctest::timeout(10)) {
  auto t = cogent::spawn([]() -> int { throw custom_error("boom"); });
  CHECK(t.join());
  CHECK_FALSE(t.successful());
  CHECK(t.exception() != nullptr);
  CHECK_THROWS_WITH_AS(t.get(), "boom", custom_error);
  CHECK(cogent::describe_exception(t.exception()) == "boom");
}

COGENT_TEST_CASE("get(timeout) raises timeout_error, join(timeout) returns false", doctest::timeout(10)) {
  auto t = cogent::spawn([] {
    cogent::sleep(200ms);
    return 1;
  });
  auto t0 = clock::now();
  CHECK_FALSE(t.join(10ms));
  CHECK(clock::now() - t0 >= 10ms);
  bool raised = false;
  try {
    t.get(10ms);
  } catch (const cogent::timeout_error& e) {
    raised = true;
    CHECK(e.source() == nullptr);
  }
  CHECK(raised);
  CHECK_FALSE(t.ready());
  t.kill();
}

COGENT_TEST_CASE("joining yourself is a hub_error", doctest::timeout(10)) {
  auto self = cogent::current_task();
  REQUIRE(self);
  CHECK_THROWS_AS(self.join(), cogent::hub_error);
}

COGENT_TEST_CASE("kill while sleeping", doctest::timeout(10)) {
  bool unwound = false;
  auto t = cogent::spawn([&] {
    struct guard {
      bool& b;
      ~guard() { b = true; }
    } g{unwound};
    cogent::sleep(10s);
  });
  cogent::sleep(1ms);
  auto t0 = clock::now();
  t.kill();
  CHECK(clock::now() - t0 < 100ms);
  CHECK(t.ready());
  CHECK(t.killed());
  CHECK(t.successful());  // gevent: a GreenletExit kill counts as success
  CHECK(unwound);
  CHECK_THROWS_AS(t.get(), cogent::task_killed);
}

COGENT_TEST_CASE("kill while joining another task", doctest::timeout(10)) {
  auto sleeper = cogent::spawn([] { cogent::sleep(10s); });
  auto joiner = cogent::spawn([&] { sleeper.join(); });
  cogent::sleep(1ms);
  joiner.kill();
  CHECK(joiner.killed());
  CHECK_FALSE(sleeper.ready());
  sleeper.kill();
}

COGENT_TEST_CASE("kill while waiting on a wait_list", doctest::timeout(10)) {
  cogent::detail::wait_list wl;
  auto t = cogent::spawn([&] { wl.wait(); });
  cogent::sleep(1ms);
  CHECK(wl.size() == 1);
  t.kill();
  CHECK(t.killed());
  CHECK(wl.empty());
}

COGENT_TEST_CASE("kill while parked on IO cancels and reaps the op first", doctest::timeout(10)) {
  pipe_fds p;
  char buf = 0;
  bool after = false;
  auto t = cogent::spawn([&] {
    read_one(p.r, &buf);
    after = true;
  });
  cogent::sleep(1ms);
  CHECK(cogent::hub::current().io().in_flight() == 1);
  t.kill();
  CHECK(t.killed());
  CHECK_FALSE(after);
  CHECK(cogent::hub::current().io().in_flight() == 0);
  // The pipe still works: nothing was consumed by the cancelled read.
  char c = 'z';
  REQUIRE(::write(p.w, &c, 1) == 1);
  char got = 0;
  CHECK(read_one(p.r, &got) == 1);
  CHECK(got == 'z');
}

COGENT_TEST_CASE("IO deadline returns -ETIMEDOUT", doctest::timeout(10)) {
  pipe_fds p;
  char buf = 0;
  CHECK(read_one(p.r, &buf, clock::now() + 10ms) == -ETIMEDOUT);
}

COGENT_TEST_CASE("a task killed before it starts never runs", doctest::timeout(10)) {
  bool ran = false;
  auto t = cogent::spawn([&] { ran = true; });
  t.kill();
  CHECK(t.ready());
  CHECK(t.killed());
  cogent::sleep(1ms);
  CHECK_FALSE(ran);
  auto later = cogent::spawn_later(5ms, [&] { ran = true; });
  later.kill();
  cogent::sleep(10ms);
  CHECK_FALSE(ran);
}

COGENT_TEST_CASE("kill with a custom exception", doctest::timeout(10)) {
  auto t = cogent::spawn([] { cogent::sleep(10s); });
  cogent::sleep(1ms);
  t.kill(std::make_exception_ptr(custom_error("stop")));
  CHECK(t.ready());
  CHECK_FALSE(t.killed());
  CHECK_FALSE(t.successful());
  CHECK_THROWS_WITH_AS(t.get(), "stop", custom_error);
}

COGENT_TEST_CASE("kill without block, then join", doctest::timeout(10)) {
  auto t = cogent::spawn([] { cogent::sleep(10s); });
  cogent::sleep(1ms);
  t.kill(nullptr, false);
  CHECK_FALSE(t.ready());
  CHECK(t.join(1s));
  CHECK(t.killed());
}

COGENT_TEST_CASE("a task killing itself raises at once", doctest::timeout(10)) {
  bool after = false;
  auto t = cogent::spawn([&] {
    cogent::current_task().kill();
    after = true;
  });
  t.join();
  CHECK(t.killed());
  CHECK_FALSE(after);
}

COGENT_TEST_CASE("catch (const std::exception&) does not swallow a kill", doctest::timeout(10)) {
  bool swallowed = false;
  auto t = cogent::spawn([&] {
    try {
      cogent::sleep(10s);
    } catch (const std::exception&) {
      swallowed = true;
    }
  });
  cogent::sleep(1ms);
  t.kill();
  CHECK(t.killed());
  CHECK_FALSE(swallowed);
}

COGENT_TEST_CASE("link runs on finish, at once if finished; unlink removes it", doctest::timeout(10)) {
  std::vector<std::string> log;
  auto t = cogent::spawn([] {
    cogent::sleep(1ms);
    return 3;
  });
  t.link([&](const cogent::task_base& done) {
    log.push_back("a");
    CHECK(done == t);
    CHECK(done.ready());
  });
  auto id = t.link([&](const cogent::task_base&) { log.push_back("b"); });
  t.unlink(id);
  t.join();
  CHECK(log == std::vector<std::string>{"a"});
  t.link([&](const cogent::task_base&) { log.push_back("late"); });
  CHECK(log == std::vector<std::string>{"a", "late"});
}

COGENT_TEST_CASE("a link that throws is reported, not fatal", doctest::timeout(10)) {
  auto t = cogent::spawn([] {});
  t.link([](const cogent::task_base&) { throw std::runtime_error("in link"); });
  CHECK(t.join());
  CHECK(t.successful());
}

COGENT_TEST_CASE("joinall, killall, iwait and wait_any", doctest::timeout(10)) {
  std::vector<cogent::task<int>> ts;
  for (int i : {30, 10, 20}) {
    ts.push_back(cogent::spawn([i] {
      cogent::sleep(std::chrono::milliseconds(i));
      return i;
    }));
  }
  std::vector<int> order;
  for (cogent::iwait it(ts); auto t = it.next();) {
    for (auto& x : ts) {
      if (x == t) {
        order.push_back(x.get());
      }
    }
  }
  CHECK(order == std::vector<int>{10, 20, 30});

  auto slow = cogent::spawn([] { cogent::sleep(10s); });
  auto fast = cogent::spawn([] { cogent::sleep(5ms); });
  auto first = cogent::wait_any({slow, fast});
  CHECK(first == fast);
  CHECK_FALSE(cogent::wait_any({slow}, 5ms));

  auto done = cogent::joinall({fast, slow}, 10ms);
  CHECK(done.size() == 1);
  cogent::killall({slow});
  CHECK(slow.killed());
  CHECK(cogent::joinall({fast, slow}).size() == 2);
}

COGENT_TEST_CASE("joinall with raise_error rethrows the first error", doctest::timeout(10)) {
  auto ok = cogent::spawn([] { return 1; });
  auto bad = cogent::spawn([]() -> int { throw custom_error("bad"); });
  CHECK_THROWS_WITH_AS(cogent::joinall({ok, bad}, std::nullopt, true), "bad", custom_error);
  CHECK(cogent::joinall({ok, bad}).size() == 2);  // without raise_error: no throw
}

COGENT_TEST_CASE("joinall and iwait with a count return once that many finished (gevent's count)",
                 doctest::timeout(10)) {
  auto fast = cogent::spawn([] { cogent::sleep(1ms); return 1; });
  auto mid = cogent::spawn([] { cogent::sleep(5ms); return 2; });
  auto slow = cogent::spawn([] { cogent::sleep(2s); return 3; });
  auto t0 = clock::now();
  auto done = cogent::joinall({slow, mid, fast}, std::nullopt, false, 2);
  CHECK(clock::now() - t0 < 1s);  // did not wait for slow
  REQUIRE(done.size() == 2);
  CHECK(done[0] == mid);  // in the given order
  CHECK(done[1] == fast);
  cogent::iwait it(std::vector<cogent::task_base>{slow, mid, fast}, std::nullopt, 1);
  CHECK(it.next() == mid);  // (both already finished: in the order their links ran)
  CHECK_FALSE(it.next());   // count reached: no waiting for slow
  CHECK(clock::now() - t0 < 1s);
  // With raise_error, a failure among the first `count` is rethrown; count 0 returns at once.
  auto bad = cogent::spawn([]() -> int {
    cogent::sleep(1ms);
    throw custom_error("bad");
  });
  CHECK_THROWS_WITH_AS(cogent::joinall({slow, bad}, std::nullopt, true, 1), "bad", custom_error);
  CHECK(cogent::joinall({slow}, std::nullopt, false, 0).empty());
  slow.kill();
}

COGENT_TEST_CASE("current_task inside tasks", doctest::timeout(10)) {
  cogent::task_base seen;
  auto t = cogent::spawn([&] { seen = cogent::current_task(); });
  t.join();
  CHECK(seen == t);
  CHECK(cogent::current_task() != t);
}

TEST_CASE("current_task is empty in main" * doctest::timeout(10)) {
  CHECK_FALSE(cogent::current_task());
}

COGENT_TEST_CASE("live_tasks and active_count", doctest::timeout(10)) {
  std::size_t base = cogent::active_count();
  CHECK(cogent::live_tasks().size() == base);
  std::vector<cogent::task<void>> ts;
  for (int i = 0; i < 3; ++i) {
    ts.push_back(cogent::spawn([] { cogent::sleep(5ms); }));
  }
  CHECK(cogent::active_count() == base + 3);
  auto live = cogent::live_tasks();
  CHECK(live.size() == base + 3);
  for (auto& t : ts) {
    CHECK(std::find(live.begin(), live.end(), cogent::task_base(t)) != live.end());
  }
  cogent::joinall(ts);
  CHECK(cogent::active_count() == base);
}

COGENT_TEST_CASE("an unjoined exception is reported exactly once and never terminates",
                 doctest::timeout(10)) {
  int reports = 0;
  std::string what;
  std::string name;
  cogent::set_task_error_handler([&](const cogent::task_base& t, std::exception_ptr e) {
    ++reports;
    what = cogent::describe_exception(e);
    name = t.name();
  });
  auto t = cogent::spawn(cogent::spawn_options{"doomed"}, [] { throw custom_error("unseen"); });
  cogent::sleep(5ms);
  CHECK(reports == 1);
  CHECK(what == "unseen");
  CHECK(name == "doomed");
  t.join();  // joining later does not report again
  CHECK_THROWS_AS(t.get(), custom_error);
  CHECK(reports == 1);

  // A task someone is joining when it fails is not reported.
  auto joined = cogent::spawn([] {
    cogent::sleep(1ms);
    throw custom_error("seen");
  });
  joined.join();
  CHECK(reports == 1);
  // Killing with a custom error counts as observed too.
  auto killed = cogent::spawn([] { cogent::sleep(10s); });
  cogent::sleep(1ms);
  killed.kill(std::make_exception_ptr(custom_error("k")));
  CHECK(reports == 1);
  cogent::set_task_error_handler(nullptr);
}

TEST_CASE("the default handler reports an unjoined exception on stderr, once, by name" *
          doctest::timeout(20)) {
  // In a child, on a new thread with its own hub: stderr is captured, and the process must
  // carry on to a clean exit after the report.
  cogent::test::child_result r = cogent::test::run_in_child([] {
    std::thread([] {
      auto t = cogent::spawn(cogent::spawn_options{"doomed-worker"},
                             [] { throw std::runtime_error("disk on fire"); });
      cogent::sleep(5ms);
      t.join();  // joining afterwards neither reports again nor rethrows
      std::fprintf(stderr, "still running\n");
    }).join();
  });
  INFO("child stderr: " << r.err);
  CHECK(r.exited(0));
  CHECK(r.err.find("cogent: task 'doomed-worker' failed: disk on fire") != std::string::npos);
  CHECK(r.err.find("failed:") == r.err.rfind("failed:"));  // exactly once
  CHECK(r.err.find("still running") != std::string::npos);
}

COGENT_TEST_CASE("spawn_later orders by delay", doctest::timeout(10)) {
  std::vector<int> order;
  auto a = cogent::spawn_later(30ms, [&] { order.push_back(30); });
  auto b = cogent::spawn_later(10ms, [&] { order.push_back(10); });
  auto c = cogent::spawn([&] { order.push_back(0); });
  auto t0 = clock::now();
  CHECK_FALSE(b.started());
  cogent::joinall({a, b, c});
  CHECK(order == std::vector<int>{0, 10, 30});
  CHECK(clock::now() - t0 >= 30ms);
}

COGENT_TEST_CASE("a spawn_later task blocks and times out like any other", doctest::timeout(10)) {
  // Its delayed start and its own later waits share the fiber's park timer.
  auto t0 = clock::now();
  auto t = cogent::spawn_later(10ms, [] {
    cogent::sleep(10ms);
    cogent::event never;
    return never.wait(10ms);  // times out
  });
  CHECK_FALSE(t.get());
  CHECK(clock::now() - t0 >= 30ms);
  CHECK(cogent::hub::current().timer_count() == 0);
}

COGENT_TEST_CASE("named tasks", doctest::timeout(10)) {
  auto t = cogent::spawn(cogent::spawn_options{"worker-1"}, [] {});
  CHECK(t.name() == "worker-1");
  auto u = cogent::spawn([] {});
  CHECK(u.name() == "task-" + std::to_string(u.id()));
  cogent::joinall({t, u});
}

// Regressions found in review.

COGENT_TEST_CASE("a kill is not lost behind a pending Timeout error", doctest::timeout(10)) {
  bool caught = false;
  bool survived = false;
  cogent::test::job_gate gate;  // the job ends once the kill is sent, not after a fixed sleep
  auto t = cogent::spawn([&] {
    try {
      cogent::timeout to(5ms);
      cogent::default_threadpool().run(gate.job());  // non-interruptible wait
    } catch (const cogent::timeout_error&) {
      caught = true;
    }
    cogent::sleep(300ms);
    survived = true;
  });
  cogent::sleep(20ms);  // the timeout fired while the task waits on the thread pool
  auto opener = cogent::spawn([&] { gate.open(); });  // runs once the kill below is sent
  t.kill(nullptr, true, 1s);
  CHECK(t.ready());
  CHECK(t.killed());
  CHECK_FALSE(caught);  // the kill took the place of the pending timeout
  CHECK_FALSE(survived);
  opener.join();
}

COGENT_TEST_CASE("nested timeouts: the outer one still fires after the inner one is caught",
                 doctest::timeout(10)) {
  bool outer_fired = false;
  cogent::test::job_gate gate;
  // Opens the gate after both deadlines (its timer is later than the outer one's): both expire meanwhile.
  auto opener = cogent::spawn([&] {
    cogent::sleep(40ms);
    gate.open();
  });
  try {
    cogent::timeout outer(30ms);
    try {
      cogent::timeout inner(5ms);
      cogent::default_threadpool().run(gate.job());
    } catch (const cogent::timeout_error&) {
    }
    cogent::sleep(1s);
  } catch (const cogent::timeout_error& e) {
    outer_fired = true;
  }
  CHECK(outer_fired);
  opener.join();  // (it uses the gate)
}

COGENT_TEST_CASE("throw_in() into a task parked in the hub raises at its blocking point",
                 doctest::timeout(10)) {
  cogent::fiber target;
  std::string got;
  auto t = cogent::spawn([&] {
    target = cogent::fiber::current();
    try {
      cogent::sleep(5s);
    } catch (const std::runtime_error& e) {
      got = e.what();
    }
  });
  cogent::sleep(5ms);
  target.throw_in(std::make_exception_ptr(std::runtime_error("boom")));
  target = cogent::fiber();
  t.join();
  CHECK(got == "boom");
  CHECK(cogent::hub::current().timer_count() == 0);  // its sleep timer was disarmed, not left dangling
}

COGENT_TEST_CASE("wait_any that times out while a blocking link runs is unlinked safely",
                 doctest::timeout(10)) {
  auto t = cogent::spawn([] { cogent::sleep(5ms); });
  t.link([](const cogent::task_base&) { cogent::sleep(50ms); });  // a link that blocks
  {
    auto first = cogent::wait_any({t}, 20ms);  // gives up while the first link sleeps
    CHECK_FALSE(first);
  }
  {
    std::vector<long> scribble(64, -1);  // reuse the stack the iwait lived on
    cogent::sleep(100ms);
    CHECK(scribble[0] == -1);
  }
  CHECK(t.ready());
}

COGENT_TEST_CASE("killall() called by one of the tasks kills the others, then the caller",
                 doctest::timeout(10)) {
  std::vector<cogent::task_base> ts;
  for (int i = 0; i < 6; ++i) {
    ts.push_back(cogent::spawn([] { cogent::sleep(10s); }));
  }
  bool after = false;
  auto killer = cogent::spawn([&] {
    cogent::killall(ts);  // block: must not try to join itself
    after = true;
  });
  ts.insert(ts.begin(), killer);  // the caller comes first
  CHECK(killer.join(1s));
  CHECK(killer.killed());
  CHECK_FALSE(after);
  for (const auto& t : ts) {
    CHECK(t.join(1s));
    CHECK(t.killed());
  }
  cogent::killall(ts);
}

COGENT_TEST_CASE("joinall(timeout) returns the finished tasks listed after an unfinished one",
                 doctest::timeout(10)) {
  auto slow = cogent::spawn([] { cogent::sleep(1s); });
  auto fast = cogent::spawn([] { cogent::sleep(1ms); });
  auto t0 = clock::now();
  auto done = cogent::joinall({slow, fast}, 20ms);
  CHECK(clock::now() - t0 >= 20ms);
  CHECK(clock::now() - t0 < 500ms);
  CHECK((done == std::vector<cogent::task_base>{fast}));
  // Past the deadline the rest is only looked at, not waited for.
  auto t1 = clock::now();
  CHECK(cogent::joinall({slow, fast}, 0ms).size() == 1);
  CHECK(clock::now() - t1 < 500ms);
  slow.kill();
}

COGENT_TEST_CASE("started() is false for a task killed before it ran", doctest::timeout(10)) {
  bool ran = false;
  auto t = cogent::spawn([&] { ran = true; });
  auto later = cogent::spawn_later(5ms, [&] { ran = true; });
  // No switch before both kills: a blocking kill of t first let a stalled thread's hub start `later`
  // (its 5 ms gone) before it was killed.
  t.kill(nullptr, false);
  later.kill();
  CHECK(t.killed());
  CHECK(later.killed());
  CHECK_FALSE(t.started());
  CHECK_FALSE(later.started());
  cogent::sleep(10ms);
  CHECK_FALSE(ran);
  CHECK_FALSE(t.started());
  auto u = cogent::spawn([] { cogent::sleep(10s); });
  cogent::yield();
  CHECK(u.started());
  u.kill();
  CHECK(u.started());
}

COGENT_TEST_CASE("an error whose only joiner was killed before it could look is still reported",
                 doctest::timeout(10)) {
  int reports = 0;
  cogent::set_task_error_handler([&](const cogent::task_base&, std::exception_ptr) { ++reports; });
  cogent::detail::wait_list go;
  auto failing = cogent::spawn([&] {
    go.wait();
    throw std::runtime_error("nobody sees this");
  });
  auto joiner = cogent::spawn([&] { failing.join(); });
  cogent::sleep(2ms);
  go.notify_one();
  joiner.kill(nullptr, false);  // the joiner leaves in the same turn the task fails
  cogent::sleep(5ms);
  CHECK(joiner.killed());
  CHECK(failing.ready());
  CHECK(reports == 1);
  cogent::set_task_error_handler(nullptr);
}

COGENT_TEST_CASE("an error one of two joiners sees is not reported, whichever leaves first",
                 doctest::timeout(10)) {
  int reports = 0;
  cogent::set_task_error_handler([&](const cogent::task_base&, std::exception_ptr) { ++reports; });
  for (bool killed_first : {true, false}) {
    cogent::detail::wait_list go;
    auto failing = cogent::spawn([&] {
      go.wait();
      throw std::runtime_error("seen");
    });
    bool seen = false;
    auto looker = [&] { seen = failing.join() && failing.exception() != nullptr; };
    auto doomed = [&] { failing.join(); };
    cogent::task<void> first = killed_first ? cogent::spawn(doomed) : cogent::spawn(looker);
    cogent::task<void> second = killed_first ? cogent::spawn(looker) : cogent::spawn(doomed);
    cogent::sleep(2ms);
    go.notify_one();
    (killed_first ? first : second).kill(nullptr, false);
    cogent::sleep(5ms);
    CHECK(first.ready());
    CHECK(second.ready());
    CHECK(seen);
  }
  CHECK(reports == 0);
  // Joined normally, then nobody left: reported by nobody (the joiner saw it).
  auto t = cogent::spawn([]() { throw std::runtime_error("joined"); });
  CHECK(t.join());
  CHECK(reports == 0);
  cogent::set_task_error_handler(nullptr);
}

}  // namespace

#if !defined(__SANITIZE_ADDRESS__)  // ASan reserves terabytes of shadow: an address-space limit breaks it
// A stack is mapped at a task's first switch. If that fails (here: RLIMIT_AS and a 1 GiB stack), the
// task fails with the std::system_error and its joiners wake; nothing else is disturbed.
TEST_CASE("a task whose stack cannot be mapped fails with the error" * doctest::timeout(20)) {
  cogent::test::child_result r = cogent::test::run_in_child([] {
    std::thread t([] {  // a fresh thread: a hub of its own, not the parent's (forked) one
      cogent::hub::current();
      cogent::yield();
      cogent::test::limit_address_space(256 * 1024);
      bool ran = false;
      auto big = cogent::spawn(cogent::spawn_options{"big", std::size_t{1} << 30}, [&] { ran = true; });
      auto small = cogent::spawn([] { return 7; });
      try {
        big.get();
        std::fprintf(stderr, "no error\n");
      } catch (const std::system_error& e) {
        std::fprintf(stderr, "errno=%d ran=%d small=%d\n", e.code().value(), ran ? 1 : 0, small.get());
      }
    });
    t.join();
  });
  REQUIRE_FALSE(r.exited(cogent::test::child_setup_failed));
  CHECK(r.exited(0));
  CHECK(r.err.find("errno=12 ran=0 small=7") != std::string::npos);
  INFO("child stderr: " << r.err);
}
#endif

COGENT_TEST_CASE("a task's function and arguments go when it finishes; a forgotten task still runs",
                 doctest::timeout(10)) {
  // The task is its own control block: a handle keeps its result, not what it ran with.
  auto arg = std::make_shared<int>(1);
  auto captured = std::make_shared<int>(2);
  std::weak_ptr<int> arg_w = arg, cap_w = captured;
  auto t = cogent::spawn([c = std::move(captured)](std::shared_ptr<int> a) { return *a + *c; }, std::move(arg));
  CHECK_FALSE(arg_w.expired());
  CHECK(t.get() == 3);
  CHECK(arg_w.expired());
  CHECK(cap_w.expired());
  CHECK(t.ready());
  // Killed before it started: never run, what it would have run with goes
  // at the kill (it has finished), though the handle still holds the task.
  auto never = std::make_shared<int>(0);
  std::weak_ptr<int> never_w = never;
  {
    auto k = cogent::spawn([n = std::move(never)] { return *n; });
    k.kill();
    CHECK(k.killed());
    CHECK(never_w.expired());
  }
  cogent::sleep(0ms);  // it was queued to run: the hub drops it at its turn, without running it
  CHECK(never_w.expired());
  // No handle at all: the task holds itself until it finishes.
  int ran = 0;
  cogent::spawn([&] {
    cogent::sleep(1ms);
    ++ran;
  });
  CHECK(cogent::active_count() >= 1);
  cogent::sleep(20ms);
  CHECK(ran == 1);
}

COGENT_TEST_CASE("task_base::as<T>() gives the typed handle back for iwait, wait_any and joinall results") {
  std::vector<cogent::task<std::string>> fetches;
  for (int i = 0; i < 3; ++i) {
    fetches.push_back(cogent::spawn([i] {
      cogent::sleep(std::chrono::milliseconds(5 * (3 - i)));
      return "page " + std::to_string(i);
    }));
  }
  std::vector<std::string> order;
  for (cogent::iwait it(fetches); auto t = it.next();) {
    order.push_back(t.as<std::string>().get());
  }
  CHECK(order == std::vector<std::string>{"page 2", "page 1", "page 0"});
  cogent::task_base any = cogent::wait_any({fetches[0]});
  CHECK(any.as<std::string>() == fetches[0]);
  auto n = cogent::spawn([] { return 7; });
  cogent::task_base untyped = n;
  CHECK(untyped.as<int>().get() == 7);
  CHECK_THROWS_WITH_AS((void)untyped.as<long>(), doctest::Contains("does not return long"), std::logic_error);
  CHECK_THROWS_AS((void)cogent::task_base().as<int>(), std::logic_error);
  auto v = cogent::spawn([] {});
  CHECK_NOTHROW(cogent::task_base(v).as<void>().get());
}
