// tests/hub/session_review2_test.cpp — adversarial review of the hub/net fixes of f21bfe1 and
// 7717974: joinall(raise_error) over an iwait, map()'s failure link in a pool, imap stop()'s
// join_unobserved(), async_result::set() with a throwing move, stream_server's option checks.
// Every case here failed on the code it was written against (the last, the imap stream dropped
// early, is the known gap of stop 12: it failed before the fix that came with it).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include "hub/pool.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "net/net.hpp"
#include "tests/support.hpp"

namespace {

using reports = cogent::test::error_reports;

using namespace std::chrono_literals;

struct boom : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace

// ---- joinall(raise_error) ----------------------------------------------------------------------
// task.cpp joinall(): the raise_error path now waits through an iwait, whose links OBSERVE every
// task. Two tasks failing in the same hub turn: both links run (both errors count as handled),
// the first is rethrown, the second is neither rethrown nor reported — it vanishes. Before, the
// second one failed while nobody joined it and was reported.
COGENT_TEST_CASE("session2: joinall(raise_error) reports a second failure it does not rethrow",
                 doctest::timeout(10)) {
  reports r;
  auto a = cogent::spawn([] {
    cogent::sleep(5ms);
    throw boom("a");
  });
  auto b = cogent::spawn([] {
    cogent::sleep(5ms);
    throw boom("b");
  });
  std::string raised;
  try {
    cogent::joinall({a, b}, std::nullopt, true);
  } catch (const boom& e) {
    raised = e.what();
  }
  cogent::sleep(5ms);
  CHECK(raised == "a");
  CHECK_MESSAGE(r.seen == std::vector<std::string>{"b"}, "reports seen: ", r.seen.size());
}

// The caller of joinall(raise_error) is killed in the turn a task fails: the task's link (observing)
// already ran, the caller unwinds with fiber_exit and never looks — the error is dropped. With
// join() (before), the interrupted joiner was the last to leave and reported it.
COGENT_TEST_CASE("session2: joinall(raise_error) whose caller is killed reports the failure it never saw",
                 doctest::timeout(10)) {
  reports r;
  cogent::task<void> waiter;
  cogent::task<void> bad;
  bad = cogent::spawn([&] {
    cogent::sleep(5ms);
    waiter.kill(nullptr, false);  // the caller: interrupted, then woken by our link too
    throw boom("bad");
  });
  waiter = cogent::spawn([&] { cogent::joinall({bad}, std::nullopt, true); });
  waiter.join();
  cogent::sleep(2ms);
  CHECK(waiter.killed());
  CHECK_MESSAGE(r.seen == std::vector<std::string>{"bad"}, "reports seen: ", r.seen.size());
}

// joinall() of a list holding the calling task: join() of oneself raises hub_error (task.hpp), and
// joinall() without raise_error still does; with raise_error the iwait waits for the caller to
// finish, i.e. forever.
COGENT_TEST_CASE("session2: joinall(raise_error) of a list with the calling task raises hub_error, not hangs",
                 doctest::timeout(10)) {
  auto self = cogent::current_task();
  auto other = cogent::spawn([] {});
  bool hub_error = false;
  bool hung = false;
  try {
    cogent::timeout guard(300ms);
    cogent::joinall({other, self}, std::nullopt, true);
  } catch (const cogent::hub_error&) {
    hub_error = true;
  } catch (const cogent::timeout_error&) {
    hung = true;
  }
  CHECK_FALSE_MESSAGE(hung, "joinall(raise_error) waited for the calling task itself");
  CHECK(hub_error);
  other.join();
}

// ---- map() in a pool ---------------------------------------------------------------------------
// pool.hpp run_all(): "items not started by then (a pool was full) never start". The failure link
// is checked only after spawn() returned — but spawn() was waiting for exactly the slot the failed
// member freed, so the next item is started after the failure, and it runs while collect() waits
// for an earlier item (range order).
COGENT_TEST_CASE("session2: pool.map never starts an item that was waiting for a slot when one failed",
                 doctest::timeout(10)) {
  cogent::pool p(2);
  bool third_ran = false;
  CHECK_THROWS_AS(p.map(
                      [&](int i) {
                        if (i == 0) {
                          cogent::sleep(50ms);  // collect() waits here first
                          return i;
                        }
                        if (i == 1) {
                          throw boom("second");
                        }
                        third_ran = true;
                        return i;
                      },
                      std::vector<int>{0, 1, 2}),
                  boom);
  CHECK_FALSE_MESSAGE(third_ran, "item 2 was started after item 1 failed");
  p.join();
}

// ---- imap_unordered stream stop() ----------------------------------------------------------------
// pool.hpp imap_unordered_stream: stop() now joins with join_unobserved() "so a member's own error
// after the kill is reported" — but every member carries the stream's own link, which observes
// (link()'s default): finish() takes the error as handled and nothing is ever reported.
// ---- async_result::set() ------------------------------------------------------------------------
// sync.hpp: "If making the T from `value` throws, nothing changes (a value stored before stays)".
// For a T whose move may throw and that is not move-assignable, set() takes the emplace branch:
// emplace destroys the stored value and then the move into the slot throws — the result stays
// ready with a destroyed value, and get() copies from it (heap-use-after-free).
namespace {
struct sticky {
  static inline bool throw_on_copy = false;
  std::string s;
  const int tag = 0;  // not assignable
  explicit sticky(std::string x) : s(std::move(x)) {}
  sticky(const sticky& o) : s(o.s), tag(o.tag) {  // also the move: may throw
    if (throw_on_copy) {
      throw boom("copy");
    }
  }
};
}  // namespace

// Such a T cannot be kept without indirection: the documented outcome is "not ready", never a
// ready result holding a destroyed value.
COGENT_TEST_CASE("session2: async_result set() whose move into the slot throws leaves it not ready, no dead value",
                 doctest::timeout(10)) {
  static_assert(!std::is_nothrow_move_constructible_v<sticky> && !std::is_move_assignable_v<sticky>);
  cogent::async_result<sticky> r;
  std::string first(40, 'a');
  r.set(first);
  sticky::throw_on_copy = true;
  CHECK_THROWS_AS(r.set(std::string(40, 'b')), boom);  // the string builds the T; moving it in throws
  sticky::throw_on_copy = false;
  CHECK_FALSE(r.ready());
  CHECK_FALSE(r.successful());
  CHECK_THROWS_AS((void)r.get(0ms), cogent::timeout_error);
  r.set(std::string(40, 'c'));  // usable again
  CHECK(r.get().s == std::string(40, 'c'));
}

// ---- stream_server -----------------------------------------------------------------------------
// net/server.cpp: the address constructor checks the options before binding now, but the empty
// handler is still rejected only after listener::bind() made the Unix socket file: it is left
// behind, as the bad options were before 7717974.
COGENT_TEST_CASE("session2: a stream_server with an empty handler binds nothing (no Unix socket file left)",
                 doctest::timeout(10)) {
  std::string path = "/tmp/cogent_empty_handler_" + std::to_string(::getpid()) + ".sock";
  ::unlink(path.c_str());
  CHECK_THROWS_AS(cogent::net::stream_server(cogent::net::address::unix_path(path), nullptr),
                  std::invalid_argument);
  CHECK_MESSAGE(::access(path.c_str(), F_OK) != 0, "the socket file was left at ", path);
  ::unlink(path.c_str());
}


// ---- imap_unordered stream dropped early (known gap of stop 12, fixed later) -------------------

COGENT_TEST_CASE("session2: an imap stream dropped early reports the errors it never handed out, once",
                 doctest::timeout(10)) {
  std::vector<std::string> seen;
  cogent::set_task_error_handler([&](const cogent::task_base&, std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      seen.emplace_back(x.what());
    }
  });
  {
    cogent::pool p(4);
    auto s = p.imap_unordered(
        [](int i) -> int {
          if (i == 0) {
            return 0;  // the one result the caller takes
          }
          if (i == 1) {
            cogent::sleep(5ms);
            throw std::runtime_error("never reached");
          }
          try {
            cogent::sleep(10s);
          } catch (const cogent::fiber_exit&) {
            throw std::runtime_error("own error after the kill");
          }
          return 2;
        },
        std::vector<int>{0, 1, 2});
    CHECK(s.next() == 0);
    cogent::sleep(20ms);  // item 1 failed meanwhile; nobody reads it
  }  // dropped: item 2 is killed and fails on its own
  std::sort(seen.begin(), seen.end());
  CHECK(seen == std::vector<std::string>{"never reached", "own error after the kill"});
  cogent::set_task_error_handler(nullptr);
}
