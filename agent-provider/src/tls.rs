//! Mutual TLS on the agent listener (`--tls-cert`, `--tls-key`, `--tls-ca`): the
//! certificate files loaded and watched (`reactor::tls_files`), the acceptor every loop
//! shares, and the peer identity a handshake proves.
//!
//! Without the crate's `tls` feature, the flags are refused and nothing else changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reactor::{ConnId, Ctx, Handler};

use crate::config::Config;
use crate::metrics::Metrics;

/// The instance metadata key publishing the agent's TLS identity (its certificate's
/// SPIFFE ID, else `dns:` and its first DNS name): consumer-agents check the
/// provider-agent they reach presents it.
pub const IDENTITY_META: &str = "tls.identity";

/// How often the certificate files are checked for changes.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
const POLL: Duration = Duration::from_secs(1);

/// The TLS state of the control thread.
#[derive(Debug)]
pub(crate) struct Tls {
    #[cfg(feature = "tls")]
    watcher: reactor::tls_files::FileWatcher,
    /// Shared with every loop's listener: rotated by [`Tls::check`].
    #[cfg(feature = "tls")]
    pub(crate) acceptor: reactor::TlsAcceptor,
    /// This agent's identity, published as [`IDENTITY_META`].
    pub(crate) identity: Option<String>,
}

/// The three TLS flags: all or none.
fn flags(config: &Config) -> Result<Option<[&std::path::Path; 3]>, String> {
    match (&config.tls_cert, &config.tls_key, &config.tls_ca) {
        (None, None, None) => Ok(None),
        (Some(c), Some(k), Some(a)) => Ok(Some([c, k, a])),
        _ => Err("--tls-cert, --tls-key and --tls-ca go together: give all three or none".into()),
    }
}

impl Tls {
    /// Loads the certificate files, if TLS is asked for.
    #[cfg(feature = "tls")]
    pub(crate) fn start(config: &Config, metrics: &Metrics) -> Result<Option<Tls>, String> {
        use reactor::tls_files::{identity_name, FileWatcher, TlsFiles};
        let Some([cert, key, ca]) = flags(config)? else {
            return Ok(None);
        };
        let files = TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            ca: Some(ca.to_owned()),
        };
        let (watcher, loaded) = FileWatcher::start(files, POLL)?;
        let server = loaded.server_config(true)?;
        let identity = identity_name(&loaded.identity);
        metrics.tls_loaded(loaded.not_after, false);
        log::info!(
            "mutual TLS on the agent listener: identity {}, certificate valid until {} (Unix)",
            identity.as_deref().unwrap_or("(none)"),
            loaded.not_after
        );
        Ok(Some(Tls {
            watcher,
            acceptor: reactor::TlsAcceptor::new(server),
            identity,
        }))
    }

    /// Without the `tls` feature: the flags are refused.
    #[cfg(not(feature = "tls"))]
    pub(crate) fn start(config: &Config, _metrics: &Metrics) -> Result<Option<Tls>, String> {
        match flags(config)? {
            None => Ok(None),
            Some(_) => Err(
                "--tls-cert: this provider-agent was built without TLS (cargo feature `tls`)"
                    .into(),
            ),
        }
    }

    /// How long until the files are due for a check.
    pub(crate) fn until_due(&self, now: Instant) -> Duration {
        #[cfg(feature = "tls")]
        return self.watcher.until_due(now);
        #[cfg(not(feature = "tls"))]
        {
            let _ = now;
            Duration::from_secs(3600)
        }
    }

    /// If the files changed: a valid new certificate goes to the acceptor (new
    /// connections get it, open ones keep theirs); invalid files are logged and counted,
    /// and the certificate in use stays. Returns the new identity when the new
    /// certificate names another one than before (the registry must publish it).
    pub(crate) fn check(&mut self, metrics: &Metrics) -> Option<Option<String>> {
        #[cfg(feature = "tls")]
        match self.watcher.poll(Instant::now()) {
            None => {}
            Some(Ok(loaded)) => match loaded.server_config(true) {
                Ok(server) => {
                    self.acceptor.set_config(server);
                    metrics.tls_loaded(loaded.not_after, true);
                    log::info!(
                        "TLS certificate reloaded: valid until {} (Unix)",
                        loaded.not_after
                    );
                    let identity = reactor::tls_files::identity_name(&loaded.identity);
                    if identity != self.identity {
                        log::info!(
                            "the reloaded certificate names {identity:?} (was {:?}): publishing it",
                            self.identity
                        );
                        self.identity = identity.clone();
                        return Some(identity);
                    }
                }
                Err(e) => {
                    log::error!("TLS certificate not reloaded: {e}; the previous one stays");
                    metrics.tls_reload_failed();
                }
            },
            Some(Err(e)) => {
                log::error!("TLS certificate not reloaded: {e}; the previous one stays");
                metrics.tls_reload_failed();
            }
        }
        #[cfg(not(feature = "tls"))]
        let _ = metrics;
        None
    }
}

/// Who the peer of an open connection is, as its TLS handshake proved it: the SPIFFE
/// ID of its certificate, else `dns:` and its first DNS name; `None` on a plaintext
/// connection.
pub(crate) fn peer_identity<H: Handler>(cx: &Ctx<'_, H>, id: ConnId) -> Option<Arc<str>> {
    #[cfg(feature = "tls")]
    return cx
        .peer_identity(id)
        .as_ref()
        .and_then(reactor::tls_files::identity_name)
        .map(Arc::from);
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
