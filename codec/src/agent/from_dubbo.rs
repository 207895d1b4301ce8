//! A Dubbo provider's answer as the agent RESPONSE that stands for it.
//!
//! Whoever talks Dubbo to a provider on behalf of an agent-protocol call writes the
//! same frame: the provider-agent for its consumer-agents, and a consumer-agent that
//! calls an unmeshed Dubbo provider itself (its calls then complete exactly as if a
//! provider-agent had answered).

use super::frame::{begin_raw_response, begin_response_with, encode_response, finish};
use super::Status;
use crate::dubbo::{self, Outcome};
use crate::hessian2::{self, exception_summary, Encoder, Skipper, Value};
use crate::Decoded;

/// The agent status for a Dubbo error status: timeouts as TIMEOUT, a request the
/// provider could not decode as BAD_REQUEST, a service it does not export as
/// UNAVAILABLE (the call did not start: another provider may have it), a full thread
/// pool as OVERLOADED; the rest as PROVIDER_ERROR (it may have run).
pub fn status_of_dubbo(dubbo_status: u8) -> Status {
    match dubbo_status {
        dubbo::status::OK => Status::Ok,
        dubbo::status::CLIENT_TIMEOUT | dubbo::status::SERVER_TIMEOUT => Status::Timeout,
        dubbo::status::BAD_REQUEST => Status::BadRequest,
        dubbo::status::SERVICE_NOT_FOUND => Status::Unavailable,
        dubbo::status::SERVER_THREADPOOL_EXHAUSTED => Status::Overloaded,
        _ => Status::ProviderError,
    }
}

/// The provider's response attachments as strings for the agent protocol. Null values
/// are dropped, other non-strings rendered as text; so is `dubbo`, the protocol version
/// Java 2.7 adds to every response (it describes the Dubbo hop, not the call).
pub fn response_attachments(attachments: Vec<(String, Value)>) -> Vec<(String, String)> {
    attachments
        .into_iter()
        .filter(|(k, v)| k != "dubbo" && *v != Value::Null)
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => (k, other.to_text()),
        })
        .collect()
}

/// Appends to `out` the RESPONSE frame answering request `id` with the Dubbo response
/// `frame`, and returns its status.
///
/// With `raw` the payload is the provider's body byte for byte (the caller speaks
/// Dubbo); without, a result goes on as the provider's hessian2 bytes, an exception as
/// its summary, an error as its message. An answer too large for a frame becomes a
/// PROVIDER_ERROR saying so.
///
/// ```
/// use codec::agent::{self, Frame, Status};
/// use codec::dubbo;
/// use codec::Decoded;
///
/// // A provider's "null" result, hessian2 with Dubbo 2.0.2's flags.
/// let mut wire = Vec::new();
/// dubbo::write_header(&mut wire, 0x02, dubbo::status::OK, 9, 2);
/// wire.extend_from_slice(&[0x92, b'N']);
/// let Ok(Decoded::Complete { msg: frame, .. }) = dubbo::decode_frame(&wire) else { panic!() };
///
/// let mut out = Vec::new();
/// assert_eq!(agent::encode_dubbo_answer(&mut out, 7, &frame, false), Status::Ok);
/// let Ok(Decoded::Complete { msg: Frame::Response(r), .. }) = agent::decode(&out) else { panic!() };
/// assert_eq!((r.id, r.status, r.payload), (7, Status::Ok, &b"N"[..]));
/// ```
pub fn encode_dubbo_answer(
    out: &mut Vec<u8>,
    id: u64,
    frame: &dubbo::Frame<'_>,
    raw: bool,
) -> Status {
    let start = out.len();
    let written = if raw {
        encode_raw(out, id, frame)
    } else {
        encode_decoded(out, id, frame)
    };
    written.unwrap_or_else(|()| {
        out.truncate(start);
        let msg = b"the provider's answer is too large for an agent frame";
        let _ = encode_response(out, id, Status::ProviderError, msg);
        Status::ProviderError
    })
}

/// The agent status a Dubbo answer counts as, read from its header and result flag
/// only: an OK answer whose flag says "exception" is [`Status::Exception`].
pub fn status_of_answer(frame: &dubbo::Frame<'_>) -> Status {
    match frame.status() {
        dubbo::status::OK if dubbo::server::answers_exception(frame) => Status::Exception,
        other => status_of_dubbo(other),
    }
}

/// The body byte for byte, under the status the consumer-agent retries or counts by.
fn encode_raw(out: &mut Vec<u8>, id: u64, frame: &dubbo::Frame<'_>) -> Result<Status, ()> {
    let status = status_of_answer(frame);
    let mark = begin_raw_response(out, id, status, frame.status(), frame.serialization_id());
    out.extend_from_slice(frame.body);
    finish(out, mark).map(|()| status).map_err(drop)
}

fn encode_decoded(out: &mut Vec<u8>, id: u64, frame: &dubbo::Frame<'_>) -> Result<Status, ()> {
    if frame.status() != dubbo::status::OK {
        return encode_any(out, id, frame);
    }
    let serialization = frame.serialization_id();
    if serialization == dubbo::Serialization::Hessian2.id() {
        if let Some(p) = plain_answer(frame.body) {
            let mark = begin_response_with(out, id, Status::Ok, p.attachments()).map_err(drop)?;
            out.extend_from_slice(p.value);
            return finish(out, mark).map(|()| Status::Ok).map_err(drop);
        }
    } else if serialization == dubbo::Serialization::Fastjson.id() {
        if let Some(p) = plain_json_answer(frame.body) {
            let mark = begin_response_with(out, id, Status::Ok, p.attachments()).map_err(drop)?;
            p.value.write_hessian2(out);
            return finish(out, mark).map(|()| Status::Ok).map_err(drop);
        }
    }
    encode_any(out, id, frame)
}

/// A fastjson result read without building a value: null, a boolean, an integer or a
/// string without escapes (what the race's `hash` and most getters answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlainJson<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Str(&'a str),
}

impl PlainJson<'_> {
    /// The value as [`encode_any`] writes it: integers as int when they fit, else long.
    fn write_hessian2(self, out: &mut Vec<u8>) {
        match self {
            PlainJson::Null => hessian2::write_null(out),
            PlainJson::Bool(b) => hessian2::write_bool(out, b),
            PlainJson::Int(i) => match i32::try_from(i) {
                Ok(i) => hessian2::write_int(out, i),
                Err(_) => hessian2::write_long(out, i),
            },
            PlainJson::Str(s) => hessian2::write_string(out, s),
        }
    }
}

/// Reads a fastjson OK body whose flag is a value or null (with or without
/// attachments), whose value is a [`PlainJson`] and whose attachments, if any, are an
/// object of escape-free strings or nulls with distinct keys (at most
/// [`PLAIN_ATTACHMENTS`] kept; `dubbo` and nulls dropped, as [`response_attachments`]
/// drops them). `None` for any other body, which [`encode_any`] reads (and which says
/// what is wrong with it, if anything).
fn plain_json_answer(body: &[u8]) -> Option<PlainAnswer<'_, PlainJson<'_>>> {
    // Lines as the decoder reads them: blank ones skipped, JSON's blanks around a value.
    let mut lines = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(trim_json_blanks);
    let (has_value, has_attachments) = match lines.next()? {
        b"1" => (true, false),
        b"2" => (false, false),
        b"4" => (true, true),
        b"5" => (false, true),
        _ => return None,
    };
    let value = match has_value {
        true => plain_json(lines.next()?)?,
        false => PlainJson::Null,
    };
    let mut answer = PlainAnswer::new(value);
    if has_attachments {
        let mut rest = lines.next()?.strip_prefix(b"{")?;
        // Every key, dropped ones too, to refuse a repeated one (a JSON object keeps
        // the last value of a key at the first one's place: the general way's work).
        let mut keys = [""; PLAIN_ATTACHMENTS + 2];
        let mut n_keys = 0;
        rest = trim_json_blanks(rest);
        if let Some(end) = rest.strip_prefix(b"}") {
            rest = end;
        } else {
            loop {
                let (key, after) = json_plain_str(rest)?;
                if keys.get(..n_keys)?.contains(&key) {
                    return None;
                }
                *keys.get_mut(n_keys)? = key;
                n_keys += 1;
                rest = trim_json_blanks(after).strip_prefix(b":")?;
                rest = trim_json_blanks(rest);
                if let Some(after) = rest.strip_prefix(b"null") {
                    rest = after;
                } else {
                    let (value, after) = json_plain_str(rest)?;
                    rest = after;
                    if key != "dubbo" {
                        answer.keep(key, value)?;
                    }
                }
                rest = trim_json_blanks(rest);
                match rest.split_first()? {
                    (b',', after) => rest = trim_json_blanks(after),
                    (b'}', after) => {
                        rest = after;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        if !rest.is_empty() {
            return None;
        }
    }
    lines.next().is_none().then_some(answer)
}

/// The escape-free JSON string at the start of `v` (no blanks before it), and what
/// follows it.
fn json_plain_str(v: &[u8]) -> Option<(&str, &[u8])> {
    let inner = v.strip_prefix(b"\"")?;
    let end = inner
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')?;
    let (text, after) = inner.split_at_checked(end)?;
    let after = after.strip_prefix(b"\"")?;
    Some((std::str::from_utf8(text).ok()?, after))
}

/// `line` without the blanks JSON allows around a value (a line has no `\n`).
fn trim_json_blanks(line: &[u8]) -> &[u8] {
    let blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\r');
    let start = line.iter().position(|b| !blank(b)).unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |e| e + 1);
    line.get(start..end).unwrap_or_default()
}

/// One JSON value of those [`PlainJson`] covers, exactly as written (no blanks).
fn plain_json(v: &[u8]) -> Option<PlainJson<'_>> {
    match v {
        b"null" => Some(PlainJson::Null),
        b"true" => Some(PlainJson::Bool(true)),
        b"false" => Some(PlainJson::Bool(false)),
        [b'"', ..] => match json_plain_str(v)? {
            (s, b"") => Some(PlainJson::Str(s)),
            _ => None,
        },
        _ => {
            // An integer as JSON writes one: no plus, no leading zero, no `-0` (a float
            // to JSON parsers); one past i64 goes the general way too.
            let digits = v.strip_prefix(b"-").unwrap_or(v);
            let canonical = match digits {
                [b'0'] => digits.len() == v.len(),
                [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
                _ => false,
            };
            let text = std::str::from_utf8(v).ok().filter(|_| canonical)?;
            text.parse().ok().map(PlainJson::Int)
        }
    }
}

/// Most attachments [`plain_answer`] takes; more go the general way.
const PLAIN_ATTACHMENTS: usize = 8;

/// A provider's result or null read without building a value: what nearly every
/// answer is, and all [`encode_any`] would make of it. `V` is the result: its hessian2
/// bytes as the provider wrote them (`N` for null), or a [`PlainJson`].
struct PlainAnswer<'a, V> {
    value: V,
    attachments: [(&'a str, &'a str); PLAIN_ATTACHMENTS],
    len: usize,
}

impl<'a, V> PlainAnswer<'a, V> {
    fn new(value: V) -> Self {
        PlainAnswer {
            value,
            attachments: [("", ""); PLAIN_ATTACHMENTS],
            len: 0,
        }
    }

    /// Keeps one more attachment; `None` past [`PLAIN_ATTACHMENTS`].
    fn keep(&mut self, key: &'a str, value: &'a str) -> Option<()> {
        *self.attachments.get_mut(self.len)? = (key, value);
        self.len += 1;
        Some(())
    }

    fn attachments(&self) -> &[(&'a str, &'a str)] {
        self.attachments.get(..self.len).unwrap_or_default()
    }
}

/// Reads a hessian2 OK body whose flag is a value or null (with or without
/// attachments) and whose attachments, if any, are ASCII strings or null (at most
/// [`PLAIN_ATTACHMENTS`] kept): the result's bytes are walked ([`Skipper`], which
/// fails where the decoder would), nothing is allocated. The attachments are those
/// [`response_attachments`] keeps: `dubbo` and null values dropped. `None` for any
/// other body, which [`encode_any`] reads.
fn plain_answer(body: &[u8]) -> Option<PlainAnswer<'_, &[u8]>> {
    // Flags 0-5 are written as one-byte ints, 0x90 + flag.
    let (&flag, mut rest) = body.split_first()?;
    let (has_value, has_attachments) = match flag {
        0x91 => (true, false),
        0x92 => (false, false),
        0x94 => (true, true),
        0x95 => (false, true),
        _ => return None,
    };
    let value: &[u8] = if has_value {
        let Ok(Decoded::Complete { consumed, .. }) = Skipper::new().skip(rest) else {
            return None;
        };
        let (value, tail) = rest.split_at_checked(consumed)?;
        rest = tail;
        value
    } else {
        b"N"
    };
    let mut answer = PlainAnswer::new(value);
    if has_attachments {
        // An untyped map of ASCII strings, then the end of the body.
        rest = rest.strip_prefix(b"H")?;
        loop {
            if let Some(end) = rest.strip_prefix(b"Z") {
                rest = end;
                break;
            }
            let (key, n) = dubbo::ascii_string(rest)?;
            rest = rest.get(n..)?;
            if let Some(after_null) = rest.strip_prefix(b"N") {
                rest = after_null;
                continue;
            }
            let (value, n) = dubbo::ascii_string(rest)?;
            rest = rest.get(n..)?;
            if key == "dubbo" {
                continue;
            }
            answer.keep(key, value)?;
        }
    }
    rest.is_empty().then_some(answer)
}

/// [`encode_decoded`] for any answer: its body decoded into values.
fn encode_any(out: &mut Vec<u8>, id: u64, frame: &dubbo::Frame<'_>) -> Result<Status, ()> {
    let decoded = dubbo::decode_response_body(frame.serialization_id(), frame.status(), frame.body);
    let resp = match decoded {
        Ok(resp) => resp,
        Err(e) => {
            let text = format!("undecodable provider response: {e}");
            return text_response(out, id, Status::ProviderError, &text);
        }
    };
    // Empty in the common case: then nothing is allocated here.
    let owned = response_attachments(resp.attachments);
    let att: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (status, payload) = match resp.outcome {
        // A hessian2 result goes on as the provider wrote it (not encoded again, so its
        // back-references stay as numbered).
        Outcome::Value(v) => match resp.value_span.and_then(|r| frame.body.get(r)) {
            Some(bytes) => (Status::Ok, Payload::Encoded(bytes)),
            None => (Status::Ok, Payload::Value(v)),
        },
        Outcome::Null => (Status::Ok, Payload::Value(Value::Null)),
        Outcome::Exception { value, .. } => {
            (Status::Exception, Payload::Value(exception_summary(&value)))
        }
        Outcome::Error { status, message } => {
            let text = if !message.is_empty() {
                message
            } else if status == dubbo::status::SERVER_THREADPOOL_EXHAUSTED {
                "provider thread pool exhausted".to_owned()
            } else {
                format!("provider answered dubbo status {status}")
            };
            return text_response(out, id, status_of_dubbo(status), &text);
        }
    };
    let mark = begin_response_with(out, id, status, &att).map_err(drop)?;
    match payload {
        Payload::Value(v) => Encoder::new().write_value(out, &v),
        Payload::Encoded(bytes) => out.extend_from_slice(bytes),
    }
    finish(out, mark).map(|()| status).map_err(drop)
}

/// A result value: decoded (encoded as hessian2 on the way out), or hessian2 bytes as
/// the provider wrote them.
enum Payload<'a> {
    Value(Value),
    Encoded(&'a [u8]),
}

fn text_response(out: &mut Vec<u8>, id: u64, status: Status, text: &str) -> Result<Status, ()> {
    encode_response(out, id, status, text.as_bytes())
        .map(|()| status)
        .map_err(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{decode, Frame};
    use crate::Decoded;

    fn dubbo_frame(status: u8, body: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        dubbo::write_header(&mut wire, 0x02, status, 5, body.len() as u32);
        wire.extend_from_slice(body);
        wire
    }

    fn answer(wire: &[u8], raw: bool) -> (Status, Vec<u8>) {
        let Ok(Decoded::Complete { msg: frame, .. }) = dubbo::decode_frame(wire) else {
            panic!("bad test frame")
        };
        let mut out = Vec::new();
        let status = encode_dubbo_answer(&mut out, 1, &frame, raw);
        let Ok(Decoded::Complete {
            msg: Frame::Response(r),
            ..
        }) = decode(&out)
        else {
            panic!("not a response")
        };
        assert_eq!(r.status, status);
        (status, r.payload.to_vec())
    }

    #[test]
    fn errors_keep_their_message_under_the_status_a_consumer_acts_on() {
        // Dubbo's error bodies are a hessian2 string.
        let mut body = Vec::new();
        Encoder::new().write_value(&mut body, &Value::String("pool full".into()));
        let (status, payload) = answer(
            &dubbo_frame(dubbo::status::SERVER_THREADPOOL_EXHAUSTED, &body),
            false,
        );
        assert_eq!(
            (status, payload.as_slice()),
            (Status::Overloaded, &b"pool full"[..])
        );
        let (status, _) = answer(&dubbo_frame(dubbo::status::SERVICE_NOT_FOUND, &body), false);
        assert_eq!(status, Status::Unavailable);
    }

    #[test]
    fn raw_answers_carry_the_body_and_read_exceptions_from_the_flag() {
        let (status, payload) = answer(&dubbo_frame(dubbo::status::OK, &[0x90, b'N']), true);
        assert_eq!(status, Status::Exception);
        assert_eq!(payload, [0x90, b'N']);
        let (status, _) = answer(&dubbo_frame(dubbo::status::OK, &[0x91, b'N']), true);
        assert_eq!(status, Status::Ok);
        let (status, _) = answer(&dubbo_frame(dubbo::status::SERVER_TIMEOUT, b""), true);
        assert_eq!(status, Status::Timeout);
    }

    /// Hessian2 bytes of `values`, one after the other (one encoder: class
    /// definitions and references as a provider would write them).
    fn hessian(values: &[Value]) -> Vec<u8> {
        let mut enc = Encoder::new();
        let mut out = Vec::new();
        for v in values {
            enc.write_value(&mut out, v);
        }
        out
    }

    fn map(pairs: &[(&str, Value)]) -> Value {
        Value::Map {
            type_name: None,
            entries: pairs
                .iter()
                .map(|(k, v)| (Value::String((*k).into()), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn plain_answers_are_read_as_decoding_would_read_them() {
        let s = |t: &str| Value::String(t.into());
        let dubbo = ("dubbo", s("2.0.2"));
        let many: Vec<(String, Value)> = (0..9).map(|i| (format!("k{i}"), s("v"))).collect();
        let many: Vec<(&str, Value)> = many.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let pojo = Value::Object {
            class: "a.B".into(),
            fields: vec![("x".into(), Value::Int(1))],
        };
        let list = Value::List {
            type_name: None,
            items: vec![s("x"), s("y")],
        };
        // (body, whether the plain reader takes it)
        let cases: Vec<(Vec<u8>, bool)> = vec![
            (hessian(&[Value::Int(1), Value::Int(-12345)]), true),
            (hessian(&[Value::Int(2)]), true),
            (
                hessian(&[
                    Value::Int(4),
                    Value::Int(7),
                    map(std::slice::from_ref(&dubbo)),
                ]),
                true,
            ),
            (
                hessian(&[
                    Value::Int(4),
                    s("héllo"),
                    map(&[("k", s("v")), dubbo.clone(), ("n", Value::Null)]),
                ]),
                true,
            ),
            (hessian(&[Value::Int(5), map(&[])]), true),
            (
                hessian(&[
                    Value::Int(4),
                    pojo.clone(),
                    map(std::slice::from_ref(&dubbo)),
                ]),
                true,
            ),
            (hessian(&[Value::Int(1), list.clone()]), true),
            // The general way: more attachments than kept, a value not ASCII or not a
            // string, an exception, bytes after the body's last value.
            (hessian(&[Value::Int(5), map(&many)]), false),
            (hessian(&[Value::Int(5), map(&[("k", s("ü"))])]), false),
            (
                hessian(&[Value::Int(5), map(&[("k", Value::Int(3))])]),
                false,
            ),
            (hessian(&[Value::Int(0), pojo]), false),
            (
                hessian(&[Value::Int(1), Value::Int(1), Value::Int(1)]),
                false,
            ),
            // A result that refers back to itself.
            ([&[0x91][..], &hex_list_with_ref()].concat(), true),
        ];
        for (body, plain) in cases {
            assert_eq!(plain_answer(&body).is_some(), plain, "{body:02x?}");
            let wire = dubbo_frame(dubbo::status::OK, &body);
            let Ok(Decoded::Complete { msg: frame, .. }) = dubbo::decode_frame(&wire) else {
                panic!("bad test frame")
            };
            let (mut fast, mut general) = (Vec::new(), Vec::new());
            let a = encode_decoded(&mut fast, 9, &frame);
            let b = encode_any(&mut general, 9, &frame);
            assert_eq!((a, &fast), (b, &general), "{body:02x?}");
        }
    }

    /// The fast and the general way give the same frame for a fastjson body.
    fn same_either_way(body: &[u8]) -> bool {
        let mut wire = Vec::new();
        dubbo::write_header(&mut wire, 0x06, dubbo::status::OK, 5, body.len() as u32);
        wire.extend_from_slice(body);
        let Ok(Decoded::Complete { msg: frame, .. }) = dubbo::decode_frame(&wire) else {
            panic!("bad test frame")
        };
        let (mut fast, mut general) = (Vec::new(), Vec::new());
        let a = encode_decoded(&mut fast, 9, &frame);
        let b = encode_any(&mut general, 9, &frame);
        (a, &fast) == (b, &general)
    }

    #[test]
    fn plain_json_answers_are_read_as_decoding_would_read_them() {
        let long = format!("1\n\"{}\"\n", "x".repeat(70_000));
        // (body, whether the plain reader takes it)
        let cases: Vec<(&[u8], bool)> = vec![
            (b"1\n-12345\n", true),
            (b"1\n0\n", true),
            (b"1\n2147483647\n", true),
            (b"1\n2147483648\n", true),
            (b"1\n-9223372036854775808\n", true),
            (b"1\n\"h\xc3\xa9llo \x7f\"\n", true),
            (b"1\n\"\"\n", true),
            (long.as_bytes(), true),
            (b"1\ntrue\n", true),
            (b"1\nfalse", true),
            (b"1\nnull\n", true),
            (b"2\n", true),
            (b"\n \r\n1\r\n \t 7 \r\n\n", true),
            (b"4\n7\n{\"dubbo\":\"2.0.2\"}\n", true),
            (b"4\n7\n{}\n", true),
            (b"5\n{ \"k\" : \"v\" , \"n\":null,\"dubbo\":\"2.0.2\",\"h\":\"\xc3\xa9\"}\n", true),
            (b"4\n\"x\"\n{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\",\"d\":\"4\",\"e\":\"5\",\"f\":\"6\",\"g\":\"7\",\"h\":\"8\"}", true),
            // The general way: what it reads otherwise or refuses.
            (b"1\n9223372036854775808\n", false),
            (b"1\n-0\n", false),
            (b"1\n007\n", false),
            (b"1\n+7\n", false),
            (b"1\n1.5\n", false),
            (b"1\n1e3\n", false),
            (b"1\n\"a\\nb\"\n", false),
            (b"1\n\"a\tb\"\n", false),
            (b"1\n\"\xff\"\n", false),
            (b"1\n\"\n", false),
            (b"1\n[1,2]\n", false),
            (b"1\n{\"a\":1}\n", false),
            (b"1\n\x0c7\n", false),
            (b"1\n7\n8\n", false),
            (b"1\n", false),
            (b"4\n\"x\"\n{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\",\"d\":\"4\",\"e\":\"5\",\"f\":\"6\",\"g\":\"7\",\"h\":\"8\",\"i\":\"9\"}", false),
            (b"4\n7\n{\"k\":\"v\",\"k\":\"w\"}\n", false),
            (b"4\n7\n{\"k\":1}\n", false),
            (b"4\n7\n{\"k\":\"a\\\"b\"}\n", false),
            (b"4\n7\n{\"k\":\"v\",}\n", false),
            (b"4\n7\n{\"k\":\"v\"} x\n", false),
            (b"4\n7\n{\"k\":\"v\"\n", false),
            (b"4\n7\nnull\n", false),
            (b"4\n7\n", false),
            (b"4\n7\n{}\n{}\n", false),
            (b"0\n{\"message\":\"boom\"}\n", false),
            (b"2\n7\n", false),
            (b"", false),
        ];
        for (body, plain) in cases {
            let shown = String::from_utf8_lossy(body);
            assert_eq!(plain_json_answer(body).is_some(), plain, "{shown:?}");
            assert!(same_either_way(body), "{shown:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_integer_or_string_result_is_read_as_decoding_would_read_it(
            i in proptest::prelude::any::<i64>(),
            s in "[^\"\\\\\u{0}-\u{1f}]{0,40}",
        ) {
            let int = format!("1\n{i}\n");
            proptest::prop_assert!(same_either_way(int.as_bytes()));
            let body = format!("1\n{}\n", serde_json::to_string(&s).unwrap());
            proptest::prop_assert!(plain_json_answer(body.as_bytes()).is_some());
            proptest::prop_assert!(same_either_way(body.as_bytes()));
        }
    }

    /// `[ {a: 1}, ref(1) ]`: a list whose second item refers to the first.
    fn hex_list_with_ref() -> Vec<u8> {
        vec![0x7a, 0x48, 0x01, 0x61, 0x91, 0x5a, 0x51, 0x91]
    }

    #[test]
    fn undecodable_bodies_are_provider_errors() {
        let (status, payload) = answer(&dubbo_frame(dubbo::status::OK, &[0x91, 0xff]), false);
        assert_eq!(status, Status::ProviderError);
        assert!(String::from_utf8_lossy(&payload).contains("undecodable"));
    }

    #[test]
    fn statuses_map_to_what_the_consumer_may_do() {
        assert_eq!(
            status_of_dubbo(dubbo::status::SERVICE_NOT_FOUND),
            Status::Unavailable
        );
        assert_eq!(
            status_of_dubbo(dubbo::status::BAD_REQUEST),
            Status::BadRequest
        );
        for s in [dubbo::status::CLIENT_TIMEOUT, dubbo::status::SERVER_TIMEOUT] {
            assert_eq!(status_of_dubbo(s), Status::Timeout);
        }
        for s in [
            dubbo::status::SERVICE_ERROR,
            dubbo::status::SERVER_ERROR,
            dubbo::status::BAD_RESPONSE,
        ] {
            assert!(!status_of_dubbo(s).is_retryable());
        }
    }
}
