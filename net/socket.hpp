// net/socket.hpp — cooperative sockets whose IO runs as io_uring operations.
//
// Defines cogent::net::basic_socket (the fd owner every socket derives from:
// RAII close, default timeout, options), cogent::net::stream_socket (a
// connected TCP or Unix-domain stream; aliases tcp_socket and unix_socket),
// cogent::net::listener (a listening TCP or Unix socket; alias tcp_listener),
// cogent::net::udp_socket, cogent::net::listen_options,
// cogent::net::shutdown_how, cogent::net::end_of_stream,
// cogent::net::idle_timeout_error, cogent::net::socket_closed_error and the
// per-call timeout sentinel cogent::net::use_default.
//
// How IO works: every call that may wait (accept, connect, recv, send, close,
// shutdown) fills one io_op on the calling fiber's stack and hands it to
// hub::await_io(): the fiber parks, the hub submits the op in its next batch
// and resumes the fiber when the completion arrives. No allocation and no
// extra syscall per op. Sockets are ordinary blocking-mode fds; the kernel's
// io_uring machinery does the waiting.
//
// Cancellation (DESIGN.md invariant 1): when a kill or a Timeout scope hits a
// fiber blocked in a socket call, the op is cancelled and its completion
// reaped before the exception is raised; an accept that won the race has its
// new fd closed. Nothing leaks.
//
// Errors: IO errors are std::system_error carrying the errno (ECONNRESET,
// EPIPE, ECONNREFUSED, ...). A per-call or per-socket timeout that expires
// raises std::system_error(ETIMEDOUT) (a socket's idle limit raises the
// derived idle_timeout_error, also ETIMEDOUT); a cogent::timeout scope raises
// cogent::timeout_error instead. IO on a socket close() closed raises
// socket_closed_error (a std::system_error, EBADF); on a moved-from or
// released one, std::system_error(EBADF). Peer EOF is not an error: read_some() returns 0;
// read_exactly() raises end_of_stream. SIGPIPE never fires (MSG_NOSIGNAL).
//
// Timeouts: every call that may switch takes `timeout_duration t`; the
// default, use_default, means "this socket's default timeout" (set_timeout(),
// initially none). std::nullopt means no limit for this call. A call that
// loops (read_exactly, write_all, read_until_eof) applies one deadline to the
// whole call.
//
// Sharing: a socket belongs to its hub's thread. Several fibers may block on
// one socket at once (one reading while one writes; several accepting on one
// listener); close() from any fiber, or from the hub, wakes them all with
// EBADF. A socket must not be destroyed or moved while another fiber is
// blocked on it (close() it first).
//
// Example:
//   using namespace cogent::net;
//   auto server = listener::bind(address::ipv4_loopback(0));
//   auto t = cogent::spawn([&] {
//     stream_socket c = server.accept();
//     char buf[4096];
//     while (std::size_t n = c.read_some(buf, sizeof buf)) {   // 0 = peer closed
//       c.write_all(buf, n);
//     }
//   });
//   stream_socket s = stream_socket::connect(server.local_address(), std::chrono::seconds(1));
//   s.set_nodelay(true);
//   s.write_all("ping");
//   char reply[4];
//   s.read_exactly(reply, 4);                                  // "ping"
//   s.close();
//   t.join();
#pragma once
// Everything declared in cogent headers is exported from the library (built with -fvisibility=hidden).
#pragma GCC visibility push(default)

#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

#include "hub/core.hpp"
#include "net/address.hpp"

namespace cogent::net {

// use_default is the per-call timeout meaning "the socket's default timeout"
// (see basic_socket::set_timeout). It is the default argument of every call.
inline constexpr timeout_duration use_default = timeout_duration::exactly(std::chrono::nanoseconds::min());

// end_of_stream is raised by read_exactly() when the peer closes its side
// before the requested byte count arrived. bytes_read() says how many did
// (they are in the caller's buffer). It derives from std::runtime_error, not
// std::system_error: an orderly EOF is not an OS error.
class end_of_stream : public std::runtime_error {
 public:
  end_of_stream(std::size_t got, std::size_t wanted);
  // bytes_read() is the number of bytes stored before EOF.
  std::size_t bytes_read() const noexcept { return _got; }
  // bytes_wanted() is the count read_exactly() was asked for.
  std::size_t bytes_wanted() const noexcept { return _wanted; }

 private:
  std::size_t _got;
  std::size_t _wanted;
};

// idle_timeout_error is raised when a socket's idle limit
// (basic_socket::set_idle_timeout) expires: one wait saw nothing for that
// long. It is a std::system_error carrying ETIMEDOUT, so code catching
// std::system_error and testing for ETIMEDOUT sees it as before; catch it by
// type to tell an idle peer from any other timeout (a call's own timeout, or
// the kernel's ETIMEDOUT, stay plain std::system_error). stream_server ends a
// client quietly on it and on no other ETIMEDOUT.
class idle_timeout_error : public std::system_error {
 public:
  explicit idle_timeout_error(const std::string& what);
};

// socket_closed_error is raised by IO on a socket that close() closed:
// in a fiber whose call was waiting on it when another fiber (or the hub)
// closed it — gevent's "file descriptor was closed in another greenlet" —
// and by any later call on that socket object. It is a std::system_error
// carrying EBADF; catch it by type to tell a deliberate close from IO on a
// socket that was moved from or never opened (plain EBADF). stream_server
// ends a client quietly on it: closing a client's socket from elsewhere is
// the way to drop that client, whatever its handler is doing then.
class socket_closed_error : public std::system_error {
 public:
  explicit socket_closed_error(const std::string& what);
};

// shutdown_how selects which direction shutdown() closes.
enum class shutdown_how : int { read = SHUT_RD, write = SHUT_WR, both = SHUT_RDWR };

// basic_socket owns a socket fd: move-only, closed by its destructor (a plain
// close(2), which never switches) or by close() (an io_uring close op). It
// holds the default timeout and the options common to every socket type.
class basic_socket {
 public:
  // basic_socket() constructs a closed socket.
  basic_socket() noexcept = default;
  // basic_socket(fd) adopts an open socket fd (it must be in blocking mode).
  explicit basic_socket(int fd) noexcept : _fd(fd) {}
  basic_socket(basic_socket&& o) noexcept;
  basic_socket& operator=(basic_socket&& o) noexcept;
  basic_socket(const basic_socket&) = delete;
  basic_socket& operator=(const basic_socket&) = delete;
  // ~basic_socket() closes the fd with close(2). Never switches.
  ~basic_socket();

  // close() closes the socket through an io_uring close op. Fibers blocked on
  // this socket are woken first (their ops cancelled) and raise
  // socket_closed_error (a std::system_error, EBADF); close() waits until
  // they have let go.
  // Called inside the hub (a timer or post() callback), which cannot wait,
  // close() wakes them the same way and returns at once; the fd is closed
  // with close(2) right away if nobody was blocked on it, else by the last
  // woken fiber to let go (its op's completion reaped), so until then the
  // descriptor number is not reused and no cancelled op can reach another
  // socket (DESIGN.md invariant 1). The same holds if close() is killed
  // while waiting. The fd is closed in every case (when the thread ends at
  // the latest) and the socket object may be destroyed as soon as close()
  // returns. On a thread without a hub (none made yet, or a fork() child)
  // it is close(2). Idempotent. May switch (never inside the hub): the woken
  // fibers run before it returns, so do not hold an iterator into state they
  // change (a map of clients they erase themselves from) across close().
  void close();
  // release() gives up ownership and returns the fd (-1 if closed).
  int release() noexcept;
  // fd() is the descriptor, -1 when closed.
  int fd() const noexcept { return _fd >= 0 ? _fd : -1; }
  // is_open() is true until close()/release()/move.
  bool is_open() const noexcept { return _fd >= 0; }
  explicit operator bool() const noexcept { return _fd >= 0; }

  // set_timeout() sets the default timeout of every later call that passes
  // use_default (std::nullopt = none, the initial value). use_default itself
  // is not a timeout: std::invalid_argument. Never switches.
  void set_timeout(timeout_duration t) {
    reject_use_default(t, "set_timeout");
    _timeout = t;
  }
  // timeout() is the default timeout.
  timeout_duration timeout() const noexcept { return _timeout; }
  // set_idle_timeout() bounds every single wait of every later call (each op
  // of a looping call such as read_exactly() or write_all(), unlike a call's
  // timeout, which bounds the whole call): a peer that sends or takes nothing
  // for that long makes the call raise idle_timeout_error (a
  // std::system_error with ETIMEDOUT), while a slow but steady one is never
  // cut off. When the call's own deadline comes first (or at the same time)
  // the call raises the plain std::system_error(ETIMEDOUT) of a call timeout
  // instead. std::nullopt (the initial value) = no idle limit. use_default:
  // std::invalid_argument. Never switches.
  void set_idle_timeout(timeout_duration t) {
    reject_use_default(t, "set_idle_timeout");
    _idle = t;
  }
  // idle_timeout() is the idle limit.
  timeout_duration idle_timeout() const noexcept { return _idle; }

  // local_address() returns the bound address (getsockname). Throws
  // std::system_error (EBADF when closed). Never switches.
  address local_address() const;

  // set_option() sets a socket option (setsockopt). Throws std::system_error
  // with the errno. Never switches.
  void set_option(int level, int name, const void* value, socklen_t len);
  template <class T>
  void set_option(int level, int name, const T& value) {
    set_option(level, name, &value, static_cast<socklen_t>(sizeof value));
  }
  // get_option() reads a socket option (getsockopt) of type T. Throws
  // std::system_error. Never switches.
  template <class T>
  T get_option(int level, int name) const {
    T v{};
    get_option_raw(level, name, &v, sizeof v);
    return v;
  }
  // set_reuse_address() sets SO_REUSEADDR. Throws std::system_error.
  void set_reuse_address(bool on);
  // set_send_buffer_size()/set_receive_buffer_size() set SO_SNDBUF/SO_RCVBUF
  // (the kernel doubles the value). Throw std::system_error.
  void set_send_buffer_size(int bytes);
  void set_receive_buffer_size(int bytes);
  // send_buffer_size()/receive_buffer_size() read SO_SNDBUF/SO_RCVBUF.
  int send_buffer_size() const;
  int receive_buffer_size() const;
  // pending_error() reads and clears SO_ERROR (0 if none).
  int pending_error() const;

 protected:
  static void reject_use_default(timeout_duration t, const char* what) {
    if (t == use_default) [[unlikely]] {
      throw std::invalid_argument(std::string("cogent::net: ") + what +
                                  "(use_default): use_default means \"the socket's default\" only "
                                  "for a call; give a duration or std::nullopt");
    }
  }
  // fd_for() returns the fd or throws std::system_error(EBADF) naming `what`.
  int fd_for(const char* what) const {
    if (_fd < 0) [[unlikely]] {
      throw_closed(what, _fd == closed_by_close);
    }
    return _fd;
  }
  // deadline_for() resolves a per-call timeout against the default.
  clock::time_point deadline_for(timeout_duration t) const noexcept {
    if (t == use_default) {
      t = _timeout;
    }
    return t ? deadline_after(t) : clock::time_point::max();
  }
  // await() runs `op` through hub::await_io() and returns its raw result,
  // -idle_timed_out when the idle limit (not the call's deadline) expired, or
  // -closed_while_waiting when close() ran while it waited (whether the op was
  // cancelled or completed anyway; after which the socket object must not be
  // touched: it may be destroyed). Fibers blocked
  // on an fd are found by close() through a per-thread table indexed by fd
  // (dense and cache-warm), not through the socket object: after the op
  // completes, the fast path never touches the (by then cold) socket.
  // Inside the hub (a timer or post() callback) it raises hub_error before
  // submitting anything.
  int await(cogent::detail::io_op& op, clock::time_point deadline, void (*release)(int) = nullptr);
  // closed_while_waiting (negated) is what await() returns when close() woke
  // it; throw_error() reports it as EBADF. Not an errno value.
  static constexpr int closed_while_waiting = 1 << 20;
  // idle_timed_out (negated) is what await() returns when the idle limit
  // expired; throw_error() reports it as idle_timeout_error. Not an errno value.
  static constexpr int idle_timed_out = (1 << 20) + 1;
  // throw_error() raises std::system_error(err) naming the call
  // (idle_timeout_error for idle_timed_out).
  [[noreturn]] static void throw_error(int err, const char* what);
  // throw_closed() raises EBADF for IO on a socket with no fd: a
  // socket_closed_error if close() took it (`by_close`), a plain
  // std::system_error if it was moved from, released or never opened.
  [[noreturn]] static void throw_closed(const char* what, bool by_close);
  void get_option_raw(int level, int name, void* value, std::size_t len) const;

  // _fd is the descriptor, or -1 (moved from, released, never opened), or
  // closed_by_close (-2: close() took it; fd() still says -1).
  static constexpr int closed_by_close = -2;
  int _fd = -1;
  timeout_duration _timeout;
  timeout_duration _idle;
};

// stream_socket is a connected stream socket (TCP or Unix-domain).
//
// Example:
//   auto s = cogent::net::stream_socket::connect(cogent::net::address::parse("127.0.0.1", 80), 2s);
//   s.write_all("GET / HTTP/1.0\r\n\r\n");
//   std::string page = s.read_until_eof();
class stream_socket : public basic_socket {
 public:
  using basic_socket::basic_socket;

  // connect() opens a stream socket of `to`'s family and connects it (an
  // io_uring connect op). Raises std::system_error: ECONNREFUSED,
  // ETIMEDOUT when `t` passes first, ENETUNREACH, ... . May switch.
  static stream_socket connect(const address& to, timeout_duration t = std::nullopt);

  // read_some() waits until some bytes arrive, stores up to `n` of them in
  // `buf` and returns how many; 0 means the peer closed its side (EOF), or
  // n == 0. Raises std::system_error (ECONNRESET, ETIMEDOUT, EBADF). May switch.
  std::size_t read_some(void* buf, std::size_t n, timeout_duration t = use_default);

  // read_exactly() reads exactly `n` bytes into `buf`. Raises end_of_stream
  // (partial data in buf, count in bytes_read()) if the peer closes first,
  // std::system_error otherwise. `t` bounds the whole call. A call that
  // times out or fails otherwise (or is killed) has consumed the bytes it
  // put in buf without saying how many (as Python's sendall/recv loops): to
  // go on after a timeout, read through a buffered_reader, whose calls keep
  // every byte read. May switch.
  void read_exactly(void* buf, std::size_t n, timeout_duration t = use_default);

  // read_until_eof() reads until the peer closes its side and returns the
  // bytes. Raises std::system_error(EMSGSIZE) beyond `max_bytes`, or another
  // std::system_error. `t` bounds the whole call. May switch.
  std::string read_until_eof(std::size_t max_bytes = static_cast<std::size_t>(-1),
                             timeout_duration t = use_default);

  // write_some() sends up to `n` bytes (one send op) and returns how many went.
  // Raises std::system_error (EPIPE, ECONNRESET, ETIMEDOUT, EBADF). May switch.
  std::size_t write_some(const void* buf, std::size_t n, timeout_duration t = use_default);

  // write_all() sends all `n` bytes: one send op in the common case, more if
  // the kernel takes them in pieces. Raises std::system_error; on error some
  // prefix may have been sent. `t` bounds the whole call. May switch.
  void write_all(const void* buf, std::size_t n, timeout_duration t = use_default);
  void write_all(std::string_view s, timeout_duration t = use_default) { write_all(s.data(), s.size(), t); }

  // shutdown() closes one or both directions (io_uring shutdown op); after
  // shutdown(write) the peer reads EOF. Raises std::system_error (ENOTCONN,
  // EBADF). May switch.
  void shutdown(shutdown_how how = shutdown_how::write);

  // peer_address() returns the connected peer (getpeername). Raises
  // std::system_error (ENOTCONN, EBADF). Never switches.
  address peer_address() const;

  // set_nodelay() sets TCP_NODELAY (disable Nagle). TCP only. Raises
  // std::system_error. Never switches.
  void set_nodelay(bool on);
  // nodelay() reads TCP_NODELAY.
  bool nodelay() const;
  // set_keepalive() turns SO_KEEPALIVE on or off; non-zero idle/interval/count
  // also set TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT. Raises std::system_error.
  void set_keepalive(bool on, std::chrono::seconds idle = std::chrono::seconds(0),
                     std::chrono::seconds interval = std::chrono::seconds(0), int count = 0);
  // set_linger() sets SO_LINGER: std::nullopt turns it off; 0 s makes close()
  // reset the connection (RST) instead of a graceful FIN. Raises std::system_error.
  void set_linger(std::optional<std::chrono::seconds> t);
};

using tcp_socket = stream_socket;
using unix_socket = stream_socket;

// listen_options configures listener::bind().
struct listen_options {
  // backlog is the listen(2) queue length (the kernel clamps it to somaxconn).
  int backlog = 4096;
  // reuse_address sets SO_REUSEADDR (IP listeners only).
  bool reuse_address = true;
  // reuse_port sets SO_REUSEPORT, so several listeners can share the port.
  bool reuse_port = false;
  // ipv6_only sets IPV6_V6ONLY on an IPv6 listener (false: dual-stack).
  bool ipv6_only = false;
  // unlink_existing removes a stale Unix socket file at the path before bind:
  // one whose socket is gone (a connect to it is refused). A live one is
  // left alone and bind() raises std::system_error(EADDRINUSE) saying so
  // (the probe is a non-blocking connect: a live listener accepts one
  // connection that ends at once).
  bool unlink_existing = false;
};

// listener is a listening stream socket (TCP over IPv4/IPv6, or Unix-domain).
//
// Example:
//   auto l = cogent::net::listener::bind(cogent::net::address::ipv4_any(8080));
//   for (;;) {
//     cogent::net::address peer;
//     auto c = l.accept(peer);
//     cogent::spawn([](cogent::net::stream_socket s) { ... }, std::move(c));
//   }
class listener : public basic_socket {
 public:
  using basic_socket::basic_socket;

  // bind() creates a socket of `at`'s family, applies `opts`, binds and
  // listens. Port 0 picks a free port (see port()). Raises std::system_error
  // (EADDRINUSE, EACCES, EAFNOSUPPORT, ...). Never switches.
  static listener bind(const address& at, const listen_options& opts = {});

  // accept() waits for a connection and returns it (an io_uring accept op);
  // the second form also stores the peer's address. Raises std::system_error
  // (EMFILE/ENFILE when out of descriptors, ETIMEDOUT, EBADF). If a kill or
  // Timeout lands while a connection was being accepted, that connection is
  // closed, never leaked. May switch.
  stream_socket accept(timeout_duration t = use_default);
  stream_socket accept(address& peer, timeout_duration t = use_default);

  // port() is the bound port (0 for Unix listeners). Never switches.
  std::uint16_t port() const { return local_address().port(); }
};

using tcp_listener = listener;

// udp_socket is a datagram socket (IPv4 or IPv6).
//
// Example:
//   auto a = cogent::net::udp_socket::bind(cogent::net::address::ipv4_loopback(0));
//   auto b = cogent::net::udp_socket::bind(cogent::net::address::ipv4_loopback(0));
//   a.send_to("hi", 2, b.local_address());
//   char buf[64]; cogent::net::address from;
//   std::size_t n = b.receive_from(buf, sizeof buf, from);   // 2, from == a's address
class udp_socket : public basic_socket {
 public:
  using basic_socket::basic_socket;

  // open() creates an unbound UDP socket of `family` (ipv4 or ipv6). Raises
  // std::invalid_argument for another family, std::system_error otherwise.
  static udp_socket open(address_family family);
  // bind() creates a UDP socket bound to `at` (port 0 = a free port). Raises
  // std::system_error (EADDRINUSE, ...), std::invalid_argument for a Unix or
  // empty address. Never switches.
  static udp_socket bind(const address& at, bool reuse_address = false);

  // connect() sets the default destination and filters incoming datagrams to
  // that peer (connect(2) on a datagram socket does not block). Raises
  // std::invalid_argument for an empty address (as stream_socket::connect),
  // std::system_error otherwise. Never switches.
  void connect(const address& peer);

  // send_to() sends one datagram to `to` (an io_uring sendmsg op) and returns
  // the bytes sent. Raises std::invalid_argument for an empty `to`,
  // std::system_error (EMSGSIZE, ECONNREFUSED from an earlier ICMP error,
  // ETIMEDOUT, EBADF). May switch.
  std::size_t send_to(const void* buf, std::size_t n, const address& to, timeout_duration t = use_default);
  // receive_from() waits for one datagram, stores up to `n` bytes of it
  // (the rest of a longer datagram is dropped) and its sender, and returns the
  // bytes stored. Raises std::system_error. May switch.
  std::size_t receive_from(void* buf, std::size_t n, address& from, timeout_duration t = use_default);
  // send()/receive() are send_to()/receive_from() for a connected socket.
  std::size_t send(const void* buf, std::size_t n, timeout_duration t = use_default);
  std::size_t receive(void* buf, std::size_t n, timeout_duration t = use_default);
};

}  // namespace cogent::net

#pragma GCC visibility pop
