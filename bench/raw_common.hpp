// bench/raw_common.hpp — set-up shared by the raw tools in bench/ (the two
// floor servers and the load generator). Plain POSIX on purpose: the floors
// must not depend on cogent.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace raw {

// die() prints "<tool>: <what>: <strerror(err)>" and exits 1.
[[noreturn]] inline void die(const char* tool, const char* what, int err) {
  std::fprintf(stderr, "%s: %s: %s\n", tool, what, std::strerror(err));
  std::exit(1);
}

// raise_nofile_limit() raises the soft RLIMIT_NOFILE to the hard limit.
inline void raise_nofile_limit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

// listener is a listening IPv4 socket on all addresses and the port it got.
struct listener {
  int fd;
  int port;
};

// listen_any() binds `port` (0 = a free one) with SO_REUSEADDR and listens;
// `type_flags` are or-ed into SOCK_STREAM | SOCK_CLOEXEC (e.g. SOCK_NONBLOCK).
// Dies (as `tool`) on any error.
inline listener listen_any(const char* tool, int port, int type_flags) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | type_flags, 0);
  if (fd < 0) {
    die(tool, "socket", errno);
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    die(tool, "bind", errno);
  }
  if (listen(fd, 65535) < 0) {  // clamped to net.core.somaxconn
    die(tool, "listen", errno);
  }
  socklen_t len = sizeof addr;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) < 0) {
    die(tool, "getsockname", errno);
  }
  return {fd, ntohs(addr.sin_port)};
}

// start_server() is the start-up both floor servers share: `tool <port>` on
// the command line (0 = a free port), the descriptor limit raised, SIGPIPE
// ignored, SIGINT/SIGTERM to `on_stop` without SA_RESTART (so the server's
// wait returns EINTR), the listener made, and "port <N>" printed as the first
// stdout line. Exits 2 on a missing argument.
inline listener start_server(const char* tool, int argc, char** argv, void (*on_stop)(int), int type_flags) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <port>   (0 = pick a free port)\n", argv[0]);
    std::exit(2);
  }
  int port = std::atoi(argv[1]);
  raise_nofile_limit();
  std::signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = on_stop;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  listener l = listen_any(tool, port, type_flags);
  std::printf("port %d\n", l.port);
  std::fflush(stdout);
  return l;
}

}  // namespace raw
