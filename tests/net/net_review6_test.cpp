// tests/net/net_review6_test.cpp — adversarial review of net/: kill/Timeout during each socket op
// and reuse afterwards, sockets shared by fibers, peer resets mid write_all, stop() racing new
// connections, descriptor leaks (counted in /proc/self/fd), header claims.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include "hub/threadpool.hpp"
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
using cogent::test::errno_of;
using cogent::test::make_pair;
using cogent::test::open_fds;

namespace {
// full_listener() is a listener with backlog 0 whose queue is filled, so a further connect hangs
// in SYN_SENT (the kernel drops the SYN). The fillers are returned to keep them alive.
struct full_listener {
  listener l;
  std::vector<int> fillers;
  full_listener() {
    cogent::net::listen_options o;
    o.backlog = 0;
    l = listener::bind(address::ipv4_loopback(0), o);
    for (int i = 0; i < 4; ++i) {
      int c = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      (void)::connect(c, l.local_address().sockaddr_ptr(), l.local_address().sockaddr_len());
      fillers.push_back(c);
    }
    cogent::sleep(20ms);
  }
  ~full_listener() {
    for (int c : fillers) {
      ::close(c);
    }
  }
};
}  // namespace

// ---- kill / Timeout during each op, then reuse ----------------------------------------------

COGENT_TEST_CASE("review6: accept interrupted by a Timeout, a kill and its own timeout, then reused") {
  int before = open_fds();
  {
    auto l = listener::bind(address::ipv4_loopback(0));
    // Timeout scope.
    bool timed_out = false;
    try {
      cogent::timeout t(20ms);
      (void)l.accept();
    } catch (const cogent::timeout_error&) {
      timed_out = true;
    }
    CHECK(timed_out);
    // Per-call timeout.
    CHECK(errno_of([&] { (void)l.accept(10ms); }) == ETIMEDOUT);
    // Socket default timeout.
    l.set_timeout(10ms);
    CHECK(errno_of([&] { (void)l.accept(); }) == ETIMEDOUT);
    l.set_timeout(std::nullopt);
    // Kill.
    auto k = cogent::spawn([&] { (void)l.accept(); });
    cogent::sleep(5ms);
    k.kill();
    CHECK(k.killed());
    // Reuse: a client that connects now is accepted, and talks.
    auto acc = cogent::spawn([&] {
      address peer;
      auto s = l.accept(peer, 2s);
      s.write_all("ok");
      return peer;
    });
    auto c = stream_socket::connect(l.local_address(), 2s);
    char b[2];
    c.read_exactly(b, 2, 2s);
    CHECK(std::string(b, 2) == "ok");
    CHECK(acc.get() == c.local_address());
  }
  CHECK(open_fds() == before);
}

COGENT_TEST_CASE("review6: connect interrupted (timeout, Timeout scope, kill) leaks no fd; listener reused") {
  int before = open_fds();
  {
    full_listener fl;
    int mid = open_fds();
    address to = fl.l.local_address();
    CHECK(errno_of([&] { (void)stream_socket::connect(to, 30ms); }) == ETIMEDOUT);
    bool timed_out = false;
    try {
      cogent::timeout t(30ms);
      (void)stream_socket::connect(to);
    } catch (const cogent::timeout_error&) {
      timed_out = true;
    }
    CHECK(timed_out);
    auto k = cogent::spawn([&] { (void)stream_socket::connect(to); });
    cogent::sleep(10ms);
    k.kill();
    CHECK(k.killed());
    CHECK(open_fds() == mid);
    // Drain the queue: a connect now succeeds and is accepted.
    for (std::size_t i = 0; i < fl.fillers.size(); ++i) {
      try {
        (void)fl.l.accept(50ms);
      } catch (const std::system_error&) {
      }
    }
    auto acc = cogent::spawn([&] { return fl.l.accept(2s); });
    auto c = stream_socket::connect(to, 2s);
    auto s = acc.get();
    c.write_all("x");
    char b;
    CHECK(s.read_some(&b, 1, 1s) == 1);
  }
  CHECK(open_fds() == before);
}

COGENT_TEST_CASE("review6: recv interrupted three ways, then the socket reads everything sent later") {
  auto p = make_pair();
  char buf[64];
  bool timed_out = false;
  try {
    cogent::timeout t(10ms);
    (void)p.server.read_some(buf, sizeof buf);
  } catch (const cogent::timeout_error&) {
    timed_out = true;
  }
  CHECK(timed_out);
  CHECK(errno_of([&] { (void)p.server.read_some(buf, sizeof buf, 10ms); }) == ETIMEDOUT);
  auto k = cogent::spawn([&] { (void)p.server.read_some(buf, sizeof buf); });
  cogent::sleep(5ms);
  k.kill();
  // read_exactly timed out with part of the data: the rest still arrives in order.
  p.client.write_all("abc");
  char ex[6] = {};
  CHECK(errno_of([&] { p.server.read_exactly(ex, 6, 30ms); }) == ETIMEDOUT);
  p.client.write_all("defghi");
  std::string got;
  while (got.size() < 6) {
    std::size_t n = p.server.read_some(buf, sizeof buf, 1s);
    REQUIRE(n > 0);
    got.append(buf, n);
  }
  // Bytes the timed-out read_exactly had received are in its buffer (ex), the rest follow.
  CHECK(std::string(ex, 3) + got == "abcdefghi");
}

COGENT_TEST_CASE("review6: send interrupted while the peer reads nothing; the stream continues after") {
  auto p = make_pair();
  std::string big(32 << 20, 'z');
  // write_all timed out: some prefix went.
  CHECK(errno_of([&] { p.client.write_all(big, 30ms); }) == ETIMEDOUT);
  bool timed_out = false;
  try {
    cogent::timeout t(20ms);
    p.client.write_all(big);
  } catch (const cogent::timeout_error&) {
    timed_out = true;
  }
  CHECK(timed_out);
  auto k = cogent::spawn([&] { p.client.write_all(big); });
  cogent::sleep(10ms);
  k.kill();
  CHECK(k.killed());
  // Drain, then the socket still writes and the peer sees the marker at the end.
  p.client.shutdown();
  auto rest = p.server.read_until_eof(64 << 20, 3s);
  CHECK(rest.size() > 0);
  CHECK(rest.find_first_not_of('z') == std::string::npos);
}

// ---- two fibers on one socket -----------------------------------------------------------------

COGENT_TEST_CASE("review6: full duplex on one socket: a reader and a writer fiber, 8 MiB each way") {
  auto p = make_pair();
  const std::size_t N = 8 << 20;
  std::string out_c(N, 'c'), out_s(N, 's');
  for (std::size_t i = 0; i < N; i += 4093) {
    out_c[i] = static_cast<char>(i);
    out_s[i] = static_cast<char>(i * 7);
  }
  auto rd = [N](stream_socket& s) {
    std::string in(N, '\0');
    s.read_exactly(in.data(), N, 5s);
    return in;
  };
  auto c_r = cogent::spawn([&] { return rd(p.client); });
  auto s_r = cogent::spawn([&] { return rd(p.server); });
  auto c_w = cogent::spawn([&] { p.client.write_all(out_c, 5s); });
  auto s_w = cogent::spawn([&] { p.server.write_all(out_s, 5s); });
  CHECK(s_r.get() == out_c);
  CHECK(c_r.get() == out_s);
  c_w.get();
  s_w.get();
}

COGENT_TEST_CASE("review6: killing a socket's blocked reader leaves its writer fiber's send alone") {
  auto p = make_pair();
  const std::size_t N = 32 << 20;
  std::string big(N, 'w');
  auto reader = cogent::spawn([&] {
    char b[16];
    (void)p.client.read_some(b, sizeof b);
  });
  auto writer = cogent::spawn([&] { p.client.write_all(big, 5s); });
  cogent::sleep(10ms);  // both parked: writer on a full buffer
  reader.kill();
  CHECK(reader.killed());
  CHECK_FALSE(writer.ready());
  std::string got(N, '\0');
  p.server.read_exactly(got.data(), N, 5s);
  writer.get();
  CHECK(got == big);
  // And a Timeout on a writer leaves a blocked reader alone.
  auto reader2 = cogent::spawn([&] {
    char b[4];
    p.client.read_exactly(b, 4, 5s);
    return std::string(b, 4);
  });
  bool timed_out = false;
  try {
    cogent::timeout t(20ms);
    p.client.write_all(std::string(16 << 20, 'q'));
  } catch (const cogent::timeout_error&) {
    timed_out = true;
  }
  CHECK(timed_out);
  CHECK_FALSE(reader2.ready());
  p.server.write_all("pong");
  CHECK(reader2.get() == "pong");
}

COGENT_TEST_CASE("review6: two readers on one socket share the bytes; closing wakes both; fd closed") {
  auto p = make_pair();
  int fd = p.server.fd();
  std::atomic<std::size_t> total{0};
  auto rd = [&] {
    char b[8];
    try {
      for (;;) {
        std::size_t n = p.server.read_some(b, sizeof b);
        if (n == 0) {
          return std::string("eof");
        }
        total += n;
      }
    } catch (const cogent::net::socket_closed_error&) {
      return std::string("closed");
    }
  };
  auto r1 = cogent::spawn(rd);
  auto r2 = cogent::spawn(rd);
  cogent::sleep(5ms);
  p.client.write_all(std::string(1000, 'a'));
  for (int i = 0; i < 200 && total < 1000; ++i) {
    cogent::sleep(1ms);
  }
  CHECK(total == 1000);
  p.server.close();
  CHECK(r1.ready());
  CHECK(r2.ready());
  CHECK(r1.get() == "closed");
  CHECK(r2.get() == "closed");
  CHECK_FALSE(cogent::test::fd_open(fd));
}

// ---- peer reset mid write_all -----------------------------------------------------------------

COGENT_TEST_CASE("review6: peer reset mid write_all of 64 MiB raises ECONNRESET/EPIPE; then EPIPE; no leak") {
  int before = open_fds();
  {
    auto p = make_pair();
    std::string big(64 << 20, 'r');
    auto w = cogent::spawn([&] { return errno_of([&] { p.client.write_all(big, 5s); }); });
    char b[4096];
    std::size_t got = 0;
    while (got < (1 << 20)) {
      got += p.server.read_some(b, sizeof b, 2s);
    }
    p.server.set_linger(0s);
    p.server.close();  // RST
    int e = w.get();
    CHECK((e == ECONNRESET || e == EPIPE));
    int e2 = errno_of([&] { p.client.write_all("more", 1s); });
    CHECK((e2 == EPIPE || e2 == ECONNRESET));
    CHECK(errno_of([&] { (void)p.client.read_some(b, sizeof b, 1s); }) == 0);  // EOF after the reset's error
  }
  CHECK(open_fds() == before);
}


// ---- stream_server ----------------------------------------------------------------------------

namespace {
struct error_log {
  std::vector<std::string> seen;
  cogent::net::server_options opts() {
    cogent::net::server_options o;
    o.on_error = [this](const address&, std::exception_ptr e) { seen.push_back(cogent::describe_exception(e)); };
    return o;
  }
};
}  // namespace

COGENT_TEST_CASE("review6: stop(100ms) with handlers blocked reading and writing: bounded, all killed, no leak") {
  int before = open_fds();
  {
    error_log log;
    std::atomic<int> in_handler{0};
    std::string big(32 << 20, 'h');
    stream_server srv(
        address::ipv4_loopback(0),
        [&](stream_socket& s, const address&) {
          ++in_handler;
          char c;
          if (s.read_some(&c, 1) == 1 && c == 'w') {
            s.write_all(big);  // the client never reads: blocks
          }
          char b[16];
          (void)s.read_some(b, sizeof b);  // the client is silent: blocks
        },
        log.opts());
    srv.start();
    std::vector<stream_socket> clients;
    for (int i = 0; i < 6; ++i) {
      clients.push_back(stream_socket::connect(srv.address(), 2s));
      clients.back().write_all(i % 2 ? "w" : "r");
    }
    for (int i = 0; i < 200 && in_handler < 6; ++i) {
      cogent::sleep(1ms);
    }
    cogent::sleep(20ms);
    REQUIRE(srv.client_count() == 6);
    auto t0 = cogent::clock::now();
    srv.stop(100ms);
    auto took = cogent::clock::now() - t0;
    CHECK(took >= 90ms);
    CHECK(took < 1s);
    CHECK(srv.client_count() == 0);
    CHECK(log.seen.empty());
    // Every client sees its connection end (EOF, or a reset for one with unread data).
    for (auto& c : clients) {
      std::string rest;
      int e = errno_of([&] { rest = c.read_until_eof(64 << 20, 3s); });
      CHECK((e == 0 || e == ECONNRESET));
    }
  }
  CHECK(open_fds() == before);
}

COGENT_TEST_CASE("review6: stop(0) racing a stream of new connections: connectors see clean outcomes, no leak") {
  int before = open_fds();
  {
    error_log log;
    stream_server srv(address::ipv4_loopback(0), cogent::test::echo_handler, log.opts());
    srv.start();
    std::atomic<int> ok{0}, refused{0}, other{0};
    std::vector<std::string> others;
    std::atomic<bool> stop_flag{false};
    std::vector<cogent::task<void>> conns;
    for (int i = 0; i < 16; ++i) {
      conns.push_back(cogent::spawn([&] {
        while (!stop_flag) {
          try {
            auto c = stream_socket::connect(srv.address(), 1s);
            c.write_all("ping", 1s);
            char b[4];
            std::size_t n = c.read_some(b, 4, 1s);
            if (n > 0) {
              ++ok;
            }
          } catch (const std::system_error& e) {
            int v = e.code().value();
            if (v == ECONNREFUSED) {
              ++refused;
              cogent::sleep(1ms);
            } else if (v == ECONNRESET || v == EPIPE) {
              ++ok;  // cut by the stop
            } else {
              ++other;
              others.push_back(e.what());
            }
          }
        }
      }));
    }
    cogent::sleep(50ms);
    srv.stop(0s);
    CHECK(srv.client_count() == 0);
    cogent::sleep(20ms);
    stop_flag = true;
    cogent::joinall(std::vector<cogent::task_base>(conns.begin(), conns.end()));
    CHECK(ok > 0);
    CHECK(refused > 0);
    CHECK_MESSAGE(other == 0, (others.empty() ? std::string() : others.front()));
    CHECK(log.seen.empty());
    // Nothing listens any more.
    CHECK(errno_of([&] { (void)stream_socket::connect(srv.address(), 1s); }) == ECONNREFUSED);
  }
  CHECK(open_fds() == before);
}

COGENT_TEST_CASE("review6: idle_timeout ends a handler blocked in write_all to a client that takes nothing") {
  error_log log;
  auto o = log.opts();
  o.idle_timeout = 100ms;
  std::atomic<bool> ended{false};
  std::atomic<bool> raised_idle{false};
  stream_server srv(
      address::ipv4_loopback(0),
      [&](stream_socket& s, const address&) {
        struct mark {
          std::atomic<bool>& e;
          ~mark() { e = true; }
        } m{ended};
        try {
          s.write_all(std::string(64 << 20, 'x'));
        } catch (const cogent::net::idle_timeout_error&) {
          raised_idle = true;
          throw;
        }
      },
      o);
  srv.start();
  auto c = stream_socket::connect(srv.address(), 2s);
  auto t0 = cogent::clock::now();
  for (int i = 0; i < 300 && !ended; ++i) {
    cogent::sleep(10ms);
  }
  CHECK(ended);
  CHECK(raised_idle);
  CHECK(cogent::clock::now() - t0 < 2s);
  CHECK(log.seen.empty());
  CHECK(srv.client_count() == 0);
  srv.stop(0s);
}

COGENT_TEST_CASE("review6: a pool of 2 bounds handlers; 6 clients all served; stop leaves nothing") {
  int before = open_fds();
  {
    cogent::pool workers(2);
    error_log log;
    auto o = log.opts();
    o.workers = &workers;
    std::atomic<int> running{0}, peak{0};
    stream_server srv(
        address::ipv4_loopback(0),
        [&](stream_socket& s, const address&) {
          int r = ++running;
          peak = std::max(peak.load(), r);
          cogent::sleep(20ms);
          s.write_all("done");
          --running;
        },
        o);
    srv.start();
    std::vector<cogent::task<std::string>> cs;
    for (int i = 0; i < 6; ++i) {
      cs.push_back(cogent::spawn([&] {
        auto c = stream_socket::connect(srv.address(), 2s);
        return c.read_until_eof(100, 3s);
      }));
    }
    for (auto& t : cs) {
      CHECK(t.get() == "done");
    }
    CHECK(peak == 2);
    srv.stop(1s);
    CHECK(workers.size() == 0);
    CHECK(log.seen.empty());
  }
  CHECK(open_fds() == before);
}

COGENT_TEST_CASE("review6: a Timeout around serve_forever with handlers blocked in IO stops everything") {
  int before = open_fds();
  {
    error_log log;
    stream_server srv(
        address::ipv4_loopback(0),
        [&](stream_socket& s, const address&) {
          char b[4];
          (void)s.read_some(b, sizeof b);
        },
        log.opts());
    std::vector<stream_socket> clients;
    auto conn = cogent::spawn([&] {
      for (int i = 0; i < 4; ++i) {
        clients.push_back(stream_socket::connect(srv.address(), 2s));
      }
    });
    bool timed_out = false;
    auto t0 = cogent::clock::now();
    try {
      cogent::timeout t(100ms);
      srv.serve_forever();
    } catch (const cogent::timeout_error&) {
      timed_out = true;
    }
    CHECK(timed_out);
    CHECK(cogent::clock::now() - t0 < 1s);
    conn.get();
    CHECK(srv.accepted_count() == 4);
    CHECK(srv.client_count() == 0);
    CHECK_FALSE(srv.serving());
    char b;
    for (auto& c : clients) {
      CHECK(c.read_some(&b, 1, 1s) == 0);
    }
    CHECK(log.seen.empty());
  }
  CHECK(open_fds() == before);
}

// ---- create_connection's DNS wait ---------------------------------------------------------------

COGENT_TEST_CASE("review6: create_connection interrupted while its lookup waits for a busy pool, then reused") {
  auto l = listener::bind(address::ipv4_loopback(0));
  int port = l.port();
  auto& tp = cogent::default_threadpool();
  int before = open_fds();
  std::vector<cogent::task<void>> hogs;
  for (std::size_t i = 0; i < tp.size(); ++i) {
    hogs.push_back(cogent::spawn([&] { tp.run([] { std::this_thread::sleep_for(300ms); }); }));
  }
  cogent::sleep(10ms);  // every worker busy
  auto t0 = cogent::clock::now();
  bool timed_out = false;
  try {
    cogent::timeout t(30ms);
    (void)cogent::net::create_connection("localhost", port, 1s);
  } catch (const cogent::timeout_error&) {
    timed_out = true;
  }
  CHECK(timed_out);
  CHECK(cogent::clock::now() - t0 < 200ms);
  auto k = cogent::spawn([&] { (void)cogent::net::create_connection("localhost", port, 1s); });
  cogent::sleep(20ms);
  t0 = cogent::clock::now();
  k.kill();
  CHECK(k.killed());
  CHECK(cogent::clock::now() - t0 < 100ms);
  cogent::joinall(std::vector<cogent::task_base>(hogs.begin(), hogs.end()));
  // The dropped lookups finished on their workers; a new one works.
  auto acc = cogent::spawn([&] { return l.accept(2s); });
  auto c = cogent::net::create_connection("localhost", port, 1s);
  auto s = acc.get();
  c.write_all("hi");
  char b[2];
  s.read_exactly(b, 2, 1s);
  CHECK(std::string(b, 2) == "hi");
  c.close();
  s.close();
  // The two dropped lookups may still be in getaddrinfo() on other workers, holding a descriptor of
  // their own (/etc/hosts, a resolver socket) for a moment: count once they are done.
  for (int i = 0; i < 400 && tp.pending() != 0; ++i) {
    cogent::sleep(5ms);
  }
  CHECK(tp.pending() == 0);
  CHECK(open_fds() == before);
}

// ---- header claims ------------------------------------------------------------------------------

COGENT_TEST_CASE("review6: several fibers accepting on one listener each get one client; close() wakes the rest") {
  auto l = listener::bind(address::ipv4_loopback(0));
  std::vector<cogent::task<int>> accs;
  for (int i = 0; i < 5; ++i) {
    accs.push_back(cogent::spawn([&] {
      try {
        auto s = l.accept();
        char b;
        return s.read_some(&b, 1, 1s) == 1 ? static_cast<int>(b) : -1;
      } catch (const cogent::net::socket_closed_error&) {
        return -2;
      }
    }));
  }
  cogent::sleep(5ms);
  std::vector<stream_socket> cs;
  for (int i = 0; i < 3; ++i) {
    cs.push_back(stream_socket::connect(l.local_address(), 1s));
    char v = static_cast<char>('a' + i);
    cs.back().write_all(&v, 1);
  }
  cogent::sleep(20ms);
  l.close();
  std::string got;
  int closed = 0;
  for (auto& t : accs) {
    int r = t.get();
    if (r == -2) {
      ++closed;
    } else {
      got += static_cast<char>(r);
    }
  }
  std::sort(got.begin(), got.end());
  CHECK(got == "abc");
  CHECK(closed == 2);
}

COGENT_TEST_CASE("review6: server options reach the client socket: nodelay, idle limit; counters") {
  for (bool nd : {true, false}) {
    cogent::net::server_options o;
    o.nodelay = nd;
    o.idle_timeout = 5s;
    bool seen_nodelay = !nd;
    cogent::timeout_duration seen_idle;
    stream_server srv(
        address::ipv4_loopback(0),
        [&](stream_socket& s, const address& peer) {
          seen_nodelay = s.nodelay();
          seen_idle = s.idle_timeout();
          CHECK(peer == s.peer_address());
          s.write_all("x");
        },
        o);
    CHECK_FALSE(srv.serving());
    srv.start();
    CHECK(srv.serving());
    auto c = stream_socket::connect(srv.address(), 1s);
    CHECK(c.read_until_eof(10, 1s) == "x");
    CHECK(seen_nodelay == nd);
    CHECK(seen_idle == cogent::timeout_duration(5s));
    CHECK(srv.accepted_count() == 1);
    srv.stop(1s);
    CHECK_FALSE(srv.serving());
  }
}

COGENT_TEST_CASE("review6: dual-stack and ipv6_only listeners; reuse_port shares a port") {
  {
    auto l = listener::bind(address::ipv6_any(0));
    auto acc = cogent::spawn([&] {
      address peer;
      auto s = l.accept(peer, 1s);
      return peer;
    });
    auto c = stream_socket::connect(address::ipv4_loopback(l.port()), 1s);
    address peer = acc.get();
    CHECK(peer.is_ipv6());
    CHECK(peer.is_loopback());  // ::ffff:127.0.0.1
    CHECK(peer.port() == c.local_address().port());
  }
  {
    cogent::net::listen_options o;
    o.ipv6_only = true;
    auto l = listener::bind(address::ipv6_any(0), o);
    CHECK(errno_of([&] { (void)stream_socket::connect(address::ipv4_loopback(l.port()), 1s); }) == ECONNREFUSED);
  }
  {
    cogent::net::listen_options o;
    o.reuse_port = true;
    auto a = listener::bind(address::ipv4_loopback(0), o);
    auto b = listener::bind(address::ipv4_loopback(a.port()), o);
    CHECK(a.port() == b.port());
    CHECK(errno_of([&] { (void)listener::bind(address::ipv4_loopback(a.port())); }) == EADDRINUSE);
  }
}

COGENT_TEST_CASE("review6: half-close both ways and shutdown(read) waking a parked reader") {
  auto p = make_pair();
  p.client.write_all("req");
  p.client.shutdown(cogent::net::shutdown_how::write);
  CHECK(p.server.read_until_eof(100, 1s) == "req");
  p.server.write_all("resp");  // the other direction still works
  p.server.shutdown();
  CHECK(p.client.read_until_eof(100, 1s) == "resp");
  CHECK(errno_of([&] { p.client.write_all("x", 1s); }) == EPIPE);
  // shutdown(read) from another fiber: a parked reader sees EOF.
  auto q = make_pair();
  auto r = cogent::spawn([&] {
    char b[4];
    return q.server.read_some(b, sizeof b, 2s);
  });
  cogent::sleep(5ms);
  q.server.shutdown(cogent::net::shutdown_how::read);
  CHECK(r.get() == 0);
}

COGENT_TEST_CASE("review6: a listener shut down under the server: accept fails (EINVAL), one log line, stop() prompt") {
  cogent::test::stderr_capture cap;
  auto l = listener::bind(address::ipv4_loopback(0));
  int fd = l.fd();
  cogent::net::server_options o;
  o.max_accept_backoff = 20ms;
  stream_server srv(std::move(l), cogent::test::echo_handler, o);
  srv.start();
  cogent::sleep(5ms);
  ::shutdown(fd, SHUT_RDWR);
  cogent::sleep(200ms);
  auto t0 = cogent::clock::now();
  srv.stop(1s);
  CHECK(cogent::clock::now() - t0 < 100ms);
  std::string text = cap.text();
  std::size_t lines = std::count(text.begin(), text.end(), '\n');
  CHECK_MESSAGE(lines == 1, text);
  CHECK(text.find("accept failed") != std::string::npos);
}

COGENT_TEST_CASE("review6: connected UDP: an ICMP refusal raises ECONNREFUSED once; the socket is reusable") {
  auto dead = udp_socket::bind(address::ipv4_loopback(0));
  address dead_addr = dead.local_address();
  dead.close();
  auto u = udp_socket::bind(address::ipv4_loopback(0));
  u.connect(dead_addr);
  CHECK(u.send("x", 1) == 1);
  char b[8];
  int e = errno_of([&] { (void)u.receive(b, sizeof b, 500ms); });
  CHECK(e == ECONNREFUSED);
  // Connect it to a live peer: datagrams flow, and a receive timeout is plain ETIMEDOUT.
  auto peer = udp_socket::bind(address::ipv4_loopback(0));
  u.connect(peer.local_address());
  CHECK(u.send("hello", 5) == 5);
  address from;
  CHECK(peer.receive_from(b, sizeof b, from, 1s) == 5);
  CHECK(from == u.local_address());
  CHECK(errno_of([&] { (void)u.receive(b, sizeof b, 10ms); }) == ETIMEDOUT);
  // A kill during receive_from, then a datagram is still delivered to the next call.
  auto k = cogent::spawn([&] {
    address f;
    (void)peer.receive_from(b, sizeof b, f);
  });
  cogent::sleep(5ms);
  k.kill();
  CHECK(u.send("again", 5) == 5);
  CHECK(peer.receive_from(b, sizeof b, from, 1s) == 5);
  CHECK(std::string(b, 5) == "again");
}

// ---- randomized: kills, Timeouts, closes and resets on shared sockets ---------------------------

COGENT_TEST_CASE("review6: random kills, Timeouts, closes and resets on shared sockets leak nothing") {
  int before = open_fds();
  std::mt19937 rng(12345);
  auto until = cogent::clock::now() + 1500ms;
  int rounds = 0;
  while (cogent::clock::now() < until) {
    ++rounds;
    auto p = make_pair();
    std::vector<cogent::task<void>> ts;
    std::string big(1 << 20, 'b');
    auto guarded = [](auto fn) {
      return [fn] {
        try {
          fn();
        } catch (const std::system_error&) {
        } catch (const cogent::net::end_of_stream&) {
        } catch (const cogent::timeout_error&) {
        }
      };
    };
    for (auto* s : {&p.client, &p.server}) {
      int to_ms = static_cast<int>(rng() % 20);
      ts.push_back(cogent::spawn(guarded([s, to_ms] {
        cogent::timeout t(std::chrono::milliseconds(to_ms + 1));
        char b[4096];
        while (s->read_some(b, sizeof b) > 0) {
        }
      })));
      ts.push_back(cogent::spawn(guarded([s, &big] {
        for (int i = 0; i < 4; ++i) {
          s->write_all(big);
        }
      })));
      ts.push_back(cogent::spawn(guarded([s] {
        char b[100];
        s->read_exactly(b, sizeof b);
      })));
    }
    cogent::sleep(std::chrono::milliseconds(rng() % 5));
    switch (rng() % 4) {
      case 0:
        ts[rng() % ts.size()].kill();
        break;
      case 1:
        p.server.close();
        break;
      case 2:
        p.client.set_linger(0s);
        p.client.close();
        break;
      default:
        p.client.shutdown(cogent::net::shutdown_how::both);
        break;
    }
    cogent::sleep(std::chrono::milliseconds(rng() % 5));
    cogent::killall(std::vector<cogent::task_base>(ts.begin(), ts.end()));
    p.client.close();
    p.server.close();
  }
  CHECK(rounds > 10);
  CHECK(open_fds() == before);
}

COGENT_TEST_CASE("review6: a Timeout hitting the destructor while another fiber's stop(2s) waits cuts it short") {
  int before = open_fds();
  std::vector<stream_socket> clients;
  bool raised_after = false;
  auto t0 = cogent::clock::now();
  cogent::task<void> stopper;
  try {
    cogent::timeout t(80ms);
    auto srv = std::make_unique<stream_server>(address::ipv4_loopback(0), [](stream_socket& s, const address&) {
      char b[4];
      (void)s.read_some(b, sizeof b);  // blocks: the client is silent
    });
    srv->start();
    for (int i = 0; i < 3; ++i) {
      clients.push_back(stream_socket::connect(srv->address(), 1s));
    }
    while (srv->client_count() < 3) {
      cogent::sleep(1ms);
    }
    stopper = cogent::spawn([&] { srv->stop(2s); });
    cogent::sleep(5ms);
    srv.reset();  // waits for the stop in progress; the Timeout fires meanwhile
    CHECK(cogent::clock::now() - t0 < 500ms);
    cogent::sleep(1s);  // the deferred Timeout is raised here
  } catch (const cogent::timeout_error&) {
    raised_after = true;
  }
  CHECK(raised_after);
  CHECK(cogent::clock::now() - t0 < 800ms);
  stopper.join();
  for (auto& c : clients) {
    char b;
    CHECK(c.read_some(&b, 1, 1s) == 0);
  }
  clients.clear();
  CHECK(open_fds() == before);
}

COGENT_TEST_CASE("review6: bad address strings and ports raise invalid_argument naming the input") {
  auto msg = [](auto fn) -> std::string {
    try {
      fn();
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "<no invalid_argument>";
  };
  CHECK(msg([] { (void)address::parse("1.2.3.4:65536"); }).find("65536") != std::string::npos);
  CHECK(msg([] { (void)address::parse("1.2.3.4:"); }).find("1.2.3.4:") != std::string::npos);
  CHECK(msg([] { (void)address::parse("1.2.3.4:+80"); }).find("bad port") != std::string::npos);
  CHECK(msg([] { (void)address::parse("::1:80"); }).find("malformed") != std::string::npos);
  CHECK(msg([] { (void)address::parse("[::1]80"); }).find("malformed") != std::string::npos);
  CHECK(msg([] { (void)address::parse("[::1]:"); }).find("bad port") != std::string::npos);
  CHECK(msg([] { (void)address::parse("localhost:80"); }).find("localhost") != std::string::npos);
  CHECK(msg([] { (void)address::parse("1.2.3.4", -1); }).find("-1") != std::string::npos);
  CHECK(msg([] { (void)address::ipv4_any(65536); }).find("65536") != std::string::npos);
  CHECK(msg([] { (void)address::ipv4_loopback(1).with_port(70000); }).find("70000") != std::string::npos);
  CHECK(msg([] { (void)address::unix_path("/tmp/x").with_port(1); }).find("/tmp/x") != std::string::npos);
  CHECK(msg([] { (void)cogent::net::resolve("localhost", 65536); }).find("65536") != std::string::npos);
  CHECK(msg([] { (void)stream_socket::connect(address()); }).find("empty") != std::string::npos);
  CHECK(msg([] { (void)listener::bind(address()); }).find("empty") != std::string::npos);
  CHECK(address::parse("[::ffff:127.0.0.1]:5").is_loopback());
  CHECK(address::parse("[::1]:80").to_string() == "[::1]:80");
  CHECK(address::parse("0.0.0.0:0").port() == 0);
}

COGENT_TEST_CASE("review6: ops on a closed socket: socket_closed_error naming the call; moved-from: plain EBADF") {
  auto p = make_pair();
  p.server.close();
  char b[4];
  auto what_of = [](auto fn) -> std::string {
    try {
      fn();
    } catch (const cogent::net::socket_closed_error& e) {
      return std::string("closed:") + e.what();
    } catch (const std::system_error& e) {
      return std::string("sys:") + std::to_string(e.code().value()) + ":" + e.what();
    }
    return "<none>";
  };
  CHECK(what_of([&] { (void)p.server.read_some(b, 4); }).find("closed:cogent::net: read_some") == 0);
  CHECK(what_of([&] { p.server.write_all("x"); }).find("closed:cogent::net: write_all") == 0);
  CHECK(what_of([&] { (void)p.server.read_until_eof(); }).find("closed:cogent::net: read_until_eof") == 0);
  CHECK(what_of([&] { p.server.shutdown(); }).find("closed:cogent::net: shutdown") == 0);
  CHECK(what_of([&] { (void)p.server.local_address(); }).find("closed:") == 0);
  CHECK(what_of([&] { (void)p.server.peer_address(); }).find("closed:") == 0);
  CHECK(what_of([&] { p.server.set_nodelay(true); }).find("closed:") == 0);
  stream_socket moved = std::move(p.client);
  CHECK(what_of([&] { (void)p.client.read_some(b, 4); }).find("sys:9:") == 0);
  auto l = listener::bind(address::ipv4_loopback(0));
  l.close();
  CHECK(what_of([&] { (void)l.accept(); }).find("closed:cogent::net: accept") == 0);
  auto u = udp_socket::bind(address::ipv4_loopback(0));
  u.close();
  CHECK(what_of([&] { (void)u.send_to("x", 1, address::ipv4_loopback(9)); }).find("closed:") == 0);
}
