//! Sessions: each shard owns a store of the sessions it minted; any shard serves any session through one mesh message to the owner computed from the id. No shared map, no lock.

pub mod id;
pub mod persist;
pub mod revoked;
pub mod routes;
pub mod store;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::SessionConfig;
use crate::config::limits::{
    REVOKED_POLL_INTERVAL, REVOKED_WAIT_MAX, SESSION_COOKIE_IDS_MAX, SESSION_SNAPSHOT_RETRY_MIN,
    SESSION_SNAPSHOT_STEP, SESSION_SNAPSHOT_WRITE_BYTES, SESSION_SWEEP_STEP_MAX,
};
use crate::mesh::{Mesh, MeshError};
use crate::router::Request;
use crate::runtime::{now_ms, shard};
use id::{IdGenerator, SessionId, SessionKey};
use revoked::RevocationLog;
use store::{SessionData, Store, StoreError, StoreLimits, USER_VALUE, user_name};

/// How often the upkeep sweeps expired sessions and looks whether a snapshot is due (its
/// interval passed, a failed one's retry is due, the log failed).
const UPKEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Times a rotation asks an owner that does not answer (each within the mesh deadline).
const ROTATE_ATTEMPTS: u32 = 3;

/// A session operation, executed on the session's owner shard.
pub enum SessionRequest {
    Data(SessionKey),
    Get(SessionKey, String),
    Put(SessionKey, String, Value),
    Remove(SessionKey, String),
    /// Replaces a value (None: removes it) if it is the expected one (None: absent), in one
    /// step: `Session::replace`.
    ReplaceIf(SessionKey, String, Option<Value>, Option<Value>),
    /// Removes a value and answers it, in one step: `Session::take`.
    Take(SessionKey, String),
    Destroy(SessionKey),
    /// Move the first id's session to the second (minted by the caller). Idempotent: asked
    /// again after it took effect (its answer was lost), it answers the same.
    Rotate(SessionKey, SessionKey),
    /// A login: `Rotate`, and the user (`USER_VALUE`) written into the session, in one step;
    /// nothing changes unless both do (found in review: a login whose user write failed after
    /// the rotation handed out a session still logged in as its previous user). Answered as
    /// `Rotate` is, a repeat too.
    Login(SessionKey, SessionKey, Value),
    /// Whether the session is live (and touches it): picks one of several cookie ids.
    Live(SessionKey),
    /// Whether the revocation of this ticket (from `Revoked` or `Rotated`) is durable.
    Durable(u64),
}

pub enum SessionReply {
    Data(Result<SessionData, StoreError>),
    Value(Result<Option<Value>, StoreError>),
    Done(Result<bool, StoreError>),
    /// A destroy: the revocation log ticket to wait for (0: none, persistence is off).
    Revoked(Result<u64, SessionError>),
    /// A rotation: the new id, and the ticket of the old id's revocation.
    Rotated(Result<(SessionId, u64), SessionError>),
    Durable(Result<bool, SessionError>),
}

/// The session message class has its own mesh: a session lookup never queues behind a
/// transaction message, and its handler never sends another mesh message.
pub type SessionMesh = Mesh<SessionRequest, SessionReply>;

/// Why a session operation did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// No such session here: never existed, garbled, another node's, destroyed, expired, evicted.
    Unknown,
    /// The write would take the session past `--max-session-bytes`.
    TooLarge,
    /// The value nests more than `SESSION_VALUE_DEPTH_MAX` arrays or objects: a snapshot could
    /// not be read back.
    TooDeep,
    /// The owner shard did not answer in time or is overloaded: a read or a check may be
    /// retried as is; a write or a rotation may have happened (a mesh `Timeout`), though never
    /// after this answer.
    Unavailable,
    /// At `--max-sessions` with every session logged in: a new session is refused (503 and
    /// `Retry-After`) rather than log a user out.
    Full,
    /// `Session::set` was given a value JSON cannot hold (a map whose keys are not strings): the
    /// app's error, 500 (found in review: it was "too large", 413, blaming the client).
    NotJson,
    /// `Session::get` found a value that does not decode as the type asked for: the app's
    /// error, 500 (it read as None, which an app then overwrote as if nothing were there).
    WrongType,
}

/// Why `Session::rotate` did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotateError {
    pub error: SessionError,
    /// The rotation took effect (the old id is dead) and only its durability wait ran out: the
    /// answer must carry the new id's cookie.
    pub rotated: bool,
}

/// Whether session `key` is live and, for a login, holds `user`: what a rotation asked again
/// finds once the first ask took effect.
fn holds(store: &mut Store, key: &SessionKey, user: Option<&Value>, now: u64) -> bool {
    match user {
        None => store.live(key, now),
        Some(user) => store.get(key, USER_VALUE, now).ok().flatten().as_ref() == Some(user),
    }
}

/// A value as the JSON a session stores; `NotJson` for one JSON cannot hold.
fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Value, SessionError> {
    serde_json::to_value(value).map_err(|_| SessionError::NotJson)
}

impl SessionError {
    pub fn status(&self) -> u16 {
        match self {
            SessionError::Unknown => 401,
            SessionError::TooLarge => 413,
            SessionError::TooDeep => 400,
            SessionError::Unavailable | SessionError::Full => 503,
            SessionError::NotJson | SessionError::WrongType => 500,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            SessionError::Unknown => "no valid session",
            SessionError::TooLarge => "session data over its size bound",
            SessionError::TooDeep => "the value nests more than 64 arrays or objects",
            SessionError::Unavailable => "session owner unavailable, retry",
            SessionError::Full => "the session store is full of logged-in sessions, retry later",
            SessionError::NotJson => "the value cannot be stored as JSON",
            SessionError::WrongType => "a session value is not of the type asked for",
        }
    }

    /// Seconds a 503 tells the client to wait (Retry-After): an owner shard that did not answer
    /// is a matter of a moment; room in a store full of logged-in sessions comes back as they
    /// expire or log out, on the scale of minutes.
    pub fn retry_after(&self) -> Option<&'static str> {
        match self {
            SessionError::Unavailable => Some("1"),
            SessionError::Full => Some("30"),
            SessionError::Unknown
            | SessionError::TooLarge
            | SessionError::TooDeep
            | SessionError::NotJson
            | SessionError::WrongType => None,
        }
    }
}

const _: () = assert!(
    crate::config::limits::SESSION_VALUE_DEPTH_MAX == 64,
    "SessionError::TooDeep's message names the bound"
);

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> SessionError {
        match e {
            StoreError::Unknown => SessionError::Unknown,
            StoreError::TooLarge => SessionError::TooLarge,
            StoreError::TooDeep => SessionError::TooDeep,
            StoreError::Full => SessionError::Full,
            StoreError::Unavailable => SessionError::Unavailable,
        }
    }
}

/// One shard's part of the session service.
pub struct Sessions {
    node: u16,
    shard: usize,
    shard_count: usize,
    pub config: SessionConfig,
    pub store: RefCell<Store>,
    ids: RefCell<IdGenerator>,
    mesh: Rc<SessionMesh>,
    /// Session operations this shard sent to another shard.
    pub remote_calls: Cell<u64>,
    /// The revocation log, once `load` opened it (persistence on).
    revoked: RefCell<Option<Rc<RevocationLog>>>,
    /// `load` skipped the snapshot on disk (another node's or shard's, corrupt, or unreadable): the upkeep
    /// replaces it at once, or a crash before the first snapshot of this run would leave it for
    /// a later run (with the old `--node-id` back, say) to load sessions this run never saw
    /// destroyed.
    skipped_snapshot: Cell<bool>,
    /// Set while `snapshot` writes (its temporary file is the one `final_snapshot` writes
    /// through), and by `final_snapshot`, after which the upkeep starts none.
    snapshot_busy: Cell<bool>,
    snapshots_stopped: Cell<bool>,
}

impl Sessions {
    /// The session mesh's counters, for `/stats`.
    pub fn mesh_counters(&self) -> &crate::mesh::MeshCounters {
        &self.mesh.counters
    }

    pub fn new(node: u16, config: SessionConfig, mesh: Rc<SessionMesh>) -> Sessions {
        let limits = StoreLimits {
            sessions_max: config.sessions_max,
            sessions_per_user_max: config.sessions_per_user_max,
            session_bytes_max: config.session_bytes_max,
            store_bytes_max: config.store_bytes_max,
            idle_timeout_ms: config.idle_timeout.as_millis() as u64,
            lifetime_ms: config.lifetime.as_millis() as u64,
        };
        Sessions {
            node,
            shard: mesh.shard(),
            shard_count: mesh.shard_count(),
            ids: RefCell::new(IdGenerator::new(node, mesh.shard() as u16)),
            store: RefCell::new(Store::new(limits)),
            config,
            mesh,
            remote_calls: Cell::new(0),
            revoked: RefCell::new(None),
            skipped_snapshot: Cell::new(false),
            snapshot_busy: Cell::new(false),
            snapshots_stopped: Cell::new(false),
        }
    }

    /// Serves an operation on a session this shard owns. Synchronous: it never waits.
    pub fn handle(&self, request: SessionRequest) -> SessionReply {
        if let Some(reply) = self.undurable_reply(&request) {
            return reply;
        }
        let now = now_ms();
        let mut store = self.store.borrow_mut();
        match request {
            SessionRequest::Data(key) => SessionReply::Data(store.data(&key, now)),
            SessionRequest::Get(key, name) => SessionReply::Value(store.get(&key, &name, now)),
            SessionRequest::Put(key, name, value) => {
                SessionReply::Done(store.put(&key, &name, value, now).map(|()| true))
            }
            SessionRequest::ReplaceIf(key, name, expected, new) => {
                SessionReply::Done(store.replace_if(&key, &name, expected.as_ref(), new, now))
            }
            SessionRequest::Take(key, name) => {
                SessionReply::Value(store.take_value(&key, &name, now))
            }
            SessionRequest::Remove(key, name) => {
                SessionReply::Done(store.remove_value(&key, &name, now))
            }
            SessionRequest::Live(key) => SessionReply::Done(Ok(store.live(&key, now))),
            SessionRequest::Destroy(key) => {
                SessionReply::Revoked(self.destroy(&mut store, key, now))
            }
            SessionRequest::Rotate(key, new) => {
                SessionReply::Rotated(self.rotate(&mut store, key, new, None, now))
            }
            SessionRequest::Login(key, new, user) => {
                SessionReply::Rotated(self.rotate(&mut store, key, new, Some(user), now))
            }
            SessionRequest::Durable(ticket) => {
                SessionReply::Durable(match &*self.revoked.borrow() {
                    None => Ok(true),
                    Some(log) => log
                        .is_durable(ticket)
                        .map_err(|_| SessionError::Unavailable),
                })
            }
        }
    }

    /// For an id whose revocation took effect in memory but failed to become durable: 503 to
    /// every operation on it, never "unknown" (a retried logout would take that for done and
    /// answer 204, and the id would come back after a crash).
    fn undurable_reply(&self, request: &SessionRequest) -> Option<SessionReply> {
        let revoked = self.revoked.borrow();
        let log = revoked.as_ref()?;
        let unavailable = StoreError::Unavailable;
        let (key, reply) = match request {
            SessionRequest::Data(key) => (key, SessionReply::Data(Err(unavailable))),
            SessionRequest::Get(key, _) | SessionRequest::Take(key, _) => {
                (key, SessionReply::Value(Err(unavailable)))
            }
            SessionRequest::Put(key, ..)
            | SessionRequest::Remove(key, _)
            | SessionRequest::ReplaceIf(key, ..)
            | SessionRequest::Live(key) => (key, SessionReply::Done(Err(unavailable))),
            SessionRequest::Destroy(key) => (key, SessionReply::Revoked(Err(unavailable.into()))),
            SessionRequest::Rotate(key, _) | SessionRequest::Login(key, ..) => {
                (key, SessionReply::Rotated(Err(unavailable.into())))
            }
            SessionRequest::Durable(_) => return None,
        };
        log.is_undurable(key).then_some(reply)
    }

    /// Destroys the session `key` names; the ticket to wait for before answering. An id
    /// whose revocation is not yet synced is not taken for unknown (a logout takes "unknown"
    /// for done, and would answer before the sync): a destroyed one waits for its record, and
    /// one a rotation ended is followed to the id the rotation made, which is destroyed in
    /// turn (or, destroyed already, waited for). Without that a logout racing a rotation
    /// answered 204 for the old id's record while the session lived on under the new one.
    ///
    /// Why the destroy covers the new id rather than fail the rotation: the rotation took
    /// effect when it was logged (the session lives under the new id only), and cannot be
    /// undone without bringing the old id back. It still answers 200 with the new id, which
    /// is dead by then: as if the destroy had come just after it. Once the rotation is durable
    /// the link is forgotten (`RevocationLog::successor`): the old id is then unknown like any
    /// other dead id, and a fixated old id cannot end the session rotated away from it.
    fn destroy(&self, store: &mut Store, key: SessionKey, now: u64) -> Result<u64, SessionError> {
        let mut key = key;
        // The rotation record to wait for when the chain ends at an id that is gone anyway.
        let mut rotated = None;
        // Each step follows a rotation logged after the last one (tickets rise along the
        // chain), so it ends within the log's records.
        loop {
            let destroyed = self.revoking(store, &key, None, |store| {
                store
                    .destroy(&key, now)
                    .then_some(())
                    .ok_or(StoreError::Unknown)
            });
            if destroyed != Err(SessionError::Unknown) {
                return destroyed;
            }
            let revoked = self.revoked.borrow();
            let Some(ticket) = revoked.as_ref().and_then(|log| log.pending_ticket(&key)) else {
                return rotated.ok_or(SessionError::Unknown);
            };
            match revoked.as_ref().and_then(|log| log.successor(&key)) {
                Some(successor) => (key, rotated) = (successor, Some(ticket)),
                None => return Ok(ticket),
            }
        }
    }

    /// Runs `kill`, which ends the id `key` (a destroy, a rotation away from it to
    /// `successor`), and appends the id to the revocation log; the ticket to wait for before
    /// answering (0 without a log). A log that refuses (failed, or at its bound) refuses the
    /// operation: nothing changes.
    fn revoking(
        &self,
        store: &mut Store,
        key: &SessionKey,
        successor: Option<&SessionKey>,
        kill: impl FnOnce(&mut Store) -> Result<(), StoreError>,
    ) -> Result<u64, SessionError> {
        let revoked = self.revoked.borrow();
        let Some(log) = revoked.as_ref() else {
            return Ok(kill(store).map(|()| 0)?);
        };
        let Some(expiry_ms) = store.expiry_ms(key) else {
            return Err(SessionError::Unknown);
        };
        if log.refuses() {
            return Err(SessionError::Unavailable);
        }
        kill(store)?;
        Ok(log.append(key, expiry_ms, successor))
    }

    /// `SessionRequest::Rotate` (`user` None) and `Login` (the user written too): for a login
    /// the user must fit the session before anything changes; then the rotation (and its
    /// revocation record), then the write, which cannot fail then. Asked again after it took
    /// effect (its answer was lost; found in review: the client got 503 and a dead cookie), it
    /// answers as the first time: the old id is dead, and the new one, which only the caller
    /// that minted it can name, is live (holding this user, for a login), with the ticket of
    /// the old id's revocation if it is not yet durable.
    fn rotate(
        &self,
        store: &mut Store,
        key: SessionKey,
        new: SessionKey,
        user: Option<Value>,
        now: u64,
    ) -> Result<(SessionId, u64), SessionError> {
        let new_id = SessionId {
            node: self.node,
            shard: self.shard as u16,
            key: new,
        };
        // A login of another user than the one the session holds starts an empty session:
        // the data was the other user's. An anonymous session's data (a cart) goes with the
        // login, as does the same user's.
        let other_user = user.as_ref().is_some_and(|user| {
            store
                .user(&key)
                .is_some_and(|current| Some(current) != user_name(user))
        });
        let fits = match &user {
            Some(user) if other_user => store.check_put_fresh(USER_VALUE, user),
            Some(user) => store.check_put(&key, USER_VALUE, user, now),
            None => Ok(()),
        };
        let rotated = fits.map_err(SessionError::from).and_then(|()| {
            self.revoking(store, &key, Some(&new), |store| match other_user {
                true => store.replace(&key, new, now),
                false => store.rotate(&key, new, now),
            })
        });
        match rotated {
            Ok(ticket) => {
                if let Some(user) = user {
                    // Checked above, on the same data, at the same `now`, and the rotation
                    // keeps the session's bytes and times: it fits.
                    store
                        .put(&new, USER_VALUE, user, now)
                        .expect("the user fits: checked before the rotation");
                }
                Ok((new_id, ticket))
            }
            Err(SessionError::Unknown) if holds(store, &new, user.as_ref(), now) => {
                let revoked = self.revoked.borrow();
                let pending = revoked.as_ref().and_then(|log| log.pending_ticket(&key));
                Ok((new_id, pending.unwrap_or(0)))
            }
            Err(e) => Err(e),
        }
    }

    fn create(&self) -> SessionId {
        let id = self.ids.borrow_mut().mint();
        self.store.borrow_mut().create(id.key, now_ms());
        id
    }

    fn try_create(&self) -> Result<SessionId, SessionError> {
        let id = self.ids.borrow_mut().mint();
        self.store.borrow_mut().try_create(id.key, now_ms())?;
        Ok(id)
    }

    async fn call(
        &self,
        id: &SessionId,
        request: SessionRequest,
    ) -> Result<SessionReply, SessionError> {
        let owner = id
            .owner(self.node, self.shard_count)
            .ok_or(SessionError::Unknown)?;
        if owner != self.shard {
            self.remote_calls.set(self.remote_calls.get() + 1);
        }
        self.mesh
            .call(owner, request)
            .await
            .map_err(|_| SessionError::Unavailable)
    }

    /// Reads the revocation log, then loads this shard's snapshot, if any (a missing file is
    /// fine, a bad one is reported and skipped) without the ids the log names, and opens the
    /// log. Revoked ids are never inserted: at a lowered `--max-sessions` they would evict live
    /// sessions on their way in.
    pub fn load(&self, dir: &std::path::Path) {
        let path = revoked::path(dir, self.shard);
        let loaded = match revoked::read(&path) {
            Ok(loaded) => {
                let dead: std::collections::HashSet<SessionKey> =
                    loaded.iter().map(|(key, _)| *key).collect();
                self.load_snapshot(dir, &dead);
                Some(loaded)
            }
            Err(e) => {
                // Fail closed: without the log, any id in the snapshot may have been destroyed.
                crate::log_line!(
                    "percore: shard {}: cannot read {}: {e}; starting without its sessions",
                    self.shard,
                    path.display()
                );
                None
            }
        };
        self.store.borrow_mut().counters = Default::default();
        let log = RevocationLog::start(
            dir,
            self.shard,
            loaded.as_deref().unwrap_or_default(),
            self.config.revocations_max,
        );
        if loaded.is_none() {
            log.fail();
        }
        *self.revoked.borrow_mut() = Some(log);
    }

    fn load_snapshot(&self, dir: &std::path::Path, dead: &std::collections::HashSet<SessionKey>) {
        let path = persist::path(dir, self.shard);
        let loaded = match persist::load(&path, self.node, self.shard as u16) {
            Ok(None) => return,
            Ok(Some(sessions)) => Ok(sessions),
            Err(persist::LoadError::Bad(reason)) => Err(reason),
            Err(persist::LoadError::Read(e)) => {
                crate::log_line!(
                    "percore: shard {}: cannot read {}: {e}; starting without its sessions",
                    self.shard,
                    path.display()
                );
                // Replaced at once, as a skipped one is: left there, a later run that could
                // read it brought back the sessions this run destroyed without knowing them
                // (a logout of an unknown id writes no revocation; found in review).
                self.skipped_snapshot.set(true);
                return;
            }
        };
        match loaded {
            Ok(sessions) => {
                let now = now_ms();
                let mut store = self.store.borrow_mut();
                let limits = (
                    self.config.idle_timeout.as_millis() as u64,
                    self.config.lifetime.as_millis() as u64,
                );
                // Least recently used first, so that where a bound is lower than when the
                // snapshot was written (`--max-sessions`, `--max-sessions-per-user`) the ones
                // used last stay: in the snapshot's own order a user's stalest session was
                // kept half the time, and an active one logged out (found in review).
                let mut sessions = sessions;
                sessions.sort_by_key(|(_, record)| record.accessed_ms);
                for (key, record) in sessions {
                    let live = now < record.accessed_ms.saturating_add(limits.0)
                        && now < record.created_ms.saturating_add(limits.1);
                    if live && !dead.contains(&key) && !store.contains(&key) {
                        store.insert(key, record, now);
                    }
                }
            }
            Err(reason) => {
                crate::log_line!(
                    "percore: shard {}: session snapshot {} skipped: {reason}; replaced by this run's",
                    self.shard,
                    path.display()
                );
                self.skipped_snapshot.set(true);
            }
        }
    }

    /// Copies the live sessions in steps (yielding between them, so serving goes on) and writes
    /// them on the blocking pool; then the revocation log is cut of the ids destroyed before the
    /// copy began (none of them is in the snapshot). Returns the store generation written.
    pub async fn snapshot(&self, dir: &std::path::Path) -> std::io::Result<u64> {
        /// Clears `snapshot_busy` however the snapshot ends.
        struct Busy<'a>(&'a Cell<bool>);
        impl Drop for Busy<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        self.snapshot_busy.set(true);
        let _busy = Busy(&self.snapshot_busy);
        let now = now_ms();
        // Taken with the keys, in one step: every revocation up to `covered` is older than both.
        let covered = self.revoked.borrow().as_ref().map(|log| log.appended());
        let (generation, keys): (u64, Vec<SessionKey>) = {
            let store = self.store.borrow();
            (
                store.generation,
                store.records(now).map(|(k, _)| *k).collect(),
            )
        };
        // Encoded here, in steps, rather than cloned for the blocking pool to encode, and
        // written as it is encoded: one chunk beside the store while the snapshot is written,
        // not a copy of it (or three).
        let path = persist::path(dir, self.shard);
        let pool = glommio::executor();
        let tmp_of = path.clone();
        let mut file = pool
            .spawn_blocking(move || persist::create_tmp(&tmp_of))
            .await?;
        let mut encoder = persist::Encoder::new(self.node, self.shard as u16);
        let mut next = 0;
        while next < keys.len() {
            {
                // A step ends at SESSION_SNAPSHOT_STEP sessions or once a chunk is due, so a
                // chunk is at most SESSION_SNAPSHOT_WRITE_BYTES and one session (it was up to a
                // step of the biggest sessions: found in review).
                let store = self.store.borrow();
                let step_end = (next + SESSION_SNAPSHOT_STEP).min(keys.len());
                while next < step_end && encoder.buffered() < SESSION_SNAPSHOT_WRITE_BYTES {
                    for (key, record) in store.records_of(&keys[next..next + 1]) {
                        encoder.push(key, record);
                    }
                    next += 1;
                }
            }
            if encoder.buffered() >= SESSION_SNAPSHOT_WRITE_BYTES {
                use std::io::Write;
                let chunk = encoder.take();
                file = pool
                    .spawn_blocking(move || file.write_all(&chunk).map(|()| file))
                    .await?;
            }
            glommio::yield_if_needed().await;
            // The shutdown's snapshot replaces this one: given up, so the shutdown waits for one
            // chunk at most, not for a whole snapshot it overwrites (found in review).
            if self.snapshots_stopped.get() {
                return Err(std::io::Error::other("the shard is stopping"));
            }
        }
        let (last, header) = encoder.finish_streamed();
        pool.spawn_blocking(move || persist::finish_tmp(file, &path, &last, Some(header)))
            .await?;
        if let (Some(log), Some(covered)) = (self.revoked.borrow().as_ref(), covered) {
            log.cut(covered + 1);
        }
        Ok(generation)
    }

    /// Waits until the revocation with `ticket` on `owner` is durable (0: nothing to wait for).
    /// A remote owner is asked again every `REVOKED_POLL_INTERVAL` (its handler never waits),
    /// for at most `REVOKED_WAIT_MAX`; a log that failed, an owner that stopped or the end of
    /// the wait is Unavailable: the destroy may not survive a crash, so it is not confirmed.
    async fn revocation_durable(&self, owner: usize, ticket: u64) -> Result<(), SessionError> {
        if ticket == 0 {
            return Ok(());
        }
        if owner == self.shard {
            let log = self
                .revoked
                .borrow()
                .clone()
                .expect("a ticket comes from a log");
            return log
                .durable(ticket)
                .await
                .map_err(|_| SessionError::Unavailable);
        }
        let deadline = std::time::Instant::now() + REVOKED_WAIT_MAX;
        loop {
            glommio::timer::sleep(REVOKED_POLL_INTERVAL).await;
            self.remote_calls.set(self.remote_calls.get() + 1);
            match self.mesh.call(owner, SessionRequest::Durable(ticket)).await {
                Ok(SessionReply::Durable(Ok(true))) => return Ok(()),
                Ok(SessionReply::Durable(Ok(false))) => {}
                Ok(SessionReply::Durable(Err(e))) => return Err(e),
                Ok(_) => unreachable!("Durable is answered with Durable"),
                // The question is idempotent: ask again, within the wait's bound.
                Err(MeshError::Overloaded | MeshError::Expired | MeshError::Timeout) => {}
                Err(MeshError::Closed) => return Err(SessionError::Unavailable),
            }
            if std::time::Instant::now() >= deadline {
                return Err(SessionError::Unavailable);
            }
        }
    }

    /// The snapshot at shutdown: the upkeep starts no more, one it is writing is waited for,
    /// then this one is written, blocking the shard. Both write through the same temporary file:
    /// a shutdown snapshot truncated it under a periodic one, which then renamed it into place
    /// half-written (found in review).
    pub async fn final_snapshot(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.snapshots_stopped.set(true);
        while self.snapshot_busy.get() {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        self.snapshot_blocking(dir)
    }

    /// Writes the snapshot now, blocking the shard (`final_snapshot`).
    fn snapshot_blocking(&self, dir: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        let store = self.store.borrow();
        let path = persist::path(dir, self.shard);
        let mut file = persist::create_tmp(&path)?;
        let mut encoder = persist::Encoder::new(self.node, self.shard as u16);
        for (key, record) in store.records(now_ms()) {
            encoder.push(key, record);
            if encoder.buffered() >= SESSION_SNAPSHOT_WRITE_BYTES {
                file.write_all(&encoder.take())?;
            }
        }
        let (last, header) = encoder.finish_streamed();
        persist::finish_tmp(file, &path, &last, Some(header))
    }
}

/// Background upkeep of one shard's sessions: expiry sweeps in bounded steps, and periodic
/// snapshots when the store changed. Runs on the shard's background task queue, every
/// `UPKEEP_INTERVAL`, and at once when the revocation log grows long.
pub async fn upkeep(sessions: Rc<Sessions>, data_dir: Option<std::path::PathBuf>) {
    let log = sessions.revoked.borrow().clone();
    // The snapshot on disk still holds the ids of a revocation log found at start: the first
    // snapshot is due (then the log is cut) even if nothing changes.
    let revocations_loaded = sessions
        .revoked
        .borrow()
        .as_ref()
        .is_some_and(|log| log.appended() > 0);
    let skipped = sessions.skipped_snapshot.get();
    let mut written_generation =
        (!revocations_loaded && !skipped).then_some(sessions.store.borrow().generation);
    let mut next_snapshot = std::time::Instant::now();
    if !skipped {
        next_snapshot += sessions.config.snapshot_interval;
    }
    // After a failed snapshot a forced one is retried after a pause that doubles up to the
    // snapshot interval: a disk that keeps failing is not rewritten twice a second.
    let mut forced_retry = SESSION_SNAPSHOT_RETRY_MIN;
    let mut forced_not_before = std::time::Instant::now();
    loop {
        let timer = glommio::timer::sleep(UPKEEP_INTERVAL);
        match &log {
            // The log wakes the upkeep as soon as it wants a snapshot: at a small
            // `--max-session-revocations` fast destroys fill it within one timer tick (168 of
            // 200 sequential ones got 503 at 16 while snapshots were healthy). Not while a
            // failed snapshot backs off: the wish would hold, and the loop would spin.
            Some(log) if std::time::Instant::now() >= forced_not_before => {
                futures_lite::future::or(timer, log.snapshot_wanted()).await;
            }
            _ => timer.await,
        }
        while sessions
            .store
            .borrow_mut()
            .sweep(now_ms(), SESSION_SWEEP_STEP_MAX)
            == SESSION_SWEEP_STEP_MAX
        {
            glommio::yield_if_needed().await;
        }
        let Some(dir) = &data_dir else { continue };
        // A long revocation log (or a failed one) is cut after a snapshot: take one now.
        let forced = sessions
            .revoked
            .borrow()
            .as_ref()
            .is_some_and(|log| log.wants_snapshot())
            && std::time::Instant::now() >= forced_not_before;
        if std::time::Instant::now() < next_snapshot && !forced {
            continue;
        }
        next_snapshot = std::time::Instant::now() + sessions.config.snapshot_interval;
        if Some(sessions.store.borrow().generation) == written_generation && !forced {
            continue;
        }
        // From here to `snapshot` setting its flag is one step: a shutdown in between waits.
        if sessions.snapshots_stopped.get() {
            return;
        }
        match sessions.snapshot(dir).await {
            Ok(generation) => {
                written_generation = Some(generation);
                forced_retry = SESSION_SNAPSHOT_RETRY_MIN;
            }
            // Given up for the shutdown's (`final_snapshot`).
            Err(_) if sessions.snapshots_stopped.get() => return,
            Err(e) => {
                crate::log_line!(
                    "percore: shard {}: session snapshot failed: {e}; retrying in {:?}",
                    sessions.shard,
                    forced_retry
                );
                forced_not_before = std::time::Instant::now() + forced_retry;
                forced_retry = (forced_retry * 2)
                    .min(sessions.config.snapshot_interval)
                    .max(SESSION_SNAPSHOT_RETRY_MIN);
            }
        }
    }
}

/// A handle on one session, usable from any shard: every operation goes to the owner.
#[derive(Clone, Debug)]
pub struct Session {
    /// The ids the request's cookies named, in order (one for a new session): `ids[..count]`.
    ids: [SessionId; SESSION_COOKIE_IDS_MAX],
    count: usize,
    /// The index in `ids` this handle uses: the first live one once `resolve` looked.
    at: Cell<usize>,
    resolved: Cell<bool>,
}

impl Session {
    fn of(id: SessionId) -> Session {
        Session {
            ids: [id; SESSION_COOKIE_IDS_MAX],
            count: 1,
            at: Cell::new(0),
            resolved: Cell::new(true),
        }
    }

    /// The session named by the request's cookies, without checking that it exists. With
    /// several ids (up to `SESSION_COOKIE_IDS_MAX`), the first operation uses the first that is
    /// live (the first one when none is).
    pub fn from_request(req: &Request) -> Option<Session> {
        let name = shard::current().sessions.config.cookie_name.clone();
        let mut ids = req
            .head
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(|b| *b == b';'))
            .filter_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|b| *b == b'=')?;
                (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
            })
            .filter_map(SessionId::decode)
            .take(SESSION_COOKIE_IDS_MAX);
        let mut session = Session::of(ids.next()?);
        for id in ids {
            session.ids[session.count] = id;
            session.count += 1;
        }
        session.resolved.set(session.count == 1);
        Some(session)
    }

    /// A new, empty session owned by the current shard. At `--max-sessions` with every session
    /// logged in it evicts the least recently used one: for the server's own use after a
    /// password check; an app's uses `try_create`, which never logs anyone out (an embedding
    /// review: an app that created sessions for visitors with this one could).
    pub(crate) fn create() -> Session {
        Session::of(shard::current().sessions.create())
    }

    /// A new, empty session owned by the current shard; Err(Full) when the bound is reached
    /// and every session is logged in (anonymous ones are evicted, logged-in ones never).
    pub fn try_create() -> Result<Session, SessionError> {
        Ok(Session::of(shard::current().sessions.try_create()?))
    }

    /// The request's session if it is live, else a new one; `true` when created.
    pub async fn get_or_create(req: &Request) -> Result<(Session, bool), SessionError> {
        if let Some(session) = Session::from_request(req) {
            match session.live().await {
                Ok(true) => return Ok((session, false)),
                Ok(false) | Err(SessionError::Unknown) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((Session::try_create()?, true))
    }

    /// Whether the session is live (and touches it), without reading its data.
    async fn live(&self) -> Result<bool, SessionError> {
        match self.call(SessionRequest::Live).await? {
            SessionReply::Done(result) => Ok(result?),
            _ => unreachable!("Live is answered with Done"),
        }
    }

    pub fn id(&self) -> &SessionId {
        &self.ids[self.at.get()]
    }

    /// The shard that owns this session.
    pub fn owner(&self) -> usize {
        usize::from(self.id().shard)
    }

    /// Picks the first live id of several, one owner lookup after another. An owner that does
    /// not answer ends the search with its error: a later id is not taken in its place.
    async fn resolve(&self) -> Result<(), SessionError> {
        if self.resolved.get() {
            return Ok(());
        }
        let sessions = shard::current().sessions.clone();
        for (index, id) in self.ids[..self.count].iter().enumerate() {
            match sessions.call(id, SessionRequest::Live(id.key)).await {
                Ok(SessionReply::Done(Ok(true))) => {
                    self.at.set(index);
                    break;
                }
                Ok(SessionReply::Done(Err(StoreError::Unavailable))) => {
                    return Err(SessionError::Unavailable);
                }
                Ok(_) | Err(SessionError::Unknown) => {}
                Err(e) => return Err(e),
            }
        }
        self.resolved.set(true);
        Ok(())
    }

    async fn call(
        &self,
        request: impl FnOnce(SessionKey) -> SessionRequest,
    ) -> Result<SessionReply, SessionError> {
        self.resolve().await?;
        let sessions = shard::current().sessions.clone();
        let id = *self.id();
        sessions.call(&id, request(id.key)).await
    }

    pub async fn data(&self) -> Result<SessionData, SessionError> {
        match self.call(SessionRequest::Data).await? {
            SessionReply::Data(result) => Ok(result?),
            _ => unreachable!("Data is answered with Data"),
        }
    }

    pub async fn get_value(&self, name: &str) -> Result<Option<Value>, SessionError> {
        match self
            .call(|key| SessionRequest::Get(key, name.to_string()))
            .await?
        {
            SessionReply::Value(result) => Ok(result?),
            _ => unreachable!("Get is answered with Value"),
        }
    }

    /// A typed value, None when there is none; `WrongType` when the value stored does not
    /// decode as `T` (`get_value` reads it as it is).
    pub async fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, SessionError> {
        match self.get_value(name).await? {
            Some(value) => serde_json::from_value(value)
                .map(Some)
                .map_err(|_| SessionError::WrongType),
            None => Ok(None),
        }
    }

    pub async fn set_value(&self, name: &str, value: Value) -> Result<(), SessionError> {
        match self
            .call(|key| SessionRequest::Put(key, name.to_string(), value))
            .await?
        {
            SessionReply::Done(result) => result.map(|_| ()).map_err(Into::into),
            _ => unreachable!("Put is answered with Done"),
        }
    }

    pub async fn set<T: Serialize + ?Sized>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<(), SessionError> {
        self.set_value(name, to_json(value)?).await
    }

    /// Replaces value `name` with `new` (None: removes it) only if it is `expected` now (None:
    /// absent), in one step on the owner: false when it is not, and nothing changed. The
    /// building block of a read-modify-write that no other write can slip into (read, change,
    /// `replace`, and on false read again; back off a little between tries, as a shard that
    /// does not own the session has two round trips between its read and its replace where
    /// the owner has none). `expected` is compared as JSON values: pass the value as
    /// `get_value` read it (`1` and `1.0` differ).
    pub async fn replace(
        &self,
        name: &str,
        expected: Option<&Value>,
        new: Option<Value>,
    ) -> Result<bool, SessionError> {
        let request =
            |key| SessionRequest::ReplaceIf(key, name.to_string(), expected.cloned(), new);
        match self.call(request).await? {
            SessionReply::Done(result) => Ok(result?),
            _ => unreachable!("ReplaceIf is answered with Done"),
        }
    }

    /// Removes a value and returns it, in one step on the owner: of two requests that take the
    /// same value (a double submit), one gets it, the other None. A value that does not decode
    /// as `T` is put back unless another was written meanwhile, and is `WrongType`, as for
    /// `get`. `Unavailable` (the owner did not answer): it may have been taken.
    pub async fn take<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, SessionError> {
        let taken = match self
            .call(|key| SessionRequest::Take(key, name.to_string()))
            .await?
        {
            SessionReply::Value(result) => result?,
            _ => unreachable!("Take is answered with Value"),
        };
        let Some(value) = taken else {
            return Ok(None);
        };
        match T::deserialize(&value) {
            Ok(typed) => Ok(Some(typed)),
            Err(_) => {
                // The app's error: the client's data stays.
                let _ = self.replace(name, None, Some(value)).await;
                Err(SessionError::WrongType)
            }
        }
    }

    /// Removes a value; false when there was none.
    pub async fn remove(&self, name: &str) -> Result<bool, SessionError> {
        match self
            .call(|key| SessionRequest::Remove(key, name.to_string()))
            .await?
        {
            SessionReply::Done(result) => Ok(result?),
            _ => unreachable!("Remove is answered with Done"),
        }
    }

    /// Destroys the session; from then on its id is unknown on every shard, and (with
    /// persistence) stays so after a crash: Ok only once its revocation is durable.
    pub async fn destroy(self) -> Result<(), SessionError> {
        match self.call(SessionRequest::Destroy).await? {
            SessionReply::Revoked(ticket) => {
                let sessions = shard::current().sessions.clone();
                sessions.revocation_durable(self.owner(), ticket?).await
            }
            _ => unreachable!("Destroy is answered with Revoked"),
        }
    }

    /// Gives the session a new id (same owner, same data); the old id is dead (against fixation).
    ///
    /// The new id is minted here, so an owner that did not answer is asked again, up to
    /// `ROTATE_ATTEMPTS` times (the request is idempotent): a rotation whose answer was lost
    /// would leave the client with a dead cookie. An error after the rotation (its durability
    /// wait ran out: `Unavailable`) leaves the new id in `self` and says `rotated`: the old one
    /// is dead, and the answer must carry the new one. `rotated: false` after every attempt
    /// timed out means not known to have happened, not known not to have.
    pub async fn rotate(&mut self) -> Result<(), RotateError> {
        self.rotate_with(SessionRequest::Rotate).await
    }

    /// Logs `user` (the server's `USER_VALUE`) into this session and rotates it, in one step on
    /// its owner (as `rotate`, asked again when the owner does not answer): nothing changes
    /// unless both happen, so no answer ever carries a session that still holds its previous
    /// user (found in review: a fixated session logged in as the attacker came back to the
    /// victim under the new id when the user write failed after the rotation). `TooLarge`:
    /// the user does not fit; nothing changed.
    pub(crate) async fn log_in(&mut self, user: Value) -> Result<(), RotateError> {
        self.rotate_with(|old, new| SessionRequest::Login(old, new, user.clone()))
            .await
    }

    async fn rotate_with(
        &mut self,
        request: impl Fn(SessionKey, SessionKey) -> SessionRequest,
    ) -> Result<(), RotateError> {
        let before = |error| RotateError {
            error,
            rotated: false,
        };
        self.resolve().await.map_err(before)?;
        let old = *self.id();
        let new = {
            let sessions = shard::current().sessions.clone();
            let mut ids = sessions.ids.borrow_mut();
            ids.mint_for(old.shard)
        };
        let mut attempts = 0;
        let reply = loop {
            attempts += 1;
            match self.call(|key| request(key, new.key)).await {
                Err(SessionError::Unavailable) if attempts < ROTATE_ATTEMPTS => {}
                reply => break reply.map_err(before)?,
            }
        };
        let SessionReply::Rotated(result) = reply else {
            unreachable!("Rotate is answered with Rotated")
        };
        let (id, ticket) = result.map_err(before)?;
        *self = Session::of(id);
        let sessions = shard::current().sessions.clone();
        sessions
            .revocation_durable(self.owner(), ticket)
            .await
            .map_err(|error| RotateError {
                error,
                rotated: true,
            })
    }

    /// The `Set-Cookie` value carrying this session's id.
    pub fn cookie(&self, tls: bool) -> String {
        let config = &shard::current().sessions.config;
        let mut cookie = format!(
            "{}={}; Path=/; HttpOnly; SameSite=Lax",
            config.cookie_name,
            self.id().encode()
        );
        if let Some(max_age) = config.cookie_max_age {
            cookie.push_str(&format!("; Max-Age={max_age}"));
        }
        if tls {
            cookie.push_str("; Secure");
        }
        cookie
    }

    /// The `Set-Cookie` value that removes the session cookie from the client.
    pub fn clear_cookie(tls: bool) -> String {
        let config = &shard::current().sessions.config;
        let secure = if tls { "; Secure" } else { "" };
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}",
            config.cookie_name
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::future::Future;
    use std::pin::Pin;

    use super::*;
    use crate::mesh::MeshLimits;

    /// A value JSON cannot hold is the app's error (500), not the client's "too large".
    #[test]
    fn a_value_json_cannot_hold_is_not_json() {
        let tuple_keys: HashMap<(u8, u8), u8> = HashMap::from([((1, 2), 3)]);
        let error = to_json(&tuple_keys).unwrap_err();
        assert_eq!(
            (error.status(), error.message()),
            (500, "the value cannot be stored as JSON")
        );
        assert_eq!(to_json(&vec![1, 2]).unwrap(), serde_json::json!([1, 2]));
    }

    /// A step of a scenario on one shard's sessions; ids go by the names the scenario gives them.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Create(&'static str),
        /// Rotate the first id; the second names the new one, None: expect Unknown.
        Rotate(&'static str, Option<&'static str>),
        /// Ask for a rotation again (its answer was lost): the same new id, and the ticket of
        /// the first answer while the rotation is pending (true), 0 once it is durable.
        Repeat(&'static str, &'static str, bool),
        /// Destroy the id; Some: expect the ticket of that id's revocation, None: Unknown.
        Destroy(&'static str, Option<&'static str>),
        /// Wait until every revocation so far is durable.
        Sync,
    }
    use Step::*;

    /// Runs `steps` on the sessions of a one-shard node with a revocation log, then checks
    /// that exactly the ids `live` name are live. Between steps nothing runs (`handle` is
    /// synchronous): a revocation is pending until a `Sync`, like one racing another request.
    fn check(steps: &'static [Step], live: &'static [&'static str]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let sessions = one_shard(&path).await;
                let log = sessions.revoked.borrow().clone().unwrap();
                let mut keys: HashMap<&str, SessionKey> = HashMap::new();
                let mut tickets: HashMap<&str, u64> = HashMap::new();
                for step in steps {
                    match *step {
                        Create(name) => _ = keys.insert(name, sessions.create().key),
                        Rotate(old, new) => {
                            let new_key: SessionKey = rand::random();
                            let SessionReply::Rotated(reply) =
                                sessions.handle(SessionRequest::Rotate(keys[old], new_key))
                            else {
                                unreachable!()
                            };
                            match (reply, new) {
                                (Ok((id, ticket)), Some(new)) => {
                                    assert_eq!(id.key, new_key, "{step:?}");
                                    keys.insert(new, id.key);
                                    tickets.insert(old, ticket);
                                }
                                (Err(SessionError::Unknown), None) => {}
                                (reply, _) => panic!("{step:?}: {:?}", reply.map(|(_, t)| t)),
                            }
                        }
                        Destroy(name, waits_for) => {
                            let SessionReply::Revoked(reply) =
                                sessions.handle(SessionRequest::Destroy(keys[name]))
                            else {
                                unreachable!()
                            };
                            match (reply, waits_for) {
                                (Ok(ticket), Some(revoked)) => {
                                    // A destroy that found the session live made the record.
                                    let expected = *tickets.entry(revoked).or_insert(ticket);
                                    assert_eq!(ticket, expected, "{step:?}");
                                }
                                (Err(SessionError::Unknown), None) => {}
                                (reply, _) => panic!("{step:?}: {reply:?}"),
                            }
                        }
                        Repeat(old, new, pending) => {
                            let again = SessionRequest::Rotate(keys[old], keys[new]);
                            let SessionReply::Rotated(Ok((id, ticket))) = sessions.handle(again)
                            else {
                                panic!("{step:?}: not answered as the first time");
                            };
                            assert_eq!(id.key, keys[new], "{step:?}");
                            let first = if pending { tickets[old] } else { 0 };
                            assert_eq!(ticket, first, "{step:?}");
                        }
                        Sync => log.durable(log.appended()).await.unwrap(),
                    }
                }
                for (name, key) in &keys {
                    let SessionReply::Done(reply) = sessions.handle(SessionRequest::Live(*key))
                    else {
                        unreachable!()
                    };
                    assert_eq!(
                        reply,
                        Ok(live.contains(name)),
                        "{name} live, after {steps:?}"
                    );
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// Shard 0 of a one-shard node, its revocation log in `dir`; no mesh call is ever served.
    async fn one_shard(dir: &std::path::Path) -> Rc<Sessions> {
        let builder = glommio::channels::channel_mesh::MeshBuilder::full(1, 8);
        let limits = MeshLimits {
            inflight_max: 8,
            deadline: Duration::from_secs(1),
        };
        let mesh = Mesh::join(
            builder,
            0,
            limits,
            Rc::new(
                |_from, _request| -> Pin<Box<dyn Future<Output = SessionReply>>> {
                    unreachable!("one shard serves itself")
                },
            ),
        )
        .await;
        let config = SessionConfig {
            cookie_name: "sid".into(),
            cookie_max_age: None,
            idle_timeout: Duration::from_secs(60),
            lifetime: Duration::from_secs(600),
            sessions_max: 16,
            sessions_per_user_max: 4,
            session_bytes_max: 1024,
            store_bytes_max: 1 << 20,
            revocations_max: 64,
            persist: true,
            snapshot_interval: Duration::from_secs(60),
        };
        let sessions = Rc::new(Sessions::new(1, config, mesh));
        sessions.load(dir);
        sessions
    }

    /// A login rotates and writes the user in one step (found in review: the user written
    /// after the rotation, a failed write left the new id holding the previous user): a user
    /// that does not fit changes nothing; a repeat answers as the first time and changes
    /// nothing more; a "repeat" naming another user is refused; another user's login starts
    /// an empty session.
    #[test]
    fn a_login_rotates_and_writes_the_user_in_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let sessions = one_shard(&path).await;
                let now = now_ms();
                let old = sessions.create().key;
                let login = |old, new, user: &str| {
                    let request = SessionRequest::Login(old, new, Value::from(user));
                    match sessions.handle(request) {
                        SessionReply::Rotated(reply) => reply.map(|(id, _)| id.key),
                        _ => unreachable!("Login is answered with Rotated"),
                    }
                };
                let user_of = |key| sessions.store.borrow_mut().get(&key, USER_VALUE, now);
                let mut store = sessions.store.borrow_mut();
                store.put(&old, USER_VALUE, "bob".into(), now).unwrap();
                // 1024 bytes at most: "bob" and the longest pad that fits leave no room for a
                // longer name; then the session is anonymous again, its data kept by a login.
                let fits = |len| {
                    let pad = Value::from("x".repeat(len));
                    store.put(&old, "pad", pad, now).is_ok()
                };
                assert!((0..1024).rev().any(fits));
                store.take_value(&old, USER_VALUE, now).unwrap();
                drop(store);
                let new: SessionKey = rand::random();
                let long = "m".repeat(100);
                assert_eq!(login(old, new, &long), Err(SessionError::TooLarge));
                assert_eq!(user_of(old), Ok(None), "nothing changed");
                assert_eq!(user_of(new), Err(StoreError::Unknown));
                assert_eq!(login(old, new, "al"), Ok(new));
                assert_eq!(user_of(new), Ok(Some("al".into())));
                let pad_of = |key| sessions.store.borrow_mut().get(&key, "pad", now);
                assert!(
                    matches!(pad_of(new), Ok(Some(_))),
                    "an anonymous session's data stays"
                );
                assert_eq!(user_of(old), Err(StoreError::Unknown), "the old id is dead");
                assert_eq!(login(old, new, "al"), Ok(new), "a repeat");
                assert_eq!(
                    login(old, new, "bob"),
                    Err(SessionError::Unknown),
                    "no repeat"
                );
                assert_eq!(user_of(new), Ok(Some("al".into())));
                // Another user's login, with a name the padded session had no room for: a new,
                // empty session (the data was al's).
                let other: SessionKey = rand::random();
                assert_eq!(login(new, other, &long), Ok(other));
                assert_eq!(user_of(other), Ok(Some(long.as_str().into())));
                assert_eq!(
                    pad_of(other),
                    Ok(None),
                    "another user's data does not follow"
                );
                assert_eq!(user_of(new), Err(StoreError::Unknown));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// Review finding: two destroys racing a rotation all succeeded, and the session lived on
    /// under the rotated id. A destroy of an id a pending rotation ended follows it to the new
    /// id; once the rotation is durable the old id is unknown like any dead one.
    #[test]
    fn a_destroy_of_an_id_a_pending_rotation_ended_destroys_the_new_id() {
        #[rustfmt::skip]
        let cases: &[(&[Step], &[&str])] = &[
            // The review's race: both destroys wait for the new id's revocation.
            (&[Create("a"), Rotate("a", Some("b")), Destroy("a", Some("b")), Destroy("a", Some("b"))], &[]),
            // The destroy first: the rotation finds the id dead.
            (&[Create("a"), Destroy("a", Some("a")), Rotate("a", None), Destroy("a", Some("a"))], &[]),
            // A chain of pending rotations is followed to its end.
            (&[Create("a"), Rotate("a", Some("b")), Rotate("b", Some("c")), Destroy("a", Some("c"))], &[]),
            // The new id destroyed already: its record is the one to wait for.
            (&[Create("a"), Rotate("a", Some("b")), Destroy("b", Some("b")), Destroy("a", Some("b"))], &[]),
            // The rotation synced, the old id alone can no longer end the session (fixation).
            (&[Create("a"), Rotate("a", Some("b")), Sync, Destroy("a", None)], &["b"]),
            // Half the chain synced: the link from the pending part is followed.
            (&[Create("a"), Rotate("a", Some("b")), Sync, Rotate("b", Some("c")), Destroy("a", None), Destroy("b", Some("c"))], &[]),
            // Other sessions are left alone.
            (&[Create("a"), Create("x"), Rotate("a", Some("b")), Destroy("a", Some("b"))], &["x"]),
            // A rotation asked again (its answer lost) answers as the first time, pending or
            // durable, and rotates nothing more.
            (&[Create("a"), Rotate("a", Some("b")), Repeat("a", "b", true), Sync, Repeat("a", "b", false)], &["b"]),
        ];
        for (steps, live) in cases {
            check(steps, live);
        }
    }
}
