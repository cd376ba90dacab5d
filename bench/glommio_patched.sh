#!/usr/bin/env bash
# Builds percore (this checkout's HEAD) against glommio 0.9.0 with bench/glommio-timers.patch, for
# measuring the patch side by side (bench/RESULTS.md run S): the patch keeps glommio's preemption
# timers and its next-user-timer wakeup armed while they are pending, instead of cancelling and
# re-arming them on every pass of its loop. Nothing of the checkout changes.
#
# Usage: bench/glommio_patched.sh [DIR]   (default /tmp/percore-glommio-patched)
# Prints the path of the patched release binary, e.g. for
#   bench/compare.sh -s plaintext-c64,plaintext-r20k,plaintext-r100k \
#       --extra "patched=$(bench/glommio_patched.sh) --bind 127.0.0.1:{port} --cores 0 --max-conns 20000"
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-/tmp/percore-glommio-patched}
mkdir -p "$DIR"
cargo fetch --manifest-path "$REPO/Cargo.toml" >&2
SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/glommio-0.9.0 | head -1)
rm -rf "$DIR/glommio" "$DIR/percore"
cp -r "$SRC" "$DIR/glommio"
chmod -R u+w "$DIR/glommio"
patch -s -d "$DIR/glommio" -p1 < "$REPO/bench/glommio-timers.patch"
mkdir "$DIR/percore"
git -C "$REPO" archive HEAD | tar -x -C "$DIR/percore"
printf '\n[patch.crates-io]\nglommio = { path = "%s" }\n' "$DIR/glommio" >> "$DIR/percore/Cargo.toml"
CARGO_TARGET_DIR="$DIR/target" cargo build --release --bin percore \
    --manifest-path "$DIR/percore/Cargo.toml" >&2
echo "$DIR/target/release/percore"
