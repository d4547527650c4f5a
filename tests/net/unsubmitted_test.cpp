// tests/net/unsubmitted_test.cpp — an op cancelled before the kernel saw it never runs.
//
// A fiber that queues an op (an accept, a recv, a send) and is killed or timed out in the same loop
// turn, before the hub hands its submission queue to the kernel, used to have the op run anyway:
// its cancel was queued behind it. For an accept that consumed a waiting client (accepted, then
// closed by the release hook: the client saw EOF); for a send, bytes went out that the caller was
// told were cancelled; for an accept with a deadline already passed, the same. The kill (or Timeout)
// now cancels the op where it waits, and an op still in the submission queue becomes a no-op there.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>
#include <utility>

#include "hub/task.hpp"
#include "net/net.hpp"
#include "tests/net/net_support.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::net::address;
using cogent::net::listener;
using cogent::net::stream_socket;

namespace {

// A client connected with plain syscalls: the handshake completes in the kernel, so the connection
// waits in the listener's backlog until someone accepts it.
int connect_plain(const listener& l) {
  int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(c >= 0);
  REQUIRE(::connect(c, l.local_address().sockaddr_ptr(), l.local_address().sockaddr_len()) == 0);
  return c;
}

// The waiting client is still there, unharmed: accept it and talk both ways.
void check_client_intact(listener& l, int c) {
  stream_socket s = l.accept(1s);
  s.write_all("hi", 2);
  char buf[2];
  REQUIRE(::recv(c, buf, 2, MSG_WAITALL) == 2);
  CHECK(std::string(buf, 2) == "hi");
  REQUIRE(::send(c, "yo", 2, MSG_NOSIGNAL) == 2);
  s.read_exactly(buf, 2);
  CHECK(std::string(buf, 2) == "yo");
}

// A connected TCP pair on 127.0.0.1: {client, server}.
std::pair<stream_socket, stream_socket> connected_pair() {
  auto l = listener::bind(address::ipv4_loopback(0));
  auto acc = cogent::spawn([&] { return l.accept(); });
  stream_socket client = stream_socket::connect(l.local_address(), 2s);
  return {std::move(client), acc.get()};
}

}  // namespace

COGENT_TEST_CASE("an accept killed in the turn it was queued accepts nobody", doctest::timeout(20)) {
  auto l = listener::bind(address::ipv4_loopback(0));
  for (int round = 0; round < 5; ++round) {
    int c = connect_plain(l);
    bool accepted = false;
    // One loop turn: the accepter queues its accept and parks, then the killer (next in the ready
    // queue) kills it before the hub submits anything.
    auto acc = cogent::spawn([&] {
      (void)l.accept();
      accepted = true;
    });
    auto killer = cogent::spawn([&] { acc.kill(); });
    killer.get();
    CHECK(acc.killed());
    CHECK(!accepted);
    check_client_intact(l, c);
    ::close(c);
  }
}

COGENT_TEST_CASE("an accept with an already expired deadline accepts nobody it then drops",
                 doctest::timeout(20)) {
  auto l = listener::bind(address::ipv4_loopback(0));
  int c = connect_plain(l);
  // accept(0s): the deadline has passed before the op reaches the kernel. Either it is refused
  // with ETIMEDOUT and the client still waits, or (never both) the client is returned.
  int err = 0;
  try {
    stream_socket s = l.accept(0s);
    s.write_all("hi", 2);
    char buf[2];
    REQUIRE(::recv(c, buf, 2, MSG_WAITALL) == 2);
    ::close(c);
    return;
  } catch (const std::system_error& e) {
    err = e.code().value();
  }
  CHECK(err == ETIMEDOUT);
  check_client_intact(l, c);
  ::close(c);
}

COGENT_TEST_CASE("a send killed in the turn it was queued sends nothing", doctest::timeout(20)) {
  auto [client, server] = connected_pair();
  bool sent = false;
  auto w = cogent::spawn([&] {
    server.write_all("lost", 4);
    sent = true;
  });
  auto killer = cogent::spawn([&] { w.kill(); });
  killer.get();
  CHECK(w.killed());
  CHECK(!sent);
  // Nothing arrived: the next bytes the client reads are the ones sent after.
  server.write_all("next", 4);
  char buf[4];
  client.read_exactly(buf, 4);
  CHECK(std::string(buf, 4) == "next");
}
