//! An evio-style event loop on [`mio`], for proxies.
//!
//! Each loop is a thread that owns a `mio::Poll` and every connection on it, inbound
//! (accepted) and outbound (connected) alike: a proxy's client connection and the
//! upstream connection its request goes out on live on one thread, with no lock and no
//! thread hop between them.
//!
//! - **Reads** go into one input buffer per loop, reused for every read. A connection
//!   keeps its own buffer only for bytes its handler left unconsumed, and frees it once
//!   empty, so an idle connection holds no buffer.
//! - **Writes** append to the connection's output; each iteration ends with one flush
//!   per connection that has output, so a hundred messages written in one iteration
//!   leave in one syscall. One event that gave output to many connections (an upstream
//!   read answering many callers) has them flushed right after it instead: they would
//!   each take a syscall anyway, and their answers do not wait for the rest of the
//!   iteration. Interest in writability is registered once (edge-triggered).
//! - **Backpressure**: past the high watermark a connection reports itself congested;
//!   [`Handler::drained`] says when it falls to the low one. Reading a source can be
//!   paused and resumed ([`Ctx::is_reading_paused`] says which state it is in).
//! - **Timers**: one-shot and periodic, cheap to create and cancel by the hundred thousand,
//!   on the loop's monotonic clock read once per iteration ([`Ctx::now`]); on Linux they
//!   wake the loop within tens of microseconds (see [`Ctx::set_timer`]). Each carries a
//!   value of the handler's [`Handler::Timer`] type (an enum of what can time out),
//!   handed back when it fires.
//! - **Cross-thread**: a [`LoopHandle`] per loop sends it messages and wakes it; it also
//!   asks for a graceful stop.
//! - **Half-close**: a peer's end of input reaches [`Handler::end_of_input`], which may
//!   keep the connection open for writing ([`EndOfInput::KeepOpen`]), finish writing and
//!   close ([`EndOfInput::Close`]) or close at once ([`EndOfInput::Abort`]);
//!   [`Ctx::shutdown_write`] sends our FIN after the buffered output, so a proxy can
//!   relay half-closes both ways.
//! - **Lingering close**: [`Ctx::close`] writes the buffered output and our FIN, then
//!   discards input until the peer's FIN (at most [`Config::close_linger`]), so a peer
//!   still sending gets our last reply instead of a reset.
//! - **Tokens carry a generation**: a stale [`ConnId`] never reaches a reused slot, and
//!   [`ConnMap`] keeps the application's per-connection data with the same guarantee.
//! - **Outbound connections** ([`Ctx::connect`]) live on the loop beside accepted ones;
//!   a failed connect is reported to [`Handler::closed`], and [`Backoff`] spaces out
//!   reconnects.
//! - **Handover** (Unix): a process replacing this one takes its listening sockets
//!   ([`handover`], `SCM_RIGHTS`) and accepts on them
//!   ([`Builder::listen_inherited`]) before this one stops accepting
//!   ([`Reactor::stop_accepting`]), so a binary is upgraded without refusing a
//!   connect.
//! - **TLS** (feature `tls`, on by default): `Builder::listen_tls` and
//!   `Ctx::connect_tls` run rustls on the same loops; the handler sees plaintext, as on
//!   plain TCP (see [TLS](#tls) below).
//!
//! # Examples
//!
//! An echo server on one loop. A client that sends faster than it reads is pushed back
//! on: once its output is congested, reading it pauses until it drains (without this,
//! its output would grow without bound).
//!
//! ```
//! use reactor::{Builder, Config, Conn, Ctx, Handler};
//! use std::io::{Read, Write};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     type Tag = ();
//!     type Msg = ();
//!     type Timer = ();
//!     fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
//!         cx.write(conn.id, input);
//!         if cx.is_congested(conn.id) {
//!             cx.pause_reading(conn.id);
//!         }
//!         input.len()
//!     }
//!     fn drained(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
//!         cx.resume_reading(conn.id);
//!     }
//! }
//!
//! let reactor = Builder::new(Config::default())
//!     .listen("127.0.0.1:0".parse().unwrap(), ())
//!     .start(|_, _| Echo)
//!     .unwrap();
//! let mut client = std::net::TcpStream::connect(reactor.local_addrs()[0]).unwrap();
//! client.write_all(b"ping").unwrap();
//! let mut reply = [0; 4];
//! client.read_exact(&mut reply).unwrap();
//! assert_eq!(&reply, b"ping");
//! reactor.stop();
//! reactor.join();
//! ```
//!
//! More in the crate's `README.md` and its examples: `echo`, `forward` (a TCP forwarder
//! relaying half-closes with backpressure both ways), `pool` (a line-protocol load
//! balancer over a pool of persistent upstream connections that reconnect with
//! [`Backoff`]) and `tls_echo` (the echo behind TLS, optionally mutual).
//!
//! # TLS
//!
//! With the `tls` feature (default), a listener can be a TLS one
//! (`Builder::listen_tls`, with a `TlsAcceptor` holding a rustls `ServerConfig` that
//! can be replaced at run time to rotate certificates) and an outbound connection can
//! be one (`Ctx::connect_tls`, with a rustls `ClientConfig` and the server's name).
//! rustls (re-exported as `reactor::rustls`) runs with its `ring` provider, through its
//! unbuffered API, on the loop's own thread:
//!
//! - **Plaintext for the handler.** Records are decrypted into the loop's shared input
//!   buffer: `Handler::data` sees plaintext exactly as on a plain connection, and what
//!   `Ctx::write` or `Ctx::output` take is encrypted at flush time, everything pending
//!   at once, then written with one syscall. Backpressure, pausing, half-close
//!   (close_notify stands for the FIN both ways, our close_notify going before our FIN),
//!   lingering close, timers and stale ids behave as on plain connections.
//! - **Opened after the handshake.** `Handler::opened` is called once the handshake
//!   completed, so the peer's verified identity (`Ctx::peer_identity`: the SPIFFE URI,
//!   DNS names and IP addresses of its certificate; `Ctx::peer_certificates`) can be
//!   checked before any data. Writes made earlier (to an outbound connection) wait.
//! - **Failures end one connection.** A failed handshake (certificate refused, not TLS,
//!   ...) never reaches `opened`: `Handler::closed` gets
//!   [`CloseReason::TlsHandshake`], or [`CloseReason::HandshakeTimeout`] after
//!   [`Config::tls_handshake_timeout`]; a TLS error after it (a corrupt or oversized
//!   record, a renegotiation) is [`CloseReason::Tls`]. Each is logged (at most once a
//!   second per loop) and counted in `Ctx::tls_stats`.
//! - **Memory.** Ciphertext goes through two scratch buffers per loop; a connection
//!   holds a buffer only for a partial record or for ciphertext its socket did not take,
//!   freed once empty. Its plaintext output buffer comes from a small pool of the
//!   loop's when it is given output and goes back once written. An idle mutual-TLS
//!   connection costs about 4.3 KiB of the server's memory (rustls's session and the
//!   peer's certificate; `tests/tls_memory.rs` measures it with 4,000 connections).
//!   rustls allocates one buffer per record decrypted and one per record encrypted, so
//!   unlike plain TCP the TLS request path does allocate, twice per message echoed,
//!   both rustls's (`tests/tls_allocations.rs`).
//!
#![cfg_attr(
    all(feature = "tls", target_os = "linux"),
    doc = r##"
A TLS echo server, and a rustls client talking to it:

```
use std::io::{Read, Write};
use std::sync::Arc;

use reactor::rustls::{self, pki_types::PrivateKeyDer};
use reactor::{Builder, Config, Conn, Ctx, Handler, TlsAcceptor};

struct Echo;

impl Handler for Echo {
    type Tag = ();
    type Msg = ();
    type Timer = ();
    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        cx.write(conn.id, input); // plaintext both ways
        input.len()
    }
}

// A self-signed certificate for the example (rcgen); load yours from PEM files.
let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
let provider = Arc::new(rustls::crypto::ring::default_provider());
let config = rustls::ServerConfig::builder_with_provider(provider.clone())
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
let acceptor = TlsAcceptor::new(Arc::new(config));
let reactor = Builder::new(Config::default())
    .listen_tls("127.0.0.1:0".parse().unwrap(), (), acceptor.clone())
    .start(|_, _| Echo)
    .unwrap();

let mut roots = rustls::RootCertStore::empty();
roots.add(cert.cert.der().clone()).unwrap();
let client = rustls::ClientConfig::builder_with_provider(provider)
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
let name = "localhost".try_into().unwrap();
let conn = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
let sock = std::net::TcpStream::connect(reactor.local_addrs()[0]).unwrap();
let mut tls = rustls::StreamOwned::new(conn, sock);
tls.write_all(b"ping").unwrap();
let mut reply = [0; 4];
tls.read_exact(&mut reply).unwrap();
assert_eq!(&reply, b"ping");
// Certificate rotation: later connections get the new configuration.
// acceptor.set_config(new_config);
reactor.stop();
reactor.join();
```
"##
)]
//!
//! # Notes
//!
//! Linux first (SO_REUSEPORT spreads accepted connections across loops); it builds on
//! macOS and the BSDs through mio's kqueue. The only `unsafe` code is the Linux timerfd
//! in `precise.rs` (sub-millisecond timer wake-ups, measured there) and the
//! `sendmsg`/`recvmsg` of [`handover`] (`SCM_RIGHTS`), each block with a `SAFETY` note;
//! TLS adds none.

#![deny(missing_docs, rust_2018_idioms)]
#![deny(unsafe_code)]

mod backoff;
mod config;
mod conn;
mod conn_map;
mod context;
mod event_loop;
mod handle;
mod handler;
#[cfg(unix)]
#[allow(unsafe_code)]
pub mod handover;
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod precise;
mod reactor;
mod throttle;
mod timer;
#[cfg(feature = "tls")]
mod tls;
mod xorshift;

pub use crate::backoff::Backoff;
pub use crate::config::{Config, SocketOptions};
pub use crate::conn::{CloseReason, Conn, ConnId, Detached};
pub use crate::conn_map::ConnMap;
pub use crate::context::Ctx;
pub use crate::handle::{LoopGone, LoopHandle};
pub use crate::handler::{EndOfInput, Handler};
pub use crate::reactor::{Builder, Reactor};
pub use crate::timer::TimerId;
#[cfg(feature = "tls")]
pub use crate::tls::{files as tls_files, PeerIdentity, TlsAcceptor, TlsStats};
pub use crate::xorshift::XorShift;
/// The rustls this crate is built with (feature `tls`): its configuration types are
/// those of [`Builder::listen_tls`] and [`Ctx::connect_tls`].
#[cfg(feature = "tls")]
pub use rustls;
