// tests/hub/chaos_review_test.cpp — adversarial review: randomized cancellation storms (fixed seeds,
// printed) across the hub and net: many fibers in random blocking ops while others kill them and
// tiny Timeouts expire around them; then the invariants (nothing lost or doubled, counts restored,
// every task finished, no leak) — plus the small deterministic cases the storms were reduced to.
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "hub/pool.hpp"
#include "hub/queue.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/threadpool.hpp"
#include "hub/timeout.hpp"
#include "net/socket.hpp"
#include "tests/child.hpp"
#include "tests/support.hpp"

namespace {

using namespace std::chrono_literals;
using cogent::clock;

struct chaos_kill {};  // a custom kill exception (not a std::exception: nothing catches it by accident)

struct world {
  std::mt19937 rng;
  cogent::mutex mu;
  cogent::rlock rmu;
  cogent::semaphore sem{3};
  cogent::bounded_semaphore bsem{2};
  cogent::event ev;
  cogent::async_result<int> ar;
  cogent::queue<int> q;         // unbounded
  cogent::queue<int> qb{2};     // bounded
  cogent::lifo_queue<int> lq{2};
  cogent::priority_queue<int> pq{3};
  cogent::channel<int> ch;
  cogent::pool pl{2};
  cogent::group grp;
  cogent::threadpool tp{2};
  int next_item = 1;
  // per container: items whose put() returned, items a get() returned
  std::vector<int> put_ok[5], got_ok[5];
  int in_mu = 0, in_rmu = 0, in_sem = 0, in_bsem = 0, in_pool = 0;
  std::size_t tcp_w = 0, tcp_r = 0;
  int tp_runs = 0;
  std::vector<std::string> errors;
  std::vector<cogent::task<void>> workers;
  bool stop = false;
  // run_detachable() under kills is a use-after-free (the reduced case below): off in the storm,
  // so the storm goes on to the rest.
  bool detachable = std::getenv("CHAOS_DETACHABLE") != nullptr;
  explicit world(unsigned seed) : rng(seed) {}
  int rnd(int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); }
  cogent::timeout_duration tiny() {
    switch (rnd(5)) {
      case 0:
        return 0ns;
      case 1:
        return 1us;
      case 2:
        return 100us;
      case 3:
        return 1ms;
      default:
        return std::nullopt;
    }
  }
};

struct net_side {
  cogent::net::stream_socket& a;  // tcp pair: a writes, b reads
  cogent::net::stream_socket& b;
  cogent::net::listener& l;
};

template <class Q>
void q_put(world& w, Q& q, int which, cogent::timeout_duration t) {
  int v = w.next_item++;
  try {
    q.put(v, t);
    w.put_ok[which].push_back(v);
  } catch (const cogent::queue_full&) {
  }
}
template <class Q>
void q_get(world& w, Q& q, int which, cogent::timeout_duration t) {
  try {
    int v = q.get(t);
    w.got_ok[which].push_back(v);
  } catch (const cogent::queue_empty&) {
  }
}

void hold_a_bit(world& w) {
  switch (w.rnd(3)) {
    case 0:
      cogent::yield();
      break;
    case 1:
      cogent::sleep(std::chrono::microseconds(w.rnd(200)));
      break;
    default:
      break;
  }
}

void one_op(world& w, net_side& s) {
  auto t = w.tiny();
  switch (w.rnd(30)) {
    case 0:
      q_put(w, w.q, 0, t);
      break;
    case 1:
      q_get(w, w.q, 0, t);
      break;
    case 2:
      q_put(w, w.qb, 1, t);
      break;
    case 3:
      q_get(w, w.qb, 1, t);
      break;
    case 4:
      q_put(w, w.lq, 2, t);
      break;
    case 5:
      q_get(w, w.lq, 2, t);
      break;
    case 6:
      q_put(w, w.pq, 3, t);
      break;
    case 7:
      q_get(w, w.pq, 3, t);
      break;
    case 8:
      q_put(w, w.ch, 4, t);
      break;
    case 9:
      q_get(w, w.ch, 4, t);
      break;
    case 10:
      if (w.mu.acquire(t)) {
        struct rel {
          world& w;
          ~rel() {
            --w.in_mu;
            w.mu.release();
          }
        } r{w};
        if (++w.in_mu != 1) {
          w.errors.push_back("two owners of mu");
        }
        hold_a_bit(w);
      }
      break;
    case 11:
      if (w.rmu.acquire(t)) {
        struct rel {
          world& w;
          ~rel() {
            --w.in_rmu;
            w.rmu.release();
          }
        } r{w};
        if (++w.in_rmu != 1) {
          w.errors.push_back("two owners of rmu");
        }
        if (w.rmu.acquire(w.tiny())) {
          w.rmu.release();
        } else {
          w.errors.push_back("rlock re-entry failed");
        }
        hold_a_bit(w);
      }
      break;
    case 12:
      if (w.sem.acquire(t)) {
        struct rel {
          world& w;
          ~rel() {
            --w.in_sem;
            w.sem.release();
          }
        } r{w};
        if (++w.in_sem > 3) {
          w.errors.push_back("semaphore over-granted");
        }
        hold_a_bit(w);
      }
      break;
    case 13:
      if (w.bsem.acquire(t)) {
        struct rel {
          world& w;
          ~rel() {
            --w.in_bsem;
            w.bsem.release();
          }
        } r{w};
        if (++w.in_bsem > 2) {
          w.errors.push_back("bounded semaphore over-granted");
        }
        hold_a_bit(w);
      }
      break;
    case 14:
      (void)w.ev.wait(t);
      break;
    case 15:
      try {
        (void)w.ar.get(t);
      } catch (const cogent::timeout_error& e) {
        if (e.source() != nullptr) {
          throw;
        }
      }
      break;
    case 16: {
      // pool spawn: never more than capacity bodies at once
      auto m = w.pl.spawn([&w] {
        if (++w.in_pool > 2) {
          w.errors.push_back("pool ran more members than its size");
        }
        struct dec {
          world& w;
          ~dec() { --w.in_pool; }
        } d{w};
        cogent::sleep(std::chrono::microseconds(w.rnd(300)));
      });
      if (w.rnd(2) == 0) {
        (void)m.join(t);
      }
      break;
    }
    case 17:
      if (w.rnd(2) == 0) {
        w.grp.spawn([&w] { cogent::sleep(std::chrono::microseconds(w.rnd(300))); });
      } else {
        (void)w.grp.join(t);
      }
      break;
    case 18: {
      auto& other = w.workers[static_cast<std::size_t>(w.rnd(static_cast<int>(w.workers.size())))];
      if (other && !(other == cogent::current_task())) {
        if (w.rnd(2) == 0) {
          (void)other.join(t);
        } else {
          try {
            other.get(t);
          } catch (const cogent::task_killed&) {
          } catch (const chaos_kill&) {
          } catch (const cogent::timeout_error& e) {
            if (e.source() != nullptr) {
              throw;
            }
          }
        }
      }
      break;
    }
    case 19:
      cogent::sleep(std::chrono::microseconds(w.rnd(300)));
      break;
    case 20:
      if (!w.detachable || w.rnd(2) == 0) {
        int r = w.tp.run([] {
          ::usleep(50);
          return 1;
        });
        w.tp_runs += r;
      } else {
        int r = w.tp.run_detachable([] {
          ::usleep(50);
          return 1;
        });
        w.tp_runs += r;
      }
      break;
    case 21: {
      char c[3] = {'a', 'b', 'c'};
      try {
        w.tcp_w += s.a.write_some(c, 1 + static_cast<std::size_t>(w.rnd(3)), t);
      } catch (const std::system_error& e) {
        if (e.code() != std::errc::timed_out) {
          w.errors.push_back(std::string("write_some: ") + e.what());
        }
      }
      break;
    }
    case 22: {
      char buf[8];
      try {
        w.tcp_r += s.b.read_some(buf, sizeof buf, t);
      } catch (const std::system_error& e) {
        if (e.code() != std::errc::timed_out) {
          w.errors.push_back(std::string("read_some: ") + e.what());
        }
      }
      break;
    }
    case 24:
      try {
        (void)w.q.peek(t);
      } catch (const cogent::queue_empty&) {
      }
      break;
    case 25:
      (void)w.pl.wait_available(t);
      break;
    case 26: {
      std::vector<cogent::task_base> some;
      for (int i = 0; i < 3; ++i) {
        auto& o = w.workers[static_cast<std::size_t>(w.rnd(static_cast<int>(w.workers.size())))];
        if (o && !(o == cogent::current_task())) {
          some.push_back(o);
        }
      }
      if (w.rnd(2) == 0) {
        (void)cogent::wait_any(some, t);
      } else {
        (void)cogent::joinall(some, t);
      }
      break;
    }
    case 27: {
      auto& o = w.workers[static_cast<std::size_t>(w.rnd(static_cast<int>(w.workers.size())))];
      if (o && !(o == cogent::current_task())) {
        o.kill(nullptr, w.rnd(2) == 0, t);
      }
      break;
    }
    case 28: try {
      std::vector<int> items{1, 2, 3, 4};
      int sum = 0;
      if (w.rnd(2) == 0) {
        for (int v : w.pl.imap_unordered(
                 [](int x) {
                   cogent::sleep(std::chrono::microseconds(x * 20));
                   return x;
                 },
                 items)) {
          sum += v;
        }
      } else {
        for (int v : w.grp.map(
                 [](int x) {
                   cogent::sleep(std::chrono::microseconds(x * 20));
                   return x;
                 },
                 items)) {
          sum += v;
        }
      }
      if (sum != 10) {
        w.errors.push_back("map/imap_unordered sum " + std::to_string(sum));
      }
      break;
    } catch (const cogent::task_killed&) {  // the killer's pool/group kill reached a member
      break;
    }
    case 29:
      if (w.mu.acquire(t)) {
        // release from a different fiber than the acquirer is misuse; just hold across a timeout scope
        struct rel {
          world& w;
          ~rel() {
            --w.in_mu;
            w.mu.release();
          }
        } r{w};
        if (++w.in_mu != 1) {
          w.errors.push_back("two owners of mu");
        }
        (void)cogent::try_with_timeout(w.tiny(), [&] { cogent::sleep(std::chrono::microseconds(w.rnd(200))); });
      }
      break;
    case 23: {
      try {
        if (w.rnd(2) == 0) {
          auto c = cogent::net::stream_socket::connect(cogent::net::address::ipv4_loopback(s.l.port()), t);
          (void)c;
        } else {
          auto c = s.l.accept(t);
          (void)c;
        }
      } catch (const std::system_error& e) {
        if (e.code() != std::errc::timed_out) {
          w.errors.push_back(std::string("connect/accept: ") + e.what());
        }
      }
      break;
    }
  }
}

void worker(world& w, net_side& s) {
  while (!w.stop) {
    try {
      switch (w.rnd(3)) {
        case 0: {
          cogent::timeout scope(w.tiny());
          for (int i = 0, n = 1 + w.rnd(3); i < n && !w.stop; ++i) {
            one_op(w, s);
          }
          break;
        }
        case 1:
          (void)cogent::try_with_timeout(w.tiny(), [&] { one_op(w, s); });
          break;
        default:
          one_op(w, s);
          break;
      }
    } catch (const cogent::timeout_error&) {
    } catch (const std::exception& e) {
      w.errors.push_back(std::string("worker: ") + e.what());
    }
  }
}

void run_round(unsigned seed) {
  std::printf("chaos seed %u\n", seed);
  std::fflush(stdout);
  cogent::test::error_reports reports;
  world w(seed);
  auto l = cogent::net::listener::bind(cogent::net::address::ipv4_loopback(0));
  auto a = cogent::net::stream_socket::connect(cogent::net::address::ipv4_loopback(l.port()), 1s);
  auto b = l.accept(1s);
  net_side socks{a, b, l};
  const int n = 14;
  auto start = [&] { return cogent::spawn([&w, &socks] { worker(w, socks); }); };
  for (int i = 0; i < n; ++i) {
    w.workers.push_back(start());
  }
  auto killer = cogent::spawn([&] {
    while (!w.stop) {
      switch (w.rnd(8)) {
        case 0:
          cogent::yield();
          break;
        case 1:
          cogent::sleep(std::chrono::microseconds(w.rnd(200)));
          break;
        default:
          break;
      }
      auto& victim = w.workers[static_cast<std::size_t>(w.rnd(n))];
      switch (w.rnd(10)) {
        case 0:
        case 1:
          victim.kill(nullptr, false);
          break;
        case 2:
          victim.kill(nullptr, true, 1ms);
          break;
        case 3:
          victim.kill(std::make_exception_ptr(chaos_kill{}), false);
          break;
        case 4: {
          std::vector<cogent::task_base> some;
          for (int i = 0; i < 3; ++i) {
            some.push_back(w.workers[static_cast<std::size_t>(w.rnd(n))]);
          }
          cogent::killall(some, nullptr, w.rnd(2) == 0, 1ms);
          break;
        }
        case 5:
          if (w.rnd(4) == 0) {
            w.pl.kill(nullptr, w.rnd(2) == 0, 1ms);
          } else if (w.rnd(4) == 0) {
            w.grp.kill(nullptr, w.rnd(2) == 0, 1ms);
          }
          break;
        case 6:
          w.ev.set();
          if (w.rnd(2) == 0) {
            cogent::yield();
          }
          w.ev.clear();
          break;
        case 7:
          if (w.rnd(8) == 0) {
            w.ar.set(7);
          }
          break;
        default:
          break;
      }
      for (auto& t : w.workers) {
        if (t.ready() && !w.stop) {
          t = start();
        }
      }
    }
  });
  cogent::sleep(120ms);
  w.stop = true;
  killer.join();
  std::vector<cogent::task_base> all(w.workers.begin(), w.workers.end());
  cogent::killall(all, nullptr, true, 2s);
  for (auto& t : w.workers) {
    CHECK_MESSAGE(t.ready(), "seed ", seed, ": a worker did not finish");
  }
  CHECK_MESSAGE(w.pl.join(2s), "seed ", seed, ": pool did not empty");
  CHECK_MESSAGE(w.grp.join(2s), "seed ", seed, ": group did not empty");
  // Drain everything.
  auto drain = [&](auto& q, int which) {
    while (!q.empty()) {
      w.got_ok[which].push_back(q.get_nowait());
    }
  };
  drain(w.q, 0);
  drain(w.qb, 1);
  drain(w.lq, 2);
  drain(w.pq, 3);
  for (;;) {
    char buf[256];
    ssize_t r = ::recv(b.fd(), buf, sizeof buf, MSG_DONTWAIT);
    if (r <= 0) {
      break;
    }
    w.tcp_r += static_cast<std::size_t>(r);
  }
  const char* names[5] = {"queue", "bounded queue", "lifo_queue", "priority_queue", "channel"};
  for (int i = 0; i < 5; ++i) {
    std::sort(w.put_ok[i].begin(), w.put_ok[i].end());
    std::sort(w.got_ok[i].begin(), w.got_ok[i].end());
    CHECK_MESSAGE(w.put_ok[i] == w.got_ok[i], "seed ", seed, ": ", names[i], " items lost or duplicated (put ",
                  w.put_ok[i].size(), ", got ", w.got_ok[i].size(), ")");
  }
  CHECK_MESSAGE(w.tcp_w == w.tcp_r, "seed ", seed, ": tcp bytes written ", w.tcp_w, " read ", w.tcp_r);
  // Counts restored: take everything back, with a timeout.
  CHECK_MESSAGE(w.mu.acquire(100ms), "seed ", seed, ": mu not free");
  if (w.mu.owned()) {
    w.mu.release();
  }
  CHECK_MESSAGE(w.rmu.acquire(100ms), "seed ", seed, ": rmu not free");
  if (w.rmu.owned()) {
    CHECK(w.rmu.count() == 1);
    w.rmu.release();
  }
  int got = 0;
  while (got < 4 && w.sem.acquire(got < 3 ? 100ms : 0ms)) {
    ++got;
  }
  CHECK_MESSAGE(got == 3, "seed ", seed, ": semaphore gave ", got, " units (3 expected)");
  for (int i = 0; i < got; ++i) {
    w.sem.release();
  }
  got = 0;
  while (got < 3 && w.bsem.acquire(got < 2 ? 100ms : 0ms)) {
    ++got;
  }
  CHECK_MESSAGE(got == 2, "seed ", seed, ": bounded semaphore gave ", got, " units (2 expected)");
  for (int i = 0; i < got; ++i) {
    w.bsem.release();
  }
  CHECK(w.q.getters() == 0);
  CHECK(w.q.putters() == 0);
  CHECK(w.qb.putters() == 0);
  CHECK(w.ch.getters() == 0);
  CHECK(w.ch.putters() == 0);
  CHECK(w.sem.waiters() == 0);
  CHECK(w.mu.waiters() == 0);
  CHECK(w.in_pool == 0);
  for (auto& e : w.errors) {
    INFO("seed ", seed);
    CHECK_MESSAGE(false, e);
  }
  for (auto& e : reports.seen) {
    if (e == "unknown exception" && std::getenv("CHAOS_STRICT_CUSTOM") == nullptr) {
      // A chaos_kill report. Some are right: pool/group calls (map, imap, join with raise_error)
      // rethrow a member's custom-kill error, and a worker that fails with it has an error of its
      // own (not its kill's outcome), reported if nobody joins it. Which of them are right is
      // timing-dependent here; the reduced cases below and session4_review pin the rules down.
      // CHAOS_STRICT_CUSTOM=1 counts them all as failures.
      continue;
    }
    INFO("seed ", seed);
    CHECK_MESSAGE(false, "unjoined error reported: ", e);
  }
}

COGENT_TEST_CASE("chaos: random kills and tiny Timeouts over every blocking primitive keep every invariant",
                 doctest::timeout(60)) {
  ::alarm(90);  // a hang kills the binary rather than the suite
  unsigned lo = 1, hi = 6;
  if (const char* e = std::getenv("CHAOS_SEEDS")) {
    hi = static_cast<unsigned>(std::atoi(e));
  }
  if (const char* e = std::getenv("CHAOS_FIRST")) {
    lo = static_cast<unsigned>(std::atoi(e));
  }
  for (unsigned seed = lo; seed <= hi; ++seed) {
    run_round(seed);
  }
  ::alarm(0);
}

}  // namespace

namespace {

// run_detachable(): a kill lands while fn runs on the worker; the fiber flips the job to abandoned
// (submit_and_wait) and its exception unwinds into run_detachable's catch, which then reads
// j->phase — but from the moment of that flip the worker owns the job and deletes it as soon as fn
// returns (threadpool.cpp, worker_main's dispose): a fn that returns during the unwinding makes
// the catch read (and, if the freed word no longer reads `abandoned`, delete again) a freed job.
// The storm above hit it in its first round (ASan: heap-use-after-free in run_detachable,
// threadpool.hpp, freed by the worker). Here the worker's fn returns a swept few microseconds
// after the kill, in a child (its own thread and hub, bounded by alarm).
COGENT_TEST_CASE("chaos (reduced): run_detachable killed while its job finishes never touches the freed job",
                 doctest::timeout(60)) {
  int code = cogent::test::exit_code_in_child(
      [] {
        int rc = 0;
        std::thread th([&rc] {  // a thread of its own: the forked thread's hub is the parent's
          auto body = [] {
            cogent::threadpool tp(2);
            std::mt19937 rng(7);
            std::printf("chaos (reduced) seed 7\n");
            std::vector<cogent::task<void>> fibers(8);
            auto start = [&tp](unsigned us) {
              return cogent::spawn([&tp, us] {
                for (;;) {
                  (void)tp.run_detachable([us] {
                    ::usleep(us);
                    return 1;
                  });
                }
              });
            };
            auto until = clock::now() + 1500ms;
            while (clock::now() < until) {
              for (auto& f : fibers) {
                if (!f || f.ready()) {
                  f = start(rng() % 100);
                }
              }
              cogent::sleep(std::chrono::microseconds(rng() % 100));
              fibers[rng() % fibers.size()].kill(nullptr, false);
            }
            std::vector<cogent::task_base> all(fibers.begin(), fibers.end());
            cogent::killall(all, nullptr, true, 2s);
            while (tp.pending() != 0) {
              cogent::sleep(1ms);
            }
          };
          auto t = cogent::spawn(body);
          t.join();
          rc = t.successful() ? 0 : 5;
        });
        th.join();
        return rc;
      },
      50);
  CHECK_MESSAGE(code == 0, "child ended with ", code, " (ASan: heap-use-after-free of the abandoned job)");
}

// A task killed with a custom exception (kill(e)) that ends with that very exception is the kill's
// outcome: "The kill's outcome is not reported as an unjoined error" (task.hpp). But task.cpp's
// run() takes a kill still pending when the body ends to mean "the kill never landed" and clears
// kill_requested — so when the custom kill DID land and a second kill arrived while the task was
// unwinding through a wait that defers interrupts (an imap_unordered stream's stop(), waiting for
// a member that takes a moment to die), the custom kill's own exception is reported as an
// unjoined failure. The storm above saw it as "unjoined error reported: unknown exception".
COGENT_TEST_CASE("chaos (reduced): a custom kill that landed is not reported as unjoined when a second kill "
                 "arrives during the unwinding",
                 doctest::timeout(10)) {
  cogent::test::error_reports reports;
  cogent::pool p(1);
  std::vector<int> items{1};
  bool in_loop = false;
  auto t = cogent::spawn([&] {
    for (int v : p.imap_unordered(
             [](int x) {
               try {
                 cogent::sleep(10s);
               } catch (const cogent::fiber_exit&) {
                 cogent::sleep(5ms);  // a member that takes a moment to clean up
                 throw;
               }
               return x;
             },
             items)) {
      (void)v;
    }
    in_loop = true;
  });
  cogent::sleep(1ms);  // t waits in the stream's next(), its member sleeps
  t.kill(std::make_exception_ptr(chaos_kill{}), false);
  cogent::sleep(1ms);  // t unwinds: ~stream -> stop() waits for the member's cleanup
  t.kill(nullptr, false);  // a second kill meanwhile (stop() defers it)
  for (int i = 0; i < 1000 && !t.ready(); ++i) {
    cogent::sleep(1ms);  // not join(): a joiner would observe the error (nobody does, here)
  }
  REQUIRE(t.ready());
  CHECK(!in_loop);
  CHECK_FALSE(t.successful());
  bool custom = false;
  try {
    std::rethrow_exception(t.exception());
  } catch (const chaos_kill&) {
    custom = true;
  } catch (...) {
  }
  CHECK_MESSAGE(custom, "the task ended with its custom kill");
  CHECK_MESSAGE(reports.seen.empty(), "the custom kill's outcome was reported as unjoined: ",
                reports.seen.empty() ? std::string() : reports.seen.front());
}

}  // namespace
