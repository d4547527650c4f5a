// fiber/detail/block_cache.hpp — a per-thread cache of small heap blocks for
// fiber and task control blocks.
//
// Defines cogent::detail::cached_alloc / cached_free and
// cogent::detail::cached_allocator<T> (for std::allocate_shared). Private to cogent.
//
// Why: a burst of 100k tasks allocates 200k small blocks and frees them all
// soon after. Through malloc that is chunk coalescing on every free and, once
// the heap top is trimmed, a page fault per 4 KiB on the next burst — about
// half the cost of a spawn+join (BENCHMARKS.md). Here a freed block goes on a
// per-thread free list of its size class (64-byte steps up to 1 KiB) and the
// next allocation of that class takes it back: no coalescing, no trimming, and
// the block most recently freed (still in cache) is reused first.
//
// Rules:
//  - cached_free(p, bytes) must be given the same `bytes` as cached_alloc.
//    Any thread may free a block (it joins that thread's cache).
//  - A thread keeps at most max_cached_bytes; the rest go back to malloc, as
//    does everything when the thread exits.
//  - Under AddressSanitizer the cache is bypassed (plain new/delete), so a
//    use after free of a control block is still reported.
#pragma once
#pragma GCC visibility push(default)

#include <cstddef>
#include <new>

namespace cogent::detail {

inline constexpr std::size_t block_cache_step = 64;
inline constexpr std::size_t block_cache_max_block = 1024;  // larger blocks go straight to malloc
inline constexpr std::size_t max_cached_bytes = 64 << 20;   // per thread

// cached_alloc() returns `bytes` of storage aligned for any fundamental type.
// Throws std::bad_alloc.
void* cached_alloc(std::size_t bytes);
// cached_free() gives a block from cached_alloc(bytes) back.
void cached_free(void* p, std::size_t bytes) noexcept;

// cached_allocator is a standard allocator over the cache (std::allocate_shared).
template <class T>
struct cached_allocator {
  using value_type = T;
  cached_allocator() = default;
  template <class U>
  cached_allocator(const cached_allocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(cached_alloc(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { cached_free(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const cached_allocator<U>&) const noexcept {
    return true;
  }
};

}  // namespace cogent::detail

#pragma GCC visibility pop
