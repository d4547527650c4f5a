// examples/09_many_cores.cpp — "coroutines + processes": one echo server on every core.
//
// What it shows: a hub runs on one thread, so one server uses one core. The
// seeds' recipe for using them all is "coroutines + several processes" (as
// gunicorn runs gevent workers): each worker is an ordinary single-thread
// cogent server with a fiber per client, and the workers share the port.
// In C++ there is no GIL, so threads work as well as processes: each thread
// has its own hub. Both are shown, by flag. Every worker binds the port with
// SO_REUSEPORT, so the kernel spreads incoming connections over the workers;
// they share nothing else (no locks on the data path).
//
// How to run it:
//   build/examples/09_many_cores [--threads | --processes] [--workers N] [port]
//     default: --threads, N = the number of cores, port 0 = a free one
//   # first stdout line: "port <N>"; then one "worker <i> ready" line per worker
//   # (--processes: "worker <i> ready (process <pid>)"; kill -9 one: it is replaced)
//   build/examples/06_echo_client <port> 100 2     # 100 client fibers for 2 s
//   kill -INT <pid>          # or Ctrl-C: every worker stops, then prints
//                            # "worker <i> (thread|process ...): <n> clients"
//
// Threads: worker 0 is the main thread; a signal fiber there stops its own
// server and asks each other thread's hub to stop its server through
// hub::post() (the one thread-safe way into a hub). Processes: the parent only
// supervises, with plain POSIX calls (it never makes a hub: a hub, like its
// io_uring ring, belongs to one process, and a child forked from a thread
// with one cannot use it): it reserves the port, forks the workers, replaces
// one that dies (as gunicorn's arbiter does), then passes SIGINT/SIGTERM on
// to them and reaps them.
//
// What a dying worker costs: the clients it was serving, and those the kernel
// had queued on its listener and not yet handed to it — they are reset
// (ECONNRESET). Its listener can outlive the process for a few milliseconds
// (the kernel tears an io_uring ring down asynchronously, and a pending
// accept holds the socket), so clients arriving just then are lost too. With
// `sysctl net.ipv4.tcp_migrate_req=1` (Linux 5.14+) the kernel hands such
// queued clients to another worker in the SO_REUSEPORT group instead.

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <exception>
#include <latch>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "examples/port_arg.hpp"
#include "hub/core.hpp"
#include "hub/task.hpp"
#include "net/net.hpp"

using namespace std::chrono_literals;
namespace net = cogent::net;

namespace {

// The worker's server: the 05 echo handler on `port`, with SO_REUSEPORT.
std::unique_ptr<net::stream_server> echo_server(int port) {
  net::server_options opts;
  opts.listen.reuse_port = true;
  return std::make_unique<net::stream_server>(
      net::address::ipv4_any(port),
      [](net::tcp_socket& s, const net::address&) {
        char buf[4096];
        while (std::size_t n = s.read_some(buf, sizeof buf)) {
          s.write_all(buf, n);
        }
      },
      opts);
}

void report(int i, const std::string& who, std::uint64_t clients) {
  std::printf("worker %d (%s): %llu clients\n", i, who.c_str(), static_cast<unsigned long long>(clients));
  std::fflush(stdout);
}

// One hub per thread. Worker 0 is the main thread.
int run_threads(int workers, int port) {
  // What each worker thread shares with main: set before `bound` counts
  // down, read after. A server lives and dies on its own thread (its tasks
  // belong to that thread's hub); main reaches it only through hub::post().
  struct worker {
    cogent::hub* hub = nullptr;
    net::stream_server* server = nullptr;
    std::exception_ptr error;
    std::uint64_t clients = 0;
    long tid = 0;
  };
  std::vector<worker> ws(static_cast<std::size_t>(workers));
  auto main_server = echo_server(port);  // binds: the port is known from here on
  port = main_server->port();
  ws[0] = {&cogent::hub::current(), main_server.get(), nullptr, 0, static_cast<long>(gettid())};

  // Each other thread binds the same port, reports in, and serves until its
  // server is stopped.
  std::latch bound(workers - 1);
  std::vector<std::thread> threads;
  for (int i = 1; i < workers; ++i) {
    threads.emplace_back([&, i] {
      worker& w = ws[static_cast<std::size_t>(i)];
      w.tid = static_cast<long>(gettid());
      std::unique_ptr<net::stream_server> srv;
      try {
        w.hub = &cogent::hub::current();  // (io_uring setup may fail: EMFILE, ENOMEM)
        srv = echo_server(port);
        w.server = srv.get();
      } catch (...) {
        w.error = std::current_exception();
      }
      bound.count_down();
      if (!srv) {
        return;
      }
      try {
        srv->serve_forever();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "09_many_cores: worker %d: %s\n", i, e.what());
      }
      w.clients = srv->accepted_count();
    });
  }
  bound.wait();  // a moment at start-up, before any fiber runs: blocking is fine here

  // stop_all() stops every worker's server: main's own directly, the others
  // through their hubs. A post() callback runs inside that hub and must not
  // block, so it spawns a task there that calls stop() (which waits for the
  // handlers, 1 s at most, then kills the rest).
  auto stop_all = [&ws] {
    for (std::size_t i = 1; i < ws.size(); ++i) {
      if (net::stream_server* srv = ws[i].server) {
        ws[i].hub->post([srv] { cogent::spawn([srv] { srv->stop(1s); }); });
      }
    }
    ws[0].server->stop(1s);
  };
  std::exception_ptr failed;
  for (auto& w : ws) {
    if (w.error && !failed) {
      failed = w.error;  // e.g. EADDRINUSE: the port's owner does not allow sharing
    }
  }
  if (failed) {
    stop_all();
  } else {
    std::printf("port %d\n", port);
    for (int i = 0; i < workers; ++i) {
      std::printf("worker %d ready\n", i);
    }
    std::fflush(stdout);
    auto on_signal = cogent::spawn([&stop_all, workers] {
      int sig = net::wait_for_signal({SIGINT, SIGTERM});
      std::fprintf(stderr, "09_many_cores: %s, stopping %d workers\n", strsignal(sig), workers);
      stop_all();
    });
    main_server->serve_forever();
    on_signal.join();
  }
  ws[0].clients = main_server->accepted_count();
  for (auto& t : threads) {
    t.join();  // each returned from serve_forever(): its server is stopped and gone
  }
  if (failed) {
    std::rethrow_exception(failed);
  }
  for (int i = 0; i < workers; ++i) {
    const worker& w = ws[static_cast<std::size_t>(i)];
    report(i, "thread " + std::to_string(w.tid), w.clients);
  }
  return 0;
}

// start_worker() forks worker i: a whole single-thread cogent server, as
// 05_echo_server, on the shared port. It writes one byte to `ready` (if not
// -1) once it listens. Returns the child's pid.
pid_t start_worker(int i, int port, int reservation, int ready) {
  pid_t pid = fork();
  if (pid < 0) {
    throw std::system_error(errno, std::generic_category(), "fork");
  }
  if (pid != 0) {
    return pid;
  }
  int code = 0;
  try {
    close(reservation);  // the parent's
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    pthread_sigmask(SIG_UNBLOCK, &chld, nullptr);  // blocked for the supervisor, not for us
    auto srv = echo_server(port);
    if (ready >= 0) {
      char c = 1;
      if (write(ready, &c, 1) != 1) {
        _exit(1);
      }
      close(ready);
    }
    auto on_signal = cogent::spawn([&srv] {
      net::wait_for_signal({SIGINT, SIGTERM});
      srv->stop(1s);
    });
    srv->serve_forever();
    on_signal.join();
    report(i, "process " + std::to_string(getpid()), srv->accepted_count());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "09_many_cores: worker %d: %s\n", i, e.what());
    code = 1;
  }
  std::fflush(nullptr);
  _exit(code);  // not exit(): the parent's atexit handlers and stdio buffers are not ours
}

// One process per worker; the parent supervises, with plain POSIX calls: it
// never makes a hub, so it can fork a replacement whenever a worker dies.
int run_processes(int workers, int port) {
  // Reserve the port (port 0: let the kernel pick one) so every worker binds
  // the same one: a socket bound with SO_REUSEPORT and never listening holds
  // it without taking a share of the connections (only listening sockets get
  // them), so it can stay open until the end — closing a member of the
  // listening group while clients arrive could refuse one.
  const int reservation = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  net::address at = net::address::ipv4_any(port);
  if (reservation < 0 || ::setsockopt(reservation, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
      ::bind(reservation, at.sockaddr_ptr(), at.sockaddr_len()) != 0) {
    throw std::system_error(errno, std::generic_category(), "reserve port " + std::to_string(port));
  }
  sockaddr_in bound{};
  socklen_t bound_len = sizeof bound;
  ::getsockname(reservation, reinterpret_cast<sockaddr*>(&bound), &bound_len);
  port = ntohs(bound.sin_port);

  // The supervisor's signals: the stop signals (blocked in main()) and SIGCHLD, taken with sigtimedwait().
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGINT, SIGTERM, SIGCHLD}) {
    sigaddset(&signals, sig);
  }
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  int ready[2];
  if (pipe(ready) != 0) {
    throw std::system_error(errno, std::generic_category(), "pipe");
  }
  struct worker {
    pid_t pid = 0;  // 0: waiting to be restarted
    std::chrono::steady_clock::time_point started, restart_at;
  };
  std::vector<worker> ws(static_cast<std::size_t>(workers));
  for (int i = 0; i < workers; ++i) {
    ws[static_cast<std::size_t>(i)] = {start_worker(i, port, reservation, ready[1]),
                                       std::chrono::steady_clock::now(), {}};
  }
  close(ready[1]);
  int up = 0;
  for (char c; up < workers && read(ready[0], &c, 1) == 1;) {
    ++up;
  }
  close(ready[0]);
  if (up == workers) {
    std::printf("port %d\n", port);
    for (int i = 0; i < workers; ++i) {
      std::printf("worker %d ready (process %d)\n", i, static_cast<int>(ws[static_cast<std::size_t>(i)].pid));
    }
    std::fflush(stdout);
    // Supervise until SIGINT/SIGTERM: a worker that dies is replaced (after
    // a second if it lived less than one, so a worker that cannot start does
    // not make the supervisor spin).
    for (;;) {
      auto now = std::chrono::steady_clock::now();
      std::optional<std::chrono::steady_clock::time_point> next;
      for (int i = 0; i < workers; ++i) {
        worker& w = ws[static_cast<std::size_t>(i)];
        if (w.pid == 0 && w.restart_at <= now) {
          // Said once the replacement listens (its byte on the pipe), as at start-up.
          int up_pipe[2];
          if (pipe(up_pipe) != 0) {
            throw std::system_error(errno, std::generic_category(), "pipe");
          }
          w = {start_worker(i, port, reservation, up_pipe[1]), now, {}};
          close(up_pipe[1]);
          char c;
          if (read(up_pipe[0], &c, 1) == 1) {
            std::printf("worker %d restarted (process %d)\n", i, static_cast<int>(w.pid));
            std::fflush(stdout);
          }  // else it died before listening: its SIGCHLD comes next, and a retry a second later
          close(up_pipe[0]);
        } else if (w.pid == 0) {
          next = next ? std::min(*next, w.restart_at) : w.restart_at;
        }
      }
      timespec wait_for{};
      if (next) {
        auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(*next - now).count();
        wait_for = {static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
      }
      int sig = sigtimedwait(&signals, nullptr, next ? &wait_for : nullptr);
      if (sig == SIGINT || sig == SIGTERM) {
        std::fprintf(stderr, "09_many_cores: %s, stopping %d workers\n", strsignal(sig), workers);
        break;
      }
      if (sig < 0 && errno != EAGAIN && errno != EINTR) {
        throw std::system_error(errno, std::generic_category(), "sigtimedwait");
      }
      int status = 0;
      for (pid_t dead; (dead = waitpid(-1, &status, WNOHANG)) > 0;) {
        for (int i = 0; i < workers; ++i) {
          worker& w = ws[static_cast<std::size_t>(i)];
          if (w.pid != dead) {
            continue;
          }
          now = std::chrono::steady_clock::now();
          std::fprintf(stderr, "09_many_cores: worker %d (process %d) %s %d; restarting it\n", i,
                       static_cast<int>(dead), WIFSIGNALED(status) ? "died of signal" : "exited with",
                       WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
          w.pid = 0;
          w.restart_at = now - w.started < 1s ? now + 1s : now;
        }
      }
    }
  } else {
    std::fprintf(stderr, "09_many_cores: only %d of %d workers started\n", up, workers);
  }
  for (const worker& w : ws) {
    if (w.pid != 0) {
      kill(w.pid, SIGTERM);
    }
  }
  int failed = up == workers ? 0 : 1;
  close(reservation);
  for (const worker& w : ws) {
    int status = 0;
    if (w.pid == 0) {
      continue;
    }
    while (waitpid(w.pid, &status, 0) < 0 && errno == EINTR) {
    }
    failed |= !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  return failed;
}

}  // namespace

int main(int argc, char** argv) try {
  bool processes = false;
  int workers = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--threads" || a == "--processes") {
      processes = a == "--processes";
    } else if (a == "--workers" && i + 1 < argc) {
      char* end = nullptr;
      long n = std::strtol(argv[++i], &end, 10);
      if (*end != '\0' || n < 1 || n > 256) {
        std::fprintf(stderr, "09_many_cores: --workers takes 1..256, not '%s'\n", argv[i]);
        return 2;
      }
      workers = static_cast<int>(n);
    } else {
      rest.push_back(argv[i]);
    }
  }
  int port = port_arg(static_cast<int>(rest.size()), rest.data());
  if (port < 0) {
    return 2;
  }
  net::raise_fd_limit();
  // Blocked in every thread and inherited by every worker process before
  // anything starts, so a signal waits for wait_for_signal() instead of
  // killing the process.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  return processes ? run_processes(workers, port) : run_threads(workers, port);
} catch (const std::exception& e) {
  std::fprintf(stderr, "09_many_cores: %s\n", e.what());
  return 1;
}
