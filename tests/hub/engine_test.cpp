// tests/hub/engine_test.cpp — tests of the io_uring engine on its own (no fibers).
//
// Drives cogent::detail::engine directly through io_op structs: round trips for
// each op family, cancellation (pending and racing a completion), deadlines,
// cross-thread wake(), non-blocking poll(), and the SQ-full / CQ-overflow paths.
#include "hub/detail/engine.hpp"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/child.hpp"
#include "tests/hub/engine_support.hpp"

namespace {

using cogent::detail::clock;
using cogent::detail::engine;
using cogent::detail::io_op;
using cogent::detail::make_uring_engine;
using cogent::detail::op_code;
using namespace std::chrono_literals;

using cogent::test::counted_op;
using cogent::test::drive;

struct fd_pair {
  int a = -1;
  int b = -1;
  ~fd_pair() {
    if (a >= 0) {
      ::close(a);
    }
    if (b >= 0) {
      ::close(b);
    }
  }
};

fd_pair make_socketpair() {
  fd_pair p;
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  p.a = sv[0];
  p.b = sv[1];
  return p;
}

double ms_since(clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock::now() - t0).count();
}

}  // namespace

TEST_SUITE("engine") {
  TEST_CASE("nop round trip") {
    auto e = make_uring_engine(64);
    MESSAGE("engine: " << std::string(e->name()));
    CHECK(std::string(e->name()).rfind("io_uring", 0) == 0);

    counted_op op;
    op.code = op_code::nop;
    op.result = 12345;
    e->submit(op);
    CHECK(e->in_flight() == 1);
    CHECK_FALSE(op.done);
    CHECK(e->wait(clock::time_point::max()) == 1);
    CHECK(op.done);
    CHECK(op.result == 0);
    CHECK(op.deliveries == 1);
    CHECK(e->in_flight() == 0);
  }

  TEST_CASE("read/write through a pipe" * doctest::timeout(10)) {
    auto e = make_uring_engine(64);
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    fd_pair pipe_fds;
    pipe_fds.a = p[0];
    pipe_fds.b = p[1];

    char in[16] = {};
    counted_op rd;
    rd.code = op_code::read;
    rd.fd = p[0];
    rd.buf = in;
    rd.len = sizeof in;
    e->submit(rd);  // pending: nothing written yet
    e->poll();
    CHECK_FALSE(rd.done);

    char out[] = "hello pipe";
    counted_op wr;
    wr.code = op_code::write;
    wr.fd = p[1];
    wr.buf = out;
    wr.len = sizeof out;
    e->submit(wr);
    REQUIRE(drive(*e, [&] { return rd.done && wr.done; }));
    CHECK(wr.result == static_cast<int>(sizeof out));
    CHECK(rd.result == static_cast<int>(sizeof out));
    CHECK(std::string(in) == "hello pipe");
    CHECK(e->in_flight() == 0);
  }

  TEST_CASE("readv/writev/fsync on a file with offsets" * doctest::timeout(10)) {
    auto e = make_uring_engine(64);
    char path[] = "/tmp/cogent_engine_test_XXXXXX";
    int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::unlink(path);

    char a[] = "abc";
    char b[] = "defg";
    iovec wv[2] = {{a, 3}, {b, 4}};
    counted_op wr;
    wr.code = op_code::writev;
    wr.fd = fd;
    wr.buf = wv;
    wr.len = 2;
    wr.offset = 10;
    e->submit(wr);
    REQUIRE(drive(*e, [&] { return wr.done; }));
    CHECK(wr.result == 7);

    counted_op sync;
    sync.code = op_code::fsync;
    sync.fd = fd;
    e->submit(sync);
    REQUIRE(drive(*e, [&] { return sync.done; }));
    CHECK(sync.result == 0);

    char x[4] = {};
    char y[3] = {};
    iovec rv[2] = {{x, 4}, {y, 3}};
    counted_op rd;
    rd.code = op_code::readv;
    rd.fd = fd;
    rd.buf = rv;
    rd.len = 2;
    rd.offset = 10;
    e->submit(rd);
    REQUIRE(drive(*e, [&] { return rd.done; }));
    CHECK(rd.result == 7);
    CHECK(std::string(x, 4) == "abcd");
    CHECK(std::string(y, 3) == "efg");

    // offset -1 = current file position (still 0: pwritev/preadv above did not move it).
    char z[3] = {};
    counted_op cur;
    cur.code = op_code::read;
    cur.fd = fd;
    cur.buf = z;
    cur.len = 3;
    cur.offset = -1;
    e->submit(cur);
    REQUIRE(drive(*e, [&] { return cur.done; }));
    CHECK(cur.result == 3);
    CHECK(::lseek(fd, 0, SEEK_CUR) == 3);

    counted_op cl;
    cl.code = op_code::close;
    cl.fd = fd;
    e->submit(cl);
    REQUIRE(drive(*e, [&] { return cl.done; }));
    CHECK(cl.result == 0);
  }

  TEST_CASE("recv/send and recvmsg/sendmsg through a socketpair" * doctest::timeout(10)) {
    auto e = make_uring_engine(64);
    auto sp = make_socketpair();

    char in[32] = {};
    counted_op rv;
    rv.recv(sp.b, in, sizeof in);
    e->submit(rv);

    char out[] = "ping";
    counted_op sd;
    sd.code = op_code::send;
    sd.fd = sp.a;
    sd.buf = out;
    sd.len = 4;
    sd.flags = MSG_NOSIGNAL;
    e->submit(sd);
    REQUIRE(drive(*e, [&] { return rv.done && sd.done; }));
    CHECK(sd.result == 4);
    CHECK(rv.result == 4);
    CHECK(std::string(in, 4) == "ping");

    char msg_out[] = "pong";
    iovec ov{msg_out, 4};
    msghdr om{};
    om.msg_iov = &ov;
    om.msg_iovlen = 1;
    counted_op sm;
    sm.code = op_code::sendmsg;
    sm.fd = sp.b;
    sm.buf = &om;
    sm.flags = MSG_NOSIGNAL;

    char msg_in[8] = {};
    iovec iv{msg_in, sizeof msg_in};
    msghdr im{};
    im.msg_iov = &iv;
    im.msg_iovlen = 1;
    counted_op rm;
    rm.code = op_code::recvmsg;
    rm.fd = sp.a;
    rm.buf = &im;
    e->submit(rm);
    e->submit(sm);
    REQUIRE(drive(*e, [&] { return rm.done && sm.done; }));
    CHECK(sm.result == 4);
    CHECK(rm.result == 4);
    CHECK(std::string(msg_in, 4) == "pong");

    counted_op sh;
    sh.code = op_code::shutdown;
    sh.fd = sp.a;
    sh.flags = SHUT_WR;
    e->submit(sh);
    REQUIRE(drive(*e, [&] { return sh.done; }));
    CHECK(sh.result == 0);
    char eof_buf[4];
    CHECK(::recv(sp.b, eof_buf, sizeof eof_buf, 0) == 0);
    CHECK(e->in_flight() == 0);
  }

  TEST_CASE("accept + connect on 127.0.0.1" * doctest::timeout(10)) {
    auto e = make_uring_engine(64);
    fd_pair fds;
    fds.a = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fds.a >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    REQUIRE(::bind(fds.a, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fds.a, 8) == 0);
    socklen_t alen = sizeof addr;
    REQUIRE(::getsockname(fds.a, reinterpret_cast<sockaddr*>(&addr), &alen) == 0);
    REQUIRE(addr.sin_port != 0);

    sockaddr_in peer{};
    socklen_t peer_len = sizeof peer;
    counted_op ac;
    ac.code = op_code::accept;
    ac.fd = fds.a;
    ac.buf = &peer;
    ac.addrlen = &peer_len;
    ac.flags = SOCK_CLOEXEC;
    e->submit(ac);

    fds.b = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fds.b >= 0);
    counted_op cn;
    cn.code = op_code::connect;
    cn.fd = fds.b;
    cn.buf = &addr;
    cn.len = sizeof addr;
    e->submit(cn);

    REQUIRE(drive(*e, [&] { return ac.done && cn.done; }));
    CHECK(cn.result == 0);
    REQUIRE(ac.result >= 0);
    CHECK(peer.sin_family == AF_INET);
    CHECK(peer_len == sizeof peer);
    CHECK((::fcntl(ac.result, F_GETFD) & FD_CLOEXEC) != 0);
    ::close(ac.result);
    CHECK(e->in_flight() == 0);
  }

  TEST_CASE("cancel of a pending recv completes with -ECANCELED" * doctest::timeout(10)) {
    auto e = make_uring_engine(64);
    auto sp = make_socketpair();
    char buf[8];

    SUBCASE("after the recv reached the kernel") {
      counted_op rv;
      rv.recv(sp.b, buf, sizeof buf);
      e->submit(rv);
      CHECK(e->poll() == 0);
      CHECK(e->in_flight() == 1);
      e->cancel(rv);
      CHECK(e->in_flight() == 1);  // the cancel itself is not counted
      REQUIRE(drive(*e, [&] { return rv.done; }));
      CHECK(rv.result == -ECANCELED);
      CHECK(rv.deliveries == 1);
      CHECK(e->in_flight() == 0);
    }

    SUBCASE("in the same batch as the recv") {
      counted_op rv;
      rv.recv(sp.b, buf, sizeof buf);
      e->submit(rv);
      e->cancel(rv);
      REQUIRE(drive(*e, [&] { return rv.done; }));
      CHECK(rv.result == -ECANCELED);
      CHECK(rv.deliveries == 1);
      CHECK(e->in_flight() == 0);
    }

    // The cancel's own CQE must never show up as a delivery.
    CHECK(e->wait(clock::now() + 20ms) == 0);
    CHECK(e->in_flight() == 0);
  }

  TEST_CASE("cancel racing a completed op delivers the real result once" * doctest::timeout(10)) {
    auto e = make_uring_engine(64);
    auto sp = make_socketpair();

    SUBCASE("op already completed in the kernel when the cancel is queued") {
      REQUIRE(::send(sp.a, "data", 4, MSG_NOSIGNAL) == 4);
      char buf[8];
      counted_op rv;
      rv.recv(sp.b, buf, sizeof buf);
      e->submit(rv);
      e->flush();     // the kernel takes the recv: it finds the data and completes
      e->cancel(rv);  // too late: the real result stands
      REQUIRE(drive(*e, [&] { return rv.done; }));
      CHECK(rv.result == 4);
      CHECK(rv.deliveries == 1);
    }

    SUBCASE("op still queued when the cancel comes: it never runs") {
      REQUIRE(::send(sp.a, "data", 4, MSG_NOSIGNAL) == 4);
      char buf[8];
      counted_op rv;
      rv.recv(sp.b, buf, sizeof buf);
      e->submit(rv);
      e->cancel(rv);  // same batch: the recv is still in the submission queue
      REQUIRE(drive(*e, [&] { return rv.done; }));
      CHECK(rv.result == -ECANCELED);
      CHECK(rv.deliveries == 1);
      CHECK(e->in_flight() == 0);
      CHECK(::recv(sp.b, buf, sizeof buf, MSG_DONTWAIT) == 4);  // the data is still there
    }

    SUBCASE("cancel issued from another op's callback in the same reap batch") {
      struct canceller : io_op {
        engine* eng = nullptr;
        io_op* target = nullptr;
      };
      canceller first;
      counted_op second;
      first.code = op_code::nop;
      first.eng = e.get();
      first.target = &second;
      first.on_complete = [](io_op* op) {
        auto* self = static_cast<canceller*>(op);
        self->eng->cancel(*self->target);  // already done: must be a no-op
      };
      second.code = op_code::nop;
      e->submit(first);
      e->submit(second);
      REQUIRE(drive(*e, [&] { return first.done && second.done; }));
      CHECK(second.result == 0);
      CHECK(second.deliveries == 1);
    }

    SUBCASE("cancel after delivery is a no-op") {
      counted_op op;
      op.code = op_code::nop;
      e->submit(op);
      REQUIRE(drive(*e, [&] { return op.done; }));
      e->cancel(op);
      CHECK(e->in_flight() == 0);
      CHECK(op.deliveries == 1);
    }

    CHECK(e->wait(clock::now() + 20ms) == 0);
    CHECK(e->in_flight() == 0);
  }

  TEST_CASE("wait(deadline) returns around the deadline when nothing happens" * doctest::timeout(10)) {
    auto e = make_uring_engine(64);
    auto t0 = clock::now();
    CHECK(e->wait(t0 + 50ms) == 0);
    double elapsed = ms_since(t0);
    CHECK(elapsed >= 49.0);
    CHECK(elapsed < 1000.0);

    // A deadline in the past behaves like poll(): no blocking.
    t0 = clock::now();
    CHECK(e->wait(t0 - 1s) == 0);
    CHECK(ms_since(t0) < 20.0);

    // With an op pending but not completing, the deadline still wins.
    auto sp = make_socketpair();
    char buf[4];
    counted_op rv;
    rv.recv(sp.b, buf, sizeof buf);
    e->submit(rv);
    t0 = clock::now();
    CHECK(e->wait(t0 + 30ms) == 0);
    CHECK(ms_since(t0) >= 29.0);
    e->cancel(rv);
    REQUIRE(drive(*e, [&] { return rv.done; }));
    CHECK(rv.result == -ECANCELED);
  }

  TEST_CASE("wake() from another thread unblocks wait() with no deadline" * doctest::timeout(10)) {
    auto e = make_uring_engine(64);

    auto t0 = clock::now();
    std::thread waker([&] {
      std::this_thread::sleep_for(50ms);
      e->wake();
    });
    CHECK(e->wait(clock::time_point::max()) == 0);
    double elapsed = ms_since(t0);
    waker.join();
    CHECK(elapsed >= 45.0);
    CHECK(elapsed < 2000.0);
    CHECK(e->in_flight() == 0);

    // The reader re-arms: many rounds, each woken from another thread.
    for (int i = 0; i < 200; ++i) {
      std::thread t([&] { e->wake(); });
      e->wait(clock::time_point::max());
      t.join();
    }

    // wake() before wait() is not lost, and many wakes coalesce.
    for (int i = 0; i < 1000; ++i) {
      e->wake();
    }
    t0 = clock::now();
    e->wait(clock::time_point::max());
    CHECK(ms_since(t0) < 1000.0);
    // After the coalesced wake was consumed, a short wait times out normally.
    t0 = clock::now();
    e->wait(t0 + 30ms);
    e->wait(clock::now() + 30ms);
    CHECK(ms_since(t0) >= 29.0);
  }

  TEST_CASE("wake() publishes data written before it" * doctest::timeout(20)) {
    auto e = make_uring_engine(64);
    std::atomic<int> produced{0};
    int seen = 0;
    constexpr int rounds = 20000;
    std::thread producer([&] {
      for (int i = 0; i < rounds; ++i) {
        produced.fetch_add(1, std::memory_order_relaxed);
        e->wake();
      }
    });
    // The invariant: a wake() after the final increment makes wait() return, so
    // a waiter with no deadline can never sleep through the last item.
    while (seen < rounds) {
      e->wait(clock::time_point::max());
      seen = produced.load(std::memory_order_relaxed);
    }
    producer.join();
    CHECK(seen == rounds);
  }

  TEST_CASE("poll() delivers completions without blocking" * doctest::timeout(10)) {
    auto e = make_uring_engine(64);

    counted_op op;
    op.code = op_code::nop;
    e->submit(op);
    auto t0 = clock::now();
    CHECK(e->poll() == 1);
    CHECK(op.deliveries == 1);
    CHECK(e->poll() == 0);
    CHECK(ms_since(t0) < 50.0);

    // A completion caused from outside (data arriving later) must be seen by
    // poll() alone, with no wait() in between (DEFER_TASKRUN task work).
    auto sp = make_socketpair();
    char buf[8];
    counted_op rv;
    rv.recv(sp.b, buf, sizeof buf);
    e->submit(rv);
    CHECK(e->poll() == 0);
    std::thread sender([&] {
      std::this_thread::sleep_for(10ms);
      (void)::send(sp.a, "x", 1, MSG_NOSIGNAL);
    });
    auto end = clock::now() + 3s;
    int got = 0;
    while (got == 0 && clock::now() < end) {
      got = e->poll();
    }
    sender.join();
    CHECK(got == 1);
    CHECK(rv.result == 1);
    CHECK(rv.deliveries == 1);
  }

  TEST_CASE("many ops beyond the SQ size all complete" * doctest::timeout(30)) {
    auto e = make_uring_engine(32);  // SQ 32, CQ 128: exercises SQ-full and CQ overflow
    constexpr int count = 10000;
    std::vector<counted_op> ops(count);
    for (auto& op : ops) {
      op.code = op_code::nop;
      e->submit(op);
    }
    CHECK(e->in_flight() == count);
    int delivered = 0;
    auto end = clock::now() + 10s;
    while (e->in_flight() > 0 && clock::now() < end) {
      delivered += e->wait(clock::now() + 100ms);
    }
    CHECK(delivered == count);
    CHECK(e->in_flight() == 0);
    int bad = 0;
    for (auto& op : ops) {
      if (op.deliveries != 1 || op.result != 0) {
        ++bad;
      }
    }
    CHECK(bad == 0);
  }

  TEST_CASE("callbacks may resubmit re-entrantly" * doctest::timeout(10)) {
    auto e = make_uring_engine(8);
    struct chain : io_op {
      engine* eng = nullptr;
      int left = 0;
    };
    chain c;
    c.code = op_code::nop;
    c.eng = e.get();
    c.left = 1000;
    c.on_complete = [](io_op* op) {
      auto* self = static_cast<chain*>(op);
      if (--self->left > 0) {
        self->eng->submit(*self);
      }
    };
    e->submit(c);
    REQUIRE(drive(*e, [&] { return c.left == 0; }));
    CHECK(e->in_flight() == 0);
  }

  TEST_CASE("poll op on a socket reports POLLIN" * doctest::timeout(10)) {
    auto e = make_uring_engine(64);
    auto sp = make_socketpair();
    counted_op pl;
    pl.code = op_code::poll;
    pl.fd = sp.b;
    pl.flags = POLLIN;
    e->submit(pl);
    CHECK(e->poll() == 0);
    CHECK_FALSE(pl.done);
    REQUIRE(::send(sp.a, "y", 1, MSG_NOSIGNAL) == 1);
    REQUIRE(drive(*e, [&] { return pl.done; }));
    CHECK((pl.result & POLLIN) != 0);
    CHECK(pl.deliveries == 1);
  }

  TEST_CASE("errors come back as negative errno, global errno untouched") {
    auto e = make_uring_engine(64);
    errno = 0;
    char buf[4];
    counted_op rd;
    rd.code = op_code::read;
    rd.fd = 1 << 20;  // certainly not open
    rd.buf = buf;
    rd.len = sizeof buf;
    e->submit(rd);
    REQUIRE(drive(*e, [&] { return rd.done; }));
    CHECK(rd.result == -EBADF);
    CHECK(errno == 0);
  }

}  // TEST_SUITE

// When io_uring is unavailable the factory throws std::system_error with the
// errno and the likely cause. Simulated with a seccomp filter, in a child.
TEST_CASE("io_uring unavailable: a clear error naming the errno and the cause" * doctest::timeout(20)) {
  cogent::test::child_result r = cogent::test::run_in_child([] {
    // io_uring_setup -> EPERM, every other syscall allowed.
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
      ::_exit(cogent::test::child_setup_failed);
    }
    try {
      (void)cogent::detail::make_uring_engine(64);
      std::fprintf(stderr, "no exception");
    } catch (const std::system_error& e) {
      std::fprintf(stderr, "%d %s", e.code().value(), e.what());
    }
  });
  REQUIRE(WIFEXITED(r.status));
  if (r.exited(cogent::test::child_setup_failed)) {
    MESSAGE("seccomp unavailable in this sandbox; not checked");
    return;
  }
  INFO("child reported: " << r.err);
  CHECK(r.err.rfind(std::to_string(EPERM) + " ", 0) == 0);
  CHECK(r.err.find("io_uring") != std::string::npos);
  CHECK(r.err.find("EPERM") != std::string::npos);
  CHECK(r.err.find("seccomp") != std::string::npos);
}
