// net/server.hpp — a TCP/Unix stream server that runs one task per client.
//
// Defines cogent::net::stream_server (gevent's StreamServer),
// cogent::net::server_options and cogent::net::wait_for_signal() (park a fiber
// until SIGINT/SIGTERM/..., for servers that stop cleanly on a signal).
//
// The server owns a listener (bound in the constructor, so port() is known at
// once) and, once started, an accept task. Each accepted client gets its own
// task running handler(socket, peer); when the handler returns (or throws)
// the socket is closed. An optional cogent::pool bounds how many handlers run
// at once: while it is full the accept task waits and new clients queue in
// the kernel's backlog. Accept errors caused by resource exhaustion (EMFILE,
// ENFILE, ENOBUFS, ENOMEM) are logged once per episode on stderr; the accept
// task backs off (1 ms doubling up to max_accept_backoff) and keeps serving,
// logging again when it recovers.
//
// Handler errors: disconnect-like errors (ECONNRESET, EPIPE, ECONNABORTED,
// ENOTCONN, EHOSTUNREACH, ENETUNREACH, end_of_stream, the idle limit's
// idle_timeout_error, socket_closed_error — IO on a socket close() closed,
// e.g. by another fiber: the way to drop a client from elsewhere, whatever
// its handler is doing then — and EBADF once the server is stopping) end the
// client quietly; any other exception goes to server_options::on_error
// (default: one line on stderr) — std::exception or not, a timeout_error of
// the handler's own scope, an ETIMEDOUT that is not the idle limit (the
// handler's own upstream call timing out), and a plain EBADF while the
// server is still serving (a handler's bug: IO on a socket it moved from or
// released) included; a kill excepted. Either way only that client is affected, and nothing of it is
// kept.
//
// Shutdown and lifetime: stop() gives the handlers until its deadline, then
// kills the rest. serve_forever() returns, and the destructor returns, only
// once no task of the server is left running: not the accept task, not a
// stop() in progress, and not a handler — a handler that called stop() itself
// (which cannot wait for itself) included. Such a handler is waited for until
// that stop()'s deadline and killed after it. So the server may be destroyed
// as soon as serve_forever() returns. A kill or Timeout that interrupts
// serve_forever() stops the server (gevent's `finally: stop()`) before it is
// raised: see serve_forever().
//
// Example:
// clang-format off
//   cogent::net::stream_server srv(cogent::net::address::ipv4_any(7000),
//       [](cogent::net::tcp_socket& s, const cogent::net::address& peer) {
//         char buf[4096];
//         while (std::size_t n = s.read_some(buf, sizeof buf)) {
//           s.write_all(buf, n);
//         }
//       });
//   srv.start();                                   // never switches
//   auto stopper = cogent::spawn([&] {
//     cogent::net::wait_for_signal({SIGINT, SIGTERM});
//     srv.stop(std::chrono::seconds(2));           // handlers get 2 s, then are killed
//   });
//   srv.serve_forever();                           // returns once stop() has finished
//   stopper.join();
// clang-format on
#pragma once
// Everything declared in cogent headers is exported from the library (built with -fvisibility=hidden).
#pragma GCC visibility push(default)

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <initializer_list>

#include "hub/core.hpp"
#include "hub/pool.hpp"
#include "hub/task.hpp"
#include "net/address.hpp"
#include "net/socket.hpp"

namespace cogent::net {

// server_options configures a stream_server.
struct server_options {
  // listen is passed to listener::bind() when the server binds the address.
  listen_options listen;
  // workers, if set, bounds concurrency: each handler is spawned into this pool
  // (the accept task waits while it is full). Must outlive the server.
  cogent::pool* workers = nullptr;
  // idle_timeout becomes every client socket's idle limit
  // (basic_socket::set_idle_timeout): a client that sends (or, for a write,
  // takes) nothing for that long makes the blocked call raise
  // idle_timeout_error (ETIMEDOUT), which ends the client quietly; a slow but
  // steady one is never cut off.
  // std::nullopt = no idle limit.
  timeout_duration idle_timeout;
  // nodelay sets TCP_NODELAY on each accepted TCP client.
  bool nodelay = true;
  // max_accept_backoff caps the pause after a resource-exhaustion accept error
  // (EMFILE, ENFILE, ENOBUFS, ENOMEM). Must be positive (else the constructors
  // raise std::invalid_argument).
  std::chrono::milliseconds max_accept_backoff{100};
  // stop_timeout is how long stop() with no argument (use_default) lets the
  // running handlers finish before it kills them: 1 s, as gevent's
  // StreamServer.stop_timeout. std::nullopt = as long as they take;
  // use_default itself: std::invalid_argument from the constructors.
  timeout_duration stop_timeout = std::chrono::seconds(1);
  // on_error receives a handler's unexpected exception (not disconnects, not
  // kills). Default: "cogent: stream_server: client <peer>: <what>" on stderr.
  std::function<void(const address& peer, std::exception_ptr error)> on_error;
};

// stream_server accepts stream connections and runs handler(socket, peer) in a
// task per client.
//
// Example:
//   cogent::net::stream_server srv(cogent::net::address::ipv4_loopback(0), echo_handler);
//   srv.start();
//   auto c = cogent::net::stream_socket::connect(srv.address());
//   ...
//   srv.stop(std::chrono::seconds(1));   // stop accepting, wait up to 1 s, kill the rest
class stream_server {
 public:
  // handler_type is the per-client callback. It runs in the client's own task
  // and may block; the socket is closed after it returns.
  using handler_type = std::function<void(stream_socket&, const address&)>;

  // stream_server() binds `at` (TCP v4/v6 or Unix) with options.listen.
  // Raises std::system_error (EADDRINUSE, ...) or std::invalid_argument.
  // Never switches.
  stream_server(const address& at, handler_type handler, server_options opts = {});
  // stream_server() serves an already bound listener. One bound but not yet
  // listening is put in the listening state (opts.listen.backlog); a socket
  // that cannot listen (UDP, not a socket) raises std::system_error (EOPNOTSUPP,
  // ENOTSOCK); a closed one std::invalid_argument. Never switches.
  stream_server(listener l, handler_type handler, server_options opts = {});
  // ~stream_server() stops the server if still running (stop with a zero
  // timeout: running handlers are killed), waits for a stop() in progress in
  // another fiber, then waits for every handler still running — one that
  // called stop() itself until that stop()'s deadline, after which it is
  // killed — and for the killed ones to unwind, and for fibers still inside
  // serve_forever() to leave it. No task of the server runs after it
  // returns. A kill or Timeout arriving meanwhile does not cut this short:
  // what is left is killed at once, and the interrupt is raised at the
  // fiber's next blocking call instead. Must not run in one of the server's
  // own handlers (that handler would go on running in a destroyed server).
  // Inside the hub (a timer or post() callback), which cannot wait, it may
  // only destroy a server with nothing left running (never started, or
  // stopped with every task ended); else it prints why on stderr and aborts
  // rather than let its tasks run on in freed memory. May switch.
  ~stream_server();
  stream_server(const stream_server&) = delete;
  stream_server& operator=(const stream_server&) = delete;

  // start() spawns the accept task. Raises std::logic_error if already
  // started or stopped. Never switches.
  void start();
  // serve_forever() starts the server if needed and parks the calling fiber
  // (called from one of this server's own handlers: only until stopping has
  // begun — it cannot wait for itself; stop() waits for that handler)
  // until stop() (called from another fiber or a handler) has finished and
  // every handler has ended: a handler that called stop() itself is waited
  // for until that stop()'s deadline, then killed. The server may be
  // destroyed once it returns. Several fibers may wait in it at once.
  // A kill or Timeout that interrupts it (or is pending at entry) stops the
  // server first, as gevent's `finally: stop()`: if no stop() has begun, it
  // runs stop(0s) — accepting ends, the listener is closed, the running
  // handlers are killed and waited for — with the interrupt held meanwhile
  // (a second one kills what is left at once and is raised at the fiber's
  // next blocking call), then raises the interrupt. If a stop() is already
  // in progress (another fiber's, or a handler's) its deadline stands and
  // the interrupt is raised at once; the destructor still waits for what is
  // left. Raises hub_error inside the hub. May switch.
  void serve_forever();
  // stop() stops accepting and closes the listener, waits until `t` has
  // passed (use_default: server_options::stop_timeout, 1 s unless set;
  // std::nullopt: as long as they take) for the running handlers to finish,
  // then kills the rest and waits for them to unwind. Idempotent: a
  // second call returns at once. A handler may call it: it is not waited for
  // or killed by that call (serve_forever() and the destructor wait for it, up
  // to the same deadline). Inside the hub (a timer or post() callback), which
  // cannot wait, it raises cogent::hub_error before changing anything (spawn a
  // task that calls it). May switch.
  void stop(timeout_duration t = use_default);

  // port() is the bound port (0 for Unix). Never switches.
  std::uint16_t port() const noexcept { return _address.port(); }
  // address() is the bound address (with the real port after binding port 0).
  const net::address& address() const noexcept { return _address; }
  // client_count() is the number of live client tasks. Never switches.
  std::size_t client_count() const noexcept { return _clients.size(); }
  // accepted_count() is the number of connections accepted so far.
  std::uint64_t accepted_count() const noexcept { return _accepted; }
  // serving() is true between start() and stop().
  bool serving() const noexcept { return _started && !_stopped; }

 private:
  void accept_loop();
  void run_client(stream_socket& s, const net::address& peer);
  void report(const net::address& peer, std::exception_ptr e);
  // stop_interrupted() is serve_forever()'s `finally: stop()` after a kill or
  // Timeout: stop(0s) unless already stopping, with further interrupts
  // deferred.
  void stop_interrupted() noexcept;
  // close_listener_quietly() closes the listener, swallowing an interrupt
  // that hits it (the fd is closed in every case).
  void close_listener_quietly() noexcept;
  // reap() kills the accept task, closes the listener if a stop() did not get
  // to it, waits until _deadline for every client task but the calling one,
  // then kills those left and waits for them to unwind.
  void reap();

  listener _listener;
  net::address _address;
  handler_type _handler;
  server_options _opts;
  cogent::group _clients;
  task<void> _acceptor;
  cogent::detail::wait_list _stopped_waiters;              // woken when stop() has finished
  clock::time_point _deadline = clock::time_point::max();  // stop()'s: handlers are killed after it
  std::uint64_t _accepted = 0;
  bool _started = false;
  bool _stopped = false;                  // stop() was called
  bool _stop_done = false;                // stop() has finished (or was cut short by a kill)
  std::size_t _serving = 0;               // fibers inside serve_forever()
  cogent::detail::wait_list _serve_done;  // woken when the last of them leaves
};

// wait_for_signal() blocks `signals` in the calling thread (so they are not
// delivered the default way), then parks the calling fiber until one of them
// arrives (a signalfd read through the engine) or `t` passes. Returns the
// signal number, or 0 on timeout. The signals stay blocked afterwards. Call it
// before starting other threads (they inherit the mask), or block the signals
// in them too (the library's own threads, such as the default threadpool's
// workers, block asynchronous signals already). Raises std::invalid_argument
// for an empty set, an invalid signal number (<= 0, >= NSIG, or one reserved
// by the C library) or SIGKILL/SIGSTOP (which cannot be caught), before
// changing anything; std::system_error if signalfd fails. A signal the
// process ignores (SIG_IGN, as a shell may set SIGINT for a background job)
// is discarded by the kernel and never arrives: set SIG_DFL first. May switch.
int wait_for_signal(std::initializer_list<int> signals, timeout_duration t = std::nullopt);

// raise_fd_limit() raises this process's soft RLIMIT_NOFILE to its hard limit
// (thousands of clients need thousands of descriptors; Go's runtime does this
// at start-up) and returns the soft limit now in force. Never switches.
std::size_t raise_fd_limit() noexcept;

}  // namespace cogent::net

#pragma GCC visibility pop
