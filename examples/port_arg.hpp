// examples/port_arg.hpp — parsing the examples' port argument.
#pragma once

#include <cstdio>
#include <cstdlib>

// parse_port() returns the port spelled by `s` (0..65535, digits only), or -1.
inline int parse_port(const char* s) {
  char* end = nullptr;
  long v = std::strtol(s, &end, 10);
  if (end == s || *end != '\0' || v < 0 || v > 65535) {
    return -1;
  }
  return static_cast<int>(v);
}

// port_arg() returns the port given as argv[1] (0, the default, lets the kernel
// pick a free one), or -1 after printing the usage line if it is not a port.
inline int port_arg(int argc, char** argv) {
  if (argc < 2) {
    return 0;
  }
  int port = parse_port(argv[1]);
  if (port < 0) {
    std::fprintf(stderr, "usage: %s [port]   (0 or absent = a free port)\n", argv[0]);
  }
  return port;
}
