// tests/hub/session_review_test.cpp — adversarial review of the fixes made since eef0289 (queue
// admission, task kill/join reporting, ordered priority store, async_result::set). All three
// failed before the fix that came with this file: a failed admission left the next putter blocked
// on a queue with room; map()'s reaper joined "looking", so a member's own error after its kill
// was dropped (now join_unobserved()); set() again assigned through a reference-holding value.
#include <chrono>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "hub/pool.hpp"
#include "hub/queue.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "tests/support.hpp"

namespace {

using cogent::test::picky;
using reports = cogent::test::error_reports;

using namespace std::chrono_literals;

struct custom_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace

// ---- queue: a failed admission of the first waiting putter leaves the next one blocked ---------
// queue.hpp (admit_putter): when a get() frees a slot and moving the longest-waiting putter's item
// in throws, that putter is let go with the error — but the slot stays free and the next putter is
// never looked at: it stays blocked on a queue that has room (a lost wake-up).
COGENT_TEST_CASE("session: a get() whose admission of the first putter fails admits the next putter",
                 doctest::timeout(10)) {
  picky::throw_on = -1;
  cogent::queue<picky> q(1);
  q.put(picky(1));
  bool p1_failed = false;
  bool p2_returned = false;
  auto p1 = cogent::spawn([&] {
    try {
      q.put(picky(2));
    } catch (const std::runtime_error&) {
      p1_failed = true;
    }
  });
  auto p2 = cogent::spawn([&] {
    q.put(picky(3));
    p2_returned = true;
  });
  cogent::sleep(1ms);
  REQUIRE(q.putters() == 2);
  picky::throw_on = 2;  // admitting p1's item throws
  CHECK(q.get().v == 1);
  cogent::sleep(1ms);
  picky::throw_on = -1;
  CHECK(p1_failed);
  CHECK_MESSAGE(p2_returned, "the second putter stays blocked although the queue has room");
  CHECK(q.size() == 1);
  CHECK(q.putters() == 0);
  p1.join();
  p2.kill();
}

// ---- group::map: a member that catches the reaper's kill and then fails is never reported -------
// task.hpp (kill): "a task that catches a fiber_exit kill and then fails with an error of its own
// has that error reported like any other". group::run_all's reaper (map() after a member failed)
// kills the others and then t.join()s them — a join() that "looks" (error_unseen (was report_left_to_joiners) is
// cleared) although nobody ever sees the error: it is dropped silently. kill(block) and
// killall(block) were changed to join as joiners that cannot look; the reaper (and imap's stop())
// were not.
COGENT_TEST_CASE("session: group::map reports a member's own error raised after the reaper's kill",
                 doctest::timeout(10)) {
  reports r;
  cogent::group g;
  std::vector<int> items{0, 1};
  CHECK_THROWS_AS(g.map(
                      [](int i) {
                        if (i == 0) {
                          cogent::sleep(5ms);
                          throw custom_error("first");
                        }
                        try {
                          cogent::sleep(10s);
                        } catch (const cogent::fiber_exit&) {
                          throw custom_error("cleanup failed");
                        }
                        return 0;
                      },
                      items),
                  custom_error);
  cogent::sleep(1ms);
  CHECK_MESSAGE(r.seen == std::vector<std::string>{"cleanup failed"}, "reports seen: ", r.seen.size());
}

// ---- async_result::set(): a second set() assigns into the old value instead of replacing it -------
// sync.hpp: "set() again replaces the stored outcome (as in gevent)". set() now move-assigns the new
// T over the stored one when T is move-assignable. For a T whose assignment is not replacement — a
// tuple/pair of references assigns *through* them — the second set() overwrites the object the
// first value referred to, and the result still refers to the old object. emplace() (destroy, then
// construct) replaced it; constructing first and then destroying + emplacing keeps the strong
// guarantee the fix wanted without changing what "replace" means.
COGENT_TEST_CASE("session: async_result set() again replaces a reference-holding value, never assigns through it",
                 doctest::timeout(10)) {
  int a = 1;
  int b = 2;
  cogent::async_result<std::tuple<int&>> r;
  r.set(std::tie(a));
  r.set(std::tie(b));
  CHECK_MESSAGE(a == 1, "the second set() wrote through the first value's reference");
  CHECK(&std::get<0>(r.get()) == &b);
}
