// hub/threadpool.hpp — run blocking code on worker threads while the fiber waits.
//
// Defines cogent::threadpool (a fixed set of plain std::thread workers),
// cogent::default_threadpool() (the process-wide pool) and
// cogent::run_in_thread() (gevent's threadpool.apply / hub.threadpool.spawn().get()).
//
// run(fn) hands fn to a worker thread and parks the calling fiber; other fibers
// keep running meanwhile. When fn returns (or throws) on the worker, the result
// (or exception) is passed back to the fiber through hub::post(), the one
// thread-safe path into a hub. While a job is outstanding the hub is held
// (hub::hold()), so a fiber waiting only on thread-pool work is never told it
// would block forever.
//
// Kill and Timeout: a job cannot be cancelled once handed to a worker. A kill or
// a timeout that hits a fiber waiting in run() is recorded; the fiber stays
// parked until the job finishes (its frame holds the job's state, which the
// worker writes) and then raises the interrupt — the result is discarded. This
// is the thread-pool form of invariant 1: nothing touches freed memory. A kill
// already pending when run() is called is raised at once and fn never runs.
//
// Workers are plain threads with no hub: code running on a worker that calls
// blocking libc (read, getaddrinfo, sleep...) blocks that worker, as plain
// libc would. The monkey layer checks threadpool::in_worker() (or the absence
// of a hub) to pass such calls straight through.
//
// Signals: workers never take asynchronous signals. They are created with
// every signal blocked but the synchronous ones (SIGSEGV, SIGBUS, SIGFPE,
// SIGILL, SIGTRAP, SIGSYS), whatever the creating thread's mask, so a
// process-directed SIGTERM/SIGINT/... goes to the application's threads (to
// net::wait_for_signal() or its handlers), never to a worker that would take
// the default action (killing the process) while a fiber waits for it. Code
// run on a worker that wants a signal must unblock it itself. A process a job
// fork()s gets the mask of the thread that started its worker back (a fork
// handler restores it: an exec'd program must not start with SIGTERM
// blocked); posix_spawn() runs no fork handlers, so a job that spawns passes
// posix_spawnattr_setsigmask() (and POSIX_SPAWN_SETSIGMASK) itself.
//
// fork(): a child process has only the thread that called fork(), so none of
// a pool's workers. Every pool (the default one too) forgets them there, and
// the jobs the parent had queued (they belong to the parent's fibers), and
// starts workers of its own at its first run() in the child; its destructor
// joins only those. The fork handlers take each pool's lock for the duration
// of the fork (a worker takes it only to dequeue a job).
//
// A job must not use cogent's hub (spawn, sleep, join, sockets...): a worker
// has none and makes none, hub::current() raises hub_error there. The fiber
// that called run() is the place for that, once the job is done.
//
// Example:
//   cogent::threadpool tp(4);
//   int n = tp.run([] { return expensive_blocking_call(); });   // this fiber parks; others run
//   auto ai = cogent::run_in_thread([&] { return ::getaddrinfo(host, port, &hints, &res); });
#pragma once
#pragma GCC visibility push(default)

#include <signal.h>

#include <atomic>
#include <cstddef>
#include <exception>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "hub/core.hpp"

namespace cogent {

namespace detail {

// async_signals_blocked blocks, for its lifetime, every asynchronous signal in
// the calling thread (a full set minus SIGSEGV, SIGBUS, SIGFPE, SIGILL,
// SIGTRAP, SIGSYS) and restores the previous mask when destroyed. A thread
// created meanwhile (std::thread inherits the mask) never takes a
// process-directed signal. Used for the threadpool's workers and the hub's
// monitor thread: library threads never take asynchronous signals. Never
// switches; does not throw.
//
// Example:
//   { cogent::detail::async_signals_blocked quiet; t = std::thread(work); }
class async_signals_blocked {
 public:
  async_signals_blocked() noexcept;
  ~async_signals_blocked();
  async_signals_blocked(const async_signals_blocked&) = delete;
  async_signals_blocked& operator=(const async_signals_blocked&) = delete;
  // before() is the mask the thread had (what a worker's fork() child gets back).
  const sigset_t& before() const noexcept { return _old; }

 private:
  sigset_t _old;
  bool _restore = false;
};

// thread_job is one unit of work handed to a worker. It lives in the waiting
// fiber's frame; the worker touches it only until it posts the completion.
struct thread_job {
  thread_job* next = nullptr;    // intrusive queue link (guarded by the pool's mutex)
  hub* owner = nullptr;          // the hub of the waiting fiber
  std::shared_ptr<mailbox> box;  // its post queue (outlives it); the worker takes it
  fiber_impl* waiter = nullptr;  // the waiting fiber
  bool done = false;             // set on the owner's thread, in the hub
  // phase decides, once, who owns the job after execute(): the worker flips
  // running -> finished and posts the completion to the owner's hub; a
  // detachable waiter that is interrupted flips running -> abandoned and
  // leaves, and the worker then disposes of the job without touching the hub
  // (which may be gone by then: its thread may have ended).
  enum : int { running, finished, abandoned };
  std::atomic<int> phase{running};
  void (*dispose)(thread_job*) noexcept = nullptr;
  std::exception_ptr error;  // what fn threw, written by the worker
  // execute() runs the job on the worker; it must not throw.
  virtual void execute() noexcept = 0;

 protected:
  ~thread_job() = default;
};

}  // namespace detail

// threadpool is a fixed set of worker threads that run blocking functions on
// behalf of fibers.
//
// Example:
//   cogent::threadpool tp(4);
//   std::string body = tp.run([&] { return read_whole_file_blocking(path); });
class threadpool {
 public:
  // threadpool() starts `threads` workers (at least 1), with asynchronous
  // signals blocked (see "Signals" above). Throws std::system_error if a
  // thread cannot be created. Never switches.
  explicit threadpool(std::size_t threads);
  // ~threadpool() lets queued jobs finish, then joins every worker. Must not be
  // destroyed while a fiber waits in run() (that fiber would wait forever). Blocks the thread.
  ~threadpool();
  threadpool(const threadpool&) = delete;
  threadpool& operator=(const threadpool&) = delete;

  // run() executes fn() on a worker thread while the calling fiber parks, and
  // returns its result or rethrows its exception. A kill/Timeout arriving
  // meanwhile is raised only after fn has finished (fn cannot be cancelled);
  // one pending at entry is raised at once without running fn. fn is used by
  // reference: it stays alive in the caller's frame until run() returns.
  // Called from a worker of any threadpool, fn runs inline on that thread.
  // Throws hub_error if called inside the hub itself. May switch.
  template <class Fn>
  auto run(Fn&& fn) -> std::invoke_result_t<Fn&>;

  // run_detachable() is run() for a callable that owns everything it uses (fn
  // is moved into a heap-allocated job; it must not refer to the caller's
  // frame). A kill/Timeout arriving meanwhile is raised at once: the fiber
  // leaves, the job finishes on its worker and its result is dropped. May
  // switch.
  template <class Fn>
  auto run_detachable(Fn fn) -> std::invoke_result_t<Fn&>;

  // size() is the number of worker threads (in a fork() child, the number it
  // starts at its first job there). Never switches.
  std::size_t size() const noexcept;
  // pending() is the number of jobs queued or running right now. Thread-safe.
  std::size_t pending() const noexcept;
  // in_worker() is true when called on a worker thread of any threadpool.
  static bool in_worker() noexcept;

 private:
  // submit_and_wait() queues j, parks until it is done and raises a pending
  // interrupt. With `abandoned` (a detachable job), an interrupt marks j
  // abandoned, sets *abandoned (from then on j is its worker's, to dispose
  // of, perhaps already freed) and is raised at once.
  void submit_and_wait(detail::thread_job& j, bool* abandoned = nullptr);
  struct impl;
  std::unique_ptr<impl> _impl;
};

// default_threadpool() returns the process-wide pool, created on first use
// with max(4, hardware_concurrency) workers. It is never destroyed: at exit
// its workers are left to the process's end, so a lookup that hangs cannot
// hold up exit. In a fork() child it starts workers anew, as any pool (see
// "fork()" above). Thread-safe. Never switches.
threadpool& default_threadpool();

// run_in_thread() is default_threadpool().run(fn). May switch.
template <class Fn>
auto run_in_thread(Fn&& fn) -> std::invoke_result_t<Fn&> {
  return default_threadpool().run(std::forward<Fn>(fn));
}

namespace detail {

// fn_job runs a callable F (a reference for run(), a value for
// run_detachable()) and keeps its result or exception.
template <class F>
struct fn_job final : thread_job {
  using result_type = std::invoke_result_t<std::remove_reference_t<F>&>;
  using stored = std::conditional_t<std::is_reference_v<result_type>, std::remove_reference_t<result_type>*,
                                    std::conditional_t<std::is_void_v<result_type>, char, result_type>>;
  template <class A>
  explicit fn_job(A&& f) : fn(std::forward<A>(f)) {}
  void execute() noexcept override {
    try {
      if constexpr (std::is_void_v<result_type>) {
        fn();
      } else if constexpr (std::is_reference_v<result_type>) {
        result.emplace(std::addressof(fn()));
      } else {
        result.emplace(fn());
      }
    } catch (...) {
      error = std::current_exception();
    }
  }
  result_type take() {
    if constexpr (std::is_void_v<result_type>) {
      return;
    } else if constexpr (std::is_reference_v<result_type>) {
      return static_cast<result_type>(**result);
    } else {
      return std::move(*result);
    }
  }
  F fn;
  std::optional<stored> result;
};

}  // namespace detail

template <class Fn>
auto threadpool::run(Fn&& fn) -> std::invoke_result_t<Fn&> {
  detail::fn_job<Fn&> j(fn);
  submit_and_wait(j);
  return j.take();
}

template <class Fn>
auto threadpool::run_detachable(Fn fn) -> std::invoke_result_t<Fn&> {
  static_assert(
      !std::is_reference_v<std::invoke_result_t<Fn&>>,
      "run_detachable: fn must return a value (a reference into the job would dangle once it is freed)");
  using job = detail::fn_job<Fn>;
  auto j = std::make_unique<job>(std::move(fn));
  j->dispose = [](detail::thread_job* p) noexcept { delete static_cast<job*>(p); };
  bool abandoned = false;
  try {
    submit_and_wait(*j, &abandoned);
  } catch (...) {
    if (abandoned) {
      (void)j.release();  // its worker deletes it when fn returns (it may have already: never read it)
    }
    throw;
  }
  return j->take();
}

}  // namespace cogent

#pragma GCC visibility pop
