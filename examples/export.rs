//! A user's app that streams: `GET /numbers/{n}` sends n lines as they are made (chunked, never buffered whole) from a handler with nothing to await (`sync_handler`); `GET /wait/{ms}` answers after a timer.
//! Run: `cargo run --release --example export`, then `curl localhost:8080/numbers/1000000 | tail -1`.

use std::time::Duration;

use bytes::Bytes;
use percore::router::{Request, Response, Router, sync_handler};

/// Lines per chunk: one chunk is a few KiB, so a million lines never sit in memory at once.
const LINES_PER_CHUNK: u64 = 1000;

fn numbers(req: Request) -> Response {
    let Some(n) = req.param("n").and_then(|n| n.parse::<u64>().ok()) else {
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

async fn wait(req: Request) -> Response {
    let ms = req
        .param("ms")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0u64);
    glommio::timer::sleep(Duration::from_millis(ms.min(10_000))).await;
    Response::text(200, format!("waited {ms} ms\n"))
}

fn main() -> std::process::ExitCode {
    percore::main_with(|| {
        Router::new()
            .get("/numbers/{n}", sync_handler(numbers))
            .get("/wait/{ms}", wait)
            .mount("/", percore::app::builtin_routes())
    })
}
