//! The byte stream under a connection: plain TCP or TLS over a glommio socket, behind one type so the connection code is written once; knows nothing of HTTP.

pub mod tls;

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::server::TlsStream;
use glommio::net::TcpStream;
use glommio::timer::Timer;

/// A connection's stream. An enum rather than a trait object: the plain path stays a direct
/// call, and TLS adds one branch per read or write.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

/// A TLS stream whose read timeout counts until plaintext arrives. The socket's own timeout
/// restarts with every byte, and over TLS bytes are not data: a client dripping one byte of a
/// 16 KiB record now and then would never time out (found in review).
pub struct Tls {
    stream: TlsStream<TcpStream>,
    read_timeout: Option<Duration>,
    /// Armed when a read first waits; disarmed when it returns.
    read_timer: Option<Timer>,
}

impl Tls {
    pub fn new(stream: TlsStream<TcpStream>) -> Tls {
        Tls {
            stream,
            read_timeout: None,
            read_timer: None,
        }
    }
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => s.stream.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Bounds every later read: no bytes (plain) or no plaintext (TLS) for `timeout` fails
    /// the read with `TimedOut`.
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        let timeout = timeout.max(Duration::from_millis(1));
        match self {
            Transport::Plain(s) => {
                let _ = s.set_read_timeout(Some(timeout));
            }
            Transport::Tls(s) => {
                s.read_timeout = Some(timeout);
                s.read_timer = None;
            }
        }
    }

    pub fn set_write_timeout(&self, timeout: Duration) {
        let _ = self
            .tcp()
            .set_write_timeout(Some(timeout.max(Duration::from_millis(1))));
    }

    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp().peer_addr().ok()
    }
}

impl AsRawFd for Transport {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => s.poll_read(cx, buf),
        }
    }
}

impl Tls {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if let Poll::Ready(result) = Pin::new(&mut self.stream).poll_read(cx, buf) {
            self.read_timer = None;
            return Poll::Ready(result);
        }
        let Some(timeout) = self.read_timeout else {
            return Poll::Pending;
        };
        let timer = self.read_timer.get_or_insert_with(|| Timer::new(timeout));
        if Pin::new(timer).poll(cx).is_ready() {
            self.read_timer = None;
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(&mut s.stream).poll_write(cx, buf),
        }
    }

    /// TLS buffers records inside rustls: a response is only on the wire after a flush.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(_) => Poll::Ready(Ok(())),
            Transport::Tls(s) => Pin::new(&mut s.stream).poll_flush(cx),
        }
    }

    /// Sends TLS close_notify, then shuts the socket's write side.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_close(cx),
            Transport::Tls(s) => Pin::new(&mut s.stream).poll_close(cx),
        }
    }
}
