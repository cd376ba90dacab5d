//! Fuzz target: arbitrary bytes as a write-ahead log segment. `scan` must never panic, must stop
//! at a byte offset inside the input, and every record it accepts must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percore::txn::record;

fuzz_target!(|data: &[u8]| {
    let scan = record::scan(data);
    assert!(scan.valid_bytes <= data.len());
    let mut encoded = Vec::new();
    for r in &scan.records {
        record::encode(r, &mut encoded);
    }
    assert_eq!(&encoded[..], &data[..scan.valid_bytes], "records re-encode to the bytes they came from");
    let _ = record::read_snapshot(data);
});
