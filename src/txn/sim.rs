//! Deterministic, seeded simulation of the transaction protocol across shards (tests only): a fake network that delays, reorders and drops, logs that lose what was not synced and tear their tail, crashes and recoveries at random points, checkpoints; never uses real time, threads or IO.
//!
//! Workload: bank transfers (`add` with floor 0 on one account, `add` on another, and a unique
//! marker key, usually on three different shards), reads of every account in one transaction,
//! and single-key reads. Checked: every read sees the initial total and no negative balance;
//! at the end, every acknowledged commit is present and every acknowledged abort absent (by its
//! marker), balances equal the initial ones plus exactly the transfers whose marker exists
//! (atomicity across shards), every client not lost in a crash got exactly one reply, nothing is
//! left locked or undecided, and each shard's durable log rebuilds its in-memory state.
//!
//! Checkpoints are taken with records still unsynced (as the service takes them) and right after a
//! restart; a crash may have synced a prefix of the pending records without their waiters hearing
//! of it; crashes go on after the load ends.
//!
//! `SEED=n cargo test sim` runs one seed; `SIM_SEEDS=n` sets how many the default run covers.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::txn::TxnLimits;
use crate::txn::op::{Op, OpResult, TxError, owner};
use crate::txn::record::{self, Record, TailReason};
use crate::txn::twopc::{Action, ClientId, Event, Msg, Node, Outcome, Then};

const ACCOUNTS: usize = 8;
const BALANCE_INITIAL: i64 = 100;
const LOAD_STEPS: u64 = 400;
const STEPS_MAX: u64 = 20_000;
const TICK_EVERY_MS: u64 = 5;

#[derive(Clone, Debug)]
enum Kind {
    Transfer { from: usize, to: usize, amount: i64 },
    ReadAll,
    ReadOne,
}

struct Client {
    kind: Kind,
    shard: usize,
    outcome: Option<Outcome>,
    lost: bool,
}

struct Shard {
    node: Option<Node>,
    /// Bytes that survived every crash so far.
    log: Vec<u8>,
    snapshot: Option<Vec<u8>>,
    /// Appended but not yet durable: lost on a crash.
    pending: Vec<(Option<Record>, Then)>,
    /// Snapshots taken while records were pending: (pending index at which it lands, bytes).
    snaps: Vec<(usize, Vec<u8>)>,
    down_until_ms: u64,
}

struct InFlight {
    from: usize,
    to: usize,
    msg: Msg,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    now_ms: u64,
    limits: TxnLimits,
    shards: Vec<Shard>,
    /// (deliver at ms, send sequence) -> message: differing delays reorder messages.
    network: BTreeMap<(u64, u64), InFlight>,
    sent: u64,
    clients: BTreeMap<ClientId, Client>,
    crashes: u64,
    /// Staged transactions resolved by probing, by nodes that crashed since: (committed, aborted).
    probed_before_crashes: (u64, u64),
    /// Runs and prepares refused at their expiry, by nodes that crashed since.
    expired_before_crashes: (u64, u64),
    checkpoints: u64,
    torn: u64,
    /// Per step and shard: chance of a group commit (low values keep records volatile longer).
    sync_probability: f64,
    /// Per step: chance of a crash while the load runs.
    crash_probability: f64,
}

fn account(index: usize) -> Bytes {
    Bytes::from(format!("acct{index}"))
}

fn marker(client: ClientId) -> Bytes {
    Bytes::from(format!("t/{client}"))
}

fn integer(value: &[u8]) -> i64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .expect("balances are integers")
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let shard_count = rng.random_range(2..=4);
        let limits = TxnLimits {
            prepare_timeout_ms: 50,
            resolve_interval_ms: 20,
            prepared_max: 16,
            coordinated_max: 16,
            ..TxnLimits::default()
        };
        let mut shards: Vec<Shard> = (0..shard_count)
            .map(|_| Shard {
                node: None,
                log: Vec::new(),
                snapshot: None,
                pending: Vec::new(),
                snaps: Vec::new(),
                down_until_ms: 0,
            })
            .collect();
        // The initial balances: one durable commit per shard.
        for (index, shard) in shards.iter_mut().enumerate() {
            let writes: Vec<_> = (0..ACCOUNTS)
                .map(account)
                .filter(|key| owner(key, shard_count) == index)
                .map(|key| (key, Some(Bytes::from(BALANCE_INITIAL.to_string()))))
                .collect();
            if !writes.is_empty() {
                let commit = Record::Commit {
                    tx: None,
                    version: 1,
                    writes,
                };
                record::encode(&commit, &mut shard.log);
            }
        }
        let mut sim = Sim {
            seed,
            rng,
            now_ms: 0,
            limits,
            shards,
            network: BTreeMap::new(),
            sent: 0,
            clients: BTreeMap::new(),
            crashes: 0,
            probed_before_crashes: (0, 0),
            expired_before_crashes: (0, 0),
            checkpoints: 0,
            torn: 0,
            sync_probability: 0.0,
            crash_probability: 0.0,
        };
        sim.sync_probability = sim.rng.random_range(0.03..0.5);
        sim.crash_probability = sim.rng.random_range(0.001..0.01);
        (0..shard_count).for_each(|shard| sim.recover(shard));
        sim
    }

    fn run(&mut self) {
        let shard_count = self.shards.len();
        for step in 0..STEPS_MAX {
            self.now_ms += 1;
            let loading = step < LOAD_STEPS;
            if loading && self.rng.random_bool(0.3) {
                self.begin();
            }
            self.deliver();
            for shard in 0..shard_count {
                if self.shards[shard].node.is_some() && self.rng.random_bool(0.01) {
                    self.checkpoint(shard);
                }
                if self.shards[shard].node.is_some() && self.rng.random_bool(self.sync_probability)
                {
                    self.sync(shard);
                    if self.rng.random_bool(0.02) {
                        self.checkpoint(shard);
                    }
                }
                if self.now_ms.is_multiple_of(TICK_EVERY_MS) {
                    self.event(shard, Event::Tick);
                }
                let down = self.shards[shard].node.is_none();
                if down && self.shards[shard].down_until_ms <= self.now_ms {
                    self.recover(shard);
                }
            }
            if step < LOAD_STEPS * 4 && self.rng.random_bool(self.crash_probability) {
                let shard = self.rng.random_range(0..shard_count);
                self.crash(shard);
            }
            if !loading && self.quiet() {
                return;
            }
        }
        panic!("not resolved after {STEPS_MAX} steps: {}", self.open_work());
    }

    fn begin(&mut self) {
        let shard = self.rng.random_range(0..self.shards.len());
        if self.shards[shard].node.is_none() {
            return;
        }
        let client = self.clients.len() as ClientId;
        let (kind, ops) = match self.rng.random_range(0..10) {
            0..6 => {
                let from = self.rng.random_range(0..ACCOUNTS);
                let to = (from + self.rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
                let amount = self.rng.random_range(1..=60);
                let ops = vec![
                    Op::Add {
                        key: account(from),
                        delta: -amount,
                        floor: Some(0),
                    },
                    Op::Add {
                        key: account(to),
                        delta: amount,
                        floor: None,
                    },
                    Op::Put {
                        key: marker(client),
                        value: Bytes::from_static(b"1"),
                    },
                ];
                (Kind::Transfer { from, to, amount }, ops)
            }
            6..9 => {
                let ops = (0..ACCOUNTS).map(|i| Op::Get { key: account(i) }).collect();
                (Kind::ReadAll, ops)
            }
            _ => {
                let key = account(self.rng.random_range(0..ACCOUNTS));
                (Kind::ReadOne, vec![Op::Get { key }])
            }
        };
        let record = Client {
            kind,
            shard,
            outcome: None,
            lost: false,
        };
        self.clients.insert(client, record);
        self.event(shard, Event::Begin { client, ops });
    }

    fn event(&mut self, shard: usize, event: Event) {
        let now_ms = self.now_ms;
        let Some(node) = self.shards[shard].node.as_mut() else {
            return;
        };
        let actions = node.on_event(event, now_ms);
        self.execute(shard, actions);
    }

    fn execute(&mut self, shard: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, msg } => {
                    if self.rng.random_bool(0.02) {
                        continue; // lost, like a mesh call that timed out
                    }
                    // Now and then past the prepare timeout (50 ms), as a peer that stalls
                    // delays them: runs and prepares then arrive expired, votes and decisions
                    // after the coordinator gave up.
                    let delay = match self.rng.random_bool(0.02) {
                        true => self.rng.random_range(30..=120),
                        false => self.rng.random_range(1..=10),
                    };
                    let at = self.now_ms + delay;
                    self.sent += 1;
                    let message = InFlight {
                        from: shard,
                        to,
                        msg,
                    };
                    self.network.insert((at, self.sent), message);
                }
                Action::Persist { record, then } => {
                    self.shards[shard].pending.push((record, then));
                }
                Action::Reply { client, outcome } => self.reply(client, outcome),
            }
        }
    }

    fn deliver(&mut self) {
        while let Some(entry) = self.network.first_entry() {
            if entry.key().0 > self.now_ms {
                return;
            }
            let InFlight { from, to, msg } = entry.remove();
            self.event(to, Event::Receive { from, msg });
        }
    }

    /// Group commit: every pending record becomes durable, then each waiter hears of it in order.
    fn sync(&mut self, shard: usize) {
        let pending = std::mem::take(&mut self.shards[shard].pending);
        let snaps = std::mem::take(&mut self.shards[shard].snaps);
        self.make_durable(shard, &pending, &snaps, pending.len());
        for (_, then) in pending {
            self.event(shard, Event::Durable(then));
        }
    }

    /// The first `upto` pending records (and snapshots placed among them) reach the disk.
    fn make_durable(
        &mut self,
        shard: usize,
        pending: &[(Option<Record>, Then)],
        snaps: &[(usize, Vec<u8>)],
        upto: usize,
    ) {
        for i in 0..=upto {
            for (at, bytes) in snaps {
                if *at == i {
                    self.shards[shard].snapshot = Some(bytes.clone());
                    self.shards[shard].log.clear();
                    self.checkpoints += 1;
                }
            }
            if let Some((Some(record), _)) = pending[..upto].get(i) {
                record::encode(record, &mut self.shards[shard].log);
            }
        }
    }

    fn checkpoint(&mut self, shard: usize) {
        let state = &mut self.shards[shard];
        let Some(node) = &state.node else { return };
        let mut bytes = Vec::new();
        node.snapshot()
            .iter()
            .for_each(|record| record::encode(record, &mut bytes));
        let at = state.pending.len();
        state.snaps.push((at, bytes));
    }

    fn crash(&mut self, shard: usize) {
        let Some(node) = self.shards[shard].node.take() else {
            return;
        };
        self.crashes += 1;
        self.probed_before_crashes.0 += node.counters.probe_committed;
        self.probed_before_crashes.1 += node.counters.probe_aborted;
        self.expired_before_crashes.0 += node.counters.runs_expired;
        self.expired_before_crashes.1 += node.counters.prepares_expired;
        let mut pending = std::mem::take(&mut self.shards[shard].pending);
        let snaps = std::mem::take(&mut self.shards[shard].snaps);
        // Sometimes a prefix was synced but its waiters never heard of it.
        if !pending.is_empty() && self.rng.random_bool(0.3) {
            let upto = self.rng.random_range(0..=pending.len());
            self.make_durable(shard, &pending, &snaps, upto);
            pending.drain(..upto);
        }
        // Half the time the first unsynced record was partly written: a torn tail.
        if let Some(record) = pending.iter().find_map(|(record, _)| record.as_ref())
            && self.rng.random_bool(0.5)
        {
            let mut bytes = Vec::new();
            record::encode(record, &mut bytes);
            let cut = self.rng.random_range(1..bytes.len());
            self.shards[shard].log.extend_from_slice(&bytes[..cut]);
            self.torn += 1;
        }
        self.shards[shard].down_until_ms = self.now_ms + self.rng.random_range(5..100);
        for client in self.clients.values_mut() {
            if client.shard == shard && client.outcome.is_none() {
                client.lost = true;
            }
        }
    }

    /// The records a restart reads: the snapshot, then the log cut at its torn tail.
    fn durable_records(&mut self, shard: usize) -> Vec<Record> {
        let state = &mut self.shards[shard];
        let mut records = match &state.snapshot {
            Some(bytes) => record::read_snapshot(bytes).expect("a complete snapshot"),
            None => Vec::new(),
        };
        let scan = record::scan(&state.log);
        if let Some(tail) = &scan.tail {
            assert_eq!(
                tail.reason,
                TailReason::Torn,
                "only torn tails are simulated"
            );
            state.log.truncate(scan.valid_bytes);
        }
        records.extend(scan.records);
        records
    }

    fn recover(&mut self, shard: usize) {
        let records = self.durable_records(shard);
        let shard_count = self.shards.len();
        let (node, actions) = Node::recover(shard, shard_count, self.limits, &records, self.now_ms);
        self.shards[shard].node = Some(node);
        self.execute(shard, actions);
        if !records.is_empty() && self.rng.random_bool(0.5) {
            self.checkpoint(shard);
        }
    }

    fn reply(&mut self, client: ClientId, outcome: Outcome) {
        let entry = self
            .clients
            .get_mut(&client)
            .expect("a reply to a known client");
        assert!(!entry.lost, "reply to client {client} whose shard crashed");
        assert!(entry.outcome.is_none(), "second reply to client {client}");
        check_reply(&entry.kind, &outcome);
        entry.outcome = Some(outcome);
    }

    fn quiet(&self) -> bool {
        self.network.is_empty()
            && self.shards.iter().all(|shard| {
                shard.pending.is_empty()
                    && shard.snaps.is_empty()
                    && shard.node.as_ref().is_some_and(Node::is_quiet)
            })
            && self
                .clients
                .values()
                .all(|client| client.lost || client.outcome.is_some())
    }

    fn open_work(&self) -> String {
        let waiting: Vec<_> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.lost && c.outcome.is_none())
            .map(|(id, _)| *id)
            .collect();
        let shards: Vec<_> = self
            .shards
            .iter()
            .map(|shard| {
                let node = shard.node.as_ref();
                let prepared: Vec<_> = node
                    .map(|n| n.partition.prepared().collect())
                    .unwrap_or_default();
                (node.map(Node::is_quiet), prepared, shard.pending.len())
            })
            .collect();
        format!(
            "clients waiting {waiting:?}; shards (quiet, prepared, pending) {shards:?}; {} in flight",
            self.network.len()
        )
    }

    /// Staged transactions resolved by probing, over every incarnation: (committed, aborted).
    fn expired(&self) -> (u64, u64) {
        let nodes = self.shards.iter().filter_map(|shard| shard.node.as_ref());
        nodes.fold(self.expired_before_crashes, |(runs, prepares), node| {
            (
                runs + node.counters.runs_expired,
                prepares + node.counters.prepares_expired,
            )
        })
    }

    fn probed(&self) -> (u64, u64) {
        let nodes = self.shards.iter().filter_map(|shard| shard.node.as_ref());
        nodes.fold(self.probed_before_crashes, |(c, a), node| {
            (
                c + node.counters.probe_committed,
                a + node.counters.probe_aborted,
            )
        })
    }

    /// The end state, checked against every acknowledged outcome.
    fn check_final(&mut self) {
        let mut data = BTreeMap::new();
        for shard in 0..self.shards.len() {
            let node = self.shards[shard].node.as_ref().expect("all up at the end");
            let memory: Vec<_> = node
                .partition
                .entries()
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect();
            assert_eq!(
                node.partition.prepared().count(),
                0,
                "shard {shard} holds locks"
            );
            // Durability: the durable records rebuild exactly what the shard serves.
            let records = self.durable_records(shard);
            let rebuilt = Node::recover(shard, self.shards.len(), self.limits, &records, 0).0;
            let durable: Vec<_> = rebuilt
                .partition
                .entries()
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect();
            assert_eq!(
                memory, durable,
                "shard {shard}: memory and durable log differ"
            );
            data.extend(memory);
        }
        let mut balances = [BALANCE_INITIAL; ACCOUNTS];
        for (id, client) in &self.clients {
            let Kind::Transfer { from, to, amount } = client.kind else {
                continue;
            };
            let present = data.contains_key(&marker(*id));
            match &client.outcome {
                Some(Ok(_)) => assert!(present, "acknowledged transfer {id} lost"),
                Some(Err(TxError::Unknown)) | None => {}
                Some(Err(error)) => {
                    assert!(!present, "transfer {id} answered {error:?} but applied")
                }
            }
            if present {
                balances[from] -= amount;
                balances[to] += amount;
            }
        }
        for (index, want) in balances.iter().enumerate() {
            let have = data.get(&account(index)).map(|e| integer(&e.value));
            assert_eq!(
                have,
                Some(*want),
                "account {index}: balance is not initial + applied transfers"
            );
        }
    }
}

/// Invariants every acknowledged answer must keep.
fn check_reply(kind: &Kind, outcome: &Outcome) {
    let results = match outcome {
        Ok(results) => results,
        Err(TxError::Failed { op_index, .. }) => {
            assert!(
                matches!(kind, Kind::Transfer { .. }) && *op_index == 0,
                "{kind:?}: {outcome:?}"
            );
            return;
        }
        Err(_) => return,
    };
    let balance = |result: &OpResult| match result {
        OpResult::Get(Some((value, _))) => integer(value),
        OpResult::Add { value, .. } => *value,
        other => panic!("{kind:?}: unexpected result {other:?}"),
    };
    match kind {
        Kind::Transfer { .. } => {
            assert!(balance(&results[0]) >= 0, "negative balance: {results:?}")
        }
        Kind::ReadOne => assert!(balance(&results[0]) >= 0, "negative balance: {results:?}"),
        Kind::ReadAll => {
            let balances: Vec<i64> = results.iter().map(balance).collect();
            assert!(
                balances.iter().all(|&b| b >= 0),
                "negative balance: {balances:?}"
            );
            let total: i64 = balances.iter().sum();
            assert_eq!(
                total,
                BALANCE_INITIAL * ACCOUNTS as i64,
                "a read saw a partial transfer: {balances:?}"
            );
        }
    }
}

struct Summary {
    committed: usize,
    crashes: u64,
    checkpoints: u64,
    torn: u64,
    multi_shard_commits: usize,
}

fn run_seed(seed: u64) -> Summary {
    let mut sim = Sim::new(seed);
    sim.run();
    sim.check_final();
    let committed = sim
        .clients
        .values()
        .filter(|c| matches!(c.outcome, Some(Ok(_))))
        .count();
    let multi_shard_commits = sim
        .shards
        .iter()
        .filter_map(|shard| shard.node.as_ref())
        .map(|node| node.counters.committed as usize)
        .sum();
    let _ = sim.seed;
    Summary {
        committed,
        crashes: sim.crashes,
        checkpoints: sim.checkpoints,
        torn: sim.torn,
        multi_shard_commits,
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|text| text.parse().expect("a number"))
}

#[test]
fn simulate_two_phase_commit() {
    let one_seed = env_u64("SEED");
    let seeds: Vec<u64> = match one_seed {
        Some(seed) => vec![seed],
        None => (0..env_u64("SIM_SEEDS").unwrap_or(400)).collect(),
    };
    let mut totals = (0, 0, 0, 0, 0);
    for seed in seeds {
        let result = std::panic::catch_unwind(|| run_seed(seed));
        let Ok(summary) = result else {
            panic!("simulation failed; reproduce with SEED={seed} cargo test simulate");
        };
        totals.0 += summary.committed;
        totals.1 += summary.crashes;
        totals.2 += summary.checkpoints;
        totals.3 += summary.torn;
        totals.4 += summary.multi_shard_commits;
    }
    let (committed, crashes, checkpoints, torn, multi) = totals;
    println!(
        "committed {committed} (multi-shard {multi}), crashes {crashes}, torn tails {torn}, checkpoints {checkpoints}"
    );
    if one_seed.is_none() {
        assert!(committed > 0 && multi > 0 && crashes > 0 && checkpoints > 0 && torn > 0);
    }
}

/// Exercised paths the random runs must reach, so the simulation cannot pass by doing nothing.
#[test]
fn simulation_reaches_the_interesting_paths() {
    let mut seen = BTreeSet::new();
    for seed in 0..20 {
        let mut sim = Sim::new(seed);
        sim.run();
        let (probe_committed, probe_aborted) = sim.probed();
        if probe_committed > 0 {
            seen.insert("probe committed");
        }
        if probe_aborted > 0 {
            seen.insert("probe aborted");
        }
        let (runs_expired, prepares_expired) = sim.expired();
        if runs_expired > 0 {
            seen.insert("run expired");
        }
        if prepares_expired > 0 {
            seen.insert("prepare expired");
        }
        for client in sim.clients.values() {
            let name = match &client.outcome {
                Some(Ok(_)) => "committed",
                Some(Err(TxError::Failed { .. })) => "failed",
                Some(Err(TxError::Conflict)) => "conflict",
                Some(Err(TxError::Unavailable)) => "unavailable",
                Some(Err(TxError::Busy)) => "busy",
                Some(Err(TxError::Unknown)) => "unknown",
                Some(Err(TxError::Full)) => "full",
                Some(Err(TxError::TooLarge)) => "too large",
                // The simulated log never fails.
                Some(Err(TxError::LogFailed)) => "log failed",
                None => "lost",
            };
            seen.insert(name);
        }
    }
    let names = [
        "committed",
        "failed",
        "conflict",
        "unavailable",
        "lost",
        "probe committed",
        "probe aborted",
        "run expired",
        "prepare expired",
    ];
    for name in names {
        assert!(
            seen.contains(name),
            "no {name} outcome in 20 seeds: {seen:?}"
        );
    }
}
