//! One HTTP/1.1 connection: reads, frames requests with `http`, runs the app, batches responses into one write; owns the socket and all per-connection memory.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::sync::StaticPermit;

use crate::config::limits::{
    BODY_DISCARD_BYTES_MAX, BODY_UNCOPIED_BYTES_MIN, READ_BUFFER_BYTES, READ_BUFFER_KEEP_BYTES,
    REQUESTS_PER_TURN_MAX, TRAILER_BYTES_MAX, WRITE_BUFFER_FLUSH_BYTES, WRITE_BUFFER_KEEP_BYTES,
};
use crate::http::{
    self, BodyDecoder, BodyEvent, BodyFraming, CONTINUE_100, HeadLimits, HttpError, RequestHead,
    Version,
};
use crate::metrics::add;
use crate::net::{Transport, Waiting};
use crate::router::{
    Answer, App, Body, BodyError, BodySource, Request, RequestCtx, Response, ResponseBody,
};
use crate::runtime::shard::{ConnEntry, ConnGuard, HangUp, Shard};

/// Largest single read while a body is expected (a head is read 4 KiB at a time).
const BODY_READ_BYTES_MAX: usize = 64 * 1024;

/// The shard's read scratch buffer holds the largest single read.
pub const READ_SCRATCH_BYTES: usize = BODY_READ_BYTES_MAX;
const _: () = assert!(READ_BUFFER_BYTES <= READ_SCRATCH_BYTES);

/// The socket and the read buffer, shared by the connection loop and the body of the request
/// being served (the handler may read it while the loop waits). Borrows never cross an await.
struct ConnIo {
    stream: RefCell<Transport>,
    rbuf: RefCell<BytesMut>,
    shard: Rc<Shard>,
    /// The connection's registry entry: where a waiting read posts its deadline for the
    /// shard's timeout sweep (runtime/shard.rs).
    entry: Rc<ConnEntry>,
    /// How long the next read may wait, in ms.
    read_timeout_ms: Cell<u64>,
    /// A plain connection's multishot poll (net/ready.rs); None: reads wait through glommio.
    ready: Option<crate::net::ready::Readiness>,
    /// A write waited through glommio, whose write timer is armed until one of its own sends
    /// makes progress: until then writes go through glommio, not `send_raw`, or the timer
    /// would keep the first stall's deadline for the connection's life.
    write_stalled: Cell<bool>,
    /// A write failed (timed out, reset): the connection ends without a lingering close, which
    /// protects an answer the client can no longer get.
    write_failed: Cell<bool>,
    /// A read waited for bytes (and so let the shard's other tasks run) since the connection
    /// loop last looked.
    waited: Cell<bool>,
    /// A read of this connection timed out: its closing answer (a 408) lingers at most
    /// `--lingering-timeout` in all, not `--lingering-time`, so a slowloris client that keeps
    /// dripping bytes holds its slot little longer than its header timeout.
    read_timed_out: Cell<bool>,
    /// A handler was waited for since the connection loop last looked: its answer goes out at
    /// once (`Conn::run`).
    handler_waited: Cell<bool>,
    /// What a flush holds besides the part being written (the write buffer, the big bodies
    /// after it, a batch's later answers), counted against the shard's `--max-held-bytes`
    /// with that part while a write waits on the client (`Shard::hold`); 0 outside a flush.
    flushing: Cell<usize>,
    /// Reads that brought bytes, so far.
    reads: Cell<u64>,
    /// `reads` when the connection last finished a request: a head parsed with no read since
    /// was sent before that answer, pipelined.
    answered_at_read: Cell<Option<u64>>,
    /// The client pipelined (a request sent before the answer to the one before it: a head
    /// parsed with no read since the last answer, a parallel batch, a head stashed after
    /// one): if it half-closes, it waits for its answers (`hang_up`).
    pipelined: Cell<bool>,
}

impl ConnIo {
    /// Reads up to `want` more bytes into the read buffer. Ok(0) is end of stream; a read that
    /// waited longer than the read timeout fails with `TimedOut`. The timeout is not a timer per
    /// read: a read that has to wait posts its deadline in the connection's registry entry, and
    /// the shard's sweep marks it and wakes the read once it passes (one sweep for all
    /// connections instead of a timer armed and cancelled per read). Over TLS the deadline stays
    /// until plaintext arrives, so dripping bytes of a record does not extend it.
    fn poll_fill(&self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let mut rbuf = self.rbuf.borrow_mut();
        let filled = rbuf.len();
        // Read into the shard's scratch buffer (zeroed once, at start) and copy what arrived:
        // zeroing `want` bytes of the connection's buffer before each read (safe Rust has no
        // uninitialised read buffer) cost more than copying the ~100 bytes of a request.
        let mut scratch = self.shard.read_scratch.borrow_mut();
        let scratch = &mut scratch[..want];
        let result = match &self.ready {
            Some(ready) => ready.poll_recv(cx, scratch),
            None => Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, scratch),
        };
        let result = match result {
            // Shed for the shard's `--max-held-bytes` (`Shard::shed_held`) while a body read
            // waited on its client.
            _ if self.entry.shed_now() => Poll::Ready(Err(io::ErrorKind::OutOfMemory.into())),
            Poll::Ready(_) | Poll::Pending if self.entry.timed_out.get() => {
                self.entry.timed_out.set(false);
                self.entry.read_deadline_ms.set(0);
                self.read_timed_out.set(true);
                Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
            }
            Poll::Pending => {
                self.waited.set(true);
                if self.entry.read_deadline_ms.get() == 0 {
                    let deadline = self.shard.deadline_ms(self.read_timeout_ms.get());
                    self.entry.read_deadline_ms.set(deadline);
                }
                if self.ready.is_none() {
                    park(&self.entry.read_waker, cx);
                }
                // Nothing buffered (an idle keep-alive connection, mostly): wait without a read
                // buffer (nginx frees it too), unless it is a small one, which the next read
                // reuses: freeing it cost two allocations and two frees per request (the bytes
                // and the handle `split_to` shares with the request head). `try_reclaim` says
                // whether more than the bound could be written without allocating: a buffer
                // this connection alone holds and that big is freed. A smaller one is kept; so
                // is one that a request's bytes still share (rare: an app kept a `Bytes` of it
                // past its answer), which the next read replaces if it is still shared then.
                if filled == 0 {
                    release_big_read_buffer(&mut rbuf);
                }
                Poll::Pending
            }
            Poll::Ready(result) => {
                self.entry.read_deadline_ms.set(0);
                Poll::Ready(result)
            }
        };
        if let Poll::Ready(Ok(n)) = result {
            rbuf.extend_from_slice(&scratch[..n]);
            add(&self.shard.metrics.bytes_read, n as u64);
            if n > 0 {
                self.reads.set(self.reads.get() + 1);
            }
        }
        result
    }

    /// Where the connection waits on a handler (its answer is Pending): true when the wait
    /// passed `--handler-timeout`, and then `take` ends the timeout or leaves it set, or when
    /// the client hung up (`client_gone`). The first wait posts its deadline for the shard's
    /// sweep and every wait leaves its waker, as a read does; no timer per request, and nothing
    /// at all for a handler that answers at its first poll.
    fn handler_wait(&self, cx: &Context<'_>, take: bool) -> bool {
        let entry = &self.entry;
        if entry.hang_up.get() == HangUp::Suspected {
            entry.hang_up.set(self.hang_up());
            if entry.hang_up.get() == HangUp::Gone {
                add(&self.shard.metrics.handler_hangups, 1);
            }
        }
        if entry.hang_up.get() == HangUp::Gone {
            return true;
        }
        if entry.handler_timed_out.get() {
            if take {
                entry.handler_timed_out.set(false);
                entry.handler_deadline_ms.set(0);
            }
            return true;
        }
        if entry.handler_deadline_ms.get() == 0 {
            self.post_handler_deadline();
        }
        park(&entry.handler_waker, cx);
        false
    }

    /// What the sweep suspected (the poll saw the client's FIN or an error) is a hang-up when
    /// nothing unread comes before the FIN, here or in the socket, and the client never
    /// pipelined. A client that half-closed after sending more than the handler has read
    /// (pipelined requests, the rest of a body; `nc -N`, say) waits for its answers (found in
    /// review: the last of several pipelined requests was dropped when the ones before it were
    /// answered one by one). One whose single request, body and all, was read is gone, as a
    /// proxy's client is to nginx (499) unless `--ignore-client-abort`.
    fn hang_up(&self) -> HangUp {
        if self.pipelined.get() || !self.rbuf.borrow().is_empty() {
            return HangUp::Stays;
        }
        if crate::net::peer_gone(self.stream.borrow().as_raw_fd()) {
            HangUp::Gone
        } else {
            HangUp::Stays
        }
    }

    /// The client hung up while a handler waited: the handler was dropped, and nobody is left
    /// to answer.
    fn client_gone(&self) -> bool {
        self.entry.hang_up.get() == HangUp::Gone
    }

    /// After a handler was dropped past `--handler-timeout`: it may have left a read of its body
    /// waiting, which is forgotten, or a 100 half written (its client not reading), after which
    /// no answer can follow: true when the connection must just end.
    fn handler_dropped(&self, body: Option<&ConnBody>) -> bool {
        self.forget_read_wait();
        body.is_some_and(
            |body| matches!(body.continue_state.get(), Continue::Owed(written) if written > 0),
        )
    }

    /// A read dropped while it waited leaves no deadline behind: the next read (a lingering
    /// close's) waits by its own timeout (found in review: a handler dropped past
    /// `--handler-timeout` left its body read's deadline, which the lingering close then kept).
    fn forget_read_wait(&self) {
        self.shard.release(&self.entry);
        self.entry.read_deadline_ms.set(0);
        self.entry.timed_out.set(false);
        self.entry.read_waker.take();
    }

    /// Body bytes arrived: a posted handler deadline starts again from now (pushed back, not
    /// cleared: a handler whose body another task reads may never be polled again to post one).
    fn handler_progress(&self) {
        if self.entry.handler_deadline_ms.get() != 0 {
            self.post_handler_deadline();
        }
    }

    /// A handler's wait ends `--handler-timeout` from now.
    fn post_handler_deadline(&self) {
        let timeout_ms = self.shard.config.handler_timeout.as_millis() as u64;
        (self.entry.handler_deadline_ms).set(self.shard.deadline_ms(timeout_ms));
    }

    /// The handler waited on answered: its deadline goes.
    fn handler_answered(&self) {
        self.entry.handler_deadline_ms.set(0);
        self.entry.handler_timed_out.set(false);
    }

    /// Polls a handler's answer (`poll`) until it comes, or None once it waited past
    /// `--handler-timeout`; one that answers at its first poll touches no deadline.
    async fn within_handler_timeout<T>(
        &self,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Option<T> {
        let mut waited = false;
        let answered = std::future::poll_fn(|cx| {
            let polled = poll(cx);
            self.poll_handler(cx, &mut waited, polled)
        })
        .await;
        self.handler_done(waited);
        answered
    }

    /// One poll of `within_handler_timeout`: `polled` is the handler's; Ready(None) once it
    /// waited past `--handler-timeout`. `waited` is for `handler_done`.
    fn poll_handler<T>(
        &self,
        cx: &mut Context<'_>,
        waited: &mut bool,
        polled: Poll<T>,
    ) -> Poll<Option<T>> {
        match polled {
            Poll::Ready(answer) => Poll::Ready(Some(answer)),
            Poll::Pending => {
                *waited = true;
                match self.handler_wait(cx, true) {
                    true => Poll::Ready(None),
                    false => Poll::Pending,
                }
            }
        }
    }

    /// After `poll_handler` ended: a handler that waited leaves no deadline, and its answer goes
    /// out at once (`Conn::run`).
    fn handler_done(&self, waited: bool) {
        if waited {
            self.handler_answered();
            self.handler_waited.set(true);
        }
    }

    async fn fill(&self, want: usize) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx, want)).await
    }

    /// Writes all of `buf`; `part`: the shared bytes `buf` is, if it is not the connection's
    /// own (see `owned`).
    fn poll_write_all(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        written: &mut usize,
        part: Option<&Bytes>,
    ) -> Poll<io::Result<()>> {
        // Nothing follows a failed write: its bytes are lost or half sent (found in review: an
        // answer's head went out after a 100 cut short by the write timeout).
        if self.write_failed.get() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let polled = if self.entry.shed_now() {
            Poll::Ready(Err(io::ErrorKind::OutOfMemory.into()))
        } else {
            self.poll_write_all_once(cx, buf, written, part)
        };
        if polled.is_ready() {
            self.shard.release(&self.entry);
        }
        if let Poll::Ready(Err(e)) = &polled {
            self.write_failed.set(true);
            // Counted here, where every write ends: a 100's too (found in review: only
            // `flush` counted).
            if e.kind() == io::ErrorKind::TimedOut {
                add(&self.shard.metrics.timeouts_write, 1);
            }
        }
        polled
    }

    fn poll_write_all_once(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        written: &mut usize,
        part: Option<&Bytes>,
    ) -> Poll<io::Result<()>> {
        while *written < buf.len() {
            if self.ready.is_some() && !self.write_stalled.get() {
                // Plain TCP on the readiness ring: send straight away with a raw system call
                // (as glommio's write does first, without libc's cancellation-point wrapper);
                // only a full socket buffer waits, through glommio's write below.
                let fd = self.stream.borrow().as_raw_fd();
                let n = crate::net::send_raw(fd, &buf[*written..]);
                if n > 0 {
                    *written += n as usize;
                    continue;
                }
                let error = io::Error::last_os_error();
                if n < 0
                    && !matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    )
                {
                    return Poll::Ready(Err(error));
                }
            }
            let polled = Pin::new(&mut *self.stream.borrow_mut()).poll_write(cx, &buf[*written..]);
            self.write_stalled.set(polled.is_pending());
            if polled.is_pending() {
                // The client does not read: what this write and its flush hold waits on it.
                // Whether a shared part is this connection's alone is asked at each wait: the
                // store may have let go of a value since.
                let own = part.map_or(buf.len(), owned);
                let held = self.flushing.get() + own;
                self.shard.hold(&self.entry, held, Waiting::Write, cx);
            }
            let n = ready!(polled)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        // A no-op on plain TCP; TLS holds the records it made until flushed.
        Pin::new(&mut *self.stream.borrow_mut()).poll_flush(cx)
    }

    async fn write_all(&self, buf: &[u8], part: Option<&Bytes>) -> io::Result<()> {
        let mut written = 0;
        let result =
            std::future::poll_fn(|cx| self.poll_write_all(cx, buf, &mut written, part)).await;
        add(&self.shard.metrics.bytes_written, written as u64);
        result
    }

    fn set_read_timeout(&self, timeout: Duration) {
        self.read_timeout_ms
            .set((timeout.as_millis() as u64).max(1));
    }
}

/// Where the interim `100 Continue` stands for a request that asked for it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Continue {
    NotAsked,
    /// Asked; sent with the first read of the body. `usize` bytes of it written so far.
    Owed(usize),
    Sent,
    /// Asked, but the final answer went out first: RFC 9110 §15.2 allows no 1xx after it.
    Forgone,
}

/// The body of the request being served, read from the connection on demand.
struct ConnBody {
    io: Rc<ConnIo>,
    decoder: RefCell<BodyDecoder>,
    continue_state: Cell<Continue>,
    error: Cell<Option<BodyError>>,
    done: Cell<bool>,
    /// Bytes of this body its handler holds so far (`BodySource::holding`): with what the read
    /// buffer holds, counted against the shard's `--max-held-bytes` while the client does not
    /// send the rest.
    held: Cell<usize>,
    /// `--body-min-rate`: how long this body's reads have waited for the client in all, when
    /// the wait under way began, and the bytes received (`wait_left`).
    waited: Cell<Duration>,
    wait_began: Cell<Option<Instant>>,
    received: Cell<u64>,
    /// Set by `write_stream` around a poll that must not read the socket: the body gives only
    /// what is already buffered, else `Pending` (with no waker kept).
    buffered_only: Cell<bool>,
}

impl ConnBody {
    fn fail(&self, error: BodyError) -> Poll<Option<Result<Bytes, BodyError>>> {
        self.io.shard.release(&self.io.entry);
        self.error.set(Some(error));
        if let BodyError::Protocol(_) = error {
            add(&self.io.shard.metrics.protocol_errors, 1);
        }
        if error == BodyError::Timeout {
            add(&self.io.shard.metrics.timeouts_body, 1);
        }
        Poll::Ready(Some(Err(error)))
    }
}

impl ConnBody {
    /// Counts what a completed read brought; the body's error for an end of stream or a failed
    /// read.
    fn take_filled(&self, filled: io::Result<usize>) -> Result<(), BodyError> {
        match filled {
            Ok(0) => Err(BodyError::Closed),
            // An upload that keeps coming is progress: `--handler-timeout` counts from the
            // last bytes of the body (the body timeout bounds the gaps between them).
            Ok(n) => {
                self.received.set(self.received.get() + n as u64);
                self.io.handler_progress();
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(BodyError::Timeout),
            Err(e) if e.kind() == io::ErrorKind::OutOfMemory => Err(BodyError::Overloaded),
            Err(_) => Err(BodyError::Closed),
        }
    }

    /// How long the next read may wait for the client: `--body-timeout`, and within
    /// `--body-min-rate` a body's reads wait `--body-timeout` in all plus a second per that
    /// many bytes received (Apache's mod_reqtimeout), so a client that keeps each gap under
    /// the timeout still cannot take as long as its body takes to trickle (a byte every 59 s
    /// held a connection for years). Only the time reads wait counts: not a handler's own
    /// pauses between reads (a slow sink it writes to), which leave the client's bytes waiting
    /// in the socket.
    fn wait_left(&self) -> Duration {
        let config = &self.io.shard.config;
        if config.body_min_rate == 0 {
            return config.body_timeout;
        }
        let earned_ms = self.received.get().saturating_mul(1000) / config.body_min_rate;
        let allowance = config.body_timeout + Duration::from_millis(earned_ms);
        allowance
            .saturating_sub(self.waited.get())
            .min(config.body_timeout)
    }

    /// The next piece of the body from what is already read, without reading the socket:
    /// `Pending` (with no waker kept) when it needs more bytes.
    fn poll_buffered(&self) -> Poll<Option<Result<Bytes, BodyError>>> {
        let decoded = self
            .decoder
            .borrow_mut()
            .decode(&mut self.io.rbuf.borrow_mut());
        match decoded {
            Ok(Some(BodyEvent::Data(bytes))) => Poll::Ready(Some(Ok(bytes))),
            Ok(Some(BodyEvent::End)) => {
                self.done.set(true);
                self.io.shard.release(&self.io.entry);
                Poll::Ready(None)
            }
            Err(e) => self.fail(BodyError::Protocol(e)),
            Ok(None) => Poll::Pending,
        }
    }
}

impl BodySource for ConnBody {
    fn holding(&self, bytes: usize) {
        self.held.set(bytes);
    }

    fn poll_chunk(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        if let Some(error) = self.error.get() {
            return Poll::Ready(Some(Err(error)));
        }
        if self.done.get() {
            return Poll::Ready(None);
        }
        if let Continue::Owed(mut written) = self.continue_state.get() {
            let result = self.io.poll_write_all(cx, CONTINUE_100, &mut written, None);
            self.continue_state.set(Continue::Owed(written));
            match ready!(result) {
                Ok(()) => {
                    self.continue_state.set(Continue::Sent);
                    self.io.shard.metrics.count_status(100);
                    add(
                        &self.io.shard.metrics.bytes_written,
                        CONTINUE_100.len() as u64,
                    );
                }
                Err(_) => return self.fail(BodyError::Closed),
            }
        }
        loop {
            if let Poll::Ready(next) = self.poll_buffered() {
                return Poll::Ready(next);
            }
            let want = self
                .decoder
                .borrow()
                .read_hint()
                .map_or(READ_BUFFER_BYTES, |r| {
                    (r as usize).clamp(READ_BUFFER_BYTES, BODY_READ_BYTES_MAX)
                });
            // `write_stream` looking for chunks ready at once: a read that completes at once is
            // taken (a chunked echo that took only the bytes buffered sent once per 4 KiB read;
            // review), one that would wait leaves no deadline behind, which would run on while
            // the answer's flush waits on the client (found in review: a client that paused
            // reading for --body-timeout lost its echo). The task is woken at once, so a stream
            // that polls this body only when woken (a combinator) polls it again.
            if self.buffered_only.get() {
                let Poll::Ready(filled) = self.io.poll_fill(cx, want) else {
                    self.io.entry.read_deadline_ms.set(0);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                };
                if let Err(error) = self.take_filled(filled) {
                    return self.fail(error);
                }
                continue;
            }
            if self.wait_began.get().is_none() {
                let left = self.wait_left();
                if left.is_zero() {
                    // A read timeout like the sweep's: the 408's lingering close is the short
                    // one, `--lingering-timeout` (found in review: a byte timed into the sweep's
                    // slack made it `--lingering-time`).
                    self.io.read_timed_out.set(true);
                    return self.fail(BodyError::Timeout);
                }
                // Taken when the read waits (a deadline is armed once per wait).
                self.io.set_read_timeout(left);
            }
            let filled = self.io.poll_fill(cx, want);
            if filled.is_ready()
                && let Some(began) = self.wait_began.take()
            {
                self.waited.set(self.waited.get() + began.elapsed());
            }
            if filled.is_pending() {
                if self.wait_began.get().is_none() {
                    self.wait_began.set(Some(Instant::now()));
                }
                let held = self.held.get() + self.io.rbuf.borrow().len();
                if held > 0 {
                    self.io.shard.hold(&self.io.entry, held, Waiting::Read, cx);
                }
                return Poll::Pending;
            }
            if let Err(error) = self.take_filled(ready!(filled)) {
                return self.fail(error);
            }
        }
    }
}

/// What `gather` found: a batch, or a request to serve on its own.
enum Gathered {
    Batch(Batch),
    One(RequestHead),
    /// Answered already, by its route's direct handler.
    Answered(Flow),
}

/// Pipelined requests served at once: their handlers' futures and what each answer needs.
struct Batch {
    answers: Vec<(bool, Version)>,
    /// None once answered.
    handlers: Vec<Option<crate::router::Reply>>,
    _slots: ParallelSlots,
}

/// Slots of the shard's parallel-batch budget, given back when the batch is done.
struct ParallelSlots {
    shard: Rc<Shard>,
    count: usize,
}

impl ParallelSlots {
    fn take(shard: Rc<Shard>, count: usize) -> ParallelSlots {
        let slots = &shard.parallel_slots;
        slots.set(
            slots
                .get()
                .checked_sub(count)
                .expect("a batch takes only free slots"),
        );
        ParallelSlots { shard, count }
    }
}

impl Drop for ParallelSlots {
    fn drop(&mut self) {
        let slots = &self.shard.parallel_slots;
        slots.set(slots.get() + self.count);
    }
}

/// What `encode_response` did with a response.
enum Encoded {
    /// Encoded whole into the write buffer.
    Done(Flow),
    /// Its body is a stream: `write_stream` writes it. Boxed: `Encoded` is kept in the
    /// connection's future on every answer, and a stream's head is the rare, large case.
    Stream(Box<Streamed>),
}

/// Runs `handlers` (a batch's from its index `first` on) until each has answered, keeping the
/// answers in `early` (indexed over the whole batch).
/// False when `timed_out` (asked while some wait) said to stop first: past `--handler-timeout`
/// the rest are left unanswered here, and the first of them meets the timeout (left set) when
/// its turn comes, its 503 closing the connection.
fn poll_finish_later(
    handlers: &mut [Option<crate::router::Reply>],
    early: &mut Vec<Option<Response>>,
    first: usize,
    cx: &mut Context<'_>,
    timed_out: impl FnOnce(&Context<'_>) -> bool,
) -> Poll<bool> {
    if handlers.iter().all(Option::is_none) || poll_later(handlers, early, first, cx) {
        Poll::Ready(true)
    } else if timed_out(cx) {
        Poll::Ready(false)
    } else {
        Poll::Pending
    }
}

/// Polls each of `handlers` (a batch's from its index `first` on) not yet answered once, keeping
/// the answers in `early` (indexed over the whole batch); true when all have answered.
fn poll_later(
    handlers: &mut [Option<crate::router::Reply>],
    early: &mut Vec<Option<Response>>,
    first: usize,
    cx: &mut Context<'_>,
) -> bool {
    early.resize_with(first + handlers.len(), || None);
    let mut done = true;
    for (offset, slot) in handlers.iter_mut().enumerate() {
        if let Some(handler) = slot {
            match Pin::new(handler).poll(cx) {
                Poll::Ready(response) => {
                    early[first + offset] = Some(response);
                    *slot = None;
                }
                Poll::Pending => done = false,
            }
        }
    }
    done
}

/// A response whose body is a stream, encoded as its chunks come.
struct Streamed {
    status: u16,
    headers: crate::router::Headers,
    stream: crate::router::BodyStream,
    close: bool,
}

/// What the loop does after a response.
#[derive(PartialEq, Eq)]
enum Flow {
    KeepAlive,
    Close,
}

struct Conn {
    io: Rc<ConnIo>,
    app: Rc<App>,
    guard: ConnGuard,
    peer: Option<std::net::SocketAddr>,
    wbuf: BytesMut,
    /// What goes out before `wbuf`, in order: the write buffer's bytes before a big whole body,
    /// then that body's own bytes (`BODY_UNCOPIED_BYTES_MIN`), for each such body.
    wqueue: Vec<Bytes>,
    /// Bytes in `wqueue`.
    wqueue_bytes: usize,
    /// What a pipelined batch keeps of its answers after the one being written (finished
    /// early, before a write that may wait on the client): held too while that write waits.
    later_held: usize,
    limits: HeadLimits,
    /// When the first byte of the request head being read arrived (slowloris bound).
    head_started: Option<Instant>,
    /// No request head has been parsed yet: a connection that sends nothing gets the header
    /// timeout, not the keep-alive timeout (nginx's client_header_timeout from accept), or
    /// silent connections would hold `--max-conns` slots for a minute each.
    first_request: bool,
    /// Version of the request being answered.
    version: Version,
    tls: bool,
    /// `Some(port)`: a `--redirect-https` connection; every request gets a 308 to this port.
    redirect_port: Option<u16>,
    /// `--pipeline-parallel`: how many pipelined GET/HEAD requests are served at once.
    parallel_max: usize,
    /// A request head parsed past the end of a parallel batch, served next.
    stashed: Option<Result<RequestHead, HttpError>>,
    /// The server chose to close after an answer: the client may still be sending.
    linger: bool,
    /// A close-delimited answer (HTTP/1.0) was cut short: its end of stream would read as a
    /// whole answer, so the connection ends with a reset instead (no close_notify over TLS).
    cut_unframed: bool,
    /// Requests answered since the task last yielded or waited for bytes
    /// (`REQUESTS_PER_TURN_MAX`).
    served_in_turn: u32,
}

/// Serves one accepted connection until it closes; `_permit` holds its slot in the shard's bound.
/// `accepted`: when it was accepted, where its first request head's timeout starts.
pub async fn serve(
    shard: Rc<Shard>,
    app: Rc<App>,
    stream: Transport,
    redirect_port: Option<u16>,
    accepted: Instant,
    _permit: StaticPermit,
) {
    stream.set_write_timeout(shard.config.write_timeout);
    let peer = stream.peer_addr();
    let tls = stream.is_tls();
    let guard = shard.register_conn(stream.as_raw_fd());
    let ready = match (&stream, &shard.ready_ring) {
        // Registering fails only when the ring's queue stays full: glommio's path still works.
        (Transport::Plain(_), Some(ring)) => ring.register(stream.as_raw_fd()).ok(),
        _ => None,
    };
    if let Some(ready) = &ready {
        guard.entry.ready_slot.set(Some(ready.slot()));
        add(&shard.metrics.connections_multishot_poll, 1);
    }
    let limits = HeadLimits {
        head_bytes_max: shard.config.head_bytes_max,
        header_count_max: shard.config.header_count_max,
        uri_bytes_max: shard.config.uri_bytes_max,
    };
    let io = Rc::new(ConnIo {
        stream: RefCell::new(stream),
        rbuf: RefCell::new(BytesMut::new()),
        read_timeout_ms: Cell::new(shard.config.keepalive_timeout.as_millis() as u64),
        shard,
        entry: guard.entry.clone(),
        ready,
        write_stalled: Cell::new(false),
        write_failed: Cell::new(false),
        waited: Cell::new(false),
        read_timed_out: Cell::new(false),
        handler_waited: Cell::new(false),
        flushing: Cell::new(0),
        reads: Cell::new(0),
        answered_at_read: Cell::new(None),
        pipelined: Cell::new(false),
    });
    let parallel_max = io.shard.config.pipeline_parallel_max;
    let mut conn = Conn {
        io,
        app,
        guard,
        peer,
        wbuf: BytesMut::new(),
        wqueue: Vec::new(),
        wqueue_bytes: 0,
        later_held: 0,
        limits,
        head_started: Some(accepted),
        first_request: true,
        version: Version::Http11,
        tls,
        redirect_port,
        parallel_max,
        stashed: None,
        linger: false,
        cut_unframed: false,
        served_in_turn: 0,
    };
    conn.run().await;
    let fd = conn.io.stream.borrow().as_raw_fd();
    if conn.io.write_failed.get() {
        // An answer was cut (a write timed out or was shed): a FIN would end a close-delimited
        // one as if whole (found in review), and the send queue the client does not read would
        // stay in the kernel until it does.
        crate::net::reset_on_close(fd);
        return;
    }
    if conn.cut_unframed {
        // The answers before the cut one are whole: the client takes every byte first (a reset
        // throws away what the send queue still holds), then the reset marks the cut.
        conn.wait_sent().await;
        crate::net::reset_on_close(fd);
        return;
    }
    if tls {
        let stream = &conn.io.stream;
        let _ = std::future::poll_fn(|cx| stream.borrow_mut().poll_close_notify(cx)).await;
    }
    // A read side the drain shut (it found the connection idle, then read what was already
    // queued and answered it) reads nothing more: no lingering close, which would shut the
    // write side too (see `ConnEntry::drained`).
    if conn.linger && !conn.guard.entry.drained.get() {
        conn.linger().await;
    } else if conn.linger || conn.io.shard.is_draining() {
        conn.wait_sent().await;
        conn.discard_queued_input();
    }
}

/// How often `wait_sent` looks at the send queue.
const SEND_QUEUE_POLL_INTERVAL: Duration = Duration::from_millis(5);

impl Conn {
    fn shard(&self) -> &Shard {
        &self.io.shard
    }

    async fn run(&mut self) {
        loop {
            // Batch shape: answer every complete request already read, then write once.
            loop {
                let parsed = match self.stashed.take() {
                    Some(parsed) => parsed.map(Some),
                    None => http::parse_head(&mut self.io.rbuf.borrow_mut(), &self.limits),
                };
                match parsed {
                    Ok(Some(head)) => {
                        self.head_started = None;
                        self.first_request = false;
                        let io = &self.io;
                        if io.answered_at_read.get() == Some(io.reads.get()) {
                            io.pipelined.set(true);
                        }
                        // A client that did not ask to close may have sent more already.
                        let client_keeps_alive = head.keep_alive();
                        let gathered = if let Some(flow) = self.answer_direct(&head) {
                            Gathered::Answered(flow)
                        } else if self.parallel_ok(&head) {
                            self.gather(head)
                        } else {
                            Gathered::One(head)
                        };
                        let flow = match gathered {
                            Gathered::Answered(flow) => {
                                self.served_in_turn += 1;
                                flow
                            }
                            // Boxed: a batch's state stays off the idle connection's future.
                            Gathered::Batch(batch) => {
                                self.served_in_turn += batch.answers.len() as u32;
                                self.io.pipelined.set(true);
                                let flow = Box::pin(self.serve_batch(batch)).await;
                                // Set before each of the batch's flushes; however the batch
                                // ended, its answers are gone.
                                self.later_held = 0;
                                flow
                            }
                            Gathered::One(head) => {
                                self.served_in_turn += 1;
                                if self.stashed.is_some() {
                                    self.io.pipelined.set(true);
                                }
                                self.handle(head).await
                            }
                        };
                        self.io.answered_at_read.set(Some(self.io.reads.get()));
                        if flow == Flow::Close {
                            // Linger where the client may still be sending: bytes already here
                            // (pipelined requests after this answer), a body left unread, or a
                            // close the client did not ask for (a drain, a handler's timeout, a
                            // close-delimited answer to a keep-alive request): its next request
                            // may be in the socket or on its way, and a close with it unread
                            // resets the connection, the answers still queued with it (found
                            // in review: 3964 of a 300,000-byte echo arrived).
                            let flushed = self.flush().await.is_ok();
                            self.linger = flushed
                                && (self.linger
                                    || client_keeps_alive
                                    || !self.io.rbuf.borrow().is_empty()
                                    || self.shard().is_draining());
                            return;
                        }
                        // An answer a handler was waited for goes out now, not once the read
                        // buffer runs dry: a pipelining client gets answers as they come, and
                        // one that closed is found out by a write (its reset), not after every
                        // request it left ran for nobody (a soak review: 227 handlers of one
                        // second each, 16 s, for a client gone after sending). Nothing changes
                        // for handlers that answer at once.
                        let waited = self.io.handler_waited.take();
                        if (waited || self.unsent() >= WRITE_BUFFER_FLUSH_BYTES)
                            && self.flush().await.is_err()
                        {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        add(&self.shard().metrics.protocol_errors, 1);
                        self.reject(e.status(), e.message()).await;
                        return;
                    }
                }
            }
            if self.unsent() > 0 && self.flush().await.is_err() {
                return;
            }
            // A full pipeline is always ready to read (never waits, so never lets the reactor
            // run): the queue yields, the reactor looks for other connections' bytes, and they
            // get their turn.
            if self.served_in_turn >= REQUESTS_PER_TURN_MAX {
                self.served_in_turn = 0;
                add(&self.shard().metrics.pipeline_yields, 1);
                glommio::executor().yield_task_queue_now().await;
            }
            if !self.read_more().await {
                return;
            }
            if self.io.waited.take() {
                self.served_in_turn = 0;
            }
        }
    }

    /// Answers `head` with its route's direct handler (`router::direct`) when it has one and
    /// may use it: the answer goes straight into the write buffer, with no `Request`, `Response`,
    /// future or batch made. None when the request takes the ordinary path: no direct route, an
    /// app with middleware, a redirect listener, or a body to read.
    fn answer_direct(&mut self, head: &RequestHead) -> Option<Flow> {
        if self.redirect_port.is_some() || head.framing() != BodyFraming::Empty {
            return None;
        }
        let app = self.app.clone();
        let handler = app.direct(head.method(), head.path())?;
        let shard = self.io.shard.clone();
        add(&shard.metrics.requests, 1);
        let mut answer = Answer::new(shard.answer_buffer.take());
        handler.answer(head, &mut answer);
        if !is_final_or_logged(answer.status()) {
            answer.text(500, format!("{INVALID_STATUS_MESSAGE}\n"));
        }
        let status = answer.status();
        self.version = head.version();
        let close = !head.keep_alive() || shard.is_draining();
        let body = answer.body_bytes();
        self.encode_direct_head(&shard, status, answer.content_type(), body.len(), close);
        if !head.is_head() && !has_no_content(status) {
            self.wbuf.extend_from_slice(body);
        }
        if let Some(buffer) = answer.into_buffer() {
            shard.answer_buffer.replace(buffer);
        }
        Some(if close { Flow::Close } else { Flow::KeepAlive })
    }

    /// `encode_head` for a direct answer (no handler fields), copied from the shard's last one
    /// when every input of its bytes is the same: status, content type, length, close, version,
    /// TLS (the server's own fields) and the Date second. Formatting it was ~4.6% of a pipelined
    /// `/plaintext` request's CPU (`encode_head`, `HeadWriter::new` and `finish`: perf, run AL's
    /// build).
    fn encode_direct_head(
        &mut self,
        shard: &Shard,
        status: u16,
        content_type: &'static str,
        body_len: usize,
        close: bool,
    ) {
        let key = DirectHeadKey {
            status,
            content_type,
            body_len,
            close,
            http10: self.version == Version::Http10,
            tls: self.tls,
            date_secs: shard.date.borrow().secs(),
        };
        {
            let cached = shard.direct_head.borrow();
            if cached.key == Some(key) {
                shard.metrics.count_status(status);
                self.wbuf.extend_from_slice(&cached.bytes);
                return;
            }
        }
        let start = self.wbuf.len();
        self.encode_head(
            status,
            Some(content_type.as_bytes()),
            [],
            whole_body_framing(status, body_len),
            close,
        );
        let mut cached = shard.direct_head.borrow_mut();
        cached.key = Some(key);
        cached.bytes.clear();
        cached.bytes.extend_from_slice(&self.wbuf[start..]);
    }

    /// Whether `head` may be served at once with the pipelined requests after it (RFC 9112
    /// §9.3.2: a server MAY process pipelined requests in parallel if they all have safe
    /// methods). Only GET and HEAD without a body and with keep-alive qualify, so a batch never
    /// holds a request whose side effects a later one could observe, nor a body to frame.
    fn parallel_ok(&self, head: &RequestHead) -> bool {
        self.parallel_max > 1
            && self.redirect_port.is_none()
            && matches!(head.method(), "GET" | "HEAD")
            && head.framing() == BodyFraming::Empty
            && head.keep_alive()
    }

    /// Starts the handlers of `first` and of the qualifying requests that follow it in the read
    /// buffer (at most `--pipeline-parallel` in all, within the shard's budget) as a `Batch`, or
    /// gives `first` back when it is alone or the budget is spent. A batch's cross-shard lookups
    /// (sessions on another shard) then cost one wake-up of the owner instead of one each. The
    /// first head that does not qualify is stashed for the connection loop, which serves it after
    /// the batch, as it would have one by one. Synchronous: the connection's future holds either
    /// a batch's state (boxed) or `handle`'s, never one inside the other (that nesting grew every
    /// connection's future by 600 bytes, about 1 KiB per idle connection).
    fn gather(&mut self, first: RequestHead) -> Gathered {
        // Requests beyond the first take slots of the shard's budget (at least one, or no batch).
        let room = (self.parallel_max - 1).min(self.io.shard.parallel_slots.get());
        if room == 0 {
            return Gathered::One(first);
        }
        let Some(second) = self.parse_parallel() else {
            // Alone (the common, unpipelined case): no batch.
            return Gathered::One(first);
        };
        // Each head goes straight into its handler: an async handler's future (not yet polled),
        // or a `sync_handler`'s answer, made here before any earlier answer is encoded (a batch
        // holds only GET and HEAD, so no answer can depend on an earlier one). A head is moved
        // as few times as possible (a copy of a head just written costs a store-forwarding stall).
        let mut answers = Vec::with_capacity(1 + room);
        let mut handlers = Vec::with_capacity(1 + room);
        let mut start = |conn: &Conn, head: RequestHead| {
            answers.push((head.is_head(), head.version()));
            let ctx = conn.ctx(&head);
            let request = Request::new(head, Body::empty(), ctx);
            handlers.push(Some(conn.app.serve(request)));
        };
        start(self, first);
        start(self, second);
        for _ in 1..room {
            match self.parse_parallel() {
                Some(head) => start(self, head),
                None => break,
            }
        }
        let metrics = &self.io.shard.metrics;
        add(&metrics.requests, handlers.len() as u64);
        add(&metrics.requests_parallel, handlers.len() as u64);
        Gathered::Batch(Batch {
            // Held until every answer of the batch is written.
            _slots: ParallelSlots::take(self.io.shard.clone(), handlers.len() - 1),
            answers,
            handlers,
        })
    }

    /// Runs a batch's handlers at once and writes their answers in request order.
    ///
    /// Each answer is written as soon as it and all before it are ready. Only while the first
    /// unwritten handler waits (a lookup on another shard) are the handlers after it polled too,
    /// so their waits overlap; answers that come early are kept until their turn. Most handlers
    /// answer at their first poll: then each is polled once, its answer goes straight into the
    /// write buffer, and nothing is kept. Before anything that may wait on the client (a streamed
    /// answer, a flush of a full write buffer), the handlers after it are run to the end, as
    /// they would be with all answers gathered first: a later handler never waits on a slow
    /// reader (nor on an earlier stream that needs it to progress).
    async fn serve_batch(&mut self, batch: Batch) -> Flow {
        let Batch {
            answers,
            mut handlers,
            _slots,
        } = batch;
        let mut early: Vec<Option<Response>> = Vec::new();
        let timeout_ms = self.io.shard.config.handler_timeout.as_millis() as u64;
        let batch_deadline_ms = self.io.shard.deadline_ms(timeout_ms);
        for (index, &(is_head, version)) in answers.iter().enumerate() {
            let ready = handlers[index]
                .as_mut()
                .and_then(crate::router::Reply::ready_mut);
            let encoded = match (ready, early.get_mut(index).and_then(Option::take)) {
                // A synchronous handler's answer, encoded where it lies.
                (Some(response), _) => {
                    let encoded = self.encode_response(response, is_head, version);
                    handlers[index] = None;
                    encoded
                }
                (None, Some(mut response)) => self.encode_response(&mut response, is_head, version),
                (None, None) => {
                    // Every handler of the batch started when it was gathered: each answers
                    // within `--handler-timeout` of that, not of its turn (found in review:
                    // the sixth of six slow handlers answered after four timeouts).
                    (self.io.entry.handler_deadline_ms).set(batch_deadline_ms);
                    let held = owned_later(&mut handlers[index + 1..], &early);
                    let (answered, wrote) = self
                        .wait_for_handler(held, |cx| {
                            let (this, later) = handlers[index..]
                                .split_first_mut()
                                .expect("one handler per answer");
                            let first = this.as_mut().expect("an unanswered handler is kept");
                            if let Poll::Ready(response) = Pin::new(first).poll(cx) {
                                *this = None;
                                return Poll::Ready(response);
                            }
                            poll_later(later, &mut early, index + 1, cx);
                            Poll::Pending
                        })
                        .await;
                    // Also when it answered at once: a timeout `finish_later` left set is over.
                    self.io.handler_answered();
                    if wrote.is_err() || (answered.is_none() && self.io.client_gone()) {
                        return Flow::Close;
                    }
                    // Past `--handler-timeout`: this one is answered 503 and the connection
                    // closes; the client retries the safe requests after it.
                    let mut response = answered.unwrap_or_else(|| {
                        handlers[index] = None;
                        add(&self.io.shard.metrics.timeouts_handler, 1);
                        handler_timeout_answer()
                    });
                    self.encode_response(&mut response, is_head, version)
                }
            };
            let flow = match encoded {
                Encoded::Done(flow) => flow,
                Encoded::Stream(streamed) => {
                    let later = &mut handlers[index + 1..];
                    if (self.finish_later(later, &mut early, index + 1, batch_deadline_ms))
                        .await
                        .is_err()
                    {
                        return Flow::Close;
                    }
                    self.later_held = owned_later(&mut handlers[index + 1..], &early);
                    self.write_stream(streamed, version, None).await
                }
            };
            // Each is keep-alive (parallel_ok); a response that closes (the handler's choice, or
            // a drain) ends the connection, and the client retries the safe requests after it.
            if flow == Flow::Close {
                return Flow::Close;
            }
            if self.unsent() >= WRITE_BUFFER_FLUSH_BYTES {
                let later = &mut handlers[index + 1..];
                let finished = self
                    .finish_later(later, &mut early, index + 1, batch_deadline_ms)
                    .await;
                self.later_held = owned_later(&mut handlers[index + 1..], &early);
                if finished.is_err() || self.flush().await.is_err() {
                    return Flow::Close;
                }
            }
        }
        Flow::KeepAlive
    }

    /// The next head in the read buffer if it may join a parallel batch; any other head (or a
    /// framing error) is kept for the connection loop, to serve after the batch. A direct
    /// route's head ends the batch too: the loop answers it in place, which costs less than a
    /// place in the batch.
    fn parse_parallel(&mut self) -> Option<RequestHead> {
        match http::parse_head(&mut self.io.rbuf.borrow_mut(), &self.limits) {
            Ok(Some(head))
                if self.parallel_ok(&head)
                    && self.app.direct(head.method(), head.path()).is_none() =>
            {
                return Some(head);
            }
            Ok(Some(head)) => self.stashed = Some(Ok(head)),
            Ok(None) => {}
            Err(e) => self.stashed = Some(Err(e)),
        }
        None
    }

    fn ctx(&self, head: &RequestHead) -> RequestCtx {
        let proxies = &self.shard().config.trusted_proxies;
        let (client, https) = match self.peer {
            Some(peer) => {
                let (client, https) = proxies.forwarded(peer.ip(), head);
                (Some(client), https)
            }
            None => (None, false),
        };
        let tls = self.tls || https;
        RequestCtx {
            shard: self.shard().index,
            peer: self.peer,
            client,
            tls,
            identity: None,
            extensions: Default::default(),
        }
    }

    /// Waits for more request bytes. False when the connection should close.
    async fn read_more(&mut self) -> bool {
        let partial = {
            let mut rbuf = self.io.rbuf.borrow_mut();
            let partial = holds_part_of_a_head(&rbuf);
            if !partial {
                shrink_idle_read_buffer(&mut rbuf);
            }
            partial
        };
        let config = &self.io.shard.config;
        if !partial && self.io.shard.is_draining() {
            return false;
        }
        // A new connection's clock starts at accept (`serve`'s `accepted`).
        let timeout = if partial || self.first_request {
            let started = *self.head_started.get_or_insert_with(Instant::now);
            config.header_timeout.saturating_sub(started.elapsed())
        } else {
            config.keepalive_timeout
        };
        self.io.set_read_timeout(timeout);
        self.guard.entry.idle.set(!partial);
        let result = self.io.fill(READ_BUFFER_BYTES).await;
        self.guard.entry.idle.set(false);
        match result {
            Ok(0) => false,
            // The head's clock starts when a partial head is first waited on (read_more with
            // `partial`), in the same turn as the read that brought its first bytes: no clock
            // read per request on the common path where whole heads arrive at once.
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                if partial {
                    add(&self.shard().metrics.timeouts_header, 1);
                    self.reject(408, "request head timed out").await;
                } else if self.first_request {
                    // Nothing was asked: nothing to answer (nginx closes silently too).
                    add(&self.shard().metrics.timeouts_header, 1);
                } else {
                    add(&self.shard().metrics.timeouts_idle, 1);
                }
                false
            }
            Err(_) => false,
        }
    }

    /// Runs a batch's handlers from `first` on to their answers (`poll_finish_later`) within
    /// the batch's `--handler-timeout` (`deadline_ms`, as each wait of the batch), writing
    /// meanwhile the answers before them (found in review: at a full write buffer a ready
    /// answer waited for the whole rest of the batch, and the rest for a deadline of its own).
    /// Err: the write failed.
    async fn finish_later(
        &mut self,
        handlers: &mut [Option<crate::router::Reply>],
        early: &mut Vec<Option<Response>>,
        first: usize,
        deadline_ms: u64,
    ) -> io::Result<()> {
        if handlers.iter().all(Option::is_none) {
            return Ok(());
        }
        self.io.entry.handler_deadline_ms.set(deadline_ms);
        let held = owned_later(handlers, early);
        let (done, wrote) = self
            .writing_meanwhile(held, |io, cx| {
                poll_finish_later(handlers, early, first, cx, |cx| io.handler_wait(cx, false))
            })
            .await;
        if done {
            self.io.handler_answered();
        }
        wrote
    }

    /// Answers a request the connection cannot go on after, and flushes.
    /// A refused HEAD gets no content either (RFC 9110 §9.3.2; found in review: a 417 or 400
    /// carried its message, which a pipelining client would read as the next answer): the
    /// refused head is still at the front of the read buffer, whole or not.
    async fn reject(&mut self, status: u16, message: &str) {
        let mut response = Response::error(status, message);
        response.close = true;
        let is_head = asks_head(&self.io.rbuf.borrow());
        let _ = self
            .write_response(&mut response, is_head, Version::Http11, None)
            .await;
        self.linger = self.flush().await.is_ok();
    }

    /// RFC 9112 §9.6: after an answer that closes the connection, half-close it and read (and
    /// drop) what the client still sends until it closes too, goes quiet for
    /// `--lingering-timeout`, or `--lingering-time` passes (`--lingering-timeout` after a read
    /// timeout, `ConnIo::read_timed_out`); closing with unread data would send a
    /// reset, which can destroy the answer before the client reads it. A drain does not cut it
    /// short (it is bounded by `--grace` like any connection): a pipelining client that a drain
    /// stopped mid-stream lost the rest of its answers, the closing one included, to that reset.
    async fn linger(&mut self) {
        let timeout = self.shard().config.lingering_timeout;
        if timeout.is_zero() {
            return;
        }
        self.io.forget_read_wait();
        let fd = self.io.stream.borrow().as_raw_fd();
        // SAFETY: shutdown(2) on the connection's own open socket.
        unsafe { libc::shutdown(fd, libc::SHUT_WR) };
        let total = if self.io.read_timed_out.get() {
            timeout
        } else {
            self.shard().config.lingering_time
        };
        let until = Instant::now() + total;
        loop {
            self.io.rbuf.borrow_mut().clear();
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.io.set_read_timeout(timeout.min(left));
            match self.io.fill(READ_BUFFER_BYTES).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// Waits until the client has acknowledged every byte sent, as long as it keeps taking
    /// them: it gives up once the queue has not shrunk for `--lingering-timeout` (0: at once),
    /// or after `--lingering-time`; the drain's `--grace` bounds it too. A drain closes
    /// connections it finds idle, and ends others at their next answer, while their clients may
    /// still be sending: closing with their requests unread resets the connection, and a reset
    /// throws away what the send queue still holds (answers cut short, the closing one lost).
    /// Once the client holds every byte, the reset costs it nothing (Linux delivers received
    /// data before it reports the reset).
    async fn wait_sent(&self) {
        let timeout = self.shard().config.lingering_timeout;
        if timeout.is_zero() {
            return;
        }
        let started = Instant::now();
        let fd = self.io.stream.borrow().as_raw_fd();
        let (mut least, mut shrunk) = (libc::c_int::MAX, started);
        loop {
            let mut queued: libc::c_int = 0;
            // SAFETY: TIOCOUTQ (SIOCOUTQ for a socket) on the connection's own open socket
            // writes one int: the bytes sent and not yet acknowledged, plus those not yet sent.
            let asked = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
            let now = Instant::now();
            if queued < least {
                (least, shrunk) = (queued, now);
            }
            if asked != 0
                || queued == 0
                || now - shrunk >= timeout
                || now - started >= self.shard().config.lingering_time
            {
                return;
            }
            glommio::timer::sleep(SEND_QUEUE_POLL_INTERVAL).await;
        }
    }

    /// Reads and drops what the client sent that is already here (at most
    /// BODY_DISCARD_BYTES_MAX), without waiting: closing a socket with unread bytes resets the
    /// connection, and a client that sent another request after the drain shut the read side
    /// would see that reset instead of the end of the stream that tells it to retry elsewhere.
    /// Bytes that arrive after this still meet a reset, by then after every answer.
    fn discard_queued_input(&self) {
        let fd = self.io.stream.borrow().as_raw_fd();
        let mut scratch = self.io.shard.read_scratch.borrow_mut();
        let mut left = BODY_DISCARD_BYTES_MAX;
        while left > 0 {
            let read = crate::net::recv_raw(fd, &mut scratch[..]);
            if read <= 0 {
                return;
            }
            left = left.saturating_sub(read as u64);
        }
    }

    async fn handle(&mut self, head: RequestHead) -> Flow {
        add(&self.shard().metrics.requests, 1);
        let keep_alive = head.keep_alive();
        let is_head = head.is_head();
        let version = head.version();
        let body = match self.body_for(&head) {
            Ok(body) => body,
            Err(e) => {
                add(&self.shard().metrics.protocol_errors, 1);
                let mut response = Response::error(e.status(), e.message());
                response.close = true;
                // The body we refused (413, 501) may still be on its way.
                self.linger = true;
                return self
                    .write_response(&mut response, is_head, version, None)
                    .await;
            }
        };
        // The 100 goes straight to the socket when the handler first reads the body: answers
        // to earlier pipelined requests must be on the wire before it. Before any body, too: a
        // write while the handler reads it would count against `--max-held-bytes` in its place
        // (a connection holds for one direction at a time; found in review).
        if body.is_some() && self.flush().await.is_err() {
            return Flow::Close;
        }
        if let Some(port) = self.redirect_port {
            let mut response = redirect_https(&head, port);
            if !keep_alive {
                response.close = true;
            }
            // A body (of a POST, say) is read and dropped below, like any body a handler left.
            return self.finish(&mut response, body, is_head, version).await;
        }
        let ctx = self.ctx(&head);
        let request_body = match &body {
            Some(b) => Body::from_source(b.clone()),
            None => Body::empty(),
        };
        let mut reply = self.app.serve(Request::new(head, request_body, ctx));
        let (answered, wrote) = self
            .wait_for_handler(0, |cx| Pin::new(&mut reply).poll(cx))
            .await;
        drop(reply);
        if wrote.is_err() {
            return Flow::Close;
        }
        let mut response = match answered {
            Some(response) => response,
            None => {
                if self.io.handler_dropped(body.as_deref()) || self.io.client_gone() {
                    return Flow::Close;
                }
                // A body error that met the same sweep is the answer (`finish`), counted as
                // such, not as a handler timeout.
                if body.as_ref().is_none_or(|body| body.error.get().is_none()) {
                    add(&self.shard().metrics.timeouts_handler, 1);
                }
                handler_timeout_answer()
            }
        };
        if !keep_alive {
            response.close = true;
        }
        self.finish(&mut response, body, is_head, version).await
    }

    /// Writes the answer to a request and reads what is left of its body. The answer is
    /// borrowed, here and in `write_response`: moved, it was copied into each one's future (1.2%
    /// of a non-pipelined request's CPU went to those copies).
    async fn finish(
        &mut self,
        response: &mut Response,
        body: Option<Rc<ConnBody>>,
        is_head: bool,
        version: Version,
    ) -> Flow {
        // A streamed answer reads the body as it goes: whether it answered without asking for
        // the body is known only when its head is written (`write_stream`). A 204 or 304 has no
        // content: its stream is dropped unread, and its head written whole (review).
        let streamed = matches!(response.body, ResponseBody::Stream(_))
            && !is_head
            && !has_no_content(response.status);
        if let Some(body) = &body
            && self.finish_continue(body).await.is_err()
        {
            return Flow::Close;
        }
        if let Some(body) = &body {
            if let Some(error) = body.error.get() {
                *response = Response::from(error);
            } else if !streamed && !self.sent_anyway(body) && self.forgo_continue(body) {
                response.close = true;
            } else if !streamed && !body.done.get() {
                // A Content-Length that says more is left than we would discard: say so in this
                // answer's head. A chunked body's size is unknown: what of it has arrived goes
                // now, and the rest after the answer, up to `--max-body` as nginx discards it,
                // so the connection is kept as the answer says (found in review: it was cut at
                // 64 KiB after a keep-alive answer, and the client's next request was lost).
                let left = body.decoder.borrow().remaining_hint();
                match left {
                    Some(left) => response.close |= left > BODY_DISCARD_BYTES_MAX,
                    None => _ = discard_buffered(body),
                }
                // What arrived was not well framed: the connection cannot go on. The handler's
                // answer stands (it may have acted: a 400 in its place would deny what it did;
                // review), and says it closes.
                if body.error.get().is_some() {
                    response.close = true;
                }
            }
        }
        let flow = self
            .write_response(response, is_head, version, body.as_deref())
            .await;
        let Some(body) = body.filter(|body| !body.done.get()) else {
            return flow;
        };
        // A body left unread: after an answer that closes, the rest may still be on its way
        // (RFC 9112 §9.6: linger, or the close may reset the answer away); after a keep-alive
        // answer, it is read and dropped to frame the next request.
        if flow == Flow::Close || !self.discard(&body).await {
            self.linger = true;
            return Flow::Close;
        }
        flow
    }

    /// Finishes a `100 Continue` a full socket cut short (the handler asked for the body, then
    /// answered without it) before the final head: the head right after part of the 100
    /// garbled both (found in review). The body is then an unread one like any other. Err: the
    /// write failed, and nothing may follow it.
    async fn finish_continue(&self, body: &ConnBody) -> io::Result<()> {
        let Continue::Owed(mut written) = body.continue_state.get() else {
            return Ok(());
        };
        if written == 0 {
            return Ok(());
        }
        let io = &self.io;
        let result =
            std::future::poll_fn(|cx| io.poll_write_all(cx, CONTINUE_100, &mut written, None))
                .await;
        body.continue_state.set(Continue::Owed(written));
        result?;
        body.continue_state.set(Continue::Sent);
        io.shard.metrics.count_status(100);
        add(&io.shard.metrics.bytes_written, CONTINUE_100.len() as u64);
        Ok(())
    }

    /// Whether a body owed its 100, which a whole answer did not read, came without it (RFC 9110
    /// §10.1.1 lets a client send it without waiting): then it is here already, and is dropped,
    /// so the connection goes on (found in review: closed, the request behind it lost). Never
    /// for a streamed answer, which may still read it (review). A body not well framed stays
    /// owed: the answer closes, and stands (it may have acted).
    fn sent_anyway(&self, body: &ConnBody) -> bool {
        body.continue_state.get() == Continue::Owed(0)
            && !body.done.get()
            && discard_buffered(body) == Poll::Ready(true)
    }

    /// Before the final answer's head: a body still owed its 100 never gets it (RFC 9110
    /// §15.2), and as the client may or may not send that body, the connection cannot be reused
    /// (§10.1.1). True when the answer must close it.
    fn forgo_continue(&mut self, body: &ConnBody) -> bool {
        let owed = !body.done.get() && body.continue_state.get() == Continue::Owed(0);
        if owed {
            body.continue_state.set(Continue::Forgone);
            self.linger = true;
        }
        owed
    }

    fn body_for(&self, head: &RequestHead) -> Result<Option<Rc<ConnBody>>, HttpError> {
        if head.framing() == BodyFraming::Empty {
            return Ok(None);
        }
        let decoder = BodyDecoder::new(
            head.framing(),
            self.shard().config.body_bytes_max,
            TRAILER_BYTES_MAX,
        )?;
        self.io.set_read_timeout(self.shard().config.body_timeout);
        let continue_state = if head.expect_continue() {
            Continue::Owed(0)
        } else {
            Continue::NotAsked
        };
        Ok(Some(Rc::new(ConnBody {
            io: self.io.clone(),
            decoder: RefCell::new(decoder),
            continue_state: Cell::new(continue_state),
            error: Cell::new(None),
            done: Cell::new(false),
            held: Cell::new(0),
            waited: Cell::new(Duration::ZERO),
            wait_began: Cell::new(None),
            received: Cell::new(0),
            buffered_only: Cell::new(false),
        })))
    }

    /// Reads and drops what the handler left of a body, so the next request can be framed.
    /// False (close the connection) on any error, `--max-body` passed included: no more is
    /// left than BODY_DISCARD_BYTES_MAX of a Content-Length body (`finish` closes past it), and
    /// a chunked one is read to its end within the body bound and `--lingering-time` (then the
    /// connection closes, lingering as after any close). What is already read goes at
    /// once; before waiting for the rest, the answers so far are sent: the client may be
    /// waiting for one (a 401 or 413 to an upload) before it sends on, or stops.
    async fn discard(&mut self, body: &Rc<ConnBody>) -> bool {
        if let Poll::Ready(ended) = discard_buffered(body) {
            return ended;
        }
        if self.flush().await.is_err() {
            return false;
        }
        // `--body-timeout` bounds each read; `--lingering-time` bounds them all, as it bounds
        // a lingering close: a client trickling a body nobody reads does not keep its
        // connection for as long as it trickles (found in review).
        let until = Instant::now() + self.shard().config.lingering_time;
        let source: Rc<dyn BodySource> = body.clone();
        loop {
            match std::future::poll_fn(|cx| source.poll_chunk(cx)).await {
                None => return true,
                Some(Ok(_)) if Instant::now() < until => {}
                Some(_) => return false,
            }
        }
    }

    /// Encodes the response into the write buffer (streams are written as they come).
    /// `body`: the request's, when the answer may read it as it streams.
    async fn write_response(
        &mut self,
        response: &mut Response,
        is_head: bool,
        version: Version,
        body: Option<&ConnBody>,
    ) -> Flow {
        match self.encode_response(response, is_head, version) {
            Encoded::Done(flow) => flow,
            Encoded::Stream(streamed) => self.write_stream(streamed, version, body).await,
        }
    }

    /// Encodes a response whose body is whole (or absent, or a HEAD's); a streamed body comes
    /// back, for `write_stream`. Synchronous, so a batch encodes an answer the moment
    /// its handler gives it, without moving it through another future.
    fn encode_response(
        &mut self,
        response: &mut Response,
        is_head: bool,
        version: Version,
    ) -> Encoded {
        // Read in place (borrowed, not moved or destructured): a response just written by its
        // handler and then copied costs a store-forwarding stall per copy.
        ensure_final_status(response);
        let status = response.status;
        self.version = version;
        let shard = &self.io.shard;
        let close = response.close || shard.is_draining() || asks_to_close(&response.headers);
        let no_body_status = has_no_content(status);
        let framing = match &response.body {
            ResponseBody::Empty => whole_body_framing(status, 0),
            ResponseBody::Full(bytes) => whole_body_framing(status, bytes.len()),
            _ if no_body_status => http::ResponseBody::None,
            // RFC 9112 §6.1: no Transfer-Encoding to an HTTP/1.0 request (a HEAD's head here;
            // a GET's body is close-delimited, see `write_stream`).
            ResponseBody::Stream(_) if version == Version::Http10 => http::ResponseBody::None,
            ResponseBody::Stream(_) => http::ResponseBody::Chunked,
        };
        // A 1xx, 204 or 304 has no content, streamed or not (its stream is dropped unread).
        if let ResponseBody::Stream(_) = &response.body
            && !is_head
            && !no_body_status
        {
            let ResponseBody::Stream(stream) =
                std::mem::replace(&mut response.body, ResponseBody::Empty)
            else {
                unreachable!("matched just above")
            };
            return Encoded::Stream(Box::new(Streamed {
                status,
                headers: std::mem::take(&mut response.headers),
                stream,
                close,
            }));
        }
        self.encode_head(status, None, fields_of(&response.headers), framing, close);
        if let ResponseBody::Full(bytes) = &mut response.body
            && !is_head
            && !no_body_status
        {
            if bytes.len() >= BODY_UNCOPIED_BYTES_MIN {
                let before = self.wbuf.split().freeze();
                self.wqueue_bytes += before.len() + bytes.len();
                // Taken, not cloned: the queue's copy alone tells whether another owner
                // shares the body (`owned`).
                self.wqueue.extend([before, std::mem::take(bytes)]);
            } else {
                self.wbuf.extend_from_slice(bytes);
            }
        }
        Encoded::Done(if close { Flow::Close } else { Flow::KeepAlive })
    }

    async fn write_stream(
        &mut self,
        streamed: Box<Streamed>,
        version: Version,
        body: Option<&ConnBody>,
    ) -> Flow {
        let Streamed {
            status,
            headers,
            mut stream,
            close,
        } = *streamed;
        // A timeout the batch's later handlers met while this one waited (`finish_later` leaves
        // it set) is theirs: the stream's waits have their own (found in review: the stream was
        // cut at its first wait, and the slow handler's 503 never went out).
        self.io.handler_answered();
        // The head waits for the first chunk: a stream that fails at once (an echo of a body
        // with a bad chunk size, or over the limit) still gets a clean error answer. Until that
        // chunk the handler has not answered, and `--handler-timeout` bounds the wait.
        let first = (self.io)
            .within_handler_timeout(|cx| stream.as_mut().poll_next(cx))
            .await;
        let Some(first) = first else {
            drop(stream);
            if self.io.handler_dropped(body) || self.io.client_gone() {
                return Flow::Close;
            }
            add(&self.io.shard.metrics.timeouts_handler, 1);
            let mut response = handler_timeout_answer();
            if let Some(body) = body {
                self.forgo_continue(body);
            }
            return Box::pin(self.write_response(&mut response, false, version, None)).await;
        };
        if let Some(body) = body
            && self.finish_continue(body).await.is_err()
        {
            return Flow::Close;
        }
        if let Some(Err(error)) = first {
            let mut response = Response::from(error);
            if let Some(body) = body
                && self.forgo_continue(body)
            {
                response.close = true;
            }
            return Box::pin(self.write_response(&mut response, false, version, None)).await;
        }
        // HTTP/1.0 has no chunked coding: the body ends when the connection closes.
        let chunked = version == Version::Http11;
        let forgone = body.is_some_and(|body| self.forgo_continue(body));
        let close = close || !chunked || forgone;
        let framing = if chunked {
            http::ResponseBody::Chunked
        } else {
            http::ResponseBody::None
        };
        self.encode_head(status, None, fields_of(&headers), framing, close);
        let mut next = first;
        while let Some(chunk) = next.take() {
            let Ok(chunk) = chunk else {
                // The body broke mid-way (e.g. a request body error while echoing): the client
                // sees a truncated response, never a well-formed wrong one: a chunked one
                // without its last chunk, a close-delimited one ended by a reset (found in
                // review: an HTTP/1.0 client read a cut echo as whole).
                let _ = self.flush().await;
                self.cut_unframed = !chunked;
                return Flow::Close;
            };
            if chunked {
                http::encode_chunk(&mut self.wbuf, &chunk);
            } else {
                self.wbuf.extend_from_slice(&chunk);
            }
            // Chunks the stream has ready at once go out in one write, up to the flush bound:
            // a send per chunk made the server's CPU follow the client's chunking, not the
            // bytes (found in review: a 1 MB echo sent in 1-byte chunks cost 75 times one
            // sent whole, and slowed every other connection of the shard).
            // A stream that reads the request body takes only what is already read (a read
            // that waited now would wait through the flush: `ConnBody::buffered_only`).
            if self.unsent() < WRITE_BUFFER_FLUSH_BYTES {
                if let Some(body) = body {
                    body.buffered_only.set(true);
                }
                let ready = std::future::poll_fn(|cx| Poll::Ready(stream.as_mut().poll_next(cx)));
                let ready = ready.await;
                if let Some(body) = body {
                    body.buffered_only.set(false);
                }
                if let Poll::Ready(ready) = ready {
                    next = ready;
                    continue;
                }
            }
            if self.flush().await.is_err() {
                return Flow::Close;
            }
            // Each later chunk is bounded by `--handler-timeout` too, counted from the one
            // before (nginx's proxy_read_timeout): a stream that stalls mid-way held its
            // connection's slot for good. Its head is sent, so no 503 can follow: the answer is
            // cut, as a body that breaks mid-way is.
            let Some(chunk) = (self.io)
                .within_handler_timeout(|cx| stream.as_mut().poll_next(cx))
                .await
            else {
                drop(stream);
                self.io.handler_dropped(body);
                if !self.io.client_gone() {
                    add(&self.io.shard.metrics.timeouts_handler, 1);
                }
                self.cut_unframed = !chunked;
                return Flow::Close;
            };
            next = chunk;
        }
        if chunked {
            http::encode_last_chunk(&mut self.wbuf);
        }
        // A drain that began while streaming ends the connection after this response.
        if close || self.io.shard.is_draining() {
            Flow::Close
        } else {
            Flow::KeepAlive
        }
    }

    fn encode_head<'a>(
        &mut self,
        status: u16,
        content_type: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        body: http::ResponseBody,
        close: bool,
    ) {
        let shard = &*self.io.shard;
        // Counted here, where each answer's head is written once: a stream that fails before
        // its head is answered by an error instead, and counts as that.
        shard.metrics.count_status(status);
        let own = &shard.response_fields[usize::from(self.tls)];
        let date = shard.date.borrow();
        let mut head = http::HeadWriter::new(&mut self.wbuf, status, date.get());
        // RFC 9112 §9.3: an HTTP/1.0 client keeps the connection only if told so.
        if !close && self.version == Version::Http10 {
            head.field("Connection", b"keep-alive");
        }
        head.lines(&own.lines);
        if let Some(content_type) = content_type {
            head.content_type(content_type);
        }
        // A field the server writes itself (X-Shard, HSTS, the framing) replaces the handler's.
        for (name, value) in headers {
            if !own.managed.contains(name) {
                head.field(name, value);
            }
        }
        head.finish(body, close);
    }

    /// Waits for a handler's answer within `--handler-timeout` (`within_handler_timeout`),
    /// writing meanwhile the answers already encoded (`writing_meanwhile`): an answer that is
    /// ready goes out while a later pipelined handler waits, not once it answered (found in
    /// review: a `/plaintext` answer sat in the write buffer for the whole wait of the slow
    /// request after it). Err in the second place: the write failed, and the connection closes.
    async fn wait_for_handler<T>(
        &mut self,
        held: usize,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> (Option<T>, io::Result<()>) {
        let mut waited = false;
        let (answered, wrote) = self
            .writing_meanwhile(held, |io, cx| {
                let polled = poll(cx);
                io.poll_handler(cx, &mut waited, polled)
            })
            .await;
        self.io.handler_done(waited);
        (answered, wrote)
    }

    /// Polls `step` to its end and, once it is Pending, writes meanwhile what is encoded and
    /// unsent (the big bodies queued, then the write buffer, in order); the write ends before
    /// this returns, so nothing overtakes it. `held`: what the connection holds besides, for
    /// `--max-held-bytes` while the write waits (a batch's answers kept for their turn).
    /// Nothing is written for a step ready at its first poll. Err in the second place: the
    /// write failed.
    async fn writing_meanwhile<T>(
        &mut self,
        held: usize,
        mut step: impl FnMut(&ConnIo, &mut Context<'_>) -> Poll<T>,
    ) -> (T, io::Result<()>) {
        let io = &self.io;
        let (wbuf, wqueue, wqueue_bytes) =
            (&mut self.wbuf, &mut self.wqueue, &mut self.wqueue_bytes);
        // Each part, and whether the connection alone holds it: the write buffer's bytes are its
        // own however their allocation is shared (found in review: counted as a shared big body,
        // a stalled write of them held 0 bytes against `--max-held-bytes`).
        let mut parts: Vec<(Bytes, bool)> = Vec::new();
        let (mut at, mut written, mut sent) = (0, 0, 0);
        let mut wrote = Ok(());
        let held_by = |(part, own): &(Bytes, bool)| if *own { part.len() } else { owned(part) };
        // Writes parts from `at` on; Ready once all are written or one failed.
        let mut write =
            |cx: &mut Context<'_>, parts: &[(Bytes, bool)], wrote: &mut io::Result<()>| {
                while at < parts.len() {
                    let (part, own) = &parts[at];
                    io.flushing
                        .set(held + parts[at + 1..].iter().map(held_by).sum::<usize>());
                    let shared = (!own).then_some(part);
                    match io.poll_write_all(cx, part, &mut written, shared) {
                        Poll::Ready(Ok(())) => (at, sent, written) = (at + 1, sent + written, 0),
                        Poll::Ready(Err(e)) => {
                            (*wrote, sent) = (Err(e), sent + written);
                            break;
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                io.flushing.set(0);
                Poll::Ready(())
            };
        let result = std::future::poll_fn(|cx| {
            let polled = step(io, cx);
            if polled.is_pending() && wrote.is_ok() {
                if parts.is_empty() && *wqueue_bytes + wbuf.len() > 0 {
                    parts = std::mem::take(wqueue)
                        .into_iter()
                        .map(|part| (part, false))
                        .collect();
                    *wqueue_bytes = 0;
                    if !wbuf.is_empty() {
                        parts.push((wbuf.split().freeze(), true));
                    }
                }
                let _ = write(cx, &parts, &mut wrote);
            }
            polled
        })
        .await;
        // Done while the write was under way: it ends first.
        if wrote.is_ok() {
            std::future::poll_fn(|cx| write(cx, &parts, &mut wrote)).await;
        }
        add(&io.shard.metrics.bytes_written, sent as u64);
        (result, wrote)
    }

    /// Bytes encoded and not yet written.
    fn unsent(&self) -> usize {
        self.wqueue_bytes + self.wbuf.len()
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.unsent() == 0 {
            return Ok(());
        }
        let mut result = Ok(());
        // Empty but for big bodies: the common answer touches only `wbuf`.
        if self.wqueue_bytes > 0 {
            let mut queue = std::mem::take(&mut self.wqueue);
            // What the flush holds besides each part, for a write that waits (`flushing`):
            // the parts after it (those before are dropped), the write buffer, a batch's
            // later answers.
            let mut besides =
                queue.iter().map(owned).sum::<usize>() + self.wbuf.len() + self.later_held;
            for part in queue.drain(..) {
                besides = besides.saturating_sub(owned(&part));
                self.io.flushing.set(besides);
                if result.is_ok() && !part.is_empty() {
                    result = self.io.write_all(&part, Some(&part)).await;
                }
            }
            self.wqueue = queue;
            self.wqueue_bytes = 0;
        }
        self.io.flushing.set(self.later_held);
        if result.is_ok() {
            result = self.io.write_all(&self.wbuf, None).await;
        }
        self.io.flushing.set(0);
        self.wbuf.clear();
        if self.wbuf.capacity() > WRITE_BUFFER_KEEP_BYTES {
            self.wbuf = BytesMut::new();
        }
        result
    }
}

/// What a connection alone holds of `bytes`, queued to be written: nothing of a big body another
/// owner shares (a `/kv` value the store keeps, a static one). A smaller part is the write
/// buffer's bytes before a big body, which share its allocation, or a body it copies.
fn owned(bytes: &Bytes) -> usize {
    if bytes.len() < BODY_UNCOPIED_BYTES_MIN || bytes.is_unique() {
        bytes.len()
    } else {
        0
    }
}

/// What a batch's answers after the one being written hold that is theirs alone: the whole
/// bodies of those made already (heads are encoded later, and small).
fn owned_later(handlers: &mut [Option<crate::router::Reply>], early: &[Option<Response>]) -> usize {
    let body = |response: &Response| match &response.body {
        ResponseBody::Full(bytes) => owned(bytes),
        _ => 0,
    };
    let ready: usize = (handlers.iter_mut().flatten())
        .filter_map(crate::router::Reply::ready_mut)
        .map(|response| body(response))
        .sum();
    ready + early.iter().flatten().map(body).sum::<usize>()
}

/// Drops what of an unread body has already arrived. Ready(true): the body ended;
/// Ready(false): not well framed, or past the body bound (close); Pending: more is on its way.
fn discard_buffered(body: &ConnBody) -> Poll<bool> {
    loop {
        match body.poll_buffered() {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(true),
            Poll::Ready(Some(Ok(_))) => {}
            Poll::Ready(Some(Err(_))) => return Poll::Ready(false),
        }
    }
}

/// The shard's copy of its last direct answer's head (`Conn::encode_direct_head`).
#[derive(Default)]
pub struct DirectHead {
    key: Option<DirectHeadKey>,
    bytes: Vec<u8>,
}

/// Every input of a direct answer's head bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct DirectHeadKey {
    status: u16,
    content_type: &'static str,
    body_len: usize,
    close: bool,
    http10: bool,
    tls: bool,
    date_secs: u64,
}

/// Frees an empty read buffer unless it is small (see `ConnIo::poll_fill`): `try_reclaim` says
/// whether more than READ_BUFFER_KEEP_BYTES could be written into it without allocating.
fn release_big_read_buffer(rbuf: &mut BytesMut) {
    debug_assert!(rbuf.is_empty());
    if rbuf.try_reclaim(READ_BUFFER_KEEP_BYTES + 1) {
        *rbuf = BytesMut::new();
    }
}

/// A response's fields as the encoder takes them.
fn fields_of<'a>(
    headers: &'a [(Cow<'static, str>, Bytes)],
) -> impl Iterator<Item = (&'a str, &'a [u8])> {
    headers.iter().map(|(name, value)| (&**name, &value[..]))
}

/// Whether the unparsed bytes hold part of a request head: anything but the empty lines a
/// client may send before a request (RFC 9112 §2.2, which a server SHOULD ignore: `parse_head`
/// skips a bounded number). A connection holding only those is idle, under the keep-alive
/// timeout, not a slow head answered 408 (found by a black-box review: one CRLF after a request
/// got a 408 ten seconds later). A bare LF never waits here: `parse_head` refuses it at once.
fn holds_part_of_a_head(unparsed: &[u8]) -> bool {
    unparsed.iter().any(|&byte| byte != b'\r' && byte != b'\n')
}

/// The answer to a request whose handler did not answer within `--handler-timeout` (its future
/// is dropped): 503, and the connection closes, since the handler may have left the request's
/// body half read.
fn handler_timeout_answer() -> Response {
    let mut response = Response::error(503, "the handler did not answer in time");
    response.close = true;
    response
}

/// Leaves the task's waker where the shard's timeout sweep finds it (cloned only when it
/// changed).
fn park(slot: &RefCell<Option<Waker>>, cx: &Context<'_>) {
    let mut parked = slot.borrow_mut();
    if !parked.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *parked = Some(cx.waker().clone());
    }
}

/// Whether the request at the front of `buf` (after the empty lines `parse_head` skips) is a
/// HEAD.
fn asks_head(buf: &[u8]) -> bool {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n');
    start.is_some_and(|start| buf[start..].starts_with(b"HEAD "))
}

/// An idle connection's read buffer holds nothing, or only the few empty lines `parse_head`
/// allows before a request (at most 9 bytes). A grown one (a body's reads take up to 64 KiB) is
/// then swapped for a copy of those bytes, as `poll_fill` frees an empty one: an idle connection
/// does not pin a big buffer for its keep-alive timeout (found in review).
fn shrink_idle_read_buffer(rbuf: &mut BytesMut) {
    if !rbuf.is_empty() && rbuf.capacity() > READ_BUFFER_KEEP_BYTES {
        *rbuf = BytesMut::from(&rbuf[..]);
    }
}

/// 1xx, 204 and 304 answers have no content (RFC 9110 §6.4.1), whatever the handler gave.
fn has_no_content(status: u16) -> bool {
    status < 200 || status == 204 || status == 304
}

/// The framing of an answer whose body is whole: its length, or none where it has no content.
fn whole_body_framing(status: u16, body_bytes: usize) -> http::ResponseBody {
    if has_no_content(status) {
        http::ResponseBody::None
    } else {
        http::ResponseBody::Length(body_bytes as u64)
    }
}

/// The statuses a handler may answer with (RFC 9110 §15: a 1xx is never final, and values
/// outside 100-599 are not HTTP's); anything else is sent as a 500.
const FINAL_STATUSES: std::ops::RangeInclusive<u16> = 200..=599;

/// A handler's bug (or a status copied from elsewhere) costs its request, not the shard: a
/// status that cannot be a final answer is sent as a 500 (a 1xx as the final answer would
/// shift every later answer on the connection by one).
fn ensure_final_status(response: &mut Response) {
    if is_final_or_logged(response.status) {
        return;
    }
    let close = response.close;
    *response = Response::error(500, INVALID_STATUS_MESSAGE);
    response.close = close;
}

/// The body (and a line) of the 500 sent for a handler's status that cannot be final.
const INVALID_STATUS_MESSAGE: &str = "the handler gave an invalid status";

/// Whether a handler's `status` may be its final answer; if not, logs the handler's bug.
fn is_final_or_logged(status: u16) -> bool {
    if FINAL_STATUSES.contains(&status) {
        return true;
    }
    crate::log_line!(
        "percore: a handler answered status {status}, not a final status ({}-{}): sent 500",
        FINAL_STATUSES.start(),
        FINAL_STATUSES.end()
    );
    false
}

/// Whether a handler's own `Connection` field asks to close (the field is the server's to
/// write, so it is dropped from the head; its `close` is honoured, RFC 9110 §7.6.1).
fn asks_to_close(headers: &[(Cow<'static, str>, Bytes)]) -> bool {
    headers.iter().any(|(name, value)| {
        name.len() == "connection".len()
            && name.eq_ignore_ascii_case("connection")
            && value
                .split(|&byte| byte == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// The 308 of a `--redirect-https` listener: same host (from `Host`, without its port, or from
/// an absolute-form target, which takes precedence: RFC 9112 §3.2.2), the HTTPS listener's
/// port, same path and query. A missing or odd host gets 400: we never redirect to a name we
/// cannot vouch for.
fn redirect_https(head: &RequestHead, port: u16) -> Response {
    let Some(host) = head.host().and_then(host_name) else {
        return Response::error(400, "a redirect to https needs a valid Host header");
    };
    let mut location = String::with_capacity(16 + host.len() + head.target().len());
    location.push_str("https://");
    location.push_str(host);
    if port != 443 {
        location.push(':');
        location.push_str(itoa::Buffer::new().format(port));
    }
    // `OPTIONS *` (or anything not a path) goes to the root.
    let path = head.path();
    location.push_str(if path.starts_with('/') { path } else { "/" });
    if let Some(query) = head.query() {
        location.push('?');
        location.push_str(query);
    }
    Response::text(308, "redirecting to https\n").header("Location", location)
}

/// The host part of a Host header value (RFC 9110 §7.2: uri-host [":" port]): a DNS name or
/// IPv4 address of letters, digits, '-', '.', or a bracketed IPv6 literal.
fn host_name(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let host = if value.starts_with('[') {
        let end = value.find(']')?;
        let (literal, rest) = value.split_at(end + 1);
        literal[1..end].parse::<std::net::Ipv6Addr>().ok()?;
        if !(rest.is_empty() || rest.strip_prefix(':')?.parse::<u16>().is_ok()) {
            return None;
        }
        literal
    } else {
        let host = match value.split_once(':') {
            Some((host, port)) => {
                port.parse::<u16>().ok()?;
                host
            }
            None => value,
        };
        let name_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
        if host.is_empty() || host.len() > 253 || !host.bytes().all(name_char) {
            return None;
        }
        host
    };
    Some(host)
}

#[cfg(test)]
mod tests {
    use super::{
        BytesMut, READ_BUFFER_BYTES, READ_BUFFER_KEEP_BYTES, Response, host_name,
        poll_finish_later, release_big_read_buffer, shrink_idle_read_buffer,
    };

    /// Runs every handler still there to its answer, keeping the answers at their batch index;
    /// handlers already answered (None) are left alone.
    #[test]
    fn finish_later_runs_the_rest_of_a_batch_to_the_end() {
        let waits = |status: u16, polls: usize| {
            crate::router::Reply::future(async move {
                for _ in 0..polls {
                    futures_lite::future::yield_now().await;
                }
                Response::new(status)
            })
        };
        // A batch of 6; this is what follows its answer 1: answer 2 already taken, 3 and 4
        // wait, 5 came from a synchronous handler.
        let mut handlers = vec![
            None,
            Some(waits(203, 3)),
            Some(waits(204, 0)),
            Some(crate::router::Reply::ready(Response::new(205))),
        ];
        let mut early = Vec::new();
        let finish = |handlers: &mut [Option<crate::router::Reply>], early: &mut Vec<_>, first| {
            futures_lite::future::block_on(std::future::poll_fn(|cx| {
                poll_finish_later(handlers, early, first, cx, |_| false)
            }))
        };
        assert!(finish(&mut handlers, &mut early, 2));
        assert!(handlers.iter().all(Option::is_none));
        let statuses: Vec<Option<u16>> =
            early.iter().map(|r| r.as_ref().map(|r| r.status)).collect();
        assert_eq!(
            statuses,
            [None, None, None, Some(203), Some(204), Some(205)]
        );
        // Nothing left: nothing to do, and `early` is left as it was.
        let mut early = Vec::new();
        assert!(finish(&mut [None, None], &mut early, 3));
        assert!(early.is_empty());
    }

    #[test]
    fn a_status_that_cannot_be_final_is_sent_as_500() {
        for (given, sent) in [
            (200, 200),
            (599, 599),
            (0, 500),
            (100, 500),
            (101, 500),
            (199, 500),
            (600, 500),
            (1000, 500),
            (65535, 500),
        ] {
            let mut response = Response::text(given, "x");
            response.close = given == 1000;
            super::ensure_final_status(&mut response);
            assert_eq!(response.status, sent, "{given}");
            assert_eq!(response.close, given == 1000, "{given}: the close is kept");
        }
    }

    #[test]
    fn a_handlers_connection_close_is_honoured() {
        let asks = |value: &'static str| {
            super::asks_to_close(&[(
                "Connection".into(),
                bytes::Bytes::from_static(value.as_bytes()),
            )])
        };
        assert!(asks("close"));
        assert!(asks("Close"));
        assert!(asks("keep-alive, close"));
        assert!(asks(" upgrade ,CLOSE "));
        assert!(!asks("keep-alive"));
        assert!(!asks("closed"));
        assert!(!asks("x-close"));
        assert!(!super::asks_to_close(&[(
            "X-Connection".into(),
            bytes::Bytes::from_static(b"close")
        )]));
    }

    /// What `release_big_read_buffer` relies on in `bytes`: a small buffer whose request head is
    /// gone is reused whole by the next read, a big one is freed, and one a head still shares is
    /// kept without its bytes being touched.
    #[test]
    fn a_small_read_buffer_is_reused_and_a_big_one_freed() {
        let request = b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut rbuf = BytesMut::new();
        rbuf.extend_from_slice(request);
        let allocation = rbuf.as_ptr();
        let head = rbuf.split_to(rbuf.len()).freeze();
        drop(head);
        release_big_read_buffer(&mut rbuf);
        rbuf.extend_from_slice(request);
        assert_eq!(
            rbuf.as_ptr(),
            allocation,
            "the next read reuses the allocation"
        );

        // Shared with a head that lives on: kept, and the next read leaves the head's bytes be.
        let head = rbuf.split_to(rbuf.len()).freeze();
        release_big_read_buffer(&mut rbuf);
        rbuf.extend_from_slice(b"POST / HTTP/1.1\r\n");
        assert_eq!(&head[..], &request[..]);
        assert_eq!(&rbuf[..], b"POST / HTTP/1.1\r\n");
        rbuf.clear();
        drop(head);

        // At the bound: kept; one byte more: freed, whether the bytes were split off or not.
        for (bytes, split, kept) in [
            (READ_BUFFER_KEEP_BYTES, true, true),
            (READ_BUFFER_KEEP_BYTES + 1, true, false),
            (READ_BUFFER_KEEP_BYTES + 1, false, false),
            (READ_BUFFER_BYTES, true, false),
        ] {
            let mut rbuf = BytesMut::with_capacity(bytes);
            rbuf.extend_from_slice(&vec![b'a'; bytes]);
            let allocation = rbuf.as_ptr();
            if split {
                drop(rbuf.split_to(bytes).freeze());
            } else {
                rbuf.clear();
            }
            release_big_read_buffer(&mut rbuf);
            rbuf.extend_from_slice(b"G");
            let reused = rbuf.as_ptr() == allocation;
            assert_eq!(reused, kept, "{bytes} bytes, split {split}");
        }
    }

    /// Only the empty lines before a request are left: a big buffer is swapped for a copy of
    /// them, a small one kept.
    #[test]
    fn an_idle_connection_keeps_its_empty_lines_in_a_small_buffer() {
        for (capacity, kept) in [
            (READ_BUFFER_KEEP_BYTES, true),
            (READ_BUFFER_KEEP_BYTES + 1, false),
            (64 * 1024, false),
        ] {
            let mut rbuf = BytesMut::with_capacity(capacity);
            rbuf.extend_from_slice(b"\r\n\r");
            let allocation = rbuf.as_ptr();
            shrink_idle_read_buffer(&mut rbuf);
            assert_eq!(&rbuf[..], b"\r\n\r");
            assert_eq!(rbuf.as_ptr() == allocation, kept, "{capacity}");
            assert!(rbuf.capacity() <= READ_BUFFER_KEEP_BYTES, "{capacity}");
        }
    }

    #[test]
    fn host_names() {
        for (value, expected) in [
            ("example.com", Some("example.com")),
            ("example.com:8080", Some("example.com")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("[::1]:8443", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("", None),
            (":80", None),
            ("example.com:x", None),
            ("example.com:99999", None),
            ("evil.com/x", None),
            ("user@evil.com", None),
            ("[::1", None),
            ("[nope]:80", None),
            ("[::1]x", None),
        ] {
            assert_eq!(host_name(value.as_bytes()), expected, "{value:?}");
        }
    }
}
