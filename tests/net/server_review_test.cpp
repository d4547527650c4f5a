// tests/net/server_review_test.cpp — adversarial review of net/server.cpp and net/resolver.cpp; the
// cases that failed before the fix that came with this file: a server destroyed or stopped inside
// the hub, idle_timeout cutting slow but steady clients, failed handler tasks kept, a kill
// swallowed while on_error blocks, a host with a NUL byte resolved as its prefix, a
// max_accept_backoff that is not positive (a busy loop on EMFILE).
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "hub/pool.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "net/net.hpp"
#include "tests/net/net_support.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::test::echo_handler;
using cogent::net::address;
using cogent::net::stream_server;
using cogent::net::stream_socket;
using cogent::test::errno_of;
using cogent::test::open_fds;

using cogent::test::stderr_capture;

// ---- stop() from the hub (a post() callback) ------------------------------------------------

COGENT_TEST_CASE("review: stop() inside a post() callback either stops or fails cleanly",
                 doctest::timeout(10)) {
  stream_server srv(address::ipv4_loopback(0), echo_handler);
  srv.start();
  cogent::sleep(2ms);  // acceptor parked in accept
  std::string what = "none";
  cogent::event ran;
  cogent::hub::current().post([&] {
    try {
      srv.stop(0s);
    } catch (const std::exception& e) {
      what = e.what();
    }
    ran.set();
  });
  ran.wait();
  // It fails cleanly (hub_error, nothing changed: before the fix it left the server marked
  // stopped with its listener open), and a later stop() from a fiber does the whole job.
  CHECK(what.find("inside the hub") != std::string::npos);
  CHECK(srv.serving());
  srv.stop(0s);
  CHECK_FALSE(srv.serving());
  int err = errno_of([&] { (void)stream_socket::connect(srv.address(), 500ms); });
  CHECK_MESSAGE(err == ECONNREFUSED, "connect after stop(): errno ", err, " (0 = accepted by a stopped server)");
}

// ---- idle timeout ---------------------------------------------------------------------------

COGENT_TEST_CASE("review: idle_timeout does not drop a client that keeps sending", doctest::timeout(10)) {
  cogent::net::server_options opts;
  opts.idle_timeout = 300ms;
  bool got_all = false;
  std::string error;
  stream_server srv(
      address::ipv4_loopback(0),
      [&](stream_socket& s, const address&) {
        std::string body(40, '\0');
        try {
          s.read_exactly(body.data(), body.size());  // one 40-byte message, trickled in
          got_all = true;
        } catch (const std::exception& e) {
          error = e.what();
          throw;
        }
      },
      opts);
  srv.start();
  auto c = stream_socket::connect(srv.address(), 1s);
  int sent = 0;
  try {
    for (int i = 0; i < 20; ++i) {  // 2 bytes every 30 ms: never silent for 300 ms; 600 ms in all
      c.write_all("ab");
      sent += 2;
      cogent::sleep(30ms);
    }
  } catch (const std::system_error& e) {
    MESSAGE("client: " << e.what() << " after " << sent << " bytes");
  }
  for (int i = 0; i < 200 && !got_all && error.empty(); ++i) {
    cogent::sleep(5ms);  // until the handler has read it all (or failed)
  }
  CHECK_MESSAGE(got_all, "client dropped while sending every 30 ms: ", error);
  srv.stop(1s);
}

// ---- on_error that blocks, killed by stop() --------------------------------------------------

COGENT_TEST_CASE("review: a kill while on_error blocks is not reported as on_error throwing",
                 doctest::timeout(10)) {
  cogent::net::server_options opts;
  bool on_error_saw_kill = false;
  opts.on_error = [&](const address&, std::exception_ptr) {
    try {
      cogent::sleep(10s);  // e.g. shipping the error to a remote log
    } catch (const cogent::fiber_exit&) {
      on_error_saw_kill = true;
      throw;
    }
  };
  stream_server srv(
      address::ipv4_loopback(0),
      [](stream_socket& s, const address&) {
        char c;
        s.read_exactly(&c, 1);
        throw std::runtime_error("boom");
      },
      opts);
  srv.start();
  auto c = stream_socket::connect(srv.address(), 1s);
  c.write_all("x");
  cogent::sleep(20ms);  // the handler threw; on_error is sleeping
  std::string log;
  {
    stderr_capture cap;
    srv.stop(10ms);
    log = cap.text();
  }
  CHECK(on_error_saw_kill);
  CHECK_MESSAGE(log.find("on_error callback threw") == std::string::npos,
                "a kill of the handler was reported (and swallowed) as: ", log);
}

// ---- fds ---------------------------------------------------------------------------------

COGENT_TEST_CASE("review: stop(0) right after accepting many clients leaks no fd", doctest::timeout(20)) {
  int before = open_fds();
  {
    stream_server srv(address::ipv4_loopback(0), echo_handler);
    srv.start();
    std::vector<stream_socket> cs;
    for (int i = 0; i < 50; ++i) {
      cs.push_back(stream_socket::connect(srv.address(), 1s));
    }
    // Let the acceptor take some, but not necessarily let the handlers run.
    cogent::yield();
    cogent::yield();
    srv.stop(0s);
    for (auto& c : cs) {
      c.close();
    }
  }
  cogent::sleep(5ms);
  CHECK(open_fds() == before);
}

COGENT_TEST_CASE("review: pool full, stop: a client waiting for a slot (in the backlog) is reset, nothing leaks",
                 doctest::timeout(20)) {
  int before = open_fds();
  {
    cogent::pool workers(1);
    cogent::net::server_options opts;
    opts.workers = &workers;
    stream_server srv(address::ipv4_loopback(0), echo_handler, opts);
    srv.start();
    auto a = stream_socket::connect(srv.address(), 1s);
    auto b = stream_socket::connect(srv.address(), 1s);
    a.write_all("a");
    char buf[4];
    a.read_exactly(buf, 1, 1s);  // a's handler runs; b waits for the slot
    cogent::sleep(10ms);
    CHECK(srv.client_count() == 1);
    srv.stop(0s);
    char x;
    std::size_t n = 1;
    int e = errno_of([&] { n = b.read_some(&x, 1, 1s); });
    CHECK(((e == 0 && n == 0) || e == ECONNRESET));  // never accepted: reset when the listener closed
    a.close();
    b.close();
  }
  cogent::sleep(5ms);
  CHECK(open_fds() == before);
}

// ---- handler errors ------------------------------------------------------------------------

COGENT_TEST_CASE("review: a handler throwing a non-std exception affects only itself", doctest::timeout(10)) {
  int reported = 0;
  cogent::net::server_options opts;
  opts.on_error = [&](const address&, std::exception_ptr) { ++reported; };
  stream_server srv(
      address::ipv4_loopback(0),
      [](stream_socket& s, const address&) {
        char c;
        s.read_exactly(&c, 1);
        if (c == 'x') {
          throw 42;
        }
        s.write_all("ok");
      },
      opts);
  srv.start();
  std::string log;
  {
    stderr_capture cap;
    auto bad = stream_socket::connect(srv.address(), 1s);
    bad.write_all("x");
    char b[4];
    CHECK(bad.read_some(b, sizeof b, 1s) == 0);  // closed
    auto good = stream_socket::connect(srv.address(), 1s);
    good.write_all("g");
    good.read_exactly(b, 2, 1s);
    CHECK(std::string(b, 2) == "ok");
    cogent::sleep(5ms);
    log = cap.text();
  }
  MESSAGE("stderr: " << log << " reported=" << reported);
  srv.stop(1s);
}

// ---- resolver / create_connection -----------------------------------------------------------

namespace {
// a listener nobody accepts on, with its backlog full, so further connects hang in SYN_SENT
struct blackhole {
  cogent::net::listener l;
  std::vector<stream_socket> fill;
  blackhole() {
    cogent::net::listen_options lo;
    lo.backlog = 0;
    l = cogent::net::listener::bind(address::ipv4_loopback(0), lo);
    for (int i = 0; i < 4; ++i) {
      try {
        fill.push_back(stream_socket::connect(l.local_address(), 100ms));
      } catch (const std::system_error&) {
        break;
      }
    }
  }
};
}  // namespace

COGENT_TEST_CASE("review: create_connection timeout, Timeout scope and kill while connecting",
                 doctest::timeout(20)) {
  blackhole bh;
  int before = open_fds();
  auto t0 = cogent::clock::now();
  int err = errno_of([&] { (void)cogent::net::create_connection("127.0.0.1", bh.l.port(), 100ms); });
  CHECK(err == ETIMEDOUT);
  CHECK(cogent::clock::now() - t0 < 2s);
  // Timeout scope: timeout_error, not swallowed as a failed attempt.
  bool timed_out = false;
  try {
    cogent::timeout to(50ms);
    (void)cogent::net::create_connection("127.0.0.1", bh.l.port());
  } catch (const cogent::timeout_error&) {
    timed_out = true;
  } catch (const std::exception& e) {
    FAIL("unexpected: " << e.what());
  }
  CHECK(timed_out);
  // Kill while connecting.
  auto t = cogent::spawn([&] { (void)cogent::net::create_connection("127.0.0.1", bh.l.port()); });
  cogent::sleep(20ms);
  t.kill();
  CHECK(t.killed());
  CHECK(open_fds() == before);
  // localhost resolves (thread pool), then connects.
  stream_server srv(address::ipv4_loopback(0), echo_handler);
  srv.start();
  auto s = cogent::net::create_connection("localhost", srv.port(), 1s);
  s.write_all("hi");
  char b[2];
  s.read_exactly(b, 2, 1s);
  CHECK(std::string(b, 2) == "hi");
  CHECK(!s.timeout());
  s.close();
  srv.stop(1s);
  CHECK_THROWS_AS((void)cogent::net::create_connection("localhost", 70000), std::invalid_argument);
  CHECK_THROWS_AS((void)cogent::net::create_connection("", 80), std::invalid_argument);
}

COGENT_TEST_CASE("review: Timeout and kill while resolving a name", doctest::timeout(20)) {
  // Whatever the resolver does with this name (fails fast, or hangs on an unreachable DNS server),
  // the caller gets an error in resolver_category or its timeout_error in time.
  auto t0 = cogent::clock::now();
  try {
    cogent::timeout to(200ms);
    (void)cogent::net::resolve("no-such-host.invalid", 80);
    FAIL("resolved an .invalid name");
  } catch (const cogent::timeout_error&) {
    MESSAGE("timed out");
  } catch (const std::system_error& e) {
    MESSAGE("error: " << e.code().category().name() << " " << e.code().value() << " " << e.what());
    CHECK((e.code().category() == cogent::net::resolver_category() ||
           e.code().category() == std::generic_category()));
  }
  CHECK(cogent::clock::now() - t0 < 2s);
}

COGENT_TEST_CASE("review: resolve/create_connection reject a host with an embedded NUL", doctest::timeout(10)) {
  using namespace std::string_view_literals;
  stream_server srv(address::ipv4_loopback(0), echo_handler);
  srv.start();
  auto host = "127.0.0.1\0.attacker.example"sv;
  CHECK_THROWS((void)cogent::net::resolve(host, 80));
  bool connected = false;
  try {
    auto s = cogent::net::create_connection(host, srv.port(), 1s);
    connected = true;
    s.close();
  } catch (const std::exception&) {
  }
  CHECK_MESSAGE(!connected, "connected to 127.0.0.1 for host '127.0.0.1\\0.attacker.example'");
  auto name = "localhost\0.attacker.example"sv;
  std::vector<address> got;
  try {
    got = cogent::net::resolve(name, 80);
  } catch (const std::exception&) {
  }
  CHECK_MESSAGE(got.empty(), "'localhost\\0.attacker.example' resolved to ", got.size() ? got[0].to_string() : "");
  srv.stop(1s);
}

// ~stream_server() run inside the hub (a post() callback) while a handler runs. The destructor
// cannot wait there; before the fix it returned at once, leaving the accept task and the
// handler running against the freed server (ASan heap-use-after-free). Now it says so on
// stderr and aborts (documented), never a silent use-after-free.
TEST_CASE("review: server destroyed in a post() callback while a handler runs" * doctest::timeout(30)) {
  auto res = cogent::test::run_in_child([] {
    std::thread([] {
      auto main_task = cogent::spawn([] {
        auto srv = std::make_unique<stream_server>(address::ipv4_loopback(0), [tag = std::string(100, 't')](stream_socket& s, const address&) {
          char b[16];
          (void)s.read_some(b, sizeof b);
          throw std::runtime_error("handler ends: " + tag);  // goes to report(): reads _opts
        });
        srv->start();
        auto c = stream_socket::connect(srv->address(), 1s);
        cogent::sleep(10ms);
        cogent::event done;
        cogent::hub::current().post([&] {
          srv.reset();
          done.set();
        });
        done.wait();
        c.write_all("x");  // wakes the handler of the freed server
        c.close();
        cogent::sleep(50ms);
      });
      main_task.join();
      std::fprintf(stderr, "child done\n");
    }).join();
  });
  INFO("child stderr: " << res.err.substr(0, 3000));
  CHECK(WIFSIGNALED(res.status));
  CHECK(res.err.find("destroyed inside the hub") != std::string::npos);
  CHECK(res.err.find("Sanitizer") == std::string::npos);
}

namespace {
int g_live_errors = 0;
struct counted_error {  // not a std::exception, like cogent::timeout_error
  counted_error() { ++g_live_errors; }
  counted_error(const counted_error&) { ++g_live_errors; }
  ~counted_error() { --g_live_errors; }
};
}  // namespace

// Handlers whose error escapes run_client (a non-std exception, e.g. a cogent::timeout_error
// from the handler's own Timeout scope) fail their task; the server's group keeps every such
// task in its failures() list for the server's whole life: memory grows per failed client.
COGENT_TEST_CASE("review: failed handler tasks are not retained by a long-running server",
                 doctest::timeout(20)) {
  int on_error_calls = 0;
  cogent::net::server_options opts;
  opts.on_error = [&](const address&, std::exception_ptr) { ++on_error_calls; };
  cogent::set_task_error_handler([](const cogent::task_base&, std::exception_ptr) {});
  stream_server srv(
      address::ipv4_loopback(0),
      [](stream_socket& s, const address&) {
        char c;
        s.read_exactly(&c, 1);
        if (c == 't') {
          cogent::timeout to(1ms);
          (void)s.read_some(&c, 1);  // the client sends nothing more: timeout_error escapes
        }
        throw counted_error{};
      },
      opts);
  srv.start();
  for (int i = 0; i < 100; ++i) {
    auto c = stream_socket::connect(srv.address(), 1s);
    c.write_all(i == 0 ? "t" : "x");
    char b;
    (void)errno_of([&] { (void)c.read_some(&b, 1, 1s); });  // the server closes
  }
  for (int i = 0; i < 100 && srv.client_count() > 0; ++i) {
    cogent::sleep(2ms);
  }
  CHECK(srv.client_count() == 0);
  MESSAGE("on_error calls for escaping timeout_error/non-std errors: " << on_error_calls);
  CHECK_MESSAGE(g_live_errors == 0, "exceptions of finished clients still alive: ", g_live_errors);
  srv.stop(1s);
  cogent::set_task_error_handler(nullptr);
}

// ---- options -----------------------------------------------------------------------------

COGENT_TEST_CASE("review: a max_accept_backoff that is not positive is rejected (it would busy-loop on EMFILE)",
                 doctest::timeout(10)) {
  for (auto cap : {0ms, -5ms}) {
    cogent::net::server_options opts;
    opts.max_accept_backoff = cap;
    try {
      stream_server srv(address::ipv4_loopback(0), echo_handler, opts);
      FAIL("a stream_server with max_accept_backoff ", cap.count(), " ms was made");
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find("max_accept_backoff") != std::string::npos);
    }
  }
}

COGENT_TEST_CASE("review: a stream_server with bad options binds nothing (no Unix socket file left behind)",
                 doctest::timeout(10)) {
  std::string path = "/tmp/cogent_bad_opts_" + std::to_string(::getpid()) + ".sock";
  ::unlink(path.c_str());
  cogent::net::server_options opts;
  opts.max_accept_backoff = 0ms;
  CHECK_THROWS_AS(stream_server(address::unix_path(path), echo_handler, opts), std::invalid_argument);
  CHECK_MESSAGE(::access(path.c_str(), F_OK) != 0, "the socket file was left at ", path);
  ::unlink(path.c_str());
}
