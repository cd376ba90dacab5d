#!/usr/bin/env bash
# A/B of two percore binaries, interleaved: each run starts a fresh `BIN --cores 0` (1 shard, CPU 0),
# drives it with percore-load on CPU 1 (1 s warm-up, 5 s measured) and prints req/s and server CPU
# µs/request (utime+stime from /proc/PID/stat).
# Usage: bench/ab.sh BIN_A BIN_B ROUNDS PATH [percore-load flags...], e.g.
#   bench/ab.sh /tmp/percore-old target/release/percore 3 /plaintext --pipeline 16
A=$1; B=$2; R=$3; shift 3; PATHQ=$1; shift
cd "$(dirname "$0")/.."
run() {
  local bin=$1; shift
  $bin --bind 127.0.0.1:0 --cores 0 > /tmp/ab_out 2>&1 &
  local pid=$!
  for i in $(seq 50); do grep -q listening /tmp/ab_out && break; sleep 0.1; done
  local addr=$(grep -m1 listening /tmp/ab_out | sed 's|listening on ||')
  target/release/percore-load -c 64 -t 1 --cpus 1 -d 1s "$@" $addr$PATHQ > /dev/null 2>&1
  local t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  target/release/percore-load -c 64 -t 1 --cpus 1 -d 5s "$@" --json /tmp/ab.json $addr$PATHQ > /dev/null 2>&1
  local t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  kill $pid; wait $pid 2>/dev/null
  python3 -c "
import json; n=json.load(open('/tmp/ab.json'))['run']['requests']
print('%-28s req/s %9.0f  cpu us/req %.3f' % ('$bin'.split('/')[-1], n/5.0, ($t1-$t0)*1e4/n))"
}
for r in $(seq $R); do run $A "$@"; run $B "$@"; done
