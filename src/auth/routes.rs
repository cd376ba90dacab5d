//! The auth HTTP API of the default server (a contract tests and tools rely on): POST /auth/login, POST /auth/logout, GET /auth/me.

use serde_json::json;

use super::credentials::{self, LOGIN_BODY_BYTES_MAX};
use super::middleware::{SESSION_USER, SessionUser, denied};
use super::service::Denied;
use crate::router::{Request, Response, Router};
use crate::runtime::shard;
use crate::session::routes::cookie_challenge;
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
    // The request's own session, logged in and rotated in one step on its owner (its old id
    // dies, against fixation), or a new one.
    if let Some(mut session) = Session::from_request(&req) {
        match session.log_in(remembered.clone()).await {
            Ok(()) => return logged_in(&req, &session, &form.username, roles),
            // Logged in and rotated, but the old id's end not yet known durable: the old id is
            // dead, so the answer carries the new one (found in review: a 503 without it left
            // the client with a dead cookie).
            Err(e) if e.rotated => {
                return Response::from(e.error).header("Set-Cookie", session.cookie(req.ctx.tls));
            }
            Err(e) if e.error == SessionError::Unknown => {}
            // Nothing changed: the client keeps its session, its data and its cookie.
            Err(e) => return Response::from(e.error),
        }
    }
    let session = Session::create();
    if let Err(e) = session.set_value(SESSION_USER, remembered).await {
        // A new session on this shard, never given out: nothing may keep it.
        let _ = session.destroy().await;
        return Response::from(e);
    }
    logged_in(&req, &session, &form.username, roles)
}

/// 200 `{"user","roles"}` and the cookie of the session the login ended in.
fn logged_in(req: &Request, session: &Session, user: &str, roles: Vec<String>) -> Response {
    Response::json(200, &json!({ "user": user, "roles": roles }))
        .header("Set-Cookie", session.cookie(req.ctx.tls))
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
