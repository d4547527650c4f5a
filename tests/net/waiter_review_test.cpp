// tests/net/waiter_review_test.cpp — review of bf0831d (the per-thread table
// of blocked fibers freed by an owner thread_local at thread exit, then
// "empty"); both cases failed with it and pass now that a pthread key's
// destructor frees the table, after every thread_local destructor.
//
// That owner was constructed at the thread's first socket op, after the hub,
// so it was destroyed before the hub: fibers still parked in
// basic_socket::await() stayed linked in lists whose heads were freed. If a
// later thread_local destructor lets the hub run (here: a sleep), such a fiber
// resumes, and await()'s unlink guard wrote t_waiters.slots[fd] with slots ==
// nullptr (before bf0831d: into the freed vector).
#include "net/net.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "hub/task.hpp"
#include "tests/child.hpp"
#include "tests/net/net_support.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::net::stream_socket;

namespace {
struct late_closer {
  int peer = -1;
  ~late_closer() {
    if (peer >= 0) {
      std::fprintf(stderr, "holder: closing the reader's peer\n");
      ::close(peer);          // the parked reader's recv completes (end of stream)
      cogent::sleep(20ms);    // any blocking call from here lets the hub resume it
      std::fprintf(stderr, "holder: done\n");
    }
  }
};
thread_local late_closer t_late;
}  // namespace

TEST_CASE("a fiber parked in a socket op resumed during thread exit, after the waiter table was freed" *
          doctest::timeout(20)) {
  cogent::test::child_result res = cogent::test::run_in_child([] {
    std::thread([] {
      cogent::hub::current();  // the hub first (destroyed last)
      int sv[2];
      cogent::test::child_socketpair(sv);
      t_late.peer = sv[1];  // the holder next: destroyed after the table's owner
      auto* s = new stream_socket(sv[0]);  // never destroyed (the child _exits)
      auto r = cogent::spawn([s] {
        char b[16];
        try {
          (void)s->read_some(b, sizeof b);  // the first op: the table's owner is constructed here
        } catch (...) {
        }
        std::fprintf(stderr, "reader: unlinked\n");
      });
      cogent::yield();  // r is parked in its recv
      std::fprintf(stderr, "thread ending, parked=%zu\n", cogent::hub::current().parked_count());
    }).join();
    std::fprintf(stderr, "thread joined\n");
    std::fflush(nullptr);
    ::_exit(0);
  });
  INFO("child stderr: " << res.err);
  CHECK(res.exited(0));
  CHECK(res.err.find("thread joined") != std::string::npos);
  CHECK(res.err.find("Sanitizer") == std::string::npos);
}

// The same ordering, with the late destructor closing the very socket a reader
// is parked on: socket.hpp promises close() wakes every fiber blocked on the
// socket (they raise EBADF) before the fd is closed. After the owner emptied
// the table, close() finds no waiter, cancels nothing, and closes the fd under
// the reader's in-flight recv (which keeps the file open: the peer does not
// see end of stream, unlike the commit's own close_review case with no reader).
namespace {
struct late_socket_closer {
  stream_socket* s = nullptr;
  int peer = -1;
  ~late_socket_closer() {
    if (s != nullptr) {
      s->close();
      char c;
      ssize_t n = ::recv(peer, &c, 1, MSG_DONTWAIT);
      std::fprintf(stderr, "peer read %zd\n", n);
    }
  }
};
thread_local late_socket_closer t_late_socket;
}  // namespace

TEST_CASE("close() from a late thread_local destructor wakes the fiber parked on the socket" *
          doctest::timeout(20)) {
  cogent::test::child_result res = cogent::test::run_in_child([] {
    std::thread([] {
      cogent::hub::current();  // the hub first (destroyed last)
      int sv[2];
      cogent::test::child_socketpair(sv);
      auto* s = new stream_socket(sv[0]);  // never destroyed (the child _exits)
      t_late_socket.peer = sv[1];          // the holder next: destroyed after the table's owner
      t_late_socket.s = s;
      auto r = cogent::spawn([s] {
        char b[16];
        (void)s->read_some(b, sizeof b);  // the first op: the table's owner is constructed here
      });
      cogent::yield();  // r is parked in its recv
    }).join();
    std::fflush(nullptr);
    ::_exit(0);
  });
  INFO("child stderr: " << res.err);
  CHECK(res.exited(0));
  CHECK(res.err.find("peer read 0") != std::string::npos);  // closed: the peer reads end of stream
}
