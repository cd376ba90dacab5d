//! Request-head parsing and the smuggling rules of RFC 9110/9112: bytes and limits in, a
//! `RequestHead` or an `HttpError` out; never does IO, never buffers, never routes.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};

use crate::http::{
    BodyFraming, HEAD_BYTES_CEILING, HEADER_COUNT_CEILING, HeadLimits, HttpError, Version,
};

/// Empty lines (CRLF) ignored before a request line. RFC 9112 §2.2 asks for at least one (some
/// clients send a stray CRLF after a POST body); the bound keeps a stream of CRLFs from being
/// an endless request.
pub const EMPTY_LINES_BEFORE_REQUEST_MAX: usize = 4;

/// A byte range into `RequestHead::bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    // u16: a head is at most HEAD_BYTES_CEILING bytes. Small spans keep `RequestHead` (which is
    // moved through the router and the handler's future) at half the size.
    start: u16,
    end: u16,
}

impl Span {
    const EMPTY: Span = Span { start: 0, end: 0 };

    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// One parsed request head. Owns the head bytes (split off the read buffer without copying)
/// and indexes into them.
#[derive(Clone, Debug)]
pub struct RequestHead {
    bytes: Bytes,
    method: Span,
    target: Span,
    /// Empty only for an absolute-form target without a path, which means "/".
    path: Span,
    query: Option<Span>,
    /// Name and value of each field. Four inline (a benchmark client sends one or two fields,
    /// curl three): a head is moved several times on its way into its handler's future, and
    /// 16 inline made it 208 bytes instead of 112. A browser's head (10-20 fields) takes one
    /// allocation. Without an index, finding a field in a 760-byte browser head cost 157 ns
    /// against 9 (bench/RESULTS.md, run P).
    fields: smallvec::SmallVec<[(Span, Span); 4]>,
    version: Version,
    framing: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
}

impl RequestHead {
    pub fn method(&self) -> &str {
        self.text(self.method)
    }

    /// The raw request-target, as sent.
    pub fn target(&self) -> &str {
        self.text(self.target)
    }

    /// The target before '?'; for absolute-form the path after the authority ("/" if none).
    pub fn path(&self) -> &str {
        if self.path == Span::EMPTY {
            "/"
        } else {
            self.text(self.path)
        }
    }

    /// The authority of an absolute-form target (`http://authority/path`), which an origin
    /// server uses instead of Host (RFC 9112 §3.2.2); None for any other form. Validated by the
    /// parser with Host's rules.
    pub fn authority(&self) -> Option<&str> {
        let target = self.target();
        if target.starts_with('/') {
            return None;
        }
        split_absolute_form(target).map(|(_, authority)| &target[authority])
    }

    /// The host the request names: an absolute-form target's authority, else the Host field
    /// (RFC 9112 §3.2.2: a server MUST ignore Host when the target has an authority).
    pub fn host(&self) -> Option<&[u8]> {
        match self.authority() {
            Some(authority) => Some(authority.as_bytes()),
            None => self.header("host"),
        }
    }

    /// The target after the first '?', if there is one.
    pub fn query(&self) -> Option<&str> {
        self.query.map(|span| self.text(span))
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The first field named `name` (ASCII case-insensitive), with surrounding whitespace removed.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(field_name, _)| field_name.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// All fields, in the order received, each value without its surrounding whitespace.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields
            .iter()
            .map(|&(name, value)| (self.text(name), &self.bytes[value.range()]))
    }

    pub fn framing(&self) -> BodyFraming {
        self.framing
    }

    /// Whether the connection may carry another request after this one (RFC 9112 §9.3).
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// Whether the client waits for `100 Continue` before sending the body (HTTP/1.1 only).
    pub fn expect_continue(&self) -> bool {
        self.expect_continue
    }

    pub fn is_head(&self) -> bool {
        self.method() == "HEAD"
    }

    fn text(&self, span: Span) -> &str {
        let bytes = &self.bytes[span.range()];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: every span is made in `validate` from a `&str` httparse gave us (method, target,
        // field names; it checked UTF-8) or from a sub-range of the target cut at an ASCII byte
        // ('/', '?', an authority's end), so it covers whole UTF-8 sequences; `bytes` is the
        // very head those `&str`s pointed into, and `Bytes` never changes. (A checked
        // conversion here was 2% of a pipelined request's CPU: bench/RESULTS.md.)
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

/// Parses one request head at the start of `buf`; see the module docs in `mod.rs`.
///
/// The answer depends only on the first `head_bytes_max` bytes of `buf`, and every error that a
/// prefix of a stream gets, the whole stream gets too: so a stream gives the same result
/// however its bytes are split across reads.
pub fn parse_head(
    buf: &mut BytesMut,
    limits: &HeadLimits,
) -> Result<Option<RequestHead>, HttpError> {
    assert!(limits.header_count_max <= HEADER_COUNT_CEILING);
    assert!(limits.head_bytes_max <= HEAD_BYTES_CEILING);
    let window = &buf[..buf.len().min(limits.head_bytes_max)];
    let Some(empty_lines_bytes) = empty_lines_len(window)? else {
        return incomplete(buf.len(), limits);
    };
    let request = &window[empty_lines_bytes..];
    // The target is shorter than what is buffered: a short buffer needs no scan.
    if request.len() > limits.uri_bytes_max && request_target_len(request) > limits.uri_bytes_max {
        return Err(HttpError::UriTooLong);
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_COUNT_CEILING];
    // The default config: `check_line_endings` relies on httparse skipping no invalid line.
    let mut parsed = httparse::Request::new(&mut []);
    let head_bytes =
        match parsed.parse_with_uninit_headers(request, &mut slots[..limits.header_count_max]) {
            Ok(httparse::Status::Complete(head_bytes)) => head_bytes,
            Ok(httparse::Status::Partial) => return incomplete(buf.len(), limits),
            Err(error) => return Err(map_httparse_error(error, request)),
        };
    let head = validate(&request[..head_bytes], &parsed)?;
    buf.advance(empty_lines_bytes);
    let bytes = buf.split_to(head_bytes).freeze();
    Ok(Some(RequestHead { bytes, ..head }))
}

fn incomplete(
    buffered_bytes: usize,
    limits: &HeadLimits,
) -> Result<Option<RequestHead>, HttpError> {
    if buffered_bytes >= limits.head_bytes_max {
        Err(HttpError::HeadTooLarge)
    } else {
        Ok(None)
    }
}

/// Bytes of leading CRLFs, or None if the window holds nothing else yet. httparse would skip
/// any number of them, bare LFs included, so we do it ourselves, strictly and bounded.
fn empty_lines_len(window: &[u8]) -> Result<Option<usize>, HttpError> {
    let mut index = 0;
    loop {
        match (window.get(index), window.get(index + 1)) {
            (Some(b'\r'), Some(b'\n')) => {}
            (Some(b'\r'), None) | (None, _) => return Ok(None),
            (Some(b'\r' | b'\n'), _) => {
                return Err(HttpError::Malformed("bare CR or LF before request line"));
            }
            (Some(_), _) => return Ok(Some(index)),
        }
        index += 2;
        if index / 2 > EMPTY_LINES_BEFORE_REQUEST_MAX {
            return Err(HttpError::Malformed(
                "too many empty lines before request line",
            ));
        }
    }
}

/// Length of the request-target seen so far, by httparse's own grammar (token, one SP, a run of
/// URI bytes); 0 while the method is unfinished or invalid. It only grows as bytes arrive, so
/// the 414 decision is the same for a prefix and for the whole stream.
fn request_target_len(request: &[u8]) -> usize {
    let Some(method_len) = request.iter().position(|&byte| !is_token_byte(byte)) else {
        return 0;
    };
    if method_len == 0 || request[method_len] != b' ' {
        return 0;
    }
    request[method_len + 1..]
        .iter()
        .take_while(|&&byte| is_uri_byte(byte))
        .count()
}

fn map_httparse_error(error: httparse::Error, request: &[u8]) -> HttpError {
    match error {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Version => version_error(request),
        httparse::Error::HeaderName => HttpError::Malformed("invalid header field name"),
        httparse::Error::HeaderValue => HttpError::Malformed("invalid header field value"),
        httparse::Error::NewLine => HttpError::Malformed("invalid line ending"),
        httparse::Error::Token | httparse::Error::Status => {
            HttpError::Malformed("invalid request line")
        }
    }
}

/// httparse knows only HTTP/1.0 and HTTP/1.1. Another version ("HTTP/2", "HTTP/1.2", and the
/// HTTP/2 preface `PRI * HTTP/2.0`) is 505; anything else is 400. httparse fails at the first
/// byte that cannot lead to "HTTP/1.0" or "HTTP/1.1", so the decision uses only bytes up to
/// that one: the answer is the same whatever the rest of the stream holds.
fn version_error(request: &[u8]) -> HttpError {
    let mut parts = request.splitn(3, |&byte| byte == b' ');
    let version = parts.nth(2).unwrap_or_default();
    match version {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor, ..] if minor.is_ascii_digit() => {
            HttpError::UnsupportedVersion
        }
        [b'H', b'T', b'T', b'P', b'/', major, ..] if major.is_ascii_digit() && *major != b'1' => {
            HttpError::UnsupportedVersion
        }
        _ => HttpError::Malformed("invalid HTTP version"),
    }
}

/// Applies the rules httparse leaves to us, on a complete head.
fn validate(head: &[u8], parsed: &httparse::Request<'_, '_>) -> Result<RequestHead, HttpError> {
    check_line_endings(head, parsed.headers)?;
    let (Some(method), Some(target), Some(minor_version)) =
        (parsed.method, parsed.path, parsed.version)
    else {
        unreachable!("httparse fills the request line of a complete head");
    };
    let version = if minor_version == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    // RFC 9110 §9.3.6: CONNECT asks for a tunnel; we are not a proxy. (400, not a new variant.)
    if method == "CONNECT" {
        return Err(HttpError::Malformed("CONNECT is not supported"));
    }
    let (path, query) = split_target(method, target)?;
    let fields = check_fields(version, parsed.headers)?;
    let target_span = span_of(head, target.as_bytes());
    let shift = |range: std::ops::Range<usize>| Span {
        start: target_span.start + range.start as u16,
        end: target_span.start + range.end as u16,
    };
    Ok(RequestHead {
        bytes: Bytes::new(),
        method: span_of(head, method.as_bytes()),
        target: target_span,
        path: if path.is_empty() {
            Span::EMPTY
        } else {
            shift(path)
        },
        query: query.map(shift),
        fields: parsed
            .headers
            .iter()
            .map(|field| {
                (
                    span_of(head, field.name.as_bytes()),
                    span_of(head, field.value),
                )
            })
            .collect(),
        version,
        framing: fields.framing,
        keep_alive: fields.keep_alive,
        expect_continue: fields.expect_continue,
    })
}

/// httparse accepts a bare LF as a line end (it rejects bare CR). RFC 9112 §2.2 lets a
/// recipient accept it, but a proxy in front may not, and then the two disagree about where a
/// header ends: reject both.
///
/// Only the line ends need a look. httparse (default config: it skips no invalid line) has
/// checked that every CR is followed by LF, and an LF is no byte of a request line, a field name
/// or a field value, so every LF ends a line: the request line's just before the first field
/// name, each field line's just before the next name, the last line's and the empty line's at
/// the end. Two bytes per line instead of a pass over every byte: counting CRs against LFs in
/// the whole head cost ~2% of a pipelined request's CPU (tests: `line_endings_and_empty_lines`,
/// `a_head_is_accepted_exactly_when_every_line_ends_in_crlf`, `no_accepted_head_has_a_bare_cr_or_lf`).
fn check_line_endings(head: &[u8], fields: &[httparse::Header<'_>]) -> Result<(), HttpError> {
    let crlf_before = |field: &httparse::Header<'_>| {
        let start = usize::from(span_of(head, field.name.as_bytes()).start);
        start >= 2 && head[start - 2..start] == *b"\r\n"
    };
    if !head.ends_with(b"\r\n\r\n") || !fields.iter().all(crlf_before) {
        return Err(HttpError::Malformed("bare CR or LF in request head"));
    }
    Ok(())
}

fn span_of(head: &[u8], part: &[u8]) -> Span {
    let start = (part.as_ptr() as usize).wrapping_sub(head.as_ptr() as usize);
    assert!(
        start <= head.len() && part.len() <= head.len() - start,
        "httparse slices lie in the head"
    );
    Span {
        start: start as u16,
        end: (start + part.len()) as u16,
    }
}

/// Path and query ranges, relative to the request-target.
type TargetParts = (std::ops::Range<usize>, Option<std::ops::Range<usize>>);

/// Splits the request-target (RFC 9112 §3.2) into path and query ranges. An empty path range
/// means "/" (absolute-form without a path).
fn split_target(method: &str, target: &str) -> Result<TargetParts, HttpError> {
    // A fragment is never sent (RFC 9110 §4.2.5); servers that strip it and servers that keep it
    // route differently.
    // One pass to the first '#' or '?', and a '#' is searched only after a '?'.
    let bytes = target.as_bytes();
    let question = memchr::memchr2(b'#', b'?', bytes);
    if question.is_some_and(|first| memchr::memchr(b'#', &bytes[first..]).is_some()) {
        return Err(HttpError::Malformed("fragment in request-target"));
    }
    let path_start = if target.starts_with('/') {
        0
    } else if target == "*" {
        if method != "OPTIONS" {
            return Err(HttpError::Malformed("asterisk-form is only for OPTIONS"));
        }
        0
    } else {
        absolute_form_path_start(target)?
    };
    // An authority ends at the first '?' if not at a '/': the first '?' is never before the path.
    debug_assert!(question.is_none_or(|question| question >= path_start));
    Ok(match question {
        Some(question) => (path_start..question, Some(question + 1..target.len())),
        None => (path_start..target.len(), None),
    })
}

/// `http://authority/path?query` (RFC 9112 §3.2.2): returns where the path starts.
fn absolute_form_path_start(target: &str) -> Result<usize, HttpError> {
    let Some((scheme, authority)) = split_absolute_form(target) else {
        return Err(HttpError::Malformed("invalid request-target"));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(HttpError::Malformed("unsupported scheme in request-target"));
    }
    // The same rules as Host, so userinfo ("user@host") is rejected (RFC 9110 §4.2.4).
    if !is_valid_host(&target.as_bytes()[authority.clone()]) {
        return Err(HttpError::Malformed("invalid authority in request-target"));
    }
    Ok(authority.end)
}

/// The scheme of `scheme://authority/path?query` and where its authority lies (up to the first
/// '/' or '?'); None without "://".
fn split_absolute_form(target: &str) -> Option<(&str, std::ops::Range<usize>)> {
    let scheme_len = target.find("://")?;
    let start = scheme_len + 3;
    let len = target[start..]
        .find(['/', '?'])
        .unwrap_or(target.len() - start);
    Some((&target[..scheme_len], start..start + len))
}

/// What the framing fields of a head say.
struct FieldFacts {
    framing: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
}

/// The Host, framing, Connection and Expect rules.
fn check_fields(
    version: Version,
    fields: &[httparse::Header<'_>],
) -> Result<FieldFacts, HttpError> {
    let mut host_count = 0usize;
    let mut content_length = None;
    let mut transfer_coding = TransferCoding::default();
    let mut connection = ConnectionOptions::default();
    let mut expect_continue = false;
    for field in fields {
        let name = field.name;
        if name.eq_ignore_ascii_case("host") {
            // RFC 9112 §3.2: a second Host or an invalid one is a MUST-400 for any version.
            host_count += 1;
            if host_count > 1 {
                return Err(HttpError::Malformed("more than one Host"));
            }
            if !is_valid_host(field.value) {
                return Err(HttpError::Malformed("invalid Host"));
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            // RFC 9110 §8.6 lets a recipient accept repeated identical values ("5, 5" or two
            // fields); we reject any repetition: a proxy that picks one and a server that picks
            // another would frame the body differently.
            if content_length.is_some() {
                return Err(HttpError::Malformed("more than one Content-Length"));
            }
            content_length = Some(parse_content_length(field.value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_coding.add(field.value);
        } else if name.eq_ignore_ascii_case("connection") {
            connection.add(field.value);
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue |= check_expect(field.value)?;
        }
    }
    if version == Version::Http11 && host_count == 0 {
        return Err(HttpError::Malformed("HTTP/1.1 request without Host"));
    }
    let framing = match (content_length, transfer_coding.seen) {
        // RFC 9112 §6.1: TE in an HTTP/1.0 message means faulty framing.
        (_, true) if version == Version::Http10 => {
            return Err(HttpError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        // RFC 9112 §6.3: both present is the classic smuggling vector; reject, not "TE wins".
        (Some(_), true) => {
            return Err(HttpError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (None, true) => transfer_coding.framing()?,
        (Some(0), false) | (None, false) => BodyFraming::Empty,
        (Some(length), false) => BodyFraming::Length(length),
    };
    let keep_alive = match version {
        Version::Http11 => !connection.close,
        Version::Http10 => connection.keep_alive && !connection.close,
    };
    // RFC 9110 §10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request.
    let expect_continue = expect_continue && version == Version::Http11;
    Ok(FieldFacts {
        framing,
        keep_alive,
        expect_continue,
    })
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6): no sign, no list, no whitespace, no overflow.
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    if value.is_empty() {
        return Err(HttpError::Malformed("empty Content-Length"));
    }
    let mut length: u64 = 0;
    for &byte in value {
        if !byte.is_ascii_digit() {
            return Err(HttpError::Malformed("invalid Content-Length"));
        }
        length = length
            .checked_mul(10)
            .and_then(|length| length.checked_add(u64::from(byte - b'0')))
            .ok_or(HttpError::Malformed("Content-Length overflows"))?;
    }
    Ok(length)
}

/// The transfer codings of all Transfer-Encoding fields, in order (RFC 9112 §6.1).
#[derive(Default)]
struct TransferCoding {
    seen: bool,
    /// A Transfer-Encoding field line held no coding (`Transfer-Encoding: ` or `: ,`): refused
    /// even beside a line that says chunked, since a recipient that reads only one of the lines
    /// could frame the body otherwise.
    empty_line: bool,
    codings_count: usize,
    chunked_count: usize,
    other_count: usize,
    last_is_chunked: bool,
}

impl TransferCoding {
    fn add(&mut self, value: &[u8]) {
        self.seen = true;
        let codings_before = self.codings_count;
        for coding in list_elements(value) {
            self.codings_count += 1;
            self.last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
            if self.last_is_chunked {
                self.chunked_count += 1;
            } else {
                self.other_count += 1;
            }
        }
        self.empty_line |= self.codings_count == codings_before;
    }

    fn framing(&self) -> Result<BodyFraming, HttpError> {
        if self.empty_line {
            return Err(HttpError::Malformed("empty Transfer-Encoding"));
        }
        // RFC 9112 §6.3: a request whose final coding is not chunked has no determinable length.
        if !self.last_is_chunked {
            return Err(HttpError::Malformed("final transfer coding is not chunked"));
        }
        // RFC 9112 §6.1: a sender MUST NOT apply chunked more than once.
        if self.chunked_count > 1 {
            return Err(HttpError::Malformed("chunked applied more than once"));
        }
        if self.other_count > 0 {
            return Err(HttpError::UnsupportedTransferEncoding);
        }
        Ok(BodyFraming::Chunked)
    }
}

/// The options of all Connection fields (RFC 9110 §7.6.1), case-insensitive.
#[derive(Default)]
struct ConnectionOptions {
    close: bool,
    keep_alive: bool,
}

impl ConnectionOptions {
    fn add(&mut self, value: &[u8]) {
        for option in list_elements(value) {
            self.close |= option.eq_ignore_ascii_case(b"close");
            self.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
        }
    }
}

/// Ok(true) for 100-continue; any other expectation is 417 (RFC 9110 §10.1.1).
fn check_expect(value: &[u8]) -> Result<bool, HttpError> {
    let mut expect_continue = false;
    for expectation in list_elements(value) {
        if !expectation.eq_ignore_ascii_case(b"100-continue") {
            return Err(HttpError::ExpectationFailed);
        }
        expect_continue = true;
    }
    Ok(expect_continue)
}

/// The non-empty elements of a `#rule` list (RFC 9110 §5.6.1), whitespace trimmed.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&byte| byte == b',')
        .map(|element| element.trim_ascii())
        .filter(|element| !element.is_empty())
}

/// `Host = uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2). Empty is rejected, and so
/// are userinfo, whitespace, controls, IPvFuture, and an empty or out-of-range port.
fn is_valid_host(value: &[u8]) -> bool {
    is_plain_host(value) || is_valid_host_any(value)
}

/// The common Host, `reg-name [":" port]` without a `%` escape, in branch-free passes. Never true
/// where `is_valid_host_any` is false: reg-name bytes include no ':', so the last ':' is the
/// first. (The byte-by-byte checks cost 2.5% of a pipelined request's CPU.)
fn is_plain_host(value: &[u8]) -> bool {
    let (host, port) = match value.iter().rposition(|&byte| byte == b':') {
        Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
        None => (value, None),
    };
    let host_ok = host.iter().fold(!host.is_empty(), |ok, &byte| {
        ok & REG_NAME_BYTES[usize::from(byte)]
    });
    host_ok && port.is_none_or(is_valid_port)
}

fn is_valid_host_any(value: &[u8]) -> bool {
    let (host, port) = if let Some(literal) = value.strip_prefix(b"[") {
        let Some(close) = literal.iter().position(|&byte| byte == b']') else {
            return false;
        };
        let address = &literal[..close];
        // An IPv6address by its grammar (RFC 3986 §3.2.2): "[1]" or "[:]" is not one. No zone
        // (RFC 6874 allows none in Host) and no IPvFuture.
        let address_ok = std::str::from_utf8(address)
            .is_ok_and(|text| text.parse::<std::net::Ipv6Addr>().is_ok());
        if !address_ok {
            return false;
        }
        match &literal[close + 1..] {
            [] => (address, None),
            [b':', port @ ..] => (address, Some(port)),
            _ => return false,
        }
    } else {
        let (host, port) = match value.iter().position(|&byte| byte == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        };
        if host.is_empty() || !is_reg_name(host) {
            return false;
        }
        (host, port)
    };
    !host.is_empty() && port.is_none_or(is_valid_port)
}

/// A `[bool; 256]` built at compile time from a predicate on a byte (a closure literal).
macro_rules! byte_table {
    (|$byte:ident: u8| $member:expr) => {{
        let mut table = [false; 256];
        let mut index = 0;
        while index < 256 {
            let $byte = index as u8;
            table[index] = $member;
            index += 1;
        }
        table
    }};
}

/// `unreserved / sub-delims` of RFC 3986 §3.2.2, the bytes of a reg-name besides `%` escapes.
const REG_NAME_BYTES: [bool; 256] = byte_table!(|byte: u8| {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
});

/// `tchar` (RFC 9110 §5.6.2): a table, since a `matches!` of 16 bytes is a chain of compares
/// on every byte of every field name.
const TOKEN_BYTES: [bool; 256] = byte_table!(|byte: u8| {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
});

fn is_reg_name(host: &[u8]) -> bool {
    let mut index = 0;
    while let Some(&byte) = host.get(index) {
        if byte == b'%' {
            let escape_ok = host
                .get(index + 1..index + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit));
            if !escape_ok {
                return false;
            }
            index += 3;
            continue;
        }
        if !REG_NAME_BYTES[usize::from(byte)] {
            return false;
        }
        index += 1;
    }
    true
}

fn is_valid_port(port: &[u8]) -> bool {
    (1..=5).contains(&port.len())
        && port
            .iter()
            .try_fold(0u32, |value, &digit| {
                digit
                    .is_ascii_digit()
                    .then(|| value * 10 + u32::from(digit - b'0'))
            })
            .is_some_and(|value| value <= 65535)
}

/// `tchar` (RFC 9110 §5.6.2), the bytes of methods, field names and codings.
pub(crate) fn is_token_byte(byte: u8) -> bool {
    TOKEN_BYTES[usize::from(byte)]
}

/// The bytes httparse accepts in a request-target (it checks UTF-8 afterwards).
fn is_uri_byte(byte: u8) -> bool {
    (b'!'..=b'~').contains(&byte) || byte >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        head_bytes_max: 1024,
        header_count_max: 8,
        uri_bytes_max: 64,
    };

    /// Parses `input` whole and renders the outcome, then feeds it byte by byte and demands the
    /// same outcome (the prefix rule of `parse_head`).
    fn check(limits: &HeadLimits, input: &[u8], expected: &str) {
        let whole = render(limits, input);
        assert_eq!(
            whole,
            expected,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
        let mut buf = BytesMut::new();
        let mut split = String::new();
        for fed_bytes in 0..=input.len() {
            buf.extend_from_slice(&input[buf.len().min(fed_bytes)..fed_bytes]);
            split = render_outcome(parse_head(&mut buf, limits), &buf);
            if !split.starts_with("incomplete") {
                break;
            }
        }
        if whole.starts_with("incomplete") || whole.starts_with("err") {
            assert_eq!(
                split,
                whole,
                "byte by byte, input {:?}",
                String::from_utf8_lossy(input)
            );
        } else {
            // Byte by byte stops as soon as the head is complete, so nothing is left over.
            let whole_head = whole.rsplit_once(" rest=").map(|(head, _)| head);
            let split_head = split.rsplit_once(" rest=").map(|(head, _)| head);
            assert_eq!(
                split_head,
                whole_head,
                "byte by byte, input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    fn render(limits: &HeadLimits, input: &[u8]) -> String {
        let mut buf = BytesMut::from(input);
        let outcome = parse_head(&mut buf, limits);
        render_outcome(outcome, &buf)
    }

    fn render_outcome(outcome: Result<Option<RequestHead>, HttpError>, buf: &BytesMut) -> String {
        match outcome {
            Ok(None) => format!("incomplete rest={}", buf.len()),
            Err(error) => format!("err {} {}", error.status(), error.message()),
            Ok(Some(head)) => {
                let mut text = format!(
                    "{} {} {} {:?} {:?} {}",
                    head.method(),
                    head.path(),
                    head.query().unwrap_or("-"),
                    head.version(),
                    head.framing(),
                    if head.keep_alive() {
                        "keep-alive"
                    } else {
                        "close"
                    },
                );
                if head.expect_continue() {
                    text.push_str(" 100-continue");
                }
                text.push_str(&format!(" rest={}", buf.len()));
                text
            }
        }
    }

    /// "GET / HTTP/1.1" + Host + `fields` + the empty line.
    fn get(fields: &str) -> Vec<u8> {
        format!("GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n").into_bytes()
    }

    fn post(fields: &str) -> Vec<u8> {
        format!("POST /p HTTP/1.1\r\nHost: a\r\n{fields}\r\n").into_bytes()
    }

    const OK_GET: &str = "GET / - Http11 Empty keep-alive rest=0";

    #[test]
    fn request_lines() {
        let cases: &[(&[u8], &str)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK_GET),
            (
                b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: a\r\n\r\n",
                "GET /a/b x=1&y=2 Http11 Empty keep-alive rest=0",
            ),
            (
                b"GET /a? HTTP/1.1\r\nHost: a\r\n\r\n",
                "GET /a  Http11 Empty keep-alive rest=0",
            ),
            (
                b"GET /a?b?c HTTP/1.1\r\nHost: a\r\n\r\n",
                "GET /a b?c Http11 Empty keep-alive rest=0",
            ),
            (
                b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
                "HEAD / - Http11 Empty keep-alive rest=0",
            ),
            (
                b"PURGE-X! /x HTTP/1.1\r\nHost: a\r\n\r\n",
                "PURGE-X! /x - Http11 Empty keep-alive rest=0",
            ),
            (
                b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
                "GET /caf\u{e9} - Http11 Empty keep-alive rest=0",
            ),
            // Absolute-form: the path comes after the authority.
            (
                b"GET http://example.com/x?y HTTP/1.1\r\nHost: a\r\n\r\n",
                "GET /x y Http11 Empty keep-alive rest=0",
            ),
            (
                b"GET HTTPS://example.com:8443 HTTP/1.1\r\nHost: a\r\n\r\n",
                "GET / - Http11 Empty keep-alive rest=0",
            ),
            (
                b"GET http://example.com?q HTTP/1.1\r\nHost: a\r\n\r\n",
                "GET / q Http11 Empty keep-alive rest=0",
            ),
            (
                b"GET http://u@example.com/ HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 invalid authority in request-target",
            ),
            (
                b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 invalid authority in request-target",
            ),
            (
                b"GET ftp://example.com/ HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 unsupported scheme in request-target",
            ),
            (
                b"GET example.com/x HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 invalid request-target",
            ),
            // Asterisk-form only with OPTIONS (RFC 9112 §3.2.4).
            (
                b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
                "OPTIONS * - Http11 Empty keep-alive rest=0",
            ),
            (
                b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 asterisk-form is only for OPTIONS",
            ),
            (
                b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
                "err 400 CONNECT is not supported",
            ),
            (
                b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 fragment in request-target",
            ),
            // Methods are case-sensitive: "head" is some other method, not HEAD.
            (
                b"head / HTTP/1.1\r\nHost: a\r\n\r\n",
                "head / - Http11 Empty keep-alive rest=0",
            ),
            (
                b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 invalid request line",
            ),
            (
                b" GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 invalid request line",
            ),
            (
                b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 invalid request line",
            ),
            (
                b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
                "err 400 invalid line ending",
            ),
            (
                b"GET /\tx HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 invalid request line",
            ),
            (
                b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 invalid request line",
            ),
            (b"GET /\x00 HTTP/1.1\r\n", "err 400 invalid request line"),
            (
                b"GET HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 invalid request line",
            ),
            (b"GET /\r\nHost: a\r\n\r\n", "err 400 invalid request line"),
        ];
        for (input, expected) in cases {
            check(&LIMITS, input, expected);
        }
    }

    #[test]
    fn versions() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"GET / HTTP/1.0\r\n\r\n",
                "GET / - Http10 Empty close rest=0",
            ),
            (
                b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
                "err 505 only HTTP/1.0 and HTTP/1.1 are supported",
            ),
            (
                b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
                "err 505 only HTTP/1.0 and HTTP/1.1 are supported",
            ),
            (
                b"GET / HTTP/0.9\r\n\r\n",
                "err 505 only HTTP/1.0 and HTTP/1.1 are supported",
            ),
            // The HTTP/2 prior-knowledge preface: 505, decided after 13 bytes.
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                "err 505 only HTTP/1.0 and HTTP/1.1 are supported",
            ),
            (b"GET / HTTP/1\r\n", "err 400 invalid HTTP version"),
            (
                b"GET / http/1.1\r\nHost: a\r\n\r\n",
                "err 400 invalid HTTP version",
            ),
            (
                b"GET / HTTP/x.1\r\nHost: a\r\n\r\n",
                "err 400 invalid HTTP version",
            ),
            (
                b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n",
                "err 400 invalid line ending",
            ),
            (
                b"GET / HTTP/1x1\r\nHost: a\r\n\r\n",
                "err 400 invalid HTTP version",
            ),
            (
                b"GET / HTTP/1.x\r\nHost: a\r\n\r\n",
                "err 400 invalid HTTP version",
            ),
            (
                b"GET / HTTP/3\r\n",
                "err 505 only HTTP/1.0 and HTTP/1.1 are supported",
            ),
            (b"GET /\r\n\r\n", "err 400 invalid request line"),
        ];
        for (input, expected) in cases {
            check(&LIMITS, input, expected);
        }
    }

    #[test]
    fn line_endings_and_empty_lines() {
        let cases: &[(&[u8], &str)] = &[
            // httparse accepts all of these bare-LF heads; we do not.
            (
                b"GET / HTTP/1.1\nHost: a\r\n\r\n",
                "err 400 bare CR or LF in request head",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\n\r\n",
                "err 400 bare CR or LF in request head",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n\n",
                "err 400 bare CR or LF in request head",
            ),
            (
                b"GET / HTTP/1.1\nHost: a\n\n",
                "err 400 bare CR or LF in request head",
            ),
            // Without fields: the request line's end and the empty line.
            (
                b"GET / HTTP/1.0\n\r\n",
                "err 400 bare CR or LF in request head",
            ),
            (
                b"GET / HTTP/1.0\r\n\n",
                "err 400 bare CR or LF in request head",
            ),
            (
                b"GET / HTTP/1.0\n\n",
                "err 400 bare CR or LF in request head",
            ),
            // httparse rejects bare CR itself.
            (
                b"GET / HTTP/1.1\rHost: a\r\n\r\n",
                "err 400 invalid line ending",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
                "err 400 invalid header field value",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n\rX",
                "err 400 invalid line ending",
            ),
            (
                b"GET / HTTP/1.1\r\nX\r: a\r\nHost: a\r\n\r\n",
                "err 400 invalid header field name",
            ),
            // Empty lines before the request line: CRLF only, at most four.
            (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", OK_GET),
            (b"\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", OK_GET),
            (
                b"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 too many empty lines before request line",
            ),
            (
                b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 bare CR or LF before request line",
            ),
            (
                b"\r\rGET / HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 bare CR or LF before request line",
            ),
            (b"\r\n\r", "incomplete rest=3"),
            (b"", "incomplete rest=0"),
        ];
        for (input, expected) in cases {
            check(&LIMITS, input, expected);
        }
    }

    #[test]
    fn header_syntax() {
        let long_value = format!("X: {}\x01\r\n", "v".repeat(40));
        let long_del = format!("X: {}\x7f{}\r\n", "v".repeat(40), "w".repeat(40));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (get("X-Empty:\r\nX-Spaces:   padded \t\r\n"), OK_GET),
            (get("X: caf\u{e9}\r\n"), OK_GET),
            // Whitespace between name and colon (RFC 9112 §5.1 MUST 400).
            (get("X-A : b\r\n"), "err 400 invalid header field name"),
            (get("X-A\t: b\r\n"), "err 400 invalid header field name"),
            // obs-fold (RFC 9112 §5.2: 400 is one of the allowed answers; the others rewrite).
            (get("X-A: b\r\n c\r\n"), "err 400 invalid header field name"),
            (
                get("X-A: b\r\n\tc\r\n"),
                "err 400 invalid header field name",
            ),
            (
                b"GET / HTTP/1.1\r\n Host: a\r\n\r\n".to_vec(),
                "err 400 invalid header field name",
            ),
            (get(": novalue\r\n"), "err 400 invalid header field name"),
            (get("X(: b\r\n"), "err 400 invalid header field name"),
            (get("NoColon\r\n"), "err 400 invalid header field name"),
            // Controls in values, short (scalar path) and long (SIMD path).
            (get("X: a\x00b\r\n"), "err 400 invalid header field value"),
            (get("X: a\x7fb\r\n"), "err 400 invalid header field value"),
            (get("X: a\x1bb\r\n"), "err 400 invalid header field value"),
            (get(&long_value), "err 400 invalid header field value"),
            (get(&long_del), "err 400 invalid header field value"),
        ];
        for (input, expected) in &cases {
            check(&LIMITS, input, expected);
        }
    }

    #[test]
    fn host_rules() {
        let cases: Vec<(&[u8], &str)> = vec![
            (
                b"GET / HTTP/1.1\r\n\r\n",
                "err 400 HTTP/1.1 request without Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
                "err 400 more than one Host",
            ),
            (
                b"GET / HTTP/1.1\r\nhOsT: a\r\nHOST: b\r\n\r\n",
                "err 400 more than one Host",
            ),
            (
                b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
                "err 400 more than one Host",
            ),
            (
                b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n",
                "err 400 invalid Host",
            ),
            (b"GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", OK_GET),
            (b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n", OK_GET),
            (b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", OK_GET),
            (
                b"GET / HTTP/1.1\r\nHost: [2001:db8::192.0.2.1]\r\n\r\n",
                OK_GET,
            ),
            (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n", OK_GET),
            (
                b"GET / HTTP/1.1\r\nHost: xn--caf-dma.example\r\n\r\n",
                OK_GET,
            ),
            (b"GET / HTTP/1.1\r\nHost: a%2Db\r\n\r\n", OK_GET),
            (b"GET / HTTP/1.1\r\nHost: a:65535\r\n\r\n", OK_GET),
            (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", "err 400 invalid Host"),
            (
                b"GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a:\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\tb\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a%2\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: []\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: [v1.x]\r\n\r\n",
                "err 400 invalid Host",
            ),
            // Only IPv6 bytes, but no IPv6address (RFC 3986 §3.2.2); the absolute-form
            // authority follows the same rules.
            (
                b"GET / HTTP/1.1\r\nHost: [1]\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: [:]\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: [....]\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: [::1%25eth0]\r\n\r\n",
                "err 400 invalid Host",
            ),
            (
                b"GET http://[1]/ HTTP/1.1\r\nHost: a\r\n\r\n",
                "err 400 invalid authority in request-target",
            ),
        ];
        for (input, expected) in cases {
            check(&LIMITS, input, expected);
        }
    }

    #[test]
    fn framing_and_smuggling() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                post("Content-Length: 5\r\n"),
                "POST /p - Http11 Length(5) keep-alive rest=0",
            ),
            (
                post("Content-Length: 0\r\n"),
                "POST /p - Http11 Empty keep-alive rest=0",
            ),
            (
                post("Content-Length: 007\r\n"),
                "POST /p - Http11 Length(7) keep-alive rest=0",
            ),
            (
                post("Content-Length: 18446744073709551615\r\n"),
                "POST /p - Http11 Length(18446744073709551615) keep-alive rest=0",
            ),
            (
                post("Content-Length: 18446744073709551616\r\n"),
                "err 400 Content-Length overflows",
            ),
            (
                post("Content-Length: 99999999999999999999999\r\n"),
                "err 400 Content-Length overflows",
            ),
            (
                post("Content-Length: +5\r\n"),
                "err 400 invalid Content-Length",
            ),
            (
                post("Content-Length: -5\r\n"),
                "err 400 invalid Content-Length",
            ),
            (
                post("Content-Length: 0x5\r\n"),
                "err 400 invalid Content-Length",
            ),
            (
                post("Content-Length: 5 5\r\n"),
                "err 400 invalid Content-Length",
            ),
            (
                post("Content-Length: 5, 5\r\n"),
                "err 400 invalid Content-Length",
            ),
            (
                post("Content-Length: 5,\r\n"),
                "err 400 invalid Content-Length",
            ),
            (post("Content-Length:\r\n"), "err 400 empty Content-Length"),
            (
                post("Content-Length: 5\r\nContent-Length: 5\r\n"),
                "err 400 more than one Content-Length",
            ),
            (
                post("Content-Length: 5\r\ncontent-length: 6\r\n"),
                "err 400 more than one Content-Length",
            ),
            (
                post("Transfer-Encoding: chunked\r\n"),
                "POST /p - Http11 Chunked keep-alive rest=0",
            ),
            (
                post("Transfer-Encoding: CHUNKED\r\n"),
                "POST /p - Http11 Chunked keep-alive rest=0",
            ),
            (
                post("Transfer-Encoding: , chunked ,\r\n"),
                "POST /p - Http11 Chunked keep-alive rest=0",
            ),
            (
                post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"),
                "err 400 both Content-Length and Transfer-Encoding",
            ),
            (
                post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
                "err 400 both Content-Length and Transfer-Encoding",
            ),
            (
                post("Transfer-Encoding: gzip\r\n"),
                "err 400 final transfer coding is not chunked",
            ),
            (
                post("Transfer-Encoding: chunked, gzip\r\n"),
                "err 400 final transfer coding is not chunked",
            ),
            (
                post("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"),
                "err 400 final transfer coding is not chunked",
            ),
            (
                post("Transfer-Encoding: chunked;q=1\r\n"),
                "err 400 final transfer coding is not chunked",
            ),
            (
                post("Transfer-Encoding: xchunked\r\n"),
                "err 400 final transfer coding is not chunked",
            ),
            (
                post("Transfer-Encoding:\r\n"),
                "err 400 empty Transfer-Encoding",
            ),
            // An empty line beside one that says chunked (a black-box review found these
            // accepted): a recipient that reads one line only frames the body otherwise.
            (
                post("Transfer-Encoding: \r\nTransfer-Encoding: chunked\r\n"),
                "err 400 empty Transfer-Encoding",
            ),
            (
                post("Transfer-Encoding: chunked\r\nTransfer-Encoding:\r\n"),
                "err 400 empty Transfer-Encoding",
            ),
            (
                post("Transfer-Encoding: ,\r\nTransfer-Encoding: chunked\r\n"),
                "err 400 empty Transfer-Encoding",
            ),
            (
                post("Transfer-Encoding: chunked, chunked\r\n"),
                "err 400 chunked applied more than once",
            ),
            (
                post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
                "err 400 chunked applied more than once",
            ),
            (
                post("Transfer-Encoding: gzip, chunked\r\n"),
                "err 501 transfer coding not implemented",
            ),
            (
                post("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
                "err 501 transfer coding not implemented",
            ),
            (
                post("Transfer-Encoding: identity, chunked\r\n"),
                "err 501 transfer coding not implemented",
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                "err 400 Transfer-Encoding in an HTTP/1.0 request",
            ),
            (
                b"POST / HTTP/1.0\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_vec(),
                "err 400 Transfer-Encoding in an HTTP/1.0 request",
            ),
            (
                b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
                "POST / - Http10 Length(3) close rest=3",
            ),
        ];
        for (input, expected) in &cases {
            check(&LIMITS, input, expected);
        }
    }

    #[test]
    fn connection_and_expect() {
        let cases: Vec<(&[u8], &str)> = vec![
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                "GET / - Http11 Empty close rest=0",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, CLOSE\r\n\r\n",
                "GET / - Http11 Empty close rest=0",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
                "GET / - Http11 Empty close rest=0",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n",
                OK_GET,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
                OK_GET,
            ),
            (
                b"GET / HTTP/1.0\r\n\r\n",
                "GET / - Http10 Empty close rest=0",
            ),
            (
                b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
                "GET / - Http10 Empty keep-alive rest=0",
            ),
            (
                b"GET / HTTP/1.0\r\nConnection: foo , keep-alive\r\n\r\n",
                "GET / - Http10 Empty keep-alive rest=0",
            ),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
                "GET / - Http10 Empty close rest=0",
            ),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alives\r\n\r\n",
                "GET / - Http10 Empty close rest=0",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
                "POST / - Http11 Length(3) keep-alive 100-continue rest=0",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n",
                "POST / - Http11 Length(3) keep-alive 100-continue rest=0",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n",
                "err 417 only the 100-continue expectation is supported",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, x\r\n\r\n",
                "err 417 only the 100-continue expectation is supported",
            ),
            (b"GET / HTTP/1.1\r\nHost: a\r\nExpect:\r\n\r\n", OK_GET),
            // RFC 9110 §10.1.1: ignored in HTTP/1.0.
            (
                b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
                "POST / - Http10 Length(3) close rest=0",
            ),
        ];
        for (input, expected) in cases {
            check(&LIMITS, input, expected);
        }
    }

    /// A head of exactly `head_bytes` bytes, padded with an X header.
    fn head_of_len(head_bytes: usize) -> Vec<u8> {
        let bare = get("X: \r\n").len();
        get(&format!("X: {}\r\n", "p".repeat(head_bytes - bare)))
    }

    #[test]
    fn limits_at_and_past_the_bound() {
        let limits = HeadLimits {
            head_bytes_max: 200,
            header_count_max: 4,
            uri_bytes_max: 20,
        };
        let at = head_of_len(200);
        let past = head_of_len(201);
        let fields = |count: usize| {
            (1..count)
                .map(|index| format!("X{index}: v\r\n"))
                .collect::<String>()
        };
        let uri = |uri_bytes: usize| {
            format!(
                "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
                "u".repeat(uri_bytes - 1)
            )
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (at.clone(), OK_GET),
            (past.clone(), "err 431 request header fields too large"),
            // Incomplete: 199 bytes wait, 200 bytes without the end of the head are 431.
            (past[..199].to_vec(), "incomplete rest=199"),
            (
                past[..200].to_vec(),
                "err 431 request header fields too large",
            ),
            // Empty lines before the request line count against the bound.
            ([&b"\r\n"[..], &head_of_len(198)].concat(), OK_GET),
            (
                [&b"\r\n"[..], &head_of_len(199)].concat(),
                "err 431 request header fields too large",
            ),
            // Host + 3 = 4 fields, then 5.
            (get(&fields(4)), OK_GET),
            (get(&fields(5)), "err 431 too many header fields"),
            (
                uri(20).into_bytes(),
                "GET /uuuuuuuuuuuuuuuuuuu - Http11 Empty keep-alive rest=0",
            ),
            (uri(21).into_bytes(), "err 414 request-target too long"),
            // 414 as soon as the partial target is past the bound, before the request line ends.
            (
                format!("GET /{}", "u".repeat(19)).into_bytes(),
                "incomplete rest=24",
            ),
            (
                format!("GET /{}", "u".repeat(20)).into_bytes(),
                "err 414 request-target too long",
            ),
            (
                format!("\r\nGET /{}", "u".repeat(20)).into_bytes(),
                "err 414 request-target too long",
            ),
        ];
        for (input, expected) in &cases {
            check(&limits, input, expected);
        }
    }

    #[test]
    fn zero_and_ceiling_limits() {
        let zero = HeadLimits {
            head_bytes_max: 0,
            header_count_max: 0,
            uri_bytes_max: 0,
        };
        check(&zero, b"", "err 431 request header fields too large");
        let no_fields = HeadLimits {
            head_bytes_max: 100,
            header_count_max: 0,
            uri_bytes_max: 10,
        };
        check(
            &no_fields,
            b"GET / HTTP/1.0\r\n\r\n",
            "GET / - Http10 Empty close rest=0",
        );
        check(
            &no_fields,
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "err 431 too many header fields",
        );
        let ceiling = HeadLimits {
            head_bytes_max: HEAD_BYTES_CEILING,
            header_count_max: HEADER_COUNT_CEILING,
            uri_bytes_max: 10,
        };
        let fields = |count: usize| {
            (1..count)
                .map(|index| format!("X{index}: v\r\n"))
                .collect::<String>()
        };
        check(&ceiling, &get(&fields(HEADER_COUNT_CEILING)), OK_GET);
        check(
            &ceiling,
            &get(&fields(HEADER_COUNT_CEILING + 1)),
            "err 431 too many header fields",
        );
        // A head of exactly the byte ceiling: its last field ends at offset 65535 - 4, and
        // 16-bit spans still reach every byte of it.
        let prefix = "GET /x HTTP/1.1\r\nHost: a\r\nX-Big: ";
        let big = "v".repeat(HEAD_BYTES_CEILING - prefix.len() - "\r\n\r\n".len());
        let raw = format!("{prefix}{big}\r\n\r\n");
        assert_eq!(raw.len(), HEAD_BYTES_CEILING);
        let head = parse_head(&mut BytesMut::from(raw.as_bytes()), &ceiling)
            .unwrap()
            .unwrap();
        assert_eq!(head.header("x-big"), Some(big.as_bytes()));
        assert_eq!(head.path(), "/x");
        let raw = format!("{prefix}{big}v\r\n\r\n");
        assert_eq!(
            parse_head(&mut BytesMut::from(raw.as_bytes()), &ceiling).unwrap_err(),
            HttpError::HeadTooLarge
        );
    }

    proptest::proptest! {
        /// `check_line_endings` looks at line ends and leaves bare CRs to httparse: whatever
        /// CRs and LFs are inserted into a head, an accepted head has none that is bare.
        #[test]
        fn no_accepted_head_has_a_bare_cr_or_lf(
            inserts in proptest::collection::vec(
                (proptest::sample::select(&[b'\r', b'\n'][..]), proptest::prelude::any::<proptest::sample::Index>()),
                1..4,
            ),
        ) {
            let mut input = b"GET /a?b HTTP/1.1\r\nHost: a\r\nX-A: 1 2\r\nX-B:\r\n\r\n".to_vec();
            for (byte, index) in inserts {
                input.insert(index.index(input.len() + 1), byte);
            }
            let mut buf = BytesMut::from(&input[..]);
            if let Ok(Some(head)) = parse_head(&mut buf, &LIMITS) {
                let bytes = &head.bytes[..];
                for (index, &byte) in bytes.iter().enumerate() {
                    let bare = match byte {
                        b'\n' => index == 0 || bytes[index - 1] != b'\r',
                        b'\r' => bytes.get(index + 1) != Some(&b'\n'),
                        _ => false,
                    };
                    proptest::prop_assert!(!bare, "accepted {:?}", String::from_utf8_lossy(bytes));
                }
            }
        }
    }

    proptest::proptest! {
        /// Each line of a head (request line, fields, the empty line) ends in CRLF or in a bare
        /// LF at random: the head is accepted exactly when every line ends in CRLF. HTTP/1.0
        /// heads may have no field at all.
        #[test]
        fn a_head_is_accepted_exactly_when_every_line_ends_in_crlf(
            fields in proptest::collection::vec(("X-[a-z]{1,6}", "[ -~]{0,8}"), 0..6),
            with_host in proptest::prelude::any::<bool>(),
            bare in proptest::collection::vec(proptest::prelude::any::<bool>(), 8),
        ) {
            let end = |line: usize| if bare[line] { "\n" } else { "\r\n" };
            let (mut input, mut line) = if with_host {
                (format!("GET /a HTTP/1.1{}Host: a{}", end(0), end(1)), 2)
            } else {
                (format!("GET /a HTTP/1.0{}", end(0)), 1)
            };
            for (name, value) in &fields {
                input += &format!("{name}:{value}{}", end(line));
                line += 1;
            }
            let lines = line + 1;
            input += end(lines - 1);
            let result = parse_head(&mut BytesMut::from(input.as_bytes()), &LIMITS);
            if bare[..lines].contains(&true) {
                proptest::prop_assert_eq!(
                    result.err(),
                    Some(HttpError::Malformed("bare CR or LF in request head")),
                    "{:?}", input
                );
            } else {
                proptest::prop_assert!(matches!(result, Ok(Some(_))), "{:?}: {:?}", input, result.err());
            }
        }
    }

    #[test]
    fn pipelined_heads_leave_the_rest() {
        let first = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n";
        let second = b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        let mut buf = BytesMut::new();
        buf.extend_from_slice(first);
        buf.extend_from_slice(second);
        let head = parse_head(&mut buf, &LIMITS).unwrap().unwrap();
        assert_eq!((head.method(), head.path()), ("GET", "/1"));
        assert_eq!(&buf[..], &second[..]);
        let head = parse_head(&mut buf, &LIMITS).unwrap().unwrap();
        assert_eq!(
            (head.method(), head.path(), head.framing()),
            ("POST", "/2", BodyFraming::Length(2))
        );
        assert_eq!(&buf[..], b"hi");
        check(
            &LIMITS,
            &[&first[..], &second[..]].concat(),
            "GET /1 - Http11 Empty keep-alive rest=50",
        );
    }

    #[test]
    fn accessors() {
        let mut buf = BytesMut::from(
            &b"\r\nHEAD /x?y HTTP/1.1\r\nHost: example.com\r\nX-Empty:\r\nx-two: 1\r\nX-Two: 2\r\n\r\nrest"[..],
        );
        let head = parse_head(&mut buf, &LIMITS).unwrap().unwrap();
        assert!(head.is_head());
        assert_eq!(head.target(), "/x?y");
        assert_eq!(head.header("HOST"), Some(&b"example.com"[..]));
        assert_eq!(head.header("x-empty"), Some(&b""[..]));
        assert_eq!(head.header("X-TWO"), Some(&b"1"[..]));
        assert_eq!(head.header("missing"), None);
        assert_eq!(head.authority(), None);
        let names: Vec<_> = head
            .headers()
            .map(|(name, value)| format!("{name}={}", String::from_utf8_lossy(value)))
            .collect();
        assert_eq!(
            names,
            ["Host=example.com", "X-Empty=", "x-two=1", "X-Two=2"]
        );
        assert_eq!(&buf[..], b"rest");
    }

    #[test]
    fn authority_is_the_absolute_form_targets() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (
                b"GET http://good.example/x?y HTTP/1.1\r\nHost: evil\r\n\r\n",
                Some("good.example"),
            ),
            (
                b"GET HTTPS://h:8443 HTTP/1.1\r\nHost: a\r\n\r\n",
                Some("h:8443"),
            ),
            (
                b"GET http://[::1]?q HTTP/1.1\r\nHost: a\r\n\r\n",
                Some("[::1]"),
            ),
            (b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", None),
            (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", None),
        ];
        for &(raw, expected) in cases {
            let head = parse_head(&mut BytesMut::from(raw), &LIMITS)
                .unwrap()
                .unwrap();
            assert_eq!(
                head.authority(),
                expected,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
            let host = expected.unwrap_or("a").as_bytes();
            assert_eq!(
                head.host(),
                Some(host),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    proptest::proptest! {
        /// The branch-free common case never accepts a Host the full rules reject.
        #[test]
        fn plain_host_agrees_with_the_full_rules(
            value in proptest::collection::vec(
                proptest::sample::select(b"aZ09.-_~!$&'()*+,;=%:[]@ /\x7f\x80".to_vec()),
                0..12,
            ),
        ) {
            if is_plain_host(&value) {
                proptest::prop_assert!(is_valid_host_any(&value), "{:?}", String::from_utf8_lossy(&value));
            }
            proptest::prop_assert_eq!(is_valid_host(&value), is_valid_host_any(&value));
        }

        /// `headers` gives the names and values httparse parsed, however many fields (inline or
        /// not) and whatever whitespace surrounds a value.
        #[test]
        fn headers_are_what_httparse_parsed(
            fields in proptest::collection::vec(
                (
                    "X-[A-Za-z0-9!#$%&'*+.^_`|~-]{0,12}",
                    "[ \t]{0,3}",
                    proptest::collection::vec(
                        proptest::prop_oneof![
                            proptest::strategy::Strategy::prop_map(proptest::char::range('!', '~'), |c| c as u8),
                            proptest::sample::select(vec![b' ', b'\t', b':', 0x80, 0xff]),
                        ],
                        0..24,
                    ),
                    "[ \t]{0,3}",
                ),
                0..24,
            ),
            version in proptest::sample::select(vec!["1.0", "1.1"]),
        ) {
            let mut wire = format!("GET /p?q HTTP/{version}\r\nHost: a\r\n").into_bytes();
            for (name, before, value, after) in &fields {
                wire.extend_from_slice(name.as_bytes());
                wire.push(b':');
                wire.extend_from_slice(before.as_bytes());
                wire.extend_from_slice(value);
                wire.extend_from_slice(after.as_bytes());
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"\r\n");
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut expected = httparse::Request::new(&mut slots);
            proptest::prop_assert!(expected.parse(&wire).unwrap().is_complete());
            let expected: Vec<(&str, &[u8])> =
                expected.headers.iter().map(|field| (field.name, field.value)).collect();
            let limits = HeadLimits { header_count_max: 32, head_bytes_max: 4096, ..LIMITS };
            let head = parse_head(&mut BytesMut::from(&wire[..]), &limits).unwrap().unwrap();
            let got: Vec<(&str, &[u8])> = head.headers().collect();
            proptest::prop_assert_eq!(got, expected);
        }
    }
}
