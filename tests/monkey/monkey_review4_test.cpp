// tests/monkey/monkey_review4_test.cpp — review of today's monkey fixes (c87eab4): errno kept on
// success, select()'s tv_usec normalisation, sendto through real sendto.
//
// All four cases failed when written. Each case states what libc does for the same inputs (checked where possible against the same
// call on a plain std::thread, which has no hub: exactly libc).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>
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
using cogent::test::libc_result;

// errno_across() runs call() (a hooked call that parks) with errno set to 4242 on entry, while
// another fiber on this thread fails a libc call (errno EBADF) and then makes call() ready with
// ready(). libc's call leaves errno alone when it succeeds: the caller must find 4242 again.
// Returns {call's result, errno after it}.
template <class Ready, class Call>
std::pair<long, int> errno_across(Ready ready, Call call) {
  auto other = cogent::spawn([&] {
    (void)::close(-1);  // another fiber's failed call: EBADF in this thread's errno
    cogent::sleep(5ms);
    (void)::close(-1);
    ready();
    (void)::close(-1);
  });
  errno = 4242;
  long r = static_cast<long>(call());
  int e = errno;
  other.join();
  return {r, e};
}

}  // namespace

// read() on a socket keeps the caller's errno across its wait (kept_errno); recv(), recvfrom()
// and recvmsg() on the same socket do not: the errno another fiber left while this one was parked
// comes back to the caller although its call succeeded.
COGENT_TEST_CASE("review4: recv, recvfrom and recvmsg that waited and succeeded leave errno as it was (as read does)",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  char b[8];
  auto feed = [&] { (void)::send(s[1], "abc", 3, 0); };
  auto rd = errno_across(feed, [&] { return ::read(s[0], b, sizeof b); });
  CHECK(rd.first == 3);
  CHECK_MESSAGE(rd.second == 4242, "read: errno ", rd.second);  // the reference: kept
  auto rv = errno_across(feed, [&] { return ::recv(s[0], b, sizeof b, 0); });
  CHECK(rv.first == 3);
  CHECK_MESSAGE(rv.second == 4242, "recv: errno ", rv.second, " (", std::string(std::strerror(rv.second)), ")");
  sockaddr_storage from{};
  socklen_t flen = sizeof from;
  auto rf = errno_across(feed, [&] {
    flen = sizeof from;
    return ::recvfrom(s[0], b, sizeof b, 0, reinterpret_cast<sockaddr*>(&from), &flen);
  });
  CHECK(rf.first == 3);
  CHECK_MESSAGE(rf.second == 4242, "recvfrom: errno ", rf.second);
  auto rm = errno_across(feed, [&] {
    iovec v{b, sizeof b};
    msghdr m{};
    m.msg_iov = &v;
    m.msg_iovlen = 1;
    return ::recvmsg(s[0], &m, 0);
  });
  CHECK(rm.first == 3);
  CHECK_MESSAGE(rm.second == 4242, "recvmsg: errno ", rm.second);
  ::close(s[0]);
  ::close(s[1]);
}

COGENT_TEST_CASE("review4: accept, poll, select and usleep that waited and succeeded leave errno as it was",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int l = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(l, 8) == 0);
  socklen_t alen = sizeof a;
  ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &alen);
  int c = -1;
  auto ac = errno_across(
      [&] {
        c = ::socket(AF_INET, SOCK_STREAM, 0);
        (void)::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a);
      },
      [&] { return ::accept(l, nullptr, nullptr); });
  CHECK(ac.first >= 0);
  CHECK_MESSAGE(ac.second == 4242, "accept: errno ", ac.second);
  int p[2];
  REQUIRE(::pipe(p) == 0);
  auto feed = [&] { (void)::write(p[1], "x", 1); };
  char b[4];
  auto pl = errno_across(feed, [&] {
    pollfd f{p[0], POLLIN, 0};
    return ::poll(&f, 1, 2000);
  });
  CHECK(pl.first == 1);
  CHECK_MESSAGE(pl.second == 4242, "poll: errno ", pl.second);
  (void)::read(p[0], b, sizeof b);
  auto sl = errno_across(feed, [&] {
    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(p[0], &rd);
    timeval tv{2, 0};
    return ::select(p[0] + 1, &rd, nullptr, nullptr, &tv);
  });
  CHECK(sl.first == 1);
  CHECK_MESSAGE(sl.second == 4242, "select: errno ", sl.second);
  (void)::read(p[0], b, sizeof b);
  auto us = errno_across([] {}, [] { return ::usleep(20'000); });
  CHECK(us.first == 0);
  CHECK_MESSAGE(us.second == 4242, "usleep: errno ", us.second);
  for (int fd : {l, ac.first >= 0 ? static_cast<int>(ac.first) : -1, c, p[0], p[1]}) {
    if (fd >= 0) {
      ::close(fd);
    }
  }
}

// glibc's select() reads tv_usec as a 32-bit int (sysdeps/unix/sysv/linux/select.c: int32_t us)
// before normalising: tv_usec = 2^31 is negative there, EINVAL at once. The hook tests the full
// long, takes it as 2147 s and parks (here: until the bound).
COGENT_TEST_CASE("review4: select with tv_usec = 2^31 fails with EINVAL at once, as glibc's", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int p[2];
  REQUIRE(::pipe(p) == 0);
  auto call = [&] {
    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(p[0], &rd);
    timeval tv{0, static_cast<suseconds_t>(0x80000000L)};
    return ::select(p[0] + 1, &rd, nullptr, nullptr, &tv);
  };
  result ref = libc_result(call);
  CHECK(ref == result{-1, EINVAL});
  auto t0 = steady::now();
  result got = bounded(call, 300ms);
  double took = std::chrono::duration<double>(steady::now() - t0).count();
  CHECK_MESSAGE(got == ref, "hooked select: ", got.first, "/", got.second, " after ", took, " s");
  ::close(p[0]);
  ::close(p[1]);
}

// A blocking sendto(MSG_FASTOPEN) on an unconnected TCP socket connects and then sends, as
// connect()+send() would: libc returns the byte count. The hook adds MSG_DONTWAIT to its first
// try, which turns it into a non-blocking fast-open connect: -1/EINPROGRESS comes back to the
// caller (the peer has no fast-open cookie to give, so data cannot ride on the SYN).
COGENT_TEST_CASE("review4: a blocking sendto with MSG_FASTOPEN connects and sends, as libc's", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  // A destination of its own in 127/8 (the kernel caches fast-open state per destination).
  std::mt19937 rng(static_cast<unsigned>(steady::now().time_since_epoch().count()));
  auto listen_on = [&](sockaddr_in& a) {
    int l = ::socket(AF_INET, SOCK_STREAM, 0);
    a = sockaddr_in{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(0x7f000000u | (1u + rng() % 0xfffffdu));
    REQUIRE(::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(l, 8) == 0);
    socklen_t len = sizeof a;
    ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len);
    return l;
  };
  sockaddr_in a1{}, a2{};
  int l1 = listen_on(a1);
  int l2 = listen_on(a2);
  int c1 = ::socket(AF_INET, SOCK_STREAM, 0);
  result ref = libc_result([&] { return ::sendto(c1, "hi", 2, MSG_FASTOPEN, reinterpret_cast<sockaddr*>(&a1), sizeof a1); });
  if (ref.first == -1 && (ref.second == EOPNOTSUPP || ref.second == EINVAL)) {
    MESSAGE("TCP fast open is off here (net.ipv4.tcp_fastopen): nothing to compare");
  } else {
    CHECK(ref == result{2, 0});
    int c2 = ::socket(AF_INET, SOCK_STREAM, 0);
    result got = bounded([&] { return ::sendto(c2, "hi", 2, MSG_FASTOPEN, reinterpret_cast<sockaddr*>(&a2), sizeof a2); },
                         1000ms);
    CHECK_MESSAGE(got == ref, "hooked sendto(MSG_FASTOPEN): ", got.first, "/", got.second, " (",
                  std::string(std::strerror(got.second)), ")");
    ::close(c2);
  }
  for (int fd : {c1, l1, l2}) {
    ::close(fd);
  }
}
