//! The byte stream under a connection: plain TCP or TLS over a glommio socket, behind one type so the connection code is written once; knows nothing of HTTP.

pub mod ready;
pub mod tls;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::server::TlsStream;
use glommio::net::TcpStream;

/// A connection's stream. An enum rather than a trait object: the plain path stays a direct
/// call, and TLS adds one branch per read or write.
pub enum Transport {
    Plain(TcpStream),
    /// Read timeouts: see `server::conn`, which counts them until plaintext arrives, not until
    /// a byte does.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    pub fn set_write_timeout(&self, timeout: Duration) {
        let _ = self
            .tcp()
            .set_write_timeout(Some(timeout.max(Duration::from_millis(1))));
    }

    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp().peer_addr().ok()
    }

    /// Ends a TLS session: its close_notify, flushed, so the client can tell a whole answer
    /// from a cut connection. The socket is left as it is, as a plain connection's is: a TLS
    /// close (`poll_close`) also shuts the write side, and a socket the drain shut for reading
    /// must not be shut both ways (`ConnEntry::drained`; found in review).
    pub fn poll_close_notify(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Plain(_) => Poll::Ready(Ok(())),
            Transport::Tls(s) => {
                s.get_mut().1.send_close_notify();
                Pin::new(&mut **s).poll_flush(cx)
            }
        }
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
            Transport::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
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
            Transport::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    /// TLS buffers records inside rustls: a response is only on the wire after a flush.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(_) => Poll::Ready(Ok(())),
            Transport::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    /// Sends TLS close_notify, then shuts the socket's write side.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_close(cx),
            Transport::Tls(s) => Pin::new(&mut **s).poll_close(cx),
        }
    }
}

/// recv(2) without waiting, as a raw system call: glibc's `recv` makes every call a thread
/// cancellation point (two atomic updates of the thread's cancel state around the call), and
/// percore never cancels a thread. -1 with `errno` set on failure, as `recv`.
pub fn recv_raw(fd: RawFd, buf: &mut [u8]) -> isize {
    recvfrom(fd, buf, libc::MSG_DONTWAIT)
}

fn recvfrom(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> isize {
    // SAFETY: recvfrom(2) into a buffer we own, on a socket the caller keeps open; no address.
    unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            buf.as_mut_ptr(),
            buf.len(),
            flags,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        ) as isize
    }
}

/// Whether the peer of `fd` is gone: its FIN comes first in the socket (nothing unread before
/// it), or the socket has an error (a reset). A peek: nothing is taken.
pub fn peer_gone(fd: RawFd) -> bool {
    let n = recvfrom(fd, &mut [0u8], libc::MSG_PEEK | libc::MSG_DONTWAIT);
    match n {
        0 => true,
        1 => false,
        _ => !matches!(
            io::Error::last_os_error().kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    }
}

/// Which way a connection waits on its client: for it to read what was written, or to send.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Waiting {
    Write,
    Read,
}

/// Bytes the TCP connection of `fd` has moved so far the way it waits: those its peer
/// acknowledged, or those it received (Linux 4.1+ `tcp_info`); 0 when the kernel cannot say.
/// The difference between two readings is how fast a client reads or sends, whatever the
/// server's own reads and writes saw: a write only learns of progress when a third of a big
/// send buffer has drained. One way only: a client that does not read could look fast by
/// sending (found in review).
pub fn tcp_bytes_moved(fd: RawFd, waiting: Waiting) -> u64 {
    // SAFETY: an all-zero tcp_info is a valid value (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes into `info`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return 0;
    }
    match waiting {
        Waiting::Write => info.tcpi_bytes_acked,
        Waiting::Read => info.tcpi_bytes_received,
    }
}

/// Makes the close of `fd` a reset (SO_LINGER 0): the send queue is dropped, and the client
/// learns the answer was cut.
pub fn reset_on_close(fd: RawFd) {
    let abort = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) on a socket the caller keeps open, with a `linger` it reads.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const abort).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// send(2) without waiting and without SIGPIPE, as a raw system call (see `recv_raw`).
pub fn send_raw(fd: RawFd, buf: &[u8]) -> isize {
    // SAFETY: sendto(2) from a buffer we own, on a socket the caller keeps open; no address.
    unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            buf.as_ptr(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        ) as isize
    }
}
