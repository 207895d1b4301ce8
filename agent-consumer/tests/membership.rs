//! Provider-agents joining and leaving the registry while calls are in flight.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use codec::agent::{self, Frame};
use codec::java::string_hash_code;
use codec::Decoded;
use registry::{Instance, Variant};
use util::*;

const SERVICE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";

#[test]
fn a_leaving_provider_agent_finishes_its_calls_and_gets_no_new_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    let reg = registry::open(Some(&url)).expect("registry");
    let a = fake_agent(Mode::Delay(300));
    let b = fake_agent(Mode::Delay(10));
    let reg_a = reg
        .register(Instance::new(SERVICE, a.addr.to_string()))
        .expect("register a");
    let _reg_b = reg
        .register(Instance::new(SERVICE, b.addr.to_string()))
        .expect("register b");
    let running = consumer_with(&url, &["--lb", "wrr"]);
    wait_ready(&running);
    // Both connected: wait until b has been picked once and a once.
    let end = Instant::now() + Duration::from_secs(5);
    while running
        .metrics()
        .render()
        .matches("consumer_upstream_up{")
        .count()
        < 2
        || !running
            .metrics()
            .render()
            .lines()
            .filter(|l| l.starts_with("consumer_upstream_up{"))
            .all(|l| l.ends_with(" 1"))
    {
        assert!(Instant::now() < end, "both provider-agents connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Eight calls in flight, half of them on a (300 ms each).
    let mut clients: Vec<(TcpStream, String)> = (0..8)
        .map(|i| {
            let p = format!("inflight{i}");
            let mut s = TcpStream::connect(running.http_addr()).expect("connect");
            std::io::Write::write_all(&mut s, &race_request(&p)).expect("write");
            (s, p)
        })
        .collect();
    // a got some of the calls (polled: the consumer-agent may not have sent them yet).
    let got = test_support::wait::wait_until(Duration::from_secs(5), || {
        a.calls.load(Ordering::SeqCst) > 0
    });
    assert!(got, "a got some of the calls");
    reg_a.deregister().expect("deregister a");
    for (s, p) in clients.iter_mut() {
        let answers = read_answers(s, 1, Duration::from_secs(5));
        assert_eq!(answers[0].status, 200, "{p}: {}", answers[0].body);
        assert_eq!(answers[0].body, string_hash_code(p).to_string());
    }
    // Once the registry change has reached the loop (a, its calls over, is dropped), a
    // gets nothing new.
    wait_unlisted(&running, a.addr);
    std::thread::sleep(Duration::from_millis(300));
    let before = a.calls.load(Ordering::SeqCst);
    for i in 0..10 {
        let p = format!("after{i}");
        let answers = exchange(running.http_addr(), &race_request(&p), 1);
        assert_eq!(answers[0].body, string_hash_code(&p).to_string());
    }
    assert_eq!(
        a.calls.load(Ordering::SeqCst),
        before,
        "no new call reached the leaving agent"
    );
    running.stop();
}

#[test]
fn calls_reach_only_instances_of_their_version_and_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    let reg = registry::open(Some(&url)).expect("registry");
    let v1 = fake_agent(Mode::Hash);
    let v2 = fake_agent(Mode::Hash);
    let none = fake_agent(Mode::Hash);
    let v2_blue = fake_agent(Mode::Hash);
    let inst = |a: &FakeAgent| Instance::new(SERVICE, a.addr.to_string());
    let _r = [
        reg.register(inst(&v1).with_meta("version", "1.0")),
        reg.register(inst(&v2).with_meta("version", "2.0")),
        reg.register(inst(&none)),
        reg.register(
            inst(&v2_blue)
                .with_meta("version", "2.0")
                .with_meta("group", "blue"),
        ),
    ];
    let running = consumer_with(&url, &[]);
    wait_ready(&running);
    let end = Instant::now() + Duration::from_secs(5);
    while running
        .metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with("consumer_upstream_up{") && l.ends_with(" 1"))
        .count()
        < 4
    {
        assert!(Instant::now() < end, "all four provider-agents connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    let json = |version: &str, group: &str| {
        let body = format!(
            r#"{{"interface":"{SERVICE}","method":"hash","parameterTypes":["java.lang.String"],"arguments":["v"],"version":"{version}","group":"{group}"}}"#
        );
        let raw = format!(
            "POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        exchange(running.http_addr(), raw.as_bytes(), 1).remove(0)
    };
    let counts = || [&v1, &v2, &none, &v2_blue].map(|a| a.calls.load(Ordering::SeqCst));
    for _ in 0..5 {
        assert_eq!(json("2.0", "").status, 200);
    }
    assert_eq!(counts(), [0, 5, 0, 0], "version 2.0, no group");
    for _ in 0..3 {
        assert_eq!(json("2.0", "blue").status, 200);
    }
    assert_eq!(counts(), [0, 5, 0, 3], "version 2.0, group blue");
    // The form request names its version in a header; "0.0.0" means none, as in Java.
    let mut form = race_request("v");
    let at = form
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head end");
    form.splice(at..at, b"\r\nx-dubbo-version: 1.0".iter().copied());
    for _ in 0..2 {
        assert_eq!(exchange(running.http_addr(), &form, 1)[0].status, 200);
    }
    assert_eq!(json("0.0.0", "").status, 200);
    assert_eq!(
        exchange(running.http_addr(), &race_request("v"), 1)[0].status,
        200
    );
    assert_eq!(
        counts(),
        [2, 5, 2, 3],
        "1.0 by header; none by 0.0.0 and by default"
    );
    let missing = json("3.0", "");
    assert_eq!(missing.status, 503);
    assert!(missing.body.contains("version 3.0"), "{}", missing.body);
    assert_eq!(
        counts(),
        [2, 5, 2, 3],
        "nothing sent for an unknown version"
    );
    running.stop();
}

/// `GET path` on an admin port: status and body (the server closes the connection).
fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a whole response");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok());
    (status.expect("a status code"), body.to_owned())
}

/// `/registry` on the admin port shows what the registry last said of each watched
/// service: each instance's address, weight, and the versions and groups it serves.
#[test]
fn admin_registry_lists_instances_with_their_variants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    let reg = registry::open(Some(&url)).expect("registry");
    let agent = fake_agent(Mode::Hash);
    let _r = reg
        .register(
            Instance::new(SERVICE, agent.addr.to_string())
                .with_weight(7)
                .with_variants(&[Variant::new("1.0", ""), Variant::new("2.0", "blue")]),
        )
        .expect("register");
    let running = consumer_with(&url, &["--admin", "127.0.0.1:0"]);
    let admin = running.admin_addr().expect("an admin port");
    let end = Instant::now() + Duration::from_secs(5);
    let listed = loop {
        let (status, body) = admin_get(admin, "/registry");
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        if json[SERVICE].as_array().is_some_and(|l| !l.is_empty()) {
            break json;
        }
        assert!(Instant::now() < end, "the instance never appeared: {body}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let instance = &listed[SERVICE][0];
    assert_eq!(instance["addr"], agent.addr.to_string());
    assert_eq!(instance["weight"], 7);
    assert_eq!(
        instance["variants"],
        serde_json::json!([
            {"version": "1.0", "group": ""},
            {"version": "2.0", "group": "blue"}
        ])
    );
    assert_eq!(instance["meta"]["variants"], "/1.0,blue/2.0");
    let (status, _) = admin_get(admin, "/nothing");
    assert_eq!(status, 404);
    running.stop();
}

/// A provider-agent that takes calls and never answers: it reports each call, counts
/// the connections made to it and those the consumer-agent closed, and closes its own
/// on request.
struct Mute {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    calls: mpsc::Receiver<()>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

fn mute_agent() -> Mute {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (accepted, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let conns = Arc::new(Mutex::new(Vec::new()));
    let (tx, calls) = mpsc::channel();
    let (a, e, c) = (accepted.clone(), ended.clone(), conns.clone());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            a.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut all) = c.lock() {
                all.push(stream.try_clone().expect("clone"));
            }
            let (tx, e) = (tx.clone(), e.clone());
            std::thread::spawn(move || {
                let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
                loop {
                    match stream.read(&mut chunk) {
                        Ok(0) => {
                            e.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(_) => return,
                    }
                    let mut pos = 0;
                    let mut pongs = Vec::new();
                    while let Ok(Decoded::Complete { msg, consumed }) = agent::decode(&buf[pos..]) {
                        pos += consumed;
                        match msg {
                            Frame::Request(_) => {
                                let _ = tx.send(());
                            }
                            // Mute to calls, but a provider-agent: it answers PINGs.
                            Frame::Ping { id } => agent::encode_pong(&mut pongs, id),
                            _ => {}
                        }
                    }
                    buf.drain(..pos);
                    let _ = stream.write_all(&pongs);
                }
            });
        }
    });
    Mute {
        addr,
        accepted,
        ended,
        calls,
        conns,
    }
}

/// Whether the metrics still list `addr` as an upstream of some loop.
fn listed(running: &agent_consumer::Running, addr: SocketAddr) -> bool {
    running
        .metrics()
        .render()
        .lines()
        .any(|l| l.starts_with("consumer_upstream_up{") && l.contains(&format!("\"{addr}\"")))
}

/// A race call with a short per-call timeout (`x-dubbo-timeout`), on a fresh connection.
fn probe(running: &agent_consumer::Running) -> Answer {
    let mut req = race_request("probe");
    let at = req
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head end");
    req.splice(at..at, b"\r\nx-dubbo-timeout: 100".iter().copied());
    exchange(running.http_addr(), &req, 1).remove(0)
}

/// Starts a consumer-agent on a file registry listing only `mute`, sends it one call
/// (left in flight), then deregisters it and waits until the loop knows (calls are
/// refused at once for want of a provider-agent). Returns the client of the call.
fn in_flight_on_a_leaving_agent(
    mute: &Mute,
    extra: &[&str],
) -> (agent_consumer::Running, TcpStream, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    let reg = registry::open(Some(&url)).expect("registry");
    let registration = reg
        .register(Instance::new(SERVICE, mute.addr.to_string()))
        .expect("register");
    let running = consumer_with(&url, extra);
    wait_ready(&running);
    let mut client = TcpStream::connect(running.http_addr()).expect("connect");
    client.write_all(&race_request("inflight")).expect("write");
    mute.calls
        .recv_timeout(Duration::from_secs(5))
        .expect("the call reached the provider-agent");
    registration.deregister().expect("deregister");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        // Before the loop learns of it, a probe goes to the mute agent and times out.
        let a = probe(&running);
        if a.status == 503 {
            break;
        }
        assert_eq!(a.status, 504, "{a:?}");
        assert!(
            Instant::now() < end,
            "the deregistration never reached the loop"
        );
    }
    (running, client, dir)
}

/// Waits until `addr` is no upstream of the consumer-agent any more.
fn wait_unlisted(running: &agent_consumer::Running, addr: SocketAddr) {
    let end = Instant::now() + Duration::from_secs(5);
    while listed(running, addr) {
        assert!(
            Instant::now() < end,
            "the retired provider-agent is still listed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_leaving_provider_agent_whose_last_call_times_out_is_dropped() {
    let mute = mute_agent();
    let (running, mut client, _dir) =
        in_flight_on_a_leaving_agent(&mute, &["--timeout-ms", "1500"]);
    let a = read_answers(&mut client, 1, Duration::from_secs(5)).remove(0);
    assert_eq!(a.status, 504, "{a:?}");
    // Its last call over, the retired provider-agent is dropped and its connection closed.
    wait_unlisted(&running, mute.addr);
    let end = Instant::now() + Duration::from_secs(5);
    while mute.ended.load(Ordering::SeqCst) < 1 {
        assert!(
            Instant::now() < end,
            "the connection to it was never closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mute.accepted.load(Ordering::SeqCst), 1, "no reconnect");
    running.stop();
}

#[test]
fn a_leaving_provider_agent_whose_connection_closes_is_not_reconnected() {
    let mute = mute_agent();
    let (running, mut client, _dir) =
        in_flight_on_a_leaving_agent(&mute, &["--timeout-ms", "10000"]);
    // The provider-agent goes away with the call in flight.
    for s in mute.conns.lock().expect("lock").iter() {
        s.shutdown(std::net::Shutdown::Both).expect("shutdown");
    }
    let a = read_answers(&mut client, 1, Duration::from_secs(5)).remove(0);
    assert_eq!(a.status, 503, "{a:?}");
    assert!(a.body.contains("lost"), "{a:?}");
    wait_unlisted(&running, mute.addr);
    // A reconnect would come within 100 ms (the first backoff), at most 1 s later.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(mute.accepted.load(Ordering::SeqCst), 1, "no reconnect");
    running.stop();
}

/// A client trickling its request to the admin port (a byte every 500 ms, each read
/// within the old per-read timeout) neither holds up `/healthz` for others, nor keeps
/// its connection past the admin port's deadline for a whole request.
#[test]
fn a_slow_admin_client_does_not_block_healthz() {
    let agent = fake_agent(Mode::Hash);
    let running = consumer(&[agent.addr], &["--admin", "127.0.0.1:0"]);
    let admin = running.admin_addr().expect("an admin port");
    wait_ready(&running);
    let mut slow = TcpStream::connect(admin).expect("connect admin");
    let mut trickle = slow.try_clone().expect("clone");
    let started = Instant::now();
    std::thread::spawn(move || {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" {
            if trickle.write_all(&[*b]).is_err() || started.elapsed() > Duration::from_secs(8) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    for _ in 0..3 {
        let t = Instant::now();
        let (status, body) = admin_get(admin, "/healthz");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "/healthz took {:?} behind a slow client",
            t.elapsed()
        );
    }
    // The slow client is cut off at the deadline (2 s), though it is still sending.
    slow.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "the slow client was kept {took:?}"
    );
    running.stop();
}

/// Zero-config: a service the consumer-agent was never told about is watched from its
/// first call, which waits for the registry's list and the provider-agent's connection
/// instead of failing. A service nobody serves is answered 503 at once (the registry's
/// empty list) and forgotten again; the services watched at once are bounded.
#[test]
fn a_service_never_named_is_discovered_on_its_first_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    let reg = registry::open(Some(&url)).expect("registry");
    let agent = fake_agent(Mode::Hash);
    let _registered = reg
        .register(Instance::new(SERVICE, agent.addr.to_string()))
        .expect("register");
    let running = consumer_with(
        &url,
        &["--service", "com.example.Warm", "--admin", "127.0.0.1:0"],
    );
    let admin = running.admin_addr().expect("an admin port");
    // The first call of the race's service, never named to the consumer-agent.
    let started = Instant::now();
    let first = exchange(running.http_addr(), &race_request("first"), 1).remove(0);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body, string_hash_code("first").to_string());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Services nobody serves: 503 naming each, well before the 3 s timeout.
    for i in 0..50 {
        let service = format!("com.example.Nobody{i}");
        let started = Instant::now();
        let none = exchange(running.http_addr(), &json_call(&service), 1).remove(0);
        assert_eq!(none.status, 503, "{none:?}");
        assert!(none.body.contains(&service), "{none:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    // ... and forgotten: only the served and the --service ones are still watched.
    let forgotten = test_support::wait::wait_until(Duration::from_secs(10), || {
        let (_, body) = admin_get(admin, "/registry");
        let listed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let names: Vec<&String> = listed.as_object().expect("an object").keys().collect();
        names.len() == 2
    });
    assert!(forgotten, "{}", admin_get(admin, "/registry").1);
    let again = exchange(running.http_addr(), &race_request("again"), 1).remove(0);
    assert_eq!(again.body, string_hash_code("again").to_string());
    running.stop();

    // Bounded: with room for two, a third service at once is refused, naming the flag.
    let running = consumer_with(
        &url,
        &["--service", "com.example.Warm", "--max-services", "2"],
    );
    let first = exchange(running.http_addr(), &race_request("first"), 1).remove(0);
    assert_eq!(first.status, 200, "{first:?}");
    let third = exchange(running.http_addr(), &json_call("com.example.Third"), 1).remove(0);
    assert_eq!(third.status, 503, "{third:?}");
    assert!(third.body.contains("--max-services"), "{third:?}");
    running.stop();
}

/// A JSON invocation of `service.m()`.
fn json_call(service: &str) -> Vec<u8> {
    let body = format!(r#"{{"interface":"{service}","method":"m","arguments":[]}}"#);
    format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
