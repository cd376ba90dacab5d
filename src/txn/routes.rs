//! The key-value HTTP API of the default server (a contract that tests and tools rely on): /kv/{key} and /kv/tx.

use bytes::Bytes;

use crate::router::{Request, Response, Router};
use crate::runtime::shard;
use crate::txn::op::{self, Op, OpResult, TxError};

pub fn routes() -> Router {
    Router::new()
        .post("/kv/tx", transaction)
        .get("/kv/{key}", get)
        .put("/kv/{key}", put)
        .delete("/kv/{key}", delete)
}

fn key_of(req: &Request) -> Bytes {
    Bytes::copy_from_slice(req.param("key").unwrap_or_default().as_bytes())
}

fn error(e: &TxError) -> Response {
    let (status, body) = op::render_outcome(&Err(e.clone()));
    let response = Response::bytes(status, "application/json", body);
    if e.retry_safe() {
        response.header("Retry-After", "1")
    } else {
        response
    }
}

/// If-Match / If-None-Match as check ops (RFC 9110 §13.1); Err is a 400 for an unusable header.
// The early answer is moved once, off the hot path; boxing it would cost more.
#[allow(clippy::result_large_err)]
fn preconditions(req: &Request, key: &Bytes) -> Result<Vec<Op>, Response> {
    let mut ops = Vec::new();
    if let Some(value) = req.header("if-match") {
        let text = std::str::from_utf8(value).unwrap_or_default();
        let version = op::parse_etag(text)
            .ok_or_else(|| Response::error(400, "If-Match must be one ETag like \"7\""))?;
        ops.push(Op::check_version(key.clone(), version));
    }
    if let Some(value) = req.header("if-none-match") {
        if value != b"*" {
            return Err(Response::error(400, "only If-None-Match: * is supported"));
        }
        ops.push(Op::check_absent(key.clone()));
    }
    Ok(ops)
}

async fn run(ops: Vec<Op>) -> Result<Vec<OpResult>, TxError> {
    let txn = shard::current().txn.clone();
    txn.run(ops).await
}

// The early answer is moved once, off the hot path; boxing it would cost more.
#[allow(clippy::result_large_err)]
fn validated(ops: &[Op]) -> Result<(), Response> {
    let limits = shard::current().config.txn.limits;
    op::validate(ops, &limits).map_err(|e| Response::error(e.status, &e.message))
}

/// GET /kv/{key} -> 200 with the value bytes and `ETag: "<version>"`, or 404.
async fn get(req: Request) -> Response {
    let key = key_of(&req);
    let ops = vec![Op::Get { key }];
    if let Err(r) = validated(&ops) {
        return r;
    }
    match run(ops).await.as_deref() {
        Ok([OpResult::Get(Some((value, version)))]) => {
            Response::bytes(200, "application/octet-stream", value.clone())
                .header("ETag", op::etag(*version))
        }
        Ok([OpResult::Get(None)]) => Response::error(404, "no such key"),
        Ok(_) => Response::error(500, "unexpected transaction result"),
        Err(e) => error(e),
    }
}

/// PUT /kv/{key} -> 201 (created) or 200 with the new ETag; If-Match (412 on mismatch) and
/// If-None-Match: * (create only) honoured.
async fn put(mut req: Request) -> Response {
    let key = key_of(&req);
    let mut ops = match preconditions(&req, &key) {
        Ok(ops) => ops,
        Err(r) => return r,
    };
    let value = match req.body.bytes().await {
        Ok(value) => value,
        Err(e) => return e.into(),
    };
    ops.push(Op::Get { key: key.clone() });
    ops.push(Op::Put { key, value });
    if let Err(r) = validated(&ops) {
        return r;
    }
    match run(ops).await.as_deref() {
        Ok([.., OpResult::Get(before), OpResult::Put { version }]) => {
            let status = if before.is_none() { 201 } else { 200 };
            Response::new(status).header("ETag", op::etag(*version))
        }
        Ok(_) => Response::error(500, "unexpected transaction result"),
        Err(e) => error(e),
    }
}

/// DELETE /kv/{key} -> 204, or 404 when absent; If-Match honoured.
async fn delete(req: Request) -> Response {
    let key = key_of(&req);
    let mut ops = match preconditions(&req, &key) {
        Ok(ops) => ops,
        Err(r) => return r,
    };
    ops.push(Op::Delete { key });
    if let Err(r) = validated(&ops) {
        return r;
    }
    match run(ops).await.as_deref() {
        Ok([.., OpResult::Delete { deleted: true }]) => Response::new(204),
        Ok([.., OpResult::Delete { deleted: false }]) => Response::error(404, "no such key"),
        Ok(_) => Response::error(500, "unexpected transaction result"),
        Err(e) => error(e),
    }
}

/// POST /kv/tx -> 200 committed, 412 failed op, 409 conflict (Retry-After), 400/413 bad request.
async fn transaction(mut req: Request) -> Response {
    let body = match req.body.bytes().await {
        Ok(body) => body,
        Err(e) => return e.into(),
    };
    let limits = shard::current().config.txn.limits;
    let ops = match op::parse(&body, &limits) {
        Ok(ops) => ops,
        Err(e) => return Response::error(e.status, &e.message),
    };
    let outcome = run(ops).await;
    let (status, json) = op::render_outcome(&outcome);
    let response = Response::bytes(status, "application/json", json);
    match &outcome {
        Err(e) if e.retry_safe() => response.header("Retry-After", "1"),
        _ => response,
    }
}
