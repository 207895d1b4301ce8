//! The pure pieces of a Dubbo server, shared by both agents' Dubbo front-ends (the
//! consumer-agent's and the provider-agent's `--dubbo-listen`): what to do with a frame
//! a consumer sent ([`classify`]), a body over the server's limit refused as soon as its
//! header is read ([`oversized_request`]), the serializations taken
//! ([`unsupported_serialization`]), error answers ([`encode_error`]), the `timeout`
//! attachment ([`requested_timeout_ms`]), a frame relayed under another id
//! ([`relay_frame`]), whether an answer is an exception ([`answers_exception`]),
//! service keys ([`service_key`]) and callers' protocol versions ([`ProtocolVersion`]).
//!
//! Heartbeats are answered with [`super::encode_heartbeat_reply`] (same id, event
//! flag), and a server shutting down tells its consumers with
//! [`super::encode_readonly_event`].

use super::frame::{write_header, Frame, Header, FLAG_REQUEST, HEADER_LEN};
use super::request::RoutedRequest;
use super::response::{encode_response, Reply};
use super::{Error, Serialization, SERIALIZATION_FASTJSON, SERIALIZATION_HESSIAN2};

/// The Dubbo protocol version written when a caller names none (Java 2.7's), and what a
/// provider-agent writes by default (`provider-agent --dubbo-version`).
pub const DEFAULT_DUBBO_VERSION: &str = "2.0.2";

/// What a server does with a whole frame a consumer sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// An invocation to route (two-way, or one-way: see the frame).
    Call,
    /// An event (a heartbeat, a read-only notice) or the reply to one of the server's
    /// own heartbeats: nothing to route. `reply`: the id to answer with
    /// [`super::encode_heartbeat_reply`] when the event asked for an answer, as Dubbo's
    /// own server answers it.
    Event {
        /// The request id to echo, for a two-way event.
        reply: Option<i64>,
    },
    /// A response that is not a heartbeat reply: whoever sent it is not a Dubbo
    /// consumer; close the connection.
    NotAConsumer,
}

/// What a frame from a consumer is (see [`Incoming`]).
///
/// ```
/// use codec::dubbo::{self, server::{classify, Incoming}};
/// use codec::Decoded;
///
/// let mut hb = Vec::new();
/// dubbo::encode_heartbeat_request(&mut hb, 7);
/// let Ok(Decoded::Complete { msg, .. }) = dubbo::decode_frame(&hb) else { panic!() };
/// assert_eq!(classify(&msg), Incoming::Event { reply: Some(7) });
/// ```
pub fn classify(frame: &Frame<'_>) -> Incoming {
    if !frame.is_request() {
        // Heartbeat replies are fine; any other response is not a consumer talking.
        return if frame.is_heartbeat() {
            Incoming::Event { reply: None }
        } else {
            Incoming::NotAConsumer
        };
    }
    if frame.is_event() {
        return Incoming::Event {
            reply: frame.is_two_way().then(|| frame.id()),
        };
    }
    Incoming::Call
}

/// The header at the start of `input`, when it is a request announcing a body over
/// `max_body`: the server refuses it at once (BAD_REQUEST naming its limit, then a
/// close), before waiting for or buffering the body. `None` while fewer than 16 bytes
/// are there, and for anything else (a header that does not parse is
/// [`super::decode_frame`]'s to refuse).
pub fn oversized_request(input: &[u8], max_body: usize) -> Option<Header> {
    let head = input.first_chunk::<HEADER_LEN>()?;
    let h = Header::parse(head).ok()?;
    (h.body_len > max_body && h.flags & FLAG_REQUEST != 0).then_some(h)
}

/// Why a request's serialization is refused, for its BAD_REQUEST answer: the front-ends
/// take hessian2 only (they read the body's routing strings, and relay answers as the
/// provider writes them to hessian2 callers).
pub fn unsupported_serialization(frame: &Frame<'_>) -> Option<String> {
    let id = frame.serialization_id();
    (id != SERIALIZATION_HESSIAN2).then(|| {
        format!("serialization id {id} is not supported by the mesh: send hessian2 (id 2)")
    })
}

/// Appends a Dubbo error answer to request `id`: header `status` (one of
/// [`super::status`], not OK) and the message as the body's hessian2 string, which
/// Dubbo clients show as the error.
///
/// # Errors
/// [`Error::BodyTooLong`] for a message past the body limit; `out` is then unchanged.
pub fn encode_error(out: &mut Vec<u8>, id: i64, status: u8, text: &str) -> Result<(), Error> {
    encode_response(
        out,
        id,
        Serialization::Hessian2,
        status,
        &Reply::Error(text),
        &[],
    )
}

/// The milliseconds a request's `timeout` attachment asks for, if it reads as a number
/// (surrounding spaces allowed). Each server bounds it by its own limits.
pub fn requested_timeout_ms(req: &RoutedRequest<'_>) -> Option<u64> {
    req.attachment("timeout")
        .and_then(|t| t.trim().parse().ok())
}

/// Appends `frame` as it is but for its id: the same flags, status and body, byte for
/// byte, under `id`. A proxy relays a request to its provider under its own id, and the
/// answer back under the caller's.
pub fn relay_frame(out: &mut Vec<u8>, frame: &Frame<'_>, id: i64) {
    let h = &frame.header;
    write_header(out, h.flags, h.status, id, frame.body.len() as u32);
    out.extend_from_slice(frame.body);
}

/// Whether an answer is a thrown exception: status OK with result flag 0 or 3 (with
/// attachments). The flag is the body's first value: a compact hessian2 int
/// (`0x90 + flag`), or a fastjson line.
pub fn answers_exception(frame: &Frame<'_>) -> bool {
    if frame.status() != super::status::OK || frame.is_event() {
        return false;
    }
    match frame.serialization_id() {
        SERIALIZATION_HESSIAN2 => matches!(frame.body.first(), Some(0x90 | 0x93)),
        SERIALIZATION_FASTJSON => {
            let line = frame.body.split(|&b| b == b'\n').next().unwrap_or_default();
            matches!(line.trim_ascii(), b"0" | b"3")
        }
        _ => false,
    }
}

/// Dubbo's service key, `[group/]service[:version]`, as Dubbo names a service in its
/// messages: no version for none or `0.0.0`, no group for none.
///
/// ```
/// use codec::dubbo::server::service_key;
/// assert_eq!(service_key("a.B", "1.0", "blue"), "blue/a.B:1.0");
/// assert_eq!(service_key("a.B", "0.0.0", ""), "a.B");
/// ```
pub fn service_key(service: &str, version: &str, group: &str) -> String {
    let mut key = String::with_capacity(group.len() + service.len() + version.len() + 2);
    if !group.is_empty() {
        key.push_str(group);
        key.push('/');
    }
    key.push_str(service);
    if !version.is_empty() && version != "0.0.0" {
        key.push(':');
        key.push_str(version);
    }
    key
}

/// A caller's Dubbo protocol version (`2.0.2`: digits and dots, at most 16 bytes), kept
/// inline: no allocation per call. Providers shape their answers by it (result flags
/// with attachments from 2.0.2 on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolVersion {
    bytes: [u8; 16],
    len: u8,
}

impl ProtocolVersion {
    /// `v` if it reads as a protocol version.
    ///
    /// ```
    /// use codec::dubbo::server::ProtocolVersion;
    /// assert_eq!(ProtocolVersion::new("2.0.2").unwrap().as_str(), "2.0.2");
    /// assert!(ProtocolVersion::new("2.0.2-SNAPSHOT").is_none());
    /// assert!(ProtocolVersion::new("").is_none());
    /// ```
    pub fn new(v: &str) -> Option<ProtocolVersion> {
        let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        let mut bytes = [0u8; 16];
        bytes
            .get_mut(..v.len())
            .filter(|_| ok)?
            .copy_from_slice(v.as_bytes());
        Some(ProtocolVersion {
            bytes,
            len: v.len() as u8,
        })
    }

    /// The version as text.
    pub fn as_str(&self) -> &str {
        let b = self.bytes.get(..usize::from(self.len)).unwrap_or_default();
        std::str::from_utf8(b).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        decode_frame, decode_response_body, encode_heartbeat_reply, encode_heartbeat_request,
        encode_readonly_event, status, Outcome, FLAG_EVENT, FLAG_TWO_WAY,
    };
    use super::*;
    use crate::Decoded;

    fn frame(bytes: &[u8]) -> Frame<'_> {
        match decode_frame(bytes) {
            Ok(Decoded::Complete { msg, .. }) => msg,
            other => panic!("not a frame: {other:?}"),
        }
    }

    fn header(flags: u8, id: i64, len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        write_header(&mut out, flags, 0, id, len);
        out
    }

    #[test]
    fn frames_are_calls_events_or_not_a_consumers() {
        let mut hb = Vec::new();
        encode_heartbeat_request(&mut hb, 9);
        assert_eq!(classify(&frame(&hb)), Incoming::Event { reply: Some(9) });
        let mut ro = Vec::new();
        encode_readonly_event(&mut ro, 3);
        assert_eq!(classify(&frame(&ro)), Incoming::Event { reply: None });
        let mut reply = Vec::new();
        encode_heartbeat_reply(&mut reply, 4);
        assert_eq!(classify(&frame(&reply)), Incoming::Event { reply: None });
        let mut call = header(FLAG_REQUEST | FLAG_TWO_WAY | 2, 5, 1);
        call.push(b'N');
        assert_eq!(classify(&frame(&call)), Incoming::Call);
        let mut response = header(2, 5, 1);
        response.push(b'N');
        assert_eq!(classify(&frame(&response)), Incoming::NotAConsumer);
        let mut event_response = header(FLAG_EVENT | 2, 5, 2);
        event_response.extend_from_slice(b"\x01R");
        assert_eq!(classify(&frame(&event_response)), Incoming::NotAConsumer);
    }

    #[test]
    fn an_oversized_request_is_seen_at_its_header() {
        let head = header(FLAG_REQUEST | FLAG_TWO_WAY | 2, 11, 1000);
        assert_eq!(oversized_request(&head, 999).map(|h| h.id), Some(11));
        assert_eq!(oversized_request(&head, 1000), None);
        assert_eq!(oversized_request(&head[..15], 10), None, "header not whole");
        let response = header(2, 11, 1000);
        assert_eq!(oversized_request(&response, 10), None);
        assert_eq!(oversized_request(b"GET / HTTP/1.1\r\n\r\n", 10), None);
    }

    #[test]
    fn errors_and_refusals_name_what_went_wrong() {
        let mut out = Vec::new();
        encode_error(&mut out, 42, status::SERVICE_NOT_FOUND, "no a.B").unwrap();
        let f = frame(&out);
        assert_eq!((f.id(), f.status(), f.is_request()), (42, 60, false));
        let body = decode_response_body(f.serialization_id(), f.status(), f.body).unwrap();
        assert_eq!(
            body.outcome,
            Outcome::Error {
                status: 60,
                message: "no a.B".into()
            }
        );
        let mut fastjson = header(FLAG_REQUEST | FLAG_TWO_WAY | 6, 1, 1);
        fastjson.push(b'N');
        let msg = unsupported_serialization(&frame(&fastjson)).unwrap();
        assert!(msg.contains("serialization id 6"), "{msg}");
        let mut hessian = header(FLAG_REQUEST | FLAG_TWO_WAY | 2, 1, 1);
        hessian.push(b'N');
        assert_eq!(unsupported_serialization(&frame(&hessian)), None);
    }

    #[test]
    fn relayed_frames_change_only_their_id() {
        let mut answer = Vec::new();
        write_header(&mut answer, 2, status::OK, 77, 3);
        answer.extend_from_slice(&[0x91, 0x90, 0x90]);
        let mut out = Vec::new();
        relay_frame(&mut out, &frame(&answer), -5);
        assert_eq!(out.len(), answer.len());
        assert_eq!(out[..4], answer[..4]);
        assert_eq!(out[4..12], (-5i64).to_be_bytes());
        assert_eq!(out[12..], answer[12..]);
    }

    #[test]
    fn exceptions_are_read_from_the_result_flag() {
        let answer = |status: u8, body: &[u8], ser: u8| {
            let mut out = Vec::new();
            write_header(&mut out, ser, status, 1, body.len() as u32);
            out.extend_from_slice(body);
            answers_exception(&frame(&out))
        };
        assert!(answer(status::OK, &[0x90, b'N'], 2));
        assert!(answer(status::OK, &[0x93, b'N'], 2));
        assert!(!answer(status::OK, &[0x91, b'N'], 2));
        assert!(!answer(status::SERVER_ERROR, &[0x90], 2));
        assert!(answer(status::OK, b"3\n{}\n{}\n", 6));
        assert!(!answer(status::OK, b"1\n5\n", 6));
    }

    #[test]
    fn timeouts_and_keys() {
        let req = RoutedRequest {
            dubbo_version: "2.0.2".into(),
            path: "a.B".into(),
            version: "".into(),
            method: "m".into(),
            descriptor: "".into(),
            args: &[],
            attachments: vec![("timeout".into(), " 250 ".into())],
        };
        assert_eq!(requested_timeout_ms(&req), Some(250));
        let none = RoutedRequest {
            attachments: vec![("timeout".into(), "soon".into())],
            ..req
        };
        assert_eq!(requested_timeout_ms(&none), None);
        assert_eq!(service_key("a.B", "", ""), "a.B");
        assert_eq!(service_key("a.B", "2.0", ""), "a.B:2.0");
        assert_eq!(service_key("a.B", "", "g"), "g/a.B");
        assert!(ProtocolVersion::new(&"1".repeat(17)).is_none());
        assert_eq!(
            ProtocolVersion::new(&"1".repeat(16)).map(|v| v.as_str().len()),
            Some(16)
        );
    }
}
