#!/usr/bin/env python3
# Interleaved A/B benchmark of percore vs nginx and other peers (CPU µs/request, IPIs/request); see bench/compare.sh.
"""Interleaved A/B/A/B benchmark of percore against nginx (and any --extra peer).

Called by bench/compare.sh (see there for the usage). Every server runs pinned to
CPU 0 (1 shard / 1 worker), wrk -t1 runs pinned to CPU 1. For every round the
servers take turns (the starting server rotates each round); each server is started
fresh, its endpoints are checked, it gets a 1 s unmeasured warm-up, then every
scenario runs once. Per run we record wrk's req/s and p99, the server's CPU time
(utime+stime from /proc/PID/stat over its whole process tree, before/after the wrk
run) divided by the requests wrk completed, and the reschedule IPIs (RES line of
/proc/interrupts) received by the server's CPU divided by the same request count.

Prints a markdown table (medians over rounds, plus min-max spread) to stdout and
keeps every wrk output and a raw TSV under bench/out/compare-<stamp>/.
"""
import argparse
import datetime
import http.client
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
PEERS = os.path.normpath(os.path.join(REPO, "..", "shared", "lab", "peers"))
TICK = os.sysconf("SC_CLK_TCK")

# name -> (path, connections, pipeline depth)
SCENARIOS = {
    "plaintext-c64": ("/plaintext", 64, 1),
    "plaintext-c512": ("/plaintext", 512, 1),
    "pipelined-x16": ("/plaintext", 64, 16),
    "json-c64": ("/json", 64, 1),
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
    def __init__(self, name, cmd, port, logdir, server_cpu):
        self.name, self.port = name, port
        full = cmd.replace("{port}", str(port)).replace("{workers}", "1")
        self.log = open(os.path.join(logdir, f"{name}.server.log"), "ab")
        env = dict(os.environ, PORT=str(port), WORKERS="1")
        # 'exec env CMD' lets a template start with VAR=value; env execs the server itself.
        self.p = subprocess.Popen(["taskset", "-c", str(server_cpu), "bash", "-c", "exec env " + full],
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


def run_wrk(port, scen, dur, client_cpu, outfile):
    path, conns, depth = SCENARIOS[scen]
    cmd = ["taskset", "-c", str(client_cpu), "wrk", "-t1", f"-c{conns}", f"-d{dur}s", "--latency"]
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
    ap.add_argument("-d", "--duration", type=int, default=5)
    ap.add_argument("-s", "--scenarios", default=",".join(SCENARIOS),
                    help="comma list of: " + ", ".join(SCENARIOS))
    ap.add_argument("--percore", required=True, help="percore binary")
    ap.add_argument("--percore-args", default="", help="extra flags for percore")
    ap.add_argument("--no-nginx", action="store_true")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=CMD",
                    help="another server; CMD with {port} (and optional {workers}), may start with VAR=value")
    ap.add_argument("--base-port", type=int, default=18050)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(BENCH, "out"))
    a = ap.parse_args()

    scens = [s for s in a.scenarios.split(",") if s]
    for s in scens:
        if s not in SCENARIOS:
            sys.exit(f"unknown scenario {s}")
    servers = [("percore", f"{a.percore} --bind 127.0.0.1:{{port}} --cores {a.server_cpu} "
                           f"--max-conns 20000 {a.percore_args}")]
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
        for n, c in servers:
            f.write(f"server {n}: {c}\n")
    raw = open(os.path.join(logdir, "raw.tsv"), "w")
    cols = ["round", "server", "scenario", "rps", "p99_us", "requests", "utime", "stime", "cpu_us_req",
            "res_cpu", "res_per_req", "cal_per_req", "errors", "non2xx"]
    raw.write("\t".join(cols) + "\n")
    print(f"logs: {logdir}", file=sys.stderr)

    ports = {n: a.base_port + i for i, (n, _) in enumerate(servers)}
    res = {(n, s): [] for n, _ in servers for s in scens}
    failed = {}
    cur = None

    def on_signal(sig, frm):
        if cur:
            cur.stop()
        sys.exit(130)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    for r in range(1, a.rounds + 1):
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
                    subprocess.run(["taskset", "-c", str(a.client_cpu), "wrk", "-t1", "-c64", f"-d{a.warmup}s",
                                    f"http://127.0.0.1:{port}/plaintext"], capture_output=True)
                for s in scens:
                    u0, s0 = cpu_ticks(cur.p.pid)
                    i0, c0 = irq("RES", a.server_cpu), irq("CAL", a.server_cpu)
                    w = run_wrk(port, s, a.duration, a.client_cpu, os.path.join(logdir, f"r{r}.{name}.{s}.wrk"))
                    i1, c1 = irq("RES", a.server_cpu), irq("CAL", a.server_cpu)
                    u1, s1 = cpu_ticks(cur.p.pid)
                    n = w["requests"]
                    row = dict(w, round=r, server=name, scenario=s, utime=u1 - u0, stime=s1 - s0,
                               cpu_us_req=((u1 - u0) + (s1 - s0)) * 1e6 / TICK / n if n else float("nan"),
                               res_cpu=i1 - i0, res_per_req=(i1 - i0) / n if n else float("nan"),
                               cal_per_req=(c1 - c0) / n if n else float("nan"))
                    res[(name, s)].append(row)
                    raw.write("\t".join(str(row[c]) for c in cols) + "\n")
                    raw.flush()
                    print(f"round {r}/{a.rounds} {name:10s} {s:15s} {w['rps']:>11.0f} req/s  "
                          f"p99 {fus(w['p99_us']):>9s}  cpu {row['cpu_us_req']:.2f} us/req  "
                          f"RES {row['res_per_req']:.4f}/req  err {w['errors']} non2xx {w['non2xx']}",
                          file=sys.stderr, flush=True)
            finally:
                cur.stop()
                cur = None
                time.sleep(0.3)

    print_tables(res, [n for n, _ in servers], scens, a.rounds, a.duration, a.server_cpu, a.client_cpu)
    if failed:
        print("\nFailed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    print("\nServers:")
    for n, c in servers:
        print(f"- {n}: `{c}`")
    print(f"\nRaw data: `{os.path.relpath(logdir, REPO)}/raw.tsv`")


def print_tables(res, names, scens, rounds, duration, server_cpu=0, client_cpu=1):
    """res: {(server, scenario): [row dicts with round, rps, p99_us, cpu_us_req, res_per_req, ...]}"""
    M = {}
    for key, rows in res.items():
        if rows:
            M[key] = {c: med([x[c] for x in rows]) for c in ("rps", "p99_us", "cpu_us_req", "res_per_req",
                                                              "cal_per_req")}
            M[key]["rps_min"] = min(x["rps"] for x in rows)
            M[key]["rps_max"] = max(x["rps"] for x in rows)
            M[key]["cpu_min"] = min(x["cpu_us_req"] for x in rows)
            M[key]["cpu_max"] = max(x["cpu_us_req"] for x in rows)
            M[key]["errors"] = sum(x["errors"] + x["non2xx"] for x in rows)
            M[key]["n"] = len(rows)
    print(f"Medians over {rounds} interleaved rounds x {duration} s; servers pinned to CPU {server_cpu} "
          f"(1 shard/worker), `wrk -t1` pinned to CPU {client_cpu}. Spread = min–max over rounds. "
          f"p99 of pipelined runs is unreliable: wrk often prints 0 for it with pipelining (zeros are dropped, n/a when all are).\n")
    print("| scenario | server | req/s | req/s min–max | p99 | CPU µs/req | CPU µs/req min–max "
          "| RES IPIs/req (CPU 0) | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in scens:
        for n in names:
            m = M.get((n, s))
            if not m:
                print(f"| {s} | {n} | failed | | | | | | |")
                continue
            print(f"| {s} | {n} | {fk(m['rps'])} | {fk(m['rps_min'])}–{fk(m['rps_max'])} | {fus(m['p99_us'])} "
                  f"| {m['cpu_us_req']:.2f} | {m['cpu_min']:.2f}–{m['cpu_max']:.2f} | {m['res_per_req']:.4f} "
                  f"| {m['errors']} |")
    others = [n for n in names if n != "percore"]
    if not others or not any(("percore", s) in M for s in scens):
        return
    print("\nRatios percore / peer. `med` = ratio of the medians above; `paired` = median (and min–max) of the "
          "per-round ratios (both servers measured in the same round, which cancels slow drift in machine "
          "load). CPU < 1: percore uses less CPU per request; req/s > 1: percore is faster.\n")
    print("| scenario | " + " | ".join(f"CPU/req vs {o}: med | paired | req/s vs {o}: med | paired"
                                       for o in others) + " |")
    print("|---|" + "---:|---:|---:|---:|" * len(others))

    def paired(s, o, col):
        mine = {x["round"]: x[col] for x in res.get(("percore", s), [])}
        rs = [mine[x["round"]] / x[col] for x in res.get((o, s), []) if x["round"] in mine and x[col]]
        if not rs:
            return "n/a"
        return f"{med(rs):.2f}x ({min(rs):.2f}–{max(rs):.2f})"
    for s in scens:
        p = M.get(("percore", s))
        cells = []
        for o in others:
            q = M.get((o, s))
            if p and q:
                cells += [f"{p['cpu_us_req'] / q['cpu_us_req']:.2f}x", paired(s, o, "cpu_us_req"),
                          f"{p['rps'] / q['rps']:.2f}x", paired(s, o, "rps")]
            else:
                cells += ["n/a"] * 4
        print(f"| {s} | " + " | ".join(cells) + " |")


def summarize(raw):
    """Re-print the tables of an earlier run from its raw.tsv."""
    import csv
    rows = list(csv.DictReader(open(raw), delimiter="\t"))
    names, scens, res = [], [], {}
    for r in rows:
        for k in ("rps", "p99_us", "cpu_us_req", "res_per_req", "cal_per_req"):
            r[k] = float(r[k])
        for k in ("round", "errors", "non2xx", "requests"):
            r[k] = int(r[k])
        if r["server"] not in names:
            names.append(r["server"])
        if r["scenario"] not in scens:
            scens.append(r["scenario"])
        res.setdefault((r["server"], r["scenario"]), []).append(r)
    names.sort(key=lambda n: (n != "percore", n != "nginx"))
    meta = os.path.join(os.path.dirname(raw), "meta.txt")
    dur = re.search(r"(?:-d|--duration)[ =](\d+)", open(meta).read()) if os.path.exists(meta) else None
    print_tables(res, names, scens, max(r["round"] for r in rows), dur.group(1) if dur else "?")

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--summarize":
        summarize(sys.argv[2])
    else:
        main()
