//! Two-phase commit as pure state machines: a shard's `Node` (its partition, its coordinator and its participant) takes events (client requests, messages, durable records, ticks) with the time, and returns actions (send, persist-then-tell-me, reply); never does IO, never waits, never reads a clock.
//!
//! Protocol (parallel commit, presumed abort, no waiting on locks):
//! 1. The shard that receives a transaction splits its ops by `owner`. All on this shard: run in
//!    one step (`Partition::run_local`), reply once the record is durable. All on one other shard:
//!    forward it (`Run`), relay the `RunResult`. Several shards: if its own part meets a lock,
//!    the coordinator answers 409 at once (nothing staged or sent); otherwise it sends `Prepare`
//!    and, at the same time, appends a `Staging` record naming the participants.
//! 2. A participant locks and validates its part; a conflict, failed check or bound votes no at
//!    once (nothing to undo, and it never prepares that transaction later: a `Prepare` is sent
//!    once); otherwise it makes its `Prepare` record durable, then votes yes.
//! 3. The commit point is "every participant's `Prepare` is durable": once every vote is yes and
//!    the `Staging` record is durable, the coordinator replies to the client, so a transaction
//!    costs one round of log syncs (the participants' and the coordinator's in parallel), not
//!    two. It then appends a commit `Decision` and, right behind it, applies its own part (its
//!    locks go at once; log order makes that safe: nothing after the decision is durable before
//!    it). Other participants hear `Decide(commit)` only once the decision is durable, so no
//!    participant applies, and later forgets, a transaction whose outcome lives only in the
//!    other participants' logs.
//! 4. Any no: the coordinator sends `Decide(abort)`, replies and forgets (a lazy `End` spares a
//!    restart the question below; the no voter never prepares, so the answer would be abort).
//!    No vote before `prepare_timeout_ms`, or a participant asking about a transaction still
//!    preparing: every yes may yet arrive, so the abort `Decision` is made durable first, then
//!    sent and replied.
//! 5. A participant applies on commit, makes its `Commit` durable, and acks; the coordinator
//!    resends `Decide(commit)` every `resolve_interval_ms` until every other participant acked,
//!    then writes `End` and forgets.
//! 6. A prepared participant that hears nothing for `prepare_timeout_ms`, or finds the
//!    transaction in doubt after a restart, asks `Status` every `resolve_interval_ms`. The
//!    coordinator answers from its durable decisions, and one it knows nothing of (it never
//!    staged it durably, or forgot an abort) is an abort.
//! 7. A restarted coordinator with a `Staging` record and no decision asks every participant
//!    `Probe`: a participant answers `prepared` only once its `Prepare` is durable. All prepared:
//!    commit `Decision`; any not: abort `Decision`; either is durable before anyone hears it.
//!
//! Driving it: the IO layer sends each `Action::Send` as a one-way mesh message (a lost or timed
//! out message needs no handling: timeouts and resends above cover it; a send to this shard is
//! handled in place; never resend a message: the protocol resends what must be resent), appends each `Action::Persist` record to the log and, once a group commit
//! made the log durable through it, feeds `Event::Durable(then)` back in log order (a `None`
//! record is a barrier: durable through everything appended before it). It calls `Event::Tick`
//! every few tens of milliseconds. After a restart `Node::recover` replays the snapshot and log
//! records; the node answers `Busy` until its epoch record is durable.

use std::collections::{BTreeMap, BTreeSet};

use crate::txn::TxnLimits;
use crate::txn::op::{Op, OpResult, TxError, owner};
use crate::txn::partition::Partition;
use crate::txn::record::{Record, TxId, snapshot_close};

/// The IO layer's handle for a waiting client request.
pub type ClientId = u64;

pub type Outcome = Result<Vec<OpResult>, TxError>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// A single-shard transaction forwarded to its owner, to run if it arrives before
    /// `expires_ms` (the coordinator's deadline for it, on the monotonic clock every shard
    /// shares: `runtime::monotonic_ms`), else refused unrun: the coordinator has
    /// answered its client `Unknown` by then, and a run applied after that answer could land
    /// after the client's next write (found in review).
    Run {
        tx: TxId,
        ops: Vec<Op>,
        expires_ms: u64,
    },
    RunResult {
        tx: TxId,
        outcome: Outcome,
    },
    /// A participant's ops, with their indices in the client's transaction, to prepare if it
    /// arrives before `expires_ms` (the coordinator's deadline for its votes, as `Run`'s), else
    /// refused unprepared with a no vote: by then the coordinator aborts on its own. Without
    /// it a participant stopped for a while prepared every stale one it then read, each a log
    /// write and locks that made others conflict (found in review: 2,500 after a 36 s stall).
    Prepare {
        tx: TxId,
        ops: Vec<(usize, Op)>,
        expires_ms: u64,
    },
    Vote {
        tx: TxId,
        vote: Result<Vec<(usize, OpResult)>, TxError>,
    },
    Decide {
        tx: TxId,
        commit: bool,
    },
    Ack {
        tx: TxId,
    },
    Status {
        tx: TxId,
    },
    /// A restarted coordinator asks whether this participant's `Prepare` of `tx` is durable.
    Probe {
        tx: TxId,
    },
    Probed {
        tx: TxId,
        prepared: bool,
    },
    /// The coordinator's log failed (`Node::fail_log`): `tx` stays in doubt until it restarts,
    /// and so do the keys a participant locked for it.
    Stuck {
        tx: TxId,
    },
}

/// What to do once a persisted record is durable; handed back in `Event::Durable`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Then {
    Reply {
        client: ClientId,
        outcome: Outcome,
    },
    RunResult {
        to: usize,
        tx: TxId,
        outcome: Outcome,
    },
    Vote {
        tx: TxId,
        vote: Result<Vec<(usize, OpResult)>, TxError>,
    },
    Ack {
        tx: TxId,
    },
    /// The `Staging` record is durable.
    Staged {
        tx: TxId,
    },
    /// The commit decision is durable.
    Decided {
        tx: TxId,
    },
    /// The abort decision is durable.
    Aborted {
        tx: TxId,
    },
    /// Answer a probe: everything appended before it, the `Prepare` of `tx` included, is durable.
    Probed {
        to: usize,
        tx: TxId,
    },
    Ready,
    Nothing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A client's transaction, already parsed and validated.
    Begin {
        client: ClientId,
        ops: Vec<Op>,
    },
    Receive {
        from: usize,
        msg: Msg,
    },
    Durable(Then),
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send {
        to: usize,
        msg: Msg,
    },
    /// Append `record` (None: append nothing) to this shard's log; once the log is durable
    /// through this point, feed `Event::Durable(then)`.
    Persist {
        record: Option<Record>,
        then: Then,
    },
    Reply {
        client: ClientId,
        outcome: Outcome,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorCounters {
    pub local: u64,
    pub forwarded: u64,
    /// Forwarded runs that arrived here past their expiry, refused unrun.
    pub runs_expired: u64,
    /// Prepares that arrived here past their expiry, refused unprepared.
    pub prepares_expired: u64,
    pub coordinated: u64,
    pub committed: u64,
    pub aborted: u64,
    pub timeouts: u64,
    /// Aborted because the values all parts read passed the bound (`TxError::TooLarge`).
    pub aborted_too_large: u64,
    pub unknown: u64,
    pub busy: u64,
    /// Staged transactions a restart found undecided, resolved by probing the participants:
    /// committed once every participant answered prepared (its decision then on its way to the
    /// disk), aborted once the abort decision is durable. `timeouts` also counts transactions
    /// aborted because a participant asked about them while they were still preparing.
    pub probe_committed: u64,
    pub probe_aborted: u64,
}

enum Phase {
    /// Run by its one participant (`Msg::Run`); `writes`: some op writes, so a run the
    /// participant may still apply after the deadline answers `Unknown` then, where one that
    /// only reads answers `Unavailable` (found in review: a GET answered 504, "unknown").
    Forwarded { writes: bool },
    /// Committed once `waiting` is empty (every vote yes) and `staged` (the `Staging` durable).
    Preparing {
        waiting: BTreeSet<usize>,
        staged: bool,
    },
    /// The abort decision is on its way to the disk; the client hears `error` after it.
    Aborting { error: TxError },
}

struct Active {
    client: ClientId,
    participants: Vec<usize>,
    phase: Phase,
    deadline_ms: u64,
    results: Vec<Option<OpResult>>,
}

/// A commit decision: the other participants hear it once it is `durable`, until each acked. This
/// shard's own part committed with the decision and is not among them, except after a restart
/// (`Node::recover`), when its `Commit` may have been lost behind a decision that survived.
struct Decided {
    participants: Vec<usize>,
    unacked: BTreeSet<usize>,
    resend_at_ms: u64,
    durable: bool,
}

/// A staged transaction found without a decision after a restart: which participants have not
/// answered the probe yet, and whether one answered "not prepared" (the abort is being written).
struct Probing {
    participants: Vec<usize>,
    waiting: BTreeSet<usize>,
    ask_at_ms: u64,
    aborting: bool,
}

/// One shard's transaction service: the partition it owns and both protocol roles.
pub struct Node {
    shard: usize,
    shard_count: usize,
    limits: TxnLimits,
    pub partition: Partition,
    epoch: u32,
    seq_next: u64,
    ready: bool,
    /// This shard's log failed (`fail_log`): nothing it appends becomes durable again.
    log_failed: bool,
    /// Prepared parts whose coordinator's log failed (`Msg::Stuck`): their locks hold until it
    /// restarts, and a transaction that meets one answers `LogFailed`, not a conflict to retry.
    stuck: BTreeSet<TxId>,
    active: BTreeMap<TxId, Active>,
    decided: BTreeMap<TxId, Decided>,
    probing: BTreeMap<TxId, Probing>,
    /// Prepared parts that voted yes (or are in doubt): when to ask their coordinator.
    query_at_ms: BTreeMap<TxId, u64>,
    pub counters: CoordinatorCounters,
}

impl Node {
    /// A shard's node rebuilt from its snapshot records followed by its log records (both empty on
    /// first start), and the actions that start it: persist the new epoch, resend open commit
    /// decisions, probe the participants of staged transactions without a decision, ask the
    /// coordinators of in-doubt transactions.
    pub fn recover(
        shard: usize,
        shard_count: usize,
        limits: TxnLimits,
        records: &[Record],
        now_ms: u64,
    ) -> (Node, Vec<Action>) {
        assert!(shard < shard_count);
        let partition = Partition::restore(limits, records);
        let mut epoch = 0;
        let mut decided = BTreeMap::new();
        let mut staged = BTreeMap::new();
        let shards = |participants: &[u32]| -> Vec<usize> {
            participants.iter().map(|&p| p as usize).collect()
        };
        for record in records {
            match record {
                Record::Epoch { epoch: e } => epoch = epoch.max(*e),
                Record::Staging { tx, participants } => {
                    staged.insert(*tx, shards(participants));
                }
                Record::Decision {
                    tx,
                    commit,
                    participants,
                } => {
                    staged.remove(tx);
                    if *commit {
                        let participants = shards(participants);
                        let decision = Decided {
                            unacked: participants.iter().copied().collect(),
                            participants,
                            resend_at_ms: now_ms + limits.resolve_interval_ms,
                            durable: true,
                        };
                        decided.insert(*tx, decision);
                    }
                }
                Record::End { tx } => {
                    staged.remove(tx);
                    decided.remove(tx);
                }
                _ => {}
            }
        }
        let epoch = epoch
            .checked_add(1)
            .expect("epoch overflow: 4 billion restarts");
        let mut actions = vec![Action::Persist {
            record: Some(Record::Epoch { epoch }),
            then: Then::Ready,
        }];
        for (tx, decision) in &decided {
            actions.extend(decide_all(*tx, &decision.participants, true));
        }
        let mut probing = BTreeMap::new();
        for (tx, participants) in staged {
            for &to in &participants {
                actions.push(Action::Send {
                    to,
                    msg: Msg::Probe { tx },
                });
            }
            let probe = Probing {
                waiting: participants.iter().copied().collect(),
                participants,
                ask_at_ms: now_ms + limits.resolve_interval_ms,
                aborting: false,
            };
            probing.insert(tx, probe);
        }
        let mut query_at_ms = BTreeMap::new();
        for tx in partition.prepared() {
            query_at_ms.insert(tx, now_ms + limits.resolve_interval_ms);
            actions.push(Action::Send {
                to: tx.coordinator as usize,
                msg: Msg::Status { tx },
            });
        }
        let node = Node {
            shard,
            shard_count,
            limits,
            partition,
            epoch,
            seq_next: 0,
            ready: false,
            log_failed: false,
            stuck: BTreeSet::new(),
            active: BTreeMap::new(),
            decided,
            probing,
            query_at_ms,
            counters: CoordinatorCounters::default(),
        };
        (node, actions)
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    /// This run's epoch (recovery takes the log's largest and adds one).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// True once this run's epoch is durable: until then every transaction answers Busy.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Whether `fail_log` was called.
    pub fn is_log_failed(&self) -> bool {
        self.log_failed
    }

    /// The shard's log failed (a full disk, an IO error): nothing appended from now on, or not
    /// yet durable, will be. From now on every transaction that needs this log answers
    /// `LogFailed` at once (a client's here, another shard's forwarded run or prepare), instead
    /// of waiting out a deadline for a durability that never comes; a client's transaction that
    /// only forwards to another shard still runs. What waited for the log is the service's to
    /// answer (it holds those steps), except the clients of the transactions this node
    /// coordinates, answered here: their staging or decision record waits for this log, and a
    /// restart may still commit them (`Unknown`, found in review: they waited out the client
    /// deadline). The in-memory state may be ahead of the log, so nothing short of a restart,
    /// which replays what is durable, makes the shard whole again.
    pub fn fail_log(&mut self) -> Vec<Action> {
        self.log_failed = true;
        self.active
            .values()
            .filter(|active| !matches!(active.phase, Phase::Forwarded { .. }))
            .map(|active| Action::Reply {
                client: active.client,
                outcome: Err(TxError::Unknown),
            })
            .collect()
    }

    /// True when the node holds nothing open: no transaction it coordinates, no commit decision
    /// awaiting acks, no staged transaction to probe, no prepared part.
    pub fn is_quiet(&self) -> bool {
        self.active.is_empty()
            && self.decided.is_empty()
            && self.probing.is_empty()
            && self.partition.prepared().count() == 0
    }

    /// A complete snapshot (partition, in-doubt parts, epoch, commit decisions not yet acked,
    /// staged transactions, abort decisions not yet sent). Take it in one step; once it is
    /// durable, a new log segment replaces the old. Commit decisions go in whether or not they
    /// are durable yet: the partition in it may hold this shard's part already applied (see
    /// `write_commit_decision`), which is safe only with its decision beside it.
    pub fn snapshot(&self) -> Vec<Record> {
        let mut records = self.partition.snapshot();
        records.push(Record::Epoch { epoch: self.epoch });
        for (tx, decision) in &self.decided {
            records.push(decision_record(*tx, true, &decision.participants));
        }
        for (tx, active) in &self.active {
            match active.phase {
                Phase::Forwarded { .. } => {}
                Phase::Preparing { .. } => {
                    records.push(staging_record(*tx, &active.participants));
                }
                Phase::Aborting { .. } => {
                    records.push(decision_record(*tx, false, &active.participants));
                }
            }
        }
        for (tx, probe) in &self.probing {
            records.push(match probe.aborting {
                false => staging_record(*tx, &probe.participants),
                true => decision_record(*tx, false, &probe.participants),
            });
        }
        snapshot_close(&mut records);
        records
    }

    pub fn on_event(&mut self, event: Event, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Begin { client, ops } => self.begin(client, ops, now_ms, &mut actions),
            Event::Receive { from, msg } => self.receive(from, msg, now_ms, &mut actions),
            Event::Durable(then) => self.durable(then, now_ms, &mut actions),
            Event::Tick => self.tick(now_ms, &mut actions),
        }
        actions
    }

    fn begin(&mut self, client: ClientId, ops: Vec<Op>, now_ms: u64, out: &mut Vec<Action>) {
        if !self.ready {
            return self.busy(client, out);
        }
        let mut parts: BTreeMap<usize, Vec<(usize, Op)>> = BTreeMap::new();
        for (index, op) in ops.into_iter().enumerate() {
            let shard = owner(op.key(), self.shard_count);
            parts.entry(shard).or_default().push((index, op));
        }
        let op_count = parts.values().map(Vec::len).sum();
        let participants: Vec<usize> = parts.keys().copied().collect();
        let forward_only = participants.len() == 1 && participants[0] != self.shard;
        if self.log_failed && !forward_only {
            out.push(Action::Reply {
                client,
                outcome: Err(TxError::LogFailed),
            });
            return;
        }
        if participants == [self.shard] {
            self.counters.local += 1;
            let ops = parts.into_values().flatten().map(|(_, op)| op).collect();
            let then = |outcome| Then::Reply { client, outcome };
            self.run_local(ops, then, out);
            return;
        }
        // Open commit decisions count: a participant down for long fills the table, and new
        // multi-shard work waits for it instead of growing memory.
        let open = self.active.len() + self.decided.len() + self.probing.len();
        if open >= self.limits.coordinated_max {
            return self.busy(client, out);
        }
        // This shard's own part would vote no on a lock: answer 409 now, before any other
        // shard locks, logs and then releases its part of a transaction that cannot commit.
        // Nothing was staged or sent, so nothing needs telling or cleaning up.
        let own = parts.get(&self.shard);
        if participants.len() > 1
            && let Some(ops) = own
            && self.partition.conflicts(ops)
        {
            self.counters.coordinated += 1;
            self.counters.aborted += 1;
            let keys = ops.iter().map(|(_, op)| op.key());
            let error = self.conflict(keys);
            out.push(Action::Reply {
                client,
                outcome: Err(error),
            });
            return;
        }
        let tx = TxId {
            coordinator: self.shard as u32,
            epoch: self.epoch,
            seq: self.seq_next,
        };
        self.seq_next += 1;
        let phase = if participants.len() == 1 {
            self.counters.forwarded += 1;
            let ops: Vec<Op> = parts.into_values().flatten().map(|(_, op)| op).collect();
            let writes = ops.iter().any(Op::is_write);
            out.push(Action::Send {
                to: participants[0],
                msg: Msg::Run {
                    tx,
                    ops,
                    expires_ms: now_ms + self.limits.prepare_timeout_ms,
                },
            });
            Phase::Forwarded { writes }
        } else {
            self.counters.coordinated += 1;
            out.push(Action::Persist {
                record: Some(staging_record(tx, &participants)),
                then: Then::Staged { tx },
            });
            for (to, ops) in parts {
                out.push(Action::Send {
                    to,
                    msg: Msg::Prepare {
                        tx,
                        ops,
                        expires_ms: now_ms + self.limits.prepare_timeout_ms,
                    },
                });
            }
            Phase::Preparing {
                waiting: participants.iter().copied().collect(),
                staged: false,
            }
        };
        let active = Active {
            client,
            participants,
            phase,
            deadline_ms: now_ms + self.limits.prepare_timeout_ms,
            results: vec![None; op_count],
        };
        self.active.insert(tx, active);
    }

    fn busy(&mut self, client: ClientId, out: &mut Vec<Action>) {
        self.counters.busy += 1;
        out.push(Action::Reply {
            client,
            outcome: Err(TxError::Busy),
        });
    }

    /// Runs a single-shard transaction here; `then` builds what to do once it is durable.
    /// Conflicts and busy answer at once (they read nothing); every other outcome, failed checks
    /// included, waits for the log, so no answer depends on a write that could still be lost.
    fn run_local(
        &mut self,
        ops: Vec<Op>,
        then: impl FnOnce(Outcome) -> Then,
        out: &mut Vec<Action>,
    ) {
        match self.partition.run_local(&ops) {
            Ok(outcome) => out.push(Action::Persist {
                record: outcome.record,
                then: then(Ok(outcome.results)),
            }),
            // The then of a single-shard outcome (a reply or a relay) does not use the time.
            Err(TxError::Conflict) => {
                let error = self.conflict(ops.iter().map(Op::key));
                self.durable(then(Err(error)), 0, out)
            }
            Err(error @ TxError::Busy) => self.durable(then(Err(error)), 0, out),
            Err(error) => out.push(Action::Persist {
                record: None,
                then: then(Err(error)),
            }),
        }
    }

    fn receive(&mut self, from: usize, msg: Msg, now_ms: u64, out: &mut Vec<Action>) {
        match msg {
            // At its expiry the coordinator's tick answers `Unknown` (`deadline_ms <= now`).
            Msg::Run { tx, expires_ms, .. } if now_ms >= expires_ms => {
                self.counters.runs_expired += 1;
                out.push(Action::Send {
                    to: from,
                    msg: Msg::RunResult {
                        tx,
                        outcome: Err(TxError::Unavailable),
                    },
                })
            }
            Msg::Run { tx, .. } if self.log_failed => out.push(Action::Send {
                to: from,
                msg: Msg::RunResult {
                    tx,
                    outcome: Err(TxError::LogFailed),
                },
            }),
            Msg::Prepare { tx, .. } if self.log_failed && !self.partition.is_prepared(tx) => out
                .push(Action::Send {
                    to: tx.coordinator as usize,
                    msg: Msg::Vote {
                        tx,
                        vote: Err(TxError::LogFailed),
                    },
                }),
            // At its expiry the coordinator's tick aborts it (`deadline_ms <= now`): the same
            // answer, sooner. A duplicate of one already prepared is no new prepare (it voted).
            Msg::Prepare { tx, expires_ms, .. }
                if now_ms >= expires_ms && !self.partition.is_prepared(tx) =>
            {
                self.counters.prepares_expired += 1;
                out.push(Action::Send {
                    to: tx.coordinator as usize,
                    msg: Msg::Vote {
                        tx,
                        vote: Err(TxError::Unavailable),
                    },
                })
            }
            Msg::Run { tx, ops, .. } => {
                let then = |outcome| Then::RunResult {
                    to: from,
                    tx,
                    outcome,
                };
                self.run_local(ops, then, out);
            }
            Msg::Prepare { tx, ops, .. } => self.on_prepare(tx, ops, out),
            Msg::Decide { tx, commit } => self.on_decide(tx, commit, out),
            Msg::RunResult { tx, outcome } => {
                let forwarded = self
                    .active
                    .get(&tx)
                    .is_some_and(|active| matches!(active.phase, Phase::Forwarded { .. }));
                if forwarded {
                    let active = self.active.remove(&tx).expect("checked");
                    out.push(Action::Reply {
                        client: active.client,
                        outcome,
                    });
                }
            }
            Msg::Vote { tx, vote } => self.on_vote(tx, from, vote, out),
            Msg::Ack { tx } => self.on_ack(tx, from, out),
            Msg::Status { tx } => self.on_status(tx, from, out),
            Msg::Probe { tx } => self.on_probe(tx, from, out),
            Msg::Probed { tx, prepared } => self.on_probed(tx, from, prepared, out),
            Msg::Stuck { tx } => {
                if self.partition.is_prepared(tx) {
                    self.stuck.insert(tx);
                }
            }
        }
    }

    // ---- participant ----

    fn on_prepare(&mut self, tx: TxId, ops: Vec<(usize, Op)>, out: &mut Vec<Action>) {
        if self.partition.is_prepared(tx) {
            return; // A duplicate: the first one votes.
        }
        let then = |vote| Then::Vote { tx, vote };
        match self.partition.prepare(tx, &ops) {
            Ok(prepared) => out.push(Action::Persist {
                record: Some(prepared.record),
                then: then(Ok(prepared.results)),
            }),
            Err(error @ (TxError::Conflict | TxError::Busy)) => {
                let error = match error {
                    TxError::Conflict => self.conflict(ops.iter().map(|(_, op)| op.key())),
                    other => other,
                };
                out.push(Action::Send {
                    to: tx.coordinator as usize,
                    msg: Msg::Vote {
                        tx,
                        vote: Err(error),
                    },
                })
            }
            Err(error) => out.push(Action::Persist {
                record: None,
                then: then(Err(error)),
            }),
        }
    }

    /// The error for a transaction that met a lock on `keys`: `LogFailed` when a lock belongs to
    /// a transaction stuck behind a failed coordinator log (retrying will not help before that
    /// shard restarts), else a conflict.
    fn conflict<'a>(&self, keys: impl IntoIterator<Item = &'a bytes::Bytes>) -> TxError {
        let stuck = keys.into_iter().any(|key| {
            self.partition
                .locked_by(key)
                .is_some_and(|tx| self.stuck.contains(&tx))
        });
        if stuck {
            TxError::LogFailed
        } else {
            TxError::Conflict
        }
    }

    fn on_decide(&mut self, tx: TxId, commit: bool, out: &mut Vec<Action>) {
        self.query_at_ms.remove(&tx);
        self.stuck.remove(&tx);
        if !self.partition.is_prepared(tx) {
            if commit {
                // Already committed here, maybe not yet durably: ack behind a barrier.
                out.push(Action::Persist {
                    record: None,
                    then: Then::Ack { tx },
                });
            }
            return;
        }
        if commit {
            let record = self.partition.commit(tx).expect("prepared");
            out.push(Action::Persist {
                record: Some(record),
                then: Then::Ack { tx },
            });
        } else {
            let record = self.partition.abort(tx).expect("prepared");
            out.push(Action::Persist {
                record: Some(record),
                then: Then::Nothing,
            });
        }
    }

    /// Answers a restarted coordinator: prepared only once the `Prepare` is durable (behind a
    /// barrier); not prepared at once otherwise. A `Prepare` still on its way here is then voted
    /// on as usual: the coordinator's abort decision is durable before anyone hears of it.
    fn on_probe(&mut self, tx: TxId, from: usize, out: &mut Vec<Action>) {
        if self.partition.is_prepared(tx) {
            out.push(Action::Persist {
                record: None,
                then: Then::Probed { to: from, tx },
            });
        } else {
            out.push(Action::Send {
                to: from,
                msg: Msg::Probed {
                    tx,
                    prepared: false,
                },
            });
        }
    }

    // ---- coordinator ----

    fn on_vote(
        &mut self,
        tx: TxId,
        from: usize,
        vote: Result<Vec<(usize, OpResult)>, TxError>,
        out: &mut Vec<Action>,
    ) {
        let Some(active) = self.active.get_mut(&tx) else {
            let known = self.decided.contains_key(&tx) || self.probing.contains_key(&tx);
            if vote.is_ok() && !known {
                // A late yes for a transaction already aborted and forgotten.
                out.push(decide(tx, from, false));
            }
            return;
        };
        let Phase::Preparing { waiting, staged } = &mut active.phase else {
            return;
        };
        if !waiting.remove(&from) {
            return;
        }
        let results = match vote {
            // A part whose log failed may have stored its prepare after all (a write that
            // failed part-way, a sync that failed after the device took the bytes), and a
            // restart then finds it prepared: only a durable abort keeps recovery from reading
            // the staging record as a commit (found in review: 503 "nothing was written", then
            // committed by the next start, and applied twice by the client's retry).
            Err(TxError::LogFailed) => {
                return self.abort_undecided(tx, TxError::LogFailed, out);
            }
            Err(error) => return self.abort_voted_no(tx, error, out),
            Ok(results) => results,
        };
        for (index, result) in results {
            assert!(active.results[index].is_none(), "op {index} answered twice");
            active.results[index] = Some(result);
        }
        // Each part bounds its own reads; all parts together are bound the same way, or the
        // answer grows with the number of shards. The parts that voted yes are prepared, and
        // with the last vote and the staging record durable the transaction would be committed:
        // the abort is made durable before anyone hears it, as a timeout's is (found in review:
        // told at once, a crash before its record let recovery commit what the client was told
        // was not written).
        if read_bytes(&active.results) > self.limits.txn_bytes_max {
            return self.abort_undecided(tx, TxError::TooLarge, out);
        }
        if waiting.is_empty() && *staged {
            self.commit(tx, out);
        }
    }

    fn on_staged(&mut self, tx: TxId, out: &mut Vec<Action>) {
        let Some(active) = self.active.get_mut(&tx) else {
            return;
        };
        let Phase::Preparing { waiting, staged } = &mut active.phase else {
            return;
        };
        *staged = true;
        if waiting.is_empty() {
            self.commit(tx, out);
        }
    }

    /// Every participant's prepare and the staging record are durable: the transaction is
    /// committed. Reply now; participants hear it once the decision is durable too.
    fn commit(&mut self, tx: TxId, out: &mut Vec<Action>) {
        let active = self.active.remove(&tx).expect("a committing transaction");
        self.counters.committed += 1;
        let results = active
            .results
            .into_iter()
            .map(|result| result.expect("every op has a result after all votes"))
            .collect();
        out.push(Action::Reply {
            client: active.client,
            outcome: Ok(results),
        });
        self.write_commit_decision(tx, active.participants, out);
    }

    /// Appends the commit decision and, behind it in the same log, applies this shard's own part
    /// at once: its locks go now, not a log sync later. Log order makes that safe: the own
    /// `Commit`, and every later record that could depend on its writes (a transaction reading
    /// them), is durable only once the decision before it is, and a restart that lost the
    /// decision lost them too. Other participants hear the decision once it is durable.
    fn write_commit_decision(&mut self, tx: TxId, participants: Vec<usize>, out: &mut Vec<Action>) {
        out.push(Action::Persist {
            record: Some(decision_record(tx, true, &participants)),
            then: Then::Decided { tx },
        });
        let mut unacked: BTreeSet<usize> = participants.iter().copied().collect();
        if unacked.remove(&self.shard) {
            self.query_at_ms.remove(&tx);
            if let Some(record) = self.partition.commit(tx) {
                out.push(Action::Persist {
                    record: Some(record),
                    then: Then::Nothing,
                });
            }
        }
        let decision = Decided {
            unacked,
            participants,
            resend_at_ms: 0,
            durable: false,
        };
        self.decided.insert(tx, decision);
    }

    /// A participant voted no, so it never prepares: no log can make this transaction look
    /// committed, and the abort is told at once. (Not a `LogFailed` vote: `abort_undecided`.)
    fn abort_voted_no(&mut self, tx: TxId, error: TxError, out: &mut Vec<Action>) {
        let active = self.active.remove(&tx).expect("an active transaction");
        self.counters.aborted += 1;
        out.extend(decide_all(tx, &active.participants, false));
        out.push(Action::Reply {
            client: active.client,
            outcome: Err(error),
        });
        out.push(Action::Persist {
            record: Some(Record::End { tx }),
            then: Then::Nothing,
        });
    }

    /// Votes are missing and every yes may still come (a timeout), or yes votes came and the
    /// transaction must not commit (its reads pass the bound): the abort decision is made
    /// durable before anyone hears it, so a restart cannot read the staging record as a commit.
    fn abort_undecided(&mut self, tx: TxId, error: TxError, out: &mut Vec<Action>) {
        let active = self.active.get_mut(&tx).expect("an active transaction");
        assert!(matches!(active.phase, Phase::Preparing { .. }));
        match error {
            TxError::Unavailable => self.counters.timeouts += 1,
            TxError::TooLarge => self.counters.aborted_too_large += 1,
            _ => {}
        }
        active.phase = Phase::Aborting { error };
        out.push(Action::Persist {
            record: Some(decision_record(tx, false, &active.participants)),
            then: Then::Aborted { tx },
        });
    }

    fn on_aborted(&mut self, tx: TxId, out: &mut Vec<Action>) {
        let aborting = self
            .active
            .get(&tx)
            .is_some_and(|active| matches!(active.phase, Phase::Aborting { .. }));
        if aborting {
            let active = self.active.remove(&tx).expect("checked");
            let Phase::Aborting { error } = active.phase else {
                unreachable!("checked")
            };
            self.counters.aborted += 1;
            out.extend(decide_all(tx, &active.participants, false));
            out.push(Action::Reply {
                client: active.client,
                outcome: Err(error),
            });
        } else if let Some(probe) = self.probing.remove(&tx) {
            assert!(probe.aborting, "an abort decision for a probe still asking");
            self.counters.probe_aborted += 1;
            out.extend(decide_all(tx, &probe.participants, false));
        }
    }

    fn on_decided(&mut self, tx: TxId, now_ms: u64, out: &mut Vec<Action>) {
        let decision = self.decided.get_mut(&tx).expect("a deciding transaction");
        decision.durable = true;
        decision.resend_at_ms = now_ms + self.limits.resolve_interval_ms;
        out.extend(decide_all(tx, &decision.unacked, true));
    }

    fn on_probed(&mut self, tx: TxId, from: usize, prepared: bool, out: &mut Vec<Action>) {
        let Some(probe) = self.probing.get_mut(&tx) else {
            return;
        };
        if probe.aborting || !probe.waiting.remove(&from) {
            return;
        }
        if !prepared {
            probe.aborting = true;
            out.push(Action::Persist {
                record: Some(decision_record(tx, false, &probe.participants)),
                then: Then::Aborted { tx },
            });
        } else if probe.waiting.is_empty() {
            let probe = self.probing.remove(&tx).expect("checked");
            self.counters.probe_committed += 1;
            self.write_commit_decision(tx, probe.participants, out);
        }
    }

    fn on_ack(&mut self, tx: TxId, from: usize, out: &mut Vec<Action>) {
        let Some(decision) = self.decided.get_mut(&tx) else {
            return;
        };
        decision.unacked.remove(&from);
        if decision.unacked.is_empty() {
            self.decided.remove(&tx);
            out.push(Action::Persist {
                record: Some(Record::End { tx }),
                then: Then::Nothing,
            });
        }
    }

    fn on_status(&mut self, tx: TxId, from: usize, out: &mut Vec<Action>) {
        let durably_decided = self.decided.get(&tx).is_some_and(|d| d.durable);
        if self.log_failed && !durably_decided {
            // Nothing this node decides now can become durable, and a restart may still
            // commit it: the participant holds its locks until then, and says why.
            out.push(Action::Send {
                to: from,
                msg: Msg::Stuck { tx },
            });
            return;
        }
        if let Some(decision) = self.decided.get(&tx) {
            // Not durable yet: the participant hears it once it is, or asks again.
            if decision.durable {
                out.push(decide(tx, from, true));
            }
            return;
        }
        if self.probing.contains_key(&tx) {
            return; // Asks again once the probe decided.
        }
        match self.active.get(&tx).map(|active| &active.phase) {
            Some(Phase::Preparing { .. }) => self.abort_undecided(tx, TxError::Unavailable, out),
            Some(Phase::Aborting { .. } | Phase::Forwarded { .. }) => {}
            // Never staged durably before a restart, or aborted and forgotten: presumed abort.
            None => out.push(decide(tx, from, false)),
        }
    }

    fn durable(&mut self, then: Then, now_ms: u64, out: &mut Vec<Action>) {
        match then {
            Then::Reply { client, outcome } => out.push(Action::Reply { client, outcome }),
            Then::RunResult { to, tx, outcome } => out.push(Action::Send {
                to,
                msg: Msg::RunResult { tx, outcome },
            }),
            Then::Vote { tx, vote } => {
                if vote.is_ok() {
                    if !self.partition.is_prepared(tx) {
                        return; // Aborted while its prepare record was on its way to the disk.
                    }
                    let at = now_ms + self.limits.prepare_timeout_ms;
                    self.query_at_ms.insert(tx, at);
                }
                out.push(Action::Send {
                    to: tx.coordinator as usize,
                    msg: Msg::Vote { tx, vote },
                });
            }
            Then::Ack { tx } => out.push(Action::Send {
                to: tx.coordinator as usize,
                msg: Msg::Ack { tx },
            }),
            Then::Staged { tx } => self.on_staged(tx, out),
            Then::Decided { tx } => self.on_decided(tx, now_ms, out),
            Then::Aborted { tx } => self.on_aborted(tx, out),
            Then::Probed { to, tx } => out.push(Action::Send {
                to,
                msg: Msg::Probed {
                    tx,
                    prepared: self.partition.is_prepared(tx),
                },
            }),
            Then::Ready => self.ready = true,
            Then::Nothing => {}
        }
    }

    fn tick(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let expired: Vec<TxId> = self
            .active
            .iter()
            .filter(|(_, active)| active.deadline_ms <= now_ms)
            .map(|(tx, _)| *tx)
            .collect();
        for tx in expired {
            match self.active[&tx].phase {
                Phase::Preparing { .. } => self.abort_undecided(tx, TxError::Unavailable, out),
                Phase::Forwarded { writes } => {
                    let outcome = match writes {
                        true => {
                            self.counters.unknown += 1;
                            TxError::Unknown
                        }
                        false => {
                            self.counters.timeouts += 1;
                            TxError::Unavailable
                        }
                    };
                    let active = self.active.remove(&tx).expect("listed");
                    out.push(Action::Reply {
                        client: active.client,
                        outcome: Err(outcome),
                    });
                }
                Phase::Aborting { .. } => {}
            }
        }
        for (tx, decision) in &mut self.decided {
            if decision.durable && decision.resend_at_ms <= now_ms {
                decision.resend_at_ms = now_ms + self.limits.resolve_interval_ms;
                out.extend(decide_all(*tx, &decision.unacked, true));
            }
        }
        for (tx, probe) in &mut self.probing {
            if !probe.aborting && probe.ask_at_ms <= now_ms {
                probe.ask_at_ms = now_ms + self.limits.resolve_interval_ms;
                let probes = probe.waiting.iter().map(|&to| Action::Send {
                    to,
                    msg: Msg::Probe { tx: *tx },
                });
                out.extend(probes);
            }
        }
        for (tx, at) in &mut self.query_at_ms {
            if *at <= now_ms {
                *at = now_ms + self.limits.resolve_interval_ms;
                out.push(Action::Send {
                    to: tx.coordinator as usize,
                    msg: Msg::Status { tx: *tx },
                });
            }
        }
    }
}

fn decide(tx: TxId, to: usize, commit: bool) -> Action {
    Action::Send {
        to,
        msg: Msg::Decide { tx, commit },
    }
}

/// Bytes of the values `results` read (`get`s), for the transaction's bound.
fn read_bytes(results: &[Option<OpResult>]) -> usize {
    results
        .iter()
        .map(|result| match result {
            Some(OpResult::Get(Some((value, _)))) => value.len(),
            _ => 0,
        })
        .sum()
}

fn decide_all<'a>(
    tx: TxId,
    to: impl IntoIterator<Item = &'a usize>,
    commit: bool,
) -> impl Iterator<Item = Action> {
    to.into_iter().map(move |&to| decide(tx, to, commit))
}

fn decision_record(tx: TxId, commit: bool, participants: &[usize]) -> Record {
    Record::Decision {
        tx,
        commit,
        participants: participants.iter().map(|&p| p as u32).collect(),
    }
}

fn staging_record(tx: TxId, participants: &[usize]) -> Record {
    Record::Staging {
        tx,
        participants: participants.iter().map(|&p| p as u32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    const SHARDS: usize = 2;

    fn limits() -> TxnLimits {
        TxnLimits {
            prepare_timeout_ms: 50,
            resolve_interval_ms: 20,
            ..TxnLimits::default()
        }
    }

    /// The first key `k0`, `k1`, ... that `shard` owns.
    fn key_on(shard: usize) -> Bytes {
        (0..)
            .map(|i| Bytes::from(format!("k{i}")))
            .find(|key| owner(key, SHARDS) == shard)
            .expect("some key")
    }

    fn put(shard: usize, value: &str) -> Op {
        Op::Put {
            key: key_on(shard),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    /// A started node on `shard`, its epoch durable.
    fn node(shard: usize) -> Node {
        let (mut node, actions) = Node::recover(shard, SHARDS, limits(), &[], 0);
        assert_eq!(
            actions,
            [Action::Persist {
                record: Some(Record::Epoch { epoch: 1 }),
                then: Then::Ready
            }]
        );
        assert!(node.on_event(Event::Durable(Then::Ready), 0).is_empty());
        node
    }

    fn tx(seq: u64) -> TxId {
        TxId {
            coordinator: 0,
            epoch: 1,
            seq,
        }
    }

    fn receive(from: usize, msg: Msg) -> Event {
        Event::Receive { from, msg }
    }

    fn send(to: usize, msg: Msg) -> Action {
        Action::Send { to, msg }
    }

    /// Feeds `steps` in order: each event must produce exactly its actions.
    fn check(node: &mut Node, steps: Vec<(u64, Event, Vec<Action>)>) {
        for (now_ms, event, expected) in steps {
            let label = format!("{event:?} at {now_ms}");
            assert_eq!(node.on_event(event, now_ms), expected, "{label}");
        }
    }

    #[test]
    fn single_shard_here_replies_after_its_commit_is_durable() {
        let mut node = node(0);
        let commit = Record::Commit {
            tx: None,
            version: 1,
            writes: vec![(key_on(0), Some(Bytes::from_static(b"v")))],
        };
        let reply = Then::Reply {
            client: 7,
            outcome: Ok(vec![OpResult::Put { version: 1 }]),
        };
        check(
            &mut node,
            vec![
                (
                    1,
                    Event::Begin {
                        client: 7,
                        ops: vec![put(0, "v")],
                    },
                    vec![Action::Persist {
                        record: Some(commit),
                        then: reply.clone(),
                    }],
                ),
                (
                    2,
                    Event::Durable(reply),
                    vec![Action::Reply {
                        client: 7,
                        outcome: Ok(vec![OpResult::Put { version: 1 }]),
                    }],
                ),
            ],
        );
    }

    /// Full disk: what needs this shard's log answers at once; a forward to a shard whose log
    /// works still runs.
    #[test]
    fn a_failed_log_answers_log_failed_at_once() {
        let mut node = node(0);
        let prepared = node.on_event(
            Event::Begin {
                client: 6,
                ops: vec![put(0, "v"), put(1, "w")],
            },
            0,
        );
        assert!(prepared.len() > 1, "{prepared:?}");
        assert_eq!(
            node.fail_log(),
            [Action::Reply {
                client: 6,
                outcome: Err(TxError::Unknown),
            }],
            "the coordinated transaction waiting for this log"
        );
        let failed = Err(TxError::LogFailed);
        // Transactions shard 1 coordinates.
        let from_1 = |seq| TxId {
            coordinator: 1,
            epoch: 1,
            seq,
        };
        let forwarded = Msg::Run {
            tx: from_1(0),
            ops: vec![put(0, "v")],
            expires_ms: 51,
        };
        let prepare = Msg::Prepare {
            tx: from_1(1),
            ops: vec![(0, put(0, "v"))],
            expires_ms: u64::MAX,
        };
        check(
            &mut node,
            vec![
                (
                    1,
                    Event::Begin {
                        client: 7,
                        ops: vec![put(0, "v")],
                    },
                    vec![Action::Reply {
                        client: 7,
                        outcome: failed.clone(),
                    }],
                ),
                (
                    1,
                    Event::Begin {
                        client: 8,
                        ops: vec![put(0, "v"), put(1, "w")],
                    },
                    vec![Action::Reply {
                        client: 8,
                        outcome: failed.clone(),
                    }],
                ),
                (
                    1,
                    Event::Begin {
                        client: 9,
                        ops: vec![put(1, "w")],
                    },
                    vec![send(
                        1,
                        Msg::Run {
                            tx: tx(1),
                            ops: vec![put(1, "w")],
                            expires_ms: 51,
                        },
                    )],
                ),
                (
                    1,
                    receive(1, forwarded),
                    vec![send(
                        1,
                        Msg::RunResult {
                            tx: from_1(0),
                            outcome: failed.clone(),
                        },
                    )],
                ),
                (
                    1,
                    receive(1, prepare),
                    vec![send(
                        1,
                        Msg::Vote {
                            tx: from_1(1),
                            vote: Err(TxError::LogFailed),
                        },
                    )],
                ),
            ],
        );
        let prepared = from_1(1);
        assert!(
            !node.partition.is_prepared(prepared),
            "a no vote locks nothing"
        );
    }

    /// Found in review: a participant's keys locked for a transaction whose coordinator's log
    /// failed answered 409 "retry" until the coordinator restarted. The coordinator now says so
    /// when asked (`Stuck`), and the participant answers `LogFailed` for those keys.
    #[test]
    fn keys_locked_behind_a_failed_coordinator_log_answer_log_failed() {
        let mut coordinator = node(0);
        let mut participant = node(1);
        let begin = Event::Begin {
            client: 1,
            ops: vec![put(0, "a"), put(1, "b")],
        };
        let prepare = coordinator
            .on_event(begin, 0)
            .into_iter()
            .find_map(|action| match action {
                Action::Send { to: 1, msg } => Some(msg),
                _ => None,
            })
            .expect("a prepare for shard 1");
        let Msg::Prepare { tx, .. } = prepare else {
            panic!("{prepare:?}");
        };
        for action in participant.on_event(receive(0, prepare), 0) {
            if let Action::Persist { then, .. } = action {
                participant.on_event(Event::Durable(then), 0);
            }
        }
        assert!(participant.partition.is_prepared(tx));
        let replies = coordinator.fail_log();
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!(
            coordinator.on_event(receive(1, Msg::Status { tx }), 100),
            [send(1, Msg::Stuck { tx })]
        );
        let locked = |client| Event::Begin {
            client,
            ops: vec![put(1, "c")],
        };
        let reply = |client, error| Action::Reply {
            client,
            outcome: Err(error),
        };
        assert_eq!(
            participant.on_event(locked(2), 100),
            [reply(2, TxError::Conflict)]
        );
        assert!(
            participant
                .on_event(receive(0, Msg::Stuck { tx }), 100)
                .is_empty()
        );
        assert_eq!(
            participant.on_event(locked(3), 100),
            [reply(3, TxError::LogFailed)]
        );
        // After the coordinator's restart its decision releases the locks as before.
        participant.on_event(receive(0, Msg::Decide { tx, commit: false }), 200);
        assert!(!participant.partition.is_prepared(tx));
        assert!(participant.stuck.is_empty());
    }

    #[test]
    fn busy_until_the_epoch_is_durable() {
        let (mut node, _) = Node::recover(0, SHARDS, limits(), &[Record::Epoch { epoch: 4 }], 0);
        let begin = Event::Begin {
            client: 1,
            ops: vec![put(0, "v")],
        };
        let busy = Action::Reply {
            client: 1,
            outcome: Err(TxError::Busy),
        };
        assert_eq!(node.on_event(begin, 0), [busy]);
        assert!(node.snapshot().contains(&Record::Epoch { epoch: 5 }));
    }

    fn decide_all(seq: u64, commit: bool) -> Vec<Action> {
        (0..SHARDS)
            .map(|to| {
                send(
                    to,
                    Msg::Decide {
                        tx: tx(seq),
                        commit,
                    },
                )
            })
            .collect()
    }

    /// What `begin_two` at `now_ms` sends: its staging record and a prepare to each shard.
    fn prepares(seq: u64, now_ms: u64) -> Vec<Action> {
        vec![
            Action::Persist {
                record: Some(Record::Staging {
                    tx: tx(seq),
                    participants: vec![0, 1],
                }),
                then: Then::Staged { tx: tx(seq) },
            },
            send(
                0,
                Msg::Prepare {
                    tx: tx(seq),
                    ops: vec![(0, put(0, "a"))],
                    expires_ms: now_ms + 50,
                },
            ),
            send(
                1,
                Msg::Prepare {
                    tx: tx(seq),
                    ops: vec![(1, put(1, "b"))],
                    expires_ms: now_ms + 50,
                },
            ),
        ]
    }

    fn begin_two(client: ClientId) -> Event {
        Event::Begin {
            client,
            ops: vec![put(0, "a"), put(1, "b")],
        }
    }

    fn yes(seq: u64, index: usize, version: u64) -> Msg {
        Msg::Vote {
            tx: tx(seq),
            vote: Ok(vec![(index, OpResult::Put { version })]),
        }
    }

    /// A yes vote whose op `index` read a value of `bytes` bytes.
    fn read(seq: u64, index: usize, bytes: usize) -> Msg {
        let value = Bytes::from(vec![b'v'; bytes]);
        Msg::Vote {
            tx: tx(seq),
            vote: Ok(vec![(index, OpResult::Get(Some((value, 1))))]),
        }
    }

    fn decision(seq: u64, commit: bool) -> Record {
        Record::Decision {
            tx: tx(seq),
            commit,
            participants: vec![0, 1],
        }
    }

    /// Review finding: a part whose log failed votes `LogFailed`, yet its prepare may be
    /// stored after all; the coordinator answered at once and logged only an `End`, so a
    /// restart before that was durable probed, found every part prepared, and committed what
    /// the client had been told was not written. The abort is made durable first, as a
    /// timeout's is; any other no is still told at once.
    #[test]
    fn a_log_failed_vote_is_answered_after_a_durable_abort() {
        let mut node = node(0);
        let no = |seq, error| Msg::Vote {
            tx: tx(seq),
            vote: Err(error),
        };
        let told = |client, seq, error| {
            let mut actions = decide_all(seq, false);
            actions.push(Action::Reply {
                client,
                outcome: Err(error),
            });
            actions
        };
        let mut at_once = told(4, 1, TxError::Conflict);
        at_once.push(Action::Persist {
            record: Some(Record::End { tx: tx(1) }),
            then: Then::Nothing,
        });
        check(
            &mut node,
            vec![
                (1, begin_two(3), prepares(0, 1)),
                (
                    2,
                    receive(1, no(0, TxError::LogFailed)),
                    vec![Action::Persist {
                        record: Some(decision(0, false)),
                        then: Then::Aborted { tx: tx(0) },
                    }],
                ),
                (
                    3,
                    Event::Durable(Then::Aborted { tx: tx(0) }),
                    told(3, 0, TxError::LogFailed),
                ),
                (4, begin_two(4), prepares(1, 4)),
                (5, receive(1, no(1, TxError::Conflict)), at_once),
            ],
        );
    }

    #[test]
    fn coordinator_replies_once_every_prepare_and_its_staging_are_durable() {
        let mut node = node(0);
        let committed = vec![OpResult::Put { version: 1 }, OpResult::Put { version: 5 }];
        let reply = |client, seq| {
            vec![
                Action::Reply {
                    client,
                    outcome: Ok(committed.clone()),
                },
                Action::Persist {
                    record: Some(decision(seq, true)),
                    then: Then::Decided { tx: tx(seq) },
                },
            ]
        };
        check(
            &mut node,
            vec![
                (1, begin_two(3), prepares(0, 1)),
                (2, receive(1, yes(0, 1, 5)), vec![]),
                (3, receive(0, yes(0, 0, 1)), vec![]),
                // Both votes in, the staging record last: the reply comes with it.
                (4, Event::Durable(Then::Staged { tx: tx(0) }), reply(3, 0)),
                // Nobody hears the commit before the decision is durable...
                (5, receive(1, Msg::Status { tx: tx(0) }), vec![]),
                (20, Event::Tick, vec![]),
                // The coordinator's own part committed with the decision: only shard 1 hears.
                (
                    21,
                    Event::Durable(Then::Decided { tx: tx(0) }),
                    decide_all(0, true)[1..].to_vec(),
                ),
                // ...and afterwards; unacknowledged participants hear it again.
                (
                    22,
                    receive(1, Msg::Status { tx: tx(0) }),
                    vec![send(
                        1,
                        Msg::Decide {
                            tx: tx(0),
                            commit: true,
                        },
                    )],
                ),
                (23, receive(0, Msg::Ack { tx: tx(0) }), vec![]),
                (
                    41,
                    Event::Tick,
                    vec![send(
                        1,
                        Msg::Decide {
                            tx: tx(0),
                            commit: true,
                        },
                    )],
                ),
                (
                    42,
                    receive(1, Msg::Ack { tx: tx(0) }),
                    vec![Action::Persist {
                        record: Some(Record::End { tx: tx(0) }),
                        then: Then::Nothing,
                    }],
                ),
                // The staging record first, the last vote after it: the reply comes with the vote.
                (50, begin_two(4), prepares(1, 50)),
                (51, Event::Durable(Then::Staged { tx: tx(1) }), vec![]),
                (52, receive(0, yes(1, 0, 1)), vec![]),
                (53, receive(1, yes(1, 1, 5)), reply(4, 1)),
            ],
        );
        assert_eq!(node.counters.committed, 2);
    }

    /// A transaction whose part on the coordinator's own shard meets a lock is answered 409 at
    /// once: no staging record, no prepare sent, so no other shard locks and logs a part that
    /// would only be released.
    #[test]
    fn a_lock_on_the_coordinators_own_part_answers_409_before_anything_is_sent() {
        let mut node = node(0);
        check(&mut node, vec![(1, begin_two(3), prepares(0, 1))]);
        // Its own part prepares: key_on(0) is locked by tx 0.
        let prepare = Msg::Prepare {
            tx: tx(0),
            ops: vec![(0, put(0, "a"))],
            expires_ms: u64::MAX,
        };
        let actions = node.on_event(receive(0, prepare), 2);
        assert!(matches!(
            actions.as_slice(),
            [Action::Persist {
                record: Some(Record::Prepare { .. }),
                ..
            }]
        ));
        let actions = node.on_event(begin_two(4), 3);
        assert_eq!(
            actions,
            vec![Action::Reply {
                client: 4,
                outcome: Err(TxError::Conflict),
            }]
        );
        assert_eq!((node.counters.coordinated, node.counters.aborted), (2, 1));
        assert_eq!(node.partition.counters.aborts_conflict, 1);
        // Another key on this shard is free: the transaction goes ahead as usual.
        let other = (0..)
            .map(|i| Bytes::from(format!("other{i}")))
            .find(|key| owner(key, SHARDS) == 0 && *key != key_on(0))
            .expect("some key");
        let ops = vec![
            put(1, "b"),
            Op::Put {
                key: other,
                value: Bytes::from_static(b"c"),
            },
        ];
        let actions = node.on_event(Event::Begin { client: 5, ops }, 4);
        assert!(
            matches!(
                actions.first(),
                Some(Action::Persist {
                    record: Some(Record::Staging { .. }),
                    ..
                })
            ),
            "{actions:?}"
        );
    }

    /// Takes tx 0 (client 3: `put(0)` here, `put(1)` on shard 1) to its commit point with this
    /// shard's own part really prepared, its vote delivered here; returns what the commit point
    /// did (at time 6).
    fn commit_point_with_own_part(node: &mut Node) -> Vec<Action> {
        check(node, vec![(1, begin_two(3), prepares(0, 1))]);
        let prepare = Msg::Prepare {
            tx: tx(0),
            ops: vec![(0, put(0, "a"))],
            expires_ms: u64::MAX,
        };
        let [Action::Persist { then: voted, .. }] = &node.on_event(receive(0, prepare), 2)[..]
        else {
            panic!("the own part's prepare is persisted");
        };
        let vote = node.on_event(Event::Durable(voted.clone()), 3);
        let [Action::Send { to: 0, msg: vote }] = &vote[..] else {
            panic!("the own part votes to this shard: {vote:?}");
        };
        assert!(node.on_event(receive(0, vote.clone()), 4).is_empty());
        assert!(node.on_event(receive(1, yes(0, 1, 5)), 5).is_empty());
        node.on_event(Event::Durable(Then::Staged { tx: tx(0) }), 6)
    }

    #[test]
    fn the_coordinators_own_part_commits_and_unlocks_behind_the_decision_record() {
        let mut node = node(0);
        let actions = commit_point_with_own_part(&mut node);
        // The reply, the decision, then the own part's commit: the log keeps them in that order.
        let [
            Action::Reply {
                client: 3,
                outcome: Ok(_),
            },
            Action::Persist {
                record: Some(Record::Decision { commit: true, .. }),
                then: Then::Decided { .. },
            },
            Action::Persist {
                record:
                    Some(Record::Commit {
                        tx: Some(committed),
                        ..
                    }),
                then: Then::Nothing,
            },
        ] = &actions[..]
        else {
            panic!("reply, decision, own commit: {actions:?}");
        };
        assert_eq!(*committed, tx(0));
        // key_on(0) is free before the decision is durable: the next transaction on it goes on.
        assert!(!node.partition.is_prepared(tx(0)));
        let next = node.on_event(begin_two(4), 7);
        assert_eq!(next, prepares(1, 7), "no early 409");
        // Only the other participant hears the decision; its ack ends the transaction.
        check(
            &mut node,
            vec![
                (
                    8,
                    Event::Durable(Then::Decided { tx: tx(0) }),
                    decide_all(0, true)[1..].to_vec(),
                ),
                (
                    9,
                    receive(1, Msg::Ack { tx: tx(0) }),
                    vec![Action::Persist {
                        record: Some(Record::End { tx: tx(0) }),
                        then: Then::Nothing,
                    }],
                ),
            ],
        );
    }

    #[test]
    fn a_snapshot_taken_before_the_decision_is_durable_holds_it_beside_the_applied_own_part() {
        let mut node = node(0);
        assert_eq!(commit_point_with_own_part(&mut node).len(), 3);
        // A checkpoint now: the decision and the own commit are appended, neither durable.
        let snapshot = node.snapshot();
        assert!(snapshot.contains(&decision(0, true)), "{snapshot:?}");
        let (restarted, actions) = Node::recover(0, SHARDS, limits(), &snapshot, 100);
        // The decision is resent to every participant, itself included; nothing is probed.
        assert_eq!(actions[1..], decide_all(0, true)[..]);
        assert_eq!(restarted.partition.prepared().count(), 0);
        let value = restarted
            .partition
            .entries()
            .find(|(key, _)| **key == key_on(0))
            .map(|(_, entry)| entry.value.clone());
        assert_eq!(value, Some(Bytes::from_static(b"a")));
    }

    #[test]
    fn coordinator_aborts_on_a_no_at_once_and_otherwise_after_a_durable_decision() {
        let failed = TxError::Failed {
            op_index: 1,
            reason: crate::txn::op::FailReason::NotInteger,
        };
        let told = |seq, client, error| {
            let mut actions = decide_all(seq, false);
            actions.push(Action::Reply {
                client,
                outcome: Err(error),
            });
            actions
        };
        let abort_decision = |seq| {
            vec![Action::Persist {
                record: Some(decision(seq, false)),
                then: Then::Aborted { tx: tx(seq) },
            }]
        };
        let mut no_vote = told(0, 1, failed.clone());
        no_vote.push(Action::Persist {
            record: Some(Record::End { tx: tx(0) }),
            then: Then::Nothing,
        });
        let mut node = node(0);
        check(
            &mut node,
            vec![
                (0, begin_two(1), prepares(0, 0)),
                (
                    1,
                    receive(
                        1,
                        Msg::Vote {
                            tx: tx(0),
                            vote: Err(failed.clone()),
                        },
                    ),
                    no_vote,
                ),
                // A timeout: a yes may still be on its way, so the abort is durable first.
                (2, begin_two(2), prepares(1, 2)),
                (51, Event::Tick, vec![]),
                (52, Event::Tick, abort_decision(1)),
                (53, receive(0, yes(1, 0, 1)), vec![]),
                (54, receive(1, Msg::Status { tx: tx(1) }), vec![]),
                (
                    55,
                    Event::Durable(Then::Aborted { tx: tx(1) }),
                    told(1, 2, TxError::Unavailable),
                ),
                // A participant asking about a transaction still preparing: the same.
                (56, begin_two(3), prepares(2, 56)),
                (57, receive(1, Msg::Status { tx: tx(2) }), abort_decision(2)),
                (
                    58,
                    Event::Durable(Then::Aborted { tx: tx(2) }),
                    told(2, 3, TxError::Unavailable),
                ),
                // Its staging record turning durable afterwards changes nothing.
                (59, Event::Durable(Then::Staged { tx: tx(2) }), vec![]),
                // Presumed abort: no decision known, and a late yes vote, both hear abort.
                (
                    60,
                    receive(1, Msg::Status { tx: tx(9) }),
                    vec![send(
                        1,
                        Msg::Decide {
                            tx: tx(9),
                            commit: false,
                        },
                    )],
                ),
                (
                    61,
                    receive(1, yes(1, 1, 5)),
                    vec![send(
                        1,
                        Msg::Decide {
                            tx: tx(1),
                            commit: false,
                        },
                    )],
                ),
                // Yes votes whose reads pass the bound together: both parts are prepared, so
                // the abort is durable before anyone hears it (found in review: told at once,
                // a crash before its record let recovery commit it).
                (62, begin_two(4), prepares(3, 62)),
                (63, receive(0, read(3, 0, 3 << 20)), vec![]),
                (64, receive(1, read(3, 1, 2 << 20)), abort_decision(3)),
                (
                    65,
                    Event::Durable(Then::Aborted { tx: tx(3) }),
                    told(3, 4, TxError::TooLarge),
                ),
            ],
        );
        assert!(node.is_quiet());
        assert_eq!(node.counters.aborted, 4);
        assert_eq!(node.counters.timeouts, 2);
        assert_eq!(node.counters.aborted_too_large, 1);
    }

    #[test]
    fn restarted_coordinator_probes_what_it_staged_and_decides_durably() {
        let staging = |seq| Record::Staging {
            tx: tx(seq),
            participants: vec![0, 1],
        };
        let log = [
            Record::Epoch { epoch: 1 },
            staging(0),
            staging(1),
            staging(2),
            staging(3),
            decision(2, false),
            Record::End { tx: tx(3) },
        ];
        let (mut node, actions) = Node::recover(0, SHARDS, limits(), &log, 100);
        let probe = |to, seq| send(to, Msg::Probe { tx: tx(seq) });
        // Decided or ended transactions are not asked about.
        assert_eq!(
            actions[1..],
            [probe(0, 0), probe(1, 0), probe(0, 1), probe(1, 1)]
        );
        let probed = |seq, prepared| Msg::Probed {
            tx: tx(seq),
            prepared,
        };
        let staged_snapshot = node.snapshot();
        assert!(staged_snapshot.contains(&staging(0)) && staged_snapshot.contains(&staging(1)));
        check(
            &mut node,
            vec![
                (101, Event::Durable(Then::Ready), vec![]),
                (102, receive(1, probed(0, true)), vec![]),
                // While probing, a participant in doubt hears nothing and asks again.
                (103, receive(1, Msg::Status { tx: tx(0) }), vec![]),
                (
                    104,
                    receive(1, probed(1, false)),
                    vec![Action::Persist {
                        record: Some(decision(1, false)),
                        then: Then::Aborted { tx: tx(1) },
                    }],
                ),
                // Unanswered probes are repeated; a decided probe asks no more.
                (120, Event::Tick, vec![probe(0, 0)]),
                (
                    121,
                    receive(0, probed(0, true)),
                    vec![Action::Persist {
                        record: Some(decision(0, true)),
                        then: Then::Decided { tx: tx(0) },
                    }],
                ),
                (
                    122,
                    Event::Durable(Then::Aborted { tx: tx(1) }),
                    decide_all(1, false),
                ),
                (
                    123,
                    Event::Durable(Then::Decided { tx: tx(0) }),
                    decide_all(0, true)[1..].to_vec(),
                ),
                (124, receive(0, Msg::Ack { tx: tx(0) }), vec![]),
                (
                    125,
                    receive(1, Msg::Ack { tx: tx(0) }),
                    vec![Action::Persist {
                        record: Some(Record::End { tx: tx(0) }),
                        then: Then::Nothing,
                    }],
                ),
            ],
        );
        assert!(node.is_quiet());
        assert_eq!(
            (node.counters.probe_committed, node.counters.probe_aborted),
            (1, 1)
        );
    }

    /// Shard 1's prepare record and pending yes vote for tx 0 = `[put(1, "b")]` at version 1.
    fn prepare_of_put_b() -> (Record, Then) {
        let prepare = Record::Prepare {
            tx: tx(0),
            version: 1,
            writes: vec![(key_on(1), Some(Bytes::from_static(b"b")))],
            reads: vec![],
        };
        let vote = Then::Vote {
            tx: tx(0),
            vote: Ok(vec![(1, OpResult::Put { version: 1 })]),
        };
        (prepare, vote)
    }

    #[test]
    fn participant_says_prepared_only_once_its_prepare_is_durable() {
        let mut node = node(1);
        let (prepare, vote) = prepare_of_put_b();
        let probed = |prepared| {
            vec![send(
                0,
                Msg::Probed {
                    tx: tx(0),
                    prepared,
                },
            )]
        };
        let answer = Then::Probed { to: 0, tx: tx(0) };
        check(
            &mut node,
            vec![
                (0, receive(0, Msg::Probe { tx: tx(0) }), probed(false)),
                (
                    1,
                    receive(
                        0,
                        Msg::Prepare {
                            tx: tx(0),
                            ops: vec![(1, put(1, "b"))],
                            expires_ms: u64::MAX,
                        },
                    ),
                    vec![Action::Persist {
                        record: Some(prepare),
                        then: vote,
                    }],
                ),
                (
                    2,
                    receive(0, Msg::Probe { tx: tx(0) }),
                    vec![Action::Persist {
                        record: None,
                        then: answer.clone(),
                    }],
                ),
                (3, Event::Durable(answer.clone()), probed(true)),
                // Aborted before the barrier came back: not prepared any more.
                (
                    4,
                    receive(
                        0,
                        Msg::Decide {
                            tx: tx(0),
                            commit: false,
                        },
                    ),
                    vec![Action::Persist {
                        record: Some(Record::Release { tx: tx(0) }),
                        then: Then::Nothing,
                    }],
                ),
                (5, Event::Durable(answer), probed(false)),
            ],
        );
    }

    #[test]
    fn participant_votes_after_its_prepare_is_durable_and_resolves_in_doubt() {
        let mut node = node(1);
        let (prepare, vote) = prepare_of_put_b();
        check(
            &mut node,
            vec![
                (
                    0,
                    receive(
                        0,
                        Msg::Prepare {
                            tx: tx(0),
                            ops: vec![(1, put(1, "b"))],
                            expires_ms: u64::MAX,
                        },
                    ),
                    vec![Action::Persist {
                        record: Some(prepare.clone()),
                        then: vote.clone(),
                    }],
                ),
                (
                    1,
                    Event::Durable(vote),
                    vec![send(
                        0,
                        Msg::Vote {
                            tx: tx(0),
                            vote: Ok(vec![(1, OpResult::Put { version: 1 })]),
                        },
                    )],
                ),
                (
                    2,
                    Event::Begin {
                        client: 1,
                        ops: vec![Op::Get { key: key_on(1) }],
                    },
                    vec![Action::Reply {
                        client: 1,
                        outcome: Err(TxError::Conflict),
                    }],
                ),
                (50, Event::Tick, vec![]),
                (51, Event::Tick, vec![send(0, Msg::Status { tx: tx(0) })]),
            ],
        );
        // A restart with only the prepare durable: in doubt, locked, asking at once.
        let (mut node, actions) = Node::recover(1, SHARDS, limits(), &[prepare], 100);
        assert_eq!(actions[1..], [send(0, Msg::Status { tx: tx(0) })]);
        assert_eq!(node.partition.locked_by(&key_on(1)), Some(tx(0)));
        let commit = Record::Commit {
            tx: Some(tx(0)),
            version: 1,
            writes: vec![(key_on(1), Some(Bytes::from_static(b"b")))],
        };
        check(
            &mut node,
            vec![
                (
                    101,
                    receive(
                        0,
                        Msg::Decide {
                            tx: tx(0),
                            commit: true,
                        },
                    ),
                    vec![Action::Persist {
                        record: Some(commit),
                        then: Then::Ack { tx: tx(0) },
                    }],
                ),
                // A repeated commit is acknowledged behind a barrier, never ahead of the log.
                (
                    102,
                    receive(
                        0,
                        Msg::Decide {
                            tx: tx(0),
                            commit: true,
                        },
                    ),
                    vec![Action::Persist {
                        record: None,
                        then: Then::Ack { tx: tx(0) },
                    }],
                ),
                (
                    103,
                    Event::Durable(Then::Ack { tx: tx(0) }),
                    vec![send(0, Msg::Ack { tx: tx(0) })],
                ),
                (200, Event::Tick, vec![]),
            ],
        );
        assert!(node.is_quiet());
    }

    #[test]
    fn forwarded_single_shard_transactions_relay_or_time_out_unknown() {
        let mut owner = node(1);
        let mut node = node(0);
        // Sent at `at`, expiring at the coordinator's deadline (prepare_timeout_ms, 50).
        let run = |seq, at: u64| Msg::Run {
            tx: tx(seq),
            ops: vec![put(1, "b")],
            expires_ms: at + 50,
        };
        let outcome = Ok(vec![OpResult::Put { version: 3 }]);
        check(
            &mut node,
            vec![
                (
                    0,
                    Event::Begin {
                        client: 1,
                        ops: vec![put(1, "b")],
                    },
                    vec![send(1, run(0, 0))],
                ),
                (
                    1,
                    receive(
                        1,
                        Msg::RunResult {
                            tx: tx(0),
                            outcome: outcome.clone(),
                        },
                    ),
                    vec![Action::Reply {
                        client: 1,
                        outcome: outcome.clone(),
                    }],
                ),
                (
                    2,
                    Event::Begin {
                        client: 2,
                        ops: vec![put(1, "b")],
                    },
                    vec![send(1, run(1, 2))],
                ),
                (
                    52,
                    Event::Tick,
                    vec![Action::Reply {
                        client: 2,
                        outcome: Err(TxError::Unknown),
                    }],
                ),
                (
                    53,
                    receive(1, Msg::RunResult { tx: tx(1), outcome }),
                    vec![],
                ),
                // A run that only reads changes nothing however late it runs: 503, not 504.
                (
                    60,
                    Event::Begin {
                        client: 3,
                        ops: vec![Op::Get { key: key_on(1) }],
                    },
                    vec![send(
                        1,
                        Msg::Run {
                            tx: tx(2),
                            ops: vec![Op::Get { key: key_on(1) }],
                            expires_ms: 110,
                        },
                    )],
                ),
                (
                    110,
                    Event::Tick,
                    vec![Action::Reply {
                        client: 3,
                        outcome: Err(TxError::Unavailable),
                    }],
                ),
            ],
        );
        assert!(node.is_quiet());

        // The owner's side: a run that arrives before its expiry runs; one that arrives after it
        // (its client has been answered `Unknown`), or at it, is refused unrun.
        let from_0 = |seq| TxId {
            coordinator: 0,
            epoch: 1,
            seq,
        };
        let ran = owner.on_event(
            receive(
                0,
                Msg::Run {
                    tx: from_0(0),
                    ops: vec![put(1, "b")],
                    expires_ms: 50,
                },
            ),
            49,
        );
        assert!(
            ran.iter().any(|a| matches!(a, Action::Persist { .. })),
            "{ran:?}"
        );
        let late = Msg::Run {
            tx: from_0(1),
            ops: vec![put(1, "c")],
            expires_ms: 50,
        };
        assert_eq!(
            owner.on_event(receive(0, late), 50),
            vec![send(
                0,
                Msg::RunResult {
                    tx: from_0(1),
                    outcome: Err(TxError::Unavailable),
                },
            )]
        );
        assert_eq!(owner.counters.runs_expired, 1);
    }

    /// A prepare read at or after its expiry (the coordinator's deadline for its votes) is
    /// refused unprepared with a no vote, and locks nothing; a duplicate of one prepared before
    /// its expiry is not refused (its yes vote stands). Found in review: a participant stopped
    /// for a while prepared every stale prepare it then read.
    #[test]
    fn a_prepare_read_after_its_expiry_is_refused_unprepared() {
        let mut participant = node(1);
        let from_0 = |seq| TxId {
            coordinator: 0,
            epoch: 1,
            seq,
        };
        let prepare = |seq, expires_ms| Msg::Prepare {
            tx: from_0(seq),
            ops: vec![(0, put(1, "v"))],
            expires_ms,
        };
        assert_eq!(
            participant.on_event(receive(0, prepare(0, 50)), 50),
            vec![send(
                0,
                Msg::Vote {
                    tx: from_0(0),
                    vote: Err(TxError::Unavailable),
                },
            )]
        );
        assert_eq!(participant.counters.prepares_expired, 1);
        assert!(!participant.partition.is_prepared(from_0(0)));
        let on_time = participant.on_event(receive(0, prepare(1, 50)), 49);
        assert!(
            matches!(on_time.as_slice(), [Action::Persist { .. }]),
            "{on_time:?}"
        );
        assert!(participant.partition.is_prepared(from_0(1)));
        assert_eq!(participant.on_event(receive(0, prepare(1, 50)), 60), vec![]);
        assert_eq!(participant.counters.prepares_expired, 1);
    }
}
