#!/usr/bin/env bash
# HTTPS benchmark, percore vs nginx (1 shard / 1 worker on CPU 0, wrk on CPU 1): keep-alive and new-connection (full handshake) runs plus percore plain HTTP; makes the cert and the wrk TLS shim, then runs bench/https.py.
#
# Usage: bench/https.sh [-r ROUNDS] [-d SECONDS] [-c CONNS] [--hs-conns CONNS] [--no-stock] [--plain-close] [--servers LIST]
# Environment: PERCORE_BIN (default /tmp/bench-bin/percore, else target/release/percore),
#              WRK_BIN (default wrk), CERT/KEY (default: an ECDSA P-256 self-signed cert made here,
#              SAN DNS:localhost,IP:127.0.0.1, in bench/out/https-cert/).
# Needs: nginx, wrk (linked against the system libssl), openssl, gcc with the libssl headers.
#
# The wrk TLS shim (LD_PRELOAD, source written to bench/out/https-cert/wrk_tls_shim.c) wraps SSL_connect:
# it counts completed handshakes and resumed ones, records version/cipher/group, and with
# WRK_NO_RESUME=1 drops the session wrk keeps per connection slot (wrk reuses its SSL object with
# SSL_clear, which keeps the last session and offers it again), so every connection is a full handshake.
# Raw outputs: bench/out/https-<stamp>/.
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
OUTC=$BENCH/out/https-cert
mkdir -p "$OUTC"
PERCORE_BIN=${PERCORE_BIN:-/tmp/bench-bin/percore}
[ -x "$PERCORE_BIN" ] || PERCORE_BIN=$REPO/target/release/percore
CERT=${CERT:-$OUTC/cert.pem}
KEY=${KEY:-$OUTC/key.pem}
if [ ! -s "$CERT" ] || [ ! -s "$KEY" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$KEY" -out "$CERT" \
    -days 30 -subj /CN=localhost -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' 2>/dev/null
fi
cat > "$OUTC/wrk_tls_shim.c" <<'EOF'
// LD_PRELOAD shim for wrk (written by bench/https.sh): counts completed TLS handshakes and resumed ones,
// records the negotiated version/cipher/group; WRK_NO_RESUME=1 drops the cached session before each
// new handshake, so every connection does a full handshake.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/ssl.h>
#include <openssl/objects.h>
static long done, resumed, dropped, differing;
static int (*real_connect)(SSL *);
static int no_resume = -1;
static char first[200];
int SSL_connect(SSL *s) {
    if (!real_connect) real_connect = dlsym(RTLD_NEXT, "SSL_connect");
    if (no_resume < 0) { const char *e = getenv("WRK_NO_RESUME"); no_resume = e && *e == '1'; }
    if (no_resume && SSL_in_before(s) && SSL_get_session(s)) { SSL_set_session(s, NULL); dropped++; }
    int r = real_connect(s);
    if (r == 1) {
        char cur[200];
        int g = SSL_get_negotiated_group(s);
        snprintf(cur, sizeof cur, "%s %s group=%s", SSL_get_version(s), SSL_get_cipher_name(s),
                 g ? OBJ_nid2sn(g) : "?");
        if (!done) strcpy(first, cur); else if (strcmp(first, cur)) differing++;
        done++;
        if (SSL_session_reused(s)) resumed++;
    }
    return r;
}
__attribute__((destructor)) static void report(void) {
    if (done || dropped)
        fprintf(stderr, "tls-shim: handshakes %ld resumed %ld sessions-dropped %ld negotiated [%s] differing %ld\n",
                done, resumed, dropped, first, differing);
}
EOF
gcc -O2 -shared -fPIC -o "$OUTC/wrk_tls_shim.so" "$OUTC/wrk_tls_shim.c" -ldl
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs (server on 0, client on 1)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ulimit -l unlimited 2>/dev/null || true
exec python3 "$BENCH/https.py" --percore "$PERCORE_BIN" --wrk "${WRK_BIN:-wrk}" --shim "$OUTC/wrk_tls_shim.so" \
  --cert "$CERT" --key "$KEY" "$@"
