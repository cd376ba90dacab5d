//! An io_uring closed-loop client, only to measure what percore-load's epoll engine would gain from io_uring (issue #3 asked for both engines to be measured).
//!
//! `cargo bench --bench uring_client -- ADDR PATH CONNS SECONDS [CPU]`, e.g.
//! `cargo bench --bench uring_client -- 127.0.0.1:8080 /plaintext 64 5 1`. Keep-alive GETs, one in
//! flight per connection, as `percore-load -c CONNS` does: per connection a SEND, then RECVs
//! until the response is whole (Content-Length framing only), then the next SEND. All SQEs of a
//! loop pass go in with one `io_uring_enter`, which also waits for the next completion. The ring
//! uses COOP_TASKRUN, SINGLE_ISSUER and DEFER_TASKRUN (no glommio here, so no restriction). It
//! prints requests/s and its own CPU per request (getrusage), to set beside percore-load's.
//! Not a load tool: no latency histogram, no timeouts, no reconnects; an error stops it.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, squeue, types};

const READ_BUFFER_BYTES: usize = 4096;

struct Conn {
    stream: TcpStream,
    buf: Box<[u8; READ_BUFFER_BYTES]>,
    filled: usize,
}

/// user_data: connection index in the high bits, 0 = send, 1 = recv.
fn user_data(index: usize, recv: bool) -> u64 {
    (index as u64) << 1 | u64::from(recv)
}

/// Bytes of the first whole response in `buf`, if there is one.
fn response_len(buf: &[u8]) -> io::Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(head)) => {
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .ok_or_else(|| io::Error::other("response without Content-Length"))?;
            Ok((buf.len() >= head + length).then_some(head + length))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(io::Error::other(format!("bad response: {e}"))),
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value; getrusage fills
    // the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [addr, path, conns, seconds, rest @ ..] = &args[..] else {
        eprintln!("usage: uring_client ADDR PATH CONNS SECONDS [CPU]");
        std::process::exit(2);
    };
    let conns: usize = conns.parse().expect("CONNS is a number");
    let duration = Duration::from_secs_f64(seconds.parse().expect("SECONDS is a number"));
    if let Some(cpu) = rest.first() {
        let cpu: usize = cpu.parse().expect("CPU is a number");
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
    let mut ring: IoUring = IoUring::builder()
        .setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(2 * conns.next_power_of_two() as u32)?;
    let mut all: Vec<Conn> = (0..conns)
        .map(|_| {
            let stream = TcpStream::connect(addr)?;
            stream.set_nodelay(true)?;
            Ok(Conn {
                stream,
                buf: Box::new([0; READ_BUFFER_BYTES]),
                filled: 0,
            })
        })
        .collect::<io::Result<_>>()?;
    let send = |conn: &Conn, index: usize| {
        opcode::Send::new(
            types::Fd(conn.stream.as_raw_fd()),
            request.as_ptr(),
            request.len() as u32,
        )
        .build()
        .user_data(user_data(index, false))
    };
    let recv = |conn: &mut Conn, index: usize| {
        opcode::Recv::new(
            types::Fd(conn.stream.as_raw_fd()),
            conn.buf[conn.filled..].as_mut_ptr(),
            (READ_BUFFER_BYTES - conn.filled) as u32,
        )
        .build()
        .user_data(user_data(index, true))
    };
    let mut pending: Vec<squeue::Entry> = (0..conns).map(|i| send(&all[i], i)).collect();
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    let mut responses: u64 = 0;
    while start.elapsed() < duration {
        {
            let mut sq = ring.submission();
            for entry in pending.drain(..) {
                // SAFETY: every buffer an entry points at (the request, a connection's read
                // buffer) lives until the end of main, and a read buffer has one recv at a time.
                unsafe {
                    sq.push(&entry)
                        .expect("the ring holds two entries per connection")
                };
            }
        }
        ring.submit_and_wait(1)?;
        let completions: Vec<(u64, i32)> = ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (data, result) in completions {
            let index = (data >> 1) as usize;
            if result < 0 {
                return Err(io::Error::from_raw_os_error(-result));
            }
            let conn = &mut all[index];
            if data & 1 == 0 {
                if result as usize != request.len() {
                    return Err(io::Error::other("short send"));
                }
                pending.push(recv(conn, index));
                continue;
            }
            if result == 0 {
                return Err(io::Error::other("the server closed a connection"));
            }
            conn.filled += result as usize;
            match response_len(&conn.buf[..conn.filled])? {
                Some(len) => {
                    assert_eq!(len, conn.filled, "one request in flight, one response");
                    conn.filled = 0;
                    responses += 1;
                    pending.push(send(conn, index));
                }
                None => pending.push(recv(conn, index)),
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    println!(
        "uring_client: {responses} responses in {elapsed:.2} s: {:.0} req/s, client CPU {:.3} us/request",
        responses as f64 / elapsed,
        cpu * 1e6 / responses as f64
    );
    Ok(())
}
