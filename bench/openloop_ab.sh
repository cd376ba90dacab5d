#!/usr/bin/env bash
# Open-loop A/B of two percore builds, interleaved: each run starts a fresh `BIN --shards N`
# (pinned, as by default), drives it with percore-load at a fixed rate (unpinned, 64
# connections, 1 s warm-up, 5 s measured) and prints server CPU µs per request
# (utime+stime from /proc/PID/stat) and the latency tail.
# Usage: bench/openloop_ab.sh BIN_A BIN_B ROUNDS SHARDS RATE PATH, e.g.
#   bench/openloop_ab.sh /tmp/percore-old target/release/percore 3 2 20000 /plaintext
set -euo pipefail
A=$1; B=$2; R=$3; SHARDS=$4; RATE=$5; PATHQ=$6
cd "$(dirname "$0")/.."
OUT=$(mktemp -d /tmp/openloop-ab.XXXXXX)
run() {
  local bin=$1
  "$bin" --bind 127.0.0.1:0 --shards "$SHARDS" --data-dir "$OUT/data" > "$OUT/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 50); do grep -q listening "$OUT/server.log" && break; sleep 0.1; done
  local addr; addr=$(grep -m1 listening "$OUT/server.log" | sed 's|listening on ||')
  target/release/percore-load -c 64 -t 1 -R "$RATE" -d 1s "$addr$PATHQ" > /dev/null 2>&1
  local t0; t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  target/release/percore-load -c 64 -t 1 -R "$RATE" -d 5s --json "$OUT/run.json" "$addr$PATHQ" > /dev/null 2>&1
  local t1; t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$OUT/data"
  python3 - "$bin" "$t0" "$t1" "$OUT/run.json" <<'PY'
import json, os, sys
bin, t0, t1, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
run = json.load(open(path))["run"]; n = run["requests"]; lat = run["latency_us"]
tick = os.sysconf("SC_CLK_TCK")
print(f"{bin:40s} req/s {n / 5:8.0f}  cpu us/req {(t1 - t0) / tick * 1e6 / n:6.2f}  p99 {lat['p99']} us  max {lat['max']} us")
PY
}
for _ in $(seq "$R"); do run "$A"; run "$B"; done
rm -rf "$OUT"
