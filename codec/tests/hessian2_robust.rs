//! The hessian2 decoder under split, truncated, corrupted and hostile input,
//! and round trips of generated values.

use codec::hessian2::{self, Decoder, Encoder, Skipper, Value, MAX_DEPTH};
use codec::Decoded;
use proptest::prelude::*;

const JAVA_EXCEPTION_BODY: &str = "90431a6a6176612e6c616e672e52756e74696d65457863657074696f6e940d64657461696c4d6573736167650563617573650a737461636b54726163651473757070726573736564457863657074696f6e736004626f6f6d5190711c5b6a6176612e6c616e672e537461636b5472616365456c656d656e74431b6a6176612e6c616e672e537461636b5472616365456c656d656e74980f636c6173734c6f616465724e616d650a6d6f64756c654e616d650d6d6f64756c6556657273696f6e0e6465636c6172696e67436c6173730a6d6574686f644e616d650866696c654e616d650a6c696e654e756d62657206666f726d617461036170704e4e0148046d61696e06482e6a617661a391701f6a6176612e7574696c2e436f6c6c656374696f6e7324456d7074794c697374";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Decode every value of `bytes` with one decoder.
fn decode_stream(bytes: &[u8]) -> Result<Vec<Value>, hessian2::Error> {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        match dec.decode(rest)? {
            Decoded::Complete { msg, consumed } => {
                assert!(consumed > 0 && consumed <= rest.len());
                out.push(msg);
                rest = &rest[consumed..];
            }
            Decoded::Incomplete => break,
        }
    }
    Ok(out)
}

/// Every strict prefix of one value is Incomplete (never a wrong Complete,
/// never a panic), and the tables are rolled back so the whole still decodes.
fn check_splits(value_bytes: &[u8], want: &Value) {
    let mut dec = Decoder::new();
    for cut in 0..value_bytes.len() {
        assert_eq!(
            dec.decode(&value_bytes[..cut]).unwrap(),
            Decoded::Incomplete,
            "prefix of {cut} bytes"
        );
    }
    assert_eq!(
        dec.decode(value_bytes).unwrap(),
        Decoded::Complete {
            msg: want.clone(),
            consumed: value_bytes.len()
        }
    );
}

fn samples() -> Vec<Vec<u8>> {
    let mut v = vec![
        hex(JAVA_EXCEPTION_BODY),
        hex("944905e918d24805647562626f05322e302e325a"),
    ];
    let mut b = Vec::new();
    hessian2::write_string(&mut b, &format!("{}😀é", "a".repeat(40000)));
    v.push(b);
    let mut b = Vec::new();
    hessian2::write_binary(&mut b, &[7u8; 40000]);
    v.push(b);
    v
}

#[test]
fn every_split_of_every_sample() {
    for s in samples() {
        let mut dec = Decoder::new();
        let mut rest = &s[..];
        while !rest.is_empty() {
            // Work out the value first with a clone of the decoder's tables.
            let Decoded::Complete { msg, consumed } = dec.clone().decode(rest).unwrap() else {
                panic!()
            };
            let one = &rest[..consumed];
            // Prefixes are Incomplete for this decoder state (long samples:
            // every offset near the ends and every 97th in between).
            for cut in 0..consumed {
                if consumed > 2000 && cut > 1000 && cut + 1000 < consumed && cut % 97 != 0 {
                    continue;
                }
                assert_eq!(
                    dec.decode(&one[..cut]).unwrap(),
                    Decoded::Incomplete,
                    "cut {cut}"
                );
            }
            assert_eq!(
                dec.decode(one).unwrap(),
                Decoded::Complete { msg, consumed }
            );
            rest = &rest[consumed..];
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    for s in samples().into_iter().take(2) {
        for i in 0..s.len() {
            for x in [0x01u8, 0x80, 0xff, 0x10] {
                let mut c = s.clone();
                c[i] ^= x;
                let _ = decode_stream(&c);
            }
            let mut c = s.clone();
            c.truncate(i);
            let _ = decode_stream(&c);
        }
    }
}

#[test]
fn hostile_lengths_and_nesting() {
    // A list claiming 2^24-1 items in 6 bytes: Incomplete, nothing reserved;
    // past MAX_COLLECTION_LEN it is an error at once.
    assert_eq!(
        hessian2::decode(&hex("584900ffffff")).unwrap(),
        Decoded::Incomplete
    );
    assert!(matches!(
        hessian2::decode(&hex("58497fffffff")),
        Err(hessian2::Error::TooLong { .. })
    ));
    // A negative length is an error.
    assert!(hessian2::decode(&hex("5849ffffffff90")).is_err());
    // A class with a huge field count.
    assert!(hessian2::decode(&hex("430150497fffffff")).is_err());
    // Nesting: MAX_DEPTH - 1 lists deep is fine, MAX_DEPTH is not.
    let nested = |n: usize| {
        let mut b = vec![0x79u8; n];
        b.push(0x90);
        b
    };
    assert!(matches!(
        hessian2::decode(&nested(MAX_DEPTH - 1)).unwrap(),
        Decoded::Complete { .. }
    ));
    assert!(matches!(
        hessian2::decode(&nested(MAX_DEPTH)),
        Err(hessian2::Error::TooDeep { .. })
    ));
    assert!(hessian2::decode(&nested(100_000)).is_err());
    // A long run of class definitions does not grow the stack.
    let mut b = Vec::new();
    for _ in 0..100_000 {
        b.extend(hex("43015090"));
    }
    b.push(0x90);
    assert!(matches!(
        hessian2::decode(&b).unwrap(),
        Decoded::Complete { .. }
    ));
    // References that double in size at each level hit the node budget.
    let mut bomb = Vec::new();
    // list0 = [1 x 16]; listN = [ref(N-1) x 16]
    bomb.extend(hex("58a0"));
    bomb.extend([0x90; 16]);
    for lvl in 0..8 {
        bomb.extend(hex("58a0"));
        for _ in 0..16 {
            bomb.push(0x51);
            bomb.push(0x91 + lvl); // ref 0 is the outer list
        }
    }
    let mut outer = hex("57");
    outer.extend(bomb);
    outer.push(b'Z');
    assert!(matches!(
        hessian2::decode(&outer),
        Err(hessian2::Error::TooManyNodes { .. })
    ));
    // Unknown references, classes and types are errors.
    assert!(hessian2::decode(&hex("5190")).is_err());
    assert!(hessian2::decode(&hex("60")).is_err());
    assert!(hessian2::decode(&hex("7091")).is_err());
    // Tags that start no value.
    for t in [0x40u8, 0x45, 0x47, 0x50, 0x5a] {
        assert!(hessian2::decode(&[t]).is_err(), "{t:02x}");
    }
}

#[test]
fn every_single_and_double_byte_input() {
    for a in 0..=255u8 {
        let _ = hessian2::decode(&[a]);
        for b in 0..=255u8 {
            let _ = hessian2::decode(&[a, b]);
            let _ = hessian2::decode(&[a, b, 0xff, 0x00]);
        }
    }
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::Int),
        prop_oneof![
            any::<i32>().prop_map(i64::from),
            any::<i64>(),
            -300_000i64..300_000
        ]
        .prop_map(Value::Long),
        prop_oneof![
            any::<f64>().prop_filter("NaN", |d| !d.is_nan()),
            (-40_000i32..40_000).prop_map(|i| f64::from(i) / 1000.0)
        ]
        .prop_map(Value::Double),
        any::<i64>().prop_map(Value::Date),
        ".{0,40}".prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Binary),
    ];
    leaf.prop_recursive(4, 64, 10, |inner| {
        prop_oneof![
            (
                proptest::option::of("[a-z.]{1,12}"),
                proptest::collection::vec(inner.clone(), 0..10)
            )
                .prop_map(|(type_name, items)| Value::List { type_name, items }),
            (
                proptest::option::of("[a-z.]{1,12}"),
                proptest::collection::vec((inner.clone(), inner.clone()), 0..6)
            )
                .prop_map(|(type_name, entries)| Value::Map { type_name, entries }),
            (
                "[A-Z][a-z]{0,5}",
                proptest::collection::vec(("[a-z]{1,3}", inner), 0..5)
            )
                .prop_map(|(class, fields)| Value::Object { class, fields }),
        ]
    })
}

/// Our bytes for one typed JSON argument.
fn arg_bytes(t: &str, j: &serde_json::Value) -> Vec<u8> {
    let mut b = Vec::new();
    Encoder::new()
        .encode_json_arg(t, j, &mut b)
        .unwrap_or_else(|e| panic!("{t} {j}: {e}"));
    b
}

/// One typed JSON argument, encoded and decoded again.
fn typed_arg(t: &str, j: &serde_json::Value) -> Value {
    let mut vals = decode_stream(&arg_bytes(t, j)).unwrap();
    assert_eq!(vals.len(), 1);
    vals.remove(0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn values_round_trip(vals in proptest::collection::vec(arb_value(), 1..4)) {
        let mut enc = Encoder::new();
        let mut b = Vec::new();
        for v in &vals {
            enc.write_value(&mut b, v);
        }
        prop_assert_eq!(decode_stream(&b).unwrap(), vals);
    }

    #[test]
    fn a_decoder_for_a_body_gives_what_any_decoder_gives(
        vals in proptest::collection::vec(arb_value(), 1..4),
        refs in proptest::collection::vec(0u8..4, 0..3),
    ) {
        // Values, then references back to them: a decoder `for_body` skips the
        // reference table only when no reference can follow.
        let mut enc = Encoder::new();
        let mut b = Vec::new();
        for v in &vals {
            enc.write_value(&mut b, v);
        }
        for r in &refs {
            b.extend([0x51, 0x90 + r]);
        }
        let (mut plain, mut rest) = (Decoder::new(), Decoder::for_body(&b));
        let mut at = 0;
        while at < b.len() {
            let want = plain.decode(&b[at..]);
            let got = rest.decode(&b[at..]);
            prop_assert_eq!(&got, &want);
            match want {
                Ok(Decoded::Complete { consumed, .. }) => at += consumed,
                _ => break,
            }
        }
    }

    #[test]
    fn strings_round_trip(s in any::<String>(), t in "[\\u{10000}-\\u{10ffff}a]{0,50}") {
        for s in [&s, &t] {
            let mut b = Vec::new();
            hessian2::write_string(&mut b, s);
            let want = Value::String(s.clone());
            check_splits(&b, &want);
        }
    }

    #[test]
    fn cesu8_strings_decode(s in any::<String>()) {
        // Java's form: each UTF-16 unit on its own, surrogates as 3 bytes.
        let units: Vec<u16> = s.encode_utf16().collect();
        let mut b = Vec::new();
        assert!(units.len() < 32768);
        b.push(b'S');
        b.extend((units.len() as u16).to_be_bytes());
        for u in &units {
            let u = u32::from(*u);
            match u {
                0..=0x7f => b.push(u as u8),
                0x80..=0x7ff => b.extend([0xc0 | (u >> 6) as u8, 0x80 | (u & 0x3f) as u8]),
                _ => b.extend([0xe0 | (u >> 12) as u8, 0x80 | ((u >> 6) & 0x3f) as u8, 0x80 | (u & 0x3f) as u8]),
            }
        }
        check_splits(&b, &Value::String(s));
    }

    #[test]
    fn big_integers_round_trip(n in any::<i128>(), digits in "[0-9]{1,300}", negative in any::<bool>()) {
        let long = format!("{}{digits}", if negative { "-" } else { "" });
        let trimmed = digits.trim_start_matches('0');
        let want = match trimmed {
            "" => "0".to_owned(),
            t if negative => format!("-{t}"),
            t => t.to_owned(),
        };
        for (text, want) in [(n.to_string(), n.to_string()), (long, want)] {
            let v = typed_arg("java.math.BigInteger", &serde_json::Value::String(text.clone()));
            prop_assert_eq!(v.to_json().to_string(), want, "{}", text);
        }
    }

    #[test]
    fn big_decimals_render_and_go_back_unchanged(unscaled in any::<i64>(), exp in -30i32..30, point in any::<bool>()) {
        let text = if point { format!("{unscaled}.5e{exp}") } else { format!("{unscaled}e{exp}") };
        let first = arg_bytes("java.math.BigDecimal", &serde_json::Value::String(text));
        let rendered = decode_stream(&first).unwrap()[0].to_json();
        prop_assert!(rendered.is_number(), "{}", rendered);
        // Sending the answer back writes the same bytes: the text is Java's already.
        prop_assert_eq!(arg_bytes("java.math.BigDecimal", &rendered), first);
    }

    #[test]
    fn dates_round_trip(ms in -62_135_596_800_000i64..253_402_300_800_000) {
        let iso = hessian2::iso8601(ms);
        prop_assert_eq!(hessian2::parse_iso8601(&iso), Some(ms));
        let v = typed_arg("java.util.Date", &serde_json::Value::String(iso.clone()));
        prop_assert_eq!(&v, &Value::Date(ms));
        prop_assert_eq!(typed_arg("java.util.Date", &serde_json::json!(ms)), Value::Date(ms));
        // Untyped, the rendered form is a date too.
        prop_assert_eq!(typed_arg("java.lang.Object", &v.to_json()), Value::Date(ms));
    }

    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_stream(&b);
        let _ = Skipper::new().skip(&b);
    }

    #[test]
    fn the_skipper_ends_values_where_the_decoder_does(vals in proptest::collection::vec(arb_value(), 1..4)) {
        let mut enc = Encoder::new();
        let mut b = Vec::new();
        for v in &vals {
            enc.write_value(&mut b, v);
        }
        prop_assert_eq!(skip_ends(&b), decode_ends(&b));
        // Cut short, it asks for more, as the decoder does.
        for cut in 0..b.len() {
            let mut s = Skipper::new();
            let mut rest = &b[..cut];
            let mut incomplete = false;
            while !rest.is_empty() {
                match s.skip(rest).unwrap() {
                    Decoded::Complete { consumed, .. } => rest = &rest[consumed..],
                    Decoded::Incomplete => {
                        incomplete = true;
                        break;
                    }
                }
            }
            prop_assert!(incomplete || rest.is_empty(), "cut at {}", cut);
        }
    }

    #[test]
    fn on_any_bytes_the_skipper_never_ends_a_value_elsewhere(b in proptest::collection::vec(any::<u8>(), 0..96)) {
        let (mut d, mut s) = (Decoder::new(), Skipper::new());
        if let Ok(Decoded::Complete { consumed, .. }) = d.decode(&b) {
            match s.skip(&b) {
                Ok(Decoded::Complete { consumed: c, .. }) => prop_assert_eq!(c, consumed),
                other => prop_assert!(false, "decoder took {} bytes, skipper {:?}", consumed, other),
            }
        }
    }
}

/// Where each value of a stream ends, by the decoder.
fn decode_ends(b: &[u8]) -> Vec<usize> {
    let (mut d, mut at, mut ends) = (Decoder::new(), 0, Vec::new());
    while at < b.len() {
        match d.decode(&b[at..]).unwrap() {
            Decoded::Complete { consumed, .. } => at += consumed,
            Decoded::Incomplete => panic!("incomplete"),
        }
        ends.push(at);
    }
    ends
}

/// Where each value of a stream ends, by the skipper.
fn skip_ends(b: &[u8]) -> Vec<usize> {
    let (mut s, mut at, mut ends) = (Skipper::new(), 0, Vec::new());
    while at < b.len() {
        match s.skip(&b[at..]).unwrap() {
            Decoded::Complete { consumed, .. } => at += consumed,
            Decoded::Incomplete => panic!("incomplete"),
        }
        ends.push(at);
    }
    ends
}
