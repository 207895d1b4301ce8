//! Memory of idle TLS connections: thousands of mutual-TLS connections complete their
//! handshake, exchange a message and go idle; the server process's resident memory
//! grows by at most 16 KiB per connection. The clients run in a child process (this
//! test binary run again), so only the server's side is measured.

mod tls_util;
mod util;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use reactor::rustls::pki_types::pem::PemObject;
use reactor::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use reactor::rustls::{ClientConfig, RootCertStore};
use reactor::{Builder, CloseReason, Config, Conn, Ctx, Handler, TlsAcceptor};
use tls_util::*;
use util::*;

const CONNECTIONS: usize = 4_000;
/// The product's target for an idle TLS connection.
const TARGET_BYTES: usize = 16 * 1024;

/// `VmRSS` of this process, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Echoes; counts opened connections and echoed bytes.
#[derive(Debug)]
struct CountingEcho {
    opened: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl Handler for CountingEcho {
    type Tag = ();
    type Msg = ();
    type Timer = ();
    fn opened(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>) {
        self.opened.fetch_add(1, Ordering::SeqCst);
    }
    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        cx.write(conn.id, input);
        self.bytes.fetch_add(input.len(), Ordering::SeqCst);
        input.len()
    }
}

#[test]
fn idle_tls_connections_hold_at_most_16_kib_each() {
    if let Ok(dir) = std::env::var("REACTOR_TLS_MEMORY_CLIENT") {
        return clients(&dir);
    }
    let dir = std::env::temp_dir().join(format!("reactor-tls-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let server_id = ca.issue(
        &["server.test"],
        &["spiffe://test/provider"],
        Validity::Good,
    );
    let client_id = client_ca.issue(&[], &["spiffe://test/consumer"], Validity::Good);
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("client.pem"), &client_id.cert_pem).unwrap();
    std::fs::write(dir.join("client.key"), &client_id.key_pem).unwrap();

    let opened = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicUsize::new(0));
    let (o, b) = (opened.clone(), bytes.clone());
    let server = Running::new(
        Builder::new(Config {
            backlog: 8192,
            ..Config::default()
        })
        .listen_tls(
            any_port(),
            (),
            TlsAcceptor::new(server_config(&server_id, Some(&client_ca))),
        )
        .start(move |_, _| CountingEcho {
            opened: o.clone(),
            bytes: b.clone(),
        })
        .unwrap(),
    );
    std::fs::write(dir.join("addr"), server.addr().to_string()).unwrap();

    // Warm up: one connection allocates the loop's TLS buffers (shared by all).
    let mut warm = tls_client(
        server.addr(),
        client_config(&ca, Some(&client_id)),
        "server.test",
    );
    tls_ping(&mut warm, b"warm");
    drop(warm);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let before = rss();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "idle_tls_connections_hold_at_most_16_kib_each",
            "--nocapture",
        ])
        .env("REACTOR_TLS_MEMORY_CLIENT", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.trim() == "READY");
    assert!(ready, "the client process failed");
    // The echo is written before the handler counts its bytes: the client may see the
    // last echo (and say READY) a moment before the count is made.
    test_support::wait::wait_until(std::time::Duration::from_secs(10), || {
        opened.load(Ordering::SeqCst) == CONNECTIONS + 1
            && bytes.load(Ordering::SeqCst) == 4 * CONNECTIONS + 4
    });
    assert_eq!(opened.load(Ordering::SeqCst), CONNECTIONS + 1);
    assert_eq!(bytes.load(Ordering::SeqCst), 4 * CONNECTIONS + 4);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let after = rss();
    let per = after.saturating_sub(before) / CONNECTIONS;
    println!(
        "{CONNECTIONS} idle mutual-TLS connections: RSS {} KiB -> {} KiB, {per} bytes each",
        before / 1024,
        after / 1024
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    server.shutdown();
    assert!(per <= TARGET_BYTES, "{per} bytes per idle TLS connection");
}

/// The child process: opens the connections, sends 4 bytes on each, waits for every
/// echo, says READY, and holds them until killed.
fn clients(dir: &str) {
    let dir = std::path::Path::new(dir);
    let addr = std::fs::read_to_string(dir.join("addr"))
        .unwrap()
        .parse()
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_file(dir.join("client.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(dir.join("client.key")).unwrap();
    let config = Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    );
    let reactor = Builder::new(Config::default())
        .start(move |_, _| Dialer {
            addr,
            config: config.clone(),
            started: 0,
            echoed: 0,
        })
        .unwrap();
    reactor.join();
}

#[derive(Debug)]
struct Dialer {
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
    started: usize,
    echoed: usize,
}

impl Dialer {
    /// Keeps a few hundred handshakes in flight, not thousands at once.
    fn more(&mut self, cx: &mut Ctx<'_, Self>) {
        while self.started < CONNECTIONS && self.started - self.echoed < 200 {
            let id = cx
                .connect_tls(
                    self.addr,
                    (),
                    Some(LIMIT),
                    self.config.clone(),
                    name("server.test"),
                )
                .unwrap();
            cx.write(id, &(self.started as u32).to_le_bytes());
            self.started += 1;
        }
    }
}

impl Handler for Dialer {
    type Tag = ();
    type Msg = ();
    type Timer = ();
    fn started(&mut self, cx: &mut Ctx<'_, Self>) {
        self.more(cx);
    }
    fn data(&mut self, cx: &mut Ctx<'_, Self>, _: Conn<()>, input: &[u8]) -> usize {
        if input.len() < 4 {
            return 0;
        }
        self.echoed += 1;
        if self.echoed == CONNECTIONS {
            println!("READY");
            std::io::stdout().flush().unwrap();
        }
        self.more(cx);
        4
    }
    fn closed(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, reason: CloseReason) {
        eprintln!("client connection closed: {reason:?}");
        std::process::exit(1);
    }
}
