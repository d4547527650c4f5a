// bench/hub_bench.cpp — hub micro-benchmarks (Google Benchmark), with a raw
// liburing floor for the IO round trip in the same binary:
//  1. spawn_join_100k: spawn 100,000 trivial tasks, join them (ns per task; target <= 200 ns); and
//     spawn_join_batch1k, the same in batches of 1,000 (stacks stay cache-hot).
//  2. sleep_100k_10ms: 100,000 tasks each sleep(10 ms), whole run (target <= 60 ms). The process's first
//     (cold) run is measured once in main() before the benchmarks and printed; the benchmark itself
//     reports warm runs (stacks come from the pool).
//     raw_100k_park_resume/256 and /32 are its floor: 100k raw Boost.Context fibers on stacks at cogent's
//     stride, each started (parks) and later resumed (finishes), no scheduler — the page-walk cost alone.
//  3. yield_ping: two fibers ping-pong through sleep(0) (ns per yield; target <= 60 ns).
//  4. nop_await_io vs nop_raw_uring: a NOP through hub::await_io from a fiber vs the same NOP on a raw
//     liburing loop (prep_nop, submit_and_wait, reap) — target <= 1.3x.
//  5. queue_handoff: producer task -> consumer (main) through cogent::queue<int> (ns per item; target <= 100
//  ns).
//
// Run (one line): taskset -c 1 ./build/bench/hub_bench --benchmark_repetitions=5
//   --benchmark_report_aggregates_only=true [--benchmark_format=json] [--stack-kib N]
// --stack-kib N runs everything with cogent::set_default_stack_size(N KiB) (bench/run_micro.sh reruns
// sleep_100k_10ms with 32: denser stacks, fewer page-table walks per wake-up).
#include <benchmark/benchmark.h>
#include <liburing.h>
#include <sys/mman.h>

#include <boost/context/fiber.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <thread>
#include <vector>

#include "hub/core.hpp"
#include "hub/task.hpp"
#if __has_include("hub/queue.hpp")
#include "hub/queue.hpp"
#define COGENT_BENCH_HAVE_QUEUE 1
#endif

namespace {

using namespace std::chrono_literals;

benchmark::Counter per_item(double items) {
  return benchmark::Counter(items, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// ---- 1. spawn + join ---------------------------------------------------------------

constexpr int n_tasks = 100'000;

void spawn_join_100k(benchmark::State& state) {
  std::vector<cogent::task<void>> ts;
  ts.reserve(n_tasks);
  for (auto _ : state) {
    for (int i = 0; i < n_tasks; ++i) {
      ts.push_back(cogent::spawn([] {}));
    }
    for (auto& t : ts) {
      t.join();
    }
    ts.clear();
  }
  state.counters["per_task"] = per_item(static_cast<double>(state.iterations()) * n_tasks);
}
BENCHMARK(spawn_join_100k)->Unit(benchmark::kMillisecond)->UseRealTime();

// spawn_join_batch1k: the same 100k tasks in batches of 1,000 (the working set
// of stacks stays in cache): separates the code path from memory effects.
void spawn_join_batch1k(benchmark::State& state) {
  std::vector<cogent::task<void>> ts;
  ts.reserve(1000);
  for (auto _ : state) {
    for (int b = 0; b < n_tasks / 1000; ++b) {
      for (int i = 0; i < 1000; ++i) {
        ts.push_back(cogent::spawn([] {}));
      }
      for (auto& t : ts) {
        t.join();
      }
      ts.clear();
    }
  }
  state.counters["per_task"] = per_item(static_cast<double>(state.iterations()) * n_tasks);
}
BENCHMARK(spawn_join_batch1k)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- 2. 100k x sleep(10 ms) -----------------------------------------------------------

void run_sleepers() {
  for (int i = 0; i < n_tasks; ++i) {
    cogent::spawn([] { cogent::sleep(10ms); });
  }
  cogent::wait();
}

void sleep_100k_10ms(benchmark::State& state) {
  for (auto _ : state) {
    run_sleepers();
  }
}
BENCHMARK(sleep_100k_10ms)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

// raw_100k_park_resume: the floor under sleep_100k_10ms — what 100k fibers
// that each park once and later finish cost with no scheduler, no timers and
// no tasks: raw boost::context::fiber on stacks carved from one region at the
// stride of cogent's pooled stacks (Arg KiB of stack + the 4 KiB guard slot),
// already committed (as the pool's are on a warm run). Start each one (it
// writes its first frames and switches back: "parked"), wait out the 10 ms
// counted from the first start if it has not passed yet, resume each one in
// the same order (it returns: finished). On a 2-level-paging VM the cost is
// the page walks to 100k distinct stack pages, twice; it sets how close
// sleep_100k_10ms can get to its 60 ms target at that stack size.
class region_stacks {
 public:
  region_stacks(std::size_t n, std::size_t stack_bytes) : _stride(stack_bytes + 4096), _n(n) {
    _base = static_cast<char*>(::mmap(nullptr, _stride * n, PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    if (_base == MAP_FAILED) {
      _base = nullptr;
      return;
    }
    ::madvise(_base, _stride * n, MADV_NOHUGEPAGE);  // as cogent's stack chunks
  }
  ~region_stacks() {
    if (_base != nullptr) {
      ::munmap(_base, _stride * _n);
    }
  }
  region_stacks(const region_stacks&) = delete;
  region_stacks& operator=(const region_stacks&) = delete;
  bool ok() const { return _base != nullptr; }
  // The allocator boost::context::fiber takes: hands out stack i, never frees.
  struct slot {
    region_stacks* r;
    std::size_t i;
    boost::context::stack_context allocate() {
      boost::context::stack_context sc;
      sc.size = r->_stride - 4096;
      sc.sp = r->_base + (i + 1) * r->_stride;
      return sc;
    }
    void deallocate(boost::context::stack_context&) noexcept {}
  };
  slot at(std::size_t i) { return slot{this, i}; }

 private:
  std::size_t _stride;
  std::size_t _n;
  char* _base = nullptr;
};

double raw_park_resume_round(region_stacks& stacks) {
  namespace bctx = boost::context;
  std::vector<bctx::fiber> parked;
  parked.reserve(n_tasks);
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n_tasks; ++i) {
    bctx::fiber f(std::allocator_arg, stacks.at(static_cast<std::size_t>(i)), [](bctx::fiber&& back) {
      back = std::move(back).resume();  // parked until the second pass
      return std::move(back);
    });
    parked.push_back(std::move(f).resume());
  }
  std::this_thread::sleep_until(t0 + 10ms);
  for (auto& f : parked) {
    f = std::move(f).resume();  // it returns: finished
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

void raw_100k_park_resume(benchmark::State& state) {
  region_stacks stacks(n_tasks, static_cast<std::size_t>(state.range(0)) * 1024);
  if (!stacks.ok()) {
    state.SkipWithError("mmap of the stack region failed");
    return;
  }
  raw_park_resume_round(stacks);  // commit the pages: warm, like the pool after a first run
  for (auto _ : state) {
    state.SetIterationTime(raw_park_resume_round(stacks) / 1000.0);
  }
}
BENCHMARK(raw_100k_park_resume)
    ->Arg(256)
    ->Arg(32)
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime()
    ->Iterations(3);

// ---- 3. sleep(0) ping ------------------------------------------------------------------

void yield_ping(benchmark::State& state) {
  bool stop = false;
  auto other = cogent::spawn([&] {
    while (!stop) {
      cogent::yield();
    }
  });
  cogent::yield();  // let it start
  for (auto _ : state) {
    cogent::yield();  // main -> other -> main: two yields
  }
  stop = true;
  other.join();
  state.counters["per_yield"] = per_item(2.0 * static_cast<double>(state.iterations()));
}
BENCHMARK(yield_ping);

// ---- 4. NOP round trip: hub vs raw liburing ------------------------------------------------

void nop_await_io(benchmark::State& state) {
  cogent::hub& h = cogent::hub::current();
  auto t = cogent::spawn([&] {
    for (auto _ : state) {
      cogent::detail::io_op op;
      op.code = cogent::detail::op_code::nop;
      int r = h.await_io(op);
      benchmark::DoNotOptimize(r);
    }
  });
  t.get();
}
BENCHMARK(nop_await_io);

void nop_raw_uring(benchmark::State& state) {
  io_uring ring;
  if (io_uring_queue_init(64, &ring, 0) != 0) {
    state.SkipWithError("io_uring_queue_init failed");
    return;
  }
  for (auto _ : state) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, 1);
    io_uring_submit_and_wait(&ring, 1);
    io_uring_cqe* cqe = nullptr;
    io_uring_peek_cqe(&ring, &cqe);
    benchmark::DoNotOptimize(cqe->res);
    io_uring_cqe_seen(&ring, cqe);
  }
  io_uring_queue_exit(&ring);
}
BENCHMARK(nop_raw_uring);

#if defined(COGENT_BENCH_HAVE_QUEUE)
// ---- 5. queue handoff ----------------------------------------------------------------------

void queue_handoff(benchmark::State& state) {
  cogent::queue<int> q(static_cast<std::size_t>(state.range(0)));
  bool stop = false;
  auto producer = cogent::spawn([&] {
    for (int i = 0; !stop; ++i) {
      q.put(i);
    }
  });
  long sum = 0;
  for (auto _ : state) {
    sum += q.get();
  }
  stop = true;
  while (!producer.ready()) {
    if (!q.empty()) {
      q.get_nowait();  // let a blocked put() finish so the producer sees `stop`
    }
    cogent::yield();
  }
  benchmark::DoNotOptimize(sum);
  state.counters["per_item"] = per_item(static_cast<double>(state.iterations()));
}
BENCHMARK(queue_handoff)->Arg(1)->Arg(64);

#endif  // COGENT_BENCH_HAVE_QUEUE

}  // namespace

int main(int argc, char** argv) {
  // --stack-kib N (ours, removed before Google Benchmark parses the rest): the default stack size. It
  // must be set before the first fiber, so it comes first.
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--stack-kib") == 0) {
      cogent::set_default_stack_size(std::strtoul(argv[i + 1], nullptr, 10) * 1024);
      std::fprintf(stderr, "default stack size: %zu KiB\n", cogent::default_stack_size() / 1024);
      for (int j = i; j + 2 <= argc; ++j) {
        argv[j] = argv[j + 2];
      }
      argc -= 2;
      break;
    }
  }
  // The cold run: the first 100k sleepers of this process (fresh stacks: page
  // faults, guard pages). Measured once, before anything else touches the hub.
  // COGENT_BENCH_SKIP_COLD=1 skips it (for profiling one benchmark).
  if (std::getenv("COGENT_BENCH_SKIP_COLD") == nullptr) {
    auto t0 = std::chrono::steady_clock::now();
    std::clock_t c0 = std::clock();
    run_sleepers();
    auto cold = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    double cold_cpu = 1000.0 * static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
    std::fprintf(stderr, "sleep_100k_10ms cold (first) run: %.1f ms wall, %.1f ms cpu\n", cold, cold_cpu);
  }

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
