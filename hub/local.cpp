// hub/local.cpp — per-fiber storage behind fiber_local<T>.
#include "hub/local.hpp"

#include <atomic>
#include <vector>

#include "fiber/detail/fiber_impl.hpp"

namespace cogent::detail {
namespace {

std::atomic<std::uint64_t> g_local_ids{1};

struct local_entry {
  std::uint64_t id;
  void* value;
  local_deleter del;
};

// local_storage is one fiber's values; it hangs off fiber_impl::sched.locals.
struct local_storage {
  std::vector<local_entry> entries;
};

// free_storage() is fiber_locals_hook: it runs once the fiber has finished
// (fiber/: resumed_slow) or from ~fiber_impl. Values are
// destroyed newest first; one whose destructor touches a fiber_local gets the
// current fiber's value, never this (dying) storage.
void free_storage(void* p) noexcept {
  auto* s = static_cast<local_storage*>(p);
  std::vector<local_entry> entries = std::move(s->entries);
  delete s;
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
    it->del(it->value);
  }
}

local_storage* storage_of_current(bool create) {
  fiber_impl* f = current_impl();
  if (f->sched.locals.storage == nullptr && create) {
    fiber_locals_hook = &free_storage;
    f->sched.locals.storage = new local_storage;
  }
  return static_cast<local_storage*>(f->sched.locals.storage);
}

}  // namespace

std::uint64_t new_local_id() noexcept {
  return g_local_ids.fetch_add(1, std::memory_order_relaxed);
}

void* find_local(std::uint64_t id) noexcept {
  local_storage* s = static_cast<local_storage*>(current_impl()->sched.locals.storage);
  if (s == nullptr) {
    return nullptr;
  }
  for (const local_entry& e : s->entries) {
    if (e.id == id) {
      return e.value;
    }
  }
  return nullptr;
}

void add_local(std::uint64_t id, void* value, local_deleter del) {
  try {
    storage_of_current(true)->entries.push_back(local_entry{id, value, del});
  } catch (...) {
    del(value);
    throw;
  }
}

void* remove_local(std::uint64_t id) noexcept {
  local_storage* s = storage_of_current(false);
  if (s == nullptr) {
    return nullptr;
  }
  for (auto it = s->entries.begin(); it != s->entries.end(); ++it) {
    if (it->id == id) {
      void* v = it->value;
      s->entries.erase(it);
      return v;
    }
  }
  return nullptr;
}

}  // namespace cogent::detail
