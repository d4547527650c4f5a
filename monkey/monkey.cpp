// monkey/monkey.cpp — patch_all(), the real-libc table, the per-fd table and
// the non-throwing waits the hooks (monkey/hooks.cpp) are built from.
#include "monkey/monkey.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdarg>
#include <exception>
#include <memory>
#include <system_error>

#include "hub/threadpool.hpp"
#include "hub/timeout.hpp"
#include "monkey/detail/core.hpp"

namespace cogent::monkey::detail {

// ---- the real functions ---------------------------------------------------------
//
// Until resolve_real() runs (a constructor of this library), every entry is a
// raw-syscall fallback (or, for the resolver, a lazy dlsym), so a hook called
// from another library's constructor neither recurses nor crashes. They are
// captureless lambdas: constant-initialized, no constructor order to worry about.

namespace {

template <class Fn>
Fn lazy_symbol(const char* name) noexcept {
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
}

// The variadic fallbacks (a lambda cannot be variadic and convert to a pointer).
int raw_fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  return static_cast<int>(syscall(SYS_fcntl, fd, cmd, arg));
}

int raw_ioctl(int fd, unsigned long req, ...) {
  va_list ap;
  va_start(ap, req);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  return static_cast<int>(syscall(SYS_ioctl, fd, req, arg));
}

int raw_openat(int dir, const char* path, int flags, ...) {
  mode_t mode = 0;
  if ((flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE) {
    va_list ap;
    va_start(ap, flags);
    mode = va_arg(ap, mode_t);
    va_end(ap);
  }
  return static_cast<int>(syscall(SYS_openat, dir, path, flags, mode));
}

int raw_open(const char* path, int flags, ...) {
  mode_t mode = 0;
  if ((flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE) {
    va_list ap;
    va_start(ap, flags);
    mode = va_arg(ap, mode_t);
    va_end(ap);
  }
  return raw_openat(AT_FDCWD, path, flags, mode);
}

}  // namespace

real_fns real = {
    [](int d, int t, int p) { return static_cast<int>(syscall(SYS_socket, d, t, p)); },
    [](int d, int t, int p, int* sv) { return static_cast<int>(syscall(SYS_socketpair, d, t, p, sv)); },
    [](int fd, sockaddr* a, socklen_t* l) { return static_cast<int>(syscall(SYS_accept4, fd, a, l, 0)); },
    [](int fd, sockaddr* a, socklen_t* l, int f) {
      return static_cast<int>(syscall(SYS_accept4, fd, a, l, f));
    },
    [](int fd, const sockaddr* a, socklen_t l) { return static_cast<int>(syscall(SYS_connect, fd, a, l)); },
    [](int fd, void* b, size_t n) { return static_cast<ssize_t>(syscall(SYS_read, fd, b, n)); },
    [](int fd, const iovec* v, int c) { return static_cast<ssize_t>(syscall(SYS_readv, fd, v, c)); },
    [](int fd, const void* b, size_t n) { return static_cast<ssize_t>(syscall(SYS_write, fd, b, n)); },
    [](int fd, const iovec* v, int c) { return static_cast<ssize_t>(syscall(SYS_writev, fd, v, c)); },
    [](int fd, void* b, size_t n, off_t o) {
      return static_cast<ssize_t>(syscall(SYS_pread64, fd, b, n, o));
    },
    [](int fd, const void* b, size_t n, off_t o) {
      return static_cast<ssize_t>(syscall(SYS_pwrite64, fd, b, n, o));
    },
    [](int fd, void* b, size_t n, int f) {
      return static_cast<ssize_t>(syscall(SYS_recvfrom, fd, b, n, f, nullptr, nullptr));
    },
    [](int fd, void* b, size_t n, int f, sockaddr* a, socklen_t* l) {
      return static_cast<ssize_t>(syscall(SYS_recvfrom, fd, b, n, f, a, l));
    },
    [](int fd, msghdr* m, int f) { return static_cast<ssize_t>(syscall(SYS_recvmsg, fd, m, f)); },
    [](int fd, const void* b, size_t n, int f) {
      return static_cast<ssize_t>(syscall(SYS_sendto, fd, b, n, f, nullptr, 0));
    },
    [](int fd, const void* b, size_t n, int f, const sockaddr* a, socklen_t l) {
      return static_cast<ssize_t>(syscall(SYS_sendto, fd, b, n, f, a, l));
    },
    [](int fd, const msghdr* m, int f) { return static_cast<ssize_t>(syscall(SYS_sendmsg, fd, m, f)); },
    [](int fd) { return static_cast<int>(syscall(SYS_close, fd)); },
    [](int fd, int how) { return static_cast<int>(syscall(SYS_shutdown, fd, how)); },
    [](pollfd* p, nfds_t n, int ms) {
      timespec ts{ms / 1000, (ms % 1000) * 1000000L};
      return static_cast<int>(syscall(SYS_ppoll, p, n, ms < 0 ? nullptr : &ts, nullptr, 0));
    },
    [](pollfd* p, nfds_t n, const timespec* t, const sigset_t* m) {
      return static_cast<int>(syscall(SYS_ppoll, p, n, t, m, _NSIG / 8));
    },
    [](int n, fd_set* r, fd_set* w, fd_set* e, timeval* t) {
      return static_cast<int>(syscall(SYS_select, n, r, w, e, t));
    },
    [](unsigned s) -> unsigned {
      timespec ts{static_cast<time_t>(s), 0};
      if (syscall(SYS_nanosleep, &ts, &ts) < 0) {
        return static_cast<unsigned>(ts.tv_sec);
      }
      return 0;
    },
    [](useconds_t us) {
      timespec ts{static_cast<time_t>(us / 1000000), static_cast<long>(us % 1000000) * 1000};
      return static_cast<int>(syscall(SYS_nanosleep, &ts, nullptr));
    },
    [](const timespec* r, timespec* rem) { return static_cast<int>(syscall(SYS_nanosleep, r, rem)); },
    [](clockid_t c, int f, const timespec* r, timespec* rem) {
      return syscall(SYS_clock_nanosleep, c, f, r, rem) < 0 ? errno : 0;
    },
    [](const char* n, const char* s, const addrinfo* h, addrinfo** r) {
      auto fn = lazy_symbol<int (*)(const char*, const char*, const addrinfo*, addrinfo**)>("getaddrinfo");
      return fn != nullptr ? fn(n, s, h, r) : EAI_SYSTEM;
    },
    [](const char* n) -> hostent* {
      auto fn = lazy_symbol<hostent* (*)(const char*)>("gethostbyname");
      return fn != nullptr ? fn(n) : nullptr;
    },
    [](const char* n, hostent* ret, char* buf, size_t len, hostent** res, int* herr) {
      auto fn =
          lazy_symbol<int (*)(const char*, hostent*, char*, size_t, hostent**, int*)>("gethostbyname_r");
      return fn != nullptr ? fn(n, ret, buf, len, res, herr) : ENOSYS;
    },
    raw_fcntl,
    raw_ioctl,
    [](int fd, int l, int n, const void* v, socklen_t len) {
      return static_cast<int>(syscall(SYS_setsockopt, fd, l, n, v, len));
    },
    [](int fd, int l, int n, void* v, socklen_t* len) {
      return static_cast<int>(syscall(SYS_getsockopt, fd, l, n, v, len));
    },
    [](int fd) { return static_cast<int>(syscall(SYS_dup, fd)); },
    [](int a, int b) {
      if (a == b) {
        return static_cast<int>(syscall(SYS_fcntl, a, F_GETFD)) < 0 ? -1 : b;
      }
      return static_cast<int>(syscall(SYS_dup3, a, b, 0));
    },
    [](int a, int b, int f) { return static_cast<int>(syscall(SYS_dup3, a, b, f)); },
    [](int* p) { return static_cast<int>(syscall(SYS_pipe2, p, 0)); },
    [](int* p, int f) { return static_cast<int>(syscall(SYS_pipe2, p, f)); },
    raw_open,
    raw_openat,
    [](int fd, epoll_event* ev, int n, int ms) {
      return static_cast<int>(syscall(SYS_epoll_pwait, fd, ev, n, ms, nullptr, _NSIG / 8));
    },
    [](int fd, epoll_event* ev, int n, int ms, const sigset_t* m) {
      return static_cast<int>(syscall(SYS_epoll_pwait, fd, ev, n, ms, m, _NSIG / 8));
    },
    [](int fd, epoll_event* ev, int n, const timespec* t, const sigset_t* m) {
      return static_cast<int>(syscall(SYS_epoll_pwait2, fd, ev, n, t, m, _NSIG / 8));
    },
    [](int fd, const iovec* v, int n, off_t o) {
      return static_cast<ssize_t>(syscall(SYS_preadv, fd, v, n, o, 0));
    },
    [](int fd, const iovec* v, int n, off_t o) {
      return static_cast<ssize_t>(syscall(SYS_pwritev, fd, v, n, o, 0));
    },
    [](int fd, const iovec* v, int n, off_t o, int f) {
      return static_cast<ssize_t>(syscall(SYS_preadv2, fd, v, n, o, 0, f));
    },
    [](int fd, const iovec* v, int n, off_t o, int f) {
      return static_cast<ssize_t>(syscall(SYS_pwritev2, fd, v, n, o, 0, f));
    },
    [](int out, int in, off_t* o, size_t n) {
      return static_cast<ssize_t>(syscall(SYS_sendfile, out, in, o, n));
    },
    [](int fd, mmsghdr* v, unsigned n, int f, timespec* t) {
      return static_cast<int>(syscall(SYS_recvmmsg, fd, v, n, f, t));
    },
    [](int fd, mmsghdr* v, unsigned n, int f) {
      return static_cast<int>(syscall(SYS_sendmmsg, fd, v, n, f));
    },
    [](int n, fd_set* r, fd_set* w, fd_set* e, const timespec* t, const sigset_t* m) {
      timespec copy{};  // the syscall writes the time left back; pselect(3)'s timeout is const
      struct {
        const sigset_t* set;
        size_t len;
      } sig{m, _NSIG / 8};
      if (t != nullptr) {
        copy = *t;
      }
      return static_cast<int>(syscall(SYS_pselect6, n, r, w, e, t != nullptr ? &copy : nullptr, &sig));
    },
    [](const sockaddr* a, socklen_t al, char* h, socklen_t hl, char* sv, socklen_t sl, int f) {
      auto fn = lazy_symbol<int (*)(const sockaddr*, socklen_t, char*, socklen_t, char*, socklen_t, int)>(
          "getnameinfo");
      return fn != nullptr ? fn(a, al, h, hl, sv, sl, f) : EAI_SYSTEM;
    },
    [](const void* a, socklen_t l, int t) -> hostent* {
      auto fn = lazy_symbol<hostent* (*)(const void*, socklen_t, int)>("gethostbyaddr");
      return fn != nullptr ? fn(a, l, t) : nullptr;
    },
    [](const void* a, socklen_t l, int t, hostent* ret, char* buf, size_t len, hostent** res, int* herr) {
      auto fn = lazy_symbol<int (*)(const void*, socklen_t, int, hostent*, char*, size_t, hostent**, int*)>(
          "gethostbyaddr_r");
      return fn != nullptr ? fn(a, l, t, ret, buf, len, res, herr) : ENOSYS;
    },
    [](pid_t p, int* st, int o) { return static_cast<pid_t>(syscall(SYS_wait4, p, st, o, nullptr)); },
    [](int* st) { return static_cast<pid_t>(syscall(SYS_wait4, -1, st, 0, nullptr)); },
    [](int* st, int o, rusage* ru) { return static_cast<pid_t>(syscall(SYS_wait4, -1, st, o, ru)); },
    [](pid_t p, int* st, int o, rusage* ru) { return static_cast<pid_t>(syscall(SYS_wait4, p, st, o, ru)); },
    [](const char* cmd) {
      auto fn = lazy_symbol<int (*)(const char*)>("system");
      return fn != nullptr ? fn(cmd) : -1;
    },
    [](FILE* fp) {
      auto fn = lazy_symbol<int (*)(FILE*)>("pclose");
      return fn != nullptr ? fn(fp) : -1;
    },
};

void resolve_real() noexcept {
  // Only overwrite an entry when dlsym found a next definition: a fallback is
  // better than a null pointer.
  auto set = [](auto& slot, const char* name) {
    if (void* p = dlsym(RTLD_NEXT, name); p != nullptr) {
      slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(p);
    }
  };
  set(real.socket, "socket");
  set(real.socketpair, "socketpair");
  set(real.accept, "accept");
  set(real.accept4, "accept4");
  set(real.connect, "connect");
  set(real.read, "read");
  set(real.readv, "readv");
  set(real.write, "write");
  set(real.writev, "writev");
  set(real.pread, "pread64");
  set(real.pwrite, "pwrite64");
  set(real.recv, "recv");
  set(real.recvfrom, "recvfrom");
  set(real.recvmsg, "recvmsg");
  set(real.send, "send");
  set(real.sendto, "sendto");
  set(real.sendmsg, "sendmsg");
  set(real.close, "close");
  set(real.shutdown, "shutdown");
  set(real.poll, "poll");
  set(real.ppoll, "ppoll");
  set(real.select, "select");
  set(real.sleep, "sleep");
  set(real.usleep, "usleep");
  set(real.nanosleep, "nanosleep");
  set(real.clock_nanosleep, "clock_nanosleep");
  set(real.getaddrinfo, "getaddrinfo");
  set(real.gethostbyname, "gethostbyname");
  set(real.gethostbyname_r, "gethostbyname_r");
  set(real.fcntl, "fcntl64");
  set(real.ioctl, "ioctl");
  set(real.setsockopt, "setsockopt");
  set(real.getsockopt, "getsockopt");
  set(real.dup, "dup");
  set(real.dup2, "dup2");
  set(real.dup3, "dup3");
  set(real.pipe, "pipe");
  set(real.pipe2, "pipe2");
  set(real.open, "open64");
  set(real.openat, "openat64");
  set(real.epoll_wait, "epoll_wait");
  set(real.epoll_pwait, "epoll_pwait");
  set(real.epoll_pwait2, "epoll_pwait2");
  // The *64 names: with _FILE_OFFSET_BITS=64 they are what C code calls (the same code on LP64).
  set(real.preadv, "preadv64");
  set(real.pwritev, "pwritev64");
  set(real.preadv2, "preadv64v2");
  set(real.pwritev2, "pwritev64v2");
  set(real.sendfile, "sendfile64");
  set(real.recvmmsg, "recvmmsg");
  set(real.sendmmsg, "sendmmsg");
  set(real.pselect, "pselect");
  set(real.getnameinfo, "getnameinfo");
  set(real.gethostbyaddr, "gethostbyaddr");
  set(real.gethostbyaddr_r, "gethostbyaddr_r");
  set(real.waitpid, "waitpid");
  set(real.wait, "wait");
  set(real.wait3, "wait3");
  set(real.wait4, "wait4");
  set(real.system, "system");
  set(real.pclose, "pclose");
}

namespace {
// Resolve eagerly at load time, before main() and before other threads exist,
// so no hook ever resolves lazily (dlsym may allocate) in the middle of a call.
[[gnu::constructor(101)]] void resolve_at_load() {
  resolve_real();
}
}  // namespace

// ---- the fd table -------------------------------------------------------------

std::atomic<bool> g_patched{false};

namespace {
std::atomic<fd_entry*> g_table{nullptr};
std::size_t g_table_size = 0;
// The table is sized to the hard RLIMIT_NOFILE, capped: mmap'd with
// MAP_NORESERVE it costs only the pages of fds actually used.
constexpr std::size_t max_table_size = std::size_t{1} << 22;
}  // namespace

fd_entry* entry_for(int fd) noexcept {
  fd_entry* t = g_table.load(std::memory_order_acquire);
  if (t == nullptr || fd < 0 || static_cast<std::size_t>(fd) >= g_table_size) {
    return nullptr;
  }
  return &t[fd];
}

// g_high_fd is the highest fd whose entry was ever classified: what a fork
// must mark shared (mark_all_shared()).
static std::atomic<int> g_high_fd{-1};
static void note_classified(int fd) noexcept {
  int high = g_high_fd.load(std::memory_order_relaxed);
  while (fd > high && !g_high_fd.compare_exchange_weak(high, fd, std::memory_order_relaxed)) {
  }
}

// mark_all_shared() is the fork() handler (parent and child): every fd open
// at the fork now shares its open file description with the other process,
// which may change its O_NONBLOCK: ask the kernel from now on.
// It also starts a fork generation: an fd not yet classified at the fork
// (its entry reset in an earlier generation, or never) is marked shared when
// classify() first looks at it.
static std::atomic<std::uint32_t> g_fork_gen{0};
static void mark_all_shared() noexcept {
  g_fork_gen.fetch_add(1, std::memory_order_relaxed);
  const int high = g_high_fd.load(std::memory_order_relaxed);
  for (int fd = 0; fd <= high; ++fd) {
    if (fd_entry* e = entry_for(fd); e != nullptr && e->kind.load(std::memory_order_relaxed) != kind_unknown) {
      e->flags.fetch_or(flag_shared, std::memory_order_relaxed);
    }
  }
}

// in_fork_child() is the fork() handler of the child: mark_all_shared(),
// and no waiting calls listed (the parent's are not the child's; a lock one
// of its other threads held is not held here).
static std::atomic<std::uint32_t> g_child_gen{0};
std::uint32_t fork_child_generation() noexcept {
  return g_child_gen.load(std::memory_order_relaxed);
}
static void in_fork_child() noexcept {
  mark_all_shared();
  g_child_gen.fetch_add(1, std::memory_order_relaxed);
  const int high = g_high_fd.load(std::memory_order_relaxed);
  for (int fd = 0; fd <= high; ++fd) {
    if (fd_entry* e = entry_for(fd); e != nullptr && e->holders.load(std::memory_order_relaxed) != nullptr) {
      e->holders.store(nullptr, std::memory_order_relaxed);
      e->holders_lock.store(0, std::memory_order_relaxed);
    }
  }
}

void reset_fd(int fd, fd_kind kind, bool nonblock) noexcept {
  if (kind != kind_unknown) {
    note_classified(fd);
  }
  if (fd_entry* e = entry_for(fd)) {
    e->flags.store(nonblock ? flag_nonblock : 0, std::memory_order_relaxed);
    e->rcv_timeout_ns.store(0, std::memory_order_relaxed);
    e->snd_timeout_ns.store(0, std::memory_order_relaxed);
    e->fork_gen.store(g_fork_gen.load(std::memory_order_relaxed), std::memory_order_relaxed);
    e->kind.store(kind, std::memory_order_relaxed);
  }
}

void copy_fd(int from, int to) noexcept {
  fd_entry* a = entry_for(from);
  fd_entry* b = entry_for(to);
  if (b == nullptr) {
    return;
  }
  if (a == nullptr) {
    reset_fd(to);
    return;
  }
  // O_NONBLOCK and socket timeouts belong to the open file description, which
  // the two fds now share: both are marked so their flags are asked of the
  // kernel instead of our (now per-fd, possibly stale) copy.
  a->flags.fetch_or(flag_shared, std::memory_order_relaxed);
  b->flags.store(a->flags.load(std::memory_order_relaxed), std::memory_order_relaxed);
  b->rcv_timeout_ns.store(a->rcv_timeout_ns.load(std::memory_order_relaxed), std::memory_order_relaxed);
  b->snd_timeout_ns.store(a->snd_timeout_ns.load(std::memory_order_relaxed), std::memory_order_relaxed);
  b->fork_gen.store(a->fork_gen.load(std::memory_order_relaxed), std::memory_order_relaxed);
  b->kind.store(a->kind.load(std::memory_order_relaxed), std::memory_order_relaxed);
}

std::int64_t kernel_sock_timeout(int fd, bool rcv) noexcept {
  timeval tv{};
  socklen_t len = sizeof tv;
  if (real.getsockopt(fd, SOL_SOCKET, rcv ? SO_RCVTIMEO : SO_SNDTIMEO, &tv, &len) < 0) {
    return 0;
  }
  return timeval_ns(tv);
}

void load_sock_timeouts(int fd, fd_entry& e) noexcept {
  e.rcv_timeout_ns.store(kernel_sock_timeout(fd, true), std::memory_order_relaxed);
  e.snd_timeout_ns.store(kernel_sock_timeout(fd, false), std::memory_order_relaxed);
}

fd_kind classify(int fd, fd_entry& e) noexcept {
  if (fd == STDERR_FILENO) [[unlikely]] {
    // Checked before the cache, so a dup2() onto 2 cannot make it cooperative:
    // crash handlers write here from signal handlers (see monkey.hpp).
    return kind_other;
  }
  auto k = static_cast<fd_kind>(e.kind.load(std::memory_order_relaxed));
  if (k != kind_unknown) [[likely]] {
    return k;
  }
  struct stat st {};
  if (fstat(fd, &st) < 0) {
    return kind_other;  // bad fd: not cached; libc reports the error
  }
  int fl = real.fcntl(fd, F_GETFL);
  if (S_ISSOCK(st.st_mode)) {
    k = kind_socket;
  } else if (S_ISREG(st.st_mode)) {
    k = kind_regular;
  } else if (S_ISFIFO(st.st_mode)) {
    k = kind_fifo;
  } else {
    k = kind_other;
  }
  std::uint8_t keep = e.flags.load(std::memory_order_relaxed) & flag_shared;
  if (e.fork_gen.load(std::memory_order_relaxed) != g_fork_gen.load(std::memory_order_relaxed)) {
    keep = flag_shared;  // it may have been open at a fork since it was last reset
  }
  e.flags.store(static_cast<std::uint8_t>(keep | ((fl >= 0 && (fl & O_NONBLOCK)) ? flag_nonblock : 0)),
                std::memory_order_relaxed);
  if (k == kind_socket) {
    // Timeouts set before patch_all() (or behind the hooks) live only in the kernel.
    load_sock_timeouts(fd, e);
  }
  e.kind.store(k, std::memory_order_relaxed);
  note_classified(fd);
  return k;
}

bool user_nonblock(int fd, fd_entry& e) noexcept {
  std::uint8_t f = e.flags.load(std::memory_order_relaxed);
  if (f & flag_shared) [[unlikely]] {
    int fl = real.fcntl(fd, F_GETFL);
    return fl >= 0 && (fl & O_NONBLOCK) != 0;
  }
  return (f & flag_nonblock) != 0;
}

// ---- waits ----------------------------------------------------------------------

namespace {

// The fiber that last got EINTR for its pending interrupt, and that interrupt.
thread_local fiber_impl* t_eintr_fiber = nullptr;
thread_local std::exception_ptr t_eintr_exc;

void wake_waiter(io_op* o) {
  // Runs in the hub (on its thread) when the op's CQE is reaped.
  cogent::hub::current_if_exists()->schedule(static_cast<fiber_impl*>(o->user));
}

}  // namespace

int interrupted(call_ctx& c) noexcept {
  if (t_eintr_fiber == c.self && t_eintr_exc == c.self->sched.pending) {
    return -ECANCELED;
  }
  t_eintr_fiber = c.self;
  t_eintr_exc = c.self->sched.pending;
  return -EINTR;
}

cogent::detail::wake_reason park(call_ctx& c, clock::time_point deadline, bool interruptible) noexcept {
  errno_keeper keep;
  return c.h->park(deadline, interruptible);
}

void yield(call_ctx& c) noexcept {
  errno_keeper keep;
  c.h->yield_now();
}

// The waits keep errno (errno_keeper) from entry to return, over their
// parks and the ring's own calls: whatever another fiber (or io_uring_enter)
// left in it is gone when the hook goes on.

int await_op(call_ctx& c, io_op& op, clock::time_point deadline) noexcept {
  errno_keeper keep;
  if (has_pending(c)) {
    return interrupted(c);
  }
  op.user = c.self;
  op.on_complete = wake_waiter;
  c.h->io().submit(op);
  // The op reaches the kernel at the hub's next turn, after other ready
  // fibers ran; one that close()s or dup2()s this fd number first flushes it
  // in (the hooks call hub::flush_io()), so the op still gets the file libc's
  // call would have used.
  cogent::detail::wake_reason r;
  // An interrupt cancels the op at once, so one the kernel has not taken yet
  // never runs (hub::await_io does the same).
  c.self->sched.awaiting_io = &op;
  do {
    r = c.h->park(deadline, true);
    // Woken without the op and without an interrupt (not for us): the op goes on.
  } while (!op.done && r == cogent::detail::wake_reason::woken && c.self->sched.awaiting_io != nullptr);
  bool cancelled = c.self->sched.awaiting_io == nullptr;
  c.self->sched.awaiting_io = nullptr;
  if (op.done && !(cancelled && op.result < 0)) {
    return op.result;  // completed first: the real outcome, even if an interrupt is now pending
  }
  // Timed out or interrupted (the interrupt may have cancelled it already): cancel, and keep this frame (which owns `op`)
  // parked until the op's own completion is reaped (invariant 1).
  if (!cancelled) {
    c.h->io().cancel(op);
  }
  while (!op.done) {
    c.h->park(clock::time_point::max(), false);
  }
  if (op.result >= 0) {
    return op.result;  // it won the race with the cancel: honour what it did
  }
  if (has_pending(c)) {
    return interrupted(c);
  }
  if (r == cogent::detail::wake_reason::timed_out) {
    return deadline_expired;
  }
  return op.result;
}

int await_ready(call_ctx& c, int fd, std::uint32_t events, clock::time_point deadline) noexcept {
  io_op op;
  op.code = op_code::poll;
  op.fd = fd;
  op.flags = events;
  return await_op(c, op, deadline);
}

int await_poll(call_ctx& c, const pollfd* fds, nfds_t n, clock::time_point deadline, int* results) noexcept {
  errno_keeper keep;
  if (results != nullptr) {
    std::fill(results, results + n, 0);
  }
  if (has_pending(c)) {
    return interrupted(c);
  }
  // One poll op per fd. Small sets live on the stack; the ops must stay put
  // until every completion is reaped.
  constexpr nfds_t inline_ops = 16;
  io_op local[inline_ops];
  std::unique_ptr<io_op[]> heap;
  io_op* ops = local;
  if (n > inline_ops) {
    heap.reset(new (std::nothrow) io_op[n]);
    if (!heap) {
      return -ENOMEM;
    }
    ops = heap.get();
  }
  nfds_t live = 0;
  for (nfds_t i = 0; i < n; ++i) {
    if (fds[i].fd < 0) {
      continue;  // poll(2) ignores negative fds
    }
    io_op& op = ops[live++];
    op.code = op_code::poll;
    op.fd = fds[i].fd;
    // POLLERR/POLLHUP are always reported by the kernel, as with poll(2).
    op.flags = static_cast<unsigned short>(fds[i].events);
    if ((op.flags & POLLPRI) != 0) {
      // io_uring's poll wake-up leaves POLLPRI out of the op's mask when it
      // matches the wake-up's key (the kernel's IO_ASYNC_POLL_COMMON), so a
      // poll for POLLPRI alone never fires: TCP urgent data wakes with
      // IN|PRI|RDNORM|RDBAND. POLLRDBAND matches it (no socket reports it
      // when armed, so it never fires at once); every such wake-up is
      // checked by the caller's zero-timeout probe, which gives the real revents.
      op.flags |= POLLRDBAND;
    }
    op.user = c.self;
    op.on_complete = wake_waiter;
    c.h->io().submit(op);
  }
  if (live == 0) {
    int r = park_until(c, deadline);
    return r < 0 ? r : 0;
  }
  auto count_done = [&] {
    nfds_t d = 0;
    for (nfds_t i = 0; i < live; ++i) {
      d += ops[i].done ? 1 : 0;
    }
    return d;
  };
  cogent::detail::wake_reason r;
  do {
    r = c.h->park(deadline, true);
  } while (count_done() == 0 && r == cogent::detail::wake_reason::woken);
  bool fired = false;
  for (nfds_t i = 0; i < live; ++i) {
    if (ops[i].done) {
      fired = fired || ops[i].result != -ECANCELED;
    } else {
      c.h->io().cancel(ops[i]);
    }
  }
  while (count_done() < live) {
    c.h->park(clock::time_point::max(), false);
  }
  for (nfds_t i = 0; i < live; ++i) {
    fired = fired || ops[i].result > 0;
  }
  if (results != nullptr) {
    // ops[] holds the fds >= 0, in order.
    nfds_t j = 0;
    for (nfds_t i = 0; i < n; ++i) {
      if (fds[i].fd >= 0) {
        int res = ops[j++].result;
        results[i] = res == -ECANCELED ? 0 : res;
      }
    }
  }
  if (fired) {
    return 1;  // the caller asks the kernel for the exact revents
  }
  if (has_pending(c)) {
    return interrupted(c);
  }
  return r == cogent::detail::wake_reason::timed_out ? 0 : 1;
}

int park_until(call_ctx& c, clock::time_point deadline) noexcept {
  errno_keeper keep;
  for (;;) {
    if (has_pending(c)) {
      return interrupted(c);
    }
    if (clock::now() >= deadline) {
      return 0;
    }
    if (c.h->park(deadline, true) == cogent::detail::wake_reason::timed_out) {
      return 0;
    }
  }
}

// ---- the resolver on the thread pool ----------------------------------------------

namespace {

// run_blocking() runs fn() on cogent's thread pool. Returns true with fn's
// effects done (an interrupt that arrived meanwhile is left pending), or
// false if fn never ran (interrupt pending at entry, or the pool failed).
// errno is the caller's again on return (the fiber parked meanwhile; fn runs
// on another thread, with its own errno): the callers set it from fn's.
template <class Fn>
bool run_blocking(call_ctx& c, Fn&& fn) noexcept {
  errno_keeper keep;
  if (has_pending(c)) {
    return false;
  }
  bool ran = false;
  try {
    cogent::run_in_thread([&] {
      ran = true;
      fn();
    });
  } catch (...) {
    if (ran) {
      // Raised by the pool: C frames must not be unwound. Pending again, it
      // comes out of the fiber's next cogent switch point.
      cogent::defer_interrupt(std::current_exception());
    }
  }
  return ran;
}

}  // namespace

namespace {
// eai_call() runs one of the getaddrinfo-family lookups (returning an EAI_*
// code, errno with EAI_SYSTEM) on the pool.
template <class Lookup>
int eai_call(call_ctx& c, Lookup lookup) noexcept {
  int rc = EAI_SYSTEM;
  int err = 0;
  bool ran = run_blocking(c, [&] {
    rc = lookup();
    err = errno;
  });
  if (!ran) {
    errno = has_pending(c) ? -interrupted(c) : ENOMEM;
    return EAI_SYSTEM;
  }
  if (rc == EAI_SYSTEM) {
    errno = err;
  }
  return rc;
}
}  // namespace

int resolve_getaddrinfo(call_ctx& c, const char* node, const char* service, const addrinfo* hints,
                        addrinfo** res) noexcept {
  return eai_call(c, [&] { return real.getaddrinfo(node, service, hints, res); });
}

int resolve_getnameinfo(call_ctx& c, const sockaddr* addr, socklen_t alen, char* host, socklen_t hostlen,
                        char* serv, socklen_t servlen, int flags) noexcept {
  return eai_call(c, [&] { return real.getnameinfo(addr, alen, host, hostlen, serv, servlen, flags); });
}

namespace {
// hostent_r() runs one of the reentrant hostent lookups on the pool.
template <class Lookup>
int hostent_r(call_ctx& c, hostent** result, int* h_errnop, Lookup lookup) noexcept {
  int rc = ENOMEM;
  bool ran = run_blocking(c, [&] { rc = lookup(); });
  if (!ran) {
    *result = nullptr;
    *h_errnop = TRY_AGAIN;
    return has_pending(c) ? -interrupted(c) : ENOMEM;
  }
  return rc;
}
}  // namespace

int resolve_gethostbyname_r(call_ctx& c, const char* name, hostent* ret, char* buf, size_t len,
                            hostent** result, int* h_errnop) noexcept {
  return hostent_r(c, result, h_errnop,
                   [&] { return real.gethostbyname_r(name, ret, buf, len, result, h_errnop); });
}

int resolve_gethostbyaddr_r(call_ctx& c, const void* addr, socklen_t alen, int type, hostent* ret, char* buf,
                            size_t len, hostent** result, int* h_errnop) noexcept {
  return hostent_r(c, result, h_errnop,
                   [&] { return real.gethostbyaddr_r(addr, alen, type, ret, buf, len, result, h_errnop); });
}

// ---- system() and pclose() on the thread pool -------------------------------------

namespace {

// sigchld_blocked blocks SIGCHLD in the calling thread for its lifetime, as
// glibc's system() does in its caller: a SIGCHLD handler that reaps
// (waitpid(-1, WNOHANG) in a loop) runs on this thread only once the
// command has been waited for, so it cannot take the shell from system()'s
// own waitpid (which would then return -1/ECHILD). Nested (two fibers of
// the thread in system() at once): the last one out unblocks it, and only
// if it was not blocked before the first.
thread_local int t_sigchld_depth = 0;
thread_local bool t_sigchld_unblock = false;

struct sigchld_blocked {
  sigchld_blocked() noexcept {
    if (t_sigchld_depth++ == 0) {
      sigset_t chld;
      sigset_t old;
      sigemptyset(&chld);
      sigaddset(&chld, SIGCHLD);
      t_sigchld_unblock = pthread_sigmask(SIG_BLOCK, &chld, &old) == 0 && sigismember(&old, SIGCHLD) == 0;
    }
  }
  ~sigchld_blocked() {
    if (--t_sigchld_depth == 0 && t_sigchld_unblock) {
      sigset_t chld;
      sigemptyset(&chld);
      sigaddset(&chld, SIGCHLD);
      pthread_sigmask(SIG_UNBLOCK, &chld, nullptr);
    }
  }
  sigchld_blocked(const sigchld_blocked&) = delete;
  sigchld_blocked& operator=(const sigchld_blocked&) = delete;
};

}  // namespace

int run_system(call_ctx& c, const char* cmd) noexcept {
  // glibc's system() starts the shell with its calling thread's signal mask,
  // and a worker blocks every asynchronous signal: for the length of the
  // call the worker takes this thread's mask, so the command sees the signals
  // it would see from libc (a `kill $$` in it works). This thread meanwhile
  // blocks SIGCHLD, as glibc's caller does (sigchld_blocked).
  sigset_t mask;
  pthread_sigmask(SIG_SETMASK, nullptr, &mask);
  int rc = -1;
  int err = 0;
  bool ran = false;
  {
    sigchld_blocked chld;
    ran = run_blocking(c, [&] {
      sigset_t worker;
      pthread_sigmask(SIG_SETMASK, &mask, &worker);
      rc = real.system(cmd);
      err = errno;
      pthread_sigmask(SIG_SETMASK, &worker, nullptr);
    });
  }
  if (!ran) {
    if (has_pending(c)) {
      return fail(interrupted(c));
    }
    return real.system(cmd);  // the pool could not take it: libc's, here
  }
  if (rc == -1) {
    errno = err;
  }
  return rc;
}

int run_pclose(call_ctx& c, FILE* fp) noexcept {
  int rc = -1;
  int err = 0;
  bool ran = run_blocking(c, [&] {
    rc = real.pclose(fp);
    err = errno;
  });
  if (!ran) {
    // An interrupt pending at entry (or a pool that cannot take the job):
    // failing would leave the stream open and the child a zombie, and C code
    // does not retry pclose(). libc's, here.
    return real.pclose(fp);
  }
  if (rc == -1) {
    errno = err;
  }
  return rc;
}

}  // namespace cogent::monkey::detail

namespace cogent::monkey {

void patch_all() {
  using namespace detail;
  resolve_real();
  if (g_table.load(std::memory_order_acquire) == nullptr) {
    rlimit rl{};
    std::size_t n = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
      n = rl.rlim_max == RLIM_INFINITY ? max_table_size : static_cast<std::size_t>(rl.rlim_max);
      n = std::max<std::size_t>(n, rl.rlim_cur == RLIM_INFINITY ? 0 : static_cast<std::size_t>(rl.rlim_cur));
      n = std::min(n, max_table_size);
    }
    void* p = mmap(nullptr, n * sizeof(fd_entry), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      throw std::system_error(errno, std::generic_category(), "cogent::monkey::patch_all: fd table");
    }
    // Zero pages are a valid table (kind_unknown, no flags, no timeouts).
    fd_entry* expected = nullptr;
    g_table_size = n;
    if (!g_table.compare_exchange_strong(expected, static_cast<fd_entry*>(p), std::memory_order_acq_rel)) {
      munmap(p, n * sizeof(fd_entry));
    }
  }
  // fds the kernel creates or closes through io_uring (cogent::net's accept
  // and close) bypass the hooks: have the engines tell the table.
  cogent::detail::fd_event_hook.store([](int fd) noexcept { reset_fd(fd); }, std::memory_order_release);
  static const bool forks = (pthread_atfork(nullptr, &mark_all_shared, &in_fork_child), true);
  (void)forks;
  cogent::hub::current();
  g_patched.store(true, std::memory_order_release);
}

bool is_patched() noexcept {
  return detail::g_patched.load(std::memory_order_acquire);
}

}  // namespace cogent::monkey
