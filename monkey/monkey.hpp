// monkey/monkey.hpp — gevent's monkey.patch_all() for C++: blocking libc calls
// made from fibers park the fiber on the hub instead of blocking the thread.
//
// Defines cogent::monkey::patch_all() and cogent::monkey::is_patched(). The
// library (cogent_monkey, shared and static) defines the libc functions below
// itself, so calls from your code AND from unmodified C libraries (hiredis,
// libcurl, ...) reach it before libc; each hook calls the real libc function
// (dlsym(RTLD_NEXT)) unless it can cooperate.
//
// Interposed: socket socketpair accept accept4 connect read readv write writev
// pread pwrite preadv pwritev preadv2 pwritev2 (and *64, *64v2) sendfile
// (sendfile64) recv recvfrom recvmsg recvmmsg send sendto sendmsg sendmmsg
// close shutdown poll ppoll select pselect epoll_wait epoll_pwait epoll_pwait2
// sleep usleep nanosleep clock_nanosleep
// getaddrinfo gethostbyname gethostbyname_r getnameinfo gethostbyaddr
// gethostbyaddr_r fcntl (fcntl64) ioctl(FIONBIO)
// setsockopt getsockopt dup dup2 dup3 pipe pipe2 open openat (and *64),
// waitpid wait wait3 wait4 system pclose, and the _FORTIFY_SOURCE entry
// points __read_chk __pread_chk __pread64_chk __recv_chk __recvfrom_chk
// __poll_chk __ppoll_chk (code built with
// -D_FORTIFY_SOURCE calls these; each does glibc's buffer-size check, failing
// with __chk_fail() as glibc does, then runs the plain function's hook).
//
// Who cooperates. A hooked call cooperates only when ALL of these hold:
//  - patch_all() has been called (before it every hook is exactly libc);
//  - the calling thread has a hub and the caller is not the hub fiber itself
//    (timer/post() callbacks). The thread's main fiber counts: gevent patches
//    main too, so main() blocking in read() runs the other fibers meanwhile.
//    A thread without a hub (plain std::thread, thread-pool workers) gets
//    exactly libc;
//  - for fd calls: the fd is a socket, a pipe/FIFO or a regular file (ttys,
//    eventfd, epoll, timerfd, ... go straight to libc), and the user has not
//    made it non-blocking (fcntl O_NONBLOCK, SOCK_NONBLOCK, FIONBIO, pipe2,
//    MSG_DONTWAIT): then libc runs unchanged, EAGAIN included;
//  - stderr (fd 2) writes are never made cooperative: crash handlers (stack
//    overflow reports) write there from signal handlers, where parking is
//    impossible.
//
// What a cooperating call does: reads/recv/accept/connect become io_uring ops
// the fiber parks on (a close()/dup2()/dup3() by another fiber first hands
// the queued ops to the kernel, so an op queued on that fd number still works
// on the file it was queued for, as a libc call in progress would; a call that
// waits more than once — a send loop, a pipe write, a connect's wait — is
// handed a duplicate of its file first (numbered from half the soft
// RLIMIT_NOFILE up, so the program's next open() still gets the lowest free
// number) and goes on with it, closed when the call ends: a waiting call
// costs no fd number otherwise, and a fork()ed child inherits nothing of
// it. From another thread the close races the wait as with libc: a wait the
// hub had not yet handed to the kernel fails with EBADF and is made again on
// the duplicate; a dup2() onto the number in that window can still see the
// wait's op land on the new file); a connect on a socket whose
// non-blocking connect is still in progress waits for it as connect(2) does
// (0 or its error; EALREADY once SO_SNDTIMEO passes); recv with
// MSG_PEEK|MSG_WAITALL looks again every millisecond while only part of the
// data is there (io_uring would peek the same bytes twice); writes/sends are tried at once with MSG_DONTWAIT and
// park on an io_uring POLLOUT only when the socket buffer is full (blocking
// semantics kept: the whole buffer is written; where POLLOUT says "room" but
// the send still cannot go — an unconnected AF_UNIX datagram socket whose
// receiver is full — it retries after pauses of 1 to 16 ms until SO_SNDTIMEO; a blocking
// sendto/sendmsg with MSG_FASTOPEN on an unconnected TCP socket waits for the handshake as
// connect(2) does, then sends); preadv/pwritev (and preadv2/pwritev2 with
// flags 0) on a regular file are io_uring readv/writev ops at the offset;
// sendfile waits for room in out_fd: a pipe, once (then one real call moves
// what fits, as sendfile(2) does), a socket, as often as needed until all is
// sent (each try sends what fits: sendfile has no MSG_DONTWAIT, so the
// socket's SO_SNDTIMEO is "expire at once" for the length of that one call,
// then put back; the kernel logs the first
// ten such negative timeouts per boot); recvmmsg/sendmmsg take batches with MSG_DONTWAIT and wait
// on POLLIN/POLLOUT between them (recvmmsg until the first message with
// MSG_WAITFORONE, else until vlen, SO_RCVTIMEO per message; sendmmsg finishes
// a message a stream took in part, as a blocking sendmsg does); poll/select/pselect first poll with
// a zero timeout, then park on one io_uring poll op per fd (epoll_wait: one
// on the epoll fd, then a zero-timeout epoll_wait takes the events, so
// edge-triggered and one-shot registrations behave as in libc); sleeps park on a
// hub timer; getaddrinfo/gethostbyname and the reverse lookups (getnameinfo
// unless all it is asked for is numeric, gethostbyaddr) run on cogent's
// thread pool. waitpid/wait/wait3/wait4 without WNOHANG (WNOHANG is libc's)
// first ask with WNOHANG added (a child already there, or an error such as
// ECHILD/EINVAL, is returned at once); then, for a pid > 0 without
// WUNTRACED/WCONTINUED, the fiber parks on an io_uring poll of a pidfd of the
// child (pidfd_open; close-on-exec, numbered from half the soft RLIMIT_NOFILE
// up, closed when the call ends) and asks again with WNOHANG once it exits;
// every other wait (pid <= 0, WUNTRACED/WCONTINUED, pidfd_open failed) asks
// with WNOHANG after hub-timer pauses of 1 ms doubling to 16 ms, so it sees
// the change of state up to 16 ms late. No wait for a child ever runs on a
// thread-pool worker (a killed fiber would leave one reaping a child nobody
// collects). system() (not system(NULL), which is libc's) and pclose() wait
// with glibc's internal waitpid, which no hook sees: the real call runs on
// cogent's thread pool while the fiber parks; for the length of a system()
// the worker takes the calling thread's signal mask (glibc starts the shell
// with its caller's mask: the command sees the signals it would from libc;
// a process-directed signal may meanwhile be handled on that worker), and
// the calling thread blocks SIGCHLD until the command has been waited for,
// as glibc's caller does (a SIGCHLD handler that reaps every child cannot
// take the shell). pclose() first forgets its stream's fd number as close()
// does (libc closes it where no hook sees it). popen()
// itself does not wait and is libc's; reading or writing its FILE* through
// stdio is not cooperative (see Known gaps), but read()/write() on
// fileno(fp) are (hooked pipe fds). Results
// and errno are libc's: SO_RCVTIMEO expiry -> EAGAIN, SO_SNDTIMEO on connect
// -> EINPROGRESS (AF_UNIX: EAGAIN), refused connect -> ECONNREFUSED, F_GETFL
// reports what the user set (the kernel fd keeps exactly the user's flags),
// and a connection the kernel itself timed out (TCP_USER_TIMEOUT, SYN retries)
// gives ETIMEDOUT as in libc. A call that parked and succeeded leaves errno
// as the caller had it (the fibers that ran meanwhile share the thread's
// errno: the waits put it back); select() reads tv_usec as a 32-bit int, as
// glibc does (2^31: EINVAL).
// Calls the kernel never blocks in go straight to libc: zero-length reads,
// MSG_ERRQUEUE and MSG_OOB receives, sockets with a negative timeout.
//
// Kill and Timeout inside a hooked call. C frames must never be unwound, so a
// kill or cogent::timeout that hits a fiber parked in a hook cancels and
// reaps the io_uring op (invariant 1), then the call fails with -1/EINTR (or
// returns what the op produced, if it completed anyway) and the interrupt
// stays PENDING: it is raised at the fiber's next cogent switch point
// (cogent::sleep, join, any cogent socket call, hub::throw_if_interrupted()).
// While it is pending, further hooked blocking calls do not block: the first
// fails with EINTR; if the same fiber retries with the interrupt still
// pending (C code that loops on EINTR, e.g. hiredis's reader) the retries
// fail with ECANCELED so the C code takes its error path and returns.
// A waitpid/wait/wait3/wait4 so ended has reaped nothing (the child stays
// waitable, its pidfd is closed); one that finds a child already there
// returns it even with an interrupt pending. A thread-pool job cannot be
// cancelled: a kill or Timeout that hits a fiber in getaddrinfo & co.,
// system() or pclose() waits for the job (the command runs to its end; its
// child is not signalled), the call returns the job's result and the
// interrupt is raised at the next switch point, as above. With an interrupt
// already pending at entry the lookups and system() fail at once (the
// command never runs) but pclose() runs libc's call in place, blocking the
// thread until the child exits: it must not leave the stream open.
//
// Linking (the hooks must be found before libc's definitions):
//  - shared: link libcogent_monkey.so into the EXECUTABLE (meson:
//    dependencies : cogent_monkey_dep). The executable references
//    patch_all(), so --as-needed keeps it, and as a direct dependency it
//    precedes libc in the global symbol scope, for every library loaded.
//  - static: link libcogent_monkey.a with --whole-archive and export the
//    hooks from the executable's dynamic symbol table so shared libraries
//    (libhiredis, libcurl, ...) bind to them (meson: cogent_monkey_static_dep
//    does both: -Wl,--whole-archive ... -Wl,--no-whole-archive and
//    -Wl,--dynamic-list=monkey/monkey.dynlist).
//  - LD_PRELOAD=libcogent_monkey.so also works for binaries that call
//    patch_all() through it.
//  - ASan/UBSan builds work: the sanitizer's interceptors and ours chain
//    (asan -> cogent_monkey -> libc when shared; exe(cogent_monkey) -> asan ->
//    libc when static).
//
// Ordering rules:
//  - Call patch_all() early in main(), before creating threads and before
//    the C libraries open their connections. It creates the calling
//    thread's hub. fds created earlier are classified lazily (fstat/F_GETFL)
//    on their first cooperative use.
//  - Other threads cooperate once they have a hub (any cogent call creating
//    one, e.g. cogent::spawn). patch_all() is process-wide and idempotent;
//    there is no unpatch.
//
// Known gaps: glibc's stdio (fgets, fread, getline, fscanf, fwrite, ...) reads
// and writes a FILE through internal calls no hook sees, so on a pipe or
// socket with nothing to read (or no room) it blocks the thread — use
// read()/write() (hooked), or cogent::net; an open() of a FIFO without
// O_NONBLOCK blocks the thread until the other end is opened (open it
// O_NONBLOCK, then clear the flag); so does stdio on a popen()ed FILE* (fgets,
// fread, fwrite of its pipe: read(fileno(fp), ...) cooperates); waitid() is
// not hooked (libc's, blocking the thread without WNOHANG). Also: fds closed
// behind libc's back (close_range, syscall(SYS_close),
// an fclose of an fdopen'd socket) or created by calls we do not hook
// (eventfd, memfd_create, ...) can leave a stale table entry until the number
// is reused through a hooked call or an io_uring accept/close (cogent::net's
// ops: the engine reports those to the table); an EPOLLEXCLUSIVE wake-up
// reaches every fiber waiting in epoll_wait on instances sharing that fd
// (libc: one thread; the man page allows "one or more"); ppoll, epoll_pwait
// and epoll_pwait2 with a signal mask, pselect with a signal mask, F_SETLKW,
// recvmmsg with a timeout argument or MSG_WAITALL, sendmmsg with
// MSG_FASTOPEN, preadv2/pwritev2 with flags or offset -1, reads/writes over 2 GiB in one call, and
// fds at or above the hard RLIMIT_NOFILE at patch_all() go straight to
// libc (blocking the thread); clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME)
// does not follow clock jumps during the sleep; closing an fd another fiber
// is parked on does not wake it (same as libc: Linux does not either); a
// negative SO_RCVTIMEO/SO_SNDTIMEO (the kernel then fails at once with
// EAGAIN) is known only when set through the hooked setsockopt() on that
// very fd: getsockopt() reads it back as "none", so a dup, an fd received
// through SCM_RIGHTS or a socket set up before patch_all() waits without
// limit instead; sendfile reads in_fd as libc does (only the wait for room
// in out_fd cooperates: an in_fd pipe or socket with nothing to read blocks
// the thread), and while one of its tries runs, another thread starting a
// blocking send on that same socket sees no SO_SNDTIMEO wait (EAGAIN), a
// getsockopt(SO_SNDTIMEO) there reads 0, a setsockopt(SO_SNDTIMEO) there is
// undone, and a negative SO_SNDTIMEO the table does not know (see above)
// becomes "none"; a recvmmsg that already has messages and then meets a
// socket error returns the messages and leaves the error for the next call
// when poll shows it, but drops one a later batch itself reports (the
// kernel would keep it for the next call); on a stream socket with
// SO_RCVLOWAT above 1, a cooperating read/recv/recvmsg/recvmmsg returns the
// bytes already there (io_uring, like a non-blocking call, takes what is
// queued) where libc would wait for the low-water mark.
// A signal handled while fibers wait in hooked calls does not end those
// calls with EINTR (the hub's wait is retried, as gevent's sleep and
// Python's PEP 475 retry): a nanosleep()/poll()/select()/epoll_wait() runs
// to its timeout even if the handler was installed without SA_RESTART. To
// wait for a signal, use signalfd or cogent::net::wait_for_signal().
//
// Example:
//   int main() {
//     cogent::monkey::patch_all();
//     for (int i = 0; i < 100; ++i) {
//       cogent::spawn([] { ::sleep(1); });   // the 100 sleeps overlap
//     }
//     cogent::wait();                        // ~1 s in all
//   }
#pragma once
#pragma GCC visibility push(default)

namespace cogent::monkey {

// patch_all() turns the hooks on for the whole process (they are exactly libc
// until then), resolves the real libc functions, sizes the per-fd table to
// the hard RLIMIT_NOFILE and creates the calling thread's hub. Idempotent.
// Throws std::system_error if io_uring is unavailable (hub creation). Never
// switches.
void patch_all();

// is_patched() is true once patch_all() ran.
bool is_patched() noexcept;

}  // namespace cogent::monkey

#pragma GCC visibility pop
