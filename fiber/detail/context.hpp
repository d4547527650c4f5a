// fiber/detail/context.hpp — the machine-context switch primitive cogent uses.
//
// Defines cogent::detail::{context, transfer, make_context, jump_context}: a
// thin, inlinable-by-LTO veneer over Boost.Context's fcontext. context.cpp is
// the only file in the project that includes <boost/context/...>; everything
// else sees these three declarations.
#pragma once
// Everything declared in cogent headers is exported from the library (built with -fvisibility=hidden).
#pragma GCC visibility push(default)

#include <cstddef>
#include <cstdint>

namespace cogent::detail {

// context is an opaque saved machine context (a stack pointer into a suspended stack).
using context = void*;

// transfer is what a jump delivers to the resumed side: the context of the side
// that jumped (to be saved so it can be resumed later) and a user pointer.
struct transfer {
  context from;
  void* data;
};

// make_context() prepares a context that, when first jumped to, runs entry(t)
// on the stack [stack_top - size, stack_top). `entry` must never return.
context make_context(void* stack_top, std::size_t size, void (*entry)(transfer)) noexcept;

}  // namespace cogent::detail

// jump_fcontext is Boost.Context's switch (libboost_context),
// declared here under its C symbol so the switch is one direct call from the
// fiber core — no wrapper frame (every extra frame is a mispredicted return
// after a switch). context.cpp checks that this matches Boost's declaration.
extern "C" cogent::detail::transfer jump_fcontext(void* const to, void* vp);

namespace cogent::detail {

// jump_context() suspends the caller and resumes `to`, delivering `data`.
// Returns when some other context jumps back to the caller.
//
// fcontext saves and restores MXCSR (and the x87 control word) per context.
// Loading an MXCSR that differs from the current one serializes the pipeline
// (~25 ns here), and the values differ as soon as one fiber has done an
// inexact floating-point operation: that sets the sticky precision flag in
// its MXCSR and in no other fiber's. So no saved MXCSR keeps a sticky flag:
// the fiber resumed by a jump clears them in the MXCSR the jumper just saved
// (scrub_fp_flags(t.from), a load and a test) — reading the live register
// with STMXCSR before the jump instead costs ~6 ns on AMD Zen, where the
// jump's own STMXCSR follows it (one per ~15 cycles). A jumper whose live
// flags are set still pays one serialization as its successor's clean MXCSR
// is loaded; the saved values stay equal. Each fiber keeps its own rounding
// and denormal modes; fetestexcept() flags do not survive a switch.
//
// The layout is fcontext's (jump_fcontext, x86_64 SysV): the context points
// at the saved frame, whose first 32 bits are the MXCSR, then the x87
// control word.
[[gnu::always_inline]] inline void scrub_fp_flags(void* saved) noexcept {
#if defined(__x86_64__)
  constexpr std::uint32_t mxcsr_flags = 0x3f;  // IE DE ZE OE UE PE
  auto* csr = static_cast<std::uint32_t*>(saved);
  if (*csr & mxcsr_flags) [[unlikely]] {
    *csr &= ~mxcsr_flags;
  }
#else
  (void)saved;
#endif
}
// clear_fp_flags() clears the live register's sticky flags (before
// make_fcontext, which copies the current MXCSR into the new context).
[[gnu::always_inline]] inline void clear_fp_flags() noexcept {
#if defined(__x86_64__)
  constexpr unsigned mxcsr_flags = 0x3f;
  unsigned csr = __builtin_ia32_stmxcsr();
  if (csr & mxcsr_flags) [[unlikely]] {
    __builtin_ia32_ldmxcsr(csr & ~mxcsr_flags);
  }
#endif
}

// eh_state mirrors the C++ runtime's per-thread exception state (Itanium C++
// ABI __cxa_eh_globals, libsupc++'s layout): the stack of exceptions being
// handled (what `throw;` and std::current_exception() see) and the count of
// exceptions in flight (std::uncaught_exceptions()). It belongs to a stack,
// not to a thread: a fiber that parks inside a catch block, or in a
// destructor run by unwinding, must find its own state when it resumes, and
// the fibers that run meanwhile must not see it (one popping another's
// caught exception frees it under the other's handler).
struct eh_state {
  void* caught;
  unsigned int uncaught;
#if defined(__ARM_EABI_UNWINDER__)
  void* propagating;
#endif
};
// t_eh_state is this thread's runtime exception state. init_eh_state() sets it;
// the fiber layer calls it when it first meets a thread (before any of the
// thread's fibers exists), so a switch reads it without a check.
extern thread_local constinit eh_state* t_eh_state __attribute__((tls_model("initial-exec")));
void init_eh_state() noexcept;
[[gnu::always_inline]] inline bool eh_empty(const eh_state& s) noexcept {
  return (reinterpret_cast<std::uintptr_t>(s.caught) | s.uncaught) == 0;
}

// eh_park() runs in a fiber about to switch away: it moves the thread's
// exception state, if there is any, into the fiber's `saved` (and sets
// `parked`) and leaves the thread's empty, so whichever fiber runs (or
// starts) next finds none of it. eh_unpark() runs when the fiber is resumed
// and puts its own back. So the thread's state is always the running
// fiber's. The common case (nothing caught, nothing unwinding) costs two
// loads before a switch and a flag test after; `saved` is touched only when
// there is something to park (it can live in a cold part of the fiber).
[[gnu::always_inline]] inline void eh_park(eh_state& saved, bool& parked) noexcept {
  eh_state* g = t_eh_state;
  if (!eh_empty(*g)) [[unlikely]] {
    saved = *g;
    *g = eh_state{};
    parked = true;
  }
}
[[gnu::always_inline]] inline void eh_unpark(eh_state& saved, bool& parked) noexcept {
  if (parked) [[unlikely]] {
    *t_eh_state = saved;  // fibers never change threads: still this thread's
    parked = false;
  }
}

// jump_context() suspends the caller and resumes `to`. The fiber layer wraps
// it in eh_park()/eh_unpark() (detail::jump_to). Always inline: an extra frame between a
// switch's caller and the jump costs a mispredicted return per switch
// (BENCHMARKS.md, "one return misprediction").
[[gnu::always_inline]] inline transfer jump_context(context to, void* data) noexcept {
  transfer t = ::jump_fcontext(to, data);
  scrub_fp_flags(t.from);
  return t;
}

}  // namespace cogent::detail

#pragma GCC visibility pop
