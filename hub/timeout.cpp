// hub/timeout.cpp — the timeout scope: a hub timer that interrupts its fiber.
#include "hub/timeout.hpp"

#include <atomic>
#include <cstdio>

namespace cogent {

namespace {
std::atomic<std::uint64_t> g_timeout_serial{0};
}  // namespace

timeout_error::timeout_error(const timeout* source, std::chrono::nanoseconds after) noexcept
    : _source(source), _serial(source != nullptr ? source->_serial : 0), _after(after) {
  // Formatted here, once: what() on an exception shared between threads
  // (an exception_ptr handed on) only reads.
  if (after < std::chrono::microseconds(1)) {
    std::snprintf(_msg, sizeof _msg, "cogent: timeout after %lld ns", static_cast<long long>(after.count()));
  } else {
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(after).count();
    std::snprintf(_msg, sizeof _msg, "cogent: timeout after %lld us", static_cast<long long>(us));
  }
}

const char* timeout_error::what() const noexcept {
  return _msg;
}

void defer_interrupt(std::exception_ptr e) noexcept {
  const void* owner = nullptr;
  try {
    std::rethrow_exception(e);
  } catch (const timeout_error& t) {
    owner = t.source();
  } catch (...) {
  }
  hub::current().interrupt(detail::current_impl(), std::move(e), owner);
}

bool timeout::is_mine(const std::exception_ptr& p) const noexcept {
  if (!p) {
    return false;
  }
  try {
    std::rethrow_exception(p);
  } catch (const timeout_error& e) {
    return owns(e);
  } catch (...) {
  }
  return false;
}

bool timeout::pending_is_mine() const noexcept {
  if (_fiber->sched.pending_owner != this) {
    return false;  // the common case: no exception to look into
  }
  return is_mine(_fiber->sched.pending);
}

timeout::timeout(timeout_duration d) {
  if (!d) {
    return;
  }
  if (deadline_after(d) == clock::time_point::max()) {
    return;  // too long to represent: never fires (a timer at max() would hide would_block_forever)
  }
  _hub = &hub::current();
  _fiber = detail::current_impl();
  detail::ref(_fiber);  // a scope kept past its fiber's end must not read a freed fiber
  _after = *d;
  _serial = g_timeout_serial.fetch_add(1, std::memory_order_relaxed) + 1;
  _node.self = this;
  _node.deadline = deadline_after(d);
  _node.fire = [](detail::timer_node* n) {
    timeout* t = static_cast<node*>(n)->self;
    if (t->_fiber->dead) {
      return;  // the scope outlived its fiber: nobody left to interrupt
    }
    auto& sched = t->_fiber->sched;
    if (sched.pending && !t->pending_is_mine()) {
      if (sched.pending_owner == nullptr && !sched.displaced) {
        // A kill is pending, not yet raised (the fiber may be in a wait that
        // a kill does not end, such as a thread-pool job): queue our error
        // behind it, as a kill arriving after it would have (hub::interrupt);
        // it becomes pending once the kill is raised.
        t->_expired = true;
        sched.displaced = std::make_exception_ptr(timeout_error(t, t->_after));
        sched.displaced_owner = t;
        return;
      }
      // Another interrupt (an inner timeout; a kill with one queued behind
      // it already) is pending and not yet raised: try again shortly rather
      // than be lost behind it.
      t->_node.deadline = clock::now() + std::chrono::milliseconds(1);
      t->_hub->add_timer(t->_node);
      return;
    }
    t->_expired = true;
    t->_hub->interrupt(t->_fiber, std::make_exception_ptr(timeout_error(t, t->_after)), t);
  };
  _hub->add_timer(_node);
}

timeout::~timeout() {
  cancel();
  if (_fiber != nullptr) {
    detail::unref(_fiber);
  }
}

void timeout::cancel() noexcept {
  if (_hub == nullptr) {
    return;
  }
  _hub->cancel_timer(_node);
  if (_fiber->sched.displaced_owner == this && is_mine(_fiber->sched.displaced)) {
    _fiber->sched.displaced = nullptr;  // (a kill is pending: it is raised, then nothing of ours)
    _fiber->sched.displaced_owner = nullptr;
    _expired = false;  // withdrawn, never raised
  }
  // Withdraw our error unless it already woke the fiber from a wait and
  // someone else is cancelling: that fiber is on its way to raise it (as in
  // gevent, where an expired Timeout is thrown into its greenlet at once), and
  // pulling it back would leave the wait it was woken from half undone.
  if (pending_is_mine() && (!_fiber->sched.pending_delivered || _fiber == detail::current_impl())) {
    _fiber->sched.pending = nullptr;
    _fiber->sched.pending_owner = nullptr;
    _expired = false;  // withdrawn, never raised
  }
}

}  // namespace cogent
