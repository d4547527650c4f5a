// hub/sync.hpp — gevent.event and gevent.lock for cogent fibers.
//
// Defines cogent::event (a flag fibers wait on), cogent::async_result<T> (a
// value or exception delivered once, waited on by many), cogent::mutex (a
// non-reentrant lock owned by one fiber; also named cogent::lock),
// cogent::rlock (reentrant), cogent::semaphore, cogent::bounded_semaphore,
// the misuse error lock_error, detail::handoff_list (the FIFO of parked
// fibers the locks and queues hand things to) and detail::ready_links (the
// callbacks cogent::wait() watches an event or async_result with).
//
// All of them belong to one thread's hub (not thread-safe, like gevent's).
// Every call that may block takes an optional timeout (cogent::timeout_duration;
// std::nullopt waits without limit; zero never switches) and raises a pending
// kill or Timeout (timeout_error) of the calling fiber — on entry, whether or
// not it would block (then nothing is taken), so a killed fiber stops at its
// next such call even when a lock is free or an event already set. Inside
// the hub (a timer or post() callback) a call that would have to wait raises
// cogent::hub_error; with a zero timeout (or a lock that is free) it works there.
//
// Fairness and kills: waiters are served first come, first served. A release
// hands the lock (or the semaphore unit) straight to the longest waiter, so a
// newcomer cannot barge in front of it. A waiter that is killed or whose
// Timeout fires while it waits never receives the grant; the release goes to
// the next waiter instead. If the grant reached a waiter before its kill could
// act (both happened in the same hub turn), the grant is honoured: the call
// succeeds and the kill is raised at the fiber's next blocking call. Nothing
// is ever lost or counted twice.
//
// Lifetime: destroying one of them (or a queue, pool or group) while fibers
// wait on it — or were woken by it and have not run yet — is a bug in the
// program; each of those waits raises cogent::hub_error ("... destroyed
// while this fiber waited on it") rather than touch freed memory. One
// pattern is allowed: an event (or async_result, or a joinable_queue's
// join()) may be destroyed right after set(): its wait()s return true.
#pragma once
#pragma GCC visibility push(default)

#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "hub/core.hpp"
#include "hub/timeout.hpp"

namespace cogent {

// lock_error is thrown on lock misuse: releasing a mutex/rlock that is not
// locked or that another fiber owns, acquiring a mutex the caller already
// owns (it would deadlock; use rlock), or releasing a bounded_semaphore above
// its initial value. what() names the problem.
class lock_error : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

namespace detail {

// deadline_passed() is true if `deadline` is not in the future (a zero
// timeout): the caller gives up without switching.
inline bool deadline_passed(clock::time_point deadline) noexcept {
  return deadline != clock::time_point::max() && clock::now() >= deadline;
}

// handoff_list is a FIFO of parked fibers waiting to be handed something: a
// lock, a semaphore unit, a queue item or a slot. Unlike wait_list (wake and
// recheck), the giver picks the waiter and completes the transfer before it
// wakes, so a newcomer cannot take what was meant for it. Not thread-safe.
class handoff_list {
 public:
  // node is one waiter; it lives on the waiting fiber's stack.
  struct node {
    fiber_impl* f = nullptr;
    node* prev = nullptr;
    node* next = nullptr;
    void* data = nullptr;  // what the waiter offers (a putter's item) or receives into (a getter's slot)
    bool granted = false;
    bool linked = false;
    bool orphaned = false;  // granted, then the list was destroyed before the fiber ran
  };

  handoff_list() = default;
  handoff_list(const handoff_list&) = delete;
  handoff_list& operator=(const handoff_list&) = delete;
  // ~handoff_list() with fibers still waiting, or granted and not yet run,
  // raises hub_error in each (see orphan_all()): what was handed to a granted
  // one (a lock, a unit, an item) belonged to the object being destroyed.
  // Never switches.
  ~handoff_list() {
    while (node* n = _granted.front()) [[unlikely]] {
      _granted.unlink(*n);
      n->orphaned = true;  // already scheduled
    }
    if (!_links.empty()) [[unlikely]] {
      orphan_all(_links);
    }
  }

  // take() is the whole of every handoff call (lock, semaphore, queue and
  // channel put/get): it raises a pending interrupt first (nothing taken),
  // then, until it has what it came for, runs try_now() — the caller's fast
  // path: take what is free and return true — and otherwise waits with `n`
  // (n.data set by the caller) for a giver to complete the transfer. False
  // once `t` passes; `t` is resolved only when it first has to wait (a call
  // that takes at once reads no clock). A grant that arrived first wins: the
  // call succeeds and the interrupt stays pending for the next blocking call.
  // May switch.
  template <class TryNow>
  bool take(node& n, timeout_duration t, TryNow&& try_now) {
    hub::throw_if_interrupted();
    if (try_now()) {
      return true;
    }
    return wait(n, deadline_after(t));
  }

  // first() returns the longest-waiting node whose fiber has no interrupt on
  // its way (those are leaving), or null. Never switches.
  node* first() const noexcept;

  // grant() unlinks `n`, marks it granted and makes its fiber ready. The giver
  // completes the transfer (ownership, n.data) before calling it. Never switches.
  void grant(node& n) noexcept;

  // granted_front() is the earliest granted node whose fiber has not run yet
  // (then ->next, in grant order), or null. Never switches.
  node* granted_front() const noexcept { return _granted.front(); }

  // empty()/size() count every linked node, leaving ones included.
  bool empty() const noexcept { return _links.empty(); }
  std::size_t size() const noexcept { return _links.size(); }

 private:
  // wait() links `n` at the tail and parks until grant(n) (true), `deadline`
  // (false) or an interrupt (raised); `n` is unlinked when it returns or throws.
  bool wait(node& n, clock::time_point deadline);

  fifo_links<node> _links;
  fifo_links<node, false> _granted;  // granted, their fibers not yet back in wait()
};

// owner_lock is what mutex and rlock share: an owning fiber and a FIFO of
// fibers waiting to be handed the lock. Not thread-safe.
//
// The owner is kept as its fiber's id, not its fiber_impl*: a fiber that ends
// owning the lock leaves it locked, and control blocks are recycled, so a new
// fiber at the dead owner's address must not pass for it. Ids are never reused.
class owner_lock {
 public:
  // locked() is true while some fiber owns the lock.
  bool locked() const noexcept { return _owner != 0; }
  // owned_by() is true if fiber f owns the lock.
  bool owned_by(const fiber_impl* f) const noexcept;
  // owned() is true if the calling fiber owns the lock.
  bool owned() const noexcept;
  // take() makes `self` the owner if the lock is free (true); otherwise it
  // waits up to `t` for a release to hand it over (true) or not (false).
  // Raises a pending interrupt. May switch.
  bool take(fiber_impl* self, timeout_duration t);
  // check_owner() throws lock_error, naming `who`, unless the caller owns the lock.
  void check_owner(const char* who) const;
  // hand_over() gives the lock to the longest waiter (returned) or unlocks it (null).
  fiber_impl* hand_over() noexcept;
  std::size_t waiters() const noexcept { return _waiters.size(); }

 private:
  std::uint64_t _owner = 0;  // the owning fiber's id (ids start at 1); 0: unlocked
  handoff_list _waiters;
};

// ready_link is a callback an event or async_result runs when it is next set
// (gone = false), or when it is destroyed still holding the link (gone =
// true): what cogent::wait() (hub/wait.hpp) watches them with, gevent's
// rawlink. Each link runs at most once, already unlinked, and must not
// switch. The linker keeps the node alive and in place until it has run or
// been removed.
struct ready_link {
  void (*fire)(ready_link* self, bool gone) noexcept = nullptr;
  ready_link* prev = nullptr;
  ready_link* next = nullptr;
  bool linked = false;
};

// ready_links is the list of an object's ready_link nodes, run in the order
// they were added (as gevent's rawlink callbacks are), after the object's own
// waiters are woken (gevent keeps both in one list: see cogent::wait()).
class ready_links {
 public:
  ready_links() = default;
  ready_links(const ready_links&) = delete;
  ready_links& operator=(const ready_links&) = delete;
  ~ready_links() {
    if (_head != nullptr) [[unlikely]] {
      run_all(true);
    }
  }
  void add(ready_link& n) noexcept {
    n.next = nullptr;
    n.prev = _tail;
    (_tail != nullptr ? _tail->next : _head) = &n;
    _tail = &n;
    n.linked = true;
  }
  void remove(ready_link& n) noexcept {
    if (!n.linked) {
      return;
    }
    (n.prev != nullptr ? n.prev->next : _head) = n.next;
    (n.next != nullptr ? n.next->prev : _tail) = n.prev;
    n.prev = n.next = nullptr;
    n.linked = false;
  }
  // run() runs and removes every link (on set). Never switches.
  void run() noexcept {
    if (_head != nullptr) [[unlikely]] {
      run_all(false);
    }
  }

 private:
  void run_all(bool gone) noexcept {
    while (ready_link* n = _head) {
      remove(*n);
      n->fire(n, gone);
    }
  }
  ready_link* _head = nullptr;
  ready_link* _tail = nullptr;
};

}  // namespace detail

// event is gevent's Event: a flag; wait() blocks until it is set. set() wakes
// every waiter; clear() resets it. Not thread-safe (one hub).
//
// Example:
//   cogent::event ready;
//   auto t = cogent::spawn([&] { ready.wait(); std::puts("go"); });
//   cogent::sleep(10ms);
//   ready.set();            // t prints "go"
//   t.join();
class event {
 public:
  event() = default;
  event(const event&) = delete;
  event& operator=(const event&) = delete;

  // set() sets the flag and wakes every fiber waiting now (they return true
  // even if clear() runs before they resume). Never switches.
  void set() noexcept;
  // clear() resets the flag; later wait() calls block again. Never switches.
  void clear() noexcept { _flag = false; }
  // is_set() returns the flag. Never switches.
  bool is_set() const noexcept { return _flag; }
  // wait() blocks until the flag is set (true) or `t` passes (false; no
  // exception). Returns at once if already set. Raises a pending kill or
  // Timeout. May switch.
  bool wait(timeout_duration t = std::nullopt);
  // waiters() counts the fibers blocked in wait(). Never switches.
  std::size_t waiters() const noexcept { return _waiters.size(); }
  // links() is where cogent::wait() (hub/wait.hpp) hooks in. Never switches.
  detail::ready_links& links() noexcept { return _links; }

 private:
  bool _flag = false;
  detail::wait_list _waiters;
  detail::ready_links _links;
};

// async_result is gevent's AsyncResult: a value (or exception) produced once,
// by any fiber, and read by any number of fibers that wait for it. T may be
// void. set() again replaces the stored outcome (as in gevent).
//
// Example:
//   cogent::async_result<int> answer;
//   cogent::spawn([&] { cogent::sleep(10ms); answer.set(42); });
//   int v = answer.get();                       // 42, after ~10 ms
//   bool ok = answer.get(1ms) == 42;            // ready now: no wait
template <class T>
class async_result {
 public:
  async_result() = default;
  async_result(const async_result&) = delete;
  async_result& operator=(const async_result&) = delete;

  // set() stores the value, marks the result ready and wakes every waiter.
  // If making the T from `value` throws, nothing changes (a value stored
  // before stays; if T's move throws and T cannot be assigned, the result is
  // not ready afterwards). Never switches. (async_result<void>::set() takes
  // no argument.)
  template <class U = T, class = std::enable_if_t<!std::is_void_v<U>>>
  void set(U&& value) {
    T fresh(std::forward<U>(value));  // first: emplace() would destroy the old value before
    if constexpr (!std::is_nothrow_move_constructible_v<T> && std::is_move_assignable_v<T>) {
      // A move that may throw: assign, so a throw leaves a value (T's own guarantee).
      if (_value) {
        *_value = std::move(fresh);
      } else {
        _value.emplace(std::move(fresh));
      }
    } else {
      // Replace (emplace destroys the old value first), never assign through
      // it (a T holding references, std::tie's tuple). A move that throws
      // here (T cannot be assigned) leaves no value: not ready any more.
      try {
        _value.emplace(std::move(fresh));
      } catch (...) {
        _value.reset();
        _ready = false;
        throw;
      }
    }
    _error = nullptr;
    mark_ready();
  }
  template <class U = T, class = std::enable_if_t<std::is_void_v<U>>>
  void set() {
    _error = nullptr;
    mark_ready();
  }
  // set_exception() stores `e` (get() will rethrow it), marks the result ready
  // and wakes every waiter. Precondition: e is not null. Never switches.
  void set_exception(std::exception_ptr e) {
    if (!e) {
      throw std::invalid_argument("cogent::async_result::set_exception(): null exception_ptr");
    }
    _error = std::move(e);
    mark_ready();
  }

  // ready() is true once set() or set_exception() was called. Never switches.
  bool ready() const noexcept { return _ready; }
  // successful() is true if ready with a value (not an exception). Never switches.
  bool successful() const noexcept { return _ready && !_error; }
  // exception() returns the stored exception, or null. Never switches.
  std::exception_ptr exception() const noexcept { return _error; }

  // wait() blocks until the result is ready (true) or `t` passes (false; no
  // exception). Never rethrows the stored exception. Raises a pending kill or
  // Timeout. May switch.
  bool wait(timeout_duration t = std::nullopt) { return wait_for(t, true); }

  // get() waits for the result and returns a copy of the value (a move-only
  // value is moved out: take it once), or rethrows the stored exception.
  // Raises timeout_error(nullptr, t) if `t` passes first (as task::get does),
  // and a pending kill or Timeout. May switch.
  T get(timeout_duration t = std::nullopt) {
    if (!wait_for(t, false)) {  // (destroyed meanwhile: hub_error, the value is gone)
      throw timeout_error(nullptr, t.value_or(std::chrono::nanoseconds::zero()));
    }
    if (_error) {
      std::rethrow_exception(_error);
    }
    if constexpr (!std::is_void_v<T>) {
      if constexpr (std::is_copy_constructible_v<T>) {
        return *_value;
      } else {
        return std::move(*_value);
      }
    }
  }

  // waiters() counts the fibers blocked in wait()/get(). Never switches.
  std::size_t waiters() const noexcept { return _waiters.size(); }
  // links() is where cogent::wait() (hub/wait.hpp) hooks in. Never switches.
  detail::ready_links& links() noexcept { return _links; }

 private:
  bool wait_for(timeout_duration t, bool outlives_owner) {
    hub::throw_if_interrupted();
    if (_ready) {
      return true;
    }
    clock::time_point deadline = deadline_after(t);
    if (detail::deadline_passed(deadline)) {
      return false;
    }
    // Woken means set()/set_exception() ran (the only notifier, notify_all).
    // wait() reads nothing after it, so the object may be destroyed right
    // after the set; get() reads the value: it raises hub_error then.
    return _waiters.wait(deadline, outlives_owner);
  }
  void mark_ready() noexcept {
    _ready = true;
    _waiters.notify_all();
    _links.run();
  }
  template <class U>
  struct slot {
    using type = std::optional<U>;
  };
  template <class U>
  requires std::is_void_v<U>
  struct slot<U> {
    struct type {};
  };
  typename slot<T>::type _value;
  std::exception_ptr _error;
  bool _ready = false;
  detail::wait_list _waiters;
  detail::ready_links _links;
};

// mutex is gevent's Lock: held by at most one fiber, its owner, until that
// fiber releases it. Non-reentrant: acquiring it again from its owner throws
// lock_error (use rlock). Waiters get it in FIFO order. It is a C++ Lockable
// (lock/unlock/try_lock), so std::lock_guard and std::unique_lock work; it is
// also named cogent::lock (a class cannot have a member named like itself, so
// the class is `mutex` and `lock` is its alias). A fiber that ends while
// owning it leaves it locked: hold it with RAII (std::lock_guard).
//
// Example:
//   cogent::lock mu;
//   int balance = 0;
//   auto deposit = [&](int n) {
//     std::lock_guard g(mu);          // or: if (mu.acquire(100ms)) { ...; mu.release(); }
//     int b = balance;
//     cogent::sleep(1ms);             // other fibers run, but none enters here
//     balance = b + n;
//   };
class mutex {
 public:
  mutex() = default;
  mutex(const mutex&) = delete;
  mutex& operator=(const mutex&) = delete;

  // acquire() takes the lock, blocking while another fiber holds it, up to
  // `t` (true: the caller now owns it; false: timed out). Throws lock_error if
  // the caller already owns it. Raises a pending kill or Timeout (the lock is
  // then not taken). May switch (never if free, or if t is zero).
  bool acquire(timeout_duration t = std::nullopt);
  // release() gives the lock to the longest waiter, or unlocks it. Throws
  // lock_error if it is not locked or the caller does not own it. Never switches.
  void release();
  // locked() is true while some fiber owns the lock. Never switches.
  bool locked() const noexcept { return _lock.locked(); }
  // owned() is true if the calling fiber owns the lock. Never switches.
  bool owned() const noexcept { return _lock.owned(); }
  // waiters() counts the fibers blocked in acquire(). Never switches.
  std::size_t waiters() const noexcept { return _lock.waiters(); }

  // lock(), unlock(), try_lock(): the C++ Lockable names for acquire(),
  // release() and acquire(0) (try_lock never switches).
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return acquire(std::chrono::nanoseconds::zero()); }

 private:
  detail::owner_lock _lock;
};

// lock is gevent's name for mutex.
using lock = mutex;

// rlock is gevent's RLock: a lock its owner may acquire again; it is released
// when release() has been called as often as acquire(). Waiters are FIFO.
// Lockable, like mutex.
//
// Example:
//   cogent::rlock mu;
//   std::function<void(int)> walk = [&](int depth) {
//     std::lock_guard g(mu);          // re-entered by the same fiber: no deadlock
//     if (depth > 0) { walk(depth - 1); }
//   };
class rlock {
 public:
  rlock() = default;
  rlock(const rlock&) = delete;
  rlock& operator=(const rlock&) = delete;

  // acquire() takes the lock (count 1) or, if the caller owns it, increments
  // the count; blocks while another fiber owns it, up to `t` (false: timed
  // out). Raises a pending kill or Timeout. May switch (never if free or
  // owned by the caller, or if t is zero).
  bool acquire(timeout_duration t = std::nullopt);
  // release() decrements the count; at zero the lock goes to the longest
  // waiter or is unlocked. Throws lock_error if the caller does not own it
  // (or it is not locked). Never switches.
  void release();
  // locked() is true while some fiber owns it. Never switches.
  bool locked() const noexcept { return _lock.locked(); }
  // owned() is true if the calling fiber owns it. Never switches.
  bool owned() const noexcept { return _lock.owned(); }
  // count() is the owner's acquisition depth (0 when unlocked). Never switches.
  std::size_t count() const noexcept { return _count; }
  // waiters() counts the fibers blocked in acquire(). Never switches.
  std::size_t waiters() const noexcept { return _lock.waiters(); }

  // lock(), unlock(), try_lock(): the C++ Lockable names (try_lock never switches).
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return acquire(std::chrono::nanoseconds::zero()); }

 private:
  detail::owner_lock _lock;
  std::size_t _count = 0;
};

// semaphore is gevent's Semaphore: a counter of free units. acquire() takes
// one, blocking while there is none; release() returns one (to the longest
// waiter if any). Units have no owner: any fiber may release.
//
// Example:
//   cogent::semaphore slots(3);       // at most 3 downloads at once
//   auto fetch = [&](std::string url) {
//     slots.acquire();
//     struct give_back { cogent::semaphore& s; ~give_back() { s.release(); } } g{slots};
//     download(url);
//   };
class semaphore {
 public:
  // semaphore() starts with `initial` free units. Never switches.
  explicit semaphore(std::size_t initial = 1) noexcept : _counter(initial), _initial(initial) {}
  semaphore(const semaphore&) = delete;
  semaphore& operator=(const semaphore&) = delete;

  // acquire() takes one unit, blocking while none is free, up to `t` (false:
  // timed out, nothing taken). Raises a pending kill or Timeout (nothing is
  // then taken). May switch (never if a unit is free, or if t is zero).
  bool acquire(timeout_duration t = std::nullopt);
  // release() hands one unit to the longest waiter or adds it to the counter.
  // Never switches. (bounded_semaphore::release throws lock_error above the
  // initial value.)
  void release();
  // counter() is the number of free units. Never switches.
  std::size_t counter() const noexcept { return _counter; }
  // locked() is true when no unit is free (acquire would block). Never switches.
  bool locked() const noexcept { return _counter == 0; }
  // waiters() counts the fibers blocked in acquire(). Never switches.
  std::size_t waiters() const noexcept { return _waiters.size(); }

  // lock(), unlock(), try_lock(): the C++ Lockable names (try_lock never switches).
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return acquire(std::chrono::nanoseconds::zero()); }

 protected:
  semaphore(std::size_t initial, bool bounded) noexcept
      : _counter(initial), _initial(initial), _bounded(bounded) {}

 private:
  std::size_t _counter;
  std::size_t _initial;
  bool _bounded = false;
  detail::handoff_list _waiters;
};

// bounded_semaphore is a semaphore whose release() throws lock_error when it
// would raise the counter above its initial value (a release without a
// matching acquire: gevent's BoundedSemaphore).
//
// Example:
//   cogent::bounded_semaphore s(1);
//   s.acquire();
//   s.release();
//   s.release();                      // throws cogent::lock_error
class bounded_semaphore : public semaphore {
 public:
  // bounded_semaphore() starts with `initial` free units, the most it may hold. Never switches.
  explicit bounded_semaphore(std::size_t initial = 1) noexcept : semaphore(initial, true) {}
};

}  // namespace cogent

#pragma GCC visibility pop
