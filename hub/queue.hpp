// hub/queue.hpp — gevent.queue for cogent fibers.
//
// Defines cogent::queue<T> (FIFO), cogent::lifo_queue<T>,
// cogent::priority_queue<T, Compare>, cogent::joinable_queue<T> (a FIFO queue
// with task_done()/join()), cogent::channel<T> (a rendezvous: no buffer), and
// their errors queue_full, queue_empty and queue_error.
//
// A queue belongs to one thread's hub (not thread-safe, like gevent's). get()
// blocks while the queue is empty, put() while a bounded queue is full; both
// take an optional timeout (std::nullopt waits without limit; zero never
// switches) and raise a pending kill or Timeout (timeout_error) on entry, also
// when they would not block (nothing is then taken or added). Inside the hub
// (a timer or post() callback) one that would have to wait raises
// cogent::hub_error; the nowait variants and zero timeouts work there.
//
// Loses nothing: waiting getters and putters are served first come, first
// served, and an item is handed straight to a waiting getter (or a waiting
// putter's item straight into the freed slot) before that fiber wakes. A
// getter or putter that is killed or times out while waiting is skipped: the
// item goes to the next getter or stays in the queue, and a putter that gives
// up takes its item with it. If an item reached a waiter before its kill
// could act (same hub turn), the call completes — the getter returns the item
// — and the kill is raised at the fiber's next blocking call.
#pragma once
#pragma GCC visibility push(default)

#include <algorithm>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <optional>
#include <set>
#include <stdexcept>
#include <utility>
#include <vector>

#include "hub/core.hpp"
#include "hub/sync.hpp"

namespace cogent {

// queue_full is thrown by put() when its timeout passes while the queue stays
// full, by put_nowait() on a full queue, and by a channel put that no getter
// took in time.
class queue_full : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// queue_empty is thrown by get()/peek() when their timeout passes while the
// queue stays empty, and by get_nowait()/peek_nowait() on an empty queue.
class queue_empty : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// queue_error is thrown on queue misuse: task_done() called more times than
// items were put.
class queue_error : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

namespace detail {

// fifo_store, lifo_store and ordered_store are the orderings basic_queue uses.
// `reorders` says an item put later may come out first; then before(a, b)
// says `a` comes out before `b` (a put later than b).
template <class T>
struct fifo_store {
  static constexpr bool reorders = false;
  std::deque<T> items;
  void push(T&& v) { items.push_back(std::move(v)); }
  T& top() { return items.front(); }
  void pop() { items.pop_front(); }
};
template <class T>
struct lifo_store {
  static constexpr bool reorders = true;
  std::vector<T> items;
  void push(T&& v) { items.push_back(std::move(v)); }
  T& top() { return items.back(); }
  void pop() { items.pop_back(); }
  bool before(const T&, const T&) const noexcept { return true; }  // the later one
};
// ordered_store keeps items sorted under Compare in a node-based multiset:
// an insert either adds the item where it belongs or, if a move or the
// comparator throws, leaves the store as it was (a binary heap would keep a
// half-sifted item); equal items come out in the order they were put.
template <class T, class Compare>
struct ordered_store {
  static constexpr bool reorders = true;
  std::multiset<T, Compare> items;
  bool before(const T& a, const T& b) const { return items.key_comp()(a, b); }  // equal: put order
  void push(T&& v) { items.insert(std::move(v)); }
  // The first item, to be moved from and then popped: nothing compares it in
  // between (erase() of begin() compares nothing), so the set's order is
  // never consulted while it holds a moved-from value.
  T& top() { return const_cast<T&>(*items.begin()); }
  void pop() { items.erase(items.begin()); }
};

// basic_queue is the shared implementation of queue, lifo_queue,
// priority_queue and joinable_queue (see queue<T> for the interface).
template <class T, class Store>
class basic_queue {
 public:
  explicit basic_queue(std::size_t maxsize = 0, Store store = {})
      : _store(std::move(store)), _maxsize(maxsize) {}
  basic_queue(const basic_queue&) = delete;
  basic_queue& operator=(const basic_queue&) = delete;

  // put() adds `item`: hands it to the longest-waiting getter if there is
  // one (in a lifo_queue or priority_queue, the getters already handed items
  // that have not run yet keep the queue's order, also against what is
  // stored after them: the earliest gets the item that comes first, as in
  // gevent; for an item type whose swap may throw, in the order put), else
  // stores it, blocking while the queue is
  // full up to `t`. Throws
  // queue_full if `t` passes first (the item is not added). Raises a pending
  // kill or Timeout (the item is not added). May switch (only when full).
  void put(T item, timeout_duration t = std::nullopt) {
    offer o{&item, nullptr};
    handoff_list::node n;
    n.data = &o;  // granted: a getter moved the item into the freed slot (or failed to: o.error)
    if (!_putters.take(n, t, [&] {
          // Straight to a getter only when nothing is stored (stored items
          // go first, FIFO).
          if (empty()) {
            if (handoff_list::node* g = _getters.first()) {
              give(*g, std::move(item));
              return true;
            }
          }
          if (full()) {
            return false;
          }
          keep_order_among_granted(item);  // (then the item it displaced, if any, is stored)
          store(std::move(item));
          return true;
        })) {
      throw queue_full("cogent::queue::put(): the queue is full");
    }
    if (o.error) {
      std::rethrow_exception(o.error);  // the getter could not store our item: not added
    }
  }
  // put_nowait() is put() that never blocks: throws queue_full if full. Never switches.
  void put_nowait(T item) { put(std::move(item), std::chrono::nanoseconds::zero()); }

  // get() removes and returns the next item, blocking while the queue is
  // empty up to `t`. Throws queue_empty if `t` passes first. Raises a pending
  // kill or Timeout (nothing is removed). May switch (only when empty).
  T get(timeout_duration t = std::nullopt) {
    std::optional<T> slot;
    handoff_list::node n;
    n.data = &slot;  // granted: put() placed the item here
    if (!_getters.take(n, t, [&] {
          if (empty()) {
            return false;
          }
          slot.emplace(std::move(_store.top()));
          _store.pop();
          admit_putter();
          return true;
        })) {
      throw queue_empty("cogent::queue::get(): the queue is empty");
    }
    return std::move(*slot);
  }
  // get_nowait() is get() that never blocks: throws queue_empty if empty. Never switches.
  T get_nowait() { return get(std::chrono::nanoseconds::zero()); }

  // peek() returns a copy of the next item without removing it, blocking
  // while the queue is empty up to `t` (queue_empty after that). An item put
  // while a getter waits goes to the getter and is never seen by peek().
  // Raises a pending kill or Timeout. May switch (only when empty).
  T peek(timeout_duration t = std::nullopt) {
    hub::throw_if_interrupted();
    clock::time_point deadline = deadline_after(t);
    while (empty()) {
      if (deadline_passed(deadline) || (!_peekers.wait(deadline) && empty())) {
        throw queue_empty("cogent::queue::peek(): the queue is empty");
      }
    }
    return _store.top();
  }
  // peek_nowait() is peek() that never blocks. Never switches.
  T peek_nowait() { return peek(std::chrono::nanoseconds::zero()); }

  // size() is the number of stored items; empty() and full() test it against
  // 0 and maxsize() (0: unbounded, never full). Never switch.
  std::size_t size() const noexcept { return _store.items.size(); }
  bool empty() const noexcept { return _store.items.empty(); }
  bool full() const noexcept { return _maxsize > 0 && size() >= _maxsize; }
  std::size_t maxsize() const noexcept { return _maxsize; }
  // getters()/putters() count the fibers blocked in get()/put(). Never switch.
  std::size_t getters() const noexcept { return _getters.size(); }
  std::size_t putters() const noexcept { return _putters.size(); }

 protected:
  // _unfinished counts items put and not yet task_done() (joinable_queue).
  std::size_t _unfinished = 0;

 private:
  void store(T&& item) {
    _store.push(std::move(item));
    ++_unfinished;
    _peekers.notify_all();
  }
  // keep_order_among_granted(): getters granted items earlier in this turn
  // have not run yet. As in gevent (each getter takes the first item when it
  // runs), the earliest of them holds the item that comes first: if `item`
  // comes before one of theirs it takes that place, the others moving one
  // getter down, and `item` becomes the one displaced last (for the next
  // getter, or the store). Compared first, then swapped (which cannot
  // throw): a comparator that throws leaves every getter's item as it was.
  void keep_order_among_granted(T& item) {
    if constexpr (Store::reorders && std::is_nothrow_swappable_v<T>) {
      handoff_list::node* at = _getters.granted_front();
      while (at != nullptr && !_store.before(item, **static_cast<std::optional<T>*>(at->data))) {
        at = at->next;
      }
      for (; at != nullptr; at = at->next) {
        using std::swap;
        swap(item, **static_cast<std::optional<T>*>(at->data));
      }
    }
  }
  void give(handoff_list::node& g, T&& item) {
    keep_order_among_granted(item);
    static_cast<std::optional<T>*>(g.data)->emplace(std::move(item));
    ++_unfinished;
    _getters.grant(g);
  }
  // offer is what a waiting putter's node carries: its item, and the
  // exception that storing it raised in the getter that admitted it.
  struct offer {
    T* item;
    std::exception_ptr error;
  };
  // admit_putter() moves the longest-waiting putter's item into the slot a
  // get freed. If that throws (the item's move), the putter is still let go
  // and its put() raises the exception (its item not added), the next putter
  // is tried for the slot, and the get that admitted them keeps its own item.
  void admit_putter() noexcept {
    while (!full()) {
      handoff_list::node* p = _putters.first();
      if (p == nullptr) {
        return;
      }
      auto* o = static_cast<offer*>(p->data);
      bool stored = false;
      try {
        store(std::move(*o->item));
        stored = true;
      } catch (...) {
        o->error = std::current_exception();
      }
      _putters.grant(*p);
      if (stored) {
        return;
      }
    }
  }

  Store _store;
  std::size_t _maxsize;
  handoff_list _getters;
  handoff_list _putters;
  wait_list _peekers;
};

}  // namespace detail

// queue is gevent's Queue: a FIFO of T between fibers, unbounded if maxsize
// is 0, else put() blocks while it holds maxsize items. Members (from
// detail::basic_queue): put(item, t), put_nowait(item), get(t), get_nowait(),
// peek(t), peek_nowait(), size(), empty(), full(), maxsize(), getters(),
// putters(). Must not be destroyed while fibers wait on it.
//
// Example:
//   cogent::queue<std::string> q(10);
//   auto consumer = cogent::spawn([&] {
//     for (std::string s; (s = q.get()) != "";) { std::puts(s.c_str()); }
//   });
//   q.put("hello");
//   q.put("");                        // sentinel: the consumer stops
//   consumer.join();
template <class T>
class queue : public detail::basic_queue<T, detail::fifo_store<T>> {
 public:
  // queue() creates an empty queue holding at most `maxsize` items (0: no limit). Never switches.
  explicit queue(std::size_t maxsize = 0) : detail::basic_queue<T, detail::fifo_store<T>>(maxsize) {}
};

// lifo_queue is gevent's LifoQueue: get() returns the most recently put item.
// Same interface as queue.
//
// Example:
//   cogent::lifo_queue<int> s;
//   s.put(1); s.put(2);
//   int top = s.get();                // 2
template <class T>
class lifo_queue : public detail::basic_queue<T, detail::lifo_store<T>> {
 public:
  // lifo_queue() creates an empty stack holding at most `maxsize` items (0: no limit). Never switches.
  explicit lifo_queue(std::size_t maxsize = 0) : detail::basic_queue<T, detail::lifo_store<T>>(maxsize) {}
};

// priority_queue is gevent's PriorityQueue: get() returns the item that comes
// first under Compare — the smallest for the default std::less, as in gevent
// and heapq (the opposite of std::priority_queue). Equal items come out in
// the order they were put. A put() whose item's move or comparison throws
// adds nothing. Same interface as queue.
//
// Example:
//   cogent::priority_queue<std::pair<int, std::string>> jobs;
//   jobs.put({2, "later"});
//   jobs.put({1, "first"});
//   auto j = jobs.get();              // {1, "first"}
template <class T, class Compare = std::less<T>>
class priority_queue : public detail::basic_queue<T, detail::ordered_store<T, Compare>> {
 public:
  // priority_queue() creates an empty queue holding at most `maxsize` items
  // (0: no limit), ordered by `comp`. Never switches.
  explicit priority_queue(std::size_t maxsize = 0, Compare comp = Compare())
      : detail::basic_queue<T, detail::ordered_store<T, Compare>>(
            maxsize, detail::ordered_store<T, Compare>{std::multiset<T, Compare>(std::move(comp))}) {}
};

// joinable_queue is gevent's JoinableQueue: a FIFO queue that counts
// unfinished items. Every put() adds one; a consumer calls task_done() when it
// has finished processing an item it got; join() blocks until the count is 0.
//
// Example:
//   cogent::joinable_queue<int> work;
//   auto w = cogent::spawn([&] {
//     for (;;) { int n = work.get(); process(n); work.task_done(); }
//   });
//   for (int i = 0; i < 100; ++i) { work.put(i); }
//   work.join();                      // all 100 processed
//   w.kill();
template <class T>
class joinable_queue : public queue<T> {
 public:
  // joinable_queue() creates an empty queue holding at most `maxsize` items (0: no limit). Never switches.
  explicit joinable_queue(std::size_t maxsize = 0) : queue<T>(maxsize) {}

  // task_done() marks one item as processed; when none is left unfinished,
  // every join() waiter wakes. Throws queue_error if called more times than
  // items were put. Never switches.
  void task_done() {
    if (this->_unfinished == 0) {
      throw queue_error("cogent::joinable_queue::task_done(): called more times than items were put");
    }
    if (--this->_unfinished == 0) {
      _joiners.notify_all();
    }
  }
  // join() blocks until every item put has been task_done() (true) or `t`
  // passes (false; no exception). Raises a pending kill or Timeout. May switch.
  bool join(timeout_duration t = std::nullopt) {
    hub::throw_if_interrupted();
    if (this->_unfinished == 0) {
      return true;
    }
    clock::time_point deadline = deadline_after(t);
    if (detail::deadline_passed(deadline)) {
      return false;
    }
    // Woken means the count reached 0 (task_done's notify_all, the only
    // notifier): not read again, so the queue may be destroyed right after.
    return _joiners.wait(deadline, true);
  }
  // unfinished_tasks() is the number of items put and not yet task_done(). Never switches.
  std::size_t unfinished_tasks() const noexcept { return this->_unfinished; }

 private:
  detail::wait_list _joiners;
};

// channel is gevent's Channel: a queue with no buffer (maxsize 0). put()
// blocks until a getter takes the item; get() blocks until a putter offers
// one. A put that times out or is killed leaves no item behind.
//
// Example:
//   cogent::channel<int> ch;
//   auto t = cogent::spawn([&] { ch.put(7); std::puts("taken"); });
//   int v = ch.get();                 // 7 — t printed "taken" first: a put to a waiting
//                                     // getter hands the item over without switching
//   t.join();
template <class T>
class channel {
 public:
  channel() = default;
  channel(const channel&) = delete;
  channel& operator=(const channel&) = delete;

  // put() hands `item` to the longest-waiting getter, or blocks until a
  // getter takes it, up to `t`. Throws queue_full if no getter took it in
  // time (the item is not delivered). Raises a pending kill or Timeout (the
  // item is not delivered). May switch (unless a getter is waiting).
  void put(T item, timeout_duration t = std::nullopt) {
    detail::handoff_list::node n;
    n.data = &item;  // granted: a getter took it
    if (!_putters.take(n, t, [&] {
          detail::handoff_list::node* g = _getters.first();
          if (g == nullptr) {
            return false;
          }
          static_cast<std::optional<T>*>(g->data)->emplace(std::move(item));
          _getters.grant(*g);
          return true;
        })) {
      throw queue_full("cogent::channel::put(): no getter took the item");
    }
  }
  // put_nowait() hands `item` to a waiting getter or throws queue_full. Never switches.
  void put_nowait(T item) { put(std::move(item), std::chrono::nanoseconds::zero()); }

  // get() takes the item of the longest-waiting putter (which then returns),
  // or blocks until a putter comes, up to `t`. Throws queue_empty if none came
  // in time. Raises a pending kill or Timeout. May switch (unless a putter is waiting).
  T get(timeout_duration t = std::nullopt) {
    std::optional<T> slot;
    detail::handoff_list::node n;
    n.data = &slot;  // granted: a putter placed its item here
    if (!_getters.take(n, t, [&] {
          detail::handoff_list::node* p = _putters.first();
          if (p == nullptr) {
            return false;
          }
          slot.emplace(std::move(*static_cast<T*>(p->data)));
          _putters.grant(*p);
          return true;
        })) {
      throw queue_empty("cogent::channel::get(): no putter came");
    }
    return std::move(*slot);
  }
  // get_nowait() takes a waiting putter's item or throws queue_empty. Never switches.
  T get_nowait() { return get(std::chrono::nanoseconds::zero()); }

  // size() is always 0, empty() and full() always true, maxsize() 0 (gevent's
  // Channel). getters()/putters() count the fibers blocked in get()/put();
  // balance() is putters() - getters(). Never switch.
  std::size_t size() const noexcept { return 0; }
  bool empty() const noexcept { return true; }
  bool full() const noexcept { return true; }
  std::size_t maxsize() const noexcept { return 0; }
  std::size_t getters() const noexcept { return _getters.size(); }
  std::size_t putters() const noexcept { return _putters.size(); }
  std::ptrdiff_t balance() const noexcept {
    return static_cast<std::ptrdiff_t>(_putters.size()) - static_cast<std::ptrdiff_t>(_getters.size());
  }

 private:
  detail::handoff_list _getters;
  detail::handoff_list _putters;
};

}  // namespace cogent

#pragma GCC visibility pop
