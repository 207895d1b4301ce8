//! Dubbo responses: the body decoder for the consumer, and an encoder for
//! mock providers and tests.

use super::frame::{patch_len, status, write_header};
use super::request::attachments_of;
use super::{body_values, json_lines, json_value, Error, Serialization};
use crate::hessian2::{self, exception_message, Encoder, Value};

/// Result flag: an exception follows.
pub const RESPONSE_WITH_EXCEPTION: i32 = 0;
/// Result flag: a value follows.
pub const RESPONSE_VALUE: i32 = 1;
/// Result flag: the result is null.
pub const RESPONSE_NULL_VALUE: i32 = 2;
/// Result flag: an exception, then attachments.
pub const RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS: i32 = 3;
/// Result flag: a value, then attachments.
pub const RESPONSE_VALUE_WITH_ATTACHMENTS: i32 = 4;
/// Result flag: null, then attachments.
pub const RESPONSE_NULL_VALUE_WITH_ATTACHMENTS: i32 = 5;

/// What a response to encode carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reply<'a> {
    /// A value (flag 1 or 4).
    Value(&'a Value),
    /// Null (flag 2 or 5).
    Null,
    /// A `java.lang.RuntimeException` with this message (flag 0 or 3),
    /// shaped as Java writes one (its `cause` a reference to itself).
    Exception(&'a str),
    /// The error text of a non-OK status (the body is just this string).
    Error(&'a str),
}

/// Append a whole response frame. Non-empty `attachments` select the flags
/// 3..5, as Java 2.7 does for a 2.0.2 request. `status` goes in the header;
/// use a non-OK status with [`Reply::Error`].
///
/// # Errors
/// [`Error::BodyTooLong`] for a body past the limit; `out` is then unchanged.
pub fn encode_response(
    out: &mut Vec<u8>,
    id: i64,
    serialization: Serialization,
    status: u8,
    reply: &Reply<'_>,
    attachments: &[(&str, &str)],
) -> Result<(), Error> {
    let start = out.len();
    write_header(out, serialization.id(), status, id, 0);
    let with = i32::from(!attachments.is_empty()) * 3;
    let flag = match reply {
        Reply::Exception(_) => RESPONSE_WITH_EXCEPTION + with,
        Reply::Value(_) => RESPONSE_VALUE + with,
        Reply::Null => RESPONSE_NULL_VALUE + with,
        Reply::Error(_) => -1,
    };
    match serialization {
        Serialization::Hessian2 => {
            let mut enc = Encoder::new();
            match reply {
                Reply::Error(text) => hessian2::write_string(out, text),
                _ => hessian2::write_int(out, flag),
            }
            match reply {
                Reply::Value(v) => enc.write_value(out, v),
                Reply::Exception(msg) => write_exception(&mut enc, out, msg),
                Reply::Null | Reply::Error(_) => {}
            }
            if with != 0 && !matches!(reply, Reply::Error(_)) {
                hessian2::write_map_begin(out, None);
                for (k, v) in attachments {
                    hessian2::write_string(out, k);
                    hessian2::write_string(out, v);
                }
                hessian2::write_end(out);
            }
        }
        Serialization::Fastjson => {
            let line = |out: &mut Vec<u8>, j: &serde_json::Value| {
                let _ = serde_json::to_writer(&mut *out, j);
                out.push(b'\n');
            };
            if let Reply::Error(text) = reply {
                line(out, &serde_json::Value::String((*text).to_owned()));
            } else {
                line(out, &flag.into());
                match reply {
                    Reply::Value(v) => line(out, &v.to_fastjson()),
                    Reply::Exception(msg) => line(
                        out,
                        &serde_json::json!({
                            "@type": "java.lang.RuntimeException",
                            "localizedMessage": msg,
                            "message": msg,
                        }),
                    ),
                    Reply::Null | Reply::Error(_) => {}
                }
                if with != 0 {
                    let m: serde_json::Map<String, serde_json::Value> = attachments
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).into()))
                        .collect();
                    line(out, &serde_json::Value::Object(m));
                }
            }
        }
    }
    let res = patch_len(out, start);
    if res.is_err() {
        out.truncate(start);
    }
    res
}

/// A `RuntimeException` as Java's hessian2 writes it: `detailMessage`,
/// `cause` (itself), an empty stack trace, no suppressed exceptions.
fn write_exception(enc: &mut Encoder, out: &mut Vec<u8>, msg: &str) {
    enc.write_object_begin(
        out,
        "java.lang.RuntimeException",
        &[
            "detailMessage",
            "cause",
            "stackTrace",
            "suppressedExceptions",
        ],
    );
    hessian2::write_string(out, msg);
    // The exception is the first referenceable value of the body: index 0.
    out.push(0x51);
    hessian2::write_int(out, 0);
    hessian2::write_list_begin(out, 0, Some("[java.lang.StackTraceElement"));
    hessian2::write_list_begin(out, 0, Some("java.util.Collections$EmptyList"));
}

/// The result carried by a response.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A value (flag 1 or 4).
    Value(Value),
    /// A null result (flag 2 or 5).
    Null,
    /// A thrown exception (flag 0 or 3): its message when one was found
    /// (see [`exception_message`]), and the whole value.
    Exception {
        /// `detailMessage` of the exception or of a cause.
        message: Option<String>,
        /// The decoded exception object.
        value: Value,
    },
    /// A non-OK status with its error text.
    Error {
        /// The header status.
        status: u8,
        /// The error text (empty when the body held none).
        message: String,
    },
}

/// A decoded response body.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The result.
    pub outcome: Outcome,
    /// Attachments (flags 3..5), in wire order; empty otherwise.
    pub attachments: Vec<(String, Value)>,
    /// Where the result (or exception) value lies in a hessian2 body. Its bytes are a
    /// whole hessian2 value on their own (the flag before it defines no class, type or
    /// reference), so a proxy can forward them as they are: encoding the decoded value
    /// again would renumber its back-references, which the decoder resolved to copies.
    pub value_span: Option<std::ops::Range<usize>>,
}

fn outcome(flag: i64, payload: Option<Value>) -> Result<Outcome, Error> {
    let need = |p: Option<Value>| p.ok_or(Error::Truncated { what: "result" });
    Ok(match flag {
        0 | 3 => {
            let value = need(payload)?;
            Outcome::Exception {
                message: exception_message(&value),
                value,
            }
        }
        1 | 4 => Outcome::Value(need(payload)?),
        2 | 5 => Outcome::Null,
        _ => return Err(Error::BadFlag(flag)),
    })
}

fn flag_of(v: &Value) -> Result<i64, Error> {
    match v {
        Value::Int(i) => Ok(i64::from(*i)),
        Value::Long(l) => Ok(*l),
        _ => Err(Error::BadField {
            what: "result flag",
            expected: "an int",
        }),
    }
}

fn error_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_text(),
    }
}

/// Decode a response body given the header's serialization id and status.
///
/// Flags 0..5 are all accepted. A non-OK status yields
/// [`Outcome::Error`] with the body's string. A body whose flag is missing
/// (dubbo-remoting 2.1.4 sends `90` alone for a falsy result) reads as flag
/// 0 with no exception and is reported as [`Error::Truncated`].
///
/// # Errors
/// Unsupported serialization, malformed or truncated values, an unknown flag.
pub fn decode_response_body(serialization: u8, status: u8, body: &[u8]) -> Result<Response, Error> {
    let ser = Serialization::from_id(serialization)
        .ok_or(Error::UnsupportedSerialization(serialization))?;
    let mut value_span = None;
    let (flag, payload, attachments) = match ser {
        Serialization::Hessian2 => {
            let mut vals = body_values(body);
            if status != status::OK {
                let message = vals.next_value()?.map(error_text).unwrap_or_default();
                return Ok(Response {
                    outcome: Outcome::Error { status, message },
                    attachments: Vec::new(),
                    value_span: None,
                });
            }
            let flag = flag_of(&vals.need("result flag")?)?;
            let start = body.len() - vals.rest.len();
            let payload = if matches!(flag, 2 | 5) {
                None
            } else {
                vals.next_value()?
            };
            value_span = payload
                .is_some()
                .then(|| start..body.len() - vals.rest.len());
            let att = if flag >= 3 { vals.next_value()? } else { None };
            (flag, payload, att)
        }
        Serialization::Fastjson => {
            let mut lines = json_lines(body);
            let mut next = |what| lines.next().map(|l| json_value(l, what)).transpose();
            if status != status::OK {
                let message = next("error text")?.map(error_text).unwrap_or_default();
                return Ok(Response {
                    outcome: Outcome::Error { status, message },
                    attachments: Vec::new(),
                    value_span: None,
                });
            }
            let flag = flag_of(&next("result flag")?.ok_or(Error::Truncated {
                what: "result flag",
            })?)?;
            let payload = if matches!(flag, 2 | 5) {
                None
            } else {
                next("result")?
            };
            let att = if flag >= 3 {
                next("attachments")?
            } else {
                None
            };
            (flag, payload, att)
        }
    };
    Ok(Response {
        outcome: outcome(flag, payload)?,
        attachments: match attachments {
            Some(v) => attachments_of(v)?,
            None => Vec::new(),
        },
        value_span,
    })
}
