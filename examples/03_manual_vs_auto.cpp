// examples/03_manual_vs_auto.cpp — the same job with manual switching (you
// decide when to switch, with cogent::fiber::switch_to) and with automatic
// switching (the hub switches at every blocking call), side by side, timed.
//
// The job: N = 10 workers that each wait 1 s. Done concurrently it takes ~1 s,
// not N s.
//  A. manual, blocking wait: a fiber that calls std::this_thread::sleep_for
//     blocks the whole thread — no other fiber runs meanwhile — so the waits
//     add up (shown with 0.1 s waits: 10 x 0.1 s = ~1 s).
//  B. manual, cooperative: each fiber checks its own deadline and switches back
//     to a scheduler loop we wrote by hand. ~1 s of wall time, but the loop
//     spins: ~1 s of CPU too.
//  C. automatic: cogent::sleep(1s) in ten tasks. The hub parks them and waits
//     in the kernel for the nearest timer: ~1 s of wall time, ~0 CPU.
//
// Run:  ninja -C build && ./build/examples/03_manual_vs_auto      (about 3 s)
#include <chrono>
#include <cstdio>
#include <ctime>
#include <thread>
#include <vector>

#include "fiber/fiber.hpp"
#include "hub/task.hpp"

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

constexpr int n_workers = 10;

// stopwatch measures wall time and this process's CPU time.
struct stopwatch {
  steady::time_point wall = steady::now();
  std::clock_t cpu = std::clock();
  void report(const char* label) const {
    double w = std::chrono::duration<double>(steady::now() - wall).count();
    double c = static_cast<double>(std::clock() - cpu) / CLOCKS_PER_SEC;
    std::printf("%-44s wall %.2f s   cpu %.2f s\n", label, w, c);
  }
};

int main() {
  // A. Manual switching, blocking wait. The fibers are switched to one by one;
  // each blocks the thread in sleep_for, so nothing overlaps.
  {
    stopwatch sw;
    cogent::fiber main_fiber = cogent::fiber::current();
    std::vector<cogent::fiber> workers;
    for (int i = 0; i < n_workers; ++i) {
      workers.emplace_back([] { std::this_thread::sleep_for(100ms); });
    }
    for (auto& w : workers) {
      w.switch_to();  // runs until the worker finishes; it returns to us (its parent)
    }
    sw.report("A. manual, blocking 10 x 0.1 s:");
  }

  // B. Manual switching, cooperative. We are the scheduler: switch to every
  // unfinished worker in turn; a worker that is not done yet switches back to
  // us. We decide every switch — and we spin while everyone waits.
  {
    stopwatch sw;
    cogent::fiber main_fiber = cogent::fiber::current();
    std::vector<cogent::fiber> workers;
    for (int i = 0; i < n_workers; ++i) {
      workers.emplace_back([main_fiber]() mutable {
        auto deadline = steady::now() + 1s;
        while (steady::now() < deadline) {
          main_fiber.switch_to();  // "not yet": give the others a turn
        }
      });
    }
    for (bool any_alive = true; any_alive;) {
      any_alive = false;
      for (auto& w : workers) {
        if (!w.dead()) {
          any_alive = true;
          w.switch_to();
        }
      }
    }
    sw.report("B. manual, cooperative 10 x 1 s:");
  }

  // C. Automatic switching. Every cogent::sleep parks its task; the hub sleeps
  // in io_uring until the nearest deadline and wakes the tasks. No switch in
  // sight in our code.
  {
    stopwatch sw;
    std::vector<cogent::task<void>> tasks;
    for (int i = 0; i < n_workers; ++i) {
      tasks.push_back(cogent::spawn([] { cogent::sleep(1s); }));
    }
    cogent::joinall(tasks);
    sw.report("C. automatic (hub), 10 x cogent::sleep(1 s):");
  }
  return 0;
}
