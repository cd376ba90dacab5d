//! Thin, safe wrappers over the libc calls the engine makes (sockets, epoll, clock); no policy lives here.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// An epoll instance, closed on drop.
pub struct Epoll {
    fd: RawFd,
    /// epoll_pwait2 (Linux 5.11) takes a nanosecond timeout; without it we round up to ms.
    has_pwait2: bool,
}

pub const IN: u32 = libc::EPOLLIN as u32;
pub const OUT: u32 = libc::EPOLLOUT as u32;
pub const ERR_OR_HUP: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
/// The peer shut its sending side (a FIN is queued behind any bytes still to read).
pub const PEER_CLOSED: u32 = libc::EPOLLRDHUP as u32;

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers; the returned fd is owned by the Epoll.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll {
            fd,
            has_pwait2: true,
        })
    }

    /// Every registration is edge-triggered: an event is reported once per change (new bytes,
    /// room to write), so the reader reads until a short read, and on to the end of stream when
    /// the event says the peer has closed (`PEER_CLOSED`: a FIN that came with the last bytes
    /// brings no event of its own). Level-triggered, every reported socket is polled again by
    /// the next epoll_wait only to find it drained: one tcp_poll per response more.
    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: events | PEER_CLOSED | libc::EPOLLET as u32,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.fd, op, fd, &mut event) }).map(drop)
    }

    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Waits up to `timeout_ns`; returns how many entries of `events` were filled.
    pub fn wait(&mut self, events: &mut [libc::epoll_event], timeout_ns: u64) -> usize {
        let max = events.len().min(i32::MAX as usize) as libc::c_int;
        let n = if self.has_pwait2 {
            let ts = libc::timespec {
                tv_sec: (timeout_ns / 1_000_000_000) as _,
                tv_nsec: (timeout_ns % 1_000_000_000) as _,
            };
            // SAFETY: `events` holds `max` writable entries, `ts` outlives the call, and a null
            // sigmask means "no change" (sigsetsize is then ignored).
            let r = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    self.fd,
                    events.as_mut_ptr(),
                    max,
                    &ts,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            // ENOSYS before Linux 5.11; EPERM from a seccomp filter that predates it (older
            // container runtimes), where every wait would return at once and spin.
            if r < 0
                && matches!(
                    io::Error::last_os_error().raw_os_error(),
                    Some(libc::ENOSYS | libc::EPERM)
                )
            {
                self.has_pwait2 = false;
                return 0;
            }
            r as libc::c_int
        } else {
            let ms = timeout_ns.div_ceil(1_000_000).min(i32::MAX as u64) as libc::c_int;
            // SAFETY: `events` holds `max` writable entries.
            unsafe { libc::epoll_wait(self.fd, events.as_mut_ptr(), max, ms) }
        };
        // EINTR (a signal) and other failures just end this wait early.
        n.max(0) as usize
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}

/// A non-blocking TCP socket with a connect in progress (or done). Closed on drop.
pub struct Socket {
    pub fd: RawFd,
}

impl Socket {
    /// Creates a non-blocking socket with TCP_NODELAY and starts connecting it.
    pub fn connect(addr: &SocketAddr) -> io::Result<Socket> {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain syscall; the fd is owned by the Socket from here on.
        let fd = cvt(unsafe {
            libc::socket(
                family,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        })?;
        let socket = Socket { fd };
        let one: libc::c_int = 1;
        // SAFETY: `one` is a c_int that lives through the call, and its size is passed.
        cvt(unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as _,
            )
        })?;
        let (storage, len) = sockaddr_of(addr);
        // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
        let r =
            unsafe { libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(socket)
    }

    /// The outcome of a non-blocking connect, once the socket is writable.
    pub fn take_error(&self) -> io::Result<()> {
        let mut error: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `error` and `len` are valid for writes of the sizes given.
        cvt(unsafe {
            libc::getsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut error as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        if error == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(error))
        }
    }

    #[inline]
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        cvt_size(unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) })
    }

    #[inline]
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of its length. MSG_NOSIGNAL: a closed peer is an
        // error to count, not a SIGPIPE.
        cvt_size(unsafe { libc::send(self.fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own the fd; closing it also removes it from every epoll set.
        unsafe { libc::close(self.fd) };
    }
}

fn sockaddr_of(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as _,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as _,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Makes room for `fds_needed` open files: raises RLIMIT_NOFILE's soft limit (up to the hard
/// limit) when it is lower. Errs with the rest of a sentence when even the hard limit is lower.
pub fn ensure_fds(fds_needed: usize) -> Result<(), String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })
        .map_err(|e| format!("cannot read the file descriptor limit: {e}"))?;
    let needed = fds_needed as libc::rlim_t;
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    if limit.rlim_max < needed {
        return Err(format!(
            "needs {fds_needed} file descriptors; the limit is {} (ulimit -n)",
            limit.rlim_max
        ));
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the hard one is allowed.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }).map_err(|e| {
        format!(
            "needs {fds_needed} file descriptors; raising the limit to {} failed: {e}",
            limit.rlim_max
        )
    })?;
    Ok(())
}

/// True when `fd` is a terminal (the live progress line is printed only then).
pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the fd.
    unsafe { libc::isatty(fd) == 1 }
}

/// Makes this thread's timed waits end on time: the default timer slack (50 µs) would add up to
/// 50 µs to every open-loop send and show up as latency.
pub fn set_timer_slack_ns(slack_ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, slack_ns as libc::c_ulong, 0, 0, 0) };
}
