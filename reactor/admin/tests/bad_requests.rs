//! Requests that are too big, malformed, or not `GET`s are answered and the connection
//! closed; `HEAD` gets the head only; an unknown path is `404`.

mod util;

use std::io::{Read, Write};
use std::time::Duration;

use reactor_admin::Config;
use util::*;

#[test]
fn an_oversize_head_is_431() {
    let server = server(Config::default());
    let mut raw = b"GET /healthz HTTP/1.1\r\nX-Pad: ".to_vec();
    raw.resize(raw.len() + 10_000, b'a');
    raw.extend_from_slice(b"\r\n\r\n");
    assert_eq!(exchange(server.local_addr(), &raw).status, 431);
    server.stop();
}

#[test]
fn an_endless_head_is_431_before_it_ends() {
    let server = server(Config::default());
    let mut s = client(server.local_addr());
    let mut raw = b"GET /healthz HTTP/1.1\r\nX-Pad: ".to_vec();
    raw.resize(raw.len() + 9_000, b'a');
    // No end of head: the answer comes once the limit is passed.
    s.write_all(&raw).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert_eq!(parse(&got).expect("an answer").status, 431);
    server.stop();
}

#[test]
fn an_oversize_body_is_413() {
    let server = server(Config::default());
    let raw = b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n";
    assert_eq!(exchange(server.local_addr(), raw).status, 413);
    server.stop();
}

#[test]
fn a_malformed_request_is_400() {
    let server = server(Config::default());
    assert_eq!(
        exchange(server.local_addr(), b"\x16\x03\x01hello\r\n\r\n").status,
        400
    );
    server.stop();
}

#[test]
fn methods_other_than_get_are_405() {
    let server = server(Config::default());
    let a = exchange(
        server.local_addr(),
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert_eq!(a.status, 405);
    assert_eq!(a.header("allow"), Some("GET, HEAD"));
    server.stop();
}

#[test]
fn head_gets_the_head_only() {
    let server = server(Config::default());
    let a = exchange(
        server.local_addr(),
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-length"), Some("21"));
    assert!(a.body.is_empty(), "{a:?}");
    server.stop();
}

#[test]
fn routes_answer_and_unknown_paths_are_404() {
    let server = server(Config::default());
    let addr = server.local_addr();
    let m = get(addr, "/metrics?name=up");
    assert_eq!(
        (m.status, m.body_text().as_str()),
        (200, "# TYPE up gauge\nup 1\n")
    );
    assert_eq!(m.header("content-type"), Some("text/plain; version=0.0.4"));
    assert_eq!(m.header("connection"), Some("close"));
    let missing = get(addr, "/nothing");
    assert_eq!(missing.status, 404);
    assert!(missing.body_text().contains("/healthz"), "{missing:?}");
    server.stop();
}

#[test]
fn an_unhealthy_agent_is_503_with_its_reason() {
    let server = reactor_admin::Builder::new(Config::default())
        .health(|| Err("provider not connected".into()))
        .start("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let a = get(server.local_addr(), "/healthz");
    assert_eq!(
        (a.status, a.body_text().as_str()),
        (503, "provider not connected\n")
    );
    server.stop();
}

/// A request split at every byte boundary, each part its own segment, is answered.
#[test]
fn a_request_in_pieces_is_answered() {
    let server = server(Config::default());
    let raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    for split in 1..raw.len() {
        let mut s = client(server.local_addr());
        s.write_all(&raw[..split]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        s.write_all(&raw[split..]).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(
            parse(&got).expect("an answer").status,
            200,
            "split at {split}"
        );
    }
    server.stop();
}
