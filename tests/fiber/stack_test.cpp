// tests/fiber/stack_test.cpp — fiber stacks (fiber/stack.hpp), the slow suite: a stack overflow is
// reported by fiber name and aborts, both on a guard page and (beyond the guard budget) through the
// canary; a thread's alternate signal stack is unmapped when it ends; and 1,000,000 fibers can be
// suspended at once. Overflow tests run in a fork()ed child.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <alloca.h>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "fiber/fiber.hpp"
#include "tests/child.hpp"

namespace {

using cogent::fiber;

using cogent::test::child_result;
using cogent::test::child_setup_failed;
using cogent::test::run_in_child;

// spend_guard_budget() creates and suspends fibers until the process's guard-page budget is used up,
// so the next default stack is a canary stack. The fibers are kept in `hogs`. In a child only.
void spend_guard_budget(std::vector<fiber>& hogs, fiber& main) {
  cogent::detail::set_guard_markers(false);  // the path of kernels before 6.13
  cogent::stack_counters st = cogent::stack_stats();
  while (cogent::stack_stats().guarded_total < st.guard_budget) {
    hogs.emplace_back([&main] { main.switch_to(); });
    hogs.back().switch_to();
    if (hogs.size() > st.guard_budget + 100000) {
      std::fprintf(stderr, "guard budget never reached\n");
      ::_exit(child_setup_failed);
    }
  }
}

// recurse_forever() eats stack until it faults; the volatile buffer keeps every frame real, and the
// volatile limit (never reached) keeps the compiler from treating it as infinite recursion.
volatile int g_depth_limit = 1 << 30;
[[gnu::noinline]] int recurse_forever(int depth) {
  volatile char buf[1024];
  for (std::size_t i = 0; i < sizeof buf; i += 64) {
    buf[i] = static_cast<char>(depth);
  }
  if (depth >= g_depth_limit) {
    return 0;
  }
  return recurse_forever(depth + 1) + buf[depth % 16];
}

// recurse_to_bottom() recurses until its frame is within a few KiB of `bottom`, then takes one last
// "frame" (an alloca) reaching just below `bottom` and fills it: exactly what an overflowing function does
// to the canary at the bottom of an unguarded stack, without running far into the memory beyond it
// (below `bottom` sits the unguarded guard slot, one mapped page, then another fiber's stack).
[[gnu::noinline]] int recurse_to_bottom(const char* bottom, int depth) {
  volatile char buf[512];
  for (std::size_t i = 0; i < sizeof buf; i += 64) {
    buf[i] = static_cast<char>(depth | 1);
  }
  const char* here = const_cast<const char*>(&buf[0]);
  if (here > bottom + 8192) {
    return recurse_to_bottom(bottom, depth + 1) + buf[depth % 8];
  }
  // The last frame: from just below our locals down to ~256 bytes below the stack's bottom (a little
  // further by the distance between `buf` and the stack pointer, well inside the one-page guard slot).
  std::size_t span = static_cast<std::size_t>(here - bottom) + 256;
  auto* last = static_cast<volatile char*>(alloca(span));
  for (std::size_t i = 0; i < span; ++i) {
    last[i] = static_cast<char>(0x5a);
  }
  return buf[0] + last[span / 2];
}

// vm_size_kib() is this process's mapped address space (VmSize in /proc/self/status), in KiB.
long vm_size_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmSize:", 0) == 0) {
      return std::stol(line.substr(7));
    }
  }
  return -1;
}

// contains() is a readable substring check for failure messages.
bool contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

// diver() is a fiber on a 64 KiB stack named `name` that comes back to `main` once (so its stack is
// mapped and can be inspected) and overflows it when next switched into.
fiber diver(fiber& main, const char* name) {
  return fiber(
      [&main] {
        main.switch_to();
        recurse_forever(0);
      },
      {.stack_size = 64 * 1024, .name = name});
}

// check_overflow_reported() checks that the child set up what it wanted, then aborted with the
// overflow report naming fiber `name` on stderr.
void check_overflow_reported(const child_result& r, const std::string& name) {
  INFO("child stderr: " << r.err);
  REQUIRE_FALSE(r.exited(child_setup_failed));
  CHECK(WIFSIGNALED(r.status));
  if (WIFSIGNALED(r.status)) {
    CHECK(WTERMSIG(r.status) == SIGABRT);
  }
  CHECK(contains(r.err, "stack overflow in fiber '" + name + "'"));
}

}  // namespace

TEST_SUITE("stack") {
  // This test comes first in the file: its child must be the first to hand out a default-size stack.
  TEST_CASE("set_default_stack_size() changes the stack of every default fiber" * doctest::timeout(60)) {
    child_result r = run_in_child([] {
      try {
        cogent::set_default_stack_size(40 * 1024 + 1);  // rounded up to whole pages
      } catch (const std::logic_error& e) {
        std::fprintf(stderr, "the parent already handed out default stacks: %s\n", e.what());
        ::_exit(child_setup_failed);
      }
      if (cogent::default_stack_size() != 44 * 1024) {
        std::fprintf(stderr, "default_stack_size() = %zu\n", cogent::default_stack_size());
        ::_exit(child_setup_failed);
      }
      // 96 KiB of frames: fine on the old 256 KiB default, an overflow on 44 KiB.
      g_depth_limit = 96;
      fiber f([] { recurse_forever(0); }, {.name = "small-default"});
      f.switch_to();
      std::fprintf(stderr, "96 KiB of frames fitted in the small default stack\n");
    });
    INFO("child stderr: " << r.err);
    REQUIRE_FALSE(r.exited(child_setup_failed));
    CHECK(WIFSIGNALED(r.status));
    CHECK(contains(r.err, "stack overflow in fiber 'small-default'"));
  }

  // The next two tests need the guard budget not yet spent by this process (a fork()ed child inherits it).
  // markers: a guard marker (Linux >= 6.13) if the kernel has them, else (and with markers off) a
  // PROT_NONE page from the budget.
  void overflow_on_guard_page(bool markers) {
    child_result r = run_in_child([markers] {
      cogent::detail::set_guard_markers(markers);
      std::size_t guarded0 = cogent::stack_stats().guarded_total;
      std::size_t markers0 = cogent::stack_stats().marker_guarded;
      bool want_marker = cogent::stack_stats().guard_markers;
      // A non-default size is always freshly mapped (never from the pool), so it gets a guard page while
      // the budget allows. The stack is mapped by the first switch: the fiber comes back once first.
      fiber main = fiber::current();
      fiber f = diver(main, "deep-diver");
      f.switch_to();
      cogent::stack_counters st = cogent::stack_stats();
      bool as_wanted = want_marker ? st.marker_guarded == markers0 + 1 && st.guarded_total == guarded0
                                   : st.guarded_total == guarded0 + 1 && st.marker_guarded == markers0;
      if (!f.impl()->stk.guarded || f.impl()->stk.marker != want_marker || !as_wanted) {
        std::fprintf(stderr, "no guard page of the kind wanted (marker %d): guarded %zu -> %zu of %zu\n",
                     want_marker ? 1 : 0, guarded0, st.guarded_total, st.guard_budget);
        ::_exit(child_setup_failed);
      }
      std::fprintf(stderr, "guard: %s\n", want_marker ? "marker" : "PROT_NONE");
      f.switch_to();
    });
    // Under ASan our SIGSEGV handler still runs (ASan allows user SEGV handlers and provides the alternate
    // signal stack), so the report is the same.
    check_overflow_reported(r, "deep-diver");
  }

  TEST_CASE("a thread's alternate signal stack goes when the thread ends; overflows are still named after" *
            doctest::timeout(120)) {
    child_result r = run_in_child([] {
      auto one_thread = [] {
        std::thread t([] {
          fiber f([](int n) { return n + 1; });
          if (f.switch_to<int>(1) != 2) {
            std::_Exit(5);
          }
        });
        t.join();
      };
      one_thread();  // (the first thread's one-time costs: the pool's globals, the handler)
      long before = vm_size_kib();
      for (int i = 0; i < 400; ++i) {
        one_thread();
      }
      long after = vm_size_kib();
      // Every thread mapped a 64 KiB alternate signal stack (and its fiber stacks): one left behind
      // each would be 25 MiB more; the slack is for the allocator's arenas and glibc's stack cache.
      std::fprintf(stderr, "VmSize: %ld -> %ld KiB\n", before, after);
      if (before < 0 || after - before > 4096) {
        ::_exit(child_setup_failed + 1);
      }
      // A later thread still gets an alternate stack and its overflow report.
      std::thread t([] {
        fiber main = fiber::current();
        fiber f = diver(main, "late-thread-diver");
        f.switch_to();
        if (!f.impl()->stk.guarded) {
          std::fprintf(stderr, "no guard page for the late thread's fiber\n");
          ::_exit(child_setup_failed);
        }
        f.switch_to();
      });
      t.join();
    });
    INFO("child stderr: " << r.err);
    CHECK_FALSE(r.exited(child_setup_failed + 1));  // (the VmSize check)
    check_overflow_reported(r, "late-thread-diver");
  }

  TEST_CASE("a stack overflow on a guard page is reported by name and aborts" * doctest::timeout(60)) {
    SUBCASE("a guard marker (PROT_NONE on kernels before 6.13)") {
      overflow_on_guard_page(true);
    }
    SUBCASE("a PROT_NONE guard page from the budget") {
      overflow_on_guard_page(false);
    }
  }

  TEST_CASE("beyond the guard budget, the canary catches an overflow at the next switch" *
            doctest::timeout(120)) {
    child_result r = run_in_child([] {
      // Spend the whole guard budget on fibers kept suspended (each is switched into once).
      std::vector<fiber> hogs;
      fiber main = fiber::current();
      spend_guard_budget(hogs, main);
      // A fresh chunk's stacks have no guard page any more: the canary fiber overflows into its canary,
      // returns from the recursion, and is caught when it switches away.
      std::size_t guarded_before = cogent::stack_stats().guarded_total;
      fiber canary;
      canary = fiber(
          [&] {
            main.switch_to();  // its stack exists now: main checks it has no guard page
            recurse_to_bottom(canary.impl()->stk.bottom, 0);
            main.switch_to();
          },
          {.stack_size = 0, .name = "canary-fiber"});
      canary.switch_to();
      if (canary.impl()->stk.guarded || cogent::stack_stats().guarded_total != guarded_before) {
        std::fprintf(stderr, "the canary fiber got a guard page\n");
        ::_exit(child_setup_failed);
      }
      canary.switch_to();
      std::fprintf(stderr, "the overflow went unnoticed\n");
    });
    check_overflow_reported(r, "canary-fiber");
  }

  TEST_CASE("beyond the guard budget, an overflow in a fiber that then finishes is still named" *
            doctest::timeout(120)) {
    child_result r = run_in_child([] {
      std::vector<fiber> hogs;
      fiber main = fiber::current();
      spend_guard_budget(hogs, main);
      // The culprit overflows into its canary and returns: its final switch (to its parent) must
      // report it, not leave a dirty stack for an innocent fiber to be blamed for.
      fiber culprit;
      culprit = fiber(
          [&] {
            main.switch_to();  // its stack exists now: main checks it has no guard page
            recurse_to_bottom(culprit.impl()->stk.bottom, 0);
          },
          {.stack_size = 0, .name = "real-culprit"});
      culprit.switch_to();
      if (culprit.impl()->stk.guarded) {
        ::_exit(child_setup_failed);
      }
      culprit.switch_to();
      fiber innocent([&] { main.switch_to(); }, {.stack_size = 0, .name = "innocent"});
      innocent.switch_to();
      std::fprintf(stderr, "the overflow went unnoticed\n");
    });
    INFO("child stderr: " << r.err);
    REQUIRE_FALSE(r.exited(child_setup_failed));
    CHECK(WIFSIGNALED(r.status));
    CHECK(contains(r.err, "stack overflow in fiber 'real-culprit'"));
    CHECK_FALSE(contains(r.err, "'innocent'"));
  }

  TEST_CASE("many fibers suspended at once" * doctest::timeout(60)) {
#if defined(__SANITIZE_ADDRESS__)
    // ASan's shadow memory and per-fiber bookkeeping make 1M fibers too heavy; 100k proves the same paths.
    constexpr std::size_t count = 100000;
#else
    constexpr std::size_t count = 1000000;
#endif
    auto t0 = std::chrono::steady_clock::now();
    cogent::stack_counters before = cogent::stack_stats();
    std::size_t finished = 0;
    std::size_t unwound = 0;
    {
      fiber main = fiber::current();
      std::vector<fiber> all;
      all.reserve(count);
      struct count_unwind {
        std::size_t* n;
        ~count_unwind() { ++*n; }
      };
      for (std::size_t i = 0; i < count; ++i) {
        all.emplace_back([&main, &finished, &unwound] {
          count_unwind guard{&unwound};
          main.switch_to();  // suspended here, mid-function
          ++finished;
        });
        all.back().switch_to();
      }
      cogent::stack_counters during = cogent::stack_stats();
      CHECK(during.live == before.live + count);
      CHECK(during.guarded_total <= during.guard_budget);
      if (during.guard_markers) {
        // No map-count budget to run out of: every one of them has a guard page.
        CHECK(during.marker_guarded + during.guarded_total >= count);
      }
      // Resume a few to show they still work, then destroy everything (the rest unwind).
      for (std::size_t i = 0; i < count; i += count / 10) {
        all[i].switch_to();
      }
      CHECK(finished == 10);
    }
    CHECK(finished == 10);
    CHECK(unwound == count);
    cogent::stack_counters after = cogent::stack_stats();
    CHECK(after.live == before.live);
    CHECK(after.pooled >= count);  // the stacks went back to the pool
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MESSAGE(count << " fibers suspended and destroyed in " << secs << " s");
    CHECK(secs < 60.0);
  }

  // In-process (not in a child): after the child-based tests, as doctest restores its own signal handlers
  // after each test case, and the overflow handler is installed once per process, by the first fiber.
  TEST_CASE("set_stack_pool_limit(): lowering it gives the free stacks' memory back at once" *
            doctest::timeout(60)) {
    // In a child: the limit is process-wide, and RSS must not count the parent's other tests.
    int code = cogent::test::exit_code_in_child(
        [] {
          auto resident_kib = [] {
            long pages = 0, rss = 0;
            FILE* f = std::fopen("/proc/self/statm", "r");
            if (f == nullptr || std::fscanf(f, "%ld %ld", &pages, &rss) != 2) {
              return -1L;
            }
            std::fclose(f);
            return rss * (::sysconf(_SC_PAGESIZE) / 1024);
          };
          fiber main = fiber::current();
          {
            std::vector<fiber> fs;
            for (int i = 0; i < 200; ++i) {  // each touches 64 KiB of its stack, then waits
              fs.emplace_back([&main] {
                volatile char buf[64 * 1024];
                for (std::size_t j = 0; j < sizeof buf; j += 512) {
                  buf[j] = 1;
                }
                main.switch_to();
              });
              fs.back().switch_to();
            }
          }  // destroyed: 200 free stacks, each keeping its 64 KiB
          cogent::stack_counters before = cogent::stack_stats();
          if (before.pooled_hot < 200) {
            return 10;
          }
          long rss_before = resident_kib();
          cogent::set_stack_pool_limit(0);
          cogent::stack_counters after = cogent::stack_stats();
          long rss_after = resident_kib();
          if (after.pooled_hot != 0 || after.pooled != before.pooled) {
            return 11;  // every free stack is still pooled (cold), none kept its memory
          }
          if (rss_before - rss_after < 10 * 1024) {  // 200 x 64 KiB = 12.5 MiB went back
            std::fprintf(stderr, "rss %ld -> %ld KiB\n", rss_before, rss_after);
            return 12;
          }
          fiber again([] {});  // a cold stack is reused: it works, on fresh zero pages
          again.switch_to();
          return again.dead() ? 0 : 13;
        },
        30);
    CHECK(code == 0);
  }

  TEST_CASE("set_default_stack_size() rejects bad sizes and late calls") {
    CHECK_THROWS_AS(cogent::set_default_stack_size(1024), std::invalid_argument);
    CHECK_THROWS_AS(cogent::set_default_stack_size(cogent::stack_limits::max_size + 1),
                    std::invalid_argument);
    std::size_t before = cogent::default_stack_size();
    fiber f([] {});
    f.switch_to();  // a default-size stack is handed out (and back)
    CHECK_THROWS_WITH_AS(cogent::set_default_stack_size(64 * 1024), doctest::Contains("first thing in main"),
                         std::logic_error);
    CHECK(cogent::default_stack_size() == before);
  }
}  // TEST_SUITE("stack")
