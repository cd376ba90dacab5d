//! Per-shard counters (plain `Cell`s, never shared) and the `Send` snapshot that crosses the mesh for `/stats`.

use std::cell::Cell;
use std::time::Duration;

use serde::Serialize;

/// The counters of one shard. Only its own shard touches them.
#[derive(Default, Debug)]
pub struct ShardMetrics {
    pub connections_open: Cell<u64>,
    pub connections_accepted: Cell<u64>,
    pub requests: Cell<u64>,
    pub bytes_read: Cell<u64>,
    pub bytes_written: Cell<u64>,
    pub status_classes: [Cell<u64>; 5],
    pub conns_max_reached: Cell<u64>,
    pub conns_max_wait_us: Cell<u64>,
    pub timeouts_header: Cell<u64>,
    pub timeouts_idle: Cell<u64>,
    pub timeouts_body: Cell<u64>,
    pub timeouts_write: Cell<u64>,
    pub protocol_errors: Cell<u64>,
}

pub fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().wrapping_add(n));
}

impl ShardMetrics {
    pub fn count_status(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        add(&self.status_classes[class], 1);
    }

    pub fn count_wait_at_bound(&self, waited: Duration) {
        add(&self.conns_max_reached, 1);
        add(&self.conns_max_wait_us, waited.as_micros() as u64);
    }

    pub fn snapshot(&self, shard: usize, cpu: usize) -> ShardStats {
        let classes = &self.status_classes;
        ShardStats {
            shard,
            cpu,
            connections_open: self.connections_open.get(),
            connections_accepted: self.connections_accepted.get(),
            requests: self.requests.get(),
            bytes_read: self.bytes_read.get(),
            bytes_written: self.bytes_written.get(),
            status_1xx: classes[0].get(),
            status_2xx: classes[1].get(),
            status_3xx: classes[2].get(),
            status_4xx: classes[3].get(),
            status_5xx: classes[4].get(),
            conns_max_reached: self.conns_max_reached.get(),
            conns_max_wait_us: self.conns_max_wait_us.get(),
            timeouts_header: self.timeouts_header.get(),
            timeouts_idle: self.timeouts_idle.get(),
            timeouts_body: self.timeouts_body.get(),
            timeouts_write: self.timeouts_write.get(),
            protocol_errors: self.protocol_errors.get(),
            mesh_calls_sent: 0,
            mesh_calls_served: 0,
            mesh_overloaded: 0,
            mesh_timeouts: 0,
            sessions: 0,
            session_bytes: 0,
            sessions_created: 0,
            sessions_destroyed: 0,
            session_evictions: 0,
            session_expirations: 0,
            session_remote_calls: 0,
        }
    }
}

/// One shard's counters at one moment: what `/stats` reports per shard.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: usize,
    pub cpu: usize,
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub requests: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub status_1xx: u64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub conns_max_reached: u64,
    pub conns_max_wait_us: u64,
    pub timeouts_header: u64,
    pub timeouts_idle: u64,
    pub timeouts_body: u64,
    pub timeouts_write: u64,
    pub protocol_errors: u64,
    pub mesh_calls_sent: u64,
    pub mesh_calls_served: u64,
    pub mesh_overloaded: u64,
    pub mesh_timeouts: u64,
    /// Live sessions this shard owns, and the bytes of their data.
    pub sessions: u64,
    pub session_bytes: u64,
    pub sessions_created: u64,
    pub sessions_destroyed: u64,
    pub session_evictions: u64,
    pub session_expirations: u64,
    /// Session operations this shard sent to the owner shard over the mesh.
    pub session_remote_calls: u64,
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
            total.connections_open += s.connections_open;
            total.connections_accepted += s.connections_accepted;
            total.requests += s.requests;
            total.bytes_read += s.bytes_read;
            total.bytes_written += s.bytes_written;
            total.status_1xx += s.status_1xx;
            total.status_2xx += s.status_2xx;
            total.status_3xx += s.status_3xx;
            total.status_4xx += s.status_4xx;
            total.status_5xx += s.status_5xx;
            total.conns_max_reached += s.conns_max_reached;
            total.conns_max_wait_us += s.conns_max_wait_us;
            total.timeouts_header += s.timeouts_header;
            total.timeouts_idle += s.timeouts_idle;
            total.timeouts_body += s.timeouts_body;
            total.timeouts_write += s.timeouts_write;
            total.protocol_errors += s.protocol_errors;
            total.mesh_calls_sent += s.mesh_calls_sent;
            total.mesh_calls_served += s.mesh_calls_served;
            total.mesh_overloaded += s.mesh_overloaded;
            total.mesh_timeouts += s.mesh_timeouts;
            total.sessions += s.sessions;
            total.session_bytes += s.session_bytes;
            total.sessions_created += s.sessions_created;
            total.sessions_destroyed += s.sessions_destroyed;
            total.session_evictions += s.session_evictions;
            total.session_expirations += s.session_expirations;
            total.session_remote_calls += s.session_remote_calls;
            shards.push(s);
        }
        total.shard = shard_count;
        total.cpu = 0;
        Stats {
            shard_count,
            shards_missing,
            total,
            shards,
        }
    }
}
