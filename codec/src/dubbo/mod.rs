//! Dubbo 2 protocol frames (the `dubbo://` wire format) over hessian2 or
//! fastjson bodies.
//!
//! - [`decode_frame`]: header and borrowed body, length limit first;
//! - [`encode_request`]: the consumer hot path, hessian2 arguments copied
//!   verbatim, length back-patched;
//! - [`decode_response_body`] for consumers, [`decode_request_body`] and
//!   [`encode_response`] for mock providers and tests;
//! - heartbeats: [`encode_heartbeat_request`], [`encode_heartbeat_reply`];
//! - [`server`]: what both agents' Dubbo front-ends share (frames a consumer sends,
//!   limits, error answers, relaying under another id).
//!
//! # Examples
//!
//! ```
//! use codec::dubbo::{self, Attachments, Request, Serialization};
//! use codec::{hessian2, Decoded};
//!
//! let mut args = Vec::new();
//! hessian2::write_string(&mut args, "hello");
//! let req = Request {
//!     id: 1,
//!     serialization: Serialization::Hessian2,
//!     two_way: true,
//!     dubbo_version: "2.0.2",
//!     path: "demo.IHelloService",
//!     version: Some("0.0.0"),
//!     group: None,
//!     method: "hash",
//!     descriptor: &dubbo::jvm_descriptor(&["java.lang.String"]),
//!     args: &args,
//!     attachments: Attachments::Standard(&[]),
//! };
//! let mut out = Vec::new();
//! dubbo::encode_request(&mut out, &req).unwrap();
//! let Decoded::Complete { msg: frame, consumed } = dubbo::decode_frame(&out).unwrap() else {
//!     unreachable!()
//! };
//! assert_eq!(consumed, out.len());
//! let body = dubbo::decode_request_body(frame.serialization_id(), frame.body).unwrap();
//! assert_eq!(body.method, "hash");
//! assert_eq!(body.args, [hessian2::Value::String("hello".into())]);
//! ```
//!
//! # Errors
//! One [`Error`] enum; hessian2 failures are wrapped in [`Error::Hessian`].
//!
//! # Panics
//! None on any input.

mod frame;
mod request;
mod response;
pub(crate) use request::ascii_string;
pub mod server;

pub use frame::{
    decode_frame, encode_heartbeat_reply, encode_heartbeat_request, encode_readonly_event, status,
    write_header, Frame, Header, FLAG_EVENT, FLAG_REQUEST, FLAG_TWO_WAY, HEADER_LEN, MAGIC,
    MAX_BODY_LEN, SERIALIZATION_MASK,
};
pub use request::{
    decode_request_body, decode_routed_request, descriptor_arity, encode_request,
    is_reserved_attachment, jvm_descriptor, Attachments, Request, RequestBody, RequestTemplate,
    RoutedRequest, RESERVED_ATTACHMENTS,
};
pub use response::{
    decode_response_body, encode_response, Outcome, Reply, Response, RESPONSE_NULL_VALUE,
    RESPONSE_NULL_VALUE_WITH_ATTACHMENTS, RESPONSE_VALUE, RESPONSE_VALUE_WITH_ATTACHMENTS,
    RESPONSE_WITH_EXCEPTION, RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS,
};
pub use server::DEFAULT_DUBBO_VERSION;

use crate::hessian2::{self, value_from_json, Decoder, Value};
use crate::Decoded;
use std::fmt;

/// Serialization id of hessian2 (Dubbo's default).
pub const SERIALIZATION_HESSIAN2: u8 = 2;
/// Serialization id of fastjson (one JSON value per line).
pub const SERIALIZATION_FASTJSON: u8 = 6;

/// The body serializations this crate speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serialization {
    /// hessian2, id 2.
    Hessian2,
    /// fastjson, id 6.
    Fastjson,
}

impl Serialization {
    /// The id carried in the header's flags byte.
    pub fn id(self) -> u8 {
        match self {
            Serialization::Hessian2 => SERIALIZATION_HESSIAN2,
            Serialization::Fastjson => SERIALIZATION_FASTJSON,
        }
    }

    /// The serialization of an id, if supported.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            SERIALIZATION_HESSIAN2 => Some(Serialization::Hessian2),
            SERIALIZATION_FASTJSON => Some(Serialization::Fastjson),
            _ => None,
        }
    }
}

/// Why a Dubbo frame or body could not be handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The first two bytes are not `da bb` (the offending bytes as known).
    BadMagic([u8; 2]),
    /// The header's body length is negative.
    NegativeBodyLength(i32),
    /// The body is longer than [`MAX_BODY_LEN`].
    BodyTooLong {
        /// Length announced or produced.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A serialization id other than hessian2 (2) or fastjson (6).
    UnsupportedSerialization(u8),
    /// Malformed hessian2 in the body.
    Hessian(hessian2::Error),
    /// A fastjson line that is not JSON.
    Json {
        /// Which field.
        what: &'static str,
        /// serde_json's message.
        message: String,
    },
    /// The body ended before this field.
    Truncated {
        /// The missing field.
        what: &'static str,
    },
    /// A field of the wrong kind.
    BadField {
        /// The field.
        what: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// A response flag outside 0..=5.
    BadFlag(i64),
    /// A malformed JVM parameter descriptor.
    BadDescriptor(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadMagic([a, b]) => write!(f, "dubbo: bad magic {a:02x} {b:02x}"),
            Error::NegativeBodyLength(n) => write!(f, "dubbo: negative body length {n}"),
            Error::BodyTooLong { len, max } => {
                write!(f, "dubbo: body of {len} bytes over the limit {max}")
            }
            Error::UnsupportedSerialization(id) => {
                write!(f, "dubbo: unsupported serialization id {id}")
            }
            Error::Hessian(e) => write!(f, "dubbo: {e}"),
            Error::Json { what, message } => write!(f, "dubbo: fastjson {what}: {message}"),
            Error::Truncated { what } => write!(f, "dubbo: body ends before the {what}"),
            Error::BadField { what, expected } => write!(f, "dubbo: {what} is not {expected}"),
            Error::BadFlag(n) => write!(f, "dubbo: unknown response flag {n}"),
            Error::BadDescriptor(d) => write!(f, "dubbo: malformed parameter descriptor {d:?}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Hessian(e) => Some(e),
            _ => None,
        }
    }
}

impl From<hessian2::Error> for Error {
    fn from(e: hessian2::Error) -> Self {
        Error::Hessian(e)
    }
}

/// The successive hessian2 values of one body, sharing one [`Decoder`].
struct BodyValues<'a> {
    dec: Decoder,
    rest: &'a [u8],
}

fn body_values(body: &[u8]) -> BodyValues<'_> {
    BodyValues {
        dec: Decoder::for_body(body),
        rest: body,
    }
}

impl BodyValues<'_> {
    /// The next value, `None` at the end of the body; a value cut by the end
    /// of the body is an error (the frame is whole).
    fn next_value(&mut self) -> Result<Option<Value>, Error> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        match self.dec.decode(self.rest)? {
            Decoded::Complete { msg, consumed } => {
                self.rest = self.rest.get(consumed..).unwrap_or_default();
                Ok(Some(msg))
            }
            Decoded::Incomplete => Err(Error::Truncated { what: "value" }),
        }
    }

    fn need(&mut self, what: &'static str) -> Result<Value, Error> {
        self.next_value()?.ok_or(Error::Truncated { what })
    }
}

/// The non-empty lines of a fastjson body (JSON text never holds a raw
/// newline, so splitting on `\n` is exact).
fn json_lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
}

fn json_value(line: &[u8], what: &'static str) -> Result<Value, Error> {
    serde_json::from_slice::<serde_json::Value>(line)
        .map(|j| value_from_json(&j))
        .map_err(|e| Error::Json {
            what,
            message: e.to_string(),
        })
}
