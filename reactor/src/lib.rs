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
//!   leave in one syscall. Interest in writability is registered once (edge-triggered).
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
//! relaying half-closes with backpressure both ways) and `pool` (a line-protocol load
//! balancer over a pool of persistent upstream connections that reconnect with
//! [`Backoff`]).
//!
//! # Notes
//!
//! Linux first (SO_REUSEPORT spreads accepted connections across loops); it builds on
//! macOS and the BSDs through mio's kqueue. The only `unsafe` code is the Linux timerfd
//! in `precise.rs` (sub-millisecond timer wake-ups, measured there), each block with a
//! `SAFETY` note.

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
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod precise;
mod reactor;
mod throttle;
mod timer;
mod xorshift;

pub use crate::backoff::Backoff;
pub use crate::config::{Config, SocketOptions};
pub use crate::conn::{CloseReason, Conn, ConnId};
pub use crate::conn_map::ConnMap;
pub use crate::context::Ctx;
pub use crate::handle::{LoopGone, LoopHandle};
pub use crate::handler::{EndOfInput, Handler};
pub use crate::reactor::{Builder, Reactor};
pub use crate::timer::TimerId;
pub use crate::xorshift::XorShift;
