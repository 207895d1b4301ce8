//! hessian2 encodings: known bytes, every compact-form boundary, all tags.

use codec::hessian2::{self, ser, Encoder, Value};
use codec::Decoded;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn decode_all(bytes: &[u8]) -> Value {
    match hessian2::decode(bytes).unwrap() {
        Decoded::Complete { msg, consumed } => {
            assert_eq!(consumed, bytes.len(), "trailing bytes in {bytes:02x?}");
            msg
        }
        Decoded::Incomplete => panic!("incomplete: {bytes:02x?}"),
    }
}

fn int_bytes(v: i32) -> Vec<u8> {
    let mut b = Vec::new();
    hessian2::write_int(&mut b, v);
    b
}

fn long_bytes(v: i64) -> Vec<u8> {
    let mut b = Vec::new();
    hessian2::write_long(&mut b, v);
    b
}

#[test]
fn int_known_bytes() {
    for (v, h) in [
        (1, "91"),
        (0, "90"),
        (-16, "80"),
        (47, "bf"),
        (48, "c8 30"),
        (-17, "c7 ef"),
        (-2048, "c0 00"),
        (2047, "cf ff"),
        (2048, "d4 08 00"),
        (-2049, "d3 f7 ff"),
        (-262144, "d0 00 00"),
        (262143, "d7 ff ff"),
        (262144, "49 00 04 00 00"),
        (-262145, "49 ff fb ff ff"),
        (i32::MAX, "49 7f ff ff ff"),
        (i32::MIN, "49 80 00 00 00"),
        (99162322, "49 05 e9 18 d2"),
    ] {
        assert_eq!(int_bytes(v), hex(h), "{v}");
        assert_eq!(decode_all(&hex(h)), Value::Int(v), "{v}");
    }
}

#[test]
fn long_known_bytes() {
    for (v, h) in [
        (0, "e0"),
        (-8, "d8"),
        (15, "ef"),
        (16, "f8 10"),
        (-9, "f7 f7"),
        (-2048, "f0 00"),
        (2047, "ff ff"),
        (2048, "3c 08 00"),
        (-262144, "38 00 00"),
        (262143, "3f ff ff"),
        (262144, "59 00 04 00 00"),
        (i64::from(i32::MAX), "59 7f ff ff ff"),
        (i64::from(i32::MIN), "59 80 00 00 00"),
        (i64::from(i32::MAX) + 1, "4c 00 00 00 00 80 00 00 00"),
        (i64::MIN, "4c 80 00 00 00 00 00 00 00"),
        (i64::MAX, "4c 7f ff ff ff ff ff ff ff"),
    ] {
        assert_eq!(long_bytes(v), hex(h), "{v}");
        assert_eq!(decode_all(&hex(h)), Value::Long(v), "{v}");
    }
}

#[test]
fn every_int_near_each_boundary_round_trips() {
    for b in [
        -16i64,
        47,
        48,
        -2048,
        2047,
        -262144,
        262143,
        262144,
        i32::MIN as i64,
        i32::MAX as i64,
    ] {
        for d in -2..=2 {
            let v = b + d;
            if let Ok(i) = i32::try_from(v) {
                assert_eq!(decode_all(&int_bytes(i)), Value::Int(i));
            }
            assert_eq!(decode_all(&long_bytes(v)), Value::Long(v));
        }
    }
    for b in [-8i64, 15, -2048, 2047, -262144, 262143, i64::MIN, i64::MAX] {
        for d in -2..=2 {
            let v = b.saturating_add(d);
            assert_eq!(decode_all(&long_bytes(v)), Value::Long(v));
        }
    }
}

#[test]
fn doubles_and_dates() {
    let enc = |d: f64| {
        let mut b = Vec::new();
        hessian2::write_double(&mut b, d);
        b
    };
    assert_eq!(enc(0.0), hex("5b"));
    assert_eq!(enc(1.0), hex("5c"));
    assert_eq!(enc(-128.0), hex("5d 80"));
    assert_eq!(enc(127.0), hex("5d 7f"));
    assert_eq!(enc(-32768.0), hex("5e 80 00"));
    assert_eq!(enc(12.25), hex("5f 00 00 2f da"));
    assert_eq!(enc(1e300)[0], b'D');
    for d in [
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        12.25,
        1e300,
        -3.5e-7,
        f64::MAX,
        f64::MIN_POSITIVE,
        40000.0,
        f64::INFINITY,
    ] {
        let Value::Double(got) = decode_all(&enc(d)) else {
            panic!()
        };
        assert_eq!(got.to_bits(), d.to_bits(), "{d}");
    }
    let Value::Double(nan) = decode_all(&enc(f64::NAN)) else {
        panic!()
    };
    assert!(nan.is_nan());
    // Dates: whole minutes take the compact form.
    let mut b = Vec::new();
    hessian2::write_date(&mut b, 894621060000);
    assert_eq!(b, hex("4b 00 e3 83 8f"));
    assert_eq!(decode_all(&b), Value::Date(894621060000));
    b.clear();
    hessian2::write_date(&mut b, 894621091000);
    assert_eq!(b, hex("4a 00 00 00 d0 4b 92 84 b8"));
    assert_eq!(decode_all(&b), Value::Date(894621091000));
    assert_eq!(
        Value::Date(894621091000).to_text(),
        "1998-05-08T09:51:31.000Z"
    );
    assert_eq!(hessian2::iso8601(-1), "1969-12-31T23:59:59.999Z");
}

#[test]
fn strings_short_medium_chunked() {
    let enc = |s: &str| {
        let mut b = Vec::new();
        hessian2::write_string(&mut b, s);
        b
    };
    assert_eq!(enc(""), hex("00"));
    assert_eq!(enc("hello"), hex("05 68 65 6c 6c 6f"));
    assert_eq!(enc(&"a".repeat(31))[0], 0x1f);
    assert_eq!(enc(&"a".repeat(32))[..2], hex("30 20"));
    assert_eq!(enc(&"a".repeat(1023))[..2], hex("33 ff"));
    assert_eq!(enc(&"a".repeat(1024))[..3], hex("53 04 00"));
    // é is one unit, two bytes: the length counts units.
    assert_eq!(enc("é"), hex("01 c3 a9"));
    // Non-BMP: two units, written as Java does: each surrogate as 3 bytes (CESU-8).
    assert_eq!(enc("😀"), hex("02 ed a0 bd ed b8 80"));
    assert_eq!(enc("a😀b"), hex("04 61 ed a0 bd ed b8 80 62"));
    // The 4-byte UTF-8 form other encoders write decodes to the same string.
    assert_eq!(
        decode_all(&hex("02 f0 9f 98 80")),
        Value::String("😀".into())
    );
    assert_eq!(
        decode_all(&hex("02 ed a0 bd ed b8 80")),
        Value::String("😀".into())
    );
    // Over 0x8000 units: R chunks then a final one, cut as Java cuts them.
    for s in [
        "a".repeat(70000),
        "é".repeat(40000),
        "😀".repeat(20000),
        format!("{}😀", "a".repeat(32767)),
    ] {
        let b = enc(&s);
        assert_eq!(b[0], b'R');
        assert_eq!(decode_all(&b), Value::String(s.clone()));
    }
    // Exactly 0x8000 units: one S chunk; one more: an R chunk of 0x8000 and one unit.
    assert_eq!(enc(&"a".repeat(0x8000))[..3], hex("53 80 00"));
    let b = enc(&"a".repeat(0x8001));
    assert_eq!(b[..3], hex("52 80 00"));
    assert_eq!(b[3 + 0x8000..], hex("01 61"));
    // A pair that would straddle the cut goes whole into the next chunk.
    let b = enc(&format!("{}😀", "a".repeat(0x7fff)));
    assert_eq!(b[..3], hex("52 7f ff"));
    assert_eq!(b[3 + 0x7fff..], hex("02 ed a0 bd ed b8 80"));
    // A surrogate pair split across chunks (as CESU-8) is joined.
    let mut b = hex("52 00 01 ed a0 bd");
    b.extend(hex("01 ed b8 80"));
    assert_eq!(decode_all(&b), Value::String("😀".into()));
    // A lone surrogate becomes U+FFFD rather than an error.
    assert_eq!(
        decode_all(&hex("01 ed a0 bd")),
        Value::String("\u{fffd}".into())
    );
    assert!(hessian2::decode(&hex("01 ff")).is_err());
}

#[test]
fn binary_all_forms() {
    for n in [0usize, 1, 15, 16, 1023, 1024, 40000, 70000] {
        let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
        let mut b = Vec::new();
        hessian2::write_binary(&mut b, &data);
        let first = match n {
            0..=15 => 0x20 + n as u8,
            16..=1023 => 0x34 + (n >> 8) as u8,
            1024..=32767 => b'B',
            _ => b'A',
        };
        assert_eq!(b[0], first, "{n}");
        assert_eq!(decode_all(&b), Value::Binary(data));
    }
}

#[test]
fn lists_all_forms() {
    let ints = |n: i32| (0..n).map(Value::Int).collect::<Vec<_>>();
    let untyped = |items| Value::List {
        type_name: None,
        items,
    };
    let typed = |items| Value::List {
        type_name: Some("[int".into()),
        items,
    };
    assert_eq!(decode_all(&hex("79 90")), untyped(ints(1)));
    assert_eq!(decode_all(&hex("71 04 5b 69 6e 74 90")), typed(ints(1)));
    assert_eq!(
        decode_all(&hex("58 98 90 91 92 93 94 95 96 97")),
        untyped(ints(8))
    );
    assert_eq!(
        decode_all(&hex("56 04 5b 69 6e 74 92 90 91")),
        typed(ints(2))
    );
    assert_eq!(decode_all(&hex("57 90 91 5a")), untyped(ints(2)));
    assert_eq!(
        decode_all(&hex("55 04 5b 69 6e 74 90 91 5a")),
        typed(ints(2))
    );
    // A type given by reference to the type table.
    assert_eq!(
        decode_all(&hex("7a 71 04 5b 69 6e 74 90 71 90 91")),
        untyped(vec![typed(ints(1)), typed(vec![Value::Int(1)])])
    );
    for n in [0, 7, 8, 100] {
        for t in [None, Some("java.util.ArrayList".to_owned())] {
            let v = Value::List {
                type_name: t,
                items: ints(n),
            };
            let mut b = Vec::new();
            hessian2::write_value(&mut b, &v);
            assert_eq!(decode_all(&b), v);
        }
    }
    let mut b = Vec::new();
    ser::write_list_begin_variable(&mut b, None);
    hessian2::write_int(&mut b, 3);
    hessian2::write_end(&mut b);
    assert_eq!(decode_all(&b), untyped(vec![Value::Int(3)]));
}

#[test]
fn maps_and_objects() {
    let m = decode_all(&hex("4d 08 6a 61 76 61 2e 4d 61 70 91 01 61 90 01 62 5a"));
    assert_eq!(
        m,
        Value::Map {
            type_name: Some("java.Map".into()),
            entries: vec![
                (Value::Int(1), Value::String("a".into())),
                (Value::Int(0), Value::String("b".into()))
            ]
        }
    );
    // Non-string keys render as [k, v] pairs.
    assert_eq!(m.to_json().to_string(), r#"[[1,"a"],[0,"b"]]"#);
    // Objects: one definition per encoder, reused.
    let car = |c: &str| Value::Object {
        class: "Car".into(),
        fields: vec![
            ("color".into(), Value::String(c.into())),
            ("n".into(), Value::Long(1)),
        ],
    };
    let mut enc = Encoder::new();
    let mut b = Vec::new();
    enc.write_value(&mut b, &car("red"));
    assert_eq!(b[0], b'C');
    let first = b.len();
    enc.write_value(&mut b, &car("blue"));
    assert_eq!(b[first], 0x60, "second object reuses definition 0");
    let mut dec = hessian2::Decoder::new();
    let Decoded::Complete { msg, consumed } = dec.decode(&b).unwrap() else {
        panic!()
    };
    assert_eq!(msg, car("red"));
    let Decoded::Complete { msg, .. } = dec.decode(&b[consumed..]).unwrap() else {
        panic!()
    };
    assert_eq!(msg, car("blue"));
    // `O` with an explicit index.
    assert_eq!(
        decode_all(&hex("43 03 43 61 72 91 01 6e 4f 90 e1")),
        Value::Object {
            class: "Car".into(),
            fields: vec![("n".into(), Value::Long(1))]
        }
    );
    assert_eq!(
        car("red").to_json().to_string(),
        r#"{"class":"Car","color":"red","n":1}"#
    );
}

#[test]
fn json_rendering_and_text() {
    assert_eq!(
        Value::Binary(b"hello!?".to_vec()).to_json(),
        serde_json::json!("aGVsbG8hPw==")
    );
    assert_eq!(hessian2::base64_decode("aGVsbG8hPw==").unwrap(), b"hello!?");
    assert_eq!(hessian2::base64_decode("aGVsbG8hPw").unwrap(), b"hello!?");
    assert!(hessian2::base64_decode("a").is_err());
    assert!(hessian2::base64_decode("a*==").is_err());
    assert_eq!(
        Value::Long(i64::MAX).to_json().to_string(),
        "9223372036854775807"
    );
    assert_eq!(Value::Long(i64::MAX).to_text(), "9223372036854775807");
    assert_eq!(Value::Int(-5).to_text(), "-5");
    assert_eq!(Value::Double(1.0).to_text(), "1.0");
    assert_eq!(Value::Null.to_text(), "null");
    assert_eq!(Value::Double(f64::NAN).to_json(), serde_json::json!("NaN"));
    assert_eq!(
        Value::Date(0).to_json(),
        serde_json::json!("1970-01-01T00:00:00.000Z")
    );
    assert_eq!(Value::Date(0).to_fastjson(), serde_json::json!(0));
    let v = Value::Map {
        type_name: None,
        entries: vec![(
            Value::String("k".into()),
            Value::List {
                type_name: None,
                items: vec![Value::Bool(true), Value::Null],
            },
        )],
    };
    assert_eq!(v.to_json().to_string(), r#"{"k":[true,null]}"#);
    assert_eq!(v.to_text(), r#"{"k":[true,null]}"#);
}

fn arg(t: &str, j: serde_json::Value) -> Result<Value, hessian2::Error> {
    let mut b = Vec::new();
    hessian2::encode_json_arg(t, &j, &mut b)?;
    Ok(decode_all(&b))
}

#[test]
fn typed_arguments_from_json() {
    use serde_json::json;
    assert_eq!(
        arg("java.lang.String", json!("hi")).unwrap(),
        Value::String("hi".into())
    );
    assert_eq!(arg("String", json!(null)).unwrap(), Value::Null);
    assert_eq!(arg("int", json!(48)).unwrap(), Value::Int(48));
    assert_eq!(arg("java.lang.Integer", json!(-1)).unwrap(), Value::Int(-1));
    assert_eq!(
        arg("long", json!(1u64 << 40)).unwrap(),
        Value::Long(1 << 40)
    );
    assert_eq!(arg("java.lang.Long", json!(3)).unwrap(), Value::Long(3));
    assert_eq!(arg("boolean", json!(true)).unwrap(), Value::Bool(true));
    assert_eq!(arg("double", json!(2.5)).unwrap(), Value::Double(2.5));
    assert_eq!(
        arg("java.lang.Double", json!(7)).unwrap(),
        Value::Double(7.0)
    );
    assert_eq!(
        arg("float", json!(0.1)).unwrap(),
        Value::Double(f64::from(0.1f32))
    );
    assert_eq!(arg("short", json!(-300)).unwrap(), Value::Int(-300));
    assert_eq!(arg("byte", json!(-128)).unwrap(), Value::Int(-128));
    assert_eq!(
        arg("byte[]", json!("AQL/")).unwrap(),
        Value::Binary(vec![1, 2, 255])
    );
    assert_eq!(
        arg("byte[]", json!([1, -1, 255])).unwrap(),
        Value::Binary(vec![1, 255, 255])
    );
    assert_eq!(
        arg("java.util.List", json!(["a", 1, 5_000_000_000i64])).unwrap(),
        Value::List {
            type_name: None,
            items: vec![
                Value::String("a".into()),
                Value::Int(1),
                Value::Long(5_000_000_000)
            ]
        }
    );
    assert_eq!(
        arg("java.util.HashMap", json!({"a": 1})).unwrap(),
        Value::Map {
            type_name: None,
            entries: vec![(Value::String("a".into()), Value::Int(1))]
        }
    );
    assert_eq!(
        arg("com.example.User", json!({"name": "x", "age": 3})).unwrap(),
        Value::Object {
            class: "com.example.User".into(),
            fields: vec![
                ("name".into(), Value::String("x".into())),
                ("age".into(), Value::Int(3))
            ]
        }
    );
    assert_eq!(
        arg("int[]", json!([1, 2])).unwrap(),
        Value::List {
            type_name: Some("[int".into()),
            items: vec![Value::Int(1), Value::Int(2)]
        }
    );
    // Mismatches name the problem.
    for (t, j) in [
        ("int", json!("12")),
        ("int", json!(1u64 << 31)),
        ("int", json!(null)),
        ("byte", json!(128)),
        ("boolean", json!(1)),
        ("java.lang.String", json!(5)),
        ("java.util.List", json!({})),
        ("com.example.User", json!([1])),
        ("byte[]", json!([256])),
        ("double", json!("1.5")),
    ] {
        let e = arg(t, j.clone()).unwrap_err();
        assert!(e.to_string().contains(t), "{t} {j}: {e}");
    }
    // Several arguments with one encoder share class definitions.
    let mut enc = Encoder::new();
    let mut b = Vec::new();
    enc.encode_json_arg("com.example.User", &json!({"name": "a"}), &mut b)
        .unwrap();
    enc.encode_json_arg("com.example.User", &json!({"name": "b"}), &mut b)
        .unwrap();
    assert_eq!(b.iter().filter(|&&x| x == b'C').count(), 1);
}

/// Our bytes for one typed JSON argument.
fn arg_bytes(t: &str, j: serde_json::Value) -> Vec<u8> {
    let mut b = Vec::new();
    hessian2::encode_json_arg(t, &j, &mut b).unwrap_or_else(|e| panic!("{t} {j}: {e}"));
    b
}

/// `s` as a hessian2 short string, in hex (`04 5b696e74` for `[int`).
fn hs(s: &str) -> String {
    assert!(s.len() < 32);
    format!("{:02x}{}", s.len(), hex_of(s.as_bytes()))
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn big_numbers_as_java_writes_them() {
    use serde_json::json;
    // Dubbo's hessian-lite (StringValueSerializer): class def, one field "value".
    let bd = hex(&format!(
        "43 {} 91 {} 60 {}",
        hs("java.math.BigDecimal"),
        hs("value"),
        hs("1.50")
    ));
    // A JSON number keeps its text (serde_json's arbitrary_precision).
    let number: serde_json::Value = serde_json::from_str("1.50").unwrap();
    assert_eq!(arg_bytes("java.math.BigDecimal", number), bd);
    assert_eq!(arg_bytes("java.math.BigDecimal", json!("1.50")), bd);
    assert_eq!(decode_all(&bd).to_json().to_string(), "1.50");
    assert_eq!(decode_all(&bd).to_text(), "1.50");
    // Written by Caucho hessian 4.0.38 on JDK 17: signum, four cache fields, mag.
    let java_bi = hex(concat!(
        "43146a6176612e6d6174682e426967496e746567657296067369676e756d0f626974436f756e74",
        "506c75734f6e65106269744c656e677468506c75734f6e65136c6f77657374536574426974506c",
        "757354776f1966697273744e6f6e7a65726f496e744e756d506c757354776f036d6167608f9090",
        "909074045b696e7491498ee90ff649c373e0ee494e3f0ad2"
    ));
    assert_eq!(
        decode_all(&java_bi).to_json().to_string(),
        "-123456789012345678901234567890"
    );
    // Ours: signum and mag only.
    assert_eq!(
        arg_bytes(
            "java.math.BigInteger",
            json!("-123456789012345678901234567890")
        ),
        hex(&format!(
            "43 {} 92 {} {} 60 8f 74 {} 91 498ee90ff6 49c373e0ee 494e3f0ad2",
            hs("java.math.BigInteger"),
            hs("signum"),
            hs("mag"),
            hs("[int")
        ))
    );
    assert_eq!(
        decode_all(&arg_bytes("java.math.BigInteger", json!(0)))
            .to_json()
            .to_string(),
        "0"
    );
    for (t, j) in [
        ("java.math.BigDecimal", json!("1.2.3")),
        ("java.math.BigDecimal", json!(true)),
        ("java.math.BigInteger", json!(1.5)),
        ("java.math.BigInteger", json!("12a")),
        (
            "java.math.BigInteger",
            json!("9".repeat(hessian2::MAX_BIG_DIGITS + 1)),
        ),
    ] {
        let e = arg(t, j.clone()).unwrap_err();
        assert!(e.to_string().contains(t), "{t} {j}: {e}");
    }
    // Caucho's boxes for Short, Byte, Float (bytes from Caucho on JDK 17).
    for (h, want) in [
        (
            "433021636f6d2e63617563686f2e6865737369616e2e696f2e53686f727448616e646c6591065f76616c75656093",
            "3",
        ),
        (
            "433020636f6d2e63617563686f2e6865737369616e2e696f2e4279746548616e646c6591065f76616c75656094",
            "4",
        ),
        (
            "433021636f6d2e63617563686f2e6865737369616e2e696f2e466c6f617448616e646c6591065f76616c7565605f000005dc",
            "1.5",
        ),
    ] {
        assert_eq!(decode_all(&hex(h)).to_json().to_string(), want, "{h}");
    }
}

#[test]
fn collections_dates_enums_as_java_writes_them() {
    use serde_json::json;
    // A HashSet of 1, 2 as Caucho writes it.
    let set = hex("72 116a6176612e7574696c2e48617368536574 91 92");
    assert_eq!(arg_bytes("java.util.Set", json!([1, 2])), set);
    assert_eq!(decode_all(&set).to_json().to_string(), "[1,2]");
    assert_eq!(
        arg_bytes("java.util.LinkedHashMap", json!({"k": "v"})),
        hex(&format!(
            "4d {} {} {} 5a",
            hs("java.util.LinkedHashMap"),
            hs("k"),
            hs("v")
        ))
    );
    // Non-string keys from [key, value] pairs; rendered back the same way.
    let int_keys = arg_bytes("java.util.Map", json!([[1, "a"]]));
    assert_eq!(int_keys, hex("48 91 01 61 5a"));
    assert_eq!(decode_all(&int_keys).to_json().to_string(), r#"[[1,"a"]]"#);
    // Arrays typed as Caucho's ArraySerializer types them; the second "[int" is
    // a reference to the first (index 0 of the type table), as Java writes it.
    assert_eq!(
        arg_bytes("java.lang.Integer[]", json!([1])),
        hex(&format!("71 12{} 91", hex_of(b"[java.lang.Integer")))
    );
    assert_eq!(
        arg_bytes("java.util.Date[]", json!([0])),
        hex("71 05 5b64617465 4b 00000000")
    );
    assert_eq!(arg_bytes("char[]", json!("ab")), hex("02 6162"));
    let mut enc = Encoder::new();
    let mut b = Vec::new();
    enc.encode_json_arg("int[]", &json!([1]), &mut b).unwrap();
    enc.encode_json_arg("int[][]", &json!([[2]]), &mut b)
        .unwrap();
    assert_eq!(b, hex("71 04 5b696e74 91 71 05 5b5b696e74 71 90 92"));
    let mut dec = hessian2::Decoder::new();
    for want in ["[1]", "[[2]]"] {
        let Ok(Decoded::Complete { msg, consumed }) = dec.decode(&b) else {
            panic!("decode")
        };
        assert_eq!(msg.to_json().to_string(), want);
        b.drain(..consumed);
    }
    // Dates: millis or ISO 8601 (here 1527854400123 ms, Caucho's bytes).
    let date = hex("4a 00000163bb38027b");
    for j in [
        json!(1_527_854_400_123i64),
        json!("2018-06-01T12:00:00.123Z"),
        json!("2018-06-01T14:00:00.123+02:00"),
    ] {
        assert_eq!(arg_bytes("java.util.Date", j.clone()), date, "{j}");
    }
    assert_eq!(
        arg_bytes("java.util.Date", json!("2018-06-01")),
        hex("4b 01848ae0") // 1527811200000 ms, whole minutes
    );
    // Enums: an object of one field, name, from either JSON form (DayOfWeek as
    // Caucho writes it).
    let monday =
        hex("43 13 6a6176612e74696d652e4461794f665765656b 91 046e616d65 60 064d4f4e444159");
    assert_eq!(arg_bytes("java.time.DayOfWeek", json!("MONDAY")), monday);
    assert_eq!(
        arg_bytes("java.time.DayOfWeek", json!({"name": "MONDAY"})),
        monday
    );
    for (t, j) in [
        ("java.util.Date", json!("June 1st")),
        ("java.util.Date", json!(true)),
        ("java.util.Set", json!({})),
        ("java.util.Map", json!([])),
        ("java.util.Map", json!([[1, 2, 3]])),
        ("com.example.User", json!("Ann")),
    ] {
        let e = arg(t, j.clone()).unwrap_err();
        assert!(e.to_string().contains(t), "{t} {j}: {e}");
    }
}

#[test]
fn untyped_positions_read_dates_and_big_numbers() {
    use serde_json::json;
    let v = hessian2::value_from_mesh_json(&json!([
        "2018-06-01T12:00:00.123Z",
        "2018-06-01T12:00:00Z",
        {"class": "java.math.BigDecimal", "value": "9.99"},
        {"class": "java.math.BigInteger", "value": 12},
        {"class": "java.math.BigInteger", "value": "x"}
    ]));
    let Value::List { items, .. } = &v else {
        panic!("a list")
    };
    assert_eq!(items[0], Value::Date(1_527_854_400_123));
    assert_eq!(items[1], Value::String("2018-06-01T12:00:00Z".into()));
    // Not a number: kept as the object it says it is.
    assert!(matches!(&items[4], Value::Object { fields, .. } if fields.len() == 1));
    assert_eq!(
        v.to_json().to_string(),
        r#"["2018-06-01T12:00:00.123Z","2018-06-01T12:00:00Z",9.99,12,{"class":"java.math.BigInteger","value":"x"}]"#
    );
}

#[test]
fn numbers_past_every_java_type_are_called_out_of_range() {
    let huge: serde_json::Value = serde_json::from_str("1e999999").unwrap();
    for t in ["double", "Double", "int", "long", "float"] {
        let e = arg(t, huge.clone()).unwrap_err().to_string();
        assert!(e.ends_with("got a number out of range"), "{t}: {e}");
    }
    let e = arg("double", huge).unwrap_err().to_string();
    assert_eq!(
        e,
        "argument of type double needs a number in double range, got a number out of range"
    );
    assert_eq!(
        arg("double", serde_json::json!(1.5)).unwrap(),
        Value::Double(1.5)
    );
}

#[test]
fn base64_as_rfc_4648() {
    for (plain, coded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(hessian2::base64_encode(plain.as_bytes()), coded);
        assert_eq!(hessian2::base64_decode(coded).unwrap(), plain.as_bytes());
    }
}
