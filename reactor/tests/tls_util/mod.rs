//! Shared helpers of the TLS tests: a test PKI made with rcgen (CAs, server and client
//! certificates, good and bad), rustls configurations on the ring provider, a blocking
//! rustls client, and a TLS echo handler that reports what it sees.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use reactor::rustls::crypto::ring;
use reactor::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use reactor::rustls::server::WebPkiClientVerifier;
use reactor::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use reactor::{CloseReason, Conn, ConnId, Ctx, EndOfInput, Handler, PeerIdentity};

/// The crypto provider every configuration of the tests uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A certificate authority that issues certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert: CertificateDer<'static>,
}

/// How long a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From 1975 to 4096 (rcgen's default).
    Good,
    /// Ended in 2000.
    Expired,
    /// Starts in 2090.
    NotYetValid,
}

/// A certificate chain and its key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
        }
    }

    pub fn pem(&self) -> String {
        pem_cert(&self.cert)
    }

    /// A leaf certificate with these DNS names (IP addresses parse as IP SANs) and URIs.
    pub fn issue(&self, dns: &[&str], uris: &[&str], validity: Validity) -> Identity {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        for u in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, dns.first().copied().unwrap_or("client"));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        match validity {
            Validity::Good => {}
            Validity::Expired => {
                params.not_before = date_time_ymd(1999, 1, 1);
                params.not_after = date_time_ymd(2000, 1, 1);
            }
            Validity::NotYetValid => {
                params.not_before = date_time_ymd(2090, 1, 1);
                params.not_after = date_time_ymd(2091, 1, 1);
            }
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Identity {
            chain: vec![cert.der().clone()],
            key_der: key.serialize_der(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn pem_cert(der: &CertificateDer<'_>) -> String {
    // rcgen gives PEM for what it made; for a DER we only need the CA's, made above.
    let b64 = base64(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A server configuration with `id`; with `client_ca`, client certificates from it are
/// required (mutual TLS).
pub fn server_config(id: &Identity, client_ca: Option<&Ca>) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.cert.clone()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(
        builder
            .with_single_cert(id.chain.clone(), id.key())
            .unwrap(),
    )
}

/// A TLS 1.2-only server configuration.
pub fn server_config_tls12(id: &Identity) -> Arc<ServerConfig> {
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(id.chain.clone(), id.key())
            .unwrap(),
    )
}

/// A client configuration trusting `ca`, presenting `id` if given.
pub fn client_config(ca: &Ca, id: Option<&Identity>) -> Arc<ClientConfig> {
    client_config_versions(ca, id, rustls::DEFAULT_VERSIONS)
}

pub fn client_config_versions(
    ca: &Ca,
    id: Option<&Identity>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.clone()).unwrap();
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match id {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

pub fn name(s: &str) -> ServerName<'static> {
    ServerName::try_from(s.to_owned()).unwrap()
}

/// A blocking rustls client (rustls's buffered API: not the reactor's code).
pub type Client = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects and completes the handshake.
#[track_caller]
pub fn tls_client(addr: SocketAddr, config: Arc<ClientConfig>, server: &str) -> Client {
    let mut c = tls_client_lazy(addr, config, server);
    c.conn.complete_io(&mut c.sock).unwrap();
    while c.conn.is_handshaking() {
        c.conn.complete_io(&mut c.sock).unwrap();
    }
    c
}

/// Connects; the handshake happens with the first read or write.
#[track_caller]
pub fn tls_client_lazy(addr: SocketAddr, config: Arc<ClientConfig>, server: &str) -> Client {
    let sock = crate::util::client(addr);
    let conn = rustls::ClientConnection::new(config, name(server)).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// The handshake's result for a client expected to fail: the error text.
pub fn handshake_error(addr: SocketAddr, config: Arc<ClientConfig>, server: &str) -> String {
    let mut c = tls_client_lazy(addr, config, server);
    let mut buf = [0; 16];
    // TLS 1.3: a client's certificate is refused after the client's handshake is done,
    // so the error shows on the first read.
    let r = c
        .write_all(b"x")
        .and_then(|_| c.flush())
        .and_then(|_| c.read(&mut buf));
    match r {
        Ok(n) => format!("no error: read {n}"),
        Err(e) => e.to_string(),
    }
}

/// Writes `msg` and reads back as many bytes, asserting they match.
#[track_caller]
pub fn tls_ping(c: &mut Client, msg: &[u8]) {
    c.write_all(msg).unwrap();
    c.flush().unwrap();
    let mut back = vec![0; msg.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// What the [`TlsEcho`] handler saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Opened {
        id: ConnId,
        tls: bool,
        identity: Option<PeerIdentity>,
        version: Option<String>,
    },
    EndOfInput(ConnId),
    Closed(ConnId, CloseReason),
}

/// Echoes with backpressure (as `util::Echo`); reports opens (with the peer's
/// identity), ends of input and closes. With `half_close`, a peer's end of input is
/// answered with `KeepOpen` and our own shutdown once the echo is written.
pub struct TlsEcho {
    pub events: Sender<Event>,
    pub half_close: bool,
    /// The loop's TLS counters, as of the last close.
    pub stats: SharedStats,
}

pub fn tls_echo(
    half_close: bool,
) -> (
    impl Fn(usize, reactor::LoopHandle<()>) -> TlsEcho + Send + Sync,
    Receiver<Event>,
) {
    let (make, rx, _) = tls_echo_with_stats(half_close);
    (make, rx)
}

/// The loop's TLS counters as the handler last saw them.
pub type SharedStats = Arc<std::sync::Mutex<reactor::TlsStats>>;

pub fn tls_echo_with_stats(
    half_close: bool,
) -> (
    impl Fn(usize, reactor::LoopHandle<()>) -> TlsEcho + Send + Sync,
    Receiver<Event>,
    SharedStats,
) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let stats = SharedStats::default();
    let s = stats.clone();
    (
        move |_, _| TlsEcho {
            events: tx.lock().unwrap().clone(),
            half_close,
            stats: s.clone(),
        },
        rx,
        stats,
    )
}

impl Handler for TlsEcho {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
        let version = cx
            .tls_session(conn.id)
            .and_then(|s| s.protocol_version())
            .map(|v| format!("{v:?}"));
        let _ = self.events.send(Event::Opened {
            id: conn.id,
            tls: cx.is_tls(conn.id),
            identity: cx.peer_identity(conn.id),
            version,
        });
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

    fn end_of_input(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) -> EndOfInput {
        let _ = self.events.send(Event::EndOfInput(conn.id));
        if self.half_close {
            cx.shutdown_write(conn.id);
            EndOfInput::KeepOpen
        } else {
            EndOfInput::Close
        }
    }

    fn closed(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, reason: CloseReason) {
        *self.stats.lock().unwrap() = cx.tls_stats();
        let _ = self.events.send(Event::Closed(conn.id, reason));
    }
}

/// The next event, failing after the tests' time limit.
#[track_caller]
pub fn next(rx: &Receiver<Event>) -> Event {
    crate::util::recv(rx, "handler event")
}

/// Waits for the next `Opened` event (skipping nothing else: fails on another event).
#[track_caller]
pub fn opened(rx: &Receiver<Event>) -> (ConnId, Option<PeerIdentity>) {
    match next(rx) {
        Event::Opened { id, identity, .. } => (id, identity),
        e => panic!("expected opened, got {e:?}"),
    }
}

/// Waits for the next `Closed` event.
#[track_caller]
pub fn closed(rx: &Receiver<Event>) -> (ConnId, CloseReason) {
    loop {
        match next(rx) {
            Event::Closed(id, r) => return (id, r),
            Event::EndOfInput(_) => continue,
            e => panic!("expected closed, got {e:?}"),
        }
    }
}
