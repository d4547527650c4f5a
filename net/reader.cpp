// net/reader.cpp — buffered_reader: a growable buffer in front of stream_socket::read_some().
#include "net/reader.hpp"

#include <algorithm>
#include <cstring>

namespace cogent::net {
buffered_reader::buffered_reader(stream_socket& s, std::size_t chunk)
    : _s(&s), _chunk(std::max<std::size_t>(chunk, 1)), _buf(_chunk) {}

clock::time_point buffered_reader::deadline_of(timeout_duration t) const {
  return deadline_after(t == use_default ? _s->timeout() : t);
}

void buffered_reader::consume(std::size_t n) noexcept {
  _begin += std::min(n, _end - _begin);
  if (_begin == _end) {
    _begin = _end = 0;
  }
}

std::string buffered_reader::take(std::size_t n) {
  std::string out(_buf.data() + _begin, n);
  consume(n);
  return out;
}

bool buffered_reader::fill(clock::time_point deadline) {
  if (_buf.size() - _end < _chunk) {
    if (_begin > 0) {
      std::memmove(_buf.data(), _buf.data() + _begin, _end - _begin);
      _end -= _begin;
      _begin = 0;
    }
    if (_buf.size() - _end < _chunk) {
      _buf.resize(std::max(_buf.size() * 2, _end + _chunk));
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
  while (_end - _begin < n && fill(deadline)) {
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
    if (!fill(deadline)) {
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
