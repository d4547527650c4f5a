// tests/net/net_support.hpp — small helpers shared by the net/ test suites
// (echo_handler, open_fds, fd_open, stderr_capture, ...).
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "hub/core.hpp"
#include "hub/task.hpp"
#include "net/socket.hpp"
#include "tests/child.hpp"
#include "tests/support.hpp"  // open_fds()

namespace cogent::test {

// stderr_capture redirects fd 2 into a temp file for its lifetime; text() reads it.
struct stderr_capture {
  int saved = -1;
  int fd = -1;
  stderr_capture() {
    std::fflush(stderr);
    char tmpl[] = "/tmp/cogent-review-XXXXXX";
    fd = ::mkstemp(tmpl);
    ::unlink(tmpl);
    saved = ::dup(2);
    ::dup2(fd, 2);
  }
  std::string text() {
    std::fflush(stderr);
    std::string out;
    char buf[4096];
    ::lseek(fd, 0, SEEK_SET);
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) {
      out.append(buf, static_cast<std::size_t>(n));
    }
    return out;
  }
  ~stderr_capture() {
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    ::close(fd);
  }
};

// echo_handler() is a stream_server handler that echoes until EOF.
inline void echo_handler(cogent::net::stream_socket& s, const cogent::net::address&) {
  char buf[4096];
  while (std::size_t n = s.read_some(buf, sizeof buf)) {
    s.write_all(buf, n);
  }
}

// connected_pair / make_pair(): a connected TCP pair on 127.0.0.1 (the accept runs in a task).
struct connected_pair {
  cogent::net::stream_socket client;
  cogent::net::stream_socket server;
};
inline connected_pair make_pair() {
  using namespace std::chrono_literals;
  auto l = cogent::net::listener::bind(cogent::net::address::ipv4_loopback(0));
  auto acc = cogent::spawn([&] { return l.accept(); });
  connected_pair p;
  p.client = cogent::net::stream_socket::connect(l.local_address(), 2s);
  p.server = acc.get();
  return p;
}


// fd_open() is whether fd is an open descriptor of this process.
inline bool fd_open(int fd) {
  return ::fcntl(fd, F_GETFD) != -1;
}

// child_socketpair() fills sv with a connected Unix stream socket pair, or
// ends the (fork()ed) child with child_setup_failed.
inline void child_socketpair(int sv[2]) {
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    std::_Exit(child_setup_failed);
  }
}

// closed_at_thread_end() checks, in a fork()ed child, that a socket whose
// close() has begun but is still waiting for a blocked reader is not leaked
// when its thread ends with those fibers parked (their cancels never reaped).
// On a fresh thread: a socket pair, a reader task parked in read_some() on
// one end, then start_close(socket), which must return with that close under
// way; then the thread ends. The child exits 0 if no fd leaked and the
// socket's fd was closed; its stderr says "parked=<fibers parked at the end>"
// and would name any sanitizer report.
template <class StartClose>
child_result closed_at_thread_end(StartClose start_close) {
  return run_in_child([&] {
    int before = open_fds();
    int old_fd = -1;
    std::thread([&] {
      int sv[2];
      child_socketpair(sv);
      old_fd = sv[0];
      cogent::net::stream_socket s(sv[0]);
      auto r = cogent::spawn([&] {
        char b[16];
        (void)s.read_some(b, sizeof b);
      });
      cogent::yield();  // r is parked in its recv
      start_close(s);
      ::close(sv[1]);
      std::fprintf(stderr, "thread ending, parked=%zu\n", cogent::hub::current().parked_count());
    }).join();
    int after = open_fds();
    std::fprintf(stderr, "fds before=%d after=%d old_open=%d\n", before, after, fd_open(old_fd) ? 1 : 0);
    std::fflush(nullptr);
    ::_exit(after == before && !fd_open(old_fd) ? 0 : 1);
  });
}

// errno_of() runs fn and returns the errno of the std::system_error it raised (0 if none).
template <class Fn>
int errno_of(Fn&& fn) {
  try {
    std::forward<Fn>(fn)();
  } catch (const std::system_error& e) {
    return e.code().value();
  }
  return 0;
}

}  // namespace cogent::test
