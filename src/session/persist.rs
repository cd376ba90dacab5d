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
pub struct Encoder {
    out: Vec<u8>,
    sessions: usize,
}

impl Encoder {
    pub fn new(node: u16, shard: u16) -> Encoder {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[0; HEADER_BYTES - MAGIC.len()]); // crc and length: `finish`
        write!(out, r#"{{"node":{node},"shard":{shard},"sessions":["#).expect("a Vec takes it");
        Encoder { out, sessions: 0 }
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

    /// The file's bytes, header filled in. Checksums the whole payload: call it off the shard.
    pub fn finish(mut self) -> Vec<u8> {
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

/// Parses a snapshot written for (`node`, `shard`). Err says what is wrong, for the log.
pub fn decode(
    bytes: &[u8],
    node: u16,
    shard: u16,
) -> Result<Vec<(SessionKey, SessionRecord)>, String> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err("not a percore session snapshot".into());
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let length = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let payload = &bytes[HEADER_BYTES..];
    if payload.len() as u64 != length {
        return Err(format!(
            "truncated: {} of {length} payload bytes",
            payload.len()
        ));
    }
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    let snapshot: Snapshot<EntryIn> =
        serde_json::from_slice(payload).map_err(|e| format!("bad payload: {e}"))?;
    if snapshot.node != node || snapshot.shard != shard {
        return Err(format!(
            "written by node {} shard {}",
            snapshot.node, snapshot.shard
        ));
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
                        .map_err(|e| format!("a value that cannot be read: {e}"))?;
                    if value_depth(&tree) > SESSION_VALUE_DEPTH_MAX {
                        return Err(format!(
                            "a value nests more than {SESSION_VALUE_DEPTH_MAX} levels"
                        ));
                    }
                }
                let record = SessionRecord {
                    created_ms: entry.created_ms,
                    accessed_ms: entry.accessed_ms,
                    data: entry.data,
                };
                sessions.push((key, record));
            }
            _ => return Err("bad session key".into()),
        }
    }
    Ok(sessions)
}

/// Reads a session file at start-up (blocking): None when there is none. Only a regular file is
/// read: opening a FIFO would block the shard's start for good, and a symbolic link can point
/// anywhere (`/dev/zero` never ends). Anything else is an error, which the caller fails closed on.
pub fn read_file(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not a regular file");
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(not_regular()),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Writes `bytes` to `path` durably: temporary file, fsync, rename, fsync of the directory.
/// Blocking: call it off the shard (glommio's blocking pool) or at shutdown.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
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
}
