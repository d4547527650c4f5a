// tests/hub/refused_submit.hpp — fault injection for engine tests: liburing's io_uring_submit()
// refused with -EBUSY (what io_uring_enter reports under CQ-overflow or memory pressure).
//
// libcogent.so calls io_uring_submit through the PLT; the definition below, exported from the test
// executable (tests/meson.build links these with -Wl,--export-dynamic-symbol=io_uring_submit, or
// sanitizer builds would bind libcogent's calls to liburing itself), interposes it. Include it from
// exactly one file of the executable. g_refuse_submit: how many of the next calls to refuse;
// g_refused: how many were refused so far. submit_and_wait & co are untouched.
#pragma once

#include <dlfcn.h>

#include <atomic>
#include <cerrno>

struct io_uring;

namespace cogent::test {
inline std::atomic<int> g_refuse_submit{0};
inline std::atomic<int> g_refused{0};
}  // namespace cogent::test

extern "C" __attribute__((visibility("default"), used)) int io_uring_submit(struct io_uring* ring) {
  using fn_t = int (*)(struct io_uring*);
  static fn_t real = reinterpret_cast<fn_t>(::dlsym(RTLD_NEXT, "io_uring_submit"));
  if (cogent::test::g_refuse_submit.load() > 0) {
    cogent::test::g_refuse_submit.fetch_sub(1);
    cogent::test::g_refused.fetch_add(1);
    return -EBUSY;
  }
  return real(ring);
}
