//! One request per connection by default; kept alive on request, with an idle limit;
//! stopping closes the port.

mod util;

use std::io::Write;
use std::time::{Duration, Instant};

use reactor_admin::Config;
use util::*;

#[test]
fn by_default_each_answer_closes_its_connection() {
    let server = server(Config::default());
    let mut s = client(server.local_addr());
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n")
        .unwrap();
    let a = read_answer(&mut s);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("connection"), Some("close"));
    assert!(closed_within(&mut s, Duration::from_secs(2)), "kept open");
    server.stop();
}

#[test]
fn kept_alive_connections_serve_requests_and_close_when_idle() {
    let server = server(Config {
        keep_alive: Some(Duration::from_millis(500)),
        ..Config::default()
    });
    let mut s = client(server.local_addr());
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let a = read_answer(&mut s);
    assert_eq!(
        (a.status, a.header("connection")),
        (200, Some("keep-alive"))
    );
    // Two pipelined in one segment.
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n")
        .unwrap();
    let two = read_answers(&mut s, 2);
    assert_eq!(two[0].body_text(), "# TYPE up gauge\nup 1\n");
    assert_eq!(two[1].body_text(), "ok\n");
    // `Connection: close` is honoured.
    s.write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut s).header("connection"), Some("close"));
    assert!(closed_within(&mut s, Duration::from_secs(2)));

    let mut idle = client(server.local_addr());
    idle.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    read_answer(&mut idle);
    let t = Instant::now();
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)),
        "idle kept"
    );
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(400), "closed after {took:?}");
    server.stop();
}

#[test]
fn stopping_closes_the_port() {
    let server = server(Config::default());
    let addr = server.local_addr();
    let mut held = client(addr);
    server.stop();
    assert!(closed_within(&mut held, Duration::from_secs(2)));
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
}
