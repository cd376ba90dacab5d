#!/usr/bin/env python3
# Interleaved A/B benchmark of percore vs nginx and other peers, driven by percore-load with wrk as a
# cross-check (req/s, p99, CPU µs/request, IPIs/request); see bench/compare.sh for the usage.
#
# Binaries (flags win over environment, environment over the default):
#   percore:       --percore BIN,      else $PERCORE_BIN,      else $CARGO_TARGET_DIR/release/percore,
#                  else <repo>/target/release/percore
#   percore-load:  --percore-load BIN, else $PERCORE_LOAD_BIN, else $CARGO_TARGET_DIR/release/percore-load,
#                  else <repo>/target/release/percore-load
#   wrk:           --wrk BIN,          else $WRK_BIN,          else `wrk` on $PATH (skip it with --no-wrk)
#   peers (nginx run.sh, scripts/pipeline.lua): $PEERS_DIR, else <repo>/../shared/lab/peers
"""Interleaved A/B/A/B benchmark of percore against nginx (and any --extra peer).

Called by bench/compare.sh (see there for the usage). Every server runs pinned to
CPU 0 (1 shard / 1 worker); the clients run pinned to CPU 1. For every round the
servers take turns (the starting server rotates each round); each server is started
fresh, its endpoints are checked, it gets a 1 s unmeasured warm-up, then every
scenario runs once with each client:

  - percore-load (the project's load generator): `percore-load -t 1 --cpus 1 -c CONNS
    -d D [--pipeline 16] [-R RATE] --json FILE URL`; req/s, p99 (per request, also when
    pipelined) and request counts come from its JSON; the open-loop scenarios (-R: 20k and
    100k requests/s, below what any server here saturates at) run with it alone;
  - wrk, as a cross-check: `taskset -c 1 wrk -t1 -cCONNS -dD --latency URL` (pipelined
    with ../shared/lab/peers/scripts/pipeline.lua, 16 deep); only its req/s is reported
    (its pipelined p99 is one sample per batch and often prints 0).

The two clients alternate which goes first (percore-load first in odd rounds, wrk first
in even rounds). For every run (each client separately) we record the server's CPU time
(utime+stime from /proc/PID/stat over its whole process tree, before/after the run)
divided by the requests that client completed, and the reschedule IPIs (RES line of
/proc/interrupts) received by the server's CPU divided by the same request count.

Prints a markdown table (medians over rounds, plus min-max spread) to stdout and
keeps every client output and a raw TSV (one row per run, column `tool`) under
bench/out/compare-<stamp>/.
"""
import argparse
import datetime
import http.client
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import tempfile
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
PEERS = os.path.abspath(os.environ["PEERS_DIR"]) if os.environ.get("PEERS_DIR") else os.path.normpath(os.path.join(REPO, "..", "shared", "lab", "peers"))
TOOLS = ("load", "wrk")  # percore-load, wrk (cross-check)
TICK = os.sysconf("SC_CLK_TCK")

# name -> (path, connections, pipeline depth, open-loop rate in requests/s or 0 for a closed loop).
# The open-loop scenarios measure CPU per request where servers spend most of their time: with idle
# time between requests, what a server pays to sleep and wake counts (a closed loop never sleeps).
# wrk has no fixed rate: they run with percore-load alone.
SCENARIOS = {
    "plaintext-c64": ("/plaintext", 64, 1, 0),
    "plaintext-c512": ("/plaintext", 512, 1, 0),
    "pipelined-x16": ("/plaintext", 64, 16, 0),
    "json-c64": ("/json", 64, 1, 0),
    "plaintext-r20k": ("/plaintext", 64, 1, 20_000),
    "plaintext-r100k": ("/plaintext", 64, 1, 100_000),
}
CHECKS = {
    "/plaintext": ("text/plain", b"Hello, World!"),
    "/json": ("application/json", b'{"message":"Hello, World!"}'),
}


def tree(pid):
    """pid and all its descendants (all threads' children)."""
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    for c in f.read().split():
                        out += tree(int(c))
            except OSError:
                pass
    except OSError:
        pass
    return out


def cpu_ticks(pid):
    u = s = 0
    for p in tree(pid):
        try:
            st = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            u += int(st[11])
            s += int(st[12])
        except OSError:
            pass
    return u, s


def irq(name, cpu):
    for line in open("/proc/interrupts"):
        parts = line.split()
        if parts and parts[0] == name + ":":
            return int(parts[1 + cpu])
    return 0


def check(port, path):
    """Problems with GET path (empty list = fine)."""
    ctype, body = CHECKS[path]
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        c.request("GET", path)
        r = c.getresponse()
        got = r.read()
        c.close()
    except Exception as e:  # noqa: BLE001
        return [f"{path}: {e}"]
    bad = []
    if r.status != 200:
        bad.append(f"{path}: status {r.status}")
    if got != body:
        bad.append(f"{path}: body {got!r}")
    if not (r.getheader("Content-Type") or "").startswith(ctype):
        bad.append(f"{path}: content-type {r.getheader('Content-Type')!r}")
    if not r.getheader("Server"):
        bad.append(f"{path}: no Server header")
    if not re.match(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT$", r.getheader("Date") or ""):
        bad.append(f"{path}: bad Date header {r.getheader('Date')!r}")
    return bad


def to_us(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v or "")
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6}[m.group(2)]


def parse_wrk(out):
    g = lambda rx, d="0": (re.search(rx, out) or [None, d])[1]  # noqa: E731
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(g(r"Requests/sec:\s+([\d.]+)")),
        "requests": int(g(r"(\d+) requests in")),
        # wrk's latency histogram is meaningless with pipelining (it prints 0.00us): n/a
        "p99_us": (lambda v: v if v > 0 else float("nan"))(to_us(g(r"\n\s*99%\s+(\S+)", ""))),
        "errors": sum(int(x) for x in errs.groups()) if errs else 0,
        "non2xx": int(g(r"Non-2xx or 3xx responses:\s+(\d+)")),
    }


class Server:
    """A server from a command template ({port}, {workers}, {data}: a fresh empty directory for
    its start), under `taskset -c server_cpus` (one CPU or a list); bench/scaling.py starts its
    N-worker servers with it too."""

    def __init__(self, name, cmd, port, logdir, server_cpus, workers=1):
        self.name, self.port = name, port
        data = tempfile.mkdtemp(prefix=f"{name}.data.", dir=logdir)
        full = cmd.replace("{port}", str(port)).replace("{workers}", str(workers)).replace("{data}", data)
        self.log = open(os.path.join(logdir, f"{name}.server.log"), "ab")
        env = dict(os.environ, PORT=str(port), WORKERS=str(workers))
        # 'exec env CMD' lets a template start with VAR=value; env execs the server itself.
        self.p = subprocess.Popen(["taskset", "-c", str(server_cpus), "bash", "-c", "exec env " + full],
                                  stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)

    def wait_ready(self, timeout=15):
        t = time.time() + timeout
        while time.time() < t:
            if self.p.poll() is not None:
                return False
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/plaintext")
                c.getresponse().read()
                c.close()
                return True
            except Exception:  # noqa: BLE001
                time.sleep(0.1)
        return False

    def stop(self):
        pids = tree(self.p.pid)
        try:
            self.p.send_signal(signal.SIGTERM)
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
        for pid in pids:  # leftover workers (nginx) of this server only
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


def find_bin(flag, env, name):
    """flag, else $env, else $CARGO_TARGET_DIR/release/name, else <repo>/target/release/name."""
    cands = [flag, os.environ.get(env)]
    if os.environ.get("CARGO_TARGET_DIR"):
        cands.append(os.path.join(os.environ["CARGO_TARGET_DIR"], "release", name))
    cands.append(os.path.join(REPO, "target", "release", name))
    for c in cands:
        if c:
            if os.access(c, os.X_OK):
                return os.path.abspath(c)
            if c in (flag, os.environ.get(env)):
                sys.exit(f"{name}: {c} is not an executable")
    sys.exit(f"no {name} binary in {os.path.join(REPO, 'target', 'release')}: build it with "
             f"`cargo build --release --bin percore --bin percore-load`, or set ${env}")


def run_load(load_bin, port, scen, dur, client_cpus, threads, outfile):
    """percore-load, closed loop (or open at the scenario's rate), `threads` threads pinned to client_cpus;
    figures from its --json file."""
    path, conns, depth, rate = SCENARIOS[scen]
    jf = outfile + ".json"
    cmd = [load_bin, "-t", str(threads), "--cpus", client_cpus, "-c", str(conns), "-d", f"{dur}s",
           "--pipeline", str(depth), "--json", jf, f"http://127.0.0.1:{port}{path}"]
    if rate:
        cmd[1:1] = ["-R", str(rate)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    with open(outfile, "w") as f:
        f.write(" ".join(shlex.quote(x) for x in cmd) + "\n" + r.stdout + r.stderr)
    try:
        run = json.load(open(jf))["run"]
    except (OSError, ValueError, KeyError):
        return {"rps": float("nan"), "requests": 0, "p99_us": float("nan"), "errors": 1, "non2xx": 0}
    st = run.get("status", {})
    return {
        "rps": float(run["requests_per_s"]),
        "requests": int(run["requests"]),
        "p99_us": float(run["latency_us"]["p99"]) if run["latency_us"].get("count") else float("nan"),
        "errors": int(run["errors"]["total"]) + (1 if r.returncode else 0),
        "non2xx": sum(int(v) for k, v in st.items() if k != "2xx"),
    }


def run_wrk(wrk_bin, port, scen, dur, client_cpus, threads, outfile):
    path, conns, depth, _ = SCENARIOS[scen]
    cmd = ["taskset", "-c", client_cpus, wrk_bin, f"-t{threads}", f"-c{conns}", f"-d{dur}s", "--latency"]
    if depth > 1:
        cmd += ["-s", os.path.join(PEERS, "scripts", "pipeline.lua"), f"http://127.0.0.1:{port}{path}",
                "--", str(depth)]
    else:
        cmd += [f"http://127.0.0.1:{port}{path}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    with open(outfile, "w") as f:
        f.write(" ".join(shlex.quote(x) for x in cmd) + "\n" + r.stdout + r.stderr)
    return parse_wrk(r.stdout)


def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def fk(x):
    return "n/a" if x != x else (f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1000:.1f}k")


def fus(x):
    return "n/a" if x != x else (f"{x / 1000:.2f} ms" if x >= 1000 else f"{x:.0f} µs")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-r", "--rounds", type=int, default=5)
    ap.add_argument("-d", "--duration", type=int, default=5, help="seconds per percore-load run")
    ap.add_argument("--wrk-duration", type=int, default=None,
                    help="seconds per wrk cross-check run (default: --duration)")
    ap.add_argument("--no-wrk", action="store_true", help="skip the wrk cross-check runs")
    ap.add_argument("-s", "--scenarios", default=",".join(SCENARIOS),
                    help="comma list of: " + ", ".join(SCENARIOS))
    ap.add_argument("--percore", default=None, help="percore binary (default: see the header)")
    ap.add_argument("--percore-load", default=None, help="percore-load binary (default: see the header)")
    ap.add_argument("--wrk", default=None, help="wrk binary (default: $WRK_BIN, else wrk on $PATH)")
    ap.add_argument("--percore-args", default="", help="extra flags for percore")
    ap.add_argument("--no-nginx", action="store_true")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=CMD",
                    help="another server; CMD with {port} (and optional {workers}, {data}), may start with VAR=value")
    ap.add_argument("--base-port", type=int, default=18050)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpus", default="1",
                    help="CPUs of the clients (taskset list); on a machine with spare CPUs give several")
    ap.add_argument("--client-threads", type=int, default=1,
                    help="threads of each client (percore-load -t, wrk -t), spread over --client-cpus")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(BENCH, "out"))
    a = ap.parse_args()

    scens = [s for s in a.scenarios.split(",") if s]
    for s in scens:
        if s not in SCENARIOS:
            sys.exit(f"unknown scenario {s}")
    percore = find_bin(a.percore, "PERCORE_BIN", "percore")
    load_bin = find_bin(a.percore_load, "PERCORE_LOAD_BIN", "percore-load")
    wrk_bin = None
    if not a.no_wrk:
        wrk_bin = a.wrk or os.environ.get("WRK_BIN") or "wrk"
        if not (os.access(wrk_bin, os.X_OK) or subprocess.run(["sh", "-c", f"command -v {shlex.quote(wrk_bin)}"],
                                                                capture_output=True).returncode == 0):
            sys.exit(f"wrk not found ({wrk_bin}): apt-get install -y wrk, set $WRK_BIN, or pass --no-wrk")
    tools = ["load"] + ([] if a.no_wrk else ["wrk"])
    wrk_dur = a.wrk_duration or a.duration
    # A data dir of its own: the default (./percore-data) may hold a log of another shard count.
    servers = [("percore", f"{percore} --bind 127.0.0.1:{{port}} --cores {a.server_cpu} "
                           f"--max-conns 20000 --data-dir {{data}} {a.percore_args}")]
    if not a.no_nginx:
        servers.append(("nginx", os.path.join(PEERS, "nginx", "run.sh") + " {port} 1"))
    for e in a.extra:
        if "=" not in e:
            sys.exit(f"bad --extra {e!r} (want NAME=CMD)")
        servers.append(tuple(e.split("=", 1)))

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir = os.path.join(a.out, f"compare-{stamp}")
    os.makedirs(logdir, exist_ok=True)
    os.environ.setdefault("PEER_TMP", os.path.join(logdir, "tmp"))  # nginx/run.sh scratch
    os.makedirs(os.environ["PEER_TMP"], exist_ok=True)
    with open(os.path.join(logdir, "meta.txt"), "w") as f:
        f.write(f"argv: {' '.join(map(shlex.quote, sys.argv))}\n")
        f.write(f"percore-load: {load_bin}\nwrk: {wrk_bin} (-d{wrk_dur})\n")
        for n, c in servers:
            f.write(f"server {n}: {c}\n")
    raw = open(os.path.join(logdir, "raw.tsv"), "w")
    raw.write("\t".join(COLS) + "\n")
    print(f"logs: {logdir}", file=sys.stderr)

    ports = {n: a.base_port + i for i, (n, _) in enumerate(servers)}
    res = {(t, n, s): [] for t in tools for n, _ in servers for s in scens}
    failed = {}
    cur = None

    def on_signal(sig, frm):
        if cur:
            cur.stop()
        sys.exit(130)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    for r in range(1, a.rounds + 1):
        order = tools if r % 2 else tools[::-1]  # which client goes first alternates by round
        for k in range(len(servers)):
            name, cmd = servers[(k + r - 1) % len(servers)]
            if name in failed:
                continue
            port = ports[name]
            cur = Server(name, cmd, port, logdir, a.server_cpu)
            try:
                if not cur.wait_ready():
                    failed[name] = "did not start"
                    print(f"round {r} {name}: did not start (see {logdir}/{name}.server.log)", file=sys.stderr)
                    continue
                bad = check(port, "/plaintext") + check(port, "/json")
                if bad:
                    failed[name] = "endpoint check failed: " + "; ".join(bad)
                    print(f"round {r} {name}: {failed[name]}", file=sys.stderr)
                    continue
                if a.warmup:
                    subprocess.run([load_bin, "-t", str(a.client_threads), "--cpus", a.client_cpus, "-c", "64",
                                    "-d", f"{a.warmup}s", f"http://127.0.0.1:{port}/plaintext"], capture_output=True)
                for s in scens:
                    for t in order:
                        if t == "wrk" and SCENARIOS[s][3]:
                            continue  # no fixed rate in wrk
                        u0, s0 = cpu_ticks(cur.p.pid)
                        i0, c0 = irq("RES", a.server_cpu), irq("CAL", a.server_cpu)
                        t0 = time.monotonic()
                        if t == "load":
                            w = run_load(load_bin, port, s, a.duration, a.client_cpus, a.client_threads,
                                         os.path.join(logdir, f"r{r}.{name}.{s}.load"))
                        else:
                            w = run_wrk(wrk_bin, port, s, wrk_dur, a.client_cpus, a.client_threads,
                                        os.path.join(logdir, f"r{r}.{name}.{s}.wrk"))
                        wall = time.monotonic() - t0
                        i1, c1 = irq("RES", a.server_cpu), irq("CAL", a.server_cpu)
                        u1, s1 = cpu_ticks(cur.p.pid)
                        n = w["requests"]
                        row = dict(w, tool=t, round=r, server=name, scenario=s, utime=u1 - u0, stime=s1 - s0,
                                   cpu_us_req=((u1 - u0) + (s1 - s0)) * 1e6 / TICK / n if n else float("nan"),
                                   busy=((u1 - u0) + (s1 - s0)) / TICK / wall, res_cpu=i1 - i0, res_per_req=(i1 - i0) / n if n else float("nan"),
                                   cal_per_req=(c1 - c0) / n if n else float("nan"))
                        res[(t, name, s)].append(row)
                        raw.write("\t".join(str(row[c]) for c in COLS) + "\n")
                        raw.flush()
                        print(f"round {r}/{a.rounds} {name:10s} {s:15s} {t:4s} {w['rps']:>11.0f} req/s  "
                              f"p99 {fus(w['p99_us']):>9s}  cpu {row['cpu_us_req']:.2f} us/req  "
                              f"busy {row['busy']:.0%}  RES {row['res_per_req']:.4f}/req  err {w['errors']} non2xx {w['non2xx']}",
                              file=sys.stderr, flush=True)
            finally:
                cur.stop()
                cur = None
                time.sleep(0.3)

    print_tables(res, [n for n, _ in servers], scens, a.rounds, a.duration, wrk_dur if wrk_bin else None,
                 a.server_cpu, a.client_cpus, a.client_threads)
    if failed:
        print("\nFailed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    print("\nServers:")
    for n, c in servers:
        print(f"- {n}: `{c}`")
    print(f"\nRaw data: `{os.path.relpath(logdir, REPO)}/raw.tsv`")


COLS = ["tool", "round", "server", "scenario", "rps", "p99_us", "requests", "utime", "stime", "cpu_us_req",
        "busy", "res_cpu", "res_per_req", "cal_per_req", "errors", "non2xx"]


def medians(rows):
    m = {c: med([x[c] for x in rows]) for c in ("rps", "p99_us", "cpu_us_req", "res_per_req", "cal_per_req")}
    m["rps_min"] = min(x["rps"] for x in rows)
    m["rps_max"] = max(x["rps"] for x in rows)
    m["cpu_min"] = min(x["cpu_us_req"] for x in rows)
    m["cpu_max"] = max(x["cpu_us_req"] for x in rows)
    m["errors"] = sum(x["errors"] + x["non2xx"] for x in rows)
    m["n"] = len(rows)
    m["busy"] = med([x.get("busy", float("nan")) for x in rows])
    return m


def print_tables(res, names, scens, rounds, duration, wrk_duration, server_cpu=0, client_cpu=1, threads=1,
                 main="percore-load"):
    """res: {(tool, server, scenario): [row dicts with round, rps, p99_us, cpu_us_req, res_per_req, ...]};
    tool "load" = percore-load (the main figures), "wrk" = the cross-check."""
    M = {key: medians(rows) for key, rows in res.items() if rows}
    has_wrk = any(k[0] == "wrk" for k in M)
    dash = "–"
    if main == "percore-load":
        what = (f"Main figures from `percore-load -t {threads} --cpus {client_cpu}` ({duration} s per run; p99 is per "
                f"request, also pipelined)")
    else:
        what = (f"Figures from `wrk -t1` pinned to CPUs {client_cpu} ({duration} s per run; old wrk-only run, "
                f"its pipelined p99 is one sample per batch)")
    if has_wrk:
        what += (f"; cross-check `wrk -t{threads}` pinned to CPUs {client_cpu} ({wrk_duration} s per run, right before or "
                 f"after percore-load against the same server process)")
    print(f"Medians over {rounds} interleaved rounds; servers pinned to CPU {server_cpu} (1 shard/worker). {what}. "
          "CPU µs/req = server CPU time during that client's run / the requests it completed. "
          "Spread = min–max over rounds.\n")
    print(f"| scenario | server | req/s ({main}) | min–max | req/s (wrk) | min–max | p99 ({main}) "
          f"| CPU µs/req ({main} runs) | min–max | CPU µs/req (wrk runs) | server busy ({main} / wrk) "
          f"| RES IPIs/req (CPU 0) | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in scens:
        for n in names:
            m, w = M.get(("load", n, s)), M.get(("wrk", n, s))
            if not m and not w:
                print(f"| {s} | {n} | failed | | | | | | | | | | |")
                continue
            c = []
            c += [fk(m["rps"]), f"{fk(m['rps_min'])}–{fk(m['rps_max'])}"] if m else ["n/a", dash]
            c += [fk(w["rps"]), f"{fk(w['rps_min'])}–{fk(w['rps_max'])}"] if w else [dash, dash]
            c += [fus(m["p99_us"]), f"{m['cpu_us_req']:.2f}", f"{m['cpu_min']:.2f}–{m['cpu_max']:.2f}"] if m \
                else ["n/a", "n/a", dash]
            c += [f"{w['cpu_us_req']:.2f}"] if w else [dash]
            c += [" / ".join(dash if not x or x["busy"] != x["busy"] else f"{x['busy']:.0%}" for x in (m, w))]
            c += [f"{m['res_per_req']:.4f}" if m else f"{w['res_per_req']:.4f}"]
            c += [str((m["errors"] if m else 0) + (w["errors"] if w else 0))]
            print(f"| {s} | {n} | " + " | ".join(c) + " |")
    others = [n for n in names if n != "percore"]

    def paired(t, s, o, col):
        mine = {x["round"]: x[col] for x in res.get((t, "percore", s), [])}
        rs = [mine[x["round"]] / x[col] for x in res.get((t, o, s), []) if x["round"] in mine and x[col]]
        rs = [x for x in rs if x == x]
        if not rs:
            return "n/a"
        return f"{med(rs):.2f}x ({min(rs):.2f}–{max(rs):.2f})"

    def ratio(t, s, o, col):
        p, q = M.get((t, "percore", s)), M.get((t, o, s))
        return f"{p[col] / q[col]:.2f}x" if p and q and q[col] else "n/a"

    if others and any(("load", "percore", s) in M for s in scens):
        print(f"\nRatios percore / peer, {main} runs. `med` = ratio of the medians above; `paired` = median "
              "(and min–max) of the per-round ratios (both servers measured in the same round, which cancels slow "
              "drift in machine load). CPU < 1: percore uses less CPU per request; req/s > 1: percore is faster."
              + (" Last columns per peer: the CPU/request and req/s ratios from the wrk runs (paired medians), as "
                 "a cross-check." if has_wrk else "") + "\n")
        hdr = [f"CPU/req vs {o}: med | paired | req/s vs {o}: med | paired"
               + (f" | CPU/req vs {o} (wrk runs) | req/s vs {o} (wrk runs)" if has_wrk else "") for o in others]
        print("| scenario | " + " | ".join(hdr) + " |")
        print("|---|" + ("---:|" * (6 if has_wrk else 4)) * len(others))
        for s in scens:
            cells = []
            for o in others:
                cells += [ratio("load", s, o, "cpu_us_req"), paired("load", s, o, "cpu_us_req"),
                          ratio("load", s, o, "rps"), paired("load", s, o, "rps")]
                if has_wrk:
                    cells += [paired("wrk", s, o, "cpu_us_req"), paired("wrk", s, o, "rps")]
            print(f"| {s} | " + " | ".join(cells) + " |")
    if has_wrk:
        print("\npercore-load / wrk req/s against the same server process (median of the per-round ratios, "
              "min–max); the clients alternate which runs first.\n")
        print("| scenario | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        for s in scens:
            cells = []
            for n in names:
                w = {x["round"]: x["rps"] for x in res.get(("wrk", n, s), [])}
                rs = [x["rps"] / w[x["round"]] for x in res.get(("load", n, s), []) if w.get(x["round"])]
                rs = [x for x in rs if x == x]
                cells.append(f"{med(rs):.2f}x ({min(rs):.2f}–{max(rs):.2f})" if rs else "n/a")
            print(f"| {s} | " + " | ".join(cells) + " |")


def summarize(raw):
    """Re-print the tables of an earlier run from its raw.tsv (old wrk-only files: every row is tool wrk)."""
    import csv
    rows = list(csv.DictReader(open(raw), delimiter="\t"))
    names, scens, res = [], [], {}
    for r in rows:
        for k in ("rps", "p99_us", "cpu_us_req", "res_per_req", "cal_per_req", "busy"):
            r[k] = float(r.get(k) or "nan")
        for k in ("round", "errors", "non2xx", "requests"):
            r[k] = int(r[k])
        r.setdefault("tool", "wrk")
        if r["server"] not in names:
            names.append(r["server"])
        if r["scenario"] not in scens:
            scens.append(r["scenario"])
        res.setdefault((r["tool"], r["server"], r["scenario"]), []).append(r)
    names.sort(key=lambda n: (n != "percore", n != "nginx"))
    main = "percore-load"
    if not any(k[0] == "load" for k in res):  # old wrk-only run: show wrk's figures in the main columns
        res = {("load",) + k[1:]: v for k, v in res.items()}
        main = "wrk"
    meta = os.path.join(os.path.dirname(raw), "meta.txt")
    text = open(meta).read() if os.path.exists(meta) else ""
    dur = re.search(r"(?:-d|--duration)[ =](\d+)", text)
    wdur = re.search(r"\(-d(\d+)\)", text)
    print_tables(res, names, scens, max(r["round"] for r in rows), dur.group(1) if dur else "?",
                 wdur.group(1) if wdur else "?", main=main)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--summarize":
        summarize(sys.argv[2])
    else:
        main()
