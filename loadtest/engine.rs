//! The client engine: one edge-triggered epoll loop per pinned thread, driving non-blocking
//! keep-alive connections in a closed or open loop; it measures but never reports.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::framer::{Framer, Response, Step};
use crate::limits;
use crate::scenario::Mix;
use crate::stats::{ThreadStats, new_histogram};
use crate::sys::{self, Epoll, Socket};

/// When requests are sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// A new request as soon as a slot (of `pipeline`) frees up, as wrk does.
    Closed,
    /// Each connection sends on its own fixed schedule, `interval_ns` apart, as wrk2 does;
    /// latency counts from the intended send time.
    Open { interval_ns: u64 },
}

/// Everything a run's threads share, read-only.
pub struct Plan {
    pub addr: SocketAddr,
    pub mix: Mix,
    pub connections: usize,
    pub pipeline: usize,
    pub timeout_ns: u64,
    pub schedule: Schedule,
    pub warmup_ns: u64,
    pub duration_ns: u64,
    /// Busy-poll this long before sleeping in epoll_wait (0: never spin).
    pub busy_poll_ns: u64,
}

/// What a thread reports once a second for the live progress line.
pub struct ProgressSample {
    pub second: u64,
    pub responses: u64,
    pub errors: u64,
    pub latency_us: Histogram<u64>,
}

/// Runs the plan on `threads` threads (thread i pinned to `cpus[i % len]` when `cpus` is not empty).
pub fn run(
    plan: &Plan,
    threads: usize,
    cpus: &[usize],
    progress: Option<Sender<ProgressSample>>,
) -> Vec<ThreadStats> {
    let start = Instant::now();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        let mut first = 0;
        for thread in 0..threads {
            let count =
                plan.connections / threads + usize::from(thread < plan.connections % threads);
            let cpu = (!cpus.is_empty()).then(|| cpus[thread % cpus.len()]);
            let progress = progress.clone();
            let range = first..first + count;
            first += count;
            handles.push(scope.spawn(move || {
                if let Some(id) = cpu {
                    core_affinity::set_for_current(core_affinity::CoreId { id });
                }
                sys::set_timer_slack_ns(limits::TIMER_SLACK_NS);
                Worker::new(plan, start, range, progress).run()
            }));
        }
        drop(progress);
        handles
            .into_iter()
            .map(|h| h.join().expect("client threads do not panic"))
            .collect()
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// No socket; `Conn::timer_ns` says when to connect again.
    Closed,
    Connecting {
        since_ns: u64,
    },
    Open,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    intended_ns: u64,
    sent_ns: u64,
    template: u16,
    /// First sent inside the measurement window: counted in `requests_sent`, so its fate
    /// (response, timeout, loss, unanswered at the end) is counted too, and a request sent in
    /// the warm-up is never counted as a response.
    measured: bool,
    /// Already sent again once after the server closed without a word (`Cause::PeerClosed`).
    resent: bool,
}

/// Why a connection closes: it decides what becomes of the requests still in flight on it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cause {
    /// The server announced the close (`Connection: close`, a close-delimited body): it must not
    /// have processed the requests pipelined behind (RFC 9112 §9.6), so all are sent again.
    Announced,
    /// The server closed without a word. With nothing in flight this is a normal close (an idle
    /// keep-alive timeout, or a server that closes after each response); requests in flight on
    /// a connection that answered before are sent once more (most likely they crossed the
    /// server's FIN, the keep-alive race of RFC 9112 §9.3.1), and lost for good
    /// (`errors.closed`) when that happens to them again. On a connection that answered
    /// nothing there is no such race: they are lost at once. A reset on a read or a write is
    /// this too: a request that crossed the FIN reaches a closed socket, whose kernel resets
    /// (counted as a read error and the run failed, found in review).
    PeerClosed,
    /// Requests in flight timed out: the expired ones are counted as timeouts, the rest, which
    /// the server may have processed, as `errors.closed`.
    TimedOut,
    /// A read, write or parse error: requests in flight count as `errors.closed`.
    Error,
}

struct Conn {
    socket: Option<Socket>,
    state: State,
    /// Keep `Set-Cookie` values (the scenario has a session).
    collect_cookies: bool,
    read_buf: Vec<u8>,
    read_len: usize,
    write_buf: Vec<u8>,
    write_pos: usize,
    writable_armed: bool,
    in_flight: VecDeque<InFlight>,
    /// Requests lost to a close that are sent again, first, after reconnecting (see `Cause`).
    retry: VecDeque<InFlight>,
    /// Responses on the current connection: a silent close before any is no keep-alive race.
    answered: u64,
    /// Bytes framed of the response being read (interim heads included), for `bytes_read`.
    response_bytes: u64,
    next_intended_ns: u64,
    framer: Framer,
    cookies: Vec<(String, String)>,
    cookie_header: Vec<u8>,
    login_pending: bool,
    ever_connected: bool,
    /// The one timer this connection has armed (0: none); heap entries that differ are stale.
    timer_ns: u64,
    rng: u64,
}

/// Initial read buffer; grows to `READ_BUFFER_BYTES` only for a connection that meets a large head.
const READ_BUFFER_BYTES_INITIAL: usize = 16 * 1024;

struct Worker<'a> {
    plan: &'a Plan,
    start: Instant,
    epoll: Epoll,
    conns: Vec<Conn>,
    timers: BinaryHeap<Reverse<(u64, u32)>>,
    stats: ThreadStats,
    measure_start_ns: u64,
    end_ns: u64,
    progress: Option<(Sender<ProgressSample>, Histogram<u64>)>,
    next_second_ns: u64,
    progress_sent: (u64, u64),
    /// Responses including the warm-up, for the progress line.
    responses_all: u64,
}

impl<'a> Worker<'a> {
    fn new(
        plan: &'a Plan,
        start: Instant,
        range: std::ops::Range<usize>,
        progress: Option<Sender<ProgressSample>>,
    ) -> Worker<'a> {
        let conns = range
            .map(|global_index| Conn::new(plan, global_index))
            .collect();
        Worker {
            plan,
            start,
            epoll: Epoll::new().expect("epoll_create1 only fails when out of fds or memory"),
            conns,
            timers: BinaryHeap::new(),
            stats: ThreadStats::new(plan.mix.templates.len()),
            measure_start_ns: plan.warmup_ns,
            end_ns: plan.warmup_ns + plan.duration_ns,
            progress: progress.map(|tx| (tx, new_histogram())),
            next_second_ns: 1_000_000_000,
            progress_sent: (0, 0),
            responses_all: 0,
        }
    }

    #[inline]
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn measuring(&self, now: u64) -> bool {
        now >= self.measure_start_ns
    }

    fn run(mut self) -> ThreadStats {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; limits::EPOLL_EVENTS_MAX];
        let drain_end_ns = self.end_ns + self.plan.timeout_ns.min(limits::DRAIN_US_MAX * 1000);
        let scan_ns = limits::EPOLL_IDLE_WAIT_US * 1000;
        let mut next_scan_ns = scan_ns;
        for i in 0..self.conns.len() {
            self.connect(i, 0);
        }
        loop {
            let now = self.now();
            if now >= drain_end_ns {
                self.expire_at_end(now);
                break;
            }
            if now >= self.end_ns && self.all_answered() {
                break;
            }
            self.fire_timers(now);
            if now >= next_scan_ns {
                self.scan_timeouts(now);
                next_scan_ns = now + scan_ns;
            }
            if now >= self.next_second_ns {
                self.tick_second(now);
            }
            let next_timer = self.timers.peek().map_or(u64::MAX, |Reverse((t, _))| *t);
            let phase_end = if now < self.end_ns {
                self.end_ns
            } else {
                drain_end_ns
            };
            let deadline = next_timer
                .min(next_scan_ns)
                .min(self.next_second_ns)
                .min(phase_end);
            let mut ready = 0;
            if self.plan.busy_poll_ns > 0 {
                // Poll without sleeping for a while: on its own core the client then answers at
                // once instead of paying a sleep and a wake-up per batch, and sends on time.
                let spin_end = (now + self.plan.busy_poll_ns).min(deadline);
                while ready == 0 && self.now() < spin_end {
                    ready = self.epoll.wait(&mut events, 0);
                }
            }
            if ready == 0 {
                let now = self.now();
                let mut wait_ns = deadline.saturating_sub(now);
                if wait_ns > self.plan.busy_poll_ns {
                    // Wake a little early and poll the rest, so a timed send leaves on time.
                    wait_ns -= self.plan.busy_poll_ns;
                }
                ready = self.epoll.wait(&mut events, wait_ns);
            }
            for event in &events[..ready] {
                let now = self.now();
                self.handle(event.u64 as usize, event.events, now);
            }
        }
        self.finish()
    }

    fn finish(mut self) -> ThreadStats {
        // A whole second the loop ended in before ticking it still gets its line (found in
        // review: the last one went missing, or showed some threads only), and so does a last
        // partial second of more than a tenth of one.
        let now = self.now();
        if now >= self.next_second_ns {
            self.tick_second(now);
        }
        if now % 1_000_000_000 > 100_000_000 {
            self.tick_second(now.div_ceil(1_000_000_000) * 1_000_000_000);
        }
        // Requests sent but not answered are errors; open-loop requests the schedule wanted
        // before the end that were never sent are not (see `ThreadStats::unsent_at_end`). A
        // request still waiting to be sent again was not processed (or, after a silent close,
        // most likely not): it counts as never sent, and leaves `requests_sent`.
        let open_loop = matches!(self.plan.schedule, Schedule::Open { .. });
        // The measured schedule points a connection never got to: from its next one (or the
        // window's start, if the warm-up's backlog was not worked off) to the end.
        let due = |c: &Conn| match self.plan.schedule {
            Schedule::Open { interval_ns } if c.next_intended_ns < self.end_ns => {
                let skipped = self
                    .measure_start_ns
                    .saturating_sub(c.next_intended_ns)
                    .div_ceil(interval_ns);
                let first = c.next_intended_ns + skipped * interval_ns;
                let count = self.end_ns.saturating_sub(first).div_ceil(interval_ns);
                (first, count)
            }
            _ => (0, 0),
        };
        let measured = |queue: &VecDeque<InFlight>| queue.iter().filter(|f| f.measured).count();
        // Every request the window wanted is in the corrected latency: an answered one with its
        // latency, any other with a lower bound, the time it had waited by the end (by `now`
        // for one sent and never answered). Left out, a stall at the end or a server that
        // cannot keep up read as a fine p99 (found in review: 27% of the requests held 0-400 ms
        // by a stall, p99 11 ms).
        let stats = &mut self.stats;
        for conn in &self.conns {
            let waiting = measured(&conn.retry) as u64;
            stats.errors.unanswered += measured(&conn.in_flight) as u64;
            stats.requests_sent -= waiting;
            for f in conn.in_flight.iter().filter(|f| f.measured) {
                record_unanswered(stats, f, now);
            }
            if open_loop {
                // Due and never sent again: counted in `unsent_at_end` below, and in the
                // latency as the schedule wanted them. In a closed loop nothing is due; the
                // histogram held them while no count did (found in review).
                for f in conn.retry.iter().filter(|f| f.measured) {
                    stats
                        .latency_us
                        .saturating_record(latency_us(f.intended_ns, self.end_ns));
                }
                let (first, unsent) = due(conn);
                stats.unsent_at_end += waiting + unsent;
                if let Schedule::Open { interval_ns } = self.plan.schedule {
                    let _ = record_waits(
                        &mut stats.latency_us,
                        first,
                        interval_ns,
                        unsent,
                        self.end_ns,
                    );
                }
            }
        }
        // The window is what requests were measured in (sent from its start to its end), not
        // up to the last answer: a slow answer at the end stretched it and lowered the rate
        // (found in review: 6-9% with 5% of the answers 300 ms late).
        stats.measured_ns = self.end_ns.saturating_sub(self.measure_start_ns);
        // Only whole seconds make per-second samples comparable; one with no answer is a 0.
        let whole_seconds = (self.plan.duration_ns / 1_000_000_000) as usize;
        stats.responses_per_second.resize(whole_seconds, 0);
        self.stats
    }

    /// Checked only after the end, when nothing is sent any more (not even a retry).
    fn all_answered(&self) -> bool {
        self.conns.iter().all(|c| c.in_flight.is_empty())
    }

    fn set_timer(&mut self, i: usize, at_ns: u64) {
        let conn = &mut self.conns[i];
        if conn.timer_ns != at_ns {
            conn.timer_ns = at_ns;
            self.timers.push(Reverse((at_ns, i as u32)));
        }
    }

    fn fire_timers(&mut self, now: u64) {
        while let Some(&Reverse((at_ns, i))) = self.timers.peek() {
            if at_ns > now {
                break;
            }
            self.timers.pop();
            let i = i as usize;
            if self.conns[i].timer_ns != at_ns {
                continue;
            }
            self.conns[i].timer_ns = 0;
            match self.conns[i].state {
                State::Closed => self.connect(i, now),
                State::Open => self.fill(i, now),
                State::Connecting { .. } => {}
            }
        }
    }

    fn tick_second(&mut self, now: u64) {
        let second = now / 1_000_000_000;
        self.next_second_ns = (second + 1) * 1_000_000_000;
        if let Some((tx, latency)) = &mut self.progress {
            let errors = self.stats.errors.total() + self.stats.status.errors();
            let sample = ProgressSample {
                second,
                responses: self.responses_all - self.progress_sent.0,
                errors: errors - self.progress_sent.1,
                latency_us: std::mem::replace(latency, new_histogram()),
            };
            self.progress_sent = (self.responses_all, errors);
            // The receiver may be gone when the run is ending; progress is best effort.
            let _ = tx.send(sample);
        }
    }

    fn handle(&mut self, i: usize, events: u32, now: u64) {
        match self.conns[i].state {
            State::Closed => {}
            State::Connecting { .. } => {
                if events & (sys::OUT | sys::ERR_OR_HUP) != 0 {
                    self.on_connect_ready(i, now);
                }
            }
            State::Open => {
                if events & (sys::IN | sys::PEER_CLOSED | sys::ERR_OR_HUP) != 0 {
                    self.on_readable(i, events, now);
                }
                if events & sys::OUT != 0 && self.conns[i].state == State::Open {
                    self.flush(i, now);
                }
            }
        }
    }

    fn connect(&mut self, i: usize, now: u64) {
        let conn = &mut self.conns[i];
        assert!(
            conn.socket.is_none() && conn.in_flight.is_empty(),
            "connect on a live connection"
        );
        match Socket::connect(&self.plan.addr) {
            Ok(socket) => {
                if self.epoll.add(socket.fd, sys::OUT, i as u64).is_err() {
                    self.connect_failed(i, now);
                    return;
                }
                conn.socket = Some(socket);
                conn.state = State::Connecting { since_ns: now };
                if conn.ever_connected && now >= self.measure_start_ns {
                    self.stats.reconnects += 1;
                }
                conn.ever_connected = true;
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                // socket() failed here, for lack of descriptors: the client's fault, never the
                // server's connect error (main.rs checks RLIMIT_NOFILE so this stays rare).
                if self.measuring(now) {
                    self.stats.errors.client_fds += 1;
                }
                self.conns[i].reset();
                self.set_timer(i, now + limits::RECONNECT_BACKOFF_US * 1000);
            }
            Err(_) => self.connect_failed(i, now),
        }
    }

    fn connect_failed(&mut self, i: usize, now: u64) {
        if self.measuring(now) {
            self.stats.errors.connect += 1;
        }
        self.conns[i].reset();
        self.set_timer(i, now + limits::RECONNECT_BACKOFF_US * 1000);
    }

    fn on_connect_ready(&mut self, i: usize, now: u64) {
        let conn = &mut self.conns[i];
        let socket = conn
            .socket
            .as_ref()
            .expect("a connecting conn has a socket");
        if socket.take_error().is_err() || self.epoll.modify(socket.fd, sys::IN, i as u64).is_err()
        {
            self.connect_failed(i, now);
            return;
        }
        conn.state = State::Open;
        conn.writable_armed = false;
        self.fill(i, now);
    }

    /// Closes connection `i`; `cause` says what becomes of the requests in flight, so that every
    /// measured request ends as a response, an error, or unanswered or unsent at the end. The
    /// next connect waits `RECONNECT_BACKOFF_US` after an error, a loss, or a close before any
    /// answer, so a failing server is not hammered (found in review: an open loop with nothing
    /// in flight reconnected 2,274 times a second to a server that closed every connection at
    /// once), and happens at once after a normal close.
    fn close(&mut self, i: usize, now: u64, cause: Cause) {
        let conn = &mut self.conns[i];
        let answered = conn.answered;
        let mut lost = 0;
        for f in conn.in_flight.iter().rev() {
            let again = match cause {
                Cause::Announced => true,
                // The keep-alive race needs a connection that answered before and sat idle;
                // a silent close before any answer is a server dropping what it read (found
                // in review: one that read every request and closed on it passed the run).
                // A POST the server may have processed is never sent again on a guess (RFC
                // 9112 §9.3.1; found in review).
                Cause::PeerClosed => {
                    !f.resent
                        && conn.answered > 0
                        && self.plan.mix.templates[f.template as usize].idempotent
                }
                Cause::TimedOut | Cause::Error => false,
            };
            if again {
                let resent = f.resent || cause == Cause::PeerClosed;
                conn.retry.push_front(InFlight { resent, ..*f });
            } else if f.measured {
                lost += 1;
                record_unanswered(&mut self.stats, f, now);
            }
        }
        self.stats.errors.closed += lost;
        conn.reset();
        if cause == Cause::Error || lost > 0 || answered == 0 {
            self.set_timer(i, now + limits::RECONNECT_BACKOFF_US * 1000);
        } else {
            self.connect(i, now);
        }
    }

    /// Sends what the schedule allows: logs in first when the scenario asks for it, then sends
    /// again what a close lost (see `Cause`), then new requests. Nothing at all is sent after the
    /// end: not a new request, not a retry, not an open-loop backlog.
    fn fill(&mut self, i: usize, now: u64) {
        let plan = self.plan;
        let measured = self.measuring(now);
        let conn = &mut self.conns[i];
        if conn.state != State::Open || now >= self.end_ns {
            return;
        }
        // New measured requests only: one sent again was counted at its first send.
        let mut new_requests = 0;
        if conn.login_pending {
            if conn.in_flight.is_empty() {
                let login = plan
                    .mix
                    .login
                    .expect("login_pending implies a login template");
                match conn.retry.iter().position(|f| f.template == login) {
                    Some(index) => {
                        let f = conn.retry.remove(index).expect("index from position");
                        conn.resend(plan, f, now);
                    }
                    None => {
                        conn.push(plan, login, now, now, measured);
                        new_requests += u64::from(measured);
                    }
                }
            }
        } else {
            while conn.in_flight.len() < plan.pipeline
                && let Some(f) = conn.retry.pop_front()
            {
                conn.resend(plan, f, now);
            }
            match plan.schedule {
                Schedule::Closed => {
                    while conn.in_flight.len() < plan.pipeline {
                        let template = conn.draw(plan);
                        conn.push(plan, template, now, now, measured);
                        new_requests += u64::from(measured);
                    }
                }
                Schedule::Open { interval_ns } => {
                    while conn.in_flight.len() < plan.pipeline
                        && conn.next_intended_ns <= now
                        && conn.next_intended_ns < self.end_ns
                    {
                        let intended = conn.next_intended_ns;
                        // Saturating: an interval near u64::MAX (a rate of 1e-9 req/s) wrapped
                        // to an early time and sent again at once (found in review).
                        conn.next_intended_ns = intended.saturating_add(interval_ns);
                        let template = conn.draw(plan);
                        // Measured by when the schedule wanted it: one due in the warm-up and
                        // sent after it is the warm-up's backlog (found in review: counted).
                        let measured = intended >= self.measure_start_ns;
                        conn.push(plan, template, intended, now, measured);
                        new_requests += u64::from(measured);
                    }
                    let next = conn.next_intended_ns;
                    if conn.in_flight.len() < plan.pipeline && next < self.end_ns && next > now {
                        self.set_timer(i, next);
                    }
                }
            }
        }
        self.stats.requests_sent += new_requests;
        self.flush(i, now);
    }

    fn flush(&mut self, i: usize, now: u64) {
        let conn = &mut self.conns[i];
        if conn.write_pos == conn.write_buf.len() {
            return;
        }
        let socket = conn.socket.as_ref().expect("an open conn has a socket");
        match socket.send(&conn.write_buf[conn.write_pos..]) {
            Ok(n) => conn.write_pos += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if conn.answered > 0 && peer_reset(&e) => {
                self.close(i, now, Cause::PeerClosed);
                return;
            }
            Err(_) => {
                if self.measuring(now) {
                    self.stats.errors.write += 1;
                }
                self.close(i, now, Cause::Error);
                return;
            }
        }
        let done = conn.write_pos == conn.write_buf.len();
        if done {
            conn.write_buf.clear();
            conn.write_pos = 0;
        }
        if done == conn.writable_armed {
            let events = if done { sys::IN } else { sys::IN | sys::OUT };
            // MOD on a registered fd only fails if the fd is gone, which a live socket is not.
            let _ = self.epoll.modify(socket.fd, events, i as u64);
            conn.writable_armed = !done;
        }
    }

    /// Reads until a short read, or to the end of stream once the peer has closed (the epoll is
    /// edge-triggered: bytes or a FIN left in the socket would get no second event), framing
    /// what each read brought. Once the event says the peer has closed, nothing new is sent on
    /// the connection: it would only be lost with it.
    fn on_readable(&mut self, i: usize, events: u32, now: u64) {
        let peer_closed = events & (sys::PEER_CLOSED | sys::ERR_OR_HUP) != 0;
        loop {
            let conn = &mut self.conns[i];
            // Framing may have closed the connection (and a reconnect opened another socket).
            if conn.state != State::Open {
                return;
            }
            let socket = conn.socket.as_ref().expect("an open conn has a socket");
            let room = conn.read_buf.len() - conn.read_len;
            let read = socket.recv(&mut conn.read_buf[conn.read_len..]);
            match read {
                Ok(0) => return self.on_eof(i, now),
                Ok(n) => {
                    conn.read_len += n;
                    self.parse(i, now, !peer_closed);
                    if n < room && !peer_closed {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if conn.answered > 0 && peer_reset(&e) => {
                    return self.close(i, now, Cause::PeerClosed);
                }
                Err(_) => {
                    if self.measuring(now) {
                        self.stats.errors.read += 1;
                    }
                    return self.close(i, now, Cause::Error);
                }
            }
        }
    }

    /// Frames every complete response in the read buffer, then tops the connection up when
    /// `send_more`.
    fn parse(&mut self, i: usize, now: u64, send_more: bool) {
        let mut pos = 0;
        loop {
            let conn = &mut self.conns[i];
            let is_head = conn
                .in_flight
                .front()
                .is_some_and(|f| self.plan.mix.templates[f.template as usize].is_head);
            match conn
                .framer
                .step(&conn.read_buf[pos..conn.read_len], is_head)
            {
                Ok(Step::Done { consumed, response }) => {
                    pos += consumed;
                    conn.response_bytes += consumed as u64;
                    if !self.complete(i, response, now) {
                        return;
                    }
                }
                Ok(Step::NeedMore { consumed }) => {
                    pos += consumed;
                    conn.response_bytes += consumed as u64;
                    break;
                }
                Err(_) => {
                    self.parse_failed(i, now);
                    return;
                }
            }
        }
        let conn = &mut self.conns[i];
        conn.read_buf.copy_within(pos..conn.read_len, 0);
        conn.read_len -= pos;
        if conn.read_len == conn.read_buf.len() {
            // Only a head can be partial this long, and the framer refuses heads longer than
            // RESPONSE_HEAD_BYTES_MAX, which fits READ_BUFFER_BYTES.
            assert!(
                conn.read_buf.len() < limits::READ_BUFFER_BYTES,
                "read buffer full without a framing error"
            );
            conn.read_buf.resize(limits::READ_BUFFER_BYTES, 0);
        }
        if send_more {
            self.fill(i, now);
        }
    }

    fn parse_failed(&mut self, i: usize, now: u64) {
        if self.measuring(now) {
            self.stats.errors.parse += 1;
        }
        self.close(i, now, Cause::Error);
    }

    /// Accounts one response. Returns false when the connection was closed.
    fn complete(&mut self, i: usize, response: Response, now: u64) -> bool {
        let plan = self.plan;
        let timeout_ns = plan.timeout_ns;
        if self.conns[i]
            .in_flight
            .front()
            .is_some_and(|f| f.sent_ns + timeout_ns <= now)
        {
            // An answer that came after its request's timeout is a timeout, as the scan (every
            // `EPOLL_IDLE_WAIT_US`) would have found had it run at the deadline: it was counted
            // as a response, latency and all (found in review: a 55 ms answer passed a 50 ms
            // --timeout).
            self.expire(i, now);
            return false;
        }
        let Some(request) = self.conns[i].in_flight.pop_front() else {
            // A response nobody asked for: the stream is out of step.
            self.parse_failed(i, now);
            return false;
        };
        self.conns[i].answered += 1;
        self.responses_all += 1;
        let bytes = std::mem::take(&mut self.conns[i].response_bytes);
        if request.measured {
            let stats = &mut self.stats;
            // The bytes of the answers to measured requests: an answer to a warm-up request read
            // in the window was counted, a run that measured nothing read bytes (found in review).
            stats.bytes_read += bytes;
            let corrected_us = latency_us(request.intended_ns, now);
            let uncorrected_us = latency_us(request.sent_ns, now);
            stats.latency_us.saturating_record(corrected_us);
            stats
                .latency_uncorrected_us
                .saturating_record(uncorrected_us);
            if let Some((_, latency)) = &mut self.progress {
                latency.saturating_record(corrected_us);
            }
            stats.status.count(response.status);
            stats.responses += 1;
            stats.responses_by_template[request.template as usize] += 1;
            let second = ((now - self.measure_start_ns) / 1_000_000_000) as usize;
            if second < limits::RATE_SAMPLES_MAX {
                if stats.responses_per_second.len() <= second {
                    stats.responses_per_second.resize(second + 1, 0);
                }
                stats.responses_per_second[second] += 1;
            }
        }
        let conn = &mut self.conns[i];
        if plan.mix.cookies && !response.cookies.is_empty() {
            conn.keep_cookies(response.cookies);
        }
        if Some(request.template) == plan.mix.login {
            conn.login_pending = false;
        }
        if response.close {
            self.close(i, now, Cause::Announced);
            return false;
        }
        true
    }

    /// The server closed. A close-delimited body ends here; a close inside a head or body is a
    /// parse error (`FrameError::Truncated`); any other close is the server's (`Cause::PeerClosed`).
    fn on_eof(&mut self, i: usize, now: u64) {
        let pending_bytes = self.conns[i].read_len;
        match self.conns[i].framer.finish(pending_bytes) {
            Ok(Some(response)) => {
                // A close-delimited body ended; `response.close` is set, so this reconnects.
                self.complete(i, response, now);
            }
            Ok(None) => self.close(i, now, Cause::PeerClosed),
            Err(_) => self.parse_failed(i, now),
        }
    }

    /// Closes connections whose oldest request has waited `timeout` and counts each request
    /// that waited that long; also gives up on connects that take that long.
    fn scan_timeouts(&mut self, now: u64) {
        let timeout_ns = self.plan.timeout_ns;
        for i in 0..self.conns.len() {
            let conn = &mut self.conns[i];
            match conn.state {
                State::Connecting { since_ns } if since_ns + timeout_ns <= now => {
                    self.connect_failed(i, now)
                }
                State::Open
                    if conn
                        .in_flight
                        .front()
                        .is_some_and(|f| f.sent_ns + timeout_ns <= now) =>
                {
                    self.expire(i, now)
                }
                _ => {}
            }
        }
    }

    /// At the drain's end: the requests that have waited their timeout are timeouts, as a scan
    /// would have found; the rest stay in flight, unanswered (`finish`).
    fn expire_at_end(&mut self, now: u64) {
        for conn in &mut self.conns {
            take_timed_out(
                &mut self.stats,
                &mut conn.in_flight,
                self.plan.timeout_ns,
                now,
            );
        }
    }

    /// Counts the requests of connection `i` that have waited `timeout` as timeouts and closes
    /// it (`Cause::TimedOut`).
    fn expire(&mut self, i: usize, now: u64) {
        let in_flight = &mut self.conns[i].in_flight;
        take_timed_out(&mut self.stats, in_flight, self.plan.timeout_ns, now);
        self.close(i, now, Cause::TimedOut);
    }
}

/// Takes the requests that have waited `timeout_ns` by `now` out of `in_flight` (in send order:
/// they lead) and counts the measured ones as timeouts.
fn take_timed_out(
    stats: &mut ThreadStats,
    in_flight: &mut VecDeque<InFlight>,
    timeout_ns: u64,
    now: u64,
) {
    let expired = in_flight
        .iter()
        .take_while(|f| f.sent_ns + timeout_ns <= now)
        .count();
    for f in in_flight.drain(..expired).filter(|f| f.measured) {
        record_unanswered(stats, &f, now);
        stats.errors.timeout += 1;
    }
}

impl Conn {
    fn new(plan: &Plan, global_index: usize) -> Conn {
        let next_intended_ns = match plan.schedule {
            // Spread the connections' phases evenly over one interval.
            // In u128: the product wrapped for long intervals (found in review).
            Schedule::Open { interval_ns } => {
                (u128::from(interval_ns) * global_index as u128 / plan.connections as u128) as u64
            }
            Schedule::Closed => 0,
        };
        Conn {
            socket: None,
            state: State::Closed,
            collect_cookies: plan.mix.cookies,
            read_buf: vec![0; READ_BUFFER_BYTES_INITIAL],
            read_len: 0,
            write_buf: Vec::new(),
            write_pos: 0,
            writable_armed: false,
            in_flight: VecDeque::with_capacity(plan.pipeline),
            retry: VecDeque::new(),
            answered: 0,
            response_bytes: 0,
            next_intended_ns,
            framer: Framer::new(plan.mix.cookies),
            cookies: Vec::new(),
            cookie_header: Vec::new(),
            login_pending: plan.mix.login.is_some(),
            ever_connected: false,
            timer_ns: 0,
            // Any odd non-zero seed works for xorshift; distinct per connection.
            rng: (global_index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// Back to `Closed`: drops the socket (closing it) and everything tied to it.
    fn reset(&mut self) {
        self.socket = None;
        self.state = State::Closed;
        self.read_len = 0;
        self.write_buf.clear();
        self.write_pos = 0;
        self.writable_armed = false;
        self.in_flight.clear();
        self.answered = 0;
        self.response_bytes = 0;
        self.framer = Framer::new(self.collect_cookies);
    }

    /// Picks the next request of the mix (uniform over the weight table).
    #[inline]
    fn draw(&mut self, plan: &Plan) -> u16 {
        let table = &plan.mix.table;
        if table.len() == 1 {
            return table[0];
        }
        // xorshift64: fast and good enough to pick among weights.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        table[(self.rng % table.len() as u64) as usize]
    }

    #[inline]
    fn push(&mut self, plan: &Plan, template: u16, intended_ns: u64, sent_ns: u64, measured: bool) {
        plan.mix.templates[template as usize].encode(&self.cookie_header, &mut self.write_buf);
        self.in_flight.push_back(InFlight {
            intended_ns,
            sent_ns,
            template,
            measured,
            resent: false,
        });
    }

    /// Sends a request lost to a close again; its latency still counts from its intended time.
    fn resend(&mut self, plan: &Plan, f: InFlight, now: u64) {
        plan.mix.templates[f.template as usize].encode(&self.cookie_header, &mut self.write_buf);
        self.in_flight.push_back(InFlight { sent_ns: now, ..f });
    }

    /// Keeps a response's cookies as a browser would, within `COOKIES_PER_CONNECTION_MAX`,
    /// `COOKIE_BYTES_MAX` and `COOKIE_HEADER_BYTES_MAX`: a cookie past one of them is not kept
    /// (an update past the header bound leaves the old value), and a deletion drops it.
    fn keep_cookies(&mut self, cookies: Vec<(String, Option<String>)>) {
        let header_bytes = |cookies: &[(String, String)]| -> usize {
            let pairs: usize = cookies.iter().map(|(n, v)| n.len() + 1 + v.len()).sum();
            pairs + 2 * cookies.len().saturating_sub(1)
        };
        for (name, value) in cookies {
            let slot = self.cookies.iter().position(|(n, _)| *n == name);
            match (slot, value) {
                (Some(slot), None) => _ = self.cookies.remove(slot),
                (None, None) => {}
                (_, Some(value)) if name.len() + 1 + value.len() > limits::COOKIE_BYTES_MAX => {}
                (Some(slot), Some(value)) => {
                    let old = std::mem::replace(&mut self.cookies[slot].1, value);
                    if header_bytes(&self.cookies) > limits::COOKIE_HEADER_BYTES_MAX {
                        self.cookies[slot].1 = old;
                    }
                }
                (None, Some(value)) if self.cookies.len() < limits::COOKIES_PER_CONNECTION_MAX => {
                    self.cookies.push((name, value));
                    if header_bytes(&self.cookies) > limits::COOKIE_HEADER_BYTES_MAX {
                        self.cookies.pop();
                    }
                }
                (None, Some(_)) => {}
            }
        }
        self.cookie_header.clear();
        for (index, (name, value)) in self.cookies.iter().enumerate() {
            if index > 0 {
                self.cookie_header.extend_from_slice(b"; ");
            }
            self.cookie_header
                .extend_from_slice(format!("{name}={value}").as_bytes());
        }
    }
}

/// Records a request sent and never answered (timed out, lost to a close, in flight at the end)
/// as having waited until `now`, a lower bound: left out, a run whose slow requests never came
/// back read as fast (found in review).
fn record_unanswered(stats: &mut ThreadStats, f: &InFlight, now: u64) {
    stats
        .latency_us
        .saturating_record(latency_us(f.intended_ns, now));
    stats
        .latency_uncorrected_us
        .saturating_record(latency_us(f.sent_ns, now));
}

/// Whether `e` says the peer reset the connection (or closed it under a write). On a connection
/// that answered, that is the keep-alive race (`Cause::PeerClosed`); before any answer it is a
/// server refusing, an error, and reconnecting at once would spin (found in review).
fn peer_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
    )
}

/// Records `count` schedule points, `first_ns + k * interval_ns`, as having waited until `end_ns`.
/// In runs of points whose waits the histogram does not tell apart (within a thousandth: it
/// keeps 3 significant digits), one record a run: a stalled run at a high rate has rate x
/// duration of them (found in review: 70 s of recording at 1e9/s), but only thousands of runs.
/// Returns how many records it made.
fn record_waits(
    histogram: &mut Histogram<u64>,
    first_ns: u64,
    interval_ns: u64,
    count: u64,
    end_ns: u64,
) -> u64 {
    let (mut k, mut records) = (0, 0);
    while k < count {
        let intended = first_ns + k * interval_ns;
        let waited_ns = end_ns.saturating_sub(intended);
        let run = (waited_ns / 1000 / interval_ns.max(1)).clamp(1, count - k);
        histogram.saturating_record_n(latency_us(intended, end_ns), run);
        k += run;
        records += 1;
    }
    records
}

/// Microseconds from `from_ns` to `to_ns`, rounded (truncating took 0.5 µs off every sample, 1-2%
/// of a loopback latency), at least 1 (the histogram's lowest value).
fn latency_us(from_ns: u64, to_ns: u64) -> u64 {
    ((to_ns.saturating_sub(from_ns) + 500) / 1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A billion never-sent schedule points (1 s at 1e9/s) are recorded in runs: all counted,
    /// with the waits of a uniform backlog, at once (one by one took 70 s in review).
    #[test]
    fn never_sent_points_are_recorded_in_runs() {
        let mut histogram = crate::stats::new_histogram();
        let count = 1_000_000_000;
        let records = record_waits(&mut histogram, 0, 1, count, 1_000_000_000);
        assert!(records < 100_000, "{records} records");
        assert_eq!(histogram.len(), count);
        let p50 = histogram.value_at_quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() < 5_000.0, "{p50}");
        let p99 = histogram.value_at_quantile(0.99) as f64;
        assert!((p99 - 990_000.0).abs() < 10_000.0, "{p99}");
        assert!(histogram.max() <= 1_001_000, "{}", histogram.max());
    }
}
