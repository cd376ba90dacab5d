#!/usr/bin/env python3
# Idle keep-alive connections: RSS bytes per idle connection and /plaintext speed with and without them.
"""Idle keep-alive connection cost of percore: RSS per idle connection, and whether
/plaintext on other connections still runs at full speed while N idle ones are open.

    bench/idle_memory.py [-n 10000] [-r 3] [-d 5] [--percore BIN] [--percore-args 'FLAGS']
    bench/idle_memory.py --server-cmd 'OTHER_SERVER {port}'   (the same measurement of another server)
    bench/idle_memory.py -n 15000 -r 2 --perf 4   (also perf-profile the server during each idle-variant run)
    bench/idle_memory.py --tls CERT KEY   (HTTPS: percore gets --tls-cert/--tls-key; idle conns and wrk use TLS)

percore binary: --percore BIN, else $PERCORE_BIN, else $CARGO_TARGET_DIR/release/percore, else
<repo>/target/release/percore (build: `cargo build --release --bin percore`). wrk: $WRK_BIN, else wrk on $PATH.

Interleaved rounds of two variants, each with a fresh percore (1 shard, pinned to CPU 0):
  - "no idle":   start, one request, wrk -t1 -c64 /plaintext (CPU 1) for D seconds;
  - "N idle":    start, one request, RSS before; open N keep-alive connections that each
                 send one GET /plaintext and read the answer, then stay open and idle;
                 RSS after; the same wrk run; then check a sample of the idle connections
                 still answer a second request.
With --perf S, `perf record -e cpu-clock -g -p SERVER -- sleep S` runs during the wrk run of
each idle variant (starting 1 s in); the top kernel/user symbols by self time, and the share of
io_poll_find (io_uring cancels walking armed polls), are printed and kept with perf.data.
RSS is VmRSS from /proc/PID/status; bytes per idle connection = (after - before) / N
(user-space memory only; the kernel's socket buffers are not in RSS, the TCP memory of
/proc/net/sockstat, both ends of loopback together, is printed for information).
CPU µs/request = server utime+stime (/proc/PID/stat) over the wrk run / requests.
Prints a markdown table; raw data goes to bench/out/idle-<stamp>/.
"""
import argparse
import datetime
import os
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
REQ = b"GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
TLS = None  # an ssl.SSLContext when --tls is given
SCHEME = "http"


def connect(port, timeout):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return TLS.wrap_socket(s, server_hostname="localhost") if TLS else s


def find_percore():
    if os.environ.get("PERCORE_BIN"):
        return os.environ["PERCORE_BIN"]
    for c in (os.environ.get("CARGO_TARGET_DIR") and os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "percore"),
              os.path.join(REPO, "target", "release", "percore")):
        if c and os.access(c, os.X_OK):
            return c
    sys.exit("no percore binary in target/release: build with `cargo build --release --bin percore`, "
             "or set $PERCORE_BIN / pass --percore")


def status_kb(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(st[11]) + int(st[12])


def tcp_mem_pages():
    for line in open("/proc/net/sockstat"):
        if line.startswith("TCP:"):
            m = re.search(r"mem (\d+)", line)
            return int(m.group(1)) if m else 0
    return 0


def read_response(s):
    """Read one small HTTP response (Content-Length framed); True if it is a 200 with the body."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            return False
        buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    n = int(m.group(1)) if m else 0
    while len(body) < n:
        d = s.recv(4096)
        if not d:
            return False
        body += d
    return head.startswith(b"HTTP/1.1 200") and body == b"Hello, World!"


def open_idle(port, n):
    socks = []
    for i in range(n):
        s = connect(port, 10)
        s.sendall(REQ)
        if not read_response(s):
            raise RuntimeError(f"idle connection {i}: bad answer")
        socks.append(s)
    return socks


def still_alive(socks, sample=200):
    step = max(1, len(socks) // sample)
    ok = tot = 0
    for s in socks[::step]:
        tot += 1
        try:
            s.sendall(REQ)
            ok += read_response(s)
        except OSError:
            pass
    return ok, tot


WRK = os.environ.get("WRK_BIN") or "wrk"


def perf_top(data, n=12):
    """(share of io_poll_find in %, top-n flat self-time lines) of a perf.data file."""
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "-g", "none", "--percent-limit", "0.3",
                          "--stdio"], capture_output=True, text=True).stdout
    lines = [x for x in out.splitlines() if re.match(r"^ +[0-9.]+%", x)]
    ipf = sum(float(x.split("%")[0]) for x in lines if "io_poll_find" in x)
    return ipf, lines[:n]


def wrk(port, dur, client_cpu, outfile, perf=None):
    """perf: (pid, seconds, perf.data path) to profile the server during the run, or None."""
    cmd = ["taskset", "-c", str(client_cpu), WRK, "-t1", "-c64", f"-d{dur}s", "--latency",
           f"{SCHEME}://127.0.0.1:{port}/plaintext"]
    if perf:
        w = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        pid, secs, data = perf
        with open(data + ".log", "w") as lf:
            subprocess.run(["perf", "record", "-e", "cpu-clock", "-g", "-p", str(pid), "-o", data, "--",
                            "sleep", str(secs)], stdout=lf, stderr=subprocess.STDOUT)
        out = w.communicate()[0]
    else:
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
    with open(outfile, "w") as f:
        f.write(" ".join(cmd) + "\n" + out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    n = int(re.search(r"(\d+) requests in", out).group(1))
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return rps, n, sum(map(int, errs.groups())) if errs else 0


def start(binary, args, port, cpu, nofile, log, server_cmd=None):
    if server_cmd:  # another server, for comparison: template with {port}, may start with VAR=value
        cmd = f"ulimit -n {nofile} && exec env {server_cmd.replace('{port}', str(port))}"
    else:
        # A fresh data dir next to the log (as compare.py): the default (./percore-data in the
        # working directory) would be left behind, and may hold a log of another shard count.
        data = tempfile.mkdtemp(prefix="percore.data.", dir=os.path.dirname(log.name))
        cmd = (f"ulimit -n {nofile} && exec {shlex.quote(binary)} --bind 127.0.0.1:{port} --cores {cpu} "
               f"--data-dir {shlex.quote(data)} {args}")
    p = subprocess.Popen(["taskset", "-c", str(cpu), "bash", "-c", cmd], stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    t = time.time() + 15
    while time.time() < t:
        if p.poll() is not None:
            sys.exit(f"percore exited with {p.returncode}; see {log.name}")
        try:
            s = connect(port, 1)
            s.sendall(REQ)
            if read_response(s):
                s.close()
                return p
            s.close()
        except OSError:
            time.sleep(0.1)
    p.kill()
    sys.exit("percore did not answer in 15 s")


def stop(p):
    try:
        p.send_signal(signal.SIGTERM)
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--conns", type=int, default=10000)
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("-d", "--duration", type=int, default=5)
    ap.add_argument("--percore", default=None)
    ap.add_argument("--percore-args", default="")
    ap.add_argument("--server-cmd", default=None,
                    help="measure this server instead of percore (template with {port}; pinned to --server-cpu)")
    ap.add_argument("--perf", type=int, default=0, metavar="SECONDS",
                    help="perf record the server for SECONDS during each idle-variant run (must be < -d - 1); "
                         "perf adds its own overhead to that run, so take the slowdown figures from a run without it")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), default=None,
                    help="serve HTTPS with this PEM certificate (valid for localhost) and key")
    ap.add_argument("--port", type=int, default=18070)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(BENCH, "out"))
    a = ap.parse_args()
    binary = a.server_cmd or a.percore or find_percore()
    # flags: room for N idle + wrk's 64 connections; keep-alive long enough to outlive a round
    pargs = f"--max-conns {a.conns + 1024} --keepalive-timeout 600 {a.percore_args}"
    if a.tls:
        import ssl
        global TLS, SCHEME
        TLS = ssl.create_default_context(cafile=a.tls[0])
        SCHEME = "https"
        pargs += f" --tls-cert {shlex.quote(a.tls[0])} --tls-key {shlex.quote(a.tls[1])}"
    nofile = a.conns + 2048
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(nofile, soft), max(nofile, hard)))
    except (ValueError, OSError):
        if hard < nofile:
            sys.exit(f"need {nofile} open files, hard limit is {hard} (run as root or raise it)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {a.client_cpu})

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir = os.path.join(a.out, f"idle-{stamp}")
    os.makedirs(logdir, exist_ok=True)
    log = open(os.path.join(logdir, "percore.server.log"), "ab")
    raw = open(os.path.join(logdir, "raw.tsv"), "w")
    cols = ["round", "variant", "rss_before_kb", "rss_idle_kb", "rss_end_kb", "bytes_per_conn", "tcp_mem_pages",
            "open_s", "rps", "requests", "cpu_us_req", "errors", "alive_ok", "alive_tried"]
    raw.write("\t".join(cols) + "\n")
    print(f"logs: {logdir}", file=sys.stderr)
    variants = ["no idle", f"{a.conns} idle"]
    rows = {v: [] for v in variants}
    for r in range(1, a.rounds + 1):
        for k in range(2):
            v = variants[(k + r - 1) % 2]
            p = start(binary, pargs, a.port, a.server_cpu, nofile, log, a.server_cmd)
            socks = []
            try:
                time.sleep(0.3)
                row = dict(round=r, variant=v, rss_before_kb=status_kb(p.pid, "VmRSS"), bytes_per_conn=float("nan"),
                           tcp_mem_pages=0, open_s=0.0, alive_ok=0, alive_tried=0)
                if v != "no idle":
                    m0 = tcp_mem_pages()
                    t0 = time.time()
                    socks = open_idle(a.port, a.conns)
                    row["open_s"] = time.time() - t0
                    time.sleep(1.0)
                    row["tcp_mem_pages"] = tcp_mem_pages() - m0
                row["rss_idle_kb"] = status_kb(p.pid, "VmRSS")
                if socks:
                    row["bytes_per_conn"] = (row["rss_idle_kb"] - row["rss_before_kb"]) * 1024 / len(socks)
                subprocess.run(["taskset", "-c", str(a.client_cpu), WRK, "-t1", "-c64", "-d1s",
                                f"{SCHEME}://127.0.0.1:{a.port}/plaintext"], capture_output=True)
                c0 = cpu_ticks(p.pid)
                perf = None
                if a.perf and socks:
                    perf = (p.pid, a.perf, os.path.join(logdir, f"r{r}.perf.data"))
                rps, n, errs = wrk(a.port, a.duration, a.client_cpu,
                                   os.path.join(logdir, f"r{r}.{v.replace(' ', '_')}.wrk"), perf)
                c1 = cpu_ticks(p.pid)
                row.update(rps=rps, requests=n, errors=errs, cpu_us_req=(c1 - c0) * 1e6 / TICK / n if n else float("nan"))
                if socks:
                    row["alive_ok"], row["alive_tried"] = still_alive(socks)
                row["rss_end_kb"] = status_kb(p.pid, "VmRSS")
                rows[v].append(row)
                raw.write("\t".join(str(row[c]) for c in cols) + "\n")
                raw.flush()
                extra = ""
                if socks:
                    extra = (f"  RSS {row['rss_before_kb']} -> {row['rss_idle_kb']} kB = "
                             f"{row['bytes_per_conn']:.0f} B/conn (opened in {row['open_s']:.1f} s, kernel TCP mem "
                             f"+{row['tcp_mem_pages'] * PAGE / len(socks):.0f} B/conn both ends)  "
                             f"idle still answering {row['alive_ok']}/{row['alive_tried']}")
                print(f"round {r}/{a.rounds} {v:12s} {rps:10.0f} req/s  cpu {row['cpu_us_req']:.2f} us/req  "
                      f"err {errs}{extra}", file=sys.stderr, flush=True)
            finally:
                for s in socks:
                    s.close()
                stop(p)
                time.sleep(0.5)

    med = lambda v, c: statistics.median(x[c] for x in rows[v])  # noqa: E731
    lo = lambda v, c: min(x[c] for x in rows[v])  # noqa: E731
    hi = lambda v, c: max(x[c] for x in rows[v])  # noqa: E731
    idle = variants[1]
    what = (f"`{a.server_cmd}` on CPU {a.server_cpu}" if a.server_cmd else
            f"percore 1 shard on CPU {a.server_cpu} (`{binary} --bind 127.0.0.1:PORT --cores {a.server_cpu} {pargs}`)")
    print(f"{what}, "
          f"{a.rounds} interleaved rounds; wrk -t1 -c64 -d{a.duration}s /plaintext on CPU {a.client_cpu}; medians "
          f"(min–max).\n")
    print("| variant | RSS before | RSS with idle conns | bytes per idle conn | idle conns answering after the run "
          "| wrk req/s | CPU µs/req | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for v in variants:
        if not rows[v]:
            continue
        if v == idle:
            bpc = f"**{med(v, 'bytes_per_conn'):.0f}** ({lo(v, 'bytes_per_conn'):.0f}–{hi(v, 'bytes_per_conn'):.0f})"
            alive = f"{sum(x['alive_ok'] for x in rows[v])}/{sum(x['alive_tried'] for x in rows[v])} (sampled)"
        else:
            bpc, alive = "–", "–"
        print(f"| {v} | {med(v, 'rss_before_kb') / 1024:.1f} MiB | {med(v, 'rss_idle_kb') / 1024:.1f} MiB | {bpc} "
              f"| {alive} | {med(v, 'rps') / 1000:.1f}k ({lo(v, 'rps') / 1000:.0f}–{hi(v, 'rps') / 1000:.0f}k) "
              f"| {med(v, 'cpu_us_req'):.2f} ({lo(v, 'cpu_us_req'):.2f}–{hi(v, 'cpu_us_req'):.2f}) "
              f"| {sum(x['errors'] for x in rows[v])} |")
    if rows[idle]:
        b = med(idle, "bytes_per_conn")
        print(f"\nTarget ≤ 8192 bytes per idle connection: {'met' if b <= 8192 else 'NOT met'} "
              f"({b:.0f} B = {b / 1024:.2f} KiB). Kernel TCP memory for the idle sockets (both ends, not in RSS): "
              f"{med(idle, 'tcp_mem_pages') * PAGE / a.conns:.0f} B/conn.")
    if a.perf and rows[idle]:
        print(f"\nperf (`perf record -e cpu-clock -g`, {a.perf} s inside each {idle} run), self time:\n")
        for r in range(1, a.rounds + 1):
            data = os.path.join(logdir, f"r{r}.perf.data")
            if not os.path.exists(data):
                continue
            ipf, top = perf_top(data)
            with open(data + ".top.txt", "w") as f:
                f.write("\n".join(top) + "\n")
            print(f"- round {r}: `io_poll_find` **{ipf:.1f}%** of the server's CPU; top: "
                  + "; ".join(re.sub(r"\s+", " ", x.strip()) for x in top[:4]))
    print(f"\nRaw data: `{os.path.relpath(logdir, REPO)}/raw.tsv`")


if __name__ == "__main__":
    main()
