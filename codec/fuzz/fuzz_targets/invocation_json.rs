//! `codec::invocation::Invocation::from_json` on arbitrary bytes; whatever
//! decodes is written back as JSON and must decode to the same invocation.
//! Each argument is then encoded as hessian2 by its declared type, as the
//! consumer-agent does; what encodes must decode again (within the decoder's
//! depth and size limits).
#![no_main]

use codec::hessian2::{Decoder, Encoder, Error};
use codec::invocation::Invocation;
use codec::Decoded;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fn to_json(inv: &Invocation) -> Value {
    let mut m = Map::new();
    m.insert("interface".into(), inv.interface.clone().into());
    m.insert("method".into(), inv.method.clone().into());
    if !inv.arguments.is_empty() || inv.parameter_types.is_empty() {
        m.insert(
            "parameterTypes".into(),
            inv.parameter_types
                .iter()
                .cloned()
                .map(Value::from)
                .collect(),
        );
    }
    m.insert("arguments".into(), Value::Array(inv.arguments.clone()));
    if let Some(v) = &inv.version {
        m.insert("version".into(), v.clone().into());
    }
    if let Some(g) = &inv.group {
        m.insert("group".into(), g.clone().into());
    }
    let att: Map<String, Value> = inv
        .attachments
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    m.insert("attachments".into(), Value::Object(att));
    if let Some(t) = inv.timeout_ms {
        m.insert("timeout".into(), t.into());
    }
    Value::Object(m)
}

/// Encode `arg` as `java_type`; when that works, the bytes decode to one value.
fn encode_and_decode(java_type: &str, arg: &Value) {
    let mut out = Vec::new();
    if Encoder::new()
        .encode_json_arg(java_type, arg, &mut out)
        .is_err()
    {
        return;
    }
    match Decoder::new().decode(&out) {
        Ok(Decoded::Complete { msg, consumed }) => {
            assert_eq!(consumed, out.len(), "{java_type} {arg}");
            let _ = msg.to_json();
        }
        Err(Error::TooDeep { .. } | Error::TooManyNodes { .. }) => {}
        other => panic!("{java_type} {arg}: our own bytes gave {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    match Invocation::from_json(data) {
        Ok(inv) => {
            assert!(!inv.interface.is_empty() && !inv.method.is_empty());
            assert_eq!(inv.parameter_types.len(), inv.arguments.len());
            assert!(inv.parameter_types.iter().all(|t| !t.is_empty()));
            for (t, a) in inv.parameter_types.iter().zip(&inv.arguments) {
                let _ = codec::hessian2::value_from_json(a).to_text();
                encode_and_decode(t, a);
            }
            let text = serde_json::to_vec(&to_json(&inv)).expect("serializable");
            let again = Invocation::from_json(&text).expect("re-encoded invocation decodes");
            assert_eq!(inv, again);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
        }
    }
});
