//! The idle step over TLS (`bench scenario idle --tls`): the memory an idle TLS
//! connection costs the consumer-agent's HTTP listener (`--http-tls-cert`).
//!
//! A second consumer-agent, on the same registry as the topology's, serves HTTP over
//! TLS; the bench opens the idle step's connections to it (a full handshake each, with
//! rustls), carries one call on each (so every connection has had its buffers in use),
//! and reads the agent's resident memory before, after the handshakes and after the
//! calls. The reactor releases a TLS connection's buffers while it is idle, so the
//! figure after the calls is the one that matters: the target is at most 16 KiB.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reactor::rustls::{self, ClientConnection, RootCertStore, StreamOwned};

use crate::harness;
use crate::load;
use crate::procs::{self, Proc};
use crate::scenario::{AgentUsage, Step};
use test_support::net::free_addr;

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Runs the step against a consumer-agent started here on `registry`, with
/// certificates issued into `dir`; logs go to `logs`.
pub(crate) fn step(
    consumer: &Path,
    registry: &str,
    dir: &Path,
    logs: &Path,
    n: usize,
) -> io::Result<Step> {
    let certs = dir.join("http-certs");
    harness::issue_certs(&certs, &["front=front.bench".into()])?;
    let (listen, admin) = (free_addr()?, free_addr()?);
    let mut args = harness::consumer_agent_args(listen, admin, registry);
    let file = |f: &str| certs.join(f).display().to_string();
    args.extend([
        "--http-tls-cert".into(),
        file("front.pem"),
        "--http-tls-key".into(),
        file("front-key.pem"),
    ]);
    let mut p = Proc::start("consumer-agent-https", consumer, &args, logs)?;
    procs::wait_healthy(admin, Duration::from_secs(20), &mut p)?;
    let config = client_config(&certs.join("ca.pem"))?;
    let (req, expected) = load::race_request(&listen.to_string(), "idle", None);
    // Routing: the first call answered right (the agent learns the service's
    // provider-agents from the registry first).
    let mut routed = false;
    for _ in 0..100 {
        let mut s = connect(listen, &config)?;
        s.write_all(&req)?;
        if matches!(read_answer(&mut s), Ok((200, b)) if harness::is_right(200, &b, expected)) {
            routed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !routed {
        return Err(io::Error::other(format!(
            "the HTTPS consumer-agent never answered right:\n{}",
            p.tail()
        )));
    }
    std::thread::sleep(Duration::from_millis(300));
    let base = p.usage().rss_kb;
    eprintln!("idle-tls: {n} TLS keep-alive connections ...");
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = connect(listen, &config)?;
        // The handshake completes now, not on the first call.
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let connected = p.usage().rss_kb;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok = 0u64;
    for batch in conns.chunks_mut(500) {
        for s in batch.iter_mut() {
            s.write_all(&req)?;
        }
        for s in batch.iter_mut() {
            match read_answer(s) {
                Ok((200, body)) if harness::is_right(200, &body, expected) => ok += 1,
                Ok((200, _)) => *errors.entry("wrong".into()).or_default() += 1,
                Ok((code, _)) => *errors.entry(format!("status_{code}")).or_default() += 1,
                Err(_) => *errors.entry("closed".into()).or_default() += 1,
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let used = p.usage();
    p.check_alive()?;
    drop(conns);
    let per = |kb: u64| kb.saturating_sub(base) as f64 * 1024.0 / n.max(1) as f64;
    let mut extra = BTreeMap::new();
    extra.insert("consumer_rss_base_kb".into(), base as f64);
    extra.insert("bytes_per_tls_conn_connected".into(), per(connected));
    extra.insert("bytes_per_tls_conn_after_a_call".into(), per(used.rss_kb));
    p.stop(Duration::from_secs(3));
    Ok(Step {
        scenario: "idle-tls".into(),
        label: format!("{n} idle TLS conns"),
        connections: n,
        qps: 0.0,
        ceiling: None,
        p50_ms: 0.0,
        p99_ms: 0.0,
        max_ms: 0.0,
        latency: Vec::new(),
        requests: ok + errors.values().sum::<u64>(),
        errors,
        agents: vec![AgentUsage {
            name: "consumer-agent-https".into(),
            cpu_secs: 0.0,
            peak_rss_kb: used.peak_rss_kb,
        }],
        extra,
    })
}

/// A client configuration trusting the test CA in `ca`.
fn client_config(ca: &Path) -> io::Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(ca)?;
    let mut roots = RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| io::Error::other(format!("{}: {e}", ca.display())))?;
        roots.add(cert).map_err(io::Error::other)?;
    }
    let provider = reactor::tls_files::crypto_provider();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> io::Result<TlsStream> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = rustls::pki_types::ServerName::try_from("front.bench")
        .map_err(io::Error::other)?
        .to_owned();
    let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    Ok(StreamOwned::new(conn, tcp))
}

/// One HTTP answer (Content-Length framed) from a TLS stream: status and body.
fn read_answer(s: &mut TlsStream) -> io::Result<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
            let code = resp.code.unwrap_or(0);
            let len = harness::content_length(resp.headers);
            if buf.len() >= head + len {
                return Ok((code, buf[head..head + len].to_vec()));
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
