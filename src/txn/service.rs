//! Drives one shard's transaction `Node` with real IO: its write-ahead log (group commit), the transaction mesh, a tick for timeouts, recovery at start and checkpoints; the only place txn code meets glommio.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::config::TxnConfig;
use crate::config::limits::{TX_RETRY_PAUSE_MAX, TX_RETRY_PAUSE_MIN};
use crate::mesh::Mesh;
use crate::runtime::monotonic_ms;
use crate::txn::op::{Op, TxError};
use crate::txn::record::{self, After, CorruptTail, Record, TailReason};
use crate::txn::twopc::{Action, ClientId, Event, Msg, Node, Outcome, Then};
use crate::wal::{self, Wal};

/// The transaction message class has its own mesh (one-way messages; the protocol never waits on
/// a reply, it waits on events).
pub type TxnMesh = Mesh<Msg, ()>;

/// How often the node gets a `Tick` for its prepare and resolve deadlines.
const TICK: Duration = Duration::from_millis(50);
/// A client gives up waiting after this long (the node has replied or timed out long before).
const CLIENT_WAIT: Duration = Duration::from_secs(10);
/// Bytes reserved for a record before encoding it: a vote, decision or two-key prepare is smaller.
const RECORD_BYTES_TYPICAL: usize = 128;

/// What recovery found in the log, for the start-up report.
#[derive(Debug, Default)]
pub struct Recovered {
    pub records: Vec<Record>,
    pub segment_next: u64,
    /// Segments older than the newest complete checkpoint: safe to delete once `checkpoint` is
    /// synced.
    pub superseded: Vec<PathBuf>,
    /// The segment holding that checkpoint. An earlier run with `--fsync off` may have written it
    /// without an fdatasync: it is synced before `superseded` go.
    pub checkpoint: Option<PathBuf>,
    /// Segments to cut where reading stopped (`Recovered::cut`).
    cuts: Vec<Cut>,
    /// Bytes of log read, for the start-up report.
    pub log_bytes: u64,
}

/// A segment that reading stopped short of its end, and the torn write it ends in (None when
/// only zeros follow): where, and how many whole records of that write were stored after it.
#[derive(Debug)]
struct Cut {
    path: PathBuf,
    valid_bytes: usize,
    torn: Option<(CorruptTail, usize)>,
}

/// Free space beyond the store's own bytes a start-up checkpoint wants: its segment's first
/// zero-filled chunks and this run's first records.
const CHECKPOINT_SPARE_BYTES: u64 = 4 * wal::PREFILL_CHUNK_BYTES;

/// Bytes an unprivileged writer may still use in the file system holding `dir`; None when it
/// cannot be told.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stats` a buffer statvfs fills on success.
    if unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stats`.
    let stats = unsafe { stats.assume_init() };
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// A log replay this long is announced on stderr (it can take seconds).
const REPLAY_ANNOUNCE_BYTES: u64 = 16 << 20;

/// One segment as start-up read it, before anything is changed.
struct Scanned {
    path: PathBuf,
    records: Vec<Record>,
    /// Where reading stopped short of the file's end (a bad record or the fill's zeros): the
    /// file is cut there once the log is known to be whole.
    cut_at: Option<usize>,
    /// Where reading stopped short, and what follows in the same segment: a bad record (in a
    /// segment with `SegmentStart`, zeros too where anything follows them).
    bad: Option<(CorruptTail, Past)>,
    /// The file's length.
    bytes: u64,
}

/// `read_log` and then `Recovered::cut`: a shard's log, read and cut at its torn tail.
pub fn recover(dir: &Path, shard: usize) -> std::io::Result<Recovered> {
    let recovered = read_log(dir, shard)?;
    recovered.cut(shard)?;
    Ok(recovered)
}

/// Reads a shard's log segments, changing nothing: the newest segment that starts with a
/// complete checkpoint, and everything after it. A bad record with nothing intact after it, in
/// its segment or a later one, is a torn tail: nothing before it is lost, and `Recovered::cut`
/// cuts it off; so is a bad record (or zeros) in a batch that nothing says was synced (`scan`).
/// A bad record that intact records follow is otherwise damage, not a torn write (records are
/// salted by position, so stale bytes never validate where they lie): an error, because cutting
/// there would drop acknowledged transactions, on this shard only. So is a whole record of a
/// type this build does not know (a newer build's). Every shard's log is read before any is cut
/// (runtime::run), so a refused start changes no shard's files.
pub fn read_log(dir: &Path, shard: usize) -> std::io::Result<Recovered> {
    let segments = wal::segments(dir, shard)?;
    let segment_next = match segments.last() {
        None => 0,
        Some((n, _)) if *n <= wal::SEGMENT_NUMBER_START_MAX => n + 1,
        // Its successors would soon have names no start reads back: what runs log would be lost.
        Some((_, path)) => {
            return Err(std::io::Error::other(format!(
                "log {} is numbered too close to the last segment number a name holds (a \
                 stray file?)",
                path.display()
            )));
        }
    };
    let mut scanned = Vec::with_capacity(segments.len());
    for (number, path) in segments {
        let bytes = std::fs::read(&path)?;
        scanned.push(scan(&bytes, shard, number, path)?);
    }
    // The newest segment with a complete checkpoint; a segment that starts a checkpoint it never
    // finished (a crash mid-checkpoint) holds nothing else and is skipped.
    let start = scanned
        .iter()
        .rposition(|segment| complete_checkpoint(&segment.records))
        .unwrap_or(0);
    check_damage(&scanned, start).map_err(std::io::Error::other)?;
    let mut recovered = Recovered {
        segment_next,
        ..Default::default()
    };
    for (index, segment) in scanned.into_iter().enumerate() {
        let Scanned {
            path,
            records,
            cut_at,
            bad,
            bytes,
        } = segment;
        recovered.log_bytes += bytes;
        // Superseded segments are deleted once the checkpoint is synced; nothing is read from
        // them, and they are not cut.
        if index >= start
            && let Some(valid_bytes) = cut_at
        {
            recovered.cuts.push(Cut {
                path: path.clone(),
                valid_bytes,
                torn: bad.map(|(tail, past)| {
                    let dropped = match past {
                        Past::Unproven { dropped } => dropped,
                        Past::Record(_) | Past::Synced { .. } => 0,
                    };
                    (tail, dropped)
                }),
            });
        }
        if index < start {
            recovered.superseded.push(path);
            continue;
        }
        if index == start && complete_checkpoint(&records) {
            recovered.checkpoint = Some(path.clone());
        }
        if torn_checkpoint(&records) {
            continue;
        }
        recovered.records.extend(
            records
                .into_iter()
                .filter(|r| !matches!(r, Record::SnapshotEnd { .. })),
        );
    }
    Ok(recovered)
}

impl Recovered {
    /// Cuts each segment where reading stopped (never appended to again, a restart opens a new
    /// segment, but the file is kept honest), synced: a cut lost to a power failure would bring
    /// the bad tail back in front of the segments this run writes, where it would read as
    /// damage. Only once every shard's log was read without error.
    pub fn cut(&self, shard: usize) -> std::io::Result<()> {
        self.say_torn(shard, "cut off there");
        for cut in &self.cuts {
            let file = std::fs::OpenOptions::new().write(true).open(&cut.path)?;
            file.set_len(cut.valid_bytes as u64)?;
            file.sync_all()?;
        }
        Ok(())
    }

    /// Says, for each segment whose reading stopped at bytes that are no record, where and why,
    /// and what becomes of the rest (`fate`: a start cuts it off, a reshard leaves it behind).
    pub fn say_torn(&self, shard: usize, fate: &str) {
        for cut in &self.cuts {
            if let Some((tail, dropped)) = &cut.torn {
                let after = match dropped {
                    0 => "nothing intact after it".to_string(),
                    n => format!("{n} whole records after it, of the same unsynced write"),
                };
                crate::log_line!(
                    "percore: shard {shard}: log {} ends at byte {} in bytes that are no record \
                     ({:?}, {after}): the padding of its last write, or a write a crash cut \
                     short, as expected after a crash, and then nothing synced is in it, nor \
                     anything acknowledged unless power was lost under --fsync off (a file cut \
                     short by anything but a crash of this server loses what it held past \
                     here): {fate}",
                    cut.path.display(),
                    tail.offset,
                    tail.reason
                );
            }
        }
    }
}

/// What follows the place where reading a segment stopped short (`scan`).
#[derive(Debug)]
enum Past {
    /// Nothing shows that the bytes there were ever synced: a torn write, cut off. `dropped`:
    /// the whole records stored after it, parts of the same unsynced write.
    Unproven { dropped: usize },
    /// A segment without `SegmentStart`: an intact record at this offset follows, so the bad
    /// record is damage (such a segment cannot say which write a record belongs to).
    Record(usize),
    /// The `BatchEnd` at `at` says the segment was synced through `synced_through`, past the
    /// bad record: damage to synced bytes.
    Synced { at: usize, synced_through: u64 },
}

/// Scans one segment's bytes and, past where reading stopped, looks for intact records.
///
/// In a segment that starts with `SegmentStart` every batch ends with a `BatchEnd` saying how far
/// the segment was synced before the batch was written. A power loss during a batch's sync can
/// leave any of its blocks stored and any not (a device orders the blocks of one write as it
/// likes), so bad bytes or zeros with whole records after them are a torn write unless a later
/// `BatchEnd` says they had been synced: such a batch was never acknowledged, and it is cut off
/// whole. A segment without `SegmentStart` (an older build's, a reshard's) is read by the older
/// rule: any intact record after a bad one is damage.
fn scan(bytes: &[u8], shard: usize, number: u64, path: PathBuf) -> std::io::Result<Scanned> {
    let scan = record::scan_segment(bytes, number);
    if let Some(Record::SegmentStart {
        shard: written_shard,
        segment: written_segment,
    }) = scan.records.first()
        && (*written_shard as usize, *written_segment) != (shard, number)
    {
        // Read under this name, its records would fail their checksums and be cut as torn.
        return Err(std::io::Error::other(format!(
            "log {} was written as shard {written_shard}'s segment {written_segment} (renamed or \
             copied by hand?); nothing was changed: give it back its name, wal-{written_shard}-\
             {written_segment:010}.log, or remove it",
            path.display(),
        )));
    }
    if let Some(CorruptTail {
        offset,
        reason: TailReason::UnknownType(kind),
    }) = scan.tail
    {
        // Cutting it off would drop acknowledged transactions a newer build wrote.
        return Err(std::io::Error::other(format!(
            "log {} holds a record of type {kind} at byte {offset}, unknown to this build \
             (written by a newer percore?); nothing was changed: run the newer build",
            path.display(),
        )));
    }
    let marked = matches!(scan.records.first(), Some(Record::SegmentStart { .. }));
    let bad = match scan.tail.clone() {
        None => None,
        Some(tail) if marked => {
            let mut dropped = 0;
            let mut proof = None;
            for (at, record) in record::records_past(bytes, tail.offset, number) {
                match record {
                    // Only where it can lie: after the batch it ends.
                    Record::BatchEnd {
                        start,
                        synced_through,
                    } if synced_through > tail.offset as u64 && start < at as u64 => {
                        proof = Some(Past::Synced { at, synced_through });
                        break;
                    }
                    record if record.is_log_marker() => {}
                    _ => dropped += 1,
                }
            }
            match proof {
                Some(proof) => Some((tail, proof)),
                // Zeros with nothing after them: the fill, the segment's clean end.
                None if tail.reason == TailReason::Zeroes && dropped == 0 => None,
                None => Some((tail, Past::Unproven { dropped })),
            }
        }
        Some(tail) if tail.reason == TailReason::Zeroes => None,
        Some(tail) => {
            let past = match record::look_past(bytes, tail.offset, number) {
                After::Record(at) => Past::Record(at),
                After::Nothing => Past::Unproven { dropped: 0 },
            };
            Some((tail, past))
        }
    };
    Ok(Scanned {
        path,
        bytes: bytes.len() as u64,
        records: scan
            .records
            .into_iter()
            .filter(|record| !record.is_log_marker())
            .collect(),
        cut_at: scan.tail.map(|_| scan.valid_bytes),
        bad,
    })
}

/// `SnapshotEnd` counts the snapshot records before it, and a checkpoint starts its segment.
fn complete_checkpoint(records: &[Record]) -> bool {
    matches!(records.first(), Some(Record::SnapshotBegin { .. }))
        && records
            .iter()
            .enumerate()
            .any(|(i, r)| matches!(r, Record::SnapshotEnd { records } if *records as usize == i))
}

fn torn_checkpoint(records: &[Record]) -> bool {
    matches!(records.first(), Some(Record::SnapshotBegin { .. }))
        && !records
            .iter()
            .any(|r| matches!(r, Record::SnapshotEnd { .. }))
}

/// Err (one line naming the file and byte) when the log is damaged rather than torn: a bad record
/// in or after the segment recovery starts at (`start`) with intact records after it that prove
/// it was synced (`Past`), in its segment, or any in a later one (a segment is synced when the
/// next is opened); or an incomplete checkpoint with no older segment left (older segments
/// are deleted only once a checkpoint is synced whole, so it was whole once). Bad records in
/// segments a later checkpoint supersedes do not matter: nothing is read from them.
fn check_damage(scanned: &[Scanned], start: usize) -> Result<(), String> {
    let damaged = |path: &Path, offset: usize, what: &str, evidence: String| {
        Err(format!(
            "log {} is damaged at byte {offset} ({what}) and {evidence}: not a torn write, so \
             nothing was cut or changed (cutting would drop acknowledged transactions); restore \
             the data dir from a backup",
            path.display()
        ))
    };
    if let Some(oldest) = scanned.first()
        && torn_checkpoint(&oldest.records)
        && !scanned.iter().any(|s| complete_checkpoint(&s.records))
    {
        let (offset, what) = match &oldest.bad {
            Some((tail, _)) => (tail.offset, format!("{:?}", tail.reason)),
            None => (oldest.cut_at.unwrap_or(0), "zeros".to_string()),
        };
        let evidence = "it held a checkpoint whose older segments are gone".to_string();
        return damaged(&oldest.path, offset, &what, evidence);
    }
    for (index, segment) in scanned.iter().enumerate().skip(start) {
        let Some((tail, past)) = &segment.bad else {
            continue;
        };
        let what = format!("{:?}", tail.reason);
        match past {
            Past::Record(at) => {
                let evidence = format!("an intact record follows at byte {at}");
                return damaged(&segment.path, tail.offset, &what, evidence);
            }
            Past::Synced { at, synced_through } => {
                let evidence = format!(
                    "the batch end at byte {at} says the segment was synced through byte \
                     {synced_through}"
                );
                return damaged(&segment.path, tail.offset, &what, evidence);
            }
            Past::Unproven { .. } => {}
        }
        if let Some(later) = scanned[index + 1..].iter().find(|s| !s.records.is_empty()) {
            let evidence = format!("intact records follow in {}", later.path.display());
            return damaged(&segment.path, tail.offset, &what, evidence);
        }
    }
    Ok(())
}

/// Why `transact` did not commit.
#[derive(Debug)]
pub enum TransactError {
    /// The ops break a bound (key, value, op count): a programming or input error, 400/413.
    Invalid(crate::txn::op::ParseError),
    /// The transaction ran and did not commit (412 failed op, 409 conflict, ...).
    Tx(TxError),
}

impl TransactError {
    /// True when nothing took effect and the same transaction may simply be sent again.
    pub fn retry_safe(&self) -> bool {
        matches!(self, TransactError::Tx(e) if e.retry_safe())
    }
}

/// Runs a transaction from a Rust handler on the current shard: the same ops, rules and
/// durability as `POST /kv/tx`, with typed results (one `OpResult` per op, in order). No
/// `[[access]]` rule is applied to its keys (`POST /kv/tx` applies them in its route): a
/// handler that acts for a client on keys the rules protect asks
/// `auth::middleware::access(&req)` first, as that route does.
///
/// ```no_run
/// use percore::txn::op::{Op, OpResult};
/// use percore::txn::service::{transact, TransactError};
/// # async fn transfer() {
/// let ops = vec![
///     Op::Add { key: "alice".into(), delta: -5, floor: Some(0) },
///     Op::Add { key: "bob".into(), delta: 5, floor: None },
/// ];
/// match transact(ops).await {
///     Ok(results) => assert!(matches!(results[0], OpResult::Add { .. })),
///     Err(e) if e.retry_safe() => { /* conflict or busy: nothing happened, retry */ }
///     Err(TransactError::Tx(e)) => eprintln!("{}", e.message()),
///     Err(TransactError::Invalid(e)) => eprintln!("{}", e.message),
/// }
/// # }
/// ```
pub async fn transact(ops: Vec<Op>) -> Result<Vec<crate::txn::op::OpResult>, TransactError> {
    let shard = crate::runtime::shard::current();
    crate::txn::op::validate(&ops, &shard.config.txn.limits).map_err(TransactError::Invalid)?;
    let txn = shard.txn.clone();
    txn.run(ops).await.map_err(TransactError::Tx)
}

/// A duration in [pause / 2, pause], picked by `random`.
fn upper_half(pause: Duration, random: u64) -> Duration {
    let half = pause / 2;
    half + Duration::from_nanos(random % ((pause - half).as_nanos() as u64 + 1))
}

struct ClientSlot {
    outcome: RefCell<Option<Outcome>>,
    waker: RefCell<Option<Waker>>,
    /// `monotonic_ms()` after which the tick answers `Unknown` (a sweep, not a timer per transaction).
    deadline_ms: u64,
}

#[derive(Default, Clone, Copy)]
pub struct TxnCounters {
    pub checkpoints: u64,
    /// Transactions of this shard's clients tried again after a conflict (`--tx-retry-ms`),
    /// and those that still met one when the time was up (answered 409).
    pub conflict_retries: u64,
    pub conflicts_answered: u64,
}

/// One shard's transaction service.
pub struct Txn {
    shard: usize,
    pub node: RefCell<Node>,
    pub wal: Rc<Wal>,
    mesh: Rc<TxnMesh>,
    dir: PathBuf,
    checkpoint_bytes: u64,
    /// `--tx-retry-ms`.
    retry: Duration,
    checkpointing: Cell<bool>,
    /// `wal.segment_appended()` right after the last checkpoint's snapshot: the log grown since is
    /// what `checkpoint_bytes` bounds (the snapshot itself does not count, or a partition larger
    /// than the bound would checkpoint without end).
    checkpoint_base: Cell<u64>,
    clients: RefCell<HashMap<ClientId, Rc<ClientSlot>>>,
    client_next: Cell<ClientId>,
    /// Steps waiting for the log to be durable through their position, in log order (appends
    /// are sequential), fed to the node by one task (`durability`) instead of a task each.
    durable_queue: RefCell<VecDeque<(u64, Then)>>,
    durable_waker: RefCell<Option<Waker>>,
    pub counters: Cell<TxnCounters>,
}

impl Txn {
    /// Recovers the shard's partition from its log as `read_log` read it, cuts the log's torn
    /// tail and opens a new log segment. Blocking IO at start-up only.
    pub async fn start(
        dir: &Path,
        config: &TxnConfig,
        mesh: Rc<TxnMesh>,
        recovered: Recovered,
    ) -> std::io::Result<Rc<Txn>> {
        let shard = mesh.shard();
        recovered.cut(shard)?;
        if recovered.log_bytes >= REPLAY_ANNOUNCE_BYTES {
            // Start-up waits for this; say why (a checkpoint bounds it: --checkpoint-bytes).
            crate::log_line!(
                "percore: shard {shard}: replaying {} MiB of log in {}",
                recovered.log_bytes >> 20,
                dir.display()
            );
        }
        let (node, actions) = Node::recover(
            shard,
            mesh.shard_count(),
            config.limits,
            &recovered.records,
            monotonic_ms(),
        );
        let wal = Wal::open(dir, shard, config.fsync, recovered.segment_next).await?;
        let txn = Rc::new(Txn {
            shard,
            node: RefCell::new(node),
            wal,
            mesh,
            dir: dir.to_path_buf(),
            checkpoint_bytes: config.checkpoint_bytes,
            retry: config.retry,
            checkpointing: Cell::new(false),
            checkpoint_base: Cell::new(0),
            clients: RefCell::new(HashMap::new()),
            client_next: Cell::new(0),
            durable_queue: RefCell::new(VecDeque::new()),
            durable_waker: RefCell::new(None),
            counters: Cell::new(TxnCounters::default()),
        });
        glommio::spawn_local(Self::durability(Rc::downgrade(&txn))).detach();
        // Superseded segments are older than a complete checkpoint, which must be on disk, not
        // only written (an earlier run's `--fsync off`), before they go.
        if let Some(checkpoint) = &recovered.checkpoint {
            std::fs::File::open(checkpoint)?.sync_data()?;
            for path in &recovered.superseded {
                let _ = std::fs::remove_file(path);
            }
        }
        txn.execute(actions);
        if !recovered.records.is_empty() {
            // Start this run's log with a checkpoint so older segments can go, where it fits:
            // a start after a full disk was freed wrote one the size of the store, failed the log
            // when the space ran out again, and left the disk full (found in review). Without
            // it the log goes on in its segments; the next checkpoint is due by
            // `--checkpoint-bytes` as usual.
            let needed = txn.node.borrow().partition.data_bytes() as u64 + CHECKPOINT_SPARE_BYTES;
            match free_bytes(dir) {
                Some(free) if free < needed => crate::log_line!(
                    "percore: shard {shard}: no start-up checkpoint: {} MiB free in {}, about {} \
                     MiB needed; the log goes on without one until space is freed",
                    free >> 20,
                    dir.display(),
                    needed.div_ceil(1 << 20)
                ),
                _ => txn.checkpoint(),
            }
        }
        glommio::spawn_local(Self::ticker(Rc::downgrade(&txn))).detach();
        // The server says "listening" only once transactions can run: this run's epoch record
        // must be durable first (until then the node answers Busy).
        while !txn.node.borrow().is_ready() {
            if txn.wal.durable(txn.wal.appended()).await.is_err() {
                let why = txn.wal.failure().unwrap_or_default();
                return Err(std::io::Error::other(format!(
                    "the write-ahead log failed during start-up: {why}"
                )));
            }
            glommio::yield_if_needed().await;
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        // Synced in every mode (one fdatasync a start): once every shard served, the log of
        // each holds records, which `wal::SERVED_FILE` lets a later start rely on.
        if let Err(e) = txn.wal.synced(txn.wal.appended()).await {
            let why = txn.wal.failure().unwrap_or_else(|| e.to_string());
            return Err(std::io::Error::other(format!(
                "the write-ahead log failed during start-up: {why}"
            )));
        }
        txn.wal.serving();
        Ok(txn)
    }

    async fn ticker(txn: std::rc::Weak<Txn>) {
        loop {
            glommio::timer::sleep(TICK).await;
            let Some(txn) = txn.upgrade() else { return };
            txn.feed(Event::Tick);
            txn.expire_clients(monotonic_ms());
        }
    }

    /// Answers `Unknown` to clients that waited past their deadline.
    fn expire_clients(&self, now_ms: u64) {
        for slot in self.clients.borrow().values() {
            if slot.deadline_ms <= now_ms && slot.outcome.borrow().is_none() {
                *slot.outcome.borrow_mut() = Some(Err(TxError::Unknown));
                if let Some(waker) = slot.waker.borrow_mut().take() {
                    waker.wake();
                }
            }
        }
    }

    /// Feeds `Event::Durable` for every queued step once the log is durable through it. Stops
    /// when the log fails: a failed log acknowledges nothing more (`log_failed`).
    async fn durability(txn: std::rc::Weak<Txn>) {
        loop {
            let next = std::future::poll_fn(|cx| {
                let Some(txn) = txn.upgrade() else {
                    return Poll::Ready(None);
                };
                let front = txn.durable_queue.borrow().front().map(|(lsn, _)| *lsn);
                match front {
                    Some(lsn) => Poll::Ready(Some((lsn, txn.wal.clone()))),
                    None => {
                        *txn.durable_waker.borrow_mut() = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            })
            .await;
            let Some((lsn, wal)) = next else { return };
            if wal.durable(lsn).await.is_err() {
                if let Some(txn) = txn.upgrade() {
                    txn.log_failed();
                }
                return;
            }
            let Some(txn) = txn.upgrade() else { return };
            let durable = wal.durable_lsn();
            loop {
                let ready = {
                    let mut queue = txn.durable_queue.borrow_mut();
                    match queue.front() {
                        Some((lsn, _)) if *lsn <= durable => queue.pop_front(),
                        _ => None,
                    }
                };
                let Some((_, then)) = ready else { break };
                txn.feed(Event::Durable(then));
            }
        }
    }

    /// Puts the node in its failed-log mode if the log failed and the node does not know yet.
    /// The durability task tells it when a commit's wait fails; a failure with nothing waiting
    /// (a checkpoint's segment switch on a full disk, after its commit was acknowledged) told
    /// nobody, and every request of the shard was then applied in memory and answered 504 for
    /// good instead of 503 `log_failed` (found in review).
    fn notice_log_failure(self: &Rc<Self>) {
        if self.wal.failure().is_some() && !self.node.borrow().is_log_failed() {
            self.log_failed();
        }
    }

    /// The log failed (or was closed under a late record): nothing appended will be durable.
    /// Steps the log made durable before it failed still run; the rest are answered now, not
    /// at their deadline (`never_durable`). A real failure (a full disk, an IO error) also
    /// makes the node refuse what needs the log from now on (`Node::fail_log`).
    ///
    /// The node is told first, so that a step run here that meets the failed log does not
    /// start this again; the clients it answers `Unknown` hear it only after the durable
    /// steps ran: a commit whose decision reached the disk before the failure, with the
    /// durability task not yet woken, answered 504 where its commit stood (the first answer
    /// to a client is the one it gets).
    fn log_failed(self: &Rc<Self>) {
        let unknown = match self.wal.failure() {
            Some(_) => self.node.borrow_mut().fail_log(),
            None => Vec::new(),
        };
        let durable = self.wal.durable_lsn();
        let queued: Vec<(u64, Then)> = self.durable_queue.borrow_mut().drain(..).collect();
        let mut never = Vec::new();
        for (lsn, then) in queued {
            if lsn <= durable {
                self.feed(Event::Durable(then));
            } else {
                never.push(then);
            }
        }
        self.execute(unknown);
        // What the steps above queued, after the failure, will not be durable either.
        never.extend(
            self.durable_queue
                .borrow_mut()
                .drain(..)
                .map(|(_, then)| then),
        );
        for then in never {
            self.never_durable(then);
        }
    }

    /// Answers a step whose log position will never be durable. A client's transaction, and a
    /// run forwarded from another shard, may or may not have reached the disk: `Unknown` (504),
    /// now rather than at the client's deadline. A participant's vote becomes a no
    /// (`LogFailed`): a part whose prepare is not durable must not vote yes, and a no is always
    /// safe before a yes (found in review: the coordinator waited out its prepare timeout and
    /// answered "unavailable"). Acks and decisions are left to the protocol's timeouts.
    fn never_durable(self: &Rc<Self>, then: Then) {
        let action = match then {
            Then::Reply { client, .. } => Action::Reply {
                client,
                outcome: Err(TxError::Unknown),
            },
            Then::RunResult { to, tx, .. } => Action::Send {
                to,
                msg: Msg::RunResult {
                    tx,
                    outcome: Err(TxError::Unknown),
                },
            },
            Then::Vote { tx, .. } => Action::Send {
                to: tx.coordinator as usize,
                msg: Msg::Vote {
                    tx,
                    vote: Err(TxError::LogFailed),
                },
            },
            _ => return,
        };
        self.execute(vec![action]);
    }

    /// The transaction mesh's counters, for `/stats`.
    pub fn mesh_counters(&self) -> &crate::mesh::MeshCounters {
        &self.mesh.counters
    }

    /// Handles a message from another shard's node.
    pub fn receive(self: &Rc<Self>, from: usize, msg: Msg) {
        self.feed(Event::Receive { from, msg });
    }

    /// Runs a client's transaction (already parsed and validated) and waits for its outcome.
    /// One that meets a lock (409: nothing happened) is tried again, after pauses that double
    /// from `TX_RETRY_PAUSE_MIN`, for up to `--tx-retry-ms`: most locks are gone within a log
    /// sync, such as those a cross-shard transaction keeps after its answer left. Each try is a
    /// transaction of its own, so serializability holds. Each pause is drawn from its upper
    /// half: two transactions that keep meeting each other's locks (the same keys taken in
    /// opposite orders) fall out of step instead of colliding on the same schedule until both
    /// give up (found in review).
    pub async fn run(self: &Rc<Self>, ops: Vec<Op>) -> Outcome {
        if self.retry.is_zero() {
            let outcome = self.run_once(ops).await;
            if let Err(TxError::Conflict) = outcome {
                self.count(|c| c.conflicts_answered += 1);
            }
            return outcome;
        }
        let give_up = std::time::Instant::now() + self.retry;
        let mut pause = TX_RETRY_PAUSE_MIN;
        loop {
            match self.run_once(ops.clone()).await {
                Err(TxError::Conflict) if std::time::Instant::now() + pause <= give_up => {
                    self.count(|c| c.conflict_retries += 1);
                    glommio::timer::sleep(upper_half(pause, rand::random())).await;
                    pause = (pause * 2).min(TX_RETRY_PAUSE_MAX);
                }
                Err(TxError::Conflict) => {
                    self.count(|c| c.conflicts_answered += 1);
                    return Err(TxError::Conflict);
                }
                outcome => return outcome,
            }
        }
    }

    fn count(&self, change: impl FnOnce(&mut TxnCounters)) {
        let mut counters = self.counters.get();
        change(&mut counters);
        self.counters.set(counters);
    }

    async fn run_once(self: &Rc<Self>, ops: Vec<Op>) -> Outcome {
        // Nothing that only reads is ever "unknown" (504): whatever happened to it (a deadline,
        // a log that will never be durable, a coordinator's failed log), it changed nothing,
        // and a retry is safe: 503 (found in review: plain GETs answered 504 after 10 s).
        let writes = ops.iter().any(Op::is_write);
        let client = self.client_next.get();
        self.client_next.set(client + 1);
        let slot = Rc::new(ClientSlot {
            outcome: RefCell::new(None),
            waker: RefCell::new(None),
            deadline_ms: monotonic_ms() + CLIENT_WAIT.as_millis() as u64,
        });
        self.clients.borrow_mut().insert(client, slot.clone());
        self.feed(Event::Begin { client, ops });
        let wait = std::future::poll_fn(|cx| match slot.outcome.borrow_mut().take() {
            Some(outcome) => Poll::Ready(outcome),
            None => {
                *slot.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        let outcome = wait.await;
        self.clients.borrow_mut().remove(&client);
        match outcome {
            Err(TxError::Unknown) if !writes => Err(TxError::Unavailable),
            outcome => outcome,
        }
    }

    fn feed(self: &Rc<Self>, event: Event) {
        let actions = self.node.borrow_mut().on_event(event, monotonic_ms());
        self.execute(actions);
    }

    fn execute(self: &Rc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, msg } if to == self.shard => {
                    // To ourselves: a fresh turn, so the node is never re-entered.
                    let txn = self.clone();
                    glommio::spawn_local(async move { txn.receive(txn.shard, msg) }).detach();
                }
                Action::Send { to, msg } => self.mesh.send(to, msg),
                Action::Persist { then, .. } if self.wal.is_failed() => {
                    self.notice_log_failure();
                    self.never_durable(then)
                }
                Action::Persist { record, then } => {
                    let lsn = match record {
                        Some(record) => self.append(&record),
                        None => self.wal.appended(),
                    };
                    let mut queue = self.durable_queue.borrow_mut();
                    assert!(
                        queue.back().is_none_or(|(last, _)| *last <= lsn),
                        "log positions are queued in order"
                    );
                    queue.push_back((lsn, then));
                    drop(queue);
                    if let Some(waker) = self.durable_waker.borrow_mut().take() {
                        waker.wake();
                    }
                }
                Action::Reply { client, outcome } => {
                    if let Some(slot) = self.clients.borrow_mut().remove(&client) {
                        *slot.outcome.borrow_mut() = Some(outcome);
                        if let Some(waker) = slot.waker.borrow_mut().take() {
                            waker.wake();
                        }
                    }
                }
            }
        }
        let grown = self
            .wal
            .segment_appended()
            .saturating_sub(self.checkpoint_base.get());
        if grown >= self.checkpoint_bytes && !self.checkpointing.get() && !self.wal.is_failed() {
            self.checkpoint();
        }
    }

    fn append(&self, record: &Record) -> u64 {
        let (segment, offset) = self.wal.next_position();
        // Most records (votes, decisions, small writes) fit: one allocation, no regrowth.
        let mut bytes = Vec::with_capacity(RECORD_BYTES_TYPICAL);
        record::encode_at(record, record::position_salt(segment, offset), &mut bytes);
        self.wal.append(bytes)
    }

    /// Snapshot and segment switch in one step; older segments are removed once it is synced
    /// (`Wal::synced`: with `--fsync off` durable only means written, and a snapshot that a power
    /// loss could take must not replace the segments it summarises).
    fn checkpoint(self: &Rc<Self>) {
        if self.wal.next_position().0 >= wal::SEGMENT_NUMBER_MAX {
            // The next segment's name would not be read back (found in review: a reshard over a
            // stray file with a huge number led there, and a restart lost every key). Only a
            // stray file gets here; the log grows instead, and says so once.
            if !self.checkpointing.replace(true) {
                crate::log_line!(
                    "percore: shard {}: no segment number is left for a checkpoint; the log \
                     grows without one (a stray segment file with a huge number?)",
                    self.shard
                );
            }
            return;
        }
        self.checkpointing.set(true);
        let snapshot = self.node.borrow().snapshot();
        let segment = self.wal.switch_segment();
        let mut lsn = self.wal.appended();
        for record in &snapshot {
            lsn = self.append(record);
        }
        self.checkpoint_base.set(self.wal.segment_appended());
        let txn = self.clone();
        glommio::spawn_local(async move {
            if txn.wal.synced(lsn).await.is_ok() {
                if let Ok(segments) = wal::segments(&txn.dir, txn.shard) {
                    for (_, path) in segments.into_iter().filter(|(n, _)| *n < segment) {
                        let _ = std::fs::remove_file(path);
                    }
                }
                txn.count(|c| c.checkpoints += 1);
            } else {
                // The switch or the snapshot's records failed the log, maybe with no commit
                // waiting on it to say so.
                txn.notice_log_failure();
            }
            txn.checkpointing.set(false);
        })
        .detach();
    }

    /// Syncs the log at shutdown, with one more record after the last: the node's epoch again
    /// (recovery takes the largest, so it changes nothing). A damaged last record then reads as
    /// damage (an intact record follows it) and refuses the start, where it would have read as
    /// a torn tail and been cut, its acknowledged transaction with it (found in review). After
    /// a crash the last record has no such witness: that tail is cut, as it must be. The log is
    /// synced before the witness, so the witness is a batch of its own whose end says so: it
    /// proves nothing of bytes its batch end does not say were synced (`scan`), such as records
    /// that would have shared its batch (found in review), or all of them with `--fsync off`.
    pub async fn close(&self) {
        // Before the wait below: a segment switch waiting for a file descriptor stops waiting.
        self.wal.begin_close();
        if !self.wal.is_failed() {
            // A failure here fails the log: the close below says so.
            let _ = self.wal.synced(self.wal.appended()).await;
            let epoch = self.node.borrow().epoch();
            self.append(&Record::Epoch { epoch });
        }
        // A log that failed while open said so when it failed.
        if let Err(e) = self.wal.close().await
            && self.wal.failure().is_none()
        {
            crate::log_line!("percore: shard {}: closing the log: {e}", self.shard);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn retry_pauses_are_spread_over_the_upper_half() {
        let pause = Duration::from_micros(1000);
        let mut random = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        let mut x = 0;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            x = rand::RngCore::next_u64(&mut random);
            let drawn = upper_half(pause, x);
            assert!(drawn >= pause / 2 && drawn <= pause, "{drawn:?}");
            seen.insert(drawn.as_micros());
        }
        assert!(seen.len() > 400, "{} distinct pauses", seen.len());
        assert_eq!(upper_half(Duration::ZERO, x), Duration::ZERO);
        assert_eq!(
            upper_half(Duration::from_nanos(1), u64::MAX),
            Duration::from_nanos(1)
        );
    }

    fn commit(version: u64) -> Record {
        let key = Bytes::from(format!("key-{version}"));
        Record::Commit {
            tx: None,
            version,
            writes: vec![(key, Some(Bytes::from(vec![b'v'; 20])))],
        }
    }

    /// The bytes of a segment `segment` holding `records`, salted by position as the log writes them.
    fn encode_segment(records: &[Record], segment: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        for r in records {
            let salt = record::position_salt(segment, bytes.len() as u64);
            record::encode_at(r, salt, &mut bytes);
        }
        bytes
    }

    /// A fresh, empty temp dir, removed when the returned guard drops.
    fn temp_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("percore-recover-{name}-"))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn a_log_cut_anywhere_in_its_last_record_recovers_every_earlier_record() {
        let records: Vec<Record> = (1..=4).map(commit).collect();
        let whole = encode_segment(&records, 0);
        let last_start = encode_segment(&records[..3], 0).len();
        let tmp = temp_dir("cut");
        let dir = tmp.path().to_path_buf();
        for cut in last_start..whole.len() {
            std::fs::write(wal::segment_path(&dir, 0, 0), &whole[..cut]).unwrap();
            let recovered = recover(&dir, 0).unwrap();
            assert_eq!(recovered.records, records[..3], "cut at byte {cut}");
            assert_eq!(recovered.segment_next, 1, "a restart writes a new segment");
            let len = std::fs::metadata(wal::segment_path(&dir, 0, 0))
                .unwrap()
                .len();
            assert_eq!(len as usize, last_start, "the torn tail is cut off");
        }
        // The whole log, with the zero padding a DMA sync leaves, recovers everything.
        let mut padded = whole.clone();
        padded.resize(whole.len() + 4096, 0);
        std::fs::write(wal::segment_path(&dir, 0, 0), &padded).unwrap();
        assert_eq!(recover(&dir, 0).unwrap().records, records);
    }

    #[test]
    fn recovery_starts_at_the_newest_complete_checkpoint() {
        let tmp = temp_dir("checkpoint");
        let dir = tmp.path().to_path_buf();
        std::fs::write(
            wal::segment_path(&dir, 2, 0),
            encode_segment(&[commit(1), commit(2)], 0),
        )
        .unwrap();
        let checkpoint = vec![
            Record::SnapshotBegin { version_next: 3 },
            Record::SnapshotEntries {
                entries: vec![
                    (Bytes::from("key-1"), Bytes::from("a"), 1),
                    (Bytes::from("key-2"), Bytes::from("b"), 2),
                ],
            },
            Record::SnapshotEnd { records: 2 },
        ];
        let mut segment1 = checkpoint.clone();
        segment1.push(commit(3));
        std::fs::write(wal::segment_path(&dir, 2, 1), encode_segment(&segment1, 1)).unwrap();
        // Segment 2: a checkpoint torn before its end (a crash mid-checkpoint), its torn record
        // cut off by the start that then wrote segment 3.
        let torn = encode_segment(&checkpoint[..2], 2);
        std::fs::write(wal::segment_path(&dir, 2, 2), &torn).unwrap();
        std::fs::write(
            wal::segment_path(&dir, 2, 3),
            encode_segment(&[commit(4)], 3),
        )
        .unwrap();

        let recovered = recover(&dir, 2).unwrap();
        let mut expected = checkpoint[..2].to_vec();
        expected.push(commit(3));
        expected.push(commit(4));
        assert_eq!(recovered.records, expected);
        assert_eq!(recovered.segment_next, 4);
        assert_eq!(recovered.superseded, vec![wal::segment_path(&dir, 2, 0)]);
    }

    /// Found by tests/kv.rs under kill -9: a DMA sync pads a segment's tail with an unzeroed,
    /// reused buffer, so whole, checksummed records of the previous segment (at the same offsets)
    /// can follow the last real record. Salted by position, they fail their checksum.
    #[test]
    fn stale_records_after_the_tail_are_not_replayed() {
        let tmp = temp_dir("stale");
        let dir = tmp.path().to_path_buf();
        let old: Vec<Record> = (1..=6).map(commit).collect();
        let old_bytes = encode_segment(&old, 4);
        let new: Vec<Record> = (7..=8).map(commit).collect();
        let mut new_bytes = encode_segment(&new, 5);
        // The rest of the block is what the reused buffer held: the old segment's bytes.
        new_bytes.extend_from_slice(&old_bytes[new_bytes.len()..]);
        std::fs::write(wal::segment_path(&dir, 0, 5), &new_bytes).unwrap();
        assert_eq!(recover(&dir, 0).unwrap().records, new);
        // The same stale bytes from the same segment at another offset fail too.
        let mut same = encode_segment(&old[..2], 5);
        let tail = encode_segment(&old[..2], 5);
        same.extend_from_slice(&tail);
        std::fs::write(wal::segment_path(&dir, 0, 5), &same).unwrap();
        assert_eq!(recover(&dir, 0).unwrap().records, old[..2]);
    }

    /// Found in review: recovery took any bad record for the end of the log and cut everything
    /// after it, intact committed records included (on one shard only: a cross-shard
    /// transaction kept its other half). A bad record with a record after it that validates at
    /// its own position is damage: recovery stops, names the file and byte, and changes nothing.
    #[test]
    fn damage_before_intact_records_stops_recovery_and_changes_nothing() {
        let records: Vec<Record> = (1..=6).map(commit).collect();
        let whole = encode_segment(&records, 3);
        let second = encode_segment(&records[..1], 3).len();
        let third = encode_segment(&records[..2], 3).len();
        let last = encode_segment(&records[..5], 3).len();
        // (byte flipped, where recovery must say the damage is)
        let cases = [
            (second, second),        // the length field
            (second + 5, second),    // the checksum
            (second + 8, second),    // the type
            (second + 20, second),   // the payload
            (third - 1, second),     // its last byte
            (0, 0),                  // the first record
            (last + 10, usize::MAX), // the last record: nothing follows, a torn tail
        ];
        let tmp = temp_dir("damage");
        let dir = tmp.path().to_path_buf();
        let path = wal::segment_path(&dir, 0, 3);
        for (flip, at) in cases {
            let mut bytes = whole.clone();
            bytes[flip] ^= 0x40;
            bytes.resize(bytes.len() + 64 * 1024, 0); // the fill after the last record
            std::fs::write(&path, &bytes).unwrap();
            let result = recover(&dir, 0);
            if at == usize::MAX {
                assert_eq!(result.unwrap().records, records[..5], "flip at {flip}");
                continue;
            }
            let error = result.unwrap_err().to_string();
            assert!(
                error.contains(&path.display().to_string())
                    && error.contains(&format!("damaged at byte {at} "))
                    && !error.contains('\n'),
                "flip at {flip}: {error}"
            );
            assert_eq!(
                std::fs::read(&path).unwrap(),
                bytes,
                "flip at {flip}: unchanged"
            );
        }
        // A bad last record with intact records in a later segment is damage too.
        let mut bytes = whole.clone();
        bytes[last + 10] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let later = wal::segment_path(&dir, 0, 4);
        std::fs::write(&later, encode_segment(&[commit(7)], 4)).unwrap();
        let error = recover(&dir, 0).unwrap_err().to_string();
        assert!(
            error.contains(&format!("damaged at byte {last} "))
                && error.contains(&later.display().to_string()),
            "{error}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "unchanged");
        // A later segment with nothing valid in it (a start that crashed before writing) is
        // no evidence: the tail is torn, and cut.
        std::fs::write(&later, vec![0; 4096]).unwrap();
        assert_eq!(recover(&dir, 0).unwrap().records, records[..5]);
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, last);
    }

    /// Found in review: one flipped byte in a checkpoint's snapshot made recovery skip it as a
    /// checkpoint torn by a crash, and the shard started empty (its older segments were long
    /// deleted). A checkpoint whose older segments are gone was whole once: its damage stops the
    /// start, wherever it lies, and so does damage to the checkpoint before later records.
    #[test]
    fn a_damaged_checkpoint_stops_recovery_and_changes_nothing() {
        let checkpoint = vec![
            Record::SnapshotBegin { version_next: 3 },
            Record::SnapshotEntries {
                entries: vec![
                    (Bytes::from("key-1"), Bytes::from("a"), 1),
                    (Bytes::from("key-2"), Bytes::from("b"), 2),
                ],
            },
            Record::SnapshotEnd { records: 2 },
        ];
        let whole = encode_segment(&checkpoint, 5);
        let entries = encode_segment(&checkpoint[..1], 5).len();
        let end = encode_segment(&checkpoint[..2], 5).len();
        let tmp = temp_dir("damaged-checkpoint");
        let dir = tmp.path().to_path_buf();
        let path = wal::segment_path(&dir, 1, 5);
        // In the entries (the end record follows), and in the end record (nothing follows).
        for (flip, at) in [(entries + 12, entries), (end + 10, end)] {
            let mut bytes = whole.clone();
            bytes[flip] ^= 0x01;
            bytes.resize(bytes.len() + 4096, 0);
            std::fs::write(&path, &bytes).unwrap();
            let error = recover(&dir, 1).unwrap_err().to_string();
            assert!(
                error.contains(&format!("damaged at byte {at} ")),
                "flip at {flip}: {error}"
            );
            assert_eq!(
                std::fs::read(&path).unwrap(),
                bytes,
                "flip at {flip}: unchanged"
            );
        }
        // With the segment before it still there, a checkpoint without its end is one a crash
        // interrupted: skipped, and the older segment replayed.
        std::fs::write(
            wal::segment_path(&dir, 1, 4),
            encode_segment(&[commit(1)], 4),
        )
        .unwrap();
        std::fs::write(&path, &whole[..end + 3]).unwrap();
        assert_eq!(recover(&dir, 1).unwrap().records, vec![commit(1)]);
    }

    /// Writes `batches` with the real log (shard 0, segment 0), each appended whole and then
    /// waited for (one group commit each); `sync_after` asks for a sync after that batch (what a
    /// checkpoint does with `--fsync off`). Leaves the file as a power loss right after the last
    /// batch was written would, had the device stored every block: no close. Returns the
    /// segment's bytes and each record's offset (log markers included).
    fn write_batches(
        dir: &Path,
        mode: wal::FsyncMode,
        batches: Vec<Vec<Record>>,
        sync_after: Option<usize>,
    ) -> (Vec<u8>, Vec<(usize, Record)>) {
        let dir2 = dir.to_path_buf();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let wal = Wal::open(&dir2, 0, mode, 0).await.unwrap();
                for (index, batch) in batches.iter().enumerate() {
                    let mut lsn = 0;
                    for record in batch {
                        let (segment, offset) = wal.next_position();
                        let mut bytes = Vec::new();
                        record::encode_at(
                            record,
                            record::position_salt(segment, offset),
                            &mut bytes,
                        );
                        lsn = wal.append(bytes);
                    }
                    wal.durable(lsn).await.unwrap();
                    if sync_after == Some(index) {
                        wal.synced(lsn).await.unwrap();
                    }
                }
            })
            .unwrap()
            .join()
            .unwrap();
        let bytes = std::fs::read(wal::segment_path(dir, 0, 0)).unwrap();
        let mut records = Vec::new();
        let mut offset = 0;
        let salt = |offset: usize| match offset {
            0 => record::SEGMENT_START_SALT,
            _ => record::position_salt(0, offset as u64),
        };
        while let Ok(Some((record, used))) = record::decode_at(&bytes[offset..], salt(offset)) {
            records.push((offset, record));
            offset += used;
        }
        (bytes, records)
    }

    /// A commit of a 300-byte value: a batch of six spans several 512-byte sectors.
    fn big_commit(version: u64) -> Record {
        Record::Commit {
            tx: None,
            version,
            writes: vec![(
                Bytes::from(format!("key-{version}")),
                Some(Bytes::from(vec![b'v'; 300])),
            )],
        }
    }

    /// A power loss during a batch's fdatasync can leave any of its blocks stored and any not: a
    /// device orders the blocks of one write as it likes. Recovery used to read a
    /// stored block after a lost one as damage, refused to start, and said to restore a backup,
    /// though nothing in that batch was ever acknowledged. Each batch now ends with a
    /// `BatchEnd` saying how far the segment was synced before it: a bad record that no later
    /// batch end says was synced is a torn write, cut off with the rest of its batch; one that a
    /// later batch end covers is damage, and stops the start as before.
    #[test]
    fn a_batch_torn_by_a_power_loss_is_cut_off_and_damage_to_a_synced_one_is_refused() {
        let batches: Vec<Vec<Record>> = vec![
            (1..=3).map(big_commit).collect(),
            (4..=6).map(big_commit).collect(),
            (7..=12).map(big_commit).collect(),
        ];
        let tmp = temp_dir("power-loss");
        let dir = tmp.path().to_path_buf();
        let path = wal::segment_path(&dir, 0, 0);
        let (whole, at) = write_batches(&dir, wal::FsyncMode::Batch, batches.clone(), None);
        // at: SegmentStart, v1-v3, end, v4-v6, end, v7-v12, end.
        assert_eq!(at.len(), 1 + 3 + 1 + 3 + 1 + 6 + 1, "{at:?}");
        assert!(matches!(at[15].1, Record::BatchEnd { .. }));
        let commits = |versions: std::ops::RangeInclusive<u64>| -> Vec<Record> {
            versions.map(big_commit).collect()
        };
        // What a lost block reads as: the fill's zeros, or stale bytes a DMA sync left there.
        let stale: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        let lost = |index: usize, fill: &dyn Fn(usize) -> u8| {
            let mut bytes = whole.clone();
            // The last record is a batch end: a frame and two u64s.
            let to = at
                .get(index + 1)
                .map_or(at[index].0 + record::FRAME_HEADER_BYTES + 16, |next| next.0);
            let from = at[index].0;
            (from..to).for_each(|i| bytes[i] = fill(i));
            bytes
        };
        let zero = |_: usize| 0u8;
        let garbage = |i: usize| stale[i % 4096];
        // (record lost, how, records recovered, or Err(the batch end that proves damage))
        type Case<'a> = (usize, &'a dyn Fn(usize) -> u8, Result<Vec<Record>, usize>);
        let cases: Vec<Case> = vec![
            (10, &garbage, Ok(commits(1..=7))), // v8, inside the last batch
            (10, &zero, Ok(commits(1..=7))),
            (9, &garbage, Ok(commits(1..=6))), // the last batch's first record
            (11, &zero, Ok(commits(1..=8))),
            (15, &garbage, Ok(commits(1..=12))), // only its end: every record whole
            (6, &garbage, Err(15)),              // v5: the last batch end covers it
            (6, &zero, Err(15)),
            (8, &garbage, Err(15)), // the second batch's end
            (1, &garbage, Err(8)),  // v1: the next batch's end covers it
        ];
        for (index, fill, expected) in cases {
            let bytes = lost(index, fill);
            std::fs::write(&path, &bytes).unwrap();
            let result = recover(&dir, 0);
            let lost_at = at[index].0;
            match expected {
                Ok(records) => {
                    let recovered = result.unwrap_or_else(|e| panic!("record {index} lost: {e}"));
                    assert_eq!(recovered.records, records, "record {index} lost");
                    let len = std::fs::metadata(&path).unwrap().len() as usize;
                    assert_eq!(len, lost_at, "record {index} lost: cut there");
                }
                Err(proof) => {
                    let Record::BatchEnd { start, .. } = at[proof].1 else {
                        unreachable!()
                    };
                    let error = result.unwrap_err().to_string();
                    assert!(
                        error.contains(&format!("damaged at byte {lost_at} "))
                            && error.contains(&format!(
                                "batch end at byte {} says the segment was synced through byte \
                                 {start}",
                                at[proof].0,
                            ))
                            && !error.contains('\n'),
                        "record {index} lost: {error}"
                    );
                    assert_eq!(std::fs::read(&path).unwrap(), bytes, "unchanged");
                }
            }
        }

        // With --fsync off nothing is synced between batches: a lost block before the last
        // batch is a torn write too, unless a sync (a checkpoint's) covered it.
        let (whole, at) = write_batches(&dir, wal::FsyncMode::Off, batches.clone(), None);
        let mut bytes = whole.clone();
        (at[6].0..at[7].0).for_each(|i| bytes[i] = 0xAB);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(recover(&dir, 0).unwrap().records, commits(1..=4));
        let (whole, at) = write_batches(&dir, wal::FsyncMode::Off, batches, Some(1));
        let mut bytes = whole.clone();
        (at[6].0..at[7].0).for_each(|i| bytes[i] = 0xAB);
        std::fs::write(&path, &bytes).unwrap();
        let error = recover(&dir, 0).unwrap_err().to_string();
        assert!(
            error.contains(&format!(
                "batch end at byte {} says the segment was synced through byte {}",
                at[15].0, at[9].0
            )),
            "{error}"
        );
    }

    /// A segment names the shard and segment it was written as. Renamed by hand, its records
    /// (salted with the old number) used to fail their checksums from the first byte on and be
    /// cut off as a torn write, the whole file with them; copied to another shard's name, its
    /// keys would be replayed on a shard that does not own them. Both now stop the start.
    #[test]
    fn a_segment_renamed_or_copied_by_hand_stops_recovery_and_changes_nothing() {
        let tmp = temp_dir("renamed");
        let dir = tmp.path().to_path_buf();
        let batches = vec![(1..=3).map(big_commit).collect()];
        let (bytes, _) = write_batches(&dir, wal::FsyncMode::Batch, batches, None);
        let written = wal::segment_path(&dir, 0, 0);
        for (shard, number) in [(0, 4), (1, 0)] {
            let path = wal::segment_path(&dir, shard, number);
            std::fs::rename(&written, &path).unwrap();
            let error = read_log(&dir, shard).unwrap_err().to_string();
            assert!(
                error.contains("was written as shard 0's segment 0")
                    && error.contains("wal-0-0000000000.log")
                    && !error.contains('\n'),
                "as shard {shard}'s segment {number}: {error}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "unchanged");
            std::fs::rename(&path, &written).unwrap();
        }
        assert_eq!(
            recover(&dir, 0).unwrap().records,
            (1..=3).map(big_commit).collect::<Vec<_>>()
        );
    }

    /// A torn record in front of a large zero fill: the look past it skips zero runs, so this
    /// takes one pass over the fill, not one per byte.
    #[test]
    fn a_torn_record_before_a_64_mib_fill_is_cut() {
        let records: Vec<Record> = (1..=3).map(commit).collect();
        let mut bytes = encode_segment(&records, 0);
        let end = bytes.len();
        bytes.truncate(end - 5);
        bytes.extend_from_slice(&[0xAB; 5]);
        bytes.resize(64 << 20, 0);
        let tmp = temp_dir("fill");
        let dir = tmp.path().to_path_buf();
        std::fs::write(wal::segment_path(&dir, 0, 0), &bytes).unwrap();
        assert_eq!(recover(&dir, 0).unwrap().records, records[..2]);
    }

    /// A newer build's record type is not a torn tail: cutting it off would lose what it and
    /// everything after it acknowledged.
    #[test]
    fn a_record_of_an_unknown_type_stops_recovery_and_changes_nothing() {
        let tmp = temp_dir("unknown-type");
        let dir = tmp.path().to_path_buf();
        let known: Vec<Record> = (1..=3).map(commit).collect();
        let mut bytes = encode_segment(&known, 6);
        let at = bytes.len();
        record::frame_at(
            200,
            record::position_salt(6, at as u64),
            &mut bytes,
            |out| out.extend_from_slice(b"a record from the future"),
        );
        bytes.extend_from_slice(&[0; 4096]);
        let path = wal::segment_path(&dir, 0, 6);
        std::fs::write(&path, &bytes).unwrap();
        let error = recover(&dir, 0).unwrap_err().to_string();
        assert!(
            error.contains("type 200") && error.contains(&format!("byte {at}")),
            "{error}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the log is left as it was"
        );
        // With a broken checksum the same frame is a damaged tail, cut off as before.
        bytes[at + 4] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(recover(&dir, 0).unwrap().records, known);
    }
}
