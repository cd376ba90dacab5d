//! The auth HTTP API of the default server (a contract tests and tools rely on): POST /auth/login, POST /auth/logout, GET /auth/me.

use serde_json::{Value, json};

use super::credentials::{self, LOGIN_BODY_BYTES_MAX};
use super::middleware::{SESSION_USER, SessionUser, denied};
use super::service::Denied;
use crate::router::{Request, Response, Router};
use crate::runtime::shard;
use crate::session::routes::cookie_challenge;
use crate::session::store::{SessionData, value_bytes};
use crate::session::{Session, SessionError};

pub const LOGIN_PATH: &str = "/auth/login";

pub fn routes() -> Router {
    Router::new()
        .post(LOGIN_PATH, login)
        .post("/auth/logout", logout)
        .get("/auth/me", me)
}

/// Reads a small body whole; 413 past `LOGIN_BODY_BYTES_MAX`.
// The early answer is moved once, off the hot path; boxing it would cost more.
#[allow(clippy::result_large_err)]
async fn small_body(req: &mut Request) -> Result<Vec<u8>, Response> {
    let mut body = Vec::new();
    while let Some(chunk) = req.body.chunk().await {
        let chunk = chunk.map_err(Response::from)?;
        if body.len() + chunk.len() > LOGIN_BODY_BYTES_MAX {
            return Err(Response::error(413, "login body too large"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// POST /auth/login with `{"username","password"}` (JSON or a form) -> 200 `{"user","roles"}`
/// and the cookie of a fresh session id (the request's session, if any, is rotated: its old id
/// dies, against fixation); 401 for a wrong user or password alike; 429 when blocked.
async fn login(mut req: Request) -> Response {
    let body = match small_body(&mut req).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let form = match credentials::parse_login(req.header("content-type"), &body) {
        Ok(form) => form,
        Err(why) => return Response::error(400, &format!("bad login request: {why}")),
    };
    let auth = shard::current().auth.clone();
    let addr = req.ctx.client;
    let roles = match auth
        .check_password(&form.username, &form.password, addr)
        .await
    {
        Ok(roles) => roles,
        // No Basic challenge here: a page script's failed login must not make the browser
        // prompt for (and then remember) Basic credentials.
        Err(Denied::Invalid) => {
            return Response::error(401, "invalid username or password")
                .header("WWW-Authenticate", cookie_challenge(Some(LOGIN_PATH)));
        }
        Err(d) => return denied(&auth, d),
    };
    // The stamp of the users loaded now; a reload between the check and here at worst makes
    // this session end at once (stamp mismatch), never outlive a password change.
    let stamp = auth.stamp_of(&form.username).unwrap_or_default();
    let remembered = serde_json::to_value(SessionUser::Stamped {
        user: form.username.clone(),
        stamp,
    })
    .expect("two strings encode as JSON");
    let session = match login_session(&req, &remembered).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    if let Err(e) = session.set_value(SESSION_USER, remembered).await {
        // The rotation stands (the old id is dead), so the answer carries the new id: the
        // client keeps its session and its data, and may log in again (found in review:
        // destroying the rotated session here, when its owner answered late, lost the client's
        // data with it). Not logged in, as far as it is told; after a mesh `Timeout` the write
        // may have landed, and the session is then logged in all the same (the password was
        // right). A session that is gone gets no cookie.
        let response = Response::from(e);
        return match e {
            SessionError::Unknown => response,
            _ => response.header("Set-Cookie", session.cookie(req.ctx.tls)),
        };
    }
    Response::json(200, &json!({ "user": form.username, "roles": roles }))
        .header("Set-Cookie", session.cookie(req.ctx.tls))
}

/// The session a login ends in: the request's own, rotated (its old id dies, against fixation),
/// or a new one. A session without room for `remembered` fails the login before the rotation,
/// so the client keeps its session, its data and its cookie, and no unreachable copy is left.
// The early answer is moved once, off the hot path; boxing it would cost more.
#[allow(clippy::result_large_err)]
async fn login_session(req: &Request, remembered: &Value) -> Result<Session, Response> {
    let Some(mut session) = Session::from_request(req) else {
        return Ok(Session::create());
    };
    match session.data().await {
        Ok(data) if fits(&data, remembered) => {}
        Ok(_) => return Err(Response::from(SessionError::TooLarge)),
        Err(SessionError::Unknown) => return Ok(Session::create()),
        Err(e) => return Err(Response::from(e)),
    }
    match session.rotate().await {
        Ok(()) => Ok(session),
        // Rotated, but not yet known durable: the old id is dead, so the answer carries the
        // new one (found in review: a 503 without it left the client with a dead cookie).
        Err(e) if e.rotated => {
            Err(Response::from(e.error).header("Set-Cookie", session.cookie(req.ctx.tls)))
        }
        Err(e) if e.error == SessionError::Unknown => Ok(Session::create()),
        Err(e) => Err(Response::from(e.error)),
    }
}

/// Whether `data` with the login's value in place stays within `--max-session-bytes`, counted
/// as the store counts it.
fn fits(data: &SessionData, remembered: &Value) -> bool {
    let others: usize = data
        .iter()
        .filter(|(name, _)| *name != SESSION_USER)
        .map(|(name, value)| value_bytes(name, &value.to_string()))
        .sum();
    let bytes_max = shard::current().sessions.config.session_bytes_max;
    others + value_bytes(SESSION_USER, &remembered.to_string()) <= bytes_max
}

/// POST /auth/logout -> 204, the session destroyed (on its owner: dead on every shard) and its
/// cookie cleared; also 204 without a session.
async fn logout(req: Request) -> Response {
    if let Some(session) = Session::from_request(&req) {
        match session.destroy().await {
            Ok(()) | Err(SessionError::Unknown) => {}
            Err(e) => return Response::from(e),
        }
    }
    Response::new(204).header("Set-Cookie", Session::clear_cookie(req.ctx.tls))
}

/// GET /auth/me -> 200 `{"user","roles","via"}` for any authenticated request, else 401.
async fn me(req: Request) -> Response {
    match &req.ctx.identity {
        Some(identity) => Response::json(
            200,
            &json!({
                "user": identity.user,
                "roles": identity.roles,
                "via": format!("{:?}", identity.via).to_ascii_lowercase(),
            }),
        ),
        None => {
            let auth = shard::current().auth.clone();
            super::middleware::unauthorized(&auth, "not logged in")
        }
    }
}
