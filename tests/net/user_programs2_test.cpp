// tests/net/user_programs2_test.cpp — more small programs a gevent user would write, ported to cogent
// with only the public API (README.md, examples/, fiber/fiber.hpp, hub/*.hpp, net/*.hpp): a topic
// pub/sub broker with bounded per-subscriber queues, a semaphore-guarded client connection pool, a
// token-bucket rate limiter, a proxy with a per-request with_timeout, pool.map over thread-pool work,
// fiber_local request ids, async_result fan-in, event-driven shutdown, a UDP heartbeat monitor, a
// line-protocol KV server on buffered_reader, spawn_later retries with backoff, happy-eyeballs with
// wait_any, a priority job scheduler.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "hub/hub.hpp"
#include "net/net.hpp"
#include "tests/net/net_support.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::net::address;
using cogent::net::buffered_reader;
using cogent::net::stream_server;
using cogent::net::stream_socket;

namespace {

struct server_errors {
  std::vector<std::string> seen;
  cogent::net::server_options opts() {
    cogent::net::server_options o;
    o.on_error = [this](const address&, std::exception_ptr e) { seen.push_back(cogent::describe_exception(e)); };
    return o;
  }
  void dump() {
    for (auto& e : seen) {
      MESSAGE("server error: " << e);
    }
  }
};

double secs_since(cogent::clock::time_point t0) {
  return std::chrono::duration<double>(cogent::clock::now() - t0).count();
}

std::string strip(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) {
    s.pop_back();
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------
// (1) pub/sub broker over TCP: "SUB topic\n" makes the connection a subscriber; "PUB topic msg\n"
// publishes. Each subscriber has a bounded queue; a subscriber whose queue is full is dropped
// (its socket closed from the publisher's fiber: the README's way to drop a client).

struct broker {
  struct sub {
    std::string topic;
    cogent::queue<std::string> out{4};
    stream_socket* sock = nullptr;  // null once its handler has ended
    bool dropped = false;
  };
  std::multimap<std::string, std::shared_ptr<sub>> subs;
  int drops = 0;
  int delivered = 0;

  // publish() never iterates `subs` across a switch: socket close() may switch (unlike gevent's), and
  // the handlers it wakes erase themselves from `subs` meanwhile.
  void publish(const std::string& topic, const std::string& msg) {
    std::vector<std::shared_ptr<sub>> victims;
    auto [b, e] = subs.equal_range(topic);
    for (auto it = b; it != e; ++it) {
      const std::shared_ptr<sub>& s = it->second;
      if (s->dropped) {
        continue;
      }
      try {
        s->out.put_nowait(msg);
        ++delivered;
      } catch (const cogent::queue_full&) {
        s->dropped = true;
        ++drops;
        victims.push_back(s);
      }
    }
    for (auto& v : victims) {
      if (v->sock != nullptr) {
        v->sock->close();  // its handler's pending send raises socket_closed_error
      }
    }
  }

  void handle(stream_socket& s, const address&) {
    buffered_reader in(s);
    std::string first = strip(in.read_line());
    if (first.rfind("SUB ", 0) == 0) {
      auto me = std::make_shared<sub>();
      me->topic = first.substr(4);
      me->sock = &s;
      s.set_send_buffer_size(4096);  // so a subscriber that does not read backs up quickly
      auto it = subs.emplace(me->topic, me);
      struct unsub {
        broker& b;
        std::multimap<std::string, std::shared_ptr<sub>>::iterator it;
        ~unsub() {
          it->second->sock = nullptr;
          b.subs.erase(it);
        }
      } guard{*this, it};
      s.write_all("OK\n");
      for (;;) {
        std::string m = me->out.get();
        s.write_all(m + "\n");
      }
    }
    for (std::string line = first; !line.empty(); line = strip(in.read_line())) {
      if (line.rfind("PUB ", 0) == 0) {
        auto sp = line.find(' ', 4);
        publish(line.substr(4, sp - 4), line.substr(sp + 1));
        s.write_all("OK\n");
      }
    }
  }
};

COGENT_TEST_CASE("user program 2: pub/sub broker with bounded per-subscriber queues drops a slow consumer") {
  broker br;
  server_errors errs;
  stream_server srv(address::ipv4_loopback(0), [&](stream_socket& s, const address& p) { br.handle(s, p); },
                    errs.opts());
  srv.start();

  // (A buffered_reader borrows its socket by address: the socket must be in its final place first.)
  auto fast = stream_socket::connect(srv.address(), 1s);
  fast.write_all("SUB news\n");
  buffered_reader fast_in_r(fast);
  auto* fast_in = &fast_in_r;
  CHECK(fast_in->read_line(64, 2s) == "OK\n");
  auto other = stream_socket::connect(srv.address(), 1s);
  other.write_all("SUB sport\n");
  buffered_reader other_in_r(other);
  auto* other_in = &other_in_r;
  CHECK(other_in->read_line(64, 2s) == "OK\n");
  // The slow subscriber never reads, and has tiny buffers on both ends, so its writer blocks and its
  // queue fills.
  auto slow = stream_socket::connect(srv.address(), 1s);
  slow.set_receive_buffer_size(2048);
  slow.write_all("SUB news\n");
  buffered_reader slow_in(slow);
  CHECK(slow_in.read_line(64, 2s) == "OK\n");

  auto pub = stream_socket::connect(srv.address(), 1s);
  buffered_reader pub_in(pub);
  const std::string payload(2000, 'n');
  std::vector<std::string> fast_got;
  auto fast_reader = cogent::spawn([&] {
    for (std::string l; !(l = fast_in->read_line(1 << 16, 5s)).empty();) {
      fast_got.push_back(strip(l));
      if (fast_got.size() == 200) {
        return;
      }
    }
  });
  for (int i = 0; i < 200; ++i) {
    pub.write_all("PUB news " + std::to_string(i) + payload + "\n");
    REQUIRE(pub_in.read_line(64, 2s) == "OK\n");
    if (i % 3 == 0) {
      cogent::sleep(1ms);  // let the fast subscriber's writer drain
    }
  }
  pub.write_all("PUB sport goal\n");
  REQUIRE(pub_in.read_line(64, 2s) == "OK\n");
  CHECK(other_in->read_line(64, 2s) == "goal\n");
  REQUIRE(fast_reader.join(5s));
  REQUIRE(fast_got.size() == 200);
  std::vector<int> wrong;  // indexes whose line is not "<i><payload>" (kept short for the report)
  std::string order;
  for (int i = 0; i < 200; ++i) {
    const std::string& l = fast_got[static_cast<std::size_t>(i)];
    if (l != std::to_string(i) + payload) {
      wrong.push_back(i);
      if (order.size() < 400) {
        order += std::to_string(i) + "->" + l.substr(0, l.find('n')) + "(" + std::to_string(l.size()) + ") ";
      }
    }
  }
  CHECK_MESSAGE(wrong.empty(), "fast subscriber lines out of place: " << wrong.size() << ": " << order);
  CHECK(br.drops == 1);
  // The slow one sees what the kernel held, then EOF.
  std::string rest = slow_in.read(1 << 24, 5s);
  CHECK(rest.size() < 200 * payload.size());
  for (int i = 0; i < 100 && br.subs.size() != 2; ++i) {
    cogent::sleep(10ms);
  }
  CHECK(br.subs.size() == 2);
  fast.close();
  other.close();
  pub.close();
  slow.close();
  srv.stop(2s);
  CHECK(br.subs.empty());
  CHECK(errs.seen.empty());
  errs.dump();
}

// ---------------------------------------------------------------------------------------------------
// (2) a client connection pool guarded by a semaphore: at most 3 sockets to the backend, reused
// across 30 requests from 10 fibers.

struct conn_pool {
  address to;
  cogent::bounded_semaphore slots{3};
  std::vector<stream_socket> idle{};
  int opened = 0;

  struct lease {
    conn_pool& p;
    stream_socket s;
    bool broken = false;
    ~lease() {
      if (!broken && s.is_open()) {
        p.idle.push_back(std::move(s));
      }
      p.slots.release();
    }
  };
  std::unique_ptr<lease> get() {
    slots.acquire();
    auto l = std::unique_ptr<lease>(new lease{*this, {}});
    if (!idle.empty()) {
      l->s = std::move(idle.back());
      idle.pop_back();
    } else {
      ++opened;
      l->s = stream_socket::connect(to, 1s);
    }
    return l;
  }
};

struct counting_echo {
  int live = 0;
  int max_live = 0;
  void handle(stream_socket& s, const address&) {
    ++live;
    max_live = std::max(max_live, live);
    struct dec {
      int& n;
      ~dec() { --n; }
    } d{live};
    buffered_reader in(s);
    for (std::string l; !(l = in.read_line()).empty();) {
      cogent::sleep(2ms);
      s.write_all("echo " + l);
    }
  }
};

COGENT_TEST_CASE("user program 2: connection pool of client sockets guarded by a bounded semaphore") {
  counting_echo backend;
  server_errors errs;
  stream_server srv(address::ipv4_loopback(0), [&](stream_socket& s, const address& p) { backend.handle(s, p); },
                    errs.opts());
  srv.start();
  conn_pool cp{srv.address()};
  int answered = 0;
  cogent::group g;
  for (int f = 0; f < 10; ++f) {
    g.spawn([&, f] {
      for (int i = 0; i < 3; ++i) {
        auto l = cp.get();
        std::string req = std::to_string(f) + "." + std::to_string(i) + "\n";
        l->s.write_all(req, 1s);
        buffered_reader in(l->s);  // one line per request: nothing stays buffered
        CHECK(in.read_line(128, 2s) == "echo " + req);
        ++answered;
      }
    });
  }
  CHECK(g.join(10s));
  CHECK(answered == 30);
  CHECK(cp.opened == 3);
  CHECK(backend.max_live <= 3);
  CHECK(cp.slots.counter() == 3);
  CHECK(cp.idle.size() == 3);
  cp.idle.clear();
  srv.stop(2s);
  CHECK(srv.accepted_count() == 3);
  CHECK(errs.seen.empty());
  errs.dump();
}

// ---------------------------------------------------------------------------------------------------
// (3) a token-bucket rate limiter with sleep: burst of 5, then one per 20 ms, shared by 4 fibers.

struct rate_limiter {
  double tokens;
  double burst;
  std::chrono::nanoseconds per_token;
  cogent::clock::time_point last = cogent::clock::now();
  cogent::lock mu{};
  void acquire() {
    std::lock_guard g(mu);  // FIFO: callers wait their turn, and sleep inside the lock
    for (;;) {
      auto now = cogent::clock::now();
      tokens = std::min(burst, tokens + std::chrono::duration<double>(now - last) /
                                            std::chrono::duration<double>(per_token));
      last = now;
      if (tokens >= 1.0) {
        tokens -= 1.0;
        return;
      }
      cogent::sleep(std::chrono::duration_cast<std::chrono::nanoseconds>((1.0 - tokens) * per_token));
    }
  }
};

COGENT_TEST_CASE("user program 2: token-bucket rate limiter shared by several fibers") {
  rate_limiter rl{5, 5, 20ms};
  std::vector<cogent::clock::time_point> stamps;
  auto t0 = cogent::clock::now();
  std::vector<cogent::task<void>> ts;
  for (int f = 0; f < 4; ++f) {
    ts.push_back(cogent::spawn([&] {
      for (int i = 0; i < 5; ++i) {
        rl.acquire();
        stamps.push_back(cogent::clock::now());
      }
    }));
  }
  cogent::joinall(ts, 10s);
  REQUIRE(stamps.size() == 20);
  double el = secs_since(t0);
  // 5 at once, then 15 at 20 ms each: >= 300 ms (generous lower bound), and not hugely more.
  CHECK(el >= 0.28);
  CHECK(el < 3.0);
  // No window of 100 ms holds more than burst + 100/20 + slack tokens.
  for (std::size_t i = 0; i < stamps.size(); ++i) {
    int in_window = 0;
    for (std::size_t j = i; j < stamps.size() && stamps[j] - stamps[i] < 100ms; ++j) {
      ++in_window;
    }
    CHECK(in_window <= 11);
  }
}

// ---------------------------------------------------------------------------------------------------
// (4) a request/response proxy: each request line goes to a fresh upstream connection under
// with_timeout(150 ms); a slow upstream answers "TIMEOUT" to the client, whose connection goes on.

void slow_upstream(stream_socket& s, const address&) {
  buffered_reader in(s);
  std::string req = strip(in.read_line(1024, 5s));
  int ms = std::stoi(req);
  cogent::sleep(std::chrono::milliseconds(ms));
  s.write_all("slept " + req + "\n");
}

struct proxy {
  int upstream_port;
  int timeouts = 0;
  void handle(stream_socket& client, const address&) {
    buffered_reader in(client);
    for (std::string line; !(line = in.read_line()).empty();) {
      std::string answer;
      try {
        answer = cogent::with_timeout(150ms, [&] {
          auto up = cogent::net::create_connection("127.0.0.1", upstream_port, 1s);
          up.write_all(line);
          buffered_reader upin(up);
          return upin.read_line();
        });
      } catch (const cogent::timeout_error&) {
        ++timeouts;
        answer = "TIMEOUT\n";
      }
      client.write_all(answer);
    }
  }
};

COGENT_TEST_CASE("user program 2: proxy with a per-request with_timeout keeps the client connection") {
  int fds_before = cogent::test::open_fds();
  server_errors up_errs, px_errs;
  {
    stream_server up(address::ipv4_loopback(0), slow_upstream, up_errs.opts());
    up.start();
    proxy px{up.port()};
    stream_server ps(address::ipv4_loopback(0), [&](stream_socket& s, const address& p) { px.handle(s, p); },
                     px_errs.opts());
    ps.start();
    auto c = stream_socket::connect(ps.address(), 1s);
    buffered_reader in(c);
    const std::vector<int> delays{5, 400, 10, 600, 0};
    for (int d : delays) {
      c.write_all(std::to_string(d) + "\n");
      std::string got = in.read_line(128, 3s);
      if (d > 150) {
        CHECK(got == "TIMEOUT\n");
      } else {
        CHECK(got == "slept " + std::to_string(d) + "\n");
      }
    }
    // Pipelined: three requests in one write, answers in order.
    c.write_all("1\n2\n3\n");
    CHECK(in.read_line(128, 3s) == "slept 1\n");
    CHECK(in.read_line(128, 3s) == "slept 2\n");
    CHECK(in.read_line(128, 3s) == "slept 3\n");
    CHECK(px.timeouts == 2);
    c.close();
    ps.stop(2s);
    up.stop(2s);  // the upstream handlers still sleeping see their clients gone when they write
  }
  CHECK(up_errs.seen.empty());
  CHECK(px_errs.seen.empty());
  up_errs.dump();
  px_errs.dump();
  CHECK(cogent::test::open_fds() == fds_before);
}

// ---------------------------------------------------------------------------------------------------
// (5) pool.map over blocking work offloaded to the thread pool, while a ticker keeps running.

COGENT_TEST_CASE("user program 2: pool.map over blocking work on the thread pool; the hub stays live") {
  cogent::threadpool tp(4);
  int ticks = 0;
  auto ticker = cogent::spawn([&] {
    for (;;) {
      cogent::sleep(5ms);
      ++ticks;
    }
  });
  cogent::pool p(4);
  std::vector<int> items{1, 2, 3, 4, 5, 6, 7, 8};
  auto t0 = cogent::clock::now();
  auto squares = p.map(
      [&](int n) {
        return tp.run([n] {
          std::this_thread::sleep_for(50ms);  // blocking call: fine on a worker
          return n * n;
        });
      },
      items);
  double el = secs_since(t0);
  REQUIRE(squares.size() == items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    CHECK(squares[i] == items[i] * items[i]);
  }
  CHECK(el >= 0.09);  // two rounds of 4
  CHECK(el < 0.39);   // not sequential (8 x 50 ms)
  CHECK(ticks >= 5);  // the hub ran the ticker meanwhile
  // An exception on a worker comes back to map()'s caller.
  CHECK_THROWS_AS(p.map(
                      [&](int n) {
                        return tp.run([n]() -> int {
                          if (n == 3) {
                            throw std::runtime_error("bad item");
                          }
                          return n;
                        });
                      },
                      items),
                  std::runtime_error);
  ticker.kill();
  CHECK(p.size() == 0);
}

// ---------------------------------------------------------------------------------------------------
// (6) fiber_local request ids across nested calls in a server, with helper tasks of their own.

cogent::fiber_local<std::string> request_id;

struct logger {
  std::vector<std::string> lines;
  void log(const std::string& what) { lines.push_back(*request_id + ": " + what); }
};

struct rid_service {
  logger& lg;
  int counter = 0;
  std::string lookup(const std::string& key) {
    lg.log("lookup " + key);
    cogent::sleep(std::chrono::milliseconds(key.size()));
    // a helper task does not inherit the id (gevent's local is per greenlet): it is handed over.
    std::string rid = *request_id;
    auto helper = cogent::spawn([this, rid, key] {
      CHECK(!request_id.has_value());
      request_id.set(rid + "/h");
      cogent::sleep(1ms);
      lg.log("helper " + key);
      return key + "!";
    });
    return helper.get();
  }
  std::string process(const std::string& body) {
    lg.log("process");
    std::string r = lookup(body);
    cogent::sleep(1ms);
    lg.log("done");
    return r;
  }
  void handle(stream_socket& s, const address&) {
    buffered_reader in(s);
    for (std::string l; !(l = strip(in.read_line())).empty();) {
      request_id.set("req" + std::to_string(++counter));
      s.write_all(*request_id + " " + process(l) + "\n");
    }
  }
};

COGENT_TEST_CASE("user program 2: fiber_local request ids survive interleaving across nested calls") {
  logger lg;
  rid_service svc{lg};
  server_errors errs;
  stream_server srv(address::ipv4_loopback(0), [&](stream_socket& s, const address& p) { svc.handle(s, p); },
                    errs.opts());
  srv.start();
  request_id.set("main");
  std::vector<cogent::task<std::vector<std::string>>> clients;
  for (int c = 0; c < 4; ++c) {
    clients.push_back(cogent::spawn([&, c] {
      auto s = stream_socket::connect(srv.address(), 1s);
      buffered_reader in(s);
      std::vector<std::string> got;
      for (int i = 0; i < 3; ++i) {
        s.write_all(std::string(static_cast<std::size_t>(c + i + 1), 'k') + "\n");
        got.push_back(strip(in.read_line(256, 2s)));
      }
      return got;
    }));
  }
  std::set<std::string> ids;
  for (auto& c : clients) {
    for (auto& l : c.get(5s)) {
      ids.insert(l.substr(0, l.find(' ')));
      CHECK(l.back() == '!');
    }
  }
  CHECK(ids.size() == 12);
  CHECK(*request_id == "main");
  // Each request's log lines all carry its own id, in order process, lookup, helper, done.
  std::map<std::string, std::vector<std::string>> by_id;
  for (auto& l : lg.lines) {
    std::string id = l.substr(0, l.find(':'));
    if (id.size() > 2 && id.substr(id.size() - 2) == "/h") {
      id = id.substr(0, id.size() - 2);
    }
    by_id[id].push_back(l.substr(l.find(':') + 2));
  }
  CHECK(by_id.size() == 12);
  for (auto& [id, ls] : by_id) {
    REQUIRE(ls.size() == 4);
    CHECK(ls[0] == "process");
    CHECK(ls[1].rfind("lookup ", 0) == 0);
    CHECK(ls[2].rfind("helper ", 0) == 0);
    CHECK(ls[3] == "done");
  }
  srv.stop(2s);
  CHECK(errs.seen.empty());
  errs.dump();
}

// ---------------------------------------------------------------------------------------------------
// (7) async_result fan-in: ask three replicas, the first answer wins (the others are killed);
// then a quorum of 2 out of 3 gathered through per-replica async_results.

struct replica {
  std::string name;
  std::chrono::milliseconds delay;
  bool fail = false;
  int served = 0;
  int cut_off = 0;
  void handle(stream_socket& s, const address&) {
    buffered_reader in(s);
    std::string q = in.read_line(256, 2s);
    try {
      cogent::sleep(delay);
    } catch (...) {
      throw;
    }
    if (fail) {
      s.write_all("ERR\n");
      return;
    }
    ++served;
    try {
      s.write_all(name + ":" + q);
    } catch (const std::system_error&) {
      ++cut_off;  // the asker had gone
      throw;
    }
  }
};

std::string ask(const address& at, const std::string& q) {
  auto s = stream_socket::connect(at, 1s);
  s.write_all(q + "\n");
  buffered_reader in(s);
  std::string a = strip(in.read_line(256, 3s));
  if (a == "ERR" || a.empty()) {
    throw std::runtime_error("replica failed");
  }
  return a;
}

COGENT_TEST_CASE("user program 2: async_result fan-in: first answer wins, then a 2-of-3 quorum") {
  std::vector<std::unique_ptr<replica>> reps;
  reps.push_back(std::make_unique<replica>(replica{"slow", 400ms}));
  reps.push_back(std::make_unique<replica>(replica{"fast", 20ms}));
  reps.push_back(std::make_unique<replica>(replica{"broken", 5ms, true}));
  server_errors errs;
  std::vector<std::unique_ptr<stream_server>> srvs;
  for (auto& r : reps) {
    replica* rp = r.get();
    srvs.push_back(std::make_unique<stream_server>(
        address::ipv4_loopback(0), [rp](stream_socket& s, const address& p) { rp->handle(s, p); }, errs.opts()));
    srvs.back()->start();
  }
  // First answer wins: every asker sets the shared result unless one already did; errors do not count
  // unless every replica failed.
  {
    cogent::async_result<std::string> first;
    int failed = 0;
    std::vector<cogent::task<void>> askers;
    for (auto& s : srvs) {
      address at = s->address();
      askers.push_back(cogent::spawn([&, at] {
        try {
          std::string a = ask(at, "q1");
          if (!first.ready()) {
            first.set(a);
          }
        } catch (const std::runtime_error&) {
          if (++failed == 3) {
            first.set_exception(std::current_exception());
          }
        }
      }));
    }
    auto t0 = cogent::clock::now();
    CHECK(first.get(2s) == "fast:q1");
    CHECK(secs_since(t0) < 0.35);
    cogent::killall(std::vector<cogent::task_base>(askers.begin(), askers.end()));
    for (auto& a : askers) {
      CHECK(a.ready());
    }
    CHECK(failed == 1);
  }
  // Quorum: one async_result per replica, wait until 2 have a value (or all are ready).
  {
    std::vector<std::unique_ptr<cogent::async_result<std::string>>> res;
    cogent::event progress;
    std::vector<cogent::task<void>> askers;
    for (auto& s : srvs) {
      res.push_back(std::make_unique<cogent::async_result<std::string>>());
      auto* r = res.back().get();
      address at = s->address();
      askers.push_back(cogent::spawn([r, at, &progress] {
        try {
          r->set(ask(at, "q2"));
        } catch (const std::runtime_error&) {
          r->set_exception(std::current_exception());
        }
        progress.set();
      }));
    }
    auto ok_count = [&] {
      return std::count_if(res.begin(), res.end(), [](auto& r) { return r->successful(); });
    };
    auto all_ready = [&] { return std::all_of(res.begin(), res.end(), [](auto& r) { return r->ready(); }); };
    auto t0 = cogent::clock::now();
    while (ok_count() < 2 && !all_ready()) {
      progress.clear();
      REQUIRE(progress.wait(3s));
    }
    double el = secs_since(t0);
    CHECK(ok_count() == 2);
    CHECK(el > 0.3);  // the slow one was needed
    CHECK(res[0]->get() == "slow:q2");
    CHECK(res[1]->get() == "fast:q2");
    CHECK_THROWS_AS(res[2]->get(), std::runtime_error);
    cogent::joinall(askers, 2s);
  }
  // get(timeout) on a result nobody sets: timeout_error (not a std::exception).
  {
    cogent::async_result<int> never;
    bool timed_out = false;
    try {
      (void)never.get(30ms);
    } catch (const cogent::timeout_error&) {
      timed_out = true;
    }
    CHECK(timed_out);
  }
  for (auto& s : srvs) {
    s->stop(2s);
  }
  CHECK(reps[0]->served == 2);  // its first answer went to an asker that had been killed (no error: a
                                // first write after the peer's close succeeds)
  CHECK(errs.seen.empty());
  errs.dump();
}

// ---------------------------------------------------------------------------------------------------
// (8) event-driven graceful shutdown: a `shutting_down` event; every client's watcher waits on it,
// lets an in-flight request finish (a per-client lock), says "bye" and shuts the socket down, so the
// handler's read sees EOF and it returns on its own; stop() then has nothing to kill.

struct graceful_service {
  cogent::event& shutting_down;
  int finished_requests = 0;
  int handlers_done = 0;
  int killed = 0;
  void handle(stream_socket& s, const address&) {
    struct done {
      int& n;
      ~done() { ++n; }
    } d{handlers_done};
    cogent::lock busy;
    auto watcher = cogent::spawn([&] {
      shutting_down.wait();
      std::lock_guard g(busy);  // wait for the request in flight
      s.write_all("bye\n");
      s.shutdown(cogent::net::shutdown_how::both);
    });
    struct reap {
      cogent::task<void>& w;
      ~reap() { w.kill(); }
    } r{watcher};
    buffered_reader in(s);
    try {
      for (std::string req; !(req = strip(in.read_line())).empty();) {
        std::lock_guard g(busy);
        cogent::sleep(std::chrono::milliseconds(std::stoi(req)));
        s.write_all("done " + req + "\n");
        ++finished_requests;
      }
    } catch (const cogent::fiber_exit&) {
      ++killed;
      throw;
    }
  }
};

COGENT_TEST_CASE("user program 2: event-driven graceful shutdown of a server with live clients") {
  cogent::event shutting_down;
  graceful_service svc{shutting_down};
  server_errors errs;
  stream_server srv(address::ipv4_loopback(0), [&](stream_socket& s, const address& p) { svc.handle(s, p); },
                    errs.opts());
  auto serving = cogent::spawn([&] { srv.serve_forever(); });
  cogent::yield();
  std::vector<stream_socket> idle;
  for (int i = 0; i < 3; ++i) {
    idle.push_back(stream_socket::connect(srv.address(), 1s));
  }
  auto busy = stream_socket::connect(srv.address(), 1s);
  busy.write_all("300\n");
  cogent::sleep(50ms);  // the busy client's request is in flight
  for (int i = 0; i < 100 && srv.client_count() < 4; ++i) {
    cogent::sleep(5ms);
  }
  REQUIRE(srv.client_count() == 4);
  auto t0 = cogent::clock::now();
  shutting_down.set();
  srv.stop(5s);
  double el = secs_since(t0);
  CHECK(el < 1.5);   // nobody had to be waited out for 5 s
  CHECK(el > 0.15);  // the in-flight request was let finish
  CHECK(serving.join(2s));
  for (auto& c : idle) {
    CHECK(c.read_until_eof(1024, 2s) == "bye\n");
  }
  CHECK(busy.read_until_eof(1024, 2s) == "done 300\nbye\n");
  CHECK(svc.finished_requests == 1);
  CHECK(svc.handlers_done == 4);
  CHECK(svc.killed == 0);
  CHECK(srv.client_count() == 0);
  // The listener is closed: a new client is refused.
  CHECK(cogent::test::errno_of([&] { (void)stream_socket::connect(srv.address(), 1s); }) == ECONNREFUSED);
  CHECK(errs.seen.empty());
  errs.dump();
}

// ---------------------------------------------------------------------------------------------------
// (9) a UDP heartbeat monitor: nodes beat every 20 ms; the monitor marks a node dead after 120 ms of
// silence and alive again when it comes back.

COGENT_TEST_CASE("user program 2: UDP heartbeat monitor detects a dead node and its return") {
  auto mon = cogent::net::udp_socket::bind(address::ipv4_loopback(0));
  address mon_at = mon.local_address();
  std::map<std::string, cogent::clock::time_point> last_seen;
  std::vector<std::string> events;
  std::set<std::string> dead;
  auto receiver = cogent::spawn([&] {
    char buf[256];
    for (;;) {
      address from;
      std::size_t n = mon.receive_from(buf, sizeof buf, from);
      std::string msg(buf, n);
      if (msg.rfind("hb ", 0) == 0) {
        std::string node = msg.substr(3);
        last_seen[node] = cogent::clock::now();
        if (dead.erase(node) != 0) {
          events.push_back("alive " + node);
        }
        mon.send_to("ack", 3, from);
      }
    }
  });
  auto checker = cogent::spawn([&] {
    for (;;) {
      cogent::sleep(20ms);
      auto now = cogent::clock::now();
      for (auto& [node, t] : last_seen) {
        if (now - t > 120ms && dead.insert(node).second) {
          events.push_back("dead " + node);
        }
      }
    }
  });
  auto node = [&](std::string name, int beats, std::chrono::milliseconds pause_after, int more) {
    auto s = cogent::net::udp_socket::bind(address::ipv4_loopback(0));
    s.connect(mon_at);
    int acks = 0;
    auto beat = [&] {
      std::string m = "hb " + name;
      s.send(m.data(), m.size());
      char b[8];
      try {
        if (s.receive(b, sizeof b, 100ms) == 3) {
          ++acks;
        }
      } catch (const std::system_error& e) {
        CHECK_MESSAGE(e.code().value() == ETIMEDOUT, e.what());
      }
      cogent::sleep(20ms);
    };
    for (int i = 0; i < beats; ++i) {
      beat();
    }
    cogent::sleep(pause_after);
    for (int i = 0; i < more; ++i) {
      beat();
    }
    return acks;
  };
  auto a = cogent::spawn(node, "a", 20, 0ms, 0);
  auto b = cogent::spawn(node, "b", 20, 0ms, 0);
  auto c = cogent::spawn(node, "c", 3, 300ms, 5);  // silent for 300 ms in the middle
  CHECK(a.get(5s) >= 18);
  CHECK(b.get(5s) >= 18);
  CHECK(c.get(5s) >= 7);
  cogent::killall({receiver, checker});
  // c died and came back; a and b were never declared dead while beating (they may be after they stop).
  auto pos = [&](const std::string& e) { return std::find(events.begin(), events.end(), e) - events.begin(); };
  REQUIRE(std::count(events.begin(), events.end(), "dead c") >= 1);
  REQUIRE(std::count(events.begin(), events.end(), "alive c") >= 1);
  CHECK(pos("dead c") < pos("alive c"));
  std::string all;
  for (auto& e : events) {
    all += e + "; ";
  }
  INFO("events: " << all);
  CHECK(pos("dead c") == 0);
}

// ---------------------------------------------------------------------------------------------------
// (10) a line-protocol key/value server on buffered_reader: pipelining, requests split across
// writes, CRLF, an over-long line, a last line without '\n' at EOF, and read timeouts used as ticks
// (a timed-out read_line loses nothing).

struct kv_server {
  std::map<std::string, std::string> data;
  int ticks = 0;
  void handle(stream_socket& s, const address&) {
    buffered_reader in(s);
    int idle_ticks = 0;
    for (;;) {
      std::string line;
      try {
        line = in.read_line(64, 100ms);
      } catch (const std::system_error& e) {
        if (e.code().value() != ETIMEDOUT) {
          throw;
        }
        ++ticks;
        if (++idle_ticks == 5) {
          s.write_all("ERR idle\n");
          return;
        }
        continue;
      }
      idle_ticks = 0;
      if (line.empty()) {
        return;  // EOF
      }
      if (line.back() != '\n' && line.size() == 64) {
        // cut short by max_bytes: skip the rest of the line
        while (!line.empty() && line.back() != '\n') {
          line = in.read_line(64, 1s);
        }
        s.write_all("ERR too long\n");
        continue;
      }
      std::string cmd = strip(line);
      std::string reply;
      if (cmd.rfind("SET ", 0) == 0) {
        auto sp = cmd.find(' ', 4);
        data[cmd.substr(4, sp - 4)] = cmd.substr(sp + 1);
        reply = "OK";
      } else if (cmd.rfind("GET ", 0) == 0) {
        auto it = data.find(cmd.substr(4));
        reply = it == data.end() ? "NIL" : "VAL " + it->second;
      } else if (cmd.rfind("DEL ", 0) == 0) {
        reply = data.erase(cmd.substr(4)) != 0 ? "1" : "0";
      } else if (cmd == "QUIT") {
        s.write_all("BYE\n");
        return;
      } else {
        reply = "ERR unknown";
      }
      s.write_all(reply + "\n");
    }
  }
};

COGENT_TEST_CASE("user program 2: line-protocol KV server on buffered_reader") {
  kv_server kv;
  server_errors errs;
  stream_server srv(address::ipv4_loopback(0), [&](stream_socket& s, const address& p) { kv.handle(s, p); },
                    errs.opts());
  srv.start();
  {
    auto c = stream_socket::connect(srv.address(), 1s);
    buffered_reader in(c);
    auto rl = [&] { return in.read_line(256, 2s); };
    c.write_all("SET a 1\nSET b 2\r\nGET a\nGET b\nDEL a\nGET a\nNOPE\n");  // pipelined, one CRLF
    CHECK(rl() == "OK\n");
    CHECK(rl() == "OK\n");
    CHECK(rl() == "VAL 1\n");
    CHECK(rl() == "VAL 2\n");
    CHECK(rl() == "1\n");
    CHECK(rl() == "NIL\n");
    CHECK(rl() == "ERR unknown\n");
    // split across writes, byte by byte
    for (char ch : std::string("SET long-key hello world\n")) {
      c.write_all(&ch, 1);
      cogent::sleep(1ms);
    }
    CHECK(rl() == "OK\n");
    // over-long line, then the connection goes on
    c.write_all("SET x " + std::string(300, 'x') + "\nGET x\n");
    CHECK(rl() == "ERR too long\n");
    CHECK(rl() == "NIL\n");
    // half a request, a pause of several server read timeouts, the rest: nothing is lost
    int ticks_before = kv.ticks;
    c.write_all("GET lo");
    cogent::sleep(250ms);
    c.write_all("ng-key\n");
    CHECK(rl() == "VAL hello world\n");
    CHECK(kv.ticks >= ticks_before + 2);
    c.write_all("QUIT\n");
    CHECK(rl() == "BYE\n");
    CHECK(rl().empty());  // EOF
  }
  {
    // a last line without '\n' before EOF is still a request
    auto c = stream_socket::connect(srv.address(), 1s);
    c.write_all("GET b");
    c.shutdown(cogent::net::shutdown_how::write);
    CHECK(c.read_until_eof(1024, 2s) == "VAL 2\n");
  }
  {
    // an idle client is told so after 5 ticks
    auto c = stream_socket::connect(srv.address(), 1s);
    auto t0 = cogent::clock::now();
    CHECK(c.read_until_eof(1024, 3s) == "ERR idle\n");
    CHECK(secs_since(t0) > 0.4);
  }
  srv.stop(2s);
  CHECK(errs.seen.empty());
  errs.dump();
}

// ---------------------------------------------------------------------------------------------------
// (11) spawn_later retries with exponential backoff: the service comes up late; the client retries
// with 10, 20, 40 ... ms; a second client's pending retry is cancelled by a kill (it never runs).

struct retrier {
  address to;
  int max_attempts;
  int attempts = 0;
  std::vector<std::chrono::milliseconds> waits{};
  cogent::async_result<std::string> result{};
  cogent::task<void> pending{};
  void attempt(std::chrono::milliseconds backoff) {
    ++attempts;
    try {
      auto s = stream_socket::connect(to, 1s);
      buffered_reader in(s);
      result.set(strip(in.read_line(256, 2s)));
      return;
    } catch (const std::system_error& e) {
      if (e.code().value() != ECONNREFUSED || attempts == max_attempts) {
        result.set_exception(std::current_exception());
        return;
      }
    }
    waits.push_back(backoff);
    pending = cogent::spawn_later(backoff, [this, backoff] { attempt(std::min(backoff * 2, 200ms)); });
  }
};

COGENT_TEST_CASE("user program 2: spawn_later retries with backoff until a late service is up") {
  // reserve a free port, then let it go: the service binds it 150 ms later
  int port = 0;
  {
    auto l = cogent::net::listener::bind(address::ipv4_loopback(0));
    port = l.port();
  }
  address at = address::ipv4_loopback(port);
  std::optional<stream_server> late;
  server_errors errs;
  auto starter = cogent::spawn_later(150ms, [&] {
    late.emplace(at, [](stream_socket& s, const address&) { s.write_all("hello, late\n"); }, errs.opts());
    late->start();
  });
  retrier r{at, 20};
  auto t0 = cogent::clock::now();
  r.attempt(10ms);
  CHECK(r.result.get(5s) == "hello, late");
  double el = secs_since(t0);
  CHECK(el > 0.14);
  CHECK(r.attempts >= 3);
  for (std::size_t i = 1; i < r.waits.size(); ++i) {
    CHECK(r.waits[i] >= r.waits[i - 1]);
  }
  CHECK(starter.join(1s));
  // A second client gives up before its next retry: killing the pending spawn_later task stops it.
  retrier r2{address::ipv4_loopback(port == 65535 ? 1 : port + 1), 20};  // likely nothing there
  r2.attempt(500ms);
  if (r2.pending) {
    CHECK(!r2.result.ready());
    r2.pending.kill();
    CHECK(r2.pending.ready());
    CHECK(!r2.pending.started());
    CHECK(r2.attempts == 1);
  }
  late->stop(1s);
  CHECK(errs.seen.empty());
  errs.dump();
}

// ---------------------------------------------------------------------------------------------------
// (12) happy eyeballs: race a slow and a fast "address" (the fast one started 50 ms later), keep
// the first connection that says hello, kill the other attempt.

COGENT_TEST_CASE("user program 2: happy eyeballs with spawn_later, wait_any and kill") {
  int slow_cut = 0;
  server_errors errs;
  stream_server slow(
      address::ipv4_loopback(0),
      [&](stream_socket& s, const address&) {
        cogent::sleep(500ms);
        try {
          s.write_all("hello from slow\n");
          char b[1];
          (void)s.read_some(b, 1, 1s);
        } catch (const std::system_error&) {
          ++slow_cut;
          throw;
        }
      },
      errs.opts());
  stream_server fast(
      address::ipv4_loopback(0),
      [&](stream_socket& s, const address&) {
        s.write_all("hello from fast\n");
        char b[1];
        (void)s.read_some(b, 1, 2s);
      },
      errs.opts());
  slow.start();
  fast.start();
  using conn = std::pair<std::unique_ptr<stream_socket>, std::string>;
  auto attempt = [](address at) -> conn {
    auto s = std::make_unique<stream_socket>(stream_socket::connect(at, 1s));
    buffered_reader in(*s);
    std::string hello = strip(in.read_line(256, 2s));
    return {std::move(s), hello};
  };
  auto t0 = cogent::clock::now();
  auto a = cogent::spawn(attempt, slow.address());
  auto b = cogent::spawn_later(50ms, attempt, fast.address());
  std::vector<cogent::task_base> racers{a, b};
  cogent::task_base first = cogent::wait_any(racers, 2s);
  REQUIRE(first);
  CHECK(first == b);
  CHECK(secs_since(t0) < 0.4);
  a.kill();
  CHECK(a.killed());
  conn won = b.get();
  CHECK(won.second == "hello from fast");
  won.first->write_all("x");
  won.first->close();
  slow.stop(2s);
  fast.stop(2s);
  CHECK(slow_cut <= 1);
  CHECK(errs.seen.empty());
  errs.dump();
}

// ---------------------------------------------------------------------------------------------------
// (13) cleanup on kill, gevent style: a handler killed by stop(timeout) still says goodbye — once from
// its `catch (fiber_exit&)` block, once from an RAII guard's destructor while the kill unwinds it.

struct goodbye_service {
  int said_in_catch = 0;
  int said_in_dtor = 0;
  void handle(stream_socket& s, const address&) {
    struct farewell {
      stream_socket& s;
      int& n;
      ~farewell() {
        try {
          s.write_all("dtor bye\n", 1s);
          ++n;
        } catch (...) {
        }
      }
    } f{s, said_in_dtor};
    try {
      s.write_all("hi\n");
      cogent::sleep(10s);
    } catch (const cogent::fiber_exit&) {
      s.write_all("catch bye\n", 1s);
      ++said_in_catch;
      throw;
    }
  }
};

COGENT_TEST_CASE("user program 2: a killed handler blocks to say goodbye in catch and in a destructor") {
  goodbye_service svc;
  server_errors errs;
  stream_server srv(address::ipv4_loopback(0), [&](stream_socket& s, const address& p) { svc.handle(s, p); },
                    errs.opts());
  srv.start();
  auto c1 = stream_socket::connect(srv.address(), 1s);
  auto c2 = stream_socket::connect(srv.address(), 1s);
  buffered_reader in1(c1), in2(c2);
  CHECK(in1.read_line(64, 2s) == "hi\n");
  CHECK(in2.read_line(64, 2s) == "hi\n");
  auto t0 = cogent::clock::now();
  srv.stop(100ms);
  CHECK(secs_since(t0) < 2.0);
  CHECK(svc.said_in_catch == 2);
  CHECK(svc.said_in_dtor == 2);
  CHECK(in1.read(1024, 2s) == "catch bye\ndtor bye\n");
  CHECK(in2.read(1024, 2s) == "catch bye\ndtor bye\n");
  CHECK(errs.seen.empty());
  errs.dump();
}

// ---------------------------------------------------------------------------------------------------
// (14) an actor: one fiber owns the state; clients send requests over a channel with an async_result
// for the reply (gevent: a greenlet reading a Queue of (request, AsyncResult)). A client killed while
// it waits for its reply does not disturb the actor or the other clients.

struct account_actor {
  struct request {
    std::string op;
    int amount;
    cogent::async_result<int>* reply;
    std::shared_ptr<bool> alive;  // the asker is still there to read the reply
  };
  cogent::channel<request> inbox;
  int balance = 0;
  int orphaned_replies = 0;
  void run() {
    for (;;) {
      request r = inbox.get();
      cogent::sleep(2ms);  // some work
      if (r.op == "deposit") {
        balance += r.amount;
      } else if (r.op == "withdraw") {
        if (r.amount > balance) {
          if (*r.alive) {
            r.reply->set_exception(std::make_exception_ptr(std::domain_error("insufficient funds")));
          }
          continue;
        }
        balance -= r.amount;
      }
      if (*r.alive) {
        r.reply->set(balance);
      } else {
        ++orphaned_replies;
      }
    }
  }
  int call(const std::string& op, int amount) {
    cogent::async_result<int> reply;
    auto alive = std::make_shared<bool>(true);
    struct mark {
      std::shared_ptr<bool>& a;
      ~mark() { *a = false; }
    } m{alive};
    inbox.put({op, amount, &reply, alive});
    return reply.get();
  }
};

COGENT_TEST_CASE("user program 2: an actor fiber behind a channel with async_result replies") {
  account_actor acct;
  auto actor = cogent::spawn([&] { acct.run(); });
  std::vector<cogent::task<int>> clients;
  for (int i = 0; i < 10; ++i) {
    clients.push_back(cogent::spawn([&] {
      int last = 0;
      for (int k = 0; k < 5; ++k) {
        last = acct.call("deposit", 10);
      }
      return last;
    }));
  }
  // a client that gets killed while its request is queued or being worked on
  auto victim = cogent::spawn([&] { return acct.call("deposit", 1000); });
  cogent::yield();
  cogent::yield();
  victim.kill();
  CHECK(victim.killed());
  cogent::joinall(clients, 5s);
  int max_seen = 0;
  for (auto& c : clients) {
    max_seen = std::max(max_seen, c.get());
  }
  bool victim_counted = acct.balance == 1500;
  CHECK((acct.balance == 500 || victim_counted));
  CHECK(max_seen == acct.balance);
  CHECK_THROWS_AS(acct.call("withdraw", 100000), std::domain_error);
  CHECK(acct.call("withdraw", 100) == acct.balance);
  actor.kill();
  CHECK(actor.ready());
}

// ---------------------------------------------------------------------------------------------------
// (15) a server that stops cleanly on SIGTERM (gevent: gevent.signal_handler(SIGTERM, server.stop)),
// run in a child process (the signal mask is process state).

TEST_CASE("user program 2: SIGTERM stops a server through wait_for_signal") {
  // The child cannot use the hub of the test's thread (fork): it serves on a fresh thread, with
  // SIGTERM blocked in its main thread first (else a process-directed signal may go there).
  int code = cogent::test::exit_code_in_child(
      [] {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        pthread_sigmask(SIG_BLOCK, &set, nullptr);
        int rc = 10;
        std::string why;
        std::thread([&] {
          auto main_task = cogent::spawn([&] {
            stream_server srv(address::ipv4_loopback(0), cogent::test::echo_handler);
            auto stopper = cogent::spawn([&] {
              int sig = cogent::net::wait_for_signal({SIGTERM, SIGINT}, 3s);
              srv.stop(1s);
              return sig;
            });
            srv.start();
            auto c = stream_socket::connect(srv.address(), 1s);
            c.write_all("ping");
            char b[4];
            c.read_exactly(b, 4, 1s);
            cogent::yield();  // the stopper is parked in wait_for_signal
            ::kill(::getpid(), SIGTERM);
            srv.serve_forever();  // returns once stop() has finished
            int sig = stopper.get(2s);
            rc = sig == SIGTERM ? 0 : 11;
            try {
              rc += c.read_some(b, 4, 1s) == 0 ? 0 : 20;  // the handler was ended by the stop
            } catch (const std::system_error&) {
            }
          });
          main_task.join();
          if (!main_task.successful()) {
            why = cogent::describe_exception(main_task.exception());
            rc = 12;
          }
        }).join();
        if (!why.empty()) {
          std::fprintf(stderr, "child: %s\n", why.c_str());
        }
        return rc;
      },
      10);
  CHECK(code == 0);
}

// ---------------------------------------------------------------------------------------------------
// probes: what a gevent user leans on in buffered_reader and the pool, checked on their own.

struct my_cancel : std::runtime_error {
  my_cancel() : std::runtime_error("my cancel") {}
};

COGENT_TEST_CASE("probe 2: a Timeout scope or a custom kill in read_line loses no buffered bytes") {
  auto p = cogent::test::make_pair();
  buffered_reader in(p.server);
  p.client.write_all("hel");
  auto r = cogent::try_with_timeout(50ms, [&] { return in.read_line(); });
  CHECK(!r);
  CHECK(in.buffered() == "hel");
  // a kill with an exception of the user's own, while parked in read_line
  std::string got;
  auto reader = cogent::spawn([&] {
    try {
      got = in.read_line(1024, 2s);
    } catch (const my_cancel&) {
      got = "cancelled";
      throw;
    }
  });
  cogent::yield();
  p.client.write_all("lo wo");
  cogent::sleep(10ms);
  reader.kill(std::make_exception_ptr(my_cancel()));
  CHECK(got == "cancelled");
  CHECK_THROWS_AS(reader.rethrow(), my_cancel);
  CHECK(in.buffered() == "hello wo");
  p.client.write_all("rld\nnext");
  CHECK(in.read_line(1024, 1s) == "hello world\n");
  p.client.shutdown(cogent::net::shutdown_how::write);
  char b[8] = {};
  try {
    in.read_exactly(b, 8, 1s);
    FAIL("no end_of_stream");
  } catch (const cogent::net::end_of_stream& e) {
    CHECK(e.bytes_read() == 4);
    CHECK(std::string(b, 4) == "next");
  }
  CHECK(in.read_line(1024, 1s).empty());
}

COGENT_TEST_CASE("probe 2: imap streams results before a failing item, pool.map stops spawning on a failure") {
  cogent::pool p(2);
  std::vector<int> items{1, 2, 3, 4, 5, 6};
  std::vector<int> got;
  bool raised = false;
  try {
    for (int v : p.imap(
             [](int n) {
               cogent::sleep(std::chrono::milliseconds(5 * (7 - n)));
               if (n == 4) {
                 throw std::runtime_error("item 4");
               }
               return n * 10;
             },
             items)) {
      got.push_back(v);
    }
  } catch (const std::runtime_error& e) {
    raised = std::string(e.what()) == "item 4";
  }
  CHECK(raised);
  CHECK(got == std::vector<int>{10, 20, 30});
  CHECK(p.size() == 0);
  // pool of 1: item 2 fails, items 3.. never start
  cogent::pool one(1);
  std::vector<int> started;
  CHECK_THROWS_AS(one.map(
                      [&](int n) {
                        started.push_back(n);
                        cogent::sleep(1ms);
                        if (n == 2) {
                          throw std::runtime_error("two");
                        }
                        return n;
                      },
                      items),
                  std::runtime_error);
  CHECK(started == std::vector<int>{1, 2});
  CHECK(one.size() == 0);
}

}  // namespace
