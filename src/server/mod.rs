//! Accepts connections on a shard's listener within the per-shard connection bound, runs TLS handshakes within theirs, and hands each connection to `conn`.

pub mod conn;

use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use glommio::net::{TcpListener, TcpStream};
use glommio::sync::StaticPermit;

use crate::config::limits::ACCEPT_ERROR_LOG_INTERVAL;
use crate::metrics::add;
use crate::net::Transport;
use crate::net::tls::Acceptor;
use crate::router::App;
use crate::runtime::shard::Shard;

/// What a listener's connections get.
pub enum Serves {
    /// The app, over plain HTTP.
    App,
    /// The app, over TLS.
    Tls(Acceptor),
    /// A 308 to `https://host:PORT` with the same target, for every request.
    Redirect(u16),
}

/// Accepts until the shard drains. At `conns_max` open connections a connection just accepted
/// waits for a slot, unserved, and the listener accepts no more (the kernel's backlog holds the
/// rest); it is served when a connection closes. The slot is taken after `accept`, not before:
/// a listener waiting in `accept` with a slot in hand kept it from a shard's other listeners (with
/// `--max-conns 1` and two `--bind`, the second was never served), as Tomcat's acceptor does per
/// connector ("accept, but not process, one further connection").
pub async fn accept_loop(shard: Rc<Shard>, app: Rc<App>, listener: TcpListener, serves: Serves) {
    let slots = shard.conn_slots.clone();
    let serves = Rc::new(serves);
    let mut logged: Option<Instant> = None;
    let mut failures = 0u64;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.drain_started().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return, // dropping the listener closes it
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; the connection waits in
                // the backlog. Said once per ACCEPT_ERROR_LOG_INTERVAL with the count since, not
                // a hundred times a second.
                failures += 1;
                if logged.is_none_or(|at: Instant| at.elapsed() >= ACCEPT_ERROR_LOG_INTERVAL) {
                    crate::log_line!(
                        "percore: shard {}: accept failed: {e} ({failures} in the last {}s)",
                        shard.index,
                        ACCEPT_ERROR_LOG_INTERVAL.as_secs()
                    );
                    logged = Some(Instant::now());
                    failures = 0;
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let permit = match slots.try_acquire_static_permit(1) {
            Ok(permit) => permit,
            Err(_) => {
                let _waiting = shard.metrics.wait_at_bound();
                let waited = futures_lite::future::or(
                    async { slots.acquire_static_permit(1).await.ok() },
                    async {
                        shard.drain_started().await;
                        None
                    },
                )
                .await;
                match waited {
                    Some(permit) => permit,
                    // Draining: the connection is closed unserved, as the backlog's are.
                    None => return,
                }
            }
        };
        glommio::spawn_local(start(
            shard.clone(),
            app.clone(),
            serves.clone(),
            stream,
            permit,
        ))
        .detach();
    }
}

async fn start(
    shard: Rc<Shard>,
    app: Rc<App>,
    serves: Rc<Serves>,
    stream: TcpStream,
    permit: StaticPermit,
) {
    let _ = stream.set_nodelay(true);
    // The first request head's timeout counts from here, a TLS handshake included (found in
    // review: a silent TLS client held its slot for the handshake timeout plus the header
    // timeout, where the README promises the header timeout from accept).
    let accepted = Instant::now();
    match &*serves {
        Serves::App => {
            let transport = Transport::Plain(stream);
            conn::serve(shard, app, transport, None, accepted, permit).await
        }
        Serves::Redirect(port) => {
            let transport = Transport::Plain(stream);
            conn::serve(shard, app, transport, Some(*port), accepted, permit).await
        }
        Serves::Tls(acceptor) => {
            if let Some(tls) = handshake(&shard, acceptor, stream).await {
                let transport = Transport::Tls(Box::new(tls));
                conn::serve(shard, app, transport, None, accepted, permit).await
            }
        }
    }
}

/// Runs a TLS handshake within the handshake timeout, which counts from accept: the
/// ClientHello is read without a turn, then each step of the rest (the server's key exchange and
/// signature, later the client's answer) runs within one of `--tls-handshakes-max` turns, given
/// back whenever the handshake waits on the client (`in_turns`): a silent or stalled client holds
/// only its connection slot. None: the connection is dropped (timed out, or the client's
/// handshake failed).
async fn handshake(
    shard: &Shard,
    acceptor: &Acceptor,
    stream: TcpStream,
) -> Option<futures_rustls::server::TlsStream<TcpStream>> {
    let _open = HandshakeOpen::new(&shard.metrics.tls_handshakes_open);
    // One timer for the whole handshake, not per read.
    let timeout = shard.config.tls.handshake_timeout;
    let work = async {
        let Ok(hello) = acceptor.client_hello(stream).await else {
            return Some(None);
        };
        let finish = std::pin::pin!(acceptor.finish(hello));
        Some(in_turns(shard, finish).await?.ok())
    };
    let outcome = futures_lite::future::or(work, async {
        glommio::timer::sleep(timeout).await;
        None
    })
    .await;
    match outcome {
        Some(Some(tls)) => {
            add(&shard.metrics.tls_handshakes, 1);
            Some(tls)
        }
        Some(None) => {
            add(&shard.metrics.tls_handshake_failures, 1);
            None
        }
        None => {
            add(&shard.metrics.tls_handshake_timeouts, 1);
            None
        }
    }
}

/// Counts a TLS handshake under way (`/stats` `tls_handshakes_open`) for as long as it lives.
struct HandshakeOpen<'a>(&'a std::cell::Cell<u64>);

impl HandshakeOpen<'_> {
    fn new(open: &std::cell::Cell<u64>) -> HandshakeOpen<'_> {
        add(open, 1);
        HandshakeOpen(open)
    }
}

impl Drop for HandshakeOpen<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Polls `work` only within one of the shard's handshake turns, and gives the turn back each time
/// `work` waits (for the client's next flight, or for room to write): the turn bounds the
/// server's handshake CPU, not the clients it waits on. Found in review: a turn held from the
/// ClientHello to the end of the handshake let `--tls-handshakes-max` clients that sent a hello
/// and went silent stall every other handshake on the shard until their timeout. A turn taken
/// without waiting is held across one yield, so that handshakes woken together take turns with
/// the shard's other tasks instead of running all their key exchanges in one go. None: the
/// turns' semaphore was closed.
async fn in_turns<F: Future + Unpin>(shard: &Shard, mut work: F) -> Option<F::Output> {
    let slots = &shard.tls_handshake_slots;
    loop {
        let turn = match slots.try_acquire_permit(1) {
            Ok(turn) => {
                futures_lite::future::yield_now().await;
                turn
            }
            Err(_) => {
                add(&shard.metrics.tls_handshake_waits, 1);
                slots.acquire_permit(1).await.ok()?
            }
        };
        if let Some(output) = futures_lite::future::poll_once(&mut work).await {
            return Some(output);
        }
        drop(turn);
        until_woken().await;
    }
}

/// Pending once, then ready: the task sleeps until a waker registered by the future it last
/// polled (a socket, the handshake's timer) wakes it.
async fn until_woken() {
    let mut slept = false;
    futures_lite::future::poll_fn(|_| {
        if std::mem::replace(&mut slept, true) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}
