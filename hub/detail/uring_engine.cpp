// hub/detail/uring_engine.cpp — the io_uring implementation of cogent::detail::engine.
//
// Defines cogent::detail::make_uring_engine() and the (file-local) uring_engine
// class behind it. This is the only file in the library that includes
// <liburing.h>; everything else talks to the ring through engine.hpp.
//
// Shape of the engine:
//  - submit()/cancel() only fill SQEs; the kernel sees them at the next
//    wait()/poll() (one io_uring_enter per loop turn) or when the SQ is full.
//    cancel() of an op the kernel has not taken yet turns its SQE into a nop.
//  - wait() is a single io_uring_submit_and_wait_timeout: flush + block until
//    a CQE, a wake() or the deadline.
//  - wake() writes an eventfd on which a read is kept armed with a sentinel
//    user_data, so a blocked wait() sees a CQE and returns.
//  - Ops that cannot get an SQE even after flushing (kernel refusing
//    submissions) wait in a user-space backlog, preserving submission order,
//    so submit() never fails.
#include "hub/detail/engine.hpp"

#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace cogent::detail {
namespace {

// Sentinel user_data values. io_op is at least 4-byte aligned, so these small
// odd/tiny values can never be the address of a real op; the reaper ignores them.
constexpr std::uint64_t cancel_tag = 1;
constexpr std::uint64_t wake_tag = 3;

// Ring setup attempts, fastest first. TASKRUN_FLAG is requested alongside
// DEFER/COOP so poll() can tell, without a syscall, that completions are
// waiting as task work and not yet in the CQ.
struct setup_choice {
  unsigned flags;
  const char* label;
};

constexpr setup_choice setup_choices[] = {
    {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
     "SINGLE_ISSUER|DEFER_TASKRUN|TASKRUN_FLAG"},
    {IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG, "COOP_TASKRUN|TASKRUN_FLAG"},
    {0, "no flags"},
};

std::string unavailable_message(int err) {
  std::string msg = "io_uring is unavailable (io_uring_setup failed with ";
  msg += std::to_string(err);
  msg += " ";
  switch (err) {
    case ENOSYS:
      msg +=
          "ENOSYS): the kernel lacks io_uring or a seccomp filter blocks it "
          "(e.g. a container runtime's default profile)";
      break;
    case EPERM:
      msg +=
          "EPERM): sysctl kernel.io_uring_disabled forbids it for this user, "
          "or a seccomp/LSM policy denies it";
      break;
    case ENOMEM:
      msg +=
          "ENOMEM): RLIMIT_MEMLOCK too low for the rings on kernels before 5.12 "
          "(raise `ulimit -l`), or try fewer entries";
      break;
    case EMFILE:
    case ENFILE:
      msg += "EMFILE/ENFILE): out of file descriptors";
      break;
    case EINVAL:
      msg += "EINVAL): the kernel is too old for the requested setup (need >= 5.11)";
      break;
    default:
      msg += "errno): unexpected setup failure";
      break;
  }
  return msg;
}

// report_fd_event() tells fd_event_hook (cogent_monkey's fd table) about an fd
// an op created or closed.
void report_fd_event(int fd) noexcept {
  if (fd_event_fn hook = fd_event_hook.load(std::memory_order_acquire); hook != nullptr) {
    hook(fd);
  }
}

class uring_engine final : public engine {
 public:
  // The kernel's largest SQ (IORING_MAX_ENTRIES); CLAMP brings more down to it.
  static constexpr unsigned max_sq_entries = 32768;

  explicit uring_engine(unsigned entries) {
    if (entries == 0) {
      entries = 1;
    }
    int err = -EINVAL;
    for (const setup_choice& choice : setup_choices) {
      // SUBMIT_ALL keeps one bad SQE from stranding the rest of the batch;
      // retry without it only if the kernel predates it (5.18).
      for (unsigned extra : {unsigned{IORING_SETUP_SUBMIT_ALL}, 0U}) {
        io_uring_params params{};
        // A CQ 4x the SQ makes overflow (and the kernel's overflow list) rare;
        // CLAMP turns "too many entries" into "the maximum" instead of EINVAL.
        params.flags = choice.flags | extra | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
        // (Clamped first: 4x a huge count would wrap and make the CQ smaller than the SQ.)
        params.cq_entries = std::min(entries, max_sq_entries) * 4;
        err = io_uring_queue_init_params(entries, &_ring, &params);
        if (err == 0) {
          _features = params.features;
          _name = "io_uring (";
          _name += choice.label;
          if (extra != 0) {
            _name += choice.flags != 0 ? "|SUBMIT_ALL" : "SUBMIT_ALL";
          }
          _name += ")";
          break;
        }
        if (err != -EINVAL) {
          break;
        }
      }
      if (err != -EINVAL) {
        break;
      }
    }
    if (err != 0) {
      throw std::system_error(-err, std::system_category(), unavailable_message(-err));
    }

    // Blocking on purpose: io_uring then parks the read in the kernel instead
    // of completing it with -EAGAIN, and wake() can never block on a blocking
    // eventfd because the coalescing flag keeps the counter tiny.
    _wake_fd = ::eventfd(0, EFD_CLOEXEC);
    if (_wake_fd < 0) {
      int e = errno;
      io_uring_queue_exit(&_ring);
      throw std::system_error(e, std::system_category(), "cogent: eventfd for the io_uring engine");
    }
    arm_wake_reader();
  }

  ~uring_engine() override {
    if (!_abandoned) {
      io_uring_queue_exit(&_ring);
      ::close(_wake_fd);
    }
  }

  void abandon() noexcept override {
    if (!std::exchange(_abandoned, true)) {
      // The child's mappings and fd only: the instance lives on in the parent.
      io_uring_queue_exit(&_ring);
      ::close(_wake_fd);
      _wake_pending.store(true, std::memory_order_relaxed);  // a late wake() writes nothing
    }
  }

  uring_engine(const uring_engine&) = delete;
  uring_engine& operator=(const uring_engine&) = delete;

  void submit(io_op& op) override {
    // Reset so a reused op can be cancelled again.
    op.done = false;
    ++_in_flight;
    io_uring_sqe* sqe = get_sqe();
    if (sqe == nullptr) {
      _backlog.push_back({&op, false});
      return;
    }
    if (!prep(sqe, op)) {
      op.result = -EINVAL;
      _local_done.push_back(&op);
    }
  }

  void flush() override {
    // The kernel refuses submissions (-EBUSY) while it cannot post more
    // completions: then the CQ's completions move to _local_done (delivered
    // by the next reap, as usual) to make room, and it is asked again — a few
    // times, as close()/dup2() need every op taken (engine.hpp).
    constexpr int max_attempts = 8;
    for (int attempt = 0;; ++attempt) {
      drain_backlog();
      if (io_uring_sq_ready(&_ring) > 0) {
        (void)io_uring_submit(&_ring);
        drain_backlog();
      }
      if ((io_uring_sq_ready(&_ring) == 0 && _backlog.empty()) || attempt == max_attempts) {
        return;
      }
      stash_completions();
    }
  }

  void cancel(io_op& op) override {
    // A close is never cancelled: the caller's fd must go (and the kernel runs
    // it as it takes it, so a cancel would find nothing).
    if (op.done || op.code == op_code::close) {
      return;
    }
    for (io_op* local : _local_done) {
      if (local == &op) {
        return;  // already finished locally; delivery is pending
      }
    }
    for (auto it = _backlog.begin(); it != _backlog.end(); ++it) {
      if (it->op == &op && !it->is_cancel) {
        // The kernel never saw it: finish it here, without a round trip.
        _local_done.push_back(&op);  // first: if it throws, nothing has changed
        _backlog.erase(it);
        op.result = -ECANCELED;
        return;
      }
    }
    // Still in the submission queue, not yet taken by the kernel: make it a
    // nop the reaper ignores, so it never runs (a cancel queued behind it
    // would come too late: an accept would take a waiting client, a send
    // would send).
    const unsigned mask = _ring.sq.ring_mask;
    for (unsigned pos = IO_URING_READ_ONCE(*_ring.sq.khead); pos != _ring.sq.sqe_tail; ++pos) {
      io_uring_sqe* queued = &_ring.sq.sqes[pos & mask];
      if (queued->user_data == reinterpret_cast<std::uintptr_t>(&op)) {
        _local_done.push_back(&op);  // first: if it throws, nothing has changed
        io_uring_prep_nop(queued);
        io_uring_sqe_set_data64(queued, cancel_tag);
        op.result = -ECANCELED;
        return;
      }
    }
    io_uring_sqe* sqe = get_sqe();
    if (sqe == nullptr) {
      _backlog.push_back({&op, true});
      return;
    }
    prep_cancel(sqe, op);
  }

  int wait(clock::time_point deadline) override {
    if (!_local_done.empty()) {
      return poll();
    }
    __kernel_timespec ts{};
    __kernel_timespec* tsp = nullptr;
    if (deadline != clock::time_point::max()) {
      auto now = clock::now();
      if (deadline <= now) {
        return poll();
      }
      auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now).count();
      ts.tv_sec = ns / 1'000'000'000;
      ts.tv_nsec = ns % 1'000'000'000;
      tsp = &ts;
    }
    drain_backlog();
    if (!_wake_armed) [[unlikely]] {
      arm_wake_reader();  // (failed at the last reap: the kernel refused a submit; it submits to make room)
    }
    if (!_backlog.empty() || !_wake_armed) {
      // The kernel refused submissions: hand it what the SQ holds, which
      // frees room for the rest. If some are still left in user space (or
      // the wake reader could not be armed, so a wake() would go unseen),
      // block at most 1 ms: nothing else would hand them over.
      (void)io_uring_submit(&_ring);
      drain_backlog();
      if (!_backlog.empty() || !_wake_armed) {
        constexpr long retry_ns = 1'000'000;
        if (tsp == nullptr || ts.tv_sec > 0 || ts.tv_nsec > retry_ns) {
          ts.tv_sec = 0;
          ts.tv_nsec = retry_ns;
          tsp = &ts;
        }
      }
    }
    io_uring_cqe* cqe = nullptr;
    // -ETIME (deadline), -EINTR (signal), -EBUSY/-EAGAIN (kernel pressure):
    // all mean "return to the loop"; whatever did arrive is reaped below.
    if (tsp == nullptr) {
      // No deadline: the plain submit-and-wait enter (liburing's timeout
      // variant takes a slower path through its CQE-peeking loop).
      (void)cqe;
      (void)io_uring_submit_and_wait(&_ring, 1);
    } else {
      (void)io_uring_submit_and_wait_timeout(&_ring, &cqe, 1, tsp, nullptr);
    }
    return reap();
  }

  int poll() override {
    drain_backlog();
    unsigned kflags = IO_URING_READ_ONCE(*_ring.sq.kflags);
    bool pending_work = (kflags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) != 0;
    if (io_uring_sq_ready(&_ring) > 0 || (pending_work && io_uring_cq_ready(&_ring) == 0)) {
      // One syscall submits the batch and runs deferred task work, which is
      // where DEFER/COOP rings post completions. With nothing queued and no
      // task-work flag this path costs zero syscalls.
      (void)io_uring_submit_and_get_events(&_ring);
    }
    return reap();
  }

  std::size_t in_flight() const override { return _in_flight; }

  void wake() noexcept override {
    if (_wake_pending.exchange(true, std::memory_order_acq_rel)) {
      return;  // a write is already on its way; one is enough
    }
    // Async-signal-safe: only an atomic and write(2); errno is preserved for
    // the interrupted code.
    int saved = errno;
    std::uint64_t one = 1;
    ssize_t rc;
    do {
      rc = ::write(_wake_fd, &one, sizeof one);
    } while (rc < 0 && errno == EINTR);
    errno = saved;
  }

  const char* name() const noexcept override { return _name.c_str(); }

 private:
  struct pending {
    io_op* op;
    bool is_cancel;
  };

  // get_sqe() returns a free SQE, flushing the SQ once if it is full. Returns
  // nullptr if the kernel will not take more now or if older requests are
  // still in the backlog (handing out an SQE would reorder a cancel before
  // its target).
  io_uring_sqe* get_sqe() {
    if (!_backlog.empty()) {
      drain_backlog();
      if (!_backlog.empty()) {
        return nullptr;
      }
    }
    io_uring_sqe* sqe = io_uring_get_sqe(&_ring);
    if (sqe == nullptr) {
      (void)io_uring_submit(&_ring);
      sqe = io_uring_get_sqe(&_ring);
    }
    return sqe;
  }

  void drain_backlog() {
    std::size_t i = 0;
    while (i < _backlog.size()) {
      io_uring_sqe* sqe = io_uring_get_sqe(&_ring);
      if (sqe == nullptr) {
        (void)io_uring_submit(&_ring);
        sqe = io_uring_get_sqe(&_ring);
        if (sqe == nullptr) {
          break;
        }
      }
      pending p = _backlog[i++];
      if (p.is_cancel) {
        prep_cancel(sqe, *p.op);
      } else if (!prep(sqe, *p.op)) {
        p.op->result = -EINVAL;
        _local_done.push_back(p.op);
      }
    }
    _backlog.erase(_backlog.begin(), _backlog.begin() + static_cast<std::ptrdiff_t>(i));
  }

  void prep_cancel(io_uring_sqe* sqe, io_op& op) {
    io_uring_prep_cancel64(sqe, reinterpret_cast<std::uintptr_t>(&op), 0);
    io_uring_sqe_set_data64(sqe, cancel_tag);
    if ((_features & IORING_FEAT_CQE_SKIP) != 0) {
      // The cancel's own success CQE carries nothing we use; failures
      // (-ENOENT, -EALREADY) still post one and are ignored by the reaper.
      io_uring_sqe_set_flags(sqe, IOSQE_CQE_SKIP_SUCCESS);
    }
  }

  // prep() fills `sqe` for `op`. Returns false for an op_code outside the
  // enum, in which case the SQE is turned into a harmless sentinel nop.
  static bool prep(io_uring_sqe* sqe, io_op& op) {
    // The kernel reads offset -1 as "use and advance the file position".
    auto off = static_cast<std::uint64_t>(op.offset);
    switch (op.code) {
      case op_code::nop:
        io_uring_prep_nop(sqe);
        break;
      case op_code::read:
        io_uring_prep_read(sqe, op.fd, op.buf, op.len, off);
        break;
      case op_code::write:
        io_uring_prep_write(sqe, op.fd, op.buf, op.len, off);
        break;
      case op_code::readv:
        io_uring_prep_readv(sqe, op.fd, static_cast<const iovec*>(op.buf), op.len, off);
        break;
      case op_code::writev:
        io_uring_prep_writev(sqe, op.fd, static_cast<const iovec*>(op.buf), op.len, off);
        break;
      case op_code::recv:
        io_uring_prep_recv(sqe, op.fd, op.buf, op.len, static_cast<int>(op.flags));
        break;
      case op_code::send:
        io_uring_prep_send(sqe, op.fd, op.buf, op.len, static_cast<int>(op.flags));
        break;
      case op_code::recvmsg:
        io_uring_prep_recvmsg(sqe, op.fd, static_cast<msghdr*>(op.buf), op.flags);
        break;
      case op_code::sendmsg:
        io_uring_prep_sendmsg(sqe, op.fd, static_cast<const msghdr*>(op.buf), op.flags);
        break;
      case op_code::accept:
        io_uring_prep_accept(sqe, op.fd, static_cast<sockaddr*>(op.buf), op.addrlen,
                             static_cast<int>(op.flags));
        break;
      case op_code::connect:
        io_uring_prep_connect(sqe, op.fd, static_cast<const sockaddr*>(op.buf),
                              static_cast<socklen_t>(op.len));
        break;
      case op_code::close:
        io_uring_prep_close(sqe, op.fd);
        break;
      case op_code::shutdown:
        io_uring_prep_shutdown(sqe, op.fd, static_cast<int>(op.flags));
        break;
      case op_code::poll:
        io_uring_prep_poll_add(sqe, op.fd, op.flags);
        break;
      case op_code::fsync:
        io_uring_prep_fsync(sqe, op.fd, 0);
        break;
      default:
        // The SQE is already taken; make it a nop the reaper ignores.
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, cancel_tag);
        return false;
    }
    io_uring_sqe_set_data(sqe, &op);
    return true;
  }

  void arm_wake_reader() {
    // The wake reader bypasses the backlog: it owns no io_op and its position
    // relative to other requests does not matter.
    io_uring_sqe* sqe = io_uring_get_sqe(&_ring);
    if (sqe == nullptr) {
      (void)io_uring_submit(&_ring);
      sqe = io_uring_get_sqe(&_ring);
    }
    if (sqe == nullptr) {
      // Retried at the next reap; until then wake() degrades to "the next
      // completion or deadline", never to a lost CQE.
      _wake_armed = false;
      return;
    }
    io_uring_prep_read(sqe, _wake_fd, &_wake_buf, sizeof _wake_buf, static_cast<std::uint64_t>(-1));
    io_uring_sqe_set_data64(sqe, wake_tag);
    _wake_armed = true;
  }

  // take_result() reads one CQE: the op it completes (its result stored, fd
  // events reported), or null for the engine's own sentinels (wake_fired set
  // for the wake reader's).
  io_op* take_result(const io_uring_cqe* cqe, bool& wake_fired) noexcept {
    std::uint64_t ud = cqe->user_data;
    if (ud == wake_tag) {
      wake_fired = true;
      return nullptr;
    }
    if (ud == cancel_tag || ud == LIBURING_UDATA_TIMEOUT) {
      return nullptr;
    }
    auto* op = reinterpret_cast<io_op*>(static_cast<std::uintptr_t>(ud));
    op->result = cqe->res;
    if ((op->code == op_code::accept && cqe->res >= 0) || op->code == op_code::close) [[unlikely]] {
      report_fd_event(op->code == op_code::accept ? cqe->res : op->fd);
    }
    return op;
  }

  // stash_completions() empties the CQ (and the kernel's overflow list) into
  // _local_done without running any callback: flush() makes room this way.
  void stash_completions() noexcept {
    (void)io_uring_get_events(&_ring);  // overflowed completions into the CQ first
    unsigned ready = io_uring_cq_ready(&_ring);
    if (ready == 0) {
      return;
    }
    try {
      _local_done.reserve(_local_done.size() + ready);
    } catch (...) {
      return;  // no room to keep them: they stay in the CQ
    }
    bool wake_fired = false;
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&_ring, head, cqe) {
      if (seen == ready) {
        break;
      }
      ++seen;
      if (io_op* op = take_result(cqe, wake_fired)) {
        _local_done.push_back(op);  // reserved: cannot throw
      }
    }
    io_uring_cq_advance(&_ring, seen);
    if (wake_fired) {
      _wake_armed = false;  // its read is done: the next reap or wait() clears the flag and re-arms
    }
  }

  // reap() delivers every available completion. Each batch is copied out and
  // the CQ advanced before any callback runs, so callbacks may submit(),
  // cancel() or even poll() re-entrantly.
  int reap() {
    int delivered = 0;
    // Bounded so a steady stream of completions cannot keep us here forever.
    unsigned budget = _ring.cq.ring_entries * 2;
    for (;;) {
      constexpr unsigned batch_max = 64;
      io_op* batch[batch_max];
      unsigned n = 0;

      // Ops finished without the kernel (cancelled in the backlog, bad code).
      while (!_local_done.empty() && n < batch_max) {
        io_op* op = _local_done.back();
        _local_done.pop_back();
        op->done = true;
        --_in_flight;
        batch[n++] = op;
      }

      unsigned head;
      io_uring_cqe* cqe;
      {
        // Each op lives on its parked fiber's stack, cold when many fibers
        // are in rotation: start fetching every op of the batch before the
        // first is read, so the misses overlap instead of queueing.
        unsigned ahead = n;
        io_uring_for_each_cqe(&_ring, head, cqe) {
          if (ahead++ == batch_max) {
            break;
          }
          __builtin_prefetch(reinterpret_cast<const void*>(static_cast<std::uintptr_t>(cqe->user_data)), 1);
        }
      }

      unsigned seen = 0;
      bool wake_fired = false;
      io_uring_for_each_cqe(&_ring, head, cqe) {
        if (n == batch_max) {
          break;
        }
        ++seen;
        io_op* op = take_result(cqe, wake_fired);
        if (op == nullptr) {
          continue;
        }
        // done is set for the whole batch before callbacks run, so a callback
        // cancelling a later op of the same batch is a no-op, as it should be.
        op->done = true;
        --_in_flight;
        batch[n++] = op;
        __builtin_prefetch(op->user, 1);  // await_io keeps the parked fiber there, which on_complete schedules (else harmless)
      }
      io_uring_cq_advance(&_ring, seen);

      if (wake_fired || !_wake_armed) {
        // acq_rel pairs with wake()'s exchange: whatever the waker published
        // before calling wake() is visible to the hub once wait() returns.
        // Clearing before re-arming means a wake() in between writes the
        // eventfd again and the new read completes at once.
        _wake_pending.exchange(false, std::memory_order_acq_rel);
        arm_wake_reader();
      }

      for (unsigned i = 0; i < n; ++i) {
        io_op* op = batch[i];
        if (op->on_complete != nullptr) {
          op->on_complete(op);
        }
      }
      delivered += static_cast<int>(n);

      if (seen == 0 && n == 0) {
        // The CQ is empty; completions may still sit in the kernel's
        // overflow list (CQ was full) — flush them in and go round again.
        if (io_uring_cq_has_overflow(&_ring) && budget > 0) {
          (void)io_uring_get_events(&_ring);
          budget = budget > 1 ? budget - 1 : 0;
          if (io_uring_cq_ready(&_ring) > 0) {
            continue;
          }
        }
        break;
      }
      budget = budget > seen ? budget - seen : 0;
      if (budget == 0) {
        break;
      }
      if (n < batch_max && !io_uring_cq_has_overflow(&_ring)) {
        break;  // the batch emptied the CQ: no second pass just to find it empty
      }
    }
    return delivered;
  }

  io_uring _ring{};
  unsigned _features = 0;
  std::string _name;
  std::size_t _in_flight = 0;
  std::vector<pending> _backlog;
  std::vector<io_op*> _local_done;

  int _wake_fd = -1;
  bool _abandoned = false;  // abandon(): the rings are unmapped
  std::uint64_t _wake_buf = 0;
  bool _wake_armed = false;
  std::atomic<bool> _wake_pending{false};
};

}  // namespace

std::atomic<fd_event_fn> fd_event_hook{nullptr};

std::unique_ptr<engine> make_uring_engine(unsigned entries) {
  return std::make_unique<uring_engine>(entries);
}

}  // namespace cogent::detail
