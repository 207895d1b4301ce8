//! Partial reads and writes: a large payload through the echo to a slow reader comes
//! back whole and in order, with the echo pausing and resuming its reads on the way.

mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reactor::{Config, SocketOptions};
use util::*;

#[test]
fn eight_mib_to_a_slow_reader_comes_back_in_order() {
    const LEN: usize = 8 << 20;
    // Small socket buffers and watermarks: many partial writes, many pauses.
    let config = Config {
        high_watermark: 64 * 1024,
        low_watermark: 16 * 1024,
        input_buffer: 16 * 1024,
        socket: SocketOptions {
            send_buffer: Some(32 * 1024),
            recv_buffer: Some(32 * 1024),
            ..SocketOptions::default()
        },
        ..Config::default()
    };
    let (server, stats) = start_echo(config);
    let payload = pattern(LEN);
    let mut conn = client(server.addr());
    let mut writer = conn.try_clone().unwrap();
    let sent = payload.clone();
    let writer = std::thread::spawn(move || {
        // Odd-sized writes, so message edges never line up with buffer sizes.
        for chunk in sent.chunks(100_003) {
            writer.write_all(chunk).unwrap();
        }
    });

    let mut back = Vec::with_capacity(LEN);
    let mut buf = vec![0; 4096];
    let mut reads = 0usize;
    while back.len() < LEN {
        // Small, varying reads with an occasional pause: the server's output backs up.
        let want = 1 + (reads * 7919) % buf.len();
        let n = conn.read(&mut buf[..want]).expect("read echo");
        assert!(n > 0, "server closed after {} bytes", back.len());
        back.extend_from_slice(&buf[..n]);
        reads += 1;
        if reads.is_multiple_of(256) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    writer.join().unwrap();
    assert_eq!(back.len(), LEN);
    if let Some(i) = back.iter().zip(&payload).position(|(a, b)| a != b) {
        panic!("echo differs at byte {i}");
    }
    assert!(
        stats.pauses.load(Ordering::SeqCst) > 0,
        "the slow reader never made the echo pause reading"
    );
    assert!(stats.drains.load(Ordering::SeqCst) > 0, "never drained");
    drop(conn);
    wait_count("close", &stats.closed, 1);
    server.shutdown();
}

#[test]
fn many_small_writes_from_many_threads_each_come_back() {
    let (server, _) = start_echo(Config::default());
    let addr = server.addr();
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = client(addr);
                for i in 0..200u32 {
                    ping(&mut c, &(t * 1000 + i).to_le_bytes());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    server.shutdown();
}

/// A client that sends, then half-closes its side, still gets its answer: the reply
/// written in the same iteration as the end-of-stream must not be dropped.
#[test]
fn reply_reaches_a_client_that_half_closed() {
    let (server, stats) = start_echo(Config::default());
    for _ in 0..20 {
        let mut c = client(server.addr());
        let msg = pattern(10_000);
        c.write_all(&msg).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).expect("read after half-close");
        assert_eq!(back.len(), msg.len(), "echo lost after half-close");
        assert_eq!(back, msg);
    }
    wait_count("closes", &stats.closed, 20);
    server.shutdown();
}

/// Answers the first bytes it gets, then closes (HTTP/1.0 style).
#[derive(Debug)]
struct ReplyThenClose;

impl reactor::Handler for ReplyThenClose {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn data(
        &mut self,
        cx: &mut reactor::Ctx<'_, Self>,
        conn: reactor::Conn<()>,
        input: &[u8],
    ) -> usize {
        cx.write(conn.id, &pattern(100_000));
        cx.close(conn.id);
        input.len()
    }
}

/// The handler closes after answering while the client has already half-closed: the
/// answer still goes out in full before the connection closes.
#[test]
fn reply_then_close_reaches_a_client_that_half_closed() {
    let r = Running::new(
        reactor::Builder::new(Config::default())
            .listen(any_port(), ())
            .start(|_, _| ReplyThenClose)
            .unwrap(),
    );
    for _ in 0..20 {
        let mut c = client(r.addr());
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).expect("read after half-close");
        assert_eq!(back.len(), 100_000, "answer lost");
        assert!(back == pattern(100_000));
    }
    r.shutdown();
}
