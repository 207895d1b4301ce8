//! Connection floods past the file-descriptor limit, on the real agents started with a
//! low `RLIMIT_NOFILE` (`prlimit --nofile=N:N`, util-linux): the consumer-agent's HTTP
//! port and the provider-agent's agent port. While the agent is out of descriptors it
//! must not crash, must not spin on failing accepts (its CPU time over a few seconds of
//! saturation stays small and it logs a bounded number of retries), must keep serving a
//! client connected before the flood, and must serve new connections again once the
//! flood is gone.
//!
//! And the admin ports, which Kubernetes probes: idle clients and a client sending a
//! byte every 1.5 s, held against an agent's admin port, must not keep `/healthz` from
//! answering.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bench::harness::{self, call_on, AgentAddrs, Bins};
use bench::procs::{self, live_children, open_fds, usage, Proc};
use bench::provider::{self, ProviderOpts, RunningProvider};
use test_support::openssl::s_client_exchange;
use test_support::wait::wait_until;

/// The tests share two busy cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The flooded agent's descriptor limit.
const NOFILE: u64 = 256;
/// How long the agent is held saturated while its CPU time is measured.
const SATURATED: Duration = Duration::from_secs(3);
/// CPU the saturated agent may spend in [`SATURATED`]: a busy loop would spend all of it.
const MAX_SATURATED_CPU_SECS: f64 = 0.3;

/// `prlimit --nofile=N:N -- program args...`: prlimit sets the limit and execs the
/// program, so the pid is the agent's.
fn limited(program: &Path, args: &[String]) -> Vec<String> {
    let mut v = vec![
        format!("--nofile={NOFILE}:{NOFILE}"),
        "--".into(),
        program.display().to_string(),
    ];
    v.extend_from_slice(args);
    v
}

/// A mock provider (in this process), a provider-agent and a consumer-agent, one of
/// them under the low limit.
struct Mesh {
    consumer: Proc,
    consumer_addr: SocketAddr,
    consumer_admin: SocketAddr,
    agent: Proc,
    agent_addr: SocketAddr,
    agent_admin: SocketAddr,
    _provider: RunningProvider,
    _dir: tempfile::TempDir,
}

#[derive(PartialEq)]
enum Limited {
    Consumer,
    ProviderAgent,
    Neither,
}

impl Mesh {
    fn start(which: Limited) -> Mesh {
        Mesh::start_with(which, false)
    }

    /// With `tls`, mutual TLS between the agents: certificates `provider` and `consumer`
    /// of a test CA in `<dir>/certs`.
    fn start_with(which: Limited, tls: bool) -> Mesh {
        let dir = tempfile::Builder::new()
            .prefix("dubbo-mesh-flood")
            .tempdir()
            .expect("tempdir");
        let certs = dir.path().join("certs");
        let tls_args = |name: &str| {
            if tls {
                harness::tls_args(&certs, name)
            } else {
                Vec::new()
            }
        };
        if tls {
            harness::issue_certs(&certs, &["provider".into(), "consumer".into()]).expect("certs");
        }
        let reg = dir.path().join("registry");
        let registry = format!("file://{}", reg.display());
        let bins = Bins::for_test(env!("CARGO_BIN_EXE_bench"));
        let provider = provider::spawn(ProviderOpts {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            latency: Duration::from_millis(2),
            threads: 400,
            ..ProviderOpts::default()
        })
        .expect("mock provider");
        let deadline = Duration::from_secs(20);
        let start = |name: &str, bin: &Path, args: Vec<String>, limit: bool| {
            let (program, args) = if limit {
                (Path::new("prlimit"), limited(bin, &args))
            } else {
                (bin, args)
            };
            Proc::start(name, program, &args, dir.path()).expect("start (prlimit is util-linux)")
        };
        let a = AgentAddrs::free().expect("ports");
        let mut args =
            harness::provider_agent_args(a.listen, a.admin, provider.local_addr(), &registry);
        args.extend(tls_args("provider"));
        let mut agent = start(
            "provider-agent",
            &bins.provider,
            args,
            which == Limited::ProviderAgent,
        );
        procs::wait_healthy(a.admin, deadline, &mut agent).expect("healthy");
        let c = AgentAddrs::free().expect("ports");
        let mut args = harness::consumer_agent_args(c.listen, c.admin, &registry);
        args.extend(tls_args("consumer"));
        let mut consumer = start(
            "consumer-agent",
            &bins.consumer,
            args,
            which == Limited::Consumer,
        );
        procs::wait_healthy(c.admin, deadline, &mut consumer).expect("healthy");
        harness::wait_routing(c.listen, deadline, &mut consumer).expect("routing");
        Mesh {
            consumer,
            consumer_addr: c.listen,
            consumer_admin: c.admin,
            agent,
            agent_addr: a.listen,
            agent_admin: a.admin,
            _provider: provider,
            _dir: dir,
        }
    }

    /// Both agents live, and once the mesh is gone no child is left.
    fn finish(mut self) {
        self.consumer.assert_alive();
        self.agent.assert_alive();
        drop(self);
        assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
    }
}

/// The descriptors `p` holds, once it is checked to run under the low limit.
fn limited_base_fds(p: &Proc) -> u64 {
    let pid = p.pid();
    assert_eq!(nofile(pid), Some(NOFILE), "the limit applies to the agent");
    open_fds(pid).expect("fds")
}

/// A client connection to `addr` (2 s to connect) whose reads time out after 5 s.
fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

/// The soft `RLIMIT_NOFILE` of a process, from `/proc/PID/limits`.
fn nofile(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Lines of a log mentioning failed accepts.
fn accept_failures(p: &Proc) -> usize {
    std::fs::read_to_string(&p.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("accept failed"))
        .count()
}

/// Opens connections to `addr` until `p` holds all its descriptors and `extra` more
/// are waiting in the backlog; returns them (they stay open while held).
fn flood(addr: SocketAddr, p: &mut Proc, extra: usize) -> Vec<TcpStream> {
    let pid = p.pid();
    let mut conns = Vec::new();
    let limit = NOFILE as usize + extra;
    let end = Instant::now() + Duration::from_secs(20);
    while conns.len() < limit && Instant::now() < end {
        // A full backlog drops SYNs: such a connect times out and is not kept.
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            conns.push(s);
        }
    }
    p.assert_alive();
    let full = wait_until(Duration::from_secs(10), || {
        open_fds(pid).unwrap_or(0) >= NOFILE - 1
    });
    assert!(
        full,
        "{} holds {:?} fds of {NOFILE} after {} connections",
        p.name,
        open_fds(pid),
        conns.len()
    );
    conns
}

/// One race call on `s`: the status and body when not right (for the failure message).
fn call(s: &mut TcpStream, addr: SocketAddr, param: &str) -> Result<(), String> {
    let (req, expected) = bench::load::race_request(&addr.to_string(), param, None);
    s.write_all(&req).map_err(|e| e.to_string())?;
    let (code, body) = harness::read_answer(s).map_err(|e| e.to_string())?;
    if harness::is_right(code, &body, expected) {
        Ok(())
    } else {
        Err(format!("{code} {}", String::from_utf8_lossy(&body)))
    }
}

/// Holds the agent saturated for [`SATURATED`]: its CPU time and its logged accept
/// retries stay small.
fn assert_no_busy_loop(p: &mut Proc) {
    let pid = p.pid();
    let before = usage(pid).expect("usage").cpu_secs;
    let logged = accept_failures(p);
    std::thread::sleep(SATURATED);
    let cpu = usage(pid).expect("usage").cpu_secs - before;
    let retries = accept_failures(p) - logged;
    eprintln!(
        "{}: {cpu:.2} CPU s and {retries} logged accept retries in {SATURATED:?} at the fd limit",
        p.name
    );
    // The reactor retries every 50 ms but warns at most once a second.
    assert!(
        retries as u64 <= SATURATED.as_secs() + 1,
        "{} logged {retries} accept warnings in {SATURATED:?}: not throttled",
        p.name
    );
    assert!(
        cpu <= MAX_SATURATED_CPU_SECS,
        "{} spent {cpu:.2} CPU s in {SATURATED:?} at the fd limit: a busy loop",
        p.name
    );
    // A retry every 50 ms per listener and loop: about 60 per listener in 3 s.
    assert!(
        retries < 400,
        "{}: {retries} accept retries logged in {SATURATED:?}",
        p.name
    );
    p.assert_alive();
}

/// Floods `p` at `addr` past its limit ([`flood`]): it logs its failed accepts and does
/// not busy-loop ([`assert_no_busy_loop`]). Returns the flood's connections.
fn saturate(addr: SocketAddr, p: &mut Proc) -> Vec<TcpStream> {
    let conns = flood(addr, p, 200);
    // The last descriptor may be taken a moment before the accept that fails is logged.
    let logged = wait_until(Duration::from_secs(5), || accept_failures(p) > 0);
    assert!(
        logged,
        "the {} logs its failed accepts:\n{}",
        p.name,
        p.tail()
    );
    assert_no_busy_loop(p);
    conns
}

/// Closes the flood; new connections are `served` again and the agent's descriptors go
/// back to about `base_fds`.
fn recover(p: &mut Proc, conns: Vec<TcpStream>, base_fds: u64, served: impl FnMut() -> bool) {
    drop(conns);
    assert!(
        wait_until(Duration::from_secs(10), served),
        "new connections are served after the flood:\n{}",
        p.tail()
    );
    let pid = p.pid();
    let released = wait_until(Duration::from_secs(10), || {
        open_fds(pid).unwrap_or(u64::MAX) <= base_fds + 4
    });
    assert!(
        released,
        "{}: the flood's descriptors are released: {:?} open, {base_fds} before",
        p.name,
        open_fds(pid)
    );
    p.assert_alive();
}

#[test]
fn consumer_agent_survives_a_flood_past_its_fd_limit() {
    let _serial = serial();
    let mut mesh = Mesh::start(Limited::Consumer);
    let addr = mesh.consumer_addr;
    let base_fds = limited_base_fds(&mesh.consumer);
    let mut before = connect(addr);
    assert!(matches!(call_on(&mut before, addr, "before"), Ok(true)));

    let conns = saturate(addr, &mut mesh.consumer);
    for i in 0..5 {
        let ok = call(&mut before, addr, &format!("during the flood {i}"));
        assert!(
            ok.is_ok(),
            "the client connected before the flood is served: {ok:?}"
        );
    }
    recover(&mut mesh.consumer, conns, base_fds, || {
        matches!(harness::one_call(addr, "after the flood"), Ok((200, true)))
    });
    assert!(matches!(call_on(&mut before, addr, "after"), Ok(true)));
    mesh.finish();
}

#[test]
fn provider_agent_survives_a_flood_past_its_fd_limit() {
    let _serial = serial();
    let mut mesh = Mesh::start(Limited::ProviderAgent);
    let addr = mesh.agent_addr;
    let base_fds = limited_base_fds(&mesh.agent);
    // Before the flood: an agent-protocol client, and a client of the consumer-agent
    // (whose connection to the provider-agent is already open).
    let mut control = connect(addr);
    harness::agent_ping(&mut control, 1).expect("PONG before the flood");
    let http = mesh.consumer_addr;
    let mut client = connect(http);
    assert!(matches!(call_on(&mut client, http, "before"), Ok(true)));

    let conns = saturate(addr, &mut mesh.agent);
    for i in 0..5 {
        harness::agent_ping(&mut control, 10 + i).expect("PONG during the flood");
        let ok = call(&mut client, http, &format!("during the flood {i}"));
        assert!(
            ok.is_ok(),
            "calls over the connection opened before the flood are served: {ok:?}\n{}",
            mesh.agent.tail()
        );
    }
    recover(&mut mesh.agent, conns, base_fds, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                harness::agent_ping(&mut s, 77)
            })
            .is_ok()
    });
    let mut s = connect(http);
    assert!(matches!(call_on(&mut s, http, "after"), Ok(true)));
    mesh.finish();
}

/// A PING over a new mutual-TLS connection to `addr` (openssl `s_client` with the
/// `consumer` certificate of `certs`) is answered PONG within [`TLS_PING_WITHIN`].
fn tls_ping(addr: SocketAddr, certs: &Path) -> bool {
    let mut ping = Vec::new();
    codec::agent::encode_ping(&mut ping, 7);
    let file = |name: &str| certs.join(name).display().to_string();
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["s_client", "-quiet", "-connect", &addr.to_string()])
        .args(["-CAfile", &file("ca.pem")])
        .args([
            "-cert",
            &file("consumer.pem"),
            "-key",
            &file("consumer-key.pem"),
        ]);
    let pong = |out: &[u8]| {
        matches!(
            codec::agent::decode(out),
            Ok(codec::Decoded::Complete {
                msg: codec::agent::Frame::Pong { id: 7 },
                ..
            })
        )
    };
    // Returns as soon as the PONG is read.
    pong(&s_client_exchange(&mut cmd, &ping, TLS_PING_WITHIN, pong))
}

/// How long [`tls_ping`] waits for the PONG.
const TLS_PING_WITHIN: Duration = Duration::from_secs(5);

/// The same flood on a provider-agent with mutual TLS: each flooding connection holds
/// a TLS state until its handshake times out, and none may cost the agent its loop.
#[test]
fn provider_agent_with_mtls_survives_a_flood_past_its_fd_limit() {
    let _serial = serial();
    let mut mesh = Mesh::start_with(Limited::ProviderAgent, true);
    let addr = mesh.agent_addr;
    let certs = mesh._dir.path().join("certs");
    let base_fds = limited_base_fds(&mesh.agent);
    assert!(tls_ping(addr, &certs), "PONG over TLS before the flood");
    let http = mesh.consumer_addr;
    let mut client = connect(http);
    assert!(matches!(call_on(&mut client, http, "before"), Ok(true)));

    let conns = saturate(addr, &mut mesh.agent);
    for i in 0..5 {
        let ok = call(&mut client, http, &format!("during the flood {i}"));
        assert!(
            ok.is_ok(),
            "calls over the TLS connection opened before the flood are served: {ok:?}\n{}",
            mesh.agent.tail()
        );
    }
    recover(&mut mesh.agent, conns, base_fds, || tls_ping(addr, &certs));
    let mut s = connect(http);
    assert!(matches!(call_on(&mut s, http, "after"), Ok(true)));
    mesh.finish();
}

/// Idle connections held against an admin port while `/healthz` is probed.
const IDLE_ADMIN_CLIENTS: usize = 64;
/// How often the slow admin client sends a byte of its request.
const SLOW_BYTE_EVERY: Duration = Duration::from_millis(1500);
/// Probes of `/healthz` under that pressure, each to be answered 200 within a second.
const PROBES: usize = 8;

/// Idle clients and one slow client held against an admin port for as long as this
/// lives; whichever the agent closes is opened again at once, so the pressure never
/// lets up.
struct AdminPressure {
    stop: Arc<AtomicBool>,
    idle_open: Arc<AtomicUsize>,
    slow_bytes: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

impl AdminPressure {
    fn start(admin: SocketAddr) -> AdminPressure {
        let stop = Arc::new(AtomicBool::new(false));
        let idle_open = Arc::new(AtomicUsize::new(0));
        let slow_bytes = Arc::new(AtomicUsize::new(0));
        let (s, open) = (stop.clone(), idle_open.clone());
        let idle = std::thread::spawn(move || {
            let mut conns: Vec<Option<TcpStream>> = (0..IDLE_ADMIN_CLIENTS).map(|_| None).collect();
            let mut buf = [0u8; 1024];
            while !s.load(Ordering::SeqCst) {
                for slot in conns.iter_mut() {
                    let gone = match slot {
                        Some(c) => match c.read(&mut buf) {
                            Ok(_) => true,
                            Err(e) => e.kind() != ErrorKind::WouldBlock,
                        },
                        None => true,
                    };
                    if gone {
                        *slot = TcpStream::connect_timeout(&admin, Duration::from_millis(200))
                            .ok()
                            .filter(|c| c.set_nonblocking(true).is_ok());
                    }
                }
                open.store(conns.iter().flatten().count(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (s, sent) = (stop.clone(), slow_bytes.clone());
        let slow = std::thread::spawn(move || {
            let request = b"GET /healthz HTTP/1.1\r\nHost: slow\r\n\r\n";
            'connect: while !s.load(Ordering::SeqCst) {
                let Ok(mut c) = TcpStream::connect_timeout(&admin, Duration::from_millis(200))
                else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                for b in request {
                    if c.write_all(&[*b]).is_err() {
                        continue 'connect;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                    let until = Instant::now() + SLOW_BYTE_EVERY;
                    while Instant::now() < until {
                        if s.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        });
        AdminPressure {
            stop,
            idle_open,
            slow_bytes,
            threads: vec![idle, slow],
        }
    }
}

impl Drop for AdminPressure {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// With [`IDLE_ADMIN_CLIENTS`] idle clients and a slow one on `p`'s admin port, every
/// one of [`PROBES`] probes of `/healthz` is answered 200 within a second.
fn assert_healthz_under_pressure(admin: SocketAddr, p: &mut Proc) {
    let pressure = AdminPressure::start(admin);
    let end = Instant::now() + Duration::from_secs(10);
    while pressure.idle_open.load(Ordering::SeqCst) < IDLE_ADMIN_CLIENTS
        || pressure.slow_bytes.load(Ordering::SeqCst) == 0
    {
        assert!(
            Instant::now() < end,
            "{}: the idle and slow clients could not connect to its admin port",
            p.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut failed = Vec::new();
    for i in 0..PROBES {
        let t = Instant::now();
        let status = procs::http_get_status(admin, "/healthz");
        let took = t.elapsed();
        if !matches!(status, Ok(200)) || took >= Duration::from_secs(1) {
            failed.push(format!("probe {i}: {status:?} after {took:?}"));
        }
        // Spread over a few seconds: across the slow client's bytes and the deadlines
        // of the idle ones.
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(pressure);
    assert!(
        failed.is_empty(),
        "{}: {} of {PROBES} /healthz probes failed under slow and idle admin clients: \
         {failed:?}\n{}",
        p.name,
        failed.len(),
        p.tail()
    );
    p.assert_alive();
}

#[test]
fn provider_agent_admin_answers_healthz_under_slow_and_idle_clients() {
    let _serial = serial();
    let mut mesh = Mesh::start(Limited::Neither);
    let admin = mesh.agent_admin;
    assert_healthz_under_pressure(admin, &mut mesh.agent);
    mesh.finish();
}

#[test]
fn consumer_agent_admin_answers_healthz_under_slow_and_idle_clients() {
    let _serial = serial();
    let mut mesh = Mesh::start(Limited::Neither);
    let admin = mesh.consumer_admin;
    assert_healthz_under_pressure(admin, &mut mesh.consumer);
    mesh.finish();
}
