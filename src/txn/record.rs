//! The write-ahead log record format and the snapshot format: framing (length, CRC32, type), payload encoding, validation on both sides, and scanning a log buffer up to a torn or corrupt tail; pure bytes in and out, never does IO and never panics on what it reads.
//!
//! Frame: `len: u32 LE` (payload bytes) · `crc: u32 LE` (CRC32 of the len bytes, the type byte and
//! the payload) · `type: u8` · payload. Integers are little-endian; a byte string is a u32 length
//! and its bytes; an optional byte string is a tag byte (0 absent, 1 present) and the string.
//!
//! Versions: every shard has one counter, `version_next`. A single-shard transaction that writes
//! takes the next version at apply; a multi-shard transaction takes one on each participant at
//! prepare (its keys are locked until it resolves, so no other write to them can come between).
//! A key's version is the version of the transaction that last wrote it: monotonic per key, even
//! across delete and re-create, with no tombstones, because the counter never goes back (it is in
//! every commit and prepare record and in the snapshot).
//!
//! A snapshot is a sequence of records in a file of its own: `SnapshotBegin`, `SnapshotEntries`
//! chunks, the `Prepare` records of transactions in doubt, the coordinator's `Epoch`, its open
//! commit and abort `Decision`s, the `Staging` records of transactions still preparing, and
//! `SnapshotEnd` with the count of records before it. A snapshot without its end record is
//! incomplete and must not be used.

use bytes::Bytes;

use crate::txn::RECORD_PAYLOAD_BYTES_MAX;

/// A multi-shard transaction: its coordinator shard, the coordinator's epoch (bumped durably at
/// every start, so ids are never reused across restarts) and a sequence within the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxId {
    pub coordinator: u32,
    pub epoch: u32,
    pub seq: u64,
}

/// A key and its new value (None: deleted).
pub type Write = (Bytes, Option<Bytes>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Writes applied at `version`: a single-shard transaction (`tx` None) or a participant's
    /// committed part of a multi-shard one. Keys sorted, unique.
    Commit {
        tx: Option<TxId>,
        version: u64,
        writes: Vec<Write>,
    },
    /// A participant locked `writes` and `reads` keys for `tx` and reserved `version` (0 when it
    /// writes nothing). Keys sorted, unique, the two lists disjoint.
    Prepare {
        tx: TxId,
        version: u64,
        writes: Vec<Write>,
        reads: Vec<Bytes>,
    },
    /// A participant released its prepared part of `tx` without writing: the transaction aborted,
    /// or it committed and this part only read.
    Release {
        tx: TxId,
    },
    /// A coordinator began a multi-shard transaction that commits once every participant's
    /// `Prepare` is durable (parallel commit). Without a later `Decision` or `End`, a restarted
    /// coordinator asks the participants whether they all prepared.
    Staging {
        tx: TxId,
        participants: Vec<u32>,
    },
    /// The coordinator's decision. A commit decision is written once every participant prepared
    /// and before any of them hears it; an abort decision only where a `Staging` could otherwise
    /// be read as a commit (no participant voted no).
    Decision {
        tx: TxId,
        commit: bool,
        participants: Vec<u32>,
    },
    /// Every participant acknowledged a durable commit: the coordinator may forget `tx`.
    End {
        tx: TxId,
    },
    /// The coordinator's incarnation; durable before it coordinates anything.
    Epoch {
        epoch: u32,
    },
    SnapshotBegin {
        version_next: u64,
    },
    /// (key, value, version), keys sorted, unique.
    SnapshotEntries {
        entries: Vec<(Bytes, Bytes, u64)>,
    },
    /// `records`: how many records the snapshot holds before this one.
    SnapshotEnd {
        records: u64,
    },
    /// Written by the log itself (wal/mod.rs), never by a `Node`: the first record of every
    /// segment that ends its batches with `BatchEnd`, synced before any batch is written, naming
    /// the shard and segment it was written as (salted with `SEGMENT_START_SALT`, the same in
    /// every segment, so a file renamed or copied by hand is recognised, not cut as torn). A
    /// segment without it (written by an older build, or by a reshard) is read by the older rule.
    SegmentStart {
        shard: u32,
        segment: u64,
    },
    /// Written by the log itself after each batch's records, in the same write: a batch is one
    /// group commit. `start` is the segment offset the batch began at; everything in the segment
    /// before `synced_through` was fdatasync'd before the batch was written. With `--fsync
    /// always` or `batch`, the previous batch is synced before the next is written, so it equals
    /// `start`; with `off` it is where the segment was last synced.
    BatchEnd {
        start: u64,
        synced_through: u64,
    },
}

impl Record {
    /// A record the log frames its batches with (`SegmentStart`, `BatchEnd`), not a state change.
    pub fn is_log_marker(&self) -> bool {
        matches!(self, Record::SegmentStart { .. } | Record::BatchEnd { .. })
    }
}

pub const FRAME_HEADER_BYTES: usize = 9;

/// Why a log stops being readable at `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptTail {
    pub offset: usize,
    pub reason: TailReason,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailReason {
    /// Only zero bytes remain: space allocated and never written (benign, not corruption).
    Zeroes,
    /// The header or payload is cut short: a write interrupted by a crash.
    Torn,
    /// The length field is over `RECORD_PAYLOAD_BYTES_MAX`.
    TooLong(u32),
    Checksum,
    /// A whole record (its checksum holds) of a type this build does not know: written by a
    /// newer percore. Not a torn write: recovery refuses to start rather than cut it off.
    UnknownType(u8),
    /// The checksum holds but the payload does not parse or breaks an invariant.
    Malformed(&'static str),
}

/// Appends `record`, framed, to `out`. Asserts that the record keeps its invariants (every build)
/// and, in debug builds, that the bytes written decode back to it.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    encode_at(record, 0, out)
}

/// Where a record sits, mixed into its checksum: a log file's tail can hold stale bytes (the
/// unzeroed padding of a DMA sync, a reused buffer) that are whole, valid records of another
/// segment or offset; salted, they fail their checksum there and the scan stops.
pub fn position_salt(segment: u64, offset: u64) -> u64 {
    segment.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ offset.wrapping_add(1)
}

/// The salt of a segment's `SegmentStart`, at offset 0 of every segment: it names its own shard and
/// segment, so it can be read before the file's name is trusted.
pub const SEGMENT_START_SALT: u64 = 0x5345_474d_454e_5453;

/// `encode` for a record that will sit at the position `salt` names (see `position_salt`).
pub fn encode_at(record: &Record, salt: u64, out: &mut Vec<u8>) {
    if let Err(reason) = validate(record) {
        panic!("refusing to write an invalid record ({reason}): {record:?}");
    }
    let start = out.len();
    frame_at(type_byte(record), salt, out, |out| {
        encode_payload(record, out)
    });
    // The encoder checks itself by decoding what it wrote, in debug builds: every test, the
    // simulation and the crash tests write through here. In release it would cost a second
    // checksum and a copy of every key and value per record (3% of a cross-shard transfer's CPU);
    // `round_trips`, the property tests and the `wal_record` fuzz target cover the same ground.
    if cfg!(debug_assertions) {
        match decode_at(&out[start..], salt) {
            Ok(Some((decoded, used))) => {
                assert_eq!(used, out.len() - start, "record length round trip");
                assert_eq!(&decoded, record, "record round trip");
            }
            other => panic!("record does not decode back: {other:?}"),
        }
    }
}

/// Frames the payload that `payload` appends to `out`: length, salted checksum, type. Only
/// `encode_at` writes records; tests use this to write what another build would (a record type
/// this one does not know).
pub fn frame_at(type_byte: u8, salt: u64, out: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    out[start + 8] = type_byte;
    payload(out);
    let payload_bytes = out.len() - start - FRAME_HEADER_BYTES;
    assert!(
        payload_bytes <= RECORD_PAYLOAD_BYTES_MAX,
        "record payload of {payload_bytes} bytes over the bound; transaction bounds let it through"
    );
    let len = (payload_bytes as u32).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    let crc = checksum(salt, &out[start..start + 4], &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads the record at the start of `buf`: Ok(None) when `buf` is empty, Ok((record, bytes used)),
/// or why the bytes there are not a valid record (offset 0).
pub fn decode(buf: &[u8]) -> Result<Option<(Record, usize)>, CorruptTail> {
    decode_at(buf, 0)
}

/// `decode` of a record expected at the position `salt` names.
pub fn decode_at(buf: &[u8], salt: u64) -> Result<Option<(Record, usize)>, CorruptTail> {
    let fail = |reason| Err(CorruptTail { offset: 0, reason });
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.iter().all(|&b| b == 0) {
        return fail(TailReason::Zeroes);
    }
    if buf.len() < FRAME_HEADER_BYTES {
        return fail(TailReason::Torn);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len as usize > RECORD_PAYLOAD_BYTES_MAX {
        return fail(TailReason::TooLong(len));
    }
    let end = FRAME_HEADER_BYTES + len as usize;
    if buf.len() < end {
        return fail(TailReason::Torn);
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if checksum(salt, &buf[0..4], &buf[8..end]) != crc {
        // Only zeros after it: the last record of a zero-filled segment, cut short by a crash
        // (the unwritten part of the frame reads as the fill's zeros, not as end of file).
        if buf[end..].iter().all(|&b| b == 0) {
            return fail(TailReason::Torn);
        }
        return fail(TailReason::Checksum);
    }
    let record = match decode_payload(buf[8], &buf[FRAME_HEADER_BYTES..end]) {
        Ok(record) => record,
        Err(reason) => return fail(reason),
    };
    if let Err(reason) = validate(&record) {
        return fail(TailReason::Malformed(reason));
    }
    Ok(Some((record, end)))
}

/// The readable prefix of a log buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<Record>,
    /// Bytes of `buf` holding `records`; the log is cut here before appending to it.
    pub valid_bytes: usize,
    /// Where and why reading stopped, if not at the end of the buffer.
    pub tail: Option<CorruptTail>,
}

/// Reads every valid record of a log buffer, in order, up to its end or its first bad record.
pub fn scan(buf: &[u8]) -> Scan {
    scan_with(buf, 0, Vec::new(), |_| 0)
}

/// `scan` of a log segment whose records were written with `encode_at(.., position_salt(segment,
/// offset))`, after the `SegmentStart` (salted with `SEGMENT_START_SALT`) it may start with.
pub fn scan_segment(buf: &[u8], segment: u64) -> Scan {
    let salt = |offset: usize| position_salt(segment, offset as u64);
    match decode_at(buf, SEGMENT_START_SALT) {
        Ok(Some((start @ Record::SegmentStart { .. }, used))) => {
            scan_with(buf, used, vec![start], salt)
        }
        _ => scan_with(buf, 0, Vec::new(), salt),
    }
}

/// Scans from `offset` on, after `records` (read before it).
fn scan_with(
    buf: &[u8],
    mut offset: usize,
    mut records: Vec<Record>,
    salt: impl Fn(usize) -> u64,
) -> Scan {
    loop {
        match decode_at(&buf[offset..], salt(offset)) {
            Ok(None) => {
                return Scan {
                    records,
                    valid_bytes: offset,
                    tail: None,
                };
            }
            Ok(Some((record, used))) => {
                records.push(record);
                offset += used;
            }
            Err(tail) => {
                return Scan {
                    records,
                    valid_bytes: offset,
                    tail: Some(CorruptTail {
                        offset,
                        reason: tail.reason,
                    }),
                };
            }
        }
    }
}

/// What follows a bad record in a log segment (`look_past`).
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// Nothing that validates where it lies: the bad record may be a torn tail.
    Nothing,
    /// A whole record that validates at this offset: the bad record is damage, not a torn tail.
    Record(usize),
}

/// Looks for a whole record after the bad one at `bad` in a segment's bytes, one that validates
/// at its own offset (`position_salt(segment, offset)`). A torn write leaves nothing like it:
/// after the true end there are only the fill's zeros and stale bytes (DMA padding, a reused
/// buffer), which fail their salted checksum where they lie. Zero runs are skipped a run at a
/// time (a record's type byte, its ninth, is never zero), so a 64 MiB fill costs one pass.
///
/// Every other offset is a candidate, and stale binary values make thousands of them claim a
/// length near the bound; checksumming each claimed payload would cost a megabyte per offset.
/// The checksum of any slice comes from the segment's prefix checksums instead (`Prefixes`),
/// at a cost that does not depend on the length claimed: the look-ahead is linear in the bytes
/// it passes and needs no budget, so it never gives up undecided.
pub fn look_past(buf: &[u8], bad: usize, segment: u64) -> After {
    match records_past(buf, bad, segment).next() {
        Some((at, _)) => After::Record(at),
        None => After::Nothing,
    }
}

/// Every whole record after the bad one at `bad` that validates at its own offset, in order, with
/// its offset (`look_past` takes the first). After each one found the search goes on at its end.
pub fn records_past(buf: &[u8], bad: usize, segment: u64) -> RecordsPast<'_> {
    RecordsPast {
        buf,
        bad,
        // Over the bytes from `bad` on: every slice checksummed lies there.
        prefixes: Prefixes::new(&buf[bad.min(buf.len())..]),
        offset: bad + 1,
        segment,
    }
}

/// The iterator `records_past` returns.
pub struct RecordsPast<'a> {
    buf: &'a [u8],
    bad: usize,
    prefixes: Prefixes<'a>,
    /// The next offset to try.
    offset: usize,
    segment: u64,
}

impl Iterator for RecordsPast<'_> {
    type Item = (usize, Record);

    fn next(&mut self) -> Option<(usize, Record)> {
        let (buf, bad) = (self.buf, self.bad);
        while self.offset + FRAME_HEADER_BYTES <= buf.len() {
            let offset = self.offset;
            let type_at = offset + FRAME_HEADER_BYTES - 1;
            if buf[type_at] == 0 {
                match buf[type_at..].iter().position(|&b| b != 0) {
                    Some(skip) => self.offset += skip.max(1),
                    None => break,
                }
                continue;
            }
            let len = u32::from_le_bytes([
                buf[offset],
                buf[offset + 1],
                buf[offset + 2],
                buf[offset + 3],
            ]) as usize;
            let end = offset + FRAME_HEADER_BYTES + len;
            if len <= RECORD_PAYLOAD_BYTES_MAX && end <= buf.len() {
                let salt = position_salt(self.segment, offset as u64);
                let crc = u32::from_le_bytes([
                    buf[offset + 4],
                    buf[offset + 5],
                    buf[offset + 6],
                    buf[offset + 7],
                ]);
                // `checksum(salt, len, type_and_payload)`, its long part from the prefixes.
                let mut head = crc32fast::Hasher::new();
                head.update(&salt.to_le_bytes());
                head.update(&buf[offset..offset + 4]);
                let rest = self.prefixes.slice(offset + 8 - bad, end - bad);
                head.combine(&crc32fast::Hasher::new_with_initial_len(
                    rest,
                    (end - offset - 8) as u64,
                ));
                if head.finalize() == crc
                    && let Ok(Some((record, _))) = decode_at(&buf[offset..end], salt)
                {
                    self.offset = end;
                    return Some((offset, record));
                }
            }
            self.offset += 1;
        }
        self.offset = buf.len();
        None
    }
}

/// Bytes hashed between two stored prefix checksums: the most `Prefixes::slice` hashes twice.
const PREFIX_STRIDE_BYTES: usize = 1024;

/// The CRC-32 of every `PREFIX_STRIDE_BYTES`-th prefix of a buffer, from which the CRC-32 of any
/// slice follows in time independent of its length: CRC-32 is linear, so
/// `crc(a ++ b) = crc(a) shifted by len(b) ^ crc(b)`, and crc32fast shifts a checksum (its
/// `combine`) in a few dozen word operations.
struct Prefixes<'a> {
    buf: &'a [u8],
    /// `crcs[k]` = crc32(buf[..k * PREFIX_STRIDE_BYTES]).
    crcs: Vec<u32>,
}

impl<'a> Prefixes<'a> {
    fn new(buf: &'a [u8]) -> Prefixes<'a> {
        let mut crcs = Vec::with_capacity(buf.len() / PREFIX_STRIDE_BYTES + 1);
        let mut hasher = crc32fast::Hasher::new();
        crcs.push(hasher.clone().finalize());
        for stride in buf.chunks_exact(PREFIX_STRIDE_BYTES) {
            hasher.update(stride);
            crcs.push(hasher.clone().finalize());
        }
        Prefixes { buf, crcs }
    }

    /// crc32(buf[..end]).
    fn prefix(&self, end: usize) -> u32 {
        let stored = end / PREFIX_STRIDE_BYTES;
        let from = stored * PREFIX_STRIDE_BYTES;
        let mut hasher = crc32fast::Hasher::new_with_initial_len(self.crcs[stored], from as u64);
        hasher.update(&self.buf[from..end]);
        hasher.finalize()
    }

    /// crc32(buf[start..end]).
    fn slice(&self, start: usize, end: usize) -> u32 {
        let mut shifted = crc32fast::Hasher::new_with_initial_len(self.prefix(start), 0);
        shifted.combine(&crc32fast::Hasher::new_with_initial_len(
            0,
            (end - start) as u64,
        ));
        self.prefix(end) ^ shifted.finalize()
    }
}

/// Appends the `SnapshotEnd` record that makes a snapshot's record list complete.
pub fn snapshot_close(records: &mut Vec<Record>) {
    let count = records.len() as u64;
    records.push(Record::SnapshotEnd { records: count });
}

/// The records of a complete snapshot file, without its end record; an error for anything else
/// (a snapshot is written whole and synced before the log it replaces is dropped, so a bad one is
/// an interrupted checkpoint: fall back to the previous snapshot and log).
pub fn read_snapshot(buf: &[u8]) -> Result<Vec<Record>, String> {
    let Scan {
        mut records, tail, ..
    } = scan(buf);
    if let Some(tail) = tail {
        return Err(format!(
            "snapshot unreadable at byte {}: {:?}",
            tail.offset, tail.reason
        ));
    }
    let Some(Record::SnapshotEnd { records: count }) = records.pop() else {
        return Err("snapshot has no end record".to_string());
    };
    if count != records.len() as u64 {
        return Err(format!(
            "snapshot end counts {count} records, file holds {}",
            records.len()
        ));
    }
    if !matches!(records.first(), Some(Record::SnapshotBegin { .. })) {
        return Err("snapshot does not start with its begin record".to_string());
    }
    let misplaced = records.iter().skip(1).any(|record| {
        matches!(
            record,
            Record::SnapshotBegin { .. } | Record::SnapshotEnd { .. }
        )
    });
    if misplaced {
        return Err("snapshot holds a begin or end record inside it".to_string());
    }
    Ok(records)
}

fn checksum(salt: u64, len: &[u8], type_and_payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&salt.to_le_bytes());
    hasher.update(len);
    hasher.update(type_and_payload);
    hasher.finalize()
}

fn type_byte(record: &Record) -> u8 {
    match record {
        Record::Commit { .. } => 1,
        Record::Prepare { .. } => 2,
        Record::Release { .. } => 3,
        Record::Decision { .. } => 4,
        Record::End { .. } => 5,
        Record::Epoch { .. } => 6,
        Record::SnapshotBegin { .. } => 7,
        Record::SnapshotEntries { .. } => 8,
        Record::SnapshotEnd { .. } => 9,
        Record::Staging { .. } => 10,
        Record::SegmentStart { .. } => 11,
        Record::BatchEnd { .. } => 12,
    }
}

fn strictly_sorted<'a>(keys: impl Iterator<Item = &'a Bytes>) -> bool {
    let mut previous: Option<&Bytes> = None;
    for key in keys {
        if key.is_empty() || previous.is_some_and(|previous| previous >= key) {
            return false;
        }
        previous = Some(key);
    }
    true
}

/// The invariants of a record's payload, checked before writing (assert) and after reading (error).
pub fn validate(record: &Record) -> Result<(), &'static str> {
    match record {
        Record::Commit {
            version, writes, ..
        } => {
            if *version == 0 {
                return Err("commit at version 0");
            }
            if writes.is_empty() {
                return Err("commit without writes");
            }
            if !strictly_sorted(writes.iter().map(|(key, _)| key)) {
                return Err("commit keys not sorted and unique");
            }
        }
        Record::Prepare {
            version,
            writes,
            reads,
            ..
        } => {
            if writes.is_empty() && reads.is_empty() {
                return Err("prepare without keys");
            }
            if (*version == 0) != writes.is_empty() {
                return Err("prepare version must be set exactly when it writes");
            }
            if !strictly_sorted(writes.iter().map(|(key, _)| key)) || !strictly_sorted(reads.iter())
            {
                return Err("prepare keys not sorted and unique");
            }
            let overlap = reads
                .iter()
                .any(|read| writes.binary_search_by(|(key, _)| key.cmp(read)).is_ok());
            if overlap {
                return Err("prepare reads and writes overlap");
            }
        }
        Record::Decision { participants, .. } | Record::Staging { participants, .. } => {
            if participants.len() < 2 {
                return Err("decision with fewer than two participants");
            }
            if participants.windows(2).any(|pair| pair[0] >= pair[1]) {
                return Err("decision participants not sorted and unique");
            }
        }
        Record::SnapshotBegin { version_next } if *version_next == 0 => {
            return Err("snapshot version_next 0");
        }
        Record::BatchEnd {
            start,
            synced_through,
        } if synced_through > start => {
            return Err("batch synced past its own start");
        }
        Record::SnapshotEntries { entries } => {
            if entries.is_empty() {
                return Err("empty snapshot entries");
            }
            if entries.iter().any(|(_, _, version)| *version == 0) {
                return Err("snapshot entry at version 0");
            }
            if !strictly_sorted(entries.iter().map(|(key, _, _)| key)) {
                return Err("snapshot keys not sorted and unique");
            }
        }
        _ => {}
    }
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

fn put_tx(out: &mut Vec<u8>, tx: &TxId) {
    put_u32(out, tx.coordinator);
    put_u32(out, tx.epoch);
    put_u64(out, tx.seq);
}

fn put_shards(out: &mut Vec<u8>, shards: &[u32]) {
    put_u32(out, shards.len() as u32);
    shards.iter().for_each(|shard| put_u32(out, *shard));
}

fn put_writes(out: &mut Vec<u8>, writes: &[Write]) {
    put_u32(out, writes.len() as u32);
    for (key, value) in writes {
        put_bytes(out, key);
        match value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                put_bytes(out, value);
            }
        }
    }
}

fn encode_payload(record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::Commit {
            tx,
            version,
            writes,
        } => {
            match tx {
                None => out.push(0),
                Some(tx) => {
                    out.push(1);
                    put_tx(out, tx);
                }
            }
            put_u64(out, *version);
            put_writes(out, writes);
        }
        Record::Prepare {
            tx,
            version,
            writes,
            reads,
        } => {
            put_tx(out, tx);
            put_u64(out, *version);
            put_writes(out, writes);
            put_u32(out, reads.len() as u32);
            reads.iter().for_each(|key| put_bytes(out, key));
        }
        Record::Release { tx } | Record::End { tx } => put_tx(out, tx),
        Record::Decision {
            tx,
            commit,
            participants,
        } => {
            put_tx(out, tx);
            out.push(u8::from(*commit));
            put_shards(out, participants);
        }
        Record::Staging { tx, participants } => {
            put_tx(out, tx);
            put_shards(out, participants);
        }
        Record::Epoch { epoch } => put_u32(out, *epoch),
        Record::SnapshotBegin { version_next } => put_u64(out, *version_next),
        Record::SnapshotEntries { entries } => {
            put_u32(out, entries.len() as u32);
            for (key, value, version) in entries {
                put_bytes(out, key);
                put_bytes(out, value);
                put_u64(out, *version);
            }
        }
        Record::SnapshotEnd { records } => put_u64(out, *records),
        Record::SegmentStart { shard, segment } => {
            put_u32(out, *shard);
            put_u64(out, *segment);
        }
        Record::BatchEnd {
            start,
            synced_through,
        } => {
            put_u64(out, *start);
            put_u64(out, *synced_through);
        }
    }
}

/// Reads a payload; every length is checked against the bytes left before anything is allocated.
struct Reader<'a> {
    buf: &'a [u8],
    position: usize,
}

type Read<T> = Result<T, &'static str>;

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Read<&[u8]> {
        if self.buf.len() - self.position < count {
            return Err("payload cut short");
        }
        let bytes = &self.buf[self.position..self.position + count];
        self.position += count;
        Ok(bytes)
    }

    fn u8(&mut self) -> Read<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Read<u32> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Read<u64> {
        let bytes = self.take(8)?;
        let mut array = [0; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }

    fn bytes(&mut self) -> Read<Bytes> {
        let len = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }

    fn flag(&mut self) -> Read<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err("bad option tag"),
        }
    }

    /// A count of items of at least `item_bytes_min` bytes each, bounded by the bytes left.
    fn count(&mut self, item_bytes_min: usize) -> Read<usize> {
        let count = self.u32()? as usize;
        if count.saturating_mul(item_bytes_min) > self.buf.len() - self.position {
            return Err("count larger than the payload");
        }
        Ok(count)
    }

    fn tx(&mut self) -> Read<TxId> {
        Ok(TxId {
            coordinator: self.u32()?,
            epoch: self.u32()?,
            seq: self.u64()?,
        })
    }

    fn shards(&mut self) -> Read<Vec<u32>> {
        let count = self.count(4)?;
        (0..count).map(|_| self.u32()).collect()
    }

    fn writes(&mut self) -> Read<Vec<Write>> {
        let count = self.count(5)?;
        (0..count)
            .map(|_| {
                let key = self.bytes()?;
                let value = if self.flag()? {
                    Some(self.bytes()?)
                } else {
                    None
                };
                Ok((key, value))
            })
            .collect()
    }
}

fn decode_payload(type_byte: u8, payload: &[u8]) -> Result<Record, TailReason> {
    let mut reader = Reader {
        buf: payload,
        position: 0,
    };
    let record = match type_byte {
        1..=12 => read_record(type_byte, &mut reader).map_err(TailReason::Malformed)?,
        other => return Err(TailReason::UnknownType(other)),
    };
    if reader.position != payload.len() {
        return Err(TailReason::Malformed("trailing bytes in payload"));
    }
    Ok(record)
}

fn read_record(type_byte: u8, reader: &mut Reader) -> Read<Record> {
    Ok(match type_byte {
        1 => Record::Commit {
            tx: if reader.flag()? {
                Some(reader.tx()?)
            } else {
                None
            },
            version: reader.u64()?,
            writes: reader.writes()?,
        },
        2 => Record::Prepare {
            tx: reader.tx()?,
            version: reader.u64()?,
            writes: reader.writes()?,
            reads: {
                let count = reader.count(4)?;
                (0..count).map(|_| reader.bytes()).collect::<Read<_>>()?
            },
        },
        3 => Record::Release { tx: reader.tx()? },
        4 => Record::Decision {
            tx: reader.tx()?,
            commit: reader.flag()?,
            participants: reader.shards()?,
        },
        5 => Record::End { tx: reader.tx()? },
        6 => Record::Epoch {
            epoch: reader.u32()?,
        },
        7 => Record::SnapshotBegin {
            version_next: reader.u64()?,
        },
        8 => Record::SnapshotEntries {
            entries: {
                let count = reader.count(16)?;
                (0..count)
                    .map(|_| Ok((reader.bytes()?, reader.bytes()?, reader.u64()?)))
                    .collect::<Read<_>>()?
            },
        },
        9 => Record::SnapshotEnd {
            records: reader.u64()?,
        },
        10 => Record::Staging {
            tx: reader.tx()?,
            participants: reader.shards()?,
        },
        11 => Record::SegmentStart {
            shard: reader.u32()?,
            segment: reader.u64()?,
        },
        _ => Record::BatchEnd {
            start: reader.u64()?,
            synced_through: reader.u64()?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    fn tx(seq: u64) -> TxId {
        TxId {
            coordinator: 2,
            epoch: 3,
            seq,
        }
    }

    fn samples() -> Vec<Record> {
        vec![
            Record::Commit {
                tx: None,
                version: 1,
                writes: vec![(b("a"), Some(b("1"))), (b("b"), None)],
            },
            Record::Commit {
                tx: Some(tx(9)),
                version: u64::MAX,
                writes: vec![(b("k"), Some(Bytes::new()))],
            },
            Record::Prepare {
                tx: tx(1),
                version: 7,
                writes: vec![(b("x"), Some(b("\u{0}\u{ff}")))],
                reads: vec![b("w"), b("y")],
            },
            Record::Prepare {
                tx: tx(2),
                version: 0,
                writes: vec![],
                reads: vec![b("r")],
            },
            Record::Release { tx: tx(4) },
            Record::Decision {
                tx: tx(5),
                commit: true,
                participants: vec![0, 3],
            },
            Record::End { tx: tx(5) },
            Record::Staging {
                tx: tx(6),
                participants: vec![1, 2, 3],
            },
            Record::Epoch { epoch: 17 },
            Record::SnapshotBegin { version_next: 12 },
            Record::SnapshotEntries {
                entries: vec![(b("a"), b("v"), 3), (b("b"), Bytes::new(), 11)],
            },
            Record::SnapshotEnd { records: 2 },
        ]
    }

    fn log(records: &[Record]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for record in records {
            encode(record, &mut buf);
            ends.push(buf.len());
        }
        (buf, ends)
    }

    #[test]
    fn round_trips() {
        let records = samples();
        let (buf, _) = log(&records);
        let scanned = scan(&buf);
        assert_eq!(scanned.records, records);
        assert_eq!(scanned.valid_bytes, buf.len());
        assert_eq!(scanned.tail, None);
    }

    #[test]
    fn a_cut_anywhere_in_the_last_record_keeps_every_earlier_one() {
        let records = samples();
        let (buf, ends) = log(&records);
        let last_start = ends[ends.len() - 2];
        for cut in last_start..buf.len() {
            let scanned = scan(&buf[..cut]);
            assert_eq!(
                scanned.records,
                records[..records.len() - 1],
                "cut at {cut}"
            );
            assert_eq!(scanned.valid_bytes, last_start);
            let want = (cut > last_start).then_some(TailReason::Torn);
            assert_eq!(scanned.tail.map(|t| t.reason), want, "cut at {cut}");
        }
        // The same cuts in a zero-filled segment (the WAL fills ahead of the writer): the rest
        // of the frame and the file are zeros, and the tail still reads as torn.
        for cut in last_start..buf.len() {
            if buf[cut..].iter().all(|&b| b == 0) {
                continue; // The cut bytes were zeros: the fill makes the record whole again.
            }
            let mut filled = buf[..cut].to_vec();
            filled.resize(buf.len() + 4096, 0);
            let scanned = scan(&filled);
            assert_eq!(
                scanned.records,
                records[..records.len() - 1],
                "cut at {cut}"
            );
            assert_eq!(scanned.valid_bytes, last_start);
            let want = match cut > last_start {
                true => TailReason::Torn,
                false => TailReason::Zeroes,
            };
            assert_eq!(scanned.tail.map(|t| t.reason), Some(want), "cut at {cut}");
        }
        // And at every byte of the whole log: the records wholly before the cut survive.
        for cut in 0..=buf.len() {
            let whole = ends.iter().filter(|&&end| end <= cut).count();
            assert_eq!(scan(&buf[..cut]).records, records[..whole], "cut at {cut}");
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let records = samples();
        let (buf, ends) = log(&records);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut flipped = buf.clone();
                flipped[byte] ^= 1 << bit;
                let scanned = scan(&flipped);
                let record_index = ends
                    .iter()
                    .position(|&end| byte < end)
                    .expect("in a record");
                assert_eq!(
                    scanned.records,
                    records[..record_index],
                    "flip {byte}.{bit}"
                );
                assert!(scanned.tail.is_some(), "flip {byte}.{bit}");
            }
        }
    }

    #[test]
    fn tails_table() {
        let (good, _) = log(&[Record::Epoch { epoch: 1 }]);
        let mut too_long = good.clone();
        too_long.extend_from_slice(&u32::MAX.to_le_bytes());
        too_long.extend_from_slice(&[0; 5]);
        let mut zeroes = good.clone();
        zeroes.extend_from_slice(&[0; 4096]);
        let mut unknown_type = Vec::new();
        frame_at(42, 0, &mut unknown_type, |_| {});
        let mut malformed = Vec::new();
        // A commit at version 0: checksum fine, invariant broken.
        frame_at(1, 0, &mut malformed, |out| {
            out.push(0);
            out.extend_from_slice(&0u64.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(b"k\x00");
        });
        let cases: Vec<(Vec<u8>, usize, Option<TailReason>)> = vec![
            (vec![], 0, None),
            (good.clone(), 1, None),
            (zeroes, 1, Some(TailReason::Zeroes)),
            (too_long, 1, Some(TailReason::TooLong(u32::MAX))),
            (unknown_type, 0, Some(TailReason::UnknownType(42))),
            (
                malformed,
                0,
                Some(TailReason::Malformed("commit at version 0")),
            ),
            (vec![1, 2, 3], 0, Some(TailReason::Torn)),
        ];
        for (buf, count, reason) in cases {
            let scanned = scan(&buf);
            assert_eq!(scanned.records.len(), count, "{buf:?}");
            assert_eq!(scanned.tail.map(|t| t.reason), reason);
        }
    }

    #[test]
    #[should_panic(expected = "invalid record")]
    fn encode_refuses_an_invalid_record() {
        encode(
            &Record::Commit {
                tx: None,
                version: 1,
                writes: vec![(b("b"), None), (b("a"), None)],
            },
            &mut Vec::new(),
        );
    }

    #[test]
    fn snapshots() {
        let mut records = vec![
            Record::SnapshotBegin { version_next: 5 },
            Record::SnapshotEntries {
                entries: vec![(b("a"), b("1"), 4)],
            },
        ];
        snapshot_close(&mut records);
        let (buf, ends) = log(&records);
        assert_eq!(read_snapshot(&buf), Ok(records[..2].to_vec()));
        assert!(
            read_snapshot(&buf[..ends[1]])
                .unwrap_err()
                .contains("no end")
        );
        assert!(
            read_snapshot(&buf[..buf.len() - 1])
                .unwrap_err()
                .contains("unreadable")
        );
        let (wrong_count, _) = log(&[records[0].clone(), Record::SnapshotEnd { records: 3 }]);
        assert!(
            read_snapshot(&wrong_count)
                .unwrap_err()
                .contains("counts 3")
        );
        let (no_begin, _) = log(&[
            Record::Epoch { epoch: 1 },
            Record::SnapshotEnd { records: 1 },
        ]);
        assert!(read_snapshot(&no_begin).unwrap_err().contains("begin"));
    }

    /// A segment's records, then a torn tail of stale binary values (what a DMA buffer held
    /// before: every other offset claims a length near the record bound), then the fill's zeros.
    fn segment_with_binary_tail(segment: u64, junk: usize) -> (Vec<u8>, usize) {
        let value = Bytes::from([0x0fu8, 0, 0x0f, 0].repeat(3000));
        let mut buf = Vec::new();
        for version in 1..=3 {
            let record = Record::Commit {
                tx: None,
                version,
                writes: vec![(b("key"), Some(value.clone()))],
            };
            encode_at(&record, position_salt(segment, buf.len() as u64), &mut buf);
        }
        let end = buf.len();
        buf.extend_from_slice(&[0x0f, 0, 0x0f, 0].repeat(junk / 4));
        buf.resize(buf.len() + (1 << 20), 0);
        (buf, end)
    }

    /// Found in review: with binary values in the stale bytes after a torn tail, the look-ahead
    /// checksummed ~1 MB per offset, ran out of its budget within 9 KB and refused the start.
    #[test]
    fn looking_past_a_torn_tail_of_binary_values_finds_nothing() {
        let (buf, end) = segment_with_binary_tail(7, 32 * 1024);
        let scan = scan_segment(&buf, 7);
        assert_eq!(scan.valid_bytes, end);
        assert!(scan.tail.is_some());
        assert_eq!(look_past(&buf, end, 7), After::Nothing);
    }

    #[test]
    fn looking_past_binary_values_finds_the_record_after_them() {
        let (mut buf, end) = segment_with_binary_tail(7, 32 * 1024);
        let at = end + 32 * 1024 + 3;
        let mut record = Vec::new();
        encode_at(
            &Record::Epoch { epoch: 9 },
            position_salt(7, at as u64),
            &mut record,
        );
        buf[at..at + record.len()].copy_from_slice(&record);
        assert_eq!(look_past(&buf, end, 7), After::Record(at));
        // The same bytes where another segment's salt applies: stale, not evidence.
        assert_eq!(look_past(&buf, end, 8), After::Nothing);
    }

    /// `look_past` the slow way: every offset after `bad`, its claimed record checked whole.
    fn look_past_directly(buf: &[u8], bad: usize, segment: u64) -> After {
        for offset in bad + 1..buf.len() {
            if let Ok(Some(_)) = decode_at(&buf[offset..], position_salt(segment, offset as u64)) {
                return After::Record(offset);
            }
        }
        After::Nothing
    }

    /// `records_past` the slow way: every offset checked whole, going on at a found record's end.
    fn records_past_directly(buf: &[u8], bad: usize, segment: u64) -> Vec<(usize, Record)> {
        let mut found = Vec::new();
        let mut offset = bad + 1;
        while offset < buf.len() {
            match decode_at(&buf[offset..], position_salt(segment, offset as u64)) {
                Ok(Some((record, used))) => {
                    found.push((offset, record));
                    offset += used;
                }
                _ => offset += 1,
            }
        }
        found
    }

    proptest! {
        /// Records at their positions, junk that repeats a record header's shape, a damaged
        /// byte: the prefix-checksum look-ahead finds what checking every offset finds.
        #[test]
        fn look_past_finds_what_checking_every_offset_finds(
            values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8),
            junk in proptest::collection::vec(0u8..4, 0..300),
            damage in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            segment in 0u64..3,
        ) {
            let mut buf = Vec::new();
            for (version, value) in (1..).zip(&values) {
                let record = Record::Commit {
                    tx: None,
                    version,
                    writes: vec![(b("k"), Some(Bytes::from(value.clone())))],
                };
                encode_at(&record, position_salt(segment, buf.len() as u64), &mut buf);
            }
            // Bytes shaped like headers: small lengths, type bytes that exist.
            buf.extend(junk.iter().map(|&j| [0x01, 0x00, 0x0f, 0x00][j as usize]));
            let at = damage.index(buf.len());
            buf[at] ^= flip;
            let scan = scan_segment(&buf, segment);
            if let Some(tail) = scan.tail {
                prop_assert_eq!(
                    look_past(&buf, tail.offset, segment),
                    look_past_directly(&buf, tail.offset, segment)
                );
                prop_assert_eq!(
                    records_past(&buf, tail.offset, segment).collect::<Vec<_>>(),
                    records_past_directly(&buf, tail.offset, segment)
                );
            }
        }

        #[test]
        fn a_slice_checksum_from_prefixes_is_the_slice_checksum(
            buf in proptest::collection::vec(any::<u8>(), 0..5000),
            a in any::<usize>(),
            b in any::<usize>(),
        ) {
            let (a, b) = (a % (buf.len() + 1), b % (buf.len() + 1));
            let (start, end) = (a.min(b), a.max(b));
            let prefixes = Prefixes::new(&buf);
            prop_assert_eq!(prefixes.slice(start, end), crc32fast::hash(&buf[start..end]));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let scanned = scan(&bytes);
            prop_assert!(scanned.valid_bytes <= bytes.len());
            let _ = read_snapshot(&bytes);
        }

        #[test]
        fn framed_garbage_never_panics(type_byte in 0u8..12, payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            // Valid frame and checksum around arbitrary payloads: exercises the payload parser.
            let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&[0; 4]);
            frame.push(type_byte);
            frame.extend_from_slice(&payload);
            let crc = checksum(0, &frame[0..4], &frame[8..]);
            frame[4..8].copy_from_slice(&crc.to_le_bytes());
            if let Ok(Some((record, used))) = decode(&frame) {
                prop_assert_eq!(used, frame.len());
                let mut again = Vec::new();
                encode(&record, &mut again);
                prop_assert_eq!(again, frame);
            }
        }

        #[test]
        fn commits_round_trip(
            version in 1u64..,
            entries in proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 1..8),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
                1..6,
            ),
        ) {
            let writes = entries
                .into_iter()
                .map(|(key, value)| (Bytes::from(key), value.map(Bytes::from)))
                .collect();
            let record = Record::Commit { tx: None, version, writes };
            let mut buf = Vec::new();
            encode(&record, &mut buf);
            prop_assert_eq!(decode(&buf), Ok(Some((record, buf.len()))));
        }
    }
}
