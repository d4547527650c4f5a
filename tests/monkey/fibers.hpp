// tests/monkey/fibers.hpp — witnesses that a hooked call let the hub run other fibers.
//
// Defines ticker (a fiber counting 1 ms sleeps), spinner (a fiber that yields
// in a loop), wake_later (a fiber writes to an fd after 100 ms, a plain thread
// after 2 s if the hub is stuck), woken_later() (a call ended by wake_later,
// with the ticks it let run) and parks() (did a call park its fiber?). A call
// that went straight to libc never switches, so each of these tells a
// cooperative call from a blocking one. Also call_result (a call's return
// value and errno), here_result() and bounded() (a call cut by a Timeout),
// since() (seconds on the steady clock) and starter (a concurrent party run
// on a thread or a fiber, for tests that compare a hook with libc's threads),
// drain_fd(), rights_msg (a message carrying one SCM_RIGHTS fd) and eof_after_fork() (does a
// peer see EOF while a fork()ed child lives?).
#pragma once

#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "hub/core.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"

namespace cogent::test {

// ticker is a fiber that counts how often it got to run while something else
// was parked, pausing `period` between counts: about once a millisecond by
// default. With a zero period (spinner) it only yields: it is always ready, so
// whenever another fiber parks on the hub it runs (ticks grows) before that
// fiber is resumed — a call across which ticks did not change never let the
// hub run.
struct ticker {
  long ticks = 0;
  bool stop = false;
  cogent::task<void> t;
  explicit ticker(std::chrono::nanoseconds period = std::chrono::milliseconds(1)) {
    t = cogent::spawn([this, period] {
      while (!stop) {
        ++ticks;
        cogent::sleep(period);  // sleep(0) is a yield
      }
    });
  }
  ~ticker() {
    stop = true;
    t.join();
  }
};
struct spinner : ticker {
  spinner() : ticker(std::chrono::nanoseconds::zero()) {}
};

// wake_later ends a wait on fd: a fiber writes "fiber" after 100 ms; if the
// hub is blocked (the call went to libc and blocks the thread), a plain
// thread writes "thread" after 2 s instead, so a test fails instead of hanging.
struct wake_later {
  int fd;
  std::atomic<bool> done{false};
  cogent::task<void> fib;
  std::thread fallback;
  explicit wake_later(int fd_) : fd(fd_) {
    fib = cogent::spawn([this] {
      cogent::sleep(std::chrono::milliseconds(100));
      if (!done.exchange(true)) {
        [[maybe_unused]] ssize_t n = ::write(fd, "fiber", 5);
      }
    });
    fallback = std::thread([this] {
      for (int i = 0; i < 200 && !done.load(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      if (!done.exchange(true)) {
        [[maybe_unused]] ssize_t n = ::write(fd, "thread", 6);
      }
    });
  }
  ~wake_later() {
    done.store(true);
    fib.join();
    fallback.join();
  }
};

// woken_call is what woken_later() saw.
template <class R>
struct woken_call {
  R result;
  long ticks;  // how often the ticker ran between call()'s start and return
};

// woken_later() runs call(), a wait that data arriving on fd's peer ends,
// under a wake_later(fd), and counts the ticker's runs across the call alone
// (the wake_later is torn down after the count). A call that cooperated
// returns with "fiber" written after 100 ms, about 100 ticks later; one that
// blocked the hub returns with "thread" after 2 s and no ticks. Callers check
// both: the result (or what was read) and ticks.
//
// Example:
//   ticker tk;
//   auto w = woken_later(tk, s[1], [&] { return ::recv(s[0], buf, sizeof buf, 0); });
//   CHECK(w.result == 5);  // "fiber"
//   CHECK(w.ticks >= 20);
template <class F>
auto woken_later(ticker& tk, int fd, F call) {
  wake_later w(fd);
  long before = tk.ticks;
  auto r = call();
  return woken_call<decltype(r)>{r, tk.ticks - before};
}

// parked_call is what parks() saw.
struct parked_call {
  long result = 0;
  bool parked = false;  // another fiber ran before the call returned
};

// parks() runs call() and reports whether it parked the calling fiber on the
// hub: a probe fiber spawned just before runs at the hub's next turn, i.e.
// before call() returns only if call() switched. A call that went straight to
// libc never switches. For fd calls the hooks switch only to wait for their
// own io_uring op, so this shows the op went through the hub's engine (its
// in_flight() cannot: a page-cache read completes as the hub submits it,
// before any other fiber runs).
template <class F>
parked_call parks(F call) {
  parked_call out;
  bool ran = false;
  auto probe = cogent::spawn([&] { ran = true; });
  out.result = static_cast<long>(call());
  out.parked = ran;
  probe.join();
  return out;
}

// open_scratch_file() opens an unlinked scratch file for reading and writing
// (-1 on failure). mkstemp() opens inside glibc, past the open hook: its fd
// number may carry a stale table entry (under UBSan, whose vptr check calls
// pipe() and closes the ends with raw syscalls). Reopened through the hook, it
// starts afresh.
inline int open_scratch_file() {
  char path[] = "/tmp/cogent_monkey_XXXXXX";
  int fd = ::mkstemp(path);
  if (fd < 0) {
    return -1;
  }
  ::close(fd);
  fd = ::open(path, O_RDWR);
  ::unlink(path);
  return fd;
}

// call_result is a call's return value and, if it failed (< 0), its errno.
using call_result = std::pair<long, int>;

// here_result() runs a libc-style call here and returns its call_result.
template <class F>
call_result here_result(F f) {
  errno = 0;
  long r = static_cast<long>(f());
  return {r, r < 0 ? errno : 0};
}

// libc_result() runs the same call on a plain std::thread, which has no hub: exactly libc's
// call_result, to compare a hooked call against.
template <class F>
call_result libc_result(F f) {
  call_result out;
  std::thread([&] { out = here_result(f); }).join();
  return out;
}

// bounded() runs a hooked call under a Timeout of `limit`: one that parks for
// good comes back -1/EINTR after it (the Timeout is then raised at the
// yield() and caught), so a test fails instead of hanging. {-2, 0} if the
// Timeout was raised before the call returned anything.
template <class F>
call_result bounded(F call, std::chrono::milliseconds limit) {
  call_result got{-2, 0};
  try {
    cogent::timeout guard(limit);
    got = here_result(call);
    cogent::yield();
  } catch (const cogent::timeout_error&) {
  }
  return got;
}

// since() is the seconds on the steady clock since t0.
inline double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A concurrent party: start(fn) runs fn (on a thread or a fiber) and returns its joiner; the
// matching nap (thread_nap or fiber_nap) lets it run.
using starter = std::function<std::function<void()>(std::function<void()>)>;

inline starter on_threads() {
  return [](std::function<void()> fn) {
    auto t = std::make_shared<std::thread>(std::move(fn));
    return std::function<void()>([t] { t->join(); });
  };
}
inline starter on_fibers() {
  return [](std::function<void()> fn) {
    auto t = std::make_shared<cogent::task<void>>(cogent::spawn(std::move(fn)));
    return std::function<void()>([t] { t->join(); });
  };
}
inline void thread_nap() {
  std::this_thread::sleep_for(std::chrono::milliseconds(1));
}
inline void fiber_nap() {
  cogent::sleep(std::chrono::milliseconds(1));
}

// drain_fd() reads what is there on fd (a pipe or socket) without waiting; counts the bytes.
// With counts (256 entries), counts[c] grows by how many bytes c came.
inline long drain_fd(int fd, long* counts = nullptr) {
  static char sink[65536];
  long total = 0;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0 || (p.revents & POLLIN) == 0) {
      return total;
    }
    ssize_t n = ::read(fd, sink, sizeof sink);
    if (n <= 0) {
      return total;
    }
    if (counts != nullptr) {
      for (ssize_t i = 0; i < n; ++i) {
        ++counts[static_cast<unsigned char>(sink[i])];
      }
    }
    total += n;
  }
}

// rights_msg is a one-byte message with room for one SCM_RIGHTS fd: rights_msg(fd) to send fd,
// rights_msg() to receive one (received_fd() after the recvmsg, -1 if none came). m points into
// the object itself, so it is neither copied nor moved.
struct rights_msg {
  char byte = 'x';
  iovec v{&byte, 1};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))]{};
  msghdr m{};
  explicit rights_msg(int fd = -1) {
    m.msg_iov = &v;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    if (fd >= 0) {
      cmsghdr* cm = CMSG_FIRSTHDR(&m);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    }
  }
  rights_msg(const rights_msg&) = delete;
  rights_msg& operator=(const rights_msg&) = delete;
  int received_fd() const {
    const cmsghdr* cm = CMSG_FIRSTHDR(&m);
    if (cm == nullptr || cm->cmsg_type != SCM_RIGHTS) {
      return -1;
    }
    int fd;
    std::memcpy(&fd, CMSG_DATA(cm), sizeof(int));
    return fd;
  }
};

// eof_after_fork() parks a blocking 1 MiB send() on s[0] of an AF_UNIX stream pair (the buffer
// fills: it waits), then fork()s a child that closes every fd it knows of the pair (with the
// hooked close() if child_hooked_close, else raw syscalls) and waits until told to exit. The
// parent drains s[1] until the send returns, closes s[0] and asks whether s[1] now sees the end
// of the stream (recv 0) within 1 s.
struct eof_outcome {
  long sent = -2;
  long eof = -2;  // recv(s[1]) after the close: 0 = end of stream, -1 = EAGAIN (none)
};

inline eof_outcome eof_after_fork(const starter& start, const std::function<void()>& nap,
                                  bool child_hooked_close) {
  eof_outcome out;
  int s[2], ctl[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  REQUIRE(::pipe(ctl) == 0);
  constexpr std::size_t n = 1 << 20;
  static std::vector<char> payload(n, 'p');
  std::atomic<bool> done{false};
  auto join = start([&] {
    out.sent = ::send(s[0], payload.data(), n, 0);
    done = true;
  });
  for (int i = 0; i < 20; ++i) {
    nap();  // the sender waits for room
  }
  REQUIRE_FALSE(done.load());
  std::fflush(nullptr);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // A well-behaved child: closes what it inherited of the pair and the pipe's write end (raw
    // syscalls: nothing of the hub in a fork()ed child).
    ::alarm(10);
    if (child_hooked_close) {
      ::close(s[0]);  // hooked: detach_holders() runs in the child
      ::close(s[1]);
    } else {
      ::syscall(SYS_close, s[0]);
      ::syscall(SYS_close, s[1]);
    }
    ::syscall(SYS_close, ctl[1]);
    char c;
    ::syscall(SYS_read, ctl[0], &c, 1);  // until the parent closes its write end
    ::_exit(0);
  }
  ::close(ctl[0]);
  auto t0 = std::chrono::steady_clock::now();
  while (!done.load() && since(t0) < 5) {
    drain_fd(s[1]);
    nap();
  }
  join();
  drain_fd(s[1]);
  ::close(s[0]);
  t0 = std::chrono::steady_clock::now();
  char c;
  do {
    errno = 0;
    out.eof = ::recv(s[1], &c, 1, MSG_DONTWAIT);
    if (out.eof >= 0) {
      break;
    }
    nap();
  } while (since(t0) < 1);
  ::close(ctl[1]);  // the child exits
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  ::close(s[1]);
  return out;
}

}  // namespace cogent::test
