//! Pure HTTP/1.1 response framing (RFC 9112 §6): finds where each response ends in a byte stream; never does IO and never keeps bodies.

use crate::limits;

/// What the load generator needs from a complete response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    pub status: u16,
    /// The server will close the connection after this response (RFC 9112 §9.6).
    pub close: bool,
    /// `Set-Cookie`s, read only when the framer collects cookies: (name, value), or (name,
    /// None) for one that deletes it (`Max-Age` of zero or less, or an `Expires` passed).
    pub cookies: Vec<(String, Option<String>)>,
}

/// The result of one `Framer::step`.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// One response ended after `consumed` bytes of the input.
    Done { consumed: usize, response: Response },
    /// All of the input up to `consumed` was used; more bytes are needed. The caller keeps
    /// `buf[consumed..]` and presents it again followed by new bytes.
    NeedMore { consumed: usize },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FrameError {
    Head(httparse::Error),
    HeadTooLarge,
    ContentLength,
    ChunkSize,
    ChunkEnd,
    /// 101 Switching Protocols: the connection stops being HTTP/1.1.
    Upgrade,
    /// The peer closed the connection in the middle of a response.
    Truncated,
    /// More than `INTERIM_RESPONSES_MAX` 1xx heads before one final response.
    TooManyInterim,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Head(e) => write!(f, "bad response head: {e}"),
            FrameError::HeadTooLarge => write!(
                f,
                "response head over {} bytes",
                limits::RESPONSE_HEAD_BYTES_MAX
            ),
            FrameError::ContentLength => write!(f, "bad Content-Length"),
            FrameError::ChunkSize => write!(f, "bad chunk size line"),
            FrameError::ChunkEnd => write!(f, "chunk data not followed by CRLF"),
            FrameError::Upgrade => write!(f, "unexpected 101 Switching Protocols"),
            FrameError::Truncated => write!(f, "connection closed inside a response"),
            FrameError::TooManyInterim => write!(
                f,
                "more than {} interim (1xx) responses before a final one",
                limits::INTERIM_RESPONSES_MAX
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Head,
    Body { remaining: u64 },
    ChunkSize,
    ChunkData { remaining: u64 },
    ChunkDataEnd,
    Trailers,
    UntilClose,
}

/// Framing state of one connection's response stream.
#[derive(Debug)]
pub struct Framer {
    state: State,
    current: Response,
    collect_cookies: bool,
    /// Interim (1xx) heads already skipped before the current response's final head.
    interim_responses: usize,
}

impl Framer {
    pub fn new(collect_cookies: bool) -> Framer {
        Framer {
            state: State::Head,
            current: Response::default(),
            collect_cookies,
            interim_responses: 0,
        }
    }

    /// Advances over `buf` until one response ends or the bytes run out. `request_is_head` says
    /// whether the request this response answers was a HEAD (its response has no body).
    pub fn step(&mut self, buf: &[u8], request_is_head: bool) -> Result<Step, FrameError> {
        let mut consumed = 0;
        loop {
            let rest = &buf[consumed..];
            let (used, done) = match self.state {
                State::Head => match self.head(rest, request_is_head)? {
                    Some(Head::Interim { used }) => (used, false),
                    Some(Head::Final { used }) => (used, self.state == State::Head),
                    None => return Ok(Step::NeedMore { consumed }),
                },
                State::Body { remaining } => {
                    let used = remaining.min(rest.len() as u64);
                    self.state = if used == remaining {
                        State::Head
                    } else {
                        State::Body {
                            remaining: remaining - used,
                        }
                    };
                    (used as usize, used == remaining)
                }
                State::ChunkSize => match chunk_size(rest)? {
                    Some((used, 0)) => {
                        self.state = State::Trailers;
                        (used, false)
                    }
                    Some((used, size)) => {
                        self.state = State::ChunkData { remaining: size };
                        (used, false)
                    }
                    None => return Ok(Step::NeedMore { consumed }),
                },
                State::ChunkData { remaining } => {
                    let used = remaining.min(rest.len() as u64);
                    self.state = if used == remaining {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData {
                            remaining: remaining - used,
                        }
                    };
                    (used as usize, false)
                }
                State::ChunkDataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        self.state = State::ChunkSize;
                        (2, false)
                    }
                    [] | [b'\r'] => return Ok(Step::NeedMore { consumed }),
                    _ => return Err(FrameError::ChunkEnd),
                },
                State::Trailers => {
                    match line_end(rest, limits::CHUNK_LINE_BYTES_MAX, FrameError::ChunkSize)? {
                        Some(0) => {
                            self.state = State::Head;
                            (2, true)
                        }
                        Some(len) => (len + 2, false),
                        None => return Ok(Step::NeedMore { consumed }),
                    }
                }
                State::UntilClose => {
                    return Ok(Step::NeedMore {
                        consumed: buf.len(),
                    });
                }
            };
            consumed += used;
            if done {
                return Ok(Step::Done {
                    consumed,
                    response: std::mem::take(&mut self.current),
                });
            }
            if consumed == buf.len()
                && !matches!(self.state, State::Head | State::ChunkSize | State::Trailers)
            {
                return Ok(Step::NeedMore { consumed });
            }
        }
    }

    /// Called when the peer closed the connection: a body delimited by the close ends here.
    /// `pending_bytes` are the bytes the caller still holds unframed (a partial head).
    pub fn finish(&mut self, pending_bytes: usize) -> Result<Option<Response>, FrameError> {
        match self.state {
            State::Head if pending_bytes == 0 && self.interim_responses == 0 => Ok(None),
            State::Head => Err(FrameError::Truncated),
            State::UntilClose => {
                self.state = State::Head;
                Ok(Some(std::mem::take(&mut self.current)))
            }
            _ => Err(FrameError::Truncated),
        }
    }

    /// Parses one head. An interim 1xx head (RFC 9110 §15.2) is used up on its own, so the
    /// caller drops its bytes and never parses it again; at most `INTERIM_RESPONSES_MAX` of them
    /// precede one final head, so a server cannot make one response endless. For a final head
    /// `self.state` is set to what follows; it stays `Head` when the response has no body.
    fn head(&mut self, buf: &[u8], request_is_head: bool) -> Result<Option<Head>, FrameError> {
        let mut inline = [httparse::EMPTY_HEADER; limits::RESPONSE_HEADERS_INLINE];
        let mut spilled;
        let mut parsed = httparse::Response::new(&mut inline);
        let mut outcome = parsed.parse(buf);
        if outcome == Err(httparse::Error::TooManyHeaders) {
            // A field per line at most, in a head of at most RESPONSE_HEAD_BYTES_MAX.
            let window = &buf[..buf.len().min(limits::RESPONSE_HEAD_BYTES_MAX)];
            spilled = vec![httparse::EMPTY_HEADER; memchr::memchr_iter(b'\n', window).count()];
            parsed = httparse::Response::new(&mut spilled);
            outcome = parsed.parse(window);
        }
        let used = match outcome.map_err(FrameError::Head)? {
            // Checked whole too: a head that came in one read passed up to the read buffer's
            // size, twice the bound (found in review).
            httparse::Status::Complete(used) if used > limits::RESPONSE_HEAD_BYTES_MAX => {
                return Err(FrameError::HeadTooLarge);
            }
            httparse::Status::Complete(used) => used,
            httparse::Status::Partial if buf.len() >= limits::RESPONSE_HEAD_BYTES_MAX => {
                return Err(FrameError::HeadTooLarge);
            }
            httparse::Status::Partial => return Ok(None),
        };
        let status = parsed.code.unwrap_or(0);
        if status == 101 {
            return Err(FrameError::Upgrade);
        }
        if (100..200).contains(&status) {
            self.interim_responses += 1;
            if self.interim_responses > limits::INTERIM_RESPONSES_MAX {
                return Err(FrameError::TooManyInterim);
            }
            return Ok(Some(Head::Interim { used }));
        }
        self.interim_responses = 0;
        let framing = Framing::of(&parsed, self.collect_cookies)?;
        self.current = Response {
            status,
            close: framing.close,
            cookies: framing.cookies,
        };
        let no_body = request_is_head || status == 204 || status == 304;
        self.state = match (no_body, framing.chunked, framing.content_length) {
            (true, _, _) => State::Head,
            (false, true, _) => State::ChunkSize,
            (false, false, Some(0)) => State::Head,
            (false, false, Some(length)) => State::Body { remaining: length },
            (false, false, None) => {
                self.current.close = true;
                State::UntilClose
            }
        };
        Ok(Some(Head::Final { used }))
    }
}

/// What `Framer::head` found: bytes used either way.
enum Head {
    Interim { used: usize },
    Final { used: usize },
}

/// How a response's headers delimit it.
struct Framing {
    close: bool,
    chunked: bool,
    content_length: Option<u64>,
    cookies: Vec<(String, Option<String>)>,
}

impl Framing {
    fn of(parsed: &httparse::Response, collect_cookies: bool) -> Result<Framing, FrameError> {
        let http10 = parsed.version == Some(0);
        let (mut close, mut keep_alive, mut chunked, mut encoded) = (false, false, false, false);
        let mut content_length = None;
        let mut cookies = Vec::new();
        for header in parsed.headers.iter() {
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                // `1*DIGIT` (RFC 9110 §8.6): Rust's parse also takes a leading '+'.
                let value = std::str::from_utf8(header.value)
                    .ok()
                    .map(str::trim)
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok());
                match (content_length, value) {
                    (_, None) => return Err(FrameError::ContentLength),
                    (Some(a), Some(b)) if a != b => return Err(FrameError::ContentLength),
                    (_, Some(v)) => content_length = Some(v),
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked only counts when it is the final coding (RFC 9112 §6.3 rule 4).
                encoded = true;
                chunked = tokens(header.value)
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
            } else if name.eq_ignore_ascii_case("connection") {
                for token in tokens(header.value) {
                    close |= token.eq_ignore_ascii_case("close");
                    keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                }
            } else if collect_cookies && name.eq_ignore_ascii_case("set-cookie") {
                cookies.extend(cookie_pair(header.value));
            }
        }
        Ok(Framing {
            close: close || (http10 && !keep_alive),
            chunked,
            // A Transfer-Encoding overrides Content-Length; without chunked last, the body runs
            // until the close (RFC 9112 §6.3 rules 3 and 4; found in review: the length was used).
            content_length: content_length.filter(|_| !encoded),
            cookies,
        })
    }
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(value)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The `name=value` before the first `;` of a Set-Cookie value (RFC 6265 §5.2), with None for
/// the value when the attributes delete the cookie: `Max-Age` of zero or less, or else an
/// `Expires` in the past (the usual ways to delete one, found in review: kept and sent on).
fn cookie_pair(value: &[u8]) -> Option<(String, Option<String>)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split(';');
    let (name, value) = parts.next()?.split_once('=')?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let (mut max_age, mut expires) = (None, None);
    for attribute in parts {
        let (key, text) = attribute.split_once('=').unwrap_or((attribute, ""));
        let (key, text) = (key.trim(), text.trim());
        if key.eq_ignore_ascii_case("max-age") {
            // RFC 6265 §5.2.2: an optional '-' and digits, or the attribute is ignored.
            let digits = text.strip_prefix('-').unwrap_or(text);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                max_age = Some(text.starts_with('-') || digits.bytes().all(|b| b == b'0'));
            }
        } else if key.eq_ignore_ascii_case("expires") {
            // Also the dashed form cookies use ("Thu, 01-Jan-1970 00:00:00 GMT").
            let date = httpdate::parse_http_date(text)
                .or_else(|_| httpdate::parse_http_date(&text.replace('-', " ")));
            if let Ok(date) = date {
                expires = Some(date <= std::time::SystemTime::now());
            }
        }
    }
    let deleted = max_age.or(expires).unwrap_or(false);
    Some((
        name.to_string(),
        (!deleted).then(|| value.trim().to_string()),
    ))
}

/// Length of the line before CRLF, if the CRLF is in `buf`.
fn line_end(buf: &[u8], max: usize, error: FrameError) -> Result<Option<usize>, FrameError> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(len) if len <= max => Ok(Some(len)),
        Some(_) => Err(error),
        None if buf.len() > max => Err(error),
        None => Ok(None),
    }
}

/// Parses `HEX[;ext]CRLF`; returns (bytes used, chunk size).
fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, FrameError> {
    let Some(len) = line_end(buf, limits::CHUNK_LINE_BYTES_MAX, FrameError::ChunkSize)? else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..len]).map_err(|_| FrameError::ChunkSize)?;
    let hex = line.split(';').next().unwrap_or("").trim();
    // HEXDIG only: `from_str_radix` also takes a leading '+'.
    if hex.is_empty() || hex.len() > 15 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FrameError::ChunkSize);
    }
    let size = u64::from_str_radix(hex, 16).map_err(|_| FrameError::ChunkSize)?;
    Ok(Some((len + 2, size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `piece` bytes and returns (status, close) per response, or the error.
    fn frame(
        input: &[u8],
        piece: usize,
        head: bool,
        eof: bool,
    ) -> Result<Vec<(u16, bool)>, FrameError> {
        let mut framer = Framer::new(false);
        let mut pending: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            pending.extend_from_slice(chunk);
            let mut pos = 0;
            loop {
                match framer.step(&pending[pos..], head)? {
                    Step::Done { consumed, response } => {
                        pos += consumed;
                        out.push((response.status, response.close));
                    }
                    Step::NeedMore { consumed } => {
                        pos += consumed;
                        break;
                    }
                }
            }
            pending.drain(..pos);
        }
        if eof && let Some(r) = framer.finish(pending.len())? {
            out.push((r.status, r.close));
        }
        Ok(out)
    }

    fn check(input: &str, head: bool, eof: bool, expected: Result<Vec<(u16, bool)>, FrameError>) {
        for piece in [1, 2, 3, 7, input.len()] {
            assert_eq!(
                frame(input.as_bytes(), piece, head, eof),
                expected,
                "piece {piece}: {input:?}"
            );
        }
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn content_length() {
        check(OK, false, false, Ok(vec![(200, false)]));
        check(&OK.repeat(3), false, false, Ok(vec![(200, false); 3]));
        check(
            "HTTP/1.1 404 N\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
            Ok(vec![(404, false)]),
        );
        check(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
            false,
            false,
            Ok(vec![]),
        );
        check(
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            false,
            false,
            Err(FrameError::ContentLength),
        );
        check(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false,
            false,
            Err(FrameError::ContentLength),
        );
        check(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
            false,
            false,
            Ok(vec![(200, false)]),
        );
    }

    #[test]
    fn chunked() {
        let body = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\n\r\n";
        check(body, false, false, Ok(vec![(200, false)]));
        check(
            &format!("{body}{OK}"),
            false,
            false,
            Ok(vec![(200, false); 2]),
        );
        let trailers = "HTTP/1.1 201 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        check(trailers, false, false, Ok(vec![(201, false)]));
        check(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            false,
            false,
            Err(FrameError::ChunkSize),
        );
        check(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab",
            false,
            false,
            Err(FrameError::ChunkEnd),
        );
        check(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            false,
            true,
            Err(FrameError::Truncated),
        );
        // Transfer-Encoding overrides Content-Length: chunked wins over it, and a coding other
        // than chunked last runs the body to the close, whatever the length says.
        let both = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        check(both, false, false, Ok(vec![(200, false)]));
        let gzip = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nmore than two bytes";
        check(gzip, false, true, Ok(vec![(200, true)]));
        check(gzip, false, false, Ok(vec![]));
    }

    #[test]
    fn close_and_no_body() {
        check(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
            false,
            false,
            Ok(vec![(200, true)]),
        );
        check(
            "HTTP/1.1 200 OK\r\n\r\nuntil the end",
            false,
            true,
            Ok(vec![(200, true)]),
        );
        check(
            "HTTP/1.1 200 OK\r\n\r\nuntil the end",
            false,
            false,
            Ok(vec![]),
        );
        check(
            "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
            Ok(vec![(200, true)]),
        );
        check(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
            Ok(vec![(200, false)]),
        );
        check(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            true,
            false,
            Ok(vec![(200, false)]),
        );
        check(
            "HTTP/1.1 204 N\r\n\r\nHTTP/1.1 304 N\r\n\r\n",
            false,
            false,
            Ok(vec![(204, false), (304, false)]),
        );
        check(
            &format!("HTTP/1.1 100 Continue\r\n\r\n{OK}"),
            false,
            false,
            Ok(vec![(200, false)]),
        );
        check(
            "HTTP/1.1 101 Up\r\n\r\n",
            false,
            false,
            Err(FrameError::Upgrade),
        );
        check(
            "garbage\r\n\r\n",
            false,
            false,
            Err(FrameError::Head(httparse::Error::Version)),
        );
        check(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe",
            false,
            true,
            Err(FrameError::Truncated),
        );
    }

    #[test]
    fn limits_at_the_edge() {
        let filler = |n: usize| {
            format!(
                "HTTP/1.1 200 OK\r\nX: {}\r\nContent-Length: 0\r\n\r\n",
                "a".repeat(n)
            )
        };
        let fixed = filler(0).len();
        let fits = filler(limits::RESPONSE_HEAD_BYTES_MAX - fixed);
        assert_eq!(
            frame(fits.as_bytes(), fits.len(), false, false),
            Ok(vec![(200, false)])
        );
        let partial = filler(limits::RESPONSE_HEAD_BYTES_MAX);
        let cut = &partial.as_bytes()[..limits::RESPONSE_HEAD_BYTES_MAX];
        assert_eq!(
            frame(cut, cut.len(), false, false),
            Err(FrameError::HeadTooLarge)
        );
        let cut = &partial.as_bytes()[..limits::RESPONSE_HEAD_BYTES_MAX - 1];
        assert_eq!(frame(cut, cut.len(), false, false), Ok(vec![]));
    }

    /// Regression (review item 1): a thousand 100 Continue heads overflowed the stack, one
    /// recursion each; the bound makes one response's interim heads finite.
    #[test]
    fn interim_responses_at_the_bound_and_one_past_it() {
        let interim = "HTTP/1.1 100 Continue\r\n\r\n";
        let max = limits::INTERIM_RESPONSES_MAX;
        let at = format!("{}{OK}", interim.repeat(max));
        assert_eq!(
            frame(at.as_bytes(), at.len(), false, false),
            Ok(vec![(200, false)])
        );
        assert_eq!(
            frame(at.as_bytes(), 5, false, false),
            Ok(vec![(200, false)])
        );
        // The bound is per response: the next response may have as many again.
        let twice = at.repeat(2);
        assert_eq!(
            frame(twice.as_bytes(), 13, false, false),
            Ok(vec![(200, false); 2])
        );
        let past = format!("{}{OK}", interim.repeat(max + 1));
        assert_eq!(
            frame(past.as_bytes(), past.len(), false, false),
            Err(FrameError::TooManyInterim)
        );
        let many = format!("{}{OK}", interim.repeat(100_000));
        assert_eq!(
            frame(many.as_bytes(), many.len(), false, false),
            Err(FrameError::TooManyInterim)
        );
    }

    #[test]
    fn close_inside_a_head_is_truncated() {
        check(
            "HTTP/1.1 200 OK\r\nContent-Le",
            false,
            true,
            Err(FrameError::Truncated),
        );
        check(
            "HTTP/1.1 100 Continue\r\n\r\n",
            false,
            true,
            Err(FrameError::Truncated),
        );
        check("", false, true, Ok(vec![]));
    }

    #[test]
    fn cookies() {
        let mut framer = Framer::new(true);
        let input = b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=abc; Path=/; HttpOnly\r\nSet-Cookie: x=1\r\nContent-Length: 0\r\n\r\n";
        let Ok(Step::Done { response, .. }) = framer.step(input, false) else {
            panic!()
        };
        assert_eq!(
            response.cookies,
            vec![
                ("sid".into(), Some("abc".into())),
                ("x".into(), Some("1".into()))
            ]
        );
    }

    #[test]
    fn cookie_deletions() {
        let kept = |v: &str| Some(v.to_string());
        for (header, expected) in [
            ("a=1; Max-Age=0", None),
            ("a=1; max-age=-5", None),
            ("a=1; Max-Age=60", kept("1")),
            ("a=1; Max-Age=x", kept("1")),
            ("a=; Expires=Thu, 01 Jan 1970 00:00:00 GMT", None),
            ("a=; expires=Thu, 01-Jan-1970 00:00:00 GMT", None),
            ("a=1; Expires=Fri, 01 Jan 2100 00:00:00 GMT", kept("1")),
            // Max-Age wins over Expires (RFC 6265 §5.3 step 3).
            (
                "a=1; Max-Age=60; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
                kept("1"),
            ),
            ("a=1; Expires=garbage", kept("1")),
        ] {
            assert_eq!(
                cookie_pair(header.as_bytes()),
                Some(("a".to_string(), expected)),
                "{header}"
            );
        }
    }

    /// Past the inline fields a head is parsed again with room for all; a head's bytes, not
    /// its field count, are the bound, however the bytes arrive.
    #[test]
    fn many_fields_and_the_head_bound() {
        let head = |fields: usize, pad: usize| {
            let mut head = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..fields {
                head.push_str(&format!("X-{i}: v\r\n"));
            }
            head.push_str(&format!("X-Pad: {}\r\n", "p".repeat(pad)));
            head.push_str("Content-Length: 0\r\n\r\n");
            head.into_bytes()
        };
        let mut framer = Framer::new(false);
        let many = head(500, 0);
        assert!(
            matches!(framer.step(&many, false), Ok(Step::Done { consumed, .. }) if consumed == many.len())
        );
        let big = head(1, limits::RESPONSE_HEAD_BYTES_MAX);
        assert!(big.len() < limits::READ_BUFFER_BYTES);
        assert_eq!(
            Framer::new(false).step(&big, false),
            Err(FrameError::HeadTooLarge)
        );
    }

    #[test]
    fn signed_lengths_and_sizes_are_errors() {
        let mut framer = Framer::new(false);
        let plus = b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello";
        assert_eq!(framer.step(plus, false), Err(FrameError::ContentLength));
        let mut framer = Framer::new(false);
        let chunk =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n";
        let mut outcome = framer.step(chunk, false);
        let mut pos = 0;
        while let Ok(Step::NeedMore { consumed }) = outcome {
            pos += consumed;
            outcome = framer.step(&chunk[pos..], false);
        }
        assert_eq!(outcome, Err(FrameError::ChunkSize));
    }
}
