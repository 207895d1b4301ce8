//! A TLS echo server: the `echo` example's handler, unchanged, behind
//! `Builder::listen_tls`. The handler sees plaintext; the loop does the handshake,
//! decrypts into its shared input buffer and encrypts at flush time.
//!
//! ```sh
//! # a certificate and key of your own (PEM), e.g. from deploy/tls/issue-certs.sh:
//! cargo run -p reactor --example tls_echo -- 127.0.0.1:7443 server.pem server.key
//! # or none: a self-signed certificate for localhost is generated and its PEM written
//! # to the file printed, for the client to trust:
//! cargo run -p reactor --example tls_echo -- 127.0.0.1:7443
//! openssl s_client -connect 127.0.0.1:7443 -CAfile /tmp/tls_echo-cert.pem -quiet
//! ```
//!
//! `-- ADDR CERT KEY CLIENT_CA` also requires client certificates from `CLIENT_CA`
//! (mutual TLS) and prints each client's SPIFFE ID as it connects.

use std::net::SocketAddr;
use std::sync::Arc;

use reactor::rustls::pki_types::pem::PemObject;
use reactor::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use reactor::rustls::server::WebPkiClientVerifier;
use reactor::rustls::{self, RootCertStore, ServerConfig};
use reactor::{Builder, CloseReason, Config, Conn, Ctx, Handler, TlsAcceptor};

/// Echoes every byte back, with backpressure (as `examples/echo.rs`).
#[derive(Debug)]
struct Echo;

impl Handler for Echo {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
        let who = cx.peer_identity(conn.id);
        let spiffe = who.as_ref().and_then(|p| p.spiffe_id()).unwrap_or("-");
        println!("{:?} opened: peer {spiffe}", conn.id);
    }

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        cx.write(conn.id, input);
        if cx.is_congested(conn.id) {
            cx.pause_reading(conn.id);
        }
        input.len()
    }

    fn drained(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
        cx.resume_reading(conn.id);
    }

    fn closed(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, reason: CloseReason) {
        if reason.is_tls() {
            let failures = cx.tls_stats().handshake_failures;
            println!("{:?}: {reason:?} ({failures} failed handshakes)", conn.id);
        }
    }
}

type Error = Box<dyn std::error::Error>;

/// A certificate and key from PEM files, or a fresh self-signed one for `localhost`
/// and 127.0.0.1 (its PEM written to a temporary file for clients to trust).
fn identity(
    cert: Option<String>,
    key: Option<String>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    if let (Some(cert), Some(key)) = (cert, key) {
        let chain = CertificateDer::pem_file_iter(&cert)?.collect::<Result<Vec<_>, _>>()?;
        return Ok((chain, PrivateKeyDer::from_pem_file(&key)?));
    }
    self_signed()
}

/// rcgen, a dev-dependency of the crate on Linux only.
#[cfg(not(target_os = "linux"))]
fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    Err("give a certificate and a key: tls_echo ADDR CERT.pem KEY.pem".into())
}

#[cfg(target_os = "linux")]
fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let path = std::env::temp_dir().join("tls_echo-cert.pem");
    std::fs::write(&path, generated.cert.pem())?;
    println!("self-signed certificate for localhost: {}", path.display());
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())?;
    Ok((vec![generated.cert.der().clone()], key))
}

fn main() -> Result<(), Error> {
    env_logger::init();
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:7443").parse()?;
    let (chain, key) = identity(args.next(), args.next())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match args.next() {
        Some(client_ca) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(client_ca)? {
                roots.add(ca?)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    }
    .with_single_cert(chain, key)?;
    let reactor = Builder::new(Config::default())
        .listen_tls(addr, (), TlsAcceptor::new(Arc::new(config)))
        .start(|_, _| Echo)?;
    println!("TLS echo on {}; Ctrl-C to quit", reactor.local_addrs()[0]);
    reactor.join();
    Ok(())
}
