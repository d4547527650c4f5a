// tests/monkey/unsubmitted_test.cpp — a hooked call killed in the loop turn it queued its op runs
// nothing: the op never reaches the kernel (see tests/net/unsubmitted_test.cpp for net/).
//
// Both cases failed before the fix: the accept took the waiting client and handed the killed
// fiber its fd; the send sent its bytes and reported them as sent.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "hub/task.hpp"
#include "monkey/monkey.hpp"
#include "tests/support.hpp"

using cogent::test::waiting_client;

COGENT_TEST_CASE("monkey: accept() killed in the turn it queued its op takes no client",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  waiting_client w;
  int got = -2;
  int err = 0;
  auto acc = cogent::spawn([&] {
    got = ::accept(w.l, nullptr, nullptr);
    err = errno;
  });
  auto killer = cogent::spawn([&] { acc.kill(); });
  killer.get();
  acc.join();
  CHECK(got == -1);
  CHECK(err == EINTR);
  if (got >= 0) {
    ::close(got);
  }
  CHECK(w.still_waiting());  // the client still waits in the backlog, its connection whole
}

COGENT_TEST_CASE("monkey: a blocking send() killed in the turn it queued its op sends nothing",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  // Fill sv[0]'s send buffer so the next send cannot be done in place and goes through the ring.
  int one_k = 1024;
  ::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &one_k, sizeof one_k);
  char junk[4096] = {};
  long filled = 0;
  for (;;) {
    ssize_t n = ::send(sv[0], junk, sizeof junk, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n <= 0) {
      break;
    }
    filled += n;
  }
  REQUIRE(filled > 0);
  ssize_t sent = -2;
  auto wr = cogent::spawn([&] { sent = ::send(sv[0], "lost", 4, MSG_NOSIGNAL); });
  // The peer drains everything in the same turn (the send's op, if it ran, would then succeed).
  auto killer = cogent::spawn([&] {
    char sink[4096];
    long drained = 0;
    while (drained < filled) {
      ssize_t n = ::recv(sv[1], sink, sizeof sink, MSG_DONTWAIT);
      if (n <= 0) {
        break;
      }
      drained += n;
    }
    wr.kill();
  });
  killer.get();
  wr.join();
  CHECK(sent == -1);
  // Nothing of "lost" arrived.
  char b[8];
  CHECK(::recv(sv[1], b, sizeof b, MSG_DONTWAIT) == -1);
  ::close(sv[0]);
  ::close(sv[1]);
}
