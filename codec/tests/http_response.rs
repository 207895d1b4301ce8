//! HTTP response writing.

use codec::http::{
    reason_phrase, write_continue, write_error, write_response, write_response_int,
    write_response_with, HttpError,
};

#[test]
fn response_bytes() {
    let mut out = Vec::new();
    write_response(&mut out, 200, "text/plain", b"-1592106735", true);
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\
          Connection: keep-alive\r\n\r\n-1592106735"
    );
    // Appends: several responses in one buffer.
    write_response(&mut out, 503, "text/plain", b"", false);
    assert!(out.ends_with(
        b"-1592106735HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
          Content-Length: 0\r\nConnection: close\r\n\r\n"
    ));
}

#[test]
fn extra_headers_and_continue() {
    let mut out = Vec::new();
    write_continue(&mut out);
    write_response_with(
        &mut out,
        404,
        "text/plain",
        &[("X-A", b"1"), ("Retry-After", b"5")],
        b"no",
        true,
    );
    assert_eq!(
        out,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\
          Content-Length: 2\r\nConnection: keep-alive\r\nX-A: 1\r\nRetry-After: 5\r\n\r\nno"
    );
}

#[test]
fn int_bodies() {
    for v in [
        0i64,
        7,
        -1,
        10,
        -1592106735,
        i64::MAX,
        i64::MIN,
        i32::MIN as i64,
    ] {
        let mut out = Vec::new();
        write_response_int(&mut out, 200, v, true);
        let text = v.to_string();
        let want = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: keep-alive\r\n\r\n{text}",
            text.len()
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}

#[test]
fn error_answers() {
    let mut out = Vec::new();
    write_error(&mut out, &HttpError::BodyTooLarge);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{text}"
    );
    assert!(text.contains("Connection: close\r\n"));
    assert!(text.ends_with("\r\n\r\nrequest body too large"));
    assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
    assert_eq!(reason_phrase(799), "Unknown");
}
