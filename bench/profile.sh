#!/usr/bin/env bash
# CPU profile of percore under load: starts percore (1 shard, CPU 0), drives it with
# wrk -t1 on CPU 1 and records `perf record -e cpu-clock -g` of the server during the run,
# then writes the flat report (self time) and the percore:: symbols to bench/out/profile-<stamp>/.
#
# Usage: bench/profile.sh [plaintext|pipelined|json] [SECONDS] [CONNS]   (default plaintext 10 64)
#   percore binary: $PERCORE_BIN, else /tmp/percore-bench-target/release/percore, else target/release/percore
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
PEERS=$REPO/../shared/lab/peers
SCEN=${1:-plaintext}; DUR=${2:-10}; CONNS=${3:-64}; PORT=${PORT:-18075}
BIN=${PERCORE_BIN:-}
for c in /tmp/percore-bench-target/release/percore "$REPO/target/release/percore"; do
  [ -z "$BIN" ] && [ -x "$c" ] && BIN=$c
done
[ -n "$BIN" ] || { echo "no percore binary" >&2; exit 1; }
OUT=$BENCH/out/profile-$(date +%Y%m%d-%H%M%S)-$SCEN-c$CONNS; mkdir -p "$OUT"
taskset -c 0 "$BIN" --bind 127.0.0.1:$PORT --cores 0 > "$OUT/server.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null --max-time 1 http://127.0.0.1:$PORT/plaintext && break; sleep 0.1; done
case $SCEN in
  plaintext) ARGS=(http://127.0.0.1:$PORT/plaintext) ;;
  json) ARGS=(http://127.0.0.1:$PORT/json) ;;
  pipelined) ARGS=(-s "$PEERS/scripts/pipeline.lua" http://127.0.0.1:$PORT/plaintext -- 16) ;;
  *) echo "unknown scenario $SCEN" >&2; exit 2 ;;
esac
taskset -c 1 wrk -t1 -c"$CONNS" -d1s http://127.0.0.1:$PORT/plaintext > /dev/null
taskset -c 1 wrk -t1 -c"$CONNS" -d$((DUR + 2))s --latency "${ARGS[@]}" > "$OUT/wrk.txt" &
WRK=$!
sleep 1
perf record -e cpu-clock -g -p $PID -o "$OUT/perf.data" -- sleep "$DUR" 2> "$OUT/perf-record.log"
wait $WRK
perf report -i "$OUT/perf.data" --no-children --percent-limit 0.5 --stdio 2>/dev/null > "$OUT/report-full.txt"
perf report -i "$OUT/perf.data" --no-children --percent-limit 2 --stdio 2>/dev/null > "$OUT/report.txt"
# flat self-time list, and the same restricted to percore's own code
perf report -i "$OUT/perf.data" --no-children -g none --percent-limit 0.3 --stdio 2>/dev/null \
  | grep -E '^ +[0-9]' > "$OUT/flat.txt"
grep 'percore::' "$OUT/flat.txt" > "$OUT/flat-percore.txt" || true
# inclusive (children) cost of percore:: functions
perf report -i "$OUT/perf.data" --children -g none --percent-limit 1 --stdio 2>/dev/null \
  | grep -E '^ +[0-9]' | grep 'percore::' > "$OUT/inclusive-percore.txt" || true
echo "== $SCEN: $(grep Requests/sec "$OUT/wrk.txt")"
echo "== top self time (all):"; head -25 "$OUT/flat.txt"
echo "== self time in percore:: code:"; cat "$OUT/flat-percore.txt"
echo "== inclusive time of percore:: functions:"; head -25 "$OUT/inclusive-percore.txt"
echo "files: $OUT"
