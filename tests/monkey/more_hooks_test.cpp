// tests/monkey/more_hooks_test.cpp — the hooks added for preadv/pwritev (and preadv2/pwritev2),
// sendfile, recvmmsg/sendmmsg and pselect: from a fiber each waits cooperatively (another fiber
// runs meanwhile), returns what libc returns (compared against the same call on a plain
// std::thread, which has no hub: exactly libc), keeps libc's no-wait cases (O_NONBLOCK,
// MSG_DONTWAIT, zero lengths) and comes back -1/EINTR, with nothing left behind, when its fiber is
// killed or timed out while parked.
#include <fcntl.h>
#include <poll.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "monkey/monkey.hpp"
#include "tests/monkey/fibers.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::test::call_result;
using cogent::test::here_result;
using cogent::test::libc_result;
using cogent::test::parks;
using cogent::test::ticker;
using cogent::test::woken_later;
using steady = std::chrono::steady_clock;

namespace {

// A scratch file holding `n` bytes: byte i is 'a' + i % 26.
int file_with(std::size_t n) {
  int fd = cogent::test::open_scratch_file();
  REQUIRE(fd >= 0);
  std::string data(n, '\0');
  for (std::size_t i = 0; i < n; ++i) {
    data[i] = static_cast<char>('a' + i % 26);
  }
  REQUIRE(::pwrite(fd, data.data(), n, 0) == static_cast<ssize_t>(n));
  return fd;
}

// fill() stuffs a socket's send buffer (or a pipe) until a non-blocking write of even one byte
// fails. Returns the bytes written.
std::size_t fill(int fd) {
  std::vector<char> chunk(65536, 'x');
  std::size_t total = 0;
  int fl = ::fcntl(fd, F_GETFL);
  REQUIRE(::fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0);
  for (std::size_t sz : {std::size_t{65536}, std::size_t{4096}, std::size_t{1}}) {
    for (;;) {
      ssize_t r = ::write(fd, chunk.data(), sz);
      if (r <= 0) {
        break;
      }
      total += static_cast<std::size_t>(r);
    }
  }
  REQUIRE(::fcntl(fd, F_SETFL, fl) == 0);
  return total;
}

// drain() reads n bytes from fd into out (appended).
void drain(int fd, std::size_t n, std::string* out = nullptr) {
  std::vector<char> buf(65536);
  while (n > 0) {
    ssize_t r = ::read(fd, buf.data(), std::min(n, buf.size()));
    if (r <= 0) {
      break;
    }
    if (out != nullptr) {
      out->append(buf.data(), static_cast<std::size_t>(r));
    }
    n -= static_cast<std::size_t>(r);
  }
}

// A socketpair with small buffers, closed at the end.
struct sock_pair {
  int s[2] = {-1, -1};
  explicit sock_pair(int type = SOCK_STREAM) {
    REQUIRE(::socketpair(AF_UNIX, type, 0, s) == 0);
    int sz = 16384;
    ::setsockopt(s[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    ::setsockopt(s[1], SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
  }
  ~sock_pair() {
    ::close(s[0]);
    ::close(s[1]);
  }
};

struct pipe_pair {
  int p[2] = {-1, -1};
  pipe_pair() { REQUIRE(::pipe(p) == 0); }
  ~pipe_pair() {
    ::close(p[0]);
    ::close(p[1]);
  }
};

// killed_in() parks a fiber in call(), kills it after 20 ms and returns what call() gave.
// The fiber must come out killed, with the kill raised at its next switch point.
template <class F>
call_result killed_in(F call) {
  call_result got{-2, 0};
  bool after = false;
  auto t = cogent::spawn([&] {
    got = here_result(call);
    cogent::sleep(0ms);  // the pending kill is raised here
    after = true;
  });
  cogent::sleep(20ms);
  t.kill();
  CHECK(t.ready());
  CHECK(t.killed());
  CHECK_FALSE(after);
  return got;
}

}  // namespace

// ---- preadv / pwritev / preadv2 / pwritev2 --------------------------------------------------

COGENT_TEST_CASE("more hooks: preadv/pwritev on a file go through the ring and match libc",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int fd = file_with(100);
  char a[10], b[20];
  iovec in[2] = {{a, sizeof a}, {b, sizeof b}};
  auto p = parks([&] { return ::preadv(fd, in, 2, 5); });
  CHECK(p.parked);  // a readv op the fiber waited for
  CHECK(p.result == 30);
  CHECK(std::string(a, 10) == "fghijklmno");
  CHECK(std::string(b, 3) == "pqr");
  CHECK(::lseek(fd, 0, SEEK_CUR) == 0);  // the file position is not touched
  // Past the end: the short count; at the end: 0 — as libc.
  auto short_read = here_result([&] { return ::preadv(fd, in, 2, 90); });
  CHECK(short_read == libc_result([&] { return ::preadv(fd, in, 2, 90); }));
  CHECK(short_read.first == 10);
  CHECK(here_result([&] { return ::preadv(fd, in, 2, 100); }) == call_result{0, 0});

  const char w1[] = "XYZ", w2[] = "1234";
  iovec out[2] = {{const_cast<char*>(w1), 3}, {const_cast<char*>(w2), 4}};
  auto q = parks([&] { return ::pwritev(fd, out, 2, 40); });
  CHECK(q.parked);
  CHECK(q.result == 7);
  char back[7];
  REQUIRE(::pread(fd, back, 7, 40) == 7);
  CHECK(std::string(back, 7) == "XYZ1234");
  CHECK(::lseek(fd, 0, SEEK_CUR) == 0);

  // preadv2/pwritev2 with flags 0 are the same calls.
  auto p2 = parks([&] { return ::preadv2(fd, in, 1, 40, 0); });
  CHECK(p2.parked);
  CHECK(p2.result == 10);
  CHECK(std::string(a, 7) == "XYZ1234");
  auto q2 = parks([&] { return ::pwritev2(fd, out, 1, 0, 0); });
  CHECK(q2.parked);
  CHECK(q2.result == 3);
  ::close(fd);
}

COGENT_TEST_CASE("more hooks: preadv/pwritev edge cases are libc's (no wait)", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int fd = file_with(50);
  char a[8];
  iovec in{a, sizeof a};
  // Each: same result and errno as on a plain thread, and never through the ring.
  auto same = [&](const char* what, auto call) {
    auto p = parks(call);
    CHECK_MESSAGE(!p.parked, what);
    auto here = here_result(call);
    auto libc = libc_result(call);
    CHECK_MESSAGE(here == libc, what, ": ", here.first, "/", here.second, " vs libc ", libc.first, "/",
                  libc.second);
  };
  same("negative offset", [&] { return ::preadv(fd, &in, 1, -5); });
  same("pwritev negative offset", [&] { return ::pwritev(fd, &in, 1, -5); });
  volatile int neg = -1;  // (volatile: the compiler would warn about the constant)
  iovec* volatile none = nullptr;
  same("negative count", [&] { return ::preadv(fd, &in, neg, 0); });
  std::vector<iovec> many(IOV_MAX + 1, in);
  same("count over IOV_MAX", [&] { return ::preadv(fd, many.data(), IOV_MAX + 1, 0); });
  same("zero count", [&] { return ::preadv(fd, &in, 0, 0); });
  iovec empty{a, 0};
  same("zero length", [&] { return ::preadv(fd, &empty, 1, 0); });
  same("pwritev zero length", [&] { return ::pwritev(fd, &empty, 1, 0); });
  same("null array", [&] { return ::preadv(fd, none, 1, 0); });
  same("bad fd", [&] { return ::preadv(-1, &in, 1, 0); });
  same("preadv2 RWF_NOWAIT", [&] { return ::preadv2(fd, &in, 1, 0, RWF_NOWAIT); });
  same("preadv2 bad flag", [&] { return ::preadv2(fd, &in, 1, 0, 0x40000000); });
  same("pwritev2 bad flag", [&] { return ::pwritev2(fd, &in, 1, 0, 0x40000000); });
  // offset -1: the file position, as readv (libc's call, which moves it).
  REQUIRE(::lseek(fd, 10, SEEK_SET) == 10);
  auto cur = parks([&] { return ::preadv2(fd, &in, 1, -1, 0); });
  CHECK_FALSE(cur.parked);
  CHECK(cur.result == 8);
  CHECK(std::string(a, 8) == "klmnopqr");
  CHECK(::lseek(fd, 0, SEEK_CUR) == 18);
  // A pipe: ESPIPE as libc, at once (no wait even when empty).
  pipe_pair pp;
  same("preadv on a pipe", [&] { return ::preadv(pp.p[0], &in, 1, 0); });
  same("pwritev on a pipe", [&] { return ::pwritev(pp.p[1], &in, 1, 0); });
  ::close(fd);
}

COGENT_TEST_CASE("more hooks: preadv on a write-only regular file fails with libc's EBADF",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int fd = file_with(20);
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  int wfd = ::open(path, O_WRONLY);
  REQUIRE(wfd >= 0);
  char a[4];
  iovec in{a, sizeof a};
  auto here = here_result([&] { return ::preadv(wfd, &in, 1, 0); });
  CHECK(here == libc_result([&] { return ::preadv(wfd, &in, 1, 0); }));
  CHECK(here == call_result{-1, EBADF});
  ::close(wfd);
  ::close(fd);
}

COGENT_TEST_CASE("more hooks: preadv errno on success is the caller's; a Timeout in it leaves nothing behind",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int fd = file_with(4096);
  char a[512];
  iovec in{a, sizeof a};
  errno = 4242;
  CHECK(::preadv(fd, &in, 1, 0) == 512);
  CHECK(errno == 4242);
  // A Timeout already expired when the fiber parks in preadv: the read is cancelled (or had
  // completed and is honoured), the call returns, the Timeout is raised at the next switch point.
  for (int i = 0; i < 20; ++i) {
    long r = -2;
    int err = 0;
    bool raised = false;
    try {
      cogent::timeout guard(1ms);
      auto until = steady::now() + 2ms;
      while (steady::now() < until) {
      }
      errno = 0;
      r = ::preadv(fd, &in, 1, 0);
      err = errno;
      cogent::sleep(0ms);
    } catch (const cogent::timeout_error&) {
      raised = true;
    }
    CHECK(raised);
    CHECK_MESSAGE((r == 512 || (r == -1 && err == EINTR)), r, " ", err);
  }
  CHECK(::preadv(fd, &in, 1, 0) == 512);  // still works
  ::close(fd);
}

// ---- sendfile ------------------------------------------------------------------------

COGENT_TEST_CASE("more hooks: sendfile to a full socket parks until the reader makes room, sends it all",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  constexpr std::size_t n = 200000;  // far more than the socket holds
  int f = file_with(n);
  sock_pair sp;
  std::size_t pre = fill(sp.s[0]);
  ticker tk;
  std::string got;
  auto reader = cogent::spawn([&] {
    cogent::sleep(100ms);
    drain(sp.s[1], pre + n, &got);
  });
  off_t off = 0;
  long before = tk.ticks;
  auto t0 = steady::now();
  ssize_t r = ::sendfile(sp.s[0], f, &off, n);
  long ticks = tk.ticks - before;
  reader.join();
  CHECK(r == static_cast<ssize_t>(n));  // a blocking sendfile to a socket sends everything
  CHECK(off == static_cast<off_t>(n));
  CHECK(::lseek(f, 0, SEEK_CUR) == 0);  // with an offset pointer, the file position stays
  CHECK(ticks >= 20);                   // the ticker ran while we waited
  CHECK(steady::now() - t0 >= 90ms);
  REQUIRE(got.size() == pre + n);
  bool same = true;
  for (std::size_t i = 0; i < n; ++i) {
    same = same && got[pre + i] == static_cast<char>('a' + i % 26);
  }
  CHECK(same);
  // The socket's SO_SNDTIMEO (none) is as it was.
  timeval tv{7, 7};
  socklen_t len = sizeof tv;
  REQUIRE(::getsockopt(sp.s[0], SOL_SOCKET, SO_SNDTIMEO, &tv, &len) == 0);
  CHECK(tv.tv_sec == 0);
  CHECK(tv.tv_usec == 0);
  ::close(f);
}

COGENT_TEST_CASE("more hooks: sendfile without an offset moves the file position; stops at the file's end",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int f = file_with(30000);
  REQUIRE(::lseek(f, 1000, SEEK_SET) == 1000);
  sock_pair sp;
  std::size_t pre = fill(sp.s[0]);
  auto reader = cogent::spawn([&] {
    cogent::sleep(50ms);
    drain(sp.s[1], pre + 29000);
  });
  // Asked for more than is left: the rest of the file, as libc (the end of in_fd ends it).
  ssize_t r = ::sendfile(sp.s[0], f, nullptr, 100000);
  reader.join();
  CHECK(r == 29000);
  CHECK(::lseek(f, 0, SEEK_CUR) == 30000);
  // At the end of the file: 0, at once, as libc.
  CHECK(here_result([&] { return ::sendfile(sp.s[0], f, nullptr, 10); }) == call_result{0, 0});
  ::close(f);
}

COGENT_TEST_CASE("more hooks: sendfile's no-wait and error cases are libc's", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int f = file_with(1000);
  sock_pair sp;
  fill(sp.s[0]);
  off_t off = 0;
  auto same = [&](const char* what, auto call) {
    auto p = parks(call);
    CHECK_MESSAGE(!p.parked, what);
    off = 0;
    auto here = here_result(call);
    off = 0;
    auto libc = libc_result(call);
    CHECK_MESSAGE(here == libc, what, ": ", here.first, "/", here.second, " vs libc ", libc.first, "/",
                  libc.second);
    return here;
  };
  same("zero count", [&] { return ::sendfile(sp.s[0], f, &off, 0); });
  same("bad in_fd", [&] { return ::sendfile(sp.s[0], -1, &off, 10); });
  same("bad out_fd", [&] { return ::sendfile(-1, f, &off, 10); });
  same("in_fd a socket", [&] { return ::sendfile(sp.s[0], sp.s[1], &off, 10); });
  // O_NONBLOCK out_fd, full: EAGAIN at once.
  int fl = ::fcntl(sp.s[0], F_GETFL);
  REQUIRE(::fcntl(sp.s[0], F_SETFL, fl | O_NONBLOCK) == 0);
  auto nb = same("O_NONBLOCK", [&] { return ::sendfile(sp.s[0], f, &off, 10); });
  CHECK(nb == call_result{-1, EAGAIN});
  REQUIRE(::fcntl(sp.s[0], F_SETFL, fl) == 0);
  // A file to a file: libc's call (no readiness to wait for).
  int g = cogent::test::open_scratch_file();
  REQUIRE(g >= 0);
  auto ff = same("file to file", [&] { return ::sendfile(g, f, &off, 1000); });
  CHECK(ff.first == 1000);
  ::close(g);
  ::close(f);
}

COGENT_TEST_CASE("more hooks: sendfile honours SO_SNDTIMEO as libc and puts it back", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int f = file_with(1000);
  sock_pair sp;
  fill(sp.s[0]);
  timeval tv{0, 50000};
  REQUIRE(::setsockopt(sp.s[0], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
  timeval expect{};  // 50 ms in the kernel's ticks
  socklen_t elen = sizeof expect;
  REQUIRE(::getsockopt(sp.s[0], SOL_SOCKET, SO_SNDTIMEO, &expect, &elen) == 0);
  off_t off = 0;
  ticker tk;
  long before = tk.ticks;
  auto t0 = steady::now();
  auto here = here_result([&] { return ::sendfile(sp.s[0], f, &off, 100); });
  auto took = steady::now() - t0;
  CHECK(tk.ticks - before >= 10);  // the wait for room cooperated
  CHECK(took >= 45ms);
  off = 0;
  auto libc = libc_result([&] { return ::sendfile(sp.s[0], f, &off, 100); });
  CHECK(here == libc);
  CHECK(here == call_result{-1, EAGAIN});
  CHECK(off == 0);
  timeval back{};
  socklen_t len = sizeof back;
  REQUIRE(::getsockopt(sp.s[0], SOL_SOCKET, SO_SNDTIMEO, &back, &len) == 0);
  CHECK(back.tv_sec == expect.tv_sec);
  CHECK(back.tv_usec == expect.tv_usec);
  ::close(f);
}

COGENT_TEST_CASE("more hooks: sendfile to a full pipe parks until there is room, then moves what fits",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int f = file_with(200000);
  pipe_pair pp;
  std::size_t pre = fill(pp.p[1]);
  ticker tk;
  auto reader = cogent::spawn([&] {
    cogent::sleep(100ms);
    drain(pp.p[0], 4096);  // room for a page
  });
  off_t off = 0;
  long before = tk.ticks;
  ssize_t r = ::sendfile(pp.p[1], f, &off, 200000);
  long ticks = tk.ticks - before;
  reader.join();
  CHECK(ticks >= 20);
  CHECK(r > 0);
  CHECK(r <= 4096);  // a blocking sendfile to a pipe waits once, then moves what fits
  CHECK(off == r);
  (void)pre;
  // The same shape as libc's on a plain thread (room made by another thread).
  std::thread mk([&] {
    std::this_thread::sleep_for(50ms);
    drain(pp.p[0], 4096);
  });
  off = 0;
  auto libc = libc_result([&] { return ::sendfile(pp.p[1], f, &off, 200000); });
  mk.join();
  CHECK(libc.first > 0);
  CHECK(libc.first <= 4096 + r);
  ::close(f);
}

COGENT_TEST_CASE("more hooks: a fiber killed in sendfile gets EINTR; the socket still works",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  int f = file_with(10000);
  sock_pair sp;
  std::size_t pre = fill(sp.s[0]);
  off_t off = 0;
  auto got = killed_in([&] { return ::sendfile(sp.s[0], f, &off, 10000); });
  CHECK(got == call_result{-1, EINTR});
  CHECK(off == 0);
  timeval tv{7, 7};
  socklen_t len = sizeof tv;
  REQUIRE(::getsockopt(sp.s[0], SOL_SOCKET, SO_SNDTIMEO, &tv, &len) == 0);
  CHECK(tv.tv_sec == 0);  // put back: no timeout
  CHECK(tv.tv_usec == 0);
  // Pipe out: the same.
  pipe_pair pp;
  fill(pp.p[1]);
  auto gotp = killed_in([&] { return ::sendfile(pp.p[1], f, &off, 10000); });
  CHECK(gotp == call_result{-1, EINTR});
  // Both still usable: drain and send again.
  auto reader = cogent::spawn([&] { drain(sp.s[1], pre + 10000); });
  CHECK(::sendfile(sp.s[0], f, &off, 10000) == 10000);
  reader.join();
  ::close(f);
}

// ---- recvmmsg ---------------------------------------------------------------------------

namespace {
// mmsg is a vector of n messages of `len` bytes each.
struct mmsg {
  std::vector<std::vector<char>> bufs;
  std::vector<iovec> iov;
  std::vector<mmsghdr> v;
  mmsg(std::size_t n, std::size_t len) : bufs(n, std::vector<char>(len)), iov(n), v(n) {
    for (std::size_t i = 0; i < n; ++i) {
      iov[i] = iovec{bufs[i].data(), len};
      v[i] = mmsghdr{};
      v[i].msg_hdr.msg_iov = &iov[i];
      v[i].msg_hdr.msg_iovlen = 1;
    }
  }
  std::string text(std::size_t i) const { return std::string(bufs[i].data(), v[i].msg_len); }
};
}  // namespace

COGENT_TEST_CASE("more hooks: recvmmsg with MSG_WAITFORONE parks until the first datagram",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  sock_pair sp(SOCK_DGRAM);
  ticker tk;
  mmsg m(4, 64);
  auto w =
      woken_later(tk, sp.s[1], [&] { return ::recvmmsg(sp.s[0], m.v.data(), 4, MSG_WAITFORONE, nullptr); });
  CHECK(w.result == 1);
  CHECK(m.text(0) == "fiber");  // woken by the fiber, not the fallback thread
  CHECK(w.ticks >= 20);
}

COGENT_TEST_CASE("more hooks: recvmmsg without MSG_WAITFORONE waits for all vlen, as libc",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  sock_pair sp(SOCK_DGRAM);
  ticker tk;
  auto sender = cogent::spawn([&] {
    for (const char* s : {"one", "two", "three"}) {
      cogent::sleep(40ms);
      REQUIRE(::send(sp.s[1], s, std::strlen(s), 0) > 0);
    }
  });
  mmsg m(3, 64);
  long before = tk.ticks;
  errno = 4242;
  int r = ::recvmmsg(sp.s[0], m.v.data(), 3, 0, nullptr);
  CHECK(errno == 4242);  // a success leaves errno alone
  long ticks = tk.ticks - before;
  sender.join();
  CHECK(r == 3);
  CHECK(m.text(0) == "one");
  CHECK(m.text(1) == "two");
  CHECK(m.text(2) == "three");
  CHECK(ticks >= 50);
  // libc on a plain thread: the same.
  std::thread th([&] {
    for (const char* s : {"four", "five"}) {
      std::this_thread::sleep_for(20ms);
      (void)::send(sp.s[1], s, std::strlen(s), 0);
    }
  });
  mmsg l(2, 64);
  auto libc = libc_result([&] { return ::recvmmsg(sp.s[0], l.v.data(), 2, 0, nullptr); });
  th.join();
  CHECK(libc == call_result{2, 0});
  CHECK(l.text(1) == "five");
}

COGENT_TEST_CASE("more hooks: recvmmsg's SO_RCVTIMEO and no-wait cases are libc's", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  sock_pair sp(SOCK_DGRAM);
  mmsg m(2, 64);
  auto same = [&](const char* what, auto call) {
    auto here = here_result(call);
    auto libc = libc_result(call);
    CHECK_MESSAGE(here == libc, what, ": ", here.first, "/", here.second, " vs libc ", libc.first, "/",
                  libc.second);
    return here;
  };
  CHECK(same("MSG_DONTWAIT, empty", [&] {
          return ::recvmmsg(sp.s[0], m.v.data(), 2, MSG_DONTWAIT, nullptr);
        }) == call_result{-1, EAGAIN});
  CHECK(same("vlen 0", [&] { return ::recvmmsg(sp.s[0], m.v.data(), 0, 0, nullptr); }) == call_result{0, 0});
  same("bad fd", [&] { return ::recvmmsg(-1, m.v.data(), 2, 0, nullptr); });
  pipe_pair pp;
  CHECK(same("not a socket", [&] { return ::recvmmsg(pp.p[0], m.v.data(), 2, 0, nullptr); }) ==
        call_result{-1, ENOTSOCK});
  // A timeout argument: libc's call (blocks the thread); with data there it returns at once.
  REQUIRE(::send(sp.s[1], "x", 1, 0) == 1);
  timespec ts{1, 0};
  auto p = parks([&] { return ::recvmmsg(sp.s[0], m.v.data(), 2, MSG_WAITFORONE, &ts); });
  CHECK_FALSE(p.parked);
  CHECK(p.result == 1);
  // SO_RCVTIMEO: EAGAIN after it when nothing came; with one datagram and vlen 2, that one.
  timeval tv{0, 50000};
  REQUIRE(::setsockopt(sp.s[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
  ticker tk;
  long before = tk.ticks;
  CHECK(same("SO_RCVTIMEO, empty", [&] { return ::recvmmsg(sp.s[0], m.v.data(), 2, 0, nullptr); }) ==
        call_result{-1, EAGAIN});
  CHECK(tk.ticks - before >= 10);
  auto one = [&] {
    (void)::send(sp.s[1], "y", 1, 0);
    return ::recvmmsg(sp.s[0], m.v.data(), 2, 0, nullptr);
  };
  CHECK(same("SO_RCVTIMEO, one of two", one) == call_result{1, 0});
  // O_NONBLOCK: EAGAIN at once.
  tv = timeval{0, 0};
  REQUIRE(::setsockopt(sp.s[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
  int fl = ::fcntl(sp.s[0], F_GETFL);
  REQUIRE(::fcntl(sp.s[0], F_SETFL, fl | O_NONBLOCK) == 0);
  auto nb = parks([&] { return ::recvmmsg(sp.s[0], m.v.data(), 2, 0, nullptr); });
  CHECK_FALSE(nb.parked);
  CHECK(same("O_NONBLOCK", [&] { return ::recvmmsg(sp.s[0], m.v.data(), 2, 0, nullptr); }) ==
        call_result{-1, EAGAIN});
}

COGENT_TEST_CASE("more hooks: a fiber killed or timed out in recvmmsg gets EINTR, or what it received",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  sock_pair sp(SOCK_DGRAM);
  mmsg m(2, 64);
  CHECK(killed_in([&] { return ::recvmmsg(sp.s[0], m.v.data(), 2, 0, nullptr); }) == call_result{-1, EINTR});
  // One of two received, then the Timeout: that one (the kernel's count after an interruption).
  REQUIRE(::send(sp.s[1], "z", 1, 0) == 1);
  auto got = cogent::test::bounded([&] { return ::recvmmsg(sp.s[0], m.v.data(), 2, 0, nullptr); }, 50ms);
  CHECK(got == call_result{1, 0});
  CHECK(m.text(0) == "z");
  // Still works.
  REQUIRE(::send(sp.s[1], "w", 1, 0) == 1);
  CHECK(::recvmmsg(sp.s[0], m.v.data(), 2, MSG_WAITFORONE, nullptr) == 1);
}

// ---- sendmmsg ----------------------------------------------------------------------------

COGENT_TEST_CASE("more hooks: sendmmsg to a full stream parks and sends every message whole",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  sock_pair sp;
  std::size_t pre = fill(sp.s[0]);
  constexpr std::size_t len = 30000;  // each more than the socket holds: partial sends to finish
  mmsg m(3, len);
  for (std::size_t i = 0; i < 3; ++i) {
    std::memset(m.bufs[i].data(), 'A' + static_cast<int>(i), len);
  }
  ticker tk;
  std::string got;
  auto reader = cogent::spawn([&] {
    cogent::sleep(100ms);
    drain(sp.s[1], pre + 3 * len, &got);
  });
  long before = tk.ticks;
  errno = 4242;
  int r = ::sendmmsg(sp.s[0], m.v.data(), 3, 0);
  CHECK(errno == 4242);
  long ticks = tk.ticks - before;
  reader.join();
  CHECK(r == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(m.v[i].msg_len == len);
  }
  CHECK(ticks >= 20);
  REQUIRE(got.size() == pre + 3 * len);
  CHECK(got.substr(pre, len) == std::string(len, 'A'));
  CHECK(got.substr(pre + 2 * len) == std::string(len, 'C'));
  // libc on a plain thread, another thread reading: the same counts.
  fill(sp.s[0]);
  std::thread th([&] {
    std::this_thread::sleep_for(50ms);
    drain(sp.s[1], 1 << 30);  // until the socket closes at the end of the test... bounded below
  });
  auto libc = libc_result([&] { return ::sendmmsg(sp.s[0], m.v.data(), 3, 0); });
  CHECK(libc == call_result{3, 0});
  CHECK(m.v[2].msg_len == len);
  ::shutdown(sp.s[0], SHUT_WR);
  th.join();
}

COGENT_TEST_CASE("more hooks: sendmmsg's no-wait cases and datagrams are libc's", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  sock_pair sp;
  fill(sp.s[0]);
  mmsg m(2, 100);
  auto same = [&](const char* what, auto call) {
    auto p = parks(call);
    CHECK_MESSAGE(!p.parked, what);
    auto here = here_result(call);
    auto libc = libc_result(call);
    CHECK_MESSAGE(here == libc, what, ": ", here.first, "/", here.second, " vs libc ", libc.first, "/",
                  libc.second);
    return here;
  };
  CHECK(same("MSG_DONTWAIT, full", [&] { return ::sendmmsg(sp.s[0], m.v.data(), 2, MSG_DONTWAIT); }) ==
        call_result{-1, EAGAIN});
  CHECK(same("vlen 0", [&] { return ::sendmmsg(sp.s[0], m.v.data(), 0, 0); }) == call_result{0, 0});
  same("bad fd", [&] { return ::sendmmsg(-1, m.v.data(), 2, 0); });
  int fl = ::fcntl(sp.s[0], F_GETFL);
  REQUIRE(::fcntl(sp.s[0], F_SETFL, fl | O_NONBLOCK) == 0);
  CHECK(same("O_NONBLOCK, full", [&] { return ::sendmmsg(sp.s[0], m.v.data(), 2, 0); }) ==
        call_result{-1, EAGAIN});
  REQUIRE(::fcntl(sp.s[0], F_SETFL, fl) == 0);
  // Datagrams with room: all at once, no wait.
  sock_pair dg(SOCK_DGRAM);
  auto d = parks([&] { return ::sendmmsg(dg.s[0], m.v.data(), 2, 0); });
  CHECK_FALSE(d.parked);
  CHECK(d.result == 2);
  CHECK(libc_result([&] { return ::sendmmsg(dg.s[0], m.v.data(), 2, 0); }) == call_result{2, 0});
  mmsg in(4, 200);
  CHECK(::recvmmsg(dg.s[1], in.v.data(), 4, MSG_DONTWAIT, nullptr) == 4);
  CHECK(in.v[3].msg_len == 100);
  // SO_SNDTIMEO on a full stream: EAGAIN after it, as libc.
  timeval tv{0, 50000};
  REQUIRE(::setsockopt(sp.s[0], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
  CHECK(here_result([&] { return ::sendmmsg(sp.s[0], m.v.data(), 2, 0); }) == call_result{-1, EAGAIN});
  CHECK(libc_result([&] { return ::sendmmsg(sp.s[0], m.v.data(), 2, 0); }) == call_result{-1, EAGAIN});
}

COGENT_TEST_CASE("more hooks: a fiber killed in sendmmsg gets EINTR, or the count sent",
                 doctest::timeout(10)) {
  cogent::monkey::patch_all();
  sock_pair sp;
  std::size_t pre = fill(sp.s[0]);
  mmsg m(2, 1000);
  CHECK(killed_in([&] { return ::sendmmsg(sp.s[0], m.v.data(), 2, 0); }) == call_result{-1, EINTR});
  // Killed midway through the second message: 2 (the kernel counts a partial one), its msg_len short.
  mmsg big(2, 30000);
  auto reader = cogent::spawn([&] { drain(sp.s[1], pre + 10000); });
  auto got = killed_in([&] { return ::sendmmsg(sp.s[0], big.v.data(), 2, 0); });
  reader.join();
  CHECK(got.first >= 1);
  CHECK(big.v[0].msg_len <= 30000);
  // Still works.
  sock_pair sp2;
  CHECK(::sendmmsg(sp2.s[0], m.v.data(), 2, 0) == 2);
}

// ---- pselect ----------------------------------------------------------------------------

COGENT_TEST_CASE("more hooks: pselect parks until an fd is ready", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  pipe_pair pp;
  ticker tk;
  fd_set rd;
  FD_ZERO(&rd);
  FD_SET(pp.p[0], &rd);
  auto w = woken_later(tk, pp.p[1],
                       [&] { return ::pselect(pp.p[0] + 1, &rd, nullptr, nullptr, nullptr, nullptr); });
  CHECK(w.result == 1);
  CHECK(FD_ISSET(pp.p[0], &rd));
  CHECK(w.ticks >= 20);
  char buf[16];
  CHECK(::read(pp.p[0], buf, sizeof buf) == 5);  // "fiber"
}

COGENT_TEST_CASE("more hooks: pselect's timeout, errors and signal mask are libc's", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  pipe_pair pp;
  fd_set rd;
  auto same = [&](const char* what, auto call) {
    auto here = here_result(call);
    auto libc = libc_result(call);
    CHECK_MESSAGE(here == libc, what, ": ", here.first, "/", here.second, " vs libc ", libc.first, "/",
                  libc.second);
    return here;
  };
  // Timeout with nothing ready: 0 after it, the set cleared, the timeout untouched (const).
  ticker tk;
  long before = tk.ticks;
  timespec ts{0, 50'000'000};
  auto t0 = steady::now();
  auto r = here_result([&] {
    FD_ZERO(&rd);
    FD_SET(pp.p[0], &rd);
    return ::pselect(pp.p[0] + 1, &rd, nullptr, nullptr, &ts, nullptr);
  });
  CHECK(r == call_result{0, 0});
  CHECK(steady::now() - t0 >= 45ms);
  CHECK(tk.ticks - before >= 10);
  CHECK_FALSE(FD_ISSET(pp.p[0], &rd));
  CHECK(ts.tv_nsec == 50'000'000);
  auto probe = [&](const timespec* t, const sigset_t* mask) {
    return [&, t, mask] {
      FD_ZERO(&rd);
      FD_SET(pp.p[0], &rd);
      return ::pselect(pp.p[0] + 1, &rd, nullptr, nullptr, t, mask);
    };
  };
  timespec zero{0, 0}, bad{0, 2'000'000'000}, neg{-1, 0};
  CHECK(same("zero timeout", probe(&zero, nullptr)) == call_result{0, 0});
  CHECK(same("bad tv_nsec", probe(&bad, nullptr)) == call_result{-1, EINVAL});
  CHECK(same("negative tv_sec", probe(&neg, nullptr)) == call_result{-1, EINVAL});
  same("negative nfds", [&] { return ::pselect(-1, &rd, nullptr, nullptr, &ts, nullptr); });
  // A closed fd in the set: EBADF, as libc.
  int dead = ::dup(pp.p[0]);
  ::close(dead);
  CHECK(same("closed fd", [&] {
          fd_set s;
          FD_ZERO(&s);
          FD_SET(dead, &s);
          return ::pselect(dead + 1, &s, nullptr, nullptr, &ts, nullptr);
        }) == call_result{-1, EBADF});
  // Ready at once: 1 with no wait.
  REQUIRE(::write(pp.p[1], "x", 1) == 1);
  auto p = parks(probe(&ts, nullptr));
  CHECK_FALSE(p.parked);
  CHECK(p.result == 1);
  // A signal mask: libc's call (blocks the thread); ready, it returns at once.
  sigset_t mask;
  sigemptyset(&mask);
  auto pm = parks(probe(nullptr, &mask));
  CHECK_FALSE(pm.parked);
  CHECK(pm.result == 1);
  CHECK(same("with a mask", probe(&ts, &mask)) == call_result{1, 0});
}

COGENT_TEST_CASE("more hooks: a fiber killed or timed out in pselect gets EINTR", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  pipe_pair pp;
  fd_set rd;
  auto got = killed_in([&] {
    FD_ZERO(&rd);
    FD_SET(pp.p[0], &rd);
    return ::pselect(pp.p[0] + 1, &rd, nullptr, nullptr, nullptr, nullptr);
  });
  CHECK(got == call_result{-1, EINTR});
  auto t = cogent::test::bounded(
      [&] {
        FD_ZERO(&rd);
        FD_SET(pp.p[0], &rd);
        return ::pselect(pp.p[0] + 1, &rd, nullptr, nullptr, nullptr, nullptr);
      },
      30ms);
  CHECK(t == call_result{-1, EINTR});
  // Still works.
  REQUIRE(::write(pp.p[1], "x", 1) == 1);
  FD_ZERO(&rd);
  FD_SET(pp.p[0], &rd);
  CHECK(::pselect(pp.p[0] + 1, &rd, nullptr, nullptr, nullptr, nullptr) == 1);
}
