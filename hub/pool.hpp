// hub/pool.hpp — gevent.pool: groups of tasks and bounded pools of tasks.
//
// Defines cogent::group (a set of tasks you can join, kill, map over) and
// cogent::pool (a group with at most `size` members: spawning into a full pool
// waits for a slot — a concurrency limit).
//
// Membership: a task is a member from add()/spawn() until it finishes (a link
// removes it) or discard() removes it. Handles are kept, so a member's state
// lives at least as long as its membership. Destroying a group does not kill
// its members; it only forgets them.
//
// Inside the hub (a timer or post() callback) a call that would have to wait
// (join, spawn into a full pool, map) raises cogent::hub_error; kill() only
// sends the kills there.
//
// Errors: the group's link on a member does not count as observing it (see
// task.hpp), so a member's error that nobody joins or gets is still reported
// once by the unjoined-error handler. The group also keeps the first one:
// join(t, raise_error) rethrows it, failures() lists them.
//
// Example:
//   cogent::pool p(10);                            // at most 10 fetches at once
//   auto sizes = p.map([](const std::string& url) { return fetch(url).size(); }, urls);
//   for (auto& s : p.imap_unordered(check, hosts)) { ... }   // each as it finishes
//   for (auto& s : p.imap(check, hosts)) { ... }   // in the order of hosts, each once it is there
//   cogent::group g;
//   g.spawn(worker, 1);
//   g.spawn(worker, 2);
//   g.join();                                      // both finished
#pragma once
#pragma GCC visibility push(default)

#include <cstddef>
#include <cstdint>
#include <exception>
#include <iterator>
#include <memory>
#include <optional>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "hub/core.hpp"
#include "hub/queue.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"

namespace cogent {

template <class T>
class imap_stream;
template <class T>
using imap_unordered_stream = imap_stream<T>;

// group is an unbounded set of tasks (gevent.pool.Group). One hub; not thread-safe.
//
// Example:
//   cogent::group g;
//   for (int i = 0; i < 3; ++i) g.spawn([i] { cogent::sleep(10ms * i); });
//   g.join();        // true: all three finished, g.size() == 0
class group {
 public:
  group() = default;
  // ~group() forgets its members (unlinks from them); it does not kill them.
  virtual ~group();
  group(const group&) = delete;
  group& operator=(const group&) = delete;

  // add() makes t a member until it finishes. A finished task is not added.
  // Never switches for a group (a full pool waits: see pool::add()). Throws
  // std::logic_error for an empty handle.
  virtual void add(const task_base& t);
  // discard() removes t without touching it. No effect if not a member. Never switches.
  void discard(const task_base& t);
  // contains() is true if t is a member. Never switches.
  bool contains(const task_base& t) const noexcept;
  // size() is the number of members. Never switches.
  std::size_t size() const noexcept { return _members.size(); }
  // tasks() lists the members (in no particular order). Never switches.
  std::vector<task_base> tasks() const;

  // spawn() starts fn(args...) as a task and adds it (a full pool first waits
  // for a slot). Returns its handle. May switch (pool only).
  template <class Fn, class... Args>
  auto spawn(Fn&& fn, Args&&... args) {
    wait_for_slot();
    // However this ends (cogent::spawn may throw fiber_error), a slot left
    // free goes to the next waiter.
    struct settle {
      group& g;
      ~settle() { g.slot_settled(); }
    } guard{*this};
    auto t = cogent::spawn(std::forward<Fn>(fn), std::forward<Args>(args)...);
    track(t);
    return t;
  }

  // join() waits until the group is empty or `t` passed; true if empty. With
  // raise_error, rethrows the first member error recorded (and clears it).
  // Raises a pending kill/Timeout. May switch.
  bool join(timeout_duration t = std::nullopt, bool raise_error = false);

  // kill() raises `e` (default fiber_exit) in every member (see task_base::kill);
  // with block, waits up to `t` for the group to empty (not in the hub: from
  // a timer or post() callback it only sends the kills). Called by a member,
  // it kills all the others and (block) waits for them, then raises `e` in
  // the caller. A group destroyed while kill(block) waits makes it raise
  // hub_error (the kills were sent). May switch (block).
  void kill(std::exception_ptr e = nullptr, bool block = true, timeout_duration t = std::nullopt);

  // failures() lists the members that finished with an error (not a fiber_exit kill).
  const std::vector<task_base>& failures() const noexcept { return _failures; }

  // map() runs fn(item) for every item of `range` as members (a pool bounds
  // the concurrency) and returns the results in the order of `range`. It
  // collects them in range order: when it reaches an item that raised, the
  // others still running are killed, that (first, in range order) error is
  // rethrown, and items not started by then (a pool was full) never start —
  // slower items before the failed one are waited for first. If the caller is
  // killed, so are they. Returns void for a void fn. May switch.
  template <class Fn, class Range>
  auto map(Fn&& fn, const Range& range);

  // imap_unordered() runs fn(item) for every item of `range` as members and
  // streams the results as the tasks finish (gevent's imap_unordered): it
  // returns an imap_unordered_stream at once, and iterating it waits for each
  // next result. A feeder task spawns the members (in a pool, as slots free
  // up), so results flow while later items have not started. The items and fn
  // are copied; the group must outlive the stream. Not for void fn. Never
  // switches itself (the stream's next() does).
  template <class Fn, class Range>
  auto imap_unordered(Fn&& fn, const Range& range);

  // imap() is imap_unordered() with the results in the order of `range`
  // (gevent's imap): iterating waits for the next item's result, while later
  // items run on (a pool bounds how many). A member that raised has its error
  // rethrown when the stream reaches it, as map() does, but results before it
  // come first. Not for void fn. Never switches itself.
  template <class Fn, class Range>
  auto imap(Fn&& fn, const Range& range);

 protected:
  // wait_for_slot() blocks until a member may be added (never, for a group).
  virtual void wait_for_slot() {}
  // slot_settled() runs once the caller of wait_for_slot() has added its
  // member or given up (the task finished meanwhile or was a member already,
  // the spawn threw). Never switches.
  virtual void slot_settled() noexcept {}
  // member_left() runs when a member finishes or is discarded. Never switches.
  virtual void member_left() noexcept {}
  // joining() is nonzero while fibers may be on their way to adding a member
  // (a pool's spawner woken for a freed slot that has not run yet). Never switches.
  virtual std::size_t joining() const noexcept { return 0; }

 private:
  struct member {
    task_base handle;
    std::size_t link_id = 0;
  };
  void track(const task_base& t);
  void on_finished(const task_base& t) noexcept;
  template <class Fn, class Range, class Collect>
  void run_all(Fn& fn, const Range& range, Collect&& collect_in_order);
  template <class T>
  friend class imap_stream;
  template <class Fn, class Range>
  auto make_imap(Fn&& fn, const Range& range, bool ordered);

  std::unordered_map<std::uint64_t, member> _members;
  std::vector<task_base> _failures;
  std::exception_ptr _first_error;
  detail::wait_list _empty_waiters;
  // The kill(block) calls waiting for members (each a frame on its fiber's
  // stack): ~group() marks them, so a kill whose group is destroyed under it
  // raises hub_error instead of reading freed memory (as a wait_list wait).
  struct kill_frame {
    kill_frame* next = nullptr;
    bool group_gone = false;
  };
  kill_frame* _killing = nullptr;
};

// pool is a group with at most `size` members (gevent.pool.Pool): spawn() and
// add() wait while it is full.
//
// Example:
//   cogent::pool p(2);
//   for (int i = 0; i < 6; ++i) p.spawn([] { cogent::sleep(100ms); });   // 2 at a time
//   p.join();                                                             // ~300 ms
class pool : public group {
 public:
  // pool() makes a pool of `size` slots. Throws std::invalid_argument if size
  // is 0 or above PTRDIFF_MAX (a negative count converted to size_t).
  explicit pool(std::size_t size);
  // add() waits for a free slot, then makes t a member. May switch. Waiting
  // spawners are woken in the order they came, but a freed slot is not kept
  // for the one woken: a fiber that runs before it in the same turn may take it.
  void add(const task_base& t) override;
  // capacity() is the number of slots. Never switches.
  std::size_t capacity() const noexcept { return _capacity; }
  // free_count() is the number of free slots. Never switches.
  std::size_t free_count() const noexcept { return size() >= _capacity ? 0 : _capacity - size(); }
  // full() is true when no slot is free. Never switches.
  bool full() const noexcept { return free_count() == 0; }
  // wait_available() waits until a slot is free or `t` passed; returns true if
  // one is free. Raises a pending kill/Timeout. May switch.
  bool wait_available(timeout_duration t = std::nullopt);

 protected:
  void wait_for_slot() override;
  void slot_settled() noexcept override { pass_on_wake(); }
  void member_left() noexcept override { _slot_waiters.notify_one(); }
  std::size_t joining() const noexcept override { return _slot_waiters.woken_count(); }

 private:
  // pass_on_wake() wakes the next slot waiter if a slot is still free: a
  // wake-up the woken fiber did not use for a member must not be lost.
  void pass_on_wake() noexcept;

  std::size_t _capacity;
  // Slot waiters are woken in order, not handed the slot: a fiber that runs
  // first in the same turn may take it.
  detail::wait_list _slot_waiters;
};

// ---- templates ------------------------------------------------------------------

template <class Fn, class Range, class Collect>
void group::run_all(Fn& fn, const Range& range, Collect&& collect) {
  using item_type = std::decay_t<decltype(*std::begin(range))>;
  using result_type = std::invoke_result_t<Fn&, const item_type&>;
  std::vector<task<result_type>> started;
  // Set by the members' links; declared before the reaper, which waits for
  // members (whose links may still run) before anything here goes.
  bool failed = false;
  // If anything goes wrong here (an error, a kill of the caller), members we
  // started must not outlive this frame: they refer to fn.
  struct reaper {
    std::vector<task<result_type>>& ts;
    bool armed = true;
    ~reaper() {
      if (!armed) {
        return;
      }
      std::vector<task_base> left(ts.begin(), ts.end());
      try {
        killall(left, nullptr, false);
        for (const task_base& t : left) {
          while (!t.ready()) {
            try {
              t.join_unobserved();  // an error of its own after our kill is reported
            } catch (...) {
              // A second kill of the caller: keep waiting, fn must stay alive.
            }
          }
        }
      } catch (...) {
      }
    }
  } guard{started};
  // In a pool, spawn() waits for a slot: a member that fails meanwhile stops
  // the spawning — the item whose spawn was waiting is killed before it
  // starts (so it never runs) and the items after it are never spawned. The
  // link does not observe: an error nobody joins is reported, as any.
  for (const auto& item : range) {
    started.push_back(spawn([&fn](const item_type& x) -> result_type { return fn(x); }, item));
    if (failed) {
      started.back().kill(nullptr, false);
      break;
    }
    started.back().link(
        [&failed](const task_base& t) {
          if (t.exception()) {
            failed = true;
          }
        },
        false);
  }
  collect(started);
  guard.armed = false;
}

template <class Fn, class Range>
auto group::map(Fn&& fn, const Range& range) {
  using item_type = std::decay_t<decltype(*std::begin(range))>;
  using result_type = std::invoke_result_t<Fn&, const item_type&>;
  if constexpr (std::is_void_v<result_type>) {
    run_all(fn, range, [](std::vector<task<void>>& ts) {
      for (auto& t : ts) {
        t.get();
      }
    });
  } else {
    std::vector<result_type> out;
    run_all(fn, range, [&out](std::vector<task<result_type>>& ts) {
      out.reserve(ts.size());
      for (auto& t : ts) {
        out.push_back(t.get());
      }
    });
    return out;
  }
}

// imap_stream is what group::imap_unordered() and group::imap() return: the
// results of fn over the items, each as its task finishes (imap_unordered) or
// in the items' order (imap). Move-only; one hub. imap_unordered_stream<T> is
// another name for it.
//
// next() waits for the next result; std::nullopt once every item's result has
// been returned. A member that raised has its error rethrown by the next()
// that reaches it (in finish order, or in item order for imap), after the
// feeder and the members still running are killed (the stream then ends). Iteration (begin()/end(), an input range) calls
// next(). Destroying the stream before the end kills the feeder and the
// members still running and waits for them to finish; an error the stream
// never handed out (a member that failed before it was reached, or on its
// own after that kill) is then reported as unjoined. next() may switch and
// raises a pending kill or Timeout (the stream stays usable).
//
// Example:
//   cogent::pool p(4);
//   for (const std::string& body : p.imap_unordered(fetch, urls)) {
//     consume(body);   // the first download to finish comes first
//   }
template <class T>
class imap_stream {
  struct state {
    queue<std::size_t> finished;  // indexes into `members`, in finish order; npos: feeder done
    std::vector<task<T>> members;
    task<void> feeder;
  };
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);

 public:
  imap_stream(imap_stream&&) noexcept = default;
  imap_stream& operator=(imap_stream&&) = delete;
  ~imap_stream() {
    if (_st != nullptr && !_ended) {
      stop();
    }
  }

  // next() is the next result (in finish or item order), or std::nullopt at
  // the end. Rethrows a member's error (see the class comment). May switch.
  std::optional<T> next() {
    while (!_ended) {
      if (_feeder_done && _taken == _st->members.size()) {
        _ended = true;
        _st->feeder.get();  // the feeder's own error, if any (a full pool killed...)
        return std::nullopt;
      }
      // The index to hand out: imap waits for item _taken's finish notice
      // (noting the others'); imap_unordered takes the next notice, or the
      // one an interrupted call left owed.
      std::size_t i = npos;
      if (_ordered && _taken < _done.size() && _done[_taken]) {
        i = _taken;
      } else if (!_ordered && _retry != npos) {
        i = std::exchange(_retry, npos);
      } else if (std::size_t j = _st->finished.get(); j == npos) {
        _feeder_done = true;
        continue;
      } else if (_ordered) {
        if (j >= _done.size()) {
          _done.resize(j + 1, false);
        }
        _done[j] = true;
        continue;
      } else {
        i = j;
      }
      task<T> t = _st->members[i];  // a copy: the feeder may grow the vector meanwhile
      try {
        t.join();  // it queued its index on its way out: let it finish
      } catch (...) {
        _retry = i;  // the caller was interrupted: this result comes first next time (imap: _done has it)
        throw;
      }
      ++_taken;
      if (i >= _handed.size()) {
        _handed.resize(i + 1, false);
      }
      _handed[i] = true;  // its outcome goes to the caller now, value or error
      try {
        return t.get();
      } catch (...) {
        stop();  // a member failed: the rest are killed, then its error goes to the caller
        throw;
      }
    }
    return std::nullopt;
  }

  // iterator is an input iterator over the remaining results; *it is the
  // current one. Incrementing waits (next()).
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = T;
    using difference_type = std::ptrdiff_t;
    using pointer = T*;
    using reference = T&;
    iterator() = default;
    T& operator*() const { return *_s->_current; }
    T* operator->() const { return &*_s->_current; }
    iterator& operator++() {
      _s->advance();
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(const iterator& o) const noexcept { return at_end() == o.at_end(); }

   private:
    friend class imap_stream;
    explicit iterator(imap_stream* s) : _s(s) {}
    bool at_end() const noexcept { return _s == nullptr || !_s->_current.has_value(); }
    imap_stream* _s = nullptr;
  };
  // begin() waits for the first result. May switch.
  iterator begin() {
    advance();
    return iterator(this);
  }
  iterator end() { return iterator(); }

  // to_vector() drains the stream into a vector (the stream's order). May switch.
  std::vector<T> to_vector() {
    std::vector<T> out;
    while (std::optional<T> v = next()) {
      out.push_back(std::move(*v));
    }
    return out;
  }

 private:
  friend class group;
  template <class Fn, class Item>
  imap_stream(group& g, Fn fn, std::vector<Item> items, bool ordered)
      : _st(std::make_shared<state>()), _ordered(ordered) {
    // The feeder owns the items; fn is shared by the members. Each task's
    // link queues its index (the feeder's: npos) however it ends — finished,
    // failed, killed before it started, no stack — so next() never waits for
    // an index that cannot come; links count as observing, next() rethrows.
    // Links and tasks use the state through a plain pointer: whenever the
    // stream (and so the state) goes, every task has finished — next() joined
    // it or stop() waited for it — and a task's links run before it is done.
    auto shared_fn = std::make_shared<Fn>(std::move(fn));
    state* st = _st.get();
    _st->feeder = spawn([&g, st, shared_fn, items = std::move(items)]() mutable {
      for (std::size_t i = 0; i < items.size(); ++i) {
        task<T> t = g.spawn([shared_fn, item = std::move(items[i])]() -> T { return (*shared_fn)(item); });
        st->members.push_back(t);
        t.link([st, i](const task_base&) { st->finished.put(i); });
      }
    });
    _st->feeder.link([st](const task_base&) { st->finished.put(npos); });
  }

  void advance() {
    _current.reset();
    if (std::optional<T> v = next()) {
      _current.emplace(std::move(*v));
    }
  }

  // stop() kills the feeder first (no new members), then the members still
  // running, and waits for all of them; the stream has ended. A kill or
  // Timeout of the caller meanwhile does not cut the wait short (the tasks
  // use fn and the state): the first one is made pending again afterwards,
  // raised at the caller's next blocking call.
  void stop() noexcept {
    _ended = true;
    std::exception_ptr interrupted;
    auto keep_first = [&interrupted] {
      if (!interrupted) {
        interrupted = std::current_exception();
      }
    };
    // kill_from() kills members [from, end), after the feeder if asked, without waiting.
    auto kill_from = [&](std::size_t from, bool feeder) {
      std::vector<task_base> ts;
      if (feeder) {
        ts.push_back(_st->feeder);
      }
      ts.insert(ts.end(), _st->members.begin() + static_cast<std::ptrdiff_t>(from), _st->members.end());
      try {
        killall(ts, nullptr, false);
      } catch (...) {
        keep_first();
      }
    };
    auto wait_for = [&](const task_base& t) {
      while (!t.ready()) {
        try {
          t.join_unobserved();
        } catch (...) {
          keep_first();
        }
      }
    };
    const std::size_t known = _st->members.size();
    kill_from(0, true);
    // Once the feeder is done the member list is whole: one it spawned after
    // the kills above (its spawn's wait had just ended) is killed too, and
    // every member is waited for — their links use the state.
    wait_for(_st->feeder);
    kill_from(known, false);
    for (const task_base& t : _st->members) {
      wait_for(t);
    }
    // Their links observe (next() rethrows): an error nobody was handed — a
    // member that failed before the stream reached it, or that failed on its
    // own after the kill — is reported here, once.
    for (std::size_t i = 0; i < _st->members.size(); ++i) {
      if (i >= _handed.size() || !_handed[i]) {
        report_error(_st->members[i]);
      }
    }
    if (interrupted) {
      defer_interrupt(std::move(interrupted));
    }
  }

  std::shared_ptr<state> _st;
  std::vector<bool> _handed;  // by member index: its outcome went to the caller
  std::size_t _taken = 0;
  std::size_t _retry = npos;  // an index taken from the queue whose result is still owed
  std::vector<bool> _done;    // imap: by member index, its finish notice has come
  bool _ordered = false;
  bool _feeder_done = false;
  bool _ended = false;
  std::optional<T> _current;
};

// make_imap() is imap() (ordered) and imap_unordered().
template <class Fn, class Range>
auto group::make_imap(Fn&& fn, const Range& range, bool ordered) {
  using item_type = std::decay_t<decltype(*std::begin(range))>;
  using result_type = std::invoke_result_t<std::decay_t<Fn>&, const item_type&>;
  static_assert(!std::is_void_v<result_type>, "imap and imap_unordered need a function that returns a value");
  std::vector<item_type> items(std::begin(range), std::end(range));
  return imap_stream<result_type>(*this, std::decay_t<Fn>(std::forward<Fn>(fn)), std::move(items), ordered);
}

template <class Fn, class Range>
auto group::imap_unordered(Fn&& fn, const Range& range) {
  return make_imap(std::forward<Fn>(fn), range, false);
}

template <class Fn, class Range>
auto group::imap(Fn&& fn, const Range& range) {
  return make_imap(std::forward<Fn>(fn), range, true);
}

}  // namespace cogent

#pragma GCC visibility pop
