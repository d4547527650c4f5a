// tests/fiber/fiber_review3_test.cpp — third adversarial review of fiber/ (fiber.cpp, fiber_impl.hpp,
// stack.cpp). Every case failed on the code it was written against, but the last two (coverage of
// exception state across fibers, which passed).
#include <doctest/doctest.h>

#include <unistd.h>

#include <any>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "fiber/fiber.hpp"
#include "tests/child.hpp"

namespace {

using cogent::fiber;
using cogent::fiber_error;
using cogent::fiber_exit;
using cogent::test::child_result;
using cogent::test::child_setup_failed;
using cogent::test::run_in_child;

struct raii_flag {
  bool* flag;
  ~raii_flag() { *flag = true; }
};

}  // namespace

TEST_SUITE("fiber review 3") {
  // fiber_body::run(): a callable taking `const T&` gets a reference into the fiber's own in_value
  // slot (any_value_cast returns std::move(*p) and the value stays in the slot). The next switch into
  // the fiber assigns that slot, destroying the argument under the callable's feet.
  // (In a child: ASan reports a heap-use-after-free of the string.)
  TEST_CASE("a const-reference argument stays valid after the fiber is switched into again" *
            doctest::timeout(10)) {
    child_result r = run_in_child([] {
      fiber main = fiber::current();
      fiber f([&](const std::string& s) {
        std::string before = s;
        main.switch_to();            // suspended; the next switch writes f's value slot
        return before == s ? 1 : 0;  // s must still be the first value
      });
      f.switch_to(std::string(100, 'x'));  // heap-held in the std::any
      std::any got = f.switch_to(std::string(100, 'y'));
      ::_exit(got.has_value() && std::any_cast<int>(got) == 1 ? 0 : 1);
    });
    INFO("child stderr: " << r.err.substr(0, 2000));
    CHECK(r.exited(0));
  }

  // Same with a callable taking `std::any&&` / `const std::any&`: the reference is to in_value itself.
  TEST_CASE("a std::any reference argument stays valid after the fiber is switched into again" *
            doctest::timeout(10)) {
    fiber main = fiber::current();
    fiber f([&](const std::any& a) {
      main.switch_to();
      return a.has_value() && std::any_cast<std::string>(a) == std::string(100, 'x') ? 1 : 0;
    });
    f.switch_to(std::string(100, 'x'));
    std::any got = f.switch_to();  // an empty value: resets f's slot, and `a` with it
    REQUIRE(got.has_value());
    CHECK(std::any_cast<int>(got) == 1);
  }

  // fiber.hpp: "fn may take no argument ... the first switch's value becomes the callable's
  // argument" (fiber_test: "no argument: the value is dropped"). run() never consumes in_value for a
  // no-argument callable, so the value lives on in the slot for as long as the fiber stays suspended.
  TEST_CASE("a no-argument fiber does not keep its first switch's value alive" * doctest::timeout(10)) {
    fiber main = fiber::current();
    auto token = std::make_shared<int>(1);
    std::weak_ptr<int> w = token;
    fiber f([&] { main.switch_to(); });
    f.switch_to(std::any(std::move(token)));
    CHECK(w.expired());  // f is suspended: nobody took the value, it should be gone
    f.switch_to();
    CHECK(f.dead());
  }

  // The consequence: that stale value is destroyed by the next write into the slot. When the write
  // is a child's final switch (entry(): target->in_value = result, after self->dead = true) and the
  // value holds the last handle to a suspended fiber, that fiber is killed from the dead child: it
  // finishes into the dead child's parent, i.e. our fiber, which gets its (empty) result instead of
  // the child's 42; the child's own final switch never happens (its stack leaks).
  TEST_CASE("a child's result reaches a no-argument parent whose first value held the last handle to a fiber" *
            doctest::timeout(10)) {
    child_result r = run_in_child([] {
      fiber main = fiber::current();
      std::size_t base = cogent::stack_stats().live;
      bool unwound = false;
      std::any got_in_parent;
      bool child_dead = false;
      {
        fiber victim([&] {
          raii_flag g{&unwound};
          main.switch_to();
        });
        victim.switch_to();  // suspended
        fiber parent([&] {
          fiber child([] { return 42; });
          got_in_parent = child.switch_to();
          child_dead = child.dead();
        });
        parent.switch_to(std::any(std::move(victim)));  // the only handle to victim
        if (!parent.dead()) ::_exit(child_setup_failed);
      }
      int v = -1;
      if (auto* p = std::any_cast<int>(&got_in_parent)) v = *p;
      std::fprintf(stderr, "parent got %d, child dead %d, victim unwound %d, stacks leaked %zu\n", v,
                   child_dead ? 1 : 0, unwound ? 1 : 0, cogent::stack_stats().live - base);
      ::_exit(v == 42 && child_dead && unwound && cogent::stack_stats().live == base ? 0 : 1);
    });
    INFO("child stderr: " << r.err.substr(0, 3000));
    REQUIRE_FALSE(r.exited(child_setup_failed));
    CHECK(r.exited(0));
  }

  // (switch_to<T>() with T a reference type returned a reference into the slot the next switch
  // in overwrites: it is now rejected at compile time, by a static_assert in fiber.hpp.)

  // fiber.hpp: "name() is the name given in fiber_options". fiber_impl::name() formats into a
  // 128-byte buffer (write_name, meant for the signal handler), so a longer name comes back cut.
  TEST_CASE("name() returns a long custom name in full" * doctest::timeout(10)) {
    std::string long_name(300, 'n');
    fiber f([] {}, {.name = long_name});
    CHECK(f.name() == long_name);
  }

  // The same stale value, on a fiber that finished and dropped its own last handle while running:
  // resumed_slow() frees it (destroy(from)) inside the switch that delivers its result to the parent.
  // ~fiber_impl destroys the stale in_value there; it holds the last handle to a suspended fiber,
  // whose kill switches into the parent again and overwrites the result being delivered
  // (kill_orphan() and release_locals() keep it across such nested switches; destroy() does not).
  TEST_CASE("a self-released child's result survives the destruction of the values it still held" *
            doctest::timeout(10)) {
    child_result r = run_in_child([] {
      static fiber s_child;
      fiber main = fiber::current();
      bool unwound = false;
      int v = -1;
      {
        fiber victim([&] {
          raii_flag g{&unwound};
          main.switch_to();
        });
        victim.switch_to();  // suspended
        s_child = fiber([] {
          s_child = fiber();  // drops its own last handle: freed when it has finished
          return 42;
        });
        fiber c = s_child;
        c = fiber();
        // s_child is the only handle; its first value is the only handle to victim
        std::any got = s_child.switch_to(std::any(std::move(victim)));
        if (auto* p = std::any_cast<int>(&got)) v = *p;
      }
      std::fprintf(stderr, "result %d, victim unwound %d\n", v, unwound ? 1 : 0);
      ::_exit(v == 42 && unwound ? 0 : 1);
    });
    INFO("child stderr: " << r.err.substr(0, 3000));
    CHECK(r.exited(0));
  }

  // fiber_impl declares operator new(std::size_t) only: a callable with new-extended alignment (a
  // capture declared alignas(64)) gets that class-scope allocation function, which ignores the
  // alignment ([expr.new]: the aligned form is looked up in the class first, and there is none), so
  // the callable lives on a 16-byte boundary (under ASan: often 128).
  TEST_CASE("a callable with an over-aligned capture is stored at its alignment" * doctest::timeout(10)) {
    struct alignas(256) wide {
      int v = 5;
    };
    std::vector<fiber> keep;  // several, so one lucky 128-byte-aligned block does not hide it
    bool all_aligned = true;
    for (int i = 0; i < 8; ++i) {
      wide w;
      keep.emplace_back([w] {
        auto a = reinterpret_cast<std::uintptr_t>(&w);
        asm volatile("" : "+r"(a));  // the compiler may not fold the remainder from the declared alignment
        return a % alignof(wide);
      });
    }
    for (auto& f : keep) {
      all_aligned = all_aligned && f.switch_to<std::uintptr_t>() == 0;
    }
    CHECK(all_aligned);
  }

  // fiber::operator=(const fiber&) takes a reference on o's fiber, drops its own (which may unwind a
  // suspended fiber: user code runs) and only then reads o._impl again. If the unwinding changed o,
  // the handle ends up with a fiber it holds no reference on, and the one it took is leaked.
  TEST_CASE("copy-assigning a handle that unwinds a fiber which changes the source keeps counts right" *
            doctest::timeout(10)) {
    fiber main = fiber::current();
    auto token = std::make_shared<int>(1);
    std::weak_ptr<int> w = token;
    fiber src([t = std::move(token)] {});  // never started: freed with its last handle
    fiber h;
    {
      struct resetter {
        fiber* src;
        ~resetter() { *src = fiber(); }
      };
      h = fiber([&] {
        resetter r{&src};
        main.switch_to();
      });
      h.switch_to();  // suspended; h is its only handle
    }
    h = src;  // unwinds the old fiber, whose destructor empties src
    CHECK_FALSE(src);
    h = fiber();
    CHECK(w.expired());  // nobody holds the fiber that src named any more
  }
  // Coverage (passed): the exception a fiber was handling when it switched away is freed when the
  // fiber is killed there, by throw_in() or by dropping its last handle.
  TEST_CASE("the exception a suspended fiber is handling is destroyed when it is killed" * doctest::timeout(10)) {
    static int alive = 0;
    struct E { E() { ++alive; } E(const E&) { ++alive; } ~E() { --alive; } };
    fiber main = fiber::current();
    {
      fiber f([&] {
        try { throw E{}; } catch (const E&) { main.switch_to(); }
      });
      f.switch_to();
      CHECK(alive == 1);
      f.throw_in();
      CHECK(f.dead());
    }
    CHECK(alive == 0);
    {
      fiber f([&] {
        try { throw E{}; } catch (const E&) { main.switch_to(); }
      });
      f.switch_to();
    }
    CHECK(alive == 0);
  }
  // Coverage (passed): one exception object caught in two fibers at once (throw_in of
  // current_exception()), rethrown with `throw;` in each, and a nested exception built from it in one
  // fiber and unpacked with rethrow_if_nested in the other.
  TEST_CASE("an exception caught in two fibers at once and nested across them stays intact" *
            doctest::timeout(10)) {
    fiber main = fiber::current();
    std::exception_ptr seen_after;
    fiber f([&] {
      try { throw std::runtime_error("one"); } catch (...) {
        try { main.throw_in(std::current_exception()); } catch (...) {}
        try { throw; } catch (const std::runtime_error& e) {
          seen_after = std::current_exception();
          try { std::throw_with_nested(std::logic_error("outer")); } catch (...) {
            main.throw_in(std::current_exception());
          }
        }
      }
    });
    try { f.switch_to(); } catch (const std::runtime_error& e) {
      CHECK(std::string(e.what()) == "one");
      try { f.throw_in(std::make_exception_ptr(std::out_of_range("r"))); } catch (const std::logic_error& o) {
        CHECK(std::string(o.what()) == "outer");
        try { std::rethrow_if_nested(o); } catch (const std::runtime_error& in) { CHECK(std::string(in.what()) == "one"); }
      }
      CHECK(std::current_exception() != nullptr);
      try { throw; } catch (const std::runtime_error& e2) { CHECK(&e2 == &e); }
    }
    CHECK(std::current_exception() == nullptr);
    CHECK(seen_after != nullptr);
  }
}
