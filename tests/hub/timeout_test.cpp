// tests/hub/timeout_test.cpp — the timeout scope: on sleep, join, wait_list and
// IO; nesting (which scope owns the error); try_with_timeout / with_timeout;
// timeout_error is not a std::exception; leaving the scope disarms it.
#include "hub/timeout.hpp"

#include <unistd.h>

#include <chrono>
#include <stdexcept>

#include "hub/task.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;
using cogent::clock;

template <class Fn>
bool times_out_in(std::chrono::milliseconds limit, Fn&& fn) {
  auto t0 = clock::now();
  try {
    cogent::timeout t(limit);
    fn();
  } catch (const cogent::timeout_error&) {
    auto took = clock::now() - t0;
    CHECK(took >= limit);
    CHECK(took < limit + 100ms);
    return true;
  }
  return false;
}

COGENT_TEST_CASE("timeout on sleep", doctest::timeout(10)) {
  CHECK(times_out_in(10ms, [] { cogent::sleep(10s); }));
}

COGENT_TEST_CASE("timeout on join", doctest::timeout(10)) {
  auto t = cogent::spawn([] { cogent::sleep(10s); });
  CHECK(times_out_in(10ms, [&] { t.join(); }));
  CHECK_FALSE(t.ready());
  t.kill();
}

COGENT_TEST_CASE("timeout on a wait_list leaves it clean", doctest::timeout(10)) {
  cogent::detail::wait_list wl;
  CHECK(times_out_in(10ms, [&] { wl.wait(); }));
  CHECK(wl.empty());
}

COGENT_TEST_CASE("timeout on IO cancels and reaps the op", doctest::timeout(10)) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  char buf = 0;
  CHECK(times_out_in(10ms, [&] {
    cogent::detail::io_op op;
    op.code = cogent::detail::op_code::read;
    op.fd = fds[0];
    op.buf = &buf;
    op.len = 1;
    cogent::hub::current().await_io(op);
  }));
  CHECK(cogent::hub::current().io().in_flight() == 0);
  ::close(fds[0]);
  ::close(fds[1]);
}

COGENT_TEST_CASE("nested timeouts: the inner one fires first and owns the error", doctest::timeout(10)) {
  cogent::timeout outer(1s);
  bool inner_owned = false;
  try {
    cogent::timeout inner(10ms);
    try {
      cogent::sleep(10s);
    } catch (const cogent::timeout_error& e) {
      inner_owned = inner.owns(e);
      CHECK_FALSE(outer.owns(e));
      throw;
    }
  } catch (const cogent::timeout_error&) {
  }
  CHECK(inner_owned);
  CHECK_FALSE(outer.expired());
}

COGENT_TEST_CASE("nested timeouts: the outer one fires through the inner scope", doctest::timeout(10)) {
  bool outer_owned = false;
  try {
    cogent::timeout outer(10ms);
    try {
      auto r = cogent::try_with_timeout(1s, [] {
        cogent::sleep(10s);
        return 1;
      });
      CHECK(false);  // the inner try must not swallow the outer timeout
      (void)r;
    } catch (const cogent::timeout_error& e) {
      outer_owned = outer.owns(e);
      throw;
    }
  } catch (const cogent::timeout_error&) {
  }
  CHECK(outer_owned);
}

COGENT_TEST_CASE("try_with_timeout is silent; with_timeout propagates", doctest::timeout(10)) {
  auto none = cogent::try_with_timeout(10ms, [] {
    cogent::sleep(10s);
    return 5;
  });
  CHECK_FALSE(none.has_value());
  auto some = cogent::try_with_timeout(1s, [] { return 5; });
  REQUIRE(some.has_value());
  CHECK(*some == 5);
  CHECK_FALSE(cogent::try_with_timeout(10ms, [] { cogent::sleep(10s); }));
  CHECK(cogent::try_with_timeout(1s, [] {}));

  CHECK(cogent::with_timeout(1s, [] { return 7; }) == 7);
  CHECK_THROWS_AS(cogent::with_timeout(10ms, [] { cogent::sleep(10s); }), cogent::timeout_error);
  CHECK(cogent::with_timeout(std::nullopt, [] {
          cogent::sleep(1ms);
          return 1;
        }) == 1);
}

COGENT_TEST_CASE("timeout_error is not caught by catch (const std::exception&)", doctest::timeout(10)) {
  bool swallowed = false;
  bool reached_owner = false;
  try {
    cogent::timeout t(5ms);
    try {
      cogent::sleep(10s);
    } catch (const std::exception&) {
      swallowed = true;
    }
  } catch (const cogent::timeout_error& e) {
    reached_owner = true;
    CHECK(std::string(e.what()).find("timeout") != std::string::npos);
  }
  CHECK_FALSE(swallowed);
  CHECK(reached_owner);
}

COGENT_TEST_CASE("leaving the scope disarms the timeout", doctest::timeout(10)) {
  {
    cogent::timeout t(10ms);
    cogent::sleep(1ms);
  }
  CHECK(cogent::hub::current().timer_count() == 0);
  CHECK_NOTHROW(cogent::sleep(30ms));

  // A deadline that passed while the fiber never blocked inside the scope:
  // leaving the scope disarms it before the hub fires it.
  {
    cogent::timeout t(1ms);
    auto end = clock::now() + 5ms;
    while (clock::now() < end) {
    }
  }
  CHECK_NOTHROW(cogent::sleep(5ms));
}

COGENT_TEST_CASE("a timeout that fired while the fiber was busy raises at its next blocking call",
                 doctest::timeout(10)) {
  bool raised = false;
  try {
    cogent::timeout t(5ms);
    cogent::sleep(10ms);  // raises here
  } catch (const cogent::timeout_error&) {
    raised = true;
  }
  CHECK(raised);

  // Expired in a yield-busy loop: the first blocking call after expiry raises.
  int loops = 0;
  try {
    cogent::timeout t(5ms);
    for (;;) {
      ++loops;
      cogent::yield();
    }
  } catch (const cogent::timeout_error&) {
  }
  CHECK(loops > 1);
}

COGENT_TEST_CASE("cancel() withdraws a timeout", doctest::timeout(10)) {
  cogent::timeout t(5ms);
  t.cancel();
  CHECK_NOTHROW(cogent::sleep(15ms));
  CHECK_FALSE(t.expired());
}

COGENT_TEST_CASE("a timeout in one task does not touch another", doctest::timeout(10)) {
  auto other = cogent::spawn([] {
    cogent::sleep(30ms);
    return 1;
  });
  CHECK(cogent::try_with_timeout(5ms, [] { cogent::sleep(1s); }) == false);
  CHECK(other.get() == 1);
}

}  // namespace

TEST_CASE("timeout_error::what() names the duration, in ns below a microsecond") {
  using namespace std::chrono_literals;
  CHECK(std::string(cogent::timeout_error(nullptr, 500ns).what()) == "cogent: timeout after 500 ns");
  CHECK(std::string(cogent::timeout_error(nullptr, 2ms).what()) == "cogent: timeout after 2000 us");
  const cogent::timeout_error e(nullptr, 3us);  // formatted in the constructor: what() of a const one reads it
  CHECK(std::string(e.what()) == "cogent: timeout after 3 us");
}
