//! One shard's session store: data, sliding and absolute expiry, the LRU bound and the bytes bound; pure (time is an argument), no IO.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::id::SessionKey;
use crate::config::limits::{SESSION_VALUE_DEPTH_MAX, SESSION_VALUE_OVERHEAD_BYTES};

#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    pub sessions_max: usize,
    /// Logged-in sessions of one user (`--max-sessions-per-user`): past it, that user's least
    /// recently used session goes.
    pub sessions_per_user_max: usize,
    pub session_bytes_max: usize,
    /// Bytes of data the whole store holds (`--max-session-store-bytes`), counted as
    /// `session_bytes_max` counts a session's.
    pub store_bytes_max: usize,
    pub idle_timeout_ms: u64,
    pub lifetime_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// No such session (never existed, destroyed, expired or evicted).
    Unknown,
    /// The write would take the session past its bytes bound.
    TooLarge,
    /// The value nests more than `SESSION_VALUE_DEPTH_MAX` arrays or objects.
    TooDeep,
    /// At the sessions bound, or the store's bytes bound, with every session authenticated
    /// (but the writer's): a new session or a write is refused rather than log a user out.
    Full,
    /// Never from the store: its owner's answer for an id whose destroy or rotation took
    /// effect but is not durable (the revocation log failed first; `Sessions::handle`).
    Unavailable,
}

/// The value the server writes into a session when a user logs in (auth's `SESSION_USER`, kept
/// equal by a unit test). A session that holds it is authenticated: the bound evicts it only
/// after every anonymous session, and `try_insert` never does.
pub const USER_VALUE: &str = "percore.user";

/// The name of the user a `USER_VALUE` holds: auth's `SessionUser`, `{"user": NAME, ...}` or a
/// bare NAME (a unit test keeps them in step).
pub fn user_name(value: &Value) -> Option<&str> {
    match value {
        Value::String(name) => Some(name),
        Value::Object(fields) => fields.get("user")?.as_str(),
        _ => None,
    }
}

/// A session's use is a change for the snapshot when its access time enters a new
/// `1 / ACCESS_QUANTA_PER_IDLE_TIMEOUT` of the idle timeout (`touch`).
const ACCESS_QUANTA_PER_IDLE_TIMEOUT: u64 = 8;

/// A session's values as an app reads them.
pub type SessionData = BTreeMap<String, Value>;

/// A session value as the store holds it: its JSON text, compact. A `serde_json::Value` tree
/// cost up to 16 times the text the bytes bound counted (a soak review: `[0,0,...]` in 16 KiB
/// took 259 KiB), and a snapshot cloned it twice more; the text costs what it counts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StoredValue(Box<RawValue>);

impl StoredValue {
    pub fn new(value: &Value) -> StoredValue {
        StoredValue(serde_json::value::to_raw_value(value).expect("a Value is JSON"))
    }

    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The value as a tree (it was JSON when stored: a `Value` written, or a snapshot's text,
    /// which the snapshot's parse checked).
    pub fn value(&self) -> Value {
        serde_json::from_str(self.json()).expect("a stored value is JSON")
    }
}

impl PartialEq for StoredValue {
    fn eq(&self, other: &StoredValue) -> bool {
        self.json() == other.json()
    }
}

/// One session as persisted and as the store holds it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SessionRecord {
    pub created_ms: u64,
    pub accessed_ms: u64,
    pub data: BTreeMap<String, StoredValue>,
}

struct Entry {
    record: SessionRecord,
    bytes: usize,
    access_seq: u64,
    created_seq: u64,
    /// The user `USER_VALUE` names (`user_name`), kept to find the session in `by_user`.
    user: Option<Box<str>>,
}

/// The user a session's `USER_VALUE` names, if it holds one that names a user.
fn user_of(record: &SessionRecord) -> Option<Box<str>> {
    let value = record.data.get(USER_VALUE)?.value();
    user_name(&value).map(Box::from)
}

/// Counters the store keeps about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounters {
    pub evictions: u64,
    pub expirations: u64,
    pub created: u64,
    pub destroyed: u64,
    /// New sessions, and writes, refused at a bound because every session was authenticated.
    pub refusals: u64,
}

pub struct Store {
    limits: StoreLimits,
    entries: HashMap<SessionKey, Entry>,
    /// (last access ms, seq) -> key of the anonymous sessions: their LRU order, the one the
    /// bound evicts from, and their idle-expiry order.
    by_access: BTreeMap<(u64, u64), SessionKey>,
    /// The same for the authenticated sessions (holding `USER_VALUE`): evicted only by `insert`
    /// when there is no anonymous session left, never by `try_insert`. Two lists keep every
    /// operation O(log n): an anonymous flood evicts only anonymous sessions.
    by_access_authenticated: BTreeMap<(u64, u64), SessionKey>,
    /// (created ms, seq) -> key: the absolute-expiry order.
    by_created: BTreeMap<(u64, u64), SessionKey>,
    /// Each user's logged-in sessions in their LRU order (the same positions as
    /// `by_access_authenticated`), for `--max-sessions-per-user`.
    by_user: HashMap<Box<str>, BTreeMap<(u64, u64), SessionKey>>,
    seq: u64,
    bytes_total: usize,
    /// The part of `bytes_total` the authenticated sessions hold.
    bytes_authenticated: usize,
    pub counters: StoreCounters,
    /// Bumped by every change, a session's use included (its access time is in the
    /// snapshot); the snapshot task writes only when it moved.
    pub generation: u64,
}

/// Levels of arrays and objects in `value`: 0 for a scalar, 1 for `[]` or `{"a": 1}`. Recursion
/// is bounded: serde_json builds at most 128 levels from text, and what an app builds in code
/// is checked only once it is whole.
pub fn value_depth(value: &Value) -> usize {
    let deepest = |values: &mut dyn Iterator<Item = &Value>| values.map(value_depth).max();
    match value {
        Value::Array(items) => 1 + deepest(&mut items.iter()).unwrap_or(0),
        Value::Object(fields) => 1 + deepest(&mut fields.values()).unwrap_or(0),
        _ => 0,
    }
}

/// Bytes a value costs against the per-session bound: its name, its JSON text and
/// `SESSION_VALUE_OVERHEAD_BYTES` for its place in the session's map (without it a session of
/// 4,000 one-byte values took 30 times the bytes counted).
pub fn value_bytes(name: &str, json: &str) -> usize {
    name.len() + json.len() + SESSION_VALUE_OVERHEAD_BYTES
}

impl Store {
    pub fn new(limits: StoreLimits) -> Store {
        Store {
            limits,
            entries: HashMap::new(),
            by_access: BTreeMap::new(),
            by_access_authenticated: BTreeMap::new(),
            by_created: BTreeMap::new(),
            by_user: HashMap::new(),
            seq: 0,
            bytes_total: 0,
            bytes_authenticated: 0,
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

    /// The LRU list a session with `record` belongs on.
    fn lru(&mut self, record: &SessionRecord) -> &mut BTreeMap<(u64, u64), SessionKey> {
        if record.data.contains_key(USER_VALUE) {
            &mut self.by_access_authenticated
        } else {
            &mut self.by_access
        }
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
    /// recently used live anonymous session evicted (an eviction); returns the evicted key.
    /// When every session is authenticated, Err(Full): the new session is refused (Tomcat's
    /// `maxActiveSessions`), so a flood of anonymous sessions never logs anyone out.
    pub fn try_insert(
        &mut self,
        key: SessionKey,
        record: SessionRecord,
        now_ms: u64,
    ) -> Result<Option<SessionKey>, StoreError> {
        let evicted = self.make_room(now_ms, false)?;
        self.insert_unbounded(key, record);
        Ok(evicted)
    }

    /// `try_insert`, except that a bound full of authenticated sessions evicts the least
    /// recently used of them (a snapshot load, the server's own `create`).
    pub fn insert(
        &mut self,
        key: SessionKey,
        record: SessionRecord,
        now_ms: u64,
    ) -> Option<SessionKey> {
        let evicted = self
            .make_room(now_ms, true)
            .expect("evicting authenticated sessions always makes room");
        self.insert_unbounded(key, record);
        evicted
    }

    /// Makes room for one more session at the bound: an expired one first, else the least
    /// recently used anonymous one, else (`evict_authenticated`) the least recently used
    /// authenticated one, else Err(Full).
    fn make_room(
        &mut self,
        now_ms: u64,
        evict_authenticated: bool,
    ) -> Result<Option<SessionKey>, StoreError> {
        if self.entries.len() < self.limits.sessions_max || self.sweep(now_ms, 1) > 0 {
            return Ok(None);
        }
        let anonymous = self.by_access.values().next();
        let authenticated = self.by_access_authenticated.values().next();
        let oldest = match (anonymous, authenticated) {
            (Some(&oldest), _) => oldest,
            (None, Some(&oldest)) if evict_authenticated => oldest,
            _ => {
                self.counters.refusals += 1;
                return Err(StoreError::Full);
            }
        };
        self.remove(&oldest);
        self.counters.evictions += 1;
        Ok(Some(oldest))
    }

    fn insert_unbounded(&mut self, key: SessionKey, record: SessionRecord) {
        let bytes = record
            .data
            .iter()
            .map(|(k, v)| value_bytes(k, v.json()))
            .sum();
        let access_seq = self.next_seq();
        let created_seq = self.next_seq();
        let position = (record.accessed_ms, access_seq);
        self.lru(&record).insert(position, key);
        self.by_created
            .insert((record.created_ms, created_seq), key);
        self.bytes_total += bytes;
        if record.data.contains_key(USER_VALUE) {
            self.bytes_authenticated += bytes;
        }
        let user = user_of(&record);
        if let Some(user) = &user {
            self.by_user
                .entry(user.clone())
                .or_default()
                .insert(position, key);
        }
        if let Some(old) = self.entries.insert(
            key,
            Entry {
                record,
                bytes,
                access_seq,
                created_seq,
                user: user.clone(),
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
        if let Some(user) = user {
            self.cap_user(&user, &key);
        }
    }

    /// The user the session `key` is logged in as (`USER_VALUE`'s `user_name`), if any.
    pub fn user(&self, key: &SessionKey) -> Option<&str> {
        self.entries.get(key)?.user.as_deref()
    }

    /// Past `--max-sessions-per-user`, ends `user`'s least recently used sessions but `keep`.
    fn cap_user(&mut self, user: &str, keep: &SessionKey) {
        loop {
            let Some(sessions) = self.by_user.get(user) else {
                return;
            };
            if sessions.len() <= self.limits.sessions_per_user_max {
                return;
            }
            let victim = *sessions
                .values()
                .find(|key| *key != keep)
                .expect("a user over the bound has a session besides `keep`");
            self.remove(&victim);
            self.counters.evictions += 1;
        }
    }

    /// Moves `key` (at `position`) from `from`'s sessions to `to`'s in `by_user`.
    fn move_user(
        &mut self,
        key: SessionKey,
        position: (u64, u64),
        from: Option<&str>,
        to: Option<&str>,
    ) {
        if let Some(from) = from
            && let Some(sessions) = self.by_user.get_mut(from)
        {
            sessions.remove(&position);
            if sessions.is_empty() {
                self.by_user.remove(from);
            }
        }
        if let Some(to) = to {
            self.by_user
                .entry(Box::from(to))
                .or_default()
                .insert(position, key);
        }
    }

    fn empty_record(now_ms: u64) -> SessionRecord {
        SessionRecord {
            created_ms: now_ms,
            accessed_ms: now_ms,
            data: BTreeMap::new(),
        }
    }

    pub fn create(&mut self, key: SessionKey, now_ms: u64) -> Option<SessionKey> {
        self.insert(key, Store::empty_record(now_ms), now_ms)
    }

    /// A new empty session; Err(Full) rather than evict an authenticated one (`try_insert`).
    pub fn try_create(
        &mut self,
        key: SessionKey,
        now_ms: u64,
    ) -> Result<Option<SessionKey>, StoreError> {
        self.try_insert(key, Store::empty_record(now_ms), now_ms)
    }

    fn remove(&mut self, key: &SessionKey) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.lru(&entry.record)
            .remove(&(entry.record.accessed_ms, entry.access_seq));
        self.by_created
            .remove(&(entry.record.created_ms, entry.created_seq));
        self.bytes_total -= entry.bytes;
        if entry.record.data.contains_key(USER_VALUE) {
            self.bytes_authenticated -= entry.bytes;
        }
        let position = (entry.record.accessed_ms, entry.access_seq);
        self.move_user(*key, position, entry.user.as_deref(), None);
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
        let quantum = (self.limits.idle_timeout_ms / ACCESS_QUANTA_PER_IDLE_TIMEOUT).max(1);
        if entry.record.accessed_ms / quantum != old.0 / quantum {
            // The snapshot holds the access time, and a start judges idle expiry by it: a
            // session only read since the last snapshot was restored as idle since then, and
            // a crash logged out users in active use (found in review). A use that moves it
            // into a new eighth of the idle timeout is a change: a crash takes at most that
            // eighth and a snapshot interval off a session's idle time, and a session read
            // now and then does not make every interval write the whole store.
            self.generation += 1;
        }
        let new = (entry.record.accessed_ms, seq);
        let lru = if entry.record.data.contains_key(USER_VALUE) {
            &mut self.by_access_authenticated
        } else {
            &mut self.by_access
        };
        lru.remove(&old);
        lru.insert(new, *key);
        if let Some(user) = &entry.user
            && let Some(sessions) = self.by_user.get_mut(user)
        {
            sessions.remove(&old);
            sessions.insert(new, *key);
        }
        Ok(self.entries.get_mut(key).expect("checked above"))
    }

    /// Moves a session between the anonymous and the authenticated LRU lists after a write or
    /// removal of `name` changed which one it belongs on (`was_authenticated`: before it).
    fn reclassify(&mut self, key: &SessionKey, name: &str, was_authenticated: bool) {
        if name != USER_VALUE {
            return;
        }
        let entry = self.entries.get_mut(key).expect("a session being written");
        let position = (entry.record.accessed_ms, entry.access_seq);
        let user = user_of(&entry.record);
        if user != entry.user {
            let old = std::mem::replace(&mut entry.user, user.clone());
            self.move_user(*key, position, old.as_deref(), user.as_deref());
            if let Some(user) = &user {
                self.cap_user(user, key);
            }
        }
        let entry = &self.entries[key];
        let authenticated = entry.record.data.contains_key(USER_VALUE);
        let (from, to) = match (was_authenticated, authenticated) {
            (false, true) => {
                self.bytes_authenticated += entry.bytes;
                (&mut self.by_access, &mut self.by_access_authenticated)
            }
            (true, false) => {
                self.bytes_authenticated -= entry.bytes;
                (&mut self.by_access_authenticated, &mut self.by_access)
            }
            _ => return,
        };
        let moved = from
            .remove(&position)
            .expect("a session is on its LRU list");
        to.insert(position, moved);
    }

    /// Whether the session is live; slides its idle timeout like any other use.
    pub fn live(&mut self, key: &SessionKey, now_ms: u64) -> bool {
        self.touch(key, now_ms).is_ok()
    }

    pub fn data(&mut self, key: &SessionKey, now_ms: u64) -> Result<SessionData, StoreError> {
        let data = &self.touch(key, now_ms)?.record.data;
        Ok(data.iter().map(|(k, v)| (k.clone(), v.value())).collect())
    }

    pub fn get(
        &mut self,
        key: &SessionKey,
        name: &str,
        now_ms: u64,
    ) -> Result<Option<Value>, StoreError> {
        let data = &self.touch(key, now_ms)?.record.data;
        Ok(data.get(name).map(StoredValue::value))
    }

    pub fn put(
        &mut self,
        key: &SessionKey,
        name: &str,
        value: Value,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let (value, old_bytes, new_bytes) = self.sized(key, name, &value, now_ms)?;
        self.make_bytes_room(key, name, new_bytes.saturating_sub(old_bytes), now_ms)?;
        let entry = self.entries.get_mut(key).expect("sized looked it up");
        let bytes = entry.bytes - old_bytes + new_bytes;
        let was_authenticated = entry.record.data.contains_key(USER_VALUE);
        entry.bytes = bytes;
        entry.record.data.insert(name.to_string(), value);
        self.bytes_total = self.bytes_total - old_bytes + new_bytes;
        if was_authenticated {
            self.bytes_authenticated = self.bytes_authenticated - old_bytes + new_bytes;
        }
        self.generation += 1;
        self.reclassify(key, name, was_authenticated);
        Ok(())
    }

    /// Whether `put` of the same value would succeed; changes nothing but the session's last
    /// access.
    pub fn check_put(
        &mut self,
        key: &SessionKey,
        name: &str,
        value: &Value,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let (_, old_bytes, new_bytes) = self.sized(key, name, value, now_ms)?;
        let growth = new_bytes.saturating_sub(old_bytes);
        match self.bytes_room(key, name, growth) {
            true => Ok(()),
            false => Err(StoreError::Full),
        }
    }

    /// Whether evicting what a write of `name` to `writer` may evict makes room for `growth`
    /// more bytes in the store: anonymous sessions, and for a logged-in writer or a login
    /// (`USER_VALUE`, as the sessions bound lets a login do) logged-in ones too; never the
    /// writer's own. A logged-in writer limited to anonymous sessions was refused for good
    /// once logged-in sessions filled the store, which one account could do by logging in
    /// many times (found in review). A write that does not grow always fits, even past a
    /// bound lowered since the sessions were loaded.
    fn bytes_room(&self, writer: &SessionKey, name: &str, growth: usize) -> bool {
        if growth == 0 {
            return true;
        }
        let own = &self.entries[writer];
        let logged_in = name == USER_VALUE || own.record.data.contains_key(USER_VALUE);
        let evictable = match logged_in {
            true => self.bytes_total - own.bytes,
            false => self.bytes_total - self.bytes_authenticated - own.bytes,
        };
        self.bytes_total - evictable + growth <= self.limits.store_bytes_max
    }

    /// Makes room for `growth` more bytes under the store's bytes bound, as `make_room` does
    /// under the sessions bound: expired sessions first, then the least recently used
    /// anonymous ones, then (a logged-in writer) logged-in ones, never the writer's own; Err(Full),
    /// with nothing evicted, when that cannot make room (found in review: with no bound but
    /// sessions x bytes, anonymous clients could make a shard hold 1.6 GB, and a snapshot
    /// about four times that).
    fn make_bytes_room(
        &mut self,
        writer: &SessionKey,
        name: &str,
        growth: usize,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let over =
            |store: &Store| growth > 0 && store.bytes_total + growth > store.limits.store_bytes_max;
        while over(self) && self.sweep(now_ms, 1) > 0 {}
        if !over(self) {
            return Ok(());
        }
        if !self.bytes_room(writer, name, growth) {
            self.counters.refusals += 1;
            return Err(StoreError::Full);
        }
        while over(self) {
            let anonymous = self.by_access.values().find(|k| *k != writer);
            let victim = match anonymous {
                Some(victim) => *victim,
                None => *(self.by_access_authenticated.values())
                    .find(|k| *k != writer)
                    .expect("bytes_room counted what can be evicted"),
            };
            self.remove(&victim);
            self.counters.evictions += 1;
        }
        Ok(())
    }

    /// `value` as stored, and the bytes of the value it would replace and its own, once it is
    /// known to fit the session `key`.
    fn sized(
        &mut self,
        key: &SessionKey,
        name: &str,
        value: &Value,
        now_ms: u64,
    ) -> Result<(StoredValue, usize, usize), StoreError> {
        let bytes_max = self.limits.session_bytes_max;
        let entry = self.touch(key, now_ms)?;
        // Checked here, where every write ends (routes, `Session::set` from an app's handler,
        // other shards), not in the route alone (found in review: an app's `set` of client
        // JSON could still make the next start drop the shard's snapshot).
        if value_depth(value) > SESSION_VALUE_DEPTH_MAX {
            return Err(StoreError::TooDeep);
        }
        let old_bytes = entry
            .record
            .data
            .get(name)
            .map_or(0, |v| value_bytes(name, v.json()));
        let value = StoredValue::new(value);
        let new_bytes = value_bytes(name, value.json());
        if entry.bytes - old_bytes + new_bytes > bytes_max {
            return Err(StoreError::TooLarge);
        }
        Ok((value, old_bytes, new_bytes))
    }

    /// Removes one value; Ok(false) when the session has no such value.
    pub fn remove_value(
        &mut self,
        key: &SessionKey,
        name: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        Ok(self.take_value(key, name, now_ms)?.is_some())
    }

    /// Replaces value `name` with `new` (None: removes it) if it is `expected` now (None:
    /// absent); Ok(false) when it is not, and nothing changes.
    pub fn replace_if(
        &mut self,
        key: &SessionKey,
        name: &str,
        expected: Option<&Value>,
        new: Option<Value>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let entry = self.touch(key, now_ms)?;
        let current = entry.record.data.get(name).map(StoredValue::value);
        if current.as_ref() != expected {
            return Ok(false);
        }
        match new {
            Some(value) => self.put(key, name, value, now_ms)?,
            None => _ = self.take_value(key, name, now_ms)?,
        }
        Ok(true)
    }

    /// Removes one value and returns it; Ok(None) when the session has no such value.
    pub fn take_value(
        &mut self,
        key: &SessionKey,
        name: &str,
        now_ms: u64,
    ) -> Result<Option<Value>, StoreError> {
        let entry = self.touch(key, now_ms)?;
        let was_authenticated = entry.record.data.contains_key(USER_VALUE);
        let Some(old) = entry.record.data.remove(name) else {
            return Ok(None);
        };
        let bytes = value_bytes(name, old.json());
        entry.bytes -= bytes;
        self.bytes_total -= bytes;
        if was_authenticated {
            self.bytes_authenticated -= bytes;
        }
        self.generation += 1;
        self.reclassify(key, name, was_authenticated);
        Ok(Some(old.value()))
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

    /// `rotate` for a login of another user than the one the session holds: the old key dies
    /// with its data, and `new_key` is a new, empty session (found in review: bob logging in
    /// with alice's cookie read her session's data).
    pub fn replace(
        &mut self,
        old_key: &SessionKey,
        new_key: SessionKey,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.touch(old_key, now_ms)?;
        self.remove(old_key);
        self.counters.destroyed += 1;
        self.insert(new_key, Store::empty_record(now_ms), now_ms);
        Ok(())
    }

    /// Whether `put` of `value` into an empty session could succeed (`replace` then `put`).
    pub fn check_put_fresh(&self, name: &str, value: &Value) -> Result<(), StoreError> {
        if value_depth(value) > SESSION_VALUE_DEPTH_MAX {
            return Err(StoreError::TooDeep);
        }
        let json = serde_json::to_string(value).expect("a Value is JSON");
        if value_bytes(name, &json) > self.limits.session_bytes_max {
            return Err(StoreError::TooLarge);
        }
        Ok(())
    }

    /// Removes up to `steps_max` expired sessions, oldest first; returns how many. Bounded so a
    /// sweep step never stalls serving.
    pub fn sweep(&mut self, now_ms: u64, steps_max: usize) -> usize {
        let mut removed = 0;
        while removed < steps_max {
            let idle = self.by_access.iter().next().map(|(_, k)| *k);
            let idle_authenticated = self.by_access_authenticated.iter().next();
            let idle_authenticated = idle_authenticated.map(|(_, k)| *k);
            let old = self.by_created.iter().next().map(|(_, k)| *k);
            let candidates = [idle, idle_authenticated, old];
            let candidate = candidates.into_iter().flatten().find(|k| {
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

    /// When the session ends at the latest (its absolute expiry), if the store holds it.
    pub fn expiry_ms(&self, key: &SessionKey) -> Option<u64> {
        let entry = self.entries.get(key)?;
        Some(
            entry
                .record
                .created_ms
                .saturating_add(self.limits.lifetime_ms),
        )
    }

    pub fn contains(&self, key: &SessionKey) -> bool {
        self.entries.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Any JSON value: scalars, strings with quotes, backslashes, brackets and non-ASCII, and
    /// arrays and objects nested a few levels.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            "[\\\"\\[\\]{}a-z é\n]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[\\\"\\[\\]{}a-z]{0,6}", inner, 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    /// The case the property below found: without exact float parsing this read back one ulp
    /// off.
    #[test]
    fn a_float_reads_back_exactly() {
        let value = serde_json::json!([{ "": 2.4505457347185835e-299 }]);
        assert_eq!(StoredValue::new(&value).value(), value);
    }

    proptest! {
        /// The text a value is held as reads back as the same value.
        #[test]
        fn a_stored_value_reads_back_as_its_value(value in json_value()) {
            let stored = StoredValue::new(&value);
            prop_assert_eq!(stored.value(), value.clone());
            prop_assert_eq!(stored.json(), value.to_string());
        }
    }

    const LIMITS: StoreLimits = StoreLimits {
        sessions_max: 3,
        // The tests log every session in as one user; `..._per_user_...` tests lower it.
        sessions_per_user_max: 100,
        session_bytes_max: 1024,
        store_bytes_max: 1 << 20,
        idle_timeout_ms: 1_000,
        lifetime_ms: 10_000,
    };

    fn key(n: u8) -> SessionKey {
        [n; 16]
    }

    fn log_in(store: &mut Store, n: u8, now_ms: u64) {
        store.create(key(n), now_ms);
        let user = serde_json::json!({"user": "ann", "stamp": ""});
        store.put(&key(n), USER_VALUE, user, now_ms).unwrap();
    }

    /// The store's byte counts, recomputed from its sessions.
    fn check_bytes(store: &Store) {
        let (mut total, mut authenticated) = (0, 0);
        for entry in store.entries.values() {
            let bytes: usize = (entry.record.data.iter())
                .map(|(k, v)| value_bytes(k, v.json()))
                .sum();
            assert_eq!(entry.bytes, bytes);
            total += bytes;
            if entry.record.data.contains_key(USER_VALUE) {
                authenticated += bytes;
            }
        }
        assert_eq!(
            (store.bytes_total, store.bytes_authenticated),
            (total, authenticated)
        );
    }

    /// `by_user` as recomputed from the sessions: each logged-in one at its LRU position.
    fn check_users(store: &Store) {
        let mut expected: HashMap<Box<str>, BTreeMap<(u64, u64), SessionKey>> = HashMap::new();
        for (key, entry) in &store.entries {
            assert_eq!(entry.user, user_of(&entry.record));
            if let Some(user) = &entry.user {
                let position = (entry.record.accessed_ms, entry.access_seq);
                expected
                    .entry(user.clone())
                    .or_default()
                    .insert(position, *key);
            }
        }
        assert_eq!(store.by_user, expected);
    }

    /// `--max-sessions-per-user`: a login past it ends that user's least recently used session
    /// (never the one logging in), and no other user's; the bound follows a session whose user
    /// changes or goes (found in review: one account that logged in `--max-sessions` times
    /// pushed every other user out).
    #[test]
    fn a_user_past_the_per_user_bound_loses_their_least_recently_used_session() {
        let limits = StoreLimits {
            sessions_max: 20,
            sessions_per_user_max: 2,
            ..LIMITS
        };
        let mut store = Store::new(limits);
        let log_in_as = |store: &mut Store, n: u8, user: &str, now: u64| {
            if !store.contains(&key(n)) {
                store.create(key(n), now);
            }
            let value = serde_json::json!({"user": user, "stamp": ""});
            store.put(&key(n), USER_VALUE, value, now).unwrap();
            check_users(store);
        };
        log_in_as(&mut store, 1, "ann", 1);
        log_in_as(&mut store, 2, "ann", 2);
        log_in_as(&mut store, 3, "bob", 3);
        store.live(&key(1), 4); // ann's session 2 is now her least recently used
        log_in_as(&mut store, 4, "ann", 5);
        assert!(!store.contains(&key(2)), "ann's least recently used went");
        assert!(store.contains(&key(1)) && store.contains(&key(3)) && store.contains(&key(4)));
        assert_eq!(store.counters.evictions, 1);
        // A session taken over by another user counts for that user, and leaves ann's.
        log_in_as(&mut store, 1, "bob", 6);
        log_in_as(&mut store, 5, "ann", 7);
        assert!(store.contains(&key(4)) && store.contains(&key(5)));
        log_in_as(&mut store, 6, "bob", 8);
        assert!(!store.contains(&key(3)), "bob's least recently used went");
        // A logout (the user removed) frees its place.
        store.take_value(&key(6), USER_VALUE, 9).unwrap();
        check_users(&store);
        log_in_as(&mut store, 7, "bob", 10);
        assert!(store.contains(&key(1)) && store.contains(&key(7)));
        // A rotation keeps the user's count; a snapshot load over the bound, least recently
        // used first (as `Sessions::load` does), keeps each user's most recently used.
        store.rotate(&key(7), key(8), 11).unwrap();
        check_users(&store);
        let mut records: Vec<_> = store.records(12).map(|(k, r)| (*k, r.clone())).collect();
        records.sort_by_key(|(_, record)| record.accessed_ms);
        let mut loaded = Store::new(StoreLimits {
            sessions_per_user_max: 1,
            ..limits
        });
        for (key, record) in records {
            loaded.insert(key, record, 12);
        }
        check_users(&loaded);
        assert_eq!(loaded.by_user.values().map(BTreeMap::len).max(), Some(1));
        assert_eq!(loaded.by_user.len(), 2);
        assert!(loaded.contains(&key(5)), "ann's most recently used");
        assert!(loaded.contains(&key(8)), "bob's most recently used");
    }

    /// Past the store's bytes bound a write evicts the least recently used anonymous sessions
    /// (never the writer's own); with only logged-in sessions to evict it is refused and
    /// nothing is evicted, except for a login, which may evict logged-in sessions as the
    /// sessions bound lets it (found in review: sessions x bytes was the only bound).
    #[test]
    fn the_store_bytes_bound_evicts_anonymous_sessions_first() {
        let limits = StoreLimits {
            sessions_max: 10,
            store_bytes_max: 2000,
            ..LIMITS
        };
        let value = || Value::from("x".repeat(400));
        let each = value_bytes("v", &value().to_string());
        assert_eq!(each, 467);
        let mut store = Store::new(limits);
        for n in 1..=4 {
            store.create(key(n), n as u64);
            store.put(&key(n), "v", value(), n as u64).unwrap();
        }
        assert_eq!(store.bytes(), 4 * each);
        // The fifth is past the bound: the least recently used anonymous session goes.
        store.create(key(5), 5);
        store.put(&key(5), "v", value(), 5).unwrap();
        assert_eq!(store.get(&key(1), "v", 6), Err(StoreError::Unknown));
        assert_eq!((store.len(), store.bytes()), (4, 4 * each));
        assert_eq!(store.counters.evictions, 1);
        check_bytes(&store);

        // Logged-in sessions fill it: an anonymous write is refused, and evicts nothing.
        let mut store = Store::new(limits);
        for n in 1..=3 {
            log_in(&mut store, n, n as u64);
            store.put(&key(n), "v", value(), n as u64).unwrap();
        }
        store.create(key(4), 4);
        let full = store.bytes();
        assert_eq!(
            store.check_put(&key(4), "v", &value(), 5),
            Err(StoreError::Full)
        );
        assert_eq!(store.put(&key(4), "v", value(), 5), Err(StoreError::Full));
        assert_eq!((store.len(), store.bytes()), (4, full));
        assert_eq!((store.counters.evictions, store.counters.refusals), (0, 1));
        // A smaller one fits; then a login of that session evicts the oldest logged-in one.
        let small = Value::from("y".repeat(200));
        store.put(&key(4), "v", small, 6).unwrap();
        assert!(store.bytes() <= 2000);
        let user = serde_json::json!({"user": "bob", "stamp": ""});
        assert_eq!(store.check_put(&key(4), USER_VALUE, &user, 7), Ok(()));
        store.put(&key(4), USER_VALUE, user, 7).unwrap();
        assert_eq!(store.get(&key(1), "v", 8), Err(StoreError::Unknown));
        assert!(store.get(&key(2), "v", 8).unwrap().is_some());
        assert!(store.bytes() <= 2000);
        check_bytes(&store);
        // A logout moves its bytes back to the anonymous count.
        store.take_value(&key(4), USER_VALUE, 9).unwrap();
        check_bytes(&store);
        store.rotate(&key(2), key(9), 10).unwrap();
        assert!(store.destroy(&key(3), 11));
        check_bytes(&store);

        // A logged-in writer may evict logged-in sessions, the least recently used first, never
        // its own (found in review: one account logged in many times filled the store, and then
        // every other user's write was refused for good).
        let mut store = Store::new(limits);
        for n in 1..=3 {
            log_in(&mut store, n, n as u64);
            store.put(&key(n), "v", value(), n as u64).unwrap();
        }
        store
            .put(&key(3), "w", Value::from("w".repeat(300)), 4)
            .unwrap();
        assert_eq!(store.get(&key(1), "v", 5), Err(StoreError::Unknown));
        assert!(store.get(&key(2), "v", 5).unwrap().is_some());
        assert!(store.bytes() <= 2000);
        check_bytes(&store);
        // Past a bound lowered since (a snapshot loaded whole), a write that does not grow
        // still goes, and one that grows evicts down to the bound or is refused.
        let tight = StoreLimits {
            store_bytes_max: 100,
            ..limits
        };
        let mut store = Store::new(tight);
        store.insert(key(1), store_record(&[("v", value())]), 1);
        assert!(store.bytes() > 100);
        assert_eq!(store.put(&key(1), "v", Value::from("y"), 2), Ok(()));
        assert_eq!(store.check_put(&key(1), "v", &Value::from("z"), 3), Ok(()));
        assert_eq!(
            store.put(&key(1), "n", Value::from(1), 3),
            Err(StoreError::Full)
        );
        check_bytes(&store);
    }

    fn store_record(values: &[(&str, Value)]) -> SessionRecord {
        SessionRecord {
            created_ms: 0,
            accessed_ms: 0,
            data: (values.iter())
                .map(|(name, value)| (name.to_string(), StoredValue::new(value)))
                .collect(),
        }
    }

    /// `replace_if` changes a value only from the one expected (None: absent), to the new one
    /// (None: removed), within the session's bound; anything else changes nothing.
    #[test]
    fn a_value_is_replaced_only_from_the_one_expected() {
        let mut store = Store::new(LIMITS);
        store.create(key(1), 0);
        let (a, b) = (Value::from("a"), Value::from("b"));
        let get = |store: &mut Store| store.get(&key(1), "v", 1).unwrap();
        assert_eq!(
            store.replace_if(&key(1), "v", Some(&a), Some(b.clone()), 1),
            Ok(false)
        );
        assert_eq!(get(&mut store), None);
        assert_eq!(
            store.replace_if(&key(1), "v", None, Some(a.clone()), 1),
            Ok(true)
        );
        assert_eq!(
            store.replace_if(&key(1), "v", None, Some(b.clone()), 1),
            Ok(false)
        );
        assert_eq!(store.replace_if(&key(1), "v", Some(&b), None, 1), Ok(false));
        assert_eq!(get(&mut store), Some(a.clone()));
        let big = Value::from("x".repeat(2048));
        assert_eq!(
            store.replace_if(&key(1), "v", Some(&a), Some(big), 1),
            Err(StoreError::TooLarge)
        );
        assert_eq!(
            store.replace_if(&key(1), "v", Some(&a), Some(b.clone()), 1),
            Ok(true)
        );
        assert_eq!(store.replace_if(&key(1), "v", Some(&b), None, 1), Ok(true));
        assert_eq!(get(&mut store), None);
        assert_eq!(
            store.replace_if(&key(2), "v", None, Some(a), 1),
            Err(StoreError::Unknown)
        );
    }

    #[test]
    fn value_depth_table() {
        let cases = [
            ("1", 0),
            ("\"[[[\"", 0),
            (r#"["\\", "\"]", {"}": "{"}]"#, 2),
            ("[]", 1),
            ("{}", 1),
            ("[1, [2], 3]", 2),
            (r#"{"a": [{"b": []}], "c": 1}"#, 4),
            ("[[], [[[]]], []]", 4),
        ];
        for (text, depth) in cases {
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(value_depth(&value), depth, "{text}");
        }
    }

    /// Every write is bounded where it lands, whoever sent it (a route, an app's `Session::set`,
    /// another shard): a value one level past the bound changes nothing.
    #[test]
    fn a_value_nesting_past_the_bound_is_refused_by_the_store() {
        let nested =
            |depth: usize| (1..depth).fold(serde_json::json!([]), |v, _| serde_json::json!([v]));
        let mut store = Store::new(LIMITS);
        store.create(key(1), 0);
        let at_bound = nested(SESSION_VALUE_DEPTH_MAX);
        assert_eq!(store.put(&key(1), "deep", at_bound.clone(), 1), Ok(()));
        let past = nested(SESSION_VALUE_DEPTH_MAX + 1);
        assert_eq!(
            store.put(&key(1), "deeper", past, 2),
            Err(StoreError::TooDeep)
        );
        assert_eq!(store.get(&key(1), "deep", 3), Ok(Some(at_bound)));
        assert_eq!(store.get(&key(1), "deeper", 3), Ok(None));
    }

    /// A user written or removed through `replace_if` (an app's `Session::replace`) moves the
    /// session between the authenticated and the anonymous, as `put` and `remove_value` do.
    #[test]
    fn a_user_replaced_in_or_out_moves_the_session_between_the_eviction_lists() {
        let mut store = Store::new(LIMITS);
        let user = serde_json::json!({"user": "ann", "stamp": ""});
        store.create(key(1), 0);
        let logged_in = store.replace_if(&key(1), USER_VALUE, None, Some(user.clone()), 0);
        assert_eq!(logged_in, Ok(true));
        store.create(key(2), 1);
        store.create(key(3), 2);
        // 1 is the least recently used, but logged in: an anonymous one goes.
        assert_eq!(store.try_create(key(4), 3), Ok(Some(key(2))));
        assert_eq!(
            store.replace_if(&key(1), USER_VALUE, Some(&user), None, 4),
            Ok(true)
        );
        // Logged out: 3 is older now (1 was touched at 4), then 1.
        assert_eq!(store.try_create(key(5), 5), Ok(Some(key(3))));
        assert_eq!(store.try_create(key(6), 6), Ok(Some(key(4))));
        assert_eq!(store.try_create(key(7), 7), Ok(Some(key(1))));
    }

    #[test]
    fn the_user_value_is_the_one_auth_writes() {
        use crate::auth::middleware::SessionUser;
        assert_eq!(USER_VALUE, crate::auth::middleware::SESSION_USER);
        let stamped = SessionUser::Stamped {
            user: "alice".into(),
            stamp: "s".into(),
        };
        let name = SessionUser::Name("bob".into());
        assert_eq!(
            user_name(&serde_json::to_value(stamped).unwrap()),
            Some("alice")
        );
        assert_eq!(user_name(&serde_json::to_value(name).unwrap()), Some("bob"));
    }

    #[test]
    fn anonymous_sessions_are_evicted_before_authenticated_ones_and_never_by_try_insert() {
        let mut store = Store::new(LIMITS);
        log_in(&mut store, 1, 0); // the least recently used of all
        store.create(key(2), 1);
        store.create(key(3), 2);
        for (n, now) in (10..20).zip(3..) {
            let evicted = store.try_create(key(n), now).unwrap();
            assert_ne!(evicted, Some(key(1)), "an anonymous flood logs nobody out");
        }
        assert!(store.contains(&key(1)));
        log_in(&mut store, 30, 20);
        log_in(&mut store, 31, 21); // evicts the last anonymous one
        assert_eq!(store.counters.evictions, 12);
        assert_eq!(store.try_create(key(40), 22), Err(StoreError::Full));
        assert_eq!((store.len(), store.counters.refusals), (3, 1));
        // Logging out (the value removed) makes a session evictable again.
        assert!(store.remove_value(&key(30), USER_VALUE, 23).unwrap());
        assert_eq!(store.try_create(key(41), 24), Ok(Some(key(30))));
        assert_eq!(store.try_create(key(42), 25), Ok(Some(key(41))));
        log_in(&mut store, 43, 26); // evicts 42, the only anonymous one
        // The server's own `create` evicts the least recently used authenticated session.
        assert_eq!(store.create(key(44), 27), Some(key(1)));
        // Expired sessions of either kind are reclaimed first, and swept.
        assert_eq!(store.try_create(key(45), 10_000), Ok(None));
        assert_eq!(store.sweep(10_000, 10), 2);
        assert_eq!(store.len(), 1);
    }
}
