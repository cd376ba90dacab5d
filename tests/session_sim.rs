//! Seeded simulation of the session stores of a 3-shard node, checked op by op against a linear-scan model: routing by id, sliding and absolute expiry, LRU eviction (anonymous sessions first), logged-in sessions and the per-user bound, the bytes bound, rotation, a login as another user, bounded sweeps and counters. `SEED=n` replays one seed.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use percore::session::id::{SessionId, SessionKey};
use percore::session::store::{
    SessionData, SessionRecord, Store, StoreCounters, StoreError, StoreLimits, StoredValue,
    USER_VALUE, user_name,
};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{Value, json};

const NODE: u16 = 7;
const SHARDS: usize = 3;
/// Small on purpose: a few thousand operations cross every bound many times.
const LIMITS: StoreLimits = StoreLimits {
    sessions_max: 6,
    // Two of the six: a user's third login on a shard ends the least recently used of them.
    sessions_per_user_max: 2,
    // 80 bytes of names and JSON, and two values' overhead (SESSION_VALUE_OVERHEAD_BYTES).
    session_bytes_max: 80 + 2 * 64,
    // About three sessions at the bound: crossed long before `sessions_max` is.
    store_bytes_max: 600,
    idle_timeout_ms: 1_000,
    lifetime_ms: 4_000,
};
const SEEDS: u64 = 200;
const OPS_PER_SEED: usize = 2_000;
/// How many of the last operations a failure prints.
const HISTORY_LEN: usize = 20;
/// Every this many operations all shards are compared whole; the shard an operation touched is
/// compared by size, bytes and counters after every one.
const WHOLE_CHECK_EVERY: usize = 8;
/// The clock moves on one step in this many, by up to `STEP_MS_MAX`: slow enough that sessions
/// live long enough to fill a shard and be evicted, fast enough that most die of expiry; the
/// steps where it stands still make ties in access times (the LRU's tie-break).
const STEP_ADVANCE_ONE_IN: u32 = 3;
/// One seed in this many is a busy login hour: half the names written are `USER_VALUE`, few
/// sessions are created but by `TryCreate`, and the clock moves an eighth as often, seldom
/// jumping, so shards
/// fill with logged-in sessions (their bounds: the per-user one, refusals, logged-in evictions).
const LOGIN_SEED_ONE_IN: u64 = 3;
const STEP_MS_MAX: u64 = 300;
const SWEEP_STEPS_MAX: usize = 4;
/// Value names; "zz" is only ever removed, never put. `USER_VALUE` logs a session in.
const NAMES: [&str; 6] = ["a", "bb", "cart", "user", "n", USER_VALUE];
/// The users sessions log in as: few, so each reaches the per-user bound, and more than
/// `sessions_max / sessions_per_user_max`, so logged-in sessions can fill a shard.
const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

// ---------------------------------------------------------------------------------------------
// The model: per shard a Vec scanned linearly, written from the documented semantics.
// ---------------------------------------------------------------------------------------------

struct ModelSession {
    key: SessionKey,
    created_ms: u64,
    accessed_ms: u64,
    /// Order of the last touch or insert on this shard: breaks ties in `accessed_ms` (LRU order).
    touch_order: u64,
    /// Order of the insert on this shard: breaks ties in `created_ms` (lifetime order).
    insert_order: u64,
    data: SessionData,
    /// `data_bytes(&data)`, kept so the per-op check stays cheap.
    bytes: usize,
}

impl ModelSession {
    /// Holds `USER_VALUE`, whatever its value: evicted after every anonymous session.
    fn logged_in(&self) -> bool {
        self.data.contains_key(USER_VALUE)
    }

    /// The user the per-user bound counts it for.
    fn user(&self) -> Option<&str> {
        user_name(self.data.get(USER_VALUE)?)
    }

    fn lru_order(&self) -> (u64, u64) {
        (self.accessed_ms, self.touch_order)
    }
}

#[derive(Default)]
struct ModelShard {
    sessions: Vec<ModelSession>,
    order: u64,
    counters: StoreCounters,
    /// Not in the store's counters (they count as evictions): for the coverage.
    user_bound_evictions: u64,
    logged_in_evictions: u64,
}

/// The bytes bound: every value costs its name plus its JSON text.
fn data_bytes(data: &SessionData) -> usize {
    data.iter()
        .map(|(name, value)| name.len() + serde_json::to_string(value).unwrap().len() + 64)
        .sum()
}

/// A record's data as the store holds it (JSON text), and back.
fn stored(data: &SessionData) -> BTreeMap<String, StoredValue> {
    data.iter()
        .map(|(name, value)| (name.clone(), StoredValue::new(value)))
        .collect()
}

fn values(data: &BTreeMap<String, StoredValue>) -> SessionData {
    data.iter()
        .map(|(name, value)| (name.clone(), value.value()))
        .collect()
}

fn model_expired(session: &ModelSession, now_ms: u64) -> bool {
    now_ms >= session.accessed_ms + LIMITS.idle_timeout_ms
        || now_ms >= session.created_ms + LIMITS.lifetime_ms
}

/// The shard an id routes to: minted by this node for a shard that exists.
fn model_owner(id: &SessionId) -> Option<usize> {
    (id.node == NODE && usize::from(id.shard) < SHARDS).then_some(usize::from(id.shard))
}

impl ModelShard {
    fn next_order(&mut self) -> u64 {
        self.order += 1;
        self.order
    }

    fn find(&self, key: &SessionKey) -> Option<usize> {
        self.sessions.iter().position(|s| s.key == *key)
    }

    /// The least recently used session of those `which` picks.
    fn lru_where(&self, which: impl Fn(&ModelSession) -> bool) -> Option<usize> {
        (0..self.sessions.len())
            .filter(|&i| which(&self.sessions[i]))
            .min_by_key(|&i| self.sessions[i].lru_order())
    }

    /// Evicts the session at `index` (a bound's doing).
    fn evict(&mut self, index: usize) -> SessionKey {
        let session = self.sessions.remove(index);
        self.counters.evictions += 1;
        if session.logged_in() {
            self.logged_in_evictions += 1;
        }
        session.key
    }

    fn oldest_created(&self) -> Option<usize> {
        (0..self.sessions.len())
            .min_by_key(|&i| (self.sessions[i].created_ms, self.sessions[i].insert_order))
    }

    fn bytes(&self) -> usize {
        self.sessions.iter().map(|s| s.bytes).sum()
    }

    fn bytes_logged_in(&self) -> usize {
        self.sessions
            .iter()
            .filter(|s| s.logged_in())
            .map(|s| s.bytes)
            .sum()
    }

    /// At the bound one expired session is reclaimed first (as a one-step sweep); only when none
    /// is expired does the least recently used anonymous session go, else (`evict_logged_in`:
    /// `Store::insert`) the least recently used logged-in one, else (`try_insert`) the new one
    /// is refused. A logged-in session then ends its user's least recently used other sessions
    /// past the per-user bound.
    fn insert(
        &mut self,
        key: SessionKey,
        record: SessionRecord,
        now_ms: u64,
        evict_logged_in: bool,
    ) -> Result<Option<SessionKey>, StoreError> {
        let mut evicted = None;
        if self.sessions.len() >= LIMITS.sessions_max && self.sweep(now_ms, 1) == 0 {
            let victim = self.lru_where(|s| !s.logged_in()).or_else(|| {
                evict_logged_in
                    .then(|| self.lru_where(ModelSession::logged_in))
                    .flatten()
            });
            let Some(victim) = victim else {
                self.counters.refusals += 1;
                return Err(StoreError::Full);
            };
            evicted = Some(self.evict(victim));
        }
        let order = self.next_order();
        self.sessions.push(ModelSession {
            key,
            created_ms: record.created_ms,
            accessed_ms: record.accessed_ms,
            touch_order: order,
            insert_order: order,
            bytes: data_bytes(&values(&record.data)),
            data: values(&record.data),
        });
        self.counters.created += 1;
        if let Some(user) = self.sessions.last().unwrap().user().map(str::to_string) {
            self.cap_user(&user, &key);
        }
        Ok(evicted)
    }

    /// Past the per-user bound, evicts `user`'s least recently used sessions but `keep`.
    fn cap_user(&mut self, user: &str, keep: &SessionKey) {
        let of_user = |s: &ModelSession| s.user() == Some(user);
        while self.sessions.iter().filter(|s| of_user(s)).count() > LIMITS.sessions_per_user_max {
            let victim = self
                .lru_where(|s| of_user(s) && s.key != *keep)
                .expect("a user over the bound has a session besides `keep`");
            self.evict(victim);
            self.user_bound_evictions += 1;
        }
    }

    /// A live session slides its idle timeout; an expired one is removed and counted.
    fn touch(&mut self, key: &SessionKey, now_ms: u64) -> Result<usize, StoreError> {
        let index = self.find(key).ok_or(StoreError::Unknown)?;
        if model_expired(&self.sessions[index], now_ms) {
            self.sessions.remove(index);
            self.counters.expirations += 1;
            return Err(StoreError::Unknown);
        }
        let order = self.next_order();
        let session = &mut self.sessions[index];
        session.accessed_ms = session.accessed_ms.max(now_ms);
        session.touch_order = order;
        Ok(index)
    }

    fn data(&mut self, key: &SessionKey, now_ms: u64) -> Result<SessionData, StoreError> {
        let index = self.touch(key, now_ms)?;
        Ok(self.sessions[index].data.clone())
    }

    fn get(
        &mut self,
        key: &SessionKey,
        name: &str,
        now_ms: u64,
    ) -> Result<Option<Value>, StoreError> {
        let index = self.touch(key, now_ms)?;
        Ok(self.sessions[index].data.get(name).cloned())
    }

    /// Touches first (a refused write still slides the timeout), then leaves data unchanged
    /// when the result would exceed the session's bound. Past the store's bytes bound, expired
    /// sessions are reclaimed (one-step sweeps), then the least recently used other anonymous
    /// sessions evicted, then, for a logged-in writer or a login, logged-in ones; a write that
    /// would not fit with all those gone is refused, and evicts nothing. A login as a user
    /// (a new user in `USER_VALUE`) then applies the per-user bound.
    fn put(
        &mut self,
        key: &SessionKey,
        name: &str,
        value: Value,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let index = self.touch(key, now_ms)?;
        let mut data = self.sessions[index].data.clone();
        data.insert(name.to_string(), value);
        let bytes = data_bytes(&data);
        if bytes > LIMITS.session_bytes_max {
            return Err(StoreError::TooLarge);
        }
        let growth = bytes.saturating_sub(self.sessions[index].bytes);
        let over =
            |shard: &ModelShard| growth > 0 && shard.bytes() + growth > LIMITS.store_bytes_max;
        while over(self) && self.sweep(now_ms, 1) > 0 {}
        let index = self.find(key).expect("a live session is not swept");
        let writer = &self.sessions[index];
        let may_evict_logged_in = name == USER_VALUE || writer.logged_in();
        let kept = match may_evict_logged_in {
            true => writer.bytes,
            false => writer.bytes + self.bytes_logged_in(),
        };
        if over(self) && kept + growth > LIMITS.store_bytes_max {
            self.counters.refusals += 1;
            return Err(StoreError::Full);
        }
        while over(self) {
            let other = |s: &ModelSession| s.key != *key;
            let victim = self
                .lru_where(|s| other(s) && !s.logged_in())
                .or_else(|| self.lru_where(|s| other(s) && s.logged_in()))
                .expect("the others make room");
            self.evict(victim);
        }
        let index = self.find(key).expect("not the writer");
        let user_before = self.sessions[index].user().map(str::to_string);
        self.sessions[index].data = data;
        self.sessions[index].bytes = bytes;
        let user = self.sessions[index].user().map(str::to_string);
        if let Some(user) = user
            && Some(&user) != user_before.as_ref()
        {
            self.cap_user(&user, key);
        }
        Ok(())
    }

    fn remove_value(
        &mut self,
        key: &SessionKey,
        name: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let index = self.touch(key, now_ms)?;
        let session = &mut self.sessions[index];
        let removed = session.data.remove(name).is_some();
        session.bytes = data_bytes(&session.data);
        Ok(removed)
    }

    /// Destroy is a touch: an expired session is removed as an expiration and reported unknown.
    fn destroy(&mut self, key: &SessionKey, now_ms: u64) -> bool {
        let Ok(index) = self.touch(key, now_ms) else {
            return false;
        };
        self.sessions.remove(index);
        self.counters.destroyed += 1;
        true
    }

    /// Same record under a new key (same creation time, so the same lifetime); not a new session.
    fn rotate(
        &mut self,
        old_key: &SessionKey,
        new_key: SessionKey,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let index = self.touch(old_key, now_ms)?;
        let session = self.sessions.remove(index);
        let order = self.next_order();
        self.sessions.push(ModelSession {
            key: new_key,
            touch_order: order,
            insert_order: order,
            ..session
        });
        Ok(())
    }

    /// A login as another user: the old session ends (destroyed) and a new, empty one takes
    /// its place.
    fn replace(
        &mut self,
        old_key: &SessionKey,
        new_key: SessionKey,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let index = self.touch(old_key, now_ms)?;
        self.sessions.remove(index);
        self.counters.destroyed += 1;
        let record = SessionRecord {
            created_ms: now_ms,
            accessed_ms: now_ms,
            data: BTreeMap::new(),
        };
        self.insert(new_key, record, now_ms, true)
            .expect("one session was removed");
        Ok(())
    }

    /// Each step removes the least recently used anonymous session if it is expired, else the
    /// least recently used logged-in one if it is expired, else the oldest created one if it
    /// is expired, else stops.
    fn sweep(&mut self, now_ms: u64, steps_max: usize) -> usize {
        let mut removed = 0;
        while removed < steps_max {
            let candidates = [
                self.lru_where(|s| !s.logged_in()),
                self.lru_where(ModelSession::logged_in),
                self.oldest_created(),
            ];
            let Some(index) = candidates
                .into_iter()
                .flatten()
                .find(|&i| model_expired(&self.sessions[i], now_ms))
            else {
                break;
            };
            self.sessions.remove(index);
            self.counters.expirations += 1;
            removed += 1;
        }
        removed
    }

    fn live_records(&self, now_ms: u64) -> BTreeMap<SessionKey, SessionRecord> {
        self.sessions
            .iter()
            .filter(|s| !model_expired(s, now_ms))
            .map(|s| {
                let record = SessionRecord {
                    created_ms: s.created_ms,
                    accessed_ms: s.accessed_ms,
                    data: stored(&s.data),
                };
                (s.key, record)
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Operations and outcomes.
// ---------------------------------------------------------------------------------------------

/// A key shown by its first bytes, so a failure's history is readable.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key(SessionKey);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}{:02x}{:02x}", self.0[0], self.0[1], self.0[2])
    }
}

#[derive(Clone, Copy)]
struct Id(SessionId);

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{:?}", self.0.node, self.0.shard, Key(self.0.key))
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        from: usize,
        key: Key,
    },
    /// A new session that may not evict a logged-in one (`Store::try_create`).
    TryCreate {
        from: usize,
        key: Key,
    },
    /// A record loaded from a snapshot (`Store::insert`).
    Insert {
        from: usize,
        key: Key,
        record: SessionRecord,
    },
    Data {
        from: usize,
        id: Id,
    },
    Get {
        from: usize,
        id: Id,
        name: &'static str,
    },
    Put {
        from: usize,
        id: Id,
        name: &'static str,
        value: Value,
    },
    Remove {
        from: usize,
        id: Id,
        name: &'static str,
    },
    Destroy {
        from: usize,
        id: Id,
    },
    Rotate {
        from: usize,
        id: Id,
        new_key: Key,
    },
    /// A login as another user than the session's (`Store::replace`).
    Replace {
        from: usize,
        id: Id,
        new_key: Key,
    },
    Sweep {
        shard: usize,
        steps_max: usize,
    },
    /// Jumps the clock forward to `now_ms` (across an idle timeout or a lifetime).
    Jump {
        now_ms: u64,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Created(Option<Key>),
    TryCreated(Result<Option<Key>, StoreError>),
    Data(Result<SessionData, StoreError>),
    Value(Result<Option<Value>, StoreError>),
    Done(Result<bool, StoreError>),
    Put(Result<(), StoreError>),
    Rotated(Result<(), StoreError>),
    Swept(usize),
    Jumped,
}

/// How often the generator reached each interesting path, summed over seeds: the simulation
/// fails if a change to it stops exercising one.
#[derive(Debug, Default)]
struct Coverage {
    evictions: u64,
    evictions_of_expired: u64,
    expirations_on_touch: u64,
    sweep_removed: u64,
    sweeps_cut_by_bound: u64,
    too_large: u64,
    puts_at_bound: u64,
    /// Writes that evicted for the store's bytes bound.
    bytes_evictions: u64,
    /// Writes refused at the store's bytes bound (what could be evicted was logged in).
    bytes_refusals: u64,
    /// New sessions refused (`try_create`) with every session logged in.
    creates_refused: u64,
    logged_in_evictions: u64,
    user_bound_evictions: u64,
    logins: u64,
    replaces: u64,
    rotations: u64,
    destroys: u64,
    destroys_of_expired: u64,
    routed_unknown: u64,
    remote_calls: u64,
    held_key_on_wrong_shard: u64,
    values_found: u64,
    exact_expiry_jumps: u64,
}

impl Coverage {
    fn assert_all_reached(&self) {
        let counts = [
            ("evictions", self.evictions),
            ("evictions_of_expired", self.evictions_of_expired),
            ("expirations_on_touch", self.expirations_on_touch),
            ("sweep_removed", self.sweep_removed),
            ("sweeps_cut_by_bound", self.sweeps_cut_by_bound),
            ("too_large", self.too_large),
            ("puts_at_bound", self.puts_at_bound),
            ("bytes_evictions", self.bytes_evictions),
            ("bytes_refusals", self.bytes_refusals),
            ("creates_refused", self.creates_refused),
            ("logged_in_evictions", self.logged_in_evictions),
            ("user_bound_evictions", self.user_bound_evictions),
            ("logins", self.logins),
            ("replaces", self.replaces),
            ("rotations", self.rotations),
            ("destroys", self.destroys),
            ("destroys_of_expired", self.destroys_of_expired),
            ("routed_unknown", self.routed_unknown),
            ("remote_calls", self.remote_calls),
            ("held_key_on_wrong_shard", self.held_key_on_wrong_shard),
            ("values_found", self.values_found),
            ("exact_expiry_jumps", self.exact_expiry_jumps),
        ];
        for (name, count) in counts {
            assert!(count > 0, "the simulation never reached {name}: {self:#?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The simulation.
// ---------------------------------------------------------------------------------------------

struct Sim {
    seed: u64,
    /// `SmallRng`, not `StdRng`: ChaCha in a debug build was half the run time. Both are
    /// reproducible for a given rand version and platform, which is all a failing seed needs.
    rng: SmallRng,
    now_ms: u64,
    step: usize,
    stores: Vec<Store>,
    model: Vec<ModelShard>,
    /// Every id this node ever handed out, dead or alive.
    minted: Vec<SessionId>,
    history: VecDeque<(usize, u64, Op, Outcome)>,
    coverage: Coverage,
    /// `LOGIN_SEED_ONE_IN`.
    busy_logins: bool,
}

impl Sim {
    /// `coverage` carries the counts over from earlier seeds.
    fn new(seed: u64, coverage: Coverage) -> Sim {
        Sim {
            seed,
            rng: SmallRng::seed_from_u64(seed),
            // Not zero: saturating and underflow mistakes near 0 would hide.
            now_ms: 1_700_000_000_000,
            step: 0,
            stores: (0..SHARDS).map(|_| Store::new(LIMITS)).collect(),
            model: (0..SHARDS).map(|_| ModelShard::default()).collect(),
            minted: Vec::new(),
            history: VecDeque::new(),
            coverage,
            busy_logins: seed.is_multiple_of(LOGIN_SEED_ONE_IN),
        }
    }

    fn run(&mut self, ops: usize) {
        for step in 0..ops {
            self.step = step;
            let advance_one_in = match self.busy_logins {
                true => STEP_ADVANCE_ONE_IN * 8,
                false => STEP_ADVANCE_ONE_IN,
            };
            if self.rng.random_ratio(1, advance_one_in) {
                self.now_ms += self.rng.random_range(0..=STEP_MS_MAX);
            }
            let op = self.generate();
            let (store, model) = self.apply(&op);
            self.history
                .push_back((step, self.now_ms, op.clone(), store.clone()));
            if self.history.len() > HISTORY_LEN {
                self.history.pop_front();
            }
            if store != model {
                self.fail(&format!(
                    "outcome differs\n  store: {store:?}\n  model: {model:?}"
                ));
            }
            self.check_after(&op);
        }
        for shard in 0..SHARDS {
            self.check_shard(shard, Whole::Yes);
        }
    }

    fn fail(&self, message: &str) -> ! {
        let mut history = String::new();
        for (step, now_ms, op, outcome) in &self.history {
            history.push_str(&format!("  #{step} t={now_ms} {op:?} -> {outcome:?}\n"));
        }
        panic!(
            "seed {seed}, op #{step}: {message}\nlast operations (store outcome):\n{history}\
             reproduce: SEED={seed} cargo test --test session_sim",
            seed = self.seed,
            step = self.step,
        );
    }

    fn random_key(&mut self) -> SessionKey {
        let mut key = [0u8; 16];
        self.rng.fill_bytes(&mut key);
        key
    }

    fn generate(&mut self) -> Op {
        let from = self.rng.random_range(0..SHARDS);
        let mut roll = self.rng.random_range(0..100);
        if self.busy_logins && !(14..96).contains(&roll) && self.rng.random_bool(0.9) {
            // Most of the shares of `Create` and of clock jumps go to writes (half of them
            // logins): new anonymous sessions, and jumps past every idle timeout, would
            // otherwise keep a shard from filling with logged-in ones.
            roll = 45;
        }
        match roll {
            0..14 => Op::Create {
                from,
                key: Key(self.random_key()),
            },
            14..20 => Op::TryCreate {
                from,
                key: Key(self.random_key()),
            },
            20..23 => self.generate_insert(from),
            23..33 => Op::Data {
                from,
                id: Id(self.pick_id()),
            },
            33..45 => Op::Get {
                from,
                id: Id(self.pick_id()),
                name: self.pick_name(),
            },
            45..67 => {
                let id = Id(self.pick_id());
                let name = self.pick_name();
                Op::Put {
                    from,
                    id,
                    name,
                    value: self.value_for(name),
                }
            }
            67..75 => {
                let name = if self.rng.random_bool(0.2) {
                    "zz"
                } else {
                    self.pick_name()
                };
                Op::Remove {
                    from,
                    id: Id(self.pick_id()),
                    name,
                }
            }
            75..80 => Op::Destroy {
                from,
                id: Id(self.pick_id()),
            },
            80..85 => Op::Rotate {
                from,
                id: Id(self.pick_id()),
                new_key: Key(self.random_key()),
            },
            85..87 => Op::Replace {
                from,
                id: Id(self.pick_id()),
                new_key: Key(self.random_key()),
            },
            87..96 => Op::Sweep {
                shard: self.rng.random_range(0..SHARDS),
                steps_max: self.rng.random_range(0..=SWEEP_STEPS_MAX),
            },
            _ => self.generate_jump(),
        }
    }

    /// A snapshot record: created within the lifetime, last accessed since, maybe already
    /// expired, with data that may exceed today's bytes bound (the bound may have changed).
    fn generate_insert(&mut self, from: usize) -> Op {
        let created_ms = self.now_ms - self.rng.random_range(0..=LIMITS.lifetime_ms);
        let accessed_ms = self.rng.random_range(created_ms..=self.now_ms);
        let mut data = SessionData::new();
        for _ in 0..self.rng.random_range(0..3) {
            let name = self.pick_name();
            let value = self.value_for(name);
            data.insert(name.to_string(), value);
        }
        let record = SessionRecord {
            created_ms,
            accessed_ms,
            data: stored(&data),
        };
        Op::Insert {
            from,
            key: Key(self.random_key()),
            record,
        }
    }

    /// A clock jump to just before, at or past an idle timeout or a lifetime.
    fn generate_jump(&mut self) -> Op {
        let held: Vec<(u64, u64)> = self
            .model
            .iter()
            .flat_map(|shard| shard.sessions.iter().map(|s| (s.created_ms, s.accessed_ms)))
            .collect();
        let target = if !held.is_empty() && self.rng.random_bool(0.7) {
            let (created_ms, accessed_ms) = held[self.rng.random_range(0..held.len())];
            let deadline = if self.rng.random_bool(0.5) {
                accessed_ms + LIMITS.idle_timeout_ms
            } else {
                created_ms + LIMITS.lifetime_ms
            };
            // One millisecond before the deadline, or exactly on it.
            deadline - self.rng.random_range(0..=1)
        } else {
            let span = [LIMITS.idle_timeout_ms, LIMITS.lifetime_ms][self.rng.random_range(0..2)];
            self.now_ms + span + self.rng.random_range(0..=1) - 1
        };
        Op::Jump {
            now_ms: target.max(self.now_ms),
        }
    }

    fn pick_name(&mut self) -> &'static str {
        if self.busy_logins && self.rng.random_bool(0.8) {
            return USER_VALUE;
        }
        NAMES[self.rng.random_range(0..NAMES.len())]
    }

    /// Mostly a session some shard still holds; else any id ever minted (mostly dead ones);
    /// else a garbled one.
    fn pick_id(&mut self) -> SessionId {
        let held: Vec<SessionId> = self
            .model
            .iter()
            .enumerate()
            .flat_map(|(shard, model)| {
                model.sessions.iter().map(move |s| SessionId {
                    node: NODE,
                    shard: shard as u16,
                    key: s.key,
                })
            })
            .collect();
        match self.rng.random_range(0..10) {
            0..6 if !held.is_empty() => held[self.rng.random_range(0..held.len())],
            6..8 if !self.minted.is_empty() => {
                self.minted[self.rng.random_range(0..self.minted.len())]
            }
            _ => self.garbled_id(),
        }
    }

    fn garbled_id(&mut self) -> SessionId {
        let base = if self.minted.is_empty() {
            SessionId {
                node: NODE,
                shard: 0,
                key: self.random_key(),
            }
        } else {
            self.minted[self.rng.random_range(0..self.minted.len())]
        };
        match self.rng.random_range(0..4) {
            0 => SessionId {
                node: NODE + self.rng.random_range(1..=2),
                ..base
            },
            1 => {
                let shard =
                    [SHARDS as u16, SHARDS as u16 + 1, u16::MAX][self.rng.random_range(0..3)];
                SessionId { shard, ..base }
            }
            2 => SessionId {
                key: self.random_key(),
                ..base
            },
            _ => SessionId {
                shard: (base.shard + 1) % SHARDS as u16,
                ..base
            },
        }
    }

    /// A value for `name`: for `USER_VALUE` mostly one of `USERS`, as a bare name or as auth's
    /// `{"user": NAME, ...}`, sometimes anything (a session logged in as no user).
    fn value_for(&mut self, name: &str) -> Value {
        if name != USER_VALUE {
            return self.random_value();
        }
        let user = USERS[self.rng.random_range(0..USERS.len())];
        match self.rng.random_range(0..10) {
            0..6 => json!(user),
            6..9 => json!({ "user": user, "at": self.rng.random_range(0..1000) }),
            _ => self.random_value(),
        }
    }

    /// Small JSON values of every kind, strings with characters JSON escapes, and strings long
    /// enough to hit the bytes bound alone.
    fn random_value(&mut self) -> Value {
        match self.rng.random_range(0..8) {
            0 => Value::Null,
            1 => Value::Bool(self.rng.random_bool(0.5)),
            2 => json!(self.rng.random_range(-1_000i64..1_000_000)),
            3 => json!(f64::from(self.rng.random_range(-100i32..100)) / 8.0),
            4 => json!([self.rng.random_range(0..10), "x", null]),
            5 => json!({ "id": self.rng.random_range(0..100), "tag": "t" }),
            _ => {
                const ALPHABET: [char; 6] = ['a', 'b', '"', '\\', '\n', 'é'];
                let len = self.rng.random_range(0..=70);
                let text: String = (0..len)
                    .map(|_| ALPHABET[self.rng.random_range(0..ALPHABET.len())])
                    .collect();
                Value::String(text)
            }
        }
    }

    /// Runs `op` on the stores (routed the way the server routes) and on the model.
    fn apply(&mut self, op: &Op) -> (Outcome, Outcome) {
        let now = self.now_ms;
        match op.clone() {
            Op::Create { from, key } => {
                self.minted.push(SessionId {
                    node: NODE,
                    shard: from as u16,
                    key: key.0,
                });
                let store = self.stores[from].create(key.0, now).map(Key);
                let record = SessionRecord {
                    created_ms: now,
                    accessed_ms: now,
                    data: BTreeMap::new(),
                };
                let model = self.model_insert(from, key.0, record, true);
                let model = model.expect("evicting a logged-in session makes room");
                (Outcome::Created(store), Outcome::Created(model))
            }
            Op::TryCreate { from, key } => {
                let store = self.stores[from].try_create(key.0, now);
                let record = SessionRecord {
                    created_ms: now,
                    accessed_ms: now,
                    data: BTreeMap::new(),
                };
                let model = self.model_insert(from, key.0, record, false);
                if model.is_ok() {
                    self.minted.push(SessionId {
                        node: NODE,
                        shard: from as u16,
                        key: key.0,
                    });
                } else {
                    self.coverage.creates_refused += 1;
                }
                (
                    Outcome::TryCreated(store.map(|k| k.map(Key))),
                    Outcome::TryCreated(model),
                )
            }
            Op::Insert { from, key, record } => {
                self.minted.push(SessionId {
                    node: NODE,
                    shard: from as u16,
                    key: key.0,
                });
                let store = self.stores[from]
                    .insert(key.0, record.clone(), now)
                    .map(Key);
                let model = self.model_insert(from, key.0, record, true);
                let model = model.expect("evicting a logged-in session makes room");
                (Outcome::Created(store), Outcome::Created(model))
            }
            Op::Data { from, id: Id(id) } => self.routed(
                from,
                &id,
                Outcome::Data,
                |store, key| store.data(key, now),
                |model, key| model.data(key, now),
            ),
            Op::Get {
                from,
                id: Id(id),
                name,
            } => {
                let (store, model) = self.routed(
                    from,
                    &id,
                    Outcome::Value,
                    |store, key| store.get(key, name, now),
                    |model, key| model.get(key, name, now),
                );
                if matches!(model, Outcome::Value(Ok(Some(_)))) {
                    self.coverage.values_found += 1;
                }
                (store, model)
            }
            Op::Put {
                from,
                id: Id(id),
                name,
                value,
            } => {
                let bytes_before = self.held(&id).map(|s| s.bytes);
                let user_before = self.held(&id).and_then(|s| s.user().map(str::to_string));
                let evictions = |sim: &Sim| -> u64 {
                    sim.model
                        .iter()
                        .map(|m| m.counters.evictions - m.user_bound_evictions)
                        .sum()
                };
                let evictions_before = evictions(self);
                let candidate = value.clone();
                let (store, model) = self.routed(
                    from,
                    &id,
                    Outcome::Put,
                    |store, key| store.put(key, name, value.clone(), now),
                    |model, key| model.put(key, name, candidate, now),
                );
                if evictions(self) > evictions_before {
                    self.coverage.bytes_evictions += 1;
                }
                let user = self.held(&id).and_then(|s| s.user().map(str::to_string));
                if name == USER_VALUE && user.is_some() && user != user_before {
                    self.coverage.logins += 1;
                }
                match model {
                    Outcome::Put(Err(StoreError::TooLarge)) => self.coverage.too_large += 1,
                    Outcome::Put(Err(StoreError::Full)) => self.coverage.bytes_refusals += 1,
                    Outcome::Put(Ok(()))
                        if bytes_before.is_some()
                            && self.held(&id).map(|s| s.bytes)
                                == Some(LIMITS.session_bytes_max) =>
                    {
                        self.coverage.puts_at_bound += 1
                    }
                    _ => {}
                }
                (store, model)
            }
            Op::Remove {
                from,
                id: Id(id),
                name,
            } => self.routed(
                from,
                &id,
                Outcome::Done,
                |store, key| store.remove_value(key, name, now),
                |model, key| model.remove_value(key, name, now),
            ),
            Op::Destroy { from, id: Id(id) } => {
                let held_expired = self.held(&id).is_some_and(|s| model_expired(s, now));
                let (store, model) = self.routed(
                    from,
                    &id,
                    Outcome::Done,
                    |store, key| Ok(store.destroy(key, now)),
                    |model, key| Ok(model.destroy(key, now)),
                );
                if model == Outcome::Done(Ok(true)) {
                    self.coverage.destroys += 1;
                }
                if held_expired && model == Outcome::Done(Ok(false)) {
                    self.coverage.destroys_of_expired += 1;
                }
                (store, model)
            }
            Op::Rotate {
                from,
                id: Id(id),
                new_key,
            } => {
                let (store, model) = self.routed(
                    from,
                    &id,
                    Outcome::Rotated,
                    |store, key| store.rotate(key, new_key.0, now),
                    |model, key| model.rotate(key, new_key.0, now),
                );
                if self.moved_to(&model, id, new_key) {
                    self.coverage.rotations += 1;
                }
                (store, model)
            }
            Op::Replace {
                from,
                id: Id(id),
                new_key,
            } => {
                let (store, model) = self.routed(
                    from,
                    &id,
                    Outcome::Rotated,
                    |store, key| store.replace(key, new_key.0, now),
                    |model, key| model.replace(key, new_key.0, now),
                );
                if self.moved_to(&model, id, new_key) {
                    self.coverage.replaces += 1;
                }
                (store, model)
            }
            Op::Sweep { shard, steps_max } => {
                let store = self.stores[shard].sweep(now, steps_max);
                let model = self.model[shard].sweep(now, steps_max);
                self.coverage.sweep_removed += model as u64;
                let expired_left = self.model[shard]
                    .sessions
                    .iter()
                    .any(|s| model_expired(s, now));
                if model == steps_max && expired_left {
                    self.coverage.sweeps_cut_by_bound += 1;
                }
                if model < steps_max && expired_left {
                    self.fail(
                        "model: a sweep with steps left stopped while expired sessions remain",
                    );
                }
                (Outcome::Swept(store), Outcome::Swept(model))
            }
            Op::Jump { now_ms } => {
                let expiry_exact = self.model.iter().flat_map(|m| &m.sessions).any(|s| {
                    now_ms == s.accessed_ms + LIMITS.idle_timeout_ms
                        || now_ms == s.created_ms + LIMITS.lifetime_ms
                });
                if expiry_exact {
                    self.coverage.exact_expiry_jumps += 1;
                }
                self.now_ms = now_ms;
                (Outcome::Jumped, Outcome::Jumped)
            }
        }
    }

    /// After a rotation or a replace: when the model's `outcome` says the session moved to
    /// `new_key`, the new id is minted (later ops may pick it); whether it moved.
    fn moved_to(&mut self, outcome: &Outcome, id: SessionId, new_key: Key) -> bool {
        let moved = *outcome == Outcome::Rotated(Ok(()));
        if moved {
            self.minted.push(SessionId {
                key: new_key.0,
                ..id
            });
        }
        moved
    }

    fn model_insert(
        &mut self,
        shard: usize,
        key: SessionKey,
        record: SessionRecord,
        evict_logged_in: bool,
    ) -> Result<Option<Key>, StoreError> {
        let now = self.now_ms;
        let model = &mut self.model[shard];
        if model.sessions.len() >= LIMITS.sessions_max {
            self.coverage.evictions += 1;
            // With an expired session present the bound reclaims it instead of evicting.
            if model.sessions.iter().any(|s| model_expired(s, now)) {
                self.coverage.evictions_of_expired += 1;
            }
        }
        model
            .insert(key, record, now, evict_logged_in)
            .map(|evicted| evicted.map(Key))
    }

    /// The model's session `id` routes to, live or expired.
    fn held(&self, id: &SessionId) -> Option<&ModelSession> {
        let model = &self.model[model_owner(id)?];
        model.find(&id.key).map(|i| &model.sessions[i])
    }

    /// Routes an id-addressed operation as the server does: the store side by
    /// `SessionId::owner`, the model side by its own rule; no owner is Unknown on both.
    fn routed<T>(
        &mut self,
        from: usize,
        id: &SessionId,
        wrap: fn(Result<T, StoreError>) -> Outcome,
        on_store: impl FnOnce(&mut Store, &SessionKey) -> Result<T, StoreError>,
        on_model: impl FnOnce(&mut ModelShard, &SessionKey) -> Result<T, StoreError>,
    ) -> (Outcome, Outcome) {
        let store = match id.owner(NODE, SHARDS) {
            Some(owner) => on_store(&mut self.stores[owner], &id.key),
            None => Err(StoreError::Unknown),
        };
        let model = match model_owner(id) {
            Some(owner) => {
                if owner != from {
                    self.coverage.remote_calls += 1;
                }
                let expirations = self.model[owner].counters.expirations;
                let held_elsewhere = self
                    .model
                    .iter()
                    .enumerate()
                    .any(|(shard, m)| shard != owner && m.find(&id.key).is_some());
                if held_elsewhere {
                    self.coverage.held_key_on_wrong_shard += 1;
                }
                let result = on_model(&mut self.model[owner], &id.key);
                if self.model[owner].counters.expirations > expirations {
                    self.coverage.expirations_on_touch += 1;
                }
                result
            }
            None => {
                self.coverage.routed_unknown += 1;
                Err(StoreError::Unknown)
            }
        };
        (wrap(store), wrap(model))
    }

    fn check_after(&mut self, op: &Op) {
        let touched = match op {
            Op::Create { from, .. } | Op::TryCreate { from, .. } | Op::Insert { from, .. } => {
                Some(*from)
            }
            Op::Data { id, .. }
            | Op::Get { id, .. }
            | Op::Put { id, .. }
            | Op::Remove { id, .. }
            | Op::Destroy { id, .. }
            | Op::Rotate { id, .. }
            | Op::Replace { id, .. } => model_owner(&id.0),
            Op::Sweep { shard, .. } => Some(*shard),
            Op::Jump { .. } => None,
        };
        let whole = self.step.is_multiple_of(WHOLE_CHECK_EVERY);
        for shard in 0..SHARDS {
            if whole {
                self.check_shard(shard, Whole::Yes);
            } else if touched == Some(shard) {
                self.check_shard(shard, Whole::No);
            }
        }
    }

    /// The observables of one shard: size, bytes and counters; with `Whole::Yes` also every
    /// held key, and the live records with their times and data.
    fn check_shard(&self, shard: usize, whole: Whole) {
        let store = &self.stores[shard];
        let model = &self.model[shard];
        let check = |what: &str, same: bool, store: &dyn fmt::Debug, model: &dyn fmt::Debug| {
            if !same {
                self.fail(&format!(
                    "shard {shard}: {what} differs\n  store: {store:?}\n  model: {model:?}"
                ));
            }
        };
        check(
            "len",
            store.len() == model.sessions.len(),
            &store.len(),
            &model.sessions.len(),
        );
        check(
            "is_empty",
            store.is_empty() == model.sessions.is_empty(),
            &store.is_empty(),
            &model.sessions.is_empty(),
        );
        check(
            "bytes",
            store.bytes() == model.bytes(),
            &store.bytes(),
            &model.bytes(),
        );
        check(
            "counters",
            store.counters == model.counters,
            &store.counters,
            &model.counters,
        );
        if whole == Whole::No {
            return;
        }
        for session in &model.sessions {
            let held = store.contains(&session.key);
            check("held keys", held, &Key(session.key), &"held by the model");
            let user = store.user(&session.key);
            check("user", user == session.user(), &user, &session.user());
        }
        let store_live: BTreeMap<SessionKey, SessionRecord> = store
            .records(self.now_ms)
            .map(|(k, r)| (*k, r.clone()))
            .collect();
        let model_live = model.live_records(self.now_ms);
        if store_live != model_live {
            let show = |live: &BTreeMap<SessionKey, SessionRecord>| -> Vec<String> {
                live.iter()
                    .map(|(k, r)| format!("{:?} {r:?}", Key(*k)))
                    .collect()
            };
            check(
                "live records",
                false,
                &show(&store_live),
                &show(&model_live),
            );
        }
        // The model's own invariant: the bound holds.
        assert!(model.sessions.len() <= LIMITS.sessions_max);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Whole {
    Yes,
    No,
}

fn seeds() -> Vec<u64> {
    match std::env::var("SEED") {
        Ok(text) => vec![text.parse().expect("SEED must be an unsigned integer")],
        Err(_) => (0..SEEDS).collect(),
    }
}

#[test]
fn session_store_matches_model() {
    let mut total = Coverage::default();
    let seeds = seeds();
    for &seed in &seeds {
        let mut sim = Sim::new(seed, total);
        sim.run(OPS_PER_SEED);
        for model in &sim.model {
            sim.coverage.logged_in_evictions += model.logged_in_evictions;
            sim.coverage.user_bound_evictions += model.user_bound_evictions;
        }
        total = sim.coverage;
    }
    if seeds.len() > 1 {
        total.assert_all_reached();
    }
    if std::env::var("SIM_COVERAGE").is_ok() {
        eprintln!("{total:#?}");
    }
}
