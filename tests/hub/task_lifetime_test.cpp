// tests/hub/task_lifetime_test.cpp — the lifetime of a task's control block
// (a task is its fiber): its self-reference, handles that outlive the task,
// its thread or the hub, and what goes when it finishes (its function and
// arguments, its fiber_local values).
#include "hub/local.hpp"
#include "hub/task.hpp"

#include <sys/resource.h>

#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "tests/child.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;

// second_copy_throws is an argument that can be copied once (into the
// spawn's tuple) but not twice (into the task's control block: it has no move).
struct second_copy_throws {
  int generation = 0;
  second_copy_throws() = default;
  second_copy_throws(const second_copy_throws& o) : generation(o.generation + 1) {
    if (generation >= 2) {
      throw std::runtime_error("copy");
    }
  }
};

COGENT_TEST_CASE("a spawn whose arguments cannot be moved into the task leaves the spawner's references alone",
                 doctest::timeout(10)) {
  // The task's control block is made (naming the spawner as its parent) before its
  // function and arguments are moved in: if that throws, the parent reference goes too.
  cogent::detail::fiber_impl* self = cogent::detail::current_impl();
  std::uint32_t before = self->refs;
  second_copy_throws arg;
  CHECK_THROWS_AS(cogent::spawn([](const second_copy_throws&) {}, arg), std::runtime_error);
  CHECK(self->refs == before);
}

COGENT_TEST_CASE("a fiber's fiber_local value whose destructor switches does not eat the fiber's result",
                 doctest::timeout(10)) {
  // Values go once the fiber has finished, inside the switch that delivers its
  // result to its parent: a destructor that unwinds another (suspended) fiber
  // switches in the middle of it.
  cogent::fiber_local<cogent::fiber> held;
  cogent::fiber back;  // b's way back to its parent (no handle on b's own stack)
  cogent::fiber a([&] {
    cogent::fiber b([&] { back.switch_to(); });
    back = cogent::fiber::current();
    b.switch_to();  // b is suspended; its only handle goes into a's local
    back = {};
    held.set(std::move(b));
    return 42;
  });
  CHECK(a.switch_to<int>() == 42);
  cogent::fiber c([&]() -> int {
    cogent::fiber d([&] { back.switch_to(); });
    back = cogent::fiber::current();
    d.switch_to();
    back = {};
    held.set(std::move(d));
    throw std::runtime_error("from c");
  });
  CHECK_THROWS_WITH_AS(c.switch_to(), "from c", std::runtime_error);
}

// A finished task's control block (kept by a handle) must not hold the hub
// fiber: ~hub could not unwind it, and dropping the handle after the thread
// ended would try to kill that hub fiber from another thread.
TEST_CASE("a finished task's handle dropped after its thread ended" * doctest::timeout(20)) {
  // The handle outlives the thread (and its hub): dropping it then must not
  // reach into that thread's fibers.
  cogent::test::child_result r = cogent::test::run_in_child([] {
    cogent::task<int> kept;
    std::thread([&] {
      kept = cogent::spawn([] { return 5; });
      kept.join();
    }).join();
    std::fprintf(stderr, "value=%d\n", kept.get());
    kept = {};
    std::fprintf(stderr, "dropped\n");
  });
  INFO("child stderr: " << r.err);
  CHECK(r.exited(0));
  CHECK(r.err.find("value=5") != std::string::npos);
  CHECK(r.err.find("dropped") != std::string::npos);
  CHECK(r.err.find("cogent:") == std::string::npos);
}

COGENT_TEST_CASE("handles dropped by links, by the task itself, and fiber handles kept after them",
                 doctest::timeout(10)) {
  // A link clears the container holding the only handle (finish() keeps the task alive).
  std::vector<cogent::task_base> box;
  box.push_back(cogent::spawn([] { cogent::sleep(1ms); }));
  box.front().link([&](const cogent::task_base& t) {
    box.clear();
    CHECK(t.ready());
  });
  cogent::sleep(5ms);
  CHECK(box.empty());
  // The only handle lives in the task's own function: the cycle goes when it finishes.
  auto self_box = std::make_shared<cogent::task<void>>();
  std::weak_ptr<cogent::task<void>> self_w = self_box;
  *self_box = cogent::spawn([self_box] { cogent::sleep(1ms); });
  self_box.reset();
  cogent::sleep(5ms);
  CHECK(self_w.expired());
  // A fiber handle to the task's fiber, kept after every task handle is gone.
  cogent::fiber kept;
  {
    auto t = cogent::spawn([&] {
      kept = cogent::fiber::current();
      return 3;
    });
    CHECK(t.get() == 3);
  }
  cogent::sleep(1ms);
  CHECK(kept.dead());
  kept = {};
  // Killed on spawn_later's timer, the handle dropped at once.
  {
    auto later = cogent::spawn_later(50ms, [] {});
    later.kill();
    CHECK(later.killed());
  }
  CHECK(cogent::hub::current().timer_count() == 0);
  // A task dropping the last handle to itself while running, and current_task() in it.
  auto* heap = new cogent::task_base;
  *heap = cogent::spawn([&] {
    delete heap;
    cogent::sleep(1ms);
    CHECK(cogent::current_task());
    CHECK(cogent::current_task().name().rfind("task-", 0) == 0);
  });
  cogent::sleep(5ms);
  // killall of live_tasks() from inside a task, itself included.
  auto killer = cogent::spawn([] {
    for (int i = 0; i < 3; ++i) {
      cogent::spawn([] { cogent::sleep(10s); });
    }
    cogent::killall(cogent::live_tasks(), nullptr, false);
  });
  killer.join();
  CHECK(killer.killed());
  cogent::sleep(1ms);
  // wait_any whose winner's link drops the loser's only handle.
  std::vector<cogent::task_base> ts{cogent::spawn([] { cogent::sleep(1ms); }),
                                    cogent::spawn([] { cogent::sleep(10s); })};
  ts[0].link([&](const cogent::task_base&) { ts[1].kill(nullptr, false); });
  CHECK(cogent::wait_any(ts) == ts[0]);
  ts.clear();
  cogent::sleep(1ms);
}

COGENT_TEST_CASE("a task's fiber_local values go once it finished, its handle still held", doctest::timeout(10)) {
  struct probe {
    int* gone = nullptr;
    ~probe() {
      if (gone != nullptr) {
        ++*gone;
      }
    }
  };
  cogent::fiber_local<probe> local;
  int gone = 0;
  auto t = cogent::spawn([&] { local->gone = &gone; });
  t.join();
  cogent::sleep(0ms);
  CHECK(gone == 1);
  CHECK(t.successful());
}

// tl_kept is made before the thread's hub, so it is destroyed after it.
thread_local cogent::task<int> tl_kept;

TEST_CASE("a finished task's handle dropped at thread exit, after the hub" * doctest::timeout(20)) {
  cogent::test::child_result r = cogent::test::run_in_child([] {
    std::thread([] {
      CHECK_FALSE(tl_kept);  // made now, before the hub
      tl_kept = cogent::spawn([] { return 5; });
      std::fprintf(stderr, "value=%d\n", tl_kept.get());
    }).join();
    std::fprintf(stderr, "thread ended\n");
  });
  INFO("child stderr: " << r.err);
  CHECK(r.exited(0));
  CHECK(r.err.find("value=5") != std::string::npos);
  CHECK(r.err.find("thread ended") != std::string::npos);
  CHECK(r.err.find("cogent:") == std::string::npos);
  CHECK(r.err.find("Sanitizer") == std::string::npos);
}

}  // namespace

#if !defined(__SANITIZE_ADDRESS__)  // ASan reserves terabytes of shadow: an address-space limit breaks it
// Killed right after spawn (queued in the hub), then its stack cannot be mapped when
// the hub gets to it: the task must still go (with its function) once nobody holds it.
TEST_CASE("a task killed while queued whose stack cannot be mapped is freed" * doctest::timeout(20)) {
  cogent::test::child_result r = cogent::test::run_in_child([] {
    std::thread t([] {
      cogent::hub::current();
      cogent::yield();
      cogent::test::limit_address_space(256 * 1024);
      auto body = std::make_shared<int>(1);
      std::weak_ptr<int> body_w = body;
      {
        auto big = cogent::spawn(cogent::spawn_options{"big", std::size_t{1} << 30},
                                 [b = std::move(body)] { return *b; });
        big.kill();
      }
      cogent::yield();
      cogent::yield();
      std::fprintf(stderr, "freed=%d live=%zu\n", body_w.expired() ? 1 : 0, cogent::active_count());
    });
    t.join();
  });
  INFO("child stderr: " << r.err);
  REQUIRE_FALSE(r.exited(cogent::test::child_setup_failed));
  CHECK(r.exited(0));
  CHECK(r.err.find("freed=1 live=0") != std::string::npos);
}
#endif

COGENT_TEST_CASE("a kill that arrives as the task finishes does not go off in its function's destructor",
                 doctest::timeout(10)) {
  // An interrupt is queued on the task while it runs (as when a kill comes in
  // while an IO op completes anyway) and the task then finishes without
  // blocking: the kill is moot. The destructor of what it captured (released
  // when it finishes, on its stack) and a link both block: neither may raise it.
  struct blocks_on_destroy {
    bool armed = true;
    blocks_on_destroy() = default;
    blocks_on_destroy(blocks_on_destroy&& o) noexcept : armed(std::exchange(o.armed, false)) {}
    ~blocks_on_destroy() {
      if (armed) {
        cogent::sleep(1ms);  // would raise fiber_exit in a noexcept destructor: terminate
      }
    }
  };
  int links = 0;
  auto victim = cogent::spawn([b = blocks_on_destroy{}] {
    (void)b;
    cogent::hub::current().interrupt(cogent::detail::current_impl(),
                                     std::make_exception_ptr(cogent::fiber_exit{}));
    return 7;  // finishes without blocking again
  });
  victim.link([&](const cogent::task_base&) {
    cogent::sleep(1ms);
    ++links;
  });
  CHECK(victim.get(2s) == 7);
  cogent::sleep(10ms);  // the link and the destructor finish
  CHECK(links == 1);
}
