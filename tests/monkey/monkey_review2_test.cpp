// tests/monkey/monkey_review2_test.cpp — second adversarial review of monkey/hooks.cpp and
// monkey/monkey.cpp: connect/recv/accept error mapping, MSG_* flags, poll/select/sleep edge cases.
// Each case states what libc does for the same inputs (checked, where it matters, against the
// same call on a plain std::thread, which has no hub: exactly libc); a failure is a deviation.
// Nine failed before the fix that came with this file: a kernel ETIMEDOUT (connect, recv) was
// taken for SO_*TIMEO expiry; a blocking connect on one in progress gave EALREADY at once;
// recv/read/accept queued their op until the hub's next turn, so another fiber's dup2()/close()
// of the number redirected or failed them; MSG_PEEK|MSG_WAITALL peeked the same bytes twice; a
// huge SO_RCVTIMEO overflowed into "expire at once" (blocking the thread in libc); select() did
// not write the time left when an fd was ready at once. The last case failed before a later fix:
// a sendto() to a full AF_UNIX datagram receiver spun (POLLOUT ready, EAGAIN) and ignored
// SO_SNDTIMEO. The review3 cases (a review of those fixes) failed before theirs: MSG_PEEK|MSG_WAITALL
// on UDP/seqpacket waited forever, recvfrom/recvmsg with it still peeked twice, and select() wrote
// back the saturated deadline for a huge timeout. review4 (a review of those) failed before its
// fix: an AF_UNIX stream peek waited for the full length, and the probe swallowed a socket error.
// Cases that passed when written and are kept because no other test covers them: MSG_WAITALL
// with SO_RCVTIMEO (partial count), recvmsg's MSG_TRUNC in msg_flags, accept4's flags on the
// accepted fd, poll(nfds 0)/select(no sets) as cooperative sleeps, negative poll fds,
// nanosleep/clock_nanosleep EINVAL and TIMER_ABSTIME on three clocks, sleeps never ending early.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <utility>

#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "monkey/monkey.hpp"
#include "tests/monkey/fibers.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

using result = cogent::test::call_result;
using cogent::test::bounded;
using cogent::test::here_result;

using cogent::test::since;

sockaddr_in loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  return a;
}

// listener() is a blocking loopback listener with the given backlog; *port gets its port.
int listener(int* port, int backlog, int rcvbuf = 0) {
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (rcvbuf > 0) {
    ::setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  }
  sockaddr_in a = loopback(0);
  REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(s, backlog) == 0);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return s;
}

int connect_to(int fd, int port) {
  sockaddr_in a = loopback(port);
  return ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
}

}  // namespace

// TCP_USER_TIMEOUT bounds a blocking connect whose SYNs go unanswered (here: the listener's
// accept queue is full, so the kernel drops them): libc's connect() then fails with ETIMEDOUT.
// The hook turns every -ETIMEDOUT it gets from await_op() into "SO_SNDTIMEO expired", i.e.
// EINPROGRESS, even when the kernel itself produced ETIMEDOUT and no SO_SNDTIMEO is set.
COGENT_TEST_CASE("review2: a connect the kernel times out fails with ETIMEDOUT, as libc's",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int port = 0;
  int l = listener(&port, 0);
  int c1 = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(connect_to(c1, port) == 0);  // fills the accept queue (backlog 0 holds one)
  cogent::sleep(20ms);
  int ut = 200;
  int c2 = ::socket(AF_INET, SOCK_STREAM, 0);
  int c3 = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(::setsockopt(c2, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof ut) == 0);
  REQUIRE(::setsockopt(c3, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof ut) == 0);
  result ref{-2, 0};
  std::thread t([&] { ref = here_result([&] { return connect_to(c3, port); }); });  // libc
  auto t0 = steady::now();
  result got = bounded([&] { return connect_to(c2, port); }, 5000ms);
  double took = since(t0);
  t.join();
  CHECK(ref == result{-1, ETIMEDOUT});
  CHECK_MESSAGE(got == ref, "hooked connect: ", got.first, "/", got.second, " (", std::string(strerror(got.second)),
                ") after ", took, " s");
  for (int fd : {c1, c2, c3, l}) {
    ::close(fd);
  }
}

// A blocking recv() on a TCP connection the kernel aborts with TCP_USER_TIMEOUT (the peer's
// window stays zero, its zero-window probes time out) fails with ETIMEDOUT in libc. finish_in()
// maps every -ETIMEDOUT to SO_RCVTIMEO's EAGAIN, so the hook reports EAGAIN — which callers
// take for "no data yet, try again" on a dead connection.
COGENT_TEST_CASE("review2: a recv on a connection the kernel timed out fails with ETIMEDOUT, as libc's",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int port = 0;
  int l = listener(&port, 8, 2048);
  auto make_dead = [&](int* cli, int* srv) {
    int c = ::socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    ::setsockopt(c, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    int ut = 300;
    REQUIRE(::setsockopt(c, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof ut) == 0);
    REQUIRE(connect_to(c, port) == 0);
    *srv = ::accept(l, nullptr, nullptr);
    REQUIRE(*srv >= 0);
    std::string junk(1 << 16, 'j');
    // Fill the server's (never read) receive buffer and our send buffer.
    while (::send(c, junk.data(), junk.size(), MSG_DONTWAIT) > 0) {
    }
    *cli = c;
  };
  int c2, s2, c3, s3;
  make_dead(&c2, &s2);
  make_dead(&c3, &s3);
  result ref{-2, 0};
  std::thread t([&] {
    char b[16];
    ref = here_result([&] { return ::recv(c3, b, sizeof b, 0); });  // libc
  });
  char buf[16];
  auto t0 = steady::now();
  result got = bounded([&] { return ::recv(c2, buf, sizeof buf, 0); }, 5000ms);
  double took = since(t0);
  t.join();
  CHECK(ref == result{-1, ETIMEDOUT});
  CHECK_MESSAGE(got == ref, "hooked recv: ", got.first, "/", got.second, " (", std::string(strerror(got.second)),
                ") after ", took, " s");
  for (int fd : {c2, s2, c3, s3, l}) {
    ::close(fd);
  }
}

// A non-blocking connect left in progress, the socket made blocking again, then connect()
// once more: libc waits for the handshake to finish (inet_wait_for_connect) and returns 0.
// io_uring's connect issues it non-blocking first, gets EALREADY and returns that at once.
COGENT_TEST_CASE("review2: a blocking connect on a connect in progress waits for it, as libc's",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int port = 0;
  int l = listener(&port, 1);
  int f1 = ::socket(AF_INET, SOCK_STREAM, 0);
  int f2 = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(connect_to(f1, port) == 0);  // backlog 1 holds two: the queue is full
  REQUIRE(connect_to(f2, port) == 0);
  cogent::sleep(20ms);
  int c2 = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int c3 = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  CHECK(here_result([&] { return connect_to(c2, port); }) == result{-1, EINPROGRESS});  // SYN dropped
  CHECK(here_result([&] { return connect_to(c3, port); }) == result{-1, EINPROGRESS});
  REQUIRE(::fcntl(c2, F_SETFL, 0) == 0);
  REQUIRE(::fcntl(c3, F_SETFL, 0) == 0);
  // Make room: the SYNs retransmitted after ~1 s get in.
  int a1 = ::accept(l, nullptr, nullptr);
  int a2 = ::accept(l, nullptr, nullptr);
  REQUIRE(a1 >= 0);
  REQUIRE(a2 >= 0);
  result ref{-2, 0};
  std::thread t([&] { ref = here_result([&] { return connect_to(c3, port); }); });  // libc
  result got = bounded([&] { return connect_to(c2, port); }, 5000ms);
  t.join();
  CHECK(ref == result{0, 0});
  CHECK_MESSAGE(got == ref, "hooked connect: ", got.first, "/", got.second, " (", std::string(strerror(got.second)), ")");
  for (int fd : {f1, f2, c2, c3, a1, a2, l}) {
    ::close(fd);
  }
}

// recv(MSG_WAITALL) with SO_RCVTIMEO: when the timeout expires after part of the data came,
// libc returns that partial count.
COGENT_TEST_CASE("review2: recv MSG_WAITALL whose SO_RCVTIMEO expires returns the partial count",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  for (int type : {SOCK_STREAM, SOCK_SEQPACKET}) {
    CAPTURE(type);
    int s[2];
    REQUIRE(::socketpair(AF_UNIX, type, 0, s) == 0);
    timeval tv{0, 100'000};
    REQUIRE(::setsockopt(s[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    REQUIRE(::send(s[1], "abc", 3, 0) == 3);
    char buf[16];
    result ref{-2, 0};
    std::thread([&] { ref = here_result([&] { return ::recv(s[0], buf, 10, MSG_WAITALL | MSG_PEEK); }); })
        .join();
    result got = bounded([&] { return ::recv(s[0], buf, 10, MSG_WAITALL); }, 2000ms);
    CHECK(got == result{3, 0});
    ::close(s[0]);
    ::close(s[1]);
  }
}

// recvmsg on UDP with a short buffer: libc returns the bytes copied and sets MSG_TRUNC in
// msg_flags.
COGENT_TEST_CASE("review2: recvmsg reports MSG_TRUNC in msg_flags for a truncated datagram",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int u = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a = loopback(0);
  REQUIRE(::bind(u, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  ::getsockname(u, reinterpret_cast<sockaddr*>(&a), &len);
  auto w = cogent::spawn([&] {
    cogent::sleep(30ms);
    ::sendto(u, "0123456789", 10, 0, reinterpret_cast<sockaddr*>(&a), sizeof a);
  });
  char b[4];
  iovec v{b, sizeof b};
  sockaddr_in from{};
  msghdr m{};
  m.msg_name = &from;
  m.msg_namelen = sizeof from;
  m.msg_iov = &v;
  m.msg_iovlen = 1;
  result got = bounded([&] { return ::recvmsg(u, &m, 0); }, 2000ms);
  w.join();
  CHECK(got == result{4, 0});
  CHECK((m.msg_flags & MSG_TRUNC) != 0);
  CHECK(m.msg_namelen == sizeof from);
  ::close(u);
}

// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC in a fiber: the new fd carries both flags and,
// being non-blocking, its recv fails with EAGAIN at once.
COGENT_TEST_CASE("review2: accept4 flags reach the accepted socket", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int port = 0;
  int l = listener(&port, 8);
  int c = ::socket(AF_INET, SOCK_STREAM, 0);
  auto w = cogent::spawn([&] {
    cogent::sleep(20ms);
    connect_to(c, port);
  });
  int a = ::accept4(l, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  w.join();
  REQUIRE(a >= 0);
  CHECK((::fcntl(a, F_GETFL) & O_NONBLOCK) != 0);
  CHECK((::fcntl(a, F_GETFD) & FD_CLOEXEC) != 0);
  char ch;
  CHECK(bounded([&] { return ::recv(a, &ch, 1, 0); }, 1000ms) == result{-1, EAGAIN});
  CHECK(here_result([&] { return ::accept4(l, nullptr, nullptr, 0x4000000); }) == result{-1, EINVAL});
  ::close(a);
  ::close(c);
  ::close(l);
}

// poll/select/sleep edge cases.
COGENT_TEST_CASE("review2: poll with nfds 0 and select with no sets sleep cooperatively",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  cogent::test::ticker tk;
  auto t0 = steady::now();
  long before = tk.ticks;
  CHECK(::poll(nullptr, 0, 100) == 0);
  CHECK(since(t0) >= 0.095);
  CHECK(tk.ticks - before >= 20);
  pollfd pf[2] = {{-1, POLLIN, 7}, {-5, POLLOUT, 7}};
  t0 = steady::now();
  CHECK(::poll(pf, 2, 50) == 0);
  CHECK(since(t0) >= 0.045);
  CHECK(pf[0].revents == 0);
  CHECK(pf[1].revents == 0);
  timeval tv{0, 50'000};
  t0 = steady::now();
  before = tk.ticks;
  CHECK(::select(0, nullptr, nullptr, nullptr, &tv) == 0);
  CHECK(since(t0) >= 0.045);
  CHECK(tk.ticks - before >= 10);
  CHECK(tv.tv_sec == 0);
  CHECK(tv.tv_usec == 0);
  // A closed fd: POLLNVAL at once.
  int p[2];
  REQUIRE(::pipe(p) == 0);
  ::close(p[0]);
  ::close(p[1]);
  pollfd bad{p[0], POLLIN, 0};
  CHECK(::poll(&bad, 1, 1000) == 1);
  CHECK(bad.revents == POLLNVAL);
  fd_set rd;
  FD_ZERO(&rd);
  FD_SET(p[0], &rd);
  timeval tv2{1, 0};
  CHECK(here_result([&] { return ::select(p[0] + 1, &rd, nullptr, nullptr, &tv2); }) == result{-1, EBADF});
}

COGENT_TEST_CASE("review2: nanosleep and clock_nanosleep reject bad tv_nsec and honour TIMER_ABSTIME",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  timespec bad{0, 1'000'000'000};
  CHECK(here_result([&] { return ::nanosleep(&bad, nullptr); }) == result{-1, EINVAL});
  timespec neg{0, -1};
  CHECK(here_result([&] { return ::nanosleep(&neg, nullptr); }) == result{-1, EINVAL});
  CHECK(::clock_nanosleep(CLOCK_MONOTONIC, 0, &bad, nullptr) == EINVAL);
  CHECK(::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &bad, nullptr) == EINVAL);
  CHECK(::clock_nanosleep(CLOCK_THREAD_CPUTIME_ID, 0, &bad, nullptr) == EINVAL);
  cogent::test::ticker tk;
  for (clockid_t clk : {CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_BOOTTIME}) {
    CAPTURE(clk);
    timespec now{};
    clock_gettime(clk, &now);
    timespec until = now;
    until.tv_nsec += 60'000'000;
    if (until.tv_nsec >= 1'000'000'000) {
      until.tv_nsec -= 1'000'000'000;
      ++until.tv_sec;
    }
    timespec rem{99, 99};
    long before = tk.ticks;
    CHECK(::clock_nanosleep(clk, TIMER_ABSTIME, &until, &rem) == 0);
    timespec after{};
    clock_gettime(clk, &after);
    CHECK((after.tv_sec > until.tv_sec || (after.tv_sec == until.tv_sec && after.tv_nsec >= until.tv_nsec)));
    CHECK(tk.ticks - before >= 10);
    CHECK(rem.tv_sec == 99);
    // In the past: returns at once.
    CHECK(::clock_nanosleep(clk, TIMER_ABSTIME, &now, nullptr) == 0);
  }
}

// A fiber's recv() on a socket holding data: libc returns the data at once, before any other
// fiber runs. The hook queues an io_uring recv, which the kernel resolves by fd NUMBER at the
// hub's next submission — after the other ready fibers ran. One that dup2()s another socket
// onto that number makes the recv take the other socket's data (the pipe variant of this was
// fixed with RWF_NOWAIT; sockets, accept and connect still queue).
COGENT_TEST_CASE("review2: a recv on a socket with data completes before another fiber dup2()s the number",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int a[2], b[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, a) == 0);
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, b) == 0);
  REQUIRE(::send(a[1], "mine", 4, 0) == 4);
  REQUIRE(::send(b[1], "THEIRS", 6, 0) == 6);
  int r = a[0];
  char buf[16] = {};
  long rd = -2;
  auto f1 = cogent::spawn([&] { rd = ::recv(r, buf, sizeof buf, 0); });
  auto f2 = cogent::spawn([&] { REQUIRE(::dup2(b[0], r) == r); });
  cogent::joinall({f1, f2});
  CHECK(rd == 4);
  CHECK(std::string(buf, rd > 0 ? static_cast<std::size_t>(rd) : 0) == "mine");
  for (int fd : {a[0], a[1], b[0], b[1]}) {
    ::close(fd);
  }
}

// Same ordering with close(): libc's read() of a socket holding data has returned it before
// the other fiber closes the fd; the queued op instead finds the number closed (EBADF).
COGENT_TEST_CASE("review2: a read on a socket with data completes before another fiber closes the fd",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int a[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, a) == 0);
  REQUIRE(::send(a[1], "mine", 4, 0) == 4);
  int r = a[0];
  char buf[16] = {};
  result rd{-2, 0};
  auto f1 = cogent::spawn([&] { rd = here_result([&] { return ::read(r, buf, sizeof buf); }); });
  auto f2 = cogent::spawn([&] { ::close(r); });
  cogent::joinall({f1, f2});
  CHECK_MESSAGE((rd == result{4, 0}), "read: ", rd.first, "/", rd.second);
  ::close(a[1]);
}

// accept() with a connection already queued: libc returns it at once. The queued io_uring
// accept runs after another fiber closed the listener: EBADF, and the connection is left
// behind.
COGENT_TEST_CASE("review2: an accept with a connection queued completes before another fiber closes the listener",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int port = 0;
  int l = listener(&port, 8);
  int c = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(connect_to(c, port) == 0);
  cogent::sleep(10ms);
  result got{-2, 0};
  auto f1 = cogent::spawn([&] { got = here_result([&] { return ::accept(l, nullptr, nullptr); }); });
  auto f2 = cogent::spawn([&] { ::close(l); });
  cogent::joinall({f1, f2});
  CHECK_MESSAGE(got.first >= 0, "accept: ", got.first, "/", got.second);
  if (got.first >= 0) {
    ::close(static_cast<int>(got.first));
  }
  ::close(c);
}

// recv(MSG_PEEK | MSG_WAITALL) on TCP: libc waits until the whole length is queued and copies
// the first n bytes, consuming nothing.
COGENT_TEST_CASE("review2: recv MSG_PEEK|MSG_WAITALL on TCP peeks the first n bytes once",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int port = 0;
  int l = listener(&port, 8);
  auto pair = [&](int* cli, int* srv) {
    *cli = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(connect_to(*cli, port) == 0);
    *srv = ::accept(l, nullptr, nullptr);
    REQUIRE(*srv >= 0);
    REQUIRE(::send(*cli, "abc", 3, 0) == 3);
  };
  int c1, s1, c2, s2;
  pair(&c1, &s1);
  pair(&c2, &s2);
  std::thread later([&] {
    std::this_thread::sleep_for(100ms);
    ::send(c1, "def", 3, 0);
    ::send(c2, "def", 3, 0);
  });
  char ref[8] = {};
  result rref{-2, 0};
  std::thread t([&] { rref = here_result([&] { return ::recv(s2, ref, 6, MSG_PEEK | MSG_WAITALL); }); });
  char buf[8] = {};
  result got = bounded([&] { return ::recv(s1, buf, 6, MSG_PEEK | MSG_WAITALL); }, 2000ms);
  t.join();
  later.join();
  CHECK(rref == result{6, 0});
  CHECK(std::string(ref, 6) == "abcdef");
  CHECK(got == rref);
  CHECK(std::string(buf, 6) == std::string(ref, 6));
  for (int fd : {c1, s1, c2, s2, l}) {
    ::close(fd);
  }
}

// nanosleep/usleep/poll never return before the time asked for (libc: "at least").
COGENT_TEST_CASE("review2: sleeps and poll timeouts never end early", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  double worst_ns = 1, worst_us = 1, worst_poll = 1;
  for (int i = 0; i < 50; ++i) {
    auto t0 = steady::now();
    timespec ts{0, 1'500'000};
    ::nanosleep(&ts, nullptr);
    worst_ns = std::min(worst_ns, since(t0) / 0.0015);
    t0 = steady::now();
    ::usleep(700);
    worst_us = std::min(worst_us, since(t0) / 0.0007);
    t0 = steady::now();
    ::poll(nullptr, 0, 2);
    worst_poll = std::min(worst_poll, since(t0) / 0.002);
  }
  CHECK(worst_ns >= 1.0);
  CHECK(worst_us >= 1.0);
  CHECK(worst_poll >= 1.0);
}

// SO_RCVTIMEO with an enormous tv_sec (LONG_MAX: "forever") is no timeout for the kernel
// (MAX_SCHEDULE_TIMEOUT): a blocking recv waits for data. The hooked setsockopt() stores
// timeval_ns(tv) = tv_sec * 1e9, a signed overflow (UB, UBSan reports it) that wraps negative,
// i.e. "expire at once": no_wait() then sends recv straight to libc, which blocks the whole
// thread (the hub included) for good. A plain thread sends the data after 1 s so the test ends.
COGENT_TEST_CASE("review2: a recv under a huge SO_RCVTIMEO parks only its fiber", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  timeval tv{LONG_MAX, 0};
  REQUIRE(::setsockopt(s[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
  std::atomic<bool> sent{false};
  auto w = cogent::spawn([&] {
    cogent::sleep(50ms);
    if (!sent.exchange(true)) {
      (void)::send(s[1], "f", 1, 0);
    }
  });
  std::thread fallback([&] {
    std::this_thread::sleep_for(1000ms);
    if (!sent.exchange(true)) {
      (void)::send(s[1], "t", 1, 0);
    }
  });
  char c = 0;
  result got = bounded([&] { return ::recv(s[0], &c, 1, 0); }, 1500ms);
  fallback.join();
  w.join();
  CHECK_MESSAGE((got == result{1, 0}), "recv: ", got.first, "/", got.second);
  CHECK_MESSAGE(c == 'f', "the recv blocked the thread until the fallback thread sent");
  ::close(s[0]);
  ::close(s[1]);
}

// Linux's select() writes the time left back into *tv whenever it returns, also when an fd
// was ready at once. The hook returns from its zero-timeout probe leaving *tv untouched.
COGENT_TEST_CASE("review2: select writes the time left into tv when an fd is ready at once",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int p[2];
  REQUIRE(::pipe(p) == 0);
  REQUIRE(::write(p[1], "x", 1) == 1);
  auto run = [&] {
    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(p[0], &rd);
    timeval tv{5, 0};
    int n = ::select(p[0] + 1, &rd, nullptr, nullptr, &tv);
    return std::pair<int, bool>{n, tv.tv_sec < 5};
  };
  std::pair<int, bool> ref;
  std::thread([&] { ref = run(); }).join();
  auto got = run();
  CHECK(ref == std::pair<int, bool>{1, true});
  CHECK(got == ref);
  ::close(p[0]);
  ::close(p[1]);
}

// An unconnected AF_UNIX datagram socket polls writable even while the receiver's queue is full:
// a sendto() that gets EAGAIN must not spin between POLLOUT (ready at once) and EAGAIN, and must
// honour SO_SNDTIMEO (libc: -1/EAGAIN once it passes).
COGENT_TEST_CASE("review2: sendto a full AF_UNIX datagram receiver waits without spinning, SO_SNDTIMEO honoured",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  char path[] = "/tmp/cogent_dgram_XXXXXX";
  int tmp = ::mkstemp(path);
  REQUIRE(tmp >= 0);
  ::close(tmp);
  ::unlink(path);
  int rx = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un to{};
  to.sun_family = AF_UNIX;
  std::strncpy(to.sun_path, path, sizeof to.sun_path - 1);
  REQUIRE(::bind(rx, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0);
  int tx = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  timeval tv{0, 200'000};
  REQUIRE(::setsockopt(tx, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
  char msg[64] = {};
  // Fill the receiver's queue (max_dgram_qlen) without blocking.
  int queued = 0;
  while (::sendto(tx, msg, sizeof msg, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&to), sizeof to) > 0 &&
         queued < 100000) {
    ++queued;
  }
  REQUIRE(errno == EAGAIN);
  timespec c0{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
  auto t0 = steady::now();
  result got = bounded(
      [&] { return ::sendto(tx, msg, sizeof msg, 0, reinterpret_cast<sockaddr*>(&to), sizeof to); }, 2000ms);
  double wall = since(t0);
  timespec c1{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
  double cpu = static_cast<double>(c1.tv_sec - c0.tv_sec) + static_cast<double>(c1.tv_nsec - c0.tv_nsec) / 1e9;
  CHECK_MESSAGE((got == result{-1, EAGAIN}), "sendto: ", got.first, "/", got.second);
  CHECK(wall >= 0.19);
  CHECK(wall < 1.5);
  CHECK_MESSAGE(cpu < wall / 2, "the wait spun: ", cpu, " s of CPU in ", wall, " s");
  ::close(tx);
  ::close(rx);
  ::unlink(path);
}

// recv(MSG_PEEK|MSG_WAITALL) on sockets where the kernel ignores MSG_WAITALL (UDP, seqpacket):
// libc returns what one peek gets at once; the stream-only wait for n bytes never ended there.
COGENT_TEST_CASE("review3: MSG_PEEK|MSG_WAITALL on UDP and seqpacket returns the datagram at once, as libc's",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int u = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in a = loopback(0);
  REQUIRE(::bind(u, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  ::getsockname(u, reinterpret_cast<sockaddr*>(&a), &len);
  REQUIRE(::sendto(u, "hello", 5, 0, reinterpret_cast<sockaddr*>(&a), sizeof a) == 5);
  char buf[64];
  result got = bounded([&] { return ::recv(u, buf, sizeof buf, MSG_PEEK | MSG_WAITALL); }, 1000ms);
  CHECK_MESSAGE((got == result{5, 0}), "udp: ", got.first, "/", got.second);
  ::close(u);
  int sp[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) == 0);
  REQUIRE(::send(sp[1], "abc", 3, 0) == 3);
  got = bounded([&] { return ::recv(sp[0], buf, sizeof buf, MSG_PEEK | MSG_WAITALL); }, 1000ms);
  CHECK_MESSAGE((got == result{3, 0}), "seqpacket: ", got.first, "/", got.second);
  ::close(sp[0]);
  ::close(sp[1]);
}

// tcp_pair() connects a loopback TCP client (s[0]) to a server end (s[1]).
void tcp_pair(int s[2]) {
  int port = 0;
  int l = listener(&port, 4);
  s[0] = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(connect_to(s[0], port) == 0);
  s[1] = ::accept(l, nullptr, nullptr);
  REQUIRE(s[1] >= 0);
  ::close(l);
}

// recvfrom/recvmsg with MSG_PEEK|MSG_WAITALL on TCP, the data coming in two parts: libc waits and
// peeks "abcdef"; through io_uring the same bytes were peeked twice ("abcabc").
COGENT_TEST_CASE("review3: recvfrom and recvmsg with MSG_PEEK|MSG_WAITALL peek the first n bytes once",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  for (int which = 0; which < 2; ++which) {
    int s[2];
    tcp_pair(s);
    REQUIRE(::send(s[1], "abc", 3, 0) == 3);
    auto w = cogent::spawn([&] {
      cogent::sleep(20ms);
      ::send(s[1], "def", 3, 0);
    });
    char b[7] = {};
    sockaddr_in from{};
    socklen_t fl = sizeof from;
    result got = bounded(
        [&]() -> long {
          if (which == 0) {
            return ::recvfrom(s[0], b, 6, MSG_PEEK | MSG_WAITALL, reinterpret_cast<sockaddr*>(&from), &fl);
          }
          iovec v{b, 6};
          msghdr m{};
          m.msg_iov = &v;
          m.msg_iovlen = 1;
          return ::recvmsg(s[0], &m, MSG_PEEK | MSG_WAITALL);
        },
        1500ms);
    w.join();
    CHECK_MESSAGE((got == result{6, 0}), (which == 0 ? "recvfrom: " : "recvmsg: "), got.first, "/", got.second);
    CHECK(std::string(b) == "abcdef");
    ::close(s[0]);
    ::close(s[1]);
  }
}

// select() with a timeout too long for a deadline (over a century) and an fd ready at once writes
// back what was asked minus what passed, as Linux does — not the saturated deadline's ~9.2e9 s.
COGENT_TEST_CASE("review3: select with a huge timeout writes back at most what it was given", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int p[2];
  REQUIRE(::pipe(p) == 0);
  REQUIRE(::write(p[1], "x", 1) == 1);
  fd_set rd;
  FD_ZERO(&rd);
  FD_SET(p[0], &rd);
  timeval tv{4'000'000'000, 0};
  REQUIRE(::select(p[0] + 1, &rd, nullptr, nullptr, &tv) == 1);
  CHECK(tv.tv_sec <= 4'000'000'000);
  CHECK(tv.tv_sec >= 3'999'999'990);
  ::close(p[0]);
  ::close(p[1]);
}

// Two more libc behaviours of MSG_PEEK|MSG_WAITALL: on an AF_UNIX stream Linux does not wait for the
// full length (3 of 10 bytes: 3 at once), and a socket error is reported by the receive that finds
// it — the kernel clears it then (a reset TCP connection: ECONNRESET, not 0).
COGENT_TEST_CASE("review4: MSG_PEEK|MSG_WAITALL on an AF_UNIX stream returns what is there; a reset gives ECONNRESET",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s) == 0);
  REQUIRE(::send(s[1], "abc", 3, 0) == 3);
  char b[16];
  result got = bounded([&] { return ::recv(s[0], b, 10, MSG_PEEK | MSG_WAITALL); }, 1000ms);
  CHECK_MESSAGE((got == result{3, 0}), "AF_UNIX stream: ", got.first, "/", got.second);
  ::close(s[0]);
  ::close(s[1]);
  int t[2];
  tcp_pair(t);
  linger lg{1, 0};
  ::setsockopt(t[1], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  ::close(t[1]);  // RST
  cogent::sleep(20ms);
  got = bounded([&] { return ::recv(t[0], b, 10, MSG_PEEK | MSG_WAITALL); }, 1000ms);
  CHECK_MESSAGE((got == result{-1, ECONNRESET}), "TCP reset: ", got.first, "/", got.second);
  ::close(t[0]);
}
