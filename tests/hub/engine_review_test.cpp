// tests/hub/engine_review_test.cpp — adversarial review of hub/detail/uring_engine.cpp and hub/core.cpp.
// Two cases failed before the fix that came with this file: await_io cancelling its op (ECANCELED)
// when woken by a Timeout withdrawn before it ran, and wait() blocking with ops left in the backlog.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "hub/core.hpp"
#include "hub/detail/engine.hpp"
#include "hub/task.hpp"
#include "hub/threadpool.hpp"
#include "hub/timeout.hpp"
#include "hub/sync.hpp"
#include "tests/hub/engine_support.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::test::counted_op;
using cogent::test::drive;
using cogent::test::pipe_fds;
using clk = cogent::clock;
using cogent::detail::io_op;
using cogent::detail::op_code;

namespace {

struct node : cogent::detail::timer_node {
  int id = 0;
  int fired = 0;
  bool want = false;
};
std::vector<std::pair<clk::time_point, int>> fire_log;

}  // namespace

TEST_SUITE("engine review") {

// A Timeout that expires while a fiber waits in await_io, and is then cancelled by another fiber before
// the woken fiber runs: too late (timeout.hpp), the op is cancelled and the Timeout raised — never an
// -ECANCELED no one asked for (what await_io returned when such a cancel still withdrew the error).
COGENT_TEST_CASE("review: a Timeout cancelled after it woke await_io is raised, not ECANCELED",
                 doctest::timeout(10)) {
  pipe_fds p;
  cogent::timeout* scope = nullptr;
  int result = 12345;
  bool raised = false;
  char byte = 0;
  auto a = cogent::spawn([&] {
    cogent::timeout t(10ms);
    scope = &t;
    io_op op;
    op.code = op_code::read;
    op.fd = p.r;
    op.buf = &byte;
    op.len = 1;
    try {
      result = cogent::hub::current().await_io(op);
    } catch (const cogent::timeout_error&) {
      raised = true;
    }
    scope = nullptr;
  });
  auto b = cogent::spawn([&] {
    cogent::sleep(5ms);  // earlier deadline than a's timeout: fires first in the same expire pass
    if (scope != nullptr) {
      scope->cancel();  // too late: the timeout_error already woke `a`
    }
    cogent::sleep(5ms);
    REQUIRE(::write(p.w, "x", 1) == 1);
  });
  auto c = cogent::spawn([&] {
    std::this_thread::sleep_for(30ms);  // hog the hub so both timers expire in one pass
  });
  cogent::joinall({a, b, c});
  CHECK(raised);
  CHECK(result == 12345);  // nothing returned (it was -ECANCELED, -125)
}

// The tiny-ring hub: many fibers, each parked in await_io on a pipe read, with a mix of data, per-call
// deadlines, Timeouts and kills. Every op must complete exactly once with the right outcome.
TEST_CASE("review: a 1-entry ring hub with hundreds of concurrent ops, timeouts and kills" *
          doctest::timeout(30)) {
  std::atomic<int> bad{0};
  std::atomic<int> done{0};
  std::thread([&] {
    cogent::hub_config cfg;
    cfg.ring_entries = 1;
    cogent::hub::configure(cfg);
    constexpr int n = 300;
    std::vector<std::unique_ptr<pipe_fds>> pipes;
    for (int i = 0; i < n; ++i) pipes.push_back(std::make_unique<pipe_fds>());
    std::vector<cogent::task<void>> readers;
    for (int i = 0; i < n; ++i) {
      readers.push_back(cogent::spawn([&, i] {
        char b[4];
        io_op op;
        op.code = op_code::read;
        op.fd = pipes[i]->r;
        op.buf = b;
        op.len = sizeof b;
        int mode = i % 4;
        try {
          if (mode == 0) {  // data arrives
            int r = cogent::hub::current().await_io(op);
            if (r != 1) { ++bad; std::printf("mode0 %d -> %d\n", i, r); }
          } else if (mode == 1) {  // per-call deadline
            int r = cogent::hub::current().await_io(op, clk::now() + 20ms);
            if (r != -ETIMEDOUT) { ++bad; std::printf("mode1 %d -> %d\n", i, r); }
          } else if (mode == 2) {  // Timeout scope
            try {
              cogent::timeout t(20ms);
              int r = cogent::hub::current().await_io(op);
              ++bad;
              std::printf("mode2 %d -> %d\n", i, r);
            } catch (const cogent::timeout_error&) {
            }
          } else {  // killed
            int r = cogent::hub::current().await_io(op);
            ++bad;
            std::printf("mode3 %d -> %d\n", i, r);
          }
        } catch (...) {
          if (mode != 3) { ++bad; std::printf("mode%d %d threw\n", mode, i); }
          throw;
        }
        ++done;
      }));
    }
    cogent::sleep(5ms);
    for (int i = 0; i < n; i += 4) REQUIRE(::write(pipes[i]->w, "y", 1) == 1);
    for (int i = 3; i < n; i += 4) readers[i].kill();
    for (auto& r : readers) r.join();
    if (cogent::hub::current().io().in_flight() != 0) {
      ++bad;
      std::printf("in_flight %zu\n", cogent::hub::current().io().in_flight());
    }
  }).join();
  CHECK(bad == 0);
  CHECK(done == 225);
}

// Engine level, tiny ring: cancel many ops still in the SQ, then reuse the same op addresses; the
// stale cancels must not hit the reused ops and each delivery happens exactly once.
TEST_CASE("review: cancel then reuse of op addresses on a 1-entry ring" * doctest::timeout(20)) {
  auto e = cogent::detail::make_uring_engine(1);
  constexpr int n = 64;
  std::vector<std::unique_ptr<pipe_fds>> pipes;
  for (int i = 0; i < n; ++i) pipes.push_back(std::make_unique<pipe_fds>());
  std::vector<counted_op> ops(n);
  std::vector<char> bufs(n);
  for (int round = 0; round < 5; ++round) {
    for (int i = 0; i < n; ++i) {
      ops[i].code = op_code::read;
      ops[i].fd = pipes[i]->r;
      ops[i].buf = &bufs[i];
      ops[i].len = 1;
      ops[i].deliveries = 0;
      e->submit(ops[i]);
    }
    for (int i = 0; i < n; ++i) e->cancel(ops[i]);
    auto end = clk::now() + 3s;
    while (e->in_flight() > 0 && clk::now() < end) e->wait(clk::now() + 50ms);
    REQUIRE(e->in_flight() == 0);
    for (int i = 0; i < n; ++i) {
      CHECK(ops[i].deliveries == 1);
      CHECK(ops[i].result == -ECANCELED);
    }
    // Reuse: data is there, so each must complete with 1 byte.
    for (int i = 0; i < n; ++i) {
      REQUIRE(::write(pipes[i]->w, "z", 1) == 1);
      ops[i].deliveries = 0;
      e->submit(ops[i]);
    }
    end = clk::now() + 3s;
    while (e->in_flight() > 0 && clk::now() < end) e->wait(clk::now() + 50ms);
    REQUIRE(e->in_flight() == 0);
    for (int i = 0; i < n; ++i) {
      CHECK(ops[i].deliveries == 1);
      CHECK(ops[i].result == 1);
    }
  }
}

// Timers: random add / cancel / re-add through the public hub API; fire order must follow deadlines and
// every armed timer must fire exactly once.
COGENT_TEST_CASE("review: random timer add/cancel/re-add fires in order, exactly once", doctest::timeout(20)) {
  fire_log.clear();
  auto& log = fire_log;
  auto& h = cogent::hub::current();
  std::mt19937 rng(42);
  constexpr int n = 2000;
  std::vector<node> nodes(n);
  auto base = clk::now() + 30ms;
  for (int i = 0; i < n; ++i) {
    nodes[i].id = i;
    nodes[i].fire = [](cogent::detail::timer_node* t) {
      auto* nd = static_cast<node*>(t);
      ++nd->fired;
      fire_log.push_back({nd->deadline, nd->id});
    };
  }
  for (int step = 0; step < 20000; ++step) {
    int i = static_cast<int>(rng() % n);
    node& nd = nodes[i];
    if (nd.armed()) {
      h.cancel_timer(nd);
      nd.want = false;
    } else {
      // A mix: equal deadlines, monotone ones (the run), and random ones (the heap).
      int kind = static_cast<int>(rng() % 3);
      auto off = kind == 0 ? 0us : kind == 1 ? std::chrono::microseconds(step) : std::chrono::microseconds(rng() % 20000);
      nd.deadline = base + off;
      h.add_timer(nd);
      nd.want = true;
    }
  }
  int want = 0;
  for (auto& nd : nodes) want += nd.want;
  CHECK(h.timer_count() == static_cast<std::size_t>(want));
  cogent::sleep(80ms);
  CHECK(log.size() == static_cast<std::size_t>(want));
  CHECK(std::is_sorted(log.begin(), log.end(), [](auto& a, auto& b) { return a.first < b.first; }));
  int wrong = 0;
  for (auto& nd : nodes) wrong += (nd.fired != (nd.want ? 1 : 0));
  CHECK(wrong == 0);
  CHECK(h.timer_count() == 0);
}

// would_block_forever must not be raised while thread-pool work or a held cross-thread producer is pending.
COGENT_TEST_CASE("review: no would_block_forever while a held cross-thread post is on its way",
                 doctest::timeout(10)) {
  auto& h = cogent::hub::current();
  cogent::event ev;
  h.hold();
  std::thread t([&] {
    std::this_thread::sleep_for(50ms);
    h.post([&] {
      ev.set();
      h.release();
    });
  });
  CHECK_NOTHROW(ev.wait());
  t.join();
}

}  // TEST_SUITE

// ---- fault injection: io_uring_submit() refused (tests/hub/refused_submit.hpp).
#include <cstdio>

#include "tests/hub/refused_submit.hpp"
using cogent::test::g_refuse_submit;

TEST_SUITE("engine review") {
// Two transient refusals: B (a write that A, a read, waits for) lands in the backlog. wait() tries the
// backlog once (refused), then submit_and_wait hands the SQ (A) to the kernel — freeing room — and blocks
// with B still in user space. Nothing drains the backlog until the wait returns: with no deadline (a hub
// with no timers) that is forever.
TEST_CASE("review: an op left in the backlog is not handed to the kernel by the next wait()" *
          doctest::timeout(10)) {
  auto e = cogent::detail::make_uring_engine(1);
  pipe_fds p;
  char in = 0;
  char out = 'q';
  counted_op a, b;
  a.code = op_code::read;
  a.fd = p.r;
  a.buf = &in;
  a.len = 1;
  b.code = op_code::write;
  b.fd = p.w;
  b.buf = &out;
  b.len = 1;
  e->wait(clk::now());  // settle the wake reader
  e->submit(a);         // takes the only SQE
  g_refuse_submit = 2;  // transient: refused twice, then fine
  e->submit(b);         // SQ full, flush refused: backlog
  auto t0 = clk::now();
  int got = e->wait(clk::now() + 1500ms);  // the kernel accepts again from here on
  double ms = std::chrono::duration<double, std::milli>(clk::now() - t0).count();
  g_refuse_submit = 0;
  INFO("first wait delivered " << got << " after " << ms << " ms; b.deliveries=" << b.deliveries);
  CHECK(b.deliveries == 1);  // bug: B still in the backlog, the wait slept to its deadline
  CHECK(ms < 500);
  auto end = clk::now() + 3s;
  while (e->in_flight() > 0 && clk::now() < end) e->wait(clk::now() + 50ms);
  CHECK(a.deliveries == 1);
  CHECK(a.result == 1);
}
// flush() promises that every queued op has been taken by the kernel (monkey's close/dup2 hooks rely on
// it). With the submit refused (twice), it used to return with the op still queued: a dup2() onto its fd
// number right after then made it read another file.
TEST_CASE("flush() under refused submits still hands every queued op to the kernel" * doctest::timeout(10)) {
  auto e = cogent::detail::make_uring_engine(8);
  pipe_fds a, b;
  char in = 0;
  counted_op rd;
  rd.code = op_code::read;
  rd.fd = a.r;
  rd.buf = &in;
  rd.len = 1;
  e->wait(clk::now());  // settle the wake reader
  counted_op nop;       // completed and left in the CQ: flush() moves it aside to make room
  nop.code = op_code::nop;
  e->submit(nop);
  e->flush();
  e->submit(rd);
  g_refuse_submit = 2;  // transient: refused twice, then fine
  e->flush();
  int refusals_left = g_refuse_submit.exchange(0);
  CHECK(refusals_left == 0);
  // The number now names pipe b's read end; the op was queued for pipe a's, and the kernel has it.
  int saved = ::dup(a.r);
  REQUIRE(::dup2(b.r, a.r) == a.r);
  REQUIRE(::write(b.w, "B", 1) == 1);
  REQUIRE(::write(a.w, "A", 1) == 1);
  REQUIRE(drive(*e, [&] { return rd.done; }));
  CHECK(rd.result == 1);
  CHECK(in == 'A');
  CHECK(rd.deliveries == 1);
  CHECK(nop.deliveries == 1);  // moved aside, then delivered once, with its result
  CHECK(nop.result == 0);
  CHECK(e->in_flight() == 0);
  ::dup2(saved, a.r);  // give pipe a its number back (pipe_fds closes it)
  ::close(saved);
}

}  // TEST_SUITE
