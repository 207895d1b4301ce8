//! TLS as a transport: rustls's unbuffered API driven by the loop.
//!
//! The loop owns every buffer: ciphertext is read into a scratch buffer of the loop's,
//! records are decrypted by rustls and their plaintext copied into the loop's shared
//! input buffer, which the handler reads as it would a plain connection's. Output is
//! the same plaintext `Vec` as for plain connections, encrypted at flush time into a
//! second scratch buffer of the loop's and written with one syscall. A connection keeps
//! a buffer of its own only for a partial record (input) and for ciphertext the socket
//! did not take (output), and frees each once empty: an idle TLS connection holds
//! rustls's session state (keys, the peer's certificates) and nothing else.

pub mod files;
mod session;

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, CommonState, ServerConfig};

use crate::conn::{ConnId, Phase};
use crate::context::Ctx;
use crate::handler::Handler;

pub(crate) use session::{Session, Stop, TlsState, MIN_INPUT_BUFFER, READ_SCRATCH, WRITE_SCRATCH};

/// The server side of TLS for a listener ([`Builder::listen_tls`](crate::Builder::listen_tls)):
/// a rustls [`ServerConfig`] that can be replaced while the reactor runs.
///
/// Every accepted connection takes the configuration current at its accept (one lock
/// and one `Arc` clone per accept, none per read); connections already open keep the
/// one they started with. Clones share the configuration, so a clone kept by the
/// application rotates the certificate of every loop at once:
///
/// ```
/// # use std::sync::Arc;
/// # fn config() -> Arc<rustls::ServerConfig> { unimplemented!() }
/// # fn rotate(acceptor: &reactor::TlsAcceptor) {
/// // e.g. when the certificate files change on disk:
/// acceptor.set_config(config());
/// # }
/// ```
///
/// A certificate can also be chosen per connection without replacing the configuration:
/// give the `ServerConfig` a [`ResolvesServerCert`](rustls::server::ResolvesServerCert)
/// of your own (by SNI name, or reading a certificate that a background thread renews).
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<Mutex<Arc<ServerConfig>>>,
}

impl TlsAcceptor {
    /// An acceptor serving `config`.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        TlsAcceptor {
            config: Arc::new(Mutex::new(config)),
        }
    }

    /// Replaces the configuration: connections accepted from now on use `config`, open
    /// ones keep theirs.
    pub fn set_config(&self, config: Arc<ServerConfig>) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// The configuration new connections get.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A server session for a newly accepted connection.
    pub(crate) fn session(&self) -> Result<Session, rustls::Error> {
        UnbufferedServerConnection::new(self.config()).map(|s| Session::Server(Box::new(s)))
    }
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor").finish_non_exhaustive()
    }
}

/// A TLS session's counters of one loop ([`Ctx::tls_stats`](crate::Ctx::tls_stats)),
/// counted since the loop started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsStats {
    /// Handshakes that completed (the connection was then reported opened).
    pub handshakes: u64,
    /// Handshakes that failed: [`CloseReason::TlsHandshake`](crate::CloseReason::TlsHandshake)
    /// or [`CloseReason::HandshakeTimeout`](crate::CloseReason::HandshakeTimeout).
    pub handshake_failures: u64,
    /// Of those, the handshakes that timed out.
    pub handshake_timeouts: u64,
    /// Open TLS connections closed for a TLS error after the handshake
    /// ([`CloseReason::Tls`](crate::CloseReason::Tls)).
    pub record_failures: u64,
}

/// Who the peer of a TLS connection is, as its certificate says: the subject alternative
/// names of its end-entity certificate ([`Ctx::peer_identity`](crate::Ctx::peer_identity)).
///
/// It is only as trustworthy as the verification the connection's configuration did: a
/// `ServerConfig` with a [`WebPkiClientVerifier`](rustls::server::WebPkiClientVerifier)
/// (mutual TLS), or a `ClientConfig` with the usual server verification, checked the
/// chain to a trusted root before the connection was reported opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI names, e.g. `spiffe://trust-domain/path`.
    pub uris: Vec<String>,
    /// DNS names.
    pub dns_names: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
}

impl PeerIdentity {
    /// Reads the subject alternative names of a DER certificate (with `x509-parser`).
    ///
    /// # Errors
    ///
    /// The certificate does not parse, or its SAN extension is malformed or repeated.
    pub fn from_certificate(der: &CertificateDer<'_>) -> Result<PeerIdentity, String> {
        use x509_parser::extensions::GeneralName;
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
        let mut id = PeerIdentity::default();
        let Some(san) = cert.subject_alternative_name().map_err(|e| e.to_string())? else {
            return Ok(id);
        };
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => id.uris.push((*u).to_owned()),
                GeneralName::DNSName(d) => id.dns_names.push((*d).to_owned()),
                GeneralName::IPAddress(b) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                        id.ips.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                        id.ips.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
        Ok(id)
    }

    /// The first URI name with the `spiffe://` scheme: a SPIFFE ID.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uris
            .iter()
            .map(String::as_str)
            .find(|u| u.starts_with("spiffe://"))
    }
}

impl<H: Handler> Ctx<'_, H> {
    /// Opens an outbound TLS connection tagged `tag`: [`Ctx::connect`], then a TLS
    /// handshake with `config` for the server `server_name` (checked against the
    /// server's certificate by `config`'s verifier; for an IP address, use
    /// `ServerName::IpAddress`). [`Handler::opened`] is called once the handshake
    /// completed; from then on the handler reads and writes plaintext, exactly as on a
    /// plain connection. Writes before that wait, and are encrypted once it is open.
    ///
    /// A failure is reported to [`Handler::closed`] as for [`Ctx::connect`] or, for the
    /// handshake, as [`CloseReason::TlsHandshake`] (the server's certificate refused, no
    /// common protocol version, the server not speaking TLS, ...) or
    /// [`CloseReason::HandshakeTimeout`] (after
    /// [`Config::tls_handshake_timeout`](crate::Config::tls_handshake_timeout), counted
    /// from the completed connect; `timeout` bounds the connect alone). Each of them is a
    /// [`CloseReason::is_connect_failure`].
    ///
    /// # Errors
    ///
    /// Those of [`Ctx::connect`], and `InvalidInput` if rustls refuses `config` (say, it
    /// enables no protocol version).
    ///
    /// [`CloseReason::TlsHandshake`]: crate::CloseReason::TlsHandshake
    /// [`CloseReason::HandshakeTimeout`]: crate::CloseReason::HandshakeTimeout
    /// [`CloseReason::is_connect_failure`]: crate::CloseReason::is_connect_failure
    pub fn connect_tls(
        &mut self,
        addr: SocketAddr,
        tag: H::Tag,
        timeout: Option<Duration>,
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    ) -> io::Result<ConnId> {
        let session = Session::client(config, server_name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let id = self.connect(addr, tag, timeout)?;
        if let Some(c) = self.core.get_mut(id) {
            c.tls = Some(Box::new(TlsState::new(session)));
        }
        Ok(id)
    }

    /// Whether the connection is a TLS one (accepted on a
    /// [`Builder::listen_tls`](crate::Builder::listen_tls) listener, or opened with
    /// [`Ctx::connect_tls`]).
    pub fn is_tls(&self, id: ConnId) -> bool {
        self.core.get(id).is_some_and(|c| c.tls.is_some())
    }

    /// The certificate chain the peer of an open TLS connection presented, its own
    /// (end-entity) certificate first; `None` for a plain connection, one still
    /// handshaking, or a peer that presented none (a client, when the server's
    /// configuration does not ask for one).
    pub fn peer_certificates(&self, id: ConnId) -> Option<&[CertificateDer<'static>]> {
        self.tls_session(id)?.peer_certificates()
    }

    /// The subject alternative names (SPIFFE URI, DNS names, IP addresses) of the peer's
    /// own certificate, parsed on each call (cheap, but keep the result rather than call
    /// it per message); `None` as for [`Ctx::peer_certificates`], or if the certificate
    /// does not parse. Call it in [`Handler::opened`] to decide whether to serve the
    /// peer:
    ///
    /// ```
    /// # use reactor::{Conn, Ctx, Handler};
    /// # struct Server;
    /// # impl Handler for Server {
    /// #     type Tag = ();
    /// #     type Msg = ();
    /// #     type Timer = ();
    /// #     fn data(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, i: &[u8]) -> usize { i.len() }
    /// fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
    ///     let peer = cx.peer_identity(conn.id);
    ///     if peer.as_ref().and_then(|p| p.spiffe_id()) != Some("spiffe://mesh/consumer") {
    ///         cx.abort(conn.id);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn peer_identity(&self, id: ConnId) -> Option<PeerIdentity> {
        let leaf = self.peer_certificates(id)?.first()?;
        match PeerIdentity::from_certificate(leaf) {
            Ok(identity) => Some(identity),
            Err(e) => {
                log::debug!("peer certificate of {id:?}: {e}");
                None
            }
        }
    }

    /// The rustls session of an open TLS connection, for what else it knows: the
    /// negotiated protocol version, cipher suite and ALPN protocol. `None` for a plain
    /// connection or one still handshaking.
    pub fn tls_session(&self, id: ConnId) -> Option<&CommonState> {
        let c = self.core.get(id)?;
        if matches!(c.phase, Phase::Connecting | Phase::Handshaking) {
            return None;
        }
        Some(c.tls.as_ref()?.session.common())
    }

    /// This loop's TLS counters: handshakes completed and failed, TLS errors after them.
    pub fn tls_stats(&self) -> TlsStats {
        self.core.tls_stats
    }
}
