//! What a handler receives: the parsed head, path parameters, the body as a stream of chunks, and the request context; never reads a socket itself.

use std::any::{Any, TypeId};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

use crate::config::limits::BODY_COPIED_BELOW_BYTES;
use crate::http::{HttpError, RequestHead};

/// Why a request body could not be read to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// The client broke the framing or a limit (400, 413, ...): the connection cannot continue.
    Protocol(HttpError),
    /// No body bytes arrived within the body timeout (408).
    Timeout,
    /// The client closed the connection or a read failed.
    Closed,
    /// The shard held more than `--max-held-bytes` for clients that keep it waiting, and this
    /// body's client was among the slowest (503); the connection closes.
    Overloaded,
}

impl BodyError {
    pub fn status(&self) -> u16 {
        match self {
            BodyError::Protocol(e) => e.status(),
            BodyError::Timeout => 408,
            BodyError::Closed => 400,
            BodyError::Overloaded => 503,
        }
    }
}

/// Where body chunks come from: implemented by the connection, which owns the socket.
pub trait BodySource {
    /// The next decoded chunk; `None` after the last one.
    fn poll_chunk(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>>;

    /// The handler holds `bytes` of this body so far (`Body::bytes`): the server counts them
    /// against its bound on what it holds for clients that keep it waiting.
    fn holding(&self, _bytes: usize) {}
}

/// A request body, consumed as a stream of chunks; nothing is buffered unless the handler asks.
pub struct Body {
    source: Option<Rc<dyn BodySource>>,
}

impl Body {
    pub fn empty() -> Body {
        Body { source: None }
    }

    pub fn from_source(source: Rc<dyn BodySource>) -> Body {
        Body {
            source: Some(source),
        }
    }

    /// The next chunk of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, BodyError>> {
        let source = self.source.clone()?;
        let next = std::future::poll_fn(|cx| source.poll_chunk(cx)).await;
        if next.is_none() {
            self.source = None;
        }
        next
    }

    /// Reads the whole body into memory (bounded by the server's body limit, enforced while decoding).
    pub async fn bytes(&mut self) -> Result<Bytes, BodyError> {
        // One chunk (the common case) is returned as is if big, copied out of its read buffer if
        // small (`BODY_COPIED_BELOW_BYTES`); more are joined. The size bound is the body
        // decoder's (`--max-body`), which fails the chunk that crosses it.
        // What the server counts as held goes with this read, however it ends: a handler may
        // drop it half-way (a timeout of its own).
        struct Held(Option<Rc<dyn BodySource>>);
        impl Drop for Held {
            fn drop(&mut self) {
                if let Some(source) = &self.0 {
                    source.holding(0);
                }
            }
        }
        let _held = Held(self.source.clone());
        let Some(first) = self.chunk().await.transpose()? else {
            return Ok(Bytes::new());
        };
        self.holding(first.len());
        let Some(second) = self.chunk().await.transpose()? else {
            return Ok(match first.len() < BODY_COPIED_BELOW_BYTES {
                true => Bytes::copy_from_slice(&first),
                false => first,
            });
        };
        let mut all = BytesMut::from(&first[..]);
        all.extend_from_slice(&second);
        self.holding(all.capacity());
        while let Some(chunk) = self.chunk().await {
            all.extend_from_slice(&chunk?);
            self.holding(all.capacity());
        }
        Ok(all.freeze())
    }

    fn holding(&self, bytes: usize) {
        if let Some(source) = &self.source {
            source.holding(bytes);
        }
    }

    /// The body as a `Stream` of chunks, for handing to a streaming response.
    pub fn into_stream(self) -> impl futures_lite::Stream<Item = Result<Bytes, BodyError>> {
        futures_lite::stream::unfold(self, |mut body| async move {
            body.chunk().await.map(|c| (c, body))
        })
    }
}

/// Who the client is, once an authentication middleware has established it. Every later
/// middleware and the handler see it in `ctx.identity`; a proxy will forward it as headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user name, or the API token's name for `Bearer`.
    pub user: String,
    pub roles: Vec<String>,
    pub via: AuthMethod,
}

impl Identity {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// How the identity was proven: decides CSRF (only cookie sessions need it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// The session cookie of a login.
    Session,
    /// `Authorization: Basic` with a user's password.
    Basic,
    /// `Authorization: Bearer` with an API token from the config.
    Bearer,
}

/// Typed values that middleware attaches to a request for later phases and the handler. A
/// request carries a few at most: a list (empty: no allocation, 24 bytes) beats a hash map.
#[derive(Default)]
pub struct Extensions {
    values: Vec<(TypeId, Box<dyn Any>)>,
}

impl Extensions {
    pub fn insert<T: 'static>(&mut self, value: T) -> Option<T> {
        let old = self.remove::<T>();
        self.values.push((TypeId::of::<T>(), Box::new(value)));
        old
    }

    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.values
            .iter()
            .find(|(id, _)| *id == TypeId::of::<T>())
            .and_then(|(_, b)| b.downcast_ref())
    }

    pub fn remove<T: 'static>(&mut self) -> Option<T> {
        let index = self
            .values
            .iter()
            .position(|(id, _)| *id == TypeId::of::<T>())?;
        self.values.swap_remove(index).1.downcast().ok().map(|b| *b)
    }
}

/// Facts about the request that are not in its bytes.
pub struct RequestCtx {
    /// Index of the shard serving the request.
    pub shard: usize,
    /// The TCP peer: the client, or the proxy that forwarded the request.
    pub peer: Option<SocketAddr>,
    /// The client's address: the peer's, or behind a trusted proxy (`--forwarded-allow-ips`)
    /// the one its `X-Forwarded-For` names (`http::TrustedProxies::client`). The login limits
    /// count by it.
    pub client: Option<IpAddr>,
    /// The client used TLS: to this server, or to a trusted proxy that says so
    /// (`X-Forwarded-Proto: https`). Session cookies get `Secure`, and the CSRF check expects
    /// an `https` origin.
    pub tls: bool,
    /// Set by an authentication middleware; every later phase and the handler see it.
    pub identity: Option<Rc<Identity>>,
    pub extensions: Extensions,
}

/// One HTTP request as a handler sees it.
pub struct Request {
    pub head: RequestHead,
    pub body: Body,
    pub ctx: RequestCtx,
    params: Vec<(Rc<str>, String)>,
}

impl Request {
    pub fn new(head: RequestHead, body: Body, ctx: RequestCtx) -> Request {
        Request {
            head,
            body,
            ctx,
            params: Vec::new(),
        }
    }

    pub fn method(&self) -> &str {
        self.head.method()
    }

    pub fn path(&self) -> &str {
        self.head.path()
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.header(name)
    }

    /// The host the request names: an absolute-form target's authority, else Host (RFC 9112
    /// §3.2.2).
    pub fn host(&self) -> Option<&[u8]> {
        self.head.host()
    }

    /// A path parameter captured by the route pattern (`/users/{id}` -> `param("id")`).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn set_params(&mut self, params: Vec<(Rc<str>, String)>) {
        self.params = params;
    }
}
