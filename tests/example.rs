//! The examples (`examples/hello.rs`, `shop.rs`, `export.rs`, built by `cargo test`) run and serve their own routes next to the built-in ones.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Conn, connect_with_window, wait_for};

/// `examples/export.rs` on one shard, with `extra` flags.
fn export(extra: &[&str]) -> common::Server {
    let binary = example_binary("export");
    let args = [&["--bind", "127.0.0.1:0", "--shards", "1"], extra].concat();
    common::Server::start_with(binary.to_str().unwrap(), &args)
}

/// `GET`s of `paths`, pipelined in one buffer.
fn pipelined_gets(paths: &[&str]) -> Vec<u8> {
    (paths.iter())
        .flat_map(|path| format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes())
        .collect()
}

fn example_binary(name: &str) -> PathBuf {
    // target/debug/percore -> target/debug/examples/NAME
    let bin = PathBuf::from(common::BIN);
    let path = bin.parent().unwrap().join("examples").join(name);
    // `cargo test` builds the examples; `cargo test --test example` alone does not rebuild a
    // stale one (building from here each time recompiled everything: cargo's environment differs).
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --example {name}");
    }
    path
}

#[test]
fn hello_example_serves_params_middleware_and_builtins() {
    let server = common::Server::start_with(
        example_binary("hello").to_str().unwrap(),
        &["--bind", "127.0.0.1:0", "--shards", "2"],
    );
    let mut conn = Conn::new(server.connect());
    let r = conn.get("/hello/ann");
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with("hello, ann (#1 on shard "),
        "{}",
        r.text()
    );
    assert_eq!(r.header("x-powered-by"), Some("percore"));
    let r = conn.get("/hello/bob");
    assert!(
        r.text().starts_with("hello, bob (#2 on shard "),
        "per-shard state counts: {}",
        r.text()
    );
    assert_eq!(conn.get("/plaintext").body, b"Hello, World!");
}

#[test]
fn hello_example_handlers_see_the_identity() {
    let dir = common::temp_dir("hello-users");
    let hash = common::tool("hash-password", "pw");
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[[user]]\nname = \"ann\"\npassword_hash = {:?}\nroles = [\"staff\"]\n",
            hash.trim()
        ),
    )
    .unwrap();
    let server = common::Server::start_with(
        example_binary("hello").to_str().unwrap(),
        &[
            "--bind",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--users",
            users.to_str().unwrap(),
        ],
    );
    let mut conn = Conn::new(server.connect());
    assert_eq!(conn.get("/me").status, 401);
    // ann:pw in Basic.
    conn.send(b"GET /me HTTP/1.1\r\nHost: t\r\nAuthorization: Basic YW5uOnB3\r\n\r\n");
    let r = conn.response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello, ann (staff)\n");
}

/// POST, retried on 409: a cross-shard transaction's participants unlock just after its answer.
fn post(conn: &mut Conn, path: &str, cookie: Option<&str>) -> common::Response {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let raw = format!("POST {path} HTTP/1.1\r\nHost: t\r\n{cookie}Content-Length: 0\r\n\r\n");
    common::retry_conflicts(
        || {
            conn.send(raw.as_bytes());
            conn.response(false).unwrap()
        },
        |r| r.status,
    )
}

/// GET, retried on 409 (as `post`).
fn get(conn: &mut Conn, path: &str) -> common::Response {
    common::retry_conflicts(|| conn.get(path), |r| r.status)
}

fn put(conn: &mut Conn, path: &str, body: &str) -> u16 {
    conn.send(
        format!(
            "PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    conn.response(false).unwrap().status
}

/// The shop example on 2 shards, each answer naming its shard.
fn start_shop() -> common::Server {
    let binary = example_binary("shop");
    common::Server::start_with(
        binary.to_str().unwrap(),
        &["--bind", "127.0.0.1:0", "--shards", "2", "--expose-shard"],
    )
}

/// Adds racing checkouts of the same cart: every item added is bought exactly once (found in
/// review: an add that read the cart before a checkout took it wrote the bought items back, and
/// they were bought again). The adds go through the shard that does not own the session, the
/// checkouts through the one that does.
#[test]
fn shop_example_buys_each_item_added_once_while_checkouts_race_the_adds() {
    const ITEMS: usize = 40;
    let server = start_shop();
    let [mut owner, mut other] = common::one_per_shard(&server);
    assert_eq!(put(&mut owner, "/kv/stock-x", "1000"), 201);
    // The first item makes the session, on the shard that answers: `owner`.
    let first = post(&mut owner, "/cart/x", None);
    let cookie = common::cookie_of(&first);
    let bought = std::thread::scope(|scope| {
        let adder = scope.spawn(|| {
            for _ in 1..ITEMS {
                assert_eq!(post(&mut other, "/cart/x", Some(&cookie)).status, 200);
            }
        });
        let mut bought = 0;
        loop {
            // Finished, or failed: the scope passes its panic on.
            let done = adder.is_finished();
            let r = post(&mut owner, "/checkout", Some(&cookie));
            match r.status {
                200 => {
                    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    bought += body["bought"].as_array().unwrap().len();
                }
                400 => {}
                other => panic!("checkout: {other} {}", r.text()),
            }
            if done {
                break bought;
            }
        }
    });
    assert_eq!(bought, ITEMS, "each item bought once");
    assert_eq!(
        get(&mut owner, "/kv/stock-x").text(),
        (1000 - ITEMS).to_string()
    );
}

#[test]
fn shop_example_keeps_a_cart_in_the_session_and_checks_out_in_one_transaction() {
    let server = start_shop();
    let [mut a, mut b] = common::one_per_shard(&server);
    // Stock on whichever shards own the keys.
    assert_eq!(put(&mut a, "/kv/stock-apple", "2"), 201);
    assert_eq!(put(&mut a, "/kv/stock-pear", "1"), 201);

    let first = post(&mut a, "/cart/apple", None);
    assert_eq!(
        (first.status, first.text()),
        (200, r#"["apple"]"#.to_string())
    );
    let cookie = common::cookie_of(&first);
    // The same session, served from the other shard.
    let second = post(&mut b, "/cart/pear", Some(&cookie));
    assert_eq!(second.text(), r#"["apple","pear"]"#);
    assert!(
        second.header("set-cookie").is_none(),
        "the session already exists"
    );

    // A double submit, one checkout from each shard at once: the one that takes the cart buys;
    // the other finds it empty (400) and buys nothing (the stock below).
    let checkout = format!("POST /checkout HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\n\r\n");
    a.send(checkout.as_bytes());
    b.send(checkout.as_bytes());
    let (from_a, from_b) = (a.response(false).unwrap(), b.response(false).unwrap());
    let (bought, other) = match from_a.status {
        200 => (from_a, from_b),
        _ => (from_b, from_a),
    };
    assert_eq!(bought.status, 200, "{}", bought.text());
    assert_eq!(other.status, 400, "{}", other.text());
    let body: serde_json::Value = serde_json::from_slice(&bought.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"bought": ["apple", "pear"], "stock_left": [1, 0]})
    );

    // The cart is empty again; pears are sold out, so a checkout of apple + pear takes nothing.
    assert_eq!(
        post(&mut a, "/cart/apple", Some(&cookie)).text(),
        r#"["apple"]"#
    );
    assert_eq!(
        post(&mut a, "/cart/pear", Some(&cookie)).text(),
        r#"["apple","pear"]"#
    );
    let refused = post(&mut a, "/checkout", Some(&cookie));
    assert_eq!(refused.status, 412, "{}", refused.text());
    assert_eq!(get(&mut a, "/kv/stock-apple").text(), "1", "all or nothing");
    // The checkout took the cart before the stock, and put it back when the stock refused.
    a.send(
        format!("GET /session/data/cart HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\n\r\n")
            .as_bytes(),
    );
    let cart = a.response(false).unwrap();
    assert_eq!(cart.text(), r#"["apple","pear"]"#, "the cart is back");
    assert_eq!(post(&mut b, "/checkout", None).status, 401);

    // A cart stored in another shape (here by the built-in session route) is the app's error,
    // 500, and left as it is: `Session::get` read it as None, and the cart was overwritten.
    a.send(
        format!(
            "PUT /session/data/cart HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\n\
             Content-Length: 7\r\n\r\n\"apple\""
        )
        .as_bytes(),
    );
    assert_eq!(a.response(false).unwrap().status, 204);
    let refused = post(&mut a, "/cart/pear", Some(&cookie));
    assert_eq!(
        (refused.status, refused.text()),
        (
            500,
            "a session value is not of the type asked for\n".to_string()
        )
    );
    assert_eq!(post(&mut b, "/checkout", Some(&cookie)).status, 500);
    a.send(
        format!("GET /session/data/cart HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(a.response(false).unwrap().text(), r#""apple""#);
}

/// RFC 9112 §6.1: no Transfer-Encoding in an answer to HTTP/1.0, a HEAD's included (its head
/// says nothing of the length then); HTTP/1.1 gets the GET's framing.
#[test]
fn export_example_answers_a_head_of_a_stream_without_chunked_on_http10() {
    let server = export(&[]);
    let head = |version: &str| {
        let raw = format!("HEAD /numbers/5 {version}\r\nHost: t\r\nConnection: close\r\n\r\n");
        let answer = String::from_utf8(server.exchange(raw.as_bytes())).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.ends_with("\r\n\r\n"),
            "a HEAD answer has no body: {answer}"
        );
        answer
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
    };
    assert!(!head("HTTP/1.0"));
    assert!(head("HTTP/1.1"));
}

/// `examples/export.rs` in one pipelined batch: answers made at once (a stream among them, and a
/// HEAD of one), answers that wait on a timer before and after a 590 KB stream, and a client
/// that reads only later. Every answer arrives whole and in request order, from one batch; a
/// direct route's request (`/plaintext`) ends the batch and is answered after it, in order.
#[test]
fn export_example_streams_inside_a_pipelined_batch_in_order() {
    let server = export(&[]);
    let requests = [
        ("GET", "/numbers/3"),
        ("GET", "/wait/50"),
        ("GET", "/numbers/100000"),
        ("GET", "/wait/10"),
        ("HEAD", "/numbers/5"),
        ("GET", "/numbers/1"),
        ("GET", "/plaintext"),
    ];
    let mut conn = Conn::new(server.connect());
    let raw: String = requests
        .iter()
        .map(|(method, path)| format!("{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    conn.send(raw.as_bytes());
    // A slow reader: the stream's writes wait on the client while the rest of the batch runs.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let lines = |n: u32| -> String { (0..n).map(|i| format!("{i}\n")).collect() };
    let expected = [
        lines(3),
        "waited 50 ms\n".to_string(),
        lines(100_000),
        "waited 10 ms\n".to_string(),
        String::new(),
        lines(1),
        "Hello, World!".to_string(),
    ];
    for ((method, path), body) in requests.iter().zip(expected) {
        let response = conn.response(*method == "HEAD").expect("a response");
        assert_eq!(response.status, 200, "{method} {path}");
        assert_eq!(response.text(), body, "{method} {path}");
        if path.starts_with("/numbers") {
            assert_eq!(
                response.header("transfer-encoding"),
                Some("chunked"),
                "{method} {path}"
            );
        }
    }
    assert_eq!(server.stats()["total"]["requests_parallel"], 6);
}

/// The rest of a batch runs while a streamed answer waits on a client that does not read: a
/// later handler never waits on a slow reader. The stream (6.9 MB) is larger than what loopback
/// buffers for a client with a small receive buffer, so it stalls; the timer handler after it
/// must be done by the time the client starts reading, not start once the stream is written.
#[test]
fn export_example_runs_the_rest_of_a_batch_while_a_stream_waits_on_the_client() {
    const LINES: usize = 1_000_000;
    const WAIT_MS: u128 = 2000;
    let server = export(&[]);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // Before connecting, so the window the client offers is small from the start.
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let raw = format!(
        "GET /numbers/{LINES} HTTP/1.1\r\nHost: t\r\n\r\n\
         GET /wait/{WAIT_MS} HTTP/1.1\r\nHost: t\r\n\r\n"
    );
    stream.write_all(raw.as_bytes()).unwrap();
    // Longer than the timer: if it ran while the stream was stalled, it is done by now.
    std::thread::sleep(std::time::Duration::from_millis(WAIT_MS as u64 + 500));
    let reading = std::time::Instant::now();
    let last_body = format!("waited {WAIT_MS} ms\n");
    let mut received = Vec::with_capacity(8 << 20);
    let mut chunk = vec![0u8; 1 << 16];
    while !received.ends_with(last_body.as_bytes()) {
        let n = stream
            .read(&mut chunk)
            .expect("both answers before the read timeout");
        assert!(n > 0, "closed after {} bytes", received.len());
        received.extend_from_slice(&chunk[..n]);
    }
    let read_ms = reading.elapsed().as_millis();
    let (numbers, used) = common::parse_response(&received, false).expect("the stream");
    let (waited, rest) = common::parse_response(&received[used..], false).expect("the timer's");
    assert_eq!(used + rest, received.len());
    assert_eq!(numbers.status, 200);
    assert_eq!(numbers.text().lines().count(), LINES);
    assert_eq!(waited.text(), last_body);
    // Without the overlap the timer would start once the stream was written, and reading could
    // not end sooner than WAIT_MS after it began. Reading 6.9 MB takes ~0.2 s from a debug build.
    assert!(
        read_ms < WAIT_MS,
        "reading took {read_ms} ms: the timer waited for the stream"
    );
    assert_eq!(server.stats()["total"]["requests_parallel"], 2);
}

/// Review finding: a handler's panic aborted the process (134) with `panic = "abort"`, and
/// where panics unwind it ended one shard's thread without a word while the process served on
/// half dead. Now any panic ends the process with 101, after the panic's message and one line.
#[test]
fn crash_example_a_handler_panic_ends_the_process_with_101() {
    let dir = common::temp_dir("crash");
    let (mut child, status) = crash(dir.path(), |command| _ = command.stderr(Stdio::piped()));
    let stderr = common::stderr_of(&mut child);
    assert_eq!(status.and_then(|s| s.code()), Some(101), "{stderr}");
    assert!(stderr.contains("panicked: exiting now"), "{stderr}");
}

/// Review finding: with a stderr nobody reads (a stalled log shipper), the panic's report
/// blocked the shard in its write for good: the process never exited and served on half dead.
/// The report is queued like every line (`log`), and the exit waits for it only briefly.
#[test]
fn crash_example_a_panic_with_a_stderr_nobody_reads_still_ends_the_process() {
    let dir = common::temp_dir("crash-stalled");
    let (_unread, full) = common::stalled_pipe();
    let (mut child, status) = crash(dir.path(), |command| {
        command.env_remove("RUST_BACKTRACE").stderr(full);
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(status.and_then(|s| s.code()), Some(101), "{status:?}");
}

/// Starts the crash example on `data_dir` (set up further by `configure`: its stderr), sends
/// `GET /crash` and waits up to 20 s for the process to end: the child and how it ended (None:
/// not yet).
fn crash(
    data_dir: &std::path::Path,
    configure: impl FnOnce(&mut Command),
) -> (std::process::Child, Option<std::process::ExitStatus>) {
    use std::io::BufRead;
    let mut command = Command::new(example_binary("crash"));
    command
        .args(["--bind", "127.0.0.1:0", "--shards", "2", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped());
    configure(&mut command);
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().strip_prefix("listening on http://").unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /crash HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let status = common::wait_exit(&mut child, std::time::Duration::from_secs(20));
    (child, status)
}

/// Review finding: nothing bounded how long a handler may take, so one that never answered held
/// its connection's `--max-conns` slot for good. Past `--handler-timeout` the handler is
/// dropped, the client gets 503 and the connection closes; alone or in a pipelined batch.
#[test]
fn export_example_a_handler_past_its_timeout_gets_503() {
    let server = export(&["--handler-timeout", "0.5"]);
    let mut conn = Conn::new(server.connect());
    assert_eq!(conn.get("/wait/50").status, 200, "a quick one is answered");
    for requests in [1, 3] {
        // The handlers would answer 200 after 5 s: a 503 is the timeout's.
        let mut conn = Conn::new(server.connect());
        conn.send(&b"GET /wait/5000 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(requests));
        let answer = conn.response(false).expect("an answer");
        assert_eq!(answer.status, 503, "{requests}");
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(conn.closed(), "{requests}");
    }
    // A handler slower than most but within the bound, twice on one connection: no timeout
    // is left behind for the next request.
    let mut conn = Conn::new(server.connect());
    for _ in 0..2 {
        assert_eq!(conn.get("/wait/300").status, 200);
    }
    assert_eq!(server.stats()["total"]["timeouts_handler"], 2);
}

/// A streamed answer has not answered until its first chunk (the code review of the handler
/// timeout): an echo whose body never comes gets the 503 at `--handler-timeout`, not a 408 at
/// `--body-timeout`; and the read its handler left waiting leaves no deadline behind, so the
/// lingering close after it lasts `--lingering-timeout`, not the rest of the body timeout.
#[test]
fn export_example_a_stream_without_its_first_chunk_times_out_and_lingers_briefly() {
    let server = export(&[
        "--handler-timeout",
        "0.5",
        "--body-timeout",
        "30",
        "--lingering-timeout",
        "1",
    ]);
    let mut stream = server.connect();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    // The server's end of the stream came with the answer; its close follows the lingering
    // close, 1 s of quiet (not the 30 s the body read had left). Once closed, a write is
    // answered with a reset, and the one after it fails.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let _ = stream.write_all(b"x");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        stream.write_all(b"y").is_err(),
        "still lingering 3 s after the answer"
    );
    assert_eq!(server.stats()["total"]["timeouts_handler"], 1);
}

/// Debt of the handler timeout: a streamed answer's chunks after the first were not bounded, so
/// a stream that stalled mid-way held its connection's slot for good. Each wait between chunks
/// is bounded by `--handler-timeout`, counted from the chunk before: chunks that keep coming
/// within it are a whole answer, however long it takes; a stall past it cuts the answer (no last
/// chunk, the connection closed), and an HTTP/1.0 one (close-delimited) ends with a reset.
#[test]
fn export_example_a_stream_that_stalls_mid_way_is_cut() {
    let server = export(&["--handler-timeout", "0.5"]);
    // Four chunks 300 ms apart: 900 ms in all, longer than the timeout, each wait within it.
    let mut conn = Conn::new(server.connect());
    let whole = conn.get("/ticks/4/300");
    assert_eq!(whole.status, 200);
    assert_eq!(whole.text(), "tick 0\ntick 1\ntick 2\ntick 3\n");
    assert_eq!(conn.get("/ticks/1/0").status, 200, "kept alive after it");

    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let mut stream = server.connect();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let started = std::time::Instant::now();
        write!(stream, "GET /ticks/3/8000 {version}\r\nHost: t\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        let ended = stream.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        assert!(text.contains("tick 0\n"), "{text}");
        assert!(!text.contains("tick 1"), "{text}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(7),
            "cut before the next chunk would come"
        );
        if version == "HTTP/1.1" {
            assert!(ended.is_ok(), "{ended:?}");
            assert!(text.contains("chunked"), "{text}");
            assert!(!text.ends_with("0\r\n\r\n"), "no last chunk: {text:?}");
        } else {
            let reset = ended.expect_err("a cut close-delimited answer ends with a reset");
            assert_eq!(reset.kind(), std::io::ErrorKind::ConnectionReset);
        }
    }
    assert_eq!(server.stats()["total"]["timeouts_handler"], 2);
}

/// Debt of the handler timeout: a client that hung up while its handler waited was noticed only
/// when the handler answered or timed out, its connection's slot held until then. Now its
/// handler is dropped unanswered a sweep after the hang-up (nginx's 499), whether the client
/// closed or only sent its FIN with nothing after the request. A client that half-closes after
/// pipelining requests waits for their answers and gets them, and `--ignore-client-abort` lets
/// handlers run on.
#[test]
fn export_example_a_handler_whose_client_hung_up_is_dropped() {
    let server = export(&[]);
    // The handler would answer after 10 s: an empty read to the end is its drop.
    let mut fin = server.connect();
    fin.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    fin.write_all(b"GET /wait/10000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    fin.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(common::read_to_close(&mut fin), b"", "no answer");
    // Closed outright: its slot is freed well before the handler would have answered.
    let mut closed = server.connect();
    closed
        .write_all(b"GET /wait/10000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(closed);
    let started = std::time::Instant::now();
    while server.stats()["total"]["connections_open"] != 1 {
        assert!(started.elapsed() < std::time::Duration::from_secs(8));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(server.stats()["total"]["handler_hangups"], 2);

    // Pipelined requests, then the FIN: all answered, whether served in one batch or one by
    // one before the slow one (a code review found the last one dropped then).
    let slow = "GET /wait/300 HTTP/1.1\r\nHost: t\r\n\r\n";
    for (first, answers) in [
        (slow, 2),
        ("GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n", 1),
        (
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
            1,
        ),
    ] {
        let mut pipelined = server.connect();
        pipelined
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        pipelined
            .write_all(format!("{first}{slow}").as_bytes())
            .unwrap();
        pipelined.shutdown(std::net::Shutdown::Write).unwrap();
        let text = String::from_utf8(common::read_to_close(&mut pipelined)).unwrap();
        assert_eq!(text.matches("waited 300 ms").count(), answers, "{text}");
        assert_eq!(text.matches("HTTP/1.1 200 ").count(), 2, "{text}");
    }
    assert_eq!(server.stats()["total"]["handler_hangups"], 2);

    let server = export(&["--ignore-client-abort"]);
    let mut fin = server.connect();
    fin.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    fin.write_all(b"GET /wait/500 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    fin.shutdown(std::net::Shutdown::Write).unwrap();
    let text = String::from_utf8(common::read_to_close(&mut fin)).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert_eq!(server.stats()["total"]["handler_hangups"], 0);
}

/// Soak review finding: a client that pipelined slow requests and closed had every one of them
/// run for nobody (227 handlers of a second each, 16 s): answers waited in the write buffer until
/// the read buffer ran dry, so no write met the client's reset. An answer a handler was waited
/// for now goes out at once, and the write after the reset ends the connection.
#[test]
fn export_example_a_closed_pipeline_stops_at_the_next_answer() {
    let server = export(&["--pipeline-parallel", "1"]);
    // 40 requests of 400 ms each, one by one: 16 s to run them all.
    let mut stream = server.connect();
    stream
        .write_all(&b"GET /wait/400 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(40))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    drop(stream);
    let started = std::time::Instant::now();
    // Each /stats answer is a 2xx too, counted once it is written (after the next's snapshot).
    let mut stats_answered = 0;
    let stats = loop {
        let stats = server.stats();
        if stats["total"]["connections_open"] == 1 {
            break stats;
        }
        stats_answered += 1;
        assert!(
            started.elapsed() < std::time::Duration::from_secs(8),
            "the pipeline ran on for a client that closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let answered = stats["total"]["status_2xx"].as_u64().unwrap() - stats_answered;
    assert!(answered <= 3, "{answered} answers written for nobody");
}

/// Code review finding: in a pipelined batch, the handlers after a stream are run to the end
/// before it, and a timeout they met was left for the next of them; the stream's first wait
/// took it for its own, so a healthy stream was cut and the slow handler's 503 never went out.
#[test]
fn export_example_a_stream_before_a_slow_pipelined_handler_is_whole() {
    let server = export(&["--handler-timeout", "1"]);
    let mut conn = Conn::new(server.connect());
    conn.send(
        b"GET /ticks/3/300 HTTP/1.1\r\nHost: t\r\n\r\nGET /wait/5000 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let ticks = conn.response(false).expect("the stream, whole");
    assert_eq!(ticks.text(), "tick 0\ntick 1\ntick 2\n");
    let slow = conn.response(false).expect("the slow one's answer");
    assert_eq!(slow.status, 503);
    assert!(conn.closed());
    assert_eq!(server.stats()["total"]["timeouts_handler"], 1);
}

/// An answer that is ready goes out while a later pipelined handler waits, in a batch and
/// after a direct route alike (found in review: it sat in the write buffer until the slow one
/// after it answered, for up to `--handler-timeout`).
#[test]
fn export_example_a_ready_answer_is_not_held_behind_a_slow_pipelined_one() {
    let server = export(&[]);
    for first in ["/wait/50", "/plaintext"] {
        let mut conn = Conn::new(server.connect());
        let sent = std::time::Instant::now();
        conn.send(&pipelined_gets(&[first, "/wait/4000"]));
        let ready = conn.response(false).expect("the first answer");
        assert_eq!(ready.status, 200);
        let at = sent.elapsed();
        assert!(at < Duration::from_millis(3000), "{first}: held for {at:?}");
        let slow = conn.response(false).expect("the slow answer");
        assert_eq!(
            (slow.status, slow.text()),
            (200, "waited 4000 ms\n".to_string())
        );
        assert!(sent.elapsed() >= Duration::from_millis(4000));
    }
}

/// The same when the answers before a slow handler fill the write buffer (here a report of
/// about 108 KiB): they go out while the rest of the batch runs, not once it has answered
/// (found in review).
#[test]
fn export_example_a_full_write_buffer_is_not_held_behind_a_slow_pipelined_one() {
    let server = export(&[]);
    let mut conn = Conn::new(server.connect());
    let sent = std::time::Instant::now();
    conn.send(&pipelined_gets(&[
        "/wait/50",
        "/report/20000",
        "/wait/4000",
    ]));
    let first = conn.response(false).expect("the first answer");
    assert_eq!(first.status, 200);
    let report = conn.response(false).expect("the report");
    assert_eq!((report.status, report.body.len()), (200, 108_890));
    let at = sent.elapsed();
    assert!(at < Duration::from_millis(3000), "held for {at:?}");
    let slow = conn.response(false).expect("the slow answer");
    assert_eq!(
        (slow.status, slow.text()),
        (200, "waited 4000 ms\n".to_string())
    );
}

/// Each handler of a pipelined batch answers within `--handler-timeout` of the batch's start,
/// when all of them began, not of its turn (found in review: the sixth of six slow handlers
/// answered after four timeouts' time). The second here would answer at 3 s, a second after
/// its turn's timeout had it been counted from its turn (1.8 s + 2 s).
#[test]
fn export_example_a_batch_handler_times_out_from_the_batch_start() {
    let server = export(&["--handler-timeout", "2"]);
    let mut conn = Conn::new(server.connect());
    conn.send(&pipelined_gets(&["/wait/1800", "/wait/3000"]));
    let first = conn.response(false).expect("the first answer");
    assert_eq!(
        (first.status, first.text()),
        (200, "waited 1800 ms\n".to_string())
    );
    let second = conn.response(false).expect("the timeout's answer");
    assert_eq!(second.status, 503);
    assert!(conn.closed());
    assert_eq!(server.stats()["total"]["timeouts_handler"], 1);

    // The same when the rest of the batch is run before a full write buffer is written (found
    // in review: that wait posted a deadline of its own, 2 s from 1.8 s).
    let mut conn = Conn::new(server.connect());
    conn.send(&pipelined_gets(&[
        "/wait/1800",
        "/report/20000",
        "/wait/3000",
    ]));
    for status in [200, 200, 503] {
        assert_eq!(conn.response(false).expect("an answer").status, status);
    }
    assert!(conn.closed());
}

/// `GET /report/1000000`: a whole body of the numbers 0-999999, one per line, made for its
/// client (its own bytes, `REPORT_BYTES` of them).
const REPORT: &[u8] = b"GET /report/1000000 HTTP/1.1\r\nHost: t\r\n\r\n";
const REPORT_BYTES: u64 = 6_888_890;

/// Reads until the server ends the connection (within 10 s); the bytes read.
fn read_until_cut(stream: &mut std::net::TcpStream) -> u64 {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    common::read_to_close(stream).len() as u64
}

/// `--max-held-bytes` at its bound: a report its client does not read is held (all of it, its
/// own bytes) by the default bound and by a bound of exactly its size; one byte less, its
/// connection is shed once its pace is known, 8 s or so later (the answer cut short), and
/// what it held is freed.
#[test]
fn export_example_a_report_its_client_does_not_read_is_shed_just_past_max_held_bytes() {
    for (bound, shed) in [
        (None, false),
        (Some(REPORT_BYTES), false),
        (Some(REPORT_BYTES - 1), true),
    ] {
        let bound = bound.map(|bound| bound.to_string());
        let server = match &bound {
            Some(bound) => export(&["--max-held-bytes", bound]),
            None => export(&[]),
        };
        let mut stream = connect_with_window(&server, 4096);
        stream.write_all(REPORT).unwrap();
        if shed {
            // A write's pace is known 8 s after it began to wait.
            let total = wait_for(Duration::from_secs(20), || {
                let total = server.stats()["total"].clone();
                (total["conns_shed"] == 1 && total["held_bytes"] == 0).then_some(total)
            });
            assert!(total.is_some(), "not shed: {}", server.stats()["total"]);
            let got = read_until_cut(&mut stream);
            assert!(got < REPORT_BYTES, "{got} bytes: not cut short");
            let ended = wait_for(Duration::from_secs(5), || {
                (server.stats()["total"]["connections_open"] == 1).then_some(())
            });
            assert!(ended.is_some(), "{}", server.stats()["total"]);
            continue;
        }
        let held = wait_for(Duration::from_secs(5), || {
            server.stats()["total"]["held_bytes"]
                .as_u64()
                .filter(|&held| held > 0)
        });
        assert_eq!(held, Some(REPORT_BYTES), "{bound:?}");
        std::thread::sleep(Duration::from_millis(2500));
        let total = &server.stats()["total"];
        assert_eq!(total["conns_shed"], 0, "{bound:?}: {total}");
        assert_eq!(total["held_bytes"], REPORT_BYTES, "{bound:?}: {total}");
    }
}

/// Past `--max-held-bytes` only slow clients are shed (under 16 KiB/s), paced by what their TCP
/// connections moved: one that reads a report steadily (8 KiB every 50 ms), whose write has
/// waited on it longest, keeps it, while one that reads nothing and pushes the shard past the
/// bound is shed once its pace is known (an answer's window is 8 s). A review found the first
/// rule, time without progress, shed the steady reader: a write learns of progress only when a
/// third of a big send buffer has drained, and it was the oldest.
#[test]
fn export_example_past_max_held_bytes_a_steady_reader_is_kept_and_a_stalled_one_shed() {
    // The reader asks for two reports at once (a batch): it holds both while the first is
    // written, one after, for tens of seconds at its pace, however much the kernel takes.
    let bound = (REPORT_BYTES * 5 / 2).to_string();
    let server = export(&["--max-held-bytes", &bound]);
    let mut reader = connect_with_window(&server, 65536);
    reader.write_all(&REPORT.repeat(2)).unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let reading = std::thread::spawn(move || {
        let mut got = 0;
        let mut buf = vec![0u8; 8 * 1024];
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            match reader.read(&mut buf) {
                Ok(n) if n > 0 => got += n,
                other => return Err(format!("after {got} bytes: {other:?}")),
            }
        }
        Ok(got)
    });
    let held = wait_for(Duration::from_secs(5), || {
        server.stats()["total"]["held_bytes"]
            .as_u64()
            .filter(|&held| held > 0)
    });
    assert_eq!(
        held,
        Some(2 * REPORT_BYTES),
        "the reader's write waits on it"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let mut stalled = connect_with_window(&server, 4096);
    stalled.write_all(REPORT).unwrap();
    let shed = wait_for(Duration::from_secs(20), || {
        let total = server.stats()["total"].clone();
        (total["conns_shed"] == 1).then_some(total)
    });
    assert!(shed.is_some(), "not shed: {}", server.stats()["total"]);
    assert!(read_until_cut(&mut stalled) < REPORT_BYTES);
    // The reader still reads, a second after.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let got = reading.join().unwrap();
    assert!(got.is_ok(), "the reader was cut: {got:?}");
    let total = &server.stats()["total"];
    assert_eq!(total["conns_shed"], 1, "{total}");
}

/// A write that fails (here `--write-timeout`; a shed for `--max-held-bytes` the same) ends the
/// connection with a reset: an HTTP/1.0 stream's answer is close-delimited, and a FIN after
/// the bytes the client had not read yet made the cut answer look whole (a review).
#[test]
fn export_example_a_stream_cut_by_a_failed_write_ends_with_a_reset() {
    let server = export(&["--write-timeout", "1"]);
    let mut stream = connect_with_window(&server, 4096);
    stream
        .write_all(b"GET /numbers/10000000 HTTP/1.0\r\nHost: t\r\n\r\n")
        .unwrap();
    let timed_out = wait_for(Duration::from_secs(10), || {
        (server.stats()["total"]["timeouts_write"] == 1).then_some(())
    });
    assert!(timed_out.is_some(), "{}", server.stats()["total"]);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let end = loop {
        match stream.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got += n,
            Err(e) => break Err(e.kind()),
        }
    };
    assert_eq!(
        end,
        Err(std::io::ErrorKind::ConnectionReset),
        "after {got} bytes"
    );
}
