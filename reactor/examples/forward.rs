//! A TCP forwarder: each accepted connection is piped to a new connection to the
//! upstream, both ways. Both sides of a pair live on the same loop, so a byte goes from
//! one socket to the other with no lock and no thread hop.
//!
//! ```text
//! cargo run -p reactor --example forward -- 127.0.0.1:7001 127.0.0.1:7000 [loops]
//! ```
//!
//! Half-close: when one side finishes sending (e.g. a client's `shutdown(SHUT_WR)` after
//! its request), the forwarder passes the FIN on to the other side and keeps the pair open
//! for the answer; the pair closes once both directions have finished.
//!
//! Backpressure: when one side's output is congested, reading the other side pauses;
//! when it drains, reading resumes. Memory per pair stays near the high watermark
//! however fast one side sends and however slowly the other reads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use reactor::{Builder, CloseReason, Config, Conn, ConnId, Ctx, EndOfInput, Handler, Reactor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Accepted from a client.
    Inbound,
    /// Connected to the upstream.
    Outbound,
}

#[derive(Debug)]
struct Forward {
    upstream: SocketAddr,
    /// Each connection's partner, both ways.
    peers: HashMap<ConnId, ConnId>,
}

impl Handler for Forward {
    type Tag = Side;
    type Msg = ();
    type Timer = ();

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Side>) {
        if conn.tag == Side::Outbound {
            return;
        }
        match cx.connect(self.upstream, Side::Outbound, Some(Duration::from_secs(5))) {
            Ok(out) => {
                self.peers.insert(conn.id, out);
                self.peers.insert(out, conn.id);
            }
            Err(e) => {
                log::warn!("connect {}: {e}", self.upstream);
                cx.abort(conn.id);
            }
        }
    }

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Side>, input: &[u8]) -> usize {
        let Some(&peer) = self.peers.get(&conn.id) else {
            return input.len();
        };
        // Writes to an upstream still connecting wait for its open.
        if cx.write(peer, input) && cx.is_congested(peer) {
            cx.pause_reading(conn.id);
        }
        input.len()
    }

    fn end_of_input(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Side>) -> EndOfInput {
        match self.peers.get(&conn.id) {
            Some(&peer) => {
                // Pass the FIN on after what is buffered; keep reading the partner.
                cx.shutdown_write(peer);
                EndOfInput::KeepOpen
            }
            None => EndOfInput::Close,
        }
    }

    fn drained(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Side>) {
        if let Some(&peer) = self.peers.get(&conn.id) {
            cx.resume_reading(peer);
        }
    }

    fn closed(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Side>, reason: CloseReason) {
        if reason.is_connect_failure() {
            log::warn!("upstream {}: {reason:?}", self.upstream);
        }
        if let Some(peer) = self.peers.remove(&conn.id) {
            self.peers.remove(&peer);
            // Whatever is already buffered for the partner still goes out.
            cx.close(peer);
        }
    }
}

/// Starts a forwarder from `listen` to `upstream` (also used by the crate's tests).
pub fn start(
    listen: SocketAddr,
    upstream: SocketAddr,
    config: Config,
) -> std::io::Result<Reactor<()>> {
    Builder::new(config)
        .listen(listen, Side::Inbound)
        .start(move |_, _| Forward {
            upstream,
            peers: HashMap::new(),
        })
}

#[allow(dead_code)] // not called when the tests include this file
fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: forward LISTEN_ADDR UPSTREAM_ADDR [LOOPS]");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: SocketAddr = upstream.parse()?;
    let loops = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let reactor = start(
        listen,
        upstream,
        Config {
            loops,
            ..Config::default()
        },
    )?;
    println!(
        "forwarding {} -> {upstream} with {loops} loop(s); Ctrl-C to quit",
        reactor.local_addrs()[0]
    );
    reactor.join();
    Ok(())
}
