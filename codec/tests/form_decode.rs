//! Form bodies: escapes, `+`, UTF-8, empty values, order, borrowing, the race's fields.

use std::borrow::Cow;

use codec::form::{
    decode, decode_into, decode_str, fields, race_call, race_call_in, raw_fields, FormError,
};

#[test]
fn escapes_in_either_case_and_plus() {
    assert_eq!(
        decode(b"Ljava%2Flang%2fString%3B").unwrap(),
        &b"Ljava/lang/String;"[..]
    );
    assert_eq!(decode(b"a+b+%2B").unwrap(), &b"a b +"[..]);
    assert_eq!(decode(b"%00%ff%FF").unwrap(), &[0u8, 255, 255][..]);
    assert_eq!(
        decode_str(b"%E4%BD%A0%e5%a5%bd").unwrap(),
        "\u{4f60}\u{597d}"
    );
}

#[test]
fn invalid_escapes_and_utf8() {
    assert_eq!(
        decode(b"ab%zz"),
        Err(FormError::InvalidEscape { offset: 2 })
    );
    assert_eq!(decode(b"%4"), Err(FormError::InvalidEscape { offset: 0 }));
    assert_eq!(decode(b"x%"), Err(FormError::InvalidEscape { offset: 1 }));
    assert_eq!(decode(b"%g0"), Err(FormError::InvalidEscape { offset: 0 }));
    assert_eq!(decode_str(b"%E4%BD"), Err(FormError::InvalidUtf8));
    assert_eq!(decode_str(b"\xff"), Err(FormError::InvalidUtf8));
    assert_eq!(
        FormError::InvalidEscape { offset: 3 }.to_string(),
        "invalid percent-escape at offset 3"
    );
    let r: Result<Vec<_>, _> = fields(b"a=1&b=%zz").collect();
    assert_eq!(r, Err(FormError::InvalidEscape { offset: 0 }));
}

#[test]
fn borrowed_when_nothing_to_decode() {
    assert!(matches!(
        decode(b"plain-value_123.~*"),
        Ok(Cow::Borrowed(_))
    ));
    assert!(matches!(
        decode_str(b"Ljava/lang/String;"),
        Ok(Cow::Borrowed("Ljava/lang/String;"))
    ));
    assert!(matches!(decode(b"a+b"), Ok(Cow::Owned(_))));
    for f in fields(b"interface=a.B&method=hash&parameter=abc") {
        let (k, v) = f.unwrap();
        assert!(matches!((k, v), (Cow::Borrowed(_), Cow::Borrowed(_))));
    }
}

#[test]
fn empty_values_and_segments() {
    let raw: Vec<_> = raw_fields(b"a=&&b&=c&d=e=f&").collect();
    assert_eq!(
        raw,
        [
            (&b"a"[..], &b""[..]),
            (b"b", b""),
            (b"", b"c"),
            (b"d", b"e=f")
        ]
    );
    assert_eq!(raw_fields(b"").count(), 0);
    let call = race_call(b"interface=I&method=m&parameter=").unwrap();
    assert_eq!(call.parameter.as_deref(), Some(""));
    let call = race_call(b"interface=I&method=m").unwrap();
    assert_eq!(
        (call.parameter, call.parameter_types),
        (None, Cow::Borrowed(""))
    );
}

#[test]
fn race_fields_escaped_and_unescaped_any_order() {
    let escaped =
        b"interface=com.alibaba.dubbo.performance.demo.provider.IHelloService&method=hash\
&parameterTypesString=Ljava%2Flang%2FString%3B&parameter=Zx9aQ";
    let unescaped =
        b"parameter=Zx9aQ&extra=%zz&parameterTypesString=Ljava/lang/String;&method=hash\
&interface=com.alibaba.dubbo.performance.demo.provider.IHelloService&method=ignored";
    let mut scratch = Vec::new();
    for body in [&escaped[..], &unescaped[..]] {
        assert_eq!(race_call_in(body, &mut scratch), race_call(body));
        let c = race_call(body).unwrap();
        assert_eq!(
            c.interface,
            "com.alibaba.dubbo.performance.demo.provider.IHelloService"
        );
        assert_eq!(c.method, "hash");
        assert_eq!(c.parameter_types, "Ljava/lang/String;");
        assert_eq!(c.parameter.as_deref(), Some("Zx9aQ"));
    }
    // Unknown field values are not decoded (the `%zz` above); wanted ones are checked.
    assert_eq!(
        race_call(b"interface=I&method=m&parameter=%4"),
        Err(FormError::InvalidEscape { offset: 0 })
    );
    assert_eq!(
        race_call(b"interface=I&parameter=%E4%BD%A0+x").unwrap_err(),
        FormError::MissingField("method")
    );
    let c = race_call(b"method=m&interface=I&parameter=%E4%BD%A0+x%21").unwrap();
    assert_eq!(c.parameter.as_deref(), Some("\u{4f60} x!"));
    // Without allocating: escaped fields are decoded into the scratch buffer.
    let body = b"method=m%21&interface=I&parameterTypesString=L%3B&parameter=%E4%BD%A0+x%21";
    let c = race_call_in(body, &mut scratch).unwrap();
    assert_eq!(
        (&*c.interface, &*c.method, &*c.parameter_types),
        ("I", "m!", "L;")
    );
    assert_eq!(c.parameter.as_deref(), Some("\u{4f60} x!"));
    assert_eq!(
        race_call_in(b"interface=I&method=m&parameter=%4", &mut scratch),
        Err(FormError::InvalidEscape { offset: 0 })
    );
    assert_eq!(
        race_call_in(b"interface=I&method=m&parameter=%FF", &mut scratch),
        Err(FormError::InvalidUtf8)
    );
    let mut out = b"kept:".to_vec();
    decode_into(b"a+b%2Fc", &mut out).unwrap();
    assert_eq!(out, b"kept:a b/c");
    // Escaped keys work too.
    let c = race_call(b"%69nterface=I&meth%6Fd=m").unwrap();
    assert_eq!((&*c.interface, &*c.method), ("I", "m"));
    assert_eq!(
        FormError::MissingField("method").to_string(),
        "missing form field `method`"
    );
}

/// A plain byte-at-a-time decoder to check the fast path against.
fn naive(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Some(out)
}

proptest::proptest! {
    #[test]
    fn matches_naive_decoder(raw in proptest::collection::vec(
        proptest::sample::select(b"ab%+&=0F9z\x80\xff".to_vec()), 0..64)) {
        proptest::prop_assert_eq!(decode(&raw).ok().map(|c| c.into_owned()), naive(&raw));
        let pieces: Vec<&[u8]> = raw.split(|&b| b == b'&').filter(|s| !s.is_empty()).collect();
        let raw_keys: Vec<&[u8]> = raw_fields(&raw).map(|(k, _)| k).collect();
        let want: Vec<&[u8]> = pieces.iter().map(|s| s.split(|&b| b == b'=').next().unwrap()).collect();
        proptest::prop_assert_eq!(raw_keys, want);
    }
}
