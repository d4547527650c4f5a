// hub/local.hpp — gevent.local for cogent: values private to each fiber.
//
// Defines cogent::fiber_local<T>: one object, a separate T per fiber (task,
// plain fiber, the thread's main fiber or the hub). A fiber's value is made on
// its first access (default-constructed, or by the factory given to the
// constructor) and destroyed when that fiber ends: for a task or a plain
// fiber, right after it finishes (once its fiber has switched away for the
// last time; a suspended fiber that is destroyed unwinds, then finishes); for
// the main fiber, at thread exit. reset() destroys the calling fiber's value earlier.
//
// Values are destroyed in the fiber running at that moment (usually the hub),
// so a T's destructor must not block (it would raise hub_error) or throw. The
// fiber_local object may be destroyed before the fibers that hold values for
// it: their values are still destroyed with those fibers.
//
// Storage: each fiber keeps a small vector of (local id, value, deleter),
// attached to its control block (fiber_impl::sched.locals). Lookup is a linear
// scan: fibers typically use a handful of locals. Not thread-safe per fiber —
// a fiber belongs to one thread, so none is needed.
#pragma once
#pragma GCC visibility push(default)

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>

namespace cogent {
namespace detail {

// local_deleter destroys one stored value.
using local_deleter = void (*)(void* value) noexcept;

// new_local_id() returns a process-unique id for a fiber_local (never reused). Never switches.
std::uint64_t new_local_id() noexcept;
// find_local() returns the calling fiber's value for local `id`, or null. Never switches.
void* find_local(std::uint64_t id) noexcept;
// add_local() stores `value` (owned from now on, freed with `del`) as the
// calling fiber's value for local `id`; on allocation failure it frees it and
// rethrows. Precondition: the fiber has no value for `id`. Never switches.
void add_local(std::uint64_t id, void* value, local_deleter del);
// remove_local() detaches the calling fiber's value for `id` and returns it
// (null if none); the caller destroys it. Never switches.
void* remove_local(std::uint64_t id) noexcept;

}  // namespace detail

// fiber_local is gevent's local: each fiber that touches it sees its own T.
// Non-copyable; thread-compatible (each thread's fibers have their own values).
//
// Example:
//   cogent::fiber_local<std::string> request_id;
//   auto handle = [&](std::string id) {
//     *request_id = id;               // this task's copy only
//     cogent::sleep(1ms);             // other tasks set theirs meanwhile
//     log(*request_id);               // still `id`
//   };
//   cogent::joinall({cogent::spawn(handle, "a"), cogent::spawn(handle, "b")});
template <class T>
class fiber_local {
 public:
  // fiber_local() makes each fiber's value with T{} on its first access. Never switches.
  fiber_local() : _id(detail::new_local_id()) {}
  // fiber_local(make) makes each fiber's value with make() on its first
  // access (make may read other state, e.g. current_task()). Never switches.
  explicit fiber_local(std::function<T()> make) : _id(detail::new_local_id()), _make(std::move(make)) {}
  fiber_local(const fiber_local&) = delete;
  fiber_local& operator=(const fiber_local&) = delete;

  // get() returns the calling fiber's value, making it on first access.
  // Errors: whatever T's constructor (or make) throws. Never switches (unless make does).
  T& get() {
    if (void* v = detail::find_local(_id)) {
      return *static_cast<T*>(v);
    }
    std::unique_ptr<T> fresh = _make ? std::make_unique<T>(_make()) : std::make_unique<T>();
    T* raw = fresh.get();
    detail::add_local(_id, fresh.release(), &destroy);
    return *raw;
  }
  T& operator*() { return get(); }
  T* operator->() { return &get(); }

  // set() replaces the calling fiber's value with `v` (assigned to the value
  // get() makes first: T needs a default constructor or the factory). Never
  // switches.
  void set(T v) { get() = std::move(v); }
  // has_value() is true if the calling fiber already has a value (does not make one). Never switches.
  bool has_value() const noexcept { return detail::find_local(_id) != nullptr; }
  // reset() destroys the calling fiber's value, if any; the next access makes
  // a fresh one. Never switches.
  void reset() noexcept { destroy(detail::remove_local(_id)); }

 private:
  static void destroy(void* v) noexcept { delete static_cast<T*>(v); }
  std::uint64_t _id;
  std::function<T()> _make;
};

}  // namespace cogent

#pragma GCC visibility pop
