// tests/monkey/epoll_review_test.cpp — review of the epoll_wait/epoll_pwait/epoll_pwait2 hooks
// (ad3fd61). Each case states what libc does for the same inputs (checked where possible against
// the same call on a plain std::thread, which has no hub: exactly libc).
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "monkey/monkey.hpp"
#include "tests/monkey/fibers.hpp"
#include "tests/monkey/watched_pipe.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::test::bounded;
using cogent::test::call_result;
using cogent::test::here_result;
using cogent::test::libc_result;
using steady = std::chrono::steady_clock;

namespace {

using cogent::test::watched_pipe;

}  // namespace

// ---------------------------------------------------------------------------------------------
// An epoll fd closed (by another thread / fiber) while a wait is in progress: Linux keeps the
// instance alive for the waiter (it holds the file), so libc's epoll_wait still returns the event
// that arrives afterwards. The hook's poll op (on the old file) fires, then its zero-timeout
// epoll_wait goes to the fd NUMBER: closed (EBADF), or by then another epoll instance, whose
// events it steals.
COGENT_TEST_CASE("epoll review: an epoll fd closed during the wait still delivers its own event, as libc",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  // libc: a thread waits, main closes the epoll fd, then makes the pipe readable.
  {
    watched_pipe w;
    call_result libc{0, 0};
    std::thread t([&] {
      epoll_event ev[1];
      libc = here_result([&] { return ::epoll_wait(w.ep, ev, 1, 1000); });
    });
    std::this_thread::sleep_for(50ms);
    ::close(w.ep);
    w.ep = -1;
    REQUIRE(::write(w.p[1], "x", 1) == 1);
    t.join();
    REQUIRE(libc.first == 1);
  }
  watched_pipe w;
  call_result got{0, 0};
  auto waiter = cogent::spawn([&] {
    epoll_event ev[1];
    got = here_result([&] { return ::epoll_wait(w.ep, ev, 1, 1000); });
  });
  cogent::sleep(20ms);
  ::close(w.ep);
  w.ep = -1;
  REQUIRE(::write(w.p[1], "x", 1) == 1);
  waiter.join();
  CHECK(got.first == 1);
  CHECK(got.second == 0);
}

COGENT_TEST_CASE("epoll review: a wait on a closed epoll fd whose number is reused takes no event of the new one",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  watched_pipe w;  // tag 42
  int q[2];
  REQUIRE(::pipe(q) == 0);
  int r = -2;
  std::uint64_t tag = 0;
  auto waiter = cogent::spawn([&] {
    epoll_event ev[1];
    r = ::epoll_wait(w.ep, ev, 1, 1000);
    tag = ev[0].data.u64;
  });
  cogent::sleep(20ms);
  int old = w.ep;
  ::close(w.ep);
  w.ep = ::epoll_create1(EPOLL_CLOEXEC);  // the lowest free number: the one just closed
  REQUIRE(w.ep == old);
  epoll_event e{};
  e.events = EPOLLIN | EPOLLONESHOT;
  e.data.u64 = 7;
  REQUIRE(::epoll_ctl(w.ep, EPOLL_CTL_ADD, q[0], &e) == 0);
  REQUIRE(::write(q[1], "y", 1) == 1);      // the new instance's one-shot event
  REQUIRE(::write(w.p[1], "x", 1) == 1);    // the old instance's event: ends the wait
  waiter.join();
  CHECK(r == 1);
  CHECK(tag == 42);  // libc: the old instance's event (the waiter holds that instance)
  epoll_event ev[1];
  CHECK(::epoll_wait(w.ep, ev, 1, 0) == 1);  // the new instance's event is still there for its owner
  ::close(q[0]);
  ::close(q[1]);
}

// ---------------------------------------------------------------------------------------------
// epoll_pwait2(2): "EFAULT: the memory area pointed to by timeout is not accessible". The hook
// reads *timeout itself (valid_timespec) before calling anything, even on a thread without a hub,
// so the process dies of SIGSEGV instead. Run in a child so the crash is observed, not suffered.
COGENT_TEST_CASE("epoll review: epoll_pwait2 with an unreadable timeout fails with EFAULT, as libc",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  watched_pipe w;
  void* page = ::mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(page != MAP_FAILED);
  auto* bad_ts = static_cast<const timespec*>(page);
  epoll_event ev[1];
  auto child_status = [&](bool in_thread) {
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      struct sigaction sa {};
      sa.sa_handler = [](int) { ::_exit(3); };  // a crash: exit status 3
      sigemptyset(&sa.sa_mask);
      ::sigaction(SIGSEGV, &sa, nullptr);
      ::sigaction(SIGBUS, &sa, nullptr);
      call_result r{0, 0};
      if (in_thread) {
        std::thread t([&] { r = here_result([&] { return ::epoll_pwait2(w.ep, ev, 1, bad_ts, nullptr); }); });
        t.join();
      } else {
        r = here_result([&] { return ::epoll_pwait2(w.ep, ev, 1, bad_ts, nullptr); });
      }
      ::_exit(r == call_result{-1, EFAULT} ? 0 : 1);
    }
    int st = 0;
    REQUIRE(::waitpid(pid, &st, 0) == pid);
    return st;
  };
  // The kernel's answer for these inputs (what glibc's epoll_pwait2, a bare syscall, returns):
  call_result kernel = here_result([&] {
    return static_cast<int>(::syscall(SYS_epoll_pwait2, w.ep, ev, 1, bad_ts, nullptr, _NSIG / 8));
  });
  REQUIRE(kernel == call_result{-1, EFAULT});
  int st = child_status(true);  // a thread without a hub: "exactly libc"
  CHECK_MESSAGE((WIFEXITED(st) && WEXITSTATUS(st) == 0), "plain thread: status ", st, " (3: SIGSEGV)");
  st = child_status(false);  // a fiber
  CHECK_MESSAGE((WIFEXITED(st) && WEXITSTATUS(st) == 0), "fiber: status ", st, " (3: SIGSEGV)");
  ::munmap(page, 4096);
}

// ---------------------------------------------------------------------------------------------
// The other hooks that read a timeout the caller passed: with an unreadable one, a fiber's call ends
// as libc's does on a thread without a hub — EFAULT where glibc hands the pointer to the kernel
// (nanosleep, clock_nanosleep), a crash where glibc reads it itself (ppoll, select). Each call runs
// in a child; the outcome is its exit status (100: SIGSEGV; else the call's errno).
COGENT_TEST_CASE("unreadable timeouts of ppoll, select, nanosleep, clock_nanosleep end as in libc",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  watched_pipe w;
  void* page = ::mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(page != MAP_FAILED);
  auto call = [&](int which) -> int {
    auto* ts = static_cast<const timespec*>(page);
    switch (which) {
      case 0: {
        pollfd pf{w.p[0], POLLIN, 0};
        return ::ppoll(&pf, 1, ts, nullptr) < 0 ? errno : 0;
      }
      case 1: {
        fd_set rd;
        FD_ZERO(&rd);
        FD_SET(w.p[0], &rd);
        return ::select(w.p[0] + 1, &rd, nullptr, nullptr, static_cast<timeval*>(page)) < 0 ? errno : 0;
      }
      case 2:
        return ::nanosleep(ts, nullptr) < 0 ? errno : 0;
      default:
        return ::clock_nanosleep(CLOCK_MONOTONIC, 0, ts, nullptr);
    }
  };
  auto outcome = [&](int which, bool in_thread) {
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      struct sigaction sa {};
      sa.sa_handler = [](int) { ::_exit(100); };
      sigemptyset(&sa.sa_mask);
      ::sigaction(SIGSEGV, &sa, nullptr);
      int err = 0;
      if (in_thread) {
        std::thread t([&] { err = call(which); });  // no hub there: exactly libc
        t.join();
      } else {
        err = call(which);
      }
      ::_exit(err);
    }
    int st = 0;
    REQUIRE(::waitpid(pid, &st, 0) == pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  };
  const char* names[] = {"ppoll", "select", "nanosleep", "clock_nanosleep"};
  for (int which = 0; which < 4; ++which) {
    int libc = outcome(which, true);
    int fiber = outcome(which, false);
    CHECK_MESSAGE(fiber == libc, names[which], ": libc ", libc, ", fiber ", fiber, " (100: SIGSEGV)");
  }
  CHECK(outcome(2, true) == EFAULT);
  ::munmap(page, 4096);
}

// ---------------------------------------------------------------------------------------------
// Timeout rounding: epoll_wait(2) waits at least `timeout` ms.
COGENT_TEST_CASE("epoll review: a 1 ms and a 300 us timeout never return early", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  watched_pipe w;
  epoll_event ev[1];
  auto shortest = steady::duration::max();
  for (int i = 0; i < 50; ++i) {
    auto t0 = steady::now();
    REQUIRE(::epoll_wait(w.ep, ev, 1, 1) == 0);
    shortest = std::min(shortest, steady::now() - t0);
  }
  CHECK(shortest >= 1ms);
  shortest = steady::duration::max();
  timespec ts{0, 300'000};
  for (int i = 0; i < 50; ++i) {
    auto t0 = steady::now();
    REQUIRE(::epoll_pwait2(w.ep, ev, 1, &ts, nullptr) == 0);
    shortest = std::min(shortest, steady::now() - t0);
  }
  CHECK(shortest >= 300us);
}

// ---------------------------------------------------------------------------------------------
// Nested: an outer epoll watching an inner epoll fd that watches the pipe.
COGENT_TEST_CASE("epoll review: a wait on an outer epoll wakes for an event of a nested one",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  watched_pipe w;
  int outer = ::epoll_create1(EPOLL_CLOEXEC);
  REQUIRE(outer >= 0);
  epoll_event e{};
  e.events = EPOLLIN;
  e.data.u64 = 7;
  REQUIRE(::epoll_ctl(outer, EPOLL_CTL_ADD, w.ep, &e) == 0);
  cogent::test::ticker tk;
  epoll_event ev[2];
  auto got = cogent::test::woken_later(tk, w.p[1], [&] { return ::epoll_wait(outer, ev, 2, 3000); });
  CHECK(got.result == 1);
  CHECK(got.ticks >= 20);
  std::uint64_t tag = ev[0].data.u64;
  CHECK(tag == 7);
  ::close(outer);
}

// ---------------------------------------------------------------------------------------------
// Many fibers on one edge-triggered epoll fd: one event, one winner; the others keep waiting
// (parked, not spinning) until their timeout.
COGENT_TEST_CASE("epoll review: one edge among many waiters wakes one, the others wait out their timeout",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  watched_pipe w(EPOLLET);
  constexpr int n = 8;
  int results[n];
  std::vector<cogent::task<void>> ts;
  for (int i = 0; i < n; ++i) {
    ts.push_back(cogent::spawn([&, i] {
      epoll_event ev[1];
      results[i] = ::epoll_wait(w.ep, ev, 1, 200);
    }));
  }
  cogent::test::ticker tk;
  cogent::sleep(20ms);
  REQUIRE(::write(w.p[1], "x", 1) == 1);
  long before = tk.ticks;
  auto t0 = steady::now();
  for (auto& t : ts) {
    t.join();
  }
  CHECK(steady::now() - t0 >= 150ms);
  CHECK(tk.ticks - before >= 50);
  int won = 0;
  for (int r : results) {
    CHECK((r == 0 || r == 1));
    won += r;
  }
  CHECK(won == 1);
}

// ---------------------------------------------------------------------------------------------
// Kill: EINTR, then ECANCELED while pending; the interrupt raised at the next switch.
COGENT_TEST_CASE("epoll review: a Timeout ends the wait with EINTR, a retry ECANCELED, then raises",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  watched_pipe w;
  epoll_event ev[1];
  call_result first{0, 0}, second{0, 0};
  bool raised = false;
  try {
    cogent::timeout guard(30ms);
    first = here_result([&] { return ::epoll_wait(w.ep, ev, 1, 2000); });
    second = here_result([&] { return ::epoll_pwait2(w.ep, ev, 1, nullptr, nullptr); });
    cogent::yield();
  } catch (const cogent::timeout_error&) {
    raised = true;
  }
  CHECK(first == call_result{-1, EINTR});
  CHECK(second == call_result{-1, ECANCELED});
  CHECK(raised);
}

// ---------------------------------------------------------------------------------------------
// errno kept on a success that waited, and on a timeout.
COGENT_TEST_CASE("epoll review: a wait that parked leaves errno alone on success and timeout",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  watched_pipe w;
  auto other = cogent::spawn([&] {
    (void)::close(-1);
    cogent::sleep(10ms);
    (void)::close(-1);
    (void)!::write(w.p[1], "x", 1);
    (void)::close(-1);
  });
  epoll_event ev[1];
  errno = 4242;
  CHECK(::epoll_wait(w.ep, ev, 1, 1000) == 1);
  CHECK(errno == 4242);
  other.join();
  char b[4];
  REQUIRE(::read(w.p[0], b, sizeof b) == 1);
  auto other2 = cogent::spawn([&] {
    (void)::close(-1);
    cogent::sleep(5ms);
    (void)::close(-1);
  });
  errno = 4242;
  CHECK(::epoll_wait(w.ep, ev, 1, 20) == 0);
  CHECK(errno == 4242);
  other2.join();
}

// ---------------------------------------------------------------------------------------------
// Errors: the same as libc's for the same inputs.
COGENT_TEST_CASE("epoll review: bad arguments give libc's errors", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  watched_pipe w;
  epoll_event ev[1];
  int big = static_cast<int>(INT_MAX / sizeof(epoll_event)) + 1;
  auto kernel_ptr = reinterpret_cast<epoll_event*>(0xffff800000000000ull);
  struct args {
    int fd;
    epoll_event* evs;
    int n;
  } cases[] = {{-1, ev, 1}, {w.p[0], ev, 1}, {w.ep, ev, 0}, {w.ep, ev, -1}, {w.ep, ev, big}, {w.ep, kernel_ptr, 1}};
  for (auto& a : cases) {
    call_result libc = libc_result([&] { return ::epoll_wait(a.fd, a.evs, a.n, 50); });
    call_result here = bounded([&] { return ::epoll_wait(a.fd, a.evs, a.n, 50); }, 500ms);
    CHECK_MESSAGE(here == libc, "fd ", a.fd, " n ", a.n);
    timespec ts{0, 50'000'000};
    libc = libc_result([&] { return ::epoll_pwait2(a.fd, a.evs, a.n, &ts, nullptr); });
    here = bounded([&] { return ::epoll_pwait2(a.fd, a.evs, a.n, &ts, nullptr); }, 500ms);
    CHECK_MESSAGE(here == libc, "pwait2 fd ", a.fd, " n ", a.n);
    timespec bad{0, 1'000'000'000};
    libc = libc_result([&] { return ::epoll_pwait2(a.fd, a.evs, a.n, &bad, nullptr); });
    here = bounded([&] { return ::epoll_pwait2(a.fd, a.evs, a.n, &bad, nullptr); }, 500ms);
    CHECK_MESSAGE(here == libc, "pwait2 bad ts fd ", a.fd, " n ", a.n);
  }
}

// ---------------------------------------------------------------------------------------------
// From the hub (a timer callback): exactly libc, and a zero timeout never blocks.
COGENT_TEST_CASE("epoll review: a pending event is returned from the hub too", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  watched_pipe w;
  REQUIRE(::write(w.p[1], "x", 1) == 1);
  int r = -2;
  cogent::test::in_hub([&] {
    epoll_event ev[1];
    r = ::epoll_wait(w.ep, ev, 1, 1000);
  });
  CHECK(r == 1);
}

