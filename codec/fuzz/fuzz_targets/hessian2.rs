//! `codec::hessian2::decode` and one `Decoder` over several values in a row
//! (tables shared), with rendering, a prefix check and a round trip.
#![no_main]

mod common;

use codec::hessian2::{decode, Decoder};
use codec::Decoded;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One value, fresh tables.
    if let Ok(Decoded::Complete { msg, consumed }) = decode(data) {
        assert!(consumed > 0 && consumed <= data.len());
        // Values are self-delimiting: a strict prefix is never complete.
        match decode(&data[..consumed - 1]) {
            Ok(Decoded::Complete { consumed: c, .. }) => {
                panic!("prefix of {consumed} bytes decoded whole in {c}")
            }
            _ => {}
        }
        common::render(&msg);
        common::round_trip(&msg);
    }

    // Several values with one decoder, as in a Dubbo body.
    let mut dec = Decoder::new();
    let mut rest = data;
    for _ in 0..64 {
        if rest.is_empty() {
            break;
        }
        let before = dec.clone();
        match dec.decode(rest) {
            Ok(Decoded::Complete { msg, consumed }) => {
                assert!(consumed > 0 && consumed <= rest.len());
                common::render(&msg);
                rest = &rest[consumed..];
            }
            Ok(Decoded::Incomplete) => {
                // Tables rolled back: the same call gives the same answer.
                let mut again = before;
                assert_eq!(again.decode(rest), Ok(Decoded::Incomplete));
                break;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                break;
            }
        }
    }
});
