#!/usr/bin/env bash
# Looks for lost cross-shard wake-ups. 2 shards; one connection sends GET /stats 200 times a
# second (a mesh round trip to the other shard, which has no connection, so only the mesh's
# notify can wake it from its park). A lost wake-up shows as a stall until that shard's next
# timer (the transaction tick, 50 ms): compare max latencies of two builds. With a scenario,
# also 8 connections of cross-shard transfers at 2000/s (there other requests mask a lost wake).
# Usage: bench/wakeups.sh BIN_A BIN_B ROUNDS [TRANSFERS_SCENARIO.toml]
#   (a transfers-cross.toml written by bench/txn_vs_redis.py under bench/out/txn-*/)
set -euo pipefail
A=$1; B=$2; R=$3; SCEN=${4:-}
cd "$(dirname "$0")/.."
OUT=$(mktemp -d /tmp/wakeups.XXXXXX)
run() {
  local bin=$1
  "$bin" --bind 127.0.0.1:0 --shards 2 --data-dir "$OUT/data" > "$OUT/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 50); do grep -q listening "$OUT/server.log" && break; sleep 0.1; done
  local addr; addr=$(grep -m1 listening "$OUT/server.log" | sed 's|listening on ||')
  target/release/percore-load -c 1 -t 1 -R 200 -d 20s --timeout 5s --json "$OUT/stats.json" "$addr/stats" > /dev/null 2>&1 || true
  local files=("$OUT/stats.json")
  if [ -n "$SCEN" ]; then
    target/release/percore-load -c 8 -t 1 -R 2000 -d 15s --timeout 5s --scenario "$SCEN" --json "$OUT/tx.json" "$addr" > /dev/null 2>&1 || true  # 4xx: the accounts are not seeded
    files+=("$OUT/tx.json")
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$OUT/data"
  python3 - "$bin" "${files[@]}" <<'PY'
import json, sys
for path in sys.argv[2:]:
    run = json.load(open(path))["run"]; lat = run["latency_us"]
    print(f"{sys.argv[1]:40s} {path.split('/')[-1]:10s} n {lat['count']:6d} timeouts {run['errors']['timeout']} "
          f"p99 {lat['p99']:5d} us  p99.99 {lat['p99_99']:6d} us  max {lat['max']:6d} us")
PY
}
for _ in $(seq "$R"); do run "$A"; run "$B"; done
rm -rf "$OUT"
