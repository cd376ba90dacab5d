//! A compiled Redis client for `bench/txn_vs_redis.py`: the transfers of its `redis-multi` and `redis-watch` modes, so Redis is driven by a client as light as percore-load is for percore.
//!
//! `cargo bench --bench redis_tx_client -- PORT CONNS TOTAL ACCOUNTS multi|watch`. One glommio
//! executor, CONNS connections to 127.0.0.1:PORT, one transfer in flight on each, TOTAL transfers
//! in all between random accounts `acct:%012d` below ACCOUNTS:
//! - `multi`: MULTI / DECRBY A 1 / INCRBY B 1 / EXEC in one write (no floor check);
//! - `watch`: WATCH A + GET A in one write, the floor checked on the answer (A - 1 >= 0), then the
//!   MULTI pipeline above; an EXEC answered nil (A changed after the WATCH: Redis' conflict, as
//!   percore's 409) starts over from the WATCH and counts as a retry.
//!
//! A transfer's latency runs from its first write to its committed EXEC. Prints one JSON line:
//! `{"tx_per_s", "p50_us", "p99_us", "retries"}`. Any error reply or IO error stops it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::LocalExecutorBuilder;
use glommio::net::TcpStream;
use hdrhistogram::Histogram;
// glommio's ring creation is linked through percore's wrapper (src/build.rs): link the library.
use percore as _;

struct Shared {
    accounts: u64,
    tickets: Cell<u64>,
    retries: Cell<u64>,
    latency_us: RefCell<Histogram<u64>>,
}

fn command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for part in parts {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads until the buffer holds at least `lines` CRLF-ended lines; takes those `lines` out of it.
async fn read_lines(stream: &mut TcpStream, buf: &mut Vec<u8>, lines: usize) -> Vec<Vec<u8>> {
    loop {
        let parts: Vec<&[u8]> = buf.split(|&b| b == b'\n').collect();
        if parts.len() > lines {
            let found = parts[..lines]
                .iter()
                .map(|l| l.strip_suffix(b"\r").expect("CRLF").to_vec())
                .collect::<Vec<_>>();
            let used: usize = parts[..lines].iter().map(|l| l.len() + 1).sum();
            buf.drain(..used);
            for line in &found {
                assert!(
                    !line.starts_with(b"-"),
                    "error reply: {}",
                    String::from_utf8_lossy(line)
                );
            }
            return found;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn connection(port: u16, watch: bool, shared: Rc<Shared>, mut seed: u64) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut random = move || {
        // xorshift64
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        let left = shared.tickets.get();
        if left == 0 {
            return;
        }
        shared.tickets.set(left - 1);
        let a = format!("acct:{:012}", random() % shared.accounts);
        let b = format!("acct:{:012}", random() % shared.accounts);
        let started = Instant::now();
        loop {
            if watch {
                out.clear();
                command(&mut out, &[b"WATCH", a.as_bytes()]);
                command(&mut out, &[b"GET", a.as_bytes()]);
                stream.write_all(&out).await.expect("write");
                // +OK, $n, the value
                let reply = read_lines(&mut stream, &mut buf, 3).await;
                let balance: i64 = std::str::from_utf8(&reply[2]).unwrap().parse().unwrap();
                assert!(balance > 0, "the floor: A - 1 would go below 0");
            }
            out.clear();
            command(&mut out, &[b"MULTI"]);
            command(&mut out, &[b"DECRBY", a.as_bytes(), b"1"]);
            command(&mut out, &[b"INCRBY", b.as_bytes(), b"1"]);
            command(&mut out, &[b"EXEC"]);
            stream.write_all(&out).await.expect("write");
            // +OK, +QUEUED, +QUEUED, then *-1 (aborted) or *2, :a, :b
            let head = read_lines(&mut stream, &mut buf, 4).await;
            if head[3] == b"*-1" {
                assert!(watch, "EXEC aborted without WATCH");
                shared.retries.set(shared.retries.get() + 1);
                continue;
            }
            read_lines(&mut stream, &mut buf, 2).await;
            break;
        }
        let us = started.elapsed().as_micros() as u64;
        shared.latency_us.borrow_mut().record(us.max(1)).unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [port, conns, total, accounts, mode] = &args[..] else {
        eprintln!("usage: redis_tx_client PORT CONNS TOTAL ACCOUNTS multi|watch");
        std::process::exit(2);
    };
    let port: u16 = port.parse().expect("PORT");
    let conns: u64 = conns.parse().expect("CONNS");
    let total: u64 = total.parse().expect("TOTAL");
    let accounts: u64 = accounts.parse().expect("ACCOUNTS");
    let watch = match mode.as_str() {
        "multi" => false,
        "watch" => true,
        other => panic!("mode {other}: not multi or watch"),
    };
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            let shared = Rc::new(Shared {
                accounts,
                tickets: Cell::new(total),
                retries: Cell::new(0),
                latency_us: RefCell::new(Histogram::new(3).unwrap()),
            });
            let started = Instant::now();
            let tasks: Vec<_> = (0..conns)
                .map(|i| {
                    let seed = 0x9E37_79B9_7F4A_7C15 ^ (i + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
                    glommio::spawn_local(connection(port, watch, shared.clone(), seed))
                })
                .collect();
            for task in tasks {
                task.await;
            }
            let wall = started.elapsed().as_secs_f64();
            let latency = shared.latency_us.borrow();
            println!(
                "{{\"tx_per_s\": {:.1}, \"p50_us\": {}, \"p99_us\": {}, \"retries\": {}}}",
                latency.len() as f64 / wall,
                latency.value_at_quantile(0.5),
                latency.value_at_quantile(0.99),
                shared.retries.get()
            );
        })
        .unwrap()
        .join()
        .unwrap();
}
