//! One shard's session revocation log: the ids destroyed or rotated away since its last snapshot, each made durable (one fdatasync for all appends waiting) before the destroy is answered, and dropped from the snapshot at start; never decides what to revoke.
//!
//! The file holds fixed-size records (key, absolute expiry, CRC32); a torn or corrupt tail is cut
//! at start. After a snapshot is durable, the records it covers (appended before its copy
//! began) are cut: the remaining ones are rewritten to a temporary file, synced and renamed
//! over the log, so a crash at any point leaves the old log or the new one, each with every
//! revocation the snapshot on disk lacks.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};

use glommio::io::{BufferedFile, OpenOptions};

use super::id::SessionKey;

/// key (16) + absolute expiry ms (8) + CRC32 of both (4). The expiry is what the session had
/// when it was destroyed, for inspection: no record is dropped by it (see `rewrite`).
pub const RECORD_BYTES: usize = 16 + 8 + 4;

type Record = [u8; RECORD_BYTES];

pub fn path(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("sessions-{shard}.revoked"))
}

pub fn encode(key: &SessionKey, expiry_ms: u64) -> Record {
    let mut record = [0u8; RECORD_BYTES];
    record[..16].copy_from_slice(key);
    record[16..24].copy_from_slice(&expiry_ms.to_le_bytes());
    let crc = crc32fast::hash(&record[..24]);
    record[24..].copy_from_slice(&crc.to_le_bytes());
    record
}

/// The records in `bytes` (key, expiry ms), up to the first torn or corrupt one. Err when a
/// corrupt record has a valid one after it: only the tail of a batch that was never synced may
/// be bad (nothing of it was acknowledged); a bad record before good ones is damage that may
/// have taken an acknowledged revocation with it, and the caller fails closed.
pub fn decode(bytes: &[u8]) -> io::Result<Vec<(SessionKey, u64)>> {
    let parse = |record: &[u8]| {
        let crc = u32::from_le_bytes(record[24..].try_into().expect("4 bytes"));
        (crc32fast::hash(&record[..24]) == crc).then(|| {
            let key: SessionKey = record[..16].try_into().expect("16 bytes");
            let expiry = u64::from_le_bytes(record[16..24].try_into().expect("8 bytes"));
            (key, expiry)
        })
    };
    let mut records = bytes.chunks_exact(RECORD_BYTES).map(parse);
    let valid: Vec<_> = records.by_ref().map_while(|record| record).collect();
    if records.any(|record| record.is_some()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a corrupt record before valid ones",
        ));
    }
    Ok(valid)
}

/// Reads the log at start-up: its valid records. A file with a torn or corrupt record (a torn
/// append was never acknowledged) is rewritten with the valid ones, so appends go on after
/// whole records. Blocking: start-up only.
pub fn read(path: &Path) -> io::Result<Vec<(SessionKey, u64)>> {
    let Some(bytes) = super::persist::read_file(path)? else {
        return Ok(Vec::new());
    };
    let records = decode(&bytes)?;
    if records.len() * RECORD_BYTES != bytes.len() {
        crate::log_line!(
            "percore: session revocation log {}: {} bytes of a torn or corrupt tail cut",
            path.display(),
            bytes.len() - records.len() * RECORD_BYTES
        );
        let valid: Vec<u8> = records.iter().flat_map(|(k, e)| encode(k, *e)).collect();
        super::persist::write_file(path, &valid)?;
    }
    Ok(records)
}

/// The log of one shard; appends come from the synchronous session handler, one flusher task
/// writes and syncs them, and waiters learn by ticket when theirs is durable.
pub struct RevocationLog {
    dir: PathBuf,
    path: PathBuf,
    /// Every record in the file or waiting for it, oldest first, with its ticket: what a cut
    /// rewrites. Bounded by `records_max`.
    records: RefCell<VecDeque<(u64, Record)>>,
    /// Tickets handed out: the n-th record appended since start has ticket n (from 1).
    appended: Cell<u64>,
    /// Every ticket up to this is in the file.
    written: Cell<u64>,
    /// Every ticket up to this is durable: synced, or covered by a durable snapshot.
    durable: Cell<u64>,
    /// A write or sync failed: nothing more is acknowledged (or appended) until a cut rewrites
    /// the whole log.
    failed: Cell<bool>,
    /// A cut the upkeep asked for: records below this ticket are in a durable snapshot.
    cut_below: Cell<Option<u64>>,
    file: RefCell<Option<BufferedFile>>,
    file_bytes: Cell<u64>,
    waiters: RefCell<Vec<(u64, Waker)>>,
    flusher: RefCell<Option<Waker>>,
    /// The upkeep task, waiting in `snapshot_wanted`: woken the moment the log grows long.
    upkeep: RefCell<Option<Waker>>,
    /// The rotations whose revocation is not yet durable, oldest first: (ticket, old key, new
    /// key). A destroy of the old id in that window follows it to the new one (`successor`).
    /// Bounded by `records_max`, as each is a record of `records`.
    rotations: RefCell<VecDeque<(u64, SessionKey, SessionKey)>>,
    /// `--max-session-revocations`: appends are refused at this many records.
    records_max: usize,
}

impl RevocationLog {
    /// A log whose file holds `loaded` (from `read`); starts its flusher on the current queue.
    pub fn start(
        dir: &Path,
        shard: usize,
        loaded: &[(SessionKey, u64)],
        records_max: usize,
    ) -> Rc<RevocationLog> {
        let log = Rc::new(Self::new(dir, shard, loaded, records_max));
        glommio::spawn_local(Self::flush_loop(log.clone())).detach();
        log
    }

    /// The log without its flusher task.
    fn new(
        dir: &Path,
        shard: usize,
        loaded: &[(SessionKey, u64)],
        records_max: usize,
    ) -> RevocationLog {
        assert!(records_max > 0);
        let records: VecDeque<_> = loaded
            .iter()
            .zip(1..)
            .map(|((key, expiry), ticket)| (ticket, encode(key, *expiry)))
            .collect();
        let count = records.len() as u64;
        RevocationLog {
            dir: dir.to_path_buf(),
            path: path(dir, shard),
            records: RefCell::new(records),
            appended: Cell::new(count),
            written: Cell::new(count),
            durable: Cell::new(count),
            failed: Cell::new(false),
            cut_below: Cell::new(None),
            file: RefCell::new(None),
            file_bytes: Cell::new(count * RECORD_BYTES as u64),
            waiters: RefCell::new(Vec::new()),
            flusher: RefCell::new(None),
            upkeep: RefCell::new(None),
            rotations: RefCell::new(VecDeque::new()),
            records_max,
        }
    }

    /// Whether an append would be refused: the log failed, or is at its bound.
    pub fn refuses(&self) -> bool {
        self.failed.get() || self.records.borrow().len() >= self.records_max
    }

    /// Whether the upkeep should write a snapshot now (so that the log can be cut): the log
    /// failed, or is long.
    pub fn wants_snapshot(&self) -> bool {
        self.failed.get() || self.is_long()
    }

    /// From a quarter of the bound on, not counting the records a cut already asked for will
    /// drop: the snapshot that asked for it covers them, and another one would cover no more.
    fn is_long(&self) -> bool {
        let records = self.records.borrow().len() as u64;
        // Tickets in `records` run without a gap up to `appended`.
        let uncut = match self.cut_below.get() {
            Some(below) => records.min((self.appended.get() + 1).saturating_sub(below)),
            None => records,
        };
        uncut >= self.records_max.div_ceil(4) as u64
    }

    /// Resolves once the log is long (`is_long`): the upkeep waits on this besides its timer,
    /// so that fast destroys meet a snapshot at once, not up to a timer tick later, when a
    /// small `--max-session-revocations` may already be full. A failed log is not waited on
    /// here: nothing is appended to it, and the upkeep's timer paces the snapshots that retry.
    pub async fn snapshot_wanted(&self) {
        std::future::poll_fn(|cx| {
            if self.is_long() {
                Poll::Ready(())
            } else {
                *self.upkeep.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Appends a revocation; its ticket, for `durable`. `successor`: the id a rotation gave the
    /// session (none for a destroy). The caller checked `refuses` first.
    pub fn append(&self, key: &SessionKey, expiry_ms: u64, successor: Option<&SessionKey>) -> u64 {
        assert!(!self.refuses(), "an append the log refuses");
        let ticket = self.appended.get() + 1;
        self.appended.set(ticket);
        self.records
            .borrow_mut()
            .push_back((ticket, encode(key, expiry_ms)));
        if let Some(successor) = successor {
            self.rotations
                .borrow_mut()
                .push_back((ticket, *key, *successor));
        }
        self.wake_flusher();
        self.wake_upkeep_if_long();
        ticket
    }

    /// The ticket the next append gets minus one: a snapshot whose copy starts now covers every
    /// record up to it.
    pub fn appended(&self) -> u64 {
        self.appended.get()
    }

    /// Ok(true) once `ticket` is durable, Ok(false) while it may still be; Err when the log
    /// failed before it was.
    pub fn is_durable(&self, ticket: u64) -> io::Result<bool> {
        if self.durable.get() >= ticket {
            Ok(true)
        } else if self.failed.get() {
            Err(io::Error::other("the session revocation log failed"))
        } else {
            Ok(false)
        }
    }

    /// The ticket of `key`'s revocation while it is not yet durable (appended, not synced):
    /// a second destroy of the id waits for it rather than find the id unknown and answer at
    /// once (a logout takes "unknown" for done). Scans only the records not yet durable, from
    /// the newest.
    pub fn pending_ticket(&self, key: &SessionKey) -> Option<u64> {
        let durable = self.durable.get();
        self.records
            .borrow()
            .iter()
            .rev()
            .take_while(|(ticket, _)| *ticket > durable)
            .find(|(_, record)| record[..16] == key[..])
            .map(|(ticket, _)| *ticket)
    }

    /// Whether `key` was revoked in memory but its record never became durable: the log
    /// failed first. Its owner answers 503 for it (never "unknown", which a logout takes for
    /// done) until a snapshot and a rewrite of the log make it durable.
    pub fn is_undurable(&self, key: &SessionKey) -> bool {
        self.failed.get() && self.pending_ticket(key).is_some()
    }

    /// The id a rotation away from `key` gave the session, while that rotation's revocation
    /// is not yet durable (its answer not yet sent). Scans from the newest.
    pub fn successor(&self, key: &SessionKey) -> Option<SessionKey> {
        let durable = self.durable.get();
        self.rotations
            .borrow()
            .iter()
            .rev()
            .take_while(|(ticket, ..)| *ticket > durable)
            .find(|(_, old, _)| old == key)
            .map(|(.., new)| *new)
    }

    /// Marks the log failed: a log that could not be read at start (the shard started without
    /// its sessions) is not appended to where it lies; destroys are refused and a snapshot is
    /// forced, after which the cut rewrites the whole file (temporary file and rename).
    pub fn fail(&self) {
        self.failed.set(true);
        self.wake_flusher();
    }

    /// Resolves once `ticket` is durable; Err when the log failed before it was.
    pub async fn durable(&self, ticket: u64) -> io::Result<()> {
        std::future::poll_fn(|cx| match self.is_durable(ticket) {
            Ok(true) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e)),
            Ok(false) => {
                self.waiters.borrow_mut().push((ticket, cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Asks for the records below `ticket` to be cut: a snapshot that holds none of their ids
    /// is durable.
    pub fn cut(&self, ticket: u64) {
        let below = self.cut_below.get().map_or(ticket, |t| t.max(ticket));
        self.cut_below.set(Some(below));
        self.wake_flusher();
    }

    fn wake_flusher(&self) {
        if let Some(waker) = self.flusher.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Wakes the upkeep waiting in `snapshot_wanted` once the log is long enough to want one.
    fn wake_upkeep_if_long(&self) {
        if !self.is_long() {
            return;
        }
        if let Some(waker) = self.upkeep.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Forgets the rotations whose revocation is durable: their answer is on its way, and a
    /// destroy of their old id is one of an unknown id (never followed to the new one, or a
    /// fixated old id could end the session it was rotated away from at any later time).
    fn forget_durable_rotations(&self) {
        let durable = self.durable.get();
        let mut rotations = self.rotations.borrow_mut();
        while rotations
            .front()
            .is_some_and(|(ticket, ..)| *ticket <= durable)
        {
            rotations.pop_front();
        }
    }

    fn wake_waiters(&self) {
        let durable = self.durable.get();
        let failed = self.failed.get();
        self.waiters.borrow_mut().retain(|(ticket, waker)| {
            let ready = failed || *ticket <= durable;
            if ready {
                waker.wake_by_ref();
            }
            !ready
        });
    }

    async fn flush_loop(log: Rc<RevocationLog>) {
        loop {
            std::future::poll_fn(|cx| {
                let unwritten = !log.failed.get() && log.appended.get() > log.written.get();
                if unwritten || log.cut_below.get().is_some() {
                    Poll::Ready(())
                } else {
                    *log.flusher.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            let result = match log.cut_below.take() {
                Some(below) => log.rewrite(below).await,
                None => log.write_batch().await,
            };
            if let Err(e) = result {
                crate::log_line!(
                    "percore: session revocation log {}: {e}; destroys are refused until the next snapshot",
                    log.path.display()
                );
                log.failed.set(true);
            }
            log.forget_durable_rotations();
            log.wake_waiters();
            // Appends during a long rewrite may have made the log long again after its cut.
            log.wake_upkeep_if_long();
        }
    }

    /// Writes and syncs every record appended since the last batch (group commit).
    async fn write_batch(&self) -> io::Result<()> {
        let through = self.appended.get();
        let bytes: Vec<u8> = self
            .records
            .borrow()
            .iter()
            .filter(|(ticket, _)| *ticket > self.written.get())
            .flat_map(|(_, record)| *record)
            .collect();
        if self.file.borrow().is_none() {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .buffered_open(&self.path)
                .await
                .map_err(glommio_error)?;
            // The directory entry must be durable too, or a crash could lose the whole file;
            // synced on the blocking pool, off the shard's serving path.
            let dir = self.dir.clone();
            glommio::executor()
                .spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
                .await?;
            *self.file.borrow_mut() = Some(file);
        }
        let file = self.file.borrow_mut().take().expect("opened above");
        let result = write_all_at(&file, bytes, self.file_bytes.get()).await;
        let result = match result {
            Ok(written) => file
                .fdatasync()
                .await
                .map(|()| written)
                .map_err(glommio_error),
            Err(e) => Err(e),
        };
        *self.file.borrow_mut() = Some(file);
        let written = result?;
        self.file_bytes.set(self.file_bytes.get() + written);
        self.written.set(through);
        self.durable.set(self.durable.get().max(through));
        Ok(())
    }

    /// Drops the records below `below` (a durable snapshot covers them) and replaces the file
    /// with the rest: temporary file, sync, rename, directory sync. An expired record stays
    /// until a snapshot covers it: its session may be in the snapshot on disk (destroyed while
    /// the snapshot was copied), and a restart with a longer `--session-lifetime` would find it
    /// live there. (What it drops is bounded anyway: the log is at most `records_max`.)
    /// Every record appended so far is then durable, and a failed log is whole again.
    async fn rewrite(&self, below: u64) -> io::Result<()> {
        let through = self.appended.get();
        let bytes: Vec<u8> = {
            let mut records = self.records.borrow_mut();
            records.retain(|(ticket, _)| *ticket >= below);
            records.iter().flat_map(|(_, record)| *record).collect()
        };
        let length = bytes.len() as u64;
        // Written like a snapshot (temporary file, sync, rename, directory sync), on the
        // blocking pool: none of that IO runs on the shard's serving path.
        let path = self.path.clone();
        glommio::executor()
            .spawn_blocking(move || super::persist::write_file(&path, &bytes))
            .await?;
        // The old handle (on the replaced file) closes as it drops; the next batch opens the
        // new file.
        self.file.borrow_mut().take();
        self.file_bytes.set(length);
        self.written.set(through);
        self.durable.set(self.durable.get().max(through));
        self.failed.set(false);
        Ok(())
    }
}

async fn write_all_at(file: &BufferedFile, mut bytes: Vec<u8>, mut at: u64) -> io::Result<u64> {
    let total = bytes.len() as u64;
    while !bytes.is_empty() {
        let n = file
            .write_at(bytes.clone(), at)
            .await
            .map_err(glommio_error)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        bytes.drain(..n);
        at += n as u64;
    }
    Ok(total)
}

fn glommio_error(e: glommio::GlommioError<()>) -> io::Error {
    io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_a_bad_tail_is_cut_and_bad_records_before_good_ones_fail() {
        let records = [([1u8; 16], 10), ([2u8; 16], 20), ([3u8; 16], 30)];
        let bytes: Vec<u8> = records.iter().flat_map(|(k, e)| encode(k, *e)).collect();
        assert_eq!(decode(&bytes).unwrap(), records.to_vec());
        for cut in 0..bytes.len() {
            assert_eq!(
                decode(&bytes[..cut]).unwrap(),
                records[..cut / RECORD_BYTES].to_vec()
            );
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x01;
            let index = at / RECORD_BYTES;
            if index == records.len() - 1 {
                assert_eq!(decode(&flipped).unwrap(), records[..index].to_vec());
            } else {
                assert!(decode(&flipped).is_err(), "flipped byte {at}");
            }
        }
        assert_eq!(
            decode(&[0u8; RECORD_BYTES * 2]).unwrap(),
            vec![],
            "zero-filled blocks"
        );
    }

    /// Review debt: a rewrite dropped the expired records it kept, judged by the expiry at the
    /// destroy's `--session-lifetime`; a session destroyed while the snapshot was copied is in
    /// that snapshot, and a restart with a longer lifetime after a crash found it live.
    #[test]
    fn a_rewrite_keeps_every_record_the_snapshot_does_not_cover_expired_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                // Expiry 5 ms after the epoch: long past.
                let log = RevocationLog::new(&path, 0, &[([1; 16], 5)], 8);
                let covered = log.append(&[2; 16], 5, None);
                let kept = log.append(&[3; 16], 5, None);
                log.rewrite(covered + 1).await.unwrap();
                assert_eq!(kept, covered + 1);
                assert_eq!(read(&super::path(&path, 0)).unwrap(), vec![([3; 16], 5)]);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// A snapshot is wanted from a quarter of the bound on, not counting the records a cut
    /// already asked for drops: a snapshot at once after one would cover nothing more.
    #[test]
    fn a_snapshot_is_wanted_from_a_quarter_of_the_bound_past_a_pending_cut() {
        // (records appended, tickets 1..; cut asked for below this ticket; wanted) at a bound
        // of 8, a quarter of which is 2.
        let cases = [
            (1, None, false),
            (2, None, true),
            (2, Some(2), false),
            (3, Some(2), true),
            (3, Some(3), false),
            (3, Some(4), false),
        ];
        for (appended, cut, wanted) in cases {
            let dir = tempfile::tempdir().unwrap();
            let log = RevocationLog::new(dir.path(), 0, &[], 8);
            for key in 0..appended {
                log.append(&[key; 16], 5, None);
            }
            if let Some(below) = cut {
                log.cut(below);
            }
            assert_eq!(
                log.wants_snapshot(),
                wanted,
                "{appended}, cut below {cut:?}"
            );
        }
    }

    #[test]
    fn a_revocation_not_yet_durable_when_the_log_fails_is_undurable() {
        let dir = tempfile::tempdir().unwrap();
        let log = RevocationLog::new(dir.path(), 0, &[([1; 16], 5)], 8);
        assert_eq!(log.pending_ticket(&[1; 16]), None, "loaded: durable");
        let ticket = log.append(&[7; 16], 100, None);
        log.append(&[9; 16], 100, None);
        assert_eq!(log.pending_ticket(&[7; 16]), Some(ticket));
        assert_eq!(log.pending_ticket(&[8; 16]), None);
        assert!(!log.is_undurable(&[7; 16]), "not failed");
        log.failed.set(true);
        assert!(log.is_undurable(&[7; 16]));
        assert!(!log.is_undurable(&[8; 16]), "another key");
        log.durable.set(ticket);
        assert!(
            !log.is_undurable(&[7; 16]),
            "it was synced before the failure"
        );
        assert_eq!(log.pending_ticket(&[7; 16]), None);
    }
}
