//! What a handler returns: status, headers and a body that is empty, whole, or a stream of chunks.

use std::borrow::Cow;
use std::pin::Pin;

use bytes::Bytes;
use futures_lite::Stream;
use serde::Serialize;

use super::request::BodyError;

/// A streamed body: chunks until `None`; an `Err` aborts the response and closes the connection.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>>>>;

pub enum ResponseBody {
    Empty,
    Full(Bytes),
    /// Sent with chunked transfer coding (HTTP/1.1) or until close (HTTP/1.0).
    Stream(BodyStream),
}

/// Headers the server writes itself; a handler's copies are dropped when encoding.
pub const SERVER_MANAGED_HEADERS: [&str; 5] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "date",
    "server",
];

/// Response headers, inline up to 4: most responses carry one or two (no allocation for them).
/// Two inline (a content type and one more: a cookie, an ETag); a response is moved through the
/// handler's future and the connection's, so its size is paid on every request.
pub type Headers = smallvec::SmallVec<[(Cow<'static, str>, Bytes); 2]>;

pub struct Response {
    pub status: u16,
    pub headers: Headers,
    pub body: ResponseBody,
    /// Close the connection after this response.
    pub close: bool,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Headers::new(),
            body: ResponseBody::Empty,
            close: false,
        }
    }

    pub fn bytes(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Response {
        // Built in place, not through `header` and `with_body`: each of those moves the whole
        // response, and this is every text and JSON answer's path.
        let mut headers = Headers::new();
        headers.push((
            Cow::Borrowed("Content-Type"),
            Bytes::from_static(content_type.as_bytes()),
        ));
        Response {
            status,
            headers,
            body: ResponseBody::Full(body.into()),
            close: false,
        }
    }

    pub fn text(status: u16, body: impl Into<Bytes>) -> Response {
        Response::bytes(status, "text/plain", body)
    }

    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::bytes(status, "application/json", body),
            Err(_) => Response::text(500, "cannot encode the response as JSON\n"),
        }
    }

    pub fn stream(
        status: u16,
        content_type: impl Into<Bytes>,
        body: impl Stream<Item = Result<Bytes, BodyError>> + 'static,
    ) -> Response {
        let mut response = Response::new(status).header("Content-Type", content_type);
        response.body = ResponseBody::Stream(Box::pin(body));
        response
    }

    /// A plain-text answer of `message` and a newline (set `close` on it to close the connection
    /// after it).
    pub fn error(status: u16, message: &str) -> Response {
        let mut body = String::with_capacity(message.len() + 1);
        body.push_str(message);
        body.push('\n');
        Response::text(status, body)
    }

    /// Adds a field; one of the same name stays (`Set-Cookie`, several `Link`s).
    pub fn header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Bytes>,
    ) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets a field, replacing those of the same name (ASCII case-insensitive):
    /// `Response::text(200, page).set_header("Content-Type", "text/html")` sends one
    /// `Content-Type` (found in review: `header` sent both).
    pub fn set_header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Bytes>,
    ) -> Response {
        let name = name.into();
        self.headers
            .retain(|(old, _)| !old.eq_ignore_ascii_case(&name));
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Response {
        self.body = ResponseBody::Full(body.into());
        self
    }

    pub fn get_header(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

impl From<BodyError> for Response {
    fn from(e: BodyError) -> Response {
        let message = match e {
            BodyError::Protocol(e) => e.message(),
            BodyError::Timeout => "request body timed out",
            BodyError::Closed => "request body incomplete",
            BodyError::Overloaded => "server busy: it holds too much for waiting clients",
        };
        let mut response = Response::error(e.status(), message);
        response.close = true;
        response
    }
}

#[cfg(test)]
mod tests {
    use super::Response;

    #[test]
    fn set_header_replaces_and_header_adds() {
        let response = Response::text(200, "<p>hi</p>")
            .set_header("content-type", "text/html")
            .header("Set-Cookie", "a=1")
            .header("Set-Cookie", "b=2");
        let values = |name: &str| -> Vec<&[u8]> {
            let fields = response.headers.iter();
            fields
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| &v[..])
                .collect()
        };
        assert_eq!(values("Content-Type"), [&b"text/html"[..]]);
        assert_eq!(values("set-cookie"), [&b"a=1"[..], &b"b=2"[..]]);
    }
}
