//! Mutual TLS to provider-agents (`--tls-cert`, `--tls-key`, `--tls-ca`) and TLS on the
//! HTTP listener (`--http-tls-cert`, `--http-tls-key`, and `--http-tls-ca` to ask callers
//! for certificates: their identities are what traffic rules' `match.callers` names).
//!
//! The client configuration verifies a provider-agent's chain against the CA but not a
//! host name (`reactor::tls_files::CaOnlyVerifier`): provider-agents' certificates name
//! workloads (a SPIFFE URI), not the addresses the registry lists. Who the peer must be
//! comes from the registry instead: once the handshake is over, the loop compares the
//! certificate's identity with the instance's `tls.identity` metadata and aborts the
//! connection before any call if they differ (see `upstream_conns.rs`).
//!
//! A watcher thread checks both sets of files once a second; a valid change replaces
//! the configuration new connections take (open ones keep theirs). Without the crate's
//! `tls` feature the flags are refused.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use reactor::{ConnId, Ctx, Handler};
use std::sync::mpsc::{RecvTimeoutError, Sender};

use crate::config::Config;
use crate::metrics::Metrics;

/// How often the certificate files are checked for changes.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
const POLL: Duration = Duration::from_secs(1);

/// The client configuration for connections to provider-agents, replaced when the
/// certificate files change (read once per connect).
#[derive(Debug)]
pub(crate) struct ClientTls {
    #[cfg(feature = "tls")]
    config: Mutex<Arc<reactor::rustls::ClientConfig>>,
    #[cfg(not(feature = "tls"))]
    #[allow(dead_code)]
    config: Mutex<Arc<()>>,
}

impl ClientTls {
    /// The configuration a new connection takes.
    #[cfg(feature = "tls")]
    pub(crate) fn config(&self) -> Arc<reactor::rustls::ClientConfig> {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The watcher thread; dropping the sender stops it.
#[derive(Debug)]
pub(crate) struct Watcher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Stops the thread and waits for it.
    pub(crate) fn stop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What TLS the agent runs: the client side to provider-agents (with its watcher), and
/// the HTTP listener's acceptor.
#[derive(Debug, Default)]
pub(crate) struct Tls {
    pub(crate) client: Option<Arc<ClientTls>>,
    pub(crate) watcher: Option<Watcher>,
    #[cfg(feature = "tls")]
    pub(crate) http: Option<reactor::TlsAcceptor>,
}

/// Loads the certificate files the flags name (all three TLS flags or none; both HTTP
/// TLS flags or none) and starts the watcher that reloads them.
#[cfg(feature = "tls")]
pub(crate) fn start(config: &Config, metrics: &Arc<Metrics>) -> Result<Tls, String> {
    use reactor::tls_files::{identity_name, FileWatcher, TlsFiles};
    let mut tls = Tls::default();
    let http = match (&config.http_tls_cert, &config.http_tls_key) {
        (None, None) if config.http_tls_ca.is_none() => None,
        (Some(cert), Some(key)) => {
            let files = TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: config.http_tls_ca.clone(),
            };
            let client_auth = files.ca.is_some();
            let (watcher, loaded) = FileWatcher::start(files, POLL)?;
            let acceptor = reactor::TlsAcceptor::new(loaded.server_config(client_auth)?);
            metrics.http_tls_loaded(loaded.not_after, false);
            tls.http = Some(acceptor.clone());
            Some((watcher, acceptor, client_auth))
        }
        _ => {
            return Err(
                "--http-tls-cert and --http-tls-key go together (and --http-tls-ca needs them)"
                    .into(),
            )
        }
    };
    let agent = match (&config.tls_cert, &config.tls_key, &config.tls_ca) {
        (None, None, None) => None,
        (Some(cert), Some(key), Some(ca)) => {
            let files = TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: Some(ca.clone()),
            };
            let (watcher, loaded) = FileWatcher::start(files, POLL)?;
            let client = Arc::new(ClientTls {
                config: Mutex::new(loaded.client_config_ca_only()?),
            });
            metrics.tls_loaded(loaded.not_after, false);
            log::info!(
                "mutual TLS to provider-agents: identity {}, certificate valid until {} (Unix)",
                identity_name(&loaded.identity)
                    .as_deref()
                    .unwrap_or("(none)"),
                loaded.not_after
            );
            tls.client = Some(client.clone());
            Some((watcher, client))
        }
        _ => {
            return Err(
                "--tls-cert, --tls-key and --tls-ca go together: give all three or none".into(),
            )
        }
    };
    if http.is_none() && agent.is_none() {
        return Ok(tls);
    }
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let m = metrics.clone();
    let (mut http, mut agent) = (http, agent);
    let thread = std::thread::Builder::new()
        .name("consumer-tls".into())
        .spawn(move || loop {
            let now = std::time::Instant::now();
            let due = [
                http.as_ref().map(|(w, ..)| w.until_due(now)),
                agent.as_ref().map(|(w, _)| w.until_due(now)),
            ];
            let wait = due.into_iter().flatten().min().unwrap_or(POLL);
            match stopped.recv_timeout(wait.max(Duration::from_millis(10))) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => break,
            }
            let now = std::time::Instant::now();
            if let Some((watcher, client)) = agent.as_mut() {
                let reloaded = watcher
                    .poll(now)
                    .map(|r| r.and_then(|l| Ok((l.client_config_ca_only()?, l.not_after))));
                match reloaded {
                    None => {}
                    Some(Ok((config, not_after))) => {
                        *client.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
                        m.tls_loaded(not_after, true);
                        log::info!("TLS certificate reloaded: valid until {not_after} (Unix)");
                    }
                    Some(Err(e)) => {
                        log::error!("TLS certificate not reloaded: {e}; the previous one stays");
                        m.tls_reload_failed();
                    }
                }
            }
            if let Some((watcher, acceptor, client_auth)) = http.as_mut() {
                let reloaded = watcher
                    .poll(now)
                    .map(|r| r.and_then(|l| Ok((l.server_config(*client_auth)?, l.not_after))));
                match reloaded {
                    None => {}
                    Some(Ok((config, not_after))) => {
                        acceptor.set_config(config);
                        m.http_tls_loaded(not_after, true);
                        log::info!("HTTP TLS certificate reloaded: valid until {not_after} (Unix)");
                    }
                    Some(Err(e)) => {
                        log::error!(
                            "HTTP TLS certificate not reloaded: {e}; the previous one stays"
                        );
                        m.tls_reload_failed();
                    }
                }
            }
        })
        .map_err(|e| e.to_string())?;
    tls.watcher = Some(Watcher {
        stop: Some(stop),
        thread: Some(thread),
    });
    Ok(tls)
}

/// Without the `tls` feature: the TLS flags are refused.
#[cfg(not(feature = "tls"))]
pub(crate) fn start(config: &Config, _metrics: &Arc<Metrics>) -> Result<Tls, String> {
    let _: Option<(Sender<()>, RecvTimeoutError)> = None;
    let any = [
        &config.tls_cert,
        &config.tls_key,
        &config.tls_ca,
        &config.http_tls_cert,
        &config.http_tls_key,
        &config.http_tls_ca,
    ]
    .iter()
    .any(|f| f.is_some());
    if any {
        return Err(
            "TLS flags: this consumer-agent was built without TLS (cargo feature `tls`)".into(),
        );
    }
    Ok(Tls::default())
}

/// The identity the peer of an open TLS connection proved: its certificate's SPIFFE ID,
/// else `dns:` and its first DNS name.
/// Whether the connection is TLS (its session cannot move to another process).
pub(crate) fn is_tls<H: Handler>(cx: &Ctx<'_, H>, id: ConnId) -> bool {
    #[cfg(feature = "tls")]
    return cx.is_tls(id);
    #[cfg(not(feature = "tls"))]
    {
        let _ = (cx, id);
        false
    }
}

pub(crate) fn peer_identity<H: Handler>(cx: &Ctx<'_, H>, id: ConnId) -> Option<String> {
    #[cfg(feature = "tls")]
    return cx
        .peer_identity(id)
        .as_ref()
        .and_then(reactor::tls_files::identity_name);
    #[cfg(not(feature = "tls"))]
    {
        let _ = (cx, id);
        None
    }
}

/// This loop's failed TLS handshakes so far.
pub(crate) fn handshake_failures<H: Handler>(cx: &Ctx<'_, H>) -> u64 {
    #[cfg(feature = "tls")]
    return cx.tls_stats().handshake_failures;
    #[cfg(not(feature = "tls"))]
    {
        let _ = cx;
        0
    }
}
