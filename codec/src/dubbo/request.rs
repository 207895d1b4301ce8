//! Dubbo requests: the encoder for the consumer hot path, the body decoder
//! for mock providers, and JVM parameter descriptors.

use std::borrow::Cow;

use super::frame::{patch_len, write_header, FLAG_REQUEST, FLAG_TWO_WAY};
use super::{body_values, json_lines, json_value, Error, Serialization};
use crate::hessian2::{self, Decoder, Value};
use crate::Decoded;

/// Which attachments a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachments<'a> {
    /// What Java sends: `path`, `interface`, then `version` and `group` when
    /// the request sets them, then these extra pairs. Those four keys come from the
    /// request's own fields only: an extra pair naming one of them (in any case) is
    /// skipped, so a caller's attachments cannot redirect the call, except a null
    /// `version` or `group` the request leaves unset. A `None` value is written as null.
    Standard(&'a [(&'a str, Option<&'a str>)]),
    /// Exactly these pairs, in this order (e.g. the race's `{"path": ...}`).
    Exactly(&'a [(&'a str, Option<&'a str>)]),
}

/// Attachment keys that say where a call goes or how long it may take: whoever routes
/// the call sets them, never the caller's own attachments (compared ignoring ASCII case).
pub const RESERVED_ATTACHMENTS: [&str; 6] =
    ["path", "interface", "version", "group", "timeout", "dubbo"];

/// Whether `key` is one of [`RESERVED_ATTACHMENTS`].
pub fn is_reserved_attachment(key: &str) -> bool {
    RESERVED_ATTACHMENTS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(key))
}

/// One invocation to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// Request id, echoed by the response.
    pub id: i64,
    /// Body serialization.
    pub serialization: Serialization,
    /// Whether an answer is expected (almost always).
    pub two_way: bool,
    /// Dubbo protocol version, e.g. `"2.0.2"` (Java 2.7 replies with
    /// attachments to 2.0.2..2.0.99).
    pub dubbo_version: &'a str,
    /// Service path (interface name).
    pub path: &'a str,
    /// Service version; `None` writes null (Java writes `"0.0.0"`).
    pub version: Option<&'a str>,
    /// Service group, sent as an attachment when set.
    pub group: Option<&'a str>,
    /// Method name.
    pub method: &'a str,
    /// Parameter types in JVM form, see [`jvm_descriptor`].
    pub descriptor: &'a str,
    /// The arguments, already hessian2-encoded and concatenated. Copied
    /// verbatim for hessian2; for fastjson each is decoded and written as
    /// one JSON line.
    pub args: &'a [u8],
    /// Attachments to send.
    pub attachments: Attachments<'a>,
}

/// Append one whole request frame to `out`; the body length is back-patched
/// into the header, so no intermediate buffer is used.
///
/// # Errors
/// For fastjson only, [`Error::Hessian`]/[`Error::Truncated`] when `args`
/// are not whole hessian2 values; [`Error::BodyTooLong`] past
/// [`MAX_BODY_LEN`](super::MAX_BODY_LEN). On error `out` is left as it was.
pub fn encode_request(out: &mut Vec<u8>, req: &Request<'_>) -> Result<(), Error> {
    let start = out.len();
    let mut flags = FLAG_REQUEST | req.serialization.id();
    if req.two_way {
        flags |= FLAG_TWO_WAY;
    }
    write_header(out, flags, 0, req.id, 0);
    let res = match req.serialization {
        Serialization::Hessian2 => {
            hessian_body(out, req);
            Ok(())
        }
        Serialization::Fastjson => fastjson_body(out, req),
    }
    .and_then(|()| patch_len(out, start));
    if res.is_err() {
        out.truncate(start);
    }
    res
}

/// Calls `f(key, value)` for every attachment of `req`, in wire order.
fn for_each_attachment<'a>(req: &Request<'a>, mut f: impl FnMut(&'a str, Option<&'a str>)) {
    match req.attachments {
        Attachments::Exactly(list) => list.iter().for_each(|&(k, v)| f(k, v)),
        Attachments::Standard(extra) => {
            f("path", Some(req.path));
            f("interface", Some(req.path));
            if let Some(v) = req.version {
                f("version", Some(v));
            }
            if let Some(g) = req.group {
                f("group", Some(g));
            }
            for &(k, v) in extra {
                if keeps_extra(k, v, req.version.is_some(), req.group.is_some()) {
                    f(k, v);
                }
            }
        }
    }
}

/// Whether [`Attachments::Standard`] writes the extra pair `k`, `v` after the request's
/// own `path`, `interface`, `version` and `group`.
fn keeps_extra(k: &str, v: Option<&str>, has_version: bool, has_group: bool) -> bool {
    let routing = ["path", "interface", "version", "group"]
        .iter()
        .any(|r| r.eq_ignore_ascii_case(k));
    // Only a null may stand for a field the request leaves unset (Python's client
    // writes `group: null`).
    let unset = (k.eq_ignore_ascii_case("version") && !has_version)
        || (k.eq_ignore_ascii_case("group") && !has_group);
    !routing || (unset && v.is_none())
}

/// What every hessian2 request for one method of one service version and group has in
/// common, encoded once: the body's strings after the Dubbo version (path, version,
/// method, parameter types) and the `path`, `interface`, `version` and `group`
/// attachments. [`RequestTemplate::encode`] writes the same bytes as
/// [`encode_request`] with [`Attachments::Standard`], copying these instead of
/// encoding eight to ten strings a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTemplate {
    head: Vec<u8>,
    standard: Vec<u8>,
    has_version: bool,
    has_group: bool,
}

impl RequestTemplate {
    /// The template of the calls of `method` (parameter types `descriptor`, in JVM
    /// form) on `path` at `version` and `group` (as [`Request`] names them).
    pub fn new(
        path: &str,
        version: Option<&str>,
        group: Option<&str>,
        method: &str,
        descriptor: &str,
    ) -> RequestTemplate {
        let mut head = Vec::new();
        hessian2::write_string(&mut head, path);
        opt_string(&mut head, version);
        hessian2::write_string(&mut head, method);
        hessian2::write_string(&mut head, descriptor);
        let mut standard = Vec::new();
        let own = [("path", Some(path)), ("interface", Some(path))];
        let set = [("version", version), ("group", group)];
        for (k, v) in own
            .into_iter()
            .chain(set.into_iter().filter(|(_, v)| v.is_some()))
        {
            hessian2::write_string(&mut standard, k);
            opt_string(&mut standard, v);
        }
        RequestTemplate {
            head,
            standard,
            has_version: version.is_some(),
            has_group: group.is_some(),
        }
    }

    /// Appends the hessian2 request frame `id` (`two_way` unless one-way) of this
    /// method with `args` (hessian2, as [`Request::args`]) and the `extra` attachments
    /// (as [`Attachments::Standard`] takes them).
    ///
    /// # Errors
    /// [`Error::BodyTooLong`] past [`MAX_BODY_LEN`](super::MAX_BODY_LEN); `out` is then
    /// left as it was.
    pub fn encode(
        &self,
        out: &mut Vec<u8>,
        id: i64,
        two_way: bool,
        dubbo_version: &str,
        args: &[u8],
        extra: &[(&str, Option<&str>)],
    ) -> Result<(), Error> {
        let start = out.len();
        let mut flags = FLAG_REQUEST | Serialization::Hessian2.id();
        if two_way {
            flags |= FLAG_TWO_WAY;
        }
        write_header(out, flags, 0, id, 0);
        hessian2::write_string(out, dubbo_version);
        out.extend_from_slice(&self.head);
        out.extend_from_slice(args);
        hessian2::write_map_begin(out, None);
        out.extend_from_slice(&self.standard);
        for &(k, v) in extra {
            if keeps_extra(k, v, self.has_version, self.has_group) {
                hessian2::write_string(out, k);
                opt_string(out, v);
            }
        }
        hessian2::write_end(out);
        let res = patch_len(out, start);
        if res.is_err() {
            out.truncate(start);
        }
        res
    }
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => hessian2::write_string(out, s),
        None => hessian2::write_null(out),
    }
}

fn hessian_body(out: &mut Vec<u8>, req: &Request<'_>) {
    hessian2::write_string(out, req.dubbo_version);
    hessian2::write_string(out, req.path);
    opt_string(out, req.version);
    hessian2::write_string(out, req.method);
    hessian2::write_string(out, req.descriptor);
    out.extend_from_slice(req.args);
    hessian2::write_map_begin(out, None);
    for_each_attachment(req, |k, v| {
        hessian2::write_string(out, k);
        opt_string(out, v);
    });
    hessian2::write_end(out);
}

/// One JSON line; writing JSON into a `Vec` cannot fail for these types.
fn str_line(out: &mut Vec<u8>, s: &str) {
    crate::json::write_str(out, s);
    out.push(b'\n');
}

fn opt_line(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => str_line(out, s),
        None => out.extend_from_slice(b"null\n"),
    }
}

fn json_line(out: &mut Vec<u8>, v: &serde_json::Value) {
    let _ = serde_json::to_writer(&mut *out, v);
    out.push(b'\n');
}

fn fastjson_body(out: &mut Vec<u8>, req: &Request<'_>) -> Result<(), Error> {
    str_line(out, req.dubbo_version);
    str_line(out, req.path);
    opt_line(out, req.version);
    str_line(out, req.method);
    str_line(out, req.descriptor);
    let mut dec = None;
    let mut rest = req.args;
    while !rest.is_empty() {
        // A one-chunk ASCII string (the race's argument) goes from the hessian2 bytes
        // to the line, not through a `String`; a string defines no back-reference, so
        // the decoder needs not see it.
        if let Some((s, n)) = ascii_string(rest) {
            str_line(out, s);
            rest = rest.get(n..).unwrap_or_default();
            continue;
        }
        let dec = dec.get_or_insert_with(|| Decoder::for_body(req.args));
        match dec.decode(rest)? {
            Decoded::Complete { msg, consumed } => {
                match &msg {
                    Value::String(s) => str_line(out, s),
                    other => json_line(out, &other.to_fastjson()),
                }
                rest = rest.get(consumed..).unwrap_or_default();
            }
            Decoded::Incomplete => return Err(Error::Truncated { what: "argument" }),
        }
    }
    out.push(b'{');
    let mut first = true;
    for_each_attachment(req, |k, v| {
        if !first {
            out.push(b',');
        }
        first = false;
        crate::json::write_str(out, k);
        out.push(b':');
        match v {
            Some(v) => crate::json::write_str(out, v),
            None => out.extend_from_slice(b"null"),
        }
    });
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// JVM descriptor of one Java type name: `java.lang.String` ->
/// `Ljava/lang/String;`, `int` -> `I`, `byte[]` -> `[B`,
/// `java.util.List[]` -> `[Ljava/util/List;`; names already in
/// `Class.getName()` array form (`[B`, `[Ljava.lang.String;`) are kept with
/// dots turned into slashes.
fn descriptor_of(t: &str, out: &mut String) {
    let t = t.trim();
    if let Some(elem) = t.strip_suffix("[]") {
        out.push('[');
        return descriptor_of(elem, out);
    }
    if t.starts_with('[') {
        out.extend(t.chars().map(|c| if c == '.' { '/' } else { c }));
        return;
    }
    let p = match t {
        "int" => "I",
        "long" => "J",
        "boolean" => "Z",
        "byte" => "B",
        "char" => "C",
        "short" => "S",
        "float" => "F",
        "double" => "D",
        "void" => "V",
        _ => {
            out.push('L');
            out.extend(t.chars().map(|c| if c == '.' { '/' } else { c }));
            out.push(';');
            return;
        }
    };
    out.push_str(p);
}

/// The parameter descriptor Dubbo sends for these Java parameter types,
/// concatenated (`["java.lang.String", "int"]` -> `Ljava/lang/String;I`).
pub fn jvm_descriptor(java_types: &[&str]) -> String {
    let mut s = String::new();
    for t in java_types {
        descriptor_of(t, &mut s);
    }
    s
}

/// How many parameters a JVM descriptor names.
///
/// # Errors
/// [`Error::BadDescriptor`] for a malformed descriptor.
pub fn descriptor_arity(desc: &str) -> Result<usize, Error> {
    let b = desc.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        while b.get(i) == Some(&b'[') {
            i += 1;
        }
        match b.get(i) {
            Some(b'L') => match b.get(i..).and_then(|s| s.iter().position(|&c| c == b';')) {
                Some(p) => i += p + 1,
                None => return Err(Error::BadDescriptor(desc.to_owned())),
            },
            Some(b'I' | b'J' | b'Z' | b'B' | b'C' | b'S' | b'F' | b'D') => i += 1,
            _ => return Err(Error::BadDescriptor(desc.to_owned())),
        }
        n += 1;
    }
    Ok(n)
}

/// A decoded request body (for a mock provider).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestBody {
    /// Dubbo protocol version.
    pub dubbo_version: String,
    /// Service path.
    pub path: String,
    /// Service version (`None` when null).
    pub version: Option<String>,
    /// Method name.
    pub method: String,
    /// JVM parameter descriptor.
    pub descriptor: String,
    /// The arguments, one per descriptor entry.
    pub args: Vec<Value>,
    /// Attachments in wire order (values are usually strings, may be null).
    pub attachments: Vec<(String, Value)>,
}

impl RequestBody {
    /// The attachment `key` as a string, if present and a string.
    pub fn attachment(&self, key: &str) -> Option<&str> {
        self.attachments
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_str())
    }
}

fn string_field(v: Value, what: &'static str) -> Result<String, Error> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(Error::BadField {
            what,
            expected: "a string",
        }),
    }
}

fn opt_string_field(v: Value, what: &'static str) -> Result<Option<String>, Error> {
    match v {
        Value::Null => Ok(None),
        v => string_field(v, what).map(Some),
    }
}

pub(super) fn attachments_of(v: Value) -> Result<Vec<(String, Value)>, Error> {
    match v {
        Value::Map { entries, .. } => entries
            .into_iter()
            .map(|(k, v)| Ok((string_field(k, "attachment key")?, v)))
            .collect(),
        Value::Null => Ok(Vec::new()),
        _ => Err(Error::BadField {
            what: "attachments",
            expected: "a map",
        }),
    }
}

/// Decode a request body: version, path, service version, method,
/// descriptor, one argument per descriptor entry, then attachments (absent
/// attachments give an empty list).
///
/// # Errors
/// An unsupported serialization id, malformed values, a field of the wrong
/// kind, or a body that ends early.
pub fn decode_request_body(serialization: u8, body: &[u8]) -> Result<RequestBody, Error> {
    match Serialization::from_id(serialization) {
        Some(Serialization::Hessian2) => {
            let mut vals = body_values(body);
            request_body(|_| vals.next_value())
        }
        Some(Serialization::Fastjson) => {
            let mut lines = json_lines(body);
            request_body(|what| lines.next().map(|l| json_value(l, what)).transpose())
        }
        None => Err(Error::UnsupportedSerialization(serialization)),
    }
}

/// What a proxy needs of a hessian2 request body to route it: the leading strings and
/// the attachments, with the arguments left as the bytes the caller wrote (they go on
/// to the provider as they are: no re-encoding, so nothing of them can change). The
/// strings are borrowed from the body where it holds them as they are (short ASCII
/// strings, as Java writes names and versions), so reading a request allocates little.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedRequest<'a> {
    /// Dubbo protocol version the caller speaks.
    pub dubbo_version: Cow<'a, str>,
    /// Service path (the interface).
    pub path: Cow<'a, str>,
    /// Service version (`""` when null).
    pub version: Cow<'a, str>,
    /// Method name.
    pub method: Cow<'a, str>,
    /// JVM parameter descriptor.
    pub descriptor: Cow<'a, str>,
    /// The arguments, as written: a hessian2 stream of one value per descriptor entry.
    pub args: &'a [u8],
    /// The attachments whose key and value are strings, in wire order (others are
    /// dropped: a proxy passes on only what it can carry).
    pub attachments: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl RoutedRequest<'_> {
    /// The attachment `key`, if present.
    pub fn attachment(&self, key: &str) -> Option<&str> {
        self.attachments
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }
}

/// Reads a hessian2 request body for routing ([`RoutedRequest`]). The arguments are
/// only walked ([`hessian2::Skipper`]: where they end, nothing built) and kept as bytes.
///
/// # Errors
/// Malformed values, a field of the wrong kind, or a body that ends early.
pub fn decode_routed_request(body: &[u8]) -> Result<RoutedRequest<'_>, Error> {
    if let Some(r) = routed_as_written(body) {
        return Ok(r);
    }
    let mut vals = body_values(body);
    let dubbo_version = string_field(vals.need("dubbo version")?, "dubbo version")?;
    let path = string_field(vals.need("service path")?, "service path")?;
    let version = opt_string_field(vals.need("service version")?, "service version")?;
    let method = string_field(vals.need("method")?, "method")?;
    let descriptor = string_field(vals.need("descriptor")?, "descriptor")?;
    let start = body.len() - vals.rest.len();
    vals.rest = skip_args(vals.rest, &descriptor)?;
    let end = body.len() - vals.rest.len();
    // The attachments are read on their own: a class or type the arguments defined is
    // not known to this decoder, which Java's string map never refers to. A body whose
    // attachments do refer to one is read whole, as a provider reads it.
    let attachments = match vals
        .next_value()
        .and_then(|v| v.map(attachments_of).transpose())
    {
        Ok(list) => list.unwrap_or_default(),
        Err(_) => decode_request_body(Serialization::Hessian2.id(), body)?.attachments,
    };
    let attachments = attachments
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((Cow::Owned(k), Cow::Owned(s))),
            _ => None,
        })
        .collect();
    Ok(RoutedRequest {
        dubbo_version: Cow::Owned(dubbo_version),
        path: Cow::Owned(path),
        version: Cow::Owned(version.unwrap_or_default()),
        method: Cow::Owned(method),
        descriptor: Cow::Owned(descriptor),
        args: body.get(start..end).unwrap_or_default(),
        attachments,
    })
}

/// Walks the arguments `descriptor` names at the start of `rest`; what follows them.
fn skip_args<'a>(mut rest: &'a [u8], descriptor: &str) -> Result<&'a [u8], Error> {
    let mut skipper = hessian2::Skipper::new();
    for _ in 0..descriptor_arity(descriptor)? {
        match skipper.skip(rest)? {
            Decoded::Complete { consumed, .. } => {
                rest = rest.get(consumed..).unwrap_or_default();
            }
            Decoded::Incomplete => return Err(Error::Truncated { what: "argument" }),
        }
    }
    Ok(rest)
}

/// The common case, borrowed: every leading string and attachment a one-chunk ASCII
/// string (or a null version), the attachments an untyped map of strings. `None` for
/// anything else, which [`decode_routed_request`] then reads with the decoder.
fn routed_as_written(body: &[u8]) -> Option<RoutedRequest<'_>> {
    let mut at = 0;
    let string = |at: &mut usize| -> Option<&str> {
        let (s, n) = ascii_string(body.get(*at..)?)?;
        *at += n;
        Some(s)
    };
    let dubbo_version = string(&mut at)?;
    let path = string(&mut at)?;
    let version = if body.get(at) == Some(&b'N') {
        at += 1;
        ""
    } else {
        string(&mut at)?
    };
    let method = string(&mut at)?;
    let descriptor = string(&mut at)?;
    let rest = skip_args(body.get(at..)?, descriptor).ok()?;
    let end = body.len() - rest.len();
    let args = body.get(at..end)?;
    let mut attachments = Vec::new();
    if !rest.is_empty() {
        let mut at = end;
        if body.get(at) != Some(&b'H') {
            return None;
        }
        at += 1;
        while body.get(at) != Some(&b'Z') {
            let key = string(&mut at)?;
            // Dubbo writes null for an unset group: dropped, as any non-string.
            if body.get(at) == Some(&b'N') {
                at += 1;
                continue;
            }
            let value = string(&mut at)?;
            attachments.push((Cow::Borrowed(key), Cow::Borrowed(value)));
        }
        if at + 1 != body.len() {
            return None;
        }
    }
    Some(RoutedRequest {
        dubbo_version: Cow::Borrowed(dubbo_version),
        path: Cow::Borrowed(path),
        version: Cow::Borrowed(version),
        method: Cow::Borrowed(method),
        descriptor: Cow::Borrowed(descriptor),
        args,
        attachments,
    })
}

/// A hessian2 string in one chunk whose characters are all ASCII (so its UTF-16 length
/// is its byte length), borrowed, and the bytes it takes.
pub(crate) fn ascii_string(buf: &[u8]) -> Option<(&str, usize)> {
    let (&tag, rest) = buf.split_first()?;
    let (len, head) = match tag {
        0x00..=0x1f => (usize::from(tag), 1),
        0x30..=0x33 => (
            (usize::from(tag - 0x30) << 8) | usize::from(*rest.first()?),
            2,
        ),
        b'S' => (
            usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?])),
            3,
        ),
        _ => return None,
    };
    let bytes = buf.get(head..head + len)?;
    // A fold of the bytes, which the compiler turns into vector instructions: faster
    // than `is_ascii` on these short strings (names, versions, attachments).
    if bytes.iter().fold(0u8, |high, &b| high | b) >= 0x80 {
        return None;
    }
    // Validating again would be `from_utf8`'s second pass over every leading string and
    // attachment of every Dubbo request: about 1,000 instructions a call, 8% of the
    // consumer-agent's Dubbo path (callgrind, bench/scripts/instructions-per-request.sh).
    #[allow(unsafe_code)]
    // SAFETY: every byte is ASCII (checked just above), and ASCII is valid UTF-8.
    let s = unsafe { std::str::from_utf8_unchecked(bytes) };
    Some((s, head + len))
}

/// The fields of a request body, whatever its serialization: `next` gives the body's
/// next value (`None` at its end), `what` naming it for errors.
fn request_body(
    mut next: impl FnMut(&'static str) -> Result<Option<Value>, Error>,
) -> Result<RequestBody, Error> {
    let mut need = |what| -> Result<Value, Error> { next(what)?.ok_or(Error::Truncated { what }) };
    let dubbo_version = string_field(need("dubbo version")?, "dubbo version")?;
    let path = string_field(need("service path")?, "service path")?;
    let version = opt_string_field(need("service version")?, "service version")?;
    let method = string_field(need("method")?, "method")?;
    let descriptor = string_field(need("descriptor")?, "descriptor")?;
    let n = descriptor_arity(&descriptor)?;
    let mut args = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        args.push(need("argument")?);
    }
    let attachments = match next("attachments")? {
        Some(v) => attachments_of(v)?,
        None => Vec::new(),
    };
    Ok(RequestBody {
        dubbo_version,
        path,
        version,
        method,
        descriptor,
        args,
        attachments,
    })
}
