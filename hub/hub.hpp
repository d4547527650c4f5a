// hub/hub.hpp — the umbrella header: include this to use cogent's hub layer.
//
// A short tour (gevent names in brackets):
//   fiber/fiber.hpp   cogent::fiber — a raw, manually switched fiber [greenlet]
//   hub/core.hpp      cogent::hub, sleep(), yield(), wait(), timeout_duration [gevent.hub]
//   hub/task.hpp      spawn(), spawn_later(), task<T>: join/get/kill/link, joinall(), killall(),
//                     iwait, wait_any() [Greenlet, gevent.joinall, gevent.killall]
//   hub/timeout.hpp   cogent::timeout scope, timeout_error, with_timeout() [gevent.Timeout]
//   hub/sync.hpp      event, async_result<T>, lock (mutex), rlock, semaphore,
//                     bounded_semaphore [gevent.event, gevent.lock]
//   hub/queue.hpp     queue, lifo_queue, priority_queue, joinable_queue, channel,
//                     queue_full/queue_empty [gevent.queue]
//   hub/local.hpp     fiber_local<T> [gevent.local]
//   hub/wait.hpp      wait(objects, t, count) over tasks, events, async results [gevent.wait]
//   hub/pool.hpp      pools and groups of tasks [gevent.pool], when present
//   hub/threadpool.hpp  running blocking work on OS threads [gevent.threadpool], when present
//
// Every blocking call parks the calling fiber and lets the thread's hub run
// others; each takes an optional timeout and raises a pending kill/Timeout.
//
// Example:
//   #include "hub/hub.hpp"
//   using namespace std::chrono_literals;
//   int main() {
//     cogent::queue<int> q;
//     auto producer = cogent::spawn([&] { for (int i = 0; i < 3; ++i) { q.put(i); cogent::sleep(1ms); } });
//     for (int i = 0; i < 3; ++i) { std::printf("%d\n", q.get()); }
//     producer.join();
//   }
#pragma once
#pragma GCC visibility push(default)

#include "fiber/fiber.hpp"
#include "hub/core.hpp"
#include "hub/local.hpp"
#include "hub/queue.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "hub/wait.hpp"

#if __has_include("hub/pool.hpp")
#include "hub/pool.hpp"
#endif
#if __has_include("hub/threadpool.hpp")
#include "hub/threadpool.hpp"
#endif

#pragma GCC visibility pop
