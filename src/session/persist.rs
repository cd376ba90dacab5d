//! Session snapshots: one file per shard under the data dir, framed with a magic, a length and a CRC32 so a torn or corrupt file is detected and skipped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::id::SessionKey;
use super::store::{SessionRecord, StoredValue, value_depth};
use crate::config::limits::SESSION_VALUE_DEPTH_MAX;

const MAGIC: &[u8; 8] = b"PCSESS1\n";
/// magic + crc32 (4) + payload length (8).
const HEADER_BYTES: usize = 8 + 4 + 8;

#[derive(Serialize, Deserialize)]
struct Snapshot<Entry> {
    node: u16,
    shard: u16,
    sessions: Vec<Entry>,
}

/// A session as written: its record's fields beside its key, borrowed (a snapshot of a full
/// store cloned every record once more). Not `#[serde(flatten)]`, which reads a value through
/// serde's buffer, where a value held as JSON text (`StoredValue`) cannot be read.
#[derive(Serialize)]
struct EntryOut<'a> {
    key: String,
    created_ms: u64,
    accessed_ms: u64,
    data: &'a BTreeMap<String, StoredValue>,
}

/// A session as read: the same fields, owned.
#[derive(Deserialize)]
struct EntryIn {
    key: String,
    created_ms: u64,
    accessed_ms: u64,
    data: BTreeMap<String, StoredValue>,
}

pub fn path(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("sessions-{shard}.snap"))
}

/// Removes the session files (snapshot, revocation log) of shard indices at or past
/// `shard_count`, left by a run with more shards: no shard of this run reads them, an id they
/// hold is unknown here (its owner does not exist), and a destroy of it cannot reach them; a
/// later run with as many shards as before would bring back every session in them, those
/// logged out meanwhile included. The names of what was removed.
pub fn retire_beyond(dir: &Path, shard_count: usize) -> std::io::Result<Vec<String>> {
    let mut retired = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(retired),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(shard) = name
            .strip_prefix("sessions-")
            .and_then(|rest| rest.split_once('.'))
            .filter(|(_, kind)| matches!(*kind, "snap" | "revoked"))
            .and_then(|(shard, _)| {
                shard
                    .parse::<usize>()
                    .ok()
                    .filter(|n| n.to_string() == shard)
            })
        else {
            continue;
        };
        if shard >= shard_count {
            std::fs::remove_file(dir.join(name))?;
            retired.push(name.to_string());
        }
    }
    if !retired.is_empty() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    retired.sort();
    Ok(retired)
}

/// Serializes a snapshot session by session into the file's bytes: a shard encodes its store in
/// steps, with no copy of its records and no second buffer (a review measured a snapshot at four
/// times the store: the records cloned, the payload, the payload copied behind the header).
/// The same JSON as `Snapshot` (`{"node":..,"shard":..,"sessions":[..]}`).
///
/// Streamed (`take`, `finish_streamed`), the bytes go to the file in chunks as they are
/// encoded, so a snapshot costs one chunk beside the store, not a copy of it (found in review:
/// a snapshot of a full store held twice the store).
pub struct Encoder {
    out: Vec<u8>,
    sessions: usize,
    /// Taken by `take`: the header went out with the first chunk, unfilled.
    taken: bool,
    /// Of the payload bytes taken so far.
    crc: crc32fast::Hasher,
    length: u64,
}

impl Encoder {
    pub fn new(node: u16, shard: u16) -> Encoder {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[0; HEADER_BYTES - MAGIC.len()]); // crc and length: `finish`
        write!(out, r#"{{"node":{node},"shard":{shard},"sessions":["#).expect("a Vec takes it");
        Encoder {
            out,
            sessions: 0,
            taken: false,
            crc: crc32fast::Hasher::new(),
            length: 0,
        }
    }

    /// Bytes encoded and not yet taken.
    pub fn buffered(&self) -> usize {
        self.out.len()
    }

    /// The bytes encoded since the last take, for the file (the first chunk starts with the
    /// header, its checksum and length written last by `finish_tmp`).
    pub fn take(&mut self) -> Vec<u8> {
        let chunk = std::mem::take(&mut self.out);
        let payload = if self.taken {
            &chunk[..]
        } else {
            &chunk[HEADER_BYTES..]
        };
        self.crc.update(payload);
        self.length += payload.len() as u64;
        self.taken = true;
        chunk
    }

    /// The last chunk and the header's checksum and length (bytes 8 to 20 of the file).
    pub fn finish_streamed(mut self) -> (Vec<u8>, [u8; HEADER_BYTES - 8]) {
        self.out.extend_from_slice(b"]}");
        let last = self.take();
        let mut header = [0u8; HEADER_BYTES - 8];
        header[..4].copy_from_slice(&self.crc.finalize().to_le_bytes());
        header[4..].copy_from_slice(&self.length.to_le_bytes());
        (last, header)
    }

    pub fn push(&mut self, key: &SessionKey, record: &SessionRecord) {
        if self.sessions > 0 {
            self.out.push(b',');
        }
        let entry = EntryOut {
            key: URL_SAFE_NO_PAD.encode(key),
            created_ms: record.created_ms,
            accessed_ms: record.accessed_ms,
            data: &record.data,
        };
        serde_json::to_writer(&mut self.out, &entry).expect("session data is JSON already");
        self.sessions += 1;
    }

    /// The file's bytes, header filled in, when nothing was taken. Checksums the whole payload:
    /// call it off the shard.
    pub fn finish(mut self) -> Vec<u8> {
        assert!(!self.taken, "a streamed snapshot ends with finish_streamed");
        self.out.extend_from_slice(b"]}");
        let payload = &self.out[HEADER_BYTES..];
        let (crc, length) = (crc32fast::hash(payload), payload.len() as u64);
        self.out[8..12].copy_from_slice(&crc.to_le_bytes());
        self.out[12..20].copy_from_slice(&length.to_le_bytes());
        self.out
    }
}

/// Serializes a snapshot: header then JSON payload.
pub fn encode<'a>(
    node: u16,
    shard: u16,
    sessions: impl Iterator<Item = (&'a SessionKey, &'a SessionRecord)>,
) -> Vec<u8> {
    let mut encoder = Encoder::new(node, shard);
    for (key, record) in sessions {
        encoder.push(key, record);
    }
    encoder.finish()
}

/// The sessions of a snapshot, as read.
pub type Sessions = Vec<(SessionKey, SessionRecord)>;

/// Why a snapshot was not loaded: it could not be read, or it is not a whole snapshot of this
/// shard (the reason, for the log).
#[derive(Debug)]
pub enum LoadError {
    Read(std::io::Error),
    Bad(String),
}

/// Reads and parses shard `shard`'s snapshot at `path` (blocking, at start-up): None when there
/// is none. Streamed from the file and checksummed as it is parsed, so the file's bytes are
/// never held beside the sessions (found in review: a start held twice the store); sessions
/// parsed from a file whose checksum then fails are dropped.
pub fn load(path: &Path, node: u16, shard: u16) -> Result<Option<Sessions>, LoadError> {
    let Some(file) = open_regular(path).map_err(LoadError::Read)? else {
        return Ok(None);
    };
    let file_bytes = file.metadata().map_err(LoadError::Read)?.len();
    decode_from(file, file_bytes, node, shard).map(Some)
}

/// Parses a snapshot written for (`node`, `shard`). Err says what is wrong, for the log.
pub fn decode(bytes: &[u8], node: u16, shard: u16) -> Result<Sessions, String> {
    decode_from(bytes, bytes.len() as u64, node, shard).map_err(|e| match e {
        LoadError::Bad(reason) => reason,
        LoadError::Read(e) => e.to_string(),
    })
}

/// A reader that checksums what it reads.
struct Checksummed<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: std::io::Read> std::io::Read for Checksummed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.crc.update(&buf[..read]);
        Ok(read)
    }
}

/// Bytes read from a snapshot file at a time.
const LOAD_BUFFER_BYTES: usize = 64 * 1024;

/// `decode` from a reader of `total` bytes.
fn decode_from(
    mut reader: impl std::io::Read,
    total: u64,
    node: u16,
    shard: u16,
) -> Result<Sessions, LoadError> {
    let bad = |reason: String| LoadError::Bad(reason);
    let mut header = [0u8; HEADER_BYTES];
    if total < HEADER_BYTES as u64 || reader.read_exact(&mut header).is_err() {
        return Err(bad("not a percore session snapshot".into()));
    }
    if &header[..8] != MAGIC {
        return Err(bad("not a percore session snapshot".into()));
    }
    let crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let length = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    let payload_bytes = total - HEADER_BYTES as u64;
    if payload_bytes != length {
        return Err(bad(format!(
            "truncated: {payload_bytes} of {length} payload bytes"
        )));
    }
    let checksummed = Checksummed {
        inner: reader.take(length),
        crc: crc32fast::Hasher::new(),
    };
    let mut payload = std::io::BufReader::with_capacity(LOAD_BUFFER_BYTES, checksummed);
    let parsed: Result<Snapshot<EntryIn>, _> = serde_json::from_reader(&mut payload);
    // What a parse left unread (after an error) is checksummed too: a damaged file says so,
    // whatever the damage did to the parse.
    std::io::copy(&mut payload, &mut std::io::sink()).map_err(LoadError::Read)?;
    if payload.into_inner().crc.finalize() != crc {
        return Err(bad("checksum mismatch".into()));
    }
    let snapshot = parsed.map_err(|e| bad(format!("bad payload: {e}")))?;
    if snapshot.node != node || snapshot.shard != shard {
        return Err(bad(format!(
            "written by node {} shard {}",
            snapshot.node, snapshot.shard
        )));
    }
    let mut sessions = Vec::with_capacity(snapshot.sessions.len());
    for entry in snapshot.sessions {
        let mut key = [0u8; 16];
        match URL_SAFE_NO_PAD.decode_slice(entry.key.as_bytes(), &mut key) {
            Ok(16) => {
                // A value is read as JSON text, which the parse checks without a depth bound
                // and without reading numbers and strings as a tree does: one that a write
                // cannot make (a damaged or foreign file) is refused here, not met by the first
                // read of its session (found in review: `1e400` there ended the process).
                for value in entry.data.values() {
                    let tree: serde_json::Value = serde_json::from_str(value.json())
                        .map_err(|e| bad(format!("a value that cannot be read: {e}")))?;
                    if value_depth(&tree) > SESSION_VALUE_DEPTH_MAX {
                        return Err(bad(format!(
                            "a value nests more than {SESSION_VALUE_DEPTH_MAX} levels"
                        )));
                    }
                }
                let record = SessionRecord {
                    created_ms: entry.created_ms,
                    accessed_ms: entry.accessed_ms,
                    data: entry.data,
                };
                sessions.push((key, record));
            }
            _ => return Err(bad("bad session key".into())),
        }
    }
    Ok(sessions)
}

/// Reads a session file at start-up (blocking): None when there is none. Only a regular file is
/// read: opening a FIFO would block the shard's start for good, and a symbolic link can point
/// anywhere (`/dev/zero` never ends). Anything else is an error, which the caller fails closed on.
pub fn read_file(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let Some(mut file) = open_regular(path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Opens `path` for reading if it is a regular file (see `read_file`); None when there is none.
fn open_regular(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not a regular file");
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(not_regular()),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    Ok(Some(file))
}

/// Writes `bytes` to `path` durably: temporary file, fsync, rename, fsync of the directory.
/// Blocking: call it off the shard (glommio's blocking pool) or at shutdown.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = create_tmp(path)?;
    file.write_all(bytes)?;
    finish_tmp(file, path, &[], None)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Creates (empty) the temporary file `path` is written through (blocking).
pub fn create_tmp(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    std::fs::File::create(tmp_path(path))
}

/// Ends a file written through `create_tmp` (blocking): writes `last`, then `header` (a
/// streamed snapshot's checksum and length) at byte 8, syncs it, renames it over `path` and
/// syncs the directory.
pub fn finish_tmp(
    mut file: std::fs::File,
    path: &Path,
    last: &[u8],
    header: Option<[u8; HEADER_BYTES - 8]>,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all(last)?;
    if let Some(header) = header {
        file.write_all_at(&header, 8)?;
    }
    file.sync_data()?;
    drop(file);
    std::fs::rename(tmp_path(path), path)?;
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retire_beyond_removes_only_session_files_of_missing_shards() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "sessions-0.snap",
            "sessions-0.revoked",
            "sessions-1.snap",
            "sessions-2.revoked",
            "sessions-03.snap",
            "sessions-+1.revoked",
            "sessions-1.snap.tmp",
            "sessions-1.other",
            "wal-0-0000000000.log",
            "percore.lock",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let retired = retire_beyond(dir.path(), 1).unwrap();
        assert_eq!(retired, ["sessions-1.snap", "sessions-2.revoked"]);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !retired.iter().any(|r| r == n))
            .collect();
        want.sort();
        assert_eq!(left, want);
        assert_eq!(
            retire_beyond(&dir.path().join("none"), 0).unwrap(),
            Vec::<String>::new()
        );
    }

    fn record(n: u64) -> SessionRecord {
        let mut data = std::collections::BTreeMap::new();
        data.insert("n".into(), StoredValue::new(&serde_json::json!(n)));
        SessionRecord {
            created_ms: n,
            accessed_ms: n + 1,
            data,
        }
    }

    /// `[[...[]...]]`, `depth` levels.
    fn nested(depth: usize) -> serde_json::Value {
        (1..depth).fold(serde_json::json!([]), |inner, _| serde_json::json!([inner]))
    }

    #[test]
    fn the_deepest_value_a_snapshot_reads_back() {
        let round_trip = |depth: usize| {
            let mut session = record(1);
            let deep = StoredValue::new(&nested(depth));
            session.data.insert("deep".into(), deep);
            let key = [1u8; 16];
            let bytes = encode(0, 0, std::iter::once((&key, &session)));
            decode(&bytes, 0, 0).map(|decoded| decoded[0].1 == session)
        };
        assert_eq!(round_trip(SESSION_VALUE_DEPTH_MAX), Ok(true));
        let past = round_trip(SESSION_VALUE_DEPTH_MAX + 1).unwrap_err();
        assert!(past.contains("nests more than 64 levels"), "{past}");
        // Far past what serde_json parses as a tree: refused, not a panic when read.
        assert!(round_trip(200).is_err());
        // JSON text that a tree cannot hold: refused too.
        for text in ["1e400", r#""\ud800""#] {
            let mut session = record(1);
            let odd: StoredValue = serde_json::from_str(text).unwrap();
            session.data.insert("odd".into(), odd);
            let bytes = encode(0, 0, std::iter::once((&[1u8; 16], &session)));
            let refused = decode(&bytes, 0, 0).unwrap_err();
            assert!(refused.contains("cannot be read"), "{text}: {refused}");
        }
    }

    #[test]
    fn round_trip_and_every_corruption_is_detected() {
        let sessions = [([1u8; 16], record(1)), ([2u8; 16], record(2))];
        let bytes = encode(3, 1, sessions.iter().map(|(k, r)| (k, r)));
        let mut decoded = decode(&bytes, 3, 1).unwrap();
        decoded.sort_by_key(|(k, _)| *k);
        assert_eq!(decoded, sessions.to_vec());
        assert!(decode(&bytes, 3, 0).is_err(), "another shard's file");
        assert!(decode(&bytes, 4, 1).is_err(), "another node's file");
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], 3, 1).is_err(), "torn at {cut}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x20;
            assert!(decode(&flipped, 3, 1).is_err(), "flipped byte {at}");
        }
    }

    /// A snapshot written in chunks as it is encoded is the same file as one encoded whole,
    /// and `load` reads it back from the file; a damaged file is refused by its checksum.
    #[test]
    fn a_streamed_snapshot_is_the_same_file_and_loads() {
        let sessions: Vec<([u8; 16], SessionRecord)> =
            (0..40u8).map(|n| ([n; 16], record(u64::from(n)))).collect();
        let whole = encode(3, 1, sessions.iter().map(|(k, r)| (k, r)));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions-1.snap");
        let mut file = create_tmp(&path).unwrap();
        let mut encoder = Encoder::new(3, 1);
        for (index, (key, record)) in sessions.iter().enumerate() {
            encoder.push(key, record);
            // Chunks of every size, the first one (with the header) included.
            if index % 7 == 0 {
                file.write_all(&encoder.take()).unwrap();
            }
        }
        let (last, header) = encoder.finish_streamed();
        finish_tmp(file, &path, &last, Some(header)).unwrap();
        assert!(std::fs::read(&path).unwrap() == whole, "the same bytes");
        let mut loaded = load(&path, 3, 1).unwrap().unwrap();
        loaded.sort_by_key(|(k, _)| *k);
        assert_eq!(loaded, sessions);
        assert!(matches!(load(&dir.path().join("none"), 3, 1), Ok(None)));
        let mut damaged = whole.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0x01;
        std::fs::write(&path, &damaged).unwrap();
        match load(&path, 3, 1) {
            Err(LoadError::Bad(reason)) => assert_eq!(reason, "checksum mismatch"),
            other => panic!("{other:?}"),
        }
    }
}
