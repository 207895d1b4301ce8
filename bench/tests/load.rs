//! The load generator against small HTTP servers that answer right, wrong, or fail.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use bench::echo::{self, EchoOpts};
use bench::load::{self, LoadOpts, Params};

fn opts(target: std::net::SocketAddr) -> LoadOpts {
    LoadOpts {
        target,
        connections: 8,
        loops: 2,
        warmup: Duration::from_millis(300),
        duration: Duration::from_secs(1),
        params: Params::Ascii,
        salt: None,
        timeout: Duration::from_millis(500),
        progress: false,
        protocol: bench::load::Protocol::Http,
        stagger: Duration::ZERO,
    }
}

#[test]
fn right_answers_are_all_ok() {
    let server = echo::spawn(EchoOpts::default()).unwrap();
    for params in [Params::Ascii, Params::Utf8] {
        let r = load::run(&LoadOpts {
            params,
            ..opts(server.local_addr())
        })
        .unwrap();
        assert!(r.stats.ok > 100, "{}", r.summary());
        assert!(r.stats.errors.is_empty(), "{}", r.summary());
        assert_eq!(r.requests, r.stats.ok + r.stats.error_count());
        assert_eq!(r.stats.hist.count(), r.requests);
    }
}

#[test]
fn salt_must_match() {
    let server = echo::spawn(EchoOpts {
        salt: Some(7),
        ..EchoOpts::default()
    })
    .unwrap();
    let r = load::run(&LoadOpts {
        salt: Some(7),
        ..opts(server.local_addr())
    })
    .unwrap();
    assert!(
        r.stats.ok > 0 && r.stats.errors.is_empty(),
        "{}",
        r.summary()
    );
    let r = load::run(&opts(server.local_addr())).unwrap();
    assert_eq!(r.stats.ok, 0, "{}", r.summary());
    assert_eq!(r.stats.errors.get("wrong"), Some(&r.requests));
}

#[test]
fn wrong_answers_and_error_statuses_are_counted() {
    let server = echo::spawn(EchoOpts {
        wrong_every: Some(3),
        fail_every: Some(5),
        ..EchoOpts::default()
    })
    .unwrap();
    let r = load::run(&opts(server.local_addr())).unwrap();
    let wrong = r.stats.errors.get("wrong").copied().unwrap_or(0);
    let failed = r.stats.errors.get("status_503").copied().unwrap_or(0);
    assert!(r.requests > 100, "{}", r.summary());
    assert_eq!(r.requests, r.stats.ok + wrong + failed, "{}", r.summary());
    // About a fifth fail and, of the rest, about a third are wrong.
    let frac = |n: u64| n as f64 / r.requests as f64;
    assert!((0.15..0.25).contains(&frac(failed)), "{}", r.summary());
    assert!((0.2..0.35).contains(&frac(wrong)), "{}", r.summary());
}

/// A server that reads one request per connection, then never answers, or closes.
fn silent_server(close: bool) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            std::thread::spawn(move || {
                let mut r = BufReader::new(s);
                let mut line = String::new();
                let mut len = 0;
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                if close {
                    let _ = r.get_mut().write_all(b"");
                    return; // dropped: closed with the request unanswered
                }
                std::thread::sleep(Duration::from_secs(5));
            });
        }
    });
    addr
}

#[test]
fn timeouts_and_closes_are_counted() {
    let r = load::run(&LoadOpts {
        connections: 2,
        loops: 1,
        warmup: Duration::ZERO,
        duration: Duration::from_millis(1200),
        ..opts(silent_server(false))
    })
    .unwrap();
    assert_eq!(r.stats.ok, 0);
    assert!(
        r.stats.errors.get("timeout").copied().unwrap_or(0) >= 2,
        "{}",
        r.summary()
    );
    assert_eq!(r.requests, r.stats.error_count());

    let r = load::run(&LoadOpts {
        connections: 2,
        loops: 1,
        warmup: Duration::ZERO,
        duration: Duration::from_millis(500),
        ..opts(silent_server(true))
    })
    .unwrap();
    assert_eq!(r.stats.ok, 0);
    assert!(
        r.stats.errors.get("closed").copied().unwrap_or(0) >= 2,
        "{}",
        r.summary()
    );
}

#[test]
fn dubbo_answers_are_checked_as_http_ones() {
    use bench::provider::{self, ProviderOpts};
    let right = provider::spawn(ProviderOpts {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        latency: Duration::ZERO,
        ..ProviderOpts::default()
    })
    .unwrap();
    for params in [Params::Ascii, Params::Utf8] {
        let r = load::run(&LoadOpts {
            params,
            protocol: load::Protocol::Dubbo,
            ..opts(right.local_addr())
        })
        .unwrap();
        assert!(r.stats.ok > 100, "{}", r.summary());
        assert!(r.stats.errors.is_empty(), "{}", r.summary());
        assert_eq!(r.requests, r.stats.ok + r.stats.error_count());
    }
    // A provider that salts its answers: every one is wrong.
    let salted = provider::spawn(ProviderOpts {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        latency: Duration::ZERO,
        salt: Some(7),
        ..ProviderOpts::default()
    })
    .unwrap();
    let r = load::run(&LoadOpts {
        protocol: load::Protocol::Dubbo,
        ..opts(salted.local_addr())
    })
    .unwrap();
    assert_eq!(r.stats.ok, 0, "{}", r.summary());
    assert_eq!(r.stats.errors.get("wrong"), Some(&r.requests));
}

/// The instants at which each of `n` connections to a silent server sent its first
/// byte, with the load run under `stagger`; measured from the first of them.
fn first_request_spread(stagger: Duration, n: usize) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(n) {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut stream = stream.unwrap();
                let mut byte = [0u8; 1];
                if stream.read(&mut byte).unwrap_or(0) == 1 {
                    let _ = tx.send(std::time::Instant::now());
                }
                // Never answered; held open until the load ends.
                let _ = stream.read_to_end(&mut Vec::new());
            });
        }
    });
    let load = std::thread::spawn(move || {
        load::run(&LoadOpts {
            connections: n,
            warmup: Duration::ZERO,
            duration: stagger + Duration::from_millis(300),
            timeout: Duration::from_secs(5),
            stagger,
            ..opts(addr)
        })
        .unwrap()
    });
    let firsts: Vec<_> = (0..n)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(5))
                .expect("every connection sends")
        })
        .collect();
    load.join().unwrap();
    let earliest = *firsts.iter().min().unwrap();
    let latest = *firsts.iter().max().unwrap();
    latest.duration_since(earliest)
}

#[test]
fn stagger_spreads_the_first_requests() {
    // Without: all within a few milliseconds of each other.
    let together = first_request_spread(Duration::ZERO, 16);
    assert!(together < Duration::from_millis(100), "{together:?}");
    // With 400 ms: sixteen uniform waits span well over 100 ms (all inside 100 ms has a
    // chance of about 16 * (1/4)^15, once in 60 million), and none waits past 400 ms.
    let spread = first_request_spread(Duration::from_millis(400), 16);
    assert!(spread > Duration::from_millis(100), "{spread:?}");
    assert!(spread < Duration::from_millis(600), "{spread:?}");
}
