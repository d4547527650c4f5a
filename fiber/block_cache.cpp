// fiber/block_cache.cpp — the per-thread small-block cache (fiber/detail/block_cache.hpp).
#include "fiber/detail/block_cache.hpp"

namespace cogent::detail {
namespace {

#if !defined(__SANITIZE_ADDRESS__)

constexpr std::size_t class_count = block_cache_max_block / block_cache_step;

struct free_block {
  free_block* next;
};

struct block_cache {
  free_block* heads[class_count] = {};
  std::size_t bytes = 0;  // cached, all classes

  ~block_cache() {
    for (std::size_t c = 0; c < class_count; ++c) {
      while (free_block* b = heads[c]) {
        heads[c] = b->next;
        ::operator delete(b, (c + 1) * block_cache_step);
      }
    }
  }
};

// Reached through a plain initial-exec pointer (no TLS wrapper call); the
// owner with the destructor is touched only when the cache is created.
thread_local __attribute__((tls_model("initial-exec"))) block_cache* t_cache = nullptr;
thread_local __attribute__((tls_model("initial-exec"))) bool t_cache_dead = false;
struct cache_owner {
  block_cache* cache = nullptr;
  ~cache_owner() {
    t_cache_dead = true;
    t_cache = nullptr;
    delete cache;
  }
};
thread_local cache_owner t_cache_owner;

[[gnu::noinline]] block_cache* make_cache() {
  if (t_cache_dead) {
    return nullptr;  // thread exit: blocks go straight to malloc
  }
  t_cache_owner.cache = t_cache = new block_cache;
  return t_cache;
}

inline std::size_t class_of(std::size_t bytes) noexcept {
  return (bytes + block_cache_step - 1) / block_cache_step - 1;
}

#endif

}  // namespace

void* cached_alloc(std::size_t bytes) {
#if !defined(__SANITIZE_ADDRESS__)
  if (bytes != 0 && bytes <= block_cache_max_block) {
    std::size_t c = class_of(bytes);
    block_cache* cache = t_cache;
    if (cache != nullptr) [[likely]] {
      if (free_block* b = cache->heads[c]) {
        cache->heads[c] = b->next;
        // Start fetching the next free block now, so the next pop does not
        // stall on its link.
        __builtin_prefetch(b->next, 1);
        cache->bytes -= (c + 1) * block_cache_step;
        return b;
      }
    }
    return ::operator new((c + 1) * block_cache_step);
  }
#endif
  return ::operator new(bytes);
}

void cached_free(void* p, std::size_t bytes) noexcept {
  if (p == nullptr) {
    return;
  }
#if !defined(__SANITIZE_ADDRESS__)
  if (bytes != 0 && bytes <= block_cache_max_block) {
    std::size_t c = class_of(bytes);
    std::size_t size = (c + 1) * block_cache_step;
    block_cache* cache = t_cache != nullptr ? t_cache : make_cache();
    if (cache != nullptr && cache->bytes + size <= max_cached_bytes) {
      auto* b = static_cast<free_block*>(p);
      b->next = cache->heads[c];
      cache->heads[c] = b;
      cache->bytes += size;
      return;
    }
    ::operator delete(p, size);
    return;
  }
#endif
  ::operator delete(p, bytes);
}

}  // namespace cogent::detail
