//! One shard's readiness ring: an io_uring of the shard's own, beside glommio's, holding one multishot poll per plain connection, so a read that has to wait arms nothing (glommio arms a one-shot poll for every wait; bench/RESULTS.md runs I-M).
//!
//! A connection reads with `recv(2)` as glommio does and writes through glommio as before; only
//! *waiting* for bytes changes. Its poll is armed once, posts a completion every time the socket
//! wakes its waiters (data, FIN, an error, a `shutdown(2)` from the drain),
//! and marks the connection ready. The bytes stay in the socket until read, so the socket's
//! receive buffer is still the per-connection bound.
//!
//! Driving: `drive` reaps the ring, then waits for the ring's eventfd with an io_uring READ on
//! glommio's own ring, so the executor parks as before. It never loops while busy: glommio polls
//! its own rings (writes that met EAGAIN, the mesh, the log, timers) only when its task queues
//! run dry, and a task that kept re-queuing itself would delay all of that to the next
//! preemption. Arming and cancelling are submitted at once by the connection's own task (the
//! same thread: the ring is single-issuer), one syscall per connection.
//!
//! The ring runs its completions as deferred task work (DEFER_TASKRUN, Linux 6.1): the eventfd
//! is signalled when work arrives on an empty list (on x86-64 a reap turns it off while it posts
//! the completions, which would signal it again), so a batch of wakeups costs one READ, not one
//! per wakeup. Without it (Linux 6.0) the ring still works, at about glommio's cost. Where the
//! kernel lacks what the ring needs at all (SINGLE_ISSUER: 6.0; multishot poll: 5.13),
//! `ReadyRing::new` fails and the shard reads through glommio alone; so does every connection
//! with `--no-multishot-poll`, and every TLS one.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use glommio::io::BufferedFile;
use io_uring::{IoUring, cqueue, opcode, squeue, types};

/// Submission entries. Each connection submits on its own, at once, so a few suffice.
const SQ_ENTRIES: u32 = 64;
/// Completion entries: one per wakeup of a connection between two reaps. Overflowing entries are
/// kept by the kernel (IORING_FEAT_NODROP) or end a multishot poll, which is re-armed.
const CQ_ENTRIES: u32 = 4096;

/// Whether a reap turns the eventfd off while it posts completions (see `ReadyRing::reap`). Only
/// on x86-64: that it loses no wakeup rests on the kernel's barrier between raising TASKRUN and
/// reading the eventfd's off flag, which its `atomic_or` gives there (a locked instruction) and
/// not on weakly ordered machines, where the ring keeps the extra wakeup instead.
const EVENTFD_OFF_WHILE_REAPING: bool = cfg!(target_arch = "x86_64");

/// GETEVENTS enters per reap at most (each runs a batch of deferred completions).
const REAP_ROUNDS_MAX: usize = 64;

const OP_POLL: u64 = 1;
const OP_CANCEL: u64 = 2;

/// The bits of a slot's generation that fit in a user_data.
const GENERATION_MASK: u32 = 0x00ff_ffff;

/// user_data: op in bits 0..8, slot generation in 8..32, slot in 32..64.
fn user_data(op: u64, generation: u32, slot: u32) -> u64 {
    op | (u64::from(generation & GENERATION_MASK) << 8) | (u64::from(slot) << 32)
}

/// Enters `ring` with whatever is queued; `flags` 0 or GETEVENTS (run deferred completions).
fn enter(ring: &mut IoUring, flags: u32) -> io::Result<usize> {
    let queued = ring.submission().len() as u32;
    // SAFETY: the queued entries (polls, cancels) reference no memory of ours; no argument.
    unsafe {
        ring.submitter()
            .enter::<libc::sigset_t>(queued, 0, flags, None)
    }
}

/// What a connection's poll waits for: bytes, and the peer's FIN (RDHUP) named apart from them
/// (errors and hang-ups are always reported). A completion's result is the events that woke it.
/// Not POLLPRI: TCP's every data wakeup passes it (`sock_def_readable`), urgent data or not.
const POLL_EVENTS: u32 = (libc::POLLIN | libc::POLLRDHUP) as u32;

/// The events after which a short read does not mean the socket is empty.
const POLL_EVENTS_NOT_DATA: u32 = (libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP) as u32;

#[derive(Default)]
struct Slot {
    generation: u32,
    fd: RawFd,
    /// A `Readiness` holds the slot; without one it waits for its poll's last completion.
    owned: bool,
    /// The multishot poll is armed (its last completion, without `MORE`, not yet reaped).
    armed: bool,
    /// The socket woke since the connection last found it empty.
    ready: bool,
    /// A wakeup said more than "bytes arrived": the peer's FIN, or an error. A short read then
    /// no longer means the socket is empty (a read stops before the FIN, and the wakeup that
    /// announced it is spent: a request sent with its FIN waited for the keep-alive timeout),
    /// so only EAGAIN clears `ready`. Sticky: such a socket has little left to say.
    /// (Urgent data also stops a read short, and TCP passes POLLPRI with every data wakeup, so
    /// it cannot be told apart: a client that sends MSG_OOB stalls its own connection until a
    /// timeout.)
    short_read_not_empty: bool,
    waker: Option<Waker>,
}

impl Slot {
    /// Marks the socket woken and wakes the connection waiting on it, if any. The waker is
    /// taken, not kept (keeping it saved a clone per wait, ~0.5% of a request, but polled a
    /// connection waiting on something else once per arriving packet, and kept its task alive
    /// through the ring).
    fn wake(&mut self) {
        self.ready = true;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

pub struct ReadyRing {
    ring: RefCell<IoUring>,
    /// DEFER_TASKRUN: completions are posted only when `reap` asks (and the eventfd is
    /// signalled once per batch, not per completion).
    defer: bool,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    /// Cancels the submission queue refused (it stayed full): retried by every reap, so no
    /// poll (and no closed socket it holds) outlives its connection for long.
    cancels: RefCell<Vec<squeue::Entry>>,
    /// Registered with the ring: counts its completions; read through glommio while idle.
    eventfd: BufferedFile,
    /// Multishot polls queued so far: one per connection, plus one for each poll the kernel
    /// ended (a full CQ). About one per request would mean the ring re-arms per wait (/stats).
    polls_armed: Cell<u64>,
}

impl ReadyRing {
    /// A ring for this thread's shard, or why there is none.
    pub fn new() -> io::Result<Rc<ReadyRing>> {
        ReadyRing::with_sizes(SQ_ENTRIES, CQ_ENTRIES)
    }

    fn with_sizes(sq_entries: u32, cq_entries: u32) -> io::Result<Rc<ReadyRing>> {
        // DEFER_TASKRUN (Linux 6.1) keeps completions as task work until `reap` runs it: the
        // eventfd is signalled when work arrives on an empty list, so a batch of wakeups costs
        // a couple of READs on glommio's ring. Without it (COOP_TASKRUN alone) every completion
        // is posted at the next syscall of the thread and signals the eventfd: one READ per
        // wakeup, what glommio's own poll per wait costs (measured: no gain over glommio).
        let build = |defer: bool| {
            let mut builder = IoUring::builder();
            builder
                .setup_cqsize(cq_entries)
                .setup_coop_taskrun()
                .setup_taskrun_flag()
                .setup_single_issuer();
            if defer {
                builder.setup_defer_taskrun();
            }
            builder.build(sq_entries)
        };
        let (ring, defer) = match build(true) {
            Ok(ring) => (ring, true),
            Err(_) => (build(false)?, false),
        };
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::PollAdd::CODE) {
            return Err(io::Error::other("io_uring has no POLL_ADD"));
        }
        // SAFETY: eventfd(2) returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is ours and open; the BufferedFile owns it from here (closes it on drop).
        // Blocking on purpose: io_uring answers a READ of a non-blocking eventfd with EAGAIN at
        // once instead of waiting for a count.
        let eventfd = unsafe { BufferedFile::from_raw_fd(fd) };
        ring.submitter().register_eventfd(fd)?;
        Ok(Rc::new(ReadyRing {
            ring: RefCell::new(ring),
            defer,
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            cancels: RefCell::new(Vec::new()),
            eventfd,
            polls_armed: Cell::new(0),
        }))
    }

    /// Arms a multishot poll on `fd` (an open socket that outlives the returned handle).
    pub fn register(self: &Rc<Self>, fd: RawFd) -> io::Result<Readiness> {
        let slot = {
            let mut slots = self.slots.borrow_mut();
            let index = match self.free.borrow_mut().pop() {
                Some(index) => index,
                None => {
                    slots.push(Slot::default());
                    (slots.len() - 1) as u32
                }
            };
            let slot = &mut slots[index as usize];
            slot.fd = fd;
            slot.owned = true;
            // Bytes may have arrived before the poll: the first read looks.
            slot.ready = true;
            slot.short_read_not_empty = false;
            slot.waker = None;
            index
        };
        let readiness = Readiness {
            ring: self.clone(),
            slot,
        };
        self.arm(slot)?;
        Ok(readiness)
    }

    fn arm(&self, index: u32) -> io::Result<()> {
        let entry = {
            let slots = self.slots.borrow();
            let slot = &slots[index as usize];
            opcode::PollAdd::new(types::Fd(slot.fd), POLL_EVENTS)
                .multi(true)
                .build()
                .user_data(user_data(OP_POLL, slot.generation, index))
        };
        self.submit(&entry, false)?;
        // Only once queued: a slot marked armed waits for a last completion to be freed.
        self.slots.borrow_mut()[index as usize].armed = true;
        self.polls_armed.set(self.polls_armed.get() + 1);
        Ok(())
    }

    /// Multishot polls queued so far (see the field).
    pub fn polls_armed(&self) -> u64 {
        self.polls_armed.get()
    }

    /// Queues `entry` and enters the ring; `run_deferred` also runs the deferred completions
    /// (a cancelled poll lets go of its socket only then). Err only when the entry could not be
    /// queued: one queued but not yet submitted (the enter failed) goes with the next enter.
    fn submit(&self, entry: &squeue::Entry, run_deferred: bool) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: a poll and a cancel reference no memory of ours.
        if unsafe { ring.submission().push(entry) }.is_err() {
            let _ = ring.submit();
            // SAFETY: as above.
            unsafe { ring.submission().push(entry) }
                .map_err(|_| io::Error::other("the readiness ring's queue stays full"))?;
        }
        let flags = if run_deferred && self.defer {
            io_uring::EnterFlags::GETEVENTS.bits()
        } else {
            0
        };
        let _ = enter(&mut ring, flags);
        Ok(())
    }

    /// Takes every completion so far: marks their connections ready and wakes them; true when
    /// more waits.
    ///
    /// The eventfd is off meanwhile: posting completions signals it, and a reap posts them
    /// itself (its GETEVENTS enters run the deferred polls), so every reap would otherwise wake
    /// the driver once more for nothing: a READ on glommio's ring and a pass of the driver per
    /// batch of wakeups. Work that comes while it is off is not signalled, but still raises the
    /// TASKRUN flag (or posts to the CQ, without DEFER_TASKRUN): a reap that sees either after
    /// turning the eventfd back on says "more", and the driver comes back without waiting.
    fn reap(&self) -> bool {
        if !EVENTFD_OFF_WHILE_REAPING {
            return self.reap_rounds();
        }
        self.ring.borrow_mut().completion().disable_eventfd();
        let more = self.reap_rounds();
        self.ring.borrow_mut().completion().enable_eventfd();
        // Store (eventfd on), then load (flags, CQ tail), against the kernel's store (TASKRUN,
        // a CQE), then load (eventfd off?): with a full barrier on both sides, one sees the other.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        more || self.work_waits() || !self.ring.borrow_mut().completion().is_empty()
    }

    fn reap_rounds(&self) -> bool {
        // A GETEVENTS enter runs a bounded batch of deferred work (20 on recent kernels) and
        // leaves the TASKRUN flag up while more waits, which would not signal the eventfd
        // again; completions that found the CQ full wait in the kernel (CQ_OVERFLOW) until an
        // enter flushes them. Enter until both flags are down; past `REAP_ROUNDS_MAX` enters,
        // returns true (more is waiting), and the driver lets other tasks run and comes back
        // at once rather than counting on the eventfd.
        let refused: Vec<squeue::Entry> = self.cancels.borrow_mut().drain(..).collect();
        for cancel in refused {
            if self.submit(&cancel, true).is_err() {
                self.cancels.borrow_mut().push(cancel);
            }
        }
        self.reap_posted();
        for _ in 0..REAP_ROUNDS_MAX {
            if !self.work_waits() {
                return false;
            }
            let entered = enter(
                &mut self.ring.borrow_mut(),
                io_uring::EnterFlags::GETEVENTS.bits(),
            );
            if let Err(e) = entered
                && e.kind() != io::ErrorKind::Interrupted
            {
                crate::log_line!("percore: reaping the readiness ring: {e}");
                return false;
            }
            self.reap_posted();
        }
        self.work_waits()
    }

    /// Completions wait in the kernel: deferred work not yet run, or an overflowed CQ.
    fn work_waits(&self) -> bool {
        let mut ring = self.ring.borrow_mut();
        let sq = ring.submission();
        (self.defer && sq.taskrun()) || sq.cq_overflow() || !sq.is_empty()
    }

    fn reap_posted(&self) {
        let mut ring = self.ring.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        for cqe in ring.completion() {
            let data = cqe.user_data();
            if data & 0xff != OP_POLL {
                continue;
            }
            let index = (data >> 32) as u32;
            let Some(slot) = slots.get_mut(index as usize) else {
                continue;
            };
            if slot.generation & GENERATION_MASK != ((data >> 8) as u32) & GENERATION_MASK {
                continue;
            }
            if !cqueue::more(cqe.flags()) {
                slot.armed = false;
            }
            if cqe.result() < 0 || cqe.result() as u32 & POLL_EVENTS_NOT_DATA != 0 {
                slot.short_read_not_empty = true;
            }
            if slot.owned {
                // An error or a cancel by the kernel also makes it ready: the next recv says
                // what happened, and a wait re-arms a poll that ended.
                slot.wake();
            } else if !slot.armed {
                slot.generation = slot.generation.wrapping_add(1);
                self.free.borrow_mut().push(index);
            }
        }
    }

    /// Marks `slot` ready and wakes its connection, poll or no poll: the timeout sweep calls it
    /// to end a read at its deadline, and the drain after `shutdown(2)`, so that a poll whose
    /// completion the kernel dropped (an overflow entry it could not allocate) cannot keep a
    /// connection waiting forever.
    pub fn wake(&self, slot: u32) {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(slot as usize) else {
            return;
        };
        if slot.owned {
            slot.wake();
        }
    }

    /// Whether `slot`'s poll reported the peer's FIN or an error (or failed): its client may be
    /// gone, which a peek at the socket tells (`net::peer_gone`).
    pub fn peer_ended(&self, slot: u32) -> bool {
        let slots = self.slots.borrow();
        slots
            .get(slot as usize)
            .is_some_and(|slot| slot.owned && slot.short_read_not_empty)
    }

    /// Reaps the ring whenever it has completions, for as long as the shard runs.
    pub async fn drive(self: Rc<Self>) {
        loop {
            if self.reap() {
                glommio::executor().yield_task_queue_now().await;
                continue;
            }
            // Any completion posted since the reap counts in the eventfd, so this returns at
            // once; otherwise it waits (and the executor parks if nothing else runs).
            if let Err(e) = self.eventfd.read_at(0, 8).await {
                // Never give up: every plain connection of the shard waits on this ring, its
                // timeouts and the drain too. Reap again after a pause instead.
                crate::log_line!("percore: reading the readiness ring's eventfd: {e}; retrying");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// One connection's place in the ring. Dropping it cancels the poll.
pub struct Readiness {
    ring: Rc<ReadyRing>,
    slot: u32,
}

impl Readiness {
    /// Its slot in the ring (for `ReadyRing::wake`).
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// `recv(2)` into `buf` once the socket woke; Pending (with the waker kept) while it has
    /// not. A short read means the socket was emptied (saving the EAGAIN read per request): the
    /// next call waits for a wakeup first. Not once a FIN or an error was announced: a short
    /// read stops before them (`Slot::short_read_not_empty`).
    pub fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            let fd = {
                let mut slots = self.ring.slots.borrow_mut();
                let slot = &mut slots[self.slot as usize];
                if !slot.ready {
                    let rearm = !slot.armed;
                    match &slot.waker {
                        Some(waker) if waker.will_wake(cx.waker()) => {}
                        _ => slot.waker = Some(cx.waker().clone()),
                    }
                    drop(slots);
                    if rearm && let Err(e) = self.ring.arm(self.slot) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Pending;
                }
                slot.fd
            };
            let n = super::recv_raw(fd, buf);
            let mut slots = self.ring.slots.borrow_mut();
            let slot = &mut slots[self.slot as usize];
            if n >= 0 {
                let n = n as usize;
                // Short: the socket is empty now (unless a wakeup said otherwise, see the
                // field). At end of stream it stays ready: every later read returns 0 at once,
                // as a read of a closed stream does.
                if n > 0 && n < buf.len() && !slot.short_read_not_empty {
                    slot.ready = false;
                }
                return Poll::Ready(Ok(n));
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::WouldBlock => slot.ready = false,
                io::ErrorKind::Interrupted => {}
                _ => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl Drop for Readiness {
    fn drop(&mut self) {
        let (armed, generation) = {
            let mut slots = self.ring.slots.borrow_mut();
            let slot = &mut slots[self.slot as usize];
            slot.owned = false;
            slot.waker = None;
            (slot.armed, slot.generation)
        };
        if armed {
            // The slot is freed by the poll's last completion (-ECANCELED): until then a
            // completion may still name it. Closing the socket does not end the poll (it holds
            // the file, so no FIN goes out), nor does shutdown(2) (the poll fires and stays):
            // cancel it, and run the deferred work at once so that the file is let go now.
            let cancel = opcode::AsyncCancel::new(user_data(OP_POLL, generation, self.slot))
                .build()
                .user_data(user_data(OP_CANCEL, 0, 0));
            if self.ring.submit(&cancel, true).is_err() {
                self.ring.cancels.borrow_mut().push(cancel);
            }
        } else {
            let mut slots = self.ring.slots.borrow_mut();
            let slot = &mut slots[self.slot as usize];
            slot.generation = slot.generation.wrapping_add(1);
            self.ring.free.borrow_mut().push(self.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use glommio::{LocalExecutorBuilder, Placement};

    use super::*;

    /// Runs the test `make` builds on a fresh executor thread (the ring is single-issuer: made
    /// and used there).
    fn on_executor<F: Future<Output = ()> + 'static>(make: impl FnOnce() -> F + Send + 'static) {
        LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(make)
            .unwrap()
            .join()
            .unwrap();
    }

    /// A connection waits until its socket wakes, reads what came, and its slot is reused
    /// only after the cancelled poll's last completion, under a new generation.
    #[test]
    fn a_connection_waits_for_a_wakeup_and_its_slot_returns_after_the_cancel() {
        on_executor(|| async {
            let ring = ReadyRing::new().expect("a readiness ring");
            glommio::spawn_local(ring.clone().drive()).detach();
            let (mut client, server) = UnixStream::pair().unwrap();
            let readiness = ring.register(server.as_raw_fd()).unwrap();
            for word in [&b"hello"[..], b"world"] {
                let mut buf = [0u8; 64];
                let mut read =
                    std::pin::pin!(std::future::poll_fn(|cx| readiness.poll_recv(cx, &mut buf)));
                // Nothing sent yet: the read finds the socket empty and waits.
                assert!(futures_lite::future::poll_once(&mut read).await.is_none());
                client.write_all(word).unwrap();
                assert_eq!(read.await.unwrap(), 5);
                assert_eq!(&buf[..5], word);
            }

            let slot = readiness.slot;
            let generation = ring.slots.borrow()[slot as usize].generation;
            drop(readiness);
            assert!(ring.free.borrow().is_empty(), "held until the poll ends");
            glommio::timer::sleep(Duration::from_millis(50)).await;
            assert_eq!(*ring.free.borrow(), vec![slot]);
            let next = ring.register(server.as_raw_fd()).unwrap();
            assert_eq!(next.slot, slot);
            assert_eq!(
                ring.slots.borrow()[slot as usize].generation,
                generation.wrapping_add(1)
            );
        });
    }

    /// A poll that is gone without a completion (here: cancelled behind the connection's back,
    /// its last completion never reaped) wakes nothing when the socket is shut down; `wake`,
    /// which the sweep and the drain call after `shutdown(2)`, still ends the wait.
    #[test]
    fn wake_ends_a_wait_whose_poll_is_gone() {
        on_executor(|| async {
            let ring = ReadyRing::new().expect("a readiness ring");
            let (_client, server) = UnixStream::pair().unwrap();
            let readiness = Rc::new(ring.register(server.as_raw_fd()).unwrap());
            let done = Rc::new(std::cell::Cell::new(None));
            let waiter = glommio::spawn_local({
                let (readiness, done) = (readiness.clone(), done.clone());
                async move {
                    let mut buf = [0u8; 8];
                    let n = std::future::poll_fn(|cx| readiness.poll_recv(cx, &mut buf)).await;
                    done.set(Some(n.unwrap()));
                }
            });
            glommio::timer::sleep(Duration::from_millis(10)).await;
            let slot = readiness.slot();
            let generation = ring.slots.borrow()[slot as usize].generation;
            let cancel = opcode::AsyncCancel::new(user_data(OP_POLL, generation, slot))
                .build()
                .user_data(user_data(OP_CANCEL, 0, 0));
            ring.submit(&cancel, true).unwrap();
            // SAFETY: shutdown(2) of our own socket.
            unsafe { libc::shutdown(server.as_raw_fd(), libc::SHUT_RD) };
            glommio::timer::sleep(Duration::from_millis(20)).await;
            assert_eq!(done.get(), None, "nothing reaped, nothing woke");
            ring.wake(slot);
            glommio::timer::sleep(Duration::from_millis(20)).await;
            assert_eq!(done.get(), Some(0), "end of stream after the shutdown");
            waiter.await;
        });
    }

    /// A read that fills the buffer leaves the socket marked ready (more may wait); a short one
    /// marks it empty; end of stream stays ready.
    #[test]
    fn a_full_read_looks_again_and_a_short_one_waits() {
        on_executor(|| async {
            let ring = ReadyRing::new().expect("a readiness ring");
            let (mut client, server) = UnixStream::pair().unwrap();
            let readiness = ring.register(server.as_raw_fd()).unwrap();
            client.write_all(b"0123456789").unwrap();
            let mut cx = Context::from_waker(Waker::noop());
            let mut buf = [0u8; 4];
            for want in [4, 4, 2] {
                match readiness.poll_recv(&mut cx, &mut buf) {
                    Poll::Ready(Ok(n)) => assert_eq!(n, want),
                    other => panic!("{other:?}"),
                }
            }
            assert!(readiness.poll_recv(&mut cx, &mut buf).is_pending());
            drop(client);
            assert!(!ring.reap());
            for _ in 0..2 {
                assert!(matches!(
                    readiness.poll_recv(&mut cx, &mut buf),
                    Poll::Ready(Ok(0))
                ));
            }
        });
    }

    /// More wakeups than the completion queue holds, and more than one enter runs, between two
    /// reaps: the rest wait in the kernel (CQ overflow, the TASKRUN flag), and one reap still
    /// takes every one of them; the polls the overflow ended are armed again by the next wait.
    #[test]
    fn one_reap_takes_more_wakeups_than_the_completion_queue_holds() {
        on_executor(|| async {
            let ring = ReadyRing::with_sizes(2, 4).expect("a readiness ring");
            let pairs: Vec<_> = (0..48).map(|_| UnixStream::pair().unwrap()).collect();
            let waiting: Vec<Readiness> = pairs
                .iter()
                .map(|(_, server)| ring.register(server.as_raw_fd()).unwrap())
                .collect();
            let mut cx = Context::from_waker(Waker::noop());
            let mut buf = [0u8; 16];
            for readiness in &waiting {
                assert!(readiness.poll_recv(&mut cx, &mut buf).is_pending());
            }
            for (client, _) in &pairs {
                (&*client).write_all(b"x").unwrap();
            }
            for round in 0..2 {
                assert!(!ring.reap(), "nothing left waiting in the kernel");
                for readiness in &waiting {
                    match readiness.poll_recv(&mut cx, &mut buf) {
                        Poll::Ready(Ok(1)) => {}
                        other => panic!("round {round}, slot {}: {other:?}", readiness.slot),
                    }
                    // Empty again: waits (re-arming a poll that ended).
                    assert!(readiness.poll_recv(&mut cx, &mut buf).is_pending());
                }
                for (client, _) in &pairs {
                    (&*client).write_all(b"y").unwrap();
                }
            }
        });
    }

    /// Whether the ring's eventfd holds a count (without taking it).
    fn signalled(ring: &ReadyRing) -> bool {
        let mut pollfd = libc::pollfd {
            fd: ring.eventfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) of one descriptor we own, without waiting.
        unsafe { libc::poll(&mut pollfd, 1, 0) == 1 }
    }

    /// Takes the eventfd's count (there must be one: the descriptor blocks).
    fn take_signal(ring: &ReadyRing) {
        let mut count = [0u8; 8];
        // SAFETY: read(2) of 8 bytes into our buffer.
        let n = unsafe { libc::read(ring.eventfd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        assert_eq!(n, 8);
    }

    /// An idle ring: one connection waiting for bytes (its poll armed), everything reaped and the
    /// eventfd's count taken. Returns the ring, the peer to write to, the connection's socket
    /// (kept open) and its place in the ring.
    fn one_waiting_connection() -> (Rc<ReadyRing>, UnixStream, UnixStream, Readiness) {
        let ring = ReadyRing::new().expect("a readiness ring");
        let (client, server) = UnixStream::pair().unwrap();
        let readiness = ring.register(server.as_raw_fd()).unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(readiness.poll_recv(&mut cx, &mut [0u8; 16]).is_pending());
        assert!(!ring.reap());
        if signalled(&ring) {
            take_signal(&ring); // the registration's own completions, if any
        }
        (ring, client, server, readiness)
    }

    /// Work arriving on an idle ring signals the eventfd once; the reap that runs it posts its
    /// completions without signalling it again (that woke the driver once more per batch).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_reap_does_not_signal_the_eventfd_with_its_own_completions() {
        on_executor(|| async {
            let (ring, mut client, _server, readiness) = one_waiting_connection();
            let mut cx = Context::from_waker(Waker::noop());
            let mut buf = [0u8; 16];
            client.write_all(b"x").unwrap();
            assert!(signalled(&ring), "work arrived on an empty list");
            take_signal(&ring);
            assert!(!ring.reap());
            assert!(
                matches!(readiness.poll_recv(&mut cx, &mut buf), Poll::Ready(Ok(1))),
                "the reap woke the connection"
            );
            assert!(
                !signalled(&ring),
                "the reap's own completions signalled the eventfd"
            );
        });
    }

    /// What `reap` relies on while the eventfd is off: work that arrives then is not signalled
    /// but raises the TASKRUN flag, which the reap checks after turning the eventfd back on.
    #[test]
    fn work_that_comes_while_the_eventfd_is_off_still_raises_taskrun() {
        on_executor(|| async {
            let (ring, mut client, _server, readiness) = one_waiting_connection();
            let mut cx = Context::from_waker(Waker::noop());
            let mut buf = [0u8; 16];
            ring.ring.borrow_mut().completion().disable_eventfd();
            client.write_all(b"x").unwrap();
            ring.ring.borrow_mut().completion().enable_eventfd();
            assert!(!signalled(&ring), "the eventfd was off");
            assert!(ring.work_waits(), "but the work is flagged");
            assert!(!ring.reap());
            assert!(matches!(
                readiness.poll_recv(&mut cx, &mut buf),
                Poll::Ready(Ok(1))
            ));
        });
    }
}
