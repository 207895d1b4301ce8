//! The consumer-agent end to end against fake provider-agents on loopback.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use codec::java::string_hash_code;
use util::*;

#[test]
fn race_request_is_answered_with_java_hash_code() {
    let agent = fake_agent(Mode::Hash);
    let running = consumer(&[agent.addr], &[]);
    wait_ready(&running);
    for param in ["", "hello", "abcXYZ0123456789", "你好, wörld +%&=😀"] {
        let answers = exchange(running.http_addr(), &race_request(param), 1);
        assert_eq!(answers[0].status, 200, "{param:?}: {}", answers[0].body);
        assert_eq!(
            answers[0].body,
            string_hash_code(param).to_string(),
            "{param:?}"
        );
    }
    running.stop();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let agent = fake_agent(Mode::Hash);
    let running = consumer(&[agent.addr], &[]);
    wait_ready(&running);
    let params: Vec<String> = (0..50).map(|i| "x".repeat(i * 7)).collect();
    let mut raw = Vec::new();
    for p in &params {
        raw.extend_from_slice(&race_request(p));
    }
    let mut s = TcpStream::connect(running.http_addr()).expect("connect");
    // Split the pipeline at an awkward place to exercise partial requests.
    let (a, b) = raw.split_at(raw.len() / 3 + 1);
    s.write_all(a).expect("write");
    std::thread::sleep(Duration::from_millis(20));
    s.write_all(b).expect("write");
    let answers = read_answers(&mut s, params.len(), Duration::from_secs(10));
    for (p, a) in params.iter().zip(&answers) {
        assert_eq!(
            (a.status, a.body.clone()),
            (200, string_hash_code(p).to_string())
        );
    }
    running.stop();
}

#[test]
fn bad_requests_get_clear_errors() {
    let agent = fake_agent(Mode::Hash);
    let running = consumer(&[agent.addr], &[]);
    wait_ready(&running);
    let cases: [(&[u8], u16, &str); 4] = [
        (b"GARBAGE\r\n\r\n", 400, ""),
        (
            b"POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 18\r\n\r\ninterface=a%zz&m=b",
            400,
            "escape",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
            400,
            "content type",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 99999999\r\n\r\n",
            413,
            "",
        ),
    ];
    for (raw, status, needle) in cases {
        let answers = exchange(running.http_addr(), raw, 1);
        assert_eq!(
            answers[0].status,
            status,
            "{}",
            String::from_utf8_lossy(raw)
        );
        assert!(
            answers[0].body.contains(needle),
            "{:?} lacks {needle:?}",
            answers[0].body
        );
    }
    let mut huge_head = b"GET / HTTP/1.1\r\nX: ".to_vec();
    huge_head.extend(std::iter::repeat_n(b'a', 20_000));
    huge_head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(exchange(running.http_addr(), &huge_head, 1)[0].status, 431);
    // The agent still serves well-behaved clients.
    let ok = exchange(running.http_addr(), &race_request("ok"), 1);
    assert_eq!(ok[0].body, string_hash_code("ok").to_string());
    running.stop();
}

#[test]
fn json_invocation_is_answered_as_json() {
    let agent = fake_agent(Mode::Hash);
    let running = consumer(&[agent.addr], &[]);
    wait_ready(&running);
    let body = r#"{"interface":"com.alibaba.dubbo.performance.demo.provider.IHelloService","method":"hash","parameterTypes":["java.lang.String"],"arguments":["hello"]}"#;
    let raw = format!(
        "POST /call HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answers = exchange(running.http_addr(), raw.as_bytes(), 1);
    assert_eq!(
        (answers[0].status, answers[0].body.as_str()),
        (200, "99162322")
    );
    running.stop();
}

#[test]
fn no_provider_is_503_and_unknown_service_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = consumer_with(&format!("file://{}", dir.path().display()), &[]);
    let answers = exchange(running.http_addr(), &race_request("x"), 1);
    assert_eq!(answers[0].status, 503);
    let body = "interface=nope&method=m";
    let raw = format!(
        "POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answers = exchange(running.http_addr(), raw.as_bytes(), 1);
    assert_eq!(answers[0].status, 503);
    assert!(answers[0].body.contains("nope"), "{}", answers[0].body);
    running.stop();
}

#[test]
fn silent_provider_times_out_with_504() {
    let agent = fake_agent(Mode::Silent);
    let running = consumer(&[agent.addr], &["--timeout-ms", "300"]);
    wait_ready(&running);
    let answers = exchange(running.http_addr(), &race_request("x"), 1);
    assert_eq!(answers[0].status, 504);
    running.stop();
}

#[test]
fn overloaded_provider_is_retried_elsewhere() {
    let full = fake_agent(Mode::Overloaded);
    let good = fake_agent(Mode::Hash);
    let running = consumer(&[full.addr, good.addr], &["--lb", "wrr"]);
    wait_ready(&running);
    // Both connections up (polled: a fixed pause may be too short on a busy machine).
    let both_up = test_support::wait::wait_until(Duration::from_secs(10), || {
        let text = running.metrics().render();
        let up: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("consumer_upstream_up{"))
            .collect();
        [full.addr, good.addr]
            .iter()
            .all(|a| up.iter().any(|l| l.contains(&format!("\"{a}\""))))
            && up.iter().all(|l| l.ends_with(" 1"))
    });
    assert!(both_up, "both provider-agents connected");
    for i in 0..20 {
        let p = format!("p{i}");
        let answers = exchange(running.http_addr(), &race_request(&p), 1);
        assert_eq!(answers[0].status, 200, "{}", answers[0].body);
        assert_eq!(answers[0].body, string_hash_code(&p).to_string());
    }
    assert!(
        full.calls.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the full provider was tried"
    );
    running.stop();
}

/// The value of counter `name` in the consumer-agent's `/metrics` text.
fn counter(running: &agent_consumer::Running, name: &str) -> u64 {
    let text = running.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics:\n{text}"))
}

#[test]
fn a_call_refused_for_capacity_is_retried_after_a_backoff() {
    // The only provider-agent refuses every call for its first 30 ms. Retried at once,
    // a call is refused three times within a millisecond; waiting 12.5-25 ms, then
    // 25-50 ms, its third attempt at the latest comes after the burst.
    let busy = fake_agent(Mode::OverloadedFor(30));
    let running = consumer(&[busy.addr], &["--retry-backoff-ms", "25"]);
    wait_ready(&running);
    let started = std::time::Instant::now();
    let answers = exchange(running.http_addr(), &race_request("later"), 1);
    assert_eq!(answers[0].status, 200, "{}", answers[0].body);
    assert_eq!(answers[0].body, string_hash_code("later").to_string());
    assert!(started.elapsed() >= Duration::from_millis(12), "it waited");
    let calls = busy.calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=3).contains(&calls), "{calls} attempts");
    assert_eq!(
        counter(&running, "consumer_retries_total"),
        calls as u64 - 1
    );
    assert_eq!(
        counter(&running, "consumer_retry_backoffs_total"),
        calls as u64 - 1
    );
    running.stop();

    // Without backoff the same burst refuses the call: every retry comes back at once.
    let busy = fake_agent(Mode::OverloadedFor(2_000));
    let running = consumer(&[busy.addr], &["--retry-backoff-ms", "0"]);
    wait_ready(&running);
    let answers = exchange(running.http_addr(), &race_request("now"), 1);
    assert_eq!(answers[0].status, 503, "{}", answers[0].body);
    assert_eq!(busy.calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(counter(&running, "consumer_retry_backoffs_total"), 0);
    running.stop();
}

#[test]
fn a_retry_whose_backoff_would_pass_the_deadline_goes_at_once() {
    // Backoff of 10 s (5-10 s with jitter) against a 3 s timeout: no retry can wait, so
    // the refusals are retried at once and the last one answered, long before the
    // deadline.
    let full = fake_agent(Mode::Overloaded);
    let running = consumer(
        &[full.addr],
        &["--retry-backoff-ms", "10000", "--timeout-ms", "3000"],
    );
    wait_ready(&running);
    let started = std::time::Instant::now();
    let answers = exchange(running.http_addr(), &race_request("x"), 1);
    assert_eq!(answers[0].status, 503, "{}", answers[0].body);
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "answered at once"
    );
    assert_eq!(full.calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(counter(&running, "consumer_retries_total"), 2);
    assert_eq!(counter(&running, "consumer_retry_backoffs_total"), 0);
    running.stop();
}

#[test]
fn provider_error_is_502_with_its_message() {
    let agent = fake_agent(Mode::Fail);
    let running = consumer(&[agent.addr], &[]);
    wait_ready(&running);
    let answers = exchange(running.http_addr(), &race_request("x"), 1);
    assert_eq!((answers[0].status, answers[0].body.as_str()), (502, "boom"));
    running.stop();
}

/// A JSON invocation of the race's service asking `hash(param)`, as raw HTTP.
fn json_request(param: &str, extra: &str) -> Vec<u8> {
    let body = format!(
        r#"{{"interface":"com.alibaba.dubbo.performance.demo.provider.IHelloService","method":"hash","parameterTypes":["java.lang.String"],"arguments":["{param}"]{extra}}}"#
    );
    format!(
        "POST /call HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Asserts a JSON error answer: `{"error":code,"message":...,"status":status}` with the
/// message containing `needle`.
fn assert_json_error(a: &Answer, status: u16, code: &str, needle: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert_eq!(a.content_type, "application/json", "{a:?}");
    let prefix = format!(r#"{{"error":"{code}","message":""#);
    let suffix = format!(r#"","status":{status}}}"#);
    assert!(
        a.body.starts_with(&prefix) && a.body.ends_with(&suffix),
        "{a:?}"
    );
    assert!(a.body.contains(needle), "{a:?} lacks {needle:?}");
}

#[test]
fn json_invocations_get_json_errors_and_form_calls_plain_text() {
    // 400 (the consumer's own check and the provider-agent's), 413, 502, 503, 504.
    let hash = fake_agent(Mode::Hash);
    let running = consumer(&[hash.addr], &["--max-body", "4096"]);
    wait_ready(&running);
    let bad = b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"interface\":1}";
    let a = exchange(running.http_addr(), bad, 1);
    assert_json_error(
        &a[0],
        400,
        "bad_request",
        "`interface` must be a non-empty string",
    );
    let huge = b"POST / HTTP/1.1\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 99999\r\n\r\n";
    let a = exchange(running.http_addr(), huge, 1);
    assert_json_error(&a[0], 413, "payload_too_large", "request body too large");
    // The race's form calls keep their plain text.
    let huge_form = b"POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 99999\r\n\r\n";
    let a = exchange(running.http_addr(), huge_form, 1);
    assert_eq!(a[0].status, 413);
    assert!(a[0].content_type.starts_with("text/plain"), "{:?}", a[0]);
    let a = exchange(running.http_addr(), &json_request("ok", ""), 1);
    assert_eq!(
        (a[0].status, a[0].content_type.as_str()),
        (200, "application/json")
    );
    running.stop();

    let silent = fake_agent(Mode::Silent);
    let running = consumer(&[silent.addr], &["--timeout-ms", "200"]);
    wait_ready(&running);
    let a = exchange(running.http_addr(), &json_request("x", ""), 1);
    assert_json_error(&a[0], 504, "timeout", "timed out waiting for the provider");
    let a = exchange(running.http_addr(), &race_request("x"), 1);
    assert_eq!(a[0].status, 504);
    assert_eq!(a[0].body, "timed out waiting for the provider");
    assert!(a[0].content_type.starts_with("text/plain"), "{:?}", a[0]);
    running.stop();

    let full = fake_agent(Mode::Overloaded);
    let running = consumer(&[full.addr], &[]);
    wait_ready(&running);
    let a = exchange(running.http_addr(), &json_request("x", ""), 1);
    assert_json_error(&a[0], 503, "unavailable", "provider unavailable: full");
    running.stop();

    let failing = fake_agent(Mode::Fail);
    let running = consumer(&[failing.addr], &[]);
    wait_ready(&running);
    let a = exchange(running.http_addr(), &json_request("x", ""), 1);
    assert_eq!(a[0].content_type, "application/json", "{:?}", a[0]);
    assert_eq!(
        (a[0].status, a[0].body.as_str()),
        (
            502,
            r#"{"error":"provider_error","message":"boom","status":502}"#
        )
    );
    running.stop();

    // No provider for the service at all: 503 naming it.
    let dir = tempfile::tempdir().expect("tempdir");
    let running = consumer_with(&format!("file://{}", dir.path().display()), &[]);
    let a = exchange(running.http_addr(), &json_request("x", ""), 1);
    assert_json_error(&a[0], 503, "unavailable", "IHelloService");
    running.stop();
}

/// Reads until the agent closes the connection (with a deadline): everything it sent.
fn read_to_close(s: &mut TcpStream, deadline: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let end = std::time::Instant::now() + deadline;
    let mut buf = Vec::new();
    while read_into(s, &mut buf) {
        assert!(
            std::time::Instant::now() < end,
            "the connection was not closed; got {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
    buf
}

/// The statuses and bodies of the whole HTTP responses in `raw`, in order.
fn bodies(raw: &[u8]) -> Vec<(u16, String)> {
    let mut rest = raw.to_vec();
    let mut out = Vec::new();
    while let Some(a) = take_answer(&mut rest) {
        out.push((a.status, a.body));
    }
    assert!(rest.is_empty(), "a partial response: {rest:?}");
    out
}

/// A client that half-closes (`shutdown(SHUT_WR)`) after its requests still gets every
/// answer, then the agent's FIN: one request, and a pipeline.
#[test]
fn a_half_closing_client_gets_its_answers() {
    let agent = fake_agent(Mode::Delay(100));
    let running = consumer(&[agent.addr], &[]);
    wait_ready(&running);
    for count in [1, 5] {
        let params: Vec<String> = (0..count).map(|i| format!("half{count}-{i}")).collect();
        let mut raw = Vec::new();
        for p in &params {
            raw.extend_from_slice(&race_request(p));
        }
        let mut s = TcpStream::connect(running.http_addr()).expect("connect");
        s.write_all(&raw).expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let got = bodies(&read_to_close(&mut s, Duration::from_secs(10)));
        let want: Vec<(u16, String)> = params
            .iter()
            .map(|p| (200, string_hash_code(p).to_string()))
            .collect();
        assert_eq!(got, want, "{count} request(s) then FIN");
    }
    // Half-closing with nothing in flight: closed at once, nothing sent.
    let mut s = TcpStream::connect(running.http_addr()).expect("connect");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert!(read_to_close(&mut s, Duration::from_secs(5)).is_empty());
    running.stop();
}

/// A request that ends the connection (`Connection: close`, or HTTP/1.0 without
/// keep-alive) is the last one taken: requests pipelined after it are neither called
/// nor answered, and the connection closes after its answer.
#[test]
fn nothing_after_a_closing_request_is_called() {
    let agent = fake_agent(Mode::Hash);
    let running = consumer(&[agent.addr], &[]);
    wait_ready(&running);
    let close = |req: Vec<u8>| {
        let text = String::from_utf8(req).expect("utf8");
        text.replacen("Host: x\r\n", "Host: x\r\nConnection: close\r\n", 1)
            .into_bytes()
    };
    let http10 = |req: Vec<u8>| {
        let text = String::from_utf8(req).expect("utf8");
        text.replacen("HTTP/1.1", "HTTP/1.0", 1).into_bytes()
    };
    let cases: [(&str, Vec<u8>); 2] = [
        ("Connection: close", close(race_request("first"))),
        ("HTTP/1.0", http10(race_request("first"))),
    ];
    let calls = || agent.calls.load(std::sync::atomic::Ordering::SeqCst);
    for (what, first) in cases {
        let before = calls();
        let mut raw = first;
        raw.extend_from_slice(&race_request("second"));
        raw.extend_from_slice(&race_request("third"));
        let mut s = TcpStream::connect(running.http_addr()).expect("connect");
        s.write_all(&raw).expect("write");
        let got = bodies(&read_to_close(&mut s, Duration::from_secs(10)));
        assert_eq!(
            got,
            [(200, string_hash_code("first").to_string())],
            "{what}: one answer, then EOF"
        );
        assert_eq!(calls() - before, 1, "{what}: one call made");
    }
    running.stop();
}

#[test]
fn clients_naming_ever_new_methods_cannot_fill_the_call_table() {
    let agent = fake_agent(Mode::Hash);
    let running = consumer(&[agent.addr], &[]);
    wait_ready(&running);
    // More distinct signatures than the loop's call table holds (4,096): once it is
    // full, ids no call in flight uses are given to the new ones.
    let mut s = TcpStream::connect(running.http_addr()).expect("connect");
    for batch in 0..41 {
        let mut raw = Vec::new();
        for i in 0..100 {
            let body = race_body("p").replace("method=hash", &format!("method=m{batch}x{i}"));
            raw.extend_from_slice(
                format!(
                    "POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
        s.write_all(&raw).expect("write");
        for a in read_answers(&mut s, 100, Duration::from_secs(10)) {
            assert_eq!(
                (a.status, a.body.as_str()),
                (200, string_hash_code("p").to_string().as_str()),
                "batch {batch}"
            );
        }
    }
    // The race's own signature still gets an id.
    let answers = exchange(running.http_addr(), &race_request("hello"), 1);
    assert_eq!(answers[0].body, string_hash_code("hello").to_string());
    running.stop();
}

#[test]
fn a_provider_agent_that_finished_sending_gets_no_new_calls() {
    let agent = fake_agent(Mode::HashThenFinish);
    let running = consumer(&[agent.addr], &["--timeout-ms", "4000"]);
    wait_ready(&running);
    let mut s = TcpStream::connect(running.http_addr()).expect("connect");
    s.write_all(&race_request("a")).expect("write");
    let first = read_answers(&mut s, 1, Duration::from_secs(5));
    assert_eq!(first[0].body, string_hash_code("a").to_string());
    // The provider-agent has sent its FIN (it answers nothing more) but keeps the
    // connection for two seconds: a call must not be written to it and wait for the
    // timeout; with no other provider-agent it is refused at once.
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();
    s.write_all(&race_request("b")).expect("write");
    let second = read_answers(&mut s, 1, Duration::from_secs(10));
    assert_ne!(second[0].status, 504, "{}", second[0].body);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered only after {:?}",
        started.elapsed()
    );
    running.stop();
}
