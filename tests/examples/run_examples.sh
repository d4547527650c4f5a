#!/usr/bin/env bash
# tests/examples/run_examples.sh EXAMPLES_DIR — runs the numbered examples as a user would and
# checks what each must show (exit status and the lines that prove the point). Registered as the
# meson test `examples`; it fails on the first example that misbehaves.
set -uo pipefail
ex=$1
fail() { echo "FAIL: $*" >&2; exit 1; }
out=$(mktemp) && trap 'rm -f "$out" "$out.err"; [ -n "${srv:-}" ] && kill "$srv" 2>/dev/null' EXIT

check() {  # check NAME PATTERN...: the last run's output holds every pattern
  local name=$1; shift
  for p in "$@"; do grep -qE -- "$p" "$out" || { cat "$out" >&2; fail "$name: no line matching '$p'"; }; done
  echo "ok: $name"
}

"$ex/01_manual_switch" >"$out" 2>&1 || fail "01 exited $?"
check 01_manual_switch '^---A-- \(counter 0\)' '^---B-- \(counter 1\)' 'returned 6 to main \(dead: yes\)'

"$ex/02_auto_switch" >"$out" 2>&1 || fail "02 exited $?"
check 02_auto_switch '^g1 4' '^g3 4'

"$ex/03_manual_vs_auto" >"$out" 2>&1 || fail "03 exited $?"
# C: ten 1 s sleeps through the hub take about 1 s in all, not 10.
awk '/^C\./ { for (i = 1; i <= NF; ++i) if ($i == "wall") w = $(i + 1) } END { exit !(w > 0.9 && w < 2.5) }' "$out" \
  || { cat "$out" >&2; fail "03: automatic switching did not overlap the waits"; }
check 03_manual_vs_auto '^C\. automatic'

"$ex/04_producer_consumer" >"$out" 2>&1 || fail "04 exited $?"
check 04_producer_consumer 'consumers ate 10 dishes in all; unfinished: 0'

"$ex/07_upper_server" --selftest >"$out" 2>&1 || fail "07 --selftest exited $?"
[ "$(grep -c 'ok: 3 concurrent clients answered in capitals' "$out")" -eq 3 ] || { cat "$out" >&2; fail "07: not all three modes passed"; }
echo "ok: 07_upper_server --selftest"

# 05, 08 and 09 are servers: start each, drive it with 06 (50 client fibers, 1 s), stop it with SIGINT.
# 09 runs twice (two worker threads, then two worker processes sharing the port): each worker must have
# served some of the 50 clients (SO_REUSEPORT spreads them; all 50 on one worker: 2^-49) and said so.
# With processes, worker 1 is then killed (SIGKILL): the supervisor must replace it, and the
# replacement must serve some of a second run's 50 clients.
for server in 05_echo_server 08_monkey_patch "09_many_cores --threads" "09_many_cores --processes"; do
  [ -x "$ex/${server%% *}" ] || continue
  args=0
  case $server in 09_*) args="--workers 2 0" ;; esac
  # shellcheck disable=SC2086  # the mode flag and the arguments are words
  "$ex/"$server $args >"$out" 2>"$out.err" &
  srv=$!
  port=
  for _ in $(seq 100); do
    port=$(awk '/^port /{print $2; exit}' "$out")
    [ -n "$port" ] && break
    sleep 0.05
  done
  [ -n "$port" ] || fail "$server did not print its port"
  runs=$(mktemp)
  "$ex/06_echo_client" "$port" 50 1 >"$runs" 2>&1 || { cat "$runs" >&2; rm -f "$runs"; fail "06 against $server exited non-zero"; }
  grep -qE '^50 connections, [1-9][0-9]* round trips' "$runs" || { cat "$runs" >&2; rm -f "$runs"; fail "06 against $server: no round trips"; }
  rm -f "$runs"
  case $server in
    *--processes)  # the supervisor replaces a worker that dies; the replacement serves
      victim=$(awk '/^worker 1 ready \(process /{sub(/\)/, "", $5); print $5; exit}' "$out")
      [ -n "$victim" ] || { cat "$out" >&2; fail "$server: no pid for worker 1"; }
      kill -KILL "$victim"
      for _ in $(seq 100); do
        grep -q '^worker 1 restarted (process [0-9]*)' "$out" && break
        sleep 0.05
      done
      grep -q '^worker 1 restarted (process [0-9]*)' "$out" || { cat "$out" >&2; fail "$server: worker 1 was not restarted"; }
      # The dead worker's listener outlives its process for a moment (the kernel tears its io_uring
      # ring down asynchronously, and a pending accept holds the socket): a client the kernel hands
      # to it then is reset. Wait until the port has two listeners again (as 09's header explains).
      hexport=$(printf ':%04X' "$port")
      for _ in $(seq 100); do
        [ "$(awk -v p="$hexport" '$4 == "0A" && substr($2, length($2) - 4) == p' /proc/net/tcp | wc -l)" -eq 2 ] && break
        sleep 0.05
      done
      runs=$(mktemp)
      "$ex/06_echo_client" "$port" 50 1 >"$runs" 2>&1 || { cat "$runs" "$out.err" >&2; rm -f "$runs"; fail "06 against $server after a restart exited non-zero"; }
      grep -qE '^50 connections, [1-9][0-9]* round trips' "$runs" || { cat "$runs" >&2; rm -f "$runs"; fail "06 against $server after a restart: no round trips"; }
      rm -f "$runs"
      ;;
  esac
  kill -INT "$srv"
  wait "$srv"
  rc=$?
  srv=
  [ "$rc" -eq 0 ] || fail "$server exited $rc after SIGINT"
  case $server in
    09_*) check "06_echo_client -> $server" '^worker 0 \((thread|process) [0-9]+\): [1-9][0-9]* clients' \
                '^worker 1 \((thread|process) [0-9]+\): [1-9][0-9]* clients' ;;
    *) echo "ok: 06_echo_client -> $server" ;;
  esac
done
echo "all examples ok"
