// tests/net/net_review4_test.cpp — fourth adversarial review of net/: UDP, Unix-domain sockets,
// address parsing, resolve/create_connection, options, shutdown, moves, stream_server on Unix.
//
// Failing cases: a Unix socket bound to a sun_path filling all 108 bytes (getsockname/accept report
// 111 bytes, more than sizeof(sockaddr_un)) has no local_address(), and such a client kills a unix
// stream_server's accept task (from_sockaddr's std::invalid_argument escapes accept_loop), so the
// server silently stops accepting while serving() stays true. Other cases pass and guard the
// Unix/UDP/address/resolver claims of the headers.
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>
#include <vector>

#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "net/net.hpp"
#include "tests/net/net_support.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::net::address;
using cogent::net::listen_options;
using cogent::net::listener;
using cogent::net::stream_server;
using cogent::net::stream_socket;
using cogent::net::udp_socket;
using cogent::test::echo_handler;
using cogent::test::errno_of;

namespace {

std::string temp_sock_path(const char* tag) {
  return "/tmp/cogent-r4-" + std::string(tag) + "-" + std::to_string(::getpid()) + ".sock";
}

// long_path() is a path of exactly `n` bytes under /tmp (directories made as needed) .
std::string long_path(std::size_t n) {
  std::string dir = "/tmp/cogent-r4-d" + std::to_string(::getpid());
  ::mkdir(dir.c_str(), 0700);
  std::string p = dir + "/";
  while (p.size() < n) {
    p += 'x';
  }
  return p;
}

}  // namespace

// ---- Unix-domain ----------------------------------------------------------------------------

COGENT_TEST_CASE("review4: unix path listener: local address, unnamed peers, abstract names",
                 doctest::timeout(10)) {
  std::string path = temp_sock_path("a");
  ::unlink(path.c_str());
  address at = address::unix_path(path);
  auto l = listener::bind(at);
  CHECK(l.local_address() == at);
  CHECK(l.local_address().to_string() == path);
  CHECK(l.port() == 0);
  auto c = stream_socket::connect(at, 2s);
  address peer;
  auto s = l.accept(peer, 2s);
  CHECK(peer.is_unix());
  CHECK(peer.to_string() == "");
  CHECK_FALSE(peer.is_abstract());
  CHECK(c.peer_address() == at);
  CHECK(c.local_address().is_unix());
  CHECK(c.local_address().to_string() == "");
  CHECK(s.peer_address().to_string() == "");
  c.close();
  s.close();
  l.close();
  ::unlink(path.c_str());

  address ab = address::unix_abstract("cogent-r4-" + std::to_string(::getpid()));
  auto la = listener::bind(ab);
  CHECK(la.local_address() == ab);
  CHECK(la.local_address().is_abstract());
  CHECK(la.local_address().to_string() == ab.to_string());
  auto ca = stream_socket::connect(ab, 2s);
  CHECK(ca.peer_address() == ab);
  auto sa = la.accept(2s);
  sa.write_all("x");
  char b;
  ca.read_exactly(&b, 1, 2s);
  CHECK(b == 'x');
}

COGENT_TEST_CASE("review4: unix stale path: EADDRINUSE without unlink_existing, removed with it; a regular file kept",
                 doctest::timeout(10)) {
  std::string path = temp_sock_path("stale");
  ::unlink(path.c_str());
  address at = address::unix_path(path);
  {
    auto l = listener::bind(at);
  }  // closed: the file stays (stale)
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK(errno_of([&] { (void)listener::bind(at); }) == EADDRINUSE);
  listen_options o;
  o.unlink_existing = true;
  auto l2 = listener::bind(at, o);
  auto c = stream_socket::connect(at, 2s);
  auto s = l2.accept(2s);
  c.close();
  s.close();
  l2.close();
  ::unlink(path.c_str());
  // A regular file is never removed.
  int fd = ::open(path.c_str(), O_CREAT | O_WRONLY, 0600);
  REQUIRE(fd >= 0);
  ::close(fd);
  CHECK(errno_of([&] { (void)listener::bind(at, o); }) == EADDRINUSE);
  CHECK(::stat(path.c_str(), &st) == 0);
  ::unlink(path.c_str());
}

TEST_CASE("review4: unix path too long, empty, NUL; abstract too long") {
  CHECK_THROWS_AS(address::unix_path(std::string(108, 'a')), std::invalid_argument);
  CHECK_NOTHROW(address::unix_path(std::string(107, 'a')));
  CHECK_THROWS_AS(address::unix_path(""), std::invalid_argument);
  CHECK_THROWS_AS(address::unix_path(std::string("a\0b", 3)), std::invalid_argument);
  CHECK_THROWS_AS(address::unix_abstract(std::string(108, 'a')), std::invalid_argument);
  CHECK_NOTHROW(address::unix_abstract(std::string(107, 'a')));
}

// unix(7): "the returned address may be longer than sizeof(struct sockaddr_un)" — a socket bound
// to a sun_path that fills all 108 bytes (no NUL; legal for bind(2), e.g. by another program)
// makes getsockname/getpeername/accept report sizeof(sa_family_t) + 108 + 1 bytes.
// address::from_sockaddr() refuses any AF_UNIX length above sizeof(sockaddr_un), so:
//  - local_address() of such a listener throws std::invalid_argument;
//  - listener::accept(peer) of a client bound to such a path throws std::invalid_argument after
//    accepting (the connection is dropped), and stream_server's accept task, which only catches
//    std::system_error, dies of it: the server stops accepting anyone, silently.
static int bind_full_path(int type, const std::string& path) {
  int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return -1;
  }
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::memcpy(sun.sun_path, path.data(), sizeof sun.sun_path);  // all 108 bytes, no NUL
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

COGENT_TEST_CASE("review4: a Unix socket bound to a full 108-byte sun_path has a local_address()",
                 doctest::timeout(10)) {
  std::string path = long_path(108);
  ::unlink(path.c_str());
  int fd = bind_full_path(SOCK_STREAM, path);
  REQUIRE(fd >= 0);
  REQUIRE(::listen(fd, 16) == 0);
  listener l(fd);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0);
  MESSAGE("getsockname length ", len, " (sizeof sockaddr_un ", sizeof(sockaddr_un), ")");
  address a;
  CHECK_NOTHROW(a = l.local_address());
  CHECK(a.to_string() == path);
  l.close();
  ::unlink(path.c_str());
  ::rmdir(path.substr(0, path.rfind('/')).c_str());
}

COGENT_TEST_CASE("review4: a client bound to a full 108-byte sun_path does not stop a unix stream_server",
                 doctest::timeout(15)) {
  std::string spath = temp_sock_path("srv108");
  ::unlink(spath.c_str());
  address at = address::unix_path(spath);
  cogent::test::stderr_capture cap;
  stream_server srv(at, echo_handler);
  srv.start();
  std::string cpath = long_path(108);
  ::unlink(cpath.c_str());
  int cfd = bind_full_path(SOCK_STREAM, cpath);
  REQUIRE(cfd >= 0);
  stream_socket evil(cfd);
  // Connect the bound client (plain blocking connect: the server's backlog takes it).
  REQUIRE(::connect(cfd, at.sockaddr_ptr(), at.sockaddr_len()) == 0);
  cogent::sleep(50ms);
  // An ordinary client must still be served.
  auto c = stream_socket::connect(at, 2s);
  c.write_all("ping", 2s);
  char buf[4] = {};
  std::string got;
  try {
    c.read_exactly(buf, 4, 2s);
    got.assign(buf, 4);
  } catch (const std::exception& e) {
    MESSAGE("ordinary client after the 108-byte one: " << std::string(e.what()));
  }
  CHECK(got == "ping");
  CHECK(srv.serving());
  c.close();
  evil.close();
  srv.stop(1s);
  ::unlink(cpath.c_str());
  ::rmdir(cpath.substr(0, cpath.rfind('/')).c_str());
  ::unlink(spath.c_str());
  MESSAGE("server stderr: ", cap.text());
}

COGENT_TEST_CASE("review4: stream_server on a unix listener echoes; peer is unnamed; port 0",
                 doctest::timeout(10)) {
  std::string path = temp_sock_path("srv");
  ::unlink(path.c_str());
  address at = address::unix_path(path);
  address seen;
  bool saw = false;
  stream_server srv(at, [&](stream_socket& s, const address& p) {
    seen = p;
    saw = true;
    echo_handler(s, p);
  });
  CHECK(srv.port() == 0);
  CHECK(srv.address() == at);
  srv.start();
  auto c = stream_socket::connect(srv.address(), 2s);
  c.write_all("hello", 2s);
  char buf[5];
  c.read_exactly(buf, 5, 2s);
  CHECK(std::string(buf, 5) == "hello");
  CHECK(saw);
  CHECK(seen.is_unix());
  c.close();
  srv.stop(1s);
  ::unlink(path.c_str());
}

// ---- UDP --------------------------------------------------------------------------------------

COGENT_TEST_CASE("review4: connected UDP: send/receive, filtering of other senders, send_to elsewhere",
                 doctest::timeout(10)) {
  auto a = udp_socket::bind(address::ipv4_loopback(0));
  auto b = udp_socket::bind(address::ipv4_loopback(0));
  auto other = udp_socket::bind(address::ipv4_loopback(0));
  a.connect(b.local_address());
  b.connect(a.local_address());
  // A datagram from someone else is filtered out by a's connect.
  other.send_to("zz", 2, a.local_address(), 1s);
  CHECK(b.send("hi", 2, 1s) == 2);
  char buf[16];
  address from;
  std::size_t n = a.receive_from(buf, sizeof buf, from, 1s);
  CHECK(n == 2);
  CHECK(std::string(buf, 2) == "hi");
  CHECK(from == b.local_address());
  // Zero-length datagram through send() on a connected socket.
  CHECK(a.send("", 0, 1s) == 0);
  CHECK(b.receive(buf, sizeof buf, 1s) == 0);
  // Unconnected send() is EDESTADDRREQ.
  CHECK(errno_of([&] { (void)other.send("x", 1, 1s); }) == EDESTADDRREQ);
  // receive with a per-call timeout on nothing: ETIMEDOUT.
  CHECK(errno_of([&] { (void)other.receive(buf, sizeof buf, 20ms); }) == ETIMEDOUT);
  // The socket's default timeout applies too.
  other.set_timeout(20ms);
  CHECK(errno_of([&] { (void)other.receive_from(buf, sizeof buf, from); }) == ETIMEDOUT);
  // A Timeout scope raises timeout_error.
  bool te = false;
  try {
    cogent::timeout t(20ms);
    (void)other.receive(buf, sizeof buf, std::nullopt);
  } catch (const cogent::timeout_error&) {
    te = true;
  }
  CHECK(te);
}

COGENT_TEST_CASE("review4: a dual-stack UDP socket talks to IPv4 peers", doctest::timeout(10)) {
  udp_socket v6;
  try {
    v6 = udp_socket::bind(address::ipv6_any(0));
  } catch (const std::system_error& e) {
    MESSAGE("no IPv6: ", e.what());
    return;
  }
  auto v4 = udp_socket::bind(address::ipv4_loopback(0));
  CHECK(v6.send_to("ab", 2, v4.local_address(), 1s) == 2);
  char buf[8];
  address from;
  CHECK(v4.receive_from(buf, sizeof buf, from, 1s) == 2);
  CHECK(from.is_ipv4());
  CHECK(from.port() == v6.local_address().port());
  CHECK(v4.send_to("cd", 2, address::ipv4_loopback(v6.local_address().port()), 1s) == 2);
  CHECK(v6.receive_from(buf, sizeof buf, from, 1s) == 2);
  CHECK(from.is_ipv6());
  CHECK(from.is_loopback());
}

// ---- addresses, resolve, create_connection ------------------------------------------------------

TEST_CASE("review4: IPv6 scope ids parse, format and round-trip") {
  address a = address::parse("fe80::1%lo", 80);
  CHECK(a.is_ipv6());
  CHECK(a.to_string() == "[fe80::1%1]:80");
  CHECK(address::parse(a.to_string()) == a);
  CHECK(address::parse("[fe80::1%lo]:80") == a);
  CHECK(address::parse("fe80::1%1", 80) == a);
  CHECK(address::parse("fe80::1", 80) != a);
  CHECK_THROWS_AS(address::parse("fe80::1%", 80), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("fe80::1%nosuchif0", 80), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("127.0.0.1%lo", 80), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("[::1]"), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("::1:80"), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("1.2.3.4:65536"), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("1.2.3.4", -1), std::invalid_argument);
  CHECK_THROWS_AS(address::ipv4_any(65536), std::invalid_argument);
  CHECK_THROWS_AS(address::ipv4_loopback(0).with_port(70000), std::invalid_argument);
  CHECK(address::parse("::ffff:127.0.0.1", 1).is_loopback());
}

COGENT_TEST_CASE("review4: resolve literals, localhost, passive, bad ports, empty host, unknown host",
                 doctest::timeout(20)) {
  using cogent::net::resolve;
  using cogent::net::resolve_options;
  auto v = resolve("[::1]", 80);
  REQUIRE(v.size() == 1);
  CHECK(v[0] == address::ipv6_loopback(80));
  v = resolve("fe80::1%lo", 7);
  REQUIRE(v.size() == 1);
  CHECK(v[0] == address::parse("fe80::1%lo", 7));
  v = resolve("localhost", 80);
  bool has4 = false;
  for (auto& a : v) {
    has4 = has4 || a == address::ipv4_loopback(80);
  }
  CHECK(has4);
  resolve_options p;
  p.passive = true;
  v = resolve("", 9, p);
  CHECK(!v.empty());
  for (auto& a : v) {
    CHECK(a.port() == 9);
  }
  CHECK_THROWS_AS(resolve("localhost", 65536), std::invalid_argument);
  CHECK_THROWS_AS(resolve("localhost", -1), std::invalid_argument);
  CHECK_THROWS_AS(resolve("", 80), std::invalid_argument);
  CHECK_THROWS_AS(cogent::net::create_connection("", 80), std::invalid_argument);
  CHECK_THROWS_AS(cogent::net::create_connection("127.0.0.1", 70000), std::invalid_argument);
  resolve_options six;
  six.family = cogent::net::address_family::ipv6;
  try {
    (void)resolve("127.0.0.1", 80, six);
    FAIL("an IPv4 literal with family ipv6 resolved");
  } catch (const std::system_error& e) {
    CHECK(e.code().category() == cogent::net::resolver_category());
  }
  try {
    cogent::timeout t(10s);
    (void)resolve("no-such-host.invalid", 80);
    FAIL("resolved");
  } catch (const std::system_error& e) {
    MESSAGE("unknown host: " << std::string(e.what()) << " category " << std::string(e.code().category().name()));
    CHECK((e.code().category() == cogent::net::resolver_category() ||
           e.code().category() == std::generic_category()));
  }
}

COGENT_TEST_CASE("review4: create_connection falls back to the next address when the first refuses",
                 doctest::timeout(10)) {
  // Only 127.0.0.1 listens; connecting to "localhost" works whatever order getaddrinfo picks.
  auto l = listener::bind(address::ipv4_loopback(0));
  auto s = cogent::net::create_connection("localhost", l.port(), 2s);
  CHECK(s.peer_address() == address::ipv4_loopback(l.port()));
  CHECK_FALSE(s.timeout().has_value());
  auto a = l.accept(2s);
  l.close();
  int port = a.local_address().port();
  a.close();
  s.close();
  CHECK(errno_of([&] { (void)cogent::net::create_connection("127.0.0.1", port, 1s); }) == ECONNREFUSED);
}

// ---- options, shutdown, moves, closed sockets ------------------------------------------------------

COGENT_TEST_CASE("review4: options, default timeouts kept across moves, addresses after close",
                 doctest::timeout(10)) {
  auto l = listener::bind(address::ipv4_loopback(0));
  auto c = stream_socket::connect(l.local_address(), 2s);
  auto s = l.accept(2s);
  CHECK_FALSE(c.timeout().has_value());
  CHECK_FALSE(c.idle_timeout().has_value());
  c.set_timeout(30ms);
  c.set_nodelay(true);
  CHECK(c.nodelay());
  c.set_keepalive(true, 10s, 5s, 3);
  CHECK(c.get_option<int>(SOL_SOCKET, SO_KEEPALIVE) == 1);
  c.set_linger(0s);
  CHECK(c.get_option<linger>(SOL_SOCKET, SO_LINGER).l_onoff == 1);
  c.set_linger(std::nullopt);
  CHECK(c.get_option<linger>(SOL_SOCKET, SO_LINGER).l_onoff == 0);
  c.set_receive_buffer_size(64 * 1024);
  CHECK(c.receive_buffer_size() >= 64 * 1024);
  CHECK(c.pending_error() == 0);
  stream_socket moved = std::move(c);
  CHECK(moved.timeout() == cogent::timeout_duration(30ms));
  char b[4];
  CHECK(errno_of([&] { (void)moved.read_some(b, sizeof b); }) == ETIMEDOUT);
  CHECK(errno_of([&] { (void)c.local_address(); }) == EBADF);
  CHECK(errno_of([&] { (void)c.peer_address(); }) == EBADF);
  CHECK(errno_of([&] { (void)c.read_some(b, 0); }) == EBADF);
  CHECK(errno_of([&] { c.set_nodelay(true); }) == EBADF);
  CHECK(errno_of([&] { (void)c.pending_error(); }) == EBADF);
  // Move the socket into another fiber and use it there.
  auto t = cogent::spawn([](stream_socket x) {
    x.write_all("abcd", 1s);
    x.shutdown(cogent::net::shutdown_how::write);
    char r[4];
    x.read_exactly(r, 4, 1s);
    return std::string(r, 4);
  }, std::move(moved));
  char r[4];
  s.read_exactly(r, 4, 1s);
  CHECK(s.read_some(r, sizeof r, 1s) == 0);  // shutdown(write): EOF
  s.write_all("efgh", 1s);
  CHECK(t.get() == "efgh");
  // shutdown(read): a blocked reader sees EOF.
  auto c2 = stream_socket::connect(l.local_address(), 2s);
  auto s2 = l.accept(2s);
  auto rd = cogent::spawn([&] {
    char q[4];
    return s2.read_some(q, sizeof q, 2s);
  });
  cogent::sleep(10ms);
  s2.shutdown(cogent::net::shutdown_how::read);
  CHECK(rd.get() == 0);
  c2.shutdown(cogent::net::shutdown_how::both);
  s2.close();
  CHECK(errno_of([&] { s2.shutdown(); }) == EBADF);
  CHECK(errno_of([&] { (void)l.port(); }) == 0);
  l.close();
  CHECK(errno_of([&] { (void)l.port(); }) == EBADF);
}

COGENT_TEST_CASE("review4: probes: zero timeout with data ready, idle limit on UDP, abstract stream_server",
                 doctest::timeout(10)) {
  auto l = listener::bind(address::ipv4_loopback(0));
  auto c = stream_socket::connect(l.local_address(), 2s);
  auto s = l.accept(2s);
  c.write_all("abc", 1s);
  cogent::sleep(20ms);
  char b[8];
  std::size_t n = 0;
  int e = errno_of([&] { n = s.read_some(b, sizeof b, 0ms); });
  CHECK(e == 0);
  CHECK(n == 3);
  auto u = udp_socket::bind(address::ipv4_loopback(0));
  u.set_idle_timeout(20ms);
  address from;
  bool idle = false;
  try {
    (void)u.receive_from(b, sizeof b, from);
  } catch (const cogent::net::idle_timeout_error&) {
    idle = true;
  }
  CHECK(idle);
  address ab = address::unix_abstract("cogent-r4-srv-" + std::to_string(::getpid()));
  stream_server srv(listener::bind(ab), echo_handler);
  CHECK(srv.address() == ab);
  srv.start();
  auto k = stream_socket::connect(ab, 2s);
  k.write_all("zz", 1s);
  k.read_exactly(b, 2, 1s);
  CHECK(std::string(b, 2) == "zz");
  k.close();
  srv.stop(1s);
  CHECK(errno_of([&] { (void)stream_socket::connect(ab, 1s); }) == ECONNREFUSED);
}
