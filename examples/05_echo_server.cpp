// examples/05_echo_server.cpp — an echo server: one task per client on one thread.
//
// What it shows: cogent::net::stream_server accepting TCP clients and running
// a plain, blocking-looking echo loop for each in its own task. Every read and
// write parks only that client's fiber while the hub's io_uring loop serves
// the rest. It also shows a clean stop on SIGINT/SIGTERM: a fiber waits for
// the signal (a signalfd read through the engine) and calls server.stop().
//
// How to run it:
//   build/examples/05_echo_server [port]     # port 0 or absent: a free port
//   # first stdout line: "port <N>" (bench/echo_bench.sh relies on it)
//   nc 127.0.0.1 <N>                         # type lines, they come back
//   kill -INT <pid>                          # or Ctrl-C: stops cleanly, exit 0

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "examples/port_arg.hpp"
#include "hub/core.hpp"
#include "hub/task.hpp"
#include "net/net.hpp"

using namespace std::chrono_literals;

int main(int argc, char** argv) try {
  // The optional port (0 = let the kernel pick a free one).
  int port = port_arg(argc, argv);
  if (port < 0) {
    return 2;
  }

  // Many clients need many descriptors: raise the soft limit to the hard one.
  cogent::net::raise_fd_limit();

  // Block SIGINT/SIGTERM right away, so one arriving before the signal fiber
  // runs is queued for it instead of killing the process.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // The server: bind now (so the port is known), one task per client. The
  // handler is ordinary sequential code; read_some() returns 0 when the
  // client hangs up, and the server closes the socket when we return.
  cogent::net::stream_server server(cogent::net::address::ipv4_any(port),
                                    [](cogent::net::tcp_socket& s, const cogent::net::address&) {
                                      char buf[4096];
                                      while (std::size_t n = s.read_some(buf, sizeof buf)) {
                                        s.write_all(buf, n);
                                      }
                                    });

  // The first stdout line is the port, flushed: scripts wait for it.
  std::printf("port %u\n", static_cast<unsigned>(server.port()));
  std::fflush(stdout);

  // A fiber that waits for SIGINT/SIGTERM, then stops the server: no more
  // accepts, handlers get 1 s to finish, the rest are killed.
  auto on_signal = cogent::spawn([&server] {
    int sig = cogent::net::wait_for_signal({SIGINT, SIGTERM});
    std::fprintf(stderr, "05_echo_server: %s, stopping\n", strsignal(sig));
    server.stop(1s);
  });

  // A fiber that reports the live client count every 2 s on stderr (stdout
  // stays machine-readable), only when it changed.
  auto reporter = cogent::spawn([&server] {
    std::size_t last = static_cast<std::size_t>(-1);
    for (;;) {
      cogent::sleep(2s);
      if (server.client_count() != last) {
        last = server.client_count();
        std::fprintf(stderr, "05_echo_server: %zu clients (%llu accepted)\n", last,
                     static_cast<unsigned long long>(server.accepted_count()));
      }
    }
  });

  // Serve until stop(); then end the reporter and leave.
  server.serve_forever();
  reporter.kill();
  on_signal.join();
  return 0;
} catch (const std::exception& e) {
  // E.g. the port is taken: std::system_error(EADDRINUSE) from the bind.
  std::fprintf(stderr, "05_echo_server: %s\n", e.what());
  return 1;
}
