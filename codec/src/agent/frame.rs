//! Frame encoding (into a shared output buffer, length back-patched) and decoding
//! (borrowing from the input buffer, no allocation).

use super::{AgentError, SignatureRef, Status, HEADER_LEN, MAGIC, MAX_BODY, VERSION};
use crate::Decoded;

const KIND_DEFINE: u8 = 1;
const KIND_REQUEST: u8 = 2;
const KIND_RESPONSE: u8 = 3;
const KIND_PING: u8 = 4;
const KIND_PONG: u8 = 5;
const KIND_GOAWAY: u8 = 6;
const KIND_MASK: u8 = 0x0F;
const FLAG_ONE_WAY: u8 = 0x80;
/// RESPONSE only: an attachment list (as in a REQUEST) precedes the payload.
const FLAG_ATTACHMENTS: u8 = 0x40;
/// REQUEST: answer with the provider's Dubbo response body as it wrote it. RESPONSE:
/// the payload is such a body, after its Dubbo status and serialization id.
const FLAG_RAW: u8 = 0x20;

/// Offset of the body length in the header.
const LEN_AT: usize = 14;

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// A frame begun in an output buffer whose body length is patched by [`finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a begun frame must be completed with `finish`"]
pub struct FrameMark {
    start: usize,
}

/// The fixed part of a REQUEST frame, before its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead<'h> {
    /// Request id, echoed in the response.
    pub id: u64,
    /// The call id (see [`super::CallTable`]); its DEFINE must have been sent first.
    pub call_id: u32,
    /// Timeout in milliseconds; 0 means none.
    pub timeout_ms: u32,
    /// No response is wanted.
    pub one_way: bool,
    /// Ask for the provider's Dubbo response body as it wrote it (a RESPONSE with
    /// [`Response::raw`]), for a caller that speaks Dubbo itself.
    pub raw_result: bool,
    /// String attachments (usually none).
    pub attachments: &'h [(&'h str, &'h str)],
}

impl RequestHead<'static> {
    /// A two-way request with no timeout and no attachments.
    pub fn new(id: u64, call_id: u32) -> Self {
        RequestHead {
            id,
            call_id,
            timeout_ms: 0,
            one_way: false,
            raw_result: false,
            attachments: &[],
        }
    }
}

fn put_header(out: &mut Vec<u8>, kind: u8, status: u8, id: u64) -> FrameMark {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[VERSION, kind, status, 0]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    FrameMark { start }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Lengths are checked by the callers before anything is written.
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn fits_u16(s: &str) -> Result<(), AgentError> {
    if s.len() > usize::from(u16::MAX) {
        Err(AgentError::TooLong)
    } else {
        Ok(())
    }
}

/// Complete a frame begun with [`begin_request`] or [`begin_response`]: patch its body
/// length (everything appended to `out` since the begin call).
///
/// # Errors
///
/// [`AgentError::BodyTooLarge`] if the body is over [`MAX_BODY`]; the frame is then
/// removed from `out` (truncated back to where it began).
pub fn finish(out: &mut Vec<u8>, mark: FrameMark) -> Result<(), AgentError> {
    let Some(len) = out.len().checked_sub(mark.start + HEADER_LEN) else {
        out.truncate(mark.start);
        return Err(AgentError::Malformed(
            "output truncated inside a frame header",
        ));
    };
    if len > MAX_BODY {
        out.truncate(mark.start);
        return Err(AgentError::BodyTooLarge(len));
    }
    let at = mark.start + LEN_AT;
    if let Some(slot) = out.get_mut(at..at + 4) {
        slot.copy_from_slice(&(len as u32).to_be_bytes());
    }
    Ok(())
}

/// Append a DEFINE frame binding `call_id` to `sig`.
///
/// # Errors
///
/// [`AgentError::TooLong`] if a field is over 65535 bytes (nothing is written).
pub fn encode_define(
    out: &mut Vec<u8>,
    call_id: u32,
    sig: SignatureRef<'_>,
) -> Result<(), AgentError> {
    let fields = [
        sig.service,
        sig.method,
        sig.parameter_types,
        sig.version,
        sig.group,
    ];
    for f in fields {
        fits_u16(f)?;
    }
    let mark = put_header(out, KIND_DEFINE, 0, 0);
    out.extend_from_slice(&call_id.to_be_bytes());
    for f in fields {
        put_str(out, f);
    }
    finish(out, mark)
}

/// The u16 count of an attachment list, once every key and value is known to fit.
fn attachment_count(attachments: &[(&str, &str)]) -> Result<u16, AgentError> {
    let count = u16::try_from(attachments.len()).map_err(|_| AgentError::TooLong)?;
    for (k, v) in attachments {
        fits_u16(k)?;
        fits_u16(v)?;
    }
    Ok(count)
}

fn put_attachments(out: &mut Vec<u8>, count: u16, attachments: &[(&str, &str)]) {
    out.extend_from_slice(&count.to_be_bytes());
    for (k, v) in attachments {
        put_str(out, k);
        put_str(out, v);
    }
}

/// Begin a REQUEST frame: write its header and fixed fields; the caller then appends the
/// argument bytes straight into `out` and calls [`finish`].
///
/// # Errors
///
/// [`AgentError::TooLong`] for an attachment over 65535 bytes or over 65535 attachments
/// (nothing is written).
pub fn begin_request(out: &mut Vec<u8>, head: &RequestHead<'_>) -> Result<FrameMark, AgentError> {
    let count = attachment_count(head.attachments)?;
    let mut kind = KIND_REQUEST;
    if head.one_way {
        kind |= FLAG_ONE_WAY;
    }
    if head.raw_result {
        kind |= FLAG_RAW;
    }
    let mark = put_header(out, kind, 0, head.id);
    out.extend_from_slice(&head.call_id.to_be_bytes());
    out.extend_from_slice(&head.timeout_ms.to_be_bytes());
    put_attachments(out, count, head.attachments);
    Ok(mark)
}

/// Append a whole two-way REQUEST frame with `args` (hessian2 values) as its arguments.
///
/// # Errors
///
/// As [`begin_request`] and [`finish`].
pub fn encode_request(
    out: &mut Vec<u8>,
    id: u64,
    call_id: u32,
    timeout_ms: u32,
    attachments: &[(&str, &str)],
    args: &[u8],
) -> Result<(), AgentError> {
    let head = RequestHead {
        id,
        call_id,
        timeout_ms,
        one_way: false,
        raw_result: false,
        attachments,
    };
    let mark = begin_request(out, &head)?;
    out.extend_from_slice(args);
    finish(out, mark)
}

/// Begin a RESPONSE frame; the caller appends the payload (a hessian2 value for
/// [`Status::Ok`] and [`Status::Exception`], else a UTF-8 message) and calls [`finish`].
pub fn begin_response(out: &mut Vec<u8>, id: u64, status: Status) -> FrameMark {
    put_header(out, KIND_RESPONSE, status as u8, id)
}

/// Like [`begin_response`], carrying the provider's response attachments. With none the
/// frame is exactly [`begin_response`]'s; otherwise the kind byte has the ATTACHMENTS
/// flag (0x40) and the attachment list precedes the payload.
///
/// # Errors
///
/// [`AgentError::TooLong`] for an attachment over 65535 bytes or over 65535 attachments
/// (nothing is written).
pub fn begin_response_with(
    out: &mut Vec<u8>,
    id: u64,
    status: Status,
    attachments: &[(&str, &str)],
) -> Result<FrameMark, AgentError> {
    if attachments.is_empty() {
        return Ok(begin_response(out, id, status));
    }
    let count = attachment_count(attachments)?;
    let mark = put_header(out, KIND_RESPONSE | FLAG_ATTACHMENTS, status as u8, id);
    put_attachments(out, count, attachments);
    Ok(mark)
}

/// Begin a RESPONSE carrying a provider's Dubbo response as it wrote it: the caller
/// appends the Dubbo body and calls [`finish`]. `status` is the agent's reading of it
/// (what a consumer-agent retries or counts), `dubbo_status` and `serialization` the
/// Dubbo header's.
pub fn begin_raw_response(
    out: &mut Vec<u8>,
    id: u64,
    status: Status,
    dubbo_status: u8,
    serialization: u8,
) -> FrameMark {
    let mark = put_header(out, KIND_RESPONSE | FLAG_RAW, status as u8, id);
    out.extend_from_slice(&[dubbo_status, serialization]);
    mark
}

/// Append a whole RESPONSE frame.
///
/// # Errors
///
/// [`AgentError::BodyTooLarge`] (nothing is left written).
pub fn encode_response(
    out: &mut Vec<u8>,
    id: u64,
    status: Status,
    payload: &[u8],
) -> Result<(), AgentError> {
    let mark = begin_response(out, id, status);
    out.extend_from_slice(payload);
    finish(out, mark)
}

/// Append a PING frame (heartbeat); the peer answers a PONG with the same id.
pub fn encode_ping(out: &mut Vec<u8>, id: u64) {
    let _empty_body = put_header(out, KIND_PING, 0, id);
}

/// Append a PONG frame answering the PING with this id.
pub fn encode_pong(out: &mut Vec<u8>, id: u64) {
    let _empty_body = put_header(out, KIND_PONG, 0, id);
}

/// Append a GOAWAY frame (provider-agent to consumer-agent; id 0): no new request on
/// this connection, the ones sent are answered; send it only to a peer that announced
/// it understands it (see [`GOAWAY_CAPABLE_PING`](super::GOAWAY_CAPABLE_PING)).
pub fn encode_goaway(out: &mut Vec<u8>) {
    let _empty_body = put_header(out, KIND_GOAWAY, 0, 0);
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// One decoded frame, borrowing from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Bind a call id to a signature for the rest of the connection.
    Define {
        /// The call id requests will name.
        call_id: u32,
        /// What the id stands for.
        signature: SignatureRef<'a>,
    },
    /// A call.
    Request(Request<'a>),
    /// The answer to a request.
    Response(Response<'a>),
    /// A heartbeat; answer with a PONG carrying the same id.
    Ping {
        /// Echo this in the PONG.
        id: u64,
    },
    /// The answer to a PING.
    Pong {
        /// The PING's id.
        id: u64,
    },
    /// The sender (a provider-agent being replaced) takes no new request on this
    /// connection: send new ones on a new connection; the ones already sent are
    /// answered here, then close it (see the module docs).
    GoAway,
}

/// A decoded REQUEST frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Request id, to echo in the response.
    pub id: u64,
    /// The call id, defined earlier on this connection.
    pub call_id: u32,
    /// Timeout in milliseconds; 0 means none.
    pub timeout_ms: u32,
    /// No response is wanted.
    pub one_way: bool,
    /// The caller wants the provider's Dubbo response as it wrote it.
    pub raw_result: bool,
    /// The attachments (already validated; iterating cannot fail).
    pub attachments: Attachments<'a>,
    /// The arguments, opaque (hessian2 values).
    pub args: &'a [u8],
}

/// The Dubbo header fields of a raw RESPONSE (its payload is the Dubbo body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDubbo {
    /// The Dubbo response status (20 for OK).
    pub status: u8,
    /// The body's serialization id (2 for hessian2).
    pub serialization: u8,
}

/// A decoded RESPONSE frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    /// The request id answered.
    pub id: u64,
    /// The outcome.
    pub status: Status,
    /// The provider's response attachments (usually none; already validated).
    pub attachments: Attachments<'a>,
    /// Set when the payload is the provider's Dubbo response body as it wrote it
    /// (asked for with [`RequestHead::raw_result`]); its attachments are in it then.
    pub raw: Option<RawDubbo>,
    /// A hessian2 value for [`Status::Ok`] (the result) and [`Status::Exception`] (the
    /// exception's summary), the Dubbo body when `raw`, else a UTF-8 message.
    pub payload: &'a [u8],
}

impl<'a> Response<'a> {
    /// The error message of a response whose payload is text (validated UTF-8 when
    /// decoded); `None` for [`Status::Ok`] and [`Status::Exception`].
    pub fn message(&self) -> Option<&'a str> {
        if self.status.carries_value() || self.raw.is_some() {
            None
        } else {
            std::str::from_utf8(self.payload).ok()
        }
    }
}

/// The attachments of a request or response: an iterator over borrowed `(key, value)`
/// pairs. `Copy`, so a frame's list can be walked more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attachments<'a> {
    raw: &'a [u8],
    remaining: u16,
}

impl<'a> Attachments<'a> {
    /// Pairs not yet iterated.
    pub fn remaining(&self) -> usize {
        usize::from(self.remaining)
    }

    /// Whether no pair is left.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl<'a> Iterator for Attachments<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let mut r = Reader { buf: self.raw };
        let pair = r.checked_str().and_then(|k| Ok((k, r.checked_str()?)));
        match pair {
            Ok(pair) => {
                self.raw = r.buf;
                self.remaining -= 1;
                Some(pair)
            }
            // Unreachable after `decode` validated the list; end rather than panic.
            Err(_) => {
                self.remaining = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining(), Some(self.remaining()))
    }
}

impl ExactSizeIterator for Attachments<'_> {}

/// A cursor over a frame body.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AgentError> {
        if self.buf.len() < n {
            return Err(AgentError::Malformed("body shorter than its fields"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], AgentError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u16(&mut self) -> Result<u16, AgentError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, AgentError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn str(&mut self) -> Result<&'a str, AgentError> {
        let n = self.u16()?;
        let bytes = self.take(usize::from(n))?;
        if bytes.is_ascii() {
            // Names and trace ids nearly always are: a word at a time, no decoding.
            #[allow(unsafe_code)]
            // SAFETY: every byte is ASCII (checked just above), and ASCII is valid UTF-8.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).map_err(|_| AgentError::InvalidUtf8)
    }

    /// A string of an attachment list that `read_attachments` has validated (so the
    /// list's iterator does not check every pair's UTF-8 a second time).
    fn checked_str(&mut self) -> Result<&'a str, AgentError> {
        let n = self.u16()?;
        let bytes = self.take(usize::from(n))?;
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        #[allow(unsafe_code)]
        // SAFETY: `Attachments` are made only by `read_attachments` (their fields are
        // private), which read every string of the list with `str`, checking its UTF-8;
        // the iterator reads the same bytes with the same lengths.
        Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
    }
}

/// What a frame's header says, readable before its body arrives: enough to apply a
/// size limit early, and to answer a request whose body cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The frame's id (a request's, to echo in its response).
    pub id: u64,
    /// Whether it is a REQUEST frame.
    pub is_request: bool,
    /// The body length the header declares (not checked against [`MAX_BODY`]).
    pub body_len: u32,
}

/// Reads the header at the start of `buf`: `None` until [`HEADER_LEN`] bytes are there,
/// or if they do not start with [`MAGIC`] and [`VERSION`].
pub fn peek_head(buf: &[u8]) -> Option<Head> {
    let head = buf.get(..HEADER_LEN)?;
    if head.get(..2)? != MAGIC || *head.get(2)? != VERSION {
        return None;
    }
    let mut r = Reader { buf: head };
    let [_, _, _, kind, _, _] = r.array::<6>().ok()?;
    Some(Head {
        id: u64::from_be_bytes(r.array().ok()?),
        is_request: kind & KIND_MASK == KIND_REQUEST,
        body_len: r.u32().ok()?,
    })
}

/// Decode the frame at the start of `buf`.
///
/// Magic and version are checked as soon as their bytes arrive, the body length as soon
/// as the header is complete (before the body arrives).
///
/// # Errors
///
/// See [`AgentError`]; any error means the stream cannot be re-synchronised: close it.
pub fn decode(buf: &[u8]) -> Result<Decoded<Frame<'_>>, AgentError> {
    for (i, &m) in MAGIC.iter().enumerate() {
        if buf.get(i).is_some_and(|&b| b != m) {
            return Err(AgentError::BadMagic);
        }
    }
    if let Some(&v) = buf.get(2) {
        if v != VERSION {
            return Err(AgentError::UnsupportedVersion(v));
        }
    }
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(Decoded::Incomplete);
    };
    let mut h = Reader { buf: header };
    let [_, _, _, kind_byte, status, _reserved] = h.array::<6>()?;
    let id = u64::from_be_bytes(h.array()?);
    let len = h.u32()? as usize;
    if len > MAX_BODY {
        return Err(AgentError::BodyTooLarge(len));
    }
    let kind = kind_byte & KIND_MASK;
    let flags = kind_byte & !KIND_MASK;
    if !(KIND_DEFINE..=KIND_GOAWAY).contains(&kind) {
        return Err(AgentError::UnknownKind(kind));
    }
    let flags_ok = flags == 0
        || (kind == KIND_REQUEST && flags & !(FLAG_ONE_WAY | FLAG_RAW) == 0)
        || (kind == KIND_RESPONSE && (flags == FLAG_ATTACHMENTS || flags == FLAG_RAW));
    if !flags_ok {
        return Err(AgentError::Malformed("unknown flags"));
    }
    if status != 0 && kind != KIND_RESPONSE {
        return Err(AgentError::Malformed("status set on a non-response frame"));
    }
    if len != 0 && (kind == KIND_PING || kind == KIND_PONG) {
        return Err(AgentError::Malformed("heartbeat with a body"));
    }
    if kind == KIND_GOAWAY && (len != 0 || id != 0) {
        return Err(AgentError::Malformed("GOAWAY with a body or an id"));
    }
    let consumed = HEADER_LEN + len;
    let Some(body) = buf.get(HEADER_LEN..consumed) else {
        return Ok(Decoded::Incomplete);
    };
    let msg = match kind {
        KIND_DEFINE => decode_define(body)?,
        KIND_REQUEST => decode_request(id, flags, body)?,
        KIND_RESPONSE => {
            let status = Status::from_u8(status).ok_or(AgentError::UnknownStatus(status))?;
            let mut r = Reader { buf: body };
            let attachments = if flags == FLAG_ATTACHMENTS {
                let list = read_attachments(&mut r)?;
                if list.is_empty() {
                    // One encoding per frame: no attachments means no flag.
                    return Err(AgentError::Malformed("ATTACHMENTS flag with an empty list"));
                }
                list
            } else {
                Attachments::default()
            };
            let raw = if flags == FLAG_RAW {
                let [status, serialization] = r.array::<2>()?;
                Some(RawDubbo {
                    status,
                    serialization,
                })
            } else {
                None
            };
            if raw.is_none() && !status.carries_value() && std::str::from_utf8(r.buf).is_err() {
                return Err(AgentError::InvalidUtf8);
            }
            Frame::Response(Response {
                id,
                status,
                attachments,
                raw,
                payload: r.buf,
            })
        }
        KIND_PING => Frame::Ping { id },
        KIND_GOAWAY => Frame::GoAway,
        _ => Frame::Pong { id },
    };
    Ok(Decoded::Complete { msg, consumed })
}

fn decode_define(body: &[u8]) -> Result<Frame<'_>, AgentError> {
    let mut r = Reader { buf: body };
    let call_id = r.u32()?;
    let signature = SignatureRef {
        service: r.str()?,
        method: r.str()?,
        parameter_types: r.str()?,
        version: r.str()?,
        group: r.str()?,
    };
    if !r.buf.is_empty() {
        return Err(AgentError::Malformed("trailing bytes after a DEFINE"));
    }
    Ok(Frame::Define { call_id, signature })
}

fn decode_request(id: u64, flags: u8, body: &[u8]) -> Result<Frame<'_>, AgentError> {
    let mut r = Reader { buf: body };
    let call_id = r.u32()?;
    let timeout_ms = r.u32()?;
    let attachments = read_attachments(&mut r)?;
    Ok(Frame::Request(Request {
        id,
        call_id,
        timeout_ms,
        one_way: flags & FLAG_ONE_WAY != 0,
        raw_result: flags & FLAG_RAW != 0,
        attachments,
        args: r.buf,
    }))
}

/// Reads and validates an attachment list (count, then that many key/value strings).
fn read_attachments<'a>(r: &mut Reader<'a>) -> Result<Attachments<'a>, AgentError> {
    let count = r.u16()?;
    let start = r.buf;
    for _ in 0..count {
        r.str()?;
        r.str()?;
    }
    let len = start.len() - r.buf.len();
    Ok(Attachments {
        raw: start.get(..len).unwrap_or_default(),
        remaining: count,
    })
}
