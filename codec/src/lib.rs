//! Byte-level codecs for dubbo-mesh: pure bytes in, messages out; no sockets, no clocks.
//!
//! Every decoder is incremental: given the bytes available it returns a complete message
//! and the bytes it consumed, [`Decoded::Incomplete`], or a typed error. None panics on
//! any input.

#![deny(missing_docs)]

pub mod agent;
pub mod dubbo;
pub mod form;
pub mod hessian2;
pub mod http;
pub mod invocation;
pub mod java;
pub mod json;
pub mod prometheus;
pub mod trace;

/// The outcome of an incremental decode step.
///
/// `Incomplete` consumes nothing: call again with the same bytes plus more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// A whole message, and how many input bytes it took.
    Complete {
        /// The decoded message (it may borrow from the input).
        msg: T,
        /// Bytes of input the message occupied.
        consumed: usize,
    },
    /// More bytes are needed; nothing was consumed.
    Incomplete,
}
