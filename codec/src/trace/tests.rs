//! Unit tests and properties of the trace context codec.

use proptest::prelude::*;

use super::*;

fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
    move |k| {
        pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| *v)
    }
}

fn get(pairs: &[(&str, &str)]) -> Option<TraceContext> {
    extract(lookup(pairs))
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];
const SPAN: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
const OURS: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

fn encoded(ctx: &TraceContext, local: &Sw8Local<'_>) -> Vec<(String, String)> {
    let mut buf = String::new();
    let fields = ctx.encode(local, &mut buf);
    fields
        .iter(&buf)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn traceparent_is_read_and_continued() {
    let ctx = get(&[
        ("TraceParent", TP),
        ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
    ])
    .unwrap();
    assert_eq!(ctx.trace_id, TRACE);
    assert_eq!(ctx.span_id, SPAN);
    assert_eq!(ctx.sampled, Some(true));
    assert_eq!(ctx.format, Format::W3c);
    assert_eq!(ctx.tracestate, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
    let child = ctx.child(OURS);
    assert_eq!(child.parent_span_id, Some(SPAN));
    assert_eq!(ctx.clone().into_child(OURS), child, "the same, moved");
    assert_eq!(
        encoded(&child, &Sw8Local::default()),
        [
            (
                "traceparent".into(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01".into()
            ),
            (
                "tracestate".into(),
                "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into()
            )
        ]
    );
    assert_eq!(
        ctx.trace_id_hex().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
}

#[test]
fn bad_traceparents_are_no_context() {
    for bad in [
        "",
        "00",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01",
    ] {
        assert_eq!(get(&[("traceparent", bad)]), None, "{bad:?}");
    }
    // A later version may carry more fields after a dash.
    let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-ever";
    let ctx = get(&[("traceparent", later)]).unwrap();
    assert_eq!(ctx.sampled, Some(false));
    // A bad tracestate is dropped; the traceparent stands.
    for bad in ["a", "A=1", "a=1,,b", "a=b=c", "a=\u{7}", &"a=1,".repeat(33)] {
        let ctx = get(&[("traceparent", TP), ("tracestate", bad)]).unwrap();
        assert_eq!(ctx.tracestate, "", "{bad:?}");
    }
    let ctx = get(&[("traceparent", TP), ("tracestate", "a=1, ,t@v=x y")]).unwrap();
    assert_eq!(ctx.tracestate, "a=1, ,t@v=x y");
}

#[test]
fn b3_single_is_read_and_continued() {
    let ctx = get(&[(
        "b3",
        "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-0000000000000009",
    )])
    .unwrap();
    assert_eq!((ctx.trace_id, ctx.span_id), (TRACE, SPAN));
    assert_eq!(ctx.parent_span_id, Some([0, 0, 0, 0, 0, 0, 0, 9]));
    assert_eq!((ctx.sampled, ctx.format), (Some(true), Format::B3Single));
    assert_eq!(
        encoded(&ctx.child(OURS), &Sw8Local::default()),
        [(
            "b3".into(),
            "4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-1-00f067aa0ba902b7".into()
        )]
    );
    // 64-bit trace ids, debug, deferred.
    let ctx = get(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-d")]).unwrap();
    assert_eq!(&ctx.trace_id[8..], &TRACE[8..]);
    assert!(ctx.debug && ctx.is_sampled());
    let ctx = get(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7")]).unwrap();
    assert_eq!(ctx.sampled, None);
    assert_eq!(
        encoded(&ctx.child(OURS), &Sw8Local::default())[0].1,
        "0000000000000000a3ce929d0e0e4736-0102030405060708"
    );
    for bad in [
        "0",
        "1",
        "d",
        "a3ce929d0e0e4736",
        "a3ce929d0e0e4736-00f067aa0ba902b7-2",
        "a3ce929d0e0e4736-00f067aa0ba902b7-1-0",
        "a3ce929d0e0e4736-00f067aa0ba902b7-1-00f067aa0ba902b7-x",
        "a3ce929d0e0e473-00f067aa0ba902b7-1",
        "0000000000000000-00f067aa0ba902b7-1",
    ] {
        assert_eq!(get(&[("b3", bad)]), None, "{bad:?}");
    }
}

#[test]
fn b3_multi_is_read_and_continued() {
    let ctx = get(&[
        ("X-B3-TraceId", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("X-B3-SpanId", "00f067aa0ba902b7"),
        ("X-B3-ParentSpanId", "0000000000000009"),
        ("X-B3-Sampled", "1"),
    ])
    .unwrap();
    assert_eq!((ctx.trace_id, ctx.span_id), (TRACE, SPAN));
    assert_eq!((ctx.sampled, ctx.format), (Some(true), Format::B3Multi));
    let written = encoded(&ctx.child(OURS), &Sw8Local::default());
    let pairs: Vec<(&str, &str)> = written
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("x-b3-spanid", "0102030405060708"),
            ("x-b3-parentspanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "1"),
        ]
    );
    let debug = get(&[
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", "00f067aa0ba902b7"),
        ("x-b3-flags", "1"),
    ])
    .unwrap();
    assert!(debug.debug);
    for bad in [
        vec![("x-b3-traceid", "a3ce929d0e0e4736")],
        vec![("x-b3-spanid", "00f067aa0ba902b7")],
        vec![
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "yes"),
        ],
        vec![
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-parentspanid", "9"),
        ],
    ] {
        assert_eq!(get(&bad), None, "{bad:?}");
    }
}

fn b64(s: &str) -> String {
    let mut out = String::new();
    push_base64(&mut out, s.as_bytes());
    out
}

#[test]
fn base64_round_trips_and_is_strict() {
    for s in ["", "a", "ab", "abc", "abcd", "consumer-agent", "héllo"] {
        let e = b64(s);
        if !s.is_empty() {
            assert_eq!(decode_base64_utf8(&e).as_deref(), Some(s));
        }
    }
    assert_eq!(b64("abc"), "YWJj");
    assert_eq!(b64("ab"), "YWI=");
    for bad in [
        "", "YWI", "YW=j", "YWJ=", "Y===", "YWI=YWI=", "YW-j", "/w==",
    ] {
        assert_eq!(decode_base64_utf8(bad), None, "{bad:?}");
    }
}

#[test]
fn sw8_is_read_and_continued() {
    let trace = "a1b2c3.45.16789";
    let header = format!(
        "1-{}-{}-3-{}-{}-{}-{}",
        b64(trace),
        b64("seg-1"),
        b64("web"),
        b64("web@10.0.0.1"),
        b64("/order"),
        b64("127.0.0.1:20000")
    );
    let ctx = get(&[("sw8", &header)]).unwrap();
    assert_eq!(ctx.format, Format::Sw8);
    assert_eq!(ctx.sampled, Some(true));
    assert_eq!(ctx.sw8_trace_id, trace);
    // Derived ids are stable.
    assert_eq!(get(&[("sw8", &header)]).unwrap().trace_id, ctx.trace_id);
    let local = Sw8Local {
        service: "consumer-agent",
        instance: "127.0.0.1:20000",
        endpoint: "a.Svc.m",
        address: "127.0.0.1:30000",
    };
    let child = ctx.child(OURS);
    let written = encoded(&child, &local);
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].0, "sw8");
    let expected = format!(
        "1-{}-{}-0-{}-{}-{}-{}",
        b64(trace),
        b64("0102030405060708"),
        b64("consumer-agent"),
        b64("127.0.0.1:20000"),
        b64("a.Svc.m"),
        b64("127.0.0.1:30000")
    );
    assert_eq!(written[0].1, expected);
    // The next hop reads our span as its parent, in the same trace.
    let next = get(&[("sw8", &written[0].1)]).unwrap();
    assert_eq!((next.trace_id, next.span_id), (ctx.trace_id, OURS));
    assert_eq!(next.sw8_trace_id, trace);
    // A 32-hex-digit trace id is the trace id itself.
    let hex = "4bf92f3577b34da6a3ce929d0e0e4736";
    let h = format!(
        "0-{}-{}-0-{}-{}-{}-{}",
        b64(hex),
        b64("00f067aa0ba902b7"),
        b64("a"),
        b64("b"),
        b64("c"),
        b64("d")
    );
    let ctx = get(&[("sw8", &h)]).unwrap();
    assert_eq!(
        (ctx.trace_id, ctx.span_id, ctx.sampled),
        (TRACE, SPAN, Some(false))
    );
    for bad in [
        "1".to_owned(),
        format!(
            "2-{}-{}-0-{}-{}-{}-{}",
            b64("t"),
            b64("s"),
            b64("a"),
            b64("b"),
            b64("c"),
            b64("d")
        ),
        format!(
            "1-{}-{}-x-{}-{}-{}-{}",
            b64("t"),
            b64("s"),
            b64("a"),
            b64("b"),
            b64("c"),
            b64("d")
        ),
        format!(
            "1-{}-{}-0-{}-{}-{}",
            b64("t"),
            b64("s"),
            b64("a"),
            b64("b"),
            b64("c")
        ),
        format!(
            "1-{}-{}-0-{}-{}-{}-{}-",
            b64("t"),
            b64("s"),
            b64("a"),
            b64("b"),
            b64("c"),
            b64("d")
        ),
        format!(
            "1--{}-0-{}-{}-{}-{}",
            b64("s"),
            b64("a"),
            b64("b"),
            b64("c"),
            b64("d")
        ),
        format!(
            "1-{}-{}-99999999999-{}-{}-{}-{}",
            b64("t"),
            b64("s"),
            b64("a"),
            b64("b"),
            b64("c"),
            b64("d")
        ),
    ] {
        assert_eq!(get(&[("sw8", &bad)]), None, "{bad:?}");
    }
}

#[test]
fn formats_are_tried_in_order_and_keys_known() {
    let ctx = get(&[
        ("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1"),
        ("traceparent", TP),
    ])
    .unwrap();
    assert_eq!(ctx.format, Format::W3c);
    // A bad traceparent falls through to the next format.
    let ctx = get(&[
        ("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1"),
        ("traceparent", "x"),
    ])
    .unwrap();
    assert_eq!(ctx.format, Format::B3Single);
    assert_eq!(get(&[("other", "x")]), None);
    for k in ["TRACEPARENT", "b3", "X-B3-Sampled", "sw8"] {
        assert!(is_trace_key(k), "{k}");
    }
    assert!(!is_trace_key("sw8-correlation"));
}

#[test]
fn roots_and_ids_are_never_zero() {
    assert_eq!(span_id_from(0), [0, 0, 0, 0, 0, 0, 0, 1]);
    assert_ne!(trace_id_from(0, 0), [0; 16]);
    let root = TraceContext::root(trace_id_from(1, 2), span_id_from(3), true);
    let w = encoded(&root, &Sw8Local::default());
    assert_eq!(
        w[0].1,
        "00-00000000000000010000000000000002-0000000000000003-01"
    );
    let back = get(&[("traceparent", &w[0].1)]).unwrap();
    assert_eq!((back.trace_id, back.span_id), (root.trace_id, root.span_id));
}

proptest! {
    #[test]
    fn no_input_panics(
        tp in ".{0,80}", ts in ".{0,80}", b3 in ".{0,80}", sw8 in ".{0,120}",
        hex in "[0-9a-f-]{0,80}", b64s in "[A-Za-z0-9+/=-]{0,120}",
    ) {
        for pairs in [
            vec![("traceparent", tp.as_str()), ("tracestate", ts.as_str())],
            vec![("traceparent", hex.as_str())],
            vec![("b3", b3.as_str())],
            vec![("b3", hex.as_str())],
            vec![("x-b3-traceid", hex.as_str()), ("x-b3-spanid", hex.as_str()), ("x-b3-sampled", b3.as_str())],
            vec![("sw8", sw8.as_str())],
            vec![("sw8", b64s.as_str())],
        ] {
            if let Some(ctx) = get(&pairs) {
                // Whatever was read writes and reads back as the same position.
                let child = ctx.child(OURS);
                let written = encoded(&child, &Sw8Local::default());
                let pairs: Vec<(&str, &str)> =
                    written.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let back = get(&pairs).expect("what we write parses");
                prop_assert_eq!(back.trace_id, child.trace_id);
                prop_assert_eq!(back.span_id, child.span_id);
            }
        }
    }

    #[test]
    fn valid_traceparents_round_trip(t in any::<[u8; 16]>(), s in any::<[u8; 8]>(), f in any::<u8>()) {
        prop_assume!(t != [0; 16] && s != [0; 8]);
        let tp = format!("00-{}-{}-{:02x}", Hex(t), Hex(s), f);
        let ctx = get(&[("traceparent", &tp)]).unwrap();
        prop_assert_eq!(ctx.sampled, Some(f & 1 == 1));
        let w = encoded(&ctx, &Sw8Local::default());
        prop_assert_eq!(&w[0].1, &tp);
    }
}

#[test]
fn gathered_attachments_read_as_a_lookup_does() {
    let pairs = [
        ("dubbo", "2.0.2"),
        ("X-B3-TraceId", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("traceparent", TP),
        ("TRACEPARENT", "ignored: the first of a name counts"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("Sw8", "x"),
        ("tracestate", "a=b"),
    ];
    let found = Gathered::from_pairs(pairs.iter().copied());
    for key in KEYS.iter().chain([&SW8]) {
        assert_eq!(found.get(key), lookup(&pairs)(key), "{key}");
    }
    assert_eq!(found.get("dubbo"), None);
    assert_eq!(extract(|k| found.get(k)), get(&pairs));
    assert_eq!(found.extract(), get(&pairs));
    // Headers first, then attachments for the names no header had (a header that is
    // not UTF-8 is as good as absent).
    let headers: [(&str, &[u8]); 3] = [
        ("Host", b"x"),
        ("TraceParent", TP.as_bytes()),
        ("tracestate", b"\xff"),
    ];
    let sent = [("traceparent", "00-other"), ("tracestate", "a=b")];
    let both = Gathered::from_headers_then(headers, sent);
    assert_eq!(both.get("traceparent"), Some(TP));
    assert_eq!(both.get("tracestate"), Some("a=b"));
    assert_eq!(
        Gathered::from_headers_then([], sent).get("traceparent"),
        Some("00-other")
    );
    // The other formats too, each alone.
    let b3 = [("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")];
    let multi = [
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "1"),
    ];
    for pairs in [&b3[..], &multi[..]] {
        let found = Gathered::from_pairs(pairs.iter().copied());
        assert!(found.extract().is_some());
        assert_eq!(found.extract(), get(pairs));
    }
    assert_eq!(Gathered::from_pairs([]).get("traceparent"), None);
}

#[test]
fn every_trace_key_is_found_in_any_case_and_no_other() {
    for (i, k) in KEYS.iter().chain([&SW8]).enumerate() {
        assert_eq!(key_index(k), Some(i), "{k}");
        assert_eq!(key_index(&k.to_ascii_uppercase()), Some(i), "{k}");
        assert_eq!(key_index(&format!("{k}x")), None);
    }
    for other in ["", "dubbo", "path", "timeout", "x-b3-traceie", "tracestatf"] {
        assert_eq!(key_index(other), None, "{other}");
    }
}

#[test]
fn hex_is_read_eight_digits_at_a_time_as_one_by_one() {
    // Every byte in each position of an otherwise valid id: accepted exactly when
    // it is a lower-case hex digit, with the value the table gives.
    let one_by_one = |s: &[u8]| -> Option<Vec<u8>> {
        s.chunks_exact(2)
            .map(|p| {
                let (hi, lo) = (HEX_VALUE[usize::from(p[0])], HEX_VALUE[usize::from(p[1])]);
                ((hi | lo) & 0xf0 == 0).then_some((hi << 4) | lo)
            })
            .collect()
    };
    let base = *b"0123456789abcdef";
    for at in 0..16 {
        for b in 0..=255u8 {
            let mut s = base;
            s[at] = b;
            let fast = parse_hex::<8>(&s).map(|v| v.to_vec());
            assert_eq!(fast, one_by_one(&s), "byte {b:#04x} at {at}");
        }
    }
    assert_eq!(parse_hex::<1>(b"ff"), Some([0xff]));
    assert_eq!(parse_hex::<1>(b"fF"), None);
    assert_eq!(
        parse_hex::<5>(b"00f067aa0b"),
        Some([0, 0xf0, 0x67, 0xaa, 0x0b])
    );
}
