// net/resolver.cpp — getaddrinfo on a worker thread; create_connection.
#include "net/resolver.hpp"

#include <netdb.h>

#include <algorithm>
#include <cerrno>
#include <stdexcept>
#include <string>

#include "hub/threadpool.hpp"

namespace cogent::net {
namespace {

class gai_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "getaddrinfo"; }
  std::string message(int code) const override { return ::gai_strerror(code); }
};

}  // namespace

const std::error_category& resolver_category() noexcept {
  static const gai_category_impl cat;
  return cat;
}

std::vector<address> resolve(std::string_view host, int port, const resolve_options& opts) {
  check_port(port);
  if (host.find('\0') != std::string_view::npos) {
    // getaddrinfo() would see only the part before it ("127.0.0.1\0.evil.example").
    throw std::invalid_argument("cogent::net: resolve: host name contains a NUL byte");
  }
  // Fast path: a numeric literal needs no resolver and no thread.
  if (!host.empty()) {
    std::string_view h = host;
    if (h.size() > 2 && h.front() == '[' && h.back() == ']') {
      h = h.substr(1, h.size() - 2);
    }
    address a = address::try_parse(h, port);
    if (!a.empty()) {
      if (opts.family != address_family::none && a.family() != opts.family) {
        throw std::system_error(EAI_ADDRFAMILY, resolver_category(),
                                "cogent::net: resolve '" + std::string(host) + "'");
      }
      return {a};
    }
  } else if (!opts.passive) {
    throw std::invalid_argument("cogent::net: resolve: empty host name");
  }

  std::string name(host);
  std::string service = std::to_string(port);
  addrinfo hints{};
  hints.ai_family = opts.family == address_family::ipv4   ? AF_INET
                    : opts.family == address_family::ipv6 ? AF_INET6
                                                          : AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (opts.passive ? AI_PASSIVE : 0);
  struct outcome {
    int rc = 0;
    int err = 0;
    std::vector<address> addrs;
  };
  // Detachable: the lookup owns copies of its inputs, so a kill or Timeout of
  // the caller is raised at once even if the resolver hangs (the lookup then
  // finishes on its worker and is dropped).
  outcome out = default_threadpool().run_detachable([name, service, hints]() {
    outcome o;
    addrinfo* res = nullptr;
    o.rc = ::getaddrinfo(name.empty() ? nullptr : name.c_str(), service.c_str(), &hints, &res);
    o.err = errno;
    if (o.rc == 0) {
      for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) {
          continue;
        }
        address a = address::from_sockaddr(ai->ai_addr, ai->ai_addrlen);
        if (std::find(o.addrs.begin(), o.addrs.end(), a) == o.addrs.end()) {
          o.addrs.push_back(a);
        }
      }
      ::freeaddrinfo(res);
    }
    return o;
  });
  if (out.rc == EAI_SYSTEM) {
    throw std::system_error(out.err, std::generic_category(), "cogent::net: resolve '" + name + "'");
  }
  if (out.rc != 0) {
    throw std::system_error(out.rc, resolver_category(), "cogent::net: resolve '" + name + "'");
  }
  if (out.addrs.empty()) {
    throw std::system_error(EAI_NONAME, resolver_category(), "cogent::net: resolve '" + name + "'");
  }
  return out.addrs;
}

stream_socket create_connection(std::string_view host, int port, timeout_duration t) {
  std::vector<address> addrs = resolve(host, port);
  std::exception_ptr last;
  for (const address& a : addrs) {
    try {
      return stream_socket::connect(a, t);
    } catch (const std::system_error&) {
      last = std::current_exception();
    }
  }
  std::rethrow_exception(last);
}

}  // namespace cogent::net
