// hub/pool.cpp — group membership (kept by task links), join/kill, and the
// pool's slot accounting.
#include "hub/pool.hpp"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_set>

namespace cogent {

group::~group() {
  for (kill_frame* f = _killing; f != nullptr; f = f->next) {
    f->group_gone = true;
  }
  for (auto& [id, m] : _members) {
    m.handle.unlink(m.link_id);
  }
}

void group::add(const task_base& t) {
  if (!t) {
    throw std::logic_error("cogent: group::add() of an empty task handle");
  }
  track(t);
}

void group::track(const task_base& t) {
  if (t.ready() || _members.count(t.id()) != 0) {
    return;
  }
  auto& m = _members[t.id()];
  m.handle = t;
  m.link_id = t.link([this](const task_base& done) { on_finished(done); }, /*observes=*/false);
}

void group::on_finished(const task_base& t) noexcept {
  auto it = _members.find(t.id());
  if (it == _members.end()) {
    return;
  }
  if (t.exception()) {
    if (!_first_error) {
      _first_error = t.exception();
    }
    try {
      _failures.push_back(t);
    } catch (...) {
    }
  }
  _members.erase(it);
  member_left();
  if (_members.empty()) {
    _empty_waiters.notify_all();
  }
}

void group::discard(const task_base& t) {
  if (!t) {
    return;
  }
  auto it = _members.find(t.id());
  if (it == _members.end()) {
    return;
  }
  it->second.handle.unlink(it->second.link_id);
  _members.erase(it);
  member_left();
  if (_members.empty()) {
    _empty_waiters.notify_all();
  }
}

bool group::contains(const task_base& t) const noexcept {
  return t && _members.count(t.id()) != 0;
}

std::vector<task_base> group::tasks() const {
  std::vector<task_base> out;
  out.reserve(_members.size());
  for (const auto& [id, m] : _members) {
    out.push_back(m.handle);
  }
  return out;
}

bool group::join(timeout_duration t, bool raise_error) {
  hub::throw_if_interrupted();  // also when there is nothing to wait for
  clock::time_point deadline = deadline_after(t);
  while (!_members.empty()) {
    // A zero timeout, or one that has passed, answers without waiting (so also inside the hub).
    if (detail::deadline_passed(deadline) || (!_empty_waiters.wait(deadline) && !_members.empty())) {
      break;
    }
  }
  if (raise_error && _first_error) {
    std::rethrow_exception(std::exchange(_first_error, nullptr));
  }
  return _members.empty();
}

void group::kill(std::exception_ptr e, bool block, timeout_duration t) {
  std::vector<task_base> members = tasks();
  if (task_base self = current_task(); self && std::find(members.begin(), members.end(), self) != members.end()) {
    killall(members, e, block, t);  // the others first (and waited for), then raises in the caller
    return;
  }
  killall(members, e, false);
  if (!block || hub::current().in_hub()) {
    return;
  }
  // As gevent's Group.kill: until the group is empty, kill whoever joined
  // meanwhile (a spawner that got a slot a killed member freed, a member
  // spawned by a dying one) and wait for them.
  clock::time_point deadline = deadline_after(t);
  std::unordered_set<std::uint64_t> killed;
  for (const task_base& m : members) {
    killed.insert(m.id());
  }
  // Registered while we wait (see kill_frame); unlinked on every way out
  // unless the group went first.
  struct registration {
    group& g;
    kill_frame frame;
    explicit registration(group& owner) : g(owner) {
      frame.next = g._killing;
      g._killing = &frame;
    }
    ~registration() {
      if (frame.group_gone) {
        return;
      }
      kill_frame** p = &g._killing;
      while (*p != &frame) {
        p = &(*p)->next;
      }
      *p = frame.next;
    }
    void check() const {
      if (frame.group_gone) {
        throw hub_error("cogent: group destroyed while kill(block) waited for its members");
      }
    }
  } reg(*this);
  for (;;) {
    reg.check();
    std::vector<task_base> fresh;
    for (const auto& [id, m] : _members) {
      if (killed.insert(id).second) {
        fresh.push_back(m.handle);
      }
    }
    if (!fresh.empty()) {
      killall(fresh, e, false);
    }
    std::vector<task_base> left = tasks();
    if (left.empty() && joining() == 0) {
      return;
    }
    if (deadline != clock::time_point::max() && clock::now() >= deadline) {
      return;
    }
    if (left.empty()) {
      hub::current().yield_now();  // let the spawners handed a slot add their members
    } else {
      // Then look again. As a joiner that does not look, as killall(block)
      // waits: a member's own error after our kill is reported like any
      // other (kill() returns none of them).
      detail::join_all_unobserved(left, deadline);
    }
  }
}

pool::pool(std::size_t size) : _capacity(size) {
  if (size == 0) {
    throw std::invalid_argument("cogent: pool size must be at least 1");
  }
  if (size > static_cast<std::size_t>(PTRDIFF_MAX)) {
    throw std::invalid_argument("cogent: pool size " + std::to_string(size) +
                                " is too large (a negative size converted to size_t?)");
  }
}

void pool::add(const task_base& t) {
  if (!t) {
    throw std::logic_error("cogent: pool::add() of an empty task handle");
  }
  if (contains(t) || t.ready()) {
    return;
  }
  wait_for_slot();
  // t may have finished, or another waiter added it, while we waited: then
  // the slot is still free and goes to the next waiter.
  struct settle {
    pool& p;
    ~settle() { p.pass_on_wake(); }
  } guard{*this};
  group::add(t);
}

void pool::wait_for_slot() {
  while (full()) {
    _slot_waiters.wait();
  }
}

bool pool::wait_available(timeout_duration t) {
  hub::throw_if_interrupted();  // also when a slot is free
  clock::time_point deadline = deadline_after(t);
  while (full()) {
    if (detail::deadline_passed(deadline) || (!_slot_waiters.wait(deadline) && full())) {
      return false;  // (a zero timeout answers without waiting: also inside the hub)
    }
  }
  // Wake-ups are not consumed by a caller that does not take the slot: pass
  // it on so another waiter can look too.
  pass_on_wake();
  return true;
}

void pool::pass_on_wake() noexcept {
  if (!_slot_waiters.empty() && !full()) {
    _slot_waiters.notify_one();
  }
}

}  // namespace cogent
