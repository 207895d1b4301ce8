//! The loop's TLS connections: accept and connect, read (decrypt into the shared input
//! buffer), flush (encrypt into the loop's scratch, one write), failures.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

use super::{keep_input, EventLoop};
use crate::conn::{CloseReason, Conn, ConnId, ConnState, Phase, WriteSide};
use crate::handler::Handler;
use crate::tls::{Stop, TlsAcceptor, TlsState, MIN_INPUT_BUFFER, READ_SCRATCH, WRITE_SCRATCH};

impl<H: Handler> EventLoop<H> {
    /// The scratch buffers every TLS connection of the loop shares, allocated with the
    /// first one; the input buffer grows to hold a whole record's plaintext.
    fn tls_buffers(&mut self) {
        if self.tls_in.is_empty() {
            self.tls_in = vec![0; READ_SCRATCH];
            self.tls_out = vec![0; WRITE_SCRATCH];
        }
        if self.inbuf.len() < MIN_INPUT_BUFFER {
            self.inbuf.resize(MIN_INPUT_BUFFER, 0);
        }
    }

    /// An accepted connection on a TLS listener: it handshakes before it is opened.
    pub(super) fn accept_tls(&mut self, stream: TcpStream, tag: H::Tag, acceptor: &TlsAcceptor) {
        let session = match acceptor.session() {
            Ok(s) => s,
            Err(e) => {
                log::error!("TLS listener of loop {}: {e}", self.core.loop_index);
                return;
            }
        };
        self.tls_buffers();
        match self.core.insert(stream, tag, Phase::Handshaking) {
            Ok(id) => {
                if let Some(c) = self.core.get_mut(id) {
                    c.tls = Some(Box::new(TlsState::new(session)));
                }
                self.core.start_handshake_timer(id);
            }
            Err(e) => log::warn!("register accepted connection: {e}"),
        }
    }

    /// An outbound TLS connection connected: send the ClientHello.
    pub(super) fn start_client_handshake(&mut self, id: ConnId) {
        self.tls_buffers();
        let Some(c) = self.core.get_mut(id) else {
            return;
        };
        c.phase = Phase::Handshaking;
        if let Some(t) = c.timer.take() {
            self.core.timers.cancel(t);
        }
        self.core.start_handshake_timer(id);
        self.tls_process(id, 0);
    }

    /// Reads a TLS connection (open or handshaking) until the socket is empty or the
    /// budget is spent, as [`EventLoop::read`] does a plain one.
    pub(super) fn tls_read(&mut self, id: ConnId, to_end: bool) {
        let budget = self.core.config.read_budget.max(1);
        for _ in 0..budget {
            let Some(c) = self.core.get_mut(id) else {
                return;
            };
            if !matches!(c.phase, Phase::Handshaking | Phase::Open) {
                return;
            }
            let Some(tls) = c.tls.as_deref_mut() else {
                return;
            };
            if c.phase == Phase::Open {
                if tls.eof_pending && !c.read_paused {
                    tls.eof_pending = false;
                    self.end_of_input(id);
                    return;
                }
                if c.peer_closed {
                    return;
                }
                if c.read_paused {
                    c.read_pending = true;
                    return;
                }
            }
            // The leftover partial record goes in front of the new bytes; read first, so
            // a `WouldBlock` leaves it where it is.
            let kept = tls.incoming.len();
            if kept >= self.tls_in.len() {
                let reason = tls_failure(c, "TLS message too large".to_owned());
                self.core.schedule_close(id, reason);
                return;
            }
            let room = self.tls_in.len() - kept;
            match c.stream.read(&mut self.tls_in[kept..]) {
                Ok(0) => {
                    c.read_pending = false;
                    if c.phase == Phase::Handshaking {
                        self.core.schedule_close(id, CloseReason::PeerClosed);
                    } else {
                        // No close_notify: a truncation attack is only possible against a
                        // protocol that cannot tell a complete message, which the
                        // handler's can; so taken as an end of input, like a FIN.
                        log::debug!("TLS peer of {id:?} closed without close_notify");
                        self.end_of_input(id);
                    }
                    return;
                }
                Ok(n) => {
                    if kept > 0 {
                        self.tls_in[..kept].copy_from_slice(&tls.incoming);
                        tls.incoming = Vec::new();
                    }
                    let emptied = n < room && !to_end;
                    self.tls_process(id, kept + n);
                    if emptied {
                        if let Some(c) = self.core.get_mut(id) {
                            c.read_pending = false;
                        }
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.read_pending = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.core.schedule_close(id, CloseReason::Io(e.kind()));
                    return;
                }
            }
        }
        if let Some(c) = self.core.get_mut(id) {
            c.read_pending = true;
            self.core.read_again.push(id);
        }
    }

    /// Runs rustls over `tls_in[..len]`: answers the handshake, reports it complete
    /// (`opened`), hands decrypted data to the handler from the shared input buffer, and
    /// keeps the trailing partial record in the connection.
    pub(super) fn tls_process(&mut self, id: ConnId, len: usize) {
        let mut start = 0;
        loop {
            let Some(c) = self.core.get_mut(id) else {
                return;
            };
            let Some(tls) = c.tls.as_deref_mut() else {
                return;
            };
            if !matches!(c.phase, Phase::Handshaking | Phase::Open) {
                // Closed by the handler meanwhile. What rustls has not consumed stays
                // with it all the same: the bytes are its buffer's front from now on.
                tls.incoming.extend_from_slice(&self.tls_in[start..len]);
                return;
            }
            let pumped = tls.pump(&mut self.tls_in[start..len], &mut self.inbuf);
            start += pumped.consumed;
            if !matches!(pumped.stop, Stop::RoomFull | Stop::HandshakeDone) {
                tls.incoming.extend_from_slice(&self.tls_in[start..len]);
            }
            if pumped.wrote {
                self.core.mark_dirty(id);
            }
            self.tls_deliver(id, pumped.plain);
            match pumped.stop {
                Stop::NeedMore => return,
                Stop::RoomFull => {}
                Stop::HandshakeDone => self.tls_opened(id),
                Stop::PeerClosed => {
                    let Some(c) = self.core.get_mut(id) else {
                        return;
                    };
                    match c.phase {
                        Phase::Handshaking => self.core.schedule_close(id, CloseReason::PeerClosed),
                        Phase::Open if c.read_paused => {
                            if let Some(tls) = c.tls.as_deref_mut() {
                                tls.eof_pending = true;
                            }
                            c.read_pending = true;
                        }
                        Phase::Open => self.end_of_input(id),
                        _ => {}
                    }
                    return;
                }
                Stop::Failed(e) => {
                    let Some(c) = self.core.get_mut(id) else {
                        return;
                    };
                    send_alert(c);
                    let reason = tls_failure(c, e.to_string());
                    self.core.schedule_close(id, reason);
                    return;
                }
            }
        }
    }

    /// Plaintext at the front of the input buffer: to the handler, or kept for later if
    /// reading is paused, or dropped if the connection is closing.
    fn tls_deliver(&mut self, id: ConnId, n: usize) {
        if n == 0 {
            return;
        }
        let Some(c) = self.core.get(id) else {
            return;
        };
        if c.phase != Phase::Open {
            return;
        }
        if c.read_paused {
            keep_input(&mut self.core, id, &self.inbuf[..n]);
        } else {
            self.deliver(id, n);
        }
    }

    /// The handshake completed: the connection opens.
    fn tls_opened(&mut self, id: ConnId) {
        let Some(c) = self.core.get_mut(id) else {
            return;
        };
        let Some(tls) = c.tls.as_deref_mut() else {
            return;
        };
        if c.phase != Phase::Handshaking {
            return;
        }
        if tls.session.common().is_handshaking() {
            let e = "TLS application data before the handshake completed".to_owned();
            self.core.schedule_close(id, CloseReason::TlsHandshake(e));
            return;
        }
        tls.handshaking = false;
        c.phase = Phase::Open;
        let (tag, close_on_open) = (c.tag, c.close_on_open);
        if let Some(t) = c.timer.take() {
            self.core.timers.cancel(t);
        }
        self.core.tls_stats.handshakes += 1;
        // Writes buffered during the handshake go out now.
        self.core.mark_dirty(id);
        if close_on_open {
            self.core.begin_drain(id);
            return;
        }
        let (h, mut cx) = self.cx();
        h.opened(&mut cx, Conn { id, tag });
    }

    /// Writes a TLS connection's output: ciphertext already queued first, then the
    /// plaintext, encrypted into the loop's scratch a few records at a time and written
    /// from there; what the socket does not take is kept in the connection. Then, once a
    /// shutdown or close asked for it and the plaintext is all out, our close_notify.
    /// Returns false if the connection failed (its close is scheduled).
    pub(super) fn tls_write(&mut self, id: ConnId) -> bool {
        loop {
            let Some(c) = self.core.get_mut(id) else {
                return false;
            };
            let Some(tls) = c.tls.as_deref_mut() else {
                return false;
            };
            match write_all(&mut c.stream, &tls.outgoing[tls.out_pos..]) {
                Ok(n) => tls.out_pos += n,
                Err(kind) => {
                    self.core.schedule_close(id, CloseReason::Io(kind));
                    return false;
                }
            }
            if tls.out_pos < tls.outgoing.len() {
                return true; // the socket is full
            }
            if tls.outgoing.capacity() > 0 {
                tls.outgoing = Vec::new();
                tls.out_pos = 0;
            }
            if c.phase == Phase::Handshaking {
                return true;
            }
            let plain = &c.output[c.out_pos..];
            let close_notify = c.write_side != WriteSide::Open && !tls.close_notify_sent;
            if plain.is_empty() && !close_notify {
                return true;
            }
            let done = match tls.encrypt(plain, close_notify, &mut self.tls_out) {
                Ok(done) => done,
                Err(e) => {
                    let reason = tls_failure(c, e.to_string());
                    self.core.schedule_close(id, reason);
                    return false;
                }
            };
            c.out_pos += done.used;
            tls.close_notify_sent |= done.close_notify;
            let out = &self.tls_out[..done.written];
            if !tls.outgoing.is_empty() {
                // rustls had records to send first (a key update): they lead.
                tls.outgoing.extend_from_slice(out);
                continue;
            }
            if done.written == 0 {
                return true; // nothing encrypted: no progress to make
            }
            match write_all(&mut c.stream, out) {
                Ok(n) if n == out.len() => {}
                Ok(n) => {
                    tls.outgoing.extend_from_slice(&out[n..]);
                    return true;
                }
                Err(kind) => {
                    self.core.schedule_close(id, CloseReason::Io(kind));
                    return false;
                }
            }
        }
    }

    /// A TLS connection is closing for a TLS reason: count it, and log it (at most once a
    /// second per loop, with the count of those not logged).
    pub(super) fn count_tls_failure(&mut self, c: &ConnState<H::Tag>, reason: &CloseReason) {
        let stats = &mut self.core.tls_stats;
        match reason {
            CloseReason::TlsHandshake(_) => stats.handshake_failures += 1,
            CloseReason::HandshakeTimeout => {
                stats.handshake_failures += 1;
                stats.handshake_timeouts += 1;
            }
            _ => stats.record_failures += 1,
        }
        if let Some(more) = self.tls_failed_log.hit(self.core.now) {
            let peer = c
                .stream
                .peer_addr()
                .map_or_else(|_| "?".to_owned(), |a| a.to_string());
            let what = match reason {
                CloseReason::TlsHandshake(e) => format!("TLS handshake failed: {e}"),
                CloseReason::HandshakeTimeout => "TLS handshake timed out".to_owned(),
                CloseReason::Tls(e) => format!("TLS error: {e}"),
                _ => format!("{reason:?}"),
            };
            log::warn!(
                "loop {}: {:?} connection with {peer}: {what} ({more} more TLS failures \
                 since the last warning)",
                self.core.loop_index,
                c.tag
            );
        }
    }
}

/// Writes as much of `bytes` as the socket takes: the count, or the error's kind.
fn write_all(stream: &mut TcpStream, bytes: &[u8]) -> Result<usize, io::ErrorKind> {
    let mut pos = 0;
    while pos < bytes.len() {
        match stream.write(&bytes[pos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero),
            Ok(n) => pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.kind()),
        }
    }
    Ok(pos)
}

/// Best effort, before closing on a TLS error: the alert rustls queued for the peer
/// (and anything queued before it), in one write.
fn send_alert<T>(c: &mut ConnState<T>) {
    if let Some(tls) = c.tls.as_deref_mut() {
        let _ = write_all(&mut c.stream, &tls.outgoing[tls.out_pos..]);
        tls.outgoing = Vec::new();
        tls.out_pos = 0;
    }
}

/// The close reason for a TLS error: a handshake failure, or a failure after it.
fn tls_failure<T>(c: &ConnState<T>, error: String) -> CloseReason {
    if c.phase == Phase::Handshaking {
        CloseReason::TlsHandshake(error)
    } else {
        CloseReason::Tls(error)
    }
}
