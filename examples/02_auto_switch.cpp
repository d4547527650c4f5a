// examples/02_auto_switch.cpp — automatic switching: the hub switches fibers at
// every blocking call (the gevent demo from the study notes).
//
// Three tasks each run f(5), printing "<task name> <i>" five times. Run first
// WITHOUT any blocking call: each task runs to the end before the next starts,
// so the output comes one task after another. Then WITH cogent::sleep() between
// steps: every sleep parks the task and the hub runs the next ready one, so the
// output interleaves — nobody wrote a switch.
//
// Run:  ninja -C build && ./build/examples/02_auto_switch
#include <chrono>
#include <cstdio>
#include <string>

#include "hub/task.hpp"

using namespace std::chrono_literals;

// f() prints the running task's name and a counter n times. With `pause` it
// sleeps between steps: a blocking call, hence a switch point.
void f(int n, std::chrono::milliseconds pause) {
  for (int i = 0; i < n; ++i) {
    std::printf("%s %d\n", cogent::current_task().name().c_str(), i);
    if (pause.count() > 0) {
      cogent::sleep(pause);
    }
  }
}

// run_three() spawns three named tasks running f(5) and waits for all of them.
void run_three(std::chrono::milliseconds pause) {
  auto g1 = cogent::spawn(cogent::spawn_options{"g1"}, f, 5, pause);
  auto g2 = cogent::spawn(cogent::spawn_options{"g2"}, f, 5, pause);
  auto g3 = cogent::spawn(cogent::spawn_options{"g3"}, f, 5, pause);
  // joinall() parks main; the hub runs g1, g2, g3 in spawn order.
  cogent::joinall({g1, g2, g3});
}

int main() {
  // Step 1: no blocking call inside f, so no switch: g1 prints 0..4, then g2, then g3.
  std::printf("--- without sleep: one task after another ---\n");
  run_three(0ms);

  // Step 2: cogent::sleep() between steps. Each sleep parks the task; the hub
  // runs the next ready task, and wakes the sleepers in order: g1 0, g2 0, g3 0, g1 1, ...
  std::printf("--- with cogent::sleep(10ms) between steps: interleaved ---\n");
  run_three(10ms);
  return 0;
}
