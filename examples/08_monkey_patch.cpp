// examples/08_monkey_patch.cpp — a blocking POSIX echo server made concurrent by patch_all().
//
// What it shows: gevent's classic monkey-patched server, line for line. The
// server is written with nothing but blocking POSIX calls (socket, bind,
// listen, accept, read, write, close) and one task per client. Without
// patch_all() the first client's read() would block the whole thread; with
// it, every blocking call parks only the calling fiber on the hub's io_uring
// loop, so thousands of clients are served at once by one thread.
//
//   gevent (Python)                          this file
//   from gevent import monkey                cogent::monkey::patch_all();
//   monkey.patch_all()
//   s = socket.socket(); s.bind(...)         socket(); bind(); listen();
//   while True:                              for (;;) {
//       conn, _ = s.accept()                   int conn = accept(...);
//       gevent.spawn(handle, conn)             cogent::spawn(handle, conn); }
//   def handle(conn):                        void handle(int conn) {
//       while data := conn.recv(4096):         while ((n = read(conn, ...)) > 0)
//           conn.sendall(data)                   write(conn, buf, n);
//       conn.close()                           close(conn); }
//
// Linking: the executable links cogent_monkey (meson: cogent_monkey_dep), so
// its read/write/accept... are found before libc's (see monkey/monkey.hpp).
//
// How to run it:
//   build/examples/08_monkey_patch [port]    # port 0 or absent: a free port
//   # first stdout line: "port <N>" (bench/echo_bench.sh relies on it)
//   nc 127.0.0.1 <N>                         # type lines, they come back
//   kill -INT <pid>                          # or Ctrl-C: stops, exit 0
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "examples/port_arg.hpp"
#include "hub/task.hpp"
#include "monkey/monkey.hpp"
#include "net/server.hpp"

namespace {

int g_listener = -1;

// on_stop() runs in a signal handler: shutdown(2) is async-signal-safe and
// makes the parked accept() fail, so main's loop ends.
void on_stop(int) {
  shutdown(g_listener, SHUT_RDWR);
}

// handle() is the per-client task: plain blocking reads and writes.
void handle(int conn) {
  char buf[4096];
  ssize_t n;
  while ((n = read(conn, buf, sizeof buf)) > 0) {
    if (write(conn, buf, static_cast<size_t>(n)) != n) {
      break;
    }
  }
  close(conn);
}

}  // namespace

int main(int argc, char** argv) {
  // Step 1: patch first, before any socket exists.
  cogent::monkey::patch_all();

  // The optional port (0 = let the kernel pick a free one).
  int port = port_arg(argc, argv);
  if (port < 0) {
    return 2;
  }

  // Many clients need many descriptors: raise the soft limit to the hard one.
  cogent::net::raise_fd_limit();
  std::signal(SIGPIPE, SIG_IGN);  // a client that vanishes mid-write gives EPIPE, not death

  // Step 2: an ordinary blocking listener.
  g_listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(g_listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (bind(g_listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 || listen(g_listener, 4096) < 0) {
    std::perror("08_monkey_patch: bind/listen");
    return 1;
  }
  socklen_t len = sizeof addr;
  getsockname(g_listener, reinterpret_cast<sockaddr*>(&addr), &len);
  // The stop handler goes in before the port is printed: a script that
  // signals as soon as it reads the port must find it there.
  struct sigaction sa {};
  sa.sa_handler = on_stop;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  std::printf("port %u\n", static_cast<unsigned>(ntohs(addr.sin_port)));
  std::fflush(stdout);

  // Step 3: accept forever, one task per client. accept() parks main (a
  // fiber to the hub) while the client tasks run.
  for (;;) {
    int conn = accept(g_listener, nullptr, nullptr);
    if (conn < 0) {
      int e = errno;
      if (e == EINTR || e == ECONNABORTED) {
        continue;
      }
      if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
        // Out of descriptors or memory: say so, wait for clients to leave, go on.
        std::fprintf(stderr, "08_monkey_patch: accept: %s; retrying in 100 ms\n", std::strerror(e));
        usleep(100000);  // parks only main: the clients keep being served
        continue;
      }
      if (e != EINVAL) {  // EINVAL: shut down by the signal handler
        std::fprintf(stderr, "08_monkey_patch: accept: %s; stopping\n", std::strerror(e));
      }
      break;
    }
    setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    cogent::spawn(handle, conn);
  }
  close(g_listener);
  return 0;
}
