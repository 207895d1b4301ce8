//! Mutual TLS on the agent link, end to end: a provider-agent with `--tls-cert`,
//! consumer-agents with and without, a mock Dubbo provider, certificates issued by
//! `deploy/tls/issue-certs.sh` (openssl), and openssl's `s_client`/`s_server` as foreign
//! peers.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use codec::java::string_hash_code;
use codec::Decoded;
use test_support::openssl::s_client_exchange;
use util::*;

const SERVICE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";
const DOMAIN: &str = "mesh.test";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

/// Issues certificates with `deploy/tls/issue-certs.sh` into `out` (one CA per `out`).
fn issue(out: &Path, days: &str, names: &[&str]) {
    let st = Command::new("bash")
        .arg(repo().join("deploy/tls/issue-certs.sh"))
        .arg(out)
        .arg(DOMAIN)
        .args(names)
        .env("DAYS", days)
        .stdout(Stdio::null())
        .status()
        .expect("run issue-certs.sh");
    assert!(st.success(), "issue-certs.sh failed");
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// `--tls-*` flags for `name`'s certificate of CA directory `dir`.
fn tls_flags(dir: &Path, name: &str) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        s(&dir.join(format!("{name}.pem"))).into(),
        "--tls-key".into(),
        s(&dir.join(format!("{name}-key.pem"))).into(),
        "--tls-ca".into(),
        s(&dir.join("ca.pem")).into(),
    ]
}

fn metric(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .to_owned()
}

fn start_pa(provider: SocketAddr, registry: &str, tls: &[String]) -> agent_provider::Running {
    let mut args: Vec<String> = [
        "provider-agent",
        "--listen",
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
    let up = Instant::now() + Duration::from_secs(5);
    while !pa.metrics().provider_up() {
        assert!(
            Instant::now() < up,
            "the provider-agent never reached the provider"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    pa
}

fn start_ca(registry: &str, tls: &[String]) -> agent_consumer::Running {
    let mut extra: Vec<&str> = vec!["--service", SERVICE, "--connect-timeout-ms", "500"];
    extra.extend(tls.iter().map(String::as_str));
    consumer_with(registry, &extra)
}

fn call(ca: &agent_consumer::Running) -> Answer {
    exchange(ca.http_addr(), &race_request("x"), 1).remove(0)
}

/// The registry's instances of SERVICE.
fn listed(registry: &str) -> Vec<registry::Instance> {
    let reg = registry::open(Some(registry)).expect("registry");
    let seen = Arc::new(Mutex::new(None));
    let s2 = seen.clone();
    let _w = reg
        .watch(SERVICE, move |list| {
            *s2.lock().unwrap() = Some(list);
        })
        .expect("watch");
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = seen.lock().unwrap().take().filter(|l| !l.is_empty()) {
            return l;
        }
        assert!(Instant::now() < end, "nothing registered");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replaces a file as a deployment does: write another, rename it over.
fn replace_file(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, to).expect("rename");
}

#[test]
fn mutual_tls_serves_trusted_consumers_and_refuses_the_rest() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good");
    let other = dir.path().join("other");
    issue(&good, "90", &["consumer", "provider"]);
    issue(&other, "90", &["consumer"]);
    let registry = format!("file://{}", dir.path().join("registry").display());
    let provider = mock_provider().0;
    let pa = start_pa(provider, &registry, &tls_flags(&good, "provider"));

    // The registry publishes the provider-agent's identity.
    let list = listed(&registry);
    assert_eq!(
        list[0].meta.get("tls.identity").map(String::as_str),
        Some("spiffe://mesh.test/provider"),
        "{list:?}"
    );

    // A consumer-agent with a certificate of the same CA: calls answered.
    let ca = start_ca(&registry, &tls_flags(&good, "consumer"));
    wait_ready(&ca);
    let a = call(&ca);
    assert_eq!(
        (a.status, a.body.clone()),
        (200, string_hash_code("x").to_string()),
        "{a:?}"
    );
    let ct = ca.metrics().render();
    assert_ne!(
        metric(&ct, "consumer_tls_cert_expiry_timestamp_seconds"),
        "0"
    );
    assert_eq!(metric(&ct, "consumer_tls_identity_mismatch_total"), "0");
    let pt = pa.metrics().render();
    assert_ne!(
        metric(&pt, "provider_agent_tls_cert_expiry_timestamp_seconds"),
        "0"
    );

    // A plaintext consumer-agent: never connects, its calls get 503; the
    // provider-agent counts the failed handshakes.
    let plain = start_ca(&registry, &[]);
    let a = call(&plain);
    assert_eq!(a.status, 503, "{a:?}");
    wait_for("handshake failures counted", Duration::from_secs(5), || {
        pa.metrics().tls_handshake_failures() >= 1
    });
    let before = pa.metrics().tls_handshake_failures();
    plain.stop();

    // A consumer-agent whose certificate is from another CA: refused too.
    let mut flags = tls_flags(&other, "consumer");
    flags[5] = s(&good.join("ca.pem")).into(); // it trusts the provider-agent's CA
    let stranger = start_ca(&registry, &flags);
    let a = call(&stranger);
    assert_eq!(a.status, 503, "{a:?}");
    wait_for(
        "the stranger's failed handshakes",
        Duration::from_secs(5),
        || pa.metrics().tls_handshake_failures() > before,
    );
    stranger.stop();

    // Rotation: a new provider certificate (same CA, another expiry) replaces the files.
    let old_expiry = pa.metrics().tls_cert_expiry();
    let renewed = dir.path().join("renewed");
    std::fs::create_dir_all(&renewed).expect("dir");
    for f in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(good.join(f), renewed.join(f)).expect("copy CA");
    }
    issue(&renewed, "30", &["provider"]);
    replace_file(
        &renewed.join("provider-key.pem"),
        &good.join("provider-key.pem"),
    );
    replace_file(&renewed.join("provider.pem"), &good.join("provider.pem"));
    wait_for("the reload", Duration::from_secs(5), || {
        pa.metrics().tls_reloads(true) >= 1
    });
    assert_ne!(pa.metrics().tls_cert_expiry(), old_expiry);
    assert_eq!(pa.metrics().tls_reloads(false), 0);
    // The open connection keeps answering; a new consumer connects with the new cert.
    let a = call(&ca);
    assert_eq!(a.status, 200, "{a:?}");
    let second = start_ca(&registry, &tls_flags(&good, "consumer"));
    wait_ready(&second);
    assert_eq!(call(&second).status, 200);
    second.stop();

    // Invalid files: kept, counted.
    std::fs::write(good.join("provider.pem"), "not a certificate").expect("write");
    wait_for("the refused reload", Duration::from_secs(5), || {
        pa.metrics().tls_reloads(false) >= 1
    });
    assert_eq!(call(&ca).status, 200);
    let pt = pa.metrics().render();
    assert_eq!(
        metric(&pt, "provider_agent_tls_reloads_total{result=\"error\"}"),
        "1"
    );

    ca.stop();
    pa.stop();
}

/// An openssl process, killed on drop.
struct Openssl(Child);

impl Drop for Openssl {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `out` holds a whole HTTP response (headers and `Content-Length` bytes).
fn http_complete(out: &[u8]) -> bool {
    let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&out[..end]);
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .is_some_and(|len| out.len() >= end + 4 + len)
}

/// How long an exchange with `s_client` that should be answered may take.
const ANSWERED_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn a_provider_naming_another_identity_than_the_registry_is_refused() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good");
    issue(&good, "90", &["consumer", "provider", "impostor"]);
    let registry = format!("file://{}", dir.path().join("registry").display());
    // openssl s_server with the impostor's certificate (trusted CA, other identity),
    // registered as the provider-agent `spiffe://mesh.test/provider`.
    let port = test_support::net::free_port().expect("port");
    let server = Openssl(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-accept"])
            .arg(port.to_string())
            .args(["-cert", s(&good.join("impostor.pem"))])
            .args(["-key", s(&good.join("impostor-key.pem"))])
            .args(["-CAfile", s(&good.join("ca.pem")), "-verify", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server"),
    );
    wait_for("s_server", Duration::from_secs(5), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let reg = registry::open(Some(&registry)).expect("registry");
    let _r = reg
        .register(
            registry::Instance::new(SERVICE, format!("127.0.0.1:{port}"))
                .with_meta("tls.identity", "spiffe://mesh.test/provider"),
        )
        .expect("register");
    let ca = start_ca(&registry, &tls_flags(&good, "consumer"));
    wait_for("the mismatch", Duration::from_secs(5), || {
        ca.metrics().tls_identity_mismatches() >= 1
    });
    assert!(!ca.metrics().has_upstream(), "the impostor never opens");
    assert_eq!(call(&ca).status, 503);
    let ct = ca.metrics().render();
    assert_ne!(metric(&ct, "consumer_tls_identity_mismatch_total"), "0");
    ca.stop();
    drop(server);
}

#[test]
fn openssl_s_client_speaks_the_agent_protocol_with_a_client_certificate_only() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good");
    issue(&good, "90", &["consumer", "provider"]);
    let registry = format!("file://{}", dir.path().join("registry").display());
    let pa = start_pa(mock_provider().0, &registry, &tls_flags(&good, "provider"));
    let connect = format!("127.0.0.1:{}", pa.agent_addr().port());
    let mut ping = Vec::new();
    codec::agent::encode_ping(&mut ping, 7);
    let run = |with_cert: bool| -> Vec<u8> {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-quiet", "-connect", &connect])
            .args(["-CAfile", s(&good.join("ca.pem"))]);
        if with_cert {
            cmd.args(["-cert", s(&good.join("consumer.pem"))])
                .args(["-key", s(&good.join("consumer-key.pem"))]);
        }
        // Answered: as soon as a whole frame is back; refused: nothing in 1.5 s.
        let limit = if with_cert {
            ANSWERED_WITHIN
        } else {
            Duration::from_millis(1500)
        };
        s_client_exchange(&mut cmd, &ping, limit, |out| {
            matches!(codec::agent::decode(out), Ok(Decoded::Complete { .. }))
        })
    };
    let out = run(true);
    match codec::agent::decode(&out) {
        Ok(Decoded::Complete {
            msg: codec::agent::Frame::Pong { id },
            ..
        }) => assert_eq!(id, 7),
        other => panic!("no PONG from the provider-agent: {other:?} ({out:?})"),
    }
    let out = run(false);
    assert!(
        out.is_empty(),
        "answered without a client certificate: {out:?}"
    );
    wait_for(
        "the refused handshake counted",
        Duration::from_secs(5),
        || pa.metrics().tls_handshake_failures() >= 1,
    );
    pa.stop();
}

#[test]
fn an_expired_consumer_certificate_is_refused() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good");
    issue(&good, "90", &["provider"]);
    // A certificate whose validity ended: openssl's -days with a negative count.
    issue(&good, "-1", &["consumer"]);
    let registry = format!("file://{}", dir.path().join("registry").display());
    let pa = start_pa(mock_provider().0, &registry, &tls_flags(&good, "provider"));
    let ca = start_ca(&registry, &tls_flags(&good, "consumer"));
    assert_eq!(call(&ca).status, 503);
    wait_for(
        "the refused handshake counted",
        Duration::from_secs(5),
        || pa.metrics().tls_handshake_failures() >= 1,
    );
    ca.stop();
    pa.stop();
}

#[test]
fn http_over_tls_with_http_tls_cert() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good");
    issue(&good, "90", &["consumer", "provider", "front=front.test"]);
    let registry = format!("file://{}", dir.path().join("registry").display());
    let pa = start_pa(mock_provider().0, &registry, &tls_flags(&good, "provider"));
    let mut flags = tls_flags(&good, "consumer");
    flags.extend([
        "--http-tls-cert".to_owned(),
        s(&good.join("front.pem")).to_owned(),
        "--http-tls-key".to_owned(),
        s(&good.join("front-key.pem")).to_owned(),
    ]);
    let ca = start_ca(&registry, &flags);
    wait_ready(&ca);
    let connect = format!("127.0.0.1:{}", ca.http_addr().port());
    let out = s_client_exchange(
        Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", &connect])
            .args(["-CAfile", s(&good.join("ca.pem"))])
            .args(["-servername", "front.test", "-verify_return_error"]),
        &race_request("x"),
        ANSWERED_WITHIN,
        http_complete,
    );
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
    assert!(out.ends_with(&string_hash_code("x").to_string()), "{out:?}");
    ca.stop();
    pa.stop();
}

/// One race call over HTTPS to `addr` with openssl `s_client`, presenting `name`'s
/// certificate of `certs` (none: no client certificate); what came back.
fn https_call(addr: SocketAddr, certs: &Path, name: Option<&str>) -> String {
    let connect = format!("127.0.0.1:{}", addr.port());
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-quiet", "-connect", &connect])
        .args(["-CAfile", s(&certs.join("ca.pem"))])
        .args(["-servername", "front.test", "-verify_return_error"]);
    if let Some(n) = name {
        cmd.args(["-cert", s(&certs.join(format!("{n}.pem")))])
            .args(["-key", s(&certs.join(format!("{n}-key.pem")))]);
    }
    // With a certificate: as soon as the whole answer is back; without: nothing in
    // 800 ms.
    let limit = if name.is_some() {
        ANSWERED_WITHIN
    } else {
        Duration::from_millis(800)
    };
    let out = s_client_exchange(&mut cmd, &race_request("x"), limit, http_complete);
    String::from_utf8_lossy(&out).into_owned()
}

/// `--http-tls-ca`: HTTP callers prove identities with client certificates, traffic
/// rules route by them (`match.callers`), a caller without a certificate is refused;
/// and a new HTTP certificate is picked up while running.
#[test]
fn http_callers_prove_identities_that_rules_route_by() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good");
    let names = [
        "consumer",
        "provider",
        "front=front.test",
        "batch-nightly",
        "web",
    ];
    issue(&good, "90", &names);
    let registry = format!("file://{}", dir.path().join("registry").display());
    let labelled = |pool: &str| {
        let mut flags = tls_flags(&good, "provider");
        flags.extend(["--label".to_owned(), format!("pool={pool}")]);
        start_pa(mock_provider().0, &registry, &flags)
    };
    let (batch, web) = (labelled("batch"), labelled("web"));
    let rules = r#"{"routes": [
        {"name": "batch", "match": {"callers": "spiffe://mesh.test/batch-nightly"},
         "to": [{"labels": {"pool": "batch"}}]},
        {"name": "rest", "to": [{"labels": {"pool": "web"}}]}]}"#;
    registry::open(Some(&registry))
        .expect("registry")
        .put_rules(SERVICE, Some(rules))
        .expect("rules");
    let mut flags = tls_flags(&good, "consumer");
    flags.extend(
        [
            "--http-tls-cert",
            s(&good.join("front.pem")),
            "--http-tls-key",
            s(&good.join("front-key.pem")),
            "--http-tls-ca",
            s(&good.join("ca.pem")),
        ]
        .map(str::to_owned),
    );
    let ca = start_ca(&registry, &flags);
    wait_ready(&ca);
    let ok = |out: &str| {
        out.starts_with("HTTP/1.1 200") && out.ends_with(&string_hash_code("x").to_string())
    };
    // Until the rules are in force, any instance may answer: wait for a batch call
    // that lands on the batch pool, then check each caller's calls land on its pool.
    wait_for("the rules in force", Duration::from_secs(10), || {
        let before = batch.metrics().requests();
        ok(&https_call(ca.http_addr(), &good, Some("batch-nightly")))
            && batch.metrics().requests() > before
    });
    for (caller, pool, other) in [("batch-nightly", &batch, &web), ("web", &web, &batch)] {
        for _ in 0..3 {
            let (mine, theirs) = (pool.metrics().requests(), other.metrics().requests());
            let out = https_call(ca.http_addr(), &good, Some(caller));
            assert!(ok(&out), "{caller}: {out:?}");
            assert_eq!(pool.metrics().requests(), mine + 1, "{caller}'s pool");
            assert_eq!(other.metrics().requests(), theirs, "not {caller}'s pool");
        }
    }
    // No client certificate: refused at the handshake.
    let out = https_call(ca.http_addr(), &good, None);
    assert!(out.is_empty(), "answered without a certificate: {out:?}");

    // A new HTTP certificate (same CA, shorter life): in use within seconds.
    let expiry = |ca: &agent_consumer::Running| {
        metric(
            &ca.metrics().render(),
            "consumer_http_tls_cert_expiry_timestamp_seconds",
        )
    };
    let first = expiry(&ca);
    assert_ne!(first, "0");
    issue(&good, "30", &["front2=front.test"]);
    replace_file(&good.join("front2-key.pem"), &good.join("front-key.pem"));
    replace_file(&good.join("front2.pem"), &good.join("front.pem"));
    wait_for("the new certificate", Duration::from_secs(10), || {
        expiry(&ca) != first
    });
    let out = https_call(ca.http_addr(), &good, Some("web"));
    assert!(ok(&out), "after the reload: {out:?}");
    ca.stop();
    batch.stop();
    web.stop();
}

/// A provider-agent's renewed certificate that names another identity: the registry
/// publishes the new identity (registered again before the old entry goes), and
/// consumer-agents, which check a provider-agent's certificate against it, keep calling:
/// the one already connected, and a new one that connects with the new certificate.
#[test]
fn a_renewed_certificate_naming_another_identity_is_published() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good");
    issue(&good, "90", &["consumer", "provider", "provider-next"]);
    let registry = format!("file://{}", dir.path().join("registry").display());
    let pa = start_pa(mock_provider().0, &registry, &tls_flags(&good, "provider"));
    let identity = |registry: &str| {
        listed(registry)
            .first()
            .and_then(|i| i.meta.get("tls.identity").cloned())
    };
    assert_eq!(
        identity(&registry).as_deref(),
        Some("spiffe://mesh.test/provider")
    );
    let ca = start_ca(&registry, &tls_flags(&good, "consumer"));
    wait_ready(&ca);
    assert_eq!(call(&ca).status, 200);

    replace_file(
        &good.join("provider-next-key.pem"),
        &good.join("provider-key.pem"),
    );
    replace_file(&good.join("provider-next.pem"), &good.join("provider.pem"));
    wait_for(
        "the new identity published",
        Duration::from_secs(10),
        || identity(&registry).as_deref() == Some("spiffe://mesh.test/provider-next"),
    );
    assert_eq!(
        listed(&registry).len(),
        1,
        "one entry, never two, never none"
    );
    for _ in 0..20 {
        assert_eq!(call(&ca).status, 200, "the connected consumer-agent");
    }
    let second = start_ca(&registry, &tls_flags(&good, "consumer"));
    wait_ready(&second);
    assert_eq!(
        call(&second).status,
        200,
        "a new connection, the new identity"
    );
    let ct = second.metrics().render();
    assert_eq!(metric(&ct, "consumer_tls_identity_mismatch_total"), "0");
    second.stop();
    ca.stop();
    pa.stop();
}

/// A client of `--http-tls-cert` trusting the test CA in `certs`.
fn https_client(certs: &Path) -> Arc<reactor::rustls::ClientConfig> {
    use reactor::rustls;
    let pem = std::fs::read(certs.join("ca.pem")).expect("ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.expect("a certificate")).expect("a root");
    }
    let config = rustls::ClientConfig::builder_with_provider(reactor::tls_files::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

type Https = reactor::rustls::StreamOwned<reactor::rustls::ClientConnection, TcpStream>;

fn https_connect(addr: SocketAddr, config: &Arc<reactor::rustls::ClientConfig>) -> Https {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let name = reactor::rustls::pki_types::ServerName::try_from("front.test").expect("name");
    let conn = reactor::rustls::ClientConnection::new(config.clone(), name).expect("client");
    reactor::rustls::StreamOwned::new(conn, tcp)
}

/// One race call on a keep-alive HTTPS connection: its status, whether the answer
/// said `Connection: close`, and its body.
fn https_keep_alive_call(s: &mut Https, param: &str) -> (u16, bool, String) {
    s.write_all(&race_request(param)).expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
            let header = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let len: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
            if buf.len() >= head + len {
                let body = String::from_utf8_lossy(&buf[head..head + len]).into_owned();
                return (resp.code.unwrap_or(0), close, body);
            }
        }
        let n = s.read(&mut chunk).expect("read an answer");
        assert!(n > 0, "the connection closed before its answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A binary upgrade (`--upgrade-socket`, `--upgrade-from`) with `--http-tls-cert`: a
/// TLS session cannot move to the new process as a plaintext connection does, so a
/// keep-alive client over TLS is answered to the end, told `Connection: close` on its
/// next answer and then closed; reconnecting, it reaches the new process.
#[test]
fn an_https_client_is_told_to_reconnect_across_an_upgrade() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    issue(&certs, "90", &["front=front.test"]);
    let registry = format!("file://{}", dir.path().join("registry").display());
    let pa = start_pa(mock_provider().0, &registry, &[]);
    let socket = dir.path().join("upgrade.sock");
    let mut flags = vec![
        "--http-tls-cert".to_owned(),
        s(&certs.join("front.pem")).to_owned(),
        "--http-tls-key".to_owned(),
        s(&certs.join("front-key.pem")).to_owned(),
        "--upgrade-socket".to_owned(),
        s(&socket).to_owned(),
    ];
    let old = start_ca(&registry, &flags);
    wait_ready(&old);
    let addr = old.http_addr();
    let config = https_client(&certs);
    let mut client = https_connect(addr, &config);
    let right = string_hash_code("a").to_string();
    assert_eq!(
        https_keep_alive_call(&mut client, "a"),
        (200, false, right.clone())
    );

    // The new process takes the listener over; the old one drains.
    flags.extend(["--upgrade-from".to_owned(), s(&socket).to_owned()]);
    let new = start_ca(&registry, &flags);
    wait_ready(&new);
    let handed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = handed.clone();
    old.when_handed_over(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
    assert!(
        handed.load(std::sync::atomic::Ordering::SeqCst),
        "handed over"
    );

    // The same connection: answered, and told to go.
    assert_eq!(
        https_keep_alive_call(&mut client, "a"),
        (200, true, right.clone())
    );
    let mut rest = [0u8; 64];
    assert!(
        matches!(client.read(&mut rest), Ok(0) | Err(_)),
        "the old process closes the connection after that answer"
    );
    old.stop();
    // A new connection: the new process, keep-alive as usual.
    let mut client = https_connect(addr, &config);
    assert_eq!(https_keep_alive_call(&mut client, "a"), (200, false, right));
    new.stop();
    pa.stop();
}
