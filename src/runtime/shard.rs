//! One shard's state: config copy, counters, Date cache, drain state, the registry of its connections; nothing here is `Send`.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use crate::config::Config;
use crate::config::limits::{
    HELD_PACE_WINDOW_READ, HELD_PACE_WINDOW_WRITE, HELD_SHED_BYTES_MIN, HELD_SHED_PACE_MAX,
    TIMEOUT_SWEEP_INTERVAL,
};
use crate::http::{DateCache, EncodedFields, FieldNames};
use crate::mesh::Mesh;
use crate::metrics::{ShardMetrics, ShardStats, add};
use crate::net::Waiting;
use crate::router::response::SERVER_MANAGED_HEADERS;
use crate::session::Sessions;
use crate::txn::service::Txn;

/// The request of the stats mesh: "send me your counters".
pub struct StatsRequest;

pub type StatsMesh = Mesh<StatsRequest, ShardStats>;

/// What the drain procedure needs to know about one open connection.
pub struct ConnEntry {
    pub fd: RawFd,
    /// True while the connection waits for the first byte of its next request.
    pub idle: Cell<bool>,
    /// While a read waits: when it times out, in `Shard::clock_ms` time; 0 when no read waits.
    pub read_deadline_ms: Cell<u64>,
    /// Set by the timeout sweep when the waiting read passed its deadline, and taken by that
    /// read, which ends with `TimedOut`.
    pub timed_out: Cell<bool>,
    /// The task of a read that waits through glommio (TLS, `--no-multishot-poll`), for the
    /// sweep to wake at its deadline; a read on the readiness ring is woken through its slot.
    /// The socket is not shut: a shut read side makes the lingering close after the 408
    /// impossible (found in review: the client's next bytes met a reset).
    pub read_waker: RefCell<Option<Waker>>,
    /// While the connection waits on a handler: when that wait times out (`--handler-timeout`),
    /// in `Shard::clock_ms` time; 0 when none waits. The sweep then sets `handler_timed_out`
    /// and wakes `handler_waker`.
    pub handler_deadline_ms: Cell<u64>,
    pub handler_timed_out: Cell<bool>,
    pub handler_waker: RefCell<Option<Waker>>,
    /// Whether the client hung up, as far as a handler's wait needs to know: the sweep suspects
    /// it from the connection's readiness slot and wakes the handler's task, which looks.
    pub hang_up: Cell<HangUp>,
    /// Set by the drain when it shut the read side of the connection, found idle: the
    /// connection must not then shut its write side too (`Conn::linger`), or the kernel aborts
    /// it when the client's next bytes arrive.
    pub drained: Cell<bool>,
    /// The connection's slot in the shard's readiness ring, if it waits there: the sweep and
    /// the drain wake it directly too, so a poll the kernel lost cannot keep it forever.
    pub ready_slot: Cell<Option<u32>>,
    /// While the connection waits on its client (a write it does not read, a body read whole
    /// that it does not send): the bytes it holds for it, counted in the shard's `held_bytes`;
    /// 0 when it does not wait so. Set at each wait of one write or one body (`Shard::hold`),
    /// 0 when that write or body ends (`Shard::release`).
    pub held_bytes: Cell<usize>,
    /// How fast its client goes while it holds HELD_SHED_BYTES_MIN or more: what its TCP
    /// connection moved (`net::tcp_bytes_moved`) over the last window (HELD_PACE_WINDOW_READ
    /// or _WRITE), in bytes a second (None until a window has passed since the wait began),
    /// and the readings of the window so far (`Shard::clock_ms`, bytes moved), one a second:
    /// one system call a second for each connection that holds that much.
    pub pace: Cell<Option<u64>>,
    pub pace_readings: RefCell<VecDeque<(u64, u64)>>,
    /// Which way it waits, which the pace counts.
    pub waiting: Cell<Waiting>,
    /// The task that waits, for the sweep to wake when it sheds the connection.
    pub held_waker: RefCell<Option<Waker>>,
    pub shed: Cell<Shed>,
    /// The connection ended (its guard dropped): a body that outlives it (moved into a task of
    /// the app) holds nothing in the shard's count.
    pub closed: Cell<bool>,
}

/// Whether the sweep shed a connection for `--max-held-bytes` (`Shard::shed_held`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Shed {
    #[default]
    No,
    /// Marked: the wait on its client fails when its task looks (`ConnEntry::shed_now`).
    Pending,
    /// Its wait failed; it closes, and is not shed (nor counted) again. What it does before
    /// it closes (a body's 503) is not failed for it.
    Done,
}

impl ConnEntry {
    /// Whether the wait on the client ends here because the connection was shed: true once.
    pub fn shed_now(&self) -> bool {
        let shed = self.shed.get() == Shed::Pending;
        if shed {
            self.shed.set(Shed::Done);
        }
        shed
    }
}

/// Whether a connection's client hung up (nginx's "client closed request", 499), for a handler
/// that waits: one that did has nobody to answer, and is dropped (`--ignore-client-abort`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum HangUp {
    #[default]
    Unknown,
    /// The connection's poll reported the peer's FIN or an error while a handler waited: its
    /// task looks (`ConnIo::handler_wait`).
    Suspected,
    /// The client stays: it half-closed after sending more (pipelined requests, a body), and
    /// waits for their answers; or the poll's report was not its FIN. Not suspected again.
    Stays,
    /// Gone: nothing unread before its FIN, or a reset.
    Gone,
}

/// What a shard's connections add to every response head besides Server, Date and the framing,
/// for plain or for HTTPS connections: encoded once, not per answer.
pub struct ResponseFields {
    /// `X-Shard` (`--expose-shard`) and, on HTTPS, `Strict-Transport-Security` (unless
    /// `--hsts-max-age 0`).
    pub lines: EncodedFields,
    /// The fields the server writes itself (`SERVER_MANAGED_HEADERS` and those in `lines`): a
    /// handler's field of such a name is dropped, and the server's copy is the only one.
    pub managed: FieldNames,
}

impl ResponseFields {
    fn new(config: &Config, index: usize, tls: bool) -> ResponseFields {
        let x_shard = config.expose_shard.then(|| index.to_string());
        let hsts = (tls && config.tls.hsts_max_age > 0)
            .then(|| format!("max-age={}", config.tls.hsts_max_age));
        let fields: Vec<(&'static str, &[u8])> = [
            x_shard.as_ref().map(|value| ("X-Shard", value.as_bytes())),
            hsts.as_ref()
                .map(|value| ("Strict-Transport-Security", value.as_bytes())),
        ]
        .into_iter()
        .flatten()
        .collect();
        ResponseFields {
            lines: EncodedFields::new(&fields),
            managed: FieldNames::new(
                SERVER_MANAGED_HEADERS
                    .into_iter()
                    .chain(fields.iter().map(|&(name, _)| name)),
            ),
        }
    }
}

pub struct Shard {
    pub index: usize,
    pub cpu: usize,
    pub config: Config,
    pub metrics: ShardMetrics,
    pub date: RefCell<DateCache>,
    pub stats_mesh: Rc<StatsMesh>,
    pub sessions: Rc<Sessions>,
    pub txn: Rc<Txn>,
    pub auth: Rc<crate::auth::service::Auth>,
    /// The fields the shard adds to every response head, plain (`[0]`) and HTTPS (`[1]`).
    pub response_fields: [ResponseFields; 2],
    /// One permit per open connection, `conns_max` in all, shared by every listener of the shard.
    pub conn_slots: Rc<glommio::sync::Semaphore>,
    /// One permit per TLS handshake step running (never held while a handshake waits on its
    /// client), `tls.handshakes_max` in all.
    pub tls_handshake_slots: Rc<glommio::sync::Semaphore>,
    /// Requests beyond the first that the shard's parallel pipelined batches may hold at once
    /// (half of `mesh_inflight_max`): bounds what batches keep in memory and leaves the other
    /// half of the mesh's in-flight bound to requests served one by one.
    pub parallel_slots: Cell<usize>,
    /// Where every connection of the shard reads (`server/conn.rs`), zeroed once; a read copies
    /// only what arrived into the connection's own buffer. Borrowed only inside one read call.
    pub read_scratch: RefCell<Box<[u8]>>,
    /// The body buffer of the next direct answer (`router::direct`), taken by the connection that
    /// answers and given back empty, so a direct answer allocates nothing.
    pub answer_buffer: RefCell<Vec<u8>>,
    /// The head of the last direct answer and what it was made from (`server/conn.rs`
    /// `encode_direct_head`): the next one made from the same is copied, not formatted again.
    pub direct_head: RefCell<crate::server::conn::DirectHead>,
    /// Where plain connections wait for bytes (net/ready.rs); None: through glommio's polls
    /// (`--no-multishot-poll`, or a kernel without what it needs).
    pub ready_ring: Option<Rc<crate::net::ready::ReadyRing>>,
    /// Milliseconds since the shard started, as of the last timeout sweep (coarse: refreshed
    /// every `TIMEOUT_SWEEP_INTERVAL`); read deadlines are in this time.
    clock_ms: Cell<u64>,
    started: std::time::Instant,
    draining: Cell<bool>,
    drain_waiters: RefCell<Vec<Waker>>,
    conns: RefCell<HashMap<u64, Rc<ConnEntry>>>,
    conn_id_next: Cell<u64>,
}

/// This shard's readiness ring with its driver task running, unless `--no-multishot-poll` or the
/// kernel cannot (then one line says so, and plain connections wait through glommio's polls).
fn start_ready_ring(index: usize, config: &Config) -> Option<Rc<crate::net::ready::ReadyRing>> {
    if !config.multishot_poll {
        return None;
    }
    match crate::net::ready::ReadyRing::new() {
        Ok(ring) => {
            glommio::spawn_local(ring.clone().drive()).detach();
            Some(ring)
        }
        Err(e) => {
            crate::log_line!(
                "percore: shard {index}: no io_uring readiness ring ({e}): plain connections wait through glommio's polls"
            );
            None
        }
    }
}

thread_local! {
    static CURRENT: OnceCell<Rc<Shard>> = const { OnceCell::new() };
}

/// The shard running on this thread. Panics off a shard thread (a programming error).
pub fn current() -> Rc<Shard> {
    CURRENT.with(|c| c.get().cloned()).expect(
        "percore's session, transaction and shard calls work on a shard thread only, in a \
             handler or a task it spawned with glommio::spawn_local (not on a thread the app \
             made, nor before main_with has started the shards)",
    )
}

/// The shard running on this thread, if it has finished starting.
pub fn try_current() -> Option<Rc<Shard>> {
    CURRENT.with(|c| c.get().cloned())
}

/// The index of the shard running on this thread, if any.
pub fn current_index() -> Option<usize> {
    CURRENT.with(|c| c.get().map(|s| s.index))
}

impl Shard {
    pub fn install(
        index: usize,
        cpu: usize,
        config: Config,
        stats_mesh: Rc<StatsMesh>,
        sessions: Rc<Sessions>,
        txn: Rc<Txn>,
        auth: Rc<crate::auth::service::Auth>,
    ) -> Rc<Shard> {
        let mut date = DateCache::new();
        date.refresh(SystemTime::now());
        let shard = Rc::new(Shard {
            index,
            cpu,
            metrics: ShardMetrics::default(),
            date: RefCell::new(date),
            sessions,
            txn,
            auth,
            response_fields: [false, true].map(|tls| ResponseFields::new(&config, index, tls)),
            conn_slots: Rc::new(glommio::sync::Semaphore::new(config.conns_max as u64)),
            tls_handshake_slots: Rc::new(glommio::sync::Semaphore::new(
                config.tls.handshakes_max as u64,
            )),
            parallel_slots: Cell::new(config.mesh_inflight_max / 2),
            read_scratch: RefCell::new(
                vec![0; crate::server::conn::READ_SCRATCH_BYTES].into_boxed_slice(),
            ),
            answer_buffer: RefCell::new(Vec::new()),
            direct_head: RefCell::new(Default::default()),
            ready_ring: start_ready_ring(index, &config),
            config,
            stats_mesh,
            clock_ms: Cell::new(0),
            started: std::time::Instant::now(),
            draining: Cell::new(false),
            drain_waiters: RefCell::new(Vec::new()),
            conns: RefCell::new(HashMap::new()),
            conn_id_next: Cell::new(0),
        });
        CURRENT.with(|c| assert!(c.set(shard.clone()).is_ok(), "one shard per thread"));
        shard
    }

    pub fn stats(&self) -> ShardStats {
        let mut stats = self.metrics.snapshot(self.index, self.cpu);
        stats.drained = u64::from(self.is_draining() && self.open_conns() == 0);
        stats.parks = super::membarrier::parks();
        stats.ready_polls_armed = self
            .ready_ring
            .as_ref()
            .map_or(0, |ring| ring.polls_armed());
        for mesh in [
            &self.stats_mesh.counters,
            self.sessions.mesh_counters(),
            self.auth.mesh_counters(),
            self.txn.mesh_counters(),
        ] {
            stats.mesh_calls_sent += mesh.calls_sent.get();
            stats.mesh_calls_served += mesh.calls_served.get();
            stats.mesh_overloaded += mesh.overloaded.get();
            stats.mesh_timeouts += mesh.timeouts.get();
            stats.mesh_expired += mesh.expired.get();
            stats.mesh_dropped += mesh.dropped.get();
        }
        let store = self.sessions.store.borrow();
        stats.sessions = store.len() as u64;
        stats.session_bytes = store.bytes() as u64;
        stats.sessions_created = store.counters.created;
        stats.sessions_destroyed = store.counters.destroyed;
        stats.session_evictions = store.counters.evictions;
        stats.session_refusals = store.counters.refusals;
        stats.session_expirations = store.counters.expirations;
        stats.session_remote_calls = self.sessions.remote_calls.get();
        drop(store);
        let node = self.txn.node.borrow();
        let partition = &node.partition;
        stats.kv_keys = partition.len() as u64;
        stats.kv_bytes = partition.data_bytes() as u64;
        stats.tx_local = node.counters.local;
        stats.tx_forwarded = node.counters.forwarded;
        stats.tx_forwarded_expired = node.counters.runs_expired;
        stats.tx_prepares_expired = node.counters.prepares_expired;
        stats.tx_cross_shard = node.counters.coordinated;
        stats.tx_cross_committed = node.counters.committed;
        stats.tx_cross_aborted = node.counters.aborted;
        stats.tx_timeouts = node.counters.timeouts;
        stats.tx_probe_committed = node.counters.probe_committed;
        stats.tx_probe_aborted = node.counters.probe_aborted;
        stats.tx_commits_local = partition.counters.commits_local;
        stats.tx_commits_prepared = partition.counters.commits_prepared;
        stats.tx_aborts_conflict = partition.counters.aborts_conflict;
        stats.tx_aborts_failed = partition.counters.aborts_failed;
        stats.tx_aborts_busy = partition.counters.aborts_busy;
        stats.tx_aborts_full = partition.counters.aborts_full;
        stats.tx_aborts_too_large =
            partition.counters.aborts_too_large + node.counters.aborted_too_large;
        let wal = self.txn.wal.counters.get();
        stats.wal_fsyncs = wal.fsyncs;
        stats.wal_records = wal.records;
        stats.wal_bytes = wal.bytes;
        stats.wal_segment_bytes = self.txn.wal.segment_bytes();
        stats.wal_failed = u64::from(self.txn.wal.failure().is_some());
        let txn = self.txn.counters.get();
        stats.checkpoints = txn.checkpoints;
        stats.tx_conflict_retries = txn.conflict_retries;
        stats.tx_conflicts_answered = txn.conflicts_answered;
        stats
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Registers an accepted connection; the guard unregisters it when the connection ends.
    pub fn register_conn(self: &Rc<Self>, fd: RawFd) -> ConnGuard {
        let id = self.conn_id_next.get();
        self.conn_id_next.set(id + 1);
        let entry = Rc::new(ConnEntry {
            fd,
            idle: Cell::new(false),
            read_deadline_ms: Cell::new(0),
            timed_out: Cell::new(false),
            read_waker: RefCell::new(None),
            handler_deadline_ms: Cell::new(0),
            handler_timed_out: Cell::new(false),
            handler_waker: RefCell::new(None),
            drained: Cell::new(false),
            ready_slot: Cell::new(None),
            hang_up: Cell::new(HangUp::Unknown),
            held_bytes: Cell::new(0),
            pace: Cell::new(None),
            pace_readings: RefCell::new(VecDeque::new()),
            waiting: Cell::new(Waiting::Write),
            held_waker: RefCell::new(None),
            shed: Cell::new(Shed::No),
            closed: Cell::new(false),
        });
        self.conns.borrow_mut().insert(id, entry.clone());
        add(&self.metrics.connections_accepted, 1);
        add(&self.metrics.connections_open, 1);
        ConnGuard {
            shard: self.clone(),
            id,
            entry,
        }
    }

    pub fn open_conns(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Starts the graceful drain: `/health` answers 503, accept loops stop, idle keep-alive
    /// connections are closed now and busy ones after their current response.
    pub fn begin_drain(&self) {
        if self.draining.replace(true) {
            return;
        }
        for waker in self.drain_waiters.take() {
            waker.wake();
        }
        for entry in self.conns.borrow().values() {
            if entry.idle.get() {
                // SAFETY: the fd belongs to a live connection (its guard removes it before close).
                // shutdown(2) wakes its pending read with EOF; the connection task then closes it
                // once the client holds what was sent (`Conn::wait_sent`). The read side only,
                // and the connection never shuts its write side after it: a socket shut both
                // ways is aborted by the kernel when the client's next bytes arrive (they may be
                // on their way: the connection only looked idle), and the abort throws away the
                // answers still in the send queue.
                unsafe { libc::shutdown(entry.fd, libc::SHUT_RD) };
                entry.drained.set(true);
                self.wake_ready_slot(entry);
            }
        }
    }

    /// Wakes a connection that waits on the readiness ring, whether or not its poll fires.
    fn wake_ready_slot(&self, entry: &ConnEntry) {
        if let (Some(ring), Some(slot)) = (&self.ready_ring, entry.ready_slot.get()) {
            ring.wake(slot);
        }
    }

    /// Resolves once the drain has begun.
    pub async fn drain_started(&self) {
        std::future::poll_fn(|cx: &mut Context<'_>| {
            if self.draining.get() {
                Poll::Ready(())
            } else {
                // Waiters are few (accept loops, the shard's main task); a re-poll must not add twice.
                let mut waiters = self.drain_waiters.borrow_mut();
                if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    waiters.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }

    /// The deadline of a read that starts waiting now with `timeout_ms`: never early (the
    /// clock may be one sweep old), at most two sweeps late.
    pub fn deadline_ms(&self, timeout_ms: u64) -> u64 {
        self.clock_ms.get() + timeout_ms + TIMEOUT_SWEEP_INTERVAL.as_millis() as u64
    }

    /// Ends every read that waited past its deadline: marks it timed out and wakes it (through
    /// its ring slot, or the task it left), and the read ends with `TimedOut`. Called every
    /// `TIMEOUT_SWEEP_INTERVAL`; O(open connections).
    pub fn sweep_timeouts(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.clock_ms.set(now);
        for entry in self.conns.borrow().values() {
            self.read_pace(entry, now);
            let deadline = entry.read_deadline_ms.get();
            if deadline != 0 && deadline <= now && !entry.timed_out.replace(true) {
                self.wake_ready_slot(entry);
                if let Some(waker) = entry.read_waker.take() {
                    waker.wake();
                }
            }
            let handler = entry.handler_deadline_ms.get();
            if handler == 0 {
                continue;
            }
            let wake = if handler <= now {
                !entry.handler_timed_out.replace(true)
            } else {
                self.may_have_hung_up(entry)
            };
            if wake && let Some(waker) = entry.handler_waker.take() {
                waker.wake();
            }
        }
        self.shed_held();
    }

    /// The connection of `entry` waits on its client and holds `bytes` for it
    /// (`ConnEntry::held_bytes`); the first such call since the last `release` starts its
    /// client's pace anew (the sweep reads it).
    pub fn hold(&self, entry: &ConnEntry, bytes: usize, waiting: Waiting, cx: &Context<'_>) {
        if entry.closed.get() {
            return;
        }
        let old = entry.held_bytes.replace(bytes);
        if old == 0 || entry.waiting.get() != waiting {
            entry.pace.set(None);
            entry.pace_readings.borrow_mut().clear();
            entry.waiting.set(waiting);
        }
        let held = &self.metrics.held_bytes;
        held.set(held.get() - old as u64 + bytes as u64);
        let mut waker = entry.held_waker.borrow_mut();
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
    }

    /// The write or body of `entry` that waited on its client ended.
    pub fn release(&self, entry: &ConnEntry) {
        // Called after every write: a load, and no store, when nothing is held.
        let old = entry.held_bytes.get();
        if old != 0 {
            entry.held_bytes.set(0);
            let held = &self.metrics.held_bytes;
            held.set(held.get() - old as u64);
            entry.held_waker.take();
        }
    }

    /// Refreshes the pace of `entry`'s client (`ConnEntry::pace`) if it holds enough for it to
    /// matter and a second has passed since the last reading.
    fn read_pace(&self, entry: &ConnEntry, now: u64) {
        if entry.held_bytes.get() < HELD_SHED_BYTES_MIN {
            return;
        }
        let mut readings = entry.pace_readings.borrow_mut();
        if readings
            .back()
            .is_some_and(|&(at, _)| now.saturating_sub(at) < 1000)
        {
            return;
        }
        let waiting = entry.waiting.get();
        let moved = crate::net::tcp_bytes_moved(entry.fd, waiting);
        readings.push_back((now, moved));
        let window = match waiting {
            Waiting::Read => HELD_PACE_WINDOW_READ,
            Waiting::Write => HELD_PACE_WINDOW_WRITE,
        };
        let start = now.saturating_sub(window.as_millis() as u64);
        // Keep the newest reading at least a window old, and none before it.
        while readings.len() > 1 && readings[1].0 <= start {
            readings.pop_front();
        }
        let &(first_at, first_moved) = readings.front().expect("just pushed");
        if first_at <= start && first_at < now {
            let pace = moved.saturating_sub(first_moved) * 1000 / (now - first_at);
            entry.pace.set(Some(pace));
        }
    }

    /// Past `--max-held-bytes`: closes the connections whose clients are slowest, until what
    /// the others hold is within the bound. Only a slow one is shed: it holds
    /// HELD_SHED_BYTES_MIN or more, and its client's pace over the last window (a client that
    /// stopped: 0; one that drips a byte a second: 1) is under HELD_SHED_PACE_MAX:
    /// faster clients are being served, and may keep the shard past the bound. Each is marked
    /// and woken; its waiting read or write fails. Those marked before still count until they
    /// end, and bring the excess down. O(open connections), and only while past the bound.
    fn shed_held(&self) {
        let held = self.metrics.held_bytes.get() as usize;
        let mut over = held.saturating_sub(self.config.held_bytes_max);
        if over == 0 {
            return;
        }
        let conns = self.conns.borrow();
        let mut slow = Vec::new();
        for entry in conns.values().filter(|e| e.held_bytes.get() > 0) {
            match entry.shed.get() {
                Shed::Pending => over = over.saturating_sub(entry.held_bytes.get()),
                Shed::Done => {}
                Shed::No => {
                    if let Some(pace) = entry.pace.get()
                        && pace < HELD_SHED_PACE_MAX
                        && entry.held_bytes.get() >= HELD_SHED_BYTES_MIN
                    {
                        slow.push((pace, entry));
                    }
                }
            }
        }
        slow.sort_unstable_by_key(|&(pace, _)| pace);
        for (_, entry) in slow {
            if over == 0 {
                break;
            }
            over = over.saturating_sub(entry.held_bytes.get());
            entry.shed.set(Shed::Pending);
            add(&self.metrics.conns_shed, 1);
            self.wake_ready_slot(entry);
            if let Some(waker) = entry.held_waker.take() {
                waker.wake();
            }
        }
    }

    /// Whether the client of `entry`, whose handler waits, may have hung up: its poll on the
    /// readiness ring reported its FIN or an error, which the connection's task then looks
    /// into. Plain connections on the ring only: a TLS client's close_notify comes before its
    /// FIN, and glommio's reads (`--no-multishot-poll`) arm no poll while a handler runs.
    /// Not a connection the drain shut for reading: its own shutdown reads as the FIN, and the
    /// request it had queued is still answered.
    fn may_have_hung_up(&self, entry: &ConnEntry) -> bool {
        if self.config.ignore_client_abort
            || entry.hang_up.get() != HangUp::Unknown
            || entry.drained.get()
        {
            return false;
        }
        let (Some(ring), Some(slot)) = (&self.ready_ring, entry.ready_slot.get()) else {
            return false;
        };
        let suspected = ring.peer_ended(slot);
        if suspected {
            entry.hang_up.set(HangUp::Suspected);
        }
        suspected
    }

    /// Refreshes the cached Date header; called once a second by the shard's clock task.
    pub fn tick(&self) {
        self.date.borrow_mut().refresh(SystemTime::now());
    }
}

/// Keeps a connection in its shard's registry and counts it open while alive.
pub struct ConnGuard {
    shard: Rc<Shard>,
    id: u64,
    pub entry: Rc<ConnEntry>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shard.release(&self.entry);
        self.entry.closed.set(true);
        self.shard.conns.borrow_mut().remove(&self.id);
        let open = &self.shard.metrics.connections_open;
        open.set(open.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::ResponseFields;
    use crate::config::{Args, Config};

    fn fields(flags: &[&str], tls: bool) -> (String, ResponseFields) {
        let args = Args::try_parse_from([&["percore"], flags].concat()).unwrap();
        let fields = ResponseFields::new(&Config::from_args(args).unwrap(), 3, tls);
        (
            String::from_utf8(fields.lines.as_bytes().to_vec()).unwrap(),
            fields,
        )
    }

    /// A shard's own fields are the ones it writes and the ones a handler may not write.
    #[test]
    fn a_shards_own_fields_follow_its_flags_and_are_the_only_copies() {
        let (lines, own) = fields(&[], false);
        assert_eq!(lines, "");
        let (lines, own_tls) = fields(&[], true);
        assert_eq!(lines, "Strict-Transport-Security: max-age=31536000\r\n");
        let (lines, exposed) = fields(&["--expose-shard", "--hsts-max-age", "60"], false);
        assert_eq!(lines, "X-Shard: 3\r\n");
        let (lines, exposed_tls) = fields(&["--expose-shard", "--hsts-max-age", "60"], true);
        assert_eq!(
            lines,
            "X-Shard: 3\r\nStrict-Transport-Security: max-age=60\r\n"
        );
        let (lines, no_hsts) = fields(&["--hsts-max-age", "0"], true);
        assert_eq!(lines, "");
        for set in [&own, &own_tls, &exposed, &exposed_tls, &no_hsts] {
            for name in [
                "Content-Length",
                "transfer-encoding",
                "Connection",
                "date",
                "SERVER",
            ] {
                assert!(set.managed.contains(name), "{name}");
            }
            assert!(!set.managed.contains("Content-Type"));
        }
        let managed = |set: &ResponseFields| {
            (
                set.managed.contains("x-shard"),
                set.managed.contains("strict-transport-security"),
            )
        };
        assert_eq!(managed(&own), (false, false));
        assert_eq!(managed(&own_tls), (false, true));
        assert_eq!(managed(&exposed), (true, false));
        assert_eq!(managed(&exposed_tls), (true, true));
        assert_eq!(managed(&no_hsts), (false, false));
    }
}
