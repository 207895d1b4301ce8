//! `reactor::tls_files`: PEM files loaded into rustls configurations, identities and
//! expiry read from them, changes noticed, a name-blind but CA-checked client verifier.

#![cfg(target_os = "linux")]

mod tls_util;
mod util;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reactor::tls_files::{identity_name, FileWatcher, TlsFiles};
use reactor::{Builder, Config, TlsAcceptor};
use tls_util::*;
use util::*;

fn echo(config: std::sync::Arc<reactor::rustls::ServerConfig>) -> Running<()> {
    let (make, _rx) = tls_echo(false);
    let r = Builder::new(Config::default())
        .listen_tls(any_port(), (), TlsAcceptor::new(config))
        .start(make)
        .expect("start TLS echo");
    Running::new(r)
}

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("tls-files-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &std::path::Path, ca: &Ca, id: &Identity) -> TlsFiles {
    std::fs::write(dir.join("cert.pem"), &id.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &id.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca: Some(dir.join("ca.pem")),
    }
}

#[test]
fn loads_checks_and_watches_pem_files() {
    let dir = temp_dir("load");
    let ca = Ca::new("files CA");
    let id = ca.issue(&["svc.mesh"], &["spiffe://mesh/provider"], Validity::Good);
    let files = write(&dir, &ca, &id);
    let loaded = files.load().expect("loads");
    assert_eq!(
        identity_name(&loaded.identity).as_deref(),
        Some("spiffe://mesh/provider")
    );
    assert!(loaded.not_after > 0);
    loaded
        .server_config(true)
        .expect("a mutual TLS server configuration");
    loaded
        .client_config_ca_only()
        .expect("a client configuration");

    // DNS only: `dns:` and the name.
    let dns = ca.issue(&["only.dns"], &[], Validity::Good);
    let loaded = write(&dir, &ca, &dns).load().unwrap();
    assert_eq!(
        identity_name(&loaded.identity).as_deref(),
        Some("dns:only.dns")
    );

    // A key of another certificate, or garbage: refused.
    std::fs::write(dir.join("key.pem"), &id.key_pem).unwrap();
    assert!(files.load().is_err(), "a key that does not match");
    std::fs::write(dir.join("cert.pem"), "garbage").unwrap();
    assert!(files.load().unwrap_err().contains("cert.pem"));

    // The watcher: a change is reported once, valid or not.
    let files = write(&dir, &ca, &id);
    let (mut w, _) = FileWatcher::start(files, Duration::from_millis(10)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(w.poll(Instant::now()).is_none(), "no change");
    std::fs::write(dir.join("cert.pem"), "garbage").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(matches!(w.poll(Instant::now()), Some(Err(_))));
    std::thread::sleep(Duration::from_millis(20));
    assert!(w.poll(Instant::now()).is_none(), "reported once");
    let renewed = ca.issue(&[], &["spiffe://mesh/provider"], Validity::Good);
    write(&dir, &ca, &renewed);
    std::thread::sleep(Duration::from_millis(20));
    assert!(matches!(w.poll(Instant::now()), Some(Ok(_))));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_ca_only_verifier_checks_the_chain_not_the_name() {
    let dir = temp_dir("verify");
    let ca = Ca::new("verify CA");
    let server_id = ca.issue(&[], &["spiffe://mesh/provider"], Validity::Good);
    let client_id = ca.issue(&[], &["spiffe://mesh/consumer"], Validity::Good);
    let server = echo(server_config(&server_id, Some(&ca)));
    let client = write(&dir, &ca, &client_id).load().unwrap();
    // The certificate names no IP, yet the handshake to an IP completes.
    let mut c = tls_client(
        server.addr(),
        client.client_config_ca_only().unwrap(),
        "127.0.0.1",
    );
    tls_ping(&mut c, b"hello");
    // A server of another CA is refused.
    let other = Ca::new("other CA");
    let stranger = echo(server_config(
        &other.issue(&[], &["spiffe://mesh/provider"], Validity::Good),
        None,
    ));
    let err = handshake_error(
        stranger.addr(),
        client.client_config_ca_only().unwrap(),
        "127.0.0.1",
    );
    assert!(!err.is_empty());
    // An expired one too.
    let expired = echo(server_config(
        &ca.issue(&[], &["spiffe://mesh/provider"], Validity::Expired),
        None,
    ));
    let err = handshake_error(
        expired.addr(),
        client.client_config_ca_only().unwrap(),
        "127.0.0.1",
    );
    assert!(err.to_lowercase().contains("expired"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
