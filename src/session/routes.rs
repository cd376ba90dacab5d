//! The session HTTP API of the default server (a contract that tests and tools rely on): /session and /session/data/{key}.

use serde_json::{Value, json};

use super::{Session, SessionError};
use crate::router::{Request, Response, Router};

pub fn routes() -> Router {
    Router::new()
        .post("/session", create)
        .get("/session", read)
        .delete("/session", destroy)
        .post("/session/rotate", rotate)
        .get("/session/data/{key}", get_value)
        .put("/session/data/{key}", put_value)
        .delete("/session/data/{key}", delete_value)
}

/// The answer to a session operation that did not happen, for every route that uses sessions
/// (these and /auth's): a 503 says when to retry (`SessionError::retry_after`).
impl From<SessionError> for Response {
    fn from(e: SessionError) -> Response {
        let response = Response::error(e.status(), e.message());
        if e.status() == 401 {
            return response.header("WWW-Authenticate", cookie_challenge(None));
        }
        match e.retry_after() {
            Some(seconds) => response.header("Retry-After", seconds),
            None => response,
        }
    }
}

/// The challenge a 401 must carry (RFC 9110 §15.5.2) when it is about the session cookie: the
/// `Cookie` scheme of draft-broyer-http-cookie-auth, naming the cookie and, when given, where
/// to log in. Browsers do not act on it, where a `Basic` challenge makes them prompt for (and
/// remember) a password (found in review: these 401s carried no challenge at all).
pub fn cookie_challenge(form_action: Option<&str>) -> String {
    let shard = crate::runtime::shard::try_current();
    let name = shard.as_ref().map_or("percore_sid", |shard| {
        shard.sessions.config.cookie_name.as_str()
    });
    match form_action {
        Some(action) => {
            format!("Cookie realm=\"percore\", form-action=\"{action}\", cookie-name=\"{name}\"")
        }
        None => format!("Cookie realm=\"percore\", cookie-name=\"{name}\""),
    }
}

// The early answer is moved once, off the hot path; boxing it would cost more.
#[allow(clippy::result_large_err)]
fn session(req: &Request) -> Result<Session, Response> {
    Session::from_request(req).ok_or_else(|| Response::from(SessionError::Unknown))
}

/// POST /session -> 201 `{"shard": owner}` and the cookie of a new session; 503 with
/// Retry-After when every session is logged in (an anonymous one never evicts a login).
async fn create(req: Request) -> Response {
    let session = match Session::try_create() {
        Ok(session) => session,
        Err(e) => return Response::from(e),
    };
    Response::json(201, &json!({ "shard": session.owner() }))
        .header("Set-Cookie", session.cookie(req.ctx.tls))
}

/// GET /session -> 200 `{"shard": owner, "data": {...}}`, or 401.
async fn read(req: Request) -> Response {
    let session = match session(&req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match session.data().await {
        Ok(data) => Response::json(200, &json!({ "shard": session.owner(), "data": data })),
        Err(e) => Response::from(e),
    }
}

/// DELETE /session -> 204 and a cleared cookie; the id is dead on every shard.
async fn destroy(req: Request) -> Response {
    let session = match session(&req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match session.destroy().await {
        Ok(()) => Response::new(204).header("Set-Cookie", Session::clear_cookie(req.ctx.tls)),
        Err(e) => Response::from(e),
    }
}

/// POST /session/rotate -> 200 with a new cookie for the same data; the old id gets 401.
async fn rotate(req: Request) -> Response {
    let mut session = match session(&req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match session.rotate().await {
        Ok(()) => Response::json(200, &json!({ "shard": session.owner() }))
            .header("Set-Cookie", session.cookie(req.ctx.tls)),
        // Rotated, but not yet known durable: the old id is dead, so the answer carries the new
        // one (found in review: a 503 without it left the client with a dead cookie).
        Err(e) if e.rotated => {
            Response::from(e.error).header("Set-Cookie", session.cookie(req.ctx.tls))
        }
        Err(e) => Response::from(e.error),
    }
}

/// GET /session/data/{key} -> 200 with the JSON value, 404 when unset, 401 without a session.
async fn get_value(req: Request) -> Response {
    let session = match session(&req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let key = match key_of(&req) {
        Ok(key) => key,
        Err(refused) => return refused,
    };
    match session.get_value(&key).await {
        Ok(Some(value)) => Response::json(200, &value),
        Ok(None) => Response::error(404, "no such session value"),
        Err(e) => Response::from(e),
    }
}

/// Values named `percore.*` belong to the server (the logged-in user): clients may read them but
/// never write them, or a client could log itself in as anyone.
const RESERVED_PREFIX: &str = "percore.";

/// The value name a `/session/data/{key}` request names: its segment percent-decoded as a
/// `/kv/{key}` is (`a%20b` is "a b"; one spelling per name, so `%61` is 400), and for a write
/// not a reserved one. The name was the raw segment, escapes and all (found in review: `a%20b`
/// and `a b` written by an app were two values).
// The early answer is moved once; boxing it would cost more.
#[allow(clippy::result_large_err)]
fn key_of(req: &Request) -> Result<String, Response> {
    let segment = req.param("key").unwrap_or_default();
    let key = crate::http::segment::decode(segment).map_err(|e| Response::error(400, e))?;
    Ok(String::from_utf8(key).expect("decode checks UTF-8"))
}

#[allow(clippy::result_large_err)]
fn writable_key_of(req: &Request) -> Result<String, Response> {
    let key = key_of(req)?;
    match key.starts_with(RESERVED_PREFIX) {
        true => Err(Response::error(
            403,
            "session values named percore.* are the server's",
        )),
        false => Ok(key),
    }
}

/// PUT /session/data/{key} with a JSON body -> 204; 400 when the body is not JSON, 413 past the
/// bound, 403 for a reserved name.
async fn put_value(mut req: Request) -> Response {
    let key = match writable_key_of(&req) {
        Ok(key) => key,
        Err(refused) => return refused,
    };
    let session = match session(&req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let body = match req.body.bytes().await {
        Ok(body) => body,
        Err(e) => return e.into(),
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => return Response::error(400, &format!("body is not JSON: {e}")),
    };
    match session.set_value(&key, value).await {
        Ok(()) => Response::new(204),
        Err(e) => Response::from(e),
    }
}

/// DELETE /session/data/{key} -> 204 whether or not the value was set; 403 for a reserved name.
async fn delete_value(req: Request) -> Response {
    let key = match writable_key_of(&req) {
        Ok(key) => key,
        Err(refused) => return refused,
    };
    let session = match session(&req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match session.remove(&key).await {
        Ok(_) => Response::new(204),
        Err(e) => Response::from(e),
    }
}
