//! The JSON wire format of `POST /kv/tx`, read and written in one pass: request bodies are parsed straight into ops (no `serde_json::Value` tree, one visitor per level) and outcomes are serialized from borrowed structs; pure.
//!
//! Same contract and messages as building a `Value` first (op.rs has the format; the tests
//! check this module against that slower reference). Three deliberate differences: the first
//! problem in document order is the one named (an op's error before a syntax error, an unknown
//! field or an op past the bound later in the body), and so is the first unknown field; a field
//! given twice in an object is a 400 (`duplicate field "key"`), where the reference's map keeps
//! the last. The op bound (413) is named only once the whole body parsed, as in the reference.

use std::cell::RefCell;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::txn::op::{Expect, FailReason, Op, OpResult, ParseError, TxError, bad, too_large};

/// Parses `{"ops": [...]}` into ops, bounding their number by `ops_max`; the other bounds are
/// `op::validate`'s. A field twice in an object is an error (400), not "the last one counts":
/// a proxy that checked the body with another parser may have read the first.
pub fn parse_ops(body: &[u8], ops_max: usize) -> Result<Vec<Op>, ParseError> {
    let failure = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = BodySeed {
        ops_max,
        failure: &failure,
    }
    .deserialize(&mut de)
    .and_then(|ops| de.end().map(|()| ops));
    if let Some(error) = failure.into_inner() {
        return Err(error);
    }
    let (ops, count) = parsed.map_err(|e| bad(format!("malformed JSON: {e}")))?;
    // The op bound after the whole body: one that is no request at all (an unknown or repeated
    // field after the array, a cut or trailing byte) is 400, as the reference answers.
    if count > ops_max {
        return Err(too_large(format!(
            "{count} ops, over the bound of {ops_max}"
        )));
    }
    Ok(ops)
}

/// Where a visitor leaves the contract error it stops the parse for; the serde error that
/// carries the stop only unwinds the parser.
type Failure<'a> = &'a RefCell<Option<ParseError>>;

fn fail<E: de::Error>(failure: Failure, error: ParseError) -> E {
    *failure.borrow_mut() = Some(error);
    E::custom("rejected")
}

/// A seed that is its own visitor: it sees whichever JSON shape comes and names the wrong ones.
macro_rules! seed_is_its_visitor {
    ($seed:ident) => {
        impl<'de> DeserializeSeed<'de> for $seed<'_> {
            type Value = <Self as Visitor<'de>>::Value;

            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
        }
    };
}

struct BodySeed<'a> {
    ops_max: usize,
    failure: Failure<'a>,
}

seed_is_its_visitor!(BodySeed);

/// The visitor methods for JSON scalars (none is ever the expected shape): each stops the parse
/// with `self.wrong::<E>()`.
macro_rules! wrong_scalars {
    () => {
        wrong_scalars!(visit_bool(bool), visit_i64(i64), visit_u64(u64), visit_f64(f64), visit_str(&str), visit_unit());
    };
    ($($method:ident($($arg:ty)?)),*) => {
        $(fn $method<E: de::Error>(self $(, _: $arg)?) -> Result<Self::Value, E> {
            Err(self.wrong())
        })*
    };
}

/// The ops built (at most `ops_max`) and how many the array held.
type Ops = (Vec<Op>, usize);

impl<'de> Visitor<'de> for BodySeed<'_> {
    type Value = Ops;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with \"ops\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ops, A::Error> {
        let mut ops = None;
        while let Some(name) = map.next_key::<Name>()? {
            match name {
                Name::Known("ops") if ops.is_some() => {
                    let message = "duplicate field \"ops\"".to_string();
                    return Err(fail(self.failure, bad(message)));
                }
                Name::Known("ops") => {
                    ops = Some(map.next_value_seed(OpsSeed {
                        ops_max: self.ops_max,
                        failure: self.failure,
                    })?)
                }
                other => {
                    let field = other.text();
                    return Err(fail(
                        self.failure,
                        bad(format!("unknown field \"{field}\"")),
                    ));
                }
            }
        }
        ops.ok_or_else(|| fail(self.failure, bad("missing \"ops\"".to_string())))
    }

    wrong_scalars!();

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Ops, A::Error> {
        Err(self.wrong())
    }
}

impl BodySeed<'_> {
    fn wrong<E: de::Error>(&self) -> E {
        let message = "the body must be a JSON object with \"ops\"".to_string();
        fail(self.failure, bad(message))
    }
}

struct OpsSeed<'a> {
    ops_max: usize,
    failure: Failure<'a>,
}

seed_is_its_visitor!(OpsSeed);

impl<'de> Visitor<'de> for OpsSeed<'_> {
    type Value = Ops;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of ops")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ops, A::Error> {
        let mut ops = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(self.ops_max));
        while ops.len() < self.ops_max {
            let seed = OpSeed {
                index: ops.len(),
                failure: self.failure,
            };
            match seq.next_element_seed(seed)? {
                Some(op) => ops.push(op),
                None => {
                    let count = ops.len();
                    return Ok((ops, count));
                }
            }
        }
        // At the bound: count the rest without building them, to say how many there were
        // (`parse_ops` answers 413 once the whole body is read).
        let mut count = ops.len();
        while seq.next_element::<IgnoredAny>()?.is_some() {
            count += 1;
        }
        Ok((ops, count))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Ops, A::Error> {
        Err(self.wrong())
    }

    wrong_scalars!();
}

impl OpsSeed<'_> {
    fn wrong<E: de::Error>(&self) -> E {
        fail(self.failure, bad("\"ops\" must be an array".to_string()))
    }
}

struct OpSeed<'a> {
    index: usize,
    failure: Failure<'a>,
}

seed_is_its_visitor!(OpSeed);

impl<'de> Visitor<'de> for OpSeed<'_> {
    type Value = Op;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an op object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Op, A::Error> {
        let mut fields = OpFields::default();
        while let Some(name) = map.next_key::<Name>()? {
            let slot = match &name {
                Name::Known("op") => &mut fields.op,
                Name::Known("key") => &mut fields.key,
                Name::Known("value") => &mut fields.value,
                Name::Known("value_base64") => &mut fields.value_base64,
                Name::Known("delta") => &mut fields.delta,
                Name::Known("floor") => &mut fields.floor,
                Name::Known("version") => &mut fields.version,
                Name::Known("absent") => &mut fields.absent,
                other => {
                    map.next_value::<IgnoredAny>()?;
                    fields
                        .unknown
                        .get_or_insert_with(|| other.text().to_string());
                    continue;
                }
            };
            if slot.is_some() {
                let message = format!("op {}: duplicate field \"{}\"", self.index, name.text());
                return Err(fail(self.failure, bad(message)));
            }
            *slot = Some(map.next_value::<Scalar>()?);
        }
        fields
            .build()
            .map_err(|message| fail(self.failure, bad(format!("op {}: {message}", self.index))))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Op, A::Error> {
        Err(self.wrong())
    }

    wrong_scalars!();
}

impl OpSeed<'_> {
    fn wrong<E: de::Error>(&self) -> E {
        fail(
            self.failure,
            bad(format!("op {}: must be an object", self.index)),
        )
    }
}

/// An op's fields as found, checked in `build` in a fixed order so the first problem named
/// does not depend on the field order of the request.
#[derive(Default)]
struct OpFields {
    op: Option<Scalar>,
    key: Option<Scalar>,
    value: Option<Scalar>,
    value_base64: Option<Scalar>,
    delta: Option<Scalar>,
    floor: Option<Scalar>,
    version: Option<Scalar>,
    absent: Option<Scalar>,
    unknown: Option<String>,
}

impl OpFields {
    fn build(mut self) -> Result<Op, String> {
        let name = match self.op.take() {
            Some(Scalar::Str(name)) => name,
            Some(_) => return Err("\"op\" must be a string".to_string()),
            None => return Err("missing \"op\"".to_string()),
        };
        let key = Bytes::from(string(self.key.take(), "key")?.ok_or("missing \"key\"")?);
        let op = match name.as_str() {
            "get" => Op::Get { key },
            "delete" => Op::Delete { key },
            "put" => Op::Put {
                key,
                value: put_value(
                    string(self.value.take(), "value")?,
                    string(self.value_base64.take(), "value_base64")?,
                )?,
            },
            "add" => {
                let delta = integer(self.delta.take(), "delta")?.ok_or("missing \"delta\"")?;
                let floor = integer(self.floor.take(), "floor")?;
                Op::Add { key, delta, floor }
            }
            "check" => Op::Check {
                key,
                expect: expect(self.version.take(), self.absent.take())?,
            },
            other => {
                return Err(format!(
                    "unknown op \"{other}\" (expected get, put, delete, add or check)"
                ));
            }
        };
        let unused = [
            ("value", &self.value),
            ("value_base64", &self.value_base64),
            ("delta", &self.delta),
            ("floor", &self.floor),
            ("version", &self.version),
            ("absent", &self.absent),
        ];
        let field = unused
            .iter()
            .find(|(_, slot)| slot.is_some())
            .map(|(name, _)| name.to_string())
            .or(self.unknown);
        match field {
            Some(field) => Err(format!("unknown field \"{field}\" for op \"{name}\"")),
            None => Ok(op),
        }
    }
}

/// A put's value: `value` (UTF-8 text) or `value_base64` (any bytes, RFC 4648 §4 base64 with
/// padding), exactly one.
fn put_value(text: Option<String>, encoded: Option<String>) -> Result<Bytes, String> {
    match (text, encoded) {
        (Some(text), None) => Ok(Bytes::from(text)),
        (None, Some(encoded)) => STANDARD
            .decode(encoded)
            .map(Bytes::from)
            .map_err(|_| "\"value_base64\" must be base64 (RFC 4648 §4, with padding)".to_string()),
        (Some(_), Some(_)) => Err("put takes \"value\" or \"value_base64\", not both".to_string()),
        (None, None) => Err("missing \"value\" (or \"value_base64\")".to_string()),
    }
}

fn string(field: Option<Scalar>, name: &str) -> Result<Option<String>, String> {
    match field {
        None => Ok(None),
        Some(Scalar::Str(text)) => Ok(Some(text)),
        Some(_) => Err(format!("\"{name}\" must be a string")),
    }
}

/// An optional integer field; `null` counts as absent.
fn integer(field: Option<Scalar>, name: &str) -> Result<Option<i64>, String> {
    let in_range = || format!("\"{name}\" must be an integer in the i64 range");
    match field {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Int(n)) => Ok(Some(n)),
        Some(Scalar::Uint(n)) => i64::try_from(n).map(Some).map_err(|_| in_range()),
        Some(Scalar::Float) => Err(in_range()),
        Some(_) => Err(format!("\"{name}\" must be an integer")),
    }
}

fn expect(version: Option<Scalar>, absent: Option<Scalar>) -> Result<Expect, String> {
    let non_negative = || "\"version\" must be a non-negative integer".to_string();
    match (version, absent) {
        (Some(Scalar::Uint(version)), None) => Ok(Expect::Version(version)),
        (Some(_), None) => Err(non_negative()),
        (None, Some(Scalar::Bool(true))) => Ok(Expect::Absent),
        (None, Some(_)) => Err("\"absent\" must be true".to_string()),
        (Some(_), Some(_)) => Err("check takes \"version\" or \"absent\", not both".to_string()),
        (None, None) => Err("check needs \"version\" or \"absent\": true".to_string()),
    }
}

/// A field name: one the format knows (no allocation), or another, kept for the error.
enum Name {
    Known(&'static str),
    Other(String),
}

const NAMES: [&str; 9] = [
    "ops",
    "op",
    "key",
    "value",
    "value_base64",
    "delta",
    "floor",
    "version",
    "absent",
];

impl Name {
    fn text(&self) -> &str {
        match self {
            Name::Known(name) => name,
            Name::Other(name) => name,
        }
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Name, E> {
                Ok(match NAMES.iter().find(|known| **known == name) {
                    Some(known) => Name::Known(known),
                    None => Name::Other(name.to_string()),
                })
            }
        }
        d.deserialize_str(NameVisitor)
    }
}

/// A field's value, as far as the format cares: arrays and objects are skipped unread.
enum Scalar {
    Str(String),
    Int(i64),
    Uint(u64),
    Float,
    Bool(bool),
    Null,
    Nested,
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(text.to_string()))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(text))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Scalar, E> {
                // serde_json hands non-negative integers to visit_u64 and negative ones here.
                Ok(Scalar::Int(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Scalar, E> {
                Ok(Scalar::Uint(n))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(b))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Nested)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Nested)
            }
        }
        d.deserialize_any(ScalarVisitor)
    }
}

/// The HTTP status and JSON body of a transaction's outcome (format in op.rs). Fields are in
/// alphabetical order, as a `serde_json::Value` object prints them.
pub fn render_outcome(outcome: &Result<Vec<OpResult>, TxError>) -> (u16, String) {
    let body = match outcome {
        Ok(results) => serde_json::to_string(&Committed {
            committed: true,
            results: results.iter().map(ResultJson::from).collect(),
        }),
        Err(TxError::Failed { op_index, reason }) => {
            let (reason, version, value) = match reason {
                FailReason::Version { actual } => ("version", Some(*actual), None),
                FailReason::Present { actual } => ("present", Some(Some(*actual)), None),
                FailReason::Floor { value } => ("floor", None, Some(*value)),
                FailReason::NotInteger => ("not_integer", None, None),
                FailReason::Overflow => ("overflow", None, None),
            };
            serde_json::to_string(&Failed {
                committed: false,
                failed_op: *op_index,
                reason,
                value,
                version,
            })
        }
        Err(error) => {
            let name = error.name();
            serde_json::to_string(&Refused {
                committed: (*error != TxError::Unknown).then_some(false),
                error: name,
                message: error.message(),
                retry: error.retry_safe(),
            })
        }
    };
    let status = outcome.as_ref().map_or_else(TxError::status, |_| 200);
    (
        status,
        body.expect("serializing plain structs to a String cannot fail"),
    )
}

#[derive(Serialize)]
struct Committed<'a> {
    committed: bool,
    results: Vec<ResultJson<'a>>,
}

#[derive(Serialize)]
struct Failed {
    committed: bool,
    failed_op: usize,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<i64>,
    /// `Some(None)` prints `"version": null` (a check that found the key absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<Option<u64>>,
}

#[derive(Serialize)]
struct Refused {
    /// `null` when the outcome is unknown.
    committed: Option<bool>,
    error: &'static str,
    message: &'static str,
    retry: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ResultJson<'a> {
    Value {
        value: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// A value that is not UTF-8: JSON strings hold text only, and a lossy one would come back
    /// changed from a read-modify-write (found in review).
    Binary {
        value_base64: String,
        version: u64,
    },
    Number {
        value: i64,
        version: u64,
    },
    Version {
        version: u64,
    },
    Deleted {
        deleted: bool,
    },
    Empty {},
}

impl<'a> From<&'a OpResult> for ResultJson<'a> {
    fn from(result: &'a OpResult) -> ResultJson<'a> {
        match result {
            OpResult::Get(None) => ResultJson::Value {
                value: None,
                version: None,
            },
            OpResult::Get(Some((value, version))) => match std::str::from_utf8(value) {
                Ok(text) => ResultJson::Value {
                    value: Some(text),
                    version: Some(*version),
                },
                Err(_) => ResultJson::Binary {
                    value_base64: STANDARD.encode(value),
                    version: *version,
                },
            },
            OpResult::Put { version } => ResultJson::Version { version: *version },
            OpResult::Delete { deleted } => ResultJson::Deleted { deleted: *deleted },
            OpResult::Add { value, version } => ResultJson::Number {
                value: *value,
                version: *version,
            },
            OpResult::Check => ResultJson::Empty {},
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use super::*;
    use crate::txn::TxnLimits;
    use crate::txn::op::tests::limits;
    use crate::txn::op::{parse, validate};

    /// The parse this module replaced: the whole body into a `Value`, then taken apart. The
    /// reference for what `parse` must answer.
    mod reference {
        use super::*;

        pub fn parse(body: &[u8], limits: &TxnLimits) -> Result<Vec<Op>, ParseError> {
            let value: Value =
                serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
            let Value::Object(mut top) = value else {
                return Err(bad(
                    "the body must be a JSON object with \"ops\"".to_string()
                ));
            };
            let ops = top
                .remove("ops")
                .ok_or_else(|| bad("missing \"ops\"".to_string()))?;
            if let Some(field) = top.keys().next() {
                return Err(bad(format!("unknown field \"{field}\"")));
            }
            let Value::Array(ops) = ops else {
                return Err(bad("\"ops\" must be an array".to_string()));
            };
            if ops.len() > limits.ops_max {
                return Err(too_large(format!(
                    "{} ops, over the bound of {}",
                    ops.len(),
                    limits.ops_max
                )));
            }
            let ops = ops
                .into_iter()
                .enumerate()
                .map(|(index, op)| {
                    parse_op(op).map_err(|message| bad(format!("op {index}: {message}")))
                })
                .collect::<Result<Vec<Op>, ParseError>>()?;
            validate(&ops, limits)?;
            Ok(ops)
        }

        fn parse_op(op: Value) -> Result<Op, String> {
            let Value::Object(mut fields) = op else {
                return Err("must be an object".to_string());
            };
            let name = match fields.remove("op") {
                Some(Value::String(name)) => name,
                Some(_) => return Err("\"op\" must be a string".to_string()),
                None => return Err("missing \"op\"".to_string()),
            };
            let key = Bytes::from(take_string(&mut fields, "key")?.ok_or("missing \"key\"")?);
            let op = match name.as_str() {
                "get" => Op::Get { key },
                "delete" => Op::Delete { key },
                // Its own reading of the rule, not `put_value`'s: a slip there must show here.
                "put" => {
                    let text = take_string(&mut fields, "value")?;
                    let encoded = take_string(&mut fields, "value_base64")?;
                    let value = match (text, encoded) {
                        (Some(_), Some(_)) => {
                            return Err(
                                "put takes \"value\" or \"value_base64\", not both".to_string()
                            );
                        }
                        (Some(text), None) => text.into_bytes(),
                        (None, Some(encoded)) => STANDARD.decode(encoded).map_err(|_| {
                            "\"value_base64\" must be base64 (RFC 4648 §4, with padding)"
                                .to_string()
                        })?,
                        (None, None) => {
                            return Err("missing \"value\" (or \"value_base64\")".to_string());
                        }
                    };
                    Op::Put {
                        key,
                        value: Bytes::from(value),
                    }
                }
                "add" => {
                    let delta = take_i64(&mut fields, "delta")?.ok_or("missing \"delta\"")?;
                    let floor = take_i64(&mut fields, "floor")?;
                    Op::Add { key, delta, floor }
                }
                "check" => Op::Check {
                    key,
                    expect: take_expect(&mut fields)?,
                },
                other => {
                    return Err(format!(
                        "unknown op \"{other}\" (expected get, put, delete, add or check)"
                    ));
                }
            };
            if let Some(field) = fields.keys().next() {
                return Err(format!("unknown field \"{field}\" for op \"{name}\""));
            }
            Ok(op)
        }

        fn take_string(
            fields: &mut Map<String, Value>,
            name: &str,
        ) -> Result<Option<String>, String> {
            match fields.remove(name) {
                None => Ok(None),
                Some(Value::String(text)) => Ok(Some(text)),
                Some(_) => Err(format!("\"{name}\" must be a string")),
            }
        }

        fn take_i64(fields: &mut Map<String, Value>, name: &str) -> Result<Option<i64>, String> {
            match fields.remove(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(number)) => number
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| format!("\"{name}\" must be an integer in the i64 range")),
                Some(_) => Err(format!("\"{name}\" must be an integer")),
            }
        }

        fn take_expect(fields: &mut Map<String, Value>) -> Result<Expect, String> {
            let version = fields.remove("version");
            let absent = fields.remove("absent");
            match (version, absent) {
                (Some(Value::Number(number)), None) => number
                    .as_u64()
                    .map(Expect::Version)
                    .ok_or_else(|| "\"version\" must be a non-negative integer".to_string()),
                (Some(_), None) => Err("\"version\" must be a non-negative integer".to_string()),
                (None, Some(Value::Bool(true))) => Ok(Expect::Absent),
                (None, Some(_)) => Err("\"absent\" must be true".to_string()),
                (Some(_), Some(_)) => {
                    Err("check takes \"version\" or \"absent\", not both".to_string())
                }
                (None, None) => Err("check needs \"version\" or \"absent\": true".to_string()),
            }
        }

        pub fn render(outcome: &Result<Vec<OpResult>, TxError>) -> Value {
            match outcome {
                Ok(results) => json!({
                    "committed": true,
                    "results": results.iter().map(result_json).collect::<Vec<Value>>(),
                }),
                Err(TxError::Failed { op_index, reason }) => {
                    let mut body = json!({"committed": false, "failed_op": op_index});
                    if let (Value::Object(body), Value::Object(reason)) =
                        (&mut body, reason_json(reason))
                    {
                        body.extend(reason);
                    }
                    body
                }
                Err(error) => {
                    let name = error.name();
                    let committed = if *error == TxError::Unknown {
                        Value::Null
                    } else {
                        Value::Bool(false)
                    };
                    json!({
                        "committed": committed,
                        "error": name,
                        "retry": error.retry_safe(),
                        "message": error.message(),
                    })
                }
            }
        }

        fn reason_json(reason: &FailReason) -> Value {
            match reason {
                FailReason::Version { actual } => json!({"reason": "version", "version": actual}),
                FailReason::Present { actual } => json!({"reason": "present", "version": actual}),
                FailReason::Floor { value } => json!({"reason": "floor", "value": value}),
                FailReason::NotInteger => json!({"reason": "not_integer"}),
                FailReason::Overflow => json!({"reason": "overflow"}),
            }
        }

        fn result_json(result: &OpResult) -> Value {
            match result {
                OpResult::Get(None) => json!({"value": null}),
                OpResult::Get(Some((value, version))) => match std::str::from_utf8(value) {
                    Ok(text) => json!({"value": text, "version": version}),
                    Err(_) => json!({"value_base64": STANDARD.encode(value), "version": version}),
                },
                OpResult::Put { version } => json!({"version": version}),
                OpResult::Delete { deleted } => json!({"deleted": deleted}),
                OpResult::Add { value, version } => json!({"value": value, "version": version}),
                OpResult::Check => json!({}),
            }
        }
    }

    /// True when the one-pass parse answers as the reference does, allowing the differences the
    /// module doc names (an op's error before a later problem; unknown fields in another order).
    fn agrees(body: &[u8]) -> Result<(), String> {
        let limits = limits();
        let new = parse(body, &limits);
        let old = reference::parse(body, &limits);
        let same = match (&new, &old) {
            // The reference's map keeps a repeated field's last value, or stops at a later problem.
            (Err(a), _) if a.status == 400 && a.message.contains("duplicate field \"") => true,
            (Ok(a), Ok(b)) => a == b,
            (Err(a), Err(b)) if a == b => true,
            (Err(a), Err(b)) => {
                let op_error_first = a.status == 400
                    && a.message.starts_with("op ")
                    && (b.status == 413
                        || b.message.starts_with("malformed JSON")
                        || b.message.starts_with("unknown field"));
                let unknown_fields = a.status == b.status
                    && a.message.contains("unknown field")
                    && b.message.contains("unknown field");
                let unknown_top_field_first =
                    a.status == 400 && a.message.starts_with("unknown field") && b.status == 400;
                // A cut or broken body: serde_json words the error by where its parse stood
                // ("invalid number" or "EOF while parsing a value" for a cut `1.`).
                let both_malformed = a.status == 400
                    && b.status == 400
                    && a.message.starts_with("malformed JSON")
                    && b.message.starts_with("malformed JSON");
                op_error_first || unknown_fields || unknown_top_field_first || both_malformed
            }
            _ => false,
        };
        if same {
            Ok(())
        } else {
            Err(format!(
                "{}: new {new:?}, reference {old:?}",
                String::from_utf8_lossy(body)
            ))
        }
    }

    #[test]
    fn agrees_with_the_reference_on_the_contract_cases() {
        let cases = [
            r#"{"ops": [{"op": "get", "key": "a"}, {"op": "put", "key": "b", "value": "text"}, {"op": "delete", "key": "c"}]}"#,
            r#"{"ops": [{"key": "n", "op": "add", "delta": -5, "floor": 0}]}"#,
            r#"{"ops": [{"op": "add", "key": "n", "delta": 1, "floor": null}]}"#,
            r#"{"ops": [{"op": "check", "key": "d", "version": 3}, {"op": "check", "key": "e", "absent": true}]}"#,
            r#"{"ops": [{"op": "put", "key": "k\u00e9\n", "value": "v\"\\"}]}"#,
            r#"{"ops": [{"op": "get", "key": "a", "key": "b"}]}"#,
            r#"{"ops": [{"op": "get", "key": "a", "value": {"deep": [1, 2]}}]}"#,
            r#"{"ops": [{"op": "get", "key": "a"}]}  "#,
            r#"{"ops": [{"op": "get", "key": "a"}]} x"#,
            r#"{"ops": [{"op": "get", "key": "a"}, {"op": "get", "key": "a"}, {"op": "get", "key": "a"}, 7]}"#,
            "",
            "{",
            "[]",
            "null",
            "{}",
            r#"{"ops": {}}"#,
            r#"{"ops": "x"}"#,
            r#"{"ops": [], "x": 1}"#,
            r#"{"ops": [{"op": "get", "key": "a"}, {"op": "get", "key": "a"}, {"op": "get", "key": "a"}, {"op": "get", "key": "a"}], "zz": 1}"#,
            r#"{"ops": [{"op": "get", "key": "a"}, {"op": "get", "key": "a"}, {"op": "get", "key": "a"}, {"op": "get", "key": "a"}]"#,
            r#"{"ops": []}"#,
            r#"{"ops": [1]}"#,
            r#"{"ops": [[]]}"#,
            r#"{"ops": [{"key": "a"}]}"#,
            r#"{"ops": [{"op": 1, "key": "a"}]}"#,
            r#"{"ops": [{"op": "frob", "key": "a"}]}"#,
            r#"{"ops": [{"op": "get"}]}"#,
            r#"{"ops": [{"op": "get", "key": 5}]}"#,
            r#"{"ops": [{"op": "get", "key": null}]}"#,
            r#"{"ops": [{"op": "get", "key": ""}]}"#,
            r#"{"ops": [{"op": "get", "key": "a", "value": "v"}]}"#,
            r#"{"ops": [{"op": "get", "key": "a", "zz": 1}]}"#,
            r#"{"ops": [{"op": "put", "key": "a"}]}"#,
            r#"{"ops": [{"op": "put", "key": "a", "value": 3}]}"#,
            r#"{"ops": [{"op": "put", "key": "a", "value_base64": "/w=="}]}"#,
            r#"{"ops": [{"op": "put", "key": "a", "value_base64": "/w="}]}"#,
            r#"{"ops": [{"op": "put", "key": "a", "value_base64": "/w==", "value": "x"}]}"#,
            r#"{"ops": [{"op": "put", "key": "a", "value_base64": null}]}"#,
            r#"{"ops": [{"op": "add", "key": "a", "delta": 1, "value_base64": "eA=="}]}"#,
            r#"{"ops": [{"op": "add", "key": "a"}]}"#,
            r#"{"ops": [{"op": "add", "key": "a", "delta": 1.5}]}"#,
            r#"{"ops": [{"op": "add", "key": "a", "delta": 1e3}]}"#,
            r#"{"ops": [{"op": "add", "key": "a", "delta": 9223372036854775808}]}"#,
            r#"{"ops": [{"op": "add", "key": "a", "delta": -9223372036854775808}]}"#,
            r#"{"ops": [{"op": "add", "key": "a", "delta": "1"}]}"#,
            r#"{"ops": [{"op": "add", "key": "a", "delta": 1, "floor": true}]}"#,
            r#"{"ops": [{"op": "check", "key": "a"}]}"#,
            r#"{"ops": [{"op": "check", "key": "a", "version": -1}]}"#,
            r#"{"ops": [{"op": "check", "key": "a", "version": 1.0}]}"#,
            r#"{"ops": [{"op": "check", "key": "a", "absent": false}]}"#,
            r#"{"ops": [{"op": "check", "key": "a", "absent": null}]}"#,
            r#"{"ops": [{"op": "check", "key": "a", "absent": true, "version": 1}]}"#,
            r#"{"ops": [{"op": "get", "key": "a"}, {"op": "get", "key": "123456789"}]}"#,
            r#"{"ops": [{"op": "put", "key": "a", "value": "12345678901234567"}]}"#,
            r#"{"ops": [{"op": "get", "key": "a"}, {"op": "get", "key": "a"}, {"op": "get", "key": "a"}, {"op": "get", "key": "a"}]}"#,
            r#"{"ops": [{"op": "put", "key": "a", "value": "1234567890123456"}, {"op": "put", "key": "b", "value": "1234567890123456"}, {"op": "put", "key": "c", "value": "123456"}]}"#,
        ];
        for body in cases {
            agrees(body.as_bytes()).unwrap();
        }
    }

    #[test]
    fn the_op_bound_counts_every_op_without_building_them() {
        let body = format!(
            r#"{{"ops": [{}]}}"#,
            [r#"{"op": "get", "key": "a"}"#; 10].join(", ")
        );
        let error = parse(body.as_bytes(), &limits()).unwrap_err();
        assert_eq!(
            (error.status, error.message.as_str()),
            (413, "10 ops, over the bound of 3")
        );
    }

    /// A field twice in one object is refused, naming it, wherever it is and whatever the
    /// values: a proxy that checked the first value must not see percore act on the second.
    #[test]
    fn a_repeated_field_is_400_naming_it() {
        let cases = [
            (
                r#"{"ops": [{"op": "put", "key": "first", "key": "second", "value": "v"}]}"#,
                "op 0: duplicate field \"key\"",
            ),
            (
                r#"{"ops": [{"op": "get", "key": "a"}, {"op": "put", "op": "get", "key": "a"}]}"#,
                "op 1: duplicate field \"op\"",
            ),
            (
                r#"{"ops": [{"op": "put", "key": "a", "value": "1", "value": "1"}]}"#,
                "op 0: duplicate field \"value\"",
            ),
            (
                r#"{"ops": [{"op": "add", "key": "a", "delta": 1, "floor": null, "floor": 0}]}"#,
                "op 0: duplicate field \"floor\"",
            ),
            (
                r#"{"ops": [{"op": "check", "key": "a", "version": 1, "version": 2}]}"#,
                "op 0: duplicate field \"version\"",
            ),
            (
                r#"{"ops": [{"op": "check", "key": "a", "absent": true, "absent": true}]}"#,
                "op 0: duplicate field \"absent\"",
            ),
            (
                r#"{"ops": [{"op": "get", "key": "a"}], "ops": [{"op": "get", "key": "b"}]}"#,
                "duplicate field \"ops\"",
            ),
            // Named where it is, before a later problem (a missing field, the op bound).
            (
                r#"{"ops": [{"key": "a", "key": "b"}]}"#,
                "op 0: duplicate field \"key\"",
            ),
            (
                r#"{"ops": [{"op": "get", "key": "a"}, {"op": "get", "key": "a"}, {"op": "get", "key": "a"}, {"op": "get", "key": "a"}], "ops": []}"#,
                "duplicate field \"ops\"",
            ),
        ];
        for (body, message) in cases {
            let error = parse(body.as_bytes(), &limits()).unwrap_err();
            assert_eq!(
                (error.status, error.message.as_str()),
                (400, message),
                "{body}"
            );
        }
    }

    /// A body that is no request at all is 400 even when its ops array is over the bound: the
    /// bound is named once the whole body parsed (an unknown field after a long array was 413).
    #[test]
    fn a_bad_body_after_too_many_ops_is_400() {
        let ops = [r#"{"op": "get", "key": "a"}"#; 4].join(", ");
        let cases = [
            (
                format!(r#"{{"ops": [{ops}], "zz": 1}}"#),
                "unknown field \"zz\"",
            ),
            (format!(r#"{{"ops": [{ops}]"#), "malformed JSON"),
            (format!(r#"{{"ops": [{ops}]}} x"#), "malformed JSON"),
        ];
        for (body, fragment) in &cases {
            let error = parse(body.as_bytes(), &limits()).unwrap_err();
            assert_eq!(error.status, 400, "{body}: {error:?}");
            assert!(error.message.starts_with(fragment), "{body}: {error:?}");
        }
        let over = format!(r#"{{"ops": [{ops}]}}"#);
        let error = parse(over.as_bytes(), &limits()).unwrap_err();
        assert_eq!(
            (error.status, error.message.as_str()),
            (413, "4 ops, over the bound of 3")
        );
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            "[a-c]{0,10}".prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-3i64..4).prop_map(Value::from),
            Just(json!(1.5)),
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            Just(json!([1, {"a": 2}])),
            Just(json!({"x": "y"})),
        ]
    }

    fn op() -> impl Strategy<Value = Value> {
        let name = prop_oneof![
            Just(json!("get")),
            Just(json!("put")),
            Just(json!("delete")),
            Just(json!("add")),
            Just(json!("check")),
            Just(json!("frob")),
            Just(json!(1)),
        ];
        let field = |name: &'static str| prop_oneof![3 => Just(None), 1 => scalar().prop_map(move |v| Some((name, v)))];
        (
            prop_oneof![6 => name.prop_map(Some), 1 => Just(None)],
            prop_oneof![6 => "[a-c]{0,10}".prop_map(|k| Some(json!(k))), 1 => scalar().prop_map(Some), 1 => Just(None)],
            (field("value"), field("delta"), field("floor"), field("version"), field("absent"), field("zz")),
            prop_oneof![9 => Just(false), 1 => Just(true)],
        )
            .prop_map(|(name, key, extra, not_an_object)| {
                if not_an_object {
                    return json!("an op");
                }
                let mut fields = Map::new();
                if let Some(name) = name {
                    fields.insert("op".into(), name);
                }
                if let Some(key) = key {
                    fields.insert("key".into(), key);
                }
                let (a, b, c, d, e, f) = extra;
                for (name, value) in [a, b, c, d, e, f].into_iter().flatten() {
                    fields.insert(name.into(), value);
                }
                Value::Object(fields)
            })
    }

    proptest! {
        /// Random bodies, mostly well-formed JSON with right and wrong ops: the one-pass parse
        /// answers as the reference does.
        #[test]
        fn agrees_with_the_reference(ops in prop::collection::vec(op(), 0..6), extra in any::<bool>(), cut in any::<prop::sample::Index>(), truncate in prop::bool::weighted(0.1)) {
            let mut top = json!({"ops": ops});
            if extra {
                top["zz"] = json!(1);
            }
            let mut body = top.to_string().into_bytes();
            if truncate {
                body.truncate(cut.index(body.len() + 1));
            }
            prop_assert!(agrees(&body).is_ok(), "{}", agrees(&body).unwrap_err());
        }
    }

    #[test]
    fn renders_what_the_value_tree_rendered() {
        let value = |text: &str| Bytes::copy_from_slice(text.as_bytes());
        let outcomes = [
            Ok(vec![
                OpResult::Get(None),
                OpResult::Get(Some((value("text \"quoted\"\n"), 7))),
                OpResult::Get(Some((Bytes::from_static(b"\xff\xfe"), 8))),
                OpResult::Put { version: 8 },
                OpResult::Delete { deleted: true },
                OpResult::Delete { deleted: false },
                OpResult::Add {
                    value: -42,
                    version: 9,
                },
                OpResult::Check,
            ]),
            Ok(vec![]),
            Err(TxError::Failed {
                op_index: 2,
                reason: FailReason::Version { actual: Some(4) },
            }),
            Err(TxError::Failed {
                op_index: 0,
                reason: FailReason::Version { actual: None },
            }),
            Err(TxError::Failed {
                op_index: 1,
                reason: FailReason::Present { actual: 3 },
            }),
            Err(TxError::Failed {
                op_index: 3,
                reason: FailReason::Floor { value: -3 },
            }),
            Err(TxError::Failed {
                op_index: 0,
                reason: FailReason::NotInteger,
            }),
            Err(TxError::Failed {
                op_index: 0,
                reason: FailReason::Overflow,
            }),
            Err(TxError::Conflict),
            Err(TxError::Busy),
            Err(TxError::Full),
            Err(TxError::Unavailable),
            Err(TxError::Unknown),
            Err(TxError::LogFailed),
        ];
        for outcome in &outcomes {
            let (status, body) = render_outcome(outcome);
            // Byte for byte: a Value object prints its fields sorted, as the structs declare them.
            assert_eq!(body, reference::render(outcome).to_string(), "{outcome:?}");
            assert_eq!(
                status,
                outcome.as_ref().map_or_else(TxError::status, |_| 200)
            );
        }
    }
}
