// bench/fiber_bench.cpp — cogent::fiber micro-benchmarks, each next to its floor in the same binary:
//  1. switch: a value round trip main -> B -> main (two switches per iteration), cogent::fiber vs a raw
//     boost::context::fiber resume ping-pong (the floor: no parent chain, no values, no bookkeeping).
//  2. create cycle: create + first switch + finish + destroy, cogent's default stack vs raw
//     boost::context::fiber on a fixedsize_stack of Boost's default size.
//  3. memory: VmRSS per suspended fiber with 1,000,000 fibers suspended (counter rss_per_fiber_bytes).
// The project rule "only fiber/detail/context.cpp includes Boost.Context" is for the library; a floor
// has to use the raw thing, so this file includes it on purpose.
//
// Run (one line): taskset -c 1 ./build/bench/fiber_bench --benchmark_repetitions=5
//   --benchmark_report_aggregates_only=true [--benchmark_format=json]
#include <benchmark/benchmark.h>

#include <boost/context/fiber.hpp>
#include <boost/context/fixedsize_stack.hpp>

#include <any>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "fiber/fiber.hpp"

namespace {

namespace bctx = boost::context;

// ---- 1. switch ---------------------------------------------------------------

// cogent_switch: main switches an int to B, B switches it (plus one) back to main.
void cogent_switch(benchmark::State& state) {
  cogent::fiber main = cogent::fiber::current();
  cogent::fiber b([&main](int n) {
    while (true) {
      n = main.switch_to<int>(n + 1);
    }
  });
  int v = 0;
  for (auto _ : state) {
    v = b.switch_to<int>(v);
    benchmark::DoNotOptimize(v);
  }
  state.counters["switches"] = benchmark::Counter(2.0 * static_cast<double>(state.iterations()),
                                                  benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}  // b is unwound here (destroyed while suspended)
BENCHMARK(cogent_switch);

// cogent_switch_novalue: the same round trip without a value (an empty
// std::any): the cost of the switch itself, without type erasure.
void cogent_switch_novalue(benchmark::State& state) {
  cogent::fiber main = cogent::fiber::current();
  int shared = 0;
  cogent::fiber b([&main, &shared] {
    while (true) {
      ++shared;
      main.switch_to();
    }
  });
  for (auto _ : state) {
    b.switch_to();
    benchmark::DoNotOptimize(shared);
  }
  state.counters["switches"] = benchmark::Counter(2.0 * static_cast<double>(state.iterations()),
                                                  benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(cogent_switch_novalue);

// raw_switch: the same round trip with boost::context::fiber resume (the floor).
void raw_switch(benchmark::State& state) {
  int shared = 0;
  bctx::fiber b([&shared](bctx::fiber&& back) {
    while (true) {
      ++shared;
      back = std::move(back).resume();
    }
    return std::move(back);
  });
  for (auto _ : state) {
    b = std::move(b).resume();
    benchmark::DoNotOptimize(shared);
  }
  state.counters["switches"] = benchmark::Counter(2.0 * static_cast<double>(state.iterations()),
                                                  benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}  // b is unwound here (forced_unwind)
BENCHMARK(raw_switch);

// ---- 2. create cycle -----------------------------------------------------------

// cogent_create_cycle: create, first switch (runs to completion, returns to main), destroy.
void cogent_create_cycle(benchmark::State& state) {
  for (auto _ : state) {
    cogent::fiber f([](int n) { return n + 1; });
    int r = f.switch_to<int>(1);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(cogent_create_cycle);

// raw_create_cycle: the same with boost::context::fiber on a default-size fixedsize_stack.
void raw_create_cycle(benchmark::State& state) {
  for (auto _ : state) {
    int r = 0;
    bctx::fiber f(std::allocator_arg, bctx::fixedsize_stack(), [&r](bctx::fiber&& back) {
      r = 2;
      return std::move(back);
    });
    f = std::move(f).resume();
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(raw_create_cycle);

// ---- 3. memory -------------------------------------------------------------------

// vm_rss_bytes() reads VmRSS from /proc/self/status.
long vm_rss_bytes() {
  long kb = -1;
  if (FILE* f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    while (std::fgets(line, sizeof line, f) != nullptr) {
      if (std::strncmp(line, "VmRSS:", 6) == 0) {
        std::sscanf(line + 6, "%ld", &kb);
        break;
      }
    }
    std::fclose(f);
  }
  return kb * 1024;
}

// rss_per_suspended_fiber: 1,000,000 fibers each switched into once and suspended mid-function.
void rss_per_suspended_fiber(benchmark::State& state) {
  const auto count = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    cogent::fiber main = cogent::fiber::current();
    std::vector<cogent::fiber> all;
    all.reserve(count);  // the handle vector is allocated (and touched) before the first reading
    std::memset(static_cast<void*>(all.data()), 0, count * sizeof(cogent::fiber));
    long before = vm_rss_bytes();
    for (std::size_t i = 0; i < count; ++i) {
      all.emplace_back([&main] { main.switch_to(); });
      all.back().switch_to();
    }
    long after = vm_rss_bytes();
    state.counters["rss_per_fiber_bytes"] = static_cast<double>(after - before) / static_cast<double>(count);
    state.counters["rss_total_mib"] = static_cast<double>(after - before) / (1024.0 * 1024.0);
    state.PauseTiming();
    all.clear();  // unwinds every fiber
    state.ResumeTiming();
  }
}
BENCHMARK(rss_per_suspended_fiber)->Arg(1000000)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
