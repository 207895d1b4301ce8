//! Bad input on the listening ports of the real agents (child processes on loopback):
//! malformed HTTP, bad escapes, oversized heads and bodies, a slowloris client and
//! thousands of idle connections on the consumer-agent; garbage, truncated and
//! oversized frames on the provider-agent's agent port. Other clients must keep getting
//! right answers meanwhile. Every child is SIGKILLed and reaped on drop.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bench::load::{self, LoadOpts, Params};
use bench::procs::{free_addr, http_get_status, live_children};
use bench::provider::{self, ProviderOpts, RunningProvider, SERVICE};
use codec::agent;

/// The tests share two busy cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process, SIGKILLed and reaped when dropped.
struct Kid {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Kid {
    fn start(name: &str, program: &Path, args: &[String], dir: &Path) -> Kid {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Kid {
            name: name.to_owned(),
            child,
            log,
        }
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("{} exited ({st}):\n{}", self.name, self.tail());
        }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where cargo put the agent binaries: the test binary is in target/<profile>/deps.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("profile dir")
        .join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p agent-consumer -p agent-provider` first",
        p.display()
    );
    p
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn wait_healthy(admin: SocketAddr, kid: &mut Kid) {
    let ok = wait_until(Duration::from_secs(20), || {
        kid.assert_alive();
        http_get_status(admin, "/healthz").ok() == Some(200)
    });
    assert!(ok, "{} not healthy:\n{}", kid.name, kid.tail());
}

/// A metric's value (first sample) on an admin port.
fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Reads one HTTP answer: (status, body).
fn read_answer(s: &mut TcpStream) -> io::Result<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if let Some(body) = buf.get(head..head + len) {
                return Ok((resp.code.unwrap_or(0), body.to_vec()));
            }
        }
    }
}

/// Whether a 200 body is the right hash.
fn right(code: u16, body: &[u8], expected: i32) -> bool {
    code == 200
        && std::str::from_utf8(body)
            .ok()
            .and_then(|b| b.trim().parse::<i32>().ok())
            == Some(expected)
}

/// One race call on `s`: whether it came back 200 with the right hash.
fn call_on(s: &mut TcpStream, addr: SocketAddr, param: &str) -> io::Result<bool> {
    let (req, expected) = load::race_request(&addr.to_string(), param, None);
    s.write_all(&req)?;
    let (code, body) = read_answer(s)?;
    Ok(right(code, &body, expected))
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
    consumer: Kid,
    consumer_addr: SocketAddr,
    consumer_admin: SocketAddr,
    agent: Kid,
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
        let (agent_addr, agent_admin) = (free_addr().unwrap(), free_addr().unwrap());
        let args: Vec<String> = [
            "--listen",
            &agent_addr.to_string(),
            "--provider",
            &provider.local_addr().to_string(),
            "--service",
            SERVICE,
            "--registry",
            &registry,
            "--admin",
            &agent_admin.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut agent = Kid::start("provider-agent", &bin("provider-agent"), &args, dir.path());
        wait_healthy(agent_admin, &mut agent);
        let (consumer_addr, consumer_admin) = (free_addr().unwrap(), free_addr().unwrap());
        let args: Vec<String> = [
            "--listen",
            &consumer_addr.to_string(),
            "--registry",
            &registry,
            "--service",
            SERVICE,
            "--admin",
            &consumer_admin.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut consumer = Kid::start("consumer-agent", &bin("consumer-agent"), &args, dir.path());
        wait_healthy(consumer_admin, &mut consumer);
        let ok = wait_until(Duration::from_secs(20), || {
            consumer.assert_alive();
            TcpStream::connect_timeout(&consumer_addr, Duration::from_secs(1))
                .ok()
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
                    call_on(&mut s, consumer_addr, "hello").ok()
                })
                == Some(true)
        });
        assert!(ok, "no right answer through the mesh:\n{}", consumer.tail());
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
    assert!(right(code, &body, expected), "{code} {body:?}");
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
        right(code, &body, expected)
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
    let want = 2_000;
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
    let mut out = Vec::new();
    agent::encode_ping(&mut out, id);
    s.write_all(&out).expect("ping");
    let mut got = [0u8; agent::HEADER_LEN];
    s.read_exact(&mut got).expect("pong");
    let mut want = Vec::new();
    agent::encode_pong(&mut want, id);
    assert_eq!(&got[..], &want[..], "PONG {id}");
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
