//! Transaction ops: the JSON contract (bounds and precise errors; the parsing and rendering themselves are in json.rs), transaction errors and their status codes, and key ownership; pure, never touches a partition.
//!
//! Request: `{"ops": [{"op": "get", "key": "a"}, {"op": "put", "key": "b", "value": "text"},
//! {"op": "delete", "key": "c"}, {"op": "add", "key": "n", "delta": -5, "floor": 0},
//! {"op": "check", "key": "d", "version": 3}, {"op": "check", "key": "e", "absent": true}]}`.
//! Unknown fields are errors, so a typo never silently changes a transaction, and so are fields
//! given twice in one object, so no two parsers can read the same body as different transactions.
//!
//! Result entries, one per op, in order (`render_outcome`):
//! - get: `{"value": "text", "version": 7}`, or `{"value": null}` when the key is absent;
//! - put: `{"version": 8}`;
//! - delete: `{"deleted": true}` when the key existed, else `{"deleted": false}`;
//! - add: `{"value": 42, "version": 9}`;
//! - check: `{}`.
//!
//! Ops see the effects of earlier ops of the same transaction (a get after a put returns the put
//! value, with the version the transaction will commit at).
//!
//! `add` treats an absent key as 0 and stores its result as decimal text. A stored value that is not
//! the decimal text of an i64, a result that overflows i64, or one below `floor` fails the op like a
//! failed check: 412 with `failed_op` (the request was well-formed; the data did not fit).
//!
//! Values are bytes. A put carries UTF-8 text as `value` or any bytes as `value_base64`; a get
//! answers `value` for UTF-8 text and `value_base64` for anything else, so a read-modify-write of
//! a binary value through `/kv/tx` gives back the same bytes.

use crate::txn::TxnLimits;
use crate::txn::json;
use bytes::Bytes;

/// A key's owner shard: FNV-1a 64 of the key bytes, modulo the shard count. Stable across
/// processes, builds and versions (never std's `RandomState`), so a restart with the same shard
/// count finds every key where its log put it.
pub fn owner(key: &[u8], shard_count: usize) -> usize {
    assert!(shard_count > 0, "a node has at least one shard");
    (fnv1a64(key) % shard_count as u64) as usize
}

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key exists at exactly this version.
    Version(u64),
    /// The key does not exist.
    Absent,
    /// The key exists, at any version (`If-Match: *`).
    Present,
    /// The key exists at one of these versions (`If-Match: "6", "7"`; none: never true).
    OneOf(Vec<u64>),
    /// The key is absent or at none of these versions (`If-None-Match: "6", W/"7"`).
    NoneOf(Vec<u64>),
}

impl Expect {
    /// Whether a key at `actual` (None: absent) meets the expectation.
    pub fn holds(&self, actual: Option<u64>) -> bool {
        match (self, actual) {
            (Expect::Version(want), actual) => actual == Some(*want),
            (Expect::Absent, actual) => actual.is_none(),
            (Expect::Present, actual) => actual.is_some(),
            (Expect::OneOf(wants), actual) => actual.is_some_and(|a| wants.contains(&a)),
            (Expect::NoneOf(wants), actual) => !actual.is_some_and(|a| wants.contains(&a)),
        }
    }

    /// What a failed expectation found: a key that should not be there, or the wrong version.
    pub fn failure(&self, actual: Option<u64>) -> FailReason {
        match (self, actual) {
            (Expect::Absent | Expect::NoneOf(_), Some(actual)) => FailReason::Present { actual },
            _ => FailReason::Version { actual },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Get {
        key: Bytes,
    },
    Put {
        key: Bytes,
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
    /// Integer add; fails (412) if the result would be below `floor`.
    Add {
        key: Bytes,
        delta: i64,
        floor: Option<i64>,
    },
    Check {
        key: Bytes,
        expect: Expect,
    },
}

impl Op {
    pub fn key(&self) -> &Bytes {
        match self {
            Op::Get { key }
            | Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Add { key, .. }
            | Op::Check { key, .. } => key,
        }
    }

    pub fn is_write(&self) -> bool {
        matches!(self, Op::Put { .. } | Op::Delete { .. } | Op::Add { .. })
    }

    /// `If-Match: "7"` on a plain HTTP request.
    pub fn check_version(key: Bytes, version: u64) -> Op {
        Op::Check {
            key,
            expect: Expect::Version(version),
        }
    }

    /// `If-None-Match: *` on a plain HTTP request.
    pub fn check_absent(key: Bytes) -> Op {
        Op::Check {
            key,
            expect: Expect::Absent,
        }
    }
}

/// The ETag of a version: a strong validator, the decimal version in quotes.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// One member of an If-Match or If-None-Match list (RFC 9110 §8.8.3): weak or strong, and the
/// version when its opaque tag is one we make (`"7"`); any other tag is valid but never ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntityTag {
    pub weak: bool,
    pub version: Option<u64>,
}

/// An If-Match or If-None-Match field value (RFC 9110 §13.1.1, §13.1.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// `*`
    Any,
    /// `#entity-tag`: at least one member.
    Tags(Vec<EntityTag>),
}

impl Condition {
    /// The check op of `If-Match` (§13.1.1): `*` is true when the key exists; a list when one
    /// member matches by the strong comparison (§8.8.3.2), which a weak tag never passes.
    pub fn if_match(&self, key: Bytes) -> Op {
        let expect = match self {
            Condition::Any => Expect::Present,
            Condition::Tags(tags) => {
                let versions: Vec<u64> = tags
                    .iter()
                    .filter(|tag| !tag.weak)
                    .filter_map(|tag| tag.version)
                    .collect();
                match versions.as_slice() {
                    [version] => Expect::Version(*version),
                    _ => Expect::OneOf(versions),
                }
            }
        };
        Op::Check { key, expect }
    }

    /// The check op of `If-None-Match` (§13.1.2): `*` is true when the key does not exist; a
    /// list when no member matches by the weak comparison (`W/"7"` matches version 7).
    pub fn if_none_match(&self, key: Bytes) -> Op {
        let expect = match self {
            Condition::Any => Expect::Absent,
            Condition::Tags(tags) => {
                Expect::NoneOf(tags.iter().filter_map(|tag| tag.version).collect())
            }
        };
        Op::Check { key, expect }
    }
}

/// Parses one field line of If-Match or If-None-Match: `*`, or a comma-separated list of entity
/// tags (`"7"`, `W/"7"`, any `etagc` between the quotes; empty list elements are skipped,
/// §5.6.1). None when it is neither, or has no tag.
pub fn parse_condition(value: &[u8]) -> Option<Condition> {
    if value.trim_ascii() == b"*" {
        return Some(Condition::Any);
    }
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_ascii_start();
        match rest {
            [] => break,
            [b',', after @ ..] => rest = after,
            _ => {
                let (tag, after) = parse_entity_tag(rest)?;
                tags.push(tag);
                rest = after.trim_ascii_start();
                if !rest.is_empty() && rest[0] != b',' {
                    return None;
                }
            }
        }
    }
    (!tags.is_empty()).then_some(Condition::Tags(tags))
}

/// `[ "W/" ] DQUOTE *etagc DQUOTE` at the start of `text` (etagc: %x21 / %x23-7E / obs-text),
/// and what follows it.
fn parse_entity_tag(text: &[u8]) -> Option<(EntityTag, &[u8])> {
    let (weak, text) = match text.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let text = text.strip_prefix(b"\"")?;
    let end = text.iter().position(|&b| b == b'"')?;
    let opaque = &text[..end];
    if !opaque
        .iter()
        .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
    {
        return None;
    }
    let tag = EntityTag {
        weak,
        version: decimal(opaque),
    };
    Some((tag, &text[end + 1..]))
}

/// The u64 that `etag` writes as exactly these digits (no sign, no leading zero: the strong
/// comparison is byte for byte, so `"07"` is not `"7"`); None for anything else.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || (digits[0] == b'0' && digits.len() > 1) {
        return None;
    }
    digits.iter().try_fold(0u64, |number, &digit| {
        if !digit.is_ascii_digit() {
            return None;
        }
        number.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

/// A request the client got wrong: 400 (malformed) or 413 (over a bound), with what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub status: u16,
    pub message: String,
}

pub(crate) fn bad(message: String) -> ParseError {
    ParseError {
        status: 400,
        message,
    }
}

pub(crate) fn too_large(message: String) -> ParseError {
    ParseError {
        status: 413,
        message,
    }
}

/// Parses and bounds-checks a transaction body (in one pass: txn/json.rs).
pub fn parse(body: &[u8], limits: &TxnLimits) -> Result<Vec<Op>, ParseError> {
    let ops = json::parse_ops(body, limits.ops_max)?;
    validate(&ops, limits)?;
    Ok(ops)
}

/// Bounds of a transaction however it was built (JSON, or a plain `PUT /kv/{key}`).
pub fn validate(ops: &[Op], limits: &TxnLimits) -> Result<(), ParseError> {
    if ops.is_empty() {
        return Err(bad("a transaction needs at least one op".to_string()));
    }
    if ops.len() > limits.ops_max {
        return Err(too_large(format!(
            "{} ops, over the bound of {}",
            ops.len(),
            limits.ops_max
        )));
    }
    let mut txn_bytes = 0;
    for (index, op) in ops.iter().enumerate() {
        let key = op.key();
        if key.is_empty() {
            return Err(bad(format!("op {index}: empty key")));
        }
        if key.len() > limits.key_bytes_max {
            return Err(too_large(format!(
                "op {index}: key of {} bytes, over the bound of {}",
                key.len(),
                limits.key_bytes_max
            )));
        }
        if let Op::Put { value, .. } = op
            && value.len() > limits.value_bytes_max
        {
            return Err(too_large(format!(
                "op {index}: value of {} bytes, over the bound of {}",
                value.len(),
                limits.value_bytes_max
            )));
        }
        txn_bytes += key.len()
            + match op {
                Op::Put { value, .. } => value.len(),
                // An add writes at most 20 decimal digits and a sign.
                Op::Add { .. } => 21,
                _ => 0,
            };
    }
    if txn_bytes > limits.txn_bytes_max {
        return Err(too_large(format!(
            "keys and values of {txn_bytes} bytes, over the transaction bound of {}",
            limits.txn_bytes_max
        )));
    }
    Ok(())
}

/// What one op produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// The value and its version, or None when the key is absent.
    Get(Option<(Bytes, u64)>),
    Put {
        version: u64,
    },
    Delete {
        deleted: bool,
    },
    Add {
        value: i64,
        version: u64,
    },
    Check,
}

/// Why a `check` or `add` failed its op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// A check found another version (`None`: the key is absent).
    Version { actual: Option<u64> },
    /// A check expected the key absent and found it.
    Present { actual: u64 },
    /// An add would go below its floor.
    Floor { value: i64 },
    /// An add found a value that is not the decimal text of an i64.
    NotInteger,
    /// An add overflowed i64.
    Overflow,
}

/// Why a transaction did not commit. `Failed`, `Conflict`, `Busy`, `Full`, `Unavailable` and
/// `LogFailed` mean nothing took effect; `Unknown` means the outcome is not known to the node
/// that answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxError {
    /// 412: op `op_index` failed its condition (check, floor, integer).
    Failed { op_index: usize, reason: FailReason },
    /// 409, retryable: a key is locked by a prepared multi-shard transaction.
    Conflict,
    /// 503, retryable: a bound on prepared or coordinated transactions is reached, or the shard is
    /// still recovering.
    Busy,
    /// 507: the write would take the partition past `partition_bytes_max`.
    Full,
    /// 413: the values the transaction reads pass `txn_bytes_max` (in one shard's part, or in
    /// all parts together); nothing was written. Found in a soak review: 64 gets of one 1 MiB
    /// value made a 64 MiB answer (384 MiB of JSON escapes), held while its client did not read.
    TooLarge,
    /// 503, retryable: a participant did not vote before the deadline; the transaction aborted.
    Unavailable,
    /// 504, not safe to blindly retry: a single-shard transaction was forwarded to its owner, which
    /// did not answer before the deadline, or its record was in the log when a write failed; it
    /// may or may not have committed.
    Unknown,
    /// 503: the transaction needs the log of a shard whose log failed (a full disk, an IO error),
    /// or a key that a transaction stuck behind such a log holds locked. Nothing was written;
    /// these wait for a restart.
    LogFailed,
}

impl TxError {
    pub fn status(&self) -> u16 {
        match self {
            TxError::Failed { .. } => 412,
            TxError::Conflict => 409,
            TxError::Busy | TxError::Unavailable | TxError::LogFailed => 503,
            TxError::Full => 507,
            TxError::TooLarge => 413,
            TxError::Unknown => 504,
        }
    }

    /// True when nothing took effect and the same request may be sent again as is.
    pub fn retry_safe(&self) -> bool {
        matches!(
            self,
            TxError::Conflict | TxError::Busy | TxError::Unavailable | TxError::LogFailed
        )
    }

    /// Seconds a client should wait before it sends the request again (`Retry-After`): a
    /// failed log waits for an operator, not for a lock.
    pub fn retry_after(&self) -> Option<&'static str> {
        match self {
            TxError::Conflict | TxError::Busy | TxError::Unavailable => Some("1"),
            TxError::LogFailed => Some("30"),
            TxError::Failed { .. } | TxError::Full | TxError::TooLarge | TxError::Unknown => None,
        }
    }

    /// The error's name in a JSON answer (`"error": "conflict"`).
    pub fn name(&self) -> &'static str {
        match self {
            TxError::Conflict => "conflict",
            TxError::Busy => "busy",
            TxError::Full => "full",
            TxError::TooLarge => "too_large",
            TxError::Unavailable => "unavailable",
            TxError::LogFailed => "log_failed",
            TxError::Unknown | TxError::Failed { .. } => "unknown",
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            TxError::Failed { .. } => "an op's condition failed; nothing was written",
            TxError::Conflict => "conflict with a concurrent transaction; retry",
            TxError::Busy => "shard busy (starting up, or too many transactions in flight); retry",
            TxError::Full => "the partition is full",
            TxError::TooLarge => {
                "the values this transaction reads pass the 4 MiB a transaction holds; nothing \
                 was written; read fewer keys per transaction"
            }
            TxError::Unavailable => "a shard did not answer in time; nothing was written; retry",
            TxError::Unknown => {
                "the outcome is unknown: a shard did not answer in time, or could not write its log"
            }
            TxError::LogFailed => {
                "a transaction log this transaction needs failed (disk full or an IO error; the \
                 server's log says which shard); nothing was written; restart percore once the \
                 disk is fixed"
            }
        }
    }
}

/// The HTTP status and JSON body of a transaction's outcome.
/// Committed: 200 `{"committed": true, "results": [...]}`. Failed: 412 `{"committed": false,
/// "failed_op": 2, "reason": "floor", "value": -3}`. Others: their status and `{"committed":
/// false, "error": "conflict", "retry": true, "message": "..."}` (`"committed": null` for Unknown).
pub fn render_outcome(outcome: &Result<Vec<OpResult>, TxError>) -> (u16, String) {
    json::render_outcome(outcome)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Small bounds, so tests reach each one (json.rs's tests too).
    pub(crate) fn limits() -> TxnLimits {
        TxnLimits {
            key_bytes_max: 8,
            value_bytes_max: 16,
            ops_max: 3,
            txn_bytes_max: 40,
            ..TxnLimits::default()
        }
    }

    fn key(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    /// `expected`: Ok(ops) or Err((status, a fragment of the message)).
    fn check(input: &str, expected: Result<Vec<Op>, (u16, &str)>) {
        let actual = parse(input.as_bytes(), &limits());
        match (&actual, &expected) {
            (Ok(ops), Ok(want)) => assert_eq!(ops, want, "{input}"),
            (Err(error), Err((status, fragment))) => {
                assert_eq!(error.status, *status, "{input}: {}", error.message);
                assert!(
                    error.message.contains(fragment),
                    "{input}: {:?} lacks {fragment:?}",
                    error.message
                );
            }
            _ => panic!("{input}: got {actual:?}, want {expected:?}"),
        }
    }

    #[test]
    fn parse_table() {
        let full = r#"{"ops": [{"op": "get", "key": "a"}, {"op": "put", "key": "b", "value": "text"},
            {"op": "delete", "key": "c"}]}"#;
        check(
            full,
            Ok(vec![
                Op::Get { key: key("a") },
                Op::Put {
                    key: key("b"),
                    value: key("text"),
                },
                Op::Delete { key: key("c") },
            ]),
        );
        check(
            r#"{"ops": [{"op": "add", "key": "n", "delta": -5, "floor": 0},
                {"op": "check", "key": "d", "version": 3}, {"op": "check", "key": "e", "absent": true}]}"#,
            Ok(vec![
                Op::Add {
                    key: key("n"),
                    delta: -5,
                    floor: Some(0),
                },
                Op::check_version(key("d"), 3),
                Op::check_absent(key("e")),
            ]),
        );
        check(
            r#"{"ops": [{"op": "put", "key": "b", "value_base64": "/wBh"}, {"op": "put", "key": "c", "value_base64": ""}]}"#,
            Ok(vec![
                Op::Put {
                    key: key("b"),
                    value: Bytes::from_static(b"\xff\x00a"),
                },
                Op::Put {
                    key: key("c"),
                    value: Bytes::new(),
                },
            ]),
        );
        check(
            r#"{"ops": [{"op": "add", "key": "n", "delta": 1, "floor": null}]}"#,
            Ok(vec![Op::Add {
                key: key("n"),
                delta: 1,
                floor: None,
            }]),
        );
        // Keys at the bound, values at the bound, ops at the bound.
        check(
            r#"{"ops": [{"op": "put", "key": "a", "value": "1234567890123456"}, {"op": "put", "key": "b", "value": "1234567890123456"}, {"op": "put", "key": "c", "value": "12345"}]}"#,
            Ok(["a", "b", "c"]
                .iter()
                .zip(["1234567890123456", "1234567890123456", "12345"])
                .map(|(k, v)| Op::Put {
                    key: key(k),
                    value: key(v),
                })
                .collect()),
        );
        check(
            r#"{"ops": [{"op": "put", "key": "12345678", "value": "1234567890123456"}]}"#,
            Ok(vec![Op::Put {
                key: key("12345678"),
                value: key("1234567890123456"),
            }]),
        );
        let cases: &[(&str, u16, &str)] = &[
            ("", 400, "malformed JSON"),
            ("{", 400, "malformed JSON"),
            ("[]", 400, "JSON object"),
            ("{}", 400, "missing \"ops\""),
            (r#"{"ops": {}}"#, 400, "must be an array"),
            (r#"{"ops": [], "x": 1}"#, 400, "unknown field \"x\""),
            (r#"{"ops": []}"#, 400, "at least one op"),
            (r#"{"ops": [1]}"#, 400, "op 0: must be an object"),
            (r#"{"ops": [{"key": "a"}]}"#, 400, "op 0: missing \"op\""),
            (
                r#"{"ops": [{"op": 1, "key": "a"}]}"#,
                400,
                "\"op\" must be a string",
            ),
            (
                r#"{"ops": [{"op": "frob", "key": "a"}]}"#,
                400,
                "unknown op \"frob\"",
            ),
            (r#"{"ops": [{"op": "get"}]}"#, 400, "missing \"key\""),
            (
                r#"{"ops": [{"op": "get", "key": 5}]}"#,
                400,
                "\"key\" must be a string",
            ),
            (
                r#"{"ops": [{"op": "get", "key": ""}]}"#,
                400,
                "op 0: empty key",
            ),
            (
                r#"{"ops": [{"op": "get", "key": "a", "value": "v"}]}"#,
                400,
                "unknown field \"value\"",
            ),
            (
                r#"{"ops": [{"op": "put", "key": "a"}]}"#,
                400,
                "missing \"value\" (or \"value_base64\")",
            ),
            (
                r#"{"ops": [{"op": "put", "key": "a", "value": "x", "value_base64": "eA=="}]}"#,
                400,
                "put takes \"value\" or \"value_base64\", not both",
            ),
            (
                r#"{"ops": [{"op": "put", "key": "a", "value_base64": "eA"}]}"#,
                400,
                "\"value_base64\" must be base64 (RFC 4648 §4, with padding)",
            ),
            (
                r#"{"ops": [{"op": "put", "key": "a", "value_base64": "e-A="}]}"#,
                400,
                "\"value_base64\" must be base64 (RFC 4648 §4, with padding)",
            ),
            (
                r#"{"ops": [{"op": "put", "key": "a", "value_base64": 3}]}"#,
                400,
                "\"value_base64\" must be a string",
            ),
            (
                r#"{"ops": [{"op": "get", "key": "a", "value_base64": "eA=="}]}"#,
                400,
                "unknown field \"value_base64\" for op \"get\"",
            ),
            (
                r#"{"ops": [{"op": "put", "key": "a", "value": 3}]}"#,
                400,
                "\"value\" must be a string",
            ),
            (
                r#"{"ops": [{"op": "add", "key": "a"}]}"#,
                400,
                "missing \"delta\"",
            ),
            (
                r#"{"ops": [{"op": "add", "key": "a", "delta": 1.5}]}"#,
                400,
                "i64 range",
            ),
            (
                r#"{"ops": [{"op": "add", "key": "a", "delta": 9223372036854775808}]}"#,
                400,
                "i64 range",
            ),
            (
                r#"{"ops": [{"op": "add", "key": "a", "delta": "1"}]}"#,
                400,
                "must be an integer",
            ),
            (
                r#"{"ops": [{"op": "check", "key": "a"}]}"#,
                400,
                "needs \"version\"",
            ),
            (
                r#"{"ops": [{"op": "check", "key": "a", "version": -1}]}"#,
                400,
                "non-negative",
            ),
            (
                r#"{"ops": [{"op": "check", "key": "a", "absent": false}]}"#,
                400,
                "must be true",
            ),
            (
                r#"{"ops": [{"op": "check", "key": "a", "absent": true, "version": 1}]}"#,
                400,
                "not both",
            ),
            (
                r#"{"ops": [{"op": "get", "key": "a"}, {"op": "get", "key": "123456789"}]}"#,
                413,
                "op 1: key of 9 bytes",
            ),
            (
                r#"{"ops": [{"op": "put", "key": "a", "value": "12345678901234567"}]}"#,
                413,
                "value of 17 bytes",
            ),
            (
                r#"{"ops": [{"op": "get", "key": "a"}, {"op": "get", "key": "a"}, {"op": "get", "key": "a"}, {"op": "get", "key": "a"}]}"#,
                413,
                "4 ops, over the bound of 3",
            ),
            (
                r#"{"ops": [{"op": "put", "key": "a", "value": "1234567890123456"}, {"op": "put", "key": "b", "value": "1234567890123456"}, {"op": "put", "key": "c", "value": "123456"}]}"#,
                413,
                "keys and values of 41 bytes",
            ),
        ];
        for (input, status, fragment) in cases {
            check(input, Err((*status, fragment)));
        }
    }

    #[test]
    fn owner_is_stable_fnv1a() {
        // Published FNV-1a 64 test vectors: the hash must never change, or keys move shards.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(owner(b"a", 1), 0);
        assert_eq!(owner(b"a", 4), (0xaf63_dc4c_8601_ec8c_u64 % 4) as usize);
        let mut seen = [0; 4];
        for i in 0..1000 {
            seen[owner(format!("key{i}").as_bytes(), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "spread {seen:?}");
    }

    #[test]
    fn etags() {
        assert_eq!(etag(7), "\"7\"");
        let strong = |version| EntityTag {
            weak: false,
            version,
        };
        let weak = |version| EntityTag {
            weak: true,
            version,
        };
        let tags = |tags: &[EntityTag]| Some(Condition::Tags(tags.to_vec()));
        let cases: &[(&str, Option<Condition>)] = &[
            ("\"7\"", tags(&[strong(Some(7))])),
            ("W/\"7\"", tags(&[weak(Some(7))])),
            (" \"12\" ", tags(&[strong(Some(12))])),
            ("\"0\"", tags(&[strong(Some(0))])),
            ("*", Some(Condition::Any)),
            (" * ", Some(Condition::Any)),
            // Lists (RFC 9110 §13.1.1), with empty elements skipped (§5.6.1).
            ("\"6\", \"7\"", tags(&[strong(Some(6)), strong(Some(7))])),
            ("\"6\",\"7\"", tags(&[strong(Some(6)), strong(Some(7))])),
            (
                ", \"6\" ,, W/\"7\",",
                tags(&[strong(Some(6)), weak(Some(7))]),
            ),
            // Valid tags that are not ours: they match nothing.
            ("\"x\"", tags(&[strong(None)])),
            ("\"\"", tags(&[strong(None)])),
            ("\"a,b\", \"7\"", tags(&[strong(None), strong(Some(7))])),
            ("\"-1\"", tags(&[strong(None)])),
            ("\"+1\"", tags(&[strong(None)])),
            ("\"07\"", tags(&[strong(None)])),
            ("\"18446744073709551615\"", tags(&[strong(Some(u64::MAX))])),
            ("\"18446744073709551616\"", tags(&[strong(None)])),
            ("\"99999999999999999999\"", tags(&[strong(None)])),
            // Not a conditional field value: 400.
            ("", None),
            (" , ", None),
            ("7", None),
            ("\"7", None),
            ("\"7\" \"8\"", None),
            ("\"7\"x", None),
            ("w/\"7\"", None),
            ("W/ \"7\"", None),
            ("\"a b\"", None),
            ("*, \"7\"", None),
            ("**", None),
        ];
        for (text, want) in cases {
            assert_eq!(&parse_condition(text.as_bytes()), want, "{text}");
        }
    }

    /// What each conditional header becomes as a check op (RFC 9110 §13.1.1, §13.1.2).
    #[test]
    fn conditions_as_checks() {
        let expect = |op: Op| match op {
            Op::Check { expect, .. } => expect,
            other => panic!("{other:?} is not a check"),
        };
        let cases: &[(&str, Expect, Expect)] = &[
            ("*", Expect::Present, Expect::Absent),
            ("\"7\"", Expect::Version(7), Expect::NoneOf(vec![7])),
            // If-Match compares strongly: a weak tag never matches.
            ("W/\"7\"", Expect::OneOf(vec![]), Expect::NoneOf(vec![7])),
            (
                "\"6\", W/\"7\", \"8\"",
                Expect::OneOf(vec![6, 8]),
                Expect::NoneOf(vec![6, 7, 8]),
            ),
            ("\"x\"", Expect::OneOf(vec![]), Expect::NoneOf(vec![])),
        ];
        for (text, if_match, if_none_match) in cases {
            let condition = parse_condition(text.as_bytes()).unwrap();
            assert_eq!(&expect(condition.if_match(key("k"))), if_match, "{text}");
            assert_eq!(
                &expect(condition.if_none_match(key("k"))),
                if_none_match,
                "{text}"
            );
        }
    }

    type Outcome = Result<Vec<OpResult>, TxError>;

    #[test]
    fn render_table() {
        let ok = Ok(vec![
            OpResult::Get(Some((key("v"), 7))),
            OpResult::Get(None),
            OpResult::Put { version: 8 },
            OpResult::Delete { deleted: true },
            OpResult::Add {
                value: -2,
                version: 9,
            },
            OpResult::Check,
            OpResult::Get(Some((Bytes::from_static(b"\xff"), 1))),
        ]);
        let cases: Vec<(Outcome, u16, &str)> = vec![
            (
                ok,
                200,
                r#"{"committed":true,"results":[{"value":"v","version":7},{"value":null},{"version":8},{"deleted":true},{"value":-2,"version":9},{},{"value_base64":"/w==","version":1}]}"#,
            ),
            (
                Err(TxError::Failed {
                    op_index: 2,
                    reason: FailReason::Floor { value: -3 },
                }),
                412,
                r#"{"committed":false,"failed_op":2,"reason":"floor","value":-3}"#,
            ),
            (
                Err(TxError::Failed {
                    op_index: 0,
                    reason: FailReason::Version { actual: None },
                }),
                412,
                r#"{"committed":false,"failed_op":0,"reason":"version","version":null}"#,
            ),
            (Err(TxError::Conflict), 409, r#""error":"conflict""#),
            (Err(TxError::Unknown), 504, r#""committed":null"#),
            (Err(TxError::Full), 507, r#""retry":false"#),
            (Err(TxError::Busy), 503, r#""error":"busy""#),
            (Err(TxError::Unavailable), 503, r#""retry":true"#),
            (Err(TxError::LogFailed), 503, r#""error":"log_failed""#),
        ];
        for (outcome, status, fragment) in cases {
            let (got_status, body) = render_outcome(&outcome);
            assert_eq!(got_status, status, "{outcome:?}");
            assert!(body.contains(fragment), "{body} lacks {fragment}");
        }
    }
}
