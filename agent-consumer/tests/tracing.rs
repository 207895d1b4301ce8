//! Distributed tracing through the whole mesh, checked by other people's code:
//!
//! - propagation at a real provider (the npm `sofa-rpc-node` peer of `tests/peers`,
//!   whose `ShapeService.attachment(key)` answers the request attachment it received):
//!   the W3C `traceparent`, B3 (`b3` and `X-B3-*`) and `sw8` contexts it sees are the
//!   caller's trace with the provider-agent's span as parent, in the caller's format;
//! - export decoded by the PyPI `opentelemetry-proto` package
//!   (`tests/peers/otlp_receiver.py`): one trace with the caller's span, the
//!   consumer-agent's and the provider-agent's, parent after parent, timings nested;
//! - a collector that is down, answers 500, or is slow: every call answered at once,
//!   the spans dropped and counted in `/metrics`.
//! - a retried call: the retry a child span of the call's, the provider-agent that
//!   answered under it.
//!
//! HTTP caller -> consumer-agent -> provider-agent -> sofa-rpc-node provider.
//! `.ci/setup` installs node, the peer, python3 and opentelemetry-proto; without them
//! these tests fail, they never skip.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use test_support::net::free_port;
use util::*;

const SERVICE: &str = "com.example.ShapeService";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The Python OTLP receiver, killed on drop; its JSON lines arrive on `lines`.
struct Receiver {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<serde_json::Value>,
    /// Every span received so far.
    seen: std::cell::RefCell<Vec<serde_json::Value>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    /// Starts `tests/peers/otlp_receiver.py` in `mode` (`ok`, `500`, `slow`). Fails if
    /// python3 or opentelemetry-proto is missing.
    fn start(mode: &str) -> Receiver {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers");
        let mut child = Command::new("python3")
            .arg("otlp_receiver.py")
            .args(["--mode", mode])
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is required for this test: run `bash .ci/setup`");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("receiver output");
        assert!(
            line.starts_with("listening "),
            "the OTLP receiver did not start (is opentelemetry-proto installed? run `bash .ci/setup`): {line:?}"
        );
        let port = line["listening ".len()..].trim().parse().expect("port");
        Receiver {
            child,
            port,
            lines: spawn_reader(reader),
            seen: Default::default(),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    /// Every span received so far, once `done` says they are enough (or fails at the
    /// deadline).
    fn spans_until(&self, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let end = Instant::now() + Duration::from_secs(15);
        let mut got = self.seen.borrow_mut();
        while !done(&got) {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    assert!(
                        v.get("error").is_none(),
                        "the receiver could not decode: {v}"
                    );
                    got.push(v);
                }
                Err(_) => panic!("not the spans awaited; received {got:#?}"),
            }
        }
        got.clone()
    }
}

fn spawn_reader(reader: BufReader<ChildStdout>) -> mpsc::Receiver<serde_json::Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { return };
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    rx
}

struct Mesh {
    consumer: agent_consumer::Running,
    provider_agent: agent_provider::Running,
    _peer: Peer,
    _registry: tempfile::TempDir,
}

impl Mesh {
    /// Both agents export to `endpoint`; the consumer-agent gets `consumer_flags` too.
    fn start(endpoint: &str, consumer_flags: &[&str]) -> Mesh {
        let port = free_port().expect("a free port");
        let peer = start_peer(port);
        let registry = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", registry.path().display());
        let provider_addr = format!("127.0.0.1:{port}");
        let listen = format!("127.0.0.1:{}", free_port().expect("a free port"));
        let provider_agent = agent_provider::start(agent_provider::Config::parse_from([
            "provider-agent",
            "--listen",
            &listen,
            "--provider",
            &provider_addr,
            "--registry",
            &url,
            "--service",
            SERVICE,
            "--dubbo-version",
            "2.0.2",
            "--otlp-endpoint",
            endpoint,
        ]))
        .expect("provider-agent");
        let mut flags = vec![
            "--service",
            SERVICE,
            "--otlp-endpoint",
            endpoint,
            "--admin",
            "127.0.0.1:0",
        ];
        flags.extend_from_slice(consumer_flags);
        let consumer = consumer_with(&url, &flags);
        wait_ready(&consumer);
        let mesh = Mesh {
            consumer,
            provider_agent,
            _peer: peer,
            _registry: registry,
        };
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _) = mesh.attachment("echo", &[]);
            if status == 200 {
                break mesh;
            }
            assert!(Instant::now() < end, "{SERVICE} never became reachable");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Calls `ShapeService.attachment(key)` with `headers`: the status and the JSON
    /// answer (the attachment value the provider received, or null).
    fn attachment(&self, key: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let body = format!(
            r#"{{"interface":"{SERVICE}","method":"attachment","parameterTypes":["java.lang.String"],"arguments":["{key}"]}}"#
        );
        let (status, body) = http(self.consumer.http_addr(), "POST", headers, &body);
        let value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        (status, value)
    }

    /// The consumer-agent's `/metrics`, through its admin port.
    fn metrics(&self) -> String {
        let admin = self.consumer.admin_addr().expect("admin port");
        http(admin, "GET", &[], "").1
    }
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`): status, body.
fn http(addr: SocketAddr, method: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let extra: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    let path = if method == "GET" {
        "/metrics"
    } else {
        "/invoke"
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn str_of(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn base64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.as_bytes().chunks(3) {
        let b = |i: usize| u32::from(c.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn the_provider_sees_the_trace_in_the_callers_format() {
    let receiver = Receiver::start("ok");
    let mesh = Mesh::start(&receiver.endpoint(), &[]);
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");

    // W3C: the same trace, sampled, a new parent (the provider-agent's span), and the
    // tracestate as sent.
    let headers = [
        ("traceparent", traceparent.as_str()),
        ("tracestate", "vendor=abc"),
    ];
    let (status, seen) = mesh.attachment("traceparent", &headers);
    assert_eq!(status, 200, "{seen}");
    let seen = str_of(&seen).to_owned();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", TRACE, "01"),
        "{seen}"
    );
    assert!(is_hex(parts[2], 16) && parts[2] != CALLER_SPAN, "{seen}");
    let (_, state) = mesh.attachment("tracestate", &headers);
    assert_eq!(state, "vendor=abc");
    // The provider's parent is the provider-agent's span, whose parent is the
    // consumer-agent's, whose parent is the caller's.
    let spans = receiver.spans_until(|s| {
        s.iter()
            .any(|v| v["span_id"] == parts[2] && v["service"] == "provider-agent")
    });
    let pa = spans
        .iter()
        .find(|v| v["span_id"] == parts[2])
        .expect("the provider-agent's span");
    assert_eq!(pa["trace_id"], TRACE);
    let ca_id = str_of(&pa["parent_span_id"]).to_owned();
    let spans = receiver.spans_until(|s| s.iter().any(|v| v["span_id"] == ca_id.as_str()));
    let ca = spans
        .iter()
        .find(|v| v["span_id"] == ca_id.as_str())
        .expect("consumer span");
    assert_eq!(ca["service"], "consumer-agent");
    assert_eq!(ca["parent_span_id"], CALLER_SPAN);

    // B3, single header: the same trace and sampling, the provider-agent's span, and
    // its parent (the consumer-agent's span) after the flag.
    let b3 = format!("{TRACE}-{CALLER_SPAN}-1");
    let (status, seen) = mesh.attachment("b3", &[("b3", &b3)]);
    assert_eq!(status, 200, "{seen}");
    let seen = str_of(&seen).to_owned();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!((parts[0], parts[2]), (TRACE, "1"), "{seen}");
    assert!(is_hex(parts[1], 16) && is_hex(parts[3], 16), "{seen}");
    assert!(parts[1] != CALLER_SPAN && parts[3] != CALLER_SPAN, "{seen}");
    assert_ne!(parts[1], parts[3]);

    // B3, multiple headers: written back as B3 headers (Brave's lower-case names).
    let multi = [
        ("X-B3-TraceId", TRACE),
        ("X-B3-SpanId", CALLER_SPAN),
        ("X-B3-Sampled", "1"),
    ];
    let (_, trace_id) = mesh.attachment("x-b3-traceid", &multi);
    assert_eq!(trace_id, TRACE);
    let (_, span_id) = mesh.attachment("x-b3-spanid", &multi);
    let (_, parent) = mesh.attachment("x-b3-parentspanid", &multi);
    let (_, sampled) = mesh.attachment("x-b3-sampled", &multi);
    assert!(
        is_hex(str_of(&span_id), 16) && span_id != CALLER_SPAN,
        "{span_id}"
    );
    assert!(
        is_hex(str_of(&parent), 16) && parent != CALLER_SPAN,
        "{parent}"
    );
    assert_eq!(sampled, "1");
    // The caller's own headers do not reach the provider beside ours.
    let (_, b3) = mesh.attachment("b3", &multi);
    assert_eq!(b3, serde_json::Value::Null);

    // SkyWalking: the caller's trace id (any string) travels on; the parent segment is
    // the provider-agent's span, the parent service the provider-agent.
    let sw_trace = "e7a1f5.57.17000000000000001";
    let sw8 = format!(
        "1-{}-{}-2-{}-{}-{}-{}",
        base64(sw_trace),
        base64("segment-of-caller"),
        base64("web"),
        base64("web@host"),
        base64("/checkout"),
        base64("127.0.0.1:20000")
    );
    let (status, seen) = mesh.attachment("sw8", &[("sw8", &sw8)]);
    assert_eq!(status, 200, "{seen}");
    let seen = str_of(&seen).to_owned();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 8, "{seen}");
    assert_eq!(parts[0], "1");
    assert_eq!(parts[1], base64(sw_trace));
    assert_eq!(parts[3], "0");
    assert_eq!(parts[4], base64("provider-agent"));
    assert_eq!(parts[6], base64(&format!("{SERVICE}.attachment")));

    // No context and no sampling (the default rate 0): nothing is added.
    let (_, none) = mesh.attachment("traceparent", &[]);
    assert_eq!(none, serde_json::Value::Null);
    drop(mesh);
}

#[test]
fn one_trace_reaches_the_collector_parent_after_parent() {
    let receiver = Receiver::start("ok");
    let mesh = Mesh::start(&receiver.endpoint(), &[]);
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let before = reactor_admin::otlp::unix_nanos();
    let (status, seen) = mesh.attachment("traceparent", &[("traceparent", &traceparent)]);
    let after = reactor_admin::otlp::unix_nanos();
    assert_eq!(status, 200, "{seen}");
    let provider_parent = str_of(&seen).split('-').nth(2).expect("span").to_owned();

    let spans = receiver.spans_until(|s| s.iter().filter(|v| v["trace_id"] == TRACE).count() >= 2);
    let ours: Vec<&serde_json::Value> = spans.iter().filter(|v| v["trace_id"] == TRACE).collect();
    assert_eq!(ours.len(), 2, "{ours:#?}");
    let ca = ours
        .iter()
        .find(|v| v["service"] == "consumer-agent")
        .expect("the consumer-agent's span");
    let pa = ours
        .iter()
        .find(|v| v["service"] == "provider-agent")
        .expect("the provider-agent's span");
    // Parent order: caller -> consumer-agent -> provider-agent -> the provider.
    assert_eq!(ca["parent_span_id"], CALLER_SPAN);
    assert_eq!(pa["parent_span_id"], ca["span_id"]);
    assert_eq!(pa["span_id"], provider_parent.as_str());
    // Kinds (OTLP: 2 SERVER, 3 CLIENT) and status OK (1).
    assert_eq!(
        (ca["kind"].as_i64(), pa["kind"].as_i64()),
        (Some(3), Some(2))
    );
    assert_eq!(
        (ca["status"].as_i64(), pa["status"].as_i64()),
        (Some(1), Some(1))
    );
    // Timings nested: the call inside the caller's, the provider-agent's inside it.
    let t = |v: &serde_json::Value, k: &str| v[k].as_u64().expect("a time");
    assert!(before <= t(ca, "start"), "{ca}");
    assert!(t(ca, "start") <= t(pa, "start"), "{ca} {pa}");
    assert!(t(pa, "start") < t(pa, "end"), "{pa}");
    assert!(t(pa, "end") <= t(ca, "end"), "{ca} {pa}");
    assert!(t(ca, "end") <= after, "{ca}");
    // Attributes.
    for span in [ca, pa] {
        let a = &span["attributes"];
        assert_eq!(a["rpc.service"], SERVICE, "{span}");
        assert_eq!(a["rpc.method"], "attachment", "{span}");
        assert_eq!(a["mesh.status"], "ok", "{span}");
        assert_eq!(span["name"], format!("{SERVICE}/attachment"));
    }
    assert_eq!(ca["attributes"]["mesh.front"], "http");
    assert_eq!(ca["attributes"]["server.address"], pa_listen(&mesh));

    // A sampled call without a context starts a trace of its own (rate 1.0).
    drop(mesh);
    let mesh = Mesh::start(&receiver.endpoint(), &["--trace-sample-rate", "1.0"]);
    let (_, seen) = mesh.attachment("traceparent", &[]);
    let seen = str_of(&seen).to_owned();
    let trace = seen.split('-').nth(1).expect("trace id").to_owned();
    assert!(is_hex(&trace, 32) && trace != TRACE, "{seen}");
    let spans =
        receiver.spans_until(|s| s.iter().filter(|v| v["trace_id"] == trace.as_str()).count() >= 2);
    let root = spans
        .iter()
        .find(|v| v["trace_id"] == trace.as_str() && v["service"] == "consumer-agent")
        .expect("the root span");
    assert_eq!(root["parent_span_id"], "");
    assert!(mesh.metrics().contains("consumer_spans_exported_total "));
}

/// The provider-agent's listen address, as the consumer-agent's span names it.
fn pa_listen(mesh: &Mesh) -> String {
    mesh.provider_agent.agent_addr().to_string()
}

#[test]
fn a_collector_down_failing_or_slow_never_holds_a_call() {
    // Down: nothing listens on the port.
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let down = format!("http://{}/v1/traces", dead.local_addr().expect("addr"));
    drop(dead);
    let failing = Receiver::start("500");
    let slow = Receiver::start("slow");
    for (what, endpoint) in [
        ("down", down),
        ("answering 500", failing.endpoint()),
        ("slow", slow.endpoint()),
    ] {
        let mesh = Mesh::start(&endpoint, &["--trace-sample-rate", "1.0"]);
        let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
        let started = Instant::now();
        for i in 0..200 {
            let headers = [("traceparent", traceparent.as_str())];
            let (status, seen) =
                mesh.attachment("traceparent", if i % 2 == 0 { &headers } else { &[] });
            assert_eq!(status, 200, "collector {what}: call {i}: {seen}");
            assert!(seen.is_string(), "collector {what}: call {i}: {seen}");
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "collector {what}: 200 calls took {took:?}"
        );
        // Every span is dropped and counted, in /metrics too, within the export timeout.
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let text = mesh.metrics();
            let dropped = counter(&text, "consumer_spans_dropped_total");
            let exported = counter(&text, "consumer_spans_exported_total");
            let provider_dropped = mesh.provider_agent.metrics().render();
            let provider_dropped = counter(&provider_dropped, "provider_agent_spans_dropped_total");
            if dropped >= 1 && provider_dropped >= 1 {
                assert_eq!(exported, 0, "collector {what}");
                break;
            }
            assert!(
                Instant::now() < end,
                "collector {what}: no drop counted: consumer {dropped}, provider-agent {provider_dropped}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// Runs `tests/peers/client.js` against `addr` with `steps` (JSON) on its stdin: one
/// JSON line per step.
fn run_dubbo_client(addr: SocketAddr, steps: &serde_json::Value) -> Vec<serde_json::Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers");
    let mut child = Command::new("node")
        .arg("client.js")
        .arg(addr.to_string())
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is required for this test: run `bash .ci/setup`");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(steps.to_string().as_bytes())
        .expect("client stdin");
    drop(input);
    let out = child.wait_with_output().expect("client output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client.js failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn a_dubbo_callers_attachments_carry_the_trace_through() {
    let receiver = Receiver::start("ok");
    let dubbo = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let _mesh = Mesh::start(&receiver.endpoint(), &["--dubbo-listen", &dubbo]);
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let b3 = format!("{TRACE}-{CALLER_SPAN}-1");
    let step = |key: &str, attachments: serde_json::Value| {
        serde_json::json!({
            "service": SERVICE, "version": "0.0.0", "group": "", "method": "attachment",
            "args": [key], "attachments": attachments,
        })
    };
    let steps = serde_json::json!([
        step(
            "traceparent",
            serde_json::json!({ "traceparent": traceparent })
        ),
        step("b3", serde_json::json!({ "b3": b3 })),
        step("traceparent", serde_json::json!({})),
    ]);
    let lines = run_dubbo_client(dubbo.parse().expect("addr"), &steps);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let seen = str_of(&lines[0]["value"]).to_owned();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!((parts[1], parts[3]), (TRACE, "01"), "{seen}");
    assert!(is_hex(parts[2], 16) && parts[2] != CALLER_SPAN, "{seen}");
    let b3_seen = str_of(&lines[1]["value"]).to_owned();
    assert!(b3_seen.starts_with(&format!("{TRACE}-")), "{b3_seen}");
    assert!(!b3_seen.contains(CALLER_SPAN), "{b3_seen}");
    assert_eq!(lines[2]["value"], serde_json::Value::Null, "{:?}", lines[2]);
    // The consumer-agent's span says the call came in over Dubbo.
    let spans = receiver.spans_until(|s| {
        s.iter().any(|v| {
            v["service"] == "consumer-agent"
                && v["parent_span_id"] == CALLER_SPAN
                && v["trace_id"] == TRACE
        })
    });
    let ca = spans
        .iter()
        .find(|v| v["service"] == "consumer-agent" && v["parent_span_id"] == CALLER_SPAN)
        .expect("the consumer-agent's span");
    assert_eq!(ca["attributes"]["mesh.front"], "dubbo", "{ca}");
}

impl Receiver {
    /// Every span received so far, after taking in whatever arrives within `d` (a
    /// span sent late shows up in the answer).
    fn spans_after(&self, d: Duration) -> Vec<serde_json::Value> {
        let end = Instant::now() + d;
        let mut got = self.seen.borrow_mut();
        while let Ok(v) = self
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            assert!(
                v.get("error").is_none(),
                "the receiver could not decode: {v}"
            );
            got.push(v);
        }
        got.clone()
    }
}

/// A retried call in the trace: the first provider-agent tried has its provider down
/// and answers UNAVAILABLE (the call did not start: safe to retry), the consumer-agent
/// retries on the second, which answers. The exported trace holds the consumer-agent's
/// span of the call (the first attempt carries it), a child span for the retry
/// (`mesh.attempt` 2), and the provider-agent's span under the retry's, timings nested;
/// the provider-agent that refused the call exports nothing for it.
#[test]
fn a_retry_is_a_child_span_with_the_provider_agents_span_under_it() {
    let receiver = Receiver::start("ok");
    let endpoint = receiver.endpoint();
    let registry = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", registry.path().display());
    let provider_agent = |provider: &str| {
        agent_provider::start(agent_provider::Config::parse_from([
            "provider-agent",
            "--listen",
            "127.0.0.1:0",
            "--provider",
            provider,
            "--registry",
            &url,
            "--service",
            SERVICE,
            "--dubbo-version",
            "2.0.2",
            "--otlp-endpoint",
            &endpoint,
        ]))
        .expect("provider-agent")
    };
    // Nothing listens at the first one's provider: it never registers, so the
    // consumer-agent gets both from a static list.
    let nowhere = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let down = provider_agent(&nowhere);
    let port = free_port().expect("a free port");
    let peer = start_peer(port);
    let up = provider_agent(&format!("127.0.0.1:{port}"));
    let list = format!("static://{},{}", down.agent_addr(), up.agent_addr());
    let consumer = consumer_with(
        &list,
        &[
            "--service",
            SERVICE,
            "--loops",
            "1",
            "--lb",
            "wrr",
            "--otlp-endpoint",
            &endpoint,
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let mesh = Mesh {
        consumer,
        provider_agent: up,
        _peer: peer,
        _registry: registry,
    };
    // Both provider-agents open (each answers PINGs; only the second has a provider).
    let open =
        |addr: SocketAddr| format!("consumer_upstream_up{{loop=\"0\",upstream=\"{addr}\"}} 1\n");
    let both = [
        open(down.agent_addr()),
        open(mesh.provider_agent.agent_addr()),
    ];
    let end = Instant::now() + Duration::from_secs(10);
    while !both.iter().all(|l| mesh.metrics().contains(l.as_str())) {
        assert!(
            Instant::now() < end,
            "both provider-agents never opened:\n{}",
            mesh.metrics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Traced calls, each its own trace, until one went to the provider-agent that is
    // down first (round-robin: the first or the second call).
    let unavailable = || down.metrics().responses(codec::agent::Status::Unavailable);
    let mut retried = None;
    for i in 0..20u32 {
        let trace = format!("{TRACE:.24}{i:08x}");
        let traceparent = format!("00-{trace}-{CALLER_SPAN}-01");
        let refused = unavailable();
        let before = reactor_admin::otlp::unix_nanos();
        let (status, seen) = mesh.attachment("traceparent", &[("traceparent", &traceparent)]);
        let after = reactor_admin::otlp::unix_nanos();
        assert_eq!(status, 200, "call {i}: {seen}");
        if unavailable() > refused {
            retried = Some((trace, str_of(&seen).to_owned(), before, after));
            break;
        }
    }
    let (trace, seen, before, after) =
        retried.expect("no call went to the provider-agent whose provider is down first");
    assert!(counter(&mesh.metrics(), "consumer_retries_total") >= 1);
    // What the provider saw: the trace, with the provider-agent's span as parent.
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!((parts[1], parts[3]), (trace.as_str(), "01"), "{seen}");
    let provider_parent = parts[2];

    let ours = |spans: &[serde_json::Value]| -> Vec<serde_json::Value> {
        spans
            .iter()
            .filter(|v| v["trace_id"] == trace.as_str())
            .cloned()
            .collect()
    };
    receiver.spans_until(|s| ours(s).len() >= 3);
    // The exporters send at least once a second: a span more would be in by then.
    let spans = ours(&receiver.spans_after(Duration::from_millis(2500)));
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let find = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        let found: Vec<&serde_json::Value> = spans.iter().filter(|v| f(v)).collect();
        assert_eq!(found.len(), 1, "{what}: {spans:#?}");
        found[0].clone()
    };
    let call = find("the consumer-agent's span of the call", &|v| {
        v["service"] == "consumer-agent" && v["parent_span_id"] == CALLER_SPAN
    });
    let attempt = find("the retry's span, a child of the call's", &|v| {
        v["service"] == "consumer-agent" && v["parent_span_id"] == call["span_id"]
    });
    let pa = find("the provider-agent's span, a child of the retry's", &|v| {
        v["service"] == "provider-agent" && v["parent_span_id"] == attempt["span_id"]
    });
    assert_eq!(pa["span_id"], provider_parent, "{pa}");
    assert_ne!(attempt["span_id"], call["span_id"]);

    // Kinds (3 CLIENT, 2 SERVER), statuses (1 OK), names, attributes.
    let served_by = mesh.provider_agent.agent_addr().to_string();
    for (span, kind) in [(&call, 3), (&attempt, 3), (&pa, 2)] {
        assert_eq!(span["kind"].as_i64(), Some(kind), "{span}");
        assert_eq!(span["status"].as_i64(), Some(1), "{span}");
        assert_eq!(span["name"], format!("{SERVICE}/attachment"), "{span}");
        assert_eq!(span["attributes"]["rpc.service"], SERVICE, "{span}");
        assert_eq!(span["attributes"]["mesh.status"], "ok", "{span}");
    }
    assert_eq!(call["attributes"]["mesh.retries"], 1, "{call}");
    assert_eq!(call["attributes"]["server.address"], served_by, "{call}");
    assert_eq!(attempt["attributes"]["mesh.attempt"], 2, "{attempt}");
    assert_eq!(
        attempt["attributes"]["server.address"], served_by,
        "{attempt}"
    );
    assert_eq!(attempt["attributes"]["mesh.front"], "http", "{attempt}");

    // Timings nested: the retry starts after the call (the first attempt came first)
    // and ends with it; the provider-agent's span inside the retry's.
    let t = |v: &serde_json::Value, k: &str| v[k].as_u64().expect("a time");
    assert!(before <= t(&call, "start"), "{call}");
    assert!(t(&call, "start") < t(&attempt, "start"), "{call} {attempt}");
    assert!(t(&attempt, "start") <= t(&pa, "start"), "{attempt} {pa}");
    assert!(t(&pa, "start") < t(&pa, "end"), "{pa}");
    assert!(t(&pa, "end") <= t(&attempt, "end"), "{pa} {attempt}");
    assert!(t(&attempt, "end") <= t(&call, "end"), "{attempt} {call}");
    assert!(t(&call, "end") <= after, "{call}");
    drop(mesh);
    down.stop();
}
