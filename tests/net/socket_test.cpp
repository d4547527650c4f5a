// tests/net/socket_test.cpp — cogent::net sockets, addresses and the resolver
// against real sockets on loopback.
//
// Covers: address parsing/formatting and misuse; listen/connect/accept and
// addresses; 16 MiB checksummed through one connection with partial reads and
// writes; EOF, half-close, read_exactly/end_of_stream, read_until_eof; peer
// reset (ECONNRESET/EPIPE, no SIGPIPE); ECONNREFUSED; connect timeout; accept,
// recv and connect killed or timed out without fd leaks (including an accept
// that won the race with a kill); close() waking blocked fibers; options;
// IPv6 loopback; UDP over IPv4 and IPv6 loopback; Unix-domain (path and
// abstract); resolve("localhost") and create_connection, which keep the hub
// running while the lookup waits for a worker thread.
#include "net/net.hpp"

#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "hub/task.hpp"
#include "hub/threadpool.hpp"
#include "hub/timeout.hpp"
#include "tests/net/net_support.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::net::address;
using cogent::net::listener;
using cogent::net::stream_socket;
using cogent::net::udp_socket;

namespace {

using cogent::test::errno_of;
using cogent::test::open_fds;

// fnv1a() folds bytes into a running 64-bit FNV-1a hash.
std::uint64_t fnv1a(std::uint64_t h, const unsigned char* p, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    h = (h ^ p[i]) * 1099511628211ull;
  }
  return h;
}

using cogent::test::make_pair;  // a connected TCP pair on 127.0.0.1 (net_support.hpp)

std::atomic<int> g_sigpipes{0};

std::string temp_socket_path(const char* tag) {
  return "/tmp/cogent-net-test-" + std::to_string(::getpid()) + "-" + tag + ".sock";
}

}  // namespace

// ---- addresses ----------------------------------------------------------------------

TEST_CASE("address: parse and format IPv4, IPv6, Unix" * doctest::timeout(10)) {
  auto a = address::parse("1.2.3.4", 80);
  CHECK(a.is_ipv4());
  CHECK(a.port() == 80);
  CHECK(a.host() == "1.2.3.4");
  CHECK(a.to_string() == "1.2.3.4:80");
  auto b = address::parse("::1", 443);
  CHECK(b.is_ipv6());
  CHECK(b.to_string() == "[::1]:443");
  CHECK(b.is_loopback());
  CHECK(address::parse("[::1]:80").to_string() == "[::1]:80");
  CHECK(address::parse("127.0.0.1:65535").port() == 65535);
  CHECK(address::parse("10.0.0.1:8080") == address::parse("10.0.0.1", 8080));
  CHECK(address::parse("10.0.0.1:8080") != address::parse("10.0.0.1", 8081));
  CHECK(address::parse("10.0.0.1", 1).with_port(2).port() == 2);
  CHECK(address::ipv4_any(0).to_string() == "0.0.0.0:0");
  CHECK(address::ipv6_any(5).to_string() == "[::]:5");
  CHECK(address::ipv4_loopback(1).is_loopback());
  CHECK(!address::parse("8.8.8.8", 53).is_loopback());
  auto u = address::unix_path("/tmp/x.sock");
  CHECK(u.is_unix());
  CHECK(!u.is_abstract());
  CHECK(u.to_string() == "/tmp/x.sock");
  CHECK(u.port() == 0);
  auto ab = address::unix_abstract("cogent");
  CHECK(ab.is_abstract());
  CHECK(ab.to_string() == "@cogent");
  CHECK(address().empty());
  CHECK(address().to_string().empty());
  // Round trip through the kernel view.
  auto c = address::from_sockaddr(b.sockaddr_ptr(), b.sockaddr_len());
  CHECK(c == b);
}

TEST_CASE("address: bad strings and ports throw invalid_argument with a clear message" *
          doctest::timeout(10)) {
  CHECK_THROWS_AS(address::parse("1.2.3", 80), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("localhost", 80), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("", 80), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("1.2.3.4.5", 80), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("::1::2", 80), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("1.2.3.4"), std::invalid_argument);     // no port
  CHECK_THROWS_AS(address::parse("1.2.3.4:"), std::invalid_argument);    // empty port
  CHECK_THROWS_AS(address::parse("1.2.3.4:x1"), std::invalid_argument);  // not a number
  CHECK_THROWS_AS(address::parse("::1:80"), std::invalid_argument);      // v6 without brackets
  CHECK_THROWS_AS(address::parse("[::1]80"), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("[::1"), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("1.2.3.4", 65536), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("1.2.3.4", -1), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("1.2.3.4:70000"), std::invalid_argument);
  CHECK_THROWS_AS(address::parse("1.2.3.4:999999"), std::invalid_argument);
  CHECK_THROWS_AS(address::ipv4_any(100000), std::invalid_argument);
  CHECK_THROWS_AS(address::unix_path(""), std::invalid_argument);
  CHECK_THROWS_AS(address::unix_path(std::string(200, 'x')), std::invalid_argument);
  CHECK_THROWS_AS(address::unix_path("/tmp/x").with_port(1), std::invalid_argument);
  try {
    address::parse("1.2.3.4", 70000);
    FAIL("no throw");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("70000 out of range") != std::string::npos);
  }
  try {
    address::parse("not-an-ip", 1);
    FAIL("no throw");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("not-an-ip") != std::string::npos);
  }
  CHECK(address::try_parse("nope", 1).empty());
}

// ---- TCP basics ----------------------------------------------------------------------

COGENT_TEST_CASE("tcp: listen on port 0, connect, accept, addresses, echo", doctest::timeout(10)) {
  auto l = listener::bind(address::ipv4_loopback(0));
  CHECK(l.port() != 0);
  CHECK(l.local_address().host() == "127.0.0.1");
  auto srv = cogent::spawn([&] {
    address peer;
    stream_socket c = l.accept(peer);
    CHECK(peer.is_ipv4());
    CHECK(peer == c.peer_address());
    char buf[64];
    std::size_t n = c.read_some(buf, sizeof buf);
    c.write_all(buf, n);
    CHECK(c.read_some(buf, sizeof buf) == 0);  // EOF: client closed
  });
  stream_socket s = stream_socket::connect(l.local_address(), 2s);
  CHECK(s.is_open());
  CHECK(s.peer_address() == l.local_address());
  s.write_all("hello");
  char reply[5];
  s.read_exactly(reply, 5);
  CHECK(std::string(reply, 5) == "hello");
  s.close();
  CHECK(!s.is_open());
  s.close();  // idempotent
  srv.get();
}

COGENT_TEST_CASE("tcp: 16 MiB checksummed through one connection, partial reads and writes",
                 doctest::timeout(60)) {
  constexpr std::size_t total = 16u << 20;
  auto p = make_pair();
  // Small kernel buffers (~32 KiB once the kernel doubles them) against
  // chunks and reads of up to 256/300 KiB force short sends and short reads;
  // both are counted and must have happened.
  p.client.set_send_buffer_size(16 * 1024);
  p.server.set_receive_buffer_size(16 * 1024);
  std::uint64_t sent_hash = 1469598103934665603ull;
  auto writer = cogent::spawn([&] {
    std::mt19937 rng(42);
    std::vector<unsigned char> chunk(256 * 1024);
    std::size_t left = total;
    std::size_t partial_writes = 0;
    while (left > 0) {
      std::size_t n = std::min<std::size_t>(left, 1 + rng() % chunk.size());
      for (std::size_t i = 0; i < n; ++i) {
        chunk[i] = static_cast<unsigned char>(rng());
      }
      sent_hash = fnv1a(sent_hash, chunk.data(), n);
      if (rng() % 2 == 0) {
        p.client.write_all(chunk.data(), n);
      } else {
        std::size_t off = 0;
        while (off < n) {
          std::size_t w = p.client.write_some(chunk.data() + off, n - off);
          if (w < n - off) {
            ++partial_writes;
          }
          off += w;
        }
      }
      left -= n;
    }
    p.client.shutdown(cogent::net::shutdown_how::write);
    return partial_writes;
  });
  std::uint64_t got_hash = 1469598103934665603ull;
  std::size_t got = 0;
  std::size_t reads = 0;
  std::size_t partial_reads = 0;
  std::mt19937 rng(7);
  std::vector<unsigned char> buf(300 * 1024);
  for (;;) {
    std::size_t want = 1 + rng() % buf.size();
    std::size_t n = p.server.read_some(buf.data(), want);
    if (n == 0) {
      break;
    }
    ++reads;
    partial_reads += n < want;
    got_hash = fnv1a(got_hash, buf.data(), n);
    got += n;
  }
  std::size_t partial_writes = writer.get();
  CHECK(got == total);
  CHECK(got_hash == sent_hash);
  CHECK(reads > 64);
  CHECK(partial_reads > 0);
  CHECK(partial_writes > 0);
  MESSAGE("reads: " << reads << " (" << partial_reads
                    << " short), short write_some calls: " << partial_writes);
}

COGENT_TEST_CASE("tcp: EOF, half-close, read_exactly end_of_stream, read_until_eof", doctest::timeout(10)) {
  {
    // Half-close: the client shuts its write side, still reads the reply.
    auto p = make_pair();
    auto srv = cogent::spawn([&] {
      std::string req = p.server.read_until_eof();
      p.server.write_all("got " + std::to_string(req.size()));
      p.server.close();
    });
    p.client.write_all("abcdef");
    p.client.shutdown(cogent::net::shutdown_how::write);
    CHECK(p.client.read_until_eof() == "got 6");
    char c;
    CHECK(p.client.read_some(&c, 1) == 0);  // EOF stays EOF
    srv.get();
  }
  {
    // read_exactly() hitting EOF raises end_of_stream with the partial count.
    auto p = make_pair();
    p.server.write_all("abc");
    p.server.close();
    char buf[8] = {};
    try {
      p.client.read_exactly(buf, 8);
      FAIL("no end_of_stream");
    } catch (const cogent::net::end_of_stream& e) {
      CHECK(e.bytes_read() == 3);
      CHECK(e.bytes_wanted() == 8);
      CHECK(std::string(buf, 3) == "abc");
    }
  }
  {
    // read_until_eof() with a limit.
    auto p = make_pair();
    p.server.write_all(std::string(1000, 'x'));
    p.server.close();
    CHECK(errno_of([&] { p.client.read_until_eof(999); }) == EMSGSIZE);
  }
  {
    auto p = make_pair();
    p.server.write_all(std::string(1000, 'y'));
    p.server.close();
    CHECK(p.client.read_until_eof(1000) == std::string(1000, 'y'));
  }
  {
    // Zero-length reads and writes do nothing.
    auto p = make_pair();
    char c;
    CHECK(p.client.read_some(&c, 0) == 0);
    CHECK(p.client.write_some(&c, 0) == 0);
    p.client.write_all("", 0);
  }
}

COGENT_TEST_CASE("tcp: peer reset mid-send raises ECONNRESET/EPIPE, never SIGPIPE", doctest::timeout(20)) {
  struct sigaction sa {};
  struct sigaction old {};
  sa.sa_handler = [](int) { g_sigpipes.fetch_add(1); };
  sigemptyset(&sa.sa_mask);
  sigaction(SIGPIPE, &sa, &old);
  g_sigpipes = 0;
  auto p = make_pair();
  auto srv = cogent::spawn([&] {
    char buf[1024];
    (void)p.server.read_some(buf, sizeof buf);  // some data arrived: now reset
    p.server.set_linger(0s);
    p.server.close();  // RST
  });
  std::vector<char> big(1 << 20, 'z');
  int err = errno_of([&] {
    for (int i = 0; i < 1000; ++i) {
      p.client.write_all(big.data(), big.size());
    }
  });
  CHECK((err == ECONNRESET || err == EPIPE));
  // The error sticks: later writes fail too, still without SIGPIPE.
  int err2 = errno_of([&] { p.client.write_all("x"); });
  CHECK((err2 == EPIPE || err2 == ECONNRESET));
  srv.get();
  CHECK(g_sigpipes.load() == 0);
  {
    // A reader sees ECONNRESET as a system_error, distinct from EOF.
    auto q = make_pair();
    q.client.write_all("unread");  // unread data makes close() send RST
    cogent::sleep(10ms);
    q.server.set_linger(0s);
    q.server.close();
    char buf[16];
    CHECK(errno_of([&] { (void)q.client.read_some(buf, sizeof buf); }) == ECONNRESET);
  }
  sigaction(SIGPIPE, &old, nullptr);
}

COGENT_TEST_CASE("tcp: ECONNREFUSED", doctest::timeout(10)) {
  address dead;
  {
    auto l = listener::bind(address::ipv4_loopback(0));
    dead = l.local_address();
  }
  int before = open_fds();
  try {
    (void)stream_socket::connect(dead, 2s);
    FAIL("connected to a closed port");
  } catch (const std::system_error& e) {
    CHECK(e.code().value() == ECONNREFUSED);
    CHECK(std::string(e.what()).find(dead.to_string()) != std::string::npos);
  }
  CHECK(open_fds() == before);
}

namespace {
// full_listener() is a listener whose accept queue is full (backlog 0, one
// connection pending, never accepted): further SYNs are dropped, so a connect
// to it hangs until its timeout. Returns the clients that filled it.
std::vector<stream_socket> fill_backlog(const listener& l) {
  std::vector<stream_socket> fillers;
  for (int i = 0; i < 8; ++i) {
    try {
      fillers.push_back(stream_socket::connect(l.local_address(), 200ms));
    } catch (const std::system_error& e) {
      REQUIRE(e.code().value() == ETIMEDOUT);
      return fillers;
    }
  }
  FAIL("could not fill the accept queue");
  return fillers;
}
}  // namespace

COGENT_TEST_CASE("tcp: connect timeout (full accept queue) raises ETIMEDOUT, no fd leak",
                 doctest::timeout(20)) {
  cogent::net::listen_options lo;
  lo.backlog = 0;
  auto l = listener::bind(address::ipv4_loopback(0), lo);
  auto fillers = fill_backlog(l);
  int before = open_fds();
  auto t0 = cogent::clock::now();
  CHECK(errno_of([&] { (void)stream_socket::connect(l.local_address(), 100ms); }) == ETIMEDOUT);
  auto took = cogent::clock::now() - t0;
  CHECK(took >= 90ms);
  CHECK(took < 2s);
  CHECK(open_fds() == before);
  // The same through a Timeout scope: cogent::timeout_error, no leak.
  bool timed_out = !cogent::try_with_timeout(100ms, [&] { (void)stream_socket::connect(l.local_address()); });
  CHECK(timed_out);
  CHECK(open_fds() == before);
  // Killed while connecting: the op is cancelled and reaped, the fd closed.
  auto t = cogent::spawn([&] { (void)stream_socket::connect(l.local_address()); });
  cogent::sleep(20ms);
  t.kill();
  CHECK(t.killed());
  CHECK(open_fds() == before);
}

COGENT_TEST_CASE("tcp: accept and recv timed out or killed leak nothing", doctest::timeout(20)) {
  auto l = listener::bind(address::ipv4_loopback(0));
  int before = open_fds();
  // Per-call timeout.
  auto t0 = cogent::clock::now();
  CHECK(errno_of([&] { (void)l.accept(50ms); }) == ETIMEDOUT);
  CHECK(cogent::clock::now() - t0 >= 45ms);
  // Per-socket default timeout.
  l.set_timeout(30ms);
  CHECK(errno_of([&] { (void)l.accept(); }) == ETIMEDOUT);
  // nullopt overrides the default for one call (here bounded by a Timeout scope).
  CHECK(!cogent::try_with_timeout(60ms, [&] { (void)l.accept(std::nullopt); }));
  l.set_timeout(std::nullopt);
  // Killed in accept.
  auto acc = cogent::spawn([&] { (void)l.accept(); });
  cogent::sleep(10ms);
  acc.kill();
  CHECK(acc.killed());
  CHECK(open_fds() == before);

  auto p = make_pair();
  int with_pair = open_fds();
  char buf[16];
  CHECK(errno_of([&] { (void)p.client.read_some(buf, sizeof buf, 30ms); }) == ETIMEDOUT);
  p.client.set_timeout(20ms);
  CHECK(errno_of([&] { p.client.read_exactly(buf, sizeof buf); }) == ETIMEDOUT);
  try {
    (void)p.client.read_some(buf, sizeof buf);
    FAIL("no timeout");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::timed_out);
    CHECK(std::string(e.what()).find("timed out") != std::string::npos);
  }
  p.client.set_timeout(std::nullopt);
  CHECK(!cogent::try_with_timeout(30ms, [&] { (void)p.client.read_some(buf, sizeof buf); }));
  auto rd = cogent::spawn([&] { (void)p.client.read_some(buf, sizeof buf); });
  cogent::sleep(10ms);
  rd.kill();
  CHECK(rd.killed());
  // The socket still works after all that.
  p.server.write_all("ok");
  p.client.read_exactly(buf, 2);
  CHECK(std::string(buf, 2) == "ok");
  CHECK(open_fds() == with_pair);
}

COGENT_TEST_CASE("tcp: an accept that won the race with a kill has its fd closed", doctest::timeout(20)) {
  auto l = listener::bind(address::ipv4_loopback(0));
  int released = 0;
  int cancelled = 0;
  for (int round = 0; round < 20; ++round) {
    int before = open_fds();
    bool accepted = false;
    auto acc = cogent::spawn([&] {
      (void)l.accept();
      accepted = true;
    });
    cogent::yield();  // the accepter parks in its accept op
    // Connect with a plain blocking syscall (the handshake completes in the
    // kernel), then kill the accepter before the hub has reaped the accept:
    // either the cancel wins (the connection stays queued) or the accept
    // returned an fd that the release hook must close.
    int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(::connect(c, l.local_address().sockaddr_ptr(), l.local_address().sockaddr_len()) == 0);
    acc.kill();
    CHECK(acc.killed());
    CHECK(!accepted);
    // Was the connection consumed by the killed accept?
    try {
      stream_socket left = l.accept(20ms);
      ++cancelled;
    } catch (const std::system_error& e) {
      CHECK(e.code().value() == ETIMEDOUT);
      ++released;
    }
    ::close(c);
    CHECK(open_fds() == before);
  }
  MESSAGE("accept won the race and its fd was released: " << released << ", cancel won: " << cancelled);
}

COGENT_TEST_CASE("tcp: close() wakes fibers blocked on the socket with EBADF", doctest::timeout(10)) {
  auto p = make_pair();
  int before = open_fds();
  int reader_err = 0;
  auto rd = cogent::spawn([&] {
    char buf[8];
    reader_err = errno_of([&] { (void)p.client.read_some(buf, sizeof buf); });
  });
  cogent::sleep(10ms);
  p.client.close();
  rd.get();
  CHECK(reader_err == EBADF);
  CHECK(open_fds() == before - 1);

  auto l = listener::bind(address::ipv4_loopback(0));
  int acc_errs = 0;
  std::vector<cogent::task<void>> accepters;
  for (int i = 0; i < 3; ++i) {
    accepters.push_back(cogent::spawn([&] { acc_errs += errno_of([&] { (void)l.accept(); }) == EBADF; }));
  }
  cogent::sleep(10ms);
  l.close();
  cogent::joinall(accepters);
  CHECK(acc_errs == 3);
}

COGENT_TEST_CASE("tcp: IO on a closed or moved-from socket raises EBADF", doctest::timeout(10)) {
  auto p = make_pair();
  stream_socket moved = std::move(p.client);
  char buf[4];
  CHECK(errno_of([&] { (void)p.client.read_some(buf, 4); }) == EBADF);
  CHECK(errno_of([&] { p.client.write_all("x"); }) == EBADF);
  moved.close();
  CHECK(errno_of([&] { (void)moved.read_some(buf, 4); }) == EBADF);
  CHECK(errno_of([&] { moved.read_exactly(buf, 4); }) == EBADF);
  CHECK(errno_of([&] { (void)moved.write_some("x", 1); }) == EBADF);
  CHECK(errno_of([&] { moved.shutdown(); }) == EBADF);
  CHECK(errno_of([&] { (void)moved.peer_address(); }) == EBADF);
  CHECK(errno_of([&] { (void)moved.local_address(); }) == EBADF);
  CHECK(errno_of([&] { moved.set_nodelay(true); }) == EBADF);
  try {
    (void)moved.read_some(buf, 4);
  } catch (const std::system_error& e) {
    CHECK(std::string(e.what()).find("closed socket") != std::string::npos);
  }
  listener l;
  CHECK(errno_of([&] { (void)l.accept(); }) == EBADF);
  udp_socket u;
  CHECK(errno_of([&] { (void)u.send_to("x", 1, address::ipv4_loopback(9)); }) == EBADF);
  CHECK_THROWS_AS((void)stream_socket::connect(address()), std::invalid_argument);
}

COGENT_TEST_CASE("tcp: options", doctest::timeout(10)) {
  auto p = make_pair();
  p.client.set_nodelay(true);
  CHECK(p.client.nodelay());
  p.client.set_nodelay(false);
  CHECK(!p.client.nodelay());
  p.client.set_keepalive(true, 30s, 5s, 3);
  CHECK(p.client.get_option<int>(SOL_SOCKET, SO_KEEPALIVE) == 1);
  CHECK(p.client.get_option<int>(IPPROTO_TCP, TCP_KEEPIDLE) == 30);
  CHECK(p.client.get_option<int>(IPPROTO_TCP, TCP_KEEPINTVL) == 5);
  CHECK(p.client.get_option<int>(IPPROTO_TCP, TCP_KEEPCNT) == 3);
  p.client.set_send_buffer_size(64 * 1024);
  CHECK(p.client.send_buffer_size() >= 64 * 1024);
  p.client.set_receive_buffer_size(64 * 1024);
  CHECK(p.client.receive_buffer_size() >= 64 * 1024);
  p.client.set_option(SOL_SOCKET, SO_RCVLOWAT, 1);
  CHECK(p.client.get_option<int>(SOL_SOCKET, SO_RCVLOWAT) == 1);
  p.client.set_linger(5s);
  CHECK(p.client.get_option<linger>(SOL_SOCKET, SO_LINGER).l_linger == 5);
  p.client.set_linger(std::nullopt);
  CHECK(p.client.pending_error() == 0);
  CHECK(errno_of([&] { p.client.set_option(SOL_SOCKET, 9999, 1); }) != 0);
  CHECK(p.client.timeout() == std::nullopt);
  p.client.set_timeout(1s);
  CHECK(p.client.timeout() == cogent::timeout_duration(1s));
  int fd = p.client.release();
  CHECK(fd >= 0);
  CHECK(!p.client.is_open());
  stream_socket adopted(fd);
  CHECK(adopted.fd() == fd);
  // SO_REUSEPORT: two listeners on one port.
  cogent::net::listen_options lo;
  lo.reuse_port = true;
  auto l1 = listener::bind(address::ipv4_loopback(0), lo);
  auto l2 = listener::bind(address::ipv4_loopback(l1.port()), lo);
  CHECK(l1.port() == l2.port());
  // Without it the port is taken.
  CHECK(errno_of([&] { (void)listener::bind(address::ipv4_loopback(l1.port())); }) == EADDRINUSE);
}

COGENT_TEST_CASE("tcp: IPv6 loopback", doctest::timeout(10)) {
  listener l;
  try {
    l = listener::bind(address::ipv6_loopback(0));
  } catch (const std::system_error& e) {
    MESSAGE("IPv6 loopback unavailable, skipped: " << e.what());
    return;
  }
  auto srv = cogent::spawn([&] {
    address peer;
    auto c = l.accept(peer);
    CHECK(peer.is_ipv6());
    char buf[8];
    std::size_t n = c.read_some(buf, sizeof buf);
    c.write_all(buf, n);
  });
  auto s = stream_socket::connect(address::parse("::1", l.port()), 2s);
  CHECK(s.local_address().to_string().rfind("[::1]:", 0) == 0);
  s.write_all("six");
  char buf[3];
  s.read_exactly(buf, 3);
  CHECK(std::string(buf, 3) == "six");
  srv.get();
  // Dual stack: an IPv6 wildcard listener accepts IPv4 clients (v4-mapped peers).
  listener dual;
  try {
    dual = listener::bind(address::ipv6_any(0));
  } catch (const std::system_error&) {
    return;
  }
  auto acc = cogent::spawn([&] {
    address peer;
    (void)dual.accept(peer);
    return peer;
  });
  auto s4 = stream_socket::connect(address::ipv4_loopback(dual.port()), 2s);
  CHECK(acc.get().is_loopback());
}

// ---- UDP ----------------------------------------------------------------------

COGENT_TEST_CASE("udp: send_to/receive_from, connected send/receive, timeout", doctest::timeout(10)) {
  auto a = udp_socket::bind(address::ipv4_loopback(0));
  auto b = udp_socket::bind(address::ipv4_loopback(0));
  CHECK(a.send_to("hello", 5, b.local_address()) == 5);
  char buf[64];
  address from;
  std::size_t n = b.receive_from(buf, sizeof buf, from);
  CHECK(std::string(buf, n) == "hello");
  CHECK(from == a.local_address());
  // Concurrent receive while another fiber sends.
  auto rx = cogent::spawn([&] {
    address f;
    char tmp[64];
    std::size_t m = a.receive_from(tmp, sizeof tmp, f);
    return std::string(tmp, m);
  });
  cogent::yield();
  b.send_to("back", 4, a.local_address());
  CHECK(rx.get() == "back");
  // Connected.
  a.connect(b.local_address());
  CHECK(a.send("c", 1) == 1);
  CHECK(b.receive(buf, sizeof buf) == 1);
  // Timeout.
  CHECK(errno_of([&] { (void)b.receive_from(buf, sizeof buf, from, 30ms); }) == ETIMEDOUT);
  // Truncation: the rest of a long datagram is dropped.
  std::string big(100, 'q');
  a.send(big.data(), big.size());
  CHECK(b.receive(buf, 10) == 10);
  CHECK(errno_of([&] { (void)b.receive(buf, sizeof buf, 20ms); }) == ETIMEDOUT);
  CHECK_THROWS_AS((void)udp_socket::open(cogent::net::address_family::unix_domain), std::invalid_argument);
  auto six = udp_socket::open(cogent::net::address_family::ipv4);
  CHECK(six.is_open());
}

COGENT_TEST_CASE("udp: IPv6 loopback", doctest::timeout(10)) {
  udp_socket a;
  udp_socket b;
  try {
    a = udp_socket::bind(address::ipv6_loopback(0));
    b = udp_socket::bind(address::ipv6_loopback(0));
  } catch (const std::system_error& e) {
    MESSAGE("IPv6 loopback unavailable, skipped: " << e.what());
    return;
  }
  CHECK(a.local_address().is_ipv6());
  CHECK(a.local_address().is_loopback());
  CHECK(a.local_address().to_string().rfind("[::1]:", 0) == 0);
  CHECK(a.send_to("over six", 8, b.local_address()) == 8);
  char buf[64];
  address from;
  std::size_t n = b.receive_from(buf, sizeof buf, from, 2s);
  CHECK(std::string(buf, n) == "over six");
  CHECK(from.is_ipv6());
  CHECK(from == a.local_address());
  // A receive parked while the other side sends.
  auto rx = cogent::spawn([&] {
    address f;
    char tmp[64];
    std::size_t m = a.receive_from(tmp, sizeof tmp, f, 2s);
    return std::make_pair(std::string(tmp, m), f);
  });
  cogent::yield();
  CHECK(b.send_to("back", 4, from) == 4);
  auto [msg, sender] = rx.get();
  CHECK(msg == "back");
  CHECK(sender == b.local_address());
  // Connected, and a timeout.
  a.connect(b.local_address());
  CHECK(a.send("c6", 2) == 2);
  CHECK(b.receive(buf, sizeof buf, 2s) == 2);
  CHECK(std::string(buf, 2) == "c6");
  CHECK(errno_of([&] { (void)b.receive(buf, sizeof buf, 20ms); }) == ETIMEDOUT);
  auto unbound = udp_socket::open(cogent::net::address_family::ipv6);
  CHECK(unbound.send_to("u", 1, b.local_address()) == 1);
  CHECK(b.receive_from(buf, sizeof buf, from, 2s) == 1);
  CHECK(from.is_ipv6());
}

// ---- Unix-domain ----------------------------------------------------------------------

COGENT_TEST_CASE("unix: stream sockets on a path and in the abstract namespace", doctest::timeout(10)) {
  std::string path = temp_socket_path("u1");
  ::unlink(path.c_str());
  for (const address& at :
       {address::unix_path(path), address::unix_abstract("cogent-test-" + std::to_string(::getpid()))}) {
    auto l = listener::bind(at);
    CHECK(l.local_address() == at);
    CHECK(l.port() == 0);
    auto srv = cogent::spawn([&] {
      address peer;
      auto c = l.accept(peer);
      CHECK(peer.is_unix());
      std::string got(4, '\0');
      c.read_exactly(got.data(), 4);
      c.write_all(got + "!");
    });
    auto s = stream_socket::connect(at, 1s);
    CHECK(s.peer_address() == at);
    s.write_all("unix");
    CHECK(s.read_until_eof() == "unix!");
    srv.get();
  }
  // The file stays after close; rebinding needs unlink_existing.
  CHECK(errno_of([&] { (void)listener::bind(address::unix_path(path)); }) == EADDRINUSE);
  cogent::net::listen_options lo;
  lo.unlink_existing = true;
  auto again = listener::bind(address::unix_path(path), lo);
  CHECK(again.is_open());
  // A live listener's file is not stale: unlink_existing leaves it, and the live one keeps its clients.
  try {
    (void)listener::bind(address::unix_path(path), lo);
    FAIL("bind took the path of a live listener");
  } catch (const std::system_error& e) {
    CHECK(e.code().value() == EADDRINUSE);
    CHECK(std::string(e.what()).find("live") != std::string::npos);
  }
  auto take = cogent::spawn([&] {
    auto probe = again.accept(2s);  // the liveness probe: connected, then closed at once
    CHECK(probe.read_until_eof(64, 2s).empty());
    auto c = again.accept(2s);
    c.write_all("still mine");
  });
  auto probe_client = stream_socket::connect(address::unix_path(path), 1s);
  CHECK(probe_client.read_until_eof(64, 2s) == "still mine");
  take.get();
  ::unlink(path.c_str());
  CHECK(errno_of([&] { (void)stream_socket::connect(address::unix_path(path + ".missing")); }) == ENOENT);
}

// ---- resolver ----------------------------------------------------------------------------

namespace {

// hub_runs_during_slow_lookup() proves `lookup` (which resolves a name) does
// not block the hub. Every worker of the default thread pool is first kept
// busy for 200 ms, so the lookup's getaddrinfo waits behind them; a ticker
// fiber ticks once a millisecond. Read the moment the lookup returns, the
// ticks must cover most of the time it took: had the lookup blocked the hub
// thread, the ticker (spawned just before) could not have ticked at all; had
// it bypassed the pool, it would not have waited ~200 ms.
template <class Fn>
void hub_runs_during_slow_lookup(const char* what, Fn&& lookup) {
  cogent::threadpool& pool = cogent::default_threadpool();
  std::vector<cogent::task<void>> busy;
  for (std::size_t i = 0; i < pool.size(); ++i) {
    busy.push_back(cogent::spawn([] { cogent::run_in_thread([] { std::this_thread::sleep_for(200ms); }); }));
  }
  for (int i = 0; i < 1000 && pool.pending() < pool.size(); ++i) {
    cogent::yield();
  }
  REQUIRE(pool.pending() >= pool.size());
  int ticks = 0;
  bool done = false;
  auto ticker = cogent::spawn([&] {
    while (!done) {
      ++ticks;
      cogent::sleep(1ms);
    }
  });
  auto t0 = cogent::clock::now();
  lookup();
  auto took = cogent::clock::now() - t0;
  int ticks_during = ticks;  // no switch since the lookup returned
  done = true;
  ticker.join();
  cogent::joinall(busy);
  auto took_ms = std::chrono::duration_cast<std::chrono::milliseconds>(took).count();
  MESSAGE(std::string(what) << ": took " << took_ms << " ms, ticker ticked " << ticks_during
                            << " times meanwhile");
  CHECK(took >= 100ms);
  CHECK(ticks_during >= 20);
  CHECK(ticks_during >= took_ms / 10);
}

}  // namespace

COGENT_TEST_CASE("resolver: localhost, literals, create_connection, misuse", doctest::timeout(30)) {
  auto addrs = cogent::net::resolve("localhost", 80);
  REQUIRE(!addrs.empty());
  bool has_v4_loopback = false;
  for (const auto& a : addrs) {
    CHECK(a.is_loopback());
    CHECK(a.port() == 80);
    has_v4_loopback |= (a == address::ipv4_loopback(80));
  }
  CHECK(has_v4_loopback);
  cogent::net::resolve_options v4;
  v4.family = cogent::net::address_family::ipv4;
  auto only4 = cogent::net::resolve("localhost", 81, v4);
  REQUIRE(!only4.empty());
  for (const auto& a : only4) {
    CHECK(a.is_ipv4());
  }
  // Literals are parsed in place.
  CHECK(cogent::net::resolve("10.1.2.3", 5) == std::vector<address>{address::parse("10.1.2.3", 5)});
  CHECK(cogent::net::resolve("[::1]", 5) == std::vector<address>{address::parse("::1", 5)});
  CHECK_THROWS_AS(cogent::net::resolve("localhost", 65536), std::invalid_argument);
  CHECK_THROWS_AS(cogent::net::resolve("", 80), std::invalid_argument);
  CHECK_THROWS_AS(cogent::net::create_connection("localhost", -1), std::invalid_argument);
  // A name that cannot resolve (a NUL-free name with an invalid label).
  try {
    cogent::net::resolve("bad..name", 80);
    FAIL("resolved bad..name");
  } catch (const std::system_error& e) {
    MESSAGE("bad..name: " << std::string(e.what()));
  }
  // Other fibers keep running while a name is resolved (resolve() and the
  // lookup inside create_connection()).
  hub_runs_during_slow_lookup("resolve", [] { (void)cogent::net::resolve("localhost", 1); });
  auto l = listener::bind(address::ipv4_loopback(0));
  auto acc = cogent::spawn([&] { return l.accept(); });
  stream_socket s;
  hub_runs_during_slow_lookup("create_connection",
                              [&] { s = cogent::net::create_connection("localhost", l.port(), 2s); });
  CHECK(s.peer_address() == l.local_address());
  auto c = acc.get();
  // Nothing listens: the last attempt's error comes back.
  int dead_port = l.port();
  l.close();
  CHECK(errno_of([&] { (void)cogent::net::create_connection("127.0.0.1", dead_port, 1s); }) == ECONNREFUSED);
}

// Regression found in review: bytes received in the same hub turn as a
// Timeout's expiry are returned, not dropped; the timeout is raised at the
// next blocking call.
COGENT_TEST_CASE("a recv that completes as its Timeout fires keeps its bytes", doctest::timeout(10)) {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  cogent::net::stream_socket s(sv[0]);
  std::size_t got = 0;
  bool timeout_later = false;
  auto t = cogent::spawn([&] {
    char buf[64];
    try {
      cogent::timeout to(5ms);
      got = s.read_some(buf, sizeof buf);
      cogent::sleep(1s);  // the pending timeout is raised here
    } catch (const cogent::timeout_error&) {
      timeout_later = true;
    }
  });
  cogent::sleep(1ms);  // the recv is in flight
  REQUIRE(::write(sv[1], "hello", 5) == 5);
  auto until = std::chrono::steady_clock::now() + 20ms;
  while (std::chrono::steady_clock::now() < until) {
    // hold the hub: the completion and the expired timer land in one turn
  }
  t.join();
  ::close(sv[1]);
  CHECK(got == 5);
  CHECK(timeout_later);
}

// ---- interrupts and deadlines against a fast peer ------------------------------------
// Every op below completes at once (the peer always has data ready or room to take
// it), so none of them ever waits for the timer or the cancel: the interrupt and
// the deadline must still land.

COGENT_TEST_CASE("kill lands in a read_some loop fed by a fast sender", doctest::timeout(20)) {
  auto p = make_pair();
  bool stop_sender = false;
  auto snd = cogent::spawn([&] {
    std::string chunk(64 << 10, 'y');
    while (!stop_sender) {
      p.server.write_all(chunk);
    }
  });
  auto rd = cogent::spawn([&] {
    char buf[16384];
    while (p.client.read_some(buf, sizeof buf) > 0) {
    }
  });
  cogent::sleep(20ms);
  rd.kill(nullptr, /*block=*/true, 1s);
  CHECK(rd.ready());
  CHECK(rd.killed());
  stop_sender = true;
  p.client.close();
  cogent::joinall({snd, rd}, 2s);
  CHECK(snd.ready());
}

COGENT_TEST_CASE("a Timeout scope lands in a write_all loop to a fast reader", doctest::timeout(20)) {
  auto p = make_pair();
  bool stop = false;
  auto rd = cogent::spawn([&] {
    std::vector<char> buf(1 << 20);
    while (!stop && p.server.read_some(buf.data(), buf.size(), 2s) > 0) {
    }
  });
  std::string chunk(64 << 10, 'x');
  auto t0 = cogent::clock::now();
  bool done = cogent::try_with_timeout(30ms, [&] {
    while (cogent::clock::now() - t0 < 2s) {  // bounded: before the fix the Timeout never landed
      p.client.write_all(chunk);
    }
  });
  CHECK_FALSE(done);
  CHECK(cogent::clock::now() - t0 < 500ms);
  stop = true;
  p.client.close();
  rd.join(2s);
  CHECK(rd.ready());
}

COGENT_TEST_CASE("write_all and read_exactly bound the whole call even when every op completes at once",
                 doctest::timeout(30)) {
  {
    auto p = make_pair();
    std::vector<char> big(64u << 20, 'x');
    auto rd = cogent::spawn([&] {
      std::vector<char> buf(1 << 20);
      while (p.server.read_some(buf.data(), buf.size(), 2s) > 0) {
      }
    });
    auto t0 = cogent::clock::now();
    CHECK(errno_of([&] { p.client.write_all(big.data(), big.size(), 5ms); }) == ETIMEDOUT);
    CHECK(cogent::clock::now() - t0 < 200ms);
    p.client.close();
    rd.join(2s);
    CHECK(rd.ready());
  }
  {
    auto p = make_pair();
    bool stop = false;
    auto snd = cogent::spawn([&] {
      std::string chunk(256 << 10, 'z');
      while (!stop) {
        p.server.write_all(chunk);
      }
    });
    std::vector<char> big(256u << 20);
    auto t0 = cogent::clock::now();
    CHECK(errno_of([&] { p.client.read_exactly(big.data(), big.size(), 5ms); }) == ETIMEDOUT);
    CHECK(cogent::clock::now() - t0 < 200ms);
    stop = true;
    p.client.close();
    snd.join(2s);
    CHECK(snd.ready());
  }
}

// A second close() returns at once (the socket is already closed); its caller may
// destroy the socket while the first close() is still waking the blocked fibers,
// and those must not touch the object again (ASan: heap-use-after-free before).
COGENT_TEST_CASE("a second close() and destroy while a reader is being woken", doctest::timeout(10)) {
  auto p = make_pair();
  auto holder = std::make_unique<stream_socket>(std::move(p.client));
  int rerr = 0;
  std::string what;
  auto r = cogent::spawn([&] {
    char b[16];
    try {
      (void)holder->read_some(b, sizeof b);
    } catch (const std::system_error& e) {
      rerr = e.code().value();
      what = e.what();
    }
  });
  cogent::sleep(5ms);
  auto c1 = cogent::spawn([&] { holder->close(); });
  auto c2 = cogent::spawn([&] {
    holder->close();
    holder.reset();
  });
  cogent::joinall({r, c1, c2});
  CHECK(rerr == EBADF);
  CHECK(what.find("read_some: socket closed while waiting") != std::string::npos);
}

COGENT_TEST_CASE("a close() raises socket_closed_error in a waiting fiber and at every later call; moved-from: plain EBADF",
                 doctest::timeout(10)) {
  auto p = make_pair();
  bool typed = false;
  auto r = cogent::spawn([&] {
    char b[16];
    try {
      (void)p.client.read_some(b, sizeof b);
    } catch (const cogent::net::socket_closed_error& e) {
      typed = e.code().value() == EBADF;
    }
  });
  cogent::sleep(5ms);
  p.client.close();
  CHECK(r.join(2s));
  CHECK(typed);
  char b[4];
  CHECK_THROWS_AS((void)p.client.read_some(b, sizeof b), cogent::net::socket_closed_error);
  CHECK_THROWS_AS(p.client.write_all("x"), cogent::net::socket_closed_error);
  CHECK(p.client.fd() == -1);
  CHECK(!p.client.is_open());
  stream_socket taken = std::move(p.server);
  try {
    (void)p.server.read_some(b, sizeof b);
    FAIL("read on a moved-from socket did not throw");
  } catch (const cogent::net::socket_closed_error&) {
    FAIL("a moved-from socket was not closed by close()");
  } catch (const std::system_error& e) {
    CHECK(e.code().value() == EBADF);
  }
}

COGENT_TEST_CASE("a nanoseconds::max() timeout means no timeout", doctest::timeout(10)) {
  auto p = make_pair();
  auto r = cogent::spawn([&] {
    char b[4];
    return errno_of([&] { (void)p.client.read_some(b, 4, std::chrono::nanoseconds::max()); });
  });
  cogent::sleep(20ms);
  CHECK_FALSE(r.ready());
  p.server.write_all("x");
  CHECK(r.get() == 0);
  CHECK(cogent::deadline_after(std::chrono::nanoseconds::max()) == cogent::clock::time_point::max());
}
