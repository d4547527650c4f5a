// tests/monkey/monkey_review7_test.cpp — seventh adversarial review of the hooks: the session that
// added held_fd (a dup taken at a call's first wait), sending_fds() (SCM_RIGHTS senders marked
// shared), connect()'s EISCONN re-connect after a waited handshake, and the fork() handler that
// marks classified fds shared (g_high_fd).
//
// Each case states what libc does for the same inputs, checked against the same scenario on
// plain std::threads or raw syscalls (no hooks: exactly the kernel); a difference is a deviation.
// When written, all five cases failed (stable over repeated runs, ~7 s in all).
#include <arpa/inet.h>
#include <netdb.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <chrono>
#include <cstdint>
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
#include "tests/child.hpp"
#include "tests/monkey/fibers.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

using result = cogent::test::call_result;
using cogent::test::bounded;
using cogent::test::here_result;
const result einval_r{-1, EINVAL}, efault_r{-1, EFAULT}, enotconn_r{-1, ENOTCONN}, eagain_r{-1, EAGAIN};

using cogent::test::since;
using cogent::test::fiber_nap;
using cogent::test::on_fibers;
using cogent::test::on_threads;
using cogent::test::starter;
using cogent::test::thread_nap;
using cogent::test::drain_fd;
using cogent::test::eof_after_fork;
using cogent::test::eof_outcome;

}  // namespace

// ---- sending_fds() reads the caller's msghdr before the kernel validated it -------------------

namespace {

// raw_sendmsg() is the kernel's own answer (no hook at all).
result raw_sendmsg(int fd, const msghdr* m, int flags) {
  errno = 0;
  long r = ::syscall(SYS_sendmsg, fd, m, flags);
  return {r, r < 0 ? errno : 0};
}

// in_child_result() runs call() in a fork()ed child and returns its call_result, or {-100,
// signal} if the child died (a crash, or an ASan report: exit code != 0/10).
template <class F>
std::pair<result, std::string> in_child_result(F call) {
  int p[2];
  REQUIRE(::pipe(p) == 0);
  auto r = cogent::test::run_in_child([&] {
    ::alarm(10);
    std::signal(SIGSEGV, SIG_DFL);  // a crash ends the child (no doctest report from it)
    std::signal(SIGBUS, SIG_DFL);
    result got = call();
    [[maybe_unused]] ssize_t n = ::syscall(SYS_write, p[1], &got, sizeof got);
    ::_exit(10);
  });
  result got{-100, 0};
  if (r.exited(10)) {
    REQUIRE(::read(p[0], &got, sizeof got) == static_cast<ssize_t>(sizeof got));
  } else {
    got.second = WIFSIGNALED(r.status) ? WTERMSIG(r.status) : -WEXITSTATUS(r.status);
  }
  ::close(p[0]);
  ::close(p[1]);
  return {got, r.err.substr(0, 600)};
}

}  // namespace

// sendmsg(2) validates the ancillary data before using it: an SCM_RIGHTS header whose cmsg_len
// runs past msg_controllen is EINVAL (__scm_send's CMSG_OK), a bad msghdr or msg_control pointer
// EFAULT — for any flags, MSG_DONTWAIT included. The hook's sending_fds() (hooks.cpp) used to walk
// the caller's control buffer first thing in sendmsg() and sendmmsg(), before anything was
// checked: it dereferenced msg and msg_control and read (cmsg_len - CMSG_LEN(0)) / 4 ints from
// CMSG_DATA without bounding them by msg_controllen, so the call crashed (SIGSEGV, or an ASan
// stack-buffer-overflow) where libc returns -1 with errno set. It now runs after a successful send.
COGENT_TEST_CASE("review7: sendmsg/sendmmsg with malformed ancillary data fail as libc, never crash",
                 doctest::timeout(30)) {
  cogent::monkey::patch_all();
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  char byte = 'x';
  iovec v{&byte, 1};

  SUBCASE("cmsg_len past msg_controllen: EINVAL") {
    for (int flags : {0, static_cast<int>(MSG_DONTWAIT)}) {
      CAPTURE(flags);
      cogent::test::rights_msg bad(s[0]);
      CMSG_FIRSTHDR(&bad.m)->cmsg_len = 64u << 20;  // 64 MiB of "fds" claimed in a 24-byte buffer
      result ref = raw_sendmsg(s[0], &bad.m, flags);
      REQUIRE(ref == einval_r);
      auto [got, err] = in_child_result([&] { return here_result([&] { return ::sendmsg(s[0], &bad.m, flags); }); });
      CHECK_MESSAGE(got == ref, "hooked sendmsg: ", got.first, "/", got.second, " (libc: -1/EINVAL) ", err);
    }
  }
  SUBCASE("msg_control a bad pointer: EFAULT") {
    msghdr m{};
    m.msg_iov = &v;
    m.msg_iovlen = 1;
    m.msg_control = reinterpret_cast<void*>(std::uintptr_t{16});
    m.msg_controllen = 64;
    result ref = raw_sendmsg(s[0], &m, MSG_DONTWAIT);
    REQUIRE(ref == efault_r);
    auto [got, err] = in_child_result([&] { return here_result([&] { return ::sendmsg(s[0], &m, MSG_DONTWAIT); }); });
    CHECK_MESSAGE(got == ref, "hooked sendmsg: ", got.first, "/", got.second, " (libc: -1/EFAULT) ", err);
  }
  SUBCASE("the msghdr itself a bad pointer: EFAULT") {
    const auto* bad = reinterpret_cast<const msghdr*>(std::uintptr_t{16});
    result ref = raw_sendmsg(s[0], bad, MSG_DONTWAIT);
    REQUIRE(ref == efault_r);
    auto [got, err] = in_child_result([&] { return here_result([&] { return ::sendmsg(s[0], bad, MSG_DONTWAIT); }); });
    CHECK_MESSAGE(got == ref, "hooked sendmsg: ", got.first, "/", got.second, " (libc: -1/EFAULT) ", err);
    auto* badv = reinterpret_cast<mmsghdr*>(std::uintptr_t{16});
    errno = 0;
    long rr = ::syscall(SYS_sendmmsg, s[0], badv, 1, MSG_DONTWAIT);
    result refm{rr, rr < 0 ? errno : 0};
    REQUIRE(refm == efault_r);
    auto [gotm, errm] = in_child_result([&] { return here_result([&] { return ::sendmmsg(s[0], badv, 1, MSG_DONTWAIT); }); });
    CHECK_MESSAGE(gotm == refm, "hooked sendmmsg: ", gotm.first, "/", gotm.second, " (libc: -1/EFAULT) ", errm);
  }
  ::close(s[0]);
  ::close(s[1]);
}

// ---- connect(): the EISCONN re-connect goes to the fd NUMBER after the wait ---------------------

namespace {

sockaddr_in loopback_listener(int& l) {
  l = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(l >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(l, 0) == 0);  // one queued connection; a second's SYN is dropped (retried at 1 s)
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  return a;
}

struct connect_outcome {
  long connect_ret = -2;
  int connect_errno = 0;
  result udp_peer;  // getpeername() of the UDP socket that took the number
};

// A blocking connect() of a TCP socket whose handshake is already in progress (a non-blocking
// connect started it; the listener's full queue dropped the SYN, so it completes at the 1 s
// retransmit) — while it waits, another party renumbers the fd to a fresh UDP socket.
connect_outcome renumber_while_connecting(const starter& start, const std::function<void()>& nap, bool by_close) {
  connect_outcome out;
  int l;
  sockaddr_in addr = loopback_listener(l);
  int filler = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(::connect(filler, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(::fcntl(s, F_SETFL, O_NONBLOCK) == 0);
  REQUIRE(::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == -1);
  REQUIRE(errno == EINPROGRESS);
  REQUIRE(::fcntl(s, F_SETFL, 0) == 0);
  std::atomic<bool> done{false};
  auto join = start([&] {
    errno = 0;
    out.connect_ret = ::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    out.connect_errno = out.connect_ret < 0 ? errno : 0;
    done = true;
  });
  for (int i = 0; i < 30; ++i) {
    nap();
  }
  REQUIRE_FALSE(done.load());  // the handshake waits for the SYN retransmit
  int udp = ::socket(AF_INET, SOCK_DGRAM, 0);
  REQUIRE(udp >= 0);
  if (by_close) {
    REQUIRE(::close(s) == 0);
    REQUIRE(::fcntl(udp, F_DUPFD, s) == s);
  } else {
    REQUIRE(::dup2(udp, s) == s);
  }
  ::close(udp);
  int a = ::accept(l, nullptr, nullptr);  // frees the queue: the retransmitted SYN gets in
  REQUIRE(a >= 0);
  auto t0 = steady::now();
  while (!done.load() && since(t0) < 8) {
    nap();
  }
  REQUIRE(done.load());
  join();
  sockaddr_in peer{};
  socklen_t plen = sizeof peer;
  out.udp_peer = here_result([&] { return ::getpeername(s, reinterpret_cast<sockaddr*>(&peer), &plen); });
  int b = ::accept4(l, nullptr, nullptr, SOCK_NONBLOCK);
  for (int fd : {s, l, filler, a, b}) {
    if (fd >= 0) {
      ::close(fd);
    }
  }
  return out;
}

}  // namespace

// connect(2) on a socket whose connect is in progress waits for the handshake on the socket it
// was called on (fdget at entry); renumbering the fd meanwhile (dup2, close + reuse) leaves the
// socket that took the number alone: a fresh UDP socket stays unconnected (getpeername ENOTCONN).
// The hook's EALREADY path waited through wait_connected(c, fd, ...) and then called
// real.connect(fd, addr, len) — both by NUMBER (hooks.cpp, connect()): after the wait the
// "mark it connected" re-connect connected the UDP socket that now had the number to the TCP
// peer's address (with a blocking TCP socket there, it would start a second connection and block
// the hub's thread in it). Fixed in stop 19: the wait and the re-connect go through a held_fd.
COGENT_TEST_CASE("review7: a waited connect's re-connect never touches the socket that took the number",
                 doctest::timeout(60)) {
  cogent::monkey::patch_all();
  for (bool by_close : {false, true}) {
    CAPTURE(by_close);
    connect_outcome ref = renumber_while_connecting(on_threads(), thread_nap, by_close);
    REQUIRE(ref.connect_ret == 0);
    REQUIRE(ref.udp_peer == enotconn_r);
    connect_outcome hooked = renumber_while_connecting(on_fibers(), fiber_nap, by_close);
    CHECK_MESSAGE(hooked.connect_ret == 0, "hooked connect: ", hooked.connect_ret, "/", hooked.connect_errno);
    CHECK_MESSAGE(hooked.udp_peer == ref.udp_peer, "getpeername of the UDP socket: ", hooked.udp_peer.first, "/",
                  hooked.udp_peer.second, " (libc: -1/ENOTCONN: never connected)");
  }
}

// ---- the held duplicate is a real fd: a fork()ed child inherits it ------------------------------


// A thread blocked in send(2) holds its socket by a reference the fd table does not show: a
// fork() by another thread copies the table only, so once the child closed its copies of the
// pair and the parent closed s[0], the peer sees the end of the stream. The hook's held_fd was a
// real fd taken at the first wait (F_DUPFD_CLOEXEC: closed by exec, not by fork): a child
// fork()ed while the send waited inherited a duplicate it could not know of, and held the socket
// open for as long as it lived — the peer never got EOF. Fixed in stop 19: held_fd duplicates
// only when the number is closed or renumbered during the call (detach_holders()).
COGENT_TEST_CASE("review7: a child fork()ed while a send waits does not inherit a hidden fd of its socket",
                 doctest::timeout(40)) {
  cogent::monkey::patch_all();
  eof_outcome ref = eof_after_fork(on_threads(), thread_nap, false);
  REQUIRE(ref.sent == 1 << 20);
  REQUIRE(ref.eof == 0);
  eof_outcome hooked = eof_after_fork(on_fibers(), fiber_nap, false);
  CHECK(hooked.sent == 1 << 20);
  CHECK_MESSAGE(hooked.eof == 0, "recv on the peer after close: ", hooked.eof,
                " (libc: 0, the end of the stream; the child holds the hook's duplicate)");
}

// ---- the held duplicate takes an fd number other fibers would get ------------------------------

namespace {

// open_while_sending() fills every fd number below a lowered RLIMIT_NOFILE but one, parks a
// blocking send on a full AF_UNIX socket, then open()s /dev/null: libc's blocked send uses no
// fd number, so the open takes the free one.
result open_while_sending(const starter& start, const std::function<void()>& nap, int s0, int s1) {
  rlimit old{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &old) == 0);
  int high = ::open("/dev/null", O_RDONLY);
  REQUIRE(high >= 0);
  ::close(high);
  rlimit low = old;
  low.rlim_cur = static_cast<rlim_t>(high) + 64;
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
  std::vector<int> fillers;
  for (;;) {
    int fd = ::open("/dev/null", O_RDONLY);
    if (fd < 0) {
      break;
    }
    fillers.push_back(fd);
  }
  REQUIRE(!fillers.empty());
  ::close(fillers.back());  // exactly one number free
  fillers.pop_back();
  constexpr std::size_t n = 1 << 20;
  static std::vector<char> payload(n, 'p');
  std::atomic<bool> done{false};
  auto join = start([&] {
    (void)::send(s0, payload.data(), n, 0);
    done = true;
  });
  for (int i = 0; i < 20; ++i) {
    nap();
  }
  REQUIRE_FALSE(done.load());
  result got = here_result([] { return ::open("/dev/null", O_RDONLY); });
  if (got.first >= 0) {
    ::close(static_cast<int>(got.first));
  }
  for (int fd : fillers) {
    ::close(fd);
  }
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &old) == 0);
  auto t0 = steady::now();
  while (!done.load() && since(t0) < 5) {
    drain_fd(s1);
    nap();
  }
  join();
  drain_fd(s1);
  return got;
}

}  // namespace

// The duplicate was taken at the lowest free number (F_DUPFD_CLOEXEC from 0) at every blocking
// call's first wait, for the whole wait: each parked send/recvmmsg/pipe write/... of one fiber
// cost the process an fd number. A process near its RLIMIT_NOFILE (a busy server) saw another
// fiber's open()/accept()/socket() fail with EMFILE while libc's would succeed, and fd numbers
// shifted. Fixed in stop 19: a waiting call is listed on its number and costs no fd.
COGENT_TEST_CASE("review7: a parked send does not take an fd number another fiber's open() needs",
                 doctest::timeout(40)) {
  cogent::monkey::patch_all();
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  result ref = open_while_sending(on_threads(), thread_nap, s[0], s[1]);
  REQUIRE(ref.first >= 0);
  result hooked = open_while_sending(on_fibers(), fiber_nap, s[0], s[1]);
  CHECK_MESSAGE(hooked.first >= 0, "open() while a fiber's send waits: ", hooked.first, "/", hooked.second,
                " (libc: a new fd)");
  ::close(s[0]);
  ::close(s[1]);
}

// ---- fork(): an fd not yet classified at the fork is never marked shared -------------------------

namespace {

struct fifo_outcome {
  result read;
  bool nonblock_in_kernel = false;
};

// fifo_after_fork() opens a FIFO (open(): the table classifies it at first use), fork()s, THEN
// uses it in the parent (write + read: classified as a blocking pipe), then lets the child set
// O_NONBLOCK on the shared description; the parent's next read of the empty FIFO is libc's
// -1/EAGAIN at once.
fifo_outcome fifo_after_fork() {
  fifo_outcome out;
  char path[] = "/tmp/cogent_review7_fifo_XXXXXX";
  int tmp = ::mkstemp(path);
  REQUIRE(tmp >= 0);
  ::close(tmp);
  ::unlink(path);
  REQUIRE(::mkfifo(path, 0600) == 0);
  int f = ::open(path, O_RDWR);
  ::unlink(path);
  REQUIRE(f >= 0);
  int ctl[2];
  REQUIRE(::pipe(ctl) == 0);
  std::fflush(nullptr);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::alarm(10);
    ::syscall(SYS_close, ctl[1]);
    char c;
    ::syscall(SYS_read, ctl[0], &c, 1);
    int fl = static_cast<int>(::syscall(SYS_fcntl, f, F_GETFL));
    ::syscall(SYS_fcntl, f, F_SETFL, fl | O_NONBLOCK);
    ::_exit(0);
  }
  ::close(ctl[0]);
  char c = 0;
  REQUIRE(::write(f, "x", 1) == 1);
  REQUIRE(::read(f, &c, 1) == 1);  // first use, after the fork: a blocking FIFO, not shared
  REQUIRE(::write(ctl[1], "g", 1) == 1);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  ::close(ctl[1]);
  out.nonblock_in_kernel = (::fcntl(f, F_GETFL) & O_NONBLOCK) != 0;
  out.read = bounded([&] { return ::read(f, &c, 1); }, 1500ms);
  ::close(f);
  return out;
}

}  // namespace

// O_NONBLOCK is the open file description's, which a fork() shares with the child. The fork
// handler (mark_all_shared(), monkey.cpp) marks only entries already classified; an fd open but
// not yet classified at the fork (open()/reset_fd() leave it kind_unknown until its first
// cooperative use; also fds cogent::net accepted through io_uring) was classified later without
// flag_shared, and then the table's own copy of O_NONBLOCK answered: the child's
// fcntl(O_NONBLOCK) was never seen (the hook parked where libc fails at once with EAGAIN).
// Fixed in stop 19: entries carry the fork generation they were reset in; classify() marks one
// from an earlier generation shared.
COGENT_TEST_CASE("review7: O_NONBLOCK set by a fork()ed child on an fd unclassified at the fork is honoured",
                 doctest::timeout(30)) {
  cogent::monkey::patch_all();
  fifo_outcome got = fifo_after_fork();
  REQUIRE(got.nonblock_in_kernel);
  CHECK_MESSAGE(got.read == eagain_r, "read of the empty FIFO: ", got.read.first, "/", got.read.second,
                " (libc: -1/EAGAIN at once)");
}

// ---- sendmsg with an unreadable msghdr or iovec array: the kernel's EFAULT, as libc --------------

// The hook read msg->msg_iovlen (and summed the iovecs) before calling anything, so a bad pointer
// crashed a fiber's sendmsg where libc's (a thread without a hub) fails with EFAULT. Fixed in stop
// 19: the first try hands the msghdr to the kernel untouched. Each call runs in a child
// (exit_code_in_child) so a crash is observed, not suffered.
COGENT_TEST_CASE("review7: sendmsg with an unreadable msghdr or iovec array fails with EFAULT, as libc",
                 doctest::timeout(20)) {
  cogent::monkey::patch_all();
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  void* page = ::mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(page != MAP_FAILED);
  msghdr bad_iov{};
  bad_iov.msg_iov = static_cast<iovec*>(page);
  bad_iov.msg_iovlen = 2;
  const msghdr* cases[] = {static_cast<const msghdr*>(page), &bad_iov};
  for (const msghdr* msg : cases) {
    for (bool in_thread : {true, false}) {
      CAPTURE(in_thread);
      CAPTURE(msg == &bad_iov);
      int code = cogent::test::exit_code_in_child([&] {
        result r{0, 0};
        if (in_thread) {
          std::thread t([&] { r = here_result([&] { return ::sendmsg(s[0], msg, 0); }); });
          t.join();
        } else {
          r = here_result([&] { return ::sendmsg(s[0], msg, 0); });
        }
        return r == efault_r ? 0 : 1;
      });
      CHECK_MESSAGE(code == 0, "exit code ", code, " (-11: SIGSEGV, 1: not EFAULT)");
    }
  }
  ::munmap(page, 4096);
  ::close(s[0]);
  ::close(s[1]);
}

// ---- reverse lookups run on the thread pool ------------------------------------------------------

// getnameinfo (asking for a name), gethostbyaddr and gethostbyaddr_r from fibers let the others run
// while they wait (a spinner always ready: it must have ticked), overlap, and give what libc gives
// on a plain thread; a numeric-only getnameinfo stays on the calling thread and is libc's too.
COGENT_TEST_CASE("review7: getnameinfo and gethostbyaddr from many fibers let the others run, with libc's results",
                 doctest::timeout(30)) {
  cogent::monkey::patch_all();
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(22);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const auto* a = reinterpret_cast<const sockaddr*>(&sa);
  struct names {
    int rc = -100;
    std::string host, serv, byaddr, byaddr_r;
    bool operator==(const names& o) const {
      return rc == o.rc && host.compare(o.host) == 0 && serv.compare(o.serv) == 0 &&
             byaddr.compare(o.byaddr) == 0 && byaddr_r.compare(o.byaddr_r) == 0;
    }
  };
  auto lookup = [&] {
    names n;
    char host[NI_MAXHOST] = {}, serv[NI_MAXSERV] = {};
    n.rc = ::getnameinfo(a, sizeof sa, host, sizeof host, serv, sizeof serv, NI_NAMEREQD);
    n.host = host;
    n.serv = serv;
    if (hostent* h = ::gethostbyaddr(&sa.sin_addr, sizeof sa.sin_addr, AF_INET)) {
      n.byaddr = h->h_name;
    }
    hostent he{}, *res = nullptr;
    char buf[4096];
    int herr = 0;
    if (::gethostbyaddr_r(&sa.sin_addr, sizeof sa.sin_addr, AF_INET, &he, buf, sizeof buf, &res, &herr) == 0 &&
        res != nullptr) {
      n.byaddr_r = res->h_name;
    }
    return n;
  };
  names ref;
  std::thread([&] { ref = lookup(); }).join();
  REQUIRE(ref.rc == 0);
  REQUIRE_FALSE(ref.host.empty());
  cogent::test::spinner spin;
  int in_lookup = 0, max_in_lookup = 0, others_ran = 0;
  std::vector<cogent::task<names>> tasks;
  for (int i = 0; i < 20; ++i) {
    tasks.push_back(cogent::spawn([&] {
      long before = spin.ticks;
      max_in_lookup = std::max(max_in_lookup, ++in_lookup);
      names n = lookup();
      --in_lookup;
      others_ran += spin.ticks > before ? 1 : 0;
      return n;
    }));
  }
  for (auto& t : tasks) {
    CHECK(t.get() == ref);
  }
  CHECK(others_ran == 20);
  CHECK(max_in_lookup > 1);
  char host[NI_MAXHOST] = {}, serv[NI_MAXSERV] = {};
  long before = spin.ticks;
  CHECK(::getnameinfo(a, sizeof sa, host, sizeof host, serv, sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV) == 0);
  CHECK(std::strcmp(host, "127.0.0.1") == 0);
  CHECK(std::strcmp(serv, "22") == 0);
  CHECK(spin.ticks == before);  // numeric only: no wait, no switch
}
