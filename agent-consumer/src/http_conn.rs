//! One inbound HTTP connection: its decoder and the order its answers must go out in.
//!
//! HTTP/1.1 answers pipelined requests in request order, but calls complete in any
//! order. Each request takes a sequence number; an answer whose turn has come is written
//! straight into the connection's output, and one that completes early waits in
//! `parked` (rare: most clients send one request at a time).

use std::time::Instant;

use codec::http::RequestDecoder;
use reactor::ConnId;

/// State of one HTTP connection.
#[derive(Debug)]
pub struct HttpConn {
    /// The reactor's id (with generation) of this connection.
    pub id: ConnId,
    /// Incremental request decoder (remembers progress on a partial request).
    pub decoder: RequestDecoder,
    /// Sequence number the next request gets.
    pub next_seq: u64,
    /// Sequence number whose answer goes out next.
    pub write_seq: u64,
    /// Answers completed ahead of their turn: (seq, bytes, close after).
    pub parked: Vec<(u64, Vec<u8>, bool)>,
    /// Reading stopped: a fatal error was answered, or the connection will close.
    pub done_reading: bool,
    /// Reading paused because too many requests are in flight.
    pub paused: bool,
    /// Read no more: the connection goes to the successor process (binary upgrade)
    /// once its answers are out.
    pub handing: bool,
    /// The client half-closed (its FIN arrived) with answers still due: the connection
    /// closes once the last of them is written.
    pub input_ended: bool,
    /// Last time a request arrived or an answer left (idle timeout).
    pub last_active: Instant,
    /// The client's address (the access log's `caller`), read once at accept.
    pub peer: Option<std::net::SocketAddr>,
    /// The identity the client's certificate proved (`--http-tls-ca`), read once at
    /// accept when the access log is on (its `caller_identity`).
    pub identity: Option<String>,
}

impl HttpConn {
    /// A fresh connection.
    pub fn new(id: ConnId, decoder: RequestDecoder, now: Instant) -> Self {
        HttpConn {
            id,
            decoder,
            next_seq: 0,
            write_seq: 0,
            parked: Vec::new(),
            done_reading: false,
            paused: false,
            handing: false,
            input_ended: false,
            last_active: now,
            peer: None,
            identity: None,
        }
    }

    /// Requests taken and not yet answered.
    pub fn inflight(&self) -> u64 {
        self.next_seq - self.write_seq
    }

    /// Takes the next sequence number.
    pub fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }
}

/// The HTTP connections of a loop, indexed by the reactor's slot number.
#[derive(Debug, Default)]
pub struct HttpConns {
    slots: Vec<Option<HttpConn>>,
}

impl HttpConns {
    /// Adds a connection.
    pub fn insert(&mut self, conn: HttpConn) {
        let i = conn.id.index();
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i] = Some(conn);
    }

    /// The live connection with this id (a stale id finds nothing).
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut HttpConn> {
        self.slots
            .get_mut(id.index())
            .and_then(|s| s.as_mut())
            .filter(|c| c.id == id)
    }

    /// Removes a connection.
    pub fn remove(&mut self, id: ConnId) -> Option<HttpConn> {
        let slot = self.slots.get_mut(id.index())?;
        if slot.as_ref().is_some_and(|c| c.id == id) {
            slot.take()
        } else {
            None
        }
    }

    /// Every live connection.
    pub fn iter(&self) -> impl Iterator<Item = &HttpConn> {
        self.slots.iter().flatten()
    }
}
