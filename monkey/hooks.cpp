// monkey/hooks.cpp — the interposed libc functions.
//
// Each hook first decides whether it may cooperate (detail::enter/enter_fd:
// patched, a hub on this thread, not the hub fiber, a socket/pipe/file the
// user did not make non-blocking). If not, it calls the real function and
// nothing else happens. If so, it does the same work through io_uring (or a
// hub timer) while the fiber is parked, and returns exactly what libc would:
// the same value, the same errno. Hooks never throw (C callers): a kill or
// Timeout becomes -1/EINTR with the interrupt left pending (see monkey.hpp).
//
// Bookkeeping-only hooks (socket, accept's result, fcntl, ioctl FIONBIO,
// setsockopt, dup*, pipe*, open*, close) keep the per-fd table in step.
#undef _FORTIFY_SOURCE  // we define the plain symbols; fortify's inline wrappers would get in the way
// With _FILE_OFFSET_BITS=64 (meson's default) glibc's headers rename pread,
// fcntl, open... to their *64 symbols; we must define both names ourselves.
// On LP64 off_t is 64-bit either way.
#undef _FILE_OFFSET_BITS

#include <dlfcn.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/time_types.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdarg>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "monkey/detail/core.hpp"

using namespace cogent::monkey::detail;

#define COGENT_HOOK extern "C" __attribute__((visibility("default")))


namespace {

// The kernel clamps one read/write to MAX_RW_COUNT, after checking the whole
// user range; io_op lengths are 32-bit. Larger calls go straight to libc so
// errors (EFAULT for absurd sizes) and clamping are exactly the kernel's.
constexpr std::size_t max_rw = static_cast<std::size_t>(INT_MAX) & ~std::size_t{4095};

// A table timeout meaning "expire at once" (a negative SO_RCVTIMEO/SO_SNDTIMEO).
constexpr std::int64_t immediate_timeout = -1;

// What the kernel reports for SO_RCVTIMEO/SO_SNDTIMEO expiry.
constexpr int timed_out_errno = EAGAIN;

// sock_timeout() is fd's SO_RCVTIMEO (rcv) or SO_SNDTIMEO in ns, 0 = none.
// A description shared with a dup is asked of the kernel (the dup may have
// changed it).
std::int64_t sock_timeout(int fd, fd_entry& e, bool rcv) noexcept {
  if (e.flags.load(std::memory_order_relaxed) & flag_shared) [[unlikely]] {
    return kernel_sock_timeout(fd, rcv);
  }
  return (rcv ? e.rcv_timeout_ns : e.snd_timeout_ns).load(std::memory_order_relaxed);
}

// Receive flags with which the kernel never blocks: the caller's
// MSG_DONTWAIT, the error queue (MSG_ERRQUEUE: EAGAIN when empty) and urgent
// data (MSG_OOB: EAGAIN/EINVAL when none). Such calls go straight to libc.
constexpr int no_wait_flags = MSG_DONTWAIT | MSG_ERRQUEUE | MSG_OOB;

// kept_errno() returns r, putting the caller's errno (`saved`, read on entry)
// back if r is a success: libc's call leaves errno alone then, but ours may
// have tried without waiting first (MSG_DONTWAIT, RWF_NOWAIT) and left EAGAIN.
// What other fibers do to errno while a hook is parked is undone by the
// waits themselves (errno_keeper, detail/core.hpp), for every hook.
ssize_t kept_errno(ssize_t r, int saved) noexcept {
  if (r >= 0) {
    errno = saved;
  }
  return r;
}

// accepted() records a socket accept created. Its timeouts are the kernel's:
// TCP copies the listener's SO_RCVTIMEO/SO_SNDTIMEO to it, AF_UNIX does not.
void accepted(int fd, bool nonblock) noexcept {
  reset_fd(fd, kind_socket, nonblock);
  if (fd_entry* e = entry_for(fd)) {
    load_sock_timeouts(fd, *e);
  }
}

// for_passed_fds() calls fn(fd) for each fd in msg's SCM_RIGHTS messages.
template <class Fn>
void for_passed_fds(const msghdr* msg, Fn fn) noexcept {
  if (msg == nullptr || msg->msg_control == nullptr || msg->msg_controllen < sizeof(cmsghdr)) {
    return;
  }
  for (cmsghdr* cm = CMSG_FIRSTHDR(msg); cm != nullptr; cm = CMSG_NXTHDR(const_cast<msghdr*>(msg), cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS || cm->cmsg_len < CMSG_LEN(0)) {
      continue;
    }
    std::size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
      fn(fd);
    }
  }
}

// received_fds() records the fds a recvmsg got through SCM_RIGHTS. Each
// shares its open file description with the sender's fd, like a dup: its
// O_NONBLOCK and timeouts are asked of the kernel (flag_shared).
void received_fds(const msghdr* msg) noexcept {
  for_passed_fds(msg, [](int fd) {
    reset_fd(fd);  // classified (fstat, timeouts) on first cooperative use
    if (fd_entry* e = entry_for(fd)) {
      e->flags.store(flag_shared, std::memory_order_relaxed);
    }
  });
}

// sending_fds() marks the fds a sendmsg passed through SCM_RIGHTS as shared:
// the receiver (another process too) may change their O_NONBLOCK from then on.
// Called once the send succeeded, so the kernel has checked the msghdr (a bad
// pointer or cmsg_len is the caller's EFAULT/EINVAL, never a read of ours).
void sending_fds(const msghdr* msg) noexcept {
  for_passed_fds(msg, [](int fd) {
    if (fd_entry* e = entry_for(fd)) {
      e->flags.fetch_or(flag_shared, std::memory_order_relaxed);
    }
  });
}

// zero_len_result() is what a blocking receive of n bytes that returned r
// gives. TCP waits for data even when asked for 0 bytes, but when SO_RCVTIMEO
// expires it returns 0, not EAGAIN (tcp_recvmsg stops once len is used up);
// AF_UNIX says EAGAIN.
ssize_t zero_len_result(int fd, std::size_t n, ssize_t r) noexcept {
  if (n != 0 || r >= 0 || errno != timed_out_errno) {
    return r;
  }
  int proto = 0;
  socklen_t len = sizeof proto;
  if (real.getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) == 0 && proto == IPPROTO_TCP) {
    return 0;
  }
  errno = timed_out_errno;
  return r;
}

// no_wait() is true if fd is a socket whose SO_RCVTIMEO (rcv) or SO_SNDTIMEO
// was set negative: the kernel then never blocks (EAGAIN at once, as with
// O_NONBLOCK), so the call goes straight to libc.
bool no_wait(int fd, fd_entry& e, fd_kind k, bool rcv) noexcept {
  return k == kind_socket && sock_timeout(fd, e, rcv) < 0;
}

// finish_in() maps an await result of an input call to libc's return.
ssize_t finish_in(int r) noexcept {
  if (r == deadline_expired) {
    return fail(-timed_out_errno);
  }
  return r < 0 ? fail(r) : r;
}

// input() runs one input op (read/readv/recv/recvmsg) on fd: a socket honours
// SO_RCVTIMEO; files and pipes wait without limit.
ssize_t input(call_ctx& c, int fd, fd_entry& e, fd_kind k, io_op& op) noexcept {
  clock::time_point dl = k == kind_socket ? deadline_ns(sock_timeout(fd, e, true)) : clock::time_point::max();
  return finish_in(await_op(c, op, dl));
}

}  // namespace

// held_node is held_fd's entry in the list of calls waiting with a number
// (fd_entry::holders; guarded by its holders_lock).
struct cogent::monkey::detail::held_node {
  held_node* next = nullptr;
  held_node* prev = nullptr;
  std::atomic<int> dup{-1};  // set by detach_holders(): the duplicate to go on with
  bool listed = false;
  // The fork_child_generation() it was listed in: a fork()ed child starts
  // with empty lists (the parent's waiting calls are not its own), and a
  // call listed before the fork must not touch them when it ends there.
  std::uint32_t child_gen = 0;
};

namespace {

// lock_holders() takes e's holders_lock. A close/dup2 (`must` false) gives up
// after a while — a signal handler's close() of the number while its thread
// holds the lock must not spin for ever: the waiting call then goes on with
// the number, as it does with no fd left for a duplicate.
bool lock_holders(fd_entry& e, bool must) noexcept {
  for (int i = 0; e.holders_lock.exchange(1, std::memory_order_acquire) != 0; ++i) {
    if (!must && i >= 1000) {
      return false;
    }
    if (i >= 16) {
      sched_yield();
    }
  }
  return true;
}

void unlock_holders(fd_entry& e) noexcept {
  e.holders_lock.store(0, std::memory_order_release);
}

// held_fd keeps the file a blocking call was made on across its waits, as
// the kernel's call holds it: from hold() on (the call's first wait), the
// call is listed on its number, and a close(), dup2() or dup3() of the number
// meanwhile (detach_holders()) first makes at() a duplicate of the file, so
// the rest of the call (its waits, its later reads or writes) never turns to
// another file. Nothing is duplicated unless the number changes meaning: a
// waiting call costs no fd number, and a fork()ed child inherits nothing of
// it. (No fd left for the duplicate, or a number closed behind the hooks
// (close_range, a raw syscall): the call goes on with the number.) The
// duplicate is closed with the call.
class held_fd {
 public:
  explicit held_fd(int fd) noexcept : _fd(fd) {}
  ~held_fd() {
    if (_e != nullptr && _node.child_gen == fork_child_generation()) {
      lock_holders(*_e, true);
      if (_node.listed) {
        if (_node.prev != nullptr) {
          _node.prev->next = _node.next;
        } else {
          _e->holders.store(_node.next, std::memory_order_relaxed);
        }
        if (_node.next != nullptr) {
          _node.next->prev = _node.prev;
        }
      }
      unlock_holders(*_e);
    }
    if (int d = _node.dup.load(std::memory_order_relaxed); d >= 0) {
      errno_keeper keep;
      real.close(d);
    }
  }
  held_fd(const held_fd&) = delete;
  held_fd& operator=(const held_fd&) = delete;
  void hold() noexcept {
    if (_tried) {
      return;
    }
    _tried = true;
    fd_entry* e = entry_for(_fd);
    if (e == nullptr || !lock_holders(*e, false)) {
      return;
    }
    _node.next = e->holders.load(std::memory_order_relaxed);
    if (_node.next != nullptr) {
      _node.next->prev = &_node;
    }
    _node.listed = true;
    _node.child_gen = fork_child_generation();
    e->holders.store(&_node, std::memory_order_relaxed);
    unlock_holders(*e);
    _e = e;
  }
  // at() is the number to use now: read it again after every wait.
  int at() const noexcept {
    int d = _node.dup.load(std::memory_order_acquire);
    return d >= 0 ? d : _fd;
  }
  // sock_timeout() is the socket's SO_RCVTIMEO (rcv) or SO_SNDTIMEO: once
  // the call goes on with a duplicate, the kernel's (the number's entry was
  // reset by its close).
  std::int64_t sock_timeout(fd_entry& e, bool rcv) const noexcept {
    int d = _node.dup.load(std::memory_order_acquire);
    return d >= 0 ? kernel_sock_timeout(d, rcv) : ::sock_timeout(_fd, e, rcv);
  }
  // await_ready() is the hub's await_ready() on at(). A wait that failed
  // with EBADF because another thread closed the number before the hub
  // handed it to the kernel (the call was given a duplicate meanwhile) waits
  // again, on the duplicate.
  int await_ready(call_ctx& c, std::uint32_t events, clock::time_point dl) noexcept {
    for (;;) {
      int fd = at();
      int w = ::await_ready(c, fd, events, dl);
      if (w != -EBADF || at() == fd) {
        return w;
      }
    }
  }

 private:
  int _fd;
  fd_entry* _e = nullptr;  // listed there (hold())
  held_node _node;
  bool _tried = false;
};

// peek_wait() is the wait of a receive with MSG_PEEK|MSG_WAITALL (recv,
// recvfrom, recvmsg), which never goes to io_uring: it retries a short
// MSG_WAITALL receive further into the buffer, and with MSG_PEEK that peeks
// the same bytes again. probe(fd, f) peeks into the caller's buffers (no address,
// no ancillary data: SCM_RIGHTS fds would be installed on every peek) with
// flags f. On TCP it waits until n bytes can be peeked, the peer shuts down,
// or SO_RCVTIMEO passes — while some but not all are there nothing signals
// more, so it looks again every millisecond; elsewhere (Linux ignores
// MSG_WAITALL with MSG_PEEK on AF_UNIX streams, and for datagrams and
// seqpackets) until anything can be peeked. Returns 0 when the caller's real
// call should now run (with MSG_DONTWAIT), or a negative errno to fail with
// (the probe's own error: the kernel clears a socket error as it reports it).
template <class Probe>
int peek_wait(call_ctx& c, held_fd& h, fd_entry& e, std::size_t n, int flags, Probe probe) noexcept {
  int fd = h.at();
  int proto = 0;
  socklen_t plen = sizeof proto;
  // One question: IPPROTO_TCP is only ever a SOCK_STREAM socket.
  bool stream = real.getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &plen) == 0 && proto == IPPROTO_TCP;
  if (!stream) {
    flags &= ~MSG_WAITALL;
  }
  clock::time_point dl = deadline_ns(sock_timeout(fd, e, true));
  const int saved = errno;  // back before the real call: a probe's EAGAIN must not outlive its success
  for (;;) {
    if (has_pending(c)) {
      return interrupted(c);
    }
    fd = h.at();  // (a duplicate once the number was closed or renumbered during the wait)
    ssize_t r = probe(fd, flags | MSG_DONTWAIT);
    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      return -errno;  // reported (and cleared) by the probe: the real call would not see it
    }
    if (r >= 0 && (!stream || r == 0 || static_cast<std::size_t>(r) >= n)) {
      errno = saved;
      return 0;
    }
    if (clock::now() >= dl) {
      if (r > 0) {
        errno = saved;
        return 0;
      }
      return -timed_out_errno;
    }
    h.hold();  // about to wait: from here on, the file it was called on
    fd = h.at();
    if (r < 0) {
      int w = h.await_ready(c, POLLIN, dl);
      if (w < 0 && w != deadline_expired) {
        return w;
      }
    } else {
      // The peer may have finished sending (then libc returns what is there).
      pollfd p{fd, POLLRDHUP, 0};
      if (real.poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
        errno = saved;
        return 0;
      }
      park(c, std::min(dl, clock::now() + std::chrono::milliseconds(1)), true);
    }
  }
}

constexpr int peek_all_flags = MSG_PEEK | MSG_WAITALL;

// ---- output ----------------------------------------------------------------------
//
// Sockets: try the send at once with MSG_DONTWAIT (the buffer almost always
// has room: no park, one syscall) and park on an io_uring POLLOUT only when
// it is full. A blocking send writes everything, so partial progress loops.
// Pipes and files: io_uring write ops (pipes loop on partial writes too).

// out_wait is a blocking send's waiting state across rounds: its deadline
// (SO_SNDTIMEO, resolved at the first wait), what the last wait saw, and the
// file the call was made on (held from the first wait on: the rest of the
// call goes through file.at()).
struct out_wait {
  explicit out_wait(int fd) noexcept : file(fd) {}
  clock::time_point dl{};
  bool dl_set = false;
  std::size_t last_done = static_cast<std::size_t>(-1);  // bytes out when it last waited
  std::chrono::milliseconds pause{0};
  int dgram = -1;     // the socket is SOCK_DGRAM (1) or not (0); -1: not asked yet
  int unix_dom = -1;  // the socket is AF_UNIX (1) or not (0); -1: not asked yet
  held_fd file;       // held from the first wait on
};

// out_blocked() waits for room after `done` bytes went out; returns false to
// retry, or true with the final return value of the call in *ret. A POLLOUT
// that said "room" after which nothing at all went out would spin on a
// datagram socket (an unconnected AF_UNIX one polls writable while its
// receiver's queue is full): there it looks again after a pause instead (1
// ms, doubling up to 16 ms), to the deadline. Streams always wait on POLLOUT
// (there a "room" that another writer took is followed by a real wait).
bool out_blocked(call_ctx& c, int fd, fd_entry& e, out_wait& st, std::size_t done, ssize_t* ret) noexcept {
  st.file.hold();
  fd = st.file.at();
  if (st.dl_set && done != st.last_done && st.dl != clock::time_point::max()) {
    // AF_UNIX streams bound each wait for room by SO_SNDTIMEO (the kernel
    // takes a fresh timeout per buffer it allocates), TCP the whole call.
    if (st.unix_dom < 0) {
      int domain = 0;
      socklen_t dlen = sizeof domain;
      st.unix_dom = real.getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &dlen) == 0 && domain == AF_UNIX ? 1 : 0;
    }
    st.dl_set = st.unix_dom == 0;
  }
  if (!st.dl_set) {
    st.dl = deadline_ns(st.file.sock_timeout(e, false));
    st.dl_set = true;
  }
  int w;
  if (st.last_done == done && st.dgram < 0) {
    int type = 0;
    socklen_t tlen = sizeof type;
    st.dgram = real.getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0 && type == SOCK_DGRAM ? 1 : 0;
  }
  if (st.last_done == done && st.dgram == 1) {
    st.pause = std::min(std::max(st.pause * 2, std::chrono::milliseconds(1)), std::chrono::milliseconds(16));
    park(c, std::min(st.dl, clock::now() + st.pause), true);
    if (has_pending(c)) {
      w = interrupted(c);
    } else {
      w = clock::now() >= st.dl ? deadline_expired : 1;
    }
  } else {
    st.pause = std::chrono::milliseconds(0);
    w = st.file.await_ready(c, POLLOUT, st.dl);
  }
  st.last_done = done;
  if (w >= 0) {
    return false;
  }
  if (done > 0) {
    *ret = static_cast<ssize_t>(done);  // libc returns the partial count after an interruption
  } else {
    *ret = fail(w == deadline_expired ? -timed_out_errno : w);
  }
  return true;
}

// with_sndtimeo_at_once() runs call() — sendfile, which has no MSG_DONTWAIT,
// on a socket whose O_NONBLOCK is the user's — with the socket's SO_SNDTIMEO
// made "expire at once" (negative: the kernel's 0, so the call answers as
// with MSG_DONTWAIT: EAGAIN or a short count) and put back right after,
// before any other fiber of this thread runs. Not O_NONBLOCK: another thread
// may be blocked reading the same socket. (A negative timeout set behind our
// table reads back as "none": it comes back as none.) If the timeout cannot
// be read or set, the plain call.
template <class F>
auto with_sndtimeo_at_once(int fd, F call) noexcept {
  timeval old{};
  socklen_t len = sizeof old;
  const timeval at_once{-1, 0};
  if (real.getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &old, &len) != 0 ||
      real.setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &at_once, sizeof at_once) != 0) {
    return call();
  }
  auto r = call();
  errno_keeper keep;
  real.setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &old, sizeof old);
  return r;
}

// with_nonblock_at_once() runs call() — connect, which has no MSG_DONTWAIT —
// on a blocking socket with O_NONBLOCK set on it for this one call and
// cleared right after, before any other fiber of this thread runs. (Not the
// SO_SNDTIMEO trick: a negative timeout, made behind our table, reads back
// as "none" and would not be restored.) If the flags cannot be read or set,
// the plain call.
template <class F>
auto with_nonblock_at_once(int fd, F call) noexcept {
  int fl = real.fcntl(fd, F_GETFL);
  if (fl < 0 || (fl & O_NONBLOCK) != 0 || real.fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
    return call();
  }
  auto r = call();
  errno_keeper keep;
  real.fcntl(fd, F_SETFL, fl);
  return r;
}

// wait_connected() waits for the connect in progress on fd to end, for a
// blocking sendto/sendmsg(MSG_FASTOPEN): POLLOUT, then the outcome from SO_ERROR. 0
// (connected), a negative errno (the connect's error, an interrupt) or
// deadline_expired (SO_SNDTIMEO passed first).
// The file is the call's (h) from the wait on.
int wait_connected(call_ctx& c, held_fd& h, fd_entry& e) noexcept {
  h.hold();
  int w = h.await_ready(c, POLLOUT, deadline_ns(h.sock_timeout(e, false)));
  if (w < 0) {
    return w;
  }
  int err = 0;
  socklen_t elen = sizeof err;
  if (real.getsockopt(h.at(), SOL_SOCKET, SO_ERROR, &err, &elen) != 0) {
    return -errno;
  }
  return -err;
}

// fastopen_connect() is a blocking send's MSG_FASTOPEN that our MSG_DONTWAIT
// made a non-blocking fast-open connect (-1/EINPROGRESS: no data rode on the
// SYN). A blocking sendto/sendmsg waits for the handshake instead, as
// connect(2) does (SO_SNDTIMEO: EINPROGRESS, as the kernel's), then sends
// it all: 0 to go on sending (without MSG_FASTOPEN), or -1 with errno set.
int fastopen_connect(call_ctx& c, held_fd& h, fd_entry& e) noexcept {
  int w = wait_connected(c, h, e);
  if (w < 0) {
    return fail(w == deadline_expired ? -EINPROGRESS : w);
  }
  return 0;
}

// sock_send() sends through real.send, or real.sendto if addr is given:
// sendmsg would drop a zero-length name and clamp one longer than
// sockaddr_storage, where sendto(2) fails with EINVAL.
ssize_t sock_send(call_ctx& c, int fd, fd_entry& e, const void* buf, std::size_t n, int flags,
                  const sockaddr* addr = nullptr, socklen_t alen = 0) noexcept {
  if (has_pending(c)) {
    return fail(interrupted(c));
  }
  const int saved = errno;
  std::size_t done = 0;
  out_wait st(fd);
  for (;;) {
    const char* p = static_cast<const char*>(buf) + done;
    ssize_t r = addr == nullptr ? real.send(st.file.at(), p, n - done, flags | MSG_DONTWAIT)
                                : real.sendto(st.file.at(), p, n - done, flags | MSG_DONTWAIT, addr, alen);
    if (r >= 0) {
      flags &= ~MSG_FASTOPEN;  // connected or connecting now: a second fast open would be EALREADY
      done += static_cast<std::size_t>(r);
      if (done >= n) {
        return kept_errno(static_cast<ssize_t>(done), saved);
      }
    } else if (errno == EINPROGRESS && (flags & MSG_FASTOPEN) != 0 && done == 0) {
      if (fastopen_connect(c, st.file, e) < 0) {
        return -1;
      }
      flags &= ~MSG_FASTOPEN;
      continue;  // connected: now the data
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
      return done > 0 ? kept_errno(static_cast<ssize_t>(done), saved) : -1;
    }
    ssize_t ret;
    if (out_blocked(c, fd, e, st, done, &ret)) {
      return kept_errno(ret, saved);
    }
  }
}

// advance() drops the first `k` bytes from an iovec array (in place).
void advance(iovec*& v, int& cnt, std::size_t k) noexcept {
  while (cnt > 0 && k >= v->iov_len) {
    k -= v->iov_len;
    ++v;
    --cnt;
  }
  if (cnt > 0) {
    v->iov_base = static_cast<char*>(v->iov_base) + k;
    v->iov_len -= k;
  }
}

std::size_t iov_total(const iovec* v, int cnt) noexcept {
  std::size_t t = 0;
  for (int i = 0; i < cnt; ++i) {
    t += v[i].iov_len;
  }
  return t;
}

// iov_copy is a private, writable copy of a caller's iovecs, which the rest
// of a partial write advances through: up to 8 inline (on the fiber's stack),
// more in one heap block. assign() returns null if that block cannot be had
// (the caller then reports the short count written so far, as a blocking
// write interrupted midway does). Never throws: the hooks are noexcept.
class iov_copy {
 public:
  iov_copy() = default;
  iov_copy(const iov_copy&) = delete;
  iov_copy& operator=(const iov_copy&) = delete;
  ~iov_copy() { ::operator delete(_heap); }
  iovec* assign(const iovec* v, std::size_t n) noexcept {
    iovec* dst = _inline;
    if (n > inline_count) {
      // n was accepted by the kernel (at most UIO_MAXIOV): no overflow.
      _heap = static_cast<iovec*>(::operator new(n * sizeof(iovec), std::nothrow));
      if (_heap == nullptr) {
        return nullptr;
      }
      dst = _heap;
    }
    std::copy(v, v + n, dst);
    _data = dst;
    return dst;
  }
  iovec* data() const noexcept { return _data; }

 private:
  static constexpr std::size_t inline_count = 8;
  iovec _inline[inline_count];
  iovec* _heap = nullptr;
  iovec* _data = nullptr;
};

// sock_sendmsg() is sock_send() for a msghdr (writev, sendmsg). On a
// partial send the rest goes out from a private copy of the iovecs, without
// the ancillary data (the kernel sent that with the first bytes).
// The first try hands the caller's msghdr to the kernel untouched: a bad
// pointer (the msghdr, its iovecs, its name) is the kernel's EFAULT, as
// libc's, not a fault here; once it would block (or sent), the kernel has
// read them.
ssize_t sock_sendmsg(call_ctx& c, int fd, fd_entry& e, const msghdr* msg, int flags) noexcept {
  if (has_pending(c)) {
    return fail(interrupted(c));
  }
  const int saved = errno;
  ssize_t first = real.sendmsg(fd, msg, flags | MSG_DONTWAIT);
  if (first < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINPROGRESS) {
    return -1;  // (EINPROGRESS: a fast open, below)
  }
  std::size_t total = iov_total(msg->msg_iov, static_cast<int>(msg->msg_iovlen));
  std::size_t done = 0;
  out_wait st(fd);
  iov_copy rest;
  msghdr m = *msg;
  constexpr ssize_t used = -2;  // `first` was the first round's result
  for (;; first = used) {
    ssize_t r = first != used ? first : real.sendmsg(st.file.at(), &m, flags | MSG_DONTWAIT);
    if (r < 0 && errno == EINPROGRESS && (flags & MSG_FASTOPEN) != 0 && done == 0) {
      if (fastopen_connect(c, st.file, e) < 0) {  // as sock_send()
        return -1;
      }
      flags &= ~MSG_FASTOPEN;
      continue;
    }
    if (r >= 0) {
      flags &= ~MSG_FASTOPEN;  // as sock_send()
      done += static_cast<std::size_t>(r);
      if (done >= total) {
        return kept_errno(static_cast<ssize_t>(done), saved);
      }
      if (r > 0) {
        if (rest.data() == nullptr) {
          m.msg_iov = rest.assign(msg->msg_iov, msg->msg_iovlen);
          if (m.msg_iov == nullptr) {
            return kept_errno(static_cast<ssize_t>(done), saved);  // out of memory: the short count
          }
          m.msg_control = nullptr;
          m.msg_controllen = 0;
        }
        iovec* v = m.msg_iov;
        int cnt = static_cast<int>(m.msg_iovlen);
        advance(v, cnt, static_cast<std::size_t>(r));
        m.msg_iov = v;
        m.msg_iovlen = static_cast<std::size_t>(cnt);
      }
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
      return done > 0 ? kept_errno(static_cast<ssize_t>(done), saved) : -1;
    }
    ssize_t ret;
    if (out_blocked(c, fd, e, st, done, &ret)) {
      return kept_errno(ret, saved);
    }
  }
}

// file_writev() writes through io_uring: a regular file in one op (like the
// kernel, which writes it whole or reports a short count), a pipe until all
// is written (a blocking pipe write does). A pipe with room takes the write
// at once (RWF_NOWAIT), as writev(2) would, before any other fiber runs: a
// queued op reaches the kernel only at the hub's next turn — writing to
// whatever file holds the number by then (another fiber's dup2()), and
// parking a signal handler's self-pipe write. offset -1: the file position.
ssize_t file_writev(call_ctx& c, int fd, fd_kind k, const iovec* iov, int cnt, std::int64_t offset) noexcept {
  std::size_t total = iov_total(iov, cnt);
  const int saved = errno;
  std::size_t done = 0;
  iov_copy rest;
  const iovec* v = iov;
  int left = cnt;
  held_fd file(fd);
  for (bool first = true;; first = false) {
    ssize_t got = -1;
    if (first && k == kind_fifo) {
      got = real.pwritev2(fd, v, left, -1, RWF_NOWAIT);
      if (got < 0 && errno != EAGAIN && errno != EOPNOTSUPP) {
        return -1;  // what writev(2) reports (EPIPE, EBADF, ...)
      }
    }
    if (got < 0) {  // not tried, or no room: wait for it through the ring
      if (k == kind_fifo) {
        file.hold();  // a pipe write may take several ops: all on the pipe it was called on
      }
      io_op op;
      op.code = op_code::writev;
      op.fd = file.at();
      op.buf = const_cast<iovec*>(v);
      op.len = static_cast<std::uint32_t>(left);
      op.offset = offset;
      int r = await_op(c, op, clock::time_point::max());
      if (r == -EBADF && file.at() != op.fd) {
        continue;  // closed by another thread before the op reached the kernel: again, on the duplicate
      }
      if (r < 0) {
        return done > 0 ? kept_errno(static_cast<ssize_t>(done), saved) : fail(r);
      }
      got = r;
      if (r == 0 || k == kind_regular) {
        done += static_cast<std::size_t>(r);
        break;
      }
    }
    done += static_cast<std::size_t>(got);
    if (done >= total) {
      break;
    }
    if (rest.data() == nullptr) {  // the caller's array is const: advance a copy
      v = rest.assign(iov, static_cast<std::size_t>(cnt));
      if (v == nullptr) {
        return kept_errno(static_cast<ssize_t>(done), saved);  // out of memory: the short count
      }
    }
    iovec* mv = const_cast<iovec*>(v);
    advance(mv, left, static_cast<std::size_t>(got));
    v = mv;
  }
  return kept_errno(static_cast<ssize_t>(done), saved);  // the RWF_NOWAIT try may have left EAGAIN
}

ssize_t file_write(call_ctx& c, int fd, fd_kind k, const void* buf, std::size_t n,
                   std::int64_t offset) noexcept {
  iovec v{const_cast<void*>(buf), n};
  return file_writev(c, fd, k, &v, 1, offset);
}

// pipe_read_now() reads a pipe at once (RWF_NOWAIT) if data or end of file is
// already there, as read(2) would before any other fiber runs (see
// file_writev()): true with the call's result in `ret` (an error included);
// false if it is empty and the caller must wait.
bool pipe_read_now(int fd, const iovec* iov, int cnt, ssize_t& ret) noexcept {
  ret = real.preadv2(fd, iov, cnt, -1, RWF_NOWAIT);
  return ret >= 0 || (errno != EAGAIN && errno != EOPNOTSUPP);
}
bool pipe_read_now(int fd, void* buf, std::size_t n, ssize_t& ret) noexcept {
  iovec v{buf, n};
  return pipe_read_now(fd, &v, 1, ret);
}

// ---- poll / select ---------------------------------------------------------------

// poll_scratch is wait_ready()'s working memory for n fds: watch[i] (the fd
// and events one io_uring poll op waits on), visible[i] (the revents bits the
// caller can see) and results[i] (that op's result). Up to inline_fds live
// in the object itself, on the fiber's stack like await_poll()'s ops: a
// hooked poll() on a few fds allocates nothing. A larger set is one heap
// block; ok() is false if that allocation failed (the caller reports
// ENOMEM, as the kernel's poll and select do when their tables cannot be
// allocated). Never throws.
class poll_scratch {
 public:
  // inline_fds matches await_poll()'s inline ops: the same calls stay off the heap there.
  static constexpr std::size_t inline_fds = 16;

  explicit poll_scratch(std::size_t n) noexcept : _n(n) {
    if (n <= inline_fds) {
      watch = _watch;
      visible = _visible;
      results = _results;
      return;
    }
    constexpr std::size_t per_fd = sizeof(pollfd) + sizeof(int) + sizeof(short);
    if (n > SIZE_MAX / per_fd) {
      return;
    }
    // pollfd[n], then int[n], then short[n]: each starts suitably aligned.
    static_assert(alignof(pollfd) >= alignof(int) && alignof(int) >= alignof(short));
    static_assert(sizeof(pollfd) % alignof(int) == 0);
    _heap = static_cast<char*>(::operator new(n * per_fd, std::nothrow));
    if (_heap == nullptr) {
      return;
    }
    watch = reinterpret_cast<pollfd*>(_heap);
    results = reinterpret_cast<int*>(_heap + n * sizeof(pollfd));
    visible = reinterpret_cast<short*>(_heap + n * (sizeof(pollfd) + sizeof(int)));
  }
  ~poll_scratch() { ::operator delete(_heap); }
  poll_scratch(const poll_scratch&) = delete;
  poll_scratch& operator=(const poll_scratch&) = delete;

  // ok() is true if the arrays are there (always for n <= inline_fds).
  bool ok() const noexcept { return watch != nullptr; }
  std::size_t size() const noexcept { return _n; }

  pollfd* watch = nullptr;
  short* visible = nullptr;
  int* results = nullptr;

 private:
  std::size_t _n;
  char* _heap = nullptr;
  pollfd _watch[inline_fds];
  short _visible[inline_fds];
  int _results[inline_fds];
};

// wait_ready() parks on s.watch (one io_uring poll per fd) until probe(last)
// reports something: the kernel (a zero-timeout poll or select) then says
// exactly what is ready, so results are libc's. probe(true) is the final
// check once the deadline passed. s.visible[i] are the revents bits the
// caller can see for s.watch[i] (select reports no POLLHUP for an fd only in
// its except set). An op that failed (io_uring cannot poll a regular file)
// or fired with only invisible bits would fire again at once, a busy loop
// past the timeout: that fd is no longer watched, and the wait goes on with
// the other ops and the timer. Precondition: s.ok(). Returns probe's result
// (>= 0) or a negative errno (-ENOMEM from await_poll() for a large set, or
// the errno of a probe that failed).
template <class Probe>
int wait_ready(call_ctx& c, poll_scratch& s, clock::time_point dl, Probe probe) noexcept {
  for (;;) {
    int w = await_poll(c, s.watch, s.size(), dl, s.results);
    if (w < 0) {
      return w;
    }
    bool last = w == 0 || clock::now() >= dl;
    int r = probe(last);
    if (r < 0) {
      // probe() is a libc call: -1 with errno set (EBADF for an fd closed
      // meanwhile, EFAULT, EINTR, ENOMEM). Our callers take a negative
      // errno: handing them -1 made the caller's errno 1 (EPERM).
      return -errno;
    }
    if (r != 0 || last) {
      return r;
    }
    // Woken but nothing ready for the caller. A visible event someone else
    // consumed meanwhile is waited for again.
    for (std::size_t i = 0; i < s.size(); ++i) {
      if (s.results[i] < 0 || (s.results[i] > 0 && (s.results[i] & s.visible[i]) == 0)) {
        s.watch[i].fd = -1;
      }
    }
  }
}

// poll_wait() is wait_ready() for poll/ppoll: the caller's fds get libc's
// revents. -1/ENOMEM if a large set's scratch cannot be allocated.
int poll_wait(call_ctx& c, pollfd* fds, nfds_t n, clock::time_point dl) noexcept {
  poll_scratch s(n);
  if (!s.ok()) {
    return fail(-ENOMEM);
  }
  for (nfds_t i = 0; i < n; ++i) {
    s.watch[i] = fds[i];
    s.visible[i] = static_cast<short>(fds[i].events | POLLERR | POLLHUP | POLLNVAL);
  }
  int r = wait_ready(c, s, dl, [&](bool) { return real.poll(fds, n, 0); });
  return r < 0 ? fail(r) : r;
}

// deadline_ms() is the deadline of a poll(2)-style timeout in ms (< 0: none).
clock::time_point deadline_ms(int timeout) noexcept {
  return timeout < 0 ? clock::time_point::max() : clock::now() + std::chrono::milliseconds(timeout);
}

bool valid_timespec(const timespec* ts) noexcept {
  return ts->tv_sec >= 0 && ts->tv_nsec >= 0 && ts->tv_nsec < 1'000'000'000;
}

// readable() is true if the 16 bytes at p (a timespec the caller passed) can
// be read: where glibc hands the pointer straight to the kernel (nanosleep,
// clock_nanosleep, epoll_pwait2), an unreadable one gets EFAULT, so those
// hooks check before reading and leave such a call to libc. (glibc's ppoll
// and select read the timeout themselves: a bad one crashes there, and
// here.) The check is a FUTEX_WAIT that cannot sleep (the futex word never
// holds the expected value): the kernel copies its timeout in first — EFAULT
// if unreadable, EINVAL if not a valid timespec (still readable) — and then
// returns EAGAIN.
bool readable(const void* p) noexcept {
  errno_keeper keep;
  std::uint32_t word = 0;
  long r = ::syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 1U, p, nullptr, 0);
  return r == 0 || errno != EFAULT;
}

clock::time_point deadline_ts(const timespec& ts) noexcept {
  // Saturate instead of overflowing for absurd timeouts.
  if (ts.tv_sec > 100L * 365 * 24 * 3600) {
    return clock::time_point::max();
  }
  return clock::now() + std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

timespec remaining(clock::time_point dl) noexcept {
  auto left = dl - clock::now();
  if (left < clock::duration::zero()) {
    left = clock::duration::zero();
  }
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
  return timespec{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
}

// sleep_for() is the cooperative core of the sleep family: 0, or a negative
// errno (interrupt) with *rem filled.
int sleep_for(call_ctx& c, const timespec& req, timespec* rem) noexcept {
  if (req.tv_sec == 0 && req.tv_nsec == 0) {
    // A zero sleep yields (cogent's sleep(0)), but never fails.
    if (!has_pending(c)) {
      yield(c);
    }
    return 0;
  }
  clock::time_point dl = deadline_ts(req);
  int r = park_until(c, dl);
  if (r < 0 && rem != nullptr) {
    *rem = remaining(dl);
  }
  return r;
}

// host_store is gethostbyname()'s result storage, one per thread: libc's
// static buffer, never freed while the thread lives (a caller may keep the
// hostent* across another fiber's call, as with libc, where it is
// overwritten but stays readable). Each lookup runs in its own buffer (two
// fibers' lookups may run at once on the pool) and is copied in when done.
// A buffer outgrown is retired, not freed, so pointers into it stay readable.
struct host_store {
  hostent he{};
  std::vector<char> buf;
  std::vector<std::vector<char>> retired;
};
thread_local host_store t_host;

// publish() copies a gethostbyname_r result living in `tmp` into t_host,
// moving every pointer into `tmp` along with it. Returns &t_host.he.
hostent* publish(const hostent& res, const std::vector<char>& tmp) {
  host_store& st = t_host;
  if (st.buf.size() < tmp.size()) {
    if (!st.buf.empty()) {
      st.retired.push_back(std::move(st.buf));
    }
    st.buf.assign(tmp.size(), 0);
  }
  std::memcpy(st.buf.data(), tmp.data(), tmp.size());
  const char* lo = tmp.data();
  const char* hi = lo + tmp.size();
  auto move = [&](auto* p) {
    const char* q = reinterpret_cast<const char*>(p);
    if (q >= lo && q < hi) {
      return reinterpret_cast<decltype(p)>(st.buf.data() + (q - lo));
    }
    return p;
  };
  auto move_array = [&](char** arr) {
    for (char** slot = arr; *slot != nullptr; ++slot) {
      *slot = move(*slot);
    }
  };
  st.he = res;
  st.he.h_name = move(res.h_name);
  st.he.h_aliases = move(res.h_aliases);
  st.he.h_addr_list = move(res.h_addr_list);
  if (st.he.h_aliases != res.h_aliases) {
    move_array(st.he.h_aliases);
  }
  if (st.he.h_addr_list != res.h_addr_list) {
    move_array(st.he.h_addr_list);
  }
  return &st.he;
}

}  // namespace

// ---- sockets: creation and bookkeeping ------------------------------------------

COGENT_HOOK int socket(int domain, int type, int protocol) noexcept {
  int fd = real.socket(domain, type, protocol);
  if (fd >= 0) {
    reset_fd(fd, kind_socket, (type & SOCK_NONBLOCK) != 0);
  }
  return fd;
}

COGENT_HOOK int socketpair(int domain, int type, int protocol, int sv[2]) noexcept {
  int r = real.socketpair(domain, type, protocol, sv);
  if (r == 0) {
    reset_fd(sv[0], kind_socket, (type & SOCK_NONBLOCK) != 0);
    reset_fd(sv[1], kind_socket, (type & SOCK_NONBLOCK) != 0);
  }
  return r;
}

COGENT_HOOK int accept4(int fd, sockaddr* addr, socklen_t* addrlen, int flags) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  if ((flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) != 0 || !enter_fd(c, fd, e, k) || no_wait(fd, *e, k, true) ||
      k != kind_socket) {
    int r = real.accept4(fd, addr, addrlen, flags);
    if (r >= 0) {
      accepted(r, (flags & SOCK_NONBLOCK) != 0);
    }
    return r;
  }
  io_op op;
  op.code = op_code::accept;
  op.fd = fd;
  op.buf = addr;
  op.addrlen = addrlen;
  op.flags = static_cast<std::uint32_t>(flags);
  int r = await_op(c, op, deadline_ns(sock_timeout(fd, *e, true)));
  if (r >= 0) {
    accepted(r, (flags & SOCK_NONBLOCK) != 0);
  }
  return static_cast<int>(finish_in(r));
}

COGENT_HOOK int accept(int fd, sockaddr* addr, socklen_t* addrlen) {
  call_ctx c;
  if (!enter(c)) {
    int r = real.accept(fd, addr, addrlen);
    if (r >= 0) {
      accepted(r, false);
    }
    return r;
  }
  return accept4(fd, addr, addrlen, 0);
}

// connect_op() is a blocking connect through io_uring, which waits for room
// in an AF_UNIX listener's backlog: 0 or -errno (SO_SNDTIMEO expired: the
// errno connect(2) gives then).
int connect_op(call_ctx& c, int fd, fd_entry& e, const sockaddr* addr, socklen_t len) noexcept {
  io_op op;
  op.code = op_code::connect;
  op.fd = fd;
  op.buf = const_cast<sockaddr*>(addr);
  op.len = len;
  int r = await_op(c, op, deadline_ns(sock_timeout(fd, e, false)));
  if (r == deadline_expired) {
    // TCP goes on connecting in the background (EINPROGRESS); AF_UNIX gave up
    // waiting for room in the listener's backlog (EAGAIN).
    int domain = 0;
    socklen_t dlen = sizeof domain;
    bool unix_sock = real.getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &dlen) == 0 && domain == AF_UNIX;
    return unix_sock ? -EAGAIN : -EINPROGRESS;
  }
  return r;
}

COGENT_HOOK int connect(int fd, const sockaddr* addr, socklen_t len) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  if (!enter_fd(c, fd, e, k) || no_wait(fd, *e, k, false) || k != kind_socket) {
    return real.connect(fd, addr, len);
  }
  if (has_pending(c)) {
    return fail(interrupted(c));
  }
  // The kernel's own answers, without waiting (io_uring's connect op is not
  // connect(2): it retries once after ECONNABORTED — the end of a failed
  // earlier connect — and that retry is a new connection attempt).
  const int saved = errno;
  auto connect_now = [&](int f) { return with_nonblock_at_once(f, [&] { return real.connect(f, addr, len); }); };
  if (connect_now(fd) == 0) {
    return 0;
  }
  int r = -errno;
  errno = saved;
  if (r == -EAGAIN) {
    // A full AF_UNIX backlog: the op waits for room.
    r = connect_op(c, fd, *e, addr, len);
    return r < 0 ? fail(r) : 0;
  }
  if (r != -EINPROGRESS && r != -EALREADY) {
    return fail(r);
  }
  // A handshake in progress (this call started it: EINPROGRESS, or an
  // earlier non-blocking connect did: EALREADY). connect(2) waits for its end
  // or SO_SNDTIMEO, then answers as a connect seeing the end: 0, or the error
  // (read and cleared, the socket unconnected again: a later connect is a new
  // attempt). So does this, asking once POLLOUT says it ended.
  const bool started_here = r == -EINPROGRESS;
  held_fd h(fd);  // the socket it was called on, even if the number is renumbered meanwhile
  h.hold();
  const clock::time_point dl = deadline_ns(h.sock_timeout(*e, false));
  for (;;) {
    int w = h.await_ready(c, POLLOUT, dl);
    if (w == deadline_expired) {
      return fail(started_here ? -EINPROGRESS : -EALREADY);
    }
    if (w < 0) {
      return fail(w);
    }
    if (connect_now(h.at()) == 0) {
      errno = saved;
      return 0;
    }
    int now = errno;
    errno = saved;
    if (now == EISCONN) {
      return 0;  // connected meanwhile by another call on it
    }
    if (now != EALREADY && now != EINPROGRESS) {
      return fail(-now);
    }
  }
}

COGENT_HOOK int shutdown(int fd, int how) noexcept {
  return real.shutdown(fd, how);
}

// flush_before_renumber() hands this thread's queued io_uring ops to the
// kernel before fd numbers change meaning (close, dup2, dup3): an op another
// fiber queued on the number then works on the file it was queued for, as
// the libc call it stands for would have.
static void flush_before_renumber() noexcept {
  if (g_patched.load(std::memory_order_relaxed)) {
    if (cogent::hub* h = cogent::hub::current_if_exists()) {
      h->flush_io();
    }
  }
}

// detach_holders() gives each call waiting with fd (held_fd) a duplicate of
// its file, before the number is closed or made another file's.
static void detach_holders(int fd) noexcept {
  fd_entry* e = entry_for(fd);
  if (e == nullptr || e->holders.load(std::memory_order_relaxed) == nullptr) [[likely]] {
    return;
  }
  if (!lock_holders(*e, false)) {
    return;
  }
  errno_keeper keep;
  // Above the numbers open() & co. hand out (they take the lowest free one:
  // the program's next open() must not find it taken), if there is room.
  rlimit rl{};
  int base = 0;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    base = static_cast<int>(std::min<rlim_t>(rl.rlim_cur / 2, INT_MAX));
  }
  for (held_node* n = e->holders.load(std::memory_order_relaxed); n != nullptr;) {
    held_node* next = n->next;
    int d = base > fd ? real.fcntl(fd, F_DUPFD_CLOEXEC, base) : -1;
    if (d < 0) {
      d = real.fcntl(fd, F_DUPFD_CLOEXEC, 0);  // -1: the call goes on with fd
    }
    n->dup.store(d, std::memory_order_release);
    n->listed = false;
    n->next = n->prev = nullptr;
    n = next;
  }
  e->holders.store(nullptr, std::memory_order_relaxed);
  unlock_holders(*e);
}

// before_close() is what a close of fd does first, wherever the close itself
// happens (the close hook; libc's pclose): the number's queued ops go to the
// kernel, calls waiting with it are given a duplicate, and the fd is
// forgotten — once closed, its number may be reused at once by another
// thread, whose creation hook then records the new file.
static void before_close(int fd) noexcept {
  flush_before_renumber();
  detach_holders(fd);
  reset_fd(fd);
}

COGENT_HOOK int close(int fd) {
  before_close(fd);
  return real.close(fd);
}

// ---- reads ---------------------------------------------------------------------

COGENT_HOOK ssize_t read(int fd, void* buf, size_t n) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  // A zero-length read returns 0 at once, even on an empty socket or pipe.
  if (n == 0 || n > max_rw || !enter_fd(c, fd, e, k) || no_wait(fd, *e, k, true)) {
    return real.read(fd, buf, n);
  }
  if (k == kind_fifo) {
    const int saved = errno;
    if (ssize_t r; pipe_read_now(fd, buf, n, r)) {
      return r;
    }
    errno = saved;  // the failed RWF_NOWAIT try's EAGAIN is not the caller's
  }
  io_op op;
  op.fd = fd;
  op.buf = buf;
  op.len = static_cast<std::uint32_t>(n);
  if (k == kind_socket) {
    op.code = op_code::recv;
  } else {
    op.code = op_code::read;
    op.offset = -1;  // the file position, like read(2)
  }
  return input(c, fd, *e, k, op);
}

COGENT_HOOK ssize_t readv(int fd, const iovec* iov, int cnt) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  // A null array with cnt > 0 is libc's EFAULT (the kernel checks it), not
  // a crash in iov_total(). A bad non-null pointer still faults here.
  std::size_t total = cnt < 0 || cnt > IOV_MAX || iov == nullptr ? 0 : iov_total(iov, cnt);
  if (total == 0 || total > max_rw || !enter_fd(c, fd, e, k) || no_wait(fd, *e, k, true)) {
    return real.readv(fd, iov, cnt);
  }
  if (k == kind_fifo) {
    const int saved = errno;  // as read()
    if (ssize_t r; pipe_read_now(fd, iov, cnt, r)) {
      return r;
    }
    errno = saved;
  }
  io_op op;
  op.code = op_code::readv;
  op.fd = fd;
  op.buf = const_cast<iovec*>(iov);
  op.len = static_cast<std::uint32_t>(cnt);
  op.offset = -1;
  return input(c, fd, *e, k, op);
}

namespace {
ssize_t pread_impl(int fd, void* buf, size_t n, off_t offset) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  // Only regular files: io_uring ignores the offset of a pipe or socket
  // where pread(2) fails with ESPIPE, and a negative offset means "current
  // position" to io_uring but EINVAL to pread(2).
  if (offset < 0 || n > max_rw || !enter_fd(c, fd, e, k) || k != kind_regular) {
    return real.pread(fd, buf, n, offset);
  }
  io_op op;
  op.code = op_code::read;
  op.fd = fd;
  op.buf = buf;
  op.len = static_cast<std::uint32_t>(n);
  op.offset = offset;
  return input(c, fd, *e, k, op);
}

ssize_t pwrite_impl(int fd, const void* buf, size_t n, off_t offset) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  if (offset < 0 || n > max_rw || !enter_fd(c, fd, e, k) || k != kind_regular) {
    return real.pwrite(fd, buf, n, offset);
  }
  return file_write(c, fd, k, buf, n, offset);
}
}  // namespace

COGENT_HOOK ssize_t pread(int fd, void* buf, size_t n, off_t offset) {
  return pread_impl(fd, buf, n, offset);
}
COGENT_HOOK ssize_t pread64(int fd, void* buf, size_t n, off_t offset) {
  return pread_impl(fd, buf, n, offset);
}

COGENT_HOOK ssize_t recv(int fd, void* buf, size_t n, int flags) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  if ((flags & no_wait_flags) != 0 || n > max_rw || !enter_fd(c, fd, e, k) || no_wait(fd, *e, k, true) ||
      k != kind_socket) {
    return real.recv(fd, buf, n, flags);
  }
  if ((flags & peek_all_flags) == peek_all_flags) {
    held_fd h(fd);
    int w = peek_wait(c, h, *e, n, flags, [&](int at, int f) { return real.recv(at, buf, n, f); });
    return w < 0 ? fail(w) : real.recv(h.at(), buf, n, flags | MSG_DONTWAIT);
  }
  io_op op;
  op.code = op_code::recv;
  op.fd = fd;
  op.buf = buf;
  op.len = static_cast<std::uint32_t>(n);
  op.flags = static_cast<std::uint32_t>(flags);
  return zero_len_result(fd, n, input(c, fd, *e, k, op));
}

COGENT_HOOK ssize_t recvmsg(int fd, msghdr* msg, int flags) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  if ((flags & no_wait_flags) != 0 || msg == nullptr || !enter_fd(c, fd, e, k) || no_wait(fd, *e, k, true) ||
      k != kind_socket) {
    ssize_t r = real.recvmsg(fd, msg, flags);
    if (r >= 0) {
      received_fds(msg);
    }
    return r;
  }
  if ((flags & peek_all_flags) == peek_all_flags && msg->msg_iovlen <= IOV_MAX) {
    msghdr data{};  // the probe peeks bytes only
    data.msg_iov = msg->msg_iov;
    data.msg_iovlen = msg->msg_iovlen;
    std::size_t n = iov_total(msg->msg_iov, static_cast<int>(msg->msg_iovlen));
    held_fd h(fd);
    int w = peek_wait(c, h, *e, n, flags, [&](int at, int f) { return real.recvmsg(at, &data, f); });
    if (w < 0) {
      return fail(w);
    }
    ssize_t r = real.recvmsg(h.at(), msg, flags | MSG_DONTWAIT);
    if (r >= 0) {
      received_fds(msg);
    }
    return r;
  }
  io_op op;
  op.code = op_code::recvmsg;
  op.fd = fd;
  op.buf = msg;
  op.flags = static_cast<std::uint32_t>(flags);
  ssize_t r = input(c, fd, *e, k, op);
  if (r < 0 && errno == timed_out_errno && msg->msg_iovlen <= IOV_MAX) {
    r = zero_len_result(fd, iov_total(msg->msg_iov, static_cast<int>(msg->msg_iovlen)), r);
  }
  if (r >= 0) {
    received_fds(msg);
  }
  return r;
}

COGENT_HOOK ssize_t recvfrom(int fd, void* buf, size_t n, int flags, sockaddr* addr, socklen_t* addrlen) {
  if (addr == nullptr) {
    return recv(fd, buf, n, flags);
  }
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  if ((flags & no_wait_flags) != 0 || addrlen == nullptr || n > max_rw || !enter_fd(c, fd, e, k) ||
      no_wait(fd, *e, k, true) || k != kind_socket) {
    return real.recvfrom(fd, buf, n, flags, addr, addrlen);
  }
  if ((flags & peek_all_flags) == peek_all_flags) {
    held_fd h(fd);
    int w = peek_wait(c, h, *e, n, flags, [&](int at, int f) { return real.recv(at, buf, n, f); });
    return w < 0 ? fail(w) : real.recvfrom(h.at(), buf, n, flags | MSG_DONTWAIT, addr, addrlen);
  }
  iovec v{buf, n};
  msghdr m{};
  m.msg_name = addr;
  m.msg_namelen = *addrlen;
  m.msg_iov = &v;
  m.msg_iovlen = 1;
  io_op op;
  op.code = op_code::recvmsg;
  op.fd = fd;
  op.buf = &m;
  op.flags = static_cast<std::uint32_t>(flags);
  ssize_t r = zero_len_result(fd, n, input(c, fd, *e, k, op));
  if (r >= 0) {
    *addrlen = m.msg_namelen;
  }
  return r;
}

// ---- writes ---------------------------------------------------------------------

COGENT_HOOK ssize_t write(int fd, const void* buf, size_t n) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  if (n > max_rw || !enter_fd(c, fd, e, k) || no_wait(fd, *e, k, false)) {
    return real.write(fd, buf, n);
  }
  if (k == kind_socket) {
    return sock_send(c, fd, *e, buf, n, 0);  // flags 0: SIGPIPE as write(2) raises it
  }
  return file_write(c, fd, k, buf, n, -1);
}

COGENT_HOOK ssize_t writev(int fd, const iovec* iov, int cnt) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  // iov == nullptr (cnt > 0): libc's EFAULT, not a crash in iov_total().
  // Zero bytes: writev(2) returns 0 without reaching the socket's protocol
  // (a sendmsg would: EPIPE and SIGPIPE on an unconnected TCP socket).
  std::size_t total = 0;
  if (cnt < 0 || cnt > IOV_MAX || (cnt > 0 && iov == nullptr) || (total = iov_total(iov, cnt)) > max_rw ||
      total == 0 || !enter_fd(c, fd, e, k) || no_wait(fd, *e, k, false)) {
    return real.writev(fd, iov, cnt);
  }
  if (k == kind_socket) {
    msghdr m{};
    m.msg_iov = const_cast<iovec*>(iov);
    m.msg_iovlen = static_cast<std::size_t>(cnt);
    return sock_sendmsg(c, fd, *e, &m, 0);
  }
  return file_writev(c, fd, k, iov, cnt, -1);
}

COGENT_HOOK ssize_t pwrite(int fd, const void* buf, size_t n, off_t offset) {
  return pwrite_impl(fd, buf, n, offset);
}
COGENT_HOOK ssize_t pwrite64(int fd, const void* buf, size_t n, off_t offset) {
  return pwrite_impl(fd, buf, n, offset);
}

COGENT_HOOK ssize_t send(int fd, const void* buf, size_t n, int flags) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  if ((flags & MSG_DONTWAIT) != 0 || n > max_rw || !enter_fd(c, fd, e, k) || no_wait(fd, *e, k, false) ||
      k != kind_socket) {
    return real.send(fd, buf, n, flags);
  }
  return sock_send(c, fd, *e, buf, n, flags);
}

COGENT_HOOK ssize_t sendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr,
                           socklen_t len) {
  if (addr == nullptr) {
    return send(fd, buf, n, flags);
  }
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  if ((flags & MSG_DONTWAIT) != 0 || n > max_rw || !enter_fd(c, fd, e, k) || no_wait(fd, *e, k, false) ||
      k != kind_socket) {
    return real.sendto(fd, buf, n, flags, addr, len);
  }
  // Through real sendto, not sendmsg: a zero or oversized len is then
  // libc's EINVAL (sendmsg drops or clamps the name and sends).
  return sock_send(c, fd, *e, buf, n, flags, addr, len);
}

COGENT_HOOK ssize_t sendmsg(int fd, const msghdr* msg, int flags) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  // msg itself is not read before the kernel has (sock_sendmsg()).
  const bool to_libc = (flags & MSG_DONTWAIT) != 0 || msg == nullptr || !enter_fd(c, fd, e, k) ||
                       no_wait(fd, *e, k, false) || k != kind_socket;
  const ssize_t r = to_libc ? real.sendmsg(fd, msg, flags) : sock_sendmsg(c, fd, *e, msg, flags);
  if (r >= 0) {
    sending_fds(msg);
  }
  return r;
}

// ---- vectored positional IO: preadv, pwritev, preadv2, pwritev2 -----------------------

namespace {

// vec_total() is the byte count of iov[0..cnt), or SIZE_MAX where the call
// is not for the ring: a bad count or array (the kernel's EINVAL/EFAULT) or
// more than max_rw (the kernel's clamping). Sums without wrapping.
std::size_t vec_total(const iovec* iov, int cnt) noexcept {
  if (cnt <= 0 || cnt > IOV_MAX || iov == nullptr) {
    return SIZE_MAX;
  }
  std::size_t t = 0;
  for (int i = 0; i < cnt; ++i) {
    if (iov[i].iov_len > max_rw - t) {
      return SIZE_MAX;
    }
    t += iov[i].iov_len;
  }
  return t;
}

// preadv_impl()/pwritev_impl() are pread_impl()/pwrite_impl() for iovecs:
// regular files only, a readv/writev op at the offset; `libc` is the real
// call for everything else (a zero total never waits either).
// to_ring() is their shared test: a valid, non-empty array at an offset >= 0
// on a regular file, from a fiber.
bool to_ring(call_ctx& c, int fd, const iovec* iov, int cnt, off_t offset, fd_entry*& e, fd_kind& k) noexcept {
  std::size_t total = offset < 0 ? SIZE_MAX : vec_total(iov, cnt);
  return total != 0 && total != SIZE_MAX && enter_fd(c, fd, e, k) && k == kind_regular;
}

template <class Libc>
ssize_t preadv_impl(int fd, const iovec* iov, int cnt, off_t offset, Libc libc) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  if (!to_ring(c, fd, iov, cnt, offset, e, k)) {
    return libc();
  }
  io_op op;
  op.code = op_code::readv;
  op.fd = fd;
  op.buf = const_cast<iovec*>(iov);
  op.len = static_cast<std::uint32_t>(cnt);
  op.offset = offset;
  return input(c, fd, *e, k, op);
}

template <class Libc>
ssize_t pwritev_impl(int fd, const iovec* iov, int cnt, off_t offset, Libc libc) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  if (!to_ring(c, fd, iov, cnt, offset, e, k)) {
    return libc();
  }
  return file_writev(c, fd, k, iov, cnt, offset);
}

}  // namespace

COGENT_HOOK ssize_t preadv(int fd, const iovec* iov, int cnt, off_t offset) {
  return preadv_impl(fd, iov, cnt, offset, [&] { return real.preadv(fd, iov, cnt, offset); });
}
COGENT_HOOK ssize_t preadv64(int fd, const iovec* iov, int cnt, off_t offset) {
  return preadv_impl(fd, iov, cnt, offset, [&] { return real.preadv(fd, iov, cnt, offset); });
}
COGENT_HOOK ssize_t pwritev(int fd, const iovec* iov, int cnt, off_t offset) {
  return pwritev_impl(fd, iov, cnt, offset, [&] { return real.pwritev(fd, iov, cnt, offset); });
}
COGENT_HOOK ssize_t pwritev64(int fd, const iovec* iov, int cnt, off_t offset) {
  return pwritev_impl(fd, iov, cnt, offset, [&] { return real.pwritev(fd, iov, cnt, offset); });
}

// With flags (RWF_NOWAIT, RWF_HIPRI, RWF_APPEND, ...), which the ring op does
// not carry, or offset -1 (the file position: readv/writev semantics), libc.
namespace {
ssize_t preadv2_impl(int fd, const iovec* iov, int cnt, off_t offset, int flags) {
  auto libc = [&] { return real.preadv2(fd, iov, cnt, offset, flags); };
  return flags != 0 ? libc() : preadv_impl(fd, iov, cnt, offset, libc);
}
ssize_t pwritev2_impl(int fd, const iovec* iov, int cnt, off_t offset, int flags) {
  auto libc = [&] { return real.pwritev2(fd, iov, cnt, offset, flags); };
  return flags != 0 ? libc() : pwritev_impl(fd, iov, cnt, offset, libc);
}
}  // namespace

COGENT_HOOK ssize_t preadv2(int fd, const iovec* iov, int cnt, off_t offset, int flags) {
  return preadv2_impl(fd, iov, cnt, offset, flags);
}
COGENT_HOOK ssize_t preadv64v2(int fd, const iovec* iov, int cnt, off_t offset, int flags) {
  return preadv2_impl(fd, iov, cnt, offset, flags);
}
COGENT_HOOK ssize_t pwritev2(int fd, const iovec* iov, int cnt, off_t offset, int flags) {
  return pwritev2_impl(fd, iov, cnt, offset, flags);
}
COGENT_HOOK ssize_t pwritev64v2(int fd, const iovec* iov, int cnt, off_t offset, int flags) {
  return pwritev2_impl(fd, iov, cnt, offset, flags);
}

// ---- sendfile ------------------------------------------------------------------------
//
// Only the wait for room in out_fd (a socket or a pipe) cooperates; reading
// in_fd is the kernel's, as in libc (a regular file: the page cache).

namespace {

// sock_sendfile_now() is sendfile(2) to a socket that sends what fits and
// never waits for room (sendfile has no MSG_DONTWAIT: with_sndtimeo_at_once).
ssize_t sock_sendfile_now(int out, int in, off_t* off, std::size_t n) noexcept {
  return with_sndtimeo_at_once(out, [&] { return real.sendfile(out, in, off, n); });
}

ssize_t sendfile_impl(int out, int in, off_t* off, size_t n) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  if (n == 0 || n > max_rw || !enter_fd(c, out, e, k) || no_wait(out, *e, k, false) || k == kind_regular) {
    return real.sendfile(out, in, off, n);
  }
  if (has_pending(c)) {
    return fail(interrupted(c));
  }
  const int saved = errno;
  held_fd in_file(in);  // both files are the call's from its first wait on (held_fd)
  if (k == kind_fifo) {
    // A blocking sendfile to a pipe waits for room once, then moves what
    // fits: the real call, once a zero-timeout poll says there is room (or
    // an error it reports itself). Nothing runs between the two.
    held_fd out_file(out);
    for (;;) {
      pollfd p{out_file.at(), POLLOUT, 0};
      if (real.poll(&p, 1, 0) != 0) {
        errno = saved;
        return real.sendfile(out_file.at(), in_file.at(), off, n);
      }
      out_file.hold();
      in_file.hold();
      int w = out_file.await_ready(c, POLLOUT, clock::time_point::max());
      if (w < 0) {
        return fail(w);
      }
    }
  }
  // A blocking sendfile to a socket sends all n bytes (or to the end of
  // in_fd), waiting for room as often as needed: sock_send()'s loop. The
  // offset (*off or in_fd's position) moves with each part, as in one call.
  std::size_t done = 0;
  out_wait st(out);
  for (;;) {
    ssize_t r = sock_sendfile_now(st.file.at(), in_file.at(), off, n - done);
    if (r > 0) {
      done += static_cast<std::size_t>(r);
      if (done >= n) {
        return kept_errno(static_cast<ssize_t>(done), saved);
      }
      continue;  // a short count: the end of in_fd (0 next) or no more room (EAGAIN next)
    }
    if (r == 0) {
      return kept_errno(static_cast<ssize_t>(done), saved);
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      return done > 0 ? kept_errno(static_cast<ssize_t>(done), saved) : -1;
    }
    in_file.hold();
    ssize_t ret;
    if (out_blocked(c, out, *e, st, done, &ret)) {
      return kept_errno(ret, saved);
    }
  }
}

}  // namespace

COGENT_HOOK ssize_t sendfile(int out, int in, off_t* off, size_t n) noexcept {
  return sendfile_impl(out, in, off, n);
}
COGENT_HOOK ssize_t sendfile64(int out, int in, off_t* off, size_t n) noexcept {
  return sendfile_impl(out, in, off, n);
}

// ---- recvmmsg / sendmmsg -----------------------------------------------------------

namespace {
// The kernel's cap on vlen (UIO_MAXIOV): it handles at most this many per call.
constexpr unsigned max_mmsg = 1024;
}  // namespace

// recvmmsg() blocks, as the kernel's, until the first message, then (without
// MSG_WAITFORONE) for each further one until vlen: batches taken with
// MSG_DONTWAIT, a POLLIN wait between them, SO_RCVTIMEO per message as the
// kernel's. A timeout, MSG_WAITALL or a flag that never waits: libc.
COGENT_HOOK int recvmmsg(int fd, mmsghdr* vec, unsigned vlen, int flags, timespec* timeout) {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  if (timeout != nullptr || (flags & (no_wait_flags | MSG_WAITALL)) != 0 || vec == nullptr || vlen == 0 ||
      !enter_fd(c, fd, e, k) || no_wait(fd, *e, k, true) || k != kind_socket) {
    int r = real.recvmmsg(fd, vec, vlen, flags, timeout);
    for (int i = 0; i < r; ++i) {
      received_fds(&vec[i].msg_hdr);
    }
    return r;
  }
  if (has_pending(c)) {
    return fail(interrupted(c));
  }
  vlen = std::min(vlen, max_mmsg);
  const int saved = errno;
  unsigned got = 0;
  unsigned dl_got = UINT_MAX;  // got when dl was set: SO_RCVTIMEO restarts with each message
  clock::time_point dl{};
  held_fd file(fd);
  for (;;) {
    int r = real.recvmmsg(file.at(), vec + got, vlen - got, flags | MSG_DONTWAIT, nullptr);
    if (r > 0) {
      for (int i = 0; i < r; ++i) {
        received_fds(&vec[got + static_cast<unsigned>(i)].msg_hdr);
      }
      got += static_cast<unsigned>(r);
      // Done; or the first was all MSG_WAITFORONE waits for; or out-of-band
      // data, after which the kernel returns at once.
      if (got >= vlen || (flags & MSG_WAITFORONE) != 0 || (vec[got - 1].msg_hdr.msg_flags & MSG_OOB) != 0) {
        return static_cast<int>(kept_errno(got, saved));
      }
    } else if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
      return got > 0 ? static_cast<int>(kept_errno(got, saved)) : r;
    }
    file.hold();
    if (dl_got != got) {
      dl = deadline_ns(file.sock_timeout(*e, true));
      dl_got = got;
    }
    int w = file.await_ready(c, POLLIN, dl);
    if (w < 0) {
      return got > 0 ? static_cast<int>(kept_errno(got, saved)) : static_cast<int>(finish_in(w));
    }
    if (got > 0 && (w & POLLIN) == 0) {
      // Only an error or a hang-up: the messages so far now; the error
      // stays on the socket for the next call (the kernel keeps it too).
      return static_cast<int>(kept_errno(got, saved));
    }
  }
}

// sendmmsg() sends each message as a blocking sendmsg() does (all of it,
// waiting for room): batches with MSG_DONTWAIT, a POLLOUT wait between them
// (out_blocked), and a message a stream took only in part (the kernel counts
// it) finished by sock_sendmsg(). MSG_FASTOPEN or MSG_DONTWAIT: libc.
static int sendmmsg_hooked(int fd, mmsghdr* vec, unsigned vlen, int flags) noexcept;

COGENT_HOOK int sendmmsg(int fd, mmsghdr* vec, unsigned vlen, int flags) {
  int r = sendmmsg_hooked(fd, vec, vlen, flags);
  for (int i = 0; i < r; ++i) {  // the messages sent: the kernel checked their headers
    sending_fds(&vec[i].msg_hdr);
  }
  return r;
}

static int sendmmsg_hooked(int fd, mmsghdr* vec, unsigned vlen, int flags) noexcept {
  call_ctx c;
  fd_entry* e;
  fd_kind k;
  if ((flags & (MSG_DONTWAIT | MSG_FASTOPEN)) != 0 || vec == nullptr || vlen == 0 || !enter_fd(c, fd, e, k) ||
      no_wait(fd, *e, k, false) || k != kind_socket) {
    return real.sendmmsg(fd, vec, vlen, flags);
  }
  if (has_pending(c)) {
    return fail(interrupted(c));
  }
  vlen = std::min(vlen, max_mmsg);
  const int saved = errno;
  unsigned got = 0;
  out_wait st(fd);
  for (;;) {
    int r = real.sendmmsg(st.file.at(), vec + got, vlen - got, flags | MSG_DONTWAIT);
    if (r > 0) {
      got += static_cast<unsigned>(r);
      st.dl_set = false;  // SO_SNDTIMEO bounds each message's wait (the kernel: one sendmsg each)
      mmsghdr& last = vec[got - 1];
      std::size_t total = iov_total(last.msg_hdr.msg_iov, static_cast<int>(last.msg_hdr.msg_iovlen));
      if (last.msg_len < total) {
        // The rest of it from a copy of its iovecs, without the ancillary
        // data (sent with the first bytes), as sock_sendmsg() goes on.
        iov_copy rest;
        iovec* v = rest.assign(last.msg_hdr.msg_iov, last.msg_hdr.msg_iovlen);
        if (v == nullptr) {
          return static_cast<int>(kept_errno(got, saved));
        }
        int cnt = static_cast<int>(last.msg_hdr.msg_iovlen);
        advance(v, cnt, last.msg_len);
        msghdr m{};
        m.msg_name = last.msg_hdr.msg_name;
        m.msg_namelen = last.msg_hdr.msg_namelen;
        m.msg_iov = v;
        m.msg_iovlen = static_cast<std::size_t>(cnt);
        ssize_t more = sock_sendmsg(c, st.file.at(), *e, &m, flags);
        if (more > 0) {
          last.msg_len += static_cast<unsigned>(more);
        }
        if (last.msg_len < total) {
          return static_cast<int>(kept_errno(got, saved));  // interrupted or failed midway: the count so far
        }
      }
      if (got >= vlen) {
        return static_cast<int>(kept_errno(got, saved));
      }
      continue;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      return got > 0 ? static_cast<int>(kept_errno(got, saved)) : -1;
    }
    ssize_t ret;
    if (out_blocked(c, fd, *e, st, got, &ret)) {
      return static_cast<int>(kept_errno(ret, saved));
    }
  }
}

// ---- poll / select ------------------------------------------------------------------

COGENT_HOOK int poll(pollfd* fds, nfds_t n, int timeout) {
  call_ctx c;
  if (timeout == 0 || !enter(c)) {
    return real.poll(fds, n, timeout);
  }
  // Fast path: whatever is ready now (and every error: EFAULT, EINVAL,
  // POLLNVAL) comes straight from the kernel.
  int r = real.poll(fds, n, 0);
  if (r != 0) {
    return r;
  }
  return poll_wait(c, fds, n, deadline_ms(timeout));
}

COGENT_HOOK int ppoll(pollfd* fds, nfds_t n, const timespec* ts, const sigset_t* mask) {
  call_ctx c;
  // A signal mask cannot be applied to one fiber: exactly libc (blocks the thread).
  if (mask != nullptr || (ts != nullptr && (!valid_timespec(ts) || (ts->tv_sec == 0 && ts->tv_nsec == 0))) ||
      !enter(c)) {
    return real.ppoll(fds, n, ts, mask);
  }
  int r = real.poll(fds, n, 0);
  if (r != 0) {
    return r;
  }
  return poll_wait(c, fds, n, ts == nullptr ? clock::time_point::max() : deadline_ts(*ts));
}

namespace {

// select_wait() is the cooperative wait of select() and pselect() until one
// of the caller's fds is ready or `dl` passes. done() runs just before it
// returns (select() writes the time left back there).
template <class Done>
int select_wait(call_ctx& c, int nfds, fd_set* rd, fd_set* wr, fd_set* ex, clock::time_point dl,
                Done done) noexcept {
  // probe() asks the kernel with a zero timeout on copies of the sets and
  // writes them back only when it reports something (or the wait is over).
  fd_set in_rd{}, in_wr{}, in_ex{};  // zeroed: probe() copies all three
  if (rd != nullptr) {
    in_rd = *rd;
  }
  if (wr != nullptr) {
    in_wr = *wr;
  }
  if (ex != nullptr) {
    in_ex = *ex;
  }
  auto probe = [&](bool last) {
    fd_set r2 = in_rd, w2 = in_wr, e2 = in_ex;
    timeval z{0, 0};
    int n = real.select(nfds, rd ? &r2 : nullptr, wr ? &w2 : nullptr, ex ? &e2 : nullptr, &z);
    if (n > 0 || (n == 0 && last)) {
      if (rd != nullptr) {
        *rd = r2;
      }
      if (wr != nullptr) {
        *wr = w2;
      }
      if (ex != nullptr) {
        *ex = e2;
      }
    }
    return n;
  };
  int n = probe(false);
  if (n != 0) {
    int saved = errno;
    done();
    errno = saved;
    return n;
  }
  // What select(2) reports from each poll bit (the kernel's POLLIN_SET,
  // POLLOUT_SET, POLLEX_SET).
  constexpr short in_set = POLLIN | POLLRDNORM | POLLRDBAND | POLLHUP | POLLERR;
  constexpr short out_set = POLLOUT | POLLWRNORM | POLLWRBAND | POLLERR;
  constexpr short ex_set = POLLPRI;
  // events_for() is what fd asks poll for (0: not in any set) and *vis
  // what the caller can see of it.
  auto events_for = [&](int fd, short* vis) {
    short ev = 0;
    *vis = 0;
    if (rd != nullptr && FD_ISSET(fd, &in_rd)) {
      ev |= POLLIN;
      *vis |= in_set;
    }
    if (wr != nullptr && FD_ISSET(fd, &in_wr)) {
      ev |= POLLOUT;
      *vis |= out_set;
    }
    if (ex != nullptr && FD_ISSET(fd, &in_ex)) {
      ev |= POLLPRI;
      *vis |= ex_set;
    }
    return ev;
  };
  std::size_t count = 0;
  for (int fd = 0; fd < nfds; ++fd) {
    short vis;
    count += events_for(fd, &vis) != 0 ? 1 : 0;
  }
  poll_scratch s(count);
  if (s.ok()) {
    std::size_t j = 0;
    for (int fd = 0; fd < nfds; ++fd) {
      short vis;
      short ev = events_for(fd, &vis);
      if (ev != 0) {
        s.watch[j] = pollfd{fd, ev, 0};
        s.visible[j] = vis;
        ++j;
      }
    }
    n = wait_ready(c, s, dl, probe);
  } else {
    n = -ENOMEM;
  }
  done();
  return n < 0 ? fail(n) : n;
}

}  // namespace

COGENT_HOOK int select(int nfds, fd_set* rd, fd_set* wr, fd_set* ex, timeval* tv) {
  call_ctx c;
  // glibc (2.36, sysdeps/unix/sysv/linux/select.c) reads tv_usec as an
  // int32_t before anything else: 2^31 is negative there (EINVAL), 2^32 +
  // 50000 is 50 ms. So do we (the conversion wraps modulo 2^32).
  const std::int32_t usec = tv != nullptr ? static_cast<std::int32_t>(tv->tv_usec) : 0;
  bool zero = tv != nullptr && tv->tv_sec == 0 && usec == 0;
  // Only a negative field is EINVAL: glibc normalizes tv_usec >= 1000000
  // into seconds (as the legacy select syscall did), and so does `asked`.
  bool bad_tv = tv != nullptr && (tv->tv_sec < 0 || usec < 0);
  if (zero || bad_tv || nfds < 0 || nfds > FD_SETSIZE || !enter(c)) {
    return real.select(nfds, rd, wr, ex, tv);
  }
  // Linux writes the time left back into *tv on every return: what was asked
  // (normalized, saturating as glibc's) minus what passed (not from dl,
  // which saturates for a huge timeout).
  timeval asked{};
  clock::time_point dl = clock::time_point::max();
  if (tv != nullptr) {
    time_t carry = static_cast<time_t>(usec / 1'000'000);
    if (carry > std::numeric_limits<time_t>::max() - tv->tv_sec) {
      asked = timeval{std::numeric_limits<time_t>::max(), 999'999};
    } else {
      asked = timeval{tv->tv_sec + carry, static_cast<suseconds_t>(usec % 1'000'000)};
    }
    dl = deadline_ts(timespec{asked.tv_sec, asked.tv_usec * 1000});
  }
  const clock::time_point start = clock::now();
  auto time_left = [&] {
    if (tv != nullptr) {
      // In ns, as the kernel: any time passed shows (5 s asked, 3 us passed: 4.999997 s).
      std::int64_t passed =
          std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - start).count();
      std::int64_t sec = static_cast<std::int64_t>(asked.tv_sec) - passed / 1'000'000'000;
      std::int64_t nsec = static_cast<std::int64_t>(asked.tv_usec) * 1000 - passed % 1'000'000'000;
      if (nsec < 0) {
        --sec;
        nsec += 1'000'000'000;
      }
      if (sec < 0) {
        sec = 0;
        nsec = 0;
      }
      tv->tv_sec = static_cast<time_t>(sec);
      tv->tv_usec = static_cast<suseconds_t>(nsec / 1000);
    }
  };
  return select_wait(c, nfds, rd, wr, ex, dl, time_left);
}

COGENT_HOOK int pselect(int nfds, fd_set* rd, fd_set* wr, fd_set* ex, const timespec* ts,
                        const sigset_t* mask) {
  call_ctx c;
  // A signal mask cannot be applied to one fiber: exactly libc (blocks the
  // thread), as ppoll. The timeout is const: no time left is written back.
  if (mask != nullptr || (ts != nullptr && (!valid_timespec(ts) || (ts->tv_sec == 0 && ts->tv_nsec == 0))) ||
      nfds < 0 || nfds > FD_SETSIZE || !enter(c)) {
    return real.pselect(nfds, rd, wr, ex, ts, mask);
  }
  return select_wait(c, nfds, rd, wr, ex, ts == nullptr ? clock::time_point::max() : deadline_ts(*ts), [] {});
}

// ---- epoll_wait ------------------------------------------------------------------

namespace {

// epoll_wait_for() waits for the epoll instance `epfd` to have events: an
// epoll fd is readable while its ready list is not empty, so the fiber parks
// on one io_uring poll of it, then takes the events with a zero-timeout
// epoll_wait (whose answer, and errno, are the kernel's).
int epoll_wait_for(call_ctx& c, int epfd, epoll_event* events, int maxevents, clock::time_point dl) noexcept {
  // Fast path: events already there, or an error (EBADF, EINVAL, EFAULT).
  int r = real.epoll_wait(epfd, events, maxevents, 0);
  if (r != 0) {
    return r;
  }
  // Wait on the instance the call was made on, as libc's wait does (it holds
  // the file): through a dup, so the number closed or reused meanwhile never
  // makes the wait take another instance's events.
  int held = real.fcntl(epfd, F_DUPFD_CLOEXEC, 0);
  int ep = held >= 0 ? held : epfd;  // (no fd left for the dup: the number itself)
  poll_scratch s(1);
  s.watch[0] = pollfd{ep, POLLIN, 0};
  s.visible[0] = POLLIN | POLLERR | POLLHUP | POLLNVAL;
  r = wait_ready(c, s, dl, [&](bool) { return real.epoll_wait(ep, events, maxevents, 0); });
  if (held >= 0) {
    errno_keeper keep;
    real.close(held);
  }
  return r < 0 ? fail(r) : r;
}

}  // namespace

COGENT_HOOK int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout) {
  call_ctx c;
  if (timeout == 0 || !enter(c)) {
    return real.epoll_wait(epfd, events, maxevents, timeout);
  }
  return epoll_wait_for(c, epfd, events, maxevents, deadline_ms(timeout));
}

COGENT_HOOK int epoll_pwait(int epfd, epoll_event* events, int maxevents, int timeout, const sigset_t* mask) {
  call_ctx c;
  // A signal mask cannot be applied to one fiber: exactly libc (blocks the thread), as ppoll.
  if (mask != nullptr || timeout == 0 || !enter(c)) {
    return real.epoll_pwait(epfd, events, maxevents, timeout, mask);
  }
  return epoll_wait_for(c, epfd, events, maxevents, deadline_ms(timeout));
}

COGENT_HOOK int epoll_pwait2(int epfd, epoll_event* events, int maxevents, const timespec* ts,
                             const sigset_t* mask) {
  call_ctx c;
  if (mask != nullptr || !enter(c) ||
      (ts != nullptr && (!readable(ts) || !valid_timespec(ts) || (ts->tv_sec == 0 && ts->tv_nsec == 0)))) {
    return real.epoll_pwait2(epfd, events, maxevents, ts, mask);
  }
  return epoll_wait_for(c, epfd, events, maxevents, ts == nullptr ? clock::time_point::max() : deadline_ts(*ts));
}

// ---- _FORTIFY_SOURCE entry points ----------------------------------------------------
//
// Code built with -D_FORTIFY_SOURCE (distribution packages, Ubuntu's default)
// calls these instead of the plain functions whenever the compiler knows the
// destination's size; glibc's versions check it and jump straight to glibc's
// internal function, past our hooks. Ours do glibc's check (an overflow is
// __chk_fail(): "buffer overflow detected", abort) and then call our hook.

extern "C" [[noreturn]] void __chk_fail(void);

namespace {
// check_fits() is glibc's check: the destination holds `len` bytes, asked for
// `n` units of `unit` bytes (dividing, so a huge n cannot wrap around).
inline void check_fits(std::size_t n, std::size_t len, std::size_t unit = 1) {
  if (len / unit < n) {
    __chk_fail();
  }
}
}  // namespace

COGENT_HOOK ssize_t __read_chk(int fd, void* buf, size_t n, size_t buflen) {
  check_fits(n, buflen);
  return read(fd, buf, n);
}

COGENT_HOOK ssize_t __pread_chk(int fd, void* buf, size_t n, off_t offset, size_t buflen) {
  check_fits(n, buflen);
  return pread_impl(fd, buf, n, offset);
}

// With _FILE_OFFSET_BITS=64 (meson's default, most C libraries) a fortified
// pread() calls this one.
COGENT_HOOK ssize_t __pread64_chk(int fd, void* buf, size_t n, off_t offset, size_t buflen) {
  check_fits(n, buflen);
  return pread_impl(fd, buf, n, offset);
}

COGENT_HOOK ssize_t __recv_chk(int fd, void* buf, size_t n, size_t buflen, int flags) {
  check_fits(n, buflen);
  return recv(fd, buf, n, flags);
}

COGENT_HOOK ssize_t __recvfrom_chk(int fd, void* buf, size_t n, size_t buflen, int flags, sockaddr* addr,
                                   socklen_t* addrlen) {
  check_fits(n, buflen);
  return recvfrom(fd, buf, n, flags, addr, addrlen);
}

// fdslen is in bytes.
COGENT_HOOK int __poll_chk(pollfd* fds, nfds_t n, int timeout, size_t fdslen) {
  check_fits(n, fdslen, sizeof *fds);
  return poll(fds, n, timeout);
}

COGENT_HOOK int __ppoll_chk(pollfd* fds, nfds_t n, const timespec* ts, const sigset_t* mask, size_t fdslen) {
  check_fits(n, fdslen, sizeof *fds);
  return ppoll(fds, n, ts, mask);
}

// ---- sleeping ------------------------------------------------------------------------

COGENT_HOOK unsigned sleep(unsigned seconds) {
  call_ctx c;
  if (!enter(c)) {
    return real.sleep(seconds);
  }
  timespec req{static_cast<time_t>(seconds), 0}, rem{};
  int r = sleep_for(c, req, &rem);
  if (r < 0) {
    errno = -r;
    return static_cast<unsigned>(rem.tv_sec);  // glibc: the whole seconds not slept
  }
  return 0;
}

COGENT_HOOK int usleep(useconds_t us) {
  call_ctx c;
  if (!enter(c)) {
    return real.usleep(us);
  }
  timespec req{static_cast<time_t>(us / 1'000'000), static_cast<long>(us % 1'000'000) * 1000};
  int r = sleep_for(c, req, nullptr);
  return r < 0 ? fail(r) : 0;
}

COGENT_HOOK int nanosleep(const timespec* req, timespec* rem) {
  call_ctx c;
  if (req == nullptr || !enter(c) || !readable(req) || !valid_timespec(req)) {
    return real.nanosleep(req, rem);
  }
  int r = sleep_for(c, *req, rem);
  return r < 0 ? fail(r) : 0;
}

COGENT_HOOK int clock_nanosleep(clockid_t clk, int flags, const timespec* req, timespec* rem) {
  call_ctx c;
  bool known_clock = clk == CLOCK_REALTIME || clk == CLOCK_MONOTONIC || clk == CLOCK_BOOTTIME;
  if (!known_clock || (flags & ~TIMER_ABSTIME) != 0 || req == nullptr || !enter(c) || !readable(req) ||
      !valid_timespec(req)) {
    return real.clock_nanosleep(clk, flags, req, rem);
  }
  timespec rel = *req;
  if (flags & TIMER_ABSTIME) {
    timespec now{};
    clock_gettime(clk, &now);
    // Field by field, not in ns: (tv_sec - now) * 1e9 overflows for a time
    // far ahead. Both are >= 0, so the difference cannot; deadline_ts()
    // saturates a huge one.
    rel = timespec{req->tv_sec - now.tv_sec, req->tv_nsec - now.tv_nsec};
    if (rel.tv_nsec < 0) {
      --rel.tv_sec;
      rel.tv_nsec += 1'000'000'000;
    }
    if (rel.tv_sec < 0 || (rel.tv_sec == 0 && rel.tv_nsec == 0)) {
      return 0;
    }
    rem = nullptr;  // not written for absolute sleeps
  }
  int r = sleep_for(c, rel, rem);
  return r < 0 ? -r : 0;  // clock_nanosleep returns the error number
}

// ---- name resolution ------------------------------------------------------------------

COGENT_HOOK int getaddrinfo(const char* node, const char* service, const addrinfo* hints, addrinfo** res) {
  call_ctx c;
  if (!enter(c)) {
    return real.getaddrinfo(node, service, hints, res);
  }
  return resolve_getaddrinfo(c, node, service, hints, res);
}

COGENT_HOOK int gethostbyname_r(const char* name, hostent* ret, char* buf, size_t len, hostent** result,
                                int* h_errnop) {
  call_ctx c;
  if (!enter(c)) {
    return real.gethostbyname_r(name, ret, buf, len, result, h_errnop);
  }
  return resolve_gethostbyname_r(c, name, ret, buf, len, result, h_errnop);
}

namespace {

// static_hostent() is gethostbyname()/gethostbyaddr() over their _r lookup
// (lookup(he, buf, len, &res, &herr) -> rc): growing the buffer on ERANGE,
// publishing the result in this thread's static storage.
template <class Lookup>
hostent* static_hostent(Lookup lookup) {
  hostent he{};
  std::vector<char> buf;
  std::size_t len = 1024;
  for (;;) {
    buf.resize(len);
    hostent* res = nullptr;
    int herr = 0;
    int rc = lookup(&he, buf.data(), len, &res, &herr);
    if (rc == ERANGE && len < (std::size_t{1} << 20)) {
      len *= 2;
      continue;
    }
    if (res == nullptr) {
      h_errno = herr;
      if (rc != 0) {
        errno = rc < 0 ? -rc : rc;
      }
      return nullptr;
    }
    return publish(*res, buf);
  }
}

}  // namespace

COGENT_HOOK hostent* gethostbyname(const char* name) {
  call_ctx c;
  if (!enter(c)) {
    return real.gethostbyname(name);
  }
  return static_hostent([&](hostent* he, char* buf, std::size_t len, hostent** res, int* herr) {
    return resolve_gethostbyname_r(c, name, he, buf, len, res, herr);
  });
}

COGENT_HOOK int gethostbyaddr_r(const void* addr, socklen_t alen, int type, hostent* ret, char* buf, size_t len,
                                hostent** result, int* h_errnop) {
  call_ctx c;
  if (!enter(c)) {
    return real.gethostbyaddr_r(addr, alen, type, ret, buf, len, result, h_errnop);
  }
  return resolve_gethostbyaddr_r(c, addr, alen, type, ret, buf, len, result, h_errnop);
}

COGENT_HOOK hostent* gethostbyaddr(const void* addr, socklen_t alen, int type) {
  call_ctx c;
  if (!enter(c)) {
    return real.gethostbyaddr(addr, alen, type);
  }
  return static_hostent([&](hostent* he, char* buf, std::size_t len, hostent** res, int* herr) {
    return resolve_gethostbyaddr_r(c, addr, alen, type, he, buf, len, res, herr);
  });
}

// getnameinfo() asks the resolver only for the names the caller wants that
// are not numeric (NI_NUMERICHOST/NI_NUMERICSERV): a numeric-only call never
// blocks, so it stays libc's on this thread.
COGENT_HOOK int getnameinfo(const sockaddr* addr, socklen_t alen, char* host, socklen_t hostlen, char* serv,
                            socklen_t servlen, int flags) {
  call_ctx c;
  const bool lookup = (host != nullptr && hostlen != 0 && (flags & NI_NUMERICHOST) == 0) ||
                      (serv != nullptr && servlen != 0 && (flags & NI_NUMERICSERV) == 0);
  if (!lookup || !enter(c)) {
    return real.getnameinfo(addr, alen, host, hostlen, serv, servlen, flags);
  }
  return resolve_getnameinfo(c, addr, alen, host, hostlen, serv, servlen, flags);
}

// ---- child processes ------------------------------------------------------------------

namespace {

// The pauses of a wait for a child that no pidfd can watch (pid <= 0,
// WUNTRACED/WCONTINUED, pidfd_open failed): 1 ms, doubling up to 16 ms, so
// such a wait sees the child's change of state up to 16 ms late.
constexpr auto child_pause_first = std::chrono::milliseconds(1);
constexpr auto child_pause_max = std::chrono::milliseconds(16);

// open_pidfd() is a close-on-exec pidfd for pid, -1 if pidfd_open fails
// (ESRCH: gone and reaped; ENOSYS...). It is moved up to half the soft
// RLIMIT_NOFILE (as held_fd's duplicates), if there is room, so an open()
// of another fiber meanwhile gets the number libc would give it.
int open_pidfd(pid_t pid) noexcept {
  errno_keeper keep;
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) {
    return -1;
  }
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    int base = static_cast<int>(std::min<rlim_t>(rl.rlim_cur / 2, INT_MAX));
    if (base > fd) {
      if (int high = real.fcntl(fd, F_DUPFD_CLOEXEC, base); high >= 0) {
        real.close(fd);
        fd = high;
      }
    }
  }
  return fd;
}

// child_wait() is the cooperative core of waitpid/wait/wait3/wait4 called
// without WNOHANG: now(opts) is the real call made with opts (always with
// WNOHANG here). Returns what libc's blocking call would: a child's pid
// (status written by the real call), or -1 with its errno (ECHILD, EINVAL,
// ...); -1/EINTR (ECANCELED on a retry) if an interrupt came first, with
// nothing reaped.
template <class Now>
pid_t child_wait(call_ctx& c, pid_t pid, int options, Now now) noexcept {
  const int nohang = options | WNOHANG;
  if (pid_t r = now(nohang); r != 0) {
    return r;  // a child was ready, or libc's error
  }
  if (pid > 0 && (options & (WUNTRACED | WCONTINUED)) == 0) {
    // A pidfd is readable once its process has exited: wait on it as the fd
    // waits do (an io_uring poll op, cancelled and reaped on an interrupt).
    if (int pfd = open_pidfd(pid); pfd >= 0) {
      // Again now that the pidfd exists: had the child been reaped by another
      // thread and its pid reused by a process that is not our child, this is
      // ECHILD at once instead of a wait for a stranger.
      pid_t r = now(nohang);
      int w = 0;
      if (r == 0) {
        w = await_ready(c, pfd, POLLIN, clock::time_point::max());
        if (w > 0) {
          r = now(nohang);
        }
      }
      {
        errno_keeper keep;
        real.close(pfd);
      }
      if (r != 0) {
        return r;
      }
      if (w == -EINTR || w == -ECANCELED) {
        return fail(w);
      }
      // Exited but not reapable by this call (or the poll failed): poll below.
    }
  }
  auto pause = std::chrono::duration_cast<clock::duration>(child_pause_first);
  for (;;) {
    if (int w = park_until(c, clock::now() + pause); w < 0) {
      return fail(w);
    }
    if (pid_t r = now(nohang); r != 0) {
      return r;
    }
    pause = std::min<clock::duration>(pause * 2, child_pause_max);
  }
}

}  // namespace

COGENT_HOOK pid_t waitpid(pid_t pid, int* status, int options) {
  call_ctx c;
  if ((options & WNOHANG) != 0 || !enter(c)) {
    return real.waitpid(pid, status, options);
  }
  return child_wait(c, pid, options, [&](int o) { return real.waitpid(pid, status, o); });
}

COGENT_HOOK pid_t wait(int* status) {
  call_ctx c;
  if (!enter(c)) {
    return real.wait(status);
  }
  return child_wait(c, -1, 0, [&](int o) { return real.waitpid(-1, status, o); });
}

COGENT_HOOK pid_t wait3(int* status, int options, rusage* ru) noexcept {
  call_ctx c;
  if ((options & WNOHANG) != 0 || !enter(c)) {
    return real.wait3(status, options, ru);
  }
  return child_wait(c, -1, options, [&](int o) { return real.wait4(-1, status, o, ru); });
}

COGENT_HOOK pid_t wait4(pid_t pid, int* status, int options, rusage* ru) noexcept {
  call_ctx c;
  if ((options & WNOHANG) != 0 || !enter(c)) {
    return real.wait4(pid, status, options, ru);
  }
  return child_wait(c, pid, options, [&](int o) { return real.wait4(pid, status, o, ru); });
}

// system(NULL) only asks whether a shell exists: libc's, here.
COGENT_HOOK int system(const char* cmd) {
  call_ctx c;
  if (cmd == nullptr || !enter(c)) {
    return real.system(cmd);
  }
  return run_system(c, cmd);
}

// pclose() closes the stream's fd inside libc, where the close hook does not
// see it: before_close() first, or a file later given that number by a call
// we do not hook (eventfd, another popen()) would be taken for the pipe.
COGENT_HOOK int pclose(FILE* fp) {
  if (fp != nullptr) {
    errno_keeper keep;
    if (int fd = fileno(fp); fd >= 0) {
      before_close(fd);
    }
  }
  call_ctx c;
  if (fp == nullptr || !enter(c)) {
    return real.pclose(fp);
  }
  return run_pclose(c, fp);
}

// ---- fd flags and options ----------------------------------------------------------------

namespace {
int fcntl_impl(int fd, int cmd, void* arg) {
  int r = real.fcntl(fd, cmd, arg);
  if (r < 0) {
    return r;
  }
  switch (cmd) {
    case F_SETFL:
      if (fd_entry* e = entry_for(fd)) {
        if (static_cast<int>(reinterpret_cast<std::intptr_t>(arg)) & O_NONBLOCK) {
          e->flags.fetch_or(flag_nonblock, std::memory_order_relaxed);
        } else {
          e->flags.fetch_and(static_cast<std::uint8_t>(~flag_nonblock), std::memory_order_relaxed);
        }
      }
      break;
    case F_DUPFD:
    case F_DUPFD_CLOEXEC:
      copy_fd(fd, r);
      break;
    default:
      break;
  }
  return r;
}
}  // namespace

COGENT_HOOK int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);  // as glibc does: every argument fits a pointer slot
  va_end(ap);
  return fcntl_impl(fd, cmd, arg);
}

COGENT_HOOK int fcntl64(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  return fcntl_impl(fd, cmd, arg);
}

COGENT_HOOK int ioctl(int fd, unsigned long request, ...) noexcept {
  va_list ap;
  va_start(ap, request);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  int r = real.ioctl(fd, request, arg);
  if (r == 0 && request == FIONBIO && arg != nullptr) {
    if (fd_entry* e = entry_for(fd)) {
      if (*static_cast<const int*>(arg) != 0) {
        e->flags.fetch_or(flag_nonblock, std::memory_order_relaxed);
      } else {
        e->flags.fetch_and(static_cast<std::uint8_t>(~flag_nonblock), std::memory_order_relaxed);
      }
    }
  }
  return r;
}

COGENT_HOOK int setsockopt(int fd, int level, int name, const void* value, socklen_t len) noexcept {
  int r = real.setsockopt(fd, level, name, value, len);
  if (r != 0 || level != SOL_SOCKET) {
    return r;
  }
  // The kernel keeps the timeouts too (for calls that go straight to libc);
  // we keep a copy so a cooperative call needs no getsockopt.
  timeval tv{};
  bool rcv;
  // The y2038-safe SO_RCVTIMEO_NEW/SO_SNDTIMEO_NEW (two 64-bit fields) set
  // the same kernel timeouts. Tested first: where time_t is 64-bit on a
  // 32-bit ABI, SO_RCVTIMEO is SO_RCVTIMEO_NEW.
  if ((name == SO_RCVTIMEO_NEW || name == SO_SNDTIMEO_NEW) && len >= sizeof(__kernel_sock_timeval)) {
    __kernel_sock_timeval ktv{};
    std::memcpy(&ktv, value, sizeof ktv);
    tv.tv_sec = static_cast<time_t>(std::min<std::int64_t>(ktv.tv_sec, std::numeric_limits<time_t>::max()));
    tv.tv_usec = static_cast<suseconds_t>(ktv.tv_usec);  // < 1000000: the kernel checked it
    rcv = name == SO_RCVTIMEO_NEW;
  } else if ((name == SO_RCVTIMEO || name == SO_SNDTIMEO) && len >= sizeof(timeval)) {
    std::memcpy(&tv, value, sizeof tv);
    rcv = name == SO_RCVTIMEO;
  } else {
    return r;
  }
  if (fd_entry* e = entry_for(fd)) {
    // A negative tv_sec makes the kernel's timeout 0 jiffies: calls fail at
    // once with EAGAIN. getsockopt() then reads back 0 ("none"), so only
    // this copy knows (a dup or an fd set up behind the hooks does not).
    std::int64_t ns = tv.tv_sec < 0 ? immediate_timeout : timeval_ns(tv);
    (rcv ? e->rcv_timeout_ns : e->snd_timeout_ns).store(ns, std::memory_order_relaxed);
  }
  return r;
}

COGENT_HOOK int getsockopt(int fd, int level, int name, void* value, socklen_t* len) noexcept {
  return real.getsockopt(fd, level, name, value, len);
}

// ---- fd creation: dup, pipe, open ---------------------------------------------------------

COGENT_HOOK int dup(int fd) noexcept {
  int r = real.dup(fd);
  if (r >= 0) {
    copy_fd(fd, r);
  }
  return r;
}

COGENT_HOOK int dup2(int from, int to) noexcept {
  flush_before_renumber();
  if (from != to && real.fcntl(from, F_GETFD) >= 0) {  // (a bad `from`: EBADF, `to` untouched)
    detach_holders(to);
  }
  int r = real.dup2(from, to);
  if (r >= 0 && from != to) {
    copy_fd(from, to);
  }
  return r;
}

COGENT_HOOK int dup3(int from, int to, int flags) noexcept {
  flush_before_renumber();
  if (from != to && (flags & ~O_CLOEXEC) == 0 && real.fcntl(from, F_GETFD) >= 0) {  // else EINVAL/EBADF
    detach_holders(to);
  }
  int r = real.dup3(from, to, flags);
  if (r >= 0) {
    copy_fd(from, to);
  }
  return r;
}

COGENT_HOOK int pipe(int fds[2]) noexcept {
  int r = real.pipe(fds);
  if (r == 0) {
    reset_fd(fds[0], kind_fifo, false);
    reset_fd(fds[1], kind_fifo, false);
  }
  return r;
}

COGENT_HOOK int pipe2(int fds[2], int flags) noexcept {
  int r = real.pipe2(fds, flags);
  if (r == 0) {
    reset_fd(fds[0], kind_fifo, (flags & O_NONBLOCK) != 0);
    reset_fd(fds[1], kind_fifo, (flags & O_NONBLOCK) != 0);
  }
  return r;
}

namespace {
mode_t open_mode(int flags, va_list ap) {
  if ((flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE) {
    return va_arg(ap, mode_t);
  }
  return 0;
}
int opened(int fd) {
  if (fd >= 0) {
    reset_fd(fd);  // classified (fstat) on first cooperative use
  }
  return fd;
}
}  // namespace

COGENT_HOOK int open(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = open_mode(flags, ap);
  va_end(ap);
  return opened(real.open(path, flags, mode));
}

COGENT_HOOK int open64(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = open_mode(flags, ap);
  va_end(ap);
  return opened(real.open(path, flags, mode));
}

COGENT_HOOK int openat(int dir, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = open_mode(flags, ap);
  va_end(ap);
  return opened(real.openat(dir, path, flags, mode));
}

COGENT_HOOK int openat64(int dir, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = open_mode(flags, ap);
  va_end(ap);
  return opened(real.openat(dir, path, flags, mode));
}
