#!/usr/bin/env bash
# Side-by-side benchmark: percore (1 shard on CPU 0) vs nginx (1 worker on CPU 0) and any
# --extra peer, interleaved A/B/A/B over rounds, wrk -t1 on CPU 1. Prints a markdown table
# (median req/s, p99, server CPU µs/request, reschedule IPIs/request, ratios percore/peer);
# raw logs go to bench/out/compare-<stamp>/.
#
# Usage: bench/compare.sh [-r ROUNDS] [-d SECONDS] [-s SCENARIOS] [--percore BIN]
#                         [--percore-args 'FLAGS'] [--no-nginx] [--extra 'NAME=CMD {port}'] ...
#   scenarios: plaintext-c64, plaintext-c512, pipelined-x16 (scripts/pipeline.lua, 16 deep), json-c64
#   percore binary: --percore, else $PERCORE_BIN, else $CARGO_TARGET_DIR/release/percore,
#   else /tmp/percore-bench-target/release/percore, else target/release/percore.
#   Build it with: CARGO_TARGET_DIR=/tmp/percore-bench-target cargo build --release
#   Peers come from ../shared/lab/peers (relative to the repo root), e.g. the raw epoll peer:
#     (cd ../shared/lab/peers/epoll && CARGO_TARGET_DIR=/tmp/percore-peers/target cargo build --release)
#     bench/compare.sh -r 3 --extra 'epoll=/tmp/percore-peers/target/release/peer-epoll {port} 1'
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
PEERS=$(cd "$REPO/../shared/lab/peers" 2>/dev/null && pwd) || { echo "no ../shared/lab/peers next to the repo" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
command -v nginx >/dev/null || echo "nginx not found (apt-get install -y nginx); use --no-nginx to skip it" >&2
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs (server on 0, wrk on 1)" >&2; exit 1; }

args=("$@")
have_bin=0
for x in "${args[@]}"; do [ "$x" = --percore ] && have_bin=1; done
if [ $have_bin -eq 0 ]; then
  BIN=${PERCORE_BIN:-}
  for c in ${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/release/percore} /tmp/percore-bench-target/release/percore \
           "$REPO/target/release/percore"; do
    [ -n "$BIN" ] && break
    [ -x "$c" ] && BIN=$c
  done
  [ -n "$BIN" ] && [ -x "$BIN" ] || { echo "no percore binary; build it (see the header of $0) or pass --percore" >&2; exit 1; }
  args+=(--percore "$BIN")
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$BENCH/out"
exec python3 "$BENCH/compare.py" "${args[@]}"
