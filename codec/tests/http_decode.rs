//! HTTP/1.x request decoding: the race's request, pipelining, splits, limits, errors.

use std::borrow::Cow;

use codec::http::{HttpError, Limits, Request, RequestDecoder, Version};
use codec::Decoded;
use proptest::prelude::*;

const RACE_BODY: &[u8] = b"interface=com.alibaba.dubbo.performance.demo.provider.IHelloService\
&method=hash&parameterTypesString=Ljava%2Flang%2FString%3B&parameter=a1b2c3";

fn race_request() -> Vec<u8> {
    let mut r = format!(
        "POST /invoke HTTP/1.1\r\nHost: 127.0.0.1:20000\r\nUser-Agent: wrk\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        RACE_BODY.len()
    )
    .into_bytes();
    r.extend_from_slice(RACE_BODY);
    r
}

fn complete(buf: &[u8]) -> (Request<'_>, usize) {
    match RequestDecoder::new().decode(buf) {
        Ok(Decoded::Complete { msg, consumed }) => (msg, consumed),
        other => panic!("expected a complete request, got {other:?}"),
    }
}

fn error(buf: &[u8], limits: Limits) -> HttpError {
    match RequestDecoder::with_limits(limits).decode(buf) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Decode every request in `buf`, feeding it prefix by prefix as one connection would.
fn decode_incrementally(buf: &[u8], step: usize) -> Vec<(String, String, Vec<u8>, bool)> {
    let mut dec = RequestDecoder::new();
    let mut out = Vec::new();
    let mut start = 0;
    let mut end = 0;
    while start < buf.len() {
        end = (end + step).min(buf.len());
        while let Decoded::Complete { msg, consumed } =
            dec.decode(&buf[start..end]).expect("valid input")
        {
            assert!(consumed > 0 && consumed <= end - start);
            out.push((
                msg.method.to_owned(),
                msg.path.to_owned(),
                msg.body.to_vec(),
                msg.keep_alive,
            ));
            start += consumed;
        }
        if end == buf.len() && start < buf.len() {
            panic!("input left undecoded at {start}");
        }
    }
    out
}

#[test]
fn race_request_byte_for_byte() {
    let buf = race_request();
    let (req, consumed) = complete(&buf);
    assert_eq!(consumed, buf.len());
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/invoke");
    assert_eq!(req.version, Version::Http11);
    assert!(req.keep_alive);
    assert!(!req.expects_continue);
    assert!(!req.chunked);
    assert!(req.is_form());
    assert_eq!(
        req.content_type,
        Some(&b"application/x-www-form-urlencoded"[..])
    );
    assert_eq!(req.content_length, Some(RACE_BODY.len() as u64));
    assert!(matches!(req.body, Cow::Borrowed(_)));
    assert_eq!(&req.body[..], RACE_BODY);
    assert_eq!(req.header("user-agent"), Some(&b"wrk"[..]));
    let names: Vec<&str> = req.headers().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["Host", "User-Agent", "Content-Type", "Content-Length"]
    );
}

#[test]
fn any_path_and_custom_headers() {
    let buf = b"POST /a/b/c?x=1 HTTP/1.1\r\ndubbo-version: 2.6.0\r\nX-Dubbo-Group: g\r\n\
                Content-Length: 0\r\n\r\n";
    let (req, _) = complete(buf);
    assert_eq!(req.path, "/a/b/c?x=1");
    assert_eq!(req.header("Dubbo-Version"), Some(&b"2.6.0"[..]));
    let dubbo: Vec<_> = req
        .headers()
        .filter(|(n, _)| n.to_ascii_lowercase().starts_with("x-dubbo-"))
        .collect();
    assert_eq!(dubbo, [("X-Dubbo-Group", &b"g"[..])]);
    assert!(req.body.is_empty());
    let (req, _) = complete(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!((req.method, req.path, req.body.len()), ("GET", "/", 0));
}

#[test]
fn pipelined_requests_split_at_every_byte() {
    let mut buf = race_request();
    buf.extend_from_slice(b"GET /health HTTP/1.1\r\n\r\n");
    buf.extend_from_slice(
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: t\r\n\r\n",
    );
    buf.extend_from_slice(b"POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi");
    let whole = decode_incrementally(&buf, buf.len());
    assert_eq!(whole.len(), 4);
    assert_eq!(whole[0].2, RACE_BODY);
    assert_eq!(whole[1].1, "/health");
    assert_eq!(whole[2].2, b"abcde");
    assert_eq!((whole[3].2.as_slice(), whole[3].3), (&b"hi"[..], false));
    for step in 1..=3 {
        assert_eq!(decode_incrementally(&buf, step), whole, "step {step}");
    }
    // Every split point of two reads, checked with a fresh decoder each time.
    for cut in 0..buf.len() {
        let mut dec = RequestDecoder::new();
        let first = &buf[..cut];
        let mut start = 0;
        let mut got = Vec::new();
        while let Decoded::Complete { msg, consumed } = dec.decode(&first[start..]).unwrap() {
            got.push(msg.body.to_vec());
            start += consumed;
        }
        while start < buf.len() {
            match dec.decode(&buf[start..]).unwrap() {
                Decoded::Complete { msg, consumed } => {
                    got.push(msg.body.to_vec());
                    start += consumed;
                }
                Decoded::Incomplete => panic!("whole input incomplete at cut {cut}"),
            }
        }
        let want: Vec<Vec<u8>> = whole.iter().map(|w| w.2.clone()).collect();
        assert_eq!(got, want, "cut {cut}");
    }
}

#[test]
fn incomplete_until_whole() {
    let buf = race_request();
    let mut dec = RequestDecoder::new();
    for n in 0..buf.len() {
        assert_eq!(dec.decode(&buf[..n]), Ok(Decoded::Incomplete), "prefix {n}");
    }
    assert!(
        matches!(dec.decode(&buf), Ok(Decoded::Complete { consumed, .. }) if consumed == buf.len())
    );
}

#[test]
fn keep_alive_rules() {
    let ka = |s: &[u8]| complete(s).0.keep_alive;
    assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
    assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
    assert!(!ka(
        b"GET / HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n"
    ));
    assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
    assert!(ka(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    assert!(!ka(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n"));
    assert_eq!(
        complete(b"GET / HTTP/1.0\r\n\r\n").0.version,
        Version::Http10
    );
}

#[test]
fn limits_head_431() {
    let limits = Limits {
        max_head: 64,
        max_body: 1024,
    };
    let mut buf = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    buf.resize(64, b'a');
    let e = error(&buf, limits);
    assert_eq!((e.status(), e.reason()), (431, "request head too large"));
    assert!(e.closes_connection());
    assert_eq!(e.to_string(), "431 request head too large");
    // One byte under the limit is still just incomplete.
    let mut dec = RequestDecoder::with_limits(limits);
    assert_eq!(dec.decode(&buf[..63]), Ok(Decoded::Incomplete));
    // Too many headers.
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..40 {
        many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(error(&many, Limits::default()).status(), 431);
}

#[test]
fn limits_body_413_before_body_arrives() {
    let limits = Limits {
        max_head: 1024,
        max_body: 10,
    };
    let e = error(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", limits);
    assert_eq!((e.status(), e.reason()), (413, "request body too large"));
    let e = error(
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999\r\n\r\n",
        limits,
    );
    assert_eq!(e.status(), 413);
    let ok = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
    assert!(matches!(
        RequestDecoder::with_limits(limits).decode(ok),
        Ok(Decoded::Complete { .. })
    ));
    // Chunked: enforced while decoding, before the chunk data arrives.
    let e = error(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n6\r\n",
        limits,
    );
    assert_eq!(e.status(), 413);
}

#[test]
fn bad_syntax_400() {
    let cases: &[(&[u8], &str)] = &[
        (
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "invalid header name",
        ),
        (b"GET / HTTP/2.0\r\n\r\n", "invalid HTTP version"),
        (b"G(T / HTTP/1.1\r\n\r\n", "malformed request line"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            "invalid Content-Length",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "invalid Content-Length",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "both Content-Length and Transfer-Encoding present",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "malformed chunked body",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXY",
            "malformed chunked body",
        ),
    ];
    for (buf, reason) in cases {
        let e = error(buf, Limits::default());
        assert_eq!(
            (e.status(), e.reason()),
            (400, *reason),
            "{}",
            String::from_utf8_lossy(buf)
        );
    }
    let e = error(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        Limits::default(),
    );
    assert_eq!(
        (e.status(), e.reason()),
        (501, "unsupported transfer-encoding")
    );
    let e = error(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        Limits::default(),
    );
    assert_eq!(e.status(), 501);
    let e = error(
        b"POST / HTTP/1.1\r\nExpect: magic\r\n\r\n",
        Limits::default(),
    );
    assert_eq!(e.status(), 417);
}

#[test]
fn chunked_body_owned() {
    let buf = b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\nA\r\n0123456789\r\n1\r\n!\r\n0\r\n\r\nNEXT";
    let (req, consumed) = complete(buf);
    assert!(req.chunked);
    assert!(matches!(req.body, Cow::Owned(_)));
    assert_eq!(&req.body[..], b"0123456789!");
    assert_eq!(&buf[consumed..], b"NEXT");
}

#[test]
fn expect_continue() {
    let head = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
    let mut dec = RequestDecoder::new();
    assert!(!dec.take_continue());
    assert_eq!(dec.decode(head), Ok(Decoded::Incomplete));
    assert!(dec.take_continue());
    assert!(!dec.take_continue(), "only once per request");
    let mut full = head.to_vec();
    full.extend_from_slice(b"abc");
    let Ok(Decoded::Complete { msg, .. }) = dec.decode(&full) else {
        panic!()
    };
    assert!(msg.expects_continue);
    assert_eq!(&msg.body[..], b"abc");
    // HTTP/1.0 clients get no 100 Continue.
    let mut dec = RequestDecoder::new();
    let _ = dec.decode(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    assert!(!dec.take_continue());
}

fn valid_requests() -> Vec<u8> {
    let mut buf = race_request();
    buf.extend_from_slice(
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    buf.extend_from_slice(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    buf
}

fn drain(buf: &[u8]) {
    let mut dec = RequestDecoder::with_limits(Limits {
        max_head: 256,
        max_body: 64,
    });
    let mut start = 0;
    while let Ok(Decoded::Complete { consumed, .. }) = dec.decode(&buf[start..]) {
        assert!(consumed > 0);
        start += consumed;
        assert!(start <= buf.len());
    }
}

proptest! {
    #[test]
    fn no_panic_on_random_bytes(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
        drain(&buf);
    }

    #[test]
    fn no_panic_on_mutated_requests(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                                    cut in any::<usize>()) {
        let mut buf = valid_requests();
        for (at, b) in edits {
            let i = at % buf.len();
            buf[i] = b;
        }
        let cut = cut % (buf.len() + 1);
        drain(&buf[..cut]);
        drain(&buf);
    }
}

#[test]
fn debug_and_eq_show_only_real_headers() {
    let buf = b"GET /x HTTP/1.1\r\nA: 1\r\n\r\n";
    let (a, _) = complete(buf);
    let (b, _) = complete(buf);
    assert_eq!(a, b);
    let text = format!("{a:?}");
    assert!(text.contains(r#"headers: [("A", "1")]"#), "{text}");
    assert_ne!(a, complete(b"GET /x HTTP/1.1\r\nA: 2\r\n\r\n").0);
}

#[test]
fn default_limits() {
    let l = Limits::default();
    assert_eq!((l.max_head, l.max_body), (16 * 1024, 1024 * 1024));
    assert_eq!(RequestDecoder::new().limits(), l);
    // A head just over the default is 431, even with no CRLF in sight.
    let buf = vec![b'a'; 16 * 1024];
    assert_eq!(error(&buf, l), HttpError::HeadTooLarge);
}

/// Chunk-size lines (their extensions) and trailers are bounded, whether they arrive
/// whole or never end: a client cannot make the decoder buffer and rescan them without
/// limit.
#[test]
fn chunk_lines_and_trailers_are_bounded() {
    let limits = Limits {
        max_head: 1024,
        max_body: 1024,
    };
    let chunked = |rest: &[u8]| {
        let mut buf = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        buf.extend_from_slice(rest);
        buf
    };
    let long_ext = format!("5;{}", "a".repeat(5000));
    // A line that never ends, and one that does, both past the 4 KiB line limit.
    for rest in [
        long_ext.clone(),
        format!("{long_ext}\r\nhello\r\n0\r\n\r\n"),
    ] {
        let e = error(&chunked(rest.as_bytes()), limits);
        assert_eq!(e, HttpError::ChunkLineTooLong);
        assert_eq!((e.status(), e.reason()), (400, "chunk size line too long"));
    }
    // Whitespace after the size counts too.
    let spaces = format!("5{}", " ".repeat(5000));
    assert_eq!(
        error(&chunked(spaces.as_bytes()), limits),
        HttpError::ChunkLineTooLong
    );
    // A 16 MB extension fed as it arrives is refused once it passes the line limit.
    let mut dec = RequestDecoder::with_limits(limits);
    let mut buf = chunked(b"5;");
    let mut refused = None;
    for _ in 0..256 {
        buf.extend(std::iter::repeat_n(b'a', 64 * 1024));
        match dec.decode(&buf) {
            Ok(Decoded::Incomplete) => {}
            Err(e) => {
                refused = Some((e, buf.len()));
                break;
            }
            Ok(other) => panic!("{other:?}"),
        }
    }
    let (e, at) = refused.expect("the endless extension was refused");
    assert_eq!(e, HttpError::ChunkLineTooLong);
    assert!(at < 128 * 1024, "refused only after {at} bytes");
    // Lines each under the limit whose extensions together pass max_head.
    let mut many = Vec::new();
    for _ in 0..20 {
        many.extend_from_slice(format!("1;{}\r\nx\r\n", "e".repeat(100)).as_bytes());
    }
    assert_eq!(error(&chunked(&many), limits), HttpError::ChunkLineTooLong);
    // Trailers past max_head: 431, complete or not.
    let trailer = format!("0\r\nX-Trailer: {}\r\n", "t".repeat(2000));
    for rest in [trailer.clone(), format!("{trailer}\r\n")] {
        let e = error(&chunked(rest.as_bytes()), limits);
        assert_eq!(e, HttpError::TrailersTooLarge);
        assert_eq!((e.status(), e.reason()), (431, "trailer fields too large"));
    }
    // Under every limit: decoded.
    let ok = chunked(
        format!(
            "5;name={}\r\nhello\r\n0\r\nX-Trailer: {}\r\n\r\n",
            "v".repeat(300),
            "t".repeat(300)
        )
        .as_bytes(),
    );
    match RequestDecoder::with_limits(limits).decode(&ok) {
        Ok(Decoded::Complete { msg, consumed }) => {
            assert_eq!((&msg.body[..], consumed), (&b"hello"[..], ok.len()));
        }
        other => panic!("{other:?}"),
    }
}
