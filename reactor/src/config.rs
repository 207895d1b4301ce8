//! Settings of a reactor: loops, buffers, watermarks, socket options, listeners.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// Options applied to every accepted and every connected socket.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Disable Nagle's algorithm (default: true; a proxy must not add 40 ms stalls).
    pub nodelay: bool,
    /// SO_RCVBUF, if set.
    pub recv_buffer: Option<usize>,
    /// SO_SNDBUF, if set.
    pub send_buffer: Option<usize>,
    /// TCP keepalive idle time, if set.
    pub keepalive: Option<Duration>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            nodelay: true,
            recv_buffer: None,
            send_buffer: None,
            keepalive: None,
        }
    }
}

impl SocketOptions {
    pub(crate) fn apply(&self, stream: &mio::net::TcpStream) -> io::Result<()> {
        let sock = SockRef::from(stream);
        if self.nodelay {
            sock.set_tcp_nodelay(true)?;
        }
        if let Some(n) = self.recv_buffer {
            sock.set_recv_buffer_size(n)?;
        }
        if let Some(n) = self.send_buffer {
            sock.set_send_buffer_size(n)?;
        }
        if let Some(idle) = self.keepalive {
            sock.set_tcp_keepalive(&TcpKeepalive::new().with_time(idle))?;
        }
        Ok(())
    }
}

/// Everything a loop needs to know besides its handler.
#[derive(Debug, Clone)]
pub struct Config {
    /// Number of loops, one thread each (default: 1).
    pub loops: usize,
    /// Size of each loop's shared input buffer (default: 64 KiB).
    pub input_buffer: usize,
    /// Reads per connection per readiness event before others get their turn (default: 16).
    pub read_budget: usize,
    /// Unconsumed input a connection may hold before it is closed (default: 16 MiB,
    /// above the codecs' largest frames).
    pub max_input: usize,
    /// Output above this marks a connection congested (default: 256 KiB).
    pub high_watermark: usize,
    /// A congested connection is reported drained when output falls to this (default: 32 KiB).
    pub low_watermark: usize,
    /// Connections a loop accepts at most; beyond, new ones are closed at once (default: 100,000).
    pub max_connections: usize,
    /// Listen backlog (default: 1024).
    pub backlog: i32,
    /// Options for accepted and connected sockets.
    pub socket: SocketOptions,
    /// Name prefix of the loop threads (default: "reactor").
    pub thread_name: String,
    /// The most a connection closed with [`Ctx::close`](crate::Ctx::close) may take to
    /// write its buffered output and see the peer's FIN after ours; also how long an
    /// exiting loop keeps writing buffered output (default: 2 s). A peer that neither
    /// reads nor closes cannot hold a connection longer.
    pub close_linger: Duration,
    /// The most a TLS handshake may take, from the accept (or the completed connect) to
    /// its last message; a connection still handshaking then is closed with
    /// [`CloseReason::HandshakeTimeout`](crate::CloseReason::HandshakeTimeout)
    /// (default: 10 s). Unused without TLS connections.
    pub tls_handshake_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            loops: 1,
            input_buffer: 64 * 1024,
            read_budget: 16,
            max_input: 16 * 1024 * 1024,
            high_watermark: 256 * 1024,
            low_watermark: 32 * 1024,
            max_connections: 100_000,
            backlog: 1024,
            socket: SocketOptions::default(),
            thread_name: "reactor".into(),
            close_linger: Duration::from_secs(2),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Binds `loops` listening sockets on one address with SO_REUSEPORT, so the kernel
/// spreads connections across loops with no acceptor thread. With port 0, the first
/// socket picks the port and the others join it.
pub(crate) fn bind_listeners(
    addr: SocketAddr,
    loops: usize,
    backlog: i32,
) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(loops);
    let mut addr = addr;
    for _ in 0..loops {
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_reuse_address(true)?;
        #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
        if loops > 1 {
            sock.set_reuse_port(true)?;
        }
        sock.bind(&addr.into())?;
        sock.listen(backlog)?;
        sock.set_nonblocking(true)?;
        let listener: std::net::TcpListener = sock.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}
