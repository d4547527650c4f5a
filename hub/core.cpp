// hub/core.cpp — the hub loop: ready queue, timer heap, park/wake, interrupts,
// IO waits on the engine, cross-thread posts, the would-block-forever check and
// the blocked-hub watchdog.
#include "hub/core.hpp"
#include "hub/threadpool.hpp"  // detail::async_signals_blocked

#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <thread>

namespace cogent {
namespace {

enum : std::uint8_t { st_running = 0, st_parked = 1, st_ready = 2 };

// The hub pointer is read on every wake-up: a trivial initial-exec
// thread-local (no TLS wrapper, no __tls_get_addr); t_hub_owner destroys it
// at thread exit.
thread_local __attribute__((tls_model("initial-exec"))) hub* t_hub = nullptr;
struct hub_owner {
  std::unique_ptr<hub> h;
  ~hub_owner() {
    if (h != nullptr) {
      // main's fiber_local values go while the hub still exists: a value's
      // destructor may use it (spawn, post); after h.reset() that would build
      // a new hub into this destroyed thread-local, never freed. (Values made
      // by those destructors go in the next round; main_holder drops the rest.)
      detail::thread_main_impl()->sched.locals.release_at_exit();
    }
    h.reset();
    t_hub = nullptr;
  }
};
thread_local hub_owner t_hub_owner;
thread_local hub_config t_config;
// t_inherited is, in a fork() child, the hub the forking thread had: its
// io_uring instance and its fibers are the parent's, so it is never used (every
// call naming it raises forked_away) nor destroyed (its fibers' stacks are
// copies of the parent's; unwinding them would run the parent's cleanup twice).
thread_local hub* t_inherited = nullptr;
constexpr const char* forked_away =
    "cogent: a fork() child cannot use the hub its parent's thread had (the io_uring instance and the "
    "fibers on it are the parent's): fork before the thread first uses cogent, or exec";

using detail::fiber_impl;
using detail::wake_reason;

void report_hub_exception(const char* where) noexcept {
  try {
    throw;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cogent: exception escaped into the hub from %s: %s\n", where, e.what());
  } catch (...) {
    std::fprintf(stderr, "cogent: unknown exception escaped into the hub from %s\n", where);
  }
}

}  // namespace

// ---- the watchdog ------------------------------------------------------------

namespace {
// on_fiber_free() is detail::fiber_free_hook while any monitor exists. The
// monitor thread reads the name of the fiber on the hub's thread (the one in
// `_running`, or one it switched to by hand); a fiber that finishes is freed
// inside the hub's resume(), before the hub clears `_running`. A Dekker handshake (both sides seq_cst) keeps the read safe:
// the monitor raises `_inspecting` and then loads `_running`; we clear
// `_running` and then wait for `_inspecting` to drop. Either the monitor sees
// null, or we see it reading and wait. Costs nothing on a switch; once any
// hub of the process has a monitor, one fence per freed fiber in every hub.
void on_fiber_free(fiber_impl* f) noexcept {
  hub* h = t_hub;
  if (h == nullptr) {
    return;
  }
  if (h->_running.load(std::memory_order_relaxed) == f) {
    h->_running.store(nullptr, std::memory_order_seq_cst);
  } else {
    // The monitor may have loaded f from _running before the hub moved on to
    // another fiber, which then dropped f's last handle: wait all the same.
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
  while (h->_inspecting.load(std::memory_order_seq_cst)) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
  }
}
}  // namespace

struct hub::monitor {
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  std::thread thread;

  monitor(hub* h, std::chrono::milliseconds limit) {
    // Stays set: harmless for hubs without a monitor (a fence per freed fiber).
    detail::fiber_free_hook.store(&on_fiber_free, std::memory_order_relaxed);
    // A limit of years means "never" (and limit / 4 in nanoseconds must not overflow).
    limit = std::min(limit, std::chrono::milliseconds(std::chrono::hours(24 * 365)));
    detail::async_signals_blocked quiet;  // a library thread never takes asynchronous signals
    thread = std::thread([this, h, limit] {
      std::uint64_t last_switches = h->_switches.load();
      auto last_change = clock::now();
      std::uint64_t reported = ~std::uint64_t{0};
      std::unique_lock lock(mu);
      while (!cv.wait_for(lock, limit / 4 + std::chrono::milliseconds(1), [this] { return stop; })) {
        std::uint64_t s = h->_switches.load(std::memory_order_relaxed);
        auto now = clock::now();
        if (s != last_switches) {
          last_switches = s;
          last_change = now;
          continue;
        }
        if (now - last_change < limit || reported == s) {
          continue;
        }
        char name[128];
        h->_inspecting.store(true, std::memory_order_seq_cst);
        fiber_impl* running = h->_running.load(std::memory_order_seq_cst);
        if (running != nullptr) {
          // _running is the fiber the hub resumed; the one on the thread now
          // may be another it switched to by hand: name that one. (The hub
          // thread writes its t_current plainly; an aligned pointer load.)
          running = __atomic_load_n(h->_current_slot, __ATOMIC_SEQ_CST);
          running->write_name(name, sizeof name);  // safe: on_fiber_free() waits for us
        }
        h->_inspecting.store(false, std::memory_order_release);
        if (running != nullptr) {
          reported = s;
          auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - last_change).count();
          std::fprintf(stderr, "cogent: fiber '%s' has run %lld ms without switching (blocking the hub)\n",
                       name, static_cast<long long>(ms));
        }
      }
    });
  }
  ~monitor() {
    {
      std::lock_guard lock(mu);
      stop = true;
    }
    cv.notify_all();
    thread.join();
  }
};

// ---- creation --------------------------------------------------------------

void hub::forget_in_child() noexcept {
  if (t_hub != nullptr) {
    // Forgotten first: abandon() closes fds, and monkey's close() hook would
    // flush the hub it found into the parent's rings.
    hub* h = t_hub;
    t_inherited = t_hub_owner.h.release();
    t_hub = nullptr;
    h->_engine->abandon();
  }
}

hub& hub::current() {
  if (t_hub == nullptr) [[unlikely]] {
    if (t_inherited != nullptr) {
      throw hub_error(forked_away);
    }
    if (threadpool::in_worker()) {
      throw hub_error(
          "cogent: a thread-pool job used the hub (spawn, sleep, join, a socket...): workers have none; "
          "do that in the fiber that called run(), once the job returns");
    }
    // Once per process, before the first hub: a fork() child must let go of
    // the rings it shares with its parent before it runs anything.
    static const bool at_fork = (::pthread_atfork(nullptr, nullptr, &hub::forget_in_child), true);
    (void)at_fork;
    // The thread's main fiber (and its thread-exit holder) exist first:
    // thread-locals are destroyed in reverse order of construction, and
    // ~hub unwinds the hub fiber from the main fiber, so that must go last.
    detail::thread_main_impl();
    std::unique_ptr<hub> h(new hub(t_config));
    t_hub_owner.h = std::move(h);
    t_hub = t_hub_owner.h.get();
  }
  return *t_hub;
}

hub* hub::current_if_exists() noexcept {
  return t_hub;
}

void hub::configure(const hub_config& cfg) {
  if (t_hub != nullptr) {
    throw hub_error("cogent: hub::configure() called after this thread's hub was created");
  }
  if (cfg.ready_batch == 0) {
    throw hub_error("cogent: hub_config::ready_batch must be at least 1 (0 would never run a fiber)");
  }
  if (cfg.ring_entries == 0) {
    throw hub_error("cogent: hub_config::ring_entries must be at least 1");
  }
  t_config = cfg;
}

hub::hub(const hub_config& cfg)
    : _cfg(cfg),
      _engine(detail::make_uring_engine(cfg.ring_entries)),
      _mailbox(std::make_shared<detail::mailbox>()) {
  _mailbox->wake = _engine.get();
  fiber_impl* main = detail::thread_main_impl();
  _fiber = fiber([this] { loop(); }, fiber_options{0, "hub"});
  detail::ensure_stack(_fiber.impl());  // no memory for it: hub creation fails here, clearly
  // The hub's parent is the thread's main fiber whoever created it: if the
  // loop ever ended, control would go back to main.
  detail::ref(main);
  _fiber.set_parent(fiber::adopt(main));
  if (cfg.max_blocking_time.count() > 0) {
    // The fiber creating the hub runs on until it first blocks: the monitor
    // must see it (it may hog the thread before the hub ever runs).
    _running.store(detail::current_impl(), std::memory_order_release);
    _current_slot = &detail::t_current;
    _monitor = std::make_unique<monitor>(this, cfg.max_blocking_time);
  }
}

hub::~hub() {
  _tearing_down = true;
  _monitor.reset();
  // Late posts (a thread-pool job whose waiter's thread is ending) are
  // dropped from now on; the ones queued are never run.
  std::vector<std::function<void()>> unrun;
  {
    std::lock_guard lock(_mailbox->mu);
    _mailbox->wake = nullptr;
    unrun.swap(_mailbox->posted);
  }
  // Dropping our handle on the hub fiber unwinds its loop (fiber_exit at its
  // suspension point) once nothing else holds it; fibers still parked (whose
  // parent it is) keep it and their own stacks: the thread is ending.
  _fiber = fiber();
}

namespace detail {
fiber_impl* hub_fiber_impl(hub& h) noexcept {
  return h._fiber.impl();
}
}  // namespace detail

bool hub::in_hub() const noexcept {
  return detail::current_impl() == _fiber.impl();
}

// ---- parking and waking ------------------------------------------------------

namespace {
// refuse_blocking() is the cold half of the "may this fiber block on this
// hub?" check: not from the hub itself, not on another thread's hub (whose
// timers and ready queue this thread must not touch).
[[noreturn, gnu::cold, gnu::noinline]] void refuse_blocking(const hub* h, const char* inside_hub) {
  if (h != t_hub) {
    if (h == t_inherited) {
      throw hub_error(forked_away);
    }
    throw hub_error("cogent: a blocking call on another thread's hub (each thread has its own: hub::current())");
  }
  throw hub_error(inside_hub);
}
}  // namespace

wake_reason hub::park(clock::time_point deadline, bool interruptible) {
  if (detail::current_impl() == _fiber.impl() || this != t_hub) [[unlikely]] {
    refuse_blocking(this, "cogent: a blocking call was made inside the hub (timer or post() callback)");
  }
  return park_here(deadline, interruptible);
}

// park_here() is park() for callers that made park()'s checks themselves (await_io).
[[gnu::always_inline]] inline wake_reason hub::park_here(clock::time_point deadline, bool interruptible) {
  fiber_impl* self = detail::current_impl();
  if (interruptible && self->sched.pending) {
    self->sched.pending_late = false;  // raised at this wait, late or not
    return wake_reason::interrupted;
  }
  // The deadline's timer is the fiber's own (in its control block): a fiber
  // parks once at a time, and it is disarmed before this returns.
  auto& timer = self->sched.park_timer;
  if (deadline != clock::time_point::max()) {
    timer.deadline = deadline;
    timer.owner = self;
    timer.fire = [](detail::timer_node* n) {
      t_hub->schedule(static_cast<fiber_impl::sched_slot::park_timer_node*>(n)->owner,
                      wake_reason::timed_out);
    };
    add_timer(timer);
  }
  self->sched.state = st_parked;
  self->sched.reason = static_cast<std::uint8_t>(wake_reason::none);
  self->sched.interruptible = interruptible;
  suspend(self);
  if (timer.armed()) {
    cancel_timer(timer);
  }
  return static_cast<wake_reason>(self->sched.reason);
}

bool hub::wait_until(clock::time_point deadline) {
  wake_reason r = park(deadline, true);
  throw_if_interrupted_in_wait();
  return r != wake_reason::timed_out;
}

void hub::schedule(fiber_impl* f, wake_reason why) noexcept {
  if (f->sched.state != st_parked) {
    return;
  }
  f->sched.state = st_ready;
  f->sched.reason = static_cast<std::uint8_t>(why);
  f->sched.next_ready = nullptr;
  if (_ready_tail != nullptr) {
    _ready_tail->sched.next_ready = f;
  } else {
    _ready_head = f;
  }
  _ready_tail = f;
  ++_ready_count;
}

void hub::interrupt(fiber_impl* f, std::exception_ptr e, const void* owner) noexcept {
  if (f->dead) {
    return;
  }
  // A kill (no owner) takes the place of a pending Timeout error: the fiber
  // could catch the timeout and carry on, and the kill would be lost. The
  // Timeout error is kept aside and made pending again once the kill has
  // been raised (throw_if_interrupted()). A Timeout never replaces anything
  // (timeout.cpp re-arms itself instead).
  if (!f->sched.pending || (owner == nullptr && f->sched.pending_owner != nullptr)) {
    if (f->sched.pending && !f->sched.displaced) {
      f->sched.displaced = std::move(f->sched.pending);
      f->sched.displaced_owner = f->sched.pending_owner;
    }
    f->sched.pending = std::move(e);
    f->sched.pending_owner = owner;
    f->sched.pending_delivered = false;
    // A Timeout error is late if the fiber is no longer parked and nothing
    // interrupted it: its wait already ended (a fiber parked
    // non-interruptibly — a thread-pool job — is still in its wait, and
    // raises it at its end). A kill is never late: it is raised as the wait
    // returns, whatever woke it.
    f->sched.pending_late = owner != nullptr && f->sched.state != st_parked &&
                            f->sched.reason != static_cast<std::uint8_t>(wake_reason::interrupted);
  }
  if (f->sched.state == st_parked && f->sched.interruptible) {
    schedule(f, wake_reason::interrupted);
    f->sched.pending_delivered = true;  // from here on only the fiber itself may withdraw it
    if (void* io = f->sched.awaiting_io) {
      // Cancel its op now, in this turn (see await_io). If that cannot be
      // queued (no memory), await_io does it when the fiber runs.
      try {
        _engine->cancel(*static_cast<detail::io_op*>(io));
        f->sched.awaiting_io = nullptr;
      } catch (...) {
      }
    }
  }
}

void hub::throw_if_interrupted_in_wait() {
  if (!detail::current_impl()->sched.pending_late) {
    throw_if_interrupted();
  }
}

void hub::throw_if_interrupted() {
  fiber_impl* self = detail::current_impl();
  if (self->sched.pending) [[unlikely]] {
    std::exception_ptr e = std::exchange(self->sched.pending, nullptr);
    if (self->sched.pending_owner == nullptr) {
      self->kill_raised(e);
      // The Timeout error this kill displaced is due at the next wait.
      self->sched.pending = std::exchange(self->sched.displaced, nullptr);
      self->sched.pending_owner = std::exchange(self->sched.displaced_owner, nullptr);
      self->sched.pending_delivered = false;
    } else {
      self->sched.pending_owner = nullptr;
    }
    std::rethrow_exception(std::move(e));
  }
}

void hub::yield_now() {
  fiber_impl* self = detail::current_impl();
  if (self == _fiber.impl() || this != t_hub) [[unlikely]] {
    refuse_blocking(this, "cogent: sleep(0)/yield() called inside the hub");
  }
  self->sched.state = st_parked;
  self->sched.interruptible = true;
  schedule(self, wake_reason::woken);
  suspend(self);
}

namespace {
// refusal() is the fiber_error a fiber that switched into the hub by hand gets (answer_due).
std::exception_ptr refusal(fiber_impl* f) {
  return std::make_exception_ptr(fiber_error("cogent: fiber '" + f->name() +
                                             "' switched into the hub fiber by hand (switch_to/throw_in): only "
                                             "the hub resumes itself; block, yield or switch to another fiber"));
}
}  // namespace

[[gnu::always_inline]] inline void hub::suspend(fiber_impl* self) {
  ++_parked;
  detail::ref(self);  // a parked fiber stays alive until the hub resumes it
  fiber_impl* next = _fiber.impl();
  for (;;) {
    try {
      detail::resume_noting_switcher(next);
      if (self->sched.state == st_running) [[likely]] {
        if (self->in_value.has_value()) [[unlikely]] {
          detail::drop_value(self->in_value);  // (the hub resumes with none)
        }
        break;  // the hub resumed us
      }
      // A fiber switched into this parked fiber with a value (fiber::switch_to,
      // or the kill of a finished fiber whose parent chain ends here): the wait
      // goes on and the value is dropped. Hand control back to that fiber,
      // whose switch returns: it is not parked, so nothing else would resume it.
    } catch (...) {
      // Someone throw_in()'d into this parked fiber. Its wait (a timer, an IO
      // op on this stack) is still registered, so the exception must not
      // unwind from here: make it the fiber's pending interrupt, raised at the
      // usual point once the wait is cleaned up — and hand control straight
      // back to the thrower, whose throw_in() returns (like kill(block=false)).
      interrupt(self, std::current_exception());
      if (self->sched.state == st_running) {
        break;
      }
    }
    fiber_impl* back = detail::previous_impl();
    if (self->in_value.has_value()) [[unlikely]] {
      // Dropped now, while we hold `back`: the value's destructor may switch
      // (the last handle of a suspended fiber unwinds it) and may even free it.
      if (back != nullptr) {
        detail::ref(back);
      }
      detail::drop_value(self->in_value);
      if (back != nullptr) {
        const bool last = back->refs == 1;
        detail::unref(back);
        if (last) {
          back = nullptr;
        }
      }
    }
    next = back != nullptr && !back->dead && back != _fiber.impl() && back != self ? back : _fiber.impl();
  }
  --_parked;
  detail::unref(self);
}

int hub::await_io(detail::io_op& op, clock::time_point deadline, void (*release)(int)) {
  fiber_impl* self = detail::current_impl();
  if (self->sched.pending) [[unlikely]] {
    // A kill/Timeout still pending from an op that completed anyway lands
    // here, before a new op starts: a loop over ops that each complete at
    // once (a fast peer) would otherwise never see it.
    throw_if_interrupted();
  }
  if (self == _fiber.impl() || this != t_hub) [[unlikely]] {
    // Refused before the op is submitted (park_here() would refuse only after:
    // the op would stay in flight on the callback's unwound frame).
    refuse_blocking(this, "cogent: a blocking call was made inside the hub (timer or post() callback)");
  }
  op.user = self;
  op.on_complete = [](detail::io_op* o) {
    t_hub->schedule(static_cast<fiber_impl*>(o->user), wake_reason::woken);
  };
  _engine->submit(op);
  // An interrupt (kill, Timeout) cancels the op where it finds it, in the
  // turn it happens: an op still in the submission queue then never runs
  // (cancelled here, once this fiber runs again, the hub would already have
  // handed it to the kernel — an accept would take a waiting client).
  self->sched.awaiting_io = &op;
  wake_reason r = park_here(deadline, true);
  bool cancelled = self->sched.awaiting_io == nullptr;
  self->sched.awaiting_io = nullptr;
  if (!op.done) {
    // Timed out or interrupted: cancel, and keep the fiber (and `op`, which
    // lives on its stack) parked until the op's own completion is reaped.
    if (!cancelled) {
      _engine->cancel(op);
    }
    while (!op.done) {
      park(clock::time_point::max(), false);
    }
  }
  if (self->sched.pending && !self->sched.pending_late) {  // (a late one: the op's outcome stands)
    if (op.result >= 0) {
      if (release == nullptr) {
        // It completed anyway (bytes received or sent): honour the result;
        // the interrupt stays pending and is raised at the next blocking call.
        return op.result;
      }
      release(op.result);  // it produced a resource (an accepted fd): give it back
    }
    throw_if_interrupted();
  }
  if (r == wake_reason::timed_out && (op.result == -ECANCELED || op.result == -EINTR)) {
    // Our cancel ended it: -ECANCELED, or -EINTR for an op the kernel ran
    // blocking on a worker thread (an AF_UNIX connect to a full backlog).
    return -ETIMEDOUT;
  }
  return op.result;
}

void hub::wait_idle() {
  fiber_impl* self = detail::current_impl();
  _idle_waiters.push_back(self);
  struct reset {
    hub* h;
    fiber_impl* s;
    ~reset() {
      // Still listed if it was interrupted (kill/Timeout) rather than woken.
      auto& w = h->_idle_waiters;
      std::erase(w, s);
    }
  } guard{this, self};
  park(clock::time_point::max(), true);
  throw_if_interrupted_in_wait();
}

// ---- timers -----------------------------------------------------------------

namespace {
inline bool timer_less(const detail::timer_node* a, const detail::timer_node* b) noexcept {
  return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
}
}  // namespace

void hub::heap_up(std::size_t i) noexcept {
  detail::timer_node* n = _timers[i];
  while (i > 0) {
    std::size_t p = (i - 1) / 2;
    if (!timer_less(n, _timers[p])) {
      break;
    }
    _timers[i] = _timers[p];
    _timers[i]->heap_index = i;
    i = p;
  }
  _timers[i] = n;
  n->heap_index = i;
}

void hub::heap_down(std::size_t i) noexcept {
  detail::timer_node* n = _timers[i];
  std::size_t size = _timers.size();
  for (;;) {
    std::size_t c = 2 * i + 1;
    if (c >= size) {
      break;
    }
    if (c + 1 < size && timer_less(_timers[c + 1], _timers[c])) {
      ++c;
    }
    if (!timer_less(_timers[c], n)) {
      break;
    }
    _timers[i] = _timers[c];
    _timers[i]->heap_index = i;
    i = c;
  }
  _timers[i] = n;
  n->heap_index = i;
}

void hub::heap_remove(std::size_t i) noexcept {
  detail::timer_node* gone = _timers[i];
  detail::timer_node* last = _timers.back();
  _timers.pop_back();
  gone->heap_index = detail::timer_node::unarmed;
  if (gone == last) {
    return;
  }
  _timers[i] = last;
  last->heap_index = i;
  heap_down(i);
  heap_up(last->heap_index);
}

void hub::add_timer(detail::timer_node& t) {
  if (t.armed()) [[unlikely]] {
    // Linked twice, the run list or heap would be corrupted silently.
    throw hub_error("cogent: add_timer() of a timer that is already armed (cancel_timer() it first)");
  }
  if (_timers.capacity() <= timer_count()) [[unlikely]] {
    // A heap slot for every armed timer (run-list ones too), reserved here
    // where throwing is allowed: a timer cancelled to fire can then be
    // re-added by its callback without allocating.
    _timers.reserve(std::max<std::size_t>(64, 2 * (timer_count() + 1)));
  }
  t.seq = _timer_seq++;
  if (_run_tail == nullptr || !timer_less(&t, _run_tail)) {
    t.heap_index = detail::timer_node::in_run;
    t.run_prev = _run_tail;
    t.run_next = nullptr;
    (_run_tail != nullptr ? _run_tail->run_next : _run_head) = &t;
    _run_tail = &t;
    ++_run_count;
    return;
  }
  _timers.push_back(&t);
  heap_up(_timers.size() - 1);
}

void hub::cancel_timer(detail::timer_node& t) noexcept {
  if (t.heap_index == detail::timer_node::in_run) {
    (t.run_prev != nullptr ? t.run_prev->run_next : _run_head) = t.run_next;
    (t.run_next != nullptr ? t.run_next->run_prev : _run_tail) = t.run_prev;
    t.run_prev = t.run_next = nullptr;
    t.heap_index = detail::timer_node::unarmed;
    --_run_count;
  } else if (t.armed()) {
    heap_remove(t.heap_index);
  }
}

detail::timer_node* hub::first_timer() const noexcept {
  detail::timer_node* h = _timers.empty() ? nullptr : _timers.front();
  if (_run_head == nullptr || (h != nullptr && timer_less(h, _run_head))) {
    return h;
  }
  return _run_head;
}

void hub::expire_timers(clock::time_point now) {
  detail::timer_node* t = first_timer();
  if (t == nullptr || t->deadline > now) {
    return;
  }
  // The callbacks run in the hub: to the monitor, the hub is the running fiber.
  running_callbacks();
  for (; t != nullptr && t->deadline <= now; t = first_timer()) {
    cancel_timer(*t);
    try {
      t->fire(t);
    } catch (...) {
      report_hub_exception("a timer callback");  // as for post(): the hub goes on
    }
  }
  _running.store(nullptr, std::memory_order_relaxed);
}

// ---- cross-thread posts -------------------------------------------------------

bool detail::post_to(mailbox& box, std::function<void()> fn) {
  // The wake happens under the lock: ~hub clears `wake` under it before the
  // engine goes, so a poster never wakes a destroyed engine — even one whose
  // post the hub drained (and whose thread then ended) before the wake.
  std::lock_guard lock(box.mu);
  if (box.wake == nullptr) {
    return false;
  }
  box.posted.push_back(std::move(fn));
  box.has_posted.store(true, std::memory_order_release);
  box.wake->wake();
  return true;
}

void hub::post(std::function<void()> fn) {
  detail::post_to(*_mailbox, std::move(fn));
}

void hub::running_callbacks() noexcept {
  // A switch, to the monitor: it times the callbacks from now, not from the
  // last fiber switch (an idle spell before them is nobody's blocking).
  mark_running(_fiber.impl());
}

void hub::drain_posted() {
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard lock(_mailbox->mu);
    batch.swap(_mailbox->posted);
    _mailbox->has_posted.store(false, std::memory_order_relaxed);
  }
  running_callbacks();
  for (auto& fn : batch) {
    try {
      fn();
    } catch (...) {
      report_hub_exception("a post() callback");
    }
  }
  _running.store(nullptr, std::memory_order_relaxed);
}

// ---- the loop -----------------------------------------------------------------

bool hub::nothing_can_happen() const noexcept {
  return _ready_count == 0 && timer_count() == 0 && _engine->in_flight() == 0 &&
         _held.load(std::memory_order_relaxed) == 0 && !_mailbox->has_posted.load(std::memory_order_acquire);
}

namespace {
// answer_due() is the fiber that just gave control to the hub by a manual
// switch_to()/throw_in() on the hub fiber (alive and not parked: not a park,
// a yield nor a finish), or null. Only the hub resumes itself: such a fiber
// gets fiber_error and goes on (it would otherwise never run again).
// (previous_impl() is null if that fiber was freed meanwhile.)
fiber_impl* answer_due() noexcept {
  fiber_impl* p = detail::previous_impl();
  return p != nullptr && !p->dead && p->sched.state == st_running ? p : nullptr;
}
}  // namespace

// run_one() resumes a ready fiber until it gives control back to the hub; a
// fiber that gave it back by hand (answer_due) gets a fiber_error instead of
// being stranded.
[[gnu::always_inline]] inline void hub::run_one(fiber_impl* f) {
  fiber_impl* due = nullptr;
  try {
    detail::resume_noting_switcher(f);
    due = answer_due();
  } catch (fiber_exit&) {
    if (_tearing_down || (due = answer_due()) == nullptr) {
      throw;  // the hub itself is being unwound
    }
  } catch (...) {
    if ((due = answer_due()) == nullptr) {
      if (f->dead && !f->started && detail::start_failed_hook != nullptr) {
        // It could not get a stack (fiber/: it dies without running and the
        // error comes to us): its task fails with that error.
        detail::start_failed_hook(f, std::current_exception());
      } else {
        report_hub_exception("a finished fiber whose parent is the hub");
      }
    }
  }
  if (_fiber.impl()->in_value.has_value()) [[unlikely]] {
    detail::drop_value(_fiber.impl()->in_value);  // (only a manual switch carries one)
  }
  while (due != nullptr) [[unlikely]] {
    fiber_impl* target = std::exchange(due, nullptr);
    try {
      (void)detail::switch_slow(target, {}, refusal(target));  // (a value it returns is dropped)
      due = answer_due();
    } catch (fiber_exit&) {
      if (_tearing_down || (due = answer_due()) == nullptr) {
        throw;
      }
    } catch (...) {
      if ((due = answer_due()) == nullptr) {
        report_hub_exception("a fiber the hub answered");
      }
    }
  }
}

[[gnu::always_inline]] inline void hub::run_ready() {
  std::size_t n = _ready_count < _cfg.ready_batch ? _ready_count : _cfg.ready_batch;
  while (n-- > 0) {
    fiber_impl* f = _ready_head;
    _ready_head = f->sched.next_ready;
    if (_ready_head == nullptr) {
      _ready_tail = nullptr;
    }
    --_ready_count;
    if (fiber_impl* next = _ready_head; next != nullptr) {
      // Long ready queues (100k sleepers waking) chase pointers through cold
      // control blocks and cold stacks. Two-deep pipeline, overlapped with
      // f's run: `next` was fetched during the previous turn, so the frames
      // its resume will read (the top of its saved stack) can be fetched now,
      // with the canary at the bottom of an unguarded stack (another page:
      // its walk overlaps the first one), and the control block after it
      // starts coming in.
      if (auto* sp = static_cast<const char*>(next->ctx); sp != nullptr) {
        for (int off = 0; off < 512; off += 64) {
          __builtin_prefetch(sp + off, 0);
        }
      } else if (!next->started) {
        detail::prefetch_next_stacks();  // it will take a pooled stack and write its first frames
      }
      if (next->unguarded) {
        __builtin_prefetch(next->stk.bottom, 0);  // read when it switches away
      }
      if (auto* after = next->sched.next_ready; after != nullptr) {
        __builtin_prefetch(after, 1);
        __builtin_prefetch(&after->ctx, 0);  // another line: read at the next turn, as `next`'s is now
      }
    }
    f->sched.state = st_running;
    mark_running(f);
    run_one(f);
    _running.store(nullptr, std::memory_order_relaxed);
  }
}

void hub::loop() {
  // The fiber that first blocked (and so started us) is no longer running.
  _running.store(nullptr, std::memory_order_relaxed);
  for (;;) {
    if (_mailbox->has_posted.load(std::memory_order_acquire)) {
      drain_posted();
    }
    if (_ready_count > 0) {
      run_ready();
      if (_ready_count > 0) {
        // Still busy: look at IO and timers without blocking so fibers woken
        // by IO do not starve behind always-ready ones.
        if (_engine->in_flight() > 0) {
          _engine->poll();
        }
        expire_timers_after_posts();
        continue;
      }
    }
    if (nothing_can_happen()) {
      if (!_idle_waiters.empty()) {
        // Every wait() caller: the hub is idle for all of them at once.
        for (fiber_impl* w : std::exchange(_idle_waiters, {})) {
          schedule(w);
        }
        continue;
      }
      fiber_impl* main = detail::thread_main_impl();
      if (main->sched.state == st_parked) {
        interrupt(main, std::make_exception_ptr(would_block_forever(
                            "cogent: would block forever: the main fiber waits on something that nothing "
                            "can complete (no ready fibers, timers, IO or thread-pool work)")));
        if (main->sched.state == st_parked) {
          // Parked non-interruptibly (interrupt() only left the error
          // pending): wake it anyway — park() returns `interrupted` and its
          // caller finds would_block_forever pending — rather than spin here.
          schedule(main, wake_reason::interrupted);
        }
        continue;
      }
      // main is not waiting on the hub (it is suspended in a manual switch):
      // there is nothing to wake; hand control back to it (through run_one:
      // a later switch_to()/throw_in() of main on the hub fiber comes back
      // here and is answered with fiber_error, as from any other fiber).
      mark_running(main);
      run_one(main);
      _running.store(nullptr, std::memory_order_relaxed);
      continue;
    }
    detail::timer_node* first = first_timer();
    _engine->wait(first != nullptr ? first->deadline : clock::time_point::max());
    expire_timers_after_posts();
  }
}

void hub::expire_timers_after_posts() {
  // What completed in this turn (IO reaped by the engine, thread-pool
  // completions posted) wakes its fibers before the timers fire, as libev
  // runs IO watchers before timers: a wait that completed is not then raised
  // as timed out by a Timeout that expired in the same turn (it is late).
  if (_mailbox->has_posted.load(std::memory_order_acquire)) {
    drain_posted();
  }
  if (timer_count() != 0) {
    expire_timers(clock::now());
  }
}

// ---- free functions --------------------------------------------------------------

void sleep(std::chrono::nanoseconds d) {
  hub& h = hub::current();
  if (d <= std::chrono::nanoseconds::zero()) {
    h.yield_now();
    hub::throw_if_interrupted();
    return;
  }
  sleep_until(deadline_after(d));  // saturates: a duration too long to represent sleeps forever
}

void sleep_until(clock::time_point deadline) {
  hub& h = hub::current();
  while (h.park(deadline, true) != wake_reason::timed_out) {
    hub::throw_if_interrupted_in_wait();
  }
  // Slept its time: an interrupt that came after (the hub ran the fiber late)
  // is raised at the next blocking call, or withdrawn by its Timeout's end.
  hub::throw_if_interrupted_in_wait();
}

void wait() {
  hub::current().wait_idle();
}

// ---- wait_list -------------------------------------------------------------------

namespace detail {

bool wait_list::wait(clock::time_point deadline, bool outlives_owner) {
  hub& h = hub::current();
  waiter w;
  w.f = current_impl();
  _links.push_back(w);
  struct leave {
    wait_list& l;
    waiter& w;
    ~leave() {
      if (w.linked) {  // (not linked once orphaned: the list is gone)
        if (w.notified != notice::none) {
          l._woken.unlink(w);
        } else {
          l._links.unlink(w);
        }
      }
    }
  } guard{*this, w};
  for (;;) {
    wake_reason r = h.park(deadline, true);
    if (w.orphaned) [[unlikely]] {
      if (w.notified == notice::all && outlives_owner && !w.f->sched.pending) {
        return true;
      }
      hub::throw_if_interrupted();
      throw_orphaned();
    }
    if (w.f->sched.pending && !w.f->sched.pending_late) {
      if (w.notified == notice::one) {
        notify_one();  // we cannot use the wake-up: pass it on
      }
      hub::throw_if_interrupted();
    }
    if (w.notified != notice::none) {
      return true;
    }
    if (r == wake_reason::timed_out || deadline <= clock::now()) {
      return false;
    }
    // Not for us (no notice, no interrupt, deadline ahead): wait on.
  }
}

void wait_list::orphan_waiters() noexcept {
  while (waiter* w = _woken.front()) {
    _woken.unlink(*w);
    w->orphaned = true;  // already scheduled
  }
  while (waiter* w = _links.front()) {
    _links.unlink(*w);
    w->orphaned = true;
    wake_waiter(w->f);
  }
}

void wake_waiter(fiber_impl* f) noexcept {
  // A waiter is parked on this thread's hub, so there is one — but in a
  // fork() child, where the waiter is a copy of a parent's fiber that never
  // runs (the hub was forgotten: see hub::forget_in_child()).
  if (t_hub != nullptr) [[likely]] {
    t_hub->schedule(f, wake_reason::woken);
  }
}

void throw_orphaned() {
  throw hub_error("cogent: a lock, event, queue, pool or group was destroyed while '" + current_impl()->name() +
                  "' waited on it");
}

bool wait_list::notify_one() noexcept {
  waiter* w = _links.front();
  if (w == nullptr) {
    return false;
  }
  _links.unlink(*w);
  w->notified = notice::one;
  _woken.push_front(*w);  // until it is back in wait(), where it unlinks itself
  wake_waiter(w->f);
  return true;
}

void wait_list::notify_all() noexcept {
  while (waiter* w = _links.front()) {
    _links.unlink(*w);
    w->notified = notice::all;
    _woken.push_front(*w);
    wake_waiter(w->f);
  }
}

}  // namespace detail
}  // namespace cogent
