//! Two-phase commit as pure state machines: a shard's `Node` (its partition, its coordinator and its participant) takes events (client requests, messages, durable records, ticks) with the time, and returns actions (send, persist-then-tell-me, reply); never does IO, never waits, never reads a clock.
//!
//! Protocol (presumed abort, no waiting on locks):
//! 1. The shard that receives a transaction splits its ops by `owner`. All on this shard: run in
//!    one step (`Partition::run_local`), reply once the record is durable. All on one other shard:
//!    forward it (`Run`), relay the `RunResult`. Several shards: the coordinator sends `Prepare`.
//! 2. A participant locks and validates its part; a conflict, failed check or bound votes no at
//!    once (nothing to undo); otherwise it makes its `Prepare` record durable, then votes yes.
//! 3. All yes: the coordinator makes its `Decision` durable, replies to the client, and sends
//!    `Decide(commit)`. Any no, or no vote before `prepare_timeout_ms`: it sends `Decide(abort)`,
//!    replies, and forgets the transaction (no record: absence of a decision means abort).
//! 4. A participant applies on commit, makes its `Commit` durable, and acks; the coordinator
//!    resends `Decide(commit)` every `resolve_interval_ms` until every participant acked, then
//!    writes `End` and forgets.
//! 5. A prepared participant that hears nothing for `prepare_timeout_ms`, or finds the
//!    transaction in doubt after a restart, asks `Status` every `resolve_interval_ms`. The
//!    coordinator answers from its decisions; a transaction still preparing is aborted on the spot;
//!    one it has no decision for (it restarted, or forgot an abort) is an abort.
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
    /// A single-shard transaction forwarded to its owner.
    Run {
        tx: TxId,
        ops: Vec<Op>,
    },
    RunResult {
        tx: TxId,
        outcome: Outcome,
    },
    /// A participant's ops, with their indices in the client's transaction.
    Prepare {
        tx: TxId,
        ops: Vec<(usize, Op)>,
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
    Decided {
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
    pub coordinated: u64,
    pub committed: u64,
    pub aborted: u64,
    pub timeouts: u64,
    pub unknown: u64,
    pub busy: u64,
}

enum Phase {
    Forwarded,
    Preparing { waiting: BTreeSet<usize> },
    Deciding,
}

struct Active {
    client: ClientId,
    participants: Vec<usize>,
    phase: Phase,
    deadline_ms: u64,
    results: Vec<Option<OpResult>>,
}

struct Decided {
    participants: Vec<usize>,
    unacked: BTreeSet<usize>,
    resend_at_ms: u64,
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
    active: BTreeMap<TxId, Active>,
    decided: BTreeMap<TxId, Decided>,
    /// Prepared parts that voted yes (or are in doubt): when to ask their coordinator.
    query_at_ms: BTreeMap<TxId, u64>,
    pub counters: CoordinatorCounters,
}

impl Node {
    /// A shard's node rebuilt from its snapshot records followed by its log records (both empty on
    /// first start), and the actions that start it: persist the new epoch, resend open commit
    /// decisions, ask the coordinators of in-doubt transactions.
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
        for record in records {
            match record {
                Record::Epoch { epoch: e } => epoch = epoch.max(*e),
                Record::Decision {
                    tx,
                    commit: true,
                    participants,
                } => {
                    let participants: Vec<usize> =
                        participants.iter().map(|&p| p as usize).collect();
                    let decision = Decided {
                        unacked: participants.iter().copied().collect(),
                        participants,
                        resend_at_ms: now_ms + limits.resolve_interval_ms,
                    };
                    decided.insert(*tx, decision);
                }
                Record::End { tx } => {
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
            for &to in &decision.participants {
                actions.push(Action::Send {
                    to,
                    msg: Msg::Decide {
                        tx: *tx,
                        commit: true,
                    },
                });
            }
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
            active: BTreeMap::new(),
            decided,
            query_at_ms,
            counters: CoordinatorCounters::default(),
        };
        (node, actions)
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    /// True once this run's epoch is durable: until then every transaction answers Busy.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// True when the node holds nothing open: no transaction it coordinates, no commit decision
    /// awaiting acks, no prepared part.
    pub fn is_quiet(&self) -> bool {
        self.active.is_empty() && self.decided.is_empty() && self.partition.prepared().count() == 0
    }

    /// A complete snapshot (partition, in-doubt parts, epoch, open and deciding commit
    /// decisions). Take it in one step; once it is durable, a new log segment replaces the old.
    pub fn snapshot(&self) -> Vec<Record> {
        let mut records = self.partition.snapshot();
        records.push(Record::Epoch { epoch: self.epoch });
        let deciding = self
            .active
            .iter()
            .filter(|(_, active)| matches!(active.phase, Phase::Deciding))
            .map(|(tx, active)| (tx, &active.participants));
        let decided = self.decided.iter().map(|(tx, d)| (tx, &d.participants));
        for (tx, participants) in deciding.chain(decided) {
            records.push(decision_record(*tx, participants));
        }
        snapshot_close(&mut records);
        records
    }

    pub fn on_event(&mut self, event: Event, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Begin { client, ops } => self.begin(client, ops, now_ms, &mut actions),
            Event::Receive { from, msg } => self.receive(from, msg, &mut actions),
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
        if participants == [self.shard] {
            self.counters.local += 1;
            let ops = parts.into_values().flatten().map(|(_, op)| op).collect();
            let then = |outcome| Then::Reply { client, outcome };
            self.run_local(ops, then, out);
            return;
        }
        // Open commit decisions count: a participant down for long fills the table, and new
        // multi-shard work waits for it instead of growing memory.
        if self.active.len() + self.decided.len() >= self.limits.coordinated_max {
            return self.busy(client, out);
        }
        let tx = TxId {
            coordinator: self.shard as u32,
            epoch: self.epoch,
            seq: self.seq_next,
        };
        self.seq_next += 1;
        let phase = if participants.len() == 1 {
            self.counters.forwarded += 1;
            let ops = parts.into_values().flatten().map(|(_, op)| op).collect();
            out.push(Action::Send {
                to: participants[0],
                msg: Msg::Run { tx, ops },
            });
            Phase::Forwarded
        } else {
            self.counters.coordinated += 1;
            for (to, ops) in parts {
                out.push(Action::Send {
                    to,
                    msg: Msg::Prepare { tx, ops },
                });
            }
            Phase::Preparing {
                waiting: participants.iter().copied().collect(),
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
            Err(error @ (TxError::Conflict | TxError::Busy)) => {
                self.durable(then(Err(error)), 0, out)
            }
            Err(error) => out.push(Action::Persist {
                record: None,
                then: then(Err(error)),
            }),
        }
    }

    fn receive(&mut self, from: usize, msg: Msg, out: &mut Vec<Action>) {
        match msg {
            Msg::Run { tx, ops } => {
                let then = |outcome| Then::RunResult {
                    to: from,
                    tx,
                    outcome,
                };
                self.run_local(ops, then, out);
            }
            Msg::Prepare { tx, ops } => self.on_prepare(tx, ops, out),
            Msg::Decide { tx, commit } => self.on_decide(tx, commit, out),
            Msg::RunResult { tx, outcome } => {
                let forwarded = self
                    .active
                    .get(&tx)
                    .is_some_and(|active| matches!(active.phase, Phase::Forwarded));
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
            Err(error @ (TxError::Conflict | TxError::Busy)) => out.push(Action::Send {
                to: tx.coordinator as usize,
                msg: Msg::Vote {
                    tx,
                    vote: Err(error),
                },
            }),
            Err(error) => out.push(Action::Persist {
                record: None,
                then: then(Err(error)),
            }),
        }
    }

    fn on_decide(&mut self, tx: TxId, commit: bool, out: &mut Vec<Action>) {
        self.query_at_ms.remove(&tx);
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

    // ---- coordinator ----

    fn on_vote(
        &mut self,
        tx: TxId,
        from: usize,
        vote: Result<Vec<(usize, OpResult)>, TxError>,
        out: &mut Vec<Action>,
    ) {
        let Some(active) = self.active.get_mut(&tx) else {
            if vote.is_ok() && !self.decided.contains_key(&tx) {
                // A late yes for a transaction already aborted and forgotten.
                out.push(decide(tx, from, false));
            }
            return;
        };
        let Phase::Preparing { waiting } = &mut active.phase else {
            return;
        };
        if !waiting.remove(&from) {
            return;
        }
        let results = match vote {
            Err(error) => return self.abort(tx, error, out),
            Ok(results) => results,
        };
        for (index, result) in results {
            assert!(active.results[index].is_none(), "op {index} answered twice");
            active.results[index] = Some(result);
        }
        if waiting.is_empty() {
            active.phase = Phase::Deciding;
            out.push(Action::Persist {
                record: Some(decision_record(tx, &active.participants)),
                then: Then::Decided { tx },
            });
        }
    }

    fn abort(&mut self, tx: TxId, error: TxError, out: &mut Vec<Action>) {
        let active = self
            .active
            .remove(&tx)
            .expect("aborting an active transaction");
        assert!(
            matches!(active.phase, Phase::Preparing { .. }),
            "abort after the decision"
        );
        self.counters.aborted += 1;
        for &to in &active.participants {
            out.push(decide(tx, to, false));
        }
        out.push(Action::Reply {
            client: active.client,
            outcome: Err(error),
        });
    }

    fn decided(&mut self, tx: TxId, now_ms: u64, out: &mut Vec<Action>) {
        let active = self.active.remove(&tx).expect("a deciding transaction");
        assert!(matches!(active.phase, Phase::Deciding));
        self.counters.committed += 1;
        for &to in &active.participants {
            out.push(decide(tx, to, true));
        }
        let results = active
            .results
            .into_iter()
            .map(|result| result.expect("every op has a result after all votes"))
            .collect();
        out.push(Action::Reply {
            client: active.client,
            outcome: Ok(results),
        });
        let decision = Decided {
            unacked: active.participants.iter().copied().collect(),
            participants: active.participants,
            resend_at_ms: now_ms + self.limits.resolve_interval_ms,
        };
        self.decided.insert(tx, decision);
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
        if self.decided.contains_key(&tx) {
            out.push(decide(tx, from, true));
            return;
        }
        match self.active.get(&tx).map(|active| &active.phase) {
            // The decision is on its way to the disk; the participant asks again.
            Some(Phase::Deciding) => {}
            Some(Phase::Preparing { .. }) => {
                self.counters.timeouts += 1;
                self.abort(tx, TxError::Unavailable, out);
            }
            Some(Phase::Forwarded) => {}
            // No decision: it aborted, or this node restarted before deciding. Presumed abort.
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
            Then::Decided { tx } => self.decided(tx, now_ms, out),
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
                Phase::Preparing { .. } => {
                    self.counters.timeouts += 1;
                    self.abort(tx, TxError::Unavailable, out);
                }
                Phase::Forwarded => {
                    self.counters.unknown += 1;
                    let active = self.active.remove(&tx).expect("listed");
                    out.push(Action::Reply {
                        client: active.client,
                        outcome: Err(TxError::Unknown),
                    });
                }
                Phase::Deciding => {}
            }
        }
        for (tx, decision) in &mut self.decided {
            if decision.resend_at_ms <= now_ms {
                decision.resend_at_ms = now_ms + self.limits.resolve_interval_ms;
                out.extend(decision.unacked.iter().map(|&to| decide(*tx, to, true)));
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

fn decision_record(tx: TxId, participants: &[usize]) -> Record {
    Record::Decision {
        tx,
        commit: true,
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

    #[test]
    fn coordinator_commits_after_all_votes_and_a_durable_decision() {
        let mut node = node(0);
        let ops = vec![put(0, "a"), put(1, "b")];
        let yes = |index, version| Ok(vec![(index, OpResult::Put { version })]);
        let decision = Record::Decision {
            tx: tx(0),
            commit: true,
            participants: vec![0, 1],
        };
        let committed = vec![OpResult::Put { version: 1 }, OpResult::Put { version: 5 }];
        check(
            &mut node,
            vec![
                (
                    1,
                    Event::Begin { client: 3, ops },
                    vec![
                        send(
                            0,
                            Msg::Prepare {
                                tx: tx(0),
                                ops: vec![(0, put(0, "a"))],
                            },
                        ),
                        send(
                            1,
                            Msg::Prepare {
                                tx: tx(0),
                                ops: vec![(1, put(1, "b"))],
                            },
                        ),
                    ],
                ),
                (
                    2,
                    receive(
                        1,
                        Msg::Vote {
                            tx: tx(0),
                            vote: yes(1, 5),
                        },
                    ),
                    vec![],
                ),
                // A participant asking before the decision is durable hears nothing yet...
                (
                    3,
                    receive(
                        0,
                        Msg::Vote {
                            tx: tx(0),
                            vote: yes(0, 1),
                        },
                    ),
                    vec![Action::Persist {
                        record: Some(decision),
                        then: Then::Decided { tx: tx(0) },
                    }],
                ),
                (4, receive(1, Msg::Status { tx: tx(0) }), vec![]),
                (
                    5,
                    Event::Durable(Then::Decided { tx: tx(0) }),
                    vec![
                        send(
                            0,
                            Msg::Decide {
                                tx: tx(0),
                                commit: true,
                            },
                        ),
                        send(
                            1,
                            Msg::Decide {
                                tx: tx(0),
                                commit: true,
                            },
                        ),
                        Action::Reply {
                            client: 3,
                            outcome: Ok(committed),
                        },
                    ],
                ),
                // ...and the commit afterwards; unacknowledged participants hear it again.
                (
                    6,
                    receive(1, Msg::Status { tx: tx(0) }),
                    vec![send(
                        1,
                        Msg::Decide {
                            tx: tx(0),
                            commit: true,
                        },
                    )],
                ),
                (7, receive(0, Msg::Ack { tx: tx(0) }), vec![]),
                (
                    30,
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
                    31,
                    receive(1, Msg::Ack { tx: tx(0) }),
                    vec![Action::Persist {
                        record: Some(Record::End { tx: tx(0) }),
                        then: Then::Nothing,
                    }],
                ),
            ],
        );
        assert!(node.is_quiet());
    }

    #[test]
    fn coordinator_aborts_on_a_no_a_timeout_or_a_status_query() {
        let failed = TxError::Failed {
            op_index: 1,
            reason: crate::txn::op::FailReason::NotInteger,
        };
        let aborts = |seq, client, error| {
            vec![
                send(
                    0,
                    Msg::Decide {
                        tx: tx(seq),
                        commit: false,
                    },
                ),
                send(
                    1,
                    Msg::Decide {
                        tx: tx(seq),
                        commit: false,
                    },
                ),
                Action::Reply {
                    client,
                    outcome: Err(error),
                },
            ]
        };
        let mut node = node(0);
        let begin = |client| Event::Begin {
            client,
            ops: vec![put(0, "a"), put(1, "b")],
        };
        let prepares = |seq| {
            vec![
                send(
                    0,
                    Msg::Prepare {
                        tx: tx(seq),
                        ops: vec![(0, put(0, "a"))],
                    },
                ),
                send(
                    1,
                    Msg::Prepare {
                        tx: tx(seq),
                        ops: vec![(1, put(1, "b"))],
                    },
                ),
            ]
        };
        check(
            &mut node,
            vec![
                (0, begin(1), prepares(0)),
                (
                    1,
                    receive(
                        1,
                        Msg::Vote {
                            tx: tx(0),
                            vote: Err(failed.clone()),
                        },
                    ),
                    aborts(0, 1, failed),
                ),
                (2, begin(2), prepares(1)),
                (51, Event::Tick, vec![]),
                (52, Event::Tick, aborts(1, 2, TxError::Unavailable)),
                (53, begin(3), prepares(2)),
                (
                    54,
                    receive(1, Msg::Status { tx: tx(2) }),
                    aborts(2, 3, TxError::Unavailable),
                ),
                // Presumed abort: no decision known, and a late yes vote, both hear abort.
                (
                    55,
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
                    56,
                    receive(
                        1,
                        Msg::Vote {
                            tx: tx(1),
                            vote: Ok(vec![]),
                        },
                    ),
                    vec![send(
                        1,
                        Msg::Decide {
                            tx: tx(1),
                            commit: false,
                        },
                    )],
                ),
            ],
        );
        assert!(node.is_quiet());
    }

    #[test]
    fn participant_votes_after_its_prepare_is_durable_and_resolves_in_doubt() {
        let mut node = node(1);
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
        let mut node = node(0);
        let run = |seq| Msg::Run {
            tx: tx(seq),
            ops: vec![put(1, "b")],
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
                    vec![send(1, run(0))],
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
                    vec![send(1, run(1))],
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
            ],
        );
        assert!(node.is_quiet());
    }
}
