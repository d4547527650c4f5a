// tests/net/net_support.hpp — small helpers shared by the net/ test suites.
#pragma once

#include <dirent.h>

#include <system_error>
#include <utility>

namespace cogent::test {

// open_fds() counts this process's open descriptors (-1 if /proc is unreadable).
inline int open_fds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) {
    return -1;
  }
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') {
      ++n;
    }
  }
  ::closedir(d);
  return n - 1;  // the DIR's own fd
}

// errno_of() runs fn and returns the errno of the std::system_error it raised (0 if none).
template <class Fn>
int errno_of(Fn&& fn) {
  try {
    std::forward<Fn>(fn)();
  } catch (const std::system_error& e) {
    return e.code().value();
  }
  return 0;
}

}  // namespace cogent::test
