// hub/detail/engine.hpp — the IO engine interface the hub drives.
//
// Defines cogent::detail::io_op (one asynchronous operation) and
// cogent::detail::engine (submit, cancel, wait-until-deadline, cross-thread wake).
// The only implementation today is the io_uring engine (uring_engine.cpp, the one
// file that includes <liburing.h>); an epoll engine can slot in behind the same
// interface later.
//
// Rules (invariant 1 in DESIGN.md):
//  - An io_op passed to submit() must stay alive and unmoved until its
//    on_complete callback has run. The engine never touches it afterwards.
//  - cancel() only requests cancellation: the op's own completion is still
//    delivered (typically with -ECANCELED, or with its real result if it won
//    the race). Callers wait for it before releasing the op.
//  - Results are raw kernel results: >= 0 on success, -errno on failure.
//    Nothing in here throws on IO errors or touches global errno.
#pragma once
// Everything declared in cogent headers is exported from the library (built with -fvisibility=hidden).
#pragma GCC visibility push(default)

#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>

namespace cogent::detail {

using clock = std::chrono::steady_clock;

// op_code names what an io_op asks the kernel to do.
enum class op_code : std::uint8_t {
  nop,       // completes with 0; used for benchmarks and wake tests
  read,      // fd, buf, len, offset (offset -1 = current position)
  write,     // fd, buf, len, offset (offset -1 = current position)
  readv,     // fd, iov, iovcnt, offset
  writev,    // fd, iov, iovcnt, offset
  recv,      // fd, buf, len, flags
  send,      // fd, buf, len, flags (the engine adds nothing; callers pass MSG_NOSIGNAL)
  recvmsg,   // fd, msg, flags
  sendmsg,   // fd, msg, flags
  accept,    // fd, addr, addrlen (in/out), flags (SOCK_CLOEXEC...)
  connect,   // fd, addr, addrlen
  close,     // fd
  shutdown,  // fd, how (in flags)
  poll,      // fd, poll events (in flags); completes with revents
  fsync,     // fd
};

// io_op is one operation in flight. The submitter fills the request fields,
// sets on_complete, then calls engine::submit(). When the kernel completes it,
// the engine stores the result in `result` and calls on_complete(this).
struct io_op {
  op_code code = op_code::nop;
  int fd = -1;
  // Request arguments (meaning per op_code above).
  void* buf = nullptr;           // read/write/recv/send buffer; readv/writev iovec*; recvmsg/sendmsg msghdr*;
                                 // accept/connect sockaddr*
  std::uint32_t len = 0;         // byte count; iovcnt; socklen_t for connect
  socklen_t* addrlen = nullptr;  // accept only (in/out)
  std::int64_t offset = -1;      // read/write/readv/writev file offset, -1 = current position
  std::uint32_t flags = 0;       // recv/send/recvmsg/sendmsg msg flags; accept flags; shutdown how; poll mask

  // Completion.
  int result = 0;     // kernel result: >= 0 success, -errno failure
  bool done = false;  // set by the engine just before on_complete
  void (*on_complete)(io_op*) = nullptr;
  void* user = nullptr;  // free for the submitter (e.g. the parked fiber)
};

// engine is the per-hub IO backend. Not thread-safe except wake().
class engine {
 public:
  virtual ~engine() = default;

  // submit() queues an op. It is handed to the kernel at the next wait() or
  // poll() (one io_uring_enter per loop turn), or earlier if the submission
  // queue is full. Never fails: if the kernel refuses the op, it completes
  // with the error.
  virtual void submit(io_op& op) = 0;

  // flush() hands the queued submissions to the kernel now (one
  // io_uring_enter if any are queued; completions are reaped by the next
  // wait()/poll() as usual). The kernel resolves each op's fd as it takes the
  // op: after flush() a close()/dup2() of that number no longer changes
  // which file the op works on (monkey's close/dup2 hooks rely on it). If the
  // kernel refuses (-EBUSY: no room for completions), the completions already
  // there are set aside for the next wait()/poll() and it asks again, up to 8
  // times; a kernel that refuses all of them leaves the rest queued.
  virtual void flush() = 0;

  // cancel() asks the kernel to cancel a submitted op that has not completed.
  // The op still completes through on_complete (result -ECANCELED, or its own
  // result if it won the race). No-op if the op is already done. An op the
  // kernel has not taken yet (still queued by submit()) never runs: it
  // completes with -ECANCELED without reaching the kernel — except a close,
  // which always runs.
  virtual void cancel(io_op& op) = 0;

  // wait() flushes queued submissions and blocks until at least one
  // completion arrives, wake() is called, or `deadline` passes (clock::time_point::max()
  // = no deadline) — all in one syscall — then runs on_complete for every
  // completion available. Returns the number of completions delivered.
  virtual int wait(clock::time_point deadline) = 0;

  // poll() flushes queued submissions and delivers available completions
  // without blocking. Returns the number delivered.
  virtual int poll() = 0;

  // in_flight() is the number of submitted ops whose completion has not yet
  // been delivered (internal housekeeping ops such as the wake reader excluded).
  virtual std::size_t in_flight() const = 0;

  // wake() makes a concurrent or future wait() return promptly. Thread-safe
  // and async-signal-safe; callable from any thread.
  virtual void wake() noexcept = 0;

  // abandon() lets go of the kernel instance without using it (unmaps this
  // process's view of the rings, closes its fds). For a fork() child, whose
  // rings are shared memory with the parent's instance: the child must never
  // submit or reap there. Afterwards only the destructor (then a no-op) may
  // be called. Never switches.
  virtual void abandon() noexcept = 0;

  // name() describes the backend and the setup flags that took ("io_uring (SINGLE_ISSUER|DEFER_TASKRUN)").
  virtual const char* name() const noexcept = 0;
};

// fd_event_hook, when set, is called by every engine for each descriptor an
// op created (accept: the new fd) or closed (close), before the op's
// on_complete. The kernel does these behind libc's back; cogent_monkey sets it
// (at patch_all) so its per-fd table forgets what it knew about a number the
// kernel handed out or took back. Called on the hub's thread.
using fd_event_fn = void (*)(int fd) noexcept;
extern std::atomic<fd_event_fn> fd_event_hook;

// make_uring_engine() creates the io_uring engine with `entries` SQ slots.
// Throws std::system_error naming the errno and the likely cause (seccomp,
// kernel.io_uring_disabled, RLIMIT_MEMLOCK) if io_uring is unavailable.
std::unique_ptr<engine> make_uring_engine(unsigned entries = 4096);

}  // namespace cogent::detail

#pragma GCC visibility pop
