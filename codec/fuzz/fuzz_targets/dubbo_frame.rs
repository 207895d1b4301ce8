//! `codec::dubbo::decode_frame` over a stream of frames; each frame body is
//! decoded as a request and as a response for its own serialization id and
//! for ids 2 and 6, and whatever decodes is rendered.
#![no_main]

mod common;

use codec::dubbo::{
    decode_frame, decode_request_body, decode_response_body, status, HEADER_LEN, MAX_BODY_LEN,
};
use codec::Decoded;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    for _ in 0..64 {
        match decode_frame(rest) {
            Ok(Decoded::Complete { msg: f, consumed }) => {
                assert!(consumed >= HEADER_LEN && consumed <= rest.len());
                assert_eq!(consumed, HEADER_LEN + f.body.len());
                assert_eq!(f.header.body_len, f.body.len());
                assert!(f.body.len() <= MAX_BODY_LEN);
                let _ = (
                    f.is_heartbeat(),
                    f.is_two_way(),
                    f.header.serialization(),
                    f.id(),
                );
                let mut ids = vec![f.serialization_id()];
                ids.extend([2, 6].into_iter().filter(|&i| i != f.serialization_id()));
                for ser in ids {
                    if f.is_request() || ser != f.serialization_id() {
                        if let Ok(b) = decode_request_body(ser, f.body) {
                            common::check_request_body(&b);
                        }
                    }
                    if !f.is_request() || ser != f.serialization_id() {
                        for st in [f.status(), status::OK] {
                            if let Ok(r) = decode_response_body(ser, st, f.body) {
                                common::check_response(&r);
                            }
                        }
                    }
                }
                rest = &rest[consumed..];
            }
            Ok(Decoded::Incomplete) => {
                assert!(
                    rest.len() < HEADER_LEN || {
                        let len = i32::from_be_bytes(rest[12..16].try_into().unwrap());
                        len >= 0 && rest.len() < HEADER_LEN + len as usize
                    }
                );
                break;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                break;
            }
        }
    }
});
