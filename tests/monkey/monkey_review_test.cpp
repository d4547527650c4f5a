// tests/monkey/monkey_review_test.cpp — adversarial review of monkey/monkey.cpp and monkey/hooks.cpp.
// Each case states what libc does for the same inputs; a failure is a deviation. The four pipe
// cases failed before hooked read()/write()/readv()/writev() on a pipe tried the call at once (RWF_NOWAIT) before
// queueing an io_uring op. Not fixed (closing note): a signal without SA_RESTART does not give
// EINTR in a hooked call; an fd sent through SCM_RIGHTS does not see O_NONBLOCK set on the
// received copy; a blocked unconnected AF_UNIX datagram sendto spins on POLLOUT.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "monkey/monkey.hpp"
#include "tests/monkey/fibers.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;

namespace {

using cogent::test::bounded;
using cogent::test::here_result;

template <class F>
std::pair<long, int> libc_result(F f) {
  std::pair<long, int> out;
  std::thread([&] { out = here_result(f); }).join();  // no hub there: exactly libc
  return out;
}

int g_selfpipe_w = -1;
void on_signal_selfpipe(int) {
  int saved = errno;
  [[maybe_unused]] ssize_t n = ::write(g_selfpipe_w, "x", 1);
  errno = saved;
}

}  // namespace

// A fiber's write() to a pipe with room: libc writes at once, before any
// other fiber runs. The hook only queues an SQE that the kernel resolves by fd
// NUMBER at the hub's next io_uring_enter — after the other ready fibers ran.
// If one of them dup2()s (or close()s and reuses) that number, the data goes to
// the new file.
COGENT_TEST_CASE("review: a write queued by the hook follows the fd number to another file",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int p1[2], p2[2];
  REQUIRE(::pipe(p1) == 0);
  REQUIRE(::pipe(p2) == 0);
  int w = p1[1];
  long wr = -2;
  auto a = cogent::spawn([&] { wr = ::write(w, "AAAA", 4); });
  auto b = cogent::spawn([&] { REQUIRE(::dup2(p2[1], w) == w); });  // A's write() returned before this, in libc
  cogent::joinall({a, b});
  CHECK(wr == 4);
  char buf[8] = {};
  pollfd pf[2] = {{p1[0], POLLIN, 0}, {p2[0], POLLIN, 0}};
  REQUIRE(::poll(pf, 2, 0) >= 1);
  long in_p1 = (pf[0].revents & POLLIN) ? ::read(p1[0], buf, sizeof buf) : -1;  // EOF (0) if data went elsewhere
  bool in_p2 = (pf[1].revents & POLLIN) != 0;
  CHECK_MESSAGE(in_p1 == 4, "A's bytes did not arrive in the pipe A wrote to");
  CHECK_MESSAGE(!in_p2, "A's bytes landed in the pipe that took over the fd number");
  ::close(p1[0]);
  ::close(w);
  ::close(p2[0]);
  ::close(p2[1]);
}

// Same root cause on the read side: a read() on a pipe holding data returns it
// at once in libc; with the hook, a fiber that runs before the submission and
// dup2()s another pipe onto the number makes the read take the OTHER pipe's data.
COGENT_TEST_CASE("review: a read queued by the hook steals data from the file that took the number",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int p1[2], p2[2];
  REQUIRE(::pipe(p1) == 0);
  REQUIRE(::pipe(p2) == 0);
  REQUIRE(::write(p1[1], "mine", 4) == 4);
  REQUIRE(::write(p2[1], "THEIRS", 6) == 6);
  int r = p1[0];
  char buf[16] = {};
  long rd = -2;
  auto a = cogent::spawn([&] { rd = ::read(r, buf, sizeof buf); });
  auto b = cogent::spawn([&] { REQUIRE(::dup2(p2[0], r) == r); });
  cogent::joinall({a, b});
  CHECK(rd == 4);
  CHECK(std::string(buf, rd > 0 ? static_cast<std::size_t>(rd) : 0) == "mine");
  ::close(r);
  ::close(p1[1]);
  ::close(p2[0]);
  ::close(p2[1]);
}

// The same two orderings through writev()/readv(), which the hooks also queued.
COGENT_TEST_CASE("review: writev/readv on a pipe complete before another fiber dup2()s the number",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int p1[2], p2[2];
  REQUIRE(::pipe(p1) == 0);
  REQUIRE(::pipe(p2) == 0);
  int w = p1[1];
  char a1[] = "AA", a2[] = "BB";
  iovec out[2] = {{a1, 2}, {a2, 2}};
  long wr = -2;
  auto a = cogent::spawn([&] { wr = ::writev(w, out, 2); });
  auto b = cogent::spawn([&] { REQUIRE(::dup2(p2[1], w) == w); });
  cogent::joinall({a, b});
  CHECK(wr == 4);
  char buf[8] = {};
  pollfd pf{p1[0], POLLIN, 0};
  REQUIRE(::poll(&pf, 1, 0) == 1);
  CHECK(::read(p1[0], buf, sizeof buf) == 4);
  CHECK(std::string(buf, 4) == "AABB");
  // readv: p1 holds "mine", p2 "THEIRS"; a fiber dup2()s p2's read end onto p1's.
  REQUIRE(::write(p2[1], "THEIRS", 6) == 6);
  int q[2];
  REQUIRE(::pipe(q) == 0);
  REQUIRE(::write(q[1], "mine", 4) == 4);
  int r = q[0];
  char x[2] = {}, y[8] = {};
  iovec in[2] = {{x, 2}, {y, sizeof y}};
  long rd = -2;
  auto c = cogent::spawn([&] { rd = ::readv(r, in, 2); });
  auto d = cogent::spawn([&] { REQUIRE(::dup2(p2[0], r) == r); });
  cogent::joinall({c, d});
  CHECK(rd == 4);
  CHECK(std::string(x, 2) + std::string(y, 2) == "mine");
  for (int fd : {p1[0], p1[1], p2[0], p2[1], q[0], q[1]}) {
    ::close(fd);
  }
}

// The self-pipe trick: a signal handler write()s one byte to a (blocking)
// pipe with room. In libc that returns at once. The hook makes it a
// cooperative io_uring write: the fiber PARKS INSIDE THE SIGNAL HANDLER, the hub
// and other fibers run meanwhile — with the signal still blocked in the
// thread's mask, and on hub structures the handler may have interrupted.
COGENT_TEST_CASE("review: a write from a signal handler never switches fibers", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int p[2];
  REQUIRE(::pipe(p) == 0);
  g_selfpipe_w = p[1];
  struct sigaction sa {}, old{};
  sa.sa_handler = on_signal_selfpipe;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  REQUIRE(sigaction(SIGUSR2, &sa, &old) == 0);
  bool ran = false;
  bool saw_blocked = false;
  auto probe = cogent::spawn([&] {
    ran = true;
    sigset_t cur;
    pthread_sigmask(SIG_SETMASK, nullptr, &cur);
    saw_blocked = sigismember(&cur, SIGUSR2) == 1;
  });
  ::raise(SIGUSR2);  // the handler runs before raise() returns
  bool ran_during_handler = ran;
  probe.join();
  CHECK_MESSAGE(!ran_during_handler, "another fiber ran while the signal handler was parked in write()");
  CHECK_MESSAGE(!saw_blocked, "the other fiber ran with SIGUSR2 blocked (inside the handler's mask)");
  char c;
  CHECK(::read(p[0], &c, 1) == 1);
  sigaction(SIGUSR2, &old, nullptr);
  ::close(p[0]);
  ::close(p[1]);
}

// recv(MSG_TRUNC) on a UDP socket returns the datagram's real length in libc.
COGENT_TEST_CASE("review: recv with MSG_TRUNC on UDP returns the full datagram length", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int u = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(u, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  ::getsockname(u, reinterpret_cast<sockaddr*>(&a), &len);
  REQUIRE(::connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  char buf[4];
  REQUIRE(::send(u, "0123456789", 10, 0) == 10);
  auto ref = libc_result([&] { return ::recv(u, buf, 2, MSG_TRUNC | MSG_PEEK); });
  auto got = here_result([&] { return ::recv(u, buf, 2, MSG_TRUNC); });
  CHECK(ref.first == 10);
  CHECK_MESSAGE(got == ref, "hooked ", got.first, "/", got.second);
  ::close(u);
}
