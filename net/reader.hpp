// net/reader.hpp — buffered reading from a stream socket: lines, delimited records, exact counts.
//
// Defines cogent::net::buffered_reader, gevent's `sock.makefile('rb')`:
// readline(), read(n). A line protocol (chat, SMTP, Redis inline commands,
// HTTP headers) reads a line at a time while the bytes after it stay in the
// reader's buffer for the next call.
//
// The reader borrows the socket (which must outlive it and stay where it is:
// moving the socket object leaves the reader pointing at the moved-from one;
// make the reader after the socket has its final home) and owns a buffer
// that starts at `chunk` bytes and grows only as far as a single call needs
// (a line up to its max_bytes; for read(n)/read_exactly(n) it doubles as bytes
// arrive but stops at n, so a big n the peer never sends costs nothing up
// front). A buffer grown past large_buffer is freed as soon as
// it is emptied, so one big record does not pin its size for the life of the
// connection, and read(n) of a large n hands the buffer itself back as the
// result when it holds exactly those bytes (no second n-byte copy). Reading
// the socket directly while a reader holds buffered bytes would skip them:
// once a reader is in use, read through it (buffered() hands back what it
// holds).
//
// Semantics follow Python's binary file objects:
//  - read_line()/read_until() return the record WITH its delimiter; a record
//    cut short by max_bytes comes back without it (test the last byte to
//    tell), and the rest comes with the next call; at EOF the bytes left
//    (a last line without '\n') come back, then "" for every later call.
//  - read(n) returns n bytes, or fewer only at EOF ("" at EOF).
// Timeouts: `t` bounds the whole call (use_default: the socket's default
// timeout), as for the socket's own looping calls. A call that times out or
// fails (std::system_error, timeout_error, a kill) loses nothing: the bytes
// it had read stay buffered for the next call. May switch (every read call).
//
// Example (a line-based echo handler):
//   cogent::net::buffered_reader in(client);
//   for (std::string line; !(line = in.read_line()).empty();) {
//     client.write_all(line);   // with its '\n'
//   }
#pragma once
#pragma GCC visibility push(default)

#include <cstddef>
#include <string>
#include <string_view>

#include "net/socket.hpp"

namespace cogent::net {

class buffered_reader {
 public:
  static constexpr std::size_t default_chunk = 4096;
  static constexpr std::size_t default_max_line = 64 * 1024;
  // A buffer bigger than this (and than 4 chunks) is not kept once emptied.
  static constexpr std::size_t large_buffer = 256 * 1024;

  // buffered_reader() reads `s` in reads of at least `chunk` bytes (at least
  // 1). Allocates the buffer; never switches.
  explicit buffered_reader(stream_socket& s, std::size_t chunk = default_chunk);

  // read_line() is read_until('\n', max_bytes, t).
  std::string read_line(std::size_t max_bytes = default_max_line, timeout_duration t = use_default) {
    return read_until('\n', max_bytes, t);
  }
  // read_until() returns the bytes up to and including the next `delim`, at
  // most max_bytes of them (see above for a record cut short and for EOF).
  // max_bytes 0 returns "" at once. Raises what the socket's read_some()
  // raises. May switch.
  std::string read_until(char delim, std::size_t max_bytes = default_max_line, timeout_duration t = use_default);
  // read() returns the next n bytes, or fewer at EOF: it waits for all n
  // (Python's buffered read(n)); read_some() is the one that returns what is
  // there (a socket's recv(n)). May switch.
  std::string read(std::size_t n, timeout_duration t = use_default);
  // read_exactly() stores exactly n bytes in buf; raises end_of_stream
  // (partial data in buf) if the peer closes first. May switch.
  void read_exactly(void* buf, std::size_t n, timeout_duration t = use_default);
  // read_some() returns what is buffered (up to n bytes), or, with nothing
  // buffered, what one read of the socket gives; 0 at EOF. May switch.
  std::size_t read_some(void* buf, std::size_t n, timeout_duration t = use_default);

  // buffered() is what the reader holds and has not handed out yet (valid
  // until the next call). consume() drops its first n bytes (at most all).
  std::string_view buffered() const noexcept { return {_buf.data() + _begin, _end - _begin}; }
  void consume(std::size_t n) noexcept;
  // buffer_capacity() is the bytes the reader's buffer has allocated now
  // (next to nothing after a large buffer was emptied and freed or handed
  // out; the next read makes `chunk` again) — for watching memory per
  // connection.
  std::size_t buffer_capacity() const noexcept { return _buf.capacity(); }
  // socket() is the socket read from.
  stream_socket& socket() const noexcept { return *_s; }

 private:
  // fill() reads once more from the socket (by `deadline`), making room
  // first: the buffer doubles, but not past `want` bytes buffered in all when
  // the caller knows how many it needs (0: it does not); false at EOF.
  bool fill(clock::time_point deadline, std::size_t want = 0);
  clock::time_point deadline_of(timeout_duration t) const;
  std::string take(std::size_t n);

  stream_socket* _s;
  std::size_t _chunk;
  std::string _buf;  // a string, so that take() can hand it out whole
  std::size_t _begin = 0;  // [_begin, _end): buffered, not yet handed out
  std::size_t _end = 0;
};

}  // namespace cogent::net

#pragma GCC visibility pop
