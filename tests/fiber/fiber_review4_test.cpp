// tests/fiber/fiber_review4_test.cpp — fourth adversarial review of fiber/ (fiber.cpp, stack.cpp,
// fiber_impl.hpp). The first two cases fork before this process has created any fiber (they need
// a process where set_default_stack_size() and the SIGSEGV handler are still untouched): keep them
// first in the file. All four cases failed on the code they were written against (the last one
// also makes LeakSanitizer report the leaked control block at exit).
#include <doctest/doctest.h>

#include <signal.h>
#include <unistd.h>

#include <any>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>
#include <system_error>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "fiber/fiber.hpp"
#include "tests/child.hpp"

#ifndef CHAIN_N
#define CHAIN_N 3000
#endif

namespace {

using cogent::fiber;
using cogent::fiber_error;
using cogent::fiber_exit;
using cogent::test::child_result;
using cogent::test::child_setup_failed;
using cogent::test::exit_code_in_child;
using cogent::test::run_in_child;


// For the thread-exit case: a thread_local handle constructed before the thread's first fiber.
thread_local fiber t_early_handle;
std::mutex g_freed_mu;
std::set<const void*> g_freed;
void (*g_prev_free_hook)(cogent::detail::fiber_impl*) noexcept = nullptr;
void record_free(cogent::detail::fiber_impl* f) noexcept {
  {
    std::lock_guard lock(g_freed_mu);
    g_freed.insert(f);
  }
  if (g_prev_free_hook != nullptr) {
    g_prev_free_hook(f);
  }
}

}  // namespace

TEST_SUITE("fiber review 4") {
  // stack.hpp: set_default_stack_size() accepts up to stack_limits::max_size (1 GiB), and "a stack
  // costs only the pages its fiber touches". But allocate_default() (stack.cpp) maps default stacks
  // by chunks of chunk_stacks = 256 whatever their size: the first default fiber after
  // set_default_stack_size(1 GiB) maps 256 GiB at once. In a process whose address space is
  // limited (ulimit -v, or strict overcommit, where MAP_NORESERVE is not honoured) that fails
  // although the one 1 GiB stack asked for fits: the fiber cannot start (std::system_error).
  TEST_CASE("a 1 GiB default stack size does not make the first fiber map 256 GiB" * doctest::timeout(30)) {
    int code = exit_code_in_child(
        [] {
          try {
            cogent::set_default_stack_size(cogent::stack_limits::max_size);
          } catch (const std::logic_error&) {
            return child_setup_failed;  // a default-size stack was handed out before the fork
          }
          cogent::test::limit_address_space(4L << 20);  // 4 GiB more than mapped now
          try {  // control: one 1 GiB stack (mapped alone: not default-size) fits in the limit
            fiber alone([] { return 7; }, {.stack_size = cogent::stack_limits::max_size - 4096, .name = "alone"});
            if (alone.switch_to<int>() != 7) {
              return 4;
            }
          } catch (const std::system_error&) {
            return 4;
          }
          fiber f([] { return 7; });
          try {
            return f.switch_to<int>() == 7 ? 0 : 1;
          } catch (const std::system_error&) {
            return 2;  // the stack could not be mapped
          }
        },
        20);
    if (code == child_setup_failed) {
      MESSAGE("skipped: default stacks were handed out before this case ran (run the file in order)");
      return;
    }
    CHECK(code == 0);
  }

  // stack.hpp: "Faults that are not ours are passed on to the handler that was installed before
  // (or the default action)". on_fault() (stack.cpp) implements the default action by reinstalling
  // SIG_DFL and returning, counting on the faulting instruction to fault again. A SIGSEGV that is
  // not a fault (kill -SEGV, raise(), pthread_kill) does not come again: the signal is swallowed,
  // the process goes on, and cogent's overflow handler is gone for good.
  TEST_CASE("a SIGSEGV that is not a fault still takes the default action once cogent's handler is in" *
            doctest::timeout(30)) {
    int code = exit_code_in_child([] {
      // (exit_code_in_child() reset SIGSEGV to SIG_DFL: that is the "handler installed before".)
      fiber f([] {});  // the thread's main fiber installs the overflow handler (once per process)
      struct sigaction cur {};
      ::sigaction(SIGSEGV, nullptr, &cur);
      if ((cur.sa_flags & SA_SIGINFO) == 0) {
        return child_setup_failed;  // the handler was installed (and the old one saved) before the fork
      }
      ::raise(SIGSEGV);  // default action: the process is killed by SIGSEGV
      return 0;
    });
    if (code == child_setup_failed) {
      MESSAGE("skipped: the overflow handler was installed before this case ran (run the file in order)");
      return;
    }
    CHECK(code == -SIGSEGV);
  }

  // fiber.cpp, kill_for_destroy(): the victim's old parent is unref'd BEFORE the victim is killed;
  // if that was the old parent's last reference it is killed right there, recursively. A chain of
  // suspended fibers, each held only by its child's parent reference (the leaf held by a handle),
  // is killed by one nested kill_for_destroy()/unref() pair per fiber on the stack of whoever drops
  // the leaf. destroy() was made a loop for chains of dead fibers (review 2); a chain of suspended
  // ones still recurses: 3000 of them overflow a 64 KiB stack (and enough of them overflow any).
  TEST_CASE("dropping the leaf of a long chain of suspended fibers does not recurse once per fiber" *
            doctest::timeout(60)) {
    child_result r = run_in_child([] {
      constexpr int n = CHAIN_N;
      static std::vector<fiber> chain;
      static int unwound = 0;
      static fiber dropper;
      chain.reserve(n + 1);
      struct on_unwind {
        ~on_unwind() { ++unwound; }
      };
      static void (*link)() = nullptr;
      link = [] {
        on_unwind u;
        if (static_cast<int>(chain.size()) < n + 1) {
          chain.emplace_back([] { link(); });
          chain.back().switch_to();  // suspended here: a parent of the next one
        } else {
          dropper.switch_to();  // the leaf
        }
      };
      fiber main = fiber::current();
      dropper = fiber(
          [&] {
            chain.emplace_back([] { link(); });
            chain.front().switch_to();  // builds the whole chain; the leaf comes back here
            for (int i = 0; i < n; ++i) {
              chain[static_cast<std::size_t>(i)] = fiber();  // each is now held by its child only
            }
            chain.back() = fiber();  // the leaf's last handle: the whole chain is unwound
            main.switch_to();
          },
          {.stack_size = 64 * 1024, .name = "dropper"});
      dropper.switch_to();
      if (unwound != n + 1) {
        std::fprintf(stderr, "unwound %d of %d\n", unwound, n + 1);
        ::_exit(1);
      }
      dropper.throw_in();
    });
    INFO(r.err);
    CHECK(r.exited(0));
  }

  // fiber.cpp, ~main_holder: at thread exit the main fiber is released and t_current set to null.
  // A thread_local handle constructed before the thread's first fiber is destroyed after that
  // (thread_local destructors run in reverse order of construction); if it holds the last handle
  // to a suspended fiber, kill_for_destroy() calls current_impl(), which finds no current fiber and
  // makes a SECOND main fiber for the thread (init_thread(), writing the destroyed t_main). That
  // one does the kill and is never released: its control block (and any fiber_local value set
  // during the unwind) leaks with every such thread.
  TEST_CASE("a suspended fiber killed by a thread_local handle at thread exit leaks no control block" *
            doctest::timeout(30)) {
    g_prev_free_hook = cogent::detail::fiber_free_hook.exchange(record_free);
    const void* thread_main = nullptr;
    const void* killer = nullptr;
    bool killer_is_main = false;
    bool unwound = false;
    std::thread t([&] {
      (void)t_early_handle.dead();  // constructed now: destroyed after the fiber layer's thread state
      thread_main = fiber::current().impl();
      t_early_handle = fiber([&] {
        struct on_unwind {
          const void** killer;
          bool* is_main;
          bool* unwound;
          ~on_unwind() {
            fiber k = fiber::current().parent();  // the killer becomes the victim's parent
            *killer = k.impl();
            *is_main = k.impl()->is_main;
            *unwound = true;
          }
        } u{&killer, &killer_is_main, &unwound};
        fiber back = fiber::current().parent();  // (no handle to itself stays on its stack)
        back.switch_to();
      });
      t_early_handle.switch_to();  // suspended; the thread ends with it
    });
    t.join();
    cogent::detail::fiber_free_hook.store(g_prev_free_hook);
    REQUIRE(unwound);
    std::lock_guard lock(g_freed_mu);
    CHECK(g_freed.count(thread_main) == 1);
    const std::string who = killer == thread_main ? "the thread's main fiber"
                            : killer_is_main        ? "a second main fiber of the thread"
                                                    : "another fiber";
    INFO("the kill was done by " << who);
    CHECK(g_freed.count(killer) == 1);  // whoever did the kill is gone with the thread
  }
}
