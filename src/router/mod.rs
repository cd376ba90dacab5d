//! Routes (method + path pattern, path parameters, prefix mounts) and middleware in a fixed phase order; never does IO itself.

pub mod direct;
pub mod request;
pub mod response;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

pub use crate::http::RequestHead;
pub use direct::{Answer, DirectHandler};
pub use request::{
    AuthMethod, Body, BodyError, BodySource, Extensions, Identity, Request, RequestCtx,
};
pub use response::{BodyStream, Headers, Response, ResponseBody};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Captured path parameters, in pattern order.
type Params = Vec<(Rc<str>, String)>;
/// Handlers of one static path, by method.
type MethodTable = Vec<(Box<str>, Rc<dyn Handler>)>;

/// A request handler: an async function of the request (or, through `sync_handler`, a plain
/// one). It runs on the shard that accepted the connection: no `Send` bound, `Rc` state is fine.
pub trait Handler: 'static {
    fn call(&self, req: Request) -> Reply;

    /// The direct form of a handler added with `Router::direct`; None for any other.
    fn direct(&self) -> Option<&dyn DirectHandler> {
        None
    }
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + 'static,
    Fut: Future<Output = Response> + 'static,
{
    fn call(&self, req: Request) -> Reply {
        Reply::future(self(req))
    }
}

/// A handler that answers without waiting (nothing to `.await`), called directly: its answer
/// needs no future, so a request costs no allocation for one and no copy of the request into it
/// (about 5% of a pipelined request's CPU).
/// `Router::new().get("/ping", sync_handler(|_req: Request| Response::text(200, "pong")))`.
pub fn sync_handler<F>(handler: F) -> SyncHandler<F>
where
    F: Fn(Request) -> Response + 'static,
{
    SyncHandler(handler)
}

/// See `sync_handler`.
pub struct SyncHandler<F>(F);

impl<F> Handler for SyncHandler<F>
where
    F: Fn(Request) -> Response + 'static,
{
    fn call(&self, req: Request) -> Reply {
        Reply::ready((self.0)(req))
    }
}

/// A handler's answer: made already (a synchronous handler, a 404), or still to come. A future
/// either way (`next.run(req).await` in a middleware); a connection takes a ready one without
/// polling anything.
///
/// Only a `sync_handler` is called without a future: a closure that returns a `Reply` (itself a
/// future) is an async handler like any other, and its reply is boxed.
#[must_use = "a Reply does nothing unless awaited or returned"]
pub struct Reply(ReplyState);

enum ReplyState {
    /// None once taken.
    Ready(Option<Response>),
    Pending(BoxFuture<Response>),
}

impl Reply {
    /// An answer made already.
    pub fn ready(response: Response) -> Reply {
        Reply(ReplyState::Ready(Some(response)))
    }

    /// An answer still to come (boxed).
    pub fn future(future: impl Future<Output = Response> + 'static) -> Reply {
        Reply(ReplyState::Pending(Box::pin(future)))
    }

    /// The answer, if it is made already: to encode where it lies (taking it out is a copy).
    pub(crate) fn ready_mut(&mut self) -> Option<&mut Response> {
        match &mut self.0 {
            ReplyState::Ready(response) => response.as_mut(),
            ReplyState::Pending(_) => None,
        }
    }
}

impl Future for Reply {
    type Output = Response;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        match &mut self.get_mut().0 {
            ReplyState::Ready(response) => Poll::Ready(
                response
                    .take()
                    .expect("a reply is not polled after it answered"),
            ),
            ReplyState::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

/// When a middleware runs. Phases run outermost first in this order on the way in (and in reverse
/// on the way out); within a phase, in the order the middleware was added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Before anything else: request ids, logging, rate limits, redirects.
    Request,
    /// Establishes `ctx.identity` (session cookie, Basic, Bearer).
    Authenticate,
    /// Decides whether the identity may do this (access rules, CSRF).
    Authorize,
    /// Right around the handler: response headers, compression.
    Handle,
}

/// Code around handlers: call `next.run(req)` to go on, or answer without it.
pub trait Middleware: 'static {
    fn call(&self, req: Request, next: Next) -> BoxFuture<Response>;
}

impl<F, Fut> Middleware for F
where
    F: Fn(Request, Next) -> Fut + 'static,
    Fut: Future<Output = Response> + 'static,
{
    fn call(&self, req: Request, next: Next) -> BoxFuture<Response> {
        Box::pin(self(req, next))
    }
}

/// A mounted router's middleware: it runs for the requests under its prefix, and the others go
/// straight on down the chain.
struct Scoped {
    prefix: Rc<str>,
    inner: Rc<dyn Middleware>,
}

impl Middleware for Scoped {
    fn call(&self, req: Request, next: Next) -> BoxFuture<Response> {
        let under = req
            .path()
            .strip_prefix(&*self.prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if under {
            self.inner.call(req, next)
        } else {
            Box::pin(next.run(req))
        }
    }
}

/// The rest of the middleware chain, ending in the router.
pub struct Next {
    app: Rc<App>,
    index: usize,
}

impl Next {
    pub fn run(self, req: Request) -> Reply {
        match self.app.middleware.get(self.index) {
            Some((_, middleware)) => {
                let next = Next {
                    app: self.app.clone(),
                    index: self.index + 1,
                };
                Reply(ReplyState::Pending(middleware.call(req, next)))
            }
            None => self.app.router.dispatch(req),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Param(Rc<str>),
    /// `{*name}`: the rest of the path, possibly empty; last segment only.
    Rest(Rc<str>),
}

struct Route {
    method: Box<str>,
    segments: Vec<Segment>,
    handler: Rc<dyn Handler>,
}

/// Maps method and path to a handler. Static paths are a hash lookup; patterns are tried in the
/// order they were added.
#[derive(Default)]
pub struct Router {
    /// path -> (method, handler) for patterns without parameters.
    /// FxHash: the keys are our own route paths (no flooding risk), and SipHash was 4% of a
    /// pipelined request's CPU (bench/RESULTS.md).
    exact: rustc_hash::FxHashMap<Box<str>, MethodTable>,
    /// `exact` moved into a list by `into_app` when it holds at most `EXACT_SCAN_MAX` routes:
    /// comparing a few lengths and then the bytes of one path costs less than hashing the path
    /// and probing (route lookup was 7% of a pipelined request's CPU).
    exact_scan: Option<Vec<(Box<str>, MethodTable)>>,
    patterns: Vec<Route>,
    /// Each with its scope: the path prefix it runs under, whole from the root ("" for every
    /// request). Kept apart from the middleware until `into_app`, so that a mount joins its
    /// prefix to the scopes of a router mounted inside (`/api` + `/v1`): wrapped at once, the
    /// inner scope was matched against the whole path, and `/v1`'s middleware never ran for
    /// `/api/v1/x` (found in review).
    middleware: Vec<(Phase, Rc<str>, Rc<dyn Middleware>)>,
    /// Every method some route has that HTTP does not define, gathered by `into_app`: a miss
    /// with an unknown method looks here, not through every route (`knows_method`).
    other_methods: Vec<Box<str>>,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds a route. Patterns: `/users/{id}`, `/files/{*path}`. Panics on a malformed pattern
    /// (a programming error found at start-up). A method and path added twice keep the first
    /// route, exact or pattern alike, so routes added before `.mount("/", builtin_routes())`
    /// take precedence over the built-in ones (`GET /health` of your own).
    pub fn route(mut self, method: &str, pattern: &str, handler: impl Handler) -> Router {
        self.add(method, pattern, Rc::new(handler));
        self
    }

    pub fn get(self, pattern: &str, handler: impl Handler) -> Router {
        self.route("GET", pattern, handler)
    }

    pub fn post(self, pattern: &str, handler: impl Handler) -> Router {
        self.route("POST", pattern, handler)
    }

    pub fn put(self, pattern: &str, handler: impl Handler) -> Router {
        self.route("PUT", pattern, handler)
    }

    pub fn delete(self, pattern: &str, handler: impl Handler) -> Router {
        self.route("DELETE", pattern, handler)
    }

    /// Adds a direct route (see `direct`): `handler` answers from the borrowed head, and the
    /// connection encodes its answer without building a request or a response. `path` is exact
    /// (no parameters): panics otherwise, like a malformed pattern.
    /// ```
    /// use percore::router::{Answer, RequestHead, Router};
    /// let router = Router::new()
    ///     .direct("GET", "/ping", |_: &RequestHead, answer: &mut Answer| answer.text(200, "pong"))
    ///     .direct("GET", "/agent", |head: &RequestHead, answer: &mut Answer| {
    ///         let agent = head.header("user-agent").unwrap_or(b"unknown");
    ///         answer.set_content_type("application/octet-stream");
    ///         answer.body().extend_from_slice(agent);
    ///     });
    /// ```
    pub fn direct(self, method: &str, path: &str, handler: impl DirectHandler) -> Router {
        assert!(
            is_exact(&parse_pattern(path)),
            "a direct route's path has no parameters: {path}"
        );
        self.route(method, path, direct::Direct(handler))
    }

    /// Serves every route of `other` under `prefix` (`/api` + `/users` = `/api/users`; a route
    /// `/` of `other` is both `/api` and `/api/`, as Express mounts it: an embedding review
    /// found `/api` a 404). `other`'s middleware joins this router's in its phase, and runs
    /// for the requests under `prefix` only (`/api` and `/api/...`, not `/apix`), as Express
    /// runs a mounted router's (it ran for every request of the app, an embedding review found);
    /// mounted at `/`, for every request.
    pub fn mount(mut self, prefix: &str, other: Router) -> Router {
        let prefix = prefix.trim_end_matches('/');
        // Its exact routes are joined to it as text, and its middleware's scope is a text prefix.
        assert!(
            prefix.is_empty() || (prefix.starts_with('/') && is_exact(&parse_pattern(prefix))),
            "a mount prefix is a path without parameters: {prefix}"
        );
        for (path, methods) in other.exact {
            for (method, handler) in methods {
                if &*path == "/" && !prefix.is_empty() {
                    self.add(&method, prefix, handler.clone());
                }
                self.add(&method, &format!("{prefix}{path}"), handler);
            }
        }
        let prefix_segments = if prefix.is_empty() {
            Vec::new()
        } else {
            parse_pattern(prefix)
        };
        for route in other.patterns {
            let mut segments = prefix_segments.clone();
            segments.extend(route.segments);
            self.patterns.push(Route {
                method: route.method,
                segments,
                handler: route.handler,
            });
        }
        self.middleware.extend(
            (other.middleware.into_iter())
                .map(|(phase, scope, inner)| (phase, format!("{prefix}{scope}").into(), inner)),
        );
        self
    }

    /// Adds middleware that runs in `phase` (see `Phase` for the order).
    pub fn middleware(mut self, phase: Phase, middleware: impl Middleware) -> Router {
        self.middleware
            .push((phase, "".into(), Rc::new(middleware)));
        self
    }

    fn add(&mut self, method: &str, pattern: &str, handler: Rc<dyn Handler>) {
        assert!(
            pattern.starts_with('/'),
            "route pattern must start with '/': {pattern}"
        );
        // RFC 9110 §9.1: a method is a token, and case-sensitive (`get` is not GET). A route
        // whose method no request can carry (a space, an empty name) is a programming error.
        assert!(
            !method.is_empty() && method.bytes().all(is_tchar),
            "route method must be a token (RFC 9110 §9.1): {method:?}"
        );
        let segments = parse_pattern(pattern);
        if is_exact(&segments) {
            let methods = self.exact.entry(pattern.into()).or_default();
            // The first route added wins, as among patterns (found in review: an exact one was
            // replaced by the last, so the built-ins mounted last replaced an app's /health).
            if !methods.iter().any(|(m, _)| &**m == method) {
                methods.push((method.into(), handler));
            }
        } else {
            self.patterns.push(Route {
                method: method.into(),
                segments,
                handler,
            });
        }
    }

    /// Finds the handler for `method` and `path`: Ok with captured parameters, or the status to
    /// answer (501 a method no route has and HTTP does not define; 404 no such path; 405 with
    /// the allowed methods).
    fn find(&self, method: &str, path: &str) -> Result<(&dyn Handler, Params), Miss> {
        let lookup = |method: &str| -> Option<(&dyn Handler, Params)> {
            if let Some(h) = self.exact_get(method, path) {
                return Some((h, Vec::new()));
            }
            self.patterns
                .iter()
                .filter(|r| &*r.method == method)
                .find_map(|r| match_segments(&r.segments, path).map(|p| (&*r.handler, p)))
        };
        if let Some(found) = lookup(method) {
            return Ok(found);
        }
        // RFC 9110 §9.3.2: HEAD is GET without the body.
        if method == "HEAD"
            && let Some(found) = lookup("GET")
        {
            return Ok(found);
        }
        if !self.knows_method(method) {
            return Err(Miss::NotImplemented);
        }
        let mut allowed: Vec<&str> = self
            .exact_methods(path)
            .into_iter()
            .flatten()
            .map(|(m, _)| &**m)
            .chain(
                self.patterns
                    .iter()
                    .filter(|r| match_segments(&r.segments, path).is_some())
                    .map(|r| &*r.method),
            )
            .collect();
        if allowed.is_empty() {
            return Err(Miss::NotFound);
        }
        if allowed.contains(&"GET") {
            allowed.push("HEAD");
        }
        allowed.sort_unstable();
        allowed.dedup();
        Err(Miss::MethodNotAllowed(allowed.join(", ")))
    }

    /// The handler `find` would give for `method` and `path` if it is an exact route's (direct
    /// routes are exact), without matching patterns (which allocates their parameters) unless a
    /// HEAD request could match one before falling back to GET.
    fn find_exact(&self, method: &str, path: &str) -> Option<&dyn Handler> {
        if let Some(handler) = self.exact_get(method, path) {
            return Some(handler);
        }
        let matches_pattern = |method: &str| {
            self.patterns
                .iter()
                .any(|r| &*r.method == method && match_segments(&r.segments, path).is_some())
        };
        if method != "HEAD" || matches_pattern("HEAD") {
            return None;
        }
        self.exact_get("GET", path)
    }

    /// Whether `method` is one HTTP defines (RFC 9110 §9.3, PATCH in RFC 5789) or one a route
    /// has: any other (`FOO`, or `get`, as methods are case-sensitive) is answered 501, as RFC
    /// 9110 §9.1 says a server should, not 405. Only asked on a miss.
    fn knows_method(&self, method: &str) -> bool {
        DEFINED_METHODS.contains(&method) || self.other_methods.iter().any(|m| &**m == method)
    }

    /// The methods of the exact route `path`, from the list or the map, whichever holds them.
    fn exact_methods(&self, path: &str) -> Option<&MethodTable> {
        match &self.exact_scan {
            Some(routes) => routes
                .iter()
                .find(|(route, _)| short_eq(route.as_bytes(), path.as_bytes()))
                .map(|(_, methods)| methods),
            None => self.exact.get(path),
        }
    }

    fn exact_get(&self, method: &str, path: &str) -> Option<&dyn Handler> {
        self.exact_methods(path)?
            .iter()
            .find(|(m, _)| short_eq(m.as_bytes(), method.as_bytes()))
            .map(|(_, h)| &**h)
    }

    fn dispatch(&self, mut req: Request) -> Reply {
        match self.find(req.method(), req.path()) {
            Ok((handler, params)) => {
                req.set_params(params);
                handler.call(req)
            }
            Err(Miss::NotImplemented) => {
                Reply::ready(Response::error(501, "method not implemented"))
            }
            Err(Miss::NotFound) => Reply::ready(Response::error(404, "not found")),
            Err(Miss::MethodNotAllowed(allow)) => {
                Reply::ready(Response::error(405, "method not allowed").header("allow", allow))
            }
        }
    }

    /// Freezes the router and its middleware (sorted by phase) into the app a shard serves.
    pub fn into_app(mut self) -> Rc<App> {
        let mut other: Vec<Box<str>> = (self.exact.values().flatten().map(|(m, _)| m))
            .chain(self.patterns.iter().map(|r| &r.method))
            .filter(|m| !DEFINED_METHODS.contains(&&***m))
            .cloned()
            .collect();
        other.sort_unstable();
        other.dedup();
        self.other_methods = other;
        if self.exact.len() <= EXACT_SCAN_MAX {
            self.exact_scan = Some(std::mem::take(&mut self.exact).into_iter().collect());
        }
        let mut layers = std::mem::take(&mut self.middleware);
        layers.sort_by_key(|(phase, ..)| *phase); // stable: insertion order within a phase
        let middleware = (layers.into_iter())
            .map(|(phase, scope, inner)| match &*scope {
                "" => (phase, inner),
                _ => {
                    let scoped: Rc<dyn Middleware> = Rc::new(Scoped {
                        prefix: scope,
                        inner,
                    });
                    (phase, scoped)
                }
            })
            .collect();
        Rc::new(App {
            router: self,
            middleware,
        })
    }
}

/// `tchar` (RFC 9110 §5.6.2).
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// The methods HTTP defines (RFC 9110 §9.3; PATCH, RFC 5789).
const DEFINED_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Most exact routes an app may have for `Router::exact_get` to scan them instead of hashing.
const EXACT_SCAN_MAX: usize = 16;

/// `a == b` for the short strings of routes and methods, without a call to `bcmp` (which cost
/// more than the compare itself). Up to 16 bytes as two overlapping words of 8, 4 or 1 bytes
/// (first and last), the way a vectorized compare ends: a loop of single bytes was 1.8% of a
/// pipelined request's CPU for one 10-byte path.
fn short_eq(a: &[u8], b: &[u8]) -> bool {
    fn ends<const N: usize>(x: &[u8]) -> ([u8; N], [u8; N]) {
        let first = x[..N].try_into().expect("N bytes");
        let last = x[x.len() - N..].try_into().expect("N bytes");
        (first, last)
    }
    if a.len() != b.len() {
        return false;
    }
    match a.len() {
        0 => true,
        1..4 => a.iter().zip(b).fold(0, |differ, (x, y)| differ | (x ^ y)) == 0,
        4..8 => ends::<4>(a) == ends::<4>(b),
        8..=16 => ends::<8>(a) == ends::<8>(b),
        _ => a == b,
    }
}

enum Miss {
    NotImplemented,
    NotFound,
    MethodNotAllowed(String),
}

/// Panics on a pattern no request could match as written (found in review: each was taken
/// silently, as a route that never matched or matched wrongly): a parameter that is not a whole
/// segment (`/files/{name}.txt` was the literal `{name}.txt`), a parameter without a name or
/// with the name of another, and a literal byte that a request path never holds as itself
/// (controls, space, non-ASCII, `?`, `#`): paths are matched as sent, still percent-encoded.
fn parse_pattern(pattern: &str) -> Vec<Segment> {
    let mut names: Vec<&str> = Vec::new();
    let segments: Vec<Segment> = pattern
        .split('/')
        .skip(1)
        .map(|s| {
            let param = s.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
            let (rest, name) = match param.map(|p| p.strip_prefix('*').ok_or(p)) {
                Some(Ok(name)) => (true, name),
                Some(Err(name)) => (false, name),
                None => {
                    assert!(
                        s.bytes()
                            .all(|b| b.is_ascii_graphic() && !b"?#{}".contains(&b)),
                        "a route's literal text is a path as requests send it (no parameter \
                         inside a segment, no space, '?', '#' or non-ASCII; escape with %XX): \
                         {pattern}"
                    );
                    return Segment::Literal(s.into());
                }
            };
            assert!(
                !name.is_empty() && !name.contains(['{', '}', '*']),
                "a route parameter has a name: {pattern}"
            );
            assert!(
                !names.contains(&name),
                "a route parameter's name is used once: {pattern}"
            );
            names.push(name);
            match rest {
                true => Segment::Rest(name.into()),
                false => Segment::Param(name.into()),
            }
        })
        .collect();
    if let Some(position) = segments.iter().position(|s| matches!(s, Segment::Rest(_))) {
        assert_eq!(
            position,
            segments.len() - 1,
            "{{*rest}} must be the last segment: {pattern}"
        );
    }
    segments
}

/// A pattern without parameters: an exact path.
fn is_exact(segments: &[Segment]) -> bool {
    segments.iter().all(|s| matches!(s, Segment::Literal(_)))
}

fn match_segments(segments: &[Segment], path: &str) -> Option<Params> {
    if !path.starts_with('/') {
        // `OPTIONS *` (the server as a whole): no route's, not even `/{*rest}`'s (found in
        // review: a root catch-all took it, with `*` for its path).
        return None;
    }
    let mut params = Vec::new();
    let mut parts = path.split('/').skip(1);
    let mut rest_start = 1;
    for segment in segments {
        if let Segment::Rest(name) = segment {
            let rest = path.get(rest_start..).unwrap_or("");
            params.push((name.clone(), rest.to_string()));
            return Some(params);
        }
        let part = parts.next()?;
        rest_start += part.len() + 1;
        match segment {
            Segment::Literal(literal) if &**literal == part => {}
            Segment::Param(name) if !part.is_empty() => {
                params.push((name.clone(), part.to_string()))
            }
            _ => return None,
        }
    }
    parts.next().is_none().then_some(params)
}

/// A router with its middleware chain, ready to serve; one per shard.
pub struct App {
    router: Router,
    middleware: Vec<(Phase, Rc<dyn Middleware>)>,
}

impl App {
    /// The direct handler that answers `method` and `path`, when the connection may call it
    /// itself: the route is direct and no middleware has to see the request. Found exactly as
    /// `serve` finds handlers, so the answer is the same either way.
    pub fn direct(&self, method: &str, path: &str) -> Option<&dyn DirectHandler> {
        if !self.middleware.is_empty() {
            return None;
        }
        self.router.find_exact(method, path)?.direct()
    }

    pub fn serve(self: &Rc<Self>, req: Request) -> Reply {
        if self.middleware.is_empty() {
            return self.router.dispatch(req);
        }
        Next {
            app: self.clone(),
            index: 0,
        }
        .run(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(patterns: &[&str], path: &str, expected: Option<(usize, &[(&str, &str)])>) {
        for (index, pattern) in patterns.iter().enumerate() {
            if let Some(params) = match_segments(&parse_pattern(pattern), path) {
                let params: Vec<(&str, &str)> =
                    params.iter().map(|(n, v)| (&**n, v.as_str())).collect();
                assert_eq!(Some((index, params.as_slice())), expected, "{path}");
                return;
            }
        }
        assert_eq!(None, expected, "{path}");
    }

    #[test]
    fn patterns() {
        let p = [
            "/users/{id}",
            "/users/{id}/posts/{post}",
            "/files/{*path}",
            "/",
            "/a/b",
        ];
        check(&p, "/users/7", Some((0, &[("id", "7")])));
        check(&p, "/users/", None);
        check(&p, "/users", None);
        check(
            &p,
            "/users/7/posts/9",
            Some((1, &[("id", "7"), ("post", "9")])),
        );
        check(&p, "/users/7/posts", None);
        check(&p, "/files/a/b/c", Some((2, &[("path", "a/b/c")])));
        check(&p, "/files/", Some((2, &[("path", "")])));
        check(&p, "/", Some((3, &[])));
        check(&p, "/a/b", Some((4, &[])));
        check(&p, "/a/b/", None);
        check(&p, "/nope", None);
    }
}

#[cfg(test)]
mod app_tests {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::*;
    use crate::http::{HeadLimits, parse_head};

    fn request(method: &str, path: &str) -> Request {
        request_with(method, path, "")
    }

    /// `fields`: extra header lines, each ending in CRLF.
    fn request_with(method: &str, path: &str, fields: &str) -> Request {
        let mut buf = BytesMut::from(
            format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{fields}\r\n").as_bytes(),
        );
        let limits = HeadLimits {
            head_bytes_max: 4096,
            header_count_max: 16,
            uri_bytes_max: 1024,
        };
        let head = parse_head(&mut buf, &limits).unwrap().unwrap();
        let ctx = RequestCtx {
            shard: 0,
            peer: None,
            client: None,
            tls: false,
            identity: None,
            extensions: Extensions::default(),
        };
        Request::new(head, Body::empty(), ctx)
    }

    fn serve(app: &Rc<App>, method: &str, path: &str) -> Response {
        futures_lite::future::block_on(app.serve(request(method, path)))
    }

    fn body(response: &Response) -> &[u8] {
        match &response.body {
            ResponseBody::Full(b) => b,
            _ => b"",
        }
    }

    /// `App::direct` gives a direct handler exactly where `serve` would call that handler, and
    /// never when middleware must see the request; `serve` gives the same answer through it.
    #[test]
    fn direct_routes_are_found_as_serve_finds_them() {
        fn pong(_: &RequestHead, answer: &mut Answer) {
            answer.text(200, "pong");
        }
        let plain = Router::new()
            .direct("GET", "/ping", pong)
            .post("/ping", |_req: Request| async { Response::new(201) })
            .get("/async", |_req: Request| async { Response::new(200) })
            .into_app();
        let found = |app: &Rc<App>, method: &str, path: &str| app.direct(method, path).is_some();
        assert!(found(&plain, "GET", "/ping"));
        assert!(
            found(&plain, "HEAD", "/ping"),
            "HEAD is GET without the body"
        );
        assert!(!found(&plain, "POST", "/ping"), "another method's handler");
        assert!(!found(&plain, "PUT", "/ping"), "405");
        assert!(!found(&plain, "GET", "/ping/"));
        assert!(!found(&plain, "GET", "/async"), "not direct");
        let response = serve(&plain, "GET", "/ping");
        assert_eq!((response.status, body(&response)), (200, &b"pong"[..]));
        assert_eq!(response.get_header("content-type").unwrap(), "text/plain");
        // A HEAD route that matches comes before GET's, as in `find`.
        let head_pattern = Router::new()
            .direct("GET", "/ping", pong)
            .route("HEAD", "/{any}", |_req: Request| async {
                Response::new(204)
            })
            .into_app();
        assert!(found(&head_pattern, "GET", "/ping"));
        assert!(!found(&head_pattern, "HEAD", "/ping"));
        assert_eq!(serve(&head_pattern, "HEAD", "/ping").status, 204);
        let with_middleware = Router::new()
            .direct("GET", "/ping", pong)
            .middleware(Phase::Request, |req: Request, next: Next| async move {
                next.run(req).await.header("x-seen", "yes")
            })
            .into_app();
        assert!(!found(&with_middleware, "GET", "/ping"));
        let response = serve(&with_middleware, "GET", "/ping");
        assert_eq!(body(&response), b"pong");
        assert_eq!(response.get_header("x-seen").unwrap(), "yes");
    }

    /// A mounted router's middleware runs for the requests under its prefix only (an embedding
    /// review: it ran for every request of the app); mounted at `/`, for all.
    #[test]
    fn mounted_middleware_runs_under_its_prefix() {
        let tag = |name: &'static str| {
            move |req: Request, next: Next| async move {
                let response = next.run(req).await;
                let before = response.get_header("x-seen").map(|v| v.to_vec());
                let mut value = before.unwrap_or_default();
                value.extend_from_slice(name.as_bytes());
                response.set_header("x-seen", value)
            }
        };
        let ok = |_req: Request| async { Response::new(200) };
        let api = Router::new()
            .get("/", ok)
            .get("/x", ok)
            .middleware(Phase::Request, tag("api"));
        let all = Router::new().middleware(Phase::Request, tag("all"));
        let app = Router::new()
            .get("/apix", ok)
            .get("/other", ok)
            .mount("/api", api)
            .mount("/", all)
            .into_app();
        let seen = |path: &str| {
            let response = serve(&app, "GET", path);
            let value = response.get_header("x-seen").map(|v| v.to_vec());
            String::from_utf8(value.unwrap_or_default()).unwrap()
        };
        // Inner first on the way out: `all` was added after `api`.
        assert_eq!(seen("/api/x"), "allapi");
        assert_eq!(seen("/api"), "allapi");
        assert_eq!(seen("/api/"), "allapi");
        assert_eq!(seen("/api/missing"), "allapi", "a miss under it too");
        assert_eq!(seen("/apix"), "all");
        assert_eq!(seen("/other"), "all");

        // Mounted inside a mounted router: its scope is both prefixes, whole from the root
        // (found in review: `/v1` was matched against `/api/v1/x`, and never ran).
        let v1 = Router::new()
            .get("/x", ok)
            .middleware(Phase::Request, tag("v1"));
        let api_api = Router::new()
            .get("/x", ok)
            .middleware(Phase::Request, tag("api-api"));
        let api = Router::new()
            .get("/x", ok)
            .middleware(Phase::Request, tag("api"))
            .mount("/v1", v1)
            .mount("/api", api_api);
        let app = Router::new().get("/v1/x", ok).mount("/api", api).into_app();
        let seen = |path: &str| {
            let response = serve(&app, "GET", path);
            let value = response.get_header("x-seen").map(|v| v.to_vec());
            String::from_utf8(value.unwrap_or_default()).unwrap()
        };
        assert_eq!(seen("/api/v1/x"), "v1api");
        assert_eq!(seen("/api/v1"), "v1api", "a miss under it too");
        assert_eq!(seen("/v1/x"), "", "not under /api");
        assert_eq!(seen("/api/x"), "api", "not under /api/api");
        assert_eq!(seen("/api/api/x"), "api-apiapi");
    }

    #[test]
    #[should_panic(expected = "a mount prefix is a path without parameters")]
    fn a_mount_prefix_has_no_parameters() {
        let _ = Router::new().mount("/users/{id}", Router::new());
    }

    #[test]
    #[should_panic(expected = "a direct route's path has no parameters")]
    fn a_direct_route_has_an_exact_path() {
        let _ = Router::new().direct("GET", "/users/{id}", |_: &RequestHead, _: &mut Answer| {});
    }

    #[test]
    fn routes_params_mounts_head_and_misses() {
        let api = Router::new()
            .get("/users/{id}", |req: Request| async move {
                Response::text(200, format!("user {}", req.param("id").unwrap()))
            })
            .get("/files/{*path}", |req: Request| async move {
                Response::text(200, req.param("path").unwrap().to_string())
            });
        let app = Router::new()
            .get("/", |_req: Request| async { Response::text(200, "root") })
            .post("/things", |_req: Request| async { Response::new(201) })
            .mount(
                "/api/",
                api.get("/", |_req: Request| async { Response::text(200, "api") }),
            )
            .mount(
                "/",
                Router::new().get("/top/{x}", |req: Request| async move {
                    Response::text(200, req.param("x").unwrap().to_string())
                }),
            )
            .into_app();
        assert_eq!(
            body(&serve(&app, "GET", "/top/7")),
            b"7",
            "a pattern mounted at /"
        );
        assert_eq!(body(&serve(&app, "GET", "/")), b"root");
        assert_eq!(body(&serve(&app, "GET", "/api/users/42")), b"user 42");
        assert_eq!(body(&serve(&app, "GET", "/api/files/a/b.txt")), b"a/b.txt");
        assert_eq!(
            body(&serve(&app, "HEAD", "/api/users/1")),
            b"user 1",
            "HEAD falls back to GET"
        );
        assert_eq!(serve(&app, "GET", "/api/users").status, 404);
        // A mounted `/` is the prefix, with or without its slash.
        assert_eq!(body(&serve(&app, "GET", "/api")), b"api");
        assert_eq!(body(&serve(&app, "GET", "/api/")), b"api");
        assert_eq!(serve(&app, "POST", "/things").status, 201);
        let miss = serve(&app, "GET", "/things");
        assert_eq!(miss.status, 405);
        assert_eq!(miss.get_header("allow").map(|v| &v[..]), Some(&b"POST"[..]));
        let miss = serve(&app, "DELETE", "/api/users/7");
        assert_eq!(miss.status, 405);
        assert_eq!(
            miss.get_header("allow").map(|v| &v[..]),
            Some(&b"GET, HEAD"[..])
        );
    }

    /// Each length of the word compare: equal to itself, unequal one byte longer or with any
    /// one byte changed.
    #[test]
    fn short_eq_is_eq() {
        let text = b"/plaintext/json/echo-0123456789abcdef";
        for len in 0..=24 {
            for start in [0, 3] {
                let a = &text[start..start + len];
                assert!(short_eq(a, a), "{len}");
                assert!(!short_eq(a, &text[start..start + len + 1]), "{len}");
                for at in 0..len {
                    let mut b = a.to_vec();
                    b[at] ^= 0x20;
                    assert!(!short_eq(a, &b), "{len} {at}");
                }
            }
        }
    }

    /// A pattern no request could match as written panics at start-up (found in review: each
    /// was taken silently, as a route that never matched or matched wrongly).
    #[test]
    fn malformed_patterns_panic_and_good_ones_do_not() {
        let ok = |_req: Request| async { Response::new(200) };
        for (pattern, message) in [
            ("/files/{name}.txt", "literal text"),
            ("/api/{v}x", "literal text"),
            ("/a}", "literal text"),
            ("/a b", "literal text"),
            ("/caf\u{e9}", "literal text"),
            ("/search?q", "literal text"),
            ("/a#b", "literal text"),
            ("/{}", "has a name"),
            ("/{*}", "has a name"),
            ("/{a*}", "has a name"),
            ("/a/{id}/{id}", "used once"),
            ("/a/{id}/{*id}", "used once"),
            ("/{*rest}/x", "last segment"),
        ] {
            let route = std::panic::catch_unwind(|| Router::new().get(pattern, ok));
            let error = route.err().unwrap_or_else(|| panic!("{pattern} was taken"));
            let text = error.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(text.contains(message), "{pattern}: {text}");
        }
        for pattern in [
            "/",
            "/a/{id}/b/{*rest}",
            "/a:b@c;d=e,f",
            "/%20x",
            "//x",
            "/{*path}",
        ] {
            let _ = Router::new().get(pattern, ok);
        }
        // A mount prefix is checked the same way.
        assert!(std::panic::catch_unwind(|| Router::new().mount("/a b", Router::new())).is_err());
    }

    /// `OPTIONS *` is the server as a whole: no route's, not even a root catch-all's (found in
    /// review: `/{*p}` took it with `*` for its path, and a GET one made it a 405).
    #[test]
    fn the_asterisk_target_is_no_routes() {
        let preflight = Router::new()
            .route("OPTIONS", "/{*p}", |_req: Request| async {
                Response::new(204)
            })
            .into_app();
        assert_eq!(serve(&preflight, "OPTIONS", "*").status, 404);
        assert_eq!(serve(&preflight, "OPTIONS", "/x").status, 204);
        let fallback = Router::new()
            .get("/{*p}", |_req: Request| async { Response::new(200) })
            .into_app();
        assert_eq!(serve(&fallback, "OPTIONS", "*").status, 404);
        assert_eq!(serve(&fallback, "GET", "/").status, 200);
    }

    #[test]
    #[should_panic(expected = "route method must be a token")]
    fn a_route_method_must_be_a_token() {
        let _ = Router::new().route("GE T", "/x", |_req: Request| async { Response::new(200) });
    }

    /// A method and path added twice keep the first route, exact or pattern, mounted or not.
    #[test]
    fn the_first_of_two_equal_routes_wins() {
        let answer =
            |text: &'static str| move |_req: Request| async move { Response::text(200, text) };
        let app = Router::new()
            .get("/health", answer("mine"))
            .get("/p/{x}", answer("first pattern"))
            .get("/p/{y}", answer("second pattern"))
            .get("/health", answer("second"))
            .mount("/", Router::new().get("/health", answer("built-in")))
            .into_app();
        assert_eq!(body(&serve(&app, "GET", "/health")), b"mine");
        assert_eq!(body(&serve(&app, "GET", "/p/1")), b"first pattern");
    }

    /// Exact routes are scanned up to EXACT_SCAN_MAX and hashed beyond: both find the same.
    #[test]
    fn exact_routes_by_scan_and_by_hash() {
        for count in [1, EXACT_SCAN_MAX, EXACT_SCAN_MAX + 1, 40] {
            let mut router = Router::new();
            for index in 0..count {
                let answer = format!("r{index}");
                router = router.get(&format!("/r/{index}"), move |_req: Request| {
                    let answer = answer.clone();
                    async move { Response::text(200, answer) }
                });
            }
            let app = router
                .post("/r/0", |_req: Request| async { Response::new(201) })
                .route("PURGE", "/r/0", |_req: Request| async {
                    Response::new(204)
                })
                .route("LOCK", "/p/{x}", |_req: Request| async {
                    Response::new(204)
                })
                .into_app();
            assert_eq!(
                app.router.exact_scan.is_some(),
                count <= EXACT_SCAN_MAX,
                "{count}"
            );
            for index in 0..count {
                let response = serve(&app, "GET", &format!("/r/{index}"));
                assert_eq!(body(&response), format!("r{index}").as_bytes(), "{count}");
            }
            assert_eq!(serve(&app, "POST", "/r/0").status, 201, "{count}");
            assert_eq!(serve(&app, "GET", "/r/").status, 404, "{count}");
            assert_eq!(
                serve(&app, "GET", &format!("/r/{count}")).status,
                404,
                "{count}"
            );
            assert_eq!(serve(&app, "GET", "/r/00").status, 404, "{count}");
            assert_eq!(serve(&app, "PUT", "/r/0").status, 405, "{count}");
            assert_eq!(serve(&app, "GE", "/r/0").status, 501, "{count}");
            assert_eq!(serve(&app, "get", "/r/0").status, 501, "{count}");
            assert_eq!(serve(&app, "GE", "/nothing").status, 501, "{count}");
            // A method a route has is known: elsewhere it is 405 or 404, like a defined one.
            assert_eq!(serve(&app, "LOCK", "/r/0").status, 405, "{count}");
            for method in ["PURGE", "LOCK"] {
                assert_eq!(serve(&app, method, "/nothing").status, 404, "{count}");
            }
            assert_eq!(serve(&app, "PURGE", "/r/0").status, 204, "{count}");
        }
    }

    #[test]
    fn middleware_runs_in_phase_order_then_insertion_order() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mark = |name: &'static str| {
            let log = log.clone();
            move |req: Request, next: Next| {
                let log = log.clone();
                async move {
                    log.borrow_mut().push(format!("{name} in"));
                    let response = next.run(req).await;
                    log.borrow_mut().push(format!("{name} out"));
                    response
                }
            }
        };
        let handler_log = log.clone();
        let app = Router::new()
            .get("/", move |_req: Request| {
                let log = handler_log.clone();
                async move {
                    log.borrow_mut().push("handler".to_string());
                    Response::new(204)
                }
            })
            .middleware(Phase::Handle, mark("handle"))
            .middleware(Phase::Authorize, mark("authorize"))
            .middleware(Phase::Request, mark("request-1"))
            .middleware(Phase::Authenticate, mark("authenticate"))
            .middleware(Phase::Request, mark("request-2"))
            .into_app();
        assert_eq!(serve(&app, "GET", "/").status, 204);
        let expected = [
            "request-1 in",
            "request-2 in",
            "authenticate in",
            "authorize in",
            "handle in",
            "handler",
            "handle out",
            "authorize out",
            "authenticate out",
            "request-2 out",
            "request-1 out",
        ];
        assert_eq!(*log.borrow(), expected);
    }

    /// A synchronous handler's answer (and a miss) is there without a poll; behind middleware
    /// it comes through the middleware's future like any other.
    #[test]
    fn sync_handlers_answer_at_once_and_under_middleware() {
        let plain = Router::new()
            .get(
                "/now",
                sync_handler(|req: Request| Response::text(200, req.path().to_string())),
            )
            .get("/later", |_req: Request| async { Response::new(202) })
            .into_app();
        let mut reply = plain.serve(request("GET", "/now"));
        assert_eq!(reply.ready_mut().map(|r| r.status), Some(200));
        assert_eq!(body(&futures_lite::future::block_on(reply)), b"/now");
        // HEAD finds the GET handler; a miss is answered at once too.
        assert!(plain.serve(request("HEAD", "/now")).ready_mut().is_some());
        let mut miss = plain.serve(request("GET", "/nowhere"));
        assert_eq!(miss.ready_mut().map(|r| r.status), Some(404));
        let mut later = plain.serve(request("GET", "/later"));
        assert!(later.ready_mut().is_none());
        assert_eq!(futures_lite::future::block_on(later).status, 202);

        let wrapped = Router::new()
            .get("/now", sync_handler(|_req: Request| Response::new(200)))
            .middleware(Phase::Handle, |req: Request, next: Next| async move {
                next.run(req).await.header("x-wrapped", "yes")
            })
            .into_app();
        let mut reply = wrapped.serve(request("GET", "/now"));
        assert!(reply.ready_mut().is_none());
        let response = futures_lite::future::block_on(reply);
        assert_eq!(response.status, 200);
        assert!(
            response
                .headers
                .iter()
                .any(|(name, value)| name == "x-wrapped" && &value[..] == b"yes")
        );
    }

    #[test]
    fn middleware_can_answer_without_the_handler_and_sees_identity() {
        let app = Router::new()
            .get("/secret", |req: Request| async move {
                Response::text(
                    200,
                    req.ctx
                        .identity
                        .as_ref()
                        .map(|i| i.user.clone())
                        .unwrap_or_default(),
                )
            })
            .middleware(
                Phase::Authenticate,
                |mut req: Request, next: Next| async move {
                    if req.header("x-user").is_some() {
                        req.ctx.identity = Some(Rc::new(Identity {
                            user: "ann".into(),
                            roles: vec![],
                            via: AuthMethod::Bearer,
                        }));
                    }
                    next.run(req).await
                },
            )
            .middleware(Phase::Authorize, |req: Request, next: Next| async move {
                if req.ctx.identity.is_none() {
                    Response::error(401, "who are you")
                } else {
                    next.run(req).await
                }
            })
            .into_app();
        assert_eq!(serve(&app, "GET", "/secret").status, 401);
        let response = futures_lite::future::block_on(app.serve(request_with(
            "GET",
            "/secret",
            "X-User: 1\r\n",
        )));
        assert_eq!(body(&response), b"ann");
    }
}
