#!/usr/bin/env bash
# Side-by-side benchmark: percore (1 shard on CPU 0) vs nginx (1 worker on CPU 0) and any
# --extra peer, interleaved A/B/A/B over rounds. Every server x scenario is driven by percore-load
# (the project's load generator, `-t 1 --cpus 1`, figures from its --json file) and, as a
# cross-check, by wrk -t1 on CPU 1 (the two alternate which runs first). Prints a markdown table
# (median req/s of both clients, percore-load's per-request p99, server CPU µs/request and
# reschedule IPIs/request per run, ratios percore/peer, percore-load/wrk); raw logs go to
# bench/out/compare-<stamp>/.
#
# Usage: bench/compare.sh [-r ROUNDS] [-d SECONDS] [--wrk-duration SECONDS] [--no-wrk] [-s SCENARIOS]
#                         [--percore BIN] [--percore-load BIN] [--wrk BIN] [--percore-args 'FLAGS']
#                         [--no-nginx] [--extra 'NAME=CMD {port}'] ...
#                         [--server-cpu N] [--client-cpus LIST] [--client-threads N]
#   (defaults: server on CPU 0, each client one thread on CPU 1; on a machine with CPUs to spare give
#    the clients several, e.g. --client-cpus 2-9 --client-threads 8, so the server is the bottleneck)
#   scenarios: plaintext-c64, plaintext-c512, pipelined-x16 (percore-load --pipeline 16; wrk with
#              ../shared/lab/peers/scripts/pipeline.lua, 16 deep), json-c64, and the open-loop
#              plaintext-r20k, plaintext-r100k (percore-load -R 20000 / 100000 over 64 connections, a
#              server with idle time: what sleeping and waking costs; percore-load only)
#
# Binaries and paths (flag, else environment variable, else default):
#   percore        --percore       $PERCORE_BIN       $CARGO_TARGET_DIR/release/percore, else target/release/percore
#   percore-load   --percore-load  $PERCORE_LOAD_BIN  $CARGO_TARGET_DIR/release/percore-load, else target/release/percore-load
#   wrk            --wrk           $WRK_BIN           wrk on $PATH
#   peers          -               $PEERS_DIR         ../shared/lab/peers (relative to the repo root)
#   (target/release is the repo's own; build both with
#    `cargo build --release --bin percore --bin percore-load`)
# Peers, e.g. the raw epoll peer (any build dir; pass its binary path):
#   (cd ../shared/lab/peers/epoll && cargo build --release)
#   bench/compare.sh -r 3 --extra 'epoll=../shared/lab/peers/epoll/target/release/peer-epoll {port} 1'
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
PEERS=${PEERS_DIR:-$REPO/../shared/lab/peers}
[ -d "$PEERS" ] || { echo "no peers directory $PEERS (set PEERS_DIR)" >&2; exit 1; }
command -v nginx >/dev/null || echo "nginx not found (apt-get install -y nginx); use --no-nginx to skip it" >&2
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs (server on 0, clients on 1)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$BENCH/out"
# compare.py finds percore, percore-load and wrk (see above) and says what is missing.
exec python3 "$BENCH/compare.py" "$@"
