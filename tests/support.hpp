// tests/support.hpp — shared fixtures for cogent's doctest suites.
//
// COGENT_TEST_CASE(name) defines a doctest case whose body runs inside a task
// on this thread's hub (Seastar's SEASTAR_THREAD_TEST_CASE), under a
// leak_check: at the end the hub must have no parked fibers, no live tasks, no
// armed timers, no IO in flight, and no more live fiber stacks than at the
// start. A leak fails the test. cancel_when_expired() cancels a Timeout
// after it fired and before its fiber ran (too late: it is raised all the same);
// error_reports collects unjoined-error reports; picky is an item whose move
// throws on demand; pipe_fds closes a pipe; busy_for() hogs the hub; in_hub() runs code in a post()
// callback.
#pragma once

#include <doctest/doctest.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "fiber/fiber.hpp"
#include "hub/core.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"

namespace cogent::test {

// open_fds() counts this process's open descriptors (-1 if /proc is unreadable).
inline int open_fds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) {
    return -1;
  }
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') {
      ++n;
    }
  }
  ::closedir(d);
  return n - 1;  // the DIR's own fd
}

// cancel_when_expired() yields until *to (set by the waiter) has fired, runs
// `between` (e.g. a release that passes over the leaving waiter), then
// cancels it: the waiter, woken but not yet run, must raise the Timeout all
// the same (timeout::cancel(), as gevent) and lose nothing released
// meanwhile. Call it from a fiber spawned after the waiter so it runs first
// once the Timeout fires.
template <class Between = void (*)()>
void cancel_when_expired(cogent::timeout* const& to, Between between = nullptr) {
  while (to == nullptr || !to->expired()) {
    cogent::yield();
  }
  if constexpr (!std::is_pointer_v<Between>) {
    between();
  } else if (between != nullptr) {
    between();
  }
  to->cancel();
}

// leak_check records the baseline at construction and checks it in verify().
class leak_check {
 public:
  // The baseline counts the hub's own stack: it is mapped when the hub first runs (the yield).
  leak_check() : _stacks((cogent::yield(), stack_stats().live)), _tasks(active_count()) {}

  // verify() lets the hub settle (finished fibers are freed once they switch
  // away for the last time) and checks that nothing leaked.
  void verify() {
    hub& h = hub::current();
    for (int i = 0; i < 10 && (h.timer_count() > 0 || h.io().in_flight() > 0 || active_count() > _tasks);
         ++i) {
      cogent::sleep(std::chrono::milliseconds(1));
    }
    cogent::yield();
    CHECK_MESSAGE(active_count() == _tasks, "leaked tasks: ", active_count() - _tasks);
    CHECK_MESSAGE(h.timer_count() == 0, "leaked timers: ", h.timer_count());
    CHECK_MESSAGE(h.io().in_flight() == 0, "leaked IO ops: ", h.io().in_flight());
    CHECK_MESSAGE(h.parked_count() == 0, "fibers still parked: ", h.parked_count());
    CHECK_MESSAGE(stack_stats().live <= _stacks, "leaked fiber stacks: ", stack_stats().live - _stacks);
  }

 private:
  std::size_t _stacks;
  std::size_t _tasks;
};

// error_reports collects, while it lives, the text of each error given to
// the unjoined-error handler (cogent::set_task_error_handler).
struct error_reports {
  std::vector<std::string> seen;
  error_reports() {
    cogent::set_task_error_handler([this](const cogent::task_base&, std::exception_ptr e) {
      seen.push_back(cogent::describe_exception(e));
    });
  }
  ~error_reports() { cogent::set_task_error_handler(nullptr); }
  error_reports(const error_reports&) = delete;
  error_reports& operator=(const error_reports&) = delete;
};

// picky is a queue item whose move constructor throws when its value is
// picky::throw_on (a copy or move that fails half-way through a handoff).
struct picky {
  static inline int throw_on = -1;
  int v;
  explicit picky(int x) : v(x) {}
  picky(const picky&) = default;
  picky& operator=(const picky&) = default;
  picky(picky&& o) : v(o.v) {
    if (o.v == throw_on) {
      throw std::runtime_error("picky: move throws");
    }
  }
  picky& operator=(picky&& o) = default;
};

// waiting_client is a loopback listener `l` with one client `c` whose handshake is done: the
// connection waits in the backlog until accepted. Plain syscalls (under monkey, hooked ones).
struct waiting_client {
  int l = -1;
  int c = -1;
  waiting_client() {
    l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(l, 8) == 0);
    socklen_t alen = sizeof a;
    REQUIRE(::getsockname(l, reinterpret_cast<sockaddr*>(&a), &alen) == 0);
    c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  }
  // still_waiting() is true if the client is still in the backlog, unharmed.
  bool still_waiting() {
    pollfd p{l, POLLIN, 0};
    if (::poll(&p, 1, 200) != 1) {
      return false;
    }
    int s = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    if (s < 0) {
      return false;
    }
    bool ok = ::send(s, "hi", 2, MSG_NOSIGNAL) == 2;
    char buf[2];
    ok = ok && ::recv(c, buf, 2, MSG_WAITALL) == 2;
    ::close(s);
    return ok;
  }
  ~waiting_client() {
    ::close(c);
    ::close(l);
  }
};

// pipe_fds is a pipe (O_CLOEXEC) closed at scope exit.
struct pipe_fds {
  int r = -1;
  int w = -1;
  pipe_fds() {
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    r = p[0];
    w = p[1];
  }
  ~pipe_fds() {
    if (r >= 0) {
      ::close(r);
    }
    if (w >= 0) {
      ::close(w);
    }
  }
  pipe_fds(const pipe_fds&) = delete;
  pipe_fds& operator=(const pipe_fds&) = delete;
};

// busy_for() runs the CPU for `d` without switching (a fiber hogging its hub).
inline void busy_for(std::chrono::milliseconds d) {
  auto until = cogent::clock::now() + d;
  while (cogent::clock::now() < until) {
    // never switches
  }
}

// eventually() polls cond every `step` (sleeping, so other fibers run) for at most `limit`; true
// once it holds.
template <class Cond>
bool eventually(Cond cond, std::chrono::milliseconds limit = std::chrono::milliseconds(2000),
                std::chrono::milliseconds step = std::chrono::milliseconds(1)) {
  auto until = cogent::clock::now() + limit;
  while (!cond()) {
    if (cogent::clock::now() >= until) {
      return false;
    }
    cogent::sleep(step);
  }
  return true;
}

// in_hub() runs fn inside the hub (a post() callback) and waits until it has
// run — bounded: if fn escaped (the hub reports it and goes on), the check fails.
template <class Fn>
void in_hub(Fn fn) {
  cogent::event done;
  cogent::hub::current().post([&] {
    fn();
    done.set();
  });
  CHECK_MESSAGE(done.wait(std::chrono::seconds(1)),
                "the post() callback did not complete (an exception escaped into the hub?)");
}

}  // namespace cogent::test

// COGENT_TEST_CASE runs the body in a task, then checks for leaks.
#define COGENT_TEST_CASE_IMPL(fn, name, ...)                                                        \
  static void fn();                                                                                 \
  TEST_CASE(name __VA_OPT__(*) __VA_ARGS__) {                                                       \
    cogent::test::leak_check leaks;                                                                 \
    auto t = cogent::spawn(cogent::spawn_options{std::string("test: ") + name}, [] { fn(); });      \
    t.join();                                                                                       \
    CHECK_MESSAGE(t.successful(), "test body raised: ", cogent::describe_exception(t.exception())); \
    leaks.verify();                                                                                 \
  }                                                                                                 \
  static void fn()
#define COGENT_TEST_CASE(name, ...) \
  COGENT_TEST_CASE_IMPL(DOCTEST_ANONYMOUS(COGENT_BODY_), name __VA_OPT__(, ) __VA_ARGS__)
