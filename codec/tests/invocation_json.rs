//! JSON invocations: good bodies and every rejection with its message.

use codec::invocation::{Invocation, InvocationError};
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

/// An argument `levels` deep: `levels - 1` arrays (alternating with objects) around 7.
fn nested(levels: usize) -> String {
    let mut v = "7".to_owned();
    for i in 1..levels {
        v = if i % 2 == 0 {
            format!("[{v}]")
        } else {
            format!(r#"{{"k":{v}}}"#)
        };
    }
    v
}

fn with_argument(arg: &str) -> Invocation {
    let body = format!(
        r#"{{"interface":"I","method":"m","parameterTypes":["int","java.lang.Object"],"arguments":[1,{arg}]}}"#
    );
    Invocation::from_json(body.as_bytes()).unwrap()
}

#[test]
fn nesting_depth_is_bounded() {
    let inv = with_argument("[7]");
    assert!(inv.check_depth(2).is_ok());
    let err = inv.check_depth(1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`arguments[1]` is nested more than 1 levels deep"
    );
    assert!(with_argument("[]").check_depth(1).is_ok());
    assert!(with_argument("{}").check_depth(1).is_ok());
    assert!(with_argument(r#"{"a":[7]}"#).check_depth(3).is_ok());
    assert!(with_argument(r#"{"a":[7]}"#).check_depth(2).is_err());
    // The deepest branch counts, wherever it is.
    assert!(with_argument(r#"[1, [2, [3]], 4]"#).check_depth(3).is_err());
    assert!(with_argument(r#"[1, [2, [3]], 4]"#).check_depth(4).is_ok());
    // Exactly at the default limit, and one past it.
    let limit = codec::hessian2::MAX_DEPTH;
    assert!(with_argument(&nested(limit)).check_depth(limit).is_ok());
    match with_argument(&nested(limit + 1)).check_depth(limit) {
        Err(InvocationError::TooDeep {
            argument: 1,
            limit: l,
        }) => assert_eq!(l, limit),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_json_parser_reads_arguments_126_levels_deep() {
    // serde_json refuses nesting past 128 containers in the whole body (object and
    // `arguments` array included): the consumer-agent's --max-json-depth stops at 126.
    assert!(with_argument(&nested(126)).check_depth(126).is_ok());
    for levels in [127, 200] {
        let body = format!(
            r#"{{"interface":"I","method":"m","parameterTypes":["x"],"arguments":[{}]}}"#,
            nested(levels)
        );
        let err = Invocation::from_json(body.as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("recursion limit"),
            "{levels}: {err}"
        );
    }
}
