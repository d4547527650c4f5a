// raw_uring_echo — the raw io_uring floor for the echo-server benchmark (DESIGN.md §6).
//
// A single-threaded liburing TCP echo server with no cogent code in it. Usage:
//
//     raw_uring_echo <port> [--multishot-recv] [--fixed-files] [--poll-first]   # port 0: a free port
//
// Prints `port <N>` as the first stdout line (flushed), then serves until SIGINT/SIGTERM
// and exits 0. Driven by bench/echo_load, orchestrated by bench/echo_bench.sh.
//
// Shape (a fair, competent floor — not a maximal one): each connection owns a 4 KiB buffer
// and has exactly one op in flight, cycling recv -> send (re-sent until complete) -> recv.
// Accept is multishot (re-armed when the kernel drops it, single-shot if unsupported). Each
// loop turn is one io_uring_submit_and_wait(1) followed by batched reaping with
// io_uring_for_each_cqe + io_uring_cq_advance. The ring asks for SINGLE_ISSUER|DEFER_TASKRUN,
// falling back to COOP_TASKRUN, then to no flags. No registered files/buffers, no buffer rings.
//
// --multishot-recv is not the floor but a reference for a possible cogent design: each connection
// keeps one multishot recv armed (IORING_RECV_MULTISHOT with a provided-buffer ring of 4096 x 4 KiB
// buffers), so a read costs no SQE and no poll re-arm; the data is copied from the ring's buffer to
// the connection's (as a socket API would copy into the caller's buffer) and the buffer returned at
// once. The recv is re-armed when the kernel ends it (no IORING_CQE_F_MORE, or -ENOBUFS). Made for
// the ping-pong load only: a connection that fails while its send is in flight (the armed recv and the
// send both complete with errors) is not handled.
//
// --fixed-files is another reference: a sparse registered file table (slot = fd number, 16384
// slots, so it needs RLIMIT_NOFILE >= 16384), each accepted socket registered with one
// io_uring_register call and its recv/send using IOSQE_FIXED_FILE, which skips the per-op
// fget/fput of the socket's file (≈ 2.8 % of this server's CPU in perf at 1000 connections).
//
// --poll-first is a third reference: a recv that follows a completed send carries
// IORING_RECVSEND_POLL_FIRST, so the kernel arms the poll at once instead of first trying a recv
// that, in a ping-pong, may find the socket empty (the peer has not answered yet) and fail EAGAIN.
// (Measured worse: most of those recvs find the answer already there; BENCHMARKS.md.)

#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "bench/raw_common.hpp"

namespace {

volatile std::sig_atomic_t g_stop = 0;

void on_signal(int) {
  g_stop = 1;
}

constexpr std::size_t k_buf_size = 4096;
constexpr unsigned k_sq_entries = 4096;
constexpr unsigned k_cq_entries = 32768;
constexpr unsigned k_ring_bufs = 4096;     // --multishot-recv: provided buffers (a power of two)
constexpr unsigned k_fixed_slots = 16384;  // --fixed-files: registered file table (within RLIMIT_NOFILE)

enum op_kind : uint64_t { op_accept = 1, op_recv = 2, op_send = 3 };

// user_data = fd << 8 | op.
uint64_t make_tag(int fd, op_kind op) {
  return (static_cast<uint64_t>(fd) << 8) | op;
}
int tag_fd(uint64_t tag) {
  return static_cast<int>(tag >> 8);
}
op_kind tag_op(uint64_t tag) {
  return static_cast<op_kind>(tag & 0xff);
}

struct conn_state {
  std::unique_ptr<char[]> buf;
  unsigned len = 0;    // bytes to echo back
  unsigned sent = 0;   // bytes of them already sent
  bool rearm = false;  // --multishot-recv: the kernel ended this connection's recv
};

[[noreturn]] void die(const char* what, int err) {
  raw::die("raw_uring_echo", what, err);
}

class echo_server {
 public:
  echo_server(int listen_fd, bool multishot_recv, bool fixed_files, bool poll_first)
      : listen_fd_(listen_fd),
        multishot_recv_(multishot_recv),
        fixed_files_(fixed_files),
        poll_first_(poll_first) {
    const unsigned flag_sets[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int ret = -EINVAL;
    for (unsigned flags : flag_sets) {
      io_uring_params params{};
      params.flags = flags | IORING_SETUP_CQSIZE;
      params.cq_entries = k_cq_entries;
      ret = io_uring_queue_init_params(k_sq_entries, &ring_, &params);
      if (ret == 0) {
        break;
      }
    }
    if (ret < 0) {
      die("io_uring_queue_init_params", -ret);
    }
    if (multishot_recv_) {
      setup_buffer_ring();
    }
    if (fixed_files_) {
      // Slot = fd number; the table is as large as the fd limit allows.
      if (int r = io_uring_register_files_sparse(&ring_, k_fixed_slots); r < 0) {
        die("io_uring_register_files_sparse", -r);
      }
    }
    arm_accept();
  }

  ~echo_server() {
    io_uring_queue_exit(&ring_);
    std::free(buf_ring_);
  }

  void run() {
    while (!g_stop) {
      int ret = io_uring_submit_and_wait(&ring_, 1);
      if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
        die("io_uring_submit_and_wait", -ret);
      }
      io_uring_cqe* cqe;
      unsigned head;
      unsigned count = 0;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        ++count;
        handle(cqe->user_data, cqe->res, cqe->flags);
      }
      io_uring_cq_advance(&ring_, count);
    }
  }

 private:
  io_uring_sqe* get_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    while (sqe == nullptr) {  // SQ full: flush it and retry
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;
  }

  conn_state& state(int fd) {
    if (static_cast<std::size_t>(fd) >= conns_.size()) {
      conns_.resize(static_cast<std::size_t>(fd) * 2 + 64);
    }
    return conns_[static_cast<std::size_t>(fd)];
  }

  void arm_accept() {
    io_uring_sqe* sqe = get_sqe();
    if (multishot_accept_) {
      io_uring_prep_multishot_accept(sqe, listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    } else {
      io_uring_prep_accept(sqe, listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    }
    io_uring_sqe_set_data64(sqe, make_tag(listen_fd_, op_accept));
  }

  void setup_buffer_ring() {
    void* mem = nullptr;
    if (posix_memalign(&mem, 4096, k_ring_bufs * sizeof(io_uring_buf)) != 0) {
      die("posix_memalign", ENOMEM);
    }
    buf_ring_ = static_cast<io_uring_buf_ring*>(mem);
    io_uring_buf_ring_init(buf_ring_);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uintptr_t>(buf_ring_);
    reg.ring_entries = k_ring_bufs;
    reg.bgid = 0;
    if (int r = io_uring_register_buf_ring(&ring_, &reg, 0); r < 0) {
      die("io_uring_register_buf_ring", -r);
    }
    ring_mem_.reset(new char[k_ring_bufs * k_buf_size]);
    for (unsigned i = 0; i < k_ring_bufs; ++i) {
      io_uring_buf_ring_add(buf_ring_, ring_mem_.get() + i * k_buf_size, k_buf_size,
                            static_cast<unsigned short>(i), io_uring_buf_ring_mask(k_ring_bufs),
                            static_cast<int>(i));
    }
    io_uring_buf_ring_advance(buf_ring_, static_cast<int>(k_ring_bufs));
  }

  void give_back(unsigned bid) {
    io_uring_buf_ring_add(buf_ring_, ring_mem_.get() + bid * k_buf_size, k_buf_size,
                          static_cast<unsigned short>(bid), io_uring_buf_ring_mask(k_ring_bufs), 0);
    io_uring_buf_ring_advance(buf_ring_, 1);
  }

  void arm_recv(int fd, conn_state& c, bool after_send = false) {
    io_uring_sqe* sqe = get_sqe();
    if (multishot_recv_) {
      io_uring_prep_recv_multishot(sqe, fd, nullptr, 0, 0);
      sqe->flags |= IOSQE_BUFFER_SELECT;
      sqe->buf_group = 0;
    } else {
      io_uring_prep_recv(sqe, fd, c.buf.get(), k_buf_size, 0);
      if (poll_first_ && after_send) {
        sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
      }
    }
    io_uring_sqe_set_data64(sqe, make_tag(fd, op_recv));
    use_fixed(sqe);
  }

  void arm_send(int fd, conn_state& c) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_send(sqe, fd, c.buf.get() + c.sent, c.len - c.sent, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, make_tag(fd, op_send));
    use_fixed(sqe);
  }

  // --fixed-files: the op names the fd's slot in the registered table.
  void use_fixed(io_uring_sqe* sqe) {
    if (fixed_files_) {
      sqe->flags |= IOSQE_FIXED_FILE;
    }
  }

  void close_conn(int fd, conn_state& c) {
    if (fixed_files_) {
      int none = -1;
      io_uring_register_files_update(&ring_, static_cast<unsigned>(fd), &none, 1);
    }
    c.buf.reset();
    c.len = 0;
    c.sent = 0;
    close(fd);  // no op of this connection is in flight at this point
  }

  void handle(uint64_t tag, int res, unsigned flags) {
    int fd = tag_fd(tag);
    switch (tag_op(tag)) {
      case op_accept:
        on_accept(res, flags);
        break;
      case op_recv: {
        conn_state& c = state(fd);
        if (multishot_recv_ && res == -ENOBUFS) {
          arm_recv(fd, c);  // the ring ran dry: buffers come back as sends finish
          break;
        }
        if (res <= 0) {
          close_conn(fd, c);
          break;
        }
        if (multishot_recv_) {
          unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
          std::memcpy(c.buf.get(), ring_mem_.get() + bid * k_buf_size, static_cast<std::size_t>(res));
          give_back(bid);
          c.rearm = !(flags & IORING_CQE_F_MORE);
        }
        c.len = static_cast<unsigned>(res);
        c.sent = 0;
        arm_send(fd, c);
        break;
      }
      case op_send: {
        conn_state& c = state(fd);
        if (res < 0) {
          close_conn(fd, c);
          break;
        }
        c.sent += static_cast<unsigned>(res);
        if (c.sent < c.len) {
          arm_send(fd, c);  // partial send: send the rest
        } else if (!multishot_recv_ || c.rearm) {
          c.rearm = false;
          arm_recv(fd, c, /*after_send=*/true);
        }
        break;
      }
    }
  }

  void on_accept(int res, unsigned flags) {
    if (res >= 0) {
      int fd = res;
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      if (fixed_files_ && io_uring_register_files_update(&ring_, static_cast<unsigned>(fd), &fd, 1) != 1) {
        die("io_uring_register_files_update", EINVAL);
      }
      conn_state& c = state(fd);
      c.buf.reset(new char[k_buf_size]);
      c.len = 0;
      c.sent = 0;
      arm_recv(fd, c);
    } else if (res == -EINVAL && multishot_accept_) {
      multishot_accept_ = false;  // kernel without multishot accept
      arm_accept();
      return;
    } else if (res != -EINTR && res != -ECONNABORTED && res != -EAGAIN) {
      std::fprintf(stderr, "raw_uring_echo: accept: %s\n", std::strerror(-res));
    }
    if (!multishot_accept_ || !(flags & IORING_CQE_F_MORE)) {
      arm_accept();
    }
  }

  io_uring ring_{};
  int listen_fd_;
  bool multishot_accept_ = true;
  bool multishot_recv_;
  bool fixed_files_;
  bool poll_first_;  // --poll-first
  std::vector<conn_state> conns_;
  io_uring_buf_ring* buf_ring_ = nullptr;  // --multishot-recv
  std::unique_ptr<char[]> ring_mem_;
};

}  // namespace

int main(int argc, char** argv) {
  int listen_fd = raw::start_server("raw_uring_echo", argc, argv, on_signal, 0).fd;

  bool multishot_recv = false;
  bool fixed_files = false;
  bool poll_first = false;
  for (int i = 2; i < argc; ++i) {
    multishot_recv |= std::strcmp(argv[i], "--multishot-recv") == 0;
    fixed_files |= std::strcmp(argv[i], "--fixed-files") == 0;
    poll_first |= std::strcmp(argv[i], "--poll-first") == 0;
  }
  echo_server server(listen_fd, multishot_recv, fixed_files, poll_first);
  server.run();
  return 0;
}
