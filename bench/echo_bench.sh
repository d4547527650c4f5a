#!/usr/bin/env bash
# echo_bench.sh — the echo-server comparison of DESIGN.md §6 (cogent vs the raw floors).
#
#   bench/echo_bench.sh [--build DIR] [--reps K] [--seconds T] [--conns "100 1000"] [--size 64]
#                       [--out DIR] [--server name=command]... [--c10k] [--c10k-only]
#
# Servers: by default raw_epoll=$BUILD/bench/raw_epoll_echo, raw_uring=$BUILD/bench/raw_uring_echo,
# plus cogent=$BUILD/examples/05_echo_server and monkey=$BUILD/examples/08_monkey_patch when built.
# Any --server replaces the defaults. A server is started as `command 0` (or with `{port}` in the
# command replaced by 0) and must print `port <N>` as its first stdout line. Names starting with
# `raw_` are the floors the others are compared against.
#
# For each rep (interleaved: rep 1 of every server, then rep 2, ...; server order rotates per
# rep) and each conns value: start the server pinned to cpu 0, run bench/echo_load pinned to
# cpu 1 for T seconds, take the server CPU time (utime+stime, /proc/<pid>/stat) over the measured
# window -> CPU µs per round trip, stop the server (SIGINT). Writes
#   $OUT/echo.csv          server,conns,rep,rtps,p50_us,p99_us,cpu_us_per_rt,errors
#   $OUT/echo_summary.md   medians, rtps vs the best raw floor, CPU/rt vs the leanest raw floor;
#                          then ratios paired within each rep (median over reps, per floor, and
#                          how many reps beat both floors) — also printed to stdout
#   $OUT/echo.png          gnuplot bar chart of median rtps per server per conns
#   $OUT/c10k.csv          with --c10k: 10,000 connections x --rounds 100 per server: errors and
#                          server RSS growth per connection (VmHWM at the end minus VmRSS before
#                          the first connect); appended to the summary
#   $OUT/logs/             server and load-tool stderr, raw JSON lines
set -euo pipefail

build_dir=build
reps=5
run_seconds=10
conns_list="100 1000"
size=64
out_dir=""
c10k=0
sweep=1
c10k_conns=10000
c10k_rounds=100
servers=()

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --build) build_dir=$2; shift 2 ;;
        --reps) reps=$2; shift 2 ;;
        --seconds) run_seconds=$2; shift 2 ;;
        --conns) conns_list=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --out) out_dir=$2; shift 2 ;;
        --server) servers+=("$2"); shift 2 ;;
        --c10k) c10k=1; shift ;;
        --c10k-only) c10k=1; sweep=0; shift ;;
        --c10k-conns) c10k_conns=$2; shift 2 ;;
        --c10k-rounds) c10k_rounds=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "echo_bench: unknown argument: $1" >&2; usage ;;
    esac
done

load_bin=$build_dir/bench/echo_load
if [[ ! -x $load_bin ]]; then
    echo "echo_bench: $load_bin not found (build first, or pass --build DIR)" >&2
    exit 1
fi
if [[ ${#servers[@]} -eq 0 ]]; then
    servers=("raw_epoll=$build_dir/bench/raw_epoll_echo" "raw_uring=$build_dir/bench/raw_uring_echo")
    [[ -x $build_dir/examples/05_echo_server ]] && servers+=("cogent=$build_dir/examples/05_echo_server")
    [[ -x $build_dir/examples/08_monkey_patch ]] && servers+=("monkey=$build_dir/examples/08_monkey_patch")
fi
command -v taskset >/dev/null || { echo "echo_bench: taskset (util-linux) is required" >&2; exit 1; }
have_gnuplot=1
command -v gnuplot >/dev/null || { have_gnuplot=0; echo "echo_bench: gnuplot not found, no PNG" >&2; }

[[ -n $out_dir ]] || out_dir=bench_out/echo-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out_dir/logs"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

server_names=()
server_cmds=()
for spec in "${servers[@]}"; do
    server_names+=("${spec%%=*}")
    server_cmds+=("${spec#*=}")
done
n_servers=${#server_names[@]}

# ---- helpers ---------------------------------------------------------------------------------

srv_pid=""
srv_port=""

# start_server NAME COMMAND LOGTAG: sets srv_pid / srv_port; returns 1 if it did not come up.
start_server() {
    local name=$1 cmd=$2 tag=$3 words
    if [[ $cmd == *"{port}"* ]]; then
        cmd=${cmd//\{port\}/0}
    else
        cmd="$cmd 0"
    fi
    read -ra words <<<"$cmd"
    local stdout_file=$out_dir/logs/$tag.server.out
    # Emptied here, not only by the redirection below: that runs in the background
    # child, and a file left by an earlier run into the same --out would give a stale port.
    : >"$stdout_file"
    taskset -c 0 "${words[@]}" >"$stdout_file" 2>"$out_dir/logs/$tag.server.err" &
    srv_pid=$!
    srv_port=""
    local i
    for ((i = 0; i < 200; i++)); do
        if [[ -s $stdout_file ]]; then
            srv_port=$(awk 'NR == 1 && $1 == "port" { print $2 }' "$stdout_file")
            [[ -n $srv_port ]] && return 0
        fi
        if ! kill -0 "$srv_pid" 2>/dev/null; then
            break
        fi
        sleep 0.05
    done
    echo "echo_bench: server $name did not print 'port <N>' (see $out_dir/logs/$tag.server.*)" >&2
    stop_server
    return 1
}

stop_server() {
    [[ -n $srv_pid ]] || return 0
    kill -INT "$srv_pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$srv_pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$srv_pid" 2>/dev/null; then
        echo "echo_bench: server pid $srv_pid ignored SIGINT, killing" >&2
        kill -KILL "$srv_pid" 2>/dev/null || true
    fi
    wait "$srv_pid" 2>/dev/null || true
    srv_pid=""
}
trap stop_server EXIT

# utime+stime of a pid in µs (fields 14, 15 of /proc/<pid>/stat, after the ")" of comm).
proc_cpu_us() {
    local stat rest
    stat=$(<"/proc/$1/stat") || { echo -1; return; }
    rest=${stat##*) }
    read -ra f <<<"$rest"
    echo $(((f[11] + f[12]) * 1000000 / $(getconf CLK_TCK)))
}

# json_field JSON KEY -> the raw value (numbers only in echo_load's output).
json_field() {
    sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" <<<"$1"
}

# ---- the sweep -------------------------------------------------------------------------------

csv=$out_dir/echo.csv
summary=$out_dir/echo_summary.md
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)

{
    echo "# Echo benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- machine: $(nproc) cpus, ${cpu_model:-unknown cpu}, kernel $(uname -r), load average at start: $(cut -d" " -f1-3 /proc/loadavg)"
    echo "- command: \`$0 --reps $reps --seconds $run_seconds --conns \"$conns_list\" --size $size\`"
    # shellcheck disable=SC2016  # literal backticks (markdown)
    echo "- servers: $(for i in "${!server_names[@]}"; do printf '%s=`%s` ' "${server_names[$i]}" "${server_cmds[$i]}"; done)"
    echo "- server pinned to cpu 0, echo_load pinned to cpu 1; $size-byte ping-pong; medians of $reps interleaved reps"
    echo
} >"$summary.head"

if [[ $sweep -eq 1 ]]; then
    echo "server,conns,rep,rtps,p50_us,p99_us,cpu_us_per_rt,errors" >"$csv"
    for ((rep = 1; rep <= reps; rep++)); do
        for conns in $conns_list; do
            for ((k = 0; k < n_servers; k++)); do
                s=$(((k + rep - 1) % n_servers))
                name=${server_names[$s]}
                tag=$name.c$conns.r$rep
                if ! start_server "$name" "${server_cmds[$s]}" "$tag"; then
                    echo "$name,$conns,$rep,NA,NA,NA,NA,-1" >>"$csv"
                    continue
                fi
                cpu0=$(proc_cpu_us "$srv_pid")
                json=$(taskset -c 1 "$load_bin" --host 127.0.0.1 --port "$srv_port" --conns "$conns" \
                    --size "$size" --seconds "$run_seconds" --json --server-pid "$srv_pid" \
                    2>"$out_dir/logs/$tag.load.err") || true
                cpu1=$(proc_cpu_us "$srv_pid")
                stop_server
                echo "$name conns=$conns rep=$rep $json" >>"$out_dir/logs/echo.jsonl"
                if [[ -z $json ]]; then
                    echo "echo_bench: load failed for $tag (see logs)" >&2
                    echo "$name,$conns,$rep,NA,NA,NA,NA,-1" >>"$csv"
                    continue
                fi
                rtps=$(json_field "$json" rtps)
                rts=$(json_field "$json" round_trips)
                cpu_rt=$(json_field "$json" cpu_us_per_rt)
                if [[ $cpu_rt == -* ]] && [[ $rts -gt 0 ]]; then
                    # echo_load could not read /proc: fall back to the before/after samples.
                    cpu_rt=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$rts" 'BEGIN { printf "%.4f", (b - a) / n }')
                fi
                row="$name,$conns,$rep,$rtps,$(json_field "$json" p50_us),$(json_field "$json" p99_us),$cpu_rt,$(json_field "$json" errors)"
                echo "$row" >>"$csv"
                printf '  %-12s conns=%-6s rep=%-3s rtps=%-10s p99=%-9s cpu/rt=%s\n' "$name" "$conns" "$rep" \
                    "$rtps" "$(json_field "$json" p99_us)" "$cpu_rt" >&2
            done
        done
    done

    # Medians per (server, conns) in first-seen order, then ratios vs the raw floors.
    # mawk-compatible (no asort).
    awk -F, -v order="${server_names[*]}" -v conns_order="$conns_list" '
        function median(key, col,    n, i, j, t, v) {
            n = 0
            split(vals[key, col], v, " ")
            for (i in v) { if (v[i] != "" && v[i] != "NA") { a[++n] = v[i] + 0 } }
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) { a[j + 1] = a[j] } a[j + 1] = t }
            if (n == 0) { return "NA" }
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        NR > 1 {
            key = $1 SUBSEP $2
            for (c = 4; c <= 7; c++) { vals[key, c] = vals[key, c] " " $c }
            errs[key] += ($8 == "NA" ? 0 : $8)
            seen[key] = 1
        }
        END {
            ns = split(order, names, " ")
            nc = split(conns_order, cl, " ")
            print "| server | conns | rtps | vs best floor | p50 µs | p99 µs | CPU µs/rt | vs leanest floor | errors |"
            print "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
            for (ci = 1; ci <= nc; ci++) {
                conns = cl[ci]
                best_rtps = -1; lean_cpu = -1; best_name = ""; lean_name = ""
                for (si = 1; si <= ns; si++) {
                    key = names[si] SUBSEP conns
                    if (!(key in seen)) { continue }
                    for (c = 4; c <= 7; c++) { med[key, c] = median(key, c) }
                    if (names[si] ~ /^raw_/) {
                        if (med[key, 4] != "NA" && med[key, 4] > best_rtps) { best_rtps = med[key, 4]; best_name = names[si] }
                        if (med[key, 7] != "NA" && med[key, 7] >= 0 && (lean_cpu < 0 || med[key, 7] < lean_cpu)) { lean_cpu = med[key, 7]; lean_name = names[si] }
                    }
                }
                for (si = 1; si <= ns; si++) {
                    key = names[si] SUBSEP conns
                    if (!(key in seen)) { continue }
                    r1 = (best_rtps > 0 && med[key, 4] != "NA") ? sprintf("%.2fx %s", med[key, 4] / best_rtps, best_name) : "n/a"
                    r2 = (lean_cpu > 0 && med[key, 7] != "NA") ? sprintf("%.2fx %s", med[key, 7] / lean_cpu, lean_name) : "n/a"
                    printf "| %s | %s | %s | %s | %s | %s | %s | %s | %d |\n", names[si], conns,
                        (med[key, 4] == "NA" ? "NA" : sprintf("%.0f", med[key, 4])), r1,
                        (med[key, 5] == "NA" ? "NA" : sprintf("%.1f", med[key, 5])),
                        (med[key, 6] == "NA" ? "NA" : sprintf("%.1f", med[key, 6])),
                        (med[key, 7] == "NA" ? "NA" : sprintf("%.3f", med[key, 7])), r2, errs[key]
                }
            }
        }' "$csv" >"$out_dir/echo_table.md"

    # Paired ratios: the reps are interleaved, so the servers of one rep ran minutes apart at most
    # and this host's slow swings (±20 % between reps) cancel out of a within-rep ratio. For each
    # server that is not a floor: per rep, its rtps over each floor's rtps in that rep; the median
    # of those per floor; and the count of reps where it had at least the rtps of both floors.
    awk -F, -v order="${server_names[*]}" -v conns_order="$conns_list" '
        function med(list,    n, i, j, t, v) {
            n = split(list, v, " ")
            for (i = 2; i <= n; i++) { t = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) { v[j + 1] = v[j] } v[j + 1] = t }
            if (n == 0) { return "NA" }
            return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        }
        NR > 1 && $4 != "NA" { rt[$1, $2, $3] = $4 + 0; cpu[$1, $2, $3] = $7 + 0; reps[$3] = 1; seen[$1] = 1 }
        END {
            ns = split(order, names, " "); nc = split(conns_order, cl, " ")
            nf = 0
            for (si = 1; si <= ns; si++) { if (names[si] ~ /^raw_/ && (names[si] in seen)) { floors[++nf] = names[si] } }
            if (nf == 0) { exit }
            print "| server | conns | paired reps | rtps ratio, median per floor | reps at >= every floor | CPU/rt ratio, median per floor |"
            print "|---|---:|---:|---|---:|---|"
            for (ci = 1; ci <= nc; ci++) {
                c = cl[ci]
                for (si = 1; si <= ns; si++) {
                    s = names[si]
                    if (s ~ /^raw_/ || !(s in seen)) { continue }
                    n = 0; wins = 0; split("", rl); split("", cr)
                    for (r in reps) {
                        if (!((s, c, r) in rt)) { continue }
                        ok = 1; beat = 1
                        for (k = 1; k <= nf; k++) { if (!((floors[k], c, r) in rt) || rt[floors[k], c, r] <= 0) { ok = 0 } }
                        if (!ok) { continue }
                        n++
                        for (k = 1; k <= nf; k++) {
                            f = floors[k]
                            rl[k] = rl[k] " " rt[s, c, r] / rt[f, c, r]
                            if (cpu[f, c, r] > 0 && cpu[s, c, r] > 0) { cr[k] = cr[k] " " cpu[s, c, r] / cpu[f, c, r] }
                            if (rt[s, c, r] < rt[f, c, r]) { beat = 0 }
                        }
                        wins += beat
                    }
                    if (n == 0) { continue }
                    a = ""; b = ""
                    for (k = 1; k <= nf; k++) {
                        m1 = med(rl[k]); m2 = med(cr[k])
                        a = a (k > 1 ? ", " : "") sprintf("%.3fx %s", m1, floors[k])
                        b = b (k > 1 ? ", " : "") (m2 == "NA" ? "n/a" : sprintf("%.3fx %s", m2, floors[k]))
                    }
                    printf "| %s | %s | %d | %s | %d of %d | %s |\n", s, c, n, a, wins, n, b
                }
            }
        }' "$csv" >"$out_dir/echo_paired.md"

    # Plot data: one row per conns value, one column per server (median rtps).
    plot_dat=$out_dir/echo_plot.dat
    awk -F, -v order="${server_names[*]}" -v conns_order="$conns_list" '
        NR > 1 && $4 != "NA" { key = $1 SUBSEP $2; vals[key] = vals[key] " " $4 }
        END {
            ns = split(order, names, " "); nc = split(conns_order, cl, " ")
            printf "conns"; for (si = 1; si <= ns; si++) { printf " %s", names[si] } printf "\n"
            for (ci = 1; ci <= nc; ci++) {
                printf "%s", cl[ci]
                for (si = 1; si <= ns; si++) {
                    n = split(vals[names[si] SUBSEP cl[ci]], v, " ")
                    for (i = 2; i <= n; i++) { t = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) { v[j + 1] = v[j] } v[j + 1] = t }
                    if (n == 0) { printf " 0" } else { printf " %s", (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }
                }
                printf "\n"
            }
        }' "$csv" >"$plot_dat"
    if [[ $have_gnuplot -eq 1 ]]; then
        gnuplot <<EOF || echo "echo_bench: gnuplot failed" >&2
set terminal pngcairo size 1000,600 font "sans,11" noenhanced
set output '$out_dir/echo.png'
set title "Echo ping-pong, ${size} B, median of ${reps} reps (server cpu0, load cpu1)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set ylabel "round trips / s"
set xlabel "connections"
set yrange [0:*]
set format y "%.0s%c"
set grid ytics
set key outside right top
plot for [i=2:$((n_servers + 1))] '$plot_dat' using i:xtic(1) title columnheader(i)
EOF
    fi
fi

# ---- c10k ------------------------------------------------------------------------------------

if [[ $c10k -eq 1 ]]; then
    c10k_csv=$out_dir/c10k.csv
    echo "server,conns,rounds,round_trips,errors,seconds,p99_us,rss_before_kb,rss_peak_kb,rss_per_conn_kb" >"$c10k_csv"
    for ((s = 0; s < n_servers; s++)); do
        name=${server_names[$s]}
        tag=$name.c10k
        if ! start_server "$name" "${server_cmds[$s]}" "$tag"; then
            echo "$name,$c10k_conns,$c10k_rounds,0,-1,NA,NA,NA,NA,NA" >>"$c10k_csv"
            continue
        fi
        json=$(taskset -c 1 "$load_bin" --host 127.0.0.1 --port "$srv_port" --conns "$c10k_conns" \
            --size "$size" --rounds "$c10k_rounds" --seconds 120 --json --server-pid "$srv_pid" \
            2>"$out_dir/logs/$tag.load.err") || true
        stop_server
        echo "$name c10k $json" >>"$out_dir/logs/echo.jsonl"
        if [[ -z $json ]]; then
            echo "$name,$c10k_conns,$c10k_rounds,0,-1,NA,NA,NA,NA,NA" >>"$c10k_csv"
            continue
        fi
        before=$(json_field "$json" server_rss_before_kb)
        peak=$(json_field "$json" server_rss_peak_kb)
        per_conn=$(awk -v a="$before" -v b="$peak" -v n="$c10k_conns" 'BEGIN { printf "%.2f", (b - a) / n }')
        echo "$name,$c10k_conns,$c10k_rounds,$(json_field "$json" round_trips),$(json_field "$json" errors),$(json_field "$json" seconds),$(json_field "$json" p99_us),$before,$peak,$per_conn" >>"$c10k_csv"
        printf '  %-12s c10k errors=%s rss/conn=%s kB\n' "$name" "$(json_field "$json" errors)" "$per_conn" >&2
    done
    awk -F, 'NR == 1 {
            print "| server | conns | rounds | round trips | errors | seconds | p99 µs | RSS before kB | RSS peak kB | RSS/conn kB |"
            print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            next
        }
        { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }' \
        "$c10k_csv" >"$out_dir/c10k_table.md"
fi

# ---- summary ---------------------------------------------------------------------------------

{
    cat "$summary.head"
    if [[ $sweep -eq 1 ]]; then
        echo "## Ping-pong throughput, latency, server CPU"
        echo
        cat "$out_dir/echo_table.md"
        echo
        echo "rtps ratio vs the raw floor with the most rtps; CPU/rt ratio vs the raw floor with the least CPU per round trip."
        echo
        if [[ -s $out_dir/echo_paired.md ]]; then
            echo "Paired by rep (each server over each floor within the same interleaved rep, then the median over reps):"
            echo
            cat "$out_dir/echo_paired.md"
            echo
        fi
        echo "![echo rtps](echo.png)"
        echo
    fi
    if [[ $c10k -eq 1 ]]; then
        echo "## c10k: $c10k_conns connections x $c10k_rounds round trips"
        echo
        cat "$out_dir/c10k_table.md"
        echo
        echo "RSS/conn = (server VmHWM after the run - VmRSS before the first connect) / connections."
        echo
    fi
} >"$summary"
rm -f "$summary.head"
cat "$summary"
echo "echo_bench: results in $out_dir" >&2
