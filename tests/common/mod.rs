//! Test harness: starts the real `percore` binary on 127.0.0.1:0 and speaks raw HTTP/1.1 to it over TCP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod tls;

pub const BIN: &str = env!("CARGO_BIN_EXE_percore");

/// A running server, killed on drop; then the data dir the harness made for it (if any) is
/// removed, as fields drop after `Drop::drop` has killed and reaped the child.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    pub data_dir: Option<tempfile::TempDir>,
}

impl Server {
    /// `percore --bind 127.0.0.1:0 --shards 2` plus `args`.
    pub fn start(args: &[&str]) -> Server {
        let mut full = vec!["--bind", "127.0.0.1:0", "--shards", "2"];
        full.extend_from_slice(args);
        Server::start_exact(&full)
    }

    /// `percore` with exactly `args`; waits for every `listening on` line.
    pub fn start_exact(args: &[&str]) -> Server {
        Server::start_with(BIN, args)
    }

    /// Any percore-based binary with exactly `args`.
    pub fn start_with(binary: &str, args: &[&str]) -> Server {
        Server::start_command(binary, args, |_| {})
    }

    /// `start_with`, after `configure` set up the command (a resource limit, the environment).
    pub fn start_command(
        binary: &str,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Server {
        let binds = args.iter().filter(|a| **a == "--bind").count().max(1)
            + args.iter().filter(|a| **a == "--redirect-https").count();
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut data_dir = None;
        if !args.iter().any(|a| a == "--data-dir") {
            let dir = temp_dir("data");
            args.push("--data-dir".into());
            args.push(dir.path().to_str().unwrap().to_string());
            data_dir = Some(dir);
        }
        let mut command = Command::new(binary);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        configure(&mut command);
        let mut child = command.spawn().expect("spawn percore");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addrs = Vec::new();
        while addrs.len() < binds {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| {
                    let threads = match child.try_wait() {
                        Ok(None) => threads_of(child.id()),
                        _ => String::new(),
                    };
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("percore did not print `listening on` for {args:?}\n{threads}")
                });
            let addr = line
                .strip_prefix("listening on http://")
                .or_else(|| line.strip_prefix("listening on https://"))
                .and_then(|rest| rest.split(' ').next());
            if let Some(addr) = addr {
                addrs.push(addr.parse().expect("address in the listening line"));
            }
        }
        Server {
            child,
            addr: addrs[0],
            addrs,
            data_dir,
        }
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    /// Sends `raw` on a new connection and reads until the server closes it.
    pub fn exchange(&self, raw: &[u8]) -> Vec<u8> {
        let mut stream = self.connect();
        stream.write_all(raw).unwrap();
        read_to_close(&mut stream)
    }

    /// One GET on a new connection; the parsed response.
    pub fn get(&self, path: &str) -> Response {
        let mut stream = self.connect();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        read_response(&mut stream).expect("a response")
    }

    pub fn stats(&self) -> serde_json::Value {
        let response = self.get("/stats");
        assert_eq!(response.status, 200);
        serde_json::from_slice(&response.body).expect("stats JSON")
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, limit)
    }

    /// A graceful stop (SIGTERM): the server must exit 0 within 20 s (shutdown snapshots and
    /// checkpoints included).
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(20));
        assert_eq!(
            status.map(|s| s.code()),
            Some(Some(0)),
            "exit 0 within 20 s of SIGTERM"
        );
    }

    /// A crash (SIGKILL): nothing of a shutdown runs.
    pub fn crash(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// What each thread of a process that seems stuck is doing, for a test's failure message: its
/// state, where it waits in the kernel, and (where gdb is installed) its user-space stack. A
/// start that never said `listening` under heavy load could not be told apart from a slow one.
pub fn threads_of(pid: u32) -> String {
    let mut out = format!("threads of pid {pid}:\n");
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    for task in tasks.flatten() {
        let dir = task.path();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let stat = read("stat");
        // The state follows the parenthesised name, which may hold spaces.
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        out.push_str(&format!(
            "  {} {} state {} wchan {}\n",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            state.unwrap_or("?"),
            read("wchan")
        ));
        for frame in read("stack").lines() {
            out.push_str(&format!("      {frame}\n"));
        }
    }
    let gdb = Command::new("timeout")
        .args([
            "20",
            "gdb",
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .stdin(Stdio::null())
        .output();
    if let Ok(gdb) = gdb
        && gdb.status.success()
    {
        out.push_str(&String::from_utf8_lossy(&gdb.stdout));
    }
    out
}

/// The child's exit status, if it exits within `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh, empty directory under the system temp dir, removed when the returned guard drops.
/// All a child wrote on its stderr (a pipe), once it has exited.
pub fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

pub fn temp_dir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("percore-test-{what}-"))
        .tempdir()
        .unwrap()
}

/// Runs a `percore` tool (`hash-password`, `hash-token`) with `input` on stdin; its output line.
pub fn tool(command: &str, input: &str) -> String {
    let mut child = Command::new(BIN)
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run percore");
    writeln!(child.stdin.take().unwrap(), "{input}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "percore {command}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Runs `percore args` expecting it to exit at once; returns (exit code, stderr). Bounded: a
/// percore that starts serving instead is killed after 20 s and fails the test.
pub fn run_failing(args: &[&str]) -> (i32, String) {
    // In a working directory of its own: the default `--data-dir` is relative to it, and one left
    // in the package's directory (by a server run there by hand) would fail the start first.
    let cwd = temp_dir("cwd");
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run percore");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("percore {args:?} kept running; it was expected to exit at once");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.code().unwrap_or(-1), reader.join().unwrap())
}

/// A connection to `server` with a `window`-byte receive buffer, so the server's writes to it
/// soon wait.
pub fn connect_with_window(server: &Server, window: usize) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(window).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    socket.into()
}

/// Polls `probe` every 20 ms until it gives a value, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if started.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("read: {e} after {:?}", String::from_utf8_lossy(&all)),
        }
    }
}

/// True when the peer has closed: a read returns EOF (or reset) within the stream's timeout.
pub fn is_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// The `name=value` part of a response's Set-Cookie.
pub fn cookie_of(response: &Response) -> String {
    let set = response.header("set-cookie").expect("a Set-Cookie");
    set.split(';').next().unwrap().trim().to_string()
}

/// A buffered reader of responses on one connection (keeps bytes that belong to the next one);
/// over TCP, or TLS (`tls::TlsStream`).
pub struct Conn<S: Read + Write = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> Conn<S> {
    pub fn new(stream: S) -> Conn<S> {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    /// Reads one response; None if the connection closed before a whole one arrived.
    /// `head_only`: the request was HEAD (no body whatever the headers say).
    pub fn response(&mut self, head_only: bool) -> Option<Response> {
        loop {
            if let Some((response, used)) = parse_response(&self.buf, head_only) {
                self.buf.drain(..used);
                return Some(response);
            }
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return None;
                }
                Err(e) => panic!("read: {e}; have {:?}", String::from_utf8_lossy(&self.buf)),
            }
        }
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        self.response(false).expect("a response")
    }
}

impl Conn<TcpStream> {
    pub fn closed(&mut self) -> bool {
        self.buf.is_empty() && is_closed(&mut self.stream)
    }
}

pub fn read_response(stream: &mut TcpStream) -> Option<Response> {
    Conn::new(stream.try_clone().unwrap()).response(false)
}

/// Parses one whole response at the start of `buf`: (response, bytes used).
pub fn parse_response(buf: &[u8], head_only: bool) -> Option<(Response, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(buf).expect("a valid response head") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let status = parsed.code.unwrap();
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let chunked = find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if head_only || status < 200 || status == 204 || status == 304 {
        return Some((
            Response {
                status,
                headers,
                body: Vec::new(),
                chunked,
            },
            head_len,
        ));
    }
    if chunked {
        let mut at = head_len;
        let mut body = Vec::new();
        loop {
            let line_end = find_crlf(&buf[at..])? + at;
            let size_text = std::str::from_utf8(&buf[at..line_end]).unwrap();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .expect("chunk size");
            at = line_end + 2;
            if size == 0 {
                // trailers until an empty line
                loop {
                    let end = find_crlf(&buf[at..])? + at;
                    let empty = end == at;
                    at = end + 2;
                    if empty {
                        return Some((
                            Response {
                                status,
                                headers,
                                body,
                                chunked,
                            },
                            at,
                        ));
                    }
                }
            }
            if buf.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[at..at + size]);
            assert_eq!(
                &buf[at + size..at + size + 2],
                b"\r\n",
                "chunk data ends with CRLF"
            );
            at += size + 2;
        }
    }
    let length: usize = match find("content-length") {
        Some(v) => v.parse().expect("numeric content-length"),
        None => return None, // close-delimited: the caller reads to close
    };
    if buf.len() < head_len + length {
        return None;
    }
    Some((
        Response {
            status,
            headers,
            body: buf[head_len..head_len + length].to_vec(),
            chunked,
        },
        head_len + length,
    ))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Opens connections until one lands on each shard (needs `--expose-shard`-like evidence); here:
/// simply opens `n` connections.
pub fn connections(server: &Server, n: usize) -> Vec<Conn> {
    (0..n).map(|_| Conn::new(server.connect())).collect()
}

/// A keep-alive connection on each of shards 0 and 1 (the server runs with `--expose-shard`):
/// connects until both are found.
pub fn one_per_shard(server: &Server) -> [Conn; 2] {
    let mut found: [Option<Conn>; 2] = [None, None];
    for _ in 0..200 {
        let mut conn = Conn::new(server.connect());
        let shard: usize = conn
            .get("/health")
            .header("x-shard")
            .expect("--expose-shard")
            .parse()
            .unwrap();
        if found[shard].is_none() {
            found[shard] = Some(conn);
        }
        if found.iter().all(Option::is_some) {
            return found.map(Option::unwrap);
        }
    }
    panic!("200 connections all landed on one shard");
}

/// Repeats `attempt` while it answers 409, for at most 5 s: after a cross-shard transaction
/// answers, its participants unlock on the decision message, so a request touching the same keys
/// in that moment can find them locked.
pub fn retry_conflicts<T>(mut attempt: impl FnMut() -> T, status: impl Fn(&T) -> u16) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = attempt();
        if status(&response) != 409 || Instant::now() > deadline {
            return response;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A pipe whose write end is full (64 KiB nobody reads): what a stalled log shipper gives a
/// process as stdout or stderr. The read end is returned to be kept open, unread.
pub fn stalled_pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array we own; fcntl and write act on
    // them only.
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        let flags = libc::fcntl(fds[1], libc::F_GETFL);
        libc::fcntl(fds[1], libc::F_SETFL, flags | libc::O_NONBLOCK);
        let chunk = [b'x'; 4096];
        while libc::write(fds[1], chunk.as_ptr().cast(), chunk.len()) > 0 {}
        // Blocking again for the child, as a real pipe is.
        libc::fcntl(fds[1], libc::F_SETFL, flags);
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}
