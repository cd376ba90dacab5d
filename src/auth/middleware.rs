//! The two auth middlewares: Authenticate sets `ctx.identity` from Basic, Bearer or the login session; Authorize applies the `[[access]]` rules and the CSRF check; `access` applies the rules to the other paths a handler acts on for its client (each key of a /kv/tx). They decide; the service does the work.

use std::rc::Rc;

use super::access::Decision;
use super::credentials::{self, Credentials};
use super::csrf;
use super::service::{Auth, Denied};
use crate::metrics::add;
use crate::router::{AuthMethod, Identity, Next, Phase, Request, Response, Router};
use crate::runtime::shard;
use crate::session::routes::cookie_challenge;
use crate::session::{Session, SessionError};

/// The session value that holds the logged-in user: `{"user": name, "stamp": credential stamp}`
/// (a bare name from sessions made before stamps existed is still taken). Reserved: the public
/// session API refuses to write `percore.*` values.
pub const SESSION_USER: &str = "percore.user";

/// What a login session remembers of its user.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum SessionUser {
    Stamped {
        user: String,
        stamp: String,
    },
    /// Written before credential stamps; ends only by expiry or logout.
    Name(String),
}

/// Adds both middlewares to `router` (the server does this when auth is configured).
pub fn install(router: Router) -> Router {
    router
        .middleware(Phase::Authenticate, authenticate)
        .middleware(Phase::Authorize, authorize)
}

fn auth() -> Rc<Auth> {
    shard::current().auth.clone()
}

/// A 401 and its challenge (RFC 9110 §15.5.2: one at least): Basic when it is on, else the
/// session cookie's, which no browser prompts for.
pub fn unauthorized(auth: &Auth, message: &str) -> Response {
    let response = Response::error(401, message);
    if auth.config.basic {
        response.header(
            "WWW-Authenticate",
            "Basic realm=\"percore\", charset=\"UTF-8\"",
        )
    } else {
        response.header(
            "WWW-Authenticate",
            cookie_challenge(Some(super::routes::LOGIN_PATH)),
        )
    }
}

pub fn denied(auth: &Auth, denied: Denied) -> Response {
    match denied {
        Denied::Invalid => unauthorized(auth, "invalid username or password"),
        Denied::Blocked(secs) => Response::error(429, "too many failed logins, retry later")
            .header("Retry-After", secs.to_string()),
        Denied::Busy => {
            Response::error(503, "authentication busy, retry").header("Retry-After", "1")
        }
    }
}

/// Who a request is, as far as Authenticate can tell.
enum Who {
    Known(Identity),
    Anonymous,
    /// Anonymous, and the login session its cookie names was just destroyed (its user is gone
    /// or has another password): the answer clears the cookie too.
    SessionEnded,
}

async fn authenticate(mut req: Request, next: Next) -> Response {
    let auth = auth();
    let ended = match identify(&auth, &req).await {
        Ok(Who::Known(identity)) => {
            req.ctx.identity = Some(Rc::new(identity));
            false
        }
        Ok(Who::Anonymous) => false,
        Ok(Who::SessionEnded) => true,
        Err(response) => return response,
    };
    let tls = req.ctx.tls;
    let response = next.run(req).await;
    if ended && !sets_session_cookie(&response) {
        return response.header("Set-Cookie", Session::clear_cookie(tls));
    }
    response
}

/// The handler gave the client a session cookie of its own (a login after the old one ended).
fn sets_session_cookie(response: &Response) -> bool {
    let name = &shard::current().sessions.config.cookie_name;
    response.headers.iter().any(|(header, value)| {
        header.eq_ignore_ascii_case("set-cookie")
            && value
                .strip_prefix(name.as_bytes())
                .is_some_and(|rest| rest.starts_with(b"="))
    })
}

// The early answer is moved once, off the hot path; boxing it would cost more.
#[allow(clippy::result_large_err)]
async fn identify(auth: &Auth, req: &Request) -> Result<Who, Response> {
    if let Some(value) = req.header("authorization") {
        let credentials = credentials::from_authorization(value)
            .map_err(|why| unauthorized(auth, &format!("bad Authorization header: {why}")))?;
        match credentials {
            Some(Credentials::Basic { user, password }) if auth.config.basic => {
                let addr = req.ctx.client;
                let roles = auth
                    .check_basic(&user, &password, addr)
                    .await
                    .map_err(|d| denied(auth, d))?;
                return Ok(Who::Known(Identity {
                    user,
                    roles,
                    via: AuthMethod::Basic,
                }));
            }
            Some(Credentials::Bearer(token)) => {
                let Some(token) = auth.config.tokens.find(token) else {
                    return Err(Response::error(401, "unknown API token")
                        .header("WWW-Authenticate", "Bearer error=\"invalid_token\""));
                };
                return Ok(Who::Known(Identity {
                    user: token.name.clone(),
                    roles: token.roles.clone(),
                    via: AuthMethod::Bearer,
                }));
            }
            // Another scheme, or Basic while it is off: not ours to judge.
            _ => {}
        }
    }
    if auth.config.users_path.is_none() {
        return Ok(Who::Anonymous);
    }
    let Some(session) = Session::from_request(req) else {
        return Ok(Who::Anonymous);
    };
    let remembered = match session.get::<SessionUser>(SESSION_USER).await {
        Ok(Some(remembered)) => remembered,
        // An unknown or expired session, or one nobody logged in to (or in a form an older
        // percore stored): no identity, the rules decide.
        Ok(None) | Err(SessionError::Unknown | SessionError::WrongType) => {
            return Ok(Who::Anonymous);
        }
        // The owner shard did not answer (past the mesh deadline, overloaded, stopped): the
        // client may well be logged in, and a 401 with WWW-Authenticate would make a browser
        // prompt for a password. It retries instead.
        Err(e) => return Err(Response::from(e)),
    };
    let (user, stamp) = match remembered {
        SessionUser::Stamped { user, stamp } => (user, Some(stamp)),
        SessionUser::Name(user) => (user, None),
    };
    // Roles come from the users loaded now: a reload that drops a user or a role takes effect
    // on the next request, not at the next login.
    if let Some(roles) = auth.roles_of(&user, stamp.as_deref()) {
        return Ok(Who::Known(Identity {
            user,
            roles,
            via: AuthMethod::Session,
        }));
    }
    // The user is gone or has another password: the session ends for good (Django flushes
    // it), or putting the old hash back, or the user with it, would bring it back to life.
    match session.destroy().await {
        Ok(()) | Err(SessionError::Unknown) => Ok(Who::SessionEnded),
        Err(e) => Err(Response::from(e)),
    }
}

async fn authorize(req: Request, next: Next) -> Response {
    let auth = auth();
    let identity = req.ctx.identity.as_deref();
    let who = identity.map(|i| (i.user.as_str(), &i.roles[..]));
    // Login must stay reachable whatever the rules say, or nobody could ever log in.
    let decision = if req.path() == super::routes::LOGIN_PATH {
        Decision::Allow
    } else {
        auth.config.access.decide(req.method(), req.path(), who)
    };
    if decision != Decision::Allow {
        return refused(&auth, decision, None);
    }
    let via = identity.map(|i| i.via);
    let cross_site = if via == Some(AuthMethod::Session) {
        !csrf_ok(&auth, &req)
    } else {
        // Browsers also attach Basic credentials they remember, and a cross-site form can log
        // a victim into the attacker's account: a browser's unsafe request that says it comes
        // from another origin (Origin, else an absolute Referer) is refused for those too.
        // Scripts (neither) stay exempt.
        (via == Some(AuthMethod::Basic) || req.path() == super::routes::LOGIN_PATH)
            && cross_origin(&req)
    };
    if cross_site {
        add(&shard::current().metrics.csrf_rejected, 1);
        return Response::error(
            403,
            "cross-site request refused: no same-origin Origin or Referer",
        );
    }
    next.run(req).await
}

/// The 401 or 403 for a request the rules refuse, counted; `what` names what was refused when
/// it is not the request's own path.
fn refused(auth: &Auth, decision: Decision, what: Option<&str>) -> Response {
    let metrics = &shard::current().metrics;
    let (counter, reason) = match decision {
        Decision::Unauthenticated => (&metrics.access_unauthenticated, "authentication required"),
        Decision::Forbidden => (&metrics.access_forbidden, "forbidden"),
        Decision::Allow => unreachable!("an allowed request is never refused"),
    };
    add(counter, 1);
    let message = match what {
        Some(what) => format!("{reason}: {what}"),
        None => reason.to_string(),
    };
    if decision == Decision::Unauthenticated {
        unauthorized(auth, &message)
    } else {
        Response::error(403, &message)
    }
}

/// The access rules as they apply to one request's identity, for a handler that acts for its
/// client on paths other than the request's own: `POST /kv/tx` reaches every key it names, and
/// the rules protect keys by their `/kv/{key}` paths. The handler asks about each request it
/// stands for as if the client had sent it, before it acts; Authorize has already judged the
/// request's own path.
pub struct Access<'a> {
    auth: Rc<Auth>,
    identity: Option<&'a Identity>,
}

/// None when no access rules are configured (auth off, or every path public): everything is
/// allowed, and this look is all a request pays.
pub fn access(req: &Request) -> Option<Access<'_>> {
    let auth = auth();
    if auth.config.access.is_open() {
        return None;
    }
    Some(Access {
        auth,
        identity: req.ctx.identity.as_deref(),
    })
}

impl Access<'_> {
    /// Err: the 401 (no identity, and the rule needs one) or 403 to answer, counted like
    /// Authorize's, with `what()` naming the refused thing in its body.
    // The early answer is moved once, off the hot path; boxing it would cost more.
    #[allow(clippy::result_large_err)]
    pub fn check(
        &self,
        method: &str,
        path: &str,
        what: impl FnOnce() -> String,
    ) -> Result<(), Response> {
        let who = self.identity.map(|i| (i.user.as_str(), &i.roles[..]));
        match self.auth.config.access.decide(method, path, who) {
            Decision::Allow => Ok(()),
            decision => Err(refused(&self.auth, decision, Some(&what()))),
        }
    }
}

/// An unsafe request whose `Origin`, or without one its `Referer`, names another origin. A
/// browser that leaves Origin out of a form's POST still sends the Referer of the page, as
/// `csrf::check` reads it (found in review: a cross-site login with only a Referer got its
/// session). Only a Referer that names an origin counts (it starts with `scheme://` or `//`):
/// a relative or empty one, which scripts may send and RFC 9110 §10.1.3 allows, names none
/// (found in review: those were refused, and then `/login?next=http://t/` too).
fn cross_origin(req: &Request) -> bool {
    let names_origin = |referer: &&[u8]| {
        // RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
        let scheme_end =
            (referer.iter()).position(|&b| !(b.is_ascii_alphanumeric() || b"+-.".contains(&b)));
        let absolute = scheme_end.is_some_and(|end| {
            end > 0 && referer[0].is_ascii_alphabetic() && referer[end..].starts_with(b"://")
        });
        absolute || referer.starts_with(b"//")
    };
    let source = (req.header("origin")).or_else(|| req.header("referer").filter(names_origin));
    !csrf::is_safe_method(req.method())
        && source.is_some_and(|source| {
            !req.host()
                .is_some_and(|host| csrf::same_origin(source, host, req.ctx.tls))
        })
}

/// A state-changing request carried by the session cookie must show it comes from our own
/// pages (Origin or Referer) or carry the configured header (which a cross-site form cannot).
fn csrf_ok(auth: &Auth, req: &Request) -> bool {
    let has_header = auth
        .config
        .csrf_header
        .as_deref()
        .is_some_and(|name| req.header(name).is_some());
    csrf::check(
        req.method(),
        req.header("origin"),
        req.header("referer"),
        req.host(),
        req.ctx.tls,
        has_header,
    )
}

#[cfg(test)]
mod session_user_tests {
    use super::SessionUser;

    #[test]
    fn stamped_and_pre_stamp_session_values_both_read() {
        let stamped = SessionUser::Stamped {
            user: "bob".into(),
            stamp: "00ff".into(),
        };
        let text = serde_json::to_string(&stamped).unwrap();
        assert_eq!(text, r#"{"user":"bob","stamp":"00ff"}"#);
        assert!(matches!(
            serde_json::from_str(&text).unwrap(),
            SessionUser::Stamped { user, stamp } if user == "bob" && stamp == "00ff"
        ));
        assert!(matches!(
            serde_json::from_str(r#""bob""#).unwrap(),
            SessionUser::Name(user) if user == "bob"
        ));
        assert!(serde_json::from_str::<SessionUser>("42").is_err());
    }
}
