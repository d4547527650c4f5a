// tests/fiber/fiber_test.cpp — the semantics of cogent::fiber (fiber/fiber.hpp), one test case each:
// lazy start, current(), the main fiber, values passed on switch, return values and exceptions going to
// the parent (up the chain), set_parent() cycles, throw_in(), fiber_exit, unwinding destroy, self-release,
// thread ownership, names, stack-size and value-type errors, 100k fibers without a leak, nested fibers.
#include <doctest/doctest.h>

#include <any>
#include <array>
#include <cfenv>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "fiber/fiber.hpp"

namespace {

using cogent::fiber;
using cogent::fiber_error;
using cogent::fiber_exit;

// live_stacks() is the number of fiber stacks this thread has handed out and not released.
std::size_t live_stacks() {
  return cogent::stack_stats().live;
}

// raii_flag sets *flag when destroyed: proves a fiber's stack was unwound.
struct raii_flag {
  bool* flag;
  ~raii_flag() { *flag = true; }
};

// point is a small copyable struct carried through std::any.
struct point {
  int x = 0;
  std::string label;
};

// message_of() runs fn and returns the what() of the fiber_error it throws ("" if none).
template <class Fn>
std::string message_of(Fn&& fn) {
  try {
    fn();
  } catch (const fiber_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_SUITE("fiber") {
  TEST_CASE("a fiber does not run until first switched to" * doctest::timeout(10)) {
    bool ran = false;
    fiber f([&] { ran = true; });
    CHECK_FALSE(ran);
    CHECK_FALSE(f.started());
    CHECK_FALSE(f.dead());
    f.switch_to();
    CHECK(ran);
    CHECK(f.started());
    CHECK(f.dead());
  }

  TEST_CASE("current() is the running fiber; the main fiber is never dead" * doctest::timeout(10)) {
    fiber main = fiber::current();
    REQUIRE(main);
    CHECK(main.started());
    CHECK_FALSE(main.dead());
    CHECK_FALSE(main.parent());
    CHECK(main.name() == "main");
    CHECK(fiber::current() == main);

    fiber f;
    f = fiber([&] {
      CHECK(fiber::current() == f);
      CHECK_FALSE(fiber::current() == main);
      CHECK(fiber::current().parent() == main);
    });
    f.switch_to();
    CHECK(fiber::current() == main);
    CHECK_FALSE(main.dead());
    // Switching to the running fiber returns the value at once.
    CHECK(main.switch_to<int>(5) == 5);
    CHECK_THROWS_AS(main.throw_in(std::make_exception_ptr(std::runtime_error("self"))), std::runtime_error);
    CHECK_FALSE(main.dead());
  }

  TEST_CASE("the first switch's value is the callable's argument" * doctest::timeout(10)) {
    SUBCASE("typed argument") {
      fiber f([](int n) { return n * 2; });
      CHECK(f.switch_to<int>(21) == 42);
    }
    SUBCASE("std::any argument") {
      fiber f([](std::any a) { return std::any_cast<std::string>(a) + "!"; });
      CHECK(f.switch_to<std::string>(std::string("hi")) == "hi!");
    }
    SUBCASE("no argument: the value is dropped") {
      fiber f([] { return 7; });
      CHECK(f.switch_to<int>(std::string("ignored")) == 7);
    }
    SUBCASE("struct argument by const reference") {
      fiber f([](const point& p) { return p.x + static_cast<int>(p.label.size()); });
      CHECK(f.switch_to<int>(point{40, "ab"}) == 42);
    }
    SUBCASE("no value for a typed argument is a fiber_error in the parent") {
      fiber f([](int n) { return n; });
      CHECK_THROWS_AS(f.switch_to(), fiber_error);
      CHECK(f.dead());
    }
    SUBCASE("a value of the wrong type: the error names both types as C++ spells them") {
      fiber f([] { return 7; });
      std::string msg = message_of([&] { (void)f.switch_to<std::string>(); });
      INFO(msg);
      CHECK(msg.find("received a value of type int where std::__cxx11::basic_string<char") != std::string::npos);
    }
  }

  TEST_CASE("later switches return the values passed (round trips)" * doctest::timeout(10)) {
    fiber main = fiber::current();
    fiber echo([&](std::any v) {
      // Bounce every value back to main; stop on an empty value.
      while (v.has_value()) {
        v = main.switch_to(std::move(v));
      }
      return std::string("done");
    });
    CHECK(echo.switch_to<int>(1) == 1);
    CHECK(echo.switch_to<int>(-17) == -17);
    CHECK(echo.switch_to<std::string>(std::string(1000, 'x')) == std::string(1000, 'x'));
    auto shared = std::make_shared<int>(99);
    auto back = echo.switch_to<std::shared_ptr<int>>(shared);
    CHECK(back == shared);
    CHECK(*back == 99);
    back.reset();
    CHECK(shared.use_count() == 1);  // the fiber kept no copy
    point p = echo.switch_to<point>(point{3, "three"});
    CHECK(p.x == 3);
    CHECK(p.label == "three");
    CHECK(echo.switch_to<std::string>() == "done");
    CHECK(echo.dead());
  }

  TEST_CASE("the return value goes to the parent" * doctest::timeout(10)) {
    fiber f([] { return std::string("result"); });
    CHECK(f.switch_to<std::string>() == "result");
    fiber v([] {});
    CHECK_FALSE(v.switch_to().has_value());
    fiber a([] { return std::any(3.5); });
    CHECK(a.switch_to<double>() == 3.5);
  }

  TEST_CASE("an uncaught exception is re-raised in the parent" * doctest::timeout(10)) {
    fiber f([]() -> int { throw std::runtime_error("boom"); });
    CHECK_THROWS_WITH_AS(f.switch_to(), "boom", std::runtime_error);
    CHECK(f.dead());
    // And after a suspension too.
    fiber main = fiber::current();
    fiber g([&] {
      main.switch_to();
      throw std::out_of_range("late");
    });
    g.switch_to();
    CHECK_FALSE(g.dead());
    CHECK_THROWS_AS(g.switch_to(), std::out_of_range);
    CHECK(g.dead());
  }

  TEST_CASE("switching to a dead fiber switches to its parent, up the chain" * doctest::timeout(10)) {
    fiber main = fiber::current();
    fiber a, b, c;
    a = fiber([&] {
      // a creates b, b creates c: c's parent is b, b's parent is a.
      b = fiber([&] {
        c = fiber([] { return 1; });
        CHECK(c.parent() == b);
        CHECK(c.switch_to<int>() == 1);
        return 2;
      });
      CHECK(b.parent() == a);
      CHECK(b.switch_to<int>() == 2);
      // Both b and c are dead now; a suspends in main.
      int got = main.switch_to<int>(10);
      return got + 1;
    });
    CHECK(a.switch_to<int>() == 10);
    REQUIRE(b.dead());
    REQUIRE(c.dead());
    // c is dead, so is b: the switch lands in a's pending switch_to() with 41.
    CHECK(c.switch_to<int>(41) == 42);
    CHECK(a.dead());
    // Everything dead up to main: the switch returns at once.
    CHECK(c.switch_to<int>(5) == 5);
  }

  TEST_CASE("set_parent() refuses cycles and allows re-parenting" * doctest::timeout(10)) {
    fiber main = fiber::current();
    fiber a([] { return 1; }, {.name = "alpha"});
    fiber b;
    std::string self_msg = message_of([&] { a.set_parent(a); });
    CHECK(self_msg.find("alpha") != std::string::npos);
    CHECK(self_msg.find("cycle") != std::string::npos);
    // Indirect: c's parent is a; a.set_parent(c) would close a loop.
    fiber c([] { return 3; });
    c.set_parent(a);
    CHECK(c.parent() == a);
    CHECK_THROWS_AS(a.set_parent(c), fiber_error);
    fiber d([] { return 4; });
    d.set_parent(c);
    CHECK_THROWS_AS(a.set_parent(d), fiber_error);  // two levels: a <- c <- d
    CHECK(a.parent() == main);
    CHECK_THROWS_AS(a.set_parent(fiber()), fiber_error);
    CHECK_THROWS_AS(main.set_parent(a), fiber_error);

    // Re-parenting: r's return value goes to its new parent, not to its creator.
    fiber collector([&] {
      fiber r([] { return 100; });
      b = r;
      main.switch_to();  // let main re-parent r
      int from_r = r.switch_to<int>();
      return from_r;
    });
    collector.switch_to();
    CHECK(b.parent() == collector);
    b.set_parent(main);
    // Main switches to r: its return comes back to main; collector stays suspended.
    CHECK(b.switch_to<int>() == 100);
    CHECK_FALSE(collector.dead());
    // Resuming the collector: its pending main.switch_to() returns, then r.switch_to() finds r dead and
    // goes to r's parent, which is main now: main gets an empty value and the collector stays suspended.
    CHECK_FALSE(collector.switch_to(7).has_value());
    CHECK_FALSE(collector.dead());
    CHECK(collector.switch_to<int>(8) == 8);
    CHECK(collector.dead());
  }

  TEST_CASE("throw_in() raises at the suspension point" * doctest::timeout(10)) {
    fiber main = fiber::current();
    bool after = false;
    fiber f([&]() -> std::string {
      try {
        main.switch_to();
        after = true;
      } catch (const std::runtime_error& e) {
        return std::string("caught ") + e.what();
      }
      return "not thrown";
    });
    f.switch_to();
    CHECK(f.throw_in(std::make_exception_ptr(std::runtime_error("x"))).has_value());
    CHECK_FALSE(after);
    CHECK(f.dead());

    // Uncaught in the fiber: back in the parent.
    fiber g([&] { main.switch_to(); });
    g.switch_to();
    CHECK_THROWS_WITH_AS(g.throw_in(std::make_exception_ptr(std::logic_error("thru"))), "thru",
                         std::logic_error);
    CHECK(g.dead());
    CHECK_THROWS_AS(g.throw_in(std::exception_ptr{}), fiber_error);
  }

  TEST_CASE("throw_in() into an unstarted fiber kills it without running it" * doctest::timeout(10)) {
    bool ran = false;
    fiber f([&] { ran = true; });
    CHECK_THROWS_WITH_AS(f.throw_in(std::make_exception_ptr(std::runtime_error("never"))), "never",
                         std::runtime_error);
    CHECK_FALSE(ran);
    CHECK(f.dead());

    fiber g([&] { ran = true; });
    CHECK_FALSE(g.throw_in().has_value());  // fiber_exit: quiet death
    CHECK_FALSE(ran);
    CHECK(g.dead());
  }

  TEST_CASE("fiber_exit kills quietly and delivers its value" * doctest::timeout(10)) {
    fiber main = fiber::current();
    bool unwound = false;
    bool after = false;
    fiber f([&] {
      raii_flag guard{&unwound};
      main.switch_to();
      after = true;
    });
    f.switch_to();
    std::any v = f.throw_in(std::make_exception_ptr(fiber_exit(std::any(std::string("bye")))));
    CHECK(std::any_cast<std::string>(v) == "bye");
    CHECK(unwound);
    CHECK_FALSE(after);
    CHECK(f.dead());

    // Raised from inside the fiber, several frames deep.
    fiber g([] {
      auto inner = [] { throw fiber_exit(std::any(12)); };
      inner();
      return 0;
    });
    CHECK(g.switch_to<int>() == 12);
  }

  TEST_CASE("fiber_exit is not caught by catch (const std::exception&)" * doctest::timeout(10)) {
    fiber main = fiber::current();
    bool swallowed = false;
    fiber f([&] {
      try {
        main.switch_to();
      } catch (const std::exception&) {
        swallowed = true;
      }
      return 1;
    });
    f.switch_to();
    CHECK_FALSE(f.throw_in().has_value());
    CHECK_FALSE(swallowed);
    CHECK(f.dead());
  }

  TEST_CASE("destroying a suspended, unfinished fiber unwinds its stack" * doctest::timeout(10)) {
    std::size_t live0 = live_stacks();
    fiber main = fiber::current();
    bool unwound = false;
    bool after = false;
    {
      fiber f([&] {
        raii_flag guard{&unwound};
        main.switch_to();
        after = true;
      });
      f.switch_to();
      CHECK_FALSE(unwound);
      CHECK(live_stacks() == live0 + 1);
    }
    CHECK(unwound);
    CHECK_FALSE(after);
    CHECK(live_stacks() == live0);

    // An unstarted fiber is released without running.
    bool ran = false;
    {
      fiber g([&] { ran = true; });
    }
    CHECK_FALSE(ran);
    CHECK(live_stacks() == live0);
  }

  TEST_CASE("a running fiber that drops its last handle is freed after it finishes" * doctest::timeout(10)) {
    std::size_t live0 = live_stacks();
    bool unwound = false;
    auto* only = new std::optional<fiber>();
    only->emplace([&, only] {
      raii_flag guard{&unwound};
      delete only;  // the last handle to the running fiber goes away
      CHECK(live_stacks() == live0 + 1);
      return 5;
    });
    CHECK((*only)->switch_to<int>() == 5);
    CHECK(unwound);
    CHECK(live_stacks() == live0);
  }

  TEST_CASE("a fiber that drops its last handle and then suspends is unwound" * doctest::timeout(10)) {
    std::size_t live0 = live_stacks();
    fiber main = fiber::current();
    bool unwound = false;
    bool after = false;
    auto* only = new std::optional<fiber>();
    only->emplace([&, only] {
      raii_flag guard{&unwound};
      delete only;                       // nothing refers to this fiber any more...
      main.switch_to(std::string("v"));  // ...so once suspended it can never be resumed
      after = true;
    });
    // The value of the switch is still delivered, after the orphan was unwound.
    CHECK((*only)->switch_to<std::string>() == "v");
    CHECK(unwound);
    CHECK_FALSE(after);
    CHECK(live_stacks() == live0);
  }

  TEST_CASE("switching to a fiber from another thread is a fiber_error naming it" * doctest::timeout(10)) {
    fiber f([] { return 1; }, {.name = "owned-by-main"});
    std::string msg;
    bool threw_other = false;
    std::thread t([&] {
      try {
        f.switch_to();
      } catch (const fiber_error& e) {
        msg = e.what();
      } catch (...) {
        threw_other = true;
      }
    });
    t.join();
    CHECK_FALSE(threw_other);
    CHECK(msg.find("owned-by-main") != std::string::npos);
    CHECK(msg.find("another thread") != std::string::npos);
    CHECK_FALSE(f.started());
    CHECK(f.switch_to<int>() == 1);  // still fine on its own thread
  }

  TEST_CASE("names: fiber-N by default, custom, and main" * doctest::timeout(10)) {
    fiber a([] {});
    CHECK(a.name() == "fiber-" + std::to_string(a.id()));
    fiber b([] {}, {.name = "worker"});
    CHECK(b.name() == "worker");
    CHECK(a.id() != b.id());
    CHECK(fiber::current().name() == "main");
    CHECK(fiber().id() == 0);
    CHECK_THROWS_AS(fiber().name(), fiber_error);
    CHECK_THROWS_AS(fiber().switch_to(), fiber_error);
    // The name outlives the fiber's run.
    b.switch_to();
    CHECK(b.name() == "worker");
  }

  TEST_CASE("dead() and started() track the life cycle" * doctest::timeout(10)) {
    fiber main = fiber::current();
    fiber f([&] { main.switch_to(); });
    CHECK_FALSE(f.started());
    CHECK_FALSE(f.dead());
    f.switch_to();
    CHECK(f.started());
    CHECK_FALSE(f.dead());
    f.switch_to();
    CHECK(f.started());
    CHECK(f.dead());
    fiber empty;
    CHECK_FALSE(empty.dead());
    CHECK_FALSE(empty.started());
    CHECK_FALSE(empty);
  }

  TEST_CASE("a bad stack size is a fiber_error naming the fiber" * doctest::timeout(10)) {
    std::size_t live0 = live_stacks();
    std::string small = message_of([] { fiber f([] {}, {.stack_size = 1024, .name = "tiny"}); });
    CHECK(small.find("tiny") != std::string::npos);
    CHECK(small.find("stack_size") != std::string::npos);
    std::string large = message_of(
        [] { fiber f([] {}, {.stack_size = cogent::stack_limits::max_size + 1, .name = "huge"}); });
    CHECK(large.find("huge") != std::string::npos);
    CHECK(live_stacks() == live0);
    // The limits themselves are fine, and so is a non-default size in between.
    fiber lo([] { return 1; }, {.stack_size = cogent::stack_limits::min_size, .name = "lo"});
    CHECK(lo.switch_to<int>() == 1);
    fiber mid([] { return 2; }, {.stack_size = 1024 * 1024, .name = "mid"});
    CHECK(mid.switch_to<int>() == 2);
  }

  TEST_CASE("a value of the wrong type is a fiber_error" * doctest::timeout(10)) {
    // The caller expects an int, the fiber returns a string.
    fiber f([] { return std::string("s"); }, {.name = "stringy"});
    std::string msg = message_of([&] { f.switch_to<int>(); });
    CHECK(msg.find("expected") != std::string::npos);
    // The fiber's typed argument gets a string: the error is raised in the fiber, re-raised in the parent.
    bool ran = false;
    fiber g([&](int) { ran = true; }, {.name = "wants-int"});
    std::string msg2 = message_of([&] { g.switch_to(std::string("nope")); });
    CHECK(msg2.find("wants-int") != std::string::npos);
    CHECK_FALSE(ran);
    CHECK(g.dead());
  }

  TEST_CASE("100k fibers created, started and finished without a leak" * doctest::timeout(60)) {
    std::size_t live0 = live_stacks();
    long sum = 0;
    for (int i = 0; i < 100000; ++i) {
      fiber f([](int n) { return n + 1; });
      sum += f.switch_to<int>(i);
    }
    CHECK(sum == 100000L * 100001L / 2);
    CHECK(live_stacks() == live0);
    // Many alive at once, each suspended once, then finished.
    fiber main = fiber::current();
    std::vector<fiber> many;
    many.reserve(10000);
    for (int i = 0; i < 10000; ++i) {
      many.emplace_back([&main](int n) { return main.switch_to<int>(n) * 2; });
      CHECK(many.back().switch_to<int>(i) == i);
    }
    CHECK(live_stacks() == live0 + 10000);
    long total = 0;
    for (int i = 0; i < 10000; ++i) {
      total += many[static_cast<std::size_t>(i)].switch_to<int>(i);
    }
    CHECK(total == 2L * (10000L * 9999L / 2));
    many.clear();
    CHECK(live_stacks() == live0);
  }

  TEST_CASE("nested: a fiber creating fibers is their parent" * doctest::timeout(10)) {
    fiber main = fiber::current();
    fiber outer([&] {
      fiber self = fiber::current();
      int total = 0;
      for (int i = 1; i <= 3; ++i) {
        fiber inner([i] { return i * 10; });
        CHECK(inner.parent() == self);
        total += inner.switch_to<int>();
      }
      // An inner fiber that raises: the exception lands here, not in main.
      fiber bad([]() -> int { throw std::runtime_error("inner"); });
      CHECK_THROWS_AS(bad.switch_to(), std::runtime_error);
      return total;
    });
    CHECK(outer.switch_to<int>() == 60);
    CHECK(fiber::current() == main);
  }

  TEST_CASE("each fiber keeps its rounding mode; exception flags are cleared by a switch" *
            doctest::timeout(10)) {
    fiber main = fiber::current();
    REQUIRE(std::fegetround() == FE_TONEAREST);
    volatile double three = 3.0;
    fiber f([&] {
      std::fesetround(FE_UPWARD);
      volatile double third = 1.0 / three;  // inexact: raises FE_INEXACT here
      (void)third;
      CHECK(std::fetestexcept(FE_INEXACT) != 0);
      main.switch_to();
      CHECK(std::fegetround() == FE_UPWARD);  // still ours after a round trip
      CHECK(std::fetestexcept(FE_INEXACT) == 0);
      std::fesetround(FE_TONEAREST);
    });
    std::feclearexcept(FE_ALL_EXCEPT);
    f.switch_to();
    CHECK(std::fegetround() == FE_TONEAREST);  // the fiber's mode did not leak into main
    CHECK(std::fetestexcept(FE_INEXACT) == 0);
    volatile double third = 1.0 / three;
    (void)third;
    CHECK(std::fetestexcept(FE_INEXACT) != 0);
    f.switch_to();
    CHECK(f.dead());
  }

  TEST_CASE("a fiber that finishes into a parent that never ran starts it" * doctest::timeout(10)) {
    bool b_ran = false;
    fiber b([&](int v) {
      b_ran = true;
      return v + 1;  // b's parent is main
    });
    fiber a([] { return 41; });
    a.set_parent(b);
    CHECK(a.switch_to<int>() == 42);  // a returns 41 to b, b starts with it and returns 42 to main
    CHECK(b_ran);
    CHECK(a.dead());
    CHECK(b.dead());
    CHECK(b.started());

    // throw_in: a dies without running; the exception goes to b, which never ran either: it dies
    // without running too and the exception reaches main.
    bool c_ran = false;
    bool d_ran = false;
    fiber c([&] { c_ran = true; });
    fiber d([&] { d_ran = true; });
    d.set_parent(c);
    CHECK_THROWS_WITH_AS(d.throw_in(std::make_exception_ptr(std::runtime_error("in"))), "in",
                         std::runtime_error);
    CHECK_FALSE(c_ran);
    CHECK_FALSE(d_ran);
    CHECK(c.dead());
    CHECK(d.dead());
  }

  TEST_CASE("typed switch of trivially copyable values that cannot be assigned" * doctest::timeout(10)) {
    struct point {
      const int x;
      const int y;
    };
    fiber main = fiber::current();
    int y = 5;
    auto add_y = [y](int v) { return v + y; };  // trivially copyable, not assignable
    fiber f([&](point p) {
      point q = main.switch_to<point>(point{p.x + 1, p.y + 1});
      auto fn = main.switch_to<decltype(add_y)>(point{q.x * 10, q.y * 10});
      return fn(1);
    });
    point got = f.switch_to<point>(point{1, 2});
    CHECK(got.x == 2);
    CHECK(got.y == 3);
    point got2 = f.switch_to<point>(point{got.x, got.y});
    CHECK(got2.x == 20);
    CHECK(got2.y == 30);
    CHECK(f.switch_to<int>(add_y) == 6);
  }

  TEST_CASE("control blocks come from the per-thread block cache" * doctest::timeout(10)) {
    using cogent::detail::cached_alloc;
    using cogent::detail::cached_free;
    // Same size class: a freed block is the next one handed out (not under ASan, which bypasses the
    // cache so that a use after free is still caught).
    void* a = cached_alloc(200);
    cached_free(a, 200);
    void* b = cached_alloc(256);  // 200 and 256 share the 256-byte class
#if !defined(__SANITIZE_ADDRESS__)
    CHECK(b == a);
#endif
    // Blocks are usable for their whole size, and a block freed on another thread is fine.
    std::memset(b, 0x5a, 256);
    std::thread([b] { cached_free(b, 256); }).join();
    // Big blocks go straight to malloc.
    void* big = cached_alloc(cogent::detail::block_cache_max_block + 1);
    std::memset(big, 0, cogent::detail::block_cache_max_block + 1);
    cached_free(big, cogent::detail::block_cache_max_block + 1);
    // Fibers of different sizes (callables of different sizes) reuse each other's blocks safely.
    for (int round = 0; round < 3; ++round) {
      std::vector<fiber> fs;
      for (int i = 0; i < 100; ++i) {
        if (i % 2 == 0) {
          fs.emplace_back([i] { return i; });
        } else {
          std::array<char, 300> big_capture{};
          big_capture[0] = static_cast<char>(i);
          fs.emplace_back([big_capture] { return static_cast<int>(big_capture[0]); });
        }
      }
      for (int i = 0; i < 100; ++i) {
        CHECK(fs[static_cast<std::size_t>(i)].switch_to<int>() == i);
      }
    }
  }

  // The C++ runtime's exception state (the caught-exception stack behind `throw;` and
  // std::current_exception(), and std::uncaught_exceptions()) travels with each fiber: before,
  // it was the thread's, so a fiber parked in a catch block rethrew another fiber's exception.
  TEST_CASE("a fiber switched away inside a catch handler keeps its own caught exception") {
    std::string got;
    fiber main = fiber::current();
    fiber a([&] {
      try {
        try {
          throw std::runtime_error("A");
        } catch (...) {
          main.switch_to();  // main enters (and leaves) a handler of its own meanwhile
          CHECK(std::uncaught_exceptions() == 0);
          throw;  // must be A
        }
      } catch (const std::exception& e) {
        got = e.what();
      }
    });
    a.switch_to();
    CHECK(std::current_exception() == nullptr);  // a's handler is a's, not main's
    try {
      throw std::logic_error("main");
    } catch (...) {
      a.switch_to();
      CHECK(std::current_exception() != nullptr);
    }
    CHECK(got == "A");
    CHECK(std::current_exception() == nullptr);
  }

  TEST_CASE("a new fiber starts outside any handler, even when created and started from one") {
    bool inside = true;
    int uncaught = -1;
    try {
      throw std::runtime_error("outer");
    } catch (...) {
      fiber f([&] {
        inside = std::current_exception() != nullptr;
        uncaught = std::uncaught_exceptions();
      });
      f.switch_to();
      CHECK(std::current_exception() != nullptr);  // ours again
    }
    CHECK_FALSE(inside);
    CHECK(uncaught == 0);
  }

  // A thread's identity is a serial number: a later thread reuses the TLS block (and so the
  // address of any thread-local) of an ended one, and used to pass for it.
  TEST_CASE("switching to a fiber of a thread that has ended is a fiber_error") {
    static thread_local int tls_probe = 0;
    const void* tls_a = nullptr;
    const void* tls_b = nullptr;
    fiber f;
    std::thread a([&] {
      tls_a = &tls_probe;
      f = fiber([] { return 1; });
    });
    a.join();
    std::string what = "no error";
    std::thread b([&] {
      tls_b = &tls_probe;
      try {
        f.switch_to();
        what = "switched";
      } catch (const fiber_error& e) {
        what = e.what();
      }
    });
    b.join();
    CHECK(what.find("another thread") != std::string::npos);
    // The case that used to crash: b got a's TLS block (glibc reuses an ended thread's).
    CHECK_MESSAGE(tls_a == tls_b, "the second thread did not reuse the first one's TLS: test inconclusive");
  }
}  // TEST_SUITE("fiber")

#if defined(__SANITIZE_ADDRESS__)
#include "tests/child.hpp"

// noinline_index() hides the index from the compiler, so the bad access below is not folded away.
[[gnu::noinline]] int noinline_index(int i) {
  return i;
}

// The switch annotations make ASan's reports real: a stack-buffer-overflow inside a fiber that has
// switched back and forth is reported as exactly that, on that fiber's stack, and ordinary
// switching (the other 1000 round trips) reports nothing.
TEST_CASE("ASan build: a stack-buffer-overflow on a fiber's stack is reported as such" *
          doctest::timeout(30)) {
  cogent::test::child_result r = cogent::test::run_in_child([] {
    fiber other;
    fiber bad([&] {
      for (int i = 0; i < 1000; ++i) {
        other.switch_to();
      }
      char buf[16] = {};
      char* p = buf;              // through a pointer: UBSan's array-bounds check would stop first otherwise
      p[noinline_index(16)] = 1;  // one past the end
      std::printf("%d\n", buf[0]);  // keeps buf alive
    });
    other = fiber([&] {
      for (;;) {
        bad.switch_to();
      }
    });
    bad.switch_to();
  });
  INFO("child stderr: " << r.err);
  CHECK_FALSE(r.exited(0));
  CHECK(r.err.find("ERROR: AddressSanitizer: stack-buffer-overflow") != std::string::npos);
}
#endif

TEST_CASE("a fiber whose callable cannot be copied in leaves its parent's references alone") {
  // The control block names the creator as its parent before the callable is
  // copied in: if that copy throws, no fiber exists and the reference goes too.
  struct copy_throws {
    copy_throws() = default;
    copy_throws(const copy_throws&) { throw std::runtime_error("copy"); }
    void operator()() const {}
  };
  cogent::detail::fiber_impl* self = cogent::detail::current_impl();
  std::uint32_t before = self->refs;
  const copy_throws fn;
  CHECK_THROWS_AS(cogent::fiber{fn}, std::runtime_error);
  CHECK(self->refs == before);
}
