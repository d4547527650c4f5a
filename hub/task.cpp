// hub/task.cpp — spawn/join/kill/link, the live-task registry, the
// unjoined-error report, joinall/killall/iwait/wait_any.
#include "hub/task.hpp"
#include "hub/sync.hpp"  // detail::deadline_passed

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <mutex>
#include <unordered_map>

namespace cogent {
namespace detail {
namespace {

// Per-thread registry of unfinished tasks (an intrusive list).
thread_local __attribute__((tls_model("initial-exec"))) task_state* t_live_head = nullptr;
thread_local __attribute__((tls_model("initial-exec"))) std::size_t t_live_count = 0;

std::mutex g_handler_mu;
task_error_handler g_handler;

void register_task(task_state* s) noexcept {
  s->reg_next = t_live_head;
  if (t_live_head != nullptr) {
    t_live_head->reg_prev = s;
  }
  t_live_head = s;
  ++t_live_count;
}

void unregister_task(task_state* s) noexcept {
  (s->reg_prev != nullptr ? s->reg_prev->reg_next : t_live_head) = s->reg_next;
  if (s->reg_next != nullptr) {
    s->reg_next->reg_prev = s->reg_prev;
  }
  s->reg_prev = s->reg_next = nullptr;
  --t_live_count;
}

void report_unjoined(const task_base& t, std::exception_ptr e) {
  task_error_handler h;
  {
    std::lock_guard lock(g_handler_mu);
    h = g_handler;
  }
  if (h) {
    h(t, e);
    return;
  }
  std::fprintf(stderr, "cogent: task '%s' failed: %s\n", t.name().c_str(), describe_exception(e).c_str());
}

// drop_self_ref() releases the reference an unfinished task holds on itself.
// If it was the last one the task is freed now, or, if it is the running
// fiber, by the fiber it switches to once it has finished (fiber/).
void drop_self_ref(task_state* s) noexcept {
  if (std::exchange(s->self_ref, false)) {
    unref(s);
  }
}

}  // namespace

task_state::task_state(std::size_t stack_size, std::string&& name) : fiber_impl(stack_size, std::move(name)) {
  is_task = true;
}
task_state::~task_state() {
  while (link_entry* l = links) {
    links = l->next;
    delete l;
  }
}

std::any task_state::run(std::any&&) {
  if (st == status::pending) {
    st = status::running;
    body_started = true;
    try {
      invoke();
    } catch (fiber_exit&) {
      killed = true;
    } catch (...) {
      error = std::current_exception();
      if (kill_requested && error != first_kill && error != last_kill) {
        // Not the outcome the killer expects, so reported if nobody joins:
        // a kill was raised in the body, caught, and the task failed
        // otherwise; or the kill never landed (an op completed anyway and the
        // task failed on its own before blocking again). Only a raised kill's
        // own exception ending the task is its outcome — also when a second
        // kill is still pending (it came while the task unwound).
        kill_requested = false;
      }
    }
    first_kill = last_kill = nullptr;  // (held no longer than the body)
    st = status::releasing;
  }
  // The body ended — or never ran: killed before it started, the task runs
  // only for what follows (task_base::kill). The function and its arguments go
  // before the task is done (gevent drops a greenlet's run before reporting
  // its result): their destructors may block, and until they are through,
  // joiners (group::join(), map(), an imap stream's stop()) must not return to
  // a caller that frees what they refer to, nor a pool give the slot to the
  // next member. Kills meanwhile are moot (status::releasing): the destructors
  // are noexcept. So is a kill that arrived too late to land (the body
  // finished without blocking again), and a Timeout of a destructor's own
  // scope that fired late: neither may go off here or in a link.
  sched.pending = nullptr;
  sched.pending_owner = nullptr;
  release_body();
  sched.pending = nullptr;
  sched.pending_owner = nullptr;
  sched.displaced = nullptr;
  sched.displaced_owner = nullptr;
  finish();
  return {};
}

void throw_not_typed(const task_state& s, const std::type_info& want) {
  throw std::logic_error("cogent: task '" + s.display_name() + "' does not return " + demangled(want.name()) +
                         " (task_base::as)");
}

void check_task_options(const spawn_options& opts) {
  check_stack_size(opts.stack_size, opts.name);
}

void task_state::report_if_last(const task_base& self) noexcept {
  if (error_unseen && waiting == 0 && held_reports == 0 && !running_links) {
    error_unseen = false;
    try {
      report_unjoined(self, error);
    } catch (...) {
    }
  }
}

void task_state::finish() noexcept {
  // Both callers, run() and fail_unstarted(), hold a reference (the task's
  // self-reference, a handle), so *this outlives this call; a handle for the
  // callbacks is made only when there are callbacks to make. Either way the
  // hub has dequeued the task and spawn_later's timer has fired or been
  // cancelled (by kill()).
  st = status::done;
  unregister_task(this);
  // The error is unseen until someone looks: a joiner that returns (see
  // task_base::join()), an observing link as it is called, an iwait's caller
  // it is handed to. Counting the links here instead would let one unlinked
  // before its turn (by an earlier link, by an iwait that timed out while an
  // earlier link blocked) swallow it.
  error_unseen = error && !kill_requested;
  joiners.notify_all();
  if (links != nullptr || error_unseen) {
    ref(this);
    task_base self = task_base::adopt(this);
    // One at a time, taken off the list before the call: a link that blocks
    // lets others unlink() the ones not yet called (an iwait going away).
    // Meanwhile joiners that leave without looking leave the report to us.
    running_links = true;
    while (links != nullptr) {
      std::unique_ptr<link_entry> l(links);
      links = l->next;
      if (l->observes) {
        error_unseen = false;
      }
      try {
        l->fn(self);
      } catch (...) {
        std::fprintf(stderr, "cogent: link callback of task '%s' raised: %s\n", display_name().c_str(),
                     describe_exception(std::current_exception()).c_str());
      }
    }
    running_links = false;
    report_if_last(self);  // else fibers still in join(), iwaits holding the task
  }
  // Drop our self-reference: if we are the running fiber we are freed by the
  // hub once we have switched away for the last time.
  if (!started) {
    // No stack could be mapped (fail_unstarted()): the fiber layer, which
    // does this for a finished task, never sees it finish.
    release_parent(this);
  }
  drop_self_ref(this);
}

// fail_unstarted() is detail::start_failed_hook: the task's fiber could not
// get a stack at its first switch, so the task fails with that error (its
// body never ran), exactly as if it had raised it.
void fail_unstarted(fiber_impl* f, std::exception_ptr error) noexcept {
  if (!f->is_task) {
    return;
  }
  auto* s = static_cast<task_state*>(f);
  ref(s);
  task_base keep = task_base::adopt(s);
  if (s->st == task_state::status::releasing) {
    // Killed before it started, and now it cannot even get a stack to drop its
    // function in: that happens here, in the hub; the kill's outcome stands.
    s->release_body();
    s->finish();
    return;
  }
  s->error = std::move(error);
  s->finish();
}

void start_task(task_state* st, std::optional<std::chrono::nanoseconds> delay) {
  hub& h = hub::current();
  start_failed_hook = &fail_unstarted;
  fiber_impl* hub_fiber = hub_fiber_impl(h);
  if (st->parent != hub_fiber) {
    ref(hub_fiber);
    unref(std::exchange(st->parent, hub_fiber));  // a task returns to the hub when it finishes
  }
  st->sched.state = 1;  // parked: schedule() may make it ready
  if (delay && *delay > std::chrono::nanoseconds::zero()) {
    // The start is the fiber's own park timer: a fiber that has not started
    // cannot be parked on anything else. A delay too long to represent
    // (nanoseconds::max()) saturates: no timer, it never starts on its own.
    auto& timer = st->sched.park_timer;
    timer.owner = st;
    timer.deadline = deadline_after(*delay);
    if (timer.deadline != clock::time_point::max()) {
      timer.fire = [](timer_node* n) {
        hub::current().schedule(static_cast<fiber_impl::sched_slot::park_timer_node*>(n)->owner);
      };
      h.add_timer(timer);
    }  // else it stays parked until a kill starts it
  } else {
    h.schedule(st);
  }
  ref(st);
  st->self_ref = true;
  register_task(st);
}

}  // namespace detail

// ---- task_base ------------------------------------------------------------------

namespace {
// A task lives on one thread's hub; waiting on or killing it from another
// thread would race with that hub (invariant 4).
void check_same_thread(const detail::task_state& s, const char* what) {
  if (s.thread_tag != detail::current_impl()->thread_tag) {
    throw hub_error(std::string("cogent: ") + what + "() of task '" + s.display_name() +
                    "' from another thread");
  }
}
}  // namespace

detail::task_state& task_base::state() const {
  if (_s == nullptr) {
    throw std::logic_error("cogent: operation on an empty task handle");
  }
  return *_s;
}

bool task_base::join(timeout_duration t) const { return join_impl(t, true); }

bool task_base::join_impl(timeout_duration t, bool looks) const {
  detail::task_state& s = state();
  if (s.st == detail::task_state::status::done) {
    if (looks) {
      s.error_unseen = false;
    }
    return true;
  }
  if (detail::current_impl() == &s) {
    throw hub_error("cogent: task '" + s.display_name() + "' tried to join itself");
  }
  check_same_thread(s, "join");
  task_base keep = *this;  // the task outlives this call even if our handle goes
  clock::time_point deadline = deadline_after(t);
  if (detail::deadline_passed(deadline)) {
    return false;  // a zero timeout answers without waiting (so also inside the hub)
  }
  ++s.waiting;
  try {
    while (s.st != detail::task_state::status::done) {
      if (!s.joiners.wait(deadline)) {
        break;
      }
    }
  } catch (...) {
    // Interrupted (a kill, a Timeout): we leave without looking.
    --s.waiting;
    s.report_if_last(keep);
    throw;
  }
  bool done = s.st == detail::task_state::status::done;
  --s.waiting;
  if (done && looks) {
    s.error_unseen = false;  // we return true: our caller can look at the error
  } else {
    s.report_if_last(keep);  // timed out (not done: nothing to report), or a joiner that cannot look
  }
  return done;
}

void task_base::kill(std::exception_ptr e, bool block, timeout_duration t) const {
  task_base keep = *this;  // the task outlives this call even if our handle goes
  detail::task_state& s = state();
  if (!e) {
    e = std::make_exception_ptr(fiber_exit{});
  }
  if (s.st == detail::task_state::status::done) {
    return;
  }
  check_same_thread(s, "kill");
  if (s.st == detail::task_state::status::releasing) {
    // Its body has ended; its function and arguments are being destroyed: a
    // kill is moot (it would go off in a noexcept destructor). block waits.
    if (block && detail::current_impl() != &s && !hub::current().in_hub()) {
      join_impl(t, false);
    }
    return;
  }
  s.kill_requested = true;
  if (s.st == detail::task_state::status::pending) {
    // Never started: its function never runs. Record the outcome as if `e`
    // ended it; from here kills are moot (status::releasing). It still runs,
    // in its own fiber, only to destroy its function and arguments — their
    // destructors may block, which the killer's frame (or the hub, for a kill
    // from a callback) cannot host — and then to finish there (its links run
    // in its fiber, as for any task): joiners, a pool's slot and an imap
    // stream's stop() wait for both. block waits for it.
    try {
      std::rethrow_exception(e);
    } catch (fiber_exit&) {
      s.killed = true;
    } catch (...) {
      s.error = std::current_exception();
    }
    s.st = detail::task_state::status::releasing;
    hub& h = hub::current();
    if (s.sched.park_timer.armed()) {
      h.cancel_timer(s.sched.park_timer);  // spawn_later's start: now
    }
    if (s.sched.state == 1) {
      h.schedule(&s);  // spawn_later's (a start that would never come included): now
    }
    if (block && !h.in_hub()) {
      join_impl(t, false);
    }
    return;
  }
  if (detail::current_impl() == &s) {
    s.kill_raised(e);  // raised here, not through the hub: its outcome is the kill's, not an error to report
    std::rethrow_exception(e);
  }
  hub& h = hub::current();
  h.interrupt(&s, std::move(e));
  if (block && !h.in_hub()) {
    join_impl(t, false);
  }
}

std::size_t task_base::link(std::function<void(const task_base&)> fn, bool observes) const {
  detail::task_state& s = state();
  check_same_thread(s, "link");
  if (s.st == detail::task_state::status::done) {
    if (observes) {
      s.error_unseen = false;
    }
    fn(*this);
    return 0;
  }
  std::size_t id = s.next_link++;
  auto* node = new detail::task_state::link_entry{nullptr, id, std::move(fn), observes};
  detail::task_state::link_entry** at = &s.links;
  while (*at != nullptr) {
    at = &(*at)->next;
  }
  *at = node;
  return id;
}

void task_base::unlink(std::size_t id) const {
  check_same_thread(state(), "unlink");
  for (detail::task_state::link_entry** at = &state().links; *at != nullptr; at = &(*at)->next) {
    if ((*at)->id == id) {
      std::unique_ptr<detail::task_state::link_entry> gone(*at);
      *at = gone->next;
      return;
    }
  }
}

void task_base::rethrow() const {
  detail::task_state& s = state();
  if (s.killed) {
    throw task_killed("cogent: task '" + s.display_name() + "' was killed");
  }
  if (s.error) {
    std::rethrow_exception(s.error);
  }
}

void report_error(const task_base& t) noexcept {
  if (t && t.ready() && t.exception()) {
    try {
      detail::report_unjoined(t, t.exception());
    } catch (...) {
    }
  }
}

// ---- collections ------------------------------------------------------------------

std::vector<task_base> joinall(const std::vector<task_base>& tasks, timeout_duration t, bool raise_error,
                               std::size_t count) {
  // As gevent: the tasks in the order they finish, until `count` have (or
  // `t` passed); with raise_error the first to fail ends the wait at once.
  // iwait's links observe every task for the whole call (joining them one
  // by one would leave a later one that fails meanwhile unwatched: reported
  // as unjoined, then returned); every failure it did not hand out (all of
  // them if we are interrupted) it reports as it goes.
  task_base self = current_task();
  for (const task_base& g : tasks) {
    if (self && g == self) {
      throw hub_error("cogent: joinall() of a list that holds the calling task '" + self.name() + "'");
    }
  }
  task_base failed;
  std::vector<task_base> handed;  // what the iwait handed out: what we return (gevent's wait())
  {
    iwait it(tasks, t, count);
    while (task_base g = it.next()) {
      if (raise_error && g.exception()) {
        failed = g;
        break;
      }
      handed.push_back(std::move(g));
    }
  }
  if (failed) {
    std::rethrow_exception(failed.exception());
  }
  if (handed.size() == tasks.size()) {
    return tasks;  // every one (a task listed twice is handed out twice): in the given order
  }
  // Some not handed out (the count reached, the time up; finished or not):
  // not returned, as gevent — so one the iwait reported is never also
  // handed back. The rest in the given order.
  std::unordered_map<std::uint64_t, std::size_t> times;
  for (const task_base& g : handed) {
    ++times[g.id()];
  }
  std::vector<task_base> done;
  done.reserve(handed.size());
  for (const task_base& g : tasks) {
    auto it = times.find(g.id());
    if (it != times.end() && it->second > 0) {
      --it->second;
      done.push_back(g);
    }
  }
  return done;
}

void killall(const std::vector<task_base>& tasks, std::exception_ptr e, bool block, timeout_duration t) {
  // Killing the calling task raises at once: it goes last, after the others
  // have been killed and (with block) waited for — gevent's Group.kill from a
  // member — so they never outlive the frame that raise unwinds.
  task_base self = current_task();
  bool includes_self = false;
  for (const task_base& g : tasks) {
    if (self && g == self) {
      includes_self = true;
      continue;
    }
    g.kill(e, false);
  }
  if (block && !hub::current().in_hub()) {
    // As joinall(), but as a joiner that cannot look (see task_base::kill).
    detail::join_all_unobserved(tasks, deadline_after(t), includes_self ? self : task_base());
  }
  if (includes_self) {
    self.kill(e, false);
  }
}

void detail::join_all_unobserved(const std::vector<task_base>& tasks, clock::time_point deadline,
                                 const task_base& skip) {
  for (const task_base& g : tasks) {
    if (skip && g == skip) {
      continue;
    }
    if (deadline != clock::time_point::max() && clock::now() >= deadline) {
      return;
    }
    (void)g.join_unobserved(time_left(deadline));
  }
}

iwait::iwait(std::vector<task_base> tasks, timeout_duration t, std::size_t count)
    : _tasks(std::move(tasks)), _count(count), _deadline(deadline_after(t)) {
  _link_ids.reserve(_tasks.size());
  try {
    for (const task_base& g : _tasks) {
      // Not an observing link: we hold the task (held_reports) until we hand
      // it out or let it go. A task already finished runs the link at once,
      // here; its error, if still unseen (its own links still running,
      // joiners still to return), is held the same way.
      _link_ids.push_back(g.link(
          [this](const task_base& done) {
            _done.push_back(done);
            ++done.state().held_reports;
            _wake.notify_one();
          },
          false));
    }
  } catch (...) {
    unlink_all();  // no destructor runs: no link may outlive this
    for (const task_base& g : _done) {
      --g.state().held_reports;
    }
    throw;
  }
}

iwait::~iwait() {
  unlink_all();
  // The tasks we hold and never handed out: an error nobody looked at is
  // reported by the last holder to let go (joiners included) once the
  // task's links have run — once (the flag is cleared), so a task listed
  // twice, or held by two iwaits, is reported by one.
  for (std::size_t i = _returned; i < _done.size(); ++i) {
    detail::task_state& s = _done[i].state();
    --s.held_reports;
    s.report_if_last(_done[i]);
  }
}

void iwait::unlink_all() noexcept {
  for (std::size_t i = 0; i < _link_ids.size(); ++i) {
    if (_link_ids[i] != 0) {
      _tasks[i].unlink(_link_ids[i]);
    }
  }
}

task_base iwait::next() {
  if (_returned >= _count) {
    return {};
  }
  while (_returned == _done.size()) {
    if (_returned == _tasks.size() || detail::deadline_passed(_deadline)) {
      return {};  // (a zero timeout answers without waiting, so also inside the hub)
    }
    if (!_wake.wait(_deadline) && _returned == _done.size()) {
      return {};
    }
  }
  // The caller's to look at now.
  detail::task_state& s = _done[_returned].state();
  --s.held_reports;
  s.error_unseen = false;
  return _done[_returned++];
}

task_base wait_any(const std::vector<task_base>& tasks, timeout_duration t) {
  iwait it(tasks, t);
  return it.next();
}

task_base current_task() {
  detail::fiber_impl* f = detail::current_impl();
  if (!f->is_task) {
    return {};
  }
  auto* s = static_cast<detail::task_state*>(f);
  detail::ref(s);
  return task_base::adopt(s);
}

std::vector<task_base> live_tasks() {
  std::vector<task_base> out;
  for (detail::task_state* s = detail::t_live_head; s != nullptr; s = s->reg_next) {
    detail::ref(s);
    out.push_back(task_base::adopt(s));
  }
  return out;
}

std::size_t active_count() noexcept {
  return detail::t_live_count;
}

void set_task_error_handler(task_error_handler h) {
  std::lock_guard lock(detail::g_handler_mu);
  detail::g_handler = std::move(h);
}

std::string describe_exception(std::exception_ptr e) {
  if (!e) {
    return "no exception";
  }
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (const timeout_error& x) {
    return x.what();
  } catch (const fiber_exit& x) {
    return x.what();
  } catch (...) {
    return "unknown exception";
  }
}

}  // namespace cogent
