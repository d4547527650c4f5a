// net/address.hpp — socket addresses: IPv4, IPv6 and Unix-domain.
//
// Defines cogent::net::address (a value type wrapping a sockaddr of any of the
// three families) and cogent::net::address_family.
//
// Addresses are plain values: parsing and formatting never switch and never
// touch the network (name resolution lives in net/resolver.hpp). Ports are
// checked: anything outside 0..65535 throws std::invalid_argument, as does a
// string that is not a numeric address literal.
//
// Example:
//   auto a = cogent::net::address::parse("127.0.0.1", 8080);
//   auto b = cogent::net::address::parse("[::1]:80");
//   auto c = cogent::net::address::unix_path("/tmp/app.sock");
//   auto d = cogent::net::address::unix_abstract("app");   // Linux abstract namespace
//   a.to_string();   // "127.0.0.1:8080"
//   b.to_string();   // "[::1]:80"
//   d.to_string();   // "@app"
#pragma once
// Everything declared in cogent headers is exported from the library (built with -fvisibility=hidden).
#pragma GCC visibility push(default)

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace cogent::net {

// address_family names what an address holds.
enum class address_family : std::uint8_t {
  none,  // a default-constructed, empty address
  ipv4,
  ipv6,
  unix_domain,  // a filesystem path or (Linux) an abstract name
};

// address is a socket address value (IPv4 + port, IPv6 + port + scope, or a
// Unix-domain path). Copyable, comparable, never allocates.
class address {
 public:
  // address() constructs an empty address (family() == none).
  address() noexcept;

  // parse() reads a numeric IP literal ("1.2.3.4", "::1", "fe80::1%eth0") and
  // a port. Throws std::invalid_argument if `ip` is not an IPv4/IPv6 literal
  // or `port` is outside 0..65535. Never switches.
  static address parse(std::string_view ip, int port);

  // parse() reads "host:port" with a numeric host: "1.2.3.4:80", "[::1]:80".
  // Throws std::invalid_argument on a malformed string or port. Never switches.
  static address parse(std::string_view ip_and_port);

  // try_parse() is parse(ip, port) returning an empty address instead of
  // throwing when `ip` is not a literal (a bad port still throws).
  static address try_parse(std::string_view ip, int port);

  // ipv4_any()/ipv4_loopback()/ipv6_any()/ipv6_loopback() build the wildcard
  // and loopback addresses with `port`. Throw std::invalid_argument for a port
  // outside 0..65535.
  static address ipv4_any(int port = 0);
  static address ipv4_loopback(int port = 0);
  static address ipv6_any(int port = 0);
  static address ipv6_loopback(int port = 0);

  // unix_path() builds a Unix-domain address for a filesystem path. Throws
  // std::invalid_argument if the path is empty or longer than sun_path allows.
  static address unix_path(std::string_view path);

  // unix_abstract() builds a Linux abstract-namespace Unix address (no file;
  // `name` excludes the leading NUL). Throws std::invalid_argument if too long.
  static address unix_abstract(std::string_view name);

  // from_sockaddr() copies a kernel sockaddr (as returned by accept,
  // getsockname, recvfrom). Throws std::invalid_argument for an unsupported
  // family or a truncated IPv4/IPv6 address. A Unix name longer than
  // sockaddr_un (a path filling all of sun_path, reported with one more byte)
  // is kept as its sizeof(sockaddr_un) bytes.
  static address from_sockaddr(const sockaddr* sa, socklen_t len);

  // family() says which kind of address this is.
  address_family family() const noexcept { return _family; }
  bool is_ipv4() const noexcept { return _family == address_family::ipv4; }
  bool is_ipv6() const noexcept { return _family == address_family::ipv6; }
  bool is_unix() const noexcept { return _family == address_family::unix_domain; }
  bool empty() const noexcept { return _family == address_family::none; }
  // is_abstract() is true for an abstract-namespace Unix address.
  bool is_abstract() const noexcept;
  // is_loopback() is true for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104.
  bool is_loopback() const noexcept;

  // port() returns the port (0 for Unix and empty addresses).
  std::uint16_t port() const noexcept;
  // with_port() returns a copy with another port. Throws std::invalid_argument
  // for a port outside 0..65535 or for a non-IP address.
  address with_port(int port) const;

  // host() formats the IP part ("1.2.3.4", "::1", "fe80::1%2") or the Unix path
  // ("@name" for abstract).
  std::string host() const;
  // to_string() formats the address: "1.2.3.4:80", "[::1]:80", "/path",
  // "@abstract", "" for an empty address.
  std::string to_string() const;

  // sockaddr_ptr()/sockaddr_len() give the kernel view, for bind/connect.
  const sockaddr* sockaddr_ptr() const noexcept { return &_u.sa; }
  socklen_t sockaddr_len() const noexcept { return _len; }
  // os_family() is AF_INET, AF_INET6, AF_UNIX, or AF_UNSPEC.
  int os_family() const noexcept;

  friend bool operator==(const address& a, const address& b) noexcept;
  friend bool operator!=(const address& a, const address& b) noexcept { return !(a == b); }

 private:
  union storage {
    sockaddr sa;
    sockaddr_in v4;
    sockaddr_in6 v6;
    sockaddr_un un;
  };
  storage _u;
  socklen_t _len = 0;
  address_family _family = address_family::none;
};

// operator==() compares family, address, port (and scope) or Unix path.
bool operator==(const address& a, const address& b) noexcept;

// check_port() returns `port` as a uint16_t or throws std::invalid_argument
// ("port 70000 out of range 0..65535"). Never switches.
std::uint16_t check_port(int port);

}  // namespace cogent::net

#pragma GCC visibility pop
