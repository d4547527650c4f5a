// tests/monkey/epoll_test.cpp — epoll_wait, epoll_pwait and epoll_pwait2 under patch_all():
// a fiber's wait parks it (other fibers run) and returns what libc's would; outside a fiber, with a
// zero timeout or a signal mask, exactly libc.
#include <signal.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "hub/task.hpp"
#include "monkey/monkey.hpp"
#include "tests/monkey/fibers.hpp"
#include "tests/monkey/watched_pipe.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::test::call_result;
using cogent::test::here_result;
using cogent::test::ticker;
using cogent::test::watched_pipe;
using cogent::test::woken_later;
using steady = std::chrono::steady_clock;

COGENT_TEST_CASE("monkey epoll: epoll_wait parks the fiber until an event and returns it",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  watched_pipe w;
  ticker tk;
  epoll_event ev[4];
  auto got = woken_later(tk, w.p[1], [&] { return ::epoll_wait(w.ep, ev, 4, 5000); });
  REQUIRE(got.result == 1);
  std::uint64_t tag = ev[0].data.u64;  // (a packed field: copied out for CHECK)
  CHECK(tag == 42);
  CHECK((ev[0].events & EPOLLIN) != 0);
  CHECK(got.ticks >= 20);  // the hub ran the ticker while we waited
  char buf[16];
  CHECK(::read(w.p[0], buf, sizeof buf) == 5);  // "fiber": woken by the fiber, not the fallback thread
}

COGENT_TEST_CASE("monkey epoll: epoll_pwait without a mask and epoll_pwait2 park too", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  {
    watched_pipe w;
    ticker tk;
    epoll_event ev[1];
    auto got = woken_later(tk, w.p[1], [&] { return ::epoll_pwait(w.ep, ev, 1, 3000, nullptr); });
    CHECK(got.result == 1);
    CHECK(got.ticks >= 20);
  }
  {
    watched_pipe w;
    ticker tk;
    epoll_event ev[1];
    timespec ts{5, 0};
    auto got = woken_later(tk, w.p[1], [&] { return ::epoll_pwait2(w.ep, ev, 1, &ts, nullptr); });
    CHECK(got.result == 1);
    CHECK(got.ticks >= 20);
  }
}

COGENT_TEST_CASE("monkey epoll: the timeout passes with other fibers running, returning 0",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  watched_pipe w;
  ticker tk;
  epoll_event ev[1];
  auto t0 = steady::now();
  long before = tk.ticks;
  int r = ::epoll_wait(w.ep, ev, 1, 60);
  auto waited = steady::now() - t0;
  CHECK(r == 0);
  CHECK(waited >= 60ms);
  CHECK(tk.ticks - before >= 10);
  timespec ts{0, 30'000'000};
  t0 = steady::now();
  CHECK(::epoll_pwait2(w.ep, ev, 1, &ts, nullptr) == 0);
  CHECK(steady::now() - t0 >= 30ms);
}

COGENT_TEST_CASE("monkey epoll: errors and edge-triggered readiness are libc's", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  epoll_event ev[1];
  // Bad fd, a non-epoll fd, maxevents <= 0: what libc says, at once.
  call_result bad = here_result([&] { return ::epoll_wait(-1, ev, 1, 1000); });
  CHECK(bad == call_result{-1, EBADF});
  watched_pipe w(EPOLLET);
  call_result not_ep = here_result([&] { return ::epoll_wait(w.p[0], ev, 1, 1000); });
  CHECK(not_ep == call_result{-1, EINVAL});
  call_result no_room = here_result([&] { return ::epoll_wait(w.ep, ev, 0, 1000); });
  CHECK(no_room == call_result{-1, EINVAL});
  // Edge-triggered: one event per edge. Data left unread does not wake a second wait.
  REQUIRE(::write(w.p[1], "x", 1) == 1);
  CHECK(::epoll_wait(w.ep, ev, 1, 1000) == 1);
  auto t0 = steady::now();
  CHECK(::epoll_wait(w.ep, ev, 1, 50) == 0);
  CHECK(steady::now() - t0 >= 50ms);
}

COGENT_TEST_CASE("monkey epoll: a kill ends the wait with EINTR and stays pending", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  watched_pipe w;
  call_result got{0, 0};
  auto waiter = cogent::spawn([&] {
    epoll_event ev[1];
    got = here_result([&] { return ::epoll_wait(w.ep, ev, 1, 3000); });  // (not -1: a regression fails, not hangs)
  });
  cogent::sleep(20ms);
  waiter.kill();
  CHECK(got == call_result{-1, EINTR});
}

COGENT_TEST_CASE("monkey epoll: outside a fiber, or with a signal mask, exactly libc", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  watched_pipe w;
  // A plain thread has no hub: a real blocking epoll_wait, woken by a write from here.
  int r = -2;
  std::thread t([&] {
    epoll_event ev[1];
    r = ::epoll_wait(w.ep, ev, 1, 5000);
  });
  std::this_thread::sleep_for(20ms);
  REQUIRE(::write(w.p[1], "x", 1) == 1);
  t.join();
  CHECK(r == 1);
  // A mask: libc's call blocks the thread (no other fiber runs), here for its 30 ms.
  ticker tk;
  sigset_t mask;
  sigemptyset(&mask);
  char buf[4];
  REQUIRE(::read(w.p[0], buf, sizeof buf) == 1);
  long before = tk.ticks;
  epoll_event ev[1];
  CHECK(::epoll_pwait(w.ep, ev, 1, 30, &mask) == 0);
  CHECK(tk.ticks == before);
}
