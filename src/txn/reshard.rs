//! `percore reshard --to M`: moves the key-value store's log to another shard count, offline. Reads every shard's log, settles what was in doubt, and writes each new shard a log that starts with a complete checkpoint; a crash at any point leaves either the old log or a reshard that the next run finishes.
//!
//! Steps, and why each is safe to interrupt:
//! 1. Read each shard's log (`read_log`: damage refuses, nothing changes) and recover its node.
//! 2. Settle in memory what a restart would settle over the mesh: commit decisions not yet
//!    acknowledged, staged transactions, prepared parts. The nodes talk to each other directly
//!    and every append counts as durable at once: it is, once step 4 commits.
//! 3. Place every key on `owner(key, M)` with its value and version. `version_next` is the
//!    largest of the old shards' (a key's version never goes back), the epoch the largest
//!    (transaction ids are never reused).
//! 4. Write the new segments, numbered past every old one, into `reshard.tmp/`, synced, then
//!    rename it to `reshard.ready/`: the commit point. Before it the old log is untouched (a
//!    leftover `reshard.tmp/` is removed by the next run); after it the new log is whole.
//! 5. Move the old segments into `reshard-from-N-shards-S/` (a backup the operator deletes), the new
//!    ones into the data dir, record the count (`wal::LAYOUT_FILE`), and remove `reshard.ready/`. Each move is idempotent, so a run
//!    that finds `reshard.ready/` finishes it; the server refuses to start until then.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::config::limits::SHARDS_MAX;
use crate::txn::TxnLimits;
use crate::txn::op::owner;
use crate::txn::partition::snapshot_entries;
use crate::txn::record::{self, Record};
use crate::txn::service::read_log;
use crate::txn::twopc::{Action, Event, Node};
use crate::wal;

/// Where the new segments are written, before the commit point.
const STAGING_DIR: &str = "reshard.tmp";
/// The staging dir after the commit point: a reshard to finish.
pub const READY_DIR: &str = "reshard.ready";
/// In the staging dir: `to M from N segment S backup NAME`.
const READY_FILE: &str = "READY";
/// How long (simulated) settling may take before the reshard gives up: many resolve rounds.
const SETTLE_MS_MAX: u64 = 600_000;

/// A reshard that reached its commit point: the target count, the new segments' number, and
/// the backup dir the old segments go to (chosen fresh: never one an earlier reshard filled).
struct Ready {
    to: usize,
    from: usize,
    segment: u64,
    backup: String,
}

/// Runs the reshard of `dir` to `to` shards (the caller holds the data dir's lock). Ok: one
/// line for stdout. Err: one line, with nothing changed unless it says so.
pub fn run(dir: &Path, to: usize, limits: TxnLimits) -> Result<String, String> {
    let io = |what: &str, e: std::io::Error| format!("data dir {}: {what}: {e}", dir.display());
    if !(1..=SHARDS_MAX).contains(&to) {
        return Err(format!("--to {to}: a shard count is 1 to {SHARDS_MAX}"));
    }
    if let Some(ready) = read_ready(dir)? {
        if ready.to != to {
            return Err(format!(
                "--data-dir {}: a reshard to {} was interrupted; finish it first with --to {}",
                dir.display(),
                shards(ready.to),
                ready.to
            ));
        }
        let backup = finish(dir, &ready).map_err(|e| committed(dir, to, e))?;
        return Ok(format!(
            "percore: finished the interrupted reshard of {} to {}; {}",
            dir.display(),
            shards(to),
            old_log(backup)
        ));
    }
    let staging = dir.join(STAGING_DIR);
    if staging.exists() {
        // A run that stopped before its commit point: the old log is whole.
        std::fs::remove_dir_all(&staging).map_err(|e| io("removing reshard.tmp", e))?;
    }
    let ready_dir = dir.join(READY_DIR);
    if ready_dir.is_dir() {
        // Without its READY: a finished reshard stopped between removing READY and the
        // directory (found in review: left for good).
        std::fs::remove_dir_all(&ready_dir).map_err(|e| io("removing reshard.ready", e))?;
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| io("syncing", e))?;
    }
    let Some(from) = wal::written_by(dir)? else {
        return Ok(format!(
            "percore: {} holds no transaction log: nothing to move, start with any --shards",
            dir.display()
        ));
    };
    if from == to {
        return Ok(format!(
            "percore: the transaction log in {} is already that of {}",
            dir.display(),
            shards(to)
        ));
    }
    let (entries, version_next, epoch) = settle(dir, from, limits)?;
    let keys = entries.len();
    let mut parts: Vec<Vec<(Bytes, Bytes, u64)>> = vec![Vec::new(); to];
    for entry in entries {
        parts[owner(&entry.0, to)].push(entry);
    }
    for (shard, part) in parts.iter().enumerate() {
        let bytes: usize = part
            .iter()
            .map(|(k, v, _)| super::partition::entry_bytes(k, v))
            .sum();
        if bytes > limits.partition_bytes_max {
            return Err(format!(
                "--to {to}: shard {shard} would hold {bytes} bytes of keys and values (each key \
                 counted {} bytes more), over the {} one partition holds; reshard to more shards \
                 (nothing was changed)",
                super::ENTRY_OVERHEAD_BYTES,
                limits.partition_bytes_max
            ));
        }
    }
    let segment = match wal::last_segment(dir).map_err(|e| io("listing the log", e))? {
        None => 0,
        Some(last) if last <= wal::SEGMENT_NUMBER_START_MAX => last + 1,
        Some(last) => {
            return Err(format!(
                "--data-dir {}: a segment numbered {last} leaves no number for the new log \
                 (a stray file?); nothing was changed",
                dir.display()
            ));
        }
    };
    let ready = Ready {
        to,
        from,
        segment,
        backup: fresh_backup_name(dir, from, segment),
    };
    if let Err(e) = stage(&staging, parts, version_next, epoch, &ready, limits) {
        // Gigabytes, maybe, and on a full disk the reason the old count cannot start.
        let _ = std::fs::remove_dir_all(&staging);
        return Err(io("writing the new log (the old one is untouched)", e));
    }
    // The commit point: before the rename the old log is the log, after it the new one.
    if let Err(e) = std::fs::rename(&staging, dir.join(READY_DIR)) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(io("committing the new log (the old one is untouched)", e));
    }
    let backup = std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .and_then(|()| finish(dir, &ready))
        .map_err(|e| committed(dir, to, e))?;
    Ok(format!(
        "percore: moved {} of {} from {} to {}; start it with --shards {to}; {}",
        match keys {
            1 => "1 key".to_string(),
            n => format!("{n} keys"),
        },
        dir.display(),
        shards(from),
        shards(to),
        old_log(backup)
    ))
}

/// Where the old segments went, as the closing line says it.
fn old_log(backup: Option<PathBuf>) -> String {
    match backup {
        Some(backup) => format!("the old log is in {}", backup.display()),
        None => "there was no old segment to keep".to_string(),
    }
}

/// Err (one line) when `dir` holds a reshard that reached its commit point and was not finished:
/// the server must not start on half-moved files.
pub fn check_finished(dir: &Path) -> Result<(), String> {
    let staging = dir.join(STAGING_DIR);
    let sizes: Vec<u64> = std::fs::read_dir(&staging)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|file| file.metadata().ok())
        .map(|meta| meta.len())
        .collect();
    if !sizes.is_empty() {
        // Harmless (the log in use is the old one) but maybe gigabytes, and said nowhere (found
        // in review).
        let bytes: u64 = sizes.iter().sum();
        crate::log_line!(
            "percore: {} ({} MiB) is what a reshard wrote before it stopped short of its commit \
             point: the log in use is the old one; remove it, or run the reshard again",
            staging.display(),
            bytes >> 20
        );
    }
    match read_ready(dir)? {
        None => Ok(()),
        Some(ready) => Err(format!(
            "--data-dir {}: a reshard to {} was interrupted; finish it with `percore \
             --data-dir {} reshard --to {}`",
            dir.display(),
            shards(ready.to),
            dir.display(),
            ready.to
        )),
    }
}

/// An error after the commit point: the new log is the log, a rerun finishes the move.
fn committed(dir: &Path, to: usize, e: std::io::Error) -> String {
    format!(
        "--data-dir {}: the reshard to {} is committed but not finished ({e}); finish it with \
         `percore --data-dir {} reshard --to {to}`",
        dir.display(),
        shards(to),
        dir.display()
    )
}

/// `reshard-from-N-shards-S`, or with `-2`, `-3`, ... after it when an earlier reshard's
/// backup has that name (found in review: a second reshard overwrote the first one's backup).
fn fresh_backup_name(dir: &Path, from: usize, segment: u64) -> String {
    let base = format!("reshard-from-{from}-shards-{segment}");
    (1..)
        .map(|n| match n {
            1 => base.clone(),
            n => format!("{base}-{n}"),
        })
        .find(|name| std::fs::symlink_metadata(dir.join(name)).is_err())
        .expect("some name is free")
}

/// "1 shard", "2 shards".
fn shards(count: usize) -> String {
    match count {
        1 => "1 shard".to_string(),
        n => format!("{n} shards"),
    }
}

fn read_ready(dir: &Path) -> Result<Option<Ready>, String> {
    let ready_dir = dir.join(READY_DIR);
    if std::fs::symlink_metadata(&ready_dir).is_ok_and(|meta| !meta.is_dir()) {
        return Err(format!(
            "{} is not a directory: percore makes it only during a reshard; move it away",
            ready_dir.display()
        ));
    }
    let path = ready_dir.join(READY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let parsed = || match words.as_slice() {
        ["to", to, "from", from, "segment", segment, "backup", backup]
            if backup.starts_with("reshard-from-") && !backup.contains('/') =>
        {
            Some(Ready {
                to: to.parse().ok().filter(|to| (1..=SHARDS_MAX).contains(to))?,
                from: from.parse().ok()?,
                segment: segment.parse().ok()?,
                backup: backup.to_string(),
            })
        }
        _ => None,
    };
    let parsed = parsed();
    match parsed {
        Some(ready) => Ok(Some(ready)),
        None => Err(format!(
            "{}: not a reshard marker ({text:?}); remove {} if no reshard ran",
            path.display(),
            dir.join(READY_DIR).display()
        )),
    }
}

type Entries = Vec<(Bytes, Bytes, u64)>;

/// Steps 1 to 3: every key, value and version of the log `from` shards wrote, with nothing in
/// doubt; the largest `version_next` and epoch.
fn settle(dir: &Path, from: usize, limits: TxnLimits) -> Result<(Entries, u64, u32), String> {
    let mut nodes = Vec::with_capacity(from);
    let mut queue: VecDeque<(usize, Action)> = VecDeque::new();
    for shard in 0..from {
        let recovered = read_log(dir, shard).map_err(|e| {
            format!(
                "--data-dir {}: shard {shard}'s log: {e} (nothing was changed)",
                dir.display()
            )
        })?;
        // What a start would cut off and say so, this says too (found in review: a reshard
        // dropped a torn tail without a word).
        recovered.say_torn(shard, "not moved (the old segments go to the backup whole)");
        let (node, actions) = Node::recover(shard, from, limits, &recovered.records, 0);
        // Every key of a shard's log is one that shard owns: else the count is not the one
        // the log was written by, and placing keys by it would lose some.
        if let Some((key, _)) = node
            .partition
            .entries()
            .find(|(key, _)| owner(key, from) != shard)
        {
            return Err(format!(
                "--data-dir {}: shard {shard}'s log holds the key {:?}, which shard {} owns with \
                 {from} shards: the log was not written by {from} shards (nothing was changed)",
                dir.display(),
                String::from_utf8_lossy(key),
                owner(key, from)
            ));
        }
        nodes.push(node);
        queue.extend(actions.into_iter().map(|action| (shard, action)));
    }
    let mut now_ms = 0;
    loop {
        while let Some((shard, action)) = queue.pop_front() {
            let (to, event) = match action {
                Action::Send { to, msg } => (to, Event::Receive { from: shard, msg }),
                Action::Persist { then, .. } => (shard, Event::Durable(then)),
                // No client waits: nothing begins a transaction here.
                Action::Reply { .. } => continue,
            };
            let actions = nodes[to].on_event(event, now_ms);
            queue.extend(actions.into_iter().map(|action| (to, action)));
        }
        if nodes.iter().all(Node::is_quiet) {
            break;
        }
        if now_ms > SETTLE_MS_MAX {
            return Err(format!(
                "--data-dir {}: transactions in doubt did not settle; start percore with {from} \
                 shards, stop it with SIGTERM and reshard then (nothing was changed)",
                dir.display()
            ));
        }
        now_ms += limits.resolve_interval_ms.max(1);
        for (shard, node) in nodes.iter_mut().enumerate() {
            let actions = node.on_event(Event::Tick, now_ms);
            queue.extend(actions.into_iter().map(|action| (shard, action)));
        }
    }
    let version_next = nodes
        .iter()
        .map(|node| node.partition.version_next())
        .max()
        .unwrap_or(0);
    let epoch = nodes.iter().map(Node::epoch).max().unwrap_or(0);
    let entries = nodes
        .iter()
        .flat_map(|node| node.partition.entries())
        .map(|(key, entry)| (key.clone(), entry.value.clone(), entry.version))
        .collect();
    Ok((entries, version_next, epoch))
}

/// Step 4: each new shard's segment, a complete checkpoint, synced and read back, and the
/// marker; the caller renames the staging dir (the commit point).
fn stage(
    staging: &Path,
    parts: Vec<Entries>,
    version_next: u64,
    epoch: u32,
    ready: &Ready,
    limits: TxnLimits,
) -> std::io::Result<()> {
    std::fs::create_dir(staging)?;
    let (to, segment) = (ready.to, ready.segment);
    for (shard, mut entries) in parts.into_iter().enumerate() {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let count = entries.len();
        let mut records = vec![Record::SnapshotBegin { version_next }];
        records.extend(snapshot_entries(entries));
        records.push(Record::Epoch { epoch });
        record::snapshot_close(&mut records);
        let mut bytes = Vec::new();
        for record in &records {
            let salt = record::position_salt(segment, bytes.len() as u64);
            record::encode_at(record, salt, &mut bytes);
        }
        let path = wal::segment_path(staging, shard, segment);
        std::fs::write(&path, &bytes)?;
        std::fs::File::open(&path)?.sync_all()?;
        // What a start will read back: every key, as a node recovers it.
        let recovered = read_log(staging, shard)?;
        let node = Node::recover(shard, to, limits, &recovered.records, 0).0;
        if node.partition.len() != count || !node.is_quiet() {
            return Err(std::io::Error::other(format!(
                "shard {shard}'s new log reads back {} keys of {count}",
                node.partition.len()
            )));
        }
    }
    std::fs::write(
        staging.join(READY_FILE),
        format!(
            "to {to} from {} segment {segment} backup {}\n",
            ready.from, ready.backup
        ),
    )?;
    std::fs::File::open(staging.join(READY_FILE))?.sync_all()?;
    std::fs::File::open(staging)?.sync_all()
}

/// Step 5: old segments into the backup, new ones into the data dir, the marker away. Every
/// move can be redone after a crash: old segments are those numbered below the new ones.
/// Returns the backup, None when there was no old segment to keep (and no backup made: found
/// in review, an empty one was).
fn finish(dir: &Path, ready: &Ready) -> std::io::Result<Option<PathBuf>> {
    let ready_dir = dir.join(READY_DIR);
    let backup = dir.join(&ready.backup);
    // The new count may leave a shard without keys, so without files: not damage until its
    // shards have served (`wal::SERVED_FILE`). Before anything moves (`record_shards` below
    // removes it too, too late for a reshard cut short in between).
    wal::forget_served(dir)?;
    let old_segments = wal::segments_below(dir, ready.segment)?;
    if !old_segments.is_empty() {
        std::fs::create_dir_all(&backup)?;
        for old in old_segments {
            let name = old.file_name().expect("a segment has a file name");
            std::fs::rename(&old, backup.join(name))?;
        }
    }
    // Synced whenever it is there: a run cut short after its moves, before this sync, leaves the
    // rerun nothing to move (found in review: its entries were then never synced).
    if backup.is_dir() {
        std::fs::File::open(&backup)?.sync_all()?;
    }
    for shard in 0..ready.to {
        let staged = wal::segment_path(&ready_dir, shard, ready.segment);
        if staged.exists() {
            std::fs::rename(&staged, wal::segment_path(dir, shard, ready.segment))?;
        }
    }
    std::fs::File::open(dir)?.sync_all()?;
    wal::record_shards(dir, ready.to)?;
    std::fs::remove_dir_all(&ready_dir)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(backup.is_dir().then_some(backup))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::record::TxId;

    fn key_on(shard: usize, shards: usize) -> Bytes {
        (0..)
            .map(|i| Bytes::from(format!("key-{i}")))
            .find(|key| owner(key, shards) == shard)
            .expect("some key")
    }

    fn write_log(dir: &Path, shard: usize, records: &[Record]) {
        let mut bytes = Vec::new();
        for record in records {
            let salt = record::position_salt(0, bytes.len() as u64);
            record::encode_at(record, salt, &mut bytes);
        }
        std::fs::write(wal::segment_path(dir, shard, 0), bytes).unwrap();
    }

    /// A crash left a cross-shard transaction staged on its coordinator (shard 0) and prepared
    /// on `prepared` of its two participants: the reshard settles it as a restart would (every
    /// part prepared: committed; one missing: aborted) before it moves the keys.
    fn settle_staged(prepared: &[usize]) -> Vec<(Bytes, Bytes, u64)> {
        let tmp = tempfile::Builder::new()
            .prefix("percore-reshard-")
            .tempdir()
            .unwrap();
        let tx = TxId {
            coordinator: 0,
            epoch: 3,
            seq: 0,
        };
        for shard in 0..2 {
            let mut records = vec![Record::Epoch { epoch: 3 }];
            if shard == 0 {
                records.push(Record::Staging {
                    tx,
                    participants: vec![0, 1],
                });
            }
            if prepared.contains(&shard) {
                records.push(Record::Prepare {
                    tx,
                    version: 7,
                    writes: vec![(key_on(shard, 2), Some(Bytes::from_static(b"v")))],
                    reads: vec![],
                });
            }
            write_log(tmp.path(), shard, &records);
        }
        let line = run(tmp.path(), 1, TxnLimits::default()).unwrap();
        assert!(line.contains("from 2 shards to 1 shard"), "{line}");
        let recovered = read_log(tmp.path(), 0).unwrap();
        let (node, _) = Node::recover(0, 1, TxnLimits::default(), &recovered.records, 0);
        assert!(node.is_quiet());
        assert!(node.epoch() > 3, "epochs go on from the largest");
        assert!(node.partition.version_next() > 7);
        node.partition
            .entries()
            .map(|(key, entry)| (key.clone(), entry.value.clone(), entry.version))
            .collect()
    }

    #[test]
    fn a_transaction_every_participant_prepared_is_committed() {
        let mut expected = vec![
            (key_on(0, 2), Bytes::from_static(b"v"), 7),
            (key_on(1, 2), Bytes::from_static(b"v"), 7),
        ];
        expected.sort();
        assert_eq!(settle_staged(&[0, 1]), expected);
    }

    #[test]
    fn a_transaction_a_participant_never_prepared_is_aborted() {
        assert_eq!(settle_staged(&[0]), vec![]);
    }

    fn temp_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("percore-reshard-")
            .tempdir()
            .unwrap()
    }

    fn commit(key: Bytes) -> Record {
        Record::Commit {
            tx: None,
            version: 1,
            writes: vec![(key, Some(Bytes::from_static(b"v")))],
        }
    }

    /// A log whose keys are not those its shard owns under the count: not a log of that count.
    #[test]
    fn a_key_on_a_shard_that_does_not_own_it_refuses() {
        let tmp = temp_dir();
        write_log(tmp.path(), 0, &[commit(key_on(0, 2))]);
        write_log(tmp.path(), 1, &[commit(key_on(0, 2))]);
        let error = run(tmp.path(), 1, TxnLimits::default()).unwrap_err();
        assert!(error.contains("shard 1's log holds the key"), "{error}");
        assert!(!tmp.path().join(STAGING_DIR).exists());
    }

    /// Found in review: a stray `wal-0-18446744073709551615.log` wrapped the new segments'
    /// number to 0, over a live segment. Such a name is no segment now; the largest one that is
    /// leaves no number after it, and the reshard refuses.
    #[test]
    fn no_number_after_the_last_segment_refuses() {
        let tmp = temp_dir();
        write_log(tmp.path(), 0, &[commit(key_on(0, 2))]);
        write_log(tmp.path(), 1, &[commit(key_on(1, 2))]);
        let stray = wal::segment_path(tmp.path(), 0, wal::SEGMENT_NUMBER_START_MAX + 1);
        std::fs::write(&stray, b"").unwrap();
        let error = run(tmp.path(), 1, TxnLimits::default()).unwrap_err();
        // Reading the log refuses it first, as a start does.
        assert!(
            error.contains("too close to the last segment number a name holds"),
            "{error}"
        );
        assert!(wal::segment_path(tmp.path(), 0, 0).exists());
    }

    /// Found in review: a second reshard with the same segment number (the store dropped and
    /// refilled in between) moved the old log into the first one's backup, over its files.
    #[test]
    fn a_backup_name_in_use_is_not_reused() {
        let tmp = temp_dir();
        std::fs::create_dir(tmp.path().join("reshard-from-2-shards-1")).unwrap();
        std::fs::write(tmp.path().join("reshard-from-2-shards-1-2"), b"").unwrap();
        assert_eq!(
            fresh_backup_name(tmp.path(), 2, 1),
            "reshard-from-2-shards-1-3"
        );
        assert_eq!(
            fresh_backup_name(tmp.path(), 2, 7),
            "reshard-from-2-shards-7"
        );
    }
}
