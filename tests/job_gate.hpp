// tests/job_gate.hpp — a thread-pool job that ends when the test says so, not after a fixed sleep.
//
// A job that sleeps N ms on a worker ends N ms later whatever the hub's thread is doing: a test
// that meant to send a kill, or look at a Timeout, "while the job runs" fails if that thread is
// descheduled past N ms (the job's completion is then taken, and its task resumed, before the
// test's own timer fires). A job that waits on a job_gate ends only once the test opens it.
//
// Example:
//   cogent::test::job_gate gate;
//   auto t = cogent::spawn([&] { cogent::run_in_thread(gate.job()); });
//   cogent::sleep(1ms);
//   t.kill(nullptr, false);  // the job is still running, for sure
//   gate.open();
//
// The state is shared with the job (a test whose check failed early may leave its frame while a
// worker still waits); the gate opens when it goes, and a job never waits more than `limit`.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>

namespace cogent::test {

class job_gate {
 public:
  job_gate() : _s(std::make_shared<state>()) {}
  ~job_gate() { open(); }
  job_gate(const job_gate&) = delete;
  job_gate& operator=(const job_gate&) = delete;

  // open() lets every job waiting on the gate (and any later one) end.
  void open() const {
    {
      std::lock_guard lock(_s->m);
      _s->is_open = true;
    }
    _s->cv.notify_all();
  }

  // job() is a callable for run_in_thread()/threadpool::run(): it blocks its worker until the
  // gate is open (at most `limit`, so a test that never opens it does not strand a worker).
  auto job(std::chrono::milliseconds limit = std::chrono::seconds(5)) const {
    return [s = _s, limit] {
      std::unique_lock lock(s->m);
      s->cv.wait_for(lock, limit, [&] { return s->is_open; });
    };
  }

 private:
  struct state {
    std::mutex m;
    std::condition_variable cv;
    bool is_open = false;
  };
  std::shared_ptr<state> _s;
};

}  // namespace cogent::test
