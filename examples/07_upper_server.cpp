// examples/07_upper_server.cpp — one server written three ways: blocking, threads, fibers.
//
// What it shows: the study notes' upper-casing server (each message comes back
// upper-cased), written
//   --blocking  with plain blocking POSIX calls on the main thread: one client
//               at a time; a second client waits until the first hangs up;
//   --threads   with a std::thread per client: concurrent, at the price of a
//               kernel thread (stack, scheduling) per client;
//   --fibers    with a cogent task per client: the same sequential code as the
//               blocking version, concurrent like the threaded one, on one
//               thread (each blocking call parks only its fiber).
// --selftest runs all three in-process, connects 3 clients concurrently to
// each and checks the replies (exit 0 on success), for scripts.
//
// How to run it:
//   build/examples/07_upper_server --fibers [port]      # default port 7007
//   nc 127.0.0.1 7007                                   # type, get it back in capitals
//   build/examples/07_upper_server --selftest
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "hub/core.hpp"
#include "hub/task.hpp"
#include "examples/port_arg.hpp"
#include "net/net.hpp"

namespace {

// upper() upper-cases a buffer in place: the whole "business logic".
void upper(char* p, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    p[i] = static_cast<char>(std::toupper(static_cast<unsigned char>(p[i])));
  }
}

// ---- blocking and threads: plain POSIX ----------------------------------------------------

// serve_client_blocking() answers one client until it hangs up, with blocking calls.
void serve_client_blocking(int fd) {
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      break;
    }
    upper(buf, static_cast<std::size_t>(n));
    if (::send(fd, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) {
      break;
    }
  }
  ::close(fd);
}

// plain_listener() opens a blocking IPv4 listener on 127.0.0.1:port.
int plain_listener(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 || ::listen(fd, 128) < 0) {
    std::perror("07_upper_server: bind/listen");
    std::exit(1);
  }
  return fd;
}

int plain_port(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

// run_blocking() accepts and serves clients one after the other until accept fails.
void run_blocking(int listen_fd) {
  for (;;) {
    int c = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) {
      return;  // listener shut down
    }
    serve_client_blocking(c);  // nobody else is served meanwhile
  }
}

// run_threads() gives each client its own thread.
void run_threads(int listen_fd) {
  std::vector<std::thread> threads;
  for (;;) {
    int c = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) {
      break;
    }
    threads.emplace_back(serve_client_blocking, c);
  }
  for (auto& t : threads) {
    t.join();
  }
}

// ---- fibers: cogent ----------------------------------------------------------------------

// serve_client_fiber() is serve_client_blocking() with cogent sockets: the same shape.
void serve_client_fiber(cogent::net::stream_socket& s, const cogent::net::address&) {
  char buf[4096];
  while (std::size_t n = s.read_some(buf, sizeof buf)) {
    upper(buf, n);
    s.write_all(buf, n);
  }
}

// ---- selftest ------------------------------------------------------------------------------

// check_three_clients() connects 3 clients at once (as fibers) and checks each reply.
bool check_three_clients(int port, const char* mode) {
  bool ok = true;
  std::vector<cogent::task<void>> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(cogent::spawn([&, i] {
      std::string msg = "hello from client " + std::to_string(i);
      std::string want = msg;
      upper(want.data(), want.size());
      try {
        auto s = cogent::net::stream_socket::connect(cogent::net::address::ipv4_loopback(port),
                                                     std::chrono::seconds(2));
        s.write_all(msg);
        std::string got(want.size(), '\0');
        s.read_exactly(got.data(), got.size(), std::chrono::seconds(5));
        if (got != want) {
          std::printf("  %s: client %d got '%s'\n", mode, i, got.c_str());
          ok = false;
        }
      } catch (const std::exception& e) {
        std::printf("  %s: client %d failed: %s\n", mode, i, e.what());
        ok = false;
      }
    }));
  }
  cogent::joinall(clients);
  std::printf("selftest %-9s %s\n", mode, ok ? "ok: 3 concurrent clients answered in capitals" : "FAILED");
  return ok;
}

// selftest_plain() runs a POSIX server on a thread, checks it, then shuts the listener to stop it.
bool selftest_plain(void (*server)(int), const char* mode) {
  int lfd = plain_listener(0);
  std::thread th(server, lfd);
  bool ok = check_three_clients(plain_port(lfd), mode);
  ::shutdown(lfd, SHUT_RDWR);  // wakes the blocked accept()
  th.join();
  ::close(lfd);
  return ok;
}

bool selftest() {
  bool ok = selftest_plain(run_blocking, "blocking");
  ok = selftest_plain(run_threads, "threads") && ok;
  cogent::net::stream_server srv(cogent::net::address::ipv4_loopback(0), serve_client_fiber);
  srv.start();
  ok = check_three_clients(srv.port(), "fibers") && ok;
  srv.stop(std::chrono::seconds(1));
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  // Pick the mode and the port.
  std::string mode = argc > 1 ? argv[1] : "";
  int port = argc > 2 ? parse_port(argv[2]) : 7007;
  if (port < 0 || argc > 3) {
    mode.clear();  // the usage line below
  }
  if (mode == "--selftest") {
    return selftest() ? 0 : 1;
  }
  if (mode == "--blocking") {
    // Blocking: simplest code, but one client at a time.
    int lfd = plain_listener(port);
    std::printf(
        "--blocking: plain blocking calls on one thread; port %d. A second client waits until the first "
        "hangs up.\n",
        plain_port(lfd));
    std::fflush(stdout);
    run_blocking(lfd);
    return 0;
  }
  if (mode == "--threads") {
    // Threads: concurrent, one kernel thread (and its stack) per client.
    int lfd = plain_listener(port);
    std::printf("--threads: a std::thread per client; port %d. Concurrent, at a kernel thread per client.\n",
                plain_port(lfd));
    std::fflush(stdout);
    run_threads(lfd);
    return 0;
  }
  if (mode == "--fibers") try {
    // Fibers: the blocking version's code shape, concurrent on one thread.
    // SIGINT/SIGTERM are blocked from here, so one that arrives before the
    // stopper fiber waits for it is queued for it, not fatal.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    cogent::net::stream_server srv(cogent::net::address::ipv4_loopback(port), serve_client_fiber);
    std::printf(
        "--fibers: a cogent task per client; port %u. Sequential code, concurrent clients, one thread; "
        "Ctrl-C stops.\n",
        static_cast<unsigned>(srv.port()));
    std::fflush(stdout);
    srv.start();
    auto stopper = cogent::spawn([&] {
      cogent::net::wait_for_signal({SIGINT, SIGTERM});
      srv.stop(std::chrono::seconds(1));
    });
    srv.serve_forever();
    stopper.join();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "07_upper_server: %s\n", e.what());  // e.g. the port is taken
    return 1;
  }
  std::fprintf(stderr, "usage: %s --blocking|--threads|--fibers [port=7007]  |  %s --selftest\n", argv[0],
               argv[0]);
  return 2;
}
