// tests/hub/session3_review_test.cpp — adversarial review of this session's other changes: fork()
// handling (hub::forget_in_child), timeout_duration's saturating conversion, iwait/wait_any's reports
// of failures they never handed out, and examples/09_many_cores. Each case names the behaviour it
// expects; every one failed (or crashed/hung, bounded) when written.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "hub/core.hpp"
#include "hub/sync.hpp"
#include "hub/task.hpp"
#include "hub/threadpool.hpp"
#include "net/socket.hpp"
#include "tests/child.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;

namespace {

struct boom : std::runtime_error {
  using std::runtime_error::runtime_error;
};
using reports = cogent::test::error_reports;

// in_child() is exit_code_in_child() bounded by 1 s.
template <class Fn>
int in_child(Fn fn) {
  return cogent::test::exit_code_in_child(std::move(fn), 1);
}

// ok_or_hub_error() is 0 if fn() returns or raises hub_error, 1 for any other exception.
template <class Fn>
int ok_or_hub_error(Fn fn) {
  try {
    fn();
  } catch (const cogent::hub_error&) {
  } catch (...) {
    return 1;
  }
  return 0;
}

}  // namespace

// ---- 1. fork() -------------------------------------------------------------------------------------
// core.hpp "fork():": in the child every call that needs the hub raises hub_error saying so. Calls
// that wake a parent's fiber reach the forgotten hub without that check: event::set() dereferences
// the null t_hub (wait_list::notify_all), lock::release() hands over through hub::current() inside
// a noexcept grant (std::terminate).
COGENT_TEST_CASE("fork: in the child, event::set() with a parent's fiber waiting on it does not crash",
                 doctest::timeout(10)) {
  cogent::event ev;
  auto waiter = cogent::spawn([&] { ev.wait(); });
  cogent::sleep(0s);  // the waiter is parked on ev
  int code = in_child([&] { return ok_or_hub_error([&] { ev.set(); }); });
  CHECK_MESSAGE(code == 0, "child ended with ", code);
  ev.set();
  CHECK(waiter.join(1s));
}

COGENT_TEST_CASE("fork: in the child, lock::release() with a parent's fiber waiting raises hub_error, no terminate",
                 doctest::timeout(10)) {
  cogent::lock mu;
  mu.acquire();
  auto waiter = cogent::spawn([&] {
    mu.acquire();
    mu.release();
  });
  cogent::sleep(0s);  // the waiter is parked on mu
  int code = in_child([&] { return ok_or_hub_error([&] { mu.release(); }); });
  CHECK_MESSAGE(code == 0, "child ended with ", code);
  mu.release();
  CHECK(waiter.join(1s));
}

// basic_socket::close() takes the fd out of the object, then calls hub::current(), which raises in
// the child: the fd is neither closed nor kept (the destructor sees -1). A child that closes the
// sockets it inherited (before an exec, say) leaks every one of them.
COGENT_TEST_CASE("fork: in the child, socket close() that raises hub_error still closes the fd",
                 doctest::timeout(10)) {
  auto l = cogent::net::listener::bind(cogent::net::address::ipv4_loopback(0));
  int fd = l.fd();
  int code = in_child([&] {
    int raised = ok_or_hub_error([&] { l.close(); });
    errno = 0;
    bool closed = ::fcntl(fd, F_GETFD) == -1 && errno == EBADF;
    return raised != 0 ? 2 : closed ? 0 : 1;
  });
  CHECK_MESSAGE(code == 0, "child ended with ", code, " (1: fd still open)");
}

// "a thread without a hub forks freely: the child makes its own" — but default_threadpool() is a
// process-wide object made once: in a child its worker threads do not exist, so a run() there (the
// resolver's path too) parks forever.
TEST_CASE("fork: a child of a thread without a hub can use default_threadpool() made before the fork") {
  CHECK(cogent::default_threadpool().run([] { return 1; }) == 1);  // the pool exists (its workers: ours)
  int code = -100;
  std::thread([&] {
    code = in_child([] {
      auto t = cogent::spawn([] { return cogent::default_threadpool().run([] { return 2; }); });
      return t.get() == 2 ? 0 : 1;
    });
  }).join();
  CHECK_MESSAGE(code == 0, "child ended with ", code, " (-14: SIGALRM, hung)");
}

// ---- 2. timeout_duration / saturate_ns ---------------------------------------------------------------
// saturate_ns() compares against duration_cast<from>(nanoseconds::max()), which for a narrow Rep
// wraps: for duration<int, micro> it is negative, so every non-negative value "saturates" to forever.
COGENT_TEST_CASE("timeout_duration: duration<int, micro>(1000) is 1 ms, not forever", doctest::timeout(10)) {
  using int_us = std::chrono::duration<int, std::micro>;
  CHECK(cogent::detail::saturate_ns(int_us(1000)) == 1ms);
  cogent::timeout_duration t = int_us(1000);
  CHECK(t == cogent::timeout_duration(1ms));
  auto late = cogent::spawn_later(int_us(1000), [] { return 5; });
  bool started = late.join(500ms);
  CHECK_MESSAGE(started, "spawn_later(duration<int, micro>(1000)) never started");
  if (!started) {
    late.kill();
  }
}

// The "finer or equal unit, fits" branch takes any integral Rep of at most 64 bits, unsigned too: a
// uint64 count of nanoseconds above INT64_MAX wraps to a negative timeout (at once) instead of max().
TEST_CASE("timeout_duration: a uint64 nanoseconds count beyond nanoseconds::max() saturates to max()") {
  using u64_ns = std::chrono::duration<std::uint64_t, std::nano>;
  CHECK(cogent::detail::saturate_ns(u64_ns(std::numeric_limits<std::uint64_t>::max())) ==
        std::chrono::nanoseconds::max());
  CHECK(cogent::detail::saturate_ns(u64_ns(std::uint64_t{1} << 63)) == std::chrono::nanoseconds::max());
}

// Saturation maps every duration at or below nanoseconds::min() (seconds::min(), -hours::max()) onto
// nanoseconds::min() — which is net::use_default. So a per-call timeout "very negative" (= at once,
// per deadline_after) means "the socket's default" and set_timeout() of one throws invalid_argument.
COGENT_TEST_CASE("timeout_duration: a socket call with seconds::min() times out at once, not after the default",
                 doctest::timeout(10)) {
  using namespace cogent::net;
  auto l = listener::bind(address::ipv4_loopback(0));
  auto c = stream_socket::connect(l.local_address(), 1s);
  auto s = l.accept(1s);
  CHECK_NOTHROW(c.set_timeout(-std::chrono::hours::max()));
  c.set_timeout(300ms);
  char b = 0;
  auto t0 = cogent::clock::now();
  CHECK_THROWS_AS(c.read_some(&b, 1, std::chrono::seconds::min()), std::system_error);
  CHECK(cogent::clock::now() - t0 < 150ms);
}

// ---- 3. iwait / wait_any reports -------------------------------------------------------------------
// ~iwait reports each failed task of _done[_returned..] — but a task listed twice is in _done twice:
// the one handed out (and, for joinall(raise_error), rethrown) is reported as well.
COGENT_TEST_CASE("iwait: joinall(raise_error) of a list naming a task twice rethrows its error and reports nothing",
                 doctest::timeout(10)) {
  reports r;
  auto a = cogent::spawn([] {
    cogent::sleep(2ms);
    throw boom("a");
  });
  CHECK_THROWS_AS(cogent::joinall({a, a}, std::nullopt, true), boom);
  CHECK_MESSAGE(r.seen.empty(), "reports seen: ", r.seen.size());
}

// A task that failed while the iwait existed, not handed out, but joined (and looked at) by another
// fiber was seen: the unjoined-error handler is for "a task nobody was waiting for". ~iwait reports
// it all the same.
COGENT_TEST_CASE("iwait: wait_any does not report a failure another fiber joined and looked at",
                 doctest::timeout(10)) {
  reports r;
  auto a = cogent::spawn([] {
    cogent::sleep(5ms);
    throw boom("a");
  });
  auto b = cogent::spawn([] {
    cogent::sleep(5ms);
    throw boom("b");
  });
  bool looked = false;
  auto watcher = cogent::spawn([&] {
    b.join();
    looked = b.exception() != nullptr;
  });
  auto first = cogent::wait_any({a, b});
  CHECK(first == a);
  watcher.join();
  CHECK(looked);
  CHECK_MESSAGE(r.seen.empty(), "reports seen: ", r.seen.size());
}

// Nested iwaits on the same tasks: the inner one (a wait_any) reports b, which the outer one then
// hands to its caller — reported and handled.
COGENT_TEST_CASE("iwait: an inner wait_any does not report a failure the outer iwait then hands out",
                 doctest::timeout(10)) {
  reports r;
  auto a = cogent::spawn([] {
    cogent::sleep(5ms);
    throw boom("a");
  });
  auto b = cogent::spawn([] {
    cogent::sleep(5ms);
    throw boom("b");
  });
  int handled = 0;
  {
    cogent::iwait outer(std::vector<cogent::task_base>{a, b});
    CHECK(cogent::wait_any({a, b}) == a);
    while (auto t = outer.next()) {
      handled += t.exception() != nullptr;
    }
  }
  CHECK(handled == 2);
  CHECK_MESSAGE(r.seen.empty(), "reports seen: ", r.seen.size());
}

// ---- 4. examples/09_many_cores ---------------------------------------------------------------------
// run_threads(): a worker thread whose server was made (plain syscalls) but whose hub could not be
// (hub::current(): EMFILE for io_uring_setup or its eventfd) records the error, then still calls
// srv->serve_forever() outside the try (srv is set): hub_error/system_error escapes the thread and
// std::terminate aborts the whole process, instead of the error path (stop the others, exit 1).
TEST_CASE("09_many_cores --threads: a worker that cannot make its hub (fd limit) makes it exit 1, not abort") {
  char self[4096] = {};
  REQUIRE(::readlink("/proc/self/exe", self, sizeof self - 1) > 0);
  std::string exe(self);
  exe = exe.substr(0, exe.rfind('/'));           // .../tests
  exe = exe.substr(0, exe.rfind('/')) + "/examples/09_many_cores";
  if (::access(exe.c_str(), X_OK) != 0) {
    WARN_MESSAGE(false, "not built: ", exe);
    return;
  }
  std::fflush(nullptr);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 1);
    ::dup2(null, 2);
    rlimit rl{60, 60};
    ::setrlimit(RLIMIT_NOFILE, &rl);
    ::execl(exe.c_str(), exe.c_str(), "--threads", "--workers", "30", "0", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() + 5s;
  pid_t r = 0;
  while ((r = ::waitpid(pid, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  if (r == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    FAIL("09_many_cores hung");
  }
  CHECK_MESSAGE(WIFEXITED(status), "killed by signal ", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  if (WIFEXITED(status)) {
    CHECK(WEXITSTATUS(status) == 1);
  }
}
