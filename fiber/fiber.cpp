// fiber/fiber.cpp — the switch core: current fiber, switch with value or
// exception, entry/finish to parent, unwind-on-last-reference, overflow checks,
// AddressSanitizer fiber annotations.
#include "fiber/fiber.hpp"

#include <cxxabi.h>

#include <atomic>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <memory>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace cogent {
namespace detail {

// Hot thread-locals use initial-exec TLS: no __tls_get_addr call on a switch.
#define COGENT_TLS thread_local __attribute__((tls_model("initial-exec")))

constinit COGENT_TLS fiber_impl* t_current = nullptr;
constinit COGENT_TLS fiber_impl* t_previous = nullptr;  // the fiber whose switch resumed the running one

namespace {

// A thread's serial number identifies it: unlike the address of a
// thread-local, it is never reused by a later thread (a fiber of an ended
// thread must not pass for one of the thread that got its TLS block).
// 32 bits keep the hot part of a control block as compact as before (4e9 threads).
std::atomic<std::uint32_t> g_next_thread{1};
COGENT_TLS std::uint32_t t_thread = 0;
std::uint32_t this_thread_tag() noexcept {
  if (t_thread == 0) [[unlikely]] {
    // The first fiber of this thread (its main fiber or a created one) is
    // being made: every switch on this thread comes after this.
    t_thread = g_next_thread.fetch_add(1, std::memory_order_relaxed);
    init_eh_state();
  }
  return t_thread;
}

std::atomic<std::uint64_t> g_next_id{1};
// Ids are handed to threads in blocks: creating a fiber costs no atomic RMW.
constexpr std::uint64_t id_block = 1024;
COGENT_TLS std::uint64_t t_next_id = 0;
COGENT_TLS std::uint64_t t_id_end = 0;
std::uint64_t next_id() noexcept {
  if (t_next_id == t_id_end) [[unlikely]] {
    t_next_id = g_next_id.fetch_add(id_block, std::memory_order_relaxed);
    t_id_end = t_next_id + id_block;
  }
  return t_next_id++;
}

// main_holder owns the thread's main fiber reference and drops it at thread exit.
class main_fiber final : public fiber_impl {
 public:
  main_fiber() : fiber_impl(nullptr) {}
  std::any run(std::any&&) override { return {}; }
  void release_body() noexcept override {}
};

// t_main_ended: this thread's main fiber is gone (its thread is exiting).
thread_local constinit bool t_main_ended = false;

struct main_holder {
  fiber_impl* main = nullptr;
  ~main_holder() {
    t_main_ended = true;
    if (main != nullptr) {
      // The main fiber ends with its thread: its fiber_local values go now,
      // while it is still current (a value's destructor that reads or sets a
      // fiber_local gets main's; values made that way go in the next round).
      // Not left to ~fiber_impl: a live child of main (one kept in a
      // fiber_local, say) holds a reference on it, so it may never be freed.
      main->sched.locals.release_at_exit();
      t_current = nullptr;
      unref(main);
    }
  }
};
thread_local main_holder t_main;

bool inspect_fault(const void* addr, char* buf, std::size_t len) noexcept {
  fiber_impl* f = t_current;
  if (f == nullptr || f->is_main || !f->stk.guarded) {
    return false;
  }
  auto a = static_cast<const char*>(addr);
  // The guard page, plus the slack a large frame may skip over into.
  if (a >= f->stk.bottom - 4096 && a < f->stk.bottom) {
    f->write_name(buf, len);
    return true;
  }
  return false;
}

[[noreturn]] void throw_error(const std::string& msg) {
  throw fiber_error(msg);
}

// ---- the switch ------------------------------------------------------------

void destroy(fiber_impl* f) noexcept;
void kill_for_destroy(fiber_impl* f) noexcept;
fiber_impl* drop_ref(fiber_impl* f) noexcept;
[[noreturn]] void entry(transfer t) noexcept;
}  // namespace
void give_stack(fiber_impl* f);
namespace {
void kill_orphan(fiber_impl* f) noexcept;

// resumed() runs first in a fiber that was just resumed: it saves the context
// of the fiber that jumped to us, finishes the ASan switch, and (resumed_slow)
// checks the canary of an unguarded stack and frees a finished fiber nobody
// references any more (it cannot free itself: it was running on the stack
// being freed). detail::switch_put() inlines the same steps for its fast path.
inline void resumed(transfer t) noexcept {
  auto* from = static_cast<fiber_impl*>(t.data);
  from->ctx = t.from;
  t_previous = from;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(t_current->asan_fake_stack, &from->asan_bottom, &from->asan_size);
  if (from->dead) {
    // The finished fiber's last frames (entry's) never return, so their redzones stay poisoned in the
    // shadow; the next fiber on this pooled stack would trip over them in uninstrumented code (ASan's
    // own __asan_handle_no_return). Clear the shadow of what was live: its saved sp up to the top.
    auto* lo = static_cast<char*>(t.from);
    auto* hi = static_cast<const char*>(from->asan_bottom) + from->asan_size;
    if (lo < hi) {
      __asan_unpoison_memory_region(lo, static_cast<std::size_t>(hi - lo));
    }
  }
#endif
  if (from->unguarded | from->dead | (from->refs == 0)) [[unlikely]] {
    resumed_slow(from, t.from);
  }
}

inline void jump(fiber_impl* self, fiber_impl* target) noexcept {
  t_current = target;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(self->dead ? nullptr : &self->asan_fake_stack, target->asan_bottom,
                                 target->asan_size);
#endif
  transfer t = jump_to(self, target);
  resumed(t);
}

// release_locals() destroys a finished fiber's fiber_local values. We are
// inside the switch that delivers its result to us (resumed_slow()), and a
// value's destructor may switch (dropping the last handle of a suspended
// fiber unwinds it): keep the value or exception being delivered across it,
// as kill_orphan() does.
[[gnu::noinline, gnu::cold]] void release_locals(fiber_impl* f) noexcept {
  fiber_impl* self = t_current;
  std::any value = std::move(self->in_value);
  std::exception_ptr exc = std::move(self->in_exc);
  fiber_impl* previous = t_previous;
  f->sched.locals.release();
  self->in_value = std::move(value);
  self->in_exc = std::move(exc);
  t_previous = previous;  // f: still alive (destroy() clears it if it frees f)
}

}  // namespace

void release_parent(fiber_impl* f) noexcept {
  fiber_impl* m = t_main.main;
  if (m != nullptr && f->parent != m) {
    ref(m);
    unref(std::exchange(f->parent, m));
  }
}

void resumed_slow(fiber_impl* from, const void* from_sp) noexcept {
  if (from->unguarded) {
    // Canary stacks: the saved stack pointer and the canary must both be in bounds.
    auto sp = static_cast<const char*>(from_sp);
    if (sp < from->stk.bottom + stack_canary_bytes || !canary_intact(from->stk.bottom)) {
      char name[128];
      from->write_name(name, sizeof name);
      report_overflow_and_abort(name);
    }
  }
  if (from->dead) {
    // Checked above too: a fiber that overflowed and then finished is named, and its stack is
    // not pooled dirty. We are off its stack now: it goes back to the pool at once.
    const stack s = from->stk;
    from->stk = stack{};
    release_stack(s);
    from->unguarded = false;
    if (from->sched.locals.storage != nullptr) [[unlikely]] {
      // Its fiber_local values go with it, not with its last handle. A value
      // may hold that last handle (a fiber_local<task_base> set to
      // current_task()): keep `from` alive across them, its count is read below.
      ref(from);
      release_locals(from);
      --from->refs;
    }
    if (from->refs == 0) {
      // Its destruction runs user code (the values it still holds) that may
      // switch: keep what was delivered to us, as release_locals() does.
      fiber_impl* self = t_current;
      std::any value = std::move(self->in_value);
      std::exception_ptr exc = std::move(self->in_exc);
      destroy(from);  // clears t_previous (it named `from`)
      self->in_value = std::move(value);
      self->in_exc = std::move(exc);
    } else if (from->is_task) {
      release_parent(from);
    }
    return;
  }
  if (from->refs == 0) {
    kill_orphan(from);  // suspended with no handle left (main fibers always have one)
  }
}

void raise_switched_in(fiber_impl* self) {
  std::rethrow_exception(std::exchange(self->in_exc, nullptr));
}

fiber_impl* init_thread() {
  auto* m = new main_fiber;
  if (!t_main_ended) {
    t_main.main = m;  // (after thread exit destroyed t_main: its maker frees it, see kill_for_destroy())
  }
  t_current = m;
  return m;
}

namespace {

[[noreturn]] void entry(transfer t) noexcept {
  scrub_fp_flags(t.from);  // as jump_context() does on every other resume
  resumed(t);  // the thread's exception state is empty: the jumper parked its own (eh_park)
  fiber_impl* self = t_current;
  std::any result;
  std::exception_ptr error;
  try {
    if (self->in_exc) {
      std::rethrow_exception(std::exchange(self->in_exc, nullptr));  // thrown in before start: never runs
    }
    // The first switch's value leaves the slot now (the next switch in
    // writes it): run() hands it to the callable and drops what it does not
    // take. A reference parameter binds to `arg`, which lives until the
    // callable returns; this scope ends before the last jump (this frame is
    // never unwound).
    std::any arg = std::move(self->in_value);
    self->in_value.reset();
    result = self->run(std::move(arg));
  } catch (fiber_exit& e) {
    result = e.value();  // (a copy: the exception object may be thrown again, as greenlet's is not consumed)
  } catch (...) {
    error = std::current_exception();
  }
  self->release_body();
  self->dead = true;
  fiber_impl* target = self->parent;
  for (;;) {
    while (target->dead) {
      target = target->parent;
    }
    if (target->ctx != nullptr || target->is_main) {
      break;
    }
    // A parent that never ran starts now, with our result as its argument. If
    // it cannot get a stack it dies without running and the mapping error goes
    // on up the chain instead.
    try {
      give_stack(target);
      break;
    } catch (...) {
      target->dead = true;
      result.reset();
      error = std::current_exception();
    }
  }
  target->in_value = std::move(result);
  target->in_exc = std::move(error);
  target->started = true;
  jump(self, target);
  __builtin_unreachable();  // a dead fiber is never resumed
}

void destroy(fiber_impl* f) noexcept {
  // A loop, not a recursion through unref(): a chain of dead fibers, each
  // held only by its child's parent reference, goes in one frame however long.
  for (;;) {
    if (t_previous == f) {
      t_previous = nullptr;  // previous_impl() never dangles
    }
    fiber_impl* parent = f->parent;
    stack s = f->stk;  // empty unless it never finished (a leaked unwind)
    if (auto hook = fiber_free_hook.load(std::memory_order_relaxed); hook != nullptr) [[unlikely]] {
      hook(f);
    }
    delete f;
    if (s.bottom != nullptr) {
      release_stack(s);
    }
    if (parent == nullptr || --parent->refs != 0) {
      return;
    }
    if (!parent->started || parent->dead || parent->is_main) {
      f = parent;  // as unref() would: destroy it too
      continue;
    }
    ++parent->refs;  // unref() drops it again and does the rest (a suspended parent is unwound)
    unref(parent);
    return;
  }
}

// kill_for_destroy() unwinds a suspended fiber whose last reference went away:
// fiber_exit is raised at its suspension point with us as its parent. Its old
// parent's reference (the one it held) is dropped afterwards, in the same
// loop: a chain of suspended fibers each held only by its child unwinds one
// after the other, not in one nested call per fiber.
void kill_for_destroy(fiber_impl* f) noexcept {
  // A handle dropped by a thread_local destroyed after the thread's main
  // fiber (~main_holder) has no fiber to unwind from: a main made for it
  // goes again right after (init_thread() does not register it).
  const bool exiting_main = t_current == nullptr && t_main_ended;
  fiber_impl* self = current_impl();
  for (;;) {
    f->refs = 1;  // alive again for the duration of the unwind
    ref(self);
    fiber_impl* old_parent = std::exchange(f->parent, self);
    try {
      switch_slow(f, {}, std::make_exception_ptr(fiber_exit{}));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "cogent: fiber '%s' raised while being destroyed: %s\n", f->name().c_str(),
                   e.what());
    } catch (...) {
      std::fprintf(stderr, "cogent: fiber '%s' raised while being destroyed\n", f->name().c_str());
    }
    if (!f->dead) {
      // It caught fiber_exit and switched back instead of dying: we cannot
      // free a stack that is still in use. Leak it, loudly.
      std::fprintf(stderr, "cogent: fiber '%s' swallowed fiber_exit during destruction; its stack is leaked\n",
                   f->name().c_str());
    } else if (--f->refs == 0) {
      destroy(f);
    }
    // The old parent's reference: a suspended parent left unreferenced is
    // unwound by the next turn of this loop.
    f = old_parent != nullptr ? drop_ref(old_parent) : nullptr;
    if (f == nullptr) {
      break;
    }
  }
  if (exiting_main) {
    self->sched.locals.release_at_exit();
    t_current = nullptr;
    unref(self);
  }
}

// kill_orphan() unwinds a fiber that dropped its last handle to itself while
// running and then switched away without finishing: nothing can reach it any
// more, so it is killed like any suspended fiber whose last handle went away.
// We are inside a switch into the current fiber: keep the value or exception
// that switch is delivering across the nested switches of the kill.
[[gnu::noinline, gnu::cold]] void kill_orphan(fiber_impl* f) noexcept {
  fiber_impl* self = t_current;
  std::any value = std::move(self->in_value);
  std::exception_ptr exc = std::move(self->in_exc);
  kill_for_destroy(f);
  self->in_value = std::move(value);
  self->in_exc = std::move(exc);
}

}  // namespace

// ---- fiber_impl ------------------------------------------------------------

fiber_impl::fiber_impl(std::size_t stack_size, std::string&& name)
    : thread_tag(this_thread_tag()),
      id(next_id()),
      user_name(name.empty() ? nullptr : std::make_unique<std::string>(std::move(name))),
      stack_request(static_cast<std::uint32_t>(stack_size)) {  // validated: at most stack_limits::max_size
  parent = t_current != nullptr ? t_current : init_thread();
  ref(parent);
}

// give_stack() maps (or takes from the pool) the stack of a fiber about to be
// started and prepares its first context. Throws std::system_error.
[[gnu::noinline]] void give_stack(fiber_impl* f) {
  // Field by field from the registers the stack came back in: a struct copy
  // here compiles to a spill and an overlapping reload (a store-forwarding stall).
  const stack s = allocate_stack(f->stack_request);
  f->stk.bottom = s.bottom;
  f->stk.size = s.size;
  f->stk.guarded = s.guarded;
  f->stk.pooled = s.pooled;
  f->stk.marker = s.marker;
  f->unguarded = !s.guarded;
  f->ctx = make_context(s.bottom + s.size, s.size, entry);
#if defined(__SANITIZE_ADDRESS__)
  f->asan_bottom = f->stk.bottom;
  f->asan_size = f->stk.size;
  __asan_unpoison_memory_region(f->stk.bottom, f->stk.size);  // a pooled stack is poisoned while free
#endif
}
void ensure_stack(fiber_impl* f) {
  if (f->ctx == nullptr && !f->is_main && !f->dead) {
    give_stack(f);
  }
}

fiber_impl::fiber_impl(std::nullptr_t) : started(true), is_main(true), thread_tag(this_thread_tag()), id(next_id()) {
  install_overflow_handler(inspect_fault);
}

fiber_impl::~fiber_impl() = default;

std::string fiber_impl::name() const {
  if (user_name != nullptr) {
    return *user_name;  // whole (write_name() cuts it to its buffer)
  }
  char buf[128];
  write_name(buf, sizeof buf);
  return buf;
}

void fiber_impl::write_name(char* buf, std::size_t len) const noexcept {
  if (user_name != nullptr) {
    std::snprintf(buf, len, "%s", user_name->c_str());
  } else if (is_main) {
    std::snprintf(buf, len, "main");
  } else {
    std::snprintf(buf, len, "%s-%llu", is_task ? "task" : "fiber", static_cast<unsigned long long>(id));
  }
}

fiber_impl* thread_main_impl() {
  current_impl();
  return t_main.main;
}

// switch_slow() is the whole switch, every case handled (see detail::switch_put()).
std::any switch_slow(fiber_impl* target, std::any&& value, std::exception_ptr exc) {
  fiber_impl* self = t_current;
  if (self == nullptr) [[unlikely]] {
    self = init_thread();
  }
  if (target->thread_tag != this_thread_tag()) [[unlikely]] {
    throw_error("cogent: cannot switch to fiber '" + target->name() + "': it belongs to another thread");
  }
  while (target->dead) {
    target = target->parent;
  }
  if (target == self) [[unlikely]] {
    if (exc) {
      std::rethrow_exception(std::move(exc));
    }
    return std::move(value);
  }
  if (target->ctx == nullptr) {
    // Its first switch (or an exception thrown in before it ran). If no stack
    // can be mapped it dies without running and the error goes to the caller.
    try {
      give_stack(target);
    } catch (...) {
      target->dead = true;
      throw;
    }
  }
  target->in_value = std::move(value);
  if (exc) [[unlikely]] {
    target->in_exc = std::move(exc);
  }
  target->started = true;
  jump(self, target);
  if (self->in_exc) [[unlikely]] {
    raise_switched_in(self);
  }
  return std::move(self->in_value);
}

namespace {
// drop_ref() drops a reference. At the last one a fiber that never started,
// is dead or is a main fiber is destroyed; a suspended one is returned, to be
// unwound (kill_for_destroy); the running fiber dropping its last handle to
// itself is freed by whoever it switches to when it finishes (see
// resumed()). Null when there is nothing to unwind.
fiber_impl* drop_ref(fiber_impl* f) noexcept {
  if (--f->refs != 0) {
    return nullptr;
  }
  if (!f->started || f->dead || f->is_main) {
    destroy(f);
    return nullptr;
  }
  return f != t_current ? f : nullptr;
}
}  // namespace

void unref(fiber_impl* f) noexcept {
  if (fiber_impl* suspended = drop_ref(f)) {
    kill_for_destroy(suspended);
  }
}

void check_stack_size(std::size_t stack_size, const std::string& name) {
  if (stack_size != 0 && (stack_size < stack_limits::min_size || stack_size > stack_limits::max_size)) {
    throw_error("cogent: fiber '" + (name.empty() ? std::string("<unnamed>") : name) + "': stack_size " +
                std::to_string(stack_size) + " is outside [" + std::to_string(stack_limits::min_size) + ", " +
                std::to_string(stack_limits::max_size) + "]");
  }
  current_impl();  // the thread's main fiber (and the overflow handler) exist before any other
}

void drop_value(std::any& slot) noexcept {
  std::any dropped = take_value(slot);
}

std::any take_value(std::any& slot) noexcept {
  std::any v = std::move(slot);
  slot.reset();
  return v;
}

std::string demangled(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> p(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  return status == 0 && p != nullptr ? std::string(p.get()) : std::string(mangled);
}

void throw_bad_value(const char* expected, const std::type_info& got) {
  throw_error(std::string("cogent: fiber '") + current_impl()->name() + "' received a value of type " +
              (got == typeid(void) ? std::string("<none>") : demangled(got.name())) + " where " +
              demangled(expected) + " was expected");
}

}  // namespace detail

// ---- fiber handle ----------------------------------------------------------

fiber::fiber(const fiber& o) noexcept : _impl(o._impl) {
  if (_impl != nullptr) {
    detail::ref(_impl);
  }
}

fiber& fiber::operator=(const fiber& o) noexcept {
  // Read o once: unref() of the old fiber may unwind it, running code that
  // changes o.
  detail::fiber_impl* next = o._impl;
  if (next != nullptr) {
    detail::ref(next);
  }
  detail::fiber_impl* old = std::exchange(_impl, next);
  if (old != nullptr) {
    detail::unref(old);
  }
  return *this;
}

fiber& fiber::operator=(fiber&& o) noexcept {
  if (this != &o) {
    detail::fiber_impl* old = std::exchange(_impl, std::exchange(o._impl, nullptr));
    if (old != nullptr) {
      detail::unref(old);
    }
  }
  return *this;
}

fiber::~fiber() {
  if (_impl != nullptr) {
    detail::unref(_impl);
  }
}

fiber fiber::current() noexcept {
  detail::fiber_impl* f = detail::current_impl();
  detail::ref(f);
  return adopt(f);
}

fiber fiber::adopt(detail::fiber_impl* f) noexcept {
  fiber h;
  h._impl = f;
  return h;
}

void fiber::throw_empty() {
  throw fiber_error("cogent: operation on an empty fiber handle");
}

static detail::fiber_impl* need(detail::fiber_impl* f) {
  if (f == nullptr) {
    fiber::throw_empty();
  }
  return f;
}

std::any fiber::throw_in(std::exception_ptr e) {
  if (!e) {
    throw fiber_error("cogent: throw_in() into fiber '" + need(_impl)->name() + "' with a null exception");
  }
  detail::fiber_impl* target = need(_impl);
  if (target->started && target->dead) {
    // As greenlet's throw() into a dead greenlet: a fiber_exit is eaten by
    // the finished fiber, turned into a return of its value, which goes on
    // to the parent chain like any switch to a dead fiber (to the caller when
    // it is the parent: killing a finished child "to be sure" is harmless).
    try {
      std::rethrow_exception(e);
    } catch (fiber_exit& x) {
      return detail::switch_slow(target, std::any(x.value()), nullptr);  // (a copy, as in entry())
    } catch (...) {
    }
  }
  return detail::switch_slow(target, {}, std::move(e));
}

fiber fiber::parent() const {
  detail::fiber_impl* p = need(_impl)->parent;
  if (p == nullptr) {
    return {};
  }
  detail::ref(p);
  return adopt(p);
}

void fiber::set_parent(const fiber& p) {
  detail::fiber_impl* self = need(_impl);
  if (p._impl == nullptr) {
    throw fiber_error("cogent: set_parent() of fiber '" + self->name() + "' to an empty handle");
  }
  if (self->is_main) {
    throw fiber_error("cogent: the main fiber cannot have a parent");
  }
  if (self->thread_tag != detail::this_thread_tag()) {
    throw fiber_error("cogent: set_parent() of fiber '" + self->name() + "' from a thread that does not own it");
  }
  if (p._impl->thread_tag != self->thread_tag) {
    throw fiber_error("cogent: set_parent() of fiber '" + self->name() + "' to fiber '" + p._impl->name() +
                      "' of another thread");
  }
  for (detail::fiber_impl* a = p._impl; a != nullptr; a = a->parent) {
    if (a == self) {
      throw fiber_error("cogent: set_parent() of fiber '" + self->name() + "' to '" + p._impl->name() +
                        "' would make a parent cycle");
    }
  }
  detail::ref(p._impl);
  detail::unref(std::exchange(self->parent, p._impl));
}

bool fiber::dead() const noexcept {
  return _impl != nullptr && _impl->dead;
}
bool fiber::started() const noexcept {
  return _impl != nullptr && _impl->started;
}
std::string fiber::name() const {
  return need(_impl)->name();
}
std::uint64_t fiber::id() const noexcept {
  return _impl != nullptr ? _impl->id : 0;
}

}  // namespace cogent
