// net/server.cpp — stream_server: accept task, per-client tasks, backoff, stop.
#include "net/server.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <system_error>
#include <vector>

#include "hub/timeout.hpp"

namespace cogent::net {
namespace {

bool is_resource_error(int err) noexcept {
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

// is_disconnect() says whether an error just means "this client went away".
// Only the idle limit's ETIMEDOUT counts (another ETIMEDOUT, e.g. the
// handler's own upstream call timing out, is a real error), and EBADF only
// from a close() while the handler waited (the application dropping the
// client) or once the server is stopping (before that a plain EBADF is a
// handler's bug: IO on a socket it closed or moved from).
bool is_disconnect(std::exception_ptr e, bool stopping) {
  try {
    std::rethrow_exception(e);
  } catch (const end_of_stream&) {
    return true;
  } catch (const idle_timeout_error&) {
    return true;
  } catch (const socket_closed_error&) {
    return true;
  } catch (const std::system_error& se) {
    if (se.code().category() != std::generic_category() && se.code().category() != std::system_category()) {
      return false;
    }
    int v = se.code().value();
    if (v == EBADF) {
      return stopping;
    }
    return v == ECONNRESET || v == EPIPE || v == ECONNABORTED || v == ENOTCONN || v == EHOSTUNREACH ||
           v == ENETUNREACH;
  } catch (...) {
    return false;
  }
}

}  // namespace

namespace {
// checked() rejects bad options before anything is bound (a Unix socket's
// file would otherwise be left behind by the throw).
const server_options& checked(const server_options& opts, const stream_server::handler_type& handler) {
  if (!handler) {
    throw std::invalid_argument("cogent::net: stream_server given an empty handler");
  }
  if (opts.idle_timeout == use_default) {
    throw std::invalid_argument("cogent::net: stream_server idle_timeout cannot be use_default");
  }
  if (opts.stop_timeout == use_default) {
    throw std::invalid_argument("cogent::net: stream_server stop_timeout cannot be use_default");
  }
  if (opts.max_accept_backoff <= std::chrono::milliseconds(0)) {
    // A zero cap would retry a failing accept (EMFILE) at once, forever.
    throw std::invalid_argument("cogent::net: stream_server max_accept_backoff must be positive (got " +
                                std::to_string(opts.max_accept_backoff.count()) + " ms)");
  }
  return opts;
}
}  // namespace

// Not a delegating constructor: the order in which its arguments are made is
// unspecified, so the handler and options could be moved from before the
// checks read them. Members are initialized in declaration order: the
// listener (checks, then bind) before the handler and options are moved in.
stream_server::stream_server(const net::address& at, handler_type handler, server_options opts)
    : _listener(listener::bind(at, checked(opts, handler).listen)),
      _handler(std::move(handler)),
      _opts(std::move(opts)) {
  _address = _listener.local_address();
}

stream_server::stream_server(listener l, handler_type handler, server_options opts)
    : _listener(std::move(l)), _handler(std::move(handler)), _opts(std::move(opts)) {
  if (!_listener.is_open()) {
    throw std::invalid_argument("cogent::net: stream_server given a closed listener");
  }
  checked(_opts, _handler);
  // A socket bound but not listening would fail every accept (EINVAL): listen
  // now, as the address constructor does; one that cannot (UDP) is refused.
  int listening = 0;
  socklen_t len = sizeof listening;
  if (::getsockopt(_listener.fd(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 ||
      (listening == 0 && ::listen(_listener.fd(), _opts.listen.backlog) != 0)) {
    throw std::system_error(errno, std::generic_category(),
                            "cogent::net: stream_server given a socket that cannot listen");
  }
  _address = _listener.local_address();
}

stream_server::~stream_server() {
  bool busy = (_acceptor && !_acceptor.ready()) || _clients.size() > 0 || _serving > 0 || (_stopped && !_stop_done);
  if (hub* h = hub::current_if_exists(); h != nullptr && h->in_hub() && busy) {
    // It would have to wait for its tasks, which go on running against this
    // object: a silent use-after-free. Fail loudly instead (a destructor cannot throw).
    std::fprintf(stderr,
                 "cogent: stream_server %s destroyed inside the hub (a timer or post() callback) while it "
                 "has tasks: it cannot wait for them; aborting\n",
                 _address.to_string().c_str());
    std::abort();
  }
  // Nothing may run against this object once it is gone: not a stop() still
  // in progress in another fiber, not the accept task, not a handler (one
  // that called stop() itself included). A kill or Timeout that hits this
  // fiber while it waits must not cut that short: it is caught, every task
  // left is killed at once, the wait goes on, and the first interrupt caught
  // is made pending again afterwards (raised at this fiber's next blocking
  // call; a Timeout's only inside its scope).
  std::exception_ptr interrupted;
  for (;;) {
    try {
      if (_started && !_stopped) {
        stop(std::chrono::nanoseconds::zero());
      }
      if (interrupted) {
        reap();  // unblocks a stop() in progress elsewhere
      }
      while (_stopped && !_stop_done) {
        _stopped_waiters.wait(clock::time_point::max());
      }
      reap();
      while (_serving > 0) {  // fibers woken in serve_forever() still use this object
        _serve_done.wait(clock::time_point::max());
      }
      break;
    } catch (const hub_error&) {
      break;  // destroyed inside the hub itself: it cannot wait (a misuse)
    } catch (...) {
      if (!interrupted) {
        interrupted = std::current_exception();
      }
      _stopped = true;
      _deadline = clock::now();  // stop waiting for anyone: kill what is left
    }
  }
  if (interrupted) {
    defer_interrupt(std::move(interrupted));
  }
}

void stream_server::start() {
  if (_started || _stopped) {
    throw std::logic_error("cogent::net: stream_server::start() called twice or after stop()");
  }
  _started = true;
  _acceptor =
      cogent::spawn(spawn_options{"stream_server accept " + _address.to_string()}, [this] { accept_loop(); });
}

void stream_server::serve_forever() {
  if (hub::current().in_hub()) {
    // Before start(): a server started here would be left running.
    throw hub_error("cogent::net: stream_server::serve_forever() cannot wait inside the hub (a timer or post() callback)");
  }
  if (!_started && !_stopped) {
    start();
  }
  // Counted, so the destructor waits for every fiber still in here.
  ++_serving;
  struct leave {
    stream_server& srv;
    ~leave() {
      if (--srv._serving == 0) {
        srv._serve_done.notify_all();
      }
    }
  } guard{*this};
  // One of our own handlers cannot wait for the handlers: it returns once
  // stopping has begun (as gevent's, when stop() sets the stop event), and
  // stop() waits for it like any handler.
  const bool own_handler = _clients.contains(current_task());
  try {
    hub::throw_if_interrupted();  // a kill pending on entry stops the server too (and is raised)
    while (!(own_handler ? _stopped : _stop_done)) {
      _stopped_waiters.wait(clock::time_point::max());
    }
    if (!own_handler) {
      reap();
    }
  } catch (...) {
    // A kill or Timeout (or a throw_in()) cut the wait short. As gevent's
    // `finally: stop()`: the server stops first, then the interrupt is raised.
    std::exception_ptr first = std::current_exception();
    stop_interrupted();
    std::rethrow_exception(first);
  }
}

void stream_server::stop_interrupted() noexcept {
  if (_stopped) {
    // Already stopping (another fiber's stop(), a handler's, or this one's
    // earlier): its deadline stands; the destructor waits for the rest.
    return;
  }
  // stop(0s): stop accepting, close the listener, kill the handlers and wait
  // for them to unwind. The first interrupt is held by the caller (so these
  // waits can run) and re-raised after. A further one arriving meanwhile
  // kills what is left at once, the wait goes on, and it is made pending
  // again (raised at the fiber's next blocking call).
  std::exception_ptr again;
  try {
    stop(std::chrono::nanoseconds::zero());
  } catch (...) {
    again = std::current_exception();
  }
  while (again != nullptr) {
    _deadline = clock::now();
    try {
      reap();
      break;
    } catch (...) {  // yet another interrupt: keep the one already caught
    }
  }
  if (again) {
    defer_interrupt(std::move(again));
  }
}

void stream_server::stop(timeout_duration t) {
  if (_stopped) {
    return;
  }
  if (hub* h = hub::current_if_exists(); h != nullptr && h->in_hub()) {
    // Before anything changes: half a stop (accepting, yet marked stopped) could not be finished later.
    throw hub_error(
        "cogent::net: stream_server::stop() inside the hub (a timer or post() callback): it must wait for "
        "the accept task; spawn a task that calls it");
  }
  _stopped = true;
  _deadline = deadline_after(t == use_default ? _opts.stop_timeout : t);
  _stopped_waiters.notify_all();  // a handler in serve_forever() returns now (the others wait on)
  // However stop() ends (a kill may hit the caller while it waits), it is
  // over: serve_forever() and the destructor take up the rest (reap()).
  struct mark_done {
    stream_server& srv;
    ~mark_done() {
      srv._stop_done = true;
      srv._stopped_waiters.notify_all();
    }
  } done{*this};
  // 1. Stop accepting: kill the accept task (an accept in flight is cancelled
  //    and a connection it raced to take is closed), then close the listener.
  if (_acceptor && !_acceptor.ready()) {
    try {
      _acceptor.kill();
    } catch (...) {
      close_listener_quietly();  // interrupted meanwhile: accepting must end all the same
      throw;
    }
  }
  _listener.close();
  // 2. Let the handlers finish until the deadline, then kill the rest. A
  //    handler calling stop() is not waited for (or killed) here: it cannot
  //    wait for itself. serve_forever() and the destructor wait for it.
  reap();
}

void stream_server::close_listener_quietly() noexcept {
  try {
    _listener.close();  // (closes the fd however it ends)
  } catch (...) {
  }
}

void stream_server::reap() {
  if (_acceptor && !_acceptor.ready()) {
    _acceptor.kill();
  }
  if (_listener.is_open()) {
    close_listener_quietly();  // a stop() that was interrupted before it closed it
  }
  task_base self = current_task();
  std::vector<task_base> others = _clients.tasks();
  std::erase(others, self);
  if (others.empty()) {
    return;
  }
  (void)cogent::joinall(others, time_left(_deadline));
  cogent::killall(others);
}

void stream_server::accept_loop() {
  // Backoff state: an "episode" runs from the first failed accept to the next
  // successful one. The first episode is logged, later ones at most every 10 s
  // (a server at its descriptor limit flaps in and out of it as clients come
  // and go; one line per flap would flood the log).
  std::chrono::milliseconds backoff{0};
  int failing_errno = 0;
  std::uint64_t failures = 0;
  bool logged_episode = false;
  clock::time_point last_log{};
  for (;;) {
    if (_opts.workers != nullptr) {
      // Full pool: accept nothing until a slot frees (as gevent does) — the
      // clients wait in the kernel's backlog, not accepted and held here.
      _opts.workers->wait_available();
    }
    net::address peer;
    stream_socket client;
    try {
      client = _listener.accept(peer, std::nullopt);
    } catch (const idle_timeout_error&) {
      continue;  // a listener given with an idle limit: no client for that long is no error
    } catch (const std::system_error& e) {
      if (!_listener.is_open()) {
        return;
      }
      int err = e.code().value();
      if (err == ECONNABORTED || err == EINTR || err == EPROTO || err == EPERM) {
        continue;  // that one client is gone; nothing wrong with us
      }
      ++failures;
      if (failing_errno != err) {
        auto now = clock::now();
        if (failing_errno == 0 && last_log != clock::time_point{} &&
            now - last_log < std::chrono::seconds(10)) {
          logged_episode = false;  // a repeat within 10 s: stay quiet
        } else {
          std::fprintf(stderr, "cogent: stream_server %s: accept failed: %s%s; backing off and retrying\n",
                       _address.to_string().c_str(), std::strerror(err),
                       is_resource_error(err) ? " (out of descriptors or memory)" : "");
          logged_episode = true;
          last_log = now;
        }
        failing_errno = err;
      }
      backoff = std::min(std::max(backoff * 2, std::chrono::milliseconds(1)), _opts.max_accept_backoff);
      cogent::sleep(backoff);
      continue;
    }
    if (failing_errno != 0) {
      if (logged_episode) {
        std::fprintf(stderr, "cogent: stream_server %s: accepting again after %llu failed accepts\n",
                     _address.to_string().c_str(), static_cast<unsigned long long>(failures));
      }
      failing_errno = 0;
      failures = 0;
      logged_episode = false;
      backoff = std::chrono::milliseconds(0);
    }
    ++_accepted;
    if (_opts.nodelay && !_address.is_unix()) {
      int one = 1;
      (void)::setsockopt(client.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (_opts.idle_timeout) {
      client.set_idle_timeout(_opts.idle_timeout);
    }
    // The socket stays where spawn() put it, in the task's control block (which
    // the hub touches to resume the task anyway), not in a frame at the top of
    // the client's stack: one page fewer to touch per op with 1000s of clients.
    auto body = [this](stream_socket&& s, const net::address& p) { run_client(s, p); };
    if (_opts.workers != nullptr) {
      auto t = _opts.workers->spawn(body, std::move(client), peer);
      _clients.add(t);
    } else {
      _clients.spawn(body, std::move(client), peer);
    }
  }
}

void stream_server::run_client(stream_socket& s, const net::address& peer) {
  try {
    _handler(s, peer);
  } catch (const fiber_exit&) {
    throw;  // killed (stop's deadline) or destroyed: unwind
  } catch (...) {
    // Anything else, std::exception or not (a timeout_error of the handler's
    // own scope, `throw 42`): that client's error, reported, never kept in a
    // failed task for the server's lifetime.
    std::exception_ptr e = std::current_exception();
    if (!is_disconnect(e, _stopped)) {
      report(peer, e);
    }
  }
  // Graceful close through the engine; a kill while closing still closes (RAII).
  s.close();
}

void stream_server::report(const net::address& peer, std::exception_ptr e) {
  if (_opts.on_error) {
    try {
      _opts.on_error(peer, e);
    } catch (const fiber_exit&) {
      throw;  // killed while on_error blocked: not an error of the callback
    } catch (...) {
      std::fprintf(stderr, "cogent: stream_server %s: on_error callback threw\n",
                   _address.to_string().c_str());
    }
    return;
  }
  std::fprintf(stderr, "cogent: stream_server %s: client %s: %s\n", _address.to_string().c_str(),
               peer.to_string().c_str(), describe_exception(e).c_str());
}

std::size_t raise_fd_limit() noexcept {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) {
    return 0;
  }
  if (rl.rlim_cur < rl.rlim_max) {
    rlimit raised = rl;
    raised.rlim_cur = rl.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) {
      rl = raised;
    }
  }
  return static_cast<std::size_t>(rl.rlim_cur);
}

int wait_for_signal(std::initializer_list<int> signals, timeout_duration t) {
  if (signals.size() == 0) {
    throw std::invalid_argument("cogent::net: wait_for_signal: empty signal set (it would wait forever)");
  }
  sigset_t set;
  sigemptyset(&set);
  for (int s : signals) {
    if (s == SIGKILL || s == SIGSTOP) {
      throw std::invalid_argument("cogent::net: wait_for_signal: signal " + std::to_string(s) + " (" +
                                  (s == SIGKILL ? "SIGKILL" : "SIGSTOP") + ") cannot be caught");
    }
    if (s <= 0 || s >= NSIG || sigaddset(&set, s) != 0) {
      throw std::invalid_argument("cogent::net: wait_for_signal: invalid signal number " + std::to_string(s));
    }
  }
  int rc = pthread_sigmask(SIG_BLOCK, &set, nullptr);
  if (rc != 0) {
    throw std::system_error(rc, std::generic_category(), "cogent::net: wait_for_signal: pthread_sigmask");
  }
  int fd = ::signalfd(-1, &set, SFD_CLOEXEC);
  if (fd < 0) {
    throw std::system_error(errno, std::generic_category(), "cogent::net: wait_for_signal: signalfd");
  }
  struct fd_guard {
    int fd;
    ~fd_guard() { ::close(fd); }
  } guard{fd};
  signalfd_siginfo info{};
  cogent::detail::io_op op;
  op.code = cogent::detail::op_code::read;
  op.fd = fd;
  op.buf = &info;
  op.len = sizeof info;
  op.offset = -1;
  int r = hub::current().await_io(op, t ? deadline_after(t) : clock::time_point::max());
  if (r == -ETIMEDOUT) {
    return 0;
  }
  if (r < 0) {
    throw std::system_error(-r, std::generic_category(), "cogent::net: wait_for_signal: read");
  }
  return static_cast<int>(info.ssi_signo);
}

}  // namespace cogent::net
