//! Fuzz target: arbitrary bytes as a stream of pipelined requests, through `parse_head` and then
//! `BodyDecoder` on the rest: no panic, progress is bounded, and no accepted head holds a bare CR
//! or LF (the line-ending rule looks only at line ends; this checks every byte).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use percore::http::{BodyDecoder, BodyEvent, HeadLimits, parse_head};

/// Small bounds so the fuzzer reaches every limit quickly.
const LIMITS: HeadLimits = HeadLimits {
    head_bytes_max: 2048,
    header_count_max: 16,
    uri_bytes_max: 256,
};
const BODY_BYTES_MAX: u64 = 4096;
const TRAILER_BYTES_MAX: usize = 256;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // Every round consumes at least one byte or stops, so this ends.
    loop {
        // `buf` is always what is left of `data`: everything is consumed from the front.
        let start = data.len() - buf.len();
        let Ok(Some(head)) = parse_head(&mut buf, &LIMITS) else {
            return;
        };
        let raw = &data[start..data.len() - buf.len()];
        for (index, &byte) in raw.iter().enumerate() {
            match byte {
                b'\n' => assert!(index > 0 && raw[index - 1] == b'\r', "bare LF in {raw:?}"),
                b'\r' => assert_eq!(raw.get(index + 1), Some(&b'\n'), "bare CR in {raw:?}"),
                _ => {}
            }
        }
        let _ = (
            head.method(),
            head.path(),
            head.query(),
            head.keep_alive(),
            head.is_head(),
        );
        for (name, _) in head.headers() {
            assert!(head.header(name).is_some());
        }
        let Ok(mut decoder) = BodyDecoder::new(head.framing(), BODY_BYTES_MAX, TRAILER_BYTES_MAX)
        else {
            return;
        };
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(BodyEvent::Data(data))) => assert!(!data.is_empty()),
                Ok(Some(BodyEvent::End)) => break,
                Ok(None) | Err(_) => return,
            }
        }
    }
});
