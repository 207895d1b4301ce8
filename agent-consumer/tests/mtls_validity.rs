//! Mutual TLS on the agent link with a certificate that is not valid yet (issue #20),
//! both ways, end to end: a consumer-agent presenting a client certificate valid from
//! 2090 to a provider-agent, and a provider-agent presenting such a server certificate
//! to a consumer-agent. Each is refused at the handshake: the call fails with a clear
//! error, the refusing agent counts the failed handshake in `/metrics` and logs why, and
//! the agents keep serving everyone else. Certificates from `certs` (rcgen: openssl's
//! `x509 -days` cannot start a validity in the future); a mock Dubbo provider.
//!
//! This binary installs its own logger (the agents run in it): it keeps the warnings,
//! so the tests can read the lines an operator would.

mod certs;
mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certs::{Pki, Validity};
use clap::Parser;
use codec::java::string_hash_code;
use util::*;

const SERVICE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";
const DOMAIN: &str = "mesh.test";

// ---------------------------------------------------------------------------------
// Logs

/// Every warning or error logged in this process: `LEVEL [thread] message`.
static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let thread = std::thread::current();
        let line = format!(
            "{} [{}] {}",
            r.level(),
            thread.name().unwrap_or("?"),
            r.args()
        );
        eprintln!("{line}");
        LOGGED.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

fn capture_logs() {
    if log::set_logger(&CAPTURE).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// Waits for a logged line matching `what`; returns it.
fn logged(desc: &str, what: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let found = LOGGED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|l| what(l))
            .cloned();
        if let Some(line) = found {
            return line;
        }
        assert!(
            Instant::now() < end,
            "no log line {desc}; logged: {:#?}",
            LOGGED.lock().unwrap_or_else(|e| e.into_inner())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------
// The mesh

/// A provider-agent with an admin port, once it reached its provider (registered).
fn start_pa(provider: SocketAddr, registry: &str, tls: &[String]) -> agent_provider::Running {
    let mut args: Vec<String> = [
        "provider-agent",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--provider",
        &provider.to_string(),
        "--service",
        SERVICE,
        "--registry",
        registry,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend_from_slice(tls);
    let pa = agent_provider::start(agent_provider::Config::parse_from(args)).expect("start");
    wait_for(
        "the provider-agent's provider",
        Duration::from_secs(5),
        || pa.metrics().provider_up(),
    );
    pa
}

/// Waits until the registry lists `n` instances of SERVICE.
fn wait_listed(registry: &str, n: usize) {
    let reg = registry::open(Some(registry)).expect("registry");
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let _watch = reg
        .watch(SERVICE, move |list| c.store(list.len(), Ordering::SeqCst))
        .expect("watch");
    wait_for("the registration", Duration::from_secs(10), || {
        count.load(Ordering::SeqCst) >= n
    });
}

/// A consumer-agent with an admin port.
fn start_ca(registry: &str, tls: &[String]) -> agent_consumer::Running {
    let mut extra: Vec<&str> = vec![
        "--service",
        SERVICE,
        "--connect-timeout-ms",
        "500",
        "--admin",
        "127.0.0.1:0",
    ];
    extra.extend(tls.iter().map(String::as_str));
    consumer_with(registry, &extra)
}

fn call(ca: &agent_consumer::Running, param: &str) -> Answer {
    exchange(ca.http_addr(), &race_request(param), 1).remove(0)
}

#[track_caller]
fn assert_served(ca: &agent_consumer::Running, param: &str) {
    let a = call(ca, param);
    assert_eq!(
        (a.status, a.body.as_str()),
        (200, string_hash_code(param).to_string().as_str()),
        "{a:?}"
    );
}

/// `GET /metrics` on an admin port.
fn scrape(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).expect("connect to the admin port");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

/// A counter's value in a `/metrics` text.
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The 503 a consumer-agent answers when no provider-agent of SERVICE opens.
#[track_caller]
fn assert_unreachable(a: &Answer) {
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(
        a.body,
        format!("no provider-agent of {SERVICE} is reachable"),
        "{a:?}"
    );
}

// ---------------------------------------------------------------------------------
// Tests

/// (a) The consumer-agent's certificate is not valid yet: the provider-agent refuses
/// it at the handshake (counted in its `/metrics`, logged with rustls's reason), the
/// consumer-agent answers 503, and a good consumer-agent keeps calling meanwhile.
#[test]
fn a_consumer_agent_whose_certificate_is_not_valid_yet_is_refused() {
    capture_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("certs"), DOMAIN);
    pki.issue("provider", Validity::Good);
    pki.issue("consumer", Validity::Good);
    pki.issue("consumer-future", Validity::NotYetValid);
    let registry = format!("file://{}", dir.path().join("registry").display());
    let pa = start_pa(mock_provider().0, &registry, &pki.tls_flags("provider"));
    let pa_admin = pa.admin_addr().expect("the provider-agent's admin port");
    let metric = "provider_agent_tls_handshake_failures_total";

    let good = start_ca(&registry, &pki.tls_flags("consumer"));
    wait_ready(&good);
    assert_served(&good, "before");
    assert_eq!(counter(&scrape(pa_admin), metric), 0);

    // The consumer-agent from the future: it never opens a connection (it keeps
    // trying, with backoff), its calls get 503.
    let future = start_ca(&registry, &pki.tls_flags("consumer-future"));
    assert_unreachable(&call(&future, "x"));
    wait_for(
        "the provider-agent's /metrics counting the refused handshake",
        Duration::from_secs(10),
        || counter(&scrape(pa_admin), metric) >= 1,
    );
    assert!(!future.metrics().has_upstream());
    // The provider-agent says why (rustls: "certificate not valid yet: ...").
    let line = logged(
        "from the provider-agent about the certificate not valid yet",
        |l| {
            l.starts_with("WARN [provider-agent-")
                && l.contains("TLS handshake failed")
                && l.contains("not valid yet")
        },
    );
    assert!(line.contains("127.0.0.1:"), "the peer named: {line}");
    // The refused consumer-agent logs the provider-agent's alert (TLS has no alert for
    // "not yet valid": certificate_expired means "not currently valid"). With TLS 1.3
    // its side of the handshake was over, so this is a TLS error there, not a failed
    // handshake: the refusing side is the one that counts it.
    logged("from the refused consumer-agent about the alert", |l| {
        l.starts_with("WARN [consumer-") && l.contains("received fatal alert: CertificateExpired")
    });

    // Meanwhile, and while the refused one keeps retrying, the good consumer-agent's
    // calls are all answered, on its connection opened before.
    let failures = counter(&scrape(pa_admin), metric);
    for i in 0..20 {
        assert_served(&good, &format!("during-{i}"));
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_unreachable(&call(&future, "again"));
    wait_for(
        "the retried handshakes refused too",
        Duration::from_secs(10),
        || counter(&scrape(pa_admin), metric) > failures,
    );
    assert!(pa.metrics().provider_up(), "the provider-agent is intact");
    future.stop();

    // A new good consumer-agent connects as ever.
    let second = start_ca(&registry, &pki.tls_flags("consumer"));
    wait_ready(&second);
    assert_served(&second, "after");
    assert_served(&good, "after");
    second.stop();
    good.stop();
    pa.stop();
}

/// (b) The provider-agent's certificate is not valid yet: the consumer-agent's
/// verifier (its own, which checks the chain and not the name) refuses it, counts the
/// failed handshake in `/metrics`, logs why, and answers 503 while that is its only
/// provider-agent; with a good provider-agent beside it, every call goes to the good
/// one.
#[test]
fn a_provider_agent_whose_certificate_is_not_valid_yet_is_refused() {
    capture_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("certs"), DOMAIN);
    pki.issue("consumer", Validity::Good);
    pki.issue("provider", Validity::Good);
    pki.issue("provider-future", Validity::NotYetValid);
    let registry = format!("file://{}", dir.path().join("registry").display());
    let future = start_pa(
        mock_provider().0,
        &registry,
        &pki.tls_flags("provider-future"),
    );
    wait_listed(&registry, 1);
    let ca = start_ca(&registry, &pki.tls_flags("consumer"));
    let ca_admin = ca.admin_addr().expect("the consumer-agent's admin port");
    let metric = "consumer_tls_handshake_failures_total";

    assert_unreachable(&call(&ca, "x"));
    wait_for(
        "the consumer-agent's /metrics counting the refused handshake",
        Duration::from_secs(10),
        || counter(&scrape(ca_admin), metric) >= 1,
    );
    assert!(!ca.metrics().has_upstream());
    assert_eq!(future.metrics().requests(), 0, "no call reached it");
    // The consumer-agent says why, naming the provider-agent.
    let addr = future.agent_addr().to_string();
    logged(
        "from the consumer-agent about the provider-agent's certificate",
        |l| {
            l.starts_with("WARN [consumer-")
                && l.contains(&addr)
                && l.contains("TLS handshake failed")
                && l.contains("not valid yet")
        },
    );

    // A good provider-agent joins: the calls go to it, none to the refused one, which
    // the consumer-agent keeps trying and refusing.
    let good = start_pa(mock_provider().0, &registry, &pki.tls_flags("provider"));
    wait_ready(&ca);
    let failures = counter(&scrape(ca_admin), metric);
    for i in 0..20 {
        assert_served(&ca, &format!("call-{i}"));
    }
    assert_eq!(good.metrics().requests(), 20);
    assert_eq!(future.metrics().requests(), 0, "no call reached it");
    wait_for(
        "the retried handshakes refused too",
        Duration::from_secs(10),
        || counter(&scrape(ca_admin), metric) > failures,
    );
    assert_eq!(
        counter(&scrape(ca_admin), "consumer_tls_identity_mismatch_total"),
        0
    );
    ca.stop();
    good.stop();
    future.stop();
}
