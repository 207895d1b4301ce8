//! Agent protocol: round trips, many frames per buffer, splits, bad input, call tables.

use codec::agent::{
    begin_request, begin_response, begin_response_with, decode, encode_define, encode_goaway,
    encode_ping, encode_pong, encode_request, encode_response, finish, AgentError, CallTable,
    Frame, RequestHead, Signature, SignatureRef, Status, HEADER_LEN, MAX_BODY, MAX_CALLS,
};
use codec::Decoded;
use proptest::prelude::*;

/// An owned mirror of `Frame`, to compare decoded frames with what was encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Define(u32, Signature),
    Request {
        id: u64,
        call_id: u32,
        timeout_ms: u32,
        one_way: bool,
        att: Vec<(String, String)>,
        args: Vec<u8>,
    },
    Response {
        id: u64,
        status: Status,
        att: Vec<(String, String)>,
        payload: Vec<u8>,
    },
    Ping(u64),
    Pong(u64),
    GoAway,
}

fn to_owned(f: Frame<'_>) -> Owned {
    match f {
        Frame::Define { call_id, signature } => Owned::Define(call_id, signature.to_owned()),
        Frame::Request(r) => Owned::Request {
            id: r.id,
            call_id: r.call_id,
            timeout_ms: r.timeout_ms,
            one_way: r.one_way,
            att: r
                .attachments
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            args: r.args.to_vec(),
        },
        Frame::Response(r) => Owned::Response {
            id: r.id,
            status: r.status,
            att: r
                .attachments
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            payload: r.payload.to_vec(),
        },
        Frame::Ping { id } => Owned::Ping(id),
        Frame::Pong { id } => Owned::Pong(id),
        Frame::GoAway => Owned::GoAway,
    }
}

fn encode(out: &mut Vec<u8>, f: &Owned) {
    match f {
        Owned::Define(id, sig) => encode_define(out, *id, sig.as_ref()).unwrap(),
        Owned::Request {
            id,
            call_id,
            timeout_ms,
            one_way,
            att,
            args,
        } => {
            let att: Vec<(&str, &str)> =
                att.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            if !*one_way && args.len() % 2 == 0 {
                encode_request(out, *id, *call_id, *timeout_ms, &att, args).unwrap();
            } else {
                let head = RequestHead {
                    id: *id,
                    call_id: *call_id,
                    timeout_ms: *timeout_ms,
                    one_way: *one_way,
                    raw_result: false,
                    attachments: &att,
                };
                let mark = begin_request(out, &head).unwrap();
                out.extend_from_slice(args);
                finish(out, mark).unwrap();
            }
        }
        Owned::Response {
            id,
            status,
            att,
            payload,
        } => {
            let att: Vec<(&str, &str)> =
                att.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            if !att.is_empty() || payload.len() % 3 == 0 {
                let mark = begin_response_with(out, *id, *status, &att).unwrap();
                out.extend_from_slice(payload);
                finish(out, mark).unwrap();
            } else if payload.len() % 2 == 0 {
                encode_response(out, *id, *status, payload).unwrap();
            } else {
                let mark = begin_response(out, *id, *status);
                out.extend_from_slice(payload);
                finish(out, mark).unwrap();
            }
        }
        Owned::Ping(id) => encode_ping(out, *id),
        Owned::Pong(id) => encode_pong(out, *id),
        Owned::GoAway => encode_goaway(out),
    }
}

fn decode_all(buf: &[u8]) -> Vec<Owned> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        match decode(&buf[at..]).unwrap() {
            Decoded::Complete { msg, consumed } => {
                out.push(to_owned(msg));
                at += consumed;
            }
            Decoded::Incomplete => panic!("incomplete at {at}"),
        }
    }
    out
}

fn sig(method: &str) -> Signature {
    Signature {
        service: "com.alibaba.dubbo.performance.demo.provider.IHelloService".into(),
        method: method.into(),
        parameter_types: "Ljava/lang/String;".into(),
        version: "".into(),
        group: "".into(),
    }
}

fn sample() -> Vec<Owned> {
    vec![
        Owned::Define(0, sig("hash")),
        Owned::Request {
            id: 1,
            call_id: 0,
            timeout_ms: 0,
            one_way: false,
            att: vec![],
            args: b"\x05hello".to_vec(),
        },
        Owned::Request {
            id: 2,
            call_id: 0,
            timeout_ms: 300,
            one_way: true,
            att: vec![("k".into(), "v".into()), ("".into(), "\u{4f60}".into())],
            args: vec![],
        },
        Owned::Response {
            id: 2,
            status: Status::Ok,
            att: vec![],
            payload: vec![0x91],
        },
        Owned::Response {
            id: 1,
            status: Status::ProviderError,
            att: vec![],
            payload: b"boom".to_vec(),
        },
        Owned::Response {
            id: 3,
            status: Status::Ok,
            att: vec![("trace".into(), "t-1".into()), ("".into(), "".into())],
            payload: vec![0x91],
        },
        Owned::Response {
            id: 4,
            status: Status::ProviderError,
            att: vec![("k".into(), "\u{4f60}".into())],
            payload: b"boom".to_vec(),
        },
        Owned::Ping(u64::MAX),
        Owned::Pong(0),
        Owned::GoAway,
    ]
}

#[test]
fn header_layout() {
    let mut out = Vec::new();
    encode_request(&mut out, 0x0102030405060708, 9, 0, &[], b"AB").unwrap();
    assert_eq!(
        &out[..HEADER_LEN],
        &[0xDA, 0xBB, 1, 2, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 12][..]
    );
    assert_eq!(
        &out[HEADER_LEN..],
        &[0, 0, 0, 9, 0, 0, 0, 0, 0, 0, b'A', b'B'][..]
    );
}

#[test]
fn many_frames_in_one_buffer_and_every_split() {
    let frames = sample();
    let mut buf = Vec::new();
    for f in &frames {
        encode(&mut buf, f);
    }
    assert_eq!(decode_all(&buf), frames);
    // Every prefix of each frame is Incomplete; the whole is the same frame.
    let mut at = 0;
    for f in &frames {
        let mut one = Vec::new();
        encode(&mut one, f);
        for cut in 0..one.len() {
            assert_eq!(
                decode(&buf[at..at + cut]),
                Ok(Decoded::Incomplete),
                "{f:?} cut {cut}"
            );
        }
        at += one.len();
    }
    // Two reads at every offset, as a connection would see them.
    for cut in 0..=buf.len() {
        let mut pending: Vec<u8> = buf[..cut].to_vec();
        let mut got = Vec::new();
        for chunk in [&buf[cut..cut], &buf[cut..]] {
            pending.extend_from_slice(chunk);
            let mut used = 0;
            while let Decoded::Complete { msg, consumed } = decode(&pending[used..]).unwrap() {
                got.push(to_owned(msg));
                used += consumed;
            }
            pending.drain(..used);
        }
        assert!(pending.is_empty());
        assert_eq!(got, frames, "cut {cut}");
    }
}

#[test]
fn response_statuses() {
    assert!(Status::Overloaded.is_retryable());
    assert!(Status::Unavailable.is_retryable());
    for s in [
        Status::Ok,
        Status::ProviderError,
        Status::Timeout,
        Status::BadRequest,
        Status::Exception,
        Status::Forbidden,
    ] {
        assert!(!s.is_retryable(), "{s:?}");
    }
    for (byte, s) in Status::ALL.into_iter().enumerate() {
        assert_eq!(Status::from_u8(byte as u8), Some(s));
        assert_eq!(s as usize, byte);
    }
    assert_eq!(Status::from_u8(Status::ALL.len() as u8), None);
    // FORBIDDEN carries a message, as the other refusals do.
    assert!(!Status::Forbidden.carries_value());
    let mut out = Vec::new();
    encode_response(
        &mut out,
        9,
        Status::Forbidden,
        b"forbidden: anonymous peer may not call a.B.m",
    )
    .unwrap();
    let Ok(Decoded::Complete {
        msg: Frame::Response(r),
        ..
    }) = decode(&out)
    else {
        panic!("not a response")
    };
    assert_eq!((r.id, r.status), (9, Status::Forbidden));
    assert_eq!(
        r.message(),
        Some("forbidden: anonymous peer may not call a.B.m")
    );
    let mut out = Vec::new();
    encode_response(&mut out, 5, Status::Timeout, b"took 3000 ms").unwrap();
    let Ok(Decoded::Complete {
        msg: Frame::Response(r),
        ..
    }) = decode(&out)
    else {
        panic!()
    };
    assert_eq!(
        (r.status, r.message()),
        (Status::Timeout, Some("took 3000 ms"))
    );
}

#[test]
fn bad_input() {
    assert_eq!(decode(b"GET / HTTP/1.1\r\n"), Err(AgentError::BadMagic));
    assert_eq!(decode(&[0xDA, 0x00]), Err(AgentError::BadMagic));
    assert_eq!(decode(&[0xDA]), Ok(Decoded::Incomplete));
    assert_eq!(decode(&[]), Ok(Decoded::Incomplete));
    assert_eq!(
        decode(&[0xDA, 0xBB, 2]),
        Err(AgentError::UnsupportedVersion(2))
    );
    let header = |kind: u8, status: u8, len: u32| {
        let mut h = vec![0xDA, 0xBB, 1, kind, status, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        h.extend_from_slice(&len.to_be_bytes());
        h
    };
    // Oversized: rejected from the header alone.
    let e = decode(&header(2, 0, MAX_BODY as u32 + 1)).unwrap_err();
    assert_eq!(e, AgentError::BodyTooLarge(MAX_BODY + 1));
    assert!(e.to_string().contains("over the 8388608-byte limit"));
    assert_eq!(
        decode(&header(2, 0, MAX_BODY as u32)),
        Ok(Decoded::Incomplete)
    );
    assert_eq!(decode(&header(9, 0, 0)), Err(AgentError::UnknownKind(9)));
    assert_eq!(
        decode(&header(3, 77, 0)),
        Err(AgentError::UnknownStatus(77))
    );
    assert!(matches!(
        decode(&header(4, 0, 1)),
        Err(AgentError::Malformed(_))
    ));
    assert!(matches!(
        decode(&header(0x41, 0, 0)),
        Err(AgentError::Malformed(_))
    ));
    // Truncated request body (length says 3, fields need 10).
    let mut b = header(2, 0, 3);
    b.extend_from_slice(&[0, 0, 0]);
    assert!(matches!(decode(&b), Err(AgentError::Malformed(_))));
    // Error message that is not UTF-8.
    let mut b = header(3, 1, 1);
    b.push(0xFF);
    assert_eq!(decode(&b), Err(AgentError::InvalidUtf8));
    // Attachment count larger than the attachments present.
    let mut b = header(2, 0, 10);
    b.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
    assert!(matches!(decode(&b), Err(AgentError::Malformed(_))));
}

#[test]
fn finish_rejects_oversized_body_and_rolls_back() {
    let mut out = Vec::new();
    encode_ping(&mut out, 1);
    let before = out.len();
    let mark = begin_response(&mut out, 2, Status::Ok);
    out.resize(out.len() + MAX_BODY + 1, 0);
    assert_eq!(
        finish(&mut out, mark),
        Err(AgentError::BodyTooLarge(MAX_BODY + 1))
    );
    assert_eq!(out.len(), before);
    let long = "x".repeat(70_000);
    let att = [(long.as_str(), "v")];
    let head = RequestHead {
        attachments: &att,
        ..RequestHead::new(1, 1)
    };
    assert_eq!(begin_request(&mut out, &head), Err(AgentError::TooLong));
    assert_eq!(out.len(), before);
}

#[test]
fn call_table_interning() {
    let mut sender = CallTable::new();
    let mut receiver = CallTable::new();
    let hash = sig("hash");
    assert_eq!(sender.intern(hash.as_ref()), Ok((0, true)));
    assert_eq!(sender.intern(hash.as_ref()), Ok((0, false)));
    let other = SignatureRef {
        version: "2.0",
        ..hash.as_ref()
    };
    assert_eq!(sender.intern(other), Ok((1, true)));
    assert_eq!(sender.intern(other), Ok((1, false)));
    assert_eq!(sender.len(), 2);
    // The DEFINE frames carry them to the receiver.
    let mut buf = Vec::new();
    encode_define(&mut buf, 0, hash.as_ref()).unwrap();
    encode_define(&mut buf, 1, other).unwrap();
    let mut at = 0;
    while let Ok(Decoded::Complete {
        msg: Frame::Define { call_id, signature },
        consumed,
    }) = decode(&buf[at..])
    {
        receiver.define(call_id, signature.to_owned()).unwrap();
        at += consumed;
    }
    assert_eq!(receiver.get(0), Some(&hash));
    assert_eq!(receiver.get(1).map(|s| s.version.as_str()), Some("2.0"));
    assert_eq!(receiver.get(2), None);
    assert_eq!(
        receiver.define(MAX_CALLS as u32, hash.clone()),
        Err(AgentError::CallIdOutOfRange(4096))
    );
    // Bounded.
    for i in 2..MAX_CALLS {
        let m = format!("m{i}");
        let s = SignatureRef {
            method: &m,
            ..hash.as_ref()
        };
        assert_eq!(sender.intern(s), Ok((i as u32, true)));
    }
    let e = sender
        .intern(SignatureRef {
            method: "one-too-many",
            ..hash.as_ref()
        })
        .unwrap_err();
    assert_eq!(e, AgentError::CallTableFull);
    assert_eq!(
        e.to_string(),
        "call table full (4096 signatures or 1048576 bytes of them on this connection)"
    );
    assert_eq!(
        sender.intern(hash.as_ref()),
        Ok((0, false)),
        "known signatures still resolve"
    );
}

fn arb_str() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9/;.\u{4f60}]{0,12}").unwrap()
}

fn arb_frame() -> impl Strategy<Value = Owned> {
    let status = prop_oneof![
        Just(Status::Ok),
        Just(Status::ProviderError),
        Just(Status::Overloaded),
        Just(Status::Unavailable),
        Just(Status::Timeout),
        Just(Status::BadRequest),
        Just(Status::Exception),
        Just(Status::Forbidden),
    ];
    prop_oneof![
        (
            any::<u32>(),
            arb_str(),
            arb_str(),
            arb_str(),
            arb_str(),
            arb_str()
        )
            .prop_map(|(id, a, b, c, d, e)| {
                Owned::Define(
                    id,
                    Signature {
                        service: a,
                        method: b,
                        parameter_types: c,
                        version: d,
                        group: e,
                    },
                )
            }),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
            proptest::collection::vec((arb_str(), arb_str()), 0..3),
            proptest::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(
                |(id, call_id, timeout_ms, one_way, att, args)| Owned::Request {
                    id,
                    call_id,
                    timeout_ms,
                    one_way,
                    att,
                    args
                }
            ),
        (
            any::<u64>(),
            status,
            arb_str(),
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec((arb_str(), arb_str()), 0..3),
        )
            .prop_map(|(id, s, msg, bytes, att)| Owned::Response {
                id,
                status: s,
                att,
                payload: if s.carries_value() {
                    bytes
                } else {
                    msg.into_bytes()
                },
            }),
        any::<u64>().prop_map(Owned::Ping),
        any::<u64>().prop_map(Owned::Pong),
        Just(Owned::GoAway),
    ]
}

proptest! {
    #[test]
    fn round_trip(frames in proptest::collection::vec(arb_frame(), 1..6), cut in any::<usize>()) {
        let mut buf = Vec::new();
        for f in &frames {
            encode(&mut buf, f);
        }
        prop_assert_eq!(decode_all(&buf), frames.clone());
        // Split once anywhere: the prefix yields a prefix of the frames, then Incomplete.
        let cut = cut % (buf.len() + 1);
        let mut at = 0;
        let mut n = 0;
        while let Decoded::Complete { msg, consumed } = decode(&buf[at..cut]).unwrap() {
            prop_assert_eq!(&to_owned(msg), &frames[n]);
            n += 1;
            at += consumed;
        }
    }

    #[test]
    fn garbage_never_panics(mut buf in proptest::collection::vec(any::<u8>(), 0..200), valid_header in any::<bool>()) {
        if valid_header && buf.len() >= 3 {
            buf[..3].copy_from_slice(&[0xDA, 0xBB, 1]);
        }
        let mut at = 0;
        while let Ok(Decoded::Complete { msg, consumed }) = decode(&buf[at..]) {
            match msg {
                Frame::Request(r) => prop_assert!(r.attachments.count() <= u16::MAX as usize),
                Frame::Response(r) => {
                    prop_assert!(r.attachments.count() <= u16::MAX as usize);
                    prop_assert!(r.payload.len() < buf.len());
                }
                _ => {}
            }
            prop_assert!(consumed >= HEADER_LEN);
            at += consumed;
        }
    }

    #[test]
    fn mutated_frames_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let mut buf = Vec::new();
        for f in sample() {
            encode(&mut buf, &f);
        }
        for (i, b) in edits {
            let n = buf.len();
            buf[i % n] = b;
        }
        let mut at = 0;
        while let Ok(Decoded::Complete { consumed, .. }) = decode(&buf[at..]) {
            at += consumed;
        }
    }
}

#[test]
fn response_attachments_layout() {
    // Without attachments: the frame is byte for byte the plain one.
    let (mut plain, mut with) = (Vec::new(), Vec::new());
    encode_response(&mut plain, 7, Status::Ok, b"\x91").unwrap();
    let mark = begin_response_with(&mut with, 7, Status::Ok, &[]).unwrap();
    with.push(0x91);
    finish(&mut with, mark).unwrap();
    assert_eq!(plain, with);

    let mut out = Vec::new();
    let mark = begin_response_with(&mut out, 7, Status::Ok, &[("k", "vv")]).unwrap();
    out.push(0x91);
    finish(&mut out, mark).unwrap();
    assert_eq!(
        out,
        [
            &[0xDA, 0xBB, 1, 0x43, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 10][..],
            &[0, 1, 0, 1, b'k', 0, 2, b'v', b'v', 0x91][..],
        ]
        .concat()
    );
    let Ok(Decoded::Complete {
        msg: Frame::Response(r),
        consumed,
    }) = decode(&out)
    else {
        panic!("{out:?}")
    };
    assert_eq!(consumed, out.len());
    assert_eq!(r.attachments.collect::<Vec<_>>(), [("k", "vv")]);
    assert_eq!(r.payload, b"\x91");
    // Attachments are Copy: the list can be walked twice.
    assert_eq!(r.attachments.count(), r.attachments.count());

    // Too long to encode: an error, nothing written.
    let long = "x".repeat(70_000);
    let mut out = Vec::new();
    assert_eq!(
        begin_response_with(&mut out, 1, Status::Ok, &[("k", long.as_str())]),
        Err(AgentError::TooLong)
    );
    assert!(out.is_empty());
}

#[test]
fn response_attachments_bad_input() {
    let frame = |kind: u8, status: u8, body: &[u8]| {
        let mut h = vec![0xDA, 0xBB, 1, kind, status, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        h.extend_from_slice(&(body.len() as u32).to_be_bytes());
        h.extend_from_slice(body);
        h
    };
    let malformed = |b: &[u8]| matches!(decode(b), Err(AgentError::Malformed(_)));
    // The flag on any other kind, or with ONE_WAY, is unknown.
    for kind in [0x41, 0x42, 0x44, 0x45, 0xC3, 0xC2] {
        assert!(malformed(&frame(kind, 0, &[])), "kind byte {kind:#x}");
    }
    // The flag with no room for the count; a count larger than the pairs present; a
    // key or value cut short.
    assert!(malformed(&frame(0x43, 0, &[])));
    assert!(malformed(&frame(0x43, 0, &[0])));
    assert!(malformed(&frame(0x43, 0, &[0, 2, 0, 1, b'k', 0, 0])));
    assert!(malformed(&frame(0x43, 0, &[0, 1, 0, 5, b'k'])));
    assert!(malformed(&frame(0x43, 0, &[0, 1, 0, 1, b'k', 0, 9, b'v'])));
    // Not UTF-8: a key, a value, the error message after the list.
    let bad = Err(AgentError::InvalidUtf8);
    assert_eq!(decode(&frame(0x43, 0, &[0, 1, 0, 1, 0xFF, 0, 0])), bad);
    assert_eq!(decode(&frame(0x43, 0, &[0, 1, 0, 0, 0, 1, 0xC3])), bad);
    assert_eq!(
        decode(&frame(0x43, 1, &[0, 1, 0, 1, b'k', 0, 0, 0xFF])),
        bad
    );
    // The flag with an empty list: no attachments are sent without it (one encoding).
    assert!(malformed(&frame(0x43, 1, &[0, 0, b'e'])));
    // The payload is what follows the list.
    let one = frame(0x43, 1, &[0, 1, 0, 1, b'k', 0, 0, b'e']);
    let Ok(Decoded::Complete {
        msg: Frame::Response(r),
        ..
    }) = decode(&one)
    else {
        panic!()
    };
    assert_eq!(r.attachments.collect::<Vec<_>>(), [("k", "")]);
    assert_eq!(r.message(), Some("e"));
    // Every prefix of a frame with attachments is Incomplete, never an error.
    let whole = frame(0x43, 0, &[0, 1, 0, 1, b'k', 0, 1, b'v', 0x91]);
    for cut in 0..whole.len() {
        assert_eq!(decode(&whole[..cut]), Ok(Decoded::Incomplete), "cut {cut}");
    }
}

#[test]
fn a_head_is_read_before_its_body() {
    let mut out = Vec::new();
    encode_request(&mut out, 0x0102_0304_0506_0708, 3, 100, &[], b"args").unwrap();
    let head = codec::agent::peek_head(&out[..HEADER_LEN]).expect("a head");
    assert_eq!(head.id, 0x0102_0304_0506_0708);
    assert!(head.is_request);
    assert_eq!(head.body_len as usize, out.len() - HEADER_LEN);
    assert_eq!(codec::agent::peek_head(&out[..HEADER_LEN - 1]), None);
    let mut ping = Vec::new();
    encode_ping(&mut ping, 9);
    let head = codec::agent::peek_head(&ping).expect("a head");
    assert!(!head.is_request);
    assert_eq!((head.id, head.body_len), (9, 0));
    let mut bad = ping.clone();
    bad[2] = 9; // another version
    assert_eq!(codec::agent::peek_head(&bad), None);
    bad[0] = b'G';
    assert_eq!(codec::agent::peek_head(&bad), None);
}

#[test]
fn raw_dubbo_answers_travel_byte_for_byte() {
    use codec::agent::{begin_raw_response, RawDubbo};
    // A request asking for the raw answer, one-way or not.
    for one_way in [false, true] {
        let head = RequestHead {
            one_way,
            raw_result: true,
            ..RequestHead::new(7, 1)
        };
        let mut out = Vec::new();
        let mark = begin_request(&mut out, &head).unwrap();
        out.extend_from_slice(b"\x05hello");
        finish(&mut out, mark).unwrap();
        let Decoded::Complete {
            msg: Frame::Request(r),
            ..
        } = decode(&out).unwrap()
        else {
            panic!("a request");
        };
        assert!(r.raw_result);
        assert_eq!(r.one_way, one_way);
        assert_eq!(r.args, b"\x05hello");
    }
    // The provider's Dubbo body, whatever it holds (here a non-UTF-8 exception flag).
    let body = [0x90, b'C', 0xff, 0x00];
    let mut out = Vec::new();
    let mark = begin_raw_response(&mut out, 7, Status::Ok, 20, 2);
    out.extend_from_slice(&body);
    finish(&mut out, mark).unwrap();
    let Decoded::Complete {
        msg: Frame::Response(r),
        consumed,
    } = decode(&out).unwrap()
    else {
        panic!("a response");
    };
    assert_eq!(consumed, out.len());
    assert_eq!(
        r.raw,
        Some(RawDubbo {
            status: 20,
            serialization: 2
        })
    );
    assert_eq!(r.payload, body);
    assert_eq!(r.message(), None);
    // RAW and ATTACHMENTS never together; RAW needs its two header bytes.
    let mut both = out.clone();
    both[3] |= 0x40;
    assert!(decode(&both).is_err());
    let mut short = Vec::new();
    let mark = begin_raw_response(&mut short, 7, Status::Ok, 20, 2);
    short.truncate(short.len() - 1);
    finish(&mut short, mark).unwrap();
    assert!(decode(&short).is_err());
}

#[test]
fn goaway_is_an_empty_frame_with_id_zero() {
    let mut out = Vec::new();
    encode_goaway(&mut out);
    assert_eq!(
        out,
        [0xDA, 0xBB, 1, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        decode(&out),
        Ok(Decoded::Complete {
            msg: Frame::GoAway,
            consumed: HEADER_LEN
        })
    );
    // With an id or a body it is malformed: never taken for something else.
    let mut with_id = out.clone();
    with_id[13] = 1;
    assert!(decode(&with_id).is_err());
    let mut with_body = out.clone();
    with_body[17] = 1;
    with_body.push(0);
    assert!(decode(&with_body).is_err());
}
