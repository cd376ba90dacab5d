//! Per-shard counters (plain `Cell`s, never shared) and the `Send` snapshot that crosses the mesh for `/stats`.

use std::cell::Cell;
use std::time::Instant;

use serde::Serialize;

/// The counters of one shard. Only its own shard touches them.
#[derive(Default, Debug)]
pub struct ShardMetrics {
    pub connections_open: Cell<u64>,
    pub connections_accepted: Cell<u64>,
    pub connections_multishot_poll: Cell<u64>,
    pub requests: Cell<u64>,
    pub requests_parallel: Cell<u64>,
    pub pipeline_yields: Cell<u64>,
    pub bytes_read: Cell<u64>,
    pub bytes_written: Cell<u64>,
    pub status_classes: [Cell<u64>; 5],
    /// Times the shard reached `--max-conns` with a connection waiting for a slot.
    pub conns_max_reached: Cell<u64>,
    /// Time spent so, ended waits only (`snapshot` adds the one under way).
    pub conns_max_wait_us: Cell<u64>,
    /// Accepted connections waiting for a slot (one per listener at most), and since when
    /// there has been one: time at the bound is counted once however many wait.
    conns_waiting: Cell<u32>,
    conns_waiting_since: Cell<Option<Instant>>,
    pub timeouts_header: Cell<u64>,
    pub timeouts_idle: Cell<u64>,
    pub timeouts_body: Cell<u64>,
    pub timeouts_write: Cell<u64>,
    pub timeouts_handler: Cell<u64>,
    pub handler_hangups: Cell<u64>,
    pub held_bytes: Cell<u64>,
    pub conns_shed: Cell<u64>,
    pub protocol_errors: Cell<u64>,
    pub tls_handshakes: Cell<u64>,
    pub tls_handshakes_open: Cell<u64>,
    pub tls_handshake_failures: Cell<u64>,
    pub tls_handshake_timeouts: Cell<u64>,
    pub tls_handshake_waits: Cell<u64>,
    pub password_checks_ok: Cell<u64>,
    pub password_checks_failed: Cell<u64>,
    pub password_checks_blocked: Cell<u64>,
    pub password_checks_busy: Cell<u64>,
    pub password_checks_busy_in_flight: Cell<u64>,
    pub password_hashes_running: Cell<u64>,
    pub basic_cache_hits: Cell<u64>,
    pub access_unauthenticated: Cell<u64>,
    pub access_forbidden: Cell<u64>,
    pub csrf_rejected: Cell<u64>,
}

pub fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().wrapping_add(n));
}

/// See `ShardMetrics::wait_at_bound`.
pub struct WaitAtBound<'a>(&'a ShardMetrics);

impl Drop for WaitAtBound<'_> {
    fn drop(&mut self) {
        let metrics = self.0;
        metrics.conns_waiting.set(metrics.conns_waiting.get() - 1);
        if metrics.conns_waiting.get() == 0
            && let Some(since) = metrics.conns_waiting_since.take()
        {
            add(
                &metrics.conns_max_wait_us,
                since.elapsed().as_micros() as u64,
            );
        }
    }
}

impl ShardMetrics {
    pub fn count_status(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        add(&self.status_classes[class], 1);
    }

    /// Counts a connection waiting for a slot at `--max-conns` until the guard drops.
    pub fn wait_at_bound(&self) -> WaitAtBound<'_> {
        if self.conns_waiting.get() == 0 {
            add(&self.conns_max_reached, 1);
            self.conns_waiting_since.set(Some(Instant::now()));
        }
        self.conns_waiting.set(self.conns_waiting.get() + 1);
        WaitAtBound(self)
    }

    fn conns_max_wait_us(&self) -> u64 {
        let under_way = self
            .conns_waiting_since
            .get()
            .map_or(0, |since| since.elapsed().as_micros() as u64);
        self.conns_max_wait_us.get().wrapping_add(under_way)
    }

    pub fn snapshot(&self, shard: usize, cpu: usize) -> ShardStats {
        let classes = &self.status_classes;
        ShardStats {
            shard: Some(shard),
            cpu: Some(cpu),
            connections_open: self.connections_open.get(),
            connections_accepted: self.connections_accepted.get(),
            connections_multishot_poll: self.connections_multishot_poll.get(),
            requests: self.requests.get(),
            requests_parallel: self.requests_parallel.get(),
            pipeline_yields: self.pipeline_yields.get(),
            bytes_read: self.bytes_read.get(),
            bytes_written: self.bytes_written.get(),
            status_1xx: classes[0].get(),
            status_2xx: classes[1].get(),
            status_3xx: classes[2].get(),
            status_4xx: classes[3].get(),
            status_5xx: classes[4].get(),
            conns_max_reached: self.conns_max_reached.get(),
            conns_max_wait_us: self.conns_max_wait_us(),
            timeouts_header: self.timeouts_header.get(),
            timeouts_idle: self.timeouts_idle.get(),
            timeouts_body: self.timeouts_body.get(),
            timeouts_write: self.timeouts_write.get(),
            timeouts_handler: self.timeouts_handler.get(),
            handler_hangups: self.handler_hangups.get(),
            held_bytes: self.held_bytes.get(),
            conns_shed: self.conns_shed.get(),
            protocol_errors: self.protocol_errors.get(),
            tls_handshakes: self.tls_handshakes.get(),
            tls_handshakes_open: self.tls_handshakes_open.get(),
            tls_handshake_failures: self.tls_handshake_failures.get(),
            tls_handshake_timeouts: self.tls_handshake_timeouts.get(),
            tls_handshake_waits: self.tls_handshake_waits.get(),
            password_checks_ok: self.password_checks_ok.get(),
            password_checks_failed: self.password_checks_failed.get(),
            password_checks_blocked: self.password_checks_blocked.get(),
            password_checks_busy: self.password_checks_busy.get(),
            password_checks_busy_in_flight: self.password_checks_busy_in_flight.get(),
            password_hashes_running: self.password_hashes_running.get(),
            basic_cache_hits: self.basic_cache_hits.get(),
            access_unauthenticated: self.access_unauthenticated.get(),
            access_forbidden: self.access_forbidden.get(),
            csrf_rejected: self.csrf_rejected.get(),
            ..ShardStats::default()
        }
    }
}

/// Declares `ShardStats` with its counters listed once; `add` sums two of them.
macro_rules! shard_stats {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// One shard's counters at one moment: what `/stats` reports per shard.
        #[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
        pub struct ShardStats {
            /// The shard's index and CPU; None in the total, where neither means anything
            /// (found in review: the total said `"shard": <count>, "cpu": 0`).
            #[serde(skip_serializing_if = "Option::is_none")]
            pub shard: Option<usize>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub cpu: Option<usize>,
            $($(#[$doc])* pub $name: u64,)*
        }

        impl ShardStats {
            fn add(&mut self, other: &ShardStats) {
                $(self.$name += other.$name;)*
            }
        }
    };
}

shard_stats! {
    /// Connections being served, and served so far; a TLS connection counts from the end of its
    /// handshake (`tls_handshakes_open` counts those before it; each holds a `--max-conns` slot).
    connections_open,
    connections_accepted,
    /// Plain connections that waited for bytes on the shard's readiness ring (one multishot
    /// poll each, net/ready.rs) rather than through glommio's one-shot polls.
    connections_multishot_poll,
    /// Multishot polls the readiness ring queued: one per such connection, plus a re-arm for
    /// each poll the kernel ended (a full completion queue); never one per request.
    ready_polls_armed,
    /// Request heads parsed and served. A head refused before it was whole is not a request:
    /// a 400, 414, 431 or 505 counts in `protocol_errors`, a 408 for a head that timed out in
    /// `timeouts_header`, and each in its status class.
    requests,
    /// Pipelined GET/HEAD requests served at once with others of their connection (--pipeline-parallel).
    requests_parallel,
    /// Times a connection answered REQUESTS_PER_TURN_MAX (256) pipelined requests without
    /// waiting for bytes and gave the shard's other connections a turn before reading more.
    pipeline_yields,
    bytes_read,
    bytes_written,
    status_1xx,
    status_2xx,
    status_3xx,
    status_4xx,
    status_5xx,
    /// Times the shard stopped accepting at `--max-conns`, and the microseconds it spent there.
    conns_max_reached,
    conns_max_wait_us,
    /// Connections ended by a timeout: a request head not whole in `--header-timeout` (408; a
    /// new connection that sent nothing, closed without an answer), a keep-alive connection
    /// idle for `--keepalive-timeout`, a body stalled for `--body-timeout`, a client that stopped
    /// reading for `--write-timeout`, a handler that did not answer in `--handler-timeout` (503).
    timeouts_header,
    timeouts_idle,
    timeouts_body,
    timeouts_write,
    timeouts_handler,
    /// Connections whose client hung up while a handler waited, which was dropped unanswered
    /// (nginx's 499; plain connections on the readiness ring; `--ignore-client-abort`).
    handler_hangups,
    /// Bytes the shard holds for clients that keep it waiting (answers they do not read, bodies
    /// read whole that they do not send), and connections closed because that passed
    /// `--max-held-bytes` and their clients were the slowest (a body read so answers 503).
    held_bytes,
    conns_shed,
    /// Requests and bodies refused as malformed or past a bound (the 4xx/5xx that close).
    protocol_errors,
    /// TLS handshakes completed, failed (bad client hello, no common version or ALPN), cut off
    /// by the handshake timeout, and made to wait at the concurrent-handshake bound.
    tls_handshakes,
    /// TLS handshakes under way (found in review: 2000 stalled ClientHellos held 2000 sockets
    /// while `connections_open` said 1).
    tls_handshakes_open,
    tls_handshake_failures,
    tls_handshake_timeouts,
    tls_handshake_waits,
    /// Password checks (logins and uncached Basic) by outcome: right, wrong (user or password),
    /// refused by the brute-force counters (429), and busy (503 with `Retry-After`: a full hash
    /// queue, attempts in flight at the brute-force bound, a counter owner that did not answer,
    /// or users reloaded during the check). Of the busy ones, those refused for attempts in
    /// flight: many at once for one user name or address, normal for parallel logins of one
    /// client, where a full hash queue asks for more `--hash-concurrency` or `--hash-queue-max`.
    password_checks_ok,
    password_checks_failed,
    password_checks_blocked,
    password_checks_busy,
    password_checks_busy_in_flight,
    /// Password hashes running now, each within one of `--hash-concurrency`'s turns; a hash
    /// runs to its end (holding its turn) after its client hangs up.
    password_hashes_running,
    /// Basic requests answered from the shard's cache of verified credentials.
    basic_cache_hits,
    /// Requests the access rules refused: no identity (401), identity without the role (403);
    /// and session-authenticated requests refused by the CSRF check.
    access_unauthenticated,
    access_forbidden,
    csrf_rejected,
    /// Times the shard's executor found no work and got ready to sleep (x86-64 only; see
    /// runtime/membarrier.rs): parks per request says whether a shard sleeps between requests.
    parks,
    /// Cross-shard messages over every mesh (stats, session, auth, transaction; found in
    /// review: only the stats mesh's were counted): sent and served (one-way messages
    /// included), refused at an in-flight bound, calls that timed out, requests refused
    /// unserved for their expiry (read late here, or never sent from this shard's backlog),
    /// and messages dropped while waiting for a peer: one-way messages past `mesh::BACKLOG_MAX`
    /// and replies past their caller's deadline.
    mesh_calls_sent,
    mesh_calls_served,
    mesh_overloaded,
    mesh_timeouts,
    mesh_expired,
    mesh_dropped,
    /// 1 once the shard is draining and has no connection left (it then still answers the
    /// other shards until each is drained too); the total counts the drained shards.
    drained,
    /// Live sessions this shard owns, and the bytes of their data.
    sessions,
    session_bytes,
    sessions_created,
    sessions_destroyed,
    /// Sessions evicted to make room, at `--max-sessions` or `--max-session-store-bytes`.
    session_evictions,
    /// New sessions refused at `--max-sessions` because every session held a logged-in user,
    /// and writes refused at `--max-session-store-bytes` because nothing could be evicted.
    session_refusals,
    session_expirations,
    /// Session operations this shard sent to the owner shard over the mesh.
    session_remote_calls,
    /// Keys and value bytes of this shard's key-value partition, as its bound counts them
    /// (each key `ENTRY_OVERHEAD_BYTES`, 256, more: what it costs in memory besides them).
    kv_keys,
    kv_bytes,
    /// Transactions received here: run locally, forwarded to one owner, coordinated across shards.
    tx_local,
    tx_forwarded,
    tx_cross_shard,
    /// Forwarded transactions this shard owns that arrived after their coordinator's deadline
    /// and were refused unrun (503 to their client, if it still waits).
    tx_forwarded_expired,
    /// Parts of cross-shard transactions (prepares) that arrived here after their
    /// coordinator's deadline and were refused unprepared (the transaction aborts: 503).
    tx_prepares_expired,
    /// Outcomes of the cross-shard transactions this shard coordinated.
    tx_cross_committed,
    tx_cross_aborted,
    tx_timeouts,
    /// Staged cross-shard transactions a restart found undecided, resolved by asking the
    /// participants whether they all prepared.
    tx_probe_committed,
    tx_probe_aborted,
    /// Commits applied to this partition: single-shard, and prepared parts of cross-shard ones.
    tx_commits_local,
    tx_commits_prepared,
    /// Aborts on this partition by reason.
    tx_aborts_conflict,
    tx_aborts_failed,
    tx_aborts_busy,
    tx_aborts_full,
    /// Transactions whose reads passed the 4 MiB bound (413 `too_large`): on this partition's
    /// part, or over all parts when this shard coordinated.
    tx_aborts_too_large,
    /// Transactions this shard's clients sent that met a lock and were tried again
    /// (`--tx-retry-ms`), and those still meeting one when the time was up (answered 409).
    tx_conflict_retries,
    tx_conflicts_answered,
    /// Write-ahead log: fdatasyncs, records, bytes, bytes in the current segment, checkpoints.
    wal_fsyncs,
    wal_records,
    wal_bytes,
    wal_segment_bytes,
    /// 1 once this shard's write-ahead log failed (a full disk, an IO error; the server's log
    /// says why): what needs it answers 503 `log_failed` until a restart, and `/health` is 503.
    /// The total counts such shards.
    wal_failed,
    checkpoints,
}

/// The whole server: per-shard snapshots and their sum.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub shard_count: usize,
    /// Shards that did not answer before the mesh deadline (their counters are missing from `total`).
    pub shards_missing: Vec<usize>,
    pub total: ShardStats,
    pub shards: Vec<ShardStats>,
}

impl Stats {
    pub fn merge(shard_count: usize, replies: Vec<Option<ShardStats>>) -> Stats {
        let mut total = ShardStats::default();
        let mut shards = Vec::with_capacity(replies.len());
        let mut shards_missing = Vec::new();
        for (index, reply) in replies.into_iter().enumerate() {
            let Some(s) = reply else {
                shards_missing.push(index);
                continue;
            };
            total.add(&s);
            shards.push(s);
        }
        Stats {
            shard_count,
            shards_missing,
            total,
            shards,
        }
    }
}
