#!/usr/bin/env python3
"""Multi-core scaling: percore with N shards against nginx with N workers (and any --extra peer),
N = 1, 2, 4, 8 by default, on a machine with enough CPUs for the servers and the client apart.

    python3 bench/scaling.py [--shards 1,2,4,8] [--client-cpus 8-15] [--rounds 2] [-d 4]
                             [--scenarios plaintext,pipelined] [--percore BIN] [--percore-load BIN]
                             [--nginx-run PATH|none] [--extra NAME=CMD] [--out DIR]

For N servers' cores the servers get CPUs 0..N-1 (percore `--cores 0-(N-1)`, nginx and the
peers under `taskset -c 0-(N-1)` with N workers, each pinned by its launcher), and percore-load
runs one thread per client CPU, pinned to --client-cpus, so server and client never share a CPU.
Connections scale with N (64 per server core, the 1-core runs' figure); pipelined runs send 16
requests per write. The order of the servers rotates every round and each server is started fresh
for each (N, round). Per run it records req/s, p99 and the server's CPU time per request
(utime+stime of its process tree from /proc/PID/stat, as bench/compare.py does) and the server's
CPU use as a share of its N cores (near 100% = the server is the bottleneck, well below = the
client is). Prints medians per (N, scenario, server) and the ratios to nginx at the same N, and
keeps a TSV of every run under --out.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
from compare import Server, TICK, check, cpu_ticks  # noqa: E402

CONNS_PER_CORE = 64
SCENARIOS = {"plaintext": ("/plaintext", 1), "pipelined": ("/plaintext", 16), "json": ("/json", 1)}


def cpu_list(spec):
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += range(int(a), int(b or a) + 1)
    return out


def run_load(load_bin, port, scen, n, client_cpus, dur, jf):
    path, depth = SCENARIOS[scen]
    threads = min(len(client_cpus), CONNS_PER_CORE * n)
    cmd = [load_bin, "-t", str(threads), "--cpus", ",".join(map(str, client_cpus)),
           "-c", str(CONNS_PER_CORE * n), "-d", f"{dur}s", "--pipeline", str(depth), "--json", jf,
           f"http://127.0.0.1:{port}{path}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    try:
        run = json.load(open(jf))["run"]
        return float(run["requests_per_s"]), int(run["requests"]), float(run["latency_us"]["p99"]), \
            int(run["errors"]["total"]) + (r.returncode != 0)
    except (OSError, ValueError, KeyError):
        sys.stderr.write(r.stdout + r.stderr)
        return float("nan"), 0, float("nan"), 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", default="1,2,4,8")
    ap.add_argument("--client-cpus", default="8-15")
    ap.add_argument("-r", "--rounds", type=int, default=2)
    ap.add_argument("-d", "--duration", type=int, default=4)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--scenarios", default="plaintext,pipelined")
    ap.add_argument("--percore", default=os.path.join(os.path.dirname(BENCH), "target/release/percore"))
    ap.add_argument("--percore-load", default=os.path.join(os.path.dirname(BENCH), "target/release/percore-load"))
    ap.add_argument("--nginx-run", default=os.path.normpath(os.path.join(BENCH, "../../shared/lab/peers/nginx/run.sh")),
                    help="the peers' nginx launcher (run.sh PORT WORKERS), or 'none'")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=CMD",
                    help="another server; CMD may use {port}, {workers}, {cores}")
    ap.add_argument("--base-port", type=int, default=18060)
    ap.add_argument("--out", default=os.path.join(BENCH, "out"))
    a = ap.parse_args()

    ns = [int(x) for x in a.shards.split(",")]
    client = cpu_list(a.client_cpus)
    # A data dir of its own ({data}): the default (./percore-data) may hold a log of another shard count.
    servers = [("percore", f"{a.percore} --bind 127.0.0.1:{{port}} --cores {{cores}} --max-conns 20000 "
                           "--data-dir {data}")]
    if a.nginx_run != "none":
        servers.append(("nginx", f"{a.nginx_run} {{port}} {{workers}}"))
    for e in a.extra:
        name, _, cmd = e.partition("=")
        servers.append((name, cmd))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = os.path.join(a.out, f"scaling-{stamp}")
    os.makedirs(out, exist_ok=True)
    rows = []
    tsv = open(os.path.join(out, "runs.tsv"), "w")
    tsv.write("round\tn\tserver\tscenario\trps\trequests\tp99_us\terrors\tcpu_us_per_req\tserver_util\n")
    print(f"# {os.cpu_count()} CPUs, client CPUs {client}, {a.rounds} rounds x {a.duration} s, out {out}", flush=True)
    port = a.base_port
    for rnd in range(a.rounds):
        for n in ns:
            cores = list(range(n))
            order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
            for name, cmd in order:
                port += 1
                cores_arg = f"0-{n - 1}" if n > 1 else "0"
                s = Server(f"{name}-{n}", cmd.replace("{cores}", cores_arg), port, out,
                           ",".join(map(str, cores)), workers=n)
                if not s.wait_ready() or check(port, "/plaintext"):
                    print(f"{name} n={n}: did not start or answers wrongly (see {out})", flush=True)
                    s.stop()
                    continue
                for scen in a.scenarios.split(","):
                    if a.warmup:
                        run_load(a.percore_load, port, scen, n, client, a.warmup, os.path.join(out, "warm.json"))
                    u0, s0 = cpu_ticks(s.p.pid)
                    t0 = time.time()
                    rps, reqs, p99, errs = run_load(a.percore_load, port, scen, n, client, a.duration,
                                                    os.path.join(out, f"{name}-{n}-{scen}-{rnd}.json"))
                    wall = time.time() - t0
                    u1, s1 = cpu_ticks(s.p.pid)
                    cpu_s = (u1 - u0 + s1 - s0) / TICK
                    per = cpu_s * 1e6 / reqs if reqs else float("nan")
                    util = cpu_s / (wall * n)
                    rows.append((n, name, scen, rps, per, p99, util, errs))
                    tsv.write(f"{rnd}\t{n}\t{name}\t{scen}\t{rps:.0f}\t{reqs}\t{p99:.0f}\t{errs}\t{per:.3f}\t{util:.2f}\n")
                    tsv.flush()
                    print(f"r{rnd} n={n} {name:8} {scen:9} {rps / 1e3:8.1f}k req/s  {per:6.2f} µs/req  "
                          f"p99 {p99:7.0f} µs  server {util * 100:3.0f}%  errors {errs}", flush=True)
                s.stop()

    def med(xs):
        xs = [x for x in xs if x == x]
        return statistics.median(xs) if xs else float("nan")

    print("\n| cores | scenario | server | req/s | per core | CPU µs/req | p99 µs | server busy | req/s vs nginx | CPU/req vs nginx |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in ns:
        for scen in a.scenarios.split(","):
            ref = [r for r in rows if r[0] == n and r[2] == scen and r[1] == "nginx"]
            ref_rps, ref_per = med([r[3] for r in ref]), med([r[4] for r in ref])
            for name, _ in servers:
                rs = [r for r in rows if r[0] == n and r[2] == scen and r[1] == name]
                if not rs:
                    continue
                rps, per = med([r[3] for r in rs]), med([r[4] for r in rs])
                print(f"| {n} | {scen} | {name} | {rps / 1e3:.1f}k | {rps / n / 1e3:.1f}k | {per:.2f} | "
                      f"{med([r[5] for r in rs]):.0f} | {med([r[6] for r in rs]) * 100:.0f}% | "
                      f"{rps / ref_rps:.2f}x | {per / ref_per:.2f}x |")
    if any(r[7] for r in rows):
        print("\nerrors in some runs: see runs.tsv")


if __name__ == "__main__":
    main()
