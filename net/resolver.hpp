// net/resolver.hpp — name resolution off the hub thread, and create_connection().
//
// Defines cogent::net::resolve() (getaddrinfo run on a worker thread through
// cogent::run_in_thread, so the hub keeps serving other fibers meanwhile),
// cogent::net::resolve_options, cogent::net::resolver_category() (the
// std::error_category of getaddrinfo's EAI_* codes) and
// cogent::net::create_connection() (resolve, then try each address in turn).
//
// A host that is already a numeric IP literal is parsed in place: no thread,
// no switch. A resolution cannot be cancelled once a worker runs it, but the
// caller does not wait for it: a kill or Timeout is raised at once, and the
// worker's result is dropped when it comes (threadpool::run_detachable).
//
// Example:
//   auto addrs = cogent::net::resolve("localhost", 80);          // [127.0.0.1:80, [::1]:80]
//   auto sock = cogent::net::create_connection("example.com", 80, std::chrono::seconds(5));
#pragma once
// Everything declared in cogent headers is exported from the library (built with -fvisibility=hidden).
#pragma GCC visibility push(default)

#include <string_view>
#include <system_error>
#include <vector>

#include "hub/core.hpp"
#include "net/address.hpp"
#include "net/socket.hpp"

namespace cogent::net {

// resolve_options narrows resolve().
struct resolve_options {
  // family restricts the result to ipv4 or ipv6; none = both.
  address_family family = address_family::none;
  // passive asks for wildcard addresses when host is empty (for bind).
  bool passive = false;
};

// resolver_category() is the error category of getaddrinfo's EAI_* codes
// (message() is gai_strerror). EAI_SYSTEM is reported as the errno instead.
const std::error_category& resolver_category() noexcept;

// resolve() returns the addresses of `host` with `port`, in getaddrinfo's
// order, without duplicates. Numeric literals never leave the thread; names
// are resolved by getaddrinfo on a worker thread (threadpool::run_detachable
// on the default pool: a kill or Timeout is raised at once, even while the
// lookup hangs; the lookup then finishes on its worker and is dropped). Raises
// std::invalid_argument for a port outside 0..65535, an empty host (without
// passive) or one containing a NUL byte, std::system_error in resolver_category() (EAI_NONAME, EAI_AGAIN,
// ...) when resolution fails. May switch.
std::vector<address> resolve(std::string_view host, int port, const resolve_options& opts = {});

// create_connection() resolves `host` and connects to each address in turn
// until one accepts, returning the connected socket (TCP_NODELAY not set).
// `t` bounds each connect attempt (not the resolution); the returned socket's
// default timeout is left unset. Raises what resolve() raises, or the
// std::system_error of the last failed attempt (ECONNREFUSED, ETIMEDOUT, ...).
// May switch.
stream_socket create_connection(std::string_view host, int port, timeout_duration t = std::nullopt);

}  // namespace cogent::net

#pragma GCC visibility pop
