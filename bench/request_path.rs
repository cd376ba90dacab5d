//! CPU per request of percore's in-process request path (parse, route and handler, encode) against the raw epoll peer's (httparse and a canned answer), no sockets.
//!
//! `cargo bench --bench request_path -- [TRIALS [HEAD]]` (default 30 trials, both heads). Each
//! trial runs every stage over a buffer of 16 pipelined copies of a head, 100,000 times, the stages
//! interleaved and their order rotated; it prints the fastest trial's nanoseconds per request of
//! each stage. It sizes the stages against each other and against the floor; it does not resolve a
//! change of a few percent between two builds (on the shared 2-CPU machines the fastest of 8
//! trials still moves 5-10% from run to run). Stages, each including the ones above it:
//!
//! - `floor`: what the epoll peer of `../shared/lab/peers` does per request (its
//!   `handle_requests`): httparse with 32 field slots, a path match, a canned answer copied out;
//! - `parse`: `http::parse_head` (httparse plus percore's RFC 9112 checks, the field index and the
//!   head's `Bytes`);
//! - `route`: the `Request` built, `App::serve` (route lookup, the `/plaintext` handler), the
//!   answer taken and dropped;
//! - `full`: the answer encoded with `http::encode_head` and its body appended;
//! - `direct`: the built-in `/plaintext`, a direct route (`router::direct`): parse, the direct
//!   lookup, the handler's `Answer`, and the encoding, as a connection does it.
//!
//! `route` and `full` serve `/plaintext` from a `sync_handler`, as the built-in route did before
//! it was direct, so they stay comparable with earlier runs.
//!
//! The connection's own work (reads and writes, batching, metrics, the executor) is not here:
//! end to end, a pipelined request spends about 1.4x `full` in user space (bench/RESULTS.md run T).
//! Heads: `bench` is what wrk and percore-load send; `browser` a 760-byte Chrome navigation.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::BytesMut;
use percore::http::{self, HeadLimits};
use percore::router::{
    Answer, App, Body, Request, RequestCtx, Response, ResponseBody, Router, sync_handler,
};

const PIPELINE_DEPTH: usize = 16;
const BATCHES_PER_TRIAL: usize = 100_000;

const BENCH_HEAD: &str = "GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

const BROWSER_HEAD: &str = "GET /plaintext HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\n\
Connection: keep-alive\r\n\
sec-ch-ua: \"Chromium\";v=\"130\", \"Google Chrome\";v=\"130\", \"Not?A_Brand\";v=\"99\"\r\n\
sec-ch-ua-mobile: ?0\r\n\
sec-ch-ua-platform: \"Linux\"\r\n\
Upgrade-Insecure-Requests: 1\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8\r\n\
Sec-Fetch-Site: none\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-User: ?1\r\n\
Sec-Fetch-Dest: document\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: theme=dark; percore_sid=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n\
\r\n";

/// The epoll peer's answer to /plaintext up to its Date value.
const CANNED_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nServer: epoll\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nDate: ";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Floor,
    Parse,
    Route,
    Full,
    Direct,
}

const STAGES: [(Stage, &str); 5] = [
    (Stage::Floor, "floor"),
    (Stage::Parse, "parse"),
    (Stage::Route, "route"),
    (Stage::Full, "full"),
    (Stage::Direct, "direct"),
];

struct Bench {
    /// `/plaintext` as an ordinary `sync_handler` (the `route` and `full` stages).
    app: std::rc::Rc<App>,
    /// The built-in routes, where `/plaintext` is direct (the `direct` stage).
    builtin: std::rc::Rc<App>,
    answer_buffer: Vec<u8>,
    /// A shard's own response fields: none by default.
    own_fields: http::EncodedFields,
    limits: HeadLimits,
    date: [u8; http::DATE_BYTES],
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Bench {
    /// One batch: every head of `batch` through `stage`. Returns the requests seen.
    fn batch(&mut self, stage: Stage, batch: &[u8]) -> usize {
        self.rbuf.extend_from_slice(batch);
        self.wbuf.clear();
        let mut requests = 0;
        if stage == Stage::Floor {
            // The epoll peer's `handle_requests`, line for line.
            let mut offset = 0;
            while offset < self.rbuf.len() {
                let mut fields = [httparse::EMPTY_HEADER; 32];
                let mut request = httparse::Request::new(&mut fields);
                let Ok(httparse::Status::Complete(length)) = request.parse(&self.rbuf[offset..])
                else {
                    panic!("the floor parses every head");
                };
                offset += length;
                assert_eq!(request.path, Some("/plaintext"));
                self.wbuf.extend_from_slice(CANNED_HEAD);
                self.wbuf.extend_from_slice(&self.date);
                self.wbuf.extend_from_slice(b"\r\n\r\nHello, World!");
                requests += 1;
            }
            self.rbuf.clear();
            return requests;
        }
        let mut cx = Context::from_waker(Waker::noop());
        while let Some(head) = http::parse_head(&mut self.rbuf, &self.limits).expect("valid heads")
        {
            requests += 1;
            if stage == Stage::Parse {
                black_box(&head);
                continue;
            }
            if stage == Stage::Direct {
                let handler = self
                    .builtin
                    .direct(head.method(), head.path())
                    .expect("/plaintext is direct");
                let mut answer = Answer::new(std::mem::take(&mut self.answer_buffer));
                handler.answer(&head, &mut answer);
                let body = answer.body_bytes();
                // As `Conn::encode_head` writes a direct answer (without `--expose-shard`).
                let mut encoded =
                    http::HeadWriter::new(&mut self.wbuf, answer.status(), &self.date);
                encoded.lines(&self.own_fields);
                encoded.content_type(answer.content_type().as_bytes());
                encoded.finish(http::ResponseBody::Length(body.len() as u64), false);
                self.wbuf.extend_from_slice(body);
                self.answer_buffer = answer.into_buffer().expect("a small answer");
                continue;
            }
            let ctx = RequestCtx {
                shard: 0,
                peer: None,
                client: None,
                tls: false,
                identity: None,
                extensions: Default::default(),
            };
            let reply = self.app.serve(Request::new(head, Body::empty(), ctx));
            let Poll::Ready(response) = pin!(reply).poll(&mut cx) else {
                panic!("/plaintext answers at once");
            };
            if stage == Stage::Route {
                black_box(&response);
                continue;
            }
            let ResponseBody::Full(body) = &response.body else {
                panic!("/plaintext has a body");
            };
            let fields = response.headers.iter().map(|(n, v)| (&**n, &v[..]));
            let framing = http::ResponseBody::Length(body.len() as u64);
            http::encode_head(
                &mut self.wbuf,
                response.status,
                fields,
                framing,
                &self.date,
                false,
            );
            self.wbuf.extend_from_slice(body);
        }
        requests
    }
}

fn main() {
    // `cargo bench` adds `--bench`.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let trials: usize = args
        .first()
        .map(|arg| arg.parse().expect("TRIALS is a number"))
        .unwrap_or(30);
    let only = args.get(1);
    let mut bench = Bench {
        app: Router::new()
            .get(
                "/plaintext",
                sync_handler(|_: Request| Response::text(200, "Hello, World!")),
            )
            .into_app(),
        builtin: percore::app::builtin_routes().into_app(),
        answer_buffer: Vec::new(),
        own_fields: http::EncodedFields::new(&[]),
        limits: HeadLimits {
            head_bytes_max: 16 * 1024,
            header_count_max: 100,
            uri_bytes_max: 8 * 1024,
        },
        date: *b"Sun, 06 Nov 1994 08:49:37 GMT",
        // As a connection's: 4 KiB reads (`READ_BUFFER_BYTES`), answers flushed per batch.
        rbuf: BytesMut::with_capacity(4 * 1024),
        wbuf: BytesMut::with_capacity(16 * 1024),
    };
    println!(
        "ns per request, fastest of {trials} trials ({PIPELINE_DEPTH} pipelined x {BATCHES_PER_TRIAL})"
    );
    println!("| head | floor | parse | route | full | direct | full / floor |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, head) in [("bench", BENCH_HEAD), ("browser", BROWSER_HEAD)] {
        if only.is_some_and(|only| only != name) {
            continue;
        }
        let batch = head.repeat(PIPELINE_DEPTH).into_bytes();
        let mut best = [f64::MAX; STAGES.len()];
        for trial in 0..trials {
            for turn in 0..STAGES.len() {
                let index = (trial + turn) % STAGES.len();
                let stage = STAGES[index].0;
                let started = Instant::now();
                let mut requests = 0;
                for _ in 0..BATCHES_PER_TRIAL {
                    requests += bench.batch(stage, black_box(&batch));
                }
                let elapsed = started.elapsed().as_nanos() as f64;
                assert_eq!(requests, PIPELINE_DEPTH * BATCHES_PER_TRIAL);
                best[index] = best[index].min(elapsed / requests as f64);
            }
        }
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}x |",
            best[0],
            best[1],
            best[2],
            best[3],
            best[4],
            best[3] / best[0]
        );
    }
}
