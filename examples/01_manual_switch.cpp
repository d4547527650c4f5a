// examples/01_manual_switch.cpp — manual switching between fibers, greenlet style.
//
// Shows: two fibers, test1 and test2, handing control to each other explicitly with switch_to(),
// passing a counter along on every switch (the greenlet ping-pong from the study notes, a few rounds
// instead of forever); then a fiber whose return value goes to its parent, the main fiber. Nothing runs
// concurrently: exactly one fiber runs at a time, and only switch_to() changes which one.
//
// Run: ./build/examples/01_manual_switch
#include <cstdio>
#include <string>

#include "fiber/fiber.hpp"

int main() {
  // The main fiber is the thread itself: fiber::current() before any switch.
  cogent::fiber main_fiber = cogent::fiber::current();
  std::printf("running in '%s'\n", main_fiber.name().c_str());

  // Declare both handles first so each fiber's body can name the other one.
  cogent::fiber test1;
  cogent::fiber test2;

  // test1 receives the counter as the value of the first switch into it. Each round it prints "---A--"
  // and switches to test2, handing over the counter plus one; switch_to<int>() returns whatever the next
  // switch back into test1 carries. After three rounds it returns, and its return value goes to its
  // parent (main, which created it).
  test1 = cogent::fiber([&](int counter) {
    for (int round = 0; round < 3; ++round) {
      std::printf("---A-- (counter %d)\n", counter);
      counter = test2.switch_to<int>(counter + 1);
    }
    return counter;
  });

  // test2 does the mirror image: print "---B--", switch back to test1 with the counter plus one. It
  // never finishes; when main drops the last handle to it at the end, it is unwound (its stack's
  // destructors run) and freed.
  test2 = cogent::fiber([&](int counter) {
    while (true) {
      std::printf("---B-- (counter %d)\n", counter);
      counter = test1.switch_to<int>(counter + 1);
    }
  });

  // Start the ping-pong: main switches to test1 with 0. Control only comes back to main when test1
  // returns; the value of this switch_to() is test1's return value.
  int final_count = test1.switch_to<int>(0);
  std::printf("test1 finished and returned %d to main (dead: %s)\n", final_count,
              test1.dead() ? "yes" : "no");

  // A fiber that returns a value to its parent: nothing runs until main switches to it, and the
  // switch's value becomes its argument.
  cogent::fiber greeter([](std::string who) { return "hello, " + who + "!"; },
                        {.stack_size = 0, .name = "greeter"});
  std::printf("before the switch, '%s' started: %s\n", greeter.name().c_str(),
              greeter.started() ? "yes" : "no");
  std::string greeting = greeter.switch_to<std::string>(std::string("main"));
  std::printf("'%s' returned: %s\n", greeter.name().c_str(), greeting.c_str());

  // Switching to a dead fiber goes to its parent, which here is main itself: the value comes straight back.
  int echoed = greeter.switch_to<int>(42);
  std::printf("switching to the dead greeter came back to main with %d\n", echoed);
  return 0;
}
