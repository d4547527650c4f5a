// tests/monkey/monkey_review3_test.cpp — third adversarial review of monkey/hooks.cpp and
// monkey/monkey.cpp: less-covered calls, flags and timeouts (SO_RCVTIMEO_NEW, select's tv_usec,
// sendto's address length, clock_nanosleep TIMER_ABSTIME far ahead, errno after a call that
// waited). Each case states what libc does for the same inputs (checked against the same call on a
// plain std::thread, which has no hub: exactly libc). Five failed when written. Two passed and are
// kept because no other test covers them: SIGPIPE/EPIPE for a pipe write parked for room, and a
// hooked sleep inside a hand-switched cogent::fiber.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/time_types.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
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
#include <string>
#include <thread>
#include <utility>

#include "fiber/fiber.hpp"
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
using cogent::test::ticker;

using cogent::test::since;

}  // namespace

// SO_RCVTIMEO_NEW (the y2038-safe option, struct __kernel_sock_timeval) sets the same kernel
// timeout as SO_RCVTIMEO: libc's recv() then fails with EAGAIN after 100 ms. The setsockopt hook
// only records SO_RCVTIMEO/SO_SNDTIMEO, so a socket the hooks already classified waits forever.
COGENT_TEST_CASE("review5: SO_RCVTIMEO_NEW bounds a cooperative recv as it bounds libc's",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  __kernel_sock_timeval tv{0, 100'000};
  REQUIRE(::setsockopt(s[0], SOL_SOCKET, SO_RCVTIMEO_NEW, &tv, sizeof tv) == 0);
  char b[4];
  result ref = libc_result([&] { return ::recv(s[0], b, sizeof b, 0); });
  CHECK(ref == result{-1, EAGAIN});
  auto t0 = steady::now();
  result got = bounded([&] { return ::recv(s[0], b, sizeof b, 0); }, 1000ms);
  double took = since(t0);
  CHECK_MESSAGE(got == ref, "hooked recv: ", got.first, "/", got.second, " after ", took, " s");
  ::close(s[0]);
  ::close(s[1]);
}

// glibc's select() normalizes tv_usec >= 1000000 (as the legacy select syscall did): {0, 1200000}
// is a valid 1.2 s timeout. The hook takes it for invalid and hands it to libc, which blocks the
// whole thread: no other fiber runs until the fd is ready or the 1.2 s pass.
COGENT_TEST_CASE("review5: select with tv_usec of a second or more cooperates", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int p[2];
  REQUIRE(::pipe(p) == 0);
  {
    // The kernel checks the timeout before looking at the fds: on a ready pipe libc answers at once.
    int q[2];
    REQUIRE(::pipe(q) == 0);
    REQUIRE(::write(q[1], "r", 1) == 1);
    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(q[0], &rd);
    timeval tv{0, 1'200'000};
    result ref = libc_result([&] { return ::select(q[0] + 1, &rd, nullptr, nullptr, &tv); });
    CHECK(ref == result{1, 0});  // libc: a valid timeout, not EINVAL
    ::close(q[0]);
    ::close(q[1]);
  }
  ticker tk;
  fd_set rd;
  FD_ZERO(&rd);
  FD_SET(p[0], &rd);
  timeval tv{0, 1'200'000};
  auto w = cogent::test::woken_later(tk, p[1], [&] {
    return here_result([&] { return ::select(p[0] + 1, &rd, nullptr, nullptr, &tv); });
  });
  CHECK(w.result == result{1, 0});
  CHECK(FD_ISSET(p[0], &rd));
  CHECK_MESSAGE(w.ticks >= 20, "ticks while select waited: ", w.ticks);
  ::close(p[0]);
  ::close(p[1]);
}

namespace {
std::atomic<int> g_sigpipes{0};
void on_sigpipe(int) {
  g_sigpipes.fetch_add(1);
}
}  // namespace

// A blocking write() to a full pipe whose reader then closes: libc's write raises SIGPIPE and
// fails with EPIPE.
COGENT_TEST_CASE("review5: a pipe write parked for room gets SIGPIPE and EPIPE when the reader closes",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  struct sigaction sa {}, old{};
  sa.sa_handler = on_sigpipe;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGPIPE, &sa, &old);
  int p[2];
  REQUIRE(::pipe(p) == 0);
  REQUIRE(::fcntl(p[1], F_SETFL, O_NONBLOCK) == 0);
  static char junk[65536];
  while (::write(p[1], junk, sizeof junk) > 0) {
  }
  REQUIRE(::fcntl(p[1], F_SETFL, 0) == 0);
  g_sigpipes = 0;
  auto closer = cogent::spawn([&] {
    cogent::sleep(50ms);
    ::close(p[0]);
  });
  result got = bounded([&] { return ::write(p[1], "x", 1); }, 1000ms);
  closer.join();
  CHECK(got == result{-1, EPIPE});
  CHECK(g_sigpipes.load() == 1);
  ::sigaction(SIGPIPE, &old, nullptr);
  ::close(p[1]);
}

// glibc's read()/send() leave errno alone when they succeed (monkey.hpp: "Results and errno are
// libc's"). The hooks first try the call without waiting (preadv2 RWF_NOWAIT on a pipe, send
// MSG_DONTWAIT on a socket); when that fails with EAGAIN and the call then succeeds after parking,
// the EAGAIN is left in errno.
COGENT_TEST_CASE("review5: a read or send that waited and then succeeded leaves errno as it was",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int p[2];
  REQUIRE(::pipe(p) == 0);
  auto w = cogent::spawn([&] {
    cogent::sleep(20ms);
    ::write(p[1], "abc", 3);
  });
  char b[4];
  errno = 4242;
  CHECK(::read(p[0], b, sizeof b) == 3);
  CHECK_MESSAGE(errno == 4242, "errno after a pipe read that waited: ", errno);
  w.join();
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  static char junk[1 << 16];
  while (::send(s[0], junk, sizeof junk, MSG_DONTWAIT) > 0) {
  }
  auto drain = cogent::spawn([&] {
    cogent::sleep(30ms);
    static char sink[1 << 20];
    ::recv(s[1], sink, sizeof sink, MSG_DONTWAIT);
  });
  errno = 4246;
  CHECK(::send(s[0], "x", 1, 0) == 1);
  CHECK_MESSAGE(errno == 4246, "errno after a send that waited for room: ", errno);
  drain.join();
  for (int fd : {p[0], p[1], s[0], s[1]}) {
    ::close(fd);
  }
}

// A raw cogent::fiber (greenlet style) switched to by hand on a hub thread: cogent::sleep() in
// it parks on the hub and comes back; a hooked usleep() there should do the same.
COGENT_TEST_CASE("review5: a hooked sleep in a hand-switched fiber returns to it", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int step = 0;
  int r = -2;
  cogent::fiber f([&] {
    step = 1;
    r = ::usleep(10'000);
    step = 2;
  });
  f.switch_to();
  CHECK(step == 2);
  CHECK(r == 0);
}

// sendto() with an address length of 0 or larger than sockaddr_storage fails with EINVAL in libc
// (move_addr_to_kernel; udp_sendmsg wants a whole sockaddr_in). The hook sends through sendmsg,
// whose header copy drops a zero-length name (the socket's connected peer gets the datagram) and
// clamps a long one to sockaddr_storage (the datagram goes out).
COGENT_TEST_CASE("review5: sendto with a zero or oversized address length fails with EINVAL, as libc's",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int r = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(r, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  ::getsockname(r, reinterpret_cast<sockaddr*>(&a), &len);
  int u = ::socket(AF_INET, SOCK_DGRAM, 0);
  REQUIRE(::connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  sockaddr_storage big[2]{};
  std::memcpy(big, &a, sizeof a);
  auto zero = [&] { return ::sendto(u, "x", 1, 0, reinterpret_cast<sockaddr*>(&a), 0); };
  auto huge = [&] { return ::sendto(u, "x", 1, 0, reinterpret_cast<sockaddr*>(big), sizeof big); };
  CHECK(libc_result(zero) == result{-1, EINVAL});
  CHECK(libc_result(huge) == result{-1, EINVAL});
  CHECK(here_result(zero) == result{-1, EINVAL});
  CHECK(here_result(huge) == result{-1, EINVAL});
  char b[4];
  CHECK_MESSAGE((here_result([&] { return ::recv(r, b, sizeof b, MSG_DONTWAIT); }) == result{-1, EAGAIN}),
                "a datagram went out");
  ::close(u);
  ::close(r);
}

// clock_nanosleep(TIMER_ABSTIME) to a time far in the future (a valid timespec) sleeps, as libc's.
// The hook computes (tv_sec - now) * 1e9 in 64 bits: it overflows (undefined behaviour) and the
// wrapped value can be <= 0, so the call returns 0 at once.
COGENT_TEST_CASE("review5: clock_nanosleep TIMER_ABSTIME far in the future sleeps instead of returning",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  for (time_t sec : {time_t{1} << 62, time_t{30'000'000'000}}) {
    timespec until{sec, 0};
    int r = -2;
    auto t0 = steady::now();
    try {
      cogent::timeout guard(150ms);
      r = ::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, nullptr);
      cogent::yield();
    } catch (const cogent::timeout_error&) {
    }
    double took = since(t0);
    CHECK_MESSAGE(r == EINTR, "tv_sec ", static_cast<long long>(sec), ": returned ", r, " after ", took, " s");
    CHECK(took >= 0.12);
  }
}
