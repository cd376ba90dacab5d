//! Pure HTTP/1.1 protocol: request-head parsing, body decoding, response encoding, the Date
//! cache and the error table. Never does IO and knows nothing of sockets, buffers' owners or
//! glommio: it takes bytes and limits and returns heads, decoders and errors.
//!
//! Files: `parse.rs` (request heads and the smuggling rules), `body.rs` (Content-Length and
//! chunked bodies), `encode.rs` (response heads and chunks), `date.rs` (IMF-fixdate cache),
//! `error.rs` (`HttpError` and its status table), `forwarded.rs` (the client's address behind
//! trusted proxies).

mod body;
mod date;
mod encode;
mod error;
mod forwarded;
mod parse;
pub mod segment;

pub use body::{BodyDecoder, BodyEvent};
pub use date::{DATE_BYTES, DateCache};
pub use encode::{
    CONTINUE_100, EncodedFields, FieldNames, HeadWriter, ResponseBody, encode_chunk, encode_head,
    encode_last_chunk, reason_phrase,
};
pub use error::HttpError;
pub use forwarded::TrustedProxies;
pub use parse::{EMPTY_LINES_BEFORE_REQUEST_MAX, RequestHead, parse_head};

/// The largest `HeadLimits::header_count_max` the config accepts: `parse_head` keeps this many
/// (uninitialised) header slots on its stack, about 8 KiB.
pub const HEADER_COUNT_CEILING: usize = 256;

/// The largest `HeadLimits::head_bytes_max` the config accepts (64 KiB - 1, four times nginx's
/// largest default header buffer): offsets into a head fit in 16 bits.
pub const HEAD_BYTES_CEILING: usize = u16::MAX as usize;

/// The bounds on one request head; the values come from the config's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// Request line + header fields + the empty line (and any empty lines before them); at
    /// most `HEAD_BYTES_CEILING`.
    pub head_bytes_max: usize,
    /// Header fields, Host included; at most `HEADER_COUNT_CEILING`.
    pub header_count_max: usize,
    /// Bytes of the request-target.
    pub uri_bytes_max: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: no Content-Length and no Transfer-Encoding, or `Content-Length: 0`.
    Empty,
    /// `Content-Length: n`, n > 0.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

#[cfg(test)]
mod tests {
    //! Whole-stream properties: pipelined requests decode the same however the bytes are split.

    use bytes::BytesMut;
    use proptest::prelude::*;

    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        head_bytes_max: 4096,
        header_count_max: 32,
        uri_bytes_max: 256,
    };
    const BODY_BYTES_MAX: u64 = 1 << 16;
    const TRAILER_BYTES_MAX: usize = 1024;

    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Request {
        method: String,
        target: String,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    }

    #[derive(Clone, Debug)]
    enum Body {
        Empty,
        Length(Vec<u8>),
        Chunked {
            chunks: Vec<Vec<u8>>,
            extension: bool,
            trailers: Vec<(String, String)>,
        },
    }

    /// Feeds `pieces` in order through `parse_head` and `BodyDecoder`, like a connection would.
    fn decode_stream<'a>(
        pieces: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Vec<Request>, HttpError> {
        let (requests, error, ended_mid_request) = decode_outcome(pieces);
        assert!(!ended_mid_request, "stream ended mid-request");
        error.map_or(Ok(requests), Err)
    }

    /// The requests completed before the stream ended or failed, the error if it failed, and
    /// whether it ended inside a request.
    fn decode_outcome<'a>(
        pieces: impl Iterator<Item = &'a [u8]>,
    ) -> (Vec<Request>, Option<HttpError>, bool) {
        let mut buf = BytesMut::new();
        let mut requests = Vec::new();
        let mut current: Option<(Request, BodyDecoder)> = None;
        for piece in pieces {
            buf.extend_from_slice(piece);
            if let Err(error) = decode_buffered(&mut buf, &mut current, &mut requests) {
                return (requests, Some(error), false);
            }
        }
        (requests, None, current.is_some() || !buf.is_empty())
    }

    fn decode_buffered(
        buf: &mut BytesMut,
        current: &mut Option<(Request, BodyDecoder)>,
        requests: &mut Vec<Request>,
    ) -> Result<(), HttpError> {
        loop {
            if let Some((request, decoder)) = current {
                match decoder.decode(buf)? {
                    Some(BodyEvent::Data(data)) => request.body.extend_from_slice(&data),
                    Some(BodyEvent::End) => {
                        requests.extend(current.take().map(|(request, _)| request))
                    }
                    None => return Ok(()),
                }
            } else {
                let Some(head) = parse_head(buf, &LIMITS)? else {
                    return Ok(());
                };
                let request = Request {
                    method: head.method().to_string(),
                    target: head.target().to_string(),
                    headers: head
                        .headers()
                        .map(|(name, value)| (name.to_string(), value.to_vec()))
                        .collect(),
                    body: Vec::new(),
                };
                let decoder = BodyDecoder::new(head.framing(), BODY_BYTES_MAX, TRAILER_BYTES_MAX)?;
                *current = Some((request, decoder));
            }
        }
    }

    /// The wire bytes of one request, and the request the decoder must give back.
    fn encode_request(
        method: &str,
        target: &str,
        fields: &[(String, String)],
        body: &Body,
    ) -> (Vec<u8>, Request) {
        let mut headers: Vec<(String, Vec<u8>)> = vec![("Host".into(), b"example.com".to_vec())];
        headers.extend(
            fields
                .iter()
                .map(|(name, value)| (name.clone(), value.clone().into_bytes())),
        );
        let mut payload = Vec::new();
        let mut body_bytes = Vec::new();
        match body {
            Body::Empty => {}
            Body::Length(data) => {
                headers.push(("Content-Length".into(), data.len().to_string().into_bytes()));
                body_bytes = data.clone();
            }
            Body::Chunked {
                chunks,
                extension,
                trailers,
            } => {
                headers.push(("Transfer-Encoding".into(), b"chunked".to_vec()));
                let mut wire = BytesMut::new();
                for chunk in chunks.iter().filter(|chunk| !chunk.is_empty()) {
                    if *extension {
                        wire.extend_from_slice(
                            format!("{:X};ext=\"v\"\r\n", chunk.len()).as_bytes(),
                        );
                        wire.extend_from_slice(chunk);
                        wire.extend_from_slice(b"\r\n");
                    } else {
                        encode_chunk(&mut wire, chunk);
                    }
                    body_bytes.extend_from_slice(chunk);
                }
                wire.extend_from_slice(b"0\r\n");
                for (name, value) in trailers {
                    wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                wire.extend_from_slice(b"\r\n");
                payload = wire.to_vec();
            }
        }
        let mut wire = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
        for (name, value) in &headers {
            wire.extend_from_slice(name.as_bytes());
            wire.extend_from_slice(b": ");
            wire.extend_from_slice(value);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        if let Body::Length(data) = body {
            wire.extend_from_slice(data);
        }
        wire.extend_from_slice(&payload);
        let request = Request {
            method: method.into(),
            target: target.into(),
            headers,
            body: body_bytes,
        };
        (wire, request)
    }

    fn field() -> impl Strategy<Value = (String, String)> {
        ("X-[A-Za-z0-9-]{1,10}", "[!-~]([ -~]{0,18}[!-~])?")
    }

    fn body() -> impl Strategy<Value = Body> {
        prop_oneof![
            Just(Body::Empty),
            proptest::collection::vec(any::<u8>(), 1..200).prop_map(Body::Length),
            (
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
                any::<bool>(),
                proptest::collection::vec(field(), 0..3),
            )
                .prop_map(|(chunks, extension, trailers)| Body::Chunked {
                    chunks,
                    extension,
                    trailers
                }),
        ]
    }

    fn request() -> impl Strategy<Value = (Vec<u8>, Request)> {
        (
            prop_oneof![
                Just("GET"),
                Just("POST"),
                Just("PUT"),
                Just("DELETE"),
                Just("PATCH"),
                Just("HEAD"),
                Just("X-CUSTOM")
            ],
            "/[a-z0-9/._~-]{0,30}(\\?[a-z0-9=&%]{0,20})?",
            proptest::collection::vec(field(), 0..6),
            body(),
        )
            .prop_map(|(method, target, fields, body)| {
                encode_request(method, &target, &fields, &body)
            })
    }

    proptest! {
        #[test]
        fn pipelined_stream_decodes_the_same_however_split(
            requests in proptest::collection::vec(request(), 1..5),
            split_points in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
        ) {
            let stream: Vec<u8> = requests.iter().flat_map(|(wire, _)| wire.clone()).collect();
            let expected: Vec<Request> = requests.into_iter().map(|(_, request)| request).collect();
            let whole = decode_stream(std::iter::once(&stream[..]));
            prop_assert_eq!(whole.as_ref(), Ok(&expected));

            let mut cuts: Vec<usize> = split_points.iter().map(|index| index.index(stream.len() + 1)).collect();
            cuts.extend([0, stream.len()]);
            cuts.sort_unstable();
            let pieces = cuts.windows(2).map(|cut| &stream[cut[0]..cut[1]]);
            prop_assert_eq!(decode_stream(pieces), whole.clone());

            prop_assert_eq!(decode_stream(stream.chunks(1)), whole);
        }
    }

    /// Fragments that make mostly-HTTP noise, so random streams reach deep into the parsers.
    fn noise() -> impl Strategy<Value = Vec<u8>> {
        let fragments: &[&[u8]] = &[
            b"GET ",
            b"POST ",
            b"/",
            b"/a?b",
            b" HTTP/1.1",
            b" HTTP/1.0",
            b" HTTP/2.0",
            b"\r\n",
            b"\n",
            b"\r",
            b"Host: a",
            b"Content-Length: 3",
            b"Content-Length: 99999",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: gzip",
            b"Connection: close",
            b"Expect: 100-continue",
            b"0\r\n",
            b"5\r\n",
            b"abc",
            b":",
            b" ",
            b"\t",
            b";",
            b"=",
            b"\"",
            b"X: y",
            b"\r\n\r\n",
        ];
        let fragment = prop_oneof![
            3 => proptest::sample::select(fragments).prop_map(<[u8]>::to_vec),
            1 => any::<u8>().prop_map(|byte| vec![byte]),
        ];
        proptest::collection::vec(fragment, 0..60).prop_map(|fragments| fragments.concat())
    }

    proptest! {
        /// Any bytes, valid or not: no panic, and byte-by-byte feeding gives the same requests
        /// and the same error as feeding the stream whole.
        #[test]
        fn any_stream_decodes_the_same_however_split(stream in noise()) {
            let whole = decode_outcome(std::iter::once(&stream[..]));
            prop_assert_eq!(decode_outcome(stream.chunks(1)), whole);
        }
    }

    /// Every two-piece split of a fixed pipelined stream that has every body kind.
    #[test]
    fn every_byte_boundary() {
        let chunked = Body::Chunked {
            chunks: vec![b"hello ".to_vec(), b"world".to_vec()],
            extension: true,
            trailers: vec![("X-Sum".into(), "1".into())],
        };
        let parts = [
            encode_request(
                "POST",
                "/a?b=c",
                &[("X-A".into(), "1".into())],
                &Body::Length(b"abc".to_vec()),
            ),
            encode_request("GET", "/", &[], &Body::Empty),
            encode_request("PUT", "/c", &[], &chunked),
        ];
        let stream: Vec<u8> = parts.iter().flat_map(|(wire, _)| wire.clone()).collect();
        let expected: Vec<Request> = parts.into_iter().map(|(_, request)| request).collect();
        for cut in 0..=stream.len() {
            let pieces = [&stream[..cut], &stream[cut..]];
            assert_eq!(
                decode_stream(pieces.into_iter()),
                Ok(expected.clone()),
                "cut at {cut}"
            );
        }
    }
}
