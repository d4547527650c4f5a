// fiber/detail/context.cpp — the one translation unit that includes Boost.Context.
//
// We use fcontext (make_fcontext / jump_fcontext), the assembly primitive under
// boost::context::fiber, directly: cogent's fiber keeps its own bookkeeping
// (parent chain, values, stacks), so the extra layer would only add cost.
#include "fiber/detail/context.hpp"

#include <cxxabi.h>

#include <boost/context/detail/fcontext.hpp>

namespace cogent::detail {

constinit thread_local eh_state* t_eh_state __attribute__((tls_model("initial-exec"))) = nullptr;

void init_eh_state() noexcept {
  t_eh_state = reinterpret_cast<eh_state*>(abi::__cxa_get_globals());
}

namespace bcd = boost::context::detail;

context make_context(void* stack_top, std::size_t size, void (*entry)(transfer)) noexcept {
  // transfer and bcd::transfer_t have the same layout; entry's signature is
  // converted through a trampoline-free cast that the static_asserts justify.
  static_assert(sizeof(transfer) == sizeof(bcd::transfer_t));
  static_assert(offsetof(transfer, data) == offsetof(bcd::transfer_t, data));
  clear_fp_flags();  // make_fcontext copies the current MXCSR: a new fiber starts with clean flags
  return bcd::make_fcontext(stack_top, size,
                            reinterpret_cast<void (*)(bcd::transfer_t)>(reinterpret_cast<void (*)()>(entry)));
}

// The declaration in context.hpp must denote the same function as Boost's.
static_assert(sizeof(bcd::fcontext_t) == sizeof(context));
[[maybe_unused]] static constexpr bcd::transfer_t (*boost_jump)(bcd::fcontext_t, void*) = &bcd::jump_fcontext;

}  // namespace cogent::detail
