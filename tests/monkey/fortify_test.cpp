// tests/monkey/fortify_test.cpp — monkey/monkey.hpp on code built with -D_FORTIFY_SOURCE=2.
//
// Built with -O2 -D_FORTIFY_SOURCE=2 (tests/monkey/meson.build), as distribution
// packages are: every read/pread/pread64/recv/recvfrom/poll/ppoll below whose
// destination size the compiler knows, with a length it cannot fold, becomes a
// call to __read_chk, __pread_chk, __pread64_chk, __recv_chk, __recvfrom_chk,
// __poll_chk or __ppoll_chk, which glibc implements without going through
// read() & co. The `#error` below fails the build if fortification is off, and
// the meson test monkey_fortify_symbols checks with nm that the executable
// really imports those seven symbols (so these tests test them).
//
// A fortified call that reached glibc's version would block the whole thread:
// each wait below is ended by a fiber, with a plain thread as the fallback
// after 2 s, and checks that a ticker fiber ran while the call waited — so
// each test fails (rather than hangs) if its hook is bypassed. The overflow
// check is glibc's: a too-long read or poll aborts ("buffer overflow detected").
//
// Off_t is 64-bit either way on LP64; without _FILE_OFFSET_BITS=64 pread()
// stays pread() (-> __pread_chk) and pread64() is its own call (-> __pread64_chk).
#undef _FILE_OFFSET_BITS

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#if !defined(__OPTIMIZE__) || !defined(__USE_FORTIFY_LEVEL) || __USE_FORTIFY_LEVEL < 2
#error "fortify_test.cpp must be built with -O2 -D_FORTIFY_SOURCE=2 (see tests/monkey/meson.build)"
#endif

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "hub/task.hpp"
#include "monkey/monkey.hpp"
#include "tests/child.hpp"
#include "tests/monkey/fibers.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::test::ticker;
using cogent::test::woken_later;

namespace {

// opaque() hides a length from the optimizer: with a known destination size
// and an unknown length, fortify calls the __*_chk function.
std::size_t opaque(std::size_t n) {
  volatile std::size_t v = n;
  return v;
}

}  // namespace

COGENT_TEST_CASE("fortified read() on a pipe parks only its fiber", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int p[2];
  REQUIRE(::pipe(p) == 0);
  ticker tk;
  // Each fortified call has its buffer in its own frame: its size is known
  // there whether or not the lambda is inlined.
  auto w = woken_later(tk, p[1], [&] {
    char buf[16] = {};
    ssize_t n = ::read(p[0], buf, opaque(sizeof buf));  // __read_chk
    return std::string(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
  });
  CHECK(w.result == "fiber");
  CHECK(w.ticks >= 20);  // the ticker kept running while the reader waited
  ::close(p[0]);
  ::close(p[1]);
}

COGENT_TEST_CASE("fortified recv() and recvfrom() on a socket park only their fiber", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  ticker tk;
  for (bool from : {false, true}) {
    INFO(std::string(from ? "recvfrom" : "recv"));
    auto w = woken_later(tk, s[1], [&] {
      char buf[16] = {};
      ssize_t n;
      if (from) {
        sockaddr_un peer{};
        socklen_t plen = sizeof peer;
        n = ::recvfrom(s[0], buf, opaque(sizeof buf), 0, reinterpret_cast<sockaddr*>(&peer),
                       &plen);  // __recvfrom_chk
      } else {
        n = ::recv(s[0], buf, opaque(sizeof buf), 0);  // __recv_chk
      }
      return std::string(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
    });
    CHECK(w.result == "fiber");
    CHECK(w.ticks >= 20);
  }
  ::close(s[0]);
  ::close(s[1]);
}

COGENT_TEST_CASE("fortified poll() and ppoll() park only their fiber", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  ticker tk;
  for (bool p : {false, true}) {
    INFO(std::string(p ? "ppoll" : "poll"));
    // (result, pf[1].revents)
    auto w = woken_later(tk, s[1], [&] {
      pollfd pf[2] = {{-1, POLLIN, 0}, {s[0], POLLIN, 0}};
      int r;
      if (p) {
        timespec ts{5, 0};
        r = ::ppoll(pf, opaque(2), &ts, nullptr);  // __ppoll_chk
      } else {
        r = ::poll(pf, opaque(2), 5000);  // __poll_chk
      }
      return std::pair<int, short>{r, pf[1].revents};
    });
    CHECK(w.result.first == 1);
    CHECK(w.result.second == POLLIN);
    CHECK(w.ticks >= 20);
    char buf[16];
    CHECK(::recv(s[0], buf, sizeof buf, 0) == 5);  // "fiber" (the fallback thread writes 6 bytes)
  }
  ::close(s[0]);
  ::close(s[1]);
}

COGENT_TEST_CASE("fortified pread() and pread64() on a file go through io_uring", doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int fd = cogent::test::open_scratch_file();
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd, "0123456789abcdef", 16) == 16);
  for (bool p64 : {false, true}) {
    INFO(std::string(p64 ? "pread64" : "pread"));
    char buf[8] = {};
    auto r = cogent::test::parks([&] {
      char mine[8] = {};                                    // its size is known here, inlined or not
      ssize_t n = p64 ? ::pread64(fd, mine, opaque(4), 10)  // __pread64_chk
                      : ::pread(fd, mine, opaque(4), 10);   // __pread_chk
      std::memcpy(buf, mine, sizeof buf);
      return n;
    });
    CHECK(r.result == 4);
    CHECK(std::memcmp(buf, "abcd", 4) == 0);
    CHECK(r.parked);  // a pread that went to glibc would never have switched
  }
  ::close(fd);
}

TEST_CASE("fortified read() and poll() keep glibc's overflow check" * doctest::timeout(20)) {
  cogent::monkey::patch_all();
  // Nothing would be written either way (EOF, a zero timeout): without the
  // check the child exits 0.
  auto over_read = cogent::test::run_in_child([] {
    int p[2];
    if (::pipe(p) != 0) {
      ::_exit(cogent::test::child_setup_failed);
    }
    ::close(p[1]);
    char buf[8];
    [[maybe_unused]] ssize_t n = ::read(p[0], buf, opaque(sizeof buf + 1));  // __read_chk: 9 > 8
  });
  CHECK(WIFSIGNALED(over_read.status));
  CHECK(WTERMSIG(over_read.status) == SIGABRT);
  CHECK(over_read.err.find("buffer overflow detected") != std::string::npos);
  auto over_poll = cogent::test::run_in_child([] {
    pollfd pf[1] = {{-1, POLLIN, 0}};
    [[maybe_unused]] int n = ::poll(pf, opaque(2), 0);  // __poll_chk: 2 entries in room for 1
  });
  CHECK(WIFSIGNALED(over_poll.status));
  CHECK(WTERMSIG(over_poll.status) == SIGABRT);
  CHECK(over_poll.err.find("buffer overflow detected") != std::string::npos);
}
