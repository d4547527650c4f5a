// tests/hub/engine_support.hpp — helpers for tests that drive a cogent::detail::engine directly:
// counted_op (an op that counts its deliveries, to prove "exactly once") and drive() (run the
// engine until a condition holds or a budget runs out).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

#include "hub/detail/engine.hpp"

namespace cogent::test {

struct counted_op : cogent::detail::io_op {
  int deliveries = 0;
  counted_op() {
    on_complete = [](cogent::detail::io_op* op) { ++static_cast<counted_op*>(op)->deliveries; };
  }
  // recv() makes this a recv of up to `n` bytes from `from_fd` into `into`.
  counted_op& recv(int from_fd, char* into, std::size_t n) {
    code = cogent::detail::op_code::recv;
    fd = from_fd;
    buf = into;
    len = static_cast<std::uint32_t>(n);
    return *this;
  }
};

// drive() waits on the engine (up to 100 ms at a time) until pred() holds; false if `budget`
// ran out first.
template <class Pred>
bool drive(cogent::detail::engine& e, Pred pred, std::chrono::milliseconds budget = std::chrono::seconds(3)) {
  using clock = cogent::detail::clock;
  auto end = clock::now() + budget;
  while (!pred()) {
    if (clock::now() >= end) {
      return false;
    }
    e.wait(clock::now() + std::chrono::milliseconds(100));
  }
  return true;
}

}  // namespace cogent::test
