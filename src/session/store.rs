//! One shard's session store: data, sliding and absolute expiry, the LRU bound and the bytes bound; pure (time is an argument), no IO.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::id::SessionKey;

#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    pub sessions_max: usize,
    pub session_bytes_max: usize,
    pub idle_timeout_ms: u64,
    pub lifetime_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// No such session (never existed, destroyed, expired or evicted).
    Unknown,
    /// The write would take the session past its bytes bound.
    TooLarge,
}

pub type SessionData = BTreeMap<String, Value>;

/// One session as persisted and as the store holds it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SessionRecord {
    pub created_ms: u64,
    pub accessed_ms: u64,
    pub data: SessionData,
}

struct Entry {
    record: SessionRecord,
    bytes: usize,
    access_seq: u64,
    created_seq: u64,
}

/// Counters the store keeps about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounters {
    pub evictions: u64,
    pub expirations: u64,
    pub created: u64,
    pub destroyed: u64,
}

pub struct Store {
    limits: StoreLimits,
    entries: HashMap<SessionKey, Entry>,
    /// (last access ms, seq) -> key: the LRU order, and the idle-expiry order.
    by_access: BTreeMap<(u64, u64), SessionKey>,
    /// (created ms, seq) -> key: the absolute-expiry order.
    by_created: BTreeMap<(u64, u64), SessionKey>,
    seq: u64,
    bytes_total: usize,
    pub counters: StoreCounters,
    /// Bumped by every change; the snapshot task writes only when it moved.
    pub generation: u64,
}

/// Bytes a value costs against the per-session bound: its key and its JSON text.
pub fn value_bytes(name: &str, value: &Value) -> usize {
    name.len() + value.to_string().len()
}

impl Store {
    pub fn new(limits: StoreLimits) -> Store {
        Store {
            limits,
            entries: HashMap::new(),
            by_access: BTreeMap::new(),
            by_created: BTreeMap::new(),
            seq: 0,
            bytes_total: 0,
            counters: StoreCounters::default(),
            generation: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes_total
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn expired(&self, record: &SessionRecord, now_ms: u64) -> bool {
        now_ms
            >= record
                .accessed_ms
                .saturating_add(self.limits.idle_timeout_ms)
            || now_ms >= record.created_ms.saturating_add(self.limits.lifetime_ms)
    }

    /// Adds a session (a fresh one, or one loaded from a snapshot). At the bound an expired
    /// session is reclaimed first (an expiration); only when none is expired is the least
    /// recently used live session evicted (an eviction); returns the evicted key.
    pub fn insert(
        &mut self,
        key: SessionKey,
        record: SessionRecord,
        now_ms: u64,
    ) -> Option<SessionKey> {
        let mut evicted = None;
        if self.entries.len() >= self.limits.sessions_max
            && self.sweep(now_ms, 1) == 0
            && let Some((_, &oldest)) = self.by_access.iter().next()
        {
            self.remove(&oldest);
            self.counters.evictions += 1;
            evicted = Some(oldest);
        }
        let bytes = record.data.iter().map(|(k, v)| value_bytes(k, v)).sum();
        let access_seq = self.next_seq();
        let created_seq = self.next_seq();
        self.by_access.insert((record.accessed_ms, access_seq), key);
        self.by_created
            .insert((record.created_ms, created_seq), key);
        self.bytes_total += bytes;
        if let Some(old) = self.entries.insert(
            key,
            Entry {
                record,
                bytes,
                access_seq,
                created_seq,
            },
        ) {
            // A key collision of 128 random bits: our bug, not the world's.
            panic!(
                "session key inserted twice (created {})",
                old.record.created_ms
            );
        }
        self.counters.created += 1;
        self.generation += 1;
        evicted
    }

    pub fn create(&mut self, key: SessionKey, now_ms: u64) -> Option<SessionKey> {
        self.insert(
            key,
            SessionRecord {
                created_ms: now_ms,
                accessed_ms: now_ms,
                data: SessionData::new(),
            },
            now_ms,
        )
    }

    fn remove(&mut self, key: &SessionKey) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.by_access
            .remove(&(entry.record.accessed_ms, entry.access_seq));
        self.by_created
            .remove(&(entry.record.created_ms, entry.created_seq));
        self.bytes_total -= entry.bytes;
        self.generation += 1;
        Some(entry)
    }

    /// Finds a live session and slides its idle timeout. An expired one is removed on the spot.
    fn touch(&mut self, key: &SessionKey, now_ms: u64) -> Result<&mut Entry, StoreError> {
        let expired = match self.entries.get(key) {
            None => return Err(StoreError::Unknown),
            Some(entry) => self.expired(&entry.record, now_ms),
        };
        if expired {
            self.remove(key);
            self.counters.expirations += 1;
            return Err(StoreError::Unknown);
        }
        let seq = self.next_seq();
        let entry = self.entries.get_mut(key).expect("checked above");
        let old = (entry.record.accessed_ms, entry.access_seq);
        entry.record.accessed_ms = entry.record.accessed_ms.max(now_ms);
        entry.access_seq = seq;
        let new = (entry.record.accessed_ms, seq);
        self.by_access.remove(&old);
        self.by_access.insert(new, *key);
        Ok(self.entries.get_mut(key).expect("checked above"))
    }

    pub fn data(&mut self, key: &SessionKey, now_ms: u64) -> Result<SessionData, StoreError> {
        Ok(self.touch(key, now_ms)?.record.data.clone())
    }

    pub fn get(
        &mut self,
        key: &SessionKey,
        name: &str,
        now_ms: u64,
    ) -> Result<Option<Value>, StoreError> {
        Ok(self.touch(key, now_ms)?.record.data.get(name).cloned())
    }

    pub fn put(
        &mut self,
        key: &SessionKey,
        name: &str,
        value: Value,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let bytes_max = self.limits.session_bytes_max;
        let entry = self.touch(key, now_ms)?;
        let old_bytes = entry
            .record
            .data
            .get(name)
            .map_or(0, |v| value_bytes(name, v));
        let new_bytes = value_bytes(name, &value);
        let bytes = entry.bytes - old_bytes + new_bytes;
        if bytes > bytes_max {
            return Err(StoreError::TooLarge);
        }
        entry.bytes = bytes;
        entry.record.data.insert(name.to_string(), value);
        self.bytes_total = self.bytes_total - old_bytes + new_bytes;
        self.generation += 1;
        Ok(())
    }

    /// Removes one value; Ok(false) when the session has no such value.
    pub fn remove_value(
        &mut self,
        key: &SessionKey,
        name: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let entry = self.touch(key, now_ms)?;
        let Some(old) = entry.record.data.remove(name) else {
            return Ok(false);
        };
        let bytes = value_bytes(name, &old);
        entry.bytes -= bytes;
        self.bytes_total -= bytes;
        self.generation += 1;
        Ok(true)
    }

    /// Destroys a live session; false (unknown) for none or an expired one, which is removed
    /// and counted as an expiration.
    pub fn destroy(&mut self, key: &SessionKey, now_ms: u64) -> bool {
        if self.touch(key, now_ms).is_err() {
            return false;
        }
        self.remove(key);
        self.counters.destroyed += 1;
        true
    }

    /// Moves a live session's data to `new_key`; the old key is dead afterwards.
    pub fn rotate(
        &mut self,
        old_key: &SessionKey,
        new_key: SessionKey,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.touch(old_key, now_ms)?;
        let entry = self.remove(old_key).expect("touched above");
        self.insert(new_key, entry.record, now_ms);
        self.counters.created -= 1; // a rotation is not a new session
        Ok(())
    }

    /// Removes up to `steps_max` expired sessions, oldest first; returns how many. Bounded so a
    /// sweep step never stalls serving.
    pub fn sweep(&mut self, now_ms: u64, steps_max: usize) -> usize {
        let mut removed = 0;
        while removed < steps_max {
            let idle = self.by_access.iter().next().map(|(_, k)| *k);
            let old = self.by_created.iter().next().map(|(_, k)| *k);
            let candidate = [idle, old].into_iter().flatten().find(|k| {
                self.entries
                    .get(k)
                    .is_some_and(|e| self.expired(&e.record, now_ms))
            });
            let Some(key) = candidate else { break };
            self.remove(&key);
            self.counters.expirations += 1;
            removed += 1;
        }
        removed
    }

    /// Every live session, for a snapshot.
    pub fn records(&self, now_ms: u64) -> impl Iterator<Item = (&SessionKey, &SessionRecord)> {
        self.entries
            .iter()
            .filter(move |(_, e)| !self.expired(&e.record, now_ms))
            .map(|(k, e)| (k, &e.record))
    }

    /// The records of `keys` that still exist (a snapshot step).
    pub fn records_of<'a>(
        &'a self,
        keys: &'a [SessionKey],
    ) -> impl Iterator<Item = (&'a SessionKey, &'a SessionRecord)> {
        keys.iter()
            .filter_map(|k| self.entries.get_key_value(k))
            .map(|(k, e)| (k, &e.record))
    }

    pub fn contains(&self, key: &SessionKey) -> bool {
        self.entries.contains_key(key)
    }
}
