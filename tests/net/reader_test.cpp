// tests/net/reader_test.cpp — net::buffered_reader over real loopback sockets: lines split across
// reads and several in one read, records cut short by max_bytes, EOF with and without a last line,
// exact reads across the buffer and the socket, timeouts that lose nothing, and a line server.
#include <doctest/doctest.h>

#include <cctype>
#include <chrono>
#include <cstring>
#include <string>
#include <system_error>

#include "net/net.hpp"
#include "tests/net/net_support.hpp"
#include "tests/support.hpp"

using namespace std::chrono_literals;
using cogent::net::address;
using cogent::net::buffered_reader;
using cogent::net::listener;
using cogent::net::stream_socket;

using cogent::test::make_pair;

COGENT_TEST_CASE("reader: lines come back with their newline, across reads and several per read") {
  auto p = make_pair();
  auto w = cogent::spawn([&] {
    p.client.write_all("one\ntw");
    cogent::sleep(5ms);  // the second line arrives in two reads
    p.client.write_all("o\nthree\nfour\n");
    p.client.shutdown();
  });
  buffered_reader in(p.server, 4);  // a tiny chunk: the buffer must grow and compact
  CHECK(in.read_line() == "one\n");
  CHECK(in.read_line() == "two\n");
  CHECK(in.read_line() == "three\n");
  CHECK(in.read_line() == "four\n");
  CHECK(in.read_line().empty());  // EOF
  CHECK(in.read_line().empty());  // and again
  w.join();
}

COGENT_TEST_CASE("reader: a last line without a newline, then EOF") {
  auto p = make_pair();
  p.client.write_all("a\nlast");
  p.client.shutdown();
  buffered_reader in(p.server);
  CHECK(in.read_line() == "a\n");
  CHECK(in.read_line() == "last");
  CHECK(in.read_line().empty());
}

COGENT_TEST_CASE("reader: a line longer than max_bytes is cut short and goes on in the next call") {
  auto p = make_pair();
  p.client.write_all("0123456789\nxy\n");
  buffered_reader in(p.server);
  CHECK(in.read_line(4) == "0123");
  CHECK(in.read_line(4) == "4567");
  CHECK(in.read_line(4) == "89\n");
  CHECK(in.read_line(0).empty());
  CHECK(in.read_line() == "xy\n");
}

COGENT_TEST_CASE("reader: read_until another delimiter, read(n), read_exactly, read_some, buffered()") {
  auto p = make_pair();
  p.client.write_all("key=value;rest-of-it:0123456789");
  p.client.shutdown();
  buffered_reader in(p.server);
  CHECK(in.read_until('=') == "key=");
  CHECK(in.read_until(';') == "value;");
  CHECK(in.read(4) == "rest");
  char five[5];
  in.read_exactly(five, 5);
  CHECK(std::string(five, 5) == "-of-i");
  char two[2];
  CHECK(in.read_some(two, 2) == 2);
  CHECK(std::string(two, 2) == "t:");
  CHECK(in.read(3) == "012");
  CHECK(in.buffered() == "3456789");
  in.consume(2);
  CHECK(in.read(100) == "56789");  // fewer at EOF
  CHECK(in.read(1).empty());
  char buf[4];
  CHECK(in.read_some(buf, sizeof buf) == 0);
}

COGENT_TEST_CASE("reader: read_exactly at EOF raises end_of_stream with what arrived") {
  auto p = make_pair();
  p.client.write_all("abc");
  p.client.shutdown();
  buffered_reader in(p.server);
  char buf[8] = {};
  try {
    in.read_exactly(buf, sizeof buf);
    FAIL("no end_of_stream");
  } catch (const cogent::net::end_of_stream& e) {
    CHECK(e.bytes_read() == 3);
    CHECK(e.bytes_wanted() == 8);
    CHECK(std::string(buf, 3) == "abc");
  }
}

COGENT_TEST_CASE("reader: a call that times out keeps what it read for the next call") {
  auto p = make_pair();
  p.client.write_all("partial");
  buffered_reader in(p.server);
  try {
    (void)in.read_line(buffered_reader::default_max_line, 20ms);
    FAIL("no timeout");
  } catch (const std::system_error& e) {
    CHECK(e.code().value() == ETIMEDOUT);
  }
  CHECK(in.buffered() == "partial");
  {
    cogent::timeout scope(20ms);  // a Timeout scope: the same
    CHECK_THROWS_AS((void)in.read_line(), cogent::timeout_error);
  }
  p.client.write_all(" line\n");
  CHECK(in.read_line() == "partial line\n");
  // The socket's default timeout is the reader's default too.
  p.server.set_timeout(20ms);
  p.client.write_all("12");
  char four[4];
  CHECK_THROWS_AS(in.read_exactly(four, 4), std::system_error);
  p.client.write_all("34");
  in.read_exactly(four, 4);
  CHECK(std::string(four, 4) == "1234");
}

// pattern(): n bytes that tell their offsets apart (a byte lost or repeated shows up).
static std::string pattern(std::size_t n, std::size_t salt = 0) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) {
    s[i] = static_cast<char>((i * 131 + i / 251 + salt) & 0xff);
  }
  return s;
}

COGENT_TEST_CASE("reader: a 16 MiB read(n) and read_exactly() are exact, and the big buffer is not kept") {
  auto p = make_pair();
  const std::size_t big = 16u << 20;
  const std::string a = pattern(big, 1), b = pattern(big / 2, 2);
  auto w = cogent::spawn([&] {
    p.client.write_all(a);
    p.client.write_all("next line\n");
    p.client.write_all(b);
    p.client.write_all("tail");
    p.client.shutdown();
  });
  buffered_reader in(p.server);
  const std::string got = in.read(big);
  CHECK(got.size() == big);
  CHECK(got == a);
  // Whatever came after the record is still buffered; the 16 MiB buffer is gone (handed out or freed).
  CHECK(in.buffer_capacity() <= buffered_reader::large_buffer);
  CHECK(in.read_line() == "next line\n");
  std::string second(b.size(), '\0');
  in.read_exactly(second.data(), second.size());
  CHECK(second == b);
  CHECK(in.buffer_capacity() <= buffered_reader::large_buffer);
  CHECK(in.read(100) == "tail");
  CHECK(in.read(1).empty());
  w.join();
}

COGENT_TEST_CASE("reader: a read(n) for more than the peer sends allocates as bytes arrive, not n up front") {
  // A length prefix from a hostile or broken peer: read(64 MiB), then 10 bytes and EOF.
  auto p = make_pair();
  buffered_reader in(p.server);
  auto r = cogent::spawn([&] { return in.read(64u << 20); });
  p.client.write_all("ten bytes!");
  cogent::sleep(20ms);  // the read has the 10 bytes and waits for the rest
  REQUIRE_FALSE(r.ready());
  CHECK(in.buffer_capacity() < (1u << 20));
  p.client.shutdown();
  CHECK(r.get() == "ten bytes!");
}

COGENT_TEST_CASE("reader: a big read(n) that times out midway keeps every byte for the next call") {
  auto p = make_pair();
  const std::string a = pattern(3u << 20, 3);
  buffered_reader in(p.server);
  auto w = cogent::spawn([&] { p.client.write_all(std::string_view(a).substr(0, a.size() / 2)); });
  CHECK_THROWS_AS((void)in.read(a.size(), 300ms), std::system_error);
  w.join();
  CHECK(in.buffered().size() == a.size() / 2);
  auto w2 = cogent::spawn([&] { p.client.write_all(std::string_view(a).substr(a.size() / 2)); });
  CHECK(in.read(a.size()) == a);
  w2.join();
}

COGENT_TEST_CASE("reader: a line server over stream_server, one reader per client") {
  cogent::net::stream_server srv(address::ipv4_loopback(0), [](stream_socket& s, const address&) {
    buffered_reader in(s);
    for (std::string line; !(line = in.read_line()).empty();) {
      for (char& c : line) {
        c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      }
      s.write_all(line);
    }
  });
  srv.start();
  auto c = stream_socket::connect(srv.address(), 2s);
  buffered_reader in(c);
  std::string big(100'000, 'q');  // one line far larger than a chunk
  c.write_all("hello\nworld\n" + big + "\n");
  CHECK(in.read_line() == "HELLO\n");
  CHECK(in.read_line() == "WORLD\n");
  std::string got = in.read_line(200'000);
  CHECK(got.size() == big.size() + 1);
  CHECK(got.find_first_not_of('Q') == big.size());
  c.close();
  srv.stop(1s);
}
