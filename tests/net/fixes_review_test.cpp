// tests/net/fixes_review_test.cpp — review of today's net fixes (c89ae3e): idle_timeout_error
// against a call's own timeout, serve_forever() interrupted in each state.
// Every case here passed when written; they are kept because no other test covers them: the type
// of the idle limit's exception (vs a call timeout, a default timeout, a Timeout scope, a write,
// a moved socket), and serve_forever() with a kill pending at entry, killed while a second fiber
// waits in it, and killed twice while its stop(0s) waits for a handler.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
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
using cogent::test::echo_handler;
using cogent::net::address;
using cogent::net::idle_timeout_error;
using cogent::net::stream_server;
using cogent::net::stream_socket;
using cogent::test::errno_of;
using cogent::test::stderr_capture;

namespace {

// kind_of() says what a call raised: "idle", "timeout" (a plain ETIMEDOUT system_error), "other", "none".
template <class F>
std::string kind_of(F f) {
  try {
    f();
  } catch (const idle_timeout_error& e) {
    return e.code().value() == ETIMEDOUT ? "idle" : "idle-bad-errno";
  } catch (const std::system_error& e) {
    return e.code().value() == ETIMEDOUT ? "timeout" : "other:" + std::to_string(e.code().value());
  }
  return "none";
}

struct pair_sockets {
  stream_socket a, b;
  pair_sockets() {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    a = stream_socket(sv[0]);
    b = stream_socket(sv[1]);
  }
};

}  // namespace

// ---- idle_timeout_error --------------------------------------------------------------------
// Kept although they pass: no other test checks the exception's type.

COGENT_TEST_CASE("fixes: the idle limit raises idle_timeout_error, a call's own earlier timeout a plain ETIMEDOUT",
                 doctest::timeout(10)) {
  pair_sockets p;
  char c;
  p.a.set_idle_timeout(30ms);
  CHECK(kind_of([&] { (void)p.a.read_some(&c, 1); }) == "idle");
  CHECK(kind_of([&] { p.a.read_exactly(&c, 1); }) == "idle");
  CHECK(kind_of([&] { (void)p.a.read_some(&c, 1, 10ms); }) == "timeout");  // the call's deadline first
  CHECK(kind_of([&] { (void)p.a.read_some(&c, 1, 30ms); }) == "timeout");  // the same: the call's
  p.a.set_timeout(10ms);
  CHECK(kind_of([&] { (void)p.a.read_some(&c, 1, cogent::net::use_default); }) == "timeout");
  // A Timeout scope is neither.
  bool scope = false;
  try {
    cogent::timeout to(10ms);
    (void)p.a.read_some(&c, 1, std::nullopt);
  } catch (const cogent::timeout_error&) {
    scope = true;
  }
  CHECK(scope);
  // A write to a peer that takes nothing.
  p.a.set_timeout(std::nullopt);
  std::vector<char> big(8 << 20, 'x');
  CHECK(kind_of([&] { p.a.write_all(big.data(), big.size()); }) == "idle");
  // Moved sockets keep it.
  stream_socket moved = std::move(p.a);
  CHECK(kind_of([&] { (void)moved.read_some(&c, 1); }) == "idle");
}

// ---- serve_forever() interrupted ---------------------------------------------------------------

// A kill already pending when serve_forever() is entered (an op that completed anyway left it,
// or defer_interrupt()) is documented to stop the server first, then be raised.
COGENT_TEST_CASE("fixes: a kill pending at entry to serve_forever() stops the server, then is raised",
                 doctest::timeout(10)) {
  stream_server srv(address::ipv4_loopback(0), echo_handler);
  srv.start();
  auto c = stream_socket::connect(srv.address(), 1s);  // a running handler
  c.write_all("hi");
  char b[2];
  c.read_exactly(b, 2, 1s);
  bool raised = false;
  try {
    cogent::defer_interrupt(std::make_exception_ptr(cogent::fiber_exit()));
    srv.serve_forever();
  } catch (const cogent::fiber_exit&) {
    raised = true;
  }
  CHECK(raised);
  CHECK_FALSE(srv.serving());
  int err = errno_of([&] { (void)stream_socket::connect(srv.address(), 200ms); });
  CHECK(err == ECONNREFUSED);
  // The handler was killed: the client sees EOF.
  char x;
  CHECK(c.read_some(&x, 1, 500ms) == 0);
}

COGENT_TEST_CASE("fixes: killing one of two fibers in serve_forever() stops the server; the other returns",
                 doctest::timeout(10)) {
  stream_server srv(address::ipv4_loopback(0), echo_handler);
  bool other_returned = false;
  auto t1 = cogent::spawn([&] { srv.serve_forever(); });
  auto t2 = cogent::spawn([&] {
    srv.serve_forever();
    other_returned = true;
  });
  cogent::sleep(5ms);
  auto c = stream_socket::connect(srv.address(), 1s);
  c.write_all("hi");
  char b[2];
  c.read_exactly(b, 2, 1s);
  t1.kill();
  CHECK(t1.killed());
  t2.join(1s);
  CHECK(t2.ready());
  CHECK(other_returned);
  CHECK_FALSE(srv.serving());
}

// A second kill while serve_forever()'s stop(0s) waits for a handler slow to unwind: the wait goes
// on (the server may be destroyed once the task has ended), and the task still ends killed.
COGENT_TEST_CASE("fixes: a second kill during serve_forever()'s stop still waits for the handlers",
                 doctest::timeout(10)) {
  bool handler_done = false;
  bool done_when_raised = false;
  auto srv = std::make_unique<stream_server>(address::ipv4_loopback(0), [&](stream_socket& s, const address&) {
    struct slow_unwind {
      bool& done;
      ~slow_unwind() {
        try {
          cogent::sleep(100ms);  // a second kill cuts it short (a destructor must not throw)
        } catch (...) {
        }
        done = true;
      }
    } g{handler_done};
    echo_handler(s, address());
  });
  auto t = cogent::spawn([&] {
    try {
      srv->serve_forever();
    } catch (...) {
      done_when_raised = handler_done;
      throw;
    }
  });
  cogent::sleep(5ms);
  auto c = stream_socket::connect(srv->address(), 1s);
  c.write_all("hi");
  char b[2];
  c.read_exactly(b, 2, 1s);
  t.kill(nullptr, false);
  cogent::sleep(20ms);
  t.kill(nullptr, false);
  t.join(2s);
  CHECK(t.ready());
  CHECK(t.killed());
  CHECK(done_when_raised);
  srv.reset();
  CHECK(handler_done);
}

// serve_forever() inside the hub raises hub_error before starting anything (it used to start the
// server first, which then ran on with nobody to stop it).
COGENT_TEST_CASE("fixes: serve_forever() in a post() callback raises hub_error and leaves the server unstarted",
                 doctest::timeout(10)) {
  stream_server srv(address::ipv4_loopback(0), echo_handler);
  bool raised = false;
  cogent::event done;
  cogent::hub::current().post([&] {
    try {
      srv.serve_forever();
    } catch (const cogent::hub_error&) {
      raised = true;
    }
    done.set();
  });
  REQUIRE(done.wait(1s));
  CHECK(raised);
  CHECK_FALSE(srv.serving());
}

// A kill pending when serve_forever() is entered on a server already stopped is raised (the header:
// "Raises a pending kill/Timeout"); it returned normally, leaving the kill for a later call.
COGENT_TEST_CASE("fixes: serve_forever() on a stopped server raises a kill pending on entry",
                 doctest::timeout(10)) {
  stream_server srv(address::ipv4_loopback(0), echo_handler);
  srv.start();
  srv.stop(0s);
  bool returned = false;
  auto t = cogent::spawn([&] {
    cogent::hub::current().interrupt(cogent::detail::current_impl(),
                                     std::make_exception_ptr(cogent::fiber_exit{}));  // pending, not raised
    srv.serve_forever();
    returned = true;
  });
  t.join(2s);
  CHECK(t.killed());
  CHECK_FALSE(returned);
}

// A listener handed to stream_server with an idle limit: a quiet spell with no client is not an
// accept failure (it was logged as "accept failed: Connection timed out" and backed off).
COGENT_TEST_CASE("fixes: a listener with an idle limit serves on quietly through idle spells",
                 doctest::timeout(10)) {
  auto l = cogent::net::listener::bind(address::ipv4_loopback(0));
  l.set_idle_timeout(5ms);
  stderr_capture err;
  stream_server srv(std::move(l), echo_handler);
  srv.start();
  cogent::sleep(40ms);  // several idle limits pass
  auto c = stream_socket::connect(srv.address(), 1s);
  c.write_all("hi");
  char b[2];
  c.read_exactly(b, 2, 1s);
  srv.stop(1s);
  CHECK(err.text().find("accept failed") == std::string::npos);
}
