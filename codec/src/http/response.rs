//! Response writing: status line, Content-Length, Connection, appended into one buffer.

use super::HttpError;

/// The standard reason phrase for `status` (`"Unknown"` for codes not listed).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Write `100 Continue` (for a request with `Expect: 100-continue`).
pub fn write_continue(out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
}

/// Append a whole response: status line, Content-Type, Content-Length, Connection, body.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) {
    write_response_with(out, status, content_type, &[], body, keep_alive);
}

/// Like [`write_response`], with extra `(name, value)` headers after the standard ones.
///
/// Names and values are written as given: they must not contain CR or LF.
pub fn write_response_with(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &[u8])],
    body: &[u8],
    keep_alive: bool,
) {
    write_head(
        out,
        status,
        content_type,
        extra_headers,
        body.len(),
        keep_alive,
    );
    out.extend_from_slice(body);
}

/// Append a response whose body is the decimal `value` (e.g. the race's `int` result),
/// as `text/plain`, formatted without allocation.
pub fn write_response_int(out: &mut Vec<u8>, status: u16, value: i64, keep_alive: bool) {
    let mut digits = [0u8; 20];
    let body = fmt_i64(&mut digits, value);
    write_response(out, status, "text/plain", body, keep_alive);
}

/// Append the answer for a decode error: its status, its reason as the body, and
/// `Connection: close` (see [`HttpError::closes_connection`]).
pub fn write_error(out: &mut Vec<u8>, err: &HttpError) {
    write_response(
        out,
        err.status(),
        "text/plain; charset=utf-8",
        err.reason().as_bytes(),
        !err.closes_connection(),
    );
}

fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &[u8])],
    body_len: usize,
    keep_alive: bool,
) {
    let mut digits = [0u8; 20];
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(fmt_u64(&mut digits, u64::from(status)));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(fmt_u64(&mut digits, body_len as u64));
    out.extend_from_slice(if keep_alive {
        b"\r\nConnection: keep-alive\r\n".as_slice()
    } else {
        b"\r\nConnection: close\r\n".as_slice()
    });
    for (name, value) in extra_headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Decimal digits of `v` into the tail of `buf`; returns them.
fn fmt_u64(buf: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    buf.get(i..).unwrap_or_default()
}

/// Decimal digits of `v` (with a leading `-` if negative) into `buf`; returns them.
fn fmt_i64(buf: &mut [u8; 20], v: i64) -> &[u8] {
    let len = {
        let digits = fmt_u64(buf, v.unsigned_abs());
        digits.len()
    };
    let mut start = buf.len() - len;
    if v < 0 {
        // 19 digits at most for |i64::MIN|, so there is room for the sign.
        start -= 1;
        if let Some(slot) = buf.get_mut(start) {
            *slot = b'-';
        }
    }
    buf.get(start..).unwrap_or_default()
}
