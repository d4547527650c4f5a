// hub/threadpool.cpp — worker threads, the job queue, and the hand-back of
// finished jobs to the waiting fiber's hub through hub::post().
#include "hub/threadpool.hpp"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace cogent {
namespace {

thread_local bool t_in_worker = false;
// The mask of the thread that started this worker: what a process the worker
// forks gets back (threadpool::impl::in_child()).
thread_local sigset_t t_origin_mask;

// The default pool, made on first use and leaked on purpose (see the header):
// never joined at exit.
std::atomic<threadpool*> g_default_pool{nullptr};

}  // namespace

namespace detail {

async_signals_blocked::async_signals_blocked() noexcept {
  sigset_t all;
  sigfillset(&all);
  // Synchronous signals are the faulting thread's own: blocking them would
  // turn a crash into a hang (or an immediate kill without a handler's report).
  for (int s : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS}) {
    sigdelset(&all, s);
  }
  _restore = ::pthread_sigmask(SIG_BLOCK, &all, &_old) == 0;
}

async_signals_blocked::~async_signals_blocked() {
  if (_restore) {
    (void)::pthread_sigmask(SIG_SETMASK, &_old, nullptr);
  }
}

}  // namespace detail

// fork(): a child process has only the thread that forked. Every live pool is
// kept in a registry so that the fork handlers can make the child's copies
// usable: before the fork they take every pool's lock (no worker is in the
// middle of an update in the child); in the child each pool forgets the
// parent's workers (gone) and the jobs it had queued (they belong to the
// parent's fibers), and starts workers of its own at its first job there, as
// gevent's threadpool does after a fork.
struct threadpool::impl {
  std::mutex mu;
  std::condition_variable cv;
  detail::thread_job* head = nullptr;
  detail::thread_job* tail = nullptr;
  bool stop = false;
  std::atomic<std::size_t> outstanding{0};
  std::size_t size = 1;               // the workers it runs (in a fork child: once started again)
  std::vector<std::thread> workers;   // guarded by mu (but in the constructor and destructor)

  struct registry {
    std::mutex mu;
    std::vector<impl*> pools;
  };
  static registry& pools() {
    static auto* r = new registry;  // leaked: the default pool outlives static destruction
    return *r;
  }

  // start_workers() starts workers up to `size`, with asynchronous signals
  // blocked (they inherit the mask). Throws std::system_error if a thread
  // cannot be created (the workers started so far stay).
  void start_workers() {
    detail::async_signals_blocked quiet;
    while (workers.size() < size) {
      workers.emplace_back([this, origin = quiet.before()] { worker_main(origin); });
    }
  }

  static void before_fork() noexcept {
    registry& r = pools();
    r.mu.lock();
    for (impl* p : r.pools) {
      p->mu.lock();
    }
  }
  static void in_parent() noexcept {
    registry& r = pools();
    for (impl* p : r.pools) {
      p->mu.unlock();
    }
    r.mu.unlock();
  }
  static void in_child() noexcept {
    if (t_in_worker) {
      // A job forked: the child gets back the mask of the thread that started its worker (an exec'd
      // program must not start with SIGTERM blocked).
      (void)::pthread_sigmask(SIG_SETMASK, &t_origin_mask, nullptr);
    }
    registry& r = pools();
    for (impl* p : r.pools) {
      p->forget_parent();
    }
    r.mu.unlock();
  }
  // forget_parent() runs in a fork child, with mu held by before_fork().
  void forget_parent() noexcept {
    for (std::thread& t : workers) {
      std::construct_at(&t);  // not joinable: that thread does not exist here
    }
    workers.clear();
    head = tail = nullptr;
    outstanding.store(0, std::memory_order_relaxed);
    // The parent's workers were waiting on cv: a fresh one has no phantom waiters.
    std::construct_at(&cv);
    mu.unlock();
  }

  void worker_main(const sigset_t& origin) {
    t_in_worker = true;
    t_origin_mask = origin;
    for (;;) {
      detail::thread_job* j = nullptr;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [this] { return stop || head != nullptr; });
        if (head == nullptr) {
          return;  // stopping and the queue is drained
        }
        j = head;
        head = j->next;
        if (head == nullptr) {
          tail = nullptr;
        }
      }
      j->execute();
      int expected = detail::thread_job::running;
      if (!j->phase.compare_exchange_strong(expected, detail::thread_job::finished,
                                            std::memory_order_acq_rel)) {
        // Abandoned by its (detachable) waiter, which already released the
        // hub's hold: nobody waits, the hub is not ours to touch.
        outstanding.fetch_sub(1, std::memory_order_relaxed);
        j->dispose(j);
        continue;
      }
      // Hand the job back. After post() the worker never touches *j again: the
      // callback runs on the owner's thread, marks it done and wakes the fiber,
      // which may then free it. The hold is released in the same callback, on
      // the hub's thread, so the hub never sees "not held" before the wake-up.
      // If the owner's thread has ended meanwhile (its fiber still parked
      // here, its stack kept), the post is dropped: the mailbox outlives the hub.
      hub* h = j->owner;
      std::shared_ptr<detail::mailbox> box = std::move(j->box);
      // Counted out before the waiter can resume: pending() is 0 once run() returned.
      outstanding.fetch_sub(1, std::memory_order_relaxed);
      detail::post_to(*box, [j, h] {
        j->done = true;
        h->release();
        h->schedule(j->waiter);
      });
    }
  }
};

threadpool::threadpool(std::size_t threads) : _impl(std::make_unique<impl>()) {
  _impl->size = std::max<std::size_t>(threads, 1);
  _impl->workers.reserve(_impl->size);
  static const bool watching = (::pthread_atfork(&impl::before_fork, &impl::in_parent, &impl::in_child), true);
  (void)watching;
  try {
    _impl->start_workers();
    impl::registry& r = impl::pools();
    std::lock_guard lock(r.mu);
    r.pools.push_back(_impl.get());
  } catch (...) {
    {
      std::lock_guard lock(_impl->mu);
      _impl->stop = true;
    }
    _impl->cv.notify_all();
    for (auto& t : _impl->workers) {
      t.join();
    }
    throw;
  }
}

threadpool::~threadpool() {
  {
    std::lock_guard lock(_impl->mu);
    _impl->stop = true;
  }
  _impl->cv.notify_all();
  for (auto& t : _impl->workers) {
    t.join();
  }
  // Left registered until here: a fork meanwhile finds the workers it must forget.
  impl::registry& r = impl::pools();
  std::lock_guard lock(r.mu);
  std::erase(r.pools, _impl.get());
}

std::size_t threadpool::size() const noexcept {
  return _impl->size;
}

std::size_t threadpool::pending() const noexcept {
  return _impl->outstanding.load(std::memory_order_relaxed);
}

bool threadpool::in_worker() noexcept {
  return t_in_worker;
}

void threadpool::submit_and_wait(detail::thread_job& j, bool* abandoned) {
  bool detachable = abandoned != nullptr;
  if (t_in_worker) {
    // A worker has no hub (and must not get one): run inline, as plain code would.
    j.execute();
    if (j.error) {
      std::rethrow_exception(j.error);
    }
    return;
  }
  hub& h = hub::current();
  if (h.in_hub()) {
    throw hub_error("cogent: threadpool::run() called inside the hub (timer or post() callback)");
  }
  hub::throw_if_interrupted();  // a kill already pending: fn never runs
  j.owner = &h;
  j.box = h.mailbox();
  j.waiter = detail::current_impl();
  {
    std::lock_guard lock(_impl->mu);
    if (_impl->workers.size() < _impl->size) [[unlikely]] {
      _impl->start_workers();  // the first job in a fork() child (may throw: nothing queued yet)
    }
    h.hold();
    _impl->outstanding.fetch_add(1, std::memory_order_relaxed);
    j.next = nullptr;
    (_impl->tail != nullptr ? _impl->tail->next : _impl->head) = &j;
    _impl->tail = &j;
  }
  _impl->cv.notify_one();
  // Not interruptible unless detachable: the worker owns a pointer into this
  // frame until the completion has been posted back and run. Interrupts wait for it.
  while (!j.done) {
    h.park(clock::time_point::max(), detachable);
    if (!j.done && detachable && j.waiter->sched.pending) {
      int expected = detail::thread_job::running;
      if (j.phase.compare_exchange_strong(expected, detail::thread_job::abandoned,
                                          std::memory_order_acq_rel)) {
        h.release();  // the job lives on in the heap; its worker frees it
        *abandoned = true;
        hub::throw_if_interrupted();
      }
      detachable = false;  // it finished meanwhile: its completion is on its way, wait for it
    }
  }
  hub::throw_if_interrupted_in_wait();  // one that came while the job ran; not one after its completion
  if (j.error) {
    std::rethrow_exception(j.error);
  }
}

threadpool& default_threadpool() {
  if (threadpool* p = g_default_pool.load(std::memory_order_acquire); p != nullptr) [[likely]] {
    return *p;
  }
  auto fresh = std::make_unique<threadpool>(std::max<std::size_t>(4, std::thread::hardware_concurrency()));
  threadpool* expected = nullptr;
  if (!g_default_pool.compare_exchange_strong(expected, fresh.get(), std::memory_order_acq_rel)) {
    return *expected;  // another thread made it first (ours is joined and freed)
  }
  return *fresh.release();
}

}  // namespace cogent
