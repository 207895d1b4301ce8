//! Checks shared by the targets: render what decoded, and re-encode it.
#![allow(dead_code)]

use codec::dubbo::{Outcome, RequestBody, Response};
use codec::hessian2::{self, exception_message, Value};
use codec::Decoded;

/// Values larger than this are not rendered or re-encoded: a few hundred
/// bytes of references may legitimately resolve to millions of nodes (up to
/// `hessian2::MAX_NODES`), and rendering those is the harness's cost, not
/// the decoder's.
pub const MAX_RENDERED_NODES: usize = 100_000;

/// Render a value every way the mesh does; none may panic.
pub fn render(v: &Value) {
    let _ = exception_message(v);
    if v.node_count() > MAX_RENDERED_NODES {
        return;
    }
    let j = v.to_json();
    let _ = j.to_string();
    let _ = v.to_fastjson().to_string();
    let t = v.to_text();
    if let Value::String(s) = v {
        assert_eq!(&t, s);
    }
}

/// Whether a value survives an encode/decode round trip unchanged: no cycle
/// marker (its index means something else in a new stream) and no NaN
/// (never equal to itself).
pub fn round_trippable(v: &Value) -> bool {
    match v {
        Value::Ref(_) => false,
        Value::Double(d) => !d.is_nan(),
        Value::List { items, .. } => items.iter().all(round_trippable),
        Value::Map { entries, .. } => entries
            .iter()
            .all(|(k, v)| round_trippable(k) && round_trippable(v)),
        Value::Object { fields, .. } => fields.iter().all(|(_, v)| round_trippable(v)),
        _ => true,
    }
}

/// Re-encode a decoded value and decode it again: it must come back equal.
pub fn round_trip(v: &Value) {
    if !round_trippable(v) || v.node_count() > MAX_RENDERED_NODES {
        return;
    }
    let mut out = Vec::new();
    hessian2::write_value(&mut out, v);
    match hessian2::decode(&out) {
        Ok(Decoded::Complete { msg, consumed }) => {
            assert_eq!(consumed, out.len(), "re-encoded value not wholly consumed");
            assert_eq!(&msg, v, "re-encoded value decodes differently");
        }
        // Inline, a value resolved from references may exceed the budgets
        // that its references stayed within.
        Err(hessian2::Error::TooManyNodes { .. }) => {}
        other => panic!("re-encoded value does not decode: {other:?}"),
    }
}

pub fn check_request_body(b: &RequestBody) {
    assert_eq!(
        codec::dubbo::descriptor_arity(&b.descriptor).ok(),
        Some(b.args.len()),
        "argument count differs from the descriptor's"
    );
    for a in &b.args {
        render(a);
    }
    for (k, v) in &b.attachments {
        let _ = b.attachment(k);
        render(v);
    }
    let _ = format!("{b:?}");
}

pub fn check_response(r: &Response) {
    match &r.outcome {
        Outcome::Value(v) => render(v),
        Outcome::Exception { message, value } => {
            render(value);
            assert_eq!(message, &exception_message(value));
        }
        Outcome::Null => {}
        Outcome::Error { message, .. } => {
            let _ = message.len();
        }
    }
    for (_, v) in &r.attachments {
        render(v);
    }
}
