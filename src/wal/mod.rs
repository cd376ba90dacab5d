//! One shard's write-ahead log: appends opaque records to numbered segment files with glommio DMA writes and group commit (many appends share one fdatasync); never interprets a record, and frames its batches with two markers of its own.
//!
//! A record is acknowledged only once `durable(lsn)` resolves. Appends never wait: they go to an
//! in-memory batch that the flusher task writes and syncs while the next batch fills. A restart
//! never appends to an old segment (its tail may hold DMA padding or a torn record): it opens a
//! new one, and recovery reads all segments in order.
//!
//! Segments are zero-filled ahead of the writer (`PREFILL_CHUNK_BYTES`), so a group commit
//! overwrites blocks inside the file: its fdatasync then flushes the data alone, where one that
//! grew the file also had to write the inode. Zeros after the last record read as a clean end
//! (`TailReason::Zeroes`).
//!
//! Each segment starts with a `SegmentStart` record, synced before any batch, and each batch
//! (one group commit) ends with a `BatchEnd` record written with it: where the batch began and
//! how far the segment was synced before it. Recovery reads them to tell a batch that a power
//! loss left half-stored (unacknowledged: cut off) from damage to synced records (refused):
//! a device may store the blocks of one unsynced write in any order (txn/service.rs `scan`).

use std::cell::{Cell, RefCell};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::io::{DmaFile, DmaStreamWriter, DmaStreamWriterBuilder};

use crate::config::limits::SHARDS_MAX;
use crate::txn::record::{self, Record};

/// Bytes of the `SegmentStart` record every segment this build writes starts with (a frame, a
/// u32 and a u64).
pub const SEGMENT_START_BYTES: u64 = record::FRAME_HEADER_BYTES as u64 + 12;

/// The `SegmentStart` record of `shard`'s segment `segment`, framed for offset 0.
fn segment_start(shard: usize, segment: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SEGMENT_START_BYTES as usize);
    let start = Record::SegmentStart {
        shard: shard as u32,
        segment,
    };
    record::encode_at(&start, record::SEGMENT_START_SALT, &mut bytes);
    debug_assert_eq!(bytes.len() as u64, SEGMENT_START_BYTES);
    bytes
}

/// When a commit is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncMode {
    /// Each record gets its own fdatasync before it is acknowledged: slowest, no sharing.
    Always,
    /// Group commit: every record appended while a sync runs shares the next fdatasync.
    Batch,
    /// Group commit without the fdatasync (as Redis' appendfsync no): every batch is written to
    /// the file before it is acknowledged, so a process crash (kill -9, a panic) loses nothing
    /// acknowledged; a power loss or kernel crash can lose what the device had not stored yet.
    /// Checkpoints are synced all the same (`Wal::synced`): they delete older segments.
    Off,
}

impl std::str::FromStr for FsyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<FsyncMode, String> {
        match s {
            "always" => Ok(FsyncMode::Always),
            "batch" => Ok(FsyncMode::Batch),
            "off" => Ok(FsyncMode::Off),
            _ => Err(format!("'{s}' is not one of always, batch, off")),
        }
    }
}

/// DMA write buffer size. glommio writes a whole buffer on every sync (padded with whatever the
/// buffer memory held before: the reason records are salted by position, txn/record.rs), so a
/// small buffer keeps each group commit's write small; larger records span several buffers.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// Bytes of a `BatchEnd` record: a frame and two u64s.
const BATCH_END_BYTES: usize = record::FRAME_HEADER_BYTES + 16;

/// How far a segment is zero-filled at a time, ahead of the writer. On ext4 an fdatasync after a
/// 4 KiB O_DIRECT write took ~190 µs when the write grew the file and ~130 µs inside it, with about
/// half the CPU (bench/RESULTS.md); one chunk's write costs a millisecond or two, once per MiB.
pub const PREFILL_CHUNK_BYTES: u64 = 1024 * 1024;

/// The largest segment number a name holds (`segment_name` writes ten digits): a shard would
/// need ten billion checkpoints to reach it, so only a stray file can.
pub const SEGMENT_NUMBER_MAX: u64 = 9_999_999_999;

/// How long a segment switch keeps retrying while the process is out of file descriptors
/// (EMFILE, ENFILE), with pauses from 10 ms doubling to 1 s, before it fails the log. A shortage
/// passes (clients hang up, a limit is raised): failing the log for it left the shard's
/// transactions 503 until a restart (found in review). Meanwhile the shard's transactions wait
/// behind the switch, within their handler deadlines.
pub const SWITCH_DESCRIPTOR_WAIT_MAX: Duration = Duration::from_secs(60);

/// The largest last segment number a start (or a reshard) accepts: it leaves a billion numbers
/// for the run's checkpoints and later starts. A log near `SEGMENT_NUMBER_MAX` can only come
/// from a stray file, and running on it would end where no number is left (found in review: a
/// restart then lost every key).
pub const SEGMENT_NUMBER_START_MAX: u64 = 8_999_999_999;

pub fn segment_path(dir: &Path, shard: usize, segment: u64) -> PathBuf {
    dir.join(segment_name(shard, segment))
}

fn segment_name(shard: usize, segment: u64) -> String {
    format!("wal-{shard}-{segment:010}.log")
}

/// The shard and number of a log segment's file name, only in the form `segment_path` writes
/// (`wal-{shard}-{segment:010}.log`): digits only, no leading zeros in the shard, the number as
/// wide as it is written, a shard below `SHARDS_MAX`. `segments` and `check_layout` both go by
/// it, so a stray name such as `wal-01-0000000000.log` is no segment to either.
pub fn parse_segment_name(name: &str) -> Option<(usize, u64)> {
    let (shard, segment) = segment_name_digits(name)?;
    let (shard, segment) = (shard.parse().ok()?, segment.parse().ok()?);
    let bounded = shard < SHARDS_MAX && segment <= SEGMENT_NUMBER_MAX;
    (bounded && segment_name(shard, segment) == name).then_some((shard, segment))
}

/// The shard and segment digits of a name of the form `wal-DIGITS-DIGITS.log`, unchecked.
fn segment_name_digits(name: &str) -> Option<(&str, &str)> {
    let (shard, segment) = name
        .strip_prefix("wal-")?
        .strip_suffix(".log")?
        .split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(shard) && digits(segment)).then_some((shard, segment))
}

/// A name of the segment form whose number has more digits than `SEGMENT_NUMBER_MAX`.
fn past_the_last_number(name: &str) -> bool {
    segment_name_digits(name).is_some_and(|(_, segment)| segment.trim_start_matches('0').len() > 10)
}

/// Every log segment in `dir` (shard, number, path), in no order. Err for one that is not a
/// regular file (a directory, a socket, a symbolic link named like a segment): recovery could
/// not read it, or would cut the file a link points to (found in review: a link to another
/// shard's live segment was truncated as a torn tail).
fn segment_files(dir: &Path) -> io::Result<Vec<(usize, u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some((shard, number)) = parse_segment_name(name) else {
            if past_the_last_number(name) {
                // Only a percore whose segment numbers ran out writes one: ignored, its
                // records would be lost without a word (found in review).
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is a log segment numbered past the last number a start reads",
                        path.display()
                    ),
                ));
            }
            continue;
        };
        if !std::fs::symlink_metadata(&path)?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is named like a log segment but is not a regular file",
                    path.display()
                ),
            ));
        }
        found.push((shard, number, path));
    }
    Ok(found)
}

/// The segments of `shard` in `dir`, oldest first.
pub fn segments(dir: &Path, shard: usize) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found: Vec<(u64, PathBuf)> = segment_files(dir)?
        .into_iter()
        .filter(|(of, _, _)| *of == shard)
        .map(|(_, number, path)| (number, path))
        .collect();
    found.sort();
    Ok(found)
}

/// Whether `shard`'s segment `number` holds anything: one that a crash left empty, only
/// zero-filled or with nothing past its `SegmentStart` (created, never written: a kill during a
/// first start-up) says nothing about the shard count.
fn holds_records(path: &Path, shard: usize, number: u64) -> io::Result<bool> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut chunk = vec![0u8; 64 * 1024];
    let start = segment_start(shard, number);
    let mut first = true;
    loop {
        let read = file.read(&mut chunk)?;
        if read == 0 {
            return Ok(false);
        }
        let mut bytes = &chunk[..read];
        if std::mem::take(&mut first) {
            bytes = bytes.strip_prefix(start.as_slice()).unwrap_or(bytes);
        }
        if bytes.iter().any(|&b| b != 0) {
            return Ok(true);
        }
    }
}

/// The file that says how many shards the transaction log in a data dir is for. Written, synced,
/// before any shard of a first start writes, and by a reshard: each shard writes its own first
/// records, so a first start cut short (a kill, a full disk) can leave one shard's segment with
/// its epoch record and another's empty, which the files alone would read as another count
/// (found in review: such a dir refused every later start).
pub const LAYOUT_FILE: &str = "wal.shards";

/// The count `LAYOUT_FILE` records, if there is one.
pub fn recorded_shards(dir: &Path) -> Result<Option<usize>, String> {
    use std::io::Read;
    let path = dir.join(LAYOUT_FILE);
    let fail = |e: io::Error| format!("{}: {e}", path.display());
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e)),
        // A fifo would block the start for good (found in review).
        Ok(meta) if !meta.is_file() => {
            return Err(format!("{}: not a regular file", path.display()));
        }
        Ok(_) => {}
    }
    // A count is a few digits: the first 32 bytes say whether this is one (a 200 MB file went
    // whole into the error line).
    let mut head = Vec::new();
    std::fs::File::open(&path)
        .and_then(|file| file.take(32).read_to_end(&mut head))
        .map_err(fail)?;
    let text = String::from_utf8_lossy(&head);
    let digits = text.trim_end_matches('\n');
    let count = digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse::<usize>().ok())
        .flatten()
        .filter(|count| (1..=SHARDS_MAX).contains(count));
    match count {
        Some(count) if head.len() < 32 => Ok(Some(count)),
        _ => Err(format!(
            "{}: not a shard count ({:?}); it says how many shards the transaction log is for",
            path.display(),
            text.chars().take(20).collect::<String>()
        )),
    }
}

/// Present once every shard of the recorded count served from its log: from then on each
/// shard's log holds records (every start syncs each shard's epoch record before it serves, and
/// a checkpoint's older segments go only once it is synced), so a shard without any is damage,
/// not a first start cut short, and the start is refused (found in review: a shard's only
/// segment emptied or deleted started with no word, its keys gone and a transfer total broken).
/// Written after a start's shards are ready; removed by a reshard, whose new count may leave a
/// shard without keys or files.
pub const SERVED_FILE: &str = "wal.served";

/// Records that every shard served (`SERVED_FILE`), durably; nothing if it is there already.
pub fn record_served(dir: &Path) -> io::Result<()> {
    if dir.join(SERVED_FILE).exists() {
        return Ok(());
    }
    write_durably(
        dir,
        SERVED_FILE,
        "every shard of wal.shards has served from its log\n",
    )
}

/// Removes `SERVED_FILE`, durably, if it is there: the layout it spoke of is being replaced.
pub fn forget_served(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join(SERVED_FILE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(()) => std::fs::File::open(dir)?.sync_all(),
    }
}

/// Records `count` in `LAYOUT_FILE`, durably. A `SERVED_FILE` goes first: it spoke of the
/// layout this replaces (found in review: one left behind by a store dropped without it made a
/// first start cut short refuse every later start).
pub fn record_shards(dir: &Path, count: usize) -> io::Result<()> {
    forget_served(dir)?;
    write_durably(dir, LAYOUT_FILE, &format!("{count}\n"))
}

/// Writes `dir/name` durably: a temporary file, synced, renamed, the dir synced.
fn write_durably(dir: &Path, name: &str, text: &str) -> io::Result<()> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    let named = |path: &Path| {
        let path = path.display().to_string();
        move |e: io::Error| io::Error::new(e.kind(), format!("{path}: {e}"))
    };
    std::fs::write(&temporary, text).map_err(named(&temporary))?;
    std::fs::File::open(&temporary)
        .and_then(|file| file.sync_all())
        .map_err(named(&temporary))?;
    std::fs::rename(&temporary, &path).map_err(named(&path))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The shard count the transaction log in `dir` is for: the one `LAYOUT_FILE` records or, in a
/// data dir from before it, the one the segment files show. None for no log. Err (one line) when
/// the files do not fit the count: a shard at or past it holds records, or (without the file) a
/// shard in the middle is missing, or a file named like a segment is not one.
pub fn written_by(dir: &Path) -> Result<Option<usize>, String> {
    let fail = |e: io::Error| format!("data dir {}: {e}", dir.display());
    let recorded = recorded_shards(dir)?;
    let mut present = std::collections::BTreeSet::new();
    for (shard, number, path) in segment_files(dir).map_err(fail)? {
        if !present.contains(&shard) && holds_records(&path, shard, number).map_err(fail)? {
            present.insert(shard);
        }
    }
    if let Some(count) = recorded {
        if let Some(empty) = (0..count).find(|shard| !present.contains(shard))
            && dir.join(SERVED_FILE).exists()
        {
            return Err(format!(
                "data dir {}: shard {empty}'s transaction log is missing or holds nothing, \
                 but every shard served from its log ({SERVED_FILE}): its keys would be lost; \
                 restore its wal-{empty}-* files, or remove the whole log (wal-*, \
                 {LAYOUT_FILE}, {SERVED_FILE}) to start empty (nothing was changed)",
                dir.display()
            ));
        }
        return match present.range(count..).next() {
            None => Ok(Some(count)),
            Some(beyond) => Err(format!(
                "data dir {}: its transaction log is for {count} shards ({LAYOUT_FILE}) but \
                 holds records of shard {beyond}; restore the data dir (nothing was changed)",
                dir.display()
            )),
        };
    }
    let Some(&last) = present.last() else {
        return Ok(None);
    };
    if present.len() == last + 1 {
        return Ok(Some(last + 1));
    }
    let missing = (0..last).find(|i| !present.contains(i)).unwrap_or(0);
    Err(format!(
        "data dir {}: its transaction log has files of shards up to {last} but none of shard \
         {missing}; restore them (keys are placed by shard count, nothing was changed)",
        dir.display(),
    ))
}

/// Refuses a data dir whose log is not that of `shard_count` shards (`written_by`): a key lives
/// on the shard `hash(key) mod shard_count` (txn/op.rs) and each shard replays only its own
/// files, so another count would hide keys, lose acknowledged writes on a later return to the
/// old count, and leave a shard's in-doubt transactions naming shards that no longer exist.
/// Called before any shard starts, so a refused start writes nothing. A data dir without a log
/// fits any count; then, and for a data dir from before `LAYOUT_FILE`, the caller records the
/// count once this returns Ok.
pub fn check_layout(dir: &Path, shard_count: usize) -> Result<(), String> {
    match written_by(dir)? {
        None => Ok(()),
        Some(count) if count == shard_count => Ok(()),
        Some(count) => {
            let shards = if count == 1 { "shard" } else { "shards" };
            Err(format!(
                "data dir {}: its transaction log was written by {count} {shards}; start with \
                 {count} {shards}, or move it to {shard_count} with `percore --data-dir {} \
                 reshard --to {shard_count}` (keys are placed by shard count)",
                dir.display(),
                dir.display()
            ))
        }
    }
}

/// The highest segment number of any shard in `dir`.
pub fn last_segment(dir: &Path) -> io::Result<Option<u64>> {
    Ok(segment_files(dir)?
        .into_iter()
        .map(|(_, number, _)| number)
        .max())
}

/// Every log segment file in `dir` with a number below `below`, of any shard.
pub fn segments_below(dir: &Path, below: u64) -> io::Result<Vec<PathBuf>> {
    Ok(segment_files(dir)?
        .into_iter()
        .filter(|(_, number, _)| *number < below)
        .map(|(_, _, path)| path)
        .collect())
}

enum Pending {
    Record(Vec<u8>),
    Switch,
    /// An fdatasync of everything before it, whatever the mode (`Wal::synced`).
    Sync,
}

/// What the flusher takes from `Pending` at a time: a switch, a sync, or a batch of records with
/// its `BatchEnd`.
enum Step {
    Switch,
    Sync,
    Batch(Vec<Vec<u8>>, Vec<u8>),
}

#[derive(Default, Debug, Clone, Copy)]
pub struct WalCounters {
    pub fsyncs: u64,
    pub records: u64,
    pub bytes: u64,
}

pub struct Wal {
    dir: PathBuf,
    shard: usize,
    mode: FsyncMode,
    writer: RefCell<Option<DmaStreamWriter>>,
    /// A second handle on the current segment, for the zero-fill; and how far it reaches (every
    /// write of the writer lies below it).
    filler: RefCell<Option<Rc<DmaFile>>>,
    prefilled: Cell<u64>,
    segment: Cell<u64>,
    /// Bytes written to the current segment (after the batch in flight), its `SegmentStart`
    /// included, and how far the segment is synced (`BatchEnd::synced_through`).
    segment_bytes: Cell<u64>,
    segment_synced: Cell<u64>,
    /// Records (and segment switches) appended but not yet handed to the writer.
    pending: RefCell<Vec<Pending>>,
    /// The segment appends go to now (ahead of `segment` while a switch is pending), and bytes
    /// appended to it so far.
    append_segment: Cell<u64>,
    segment_appended: Cell<u64>,
    /// Logical positions: bytes appended, bytes durable (written, and synced unless the mode is
    /// `Off`), and bytes synced, since this Wal opened.
    appended: Cell<u64>,
    durable_lsn: Cell<u64>,
    synced_lsn: Cell<u64>,
    failed: Cell<bool>,
    /// Why a write or sync failed while the log was open (a full disk, an IO error).
    failure: RefCell<Option<String>>,
    /// Set once the shard serves (`serving`): a failure before that is the start-up's error,
    /// said once by whoever fails the start, not logged here too.
    serving: Cell<bool>,
    /// Set by `close` (graceful shutdown): records that still arrive are never made durable.
    closed: Cell<bool>,
    /// Set when `close` begins, before it waits for what was appended: a segment switch short
    /// of file descriptors stops waiting for one (found in review: the wait held the shutdown
    /// until the stop deadline, its last sync and snapshot lost).
    closing: Cell<bool>,
    /// (position, whether it must be synced rather than durable, task).
    waiters: RefCell<Vec<(u64, bool, Waker)>>,
    flusher: RefCell<Option<Waker>>,
    pub counters: Cell<WalCounters>,
}

impl Wal {
    /// Opens a new segment numbered `segment` and starts the flusher on the current task queue.
    pub async fn open(
        dir: &Path,
        shard: usize,
        mode: FsyncMode,
        segment: u64,
    ) -> io::Result<Rc<Wal>> {
        std::fs::create_dir_all(dir)?;
        let (writer, filler) = Self::create_writer(dir, shard, segment).await?;
        let wal = Rc::new(Wal {
            dir: dir.to_path_buf(),
            shard,
            mode,
            writer: RefCell::new(Some(writer)),
            filler: RefCell::new(Some(filler)),
            prefilled: Cell::new(PREFILL_CHUNK_BYTES),
            segment: Cell::new(segment),
            segment_bytes: Cell::new(SEGMENT_START_BYTES),
            segment_synced: Cell::new(SEGMENT_START_BYTES),
            pending: RefCell::new(Vec::new()),
            append_segment: Cell::new(segment),
            segment_appended: Cell::new(SEGMENT_START_BYTES),
            appended: Cell::new(0),
            durable_lsn: Cell::new(0),
            synced_lsn: Cell::new(0),
            failed: Cell::new(false),
            failure: RefCell::new(None),
            serving: Cell::new(false),
            closed: Cell::new(false),
            closing: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
            flusher: RefCell::new(None),
            counters: Cell::new(WalCounters::default()),
        });
        glommio::spawn_local(Self::flush_loop(wal.clone())).detach();
        Ok(wal)
    }

    /// Creates segment `segment`, its `SegmentStart` and then zeros through its first chunk,
    /// synced: its stream writer (past the `SegmentStart`) and the handle that fills it further.
    async fn create_writer(
        dir: &Path,
        shard: usize,
        segment: u64,
    ) -> io::Result<(DmaStreamWriter, Rc<DmaFile>)> {
        let file = DmaFile::create(segment_path(dir, shard, segment))
            .await
            .map_err(glommio_error)?;
        let filler = Rc::new(file.dup().map_err(glommio_error)?);
        let start = segment_start(shard, segment);
        prefill(&filler, 0, &start).await?;
        // Synced before any batch: a batch a power loss tears must not take the mark that says
        // how to read the segment with it.
        filler.fdatasync().await.map_err(glommio_error)?;
        // The directory entry must be durable too, or a crash could lose the whole segment.
        std::fs::File::open(dir)?.sync_all()?;
        let mut writer = DmaStreamWriterBuilder::new(file)
            .with_buffer_size(WRITE_BUFFER_BYTES)
            .with_write_behind(2)
            .build();
        // Into the writer's first buffer, which rewrites the block with the same bytes.
        writer.write_all(&start).await?;
        Ok((writer, filler))
    }

    pub fn segment(&self) -> u64 {
        self.segment.get()
    }

    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes.get()
    }

    /// The segment and offset the next append will land at (after any pending switch).
    pub fn next_position(&self) -> (u64, u64) {
        (self.append_segment.get(), self.segment_appended.get())
    }

    /// Bytes appended to the current segment so far, durable or not.
    pub fn segment_appended(&self) -> u64 {
        self.segment_appended.get()
    }

    /// The position everything appended so far will be durable at.
    pub fn appended(&self) -> u64 {
        self.appended.get()
    }

    /// From now on appends go to a new segment (returned); the switch happens in order, after
    /// everything appended before it is written and synced. A checkpoint appends its snapshot
    /// right after the switch, in the same step, so the new segment starts with it.
    pub fn switch_segment(&self) -> u64 {
        // Counted here, not when the flusher switches: appends made meanwhile already belong
        // to the new segment (their checksums are salted with it).
        let next = self.append_segment.get() + 1;
        self.append_segment.set(next);
        // Before the count restarts: a batch end it reserves lies in the old segment.
        self.queue(Pending::Switch);
        self.segment_appended.set(SEGMENT_START_BYTES);
        next
    }

    pub fn mode(&self) -> FsyncMode {
        self.mode
    }

    /// Queues a record; returns the position that `durable` must reach for it to be safe. A
    /// failed or closed log queues nothing (no flusher would take it): `durable` says Err.
    pub fn append(&self, record: Vec<u8>) -> u64 {
        let end = self.appended.get() + record.len() as u64;
        self.appended.set(end);
        self.segment_appended
            .set(self.segment_appended.get() + record.len() as u64);
        if self.failed.get() {
            return end;
        }
        self.queue(Pending::Record(record));
        end
    }

    /// True once nothing appended will become durable any more: a write failed, or the log
    /// was closed and then given a record.
    pub fn is_failed(&self) -> bool {
        self.failed.get()
    }

    /// Why the log failed while open (None after a graceful close).
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// The shard serves: from now on a failure is logged when it happens.
    pub fn serving(&self) {
        self.serving.set(true);
    }

    /// The position the log is durable through.
    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn.get()
    }

    /// Resolves once every record up to `lsn` is durable (per the fsync mode). Err when the log
    /// failed: nothing can be acknowledged any more.
    pub async fn durable(&self, lsn: u64) -> io::Result<()> {
        self.reached(lsn, false).await
    }

    /// Resolves once every record up to `lsn` is written and fdatasync'd, whatever the mode: what
    /// must be on disk before anything older is deleted (a checkpoint). In `Off` mode this asks
    /// the flusher for a sync of its own; the other modes sync every batch anyway.
    pub async fn synced(&self, lsn: u64) -> io::Result<()> {
        if self.mode == FsyncMode::Off && self.synced_lsn.get() < lsn {
            self.queue(Pending::Sync);
        }
        self.reached(lsn, true).await
    }

    async fn reached(&self, lsn: u64, synced: bool) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            if self.failed.get() {
                return Poll::Ready(Err(io::Error::other("the write-ahead log failed")));
            }
            if self.position(synced) >= lsn {
                return Poll::Ready(Ok(()));
            }
            self.waiters
                .borrow_mut()
                .push((lsn, synced, cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    fn position(&self, synced: bool) -> u64 {
        if synced {
            self.synced_lsn.get()
        } else {
            self.durable_lsn.get()
        }
    }

    async fn flush_loop(wal: Rc<Wal>) {
        loop {
            let step = std::future::poll_fn(|cx| {
                let mut pending = wal.pending.borrow_mut();
                if pending.is_empty() {
                    *wal.flusher.borrow_mut() = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                // A batch never spans a segment switch or a sync: each is a step of its own.
                let take = match (&pending[0], wal.mode) {
                    (Pending::Switch | Pending::Sync, _) => {
                        return Poll::Ready(match pending.remove(0) {
                            Pending::Switch => Step::Switch,
                            _ => Step::Sync,
                        });
                    }
                    (_, FsyncMode::Always) => 1,
                    _ => pending
                        .iter()
                        .position(|p| matches!(p, Pending::Switch | Pending::Sync))
                        .unwrap_or(pending.len()),
                };
                let records: Vec<Vec<u8>> = pending
                    .drain(..take)
                    .filter_map(|p| match p {
                        Pending::Record(r) => Some(r),
                        Pending::Switch | Pending::Sync => None,
                    })
                    .collect();
                if pending.is_empty() && wal.mode != FsyncMode::Always {
                    // The batch still open to appends ends here, before any later append takes
                    // its position (the other closings are in `queue`).
                    wal.reserve_batch_end();
                }
                let end = wal.batch_end(&records);
                Poll::Ready(Step::Batch(records, end))
            })
            .await;
            let result = match step {
                Step::Switch => wal.switch_now().await,
                Step::Sync => wal.sync_now().await,
                Step::Batch(records, end) => wal.write_batch(&records, &end).await,
            };
            if let Err(e) = result {
                // After `close`, the records that kept coming (a drain still answers busy
                // connections and other shards' messages) are simply never acknowledged.
                if wal.closing.get() && !wal.closed.get() {
                    crate::log_line!(
                        "percore: shard {}: write-ahead log failed while stopping: {e}",
                        wal.shard
                    );
                } else if !wal.closed.get() && wal.serving.get() {
                    crate::log_line!(
                        "percore: shard {}: write-ahead log failed: {e}; its transactions answer \
                         503 until a restart (/health says 503)",
                        wal.shard
                    );
                }
                if !wal.closed.get() {
                    *wal.failure.borrow_mut() = Some(e.to_string());
                }
                wal.failed.set(true);
                wal.pending.borrow_mut().clear();
                wal.wake_waiters();
                return;
            }
        }
    }

    /// Queues `item` for the flusher and wakes it. Where it closes a batch to appends, the batch
    /// end's bytes are reserved (`reserve_batch_end`): a switch or a sync queued behind records
    /// closes theirs, and with `Always` each record is a batch of its own. The flusher closes the
    /// batch still open when it takes it (`flush_loop`).
    fn queue(&self, item: Pending) {
        let closes = {
            let mut pending = self.pending.borrow_mut();
            let closes = match item {
                Pending::Record(_) => self.mode == FsyncMode::Always,
                Pending::Switch | Pending::Sync => {
                    self.mode != FsyncMode::Always
                        && matches!(pending.last(), Some(Pending::Record(_)))
                }
            };
            pending.push(item);
            closes
        };
        if closes {
            self.reserve_batch_end();
        }
        if let Some(waker) = self.flusher.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Counts a batch end's bytes as appended, in the segment appends go to: done where a batch
    /// is closed to appends, before any later append takes its position.
    fn reserve_batch_end(&self) {
        self.appended
            .set(self.appended.get() + BATCH_END_BYTES as u64);
        self.segment_appended
            .set(self.segment_appended.get() + BATCH_END_BYTES as u64);
    }

    /// The `BatchEnd` of the batch of `records` the flusher just took, which it writes next,
    /// framed at the position after them (its bytes were reserved when the batch closed). The
    /// flusher writes batches in order, so the batch starts where the segment's written bytes
    /// end.
    fn batch_end(&self, records: &[Vec<u8>]) -> Vec<u8> {
        let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
        let start = self.segment_bytes.get();
        let mut end = Vec::with_capacity(BATCH_END_BYTES);
        record::encode_at(
            &Record::BatchEnd {
                start,
                synced_through: self.segment_synced.get(),
            },
            record::position_salt(self.segment.get(), start + bytes),
            &mut end,
        );
        debug_assert_eq!(end.len(), BATCH_END_BYTES);
        end
    }

    /// Writes a batch's records and its `BatchEnd`, then syncs (or, with `Off`, flushes).
    async fn write_batch(&self, batch: &[Vec<u8>], end: &[u8]) -> io::Result<()> {
        let bytes: u64 = batch.iter().map(|r| r.len() as u64).sum::<u64>() + end.len() as u64;
        // The writer writes whole buffers: this batch reaches at most one buffer past its end.
        // Only the flusher writes or switches segments, so nothing moves while this awaits.
        let reach = self.segment_bytes.get() + bytes + WRITE_BUFFER_BYTES as u64;
        while self.prefilled.get() < reach {
            let filler = self.filler.borrow().clone();
            let filler = filler.ok_or_else(|| io::Error::other("the log is closed"))?;
            prefill(&filler, self.prefilled.get(), &[]).await?;
            self.prefilled
                .set(self.prefilled.get() + PREFILL_CHUNK_BYTES);
        }
        let Some(mut writer) = self.writer.borrow_mut().take() else {
            // `close` took it (found by a stress run: SIGTERM under load panicked here).
            assert!(self.closed.get(), "one flusher at a time");
            return Err(io::Error::other("the log is closed"));
        };
        let result = async {
            for record in batch {
                writer.write_all(record).await?;
            }
            writer.write_all(end).await?;
            if self.mode == FsyncMode::Off {
                // Written to the file (its last block padded, as a sync pads it), not synced:
                // left in the writer's buffer, an acknowledged record would die with the process.
                writer.flush().await?;
            } else {
                writer.sync().await.map_err(glommio_error)?;
            }
            Ok::<(), io::Error>(())
        }
        .await;
        *self.writer.borrow_mut() = Some(writer);
        result?;
        let mut counters = self.counters.get();
        counters.records += batch.len() as u64;
        counters.bytes += bytes;
        if self.mode != FsyncMode::Off {
            counters.fsyncs += 1;
        }
        self.counters.set(counters);
        self.segment_bytes.set(self.segment_bytes.get() + bytes);
        self.durable_lsn.set(self.durable_lsn.get() + bytes);
        if self.mode != FsyncMode::Off {
            self.synced_lsn.set(self.durable_lsn.get());
            self.segment_synced.set(self.segment_bytes.get());
        }
        self.wake_waiters();
        Ok(())
    }

    /// fdatasyncs the current segment: everything written before it is synced (batches are
    /// written in order, and a switch closes, which syncs, the segment it leaves).
    async fn sync_now(&self) -> io::Result<()> {
        let Some(writer) = self.writer.borrow_mut().take() else {
            assert!(self.closed.get(), "one flusher at a time");
            return Err(io::Error::other("the log is closed"));
        };
        let result = writer.sync().await.map_err(glommio_error);
        *self.writer.borrow_mut() = Some(writer);
        result?;
        let mut counters = self.counters.get();
        counters.fsyncs += 1;
        self.counters.set(counters);
        self.synced_lsn.set(self.durable_lsn.get());
        self.segment_synced.set(self.segment_bytes.get());
        self.wake_waiters();
        Ok(())
    }

    fn wake_waiters(&self) {
        let failed = self.failed.get();
        let (durable, synced) = (self.durable_lsn.get(), self.synced_lsn.get());
        self.waiters.borrow_mut().retain(|(lsn, must_sync, waker)| {
            let reached = if *must_sync { synced } else { durable };
            let ready = failed || *lsn <= reached;
            if ready {
                waker.wake_by_ref();
            }
            !ready
        });
    }

    /// Waits until everything appended so far is durable, then switches to a new segment.
    /// Returns the number of the segment that was closed. Tests only: it switches outside the
    /// flusher, which is the only writer of a segment otherwise (`switch_segment` goes through it).
    #[cfg(test)]
    pub async fn rotate(&self) -> io::Result<u64> {
        self.durable(self.appended.get()).await?;
        let old = self.segment.get();
        self.switch_now().await?;
        // As `switch_segment` would have: appends go to the new segment, after its start.
        self.append_segment.set(old + 1);
        self.segment_appended.set(SEGMENT_START_BYTES);
        Ok(old)
    }

    /// Closes the current segment (its records are already synced) and opens the next.
    async fn switch_now(&self) -> io::Result<()> {
        if self.closed.get() {
            return Err(io::Error::other("the log is closed"));
        }
        let old = self.segment.get();
        // One wait for both steps: the bound is the switch's.
        let began = Instant::now();
        let (next, filler) = self
            .short_of_descriptors_waits(began, || {
                Self::create_writer(&self.dir, self.shard, old + 1)
            })
            .await?;
        close_filler(self.filler.replace(Some(filler))).await?;
        self.prefilled.set(PREFILL_CHUNK_BYTES);
        let previous = self.writer.borrow_mut().replace(next);
        if let Some(mut previous) = previous {
            // Closing syncs it: what was written before the switch is synced in every mode.
            previous.close().await?;
            let path = segment_path(&self.dir, self.shard, old);
            self.short_of_descriptors_waits(began, || async { sync_truncation(&path) })
                .await?;
        }
        self.synced_lsn.set(self.durable_lsn.get());
        self.segment.set(old + 1);
        self.segment_bytes.set(SEGMENT_START_BYTES);
        self.segment_synced.set(SEGMENT_START_BYTES);
        Ok(())
    }

    /// Runs `step` (it opens files) until it succeeds, fails otherwise than for want of a file
    /// descriptor, `SWITCH_DESCRIPTOR_WAIT_MAX` has passed since `began`, or the log is closing
    /// (a shutdown does not wait: the switch fails, and with it the records behind it, which
    /// nobody was told are durable). Creating a segment again is safe: it truncates what a
    /// failed try left.
    async fn short_of_descriptors_waits<T, F: Future<Output = io::Result<T>>>(
        &self,
        began: Instant,
        mut step: impl FnMut() -> F,
    ) -> io::Result<T> {
        let mut pause = Duration::from_millis(10);
        loop {
            match step().await {
                Err(e)
                    if short_of_descriptors(&e)
                        && began.elapsed() < SWITCH_DESCRIPTOR_WAIT_MAX
                        && !self.closing.get() =>
                {
                    if pause == Duration::from_millis(10) {
                        crate::log_line!(
                            "percore: shard {}: switching log segments: {e}; transactions wait \
                             while it is retried, for up to {} s",
                            self.shard,
                            SWITCH_DESCRIPTOR_WAIT_MAX.as_secs()
                        );
                    }
                    // In slices, so a shutdown that begins meanwhile is seen at once.
                    let until = Instant::now() + pause;
                    while !self.closing.get() && Instant::now() < until {
                        glommio::timer::sleep(pause.min(Duration::from_millis(20))).await;
                    }
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) if short_of_descriptors(&e) && self.closing.get() => {
                    crate::log_line!(
                        "percore: shard {}: switching log segments: {e}; given up for the \
                         shutdown: the records behind the switch were not made durable (none \
                         was acknowledged)",
                        self.shard
                    );
                    return Err(e);
                }
                Ok(done) => {
                    if pause > Duration::from_millis(10) {
                        crate::log_line!(
                            "percore: shard {}: switched log segments after {} ms short of file \
                             descriptors",
                            self.shard,
                            began.elapsed().as_millis()
                        );
                    }
                    return Ok(done);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Says the log is being closed, ahead of `close` (its caller may first wait for the log
    /// itself): a segment switch stops waiting for a file descriptor.
    pub fn begin_close(&self) {
        self.closing.set(true);
    }

    /// Syncs and closes the current segment (graceful shutdown).
    /// Records appended after this began are not made durable (their waiters get an error):
    /// the shard is going away.
    pub async fn close(&self) -> io::Result<()> {
        self.begin_close();
        self.durable(self.appended.get()).await?;
        self.closed.set(true);
        close_filler(self.filler.take()).await?;
        // None when the flusher is writing a batch appended meanwhile: it puts the writer back
        // afterwards and the segment file is closed when the Wal is dropped.
        let writer = self.writer.borrow_mut().take();
        if let Some(mut writer) = writer {
            writer.close().await?;
            sync_truncation(&segment_path(&self.dir, self.shard, self.segment.get()))?;
        }
        Ok(())
    }
}

/// Syncs a closed segment's size. glommio's close fdatasyncs and then truncates the file to what
/// was written, without a sync after the truncation: a power loss could bring the last
/// buffer's padding back after the final record, where it would read as a bad tail, and with
/// later segments holding records, as damage (found in review). Blocking: once per segment.
fn sync_truncation(path: &Path) -> io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// The error as an operator reads it: "PATH: Permission denied (os error 13)", not glommio's
/// debug text (`op: Creating path: Some(..) with fd: None`), and of the same kind.
fn glommio_error(e: glommio::GlommioError<()>) -> io::Error {
    match e {
        glommio::GlommioError::IoError(e) => e,
        // As the system call said it: whoever reads it retries a shortage
        // (`short_of_descriptors_waits`), and no path is to blame for it.
        glommio::GlommioError::EnhancedIoError { source, .. } if short_of_descriptors(&source) => {
            source
        }
        glommio::GlommioError::EnhancedIoError {
            source,
            path: Some(path),
            ..
        } => io::Error::new(source.kind(), format!("{}: {source}", path.display())),
        glommio::GlommioError::EnhancedIoError { source, op, .. } => {
            io::Error::new(source.kind(), format!("{op}: {source}"))
        }
        other => io::Error::other(other.to_string()),
    }
}

/// The process (EMFILE) or the system (ENFILE) has no file descriptor to spare: a shortage that
/// passes (`Wal::short_of_descriptors_waits`).
fn short_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Closes a segment's fill handle (the flusher holds no other reference between batches).
async fn close_filler(filler: Option<Rc<DmaFile>>) -> io::Result<()> {
    if let Some(file) = filler.and_then(|f| Rc::try_unwrap(f).ok()) {
        file.close().await.map_err(glommio_error)?;
    }
    Ok(())
}

/// Writes `PREFILL_CHUNK_BYTES` at `at` (aligned): `head`, then zeros. The chunk is larger than
/// glommio's registered IO memory (`IO_MEMORY_BYTES`), so its buffer comes from the heap: once
/// per MiB.
async fn prefill(filler: &DmaFile, at: u64, head: &[u8]) -> io::Result<()> {
    let mut zeros = filler.alloc_dma_buffer(PREFILL_CHUNK_BYTES as usize);
    zeros.as_bytes_mut().fill(0);
    zeros.as_bytes_mut()[..head.len()].copy_from_slice(head);
    let written = filler.write_at(zeros, at).await.map_err(glommio_error)?;
    if written as u64 != PREFILL_CHUNK_BYTES {
        return Err(io::Error::other(format!(
            "zero-filling the log: {written} of {PREFILL_CHUNK_BYTES} bytes written"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use glommio::{LocalExecutorBuilder, Placement};

    use super::*;

    fn run<T: Send + 'static>(
        f: impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = T>>> + Send + 'static,
    ) -> T {
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(crate::config::limits::IO_MEMORY_BYTES)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    /// A fresh temp dir, removed when the returned guard drops.
    fn temp_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("percore-wal-{name}-"))
            .tempdir()
            .unwrap()
    }

    /// A first start records its layout, and a `SERVED_FILE` left from a store dropped without
    /// it goes: with it, a first start cut short before every shard served (a shard without
    /// records) refused every later start (found in review).
    #[test]
    fn a_new_layout_drops_a_served_marker_of_the_old() {
        let tmp = temp_dir("served");
        let dir = tmp.path();
        std::fs::write(dir.join(SERVED_FILE), "left over\n").unwrap();
        record_shards(dir, 2).unwrap();
        assert!(!dir.join(SERVED_FILE).exists());
        // The cut-short start's files: shard 0 wrote its first record, shard 1 nothing yet.
        std::fs::write(segment_path(dir, 0, 0), b"x").unwrap();
        std::fs::write(segment_path(dir, 1, 0), b"").unwrap();
        assert_eq!(check_layout(dir, 2), Ok(()));
        // Once every shard served, a shard without records is damage.
        record_served(dir).unwrap();
        let refused = check_layout(dir, 2).unwrap_err();
        assert!(
            refused.contains("shard 1's transaction log is missing"),
            "{refused}"
        );
    }

    /// (log files present, shard count) -> None when it may start, else a part of the error. A
    /// file holds a record's bytes unless its name is marked: `empty:` (0 bytes), `zeros:` (a
    /// zero fill, never written), `dir:` (a directory), `link:` (a symbolic link to shard 0's
    /// segment), `fifo:` (a named pipe); `count:N` is a `LAYOUT_FILE` holding N.
    #[test]
    fn check_layout_accepts_only_the_shard_count_that_wrote_the_log() {
        let cases: &[(&[&str], usize, Option<&str>)] = &[
            (&[], 1, None),
            (&[], 4, None),
            (&["wal-0-0000000003.log", "wal-1-0000000000.log"], 2, None),
            (&["wal-0-0000000003.log"], 1, None),
            (
                &["wal-0-0000000000.log", "wal-1-0000000000.log"],
                1,
                Some("written by 2 shards; start with 2 shards"),
            ),
            (
                &["wal-0-0000000000.log", "wal-1-0000000000.log"],
                3,
                Some("written by 2 shards; start with 2 shards"),
            ),
            (
                &["wal-0-0000000000.log"],
                2,
                Some("written by 1 shard; start with 1 shard, or move it to 2 with"),
            ),
            (
                &["wal-0-0000000000.log", "wal-2-0000000001.log"],
                3,
                Some("none of shard 1"),
            ),
            (&["wal-1-0000000000.log"], 2, Some("none of shard 0")),
            // Found in review: a kill during the first start-up left shard 1's new segment
            // empty, before shard 0 created one, and every later start was refused.
            (&["empty:wal-1-0000000000.log"], 2, None),
            (&["zeros:wal-1-0000000000.log"], 2, None),
            (&["empty:wal-3-0000000000.log"], 1, None),
            (
                &["wal-0-0000000001.log", "zeros:wal-1-0000000000.log"],
                2,
                Some("written by 1 shard; start with 1 shard"),
            ),
            // Found in review: names were parsed leniently, so a stray `wal-01-` file counted
            // as shard 1's log (and half the keys of a one-shard log went missing).
            (
                &["wal-0-0000000000.log", "wal-01-0000000000.log"],
                2,
                Some("written by 1 shard"),
            ),
            (
                &["wal-0-0000000000.log", "wal-+1-0000000000.log"],
                2,
                Some("written by 1 shard"),
            ),
            (
                &[
                    "wal-0-0000000000.log",
                    "wal-1-+000000000.log",
                    "wal-1-0.log",
                ],
                2,
                Some("written by 1 shard"),
            ),
            (
                &["wal-0-0000000000.log", "dir:wal-1-0000000000.log"],
                2,
                Some("wal-1-0000000000.log is named like a log segment but is not a regular file"),
            ),
            // Found in review: a link was followed, and cut as a torn tail.
            (
                &["wal-0-0000000000.log", "link:wal-1-0000000009.log"],
                2,
                Some("wal-1-0000000009.log is named like a log segment but is not a regular file"),
            ),
            // Found in review: the check listed every shard below a huge one.
            (
                &[
                    "wal-0-0000000000.log",
                    "wal-9223372036854775808-0000000000.log",
                    "wal-18446744073709551615-0000000000.log",
                    "wal-8192-0000000000.log",
                ],
                1,
                None,
            ),
            (
                &["wal-0-0000000000.log", "wal-8191-0000000000.log"],
                8192,
                Some("files of shards up to 8191 but none of shard 1;"),
            ),
            // The recorded count decides: a first start cut short leaves its shards' segments
            // lopsided (found in review).
            (
                &[
                    "count:2",
                    "wal-1-0000000000.log",
                    "empty:wal-0-0000000000.log",
                ],
                2,
                None,
            ),
            (&["count:2", "wal-0-0000000000.log"], 2, None),
            (&["count:2"], 2, None),
            // What a start killed right after creating its segments leaves: no records.
            (
                &["wal-0-0000000003.log", "started:wal-1-0000000003.log"],
                1,
                None,
            ),
            (
                &["wal-0-0000000003.log", "started:wal-1-0000000003.log"],
                2,
                Some("written by 1 shard; start with 1 shard"),
            ),
            (
                &["count:2", "wal-0-0000000000.log"],
                1,
                Some("written by 2 shards; start with 2 shards"),
            ),
            (
                &["count:1", "wal-0-0000000000.log", "wal-1-0000000000.log"],
                1,
                Some("is for 1 shards (wal.shards) but holds records of shard 1"),
            ),
            (
                &["count:0"],
                1,
                Some("wal.shards: not a shard count (\"0\")"),
            ),
            (&["count:two"], 1, Some("not a shard count")),
            (&["count:+2"], 2, Some("not a shard count")),
            (&["count:2\n"], 2, None),
            (
                &["count:000000000000000000000000000000002"],
                2,
                Some("not a shard count"),
            ),
            (
                &["fifo:wal.shards"],
                2,
                Some("wal.shards: not a regular file"),
            ),
            // Found in review: ignored, its records were lost without a word.
            (
                &["wal-0-0000000000.log", "wal-0-10000000000.log"],
                1,
                Some("wal-0-10000000000.log is a log segment numbered past the last number"),
            ),
            (&["wal-0-0000000000.log", "wal-0-00000000001.log"], 1, None),
            // Not log files: ignored.
            (
                &["wal-5-x.log", "wal-7-0000000000.tmp", "sessions-3.snap"],
                1,
                None,
            ),
        ];
        for (files, shard_count, expected) in cases {
            let tmp = temp_dir("layout");
            for file in *files {
                if let Some(name) = file.strip_prefix("empty:") {
                    std::fs::write(tmp.path().join(name), b"").unwrap();
                } else if let Some(name) = file.strip_prefix("started:") {
                    let (shard, number) = parse_segment_name(name).unwrap();
                    let mut bytes = segment_start(shard, number);
                    bytes.resize(PREFILL_CHUNK_BYTES as usize, 0);
                    std::fs::write(tmp.path().join(name), bytes).unwrap();
                } else if let Some(name) = file.strip_prefix("zeros:") {
                    std::fs::write(tmp.path().join(name), vec![0; 100_000]).unwrap();
                } else if let Some(name) = file.strip_prefix("dir:") {
                    std::fs::create_dir(tmp.path().join(name)).unwrap();
                } else if let Some(name) = file.strip_prefix("link:") {
                    std::os::unix::fs::symlink("wal-0-0000000000.log", tmp.path().join(name))
                        .unwrap();
                } else if let Some(name) = file.strip_prefix("fifo:") {
                    let path =
                        std::ffi::CString::new(tmp.path().join(name).to_str().unwrap().as_bytes())
                            .unwrap();
                    // SAFETY: mkfifo(3) with a NUL-terminated path we own.
                    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
                } else if let Some(count) = file.strip_prefix("count:") {
                    std::fs::write(tmp.path().join(LAYOUT_FILE), count).unwrap();
                } else {
                    let mut record = vec![0; 100_000];
                    record[99_999] = 1;
                    std::fs::write(tmp.path().join(file), record).unwrap();
                }
            }
            let result = check_layout(tmp.path(), *shard_count);
            match (expected, &result) {
                (None, Ok(())) => {}
                (Some(part), Err(e)) if e.contains(part) => {
                    assert!(!e.contains('\n'), "one line: {e}");
                }
                _ => {
                    panic!("{files:?} with {shard_count} shards: {result:?}, expected {expected:?}")
                }
            }
        }
        assert_eq!(check_layout(Path::new("/nonexistent/percore"), 2), Ok(()));
    }

    #[test]
    fn segment_names_are_read_only_in_the_form_they_are_written() {
        for (shard, segment) in [(0, 0), (1, 7), (12, 9_999_999_999), (8191, 3)] {
            let path = segment_path(Path::new("/d"), shard, segment);
            let name = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(parse_segment_name(name), Some((shard, segment)), "{name}");
        }
        for name in [
            "wal-01-0000000000.log",
            "wal-+1-0000000000.log",
            "wal--1-0000000000.log",
            "wal-1-000000000.log",
            "wal-1-00000000001.log",
            "wal-1-+000000001.log",
            "wal-1- 000000001.log",
            "wal-1-0000000001.log.tmp",
            "wal-1-0000000001",
            "wal-1.log",
            "wal-a-0000000001.log",
            "wal--0000000001.log",
            "wal-8192-0000000001.log",
            "wal-1-10000000000.log",
            "wal-0-18446744073709551615.log",
        ] {
            assert_eq!(parse_segment_name(name), None, "{name}");
        }
        let tmp = temp_dir("names");
        for name in [
            "wal-0-0000000002.log",
            "wal-0-2.log",
            "wal-00-0000000001.log",
        ] {
            std::fs::write(tmp.path().join(name), b"x").unwrap();
        }
        let found = segments(tmp.path(), 0).unwrap();
        assert_eq!(found, vec![(2, tmp.path().join("wal-0-0000000002.log"))]);
    }

    /// Appends a commit of key `i` with `value_bytes` bytes of value, framed where it will lie,
    /// as the transaction layer does.
    fn append_commit(wal: &Wal, i: usize, value_bytes: usize) -> u64 {
        let (segment, offset) = wal.next_position();
        let record = Record::Commit {
            tx: None,
            version: i as u64 + 1,
            writes: vec![(
                bytes::Bytes::from(format!("key{i}")),
                Some(bytes::Bytes::from(vec![1 + (i % 250) as u8; value_bytes])),
            )],
        };
        let mut bytes = Vec::new();
        record::encode_at(&record, record::position_salt(segment, offset), &mut bytes);
        wal.append(bytes)
    }

    /// A segment's records with their offsets, up to where reading stops.
    fn read_segment(bytes: &[u8], segment: u64) -> Vec<(usize, Record)> {
        let mut found = Vec::new();
        let mut offset = 0;
        let salt = |offset: usize| match offset {
            0 => record::SEGMENT_START_SALT,
            _ => record::position_salt(segment, offset as u64),
        };
        while let Ok(Some((record, used))) = record::decode_at(&bytes[offset..], salt(offset)) {
            found.push((offset, record));
            offset += used;
        }
        found
    }

    /// Checks a segment's framing: a `SegmentStart`, then batches of commits, each closed by a
    /// `BatchEnd` naming its start and how far the segment was synced (`synced_through` says
    /// which, given the batch's start). Returns the commits' versions in order and the batches.
    fn check_framing(
        records: &[(usize, Record)],
        synced_through: impl Fn(u64) -> u64,
    ) -> (Vec<u64>, usize) {
        assert!(
            matches!(records[0], (0, Record::SegmentStart { shard: 0, .. })),
            "{:?}",
            records[0]
        );
        let (mut versions, mut batches) = (Vec::new(), 0);
        let mut batch_start = SEGMENT_START_BYTES;
        for (offset, record) in &records[1..] {
            match record {
                Record::Commit { version, .. } => versions.push(*version),
                Record::BatchEnd {
                    start,
                    synced_through: synced,
                } => {
                    assert!(*start < *offset as u64, "a batch holds records");
                    assert_eq!(
                        *start, batch_start,
                        "batch {batches} starts where the last ended"
                    );
                    assert_eq!(*synced, synced_through(*start), "batch {batches}");
                    batch_start = (*offset + BATCH_END_BYTES) as u64;
                    batches += 1;
                }
                other => panic!("unexpected record at {offset}: {other:?}"),
            }
        }
        let last = records.last().unwrap();
        assert!(
            matches!(last.1, Record::BatchEnd { .. }),
            "every batch is closed: {last:?}"
        );
        (versions, batches)
    }

    #[test]
    fn group_commit_shares_fsyncs_and_every_acknowledged_record_is_in_the_file() {
        let tmp = temp_dir("group");
        let dir = tmp.path().to_path_buf();
        let dir2 = dir.clone();
        let counters = run(move || {
            Box::pin(async move {
                let wal = Wal::open(&dir2, 0, FsyncMode::Batch, 7).await.unwrap();
                let waits: Vec<_> = (0..100).map(|i| append_commit(&wal, i, 100)).collect();
                crate::mesh::join_all(waits.into_iter().map(|lsn| wal.durable(lsn)).collect())
                    .await
                    .into_iter()
                    .for_each(|r| r.unwrap());
                // One more after the group: its own batch, after the first's sync.
                let lsn = append_commit(&wal, 100, 100);
                wal.durable(lsn).await.unwrap();
                let counters = wal.counters.get();
                wal.close().await.unwrap();
                counters
            })
        });
        assert_eq!(counters.records, 101);
        assert!(counters.fsyncs < 100, "group commit: {counters:?}");
        let found = segments(&dir, 0).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, 7);
        let bytes = std::fs::read(&found[0].1).unwrap();
        let records = read_segment(&bytes, 7);
        // Every batch is synced before the next is written: each says so of its own start.
        let (versions, batches) = check_framing(&records, |start| start);
        assert_eq!(versions, (1..=101).collect::<Vec<u64>>());
        assert_eq!(batches as u64, counters.fsyncs, "a batch per fdatasync");
    }

    #[test]
    fn segments_are_zero_filled_ahead_of_every_write() {
        let tmp = temp_dir("prefill");
        let dir = tmp.path().to_path_buf();
        let dir2 = dir.clone();
        const VALUE: usize = 10_000;
        const RECORDS: usize = 250; // 2.4 MiB: the fill moves ahead twice
        let lengths = run(move || {
            Box::pin(async move {
                let wal = Wal::open(&dir2, 0, FsyncMode::Batch, 0).await.unwrap();
                let path = segment_path(&dir2, 0, 0);
                let mut lengths = Vec::new();
                for i in 0..RECORDS {
                    let lsn = append_commit(&wal, i, VALUE);
                    wal.durable(lsn).await.unwrap();
                    let length = std::fs::metadata(&path).unwrap().len();
                    lengths.push((wal.segment_bytes(), length));
                }
                // No close: the file as a crash would leave it.
                lengths
            })
        });
        for (written, length) in &lengths {
            assert!(
                *length >= written + WRITE_BUFFER_BYTES as u64,
                "{written} bytes written, file {length} bytes"
            );
            assert_eq!(length % PREFILL_CHUNK_BYTES, 0);
        }
        let bytes = std::fs::read(segment_path(&dir, 0, 0)).unwrap();
        assert_eq!(bytes.len() as u64, 3 * PREFILL_CHUNK_BYTES);
        let records = read_segment(&bytes, 0);
        let (versions, batches) = check_framing(&records, |start| start);
        assert_eq!(versions, (1..=RECORDS as u64).collect::<Vec<u64>>());
        assert_eq!(batches, RECORDS, "each waited for: a batch each");
        // Past the last buffer the writer wrote: zeros (the buffer's own padding may not be).
        let written = lengths.last().unwrap().0 as usize;
        assert_eq!(records.last().unwrap().0 + BATCH_END_BYTES, written);
        let padded_end = written.next_multiple_of(WRITE_BUFFER_BYTES);
        assert!(bytes[padded_end..].iter().all(|b| *b == 0));
    }

    /// `off` skips the fdatasync, never the write: an acknowledged record is in the file (a
    /// kill -9 cannot take it), and `synced` still gets a real sync. Its batches say how far the
    /// segment was synced: where it was created until `synced`, then where that sync reached.
    #[test]
    fn off_writes_every_batch_to_the_file_and_synced_still_syncs() {
        let tmp = temp_dir("off");
        let dir2 = tmp.path().to_path_buf();
        let (written, bytes, synced, after) = run(move || {
            Box::pin(async move {
                let wal = Wal::open(&dir2, 0, FsyncMode::Off, 0).await.unwrap();
                let lsn = append_commit(&wal, 0, 100);
                wal.durable(lsn).await.unwrap();
                let lsn = append_commit(&wal, 1, 100);
                wal.durable(lsn).await.unwrap();
                let written = wal.counters.get();
                // The file as a kill -9 would leave it now.
                let bytes = std::fs::read(segment_path(&dir2, 0, 0)).unwrap();
                wal.synced(lsn).await.unwrap();
                let synced = wal.counters.get();
                let lsn = append_commit(&wal, 2, 100);
                wal.durable(lsn).await.unwrap();
                let after = std::fs::read(segment_path(&dir2, 0, 0)).unwrap();
                (written, bytes, synced, after)
            })
        });
        assert_eq!((written.records, written.fsyncs), (2, 0));
        assert_eq!(synced.fsyncs, 1, "synced() syncs in off mode too");
        let records = read_segment(&bytes, 0);
        let (versions, _) = check_framing(&records, |_| SEGMENT_START_BYTES);
        assert_eq!(
            versions,
            vec![1, 2],
            "an acknowledged record is in the file, not only in the writer's buffer"
        );
        let records = read_segment(&after, 0);
        let sync_reached = records[4].0 as u64 + BATCH_END_BYTES as u64;
        let (versions, batches) = check_framing(&records, |start| {
            if start < sync_reached {
                SEGMENT_START_BYTES
            } else {
                sync_reached
            }
        });
        assert_eq!((versions, batches), (vec![1, 2, 3], 3));
    }

    /// Found in review: a batch's end was counted only when the flusher took the batch, so
    /// records already queued behind it (with `always` every record is a batch; with `off` a
    /// checkpoint's sync splits the queue) had been framed for positions the batch end then
    /// took: they failed their checksums where they lay, and a small one was acknowledged
    /// before it was written. Queued together here: records, a sync, records, a segment switch,
    /// records; every one must read back where it was framed, and be in the file once durable.
    #[test]
    fn records_queued_behind_a_batch_land_where_they_were_framed_in_every_mode() {
        for mode in [FsyncMode::Always, FsyncMode::Batch, FsyncMode::Off] {
            let tmp = temp_dir("queued");
            let dir2 = tmp.path().to_path_buf();
            let (seen_when_durable, first, second) = run(move || {
                Box::pin(async move {
                    let wal = Wal::open(&dir2, 0, mode, 0).await.unwrap();
                    let mut last = 0;
                    for i in 0..3 {
                        last = append_commit(&wal, i, 100);
                    }
                    // Queues a sync with `off` (what a checkpoint asks); waits, elsewhere.
                    let mut synced = Box::pin(wal.synced(last));
                    assert!(futures_lite::future::poll_once(&mut synced).await.is_none());
                    let small = append_commit(&wal, 3, 1);
                    append_commit(&wal, 4, 100);
                    assert_eq!(wal.switch_segment(), 1);
                    append_commit(&wal, 5, 100);
                    let last = append_commit(&wal, 6, 100);
                    wal.durable(small).await.unwrap();
                    let file = std::fs::read(segment_path(&dir2, 0, 0)).unwrap();
                    let seen_when_durable = read_segment(&file, 0).len();
                    synced.await.unwrap();
                    wal.durable(last).await.unwrap();
                    wal.close().await.unwrap();
                    let read = |n| std::fs::read(segment_path(&dir2, 0, n)).unwrap();
                    (seen_when_durable, read(0), read(1))
                })
            });
            // SegmentStart, v1-v3 and v4 with at least one batch end among them.
            assert!(
                seen_when_durable >= 6,
                "{mode:?}: v4 acknowledged before it was written"
            );
            let (versions, _) = check_framing(&read_segment(&first, 0), |start| start);
            assert_eq!(versions, vec![1, 2, 3, 4, 5], "{mode:?}");
            let (versions, _) = check_framing(&read_segment(&second, 1), |start| start);
            assert_eq!(versions, vec![6, 7], "{mode:?}");
        }
    }

    /// Random appends (some larger than a write buffer), segment switches, syncs, yields and
    /// sleeps (from a reviewer's stress test): every record reads back where it was framed and
    /// is in its file once `durable` says so; batch ends chain, and say no more than was synced.
    #[test]
    fn random_sequences_of_appends_switches_and_syncs_frame_every_record_where_it_lands() {
        for mode in [FsyncMode::Always, FsyncMode::Batch, FsyncMode::Off] {
            for seed in 0..12u64 {
                let tmp = temp_dir("review");
                let dir2 = tmp.path().to_path_buf();
                let (n, segs) = run(move || {
                    Box::pin(async move {
                        let wal = Wal::open(&dir2, 0, mode, 0).await.unwrap();
                        let mut rng = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let mut next = || {
                            rng = rng
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            (rng >> 33) as u32
                        };
                        let mut version = 0usize;
                        let mut placed: Vec<(u64, u64)> = Vec::new();
                        let mut lsns = Vec::new();
                        for _ in 0..400 {
                            match next() % 20 {
                                0..=9 => {
                                    let size = if next() % 10 == 0 {
                                        20_000
                                    } else {
                                        1 + (next() % 300) as usize
                                    };
                                    placed.push(wal.next_position());
                                    lsns.push(append_commit(&wal, version, size));
                                    version += 1;
                                }
                                10 => {
                                    wal.switch_segment();
                                }
                                11 | 12 => {
                                    let w = wal.clone();
                                    let lsn = if next() % 2 == 0 {
                                        w.appended()
                                    } else {
                                        lsns.last().copied().unwrap_or(0)
                                    };
                                    glommio::spawn_local(async move {
                                        w.synced(lsn).await.unwrap();
                                        assert!(w.synced_lsn.get() >= lsn);
                                    })
                                    .detach();
                                }
                                13 | 14 => futures_lite::future::yield_now().await,
                                15 => {
                                    glommio::timer::sleep(std::time::Duration::from_micros(200))
                                        .await
                                }
                                _ => {
                                    if lsns.is_empty() {
                                        continue;
                                    }
                                    let i = (next() as usize) % lsns.len();
                                    wal.durable(lsns[i]).await.unwrap();
                                    let (seg, off) = placed[i];
                                    let bytes = std::fs::read(segment_path(&dir2, 0, seg)).unwrap();
                                    let found = read_segment(&bytes, seg);
                                    assert!(found.iter().any(|(o, r)| *o as u64 == off && matches!(r, Record::Commit { version: v, .. } if *v == i as u64 + 1)),
                                        "{mode:?} seed {seed}: v{} durable but not at {seg}:{off}", i + 1);
                                }
                            }
                        }
                        wal.synced(wal.appended()).await.unwrap();
                        wal.durable(wal.appended()).await.unwrap();
                        assert_eq!(
                            wal.durable_lsn(),
                            wal.appended(),
                            "{mode:?} seed {seed}: logical positions agree"
                        );
                        let segs = wal.append_segment.get();
                        assert_eq!(segs, wal.segment());
                        wal.close().await.unwrap();
                        (version, segs)
                    })
                });
                let mut versions = Vec::new();
                for seg in 0..=segs {
                    let bytes = std::fs::read(segment_path(tmp.path(), 0, seg)).unwrap();
                    let records = read_segment(&bytes, seg);
                    assert!(
                        matches!(records[0].1, Record::SegmentStart { shard: 0, segment } if segment == seg)
                    );
                    let mut batch_start = SEGMENT_START_BYTES;
                    for (offset, record) in &records[1..] {
                        match record {
                            Record::Commit { version, .. } => versions.push(*version),
                            Record::BatchEnd {
                                start,
                                synced_through,
                            } => {
                                assert_eq!(*start, batch_start, "{mode:?} seed {seed} seg {seg}");
                                assert!(*start < *offset as u64);
                                assert!(*synced_through <= *start);
                                if mode != FsyncMode::Off {
                                    assert_eq!(*synced_through, *start);
                                }
                                batch_start = (*offset + BATCH_END_BYTES) as u64;
                            }
                            other => panic!("{other:?}"),
                        }
                    }
                    if records.len() > 1 {
                        assert!(matches!(records.last().unwrap().1, Record::BatchEnd { .. }));
                    }
                    let end = records
                        .last()
                        .map(|(o, r)| {
                            *o as u64
                                + if matches!(r, Record::SegmentStart { .. }) {
                                    SEGMENT_START_BYTES
                                } else {
                                    BATCH_END_BYTES as u64
                                }
                        })
                        .unwrap() as usize;
                    assert!(
                        bytes[end..].iter().all(|b| *b == 0),
                        "{mode:?} seed {seed} seg {seg}: nothing past the last batch end ({end} of {})",
                        bytes.len()
                    );
                }
                assert_eq!(
                    versions,
                    (1..=n as u64).collect::<Vec<_>>(),
                    "{mode:?} seed {seed}"
                );
            }
        }
    }

    #[test]
    fn always_syncs_each_record_and_rotate_starts_a_new_segment() {
        let tmp = temp_dir("always");
        let dir = tmp.path().to_path_buf();
        let dir2 = dir.clone();
        let counters = run(move || {
            Box::pin(async move {
                let wal = Wal::open(&dir2, 3, FsyncMode::Always, 0).await.unwrap();
                let lsns: Vec<_> = (0..5u8).map(|i| wal.append(vec![i; 10])).collect();
                wal.durable(*lsns.last().unwrap()).await.unwrap();
                assert_eq!(wal.rotate().await.unwrap(), 0);
                let lsn = wal.append(vec![9; 10]);
                wal.durable(lsn).await.unwrap();
                wal.close().await.unwrap();
                wal.counters.get()
            })
        });
        assert_eq!((counters.records, counters.fsyncs), (6, 6));
        let found: Vec<u64> = segments(&dir, 3)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(found, vec![0, 1]);
        assert!(
            segments(&dir, 0).unwrap().is_empty(),
            "segments are per shard"
        );
    }

    #[test]
    fn records_appended_after_close_are_refused_not_a_panic() {
        // Found by a stress run: SIGTERM under load; a drain still answers busy connections and
        // other shards' messages, so records arrive after the log was closed.
        let tmp = temp_dir("closed");
        let dir = tmp.path().to_path_buf();
        let (first, late, switch) = run(move || {
            Box::pin(async move {
                let wal = Wal::open(&dir, 0, FsyncMode::Batch, 0).await.unwrap();
                let lsn = wal.append(vec![1; 10]);
                let in_flight = wal.append(vec![2; 10]);
                wal.close().await.unwrap();
                let first = wal.durable(lsn).await.is_ok() && wal.durable(in_flight).await.is_ok();
                let late_lsn = wal.append(vec![3; 10]);
                let late = wal.durable(late_lsn).await;
                let switch = wal.rotate().await;
                (first, late.is_err(), switch.is_err())
            })
        });
        assert!(first, "what was appended before close is durable");
        assert!(late, "a record after close is refused");
        assert!(switch, "no segment switch after close");
    }
}
