// fiber/stack.cpp — the stack allocator: chunked, pooled, lazily committed,
// guard page while the map-count budget allows, canary beyond it; and the
// SIGSEGV handler that names the fiber whose guard page was hit.
#include "fiber/stack.hpp"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#if defined(COGENT_VALGRIND)
#include <valgrind/valgrind.h>
#endif

namespace cogent {
namespace detail {
namespace {

constexpr std::size_t page_size = 4096;
constexpr std::size_t chunk_stacks = 256;                   // default stacks carved per mmap, at most
constexpr std::size_t chunk_bytes = std::size_t{256} << 20;  // and at most this much (but one stack)
// Up to this many free stacks per thread keep their memory ("hot": reuse costs
// no syscall and no page fault); beyond it a released stack gives its pages
// back (MADV_DONTNEED) and goes on a separate cold list, used only once the
// hot list is empty — so a burst of releases never makes later spawns pay a
// fault on every stack.
std::atomic<std::size_t> g_hot_limit{131072};

std::size_t round_up(std::size_t n, std::size_t to) {
  return (n + to - 1) / to * to;
}

// The guard budget: each guard page splits a mapping into two VMAs. Keep the
// guards to a quarter of vm.max_map_count after reserving room for the rest of
// the process (libraries, malloc arenas, thread stacks, our chunks).
std::size_t compute_guard_budget() {
  long max_maps = 65530;
  if (FILE* f = std::fopen("/proc/sys/vm/max_map_count", "r")) {
    if (std::fscanf(f, "%ld", &max_maps) != 1) {
      max_maps = 65530;
    }
    std::fclose(f);
  }
  long budget = (max_maps - 8192) / 4;
  return budget > 0 ? static_cast<std::size_t>(budget) : 0;
}

std::atomic<std::size_t> g_guarded{0};
std::size_t guard_budget() {
  static const std::size_t budget = compute_guard_budget();
  return budget;
}

bool try_take_guard() {
  std::size_t cur = g_guarded.load(std::memory_order_relaxed);
  while (cur < guard_budget()) {
    if (g_guarded.compare_exchange_weak(cur, cur + 1, std::memory_order_relaxed)) {
      return true;
    }
  }
  return false;
}

// Guard markers (Linux 6.13, madvise MADV_GUARD_INSTALL; Debian 12's headers
// predate the constant): a page-table marker that makes the page fault, with
// no VMA of its own. They survive MADV_DONTNEED (the cold list) and go with
// munmap. markers_available(): the kernel has them (probed once on a scratch
// page; kernels that do not know the advice answer EINVAL); g_markers_wanted:
// not turned off by set_guard_markers().
constexpr int madv_guard_install = 102;
std::atomic<bool> g_markers_wanted{true};
std::atomic<std::size_t> g_marker_guarded{0};

bool markers_available() noexcept {
  static const bool available = [] {
    void* p = ::mmap(nullptr, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      return false;
    }
    bool ok = ::madvise(p, page_size, madv_guard_install) == 0;
    ::munmap(p, page_size);
    return ok;
  }();
  return available;
}

bool install_marker(char* page) noexcept {
  if (!g_markers_wanted.load(std::memory_order_relaxed) || !markers_available()) {
    return false;
  }
  // It may ask to be retried (EAGAIN / a restart while racing a fault on the range).
  for (int attempt = 0; attempt < 3; ++attempt) {
    if (::madvise(page, page_size, madv_guard_install) == 0) {
      g_marker_guarded.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
    if (errno != EAGAIN && errno != EINTR) {
      return false;  // ENOMEM and the like: this stack falls back to the budget
    }
  }
  return false;
}

[[noreturn]] void throw_errno(int err, const char* what) {
  throw std::system_error(err, std::generic_category(), what);
}

void* map_region(std::size_t bytes) {
  void* p =
      ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    throw_errno(errno, "cogent: mmap of fiber stack failed");
  }
  // Huge pages would commit 2 MiB for a fiber that touches 4 KiB.
  ::madvise(p, bytes, MADV_NOHUGEPAGE);
  return p;
}

// Turns the lowest page of [base, base+bytes) into a guard if the budget
// allows; returns the stack descriptor for the rest.
stack carve(char* base, std::size_t bytes, bool pooled) {
  stack s;
  s.pooled = pooled;
  if (install_marker(base)) {
    s.guarded = true;
    s.marker = true;
  } else if (try_take_guard()) {
    if (::mprotect(base, page_size, PROT_NONE) == 0) {
      s.guarded = true;
    } else {
      g_guarded.fetch_sub(1, std::memory_order_relaxed);  // ENOMEM: map budget exhausted after all
    }
  }
  s.bottom = base + page_size;  // the guard slot is kept even when unguarded: layouts stay uniform
  s.size = static_cast<std::uint32_t>(bytes - page_size);  // <= stack_limits::max_size
#if defined(COGENT_VALGRIND)
  VALGRIND_STACK_REGISTER(s.bottom, s.bottom + s.size);
#endif
  return s;
}

// Stacks released by threads that exited, for other threads to reuse.
struct global_pool {
  std::mutex mu;
  std::vector<stack> stacks;
};
global_pool& shared_pool() {
  static global_pool* p = new global_pool;  // leaked on purpose: outlives every thread
  return *p;
}

// Initial-exec TLS: the pool is touched on every fiber create/destroy, and the
// default (global-dynamic) model in a shared library costs a __tls_get_addr call.
#define COGENT_STACK_TLS thread_local __attribute__((tls_model("initial-exec")))

COGENT_STACK_TLS bool t_pool_dead = false;  // trivially destructible: readable during thread exit

struct thread_pool {
  std::vector<stack> free;     // hot: memory still committed
  std::vector<stack> cold;     // pages given back
  char* chunk_next = nullptr;  // uncarved remainder of the current chunk
  std::size_t chunk_left = 0;
  std::size_t live = 0;

  ~thread_pool() {
    free.insert(free.end(), cold.begin(), cold.end());
    if (free.empty()) {
      return;
    }
    auto& g = shared_pool();
    std::lock_guard lock(g.mu);
    g.stacks.insert(g.stacks.end(), free.begin(), free.end());
  }
};

// The pool is reached through a plain pointer: a thread_local with a
// destructor is reached through a TLS wrapper whose guard costs a
// __tls_get_addr call in a shared library, on every stack taken or given back.
// The owner (with the destructor) is touched only when the pool is created.
COGENT_STACK_TLS thread_pool* t_pool_ptr = nullptr;
struct pool_owner {
  thread_pool* pool = nullptr;
  ~pool_owner() {
    t_pool_dead = true;
    t_pool_ptr = nullptr;
    delete pool;  // its stacks go to the shared pool
  }
};
thread_local pool_owner t_pool_owner;
thread_pool t_pool_after_exit;  // only for stacks taken during thread exit (rare; never freed)

[[gnu::noinline]] thread_pool& make_pool() {
  if (t_pool_dead) {
    return t_pool_after_exit;  // the owner is gone: do not register another
  }
  t_pool_owner.pool = t_pool_ptr = new thread_pool;
  return *t_pool_ptr;
}

inline thread_pool& pool() {
  thread_pool* p = t_pool_ptr;
  return p != nullptr ? *p : make_pool();
}

// The default stack size: settable until the first default-size stack is
// carved (g_default_fixed), then fixed, so every pooled stack has one size.
std::mutex g_default_mu;
std::atomic<std::size_t> g_default_size{stack_limits::default_size};
bool g_default_fixed = false;  // guarded by g_default_mu

// stacks_per_chunk() is how many default stacks of `slot` bytes one mapping
// carves: 256 of the default 256 KiB, one of 1 GiB (256 of those would be a
// 256 GiB mapping, refused under a ulimit -v or strict overcommit).
std::size_t stacks_per_chunk(std::size_t slot) noexcept {
  return std::clamp<std::size_t>(chunk_bytes / slot, 1, chunk_stacks);
}

char* map_default_chunk(std::size_t slot) {
  std::lock_guard lock(g_default_mu);
  g_default_fixed = true;
  return static_cast<char*>(map_region(slot * stacks_per_chunk(slot)));
}

stack allocate_default() {
  thread_pool& tp = pool();
  if (!tp.free.empty()) {
    stack s = tp.free.back();
    tp.free.pop_back();
    return s;
  }
  if (!tp.cold.empty()) {
    stack s = tp.cold.back();
    tp.cold.pop_back();
    return s;
  }
  {
    auto& g = shared_pool();
    std::lock_guard lock(g.mu);
    if (!g.stacks.empty()) {
      stack s = g.stacks.back();
      g.stacks.pop_back();
      return s;
    }
  }
  const std::size_t slot = g_default_size.load(std::memory_order_relaxed) + page_size;
  if (tp.chunk_left == 0) {
    tp.chunk_next = map_default_chunk(slot);
    tp.chunk_left = stacks_per_chunk(slot);
  }
  char* base = tp.chunk_next;
  tp.chunk_next += slot;
  --tp.chunk_left;
  return carve(base, slot, true);
}

}  // namespace

stack allocate_stack(std::size_t size) {
  stack s;
  if (size == 0 || size == g_default_size.load(std::memory_order_relaxed)) {
    s = allocate_default();
  } else {
    std::size_t bytes = round_up(size, page_size) + page_size;
    s = carve(static_cast<char*>(map_region(bytes)), bytes, false);
  }
  ++pool().live;
  return s;
}

void prefetch_next_stacks() noexcept {
  thread_pool* p = t_pool_ptr;
  if (p == nullptr) {
    return;
  }
  // The next one or two fibers to start take these, and write their first
  // frames just below the top.
  std::size_t n = p->free.size();
  for (std::size_t i = n; i > 0 && i + 2 > n; --i) {
    const char* top = p->free[i - 1].top();
    __builtin_prefetch(top - 64, 1);
    __builtin_prefetch(top - 128, 1);
  }
}

// trim_hot() moves the oldest free stacks beyond `limit` to the cold list,
// giving their pages back.
static void trim_hot(thread_pool& tp, std::size_t limit) noexcept {
  if (tp.free.size() <= limit) {
    return;
  }
  const std::size_t excess = tp.free.size() - limit;
  for (std::size_t i = 0; i < excess; ++i) {
    ::madvise(tp.free[i].bottom, tp.free[i].size, MADV_DONTNEED);
    tp.cold.push_back(tp.free[i]);
  }
  tp.free.erase(tp.free.begin(), tp.free.begin() + static_cast<std::ptrdiff_t>(excess));
}

void release_stack(stack s) noexcept {
#if defined(__SANITIZE_ADDRESS__)
  // Nobody runs on it any more: a pointer into a finished fiber's frames is
  // reported when used, until the next fiber gets the stack (give_stack
  // un-poisons it). Unmapped ones are left clean (the range may be reused
  // for anything).
  if (s.pooled) {
    __asan_poison_memory_region(s.bottom, s.size);
  }
#endif
  if (s.pooled && t_pool_dead) {
    // A fiber outlived its thread's pool (destroyed during thread exit).
    auto& g = shared_pool();
    std::lock_guard lock(g.mu);
    g.stacks.push_back(s);
    return;
  }
  if (!t_pool_dead) {
    --pool().live;
  }
  if (s.pooled) {
    thread_pool& tp = pool();
    const std::size_t limit = g_hot_limit.load(std::memory_order_relaxed);
    if (tp.free.size() >= limit) {
      // Keep the address range (munmap would split chunk mappings and spend
      // the map-count budget) but give the memory back.
      ::madvise(s.bottom, s.size, MADV_DONTNEED);
      tp.cold.push_back(s);
      trim_hot(tp, limit);  // the limit was lowered since this thread last released one
      return;
    }
    tp.free.push_back(s);
    return;
  }
#if defined(COGENT_VALGRIND)
  // The registration id is not kept; valgrind tolerates stale registrations of unmapped ranges.
#endif
  if (s.marker) {
    g_marker_guarded.fetch_sub(1, std::memory_order_relaxed);
  } else if (s.guarded) {
    g_guarded.fetch_sub(1, std::memory_order_relaxed);
  }
  ::munmap(s.bottom - page_size, s.size + page_size);
}

void set_guard_markers(bool on) noexcept {
  g_markers_wanted.store(on, std::memory_order_relaxed);
}

// ---- overflow reporting ----------------------------------------------------

namespace {

std::atomic<overflow_inspector> g_inspector{nullptr};
struct sigaction g_prev_segv;
struct sigaction g_prev_bus;

void write_all(const char* s, std::size_t n) noexcept {
  while (n > 0) {
    ssize_t w = ::write(STDERR_FILENO, s, n);
    if (w <= 0) {
      return;
    }
    s += w;
    n -= static_cast<std::size_t>(w);
  }
}

void on_fault(int sig, siginfo_t* info, void* uctx) {
  char name[128];
  overflow_inspector inspect = g_inspector.load(std::memory_order_relaxed);
  if (inspect != nullptr && inspect(info->si_addr, name, sizeof name)) {
    report_overflow_and_abort(name);
  }
  // Not ours: hand over to whoever was there before us.
  const struct sigaction& prev = sig == SIGSEGV ? g_prev_segv : g_prev_bus;
  // (sa_handler and sa_sigaction share storage: SIG_DFL and SIG_IGN read the
  // same with SA_SIGINFO or without, and are never functions to call.)
  if (prev.sa_handler == SIG_IGN) {
    if (info->si_code <= 0) {
      return;  // sent, and ignored before us: still ignored (a fault cannot be ignored: below)
    }
  } else if (prev.sa_handler != SIG_DFL) {
    if (prev.sa_flags & SA_SIGINFO) {
      prev.sa_sigaction(sig, info, uctx);
    } else {
      prev.sa_handler(sig);
    }
    return;
  }
  // Default action: reinstall it. A fault re-runs its instruction on return
  // and kills us; a signal that was sent (kill, raise: si_code <= 0) would
  // never come again, so it is raised anew (delivered once we return).
  ::signal(sig, SIG_DFL);
  if (info->si_code <= 0) {
    ::raise(sig);
  }
}

// alt_stack is the 64 KiB alternate signal stack of one fiber-using thread:
// installed at the thread's first fiber, unmapped when the thread ends (a
// program that starts many short threads must not keep a mapping per thread
// it ever had; vm.max_map_count is finite).
struct alt_stack {
  static constexpr std::size_t size = 64 * 1024;
  bool checked = false;
  void* mine = nullptr;  // null: none of ours (another was there: ASan's, the app's; or mmap failed)

  void install() noexcept {
    if (checked) {
      return;
    }
    checked = true;
    stack_t cur;
    if (::sigaltstack(nullptr, &cur) == 0 && (cur.ss_flags & SS_DISABLE) == 0 && cur.ss_sp != nullptr) {
      return;  // someone (ASan, the app) already provided one
    }
    void* p =
        ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      return;  // overflow reports degrade to a plain SIGSEGV; nothing else breaks
    }
    stack_t ss;
    ss.ss_sp = p;
    ss.ss_size = size;
    ss.ss_flags = 0;
    if (::sigaltstack(&ss, nullptr) != 0) {
      ::munmap(p, size);
      return;
    }
    mine = p;
  }

  ~alt_stack() {
    if (mine == nullptr) {
      return;
    }
    stack_t cur;
    if (::sigaltstack(nullptr, &cur) == 0 && cur.ss_sp == mine) {
      if ((cur.ss_flags & SS_ONSTACK) != 0) {
        return;  // (a thread ending from a signal handler: keep it, it is in use)
      }
      stack_t off;
      std::memset(&off, 0, sizeof off);
      off.ss_flags = SS_DISABLE;
      if (::sigaltstack(&off, nullptr) != 0) {
        return;
      }
    }
    // Not current any more (the app installed its own since): ours is unused.
    ::munmap(mine, size);
  }
};

}  // namespace

void report_overflow_and_abort(const char* name) noexcept {
  static const char head[] = "cogent: stack overflow in fiber '";
  static const char tail[] = "' (raise fiber_options::stack_size)\n";
  write_all(head, sizeof head - 1);
  write_all(name, std::strlen(name));
  write_all(tail, sizeof tail - 1);
  std::abort();
}

void install_overflow_handler(overflow_inspector inspect) {
  static std::once_flag once;
  std::call_once(once, [inspect] {
    g_inspector.store(inspect, std::memory_order_relaxed);
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGSEGV, &sa, &g_prev_segv);
    ::sigaction(SIGBUS, &sa, &g_prev_bus);
  });
  // The handler must run on an alternate stack: the faulting stack is full.
  thread_local alt_stack alt;
  alt.install();
}

}  // namespace detail

void set_default_stack_size(std::size_t bytes) {
  if (bytes < stack_limits::min_size || bytes > stack_limits::max_size) {
    throw std::invalid_argument("cogent: set_default_stack_size(" + std::to_string(bytes) + "): outside [" +
                                std::to_string(stack_limits::min_size) + ", " +
                                std::to_string(stack_limits::max_size) + "]");
  }
  std::lock_guard lock(detail::g_default_mu);
  if (detail::g_default_fixed) {
    throw std::logic_error(
        "cogent: set_default_stack_size() called after default-size stacks were handed out: call it first "
        "thing in main, before any fiber, task or hub exists");
  }
  detail::g_default_size.store(detail::round_up(bytes, detail::page_size), std::memory_order_relaxed);
}

std::size_t default_stack_size() noexcept {
  return detail::g_default_size.load(std::memory_order_relaxed);
}

void set_stack_pool_limit(std::size_t hot_stacks) noexcept {
  detail::g_hot_limit.store(hot_stacks, std::memory_order_relaxed);
  if (detail::t_pool_ptr != nullptr && !detail::t_pool_dead) {
    detail::trim_hot(*detail::t_pool_ptr, hot_stacks);
  }
}

stack_counters stack_stats() noexcept {
  stack_counters c;
  detail::thread_pool& tp = detail::pool();
  c.live = tp.live;
  c.pooled = tp.free.size() + tp.cold.size();
  c.pooled_hot = tp.free.size();
  c.guarded_total = detail::g_guarded.load(std::memory_order_relaxed);
  c.guard_budget = detail::guard_budget();
  c.marker_guarded = detail::g_marker_guarded.load(std::memory_order_relaxed);
  c.guard_markers = detail::g_markers_wanted.load(std::memory_order_relaxed) && detail::markers_available();
  return c;
}

}  // namespace cogent
