// examples/04_producer_consumer.cpp — producers and consumers on a joinable queue.
//
// What it shows: the study notes' producer–consumer retold with cogent. Three
// producer tasks cook dishes and put them on a bounded joinable_queue; two
// consumer tasks take them off and eat them, calling task_done() for each.
// main waits with join() until every dish put has been eaten, then shuts the
// consumers down with one sentinel (std::nullopt) each. Everything runs on one
// thread: the tasks interleave whenever one of them sleeps or waits on the
// queue (a full queue blocks producers, an empty one blocks consumers).
//
// How to run it:
//   meson setup build && ninja -C build
//   ./build/examples/04_producer_consumer
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "hub/hub.hpp"

using namespace std::chrono_literals;

// A dish, or std::nullopt: the sentinel that tells a consumer to stop.
using dish = std::optional<std::string>;

int main() {
  // The queue holds at most 4 dishes: a fast producer waits for the eaters.
  cogent::joinable_queue<dish> table(4);

  // A producer cooks `count` dishes of one kind. Cooking takes a little while
  // (a sleep: the hub runs the other tasks meanwhile); put() blocks while the
  // table is full.
  auto producer = [&table](std::string cook, std::string food, int count, std::chrono::milliseconds pace) {
    for (int i = 1; i <= count; ++i) {
      cogent::sleep(pace);
      std::string d = food + " #" + std::to_string(i);
      table.put(d);
      std::printf("%-6s cooked %-12s (on the table: %zu)\n", cook.c_str(), d.c_str(), table.size());
    }
  };

  // A consumer eats until it gets the sentinel. task_done() marks each dish
  // as finished, so join() knows when everything put has been eaten; the
  // sentinel is counted as well (it was put too).
  auto consumer = [&table](std::string name) {
    int eaten = 0;
    for (;;) {
      dish d = table.get();
      if (!d) {
        table.task_done();
        std::printf("%-6s goes home after %d dishes\n", name.c_str(), eaten);
        return eaten;
      }
      cogent::sleep(15ms);  // eating
      ++eaten;
      std::printf("%-6s ate    %s\n", name.c_str(), d->c_str());
      table.task_done();
    }
  };

  // Step 1: start the consumers first; they block on the empty table.
  std::vector<cogent::task<int>> consumers = {
      cogent::spawn(cogent::spawn_options{"alex"}, consumer, std::string("alex")),
      cogent::spawn(cogent::spawn_options{"egon"}, consumer, std::string("egon")),
  };

  // Step 2: start three producers at different paces: 4 + 3 + 3 dishes.
  const int dishes = 10;
  std::vector<cogent::task<void>> producers = {
      cogent::spawn(producer, std::string("chef1"), std::string("bun"), 4, 5ms),
      cogent::spawn(producer, std::string("chef2"), std::string("noodles"), 3, 12ms),
      cogent::spawn(producer, std::string("chef3"), std::string("dumplings"), 3, 8ms),
  };

  // Step 3: wait until the producers are done, then until every dish they put
  // has been eaten (joinable_queue::join returns when task_done() balanced put()).
  cogent::joinall(producers);
  table.join();
  std::printf("main: all %d dishes eaten\n", dishes);

  // Step 4: shut the consumers down: one sentinel each, then collect their counts.
  for (std::size_t i = 0; i < consumers.size(); ++i) {
    table.put(std::nullopt);
  }
  int total = 0;
  for (auto& c : consumers) {
    total += c.get();
  }
  std::printf("main: consumers ate %d dishes in all; unfinished: %zu\n", total, table.unfinished_tasks());
  return total == dishes ? 0 : 1;
}
