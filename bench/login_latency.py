#!/usr/bin/env python3
# /plaintext latency (percore-load open loop, fixed rate) of a 1-shard percore on CPU 0, alone vs while a second client keeps POSTing wrong-password logins to /auth/login; interleaved rounds, server CPU per thread.
"""Login latency benchmark: does password hashing disturb the shard?

percore runs with a users file (one user, alice) and --login-max-failures 1000000, one shard on
CPU 0 (`--cores 0`), over plain HTTP. Each round runs, in alternating order:

  alone   percore-load -t 1 --cpus 1 -c C -d D --warmup 1s --rate R --json F http://.../plaintext
  logins  the same, while a login client (Python, pinned to CPU 1, N keep-alive connections)
          POSTs {"username":"alice","password":"wrong"} to /auth/login in a loop

for each pinning mode:

  cores   `percore --cores 0`: the shard thread is pinned to CPU 0; the password-hash pool
          thread (glommio PoolPlacement::Unbound) may run on CPU 0 or 1
  taskset `taskset -c 0 percore --cores 0`: the whole process, hash thread included, on CPU 0

Server CPU comes from /proc/PID/task/TID/stat, split into the shard thread (the thread pinned to
exactly the server CPU that did the most work) and the rest (hash pool and others).

Usage: bench/login_latency.py [-r ROUNDS] [-d SECONDS] [--rate R] [-c CONNS] [--login-conns N]
                              [--modes cores,taskset] [--percore BIN] [--percore-load BIN]
Raw outputs: bench/out/login-<stamp>/.
"""
import argparse
import datetime
import http.client
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
TICK = os.sysconf("SC_CLK_TCK")
BODY = b'{"username":"alice","password":"wrong"}'


def login_client(port, conns, duration, cpu, out):
    """Runs in a child process: N threads, each a keep-alive connection POSTing wrong logins."""
    os.sched_setaffinity(0, {cpu})
    stop = time.time() + duration
    counts, lat = {}, []
    lock = threading.Lock()

    def worker():
        c = None
        while time.time() < stop:
            try:
                if c is None:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                t0 = time.perf_counter()
                c.request("POST", "/auth/login", body=BODY, headers={"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                dt = time.perf_counter() - t0
                with lock:
                    counts[r.status] = counts.get(r.status, 0) + 1
                    lat.append(dt)
                if r.getheader("Connection", "").lower() == "close":
                    c.close()
                    c = None
            except Exception as e:  # noqa: BLE001
                with lock:
                    k = "error:" + type(e).__name__
                    counts[k] = counts.get(k, 0) + 1
                c = None
                time.sleep(0.01)

    t0 = time.time()
    ts = [threading.Thread(target=worker) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    el = time.time() - t0
    lat.sort()
    json.dump({"elapsed_s": el, "counts": {str(k): v for k, v in counts.items()},
               "logins_per_s": sum(v for k, v in counts.items() if isinstance(k, int)) / el,
               "login_latency_ms_p50": 1e3 * lat[len(lat) // 2] if lat else None,
               "login_latency_ms_max": 1e3 * lat[-1] if lat else None}, open(out, "w"))


def threads(pid):
    """{tid: (comm, cpus_allowed_list, ticks)}"""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            allowed = [ln.split()[1] for ln in open(f"/proc/{pid}/task/{tid}/status") if ln.startswith("Cpus_allowed_list")][0]
            st = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            out[int(tid)] = (comm, allowed, int(st[11]) + int(st[12]))
        except (OSError, IndexError):
            pass
    return out


def med(xs):
    xs = [x for x in xs if x is not None and x == x]
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("-d", "--duration", type=int, default=10)
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("-c", "--conns", type=int, default=64)
    ap.add_argument("--login-conns", type=int, default=4)
    ap.add_argument("--modes", default="cores,taskset")
    ap.add_argument("--percore", default=os.environ.get("PERCORE_BIN", "/tmp/bench-bin/percore"))
    ap.add_argument("--percore-load", default=os.environ.get("PERCORE_LOAD_BIN", "/tmp/bench-bin/percore-load"))
    ap.add_argument("--port", type=int, default=18090)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(BENCH, "out"))
    ap.add_argument("--login-client", nargs=4, metavar=("PORT", "CONNS", "SECONDS", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.login_client:
        p, n, d, o = a.login_client
        login_client(int(p), int(n), float(d), a.client_cpu, o)
        return

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir = os.path.join(a.out, f"login-{stamp}")
    os.makedirs(logdir)
    print(f"raw outputs: {logdir}", file=sys.stderr)
    users = os.path.join(logdir, "users.toml")
    phc = subprocess.run([a.percore, "hash-password"], input="secret\n", capture_output=True, text=True,
                         check=True).stdout.strip()
    with open(users, "w") as f:
        f.write(f'# one user for bench/login_latency.py (password "secret")\n[[user]]\nname = "alice"\n'
                f'password_hash = "{phc}"\nroles = ["user"]\n')
    with open(os.path.join(logdir, "meta.txt"), "w") as f:
        f.write(f"{datetime.datetime.now(datetime.timezone.utc):%a %b %d %H:%M:%S UTC %Y}\n"
                + " ".join(shlex.quote(x) for x in sys.argv) + "\n")
    modes = [m for m in a.modes.split(",") if m]
    res = {}
    for r in range(1, a.rounds + 1):
        mode_order = modes if r % 2 else modes[::-1]
        for mode in mode_order:
            data = os.path.join(logdir, f"data-r{r}-{mode}")
            cmd = [a.percore, "--bind", f"127.0.0.1:{a.port}", "--cores", str(a.server_cpu), "--data-dir", data,
                   "--users", users, "--login-max-failures", "1000000"]
            if mode == "taskset":
                cmd = ["taskset", "-c", str(a.server_cpu)] + cmd
            log = open(os.path.join(logdir, f"r{r}.{mode}.server.log"), "wb")
            srv = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                t = time.time() + 15
                while time.time() < t:
                    try:
                        c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=1)
                        c.request("GET", "/plaintext")
                        ok = c.getresponse().read() == b"Hello, World!"
                        c.close()
                        if ok:
                            break
                    except OSError:
                        time.sleep(0.1)
                else:
                    sys.exit(f"percore did not start, see {log.name}")
                with open(os.path.join(logdir, f"r{r}.{mode}.cmd"), "w") as f:
                    f.write(" ".join(shlex.quote(x) for x in cmd) + "\n")
                order = ["alone", "logins"] if r % 2 else ["logins", "alone"]
                for case in order:
                    base = os.path.join(logdir, f"r{r}.{mode}.{case}")
                    lc = None
                    if case == "logins":
                        lc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--client-cpu", str(a.client_cpu),
                                               "--login-client", str(a.port), str(a.login_conns),
                                               str(a.duration + 1.5), base + ".logins.json"])
                        time.sleep(0.3)
                    lcmd = [a.percore_load, "-t", "1", "--cpus", str(a.client_cpu), "-c", str(a.conns),
                            "-d", f"{a.duration}s", "--warmup", "1s", "--rate", str(a.rate), "--json", base + ".json",
                            f"http://127.0.0.1:{a.port}/plaintext"]
                    p = subprocess.Popen(lcmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    time.sleep(1.0)  # percore-load's --warmup 1s: CPU is sampled over the measured part only
                    th0 = threads(srv.pid)
                    w0 = time.time()
                    p.stdout_text = p.communicate()[0]
                    wall = time.time() - w0
                    th1 = threads(srv.pid)
                    p.stderr_text = ""
                    if lc:
                        lc.wait()
                    with open(base + ".load", "w") as f:
                        f.write(" ".join(shlex.quote(x) for x in lcmd) + "\n" + p.stdout_text)
                    run = json.load(open(base + ".json"))["run"]
                    delta = {tid: (v[0], v[1], v[2] - th0.get(tid, (0, 0, 0))[2]) for tid, v in th1.items()}
                    pinned = [tid for tid, v in delta.items() if v[1] == str(a.server_cpu)]
                    shard = max(pinned, key=lambda t: delta[t][2]) if pinned else None
                    total = sum(v[2] for v in delta.values())
                    shard_t = delta[shard][2] if shard else 0
                    n = run["requests"]
                    lj = json.load(open(base + ".logins.json")) if lc else {}
                    row = {
                        "round": r, "mode": mode, "case": case, "rps": run["requests_per_s"], "requests": n,
                        "p50": run["latency_us"]["p50"], "p99": run["latency_us"]["p99"],
                        "p999": run["latency_us"]["p99_9"], "max": run["latency_us"]["max"],
                        "errors": run["errors"]["total"], "non2xx": sum(v for k, v in run["status"].items() if k != "2xx"),
                        "cpu_total_s": total / TICK, "cpu_shard_s": shard_t / TICK, "cpu_other_s": (total - shard_t) / TICK,
                        "wall_s": wall,
                        # CPU over the sampled window / the requests percore-load counted (its measured part)
                        "shard_us_req": shard_t * 1e6 / TICK / n if n else float("nan"),
                        "logins_per_s": lj.get("logins_per_s", 0.0), "login_counts": lj.get("counts", {}),
                        "login_p50_ms": lj.get("login_latency_ms_p50"),
                        "threads": {str(t): [v[0], v[1], v[2]] for t, v in delta.items()},
                    }
                    res.setdefault((mode, case), []).append(row)
                    with open(os.path.join(logdir, "raw.jsonl"), "a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"round {r} {mode:7s} {case:6s} {row['rps']:8.0f} req/s p50 {row['p50']}us p99 {row['p99']}us "
                          f"p99.9 {row['p999']}us max {row['max']}us err {row['errors']} non2xx {row['non2xx']} "
                          f"cpu total {row['cpu_total_s']:.2f}s shard {row['cpu_shard_s']:.2f}s other {row['cpu_other_s']:.2f}s "
                          f"(wall {wall:.1f}s) logins/s {row['logins_per_s']:.1f} {row['login_counts']}",
                          file=sys.stderr, flush=True)
            finally:
                srv.send_signal(signal.SIGTERM)
                try:
                    srv.wait(10)
                except subprocess.TimeoutExpired:
                    srv.kill()
                    srv.wait()
                log.close()
                time.sleep(0.5)

    rounds = list(range(1, a.rounds + 1))
    print(f"Open loop at {a.rate} req/s, {a.conns} connections, {a.duration} s (+1 s warm-up) per run; "
          f"latency in µs from percore-load's HdrHistogram (corrected for coordinated omission). CPU = server CPU "
          f"seconds from the end of percore-load's 1 s warm-up to its exit (about {a.duration} s): shard thread / other "
          f"threads (hash pool etc.); shard µs/req = shard CPU / requests percore-load counted.\n")
    print("| mode | case | " + " | ".join(f"r{r} p99 µs" for r in rounds)
          + " | p50 µs | p99 µs | p99.9 µs | max µs | achieved req/s | shard CPU s | other CPU s | shard µs/req | logins/s | login p50 ms | errors |")
    print("|---|---|" + "---:|" * len(rounds) + "---:|" * 11)
    for mode in modes:
        for case in ("alone", "logins"):
            xs = res.get((mode, case), [])
            if not xs:
                continue
            byr = {x["round"]: x for x in xs}
            cells = [str(byr[r]["p99"]) if r in byr else "-" for r in rounds]
            errs = sum(x["errors"] + x["non2xx"] for x in xs)
            lg = f"{med([x['logins_per_s'] for x in xs]):.1f}" if case == "logins" else "-"
            lp = f"{med([x['login_p50_ms'] for x in xs]):.0f}" if case == "logins" else "-"
            print(f"| {mode} | {case} | " + " | ".join(cells)
                  + f" | {med([x['p50'] for x in xs]):.0f} | {med([x['p99'] for x in xs]):.0f} | {med([x['p999'] for x in xs]):.0f} "
                  f"| {med([x['max'] for x in xs]):.0f} | {med([x['rps'] for x in xs]):.0f} | {med([x['cpu_shard_s'] for x in xs]):.2f} "
                  f"| {med([x['cpu_other_s'] for x in xs]):.2f} | {med([x['shard_us_req'] for x in xs]):.2f} | {lg} | {lp} | {errs} |")
    print("\nRatios logins / alone (median of the per-round ratios, min–max):\n")
    print("| mode | p50 | p99 | p99.9 | shard µs/req |")
    print("|---|---:|---:|---:|---:|")
    for mode in modes:
        al = {x["round"]: x for x in res.get((mode, "alone"), [])}
        cells = []
        for col in ("p50", "p99", "p999", "shard_us_req"):
            rs = [x[col] / al[x["round"]][col] for x in res.get((mode, "logins"), []) if x["round"] in al and al[x["round"]][col]]
            cells.append(f"{med(rs):.2f}x ({min(rs):.2f}–{max(rs):.2f})" if rs else "n/a")
        print(f"| {mode} | " + " | ".join(cells) + " |")
    print(f"\nRaw: `{os.path.relpath(logdir, os.path.dirname(BENCH))}/` (raw.jsonl with per-thread CPU, percore-load JSON "
          "and text, login client JSON, server commands and logs)")


if __name__ == "__main__":
    main()
