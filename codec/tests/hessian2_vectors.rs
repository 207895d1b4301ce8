//! Golden hessian2 bytes written by other people's code (Java, the facts page).

use codec::hessian2::{self, exception_message, Decoder, Value};
use codec::Decoded;

/// A Java `RuntimeException("boom")` response body (flag 0x90 first), JDK 9+.
const JAVA_EXCEPTION_BODY: &str = "90431a6a6176612e6c616e672e52756e74696d65457863657074696f6e940d64657461696c4d6573736167650563617573650a737461636b54726163651473757070726573736564457863657074696f6e736004626f6f6d5190711c5b6a6176612e6c616e672e537461636b5472616365456c656d656e74431b6a6176612e6c616e672e537461636b5472616365456c656d656e74980f636c6173734c6f616465724e616d650a6d6f64756c654e616d650d6d6f64756c6556657273696f6e0e6465636c6172696e67436c6173730a6d6574686f644e616d650866696c654e616d650a6c696e654e756d62657206666f726d617461036170704e4e0148046d61696e06482e6a617661a391701f6a6176612e7574696c2e436f6c6c656374696f6e7324456d7074794c697374";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn complete(d: Result<Decoded<Value>, hessian2::Error>) -> (Value, usize) {
    match d.unwrap() {
        Decoded::Complete { msg, consumed } => (msg, consumed),
        Decoded::Incomplete => panic!("incomplete"),
    }
}

#[test]
fn java_exception_body_yields_boom() {
    let body = hex(JAVA_EXCEPTION_BODY);
    let mut dec = Decoder::new();
    let (flag, n) = complete(dec.decode(&body));
    assert_eq!(flag, Value::Int(0));
    let (exc, m) = complete(dec.decode(&body[n..]));
    assert_eq!(n + m, body.len());
    assert_eq!(exception_message(&exc).as_deref(), Some("boom"));
    let Value::Object { class, fields } = &exc else {
        panic!("{exc:?}")
    };
    assert_eq!(class, "java.lang.RuntimeException");
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "detailMessage",
            "cause",
            "stackTrace",
            "suppressedExceptions"
        ]
    );
    // The cause refers to the exception itself: a cycle, cut with a marker.
    assert_eq!(exc.get("cause"), Some(&Value::Ref(0)));
    let Some(Value::List { type_name, items }) = exc.get("stackTrace") else {
        panic!()
    };
    assert_eq!(type_name.as_deref(), Some("[java.lang.StackTraceElement"));
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0].get("methodName"),
        Some(&Value::String("main".into()))
    );
    assert_eq!(items[0].get("lineNumber"), Some(&Value::Int(19)));
    assert_eq!(items[0].get("moduleName"), Some(&Value::Null));
    assert_eq!(
        exc.get("suppressedExceptions"),
        Some(&Value::List {
            type_name: Some("java.util.Collections$EmptyList".into()),
            items: vec![]
        })
    );
}

#[test]
fn exception_message_follows_cause() {
    let inner = Value::Object {
        class: "java.io.IOException".into(),
        fields: vec![
            ("detailMessage".into(), Value::String("disk".into())),
            ("cause".into(), Value::Ref(1)),
        ],
    };
    let outer = Value::Object {
        class: "com.example.Wrapped".into(),
        fields: vec![
            ("detailMessage".into(), Value::Null),
            ("cause".into(), inner),
        ],
    };
    assert_eq!(exception_message(&outer).as_deref(), Some("disk"));
    assert_eq!(exception_message(&Value::Int(3)), None);
}

#[test]
fn java_reply_to_hash_hello() {
    let body = hex("9449 05e918d2 48 05 647562626f 05 322e302e32 5a"
        .replace(' ', "")
        .as_str());
    let mut dec = Decoder::new();
    let (flag, a) = complete(dec.decode(&body));
    let (value, b) = complete(dec.decode(&body[a..]));
    let (att, c) = complete(dec.decode(&body[a + b..]));
    assert_eq!(a + b + c, body.len());
    assert_eq!(flag, Value::Int(4));
    assert_eq!(value, Value::Int(99162322));
    assert_eq!(value.to_text(), "99162322");
    assert_eq!(
        att,
        Value::Map {
            type_name: None,
            entries: vec![(Value::String("dubbo".into()), Value::String("2.0.2".into()))]
        }
    );
}

#[test]
fn reference_to_completed_value_is_resolved() {
    // [ {a: 1}, ref(1) ]: the second element is a copy of the first map.
    let bytes = hex("7a48016191 5a 51 91".replace(' ', "").as_str());
    let (v, n) = complete(hessian2::decode(&bytes));
    assert_eq!(n, bytes.len());
    let Value::List { items, .. } = v else {
        panic!()
    };
    assert_eq!(items.len(), 2);
    assert_eq!(items[0], items[1]);
    assert!(matches!(items[1], Value::Map { .. }));
}

#[test]
fn decoder_keeps_class_table_across_values() {
    // C "P" [x]  O0 1   then, as a second value, 0x60 2 reusing the definition.
    let bytes = hex("4301509101786091 6092".replace(' ', "").as_str());
    let mut dec = Decoder::new();
    let (a, n) = complete(dec.decode(&bytes));
    let (b, _) = complete(dec.decode(&bytes[n..]));
    assert_eq!(
        a,
        Value::Object {
            class: "P".into(),
            fields: vec![("x".into(), Value::Int(1))]
        }
    );
    assert_eq!(
        b,
        Value::Object {
            class: "P".into(),
            fields: vec![("x".into(), Value::Int(2))]
        }
    );
    // A fresh decoder does not know the class.
    assert!(hessian2::decode(&bytes[n..]).is_err());
}
