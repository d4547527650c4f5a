// tests/net/socket_review_test.cpp — review findings for net/socket, net/address
// and net/resolver: each case states the documented behaviour it checks. Both failed before the
// fix that came with this file: a Unix connect to a full backlog that timed out raised EINTR (the
// kernel ran it blocking on a worker, and the cancel interrupted it), and an IPv6 scope with a
// sign, blanks or more than 32 bits was accepted (strtoul) where getaddrinfo rejects it. The third
// failed before a later fix: use_default stored as a socket's default timeout (every later call
// timed out at once), and an empty UDP peer gave EINVAL, not std::invalid_argument.
#include "net/net.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <system_error>
#include <vector>

#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "tests/net/net_support.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::net::address;
using cogent::net::listener;
using cogent::net::stream_socket;
using cogent::test::errno_of;
using cogent::test::open_fds;

// socket.hpp: connect() "Raises std::system_error: ... ETIMEDOUT when `t`
// passes first". A Unix-domain stream connect to a listener whose backlog is
// full blocks inside the kernel (io_uring runs it on an io-wq worker, since
// AF_UNIX connect has no poll-driven retry); the cancel sent at the deadline
// interrupts that worker and the op completes with -EINTR, not -ECANCELED, so
// the caller sees EINTR instead of ETIMEDOUT.
COGENT_TEST_CASE("unix: connect to a full backlog times out with ETIMEDOUT, not EINTR", doctest::timeout(10)) {
  cogent::net::listen_options lo;
  lo.backlog = 0;
  auto l = listener::bind(address::unix_abstract("cogent-review-" + std::to_string(::getpid())), lo);
  std::vector<stream_socket> fillers;
  int err = 0;
  int before = 0;
  for (int i = 0; i < 16 && err == 0; ++i) {
    before = open_fds();
    auto t0 = cogent::clock::now();
    err = errno_of([&] { fillers.push_back(stream_socket::connect(l.local_address(), 100ms)); });
    if (err != 0) {
      auto took = cogent::clock::now() - t0;
      CHECK(took >= 90ms);
      CHECK(took < 2s);
    }
  }
  CHECK(err == ETIMEDOUT);
  CHECK(open_fds() == before);
}

// address.hpp: parse() "Throws std::invalid_argument if `ip` is not an
// IPv4/IPv6 literal". The %scope is read with strtoul, which accepts a sign
// and leading blanks and wraps out-of-range values: "%-1" becomes scope
// 4294967295 and "%4294967296" silently becomes 0 (unscoped), "% 1" and "%+1"
// become 1. getaddrinfo(AI_NUMERICHOST) rejects all four.
TEST_CASE("address: a negative, signed, blank-padded or >32-bit IPv6 scope is rejected like getaddrinfo" *
          doctest::timeout(10)) {
  for (const char* s : {"fe80::1%-1", "fe80::1%4294967296", "fe80::1%4294967297", "fe80::1% 1", "fe80::1%+1"}) {
    CAPTURE(std::string(s));
    addrinfo hints{};
    hints.ai_flags = AI_NUMERICHOST;
    hints.ai_family = AF_INET6;
    addrinfo* res = nullptr;
    int rc = ::getaddrinfo(s, "80", &hints, &res);
    if (res != nullptr) {
      ::freeaddrinfo(res);
    }
    CHECK(rc != 0);  // libc: not a numeric literal
    CHECK_THROWS_AS((void)address::parse(s, 80), std::invalid_argument);
    CHECK(address::try_parse(s, 80).empty());
  }
  // The forms libc accepts still parse.
  CHECK(address::parse("fe80::1%1", 80).to_string() == "[fe80::1%1]:80");
  CHECK(address::parse("[fe80::1%lo]:80").to_string() == "[fe80::1%1]:80");
}

// ---- misuse gets std::invalid_argument --------------------------------------------------------

COGENT_TEST_CASE("review: use_default as a socket's default/idle timeout, an empty UDP peer are rejected",
                 doctest::timeout(10)) {
  auto a = cogent::net::udp_socket::bind(address::ipv4_loopback(0));
  // use_default stored as the default made every later call time out at once.
  CHECK_THROWS_AS(a.set_timeout(cogent::net::use_default), std::invalid_argument);
  CHECK_THROWS_AS(a.set_idle_timeout(cogent::net::use_default), std::invalid_argument);
  CHECK(a.timeout() == std::nullopt);
  CHECK_THROWS_AS(a.connect(address()), std::invalid_argument);
  CHECK_THROWS_AS(a.send_to("x", 1, address()), std::invalid_argument);
  cogent::net::server_options opts;
  opts.idle_timeout = cogent::net::use_default;
  CHECK_THROWS_AS(cogent::net::stream_server(address::ipv4_loopback(0),
                                             [](cogent::net::stream_socket&, const address&) {}, opts),
                  std::invalid_argument);
}
