//! `codec::dubbo::decode_request_body`, `decode_routed_request` and
//! `decode_response_body` on a bare body, for serialization ids 2 (hessian2) and 6
//! (fastjson), with
//! rendering of whatever decodes and a hessian2 round trip of result values.
//!
//! Input: byte 0 is the response status (0 stands for OK, 20), the rest the body.
#![no_main]

mod common;

use codec::dubbo::{
    decode_request_body, decode_response_body, decode_routed_request, encode_response, Outcome,
    Reply, Serialization,
};
use codec::Decoded;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&status, body)) = data.split_first() else {
        return;
    };
    let status = if status == 0 {
        codec::dubbo::status::OK
    } else {
        status
    };
    // What a proxy reads must agree with what a provider reads: the same leading
    // strings, and arguments that are a whole prefix of the body.
    let whole = decode_request_body(Serialization::Hessian2.id(), body);
    if let (Ok(routed), Ok(full)) = (decode_routed_request(body), &whole) {
        assert_eq!(routed.path, full.path);
        assert_eq!(routed.method, full.method);
        assert_eq!(routed.descriptor, full.descriptor);
        assert_eq!(routed.version, full.version.clone().unwrap_or_default());
    }
    if whole.is_ok() {
        assert!(decode_routed_request(body).is_ok(), "routing reads what a provider reads");
    }
    for ser in [Serialization::Hessian2, Serialization::Fastjson] {
        match decode_request_body(ser.id(), body) {
            Ok(b) => common::check_request_body(&b),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        match decode_response_body(ser.id(), status, body) {
            Ok(r) => {
                common::check_response(&r);
                if let (Serialization::Hessian2, Outcome::Value(v)) = (ser, &r.outcome) {
                    if common::round_trippable(v) && v.node_count() <= common::MAX_RENDERED_NODES {
                        let mut out = Vec::new();
                        encode_response(&mut out, 7, ser, status, &Reply::Value(v), &[])
                            .expect("a decoded value re-encodes");
                        let Ok(Decoded::Complete { msg: f, consumed }) =
                            codec::dubbo::decode_frame(&out)
                        else {
                            panic!("re-encoded response frame does not decode")
                        };
                        assert_eq!(consumed, out.len());
                        match decode_response_body(f.serialization_id(), f.status(), f.body) {
                            Ok(again) => assert_eq!(again.outcome, r.outcome),
                            // Inline, it may exceed budgets its references stayed within.
                            Err(codec::dubbo::Error::Hessian(
                                codec::hessian2::Error::TooManyNodes { .. },
                            )) => {}
                            Err(e) => panic!("re-encoded response body does not decode: {e}"),
                        }
                    }
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    // Unsupported ids are refused, never guessed.
    assert!(decode_request_body(3, body).is_err());
    assert!(decode_response_body(3, status, body).is_err());
});
