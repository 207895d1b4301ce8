//! The HTTP front-end: reading requests off a connection (pipelined, answered in
//! order), preparing a call from a form or JSON body (signature, hessian2 arguments,
//! attachments), and rendering its answer or error as HTTP.

use std::borrow::Cow;
use std::time::Duration;

use codec::agent::{self, SignatureRef, Status};
use codec::hessian2::{self, Value};
use codec::http::{self, HttpError, Request};
use codec::invocation::Invocation;
use codec::{form, Decoded};
use reactor::{ConnId, Ctx, EndOfInput};

use super::observe::Names;
use super::{recycle_into, Call, ConsumerLoop, LoopTimer, Origin, HAND_OFF_RETRY};
use crate::metrics::Outcome;

/// Header carrying a per-call timeout in milliseconds.
pub(super) const TIMEOUT_HEADER: &str = "x-dubbo-timeout";

/// Header naming the service version for a form request.
pub(super) const VERSION_HEADER: &str = "x-dubbo-version";

/// Header naming the service group for a form request.
pub(super) const GROUP_HEADER: &str = "x-dubbo-group";

/// Prefix of headers carrying Dubbo attachments, both ways: a request header
/// `x-dubbo-attachment-<key>: <value>` becomes attachment `<key>`, and a response
/// attachment comes back as the same header.
pub const ATTACHMENT_HEADER_PREFIX: &str = "x-dubbo-attachment-";

/// How the answer is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Render {
    /// The race's form call: the value as plain text (an int in decimal).
    Text,
    /// A JSON invocation: the value as JSON.
    Json,
}

/// The JSON body of a provider error. The provider-agent reports a thrown exception
/// object as `class: message` (Java's `Throwable.toString`), or `class` alone; any other
/// text (e.g. a provider's status-80 error string) is the message.
pub(super) fn provider_error_json(text: &str) -> String {
    let (class, message) = match text.split_once(": ") {
        Some((c, m)) if codec::java::is_class_name(c) => (Some(c), m),
        _ if codec::java::is_class_name(text) => (Some(text), text),
        _ => (None, text),
    };
    let s = |v: &str| Value::String(v.to_owned());
    let mut entries = vec![(s("error"), s("provider_error"))];
    if let Some(c) = class {
        entries.push((s("class"), s(c)));
    }
    entries.push((s("message"), s(message)));
    entries.push((s("status"), Value::Int(502)));
    Value::Map {
        type_name: None,
        entries,
    }
    .to_json()
    .to_string()
}

/// The provider's response attachments as `x-dubbo-attachment-<key>` header names and
/// values. Only pairs safe in an HTTP header pass: a key of token characters, a value
/// without control characters (tab aside); others are dropped (logged at debug).
pub(super) fn attachment_header_names(attachments: agent::Attachments<'_>) -> Vec<(String, &str)> {
    attachments
        .filter(|(k, v)| {
            let safe = is_header_token(k) && is_header_value(v);
            if !safe {
                log::debug!("response attachment {k:?}={v:?} is not header-safe; dropped");
            }
            safe
        })
        .map(|(k, v)| (format!("{ATTACHMENT_HEADER_PREFIX}{k}"), v))
        .collect()
}

/// RFC 9110 `token`: what a header name may be made of.
pub(super) fn is_header_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value: no control characters but tab (so no CR or LF), no DEL.
pub(super) fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// The one hessian2 value a RESPONSE payload holds (`None`: not a whole value).
pub(super) fn decode_payload(payload: &[u8]) -> Option<Value> {
    match hessian2::decode(payload) {
        Ok(Decoded::Complete { msg, .. }) => Some(msg),
        Ok(Decoded::Incomplete) | Err(_) => None,
    }
}

/// An exception summary as Java prints a chain: `class: message`, then one
/// `Caused by: class: message` line per cause.
pub(super) fn exception_text(summary: &Value) -> String {
    let mut text = String::new();
    let mut level = Some(summary);
    while let Some(l) = level {
        if !text.is_empty() {
            text.push_str("\nCaused by: ");
        }
        let class = l.get("class").and_then(Value::as_str);
        let message = l.get("message").and_then(Value::as_str);
        match (class, message) {
            (Some(c), Some(m)) => text.push_str(&format!("{c}: {m}")),
            (Some(c), None) => text.push_str(c),
            (None, Some(m)) => text.push_str(m),
            (None, None) => text.push_str("exception"),
        }
        level = l.get("cause").filter(|c| matches!(c, Value::Map { .. }));
    }
    text
}

/// The JSON body of a thrown exception: `error`, then the summary's `class`, `message`
/// and `cause` (nested the same way), then `status`.
pub(super) fn exception_json(summary: Value) -> String {
    let s = |v: &str| Value::String(v.to_owned());
    let mut entries = vec![(s("error"), s("provider_error"))];
    if let Value::Map {
        entries: fields, ..
    } = summary
    {
        entries.extend(fields);
    }
    entries.push((s("status"), Value::Int(502)));
    Value::Map {
        type_name: None,
        entries,
    }
    .to_json()
    .to_string()
}

/// The machine-readable `error` of a JSON error body, by HTTP status.
pub(super) fn error_code(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        403 => "forbidden",
        413 => "payload_too_large",
        431 => "header_too_large",
        502 => "provider_error",
        503 => "unavailable",
        504 => "timeout",
        _ => "error",
    }
}

/// The JSON body of an error answer: `{"error":code,"message":text,"status":n}`, the
/// same shape as a provider error's (which adds `class`).
pub(super) fn error_json(status: u16, text: &str) -> String {
    let s = |v: &str| Value::String(v.to_owned());
    Value::Map {
        type_name: None,
        entries: vec![
            (s("error"), s(error_code(status))),
            (s("message"), s(text)),
            (s("status"), Value::Int(i32::from(status))),
        ],
    }
    .to_json()
    .to_string()
}

/// Appends an error answer: plain text for the race's form calls (what its clients
/// expect), a JSON object ([`error_json`]) for JSON invocations.
pub(super) fn write_error_answer(
    out: &mut Vec<u8>,
    render: Render,
    status: u16,
    text: &str,
    ka: bool,
) {
    match render {
        Render::Text => http::write_response(
            out,
            status,
            "text/plain; charset=utf-8",
            text.as_bytes(),
            ka,
        ),
        Render::Json => {
            let body = error_json(status, text);
            http::write_response(out, status, "application/json", body.as_bytes(), ka)
        }
    }
}

/// Whether a request head (as much as arrived) says its body is JSON: used to render
/// the HTTP decoder's refusals (e.g. 413) as the request expects. Only on that error
/// path, so parsing the head again costs nothing in the common case.
pub(super) fn head_is_json(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(buf).is_err() {
        return false;
    }
    req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("content-type") && {
            let mime = h.value.split(|&b| b == b';').next().unwrap_or_default();
            mime.trim_ascii().eq_ignore_ascii_case(b"application/json")
        }
    })
}

pub(super) fn is_json(req: &Request<'_>) -> bool {
    req.content_type.is_some_and(|ct| {
        let mime = ct.split(|&b| b == b';').next().unwrap_or_default();
        mime.trim_ascii().eq_ignore_ascii_case(b"application/json")
    })
}

/// A call ready to send: its signature (borrowed from the request where it can be) and
/// attachments; the arguments are already encoded.
pub(super) struct Prepared<'a> {
    service: Cow<'a, str>,
    method: Cow<'a, str>,
    types: Cow<'a, str>,
    version: Cow<'a, str>,
    group: Cow<'a, str>,
    attachments: Vec<(String, String)>,
    timeout_ms: Option<u64>,
}

pub(super) fn header_str<'a>(req: &Request<'a>, name: &str) -> &'a str {
    req.header(name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map_or("", str::trim)
}

/// The race's form call: one String parameter (or none).
pub(super) fn prepare_form<'a>(
    req: &'a Request<'_>,
    args: &mut Vec<u8>,
    scratch: &'a mut Vec<u8>,
) -> Result<Prepared<'a>, String> {
    let call = form::race_call_in(&req.body, scratch).map_err(|e| format!("bad form body: {e}"))?;
    let types = call.parameter_types.trim();
    match (types, &call.parameter) {
        ("Ljava/lang/String;", Some(p)) => hessian2::ser::write_string(args, p),
        ("Ljava/lang/String;", None) => return Err("missing field: parameter".into()),
        ("", None) => {}
        ("", Some(p)) => hessian2::ser::write_string(args, p),
        (other, _) => {
            return Err(format!(
                "form calls take one String parameter (parameterTypesString=Ljava/lang/String;), got {other:?}; use a JSON invocation for other types"
            ))
        }
    }
    let types = if call.parameter.is_some() {
        "Ljava/lang/String;"
    } else {
        ""
    };
    Ok(Prepared {
        service: call.interface,
        method: call.method,
        types: Cow::Borrowed(types),
        version: Cow::Borrowed(header_str(req, VERSION_HEADER)),
        group: Cow::Borrowed(header_str(req, GROUP_HEADER)),
        attachments: header_attachments(req, Vec::new())?,
        timeout_ms: None,
    })
}

/// Adds the attachments sent as `x-dubbo-attachment-<key>` headers to `attachments`
/// (those of a JSON body): a key already there keeps its value (the body wins), and the
/// first of repeated headers wins. The key is taken as sent (case kept), the value
/// trimmed. Without such headers nothing is allocated.
pub(super) fn header_attachments(
    req: &Request<'_>,
    mut attachments: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, String> {
    let prefix = ATTACHMENT_HEADER_PREFIX.len();
    for (name, value) in req.headers() {
        let is_attachment = name
            .get(..prefix)
            .is_some_and(|p| p.eq_ignore_ascii_case(ATTACHMENT_HEADER_PREFIX));
        if !is_attachment {
            continue;
        }
        let key = name.get(prefix..).unwrap_or_default();
        if key.is_empty() {
            return Err(format!(
                "header {name}: the attachment key is missing (send {ATTACHMENT_HEADER_PREFIX}<key>: <value>)"
            ));
        }
        let Ok(value) = std::str::from_utf8(value) else {
            return Err(format!("header {name}: the attachment value is not UTF-8"));
        };
        if !attachments.iter().any(|(k, _)| k == key) {
            attachments.push((key.to_owned(), value.trim().to_owned()));
        }
    }
    check_reserved(&attachments)?;
    Ok(attachments)
}

/// Refuses attachments that would route the call (see
/// [`codec::dubbo::RESERVED_ATTACHMENTS`]): the agents set those from the call itself,
/// and the error says where the caller names them instead.
pub(super) fn check_reserved(attachments: &[(String, String)]) -> Result<(), String> {
    let Some((key, _)) = attachments
        .iter()
        .find(|(k, _)| codec::dubbo::is_reserved_attachment(k))
    else {
        return Ok(());
    };
    let instead = match key.to_ascii_lowercase().as_str() {
        "version" => "the \"version\" field of a JSON invocation or the x-dubbo-version header",
        "group" => "the \"group\" field of a JSON invocation or the x-dubbo-group header",
        "timeout" => "the \"timeout\" field of a JSON invocation or the x-dubbo-timeout header",
        "dubbo" => "nothing: the provider-agent writes the Dubbo version",
        _ => "the interface of the call",
    };
    Err(format!(
        "attachment {key:?} is reserved (one of {}): use {instead}",
        codec::dubbo::RESERVED_ATTACHMENTS.join(", ")
    ))
}

/// A JSON typed invocation: arguments encoded by their declared Java types.
/// `max_depth` bounds the arguments' nesting (checked before anything is encoded).
pub(super) fn prepare_json<'a>(
    req: &'a Request<'_>,
    args: &mut Vec<u8>,
    max_depth: usize,
) -> Result<Prepared<'a>, String> {
    let inv = Invocation::from_json(&req.body).map_err(|e| format!("bad JSON invocation: {e}"))?;
    inv.check_depth(max_depth).map_err(|e| {
        format!("bad JSON invocation: {e} (the limit set by consumer-agent --max-json-depth)")
    })?;
    let mut encoder = hessian2::Encoder::new();
    for (i, (t, a)) in inv.parameter_types.iter().zip(&inv.arguments).enumerate() {
        encoder
            .encode_json_arg(t, a, args)
            .map_err(|e| format!("argument {i} ({t}): {e}"))?;
    }
    let types: Vec<&str> = inv.parameter_types.iter().map(String::as_str).collect();
    Ok(Prepared {
        types: Cow::Owned(codec::dubbo::jvm_descriptor(&types)),
        service: Cow::Owned(inv.interface),
        method: Cow::Owned(inv.method),
        version: Cow::Owned(inv.version.unwrap_or_default()),
        group: Cow::Owned(inv.group.unwrap_or_default()),
        attachments: header_attachments(req, inv.attachments)?,
        timeout_ms: inv.timeout_ms,
    })
}

impl ConsumerLoop {
    pub(super) fn on_http_data(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: ConnId,
        input: &[u8],
    ) -> usize {
        let mut pos = 0;
        loop {
            let Some(conn) = self.http.get_mut(id) else {
                return input.len();
            };
            if conn.done_reading {
                return input.len();
            }
            if conn.handing {
                return pos; // what is left goes with the connection
            }
            // Too many requests in flight, or answers piling up unread (a client that
            // does not read): read no further until answers go out.
            if conn.inflight() >= self.config.max_pipeline as u64 || cx.is_congested(id) {
                conn.paused = true;
                cx.pause_reading(id);
                return pos;
            }
            let rest = input.get(pos..).unwrap_or_default();
            match conn.decoder.decode(rest) {
                Ok(Decoded::Complete { msg, consumed }) => {
                    pos += consumed;
                    conn.decoder.reset();
                    conn.last_active = cx.now();
                    let seq = conn.take_seq();
                    self.metrics.request();
                    // Stopping forces keep-alive off too (see `on_request`).
                    let last = !msg.keep_alive || self.stopping;
                    self.on_request(cx, id, seq, &msg, consumed);
                    if last {
                        // The connection closes after this answer: whatever the client
                        // sent after it is discarded undecoded, never called.
                        if let Some(conn) = self.http.get_mut(id) {
                            conn.done_reading = true;
                        }
                        return input.len();
                    }
                }
                Ok(Decoded::Incomplete) => {
                    if conn.decoder.take_continue() {
                        if let Some(out) = cx.output(id) {
                            http::write_continue(out);
                        }
                    }
                    return pos;
                }
                Err(e) => {
                    conn.done_reading = true;
                    let seq = conn.take_seq();
                    self.metrics.request();
                    let render = if head_is_json(rest) {
                        Render::Json
                    } else {
                        Render::Text
                    };
                    self.answer_http_error(cx, id, seq, &e, render, rest.len());
                    return input.len();
                }
            }
        }
    }

    /// Answers a request the HTTP decoder refused (413, 431, 400, ...); `render` is JSON
    /// when the head could be read and names a JSON body; `bytes_in` of it were read.
    pub(super) fn answer_http_error(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: ConnId,
        seq: u64,
        e: &HttpError,
        render: Render,
        bytes_in: usize,
    ) {
        let mut out = self.take_buf();
        match render {
            Render::Text => http::write_error(&mut out, e),
            Render::Json => write_error_answer(
                &mut out,
                render,
                e.status(),
                e.reason(),
                !e.closes_connection(),
            ),
        }
        self.metrics.answered(Outcome::BadRequest, 0);
        let (caller, status) = (self.http_peer(id), super::observe::http_status(&out));
        self.log_refused(
            "http",
            caller,
            Names::default(),
            status,
            bytes_in,
            out.len(),
        );
        self.deliver(cx, id, seq, out, e.closes_connection());
    }

    /// Answers `seq` on `id` with an error status and message (see [`write_error_answer`]),
    /// for a request refused before it became a call: `refused` are its names and
    /// size, for the access log.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn answer_error(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: ConnId,
        seq: u64,
        keep_alive: bool,
        render: Render,
        status: u16,
        text: &str,
        refused: (Names<'_>, usize),
    ) {
        let mut out = self.take_buf();
        write_error_answer(&mut out, render, status, text, keep_alive);
        let caller = self.http_peer(id);
        let (names, bytes_in) = refused;
        self.log_refused("http", caller, names, status, bytes_in, out.len());
        self.deliver(cx, id, seq, out, !keep_alive);
    }

    pub(super) fn on_request(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: ConnId,
        seq: u64,
        req: &Request<'_>,
        bytes_in: usize,
    ) {
        let keep_alive = req.keep_alive && !self.stopping;
        let now = cx.now();
        let mut timeout = Duration::from_millis(self.config.timeout_ms);
        if let Some(ms) = req
            .header(TIMEOUT_HEADER)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            timeout = timeout.min(Duration::from_millis(ms));
        }
        let mut args = self.take_buf();
        // Where escaped form fields are decoded; back to the pool once the call is stored.
        let mut scratch = self.take_buf();
        let render = if !req.is_form() && is_json(req) {
            Render::Json
        } else {
            Render::Text
        };
        let prepared = if req.is_form() {
            prepare_form(req, &mut args, &mut scratch).map(|p| (p, Render::Text))
        } else if is_json(req) {
            prepare_json(req, &mut args, self.config.max_json_depth as usize).map(|p| {
                if let Some(ms) = p.timeout_ms {
                    timeout = timeout.min(Duration::from_millis(ms));
                }
                (p, Render::Json)
            })
        } else {
            Err("unsupported content type: send application/x-www-form-urlencoded or application/json".to_owned())
        };
        let (prepared, render) = match prepared {
            Ok(p) => p,
            Err(msg) => {
                self.recycle(args);
                self.recycle(scratch);
                self.metrics.answered(Outcome::BadRequest, 0);
                let refused = (Names::default(), bytes_in);
                return self.answer_error(cx, id, seq, keep_alive, render, 400, &msg, refused);
            }
        };
        let sig = SignatureRef {
            service: &prepared.service,
            method: &prepared.method,
            parameter_types: &prepared.types,
            version: &prepared.version,
            group: &prepared.group,
        };
        let call_id = match self.intern(cx, sig) {
            Ok(call_id) => call_id,
            Err(e) => {
                self.recycle(args);
                self.metrics.answered(Outcome::BadRequest, 0);
                let msg = e.to_string();
                let names = Names {
                    service: &prepared.service,
                    method: &prepared.method,
                    version: &prepared.version,
                    group: &prepared.group,
                };
                let refused = (names, bytes_in);
                return self.answer_error(cx, id, seq, keep_alive, render, 400, &msg, refused);
            }
        };
        if let Some(n) = self.signature_uses.get_mut(call_id as usize) {
            *n += 1;
        }
        let mut attachments = prepared.attachments;
        // With tracing on: the caller's context, from its headers or else the
        // attachments it sent, continued (its trace attachments are replaced).
        let trace = self.tracer.as_mut().and_then(|tracer| {
            let sent = attachments.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            let found = codec::trace::Gathered::from_headers_then(req.headers(), sent);
            tracer.begin(found, "http", cx.wall_unix_nanos())
        });
        if trace.is_some() {
            super::tracing::strip(&mut attachments);
        }
        self.next_gen = self.next_gen.wrapping_add(1) & 0x7fff_ffff;
        let key = self.calls.insert(Call {
            gen: self.next_gen,
            origin: Origin::Http {
                conn: id,
                seq,
                keep_alive,
                render,
            },
            call_id,
            args,
            attachments,
            dubbo_version: None,
            started: now,
            deadline: now + timeout,
            timer: None,
            retry_timer: None,
            sent: None,
            attempts: 0,
            upstream: None,
            bytes_in: u32::try_from(bytes_in).unwrap_or(u32::MAX),
            trace,
            trace_id: None,
        });
        self.recycle(scratch);
        let call = Self::call_id(key, self.next_gen);
        let timer = cx.set_timer(timeout, super::LoopTimer::Call(call));
        if let Some(c) = self.calls.get_mut(key) {
            c.timer = Some(timer);
        }
        // Traffic rules may route by HTTP header: the route is chosen now, while the
        // request's headers are at hand (dispatch then keeps it).
        let lookup = |name: &str| {
            req.headers()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        };
        if let Err(limited) = self.route_call_with(cx, call, &Some(&lookup)) {
            return self.refuse_limited(cx, call, limited);
        }
        self.dispatch(cx, call, None);
    }

    /// Writes answer `seq` of connection `id` in its turn (or parks it until then).
    pub(super) fn deliver(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: ConnId,
        seq: u64,
        bytes: Vec<u8>,
        close: bool,
    ) {
        let Some(conn) = self.http.get_mut(id) else {
            self.recycle(bytes);
            return;
        };
        if seq != conn.write_seq {
            conn.parked.push((seq, bytes, close));
            return;
        }
        let mut next = Some((bytes, close));
        while let Some((bytes, close)) = next.take() {
            cx.write(id, &bytes);
            recycle_into(&mut self.pool, bytes);
            conn.write_seq += 1;
            if close {
                conn.done_reading = true;
                for (_, b, _) in conn.parked.drain(..) {
                    recycle_into(&mut self.pool, b);
                }
                cx.close(id);
                break;
            }
            if let Some(i) = conn
                .parked
                .iter()
                .position(|(s, _, _)| *s == conn.write_seq)
            {
                let (_, b, c) = conn.parked.swap_remove(i);
                next = Some((b, c));
            }
        }
        conn.last_active = cx.now();
        if conn.handing {
            if conn.inflight() == 0 {
                cx.set_timer(Duration::ZERO, LoopTimer::HandOff(id));
            }
            return;
        }
        if conn.paused && conn.inflight() < self.config.max_pipeline as u64 && !cx.is_congested(id)
        {
            conn.paused = false;
            cx.resume_reading(id);
        }
        // Stopping, or the client half-closed: nothing more will come, so once the
        // last answer is out the connection closes.
        // (Handing over, a keep-alive answer leaves the connection open: the client's
        // next request gets `Connection: close`.)
        let finished =
            ((self.stopping && !self.handing_over) || conn.input_ended) && conn.inflight() == 0;
        if finished {
            cx.close(id);
        }
    }

    /// Handing over to a successor process: a plaintext client's connection is read no
    /// further and, once its answers are out, goes to the successor, which reads on
    /// from where this process stopped (the client keeps its connection). A TLS one
    /// stays: its next request is answered with `Connection: close`.
    pub(super) fn hand_on_http(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId) {
        if crate::tls::is_tls(cx, id) {
            return;
        }
        let Some(conn) = self.http.get_mut(id) else {
            return;
        };
        if conn.done_reading || conn.input_ended {
            return;
        }
        conn.handing = true;
        cx.pause_reading(id);
        if conn.inflight() == 0 {
            cx.set_timer(Duration::ZERO, LoopTimer::HandOff(id));
        }
    }

    /// Hands a client's connection, its answers out, to the successor process with
    /// what it sent that is not processed yet; retried while they are being written.
    /// One that cannot be handed over goes on as without a successor: read again, its
    /// next request answered with `Connection: close`.
    pub(super) fn hand_off_http(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId) {
        let Some(handoff) = self.handoff.clone() else {
            return;
        };
        if self
            .http
            .get_mut(id)
            .is_none_or(|c| !c.handing || c.inflight() > 0)
        {
            return;
        }
        match cx.detach(id) {
            Ok(conn) => {
                if let Some(mut c) = self.http.remove(id) {
                    for (_, b, _) in c.parked.drain(..) {
                        recycle_into(&mut self.pool, b);
                    }
                }
                self.metrics.connection(-1);
                if let Err(e) = handoff.send(crate::upgrade::HTTP, &conn.stream, &conn.input) {
                    log::warn!("handing an HTTP client's connection over: {e}; closing it");
                }
                if self.stopping && self.calls.is_empty() && self.holds_no_client() {
                    cx.exit();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                cx.set_timer(HAND_OFF_RETRY, LoopTimer::HandOff(id));
            }
            Err(e) => {
                log::debug!("an HTTP connection cannot be handed over: {e}; keeping it");
                if let Some(c) = self.http.get_mut(id) {
                    c.handing = false;
                    cx.resume_reading(id);
                }
            }
        }
    }

    /// The client finished sending (it may only have half-closed, and still read): its
    /// answers in flight go out first, then the connection closes (in `deliver`).
    pub(super) fn on_http_end(&mut self, id: ConnId) -> EndOfInput {
        let Some(conn) = self.http.get_mut(id) else {
            return EndOfInput::Close;
        };
        if conn.inflight() == 0 {
            return EndOfInput::Close;
        }
        conn.done_reading = true;
        conn.input_ended = true;
        EndOfInput::KeepOpen
    }

    /// Completes an HTTP call: its answer (written by `write`) goes out in order.
    pub(super) fn finish_http(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        outcome: Outcome,
        write: impl FnOnce(&mut Vec<u8>, bool),
    ) {
        let Some(c) = self.take_call(cx, call, outcome) else {
            return;
        };
        let Origin::Http {
            conn,
            seq,
            keep_alive,
            ..
        } = c.origin
        else {
            return;
        };
        let mut out = self.take_buf();
        write(&mut out, keep_alive);
        let status = super::observe::http_status(&out);
        self.log_call(cx, &c, outcome, status, out.len());
        self.deliver(cx, conn, seq, out, !keep_alive);
    }

    /// Fails an HTTP call: the error rendered for its request (text or JSON).
    /// Answers a call a rate limit refused: 429 with `Retry-After: secs`.
    pub(super) fn refuse_limited_http(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        render: Render,
        secs: u64,
        msg: &str,
    ) {
        let after = secs.to_string();
        self.finish_http(cx, call, Outcome::RateLimited, |out, ka| {
            let headers = [("Retry-After", after.as_bytes())];
            let (ctype, body) = match render {
                Render::Text => ("text/plain; charset=utf-8", msg.to_owned()),
                Render::Json => ("application/json", error_json(429, msg)),
            };
            http::write_response_with(out, 429, ctype, &headers, body.as_bytes(), ka);
        })
    }

    pub(super) fn fail_http(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        render: Render,
        outcome: Outcome,
        status: u16,
        text: &str,
    ) {
        self.finish_http(cx, call, outcome, |out, ka| {
            write_error_answer(out, render, status, text, ka)
        });
    }

    /// Answers an HTTP call from its agent RESPONSE: 200 with the value, 502 with the
    /// provider's exception or error, 503/504/400 for the agent's statuses, 403 for a
    /// call the provider-agent's authorization policy refused (FORBIDDEN).
    pub(super) fn answer_http(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        render: Render,
        r: &agent::Response<'_>,
    ) {
        let payload = r.payload;
        // Empty (no allocation) unless the provider returned attachments.
        let names = attachment_header_names(r.attachments);
        let headers: Vec<(&str, &[u8])> = names
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        let fail = |this: &mut Self, cx: &mut Ctx<'_, Self>, outcome, status, text: &str| {
            this.fail_http(cx, call, render, outcome, status, text)
        };
        match r.status {
            Status::Ok => self.answer_value(cx, call, render, payload, &headers),
            Status::Exception => self.answer_exception(cx, call, render, payload, &headers),
            Status::Overloaded | Status::Unavailable => {
                let msg = format!("provider unavailable: {}", String::from_utf8_lossy(payload));
                fail(self, cx, Outcome::Unavailable, 503, &msg)
            }
            Status::Timeout => fail(self, cx, Outcome::Timeout, 504, "provider timed out"),
            Status::BadRequest => {
                let msg = String::from_utf8_lossy(payload);
                fail(self, cx, Outcome::BadRequest, 400, &msg)
            }
            // The provider-agent's message says who may not call what: the body is
            // `{"error":"forbidden","message":...,"status":403}` (plain text for form
            // calls), like every error of the agent's own.
            Status::Forbidden => {
                let msg = String::from_utf8_lossy(payload);
                fail(self, cx, Outcome::Forbidden, 403, &msg)
            }
            Status::ProviderError => {
                let msg = String::from_utf8_lossy(payload);
                self.provider_error(cx, call, render, &msg, &headers)
            }
        }
    }

    /// Answers 502 for a provider's error text (not a thrown exception, see
    /// [`answer_exception`](Self::answer_exception)): plain text for the race's form
    /// calls, a JSON object for JSON invocations
    /// (`{"error":"provider_error","message":...,"status":502}`, with a `class` when the
    /// text is an older provider-agent's `class: message`).
    /// `headers` are the provider's response attachments, ready to write.
    pub(super) fn provider_error(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        render: Render,
        text: &str,
        headers: &[(&str, &[u8])],
    ) {
        let body = match render {
            Render::Text => text.to_owned(),
            Render::Json => provider_error_json(text),
        };
        self.answer_502(cx, call, render, &body, headers)
    }

    /// Answers 502 for an exception the provider threw, from its summary (a hessian2
    /// map of `class`, `message`, `cause`): `class: message` lines joined by Java's
    /// `Caused by: ` for form calls, the summary's fields in the error object for JSON.
    pub(super) fn answer_exception(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        render: Render,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) {
        let Some(summary) = decode_payload(payload) else {
            let msg = "undecodable exception from provider";
            return self.provider_error(cx, call, render, msg, headers);
        };
        let body = match render {
            Render::Text => exception_text(&summary),
            Render::Json => exception_json(summary),
        };
        self.answer_502(cx, call, render, &body, headers)
    }

    /// Writes a 502 whose body was rendered for `render`.
    pub(super) fn answer_502(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        render: Render,
        body: &str,
        headers: &[(&str, &[u8])],
    ) {
        let content_type = match render {
            Render::Text => "text/plain; charset=utf-8",
            Render::Json => "application/json",
        };
        self.finish_http(cx, call, Outcome::ProviderError, |out, ka| {
            http::write_response_with(out, 502, content_type, headers, body.as_bytes(), ka)
        })
    }

    /// Answers 200 with the result; `headers` are the provider's response attachments.
    pub(super) fn answer_value(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        render: Render,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) {
        let Some(value) = decode_payload(payload) else {
            let msg = "undecodable result from provider";
            return self.provider_error(cx, call, render, msg, headers);
        };
        match (render, &value) {
            (Render::Text, Value::Int(i)) if headers.is_empty() => {
                let i = i64::from(*i);
                self.finish_http(cx, call, Outcome::Ok, |out, ka| {
                    http::write_response_int(out, 200, i, ka)
                })
            }
            (Render::Text, _) => {
                let text = value.to_text();
                let ct = match value {
                    Value::Int(_) => "text/plain",
                    _ => "text/plain; charset=utf-8",
                };
                self.finish_http(cx, call, Outcome::Ok, |out, ka| {
                    http::write_response_with(out, 200, ct, headers, text.as_bytes(), ka)
                })
            }
            (Render::Json, _) => {
                let json = value.to_json().to_string();
                self.finish_http(cx, call, Outcome::Ok, |out, ka| {
                    http::write_response_with(
                        out,
                        200,
                        "application/json",
                        headers,
                        json.as_bytes(),
                        ka,
                    )
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        error_json, exception_json, exception_text, head_is_json, is_header_token, is_header_value,
        provider_error_json,
    };
    use codec::hessian2::{exception_summary, Value};

    #[test]
    fn error_bodies_as_json() {
        assert_eq!(
            error_json(400, "missing field `method`"),
            r#"{"error":"bad_request","message":"missing field `method`","status":400}"#
        );
        assert_eq!(
            error_json(504, "provider timed out"),
            r#"{"error":"timeout","message":"provider timed out","status":504}"#
        );
        assert_eq!(
            error_json(503, "no \"x\"\n"),
            r#"{"error":"unavailable","message":"no \"x\"\n","status":503}"#
        );
        assert!(error_json(413, "").starts_with(r#"{"error":"payload_too_large""#));
        assert_eq!(
            error_json(403, "forbidden: anonymous peer may not call a.B.m"),
            r#"{"error":"forbidden","message":"forbidden: anonymous peer may not call a.B.m","status":403}"#
        );
    }

    #[test]
    fn json_heads() {
        let head = |ct: &str| {
            format!("POST / HTTP/1.1\r\nContent-Type: {ct}\r\nContent-Length: 9\r\n\r\n")
        };
        assert!(head_is_json(head("application/json").as_bytes()));
        assert!(head_is_json(
            head("Application/JSON; charset=utf-8").as_bytes()
        ));
        assert!(!head_is_json(
            head("application/x-www-form-urlencoded").as_bytes()
        ));
        assert!(!head_is_json(b"garbage\r\n\r\n"));
        assert!(!head_is_json(b""));
    }

    #[test]
    fn header_safe_attachments() {
        for ok in ["trace", "X-B3-TraceId", "a.b_c~1", "!#$%&'*+-.^_`|~"] {
            assert!(is_header_token(ok), "{ok:?}");
        }
        for bad in [
            "", "a b", "a:b", "a\r\nb", "ключ", "a\"b", "a(b)", "a/b", "a\tb",
        ] {
            assert!(!is_header_token(bad), "{bad:?}");
        }
        for ok in ["", "v 1", "\tv", "значение", "a:b/c=\"d\""] {
            assert!(is_header_value(ok), "{ok:?}");
        }
        for bad in ["a\r\nb", "a\nb", "a\rb", "a\u{0}b", "a\u{7f}b", "a\u{1b}b"] {
            assert!(!is_header_value(bad), "{bad:?}");
        }
    }

    #[test]
    fn exceptions_with_their_causes() {
        let object = |class: &str, message: Option<&str>, cause: Value| Value::Object {
            class: class.into(),
            fields: vec![
                (
                    "detailMessage".into(),
                    message.map_or(Value::Null, |m| Value::String(m.into())),
                ),
                ("cause".into(), cause),
            ],
        };
        let root = object("java.io.IOException", Some("disk gone"), Value::Ref(2));
        let mid = object("java.lang.IllegalStateException", None, root);
        let thrown = object("com.example.NoUser", Some("no user 7"), mid);
        let summary = exception_summary(&thrown);
        assert_eq!(
            exception_text(&summary),
            "com.example.NoUser: no user 7\n\
             Caused by: java.lang.IllegalStateException\n\
             Caused by: java.io.IOException: disk gone"
        );
        assert_eq!(
            exception_json(summary),
            concat!(
                r#"{"error":"provider_error","class":"com.example.NoUser","message":"no user 7","#,
                r#""cause":{"class":"java.lang.IllegalStateException","message":null,"#,
                r#""cause":{"class":"java.io.IOException","message":"disk gone"}},"status":502}"#
            )
        );
        let alone = exception_summary(&object("a.B", Some("m"), Value::Null));
        assert_eq!(exception_text(&alone), "a.B: m");
    }

    #[test]
    fn provider_errors_as_json() {
        assert_eq!(
            provider_error_json("com.example.NoUser: no user 7: gone"),
            r#"{"error":"provider_error","class":"com.example.NoUser","message":"no user 7: gone","status":502}"#
        );
        assert_eq!(
            provider_error_json("java.lang.IllegalStateException"),
            r#"{"error":"provider_error","class":"java.lang.IllegalStateException","message":"java.lang.IllegalStateException","status":502}"#
        );
        assert_eq!(
            provider_error_json("Can not find method: a.B:0.0.0#m() \"x\"\n"),
            r#"{"error":"provider_error","message":"Can not find method: a.B:0.0.0#m() \"x\"\n","status":502}"#
        );
        assert_eq!(
            provider_error_json("Error: boom"),
            r#"{"error":"provider_error","message":"Error: boom","status":502}"#
        );
    }
}
