//! Sessions: each shard owns a store of the sessions it minted; any shard serves any session through one mesh message to the owner computed from the id. No shared map, no lock.

pub mod id;
pub mod persist;
pub mod routes;
pub mod store;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::SessionConfig;
use crate::config::limits::{SESSION_SNAPSHOT_STEP, SESSION_SWEEP_STEP_MAX};
use crate::mesh::Mesh;
use crate::router::Request;
use crate::runtime::{now_ms, shard};
use id::{IdGenerator, SessionId, SessionKey};
use store::{SessionData, SessionRecord, Store, StoreError, StoreLimits};

/// A session operation, executed on the session's owner shard.
pub enum SessionRequest {
    Data(SessionKey),
    Get(SessionKey, String),
    Put(SessionKey, String, Value),
    Remove(SessionKey, String),
    Destroy(SessionKey),
    Rotate(SessionKey),
}

pub enum SessionReply {
    Data(Result<SessionData, StoreError>),
    Value(Result<Option<Value>, StoreError>),
    Done(Result<bool, StoreError>),
    Rotated(Result<SessionId, StoreError>),
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
    /// The owner shard did not answer in time or is overloaded; safe to retry.
    Unavailable,
}

impl SessionError {
    pub fn status(&self) -> u16 {
        match self {
            SessionError::Unknown => 401,
            SessionError::TooLarge => 413,
            SessionError::Unavailable => 503,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            SessionError::Unknown => "no valid session",
            SessionError::TooLarge => "session data over its size bound",
            SessionError::Unavailable => "session owner unavailable, retry",
        }
    }
}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> SessionError {
        match e {
            StoreError::Unknown => SessionError::Unknown,
            StoreError::TooLarge => SessionError::TooLarge,
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
}

impl Sessions {
    pub fn new(node: u16, config: SessionConfig, mesh: Rc<SessionMesh>) -> Sessions {
        let limits = StoreLimits {
            sessions_max: config.sessions_max,
            session_bytes_max: config.session_bytes_max,
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
        }
    }

    /// Serves an operation on a session this shard owns. Synchronous: it never waits.
    pub fn handle(&self, request: SessionRequest) -> SessionReply {
        let now = now_ms();
        let mut store = self.store.borrow_mut();
        match request {
            SessionRequest::Data(key) => SessionReply::Data(store.data(&key, now)),
            SessionRequest::Get(key, name) => SessionReply::Value(store.get(&key, &name, now)),
            SessionRequest::Put(key, name, value) => {
                SessionReply::Done(store.put(&key, &name, value, now).map(|()| true))
            }
            SessionRequest::Remove(key, name) => {
                SessionReply::Done(store.remove_value(&key, &name, now))
            }
            SessionRequest::Destroy(key) => SessionReply::Done(Ok(store.destroy(&key, now))),
            SessionRequest::Rotate(key) => {
                let new_id = self.ids.borrow_mut().mint();
                SessionReply::Rotated(store.rotate(&key, new_id.key, now).map(|()| new_id))
            }
        }
    }

    fn create(&self) -> SessionId {
        let id = self.ids.borrow_mut().mint();
        self.store.borrow_mut().create(id.key, now_ms());
        id
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

    /// Loads this shard's snapshot, if any; a missing file is fine, a bad one is reported and skipped.
    pub fn load(&self, dir: &std::path::Path) {
        let path = persist::path(dir, self.shard);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                eprintln!(
                    "percore: shard {}: cannot read {}: {e}; starting without its sessions",
                    self.shard,
                    path.display()
                );
                return;
            }
        };
        match persist::decode(&bytes, self.node, self.shard as u16) {
            Ok(sessions) => {
                let now = now_ms();
                let mut store = self.store.borrow_mut();
                let limits = (
                    self.config.idle_timeout.as_millis() as u64,
                    self.config.lifetime.as_millis() as u64,
                );
                for (key, record) in sessions {
                    let live = now < record.accessed_ms.saturating_add(limits.0)
                        && now < record.created_ms.saturating_add(limits.1);
                    if live && !store.contains(&key) {
                        store.insert(key, record, now);
                    }
                }
                store.counters = Default::default();
            }
            Err(reason) => {
                eprintln!(
                    "percore: shard {}: session snapshot {} skipped: {reason}",
                    self.shard,
                    path.display()
                )
            }
        }
    }

    /// Copies the live sessions in steps (yielding between them, so serving goes on) and writes
    /// them on the blocking pool. Returns the store generation written.
    pub async fn snapshot(&self, dir: &std::path::Path) -> std::io::Result<u64> {
        let now = now_ms();
        let (generation, keys): (u64, Vec<SessionKey>) = {
            let store = self.store.borrow();
            (
                store.generation,
                store.records(now).map(|(k, _)| *k).collect(),
            )
        };
        let mut records: Vec<(SessionKey, SessionRecord)> = Vec::with_capacity(keys.len());
        for step in keys.chunks(SESSION_SNAPSHOT_STEP) {
            {
                let store = self.store.borrow();
                records.extend(store.records_of(step).map(|(k, r)| (*k, r.clone())));
            }
            glommio::yield_if_needed().await;
        }
        let (node, shard) = (self.node, self.shard as u16);
        let path = persist::path(dir, self.shard);
        glommio::executor()
            .spawn_blocking(move || {
                let bytes = persist::encode(node, shard, records.iter().map(|(k, r)| (k, r)));
                persist::write_file(&path, &bytes)
            })
            .await?;
        Ok(generation)
    }

    /// Writes the snapshot now, blocking the shard (shutdown only).
    pub fn snapshot_blocking(&self, dir: &std::path::Path) -> std::io::Result<()> {
        let store = self.store.borrow();
        let bytes = persist::encode(self.node, self.shard as u16, store.records(now_ms()));
        persist::write_file(&persist::path(dir, self.shard), &bytes)
    }
}

/// Background upkeep of one shard's sessions: expiry sweeps in bounded steps, and periodic
/// snapshots when the store changed. Runs on the shard's background task queue.
pub async fn upkeep(sessions: Rc<Sessions>, data_dir: Option<std::path::PathBuf>) {
    let mut written_generation = sessions.store.borrow().generation;
    let mut next_snapshot = std::time::Instant::now() + sessions.config.snapshot_interval;
    loop {
        glommio::timer::sleep(Duration::from_millis(500)).await;
        while sessions
            .store
            .borrow_mut()
            .sweep(now_ms(), SESSION_SWEEP_STEP_MAX)
            == SESSION_SWEEP_STEP_MAX
        {
            glommio::yield_if_needed().await;
        }
        let Some(dir) = &data_dir else { continue };
        if std::time::Instant::now() < next_snapshot {
            continue;
        }
        next_snapshot = std::time::Instant::now() + sessions.config.snapshot_interval;
        if sessions.store.borrow().generation == written_generation {
            continue;
        }
        match sessions.snapshot(dir).await {
            Ok(generation) => written_generation = generation,
            Err(e) => eprintln!(
                "percore: shard {}: session snapshot failed: {e}",
                sessions.shard
            ),
        }
    }
}

/// A handle on one session, usable from any shard: every operation goes to the owner.
#[derive(Clone, Debug)]
pub struct Session {
    id: SessionId,
}

impl Session {
    /// The session named by the request's cookie, without checking that it exists.
    pub fn from_request(req: &Request) -> Option<Session> {
        let name = shard::current().sessions.config.cookie_name.clone();
        req.head
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(|b| *b == b';'))
            .filter_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|b| *b == b'=')?;
                (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
            })
            .find_map(SessionId::decode)
            .map(|id| Session { id })
    }

    /// A new, empty session owned by the current shard.
    pub fn create() -> Session {
        Session {
            id: shard::current().sessions.create(),
        }
    }

    /// The request's session if it is live, else a new one; `true` when created.
    pub async fn get_or_create(req: &Request) -> Result<(Session, bool), SessionError> {
        if let Some(session) = Session::from_request(req) {
            match session.data().await {
                Ok(_) => return Ok((session, false)),
                Err(SessionError::Unknown) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((Session::create(), true))
    }

    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// The shard that owns this session.
    pub fn owner(&self) -> usize {
        usize::from(self.id.shard)
    }

    async fn call(&self, request: SessionRequest) -> Result<SessionReply, SessionError> {
        let sessions = shard::current().sessions.clone();
        sessions.call(&self.id, request).await
    }

    pub async fn data(&self) -> Result<SessionData, SessionError> {
        match self.call(SessionRequest::Data(self.id.key)).await? {
            SessionReply::Data(result) => Ok(result?),
            _ => unreachable!("Data is answered with Data"),
        }
    }

    pub async fn get_value(&self, name: &str) -> Result<Option<Value>, SessionError> {
        match self
            .call(SessionRequest::Get(self.id.key, name.to_string()))
            .await?
        {
            SessionReply::Value(result) => Ok(result?),
            _ => unreachable!("Get is answered with Value"),
        }
    }

    /// A typed value; a value of another shape reads as None.
    pub async fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, SessionError> {
        Ok(self
            .get_value(name)
            .await?
            .and_then(|v| serde_json::from_value(v).ok()))
    }

    pub async fn set_value(&self, name: &str, value: Value) -> Result<(), SessionError> {
        match self
            .call(SessionRequest::Put(self.id.key, name.to_string(), value))
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
        let value = serde_json::to_value(value).map_err(|_| SessionError::TooLarge)?;
        self.set_value(name, value).await
    }

    /// Removes a value; false when there was none.
    pub async fn remove(&self, name: &str) -> Result<bool, SessionError> {
        match self
            .call(SessionRequest::Remove(self.id.key, name.to_string()))
            .await?
        {
            SessionReply::Done(result) => Ok(result?),
            _ => unreachable!("Remove is answered with Done"),
        }
    }

    /// Destroys the session; from then on its id is unknown on every shard.
    pub async fn destroy(self) -> Result<(), SessionError> {
        match self.call(SessionRequest::Destroy(self.id.key)).await? {
            SessionReply::Done(Ok(true)) => Ok(()),
            SessionReply::Done(_) => Err(SessionError::Unknown),
            _ => unreachable!("Destroy is answered with Done"),
        }
    }

    /// Gives the session a new id (same owner, same data); the old id is dead (against fixation).
    pub async fn rotate(&mut self) -> Result<(), SessionError> {
        match self.call(SessionRequest::Rotate(self.id.key)).await? {
            SessionReply::Rotated(result) => {
                self.id = result?;
                Ok(())
            }
            _ => unreachable!("Rotate is answered with Rotated"),
        }
    }

    /// The `Set-Cookie` value carrying this session's id.
    pub fn cookie(&self, tls: bool) -> String {
        let config = &shard::current().sessions.config;
        let mut cookie = format!(
            "{}={}; Path=/; HttpOnly; SameSite=Lax",
            config.cookie_name,
            self.id.encode()
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
