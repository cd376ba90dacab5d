//! Response encoding: status line, header block, chunk framing; only appends to a `BytesMut`,
//! never writes to a socket and never decides keep-alive policy.

use bytes::{BufMut, BytesMut};

use crate::http::date::DATE_BYTES;

/// The interim response sent before reading a body announced with `Expect: 100-continue`.
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How the response body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// `Content-Length: n` (also for a HEAD response, with the length the GET would have).
    Length(u64),
    /// `Transfer-Encoding: chunked`; the caller then writes `encode_chunk`s and `encode_last_chunk`.
    Chunked,
    /// No framing header: 1xx/204/304, or the caller writes nothing.
    None,
}

/// The reason phrase for `status` (RFC 9110 §15); "Unknown" for codes it does not name.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Appends a complete response head.
///
/// A field whose name is not a token, or whose value holds CR, LF, NUL or another control byte,
/// is left out: an application may copy request data (a decoded query, say) into a header, and
/// that must neither split the response nor crash the shard. Callers that want to reject such
/// a field instead check it first with `is_valid_field`.
/// For 1xx and 204 no framing header is written whatever `body` says (RFC 9110 §8.6 and
/// RFC 9112 §6.1: those responses never have content).
pub fn encode_head<'a>(
    out: &mut BytesMut,
    status: u16,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: ResponseBody,
    date: &[u8; DATE_BYTES],
    close: bool,
) {
    let mut head = HeadWriter::new(out, status, date);
    for (name, value) in headers {
        head.field(name, value);
    }
    head.finish(body, close);
}

/// A response head being appended, in its fixed order: the status line, `Server` and `Date`
/// (`new`), the fields, then the framing, `Connection: close` and the empty line (`finish`).
/// `encode_head` in parts, for a caller with fields of several kinds (the connection's own,
/// encoded once, and a handler's, checked one by one).
pub struct HeadWriter<'o> {
    out: &'o mut BytesMut,
    status: u16,
}

impl<'o> HeadWriter<'o> {
    pub fn new(out: &'o mut BytesMut, status: u16, date: &[u8; DATE_BYTES]) -> HeadWriter<'o> {
        assert!(
            (100..=999).contains(&status),
            "status {status} is not three digits"
        );
        // One reservation for the common head (the buffer is reused, so this rarely allocates);
        // a longer one grows as it is written.
        out.reserve(HEAD_FIXED_BYTES + HEAD_FIELDS_BYTES_TYPICAL);
        match status {
            200 => out.put_slice(b"HTTP/1.1 200 OK\r\nServer: percore\r\nDate: "),
            _ => {
                out.put_slice(b"HTTP/1.1 ");
                out.put_slice(itoa::Buffer::new().format(status).as_bytes());
                out.put_u8(b' ');
                out.put_slice(reason_phrase(status).as_bytes());
                out.put_slice(b"\r\nServer: percore\r\nDate: ");
            }
        }
        out.put_slice(date);
        out.put_slice(b"\r\n");
        HeadWriter { out, status }
    }

    /// Appends a field, or nothing when `is_valid_field` refuses it.
    pub fn field(&mut self, name: &str, value: &[u8]) {
        if is_valid_field(name, value) {
            self.line(name.as_bytes(), value);
        }
    }

    /// Appends `Content-Type: value`, or nothing when the value is not a valid field value:
    /// `field` without the check of a name known to be valid.
    pub fn content_type(&mut self, value: &[u8]) {
        if is_valid_field_value(value) {
            // The name and separator as one constant: a copy the compiler inlines.
            self.out.reserve(value.len() + 16);
            self.out.put_slice(b"Content-Type: ");
            self.out.put_slice(value);
            self.out.put_slice(b"\r\n");
        }
    }

    /// Appends field lines encoded and checked once (`ResponseFields::lines`).
    pub fn lines(&mut self, lines: &EncodedFields) {
        self.out.put_slice(lines.as_bytes());
    }

    fn line(&mut self, name: &[u8], value: &[u8]) {
        self.out.reserve(name.len() + value.len() + 4);
        put_field_line(self.out, name, value);
    }

    /// The framing field (none for 1xx and 204, RFC 9110 §8.6 and RFC 9112 §6.1: those responses
    /// never have content), `Connection: close` if `close`, and the empty line.
    pub fn finish(self, body: ResponseBody, close: bool) {
        let out = self.out;
        let has_no_content = (100..200).contains(&self.status) || self.status == 204;
        match body {
            _ if has_no_content => {}
            ResponseBody::Length(length) => {
                out.put_slice(b"Content-Length: ");
                out.put_slice(itoa::Buffer::new().format(length).as_bytes());
                out.put_slice(b"\r\n");
            }
            ResponseBody::Chunked => out.put_slice(b"Transfer-Encoding: chunked\r\n"),
            ResponseBody::None => {}
        }
        if close {
            out.put_slice(b"Connection: close\r\n");
        }
        out.put_slice(b"\r\n");
    }
}

/// Appends `name: value\r\n`, unchecked.
fn put_field_line(out: &mut impl BufMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Field lines (`Name: value\r\n` each) encoded and checked once, for many heads.
pub struct EncodedFields(Vec<u8>);

impl EncodedFields {
    /// # Panics
    /// If a field is not valid (`is_valid_field`): these come from the server's own config.
    pub fn new(fields: &[(&str, &[u8])]) -> EncodedFields {
        let mut lines = Vec::new();
        for &(name, value) in fields {
            assert!(is_valid_field(name, value), "invalid field {name:?}");
            put_field_line(&mut lines, name.as_bytes(), value);
        }
        EncodedFields(lines)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Field names matched without regard to case, most of them rejected by their length alone: the
/// names a server writes itself, which a handler's field may not repeat.
pub struct FieldNames {
    names: Vec<&'static str>,
    /// Bit n set: some name has n bytes (every name has fewer than 64). A handler's usual fields
    /// (Content-Type, a cookie, an ETag) match no length here and need no comparison.
    lengths: u64,
}

impl FieldNames {
    /// # Panics
    /// If a name has 64 bytes or more.
    pub fn new(names: impl IntoIterator<Item = &'static str>) -> FieldNames {
        let names: Vec<&'static str> = names.into_iter().collect();
        let lengths = names.iter().fold(0u64, |lengths, name| {
            assert!(name.len() < 64, "field name {name:?} is too long");
            lengths | 1 << name.len()
        });
        FieldNames { names, lengths }
    }

    pub fn contains(&self, name: &str) -> bool {
        name.len() < 64
            && self.lengths & 1 << name.len() != 0
            && self
                .names
                .iter()
                .any(|known| known.len() == name.len() && known.eq_ignore_ascii_case(name))
    }
}

/// Room for a head's fixed parts: status line (longest reason phrase: 31 bytes), Server, Date,
/// framing (a 20-digit length), `Connection: close`, blank line: 159 bytes at most.
const HEAD_FIXED_BYTES: usize = 192;

/// Room reserved for the fields a handler adds (a content type, a cookie).
const HEAD_FIELDS_BYTES_TYPICAL: usize = 128;

/// Appends one chunk: hex size, CRLF, data, CRLF. Empty data writes nothing, because a zero
/// size would end the body.
pub fn encode_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    // 16 hex digits hold any u64, and a usize fits in a u64 on every target we build for.
    let mut digits = [0u8; 16];
    let mut digits_index = digits.len();
    let mut remaining = data.len() as u64;
    loop {
        digits_index -= 1;
        digits[digits_index] = b"0123456789abcdef"[(remaining & 0xf) as usize];
        remaining >>= 4;
        if remaining == 0 {
            break;
        }
    }
    out.reserve(digits.len() - digits_index + data.len() + 4);
    out.put_slice(&digits[digits_index..]);
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Appends the last chunk and an empty trailer section.
pub fn encode_last_chunk(out: &mut BytesMut) {
    out.put_slice(b"0\r\n\r\n");
}

/// Whether `encode_head` writes this field: the name is a token (RFC 9110 §5.1) and the value is
/// `*( HTAB / SP / VCHAR / obs-text )` (RFC 9110 §5.5).
pub fn is_valid_field(name: &str, value: &[u8]) -> bool {
    !name.is_empty()
        && name.bytes().all(crate::http::parse::is_token_byte)
        && is_valid_field_value(value)
}

/// `*( HTAB / SP / VCHAR / obs-text )` (RFC 9110 §5.5).
fn is_valid_field_value(value: &[u8]) -> bool {
    // A fold, not `all`: no early exit, so it vectorizes (values are short and almost always ok).
    value.iter().fold(true, |ok, &byte| {
        ok & (byte == b'\t' || (byte >= b' ' && byte != 0x7f))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &[u8; DATE_BYTES] = b"Sun, 06 Nov 1994 08:49:37 GMT";

    struct HeadCase {
        status: u16,
        headers: &'static [(&'static str, &'static [u8])],
        body: ResponseBody,
        close: bool,
        expected: &'static str,
    }

    fn check(case: &HeadCase) {
        let mut out = BytesMut::new();
        encode_head(
            &mut out,
            case.status,
            case.headers.iter().copied(),
            case.body,
            DATE,
            case.close,
        );
        assert_eq!(std::str::from_utf8(&out).unwrap(), case.expected);
        // Round trip: what we wrote parses back as the same response.
        let mut parsed_headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut parsed_headers);
        let parsed = response.parse(&out).unwrap();
        assert_eq!(parsed, httparse::Status::Complete(out.len()));
        assert_eq!(response.code, Some(case.status));
        assert_eq!(response.reason, Some(reason_phrase(case.status)));
        assert_eq!(response.version, Some(1));
        let date = response
            .headers
            .iter()
            .find(|header| header.name == "Date")
            .unwrap();
        assert_eq!(date.value, DATE);
        for (name, value) in case.headers {
            assert!(
                response
                    .headers
                    .iter()
                    .any(|h| h.name == *name && h.value == *value)
            );
        }
    }

    #[test]
    fn heads() {
        let cases = [
            HeadCase {
                status: 200,
                headers: &[("Content-Type", b"text/plain")],
                body: ResponseBody::Length(5),
                close: false,
                expected: "HTTP/1.1 200 OK\r\nServer: percore\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n",
            },
            HeadCase {
                status: 404,
                headers: &[],
                body: ResponseBody::Chunked,
                close: true,
                expected: "HTTP/1.1 404 Not Found\r\nServer: percore\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            },
            HeadCase {
                status: 304,
                headers: &[("ETag", b"\"abc\"")],
                body: ResponseBody::None,
                close: false,
                expected: "HTTP/1.1 304 Not Modified\r\nServer: percore\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nETag: \"abc\"\r\n\r\n",
            },
            HeadCase {
                status: 204,
                headers: &[],
                body: ResponseBody::Length(10),
                close: false,
                expected: "HTTP/1.1 204 No Content\r\nServer: percore\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
            },
            HeadCase {
                status: 101,
                headers: &[],
                body: ResponseBody::Chunked,
                close: false,
                expected: "HTTP/1.1 101 Switching Protocols\r\nServer: percore\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
            },
            HeadCase {
                status: 599,
                headers: &[("X-Empty", b""), ("X-Obs", b"caf\xc3\xa9\tx")],
                body: ResponseBody::Length(u64::MAX),
                close: true,
                expected: "HTTP/1.1 599 Unknown\r\nServer: percore\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nX-Empty: \r\nX-Obs: caf\u{e9}\tx\r\nContent-Length: 18446744073709551615\r\nConnection: close\r\n\r\n",
            },
        ];
        for case in &cases {
            check(case);
        }
    }

    #[test]
    fn invalid_fields_are_left_out() {
        let headers: &[(&str, &[u8])] = &[
            ("X-Split", b"a\r\nSet-Cookie: x"),
            ("X-Lf", b"a\nb"),
            ("X-Nul", b"a\x00b"),
            ("X-Del", b"a\x7fb"),
            ("X:Y", b"a"),
            ("X Y", b"a"),
            ("", b"a"),
            ("X-Kept", b"ok"),
        ];
        let mut out = BytesMut::new();
        encode_head(
            &mut out,
            200,
            headers.iter().copied(),
            ResponseBody::Length(0),
            DATE,
            false,
        );
        let expected = "HTTP/1.1 200 OK\r\nServer: percore\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nX-Kept: ok\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
    }

    #[test]
    fn a_head_written_in_parts_is_the_head_written_at_once() {
        let own = EncodedFields::new(&[
            ("X-Shard", b"3"),
            ("Strict-Transport-Security", b"max-age=5"),
        ]);
        let mut parts = BytesMut::new();
        let mut head = HeadWriter::new(&mut parts, 404, DATE);
        head.lines(&own);
        head.content_type(b"text/html; charset=utf-8");
        head.field("ETag", b"\"1\"");
        head.finish(ResponseBody::Length(7), true);
        let mut whole = BytesMut::new();
        let fields: [(&str, &[u8]); 4] = [
            ("X-Shard", b"3"),
            ("Strict-Transport-Security", b"max-age=5"),
            ("Content-Type", b"text/html; charset=utf-8"),
            ("ETag", b"\"1\""),
        ];
        encode_head(&mut whole, 404, fields, ResponseBody::Length(7), DATE, true);
        assert_eq!(parts, whole);
        // Nothing is written of a content type that could split the head.
        let mut out = BytesMut::new();
        let mut head = HeadWriter::new(&mut out, 200, DATE);
        head.lines(&EncodedFields::new(&[]));
        head.content_type(b"text/plain\r\nSet-Cookie: x=1");
        head.finish(ResponseBody::Length(0), false);
        let expected = "HTTP/1.1 200 OK\r\nServer: percore\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
    }

    #[test]
    #[should_panic(expected = "invalid field")]
    fn encoded_fields_refuse_an_invalid_field() {
        EncodedFields::new(&[("X-Shard", b"1\r\nX: y")]);
    }

    #[test]
    fn field_names_match_whole_names_in_any_case() {
        let names = FieldNames::new(["content-length", "X-Shard", "a"]);
        for name in [
            "Content-Length",
            "CONTENT-LENGTH",
            "content-length",
            "x-shard",
            "A",
        ] {
            assert!(names.contains(name), "{name}");
        }
        let long = "x".repeat(100);
        for name in [
            "Content-Type",
            "content-lengths",
            "content-lengt",
            "X-Shards",
            "",
            "b",
            &long,
        ] {
            assert!(!names.contains(name), "{name}");
        }
        // The longest name a set may hold, and one that differs only in its last byte.
        let longest: &'static str = "n".repeat(63).leak();
        let names = FieldNames::new([longest]);
        assert!(names.contains(&"N".repeat(63)));
        assert!(!names.contains(&format!("{}m", "n".repeat(62))));
    }

    #[test]
    fn chunks() {
        // (data, the size line expected before it); empty data writes nothing at all.
        let cases: [(&[u8], &str); 5] = [
            (b"", ""),
            (b"a", "1\r\n"),
            (b"0123456789abcdef", "10\r\n"),
            (&[b'x'; 255], "ff\r\n"),
            (&[b'x'; 4096], "1000\r\n"),
        ];
        for (data, size_line) in cases {
            let mut out = BytesMut::new();
            encode_chunk(&mut out, data);
            let expected = if data.is_empty() {
                Vec::new()
            } else {
                [size_line.as_bytes(), data, b"\r\n"].concat()
            };
            assert_eq!(&out[..], &expected[..], "{size_line:?}");
        }
    }

    #[test]
    fn chunks_round_trip_through_body_decoder() {
        use crate::http::{BodyDecoder, BodyEvent, BodyFraming};
        let mut out = BytesMut::new();
        let pieces: [&[u8]; 4] = [b"hello", b"", &[7u8; 300], b" world"];
        for piece in pieces {
            encode_chunk(&mut out, piece);
        }
        encode_last_chunk(&mut out);
        out.extend_from_slice(b"NEXT");
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked, 1 << 20, 1024).unwrap();
        let mut body = Vec::new();
        loop {
            match decoder.decode(&mut out).unwrap() {
                Some(BodyEvent::Data(data)) => body.extend_from_slice(&data),
                Some(BodyEvent::End) => break,
                None => panic!("complete input must decode"),
            }
        }
        assert_eq!(body, pieces.concat());
        assert_eq!(&out[..], b"NEXT");
    }

    #[test]
    fn continue_100_parses() {
        let mut headers = [httparse::EMPTY_HEADER; 1];
        let mut response = httparse::Response::new(&mut headers);
        assert_eq!(
            response.parse(CONTINUE_100).unwrap(),
            httparse::Status::Complete(CONTINUE_100.len())
        );
        assert_eq!(response.code, Some(100));
    }
}
