//! Traffic rules through the real consumer-agent (a child process) on loopback, with
//! the checking load generator: a 90/10 split, method and attachment routes, a rate
//! limit, outlier ejection and return, rules changed every 200 ms under load, and broken
//! rule documents refused with the last good ones kept.
//!
//! The providers are in-process mock providers registered (file registry) as unmeshed
//! Dubbo providers with labels, so each one's own count says where calls went; the
//! rules are written with `registry::Registry::put_rules`, where an operator's tool would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bench::harness::{self, metric_or_zero, one_call, Bins};
use bench::load::{self, LoadOpts, LoadReport, Params};
use bench::procs::{self, Proc};
use bench::provider::{self, ProviderOpts, RunningProvider, SERVICE};
use codec::dubbo;
use codec::hessian2::Value;
use test_support::net::free_addr;
use test_support::wait::wait_until;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A file registry, the consumer-agent before it, and the instances registered in it.
struct Mesh {
    _dir: tempfile::TempDir,
    registry: registry::Registry,
    _registrations: Vec<registry::Registration>,
    consumer: Proc,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Mesh {
    /// Registers `instances` (address, labels) as unmeshed providers of the race's
    /// service and starts a consumer-agent watching it.
    fn start(instances: &[(SocketAddr, &[(&str, &str)])]) -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().join("registry").display());
        let registry = registry::open(Some(&url)).expect("registry");
        let mut registrations = Vec::new();
        for (addr, labels) in instances {
            let mut i =
                registry::Instance::new(SERVICE, addr.to_string()).with_meta("protocol", "dubbo");
            for (k, v) in *labels {
                i = i.with_meta(format!("label.{k}"), *v);
            }
            registrations.push(registry.register(i).expect("register"));
        }
        let bins = Bins::for_test(env!("CARGO_BIN_EXE_bench"));
        let (http, admin) = (free_addr().expect("port"), free_addr().expect("port"));
        let mut args = harness::consumer_agent_args(http, admin, &url);
        args.extend(["--lb", "wrr", "--timeout-ms", "2000"].map(String::from));
        let mut consumer =
            Proc::start("consumer-agent", &bins.consumer, &args, dir.path()).expect("start");
        let deadline = Duration::from_secs(20);
        procs::wait_healthy(admin, deadline, &mut consumer).expect("healthy");
        harness::wait_routing(http, deadline, &mut consumer).expect("routing");
        Mesh {
            _dir: dir,
            registry,
            _registrations: registrations,
            consumer,
            http,
            admin,
        }
    }

    /// Puts `doc` in force and waits until the consumer-agent says it applied it.
    fn rules(&self, doc: &str) {
        let before = metric_or_zero(self.admin, "consumer_rules_applied_total");
        self.registry
            .put_rules(SERVICE, Some(doc))
            .expect("put rules");
        let applied = wait_until(Duration::from_secs(5), || {
            metric_or_zero(self.admin, "consumer_rules_applied_total") > before
        });
        assert!(applied, "rules never applied:\n{}", self.get("/rules"));
    }

    /// GET `path` on the admin port: the body.
    fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(self.admin).expect("admin");
        let req = format!("GET {path} HTTP/1.0\r\n\r\n");
        s.write_all(req.as_bytes()).expect("write");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.split_once("\r\n\r\n")
            .map_or(text.clone(), |(_, b)| b.to_owned())
    }
}

fn mock(latency_ms: u64) -> RunningProvider {
    provider::spawn(ProviderOpts {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        latency: Duration::from_millis(latency_ms),
        threads: 1000,
        ..ProviderOpts::default()
    })
    .expect("mock provider")
}

fn answered(p: &RunningProvider) -> u64 {
    p.stats().answered.load(Ordering::Relaxed)
}

fn load(target: SocketAddr, connections: usize, secs: f64) -> LoadReport {
    load_after(target, connections, Duration::ZERO, secs)
}

/// [`load`], counting only what follows `warmup`.
fn load_after(target: SocketAddr, connections: usize, warmup: Duration, secs: f64) -> LoadReport {
    load::run(&LoadOpts {
        target,
        connections,
        loops: 1,
        warmup,
        duration: Duration::from_secs_f64(secs),
        params: Params::Ascii,
        salt: None,
        timeout: Duration::from_secs(5),
        progress: false,
        protocol: load::Protocol::Http,
        stagger: Duration::ZERO,
    })
    .expect("load run")
}

/// POSTs the race's call as a JSON invocation carrying `attachments`: the status.
fn json_call(addr: SocketAddr, attachments: &str) -> u16 {
    json_call_with(addr, attachments, "")
}

/// [`json_call`] with `extra` request header lines (each ending in CRLF).
fn json_call_with(addr: SocketAddr, attachments: &str, extra: &str) -> u16 {
    let body = format!(
        r#"{{"interface":"{SERVICE}","method":"hash","parameterTypes":["java.lang.String"],"arguments":["x"],"attachments":{attachments}}}"#
    );
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(req.as_bytes()).expect("write");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

const SPLIT: &str = r#"{"routes": [{"name": "canary", "to": [
    {"labels": {"track": "stable"}, "weight": 90},
    {"labels": {"track": "canary"}, "weight": 10}]}]}"#;

#[test]
fn a_90_10_split_sends_each_its_share_within_two_points() {
    let _serial = serial();
    let (stable, canary) = (mock(1), mock(1));
    let mesh = Mesh::start(&[
        (stable.local_addr(), &[("track", "stable")]),
        (canary.local_addr(), &[("track", "canary")]),
    ]);
    mesh.rules(SPLIT);
    let (s0, c0) = (answered(&stable), answered(&canary));
    let r = load(mesh.http, 256, 3.0);
    assert!(r.stats.errors.is_empty(), "{:?}", r.stats.errors);
    let (s, c) = (answered(&stable) - s0, answered(&canary) - c0);
    assert!(s + c >= 10_000, "only {} calls", s + c);
    let share = c as f64 / (s + c) as f64;
    assert!(
        (0.08..=0.12).contains(&share),
        "canary took {:.2}% of {} calls",
        share * 100.0,
        s + c
    );
    let shown = mesh.get("/rules");
    assert!(
        shown.contains("\"canary\"") && shown.contains("since"),
        "{shown}"
    );
}

#[test]
fn calls_are_routed_by_attachment_and_by_method() {
    let _serial = serial();
    let (stable, canary) = (mock(0), mock(0));
    let mesh = Mesh::start(&[
        (stable.local_addr(), &[("track", "stable")]),
        (canary.local_addr(), &[("track", "canary")]),
    ]);
    mesh.rules(
        r#"{"routes": [
            {"name": "canary header", "match": {"headers": {"x-canary": "yes"}},
             "to": [{"labels": {"track": "canary"}}]},
            {"name": "beta users", "match": {"attachments": {"tier": "beta"}},
             "to": [{"labels": {"track": "canary"}}]},
            {"name": "hash", "match": {"method": "hash"}, "to": [{"labels": {"track": "stable"}}]}
        ]}"#,
    );
    let (s0, c0) = (answered(&stable), answered(&canary));
    for _ in 0..20 {
        assert_eq!(json_call(mesh.http, r#"{"tier":"beta"}"#), 200);
    }
    assert_eq!((answered(&stable) - s0, answered(&canary) - c0), (0, 20));
    for _ in 0..20 {
        assert_eq!(json_call(mesh.http, r#"{"tier":"gold"}"#), 200);
        assert_eq!(one_call(mesh.http, "plain").expect("call"), (200, true));
    }
    assert_eq!((answered(&stable) - s0, answered(&canary) - c0), (40, 20));
    // An HTTP header routes too (names match whatever their case).
    for _ in 0..10 {
        assert_eq!(json_call_with(mesh.http, "{}", "X-Canary: yes\r\n"), 200);
    }
    assert_eq!((answered(&stable) - s0, answered(&canary) - c0), (40, 30));
}

#[test]
fn a_rate_limit_holds_its_rate_and_answers_429() {
    let _serial = serial();
    let p = mock(0);
    let mesh = Mesh::start(&[(p.local_addr(), &[])]);
    // A burst of 80 (200 ms of tokens): the loop reads its clock once per iteration, so
    // a bucket must hold at least an iteration's worth, and a loop held up by a busy
    // machine for less than that loses no tokens. The first second (its burst spent)
    // is not counted: 80 tokens more or less are 2% of the window.
    mesh.rules(r#"{"rate_limit": {"rps": 400, "burst": 80}}"#);
    let secs = 6.0;
    let r = load_after(mesh.http, 256, Duration::from_secs(1), secs);
    let rate = r.stats.ok as f64 / secs;
    assert!(
        (380.0..=420.0).contains(&rate),
        "{rate:.0} calls/s admitted, errors {:?}",
        r.stats.errors
    );
    let refused = r.stats.errors.get("status_429").copied().unwrap_or(0);
    assert!(refused > 1000, "{:?}", r.stats.errors);
    assert_eq!(r.stats.errors.len(), 1, "{:?}", r.stats.errors);
    // The answer says when to come back.
    let mut s = TcpStream::connect(mesh.http).expect("connect");
    let (req, _) = load::race_request(&mesh.http.to_string(), "limited", None);
    let mut seen = false;
    for _ in 0..50 {
        s.write_all(&req).expect("write");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).expect("read");
        let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
        if head.starts_with("http/1.1 429") {
            assert!(head.contains("retry-after: "), "{head}");
            seen = true;
            break;
        }
    }
    assert!(seen, "no 429 in 50 back-to-back calls");
}

/// A Dubbo provider that answers right (the race's hash), or every call with
/// SERVER_ERROR while `failing`, or every other call while `half`. Counts the calls it
/// gets.
struct Flaky {
    addr: SocketAddr,
    failing: Arc<AtomicBool>,
    half: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
}

impl Flaky {
    fn start() -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let failing = Arc::new(AtomicBool::new(false));
        let half = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let (f, h, c) = (failing.clone(), half.clone(), calls.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (f, h, c) = (f.clone(), h.clone(), c.clone());
                std::thread::spawn(move || flaky_conn(conn, &f, &h, &c));
            }
        });
        Flaky {
            addr,
            failing,
            half,
            calls,
        }
    }
}

fn flaky_conn(mut conn: TcpStream, failing: &AtomicBool, half: &AtomicBool, calls: &AtomicU64) {
    let mut input = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        input.extend_from_slice(&buf[..n]);
        let mut out = Vec::new();
        let mut pos = 0;
        while let Ok(codec::Decoded::Complete { msg, consumed }) =
            dubbo::decode_frame(&input[pos..])
        {
            pos += consumed;
            if msg.is_event() {
                if msg.is_two_way() {
                    dubbo::encode_heartbeat_reply(&mut out, msg.id());
                }
                continue;
            }
            let n = calls.fetch_add(1, Ordering::Relaxed);
            let fails =
                failing.load(Ordering::Relaxed) || (half.load(Ordering::Relaxed) && n % 2 == 1);
            let healthy = !fails;
            let arg = dubbo::decode_request_body(msg.serialization_id(), msg.body)
                .ok()
                .and_then(|b| b.args.into_iter().next());
            let written = match (healthy, arg) {
                (true, Some(Value::String(s))) => {
                    let v = Value::Int(codec::java::string_hash_code(&s));
                    dubbo::encode_response(
                        &mut out,
                        msg.id(),
                        dubbo::Serialization::Hessian2,
                        dubbo::status::OK,
                        &dubbo::Reply::Value(&v),
                        &[],
                    )
                }
                _ => dubbo::encode_response(
                    &mut out,
                    msg.id(),
                    dubbo::Serialization::Hessian2,
                    dubbo::status::SERVER_ERROR,
                    &dubbo::Reply::Error("broken"),
                    &[],
                ),
            };
            if written.is_err() {
                return;
            }
        }
        input.drain(..pos);
        if conn.write_all(&out).is_err() {
            return;
        }
    }
}

#[test]
fn a_failing_instance_is_ejected_at_its_threshold_and_returns_once_healed() {
    let _serial = serial();
    let good = mock(0);
    let flaky = Flaky::start();
    let mesh = Mesh::start(&[(good.local_addr(), &[]), (flaky.addr, &[])]);
    mesh.rules(
        r#"{"outlier": {"consecutive_failures": 3, "base_ejection_ms": 400,
                        "max_ejection_ms": 400, "max_ejected_percent": 50}}"#,
    );
    // One call at a time, round-robin: the flaky one fails its third call in a row
    // and gets none for the ejection's 400 ms.
    flaky.failing.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    let start = flaky.calls.load(Ordering::Relaxed);
    while flaky.calls.load(Ordering::Relaxed) - start < 3 {
        statuses.push(one_call(mesh.http, "e").expect("call").0);
        assert!(statuses.len() < 100, "the flaky provider got no calls");
    }
    let ejected_at = Instant::now();
    let mut during = 0;
    while ejected_at.elapsed() < Duration::from_millis(300) {
        let before = flaky.calls.load(Ordering::Relaxed);
        assert_eq!(one_call(mesh.http, "e").expect("call"), (200, true));
        during += flaky.calls.load(Ordering::Relaxed) - before;
    }
    assert_eq!(during, 0, "calls reached an ejected instance");
    // Healed: after its ejection it takes calls again, and answers them.
    flaky.failing.store(false, Ordering::Relaxed);
    let back = wait_until(Duration::from_secs(5), || {
        let before = flaky.calls.load(Ordering::Relaxed);
        let _ = one_call(mesh.http, "back");
        flaky.calls.load(Ordering::Relaxed) > before
    });
    assert!(back, "the healed instance never came back");
    for _ in 0..20 {
        assert_eq!(one_call(mesh.http, "ok").expect("call"), (200, true));
    }
}

/// Failing every other call never makes failures in a row, but a success rate of 50%
/// under the rule's 80% ejects the instance; healed, it returns.
#[test]
fn an_instance_under_its_success_rate_is_ejected() {
    let _serial = serial();
    let good = mock(0);
    let flaky = Flaky::start();
    let mesh = Mesh::start(&[(good.local_addr(), &[]), (flaky.addr, &[])]);
    mesh.rules(
        r#"{"outlier": {"consecutive_failures": 1000, "success_rate_below": 80,
                        "min_requests": 10, "window_ms": 3000, "base_ejection_ms": 600,
                        "max_ejection_ms": 600, "max_ejected_percent": 50}}"#,
    );
    flaky.half.store(true, Ordering::Relaxed);
    let start = flaky.calls.load(Ordering::Relaxed);
    // Calls until the flaky instance stops getting them (its ejection).
    let mut quiet = 0;
    let mut sent = 0;
    while quiet < 20 {
        let before = flaky.calls.load(Ordering::Relaxed);
        let _ = one_call(mesh.http, "sr").expect("call");
        sent += 1;
        quiet = if flaky.calls.load(Ordering::Relaxed) == before {
            quiet + 1
        } else {
            0
        };
        assert!(sent < 400, "never ejected at a 50% success rate");
    }
    let took = flaky.calls.load(Ordering::Relaxed) - start;
    // The window also holds the good answers of the mesh's start: at least three
    // failures (of ten calls or more) bring it under 80%.
    assert!(
        (5..=40).contains(&took),
        "ejected after {took} calls at 50% success"
    );
    // Ejected: the good instance takes every call, all answered right.
    for _ in 0..20 {
        assert_eq!(one_call(mesh.http, "ok").expect("call"), (200, true));
    }
    flaky.half.store(false, Ordering::Relaxed);
    let back = wait_until(Duration::from_secs(5), || {
        let before = flaky.calls.load(Ordering::Relaxed);
        let _ = one_call(mesh.http, "back");
        flaky.calls.load(Ordering::Relaxed) > before
    });
    assert!(back, "the healed instance never came back");
}

#[test]
fn rules_changed_every_200_ms_under_load_fail_no_call() {
    let _serial = serial();
    let (stable, canary) = (mock(1), mock(1));
    let mut mesh = Mesh::start(&[
        (stable.local_addr(), &[("track", "stable")]),
        (canary.local_addr(), &[("track", "canary")]),
    ]);
    let http = mesh.http;
    let runner = std::thread::spawn(move || load(http, 256, 10.0));
    let docs = [
        SPLIT,
        r#"{"routes": [{"to": [{"labels": {"track": "canary"}}]}]}"#,
        r#"{"routes": [{"match": {"method": "hash"}, "to": [{"labels": {"track": "stable"}}]}]}"#,
        r#"{}"#,
    ];
    let end = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while Instant::now() < end {
        mesh.registry
            .put_rules(SERVICE, Some(docs[n % docs.len()]))
            .expect("put rules");
        n += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = runner.join().expect("load thread");
    assert!(r.stats.ok > 10_000, "{} calls", r.stats.ok);
    assert!(r.stats.errors.is_empty(), "{:?}", r.stats.errors);
    let applied = metric_or_zero(mesh.admin, "consumer_rules_applied_total");
    assert!(applied >= 20.0, "{applied} of {n} documents applied");
    mesh.consumer.assert_alive();
}

#[test]
fn broken_rule_documents_are_refused_and_the_last_good_ones_stay() {
    let _serial = serial();
    let (stable, canary) = (mock(0), mock(0));
    let mesh = Mesh::start(&[
        (stable.local_addr(), &[("track", "stable")]),
        (canary.local_addr(), &[("track", "canary")]),
    ]);
    mesh.rules(r#"{"routes": [{"to": [{"labels": {"track": "canary"}}]}]}"#);
    let broken = [
        (r#"{"routes": [{"to": ["#, "bad rules"),
        (r#"{"routes": [], "colour": "red"}"#, "unknown field"),
        (
            r#"{"routes": [{"to": [{"labels": {"track": "stable"}, "weight": 0}, {"labels": {"track": "canary"}, "weight": 0}]}]}"#,
            "sum to 0",
        ),
        (
            r#"{"routes": [{"to": [{"labels": {"track": "blue"}}]}]}"#,
            "matches no instance",
        ),
    ];
    for (i, (doc, why)) in broken.iter().enumerate() {
        mesh.registry
            .put_rules(SERVICE, Some(doc))
            .expect("put rules");
        let refused = wait_until(Duration::from_secs(5), || {
            metric_or_zero(mesh.admin, "consumer_rules_rejected_total") >= (i + 1) as f64
        });
        assert!(refused, "{doc} was not refused");
        let shown = mesh.get("/rules");
        assert!(shown.contains(why), "{why}: {shown}");
        // Still the canary route.
        let c0 = answered(&canary);
        assert_eq!(one_call(mesh.http, "still").expect("call"), (200, true));
        assert_eq!(answered(&canary), c0 + 1, "after {doc}");
    }
}
