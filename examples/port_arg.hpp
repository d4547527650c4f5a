// examples/port_arg.hpp — the servers' one optional argument: the port to listen on.
#pragma once

#include <cstdio>
#include <cstdlib>

// port_arg() returns the port given as argv[1] (0, the default, lets the kernel
// pick a free one), or -1 after printing the usage line if it is not a port.
inline int port_arg(int argc, char** argv) {
  if (argc < 2) {
    return 0;
  }
  char* end = nullptr;
  long v = std::strtol(argv[1], &end, 10);
  if (end == argv[1] || *end != '\0' || v < 0 || v > 65535) {
    std::fprintf(stderr, "usage: %s [port]   (0 or absent = a free port)\n", argv[0]);
    return -1;
  }
  return static_cast<int>(v);
}
