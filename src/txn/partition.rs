//! One shard's partition: keys to (value, version), the locks of prepared multi-shard transactions, the version counter, and replay of log and snapshot records; pure, never does IO and never waits.
//!
//! Every change goes through `apply`, the same function recovery uses for the log, so the state
//! after a restart is the state the records describe. A key locked by a prepared transaction is a
//! conflict (409) for every other transaction, reads included (and so for a plain GET): isolation
//! is strict two-phase locking for multi-shard transactions, and single-shard transactions run in
//! one step between two others, which makes the whole schedule serializable.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;

use crate::txn::op::{FailReason, Op, OpResult, TxError};
use crate::txn::record::{Record, TxId, Write};
use crate::txn::{SNAPSHOT_ENTRIES_BYTES_MAX, TxnLimits};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    pub version: u64,
}

/// A prepared transaction's part on this shard: what it will write, which keys it holds.
#[derive(Clone, Debug)]
struct PreparedPart {
    version: u64,
    writes: Vec<Write>,
    reads: Vec<Bytes>,
    reserved_bytes: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionCounters {
    pub commits_local: u64,
    pub reads_local: u64,
    pub prepares: u64,
    pub commits_prepared: u64,
    pub releases: u64,
    pub aborts_conflict: u64,
    pub aborts_failed: u64,
    pub aborts_busy: u64,
    pub aborts_full: u64,
    pub aborts_too_large: u64,
}

/// A single-shard transaction's outcome: the results, and the record to make durable before
/// answering (None for a read-only one: answer after the log is durable up to its current end).
#[derive(Debug)]
pub struct LocalOutcome {
    pub results: Vec<OpResult>,
    pub record: Option<Record>,
}

/// A prepared part: results by op index, and the `Prepare` record to make durable before voting.
#[derive(Debug)]
pub struct Prepared {
    pub results: Vec<(usize, OpResult)>,
    pub record: Record,
}

struct Execution {
    results: Vec<(usize, OpResult)>,
    writes: Vec<Write>,
    reads: Vec<Bytes>,
    growth_bytes: isize,
}

pub struct Partition {
    limits: TxnLimits,
    data: BTreeMap<Bytes, Entry>,
    /// Keys locked by prepared transactions: few (bounded by the prepared-transaction bound),
    /// looked up by every op, never iterated, so hashed (SipHash: the keys are the clients').
    /// `data` stays a B-tree: it may hold millions of keys, and a hash table's resize would
    /// stop the shard for all of them at once.
    locks: HashMap<Bytes, TxId>,
    prepared: BTreeMap<TxId, PreparedPart>,
    version_next: u64,
    data_bytes: usize,
    reserved_bytes: usize,
    pub counters: PartitionCounters,
}

/// What an entry counts against the partition bound (`ENTRY_OVERHEAD_BYTES`).
pub fn entry_bytes(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + super::ENTRY_OVERHEAD_BYTES
}

/// What an entry costs in a `SnapshotEntries` payload besides its key and value: their two
/// length prefixes and the version.
const SNAPSHOT_ENTRY_FRAMING_BYTES: usize = 4 + 4 + 8;

/// Entries (key, value, version; keys sorted, unique) as `SnapshotEntries` records of at most
/// `SNAPSHOT_ENTRIES_BYTES_MAX` framed bytes each (and one entry past it), so every record stays
/// within the payload bound however small the entries: counting keys and values alone, 600,000
/// 4-byte keys made a record past it (found in review).
pub fn snapshot_entries(entries: impl IntoIterator<Item = (Bytes, Bytes, u64)>) -> Vec<Record> {
    let mut records = Vec::new();
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0;
    for entry in entries {
        chunk_bytes += entry.0.len() + entry.1.len() + SNAPSHOT_ENTRY_FRAMING_BYTES;
        chunk.push(entry);
        if chunk_bytes >= SNAPSHOT_ENTRIES_BYTES_MAX {
            records.push(Record::SnapshotEntries {
                entries: std::mem::take(&mut chunk),
            });
            chunk_bytes = 0;
        }
    }
    if !chunk.is_empty() {
        records.push(Record::SnapshotEntries { entries: chunk });
    }
    records
}

fn parse_integer(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

impl Partition {
    pub fn new(limits: TxnLimits) -> Partition {
        Partition {
            limits,
            data: BTreeMap::new(),
            locks: HashMap::new(),
            prepared: BTreeMap::new(),
            version_next: 1,
            data_bytes: 0,
            reserved_bytes: 0,
            counters: PartitionCounters::default(),
        }
    }

    /// A partition rebuilt from a snapshot's records followed by the log's.
    pub fn restore<'a>(limits: TxnLimits, records: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut partition = Partition::new(limits);
        records
            .into_iter()
            .for_each(|record| partition.replay(record));
        partition
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }

    pub fn version_next(&self) -> u64 {
        self.version_next
    }

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.data.get(key)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Bytes, &Entry)> {
        self.data.iter()
    }

    pub fn locked_by(&self, key: &[u8]) -> Option<TxId> {
        self.locks.get(key).copied()
    }

    /// True when a key of `ops` is locked: a prepare of them would vote no, and the conflict is
    /// counted as that prepare's would be.
    pub fn conflicts(&mut self, ops: &[(usize, Op)]) -> bool {
        let locked = ops.iter().any(|(_, op)| self.locks.contains_key(op.key()));
        if locked {
            self.counters.aborts_conflict += 1;
        }
        locked
    }

    pub fn is_prepared(&self, tx: TxId) -> bool {
        self.prepared.contains_key(&tx)
    }

    /// Transactions prepared here and not yet resolved (in doubt after a restart).
    pub fn prepared(&self) -> impl Iterator<Item = TxId> + '_ {
        self.prepared.keys().copied()
    }

    /// Runs a single-shard transaction in one step and applies it in memory. The caller makes
    /// `record` durable (or, read-only, waits for the log's current end) before answering.
    pub fn run_local(&mut self, ops: &[Op]) -> Result<LocalOutcome, TxError> {
        let execution = self.execute(ops.iter().enumerate(), self.version_next)?;
        let results = execution.results.into_iter().map(|(_, r)| r).collect();
        if execution.writes.is_empty() {
            self.counters.reads_local += 1;
            return Ok(LocalOutcome {
                results,
                record: None,
            });
        }
        let record = Record::Commit {
            tx: None,
            version: self.version_next,
            writes: execution.writes,
        };
        self.apply(&record);
        self.counters.commits_local += 1;
        Ok(LocalOutcome {
            results,
            record: Some(record),
        })
    }

    /// Prepares this shard's part of `tx`: conflicts if any key is locked, validates checks and
    /// floors, computes the results, locks every key the part touches and reserves a version.
    pub fn prepare(&mut self, tx: TxId, ops: &[(usize, Op)]) -> Result<Prepared, TxError> {
        assert!(!self.prepared.contains_key(&tx), "{tx:?} prepared twice");
        if self.prepared.len() >= self.limits.prepared_max {
            self.counters.aborts_busy += 1;
            return Err(TxError::Busy);
        }
        let execution = self.execute(ops.iter().map(|(i, op)| (*i, op)), self.version_next)?;
        let version = if execution.writes.is_empty() {
            0
        } else {
            self.version_next
        };
        let record = Record::Prepare {
            tx,
            version,
            writes: execution.writes,
            reads: execution.reads,
        };
        self.apply(&record);
        self.counters.prepares += 1;
        Ok(Prepared {
            results: execution.results,
            record,
        })
    }

    /// Applies a prepared part and unlocks it; the record to make durable before acknowledging
    /// (`Release` for a part that only read), or None when `tx` is not prepared here.
    pub fn commit(&mut self, tx: TxId) -> Option<Record> {
        let part = self.prepared.get(&tx)?;
        let record = if part.writes.is_empty() {
            Record::Release { tx }
        } else {
            Record::Commit {
                tx: Some(tx),
                version: part.version,
                writes: part.writes.clone(),
            }
        };
        self.apply(&record);
        self.counters.commits_prepared += 1;
        Some(record)
    }

    /// Drops a prepared part and unlocks it; the `Release` record to log (it need not be durable
    /// before anything: without it, recovery asks the coordinator and hears "abort"), or None when
    /// `tx` is not prepared here.
    pub fn abort(&mut self, tx: TxId) -> Option<Record> {
        self.prepared.get(&tx)?;
        let record = Record::Release { tx };
        self.apply(&record);
        self.counters.releases += 1;
        Some(record)
    }

    /// Replays a record read back from the snapshot or the log (records of other components are
    /// ignored). Panics on a sequence of valid records we could not have written.
    pub fn replay(&mut self, record: &Record) {
        self.apply(record)
    }

    /// The partition as snapshot records (without the end record: the caller adds the
    /// coordinator's records, then `record::snapshot_close`).
    pub fn snapshot(&self) -> Vec<Record> {
        let mut records = vec![Record::SnapshotBegin {
            version_next: self.version_next,
        }];
        let entries = self
            .data
            .iter()
            .map(|(key, entry)| (key.clone(), entry.value.clone(), entry.version));
        records.extend(snapshot_entries(entries));
        records.extend(self.prepared.iter().map(|(tx, part)| Record::Prepare {
            tx: *tx,
            version: part.version,
            writes: part.writes.clone(),
            reads: part.reads.clone(),
        }));
        records
    }

    fn execute<'a>(
        &mut self,
        ops: impl Iterator<Item = (usize, &'a Op)>,
        version: u64,
    ) -> Result<Execution, TxError> {
        let execution = self.execute_view(ops, version);
        let result = execution.and_then(|execution| {
            let growth = execution.growth_bytes;
            let used = self.data_bytes + self.reserved_bytes;
            if growth > 0 && used + growth as usize > self.limits.partition_bytes_max {
                return Err(TxError::Full);
            }
            Ok(execution)
        });
        match &result {
            Err(TxError::Conflict) => self.counters.aborts_conflict += 1,
            Err(TxError::Failed { .. }) => self.counters.aborts_failed += 1,
            Err(TxError::Full) => self.counters.aborts_full += 1,
            Err(TxError::TooLarge) => self.counters.aborts_too_large += 1,
            _ => {}
        }
        result
    }

    /// Runs ops against the current state plus the transaction's own earlier writes; changes
    /// nothing.
    fn execute_view<'a>(
        &self,
        ops: impl Iterator<Item = (usize, &'a Op)>,
        version: u64,
    ) -> Result<Execution, TxError> {
        let mut view: BTreeMap<Bytes, Option<(Bytes, u64)>> = BTreeMap::new();
        let mut touched = BTreeSet::new();
        let mut results = Vec::new();
        let mut read_bytes = 0;
        for (op_index, op) in ops {
            let key = op.key();
            if self.locks.contains_key(key) {
                return Err(TxError::Conflict);
            }
            touched.insert(key.clone());
            let current = match view.get(key) {
                Some(current) => current.clone(),
                None => self.data.get(key).map(|e| (e.value.clone(), e.version)),
            };
            let fail = |reason| TxError::Failed { op_index, reason };
            let result = match op {
                Op::Get { .. } => {
                    read_bytes += current.as_ref().map_or(0, |(value, _)| value.len());
                    if read_bytes > self.limits.txn_bytes_max {
                        return Err(TxError::TooLarge);
                    }
                    OpResult::Get(current)
                }
                Op::Put { value, .. } => {
                    view.insert(key.clone(), Some((value.clone(), version)));
                    OpResult::Put { version }
                }
                Op::Delete { .. } => {
                    view.insert(key.clone(), None);
                    OpResult::Delete {
                        deleted: current.is_some(),
                    }
                }
                Op::Add { delta, floor, .. } => {
                    let old = match &current {
                        None => 0,
                        Some((value, _)) => {
                            parse_integer(value).ok_or(fail(FailReason::NotInteger))?
                        }
                    };
                    let value = old.checked_add(*delta).ok_or(fail(FailReason::Overflow))?;
                    if floor.is_some_and(|floor| value < floor) {
                        return Err(fail(FailReason::Floor { value }));
                    }
                    let text = Bytes::from(value.to_string());
                    view.insert(key.clone(), Some((text, version)));
                    OpResult::Add { value, version }
                }
                Op::Check { expect, .. } => {
                    let actual = current.as_ref().map(|(_, version)| *version);
                    if !expect.holds(actual) {
                        return Err(fail(expect.failure(actual)));
                    }
                    OpResult::Check
                }
            };
            results.push((op_index, result));
        }
        Ok(self.execution(results, view, touched))
    }

    /// Keeps only effective writes (deleting an absent key writes nothing); the other touched keys
    /// are reads.
    fn execution(
        &self,
        results: Vec<(usize, OpResult)>,
        view: BTreeMap<Bytes, Option<(Bytes, u64)>>,
        touched: BTreeSet<Bytes>,
    ) -> Execution {
        let mut growth_bytes = 0isize;
        let mut writes = Vec::new();
        for (key, value) in view {
            let old = self.data.get(&key);
            if value.is_none() && old.is_none() {
                continue;
            }
            let old_bytes = old.map_or(0, |e| entry_bytes(&key, &e.value));
            let new_bytes = value.as_ref().map_or(0, |(v, _)| entry_bytes(&key, v));
            growth_bytes += new_bytes as isize - old_bytes as isize;
            writes.push((key, value.map(|(value, _)| value)));
        }
        let reads = touched
            .into_iter()
            .filter(|key| writes.binary_search_by(|(k, _)| k.cmp(key)).is_err())
            .collect();
        Execution {
            results,
            writes,
            reads,
            growth_bytes,
        }
    }

    fn apply(&mut self, record: &Record) {
        match record {
            Record::Commit {
                tx,
                version,
                writes,
            } => {
                if let Some(tx) = tx {
                    let part = self.release(*tx);
                    assert_eq!(&part.writes, writes, "{tx:?} commits what it prepared");
                    assert_eq!(part.version, *version, "{tx:?} commits at its version");
                }
                self.apply_writes(*version, writes);
            }
            Record::Prepare {
                tx,
                version,
                writes,
                reads,
            } => self.lock(*tx, *version, writes, reads),
            Record::Release { tx } => {
                self.release(*tx);
            }
            Record::SnapshotBegin { version_next } => {
                assert!(
                    self.data.is_empty() && self.prepared.is_empty(),
                    "a snapshot starts from an empty partition"
                );
                self.version_next = *version_next;
            }
            Record::SnapshotEntries { entries } => {
                for (key, value, version) in entries {
                    assert!(
                        *version < self.version_next,
                        "snapshot entry from the future"
                    );
                    self.data_bytes += entry_bytes(key, value);
                    let entry = Entry {
                        value: value.clone(),
                        version: *version,
                    };
                    let old = self.data.insert(key.clone(), entry);
                    assert!(old.is_none(), "snapshot key twice");
                }
            }
            Record::Decision { .. }
            | Record::Staging { .. }
            | Record::End { .. }
            | Record::Epoch { .. }
            | Record::SnapshotEnd { .. } => {}
            // Recovery drops them before a partition sees the log (txn/service.rs `scan`).
            Record::SegmentStart { .. } | Record::BatchEnd { .. } => {}
        }
    }

    fn apply_writes(&mut self, version: u64, writes: &[Write]) {
        for (key, value) in writes {
            assert!(
                !self.locks.contains_key(key),
                "write to a key locked by another transaction"
            );
            let old = match value {
                Some(value) => {
                    self.data_bytes += entry_bytes(key, value);
                    let entry = Entry {
                        value: value.clone(),
                        version,
                    };
                    self.data.insert(key.clone(), entry)
                }
                None => self.data.remove(key),
            };
            if let Some(old) = old {
                assert!(old.version < version, "versions are monotonic per key");
                self.data_bytes -= entry_bytes(key, &old.value);
            }
        }
        self.version_next = self.version_next.max(version + 1);
    }

    fn lock(&mut self, tx: TxId, version: u64, writes: &[Write], reads: &[Bytes]) {
        let keys = writes.iter().map(|(key, _)| key).chain(reads);
        for key in keys {
            let holder = self.locks.insert(key.clone(), tx);
            assert!(holder.is_none(), "{key:?} locked by {holder:?} and {tx:?}");
        }
        let reserved_bytes = writes
            .iter()
            .map(|(key, value)| value.as_ref().map_or(0, |v| entry_bytes(key, v)))
            .sum();
        self.reserved_bytes += reserved_bytes;
        let part = PreparedPart {
            version,
            writes: writes.to_vec(),
            reads: reads.to_vec(),
            reserved_bytes,
        };
        assert!(
            self.prepared.insert(tx, part).is_none(),
            "{tx:?} prepared twice"
        );
        // A snapshot's in-doubt parts come after its `version_next`, which already counts them.
        self.version_next = self.version_next.max(version + 1);
    }

    fn release(&mut self, tx: TxId) -> PreparedPart {
        let part = self
            .prepared
            .remove(&tx)
            .unwrap_or_else(|| panic!("{tx:?} released but not prepared"));
        for key in part.writes.iter().map(|(key, _)| key).chain(&part.reads) {
            assert_eq!(
                self.locks.remove(key),
                Some(tx),
                "lock held by its transaction"
            );
        }
        self.reserved_bytes -= part.reserved_bytes;
        part
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::ENTRY_OVERHEAD_BYTES;
    use crate::txn::op::Expect;

    fn b(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    fn get(key: &str) -> Op {
        Op::Get { key: b(key) }
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: b(key),
            value: b(value),
        }
    }

    fn add(key: &str, delta: i64, floor: Option<i64>) -> Op {
        Op::Add {
            key: b(key),
            delta,
            floor,
        }
    }

    fn delete(key: &str) -> Op {
        Op::Delete { key: b(key) }
    }

    fn tx(seq: u64) -> TxId {
        TxId {
            coordinator: 0,
            epoch: 1,
            seq,
        }
    }

    fn limits() -> TxnLimits {
        TxnLimits {
            prepared_max: 2,
            partition_bytes_max: 64 + 8 * ENTRY_OVERHEAD_BYTES,
            ..TxnLimits::default()
        }
    }

    /// Runs `ops` on a partition that first ran `setup`; checks the outcome.
    fn check(setup: &[Op], ops: &[Op], expected: Result<Vec<OpResult>, TxError>) {
        let mut partition = Partition::new(limits());
        partition.run_local(setup).expect("setup commits");
        let actual = partition.run_local(ops).map(|outcome| outcome.results);
        assert_eq!(actual, expected, "{ops:?} after {setup:?}");
    }

    #[test]
    fn local_table() {
        let seed = [put("a", "x"), put("n", "5")]; // both at version 1
        let failed = |op_index, reason| Err(TxError::Failed { op_index, reason });
        check(
            &seed,
            &[get("a"), get("zz")],
            Ok(vec![OpResult::Get(Some((b("x"), 1))), OpResult::Get(None)]),
        );
        check(
            &seed,
            &[put("a", "y"), get("a")],
            Ok(vec![
                OpResult::Put { version: 2 },
                OpResult::Get(Some((b("y"), 2))),
            ]),
        );
        check(
            &seed,
            &[delete("a"), delete("b"), get("a")],
            Ok(vec![
                OpResult::Delete { deleted: true },
                OpResult::Delete { deleted: false },
                OpResult::Get(None),
            ]),
        );
        check(
            &seed,
            &[add("n", -5, Some(0))],
            Ok(vec![OpResult::Add {
                value: 0,
                version: 2,
            }]),
        );
        check(
            &seed,
            &[add("n", -6, Some(0))],
            failed(0, FailReason::Floor { value: -1 }),
        );
        check(
            &seed,
            &[add("m", -6, None)],
            Ok(vec![OpResult::Add {
                value: -6,
                version: 2,
            }]),
        );
        check(
            &seed,
            &[get("a"), add("a", 1, None)],
            failed(1, FailReason::NotInteger),
        );
        check(
            &[put("n", "9223372036854775807")],
            &[add("n", 1, None)],
            failed(0, FailReason::Overflow),
        );
        check(
            &[put("n", "-9223372036854775808")],
            &[add("n", -1, None)],
            failed(0, FailReason::Overflow),
        );
        check(
            &seed,
            &[Op::check_version(b("a"), 1), Op::check_absent(b("q"))],
            Ok(vec![OpResult::Check, OpResult::Check]),
        );
        check(
            &seed,
            &[Op::check_version(b("a"), 2)],
            failed(0, FailReason::Version { actual: Some(1) }),
        );
        check(
            &seed,
            &[Op::check_version(b("q"), 1)],
            failed(0, FailReason::Version { actual: None }),
        );
        check(
            &seed,
            &[Op::check_absent(b("a"))],
            failed(0, FailReason::Present { actual: 1 }),
        );
        // The conditional headers' checks: `*`, lists, If-None-Match lists.
        let checks = |expect: Expect| {
            [Op::Check {
                key: b("a"),
                expect,
            }]
        };
        let absent = |expect: Expect| {
            [Op::Check {
                key: b("q"),
                expect,
            }]
        };
        let pass = || Ok(vec![OpResult::Check]);
        check(&seed, &checks(Expect::Present), pass());
        let none = FailReason::Version { actual: None };
        check(&seed, &absent(Expect::Present), failed(0, none.clone()));
        check(&seed, &checks(Expect::OneOf(vec![3, 1])), pass());
        let one = FailReason::Version { actual: Some(1) };
        check(
            &seed,
            &checks(Expect::OneOf(vec![2, 3])),
            failed(0, one.clone()),
        );
        check(&seed, &checks(Expect::OneOf(vec![])), failed(0, one));
        check(&seed, &absent(Expect::OneOf(vec![1])), failed(0, none));
        check(&seed, &checks(Expect::NoneOf(vec![2, 3])), pass());
        check(&seed, &checks(Expect::NoneOf(vec![])), pass());
        check(&seed, &absent(Expect::NoneOf(vec![1])), pass());
        let present = FailReason::Present { actual: 1 };
        check(
            &seed,
            &checks(Expect::NoneOf(vec![3, 1])),
            failed(0, present),
        );
        check(
            &seed,
            &[delete("a"), Op::check_absent(b("a"))],
            Ok(vec![OpResult::Delete { deleted: true }, OpResult::Check]),
        );
        check(
            &seed,
            &[put("q", "1"), Op::check_version(b("q"), 2)],
            Ok(vec![OpResult::Put { version: 2 }, OpResult::Check]),
        );
        // The partition bound (64 bytes and 8 entries' overhead) at +-1: "a"+"x" and "n"+"5"
        // use 4 bytes and 2 entries' overhead, "k" its own.
        let room = 64 - 4 - 1 + 5 * ENTRY_OVERHEAD_BYTES;
        check(
            &seed,
            &[put("k", &"v".repeat(room))],
            Ok(vec![OpResult::Put { version: 2 }]),
        );
        check(
            &seed,
            &[put("k", &"v".repeat(room + 1))],
            Err(TxError::Full),
        );
        check(
            &seed,
            &[delete("a"), put("k", &"v".repeat(61))],
            Ok(vec![
                OpResult::Delete { deleted: true },
                OpResult::Put { version: 2 },
            ]),
        );
    }

    #[test]
    fn failed_transactions_change_nothing_and_reads_write_nothing() {
        let mut partition = Partition::new(limits());
        partition.run_local(&[put("a", "1")]).unwrap();
        let before = partition.snapshot();
        assert!(
            partition
                .run_local(&[put("a", "2"), add("a", -5, Some(0))])
                .is_err()
        );
        let read = partition.run_local(&[get("a"), delete("absent")]).unwrap();
        assert!(read.record.is_none());
        assert_eq!(partition.snapshot(), before);
        assert_eq!(partition.counters.aborts_failed, 1);
        assert_eq!(partition.counters.reads_local, 1);
    }

    #[test]
    fn versions_are_monotonic_across_delete_and_recreate() {
        let mut partition = Partition::new(limits());
        let mut versions = Vec::new();
        for ops in [
            vec![put("a", "1")],
            vec![put("b", "1")],
            vec![delete("a")],
            vec![put("a", "2")],
        ] {
            partition.run_local(&ops).unwrap();
            versions.push(partition.get(b"a").map(|e| e.version));
        }
        assert_eq!(versions, [Some(1), Some(1), None, Some(4)]);
    }

    #[test]
    fn prepare_locks_every_key_and_conflicts() {
        let mut partition = Partition::new(limits());
        partition
            .run_local(&[put("a", "1"), put("r", "x")])
            .unwrap();
        let prepared = partition
            .prepare(tx(1), &[(3, add("a", 1, None)), (5, get("r"))])
            .unwrap();
        assert_eq!(
            prepared.results,
            [
                (
                    3,
                    OpResult::Add {
                        value: 2,
                        version: 2
                    }
                ),
                (5, OpResult::Get(Some((b("x"), 1))))
            ]
        );
        assert_eq!(
            prepared.record,
            Record::Prepare {
                tx: tx(1),
                version: 2,
                writes: vec![(b("a"), Some(b("2")))],
                reads: vec![b("r")],
            }
        );
        // Reads and writes of locked keys conflict, locally and in other prepares.
        assert_eq!(
            partition.run_local(&[get("r")]).unwrap_err(),
            TxError::Conflict
        );
        assert_eq!(
            partition.run_local(&[get("a")]).unwrap_err(),
            TxError::Conflict
        );
        assert_eq!(
            partition.prepare(tx(2), &[(0, get("a"))]).unwrap_err(),
            TxError::Conflict
        );
        // Other keys are free, and take later versions.
        assert_eq!(
            partition.run_local(&[put("c", "1")]).unwrap().results,
            [OpResult::Put { version: 3 }]
        );
        assert_eq!(
            partition.get(b"a").unwrap().version,
            1,
            "nothing applied before commit"
        );
        let record = partition.commit(tx(1)).unwrap();
        assert!(matches!(record, Record::Commit { version: 2, .. }));
        assert_eq!(
            partition.get(b"a").unwrap(),
            &Entry {
                value: b("2"),
                version: 2
            }
        );
        assert_eq!(partition.locked_by(b"r"), None);
        assert_eq!(partition.commit(tx(1)), None, "commit of an unknown tx");
        assert_eq!(partition.abort(tx(1)), None);
    }

    #[test]
    fn abort_unlocks_and_read_only_parts_release() {
        let mut partition = Partition::new(limits());
        partition.prepare(tx(1), &[(0, put("a", "1"))]).unwrap();
        partition.prepare(tx(2), &[(0, get("b"))]).unwrap();
        assert_eq!(
            partition.prepare(tx(3), &[(0, get("c"))]).unwrap_err(),
            TxError::Busy
        );
        assert_eq!(partition.abort(tx(1)), Some(Record::Release { tx: tx(1) }));
        assert_eq!(partition.commit(tx(2)), Some(Record::Release { tx: tx(2) }));
        assert!(partition.is_empty());
        assert_eq!(partition.prepared().count(), 0);
        // The aborted version is never reused.
        assert_eq!(
            partition.run_local(&[put("a", "1")]).unwrap().results,
            [OpResult::Put { version: 2 }]
        );
    }

    /// Found while reviewing the reshard: a chunk of snapshot entries was bounded by its keys'
    /// and values' bytes alone, but each entry costs 16 more framed. 600,000 4-byte keys with
    /// empty values made a record of over 11 MiB, past the 8 MiB bound, and the checkpoint's
    /// encoder panicked: a crash at every checkpoint, the one after a restart included.
    #[test]
    fn a_snapshot_of_many_tiny_entries_stays_within_the_record_bound() {
        let entries: Vec<(Bytes, Bytes, u64)> = (0u32..600_000)
            .map(|i| (Bytes::copy_from_slice(&i.to_be_bytes()), Bytes::new(), 1))
            .collect();
        let restored = [
            Record::SnapshotBegin { version_next: 2 },
            Record::SnapshotEntries { entries },
        ];
        let partition = Partition::restore(limits(), &restored);
        assert_eq!(partition.len(), 600_000);
        let mut bytes = Vec::new();
        for record in partition.snapshot() {
            crate::txn::record::encode(&record, &mut bytes);
        }
    }

    #[test]
    fn replay_and_snapshot_rebuild_the_same_partition() {
        let mut partition = Partition::new(limits());
        let mut log = Vec::new();
        let mut keep = |record: Option<Record>| log.extend(record);
        keep(
            partition
                .run_local(&[put("a", "1"), put("b", "2")])
                .unwrap()
                .record,
        );
        keep(Some(
            partition
                .prepare(tx(1), &[(0, put("c", "3")), (1, delete("a"))])
                .unwrap()
                .record,
        ));
        keep(Some(
            partition
                .prepare(tx(2), &[(0, add("d", 4, None))])
                .unwrap()
                .record,
        ));
        keep(partition.commit(tx(1)));
        keep(partition.run_local(&[delete("b")]).unwrap().record);
        // tx 2 stays in doubt.
        let replayed = Partition::restore(limits(), &log);
        assert_eq!(replayed.snapshot(), partition.snapshot());
        assert_eq!(replayed.prepared().collect::<Vec<_>>(), [tx(2)]);
        assert_eq!(replayed.locked_by(b"d"), Some(tx(2)));
        let restored = Partition::restore(limits(), &partition.snapshot());
        assert_eq!(restored.snapshot(), partition.snapshot());
        assert_eq!(restored.version_next(), partition.version_next());
        assert_eq!(restored.data_bytes(), partition.data_bytes());
        // The in-doubt part resolves the same way on either.
        let mut restored = restored;
        restored.commit(tx(2)).unwrap();
        assert_eq!(restored.get(b"d").unwrap().value, b("4"));
    }
}
