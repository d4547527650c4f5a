// net/address.cpp — parsing and formatting of IPv4/IPv6/Unix socket addresses.
#include "net/address.hpp"

#include <arpa/inet.h>
#include <net/if.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace cogent::net {
namespace {

[[noreturn]] void bad(const std::string& what) {
  throw std::invalid_argument("cogent::net: " + what);
}

// parse_port_text() reads a decimal port of at most 5 digits.
int parse_port_text(std::string_view s, std::string_view whole) {
  if (s.empty() || s.size() > 5) {
    bad("bad port in address '" + std::string(whole) + "'");
  }
  int v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') {
      bad("bad port in address '" + std::string(whole) + "'");
    }
    v = v * 10 + (c - '0');
  }
  return v;
}

}  // namespace

std::uint16_t check_port(int port) {
  if (port < 0 || port > 65535) {
    bad("port " + std::to_string(port) + " out of range 0..65535");
  }
  return static_cast<std::uint16_t>(port);
}

address::address() noexcept {
  std::memset(&_u, 0, sizeof _u);
}

address address::try_parse(std::string_view ip, int port) {
  std::uint16_t p = check_port(port);
  address a;
  if (ip.empty() || ip.size() >= INET6_ADDRSTRLEN + IF_NAMESIZE) {
    return a;
  }
  char text[INET6_ADDRSTRLEN + IF_NAMESIZE + 1];
  std::memcpy(text, ip.data(), ip.size());
  text[ip.size()] = '\0';
  if (std::memchr(text, '\0', ip.size()) != nullptr) {
    return a;
  }
  if (inet_pton(AF_INET, text, &a._u.v4.sin_addr) == 1) {
    a._u.v4.sin_family = AF_INET;
    a._u.v4.sin_port = htons(p);
    a._len = sizeof(sockaddr_in);
    a._family = address_family::ipv4;
    return a;
  }
  // IPv6, with an optional %scope (interface name or number).
  char* pct = std::strchr(text, '%');
  std::uint32_t scope = 0;
  if (pct != nullptr) {
    *pct = '\0';
    const char* zone = pct + 1;
    if (*zone == '\0') {
      return address();
    }
    // A number is digits only and fits in 32 bits (as glibc's
    // inet6_scopeid_pton: no sign, no blanks, no wrap-around); anything else
    // must name an interface.
    bool digits = true;
    std::uint64_t n = 0;
    for (const char* c = zone; *c != '\0' && digits; ++c) {
      digits = *c >= '0' && *c <= '9' && (n = n * 10 + static_cast<std::uint64_t>(*c - '0')) <= UINT32_MAX;
    }
    if (digits) {
      scope = static_cast<std::uint32_t>(n);
    } else {
      scope = if_nametoindex(zone);
      if (scope == 0) {
        return address();
      }
    }
  }
  if (inet_pton(AF_INET6, text, &a._u.v6.sin6_addr) == 1) {
    a._u.v6.sin6_family = AF_INET6;
    a._u.v6.sin6_port = htons(p);
    a._u.v6.sin6_scope_id = scope;
    a._len = sizeof(sockaddr_in6);
    a._family = address_family::ipv6;
    return a;
  }
  return address();
}

address address::parse(std::string_view ip, int port) {
  address a = try_parse(ip, port);
  if (a.empty()) {
    bad("'" + std::string(ip) + "' is not an IPv4 or IPv6 address literal");
  }
  return a;
}

address address::parse(std::string_view s) {
  if (!s.empty() && s.front() == '[') {
    std::size_t close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      bad("malformed address '" + std::string(s) + "' (want [ipv6]:port)");
    }
    return parse(s.substr(1, close - 1), parse_port_text(s.substr(close + 2), s));
  }
  std::size_t colon = s.rfind(':');
  if (colon == std::string_view::npos || s.find(':') != colon) {
    bad("malformed address '" + std::string(s) + "' (want ipv4:port or [ipv6]:port)");
  }
  return parse(s.substr(0, colon), parse_port_text(s.substr(colon + 1), s));
}

address address::ipv4_any(int port) {
  return parse("0.0.0.0", port);
}
address address::ipv4_loopback(int port) {
  return parse("127.0.0.1", port);
}
address address::ipv6_any(int port) {
  return parse("::", port);
}
address address::ipv6_loopback(int port) {
  return parse("::1", port);
}

address address::unix_path(std::string_view path) {
  address a;
  if (path.empty()) {
    bad("empty Unix socket path");
  }
  if (path.size() >= sizeof(a._u.un.sun_path)) {
    bad("Unix socket path too long (" + std::to_string(path.size()) + " bytes, max " +
        std::to_string(sizeof(a._u.un.sun_path) - 1) + ")");
  }
  if (path.find('\0') != std::string_view::npos) {
    bad("Unix socket path contains a NUL byte");
  }
  a._u.un.sun_family = AF_UNIX;
  std::memcpy(a._u.un.sun_path, path.data(), path.size());
  a._len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  a._family = address_family::unix_domain;
  return a;
}

address address::unix_abstract(std::string_view name) {
  address a;
  if (name.size() + 1 > sizeof(a._u.un.sun_path)) {
    bad("abstract Unix socket name too long");
  }
  a._u.un.sun_family = AF_UNIX;
  a._u.un.sun_path[0] = '\0';
  std::memcpy(a._u.un.sun_path + 1, name.data(), name.size());
  a._len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  a._family = address_family::unix_domain;
  return a;
}

address address::from_sockaddr(const sockaddr* sa, socklen_t len) {
  address a;
  if (sa == nullptr || len < static_cast<socklen_t>(sizeof(sa_family_t))) {
    bad("from_sockaddr: null or truncated sockaddr");
  }
  switch (sa->sa_family) {
    case AF_INET:
      if (len < static_cast<socklen_t>(sizeof(sockaddr_in))) {
        bad("from_sockaddr: truncated sockaddr_in");
      }
      std::memcpy(&a._u.v4, sa, sizeof(sockaddr_in));
      a._len = sizeof(sockaddr_in);
      a._family = address_family::ipv4;
      return a;
    case AF_INET6:
      if (len < static_cast<socklen_t>(sizeof(sockaddr_in6))) {
        bad("from_sockaddr: truncated sockaddr_in6");
      }
      std::memcpy(&a._u.v6, sa, sizeof(sockaddr_in6));
      a._len = sizeof(sockaddr_in6);
      a._family = address_family::ipv6;
      return a;
    case AF_UNIX:
      // A name that fills all of sun_path has no NUL, and the kernel reports
      // its length as one more than sockaddr_un (unix(7)): it is those 108
      // bytes.
      len = std::min(len, static_cast<socklen_t>(sizeof(sockaddr_un)));
      std::memcpy(&a._u.un, sa, len);
      a._len = len;
      a._family = address_family::unix_domain;
      return a;
    default:
      bad("from_sockaddr: unsupported address family " + std::to_string(sa->sa_family));
  }
}

bool address::is_abstract() const noexcept {
  return _family == address_family::unix_domain && _len > offsetof(sockaddr_un, sun_path) &&
         _u.un.sun_path[0] == '\0';
}

bool address::is_loopback() const noexcept {
  if (_family == address_family::ipv4) {
    return (ntohl(_u.v4.sin_addr.s_addr) >> 24) == 127;
  }
  if (_family == address_family::ipv6) {
    const in6_addr& a = _u.v6.sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(&a)) {
      return true;
    }
    return IN6_IS_ADDR_V4MAPPED(&a) && a.s6_addr[12] == 127;
  }
  return false;
}

std::uint16_t address::port() const noexcept {
  if (_family == address_family::ipv4) {
    return ntohs(_u.v4.sin_port);
  }
  if (_family == address_family::ipv6) {
    return ntohs(_u.v6.sin6_port);
  }
  return 0;
}

address address::with_port(int port) const {
  std::uint16_t p = check_port(port);
  address a = *this;
  if (_family == address_family::ipv4) {
    a._u.v4.sin_port = htons(p);
  } else if (_family == address_family::ipv6) {
    a._u.v6.sin6_port = htons(p);
  } else {
    bad("with_port on a non-IP address '" + to_string() + "'");
  }
  return a;
}

int address::os_family() const noexcept {
  switch (_family) {
    case address_family::ipv4:
      return AF_INET;
    case address_family::ipv6:
      return AF_INET6;
    case address_family::unix_domain:
      return AF_UNIX;
    default:
      return AF_UNSPEC;
  }
}

std::string address::host() const {
  char buf[INET6_ADDRSTRLEN + 16];
  switch (_family) {
    case address_family::ipv4:
      inet_ntop(AF_INET, &_u.v4.sin_addr, buf, sizeof buf);
      return buf;
    case address_family::ipv6: {
      inet_ntop(AF_INET6, &_u.v6.sin6_addr, buf, sizeof buf);
      std::string s = buf;
      if (_u.v6.sin6_scope_id != 0) {
        s += '%';
        s += std::to_string(_u.v6.sin6_scope_id);
      }
      return s;
    }
    case address_family::unix_domain: {
      std::size_t n = _len > offsetof(sockaddr_un, sun_path) ? _len - offsetof(sockaddr_un, sun_path) : 0;
      if (n == 0) {
        return "";  // unnamed (e.g. the peer of a connected client)
      }
      if (_u.un.sun_path[0] == '\0') {
        std::string s(1, '@');
        s.append(_u.un.sun_path + 1, n - 1);
        return s;
      }
      return std::string(_u.un.sun_path, strnlen(_u.un.sun_path, n));
    }
    default:
      return "";
  }
}

std::string address::to_string() const {
  switch (_family) {
    case address_family::ipv4: {
      std::string s = host();
      s += ':';
      s += std::to_string(port());
      return s;
    }
    case address_family::ipv6: {
      std::string s(1, '[');
      s += host();
      s += "]:";
      s += std::to_string(port());
      return s;
    }
    default:
      return host();
  }
}

bool operator==(const address& a, const address& b) noexcept {
  if (a._family != b._family || a._len != b._len) {
    return false;
  }
  switch (a._family) {
    case address_family::ipv4:
      return a._u.v4.sin_port == b._u.v4.sin_port && a._u.v4.sin_addr.s_addr == b._u.v4.sin_addr.s_addr;
    case address_family::ipv6:
      return a._u.v6.sin6_port == b._u.v6.sin6_port && a._u.v6.sin6_scope_id == b._u.v6.sin6_scope_id &&
             std::memcmp(&a._u.v6.sin6_addr, &b._u.v6.sin6_addr, sizeof(in6_addr)) == 0;
    case address_family::unix_domain:
      return std::memcmp(a._u.un.sun_path, b._u.un.sun_path, a._len - offsetof(sockaddr_un, sun_path)) == 0;
    default:
      return true;
  }
}

}  // namespace cogent::net
