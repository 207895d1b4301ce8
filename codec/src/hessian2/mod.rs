//! Hessian 2.0 serialization, as Dubbo's default `hessian2` (id 2) uses it.
//!
//! - [`Value`]: a decoded value, references resolved (a cycle is cut with
//!   [`Value::Ref`]);
//! - [`decode`] / [`Decoder`]: incremental decoding, with class, type and
//!   reference tables kept across the values of one body;
//! - [`ser`]: compact encoders and [`Encoder`] (class table);
//! - [`json`]: rendering to JSON/text and typed arguments from JSON;
//! - [`exception_message`]: the message of a Java exception, any class.
//!
//! # Examples
//!
//! ```
//! use codec::hessian2::{self, Value};
//! use codec::Decoded;
//!
//! let mut buf = Vec::new();
//! hessian2::write_int(&mut buf, 99162322);
//! assert_eq!(buf, [0x49, 0x05, 0xe9, 0x18, 0xd2]);
//! match hessian2::decode(&buf).unwrap() {
//!     Decoded::Complete { msg, consumed } => {
//!         assert_eq!(msg, Value::Int(99162322));
//!         assert_eq!(consumed, 5);
//!     }
//!     Decoded::Incomplete => unreachable!(),
//! }
//! assert_eq!(hessian2::decode(&buf[..3]).unwrap(), Decoded::Incomplete);
//! ```
//!
//! # Errors
//! Malformed input gives an [`Error`]; input that merely stops early gives
//! [`Decoded::Incomplete`].
//!
//! # Panics
//! None on any input.

mod big;
mod date;
mod de;
pub mod json;
pub mod ser;
mod value;

pub use big::MAX_BIG_DIGITS;
pub use date::{iso8601, parse_iso8601};
pub use de::{Decoder, Skipper};
pub use json::{
    base64_decode, base64_encode, encode_json_arg, value_from_json, value_from_mesh_json,
};
pub use ser::{
    write_binary, write_bool, write_date, write_double, write_end, write_int, write_list_begin,
    write_list_begin_variable, write_long, write_map_begin, write_null, write_string, write_value,
    Encoder,
};
pub use value::{exception_message, exception_summary, Value, MAX_CAUSES};

use crate::Decoded;
use std::fmt;

/// Deepest nesting of lists, maps and objects accepted (stack safety).
pub const MAX_DEPTH: usize = 64;
/// Most elements one list or map may declare or hold.
pub const MAX_COLLECTION_LEN: usize = 1 << 24;
/// Most fields one class definition may declare.
pub const MAX_FIELDS: usize = 4096;
/// Most value nodes one decode call may produce, copies made by resolving
/// references included: a few bytes of references cannot blow up memory.
/// A [`Decoder`] also bounds by it the nodes it copies into its reference
/// table or out of it over its whole life (all the values of one body).
pub const MAX_NODES: usize = 1 << 22;

/// Why hessian2 bytes (or a JSON argument) could not be handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A byte that cannot start what the grammar needs at this offset.
    UnexpectedTag {
        /// The byte found.
        tag: u8,
        /// Its offset in the input given to the decoder.
        offset: usize,
        /// What was expected there.
        expected: &'static str,
    },
    /// A string's bytes are not UTF-8 (nor CESU-8).
    InvalidUtf8 {
        /// Offset of the bad sequence.
        offset: usize,
    },
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// A length above its limit.
    TooLong {
        /// What carried the length.
        what: &'static str,
        /// The length found.
        len: i64,
        /// The limit.
        max: usize,
    },
    /// A negative length.
    NegativeLength {
        /// What carried the length.
        what: &'static str,
        /// The length found.
        len: i64,
    },
    /// An object naming a class definition never sent.
    UnknownClass {
        /// The index found.
        index: i64,
    },
    /// A reference to a value never sent.
    UnknownRef {
        /// The index found.
        index: i64,
    },
    /// A type reference to a type name never sent.
    UnknownType {
        /// The index found.
        index: i64,
    },
    /// More than [`MAX_NODES`] values in one decode call, or more than
    /// [`MAX_NODES`] copied by references in one [`Decoder`]'s life.
    TooManyNodes {
        /// The limit.
        max: usize,
    },
    /// A JSON argument that does not fit its Java type.
    TypeMismatch {
        /// The Java type asked for.
        java_type: String,
        /// What that type needs.
        expected: &'static str,
        /// What the JSON held.
        found: &'static str,
    },
    /// A `byte[]` argument string that is not base64.
    InvalidBase64,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnexpectedTag {
                tag,
                offset,
                expected,
            } => {
                write!(
                    f,
                    "hessian2: byte 0x{tag:02x} at offset {offset}, expected {expected}"
                )
            }
            Error::InvalidUtf8 { offset } => {
                write!(f, "hessian2: invalid UTF-8 at offset {offset}")
            }
            Error::TooDeep { max } => write!(f, "hessian2: nesting deeper than {max}"),
            Error::TooLong { what, len, max } => {
                write!(f, "hessian2: {what} length {len} over the limit {max}")
            }
            Error::NegativeLength { what, len } => {
                write!(f, "hessian2: negative {what} length {len}")
            }
            Error::UnknownClass { index } => write!(f, "hessian2: undefined class index {index}"),
            Error::UnknownRef { index } => write!(f, "hessian2: reference {index} to no value"),
            Error::UnknownType { index } => write!(f, "hessian2: undefined type index {index}"),
            Error::TooManyNodes { max } => write!(f, "hessian2: more than {max} values"),
            Error::TypeMismatch {
                java_type,
                expected,
                found,
            } => {
                write!(
                    f,
                    "argument of type {java_type} needs {expected}, got {found}"
                )
            }
            Error::InvalidBase64 => write!(f, "byte[] argument is not valid base64"),
        }
    }
}

impl std::error::Error for Error {}

/// Decode one value from the start of `buf` with fresh tables.
///
/// # Errors
/// See [`Error`]; a truncated value is `Ok(Decoded::Incomplete)`.
pub fn decode(buf: &[u8]) -> Result<Decoded<Value>, Error> {
    Decoder::new().decode(buf)
}
