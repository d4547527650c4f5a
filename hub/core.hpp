// hub/core.hpp — the hub: one io_uring event loop per thread, itself a fiber.
//
// Defines cogent::hub (the per-thread scheduler), cogent::hub_config,
// cogent::sleep(), cogent::yield(), cogent::wait(), the timeout vocabulary
// (timeout_duration, deadline_after) and the errors the hub raises
// (would_block_forever, hub_error).
//
// How it works (gevent's hub, on io_uring): every blocking call made in a fiber
// (sleep, join, a lock, a queue, a socket op) parks the calling fiber and
// switches to the hub fiber. The hub runs ready fibers FIFO; when none is ready
// it submits every queued io_uring operation and waits for a completion or the
// nearest timer deadline in one io_uring_enter, then wakes the fibers whose
// operations or timers completed. The thread's main fiber is an ordinary fiber
// to the hub: calling join() from main() runs the hub until main can go on.
// When a thread ends, fibers still parked on its hub are not unwound (as
// gevent leaves greenlets at exit): their stacks and what their frames own
// stay allocated. Join or kill what you spawned before a thread returns.
//
// fork(): a hub belongs to one process. A child forked from a thread that had
// a hub lets go of it at once (its copy of the io_uring rings is shared
// memory with the parent's instance: using it would corrupt the parent): in
// the child every call that needs that hub (hub::current(), spawn, sleep,
// join, socket IO, ...) raises hub_error saying so, and the parent's fibers
// never run there. Fork before the thread first uses cogent (the child makes
// its own hub, see examples/09_many_cores.cpp) or exec; a fork from inside a
// task should be followed by exec or _exit in the child. Monkey-patched calls
// in such a child are plain libc.
//
// Manual switches (fiber/fiber.hpp) in a thread with a hub: a fiber may
// switch_to()/throw_in() any fiber of its thread, but only the hub resumes
// the hub fiber and the fibers parked in it. A value switched into a parked
// fiber is dropped and control goes straight back to the switcher (the wait
// goes on); an exception thrown into one becomes its pending interrupt,
// raised at its wait (like kill(block=false)), and control goes back too. A
// switch_to()/throw_in() on the hub fiber itself raises fiber_error in the
// caller. Not covered: a fiber in a manual switch whose target then finishes
// with nowhere live to go but the hub or a parked fiber (a dead parent chain:
// its creating task ended) is never resumed — greenlet's rule, the value goes
// to the parent chain; keep manual switches among fibers whose parents live.
//
// Example:
//   auto g1 = cogent::spawn([] { cogent::sleep(10ms); return 1; });
//   auto g2 = cogent::spawn([] { cogent::sleep(10ms); return 2; });
//   cogent::joinall({g1, g2});   // ~10 ms in all: both sleep at once
#pragma once
// Everything declared in cogent headers is exported from the library (built with -fvisibility=hidden).
#pragma GCC visibility push(default)

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <ratio>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "fiber/fiber.hpp"
#include "hub/detail/engine.hpp"

namespace cogent {

using clock = std::chrono::steady_clock;

namespace detail {
// saturate_ns() converts any std::chrono duration to nanoseconds, clamping
// what nanoseconds cannot hold (seconds::max(), hours::max(): "forever") to
// nanoseconds::max(), and below to nanoseconds::min() + 1 ns (min() itself is
// left for sentinels: net::use_default). NaN counts as max(). The range test
// is done in long double (a 64-bit mantissa holds nanoseconds::max()), so no
// unit or representation wraps.
template <class Rep, class Period>
constexpr std::chrono::nanoseconds saturate_ns(std::chrono::duration<Rep, Period> d) noexcept {
  using ns = std::chrono::nanoseconds;
  constexpr ns lowest = ns::min() + ns(1);
  if constexpr (std::is_same_v<Period, std::nano> && std::is_integral_v<Rep> && std::is_signed_v<Rep> &&
                sizeof(Rep) <= sizeof(ns::rep)) {
    return d.count() < lowest.count() ? lowest : ns(d.count());
  } else {
    const long double v = static_cast<long double>(d.count()) * Period::num * 1e9L / Period::den;
    if (!(v < static_cast<long double>(ns::max().count()))) {
      return ns::max();
    }
    if (!(v > static_cast<long double>(lowest.count()))) {
      return lowest;
    }
    if constexpr (std::is_floating_point_v<Rep>) {
      return ns(static_cast<ns::rep>(v));
    } else {
      // In range, but duration_cast's count * num could still overflow (1/3 s
      // ticks: count * 1e9 before the / 3). Split at the divisor instead: the
      // quotient's product is within the result, the remainder's is < den * num.
      using cf = std::ratio_divide<Period, std::nano>;
      const auto c = static_cast<__int128>(d.count());
      const __int128 q = c / cf::den;
      const __int128 r = c % cf::den;
      return ns(static_cast<ns::rep>(q * cf::num + r * cf::num / cf::den));
    }
  }
}
}  // namespace detail

// timeout_duration is how long a blocking call may wait; std::nullopt (the
// default everywhere) waits without limit. Any std::chrono duration converts
// (integral or floating, a std::optional of one too), saturating: a duration
// beyond what nanoseconds hold (seconds::max()) is nanoseconds::max(), which
// every wait treats as "without limit"; a negative one counts as zero.
class timeout_duration : public std::optional<std::chrono::nanoseconds> {
  using base = std::optional<std::chrono::nanoseconds>;

 public:
  constexpr timeout_duration() noexcept = default;
  constexpr timeout_duration(std::nullopt_t) noexcept {}
  template <class Rep, class Period>
  constexpr timeout_duration(std::chrono::duration<Rep, Period> d) noexcept : base(detail::saturate_ns(d)) {}
  template <class Rep, class Period>
  constexpr timeout_duration(const std::optional<std::chrono::duration<Rep, Period>>& d) noexcept
      : base(d ? base(detail::saturate_ns(*d)) : base()) {}
  // exactly() holds `d` as given, unsaturated: for sentinels no conversion
  // can produce (net::use_default is exactly(nanoseconds::min())).
  static constexpr timeout_duration exactly(std::chrono::nanoseconds d) noexcept {
    return timeout_duration(exact_tag{}, d);
  }
  friend constexpr bool operator==(const timeout_duration& a, const timeout_duration& b) noexcept {
    return static_cast<const base&>(a) == static_cast<const base&>(b);
  }

 private:
  struct exact_tag {};
  constexpr timeout_duration(exact_tag, std::chrono::nanoseconds d) noexcept : base(d) {}
};

// deadline_after() turns a timeout into an absolute deadline (max() for none
// or one too far away to represent; negative timeouts count as zero).
inline clock::time_point deadline_after(timeout_duration t) {
  if (!t) {
    return clock::time_point::max();
  }
  if (*t <= std::chrono::nanoseconds::zero()) {
    return clock::now();
  }
  // Saturating: nanoseconds::max() (a natural "forever") must not wrap into the past.
  const clock::time_point now = clock::now();
  const auto d = std::chrono::duration_cast<clock::duration>(*t);
  return d >= clock::time_point::max() - now ? clock::time_point::max() : now + d;
}

// time_left() is deadline_after()'s inverse: the timeout that ends at
// `deadline` (std::nullopt for max(), zero once it has passed), for a call
// that spends one deadline over several timed waits.
inline timeout_duration time_left(clock::time_point deadline) {
  if (deadline == clock::time_point::max()) {
    return std::nullopt;
  }
  const clock::duration left = deadline - clock::now();
  return timeout_duration(left > clock::duration::zero() ? left : clock::duration::zero());
}

// hub_error is thrown for misuse of the hub: blocking inside the hub itself,
// using a hub from a thread that does not own it, waiting on a lock, event,
// queue, pool or group that is destroyed meanwhile (the wait raises it).
class hub_error : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

// would_block_forever is raised in the waiting fiber (main) when it waits on
// something nothing can ever complete: no ready fibers, no timers, no IO in
// flight, no thread-pool work (gevent's LoopExit).
class would_block_forever : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// hub_config configures a thread's hub; pass it to hub::configure() before
// the thread's first blocking call.
struct hub_config {
  // ring_entries is the io_uring submission queue size (rounded up to a power
  // of two; more than the kernel allows is its maximum). At least 1:
  // configure() raises hub_error otherwise.
  unsigned ring_entries = 4096;
  // ready_batch bounds how many ready fibers run before the ring is polled
  // again, so IO-ready fibers do not starve behind always-ready ones. Each
  // intermediate poll is an io_uring_enter: a batch smaller than the number of
  // busy connections splits one loop turn into several syscalls. (Single 4 s
  // echo runs at 1000 connections: 256 gave 157-166k round trips/s, 4096 gave
  // 186-187k; the 5-repetition medians in BENCHMARKS.md are noisier.) At
  // least 1: configure() raises hub_error otherwise.
  unsigned ready_batch = 4096;
  // max_blocking_time, when non-zero, starts a watchdog thread that reports on
  // stderr, by name, a fiber that ran that long without switching (gevent's
  // max_blocking_time); timer and post() callbacks are reported as 'hub', a
  // fiber reached by a manual switch (fiber::switch_to) by its own name. Zero
  // = off; a limit over a year counts as a year. The watchdog thread takes no
  // asynchronous signals.
  std::chrono::milliseconds max_blocking_time{0};
};

class hub;
namespace detail {

// timer_node (fiber/detail/fiber_impl.hpp) is an entry in the hub's timers.

// start_failed_hook is called (by the hub, in the hub) with a fiber that could
// not start because no stack could be mapped for it; hub/task.cpp installs it
// to fail that fiber's task with the error.
inline void (*start_failed_hook)(fiber_impl* f, std::exception_ptr error) noexcept = nullptr;

// hub_fiber_impl() is the hub's own fiber (tasks are re-parented to it).
fiber_impl* hub_fiber_impl(hub& h) noexcept;

// wake_reason says why a parked fiber was resumed.
enum class wake_reason : std::uint8_t { none, woken, timed_out, interrupted };

// mailbox is a hub's cross-thread post queue. It is shared (hub::mailbox())
// with posters that may outlive the hub — a thread-pool worker whose waiting
// fiber's thread ended — so that a late post finds `wake` null and is dropped
// instead of touching a destroyed hub.
struct mailbox {
  std::mutex mu;
  std::vector<std::function<void()>> posted;  // guarded by mu
  std::atomic<bool> has_posted{false};
  engine* wake = nullptr;  // guarded by mu; null once the hub is gone
};

// post_to() queues fn on the mailbox's hub and wakes it; false (fn dropped)
// if that hub is gone. Thread-safe; never switches.
bool post_to(mailbox& box, std::function<void()> fn);

}  // namespace detail

// hub is the per-thread scheduler. Users rarely touch it directly: blocking
// calls find it through hub::current(). The methods below are the toolkit the
// coordination primitives (and user-written ones) are built with.
class hub {
 public:
  // current() returns this thread's hub, creating it on first use. Throws
  // std::system_error (with errno and likely cause) if io_uring is unavailable,
  // and hub_error on a thread-pool worker (a job must not use the hub) or in
  // a fork() child whose thread had one (see above).
  static hub& current();
  // current_if_exists() returns this thread's hub or null. Never creates one.
  static hub* current_if_exists() noexcept;
  // configure() sets the config for this thread's hub. Throws hub_error if the
  // hub already exists.
  static void configure(const hub_config& cfg);

  hub(const hub&) = delete;
  hub& operator=(const hub&) = delete;
  ~hub();

  // park() suspends the calling fiber until schedule() wakes it, `deadline`
  // passes (returns timed_out) or, if `interruptible`, an interrupt arrives
  // (returns interrupted; the exception stays pending — see
  // throw_if_interrupted(); one that woke the fiber is never withdrawn behind
  // its back, see timeout::cancel()). Always switches. Throws hub_error if
  // called from the hub itself. Main parked with nothing left that could wake it returns
  // `interrupted` with would_block_forever pending, interruptible or not.
  detail::wake_reason park(clock::time_point deadline = clock::time_point::max(), bool interruptible = true);

  // wait_until() is park() that raises a pending interrupt (kill, Timeout)
  // after the fiber is resumed. Returns true if woken, false on deadline.
  bool wait_until(clock::time_point deadline);

  // schedule() makes a parked fiber ready to run (FIFO). No effect if the
  // fiber is not parked. Never switches.
  void schedule(detail::fiber_impl* f, detail::wake_reason why = detail::wake_reason::woken) noexcept;

  // interrupt() raises `e` in fiber f at its current (or next) blocking point:
  // a parked interruptible fiber is woken at once; an IO wait cancels its op
  // first and raises once the op's completion is reaped. `owner` identifies
  // the raiser (a Timeout scope) so it can withdraw it. A kill (no owner)
  // replaces a pending Timeout error, never the other way round. Never switches.
  //
  // fiber::throw_in() into a fiber parked on the hub goes the same way: the
  // exception becomes its pending interrupt (raised at its blocking point once
  // its wait is cleaned up) and the thrower's throw_in() returns at once.
  void interrupt(detail::fiber_impl* f, std::exception_ptr e, const void* owner = nullptr) noexcept;

  // throw_if_interrupted() raises the calling fiber's pending interrupt, if any.
  static void throw_if_interrupted();
  // throw_if_interrupted_in_wait() is the check at the end of a wait: it
  // raises the pending interrupt unless that is a Timeout error that came
  // after the wait had ended (the fiber woken by its event or deadline, then
  // the Timeout expired before it ran): the wait's outcome stands, as in
  // gevent, and the error is raised at the next blocking call (or withdrawn
  // as its scope ends). A kill is raised whenever it came.
  static void throw_if_interrupted_in_wait();

  // await_io() submits `op`, parks until it completes, and returns its result
  // (>= 0 or -errno). If `deadline` passes first the op is cancelled and
  // -ETIMEDOUT returned. On an interrupt the op is cancelled (by interrupt()
  // itself, so an op the kernel has not taken yet never runs), its completion
  // reaped (invariant 1), `release(result)` is called if it had succeeded
  // anyway (e.g. close an accepted fd), and the interrupt is raised. An op
  // that produced data or wrote bytes before the cancel took effect returns
  // its result instead, and the interrupt stays pending: the next await_io()
  // raises it before submitting anything (so does any other blocking call).
  // Called in the hub (a timer or post() callback) it raises hub_error, also
  // before submitting anything.
  int await_io(detail::io_op& op, clock::time_point deadline = clock::time_point::max(),
               void (*release)(int result) = nullptr);

  // yield_now() moves the calling fiber to the back of the ready queue and
  // runs every other ready fiber first (sleep(0)). May switch.
  void yield_now();

  // add_timer()/cancel_timer() arm and disarm an intrusive timer; fire(node)
  // runs in the hub when the deadline passes. add_timer() of a timer already
  // armed raises hub_error (cancel it first); it may raise std::bad_alloc,
  // before it changes anything, but every armed timer keeps a heap slot
  // reserved, so a fire callback re-arming its own timer (timeout's retry)
  // never fails. Never switch.
  void add_timer(detail::timer_node& t);
  void cancel_timer(detail::timer_node& t) noexcept;

  // post() runs fn on this hub's thread, in the hub, soon. Thread-safe; the
  // one way other threads talk to a hub (eventfd wake). The caller must know
  // the hub is alive; code that may outlive it posts through mailbox().
  void post(std::function<void()> fn);

  // mailbox() is a handle to this hub's post queue that stays valid after the
  // hub is gone: detail::post_to() on it returns false (and drops fn) once the
  // hub's thread has ended. Thread-safe.
  std::shared_ptr<detail::mailbox> mailbox() const noexcept { return _mailbox; }

  // hold()/release() count outside work (thread-pool jobs, cross-thread
  // producers) that will later post() to this hub, so a wait on it is not
  // mistaken for "would block forever". Thread-safe.
  void hold() noexcept { _held.fetch_add(1, std::memory_order_relaxed); }
  void release() noexcept { _held.fetch_sub(1, std::memory_order_relaxed); }

  // wait_idle() parks the calling fiber until the hub has nothing left to do:
  // no ready fibers, timers, IO or held work (gevent.wait()). May switch.
  void wait_idle();

  // engine() is the IO backend (for the net layer).
  detail::engine& io() noexcept { return *_engine; }
  // flush_io() hands queued io_uring submissions to the kernel now
  // (engine::flush()), unless the hub is being destroyed. monkey/ calls it
  // before a close()/dup2() changes what an fd number refers to, so an op
  // queued on that number by another fiber works on the file it was meant
  // for. Never switches.
  void flush_io() noexcept {
    if (!_tearing_down) {
      _engine->flush();
    }
  }
  // in_hub() is true when called from the hub fiber itself.
  bool in_hub() const noexcept;
  // stats for tests and tools.
  std::size_t parked_count() const noexcept { return _parked; }
  std::size_t timer_count() const noexcept { return _timers.size() + _run_count; }
  const char* engine_name() const noexcept { return _engine->name(); }

 private:
  friend detail::fiber_impl* detail::hub_fiber_impl(hub& h) noexcept;
  // forget_in_child() is the fork() child handler: this thread's hub (if any)
  // lets go of its io_uring instance and is never used or destroyed again.
  static void forget_in_child() noexcept;
  explicit hub(const hub_config& cfg);
  void loop();
  // The switch paths are inlined into their callers (always_inline): a
  // return executed right after a fiber switch is mispredicted, so each
  // frame between a blocking call and the jump costs ~5 ns per switch.
  detail::wake_reason park_here(clock::time_point deadline, bool interruptible);  // park() unchecked, inline
  void suspend(detail::fiber_impl* self);  // switch to the hub until it resumes `self`
  void run_one(detail::fiber_impl* f);     // resume a ready fiber until it gives control back
  void run_ready();
  void expire_timers(clock::time_point now);
  void expire_timers_after_posts();
  void drain_posted();
  void running_callbacks() noexcept;  // tell the monitor the hub runs callbacks now
  // mark_running() tells the monitor `f` runs from now (a switch): the monitor
  // reads f's name after loading it; only this thread writes _switches, so a
  // plain increment, no locked RMW per switch.
  void mark_running(detail::fiber_impl* f) noexcept {
    _running.store(f, std::memory_order_release);
    _switches.store(_switches.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  bool nothing_can_happen() const noexcept;
  void heap_up(std::size_t i) noexcept;
  void heap_down(std::size_t i) noexcept;
  void heap_remove(std::size_t i) noexcept;
  detail::timer_node* first_timer() const noexcept;  // the earliest armed timer, or null

  hub_config _cfg;
  std::unique_ptr<detail::engine> _engine;
  fiber _fiber;                               // the hub's own fiber
  detail::fiber_impl* _ready_head = nullptr;  // intrusive FIFO
  detail::fiber_impl* _ready_tail = nullptr;
  std::size_t _ready_count = 0;
  std::size_t _parked = 0;
  // Timers: a binary min-heap by (deadline, seq), plus a sorted run — a FIFO
  // of timers each no earlier than the one before. Most timers are "now + the
  // same duration" (a sleep, a socket timeout), so they append to the run in
  // O(1) and leave it in O(1) (libevent's common-timeout idea); the heap holds
  // the rest. The earliest timer is the earlier of the two fronts.
  std::vector<detail::timer_node*> _timers;
  detail::timer_node* _run_head = nullptr;
  detail::timer_node* _run_tail = nullptr;
  std::size_t _run_count = 0;
  std::uint64_t _timer_seq = 0;
  std::vector<detail::fiber_impl*> _idle_waiters;  // wait() callers, in arrival order
  std::atomic<std::size_t> _held{0};
  std::shared_ptr<detail::mailbox> _mailbox;  // shared with posters that may outlive the hub
  struct monitor;
  std::unique_ptr<monitor> _monitor;

 public:
  // Watchdog bookkeeping (read by the monitor thread).
  std::atomic<std::uint64_t> _switches{0};
  std::atomic<detail::fiber_impl*> _running{nullptr};
  std::atomic<bool> _inspecting{false};  // the monitor is reading *_running (see on_fiber_free)
  detail::fiber_impl* const* _current_slot = nullptr;  // the hub thread's t_current, for the monitor
  bool _tearing_down = false;  // ~hub has begun: flush_io() does nothing
};

// sleep() suspends the calling fiber for `d`; sleep(0) yields to every other
// ready fiber (and lets the loop poll IO). A `d` too long to represent as a
// deadline (nanoseconds::max()) sleeps until killed — from main with nothing
// else to happen, that is would_block_forever. Raises a pending kill or
// Timeout. May switch.
void sleep(std::chrono::nanoseconds d);
// (Any other duration saturates into nanoseconds first: sleep(hours::max()) sleeps forever.)
template <class Rep, class Period>
void sleep(std::chrono::duration<Rep, Period> d) {
  sleep(detail::saturate_ns(d));
}
// sleep_until() suspends the calling fiber until `deadline`. May switch.
void sleep_until(clock::time_point deadline);
// yield() is sleep(0).
inline void yield() {
  sleep(std::chrono::nanoseconds::zero());
}
// wait() runs the hub until it has nothing left to do (gevent.wait()): every
// spawned task finished, no timers, no IO. May switch.
void wait();

namespace detail {

// fifo_links is the intrusive FIFO of waiters under both wait_list and
// sync.hpp's handoff_list. Node needs `Node* prev, *next; bool linked`.
//
// Counted = false drops the size counter (size() then walks the list): a
// wait_list lives in every task's control block, where 8 bytes decide
// whether the block fits its 64-byte size class.
template <class Node, bool Counted = true>
class fifo_links {
 public:
  void push_back(Node& n) noexcept {
    n.prev = _tail;
    n.next = nullptr;
    (_tail != nullptr ? _tail->next : _head) = &n;
    _tail = &n;
    n.linked = true;
    if constexpr (Counted) {
      ++_count.n;
    }
  }
  // unlink() removes a linked node.
  void unlink(Node& n) noexcept {
    (n.prev != nullptr ? n.prev->next : _head) = n.next;
    (n.next != nullptr ? n.next->prev : _tail) = n.prev;
    n.prev = n.next = nullptr;
    n.linked = false;
    if constexpr (Counted) {
      --_count.n;
    }
  }
  Node* front() const noexcept { return _head; }
  bool empty() const noexcept { return _head == nullptr; }
  std::size_t size() const noexcept {
    if constexpr (Counted) {
      return _count.n;
    } else {
      std::size_t n = 0;
      for (const Node* p = _head; p != nullptr; p = p->next) {
        ++n;
      }
      return n;
    }
  }

  // scoped links a node for the length of a wait and unlinks it however the
  // wait ends (return, timeout, or an interrupt unwinding the fiber).
  class scoped {
   public:
    scoped(fifo_links& l, Node& n) noexcept : _l(l), _n(n) { l.push_back(n); }
    ~scoped() {
      if (_n.linked) {
        _l.unlink(_n);
      }
    }
    scoped(const scoped&) = delete;
    scoped& operator=(const scoped&) = delete;

   private:
    fifo_links& _l;
    Node& _n;
  };

 private:
  struct counter {
    std::size_t n = 0;
  };
  struct no_counter {};
  Node* _head = nullptr;
  Node* _tail = nullptr;
  [[no_unique_address]] std::conditional_t<Counted, counter, no_counter> _count;
};

// lifo_links is a doubly linked list with only a head (8 bytes): push_front,
// unlink, front. For sets whose order does not matter.
template <class Node>
class lifo_links {
 public:
  void push_front(Node& n) noexcept {
    n.prev = nullptr;
    n.next = _head;
    if (_head != nullptr) {
      _head->prev = &n;
    }
    _head = &n;
    n.linked = true;
  }
  void unlink(Node& n) noexcept {
    (n.prev != nullptr ? n.prev->next : _head) = n.next;
    if (n.next != nullptr) {
      n.next->prev = n.prev;
    }
    n.prev = n.next = nullptr;
    n.linked = false;
  }
  Node* front() const noexcept { return _head; }
  bool empty() const noexcept { return _head == nullptr; }

 private:
  Node* _head = nullptr;
};

// Orphaning, for wait_list and handoff_list destroyed with fibers in them:
// the destructor unlinks each waiter and wakes it (wake_waiter()); the
// waiter, back in its wait, finds itself dropped without a notice or grant
// and calls throw_orphaned() (a pending kill or Timeout goes first) without
// touching the list again. Never switch.
// wake_waiter() schedules a waiter on this thread's hub (notify, grant,
// orphaning all wake through it); in a fork() child, whose waiters are copies
// of the parent's fibers and never run, it does nothing.
void wake_waiter(fiber_impl* f) noexcept;
[[noreturn]] void throw_orphaned();
template <class Node>
void orphan_all(fifo_links<Node>& links) noexcept {
  while (Node* n = links.front()) {
    links.unlink(*n);
    wake_waiter(n->f);
  }
}

// wait_list is the building block of the coordination primitives: fibers park
// on it until notified, a deadline, or an interrupt. Not thread-safe (one hub).
class wait_list {
 public:
  enum class notice : std::uint8_t { none, one, all };
  wait_list() = default;
  wait_list(const wait_list&) = delete;
  wait_list& operator=(const wait_list&) = delete;
  // ~wait_list() with fibers still inside wait() (the object holding it
  // destroyed under them: waiting, or notified but not yet run) unlinks each
  // and marks it orphaned: its wait then raises hub_error without touching
  // the list again (see wait() for the one exception). Never switches.
  ~wait_list() {
    if (!_links.empty() || !_woken.empty()) [[unlikely]] {
      orphan_waiters();
    }
  }
  struct waiter {
    fiber_impl* f = nullptr;
    waiter* prev = nullptr;
    waiter* next = nullptr;
    notice notified = notice::none;
    bool linked = false;    // in _links (waiting) or, once notified, in _woken (not yet run)
    bool orphaned = false;  // the list was destroyed while it was in it
  };

  // wait() parks the calling fiber until notify_one()/notify_all() picks it
  // (returns true) or `deadline` passes (false). Raises a pending interrupt;
  // a notify_one() it received but cannot use is passed on to the next
  // waiter (a notify_all() reached everyone it was meant for). If the list is
  // destroyed before the fiber is back, it raises hub_error — unless
  // `outlives_owner` (the caller reads nothing of the object after it: an
  // event set, then freed) and notify_all() had woken it: then it returns
  // true. May switch.
  bool wait(clock::time_point deadline = clock::time_point::max(), bool outlives_owner = false);

  // notify_one() wakes the longest-waiting fiber; false if none. Never switches.
  bool notify_one() noexcept;
  // notify_all() wakes every waiting fiber. Never switches.
  void notify_all() noexcept;
  bool empty() const noexcept { return _links.empty(); }
  std::size_t size() const noexcept { return _links.size(); }
  // woken_count() is 1 if a notified waiter has not run yet, else 0 (the
  // notified set is not counted). Never switches.
  std::size_t woken_count() const noexcept { return _woken.empty() ? 0 : 1; }

 private:
  void orphan_waiters() noexcept;
  fifo_links<waiter, false> _links;  // waiting (uncounted: see fifo_links)
  lifo_links<waiter> _woken;         // notified, not yet back in wait()
};
// Every task's control block holds one (its joiners): 320 bytes for a task
// of a captureless lambda, exactly five 64-byte blocks; a larger wait_list
// moves every task into the next size class (measured: spawn+join ~15 % slower).
static_assert(sizeof(wait_list) <= 3 * sizeof(void*), "wait_list must stay three pointers");

}  // namespace detail
}  // namespace cogent

#pragma GCC visibility pop
