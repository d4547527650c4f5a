// fiber/fiber.hpp — greenlet-style fibers: manual switching, parent chain,
// values and exceptions passed on switch, throw into a fiber, unwinding destroy.
//
// Defines cogent::fiber (a reference-counted handle to a fiber),
// cogent::fiber_options, cogent::fiber_error (misuse) and cogent::fiber_exit
// (greenlet's GreenletExit).
//
// Semantics, as in Python's greenlet:
//  - A fiber runs a callable on its own stack. It does not run until first
//    switched to; the value of that first switch becomes the callable's
//    argument. Later switches into it make its pending switch_to() return the
//    value passed.
//  - Every thread has an implicit main fiber (fiber::current() before any
//    switch); it is never dead.
//  - Parent chain: a fiber's parent defaults to the fiber that created it. When
//    a fiber finishes, its return value goes to its parent's pending
//    switch_to(); an uncaught exception is re-raised there instead. Switching
//    to a dead fiber switches to its parent (up the chain).
//  - throw_in(e) raises e at the fiber's suspension point; into a fiber that
//    never started, the fiber dies without running its callable and e goes to
//    its parent. fiber_exit kills quietly: it is caught at the fiber's entry and
//    its value is delivered to the parent as a normal return value.
//  - When the last handle to a suspended, started fiber goes away, the fiber is
//    unwound: fiber_exit is raised at its suspension point so destructors run
//    (greenlet's kill-on-GC), then its stack is released. A child holds a
//    handle on its parent (it returns there), and there is no cycle collector:
//    a suspended fiber that keeps, on its own stack, a handle to a child that
//    never finishes is kept alive by that child. Let such a child finish, or
//    kill the parent first: throw_in(std::make_exception_ptr(fiber_exit{})).
//
// Values: switch_to() carries a std::any (a type-erased value, like greenlet's
// *args); small values (ints, pointers, small structs) move without allocating.
// The typed helpers switch_to<T>() and fiber callables taking a typed argument
// any_cast for you and throw fiber_error naming the fiber on a type mismatch.
//
// Floating point: each fiber keeps its own rounding and denormal modes (the
// MXCSR and x87 control word are saved per fiber); the sticky exception flags
// (fetestexcept) are cleared when a fiber switches away (keeping them would
// cost a pipeline serialization on every switch; see detail/context.hpp).
//
// Exceptions in flight: each fiber has its own C++ exception state. A fiber
// that switches away inside a catch block finds its exception (what `throw;`
// and std::current_exception() see) when it comes back, whatever the others
// caught meanwhile; std::uncaught_exceptions() counts only the calling
// fiber's unwinding (a destructor that blocks while a killed fiber unwinds
// does not make scope guards in other fibers think they are unwinding).
// A new fiber starts outside any handler. One C++ limit stays: a fiber
// suspended inside a destructor run by unwinding must not be killed or
// thrown into there (fiber_exit would leave a destructor during unwinding:
// std::terminate); let such a destructor finish its wait first.
//
// Threads: a fiber belongs to the thread that created it. Switching to it, or
// copying/destroying handles to it, from another thread is misuse
// (switch_to() throws fiber_error; so it does once that thread has ended). Handles are not thread-safe.
//
// Example:
//   cogent::fiber ping, pong;
//   ping = cogent::fiber([&](int n) {
//     while (n < 3) n = pong.switch_to<int>(n + 1);
//     return n;
//   });
//   pong = cogent::fiber([&](int n) {
//     while (true) n = ping.switch_to<int>(n + 1);
//   });
//   int last = ping.switch_to<int>(0);  // 0 -> pong 1 -> ping 2 -> pong 3 -> ping 4: returns 4 to main
#pragma once
// Everything declared in cogent headers is exported from the library (built with -fvisibility=hidden).
#pragma GCC visibility push(default)

#include <any>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include "fiber/stack.hpp"

namespace cogent {

// fiber_error is thrown for misuse: a parent cycle, a switch to a fiber of
// another thread, a bad stack size, a value of the wrong type. The message
// names the fiber.
class fiber_error : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

// fiber_exit kills a fiber quietly (greenlet's GreenletExit). Raise it inside
// a fiber, or throw_in() it: it unwinds the fiber's stack and the fiber
// finishes normally, its value() going to the parent.
//
// It deliberately does NOT derive from std::exception, so `catch (const
// std::exception&)` in user code does not swallow a kill (gevent #838). Code
// that uses `catch (...)` must rethrow.
class fiber_exit {
 public:
  fiber_exit() = default;
  explicit fiber_exit(std::any value) : _value(std::move(value)) {}
  virtual ~fiber_exit() = default;
  const std::any& value() const noexcept { return _value; }
  std::any& value() noexcept { return _value; }
  virtual const char* what() const noexcept { return "cogent::fiber_exit"; }

 private:
  std::any _value;
};

// fiber_options configures a new fiber.
struct fiber_options {
  // stack_size is the usable stack in bytes; 0 = the default,
  // default_stack_size() (256 KiB unless set_default_stack_size() changed it;
  // lazily committed). Must be 0 or within [stack_limits::min_size,
  // stack_limits::max_size], else fiber_error.
  std::size_t stack_size = 0;
  // name is shown in errors and overflow reports; empty = "fiber-<id>".
  std::string name;
};

namespace detail {
class fiber_impl;
[[noreturn]] void throw_bad_value(const char* expected, const std::type_info& got);
// demangled() is a type's C++ name ("std::string", not "NSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE").
std::string demangled(const char* mangled);
// drop_value() empties `slot` (a fiber's incoming value nobody takes): the
// value leaves the slot before it is destroyed, since its destructor may
// switch (the last handle to a suspended fiber) and another value be written
// into the slot meanwhile. Out of line: the switch paths stay small.
[[gnu::cold]] void drop_value(std::any& slot) noexcept;
// take_value() moves the value out of `slot` and leaves it empty (cold: the
// rejected-value path of switch_to<T>()).
[[gnu::cold]] std::any take_value(std::any& slot) noexcept;
}  // namespace detail

// fiber is a reference-counted handle to a fiber (copy = another reference).
// An empty handle (default-constructed) refers to nothing: on it dead() and
// started() are false and id() is 0; switching, throw_in(), parent(),
// set_parent() and name() throw fiber_error.
class fiber {
 public:
  fiber() noexcept = default;

  // fiber(fn, opts) creates a fiber that will run fn. fn may take no argument,
  // a std::any (the first switch's value) or a T (any_cast from it); it may
  // return void, std::any, or a value (wrapped in std::any). The fiber does not
  // run until first switched to. Its parent is the creating fiber. Its stack
  // is allocated by that first switch (which throws std::system_error if no
  // memory can be mapped) and released as soon as the fiber finishes.
  // Throws fiber_error for a bad stack size, std::bad_alloc if no memory.
  template <class Fn, class = std::enable_if_t<!std::is_same_v<std::decay_t<Fn>, fiber>>>
  explicit fiber(Fn&& fn, fiber_options opts = {});

  // Copies share the fiber (reference counted); moves leave the source empty.
  // Never switch.
  fiber(const fiber& o) noexcept;
  fiber(fiber&& o) noexcept : _impl(std::exchange(o._impl, nullptr)) {}
  // operator=() drops the reference this handle held first, like ~fiber():
  // if that was the last one to a suspended fiber, it is unwound — may switch.
  fiber& operator=(const fiber& o) noexcept;
  fiber& operator=(fiber&& o) noexcept;
  // ~fiber() drops a reference; the last one unwinds a suspended fiber (see
  // banner): may switch (to that fiber and back).
  ~fiber();

  // current() returns the fiber running on this thread (the main fiber if no
  // other was switched to). Never switches.
  static fiber current() noexcept;

  // switch_to() suspends the calling fiber and runs this one (or its first live
  // ancestor if this one is dead), delivering `value`. Returns the value of the
  // next switch back into the caller (or the return value of a child that
  // finished with the caller as parent); rethrows an exception thrown into the
  // caller or raised by such a child. Switching to the running fiber returns
  // `value` at once. May switch. Throws fiber_error if this handle is empty or
  // the fiber belongs to another thread, std::system_error if a fiber's first
  // switch cannot map its stack (nothing switched).
  std::any switch_to(std::any value = {});  // inline (below): see detail::switch_put()

  // switch_to<T>(value) is switch_to() with the result any_cast to T
  // (T = void discards it). Throws fiber_error naming the types on a mismatch.
  // T is a value type: the value received lives in the caller's slot only
  // until the next switch in, so a reference to it would dangle.
  template <class T, class V = std::any>
  T switch_to(V&& value = {});

  // throw_in() raises `e` in this fiber at its suspension point and switches to
  // it; returns like switch_to(). Into a fiber that never started, the fiber
  // dies without running and `e` goes to its parent. Into one that finished,
  // `e` goes to its parent chain (as switch_to() does), except a fiber_exit,
  // which the dead fiber eats: the switch carries its value() instead
  // (greenlet), so killing a finished child returns that value to the
  // caller. Default: fiber_exit.
  // A fiber_exit's value is copied out, never moved: the same exception_ptr
  // may be thrown into several fibers, each returning the value.
  // Throws fiber_error for a null `e` or an empty handle.
  std::any throw_in(std::exception_ptr e);
  std::any throw_in() { return throw_in(std::make_exception_ptr(fiber_exit{})); }

  // parent() returns the parent (empty for the main fiber). Never switches.
  fiber parent() const;
  // set_parent() re-parents this fiber. Throws fiber_error if that would make
  // a cycle, if p is empty, if p belongs to another thread, or if the caller
  // is not on this fiber's thread. Dropping the
  // old parent's reference may unwind it if it was the last (may switch).
  void set_parent(const fiber& p);

  // dead() is true once the fiber finished (returned, raised, or was killed).
  // Never switches.
  bool dead() const noexcept;
  // started() is true once the fiber was first switched to. Never switches.
  bool started() const noexcept;
  // name() is the name given in fiber_options or "fiber-<id>" ("main" for a
  // main fiber). Never switches.
  std::string name() const;
  // id() is a process-unique number (main fibers included). Never switches.
  std::uint64_t id() const noexcept;

  explicit operator bool() const noexcept { return _impl != nullptr; }
  friend bool operator==(const fiber& a, const fiber& b) noexcept { return a._impl == b._impl; }

  // impl() is for cogent's own layers (the hub); not part of the public API.
  detail::fiber_impl* impl() const noexcept { return _impl; }
  static fiber adopt(detail::fiber_impl* f) noexcept;  // takes a reference the caller already owns
  [[noreturn]] static void throw_empty();              // fiber_error: an empty handle was used

 private:
  detail::fiber_impl* _impl = nullptr;
};

template <class T>
T any_value_cast(std::any&& v) {
  if constexpr (std::is_void_v<T>) {
    return;
  } else if constexpr (std::is_same_v<std::decay_t<T>, std::any>) {
    return std::move(v);
  } else {
    if (auto* p = std::any_cast<std::decay_t<T>>(&v)) {
      return std::move(*p);
    }
    detail::throw_bad_value(typeid(std::decay_t<T>).name(), v.type());
  }
}

}  // namespace cogent

#include "fiber/detail/fiber_impl.hpp"

namespace cogent {

[[gnu::always_inline]] inline std::any fiber::switch_to(std::any value) {
  if (_impl == nullptr) [[unlikely]] {
    throw_empty();
  }
  detail::switch_put(
      _impl, [&](std::any & slot) __attribute__((always_inline)) { slot = std::move(value); });
  return std::move(detail::t_current->in_value);
}

// The typed switch builds the value in the receiver's slot and casts the
// received one in place: no intermediate std::any on either side.
template <class T, class V>
[[gnu::always_inline]] inline T fiber::switch_to(V&& value) {
  static_assert(!std::is_reference_v<T>, "cogent::fiber::switch_to<T>: T must be a value type, not a reference");
  using D = std::decay_t<V>;
  if (_impl == nullptr) [[unlikely]] {
    throw_empty();
  }
  detail::switch_put(
      _impl, [&](std::any & slot) __attribute__((always_inline)) {
        if constexpr (std::is_same_v<D, std::any>) {
          slot = std::forward<V>(value);
        } else if constexpr (std::is_trivially_copyable_v<D> && std::is_copy_assignable_v<D>) {
          // A slot left holding a D by the last typed switch is reused in place.
          // (has_value() first: any_cast on an empty any falls back to comparing
          // type names with strcmp.)
          if (auto* p = slot.has_value() ? std::any_cast<D>(&slot) : nullptr) {
            *p = value;
          } else {
            slot.template emplace<D>(value);
          }
        } else {
          slot.template emplace<D>(std::forward<V>(value));
        }
      });
  std::any& got = detail::t_current->in_value;
  if constexpr (std::is_void_v<T>) {
    if (got.has_value()) [[unlikely]] {
      detail::drop_value(got);
    }
  } else if constexpr (std::is_same_v<std::decay_t<T>, std::any>) {
    return std::move(got);
  } else {
    auto* p = std::any_cast<std::decay_t<T>>(&got);
    if (p == nullptr) [[unlikely]] {
      // Rejected: the value leaves the slot now (dropped as the error
      // unwinds), never to be destroyed later by whoever next writes it.
      return any_value_cast<T>(detail::take_value(got));  // throws fiber_error naming the types
    }
    T result(std::move(*p));
    if constexpr (!std::is_trivially_copyable_v<std::decay_t<T>>) {
      got.reset();  // a trivially copyable value may stay: it owns nothing, the next switch in overwrites it
    }
    return result;
  }
}

template <class Fn, class>
fiber::fiber(Fn&& fn, fiber_options opts) {
  detail::check_stack_size(opts.stack_size, opts.name);
  // The stack is mapped (or taken from the pool) at the first switch.
  _impl =
      new detail::fiber_body<std::decay_t<Fn>>(std::forward<Fn>(fn), opts.stack_size, std::move(opts.name));
}

}  // namespace cogent

#pragma GCC visibility pop
