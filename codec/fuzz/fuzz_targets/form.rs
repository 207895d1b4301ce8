//! `codec::form`: `race_call`, `fields`, `raw_fields`, `decode` and
//! `decode_str` on an arbitrary form body, checked against each other.
#![no_main]

use std::borrow::Cow;

use codec::form::{decode, decode_str, fields, race_call, race_call_in, raw_fields, FormError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One component.
    match decode(data) {
        Ok(Cow::Borrowed(b)) => {
            assert_eq!(b, data);
            assert!(!data.contains(&b'%') && !data.contains(&b'+'));
        }
        Ok(Cow::Owned(v)) => {
            assert!(v.len() <= data.len());
            assert!(data.contains(&b'%') || data.contains(&b'+'));
        }
        Err(FormError::InvalidEscape { offset }) => {
            assert_eq!(data.get(offset), Some(&b'%'));
        }
        Err(e) => panic!("decode gave {e}"),
    }
    match decode_str(data) {
        Ok(s) => assert_eq!(Ok(s.as_bytes()), decode(data).as_deref()),
        Err(e) => {
            let _ = e.to_string();
        }
    }

    // Raw pairs: split exactly on `&` and the first `=`.
    let mut raw_bytes = 0;
    let mut raw = Vec::new();
    for (k, v) in raw_fields(data) {
        assert!(!k.contains(&b'&') && !k.contains(&b'=') && !v.contains(&b'&'));
        assert!(!k.is_empty() || !v.is_empty() || data.contains(&b'='));
        raw_bytes += k.len() + v.len();
        raw.push((k, v));
    }
    assert!(raw_bytes <= data.len());

    // Decoded pairs match the raw pairs one by one.
    let mut n = 0;
    for (i, f) in fields(data).enumerate() {
        let (rk, rv) = raw[i];
        match f {
            Ok((k, v)) => {
                assert_eq!(Ok(&*k), decode(rk).as_deref());
                assert_eq!(Ok(&*v), decode(rv).as_deref());
            }
            Err(_) => assert!(decode(rk).is_err() || decode(rv).is_err()),
        }
        n += 1;
    }
    assert_eq!(n, raw.len());

    // The race's call agrees with the first occurrence of each field.
    let first = |name: &str| {
        raw.iter()
            .find(|(k, _)| decode(k).is_ok_and(|k| *k == *name.as_bytes()))
            .map(|(_, v)| decode_str(v))
    };
    // The allocation-free variant agrees with the plain one on every input.
    let mut scratch = Vec::new();
    let plain = race_call(data);
    match (&plain, race_call_in(data, &mut scratch)) {
        (Ok(a), Ok(b)) => assert_eq!(*a, b),
        (Err(a), Err(b)) => assert_eq!(*a, b),
        (a, b) => panic!("race_call {a:?} but race_call_in {b:?}"),
    }
    match plain {
        Ok(call) => {
            assert_eq!(first("interface"), Some(Ok(call.interface.clone())));
            assert_eq!(first("method"), Some(Ok(call.method.clone())));
            assert_eq!(first("parameter"), call.parameter.clone().map(Ok));
            match first("parameterTypesString") {
                Some(t) => assert_eq!(t, Ok(call.parameter_types.clone())),
                None => assert_eq!(call.parameter_types, ""),
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
