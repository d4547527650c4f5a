#!/usr/bin/env bash
# bench/run_micro.sh — run the fiber and hub micro-benchmarks pinned to one core
# and print a markdown table of medians with the ratio to each floor.
#   bench/run_micro.sh [--build DIR] [--reps N] [--out DIR]
# Output: $OUT/fiber.json, $OUT/hub.json, $OUT/micro_summary.md (also on stdout).
set -euo pipefail
cd "$(dirname "$0")/.."
build=build reps=5 out=bench-out
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--reps N] [--out DIR]" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
common=(--benchmark_repetitions="$reps" --benchmark_report_aggregates_only=true --benchmark_format=json)
taskset -c 1 "$build/bench/fiber_bench" "${common[@]}" >"$out/fiber.json"
taskset -c 1 "$build/bench/hub_bench" "${common[@]}" >"$out/hub.json" 2>"$out/hub.stderr"
# The 100k sleepers again with 32 KiB default stacks (set_default_stack_size): stacks packed 8x
# tighter, so waking each one walks fewer page tables.
COGENT_BENCH_SKIP_COLD=1 taskset -c 1 "$build/bench/hub_bench" --stack-kib 32 --benchmark_filter='sleep_100k' \
  "${common[@]}" >"$out/hub_dense.json" 2>>"$out/hub.stderr"

python3 - "$out" <<'PY' | tee "$out/micro_summary.md"
import json, sys
out = sys.argv[1]
med = {}
for f in ("fiber.json", "hub.json", "hub_dense.json"):
    for b in json.load(open(f"{out}/{f}"))["benchmarks"]:
        if b.get("aggregate_name") == "median":
            name = b["run_name"] + ("@32k" if f == "hub_dense.json" else "")
            med[name] = b
            med.setdefault(name.split("/")[0] + ("@32k" if f == "hub_dense.json" else ""), b)
def cpu(n):  # CPU time per iteration in ns
    b = med[n]
    scale = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}[b["time_unit"]]
    return b["cpu_time"] * scale
def ctr(n, c):
    return med[n].get(c)
rows = []
# Rate counters with kInvert are seconds per switch.
sw, rsw = ctr("cogent_switch", "switches") * 1e9, ctr("raw_switch", "switches") * 1e9
rows.append(("manual switch A<->B, int value (per switch)", f"{sw:.1f} ns", f"raw Boost.Context {rsw:.1f} ns", f"{sw/rsw:.2f}x", "<= 1.5x"))
if "cogent_switch_novalue" in med:
    nv = ctr("cogent_switch_novalue", "switches") * 1e9
    rows.append(("manual switch A<->B, no value (per switch)", f"{nv:.1f} ns", f"raw Boost.Context {rsw:.1f} ns", f"{nv/rsw:.2f}x", "<= 1.5x"))
cc, rc = cpu("cogent_create_cycle"), cpu("raw_create_cycle")
rows.append(("create+switch+finish+destroy", f"{cc:.1f} ns", f"raw fixedsize {rc:.1f} ns", f"{cc/rc:.2f}x", "<= 2x"))
rss = ctr("rss_per_suspended_fiber", "rss_per_fiber_bytes")
rows.append(("RSS per suspended fiber (1M)", f"{rss/1024:.2f} KiB", "-", "-", "<= 5 KiB"))
if "spawn_join_100k" in med:
    rows.append(("spawn+join, 100k tasks (per task)", f"{ctr('spawn_join_100k','per_task')*1e9:.0f} ns", "-", "-", "<= 200 ns"))
    rows.append(("spawn+join, batches of 1k (per task)", f"{ctr('spawn_join_batch1k','per_task')*1e9:.0f} ns", "-", "-", "-"))
    def park_floor(kib):  # raw_100k_park_resume/<kib>: the page-walk floor under the sleepers
        for k, b in med.items():
            if k.startswith(f"raw_100k_park_resume/{kib}/"):
                return b["real_time"]
        return None
    def sleep_row(label, key, kib):
        t, fl = med[key]["real_time"], park_floor(kib)
        floor = f"raw park+resume {fl:.1f} ms" if fl else "-"
        ratio = f"{t/fl:.2f}x" if fl else "-"
        rows.append((label, f"{t:.1f} ms", floor, ratio, "<= 60 ms"))
    sleep_row("100k tasks x sleep(10 ms), whole run (wall)", "sleep_100k_10ms", 256)
    if "sleep_100k_10ms@32k" in med:
        sleep_row("the same, 32 KiB default stacks", "sleep_100k_10ms@32k", 32)
    rows.append(("sleep(0) ping (per yield)", f"{ctr('yield_ping','per_yield')*1e9:.1f} ns", "-", "-", "<= 60 ns"))
    n, r = cpu("nop_await_io"), cpu("nop_raw_uring")
    rows.append(("NOP op round trip", f"{n:.0f} ns", f"raw liburing {r:.0f} ns", f"{n/r:.2f}x", "<= 1.3x"))
    for q, label in (("queue_handoff/1", "maxsize 1"), ("queue_handoff/64", "maxsize 64")):
        if q in med:
            rows.append((f"queue handoff (per item, {label})", f"{ctr(q,'per_item')*1e9:.1f} ns", "-", "-", "<= 100 ns"))
print("| benchmark | cogent | floor | ratio | target |")
print("|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
PY
grep -h "cold" "$out/hub.stderr" || true
