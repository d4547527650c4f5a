// tests/net/server_review2_test.cpp — second adversarial review of net/server.cpp and net/resolver.cpp.
//
// Failing cases: on_error misses a non-idle ETIMEDOUT and a handler's own EBADF; a killed or timed-out
// serve_forever() leaves the server running (gevent stops it); the default threadpool's workers take
// a process-directed signal meant for wait_for_signal(); wait_for_signal() accepts sets it can never report.
// Passing cases kept: stop() before start(), Timeout/kill of a queued lookup, destroying a finished server in the hub.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "hub/pool.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/threadpool.hpp"
#include "hub/timeout.hpp"
#include "net/net.hpp"
#include "tests/net/net_support.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::test::echo_handler;
using cogent::net::address;
using cogent::net::stream_server;
using cogent::net::stream_socket;
using cogent::test::errno_of;
using cogent::test::open_fds;

// ---- wait_for_signal() ------------------------------------------------------------------

// The scenario runs in a fresh process (this binary re-executed with only this case selected):
// the default threadpool must be created there, by resolve(), as in an application. A fork()ed
// child would inherit a pool object whose worker threads it does not have.
#define R2_SIGNAL_CASE "review2: wait_for_signal receives SIGTERM after resolve() started the library's worker threads"
COGENT_TEST_CASE(R2_SIGNAL_CASE, doctest::timeout(20)) {
  if (std::getenv("COGENT_R2_SIGNAL_CHILD") != nullptr) {
    (void)cogent::net::resolve("localhost", 80);  // starts the default threadpool (signals unblocked there)
    for (int round = 0; round < 8; ++round) {  // the kernel picks the receiving thread: several tries
      auto sender = cogent::spawn([] {
        cogent::sleep(5ms);
        ::kill(::getpid(), SIGTERM);  // what `kill <pid>` does: a process-directed signal
      });
      int sig = cogent::net::wait_for_signal({SIGTERM}, 2s);
      sender.join();
      CHECK(sig == SIGTERM);
    }
    return;
  }
  std::fflush(nullptr);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::setenv("COGENT_R2_SIGNAL_CHILD", "1", 1);
    int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, 1);
    ::execl("/proc/self/exe", "server_review2_test", "-tc=" R2_SIGNAL_CASE, static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  pid_t r = 0;
  for (int i = 0; i < 1500 && (r = ::waitpid(pid, &status, WNOHANG)) == 0; ++i) {
    cogent::sleep(10ms);
  }
  if (r == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    FAIL("the child hung");
  }
  CHECK_MESSAGE(!WIFSIGNALED(status), "the process was killed by signal ", WIFSIGNALED(status) ? WTERMSIG(status) : 0,
                " while a fiber waited for it in wait_for_signal()");
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
}

COGENT_TEST_CASE("review2: wait_for_signal rejects a set it can never report (empty or an invalid signal number)",
                 doctest::timeout(10)) {
  auto t0 = cogent::clock::now();
  CHECK_THROWS((void)cogent::net::wait_for_signal({}, 100ms));
  CHECK_THROWS((void)cogent::net::wait_for_signal({0}, 100ms));
  CHECK_THROWS((void)cogent::net::wait_for_signal({100000}, 100ms));
  MESSAGE("took " << std::chrono::duration_cast<std::chrono::milliseconds>(cogent::clock::now() - t0).count() << " ms");
}

COGENT_TEST_CASE("review2: stop() before start(): serve_forever returns at once, start throws, nothing listens", doctest::timeout(10)) {
  stream_server srv(address::ipv4_loopback(0), echo_handler);
  srv.stop(1s);
  CHECK_FALSE(srv.serving());
  srv.serve_forever();
  CHECK_THROWS_AS(srv.start(), std::logic_error);
  int err = errno_of([&] { (void)stream_socket::connect(srv.address(), 500ms); });
  CHECK(err == ECONNREFUSED);
}

COGENT_TEST_CASE("review2: a Timeout or kill lands at once while the lookup waits for a busy threadpool", doctest::timeout(10)) {
  std::vector<cogent::task<void>> busy;
  auto n = cogent::default_threadpool().size();
  for (std::size_t i = 0; i < n; ++i) {
    busy.push_back(cogent::spawn([] { cogent::default_threadpool().run_detachable([] { std::this_thread::sleep_for(400ms); return 0; }); }));
  }
  cogent::sleep(10ms);
  auto t0 = cogent::clock::now();
  bool to_raised = false;
  try {
    cogent::timeout to(50ms);
    (void)cogent::net::create_connection("localhost", 1, 1s);
  } catch (const cogent::timeout_error&) {
    to_raised = true;
  }
  CHECK(to_raised);
  CHECK(cogent::clock::now() - t0 < 300ms);
  auto k = cogent::spawn([] { (void)cogent::net::resolve("localhost", 1); });
  cogent::sleep(10ms);
  t0 = cogent::clock::now();
  k.kill();
  CHECK(k.killed());
  CHECK(cogent::clock::now() - t0 < 100ms);
  cogent::joinall(std::vector<cogent::task_base>(busy.begin(), busy.end()));
  std::this_thread::sleep_for(50ms);
}

namespace {
// collected is what on_error saw.
struct collected {
  int calls = 0;
  std::string last;
};
cogent::net::server_options collecting(collected& c) {
  cogent::net::server_options opts;
  opts.on_error = [&c](const address&, std::exception_ptr e) {
    ++c.calls;
    c.last = cogent::describe_exception(e);
  };
  return opts;
}
}  // namespace

COGENT_TEST_CASE("review2: an ETIMEDOUT that is not the idle timeout (the handler's own upstream) goes to on_error",
                 doctest::timeout(10)) {
  collected seen;
  bool handler_got_etimedout = false;
  stream_server srv(
      address::ipv4_loopback(0),
      [&](stream_socket& s, const address&) {
        char c;
        s.read_exactly(&c, 1);
        int sv[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
        stream_socket upstream(sv[0]);
        stream_socket peer(sv[1]);
        try {
          (void)upstream.read_some(&c, 1, 20ms);  // the upstream is silent: its own call timeout
        } catch (const std::system_error& e) {
          handler_got_etimedout = e.code().value() == ETIMEDOUT;
          throw;
        }
      },
      collecting(seen));
  srv.start();
  auto c = stream_socket::connect(srv.address(), 1s);
  c.write_all("x");
  char b;
  (void)errno_of([&] { (void)c.read_some(&b, 1, 1s); });  // the server closes
  cogent::sleep(10ms);
  CHECK(handler_got_etimedout);
  CHECK_MESSAGE(seen.calls == 1, "an upstream timeout (no idle_timeout configured) was swallowed as a disconnect");
  srv.stop(1s);
}

COGENT_TEST_CASE("review2: EBADF from a handler's own bug (not after stop) goes to on_error", doctest::timeout(10)) {
  collected seen;
  stream_server srv(
      address::ipv4_loopback(0),
      [&](stream_socket& s, const address&) {
        char c;
        s.read_exactly(&c, 1);
        stream_socket mine = std::move(s);  // hands the client to a helper...
        mine.close();
        (void)s.read_some(&c, 1);  // ...then uses the moved-from socket: EBADF, a bug
      },
      collecting(seen));
  srv.start();
  auto c = stream_socket::connect(srv.address(), 1s);
  c.write_all("x");
  char b;
  (void)errno_of([&] { (void)c.read_some(&b, 1, 1s); });
  cogent::sleep(10ms);
  CHECK_MESSAGE(seen.calls == 1, "a handler's EBADF (server still serving) was swallowed as a disconnect");
  srv.stop(1s);
}

COGENT_TEST_CASE("review2: killing the task in serve_forever() stops the server (gevent: finally stop)",
                 doctest::timeout(10)) {
  stream_server srv(address::ipv4_loopback(0), echo_handler);
  auto server_task = cogent::spawn([&] { srv.serve_forever(); });
  cogent::sleep(5ms);
  auto c = stream_socket::connect(srv.address(), 1s);  // a running handler
  c.write_all("hi");
  char b[2];
  c.read_exactly(b, 2, 1s);
  server_task.kill();
  CHECK(server_task.killed());
  CHECK_MESSAGE(!srv.serving(), "still serving after its serve_forever() task was killed");
  int err = errno_of([&] { (void)stream_socket::connect(srv.address(), 200ms); });
  CHECK_MESSAGE(err == ECONNREFUSED, "connect after serve_forever() was killed: errno ", err, " (0 = accepted)");
  srv.stop(0s);
}

COGENT_TEST_CASE("review2: a Timeout around serve_forever() stops the server (gevent: finally stop)",
                 doctest::timeout(10)) {
  stream_server srv(address::ipv4_loopback(0), echo_handler);
  bool timed_out = false;
  try {
    cogent::timeout to(30ms);
    srv.serve_forever();
  } catch (const cogent::timeout_error&) {
    timed_out = true;
  }
  CHECK(timed_out);
  CHECK_MESSAGE(!srv.serving(), "still serving after serve_forever() was timed out");
  srv.stop(0s);
}

COGENT_TEST_CASE("review2: a stopped or never started server may be destroyed inside a post() callback", doctest::timeout(10)) {
  auto srv = std::make_unique<stream_server>(address::ipv4_loopback(0), echo_handler);
  srv->start();
  {
    auto c = stream_socket::connect(srv->address(), 1s);
    c.write_all("x");
    char b;
    c.read_exactly(&b, 1, 1s);
  }
  srv->stop(1s);
  auto never = std::make_unique<stream_server>(address::ipv4_loopback(0), echo_handler);
  cogent::event done;
  cogent::hub::current().post([&] {
    srv.reset();
    never.reset();
    done.set();
  });
  done.wait();
  CHECK(!srv);
}
