// echo_load — closed-loop ping-pong load generator for the echo-server benchmark (DESIGN.md §6).
//
// Single thread, epoll, N TCP connections; each sends S bytes, waits until the same S bytes
// have come back, and repeats. Usage:
//
//     echo_load --host 127.0.0.1 --port P --conns N --size S --seconds T [--rounds R] [--json]
//               [--server-pid PID] [--connect-parallel K]
//
// All N connections are established first (non-blocking connect, at most K = 256 in flight,
// refused/reset attempts retried for up to 30 s), then the clock starts.
//   * Duration mode (default): runs for T seconds (default 10).
//   * --rounds R: every connection does exactly R round trips; exits when all are done or
//     failed; T (default 120) is then only a timeout, and unfinished connections are errors.
// Reports round trips/s, p50/p99 latency in µs (log-linear histogram, ~1.6% resolution),
// error count and total round trips; --json prints the same as one JSON object line.
// --server-pid PID additionally samples the server's CPU time (utime+stime from /proc/PID/stat)
// exactly at clock start/stop -> server_cpu_us and cpu_us_per_rt, and its memory:
// server_rss_before_kb (VmRSS before the first connect) and server_rss_peak_kb (VmHWM at the end).
// Errors: failed connects, unexpected EOF/reset, echoed bytes that differ from what was sent,
// and (with --rounds) connections that had not finished at the timeout.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <string>
#include <vector>

#include "bench/raw_common.hpp"

namespace {

int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// Log-linear latency histogram over nanoseconds: exact below 128 ns, then 64 sub-buckets
// per power of two (relative bucket width <= 1/64).
class histogram {
 public:
  void record(uint64_t v) {
    ++counts_[index(v)];
    ++total_;
    sum_ += v;
    max_ = std::max(max_, v);
  }

  uint64_t total() const { return total_; }
  uint64_t max() const { return max_; }
  double mean() const { return total_ ? static_cast<double>(sum_) / total_ : 0.0; }

  // Value at quantile q (0..1), as the midpoint of the bucket holding it.
  double quantile(double q) const {
    if (total_ == 0) {
      return 0.0;
    }
    uint64_t rank = static_cast<uint64_t>(q * static_cast<double>(total_ - 1)) + 1;
    uint64_t seen = 0;
    for (std::size_t i = 0; i < counts_.size(); ++i) {
      seen += counts_[i];
      if (seen >= rank) {
        return bucket_mid(i);
      }
    }
    return static_cast<double>(max_);
  }

 private:
  static constexpr std::size_t k_buckets = 128 + 57 * 64;

  static std::size_t index(uint64_t v) {
    if (v < 128) {
      return static_cast<std::size_t>(v);
    }
    int k = 63 - __builtin_clzll(v);  // >= 7
    int shift = k - 6;
    uint64_t mant = v >> shift;  // in [64, 128)
    return 128 + static_cast<std::size_t>(k - 7) * 64 + static_cast<std::size_t>(mant - 64);
  }

  static double bucket_mid(std::size_t i) {
    if (i < 128) {
      return static_cast<double>(i);
    }
    std::size_t k = (i - 128) / 64 + 7;
    uint64_t mant = (i - 128) % 64 + 64;
    int shift = static_cast<int>(k) - 6;
    double lo = static_cast<double>(mant << shift);
    return lo + static_cast<double>(uint64_t{1} << shift) / 2.0;
  }

  std::array<uint64_t, k_buckets> counts_{};
  uint64_t total_ = 0;
  uint64_t sum_ = 0;
  uint64_t max_ = 0;
};

struct options {
  std::string host = "127.0.0.1";
  int port = 0;
  int conns = 100;
  int size = 64;
  double seconds = -1;  // -1: default by mode
  long rounds = 0;      // 0: duration mode
  bool json = false;
  int server_pid = 0;
  int connect_parallel = 256;
  double connect_timeout = 30;
};

[[noreturn]] void usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s --host H --port P --conns N --size S --seconds T [--rounds R] [--json]\n"
               "          [--server-pid PID] [--connect-parallel K]\n",
               argv0);
  std::exit(2);
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        usage(argv[0]);
      }
      return argv[++i];
    };
    if (a == "--host") {
      o.host = value();
    } else if (a == "--port") {
      o.port = std::atoi(value());
    } else if (a == "--conns") {
      o.conns = std::atoi(value());
    } else if (a == "--size") {
      o.size = std::atoi(value());
    } else if (a == "--seconds") {
      o.seconds = std::atof(value());
    } else if (a == "--rounds") {
      o.rounds = std::atol(value());
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--server-pid") {
      o.server_pid = std::atoi(value());
    } else if (a == "--connect-parallel") {
      o.connect_parallel = std::max(1, std::atoi(value()));
    } else {
      usage(argv[0]);
    }
  }
  if (o.port <= 0 || o.conns <= 0 || o.size <= 0 || o.rounds < 0) {
    usage(argv[0]);
  }
  if (o.seconds < 0) {
    o.seconds = o.rounds > 0 ? 120 : 10;
  }
  return o;
}

// utime+stime of a process in microseconds, or -1.
int64_t proc_cpu_us(int pid) {
  if (pid <= 0) {
    return -1;
  }
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE* f = std::fopen(path, "r");
  if (!f) {
    return -1;
  }
  char buf[1024];
  std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');  // comm may contain spaces
  if (!p) {
    return -1;
  }
  // Fields after comm start at field 3 (state); utime is field 14, stime field 15.
  unsigned long long utime = 0;
  unsigned long long stime = 0;
  if (std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2) {
    return -1;
  }
  long hz = sysconf(_SC_CLK_TCK);
  return static_cast<int64_t>((utime + stime) * 1'000'000ULL / static_cast<unsigned long long>(hz));
}

// A "VmXXX:" field of /proc/PID/status in kB, or -1.
long proc_status_kb(int pid, const char* field) {
  if (pid <= 0) {
    return -1;
  }
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/status", pid);
  FILE* f = std::fopen(path, "r");
  if (!f) {
    return -1;
  }
  char line[256];
  long kb = -1;
  std::size_t flen = std::strlen(field);
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, field, flen) == 0 && line[flen] == ':') {
      kb = std::atol(line + flen + 1);
      break;
    }
  }
  std::fclose(f);
  return kb;
}

enum class conn_phase { idle, connecting, running, done, failed };

struct conn {
  int fd = -1;
  conn_phase phase = conn_phase::idle;
  int attempts = 0;
  std::size_t sent = 0;
  std::size_t received = 0;
  bool want_out = false;
  long rounds = 0;
  int64_t t_start = 0;
};

class load_runner {
 public:
  explicit load_runner(const options& o) : opt_(o), conns_(static_cast<std::size_t>(o.conns)) {
    epfd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) {
      std::perror("epoll_create1");
      std::exit(1);
    }
    addr_.sin_family = AF_INET;
    addr_.sin_port = htons(static_cast<uint16_t>(o.port));
    if (inet_pton(AF_INET, o.host.c_str(), &addr_.sin_addr) != 1) {
      std::fprintf(stderr, "echo_load: bad IPv4 address %s\n", o.host.c_str());
      std::exit(2);
    }
    payload_.resize(static_cast<std::size_t>(o.size));
    uint32_t x = 0x9e3779b9u;
    for (char& c : payload_) {
      x = x * 1664525u + 1013904223u;
      c = static_cast<char>(x >> 24);
    }
    rbuf_.resize(std::max<std::size_t>(payload_.size(), 64 * 1024));
  }

  int run() {
    rss_before_kb_ = proc_status_kb(opt_.server_pid, "VmRSS");
    connect_all();
    measure();
    report();
    for (conn& c : conns_) {
      if (c.fd >= 0) {
        close(c.fd);
      }
    }
    return 0;
  }

 private:
  // ---- connect phase ---------------------------------------------------------------------

  bool start_connect(std::size_t i) {
    conn& c = conns_[i];
    ++c.attempts;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      std::fprintf(stderr, "echo_load: socket: %s\n", std::strerror(errno));
      return false;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c.fd = fd;
    c.phase = conn_phase::connecting;
    int r = connect(fd, reinterpret_cast<const sockaddr*>(&addr_), sizeof addr_);
    if (r == 0) {
      on_connected(i);
      return true;
    }
    if (errno != EINPROGRESS) {
      last_connect_errno_ = errno;
      close(fd);
      c.fd = -1;
      c.phase = conn_phase::idle;
      return false;
    }
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.u64 = i;
    epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
    ++in_flight_;
    return true;
  }

  void on_connected(std::size_t i) {
    conn& c = conns_[i];
    c.phase = conn_phase::running;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = i;
    if (epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev) < 0) {
      epoll_ctl(epfd_, EPOLL_CTL_ADD, c.fd, &ev);
    }
    ++connected_;
  }

  void connect_all() {
    std::deque<std::size_t> todo;
    for (std::size_t i = 0; i < conns_.size(); ++i) {
      todo.push_back(i);
    }
    int64_t deadline = now_ns() + static_cast<int64_t>(opt_.connect_timeout * 1e9);
    std::vector<epoll_event> events(1024);
    while (!todo.empty() || in_flight_ > 0) {
      while (!todo.empty() && in_flight_ < opt_.connect_parallel) {
        std::size_t i = todo.front();
        todo.pop_front();
        if (!start_connect(i)) {
          if (now_ns() < deadline) {
            todo.push_back(i);  // EAGAIN / refused: retry after a breath
            usleep(1000);
          } else {
            conns_[i].phase = conn_phase::failed;
            ++connect_failures_;
          }
          break;
        }
      }
      if (in_flight_ == 0) {
        continue;
      }
      int n = epoll_wait(epfd_, events.data(), static_cast<int>(events.size()), 100);
      for (int k = 0; k < n; ++k) {
        std::size_t i = events[static_cast<std::size_t>(k)].data.u64;
        conn& c = conns_[i];
        if (c.phase != conn_phase::connecting) {
          continue;
        }
        --in_flight_;
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err == 0) {
          on_connected(i);
          continue;
        }
        last_connect_errno_ = err;
        close(c.fd);
        c.fd = -1;
        if (now_ns() < deadline) {
          c.phase = conn_phase::idle;
          todo.push_back(i);
        } else {
          c.phase = conn_phase::failed;
          ++connect_failures_;
        }
      }
      if (n == 0 && now_ns() >= deadline) {
        // Stuck connects past the deadline: give up on them.
        for (std::size_t i = 0; i < conns_.size(); ++i) {
          conn& c = conns_[i];
          if (c.phase == conn_phase::connecting) {
            close(c.fd);
            c.fd = -1;
            c.phase = conn_phase::failed;
            ++connect_failures_;
            --in_flight_;
          }
        }
      }
    }
    if (connect_failures_ > 0) {
      std::fprintf(stderr, "echo_load: %ld connections failed (last error: %s)\n", connect_failures_,
                   std::strerror(last_connect_errno_));
    }
  }

  // ---- measured phase --------------------------------------------------------------------

  void fail(conn& c) {
    if (c.fd >= 0) {
      close(c.fd);
      c.fd = -1;
    }
    c.phase = conn_phase::failed;
    ++io_errors_;
    ++finished_;
  }

  void set_out(std::size_t i, bool want) {
    conn& c = conns_[i];
    if (c.want_out == want) {
      return;
    }
    c.want_out = want;
    epoll_event ev{};
    ev.events = EPOLLIN | (want ? EPOLLOUT : 0u);
    ev.data.u64 = i;
    epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  // Sends the rest of the current request; false if the connection failed.
  bool push(std::size_t i) {
    conn& c = conns_[i];
    while (c.sent < payload_.size()) {
      ssize_t w = send(c.fd, payload_.data() + c.sent, payload_.size() - c.sent, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) {
          continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          set_out(i, true);
          return true;
        }
        fail(c);
        return false;
      }
      c.sent += static_cast<std::size_t>(w);
    }
    set_out(i, false);
    return true;
  }

  void begin_round(std::size_t i, int64_t t) {
    conn& c = conns_[i];
    c.sent = 0;
    c.received = 0;
    c.t_start = t;
    push(i);
  }

  void on_readable(std::size_t i) {
    conn& c = conns_[i];
    std::size_t want = payload_.size() - c.received;
    ssize_t n = recv(c.fd, rbuf_.data(), want, 0);
    if (n <= 0) {
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        return;
      }
      fail(c);  // EOF or reset mid-run
      return;
    }
    if (std::memcmp(rbuf_.data(), payload_.data() + c.received, static_cast<std::size_t>(n)) != 0) {
      ++mismatches_;
      fail(c);
      return;
    }
    c.received += static_cast<std::size_t>(n);
    if (c.received < payload_.size()) {
      return;
    }
    int64_t t = now_ns();
    hist_.record(static_cast<uint64_t>(t - c.t_start));
    ++c.rounds;
    if (opt_.rounds > 0 && c.rounds >= opt_.rounds) {
      c.phase = conn_phase::done;
      ++finished_;
      return;
    }
    begin_round(i, t);
  }

  void measure() {
    for (conn& c : conns_) {
      if (c.phase == conn_phase::failed) {
        ++finished_;
      }
    }
    cpu_start_us_ = proc_cpu_us(opt_.server_pid);
    t_begin_ = now_ns();
    int64_t t_end = t_begin_ + static_cast<int64_t>(opt_.seconds * 1e9);
    for (std::size_t i = 0; i < conns_.size(); ++i) {
      if (conns_[i].phase == conn_phase::running) {
        begin_round(i, t_begin_);
      }
    }
    std::vector<epoll_event> events(4096);
    const std::size_t total = conns_.size();
    for (;;) {
      if (opt_.rounds > 0 && finished_ >= total) {
        break;
      }
      int64_t t = now_ns();
      if (t >= t_end) {
        break;
      }
      int timeout_ms = static_cast<int>(std::min<int64_t>((t_end - t) / 1'000'000 + 1, 1000));
      int n = epoll_wait(epfd_, events.data(), static_cast<int>(events.size()), timeout_ms);
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        std::perror("epoll_wait");
        std::exit(1);
      }
      for (int k = 0; k < n; ++k) {
        const epoll_event& ev = events[static_cast<std::size_t>(k)];
        std::size_t i = ev.data.u64;
        conn& c = conns_[i];
        if (c.phase != conn_phase::running) {
          continue;
        }
        if ((ev.events & EPOLLOUT) && !push(i)) {
          continue;
        }
        if (ev.events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
          on_readable(i);
        }
      }
    }
    t_stop_ = now_ns();
    cpu_end_us_ = proc_cpu_us(opt_.server_pid);
    if (opt_.rounds > 0) {
      for (conn& c : conns_) {
        if (c.phase == conn_phase::running) {
          ++unfinished_;  // timed out before its R round trips
        }
      }
    }
  }

  // ---- report ----------------------------------------------------------------------------

  void report() {
    double elapsed = static_cast<double>(t_stop_ - t_begin_) / 1e9;
    uint64_t rts = hist_.total();
    double rtps = elapsed > 0 ? static_cast<double>(rts) / elapsed : 0.0;
    double p50 = hist_.quantile(0.50) / 1000.0;
    double p99 = hist_.quantile(0.99) / 1000.0;
    double mean = hist_.mean() / 1000.0;
    double max = static_cast<double>(hist_.max()) / 1000.0;
    long errors = connect_failures_ + io_errors_ + unfinished_;
    int64_t cpu_us = (cpu_start_us_ >= 0 && cpu_end_us_ >= 0) ? cpu_end_us_ - cpu_start_us_ : -1;
    double cpu_per_rt =
        (cpu_us >= 0 && rts > 0) ? static_cast<double>(cpu_us) / static_cast<double>(rts) : -1.0;
    long rss_peak_kb = proc_status_kb(opt_.server_pid, "VmHWM");
    long rss_now_kb = proc_status_kb(opt_.server_pid, "VmRSS");
    if (opt_.json) {
      std::printf(
          "{\"conns\":%d,\"connected\":%ld,\"size\":%d,\"rounds\":%ld,\"seconds\":%.3f,"
          "\"round_trips\":%llu,\"rtps\":%.1f,\"p50_us\":%.2f,\"p99_us\":%.2f,"
          "\"mean_us\":%.2f,\"max_us\":%.2f,\"errors\":%ld,\"connect_failures\":%ld,"
          "\"io_errors\":%ld,\"mismatches\":%ld,\"unfinished\":%ld,"
          "\"server_cpu_us\":%lld,\"cpu_us_per_rt\":%.4f,"
          "\"server_rss_before_kb\":%ld,\"server_rss_peak_kb\":%ld,\"server_rss_end_kb\":%ld}\n",
          opt_.conns, connected_, opt_.size, opt_.rounds, elapsed, static_cast<unsigned long long>(rts), rtps,
          p50, p99, mean, max, errors, connect_failures_, io_errors_, mismatches_, unfinished_,
          static_cast<long long>(cpu_us), cpu_per_rt, rss_before_kb_, rss_peak_kb, rss_now_kb);
    } else {
      std::printf("conns        %d (%ld connected)\n", opt_.conns, connected_);
      std::printf("size         %d B\n", opt_.size);
      std::printf("elapsed      %.3f s\n", elapsed);
      std::printf("round trips  %llu\n", static_cast<unsigned long long>(rts));
      std::printf("rtps         %.0f\n", rtps);
      std::printf("latency      p50 %.1f us  p99 %.1f us  mean %.1f us  max %.1f us\n", p50, p99, mean, max);
      std::printf("errors       %ld (connect %ld, io %ld [mismatch %ld], unfinished %ld)\n", errors,
                  connect_failures_, io_errors_, mismatches_, unfinished_);
      if (cpu_us >= 0) {
        std::printf("server cpu   %lld us (%.3f us/rt)\n", static_cast<long long>(cpu_us), cpu_per_rt);
      }
      if (rss_before_kb_ >= 0) {
        std::printf("server rss   before %ld kB, peak %ld kB, now %ld kB\n", rss_before_kb_, rss_peak_kb,
                    rss_now_kb);
      }
    }
    std::fflush(stdout);
  }

  options opt_;
  std::vector<conn> conns_;
  int epfd_ = -1;
  sockaddr_in addr_{};
  std::string payload_;
  std::vector<char> rbuf_;
  histogram hist_;
  int in_flight_ = 0;
  long connected_ = 0;
  long connect_failures_ = 0;
  int last_connect_errno_ = 0;
  long io_errors_ = 0;
  long mismatches_ = 0;
  long unfinished_ = 0;
  std::size_t finished_ = 0;
  int64_t t_begin_ = 0;
  int64_t t_stop_ = 0;
  int64_t cpu_start_us_ = -1;
  int64_t cpu_end_us_ = -1;
  long rss_before_kb_ = -1;
};

}  // namespace

int main(int argc, char** argv) {
  options o = parse(argc, argv);
  raw::raise_nofile_limit();
  std::signal(SIGPIPE, SIG_IGN);
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur != RLIM_INFINITY && static_cast<rlim_t>(o.conns) + 16 > rl.rlim_cur) {
    std::fprintf(stderr, "echo_load: warning: %d connections but RLIMIT_NOFILE is %llu\n", o.conns,
                 static_cast<unsigned long long>(rl.rlim_cur));
  }
  load_runner runner(o);
  return runner.run();
}
