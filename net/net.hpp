// net/net.hpp — umbrella header for cogent's cooperative networking.
//
// Defines nothing itself; includes net/address.hpp (address), net/socket.hpp
// (stream_socket/tcp_socket/unix_socket, listener/tcp_listener, udp_socket),
// net/resolver.hpp (resolve, create_connection), net/server.hpp
// (stream_server, wait_for_signal) and net/reader.hpp (buffered_reader:
// read_line).
//
// Example:
//   #include "net/net.hpp"
//   auto s = cogent::net::create_connection("localhost", 7000, std::chrono::seconds(1));
//   s.write_all("hello\n");
#pragma once
// Everything declared in cogent headers is exported from the library (built with -fvisibility=hidden).
#pragma GCC visibility push(default)

#include "net/address.hpp"
#include "net/reader.hpp"
#include "net/resolver.hpp"
#include "net/server.hpp"
#include "net/socket.hpp"

#pragma GCC visibility pop
