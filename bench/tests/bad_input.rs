//! Bad input on the listening ports of the real agents (child processes on loopback):
//! malformed HTTP, bad escapes, oversized heads and bodies, a slowloris client and
//! 10,000 idle connections on the consumer-agent; garbage, truncated and
//! oversized frames on the provider-agent's agent port. Other clients must keep getting
//! right answers meanwhile. Every child is SIGKILLed and reaped on drop.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bench::harness::{self, call_on, is_right, metric, read_answer, wait_until, Bins};
use bench::load::{self, LoadOpts, Params};
use bench::procs::{self, free_addr, live_children, Proc};
use bench::provider::{self, ProviderOpts, RunningProvider, SERVICE};
use codec::agent;

/// The tests share two busy cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

/// Sends raw bytes on a fresh connection; the status answered.
fn status_of(addr: SocketAddr, raw: &[u8]) -> u16 {
    let mut s = connect(addr);
    // The server may answer (and close) before it has read everything.
    let _ = s.write_all(raw);
    match read_answer(&mut s) {
        Ok((code, _)) => code,
        Err(e) => panic!(
            "no answer to {:?}...: {e}",
            String::from_utf8_lossy(&raw[..raw.len().min(60)])
        ),
    }
}

/// A mock provider (in this process), a provider-agent and a consumer-agent.
struct Mesh {
    consumer: Proc,
    consumer_addr: SocketAddr,
    consumer_admin: SocketAddr,
    agent: Proc,
    agent_addr: SocketAddr,
    _provider: RunningProvider,
    _dir: tempfile::TempDir,
}

impl Mesh {
    fn start() -> Mesh {
        let dir = tempfile::Builder::new()
            .prefix("dubbo-mesh-bad-input")
            .tempdir()
            .expect("tempdir");
        let reg = dir.path().join("registry");
        std::fs::create_dir_all(&reg).expect("registry dir");
        let registry = format!("file://{}", reg.display());
        let provider = provider::spawn(ProviderOpts {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            latency: Duration::from_millis(5),
            threads: 400,
            ..ProviderOpts::default()
        })
        .expect("mock provider");
        let bins = Bins::for_test(env!("CARGO_BIN_EXE_bench"));
        let deadline = Duration::from_secs(20);
        let (agent_addr, agent_admin) = (free_addr().unwrap(), free_addr().unwrap());
        let args =
            harness::provider_agent_args(agent_addr, agent_admin, provider.local_addr(), &registry);
        let mut agent =
            Proc::start("provider-agent", &bins.provider, &args, dir.path()).expect("start");
        procs::wait_healthy(agent_admin, deadline, &mut agent).expect("healthy");
        let (consumer_addr, consumer_admin) = (free_addr().unwrap(), free_addr().unwrap());
        let args = harness::consumer_agent_args(consumer_addr, consumer_admin, &registry);
        let mut consumer =
            Proc::start("consumer-agent", &bins.consumer, &args, dir.path()).expect("start");
        procs::wait_healthy(consumer_admin, deadline, &mut consumer).expect("healthy");
        harness::wait_routing(consumer_addr, deadline, &mut consumer).expect("routing");
        Mesh {
            consumer,
            consumer_addr,
            consumer_admin,
            agent,
            agent_addr,
            _provider: provider,
            _dir: dir,
        }
    }

    /// A few calls on a fresh connection, all right.
    fn assert_serves(&mut self, what: &str) {
        self.consumer.assert_alive();
        self.agent.assert_alive();
        let mut s = connect(self.consumer_addr);
        for i in 0..3 {
            let ok = call_on(&mut s, self.consumer_addr, &format!("{what} {i}"));
            assert!(
                matches!(ok, Ok(true)),
                "after {what}: call {i} not answered right: {ok:?}"
            );
        }
    }
}

/// The soft limit on open files of this process (the agents inherit it).
fn fd_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn form_request(addr: SocketAddr, raw_param: &str) -> Vec<u8> {
    let body = format!(
        "interface={SERVICE}&method=hash&parameterTypesString=Ljava%2Flang%2FString%3B&parameter={raw_param}"
    );
    format!(
        "POST /invoke HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn consumer_agent_http_port_withstands_bad_clients() {
    let _serial = serial();
    let mut mesh = Mesh::start();
    let addr = mesh.consumer_addr;

    // Malformed requests: 400.
    let malformed: [&[u8]; 5] = [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n",
        b"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /invoke HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /invoke HTTP/1.1\r\nBad Header Name: 1\r\n\r\n",
    ];
    for raw in malformed {
        assert_eq!(
            status_of(addr, raw),
            400,
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
    // Invalid percent-escapes in the form body: 400.
    for bad in ["%zz", "abc%4", "%", "%G1x"] {
        assert_eq!(
            status_of(addr, &form_request(addr, bad)),
            400,
            "parameter={bad}"
        );
    }
    // A well-formed escape still works.
    let (req, expected) = load::race_request(&addr.to_string(), "a b/c%d", None);
    let mut s = connect(addr);
    s.write_all(&req).unwrap();
    let (code, body) = read_answer(&mut s).unwrap();
    assert!(is_right(code, &body, expected), "{code} {body:?}");
    // A head over --max-head (16 KiB): 431. A body over --max-body (1 MiB): 413.
    let big_head = format!(
        "POST /invoke HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    assert_eq!(status_of(addr, big_head.as_bytes()), 431);
    let big_body = format!(
        "POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\nparameter=",
        2 * 1024 * 1024
    );
    assert_eq!(status_of(addr, big_body.as_bytes()), 413);
    let mut chunked_big = b"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\n".to_vec();
    chunked_big.extend_from_slice(&[b'a'; 4096]);
    assert_eq!(
        status_of(addr, &chunked_big),
        413,
        "chunked body over the limit"
    );
    mesh.assert_serves("malformed requests");

    // Slowloris: one byte every 100 ms for 2 s, while other calls go on.
    let slow = std::thread::spawn(move || {
        let (req, expected) = load::race_request(&addr.to_string(), "slowloris", None);
        let mut s = connect(addr);
        for b in &req[..20] {
            s.write_all(&[*b]).expect("slow byte");
            std::thread::sleep(Duration::from_millis(100));
        }
        s.write_all(&req[20..]).expect("rest");
        let (code, body) = read_answer(&mut s).expect("slowloris answer");
        is_right(code, &body, expected)
    });
    let mut s = connect(addr);
    let (mut calls, mut slowest) = (0, Duration::ZERO);
    while !slow.is_finished() && calls < 10_000 {
        let t = Instant::now();
        let ok = call_on(&mut s, addr, &format!("beside slowloris {calls}"));
        assert!(
            matches!(ok, Ok(true)),
            "call {calls} beside the slowloris: {ok:?}"
        );
        slowest = slowest.max(t.elapsed());
        calls += 1;
    }
    assert!(
        slow.join().expect("slowloris thread"),
        "the slow request is answered right"
    );
    eprintln!("{calls} calls beside the slowloris, slowest {slowest:?}");
    assert!(
        calls >= 10,
        "only {calls} calls in 2 s beside the slowloris"
    );
    assert!(slowest < Duration::from_secs(1), "a call took {slowest:?}");

    // Many idle connections held open while another client gets right answers.
    let want = 10_000;
    let n = match fd_limit() {
        Some(limit) if limit < want + 300 => {
            let n = limit.saturating_sub(300).max(100);
            eprintln!("open-files limit {limit}: holding {n} idle connections instead of {want}");
            n
        }
        _ => want,
    };
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        idle.push(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("idle connect"));
    }
    let counted = wait_until(Duration::from_secs(5), || {
        metric(mesh.consumer_admin, "consumer_http_connections").unwrap_or(0.0) >= n as f64
    });
    assert!(counted, "the consumer-agent holds the {n} idle connections");
    let r = load::run(&LoadOpts {
        target: addr,
        connections: 16,
        loops: 1,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(2),
        params: Params::Utf8,
        salt: None,
        timeout: Duration::from_secs(5),
        progress: false,
    })
    .expect("load");
    eprintln!("{}", r.summary());
    assert!(
        r.stats.ok > 0 && r.stats.errors.is_empty(),
        "{:?}",
        r.stats.errors
    );
    // The idle connections still work.
    for (i, s) in idle.iter_mut().enumerate().step_by(n / 10 + 1) {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let ok = call_on(s, addr, &format!("idle {i}"));
        assert!(matches!(ok, Ok(true)), "idle connection {i}: {ok:?}");
    }
    drop(idle);
    mesh.assert_serves("idle connections");
    drop(mesh);
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}

/// Whether the server closes `s` (EOF or reset) within a few seconds.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 256];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

fn header(kind: u8, status: u8, id: u64, len: u32) -> Vec<u8> {
    let mut h = agent::MAGIC.to_vec();
    h.extend_from_slice(&[agent::VERSION, kind, status, 0]);
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

/// PING on `s`, expect the PONG with the same id.
fn ping(s: &mut TcpStream, id: u64) {
    harness::agent_ping(s, id).expect("PONG");
}

#[test]
fn provider_agent_port_closes_bad_connections_only() {
    let _serial = serial();
    let mut mesh = Mesh::start();
    let addr = mesh.agent_addr;
    let mut control = connect(addr);
    ping(&mut control, 1);

    let max = agent::MAX_BODY as u32;
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "HTTP on the agent port",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        (
            "random bytes",
            (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect(),
            false,
        ),
        (
            "bad version",
            {
                let mut h = header(4, 0, 1, 0);
                h[2] = 9;
                h
            },
            false,
        ),
        ("unknown kind", header(9, 0, 1, 0), false),
        ("oversized frame", header(2, 0, 1, max + 1), false),
        ("oversized frame, max u32", header(2, 0, 1, u32::MAX), false),
        (
            "ping with a body",
            {
                let mut h = header(4, 0, 1, 4);
                h.extend_from_slice(b"abcd");
                h
            },
            false,
        ),
        ("status on a request", header(2, 3, 1, 0), false),
        ("a RESPONSE from a consumer", header(3, 0, 1, 0), false),
        ("truncated header", header(4, 0, 1, 0)[..10].to_vec(), true),
        (
            "truncated body",
            {
                let mut h = header(2, 0, 7, 100);
                h.extend_from_slice(&[0u8; 10]);
                h
            },
            true,
        ),
        (
            "malformed request body",
            {
                let mut h = header(2, 0, 7, 3);
                h.extend_from_slice(&[1, 2, 3]);
                h
            },
            false,
        ),
    ];
    for (i, (what, bytes, half_close)) in cases.into_iter().enumerate() {
        let mut s = connect(addr);
        let _ = s.write_all(&bytes);
        if half_close {
            // A truncated frame then the end of the stream.
            let _ = s.shutdown(Shutdown::Write);
        }
        assert!(closed_by_server(&mut s), "{what}: the connection is closed");
        ping(&mut control, 100 + i as u64);
        mesh.assert_serves(what);
    }
    // A truncated frame left hanging does not hold others up either.
    let mut hanging = connect(addr);
    hanging.write_all(&header(2, 0, 9, 1000)[..]).unwrap();
    hanging.write_all(&[0u8; 100]).unwrap();
    ping(&mut control, 999);
    mesh.assert_serves("a hanging truncated frame");
    drop(hanging);
    mesh.agent.assert_alive();
    mesh.consumer.assert_alive();
    drop(mesh);
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}
