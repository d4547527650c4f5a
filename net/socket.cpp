// net/socket.cpp — stream, listening and datagram sockets over hub::await_io.
#include "net/socket.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <system_error>
#include <utility>

namespace cogent::net {
namespace {

using cogent::detail::io_op;
using cogent::detail::op_code;

// One op moves at most this much (io_op::len is 32-bit; stay well inside int).
constexpr std::size_t k_max_chunk = std::size_t{1} << 30;

inline std::uint32_t clamp_len(std::size_t n) noexcept {
  return static_cast<std::uint32_t>(std::min(n, k_max_chunk));
}

void close_fd(int fd) noexcept {
  if (fd >= 0) {
    ::close(fd);
  }
}

// past() is the whole-call deadline check between the ops of a looping call
// (read_exactly, write_all, read_until_eof): when each op completes at once (a
// fast peer) none of them waits long enough to reach the timer. No clock read
// for a call without a deadline.
bool past(clock::time_point deadline) noexcept {
  return deadline != clock::time_point::max() && clock::now() >= deadline;
}

[[noreturn]] void throw_sys(int err, const std::string& what) {
  throw std::system_error(err, std::generic_category(), "cogent::net: " + what);
}

}  // namespace

end_of_stream::end_of_stream(std::size_t got, std::size_t wanted)
    : std::runtime_error("cogent::net: end of stream after " + std::to_string(got) + " of " +
                         std::to_string(wanted) + " bytes"),
      _got(got),
      _wanted(wanted) {}

idle_timeout_error::idle_timeout_error(const std::string& what)
    : std::system_error(ETIMEDOUT, std::generic_category(), "cogent::net: " + what) {}

socket_closed_error::socket_closed_error(const std::string& what)
    : std::system_error(EBADF, std::generic_category(), "cogent::net: " + what) {}

// ---- basic_socket -------------------------------------------------------------

basic_socket::basic_socket(basic_socket&& o) noexcept
    : _fd(std::exchange(o._fd, -1)), _timeout(o._timeout), _idle(o._idle) {}

basic_socket& basic_socket::operator=(basic_socket&& o) noexcept {
  if (this != &o) {
    close_fd(std::exchange(_fd, std::exchange(o._fd, -1)));
    _timeout = o._timeout;
    _idle = o._idle;
  }
  return *this;
}

basic_socket::~basic_socket() {
  close_fd(_fd);
}

int basic_socket::release() noexcept {
  const int fd = std::exchange(_fd, -1);
  return fd >= 0 ? fd : -1;  // -1 also once close() closed it (fd -2 inside)
}

namespace {

struct closing_state;

// socket_waiter is a fiber blocked in an op on an fd; it lives in that fiber's
// await() frame. Waiters on one fd form a list headed in t_waiters[fd].
struct socket_waiter {
  io_op* op = nullptr;
  socket_waiter* prev = nullptr;
  socket_waiter* next = nullptr;
  closing_state* closer = nullptr;  // the close() waiting for this waiter to let go
  bool closed = false;              // close() cancelled the op
};

// closing_state is what close() waits on until every waiter has let go. A
// close() that cannot wait for them (called in the hub) or stopped waiting
// (killed) hands the fd to a detached one on the heap instead: the fd stays
// open, so its number is not handed out again while a cancelled op may still
// act on it (one still in the submission queue resolves the number only when
// submitted), and the last waiter to let go closes it and frees the state.
struct closing_state {
  cogent::detail::wait_list waiters_gone;  // unused when detached
  std::size_t pending = 0;
  int fd = -1;            // the fd to close when pending reaches 0 if detached, or at thread exit
                          // if listed in t_detached (-1: closed at thread exit)
  bool detached = false;  // on the heap, freed by the last waiter to let go
  closing_state* prev = nullptr;  // detached and not yet closed, or waited for: in t_detached
  closing_state* next = nullptr;
};

// t_waiters.slots[fd] heads the list of this thread's fibers blocked on fd.
// Trivially destructible (a pointer and a size), and freed by a pthread key's
// destructor, which glibc runs after every thread_local destructor of the
// exiting thread: a socket used or closed from any thread_local or static
// destructor — also while fibers are still parked on it, which may be resumed
// there — finds the table whole. (The main thread's is never freed: the
// process is ending.)
struct waiter_table {
  socket_waiter** slots = nullptr;
  std::size_t size = 0;
};
thread_local constinit waiter_table t_waiters __attribute__((tls_model("initial-exec")));  // read on every socket wait

void free_waiters(void* slots) noexcept {
  std::free(slots);
  if (t_waiters.slots == slots) {
    t_waiters = {};
  }
}

// waiter_key() is the key whose value is this thread's table (0 if it could
// not be created: the tables are then left to the process's end).
struct waiter_key_holder {
  pthread_key_t key{};
  bool ok = ::pthread_key_create(&key, free_waiters) == 0;
};
const waiter_key_holder& waiter_key() {
  static const waiter_key_holder k;
  return k;
}

[[gnu::noinline]] void grow_waiters(std::size_t i) {
  std::size_t n = i * 2 + 64;
  auto* p = static_cast<socket_waiter**>(std::realloc(t_waiters.slots, n * sizeof(socket_waiter*)));
  if (p == nullptr) {
    throw std::bad_alloc();
  }
  std::fill(p + t_waiters.size, p + n, nullptr);
  t_waiters = {p, n};
  if (const waiter_key_holder& k = waiter_key(); k.ok) {
    // Also after the key's destructor ran for this thread (a later key's
    // destructor used a socket): glibc then calls it again.
    (void)::pthread_setspecific(k.key, p);
  }
}

// t_detached lists the closes whose waiters have not all let go: the detached
// ones, and (on its stack) a close() still waiting in a fiber. If the thread
// ends first (its hub goes with the waiters, and that close(), still parked,
// their ops never reaped) the fds are closed here. The states themselves stay
// with those abandoned fibers (a parked fiber's frames and stack are never
// unwound or unmapped), so a waiter that did let go later would still find its
// state.
struct detached_closes {
  closing_state* head = nullptr;
  void add(closing_state* c) noexcept {
    c->next = head;
    if (head != nullptr) {
      head->prev = c;
    }
    head = c;
  }
  void remove(closing_state* c) noexcept {
    (c->prev != nullptr ? c->prev->next : head) = c->next;
    if (c->next != nullptr) {
      c->next->prev = c->prev;
    }
    c->prev = c->next = nullptr;
  }
  ~detached_closes() {
    while (head != nullptr) {
      closing_state* c = head;
      remove(c);
      close_fd(std::exchange(c->fd, -1));
    }
  }
};
thread_local detached_closes t_detached;

socket_waiter*& waiter_head(int fd) {
  auto i = static_cast<std::size_t>(fd);
  if (i >= t_waiters.size) [[unlikely]] {
    grow_waiters(i);
  }
  return t_waiters.slots[i];
}

socket_waiter* waiters_of(int fd) noexcept {
  auto i = static_cast<std::size_t>(fd);
  return i < t_waiters.size ? t_waiters.slots[i] : nullptr;
}

// detach_close() hands fd to the waiters that close() `cs` still waits for:
// the last of them to let go closes it (let_go). Closes it now if none is left.
void detach_close(int fd, closing_state& cs) noexcept {
  closing_state* d = cs.pending > 0 ? new (std::nothrow) closing_state : nullptr;
  if (d != nullptr) {
    d->pending = cs.pending;
    d->fd = fd;
    d->detached = true;
    t_detached.add(d);
  }
  for (socket_waiter* w = waiters_of(fd); w != nullptr; w = w->next) {
    if (w->closer == &cs) {
      w->closer = d;  // null only if out of memory: closed below, nobody waits for it
    }
  }
  if (d == nullptr) {
    close_fd(fd);
  }
}

// let_go() is a cancelled waiter leaving close() `c`'s wait.
void let_go(closing_state* c) noexcept {
  if (--c->pending > 0) {
    return;
  }
  if (!c->detached) {
    c->waiters_gone.notify_all();
    return;
  }
  if (c->fd >= 0) {  // else the thread's end closed it (and unlisted it)
    t_detached.remove(c);
    close_fd(c->fd);
  }
  delete c;
}

}  // namespace

void basic_socket::close() {
  if (_fd < 0) {
    return;
  }
  int fd = std::exchange(_fd, closed_by_close);
  hub* hp = hub::current_if_exists();
  if (hp == nullptr) {
    // No hub, so no fiber can be blocked on it: close(2) (a thread that never
    // used one, or a fork() child, which cannot).
    close_fd(fd);
    return;
  }
  hub& h = *hp;
  if (socket_waiter* first = waiters_of(fd); first != nullptr) [[unlikely]] {
    // Wake every fiber blocked on this socket (they raise EBADF) and wait
    // until they have let go of it: only then is the fd ours to close, and
    // only then may the caller destroy the socket object.
    closing_state cs;
    for (socket_waiter* w = first; w != nullptr; w = w->next) {
      if (!w->closed) {
        w->closed = true;
        w->closer = &cs;
        ++cs.pending;
        h.io().cancel(*w->op);
      }
    }
    if (h.in_hub()) {
      // A timer or post() callback cannot park: the last waiter to let go
      // closes the fd (not touching this object, which may be gone by then).
      detach_close(fd, cs);
      return;
    }
    // Listed while it waits: if the thread ends with this fiber and the
    // waiters still parked (nobody ever reaps their cancels), the thread's end
    // closes the fd, as for a detached close (else it leaked). Safe: the fd
    // is certainly still open here (no close op submitted yet).
    cs.fd = fd;
    t_detached.add(&cs);
    try {
      while (cs.pending > 0) {
        cs.waiters_gone.wait(clock::time_point::max());
      }
    } catch (...) {
      // Killed while waiting: the stragglers close the fd when they let go.
      t_detached.remove(&cs);
      detach_close(fd, cs);
      throw;
    }
    t_detached.remove(&cs);
  } else if (h.in_hub()) {
    close_fd(fd);
    return;
  }
  io_op op;
  op.code = op_code::close;
  op.fd = fd;
  int r;
  try {
    r = h.await_io(op);
  } catch (...) {
    // Interrupted (kill/Timeout) while closing, or before the op was even
    // submitted (an interrupt was pending): make sure the fd is gone.
    if (!op.done || op.result == -ECANCELED) {
      close_fd(fd);
    }
    throw;
  }
  if (r == -ECANCELED) {
    close_fd(fd);
  }
  // Other close errors (EIO, EINTR) leave the fd closed on Linux: nothing to do.
}

int basic_socket::await(io_op& op, clock::time_point deadline, void (*release)(int)) {
  hub& h = hub::current();
  bool idle_bound = false;  // the idle limit, not the call's deadline, bounds this wait
  if (_idle) [[unlikely]] {
    clock::time_point idle = deadline_after(_idle);  // this wait alone
    if (idle < deadline) {
      deadline = idle;
      idle_bound = true;
    }
  }
  socket_waiter w;
  w.op = &op;
  socket_waiter*& head = waiter_head(op.fd);
  w.next = head;
  if (head != nullptr) {
    head->prev = &w;
  }
  head = &w;
  struct unlink {
    socket_waiter& w;
    ~unlink() {
      if (w.prev != nullptr) {
        w.prev->next = w.next;
      } else {
        t_waiters.slots[static_cast<std::size_t>(w.op->fd)] = w.next;
      }
      if (w.next != nullptr) {
        w.next->prev = w.prev;
      }
      if (w.closer != nullptr) [[unlikely]] {
        let_go(w.closer);
      }
    }
  } guard{w};
  int r = h.await_io(op, deadline, release);
  if (w.closed) [[unlikely]] {
    // close() ran while this op was in flight. From here on the socket object
    // may be gone (a second close() returns at once and its caller may
    // destroy it): the caller reports this without touching it — even if the
    // op completed anyway (a loop such as read_exactly() would otherwise come
    // back to the object for its next op).
    if (r >= 0 && release != nullptr) {
      release(r);  // it produced something (an fd) nobody will use
    }
    return -closed_while_waiting;
  }
  if (r == -ETIMEDOUT && idle_bound) [[unlikely]] {
    // Our idle deadline expired (a kernel ETIMEDOUT before it stays plain).
    if (clock::now() >= deadline) {
      return -idle_timed_out;
    }
  }
  return r;
}

void basic_socket::throw_closed(const char* what, bool by_close) {
  if (by_close) {
    throw socket_closed_error(std::string(what) + " on a closed socket");
  }
  throw_sys(EBADF, std::string(what) + " on a closed socket");
}

void basic_socket::throw_error(int err, const char* what) {
  if (err == closed_while_waiting) {
    throw socket_closed_error(std::string(what) + ": socket closed while waiting");
  }
  if (err == idle_timed_out) {
    throw idle_timeout_error(std::string(what) + ": idle timeout (the peer sent or took nothing)");
  }
  if (err == ETIMEDOUT) {
    throw_sys(ETIMEDOUT, std::string(what) + " timed out");
  }
  throw_sys(err, what);
}

address basic_socket::local_address() const {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd_for("local_address"), reinterpret_cast<sockaddr*>(&ss), &len) < 0) {
    throw_sys(errno, "getsockname");
  }
  return address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
}

void basic_socket::set_option(int level, int name, const void* value, socklen_t len) {
  if (::setsockopt(fd_for("set_option"), level, name, value, len) < 0) {
    throw_sys(errno, "setsockopt(" + std::to_string(level) + ", " + std::to_string(name) + ")");
  }
}

void basic_socket::get_option_raw(int level, int name, void* value, std::size_t len) const {
  auto l = static_cast<socklen_t>(len);
  if (::getsockopt(fd_for("get_option"), level, name, value, &l) < 0) {
    throw_sys(errno, "getsockopt(" + std::to_string(level) + ", " + std::to_string(name) + ")");
  }
}

void basic_socket::set_reuse_address(bool on) {
  set_option(SOL_SOCKET, SO_REUSEADDR, int{on ? 1 : 0});
}
void basic_socket::set_send_buffer_size(int bytes) {
  set_option(SOL_SOCKET, SO_SNDBUF, bytes);
}
void basic_socket::set_receive_buffer_size(int bytes) {
  set_option(SOL_SOCKET, SO_RCVBUF, bytes);
}
int basic_socket::send_buffer_size() const {
  return get_option<int>(SOL_SOCKET, SO_SNDBUF);
}
int basic_socket::receive_buffer_size() const {
  return get_option<int>(SOL_SOCKET, SO_RCVBUF);
}
int basic_socket::pending_error() const {
  return get_option<int>(SOL_SOCKET, SO_ERROR);
}

// ---- stream_socket ----------------------------------------------------------------

stream_socket stream_socket::connect(const address& to, timeout_duration t) {
  if (to.empty()) {
    throw std::invalid_argument("cogent::net: connect to an empty address");
  }
  int fd = ::socket(to.os_family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw_sys(errno, "socket() for " + to.to_string());
  }
  stream_socket s(fd);
  io_op op;
  op.code = op_code::connect;
  op.fd = fd;
  op.buf = const_cast<sockaddr*>(to.sockaddr_ptr());
  op.len = to.sockaddr_len();
  int r = s.await(op, s.deadline_for(t));
  if (r < 0) {
    throw_sys(-r, (r == -ETIMEDOUT ? "connect to " + to.to_string() + " timed out"
                                   : "connect to " + to.to_string()));
  }
  return s;
}

std::size_t stream_socket::read_some(void* buf, std::size_t n, timeout_duration t) {
  io_op op;
  op.code = op_code::recv;
  op.fd = fd_for("read_some");
  if (n == 0) {
    return 0;
  }
  op.buf = buf;
  op.len = clamp_len(n);
  int r = await(op, deadline_for(t));
  if (r < 0) [[unlikely]] {
    throw_error(-r, "read_some");
  }
  return static_cast<std::size_t>(r);
}

void stream_socket::read_exactly(void* buf, std::size_t n, timeout_duration t) {
  fd_for("read_exactly");
  clock::time_point deadline = deadline_for(t);
  auto* p = static_cast<char*>(buf);
  std::size_t got = 0;
  while (got < n) {
    if (got > 0 && past(deadline)) [[unlikely]] {
      throw_error(ETIMEDOUT, "read_exactly");
    }
    io_op op;
    op.code = op_code::recv;
    op.fd = fd_for("read_exactly");
    op.buf = p + got;
    op.len = clamp_len(n - got);
    int r = await(op, deadline);
    if (r < 0) [[unlikely]] {
      throw_error(-r, "read_exactly");
    }
    if (r == 0) {
      throw end_of_stream(got, n);
    }
    got += static_cast<std::size_t>(r);
  }
}

std::string stream_socket::read_until_eof(std::size_t max_bytes, timeout_duration t) {
  fd_for("read_until_eof");
  clock::time_point deadline = deadline_for(t);
  std::string out;
  std::size_t chunk = 16 * 1024;
  for (;;) {
    // Ask for at most one byte beyond the limit: receiving it proves the excess.
    std::size_t room = max_bytes - out.size();
    std::size_t want = room < chunk ? room + 1 : chunk;
    std::size_t old = out.size();
    out.resize(old + want);
    io_op op;
    op.code = op_code::recv;
    op.fd = fd_for("read_until_eof");
    op.buf = out.data() + old;
    op.len = clamp_len(want);
    int r = await(op, deadline);
    if (r < 0) [[unlikely]] {
      throw_error(-r, "read_until_eof");
    }
    out.resize(old + static_cast<std::size_t>(r));
    if (r == 0) {
      return out;
    }
    if (out.size() > max_bytes) {
      throw_sys(EMSGSIZE, "read_until_eof: more than " + std::to_string(max_bytes) + " bytes");
    }
    if (past(deadline)) [[unlikely]] {
      throw_error(ETIMEDOUT, "read_until_eof");
    }
    if (chunk < 256 * 1024 && static_cast<std::size_t>(r) == want) {
      chunk *= 2;
    }
  }
}

std::size_t stream_socket::write_some(const void* buf, std::size_t n, timeout_duration t) {
  io_op op;
  op.code = op_code::send;
  op.fd = fd_for("write_some");
  if (n == 0) {
    return 0;
  }
  op.buf = const_cast<void*>(buf);
  op.len = clamp_len(n);
  op.flags = MSG_NOSIGNAL;
  int r = await(op, deadline_for(t));
  if (r < 0) [[unlikely]] {
    throw_error(-r, "write_some");
  }
  return static_cast<std::size_t>(r);
}

void stream_socket::write_all(const void* buf, std::size_t n, timeout_duration t) {
  int fd = fd_for("write_all");
  clock::time_point deadline = deadline_for(t);
  const auto* p = static_cast<const char*>(buf);
  while (n > 0) {
    // The common case is one trip round this loop: one send op for the lot.
    io_op op;
    op.code = op_code::send;
    op.fd = fd;
    op.buf = const_cast<char*>(p);
    op.len = clamp_len(n);
    op.flags = MSG_NOSIGNAL;
    int r = await(op, deadline);
    if (r < 0) [[unlikely]] {
      throw_error(-r, "write_all");
    }
    p += r;
    n -= static_cast<std::size_t>(r);
    if (n > 0) {
      fd = fd_for("write_all");
      if (past(deadline)) [[unlikely]] {
        throw_error(ETIMEDOUT, "write_all");
      }
    }
  }
}

void stream_socket::shutdown(shutdown_how how) {
  io_op op;
  op.code = op_code::shutdown;
  op.fd = fd_for("shutdown");
  op.flags = static_cast<std::uint32_t>(how);
  int r = await(op, clock::time_point::max());
  if (r < 0) {
    throw_error(-r, "shutdown");
  }
}

address stream_socket::peer_address() const {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd_for("peer_address"), reinterpret_cast<sockaddr*>(&ss), &len) < 0) {
    throw_sys(errno, "getpeername");
  }
  return address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
}

void stream_socket::set_nodelay(bool on) {
  set_option(IPPROTO_TCP, TCP_NODELAY, int{on ? 1 : 0});
}
bool stream_socket::nodelay() const {
  return get_option<int>(IPPROTO_TCP, TCP_NODELAY) != 0;
}

void stream_socket::set_keepalive(bool on, std::chrono::seconds idle, std::chrono::seconds interval,
                                  int count) {
  set_option(SOL_SOCKET, SO_KEEPALIVE, int{on ? 1 : 0});
  if (idle.count() > 0) {
    set_option(IPPROTO_TCP, TCP_KEEPIDLE, static_cast<int>(idle.count()));
  }
  if (interval.count() > 0) {
    set_option(IPPROTO_TCP, TCP_KEEPINTVL, static_cast<int>(interval.count()));
  }
  if (count > 0) {
    set_option(IPPROTO_TCP, TCP_KEEPCNT, count);
  }
}

void stream_socket::set_linger(std::optional<std::chrono::seconds> t) {
  linger l{};
  l.l_onoff = t ? 1 : 0;
  l.l_linger = t ? static_cast<int>(t->count()) : 0;
  set_option(SOL_SOCKET, SO_LINGER, l);
}

// ---- listener -------------------------------------------------------------------

namespace {
// stale_unix_socket() says whether the socket file at `at` is left over from
// a socket that is gone: a connect to it is refused. A listening socket
// takes the connection (or has a full backlog: EAGAIN), one of another
// type answers EPROTOTYPE: both are live. The probe never waits.
bool stale_unix_socket(const address& at) {
  int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (probe < 0) {
    return false;  // cannot tell: leave it (bind then reports EADDRINUSE)
  }
  bool refused = ::connect(probe, at.sockaddr_ptr(), at.sockaddr_len()) < 0 && errno == ECONNREFUSED;
  ::close(probe);
  return refused;
}
}  // namespace

listener listener::bind(const address& at, const listen_options& opts) {
  if (at.empty()) {
    throw std::invalid_argument("cogent::net: listen on an empty address");
  }
  int fd = ::socket(at.os_family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw_sys(errno, "socket() for " + at.to_string());
  }
  listener l(fd);
  int one = 1;
  if (!at.is_unix()) {
    if (opts.reuse_address) {
      l.set_option(SOL_SOCKET, SO_REUSEADDR, one);
    }
    if (opts.reuse_port) {
      l.set_option(SOL_SOCKET, SO_REUSEPORT, one);
    }
    if (at.is_ipv6()) {
      l.set_option(IPPROTO_IPV6, IPV6_V6ONLY, int{opts.ipv6_only ? 1 : 0});
    }
  } else if (opts.unlink_existing && !at.is_abstract()) {
    std::string path = at.host();
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
      if (!stale_unix_socket(at)) {
        throw_sys(EADDRINUSE, "bind " + at.to_string() +
                                  ": a live socket is bound there (unlink_existing removes only stale ones)");
      }
      ::unlink(path.c_str());
    }
  }
  if (::bind(fd, at.sockaddr_ptr(), at.sockaddr_len()) < 0) {
    throw_sys(errno, "bind " + at.to_string());
  }
  if (::listen(fd, opts.backlog) < 0) {
    throw_sys(errno, "listen " + at.to_string());
  }
  return l;
}

stream_socket listener::accept(timeout_duration t) {
  io_op op;
  op.code = op_code::accept;
  op.fd = fd_for("accept");
  op.flags = SOCK_CLOEXEC;
  int r = await(op, deadline_for(t), close_fd);
  if (r < 0) [[unlikely]] {
    throw_error(-r, "accept");
  }
  return stream_socket(r);
}

stream_socket listener::accept(address& peer, timeout_duration t) {
  sockaddr_storage ss;
  socklen_t len = sizeof ss;
  io_op op;
  op.code = op_code::accept;
  op.fd = fd_for("accept");
  op.buf = &ss;
  op.addrlen = &len;
  op.flags = SOCK_CLOEXEC;
  int r = await(op, deadline_for(t), close_fd);
  if (r < 0) [[unlikely]] {
    throw_error(-r, "accept");
  }
  stream_socket s(r);
  peer = len > 0 ? address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len) : address();
  return s;
}

// ---- udp_socket -----------------------------------------------------------------

udp_socket udp_socket::open(address_family family) {
  int af = family == address_family::ipv4 ? AF_INET : family == address_family::ipv6 ? AF_INET6 : -1;
  if (af < 0) {
    throw std::invalid_argument("cogent::net: udp_socket::open needs ipv4 or ipv6");
  }
  int fd = ::socket(af, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw_sys(errno, "socket(SOCK_DGRAM)");
  }
  return udp_socket(fd);
}

udp_socket udp_socket::bind(const address& at, bool reuse_address) {
  udp_socket s = open(at.family());
  if (reuse_address) {
    s.set_reuse_address(true);
  }
  if (::bind(s._fd, at.sockaddr_ptr(), at.sockaddr_len()) < 0) {
    throw_sys(errno, "bind " + at.to_string());
  }
  return s;
}

void udp_socket::connect(const address& peer) {
  if (peer.empty()) {
    throw std::invalid_argument("cogent::net: udp_socket::connect to an empty address");
  }
  if (::connect(fd_for("connect"), peer.sockaddr_ptr(), peer.sockaddr_len()) < 0) {
    throw_sys(errno, "connect " + peer.to_string());
  }
}

std::size_t udp_socket::send_to(const void* buf, std::size_t n, const address& to, timeout_duration t) {
  if (to.empty()) {
    throw std::invalid_argument("cogent::net: udp_socket::send_to an empty address");
  }
  iovec iov{const_cast<void*>(buf), n};
  msghdr msg{};
  msg.msg_name = const_cast<sockaddr*>(to.sockaddr_ptr());
  msg.msg_namelen = to.sockaddr_len();
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  io_op op;
  op.code = op_code::sendmsg;
  op.fd = fd_for("send_to");
  op.buf = &msg;
  op.flags = MSG_NOSIGNAL;
  int r = await(op, deadline_for(t));
  if (r < 0) [[unlikely]] {
    throw_error(-r, "send_to");
  }
  return static_cast<std::size_t>(r);
}

std::size_t udp_socket::receive_from(void* buf, std::size_t n, address& from, timeout_duration t) {
  sockaddr_storage ss;
  iovec iov{buf, n};
  msghdr msg{};
  msg.msg_name = &ss;
  msg.msg_namelen = sizeof ss;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  io_op op;
  op.code = op_code::recvmsg;
  op.fd = fd_for("receive_from");
  op.buf = &msg;
  int r = await(op, deadline_for(t));
  if (r < 0) [[unlikely]] {
    throw_error(-r, "receive_from");
  }
  from = msg.msg_namelen > 0 ? address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), msg.msg_namelen)
                             : address();
  return static_cast<std::size_t>(r);
}

std::size_t udp_socket::send(const void* buf, std::size_t n, timeout_duration t) {
  io_op op;
  op.code = op_code::send;
  op.fd = fd_for("send");
  op.buf = const_cast<void*>(buf);
  op.len = clamp_len(n);
  op.flags = MSG_NOSIGNAL;
  int r = await(op, deadline_for(t));
  if (r < 0) [[unlikely]] {
    throw_error(-r, "send");
  }
  return static_cast<std::size_t>(r);
}

std::size_t udp_socket::receive(void* buf, std::size_t n, timeout_duration t) {
  io_op op;
  op.code = op_code::recv;
  op.fd = fd_for("receive");
  op.buf = buf;
  op.len = clamp_len(n);
  int r = await(op, deadline_for(t));
  if (r < 0) [[unlikely]] {
    throw_error(-r, "receive");
  }
  return static_cast<std::size_t>(r);
}

}  // namespace cogent::net
