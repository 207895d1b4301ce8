//! The mock provider, in-process, spoken to with hand-made Dubbo frames.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bench::provider::{self, ProviderOpts, SERVICE};
use codec::dubbo::{self, status, Attachments, Request, Serialization};
use codec::hessian2::{self, Value};
use codec::Decoded;

fn opts(latency_ms: u64) -> ProviderOpts {
    ProviderOpts {
        listen: "127.0.0.1:0".parse().unwrap(),
        latency: Duration::from_millis(latency_ms),
        ..ProviderOpts::default()
    }
}

fn request(id: i64, ser: Serialization, method: &str, arg: &str) -> Vec<u8> {
    let mut args = Vec::new();
    hessian2::write_string(&mut args, arg);
    let desc = dubbo::jvm_descriptor(&["java.lang.String"]);
    let req = Request {
        id,
        serialization: ser,
        two_way: true,
        dubbo_version: "2.0.1",
        path: SERVICE,
        version: None,
        group: None,
        method,
        descriptor: &desc,
        args: &args,
        attachments: Attachments::Exactly(&[("path", Some(SERVICE))]),
    };
    let mut out = Vec::new();
    dubbo::encode_request(&mut out, &req).unwrap();
    out
}

/// Reads one whole frame: (status, id, flags, body).
fn read_frame(s: &mut TcpStream) -> (u8, i64, u8, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Decoded::Complete { msg, consumed } = dubbo::decode_frame(&buf).unwrap() {
            let r = (msg.status(), msg.id(), msg.header.flags, msg.body.to_vec());
            buf.drain(..consumed);
            assert!(buf.is_empty(), "one frame at a time");
            return r;
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "provider closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn call(addr: SocketAddr, ser: Serialization, arg: &str) -> (u8, Value) {
    let mut s = connect(addr);
    s.write_all(&request(7, ser, "hash", arg)).unwrap();
    let (st, id, flags, body) = read_frame(&mut s);
    assert_eq!(id, 7);
    assert_eq!(flags & dubbo::SERIALIZATION_MASK, ser.id());
    let resp = dubbo::decode_response_body(ser.id(), st, &body).unwrap();
    match resp.outcome {
        dubbo::Outcome::Value(v) => (st, v),
        other => panic!("unexpected outcome {other:?}"),
    }
}

#[test]
fn hessian2_and_fastjson_get_the_java_hash() {
    let p = provider::spawn(opts(5)).unwrap();
    for ser in [Serialization::Hessian2, Serialization::Fastjson] {
        for arg in ["hello", "", "héllo wörld 中文 😀"] {
            let (st, v) = call(p.local_addr(), ser, arg);
            assert_eq!(st, status::OK);
            assert_eq!(
                v,
                Value::Int(codec::java::string_hash_code(arg)),
                "{ser:?} {arg:?}"
            );
        }
    }
    assert_eq!(
        call(p.local_addr(), Serialization::Hessian2, "hello").1,
        Value::Int(99162322)
    );
    p.stop();
}

#[test]
fn latency_is_honoured() {
    let p = provider::spawn(opts(100)).unwrap();
    let t = Instant::now();
    call(p.local_addr(), Serialization::Hessian2, "x");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(95), "{took:?}");
    assert!(took < Duration::from_millis(1000), "{took:?}");
    p.stop();
}

#[test]
fn salt_is_honoured() {
    let p = provider::spawn(ProviderOpts {
        salt: Some(42),
        ..opts(0)
    })
    .unwrap();
    let (_, v) = call(p.local_addr(), Serialization::Fastjson, "abc");
    assert_eq!(v, Value::Int(codec::java::string_hash_code("abc42")));
    let (_, v) = call(p.local_addr(), Serialization::Hessian2, "abc");
    assert_eq!(v, Value::Int(codec::java::string_hash_code("abc42")));
    p.stop();
}

#[test]
fn call_201_gets_threadpool_exhausted() {
    let p = provider::spawn(opts(2000)).unwrap();
    let mut s = connect(p.local_addr());
    let mut all = Vec::new();
    for id in 1..=201 {
        all.extend_from_slice(&request(id, Serialization::Hessian2, "hash", "x"));
    }
    let t = Instant::now();
    s.write_all(&all).unwrap();
    // The refusal comes at once, long before the 200 sleeping calls answer.
    let (st, id, _, body) = read_frame(&mut s);
    assert!(t.elapsed() < Duration::from_millis(1500));
    assert_eq!(st, status::SERVER_THREADPOOL_EXHAUSTED);
    assert_eq!(id, 201);
    let resp = dubbo::decode_response_body(2, st, &body).unwrap();
    assert!(resp.outcome == dubbo::Outcome::Null || format!("{resp:?}").contains("exhausted"));
    assert_eq!(
        p.stats()
            .exhausted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        p.stats()
            .peak_inflight
            .load(std::sync::atomic::Ordering::Relaxed),
        200
    );
    p.stop();
}

#[test]
fn heartbeat_is_answered() {
    let p = provider::spawn(opts(50)).unwrap();
    let mut s = connect(p.local_addr());
    let mut hb = Vec::new();
    dubbo::encode_heartbeat_request(&mut hb, 99);
    s.write_all(&hb).unwrap();
    let (st, id, flags, body) = read_frame(&mut s);
    assert_eq!((st, id), (status::OK, 99));
    assert_ne!(flags & dubbo::FLAG_EVENT, 0);
    assert_eq!(flags & dubbo::FLAG_REQUEST, 0);
    assert_eq!(body, b"N");
    p.stop();
}

#[test]
fn unknown_method_is_server_error_and_garbage_closes() {
    let p = provider::spawn(opts(0)).unwrap();
    let mut s = connect(p.local_addr());
    s.write_all(&request(5, Serialization::Hessian2, "nope", "x"))
        .unwrap();
    let (st, id, _, body) = read_frame(&mut s);
    assert_eq!((st, id), (status::SERVER_ERROR, 5));
    let text = format!("{:?}", dubbo::decode_response_body(2, st, &body).unwrap());
    assert!(text.contains("nope"), "{text}");
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut b = [0u8; 16];
    assert_eq!(
        s.read(&mut b).unwrap_or(0),
        0,
        "closed on a malformed frame"
    );
    p.stop();
}
