// monkey/detail/core.hpp — the machinery behind the libc hooks (private).
//
// Defines cogent::monkey::detail::real (the libc functions we interpose,
// resolved with dlsym(RTLD_NEXT)), the per-fd table (fd_entry, entry_for(),
// classify()), the cooperative-call context (call_ctx, enter()) and the
// non-throwing waits the hooks are built from (await_op(), await_poll(),
// park_until(), interrupted()). Nothing here throws: a kill or Timeout that
// hits a parked hook is left pending and reported as EINTR.
#pragma once

#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>

#include "fiber/detail/fiber_impl.hpp"
#include "hub/core.hpp"
#include "hub/detail/engine.hpp"

namespace cogent::monkey::detail {

using cogent::clock;
using cogent::detail::fiber_impl;
using cogent::detail::io_op;
using cogent::detail::op_code;

// real_fns holds the next definitions (libc's, or a sanitizer's interceptor)
// of every function we interpose. Before the load-time constructor resolves
// them they point at raw-syscall or lazy-dlsym fallbacks, so a hook called by
// another library's constructor never recurses and never crashes.
struct real_fns {
  int (*socket)(int, int, int);
  int (*socketpair)(int, int, int, int*);
  int (*accept)(int, sockaddr*, socklen_t*);
  int (*accept4)(int, sockaddr*, socklen_t*, int);
  int (*connect)(int, const sockaddr*, socklen_t);
  ssize_t (*read)(int, void*, size_t);
  ssize_t (*readv)(int, const iovec*, int);
  ssize_t (*write)(int, const void*, size_t);
  ssize_t (*writev)(int, const iovec*, int);
  ssize_t (*pread)(int, void*, size_t, off_t);
  ssize_t (*pwrite)(int, const void*, size_t, off_t);
  ssize_t (*recv)(int, void*, size_t, int);
  ssize_t (*recvfrom)(int, void*, size_t, int, sockaddr*, socklen_t*);
  ssize_t (*recvmsg)(int, msghdr*, int);
  ssize_t (*send)(int, const void*, size_t, int);
  ssize_t (*sendto)(int, const void*, size_t, int, const sockaddr*, socklen_t);
  ssize_t (*sendmsg)(int, const msghdr*, int);
  int (*close)(int);
  int (*shutdown)(int, int);
  int (*poll)(pollfd*, nfds_t, int);
  int (*ppoll)(pollfd*, nfds_t, const timespec*, const sigset_t*);
  int (*select)(int, fd_set*, fd_set*, fd_set*, timeval*);
  unsigned (*sleep)(unsigned);
  int (*usleep)(useconds_t);
  int (*nanosleep)(const timespec*, timespec*);
  int (*clock_nanosleep)(clockid_t, int, const timespec*, timespec*);
  int (*getaddrinfo)(const char*, const char*, const addrinfo*, addrinfo**);
  hostent* (*gethostbyname)(const char*);
  int (*gethostbyname_r)(const char*, hostent*, char*, size_t, hostent**, int*);
  int (*fcntl)(int, int, ...);
  int (*ioctl)(int, unsigned long, ...);
  int (*setsockopt)(int, int, int, const void*, socklen_t);
  int (*getsockopt)(int, int, int, void*, socklen_t*);
  int (*dup)(int);
  int (*dup2)(int, int);
  int (*dup3)(int, int, int);
  int (*pipe)(int*);
  int (*pipe2)(int*, int);
  int (*open)(const char*, int, ...);
  int (*openat)(int, const char*, int, ...);
  int (*epoll_wait)(int, epoll_event*, int, int);
  int (*epoll_pwait)(int, epoll_event*, int, int, const sigset_t*);
  int (*epoll_pwait2)(int, epoll_event*, int, const timespec*, const sigset_t*);
  ssize_t (*preadv)(int, const iovec*, int, off_t);
  ssize_t (*pwritev)(int, const iovec*, int, off_t);
  ssize_t (*preadv2)(int, const iovec*, int, off_t, int);
  ssize_t (*pwritev2)(int, const iovec*, int, off_t, int);
  ssize_t (*sendfile)(int, int, off_t*, size_t);
  int (*recvmmsg)(int, mmsghdr*, unsigned, int, timespec*);
  int (*sendmmsg)(int, mmsghdr*, unsigned, int);
  int (*pselect)(int, fd_set*, fd_set*, fd_set*, const timespec*, const sigset_t*);
  int (*getnameinfo)(const sockaddr*, socklen_t, char*, socklen_t, char*, socklen_t, int);
  hostent* (*gethostbyaddr)(const void*, socklen_t, int);
  int (*gethostbyaddr_r)(const void*, socklen_t, int, hostent*, char*, size_t, hostent**, int*);
  pid_t (*waitpid)(pid_t, int*, int);
  pid_t (*wait)(int*);
  pid_t (*wait3)(int*, int, rusage*);
  pid_t (*wait4)(pid_t, int*, int, rusage*);
  int (*system)(const char*);
  int (*pclose)(FILE*);
};
extern real_fns real;

// resolve_real() fills `real` with dlsym(RTLD_NEXT) results. Idempotent;
// runs from a load-time constructor and again from patch_all().
void resolve_real() noexcept;

// fd kinds. Only socket, regular and fifo fds are made cooperative; every
// other kind (ttys, eventfd, epoll, timerfd, ...) passes straight to libc,
// so cogent's own eventfd wake-up and signal-handler writes never park.
enum fd_kind : std::uint8_t { kind_unknown = 0, kind_socket, kind_regular, kind_fifo, kind_other };
// fd flags.
enum : std::uint8_t {
  flag_nonblock = 1,  // the user asked for O_NONBLOCK (fcntl, SOCK_NONBLOCK, FIONBIO, pipe2)
  flag_shared = 2,    // the description is shared with a dup: ask the kernel for O_NONBLOCK each time
};

// fd_entry is what we know about one fd. Fields are relaxed atomics: fds are
// process-wide and any thread may create, change or close them.
struct held_node;  // a blocking call's hold on the file behind the number (hooks.cpp, held_fd)
struct fd_entry {
  std::atomic<std::uint8_t> kind{kind_unknown};
  std::atomic<std::uint8_t> flags{0};
  std::atomic<std::uint8_t> holders_lock{0};  // guards `holders` (a spin lock: held for a few stores)
  // fork_gen is the number of fork()s this process had made when the entry
  // was last reset (the fd created or closed by a hooked call): an fd
  // classified in a later generation may have existed across a fork, so its
  // description may be shared with the child (classify() marks it so).
  std::atomic<std::uint32_t> fork_gen{0};
  std::atomic<std::int64_t> rcv_timeout_ns{0};  // SO_RCVTIMEO; 0 = none, < 0 = expire at once
  std::atomic<std::int64_t> snd_timeout_ns{0};  // SO_SNDTIMEO; 0 = none, < 0 = expire at once
  // The blocking calls now waiting with this number (held_fd::hold()): a
  // close/dup2/dup3 of it first gives each a duplicate of the file to go on
  // with, as the kernel's call holds its file. Empty almost always.
  std::atomic<held_node*> holders{nullptr};
};

// patched() is true once patch_all() ran.
extern std::atomic<bool> g_patched;

// entry_for() returns fd's table entry, or null if the table does not exist
// yet (before patch_all) or fd is out of range.
fd_entry* entry_for(int fd) noexcept;
// fork_child_generation() counts the fork()s this process came out of as
// the child: at each, the child's fd entries lose the parent's lists of
// waiting calls (fd_entry::holders).
std::uint32_t fork_child_generation() noexcept;
// reset_fd() forgets what we knew about fd (created or closed). kind may be
// given when known (socket(), pipe()).
void reset_fd(int fd, fd_kind kind = kind_unknown, bool nonblock = false) noexcept;
// copy_fd() makes `to` a dup of `from` (both marked shared).
void copy_fd(int from, int to) noexcept;
// timeval_ns() is a socket timeout in ns; one too long for 64-bit ns is 0,
// "none" (the kernel too takes it as waiting without limit).
inline std::int64_t timeval_ns(const timeval& tv) noexcept {
  constexpr std::int64_t max_sec = INT64_MAX / 1'000'000'000 - 1;
  if (tv.tv_sec > max_sec) {
    return 0;
  }
  if (tv.tv_sec < -max_sec) {
    return -1;  // negative: expire at once, as the kernel does
  }
  return static_cast<std::int64_t>(tv.tv_sec) * 1'000'000'000 + static_cast<std::int64_t>(tv.tv_usec) * 1000;
}
// kernel_sock_timeout() asks the kernel for fd's SO_RCVTIMEO (rcv) or
// SO_SNDTIMEO, in ns (0 = none, or not a socket).
std::int64_t kernel_sock_timeout(int fd, bool rcv) noexcept;
// load_sock_timeouts() copies fd's SO_RCVTIMEO/SO_SNDTIMEO from the kernel
// into its entry: for sockets the hooks did not see get their timeouts
// (created before patch_all, accepted: TCP copies the listener's, received
// through SCM_RIGHTS).
void load_sock_timeouts(int fd, fd_entry& e) noexcept;
// classify() returns fd's kind, asking the kernel (fstat, F_GETFL, and a
// socket's timeouts) the first time. kind_other for a bad fd (not cached), so the caller falls through to
// libc and gets libc's error.
fd_kind classify(int fd, fd_entry& e) noexcept;
// user_nonblock() is true if the user made fd's description non-blocking.
bool user_nonblock(int fd, fd_entry& e) noexcept;

// call_ctx is a hook call that may cooperate: this thread's hub and the
// calling fiber (never the hub fiber itself).
struct call_ctx {
  cogent::hub* h = nullptr;
  fiber_impl* self = nullptr;
};

// enter() is true if the calling code runs in a fiber (or the main fiber) of
// a thread with a hub and patch_all() ran. Otherwise the hook calls libc.
inline bool enter(call_ctx& c) noexcept {
  if (!g_patched.load(std::memory_order_relaxed)) [[unlikely]] {
    return false;
  }
  cogent::hub* h = cogent::hub::current_if_exists();
  if (h == nullptr || h->in_hub()) {
    return false;
  }
  c.h = h;
  c.self = cogent::detail::current_impl();
  return true;
}

// enter_fd() is enter() for an fd call: also false if the fd is not of a
// cooperative kind or the user made it non-blocking (libc then behaves
// exactly as usual, EAGAIN included). `e` and `kind` are filled in.
inline bool enter_fd(call_ctx& c, int fd, fd_entry*& e, fd_kind& kind) noexcept {
  if (!enter(c)) {
    return false;
  }
  e = entry_for(fd);
  if (e == nullptr) {
    return false;
  }
  kind = classify(fd, *e);
  if (kind == kind_other || kind == kind_unknown) {
    return false;
  }
  return !user_nonblock(fd, *e);
}

// interrupted() is the result of a hook whose fiber has a kill/Timeout
// pending: -EINTR the first time, so C code takes its EINTR path; -ECANCELED
// if the same fiber retries with that same interrupt still pending (C code
// that loops on EINTR, like hiredis's reader, would otherwise spin forever
// and never reach a cogent switch point where the interrupt is raised).
int interrupted(call_ctx& c) noexcept;

// has_pending() is true if the calling fiber has an interrupt pending.
inline bool has_pending(const call_ctx& c) noexcept {
  return static_cast<bool>(c.self->sched.pending);
}

// deadline_ns() turns a relative timeout in ns (0 = none, < 0 = expire at
// once) into a deadline.
inline clock::time_point deadline_ns(std::int64_t ns) noexcept {
  if (ns == 0) {
    return clock::time_point::max();
  }
  if (ns < 0) {
    return clock::now();
  }
  return cogent::deadline_after(std::chrono::nanoseconds(ns));  // saturates
}

// errno_keeper saves errno when made and puts it back when destroyed. The
// waits below hold one across their parks: a hooked call that parked and
// then succeeded must leave errno as its caller had it (libc's call does),
// although the other fibers that ran on this thread meanwhile set errno (one
// thread-local errno for them all). A hook that fails sets its own errno
// (fail()) after the wait returns.
struct errno_keeper {
  errno_keeper() noexcept = default;
  errno_keeper(const errno_keeper&) = delete;
  errno_keeper& operator=(const errno_keeper&) = delete;
  ~errno_keeper() { errno = saved; }
  int saved = errno;
};

// park() is c.h->park() keeping errno (errno_keeper): the hooks' own parks
// outside the waits below (a poll loop's pause) go through it.
cogent::detail::wake_reason park(call_ctx& c, clock::time_point deadline, bool interruptible) noexcept;

// yield() is c.h->yield_now() keeping errno.
void yield(call_ctx& c) noexcept;

// await_op() submits op and parks until it completes, `deadline` passes or an
// interrupt arrives; in the last two cases the op is cancelled and its
// completion reaped before returning (invariant 1). Returns the op's result
// if it completed (even after a cancel: a result it produced is honoured),
// else deadline_expired or -EINTR (interrupt, left pending). errno is left
// as it was on entry (errno_keeper), as by every wait below. Never throws.
int await_op(call_ctx& c, io_op& op, clock::time_point deadline) noexcept;

// deadline_expired is what await_op()/await_ready() return when their
// deadline passed: no errno (a kernel's own -ETIMEDOUT, a TCP connection
// that timed out, must reach the caller as ETIMEDOUT, not as SO_*TIMEO).
constexpr int deadline_expired = -(1 << 20);

// await_ready() waits (io_uring poll op) until fd reports one of `events`,
// `deadline` or an interrupt. Returns > 0 (revents), deadline_expired or -EINTR.
int await_ready(call_ctx& c, int fd, std::uint32_t events, clock::time_point deadline) noexcept;

// await_poll() waits until one of fds[0..n) is ready (one io_uring poll op
// per fd; the rest are cancelled and reaped when one fires), the deadline or
// an interrupt. Returns 1 (something fired), 0 (deadline) or -EINTR. If
// `results` is given, results[i] is fds[i]'s op result (revents, a negative
// errno, or 0 if it did not fire or fds[i].fd < 0).
int await_poll(call_ctx& c, const pollfd* fds, nfds_t n, clock::time_point deadline,
               int* results = nullptr) noexcept;

// park_until() sleeps the calling fiber until the deadline: 0, or -EINTR if
// an interrupt arrived first (left pending).
int park_until(call_ctx& c, clock::time_point deadline) noexcept;

// resolve_getaddrinfo()/resolve_getnameinfo()/resolve_gethostbyname_r()/
// resolve_gethostbyaddr_r() run the real resolver on the thread pool while
// the fiber parks. Return the function's own result; EAI_SYSTEM/EINTR (the
// _r ones: h_errno TRY_AGAIN, -EINTR) on an interrupt.
int resolve_getaddrinfo(call_ctx& c, const char* node, const char* service, const addrinfo* hints,
                        addrinfo** res) noexcept;
int resolve_getnameinfo(call_ctx& c, const sockaddr* addr, socklen_t alen, char* host, socklen_t hostlen,
                        char* serv, socklen_t servlen, int flags) noexcept;
int resolve_gethostbyname_r(call_ctx& c, const char* name, hostent* ret, char* buf, size_t len,
                            hostent** result, int* h_errnop) noexcept;
int resolve_gethostbyaddr_r(call_ctx& c, const void* addr, socklen_t alen, int type, hostent* ret, char* buf,
                            size_t len, hostent** result, int* h_errnop) noexcept;

// run_system()/run_pclose() run the real system()/pclose() on the thread
// pool while the fiber parks. An interrupt that arrives meanwhile waits for
// the job (the command runs to its end) and is left pending; the result is
// libc's; system()'s calling thread blocks SIGCHLD meanwhile, as glibc's
// does. system() with an interrupt pending at entry fails with -1/EINTR
// without running the command; pclose() then closes in place (libc's call on
// this thread), so the stream is never left open. If the pool cannot take
// the job, both run libc's call in place.
int run_system(call_ctx& c, const char* cmd) noexcept;
int run_pclose(call_ctx& c, FILE* fp) noexcept;

// set_errno() stores -r into errno and returns -1 (the libc convention).
inline int fail(int neg_errno) noexcept {
  errno = -neg_errno;
  return -1;
}

}  // namespace cogent::monkey::detail
