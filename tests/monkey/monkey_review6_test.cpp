// tests/monkey/monkey_review6_test.cpp — sixth adversarial review of the hooks: the input side of
// fd renumbering (a parked call whose fd number another fiber dup2()s or closes and reuses), the
// loops that go on by number after a wait (peek_wait, recvmmsg, pipe writes, sendfile), and the
// user's O_NONBLOCK on a description the per-fd table does not know is shared.
//
// Each case states what libc does for the same inputs, checked against the same scenario on
// plain std::threads (no hub: exactly libc); a difference is a deviation of the hooks.
// When written, all six cases failed. Probed and found as libc (no case kept): accept4 flags on
// the new socket, a too-small peer address buffer (truncated, full length in *addrlen), a
// blocking accept ended by shutdown() of the listener (EINVAL).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "monkey/monkey.hpp"
#include "tests/monkey/fibers.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

using result = cogent::test::call_result;
using cogent::test::bounded;
using cogent::test::here_result;
using cogent::test::libc_result;

using cogent::test::since;
using cogent::test::fiber_nap;
using cogent::test::on_fibers;
using cogent::test::on_threads;
using cogent::test::starter;
using cogent::test::thread_nap;

// renumber() makes fd's number another file's while a call is parked on it: dup2(other, fd), or
// close(fd) and the number reused at once (F_DUPFD: the lowest free number >= fd).
void renumber(int fd, int other, bool by_close) {
  if (by_close) {
    REQUIRE(::close(fd) == 0);
    REQUIRE(::fcntl(other, F_DUPFD, fd) == fd);
  } else {
    REQUIRE(::dup2(other, fd) == fd);
  }
}

// read_call is a blocking receive of up to n bytes into buf on fd; returns the bytes received.
using read_call = std::function<long(int fd, char* buf, std::size_t n)>;

// renumber_while_reading() parks `call` on a[0] of an AF_UNIX pair of `type`, renumbers a[0] to
// b[0] of a second pair, then sends "AAAAA" to the original socket (a[1]) and, 300 ms later,
// "BBBBB" to the one that took the number (b[1]). Returns what the call received: libc's call
// holds the socket it was called on and gets "AAAAA".
std::string renumber_while_reading(const starter& start, const std::function<void()>& nap, bool by_close,
                                   int type, const read_call& call) {
  int a[2], b[2];
  REQUIRE(::socketpair(AF_UNIX, type, 0, a) == 0);
  REQUIRE(::socketpair(AF_UNIX, type, 0, b) == 0);
  std::string got = "(none)";
  std::atomic<bool> done{false};
  auto join = start([&] {
    char buf[16] = {};
    long r = call(a[0], buf, 5);
    got = r > 0 ? std::string(buf, static_cast<std::size_t>(r)) : "(returned " + std::to_string(r) + ")";
    done = true;
  });
  for (int i = 0; i < 20; ++i) {
    nap();  // the reader is parked now
  }
  REQUIRE_FALSE(done.load());
  renumber(a[0], b[0], by_close);
  REQUIRE(::send(a[1], "AAAAA", 5, 0) == 5);
  auto t0 = steady::now();
  while (!done.load() && since(t0) < 0.3) {
    nap();
  }
  (void)::send(b[1], "BBBBB", 5, MSG_DONTWAIT);  // frees a reader waiting on the wrong socket
  t0 = steady::now();
  while (!done.load() && since(t0) < 3) {
    nap();
  }
  if (!done.load()) {
    ::shutdown(a[1], SHUT_RDWR);  // last resort: never hang
    ::shutdown(b[1], SHUT_RDWR);
  }
  join();
  for (int fd : {a[0], a[1], b[0], b[1]}) {
    ::close(fd);
  }
  return got;
}

void check_reader(const std::string& what, int type, const read_call& call) {
  for (bool by_close : {false, true}) {
    CAPTURE(what);
    CAPTURE(by_close);
    std::string ref = renumber_while_reading(on_threads(), thread_nap, by_close, type, call);
    REQUIRE_MESSAGE(ref == "AAAAA", "libc got ", ref);
    std::string hooked = renumber_while_reading(on_fibers(), fiber_nap, by_close, type, call);
    CHECK_MESSAGE(hooked == ref, what, " through the hook got ", hooked, " (libc: ", ref, ")");
  }
}

}  // namespace

// recv with MSG_PEEK|MSG_WAITALL never goes to io_uring: peek_wait() probes the fd NUMBER, waits
// (POLLIN) and probes the number again, and the final real recv is by number too. The poll op
// holds the old socket and fires on its data, but the probe then looks at the socket that took
// the number (another fiber's dup2(), or close() + reuse): it waits there and returns THAT
// socket's data. libc's recv holds its socket (fdget at entry) and returns "AAAAA".
// recvfrom and recvmsg with the same flags share peek_wait().
COGENT_TEST_CASE("review6: recv MSG_PEEK|MSG_WAITALL parked on a socket keeps it when the number is renumbered",
                 doctest::timeout(30)) {
  cogent::monkey::patch_all();
  check_reader("recv(MSG_PEEK|MSG_WAITALL)", SOCK_STREAM,
               [](int fd, char* buf, std::size_t n) { return static_cast<long>(::recv(fd, buf, n, MSG_PEEK | MSG_WAITALL)); });
  check_reader("recvmsg(MSG_PEEK|MSG_WAITALL)", SOCK_DGRAM, [](int fd, char* buf, std::size_t n) {
    iovec v{buf, n};
    msghdr m{};
    m.msg_iov = &v;
    m.msg_iovlen = 1;
    return static_cast<long>(::recvmsg(fd, &m, MSG_PEEK | MSG_WAITALL));
  });
}

// recvmmsg waits on POLLIN of the old socket (the op holds it) but then takes its batch with
// real.recvmmsg on the NUMBER: after a renumbering the datagram comes from the socket that took
// the number, while libc's recvmmsg (one fdget for the call) returns the original socket's.
COGENT_TEST_CASE("review6: recvmmsg parked on a socket keeps it when the number is renumbered",
                 doctest::timeout(30)) {
  cogent::monkey::patch_all();
  check_reader("recvmmsg", SOCK_DGRAM, [](int fd, char* buf, std::size_t n) {
    iovec v{buf, n};
    mmsghdr m{};
    m.msg_hdr.msg_iov = &v;
    m.msg_hdr.msg_iovlen = 1;
    int r = ::recvmmsg(fd, &m, 1, 0, nullptr);
    return r == 1 ? static_cast<long>(m.msg_len) : static_cast<long>(r);
  });
}

namespace {

using cogent::test::drain_fd;

// pipe_outcome is what a blocking write() of 200000 bytes to a pipe saw when its write end's
// number was renumbered to another pipe's while it waited, and where the bytes went.
struct pipe_outcome {
  long written = -2;
  long to_old = 0;  // read from the original pipe
  long to_new = 0;  // read from the pipe that took the number
};

pipe_outcome renumber_while_writing_pipe(const starter& start, const std::function<void()>& nap, bool by_close) {
  pipe_outcome out;
  int p[2], q[2];
  REQUIRE(::pipe(p) == 0);
  REQUIRE(::pipe(q) == 0);
  constexpr std::size_t n = 200000;  // ~3 pipe buffers
  static std::vector<char> payload(n, 'p');
  std::atomic<bool> done{false};
  auto join = start([&] {
    out.written = ::write(p[1], payload.data(), n);
    done = true;
  });
  for (int i = 0; i < 20; ++i) {
    nap();  // the writer filled the pipe and waits for room
  }
  REQUIRE_FALSE(done.load());
  renumber(p[1], q[1], by_close);
  auto t0 = steady::now();
  while (since(t0) < 5) {
    out.to_old += drain_fd(p[0]);
    out.to_new += drain_fd(q[0]);
    if (done.load()) {
      break;
    }
    nap();
  }
  join();
  out.to_old += drain_fd(p[0]);
  out.to_new += drain_fd(q[0]);
  for (int fd : {p[0], p[1], q[0], q[1]}) {
    ::close(fd);
  }
  return out;
}

}  // namespace

// A blocking pipe write larger than the pipe buffer writes all of it to the pipe it was called
// on: pipe_write() holds the file across its waits. The hook's file_writev() writes what fits
// (RWF_NOWAIT), then queues writev ops on the fd NUMBER, one after another as each returns a
// short count: after another fiber's dup2() or close() + reuse, the next op writes the rest into
// the pipe that took the number. (review5 fixed this for sockets, not for pipes.)
COGENT_TEST_CASE("review6: a pipe write larger than the buffer keeps its pipe when the number is renumbered",
                 doctest::timeout(30)) {
  cogent::monkey::patch_all();
  for (bool by_close : {false, true}) {
    CAPTURE(by_close);
    pipe_outcome ref = renumber_while_writing_pipe(on_threads(), thread_nap, by_close);
    REQUIRE(ref.written == 200000);
    REQUIRE(ref.to_old == 200000);
    REQUIRE(ref.to_new == 0);
    pipe_outcome hooked = renumber_while_writing_pipe(on_fibers(), fiber_nap, by_close);
    CHECK_MESSAGE(hooked.written == ref.written, "hooked write returned ", hooked.written);
    CHECK_MESSAGE(hooked.to_old == ref.to_old, "the original pipe got ", hooked.to_old);
    CHECK_MESSAGE(hooked.to_new == 0, "the pipe that took the number got ", hooked.to_new, " bytes");
  }
}

namespace {

// scratch_file() is an unlinked file holding n bytes of `fill`, its position at 0.
int scratch_file(std::size_t n, char fill) {
  int fd = cogent::test::open_scratch_file();
  REQUIRE(fd >= 0);
  std::vector<char> data(n, fill);
  REQUIRE(::pwrite(fd, data.data(), n, 0) == static_cast<ssize_t>(n));
  return fd;
}

// sendfile_pipe_outcome: a sendfile() of 4096 bytes to a FULL pipe, whose write end's number is
// renumbered to another (empty) pipe's while it waits for room; then the old pipe is drained.
struct sendfile_pipe_outcome {
  long sent = -2;
  long file_bytes_old = 0;  // 'f' bytes the original pipe got
  long file_bytes_new = 0;  // 'f' bytes the pipe that took the number got
};

sendfile_pipe_outcome renumber_sendfile_to_pipe(const starter& start, const std::function<void()>& nap, bool by_close) {
  sendfile_pipe_outcome out;
  int p[2], q[2];
  REQUIRE(::pipe(p) == 0);
  REQUIRE(::pipe(q) == 0);
  int f = scratch_file(4096, 'f');
  // Fill p (64 KiB by default) without waiting.
  REQUIRE(::fcntl(p[1], F_SETFL, O_NONBLOCK) == 0);
  static char junk[65536];
  std::memset(junk, 'j', sizeof junk);
  while (::write(p[1], junk, sizeof junk) > 0) {
  }
  REQUIRE(::fcntl(p[1], F_SETFL, 0) == 0);
  std::atomic<bool> done{false};
  auto join = start([&] {
    out.sent = ::sendfile(p[1], f, nullptr, 4096);
    done = true;
  });
  for (int i = 0; i < 20; ++i) {
    nap();
  }
  REQUIRE_FALSE(done.load());
  renumber(p[1], q[1], by_close);
  long old_counts[256] = {}, new_counts[256] = {};
  auto t0 = steady::now();
  while (since(t0) < 5) {
    drain_fd(p[0], old_counts);
    drain_fd(q[0], new_counts);
    if (done.load()) {
      break;
    }
    nap();
  }
  join();
  drain_fd(p[0], old_counts);
  drain_fd(q[0], new_counts);
  out.file_bytes_old = old_counts['f'];
  out.file_bytes_new = new_counts['f'];
  for (int fd : {p[0], p[1], q[0], q[1], f}) {
    ::close(fd);
  }
  return out;
}

}  // namespace

// sendfile(2) to a pipe holds out_fd's file (fdget at entry) while it waits for room: the bytes
// go to the pipe it was called on. The hook waits on POLLOUT of the old pipe (the op holds it),
// then asks poll() of the NUMBER and calls real sendfile on the NUMBER: the file's bytes go into
// the pipe that took the number meanwhile.
COGENT_TEST_CASE("review6: sendfile to a full pipe keeps its pipe when the number is renumbered",
                 doctest::timeout(30)) {
  cogent::monkey::patch_all();
  for (bool by_close : {false, true}) {
    CAPTURE(by_close);
    sendfile_pipe_outcome ref = renumber_sendfile_to_pipe(on_threads(), thread_nap, by_close);
    REQUIRE(ref.sent == 4096);
    REQUIRE(ref.file_bytes_old == 4096);
    REQUIRE(ref.file_bytes_new == 0);
    sendfile_pipe_outcome hooked = renumber_sendfile_to_pipe(on_fibers(), fiber_nap, by_close);
    CHECK_MESSAGE(hooked.sent == ref.sent, "hooked sendfile returned ", hooked.sent);
    CHECK_MESSAGE(hooked.file_bytes_old == 4096, "the original pipe got ", hooked.file_bytes_old);
    CHECK_MESSAGE(hooked.file_bytes_new == 0, "the pipe that took the number got ", hooked.file_bytes_new,
                  " bytes of the file");
  }
}

namespace {

// sendfile_in_outcome: a sendfile() of 1 MiB from file A ('a's, position 0) to an AF_UNIX socket
// nobody reads yet, whose IN_FD number is renumbered to file B ('b's) while it waits for room;
// then the peer drains everything.
struct sendfile_in_outcome {
  long sent = -2;
  long a_bytes = 0;
  long b_bytes = 0;
};

sendfile_in_outcome renumber_sendfile_in(const starter& start, const std::function<void()>& nap, bool by_close) {
  sendfile_in_outcome out;
  constexpr std::size_t n = 1 << 20;
  int fa = scratch_file(n, 'a');
  int fb = scratch_file(n, 'b');
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  std::atomic<bool> done{false};
  auto join = start([&] {
    out.sent = ::sendfile(s[0], fa, nullptr, n);
    done = true;
  });
  for (int i = 0; i < 20; ++i) {
    nap();  // the socket buffer is full: the sender waits for room
  }
  REQUIRE_FALSE(done.load());
  renumber(fa, fb, by_close);
  long counts[256] = {};
  auto t0 = steady::now();
  while (since(t0) < 5) {
    drain_fd(s[1], counts);
    if (done.load()) {
      break;
    }
    nap();
  }
  join();
  drain_fd(s[1], counts);
  out.a_bytes = counts['a'];
  out.b_bytes = counts['b'];
  for (int fd : {s[0], s[1], fa, fb}) {
    ::close(fd);
  }
  return out;
}

}  // namespace

// sendfile(2) reads in_fd through the file it got at entry: a dup2() onto in_fd's number (or a
// close() + reuse) by another thread while it waits for room in out_fd changes nothing — all
// 1 MiB comes from file A. The hook holds a duplicate of out_fd (review5) but goes on reading
// in_fd by NUMBER after each wait (sock_sendfile_now(st.at(out), in, ...)): the rest comes from
// file B, at B's own position.
COGENT_TEST_CASE("review6: sendfile to a socket keeps reading its in_fd when that number is renumbered",
                 doctest::timeout(30)) {
  cogent::monkey::patch_all();
  for (bool by_close : {false, true}) {
    CAPTURE(by_close);
    sendfile_in_outcome ref = renumber_sendfile_in(on_threads(), thread_nap, by_close);
    REQUIRE(ref.sent == 1 << 20);
    REQUIRE(ref.a_bytes == 1 << 20);
    REQUIRE(ref.b_bytes == 0);
    sendfile_in_outcome hooked = renumber_sendfile_in(on_fibers(), fiber_nap, by_close);
    CHECK_MESSAGE(hooked.sent == ref.sent, "hooked sendfile returned ", hooked.sent);
    CHECK_MESSAGE(hooked.a_bytes == ref.a_bytes, "bytes of in_fd's file: ", hooked.a_bytes);
    CHECK_MESSAGE(hooked.b_bytes == 0, "bytes of the file that took in_fd's number: ", hooked.b_bytes);
  }
}

namespace {

// pass_to_self() sends fd over a fresh AF_UNIX pair and returns the fd received: a second fd of
// the same open file description (as a dup, but the hooks see only the receiving side).
int pass_to_self(int fd) {
  int ctl[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, ctl) == 0);
  cogent::test::rights_msg out(fd);
  REQUIRE(::sendmsg(ctl[0], &out.m, 0) == 1);
  cogent::test::rights_msg in;
  REQUIRE(::recvmsg(ctl[1], &in.m, 0) == 1);
  int got = in.received_fd();
  REQUIRE(got >= 0);
  ::close(ctl[0]);
  ::close(ctl[1]);
  return got;
}

// fill_socket() fills fd's send side (MSG_DONTWAIT: never waits).
void fill_socket(int fd) {
  static char junk[65536];
  while (::send(fd, junk, sizeof junk, MSG_DONTWAIT) > 0) {
  }
}

// nonblock_results() is what a read and a write on s[0] (a blocking AF_UNIX stream pair, nothing
// to read, the send side full) return after `make_nonblock(s[0])` turned O_NONBLOCK on for its
// description through another fd: libc's are -1/EAGAIN at once.
struct nonblock_calls {
  result read, recv, write, send;
  result libc_read;  // the same read on a plain thread
};

nonblock_calls nonblock_results(const std::function<void(int)>& make_nonblock) {
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  char c = 0;
  REQUIRE(::write(s[1], "z", 1) == 1);
  REQUIRE(::read(s[0], &c, 1) == 1);  // first use: the table has s[0] as a blocking socket
  fill_socket(s[0]);
  make_nonblock(s[0]);
  REQUIRE((::fcntl(s[0], F_GETFL) & O_NONBLOCK) != 0);
  static char big[4096];
  nonblock_calls out;
  out.libc_read = libc_result([&] { return ::read(s[0], &c, 1); });
  out.read = bounded([&] { return ::read(s[0], &c, 1); }, 1500ms);
  out.recv = bounded([&] { return ::recv(s[0], &c, 1, 0); }, 1500ms);
  out.write = bounded([&] { return ::write(s[0], big, sizeof big); }, 1500ms);
  out.send = bounded([&] { return ::send(s[0], big, sizeof big, 0); }, 1500ms);
  ::close(s[0]);
  ::close(s[1]);
  return out;
}

void check_nonblock(const nonblock_calls& got) {
  const result eagain{-1, EAGAIN};
  REQUIRE(got.libc_read == eagain);
  CHECK_MESSAGE(got.read == eagain, "read: ", got.read.first, "/", got.read.second);
  CHECK_MESSAGE(got.recv == eagain, "recv: ", got.recv.first, "/", got.recv.second);
  CHECK_MESSAGE(got.write == eagain, "write: ", got.write.first, "/", got.write.second);
  CHECK_MESSAGE(got.send == eagain, "send: ", got.send.first, "/", got.send.second);
}

}  // namespace

// O_NONBLOCK belongs to the open file description. An fd passed through SCM_RIGHTS shares it:
// the hooks mark the RECEIVED fd shared (received_fds()), but not the fd it was sent from. When
// the app turns O_NONBLOCK on through the received fd (fcntl or ioctl FIONBIO), the sender's fd
// is non-blocking in the kernel, and libc's read/recv/write/send on it fail at once with EAGAIN.
// The table still says "blocking" for the sender's fd (user_nonblock() reads its own bit), so
// the hooks cooperate: the sends park on POLLOUT until the bounded() Timeout (1.5 s) ends them
// with EINTR. The same after fork(): a child that sets O_NONBLOCK on an inherited socket changes
// the parent's description, which the parent's table never learns.
COGENT_TEST_CASE("review6: O_NONBLOCK set through an fd passed by SCM_RIGHTS or by a fork()ed child is honoured",
                 doctest::timeout(40)) {
  cogent::monkey::patch_all();
  SUBCASE("fcntl through the fd received by SCM_RIGHTS") {
    check_nonblock(nonblock_results([](int fd) {
      int other = pass_to_self(fd);
      REQUIRE(::fcntl(other, F_SETFL, ::fcntl(other, F_GETFL) | O_NONBLOCK) == 0);
      ::close(other);
    }));
  }
  SUBCASE("ioctl FIONBIO through the fd received by SCM_RIGHTS") {
    check_nonblock(nonblock_results([](int fd) {
      int other = pass_to_self(fd);
      int on = 1;
      REQUIRE(::ioctl(other, FIONBIO, &on) == 0);
      ::close(other);
    }));
  }
  SUBCASE("fcntl in a fork()ed child") {
    check_nonblock(nonblock_results([](int fd) {
      pid_t pid = ::fork();
      REQUIRE(pid >= 0);
      if (pid == 0) {
        ::fcntl(fd, F_SETFL, O_NONBLOCK);
        ::_exit(0);
      }
      int status = 0;
      REQUIRE(::waitpid(pid, &status, 0) == pid);
    }));
  }
}

