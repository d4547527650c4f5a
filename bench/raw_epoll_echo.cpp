// raw_epoll_echo — the raw epoll floor for the echo-server benchmark (DESIGN.md §6).
//
// A single-threaded, level-triggered epoll TCP echo server with no cogent code in it: the
// number a fiber runtime is compared against. Usage:
//
//     raw_epoll_echo <port>          # port 0 picks a free port
//
// Prints `port <N>` as the first stdout line (flushed), then serves until SIGINT/SIGTERM
// and exits 0. Driven by bench/echo_load, orchestrated by bench/echo_bench.sh.
//
// Why level-triggered: in ping-pong each readiness event carries one request, so LT costs
// exactly one recv + one send per round trip, whereas ET would need an extra recv to drain
// to EAGAIN. A short send parks the remainder and switches the fd to EPOLLOUT until it drains.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "bench/raw_common.hpp"

namespace {

volatile std::sig_atomic_t g_stop = 0;

void on_signal(int) {
  g_stop = 1;
}

constexpr std::size_t k_buf_size = 64 * 1024;

// Bytes received but not yet sent back (only non-empty after a short send).
struct conn_state {
  std::vector<char> pending;
  std::size_t offset = 0;
  bool open = false;
};

[[noreturn]] void die(const char* what) {
  raw::die("raw_epoll_echo", what, errno);
}

class echo_server {
 public:
  echo_server(int listen_fd) : listen_fd_(listen_fd) {
    epfd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) {
      die("epoll_create1");
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = listen_fd_;
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, listen_fd_, &ev) < 0) {
      die("epoll_ctl listen");
    }
  }

  void run() {
    constexpr int k_max_events = 512;
    epoll_event events[k_max_events];
    while (!g_stop) {
      int n = epoll_wait(epfd_, events, k_max_events, -1);
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        die("epoll_wait");
      }
      for (int i = 0; i < n; ++i) {
        int fd = events[i].data.fd;
        if (fd == listen_fd_) {
          accept_all();
        } else if (!state(fd).pending.empty()) {
          on_writable(fd);  // never read while a reply is still queued
        } else {
          on_readable(fd);
        }
      }
    }
  }

 private:
  conn_state& state(int fd) {
    if (static_cast<std::size_t>(fd) >= conns_.size()) {
      conns_.resize(static_cast<std::size_t>(fd) * 2 + 64);
    }
    return conns_[static_cast<std::size_t>(fd)];
  }

  void accept_all() {
    for (;;) {
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) {
          continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
          std::fprintf(stderr, "raw_epoll_echo: accept4: %s\n", std::strerror(errno));
        }
        return;  // EAGAIN, or EMFILE etc.: level-triggered listener retries later
      }
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = fd;
      if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        continue;
      }
      conn_state& c = state(fd);
      c.pending.clear();
      c.offset = 0;
      c.open = true;
    }
  }

  void close_conn(int fd) {
    conn_state& c = state(fd);
    c.open = false;
    c.pending.clear();
    c.pending.shrink_to_fit();
    c.offset = 0;
    close(fd);  // close removes the fd from the epoll set
  }

  void set_events(int fd, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev);
  }

  void on_readable(int fd) {
    ssize_t n = recv(fd, buf_, k_buf_size, 0);
    if (n <= 0) {
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        return;
      }
      close_conn(fd);
      return;
    }
    ssize_t w = send(fd, buf_, static_cast<std::size_t>(n), MSG_NOSIGNAL);
    if (w == n) {
      return;
    }
    if (w < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        close_conn(fd);
        return;
      }
      w = 0;
    }
    // Short send: keep the rest, stop reading until it drains.
    conn_state& c = state(fd);
    c.pending.assign(buf_ + w, buf_ + n);
    c.offset = 0;
    set_events(fd, EPOLLOUT);
  }

  void on_writable(int fd) {
    conn_state& c = state(fd);
    while (c.offset < c.pending.size()) {
      ssize_t w = send(fd, c.pending.data() + c.offset, c.pending.size() - c.offset, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) {
          continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          return;
        }
        close_conn(fd);
        return;
      }
      c.offset += static_cast<std::size_t>(w);
    }
    c.pending.clear();
    c.offset = 0;
    set_events(fd, EPOLLIN);
  }

  int listen_fd_;
  int epfd_ = -1;
  std::vector<conn_state> conns_;
  char buf_[k_buf_size];
};

}  // namespace

int main(int argc, char** argv) {
  int listen_fd = raw::start_server("raw_epoll_echo", argc, argv, on_signal, SOCK_NONBLOCK).fd;

  auto* server = new echo_server(listen_fd);
  server->run();
  delete server;
  return 0;
}
