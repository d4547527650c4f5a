// net/reader.cpp — buffered_reader: a growable buffer in front of stream_socket::read_some().
#include "net/reader.hpp"

#include <algorithm>
#include <cstring>

namespace cogent::net {
buffered_reader::buffered_reader(stream_socket& s, std::size_t chunk)
    : _s(&s), _chunk(std::max<std::size_t>(chunk, 1)), _buf(_chunk, '\0') {}

clock::time_point buffered_reader::deadline_of(timeout_duration t) const {
  return deadline_after(t == use_default ? _s->timeout() : t);
}

void buffered_reader::consume(std::size_t n) noexcept {
  _begin += std::min(n, _end - _begin);
  if (_begin == _end) {
    _begin = _end = 0;
    if (_buf.size() > std::max(large_buffer, 4 * _chunk)) {
      std::string().swap(_buf);  // one big record does not pin its buffer (fill() makes a chunk again)
    }
  }
}

std::string buffered_reader::take(std::size_t n) {
  if (n > large_buffer && _begin == 0 && _end == n) {
    // The buffer holds exactly the result (read(n) sized it so): hand it out
    // rather than copy n bytes; the next fill() makes a new chunk.
    std::string out = std::move(_buf);
    out.resize(n);
    _buf.clear();
    _begin = _end = 0;
    return out;
  }
  std::string out(_buf.data() + _begin, n);
  consume(n);
  return out;
}

bool buffered_reader::fill(clock::time_point deadline, std::size_t want) {
  if (_buf.size() - _end < _chunk) {
    const std::size_t held = _end - _begin;
    if (_begin > 0) {
      std::memmove(_buf.data(), _buf.data() + _begin, held);
      _end = held;
      _begin = 0;
    }
    if (_buf.size() - _end < _chunk) {
      // Doubling, as bytes arrive (a length the peer claims but never sends
      // costs nothing up front), but never past what the caller wants.
      std::size_t size = std::max(_buf.size() * 2, _end + _chunk);
      if (want > held && want - held >= _chunk) {
        size = std::min(size, _end + (want - held));
      }
      _buf.resize(size);
    }
  }
  std::size_t n = _s->read_some(_buf.data() + _end, _buf.size() - _end, time_left(deadline));
  _end += n;
  return n > 0;
}

std::string buffered_reader::read_until(char delim, std::size_t max_bytes, timeout_duration t) {
  if (max_bytes == 0) {
    return {};
  }
  const clock::time_point deadline = deadline_of(t);
  std::size_t scanned = 0;  // bytes already searched (from _begin)
  for (;;) {
    const std::size_t limit = std::min(_end - _begin, max_bytes);
    const char* from = _buf.data() + _begin;
    if (const void* hit = std::memchr(from + scanned, delim, limit - scanned)) {
      return take(static_cast<const char*>(hit) - from + 1);
    }
    scanned = limit;
    if (limit == max_bytes || !fill(deadline)) {
      return take(limit);  // cut short, or EOF: what there is
    }
  }
}

std::string buffered_reader::read(std::size_t n, timeout_duration t) {
  const clock::time_point deadline = deadline_of(t);
  while (_end - _begin < n && fill(deadline, n)) {
  }
  return take(std::min(n, _end - _begin));
}

void buffered_reader::read_exactly(void* buf, std::size_t n, timeout_duration t) {
  if (n == 0) {
    return;  // (buf may be null: an empty vector's data())
  }
  const clock::time_point deadline = deadline_of(t);
  // Through the buffer, so that a call that times out or fails midway keeps
  // every byte it read for the next call.
  while (_end - _begin < n) {
    if (!fill(deadline, n)) {
      const std::size_t got = _end - _begin;
      if (got > 0) {
        std::memcpy(buf, _buf.data() + _begin, got);
        consume(got);
      }
      throw end_of_stream(got, n);
    }
  }
  std::memcpy(buf, _buf.data() + _begin, n);
  consume(n);
}

std::size_t buffered_reader::read_some(void* buf, std::size_t n, timeout_duration t) {
  if (n == 0) {
    return 0;
  }
  if (_begin == _end) {
    if (n >= _chunk) {
      return _s->read_some(buf, n, t);  // nothing buffered: no copy
    }
    if (!fill(deadline_of(t))) {
      return 0;
    }
  }
  const std::size_t k = std::min(n, _end - _begin);
  std::memcpy(buf, _buf.data() + _begin, k);
  consume(k);
  return k;
}

}  // namespace cogent::net
