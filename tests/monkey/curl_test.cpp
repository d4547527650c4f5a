// tests/monkey/curl_test.cpp — unmodified libcurl (easy API) made concurrent by patch_all().
//
// Starts nginx on a free 127.0.0.1 port with a generated config whose limit_rate makes one
// 100 kB download take ~0.2 s, then downloads it from 20 fibers with curl_easy_perform(): all
// finish together in ~0.2-0.5 s (serial: 4 s), every body byte-for-byte equal to the file.
// libcurl drives its non-blocking sockets with poll(), which is what cooperates here.
#include <curl/curl.h>

#include <chrono>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "hub/task.hpp"
#include "monkey/monkey.hpp"
#include "tests/monkey/servers.hpp"
#include "tests/support.hpp"

namespace {

constexpr std::size_t file_size = 100'000;
constexpr const char* rate = "500k";  // bytes/s: 100 kB in ~0.2 s

// nginx_server serves dir/www with a per-connection rate limit.
struct nginx_server {
  cogent::test::temp_dir dir;
  int port = cogent::test::free_port();
  std::string body;
  bool written = write_files();
  cogent::test::child_process proc{
      {"nginx", "-p", dir.path(), "-c", dir.path() + "/nginx.conf", "-e", dir.path() + "/error.log"}};
  bool up = written && proc.started() && cogent::test::wait_listening(port);

  bool write_files() {
    std::mt19937 rng(42);
    body.resize(file_size);
    for (auto& c : body) {
      c = static_cast<char>(rng());
    }
    std::filesystem::create_directories(dir.path() + "/www");
    std::ofstream(dir.path() + "/www/file.bin", std::ios::binary) << body;
    const std::string& d = dir.path();
    std::ofstream conf(d + "/nginx.conf");
    conf << "daemon off; master_process off; worker_processes 1;\n"
         << "error_log " << d << "/error.log; pid " << d << "/nginx.pid;\n"
         << "events { worker_connections 1024; }\n"
         << "http { access_log off;\n"
         << "  client_body_temp_path " << d << "/t1; proxy_temp_path " << d << "/t2; fastcgi_temp_path " << d
         << "/t3; uwsgi_temp_path " << d << "/t4; scgi_temp_path " << d << "/t5;\n"
         << "  server { listen 127.0.0.1:" << port << "; root " << d << "/www; location / { limit_rate "
         << rate << "; } } }\n";
    return static_cast<bool>(conf);
  }
};

std::size_t append_body(char* data, std::size_t size, std::size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}

// download() fetches url with the easy API; returns the body ("" on failure).
std::string download(const std::string& url, long* status) {
  CURL* h = curl_easy_init();
  std::string body;
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, append_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT, 20L);
  CURLcode rc = curl_easy_perform(h);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
  curl_easy_cleanup(h);
  return rc == CURLE_OK ? body : std::string();
}

}  // namespace

COGENT_TEST_CASE("20 fibers download a rate-limited file at once", doctest::timeout(60)) {
  cogent::monkey::patch_all();
  curl_global_init(CURL_GLOBAL_DEFAULT);
  {
    nginx_server srv;
    REQUIRE(srv.up);
    std::string url = "http://127.0.0.1:" + std::to_string(srv.port) + "/file.bin";

    // One alone, for the reference time.
    auto t0 = std::chrono::steady_clock::now();
    long status = 0;
    CHECK(download(url, &status) == srv.body);
    CHECK(status == 200);
    double one = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    t0 = std::chrono::steady_clock::now();
    std::vector<cogent::task<bool>> tasks;
    for (int i = 0; i < 20; ++i) {
      tasks.push_back(cogent::spawn([&] {
        long st = 0;
        return download(url, &st) == srv.body && st == 200;
      }));
    }
    cogent::joinall(tasks);
    double all = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (auto& t : tasks) {
      CHECK(t.get());
    }
    MESSAGE("one download: ", one, " s; 20 concurrent: ", all, " s (serial: ", 20 * one, " s)");
    CHECK(one >= 0.15);
    CHECK(all >= 0.15);
    CHECK(all < 0.6);
  }
  curl_global_cleanup();
}
