// hub/timeout.hpp — gevent's Timeout: a deadline for whatever blocks inside a scope.
//
// Defines cogent::timeout_error, cogent::timeout (a scope object) and
// cogent::with_timeout() / try_with_timeout().
//
// A `timeout` armed in a fiber raises timeout_error at that fiber's blocking
// call when it expires (or, if the fiber is not blocked then, at its next
// blocking call inside the scope). A wait that had already ended when the
// error came — its event set, its own deadline passed, its job or IO
// complete, but the fiber not yet run (the hub was late behind a busy fiber)
// — returns its outcome; the error goes to the next blocking call, or is
// withdrawn if the scope ends first. An in-flight IO op is cancelled and its
// completion reaped before the exception is raised (invariant 1). Leaving the
// scope disarms it.
//
// timeout_error deliberately does NOT derive from std::exception, so `catch
// (const std::exception&)` does not swallow it (gevent #838: Timeout is a
// BaseException). Catch it by name, or let it reach the scope's owner.
//
// Example:
//   try {
//     cogent::timeout t(100ms);
//     std::size_t n = sock.read_some(buf, sizeof buf);   // raises timeout_error after 100 ms
//   } catch (const cogent::timeout_error& e) { ... }
//
//   auto r = cogent::try_with_timeout(1s, [&] { return q.get(); });  // std::nullopt on expiry
#pragma once
#pragma GCC visibility push(default)

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <type_traits>
#include <utility>

#include "hub/core.hpp"

namespace cogent {

class timeout;

// timeout_error is raised at a blocking point when a timeout expires.
class timeout_error {
 public:
  timeout_error(const timeout* source, std::chrono::nanoseconds after) noexcept;
  virtual ~timeout_error() = default;
  // what() says how long the timeout was.
  virtual const char* what() const noexcept;
  // source() is the timeout scope that raised it (null for a call's own timeout, e.g. task::get(timeout)).
  const timeout* source() const noexcept { return _source; }
  std::chrono::nanoseconds after() const noexcept { return _after; }

 private:
  friend class timeout;
  const timeout* _source;
  std::uint64_t _serial;  // the source scope's serial: a later scope at the same address is another one
  std::chrono::nanoseconds _after;
  char _msg[64] = {};
};

// timeout is a scope object: while it lives, blocking calls of the fiber that
// created it raise timeout_error once `d` has passed. nullopt = never, as is
// a `d` too long to represent as a deadline (nanoseconds::max()).
// Never switches. Must be destroyed on the fiber that created it (or, kept
// past that fiber's end, on its thread: it never fires once the fiber has
// finished).
class timeout {
 public:
  explicit timeout(timeout_duration d);
  ~timeout();
  timeout(const timeout&) = delete;
  timeout& operator=(const timeout&) = delete;

  // expired() is true once the deadline passed and the error was raised (or is
  // pending); false again if cancel() withdrew it before it was raised.
  bool expired() const noexcept { return _expired; }
  // cancel() disarms it. An error that fired but has not reached the fiber
  // yet is withdrawn. One that has already woken the fiber from a blocking
  // call is still raised there when another fiber (or a hub callback) cancels
  // — gevent throws an expired Timeout into its greenlet at once — and
  // withdrawn when the fiber itself cancels (leaving the scope does) before
  // its next blocking call, e.g. after a call that succeeded anyway.
  void cancel() noexcept;
  // owns() is true if `e` was raised by this scope: not an outer one, nor an
  // earlier scope that lived at the same address (another task's, on the same
  // pooled stack, whose error came here through task::get()).
  bool owns(const timeout_error& e) const noexcept { return e._source == this && e._serial == _serial; }

 private:
  friend class timeout_error;
  // pending_is_mine() is true if the fiber's pending interrupt is this
  // scope's own error — not one of an earlier scope at the same address,
  // deferred (defer_interrupt) and still to be raised.
  bool pending_is_mine() const noexcept;
  bool is_mine(const std::exception_ptr& p) const noexcept;  // p is a timeout_error of this scope
  struct node : detail::timer_node {
    timeout* self = nullptr;
  };
  node _node;
  hub* _hub = nullptr;
  detail::fiber_impl* _fiber = nullptr;
  std::chrono::nanoseconds _after{};
  std::uint64_t _serial = 0;  // unique in the process (0: never armed)
  bool _expired = false;
};

// defer_interrupt() makes `e` — a kill or Timeout caught where it cannot be
// honoured yet (a wait that must run to its end, C frames that must not be
// unwound) — the calling fiber's pending interrupt again: it is raised at the
// fiber's next blocking call. A timeout_error keeps its scope, so leaving that
// scope still withdraws it; a Timeout never replaces a pending kill. Never
// switches.
void defer_interrupt(std::exception_ptr e) noexcept;

// with_timeout() runs fn() under a timeout; timeout_error propagates on expiry.
// May switch (if fn does).
template <class Fn>
auto with_timeout(timeout_duration d, Fn&& fn) -> std::invoke_result_t<Fn&> {
  timeout t(d);
  return fn();
}

namespace detail {
// try_result is what try_with_timeout() returns for a fn returning R.
template <class R>
struct try_result {
  using type = std::optional<R>;
};
template <class T>
struct try_result<T&> {
  using type = std::optional<std::reference_wrapper<T>>;
};
template <class T>
struct try_result<T&&> {
  using type = std::optional<T>;
};
}  // namespace detail

// try_with_timeout() runs fn() under a timeout and returns std::nullopt (or
// false for a void fn) if this timeout expired — gevent's Timeout(s, False).
// Otherwise: fn's value in a std::optional (a T& result as
// std::optional<std::reference_wrapper<T>>, a T&& one moved into a
// std::optional<T>), or true for a void fn. Errors of other (outer)
// timeouts propagate.
template <class Fn>
auto try_with_timeout(timeout_duration d, Fn&& fn) {
  using R = std::invoke_result_t<Fn&>;
  using result = typename detail::try_result<R>::type;
  timeout t(d);
  try {
    if constexpr (std::is_void_v<R>) {
      fn();
      return true;
    } else {
      return result(fn());
    }
  } catch (const timeout_error& e) {
    if (!t.owns(e)) {
      throw;
    }
    if constexpr (std::is_void_v<R>) {
      return false;
    } else {
      return result();
    }
  }
}

}  // namespace cogent

#pragma GCC visibility pop
