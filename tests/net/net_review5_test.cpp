// tests/net/net_review5_test.cpp — adversarial review of the last session's net/ changes:
// buffered_reader (deadlines, boundaries, lost bytes), socket_closed_error / close()'s new
// closed_by_close state, stream_server stop()/serve_forever() changes.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "net/net.hpp"
#include "tests/net/net_support.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::net::address;
using cogent::net::buffered_reader;
using cogent::net::listener;
using cogent::net::stream_socket;
using cogent::test::make_pair;


// ---- release() after close() ---------------------------------------------------------------
//
// socket.hpp: "release() gives up ownership and returns the fd (-1 if closed)". close() now
// leaves _fd at closed_by_close (-2); fd() was taught to say -1, release() was not: it hands
// back -2.

COGENT_TEST_CASE("review5: release() of a socket close() closed returns -1, as documented") {
  auto p = make_pair();
  p.server.close();
  CHECK(p.server.fd() == -1);
  CHECK(p.server.release() == -1);
  auto l = listener::bind(address::ipv4_loopback(0));
  l.close();
  CHECK(l.release() == -1);
}

// ---- read_exactly of 0 bytes into an empty buffer ------------------------------------------
//
// reader.cpp:82 (and :77 on the end_of_stream path) memcpy()s into `buf` even for n == 0; an
// empty std::vector's data() is nullptr, and memcpy(nullptr, p, 0) is undefined behaviour (UBSan
// nonnull-attribute; with halt_on_error, as scripts/test sets, it kills the process). The
// socket's own read_exactly(nullptr, 0) does nothing. Run in a child: no IO happens there.

COGENT_TEST_CASE("review5: reader read_exactly(nullptr, 0) (an empty vector's data()) is a no-op") {
  auto p = make_pair();
  buffered_reader empty_reader(p.server);
  p.client.write_all("ab");
  buffered_reader in(p.server);
  CHECK(in.read(1) == "a");  // "b" stays buffered
  std::vector<char> none;
  p.server.read_exactly(none.data(), none.size());  // the socket's own: fine
  auto r = cogent::test::run_in_child([&] {
    empty_reader.read_exactly(none.data(), none.size());  // nothing buffered: no IO, memcpy(nullptr, _, 0)
    in.read_exactly(none.data(), none.size());            // bytes buffered: the same
    if (in.buffered() != "b") {
      std::fprintf(stderr, "lost the buffered byte\n");
      std::fflush(stderr);
      ::_exit(2);
    }
  });
  INFO(r.err);
  CHECK(r.exited(0));
  CHECK(r.err.find("runtime error") == std::string::npos);
}

// ---- a randomized model check: nothing lost or reordered at buffer boundaries ---------------

COGENT_TEST_CASE("review5: reader random mix of calls over random writes loses and reorders nothing") {
  for (unsigned seed = 1; seed <= 40; ++seed) {
    std::mt19937 rng(seed);
    auto p = make_pair();
    std::string data;
    const std::size_t total = 20000 + rng() % 20000;
    for (std::size_t i = 0; i < total; ++i) {
      unsigned r = rng() % 20;
      data += r == 0 ? '\n' : r == 1 ? ';' : static_cast<char>('a' + r);
    }
    auto w = cogent::spawn([&, wseed = seed] {
      std::mt19937 wr(wseed * 7919);
      std::size_t off = 0;
      while (off < data.size()) {
        std::size_t k = std::min<std::size_t>(data.size() - off, 1 + wr() % 700);
        p.client.write_all(data.data() + off, k);
        off += k;
        if (wr() % 3 == 0) {
          cogent::sleep(0ms);
        }
      }
      p.client.shutdown();
    });
    buffered_reader in(p.server, 1 + rng() % 64);
    std::size_t pos = 0;  // the model: data[pos..] is what is still to come
    int ops = 0;
    while (pos < data.size() && ops++ < 100000) {
      const std::size_t rest = data.size() - pos;
      switch (rng() % 6) {
        case 0:
        case 1: {
          char d = rng() % 2 ? '\n' : ';';
          std::size_t maxb = rng() % 3 == 0 ? rng() % 8 : 1 + rng() % 200;
          std::string got = in.read_until(d, maxb);
          std::size_t lim = std::min(rest, maxb);
          std::size_t hit = data.find(d, pos);
          std::size_t want = hit != std::string::npos && hit - pos < lim ? hit - pos + 1 : lim;
          REQUIRE_MESSAGE(got == data.substr(pos, want), "seed " << seed << " read_until at " << pos);
          pos += want;
          break;
        }
        case 2: {
          std::size_t n = rng() % 300;
          std::string got = in.read(n);
          std::size_t want = std::min(rest, n);
          REQUIRE_MESSAGE(got == data.substr(pos, want), "seed " << seed << " read at " << pos);
          pos += want;
          break;
        }
        case 3: {
          std::size_t n = std::min<std::size_t>(rest, rng() % 300);
          std::string buf(n, '\0');
          in.read_exactly(buf.data(), n);
          REQUIRE_MESSAGE(buf == data.substr(pos, n), "seed " << seed << " read_exactly at " << pos);
          pos += n;
          break;
        }
        case 4: {
          std::size_t n = 1 + rng() % 300;
          std::string buf(n, '\0');
          std::size_t k = in.read_some(buf.data(), n);
          REQUIRE_MESSAGE(k > 0, "seed " << seed);
          REQUIRE_MESSAGE(buf.substr(0, k) == data.substr(pos, k), "seed " << seed << " read_some at " << pos);
          pos += k;
          break;
        }
        case 5: {
          auto b = in.buffered();
          REQUIRE_MESSAGE(std::string(b) == data.substr(pos, b.size()), "seed " << seed << " buffered at " << pos);
          std::size_t k = rng() % (b.size() + 2);
          in.consume(k);
          pos += std::min(k, b.size());
          break;
        }
      }
    }
    CHECK(pos == data.size());
    CHECK(in.read_line().empty());
    CHECK(in.read(5).empty());
    w.get();
  }
}

// ---- stream_server: serve_forever() from its own handler, stop()'s default ------------------

namespace {
void own_handler_serve_forever(cogent::pool* workers) {
  cogent::net::server_options o;
  o.workers = workers;
  std::atomic<int> returned{0};
  cogent::net::stream_server* self = nullptr;
  cogent::net::stream_server srv(
      address::ipv4_loopback(0),
      [&](stream_socket& s, const address&) {
        self->serve_forever();  // returns once stopping has begun
        ++returned;
        s.write_all("bye\n");
      },
      o);
  self = &srv;
  srv.start();
  auto c = stream_socket::connect(srv.address(), 2s);
  for (int i = 0; i < 200 && srv.client_count() == 0; ++i) {
    cogent::sleep(5ms);
  }
  REQUIRE(srv.client_count() == 1);
  auto stopper = cogent::spawn([&] { srv.stop(5s); });
  buffered_reader in(c);
  CHECK(in.read_line(100, 3s) == "bye\n");
  CHECK(stopper.join(3s));
  CHECK(returned == 1);
  CHECK(srv.client_count() == 0);
}
}  // namespace

COGENT_TEST_CASE("review5: a handler in serve_forever() returns on stop(), handlers in a server_options::workers pool") {
  cogent::pool workers(4);
  own_handler_serve_forever(&workers);
}
