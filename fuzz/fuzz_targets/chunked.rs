//! Fuzz target: arbitrary bytes as a chunked body, whole and then one byte at a time; the two
//! must give the same data and the same ending. Never does more than decode.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use percore::http::{BodyDecoder, BodyEvent, BodyFraming, HttpError};

const BODY_BYTES_MAX: u64 = 4096;
const TRAILER_BYTES_MAX: usize = 256;

/// The decoded data, and how decoding ended: Some(Ok(rest bytes)) at End, Some(Err) on error,
/// None if the input ran out first.
fn decode(data: &[u8], step_bytes: usize) -> (Vec<u8>, Option<Result<usize, HttpError>>) {
    let mut decoder =
        match BodyDecoder::new(BodyFraming::Chunked, BODY_BYTES_MAX, TRAILER_BYTES_MAX) {
            Ok(decoder) => decoder,
            Err(error) => return (Vec::new(), Some(Err(error))),
        };
    let mut buf = BytesMut::new();
    let mut fed_bytes = 0;
    let mut body = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(BodyEvent::Data(chunk))) => body.extend_from_slice(&chunk),
            Ok(Some(BodyEvent::End)) => {
                return (body, Some(Ok(buf.len() + data.len() - fed_bytes)));
            }
            Err(error) => return (body, Some(Err(error))),
            Ok(None) if fed_bytes == data.len() => return (body, None),
            Ok(None) => {
                let next = (fed_bytes + step_bytes).min(data.len());
                buf.extend_from_slice(&data[fed_bytes..next]);
                fed_bytes = next;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (whole_body, whole_end) = decode(data, data.len().max(1));
    let (split_body, split_end) = decode(data, 1);
    assert_eq!(whole_body, split_body);
    assert_eq!(
        whole_end.map(|end| end.map(|_| ())),
        split_end.map(|end| end.map(|_| ()))
    );
    assert!(whole_body.len() as u64 <= BODY_BYTES_MAX);
});
