//! Typed cross-shard request/reply over glommio's channel mesh, with deadlines and in-flight bounds; never shares memory between shards.
//!
//! Each message class (stats today; sessions and transactions later) gets its own `Mesh`, so a
//! queue of one class can never hold up another: cross-shard waits form a DAG by class.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::{GlommioError, ResourceType};

/// Why a cross-shard call produced no reply. `Overloaded`, `Expired` and `Closed` are refusals:
/// the request never reached a handler, so a retry is safe. `Timeout` is not: the request may
/// have been served. It was served, if at all, before its expiry (`EXPIRY_OF_DEADLINE`), which
/// is before the caller gave up: whatever the caller does next comes after it (found in review:
/// a session write answered 503 was applied after a later write that was acknowledged). That
/// holds for a handler that does its work when first polled, as every handler here does; one
/// that waits before it acts must check the expiry again itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MeshError {
    /// The caller already has `inflight_max` calls outstanding, or the callee serves that many
    /// (it answers so without running the handler).
    Overloaded,
    /// The callee read the request after its expiry and refused it unserved.
    Expired,
    /// No reply before the deadline; the callee may have served the request (before its
    /// expiry), never later.
    Timeout,
    /// The channel to the peer is closed (it has stopped, during a drain): nothing was sent.
    Closed,
}

/// What travels between two shards.
pub enum Envelope<Req, Resp> {
    Request {
        id: u64,
        body: Req,
        /// When the callee must have started it, else it refuses it unserved (`Expired`). None:
        /// from `call_posted`, served whenever it arrives and past the callee's bound too.
        expires: Option<Instant>,
    },
    /// A one-way message: the handler runs, nothing is sent back.
    Oneway { body: Req },
    Reply {
        id: u64,
        body: Result<Resp, MeshError>,
    },
}

type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;
/// Envelopes waiting for room on one peer's channel, each with when it was queued.
type Backlog<Req, Resp> = VecDeque<(Instant, Envelope<Req, Resp>)>;
/// Serves a request addressed to this shard: `(caller shard, request) -> reply`.
pub type Handler<Req, Resp> = Rc<dyn Fn(usize, Req) -> LocalFuture<Resp>>;

/// Mesh settings, the same on every shard.
#[derive(Clone, Copy, Debug)]
pub struct MeshLimits {
    pub inflight_max: usize,
    pub deadline: Duration,
}

/// Counters of one shard's side of one mesh.
#[derive(Default, Debug)]
pub struct MeshCounters {
    pub calls_sent: Cell<u64>,
    pub calls_served: Cell<u64>,
    pub overloaded: Cell<u64>,
    pub timeouts: Cell<u64>,
    /// Requests refused unserved for their expiry: read late by this shard, or never sent from
    /// its backlog.
    pub expired: Cell<u64>,
    /// One-way messages dropped because `BACKLOG_MAX` were already waiting for room to their
    /// peer, and replies dropped from the backlog after their caller's deadline.
    pub dropped: Cell<u64>,
}

/// Envelopes (one-way messages, replies, `call_posted` requests) that may wait, per peer, for
/// room on its full channel, behind which one-way messages are dropped (a protocol on them
/// tolerates a lost one; replies and posted calls are bounded by the calls they answer or end).
/// Unbounded, each waited in a task of its own: 1.5 MB a second of transaction messages piled
/// up while a peer's executor was stopped, and the peer then worked through thousands of
/// stale ones (found in review). As many again as the channel holds.
pub const BACKLOG_MAX: usize = crate::config::limits::MESH_CHANNEL_CAPACITY;

/// While a peer's channel is full, its backlog tries again after this, doubling up to
/// `BACKLOG_RETRY_MAX` (`drain_backlog`): a busy peer's room is taken within a millisecond or
/// two, and a stopped one costs ~60 tries a second until it is found closed.
const BACKLOG_RETRY_MIN: Duration = Duration::from_millis(1);
/// `close` waits at most this many milliseconds for the serving tasks to drop their receivers.
const CLOSE_WAITS_MAX: usize = 100;
const BACKLOG_RETRY_MAX: Duration = Duration::from_millis(16);

/// A request expires at this fraction of its call's deadline: a callee that reads it later
/// refuses it unserved, and the rest of the deadline is for the reply of one served just in
/// time to come back.
pub const EXPIRY_OF_DEADLINE: f64 = 0.75;

/// One shard's endpoint of a mesh. Not `Send`: it lives and dies on its shard.
pub struct Mesh<Req: Send + 'static, Resp: Send + 'static> {
    shard: usize,
    shard_count: usize,
    senders: Senders<Envelope<Req, Resp>>,
    pending: RefCell<HashMap<u64, Rc<ReplySlot<Resp>>>>,
    id_next: Cell<u64>,
    outgoing: Cell<usize>,
    incoming: Cell<usize>,
    limits: MeshLimits,
    handler: Handler<Req, Resp>,
    /// Set by `close`: the serving tasks end and drop their receivers.
    closed: Cell<bool>,
    /// Each serving task's waker, by the peer it reads from, for `close` to wake.
    serve_wakers: RefCell<Vec<Option<Waker>>>,
    /// Serving tasks that still hold their receiver.
    serving: Cell<usize>,
    /// By peer: envelopes waiting for room on its channel, in the order they were posted, and
    /// when each was queued; sent by one task while `draining` (`post`).
    backlog: RefCell<Vec<Backlog<Req, Resp>>>,
    draining: Vec<Cell<bool>>,
    pub counters: MeshCounters,
}

impl<Req: Send + 'static, Resp: Send + 'static> Mesh<Req, Resp> {
    /// Joins the mesh (every shard must) and starts serving requests from the other shards.
    /// Shard `i` must be the `i`-th executor created, so that its mesh peer id is `i`.
    pub async fn join(
        builder: MeshBuilder<Envelope<Req, Resp>, glommio::channels::channel_mesh::Full>,
        shard: usize,
        limits: MeshLimits,
        handler: Handler<Req, Resp>,
    ) -> Rc<Self> {
        let shard_count = builder.nr_peers();
        let (senders, receivers) = builder
            .join()
            .await
            .expect("every shard joins the mesh once");
        assert_eq!(
            senders.peer_id(),
            shard,
            "mesh peer ids follow executor creation order"
        );
        let mesh = Rc::new(Mesh {
            shard,
            shard_count,
            senders,
            pending: RefCell::new(HashMap::new()),
            id_next: Cell::new(0),
            outgoing: Cell::new(0),
            incoming: Cell::new(0),
            limits,
            handler,
            closed: Cell::new(false),
            serve_wakers: RefCell::new(vec![None; shard_count]),
            serving: Cell::new(0),
            backlog: RefCell::new((0..shard_count).map(|_| VecDeque::new()).collect()),
            draining: (0..shard_count).map(|_| Cell::new(false)).collect(),
            counters: MeshCounters::default(),
        });
        Self::serve(&mesh, receivers);
        mesh
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Leaves the mesh when the shard stops: a peer's call or message to this shard then fails
    /// at once with `Closed` instead of waiting out its deadline. glommio never drops the tasks
    /// an executor leaves pending, so without this a stopped shard's receivers stay open and
    /// its channels fill unread. Requests already queued here get no reply (their callers time
    /// out), and neither do this shard's own calls still waiting. Returns once the serving tasks
    /// have dropped their receivers (an executor whose main task ends runs no more tasks).
    pub async fn close(&self) {
        self.closed.set(true);
        for waker in self.serve_wakers.borrow_mut().iter_mut() {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
        // Peers' streams from this shard end, and so do this shard's posts waiting for room.
        self.senders.close();
        // Until the serving tasks have dropped their receivers: one yield was not always enough
        // (found by a test: a peer's calls then waited out their deadline, not failing at once).
        for _ in 0..CLOSE_WAITS_MAX {
            if self.serving.get() == 0 {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Puts `envelope` on the channel to `to` without waiting: sent, given back when the channel
    /// is full, or dropped when it is closed (the peer has stopped).
    fn try_post(&self, to: usize, envelope: Envelope<Req, Resp>) -> Post<Req, Resp> {
        match self.senders.try_send_to(to, envelope) {
            Ok(()) => Post::Sent,
            Err(GlommioError::WouldBlock(ResourceType::Channel(envelope))) => Post::Full(envelope),
            Err(GlommioError::Closed(ResourceType::Channel(envelope))) => {
                Post::Closed(Some(envelope))
            }
            Err(GlommioError::Closed(_)) => Post::Closed(None),
            // glommio fails a send otherwise only for this shard or one outside the mesh.
            Err(_) => unreachable!("a mesh post to shard {to} from shard {}", self.shard),
        }
    }

    /// `post_or_closed` for an envelope whose sender does not wait on the outcome (one-way
    /// messages, replies): a closed channel drops it (its caller, if any, is gone or ends at
    /// its deadline).
    fn post(self: &Rc<Self>, to: usize, envelope: Envelope<Req, Resp>) {
        let _ = self.post_or_closed(to, envelope);
    }

    /// Posts from this turn when there is room and nothing waits before it, else queues it
    /// (`backlog`): everything sent to one peer, calls' requests included, arrives in the order
    /// it was posted (found in review: one that waited for room could be overtaken by a later
    /// one that found it). Err(Closed) when the peer has stopped (then or, queued, once the
    /// drainer finds it: `fail_queued`, which fails a queued call).
    fn post_or_closed(
        self: &Rc<Self>,
        to: usize,
        envelope: Envelope<Req, Resp>,
    ) -> Result<(), MeshError> {
        if self.draining[to].get() {
            self.enqueue(to, envelope);
            return Ok(());
        }
        match self.try_post(to, envelope) {
            Post::Sent => Ok(()),
            Post::Full(envelope) => {
                self.enqueue(to, envelope);
                Ok(())
            }
            Post::Closed(_) => Err(MeshError::Closed),
        }
    }

    /// Queues `envelope` for `to` behind what waits there, starting the task that sends them.
    /// A one-way message finds room for `BACKLOG_MAX`, else it is dropped and counted.
    fn enqueue(self: &Rc<Self>, to: usize, envelope: Envelope<Req, Resp>) {
        {
            let queue = &mut self.backlog.borrow_mut()[to];
            if queue.len() >= BACKLOG_MAX && matches!(envelope, Envelope::Oneway { .. }) {
                self.counters.dropped.set(self.counters.dropped.get() + 1);
                return;
            }
            queue.push_back((Instant::now(), envelope));
        }
        if !self.draining[to].replace(true) {
            glommio::spawn_local(Self::drain_backlog(self.clone(), to)).detach();
        }
    }

    /// Sends the envelopes queued for `to`, in order, as its channel makes room, trying again
    /// every `BACKLOG_RETRY_MIN` doubling to `BACKLOG_RETRY_MAX` while it is full: glommio 0.9's
    /// send waits for room or for *this* side to close, never for a receiver that went away, so
    /// awaiting it held a stopped peer's queue, and the callers in it, for good (found in
    /// review). A reply older than the deadline is dropped (its caller has given up); a request
    /// past its expiry is refused at once (`Expired`: it was never sent). When the peer has
    /// stopped, the calls queued for it fail with `Closed` and the rest is dropped.
    async fn drain_backlog(mesh: Rc<Self>, to: usize) {
        loop {
            let next = mesh.backlog.borrow_mut()[to].pop_front();
            let Some((queued, mut envelope)) = next else {
                mesh.draining[to].set(false);
                return;
            };
            match &envelope {
                Envelope::Reply { .. } if queued.elapsed() >= mesh.limits.deadline => {
                    mesh.counters.dropped.set(mesh.counters.dropped.get() + 1);
                    continue;
                }
                Envelope::Request {
                    id,
                    expires: Some(at),
                    ..
                } if Instant::now() > *at => {
                    // Its caller may have timed out already (counted there, not twice).
                    if mesh.pending.borrow().contains_key(id) {
                        mesh.counters.expired.set(mesh.counters.expired.get() + 1);
                    }
                    mesh.deliver(*id, Err(MeshError::Expired));
                    continue;
                }
                _ => {}
            }
            let mut pause = BACKLOG_RETRY_MIN;
            loop {
                match mesh.try_post(to, envelope) {
                    Post::Sent => break,
                    Post::Full(again) => {
                        envelope = again;
                        glommio::timer::sleep(pause).await;
                        pause = (pause * 2).min(BACKLOG_RETRY_MAX);
                    }
                    Post::Closed(envelope) => {
                        mesh.fail_queued(to, envelope);
                        mesh.draining[to].set(false);
                        return;
                    }
                }
            }
        }
    }

    /// The peer `to` has stopped: every call whose request is queued for it (`first` and the
    /// backlog) fails with `Closed` now; the rest is dropped.
    fn fail_queued(&self, to: usize, first: Option<Envelope<Req, Resp>>) {
        let queued = std::mem::take(&mut self.backlog.borrow_mut()[to]);
        for envelope in first.into_iter().chain(queued.into_iter().map(|(_, e)| e)) {
            if let Envelope::Request { id, .. } = envelope {
                self.deliver(id, Err(MeshError::Closed));
            }
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    /// Sends `req` to shard `to` and waits for its reply, at most the mesh deadline. A call to
    /// this shard runs the handler in place, without a message.
    pub async fn call(self: &Rc<Self>, to: usize, req: Req) -> Result<Resp, MeshError> {
        assert!(to < self.shard_count);
        if to == self.shard {
            return Ok((self.handler)(self.shard, req).await);
        }
        if self.outgoing.get() >= self.limits.inflight_max {
            self.counters
                .overloaded
                .set(self.counters.overloaded.get() + 1);
            return Err(MeshError::Overloaded);
        }
        let (id, slot, _guard) = self.register_call();
        let expires = Instant::now() + self.limits.deadline.mul_f64(EXPIRY_OF_DEADLINE);
        // A closed channel fails the call at once (the guard takes back its slot and count), as
        // one found closed while the request waited for room (`fail_queued`).
        let exchange = async {
            let request = Envelope::Request {
                id,
                body: req,
                expires: Some(expires),
            };
            self.post_or_closed(to, request)?;
            WaitReply { slot: &slot }.await
        };
        self.within_deadline(exchange).await
    }

    /// `call` for a request that must reach its peer: one that ends something the peer holds for
    /// this shard (a login attempt counted in flight), whose loss would leave it held. It is
    /// never refused at an in-flight bound, this shard's or the peer's (it counts towards them,
    /// and the number of such calls is bounded by what they end), and a full channel does not
    /// drop it at the deadline: it is posted at once, or from a task of its own once there is
    /// room. The reply is awaited within the deadline, as in `call`; after a `Timeout` the peer
    /// serves it all the same. Only `Closed` (the peer has stopped) loses it.
    pub async fn call_posted(self: &Rc<Self>, to: usize, req: Req) -> Result<Resp, MeshError> {
        assert!(to < self.shard_count);
        if to == self.shard {
            return Ok((self.handler)(self.shard, req).await);
        }
        let (id, slot, _guard) = self.register_call();
        let request = Envelope::Request {
            id,
            body: req,
            expires: None,
        };
        self.post_or_closed(to, request)?;
        self.within_deadline(WaitReply { slot: &slot }).await
    }

    /// `exchange` (a call's post and reply) for at most the mesh deadline; `Timeout`, counted,
    /// past it.
    async fn within_deadline(
        &self,
        exchange: impl Future<Output = Result<Resp, MeshError>>,
    ) -> Result<Resp, MeshError> {
        with_deadline(self.limits.deadline, exchange)
            .await
            .unwrap_or_else(|| {
                self.counters.timeouts.set(self.counters.timeouts.get() + 1);
                Err(MeshError::Timeout)
            })
    }

    /// A new call's id and reply slot, counted as outgoing until the guard drops.
    fn register_call(&self) -> (u64, Rc<ReplySlot<Resp>>, PendingGuard<'_, Req, Resp>) {
        let id = self.id_next.get();
        self.id_next.set(id + 1);
        let slot = Rc::new(ReplySlot {
            value: RefCell::new(None),
            waker: Cell::new(None),
        });
        self.pending.borrow_mut().insert(id, slot.clone());
        self.outgoing.set(self.outgoing.get() + 1);
        self.counters
            .calls_sent
            .set(self.counters.calls_sent.get() + 1);
        (id, slot, PendingGuard { mesh: self, id })
    }

    /// Sends a one-way message to another shard; no reply, no deadline. A protocol built on it
    /// must tolerate a lost message (a closed channel drops it) and must never resend blindly.
    pub fn send(self: &Rc<Self>, to: usize, req: Req) {
        assert!(
            to < self.shard_count && to != self.shard,
            "one-way messages go to another shard"
        );
        self.counters
            .calls_sent
            .set(self.counters.calls_sent.get() + 1);
        self.post(to, Envelope::Oneway { body: req });
    }

    /// Calls every shard (this one in place) at once and returns the replies in shard order.
    pub async fn call_all(self: &Rc<Self>, req: impl Fn() -> Req) -> Vec<Result<Resp, MeshError>> {
        join_all(
            (0..self.shard_count)
                .map(|to| self.call(to, req()))
                .collect(),
        )
        .await
    }

    fn serve(mesh: &Rc<Self>, mut receivers: Receivers<Envelope<Req, Resp>>) {
        for (from, stream) in receivers.streams() {
            let mesh = mesh.clone();
            mesh.serving.set(mesh.serving.get() + 1);
            glommio::spawn_local(async move {
                let mut stream = stream;
                // Ends (dropping the receiver, which closes the channel) on `close`.
                while let Some(envelope) =
                    std::future::poll_fn(|cx| mesh.next_unless_closed(from, &mut stream, cx)).await
                {
                    match envelope {
                        Envelope::Reply { id, body } => mesh.deliver(id, body),
                        Envelope::Request { id, body, expires } => {
                            mesh.accept(from, id, body, expires)
                        }
                        Envelope::Oneway { body } => {
                            mesh.counters
                                .calls_served
                                .set(mesh.counters.calls_served.get() + 1);
                            if let Some(run) = poll_once((mesh.handler)(from, body)).err() {
                                glommio::spawn_local(run).detach();
                            }
                        }
                    }
                }
                drop(stream);
                mesh.serving.set(mesh.serving.get() - 1);
            })
            .detach();
        }
    }

    /// The next envelope from `from`, or None once the mesh is closed (or the peer closed it).
    fn next_unless_closed<S: futures_lite::Stream<Item = Envelope<Req, Resp>> + Unpin>(
        &self,
        from: usize,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Envelope<Req, Resp>>> {
        if self.closed.get() {
            return Poll::Ready(None);
        }
        let next = stream.poll_next(cx);
        if next.is_pending() {
            let mut wakers = self.serve_wakers.borrow_mut();
            let slot = &mut wakers[from];
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
        }
        next
    }

    fn deliver(&self, id: u64, body: Result<Resp, MeshError>) {
        // A reply whose caller gave up (deadline) finds no slot and is dropped.
        if let Some(slot) = self.pending.borrow_mut().remove(&id) {
            *slot.value.borrow_mut() = Some(body);
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        }
    }

    fn accept(self: &Rc<Self>, from: usize, id: u64, body: Req, expires: Option<Instant>) {
        if expires.is_some_and(|at| Instant::now() > at) {
            self.counters.expired.set(self.counters.expired.get() + 1);
            self.post(
                from,
                Envelope::Reply {
                    id,
                    body: Err(MeshError::Expired),
                },
            );
            return;
        }
        if self.incoming.get() >= self.limits.inflight_max && expires.is_some() {
            self.counters
                .overloaded
                .set(self.counters.overloaded.get() + 1);
            self.post(
                from,
                Envelope::Reply {
                    id,
                    body: Err(MeshError::Overloaded),
                },
            );
            return;
        }
        self.counters
            .calls_served
            .set(self.counters.calls_served.get() + 1);
        // Most handlers answer at once (a session lookup never waits): poll once here and reply
        // from this turn; only a handler that waits gets a task of its own.
        let reply = match poll_once((self.handler)(from, body)) {
            Ok(reply) => {
                self.post(
                    from,
                    Envelope::Reply {
                        id,
                        body: Ok(reply),
                    },
                );
                return;
            }
            Err(waiting) => waiting,
        };
        self.incoming.set(self.incoming.get() + 1);
        let mesh = self.clone();
        glommio::spawn_local(async move {
            let reply = reply.await;
            mesh.incoming.set(mesh.incoming.get() - 1);
            mesh.post(
                from,
                Envelope::Reply {
                    id,
                    body: Ok(reply),
                },
            );
        })
        .detach();
    }
}

/// What became of an envelope put on a channel without waiting.
enum Post<Req, Resp> {
    Sent,
    /// The channel has no room: the envelope, to send once it has.
    Full(Envelope<Req, Resp>),
    /// The peer has stopped: the envelope, where glommio gave it back, to drop or fail.
    Closed(Option<Envelope<Req, Resp>>),
}

struct ReplySlot<Resp> {
    value: RefCell<Option<Result<Resp, MeshError>>>,
    waker: Cell<Option<Waker>>,
}

struct WaitReply<'a, Resp> {
    slot: &'a ReplySlot<Resp>,
}

impl<Resp> Future for WaitReply<'_, Resp> {
    type Output = Result<Resp, MeshError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.slot.value.borrow_mut().take() {
            Some(value) => Poll::Ready(value),
            None => {
                self.slot.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

/// Removes a call's slot and its count however the call ends (reply, deadline, drop).
struct PendingGuard<'a, Req: Send + 'static, Resp: Send + 'static> {
    mesh: &'a Mesh<Req, Resp>,
    id: u64,
}

impl<Req: Send + 'static, Resp: Send + 'static> Drop for PendingGuard<'_, Req, Resp> {
    fn drop(&mut self) {
        self.mesh.pending.borrow_mut().remove(&self.id);
        self.mesh.outgoing.set(self.mesh.outgoing.get() - 1);
    }
}

/// Runs `fut` for at most `limit`; None when the deadline passed first.
pub async fn with_deadline<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

/// Polls a handler's future once, from the current turn: Ok with its output when it is ready at
/// once (most are: a session lookup never waits), else the future back, to run as a task of its
/// own (whose first poll registers that task's waker).
fn poll_once<T>(mut future: LocalFuture<T>) -> Result<T, LocalFuture<T>> {
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => Err(future),
    }
}

/// Polls every future until all are done; outputs in input order.
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    join_all_unpin(futures.into_iter().map(Box::pin).collect()).await
}

/// `join_all` for futures that are already `Unpin` (boxed handler futures): no second box each.
pub async fn join_all_unpin<F: Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match Pin::new(&mut *future).poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => done = false,
                }
            }
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use glommio::{LocalExecutorBuilder, Placement};

    use super::*;

    /// A shard's executor thread (unpinned, with the shard's IO memory) running `main`.
    fn shard_thread<G, F, T>(main: G) -> glommio::Result<glommio::ExecutorJoinHandle<T>, ()>
    where
        G: FnOnce() -> F + Send + 'static,
        F: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(crate::config::limits::IO_MEMORY_BYTES)
            .spawn(main)
    }

    /// A request of `BLOCK + ms` blocks its shard's thread for `ms` milliseconds before it
    /// answers: the shard reads nothing meanwhile.
    const BLOCK: u64 = 1_000_000;

    /// A request value no other test sends, and whether a handler of `two_shards` served it.
    const PROBE: u64 = 4242;
    static PROBE_SERVED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// Runs `body(mesh)` on shard 0 of a two-shard mesh whose handler on every shard answers
    /// `request * 10` after sleeping `request` milliseconds; returns what body returned.
    fn two_shards<T: Send + 'static>(
        limits: MeshLimits,
        body: impl FnOnce(Rc<Mesh<u64, u64>>) -> Pin<Box<dyn Future<Output = T>>> + Send + 'static,
    ) -> T {
        let builder = MeshBuilder::full(2, 64);
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let handler = || -> Handler<u64, u64> {
            Rc::new(|_from, ms: u64| {
                if ms == PROBE {
                    PROBE_SERVED.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                if ms >= BLOCK {
                    std::thread::sleep(Duration::from_millis(ms - BLOCK));
                }
                Box::pin(async move {
                    if ms < BLOCK {
                        glommio::timer::sleep(Duration::from_millis(ms)).await;
                    }
                    ms * 10
                })
            })
        };
        let first = {
            let builder = builder.clone();
            shard_thread(move || async move {
                let mesh = Mesh::join(builder, 0, limits, handler()).await;
                let result = body(mesh).await;
                let _ = done_tx.send(());
                result
            })
            .unwrap()
        };
        let second = shard_thread(move || async move {
            let _mesh = Mesh::join(builder, 1, limits, handler()).await;
            // Serve until shard 0 is done.
            while done_rx.try_recv().is_err() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
        })
        .unwrap();
        let result = first.join().unwrap();
        second.join().unwrap();
        result
    }

    const LIMITS: MeshLimits = MeshLimits {
        inflight_max: 4,
        deadline: Duration::from_millis(200),
    };

    #[test]
    fn calls_reach_the_other_shard_and_local_calls_run_in_place() {
        let (remote, local, sent) = two_shards(LIMITS, |mesh| {
            Box::pin(async move {
                let remote = mesh.call(1, 3).await;
                let local = mesh.call(0, 2).await;
                (remote, local, mesh.counters.calls_sent.get())
            })
        });
        assert_eq!(remote, Ok(30));
        assert_eq!(local, Ok(20));
        assert_eq!(sent, 1, "the local call sent no message");
    }

    #[test]
    fn a_call_past_its_deadline_times_out() {
        let (slow, after) = two_shards(LIMITS, |mesh| {
            Box::pin(async move {
                let slow = mesh.call(1, 1000).await;
                // The late reply is dropped; the mesh keeps working.
                let after = mesh.call(1, 1).await;
                (slow, after)
            })
        });
        assert_eq!(slow, Err(MeshError::Timeout));
        assert_eq!(after, Ok(10));
    }

    /// A request its callee reads after its expiry is refused unserved (found in review: served
    /// late, a session write answered 503 overwrote a later write that was acknowledged).
    #[test]
    fn a_request_read_after_its_expiry_is_refused_unserved() {
        let (blocked, late, after) = two_shards(LIMITS, |mesh| {
            Box::pin(async move {
                // Blocks shard 1 for 300 ms, past the 200 ms deadline: the next request waits
                // unread until long after its expiry (150 ms).
                let block = mesh.call(1, BLOCK + 300);
                let late = async {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    mesh.call(1, PROBE).await
                };
                let (blocked, late) = futures_lite::future::zip(block, late).await;
                glommio::timer::sleep(Duration::from_millis(300)).await;
                (blocked, late, mesh.call(1, 1).await)
            })
        });
        assert_eq!(blocked, Err(MeshError::Timeout));
        assert_eq!(late, Err(MeshError::Timeout));
        assert_eq!(after, Ok(10), "the mesh keeps working");
        let served = PROBE_SERVED.load(std::sync::atomic::Ordering::SeqCst);
        assert!(!served, "served after its expiry");
    }

    /// A posted call is served past both in-flight bounds.
    #[test]
    fn a_posted_call_is_never_refused_at_the_bounds() {
        let (refused, posted, late, sent) = two_shards(LIMITS, |mesh| {
            Box::pin(async move {
                // Four slow calls hold both bounds (this shard's outgoing, the peer's incoming).
                let slow: Vec<_> = (0..4).map(|_| mesh.call(1, 100)).collect();
                let (slow, (refused, posted)) = futures_lite::future::zip(join_all(slow), async {
                    (mesh.call(1, 1).await, mesh.call_posted(1, 2).await)
                })
                .await;
                assert!(slow.iter().all(|r| *r == Ok(1000)), "{slow:?}");
                let sent = mesh.counters.calls_sent.get();
                // Past its deadline (200 ms), a timeout as any call's.
                let late = mesh.call_posted(1, 300).await;
                (refused, posted, late, sent)
            })
        });
        assert_eq!(refused, Err(MeshError::Overloaded));
        assert_eq!(posted, Ok(20));
        assert_eq!(late, Err(MeshError::Timeout));
        assert_eq!(sent, 5, "the refused call was not sent");
    }

    #[test]
    fn calls_past_the_inflight_bound_are_refused_not_queued() {
        let replies = two_shards(LIMITS, |mesh| {
            Box::pin(async move { join_all((0..6).map(|_| mesh.call(1, 50)).collect()).await })
        });
        let ok = replies.iter().filter(|r| **r == Ok(500)).count();
        let refused = replies
            .iter()
            .filter(|r| **r == Err(MeshError::Overloaded))
            .count();
        assert_eq!((ok, refused), (4, 2), "{replies:?}");
    }

    /// One-way messages to a shard that reads nothing wait for room in the order they were sent,
    /// the channel's worth and `BACKLOG_MAX` more; past that they are dropped and counted (found
    /// in review: each waited in a task of its own, without bound, while a peer was stopped).
    #[test]
    fn one_way_messages_to_a_stalled_shard_wait_in_order_within_a_bound() {
        const SENT: u64 = 64 + BACKLOG_MAX as u64 + 100;
        thread_local! {
            static SERVED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
        }
        let builder = MeshBuilder::full(2, 64);
        let (done_tx, done_rx) = mpsc::channel::<()>();
        // 0 blocks the shard's thread for 300 ms; any other value is recorded.
        let handler = || -> Handler<u64, u64> {
            Rc::new(|_from, n: u64| {
                if n == 0 {
                    std::thread::sleep(Duration::from_millis(300));
                } else {
                    SERVED.with(|served| served.borrow_mut().push(n));
                }
                Box::pin(async move { n })
            })
        };
        let first = {
            let builder = builder.clone();
            shard_thread(move || async move {
                let mesh = Mesh::join(builder, 0, LIMITS, handler()).await;
                mesh.send(1, 0);
                glommio::timer::sleep(Duration::from_millis(50)).await;
                for n in 1..=SENT {
                    mesh.send(1, n);
                }
                // The stall ends; what waited is sent and served.
                glommio::timer::sleep(Duration::from_millis(1500)).await;
                let _ = done_tx.send(());
                mesh.counters.dropped.get()
            })
            .unwrap()
        };
        let second = shard_thread(move || async move {
            let _mesh = Mesh::join(builder, 1, LIMITS, handler()).await;
            while done_rx.try_recv().is_err() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            SERVED.with(|served| served.take())
        })
        .unwrap();
        let dropped = first.join().unwrap();
        let served = second.join().unwrap();
        assert!(dropped > 0, "nothing dropped: {} served", served.len());
        assert_eq!(served.len() as u64 + dropped, SENT);
        assert!(
            served.len() <= 2 * 64 + BACKLOG_MAX,
            "{} served",
            served.len()
        );
        let in_order: Vec<u64> = (1..=served.len() as u64).collect();
        assert!(served == in_order, "out of order or with a gap");
    }

    /// Calls queued behind a full channel to a peer that then stops fail with `Closed` as soon
    /// as it is found stopped, not at their deadline (found in review: the queue waited for
    /// room for good, glommio's send never noticing the receiver gone).
    #[test]
    fn calls_queued_for_a_peer_that_stops_fail_with_closed() {
        let limits = MeshLimits {
            inflight_max: 4,
            deadline: Duration::from_secs(10),
        };
        let builder = MeshBuilder::full(2, 64);
        let handler =
            || -> Handler<u64, u64> { Rc::new(|_from, n: u64| Box::pin(async move { n })) };
        let (blocking_tx, blocking_rx) = mpsc::channel::<()>();
        let first = {
            let builder = builder.clone();
            shard_thread(move || async move {
                let mesh = Mesh::join(builder, 0, limits, handler()).await;
                while blocking_rx.try_recv().is_err() {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                glommio::timer::sleep(Duration::from_millis(20)).await;
                // Shard 1 reads nothing: the channel fills; the rest, and the calls, queue.
                for n in 0..100 {
                    mesh.send(1, n);
                }
                let started = std::time::Instant::now();
                let (posted, called) =
                    futures_lite::future::zip(mesh.call_posted(1, 7), mesh.call(1, 8)).await;
                (posted, called, started.elapsed())
            })
            .unwrap()
        };
        shard_thread(move || async move {
            let mesh = Mesh::join(builder, 1, limits, handler()).await;
            // Blocks its thread (nothing is read), then stops.
            blocking_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            mesh.close().await;
        })
        .unwrap()
        .join()
        .unwrap();
        let (posted, called, elapsed) = first.join().unwrap();
        assert_eq!(posted, Err(MeshError::Closed));
        assert_eq!(called, Err(MeshError::Closed));
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    }

    /// A call to a shard that has stopped fails at once with `Closed`, and takes nothing from
    /// the in-flight bound: before, the closed channel counted as sent and the call waited out
    /// the whole deadline for `Timeout`.
    #[test]
    fn a_call_to_a_stopped_shard_fails_at_once_with_closed() {
        let limits = MeshLimits {
            inflight_max: 2,
            deadline: Duration::from_secs(10),
        };
        let builder = MeshBuilder::full(2, 64);
        let (stopped_tx, stopped_rx) = mpsc::channel::<()>();
        let handler =
            || -> Handler<u64, u64> { Rc::new(|_from, n: u64| Box::pin(async move { n })) };
        let first = {
            let builder = builder.clone();
            shard_thread(move || async move {
                let mesh = Mesh::join(builder, 0, limits, handler()).await;
                while stopped_rx.try_recv().is_err() {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                let started = std::time::Instant::now();
                // More calls than the in-flight bound: a leaked count would make some Overloaded.
                let mut replies = Vec::new();
                for n in 0..4 {
                    replies.push(mesh.call(1, n).await);
                }
                let left = (mesh.outgoing.get(), mesh.pending.borrow().len());
                (replies, started.elapsed(), left)
            })
            .unwrap()
        };
        // Shard 1 joins, then stops (glommio leaves its tasks undropped: closing ends them).
        shard_thread(move || async move {
            Mesh::join(builder, 1, limits, handler())
                .await
                .close()
                .await;
        })
        .unwrap()
        .join()
        .unwrap();
        stopped_tx.send(()).unwrap();
        let (replies, elapsed, left) = first.join().unwrap();
        assert_eq!(replies, vec![Err(MeshError::Closed); 4]);
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        assert_eq!(left, (0, 0), "(outgoing, pending) after the calls");
    }
}
