//! Bad input on the listening ports of the real agents (child processes on loopback):
//! malformed HTTP, bad escapes, oversized heads and bodies, a slowloris client and
//! 10,000 idle connections on the consumer-agent; garbage, truncated and
//! oversized frames on the provider-agent's agent port. Other clients must keep getting
//! right answers meanwhile. Then the hardening of issue #24: floods of DEFINE frames and
//! of JSON invocations with long names leave both agents' resident sets bounded (and
//! back near their baselines once the connections close); SIGHUP stops neither agent;
//! a JSON double out of range says so. Every child is stopped and reaped on drop.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bench::harness::{self, call_on, is_right, metric, read_answer, Bins};
use bench::load::{self, LoadOpts, Params};
use bench::procs::{self, live_children, Proc};
use bench::provider::{self, ProviderOpts, RunningProvider, SERVICE};
use codec::agent;
use test_support::net::free_addr;
use test_support::wait::wait_until;

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
        protocol: bench::load::Protocol::Http,
        stagger: Duration::ZERO,
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

/// The limit the memory tests hold an agent's resident set to, in KiB.
const RSS_LIMIT_KB: u64 = 64 * 1024;

/// Current resident set of `pid`, KiB (0 if it is gone).
fn rss_kb(pid: u32) -> u64 {
    procs::usage(pid).map_or(0, |u| u.rss_kb)
}

/// Peak resident set (VmHWM) of `pid`, KiB (0 if it is gone).
fn peak_rss_kb(pid: u32) -> u64 {
    procs::usage(pid).map_or(0, |u| u.peak_rss_kb)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// While `workers` run (at most `limit`), polls the resident set of `pid` and checks
/// that the mesh keeps serving; the workers' results and the highest resident set seen.
fn watch<T>(
    mesh: &mut Mesh,
    pid: u32,
    what: &str,
    limit: Duration,
    workers: Vec<std::thread::JoinHandle<T>>,
) -> (Vec<T>, u64) {
    let end = Instant::now() + limit;
    let (mut peak, mut checks) = (rss_kb(pid), 0);
    while !workers.iter().all(std::thread::JoinHandle::is_finished) {
        assert!(
            Instant::now() < end,
            "{what}: the clients did not finish within {limit:?}"
        );
        peak = peak.max(rss_kb(pid));
        assert!(
            peak < RSS_LIMIT_KB,
            "{what}: resident set {:.1} MB",
            mb(peak)
        );
        mesh.assert_serves(what);
        checks += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let results = workers
        .into_iter()
        .map(|w| w.join().expect("client thread"))
        .collect();
    peak = peak.max(rss_kb(pid));
    eprintln!("{what}: {checks} serving checks meanwhile");
    (results, peak)
}

/// Waits (up to 5 s) for the resident set of `pid` to come down to `most_kb`: whether
/// it did, and the last value read.
fn settles(pid: u32, most_kb: u64) -> (bool, u64) {
    let mut last = rss_kb(pid);
    let back = wait_until(Duration::from_secs(5), || {
        last = rss_kb(pid);
        last <= most_kb
    });
    (back, last)
}

/// `len` bytes, unique for (`conn`, `frame`, `field`).
fn unique(conn: usize, frame: u32, field: usize, len: usize) -> String {
    let mut s = format!("c{conn}.f{frame}.{field}.");
    let pad = len - s.len();
    s.push_str(&"x".repeat(pad));
    s
}

/// One attacker on the provider-agent's agent port: a PING (the connection works),
/// then DEFINE frames with call ids 0..1500, each binding five fresh strings of the
/// given lengths (four names, then the parameter types). Returns the frames written
/// whole and whether the server closed the connection.
fn define_flood(addr: SocketAddr, conn: usize, name_len: usize, types_len: usize) -> (u32, bool) {
    let mut s = connect(addr);
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("write timeout");
    ping(&mut s, 1);
    let mut sent = 0;
    let mut frame = Vec::new();
    for id in 0..1500u32 {
        let (service, method, version, group) = (
            unique(conn, id, 0, name_len),
            unique(conn, id, 1, name_len),
            unique(conn, id, 3, name_len),
            unique(conn, id, 4, name_len),
        );
        let parameter_types = unique(conn, id, 2, types_len);
        let sig = agent::SignatureRef {
            service: &service,
            method: &method,
            parameter_types: &parameter_types,
            version: &version,
            group: &group,
        };
        frame.clear();
        agent::encode_define(&mut frame, id, sig).expect("encode DEFINE");
        // Fails once the agent has closed the connection: expected.
        if s.write_all(&frame).is_err() {
            break;
        }
        sent += 1;
    }
    (sent, closed_by_server(&mut s))
}

/// Issue #24: "A connection may define 4,096 signatures of 5 x 64 KiB strings: three
/// connections sending 1,500 DEFINEs took RSS from 70 MB to 1.45 GB, kept after they
/// closed." Now a DEFINE over the name limits, or past a table's bytes
/// ([`agent::MAX_TABLE_BYTES`]), closes its connection, and the table goes with it.
///
/// After the first round (nothing kept: each connection is closed at its first DEFINE)
/// the resident set comes back within 10% of the baseline. After a round within the
/// limits each connection filled a table (1 MiB) before it was closed; glibc keeps the
/// freed arena pages for reuse rather than returning them, so the resident set may stay
/// up to those three tables above (observed: +3.1 MB over a 10 MB baseline). A third
/// round reuses those pages: it must not add more than 10% of the baseline again, so
/// nothing is kept per attack.
#[test]
fn provider_agent_memory_stays_bounded_under_define_floods() {
    let _serial = serial();
    let mut mesh = Mesh::start();
    let addr = mesh.agent_addr;
    let pid = mesh.agent.pid();
    mesh.assert_serves("before the DEFINE floods");
    let base = rss_kb(pid);
    eprintln!("provider-agent baseline: {:.1} MB", mb(base));
    let tables_kb = 3 * agent::MAX_TABLE_BYTES as u64 / 1024;
    let rounds = [
        ("DEFINEs of 65,000-byte strings", 65_000, 65_000),
        (
            "DEFINEs at the name and types limits",
            agent::MAX_NAME_LEN,
            agent::MAX_TYPES_LEN,
        ),
        (
            "DEFINEs at the limits again",
            agent::MAX_NAME_LEN,
            agent::MAX_TYPES_LEN,
        ),
    ];
    let (mut refused, mut previous) = (0, base);
    for (round, (what, name_len, types_len)) in rounds.into_iter().enumerate() {
        let workers = (0..3)
            .map(|c| std::thread::spawn(move || define_flood(addr, c, name_len, types_len)))
            .collect();
        let (results, peak) = watch(&mut mesh, pid, what, Duration::from_secs(60), workers);
        for (c, (sent, closed)) in results.iter().enumerate() {
            // While it closes, the agent discards input for up to its linger limit:
            // writes succeed meanwhile.
            eprintln!("{what}: connection {c} wrote {sent} frames, closed by the agent: {closed}");
            assert!(
                *closed,
                "{what}: connection {c} was not closed by the agent"
            );
        }
        // The agent says why it closed each.
        refused += 3;
        let logged = wait_until(Duration::from_secs(5), || {
            log_count(&mesh.agent, "DEFINE refused") >= refused
        });
        assert!(
            logged,
            "{what}: {} \"DEFINE refused\" lines in the agent's log, want {refused}",
            log_count(&mesh.agent, "DEFINE refused")
        );
        let hwm = peak_rss_kb(pid);
        let most = match round {
            0 => base * 11 / 10,
            1 => base * 11 / 10 + tables_kb,
            _ => (base * 11 / 10 + tables_kb).min(previous + base / 10),
        };
        let rss = Rss {
            base,
            peak,
            hwm,
            previous,
        };
        previous = rss.check("provider-agent", what, pid, most);
        mesh.assert_serves(what);
    }
    drop(mesh);
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}

fn log_has(p: &Proc, text: &str) -> bool {
    log_count(p, text) > 0
}

/// How many lines of `p`'s log hold `text`.
fn log_count(p: &Proc, text: &str) -> usize {
    std::fs::read_to_string(&p.log).map_or(0, |l| l.lines().filter(|l| l.contains(text)).count())
}

/// A JSON invocation to the consumer-agent at `addr`.
fn json_request(addr: SocketAddr, body: &str) -> Vec<u8> {
    format!(
        "POST /invoke HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A JSON invocation whose interface, method, version and group are fresh strings of
/// `len` bytes.
fn named_invocation(addr: SocketAddr, conn: usize, i: u32, len: usize) -> Vec<u8> {
    let body = format!(
        r#"{{"interface":"{}","method":"{}","version":"{}","group":"{}","parameterTypes":[],"arguments":[]}}"#,
        unique(conn, i, 0, len),
        unique(conn, i, 1, len),
        unique(conn, i, 3, len),
        unique(conn, i, 4, len),
    );
    json_request(addr, &body)
}

/// `count` invocations named with fresh `len`-byte strings on one keep-alive connection;
/// the answers' statuses and the first body of each status.
fn named_calls(addr: SocketAddr, conn: usize, count: u32, len: usize) -> Vec<(u16, u32, String)> {
    let mut s = connect(addr);
    let mut seen: Vec<(u16, u32, String)> = Vec::new();
    for i in 0..count {
        s.write_all(&named_invocation(addr, conn, i, len))
            .unwrap_or_else(|e| panic!("connection {conn}, request {i}: {e}"));
        let (code, body) = read_answer(&mut s)
            .unwrap_or_else(|e| panic!("connection {conn}, request {i}: no answer: {e}"));
        match seen.iter_mut().find(|(c, _, _)| *c == code) {
            Some((_, n, _)) => *n += 1,
            None => seen.push((code, 1, String::from_utf8_lossy(&body).into_owned())),
        }
    }
    seen
}

/// Issue #24: "JSON invocations whose interface, method, version and group are unique
/// 65,000-character strings: 1,000 requests took RSS from 4.5 MB to 260 MB, 4,096 to
/// 1.05 GB, never returned". Now such names are answered 400 naming the limit, and
/// names within the limit fill a call table bounded in bytes.
///
/// Once the connections close, the resident set comes back within 10% of the baseline
/// plus the request bodies the connections held at once (4 x 260 KB): glibc keeps those
/// freed buffers for reuse (observed: 0.7 to 1.3 MB over a 10.1 to 10.3 MB baseline,
/// up to 12.7%). A second round of the same reuses them: it must not add 10% of the baseline
/// again. Names just under the limit are kept, in a table of at most
/// [`agent::MAX_TABLE_BYTES`] (the consumer-agent runs one loop here, its default).
#[test]
fn consumer_agent_memory_stays_bounded_under_long_names() {
    let _serial = serial();
    let mut mesh = Mesh::start();
    let addr = mesh.consumer_addr;
    let pid = mesh.consumer.pid();
    mesh.assert_serves("before the long names");
    let base = rss_kb(pid);
    eprintln!("consumer-agent baseline: {:.1} MB", mb(base));
    let conns = 4;
    let per_conn = 4096 / conns as u32;
    let bodies_kb = (conns * named_invocation(addr, 0, 0, 65_000).len() / 1024) as u64;
    let table_kb = agent::MAX_TABLE_BYTES as u64 / 1024;
    let limit_text = agent::MAX_NAME_LEN.to_string();
    let rounds = [
        ("65,000-byte names", 65_000, 400),
        ("65,000-byte names again", 65_000, 400),
        ("names just under 1 KiB", agent::MAX_NAME_LEN - 24, 503),
    ];
    let mut previous = base;
    for (round, (what, len, want)) in rounds.into_iter().enumerate() {
        let t = Instant::now();
        let workers = (0..conns)
            .map(|c| std::thread::spawn(move || named_calls(addr, c, per_conn, len)))
            .collect();
        let (results, peak) = watch(&mut mesh, pid, what, Duration::from_secs(240), workers);
        let elapsed = t.elapsed();
        let hwm = peak_rss_kb(pid);
        for seen in &results {
            for (code, n, body) in seen {
                assert_eq!(
                    *code,
                    want,
                    "{what}: {n} answers {code}, e.g. {:?}",
                    &body[..body.len().min(300)]
                );
                if *code == 400 {
                    assert!(
                        body.contains(&limit_text),
                        "{what}: the 400 does not name the limit: {body:?}"
                    );
                }
            }
        }
        let answered: u32 = results.iter().flatten().map(|(_, n, _)| n).sum();
        assert_eq!(answered, 4096, "{what}: every request answered");
        let (_, _, sample) = &results[0][0];
        eprintln!(
            "{what}: 4,096 answers {want} in {elapsed:?}, e.g. {:?}",
            &sample[..sample.len().min(200)]
        );
        let most = match round {
            0 => base * 11 / 10 + bodies_kb,
            1 => (base * 11 / 10 + bodies_kb).min(previous + base / 10),
            _ => base * 11 / 10 + bodies_kb + table_kb,
        };
        let rss = Rss {
            base,
            peak,
            hwm,
            previous,
        };
        previous = rss.check("consumer-agent", what, pid, most);
        mesh.assert_serves(what);
    }
    drop(mesh);
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}

/// What an attack round left of an agent's memory, in KiB.
struct Rss {
    base: u64,
    peak: u64,
    hwm: u64,
    previous: u64,
}

impl Rss {
    /// Asserts the round stayed below [`RSS_LIMIT_KB`] and that the RSS of `who`
    /// (`pid`) settles at `most` KiB at most once the attack's connections closed;
    /// returns where it settled.
    fn check(&self, who: &str, what: &str, pid: u32, most: u64) -> u64 {
        let (back, after) = settles(pid, most);
        eprintln!(
            "{what}: {who} RSS baseline {:.1} MB, highest seen {:.1} MB, VmHWM {:.1} MB, after {:.1} MB (at most {:.1} MB)",
            mb(self.base),
            mb(self.peak),
            mb(self.hwm),
            mb(after),
            mb(most)
        );
        assert!(
            self.hwm < RSS_LIMIT_KB,
            "{what}: VmHWM {:.1} MB",
            mb(self.hwm)
        );
        assert!(
            back,
            "{what}: RSS {:.1} MB once the connections closed, over {:.1} MB (baseline {:.1} MB, after the previous round {:.1} MB)",
            mb(after),
            mb(most),
            mb(self.base),
            mb(self.previous)
        );
        after
    }
}

/// Sends `sig` (a name for kill(1): "HUP", "TERM") to `pid`.
fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(st.success(), "kill -{sig} {pid}: {st}");
}

/// Issue #24: "SIGHUP kills both agents at once, without draining or deregistering".
/// Now both ignore it (and log that), and SIGTERM still stops them.
#[test]
fn sighup_leaves_both_agents_serving() {
    let _serial = serial();
    let mut mesh = Mesh::start();
    let addr = mesh.consumer_addr;
    let stop = Arc::new(AtomicBool::new(false));
    let right = Arc::new(AtomicU32::new(0));
    let load = {
        let (stop, right) = (stop.clone(), right.clone());
        std::thread::spawn(move || {
            let mut s = connect(addr);
            let mut wrong = Vec::new();
            let mut i = 0u32;
            while !stop.load(Relaxed) && i < 100_000 {
                i += 1;
                match call_on(&mut s, addr, &format!("around SIGHUP {i}")) {
                    Ok(true) => {
                        right.fetch_add(1, Relaxed);
                    }
                    other => {
                        wrong.push(format!("call {i}: {other:?}"));
                        if wrong.len() >= 5 {
                            break;
                        }
                        s = connect(addr);
                    }
                }
            }
            wrong
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || right.load(Relaxed) >= 10),
        "the load started"
    );
    signal(mesh.agent.pid(), "HUP");
    signal(mesh.consumer.pid(), "HUP");
    // Each logs the signal it ignores; one killed by it logs nothing and exits.
    for p in [&mut mesh.agent, &mut mesh.consumer] {
        let handled = wait_until(Duration::from_secs(5), || {
            log_has(p, "SIGHUP") || p.check_alive().is_err()
        });
        p.assert_alive();
        assert!(handled, "{} did not log the SIGHUP", p.name);
    }
    mesh.assert_serves("SIGHUP");
    // Some more calls after both signals were handled.
    let after = right.load(Relaxed) + 10;
    assert!(
        wait_until(Duration::from_secs(5), || right.load(Relaxed) >= after
            || load.is_finished()),
        "calls go on after the SIGHUPs"
    );
    stop.store(true, Relaxed);
    let wrong = load.join().expect("load thread");
    assert!(
        wrong.is_empty(),
        "calls around the SIGHUPs failed: {wrong:?}"
    );
    eprintln!("{} right calls around the SIGHUPs", right.load(Relaxed));
    mesh.assert_serves("after the load");
    // SIGTERM still stops both, within the grace (not killed).
    let grace = Duration::from_secs(10);
    for p in [&mut mesh.consumer, &mut mesh.agent] {
        let t = Instant::now();
        p.stop(grace);
        let took = t.elapsed();
        eprintln!("{} stopped by SIGTERM in {took:?}", p.name);
        assert!(took < grace, "{} ignored SIGTERM for {took:?}", p.name);
        assert!(
            log_has(p, "signal 15"),
            "{} did not log the SIGTERM: {}",
            p.name,
            p.tail()
        );
    }
    drop(mesh);
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}

/// Issue #24: a JSON double of 1e999999 "is refused with 'needs a number, got a
/// number'; say it is out of range".
#[test]
fn json_double_out_of_range_says_so() {
    let _serial = serial();
    let mut mesh = Mesh::start();
    let addr = mesh.consumer_addr;
    let body = format!(
        r#"{{"interface":"{SERVICE}","method":"hash","parameterTypes":["double"],"arguments":[1e999999]}}"#
    );
    let mut s = connect(addr);
    s.write_all(&json_request(addr, &body)).unwrap();
    let (code, answer) = read_answer(&mut s).expect("an answer");
    let answer = String::from_utf8_lossy(&answer);
    eprintln!("1e999999 as a double: {code} {answer}");
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("out of range"), "{answer}");
    mesh.assert_serves("a double out of range");
    drop(mesh);
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}
