//! Server CPU per `GET /session` when the owner shard serves it vs when another shard does (one mesh round trip), 2 shards, interleaved rounds.
//!
//! `cargo bench --bench session_cost -- [ROUNDS] [SECONDS]` (defaults 5 and 3); `PERCORE_ARGS` adds server flags. It starts the
//! release `percore` itself (`--shards 2 --expose-shard`), opens connections until it has some on
//! each shard, creates one session owned by each shard, then alternates two modes: "local" (every
//! connection sends the cookie of the session its own shard owns) and "remote" (the other shard's).
//! By default 4 connections per shard pipeline 16 requests each, so the client is not the limit on
//! CPU per request (`SESSION_BENCH_CONNS` and `SESSION_BENCH_DEPTH` change that shape); the figure
//! that matters is server CPU (utime+stime of the process, /proc/PID/stat) per request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Connections per shard and requests pipelined on each: `SESSION_BENCH_CONNS` (default 4) and
/// `SESSION_BENCH_DEPTH` (default 16; 1 is plain keep-alive, one request at a time).
fn shape() -> (usize, usize) {
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        var("SESSION_BENCH_CONNS", 4),
        var("SESSION_BENCH_DEPTH", 16),
    )
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Sends one request and reads one response head + Content-Length body; returns (status, headers text, body).
fn roundtrip(stream: &mut TcpStream, request: &str) -> (String, String) {
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        head.push_str(&line);
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    (head, String::from_utf8_lossy(&body).into_owned())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Drives `conns` with pipelined batches for `seconds`; returns completed requests.
fn drive(conns: &mut [(TcpStream, String)], depth: usize, seconds: f64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = conns
        .iter_mut()
        .map(|(stream, cookie)| {
            let mut stream = stream.try_clone().unwrap();
            let request = format!("GET /session HTTP/1.1\r\nHost: b\r\nCookie: {cookie}\r\n\r\n");
            let batch = request.repeat(depth);
            std::thread::spawn(move || {
                let mut done = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                while Instant::now() < deadline {
                    stream.write_all(batch.as_bytes()).unwrap();
                    let mut seen = 0;
                    while seen < depth {
                        let n = stream.read(&mut buf).unwrap();
                        assert!(n > 0, "server closed");
                        seen += buf[..n]
                            .windows(12)
                            .filter(|w| w == b"HTTP/1.1 200")
                            .count();
                    }
                    done += depth as u64;
                }
                done
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with("--")).collect();
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let seconds: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let binary = std::env::var("PERCORE")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/percore").into());
    let mut server = Command::new(&binary)
        .args([
            "--bind",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--expose-shard",
            "--no-session-persist",
        ])
        // Extra server flags to compare settings, e.g. PERCORE_ARGS="--spin-us 50".
        .args(
            std::env::var("PERCORE_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {binary} (cargo build --release first): {e}"));
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect("listening line")
        .to_string();

    let (conns_per_shard, depth) = shape();
    println!("{conns_per_shard} connections per shard, {depth} requests pipelined on each");
    let mut by_shard: [Vec<TcpStream>; 2] = [Vec::new(), Vec::new()];
    while by_shard.iter().any(|c| c.len() < conns_per_shard) {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let (head, _) = roundtrip(&mut stream, "GET /health HTTP/1.1\r\nHost: b\r\n\r\n");
        let shard: usize = header(&head, "x-shard").unwrap().parse().unwrap();
        if by_shard[shard].len() < conns_per_shard {
            by_shard[shard].push(stream);
        }
    }
    let cookies: Vec<String> = (0..2)
        .map(|shard| {
            let (head, body) = roundtrip(
                &mut by_shard[shard][0],
                "POST /session HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n",
            );
            assert!(body.contains(&format!("\"shard\":{shard}")), "{body}");
            header(&head, "set-cookie")
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let pid = server.id();
    let mut results: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for mode in [round % 2, (round + 1) % 2] {
            // mode 0: local owner; mode 1: the other shard owns the session.
            let mut conns: Vec<(TcpStream, String)> = (0..2)
                .flat_map(|shard| {
                    let cookie = cookies[if mode == 0 { shard } else { 1 - shard }].clone();
                    by_shard[shard]
                        .iter()
                        .map(move |s| (s.try_clone().unwrap(), cookie.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            let before = cpu_ticks(pid);
            let started = Instant::now();
            let requests = drive(&mut conns, depth, seconds);
            let elapsed = started.elapsed().as_secs_f64();
            let cpu_us = (cpu_ticks(pid) - before) as f64 / ticks_per_second() * 1e6;
            results[mode].push((requests as f64 / elapsed, cpu_us / requests as f64));
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    println!("| mode | median req/s | median server CPU µs/request | rounds |");
    println!("|---|---:|---:|---:|");
    let mut cpu = [0.0; 2];
    for (mode, name) in ["local owner", "remote owner (mesh)"].iter().enumerate() {
        let rps = median(results[mode].iter().map(|r| r.0).collect());
        cpu[mode] = median(results[mode].iter().map(|r| r.1).collect());
        println!("| {name} | {rps:.0} | {:.2} | {rounds} |", cpu[mode]);
    }
    println!(
        "\ncross-shard cost: {:+.2} µs of server CPU per request (target: at most +1.5)",
        cpu[1] - cpu[0]
    );
}
