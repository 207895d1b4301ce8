//! The forwarder example (inbound and outbound on one loop, backpressure both ways)
//! carries large streams both ways, and closes the client when the upstream is down.

mod util;

#[path = "../examples/forward.rs"]
mod forward;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use reactor::{Config, SocketOptions};
use util::*;

#[test]
fn forwards_large_streams_to_slow_readers() {
    const LEN: usize = 4 << 20;
    let (echo, _) = start_echo(Config::default());
    let small = Config {
        high_watermark: 64 * 1024,
        low_watermark: 16 * 1024,
        socket: SocketOptions {
            send_buffer: Some(32 * 1024),
            recv_buffer: Some(32 * 1024),
            ..SocketOptions::default()
        },
        ..Config::default()
    };
    let fwd = Running::new(forward::start(any_port(), echo.addr(), small).unwrap());
    let addr = fwd.addr();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let payload = pattern(LEN);
                let mut c = client(addr);
                let mut w = c.try_clone().unwrap();
                let sent = payload.clone();
                let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
                let mut back = vec![0; LEN];
                let mut got = 0;
                let mut reads = 0u32;
                while got < LEN {
                    let n = c.read(&mut back[got..(got + 3000).min(LEN)]).unwrap();
                    assert!(n > 0, "closed after {got} bytes");
                    got += n;
                    reads += 1;
                    if reads.is_multiple_of(200) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                writer.join().unwrap();
                assert!(back == payload, "stream corrupted through the forwarder");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    fwd.shutdown();
    echo.shutdown();
}

#[test]
fn upstream_down_closes_the_client() {
    let down = TcpListener::bind(any_port()).unwrap().local_addr().unwrap();
    let fwd = Running::new(forward::start(any_port(), down, Config::default()).unwrap());
    let mut c = client(fwd.addr());
    c.write_all(b"anyone?").unwrap();
    let mut got = Vec::new();
    // Reset or end of stream: either way, closed and nothing came back.
    let _ = c.read_to_end(&mut got);
    assert!(got.is_empty());
    fwd.shutdown();
}
