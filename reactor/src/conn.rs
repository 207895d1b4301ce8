//! Connections: their ids, their buffers, and why they close.

use std::io;

use mio::net::TcpStream;

use crate::timer::TimerId;

/// Names a connection of one loop. It carries a generation, so an id kept after its
/// connection closed never reaches the connection that reuses the slot: every operation
/// on a stale id is a harmless no-op. Ids are not scoped to a loop: use one only with
/// the loop that gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) index: u32,
    pub(crate) gen: u32,
}

impl ConnId {
    /// The slot number, unique among the loop's live connections: handy as an index
    /// into the application's own per-connection tables.
    pub fn index(self) -> usize {
        self.index as usize
    }

    pub(crate) fn token(self) -> mio::Token {
        mio::Token(((self.gen as usize) << 32) | self.index as usize)
    }

    pub(crate) fn from_token(token: mio::Token) -> ConnId {
        ConnId {
            index: token.0 as u32,
            gen: (token.0 >> 32) as u32,
        }
    }
}

/// A connection as a callback sees it: its id and the tag the application gave it when
/// it was accepted (the listener's tag) or connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn<T> {
    /// The connection's id.
    pub id: ConnId,
    /// The application's tag: which handler logic serves this connection.
    pub tag: T,
}

/// A connection taken out of its loop by [`Ctx::detach`](crate::Ctx::detach): its
/// socket (still non-blocking) and the bytes already read from it that the handler
/// left unconsumed, in order before anything still in the socket. Another loop, or
/// another process (over [`handover`](crate::handover)), takes it on with
/// [`Ctx::adopt`](crate::Ctx::adopt).
#[derive(Debug)]
pub struct Detached {
    /// The socket, open both ways, its output all written.
    pub stream: std::net::TcpStream,
    /// Input read but not consumed (a partial message, usually empty).
    pub input: Vec<u8>,
}

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side (a read returned 0; on TLS, its close_notify or FIN).
    PeerClosed,
    /// A read or write failed (reset, broken pipe, ...).
    Io(io::ErrorKind),
    /// An outbound connect failed (refused, unreachable, ...).
    ConnectFailed(io::ErrorKind),
    /// An outbound connect did not complete within its timeout.
    ConnectTimeout,
    /// The handler left more unconsumed input than the configured limit.
    InputOverflow,
    /// The application closed it (`close` or `abort`).
    Local,
    /// The loop is exiting.
    Shutdown,
    /// The TLS handshake failed, so the connection never opened ([`Handler::opened`] was
    /// not called): the peer's certificate was refused (untrusted, expired, not yet
    /// valid, wrong name), no protocol version or cipher suite in common, the peer is
    /// not speaking TLS, it sent an alert, or the connection ended or failed during the
    /// handshake. The text is rustls's error (or the I/O error's). Counted in
    /// `TlsStats::handshake_failures` (`Ctx::tls_stats`).
    ///
    /// [`Handler::opened`]: crate::Handler::opened
    TlsHandshake(String),
    /// The TLS handshake did not complete within
    /// [`Config::tls_handshake_timeout`](crate::Config::tls_handshake_timeout); the
    /// connection never opened.
    HandshakeTimeout,
    /// After the handshake, the peer sent something TLS refuses: a record that does not
    /// decrypt or is too large, a renegotiation, a fatal alert. The text is rustls's
    /// error.
    Tls(String),
}

impl CloseReason {
    /// Whether the connection never opened: an outbound connect failed or timed out, or a
    /// TLS handshake (either side's) failed or timed out. [`Handler::opened`] was not
    /// called for such a connection.
    ///
    /// [`Handler::opened`]: crate::Handler::opened
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            CloseReason::ConnectFailed(_)
                | CloseReason::ConnectTimeout
                | CloseReason::TlsHandshake(_)
                | CloseReason::HandshakeTimeout
        )
    }

    /// Whether TLS ended the connection: a failed or timed-out handshake, or a TLS
    /// error after it.
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            CloseReason::TlsHandshake(_) | CloseReason::HandshakeTimeout | CloseReason::Tls(_)
        )
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Outbound, connect in progress; writes are buffered until it opens.
    Connecting,
    /// TLS, connected (or accepted), handshake in progress; writes are buffered until it
    /// completes, and then the connection is reported opened.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Handshaking,
    Open,
    /// Closing gracefully: writing what is buffered, then our FIN, then discarding
    /// input until the peer's FIN (a lingering close) or the linger limit.
    Draining,
    /// Queued for close; every operation is a no-op from now on.
    Closing,
}

/// A connection's state inside the loop.
#[derive(Debug)]
pub(crate) struct ConnState<T> {
    pub(crate) stream: TcpStream,
    pub(crate) gen: u32,
    pub(crate) tag: T,
    pub(crate) phase: Phase,
    /// Bytes the handler left unconsumed; empty (no allocation) most of the time.
    pub(crate) input: Vec<u8>,
    /// Bytes waiting to be written; `out_pos` of them are already written.
    pub(crate) output: Vec<u8>,
    pub(crate) out_pos: usize,
    /// In the loop's flush list.
    pub(crate) dirty: bool,
    /// Output passed the high watermark and has not yet fallen to the low one.
    pub(crate) congested: bool,
    /// The application paused reading (backpressure on its own sources).
    pub(crate) read_paused: bool,
    /// Data may be waiting in the socket (budget ran out, or reading was paused).
    pub(crate) read_pending: bool,
    /// The reactor's own timer for this connection: the connect timeout while
    /// connecting, the linger limit while draining.
    pub(crate) timer: Option<TimerId>,
    /// The application closed it while it was still connecting: drain it once open.
    pub(crate) close_on_open: bool,
    /// The application closed it, so the close is reported as `Local` whatever the peer
    /// does meanwhile; otherwise a drain follows the peer's end of input.
    pub(crate) local_close: bool,
    /// The peer finished sending (a read returned 0): nothing more is read.
    pub(crate) peer_closed: bool,
    /// Our sending side: open, shut once the output is written, or shut.
    pub(crate) write_side: WriteSide,
    /// A TLS connection's session and ciphertext; `None` for plain TCP.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Box<crate::tls::TlsState>>,
}

/// Our sending direction of a connection (TCP half-close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteSide {
    Open,
    /// `shutdown_write` was asked for: the FIN follows the buffered output.
    ShutPending,
    /// The FIN is sent; writes are refused.
    Shut,
}

impl<T> ConnState<T> {
    pub(crate) fn new(stream: TcpStream, gen: u32, tag: T, phase: Phase) -> Self {
        ConnState {
            stream,
            gen,
            tag,
            phase,
            input: Vec::new(),
            output: Vec::new(),
            out_pos: 0,
            dirty: false,
            congested: false,
            read_paused: false,
            read_pending: false,
            timer: None,
            close_on_open: false,
            local_close: false,
            peer_closed: false,
            write_side: WriteSide::Open,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Bytes buffered and not yet written: plaintext, and for TLS the ciphertext the
    /// socket has not taken yet.
    pub(crate) fn unwritten(&self) -> usize {
        let plain = self.output.len() - self.out_pos;
        #[cfg(feature = "tls")]
        if let Some(t) = &self.tls {
            return plain + t.unwritten();
        }
        plain
    }

    /// How a finished drain is reported.
    pub(crate) fn drain_reason(&self) -> CloseReason {
        if self.local_close {
            CloseReason::Local
        } else {
            CloseReason::PeerClosed
        }
    }

    pub(crate) fn is_live(&self) -> bool {
        matches!(
            self.phase,
            Phase::Connecting | Phase::Handshaking | Phase::Open
        )
    }

    /// Whether a TLS close_notify is still to be sent before our side closes.
    pub(crate) fn owes_close_notify(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(t) = &self.tls {
            return !t.close_notify_sent;
        }
        false
    }

    /// Whether a write may still be queued: live, and our side not shut down.
    pub(crate) fn accepts_writes(&self) -> bool {
        self.is_live() && self.write_side == WriteSide::Open
    }
}
