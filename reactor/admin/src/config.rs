//! The admin server's limits.

use std::time::Duration;

/// Default time from accept to a whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Default bound on connections held at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Default largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Default largest request body (the routes are `GET`s: no body is expected).
pub const MAX_BODY: usize = 1024;

/// Limits and names of an admin server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Name of the loop thread, to which the reactor appends `-0`; Linux shows the
    /// first 15 bytes of it (default: `"admin"`).
    pub thread_name: String,
    /// Time a connection has, from its accept (or, kept alive, from the first byte of
    /// its next request), to send a whole request (default: 2 s). Past it the
    /// connection is closed, with `408` if it had sent part of a request.
    pub request_timeout: Duration,
    /// `None` (the default): one request per connection, answered with
    /// `Connection: close`. `Some(idle)`: keep-alive requests are honoured, and a
    /// connection idle between requests is closed after `idle`.
    pub keep_alive: Option<Duration>,
    /// Connections held at once (default: 1,024). Past it, each new connection closes
    /// the oldest one.
    pub max_connections: usize,
    /// Largest request head in bytes; a longer one is answered `431` (default: 8 KiB).
    pub max_head: usize,
    /// Largest request body in bytes; a larger one is answered `413` (default: 1 KiB).
    pub max_body: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            thread_name: "admin".into(),
            request_timeout: REQUEST_TIMEOUT,
            keep_alive: None,
            max_connections: MAX_CONNECTIONS,
            max_head: MAX_HEAD,
            max_body: MAX_BODY,
        }
    }
}

impl Config {
    /// The default limits, with the loop thread named `thread_name`.
    pub fn named(thread_name: impl Into<String>) -> Self {
        Config {
            thread_name: thread_name.into(),
            ..Config::default()
        }
    }
}
