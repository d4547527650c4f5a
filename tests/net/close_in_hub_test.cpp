// tests/net/close_in_hub_test.cpp — basic_socket::close() called inside the
// hub (a post() or timer callback) while fibers are blocked on the socket.
//
// Such a close() cannot wait, so it returns at once; the fd must still not go
// away (and its number be handed out again) before every cancelled waiter's
// op has completed (DESIGN.md invariant 1). Covers: an op still unsubmitted
// when the callback runs (a hub's first turn runs posted callbacks before it
// submits the batch) does not act on a socket that reuses the number; ops in
// flight (two readers, a writer on a full buffer) keep the number reserved
// until they let go, then the fd is closed (also when a close() waiting in a
// fiber is killed); a thread that ends while the
// cancelled waiters are still parked does not leak the fd.
#include "net/net.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <string>
#include <system_error>
#include <thread>

#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "tests/child.hpp"
#include "tests/net/net_support.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::net::stream_socket;

namespace {

using cogent::test::errno_of;
using cogent::test::fd_open;
using cogent::test::open_fds;

// pending_bytes() reads, without blocking, what is waiting on fd.
std::string pending_bytes(int fd) {
  char buf[64];
  ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

// fresh_pair() is a connected Unix stream pair; each end gets `tag` queued
// from the other, so whichever end lands on a reused number is readable.
void fresh_pair(int sv[2], const char* tag) {
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    sv[0] = sv[1] = -1;
    return;
  }
  auto n = std::strlen(tag);
  (void)!::write(sv[0], tag, n);
  (void)!::write(sv[1], tag, n);
}

// callback_timer is a hub timer that runs a function when it fires.
struct callback_timer : cogent::detail::timer_node {
  std::function<void()> fn;
};

}  // namespace

// Deterministic: the reader runs on a thread whose hub has not started yet, so
// its recv is still in the submission queue when the hub's first turn runs the
// posted callback. Before the fix close() closed the fd at once, the callback's
// new socket pair took the number, and the queued recv (submitted after the
// callback) read the new connection's bytes: read_some returned "other".
COGENT_TEST_CASE(
    "close() in a post() callback: an unsubmitted recv never reads a socket that reuses the number",
    doctest::timeout(10)) {
  int fds_before = open_fds();
  int old_fd = -1;
  int nb[2] = {-1, -1};
  bool in_hub = false;
  int err = -1;
  std::string got;
  std::thread th([&] {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      return;
    }
    old_fd = sv[0];
    stream_socket s(sv[0]);
    cogent::hub& h = cogent::hub::current();
    h.post([&] {
      in_hub = cogent::hub::current().in_hub();
      s.close();                // the reader below is blocked on s
      fresh_pair(nb, "other");  // before the fix: nb[0] or nb[1] == old_fd
    });
    char buf[64];
    err = errno_of([&] {
      std::size_t n = s.read_some(buf, sizeof buf);  // the hub's first switch
      got.assign(buf, n);
    });
    ::close(sv[1]);
  });
  th.join();
  CHECK(in_hub);
  CHECK(err == EBADF);
  CHECK_MESSAGE(got.empty(), "the closed socket's reader read another connection's bytes: ", got);
  CHECK(nb[0] != old_fd);
  CHECK(nb[1] != old_fd);
  CHECK(pending_bytes(nb[0]) == "other");  // nobody else consumed them
  CHECK(pending_bytes(nb[1]) == "other");
  if (nb[0] != old_fd && nb[1] != old_fd) {
    CHECK_FALSE(fd_open(old_fd));  // closed once the reader let go
  }
  ::close(nb[0]);
  ::close(nb[1]);
  CHECK(open_fds() == fds_before);
}

// Ops in flight (two readers) when a post() callback closes the socket: the
// number stays taken (the fd open) until both have let go, then it is closed.
COGENT_TEST_CASE("close() in a post() callback keeps the fd until every blocked reader has let go",
                 doctest::timeout(10)) {
  int fds_before = open_fds();
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  const int old_fd = sv[0];
  stream_socket s(sv[0]);
  int err1 = -1;
  int err2 = -1;
  auto r1 = cogent::spawn([&] {
    char b[16];
    err1 = errno_of([&] { (void)s.read_some(b, sizeof b); });
  });
  auto r2 = cogent::spawn([&] {
    char b[16];
    err2 = errno_of([&] { (void)s.read_some(b, sizeof b); });
  });
  cogent::sleep(5ms);  // both recvs are in flight
  int nb[2] = {-1, -1};
  bool in_hub = false;
  bool old_open_after_close = false;
  cogent::hub::current().post([&] {
    in_hub = cogent::hub::current().in_hub();
    s.close();
    old_open_after_close = fd_open(old_fd);  // reserved: the readers' ops are outstanding
    fresh_pair(nb, "other");
  });
  cogent::joinall({r1, r2}, 2s);
  CHECK(r1.ready());
  CHECK(r2.ready());
  CHECK(in_hub);
  CHECK(err1 == EBADF);
  CHECK(err2 == EBADF);
  CHECK(old_open_after_close);
  CHECK(nb[0] != old_fd);
  CHECK(nb[1] != old_fd);
  CHECK(pending_bytes(nb[0]) == "other");
  CHECK(pending_bytes(nb[1]) == "other");
  CHECK_FALSE(fd_open(old_fd));  // the last reader to let go closed it
  ::close(nb[0]);
  ::close(nb[1]);
  ::close(sv[1]);
  CHECK(open_fds() == fds_before);
}

// The same from a timer callback, with a writer blocked on a full send buffer
// and a reader; the socket object is destroyed right after close() returns.
COGENT_TEST_CASE("close() in a timer callback, socket destroyed at once: waiters get EBADF, fd closed after",
                 doctest::timeout(10)) {
  int fds_before = open_fds();
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  const int old_fd = sv[0];
  auto s = std::make_unique<stream_socket>(sv[0]);
  s->set_send_buffer_size(4096);
  int werr = -1;
  int rerr = -1;
  auto w = cogent::spawn([&] {
    std::string big(1 << 20, 'w');
    werr = errno_of([&] { s->write_all(big); });
  });
  auto r = cogent::spawn([&] {
    char b[16];
    rerr = errno_of([&] { (void)s->read_some(b, sizeof b); });
  });
  cogent::sleep(5ms);  // the send is blocked on the full buffer, the recv in flight
  int nb[2] = {-1, -1};
  bool in_hub = false;
  bool old_open_after_close = false;
  callback_timer t;
  t.fn = [&] {
    in_hub = cogent::hub::current().in_hub();
    s->close();
    s.reset();
    old_open_after_close = fd_open(old_fd);
    fresh_pair(nb, "other");
  };
  t.deadline = cogent::clock::now() + 1ms;
  t.fire = [](cogent::detail::timer_node* n) { static_cast<callback_timer*>(n)->fn(); };
  cogent::hub::current().add_timer(t);
  cogent::joinall({w, r}, 2s);
  CHECK(w.ready());
  CHECK(r.ready());
  CHECK(in_hub);
  CHECK(werr == EBADF);
  CHECK(rerr == EBADF);
  CHECK(old_open_after_close);
  CHECK(nb[0] != old_fd);
  CHECK(nb[1] != old_fd);
  CHECK(pending_bytes(nb[0]) == "other");
  CHECK(pending_bytes(nb[1]) == "other");
  CHECK_FALSE(fd_open(old_fd));
  ::close(nb[0]);
  ::close(nb[1]);
  ::close(sv[1]);
  CHECK(open_fds() == fds_before);
}

// A close() killed while it waits for a blocked reader to let go: the fd is
// not closed under the reader (before: at once), but when it lets go.
COGENT_TEST_CASE("a close() killed while waiting leaves the fd to the reader, which closes it",
                 doctest::timeout(10)) {
  int fds_before = open_fds();
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  const int old_fd = sv[0];
  stream_socket s(sv[0]);
  int rerr = -1;
  auto r = cogent::spawn([&] {
    char b[16];
    rerr = errno_of([&] { (void)s.read_some(b, sizeof b); });
  });
  cogent::sleep(5ms);  // the recv is in flight
  bool open_when_killed = false;
  auto c = cogent::spawn([&] {
    try {
      s.close();
    } catch (...) {
      open_when_killed = fd_open(old_fd);  // the reader has not let go yet
      throw;
    }
  });
  cogent::yield();  // c cancelled the recv and waits for the reader
  c.kill(nullptr, false);
  cogent::joinall({r, c}, 2s);
  CHECK(c.killed());
  CHECK(r.ready());
  CHECK(rerr == EBADF);
  CHECK(open_when_killed);
  CHECK_FALSE(fd_open(old_fd));
  ::close(sv[1]);
  CHECK(open_fds() == fds_before);
}

// A thread that ends while the waiters of a socket closed in the hub are still
// parked (their cancels not even submitted): the hub goes without ever reaping
// their completions, and the fd must still be closed. In a child process: the
// parked fiber and its task are abandoned with the thread (as for any fiber
// parked when its thread ends), which LeakSanitizer would report at exit.
TEST_CASE("a socket closed in the hub is not leaked when its thread ends with the waiters parked" *
          doctest::timeout(20)) {
  cogent::test::child_result res = cogent::test::closed_at_thread_end([](stream_socket& s) {
    cogent::event closed;
    cogent::hub::current().post([&] {
      s.close();
      closed.set();
    });
    closed.wait();  // resumed in the turn the callback ran: the reader's cancel is still queued
  });
  INFO("child stderr: " << res.err);
  CHECK(res.exited(0));
  CHECK(res.err.find("parked=1") != std::string::npos);
  CHECK(res.err.find("Sanitizer") == std::string::npos);
}

// A reader in read_exactly() whose recv has already completed with some bytes
// (the kernel has them, the CQE is not reaped yet) when a post() callback
// closes and destroys the socket: it must raise EBADF without touching the
// destroyed object for its next op (ASan: heap-use-after-free before the fix).
COGENT_TEST_CASE("close() and destroy in a callback while read_exactly's recv completes: EBADF, no use after free",
                 doctest::timeout(10)) {
  int fds_before = open_fds();
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  auto s = std::make_unique<stream_socket>(sv[0]);
  int err = -1;
  auto reader = cogent::spawn([&, sock = s.get()] {
    char b[16];
    err = errno_of([&] { sock->read_exactly(b, sizeof b); });  // wants 16, gets 5 first
  });
  cogent::sleep(5ms);  // its recv is in flight
  REQUIRE(::send(sv[1], "hello", 5, MSG_NOSIGNAL) == 5);  // completes the recv in the kernel
  cogent::hub::current().post([&] {
    s->close();  // before the hub reaps the recv's completion
    s.reset();
  });
  CHECK(reader.join(2s));
  CHECK(err == EBADF);
  ::close(sv[1]);
  CHECK(open_fds() == fds_before);
}
