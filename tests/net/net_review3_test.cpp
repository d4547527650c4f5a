// tests/net/net_review3_test.cpp — third adversarial review of net/ (socket, server, resolver, address).
//
// Failing case: a stream_server given a bound but not listening socket (or one that cannot listen)
// retries its failing accept forever. Passing cases kept: zero-length and truncated UDP datagrams,
// ENOTCONN/EBADF claims, close() while a send and a recv are parked on one socket.
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>
#include <vector>
#include <memory>
#include <thread>

#include "hub/pool.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "net/net.hpp"
#include "tests/net/net_support.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::net::address;
using cogent::net::listener;
using cogent::net::stream_server;
using cogent::net::stream_socket;
using cogent::net::udp_socket;
using cogent::test::echo_handler;
using cogent::test::errno_of;
using cogent::test::open_fds;

// server.hpp: "stream_server() serves an already bound listener." A listener that is bound but not
// (yet) listening, or a socket that can never listen (UDP), makes every accept fail at once (EINVAL,
// EOPNOTSUPP). accept_loop() treats any error but ECONNABORTED/EINTR/EPROTO/EPERM like EMFILE: it
// logs once and retries forever with backoff, so the server never serves anyone and serve_forever()
// never returns. Acceptable outcomes: the constructor rejects the socket, or clients are served (it
// listens), or the server stops on the fatal error (gevent's fatal_errors: EBADF, EINVAL, ENOTSOCK).
static void check_unlistened(int fd) {
  cogent::test::stderr_capture cap;
  std::unique_ptr<stream_server> srv;
  try {
    srv = std::make_unique<stream_server>(listener(fd), echo_handler);
  } catch (const std::exception& e) {
    MESSAGE("rejected at construction: ", e.what());
    return;
  }
  bool returned = false;
  auto sf = cogent::spawn([&] {
    try {
      srv->serve_forever();
    } catch (const std::exception&) {
    }
    returned = true;
  });
  cogent::sleep(20ms);
  bool served = false;
  if (srv->address().is_ipv4()) {
    served = errno_of([&] {
      auto c = stream_socket::connect(srv->address(), 300ms);
      c.write_all("hi");
      char b[2];
      c.read_exactly(b, 2, 300ms);
    }) == 0;
  }
  cogent::sleep(300ms);
  CHECK_MESSAGE((served || returned), "neither served nor stopped; stderr: ", cap.text());
  srv->stop(0s);
  sf.join();
}

COGENT_TEST_CASE("review3: a stream_server given a bound, not listening socket serves it or gives up, never spins",
                 doctest::timeout(10)) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  address at = address::ipv4_loopback(0);
  REQUIRE(::bind(fd, at.sockaddr_ptr(), at.sockaddr_len()) == 0);
  check_unlistened(fd);
  int u = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  REQUIRE(u >= 0);
  REQUIRE(::bind(u, at.sockaddr_ptr(), at.sockaddr_len()) == 0);
  check_unlistened(u);
}

// Passing, kept: no other test sends or receives a zero-length datagram, or checks that a
// truncated datagram's rest is dropped (the next receive gets the next datagram).
COGENT_TEST_CASE("review3: udp zero-length and truncated datagrams", doctest::timeout(10)) {
  auto a = udp_socket::bind(address::ipv4_loopback(0));
  auto b = udp_socket::bind(address::ipv4_loopback(0));
  CHECK(a.send_to("", 0, b.local_address()) == 0);
  char buf[8];
  address from;
  CHECK(b.receive_from(buf, sizeof buf, from, 1s) == 0);
  CHECK(from == a.local_address());
  CHECK(a.send_to("0123456789", 10, b.local_address()) == 10);
  CHECK(a.send_to("xy", 2, b.local_address()) == 2);
  CHECK(b.receive_from(buf, 4, from, 1s) == 4);
  CHECK(std::string(buf, 4) == "0123");
  CHECK(b.receive_from(buf, sizeof buf, from, 1s) == 2);
  CHECK(std::string(buf, 2) == "xy");
  // connected zero length
  a.connect(b.local_address());
  CHECK(a.send("", 0) == 0);
  CHECK(b.receive(buf, sizeof buf, 1s) == 0);
}

// Passing, kept: no other test checks ENOTCONN from shutdown()/peer_address() (documented), or
// EBADF from the zero-length and read_until_eof forms on a closed socket.
COGENT_TEST_CASE("review3: shutdown and peer_address on an unconnected stream socket raise ENOTCONN",
                 doctest::timeout(10)) {
  stream_socket s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  CHECK(errno_of([&] { s.shutdown(); }) == ENOTCONN);
  CHECK(errno_of([&] { (void)s.peer_address(); }) == ENOTCONN);
  s.close();
  CHECK(errno_of([&] { s.shutdown(); }) == EBADF);
  CHECK(errno_of([&] { (void)s.local_address(); }) == EBADF);
  CHECK(errno_of([&] { s.set_nodelay(true); }) == EBADF);
  CHECK(errno_of([&] { (void)s.pending_error(); }) == EBADF);
  CHECK(errno_of([&] { s.write_all("", 0); }) == EBADF);
  char b[1];
  CHECK(errno_of([&] { s.read_exactly(b, 0); }) == EBADF);
  CHECK(errno_of([&] { (void)s.read_until_eof(); }) == EBADF);
}

// Passing, kept: close() from a fiber (not the hub) while one fiber is parked in a send on a full
// buffer and another in a recv on the same socket: both raise EBADF, the fd is closed once.
COGENT_TEST_CASE("review3: close() while one fiber is blocked sending and one receiving wakes both with EBADF",
                 doctest::timeout(10)) {
  auto l = listener::bind(address::ipv4_loopback(0));
  auto c = stream_socket::connect(l.local_address(), 1s);
  auto srv = l.accept(1s);
  c.set_send_buffer_size(4096);
  srv.set_receive_buffer_size(4096);
  std::string big(8 << 20, 'x');
  int werr = -1, rerr = -1;
  auto w = cogent::spawn([&] { werr = errno_of([&] { c.write_all(big); }); });
  auto r = cogent::spawn([&] {
    char b[16];
    rerr = errno_of([&] { (void)c.read_some(b, sizeof b); });
  });
  cogent::sleep(50ms);
  int before = open_fds();
  c.close();
  w.join();
  r.join();
  CHECK(werr == EBADF);
  CHECK(rerr == EBADF);
  CHECK(open_fds() == before - 1);
}
