// tests/monkey/servers.hpp — start and stop real servers (redis-server, nginx) for the monkey tests.
//
// Defines free_port() (a loopback TCP port nobody listens on), child_process (posix_spawn'd,
// SIGTERM + waitpid on destruction), wait_listening() (until a connect succeeds) and
// temp_dir (mkdtemp, removed recursively). Servers bind 127.0.0.1 only.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace cogent::test {

// free_port() returns a loopback port that was free a moment ago.
inline int free_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

// wait_listening() polls (plain blocking calls, on a helper thread without a
// hub) until 127.0.0.1:port accepts a connection or `limit` passes.
inline bool wait_listening(int port, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  bool ok = false;
  std::thread([&] {
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      int s = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<uint16_t>(port));
      bool up = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
      ::close(s);
      if (up) {
        ok = true;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }).join();
  return ok;
}

// child_process runs argv[0] (searched in PATH); the destructor stops it.
class child_process {
 public:
  explicit child_process(std::vector<std::string> argv) {
    std::vector<char*> args;
    for (auto& a : argv) {
      args.push_back(a.data());
    }
    args.push_back(nullptr);
    if (posix_spawnp(&_pid, args[0], nullptr, nullptr, args.data(), environ) != 0) {
      _pid = -1;
    }
  }
  ~child_process() { stop(); }
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;
  bool started() const { return _pid > 0; }
  void stop() {
    if (_pid > 0) {
      ::kill(_pid, SIGTERM);
      int status = 0;
      ::waitpid(_pid, &status, 0);
      _pid = -1;
    }
  }

 private:
  pid_t _pid = -1;
};

// temp_dir is a fresh directory under /tmp, removed with its contents.
class temp_dir {
 public:
  temp_dir() {
    char tmpl[] = "/tmp/cogent_monkey_XXXXXX";
    _path = ::mkdtemp(tmpl);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(_path, ec);
  }
  const std::string& path() const { return _path; }

 private:
  std::string _path;
};

}  // namespace cogent::test
