//! Distributed trace context: W3C Trace Context (`traceparent`, `tracestate`), Zipkin
//! B3 (the single `b3` header and the `X-B3-*` headers) and Apache SkyWalking's `sw8`,
//! read from HTTP headers or Dubbo attachments and written back as attachments.
//!
//! Parsing is strict: anything that does not follow its specification is no context at
//! all ([`extract`] returns `None`), never an error to the call and never a panic. Each
//! context remembers its [`Format`], so an agent that continues a trace hands it on in
//! the format the caller used.
//!
//! # Formats
//!
//! ```text
//! traceparent: 00-<trace id, 32 hex>-<parent span id, 16 hex>-<flags, 2 hex>
//! tracestate:  key=value[,key=value]...        (kept as sent, when well formed)
//! b3:          <trace id, 16|32 hex>-<span id, 16 hex>[-<1|0|d>[-<parent span id>]]
//! x-b3-traceid / x-b3-spanid / x-b3-parentspanid / x-b3-sampled (1|0) / x-b3-flags (1)
//! sw8:         <sample 0|1>-<trace id>-<segment id>-<span id, int>-<parent service>-
//!              <parent instance>-<parent endpoint>-<target address>  (strings base64)
//! ```
//!
//! Hex is lower case, and no id is all zeros. A SkyWalking trace id is any string: one
//! of 32 hex digits maps to the 16-byte trace id as it is, another to a 128-bit hash of
//! it (the same everywhere, so every agent derives the same id); the string itself
//! travels on unchanged in the `sw8` written. A SkyWalking parent (segment id, span
//! index) maps to a span id the same way: a 16-hex-digit segment id with span index 0
//! (what [`TraceContext::encode`] writes) is the span id as it is.
//!
//! # Examples
//!
//! ```
//! use codec::trace::{self, Format, Sw8Local};
//!
//! let headers = [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")];
//! let get = |k: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| *v);
//! let caller = trace::extract(get).unwrap();
//! assert_eq!(caller.format, Format::W3c);
//! assert_eq!(caller.sampled, Some(true));
//!
//! // Continue it with a span of our own, and write it on.
//! let ours = caller.child([1, 2, 3, 4, 5, 6, 7, 8]);
//! let mut buf = String::new();
//! let fields = ours.encode(&Sw8Local::default(), &mut buf);
//! let written: Vec<_> = fields.iter(&buf).collect();
//! assert_eq!(
//!     written,
//!     [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01")]
//! );
//! ```

use std::fmt;

/// The attachment (and header) names this module reads and writes, lower case. A
/// continued context replaces every one of them.
pub const KEYS: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// The SkyWalking header, read and written too (beside [`KEYS`]).
pub const SW8: &str = "sw8";

/// Longest `tracestate` kept (W3C: at least 512 characters must be propagated).
pub const MAX_TRACESTATE: usize = 512;
/// Most list members in a `tracestate`.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Longest `sw8` value read.
pub const MAX_SW8: usize = 2048;
/// Longest decoded `sw8` field (trace id, service, instance, endpoint, address).
pub const MAX_SW8_FIELD: usize = 512;

/// Whether `key` is one of the trace attachments ([`KEYS`] or [`SW8`]), in any case.
pub fn is_trace_key(key: &str) -> bool {
    key_index(key).is_some()
}

/// Which propagation format a context came in (and is written on in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// W3C Trace Context: `traceparent` and `tracestate`.
    W3c,
    /// B3, the single `b3` header.
    B3Single,
    /// B3, the `x-b3-*` headers.
    B3Multi,
    /// SkyWalking cross-process propagation, `sw8`.
    Sw8,
}

impl Format {
    /// A short name (`w3c`, `b3`, `b3-multi`, `sw8`).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::W3c => "w3c",
            Format::B3Single => "b3",
            Format::B3Multi => "b3-multi",
            Format::Sw8 => "sw8",
        }
    }
}

/// One position in a trace: which trace, which span is the current one (the parent of
/// any span made from it), and whether the trace is sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace (never all zeros).
    pub trace_id: [u8; 16],
    /// The current span (never all zeros): the caller's span in an extracted context,
    /// ours in one made by [`TraceContext::child`].
    pub span_id: [u8; 8],
    /// The current span's parent, when known (B3 sends it; a child knows it).
    pub parent_span_id: Option<[u8; 8]>,
    /// The sampling decision: `None` when the caller deferred it (B3 without a sampled
    /// flag), for the receiver to take.
    pub sampled: Option<bool>,
    /// B3 debug (`d`, `x-b3-flags: 1`): sampled, and forced through.
    pub debug: bool,
    /// W3C trace-flags other than `sampled` (kept as received).
    pub flags: u8,
    /// The format it came in, and is written on in.
    pub format: Format,
    /// W3C `tracestate`, as received when well formed (else empty).
    pub tracestate: String,
    /// SkyWalking's trace id, decoded (empty for the other formats).
    pub sw8_trace_id: String,
}

/// What a SkyWalking `sw8` written by this side says about it (the other formats ignore
/// it): this side's service, instance and endpoint, and the address it calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sw8Local<'a> {
    /// The calling service (e.g. `consumer-agent`).
    pub service: &'a str,
    /// The calling service instance (e.g. its address).
    pub instance: &'a str,
    /// The endpoint (e.g. `interface.method`).
    pub endpoint: &'a str,
    /// The address called.
    pub address: &'a str,
}

/// Up to this many fields are written by [`TraceContext::encode`].
const MAX_FIELDS: usize = 5;

/// The fields [`TraceContext::encode`] wrote: names, and value ranges in its buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fields {
    items: [(&'static str, usize, usize); MAX_FIELDS],
    len: usize,
}

impl Fields {
    fn push(&mut self, key: &'static str, start: usize, end: usize) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (key, start, end);
            self.len += 1;
        }
    }

    /// How many fields were written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The (name, value) pairs, the values read from `buf` (the buffer given to
    /// [`TraceContext::encode`]).
    pub fn iter(self, buf: &str) -> FieldsIter<'_> {
        FieldsIter {
            fields: self,
            buf,
            next: 0,
        }
    }
}

/// The (name, value) pairs of [`Fields`] (see [`Fields::iter`]).
#[derive(Debug, Clone)]
pub struct FieldsIter<'b> {
    fields: Fields,
    buf: &'b str,
    next: usize,
}

impl<'b> Iterator for FieldsIter<'b> {
    type Item = (&'b str, &'b str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.fields.len {
            return None;
        }
        let (k, s, e) = *self.fields.items.get(self.next)?;
        self.next += 1;
        Some((k, self.buf.get(s..e).unwrap_or_default()))
    }
}

/// The trace attachments ([`KEYS`] and [`SW8`]) among some (name, value) pairs, found
/// in one pass over them (the first of each name, in any case), for [`extract`]:
/// `extract(|k| found.get(k))`. Cheaper than a lookup per name when reading the pairs
/// costs (each is checked as UTF-8 as it is read).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gathered<'a> {
    values: [Option<&'a str>; KEYS.len() + 1],
}

impl<'a> Gathered<'a> {
    /// Gathers the trace attachments among `pairs`.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Gathered<'a> {
        let mut g = Gathered::default();
        for (k, v) in pairs {
            if let Some(slot) = key_index(k).and_then(|i| g.values.get_mut(i)) {
                slot.get_or_insert(v);
            }
        }
        g
    }

    /// Gathers the trace headers among HTTP `headers` (a value that is not UTF-8 is
    /// none), then the trace attachments among `pairs` for the names no header had:
    /// one pass over each, the headers' other values never checked.
    pub fn from_headers_then(
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Gathered<'a> {
        let mut g = Gathered::default();
        for (k, v) in headers {
            if let Some(slot) = key_index(k).and_then(|i| g.values.get_mut(i)) {
                if slot.is_none() {
                    *slot = std::str::from_utf8(v).ok();
                }
            }
        }
        for (k, v) in pairs {
            if let Some(slot) = key_index(k).and_then(|i| g.values.get_mut(i)) {
                slot.get_or_insert(v);
            }
        }
        g
    }

    /// The value of trace attachment `name` (lower case, as [`extract`] asks).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        key_index(name).and_then(|i| self.values.get(i).copied().flatten())
    }

    /// The context the gathered attachments carry: [`extract`] without looking each
    /// name up again.
    pub fn extract(&self) -> Option<TraceContext> {
        extract_by(|i| self.values.get(i).copied().flatten())
    }
}

/// Where `key` is in [`KEYS`], or `KEYS.len()` for [`SW8`], in any case.
fn key_index(key: &str) -> Option<usize> {
    // The name nearly every context comes under, at once.
    if key == KEYS[TRACEPARENT] {
        return Some(TRACEPARENT);
    }
    // By length first: at most two names to compare.
    let candidates: &[usize] = match key.len() {
        2 => &[2],          // b3
        3 => &[KEYS.len()], // sw8
        10 => &[1, 7],      // tracestate, x-b3-flags
        11 => &[0, 4],      // traceparent, x-b3-spanid
        12 => &[3, 6],      // x-b3-traceid, x-b3-sampled
        17 => &[5],         // x-b3-parentspanid
        _ => return None,
    };
    // Other headers of the same length (Connection, Content-Type, User-Agent) end at
    // their first letter.
    let first = key.as_bytes().first()?.to_ascii_lowercase();
    let name = key_name;
    if !candidates
        .iter()
        .any(|&i| name(i).as_bytes().first() == Some(&first))
    {
        return None;
    }
    // Names come in lower case nearly always: compared as they are first.
    (candidates.iter().copied())
        .find(|&i| key == name(i))
        .or_else(|| (candidates.iter().copied()).find(|&i| key.eq_ignore_ascii_case(name(i))))
}

/// Reads a trace context through `get`, a lookup of a header or attachment value by
/// name (give a case-insensitive one: names here are lower case). Tried in order:
/// `traceparent` (with `tracestate`), `b3`, `x-b3-*`, `sw8`; the first well-formed one
/// wins. `None` if there is none.
pub fn extract<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<TraceContext> {
    extract_by(|i| get(key_name(i)))
}

// Indices of the names in [`KEYS`], and [`SW8`]'s after them.
const TRACEPARENT: usize = 0;
const TRACESTATE: usize = 1;
const B3: usize = 2;
const X_B3_TRACEID: usize = 3;
const X_B3_SPANID: usize = 4;
const X_B3_PARENTSPANID: usize = 5;
const X_B3_SAMPLED: usize = 6;
const X_B3_FLAGS: usize = 7;
const SW8_INDEX: usize = KEYS.len();

/// The name of key `i` ([`KEYS`], then [`SW8`]).
fn key_name(i: usize) -> &'static str {
    KEYS.get(i).copied().unwrap_or(SW8)
}

/// [`extract`] through a lookup by key index (see [`key_name`]).
fn extract_by<'a>(get: impl Fn(usize) -> Option<&'a str>) -> Option<TraceContext> {
    if let Some(ctx) = get(TRACEPARENT).and_then(parse_traceparent) {
        let tracestate = get(TRACESTATE)
            .map(str::trim)
            .filter(|s| valid_tracestate(s))
            .map(str::to_owned)
            .unwrap_or_default();
        return Some(TraceContext { tracestate, ..ctx });
    }
    if let Some(ctx) = get(B3).and_then(parse_b3_single) {
        return Some(ctx);
    }
    if let Some(ctx) = parse_b3_multi(&get) {
        return Some(ctx);
    }
    get(SW8_INDEX).and_then(parse_sw8)
}

impl TraceContext {
    /// A new trace in W3C format: its first span is `span_id`.
    pub fn root(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> TraceContext {
        TraceContext {
            trace_id,
            span_id,
            parent_span_id: None,
            sampled: Some(sampled),
            debug: false,
            flags: 0,
            format: Format::W3c,
            tracestate: String::new(),
            sw8_trace_id: String::new(),
        }
    }

    /// The context of a new span `span_id` whose parent is this context's span: the same
    /// trace, sampling and format.
    pub fn child(&self, span_id: [u8; 8]) -> TraceContext {
        self.clone().into_child(span_id)
    }

    /// [`TraceContext::child`] of a context not needed afterwards (the caller's, once
    /// continued): its strings move instead of being copied.
    pub fn into_child(self, span_id: [u8; 8]) -> TraceContext {
        TraceContext {
            span_id,
            parent_span_id: Some(self.span_id),
            ..self
        }
    }

    /// Whether the trace is sampled (a deferred decision counts as not).
    pub fn is_sampled(&self) -> bool {
        self.debug || self.sampled == Some(true)
    }

    /// The trace id in lower-case hex (32 digits), without allocating.
    pub fn trace_id_hex(&self) -> Hex<16> {
        Hex(self.trace_id)
    }

    /// Writes this context in its format into `buf` (cleared first), as a caller of
    /// the next hop would send it; `local` is for `sw8` only. Returns which fields were
    /// written, to read with [`Fields::iter`].
    pub fn encode(&self, local: &Sw8Local<'_>, buf: &mut String) -> Fields {
        buf.clear();
        let mut fields = Fields::default();
        let sampled = self.is_sampled();
        match self.format {
            Format::W3c => {
                let flags = (self.flags & !1) | u8::from(sampled);
                // Written in a buffer of its own, then copied at once.
                let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
                hex_into(&self.trace_id, &mut text[3..35]);
                hex_into(&self.span_id, &mut text[36..52]);
                hex_into(&[flags], &mut text[53..55]);
                buf.reserve(text.len() + self.tracestate.len());
                buf.push_str(std::str::from_utf8(&text).unwrap_or_default());
                fields.push("traceparent", 0, buf.len());
                if !self.tracestate.is_empty() {
                    let start = buf.len();
                    buf.push_str(&self.tracestate);
                    fields.push("tracestate", start, buf.len());
                }
            }
            Format::B3Single => {
                push_hex(buf, &self.trace_id);
                buf.push('-');
                push_hex(buf, &self.span_id);
                match (self.debug, self.sampled) {
                    (true, _) => buf.push_str("-d"),
                    (false, Some(true)) => buf.push_str("-1"),
                    (false, Some(false)) => buf.push_str("-0"),
                    (false, None) => {}
                }
                // A parent span id is sent only after a sampling state (B3's rule).
                if let Some(parent) = self.parent_span_id {
                    if self.sampled.is_some() || self.debug {
                        buf.push('-');
                        push_hex(buf, &parent);
                    }
                }
                fields.push("b3", 0, buf.len());
            }
            Format::B3Multi => {
                let mut put = |key: &'static str, f: &dyn Fn(&mut String)| {
                    let start = buf.len();
                    f(buf);
                    fields.push(key, start, buf.len());
                };
                put("x-b3-traceid", &|b| push_hex(b, &self.trace_id));
                put("x-b3-spanid", &|b| push_hex(b, &self.span_id));
                if let Some(parent) = self.parent_span_id {
                    put("x-b3-parentspanid", &|b| push_hex(b, &parent));
                }
                if self.debug {
                    put("x-b3-flags", &|b| b.push('1'));
                } else if let Some(s) = self.sampled {
                    put("x-b3-sampled", &|b| b.push(if s { '1' } else { '0' }));
                }
            }
            Format::Sw8 => {
                buf.push(if sampled { '1' } else { '0' });
                buf.push('-');
                if self.sw8_trace_id.is_empty() {
                    let mut hex = [0u8; 32];
                    hex_into(&self.trace_id, &mut hex);
                    push_base64(buf, &hex);
                } else {
                    push_base64(buf, self.sw8_trace_id.as_bytes());
                }
                buf.push('-');
                let mut segment = [0u8; 16];
                hex_into(&self.span_id, &mut segment);
                push_base64(buf, &segment);
                buf.push_str("-0-");
                for (i, s) in [local.service, local.instance, local.endpoint, local.address]
                    .into_iter()
                    .enumerate()
                {
                    if i > 0 {
                        buf.push('-');
                    }
                    // SkyWalking refuses empty fields: a placeholder stands for none.
                    let s = if s.is_empty() { "-" } else { s };
                    push_base64(buf, s.as_bytes());
                }
                fields.push(SW8, 0, buf.len());
            }
        }
        fields
    }
}

/// Bytes shown as lower-case hex (see [`TraceContext::trace_id_hex`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hex<const N: usize>(pub [u8; N]);

impl<const N: usize> fmt::Display for Hex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A span id from 64 random bits (never all zeros).
pub fn span_id_from(bits: u64) -> [u8; 8] {
    (if bits == 0 { 1 } else { bits }).to_be_bytes()
}

/// A trace id from 128 random bits (never all zeros).
pub fn trace_id_from(high: u64, low: u64) -> [u8; 16] {
    let low = if high == 0 && low == 0 { 1 } else { low };
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&high.to_be_bytes());
    id[8..].copy_from_slice(&low.to_be_bytes());
    id
}

// ---------------------------------------------------------------------------------------
// W3C
// ---------------------------------------------------------------------------------------

fn parse_traceparent(value: &str) -> Option<TraceContext> {
    // Optional white space around it is ASCII (HTTP's OWS).
    let v = value.as_bytes().trim_ascii();
    // version 00 is exactly 55 characters; a later version may add fields after a '-'.
    let head = v.get(..55)?;
    let version = parse_hex::<1>(head.get(0..2)?)?[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
        return None;
    }
    let trace_id = nonzero(parse_hex::<16>(&head[3..35])?)?;
    let span_id = nonzero(parse_hex::<8>(&head[36..52])?)?;
    let flags = parse_hex::<1>(&head[53..55])?[0];
    Some(TraceContext {
        trace_id,
        span_id,
        parent_span_id: None,
        sampled: Some(flags & 1 == 1),
        debug: false,
        flags: flags & !1,
        format: Format::W3c,
        tracestate: String::new(),
        sw8_trace_id: String::new(),
    })
}

/// W3C `tracestate`: 1 to 32 members `key=value`, separated by commas (blank members
/// and optional white space allowed), at most [`MAX_TRACESTATE`] characters.
fn valid_tracestate(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_TRACESTATE {
        return false;
    }
    let mut members = 0;
    for member in s.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        members += 1;
        let Some((key, value)) = member.split_once('=') else {
            return false;
        };
        let key_ok = !key.is_empty()
            && key.len() <= 256
            && key
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/@".contains(&b))
            && key.bytes().filter(|&b| b == b'@').count() <= 1;
        let value_ok = !value.is_empty()
            && value.len() <= 256
            && value
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
            && !value.ends_with(' ');
        if !key_ok || !value_ok {
            return false;
        }
    }
    (1..=MAX_TRACESTATE_MEMBERS).contains(&members)
}

// ---------------------------------------------------------------------------------------
// B3
// ---------------------------------------------------------------------------------------

/// A B3 trace id: 16 or 32 hex digits (64 bits are the low half).
fn parse_b3_trace_id(s: &[u8]) -> Option<[u8; 16]> {
    let id = match s.len() {
        32 => parse_hex::<16>(s)?,
        16 => {
            let low = parse_hex::<8>(s)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            id
        }
        _ => return None,
    };
    nonzero(id)
}

fn parse_b3_span_id(s: &[u8]) -> Option<[u8; 8]> {
    if s.len() != 16 {
        return None;
    }
    nonzero(parse_hex::<8>(s)?)
}

fn parse_b3_single(value: &str) -> Option<TraceContext> {
    let mut parts = value.trim().split('-');
    let trace_id = parse_b3_trace_id(parts.next()?.as_bytes())?;
    let span_id = parse_b3_span_id(parts.next()?.as_bytes())?;
    let (sampled, debug) = match parts.next() {
        None => (None, false),
        Some("1") => (Some(true), false),
        Some("0") => (Some(false), false),
        Some("d") => (Some(true), true),
        Some(_) => return None,
    };
    let parent_span_id = match parts.next() {
        None => None,
        Some(p) => Some(parse_b3_span_id(p.as_bytes())?),
    };
    if parts.next().is_some() {
        return None;
    }
    Some(TraceContext {
        trace_id,
        span_id,
        parent_span_id,
        sampled,
        debug,
        flags: 0,
        format: Format::B3Single,
        tracestate: String::new(),
        sw8_trace_id: String::new(),
    })
}

fn parse_b3_multi<'a>(get: &impl Fn(usize) -> Option<&'a str>) -> Option<TraceContext> {
    let trace_id = parse_b3_trace_id(get(X_B3_TRACEID)?.trim().as_bytes())?;
    let span_id = parse_b3_span_id(get(X_B3_SPANID)?.trim().as_bytes())?;
    let parent_span_id = match get(X_B3_PARENTSPANID) {
        None => None,
        Some(p) => Some(parse_b3_span_id(p.trim().as_bytes())?),
    };
    let debug = match get(X_B3_FLAGS).map(str::trim) {
        None | Some("0") => false,
        Some("1") => true,
        Some(_) => return None,
    };
    let sampled = match get(X_B3_SAMPLED).map(str::trim) {
        None => None,
        Some("1") | Some("true") => Some(true),
        Some("0") | Some("false") => Some(false),
        Some(_) => return None,
    };
    Some(TraceContext {
        trace_id,
        span_id,
        parent_span_id,
        sampled: if debug { Some(true) } else { sampled },
        debug,
        flags: 0,
        format: Format::B3Multi,
        tracestate: String::new(),
        sw8_trace_id: String::new(),
    })
}

// ---------------------------------------------------------------------------------------
// SkyWalking sw8
// ---------------------------------------------------------------------------------------

fn parse_sw8(value: &str) -> Option<TraceContext> {
    let value = value.trim();
    if value.len() > MAX_SW8 {
        return None;
    }
    let mut parts = value.split('-');
    let sampled = match parts.next()? {
        "1" => true,
        "0" => false,
        _ => return None,
    };
    let trace = decode_base64_utf8(parts.next()?)?;
    let segment = decode_base64_utf8(parts.next()?)?;
    let span_index: u32 = {
        let s = parts.next()?;
        if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()?
    };
    // Parent service, instance, endpoint, address: checked, not kept (a continued
    // context names this side instead).
    for _ in 0..4 {
        decode_base64_utf8(parts.next()?)?;
    }
    if parts.next().is_some() || trace.is_empty() || segment.is_empty() {
        return None;
    }
    let trace_id = match parse_hex::<16>(trace.as_bytes()).filter(|_| trace.len() == 32) {
        Some(id) => nonzero(id).unwrap_or_else(|| hash128(trace.as_bytes())),
        None => hash128(trace.as_bytes()),
    };
    let direct = (span_index == 0 && segment.len() == 16)
        .then(|| parse_hex::<8>(segment.as_bytes()))
        .flatten()
        .and_then(nonzero);
    let span_id = direct.unwrap_or_else(|| {
        let mut h = Fnv::new(0);
        h.write(segment.as_bytes());
        h.write(&span_index.to_be_bytes());
        span_id_from(h.finish())
    });
    Some(TraceContext {
        trace_id,
        span_id,
        parent_span_id: None,
        sampled: Some(sampled),
        debug: false,
        flags: 0,
        format: Format::Sw8,
        tracestate: String::new(),
        sw8_trace_id: trace,
    })
}

/// 64-bit FNV-1a, with a seed mixed in first.
struct Fnv(u64);

impl Fnv {
    fn new(seed: u64) -> Fnv {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        h.write(&seed.to_be_bytes());
        h
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

fn hash128(bytes: &[u8]) -> [u8; 16] {
    let (mut a, mut b) = (Fnv::new(1), Fnv::new(2));
    a.write(bytes);
    b.write(bytes);
    trace_id_from(a.finish(), b.finish())
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn push_base64(out: &mut String, bytes: &[u8]) {
    let at = |i: u32| char::from(BASE64[(i & 63) as usize]);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(at(n >> 18));
        out.push(at(n >> 12));
        out.push(if chunk.len() > 1 { at(n >> 6) } else { '=' });
        out.push(if chunk.len() > 2 { at(n) } else { '=' });
    }
}

fn base64_value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Standard base64 with padding, decoding to UTF-8 of at most [`MAX_SW8_FIELD`] bytes.
fn decode_base64_utf8(s: &str) -> Option<String> {
    let s = s.as_bytes();
    if s.is_empty() || !s.len().is_multiple_of(4) || s.len() / 4 * 3 > MAX_SW8_FIELD + 2 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let quads = s.len() / 4;
    for (q, chunk) in s.chunks(4).enumerate() {
        let last = q + 1 == quads;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = if i >= 4 - pad { 0 } else { base64_value(c)? };
            n = (n << 6) | v;
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        // Non-canonical padding bits are refused.
        if (pad == 1 && bytes[2] != 0) || (pad == 2 && (bytes[1] != 0 || bytes[2] != 0)) {
            return None;
        }
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    if out.len() > MAX_SW8_FIELD {
        return None;
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------
// Hex
// ---------------------------------------------------------------------------------------

/// The value of each lower-case hex digit; 0xff for any other byte.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Exactly `2 * N` lower-case hex digits.
#[inline]
fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    // Eight digits at a time (trace and span ids are 32 and 16), the rest one by one.
    let mut digits = s.chunks_exact(8);
    let mut bytes = out.chunks_exact_mut(4);
    for (d, o) in (&mut digits).zip(&mut bytes) {
        o.copy_from_slice(&hex8(d.try_into().ok()?)?);
    }
    // Any byte that is not a digit has a value of 0xff: one check at the end.
    let mut bad = 0;
    for (o, pair) in bytes
        .into_remainder()
        .iter_mut()
        .zip(digits.remainder().chunks_exact(2))
    {
        let (hi, lo) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0xf);
    }
    (bad & 0xf0 == 0).then_some(out)
}

/// Eight lower-case hex digits as four bytes, all eight handled at once in a `u64`.
#[inline(always)]
fn hex8(digits: [u8; 8]) -> Option<[u8; 4]> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let x = u64::from_le_bytes(digits);
    // A digit's value is its low nibble, plus 9 for a letter (bit 6 set: 'a' is 0x61).
    let v = (x & (ONES * 0x0f)) + ((x >> 6) & ONES) * 9;
    // Valid only if each value is below 16 and writing it back gives the same byte
    // (no lane carries into the next: every lane stays below 0x80 throughout).
    let over_15 = (v + ONES * 0x70) & (ONES * 0x80);
    let letters = ((v + ONES * 0x76) >> 7) & ONES;
    let again = v + ONES * 0x30 + letters * 0x27;
    if over_15 != 0 || again != x {
        return None;
    }
    // Pairs of nibbles (first digit high) into bytes, one per 16-bit lane.
    let pairs = ((v & 0x000f_000f_000f_000f) << 4) | ((v >> 8) & 0x00ff_00ff_00ff_00ff);
    Some([
        pairs as u8,
        (pairs >> 16) as u8,
        (pairs >> 32) as u8,
        (pairs >> 48) as u8,
    ])
}

fn nonzero<const N: usize>(id: [u8; N]) -> Option<[u8; N]> {
    id.iter().any(|&b| b != 0).then_some(id)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The two lower-case hex digits of each byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (b, o) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        o.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    // Through a buffer of 16 bytes' digits: one copy each, not a push per digit.
    for chunk in bytes.chunks(16) {
        let mut text = [0u8; 32];
        let n = 2 * chunk.len();
        hex_into(chunk, &mut text[..n]);
        out.push_str(std::str::from_utf8(&text[..n]).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests;
