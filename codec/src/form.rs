//! `application/x-www-form-urlencoded` bodies, and the race's call fields.
//!
//! Keys and values are percent-decoded (`%2F` or `%2f`) with `+` as space. A component
//! without `%` or `+` is returned borrowed ([`Cow::Borrowed`]): the common case allocates
//! nothing. A bad escape (`%zz`, a truncated `%4`) is an error, as is invalid UTF-8 where
//! a `str` is asked for.
//!
//! # Examples
//!
//! ```
//! use std::borrow::Cow;
//! use codec::form::{fields, race_call};
//!
//! let body = b"interface=com.example.Hello&method=hash\
//!              &parameterTypesString=Ljava%2Flang%2FString%3B&parameter=a+b%21";
//! let call = race_call(body).unwrap();
//! assert_eq!(call.interface, "com.example.Hello");
//! assert!(matches!(call.method, Cow::Borrowed(_)));
//! assert_eq!(call.parameter_types, "Ljava/lang/String;");
//! assert_eq!(call.parameter.as_deref(), Some("a b!"));
//!
//! let pairs: Vec<_> = fields(b"x=1&y=").collect::<Result<_, _>>().unwrap();
//! assert_eq!(pairs, [(Cow::from(&b"x"[..]), Cow::from(&b"1"[..])), (Cow::from(&b"y"[..]), Cow::from(&b""[..]))]);
//! ```

use std::borrow::Cow;
use std::fmt;

/// Why a form body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    /// A `%` not followed by two hex digits, at this byte offset of the component.
    InvalidEscape {
        /// Offset of the `%` within the key or value.
        offset: usize,
    },
    /// A component needed as text is not valid UTF-8.
    InvalidUtf8,
    /// A field the caller requires is absent.
    MissingField(&'static str),
}

impl fmt::Display for FormError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormError::InvalidEscape { offset } => {
                write!(f, "invalid percent-escape at offset {offset}")
            }
            FormError::InvalidUtf8 => f.write_str("form field is not valid UTF-8"),
            FormError::MissingField(name) => write!(f, "missing form field `{name}`"),
        }
    }
}

impl std::error::Error for FormError {}

/// Raw `(key, value)` pairs of a form body, split on `&` and the first `=`, not decoded.
///
/// Empty segments (`a=1&&b=2`) are skipped; a segment without `=` has an empty value.
pub fn raw_fields(body: &[u8]) -> RawFields<'_> {
    RawFields { rest: body }
}

/// Iterator returned by [`raw_fields`].
#[derive(Debug, Clone)]
pub struct RawFields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for RawFields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (seg, rest) = match find(self.rest, b'&', b'&') {
                Some(i) => (
                    self.rest.get(..i).unwrap_or_default(),
                    self.rest.get(i + 1..).unwrap_or_default(),
                ),
                None => (self.rest, &[][..]),
            };
            self.rest = rest;
            if seg.is_empty() {
                continue;
            }
            return Some(match find(seg, b'=', b'=') {
                Some(i) => (
                    seg.get(..i).unwrap_or_default(),
                    seg.get(i + 1..).unwrap_or_default(),
                ),
                None => (seg, &[][..]),
            });
        }
    }
}

/// Decoded `(key, value)` pairs of a form body, in order; stops being useful after an error.
pub fn fields(body: &[u8]) -> Fields<'_> {
    Fields {
        raw: raw_fields(body),
    }
}

/// Iterator returned by [`fields`].
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    raw: RawFields<'a>,
}

/// A decoded form field: key and value, borrowed unless an escape had to be decoded.
pub type Field<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, FormError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (k, v) = self.raw.next()?;
        Some(decode(k).and_then(|k| Ok((k, decode(v)?))))
    }
}

/// Percent-decode one component (`+` is a space). Borrowed when there is nothing to decode.
///
/// # Errors
///
/// [`FormError::InvalidEscape`] for `%` not followed by two hex digits.
pub fn decode(raw: &[u8]) -> Result<Cow<'_, [u8]>, FormError> {
    if find(raw, b'%', b'+').is_none() {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    decode_into(raw, &mut out)?;
    Ok(Cow::Owned(out))
}

/// Percent-decode one component (`+` is a space), appending to `out`: with a buffer kept
/// for reuse, decoding allocates nothing.
///
/// # Errors
///
/// [`FormError::InvalidEscape`] for `%` not followed by two hex digits (offset within
/// `raw`); `out` may then hold part of the component.
pub fn decode_into(raw: &[u8], out: &mut Vec<u8>) -> Result<(), FormError> {
    let mut i = 0;
    while let Some(next) = find(raw.get(i..).unwrap_or_default(), b'%', b'+') {
        let at = i + next;
        out.extend_from_slice(raw.get(i..at).unwrap_or_default());
        if raw.get(at) == Some(&b'+') {
            out.push(b' ');
            i = at + 1;
            continue;
        }
        let hi = raw.get(at + 1).copied().and_then(hex);
        let lo = raw.get(at + 2).copied().and_then(hex);
        match (hi, lo) {
            (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
            _ => return Err(FormError::InvalidEscape { offset: at }),
        }
        i = at + 3;
    }
    out.extend_from_slice(raw.get(i..).unwrap_or_default());
    Ok(())
}

/// Percent-decode one component and check it is UTF-8.
///
/// # Errors
///
/// [`FormError::InvalidEscape`] or [`FormError::InvalidUtf8`].
pub fn decode_str(raw: &[u8]) -> Result<Cow<'_, str>, FormError> {
    match decode(raw)? {
        Cow::Borrowed(b) => std::str::from_utf8(b)
            .map(Cow::Borrowed)
            .map_err(|_| FormError::InvalidUtf8),
        Cow::Owned(v) => String::from_utf8(v)
            .map(Cow::Owned)
            .map_err(|_| FormError::InvalidUtf8),
    }
}

/// Index of the first `a` or `b` in `hay` (`memchr`: SIMD where the CPU has it):
/// values are long (the race sends up to 1023 characters) and usually hold neither.
fn find(hay: &[u8], a: u8, b: u8) -> Option<usize> {
    if a == b {
        memchr::memchr(a, hay)
    } else {
        memchr::memchr2(a, b, hay)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The race's call, pulled from its form body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaceCall<'a> {
    /// `interface`: the Dubbo service name.
    pub interface: Cow<'a, str>,
    /// `method`: the method name.
    pub method: Cow<'a, str>,
    /// `parameterTypesString`: JVM descriptors, e.g. `Ljava/lang/String;` (empty if absent).
    pub parameter_types: Cow<'a, str>,
    /// `parameter`: the single string argument, if sent (it may be empty).
    pub parameter: Option<Cow<'a, str>>,
}

/// Pull `interface`, `method`, `parameterTypesString` and `parameter` from a form body.
///
/// Fields may come in any order; the first occurrence wins; unknown fields are ignored
/// (their values are not decoded). `Ljava/lang/String;` sent unescaped works as is.
///
/// # Errors
///
/// A bad escape or invalid UTF-8 in a wanted field, or a missing `interface`/`method`.
pub fn race_call(body: &[u8]) -> Result<RaceCall<'_>, FormError> {
    let [interface, method, parameter_types, parameter] = race_fields(body)?;
    fn text(raw: Option<&[u8]>) -> Result<Option<Cow<'_, str>>, FormError> {
        raw.map(decode_str).transpose()
    }
    RaceCall::new(
        text(interface)?,
        text(method)?,
        text(parameter_types)?,
        text(parameter)?,
    )
}

/// [`race_call`] without allocating: escaped fields are decoded into `scratch` (cleared
/// first, its capacity reused), and every field borrows from `body` or `scratch`.
///
/// # Errors
///
/// As [`race_call`].
pub fn race_call_in<'a>(
    body: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<RaceCall<'a>, FormError> {
    /// Where a decoded field lies: in the body as sent, or in the scratch buffer.
    #[derive(Clone)]
    enum Span<'b> {
        Body(&'b [u8]),
        Scratch(std::ops::Range<usize>),
    }
    let raw = race_fields(body)?;
    scratch.clear();
    let mut spans: [Option<Span<'a>>; 4] = [None, None, None, None];
    for (span, raw) in spans.iter_mut().zip(raw) {
        let Some(raw) = raw else { continue };
        let decoded = if find(raw, b'%', b'+').is_none() {
            Span::Body(raw)
        } else {
            let start = scratch.len();
            decode_into(raw, scratch)?;
            Span::Scratch(start..scratch.len())
        };
        // Checked field by field, so errors come in the same order as `race_call`'s.
        let bytes = match &decoded {
            Span::Body(b) => b,
            Span::Scratch(r) => scratch.get(r.clone()).unwrap_or_default(),
        };
        std::str::from_utf8(bytes).map_err(|_| FormError::InvalidUtf8)?;
        *span = Some(decoded);
    }
    let scratch: &'a [u8] = scratch;
    let text = |span: &Option<Span<'a>>| -> Result<Option<Cow<'a, str>>, FormError> {
        let bytes = match span {
            None => return Ok(None),
            Some(Span::Body(b)) => *b,
            Some(Span::Scratch(r)) => scratch.get(r.clone()).unwrap_or_default(),
        };
        // Checking again would be a third pass over the parameter (up to a kilobyte
        // in the race): about 600 instructions a call (callgrind,
        // bench/scripts/instructions-per-request.sh).
        #[allow(unsafe_code)]
        // SAFETY: the loop above checked these very bytes with `from_utf8` (a span is
        // set only after its check passed), and nothing wrote to them since.
        let s = unsafe { std::str::from_utf8_unchecked(bytes) };
        Ok(Some(Cow::Borrowed(s)))
    };
    let [interface, method, parameter_types, parameter] = &spans;
    RaceCall::new(
        text(interface)?,
        text(method)?,
        text(parameter_types)?,
        text(parameter)?,
    )
}

/// The raw (still escaped) values of `interface`, `method`, `parameterTypesString` and
/// `parameter`, first occurrence of each.
fn race_fields(body: &[u8]) -> Result<[Option<&[u8]>; 4], FormError> {
    let mut found = [None; 4];
    for (k, v) in raw_fields(body) {
        let slot = match &*decode(k)? {
            b"interface" => 0,
            b"method" => 1,
            b"parameterTypesString" => 2,
            b"parameter" => 3,
            _ => continue,
        };
        found[slot].get_or_insert(v);
    }
    Ok(found)
}

impl<'a> RaceCall<'a> {
    fn new(
        interface: Option<Cow<'a, str>>,
        method: Option<Cow<'a, str>>,
        parameter_types: Option<Cow<'a, str>>,
        parameter: Option<Cow<'a, str>>,
    ) -> Result<Self, FormError> {
        Ok(RaceCall {
            interface: interface.ok_or(FormError::MissingField("interface"))?,
            method: method.ok_or(FormError::MissingField("method"))?,
            parameter_types: parameter_types.unwrap_or(Cow::Borrowed("")),
            parameter,
        })
    }
}
