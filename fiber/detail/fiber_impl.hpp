// fiber/detail/fiber_impl.hpp — the fiber control block and the switch core.
//
// Defines cogent::detail::fiber_impl (what a cogent::fiber handle points to),
// fiber_body<Fn> (an impl that owns the callable), and the entry points the hub
// uses to switch without going through handles. Private to cogent.
#pragma once
// Everything declared in cogent headers is exported from the library (built with -fvisibility=hidden).
#pragma GCC visibility push(default)

#include <any>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "fiber/detail/block_cache.hpp"
#include "fiber/detail/context.hpp"
#include "fiber/stack.hpp"

namespace cogent {
class fiber;
template <class T>
T any_value_cast(std::any&& v);
namespace detail {

// fiber_locals_hook destroys one fiber's fiber_local storage (hub/local.cpp
// installs it; the fiber layer only calls it, once the fiber has finished or from ~fiber_impl).
inline void (*fiber_locals_hook)(void* storage) noexcept = nullptr;

struct fiber_impl;
// fiber_free_hook, when set, runs just before a fiber's control block is
// freed, on the fiber's thread (hub/core.cpp installs it with the blocked-hub
// monitor, which must stop reading a fiber before it goes).
inline std::atomic<void (*)(fiber_impl* f) noexcept> fiber_free_hook{nullptr};

// timer_node is an intrusive entry in the hub's timers (hub/core.hpp). It must
// stay alive while armed; disarm it (hub::cancel_timer) before destroying it.
// Defined here because every fiber's scheduler slot embeds one (see below).
struct timer_node {
  static constexpr std::size_t unarmed = static_cast<std::size_t>(-1);
  static constexpr std::size_t in_run = unarmed - 1;  // in the sorted run, not the heap
  std::chrono::steady_clock::time_point deadline{};
  std::uint64_t seq = 0;  // FIFO order among equal deadlines
  std::size_t heap_index = unarmed;
  timer_node* run_prev = nullptr;
  timer_node* run_next = nullptr;
  void (*fire)(timer_node*) = nullptr;
  bool armed() const noexcept { return heap_index != unarmed; }
};

// fiber_impl is one fiber's state, on the heap. A created fiber gets its stack
// when it is first switched to and gives it back as soon as it finishes: a
// fiber that never runs never maps one, and a run-to-completion task reuses
// the stack the previous one just released (still in cache).
class fiber_impl {
 public:
  fiber_impl(std::size_t stack_size, std::string&& name);  // a created fiber (parent = current)
  explicit fiber_impl(std::nullptr_t);                     // a thread's main fiber
  fiber_impl(const fiber_impl&) = delete;
  fiber_impl& operator=(const fiber_impl&) = delete;
  virtual ~fiber_impl();
  // Control blocks come from the per-thread block cache (block_cache.hpp):
  // the deleting destructor passes the dynamic type's size.
  static void* operator new(std::size_t bytes) { return cached_alloc(bytes); }
  static void operator delete(void* p, std::size_t bytes) noexcept { cached_free(p, bytes); }
  // An over-aligned callable (an alignas(64) capture) makes an over-aligned
  // block: the aligned global allocation, not the cache.
  static void* operator new(std::size_t bytes, std::align_val_t al) { return ::operator new(bytes, al); }
  static void operator delete(void* p, std::size_t bytes, std::align_val_t al) noexcept {
    ::operator delete(p, bytes, al);
  }

  // run() invokes the callable with the first switch's value; called once, on
  // the fiber's own stack. release_body() destroys the callable (also on that stack).
  virtual std::any run(std::any&& arg) = 0;
  virtual void release_body() noexcept = 0;
  // kill_raised() is told of each interrupt of no Timeout (a kill, a
  // throw_in) as it is raised in this fiber (the hub's throw_if_interrupted;
  // a task keeps the first and the latest: its outcome, if it ends with one).
  virtual void kill_raised(const std::exception_ptr&) noexcept {}

  // Scheduler slot: owned by the layer above (the hub); the fiber layer never
  // reads or writes it (but for `locals`, released when the fiber finishes). Kept inline so parking and waking allocate nothing.
  struct sched_slot {
    // The fields the hub touches to wake a fiber come first, together.
    fiber_impl* next_ready = nullptr;  // intrusive ready-queue link
    std::uint8_t state = 0;            // hub-defined: running / parked / ready
    std::uint8_t reason = 0;           // hub-defined wake reason
    bool interruptible = false;        // a parked fiber may be woken by an interrupt
    bool pending_delivered = false;    // `pending` woke the fiber from a wait (it is on its way up)
    // `pending` (a Timeout error) came after the fiber's wait had ended (woken
    // by its event or deadline, not yet run): that wait returns its outcome;
    // the next raises it, unless its scope ended first.
    bool pending_late = false;
    // park_timer is the deadline of the fiber's current park (a sleep, a wait
    // with a timeout). It lives here, not on the parked stack: expiring 100k
    // sleepers then walks dense control blocks instead of 100k stack pages.
    struct park_timer_node : timer_node {
      fiber_impl* owner = nullptr;
    } park_timer;
    std::exception_ptr pending;           // interrupt (kill, Timeout) to raise at the next park
    const void* pending_owner = nullptr;  // who raised `pending` (a Timeout scope), or null
    // A Timeout error a kill took the place of (hub::interrupt), or one that
    // expired while a kill was pending (timeout.cpp), and its scope: pending
    // again once the kill has been raised, so the scope's next blocking call
    // still times out. Withdrawn by the scope's end.
    std::exception_ptr displaced;
    const void* displaced_owner = nullptr;
    void* awaiting_io = nullptr;          // the IO op an interrupt must cancel (hub: await_io), or null
    // locals is this fiber's fiber_local storage (hub/local.hpp), freed as
    // soon as the fiber has finished and switched away for the last time (or,
    // if it never finishes, with the control block). The one sched field the
    // fiber layer touches.
    struct locals_slot {
      void* storage = nullptr;
      locals_slot() = default;
      locals_slot(const locals_slot&) = delete;
      locals_slot& operator=(const locals_slot&) = delete;
      ~locals_slot() { release(); }
      void release() noexcept {
        if (storage != nullptr && fiber_locals_hook != nullptr) {
          fiber_locals_hook(std::exchange(storage, nullptr));
        }
      }
      // release_at_exit() is release() for a thread's main fiber at thread
      // exit: values made by the destructors of earlier ones go too, in up
      // to four rounds.
      void release_at_exit() noexcept {
        for (int round = 0; round < 4 && storage != nullptr; ++round) {
          release();
        }
      }
    } locals;
  } sched;

  context ctx = nullptr;         // saved context while suspended; null until it has a stack
  fiber_impl* parent = nullptr;  // strong reference; null only for main fibers
  std::uint32_t refs = 1;        // handles + children naming us as parent
  bool started = false;
  bool dead = false;
  bool is_main = false;
  bool unguarded =
      false;  // a created fiber without a guard page: its canary is checked when it switches away
  bool eh_parked = false;  // `eh` holds our C++ exception state (we switched away inside a handler)
  std::uint32_t thread_tag = 0;  // the owning thread's serial (not reused by a later thread)
  std::uint64_t id = 0;
  std::any in_value;          // value delivered by the switch that resumes us
  std::exception_ptr in_exc;  // or an exception to raise at our suspension point
  stack stk;                  // empty for main fibers, before the first switch and once dead
  // The cold end, kept small: a task's fields follow (hub/task.hpp) and 100k
  // tasks are 100k of these blocks in memory.
  std::unique_ptr<std::string> user_name;  // null: "fiber-<id>" / "task-<id>"
  eh_state eh{};                           // with eh_parked: our exception state while switched away
  std::uint32_t stack_request = 0;         // the validated stack_size (0 = default), allocated at first switch
  // is_task: a hub task. Its default name is "task-<id>", and once it has
  // finished its parent becomes the thread's main fiber (not the hub's).
  bool is_task = false;
#if defined(__SANITIZE_ADDRESS__)
  void* asan_fake_stack = nullptr;
  const void* asan_bottom = nullptr;
  std::size_t asan_size = 0;
#endif

  std::string name() const;
  // write_name() formats the name without allocating (for signal handlers).
  void write_name(char* buf, std::size_t len) const noexcept;
};

// The switch state of this thread: the running fiber (null until the thread's
// main fiber exists) and the fiber whose switch resumed it. Initial-exec TLS:
// reading them is one %fs-relative load, no __tls_get_addr call.
extern thread_local constinit fiber_impl* t_current __attribute__((tls_model("initial-exec")));
extern thread_local constinit fiber_impl* t_previous __attribute__((tls_model("initial-exec")));

// previous_impl() is the fiber whose switch resumed the running one, when
// that switch raised an exception in it (throw_in, a child's error) or the
// running one was resumed by resume_noting_switcher(): valid until the
// running fiber switches again; may be dead. (The common, value-carrying
// switch does not record it.) Null if it was freed.
inline fiber_impl* previous_impl() noexcept {
  return t_previous;
}
// thread_main_impl() is this thread's main fiber (created on first use).
fiber_impl* thread_main_impl();
// init_thread() creates this thread's main fiber and makes it current.
fiber_impl* init_thread();
// current_impl() is the running fiber of this thread (creating the main fiber on first use).
inline fiber_impl* current_impl() {
  fiber_impl* c = t_current;
  return c != nullptr ? c : init_thread();
}

// The out-of-line parts of a switch (fiber.cpp): the general case (first use on
// a thread, another thread's fiber, a dead target, switching to oneself, an
// exception to deliver, AddressSanitizer builds), what a resumed fiber does
// when the one that left was unguarded, dead or unreferenced, and raising an
// exception that was switched in.
std::any switch_slow(fiber_impl* target, std::any&& value, std::exception_ptr exc);
void resumed_slow(fiber_impl* from, const void* from_sp) noexcept;
[[noreturn]] void raise_switched_in(fiber_impl* self);

// switch_put() switches to `target` (or its first live ancestor), calling
// put(slot) to store the delivered value in the receiver's std::any slot; when
// the caller is resumed, the value it receives is in its own in_value. The
// common case is inline so that a switch is no deeper than its caller: a
// return executed right after a stack change is mispredicted (the CPU's
// return-stack buffer holds the other fiber's calls), so every frame between
// the caller and the jump would cost a misprediction per switch.
// jump_to() is the jump of every switch: it suspends `self` (the running
// fiber) and resumes `target`, carrying self's C++ exception state across
// (eh_park/eh_unpark). Returns when some fiber switches back to self.
[[gnu::always_inline]] inline transfer jump_to(fiber_impl* self, fiber_impl* target) noexcept {
  eh_park(self->eh, self->eh_parked);
  transfer t = jump_context(target->ctx, self);
  eh_unpark(self->eh, self->eh_parked);
  return t;
}

// note_switcher: record, when the caller is resumed, who resumed it
// (previous_impl()) also for a value-carrying switch.
template <bool note_switcher = false, class Put>
[[gnu::always_inline]] inline void switch_put(fiber_impl* target, Put&& put) {
#if !defined(__SANITIZE_ADDRESS__)
  fiber_impl* self = t_current;
  if (self != nullptr && target->thread_tag == self->thread_tag && !target->dead && target != self &&
      target->ctx != nullptr) [[likely]] {
    put(target->in_value);
    target->started = true;
    t_current = target;
    transfer t = jump_to(self, target);
    auto* from = static_cast<fiber_impl*>(t.data);
    from->ctx = t.from;
    if (note_switcher || self->in_exc) [[unlikely]] {
      t_previous = from;
    }
    if (from->unguarded | from->dead | (from->refs == 0)) [[unlikely]] {
      resumed_slow(from, t.from);  // clears t_previous if it frees `from` (destroy())
    }
    if (self->in_exc) [[unlikely]] {
      raise_switched_in(self);
    }
    return;
  }
#endif
  std::any value;
  put(value);
  std::any got = switch_slow(target, std::move(value), nullptr);
  t_current->in_value = std::move(got);
}

// resume() switches to `target` delivering no value, and discards the value
// the caller is resumed with: the hub's switch (park and run).
[[gnu::cold]] void drop_value(std::any& slot) noexcept;  // (fiber.hpp)
// A value someone switched in anyway (a manual switch_to into a parked
// fiber) is dropped with drop_value(): its destructor may switch (the last
// handle of a suspended fiber unwinds it, and that fiber's result comes back
// into this very slot), so it must not run while the slot still holds it.
[[gnu::always_inline]] inline void resume(fiber_impl* target) {
  switch_put(
      target, [](std::any & slot) __attribute__((always_inline)) { slot.reset(); });
  if (t_current->in_value.has_value()) [[unlikely]] {
    drop_value(t_current->in_value);
  }
}
// resume_noting_switcher() is resume() that also records who resumed the
// caller (previous_impl()), and leaves a value it was resumed with in its
// in_value for the caller to drop: the hub's park, which must tell the hub's
// own resume from a fiber's manual switch into a parked fiber.
[[gnu::always_inline]] inline void resume_noting_switcher(fiber_impl* target) {
  switch_put<true>(
      target, [](std::any & slot) __attribute__((always_inline)) { slot.reset(); });
}
// ref()/unref() adjust the reference count; the last unref destroys (unwinding if suspended).
inline void ref(fiber_impl* f) noexcept {
  ++f->refs;
}
void unref(fiber_impl* f) noexcept;
// release_parent() makes a fiber that will never run again (a task that
// finished or never started) hold the thread's main fiber instead of its
// parent: a handle kept on it must not keep the hub fiber alive (the hub
// could not unwind, and dropping the handle after the thread ended would
// reach into that dead hub). The fiber layer does it for a finished task.
void release_parent(fiber_impl* f) noexcept;

// ensure_stack() gives a created fiber that never ran its stack now instead
// of at its first switch (the hub maps its own at creation, so that failure
// is a hub-creation error). Throws std::system_error.
void ensure_stack(fiber_impl* f);

// check_stack_size() validates a requested `stack_size` (0 = default) for the
// fiber called `name`; throws fiber_error naming it.
void check_stack_size(std::size_t stack_size, const std::string& name);

template <class T>
struct callable_arg {};
template <class R, class C, class A>
struct callable_arg<R (C::*)(A)> {
  using type = A;
};
template <class R, class C, class A>
struct callable_arg<R (C::*)(A) const> {
  using type = A;
};
template <class R, class C, class A>
struct callable_arg<R (C::*)(A) noexcept> {
  using type = A;
};
template <class R, class C, class A>
struct callable_arg<R (C::*)(A) const noexcept> {
  using type = A;
};
template <class R, class A>
struct callable_arg<R (*)(A)> {
  using type = A;
};
template <class R, class A>
struct callable_arg<R (*)(A) noexcept> {
  using type = A;
};

template <class Fn, class = void>
struct single_arg_of {};
template <class Fn>
struct single_arg_of<Fn, std::void_t<decltype(&Fn::operator())>> : callable_arg<decltype(&Fn::operator())> {};
template <class Fn>
struct single_arg_of<Fn, std::enable_if_t<std::is_pointer_v<Fn>>> : callable_arg<Fn> {};

template <class R>
std::any wrap_result(R&& r) {
  if constexpr (std::is_same_v<std::decay_t<R>, std::any>) {
    return std::forward<R>(r);
  } else {
    return std::any(std::forward<R>(r));
  }
}

// fiber_body is a fiber_impl that owns a callable of type Fn.
template <class Fn>
class fiber_body final : public fiber_impl {
 public:
  template <class F>
  fiber_body(F&& fn, std::size_t stack_size, std::string&& name) : fiber_impl(stack_size, std::move(name)) {
    try {
      _fn.emplace(std::forward<F>(fn));
    } catch (...) {
      // No fiber is made: give back the reference on the parent taken by
      // fiber_impl's constructor (destroy() never runs for this block).
      unref(std::exchange(parent, nullptr));
      throw;
    }
  }

  // run() calls the callable with the first switch's value `arg` (the
  // caller's local: a reference parameter binds to it), dropping whatever
  // the callable does not keep before it runs.
  std::any run(std::any&& arg) override {
    Fn& fn = *_fn;
    if constexpr (std::is_invocable_v<Fn&>) {
      arg.reset();
      return call([&] { return fn(); });
    } else if constexpr (std::is_invocable_v<Fn&, std::any&&>) {
      return call([&] { return fn(std::move(arg)); });
    } else {
      using A = typename single_arg_of<Fn>::type;
      if constexpr (std::is_reference_v<A>) {
        return call([&] { return fn(::cogent::any_value_cast<A>(std::move(arg))); });
      } else {
        A a = ::cogent::any_value_cast<A>(std::move(arg));  // a rejected value drops with arg
        arg.reset();  // (a copy-only type was copied out)
        return call([&] { return fn(std::move(a)); });
      }
    }
  }
  void release_body() noexcept override { _fn.reset(); }

 private:
  template <class Call>
  static std::any call(Call&& c) {
    if constexpr (std::is_void_v<decltype(c())>) {
      c();
      return {};
    } else {
      return wrap_result(c());
    }
  }
  std::optional<Fn> _fn;
};

}  // namespace detail
}  // namespace cogent

#pragma GCC visibility pop
