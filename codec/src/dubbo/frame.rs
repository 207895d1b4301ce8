//! The 16-byte Dubbo header and whole frames.

use super::{Error, Serialization};
use crate::Decoded;

/// First two bytes of every frame.
pub const MAGIC: u16 = 0xdabb;
/// Header length in bytes.
pub const HEADER_LEN: usize = 16;
/// Largest body accepted (Dubbo's `payload` default is 8 MiB); checked as
/// soon as the header is read, before waiting for or buffering the body.
pub const MAX_BODY_LEN: usize = 8 * 1024 * 1024;
/// Flag bit: the frame is a request.
pub const FLAG_REQUEST: u8 = 0x80;
/// Flag bit: the request expects a response.
pub const FLAG_TWO_WAY: u8 = 0x40;
/// Flag bit: an event (heartbeat, read-only notice), not an invocation.
pub const FLAG_EVENT: u8 = 0x20;
/// Low bits of the flags byte: the serialization id.
pub const SERIALIZATION_MASK: u8 = 0x1f;

/// Response status codes (header byte 3), as in Dubbo's `Response.java`.
pub mod status {
    /// Success: the body holds a result flag and payload.
    pub const OK: u8 = 20;
    /// The client gave up waiting.
    pub const CLIENT_TIMEOUT: u8 = 30;
    /// The server gave up waiting.
    pub const SERVER_TIMEOUT: u8 = 31;
    /// The channel closed before the answer.
    pub const CHANNEL_INACTIVE: u8 = 35;
    /// The request could not be decoded.
    pub const BAD_REQUEST: u8 = 40;
    /// The response could not be decoded.
    pub const BAD_RESPONSE: u8 = 50;
    /// No such service exported.
    pub const SERVICE_NOT_FOUND: u8 = 60;
    /// The service failed.
    pub const SERVICE_ERROR: u8 = 70;
    /// The server failed.
    pub const SERVER_ERROR: u8 = 80;
    /// The client failed.
    pub const CLIENT_ERROR: u8 = 90;
    /// A serialization failure.
    pub const SERIALIZATION_ERROR: u8 = 25;
    /// The provider's thread pool is full: try another provider.
    pub const SERVER_THREADPOOL_EXHAUSTED: u8 = 100;
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Byte 2: request/two-way/event bits and the serialization id.
    pub flags: u8,
    /// Byte 3: the response status (0 in requests).
    pub status: u8,
    /// The request id a response echoes.
    pub id: i64,
    /// Body length (already checked against [`MAX_BODY_LEN`]).
    pub body_len: usize,
}

impl Header {
    /// A request (as opposed to a response)?
    pub fn is_request(&self) -> bool {
        self.flags & FLAG_REQUEST != 0
    }
    /// A request that wants an answer?
    pub fn is_two_way(&self) -> bool {
        self.flags & FLAG_TWO_WAY != 0
    }
    /// An event (heartbeat or notice)?
    pub fn is_event(&self) -> bool {
        self.flags & FLAG_EVENT != 0
    }
    /// The serialization id (2 hessian2, 6 fastjson, ...).
    pub fn serialization_id(&self) -> u8 {
        self.flags & SERIALIZATION_MASK
    }
    /// The serialization, if it is one this crate speaks.
    pub fn serialization(&self) -> Option<Serialization> {
        Serialization::from_id(self.serialization_id())
    }

    /// Parse and check the 16 header bytes.
    ///
    /// # Errors
    /// Bad magic, a negative body length, or one over [`MAX_BODY_LEN`].
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, Error> {
        let [m0, m1, flags, status, i0, i1, i2, i3, i4, i5, i6, i7, l0, l1, l2, l3] = *b;
        if u16::from_be_bytes([m0, m1]) != MAGIC {
            return Err(Error::BadMagic([m0, m1]));
        }
        let len = i32::from_be_bytes([l0, l1, l2, l3]);
        let body_len = usize::try_from(len).map_err(|_| Error::NegativeBodyLength(len))?;
        if body_len > MAX_BODY_LEN {
            return Err(Error::BodyTooLong {
                len: body_len,
                max: MAX_BODY_LEN,
            });
        }
        Ok(Header {
            flags,
            status,
            id: i64::from_be_bytes([i0, i1, i2, i3, i4, i5, i6, i7]),
            body_len,
        })
    }
}

/// Append a header. Encoders here write a zero length and back-patch it
/// once the body is written.
pub fn write_header(out: &mut Vec<u8>, flags: u8, status: u8, id: i64, body_len: u32) {
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.push(flags);
    out.push(status);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&body_len.to_be_bytes());
}

/// Write the body length into the header that starts at `start`, once the
/// body after it is complete (one buffer, no copy).
pub(crate) fn patch_len(out: &mut [u8], start: usize) -> Result<(), Error> {
    let body = out.len().saturating_sub(start + HEADER_LEN);
    if body > MAX_BODY_LEN {
        return Err(Error::BodyTooLong {
            len: body,
            max: MAX_BODY_LEN,
        });
    }
    if let Some(slot) = out.get_mut(start + 12..start + HEADER_LEN) {
        slot.copy_from_slice(&(body as u32).to_be_bytes());
    }
    Ok(())
}

/// One frame: its header and its body, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The parsed header.
    pub header: Header,
    /// The body bytes (`header.body_len` of them).
    pub body: &'a [u8],
}

impl Frame<'_> {
    /// A request?
    pub fn is_request(&self) -> bool {
        self.header.is_request()
    }
    /// A two-way request?
    pub fn is_two_way(&self) -> bool {
        self.header.is_two_way()
    }
    /// An event?
    pub fn is_event(&self) -> bool {
        self.header.is_event()
    }
    /// A heartbeat: an event whose payload is null (`N` in hessian2,
    /// `null` in fastjson).
    pub fn is_heartbeat(&self) -> bool {
        self.is_event() && matches!(self.body, b"N" | b"null\n" | b"null")
    }
    /// Dubbo's read-only event: a provider shutting down asks its consumers to send
    /// it nothing new (the string `R`, hessian2 or fastjson).
    pub fn is_readonly_event(&self) -> bool {
        self.is_event() && matches!(self.body, b"\x01R" | b"\"R\"\n" | b"\"R\"")
    }
    /// The serialization id.
    pub fn serialization_id(&self) -> u8 {
        self.header.serialization_id()
    }
    /// The response status.
    pub fn status(&self) -> u8 {
        self.header.status
    }
    /// The request id.
    pub fn id(&self) -> i64 {
        self.header.id
    }
}

/// Decode one frame from the start of `buf`.
///
/// The magic is checked on the first bytes and the body length limit as
/// soon as the 16 header bytes are there: a hostile length is rejected
/// before any body is awaited.
///
/// # Errors
/// [`Error::BadMagic`], [`Error::NegativeBodyLength`], [`Error::BodyTooLong`].
pub fn decode_frame(buf: &[u8]) -> Result<Decoded<Frame<'_>>, Error> {
    let magic = MAGIC.to_be_bytes();
    for (i, (&got, &want)) in buf.iter().zip(magic.iter()).enumerate() {
        if got != want {
            let mut m = magic;
            if let Some(slot) = m.get_mut(i) {
                *slot = got;
            }
            return Err(Error::BadMagic(m));
        }
    }
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(Decoded::Incomplete);
    };
    let header = Header::parse(head)?;
    let end = HEADER_LEN + header.body_len;
    match buf.get(HEADER_LEN..end) {
        Some(body) => Ok(Decoded::Complete {
            msg: Frame { header, body },
            consumed: end,
        }),
        None => Ok(Decoded::Incomplete),
    }
}

/// Append Dubbo's read-only event, which a server shutting down sends its consumers
/// so they send it nothing new: a one-way event request whose body is the string `R`.
pub fn encode_readonly_event(out: &mut Vec<u8>, id: i64) {
    write_header(
        out,
        FLAG_REQUEST | FLAG_EVENT | super::SERIALIZATION_HESSIAN2,
        0,
        id,
        2,
    );
    out.extend_from_slice(b"\x01R");
}

/// Append a heartbeat request: `da bb e2 00 <id> 00 00 00 01 4e`.
pub fn encode_heartbeat_request(out: &mut Vec<u8>, id: i64) {
    write_header(
        out,
        FLAG_REQUEST | FLAG_TWO_WAY | FLAG_EVENT | super::SERIALIZATION_HESSIAN2,
        0,
        id,
        1,
    );
    out.push(b'N');
}

/// Append a heartbeat reply: `da bb 22 14 <id> 00 00 00 01 4e`.
pub fn encode_heartbeat_reply(out: &mut Vec<u8>, id: i64) {
    write_header(
        out,
        FLAG_EVENT | super::SERIALIZATION_HESSIAN2,
        status::OK,
        id,
        1,
    );
    out.push(b'N');
}
