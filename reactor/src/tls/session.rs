//! One connection's TLS state, and the pumps that drive rustls's unbuffered API: input
//! (handshake, decryption into the loop's input buffer) and output (encryption into the
//! loop's scratch buffer).

use std::fmt;
use std::sync::Arc;

use rustls::client::ClientConnectionData;
use rustls::client::UnbufferedClientConnection;
use rustls::server::ServerConnectionData;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedConnectionCommon, UnbufferedStatus,
};
use rustls::{ClientConfig, CommonState};

/// Largest plaintext of one TLS record (RFC 8446 §5.1, RFC 5246 §6.2.1); rustls refuses
/// bigger ones.
pub(crate) const MAX_PLAINTEXT: usize = 16 * 1024;
/// Room the loop's input buffer must have for one record's plaintext.
pub(crate) const MIN_INPUT_BUFFER: usize = MAX_PLAINTEXT;
/// A record's overhead on top of its plaintext, with room to spare: header (5), explicit
/// nonce (8, TLS 1.2), tag (16), content type (1, TLS 1.3); rustls adds no padding.
const RECORD_OVERHEAD: usize = 64;
/// The loop's ciphertext scratch for reading: a handshake message of up to 64 KiB
/// (rustls's limit) joined from records, plus one more record read behind it. A
/// connection whose unprocessed ciphertext fills it is closed.
pub(crate) const READ_SCRATCH: usize = 64 * 1024 + 2 * (MAX_PLAINTEXT + 2048 + 5);
/// Plaintext encrypted per flush round: four full records, written with one syscall.
const WRITE_CHUNKS: usize = 4;
/// The loop's ciphertext scratch for writing.
pub(crate) const WRITE_SCRATCH: usize = WRITE_CHUNKS * (MAX_PLAINTEXT + RECORD_OVERHEAD);
// The scratch buffers hold whole records: the largest handshake message plus a record.
const _: () = assert!(READ_SCRATCH > 64 * 1024 + MAX_PLAINTEXT + 2048 + 5);

/// A rustls session, server or client side.
pub(crate) enum Session {
    Server(Box<UnbufferedServerConnection>),
    Client(Box<UnbufferedClientConnection>),
}

impl Session {
    pub(crate) fn client(
        config: Arc<ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Session, rustls::Error> {
        UnbufferedClientConnection::new(config, name).map(|c| Session::Client(Box::new(c)))
    }

    pub(crate) fn common(&self) -> &CommonState {
        match self {
            Session::Server(s) => s,
            Session::Client(c) => c,
        }
    }
}

/// A TLS connection's state beside the plain connection's.
pub(crate) struct TlsState {
    pub(crate) session: Session,
    /// Ciphertext received and not yet consumed by rustls: at most a partial record (or a
    /// partial handshake message) after each round; empty, unallocated, most of the time.
    pub(crate) incoming: Vec<u8>,
    /// Ciphertext to write before anything else: handshake flights, alerts, and what the
    /// socket did not take; `out_pos` of it is written. Freed once written.
    pub(crate) outgoing: Vec<u8>,
    pub(crate) out_pos: usize,
    /// The handshake has not completed yet.
    pub(crate) handshaking: bool,
    /// Our close_notify is encrypted (it follows the output; no writes after it).
    pub(crate) close_notify_sent: bool,
    /// The peer's end of input (close_notify, or a TCP FIN) arrived while reading was
    /// paused: reported once reading resumes.
    pub(crate) eof_pending: bool,
}

impl fmt::Debug for TlsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsState")
            .field("server", &matches!(self.session, Session::Server(_)))
            .field("handshaking", &self.handshaking)
            .field("incoming", &self.incoming.len())
            .field("outgoing", &(self.outgoing.len() - self.out_pos))
            .finish_non_exhaustive()
    }
}

impl TlsState {
    pub(crate) fn new(session: Session) -> Self {
        TlsState {
            session,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            out_pos: 0,
            handshaking: true,
            close_notify_sent: false,
            eof_pending: false,
        }
    }

    /// Ciphertext waiting to be written.
    pub(crate) fn unwritten(&self) -> usize {
        self.outgoing.len() - self.out_pos
    }

    /// Runs rustls over `incoming` (see [`pump`]).
    pub(crate) fn pump(&mut self, incoming: &mut [u8], plain: &mut [u8]) -> Pumped {
        let handshaking = self.handshaking;
        match &mut self.session {
            Session::Server(s) => pump(&mut ***s, handshaking, incoming, &mut self.outgoing, plain),
            Session::Client(c) => pump(&mut ***c, handshaking, incoming, &mut self.outgoing, plain),
        }
    }

    /// Encrypts plaintext (see [`encrypt`]) with the connection's own leftover input as
    /// rustls's input buffer.
    pub(crate) fn encrypt(
        &mut self,
        plaintext: &[u8],
        close_notify: bool,
        out: &mut [u8],
    ) -> Result<Encrypted, rustls::Error> {
        match &mut self.session {
            Session::Server(s) => encrypt(
                &mut ***s,
                &mut self.incoming,
                &mut self.outgoing,
                plaintext,
                close_notify,
                out,
            ),
            Session::Client(c) => encrypt(
                &mut ***c,
                &mut self.incoming,
                &mut self.outgoing,
                plaintext,
                close_notify,
                out,
            ),
        }
    }
}

/// rustls's `process_tls_records`, which it implements for the server and the client
/// side separately: one name for both, so the pumps are written once.
trait Process: std::ops::Deref<Target = CommonState> {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Process for UnbufferedConnectionCommon<ServerConnectionData> {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Process for UnbufferedConnectionCommon<ClientConnectionData> {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

/// What stopped a [`pump`].
#[derive(Debug)]
pub(crate) enum Stop {
    /// Every complete record is processed: more input is needed.
    NeedMore,
    /// The handshake just completed (app data may follow: pump again once opened).
    HandshakeDone,
    /// The next record's plaintext does not fit the room left: deliver, then pump again.
    RoomFull,
    /// The peer sent close_notify: its end of input.
    PeerClosed,
    /// A TLS error; an alert for the peer, if any, is queued in `outgoing`.
    Failed(rustls::Error),
}

/// The outcome of a [`pump`].
#[derive(Debug)]
pub(crate) struct Pumped {
    /// Bytes of `incoming` consumed (to drop from its front).
    pub(crate) consumed: usize,
    /// Plaintext bytes written at the front of `plain`.
    pub(crate) plain: usize,
    /// Ciphertext was queued in `outgoing` (handshake messages, alerts, tickets).
    pub(crate) wrote: bool,
    pub(crate) stop: Stop,
}

/// Drives rustls over the ciphertext in `incoming`: handshake messages are answered
/// into `outgoing`, application data is copied into `plain` (while it has room for the
/// next record), and it stops at the first event the loop must act on.
fn pump<C: Process>(
    conn: &mut C,
    handshaking: bool,
    incoming: &mut [u8],
    outgoing: &mut Vec<u8>,
    plain: &mut [u8],
) -> Pumped {
    let mut consumed = 0;
    let mut plain_len = 0;
    let mut wrote = false;
    let stop = loop {
        if handshaking && !conn.is_handshaking() {
            break Stop::HandshakeDone;
        }
        let status = conn.process(&mut incoming[consumed..]);
        let mut discard = status.discard;
        let state = match status.state {
            Ok(state) => state,
            Err(e) => {
                consumed += discard;
                wrote |= queue_alert(conn, &mut incoming[consumed..], outgoing);
                break Stop::Failed(e);
            }
        };
        let stop = match state {
            ConnectionState::ReadTraffic(mut traffic) => loop {
                if handshaking {
                    // Application data right behind the handshake's last message: the
                    // handler hears `opened` first. The record stays decrypted in
                    // rustls until the next pump.
                    break Some(Stop::HandshakeDone);
                }
                match traffic.peek_len() {
                    None => break None,
                    Some(len) if len.get() > plain.len() - plain_len => {
                        break Some(if plain_len == 0 {
                            Stop::Failed(rustls::Error::General(
                                "record larger than the input buffer".into(),
                            ))
                        } else {
                            Stop::RoomFull
                        });
                    }
                    Some(_) => {}
                }
                match traffic.next_record() {
                    Some(Ok(record)) => {
                        let end = plain_len + record.payload.len();
                        plain[plain_len..end].copy_from_slice(record.payload);
                        plain_len = end;
                        discard += record.discard;
                    }
                    Some(Err(e)) => break Some(Stop::Failed(e)),
                    None => break None,
                }
            },
            ConnectionState::EncodeTlsData(mut encode) => {
                match encode_into(&mut encode, outgoing) {
                    Ok(()) => {
                        wrote = true;
                        None
                    }
                    Err(e) => Some(Stop::Failed(e)),
                }
            }
            ConnectionState::TransmitTlsData(transmit) => {
                // Queued in `outgoing`, which the loop writes in order before anything
                // else: as good as sent.
                transmit.done();
                None
            }
            ConnectionState::BlockedHandshake => Some(Stop::NeedMore),
            // Handshake done (or, on a TLS 1.3 server, far enough to send): nothing more
            // to do until more input arrives. Writes are encrypted at flush time.
            ConnectionState::WriteTraffic(_) => Some(Stop::NeedMore),
            ConnectionState::PeerClosed | ConnectionState::Closed => Some(Stop::PeerClosed),
            // Only if the application's `ServerConfig` enabled 0-RTT, which the reactor
            // does not support (the handler could not tell replayable data apart).
            ConnectionState::ReadEarlyData(_) => Some(Stop::Failed(rustls::Error::General(
                "TLS early data is not supported: leave max_early_data_size at 0".into(),
            ))),
            _ => Some(Stop::Failed(rustls::Error::General(
                "unexpected TLS connection state".into(),
            ))),
        };
        consumed += discard;
        match stop {
            // The handshake's last message arrived with nothing to answer (a TLS 1.2
            // client): report it done.
            Some(Stop::NeedMore) if handshaking && !conn.is_handshaking() => {
                break Stop::HandshakeDone
            }
            Some(stop) => break stop,
            None => {}
        }
    };
    Pumped {
        consumed,
        plain: plain_len,
        wrote,
        stop,
    }
}

/// After an error, rustls queues an alert for the peer: encode it into `outgoing`.
///
/// Only while rustls has records queued (`wants_write`): each call then pops one
/// without looking at the input again, which after a deframing error would fail anew.
fn queue_alert<C: Process>(conn: &mut C, incoming: &mut [u8], outgoing: &mut Vec<u8>) -> bool {
    let mut wrote = false;
    // A handful of rounds at most: an alert is one record.
    for _ in 0..4 {
        if !conn.wants_write() {
            break;
        }
        let status = conn.process(incoming);
        match status.state {
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                if encode_into(&mut encode, outgoing).is_err() {
                    break;
                }
                wrote = true;
            }
            _ => break,
        }
    }
    wrote
}

/// Appends a handshake record to `outgoing`.
fn encode_into<D>(
    encode: &mut EncodeTlsData<'_, D>,
    outgoing: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let start = outgoing.len();
    let need = match encode.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        Err(EncodeError::AlreadyEncoded) => {
            return Err(rustls::Error::General("TLS record encoded twice".into()))
        }
    };
    outgoing.resize(start + need, 0);
    match encode.encode(&mut outgoing[start..]) {
        Ok(n) => {
            outgoing.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            outgoing.truncate(start);
            Err(rustls::Error::General(e.to_string()))
        }
    }
}

/// The outcome of an [`encrypt`].
#[derive(Debug)]
pub(crate) struct Encrypted {
    /// Plaintext bytes encrypted.
    pub(crate) used: usize,
    /// Ciphertext bytes at the front of `out`.
    pub(crate) written: usize,
    /// The close_notify alert is in `out`, behind the plaintext.
    pub(crate) close_notify: bool,
}

/// Encrypts as much of `plaintext` as fits `out` (whole records), then, if asked and
/// all of it fit, a close_notify. Records rustls wants to send first (a key update, a
/// session ticket) go to `outgoing`, which the caller writes before `out`.
fn encrypt<C: Process>(
    conn: &mut C,
    incoming: &mut Vec<u8>,
    outgoing: &mut Vec<u8>,
    plaintext: &[u8],
    close_notify: bool,
    out: &mut [u8],
) -> Result<Encrypted, rustls::Error> {
    // A handful of rounds: handshake records to encode first, then the traffic state.
    for _ in 0..16 {
        let status = conn.process(incoming);
        let discard = status.discard;
        let result = match status.state {
            Err(e) => Some(Err(e)),
            Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                let mut done = Encrypted {
                    used: 0,
                    written: 0,
                    close_notify: false,
                };
                let mut failed = None;
                for chunk in plaintext.chunks(MAX_PLAINTEXT) {
                    if out.len() - done.written < chunk.len() + RECORD_OVERHEAD {
                        break;
                    }
                    match traffic.encrypt(chunk, &mut out[done.written..]) {
                        Ok(n) => {
                            done.written += n;
                            done.used += chunk.len();
                        }
                        Err(EncryptError::InsufficientSize(_)) => break,
                        Err(EncryptError::EncryptExhausted) => {
                            failed = Some(rustls::Error::EncryptError);
                            break;
                        }
                    }
                }
                if failed.is_none() && close_notify && done.used == plaintext.len() {
                    if let Ok(n) = traffic.queue_close_notify(&mut out[done.written..]) {
                        done.written += n;
                        done.close_notify = true;
                    }
                }
                Some(failed.map_or(Ok(done), Err))
            }
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                match encode_into(&mut encode, outgoing) {
                    Ok(()) => None,
                    Err(e) => Some(Err(e)),
                }
            }
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                transmit.done();
                None
            }
            // The edge is the read side's to report; we only want the traffic state.
            Ok(ConnectionState::PeerClosed) => None,
            Ok(state) => Some(Err(rustls::Error::General(format!(
                "cannot encrypt in state {state:?}"
            )))),
        };
        if discard > 0 {
            incoming.drain(..discard);
        }
        if let Some(result) = result {
            return result;
        }
    }
    Err(rustls::Error::General(
        "TLS state machine did not settle".into(),
    ))
}
