// tests/hub/local_test.cpp — fiber_local: a value per fiber, made on first
// access, isolated across tasks and plain fibers, destroyed with its fiber
// (counted by a destructor counter), reset(), a factory, and a local destroyed
// before the fibers that hold values for it.
#include "hub/local.hpp"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "fiber/fiber.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;

int g_made = 0;
int g_destroyed = 0;

// counted counts constructions and destructions.
struct counted {
  int value = 0;
  counted() { ++g_made; }
  explicit counted(int v) : value(v) { ++g_made; }
  counted(const counted& o) : value(o.value) { ++g_made; }
  counted& operator=(const counted&) = default;
  ~counted() { ++g_destroyed; }
};

void reset_counts() {
  g_made = 0;
  g_destroyed = 0;
}

COGENT_TEST_CASE("fiber_local: default-constructed on first access, then kept", doctest::timeout(10)) {
  cogent::fiber_local<int> n;
  CHECK_FALSE(n.has_value());
  CHECK(n.get() == 0);
  CHECK(n.has_value());
  *n = 5;
  cogent::sleep(1ms);
  CHECK(*n == 5);
  n.set(6);
  CHECK(n.get() == 6);
  cogent::fiber_local<std::string> s;
  s->append("abc");
  CHECK(s->size() == 3);
  n.reset();
  CHECK_FALSE(n.has_value());
  CHECK(*n == 0);
}

COGENT_TEST_CASE("fiber_local: each task sees its own value across switches", doctest::timeout(10)) {
  cogent::fiber_local<std::string> id;
  *id = "test-body";
  std::vector<cogent::task<bool>> ts;
  for (int i = 0; i < 10; ++i) {
    ts.push_back(cogent::spawn([&id, i] {
      bool fresh = id->empty();
      *id = "task-" + std::to_string(i);
      for (int k = 0; k < 5; ++k) {
        cogent::sleep(std::chrono::microseconds(100 * ((i + k) % 3)));
        if (*id != "task-" + std::to_string(i)) {
          return false;
        }
      }
      return fresh;
    }));
  }
  for (auto& t : ts) {
    CHECK(t.get());
  }
  CHECK(*id == "test-body");
}

COGENT_TEST_CASE("fiber_local: a task's values are destroyed when it finishes", doctest::timeout(10)) {
  reset_counts();
  {
    cogent::fiber_local<counted> a;
    cogent::fiber_local<counted> b;
    std::vector<cogent::task<void>> ts;
    for (int i = 0; i < 6; ++i) {
      ts.push_back(cogent::spawn([&, i] {
        a->value = i;
        if (i % 2 == 0) {
          b->value = -i;
        }
        cogent::sleep(1ms);
      }));
    }
    cogent::joinall(ts);
    cogent::yield();  // finished fibers are freed once they switched away
    CHECK(g_made == 9);
    CHECK(g_destroyed == 9);
    // A task that never touches the local makes none.
    cogent::spawn([] { cogent::sleep(0ms); }).join();
    CHECK(g_made == 9);
  }
  CHECK(g_destroyed == 9);
}

COGENT_TEST_CASE("fiber_local: values of a killed task are destroyed too", doctest::timeout(10)) {
  reset_counts();
  cogent::fiber_local<counted> c;
  auto t = cogent::spawn([&] {
    c->value = 1;
    cogent::sleep(10s);
  });
  cogent::sleep(1ms);
  CHECK(g_made == 1);
  t.kill();
  cogent::yield();
  CHECK(g_destroyed == 1);
}

COGENT_TEST_CASE("fiber_local: reset destroys only the calling fiber's value", doctest::timeout(10)) {
  reset_counts();
  cogent::fiber_local<counted> c;
  c->value = 1;
  auto t = cogent::spawn([&] {
    c->value = 2;
    cogent::sleep(2ms);
    return c->value;
  });
  cogent::sleep(1ms);
  c.reset();
  CHECK(g_destroyed == 1);
  CHECK(t.get() == 2);
  cogent::yield();
  CHECK(g_destroyed == 2);
  CHECK(c->value == 0);  // a fresh one
  c.reset();
  CHECK(g_destroyed == 3);
  c.reset();  // none: no effect
  CHECK(g_destroyed == 3);
}

COGENT_TEST_CASE("fiber_local: plain fibers have their own values, freed when the fiber finishes",
                 doctest::timeout(10)) {
  reset_counts();
  cogent::fiber_local<counted> c;
  c->value = 10;
  int seen_in_fiber = -1;
  {
    cogent::fiber f([&] {
      seen_in_fiber = c->value;  // fresh: 0
      c->value = 20;
    });
    f.switch_to();
    CHECK(f.dead());
    CHECK(seen_in_fiber == 0);
    CHECK(c->value == 10);
    CHECK(g_made == 2);
    CHECK(g_destroyed == 1);  // freed once it finished, though a handle keeps its block alive
  }
  CHECK(g_destroyed == 1);  // not again with the last handle
  c.reset();
  CHECK(g_destroyed == 2);
}

COGENT_TEST_CASE("fiber_local: a factory makes each fiber's first value", doctest::timeout(10)) {
  int calls = 0;
  cogent::fiber_local<std::string> name([&] {
    ++calls;
    auto t = cogent::current_task();
    return t ? t.name() : std::string("?");
  });
  auto t = cogent::spawn(cogent::spawn_options{"worker"}, [&] { return *name; });
  CHECK(t.get() == "worker");
  CHECK(name->rfind("test: ", 0) == 0);
  CHECK(*name == name.get());
  CHECK(calls == 2);
}

COGENT_TEST_CASE("fiber_local: values outlive a destroyed local until their fiber ends",
                 doctest::timeout(10)) {
  reset_counts();
  cogent::event go;
  auto local = std::make_unique<cogent::fiber_local<counted>>();
  auto t = cogent::spawn([&] {
    (*local)->value = 3;
    go.wait();
  });
  cogent::sleep(1ms);
  local.reset();  // the task still holds a value for it
  CHECK(g_destroyed == 0);
  go.set();
  t.join();
  cogent::yield();
  CHECK(g_destroyed == 1);
}

}  // namespace
