//! Faults under load, with the real agents as child processes on loopback: a
//! provider-agent killed and restarted, a mock provider killed and restarted, a provider
//! that never answers, a provider answering garbage, etcd stopped and restarted. The checking load generator
//! (`bench::load`) verifies every answer it gets (Java `hashCode` of the parameter);
//! errors must be of the expected HTTP statuses and bounded, and the consumer-agent must
//! survive everything. Every child is SIGKILLed and reaped on drop.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bench::harness::{self, metric, metric_or_zero, one_call, AgentAddrs, Bins};
use bench::load::{self, LoadOpts, LoadReport, Params};
use bench::procs::{self, live_children, Proc};
use bench::provider::{self, ProviderOpts, SERVICE};
use codec::dubbo;
use test_support::etcd::Etcd;
use test_support::net::free_addr;
use test_support::wait::wait_until;

/// The tests share two busy cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A whole mesh: a file registry in a temp dir, provider-agents, one consumer-agent.
struct Mesh {
    bins: Bins,
    dir: tempfile::TempDir,
    registry: String,
    reg_dir: PathBuf,
    /// Certificates of mutual TLS between the agents, when on.
    certs: Option<PathBuf>,
}

impl Mesh {
    /// The same mesh with mutual TLS between the agents: a test CA, a `provider`
    /// certificate for every provider-agent and a `consumer` one.
    fn with_tls() -> Mesh {
        let mut mesh = Mesh::new();
        let certs = mesh.dir.path().join("certs");
        harness::issue_certs(&certs, &["provider".into(), "consumer".into()]).expect("certs");
        mesh.certs = Some(certs);
        mesh
    }

    /// The TLS flags of `name`'s certificate, if TLS is on.
    fn tls_args(&self, name: &str) -> Vec<String> {
        self.certs
            .as_deref()
            .map_or_else(Vec::new, |dir| harness::tls_args(dir, name))
    }

    fn new() -> Mesh {
        let dir = tempfile::Builder::new()
            .prefix("dubbo-mesh-faults")
            .tempdir()
            .expect("tempdir");
        let reg_dir = dir.path().join("registry");
        let registry = format!("file://{}", reg_dir.display());
        Mesh {
            bins: Bins::for_test(env!("CARGO_BIN_EXE_bench")),
            dir,
            registry,
            reg_dir,
            certs: None,
        }
    }

    fn logs(&self) -> &Path {
        self.dir.path()
    }

    /// `bench provider` as a child (so it can be killed -9).
    fn provider_proc(&self, name: &str, addr: SocketAddr, latency_ms: u64) -> Proc {
        let args = harness::provider_args(addr, latency_ms, 400);
        let mut p = Proc::start(name, &self.bins.bench, &args, self.logs()).expect("start");
        procs::wait_port(addr, Duration::from_secs(20), &mut p).expect("provider listening");
        p
    }

    fn provider_agent(&self, name: &str, a: AgentAddrs, provider: SocketAddr) -> Proc {
        let mut args = harness::provider_agent_args(a.listen, a.admin, provider, &self.registry);
        args.extend(["--max-inflight".into(), "400".into()]);
        args.extend(self.tls_args("provider"));
        let mut p = Proc::start(name, &self.bins.provider, &args, self.logs()).expect("start");
        procs::wait_healthy(a.admin, Duration::from_secs(20), &mut p).expect("healthy");
        p
    }

    fn consumer(&self, listen: SocketAddr, admin: SocketAddr, timeout_ms: u64, lb: &str) -> Proc {
        let mut args = harness::consumer_agent_args(listen, admin, &self.registry);
        args.extend([
            "--lb".into(),
            lb.into(),
            "--timeout-ms".into(),
            timeout_ms.to_string(),
        ]);
        args.extend(self.tls_args("consumer"));
        let deadline = Duration::from_secs(20);
        let mut p =
            Proc::start("consumer-agent", &self.bins.consumer, &args, self.logs()).expect("start");
        procs::wait_healthy(admin, deadline, &mut p).expect("healthy");
        harness::wait_routing(listen, deadline, &mut p).expect("routing");
        p
    }

    /// Whether `addr` is registered (file registry: `<dir>/<service>/<addr>.json`).
    fn registered(&self, addr: SocketAddr) -> bool {
        self.reg_dir
            .join(SERVICE)
            .join(format!("{addr}.json"))
            .exists()
    }

    /// The kill-under-load set-up: `bench provider` processes `provider-1` and
    /// `provider-2` (10 ms each) with their addresses, `provider-agent-1` and `-2` in
    /// front of them and a consumer-agent (2 s timeout, adaptive).
    fn two_of_each(&self) -> ([(SocketAddr, Proc); 2], Agents) {
        let (p1, p2) = (free_addr().unwrap(), free_addr().unwrap());
        let prov1 = self.provider_proc("provider-1", p1, 10);
        let prov2 = self.provider_proc("provider-2", p2, 10);
        let first = ("provider-agent-1", p1);
        let second = ("provider-agent-2", p2);
        let agents = self.agents(first, second, 2000, "adaptive");
        ([(p1, prov1), (p2, prov2)], agents)
    }

    /// Two provider-agents, each a name and the provider it stands in front of, and a
    /// consumer-agent before them (`timeout_ms`, load balancer `lb`).
    fn agents(
        &self,
        (name1, p1): (&str, SocketAddr),
        (name2, p2): (&str, SocketAddr),
        timeout_ms: u64,
        lb: &str,
    ) -> Agents {
        let (a1, a2) = (agent_addrs(), agent_addrs());
        let agent1 = self.provider_agent(name1, a1, p1);
        let agent2 = self.provider_agent(name2, a2, p2);
        let (c, c_admin) = (free_addr().unwrap(), free_addr().unwrap());
        let consumer = self.consumer(c, c_admin, timeout_ms, lb);
        Agents {
            a1,
            a2,
            agent1,
            agent2,
            c,
            c_admin,
            consumer,
        }
    }
}

/// The agents of a [`Mesh`]: two provider-agents and the consumer-agent (HTTP port `c`).
struct Agents {
    a1: AgentAddrs,
    a2: AgentAddrs,
    agent1: Proc,
    agent2: Proc,
    c: SocketAddr,
    c_admin: SocketAddr,
    consumer: Proc,
}

impl Agents {
    /// The consumer-agent and both provider-agents live.
    fn assert_alive(&mut self) {
        self.consumer.assert_alive();
        self.agent1.assert_alive();
        self.agent2.assert_alive();
    }
}

fn agent_addrs() -> AgentAddrs {
    AgentAddrs::free().expect("ports")
}

fn start_load(target: SocketAddr, connections: usize, secs: f64) -> JoinHandle<LoadReport> {
    let opts = LoadOpts {
        target,
        connections,
        loops: 1,
        warmup: Duration::ZERO,
        duration: Duration::from_secs_f64(secs),
        params: Params::Ascii,
        salt: None,
        timeout: Duration::from_secs(8),
        progress: false,
        protocol: bench::load::Protocol::Http,
        stagger: Duration::ZERO,
    };
    std::thread::spawn(move || load::run(&opts).expect("load run"))
}

/// Starts the load on the consumer-agent (`conns` connections for `secs`) and asserts
/// (`what`) that both provider-agents count `counter` within 5 s. Returns the run as
/// [`end_of_run`] takes it.
fn load_on_both(
    ag: &Agents,
    conns: usize,
    secs: f64,
    counter: &str,
    what: &str,
) -> (JoinHandle<LoadReport>, Instant, f64) {
    let started = Instant::now();
    let load = start_load(ag.c, conns, secs);
    let both = wait_until(Duration::from_secs(5), || {
        metric_or_zero(ag.a1.admin, counter) > 0.0 && metric_or_zero(ag.a2.admin, counter) > 0.0
    });
    assert!(both, "{what}");
    (load, started, secs)
}

/// No wrong answers, errors only of the given kinds and at most `max_errors`, some right.
fn check_report(r: &LoadReport, allowed: &[&str], max_errors: u64) {
    eprintln!("{}", r.summary());
    assert!(
        r.stats.ok > 0,
        "no right answer at all: {:?}",
        r.stats.errors
    );
    let bad: BTreeMap<&String, &u64> = r
        .stats
        .errors
        .iter()
        .filter(|(k, _)| !allowed.contains(&k.as_str()))
        .collect();
    assert!(
        bad.is_empty(),
        "unexpected errors {bad:?} (allowed {allowed:?})"
    );
    assert!(
        r.stats.error_count() <= max_errors,
        "{} errors, more than {max_errors}: {:?}",
        r.stats.error_count(),
        r.stats.errors
    );
}

/// Ends a fault run: the checks were made while the load ran (a run is its thread, its
/// start and its length in seconds), it got errors only of the `allowed` kinds and at
/// most one per connection, all the agents live and the consumer-agent still answers
/// right.
fn end_of_run(
    (load, started, load_secs): (JoinHandle<LoadReport>, Instant, f64),
    allowed: &[&str],
    conns: usize,
    ag: &mut Agents,
) {
    assert!(
        started.elapsed().as_secs_f64() < load_secs,
        "the checks were made while the load ran"
    );
    let r = load.join().expect("load thread");
    check_report(&r, allowed, conns as u64);
    ag.assert_alive();
    assert_eq!(one_call(ag.c, "still there").expect("answers"), (200, true));
}

const GATEWAY_ERRORS: [&str; 3] = ["status_502", "status_503", "status_504"];

#[test]
fn provider_agent_killed_and_restarted_under_load() {
    provider_agent_killed_and_restarted(Mesh::new(), |_| ());
}

/// The same with mutual TLS between the agents: the kill cuts TLS sessions mid-call,
/// and the restarted agent is trusted again with new handshakes.
#[test]
fn provider_agent_killed_and_restarted_under_load_with_mtls() {
    provider_agent_killed_and_restarted(Mesh::with_tls(), |ag| {
        for admin in [ag.c_admin, ag.a1.admin, ag.a2.admin] {
            let expiry = metric(admin, "consumer_tls_cert_expiry_timestamp_seconds")
                .or_else(|| metric(admin, "provider_agent_tls_cert_expiry_timestamp_seconds"));
            assert!(expiry.unwrap_or(0.0) > 0.0, "TLS on at {admin}");
        }
        let mismatches = metric_or_zero(ag.c_admin, "consumer_tls_identity_mismatch_total");
        assert_eq!(mismatches, 0.0, "every provider-agent proved its identity");
    });
}

/// Kills provider-agent 1 under load and restarts it; `check` runs on the agents at
/// the end, while they are up.
fn provider_agent_killed_and_restarted(mesh: Mesh, check: impl Fn(&Agents)) {
    let _serial = serial();
    let ([(p1, _prov1), (_, _prov2)], mut ag) = mesh.two_of_each();
    let (a1, a2) = (ag.a1, ag.a2);

    let conns = 256;
    let (load, started, load_secs) = load_on_both(
        &ag,
        conns,
        14.0,
        "provider_agent_requests_total",
        "both provider-agents get traffic before the kill",
    );
    std::thread::sleep(Duration::from_millis(500));

    ag.agent1.kill9();
    let killed = Instant::now();
    let base = metric_or_zero(a2.admin, "provider_agent_responses_ok_total");
    let moved = wait_until(Duration::from_secs(1), || {
        metric_or_zero(a2.admin, "provider_agent_responses_ok_total") > base
    });
    assert!(
        moved,
        "traffic continues on the other provider-agent within 1 s of the kill"
    );
    eprintln!("survivor answered again after {:?}", killed.elapsed());
    let gone = wait_until(Duration::from_secs(3), || !mesh.registered(a1.listen));
    assert!(gone, "the killed agent's registry entry is dropped");
    std::thread::sleep(Duration::from_millis(500));

    // Restart on the same ports: traffic again within 2 s of being up.
    ag.agent1 = mesh.provider_agent("provider-agent-1-restarted", a1, p1);
    let up = Instant::now();
    let back = wait_until(Duration::from_secs(2), || {
        metric_or_zero(a1.admin, "provider_agent_responses_ok_total") > 0.0
    });
    let back_after = killed.elapsed();
    assert!(
        back,
        "the restarted provider-agent gets traffic within 2 s:\n{}",
        ag.agent1.tail()
    );
    eprintln!(
        "restarted agent answering {:?} after it was up",
        up.elapsed()
    );
    assert!(
        started.elapsed().as_secs_f64() < load_secs,
        "the restart was checked while the load ran"
    );
    eprintln!("restarted agent answering {back_after:?} after the kill");

    let r = load.join().expect("load thread");
    // Only calls in flight on the killed agent may fail: at most one per connection.
    check_report(&r, &GATEWAY_ERRORS, conns as u64);
    ag.assert_alive();
    assert_eq!(
        one_call(ag.c, "still there").expect("consumer-agent answers"),
        (200, true)
    );
    check(&ag);
    drop((ag, _prov1, _prov2));
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}

#[test]
fn provider_killed_and_restarted_under_load() {
    let _serial = serial();
    let mesh = Mesh::new();
    let ([(p1, mut prov1), (_, _prov2)], mut ag) = mesh.two_of_each();
    let (a1, a2) = (ag.a1, ag.a2);
    assert!(mesh.registered(a1.listen) && mesh.registered(a2.listen));

    let conns = 256;
    let run = load_on_both(
        &ag,
        conns,
        14.0,
        "provider_agent_responses_ok_total",
        "both providers get traffic before the kill",
    );
    std::thread::sleep(Duration::from_millis(500));

    prov1.kill9();
    let base = metric_or_zero(a2.admin, "provider_agent_responses_ok_total");
    let gone = wait_until(Duration::from_secs(3), || !mesh.registered(a1.listen));
    assert!(
        gone,
        "the provider-agent deregisters when its provider dies:\n{}",
        ag.agent1.tail()
    );
    // Calls in flight at the provider fail at the agent as PROVIDER_ERROR: the provider
    // may have run them, so they are not retried elsewhere (as UNAVAILABLE would be).
    let failed = wait_until(Duration::from_secs(4), || {
        metric(
            a1.admin,
            "provider_agent_errors_total{kind=\"provider_error\"}",
        )
        .unwrap_or(0.0)
            > 0.0
    });
    assert!(
        failed,
        "calls in flight are answered PROVIDER_ERROR ({:?} errors of any kind):\n{}",
        metric(a1.admin, "provider_agent_errors_total"),
        ag.agent1.tail()
    );
    let moved = wait_until(Duration::from_secs(1), || {
        metric_or_zero(a2.admin, "provider_agent_responses_ok_total") > base
    });
    assert!(moved, "traffic goes on through the other provider");
    std::thread::sleep(Duration::from_millis(500));
    ag.agent1.assert_alive();

    let before = metric_or_zero(a1.admin, "provider_agent_responses_ok_total");
    let _prov1 = mesh.provider_proc("provider-1-restarted", p1, 10);
    let up = Instant::now();
    let traffic = wait_until(Duration::from_secs(2), || {
        metric_or_zero(a1.admin, "provider_agent_responses_ok_total") > before
    });
    assert!(
        traffic,
        "the provider gets traffic within 2 s of its return:\n{}",
        ag.agent1.tail()
    );
    eprintln!(
        "restarted provider answering {:?} after it was up",
        up.elapsed()
    );
    assert!(mesh.registered(a1.listen), "registered again");
    end_of_run(run, &GATEWAY_ERRORS, conns, &mut ag);
    drop((ag, _prov1, _prov2, prov1));
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}

/// How a [`FakeProvider`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fake {
    /// Reads and discards everything.
    Silent,
    /// Answers each read with bytes that are not Dubbo.
    Garbage,
    /// Answers each request at once with Dubbo status SERVER_ERROR (and heartbeats as
    /// Dubbo does): a provider failing fast.
    Failing,
}

/// A fake provider on its own threads: accepts, then answers as its [`Fake`] says.
struct FakeProvider {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    closed_by_peer: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl FakeProvider {
    fn start(fake: Fake) -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let closed_by_peer = Arc::new(AtomicU64::new(0));
        let (s, a, c) = (stop.clone(), accepted.clone(), closed_by_peer.clone());
        let thread = std::thread::spawn(move || {
            let mut workers = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        let (s, c) = (s.clone(), c.clone());
                        workers.push(std::thread::spawn(move || serve(conn, fake, &s, &c)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        FakeProvider {
            addr,
            stop,
            accepted,
            closed_by_peer,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, fake: Fake, stop: &AtomicBool, closed: &AtomicU64) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 4096];
    let mut input = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => {
                closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(n) => match fake {
                Fake::Silent => {}
                Fake::Garbage => {
                    let _ = conn.write_all(b"garbage, not dubbo: \x00\x01\x02\xff\xfe\r\n");
                }
                Fake::Failing => {
                    input.extend_from_slice(&buf[..n]);
                    let _ = conn.write_all(&fail_all(&mut input));
                }
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Answers every whole Dubbo request in `input` with SERVER_ERROR (heartbeats with
/// their reply), consuming them.
fn fail_all(input: &mut Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Ok(codec::Decoded::Complete { msg, consumed }) = dubbo::decode_frame(&input[pos..]) {
        pos += consumed;
        if msg.is_event() {
            dubbo::encode_heartbeat_reply(&mut out, msg.id());
        } else if msg.is_two_way() {
            let reply = dubbo::Reply::Error("java.lang.IllegalStateException: broken");
            dubbo::encode_response(
                &mut out,
                msg.id(),
                dubbo::Serialization::Hessian2,
                dubbo::status::SERVER_ERROR,
                &reply,
                &[],
            )
            .expect("encode");
        }
    }
    input.drain(..pos);
    out
}

/// A quick in-process mock provider beside a faulty one.
fn good_provider() -> provider::RunningProvider {
    provider::spawn(ProviderOpts {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        latency: Duration::from_millis(5),
        threads: 400,
        ..ProviderOpts::default()
    })
    .expect("mock provider")
}

#[test]
fn provider_that_never_answers_times_out_with_504() {
    let _serial = serial();
    let mesh = Mesh::new();
    let silent = FakeProvider::start(Fake::Silent);
    let good = good_provider();
    let timeout_ms = 500;
    let silent_agent = ("provider-agent-silent", silent.addr);
    let good_agent = ("provider-agent-good", good.local_addr());
    let mut ag = mesh.agents(silent_agent, good_agent, timeout_ms, "wrr");
    let (a1, c) = (ag.a1, ag.c);

    // Calls one by one: each is right, or a 504 within the timeout (plus slack for a
    // debug build on busy cores).
    let (mut ok, mut timeouts) = (0, 0);
    for i in 0..12 {
        let t = Instant::now();
        let (code, right) = one_call(c, &format!("call {i}")).expect("an answer");
        let took = t.elapsed();
        match code {
            200 => {
                assert!(right, "call {i}: a wrong answer");
                ok += 1;
            }
            504 => {
                assert!(
                    took >= Duration::from_millis(timeout_ms - 50)
                        && took <= Duration::from_millis(timeout_ms + 1000),
                    "call {i}: 504 after {took:?}, timeout {timeout_ms} ms"
                );
                timeouts += 1;
            }
            other => panic!("call {i}: status {other}"),
        }
    }
    eprintln!("sequential: {ok} right, {timeouts} timeouts");
    assert!(ok > 0, "the good provider answers");
    assert!(timeouts > 0, "the silent provider's calls time out");
    assert!(silent.accepted.load(Ordering::Relaxed) > 0);

    let r = start_load(c, 64, 3.0).join().expect("load thread");
    check_report(&r, &["status_504"], u64::MAX);
    // The silent provider's agent times its calls out too and holds none of them.
    assert!(
        metric_or_zero(a1.admin, "provider_agent_errors_total{kind=\"timeout\"}") > 0.0,
        "the provider-agent answers TIMEOUT for calls the provider never answers"
    );
    let drained = wait_until(Duration::from_secs(3), || {
        metric(a1.admin, "provider_agent_inflight") == Some(0.0)
    });
    assert!(
        drained,
        "no call left in flight at the silent provider's agent"
    );
    ag.assert_alive();
    good.stop();
    drop(ag);
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}

#[test]
fn provider_answering_garbage_is_cut_off() {
    let _serial = serial();
    let mesh = Mesh::new();
    let junk = FakeProvider::start(Fake::Garbage);
    let good = good_provider();
    let junk_agent = ("provider-agent-garbage", junk.addr);
    let good_agent = ("provider-agent-good", good.local_addr());
    let mut ag = mesh.agents(junk_agent, good_agent, 2000, "wrr");
    let (a1, c) = (ag.a1, ag.c);

    let r = start_load(c, 64, 4.0).join().expect("load thread");
    check_report(&r, &["status_502", "status_503"], u64::MAX);
    assert!(
        junk.closed_by_peer.load(Ordering::Relaxed) > 0,
        "the provider-agent closed the connection that answered garbage ({} accepted):\n{}",
        junk.accepted.load(Ordering::Relaxed),
        ag.agent1.tail()
    );
    ag.assert_alive();
    let sent = metric(a1.admin, "provider_agent_requests_total");
    assert!(
        sent.is_some_and(|n| n > 0.0),
        "the garbage provider's agent got calls ({sent:?}) and still serves its admin port"
    );
    let right = (0..10)
        .filter(|i| matches!(one_call(c, &format!("after {i}")), Ok((200, true))))
        .count();
    assert!(right > 0, "the good provider keeps answering");
    good.stop();
    drop(ag);
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}

/// Adaptive balancing beside a provider that fails every call at once: errors are not
/// capacity, so the failing one gets a few probing calls, not the most (it took 56-62%
/// of the calls when fast errors counted as fast answers).
#[test]
fn a_provider_failing_fast_gets_little_traffic() {
    let _serial = serial();
    let mesh = Mesh::new();
    let failing = FakeProvider::start(Fake::Failing);
    let good = provider::spawn(ProviderOpts {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        latency: Duration::from_millis(10),
        threads: 400,
        ..ProviderOpts::default()
    })
    .expect("mock provider");
    let failing_agent = ("provider-agent-failing", failing.addr);
    let good_agent = ("provider-agent-good", good.local_addr());
    let mut ag = mesh.agents(failing_agent, good_agent, 2000, "adaptive");
    let r = start_load(ag.c, 64, 4.0).join().expect("load thread");
    check_report(&r, &["status_502"], u64::MAX);
    let failed = metric_or_zero(ag.a1.admin, "provider_agent_requests_total");
    let served = metric_or_zero(ag.a2.admin, "provider_agent_requests_total");
    eprintln!("failing provider: {failed} calls, good provider: {served}");
    assert!(failed > 0.0, "the failing provider is probed now and then");
    assert!(
        failed / (failed + served) < 0.02,
        "the failing provider took {failed} of {} calls",
        failed + served
    );
    ag.assert_alive();
    good.stop();
    drop(ag);
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}

/// A listener that answers anything with an HTTP 400 and closes: what a consumer-agent
/// finds at a registry entry that names some other service's port. Counts connections.
struct Impostor {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
}

impl Impostor {
    fn start() -> Impostor {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::Relaxed);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = conn.read(&mut [0u8; 1024]);
                let _ = conn.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Impostor { addr, accepted }
    }
}

/// Registry entries naming ports that are not provider-agents (the consumer-agent's
/// own HTTP port, another service's): they take no call, and their reconnects back off
/// (they were retried ten times a second, and 2.6% of calls failed with 503).
#[test]
fn registered_ports_that_are_not_provider_agents_take_no_calls() {
    let _serial = serial();
    let mesh = Mesh::new();
    let good = good_provider();
    let a = agent_addrs();
    let mut agent = mesh.provider_agent("provider-agent", a, good.local_addr());
    let (c, c_admin) = (free_addr().unwrap(), free_addr().unwrap());
    let mut consumer = mesh.consumer(c, c_admin, 2000, "adaptive");
    let impostor = Impostor::start();
    let registry = registry::open(Some(&mesh.registry)).expect("registry");
    let _impostor_entry = registry
        .register(registry::Instance::new(SERVICE, impostor.addr.to_string()))
        .expect("register");
    let _own_port_entry = registry
        .register(registry::Instance::new(SERVICE, c.to_string()))
        .expect("register");
    let found = wait_until(Duration::from_secs(5), || {
        impostor.accepted.load(Ordering::Relaxed) > 0
    });
    assert!(found, "the consumer-agent tries the impostor");
    let before = impostor.accepted.load(Ordering::Relaxed);
    let r = start_load(c, 64, 4.0).join().expect("load thread");
    check_report(&r, &[], 0);
    let reconnects = impostor.accepted.load(Ordering::Relaxed) - before;
    // Backing off from 100 ms doubling, 4 s hold at most 6 attempts; ten a second
    // would be 40.
    assert!(
        reconnects <= 8,
        "{reconnects} connects to the impostor in 4 s"
    );
    consumer.assert_alive();
    agent.assert_alive();
    assert_eq!(one_call(c, "still there").expect("answers"), (200, true));
    good.stop();
    drop((consumer, agent));
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}

/// A raw agent-protocol client that sends `first` calls at once, then `per_burst`
/// every `every` for `secs`, and counts the statuses of the answers: (OK, OVERLOADED,
/// other).
fn burst_client(
    addr: SocketAddr,
    (first, per_burst): (u64, u64),
    every: Duration,
    secs: f64,
) -> JoinHandle<(u64, u64, u64)> {
    use codec::agent::{self, Frame, SignatureRef, Status};
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let mut reader = s.try_clone().expect("clone");
        let _ = reader.set_read_timeout(Some(Duration::from_secs(5)));
        let sig = SignatureRef {
            service: SERVICE,
            method: "hash",
            parameter_types: "Ljava/lang/String;",
            version: "",
            group: "",
        };
        let mut out = Vec::new();
        agent::encode_define(&mut out, 0, sig).expect("define");
        let mut args = Vec::new();
        codec::hessian2::write_string(&mut args, "burst");
        let sent = Arc::new(AtomicU64::new(0));
        let writer_sent = sent.clone();
        let writer = std::thread::spawn(move || {
            let started = Instant::now();
            let mut id = 0;
            while started.elapsed().as_secs_f64() < secs {
                let calls = if id == 0 { first } else { per_burst };
                for _ in 0..calls {
                    id += 1;
                    agent::encode_request(&mut out, id, 0, 5_000, &[], &args).expect("request");
                }
                if s.write_all(&out).is_err() {
                    break;
                }
                out.clear();
                writer_sent.store(id, Ordering::Relaxed);
                std::thread::sleep(every);
            }
        });
        let (mut ok, mut overloaded, mut other) = (0, 0, 0);
        let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 65536]);
        loop {
            let done = writer.is_finished();
            let answered = ok + overloaded + other;
            if done && answered >= sent.load(Ordering::Relaxed) {
                break;
            }
            match reader.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            let mut pos = 0;
            while let Ok(codec::Decoded::Complete { msg, consumed }) = agent::decode(&buf[pos..]) {
                pos += consumed;
                if let Frame::Response(r) = msg {
                    match r.status {
                        Status::Ok => ok += 1,
                        Status::Overloaded => overloaded += 1,
                        _ => other += 1,
                    }
                }
            }
            buf.drain(..pos);
        }
        let _ = writer.join();
        (ok, overloaded, other)
    })
}

/// One consumer's burst on a provider-agent must not starve the other consumers of its
/// `--max-inflight` budget (first come first served, a burst of 10,000 calls made
/// 12,606 background calls fail with 503 in one second).
#[test]
fn one_consumers_burst_does_not_starve_the_others() {
    let _serial = serial();
    let mesh = Mesh::new();
    let good = provider::spawn(ProviderOpts {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        latency: Duration::from_millis(20),
        threads: 400,
        ..ProviderOpts::default()
    })
    .expect("mock provider");
    let a = agent_addrs();
    let mut args =
        harness::provider_agent_args(a.listen, a.admin, good.local_addr(), &mesh.registry);
    args.extend(["--max-inflight".into(), "200".into()]);
    let mut agent =
        Proc::start("provider-agent", &mesh.bins.provider, &args, mesh.logs()).expect("start");
    procs::wait_healthy(a.admin, Duration::from_secs(20), &mut agent).expect("healthy");
    let (c, c_admin) = (free_addr().unwrap(), free_addr().unwrap());
    let mut consumer = mesh.consumer(c, c_admin, 3000, "adaptive");
    // The background runs first, then the burst: 10,000 calls at once, then 1,000 every
    // 100 ms, on one connection.
    let background = start_load(c, 32, 4.0);
    std::thread::sleep(Duration::from_millis(500));
    let burst = burst_client(a.listen, (10_000, 1_000), Duration::from_millis(100), 3.0);
    let r = background.join().expect("load thread");
    let (ok, overloaded, other) = burst.join().expect("burst thread");
    eprintln!("burst: {ok} OK, {overloaded} OVERLOADED, {other} other");
    check_report(&r, &[], 0);
    assert!(ok > 0, "the burst gets its share");
    assert!(overloaded > 0, "the burst is refused past its share");
    consumer.assert_alive();
    agent.assert_alive();
    good.stop();
    drop((consumer, agent));
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}

/// The consumer-agent's view of one provider-agent: whether it is up and has calls in
/// flight; absent counts as neither.
fn upstream_busy(consumer_admin: SocketAddr, agent: SocketAddr) -> bool {
    let labels = format!("{{loop=\"0\",upstream=\"{agent}\"}}");
    let up = metric(consumer_admin, &format!("consumer_upstream_up{labels}")).unwrap_or(0.0);
    let inflight = metric(
        consumer_admin,
        &format!("consumer_upstream_inflight{labels}"),
    )
    .unwrap_or(0.0);
    up > 0.0 || inflight > 0.0
}

#[test]
fn etcd_stopped_and_restarted_under_load() {
    let _serial = serial();
    let mut mesh = Mesh::new();
    let data = mesh.logs().join("etcd-data");
    let mut etcd = Etcd::start(&data, &mesh.logs().join("etcd.log"))
        .expect("etcd (etcd-server, installed by .ci/setup), healthy");
    let client = etcd.client_addr();
    // A short lease, so that keys surviving two TTLs after the restart prove the agents
    // keep them alive on the restarted etcd.
    let ttl = Duration::from_secs(2);
    mesh.registry = format!("etcd://{client}?ttl={}", ttl.as_secs());
    let key = |a: SocketAddr| format!("/dubbomesh/{SERVICE}/{a}");
    let has_key = |a: SocketAddr| harness::etcd_has_key(client, &key(a)).unwrap_or(false);

    let (prov1, prov2) = (good_provider(), good_provider());
    let first = ("provider-agent-1", prov1.local_addr());
    let second = ("provider-agent-2", prov2.local_addr());
    let mut ag = mesh.agents(first, second, 2000, "adaptive");
    let (a1, a2, c, c_admin) = (ag.a1, ag.a2, ag.c, ag.c_admin);
    assert!(
        wait_until(Duration::from_secs(5), || has_key(a1.listen)
            && has_key(a2.listen)),
        "both provider-agents registered in etcd"
    );
    let ok = |a: AgentAddrs| metric_or_zero(a.admin, "provider_agent_responses_ok_total");

    // etcd down for 3 s, then back on the same data dir: no call may fail.
    let conns = 256;
    let (load, started, load_secs) = load_on_both(
        &ag,
        conns,
        18.0,
        "provider_agent_responses_ok_total",
        "both provider-agents get traffic",
    );
    etcd.kill();
    let etcd_killed = Instant::now();
    let (b1, b2) = (ok(a1), ok(a2));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        ok(a1) > b1 && ok(a2) > b2,
        "traffic continues on both known provider-agents while etcd is down"
    );
    ag.assert_alive();
    etcd.restart()
        .expect("etcd restarted on its data, healthy again");
    let back = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || has_key(a1.listen)
            && has_key(a2.listen)),
        "both agents registered after the restart"
    );
    std::thread::sleep(ttl * 2 + Duration::from_millis(500));
    assert!(
        has_key(a1.listen) && has_key(a2.listen),
        "the registrations outlive two {ttl:?} leases after the restart:\n{}",
        ag.agent1.tail()
    );
    let (b1, b2) = (ok(a1), ok(a2));
    assert!(
        wait_until(Duration::from_secs(2), || ok(a1) > b1 && ok(a2) > b2),
        "both still get traffic after the restart"
    );
    eprintln!(
        "etcd healthy again {:?} after the kill; keys still there {:?} later",
        back.duration_since(etcd_killed),
        back.elapsed()
    );
    assert!(
        started.elapsed().as_secs_f64() < load_secs,
        "the outage and the restart were checked while the load ran"
    );
    let r = load.join().expect("load thread");
    check_report(&r, &[], 0);

    // After the restart: a new provider-agent gets traffic within 2 s of being up; killed
    // with -9, it gets none within 1 s.
    let load_secs = 10.0;
    let started = Instant::now();
    let load = start_load(c, conns, load_secs);
    std::thread::sleep(Duration::from_millis(500));
    let a3 = agent_addrs();
    let spawned = Instant::now();
    let mut agent3 = mesh.provider_agent("provider-agent-3", a3, prov1.local_addr());
    let healthy = Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), || ok(a3) > 0.0),
        "a provider-agent started after the restart gets traffic within 2 s:\n{}",
        agent3.tail()
    );
    eprintln!(
        "new provider-agent: traffic {:?} after it was healthy ({:?} after it was started)",
        healthy.elapsed(),
        spawned.elapsed()
    );
    assert!(has_key(a3.listen), "the new agent is registered");
    std::thread::sleep(Duration::from_millis(500));
    agent3.kill9();
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(1), || !upstream_busy(
            c_admin, a3.listen
        )),
        "the killed provider-agent gets no traffic within 1 s"
    );
    eprintln!(
        "killed agent idle at the consumer after {:?}",
        killed.elapsed()
    );
    let b1 = ok(a1);
    assert!(
        wait_until(Duration::from_secs(1), || ok(a1) > b1),
        "the others carry on"
    );
    // Only the calls in flight on the killed agent may fail.
    let run = (load, started, load_secs);
    end_of_run(run, &GATEWAY_ERRORS, conns, &mut ag);
    drop((ag, etcd));
    prov1.stop();
    prov2.stop();
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}
