//! Transactions over the partitioned key-value store, as pure code: ops and their JSON, the WAL record format, one shard's partition, and two-phase commit as state machines, which never do IO, spawn or read a clock (`reshard`, the offline tool, does IO).
//!
//! The IO layer (glommio DMA log files, group commit, the mesh, HTTP routes, start-up recovery)
//! drives these pieces: it feeds `twopc::Event`s into a `twopc::Node` with the current time and
//! carries out the `twopc::Action`s it gets back.
//!
//! Invariants (what must not happen):
//! - a client hears "committed" before the commit is durable (the commit record on a single-shard
//!   transaction; on a multi-shard one, every participant's prepare record and the coordinator's
//!   staging record: the parallel commit point, see `twopc`);
//! - a client hears any result before the log holds every record its reads depend on (every reply
//!   waits for a `Persist`, read-only ones for a flush barrier);
//! - a participant votes yes before its prepare record is durable;
//! - a coordinator forgets a commit decision before every participant acknowledged a durable commit;
//! - a transaction waits on a lock: conflicts abort at once (409), so there are no deadlocks;
//! - a transaction id is reused: ids carry the coordinator's epoch, made durable before it coordinates.

pub mod json;
pub mod op;
pub mod partition;
pub mod record;
pub mod reshard;
pub mod routes;
pub mod service;
pub mod twopc;

#[cfg(test)]
mod sim;

/// Longest key. Same as the brief's 1 KiB; keys are also URL path segments.
pub const KEY_BYTES_MAX_DEFAULT: usize = 1024;
/// Largest value. Matches `BODY_BYTES_MAX_DEFAULT` (nginx's client_max_body_size).
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Most ops in one transaction: each op is a lock, and a transaction holds all its locks at once.
pub const OPS_MAX_DEFAULT: usize = 64;
/// Keys plus values written by one transaction; bounds one log record.
pub const TXN_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;
/// Prepared (locked, undecided) transactions one shard holds at once; more vote "busy" (503).
pub const PREPARED_MAX_DEFAULT: usize = 4096;
/// Multi-shard transactions one shard coordinates at once; more answer "busy" (503).
pub const COORDINATED_MAX_DEFAULT: usize = 1024;
/// Keys plus values one partition holds, each entry counted `ENTRY_OVERHEAD_BYTES` more; a write
/// past it answers 507 (`--max-kv-bytes`). A log replayed past a lowered bound is kept whole.
pub const PARTITION_BYTES_MAX_DEFAULT: usize = 1024 * 1024 * 1024;
/// What an entry costs in memory besides its key and value: its share of the map's nodes, two
/// `Bytes` handles and their allocations, version and lock fields. The partition bound counts
/// it, so that it bounds memory, not only data: counting keys and values alone, tiny keys took
/// 25-36 times their bytes (a soak review: 222-251 bytes of RSS per key, ~450 after a replay),
/// and 1 GiB of them about 27 GiB.
pub const ENTRY_OVERHEAD_BYTES: usize = 256;
/// A coordinator waits this long for all votes (or a forwarded single-shard result), then aborts.
pub const PREPARE_TIMEOUT_MS_DEFAULT: u64 = 2_000;
/// A prepared participant asks its coordinator for the outcome after this long, and again every
/// interval until it gets one; a coordinator resends commit decisions not yet acknowledged as often.
pub const RESOLVE_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// Largest record payload the decoder accepts: a transaction's bytes plus per-key framing.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 2 * TXN_BYTES_MAX_DEFAULT;
/// Snapshot entries per snapshot record (a record stays far below the payload bound).
pub const SNAPSHOT_ENTRIES_BYTES_MAX: usize = 2 * 1024 * 1024;

const _: () = assert!(KEY_BYTES_MAX_DEFAULT + VALUE_BYTES_MAX_DEFAULT <= TXN_BYTES_MAX_DEFAULT);
const _: () =
    assert!(TXN_BYTES_MAX_DEFAULT + OPS_MAX_DEFAULT * 16 + 64 <= RECORD_PAYLOAD_BYTES_MAX);
const _: () = assert!(
    SNAPSHOT_ENTRIES_BYTES_MAX + KEY_BYTES_MAX_DEFAULT + VALUE_BYTES_MAX_DEFAULT + 64
        <= RECORD_PAYLOAD_BYTES_MAX
);
const _: () = assert!(RESOLVE_INTERVAL_MS_DEFAULT <= PREPARE_TIMEOUT_MS_DEFAULT);

/// Every bound of the transaction subsystem (the defaults above belong in `config/limits.rs`).
#[derive(Clone, Copy, Debug)]
pub struct TxnLimits {
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    pub ops_max: usize,
    pub txn_bytes_max: usize,
    pub prepared_max: usize,
    pub coordinated_max: usize,
    pub partition_bytes_max: usize,
    pub prepare_timeout_ms: u64,
    pub resolve_interval_ms: u64,
}

impl Default for TxnLimits {
    fn default() -> TxnLimits {
        TxnLimits {
            key_bytes_max: KEY_BYTES_MAX_DEFAULT,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            ops_max: OPS_MAX_DEFAULT,
            txn_bytes_max: TXN_BYTES_MAX_DEFAULT,
            prepared_max: PREPARED_MAX_DEFAULT,
            coordinated_max: COORDINATED_MAX_DEFAULT,
            partition_bytes_max: PARTITION_BYTES_MAX_DEFAULT,
            prepare_timeout_ms: PREPARE_TIMEOUT_MS_DEFAULT,
            resolve_interval_ms: RESOLVE_INTERVAL_MS_DEFAULT,
        }
    }
}

impl TxnLimits {
    /// Relations between the bounds, for config validation at start-up (a flag error, not a panic).
    pub fn validate(&self) -> Result<(), String> {
        let min_one = [
            ("key_bytes_max", self.key_bytes_max),
            ("ops_max", self.ops_max),
            ("prepared_max", self.prepared_max),
            ("coordinated_max", self.coordinated_max),
        ];
        if let Some((name, _)) = min_one.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        // Saturating: a flag of 2^64-1 must be refused, not wrap into a small sum (review).
        let key_and_value = self.key_bytes_max.saturating_add(self.value_bytes_max);
        if key_and_value > self.txn_bytes_max {
            return Err(format!(
                "--max-key-bytes {} + --max-value-bytes {} = {key_and_value}: a transaction \
                 holds at most {} bytes, so the two together must fit in it",
                self.key_bytes_max, self.value_bytes_max, self.txn_bytes_max
            ));
        }
        // Framing per written key: two length prefixes and an option tag.
        let ops_room = RECORD_PAYLOAD_BYTES_MAX.saturating_sub(self.txn_bytes_max + 64) / 16;
        if self.ops_max > ops_room {
            return Err(format!(
                "--max-tx-ops {}: at most {ops_room} (a transaction's framing must fit a log record)",
                self.ops_max
            ));
        }
        if self.resolve_interval_ms == 0 || self.prepare_timeout_ms == 0 {
            return Err("transaction timeouts must be at least 1 ms".to_string());
        }
        Ok(())
    }
}
