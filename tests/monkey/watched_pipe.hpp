// tests/monkey/watched_pipe.hpp — an epoll instance watching a pipe, for the epoll hook tests.
#pragma once

#include <sys/epoll.h>
#include <unistd.h>

#include <cstdint>

#include <doctest/doctest.h>

namespace cogent::test {

// An epoll instance watching a pipe's read end (data.u64 = 42), with `flags` (EPOLLET, ...).
struct watched_pipe {
  int p[2] = {-1, -1};
  int ep = -1;
  explicit watched_pipe(std::uint32_t flags = 0) {
    REQUIRE(::pipe(p) == 0);
    ep = ::epoll_create1(EPOLL_CLOEXEC);
    REQUIRE(ep >= 0);
    epoll_event ev{};
    ev.events = EPOLLIN | flags;
    ev.data.u64 = 42;
    REQUIRE(::epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev) == 0);
  }
  ~watched_pipe() {
    if (ep >= 0) {
      ::close(ep);
    }
    ::close(p[0]);
    ::close(p[1]);
  }
};

}  // namespace cogent::test
