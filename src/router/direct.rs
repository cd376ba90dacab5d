//! Direct handlers: synchronous answers made from the borrowed request head, which the connection encodes straight into its write buffer, with no `Request`, `Response` or future built.
//!
//! For the hottest small routes (a health probe, a fixed document, TechEmpower's /plaintext
//! and /json): a pipelined `GET /plaintext` cost ~190 ns of request path through a handler
//! against ~100 ns direct (bench/RESULTS.md, run W). The price is the narrow shape: an exact
//! path, no body, no await, and an answer that is a status, a content type and a body.
//!
//! A direct route still behaves like any other route: HEAD gets it without the body, and an
//! app with middleware, a redirect listener or a request with a body serve it through the
//! ordinary path (the handler is then called by an adapter, with the same answer).

use bytes::Bytes;
use serde::Serialize;

use super::{Reply, Request, Response};
use crate::http::RequestHead;

/// A body buffer kept for the next direct answer only up to this capacity: a large answer's
/// buffer is freed, not held by the shard.
pub const ANSWER_BUFFER_KEEP_BYTES: usize = 16 * 1024;

/// Answers a request of a direct route (`Router::direct`) from its head alone.
pub trait DirectHandler: 'static {
    fn answer(&self, head: &RequestHead, answer: &mut Answer);
}

impl<F> DirectHandler for F
where
    F: Fn(&RequestHead, &mut Answer) + 'static,
{
    fn answer(&self, head: &RequestHead, answer: &mut Answer) {
        self(head, answer)
    }
}

/// What a direct handler answers: 200 and `text/plain` with an empty body until it says
/// otherwise. The server adds Date, Server, Content-Length and Connection, as for any answer.
pub struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Answer {
    /// An answer whose body is written into `buffer` (emptied first): the connection passes the
    /// shard's, so an answer allocates nothing. (Also how a test calls a direct handler.)
    pub fn new(mut buffer: Vec<u8>) -> Answer {
        buffer.clear();
        Answer {
            status: 200,
            content_type: "text/plain",
            body: buffer,
        }
    }

    pub fn set_status(&mut self, status: u16) -> &mut Answer {
        self.status = status;
        self
    }

    pub fn set_content_type(&mut self, content_type: &'static str) -> &mut Answer {
        self.content_type = content_type;
        self
    }

    /// The body so far, to append to (`io::Write` works on it).
    pub fn body(&mut self) -> &mut Vec<u8> {
        &mut self.body
    }

    /// `status`, `text/plain` and `body`, replacing what the answer held.
    pub fn text(&mut self, status: u16, body: impl AsRef<[u8]>) {
        self.status = status;
        self.content_type = "text/plain";
        self.body.clear();
        self.body.extend_from_slice(body.as_ref());
    }

    /// `status`, `application/json` and `value` serialized, replacing what the answer held;
    /// a value that cannot be serialized is a 500, as with `Response::json`.
    pub fn json<T: Serialize + ?Sized>(&mut self, status: u16, value: &T) {
        self.body.clear();
        match serde_json::to_writer(&mut self.body, value) {
            Ok(()) => {
                self.status = status;
                self.content_type = "application/json";
            }
            Err(_) => self.text(500, "cannot encode the response as JSON\n"),
        }
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn content_type(&self) -> &'static str {
        self.content_type
    }

    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// The body buffer back, empty, for the next answer; None when it grew past
    /// `ANSWER_BUFFER_KEEP_BYTES`.
    pub fn into_buffer(mut self) -> Option<Vec<u8>> {
        self.body.clear();
        (self.body.capacity() <= ANSWER_BUFFER_KEEP_BYTES).then_some(self.body)
    }

    /// The same answer as an ordinary `Response`.
    pub(crate) fn into_response(self) -> Response {
        Response::bytes(self.status, self.content_type, Bytes::from(self.body))
    }
}

/// A direct handler as a route's handler: called directly by the connection when it may be
/// (`App::direct`), and through `Handler::call` otherwise.
pub(crate) struct Direct<H>(pub(crate) H);

impl<H: DirectHandler> super::Handler for Direct<H> {
    fn call(&self, req: Request) -> Reply {
        let mut answer = Answer::new(Vec::new());
        self.0.answer(&req.head, &mut answer);
        Reply::ready(answer.into_response())
    }

    fn direct(&self) -> Option<&dyn DirectHandler> {
        Some(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_starts_as_an_empty_200_text_and_is_replaced_whole() {
        let mut answer = Answer::new(b"left over".to_vec());
        assert_eq!(
            (answer.status(), answer.content_type(), answer.body_bytes()),
            (200, "text/plain", &b""[..])
        );
        answer.body().extend_from_slice(b"partial");
        answer.json(201, &serde_json::json!({"a": 1}));
        assert_eq!(
            (answer.status(), answer.content_type(), answer.body_bytes()),
            (201, "application/json", &br#"{"a":1}"#[..])
        );
        answer.text(404, "gone\n");
        assert_eq!(
            (answer.status(), answer.content_type(), answer.body_bytes()),
            (404, "text/plain", &b"gone\n"[..])
        );
    }

    #[test]
    fn a_value_that_cannot_be_json_is_a_500() {
        let mut answer = Answer::new(Vec::new());
        let map = std::collections::BTreeMap::from([((1, 2), "tuple keys are not JSON")]);
        answer.json(200, &map);
        assert_eq!(answer.status(), 500);
        assert_eq!(answer.body_bytes(), b"cannot encode the response as JSON\n");
    }

    #[test]
    fn the_buffer_is_kept_only_up_to_its_bound() {
        let mut answer = Answer::new(Vec::new());
        answer.body().resize(ANSWER_BUFFER_KEEP_BYTES, b'x');
        let kept = answer.into_buffer().expect("at the bound: kept");
        assert!(kept.is_empty());
        let mut answer = Answer::new(kept);
        answer.body().resize(ANSWER_BUFFER_KEEP_BYTES + 1, b'x');
        assert!(answer.into_buffer().is_none(), "past the bound: freed");
    }
}
