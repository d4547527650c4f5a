// tests/monkey/monkey_programs_test.cpp — whole "unmodified blocking programs" a gevent user would
// monkey-patch, run many at once as fibers on one thread: a line-based TCP server written with
// accept/read/write and 50 blocking clients resolving "localhost"; hiredis synchronous clients
// pipelining INCR; libcurl easy handles against a tiny blocking HTTP server in another fiber; the
// sleep family mixed with poll/select timeouts; a producer/consumer framing with MSG_PEEK; 100
// getaddrinfo/getnameinfo at once; stdio, popen() and system(). Each checks the results exactly,
// that the programs overlapped (total ~ the longest, not the sum) and that no fd leaked; the same
// code on a plain std::thread (no hub) must behave as libc. hiredis and libcurl are dlopen()ed (this
// binary does not link them): their read/write/poll calls still reach the hooks.
// When written, everything passed (shared and static builds) except the two skipped cases, both
// "blocks the whole thread, undocumented": fgets() on an empty pipe (glibc stdio reads with its
// internal __read) and open() of a FIFO whose other end another fiber opens. system()/popen()
// give correct results but block the hub while the child runs (recorded, not asserted).
#include <arpa/inet.h>
#include <curl/curl.h>
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "hub/task.hpp"
#include "hub/timeout.hpp"
#include "monkey/monkey.hpp"
#include "tests/monkey/fibers.hpp"
#include "tests/monkey/servers.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using cogent::test::since;

namespace {

using cogent::test::open_fds;

// ---- program 1: a blocking line server and its blocking clients --------------------------------

// listen_loopback() is an ordinary blocking IPv4 listener on 127.0.0.1:0; *port gets its port.
int listen_loopback(int* port) {
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(s, 512) != 0) {
    ::close(s);
    return -1;
  }
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return s;
}

// write_all() is the usual blocking "sendall".
bool write_all(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) {
        continue;
      }
      return false;
    }
    off += static_cast<std::size_t>(n);
  }
  return true;
}

// serve_lines() handles one connection: for each line "x" it waits `delay_us` (usleep), then
// answers "echo:x\n", until EOF. Byte-at-a-time-agnostic: read() chunks are reassembled.
void serve_lines(int conn, useconds_t delay_us) {
  std::string pending;
  char buf[256];
  for (;;) {
    ssize_t n = ::read(conn, buf, sizeof buf);
    if (n <= 0) {
      break;
    }
    pending.append(buf, static_cast<std::size_t>(n));
    std::size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
      std::string line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      ::usleep(delay_us);
      if (!write_all(conn, "echo:" + line + "\n")) {
        ::close(conn);
        return;
      }
    }
  }
  ::close(conn);
}

// connect_localhost() is the textbook client: getaddrinfo("localhost"), try each address in turn,
// set SO_RCVTIMEO. -1 if none connects.
int connect_localhost(int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo("localhost", std::to_string(port).c_str(), &hints, &res) != 0) {
    return -1;
  }
  int fd = -1;
  for (addrinfo* p = res; p != nullptr; p = p->ai_next) {
    fd = ::socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol);
    if (fd < 0) {
      continue;
    }
    if (::connect(fd, p->ai_addr, p->ai_addrlen) == 0) {
      break;
    }
    ::close(fd);
    fd = -1;
  }
  ::freeaddrinfo(res);
  if (fd >= 0) {
    timeval tv{3, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  return fd;
}

// line_client() sends `lines` lines (in two send() calls each, to split them), reads the answers
// with recv() and returns how many came back exactly right (-1: no connection).
int line_client(int port, int id, int lines) {
  int fd = connect_localhost(port);
  if (fd < 0) {
    return -1;
  }
  int good = 0;
  std::string in;
  for (int i = 0; i < lines; ++i) {
    std::string line = std::string("c") + std::to_string(id) + "-l" + std::to_string(i) + std::string(static_cast<std::size_t>(id * 7 + i), 'z');
    std::string a = line.substr(0, line.size() / 2), b = line.substr(line.size() / 2) + "\n";
    if (::send(fd, a.data(), a.size(), 0) != static_cast<ssize_t>(a.size()) ||
        ::send(fd, b.data(), b.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(b.size())) {
      break;
    }
    std::string want = "echo:" + line + "\n";
    while (in.size() < want.size()) {
      char buf[128];
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) {
        break;
      }
      in.append(buf, static_cast<std::size_t>(n));
    }
    if (in.compare(0, want.size(), want) == 0) {
      ++good;
    }
    in.erase(0, std::min(in.size(), want.size()));
  }
  ::close(fd);
  return good;
}

// ---- hiredis and libcurl, dlopen()ed -----------------------------------------------------------

struct hiredis_api {
  void* lib = ::dlopen("libhiredis.so", RTLD_NOW | RTLD_GLOBAL);
  decltype(&::redisConnect) connect = sym<decltype(&::redisConnect)>("redisConnect");
  decltype(&::redisCommand) command = sym<decltype(&::redisCommand)>("redisCommand");
  decltype(&::redisAppendCommand) append = sym<decltype(&::redisAppendCommand)>("redisAppendCommand");
  decltype(&::redisGetReply) get_reply = sym<decltype(&::redisGetReply)>("redisGetReply");
  decltype(&::freeReplyObject) free_reply = sym<decltype(&::freeReplyObject)>("freeReplyObject");
  decltype(&::redisFree) free = sym<decltype(&::redisFree)>("redisFree");
  template <class F>
  F sym(const char* name) {
    return lib != nullptr ? reinterpret_cast<F>(::dlsym(lib, name)) : nullptr;
  }
  bool ok() const { return lib && connect && command && append && get_reply && free_reply && free; }
  static hiredis_api& get() {
    static hiredis_api api;
    return api;
  }
};

struct curl_api {
  void* lib = ::dlopen("libcurl.so.4", RTLD_NOW | RTLD_GLOBAL);
  decltype(&::curl_global_init) global_init = sym<decltype(&::curl_global_init)>("curl_global_init");
  decltype(&::curl_easy_init) init = sym<decltype(&::curl_easy_init)>("curl_easy_init");
  decltype(&::curl_easy_setopt) setopt = sym<decltype(&::curl_easy_setopt)>("curl_easy_setopt");
  decltype(&::curl_easy_perform) perform = sym<decltype(&::curl_easy_perform)>("curl_easy_perform");
  decltype(&::curl_easy_getinfo) getinfo = sym<decltype(&::curl_easy_getinfo)>("curl_easy_getinfo");
  decltype(&::curl_easy_cleanup) cleanup = sym<decltype(&::curl_easy_cleanup)>("curl_easy_cleanup");
  template <class F>
  F sym(const char* name) {
    return lib != nullptr ? reinterpret_cast<F>(::dlsym(lib, name)) : nullptr;
  }
  bool ok() const { return lib && global_init && init && setopt && perform && getinfo && cleanup; }
  static curl_api& get() {
    static curl_api api;
    static bool inited = api.ok() && api.global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
    (void)inited;
    return api;
  }
};

struct redis_server {
  cogent::test::temp_dir dir;
  int port = cogent::test::free_port();
  cogent::test::child_process proc{{"redis-server", "--port", std::to_string(port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no", "--dir", dir.path(), "--loglevel",
                                    "warning"}};
  bool up = proc.started() && cogent::test::wait_listening(port);
};

// ---- a tiny blocking HTTP/1.0 server ------------------------------------------------------------

std::string http_body(const std::string& path) {
  std::string b;
  for (int i = 0; b.size() < 20000; ++i) {
    b += path + ":" + std::to_string(i) + "\n";
  }
  return b;
}

// serve_http() answers one request on conn after `delay_us`, Connection: close.
void serve_http(int conn, useconds_t delay_us) {
  std::string req;
  char buf[1024];
  while (req.find("\r\n\r\n") == std::string::npos) {
    ssize_t n = ::recv(conn, buf, sizeof buf, 0);
    if (n <= 0) {
      ::close(conn);
      return;
    }
    req.append(buf, static_cast<std::size_t>(n));
  }
  std::string path = req.substr(4, req.find(' ', 4) - 4);  // "GET /x HTTP/1.1"
  std::string body = http_body(path);
  ::usleep(delay_us);
  std::string head = "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) +
                     "\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n";
  write_all(conn, head);
  // The body in pieces with small pauses: curl has to wait in poll() more than once.
  for (std::size_t off = 0; off < body.size(); off += 5000) {
    write_all(conn, body.substr(off, 5000));
    ::usleep(5000);
  }
  ::close(conn);
}

std::size_t append_body(char* data, std::size_t size, std::size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}

std::string curl_get(const std::string& url, long* status) {
  auto& c = curl_api::get();
  CURL* h = c.init();
  std::string body;
  c.setopt(h, CURLOPT_URL, url.c_str());
  c.setopt(h, CURLOPT_WRITEFUNCTION, append_body);
  c.setopt(h, CURLOPT_WRITEDATA, &body);
  c.setopt(h, CURLOPT_NOSIGNAL, 1L);
  c.setopt(h, CURLOPT_TIMEOUT, 10L);
  CURLcode rc = c.perform(h);
  c.getinfo(h, CURLINFO_RESPONSE_CODE, status);
  c.cleanup(h);
  return rc == CURLE_OK ? body : "curl error " + std::to_string(rc);
}

// ---- framing with MSG_PEEK ----------------------------------------------------------------------

std::string frame(const std::string& payload) {
  uint32_t len = htonl(static_cast<uint32_t>(payload.size()));
  return std::string(reinterpret_cast<const char*>(&len), 4) + payload;
}

// produce() sends `count` frames, each split into 3 writes with short sleeps between.
void produce(int fd, int id, int count) {
  for (int i = 0; i < count; ++i) {
    std::string f = frame(std::string("p") + std::to_string(id) + "#" + std::to_string(i) + std::string(static_cast<std::size_t>(i * 13 % 300), 'q'));
    std::size_t a = 2, b = f.size() / 2;  // the split also cuts the 4-byte header
    ::send(fd, f.data(), a, 0);
    ::usleep(1000);
    ::send(fd, f.data() + a, b - a, 0);
    ::nanosleep(std::array<timespec, 1>{timespec{0, 500000}}.data(), nullptr);
    ::send(fd, f.data() + b, f.size() - b, 0);
  }
  ::shutdown(fd, SHUT_WR);
}

// consume_peek_waitall() reads the header with MSG_PEEK|MSG_WAITALL, then the frame with
// MSG_WAITALL. Returns the payloads in order.
std::vector<std::string> consume_peek_waitall(int fd) {
  std::vector<std::string> out;
  for (;;) {
    uint32_t len;
    ssize_t n = ::recv(fd, &len, 4, MSG_PEEK | MSG_WAITALL);
    if (n > 0 && n < 4) {
      ::usleep(200);  // AF_UNIX: PEEK does not wait for all (TCP does)
      continue;
    }
    if (n != 4) {
      break;
    }
    std::size_t total = 4 + ntohl(len);
    std::string f(total, '\0');
    if (::recv(fd, f.data(), total, MSG_WAITALL) != static_cast<ssize_t>(total)) {
      out.push_back("short frame");
      break;
    }
    out.push_back(f.substr(4));
  }
  return out;
}

// consume_peek_poll() is the other style: poll() for input, MSG_PEEK what is there, take a frame
// only once it is all there.
std::vector<std::string> consume_peek_poll(int fd) {
  std::vector<std::string> out;
  std::string peek(4096, '\0');
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 3000) != 1) {
      out.push_back("poll timeout");
      break;
    }
    ssize_t n = ::recv(fd, peek.data(), peek.size(), MSG_PEEK);
    if (n <= 0) {
      break;  // EOF
    }
    if (n < 4) {
      ::usleep(200);
      continue;
    }
    uint32_t len;
    std::memcpy(&len, peek.data(), 4);
    std::size_t total = 4 + ntohl(len);
    if (static_cast<std::size_t>(n) < total) {
      ::usleep(200);
      continue;
    }
    std::string f(total, '\0');
    if (::recv(fd, f.data(), total, 0) != static_cast<ssize_t>(total)) {
      out.push_back("short read");
      break;
    }
    out.push_back(f.substr(4));
  }
  return out;
}

std::vector<std::string> expected_frames(int id, int count) {
  std::vector<std::string> v;
  for (int i = 0; i < count; ++i) {
    std::string f = "p";  // stepwise: g++ 12 -Wrestrict false positive on chained operator+
    f += std::to_string(id);
    f += '#';
    f += std::to_string(i);
    f.append(static_cast<std::size_t>(i * 13 % 300), 'q');
    v.push_back(std::move(f));
  }
  return v;
}

// ---- name lookups ------------------------------------------------------------------------------

// lookup_localhost() resolves localhost (IPv4) and reverse-resolves 127.0.0.1; "" on success,
// else what went wrong.
std::string lookup_localhost() {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo("localhost", "80", &hints, &res);
  if (rc != 0) {
    return std::string("getaddrinfo: ") + ::gai_strerror(rc);
  }
  auto* sin = reinterpret_cast<sockaddr_in*>(res->ai_addr);
  bool v4 = res->ai_family == AF_INET && sin->sin_addr.s_addr == htonl(INADDR_LOOPBACK) && ntohs(sin->sin_port) == 80;
  ::freeaddrinfo(res);
  if (!v4) {
    return "getaddrinfo: not 127.0.0.1:80";
  }
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(80);
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  rc = ::getnameinfo(reinterpret_cast<sockaddr*>(&a), sizeof a, host, sizeof host, serv, sizeof serv, NI_NAMEREQD);
  if (rc != 0) {
    return std::string("getnameinfo: ") + ::gai_strerror(rc);
  }
  if (std::string(host) != "localhost" || std::string(serv) != "http") {
    return "getnameinfo: " + std::string(host) + " " + serv;
  }
  rc = ::getnameinfo(reinterpret_cast<sockaddr*>(&a), sizeof a, host, sizeof host, serv, sizeof serv,
                     NI_NUMERICHOST | NI_NUMERICSERV);
  if (rc != 0 || std::string(host) != "127.0.0.1" || std::string(serv) != "80") {
    return "getnameinfo numeric";
  }
  // A failure must be the same EAI_ code as libc's.
  rc = ::getaddrinfo("not a number", nullptr, nullptr, &res);
  if (rc == 0) {
    ::freeaddrinfo(res);
    return "getaddrinfo accepted a bad name";
  }
  hints = addrinfo{};
  hints.ai_flags = AI_NUMERICHOST;
  rc = ::getaddrinfo("localhost", nullptr, &hints, &res);
  if (rc != EAI_NONAME) {
    if (rc == 0) {
      ::freeaddrinfo(res);
    }
    return "AI_NUMERICHOST: " + std::to_string(rc);
  }
  return "";
}

}  // namespace

// ================================================================================================

COGENT_TEST_CASE("a blocking line server and 50 blocking clients overlap in one thread", doctest::timeout(30)) {
  cogent::monkey::patch_all();
  int fds0 = open_fds();
  int port = 0;
  int ls = listen_loopback(&port);
  REQUIRE(ls >= 0);
  constexpr int clients = 50, lines = 3;
  constexpr useconds_t delay = 50000;  // 50 ms a line: one client alone takes 150 ms, serial 7.5 s
  std::vector<cogent::task<void>> handlers;
  auto server = cogent::spawn([&] {
    for (int i = 0; i < clients; ++i) {
      int c = ::accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) {
        break;
      }
      handlers.push_back(cogent::spawn(serve_lines, c, delay));
    }
  });
  auto t0 = steady::now();
  std::vector<cogent::task<int>> cs;
  for (int i = 0; i < clients; ++i) {
    cs.push_back(cogent::spawn(line_client, port, i, lines));
  }
  int good = 0;
  for (auto& c : cs) {
    good += c.get();
  }
  double took = since(t0);
  server.join();
  cogent::joinall(handlers);
  ::close(ls);
  CHECK(good == clients * lines);
  MESSAGE("50 clients x 3 lines at 50 ms: ", took, " s (serial 7.5 s)");
  CHECK(took >= 0.14);
  CHECK(took < 2.0);
  CHECK(open_fds() == fds0);
}

COGENT_TEST_CASE("the same line server and clients on plain threads behave as libc", doctest::timeout(30)) {
  cogent::monkey::patch_all();
  int fds0 = open_fds();
  int port = 0;
  int ls = listen_loopback(&port);
  REQUIRE(ls >= 0);
  constexpr int clients = 8, lines = 3;
  std::thread server([&] {
    std::vector<std::thread> hs;
    for (int i = 0; i < clients; ++i) {
      int c = ::accept(ls, nullptr, nullptr);
      if (c < 0) {
        break;
      }
      hs.emplace_back(serve_lines, c, 20000);
    }
    for (auto& h : hs) {
      h.join();
    }
  });
  std::atomic<int> good{0};
  auto t0 = steady::now();
  std::vector<std::thread> cs;
  for (int i = 0; i < clients; ++i) {
    cs.emplace_back([&, i] { good += line_client(port, i, lines); });
  }
  for (auto& c : cs) {
    c.join();
  }
  server.join();
  ::close(ls);
  CHECK(good.load() == clients * lines);
  CHECK(since(t0) < 2.0);
  CHECK(open_fds() == fds0);
}

COGENT_TEST_CASE("hiredis: 20 fibers pipeline INCR and the counter ends exact", doctest::timeout(60)) {
  cogent::monkey::patch_all();
  auto& r = hiredis_api::get();
  REQUIRE(r.ok());
  redis_server srv;
  REQUIRE(srv.up);
  int fds0 = open_fds();
  constexpr int fibers = 20, per = 200, batch = 25;
  auto t0 = steady::now();
  std::vector<cogent::task<std::string>> ts;
  for (int f = 0; f < fibers; ++f) {
    ts.push_back(cogent::spawn([&r, &srv, f]() -> std::string {
      redisContext* c = r.connect("127.0.0.1", srv.port);
      if (c == nullptr || c->err) {
        r.free(c);
        return "connect";
      }
      // Every fiber first waits 0.3 s on the server (BLPOP): 20 of them overlap.
      auto* b = static_cast<redisReply*>(r.command(c, "BLPOP nothing:%d 0.3", f));
      bool nil = b != nullptr && b->type == REDIS_REPLY_NIL;
      if (b) r.free_reply(b);
      if (!nil) {
        r.free(c);
        return "blpop";
      }
      long long last = 0;
      std::string err;
      for (int done = 0; done < per && err.empty(); done += batch) {
        for (int i = 0; i < batch; ++i) {
          r.append(c, "INCR counter");
        }
        for (int i = 0; i < batch; ++i) {
          void* v = nullptr;
          if (r.get_reply(c, &v) != REDIS_OK || v == nullptr) {
            err = "get_reply";
            break;
          }
          auto* rep = static_cast<redisReply*>(v);
          if (rep->type != REDIS_REPLY_INTEGER || rep->integer <= last) {
            err = "not increasing";
          }
          last = rep->integer;
          r.free_reply(rep);
        }
      }
      r.free(c);
      return err;
    }));
  }
  for (auto& t : ts) {
    CHECK(t.get() == "");
  }
  double took = since(t0);
  redisContext* c = r.connect("127.0.0.1", srv.port);
  REQUIRE(c != nullptr);
  auto* v = static_cast<redisReply*>(r.command(c, "GET counter"));
  REQUIRE(v != nullptr);
  CHECK(std::string(v->str, v->len) == std::to_string(fibers * per));
  r.free_reply(v);
  r.free(c);
  MESSAGE("20 hiredis fibers: ", took, " s (serial BLPOPs alone: 6 s)");
  CHECK(took >= 0.29);
  CHECK(took < 2.5);
  CHECK(open_fds() == fds0);
}

COGENT_TEST_CASE("libcurl: 12 easy handles fetch from a blocking HTTP server fiber in parallel",
                 doctest::timeout(60)) {
  cogent::monkey::patch_all();
  auto& c = curl_api::get();
  REQUIRE(c.ok());
  int fds0 = open_fds();
  int port = 0;
  int ls = listen_loopback(&port);
  REQUIRE(ls >= 0);
  constexpr int n = 12;
  std::vector<cogent::task<void>> handlers;
  auto server = cogent::spawn([&] {
    for (int i = 0; i < n; ++i) {
      int conn = ::accept(ls, nullptr, nullptr);
      if (conn < 0) {
        break;
      }
      handlers.push_back(cogent::spawn(serve_http, conn, 250000));
    }
  });
  auto t0 = steady::now();
  std::vector<cogent::task<bool>> gets;
  for (int i = 0; i < n; ++i) {
    gets.push_back(cogent::spawn([port, i] {
      long st = 0;
      std::string path = "/doc" + std::to_string(i);
      std::string body = curl_get("http://127.0.0.1:" + std::to_string(port) + path, &st);
      return st == 200 && body == http_body(path);
    }));
  }
  int ok = 0;
  for (auto& g : gets) {
    ok += g.get();
  }
  double took = since(t0);
  server.join();
  cogent::joinall(handlers);
  ::close(ls);
  CHECK(ok == n);
  MESSAGE("12 curl fetches at 0.25 s each: ", took, " s (serial 3 s)");
  CHECK(took >= 0.24);
  CHECK(took < 1.5);
  CHECK(open_fds() == fds0);
}

COGENT_TEST_CASE("sleep/usleep/nanosleep/clock_nanosleep/poll/select timeouts from 40 fibers overlap",
                 doctest::timeout(30)) {
  cogent::monkey::patch_all();
  constexpr int n = 40;
  std::vector<cogent::task<std::string>> ts;
  auto t0 = steady::now();
  for (int i = 0; i < n; ++i) {
    ts.push_back(cogent::spawn([i]() -> std::string {
      auto s0 = steady::now();
      // Four waits of 50 ms each in a different mix per fiber: 200 ms per fiber, 8 s serial.
      for (int k = 0; k < 4; ++k) {
        switch ((i + k) % 6) {
          case 0:
            if (::usleep(50000) != 0) return "usleep";
            break;
          case 1: {
            timespec ts{0, 50'000'000}, rem{9, 9};
            if (::nanosleep(&ts, &rem) != 0) return "nanosleep";
            break;
          }
          case 2:
            if (::poll(nullptr, 0, 50) != 0) return "poll";
            break;
          case 3: {
            timeval tv{0, 50000};
            if (::select(0, nullptr, nullptr, nullptr, &tv) != 0) return "select";
            // Linux select() writes back the time not slept: 0 after a timeout.
            if (tv.tv_sec != 0 || tv.tv_usec != 0) return "select tv " + std::to_string(tv.tv_usec);
            break;
          }
          case 4: {
            timespec ts{0, 50'000'000};
            if (::clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, nullptr) != 0) return "clock_nanosleep";
            break;
          }
          case 5: {
            // poll on a pipe nobody writes: a timeout with an fd.
            int p[2];
            if (::pipe(p) != 0) return "pipe";
            pollfd pf{p[0], POLLIN, 0};
            int r = ::poll(&pf, 1, 50);
            fd_set rd;
            FD_ZERO(&rd);
            FD_SET(p[0], &rd);
            timeval tv{0, 1000};
            int r2 = ::select(p[0] + 1, &rd, nullptr, nullptr, &tv);
            bool cleared = !FD_ISSET(p[0], &rd);
            ::close(p[0]);
            ::close(p[1]);
            if (r != 0 || pf.revents != 0 || r2 != 0 || !cleared) return "poll pipe";
            break;
          }
        }
      }
      double d = since(s0);
      if (d < 0.195) return "too short " + std::to_string(d);
      return "";
    }));
  }
  for (auto& t : ts) {
    CHECK(t.get() == "");
  }
  double took = since(t0);
  MESSAGE("40 fibers x 4 x 50 ms: ", took, " s (serial 8 s)");
  CHECK(took < 1.0);
}

COGENT_TEST_CASE("sleep(1) in 30 fibers takes ~1 s in all and returns 0", doctest::timeout(30)) {
  cogent::monkey::patch_all();
  auto t0 = steady::now();
  std::vector<cogent::task<unsigned>> ts;
  for (int i = 0; i < 30; ++i) {
    ts.push_back(cogent::spawn([] { return ::sleep(1); }));
  }
  for (auto& t : ts) {
    CHECK(t.get() == 0u);
  }
  double took = since(t0);
  CHECK(took >= 0.99);
  CHECK(took < 1.5);
}

COGENT_TEST_CASE("producer/consumer pairs framing with MSG_PEEK over socketpairs", doctest::timeout(30)) {
  cogent::monkey::patch_all();
  int fds0 = open_fds();
  constexpr int pairs = 10, frames = 40;
  std::vector<int> ends;
  std::vector<cogent::task<void>> producers;
  std::vector<cogent::task<std::vector<std::string>>> consumers;
  auto t0 = steady::now();
  for (int i = 0; i < pairs; ++i) {
    int s[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s) == 0);
    ends.push_back(s[0]);
    ends.push_back(s[1]);
    producers.push_back(cogent::spawn(produce, s[0], i, frames));
    if (i % 2 == 0) {
      consumers.push_back(cogent::spawn(consume_peek_waitall, s[1]));
    } else {
      consumers.push_back(cogent::spawn(consume_peek_poll, s[1]));
    }
  }
  for (int i = 0; i < pairs; ++i) {
    auto got = consumers[static_cast<std::size_t>(i)].get();
    auto want = expected_frames(i, frames);
    std::size_t k = 0;
    while (k < got.size() && k < want.size() && got[k] == want[k]) {
      ++k;
    }
    CHECK_MESSAGE(got == want, "pair ", i, (i % 2 == 0 ? " (PEEK|WAITALL)" : " (poll+PEEK)"), ": ", got.size(),
                  " frames, first difference at ", k, ": got '", (k < got.size() ? got[k].substr(0, 40) : "-"),
                  "' want '", (k < want.size() ? want[k].substr(0, 40) : "-"), "'");
  }
  cogent::joinall(producers);
  double took = since(t0);
  for (int fd : ends) {
    ::close(fd);
  }
  MESSAGE("10 framed streams: ", took, " s");
  CHECK(took < 2.0);
  CHECK(open_fds() == fds0);
}

COGENT_TEST_CASE("MSG_PEEK framing over TCP loopback, producer on a plain thread", doctest::timeout(30)) {
  cogent::monkey::patch_all();
  int port = 0;
  int ls = listen_loopback(&port);
  REQUIRE(ls >= 0);
  std::thread producer([&] {
    int c = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    if (::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
      int one = 1;
      ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      // The consumer first waits 100 ms for the first frame: the ticker's count below does not
      // depend on how fast this thread runs compared to the (possibly descheduled) hub's.
      std::this_thread::sleep_for(100ms);
      produce(c, 7, 30);
    }
    ::close(c);
  });
  int conn = ::accept(ls, nullptr, nullptr);
  REQUIRE(conn >= 0);
  cogent::test::ticker tk;
  auto got = consume_peek_waitall(conn);
  long ticks = tk.ticks;
  producer.join();
  CHECK(got == expected_frames(7, 30));
  CHECK(ticks > 10);  // the consumer parked, the ticker ran
  ::close(conn);
  ::close(ls);
}

COGENT_TEST_CASE("getaddrinfo/getnameinfo of localhost from 100 fibers at once", doctest::timeout(30)) {
  cogent::monkey::patch_all();
  std::string ref;
  std::thread([&] { ref = lookup_localhost(); }).join();  // libc's view first
  REQUIRE(ref == "");
  int fds0 = open_fds();
  cogent::test::ticker tk;
  std::vector<cogent::task<std::string>> ts;
  auto t0 = steady::now();
  for (int i = 0; i < 100; ++i) {
    ts.push_back(cogent::spawn(lookup_localhost));
  }
  int good = 0;
  for (auto& t : ts) {
    std::string r = t.get();
    if (r != "") {
      MESSAGE(r);
    }
    good += r == "";
  }
  CHECK(good == 100);
  MESSAGE("100 lookups: ", since(t0), " s, ticker ran ", tk.ticks, " times");
  CHECK(since(t0) < 5.0);
  CHECK(open_fds() <= fds0 + 2);  // the thread pool may keep its own (none expected)
}

// ---- stdio, popen, system ------------------------------------------------------------------------

COGENT_TEST_CASE("stdio over a pipe between fibers: fprintf/fflush and fgets", doctest::timeout(30)) {
  cogent::monkey::patch_all();
  int p[2];
  REQUIRE(::pipe(p) == 0);
  FILE* in = ::fdopen(p[0], "r");
  FILE* out = ::fdopen(p[1], "w");
  REQUIRE(in != nullptr);
  REQUIRE(out != nullptr);
  // The writer fills in lines with buffering, flushing only every 10.
  auto writer = cogent::spawn([&] {
    for (int i = 0; i < 100; ++i) {
      std::fprintf(out, "line %d %s\n", i, std::string(static_cast<std::size_t>(i), 'w').c_str());
      if (i % 10 == 9) {
        std::fflush(out);
      }
    }
    std::fclose(out);
  });
  // The reader only starts once everything is written: fgets never finds the pipe empty, so
  // this is the case that works even though glibc's stdio reads with its internal __read.
  writer.join();
  int good = 0;
  char line[256];
  for (int i = 0; std::fgets(line, sizeof line, in) != nullptr; ++i) {
    good += std::string(line) == std::string("line ") + std::to_string(i) + " " + std::string(static_cast<std::size_t>(i), 'w') + "\n";
  }
  std::fclose(in);
  CHECK(good == 100);
}

// KNOWN GAP, documented in monkey.hpp since stop 21 (kept skipped for when it closes). glibc's stdio reads a FILE with its internal __read, which no hook sees, so
// fgets()/fread()/getline() on an empty pipe or socket blocks the whole thread (the fiber that
// would write never runs). Expected (gevent-style "unmodified blocking code"): fgets parks only its
// fiber, or monkey.hpp's Known gaps says stdio is not cooperative. Actual: the writer fiber runs
// only after the fallback thread's write unblocks fgets 1 s later; the ticker does not tick.
COGENT_TEST_CASE("fgets on an empty pipe lets the writer fiber run", doctest::timeout(30) * doctest::skip(true)) {
  cogent::monkey::patch_all();
  int p[2];
  REQUIRE(::pipe(p) == 0);
  FILE* in = ::fdopen(p[0], "r");
  REQUIRE(in != nullptr);
  std::atomic<bool> done{false};
  auto writer = cogent::spawn([&] {
    ::usleep(100000);
    if (!done.exchange(true)) {
      [[maybe_unused]] ssize_t n = ::write(p[1], "fiber\n", 6);
    }
  });
  std::thread fallback([&] {
    std::this_thread::sleep_for(1s);
    if (!done.exchange(true)) {
      [[maybe_unused]] ssize_t n = ::write(p[1], "thread\n", 7);
    }
  });
  cogent::test::ticker tk;
  char line[64] = {};
  auto t0 = steady::now();
  std::fgets(line, sizeof line, in);
  double took = since(t0);
  long ticks = tk.ticks;
  fallback.join();
  writer.join();
  std::fclose(in);
  ::close(p[1]);
  CHECK(std::string(line) == "fiber\n");
  CHECK(ticks > 20);
  CHECK(took < 0.5);
}

// system() and pclose() are hooked (run on the thread pool: monkey_wait_test checks they
// cooperate); stdio reads of a popen()ed FILE* use glibc's internal __read and block the thread
// (monkey.hpp, Known gaps). This case records their results and fd bookkeeping.
COGENT_TEST_CASE("system() and popen() work from a fiber (stdio reads of popen block the thread)",
                 doctest::timeout(30)) {
  cogent::monkey::patch_all();
  int fds0 = open_fds();
  cogent::test::ticker tk;
  cogent::sleep(5ms);
  long before = tk.ticks;
  auto t0 = steady::now();
  int st = std::system("sleep 0.2; exit 3");
  double took = since(t0);
  long during = tk.ticks - before;
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 3);
  CHECK(took >= 0.19);
  MESSAGE("system(sleep 0.2): ticker ran ", during, " times");

  FILE* f = ::popen("echo one; sleep 0.1; echo two", "r");
  REQUIRE(f != nullptr);
  std::string all;
  char buf[64];
  while (std::fgets(buf, sizeof buf, f) != nullptr) {
    all += buf;
  }
  CHECK(::pclose(f) == 0);
  CHECK(all == "one\ntwo\n");
  // A pipe from popen() read with the hooked read() (classified lazily) then pclose()d.
  f = ::popen("printf abc", "r");
  REQUIRE(f != nullptr);
  char r[8] = {};
  ssize_t n = ::read(fileno(f), r, sizeof r);
  CHECK(::pclose(f) == 0);
  CHECK(n == 3);
  CHECK(std::string(r) == "abc");
  // The number pclose() freed behind the hooks is reused by a socketpair: works normally.
  int s[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  auto w = cogent::spawn([&] {
    ::usleep(20000);
    return ::send(s[1], "hey", 3, 0);
  });
  char c[4] = {};
  CHECK(::recv(s[0], c, 3, MSG_WAITALL) == 3);
  CHECK(w.get() == 3);
  CHECK(std::string(c) == "hey");
  ::close(s[0]);
  ::close(s[1]);
  CHECK(open_fds() == fds0);
}

// KNOWN GAP, documented in monkey.hpp since stop 21 (kept skipped for when it closes). open() of a FIFO is hooked only to reset the fd's table entry; the open
// itself is libc's, which blocks until the other end is opened. Two fibers of one thread opening
// the two ends of a FIFO deadlock the thread (here: until the fallback thread opens a reader after
// 1 s). Expected: the open parks the fiber (e.g. open O_NONBLOCK for readers, retry/poll for
// writers), or monkey.hpp's Known gaps says FIFO opens block the thread.
COGENT_TEST_CASE("two fibers open the two ends of a FIFO", doctest::timeout(30) * doctest::skip(true)) {
  cogent::monkey::patch_all();
  cogent::test::temp_dir dir;
  std::string path = dir.path() + "/fifo";
  REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
  std::atomic<bool> done{false};
  int rfd = -1;
  auto reader = cogent::spawn([&] {
    ::usleep(50000);
    if (!done.exchange(true)) {
      rfd = ::open(path.c_str(), O_RDONLY);
    }
  });
  int fallback_fd = -1;
  std::thread fallback([&] {
    std::this_thread::sleep_for(1s);
    if (!done.exchange(true)) {
      fallback_fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK);
    }
  });
  auto t0 = steady::now();
  int wfd = ::open(path.c_str(), O_WRONLY);
  double took = since(t0);
  fallback.join();
  reader.join();
  CHECK(wfd >= 0);
  CHECK(rfd >= 0);
  CHECK(took < 0.5);
  for (int fd : {wfd, rfd, fallback_fd}) {
    if (fd >= 0) ::close(fd);
  }
}

COGENT_TEST_CASE("stdio over a FIFO: reader opened O_NONBLOCK first, fprintf/fgets in fibers",
                 doctest::timeout(30)) {
  cogent::monkey::patch_all();
  cogent::test::temp_dir dir;
  std::string path = dir.path() + "/fifo";
  REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
  // The way that cannot block: the reader end first (O_NONBLOCK opens at once), then the writer
  // (a reader exists), then the reader made blocking again.
  int rfd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK);
  REQUIRE(rfd >= 0);
  FILE* out = std::fopen(path.c_str(), "w");
  REQUIRE(out != nullptr);
  REQUIRE(::fcntl(rfd, F_SETFL, ::fcntl(rfd, F_GETFL) & ~O_NONBLOCK) == 0);
  // The consumer uses read() (hooked): it parks while the producer fiber sleeps between lines.
  auto consumer = cogent::spawn([&] {
    std::string got;
    char buf[64];
    ssize_t n;
    while ((n = ::read(rfd, buf, sizeof buf)) > 0) {
      got.append(buf, static_cast<std::size_t>(n));
    }
    return got;
  });
  std::string want;
  for (int i = 0; i < 10; ++i) {
    std::fprintf(out, "row %d\n", i);
    want += "row " + std::to_string(i) + "\n";
    std::fflush(out);
    ::usleep(10000);
  }
  std::fclose(out);
  CHECK(consumer.get() == want);
  ::close(rfd);
}

// AF_UNIX stream sockets do not wait for MSG_WAITALL under MSG_PEEK (the kernel peeks what is
// queued and returns); TCP does. The hook must not "fix" that: same result as libc's.
COGENT_TEST_CASE("AF_UNIX recv MSG_PEEK|MSG_WAITALL returns the part there, as libc", doctest::timeout(10)) {
  cogent::monkey::patch_all();
  cogent::test::call_result got[2];
  for (int thread = 0; thread < 2; ++thread) {
    int s[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
    ::send(s[0], "ab", 2, 0);
    // "cd" comes only if the recv is still waiting after 500 ms (a recv that waits for all 4
    // bytes then returns 4): not at a fixed time a descheduled caller could reach the recv after.
    std::atomic<bool> returned{false};
    std::thread late([&] {
      for (int i = 0; i < 500 && !returned; ++i) {
        std::this_thread::sleep_for(1ms);
      }
      if (!returned) {
        ::send(s[0], "cd", 2, 0);
      }
    });
    char b[4];
    auto call = [&] { return ::recv(s[1], b, 4, MSG_PEEK | MSG_WAITALL); };
    got[thread] = thread ? cogent::test::libc_result(call) : cogent::test::here_result(call);
    returned = true;
    late.join();
    ::close(s[0]);
    ::close(s[1]);
  }
  CHECK(got[0] == got[1]);
  CHECK(got[1].first == 2);
}

COGENT_TEST_CASE("hiredis, libcurl and lookups on plain threads (no hub) while fibers run", doctest::timeout(60)) {
  cogent::monkey::patch_all();
  auto& r = hiredis_api::get();
  REQUIRE(r.ok());
  REQUIRE(curl_api::get().ok());
  redis_server srv;
  REQUIRE(srv.up);
  int port = 0;
  int ls = listen_loopback(&port);
  REQUIRE(ls >= 0);
  // The HTTP server is a fiber here; its clients are threads.
  std::vector<cogent::task<void>> handlers;
  auto server = cogent::spawn([&] {
    for (int i = 0; i < 4; ++i) {
      int conn = ::accept(ls, nullptr, nullptr);
      if (conn < 0) {
        break;
      }
      handlers.push_back(cogent::spawn(serve_http, conn, 100000));
    }
  });
  std::atomic<int> good{0};
  std::vector<std::thread> ths;
  for (int t = 0; t < 4; ++t) {
    ths.emplace_back([&, t] {
      redisContext* c = r.connect("127.0.0.1", srv.port);
      if (c == nullptr || c->err) {
        r.free(c);
        return;
      }
      for (int i = 0; i < 50; ++i) {
        r.append(c, "INCR tcounter");
      }
      int ok = 0;
      for (int i = 0; i < 50; ++i) {
        void* v = nullptr;
        if (r.get_reply(c, &v) == REDIS_OK && v != nullptr) {
          ok += static_cast<redisReply*>(v)->type == REDIS_REPLY_INTEGER;
          r.free_reply(v);
        }
      }
      r.free(c);
      long st = 0;
      std::string path = "/t" + std::to_string(t);
      bool body = curl_get("http://127.0.0.1:" + std::to_string(port) + path, &st) == http_body(path);
      good += (ok == 50) + body + (lookup_localhost() == "");
    });
  }
  // Meanwhile the hub keeps serving: join the threads from a fiber that polls.
  cogent::test::ticker tk;
  auto t0 = steady::now();
  for (auto& th : ths) {
    while (good.load() < 12 && since(t0) < 10) {
      cogent::sleep(2ms);
    }
    th.join();
  }
  server.join();
  cogent::joinall(handlers);
  ::close(ls);
  CHECK(good.load() == 12);
  redisContext* c = r.connect("127.0.0.1", srv.port);
  REQUIRE(c != nullptr);
  auto* v = static_cast<redisReply*>(r.command(c, "GET tcounter"));
  REQUIRE(v != nullptr);
  CHECK(std::string(v->str, v->len) == "200");
  r.free_reply(v);
  r.free(c);
}
