//! Fuzz target: arbitrary bytes as a `POST /kv/tx` body. `op::parse` must never panic, must
//! answer 400 or 413 with a message, and every transaction it accepts must be within its bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percore::txn::TxnLimits;
use percore::txn::op::{self, Op};

fuzz_target!(|data: &[u8]| {
    let small = TxnLimits {
        key_bytes_max: 8,
        value_bytes_max: 16,
        ops_max: 3,
        txn_bytes_max: 40,
        ..TxnLimits::default()
    };
    for limits in [TxnLimits::default(), small] {
        match op::parse(data, &limits) {
            Ok(ops) => {
                assert!(!ops.is_empty() && ops.len() <= limits.ops_max);
                for op in &ops {
                    assert!(!op.key().is_empty() && op.key().len() <= limits.key_bytes_max);
                    if let Op::Put { value, .. } = op {
                        assert!(value.len() <= limits.value_bytes_max);
                    }
                }
            }
            Err(error) => {
                assert!(error.status == 400 || error.status == 413, "{error:?}");
                assert!(!error.message.is_empty());
            }
        }
    }
});
