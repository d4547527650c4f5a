// fiber/stack.hpp — fiber stacks: sizes, the pooled allocator, overflow protection.
//
// Defines cogent::stack_limits, cogent::set_default_stack_size(), cogent::stack_stats() and the internal
// allocator (cogent::detail::stack, allocate_stack, release_stack).
//
// How stacks work:
//  - Memory comes from mmap(MAP_NORESERVE): only the pages a fiber touches are
//    committed. A suspended fiber that did little costs one page (4 KiB).
//  - Default-size stacks are carved from large chunks and pooled per thread;
//    creating a fiber normally costs no syscall and no page fault. Free stacks
//    beyond the hot limit (set_stack_pool_limit, default 131072 per thread)
//    have their pages returned (MADV_DONTNEED) and are reused last.
//  - Overflow protection: a guard page below every stack. On Linux >= 6.13 it
//    is a guard marker (madvise MADV_GUARD_INSTALL): a page-table entry that
//    faults, costing no mapping, so 1,000,000 fibers all have one. On older
//    kernels it is a PROT_NONE page while the process's mapping budget allows
//    (each splits a mapping; Linux caps a process at vm.max_map_count, 65530
//    by default); beyond the budget a stack gets a canary instead, checked at
//    every switch away from the fiber (a read of the stack's bottom page: on a
//    sleep-heavy load of 100k fibers that costs ~7%). Either way an overflow prints
//    "cogent: stack overflow in fiber '<name>'" on stderr and aborts; it is
//    never silent corruption — for a frame larger than the guard page (a big
//    local array) only if the code was built with -fstack-clash-protection,
//    which makes it touch each page in turn: cogent is, and cogent_dep /
//    cogent.pc pass the flag to code built against it.
#pragma once
// Everything declared in cogent headers is exported from the library (built with -fvisibility=hidden).
#pragma GCC visibility push(default)

#include <cstddef>
#include <cstdint>

namespace cogent {

// stack_limits are the bounds fiber_options::stack_size must respect.
struct stack_limits {
  static constexpr std::size_t min_size = 16 * 1024;             // below this, libc calls overflow
  static constexpr std::size_t max_size = std::size_t{1} << 30;  // 1 GiB: anything larger is a bug
  static constexpr std::size_t default_size = 256 * 1024;        // lazily committed: costs what is used
};

// stack_counters is a snapshot of the stack allocator of the calling thread.
struct stack_counters {
  std::size_t live = 0;           // stacks handed out and not yet released (this thread)
  std::size_t pooled = 0;         // default-size stacks waiting for reuse (this thread)
  std::size_t pooled_hot = 0;     // of those, the ones keeping their memory (see set_stack_pool_limit)
  std::size_t guarded_total = 0;  // stacks with a PROT_NONE guard page, each a mapping (process-wide)
  std::size_t guard_budget = 0;   // how many of those the map-count budget allows (process-wide)
  std::size_t marker_guarded = 0;  // stacks with a guard marker instead, no budget needed (process-wide)
  bool guard_markers = false;      // new stacks get guard markers (the kernel has them: Linux >= 6.13)
};

// set_default_stack_size() sets the usable size, in bytes, of the stacks of
// fibers created with stack_size 0 (process-wide; rounded up to whole pages;
// initially stack_limits::default_size, 256 KiB). A stack costs only the
// pages its fiber touches either way; a smaller size packs stacks tighter in
// the address space, so with 100k+ fibers alive each wake-up costs less
// page-table walking (BENCHMARKS.md, sleep_100k_10ms at 32 KiB) — at the price
// of less room for deep calls (libc's printf and getaddrinfo want ~10 KiB).
// Call it first thing in main, before any fiber, task or hub exists. Throws
// std::invalid_argument outside [stack_limits::min_size,
// stack_limits::max_size], std::logic_error once a default-size stack has
// been handed out (the pool's stacks all have one size). Never switches.
void set_default_stack_size(std::size_t bytes);

// default_stack_size() is the usable size of a stack_size-0 fiber's stack.
std::size_t default_stack_size() noexcept;

// set_stack_pool_limit() sets how many free default-size stacks each thread
// keeps with their memory committed (the rest give their pages back). A freed
// stack holds only the pages its fiber touched (often one, 4 KiB). Lowering
// the limit gives the calling thread's excess back at once (the oldest free
// stacks first), another thread's at its next stack release; so
// set_stack_pool_limit(0) after a burst returns its memory. Never switches.
void set_stack_pool_limit(std::size_t hot_stacks) noexcept;

// stack_stats() returns the calling thread's stack counters. Never switches.
stack_counters stack_stats() noexcept;

namespace detail {

// stack is one fiber stack: usable memory is [bottom, top).
struct stack {
  char* bottom = nullptr;  // lowest usable address (just above the guard page, if any)
  std::uint32_t size =
      0;  // usable bytes (at most stack_limits::max_size: 16 bytes in all, returned in registers)
  bool guarded = false;  // the page right below `bottom` faults (PROT_NONE or a guard marker)
  bool pooled = false;   // came from the default-size pool
  bool marker = false;   // the guard is a marker (no mapping, not counted against the budget)
  char* top() const noexcept { return bottom + size; }
};
static_assert(sizeof(stack) == 16, "a stack is returned in two registers");
static_assert(stack_limits::max_size + 4096 <= UINT32_MAX);

// stack_canary_bytes is the size of the canary region at the bottom of an
// unguarded stack. It must stay all-zero: zero lets the check read the
// kernel's shared zero page instead of committing a page per fiber.
inline constexpr std::size_t stack_canary_bytes = 64;

// allocate_stack() returns a stack of at least `size` usable bytes (0 = the
// default). Throws std::system_error if memory cannot be mapped. `size` must
// already be validated against stack_limits.
stack allocate_stack(std::size_t size);

// prefetch_next_stacks() starts fetching the tops of the pooled stacks the
// next fibers to start on this thread will get (the hub calls it when the
// fiber after the one it is resuming has never run). Never switches.
void prefetch_next_stacks() noexcept;

// release_stack() gives a stack back (to the pool or to the kernel). Under
// ASan a pooled stack stays poisoned until allocate_stack()'s caller hands it
// to a fiber (give_stack), so a dangling pointer into it is reported.
void release_stack(stack s) noexcept;  // by value: two registers, no store-forwarding stall

// set_guard_markers() turns guard markers off (or back on, if the kernel has
// them) for stacks carved from now on, process-wide: tests use it to reach the
// PROT_NONE budget and the canary that older kernels get. Never switches.
void set_guard_markers(bool on) noexcept;

// canary_intact() reports whether an unguarded stack's canary is untouched.
inline bool canary_intact(const char* bottom) noexcept {
  const auto* w = reinterpret_cast<const std::uint64_t*>(bottom);
  std::uint64_t acc = 0;
  for (std::size_t i = 0; i < stack_canary_bytes / sizeof(std::uint64_t); ++i) {
    acc |= w[i];
  }
  return acc == 0;
}

// overflow_inspector is called by the SIGSEGV handler (on the alternate
// signal stack) with the faulting address; if the address is in the guard page
// of the fiber running on this thread it writes that fiber's name into buf and
// returns true. Must be async-signal-safe.
using overflow_inspector = bool (*)(const void* fault_addr, char* buf, std::size_t len) noexcept;

// install_overflow_handler() sets up, once per thread, the alternate signal
// stack (64 KiB, unmapped when the thread ends; none if the thread already
// has one, e.g. ASan's) and (once per process) the SIGSEGV/SIGBUS handler
// that reports a guard-page hit using `inspect`. Faults that are not ours are passed on to the
// handler that was installed before (or the default action).
void install_overflow_handler(overflow_inspector inspect);

// report_overflow_and_abort() prints "cogent: stack overflow in fiber '<name>'"
// on stderr with write(2) (async-signal-safe) and aborts.
[[noreturn]] void report_overflow_and_abort(const char* name) noexcept;

}  // namespace detail
}  // namespace cogent

#pragma GCC visibility pop
