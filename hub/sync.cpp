// hub/sync.cpp — handoff_list, event, mutex, rlock, semaphore.
#include "hub/sync.hpp"

#include <string>

namespace cogent {
namespace detail {

// ---- handoff_list ---------------------------------------------------------------

bool handoff_list::wait(node& n, clock::time_point deadline) {
  if (deadline_passed(deadline)) {
    return false;
  }
  hub& h = hub::current();
  n.f = current_impl();
  n.granted = false;
  fifo_links<node>::scoped link(_links, n);
  h.park(deadline, true);
  if (n.granted) {
    if (n.orphaned) [[unlikely]] {
      hub::throw_if_interrupted();
      throw_orphaned();  // granted by a list destroyed before we ran: what it gave is gone
    }
    _granted.unlink(n);
    return true;  // a grant wins; a pending interrupt is raised at the next blocking call
  }
  hub::throw_if_interrupted_in_wait();  // (`link` unlinks n as it unwinds)
  if (!n.linked) [[unlikely]] {
    throw_orphaned();  // unlinked without a grant: the list was destroyed under us
  }
  return false;  // neither granted nor interrupted: the deadline passed
}

handoff_list::node* handoff_list::first() const noexcept {
  for (node* n = _links.front(); n != nullptr; n = n->next) {
    if (!n->f->sched.pending) {
      return n;
    }
  }
  return nullptr;
}

void handoff_list::grant(node& n) noexcept {
  _links.unlink(n);
  n.granted = true;
  _granted.push_back(n);
  wake_waiter(n.f);
}

}  // namespace detail

// ---- event ------------------------------------------------------------------------

void event::set() noexcept {
  _flag = true;
  _waiters.notify_all();
  _links.run();
}

bool event::wait(timeout_duration t) {
  hub::throw_if_interrupted();
  if (_flag) {
    return true;
  }
  clock::time_point deadline = deadline_after(t);
  if (detail::deadline_passed(deadline)) {
    return false;
  }
  // Woken, the wait means set() ran (it is the only notifier: notify_all),
  // even if clear() followed it; the event is not read again, so it may be
  // destroyed right after set().
  return _waiters.wait(deadline, true);
}

// ---- mutex and rlock ----------------------------------------------------------------

namespace detail {

bool owner_lock::owned_by(const fiber_impl* f) const noexcept {
  return _owner != 0 && _owner == f->id;
}

bool owner_lock::owned() const noexcept {
  return owned_by(current_impl());
}

bool owner_lock::take(fiber_impl* self, timeout_duration t) {
  handoff_list::node n;
  // Free implies no waiter can claim it (hand_over() gives it directly); a
  // grant means hand_over() made us the owner.
  return _waiters.take(n, t, [&] {
    if (_owner != 0) {
      return false;
    }
    _owner = self->id;
    return true;
  });
}

void owner_lock::check_owner(const char* who) const {
  if (_owner == 0) {
    throw lock_error(std::string(who) + ": the lock is not locked");
  }
  if (!owned()) {
    throw lock_error(std::string(who) + ": the calling fiber does not own the lock");
  }
}

fiber_impl* owner_lock::hand_over() noexcept {
  handoff_list::node* n = _waiters.first();
  if (n == nullptr) {
    _owner = 0;
    return nullptr;
  }
  fiber_impl* next = n->f;
  _owner = next->id;
  _waiters.grant(*n);
  return next;
}

}  // namespace detail

bool mutex::acquire(timeout_duration t) {
  detail::fiber_impl* self = detail::current_impl();
  if (_lock.owned_by(self)) {
    throw lock_error(
        "cogent::mutex::acquire(): the calling fiber already owns this lock (it would deadlock; "
        "use cogent::rlock for re-entry)");
  }
  return _lock.take(self, t);
}

void mutex::release() {
  _lock.check_owner("cogent::mutex::release()");
  _lock.hand_over();
}

bool rlock::acquire(timeout_duration t) {
  hub::throw_if_interrupted();
  detail::fiber_impl* self = detail::current_impl();
  if (_lock.owned_by(self)) {
    ++_count;
    return true;
  }
  if (!_lock.take(self, t)) {
    return false;
  }
  if (_count == 0) {
    _count = 1;  // taken while free (a grant comes with release()'s count of 1)
  }
  return true;
}

void rlock::release() {
  _lock.check_owner("cogent::rlock::release()");
  if (--_count > 0) {
    return;
  }
  if (_lock.hand_over() != nullptr) {
    _count = 1;
  }
}

// ---- semaphore --------------------------------------------------------------------

bool semaphore::acquire(timeout_duration t) {
  detail::handoff_list::node n;
  // A free unit implies no waiter can claim it (release() hands units over
  // directly); a grant means release() gave us its unit.
  return _waiters.take(n, t, [this] {
    if (_counter == 0) {
      return false;
    }
    --_counter;
    return true;
  });
}

void semaphore::release() {
  if (_bounded && _counter >= _initial) {
    throw lock_error(
        "cogent::bounded_semaphore::release(): released more times than acquired (the counter would "
        "exceed its initial value " +
        std::to_string(_initial) + ")");
  }
  if (detail::handoff_list::node* n = _waiters.first()) {
    _waiters.grant(*n);
  } else {
    ++_counter;
  }
}

}  // namespace cogent
