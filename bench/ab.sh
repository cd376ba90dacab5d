#!/usr/bin/env bash
# A/B of two percore binaries, interleaved: each run starts a fresh `BIN $AB_SERVER_FLAGS` (default
# `--cores 0`: 1 shard on CPU 0) on an empty data dir, drives it with percore-load
# `$AB_CLIENT_FLAGS` (default `--cpus 1`; `$AB_CONNS` connections, default 64; 1 s warm-up, 5 s
# measured) and prints
# req/s, server CPU µs/request (utime+stime from /proc/PID/stat), p99 and max latency, and at the
# end the medians and B's paired ratios to A (median, min–max).
# Usage: bench/ab.sh BIN_A BIN_B ROUNDS PATH [percore-load flags...], e.g.
#   bench/ab.sh /tmp/percore-old target/release/percore 3 /plaintext --pipeline 16
#   AB_SERVER_FLAGS='--shards 2' AB_CLIENT_FLAGS= bench/ab.sh A B 3 /plaintext -R 20000   # open loop
# A "binary" may be a command with flags, e.g. 'target/release/percore --no-multishot-poll'.
A=$1; B=$2; R=$3; shift 3; PATHQ=$1; shift
SERVER_FLAGS=${AB_SERVER_FLAGS---cores 0}
CLIENT_FLAGS=${AB_CLIENT_FLAGS---cpus 1}
CONNS=${AB_CONNS:-64}
cd "$(dirname "$0")/.."
OUT=$(mktemp -d /tmp/ab.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
run() {
  local bin=$1; shift
  # shellcheck disable=SC2086 # the flags are words
  $bin --bind 127.0.0.1:0 --data-dir "$OUT/data" $SERVER_FLAGS > "$OUT/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 50); do grep -q listening "$OUT/server.log" && break; sleep 0.1; done
  local addr; addr=$(grep -m1 listening "$OUT/server.log" | sed 's|listening on ||')
  if [ -z "$addr" ]; then
    echo "ab.sh: $bin did not start: $(tail -1 "$OUT/server.log")" >&2; kill "$pid" 2>/dev/null; exit 1
  fi
  # shellcheck disable=SC2086
  target/release/percore-load -c "$CONNS" -t 1 $CLIENT_FLAGS -d 1s "$@" "$addr$PATHQ" > /dev/null 2>&1
  local t0; t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  # A run that fails writes no JSON: the last run's must not stand in for it (found in review).
  rm -f "$OUT/run.json"
  # shellcheck disable=SC2086
  target/release/percore-load -c "$CONNS" -t 1 $CLIENT_FLAGS -d 5s "$@" --json "$OUT/run.json" "$addr$PATHQ" > "$OUT/load.out" 2>&1
  local code=$?
  local t1; t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null; rm -rf "$OUT/data"
  if [ "$code" -ne 0 ]; then
    # Errors (4xx/5xx answers count in `requests`, and a fast error looks cheap): not a result.
    echo "ab.sh: percore-load against $bin exited $code: $(head -1 "$OUT/load.out")" >&2; exit 1
  fi
  python3 - "$bin" "$t0" "$t1" "$OUT/run.json" <<'PY' | tee -a "$OUT/rows"
import json, os, sys
bin, t0, t1, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
run = json.load(open(path))["run"]; n = run["requests"]; lat = run["latency_us"]
cpu = (t1 - t0) / os.sysconf("SC_CLK_TCK") * 1e6 / n
print(f"{bin:40s} req/s {run['requests_per_s']:9.0f}  cpu us/req {cpu:.3f}  p99 {lat['p99']} us  max {lat['max']} us")
PY
}
# The order alternates (A B, B A, ...), so an order effect cancels: on the 2-CPU machine the same
# pair read 0.94x run A first and 1.065x run B first (bench/RESULTS.md run AG).
for i in $(seq "$R"); do
  if (( i % 2 )); then run "$A" "$@"; run "$B" "$@"; else run "$B" "$@"; run "$A" "$@"; fi
done
python3 - "$A" "$B" "$OUT/rows" <<'PY'
import statistics, sys
path = sys.argv[3]
lines = [line.split(" req/s ")[1].split() for line in open(path)]
runs = [(float(words[0]), float(words[words.index("us/req") + 1])) for words in lines]
# Pairs in the loop's order: A first in odd rounds, B first in even ones.
pairs = [(runs[k], runs[k + 1]) if k % 4 == 0 else (runs[k + 1], runs[k]) for k in range(0, len(runs) - 1, 2)]
for i, what in [(0, "req/s"), (1, "cpu us/req")]:
    xs, ys = [pa[i] for pa, _ in pairs], [pb[i] for _, pb in pairs]
    ratios = [y / x for x, y in zip(xs, ys)]
    print(f"{what:10s} median A {statistics.median(xs):.3f}  B {statistics.median(ys):.3f}  "
          f"B/A paired {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
PY
