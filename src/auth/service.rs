//! One shard's part of authentication: the users it checks passwords against, the brute-force counters it owns (reached by every shard over the auth mesh), password hashing on background threads within bounds, and the Basic credential cache. Nothing here is `Send`.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};

use super::limiter::{self, Attempt, Limiter};
use super::password;
use super::users::Users;
use crate::config::limits::BASIC_CACHE_ENTRIES_MAX;
use crate::config::{AuthConfig, HashPriority};
use crate::mesh::{Mesh, MeshError, join_all};
use crate::metrics::add;
use crate::runtime::{now_ms, shard};

/// A brute-force counter operation, run on the shard that owns the key. The number is the
/// attempt's id (`Auth::next_attempt_id`), which its judgment names.
pub enum LimitRequest {
    /// Blocked? If not, count this attempt as in flight now (before the hash): see
    /// `Limiter::attempt`.
    Attempt(String, u64),
    /// The attempt in flight failed: a failure.
    Fail(String, u64),
    /// Take back the attempt if it is in flight (it succeeded, was never judged, or its reply
    /// was lost).
    Refund(String, u64),
    /// A successful login: forget the user name's failures (the attempt ends; others in flight
    /// stay counted).
    Reset(String, u64),
}

/// What an `Attempt` found (`Counted` for the others).
pub struct LimitReply(pub Attempt);

/// The brute-force counters have their own mesh: a login never waits behind session or
/// transaction traffic, and the handler never sends a message itself.
pub type AuthMesh = Mesh<LimitRequest, LimitReply>;

/// Serves a counter operation for a key this shard owns. Synchronous: it never waits.
pub fn serve_limit(limiter: &RefCell<Limiter>, request: LimitRequest) -> LimitReply {
    let now = now_ms();
    let mut limiter = limiter.borrow_mut();
    LimitReply(match request {
        LimitRequest::Attempt(key, id) => limiter.attempt(&key, id, now),
        LimitRequest::Fail(key, id) => {
            limiter.fail(&key, id, now);
            Attempt::Counted
        }
        LimitRequest::Refund(key, id) => {
            limiter.refund(&key, id);
            Attempt::Counted
        }
        LimitRequest::Reset(key, id) => {
            limiter.reset(&key, id);
            Attempt::Counted
        }
    })
}

/// Why a password check gave no identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// Wrong user or password (the same answer for both).
    Invalid,
    /// Too many failures for this user name or address: retry after this many seconds.
    Blocked(u64),
    /// Retry soon (503): the shard's hash queue is full, failures and attempts in flight are
    /// at the bound, a counter owner did not answer, or a reload replaced the users meanwhile.
    Busy,
}

pub struct Auth {
    pub config: AuthConfig,
    users: RefCell<Arc<Users>>,
    /// Bumped when the users change; Basic cache entries of an older generation are void.
    generation: Cell<u64>,
    pub limiter: Rc<RefCell<Limiter>>,
    mesh: Rc<AuthMesh>,
    /// The next attempt's id: the shard's index in the top 16 bits, a count below, so ids are
    /// unique across shards (wrapping after 2^48 attempts on one shard).
    attempt_id_next: Cell<u64>,
    hash_slots: Rc<glommio::sync::Semaphore>,
    hash_waiting: Cell<usize>,
    /// (user, SHA-256(salt, password)) -> generation, of Basic credentials verified here.
    basic_cache: RefCell<FxHashMap<BasicKey, u64>>,
    /// Basic credentials being verified now, each with a semaphore closed when that check ends:
    /// concurrent requests with the same credentials (a pipelined batch, parallel connections)
    /// wait for it instead of hashing again. At most one entry per request in flight.
    basic_pending: RefCell<FxHashMap<BasicKey, Rc<glommio::sync::Semaphore>>>,
    basic_salt: [u8; 16],
}

type BasicKey = (String, [u8; 32]);

/// Bits of an attempt id below the shard index (`Auth::attempt_id_next`).
const ATTEMPT_ID_COUNT_BITS: u32 = 48;
const _: () = assert!(
    crate::config::limits::SHARDS_MAX as u64 <= 1 << (64 - ATTEMPT_ID_COUNT_BITS),
    "every shard index fits above an attempt id's count"
);

impl Auth {
    pub fn new(
        config: AuthConfig,
        shard_index: usize,
        limiter: Rc<RefCell<Limiter>>,
        mesh: Rc<AuthMesh>,
    ) -> Auth {
        Auth {
            attempt_id_next: Cell::new((shard_index as u64) << ATTEMPT_ID_COUNT_BITS),
            users: RefCell::new(config.users.clone()),
            generation: Cell::new(0),
            hash_slots: Rc::new(glommio::sync::Semaphore::new(
                config.hash_concurrency as u64,
            )),
            hash_waiting: Cell::new(0),
            basic_cache: RefCell::new(FxHashMap::default()),
            basic_pending: RefCell::new(FxHashMap::default()),
            basic_salt: rand::random(),
            config,
            limiter,
            mesh,
        }
    }

    /// The auth mesh's counters, for `/stats`.
    pub fn mesh_counters(&self) -> &crate::mesh::MeshCounters {
        &self.mesh.counters
    }

    pub fn users(&self) -> Arc<Users> {
        self.users.borrow().clone()
    }

    /// Installs users re-read after SIGHUP.
    pub fn replace_users(&self, users: Arc<Users>) {
        *self.users.borrow_mut() = users;
        self.generation.set(self.generation.get() + 1);
        self.basic_cache.borrow_mut().clear();
    }

    /// The roles of `user` if it (still) exists and, given a login session's credential
    /// `stamp`, still has the password that session logged in with.
    pub fn roles_of(&self, user: &str, stamp: Option<&str>) -> Option<Vec<String>> {
        let users = self.users.borrow();
        let account = users.get(user)?;
        if stamp.is_some_and(|stamp| stamp != account.credential_stamp()) {
            return None;
        }
        Some(account.roles.clone())
    }

    /// The credential stamp a login session of `user` remembers (see `User::credential_stamp`).
    pub fn stamp_of(&self, user: &str) -> Option<String> {
        let users = self.users.borrow();
        Some(users.get(user)?.credential_stamp().to_string())
    }

    /// An id for one password check's attempt, unique among those in flight.
    fn next_attempt_id(&self) -> u64 {
        let id = self.attempt_id_next.get();
        let shard = id >> ATTEMPT_ID_COUNT_BITS;
        let count = (id + 1) & ((1 << ATTEMPT_ID_COUNT_BITS) - 1);
        self.attempt_id_next
            .set((shard << ATTEMPT_ID_COUNT_BITS) | count);
        id
    }

    fn keys(name: &str, addr: Option<IpAddr>) -> Vec<String> {
        let mut keys = vec![limiter::user_key(name)];
        keys.extend(addr.map(limiter::addr_key));
        keys
    }

    /// Sends one counter operation per key to its owner; the replies in key order. `judge`:
    /// the operation ends an attempt counted there (a failure, a refund, a reset), so it must
    /// reach the owner even past the mesh's bounds (`Mesh::call_posted`; found in review: a
    /// refund refused at the in-flight bound, or dropped from a full channel, left its attempt
    /// in flight for the window).
    async fn limit_each(
        &self,
        keys: &[String],
        judge: bool,
        request: impl Fn(String) -> LimitRequest,
    ) -> Vec<Result<Attempt, MeshError>> {
        let shard_count = self.mesh.shard_count();
        let calls = keys
            .iter()
            .map(|key| {
                let owner = limiter::owner_shard(key, shard_count);
                let mesh = &self.mesh;
                let request = request(key.clone());
                async move {
                    match judge {
                        true => mesh.call_posted(owner, request).await,
                        false => mesh.call(owner, request).await,
                    }
                }
            })
            .collect();
        join_all(calls)
            .await
            .into_iter()
            .map(|reply| reply.map(|LimitReply(attempt)| attempt))
            .collect()
    }

    /// Ends the attempt `id` on each key's owner with the judgment `request` makes of it.
    async fn judge_each(&self, keys: &[String], request: impl Fn(String) -> LimitRequest) {
        self.limit_each(keys, true, request).await;
    }

    /// Checks a user name and password (a login, or Basic on a cache miss) within the
    /// brute-force bounds. The attempt is counted, as in flight, for the name and the address on
    /// their owner shards *before* the hash, in the same step as the check, so guesses sent in
    /// parallel count too: a key with failures at the bound is refused before any hashing
    /// (429), and one where failures and attempts in flight are at it is busy for a moment
    /// (503). A failure counts for both keys; a success takes the address's attempt back and
    /// forgets the name's. An unknown user costs a hash like a known one, so the
    /// answer time does not tell which user names exist.
    ///
    /// The whole check, from counting the attempt to judging it, runs in a task of its own: a
    /// request dropped at any point (its client hung up, `--handler-timeout`) leaves no attempt
    /// counted and never judged (found in review: one left in flight kept its key at 503 for
    /// the window), and the metrics count every check. A right password checked against users
    /// that a reload replaced meanwhile is `Busy` (retry): its roles and the session's stamp
    /// would be the new users' (found in review: such a login outlived a password change).
    pub async fn check_password(
        &self,
        name: &str,
        password: &str,
        addr: Option<IpAddr>,
    ) -> Result<Vec<String>, Denied> {
        let auth = shard::current().auth.clone();
        debug_assert!(std::ptr::eq(Rc::as_ptr(&auth), self), "the shard's Auth");
        let (name, password) = (name.to_string(), password.to_string());
        let checked = glommio::spawn_local(async move {
            // A reload during the check is seen here, so the metrics count its 503 as busy.
            let result = auth
                .check_password_counted(&name, &password, addr)
                .await
                .and_then(
                    |(roles, generation)| match generation == auth.generation.get() {
                        true => Ok((roles, generation)),
                        false => Err(Denied::Busy),
                    },
                );
            let metrics = &shard::current().metrics;
            add(
                match result {
                    Ok(_) => &metrics.password_checks_ok,
                    Err(Denied::Invalid) => &metrics.password_checks_failed,
                    Err(Denied::Blocked(_)) => &metrics.password_checks_blocked,
                    Err(Denied::Busy) => &metrics.password_checks_busy,
                },
                1,
            );
            result
        })
        .detach();
        match checked.await.unwrap_or(Err(Denied::Busy))? {
            (roles, generation) if generation == self.generation.get() => Ok(roles),
            _ => {
                // A reload between the check's end and this request's turn: a 503 after all.
                let metrics = &shard::current().metrics;
                metrics
                    .password_checks_ok
                    .set(metrics.password_checks_ok.get() - 1);
                add(&metrics.password_checks_busy, 1);
                Err(Denied::Busy)
            }
        }
    }

    /// The check, and the users' generation it was made against.
    async fn check_password_counted(
        &self,
        name: &str,
        password: &str,
        addr: Option<IpAddr>,
    ) -> Result<(Vec<String>, u64), Denied> {
        let keys = Auth::keys(name, addr);
        let id = self.next_attempt_id();
        let refund = |key| LimitRequest::Refund(key, id);
        let attempts = self
            .limit_each(&keys, false, |key| LimitRequest::Attempt(key, id))
            .await;
        if attempts
            .iter()
            .any(|attempt| *attempt != Ok(Attempt::Counted))
        {
            // A key is blocked, at its bound with attempts in flight, or its owner did not
            // answer (then we do not guess in the attacker's favour): the attempt goes no
            // further, and the keys that counted it take it back, as do those whose reply was
            // lost: counted late or never, a refund by id finds it or changes nothing. A
            // refused call (`Overloaded`, `Expired`, `Closed`) counted nothing.
            let counted: Vec<String> = keys
                .iter()
                .zip(&attempts)
                .filter(|(_, attempt)| {
                    matches!(attempt, Ok(Attempt::Counted) | Err(MeshError::Timeout))
                })
                .map(|(key, _)| key.clone())
                .collect();
            self.judge_each(&counted, refund).await;
            let blocked_ms = attempts
                .iter()
                .filter_map(|attempt| match attempt {
                    Ok(Attempt::Blocked(ms)) => Some(*ms),
                    _ => None,
                })
                .max();
            if blocked_ms.is_none() && attempts.contains(&Ok(Attempt::InFlight)) {
                add(&shard::current().metrics.password_checks_busy_in_flight, 1);
            }
            return Err(match blocked_ms {
                Some(ms) => Denied::Blocked(limiter::retry_after_secs(ms)),
                None => Denied::Busy,
            });
        }
        let users = self.users();
        let generation = self.generation.get();
        let user = users.get(name);
        let known = user.is_some();
        let roles = user.map(|u| u.roles.clone()).unwrap_or_default();
        // An unknown user is checked against a real user's hash (the most common parameters,
        // so the same time as most users); the answer is ignored. Without users, against the
        // built-in dummy.
        let phc = user
            .or_else(|| users.stand_in())
            .map(|u| u.password_hash.clone());
        drop(users);
        let verified = match self.hash(phc, password).await {
            Ok(verified) => verified && known,
            Err(busy) => {
                self.judge_each(&keys, refund).await;
                return Err(busy);
            }
        };
        if !verified {
            self.judge_each(&keys, |key| LimitRequest::Fail(key, id))
                .await;
            return Err(Denied::Invalid);
        }
        if generation != self.generation.get() {
            // Right against users a reload replaced: no success, so no reset of the name's
            // failures either (found in review: an old password cleared them).
            self.judge_each(&keys, refund).await;
            return Err(Denied::Busy);
        }
        self.judge_each(&keys[..1], |key| LimitRequest::Reset(key, id))
            .await;
        self.judge_each(&keys[1..], refund).await;
        Ok((roles, generation))
    }

    /// Verifies `password` against `phc` (or the dummy hash) on a background thread, at most
    /// `hash_concurrency` at once per shard and `hash_queue_max` waiting.
    async fn hash(&self, phc: Option<String>, password: &str) -> Result<bool, Denied> {
        let _permit = match self.hash_slots.try_acquire_permit(1) {
            Ok(permit) => permit,
            Err(_) => {
                if self.hash_waiting.get() >= self.config.hash_queue_max {
                    return Err(Denied::Busy);
                }
                // Counted down on drop, so a cancelled request (a middleware timeout) leaks nothing.
                let _waiting = Waiting::enter(&self.hash_waiting);
                self.hash_slots
                    .acquire_permit(1)
                    .await
                    .map_err(|_| Denied::Busy)?
            }
        };
        let password = password.to_string();
        let priority = self.config.hash_priority;
        // The check runs in a task no request can drop (`check_password`), so the slot is
        // held until the job ends: a client that hung up mid-hash let the next hash start
        // beside its own, and hang-ups could run any number at once (found in review).
        let shard = shard::current();
        let running = &shard.metrics.password_hashes_running;
        running.set(running.get() + 1);
        let verified = glommio::executor()
            .spawn_blocking(move || {
                set_this_threads_priority(priority);
                match phc {
                    Some(phc) => password::verify(&phc, &password),
                    None => {
                        password::verify_dummy(&password);
                        false
                    }
                }
            })
            .await;
        running.set(running.get() - 1);
        Ok(verified)
    }

    /// Basic credentials: from the cache when this shard verified them before (since the last
    /// reload), else a full password check; a check of the same credentials already running
    /// here is waited for, not repeated.
    pub async fn check_basic(
        &self,
        name: &str,
        password: &str,
        addr: Option<IpAddr>,
    ) -> Result<Vec<String>, Denied> {
        let key = (name.to_string(), self.basic_digest(password));
        if let Some(roles) = self.cached_basic(&key) {
            return Ok(roles);
        }
        let running = self.basic_pending.borrow().get(&key).cloned();
        if let Some(done) = running {
            // Fails with Closed once that check ends, whatever its outcome.
            let _ = done.acquire(1).await;
            if let Some(roles) = self.cached_basic(&key) {
                return Ok(roles);
            }
            // It failed (or the users changed meanwhile): check for ourselves, so a wrong
            // password counts against the limits like every other try.
        }
        let done = Rc::new(glommio::sync::Semaphore::new(0));
        self.basic_pending
            .borrow_mut()
            .insert(key.clone(), done.clone());
        let _running = BasicCheck {
            auth: self,
            key: &key,
            done,
        };
        let generation = self.generation.get();
        let roles = self.check_password(name, password, addr).await?;
        if self.generation.get() == generation {
            let mut cache = self.basic_cache.borrow_mut();
            if cache.len() >= BASIC_CACHE_ENTRIES_MAX {
                cache.clear();
            }
            cache.insert(key.clone(), generation);
        }
        Ok(roles)
    }

    fn cached_basic(&self, key: &BasicKey) -> Option<Vec<String>> {
        if self.basic_cache.borrow().get(key) != Some(&self.generation.get()) {
            return None;
        }
        let roles = self.roles_of(&key.0, None)?;
        add(&shard::current().metrics.basic_cache_hits, 1);
        Some(roles)
    }

    fn basic_digest(&self, password: &str) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(self.basic_salt);
        digest.update(password.as_bytes());
        digest.finalize().into()
    }
}

/// Ends a running Basic check however it ends (answer, error, the request dropped): its entry
/// goes, and whoever waits for it wakes.
struct BasicCheck<'a> {
    auth: &'a Auth,
    key: &'a BasicKey,
    done: Rc<glommio::sync::Semaphore>,
}

impl Drop for BasicCheck<'_> {
    fn drop(&mut self) {
        let mut pending = self.auth.basic_pending.borrow_mut();
        if pending
            .get(self.key)
            .is_some_and(|done| Rc::ptr_eq(done, &self.done))
        {
            pending.remove(self.key);
        }
        self.done.close();
    }
}

/// One request in the hash queue, for as long as it is alive.
struct Waiting<'a>(&'a Cell<usize>);

impl<'a> Waiting<'a> {
    fn enter(count: &'a Cell<usize>) -> Waiting<'a> {
        count.set(count.get() + 1);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Sets the calling thread's CPU priority (on Linux nice and the policy are per thread). The
/// hashing thread is not pinned, and the kernel often runs it on its shard's own CPU. Measured
/// with both on one CPU (bench/RESULTS.md), /plaintext p99 while logins ran, against ~0.2-0.6 ms
/// without: nice 0 4.4 ms; nice 19 1.5 ms (p50 unchanged); SCHED_IDLE 0.7 ms (no change). But a
/// SCHED_IDLE hash waits as long as the CPUs are busy: with two CPU hogs running, logins took
/// tens of seconds. Hence the default `low`, and `idle` for servers with headroom.
fn set_this_threads_priority(priority: HashPriority) {
    let (nice, idle) = match priority {
        HashPriority::Idle => (19, true),
        HashPriority::Low => (19, false),
        HashPriority::Normal => (0, false),
    };
    // SAFETY: both calls act on the calling thread (pid/who 0) and read only `param`.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, nice);
        let policy = if idle {
            libc::SCHED_IDLE
        } else {
            libc::SCHED_OTHER
        };
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, policy, &param);
    }
}
