//! Load and watch PEM files: a certificate chain, its key and (for mutual TLS) a CA,
//! turned into rustls configurations, and polled for changes so a certificate renewed
//! on disk is picked up without a restart.
//!
//! Generic: the embedder decides what to do with a new configuration (e.g.
//! [`TlsAcceptor::set_config`](crate::TlsAcceptor::set_config) on the server side, or
//! a new `ClientConfig` for new connections on the client side).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use super::PeerIdentity;

/// The PEM files of one TLS identity: a certificate chain (leaf first), its private key,
/// and optionally the CA certificates peers are verified against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Trusted CA certificates (for verifying peers); `None` for a server that does not
    /// ask clients for certificates.
    pub ca: Option<PathBuf>,
}

/// The contents of [`TlsFiles`], parsed and checked (the key matches the certificate).
pub struct LoadedTls {
    /// The certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The trusted CAs, if a CA file was given.
    pub roots: Option<Arc<RootCertStore>>,
    /// The leaf's subject alternative names.
    pub identity: PeerIdentity,
    /// The leaf's notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
}

impl fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedTls")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The crypto provider of every configuration built here (rustls's `ring`).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One name for an identity: the SPIFFE ID (else the first URI SAN), else `dns:` and
/// the first DNS SAN; `None` if the certificate names neither.
pub fn identity_name(id: &PeerIdentity) -> Option<String> {
    if let Some(s) = id.spiffe_id().or(id.uris.first().map(String::as_str)) {
        return Some(s.to_owned());
    }
    id.dns_names.first().map(|d| format!("dns:{d}"))
}

impl TlsFiles {
    /// Reads and checks the files.
    ///
    /// # Errors
    /// A file cannot be read, holds no certificate (or key), the key does not match the
    /// certificate, or the leaf certificate does not parse.
    pub fn load(&self) -> Result<LoadedTls, String> {
        let chain: Vec<CertificateDer<'static>> =
            read_certs(&self.cert).map_err(|e| format!("{}: {e}", self.cert.display()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| format!("{}: no certificate", self.cert.display()))?;
        let key = fs::read(&self.key)
            .map_err(|e| e.to_string())
            .and_then(|b| PrivateKeyDer::from_pem_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| format!("{}: {e}", self.key.display()))?;
        let roots = match &self.ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
                    roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("{}: no CA certificate", ca.display()));
                }
                Some(Arc::new(roots))
            }
            None => None,
        };
        let identity = PeerIdentity::from_certificate(leaf)
            .map_err(|e| format!("{}: {e}", self.cert.display()))?;
        let not_after = not_after(leaf).map_err(|e| format!("{}: {e}", self.cert.display()))?;
        let loaded = LoadedTls {
            chain,
            key,
            roots,
            identity,
            not_after,
        };
        // The key must match the certificate: build a configuration once to check it.
        loaded.server_config(false)?;
        Ok(loaded)
    }

    /// What the files look like on disk now (modification time, length, inode of
    /// each), to notice a change without reading them.
    pub fn stamp(&self) -> FileStamp {
        let one = |p: &Path| {
            fs::metadata(p).ok().map(|m| {
                #[cfg(unix)]
                let ino = std::os::unix::fs::MetadataExt::ino(&m);
                #[cfg(not(unix))]
                let ino = 0;
                (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), ino)
            })
        };
        FileStamp(vec![
            one(&self.cert),
            one(&self.key),
            self.ca.as_deref().and_then(one),
        ])
    }
}

/// See [`TlsFiles::stamp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp(Vec<Option<(SystemTime, u64, u64)>>);

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(certs)
}

/// The notAfter of a DER certificate, in seconds since the Unix epoch.
///
/// # Errors
/// The certificate does not parse.
pub fn not_after(der: &CertificateDer<'_>) -> Result<i64, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    Ok(cert.validity().not_after.timestamp())
}

impl LoadedTls {
    /// A server configuration presenting this certificate; with `client_auth`, clients
    /// must present a certificate chaining to the CA (mutual TLS), which needs a CA.
    ///
    /// # Errors
    /// `client_auth` without a CA file, or rustls refuses the certificate or key.
    pub fn server_config(&self, client_auth: bool) -> Result<Arc<ServerConfig>, String> {
        let provider = crypto_provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if client_auth {
            let roots = self
                .roots
                .clone()
                .ok_or("client certificates asked for, but no CA to verify them")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        builder
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map(Arc::new)
            .map_err(|e| format!("certificate and key: {e}"))
    }

    /// A client configuration presenting this certificate and trusting the CA, whose
    /// verifier checks the server's chain but not its name ([`CaOnlyVerifier`]): the
    /// caller must check the server's identity itself once the connection is open.
    ///
    /// # Errors
    /// No CA file, or rustls refuses the certificate or key.
    pub fn client_config_ca_only(&self) -> Result<Arc<ClientConfig>, String> {
        let provider = crypto_provider();
        let roots = self.roots.clone().ok_or("no CA to verify servers")?;
        let verifier = Arc::new(CaOnlyVerifier {
            roots,
            algs: provider.signature_verification_algorithms,
        });
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map(Arc::new)
            .map_err(|e| format!("certificate and key: {e}"))
    }
}

/// A server certificate verifier that checks the chain against trusted CAs (signature,
/// validity period, server-auth usage; webpki) but **not** the server's name.
///
/// For meshes whose certificates name workloads (a SPIFFE URI SAN) rather than hosts:
/// the server's address says nothing about who it should be, so a hostname check would
/// refuse every peer. The caller must then check who the server is itself, once the
/// handshake is over ([`Ctx::peer_identity`](crate::Ctx::peer_identity)) — against
/// whatever says who should be at that address (e.g. a registry entry) — and close the
/// connection before using it if it is not the expected one.
pub struct CaOnlyVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for CaOnlyVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaOnlyVerifier").finish_non_exhaustive()
    }
}

impl ServerCertVerifier for CaOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Polls [`TlsFiles`] for changes (at most once per `every`): call
/// [`FileWatcher::poll`] from a control thread.
#[derive(Debug)]
pub struct FileWatcher {
    files: TlsFiles,
    stamp: FileStamp,
    every: Duration,
    next: Instant,
}

impl FileWatcher {
    /// Loads the files once (an error is returned, so a start can fail on it) and
    /// remembers their state.
    ///
    /// # Errors
    /// Those of [`TlsFiles::load`].
    pub fn start(files: TlsFiles, every: Duration) -> Result<(FileWatcher, LoadedTls), String> {
        let stamp = files.stamp();
        let loaded = files.load()?;
        let w = FileWatcher {
            files,
            stamp,
            every,
            next: Instant::now() + every,
        };
        Ok((w, loaded))
    }

    /// The files watched.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// How long until the next check is due.
    pub fn until_due(&self, now: Instant) -> Duration {
        self.next.saturating_duration_since(now)
    }

    /// If a check is due and a file changed: the files loaded again (`Some(Ok)`), or why
    /// they are not usable (`Some(Err)`: the caller keeps what it has; the same change
    /// is not reported again, a later one is). `None`: no check due, or no change.
    pub fn poll(&mut self, now: Instant) -> Option<Result<LoadedTls, String>> {
        if now < self.next {
            return None;
        }
        self.next = now + self.every;
        let stamp = self.files.stamp();
        if stamp == self.stamp {
            return None;
        }
        self.stamp = stamp;
        Some(self.files.load())
    }
}
