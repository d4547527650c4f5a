// tests/monkey/posix_test.cpp — monkey/monkey.hpp on plain POSIX calls.
//
// Sleeps overlap across 1000 fibers; a pipe read parks only its fiber; poll,
// ppoll and select wake on readiness or timeout, and on 4 to 100 pipes
// report exactly what became ready; getaddrinfo/gethostbyname
// from many fibers let the others run; a file round trip whose every call
// parks on an io_uring op; recvmsg (with SCM_RIGHTS) and writev on sockets
// park; dup2/dup3/F_DUPFD copies carry SO_RCVTIMEO and O_NONBLOCK as libc's
// shared description does; the user's O_NONBLOCK, FIONBIO, SO_RCVTIMEO and
// SO_SNDTIMEO keep libc's behaviour; calls from a plain std::thread and a
// thread-pool worker are untouched; bad fds, flags and sizes give libc's
// errors (checked against the same call on a thread without a hub);
// kill/Timeout inside a hooked call give EINTR, then the interrupt is raised
// at the next cogent switch point; timeouts the hooks never saw (set before
// patch_all, inherited by accept, SCM_RIGHTS fds) and calls the kernel never
// blocks in (zero-length reads, MSG_ERRQUEUE/MSG_OOB, negative timeouts)
// match libc; a gethostbyname result outlives another fiber's call.
// Fortified (-D_FORTIFY_SOURCE) callers:
// tests/monkey/fortify_test.cpp.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "hub/task.hpp"
#include "hub/threadpool.hpp"
#include "hub/timeout.hpp"
#include "monkey/monkey.hpp"
#include "net/net.hpp"
#include "tests/monkey/fibers.hpp"
#include "tests/monkey/servers.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using cogent::test::ticker;
using cogent::test::woken_later;

namespace {

using cogent::test::since;

// libc_result runs f on a plain thread (no hub: exactly libc) and returns
// (return value, errno): the reference for a cooperative call.
template <class F>
std::pair<long, int> libc_result(F f) {
  std::pair<long, int> out;
  std::thread([&] {
    errno = 0;
    long r = static_cast<long>(f());
    out = {r, r < 0 ? errno : 0};
  }).join();
  return out;
}

template <class F>
std::pair<long, int> here_result(F f) {
  errno = 0;
  long r = static_cast<long>(f());
  return {r, r < 0 ? errno : 0};
}

// listener() is a blocking loopback listener; *port gets its port.
int listener(int* port) {
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(s, 128) == 0);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return s;
}

sockaddr_in loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  return a;
}

// bounded() is here_result(call) under a cogent::timeout: a hooked call that
// parks for good comes back -1/EINTR after `limit` instead of hanging the test.
template <class F>
std::pair<long, int> bounded(F call, std::chrono::milliseconds limit) {
  std::pair<long, int> got{-2, 0};
  try {
    cogent::timeout guard(limit);
    got = here_result(call);
    cogent::yield();  // raises the timeout if it fired inside the call
  } catch (const cogent::timeout_error&) {
  }
  return got;
}

}  // namespace

// Runs first (doctest orders by file and line): nothing is patched yet, so
// sleeps in two tasks do not overlap.
COGENT_TEST_CASE("before patch_all every hook is exactly libc", doctest::timeout(10)) {
  if (cogent::monkey::is_patched()) {
    MESSAGE("patch_all() already ran in this process (test filter/order): skipped");
    return;
  }
  auto t0 = steady::now();
  auto a = cogent::spawn([] { ::usleep(100'000); });
  auto b = cogent::spawn([] { ::usleep(100'000); });
  cogent::joinall({a, b});
  CHECK(since(t0) >= 0.19);  // serial: each usleep blocked the whole thread
}

COGENT_TEST_CASE("sleep, usleep, nanosleep, clock_nanosleep overlap in 1000 fibers", doctest::timeout(30)) {
  cogent::monkey::patch_all();
  REQUIRE(cogent::monkey::is_patched());
  auto t0 = steady::now();
  std::vector<cogent::task<int>> tasks;
  for (int i = 0; i < 1000; ++i) {
    tasks.push_back(cogent::spawn([i] {
      switch (i % 5) {
        case 0:
          return static_cast<int>(::sleep(1));
        case 1:
          return ::usleep(300'000);
        case 2: {
          timespec ts{0, 300'000'000};
          return ::nanosleep(&ts, nullptr);
        }
        case 3: {
          timespec ts{0, 300'000'000};
          return ::clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, nullptr);
        }
        default: {
          timespec ts{};
          clock_gettime(CLOCK_MONOTONIC, &ts);
          ts.tv_nsec += 300'000'000;
          if (ts.tv_nsec >= 1'000'000'000) {
            ts.tv_nsec -= 1'000'000'000;
            ++ts.tv_sec;
          }
          return ::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr);
        }
      }
    }));
  }
  cogent::joinall(tasks);
  double took = since(t0);
  for (auto& t : tasks) {
    CHECK(t.get() == 0);
  }
  CHECK(took >= 0.99);
  CHECK(took < 2.0);  // serial would be 200 s + 800 * 0.3 s
  // Errors are libc's.
  timespec bad{0, 2'000'000'000};
  CHECK(here_result([&] { return ::nanosleep(&bad, nullptr); }) ==
        libc_result([&] { return ::nanosleep(&bad, nullptr); }));
  CHECK(::clock_nanosleep(CLOCK_MONOTONIC, 0, &bad, nullptr) == EINVAL);
}

TEST_CASE("the main fiber cooperates too" * doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int ticks = 0;
  bool stop = false;
  auto t = cogent::spawn([&] {
    while (!stop) {
      ++ticks;
      cogent::sleep(1ms);
    }
  });
  ::usleep(100'000);  // main parks on the hub; the task runs meanwhile
  stop = true;
  t.join();
  CHECK(ticks >= 20);
}

COGENT_TEST_CASE("a pipe read parks only its fiber", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int p[2];
  REQUIRE(::pipe(p) == 0);
  ticker tk;
  auto reader = cogent::spawn([&] {
    char buf[16] = {};
    ssize_t n = ::read(p[0], buf, sizeof buf);
    return std::string(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
  });
  auto writer = cogent::spawn([&] {
    cogent::sleep(100ms);
    return ::write(p[1], "hello", 5);
  });
  CHECK(reader.get() == "hello");
  CHECK(writer.get() == 5);
  CHECK(tk.ticks >= 20);  // the hub kept running other fibers
  // EOF after the write end closes.
  ::close(p[1]);
  char c;
  CHECK(::read(p[0], &c, 1) == 0);
  ::close(p[0]);
}

COGENT_TEST_CASE("poll and select on sockets wake on readiness or timeout", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int a[2], b[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, a) == 0);
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, b) == 0);
  ticker tk;

  // Timeout: nothing to read for 100 ms.
  pollfd pf[3] = {{a[0], POLLIN, 0}, {-1, POLLIN, 0}, {b[0], POLLIN, 0}};
  auto t0 = steady::now();
  CHECK(::poll(pf, 3, 100) == 0);
  CHECK(since(t0) >= 0.095);
  CHECK(tk.ticks >= 20);

  // Readiness: b[0] becomes readable after 50 ms; only it is reported.
  auto w = cogent::spawn([&] {
    cogent::sleep(50ms);
    (void)::write(b[1], "x", 1);
  });
  t0 = steady::now();
  CHECK(::poll(pf, 3, 5000) == 1);
  CHECK(since(t0) < 1.0);
  CHECK(pf[0].revents == 0);
  CHECK(pf[1].revents == 0);
  CHECK(pf[2].revents == POLLIN);
  w.join();

  // Already ready (fast path), POLLNVAL for a closed fd, as libc.
  int closed = ::dup(a[0]);
  ::close(closed);
  pollfd nv[2] = {{b[0], POLLIN, 0}, {closed, POLLIN, 0}};
  CHECK(::poll(nv, 2, 1000) == 2);
  CHECK(nv[1].revents == POLLNVAL);

  // select: timeout with the time left written back, then readiness.
  fd_set rs;
  FD_ZERO(&rs);
  FD_SET(a[0], &rs);
  timeval tv{0, 100'000};
  t0 = steady::now();
  CHECK(::select(a[0] + 1, &rs, nullptr, nullptr, &tv) == 0);
  CHECK(since(t0) >= 0.095);
  CHECK(!FD_ISSET(a[0], &rs));
  auto w2 = cogent::spawn([&] {
    cogent::sleep(50ms);
    (void)::write(a[1], "y", 1);
  });
  FD_ZERO(&rs);
  FD_SET(a[0], &rs);
  FD_SET(b[0], &rs);  // readable already: reported at once
  tv = timeval{5, 0};
  CHECK(::select(std::max(a[0], b[0]) + 1, &rs, nullptr, nullptr, &tv) == 1);
  CHECK(FD_ISSET(b[0], &rs));
  char c;
  CHECK(::read(b[0], &c, 1) == 1);
  FD_ZERO(&rs);
  FD_SET(a[0], &rs);
  tv = timeval{5, 0};
  CHECK(::select(a[0] + 1, &rs, nullptr, nullptr, &tv) == 1);
  CHECK(FD_ISSET(a[0], &rs));
  CHECK(tv.tv_sec < 5);
  w2.join();
  for (int fd : {a[0], a[1], b[0], b[1]}) {
    ::close(fd);
  }
}

COGENT_TEST_CASE("getaddrinfo and gethostbyname from many fibers let the others run", doctest::timeout(30)) {
  cogent::monkey::patch_all();
  // Each lookup records, at the moment it returns, whether the spinner (always
  // ready) ran while it waited, and how many lookups were in progress at
  // once. A lookup that blocked the hub would see the spinner stand still and
  // never overlap another one: the fibers would run one after the other.
  cogent::test::spinner spin;
  int in_lookup = 0;
  int max_in_lookup = 0;
  struct outcome {
    bool ok = false;
    bool others_ran = false;
  };
  std::vector<cogent::task<outcome>> tasks;
  for (int i = 0; i < 50; ++i) {
    tasks.push_back(cogent::spawn([i, &spin, &in_lookup, &max_in_lookup] {
      outcome o;
      long before = spin.ticks;
      max_in_lookup = std::max(max_in_lookup, ++in_lookup);
      if (i % 5 == 0) {
        hostent* h = ::gethostbyname("localhost");
        o.ok = h != nullptr && h->h_addr_list[0] != nullptr;
      } else {
        addrinfo hints{};
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        addrinfo* res = nullptr;
        int rc = ::getaddrinfo("localhost", "80", &hints, &res);
        o.ok = rc == 0 && res != nullptr &&
               reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr.s_addr == htonl(INADDR_LOOPBACK) &&
               reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_port == htons(80);
        if (res != nullptr) {
          ::freeaddrinfo(res);
        }
      }
      --in_lookup;
      o.others_ran = spin.ticks > before;
      return o;
    }));
  }
  int others_ran = 0;
  for (auto& t : tasks) {
    outcome o = t.get();
    CHECK(o.ok);
    others_ran += o.others_ran ? 1 : 0;
  }
  CHECK(others_ran == 50);    // every lookup let the spinner run while it waited
  CHECK(max_in_lookup >= 2);  // and they overlapped
  // Failures are libc's.
  addrinfo hints{};
  hints.ai_flags = AI_NUMERICHOST;
  addrinfo* res = nullptr;
  int here = ::getaddrinfo("not-a-number", nullptr, &hints, &res);
  int ref = 0;
  std::thread([&] { ref = ::getaddrinfo("not-a-number", nullptr, &hints, &res); }).join();
  CHECK(here == ref);
  CHECK(here == EAI_NONAME);
}

COGENT_TEST_CASE("regular file write/read round trip through io_uring", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  // Every call below is checked with parks(): the calling fiber parked on the
  // hub (another fiber ran before the call returned), which the file hooks do
  // only to wait for their io_uring op. Plain libc would give the same data,
  // but would never switch.
  using cogent::test::parks;
  int fd = cogent::test::open_scratch_file();
  REQUIRE(fd >= 0);
  std::string data(1 << 20, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) {
    data[i] = static_cast<char>('a' + i % 23);
  }
  auto w = parks([&] { return ::write(fd, data.data(), data.size()); });
  CHECK(w.result == static_cast<long>(data.size()));
  CHECK(w.parked);
  CHECK(::lseek(fd, 0, SEEK_CUR) == static_cast<off_t>(data.size()));  // the file position moved
  CHECK(::lseek(fd, 0, SEEK_SET) == 0);
  std::string back(data.size(), '\0');
  std::size_t got = 0;
  while (got < back.size()) {
    auto r = parks([&] { return ::read(fd, back.data() + got, back.size() - got); });
    REQUIRE(r.result > 0);
    CHECK(r.parked);
    got += static_cast<std::size_t>(r.result);
  }
  CHECK(back == data);
  CHECK(::read(fd, back.data(), 10) == 0);  // EOF
  auto pw = parks([&] { return ::pwrite(fd, "XYZ", 3, 100); });
  CHECK(pw.result == 3);
  CHECK(pw.parked);
  char three[3];
  auto pr = parks([&] { return ::pread(fd, three, 3, 100); });
  CHECK(pr.result == 3);
  CHECK(pr.parked);
  CHECK(std::memcmp(three, "XYZ", 3) == 0);
  iovec iov[2] = {{const_cast<char*>("ab"), 2}, {const_cast<char*>("cd"), 2}};
  CHECK(::lseek(fd, 0, SEEK_SET) == 0);
  auto wv = parks([&] { return ::writev(fd, iov, 2); });
  CHECK(wv.result == 4);
  CHECK(wv.parked);
  char four[4];
  iovec riov[1] = {{four, 4}};
  CHECK(::pread(fd, four, 4, 0) == 4);
  CHECK(std::memcmp(four, "abcd", 4) == 0);
  CHECK(::lseek(fd, 0, SEEK_SET) == 0);
  std::memset(four, 0, sizeof four);
  auto rv = parks([&] { return ::readv(fd, riov, 1); });
  CHECK(rv.result == 4);
  CHECK(rv.parked);
  CHECK(std::memcmp(four, "abcd", 4) == 0);
  CHECK(::lseek(fd, 0, SEEK_CUR) == 4);
  // pread with a negative offset, pwrite on a pipe: libc's EINVAL / ESPIPE.
  CHECK(here_result([&] { return ::pread(fd, four, 4, -1); }) ==
        libc_result([&] { return ::pread(fd, four, 4, -1); }));
  int p[2];
  REQUIRE(::pipe(p) == 0);
  CHECK(here_result([&] { return ::pwrite(p[1], "x", 1, 0); }) ==
        libc_result([&] { return ::pwrite(p[1], "x", 1, 0); }));
  ::close(p[0]);
  ::close(p[1]);
  ::close(fd);
}

COGENT_TEST_CASE("the user's O_NONBLOCK, FIONBIO and MSG_DONTWAIT give EAGAIN at once",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  char c;
  // SOCK_NONBLOCK at creation.
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, s) == 0);
  CHECK(here_result([&] { return ::read(s[0], &c, 1); }) == std::pair<long, int>{-1, EAGAIN});
  CHECK((::fcntl(s[0], F_GETFL) & O_NONBLOCK) != 0);
  ::close(s[0]);
  ::close(s[1]);

  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  CHECK((::fcntl(s[0], F_GETFL) & O_NONBLOCK) == 0);  // reports what the user set
  // fcntl(F_SETFL, O_NONBLOCK).
  REQUIRE(::fcntl(s[0], F_SETFL, ::fcntl(s[0], F_GETFL) | O_NONBLOCK) == 0);
  CHECK((::fcntl(s[0], F_GETFL) & O_NONBLOCK) != 0);
  auto t0 = steady::now();
  CHECK(here_result([&] { return ::read(s[0], &c, 1); }) == std::pair<long, int>{-1, EAGAIN});
  CHECK(here_result([&] { return ::recv(s[0], &c, 1, 0); }) == std::pair<long, int>{-1, EAGAIN});
  pollfd pf{s[0], POLLIN, 0};
  CHECK(::poll(&pf, 1, 0) == 0);
  REQUIRE(::fcntl(s[0], F_SETFL, ::fcntl(s[0], F_GETFL) & ~O_NONBLOCK) == 0);
  CHECK((::fcntl(s[0], F_GETFL) & O_NONBLOCK) == 0);
  // MSG_DONTWAIT on a blocking socket.
  CHECK(here_result([&] { return ::recv(s[0], &c, 1, MSG_DONTWAIT); }) == std::pair<long, int>{-1, EAGAIN});
  // ioctl(FIONBIO).
  int on = 1;
  REQUIRE(::ioctl(s[0], FIONBIO, &on) == 0);
  CHECK(here_result([&] { return ::read(s[0], &c, 1); }) == std::pair<long, int>{-1, EAGAIN});
  on = 0;
  REQUIRE(::ioctl(s[0], FIONBIO, &on) == 0);
  // A dup shares the description: O_NONBLOCK set through it applies here too.
  int d = ::dup(s[0]);
  REQUIRE(::fcntl(d, F_SETFL, O_NONBLOCK) == 0);
  CHECK(here_result([&] { return ::read(s[0], &c, 1); }) == std::pair<long, int>{-1, EAGAIN});
  REQUIRE(::fcntl(d, F_SETFL, 0) == 0);
  ::close(d);
  CHECK(since(t0) < 0.5);
  // Blocking again: a read now parks until data comes.
  auto w = cogent::spawn([&] {
    cogent::sleep(30ms);
    (void)::write(s[1], "z", 1);
  });
  CHECK(::read(s[0], &c, 1) == 1);
  CHECK(c == 'z');
  w.join();
  // pipe2(O_NONBLOCK).
  int p[2];
  REQUIRE(::pipe2(p, O_NONBLOCK) == 0);
  CHECK(here_result([&] { return ::read(p[0], &c, 1); }) == std::pair<long, int>{-1, EAGAIN});
  for (int fd : {s[0], s[1], p[0], p[1]}) {
    ::close(fd);
  }
}

COGENT_TEST_CASE("SO_RCVTIMEO and SO_SNDTIMEO are honoured", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  timeval tv{0, 100'000};
  REQUIRE(::setsockopt(s[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
  timeval back{};
  socklen_t len = sizeof back;
  REQUIRE(::getsockopt(s[0], SOL_SOCKET, SO_RCVTIMEO, &back, &len) == 0);
  CHECK(back.tv_usec == 100'000);
  ticker tk;
  char c;
  auto t0 = steady::now();
  CHECK(here_result([&] { return ::read(s[0], &c, 1); }) == std::pair<long, int>{-1, EAGAIN});
  CHECK(since(t0) >= 0.095);
  CHECK(tk.ticks >= 20);
  // Data before the timeout: returned.
  auto w = cogent::spawn([&] {
    cogent::sleep(20ms);
    (void)::send(s[1], "q", 1, 0);
  });
  CHECK(::recv(s[0], &c, 1, 0) == 1);
  w.join();

  // Send timeout on a full buffer: the blocking write returns what it wrote,
  // the next one EAGAIN, each after ~the timeout.
  int small = 4096;
  ::setsockopt(s[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  REQUIRE(::setsockopt(s[1], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
  std::string big(1 << 22, 'b');
  t0 = steady::now();
  ssize_t n = ::write(s[1], big.data(), big.size());
  CHECK(n > 0);
  CHECK(n < static_cast<ssize_t>(big.size()));
  CHECK(since(t0) >= 0.095);
  CHECK(here_result([&] { return ::write(s[1], big.data(), big.size()); }) ==
        std::pair<long, int>{-1, EAGAIN});
  ::close(s[0]);
  ::close(s[1]);
}

COGENT_TEST_CASE("accept, connect, refused connect, recvfrom/sendto/sendmsg over TCP", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  // Refused.
  int c = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in to = loopback(cogent::test::free_port());
  CHECK(here_result([&] { return ::connect(c, reinterpret_cast<sockaddr*>(&to), sizeof to); }) ==
        std::pair<long, int>{-1, ECONNREFUSED});
  ::close(c);

  // A blocking accept in one fiber, a blocking connect in another.
  int port = 0;
  int l = listener(&port);
  auto server = cogent::spawn([l] {
    sockaddr_in peer{};
    socklen_t plen = sizeof peer;
    int fd = ::accept(l, reinterpret_cast<sockaddr*>(&peer), &plen);
    if (fd < 0 || peer.sin_addr.s_addr != htonl(INADDR_LOOPBACK)) {
      return std::string("accept failed");
    }
    char buf[64];
    std::string got;
    ssize_t n;
    while ((n = ::recvfrom(fd, buf, sizeof buf, 0, nullptr, nullptr)) > 0) {
      got.append(buf, static_cast<std::size_t>(n));
      ::sendto(fd, buf, static_cast<std::size_t>(n), 0, nullptr, 0);
    }
    ::close(fd);
    return got;
  });
  c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  to = loopback(port);
  REQUIRE(::connect(c, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0);
  iovec iov[2] = {{const_cast<char*>("hel"), 3}, {const_cast<char*>("lo"), 2}};
  msghdr m{};
  m.msg_iov = iov;
  m.msg_iovlen = 2;
  CHECK(::sendmsg(c, &m, 0) == 5);
  char buf[8] = {};
  CHECK(::recv(c, buf, 5, MSG_WAITALL) == 5);
  CHECK(std::string(buf, 5) == "hello");
  ::shutdown(c, SHUT_WR);
  CHECK(::read(c, buf, sizeof buf) == 0);
  ::close(c);
  CHECK(server.get() == "hello");
  ::close(l);

  // UDP: recvfrom reports the sender.
  int u1 = ::socket(AF_INET, SOCK_DGRAM, 0);
  int u2 = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a1 = loopback(0);
  REQUIRE(::bind(u1, reinterpret_cast<sockaddr*>(&a1), sizeof a1) == 0);
  socklen_t alen = sizeof a1;
  ::getsockname(u1, reinterpret_cast<sockaddr*>(&a1), &alen);
  auto rx = cogent::spawn([u1] {
    char b[16];
    sockaddr_in from{};
    socklen_t flen = sizeof from;
    ssize_t n = ::recvfrom(u1, b, sizeof b, 0, reinterpret_cast<sockaddr*>(&from), &flen);
    return n == 4 && flen == sizeof from && from.sin_addr.s_addr == htonl(INADDR_LOOPBACK);
  });
  cogent::sleep(10ms);
  CHECK(::sendto(u2, "ping", 4, 0, reinterpret_cast<sockaddr*>(&a1), sizeof a1) == 4);
  CHECK(rx.get());
  ::close(u1);
  ::close(u2);
}

COGENT_TEST_CASE("ppoll parks only its fiber and wakes on readiness or timeout", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  ticker tk;
  pollfd pf[2] = {{-1, POLLIN, 0}, {s[0], POLLIN, 0}};

  // Timeout: nothing to read for 100 ms; the ticker runs meanwhile.
  timespec ts{0, 100'000'000};
  long before = tk.ticks;
  auto t0 = steady::now();
  CHECK(::ppoll(pf, 2, &ts, nullptr) == 0);
  CHECK(since(t0) >= 0.095);
  CHECK(tk.ticks - before >= 20);

  // Readiness with no timeout at all: a fiber's write after 100 ms wakes it
  // (a thread's after 2 s if ppoll blocked the hub).
  auto w = woken_later(tk, s[1], [&] { return ::ppoll(pf, 2, nullptr, nullptr); });
  CHECK(w.result == 1);
  CHECK(pf[0].revents == 0);
  CHECK(pf[1].revents == POLLIN);
  CHECK(w.ticks >= 20);
  char buf[16];
  CHECK(::recv(s[0], buf, sizeof buf, 0) == 5);  // "fiber"

  // With a signal mask: libc's ppoll (here with nothing to wait for).
  REQUIRE(::write(s[1], "m", 1) == 1);
  sigset_t none;
  sigemptyset(&none);
  ts = timespec{1, 0};
  CHECK(::ppoll(pf, 2, &ts, &none) == 1);
  CHECK(pf[1].revents == POLLIN);
  CHECK(::recv(s[0], buf, sizeof buf, 0) == 1);
  // Errors are libc's.
  timespec bad{0, -1};
  CHECK(here_result([&] { return ::ppoll(pf, 2, &bad, nullptr); }) ==
        libc_result([&] { return ::ppoll(pf, 2, &bad, nullptr); }));
  ::close(s[0]);
  ::close(s[1]);
}

namespace {

enum class poll_call { poll, ppoll, select };

// check_poll_set() runs poll, ppoll or select on n entries over n fresh pipes'
// read ends, nothing ready at the call, so each call waits in the hook (its
// fast path sees nothing). n on either side of 16 crosses the hook's switch
// from its inline scratch to the heap (monkey/hooks.cpp, poll_scratch).
// Entry i is, by i % 4: 0 a pipe a fiber writes to after 100 ms (POLLIN), 1
// a pipe whose write end that fiber closes (POLLHUP; readable for select), 2
// a pipe nobody touches (0), 3 a negative fd (ignored, revents 0). The fiber
// does it all in one run (write ends are O_NONBLOCK, so its writes go
// straight to libc and never park), so the waiting call's probe sees every
// change at once: the count and every revents are exact. Before that, a
// 100 ms timeout with nothing ready: 0 and every revents cleared. A ticker
// proves both waits let the hub run; if the call blocked the thread instead,
// the writer never runs and the 5 s wait returns 0 (a failure, not a hang).
// For select, revents[i] is POLLIN if entry i's fd is in the returned set.
void check_poll_set(std::size_t n, poll_call how) {
  std::vector<int> rd(n, -1), wr(n, -1);
  for (std::size_t i = 0; i < n; ++i) {
    int p[2];
    REQUIRE(::pipe(p) == 0);
    rd[i] = p[0];
    wr[i] = p[1];
    REQUIRE(::fcntl(p[1], F_SETFL, O_NONBLOCK) == 0);
  }
  std::vector<pollfd> pf(n);
  auto reset = [&] {
    for (std::size_t i = 0; i < n; ++i) {
      pf[i] = pollfd{i % 4 == 3 ? -1 : rd[i], POLLIN, static_cast<short>(0x5a5a)};  // revents: junk
    }
  };
  auto call = [&](int timeout_ms) -> int {
    switch (how) {
      case poll_call::poll:
        return ::poll(pf.data(), n, timeout_ms);
      case poll_call::ppoll: {
        timespec ts{timeout_ms / 1000, (timeout_ms % 1000) * 1'000'000L};
        return ::ppoll(pf.data(), n, &ts, nullptr);
      }
      case poll_call::select:
        break;
    }
    fd_set set;
    FD_ZERO(&set);
    int maxfd = -1;
    for (const pollfd& p : pf) {
      if (p.fd >= 0) {
        REQUIRE(p.fd < FD_SETSIZE);
        FD_SET(p.fd, &set);
        maxfd = std::max(maxfd, p.fd);
      }
    }
    timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000L};
    int r = ::select(maxfd + 1, &set, nullptr, nullptr, &tv);
    for (pollfd& p : pf) {
      p.revents = r >= 0 && p.fd >= 0 && FD_ISSET(p.fd, &set) ? POLLIN : 0;
    }
    return r;
  };
  // mismatches() lists the entries whose revents are not want(i): "" if none.
  auto mismatches = [&](auto want) {
    std::string out;
    for (std::size_t i = 0; i < n; ++i) {
      if (pf[i].revents != want(i)) {
        out += '[';
        out += std::to_string(i);
        out += "] revents ";
        out += std::to_string(pf[i].revents);
        out += " want ";
        out += std::to_string(want(i));
        out += "; ";
      }
    }
    return out;
  };
  ticker tk;

  // Timeout: nothing becomes ready.
  reset();
  long before = tk.ticks;
  auto t0 = steady::now();
  CHECK(call(100) == 0);
  CHECK(since(t0) >= 0.095);
  CHECK(tk.ticks - before >= 20);
  CHECK(mismatches([](std::size_t) { return short{0}; }) == "");

  // Readiness: everything the fiber does is reported, nothing else.
  reset();
  auto waker = cogent::spawn([&] {
    cogent::sleep(100ms);
    int done = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (i % 4 == 0) {
        done += ::write(wr[i], "x", 1) == 1 ? 1 : 0;
      } else if (i % 4 == 1) {
        done += ::close(wr[i]) == 0 ? 1 : 0;
        wr[i] = -1;
      }
    }
    return done;
  });
  int want_count = 0;
  for (std::size_t i = 0; i < n; ++i) {
    want_count += i % 4 <= 1 ? 1 : 0;
  }
  before = tk.ticks;
  t0 = steady::now();
  int r = call(5000);
  long during = tk.ticks - before;
  CHECK(waker.get() == want_count);
  CHECK(r == want_count);
  CHECK(since(t0) < 2.0);
  CHECK(during >= 20);
  CHECK(mismatches([&](std::size_t i) -> short {
          switch (i % 4) {
            case 0:
              return POLLIN;
            case 1:
              return how == poll_call::select ? POLLIN : POLLHUP;
            default:
              return 0;
          }
        }) == "");
  for (std::size_t i = 0; i < n; ++i) {
    ::close(rd[i]);
    if (wr[i] >= 0) {
      ::close(wr[i]);
    }
  }
}

const char* name_of(poll_call how) {
  switch (how) {
    case poll_call::poll:
      return "poll";
    case poll_call::ppoll:
      return "ppoll";
    case poll_call::select:
      return "select";
  }
  return "?";
}

}  // namespace

COGENT_TEST_CASE("poll, ppoll and select on a few pipes report exactly what became ready",
                 doctest::timeout(30)) {
  cogent::monkey::patch_all();
  for (std::size_t n : {std::size_t{4}, std::size_t{16}}) {
    for (poll_call how : {poll_call::poll, poll_call::ppoll, poll_call::select}) {
      INFO(name_of(how), " on ", n, " entries");
      check_poll_set(n, how);
    }
  }
}

// More entries than the hook keeps on the stack: its scratch (and
// await_poll's ops) come from the heap, with the same results.
COGENT_TEST_CASE("poll, ppoll and select on 100 pipes report exactly what became ready",
                 doctest::timeout(30)) {
  cogent::monkey::patch_all();
  for (std::size_t n : {std::size_t{17}, std::size_t{100}}) {
    for (poll_call how : {poll_call::poll, poll_call::ppoll, poll_call::select}) {
      INFO(name_of(how), " on ", n, " entries");
      check_poll_set(n, how);
    }
  }
}

COGENT_TEST_CASE("recvmsg on a socket parks only its fiber, ancillary data included", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  // The kernel's own SO_RCVTIMEO is the fallback: a recvmsg that blocked the
  // thread would fail with EAGAIN after 2 s, the sender fiber never running.
  timeval tv{2, 0};
  REQUIRE(::setsockopt(s[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
  int p[2];
  REQUIRE(::pipe(p) == 0);
  ticker tk;
  auto sender = cogent::spawn([&] {
    cogent::sleep(100ms);
    iovec v{const_cast<char*>("fd"), 2};
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))] = {};
    msghdr m{};
    m.msg_iov = &v;
    m.msg_iovlen = 1;
    m.msg_control = ctl;
    m.msg_controllen = sizeof ctl;
    cmsghdr* cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cm), &p[0], sizeof(int));
    return ::sendmsg(s[1], &m, 0);
  });
  char data[8] = {};
  iovec v{data, sizeof data};
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))] = {};
  msghdr m{};
  m.msg_iov = &v;
  m.msg_iovlen = 1;
  m.msg_control = ctl;
  m.msg_controllen = sizeof ctl;
  long before = tk.ticks;
  ssize_t n = ::recvmsg(s[0], &m, 0);
  long during = tk.ticks - before;
  CHECK(sender.get() == 2);
  REQUIRE(n == 2);
  CHECK(std::string(data, 2) == "fd");
  CHECK(during >= 20);
  // The passed fd arrived and is the pipe's read end.
  cmsghdr* cm = CMSG_FIRSTHDR(&m);
  REQUIRE(cm != nullptr);
  CHECK(cm->cmsg_type == SCM_RIGHTS);
  int got = -1;
  std::memcpy(&got, CMSG_DATA(cm), sizeof got);
  REQUIRE(got >= 0);
  REQUIRE(::write(p[1], "z", 1) == 1);
  char c = 0;
  CHECK(::read(got, &c, 1) == 1);
  CHECK(c == 'z');
  // MSG_DONTWAIT: EAGAIN at once, as libc.
  auto t0 = steady::now();
  CHECK(here_result([&] { return ::recvmsg(s[0], &m, MSG_DONTWAIT); }) == std::pair<long, int>{-1, EAGAIN});
  CHECK(since(t0) < 0.5);
  for (int fd : {s[0], s[1], p[0], p[1], got}) {
    ::close(fd);
  }
}

COGENT_TEST_CASE("dup2, dup3, F_DUPFD and F_DUPFD_CLOEXEC carry what the hooks track", doctest::timeout(30)) {
  cogent::monkey::patch_all();
  ticker tk;
  struct dupper {
    const char* what;
    int (*make)(int from, int to);
    bool cloexec;
  };
  const dupper dups[] = {
      {"dup2", [](int from, int to) { return ::dup2(from, to); }, false},
      {"dup3", [](int from, int to) { return ::dup3(from, to, O_CLOEXEC); }, true},
      {"F_DUPFD", [](int from, int to) { return ::fcntl(from, F_DUPFD, to); }, false},
      {"F_DUPFD_CLOEXEC", [](int from, int to) { return ::fcntl(from, F_DUPFD_CLOEXEC, to); }, true},
  };
  for (const dupper& dp : dups) {
    INFO(std::string(dp.what));
    int s[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
    timeval tv{0, 100'000};
    REQUIRE(::setsockopt(s[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    // The target (dup2/dup3) or the lowest number tried (F_DUPFD) is an fd
    // the hooks already classified as not cooperative (/dev/null).
    int target = ::open("/dev/null", O_RDONLY);
    REQUIRE(target >= 0);
    char c;
    REQUIRE(::read(target, &c, 1) == 0);
    int d = dp.make(s[0], target);
    REQUIRE(d >= 0);
    CHECK(((::fcntl(d, F_GETFD) & FD_CLOEXEC) != 0) == dp.cloexec);

    // 1. The copy has the socket's SO_RCVTIMEO (the description's, as for
    //    libc) and cooperates: EAGAIN after 100 ms, the ticker running. The
    //    Timeout turns a wait that ignored the timeout into EINTR.
    std::pair<long, int> r;
    long before = tk.ticks;
    auto t0 = steady::now();
    {
      cogent::timeout guard(1s);
      r = here_result([&] { return ::read(d, &c, 1); });
    }
    CHECK(r == std::pair<long, int>{-1, EAGAIN});
    CHECK(since(t0) >= 0.095);
    CHECK(tk.ticks - before >= 20);

    // 2. Removing the timeout through the copy removes it for the original
    //    too: s[0] now waits (until the Timeout), not EAGAIN after 100 ms.
    tv = timeval{0, 0};
    REQUIRE(::setsockopt(d, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    {
      cogent::timeout guard(300ms);
      r = here_result([&] { return ::read(s[0], &c, 1); });
    }
    CHECK(r == std::pair<long, int>{-1, EINTR});

    // 3. The user's O_NONBLOCK set on the original: the copy reports it and
    //    gives EAGAIN at once, as libc does.
    REQUIRE(::fcntl(s[0], F_SETFL, O_NONBLOCK) == 0);
    CHECK((::fcntl(d, F_GETFL) & O_NONBLOCK) != 0);
    t0 = steady::now();
    {
      cogent::timeout guard(1s);
      r = here_result([&] { return ::read(d, &c, 1); });
    }
    CHECK(r == libc_result([&] { return ::read(d, &c, 1); }));
    CHECK(r == std::pair<long, int>{-1, EAGAIN});
    CHECK(since(t0) < 0.5);

    // 4. Cleared through the copy: both block again, cooperatively (a
    //    thread's write after 2 s ends a wait that blocked the hub).
    REQUIRE(::fcntl(d, F_SETFL, 0) == 0);
    CHECK((::fcntl(s[0], F_GETFL) & O_NONBLOCK) == 0);
    for (int fd : {s[0], d}) {
      char buf[16];
      auto w = woken_later(tk, s[1], [&] { return ::read(fd, buf, sizeof buf); });
      CHECK(std::string(buf, w.result > 0 ? static_cast<std::size_t>(w.result) : 0) == "fiber");
      CHECK(w.ticks >= 20);
    }
    for (int fd : {s[0], s[1], d}) {
      ::close(fd);
    }
    if (d != target) {
      ::close(target);
    }
  }
  // Onto itself: dup2 returns the fd, dup3 fails with EINVAL, as libc.
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  CHECK(here_result([&] { return ::dup2(s[0], s[0]); }) == libc_result([&] { return ::dup2(s[0], s[0]); }));
  CHECK(here_result([&] { return ::dup3(s[0], s[0], 0); }) ==
        libc_result([&] { return ::dup3(s[0], s[0], 0); }));
  ::close(s[0]);
  ::close(s[1]);
}

COGENT_TEST_CASE("writev on a socket parks until all of it is written", doctest::timeout(30)) {
  cogent::monkey::patch_all();
  // 7 uneven pieces (the hook's private copy of the rest is inline), then 24
  // (it is a heap block): partial sends end inside and between iovecs.
  std::vector<std::size_t> few{1, 7, 4096, 65537, 3, 300000};
  std::vector<std::size_t> many;
  for (std::size_t i = 0; i < 23; ++i) {
    many.push_back(i % 2 == 0 ? 1 + i * 977 : 50000 + i);
  }
  for (const auto& pieces : {few, many}) {
    CAPTURE(pieces.size() + 1);
    int s[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
    int small = 4096;
    REQUIRE(::setsockopt(s[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    // The kernel's SO_SNDTIMEO is the fallback: a writev that blocked the thread
    // would return a partial count after 3 s, the reader fiber never running.
    timeval tv{3, 0};
    REQUIRE(::setsockopt(s[1], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
    std::string data(2 << 20, '\0');
    for (std::size_t i = 0; i < data.size(); ++i) {
      data[i] = static_cast<char>(i * 7 + i / 4096);
    }
    // Uneven pieces, so partial sends end inside and between iovecs.
    std::vector<iovec> iov;
    std::size_t off = 0;
    for (std::size_t len : pieces) {
      iov.push_back({data.data() + off, len});
      off += len;
    }
    iov.push_back({data.data() + off, data.size() - off});
    std::size_t received_at_return = 0;
    std::size_t received = 0;
    auto reader = cogent::spawn([&] {
      std::string got;
      char buf[1000];
      while (got.size() < data.size()) {
        ssize_t n = ::read(s[0], buf, sizeof buf);
        if (n <= 0) {
          break;
        }
        got.append(buf, static_cast<std::size_t>(n));
        received = got.size();
      }
      return got;
    });
    ssize_t n = ::writev(s[1], iov.data(), static_cast<int>(iov.size()));
    received_at_return = received;
    CHECK(n == static_cast<ssize_t>(data.size()));
    // Most of it had been read while writev was still writing: the reader ran.
    CHECK(received_at_return >= data.size() / 2);
    ::shutdown(s[1], SHUT_WR);  // EOF for the reader if less was written
    CHECK(reader.get() == data);
    ::close(s[0]);
    ::close(s[1]);
  }
}

COGENT_TEST_CASE("calls from a plain std::thread and a thread-pool worker are untouched",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int p[2];
  REQUIRE(::pipe(p) == 0);
  bool thread_had_hub = true;
  std::string got;
  // The thread's read blocks that thread in libc; the fiber's write wakes it.
  std::thread t([&] {
    char buf[8] = {};
    ssize_t n = ::read(p[0], buf, sizeof buf);
    got.assign(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
    thread_had_hub = cogent::hub::current_if_exists() != nullptr;
  });
  cogent::sleep(50ms);
  CHECK(::write(p[1], "thr", 3) == 3);
  // Join without blocking the hub: poll for completion.
  while (got.empty()) {
    cogent::sleep(1ms);
  }
  t.join();
  CHECK(got == "thr");
  CHECK_FALSE(thread_had_hub);
  bool worker_has_hub = cogent::run_in_thread([] {
    ::usleep(1000);
    return cogent::hub::current_if_exists() != nullptr;
  });
  CHECK_FALSE(worker_has_hub);
  ::close(p[0]);
  ::close(p[1]);
}

COGENT_TEST_CASE("bad fds, flags and sizes give libc's errors", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  int p[2];
  REQUIRE(::pipe(p) == 0);
  int closed = ::dup(s[0]);
  ::close(closed);
  int dir = ::open("/tmp", O_RDONLY | O_DIRECTORY);
  char buf[16];
  sockaddr_in to = loopback(1);
  timespec bad_ts{0, -1};
  [[maybe_unused]] pollfd pf{s[0], POLLIN, 0};
  // Hidden from the compiler, which rightly warns about these deliberate misuses.
  volatile std::size_t huge_v = SIZE_MAX;
  std::size_t huge = huge_v;
  char* volatile null_v = nullptr;
  char* null_buf = null_v;
  volatile int minus_one_v = -1;
  int minus_one = minus_one_v;
  iovec* volatile null_iov_v = nullptr;
  iovec* null_iov = null_iov_v;
  void* volatile bad_ptr_v = reinterpret_cast<void*>(8);
  void* bad_ptr = bad_ptr_v;
  struct named {
    const char* what;
    std::function<long()> call;
  };
  std::vector<named> calls = {
      {"read(-1)", [&] { return ::read(-1, buf, 1); }},
      {"read(closed)", [&] { return ::read(closed, buf, 1); }},
      {"write(closed)", [&] { return ::write(closed, buf, 1); }},
      {"read(dir)", [&] { return ::read(dir, buf, 1); }},
      {"read(huge)", [&] { return ::read(s[0], buf, huge); }},
      {"write(huge)", [&] { return ::write(s[1], buf, huge); }},
      {"write(nullptr)", [&] { return ::write(s[1], null_buf, 10); }},
      {"recv(pipe)", [&] { return ::recv(p[0], buf, 1, 0); }},
      {"send(pipe)", [&] { return ::send(p[1], buf, 1, 0); }},
      {"accept(not listening)", [&] { return ::accept(s[0], nullptr, nullptr); }},
      {"accept(pipe)", [&] { return ::accept(p[0], nullptr, nullptr); }},
      {"accept4(bad flags)", [&] { return ::accept4(s[0], nullptr, nullptr, 0x40000000); }},
      {"connect(bad len)", [&] { return ::connect(s[0], reinterpret_cast<sockaddr*>(&to), 3); }},
      {"connect(closed)", [&] { return ::connect(closed, reinterpret_cast<sockaddr*>(&to), sizeof to); }},
      {"readv(bad count)", [&] { return ::readv(s[0], null_iov, minus_one); }},
      {"writev(bad count)", [&] { return ::writev(s[1], null_iov, 100000); }},
      {"select(-1)", [&] { return ::select(-1, nullptr, nullptr, nullptr, nullptr); }},
      {"nanosleep(bad)", [&] { return ::nanosleep(&bad_ts, nullptr); }},
      {"nanosleep(nullptr)", [&] { return ::nanosleep(nullptr, nullptr); }},
      {"close(-1)", [&] { return ::close(-1); }},
      {"fcntl(bad cmd)", [&] { return ::fcntl(s[0], 123456); }},
      {"setsockopt(pipe)",
       [&] {
         int one = 1;
         return ::setsockopt(p[0], SOL_SOCKET, SO_RCVTIMEO, &one, sizeof one);
       }},
      {"shutdown(bad how)", [&] { return ::shutdown(s[0], 17); }},
      {"dup2(closed)", [&] { return ::dup2(closed, 1000); }},
      {"sendto(bad addr)", [&] { return ::sendto(s[1], buf, 1, 0, reinterpret_cast<sockaddr*>(&to), 3); }},
  };
#if !defined(__SANITIZE_ADDRESS__)
  // ASan's poll interceptor reads all nfds entries before the kernel can say EINVAL.
  calls.push_back({"poll(huge nfds)", [&] { return ::poll(&pf, 1 << 30, 10); }});
#endif
  for (auto& c : calls) {
    INFO(c.what);
    CHECK(here_result(c.call) == libc_result(c.call));
  }
  // An EFAULT for a bad read buffer once data is there, as libc.
  REQUIRE(::write(s[1], "ab", 2) == 2);
  CHECK(here_result([&] { return ::read(s[0], bad_ptr, 2); }) == std::pair<long, int>{-1, EFAULT});
  for (int fd : {s[0], s[1], p[0], p[1], dir}) {
    ::close(fd);
  }
}

COGENT_TEST_CASE("kill inside a hooked call: EINTR, then the kill at the next switch point",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int p[2];
  REQUIRE(::pipe(p) == 0);
  long r1 = 0, r2 = 0;
  int e1 = 0, e2 = 0;
  bool after = false;
  auto t = cogent::spawn([&] {
    char c;
    r1 = ::read(p[0], &c, 1);  // parked here when killed
    e1 = errno;
    r2 = ::read(p[0], &c, 1);  // C code retrying: must not block or spin
    e2 = errno;
    cogent::sleep(0ms);  // the pending kill is raised here
    after = true;
  });
  cogent::sleep(20ms);
  t.kill();
  CHECK(t.ready());
  CHECK(t.killed());
  CHECK(r1 == -1);
  CHECK(e1 == EINTR);
  CHECK(r2 == -1);
  CHECK(e2 == ECANCELED);
  CHECK_FALSE(after);

  // The same for a sleep and a poll.
  auto s = cogent::spawn([&] {
    timespec ts{5, 0}, rem{};
    r1 = ::nanosleep(&ts, &rem);
    e1 = errno;
    r2 = rem.tv_sec;
    cogent::yield();
  });
  cogent::sleep(20ms);
  s.kill();
  CHECK(s.killed());
  CHECK(r1 == -1);
  CHECK(e1 == EINTR);
  CHECK(r2 == 4);
  auto q = cogent::spawn([&] {
    pollfd pf{p[0], POLLIN, 0};
    r1 = ::poll(&pf, 1, -1);
    e1 = errno;
    cogent::yield();
  });
  cogent::sleep(20ms);
  q.kill();
  CHECK(q.killed());
  CHECK(r1 == -1);
  CHECK(e1 == EINTR);
  ::close(p[0]);
  ::close(p[1]);
}

COGENT_TEST_CASE("a Timeout inside a hooked call: EINTR, then timeout_error", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  unsigned left = 0;
  int err = 0;
  bool raised = false;
  auto t0 = steady::now();
  try {
    cogent::timeout guard(50ms);
    left = ::sleep(5);
    err = errno;
    cogent::yield();  // raises the pending timeout_error
  } catch (const cogent::timeout_error&) {
    raised = true;
  }
  CHECK(raised);
  CHECK(err == EINTR);
  CHECK(left == 4);  // glibc: the whole seconds not slept
  CHECK(since(t0) < 1.0);

  // Leaving the Timeout's scope without a switch point withdraws it.
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  long r = 0;
  {
    cogent::timeout guard(30ms);
    char c;
    r = ::read(s[0], &c, 1);
    err = errno;
  }
  CHECK(r == -1);
  CHECK(err == EINTR);
  cogent::yield();  // nothing pending any more: no throw
  ::close(s[0]);
  ::close(s[1]);
}

// cogent::net accepts and closes through io_uring, behind libc's back: the
// engine tells monkey's fd table, so a number the kernel hands out again does
// not inherit what the table knew about its previous owner (here: "the user made
// it non-blocking", which sent a hooked read() on the new, blocking socket
// straight to libc: it blocked the whole thread until the 2 s SO_RCVTIMEO).
COGENT_TEST_CASE("an fd number reused by cogent::net's io_uring accept starts with a clean table entry",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  auto l = cogent::net::listener::bind(cogent::net::address::ipv4_loopback(0));
  auto client = cogent::net::stream_socket::connect(l.local_address(), 2s);
  int stale = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(stale >= 0);
  REQUIRE(::fcntl(stale, F_SETFL, ::fcntl(stale, F_GETFL) | O_NONBLOCK) == 0);
  ::syscall(SYS_close, stale);  // behind libc's back: the table still says non-blocking
  auto server = l.accept(2s);   // the lowest free number: stale's
  CHECK_MESSAGE(server.fd() == stale,
                "the kernel gave the accepted socket another number; test inconclusive");
  // Behind the hooks (raw syscall), so the table cannot know: bounds the read that
  // went to libc and blocked the thread before the fix (EAGAIN after 2 s, not a hang).
  timeval two_s{2, 0};
  REQUIRE(::syscall(SYS_setsockopt, server.fd(), SOL_SOCKET, SO_RCVTIMEO, &two_s, sizeof two_s) == 0);
  auto reader = cogent::spawn([&] {
    char b[8];
    ssize_t n = ::read(server.fd(), b, sizeof b);  // a blocking read: must park until the data comes
    return std::pair<ssize_t, int>(n, n < 0 ? errno : 0);
  });
  cogent::sleep(20ms);
  CHECK_FALSE(reader.ready());
  client.write_all("hi");
  auto [n, err] = reader.get();
  CHECK(n == 2);
  CHECK(err == 0);
}

// Linux keeps SO_RCVTIMEO/SO_SNDTIMEO in the socket: one set before
// patch_all() (here: behind the hooks, which is the same to the table), or
// copied by TCP from the listener to an accepted socket, was never seen by
// setsockopt()'s hook; the table said "no timeout" and the reads parked for
// good.
COGENT_TEST_CASE("socket timeouts the hooks never saw are honoured", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  timeval tv{0, 100'000};
  char ch;
  {
    // The two lowest free numbers, with clean table entries (the hooks reset
    // them): what a socket created before patch_all() has.
    int a = ::open("/dev/null", O_RDONLY);
    int b = ::open("/dev/null", O_RDONLY);
    ::close(a);
    ::close(b);
    int sv[2];
    REQUIRE(::syscall(SYS_socketpair, AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    CHECK_MESSAGE(((sv[0] == a && sv[1] == b) || (sv[0] == b && sv[1] == a)),
                  "the kernel gave other numbers; test inconclusive");
    REQUIRE(::syscall(SYS_setsockopt, sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    auto call = [&] { return ::read(sv[0], &ch, 1); };
    auto ref = libc_result(call);
    CHECK(ref == std::pair<long, int>{-1, EAGAIN});
    CHECK(bounded(call, 2s) == ref);
    ::close(sv[0]);
    ::close(sv[1]);
  }
  for (bool coop : {true, false}) {
    CAPTURE(coop);
    int port;
    int l = listener(&port);
    REQUIRE(::setsockopt(l, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    REQUIRE(::setsockopt(l, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
    if (!coop) {  // accept4 goes straight to libc
      REQUIRE(::fcntl(l, F_SETFL, ::fcntl(l, F_GETFL) | O_NONBLOCK) == 0);
    }
    int c = ::socket(AF_INET, SOCK_STREAM, 0);
    auto a = loopback(port);
    REQUIRE(::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    int s = -1;
    for (int i = 0; i < 100 && s < 0; ++i) {
      s = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
      if (s < 0) {
        cogent::sleep(5ms);
      }
    }
    REQUIRE(s >= 0);
    auto call = [&] { return ::read(s, &ch, 1); };
    auto ref = libc_result(call);
    CHECK(ref == std::pair<long, int>{-1, EAGAIN});  // inherited from the listener
    CHECK(bounded(call, 2s) == ref);
    ::close(s);
    ::close(c);
    ::close(l);
  }
}

// poll/select park on one io_uring poll per fd and then ask the kernel. An
// fd whose op fires (or fails) at once while the kernel reports nothing to
// the caller made that a busy loop that never looked at the timeout: a
// hung-up pipe only in select's except set (POLLHUP is not an exception), a
// regular file polled for 0 or POLLPRI (io_uring cannot poll it).
COGENT_TEST_CASE("poll and select time out when an fd fires but reports nothing the caller asked for",
                 doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int p[2];
  REQUIRE(::pipe(p) == 0);
  ::close(p[1]);
  auto sel = [&] {
    fd_set ex;
    FD_ZERO(&ex);
    FD_SET(p[0], &ex);
    timeval tv{0, 100'000};
    return ::select(p[0] + 1, nullptr, nullptr, &ex, &tv);
  };
  auto ref = libc_result(sel);
  CHECK(ref == std::pair<long, int>{0, 0});
  auto t0 = steady::now();
  CHECK(bounded(sel, 2s) == ref);
  CHECK(since(t0) >= 0.095);
  // Another fd that does become ready still wakes it.
  int q[2];
  REQUIRE(::pipe(q) == 0);
  auto w = cogent::spawn([&] {
    cogent::sleep(30ms);
    (void)::write(q[1], "x", 1);
  });
  auto sel2 = [&] {
    fd_set rd, ex;
    FD_ZERO(&rd);
    FD_ZERO(&ex);
    FD_SET(p[0], &ex);
    FD_SET(q[0], &rd);
    timeval tv{2, 0};
    int n = ::select(std::max(p[0], q[0]) + 1, &rd, nullptr, &ex, &tv);
    return n == 1 && FD_ISSET(q[0], &rd) && !FD_ISSET(p[0], &ex) ? 1 : -100;
  };
  CHECK(bounded(sel2, 3s) == std::pair<long, int>{1, 0});
  w.join();
  ::close(q[0]);
  ::close(q[1]);
  ::close(p[0]);

  int fd = ::open("/proc/self/exe", O_RDONLY);
  REQUIRE(fd >= 0);
  for (short ev : {short{0}, short{POLLPRI}}) {
    CAPTURE(ev);
    auto call = [&] {
      pollfd pf{fd, ev, 0};
      int r = ::poll(&pf, 1, 100);
      return r == 0 && pf.revents != 0 ? -100 : r;
    };
    auto pref = libc_result(call);
    CHECK(pref == std::pair<long, int>{0, 0});
    t0 = steady::now();
    CHECK(bounded(call, 2s) == pref);
    CHECK(since(t0) >= 0.095);
    auto pcall = [&] {
      pollfd pf{fd, ev, 0};
      timespec ts{0, 100'000'000};
      return ::ppoll(&pf, 1, &ts, nullptr);
    };
    CHECK(bounded(pcall, 2s) == libc_result(pcall));
  }
  ::close(fd);
}

// A zero-length read is 0 at once on a socket or pipe (read(2), readv(2));
// the hook parked until data came. recv(..., 0, ...) is the protocol's own
// business (TCP: 0 at once; AF_UNIX: waits for data) and must match too.
COGENT_TEST_CASE("zero-length reads and recvs behave as libc's", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  timeval tv{0, 100'000};
  REQUIRE(::setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
  int p[2];
  REQUIRE(::pipe(p) == 0);
  char buf[1];
  iovec v{buf, 0};
  for (int fd : {sv[0], p[0]}) {
    CAPTURE(fd);
    auto rd = [&] { return ::read(fd, buf, 0); };
    CHECK(libc_result(rd) == std::pair<long, int>{0, 0});
    CHECK(bounded(rd, 2s) == libc_result(rd));
    auto rdv = [&] { return ::readv(fd, &v, 1); };
    CHECK(bounded(rdv, 2s) == libc_result(rdv));
  }
  auto urecv = [&] { return ::recv(sv[0], buf, 0, 0); };
  CHECK(bounded(urecv, 2s) == libc_result(urecv));
  int port;
  int l = listener(&port);
  int c = ::socket(AF_INET, SOCK_STREAM, 0);
  auto a = loopback(port);
  REQUIRE(::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  int s = ::accept(l, nullptr, nullptr);
  REQUIRE(s >= 0);
  REQUIRE(::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
  auto trecv = [&] { return ::recv(s, buf, 0, 0); };
  auto tref = libc_result(trecv);
  CHECK(tref == std::pair<long, int>{0, 0});  // after the 100 ms
  CHECK(bounded(trecv, 2s) == tref);
  for (int fd : {sv[0], sv[1], p[0], p[1], s, c, l}) {
    ::close(fd);
  }
}

// The kernel never blocks on the error queue (MSG_ERRQUEUE) or for urgent
// data (MSG_OOB): EAGAIN/EINVAL at once. The hook parked for good.
COGENT_TEST_CASE("MSG_ERRQUEUE and MSG_OOB receives never block", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int u = ::socket(AF_INET, SOCK_DGRAM, 0);
  REQUIRE(u >= 0);
  char buf[64], ctl[64];
  auto rmsg = [&] {
    iovec v{buf, sizeof buf};
    msghdr m{};
    m.msg_iov = &v;
    m.msg_iovlen = 1;
    m.msg_control = ctl;
    m.msg_controllen = sizeof ctl;
    return ::recvmsg(u, &m, MSG_ERRQUEUE);
  };
  CHECK(libc_result(rmsg) == std::pair<long, int>{-1, EAGAIN});
  CHECK(bounded(rmsg, 2s) == libc_result(rmsg));
  auto rcv = [&] { return ::recv(u, buf, sizeof buf, MSG_ERRQUEUE); };
  CHECK(bounded(rcv, 2s) == libc_result(rcv));
  sockaddr_in from{};
  socklen_t flen = sizeof from;
  auto rfrom = [&] {
    return ::recvfrom(u, buf, sizeof buf, MSG_ERRQUEUE, reinterpret_cast<sockaddr*>(&from), &flen);
  };
  CHECK(bounded(rfrom, 2s) == libc_result(rfrom));
  ::close(u);

  int port;
  int l = listener(&port);
  int c = ::socket(AF_INET, SOCK_STREAM, 0);
  auto a = loopback(port);
  REQUIRE(::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  int s = ::accept(l, nullptr, nullptr);
  REQUIRE(s >= 0);
  auto oob = [&] { return ::recv(s, buf, 1, MSG_OOB); };
  CHECK(libc_result(oob) == std::pair<long, int>{-1, EINVAL});
  CHECK(bounded(oob, 2s) == libc_result(oob));
  for (int fd : {s, c, l}) {
    ::close(fd);
  }
}

// A blocking AF_UNIX connect waits for room in the listener's backlog; when
// SO_SNDTIMEO expires the kernel says EAGAIN (TCP's EINPROGRESS means "still
// connecting in the background", which AF_UNIX never does).
COGENT_TEST_CASE("AF_UNIX connect whose SO_SNDTIMEO expires fails with EAGAIN", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  std::string path = "/tmp/cogent_monkey_connect." + std::to_string(::getpid());
  ::unlink(path.c_str());
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  int l = ::socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(l, 0) == 0);
  int fill[4];
  for (int& f : fill) {  // fill the accept queue
    f = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    (void)::connect(f, reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  auto call = [&] {
    int c = ::socket(AF_UNIX, SOCK_STREAM, 0);
    timeval tv{0, 100'000};
    ::setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int r = ::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a);
    int e = errno;
    ::close(c);
    errno = e;
    return r;
  };
  auto ref = libc_result(call);
  CHECK(ref == std::pair<long, int>{-1, EAGAIN});
  CHECK(bounded(call, 2s) == ref);
  for (int f : fill) {
    ::close(f);
  }
  ::close(l);
  ::unlink(path.c_str());
}

// gethostbyname()'s result is libc's static storage: a later call overwrites
// it but never frees it. A fiber that keeps the hostent* (connect() in a loop
// over h_addr_list parks) while another fiber resolves read freed memory.
// Only the ASan build sees that read (elsewhere freed memory usually still holds the values).
COGENT_TEST_CASE("a gethostbyname result stays readable across another fiber's call", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  hostent* hp = ::gethostbyname("localhost");
  REQUIRE(hp != nullptr);
  REQUIRE(hp->h_addr_list[0] != nullptr);
  char* addr0 = hp->h_addr_list[0];
  auto other = cogent::spawn([] { (void)::gethostbyname("localhost"); });
  ::usleep(50'000);  // parks; `other` runs
  other.join();
  CHECK(hp->h_addrtype == AF_INET);
  CHECK(hp->h_length == 4);
  CHECK(std::memcmp(addr0, "\x7f", 1) == 0);  // 127.x.x.x, read through the old pointer
  CHECK(std::string(hp->h_name).size() > 0);
  // gethostbyname_r fills the caller's storage, untouched by gethostbyname.
  hostent he{}, *res = nullptr;
  char buf[1024];
  int herr = 0;
  CHECK(::gethostbyname_r("localhost", &he, buf, sizeof buf, &res, &herr) == 0);
  REQUIRE(res == &he);
  CHECK(he.h_addrtype == AF_INET);
  CHECK(hp->h_addrtype == AF_INET);
}

// A negative SO_RCVTIMEO/SO_SNDTIMEO makes the kernel's timeout zero: a
// blocking call fails at once with EAGAIN (data already there is returned).
COGENT_TEST_CASE("a negative SO_RCVTIMEO or SO_SNDTIMEO fails at once with EAGAIN", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  timeval tv{-1, 0};
  REQUIRE(::setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
  char c;
  auto call = [&] { return ::read(sv[0], &c, 1); };
  auto ref = libc_result(call);
  CHECK(ref == std::pair<long, int>{-1, EAGAIN});
  CHECK(bounded(call, 2s) == ref);
  REQUIRE(::write(sv[1], "a", 1) == 1);
  CHECK(bounded(call, 2s) == std::pair<long, int>{1, 0});
  // A full send buffer with a negative SO_SNDTIMEO: EAGAIN, nothing waits.
  int small = 4096;
  ::setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  REQUIRE(::setsockopt(sv[1], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
  std::string big(1 << 20, 'b');
  while (::send(sv[1], big.data(), big.size(), MSG_DONTWAIT) > 0) {
  }
  auto wcall = [&] { return ::write(sv[1], big.data(), big.size()); };
  auto wref = libc_result(wcall);
  CHECK(wref == std::pair<long, int>{-1, EAGAIN});
  CHECK(bounded(wcall, 2s) == wref);
  ::close(sv[0]);
  ::close(sv[1]);
}

// An fd received through SCM_RIGHTS shares its open file description with
// the sender's fd, like a dup: O_NONBLOCK set through the sender's fd is the
// receiver's too. The table did not know and parked the read for good.
COGENT_TEST_CASE("an fd received through SCM_RIGHTS follows its shared description", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  for (bool coop : {true, false}) {
    CAPTURE(coop);
    int ctl[2], data[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, ctl) == 0);
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, data) == 0);
    cogent::test::rights_msg out(data[0]);
    REQUIRE(::sendmsg(ctl[0], &out.m, 0) == 1);
    cogent::test::rights_msg in;
    REQUIRE(::recvmsg(ctl[1], &in.m, coop ? 0 : MSG_DONTWAIT) == 1);  // MSG_DONTWAIT: straight to libc
    int fd = in.received_fd();
    REQUIRE(fd >= 0);
    char c;
    REQUIRE(::write(data[1], "a", 1) == 1);
    REQUIRE(::read(fd, &c, 1) == 1);  // first use: classified, blocking
    // O_NONBLOCK through the sender's fd: the same description.
    REQUIRE(::fcntl(data[0], F_SETFL, ::fcntl(data[0], F_GETFL) | O_NONBLOCK) == 0);
    REQUIRE((::fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);
    CHECK(bounded([&] { return ::read(fd, &c, 1); }, 2s) == std::pair<long, int>{-1, EAGAIN});
    for (int f : {fd, data[0], data[1], ctl[0], ctl[1]}) {
      ::close(f);
    }
  }
}

// readv/writev with a null iovec array and a positive count: libc's EFAULT
// (the kernel checks the array). The hooks summed the array's lengths before
// anything else and dereferenced null, on a plain thread too.
COGENT_TEST_CASE("readv and writev with a null iovec array fail with EFAULT as libc", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  int p[2];
  REQUIRE(::pipe(p) == 0);
  iovec* volatile null_iov_v = nullptr;
  iovec* null_iov = null_iov_v;
  struct named {
    const char* what;
    std::function<long()> call;
  };
  std::vector<named> calls = {
      {"writev(socket, null, 1)", [&] { return ::writev(s[1], null_iov, 1); }},
      {"readv(socket, null, 1)", [&] { return ::readv(s[0], null_iov, 1); }},
      {"writev(pipe, null, 2)", [&] { return ::writev(p[1], null_iov, 2); }},
      {"readv(pipe, null, 2)", [&] { return ::readv(p[0], null_iov, 2); }},
  };
  for (auto& c : calls) {
    INFO(c.what);
    auto ref = libc_result(c.call);
    CHECK(ref == std::pair<long, int>{-1, EFAULT});
    CHECK(bounded(c.call, 2s) == ref);
  }
  for (int fd : {s[0], s[1], p[0], p[1]}) {
    ::close(fd);
  }
}

// When the kernel's final answer is an error, the caller gets that errno.
// wait_ready() passed probe()'s -1 (errno already set) to fail(), which
// stored errno = 1 (EPERM). Here: select's fd is closed by another fiber
// while it waits (libc skips it and times out; EBADF is the other defensible
// answer), and poll's array is unmapped before the fd fires (the kernel
// cannot write revents back: EFAULT, as libc).
COGENT_TEST_CASE("poll and select failing after their wait keep the kernel's errno", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  {
    int p[2];
    REQUIRE(::pipe(p) == 0);
    auto closer = cogent::spawn([&] {
      cogent::sleep(30ms);
      ::close(p[0]);
    });
    auto got = bounded(
        [&] {
          fd_set rd;
          FD_ZERO(&rd);
          FD_SET(p[0], &rd);
          timeval tv{0, 150'000};
          return ::select(p[0] + 1, &rd, nullptr, nullptr, &tv);
        },
        2s);
    closer.join();
    CAPTURE(got.first);
    CAPTURE(got.second);
    CHECK((got == std::pair<long, int>{0, 0} || got == std::pair<long, int>{-1, EBADF}));
    ::close(p[1]);
  }
  {
    int p[2];
    REQUIRE(::pipe(p) == 0);
    long page_size = ::sysconf(_SC_PAGESIZE);
    void* page = ::mmap(nullptr, static_cast<std::size_t>(page_size), PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(page != MAP_FAILED);
    auto* pf = static_cast<pollfd*>(page);
    *pf = pollfd{p[0], POLLIN, 0};
    auto w = cogent::spawn([&] {
      cogent::sleep(30ms);
      ::munmap(page, static_cast<std::size_t>(page_size));
      (void)::write(p[1], "x", 1);
    });
    CHECK(bounded([&] { return ::poll(pf, 1, 2000); }, 3s) == std::pair<long, int>{-1, EFAULT});
    w.join();
    ::close(p[0]);
    ::close(p[1]);
  }
}

// writev through a small socket buffer and a pipe with exactly 8 and 9
// iovecs (the last inline count, the first heap one) and zero-length pieces
// among them, first, last and around the partial-write boundaries.
COGENT_TEST_CASE("writev with 8 and 9 iovecs and zero-length pieces writes everything",
                 doctest::timeout(30)) {
  cogent::monkey::patch_all();
  for (bool sock : {true, false}) {
    for (std::size_t count : {std::size_t{8}, std::size_t{9}}) {
      CAPTURE(sock);
      CAPTURE(count);
      int s[2];
      if (sock) {
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
        int small = 4096;
        REQUIRE(::setsockopt(s[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
      } else {
        REQUIRE(::pipe(s) == 0);
      }
      std::string data(600'000, '\0');
      for (std::size_t i = 0; i < data.size(); ++i) {
        data[i] = static_cast<char>(i * 13 + i / 1000);
      }
      // Zero-length first, last, and every third piece; the one before last takes the rest.
      std::vector<iovec> iov;
      std::size_t off = 0;
      for (std::size_t i = 0; i < count; ++i) {
        std::size_t len = i + 1 == count   ? 0
                          : i + 2 == count ? data.size() - off
                          : i % 3 == 0     ? 0
                                           : 70'000 + i;
        iov.push_back({data.data() + off, len});
        off += len;
      }
      REQUIRE(iov.size() == count);
      std::size_t sum = 0;
      for (auto& v : iov) {
        sum += v.iov_len;
      }
      REQUIRE(sum == data.size());
      auto reader = cogent::spawn([&] {
        std::string got;
        char buf[1000];
        while (got.size() < data.size()) {
          ssize_t n = ::read(s[0], buf, sizeof buf);
          if (n <= 0) {
            break;
          }
          got.append(buf, static_cast<std::size_t>(n));
        }
        return got;
      });
      ssize_t n = ::writev(s[1], iov.data(), static_cast<int>(iov.size()));
      CHECK(n == static_cast<ssize_t>(data.size()));
      ::close(s[1]);
      std::string got = reader.get();
      CHECK(got.size() == data.size());
      CHECK(got == data);
      ::close(s[0]);
    }
  }
}
