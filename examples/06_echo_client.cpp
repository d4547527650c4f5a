// examples/06_echo_client.cpp — many echo clients in one thread, one task each.
//
// What it shows: the client side of cogent::net. N tasks on one thread each
// connect to an echo server and ping-pong a 64-byte message as fast as it
// comes back; every read parks only its own fiber. At the end it prints the
// round trips per second, total and per connection.
//
// How to run it (against example 05, or any echo server):
//   build/examples/05_echo_server 7000 &
//   build/examples/06_echo_client 7000 [conns=100] [seconds=5]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "hub/core.hpp"
#include "hub/task.hpp"
#include "examples/port_arg.hpp"
#include "net/net.hpp"

int main(int argc, char** argv) {
  // Arguments: port, then optional connection count and duration.
  int port = argc > 1 ? parse_port(argv[1]) : -1;
  char* end = nullptr;
  long n = argc > 2 ? std::strtol(argv[2], &end, 10) : 100;
  bool conns_ok = argc <= 2 || (*end == '\0' && n > 0 && n <= 1'000'000);
  int conns = static_cast<int>(n);
  double seconds = argc > 3 ? std::strtod(argv[3], &end) : 5.0;
  bool seconds_ok = argc <= 3 || (*end == '\0' && seconds > 0);
  if (port <= 0 || !conns_ok || !seconds_ok || argc > 4) {
    std::fprintf(stderr, "usage: %s <port 1-65535> [conns=100, 1..1000000] [seconds=5, > 0]\n", argv[0]);
    return 2;
  }
  // Many connections need many descriptors: raise the soft limit to the hard one.
  cogent::net::raise_fd_limit();
  auto target = cogent::net::address::ipv4_loopback(port);
  auto deadline = cogent::clock::now() +
                  std::chrono::duration_cast<cogent::clock::duration>(std::chrono::duration<double>(seconds));

  // One task per connection: connect, then write a message and read the echo
  // back until the deadline. The code reads like a blocking client.
  std::vector<unsigned long long> counts(static_cast<std::size_t>(conns), 0);
  int failed = 0;
  std::vector<cogent::task<void>> clients;
  for (int i = 0; i < conns; ++i) {
    clients.push_back(cogent::spawn([&, i] {
      try {
        auto s = cogent::net::stream_socket::connect(target, std::chrono::seconds(5));
        s.set_nodelay(true);
        char msg[64];
        std::memset(msg, 'a' + i % 26, sizeof msg);
        char back[64];
        while (cogent::clock::now() < deadline) {
          s.write_all(msg, sizeof msg);
          s.read_exactly(back, sizeof back, std::chrono::seconds(5));
          ++counts[static_cast<std::size_t>(i)];
        }
      } catch (const std::exception& e) {
        if (failed++ == 0) {
          std::fprintf(stderr, "06_echo_client: connection %d: %s\n", i, e.what());
        }
      }
    }));
  }

  // Wait for every client, then report.
  auto t0 = cogent::clock::now();
  cogent::joinall(clients);
  double took = std::chrono::duration<double>(cogent::clock::now() - t0).count();
  unsigned long long total = 0;
  for (auto c : counts) {
    total += c;
  }
  std::printf("%d connections, %llu round trips in %.2f s: %.0f round trips/s (%.0f per connection)%s\n",
              conns, total, took, static_cast<double>(total) / took,
              static_cast<double>(total) / took / conns, failed > 0 ? " — some connections failed" : "");
  return failed > 0 ? 1 : 0;
}
