// tests/hub/engine_review2_test.cpp — second adversarial review of the io_uring engine
// (hub/detail/uring_engine.cpp) and the hub loop's submit/cancel/reap paths (hub/core.cpp).
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "hub/core.hpp"
#include "hub/detail/engine.hpp"
#include "hub/task.hpp"
#include "tests/child.hpp"
#include "tests/hub/engine_support.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::test::counted_op;
using cogent::test::pipe_fds;
using clk = cogent::clock;
using cogent::detail::io_op;
using cogent::detail::op_code;

namespace {

double ms_since(clk::time_point t0) {
  return std::chrono::duration<double, std::milli>(clk::now() - t0).count();
}

}  // namespace

TEST_SUITE("engine review 2") {

}  // TEST_SUITE

// ---- fault injection: io_uring_submit() refused (tests/hub/refused_submit.hpp).
#include <dlfcn.h>
#include <liburing.h>

#include "tests/hub/refused_submit.hpp"
using cogent::test::g_refuse_submit;
using cogent::test::g_refused;

// Ring setup refused for chosen flags (a kernel too old for them answers EINVAL), to drive the fallbacks.
namespace {
std::atomic<unsigned> g_reject_setup_flags{0};
}
extern "C" __attribute__((visibility("default"))) int io_uring_queue_init_params(unsigned entries, struct io_uring* ring,
                                                                                 struct io_uring_params* p) {
  using fn_t = int (*)(unsigned, struct io_uring*, struct io_uring_params*);
  static fn_t real = reinterpret_cast<fn_t>(::dlsym(RTLD_NEXT, "io_uring_queue_init_params"));
  if ((p->flags & g_reject_setup_flags.load()) != 0) {
    return -EINVAL;
  }
  return real(entries, ring, p);
}

TEST_SUITE("engine review 2") {

// The wake reader is re-armed inside reap(), before the callbacks of that pass, with a plain
// io_uring_get_sqe(). If a previous pass's callbacks filled the SQ (here a 1-entry ring whose CQ
// overflowed, so reap() goes round several passes) and the kernel refuses the flush once, the reader
// stays unarmed (_wake_armed = false) and nothing re-arms it before the next wait() blocks: a wake()
// from another thread then writes the eventfd with no read on it, and wait() sleeps to its deadline —
// forever with none (a hub with no timers waiting for a thread-pool result or a post()).
TEST_CASE("review2: a wake() after the wake reader failed to re-arm still ends the next wait() promptly" *
          doctest::timeout(20)) {
  auto e = cogent::detail::make_uring_engine(1);  // SQ 1, CQ 4
  e->wait(clk::now());                            // the wake reader reaches the kernel
  pipe_fds p;
  char byte = 0;
  struct refiller : io_op {
    cogent::detail::engine* eng = nullptr;
    io_op* next = nullptr;
  };
  counted_op pending_read;  // submitted from a callback: fills the 1-slot SQ and stays pending
  pending_read.code = op_code::read;
  pending_read.fd = p.r;
  pending_read.buf = &byte;
  pending_read.len = 1;
  // 5 nops: 4 fill the CQ, the 5th and the wake read's completion wait in the overflow list, so the
  // one reap() goes round: pass 1 delivers 4 (the first callback fills the SQ), pass 3 sees the wake.
  constexpr int n = 5;
  std::vector<refiller> nops(n);
  for (auto& op : nops) {
    op.code = op_code::nop;
    op.eng = e.get();
    op.next = &pending_read;
    op.on_complete = [](io_op* o) {
      auto* self = static_cast<refiller*>(o);
      if (self->next->user == nullptr) {  // the first nop delivered submits the read
        self->next->user = self;
        self->eng->submit(*self->next);
        g_refuse_submit = 1;  // the next io_uring_submit (the re-arm's flush) is refused
      }
    };
  }
  for (auto& op : nops) e->submit(op);  // each submit past the first flushes the SQ (1 slot)
  e->wake();                            // the wake read completes behind the nops
  auto end = clk::now() + 2s;
  int delivered = 0;
  while (delivered < n && clk::now() < end) {
    delivered += e->poll();
  }
  g_refuse_submit = 0;
  REQUIRE(delivered == n);
  INFO("refused submits: " << g_refused.load());
  // Now a wake() from another thread must end a wait() with a far deadline promptly.
  std::thread waker([&] {
    std::this_thread::sleep_for(50ms);
    e->wake();
  });
  auto t0 = clk::now();
  e->wait(clk::now() + 1500ms);
  double ms = ms_since(t0);
  waker.join();
  CHECK(ms < 700);  // bug: ~1500 ms, the wake was lost (no read armed on the eventfd)
  // Clean up the pending read.
  e->cancel(pending_read);
  end = clk::now() + 2s;
  while (pending_read.deliveries == 0 && clk::now() < end) e->wait(clk::now() + 50ms);
  CHECK(pending_read.deliveries == 1);
}

// Calling a hub's blocking toolkit from a thread that does not own it is misuse (hub_error's own
// description: "using a hub from a thread that does not own it"). park() there must raise a clear error;
// it spins forever instead: suspend() catches the fiber layer's "belongs to another thread" error as if
// it were a throw_in, makes it pending, and switches to the foreign hub fiber again, and again.
TEST_CASE("review2: park() on another thread's hub raises an error instead of spinning forever" *
          doctest::timeout(20)) {
  cogent::test::child_result r = cogent::test::run_in_child([] {
    ::alarm(3);
    cogent::hub& owner = cogent::hub::current();
    std::thread([&] {
      try {
        owner.park(clk::now() + 10ms, true);
        std::fprintf(stderr, "returned\n");
      } catch (const std::exception& e) {
        std::fprintf(stderr, "raised: %s\n", e.what());
      }
    }).join();
  });
  INFO("child status " << r.status << " stderr: " << r.err);
  CHECK(r.exited(0));
  CHECK(r.err.find("raised") != std::string::npos);
}

// Fallback rings (a kernel without DEFER_TASKRUN, or without COOP_TASKRUN either): the engine must still
// see completions from outside in poll() alone, be woken by wake(), and run a hub.
TEST_CASE("review2 ok: the COOP_TASKRUN and no-flags fallback rings poll, wake and run a hub" * doctest::timeout(20)) {
  for (unsigned reject : {unsigned{IORING_SETUP_DEFER_TASKRUN},
                          unsigned{IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL}}) {
    g_reject_setup_flags = reject;
    auto e = cogent::detail::make_uring_engine(4);
    std::string name = e->name();
    INFO("engine: " << name);
    CHECK(name.find("DEFER") == std::string::npos);
    pipe_fds p;
    char byte = 0;
    counted_op rd;
    rd.code = op_code::read;
    rd.fd = p.r;
    rd.buf = &byte;
    rd.len = 1;
    e->submit(rd);
    CHECK(e->poll() == 0);
    std::thread writer([&] {
      std::this_thread::sleep_for(10ms);
      (void)::write(p.w, "x", 1);
    });
    auto end = clk::now() + 3s;
    while (rd.deliveries == 0 && clk::now() < end) {
      e->poll();
    }
    writer.join();
    CHECK(rd.deliveries == 1);
    CHECK(rd.result == 1);
    std::thread waker([&] {
      std::this_thread::sleep_for(30ms);
      e->wake();
    });
    auto t0 = clk::now();
    e->wait(clk::time_point::max());
    waker.join();
    CHECK(ms_since(t0) < 1000);
    std::atomic<int> ran{0};
    std::thread([&] {
      cogent::hub_config cfg;
      cfg.ring_entries = 2;
      cogent::hub::configure(cfg);
      std::vector<cogent::task<void>> ts;
      for (int i = 0; i < 20; ++i) {
        ts.push_back(cogent::spawn([&] {
          cogent::sleep(1ms);
          ++ran;
        }));
      }
      cogent::joinall(ts);
      std::string hn = cogent::hub::current().engine_name();
      if (hn.find("DEFER") != std::string::npos) ran = -100;
    }).join();
    CHECK(ran == 20);
  }
  g_reject_setup_flags = 0;
}

}  // TEST_SUITE
