//! The built-in routes of the default server: TechEmpower's /plaintext and /json, /echo, /health, /stats, and the session, key-value and auth APIs.

use serde::Serialize;

use crate::http::RequestHead;
use crate::metrics::Stats;
use crate::router::{Answer, Request, Response, Router};
use crate::runtime::shard;

/// Every built-in route; mount it next to your own (`Router::new().mount("/", builtin_routes())`).
pub fn builtin_routes() -> Router {
    Router::new()
        .direct("GET", "/plaintext", plaintext)
        .direct("GET", "/json", json)
        .post("/echo", echo)
        .get("/health", health)
        .get("/stats", stats)
        .mount("/", crate::session::routes::routes())
        .mount("/", crate::txn::routes::routes())
        .mount("/", crate::auth::routes::routes())
}

/// TechEmpower plaintext: exactly `Hello, World!` as text/plain. Direct: the benchmark's hot
/// path builds no request or response object (the rules allow reusing the text's buffer).
fn plaintext(_head: &RequestHead, answer: &mut Answer) {
    answer.text(200, "Hello, World!");
}

#[derive(Serialize)]
struct Message {
    message: &'static str,
}

/// TechEmpower JSON: the object is made and serialized for every request, as the rules require.
fn json(_head: &RequestHead, answer: &mut Answer) {
    answer.json(
        200,
        &Message {
            message: "Hello, World!",
        },
    );
}

/// Streams the request body back as it arrives, any size up to the body limit.
async fn echo(req: Request) -> Response {
    let content_type = req
        .header("content-type")
        .filter(|v| std::str::from_utf8(v).is_ok())
        .map(bytes::Bytes::copy_from_slice)
        .unwrap_or_else(|| bytes::Bytes::from_static(b"application/octet-stream"));
    Response::stream(200, content_type, req.body.into_stream())
}

/// 200 while serving. 503 from the moment a graceful shutdown starts, so load balancers stop
/// sending; and while any shard's transaction log has failed (a full disk, an IO error), which
/// takes a restart: the shards are asked over the mesh, so every shard answers the same. A shard
/// that does not answer in time (`--mesh-deadline-ms`) does not turn it 503.
async fn health(_req: Request) -> Response {
    let shard = shard::current();
    if shard.is_draining() {
        let mut response = Response::text(503, "draining\n");
        response.close = true;
        return response;
    }
    let replies = shard.stats_mesh.call_all(|| shard::StatsRequest).await;
    let failed: Vec<String> = replies
        .iter()
        .flatten()
        .filter(|stats| stats.wal_failed > 0)
        .filter_map(|stats| stats.shard.map(|shard| shard.to_string()))
        .collect();
    if failed.is_empty() {
        return Response::text(200, "ok\n");
    }
    let shards = if failed.len() == 1 { "shard" } else { "shards" };
    Response::text(
        503,
        format!(
            "transaction log failed on {shards} {}; restart percore once the disk is fixed\n",
            failed.join(", ")
        ),
    )
}

/// Per-shard counters gathered from every shard over the mesh, and their sum.
async fn stats(_req: Request) -> Response {
    let shard = shard::current();
    let replies = shard.stats_mesh.call_all(|| shard::StatsRequest).await;
    let stats = Stats::merge(
        shard.stats_mesh.shard_count(),
        replies.into_iter().map(Result::ok).collect(),
    );
    Response::json(200, &stats)
}
