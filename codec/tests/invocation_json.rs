//! JSON invocations: good bodies and every rejection with its message.

use codec::invocation::Invocation;
use serde_json::json;

#[test]
fn full_invocation() {
    let body = br#"{"interface":"com.example.Hello","method":"say","parameterTypes":["java.lang.String","int"],
        "arguments":["hi",42],"version":"1.0.0","group":"g","attachments":{"b":"2","a":"1"},"timeout":1500,"other":true}"#;
    let inv = Invocation::from_json(body).unwrap();
    assert_eq!(inv.interface, "com.example.Hello");
    assert_eq!(inv.method, "say");
    assert_eq!(inv.parameter_types, ["java.lang.String", "int"]);
    assert_eq!(inv.arguments, [json!("hi"), json!(42)]);
    assert_eq!(inv.version.as_deref(), Some("1.0.0"));
    assert_eq!(inv.group.as_deref(), Some("g"));
    assert_eq!(
        inv.attachments,
        [
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "1".to_owned())
        ]
    );
    assert_eq!(inv.timeout_ms, Some(1500));
}

#[test]
fn minimal_invocations() {
    for body in [
        &br#"{"interface":"I","method":"m"}"#[..],
        br#"{"interface":"I","method":"m","arguments":[]}"#,
        br#"{"interface":"I","method":"m","arguments":[],"parameterTypes":[],"version":null}"#,
    ] {
        let inv = Invocation::from_json(body).unwrap();
        assert!(inv.arguments.is_empty() && inv.parameter_types.is_empty());
        assert_eq!((inv.version, inv.group, inv.timeout_ms), (None, None, None));
        assert!(inv.attachments.is_empty());
    }
}

#[test]
fn big_numbers_survive() {
    let inv = Invocation::from_json(br#"{"interface":"I","method":"m","parameterTypes":["java.math.BigDecimal"],"arguments":[12345678901234567890.123456789]}"#).unwrap();
    assert_eq!(
        inv.arguments[0].to_string(),
        "12345678901234567890.123456789"
    );
}

#[test]
fn rejections_name_the_problem() {
    let cases: &[(&[u8], &str)] = &[
        (br#"[1,2]"#, "the invocation must be a JSON object"),
        (br#"{"method":"m"}"#, "missing field `interface`"),
        (br#"{"interface":"I"}"#, "missing field `method`"),
        (
            br#"{"interface":"","method":"m"}"#,
            "field `interface` must be a non-empty string",
        ),
        (
            br#"{"interface":"I","method":5}"#,
            "field `method` must be a non-empty string",
        ),
        (
            br#"{"interface":"I","method":"m","arguments":[1]}"#,
            "`parameterTypes` is required when `arguments` is not empty",
        ),
        (
            br#"{"interface":"I","method":"m","parameterTypes":["int","int"],"arguments":[1]}"#,
            "`parameterTypes` has 2 entries but `arguments` has 1",
        ),
        (
            br#"{"interface":"I","method":"m","parameterTypes":["int"]}"#,
            "`parameterTypes` has 1 entries but `arguments` has 0",
        ),
        (
            br#"{"interface":"I","method":"m","parameterTypes":[3],"arguments":[1]}"#,
            "field `parameterTypes[0]` must be a non-empty string",
        ),
        (
            br#"{"interface":"I","method":"m","parameterTypes":"int","arguments":[1]}"#,
            "field `parameterTypes` must be an array of strings",
        ),
        (
            br#"{"interface":"I","method":"m","arguments":{}}"#,
            "field `arguments` must be an array",
        ),
        (
            br#"{"interface":"I","method":"m","attachments":{"k":1}}"#,
            "field `attachments.k` must be a string",
        ),
        (
            br#"{"interface":"I","method":"m","attachments":[]}"#,
            "field `attachments` must be an object of strings",
        ),
        (
            br#"{"interface":"I","method":"m","timeout":-1}"#,
            "field `timeout` must be a non-negative integer (milliseconds)",
        ),
        (
            br#"{"interface":"I","method":"m","timeout":"5"}"#,
            "field `timeout` must be a non-negative integer (milliseconds)",
        ),
        (
            br#"{"interface":"I","method":"m","version":1}"#,
            "field `version` must be a string",
        ),
    ];
    for (body, want) in cases {
        let got = Invocation::from_json(body).unwrap_err().to_string();
        assert_eq!(&got, want, "{}", String::from_utf8_lossy(body));
    }
    let e = Invocation::from_json(b"{\"interface\":")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("invalid JSON: EOF while parsing"), "{e}");
}
