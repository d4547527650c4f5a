// tests/monkey/hiredis_test.cpp — unmodified libhiredis (blocking API) made concurrent by patch_all().
//
// Starts redis-server on a free 127.0.0.1 port (no persistence) and talks to it with hiredis's
// synchronous API from many fibers: 50 BLPOPs with a 0.2 s server-side timeout overlap (serial:
// 10 s); 100 fibers doing SET/GET with every reply checked; a fiber killed inside a blocking
// BLPOP gets hiredis's I/O error back (EINTR, then ECANCELED on hiredis's retry) and the kill is
// raised at its next cogent switch point.
#include <hiredis/hiredis.h>

#include <chrono>
#include <string>
#include <vector>

#include "hub/task.hpp"
#include "monkey/monkey.hpp"
#include "tests/monkey/servers.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;

namespace {

// redis_server is a throw-away redis-server on a free port.
struct redis_server {
  cogent::test::temp_dir dir;
  int port = cogent::test::free_port();
  cogent::test::child_process proc{{"redis-server", "--port", std::to_string(port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no", "--dir", dir.path(), "--loglevel",
                                    "warning"}};
  bool up = proc.started() && cogent::test::wait_listening(port);
};

// reply_ok() frees r and says whether it is a string equal to want (or a status "OK").
bool reply_is(redisReply* r, int type, const std::string& want) {
  bool ok = r != nullptr && r->type == type && (want.empty() || std::string(r->str, r->len) == want);
  if (r != nullptr) {
    freeReplyObject(r);
  }
  return ok;
}

}  // namespace

COGENT_TEST_CASE("50 fibers BLPOP with a 0.2 s timeout at once", doctest::timeout(60)) {
  cogent::monkey::patch_all();
  redis_server srv;
  REQUIRE(srv.up);
  auto t0 = std::chrono::steady_clock::now();
  std::vector<cogent::task<bool>> tasks;
  for (int i = 0; i < 50; ++i) {
    tasks.push_back(cogent::spawn([&srv, i] {
      redisContext* c = redisConnect("127.0.0.1", srv.port);
      if (c == nullptr || c->err) {
        redisFree(c);
        return false;
      }
      auto* r = static_cast<redisReply*>(redisCommand(c, "BLPOP empty:%d 0.2", i));
      bool ok = r != nullptr && r->type == REDIS_REPLY_NIL;
      if (r != nullptr) {
        freeReplyObject(r);
      }
      redisFree(c);
      return ok;
    }));
  }
  cogent::joinall(tasks);
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (auto& t : tasks) {
    CHECK(t.get());
  }
  MESSAGE("50 x BLPOP 0.2 s took ", took, " s (serial: 10 s)");
  CHECK(took >= 0.19);
  CHECK(took < 1.0);
}

COGENT_TEST_CASE("100 fibers SET/GET with every reply checked", doctest::timeout(60)) {
  cogent::monkey::patch_all();
  redis_server srv;
  REQUIRE(srv.up);
  std::vector<cogent::task<int>> tasks;
  for (int i = 0; i < 100; ++i) {
    tasks.push_back(cogent::spawn([&srv, i] {
      redisContext* c = redisConnect("127.0.0.1", srv.port);
      if (c == nullptr || c->err) {
        redisFree(c);
        return -1;
      }
      int good = 0;
      for (int j = 0; j < 50; ++j) {
        // Built with append: GCC 12 warns falsely (-Wrestrict) on "literal" + std::string.
        std::string key = "k:";
        key.append(std::to_string(i)).append(":").append(std::to_string(j));
        std::string val = "v";
        val.append(std::to_string(i * 1000 + j)).append(static_cast<std::size_t>(j * 37), 'x');
        good += reply_is(
            static_cast<redisReply*>(redisCommand(c, "SET %s %b", key.c_str(), val.data(), val.size())),
            REDIS_REPLY_STATUS, "OK");
        good += reply_is(static_cast<redisReply*>(redisCommand(c, "GET %s", key.c_str())), REDIS_REPLY_STRING,
                         val);
        if (j % 10 == 0) {
          cogent::yield();  // interleave the fibers' commands further
        }
      }
      redisFree(c);
      return good;
    }));
  }
  for (auto& t : tasks) {
    CHECK(t.get() == 100);
  }
}

COGENT_TEST_CASE("a fiber killed inside a blocking BLPOP gets hiredis's error, then the kill",
                 doctest::timeout(30)) {
  cogent::monkey::patch_all();
  redis_server srv;
  REQUIRE(srv.up);
  bool got_null = false;
  int err = 0;
  bool after = false;
  auto t = cogent::spawn([&] {
    redisContext* c = redisConnect("127.0.0.1", srv.port);
    REQUIRE(c != nullptr);
    REQUIRE(c->err == 0);
    void* r = redisCommand(c, "BLPOP never 0");  // blocks forever
    got_null = r == nullptr;
    err = c->err;
    if (r != nullptr) {
      freeReplyObject(r);
    }
    redisFree(c);
    cogent::yield();  // the pending kill is raised here
    after = true;
  });
  cogent::sleep(100ms);
  t.kill();
  CHECK(t.killed());
  CHECK(got_null);
  CHECK(err == REDIS_ERR_IO);
  CHECK_FALSE(after);
}
