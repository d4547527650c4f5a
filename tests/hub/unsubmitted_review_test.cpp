// tests/hub/unsubmitted_review_test.cpp — adversarial review of da261e9: a kill / Timeout cancels
// the op its fiber is parked on from interrupt() itself, and the engine's cancel() turns an op the
// kernel has not taken yet into a nop completed locally with -ECANCELED (never for a close).
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <poll.h>
#include <fcntl.h>
#include <liburing.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "hub/core.hpp"
#include "hub/detail/engine.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "tests/hub/engine_support.hpp"
#include "tests/hub/refused_submit.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::test::counted_op;
using cogent::test::drive;
using cogent::test::pipe_fds;
using cogent::test::waiting_client;
using clk = cogent::clock;
using cogent::detail::io_op;
using cogent::detail::op_code;

// ---- fault injection: io_uring_submit() refused (tests/hub/refused_submit.hpp).
using cogent::test::g_refuse_submit;

namespace {


bool fd_open(int fd) { return ::fcntl(fd, F_GETFD) >= 0; }



// accept_op() is an accept on l through hub::await_io, the accepted fd closed by release.
int accept_op(int l) {
  io_op op;
  op.code = op_code::accept;
  op.fd = l;
  op.flags = SOCK_CLOEXEC;
  return cogent::hub::current().await_io(op, clk::time_point::max(), [](int fd) { ::close(fd); });
}

}  // namespace

TEST_SUITE("unsubmitted review") {

// engine.hpp: "An op the kernel has not taken yet (still queued by submit()) never runs ... except a
// close, which always runs." A close waiting in the user-space backlog (the kernel refused
// submissions) is erased by cancel() and completed with -ECANCELED: the fd is never closed.
TEST_CASE("engine: a close still in the backlog when cancelled is run all the same" * doctest::timeout(10)) {
  auto e = cogent::detail::make_uring_engine(1);
  e->wait(clk::now());  // settle the wake reader
  pipe_fds p;
  char byte = 0;
  counted_op rd;  // takes the only SQE
  rd.code = op_code::read;
  rd.fd = p.r;
  rd.buf = &byte;
  rd.len = 1;
  e->submit(rd);
  int victim = ::dup(p.w);
  REQUIRE(victim >= 0);
  counted_op cl;
  cl.code = op_code::close;
  cl.fd = victim;
  g_refuse_submit = 1;
  e->submit(cl);  // SQ full, flush refused: the close waits in the backlog
  g_refuse_submit = 0;
  e->cancel(cl);
  REQUIRE(drive(*e, [&] { return cl.done; }));
  CHECK(cl.deliveries == 1);
  bool still_open = fd_open(victim);
  CHECK_MESSAGE(!still_open, "the close never ran: fd leaked (result ", cl.result, ")");
  if (still_open) {
    ::close(victim);
  }
  REQUIRE(::write(p.w, "x", 1) == 1);
  REQUIRE(drive(*e, [&] { return rd.done; }));
}


// throw_in() into a fiber parked on its accept, in the turn the accept was queued: suspend()'s catch
// makes it pending through interrupt(), which must cancel the op before the kernel sees it.
COGENT_TEST_CASE("throw_in into a fiber whose accept is still queued accepts nobody", doctest::timeout(10)) {
  waiting_client w;
  cogent::fiber target;
  int got = -2;
  bool raised = false;
  auto acc = cogent::spawn([&] {
    target = cogent::fiber::current();
    try {
      got = accept_op(w.l);
    } catch (const std::runtime_error&) {
      raised = true;
    }
  });
  auto thrower = cogent::spawn([&] { target.throw_in(std::make_exception_ptr(std::runtime_error("in"))); });
  thrower.join();
  acc.join();
  target = cogent::fiber();
  CHECK(raised);
  CHECK(got == -2);
  CHECK(w.still_waiting());
}

// The kernel refuses submissions: the accept waits in the engine's user-space backlog (behind a full
// SQ) when its fiber is killed. Run on a thread whose hub has a 2-entry ring.
TEST_CASE("a kill of a fiber whose accept sits in the backlog accepts nobody" * doctest::timeout(10)) {
  waiting_client w;
  bool accepted = false;
  bool killed = false;
  std::size_t left = 99;
  std::thread th([&] {
    cogent::hub_config cfg;
    cfg.ring_entries = 2;
    cogent::hub::configure(cfg);
    static counted_op fill[2];
    auto acc = cogent::spawn([&] {
      auto& e = cogent::hub::current().io();
      for (auto& f : fill) {
        f.code = op_code::nop;
        e.submit(f);  // the SQ is full after these
      }
      g_refuse_submit = 1000000;
      (void)accept_op(w.l);  // its submit must flush: refused, so it waits in the backlog
      accepted = true;
    });
    auto killer = cogent::spawn([&] {
      acc.kill(nullptr, false);
      g_refuse_submit = 0;
    });
    killer.join();
    acc.join();
    killed = acc.killed();
    auto end = clk::now() + 1s;
    while (cogent::hub::current().io().in_flight() > 0 && clk::now() < end) {
      cogent::sleep(1ms);
    }
    left = cogent::hub::current().io().in_flight();
  });
  th.join();
  g_refuse_submit = 0;
  CHECK(killed);
  CHECK(!accepted);
  CHECK(left == 0);
  CHECK(w.still_waiting());
}

// Two accepters queued in the same turn on one listener with one waiting client; the first is killed
// before the hub submits: the second gets the client.
COGENT_TEST_CASE("killing one of two queued accepters hands the client to the other", doctest::timeout(10)) {
  waiting_client w;
  int got_b = -1;
  auto a = cogent::spawn([&] { (void)accept_op(w.l); });
  auto b = cogent::spawn([&] { got_b = accept_op(w.l); });
  auto killer = cogent::spawn([&] { a.kill(nullptr, false); });
  killer.join();
  a.join();
  b.join(1s);
  CHECK(a.killed());
  CHECK(got_b >= 0);
  if (got_b >= 0) {
    ::close(got_b);
  } else {
    b.kill();
  }
}

}  // TEST_SUITE
