//! The agent protocol, version 1: consumer-agent <-> provider-agent.
//!
//! Many calls are multiplexed and pipelined on one connection; responses come back in
//! any order and are matched by request id. Call signatures (service, method, parameter
//! types, version, group) are sent once per connection in a DEFINE frame and then named
//! by a `u32` call id, so a request carries no repeated strings.
//!
//! # Frame layout
//!
//! Every frame is an 18-byte header and a body. All integers are big-endian.
//!
//! ```text
//!  0      2     3      4       5          6                 14            18
//!  +------+-----+------+-------+----------+-----------------+-------------+------....
//!  | magic| ver | kind | status| reserved | request id (u64)| body len u32| body
//!  | DA BB| 01  |flags |       |    00    |                 |             |
//!  +------+-----+------+-------+----------+-----------------+-------------+------....
//!
//!  kind byte: low nibble = kind (1 DEFINE, 2 REQUEST, 3 RESPONSE, 4 PING, 5 PONG,
//!             6 GOAWAY)
//!             bit 0x80   = ONE_WAY (REQUEST only: no response is sent)
//!             bit 0x40   = ATTACHMENTS (RESPONSE only: a non-empty attachment list
//!                          precedes the payload)
//!             bit 0x20   = RAW (REQUEST: answer with the provider's Dubbo response as
//!                          it wrote it; RESPONSE: the payload is that, see below)
//!  status:    RESPONSE only (see Status), 0 elsewhere
//!
//!  DEFINE body:   call id u32 | 5 x (len u16, UTF-8): service, method,
//!                 parameter types (JVM descriptors), version, group
//!  REQUEST body:  call id u32 | timeout ms u32 (0 = none) | attachment count u16 |
//!                 count x (key len u16, key, value len u16, value) | arguments...
//!                 (arguments: the rest of the body, opaque: hessian2 values)
//!  RESPONSE body: [if ATTACHMENTS: attachment count u16 | count x (key, value) as in
//!                 a REQUEST] | OK: the result, opaque (a hessian2 value); EXCEPTION:
//!                 a hessian2 map (class, message, cause); else a UTF-8 message.
//!                 With RAW (never with ATTACHMENTS): Dubbo status u8 | serialization
//!                 id u8 | the provider's Dubbo response body, byte for byte (its value,
//!                 exception or error text, and its attachments); the frame's status is
//!                 the agent's reading of it (OK, OVERLOADED, TIMEOUT, ...)
//!  PING / PONG:   empty body; the id is echoed back in the PONG
//!  GOAWAY:        empty body, id 0
//! ```
//!
//! The body length is checked against [`MAX_BODY`] as soon as the header is read, before
//! waiting for the body. A bad magic or version is an error: close the connection.
//!
//! # Rules
//!
//! - A DEFINE for a call id is sent before the first request naming it, on the same
//!   connection (the sender's [`CallTable::intern`] says when). Ids are per connection
//!   and per direction, dense from 0, below [`MAX_CALLS`]. A later DEFINE of an id
//!   replaces the earlier one.
//! - What a peer may make the other side keep is bounded: a name (interface, method,
//!   version, group) is at most [`MAX_NAME_LEN`] bytes, a parameter-types descriptor
//!   [`MAX_TYPES_LEN`], and the signatures of one connection at most [`MAX_TABLE_BYTES`]
//!   ([`CallTable`] counts them). A receiver closes a connection whose DEFINE breaks a
//!   bound; a sender that needs room redefines ids no call in flight uses, on every
//!   connection where they were defined, before it reuses the bytes. A DEFINE of the
//!   empty signature frees an id's bytes (older receivers simply store it).
//! - Request ids are chosen by the sender and unique among its outstanding requests;
//!   responses may come in any order. One-way requests get no response.
//! - [`Status::Overloaded`] and [`Status::Unavailable`] promise the call did not start,
//!   so the consumer-agent may retry on another provider ([`Status::is_retryable`]).
//! - Response attachments (the provider's, e.g. Dubbo's flags 3..5) are an extension of
//!   version 1: a RESPONSE without them is byte for byte what it always was, and the
//!   ATTACHMENTS flag is set only when there are some. A consumer-agent older than the
//!   flag closes the connection on such a frame (unknown flags), so upgrade
//!   consumer-agents first when providers return attachments.
//! - [`Status::Exception`] (a thrown exception described as a hessian2 map, its causes
//!   included) is an extension of version 1 too: a consumer-agent older than it closes
//!   the connection on that status, so upgrade consumer-agents first.
//! - [`Status::Forbidden`] (the provider-agent's policy, `--authz`, refuses this
//!   caller this call; the payload is a UTF-8 message naming the caller, the service
//!   key and the method) is an extension of version 1 too. A provider-agent sends it
//!   only when it has a policy. A consumer-agent older than it reads an unknown status,
//!   closes the connection and fails every call in flight on it as a lost connection
//!   (503, not retried), then reconnects: so upgrade consumer-agents first, before any
//!   provider-agent is given a policy. It is not retried either way: the call did not
//!   start, but another provider-agent under the same policy refuses it the same.
//! - RAW is an extension of version 1 for consumer-agents that take Dubbo themselves:
//!   a provider-agent older than the flag closes the connection on a REQUEST with it
//!   (unknown flags), so upgrade provider-agents before consumer-agents take Dubbo
//!   (`--dubbo-listen`); HTTP calls never set it. A provider-agent whose provider speaks
//!   another serialization than hessian2 ignores it and answers as without it. A RAW
//!   REQUEST may carry the caller's Dubbo protocol version as attachment `dubbo`: the
//!   provider-agent writes it in the Dubbo request (a provider shapes its answer by
//!   it: result flags with attachments only from 2.0.2 on) instead of its own.
//! - GOAWAY is an extension of version 1 for replacing a provider-agent under load
//!   (`--upgrade-from`): the provider-agent being replaced sends it on each agent
//!   connection once its successor accepts on the port. From then on the consumer-agent
//!   opens a new connection (it reaches the successor), keeps sending on the old one
//!   until the new one answers its PING, then sends only on the new one, and closes the
//!   old one itself once every request it sent there is answered: the side that sends
//!   requests closes, so no request crosses a closing connection. The old provider-agent
//!   answers whatever arrives meanwhile and closes only at its drain deadline.
//!   Mixed versions: a consumer-agent announces that it understands GOAWAY by the id
//!   of its PINGs, [`GOAWAY_CAPABLE_PING`] (an older provider-agent just echoes it); a
//!   provider-agent sends GOAWAY only on a connection that announced it, since an older
//!   consumer-agent reads an unknown kind, closes the connection and fails its calls in
//!   flight. On the connections of an older consumer-agent, the provider-agent being
//!   replaced closes a connection when no call is in flight on it, which can race with
//!   a request being sent (that call fails as on a lost connection): so upgrade
//!   consumer-agents first.
//! - Trace context travels as ordinary REQUEST attachments, under the names and in the
//!   formats of [`crate::trace`] (`traceparent`/`tracestate`, `b3`, `x-b3-*`, `sw8`): a
//!   consumer-agent with tracing on (`--otlp-endpoint`) replaces the caller's with its
//!   continued context, in the caller's format. No frame changes, so versions mix
//!   freely: a provider-agent without tracing (older, or without the flag) passes them
//!   to the provider like any attachment (the provider's parent is then the
//!   consumer-agent's span); a consumer-agent without tracing passes the caller's
//!   untouched, and a provider-agent with tracing continues those.
//! - Versions are not negotiated: a peer speaking another version gets
//!   [`AgentError::UnsupportedVersion`] and the connection is closed.
//!
//! # Examples
//!
//! ```
//! use codec::agent::{decode, begin_request, finish, Frame, RequestHead};
//! use codec::Decoded;
//!
//! let mut out = Vec::new();
//! let mark = begin_request(&mut out, &RequestHead::new(7, 1)).unwrap();
//! out.extend_from_slice(b"hessian2 args written in place");
//! finish(&mut out, mark).unwrap();
//!
//! let Decoded::Complete { msg: Frame::Request(req), consumed } = decode(&out).unwrap()
//! else { panic!() };
//! assert_eq!((req.id, req.call_id, req.args), (7, 1, &b"hessian2 args written in place"[..]));
//! assert_eq!(consumed, out.len());
//! ```

mod calls;
mod frame;
mod from_dubbo;

pub use calls::{
    CallTable, Signature, SignatureRef, MAX_CALLS, MAX_NAME_LEN, MAX_TABLE_BYTES, MAX_TYPES_LEN,
};
pub use frame::{
    begin_raw_response, begin_request, begin_response, begin_response_with, decode, encode_define,
    encode_goaway, encode_ping, encode_pong, encode_request, encode_response, finish, peek_head,
    Attachments, Frame, FrameMark, Head, RawDubbo, Request, RequestHead, Response,
};
pub use from_dubbo::{
    encode_dubbo_answer, response_attachments, status_of_answer, status_of_dubbo,
};

use std::fmt;

/// The two magic bytes opening every frame.
pub const MAGIC: [u8; 2] = [0xDA, 0xBB];
/// The protocol version this module speaks.
pub const VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 18;
/// Largest body accepted or produced (8 MiB).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// The id of a consumer-agent's PINGs that says it understands GOAWAY (the ASCII of
/// `GOAWAY` and a version 1); a provider-agent marks the connection and may send it
/// GOAWAY. Any other id says nothing.
pub const GOAWAY_CAPABLE_PING: u64 = 0x474F_4157_4159_0001;

/// The outcome of a call, carried in a RESPONSE frame's status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// The call succeeded; the payload is the result value.
    Ok = 0,
    /// The provider threw or failed; the payload is a message. Not retried: the call may
    /// have run.
    ProviderError = 1,
    /// The provider (or its thread pool) is full and did not start the call: safe to
    /// retry on another provider.
    Overloaded = 2,
    /// No provider is reachable behind this agent; the call did not start: safe to retry
    /// elsewhere.
    Unavailable = 3,
    /// The call did not finish in time; it may have run.
    Timeout = 4,
    /// The request was malformed (unknown call id, bad arguments).
    BadRequest = 5,
    /// The provider threw; the payload is a hessian2 map describing the exception:
    /// `class`, `message` and `cause` (the same shape), see
    /// [`exception_summary`](crate::hessian2::exception_summary). Not retried: the call
    /// ran.
    Exception = 6,
    /// The provider-agent's authorization policy does not let this caller make this
    /// call; the payload is a message saying who may not call what. The call did not
    /// start, but it is not retried: it would be refused by the same policy elsewhere.
    Forbidden = 7,
}

impl Status {
    /// Whether the call certainly did not run, so it may be sent to another provider.
    pub fn is_retryable(self) -> bool {
        matches!(self, Status::Overloaded | Status::Unavailable)
    }

    /// Whether the payload is a hessian2 value ([`Status::Ok`], [`Status::Exception`])
    /// rather than a UTF-8 message.
    pub fn carries_value(self) -> bool {
        matches!(self, Status::Ok | Status::Exception)
    }

    /// Every status, in wire order (index = status byte).
    pub const ALL: [Status; 8] = [
        Status::Ok,
        Status::ProviderError,
        Status::Overloaded,
        Status::Unavailable,
        Status::Timeout,
        Status::BadRequest,
        Status::Exception,
        Status::Forbidden,
    ];

    /// The status for a wire byte.
    pub fn from_u8(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::ProviderError,
            2 => Status::Overloaded,
            3 => Status::Unavailable,
            4 => Status::Timeout,
            5 => Status::BadRequest,
            6 => Status::Exception,
            7 => Status::Forbidden,
            _ => return None,
        })
    }
}

/// Why an agent frame could not be decoded or encoded, or a call table refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentError {
    /// The first two bytes are not [`MAGIC`]: not an agent connection.
    BadMagic,
    /// A protocol version this side does not speak.
    UnsupportedVersion(u8),
    /// An unknown frame kind (low nibble of the kind byte).
    UnknownKind(u8),
    /// An unknown status byte in a RESPONSE.
    UnknownStatus(u8),
    /// The declared (or produced) body is over [`MAX_BODY`].
    BodyTooLarge(usize),
    /// The body does not match its kind's layout.
    Malformed(&'static str),
    /// A string field is not UTF-8.
    InvalidUtf8,
    /// A string is longer than a u16 length prefix allows, or there are more than 65535
    /// attachments.
    TooLong,
    /// The call table holds [`MAX_CALLS`] signatures, or [`MAX_TABLE_BYTES`] bytes of
    /// them, already.
    CallTableFull,
    /// A signature's name is over [`MAX_NAME_LEN`] bytes, or its parameter types over
    /// [`MAX_TYPES_LEN`].
    SignatureTooLong,
    /// A DEFINE names a call id at or past [`MAX_CALLS`].
    CallIdOutOfRange(u32),
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::BadMagic => f.write_str("bad magic: not an agent protocol stream"),
            AgentError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported agent protocol version {v} (this side speaks {VERSION})"
                )
            }
            AgentError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            AgentError::UnknownStatus(s) => write!(f, "unknown response status {s}"),
            AgentError::BodyTooLarge(n) => {
                write!(
                    f,
                    "frame body of {n} bytes is over the {MAX_BODY}-byte limit"
                )
            }
            AgentError::Malformed(what) => write!(f, "malformed frame: {what}"),
            AgentError::InvalidUtf8 => f.write_str("string field is not valid UTF-8"),
            AgentError::TooLong => f.write_str("string or attachment list too long to encode"),
            AgentError::CallTableFull => {
                write!(
                    f,
                    "call table full ({MAX_CALLS} signatures or {MAX_TABLE_BYTES} bytes of them on this connection)"
                )
            }
            AgentError::SignatureTooLong => write!(
                f,
                "interface, method, version or group over {MAX_NAME_LEN} bytes, or parameter types over {MAX_TYPES_LEN}"
            ),
            AgentError::CallIdOutOfRange(id) => {
                write!(f, "call id {id} is out of range (max {MAX_CALLS})")
            }
        }
    }
}

impl std::error::Error for AgentError {}
