//! io_uring-native "floor" HTTP/1.1 server: a measurement tool, not part of percore.
//!
//! Same behaviour as the raw epoll peer (/work/shared/lab/peers/epoll): one thread
//! per worker, each pinned to a CPU with its own SO_REUSEPORT listener; requests
//! parsed with httparse (so pipelining works); all responses produced from one
//! received chunk go out in one send; /plaintext, /json (serde_json per request)
//! and 404. Only the I/O model differs:
//!
//! * one ring per worker (COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN by default),
//! * one multishot accept,
//! * one multishot recv per connection, reading into a provided-buffer ring,
//! * sends submitted as SQEs,
//! * exactly one `io_uring_enter` (submit_and_wait(1)) per loop iteration; no other
//!   syscalls per request (only per connection: setsockopt(TCP_NODELAY), close).
//!
//! `UF_HOST=glommio` runs the same worker loop as a task inside a glommio 0.9.0
//! executor instead of on a bare thread (hosted.rs); the default is the bare loop.
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use io_uring::{cqueue, opcode, squeue, types, IoUring, SubmissionQueue, Submitter};

mod hosted;

#[derive(serde::Serialize)]
struct Message {
    message: &'static str,
}

// ---------------------------------------------------------------- Date cache
struct DateCache {
    secs: u64,
    buf: [u8; 29],
}
impl DateCache {
    fn new() -> Self {
        let mut d = DateCache {
            secs: 0,
            buf: [0; 29],
        };
        d.refresh();
        d
    }
    #[inline]
    fn refresh(&mut self) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        if secs != self.secs {
            self.secs = secs;
            self.buf
                .copy_from_slice(httpdate::fmt_http_date(now).as_bytes());
        }
    }
}

// ---------------------------------------------------------------- CPU pinning (copied from the epoll peer)
fn allowed_cpus() -> Vec<usize> {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&i| libc::CPU_ISSET(i, &set))
            .collect()
    }
}
fn pin_to(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn args() -> (u16, usize) {
    let a: Vec<String> = std::env::args().collect();
    let port = a
        .get(1)
        .cloned()
        .or_else(|| std::env::var("PORT").ok())
        .unwrap_or_else(|| "18080".into());
    let workers = a
        .get(2)
        .cloned()
        .or_else(|| std::env::var("WORKERS").ok())
        .unwrap_or_else(|| "1".into());
    (
        port.parse().expect("port"),
        workers.parse().expect("workers"),
    )
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Like the epoll peer's listener, but left blocking: io_uring itself tries the
/// accept non-blockingly and arms an internal poll on EAGAIN. (On some kernels an
/// O_NONBLOCK file makes io_uring hand EAGAIN back instead of waiting.)
fn listener(port: u16) -> io::Result<libc::c_int> {
    unsafe {
        let fd = cvt(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let one: libc::c_int = 1;
        let sz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        cvt(libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const _,
            sz,
        ))?;
        cvt(libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            &one as *const _ as *const _,
            sz,
        ))?;
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as _;
        addr.sin_port = port.to_be();
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        cvt(libc::bind(
            fd,
            &addr as *const _ as *const _,
            std::mem::size_of::<libc::sockaddr_in>() as _,
        ))?;
        cvt(libc::listen(fd, 4096))?;
        Ok(fd)
    }
}

// ---------------------------------------------------------------- HTTP (same as the epoll peer)
/// Parses every complete request in `data`, appending the responses to `out`.
/// Returns the number of bytes consumed, or Err on a parse error.
fn handle_requests(data: &[u8], out: &mut Vec<u8>, date: &DateCache) -> Result<usize, ()> {
    let mut off = 0;
    loop {
        if off >= data.len() {
            return Ok(off);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&data[off..]) {
            Ok(httparse::Status::Complete(n)) => {
                off += n;
                match req.path.unwrap_or("") {
                    "/plaintext" => {
                        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nServer: uring-floor\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nDate: ");
                        out.extend_from_slice(&date.buf);
                        out.extend_from_slice(b"\r\n\r\nHello, World!");
                    }
                    "/json" => {
                        let body = serde_json::to_vec(&Message {
                            message: "Hello, World!",
                        })
                        .unwrap();
                        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nServer: uring-floor\r\nContent-Type: application/json\r\nContent-Length: ");
                        out.extend_from_slice(body.len().to_string().as_bytes());
                        out.extend_from_slice(b"\r\nDate: ");
                        out.extend_from_slice(&date.buf);
                        out.extend_from_slice(b"\r\n\r\n");
                        out.extend_from_slice(&body);
                    }
                    _ => {
                        out.extend_from_slice(b"HTTP/1.1 404 Not Found\r\nServer: uring-floor\r\nContent-Length: 0\r\nDate: ");
                        out.extend_from_slice(&date.buf);
                        out.extend_from_slice(b"\r\n\r\n");
                    }
                }
            }
            Ok(httparse::Status::Partial) => return Ok(off),
            Err(_) => return Err(()),
        }
    }
}

// ---------------------------------------------------------------- ring setup
const SQ_ENTRIES: u32 = 4096;
const CQ_ENTRIES: u32 = 16384;

/// Returns the ring and whether it has DEFER_TASKRUN.
fn build_ring(worker: usize) -> io::Result<(IoUring, bool)> {
    let force_coop = std::env::var("UF_FLAGS")
        .map(|v| v == "coop")
        .unwrap_or(false);
    if !force_coop {
        let mut b = IoUring::builder();
        b.setup_cqsize(CQ_ENTRIES)
            .setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
        match b.build(SQ_ENTRIES) {
            Ok(r) => {
                eprintln!("worker {worker}: ring flags COOP_TASKRUN|SINGLE_ISSUER|DEFER_TASKRUN");
                return Ok((r, true));
            }
            Err(e) => eprintln!("worker {worker}: DEFER_TASKRUN refused ({e}), falling back"),
        }
    }
    let mut b = IoUring::builder();
    b.setup_cqsize(CQ_ENTRIES)
        .setup_coop_taskrun()
        .setup_single_issuer();
    let r = b.build(SQ_ENTRIES)?;
    eprintln!(
        "worker {worker}: ring flags COOP_TASKRUN|SINGLE_ISSUER{}",
        if force_coop { " (UF_FLAGS=coop)" } else { "" }
    );
    Ok((r, false))
}

// ---------------------------------------------------------------- provided-buffer ring
const BGID: u16 = 0;
/// Defaults: 4096 buffers x 4 KiB. Override with UF_NBUFS (a power of two,
/// <= 32768) and UF_BUFSIZE (bytes). Buffers cycle FIFO through the ring, so
/// the receive working set is NBUFS * BUF_SIZE (16 MiB by default, far beyond
/// L2); fewer buffers keep it cache-resident at the risk of ENOBUFS.
const DEFAULT_NBUFS: u16 = 4096;
const DEFAULT_BUF_SIZE: usize = 4096;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A registered provided-buffer ring (IORING_REGISTER_PBUF_RING) with `nbufs`
/// buffers of `buf_size` bytes. The kernel picks a buffer from the head when a
/// recv has data; we hand buffers back by writing an entry at our tail and
/// publishing the new tail. A buffer the kernel handed us (CQE with F_BUFFER)
/// is ours until we put it back: the kernel never writes into it meanwhile.
struct BufRing {
    ring: *mut types::BufRingEntry, // NBUFS entries, page-aligned mmap
    ring_bytes: usize,
    bufs: Vec<u8>, // NBUFS * BUF_SIZE bytes of buffer memory
    tail: u16,     // our local copy of the tail
    nbufs: u16,
    buf_size: usize,
}

impl BufRing {
    fn new(submitter: &Submitter<'_>, worker: usize) -> io::Result<BufRing> {
        let nbufs = env_num("UF_NBUFS", DEFAULT_NBUFS as usize);
        assert!(
            nbufs.is_power_of_two() && nbufs <= 32768,
            "UF_NBUFS must be a power of two <= 32768"
        );
        let nbufs = nbufs as u16;
        let buf_size = env_num("UF_BUFSIZE", DEFAULT_BUF_SIZE);
        assert!(
            buf_size > 0 && buf_size <= u32::MAX as usize,
            "bad UF_BUFSIZE"
        );
        eprintln!("worker {worker}: buffer ring {nbufs} x {buf_size} bytes");
        let ring_bytes = nbufs as usize * std::mem::size_of::<types::BufRingEntry>();
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut br = BufRing {
            ring: p as *mut types::BufRingEntry,
            ring_bytes,
            bufs: vec![0u8; nbufs as usize * buf_size],
            tail: 0,
            nbufs,
            buf_size,
        };
        // Fill the ring with every buffer before registering it. The tail word
        // overlays entry 0's `resv` field, which the set_* calls leave alone.
        for bid in 0..nbufs {
            br.write_entry(bid);
        }
        br.publish_tail();
        // SAFETY: the ring memory and the buffers live until BufRing is dropped,
        // which worker() does only after the IoUring itself is dropped.
        unsafe { submitter.register_buf_ring_with_flags(br.ring as u64, nbufs, BGID, 0)? };
        Ok(br)
    }

    #[inline]
    fn write_entry(&mut self, bid: u16) {
        let idx = (self.tail & (self.nbufs - 1)) as usize;
        unsafe {
            let e = &mut *self.ring.add(idx);
            e.set_addr(self.bufs.as_ptr() as u64 + bid as u64 * self.buf_size as u64);
            e.set_len(self.buf_size as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    #[inline]
    fn publish_tail(&self) {
        // Release: the entry contents must be visible to the kernel before the tail.
        unsafe {
            let t = types::BufRingEntry::tail(self.ring as *const _) as *const AtomicU16;
            (*t).store(self.tail, Ordering::Release);
        }
    }

    /// Give buffer `bid` back to the kernel. Only call once its bytes are no
    /// longer needed (anything still needed was copied out first).
    #[inline]
    fn give_back(&mut self, bid: u16) {
        self.write_entry(bid);
        self.publish_tail();
    }

    #[inline]
    fn data(&self, bid: u16, len: usize) -> &[u8] {
        let start = bid as usize * self.buf_size;
        &self.bufs[start..start + len]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ring as *mut _, self.ring_bytes) };
    }
}

// ---------------------------------------------------------------- user_data
// bits 0..8: op kind, 8..32: connection generation (24 bits), 32..64: slot.
// A slot is only reused after every op of its previous connection has posted its
// final CQE, so stale CQEs should not happen; the generation check is a guard.
const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
/// UF_RECV=poll: the connection's multishot poll (readiness only).
const OP_POLL: u64 = 4;
/// The cancel of a closing connection's multishot poll (its own CQE is ignored).
const OP_CANCEL: u64 = 5;
const GEN_MASK: u32 = 0x00ff_ffff;

#[inline]
fn ud(op: u64, gen: u32, slot: u32) -> u64 {
    op | ((gen & GEN_MASK) as u64) << 8 | (slot as u64) << 32
}

// ---------------------------------------------------------------- connections
#[derive(Default)]
struct Conn {
    fd: libc::c_int,
    gen: u32,
    live: bool,
    /// unparsed leftover bytes (a partial request), copied out of the ring buffer
    inbuf: Vec<u8>,
    /// bytes of the current send. While `send_inflight`, the kernel reads from
    /// this Vec: it must not be touched (no push, no realloc) until the CQE.
    out: Vec<u8>,
    /// bytes of `out` already sent (short sends resubmit `out[out_off..]`)
    out_off: usize,
    /// responses produced while a send is in flight; sent after it completes
    next: Vec<u8>,
    send_inflight: bool,
    /// a multishot recv is armed (its final CQE, without F_MORE, not yet seen)
    recv_armed: bool,
    /// slot is in the `dirty` list, waiting for its send to be submitted
    flush_queued: bool,
    closing: bool,
}

/// Parses `data`, bytes that arrived for `c`, appending the responses to `out` (or to
/// `next` while a send is in flight: `out` is frozen then) and keeping a partial
/// request's tail in `inbuf`. Err on a parse error.
fn consume(c: &mut Conn, data: &[u8], date: &DateCache) -> Result<(), ()> {
    let dst = if c.send_inflight {
        &mut c.next
    } else {
        &mut c.out
    };
    if c.inbuf.is_empty() {
        let used = handle_requests(data, dst, date)?;
        if used < data.len() {
            c.inbuf.extend_from_slice(&data[used..]);
        }
    } else {
        c.inbuf.extend_from_slice(data);
        let d = std::mem::take(&mut c.inbuf);
        let r = handle_requests(&d, dst, date);
        c.inbuf = d;
        let used = r?;
        c.inbuf.drain(..used);
    }
    Ok(())
}

struct Worker {
    conns: Vec<Conn>,
    free: Vec<u32>,
    dirty: Vec<u32>,
    bufs: BufRing,
    date: DateCache,
    lfd: libc::c_int,
    enobufs: u64,
    /// UF_SEND=syscall: responses go out with a direct non-blocking send(2) at the end of
    /// the drain (the part of glommio's model percore would keep with a receive-only
    /// reactor); only what the socket does not take at once goes through a Send SQE.
    send_syscall: bool,
    /// UF_RECV=poll: instead of a multishot recv into provided buffers, one multishot
    /// poll per connection (armed once, a CQE per wakeup) and recv(2) into `scratch`:
    /// the kernel keeps the bytes until they are read, so each socket's receive buffer
    /// stays the bound, as with glommio's streams.
    recv_poll: bool,
    scratch: Vec<u8>,
    /// user_data of multishot polls to cancel (closing connections), submitted at the
    /// end of the drain.
    cancels: Vec<u64>,
}

/// Push an SQE; if the SQ is full, submit what is there first (should not
/// happen at the sizes used here, but must not lose an SQE if it does).
#[inline]
fn push(sq: &mut SubmissionQueue<'_>, sub: &Submitter<'_>, e: &squeue::Entry) {
    // SAFETY: callers guarantee the buffers referenced by `e` outlive the op.
    unsafe {
        if sq.push(e).is_err() {
            sq.sync();
            let _ = sub.submit();
            sq.sync();
            sq.push(e).expect("SQ still full after submit");
        }
    }
}

impl Worker {
    fn arm_accept(&self, sq: &mut SubmissionQueue<'_>, sub: &Submitter<'_>) {
        let e = opcode::AcceptMulti::new(types::Fd(self.lfd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud(OP_ACCEPT, 0, 0));
        push(sq, sub, &e);
    }

    fn arm_recv(&mut self, slot: u32, sq: &mut SubmissionQueue<'_>, sub: &Submitter<'_>) {
        let c = &mut self.conns[slot as usize];
        debug_assert!(!c.recv_armed);
        c.recv_armed = true;
        let e = opcode::RecvMulti::new(types::Fd(c.fd), BGID)
            .build()
            .user_data(ud(OP_RECV, c.gen, slot));
        push(sq, sub, &e);
    }

    /// UF_RECV=poll: arm the connection's multishot poll for POLLIN, once; it posts a CQE
    /// every time the socket wakes its waiters (data, FIN, error) until cancelled.
    fn arm_poll(&mut self, slot: u32, sq: &mut SubmissionQueue<'_>, sub: &Submitter<'_>) {
        let c = &mut self.conns[slot as usize];
        debug_assert!(!c.recv_armed);
        c.recv_armed = true;
        let e = opcode::PollAdd::new(types::Fd(c.fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(ud(OP_POLL, c.gen, slot));
        push(sq, sub, &e);
    }

    /// Submit `out[out_off..]`. From here until the send CQE, `out` is frozen.
    fn submit_send(&mut self, slot: u32, sq: &mut SubmissionQueue<'_>, sub: &Submitter<'_>) {
        let c = &mut self.conns[slot as usize];
        debug_assert!(!c.send_inflight && c.out_off < c.out.len());
        c.send_inflight = true;
        let rest = &c.out[c.out_off..];
        let e = opcode::Send::new(types::Fd(c.fd), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(OP_SEND, c.gen, slot));
        push(sq, sub, &e);
    }

    fn on_accept(
        &mut self,
        res: i32,
        flags: u32,
        sq: &mut SubmissionQueue<'_>,
        sub: &Submitter<'_>,
    ) {
        if res >= 0 {
            let fd = res;
            let one: libc::c_int = 1;
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    &one as *const _ as *const _,
                    4,
                )
            };
            let slot = match self.free.pop() {
                Some(s) => s,
                None => {
                    self.conns.push(Conn::default());
                    (self.conns.len() - 1) as u32
                }
            };
            let c = &mut self.conns[slot as usize];
            c.fd = fd;
            c.live = true;
            c.closing = false;
            if self.recv_poll {
                self.arm_poll(slot, sq, sub);
            } else {
                self.arm_recv(slot, sq, sub);
            }
        } else if res != -libc::EAGAIN && res != -libc::EINTR && res != -libc::ECONNABORTED {
            eprintln!("accept: {}", io::Error::from_raw_os_error(-res));
        }
        // A multishot accept stays armed while its CQEs carry F_MORE; once one
        // arrives without it (error, or the kernel dropped it), arm a new one.
        if !cqueue::more(flags) {
            self.arm_accept(sq, sub);
        }
    }

    fn on_recv(
        &mut self,
        slot: u32,
        gen: u32,
        res: i32,
        flags: u32,
        sq: &mut SubmissionQueue<'_>,
        sub: &Submitter<'_>,
    ) {
        // If the kernel picked a buffer for this CQE we own it now and must give
        // it back, whatever else happens.
        let bid = cqueue::buffer_select(flags);
        let stale = match self.conns.get(slot as usize) {
            Some(c) => !c.live || (c.gen & GEN_MASK) != gen,
            None => true,
        };
        if stale {
            if let Some(b) = bid {
                self.bufs.give_back(b);
            }
            return;
        }
        // No F_MORE: this multishot recv is finished (EOF, error, ENOBUFS, or
        // the kernel chose to stop it) and posts nothing more.
        let more = cqueue::more(flags);
        if !more {
            self.conns[slot as usize].recv_armed = false;
        }

        if res > 0 {
            let b = bid.expect("recv data without a provided buffer");
            let c = &mut self.conns[slot as usize];
            let mut parse_err = false;
            if !c.closing {
                let data = self.bufs.data(b, res as usize);
                parse_err = consume(c, data, &self.date).is_err();
                // Queue the send for the end of this CQ drain, so every chunk
                // that arrived for this connection in this iteration goes out in
                // one send (the SQE would not reach the kernel earlier anyway).
                if !parse_err && !c.send_inflight && !c.out.is_empty() && !c.flush_queued {
                    c.flush_queued = true;
                    self.dirty.push(slot);
                }
            }
            // The bytes are parsed (and any partial tail copied): return the buffer.
            self.bufs.give_back(b);
            if parse_err {
                self.begin_close(slot);
            } else if !more && !self.conns[slot as usize].closing {
                self.arm_recv(slot, sq, sub);
            }
        } else {
            if let Some(b) = bid {
                self.bufs.give_back(b);
            }
            if res == -libc::ENOBUFS {
                // The buffer ring ran dry (the kernel ended the multishot recv).
                // All buffers handed out so far are given back while this CQ
                // drain is processed, before the re-armed recv is submitted by
                // the next io_uring_enter, so it will find buffers again.
                self.enobufs += 1;
                if self.enobufs.is_power_of_two() {
                    eprintln!(
                        "ENOBUFS x{} (buffer ring exhausted; re-arming)",
                        self.enobufs
                    );
                }
                if !more && !self.conns[slot as usize].closing {
                    self.arm_recv(slot, sq, sub);
                }
            } else {
                // 0 = EOF, or a real error: close (as the epoll peer does).
                self.begin_close(slot);
            }
        }
        self.try_finish_close(slot);
    }

    fn on_send(
        &mut self,
        slot: u32,
        gen: u32,
        res: i32,
        sq: &mut SubmissionQueue<'_>,
        sub: &Submitter<'_>,
    ) {
        let c = match self.conns.get_mut(slot as usize) {
            Some(c) if c.live && (c.gen & GEN_MASK) == gen => c,
            _ => return,
        };
        c.send_inflight = false; // `out` is ours again
        if c.closing {
            self.try_finish_close(slot);
            return;
        }
        if res <= 0 {
            self.begin_close(slot);
            self.try_finish_close(slot);
            return;
        }
        c.out_off += res as usize;
        if c.out_off < c.out.len() {
            // short send: resubmit the remainder
            self.submit_send(slot, sq, sub);
            return;
        }
        c.out.clear();
        c.out_off = 0;
        if !c.next.is_empty() {
            // responses that arrived while the send was in flight
            std::mem::swap(&mut c.out, &mut c.next);
            self.submit_send(slot, sq, sub);
        }
    }

    /// Start closing: drop pending output; if the kernel still has an op on the
    /// fd (armed multishot recv, or a send), shut the socket down so that those
    /// ops post their final CQEs (recv gets 0, send gets EPIPE or completes).
    /// The fd is closed by try_finish_close once nothing is in flight, so no
    /// in-flight op can ever refer to a reused fd number or a freed `out` Vec.
    fn begin_close(&mut self, slot: u32) {
        let c = &mut self.conns[slot as usize];
        if c.closing {
            return;
        }
        c.closing = true;
        if c.recv_armed || c.send_inflight {
            unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
        }
        // A multishot poll outlives shutdown(2) (it just fires again): cancel it; its last
        // CQE (-ECANCELED, no MORE) then lets try_finish_close close the fd.
        if self.recv_poll && c.recv_armed {
            self.cancels.push(ud(OP_POLL, c.gen, slot));
        }
    }

    fn try_finish_close(&mut self, slot: u32) {
        let c = &mut self.conns[slot as usize];
        if !c.live || !c.closing || c.recv_armed || c.send_inflight {
            return;
        }
        unsafe { libc::close(c.fd) };
        c.live = false;
        c.gen = c.gen.wrapping_add(1);
        c.inbuf.clear();
        c.out.clear();
        c.out_off = 0;
        c.next.clear();
        // if it is still in `dirty`, flush_dirty skips it (not live)
        self.free.push(slot);
    }

    /// UF_RECV=poll: the socket woke up; read it dry with recv(2) (a short read means
    /// dry: anything that arrives later wakes the poll again).
    fn on_poll(
        &mut self,
        slot: u32,
        gen: u32,
        res: i32,
        flags: u32,
        sq: &mut SubmissionQueue<'_>,
        sub: &Submitter<'_>,
    ) {
        let Some(c) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if !c.live || (c.gen & GEN_MASK) != gen {
            return;
        }
        let more = cqueue::more(flags);
        if !more {
            c.recv_armed = false;
        }
        let mut close = res < 0 && res != -libc::ECANCELED;
        if res >= 0 && !c.closing {
            loop {
                let n = unsafe {
                    libc::recv(
                        c.fd,
                        self.scratch.as_mut_ptr() as *mut _,
                        self.scratch.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n > 0 {
                    if consume(c, &self.scratch[..n as usize], &self.date).is_err() {
                        close = true;
                        break;
                    }
                    if (n as usize) < self.scratch.len() {
                        break;
                    }
                } else if n == 0 {
                    close = true;
                    break;
                } else {
                    close = io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock;
                    break;
                }
            }
            if !close && !c.send_inflight && !c.out.is_empty() && !c.flush_queued {
                c.flush_queued = true;
                self.dirty.push(slot);
            }
        }
        if close {
            self.begin_close(slot);
        } else if !more && !self.conns[slot as usize].closing {
            self.arm_poll(slot, sq, sub);
        }
        self.try_finish_close(slot);
    }

    /// Handle one CQE (both loops share this).
    #[inline]
    fn on_cqe(&mut self, cqe: &cqueue::Entry, sq: &mut SubmissionQueue<'_>, sub: &Submitter<'_>) {
        let u = cqe.user_data();
        let (res, flags) = (cqe.result(), cqe.flags());
        let slot = (u >> 32) as u32;
        let gen = ((u >> 8) as u32) & GEN_MASK;
        match u & 0xff {
            OP_ACCEPT => self.on_accept(res, flags, sq, sub),
            OP_RECV => self.on_recv(slot, gen, res, flags, sq, sub),
            OP_SEND => self.on_send(slot, gen, res, sq, sub),
            OP_POLL => self.on_poll(slot, gen, res, flags, sq, sub),
            _ => {}
        }
    }

    /// Submit one send per connection that got responses in this drain.
    fn flush_dirty(&mut self, sq: &mut SubmissionQueue<'_>, sub: &Submitter<'_>) {
        for target in std::mem::take(&mut self.cancels) {
            let e = opcode::AsyncCancel::new(target)
                .build()
                .user_data(ud(OP_CANCEL, 0, 0));
            push(sq, sub, &e);
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            let c = &mut self.conns[slot as usize];
            if !c.flush_queued {
                continue;
            }
            c.flush_queued = false;
            if !c.live || c.closing || c.send_inflight || c.out_off >= c.out.len() {
                continue;
            }
            if self.send_syscall {
                let rest = &c.out[c.out_off..];
                let n = unsafe {
                    libc::send(
                        c.fd,
                        rest.as_ptr() as *const _,
                        rest.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                    self.begin_close(slot);
                    self.try_finish_close(slot);
                    continue;
                }
                if n > 0 {
                    c.out_off += n as usize;
                }
                if c.out_off == c.out.len() {
                    c.out.clear();
                    c.out_off = 0;
                    continue;
                }
                // The socket is full: the rest waits in the kernel as a Send SQE.
            }
            self.submit_send(slot, sq, sub);
        }
        dirty.clear();
        self.dirty = dirty;
    }
}

/// Listener, ring and buffer ring of worker `idx`. Call it on the thread that will
/// run the worker: the ring must be created there (SINGLE_ISSUER / DEFER_TASKRUN).
/// Drop the IoUring before the Worker: the kernel points at the Worker's buffers.
/// The bool: the ring has DEFER_TASKRUN.
fn setup(port: u16, idx: usize) -> io::Result<(IoUring, Worker, bool)> {
    let lfd = listener(port)?;
    let (ring, defer) = build_ring(idx)?;
    let bufs = BufRing::new(&ring.submitter(), idx)?;
    let w = Worker {
        conns: Vec::new(),
        free: Vec::new(),
        dirty: Vec::new(),
        bufs,
        date: DateCache::new(),
        lfd,
        enobufs: 0,
        send_syscall: std::env::var("UF_SEND").is_ok_and(|v| v == "syscall"),
        recv_poll: std::env::var("UF_RECV").is_ok_and(|v| v == "poll"),
        scratch: vec![0; 64 * 1024],
        cancels: Vec::new(),
    };
    Ok((ring, w, defer))
}

fn worker(port: u16, idx: usize) -> io::Result<()> {
    let (mut ring, mut w, _) = setup(port, idx)?;
    let r = run(&mut ring, &mut w);
    // Tear the ring down before the buffer ring memory it points at.
    drop(ring);
    drop(w);
    r
}

fn run(ring: &mut IoUring, w: &mut Worker) -> io::Result<()> {
    let (sub, mut sq, mut cq) = ring.split();
    w.arm_accept(&mut sq, &sub);
    loop {
        // Publish pushed SQEs, then ONE io_uring_enter: submit + wait for >= 1 CQE
        // (with DEFER_TASKRUN this is also where the kernel runs our task work).
        sq.sync();
        match sub.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            // CQ overflow backlog: drain the CQ and try again
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        w.date.refresh();
        cq.sync();
        for cqe in &mut cq {
            w.on_cqe(&cqe, &mut sq, &sub);
        }
        cq.sync(); // hand the consumed CQ entries back to the kernel
        w.flush_dirty(&mut sq, &sub);
    }
}

fn main() {
    let (port, workers) = args();
    let cpus = allowed_cpus();
    if hosted::enabled() {
        hosted::main(port, workers, &cpus);
        return;
    }
    let mut hs = Vec::new();
    for i in 0..workers {
        let cpu = cpus[i % cpus.len()];
        hs.push(
            std::thread::Builder::new()
                .name(format!("uring-{i}"))
                .spawn(move || {
                    pin_to(cpu);
                    if let Err(e) = worker(port, i) {
                        eprintln!("worker {i}: {e}");
                        std::process::exit(1);
                    }
                })
                .unwrap(),
        );
    }
    eprintln!("uring-floor listening on 127.0.0.1:{port} with {workers} worker(s)");
    for h in hs {
        h.join().unwrap();
    }
}
