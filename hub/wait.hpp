// hub/wait.hpp — gevent.wait(objects, timeout, count) over tasks, events and async results.
//
// Defines cogent::waitable (a reference to one object to watch) and the
// cogent::wait(objects, t, count) overload.
//
// Example: stop at the first of a worker finishing, a shutdown event or a reply.
//   cogent::event shutdown;
//   cogent::async_result<std::string> reply;
//   auto worker = cogent::spawn([] { /* ... */ });
//   std::vector<std::size_t> ready = cogent::wait({worker, shutdown, reply}, 5s, 1);
//   if (ready.empty()) { /* 5 s passed */ } else if (ready[0] == 1) { /* shutdown set */ }
#pragma once
#pragma GCC visibility push(default)

#include <cstddef>
#include <initializer_list>
#include <vector>

#include "hub/core.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"

namespace cogent {

// waitable refers to one object cogent::wait() watches: a task (ready once
// finished, whatever its outcome — watching it does not count as looking at
// its error), an event (ready once set) or an async_result (ready once set or
// given an exception). It holds a reference: the event or async_result must
// outlive the wait() (destroying one that is not yet ready during it makes
// the wait raise hub_error; one ready at the call was already counted and is
// not looked at again); a task is held by its handle. Never switches.
class waitable {
 public:
  waitable(const task_base& t) : _task(t) {}  // NOLINT: implicit, as in wait({t, e})
  template <class T>
  waitable(const task<T>& t) : _task(t) {}  // NOLINT
  waitable(event& e) noexcept : _links(&e.links()), _object(&e), _ready(&event_ready) {}  // NOLINT
  template <class T>
  waitable(async_result<T>& r) noexcept  // NOLINT
      : _links(&r.links()), _object(&r), _ready(&result_ready<T>) {}

  // ready() is true if the object is ready now. Never switches.
  bool ready() const;

 private:
  friend std::vector<std::size_t> wait(const std::vector<waitable>&, timeout_duration, std::size_t);
  static bool event_ready(const void* o) noexcept { return static_cast<const event*>(o)->is_set(); }
  template <class T>
  static bool result_ready(const void* o) noexcept {
    return static_cast<const async_result<T>*>(o)->ready();
  }
  task_base _task;                           // a task, or empty
  detail::ready_links* _links = nullptr;     // an event's or async_result's links, or null
  const void* _object = nullptr;             // that event or async_result
  bool (*_ready)(const void*) noexcept = nullptr;
};

// wait() blocks until `count` of `objects` are ready (all of them by
// default), or `t` passes, and returns the positions in `objects` of the
// ready ones, at most `count`: first those ready at the call, in list order,
// then the others in the order they became ready (gevent.wait(objects,
// timeout, count), which returns the objects themselves). An object that
// becomes ready and is then reset (an event cleared) before wait() returns is
// still reported. A zero `t` never switches (then it also works inside the
// hub). Wake-up order: when an object becomes ready, the fibers blocked in
// its own calls (event::wait, async_result::get, task::join) are woken before
// the wait() callers watching it, each group oldest first (gevent runs one
// list in arrival order, so a wait() begun first is woken first there).
// Raises std::logic_error for an empty task handle; hub_error if an event or
// async_result in the list, not ready at the call, is destroyed before
// `count` are ready (after that, the wait returns what it has), or if called
// inside the hub with a wait that would block; a pending kill or Timeout of
// the caller. May switch.
std::vector<std::size_t> wait(const std::vector<waitable>& objects, timeout_duration t = std::nullopt,
                              std::size_t count = all_tasks);
inline std::vector<std::size_t> wait(std::initializer_list<waitable> objects, timeout_duration t = std::nullopt,
                                     std::size_t count = all_tasks) {
  return wait(std::vector<waitable>(objects), t, count);
}

}  // namespace cogent

#pragma GCC visibility pop
