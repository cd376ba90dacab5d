#!/usr/bin/env bash
# bench/load_vs_wrk.sh: compares percore-load with wrk against the same server, interleaved
# A/B/B/A over rounds, client pinned to one CPU and server to another; prints medians and ratios.
#
# Usage: bench/load_vs_wrk.sh [-r ROUNDS] [-d SECONDS] [-c CONNS] [--depth N]
#                             [--server-cpu N] [--client-cpu N] [--port P] [--server 'CMD {port}']
#                             [--url-path /plaintext] [--load PATH] [--load-args 'ARGS']
#                             [--client-quota PERCENT]
# --client-quota: each client run gets PERCENT of one CPU (a cgroup CPU quota, v1 or v2; needs
#   root), so the client, not the server, is the bottleneck and req/s compares the clients'
#   efficiency; percore-load then runs with --busy-poll 0 (spinning would spend the quota).
# Default server: the raw epoll peer (../shared/lab/peers/epoll, built under /tmp/percore-peers).
# Needs: wrk, python3 (for child CPU time), taskset.
set -euo pipefail

ROUNDS=5
DUR=5
CONNS=64
DEPTH=16
SERVER_CPU=0
CLIENT_CPU=1
PORT=18090
URL_PATH=/plaintext
SERVER=${PEER_EPOLL:-/tmp/percore-peers/target/release/peer-epoll}' {port} 1'
LOAD=${PERCORE_LOAD:-target/release/percore-load}
LOAD_ARGS=""
QUOTA=""

while [[ $# -gt 0 ]]; do
  case $1 in
    -r) ROUNDS=$2; shift 2 ;;
    -d) DUR=$2; shift 2 ;;
    -c) CONNS=$2; shift 2 ;;
    --depth) DEPTH=$2; shift 2 ;;
    --server-cpu) SERVER_CPU=$2; shift 2 ;;
    --client-cpu) CLIENT_CPU=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --server) SERVER=$2; shift 2 ;;
    --url-path) URL_PATH=$2; shift 2 ;;
    --load) LOAD=$2; shift 2 ;;
    --load-args) LOAD_ARGS=$2; shift 2 ;;
    --client-quota) QUOTA=$2; shift 2 ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

for tool in wrk python3 taskset "$LOAD"; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/load_vs_wrk.XXXXXX)
URL="http://127.0.0.1:$PORT$URL_PATH"
cat > "$WORK/pipeline.lua" <<'LUA'
init = function(args)
  local r = {}
  for i = 1, (tonumber(args[1]) or 1) do r[i] = wrk.format() end
  req = table.concat(r)
end
request = function() return req end
LUA
# Runs a command, keeps its stdout, prints the CPU seconds (user+sys) it used.
cat > "$WORK/cpu.py" <<'PY'
import resource, subprocess, sys
with open(sys.argv[1], "w") as out:
    subprocess.run(sys.argv[2:], stdout=out, stderr=subprocess.STDOUT)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{r.ru_utime + r.ru_stime:.4f}")
PY

# $WORK/in_quota.sh CMD...: runs CMD inside the client cgroup when --client-quota is set.
CGROUP=""
if [[ -n $QUOTA ]]; then
  if [[ -d /sys/fs/cgroup/cpu ]]; then
    CGROUP=/sys/fs/cgroup/cpu/load_vs_wrk
    mkdir -p "$CGROUP"
    echo 100000 > "$CGROUP/cpu.cfs_period_us"
    echo $((QUOTA * 1000)) > "$CGROUP/cpu.cfs_quota_us"
  else
    CGROUP=/sys/fs/cgroup/load_vs_wrk
    mkdir -p "$CGROUP"
    echo "$((QUOTA * 1000)) 100000" > "$CGROUP/cpu.max"
  fi
  LOAD_ARGS="$LOAD_ARGS --busy-poll 0"
fi
# A wrapper script (the clients run under python's rusage counter, which cannot call a function).
cat > "$WORK/in_quota.sh" <<SH
#!/usr/bin/env bash
[[ -n "$CGROUP" ]] && echo \$\$ > "$CGROUP/cgroup.procs"
exec "\$@"
SH
chmod +x "$WORK/in_quota.sh"

server_cmd=${SERVER//\{port\}/$PORT}
taskset -c "$SERVER_CPU" bash -c "exec $server_cmd" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true; wait $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
  sleep 0.1
done

# This machine is shared: before each run, wait (up to 60 s) until the CPUs are >= 90% idle over
# half a second, so a neighbour's compile does not land in one tool's run only.
wait_idle() {
  local i a b
  for i in $(seq 120); do
    a=$(awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
    sleep 0.5
    b=$(awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); exit !((y[1] - x[1]) >= 0.9 * (y[2] - x[2])) }' && return 0
  done
  echo "warning: CPUs never idle for 60 s; measuring anyway" >&2
}

server_cpu_s() { awk '{ printf "%.4f", ($14 + $15) / 100 }' "/proc/$SERVER_PID/stat"; }

# to_us VALUE_WITH_UNIT: 417.00us / 1.5ms / 2s -> microseconds
to_us() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1e6; else print n }'; }

# run TOOL DEPTH: one measured run; appends "rps p50_us p99_us client_us_per_req server_us_per_req" to $WORK/TOOL-DEPTH
run() {
  local tool=$1 depth=$2 out="$WORK/$1-$2.out" client_s before after
  wait_idle
  before=$(server_cpu_s)
  if [[ $tool == percore-load ]]; then
    # --cpus pins the thread (taskset alone would too) and tells percore-load the core is its own.
    # shellcheck disable=SC2086
    client_s=$(python3 "$WORK/cpu.py" "$out" "$WORK/in_quota.sh" taskset -c "$CLIENT_CPU" "$LOAD" -t 1 -c "$CONNS" -d "${DUR}s" --pipeline "$depth" --cpus "$CLIENT_CPU" $LOAD_ARGS "$URL")
  else
    local script=()
    [[ $depth -gt 1 ]] && script=(-s "$WORK/pipeline.lua")
    client_s=$(python3 "$WORK/cpu.py" "$out" "$WORK/in_quota.sh" taskset -c "$CLIENT_CPU" wrk -t1 -c "$CONNS" -d "${DUR}s" --latency "${script[@]}" "$URL" -- "$depth")
  fi
  after=$(server_cpu_s)
  local rps p50 p99 requests
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  requests=$(awk '/ requests in / { print $1 }' "$out")
  p50=$(to_us "$(awk '$1 == "50%" { print $2; exit }' "$out")")
  p99=$(to_us "$(awk '$1 == "99%" { print $2; exit }' "$out")")
  awk -v rps="$rps" -v p50="$p50" -v p99="$p99" -v c="$client_s" -v s0="$before" -v s1="$after" -v n="$requests" \
    'BEGIN { printf "%s %s %s %.3f %.3f\n", rps, p50, p99, c * 1e6 / n, (s1 - s0) * 1e6 / n }' >> "$WORK/$tool-$depth"
  cat "$out" >> "$WORK/all.log"
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
column_median() { awk -v c="$2" '{ print $c }' "$1" | median; }

echo "# percore-load vs wrk: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "server: $server_cmd on CPU $SERVER_CPU; clients on CPU $CLIENT_CPU, 1 thread, $CONNS connections, ${DUR}s x $ROUNDS rounds, interleaved"
echo "command: $0 -r $ROUNDS -d $DUR -c $CONNS --depth $DEPTH${QUOTA:+ --client-quota $QUOTA}; percore-load extra args: '${LOAD_ARGS}'"
echo "cpu: $(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2; exit }'), $(nproc) CPUs, kernel $(uname -r)"
# Warm both clients and the server once, unmeasured.
taskset -c "$CLIENT_CPU" wrk -t1 -c "$CONNS" -d 1s "$URL" >/dev/null
taskset -c "$CLIENT_CPU" "$LOAD" -c "$CONNS" -d 1s "$URL" >/dev/null || true
for depth in 1 "$DEPTH"; do
  for round in $(seq "$ROUNDS"); do
    # A B in odd rounds, B A in even rounds, so neither tool always goes first.
    if (( round % 2 )); then order="percore-load wrk"; else order="wrk percore-load"; fi
    for tool in $order; do run "$tool" "$depth"; done
  done
done

echo
echo "| pipeline | tool | req/s median | min | max | p50 µs | p99 µs | client CPU µs/req | server CPU µs/req |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
for depth in 1 "$DEPTH"; do
  for tool in percore-load wrk; do
    f="$WORK/$tool-$depth"
    printf "| %s | %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f |\n" "$depth" "$tool" \
      "$(column_median "$f" 1)" "$(awk '{print $1}' "$f" | sort -n | head -1)" "$(awk '{print $1}' "$f" | sort -n | tail -1)" \
      "$(column_median "$f" 2)" "$(column_median "$f" 3)" "$(column_median "$f" 4)" "$(column_median "$f" 5)"
  done
done
echo
# Rounds run the two tools back to back, so the ratio within a round is less exposed to a
# neighbour's load than the ratio of medians; both are printed.
for depth in 1 "$DEPTH"; do
  a=$(column_median "$WORK/percore-load-$depth" 1); b=$(column_median "$WORK/wrk-$depth" 1)
  per_round=$(paste "$WORK/percore-load-$depth" "$WORK/wrk-$depth" | awk '{ print $1 / $6 }' | median)
  ca=$(column_median "$WORK/percore-load-$depth" 4); cb=$(column_median "$WORK/wrk-$depth" 4)
  awk -v a="$a" -v b="$b" -v r="$per_round" -v ca="$ca" -v cb="$cb" -v d="$depth" 'BEGIN {
    printf "pipeline %s: percore-load / wrk req/s = %.2fx (ratio of medians), %.2fx (median of per-round ratios); wrk / percore-load client CPU per request = %.2fx\n", d, a / b, r, cb / ca }'
done
echo "raw outputs: $WORK/all.log"
