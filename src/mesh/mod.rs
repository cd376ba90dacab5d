//! Typed cross-shard request/reply over glommio's channel mesh, with deadlines and in-flight bounds; never shares memory between shards.
//!
//! Each message class (stats today; sessions and transactions later) gets its own `Mesh`, so a
//! queue of one class can never hold up another: cross-shard waits form a DAG by class.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::StreamExt;
use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::{GlommioError, ResourceType};

/// Why a cross-shard call produced no reply. All are safe to retry: the request was not served, or
/// its effect (a read) does not matter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshError {
    /// The caller already has `inflight_max` calls outstanding, or the callee serves that many.
    Overloaded,
    /// No reply before the deadline.
    Timeout,
    /// The peer's channel is closed (it is shutting down).
    Closed,
}

/// What travels between two shards.
pub enum Envelope<Req, Resp> {
    Request {
        id: u64,
        body: Req,
    },
    /// A one-way message: the handler runs, nothing is sent back.
    Oneway {
        body: Req,
    },
    Reply {
        id: u64,
        body: Result<Resp, MeshError>,
    },
}

type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;
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
}

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
            counters: MeshCounters::default(),
        });
        Self::serve(&mesh, receivers);
        mesh
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Puts `envelope` on the channel to `to` without waiting; gives it back when the channel is
    /// full (a closed channel drops it: the peer is shutting down).
    fn try_post(&self, to: usize, envelope: Envelope<Req, Resp>) -> Option<Envelope<Req, Resp>> {
        match self.senders.try_send_to(to, envelope) {
            Ok(()) => None,
            Err(GlommioError::WouldBlock(ResourceType::Channel(envelope))) => Some(envelope),
            Err(_) => None,
        }
    }

    /// Posts from this turn when there is room, else from a task of its own.
    fn post(self: &Rc<Self>, to: usize, envelope: Envelope<Req, Resp>) {
        if let Some(envelope) = self.try_post(to, envelope) {
            let mesh = self.clone();
            glommio::spawn_local(async move {
                let _ = mesh.senders.send_to(to, envelope).await;
            })
            .detach();
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    /// Sends `req` to shard `to` and waits for its reply, at most the mesh deadline. A call to
    /// this shard runs the handler in place, without a message.
    pub async fn call(&self, to: usize, req: Req) -> Result<Resp, MeshError> {
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
        let _guard = PendingGuard { mesh: self, id };
        let exchange = async {
            if let Some(envelope) = self.try_post(to, Envelope::Request { id, body: req })
                && self.senders.send_to(to, envelope).await.is_err()
            {
                return Err(MeshError::Closed);
            }
            WaitReply { slot: &slot }.await
        };
        match with_deadline(self.limits.deadline, exchange).await {
            Some(result) => result,
            None => {
                self.counters.timeouts.set(self.counters.timeouts.get() + 1);
                Err(MeshError::Timeout)
            }
        }
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
    pub async fn call_all(&self, req: impl Fn() -> Req) -> Vec<Result<Resp, MeshError>> {
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
            glommio::spawn_local(async move {
                let mut stream = stream;
                while let Some(envelope) = stream.next().await {
                    match envelope {
                        Envelope::Reply { id, body } => mesh.deliver(id, body),
                        Envelope::Request { id, body } => mesh.accept(from, id, body),
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
            })
            .detach();
        }
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

    fn accept(self: &Rc<Self>, from: usize, id: u64, body: Req) {
        if self.incoming.get() >= self.limits.inflight_max {
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
                Box::pin(async move {
                    glommio::timer::sleep(Duration::from_millis(ms)).await;
                    ms * 10
                })
            })
        };
        let first = {
            let builder = builder.clone();
            LocalExecutorBuilder::new(Placement::Unbound)
                .io_memory(crate::config::limits::IO_MEMORY_BYTES)
                .spawn(move || async move {
                    let mesh = Mesh::join(builder, 0, limits, handler()).await;
                    let result = body(mesh).await;
                    let _ = done_tx.send(());
                    result
                })
                .unwrap()
        };
        let second = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(crate::config::limits::IO_MEMORY_BYTES)
            .spawn(move || async move {
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
}
