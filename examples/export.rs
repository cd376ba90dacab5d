//! A user's app that streams: `GET /numbers/{n}` sends n lines as they are made (chunked, never buffered whole) from a handler with nothing to await (`sync_handler`); `GET /report/{n}` makes the same lines whole first; `GET /ticks/{n}/{ms}` sends n lines, one every ms milliseconds, the first at once; `GET /wait/{ms}` answers after a timer.
//! Run: `cargo run --release --example export`, then `curl localhost:8080/numbers/1000000 | tail -1`.

use std::time::Duration;

use bytes::Bytes;
use percore::router::{Request, Response, Router, sync_handler};

/// Lines per chunk: one chunk is a few KiB, so a million lines never sit in memory at once.
const LINES_PER_CHUNK: u64 = 1000;

fn numbers(req: Request) -> Response {
    let Some(n) = param_u64(&req, "n") else {
        return Response::error(400, "n must be a number");
    };
    let chunks = (0..n.div_ceil(LINES_PER_CHUNK)).map(move |chunk| {
        let first = chunk * LINES_PER_CHUNK;
        let lines: String = (first..n.min(first + LINES_PER_CHUNK))
            .map(|i| format!("{i}\n"))
            .collect();
        Ok(Bytes::from(lines))
    });
    Response::stream(200, "text/plain", futures_lite::stream::iter(chunks))
}

/// Lines a report holds at most (about 7 MB).
const REPORT_LINES_MAX: u64 = 1_000_000;

/// The lines of `/numbers` made whole before the answer, as a report a handler builds first:
/// its bytes are held until the client has read them (`--max-held-bytes` bounds all of those).
fn report(req: Request) -> Response {
    let Some(n) = param_u64(&req, "n") else {
        return Response::error(400, "n must be a number");
    };
    let lines: String = (0..n.min(REPORT_LINES_MAX))
        .map(|i| format!("{i}\n"))
        .collect();
    Response::text(200, lines)
}

/// A stream that awaits between its chunks, as a feed of events does: `--handler-timeout`
/// bounds each wait, and a longer one cuts the answer.
fn ticks(req: Request) -> Response {
    let (Some(n), Some(ms)) = (param_u64(&req, "n"), param_u64(&req, "ms")) else {
        return Response::error(400, "n and ms must be numbers");
    };
    let every = Duration::from_millis(ms.min(10_000));
    let lines = futures_lite::stream::unfold(0, move |tick| async move {
        if tick == n {
            return None;
        }
        if tick > 0 {
            glommio::timer::sleep(every).await;
        }
        Some((Ok(Bytes::from(format!("tick {tick}\n"))), tick + 1))
    });
    Response::stream(200, "text/plain", lines)
}

fn param_u64(req: &Request, name: &str) -> Option<u64> {
    req.param(name).and_then(|value| value.parse().ok())
}

async fn wait(req: Request) -> Response {
    let ms = param_u64(&req, "ms").unwrap_or(0);
    glommio::timer::sleep(Duration::from_millis(ms.min(10_000))).await;
    Response::text(200, format!("waited {ms} ms\n"))
}

fn main() -> std::process::ExitCode {
    percore::main_with(|| {
        Router::new()
            .get("/numbers/{n}", sync_handler(numbers))
            .get("/report/{n}", sync_handler(report))
            .get("/ticks/{n}/{ms}", sync_handler(ticks))
            .get("/wait/{ms}", wait)
            .mount("/", percore::app::builtin_routes())
    })
}
