// hub/task.hpp — tasks: gevent's Greenlet on the hub.
//
// Defines cogent::task<T> (a handle to a spawned fiber with a typed result),
// cogent::task_base (the untyped handle), spawn(), spawn_later(), joinall(),
// killall(), wait_any(), iwait, current_task(), live_tasks() and the
// unjoined-error handler.
//
// A task runs fn(args...) in its own fiber whose parent is the hub. It starts
// at the hub's next turn (spawn never switches). Its result (or exception) is
// kept in the task for join()/get(); the function and its arguments are
// destroyed when its body ends, before the task counts as finished (joiners,
// links and a pool's slot wait for their destructors; handles keep only the
// outcome; a task killed before it started runs only to drop them, in its
// own fiber, then finishes). A task
// runs to its end whether or not anyone holds a handle to it. A task and its
// fiber are one control block (320 bytes for a lambda with no captures): handles are
// reference counts on it, like fiber handles, and belong to its thread.
// An exception in a task nobody is waiting
// for when it finishes (or whose every waiter is killed before it can look) is
// reported once on stderr with the task's name (the handler is replaceable);
// it never terminates the process.
//
// Killing: kill() raises an exception (default fiber_exit) at the task's
// blocking point; an in-flight IO op is cancelled and reaped first
// (invariant 1). A task killed before it started never runs. A task killed with
// fiber_exit finishes "killed": successful() is true (as in gevent), get()
// throws task_killed.
//
// Example:
//   auto g1 = cogent::spawn([](int n) { cogent::sleep(10ms); return n * 2; }, 21);
//   auto g2 = cogent::spawn([] { throw std::runtime_error("boom"); });
//   cogent::joinall({g1, g2});
//   int v = g1.get();                 // 42
//   bool ok = g2.successful();        // false; g2.exception() holds "boom"
#pragma once
#pragma GCC visibility push(default)

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "hub/core.hpp"
#include "hub/timeout.hpp"

namespace cogent {

// task_killed is thrown by get() on a task that was killed with fiber_exit.
class task_killed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// spawn_options configures a spawned task.
struct spawn_options {
  std::string name;            // empty: "task-<id>" (formatted only when asked for)
  std::size_t stack_size = 0;  // 0: the default fiber stack
};

class task_base;
template <class T>
class task;

namespace detail {

// task_state is a task: it *is* its fiber (one control block, one
// allocation), with the task's fields after the fiber's. Handles (task_base)
// hold fiber references; an unfinished task also holds one on itself
// (`self_ref`), so a task nobody holds a handle to still runs to the end.
struct task_state : fiber_impl {
  // Packed (the first bytes share the fiber's tail padding): 100k tasks are
  // 100k of these blocks in memory, and a spawn+join walks each one three times.
  // releasing: the body has ended and its function and arguments are being
  // destroyed (on the task's stack; a destructor may block). The task is not
  // ready yet: joiners, links and a group's slot wait for it; kills are moot.
  enum class status : std::uint8_t { pending, running, releasing, done };
  status st = status::pending;
  bool body_started = false;  // the body began running (a task killed or failed before that never does)
  bool killed = false;
  // kill_requested: a kill's outcome is expected, so it is not reported as
  // unjoined — cleared when the task fails with an error that is not the
  // exception of the first or the latest kill raised in it (first_kill,
  // last_kill) itself: a kill
  // was caught and the task failed otherwise, or a kill never landed (an op
  // completed anyway and the task failed before blocking again).
  bool kill_requested = false;
  // error_unseen: the task failed (not by a kill's outcome) and nobody has
  // looked at the error yet. Cleared by whoever looks first (a join() that
  // returns true, an observing link() as it is called, an iwait handing the
  // task out); else the last who could still look reports it as it lets go
  // (report_if_last(): finish() once the links ran, the last joiner, the
  // last iwait holding the task).
  bool error_unseen = false;
  bool running_links = false;  // finish() is calling the links (a joiner leaving then leaves the report to it)
  bool self_ref = false;      // holds the reference that keeps an unfinished task alive
  std::uint32_t waiting = 0;  // fibers currently in join()
  // iwaits holding the finished task without having handed it out: each may
  // still give it to a caller who looks; the last to let go reports an error
  // nobody looked at (iwait::~iwait()), as the last joiner does.
  std::uint32_t held_reports = 0;
  // report_if_last() reports an unseen error once nobody is left to look
  // (no joiner, no iwait holding the task, the links done); `self` is a
  // handle to this task.
  void report_if_last(const task_base& self) noexcept;
  std::uint32_t next_link = 1;
  std::exception_ptr error;
  // The first and the latest kill raised in the task: ending with either is
  // the kill's outcome (a kill raised while the task unwinds from the first
  // may be deferred and never end it; a first one caught and swallowed is
  // followed by the one that does).
  std::exception_ptr first_kill;
  std::exception_ptr last_kill;
  wait_list joiners;
  // links: the link() callbacks, in the order added — a list of heap nodes
  // (8 bytes here, where a vector took 24: most tasks have none, a few one or two).
  struct link_entry {
    link_entry* next;
    std::size_t id;
    std::function<void(const task_base&)> fn;
    bool observes;  // this link handles the task's error (suppresses the unjoined report)
  };
  link_entry* links = nullptr;
  task_state* reg_prev = nullptr;
  task_state* reg_next = nullptr;

  task_state(std::size_t stack_size, std::string&& name);
  ~task_state() override;
  // run() is the fiber's body: the task's function, its outcome recorded.
  std::any run(std::any&& arg) final;
  virtual void invoke() = 0;
  std::string display_name() const { return name(); }
  void kill_raised(const std::exception_ptr& e) noexcept final {
    if (first_kill == nullptr) {
      first_kill = e;
    }
    last_kill = e;
  }
  void finish() noexcept;
};
// throw_not_typed() raises task_base::as<T>()'s logic_error: s does not return `want`.
[[noreturn]] void throw_not_typed(const task_state& s, const std::type_info& want);

template <class T>
struct typed_task_state : task_state {
  using task_state::task_state;
  std::optional<T> value;
};
template <>
struct typed_task_state<void> : task_state {
  using task_state::task_state;
};

// task_impl owns the function and its arguments until the task finishes
// (released just before, on the task's own stack, as gevent drops a
// greenlet's run before it reports the result).
template <class T, class Fn, class Tuple>
struct task_impl final : typed_task_state<T> {
  task_impl(std::size_t stack_size, std::string&& name, Fn&& f, Tuple&& a)
      : typed_task_state<T>(stack_size, std::move(name)) {
    try {
      body.emplace(std::move(f), std::move(a));
    } catch (...) {
      // Moving them in threw: no task is made. The control block's reference
      // on its parent (the spawner) is dropped by destroy(), which never runs
      // for a block whose constructor failed: drop it here.
      unref(std::exchange(this->parent, nullptr));
      throw;
    }
  }
  void invoke() override {
    if constexpr (std::is_void_v<T>) {
      std::apply(body->fn, std::move(body->args));
    } else {
      this->value.emplace(std::apply(body->fn, std::move(body->args)));
    }
  }
  void release_body() noexcept override {
    // Once, even if called again while a destructor of the body blocks.
    if (body_live) {
      body_live = false;
      body.reset();
    }
  }
  struct fn_args {
    Fn fn;
    Tuple args;
  };
  std::optional<fn_args> body;
  bool body_live = true;
};

// check_task_options() validates spawn_options (throws fiber_error).
void check_task_options(const spawn_options& opts);

// start_task() creates the task's fiber (parent: the hub), registers it and
// schedules it now or after `delay`.
// The new task (`st`, just constructed, refs 1: the caller's handle) takes
// its self-reference here.
void start_task(task_state* st, std::optional<std::chrono::nanoseconds> delay);

}  // namespace detail

// task_base is an untyped, copyable handle to a task (empty when default-
// constructed). Like a fiber handle it belongs to the task's thread: copy and
// drop it there (the reference count is not atomic).
class task_base {
 public:
  task_base() = default;
  // adopt() wraps a reference the caller already holds.
  static task_base adopt(detail::task_state* s) noexcept {
    task_base t;
    t._s = s;
    return t;
  }
  task_base(const task_base& o) noexcept : _s(o._s) {
    if (_s != nullptr) {
      detail::ref(_s);
    }
  }
  task_base(task_base&& o) noexcept : _s(std::exchange(o._s, nullptr)) {}
  task_base& operator=(const task_base& o) noexcept {
    task_base(o).swap(*this);
    return *this;
  }
  task_base& operator=(task_base&& o) noexcept {
    task_base(std::move(o)).swap(*this);
    return *this;
  }
  ~task_base() {
    if (_s != nullptr) {
      detail::unref(_s);
    }
  }
  void swap(task_base& o) noexcept { std::swap(_s, o._s); }

  // join() waits until the task finished or `t` passed; true if it finished.
  // Never throws the task's error. Joining the running task from itself throws
  // hub_error. A zero timeout answers at once (never switches; also inside
  // the hub). May switch.
  bool join(timeout_duration t = std::nullopt) const;
  // join_unobserved() is join() for a caller that will not look at the
  // outcome (a wait after a kill, as kill(block) does): the task's error, if
  // nothing else looks at it, is reported as unjoined when the last such
  // joiner leaves. May switch.
  bool join_unobserved(timeout_duration t = std::nullopt) const { return join_impl(t, false); }

  // kill() raises `e` (default fiber_exit) in the task at its blocking point.
  // A task not yet started never runs its function: its fiber starts only to
  // destroy the function and its arguments (their destructors may block) and
  // to finish (links run there); block waits for that, also when the task
  // was spawned with spawn_later (it starts at once). From a timer or post()
  // callback (in the hub), which cannot wait, it never blocks (block is
  // ignored there: the kill is sent and kill() returns). A task whose function has returned and
  // is being destroyed is past killing (the kill is moot). With block, waits up to `t` for it to
  // finish. Killing the calling task raises `e` at once. May switch (block).
  // A fiber holds one pending interrupt: a kill that arrives while an earlier
  // one (or a fiber::throw_in) is still pending, not yet raised at the task's
  // blocking point, is dropped and the first exception is the one raised
  // (gevent would deliver both, one after the other). A kill does replace a
  // pending Timeout error. Once the first is raised, later kills arrive as usual.
  // The kill's outcome is not reported as an unjoined error; but a task that
  // catches a fiber_exit kill and then fails with an error of its own has
  // that error reported like any other (the killer, even with block, does
  // not see it: kill() returns nothing).
  void kill(std::exception_ptr e = nullptr, bool block = true, timeout_duration t = std::nullopt) const;

  // link() calls fn(task) when the task finishes (at once if it already has);
  // fn runs in the finishing task's fiber, just before it dies. Returns an id
  // for unlink(). A link that `observes` counts as someone handling the task's
  // error, so the unjoined-error report is not printed; bookkeeping links
  // (a group tracking its members) pass observes = false.
  std::size_t link(std::function<void(const task_base&)> fn, bool observes = true) const;
  void unlink(std::size_t id) const;

  // Status (gevent names). ready(): finished. successful(): finished without
  // an error (a fiber_exit kill counts as success). killed(): killed by
  // fiber_exit. started(): its function began running (stays false for a task
  // killed before it started, or that failed to get a stack). exception():
  // the error. Like every operation but copy, move, swap, == and bool, they
  // throw std::logic_error on an empty handle.
  bool ready() const { return state().st == detail::task_state::status::done; }
  bool successful() const { return ready() && !state().error; }
  bool killed() const { return state().killed; }
  bool started() const { return state().body_started; }
  std::exception_ptr exception() const { return state().error; }
  // rethrow() raises the task's error if it has one (task_killed if killed).
  void rethrow() const;
  // name() is the name given in spawn_options, or "task-<id>".
  std::string name() const { return state().display_name(); }
  std::uint64_t id() const { return state().id; }
  explicit operator bool() const noexcept { return _s != nullptr; }
  friend bool operator==(const task_base& a, const task_base& b) noexcept { return a._s == b._s; }
  // as<T>() is this task as a task<T> (another handle to it), so that a task
  // handed out untyped — by iwait::next(), wait_any(), joinall() — gives its
  // value with get(). Throws std::logic_error if its function does not return
  // T, or on an empty handle. Never switches.
  //   for (cogent::iwait it(fetches); auto t = it.next();) use(t.as<std::string>().get());
  template <class T>
  task<T> as() const;

 protected:
  detail::task_state& state() const;
  detail::task_state* _s = nullptr;

 private:
  // join_impl(): join(); `looks` says the caller can see the error when it
  // returns true (join) — kill(block) and killall(block) cannot, so they
  // leave as a joiner that never looked (the last such one reports it).
  bool join_impl(timeout_duration t, bool looks) const;
  friend void killall(const std::vector<task_base>& tasks, std::exception_ptr e, bool block,
                      timeout_duration t);
  friend class iwait;
};

// task<T> is a task whose function returns T.
template <class T>
class task : public task_base {
 public:
  task() = default;
  // adopt() wraps a reference the caller already holds.
  static task adopt(detail::typed_task_state<T>* s) noexcept {
    task t;
    t._s = s;
    return t;
  }

  // get() waits for the task and returns its value, or rethrows its exception
  // (task_killed if it was killed). Raises timeout_error if `t` passes first.
  // May switch.
  T get(timeout_duration t = std::nullopt) const {
    if (!join(t)) {
      throw timeout_error(nullptr, t.value_or(std::chrono::nanoseconds::zero()));
    }
    rethrow();
    if constexpr (!std::is_void_v<T>) {
      auto& v = static_cast<detail::typed_task_state<T>&>(state()).value;
      if constexpr (std::is_copy_constructible_v<T>) {
        return *v;
      } else {
        return std::move(*v);  // move-only results can be taken once
      }
    }
  }
};

template <class T>
task<T> task_base::as() const {
  auto* typed = dynamic_cast<detail::typed_task_state<T>*>(&state());
  if (typed == nullptr) {
    detail::throw_not_typed(state(), typeid(T));
  }
  detail::ref(typed);
  return task<T>::adopt(typed);
}

namespace detail {
// make_task() is spawn() and spawn_later() (below).
template <class Fn, class... Args>
auto make_task(spawn_options&& opts, std::optional<std::chrono::nanoseconds> delay, Fn&& fn, Args&&... args) {
  using R = std::invoke_result_t<std::decay_t<Fn>&, std::decay_t<Args>...>;
  using tuple = std::tuple<std::decay_t<Args>...>;
  if (opts.stack_size != 0) {
    check_task_options(opts);
  }
  auto* st = new task_impl<R, std::decay_t<Fn>, tuple>(opts.stack_size, std::move(opts.name),
                                                        std::decay_t<Fn>(std::forward<Fn>(fn)),
                                                        tuple(std::forward<Args>(args)...));
  auto t = task<R>::adopt(st);
  start_task(st, delay);
  return t;
}
}  // namespace detail

// spawn() starts fn(args...) in a new task (at the hub's next turn; spawn
// itself never switches). Arguments are copied/moved into the task and
// destroyed, with the function, when it finishes (there a destructor may
// block: kills are moot by then). A parameter fn takes by value is another
// object, made for the call and destroyed as the call returns, while the
// task still runs: a kill that lands while its destructor blocks raises
// fiber_exit out of that destructor (std::terminate) — take such arguments
// by reference. The task's stack is taken
// when it first runs: if none can be mapped then, the task fails with that
// std::system_error (its body never runs). Throws fiber_error for a bad
// stack_size.
template <class Fn, class... Args>
auto spawn(spawn_options opts, Fn&& fn, Args&&... args) {
  return detail::make_task(std::move(opts), std::nullopt, std::forward<Fn>(fn), std::forward<Args>(args)...);
}
template <class Fn, class... Args, class = std::enable_if_t<!std::is_same_v<std::decay_t<Fn>, spawn_options>>>
auto spawn(Fn&& fn, Args&&... args) {
  return spawn(spawn_options{}, std::forward<Fn>(fn), std::forward<Args>(args)...);
}

// spawn_later() is spawn() that starts the task after `delay` (any duration,
// saturating; one too long to represent, nanoseconds::max() or more, never
// comes: only a kill starts it).
template <class Rep, class Period, class Fn, class... Args>
auto spawn_later(std::chrono::duration<Rep, Period> delay, Fn&& fn, Args&&... args) {
  return detail::make_task(spawn_options{}, detail::saturate_ns(delay), std::forward<Fn>(fn),
                           std::forward<Args>(args)...);
}

// all_tasks is the `count` of joinall()/iwait that waits for every task.
inline constexpr std::size_t all_tasks = static_cast<std::size_t>(-1);

// joinall() waits for every task (up to `t` overall) and returns those that
// finished, in the given order (one not done in time does not hide those
// after it). With raise_error, the first task to fail (in the order they
// finish) ends the wait at once and its error is rethrown (as gevent). With
// a `count` (gevent's), it returns once that many have finished, and returns
// those `count`: as gevent's, what it returns is what its iwait handed out,
// so another task that finished in the same turn is not returned (and its
// error, if nobody else looks at it, is reported as unjoined, once). A zero
// `t` never switches. May switch.
std::vector<task_base> joinall(const std::vector<task_base>& tasks, timeout_duration t = std::nullopt,
                               bool raise_error = false, std::size_t count = all_tasks);
inline std::vector<task_base> joinall(std::initializer_list<task_base> tasks,
                                      timeout_duration t = std::nullopt, bool raise_error = false,
                                      std::size_t count = all_tasks) {
  return joinall(std::vector<task_base>(tasks), t, raise_error, count);
}
template <class T>
std::vector<task_base> joinall(const std::vector<task<T>>& tasks, timeout_duration t = std::nullopt,
                               bool raise_error = false, std::size_t count = all_tasks) {
  return joinall(std::vector<task_base>(tasks.begin(), tasks.end()), t, raise_error, count);
}

namespace detail {
// join_all_unobserved() waits for each of `tasks` but `skip` until
// `deadline`, as a joiner that does not look at their errors (an error of
// their own is still reported): what killall(block) and group::kill(block) wait with.
void join_all_unobserved(const std::vector<task_base>& tasks, clock::time_point deadline,
                         const task_base& skip = task_base());
}  // namespace detail

// killall() kills every task (see task_base::kill) and, with block, waits up
// to `t` for them to finish — not from a timer or post() callback (in the
// hub), which cannot wait. If the calling task is among them it is killed
// last, after all the others have been killed and waited for (its kill
// raises at once). May switch (block).
void killall(const std::vector<task_base>& tasks, std::exception_ptr e = nullptr, bool block = true,
             timeout_duration t = std::nullopt);

// iwait yields tasks as they finish (gevent.iwait), as untyped handles
// (as<T>() gives the typed one back):
//   for (cogent::iwait it(tasks); auto t = it.next();) { use(t.as<int>().get()); }
// A task next() hands out is the caller's to look at; the error of one that
// failed but was never handed out (the iwait went first: a wait_any() that
// returned another, a loop left early) is reported by the unjoined-error
// handler when the iwait is destroyed, once — unless someone else looked at
// it meanwhile (a join() that returned, another iwait that handed it out,
// an observing link) or it was a kill's outcome, or another iwait or joiner
// still holds it (the last to let go reports). The constructor throws
// std::logic_error for an empty handle, leaving no link.
class iwait {
 public:
  // count (gevent's): at most that many tasks are handed out.
  explicit iwait(std::vector<task_base> tasks, timeout_duration t = std::nullopt, std::size_t count = all_tasks);
  template <class T>
  explicit iwait(const std::vector<task<T>>& tasks, timeout_duration t = std::nullopt,
                 std::size_t count = all_tasks)
      : iwait(std::vector<task_base>(tasks.begin(), tasks.end()), t, count) {}
  ~iwait();
  iwait(const iwait&) = delete;
  iwait& operator=(const iwait&) = delete;
  // next() returns the next finished task, or an empty handle once all (or
  // `count`) were returned or the timeout passed (a zero timeout never
  // switches). May switch.
  task_base next();

 private:
  void unlink_all() noexcept;
  std::vector<task_base> _tasks;
  std::vector<std::size_t> _link_ids;
  std::vector<task_base> _done;
  std::size_t _returned = 0;
  std::size_t _count;
  detail::wait_list _wake;
  clock::time_point _deadline;
};

// wait_any() returns the first of `tasks` to finish, or an empty handle after `t` (a zero `t`
// never switches: a task already finished, or none). May switch.
task_base wait_any(const std::vector<task_base>& tasks, timeout_duration t = std::nullopt);

// report_error() hands t's error, if it has one, to the unjoined-error
// handler (default: a line on stderr), as if nobody had joined it: for a
// collection whose links observe its members' errors and that is left with
// some it never handed to anyone (an imap_unordered stream dropped early).
// Never switches.
void report_error(const task_base& t) noexcept;

// current_task() is the task running the calling fiber (empty in main or a plain fiber).
task_base current_task();
// live_tasks() lists this thread's tasks that have not finished (gevent's enumerate).
std::vector<task_base> live_tasks();
// active_count() is live_tasks().size() without building the list.
std::size_t active_count() noexcept;

// task_error_handler reports an exception of a task nobody was waiting for.
using task_error_handler = std::function<void(const task_base&, std::exception_ptr)>;
// set_task_error_handler() replaces the handler (process-wide; set it before
// spawning). Passing nullptr restores the default, which prints
// "cogent: task '<name>' failed: <what>" on stderr.
void set_task_error_handler(task_error_handler h);

// describe_exception() renders an exception_ptr as text (std::exception,
// timeout_error, fiber_exit or unknown).
std::string describe_exception(std::exception_ptr e);

}  // namespace cogent

#pragma GCC visibility pop
