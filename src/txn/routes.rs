//! The key-value HTTP API of the default server (a contract that tests and tools rely on): /kv/{key} and /kv/tx.

use bytes::Bytes;

use crate::http::segment;
use crate::router::{Request, Response, Router};
use crate::runtime::shard;
use crate::txn::op::{self, Condition, FailReason, Op, OpResult, TxError};

pub fn routes() -> Router {
    Router::new()
        .post("/kv/tx", transaction)
        .get("/kv/{key}", get)
        .put("/kv/{key}", put)
        .delete("/kv/{key}", delete)
}

/// The key a `/kv/{key}` request names: its path segment percent-decoded, so that every key a
/// /kv/tx body can write has a URL (`/kv/a%20b` is "a b", `/kv/a%2Fb` is "a/b"); a key has one
/// spelling, so an escape of a character that must stand as itself (`/kv/%61`) is 400 (access
/// rules match the path as sent). The key bound is on the decoded key: past it the target is
/// 414 URI Too Long, not 413, which is about content (found in review); the other key checks
/// are `op::validate`'s.
// The early answer is moved once, off the hot path; boxing it would cost more.
#[allow(clippy::result_large_err)]
fn key_of(req: &Request) -> Result<Bytes, Response> {
    let segment = req.param("key").unwrap_or_default();
    let key = segment::decode(segment).map_err(|message| Response::error(400, message))?;
    let key_bytes_max = shard::current().config.txn.limits.key_bytes_max;
    if key.len() > key_bytes_max {
        let message = format!(
            "key of {} bytes, over the bound of {key_bytes_max}",
            key.len()
        );
        return Err(Response::error(414, &message));
    }
    Ok(Bytes::from(key))
}

/// The one path of `key` (see `segment::decode`, its inverse) under `dir`, where the single-key
/// routes are mounted (`/kv`): each byte that may stand as itself does, every other one is
/// escaped in uppercase hex.
fn key_path(dir: &str, key: &[u8]) -> String {
    let mut path = String::with_capacity(dir.len() + 1 + key.len() * 3);
    path.push_str(dir);
    path.push('/');
    segment::encode(key, &mut path);
    path
}

/// The methods of the single-key requests an op stands for, which the access rules judge it
/// as: get reads (GET), and so does check (its 412 says what a conditional GET's would, that
/// the key is or is not at a version); put writes (PUT; its version is PUT's ETag); delete is
/// DELETE; add is GET and PUT, as it writes and its result shows the value it made.
fn single_key_methods(op: &Op) -> &'static [&'static str] {
    match op {
        Op::Get { .. } | Op::Check { .. } => &["GET"],
        Op::Put { .. } => &["PUT"],
        Op::Delete { .. } => &["DELETE"],
        Op::Add { .. } => &["GET", "PUT"],
    }
}

fn error(e: &TxError) -> Response {
    let (status, body) = op::render_outcome(&Err(e.clone()));
    let response = Response::bytes(status, "application/json", body);
    match e.retry_after() {
        Some(seconds) => response.header("Retry-After", seconds),
        None => response,
    }
}

/// If-Match / If-None-Match as check ops, If-Match first (RFC 9110 §13.1, §13.2.2); Err is a
/// 400 for an unusable header.
// The early answer is moved once, off the hot path; boxing it would cost more.
#[allow(clippy::result_large_err)]
fn preconditions(req: &Request, key: &Bytes) -> Result<Vec<Op>, Response> {
    let mut ops = Vec::new();
    if let Some(condition) = condition(req, "If-Match")? {
        ops.push(condition.if_match(key.clone()));
    }
    if let Some(condition) = condition(req, "If-None-Match")? {
        ops.push(condition.if_none_match(key.clone()));
    }
    Ok(ops)
}

/// A PUT or DELETE with If-Match or If-None-Match reads the key (its 412 says whether the key
/// exists, or is at a version), as a tx `check` does: the access rules must let the client GET
/// it too (found in review: a client allowed to PUT only probed keys with `If-None-Match: *`
/// and wrote nothing).
// The early answer is moved once, off the hot path; boxing it would cost more.
#[allow(clippy::result_large_err)]
fn may_read_conditions(req: &Request, conditions: &[Op]) -> Result<(), Response> {
    let Some(access) = crate::auth::middleware::access(req) else {
        return Ok(());
    };
    if conditions.is_empty() {
        return Ok(());
    }
    access.check("GET", req.path(), || {
        "the key's version (If-Match, If-None-Match)".to_string()
    })
}

/// A conditional header, its field lines joined into one list (RFC 9110 §5.3); `*` stands alone.
// The early answer is moved once, off the hot path; boxing it would cost more.
#[allow(clippy::result_large_err)]
fn condition(req: &Request, name: &str) -> Result<Option<Condition>, Response> {
    let unusable = || {
        let message = format!("{name} must be * or a list of ETags like \"7\", W/\"7\"");
        Response::error(400, &message)
    };
    let mut joined: Option<Condition> = None;
    for (_, value) in req
        .head
        .headers()
        .filter(|(field, _)| field.eq_ignore_ascii_case(name))
    {
        let line = op::parse_condition(value).ok_or_else(unusable)?;
        joined = match (joined, line) {
            (None, line) => Some(line),
            (Some(Condition::Tags(mut tags)), Condition::Tags(more)) => {
                tags.extend(more);
                Some(Condition::Tags(tags))
            }
            (Some(_), _) => return Err(unusable()),
        };
    }
    Ok(joined)
}

async fn run(ops: Vec<Op>) -> Result<Vec<OpResult>, TxError> {
    let txn = shard::current().txn.clone();
    txn.run(ops).await
}

// The early answer is moved once, off the hot path; boxing it would cost more.
#[allow(clippy::result_large_err)]
fn validated(ops: &[Op]) -> Result<(), Response> {
    // `--max-tx-ops` bounds the ops a client sends in a /kv/tx body. These routes build their
    // own few (a precondition check and a read the client never sent, fixed by the route), so
    // a plain PUT must not count against it (found in review: `--max-tx-ops 1` answered a PUT
    // with 413 "2 ops"); and an error names the key or value, never an op index.
    // Their ops name one key, which counts once against the transaction's bytes, as the client
    // sent it once (found in review: a PUT at the value bound answered 413 where /kv/tx took
    // the same write, its key counted again for the route's own read and checks).
    let config = shard::current().config.txn.limits;
    debug_assert!(ops.windows(2).all(|pair| pair[0].key() == pair[1].key()));
    let key = ops.first().map_or(0, |op| op.key().len());
    let values: usize = ops
        .iter()
        .map(|op| match op {
            Op::Put { value, .. } => value.len(),
            _ => 0,
        })
        .sum();
    if key + values > config.txn_bytes_max {
        let message = format!(
            "key and value of {} bytes, over the transaction bound of {}",
            key + values,
            config.txn_bytes_max
        );
        return Err(Response::error(413, &message));
    }
    let limits = crate::txn::TxnLimits {
        ops_max: ops.len(),
        txn_bytes_max: usize::MAX,
        ..config
    };
    op::validate(ops, &limits).map_err(|e| {
        let message = e
            .message
            .split_once(": ")
            .filter(|(op, _)| op.starts_with("op "))
            .map_or(e.message.as_str(), |(_, rest)| rest);
        Response::error(e.status, message)
    })
}

/// GET /kv/{key} -> 200 with the value bytes and `ETag: "<version>"`, or 404; If-Match that
/// fails is 412, If-None-Match that fails is 304 with the ETag (RFC 9110 §13.1.1, §13.1.2,
/// evaluated in §13.2.2's order on what was read). An absent key is 404 whatever the
/// conditions: a server ignores them where the answer without them would not be a 2xx
/// (§13.2.1).
async fn get(req: Request) -> Response {
    let key = match key_of(&req) {
        Ok(key) => key,
        Err(r) => return r,
    };
    let conditions = match preconditions(&req, &key) {
        Ok(conditions) => conditions,
        Err(r) => return r,
    };
    let ops = vec![Op::Get { key }];
    if let Err(r) = validated(&ops) {
        return r;
    }
    let found = match run(ops).await.as_deref() {
        Ok([OpResult::Get(found)]) => found.clone(),
        Ok(_) => return Response::error(500, "unexpected transaction result"),
        Err(e) => return error(e),
    };
    let Some((value, version)) = found else {
        return Response::error(404, "no such key");
    };
    for (index, condition) in conditions.iter().enumerate() {
        let Op::Check { expect, .. } = condition else {
            unreachable!("preconditions are check ops");
        };
        if expect.holds(Some(version)) {
            continue;
        }
        // If-Match comes first when both are given; If-None-Match alone is index 0.
        let is_if_none_match = index == 1 || req.head.header("If-Match").is_none();
        return if is_if_none_match {
            Response::new(304).header("ETag", op::etag(version))
        } else {
            Response::error(412, "precondition failed")
        };
    }
    Response::bytes(200, "application/octet-stream", value).header("ETag", op::etag(version))
}

/// PUT /kv/{key} -> 201 (created) or 200 with the new ETag; If-Match and If-None-Match (`*` or
/// ETag lists) honoured, 412 when one is false.
async fn put(mut req: Request) -> Response {
    let key = match key_of(&req) {
        Ok(key) => key,
        Err(r) => return r,
    };
    let mut ops = match preconditions(&req, &key) {
        Ok(ops) => ops,
        Err(r) => return r,
    };
    if let Err(r) = may_read_conditions(&req, &ops) {
        return r;
    }
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

/// DELETE /kv/{key} -> 204, or 404 when absent; If-Match and If-None-Match honoured, as on PUT,
/// except that an absent key is 404 whatever the conditions (RFC 9110 §13.2.1, as on GET): an
/// If-Match that failed because the key is absent answers 404.
async fn delete(req: Request) -> Response {
    let key = match key_of(&req) {
        Ok(key) => key,
        Err(r) => return r,
    };
    let mut ops = match preconditions(&req, &key) {
        Ok(ops) => ops,
        Err(r) => return r,
    };
    if let Err(r) = may_read_conditions(&req, &ops) {
        return r;
    }
    ops.push(Op::Delete { key });
    if let Err(r) = validated(&ops) {
        return r;
    }
    match run(ops).await.as_deref() {
        Ok([.., OpResult::Delete { deleted: true }]) => Response::new(204),
        Ok([.., OpResult::Delete { deleted: false }]) => Response::error(404, "no such key"),
        Ok(_) => Response::error(500, "unexpected transaction result"),
        Err(TxError::Failed {
            reason: FailReason::Version { actual: None },
            ..
        }) => Response::error(404, "no such key"),
        Err(e) => error(e),
    }
}

/// The access rules judge each op of a /kv/tx as the single-key request it stands for (its
/// methods, the key's one path), or the transaction would be a second way to every key past
/// the rules written for `/kv/{key}`. The first refusal answers for the whole transaction,
/// before any op runs or locks anything.
// The early answer is moved once, off the hot path; boxing it would cost more.
#[allow(clippy::result_large_err)]
fn authorized(req: &Request, ops: &[Op]) -> Result<(), Response> {
    let Some(access) = crate::auth::middleware::access(req) else {
        return Ok(());
    };
    // `{mount}/kv/tx` -> `{mount}/kv`: the single-key routes are this route's siblings,
    // wherever an app mounted them.
    let dir = req.path().rsplit_once('/').map_or("", |(dir, _)| dir);
    for op in ops {
        let path = key_path(dir, op.key());
        for method in single_key_methods(op) {
            access.check(method, &path, || {
                format!("key {:?}", String::from_utf8_lossy(op.key()))
            })?;
        }
    }
    Ok(())
}

/// POST /kv/tx -> 200 committed, 412 failed op, 409 conflict (Retry-After), 400/413 bad request,
/// 401/403 a key the access rules keep from the client (`authorized`).
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
    if let Err(r) = authorized(&req, &ops) {
        return r;
    }
    let outcome = run(ops).await;
    let (status, json) = op::render_outcome(&outcome);
    let response = Response::bytes(status, "application/json", json);
    // The same Retry-After as the single-key routes: a failed log's is 30 s, not 1 (README
    // review: /kv/tx said 1 for every error worth retrying).
    match outcome.as_ref().err().and_then(TxError::retry_after) {
        Some(seconds) => response.header("Retry-After", seconds),
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_path_table() {
        let cases: &[(&[u8], &str)] = &[
            (b"a", "/kv/a"),
            (b"secret", "/kv/secret"),
            (b"a/b", "/kv/a%2Fb"),
            (b"a b", "/kv/a%20b"),
            (b"100%", "/kv/100%25"),
            (b"#frag?q", "/kv/%23frag%3Fq"),
            (b"a+b", "/kv/a+b"),
            (b"a:b@c!$&'()*,;=~-._", "/kv/a:b@c!$&'()*,;=~-._"),
            (b"a[1]", "/kv/a%5B1%5D"),
            (b"\"<>\\^`{|}", "/kv/%22%3C%3E%5C%5E%60%7B%7C%7D"),
            ("caf\u{e9}".as_bytes(), "/kv/caf%C3%A9"),
            (b"\0\n\x7f", "/kv/%00%0A%7F"),
            (b"..", "/kv/.."),
        ];
        for (key, want) in cases {
            let path = key_path("/kv", key);
            assert_eq!(path, *want, "{key:?}");
            // The single-key routes read the same key back from it: one path, both ways.
            let segment = path.strip_prefix("/kv/").unwrap();
            assert_eq!(segment::decode(segment).as_deref(), Ok(*key), "{path}");
        }
        // Mounted elsewhere, the routes' own directory.
        assert_eq!(key_path("/store/kv", b"a b"), "/store/kv/a%20b");
    }

    #[test]
    fn ops_are_judged_as_their_single_key_requests() {
        let key = || Bytes::from_static(b"team a");
        let cases: &[(Op, &[(&str, &str)])] = &[
            (Op::Get { key: key() }, &[("GET", "/kv/team%20a")]),
            (Op::check_version(key(), 3), &[("GET", "/kv/team%20a")]),
            (Op::check_absent(key()), &[("GET", "/kv/team%20a")]),
            (
                Op::Put {
                    key: key(),
                    value: Bytes::from_static(b"v"),
                },
                &[("PUT", "/kv/team%20a")],
            ),
            (Op::Delete { key: key() }, &[("DELETE", "/kv/team%20a")]),
            (
                Op::Add {
                    key: key(),
                    delta: 1,
                    floor: None,
                },
                &[("GET", "/kv/team%20a"), ("PUT", "/kv/team%20a")],
            ),
        ];
        for (op, want) in cases {
            let path = key_path("/kv", op.key());
            let got: Vec<(&str, &str)> = single_key_methods(op)
                .iter()
                .map(|method| (*method, path.as_str()))
                .collect();
            assert_eq!(got, *want, "{op:?}");
        }
    }

    #[test]
    fn percent_decode_table() {
        let bad_escape = Err("the key has a '%' without two hex digits after it");
        let bad_hex = Err("the key has a '%' without two uppercase hex digits after it");
        let escaped = Err("the key escapes a character that must be written as itself");
        let not_utf8 = Err("the key is not UTF-8 once percent-decoded");
        let raw = Err("the key has a character that must be percent-encoded");
        let cases: &[(&str, Result<&[u8], &str>)] = &[
            ("a", Ok(b"a")),
            ("", Ok(b"")),
            ("a%20b", Ok(b"a b")),
            ("a%2Fb", Ok(b"a/b")),
            ("100%25", Ok(b"100%")),
            ("%23frag", Ok(b"#frag")),
            ("%2525", Ok(b"%25")),
            ("a+b", Ok(b"a+b")),
            ("a:b@c!$&'()*,;=~-._", Ok(b"a:b@c!$&'()*,;=~-._")),
            ("%C3%A9", Ok("\u{e9}".as_bytes())),
            ("%00", Ok(b"\0")),
            ("%3F%5B%5D%22", Ok(b"?[]\"")),
            // A second spelling of a key that has a first: refused.
            ("%61", escaped),
            ("%7E", escaped),
            ("%2B", escaped),
            ("%3A", escaped),
            ("%40", escaped),
            ("a%2fb", bad_hex),
            ("%c3%a9", bad_hex),
            ("%", bad_escape),
            ("%6", bad_escape),
            ("a%", bad_escape),
            ("%6g", bad_hex),
            ("%g6", bad_hex),
            ("%%61", bad_hex),
            ("%+1", bad_hex),
            ("%FF", not_utf8),
            ("%C3", not_utf8),
            // The other spelling of an escaped key: refused.
            ("caf\u{e9}", raw),
            ("a[1]", raw),
            ("a\"b", raw),
            ("a{b}", raw),
            ("a|b", raw),
            ("%C3%5B", not_utf8),
        ];
        for (segment, want) in cases {
            assert_eq!(
                segment::decode(segment),
                want.map(<[u8]>::to_vec),
                "{segment}"
            );
        }
    }
}
