//! HTTP/1.1 server side: an incremental request decoder and a response writer.
//!
//! Request heads are parsed by [`httparse`]; this module adds framing (Content-Length,
//! chunked), limits, keep-alive rules and `Expect: 100-continue`. A decoded
//! [`Request`] borrows its method, path, headers and (Content-Length) body from the input
//! buffer; only a chunked body is copied into an owned buffer.
//!
//! # Examples
//!
//! ```
//! use codec::Decoded;
//! use codec::http::{write_response, RequestDecoder};
//!
//! let mut dec = RequestDecoder::new();
//! let buf = b"POST /invoke HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n";
//! let Decoded::Complete { msg, consumed } = dec.decode(buf).unwrap() else { panic!() };
//! assert_eq!((msg.method, msg.path, &msg.body[..]), ("POST", "/invoke", &b"abc"[..]));
//! assert!(msg.keep_alive);
//! // `consumed` is where the next pipelined request starts.
//! assert!(matches!(dec.decode(&buf[consumed..]), Ok(Decoded::Complete { .. })));
//!
//! let mut out = Vec::new();
//! write_response(&mut out, 200, "text/plain", b"42", true);
//! assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
//! ```
//!
//! # Errors
//!
//! [`HttpError`] maps every failure to the status to answer ([`HttpError::status`]):
//! 400 bad syntax (a chunk-size line over 4 KiB, or chunk extensions together over the
//! head limit, included), 413 body too large, 417 unknown expectation, 431 head (or
//! chunked trailers) too large, 501 unsupported transfer-coding. After any error the connection cannot be re-framed:
//! answer (if nothing was written yet) and close.
//!
//! # Panics
//!
//! None on any input.

mod chunked;
mod response;

pub use response::{
    reason_phrase, write_continue, write_error, write_response, write_response_int,
    write_response_with,
};

use std::borrow::Cow;
use std::fmt;

use crate::Decoded;

/// Default largest request head (request line + headers), in bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// Default largest request body, in bytes.
pub const MAX_BODY: usize = 1024 * 1024;
/// Most headers a request may carry (they are kept in a fixed array, no allocation).
pub const MAX_HEADERS: usize = 32;

/// Size limits enforced by [`RequestDecoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest head in bytes; a longer incomplete head is answered with 431.
    pub max_head: usize,
    /// Largest body in bytes; a larger one is answered with 413.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: MAX_HEAD,
            max_body: MAX_BODY,
        }
    }
}

/// The HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: connections close unless `Connection: keep-alive`.
    Http10,
    /// HTTP/1.1: connections stay open unless `Connection: close`.
    Http11,
}

/// Why a request could not be decoded; each maps to the status to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// The request line or a header is malformed (400).
    Syntax(httparse::Error),
    /// Content-Length is not a decimal number, or several disagree (400).
    InvalidContentLength,
    /// Both Content-Length and Transfer-Encoding were sent (400, request smuggling guard).
    LengthAndTransferEncoding,
    /// A chunk size line or chunk delimiter is malformed (400).
    InvalidChunk,
    /// A chunk size line is longer than 4 KiB, or the chunk extensions of a body
    /// together pass the head limit (400).
    ChunkLineTooLong,
    /// The trailer fields after the last chunk pass the head limit (431).
    TrailersTooLarge,
    /// The head passed the head limit before it was complete (431).
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] headers (431).
    TooManyHeaders,
    /// The body is (or says it will be) over the body limit (413).
    BodyTooLarge,
    /// A transfer-coding other than `chunked` (501).
    UnsupportedTransferEncoding,
    /// An `Expect` other than `100-continue` (417).
    ExpectationFailed,
}

impl HttpError {
    /// The HTTP status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Syntax(_)
            | HttpError::InvalidContentLength
            | HttpError::LengthAndTransferEncoding
            | HttpError::InvalidChunk
            | HttpError::ChunkLineTooLong => 400,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders | HttpError::TrailersTooLarge => {
                431
            }
            HttpError::BodyTooLarge => 413,
            HttpError::UnsupportedTransferEncoding => 501,
            HttpError::ExpectationFailed => 417,
        }
    }

    /// A short human-readable reason, suitable as a response body.
    pub fn reason(&self) -> &'static str {
        match self {
            HttpError::Syntax(httparse::Error::HeaderName) => "invalid header name",
            HttpError::Syntax(httparse::Error::HeaderValue) => "invalid header value",
            HttpError::Syntax(httparse::Error::NewLine) => "invalid line ending",
            HttpError::Syntax(httparse::Error::Version) => "invalid HTTP version",
            HttpError::Syntax(_) => "malformed request line",
            HttpError::InvalidContentLength => "invalid Content-Length",
            HttpError::LengthAndTransferEncoding => {
                "both Content-Length and Transfer-Encoding present"
            }
            HttpError::InvalidChunk => "malformed chunked body",
            HttpError::ChunkLineTooLong => "chunk size line too long",
            HttpError::TrailersTooLarge => "trailer fields too large",
            HttpError::HeadTooLarge => "request head too large",
            HttpError::TooManyHeaders => "too many headers",
            HttpError::BodyTooLarge => "request body too large",
            HttpError::UnsupportedTransferEncoding => "unsupported transfer-encoding",
            HttpError::ExpectationFailed => "unsupported expectation",
        }
    }

    /// Whether the connection must be closed after answering. Always true: once framing
    /// failed the next request's start is unknown.
    pub fn closes_connection(&self) -> bool {
        true
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

impl std::error::Error for HttpError {}

impl From<httparse::Error> for HttpError {
    fn from(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
            e => HttpError::Syntax(e),
        }
    }
}

/// One decoded request, borrowing from the input buffer.
#[derive(Clone)]
pub struct Request<'a> {
    /// The method token, e.g. `POST`.
    pub method: &'a str,
    /// The request target as sent (any path is accepted).
    pub path: &'a str,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The `Content-Type` value, if any.
    pub content_type: Option<&'a [u8]>,
    /// The `Content-Length` value, if any.
    pub content_length: Option<u64>,
    /// Whether the body was sent with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// Whether the client sent `Expect: 100-continue`.
    pub expects_continue: bool,
    /// The body: borrowed for Content-Length, owned (de-chunked) for chunked.
    pub body: Cow<'a, [u8]>,
    headers: [httparse::Header<'a>; MAX_HEADERS],
    header_count: usize,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Headers<'r, 'a>(&'r Request<'a>);
        impl fmt::Debug for Headers<'_, '_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(
                        self.0
                            .headers()
                            .map(|(n, v)| (n, String::from_utf8_lossy(v))),
                    )
                    .finish()
            }
        }
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("version", &self.version)
            .field("keep_alive", &self.keep_alive)
            .field("expects_continue", &self.expects_continue)
            .field("chunked", &self.chunked)
            .field("content_length", &self.content_length)
            .field("headers", &Headers(self))
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl PartialEq for Request<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.method == other.method
            && self.path == other.path
            && self.version == other.version
            && self.content_type == other.content_type
            && self.content_length == other.content_length
            && self.chunked == other.chunked
            && self.keep_alive == other.keep_alive
            && self.expects_continue == other.expects_continue
            && self.body == other.body
            && self.headers().eq(other.headers())
    }
}

impl Eq for Request<'_> {}

impl<'a> Request<'a> {
    /// All headers in wire order, e.g. to read `dubbo-version` or `x-dubbo-*`.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a [u8])> + '_ {
        self.headers
            .get(..self.header_count)
            .unwrap_or_default()
            .iter()
            .map(|h| (h.name, h.value))
    }

    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether the content type is `application/x-www-form-urlencoded` (parameters ignored).
    pub fn is_form(&self) -> bool {
        self.content_type.is_some_and(|ct| {
            const FORM: &[u8] = b"application/x-www-form-urlencoded";
            // Sent in lower case nearly always: one comparison of the bytes first.
            if ct == FORM {
                return true;
            }
            let mime = ct.split(|&b| b == b';').next().unwrap_or_default();
            trim(mime).eq_ignore_ascii_case(FORM)
        })
    }
}

/// Where the body of the request at the buffer's start ends, remembered between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Nothing known: parse the head.
    Head,
    /// The head parsed and the whole request needs this many bytes: until the buffer
    /// holds them, answer `Incomplete` without re-parsing.
    Sized(usize),
    /// A chunked body: validated up to `pos` holding `body` de-chunked bytes, with `ext`
    /// bytes of chunk extensions so far.
    Chunked { pos: usize, body: usize, ext: usize },
}

/// An incremental HTTP/1.x request decoder for one connection.
///
/// Call [`decode`](Self::decode) with the connection's unconsumed bytes each time more
/// arrive. On `Incomplete` keep the bytes and call again with the same bytes plus the new
/// ones; on `Complete` drop `consumed` bytes. The decoder remembers how far it got so a
/// large body is not re-scanned on every read; call [`reset`](Self::reset) if the buffer
/// is discarded.
#[derive(Debug, Clone)]
pub struct RequestDecoder {
    limits: Limits,
    progress: Progress,
    continue_due: bool,
    continue_taken: bool,
}

impl Default for RequestDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestDecoder {
    /// A decoder with the default [`Limits`].
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// A decoder with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        RequestDecoder {
            limits,
            progress: Progress::Head,
            continue_due: false,
            continue_taken: false,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Forget any partial progress (the caller discarded its buffer).
    pub fn reset(&mut self) {
        self.progress = Progress::Head;
        self.continue_due = false;
        self.continue_taken = false;
    }

    /// True once per request when its head asked for `100 Continue` and the body has not
    /// fully arrived: the caller should then write [`write_continue`].
    pub fn take_continue(&mut self) -> bool {
        let due = self.continue_due && !self.continue_taken;
        if due {
            self.continue_taken = true;
        }
        due
    }

    /// Decode the request at the start of `buf`.
    ///
    /// # Errors
    ///
    /// See [`HttpError`]; the connection should be answered and closed.
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> Result<Decoded<Request<'a>>, HttpError> {
        if let Progress::Sized(need) = self.progress {
            if buf.len() < need {
                return Ok(Decoded::Incomplete);
            }
        }
        let result = self.decode_inner(buf);
        if !matches!(result, Ok(Decoded::Incomplete)) {
            self.reset();
        }
        result
    }

    fn decode_inner<'a>(&mut self, buf: &'a [u8]) -> Result<Decoded<Request<'a>>, HttpError> {
        let head_buf = buf
            .get(..buf.len().min(self.limits.max_head))
            .unwrap_or(buf);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(head_buf)? {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => {
                return if buf.len() >= self.limits.max_head {
                    Err(HttpError::HeadTooLarge)
                } else {
                    Ok(Decoded::Incomplete)
                };
            }
        };
        let method = req.method.unwrap_or_default();
        let path = req.path.unwrap_or_default();
        let version = if req.version == Some(0) {
            Version::Http10
        } else {
            Version::Http11
        };
        let header_count = req.headers.len();
        let head = Head::from_headers(req.headers, version)?;
        let mut request = Request {
            method,
            path,
            version,
            content_type: head.content_type,
            content_length: head.content_length,
            chunked: head.chunked,
            keep_alive: head.keep_alive,
            expects_continue: head.expects_continue,
            body: Cow::Borrowed(&[]),
            headers,
            header_count,
        };
        let rest = buf.get(head_len..).unwrap_or_default();
        if head.chunked {
            let (pos, body, ext) = match self.progress {
                Progress::Chunked { pos, body, ext } => (pos, body, ext),
                _ => (0, 0, 0),
            };
            match chunked::scan(rest, pos, body, ext, self.limits)? {
                chunked::Scan::Incomplete { pos, body, ext } => {
                    self.progress = Progress::Chunked { pos, body, ext };
                    self.continue_due = head.expects_continue;
                    Ok(Decoded::Incomplete)
                }
                chunked::Scan::Complete { end, body } => {
                    request.body = Cow::Owned(chunked::collect(rest, end, body)?);
                    Ok(Decoded::Complete {
                        msg: request,
                        consumed: head_len + end,
                    })
                }
            }
        } else {
            let len = head.content_length.unwrap_or(0);
            if len > self.limits.max_body as u64 {
                return Err(HttpError::BodyTooLarge);
            }
            // Fits in usize: bounded by max_body.
            let len = len as usize;
            let need = head_len + len;
            match buf.get(head_len..need) {
                Some(body) => {
                    request.body = Cow::Borrowed(body);
                    Ok(Decoded::Complete {
                        msg: request,
                        consumed: need,
                    })
                }
                None => {
                    self.progress = Progress::Sized(need);
                    self.continue_due = head.expects_continue;
                    Ok(Decoded::Incomplete)
                }
            }
        }
    }
}

/// The framing facts pulled from the headers.
struct Head<'a> {
    content_type: Option<&'a [u8]>,
    content_length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
    expects_continue: bool,
}

impl<'a> Head<'a> {
    fn from_headers(headers: &[httparse::Header<'a>], version: Version) -> Result<Self, HttpError> {
        let mut head = Head {
            content_type: None,
            content_length: None,
            chunked: false,
            keep_alive: version == Version::Http11,
            expects_continue: false,
        };
        let mut saw_close = false;
        let mut saw_te = false;
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                let n = parse_content_length(h.value)?;
                if head.content_length.is_some_and(|old| old != n) {
                    return Err(HttpError::InvalidContentLength);
                }
                head.content_length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                saw_te = true;
                // Only a lone `chunked` is supported (no gzip etc. beneath it).
                for coding in tokens(h.value) {
                    if coding.eq_ignore_ascii_case(b"chunked") && !head.chunked {
                        head.chunked = true;
                    } else {
                        return Err(HttpError::UnsupportedTransferEncoding);
                    }
                }
            } else if name.eq_ignore_ascii_case("connection") {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        saw_close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        head.keep_alive = true;
                    }
                }
            } else if name.eq_ignore_ascii_case("content-type") {
                head.content_type.get_or_insert(h.value);
            } else if name.eq_ignore_ascii_case("expect") {
                if trim(h.value).eq_ignore_ascii_case(b"100-continue") {
                    // HTTP/1.0 clients do not understand 100 Continue; ignore it there.
                    head.expects_continue = version == Version::Http11;
                } else {
                    return Err(HttpError::ExpectationFailed);
                }
            }
        }
        if saw_te && !head.chunked {
            return Err(HttpError::UnsupportedTransferEncoding);
        }
        if head.chunked && head.content_length.is_some() {
            return Err(HttpError::LengthAndTransferEncoding);
        }
        if saw_close {
            head.keep_alive = false;
        }
        Ok(head)
    }
}

fn parse_content_length(v: &[u8]) -> Result<u64, HttpError> {
    let v = trim(v);
    if v.is_empty() || v.len() > 19 {
        return Err(HttpError::InvalidContentLength);
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(HttpError::InvalidContentLength);
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Ok(n)
}

/// Comma-separated, trimmed, non-empty tokens of a header value.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty())
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}
