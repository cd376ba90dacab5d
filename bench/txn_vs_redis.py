#!/usr/bin/env python3
"""Transfers/s and latency: percore /kv/tx (single-shard and cross-shard `add` transfers,
--fsync batch) vs Redis (appendonly yes, appendfsync always), interleaved rounds.

    python3 bench/txn_vs_redis.py [--rounds 3] [--seconds 8] [--conns 64] [--modes LIST] [--percore-args 'FLAGS'] [--baseline DIR] [--out DIR] [--accounts 2048]

Needs release `percore` and `percore-load` (PERCORE_BIN_DIR, default
/tmp/percore-txnbench-target/release) and redis-server, redis-benchmark, redis-cli on PATH.

Placement (the defaults, for the 2-CPU machine): percore runs `--shards 2` (shard 0 pinned to CPU 0,
shard 1 to CPU 1); redis-server runs under `taskset -c 0-1`; every client runs unpinned under
`taskset -c 0-1` too. Client and server therefore share both CPUs in every mode. On a larger machine
`--shards N --server-cpus LIST --client-cpus LIST --client-threads T` give percore N shards on the
first N CPUs of LIST (Redis runs on LIST too, single-threaded as it is) and the clients their own
CPUs and threads (percore-load -t T, redis-benchmark --threads T; the compiled Redis client of the
MULTI modes is one executor whatever T: it spent ~6 µs per transaction on the 2-CPU machine, well
under a CPU at the rates Redis reaches).

Modes, one fresh server (and fresh data dir) per mode per round, order rotated each round:
  percore-single  POST /kv/tx {add A -1 floor 0, add B +1}, A and B owned by the same shard
  percore-cross   the same, A and B owned by different shards (two-phase commit)
  percore-hot     cross-shard transfers that all share one account (owned by shard 0): nearly
                  every answer is a 409, and committed/s measures how long that account stays locked
  redis-eval      EVAL (GET A, check floor, DECRBY A 1, INCRBY B 1) via redis-benchmark
  redis-watch     the same transfer with its floor as a Redis user writes it with MULTI/EXEC: WATCH A,
                  GET A, check the floor, MULTI / DECRBY A 1 / INCRBY B 1 / EXEC, again from WATCH
                  when EXEC answers nil (A changed meanwhile: Redis' conflict, as percore's 409);
                  committed transactions/s
  redis-multi     MULTI / DECRBY A 1 / INCRBY B 1 / EXEC (no floor)
  Both are driven by bench/redis_tx_client.rs (compiled, one glommio executor, one transaction in
  flight per connection), so Redis' client costs about what percore-load costs percore; the
  Python client below (--python-redis-client) drove redis-multi before 2026-11-27 14:00 UTC and
  costs about twice the CPU per transaction.
  base-single, base-cross, base-hot   the percore modes with the binaries in --baseline DIR (an older
                  build), interleaved with the others for an A/B of two percore versions
Server CPU per transaction: utime+stime of the server process (/proc/PID/stat) over the
measured run, divided by transactions answered. Client CPU: rusage of the client process.
"""

import argparse
import json
import os
import random
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ACCOUNTS = 2048  # --accounts
SEED_BALANCE = 1_000_000_000
PAIRS = ACCOUNTS // 2  # one [[request]] each: a scenario holds at most 16384
PERCORE_PORT = 18431
REDIS_PORT = 16391
CLK_TCK = os.sysconf("SC_CLK_TCK")

REDIS_SCRIPT = (
    "local a = tonumber(redis.call('GET', KEYS[1]) or '0') "
    "if a - 1 < 0 then return {0, a} end "
    "return {redis.call('DECRBY', KEYS[1], 1), redis.call('INCRBY', KEYS[2], 1)}"
)


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C and fnv1a64(b"foobar") == 0x85944171F73967E8


SHARDS = 2  # --shards
SERVER_CPUS = "0-1"  # --server-cpus
CLIENT_CPUS = "0-1"  # --client-cpus


def owner(key: str) -> int:
    return fnv1a64(key.encode()) % SHARDS


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def tx_body(a: str, b: str) -> str:
    return json.dumps(
        {"ops": [{"op": "add", "key": a, "delta": -1, "floor": 0}, {"op": "add", "key": b, "delta": 1}]},
        separators=(",", ":"),
    )


def write_scenarios(workdir: str) -> dict:
    keys = [f"acct{i:04d}" for i in range(ACCOUNTS)]
    by_owner = {o: [k for k in keys if owner(k) == o] for o in range(SHARDS)}
    rng = random.Random(42)
    for v in by_owner.values():
        rng.shuffle(v)
    single, cross = [], []
    # single-shard: disjoint pairs inside each owner's accounts, an equal share per shard
    for o in range(SHARDS):
        ks = by_owner[o]
        for i in range(PAIRS // SHARDS):
            a, b = ks[(2 * i) % len(ks)], ks[(2 * i + 1) % len(ks)]
            single.append((a, b) if i % 2 == 0 else (b, a))
    # cross-shard: accounts of two different owners per pair, every ordered pair of owners
    # equally often (with 2 shards: one of each, direction alternating), each owner's accounts
    # taken in turn (a cursor per owner), so every account is used about equally often
    cursor = {o: 0 for o in range(SHARDS)}

    def take(o):
        k = by_owner[o][cursor[o] % len(by_owner[o])]
        cursor[o] += 1
        return k

    for i in range(PAIRS):
        o1 = i % SHARDS
        o2 = (o1 + 1 + (i // SHARDS) % (SHARDS - 1)) % SHARDS
        a = take(o1)
        cross.append((a, take(o2)))
    # hot: every transfer has one account in common (owned by shard 0), the other on shard 1
    hot_key = by_owner[0][0]
    hot = [(hot_key, b) if i % 2 == 0 else (b, hot_key) for i, b in enumerate(by_owner[1][:PAIRS])]
    assert all(owner(a) == owner(b) for a, b in single)
    assert all(owner(a) != owner(b) for a, b in cross + hot)
    paths = {}
    for name, pairs in (("single", single), ("cross", cross), ("hot", hot)):
        path = os.path.join(workdir, f"transfers-{name}.toml")
        with open(path, "w") as f:
            f.write(f"# {len(pairs)} {name}-shard transfer pairs over {ACCOUNTS} accounts\n")
            for i, (a, b) in enumerate(pairs):
                body = tx_body(a, b).replace("\\", "\\\\").replace('"', '\\"')
                f.write(
                    f'[[request]]\nname = "t{i}"\nmethod = "POST"\npath = "/kv/tx"\n'
                    f'body = "{body}"\nheaders = {{ "Content-Type" = "application/json" }}\n\n'
                )
        paths[name] = path
    return {"paths": paths, "keys": keys, "owners": {o: len(v) for o, v in by_owner.items()}}


def http(sock: socket.socket, method: str, path: str, body: bytes = b"") -> tuple:
    sock.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, v = line.split(b":", 1)
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), rest[:length]


def start_percore(bindir: str, datadir: str, extra=()) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CPUS,
         f"{bindir}/percore", "--bind", f"127.0.0.1:{PERCORE_PORT}", "--shards", str(SHARDS),
         "--fsync", "batch", "--data-dir", datadir, "--no-session-persist", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = proc.stdout.readline()
    assert "listening on" in line, line
    return proc


def post_tx(s: socket.socket, ops, retry_on: int) -> tuple:
    """POST /kv/tx, sent again (up to 2 s) while it answers `retry_on`."""
    for _ in range(200):
        status, body = http(s, "POST", "/kv/tx", json.dumps({"ops": ops}).encode())
        if status != retry_on:
            break
        time.sleep(0.01)
    return status, body


def seed_percore(keys) -> None:
    s = socket.create_connection(("127.0.0.1", PERCORE_PORT), timeout=10)
    for i in range(0, len(keys), 64):
        ops = [{"op": "put", "key": k, "value": str(SEED_BALANCE)} for k in keys[i:i + 64]]
        # 503 busy until the shard's epoch record is durable after start
        status, body = post_tx(s, ops, 503)
        assert status == 200, (status, body)
    s.close()


def sum_percore(keys) -> int:
    s = socket.create_connection(("127.0.0.1", PERCORE_PORT), timeout=10)
    total = 0
    for i in range(0, len(keys), 64):
        ops = [{"op": "get", "key": k} for k in keys[i:i + 64]]
        # 409 while the last transfers' commit decisions reach the disk
        status, body = post_tx(s, ops, 409)
        assert status == 200, (status, body)
        for r in json.loads(body)["results"]:
            total += int(r["value"])
    s.close()
    return total


def wal_counters() -> tuple:
    """(fdatasyncs, log records) of every shard's write-ahead log so far, from /stats."""
    s = socket.create_connection(("127.0.0.1", PERCORE_PORT), timeout=10)
    status, body = http(s, "GET", "/stats", b"")
    s.close()
    assert status == 200, status
    total = json.loads(body)["total"]
    return total["wal_fsyncs"], total["wal_records"]


def run_client(argv, pid, outfile=None):
    """Runs a client to completion; returns (server cpu seconds, client cpu seconds, wall, stdout)."""
    before = cpu_ticks(pid)
    t0 = time.monotonic()
    proc = subprocess.Popen(["taskset", "-c", CLIENT_CPUS] + argv, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = "", ""
    # wait4 gives the client's own rusage
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.stdout.read(), proc.stderr.read()
    wall = time.monotonic() - t0
    server_cpu = (cpu_ticks(pid) - before) / CLK_TCK
    return server_cpu, ru.ru_utime + ru.ru_stime, wall, out, err, proc.returncode


def percore_mode(args, scen, kind, rnd, workdir, bindir, label):
    datadir = tempfile.mkdtemp(prefix=f"txnbench-percore-{kind}-", dir="/tmp")
    proc = start_percore(bindir, datadir, args.percore_args.split())
    try:
        seed_percore(scen["keys"])
        load = [f"{bindir}/percore-load", "--scenario", scen["paths"][kind], "-c", str(args.conns),
                "-t", str(args.client_threads), "--timeout", "5s"]
        url = f"http://127.0.0.1:{PERCORE_PORT}/"
        run_client(load + ["-d", f"{args.warmup}s", url], proc.pid)  # warm-up, not counted
        jpath = os.path.join(args.out, f"{label}-{kind}-r{rnd}.json")
        wal0 = wal_counters()
        scpu, ccpu, wall, out, err, rc = run_client(load + ["-d", f"{args.seconds}s", "--json", jpath, url], proc.pid)
        wal1 = wal_counters()
        with open(os.path.join(args.out, f"{label}-{kind}-r{rnd}.txt"), "w") as f:
            f.write(out + err)
        run = json.load(open(jpath))["run"]
        st = run["status"]
        total = run["requests"]
        ok = st.get("2xx", 0)
        assert st.get("5xx", 0) == 0 and run["errors"]["total"] - st.get("4xx", 0) - st.get("5xx", 0) <= 0, run["errors"]
        bal = sum_percore(scen["keys"])
        assert bal == SEED_BALANCE * ACCOUNTS, f"balance not conserved: {bal}"
        return {
            "mode": f"{label}-{kind}", "round": rnd, "tx_per_s": ok / run["duration_s"],
            "answered_per_s": total / run["duration_s"], "conflict_share": st.get("4xx", 0) / max(total, 1),
            "p50_us": run["latency_us"]["p50"], "p99_us": run["latency_us"]["p99"],
            "server_cpu_us_per_tx": scpu * 1e6 / max(ok, 1), "server_cpu_us_per_answer": scpu * 1e6 / max(total, 1),
            "client_cpu_us_per_tx": ccpu * 1e6 / max(ok, 1), "server_cpu_util": scpu / wall,
            # every shard's log together, over the measured run (the counters cover a little more
            # than the client's run: the /stats calls bracket it, and the wall time includes the
            # client's start); records of aborted transactions count too, divided by the committed
            "fsyncs_per_s": (wal1[0] - wal0[0]) / wall, "log_records_per_tx": (wal1[1] - wal0[1]) / max(ok, 1),
        }
    finally:
        stop(proc)
        shutil.rmtree(datadir, ignore_errors=True)


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        print(f"pid {proc.pid} did not exit 15 s after SIGTERM; SIGKILL", file=sys.stderr)
        proc.kill()
        proc.wait()


def start_redis(workdir):
    datadir = tempfile.mkdtemp(prefix="txnbench-redis-", dir="/tmp")
    conf = os.path.join(datadir, "redis.conf")
    with open(conf, "w") as f:
        f.write(f"bind 127.0.0.1\nport {REDIS_PORT}\nprotected-mode yes\ndaemonize no\n"
                f"dir {datadir}\nappendonly yes\nappendfsync always\nsave \"\"\n"
                "logfile \"\"\nloglevel warning\n")
    proc = subprocess.Popen(["taskset", "-c", SERVER_CPUS, "redis-server", conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True, text=True).stdout.strip() == "PONG":
            break
        time.sleep(0.05)
    keys = "".join(f"SET acct:{i:012d} {SEED_BALANCE}\r\n" for i in range(ACCOUNTS))
    r = subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "--pipe"], input=keys, capture_output=True, text=True)
    assert "errors: 0" in r.stdout, r.stdout
    cfg = subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "config", "get", "appendfsync"], capture_output=True, text=True).stdout.split()
    assert cfg[-1] == "always", cfg
    return proc, datadir


def redis_sum():
    keys = [f"acct:{i:012d}" for i in range(ACCOUNTS)]
    out = subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "mget"] + keys, capture_output=True, text=True).stdout.split()
    return sum(int(x) for x in out)


def redis_mode(args, kind, rnd, est):
    proc, datadir = start_redis(args.out)
    try:
        if kind == "eval":
            def argv(n):
                return ["redis-benchmark", "-h", "127.0.0.1", "-p", str(REDIS_PORT), "-c", str(args.conns),
                        "-n", str(n), "-r", str(ACCOUNTS), "-P", "1", "--threads", str(args.client_threads), "--csv",
                        "EVAL", REDIS_SCRIPT, "2", "acct:__rand_int__", "acct:__rand_int__"]
        else:
            def argv(n):
                if args.python_redis_client and kind == "multi":
                    return [sys.executable, os.path.abspath(__file__), "multi-client", str(REDIS_PORT),
                            str(args.conns), str(n), str(ACCOUNTS)]
                return [args.redis_client, str(REDIS_PORT), str(args.conns), str(n), str(ACCOUNTS), kind]
        n_warm = max(int(est.get(kind, 5000) * args.warmup), 2000)
        _, _, wall, out, err, _ = run_client(argv(n_warm), proc.pid)
        rate_guess = n_warm / wall
        n = max(int(rate_guess * args.seconds), 5000)
        scpu, ccpu, wall, out, err, rc = run_client(argv(n), proc.pid)
        with open(os.path.join(args.out, f"redis-{kind}-r{rnd}.txt"), "w") as f:
            f.write(" ".join(argv(n)) + "\n" + out + err)
        assert rc == 0, err
        conflicts = 0.0
        answered = n
        if kind == "eval":
            lines = [l for l in out.strip().splitlines() if l.startswith('"EVAL') or l.startswith('"eval')]
            assert lines, out
            cols = [c.strip('"') for c in lines[-1].split(",")]
            # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
            # the test name (the script) has commas: read the 7 numbers from the end
            rps, p50, p99 = float(cols[-7]), float(cols[-4]) * 1000, float(cols[-2]) * 1000
        else:
            res = json.loads(out)
            rps, p50, p99 = res["tx_per_s"], res["p50_us"], res["p99_us"]
            conflicts = res.get("retries", 0) / (n + res.get("retries", 0))
            answered = n + res.get("retries", 0)  # aborted EXECs count as answers, as percore's 409s do
        est[kind] = rps
        bal = redis_sum()
        assert bal == SEED_BALANCE * ACCOUNTS, f"balance not conserved: {bal}"
        return {
            "mode": f"redis-{kind}", "round": rnd, "tx_per_s": rps, "answered_per_s": rps * answered / n,
            "conflict_share": conflicts, "p50_us": p50, "p99_us": p99, "server_cpu_us_per_tx": scpu * 1e6 / n,
            "server_cpu_us_per_answer": scpu * 1e6 / answered, "client_cpu_us_per_tx": ccpu * 1e6 / n,
            "server_cpu_util": scpu / wall, "n": n,
        }
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(datadir, ignore_errors=True)


def build_redis_client() -> str:
    """Builds bench/redis_tx_client.rs (release) and returns its path."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(["cargo", "bench", "--bench", "redis_tx_client", "--no-run", "--message-format=json"],
                       cwd=repo, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    for line in r.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "redis_tx_client" and msg.get("executable"):
            return msg["executable"]
    raise AssertionError("cargo built no redis_tx_client executable")


def multi_client(port: int, conns: int, total: int, accounts: int) -> None:
    """MULTI/DECRBY/INCRBY/EXEC, one transaction in flight per connection (the 4 commands of one
    transaction go in one write, as client libraries send a transaction pipeline)."""
    rng = random.Random()
    sel = selectors.DefaultSelector()
    lat = []
    sent = done = 0
    state = {}

    def cmd(*parts):
        return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)

    def send(s):
        nonlocal sent
        a = b"acct:%012d" % rng.randrange(accounts)
        b = b"acct:%012d" % rng.randrange(accounts)
        s.sendall(cmd(b"MULTI") + cmd(b"DECRBY", a, b"1") + cmd(b"INCRBY", b, b"1") + cmd(b"EXEC"))
        state[s] = [time.perf_counter(), b""]
        sent += 1

    t0 = time.perf_counter()
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sel.register(s, selectors.EVENT_READ)
        send(s)
    while done < total:
        for key, _ in sel.select():
            s = key.fileobj
            st = state[s]
            st[1] += s.recv(65536)
            # +OK, +QUEUED, +QUEUED, *2, :a, :b  -> 6 lines
            if st[1].count(b"\r\n") >= 6:
                assert b"-" not in st[1][:1] and b"\r\n-" not in st[1], st[1]
                lat.append(time.perf_counter() - st[0])
                done += 1
                if sent < total:
                    send(s)
                else:
                    sel.unregister(s)
    wall = time.perf_counter() - t0
    lat.sort()
    print(json.dumps({"tx_per_s": done / wall, "p50_us": lat[len(lat) // 2] * 1e6,
                      "p99_us": lat[int(len(lat) * 0.99)] * 1e6}))


def main():
    global ACCOUNTS, PAIRS, SHARDS, SERVER_CPUS, CLIENT_CPUS
    if len(sys.argv) > 1 and sys.argv[1] == "multi-client":
        multi_client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--modes", default="percore-single,percore-cross,redis-eval,redis-watch,redis-multi")
    ap.add_argument("--bindir", default=os.environ.get("PERCORE_BIN_DIR", "/tmp/percore-txnbench-target/release"))
    ap.add_argument("--baseline", default=None, help="bin dir of an older percore for the base-* modes")
    ap.add_argument("--out", default=None)
    ap.add_argument("--shards", type=int, default=2, help="percore's shards, on the first CPUs of --server-cpus")
    ap.add_argument("--server-cpus", default="0-1", help="taskset list for percore and redis-server")
    ap.add_argument("--client-cpus", default="0-1", help="taskset list for every client")
    ap.add_argument("--client-threads", type=int, default=1, help="percore-load -t and redis-benchmark --threads")
    ap.add_argument("--redis-client", default=None,
                    help="the compiled client of the redis-multi and redis-watch modes (default: built with "
                         "`cargo bench --bench redis_tx_client --no-run`)")
    ap.add_argument("--python-redis-client", action="store_true",
                    help="drive redis-multi with the Python client in this file instead (the client of "
                         "the runs before 2026-11-27 14:00 UTC; redis-watch always uses the compiled one)")
    ap.add_argument("--percore-args", default="", help="extra percore flags, e.g. '--spin-us 50'")
    ap.add_argument("--accounts", type=int, default=ACCOUNTS,
                    help="accounts (default 2048); more spread the transfers, so fewer of percore's meet a lock")
    args = ap.parse_args()
    assert 4 <= args.accounts <= 32768, "--accounts: 4..32768 (a scenario holds at most 16384 transfers)"
    ACCOUNTS, PAIRS = args.accounts, args.accounts // 2
    SHARDS, SERVER_CPUS, CLIENT_CPUS = args.shards, args.server_cpus, args.client_cpus
    assert SHARDS >= 2, "--shards: at least 2 (cross-shard transfers need two owners)"
    args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                        time.strftime("txn-%Y%m%d-%H%M%S", time.gmtime()))
    os.makedirs(args.out, exist_ok=True)
    if not args.redis_client and ("redis-watch" in args.modes or (
            "redis-multi" in args.modes and not args.python_redis_client)):
        args.redis_client = build_redis_client()
    scen = write_scenarios(args.out)
    print(f"accounts per owner: {scen['owners']}; output in {args.out}", flush=True)
    modes = args.modes.split(",")
    results, est = [], {}
    for rnd in range(args.rounds):
        order = modes[rnd % len(modes):] + modes[:rnd % len(modes)]
        if rnd % 2:
            order = order[::-1]
        for m in order:
            kind = m.split("-", 1)[1]
            if m.startswith("percore"):
                r = percore_mode(args, scen, kind, rnd, args.out, args.bindir, "percore")
            elif m.startswith("base"):
                r = percore_mode(args, scen, kind, rnd, args.out, args.baseline, "base")
            else:
                r = redis_mode(args, kind, rnd, est)
            results.append(r)
            print(json.dumps(r), flush=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\naccounts: {ACCOUNTS}, connections: {args.conns}, rounds: {args.rounds}, {args.seconds}s each (+{args.warmup}s warm-up)"
          + (f"; percore flags: {args.percore_args}" if args.percore_args else ""))
    print("| mode | median tx/s (2xx) | min–max tx/s | 409 share | p50 ms | p99 ms | server CPU µs/tx | client CPU µs/tx | server CPU util |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    med = {}
    for m in modes:
        rs = [r for r in results if r["mode"] == m]
        md = lambda k: statistics.median(r[k] for r in rs)
        med[m] = md("tx_per_s")
        print(f"| {m} | {md('tx_per_s'):.0f} | {min(r['tx_per_s'] for r in rs):.0f}–{max(r['tx_per_s'] for r in rs):.0f} | "
              f"{md('conflict_share') * 100:.2f}% | {md('p50_us') / 1000:.2f} | {md('p99_us') / 1000:.2f} | "
              f"{md('server_cpu_us_per_tx'):.1f} | {md('client_cpu_us_per_tx'):.1f} | {md('server_cpu_util'):.2f} |")
    for m in modes:
        base = "base" + m[len("percore"):]
        if m.startswith("percore") and base in med:
            print(f"{m} / {base}: {med[m] / med[base]:.2f}x")
    for m in modes:
        rs = [r for r in results if r["mode"] == m and "fsyncs_per_s" in r]
        if rs:
            print(f"{m}: {statistics.median(r['fsyncs_per_s'] for r in rs):.0f} fdatasyncs/s, "
                  f"{statistics.median(r['log_records_per_tx'] for r in rs):.1f} log records per committed transaction")
    if "redis-eval" in med:
        for m in modes:
            if m.startswith(("percore", "base")):
                print(f"{m} / redis-eval: {med[m] / med['redis-eval']:.2f}x"
                      + "".join(f"; / {r}: {med[m] / med[r]:.2f}x" for r in ("redis-watch", "redis-multi") if r in med))


if __name__ == "__main__":
    main()
