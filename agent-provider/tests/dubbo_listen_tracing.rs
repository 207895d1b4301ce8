//! Tracing through `provider-agent --dubbo-listen`: a Dubbo consumer's call carrying a
//! trace context in its attachments is continued with a provider-agent span (kind
//! SERVER, `mesh.front` `dubbo`), the provider receives the context naming that span as
//! its parent (the consumer's other attachments as they were), and the access log line
//! names the trace. A call without a context, the sample rate 0, passes as it came.
//!
//! The spans are decoded by someone else's decoder: `tests/peers/otlp_receiver.py`
//! (python3 and the PyPI `opentelemetry-proto`, which `.ci/setup` installs; without
//! them this test fails, it never skips).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use codec::dubbo::{self, Attachments, Request, Serialization};
use codec::hessian2;
use codec::Decoded;
use common::*;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// `tests/peers/otlp_receiver.py`: one JSON line per span received.
struct Receiver {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    fn start() -> Receiver {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers");
        let mut child = Command::new("python3")
            .arg("otlp_receiver.py")
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is required for this test: run `bash .ci/setup`");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("receiver output");
        assert!(
            line.starts_with("listening "),
            "the OTLP receiver did not start (is opentelemetry-proto installed? run `bash .ci/setup`): {line:?}"
        );
        let port = line["listening ".len()..].trim().parse().expect("port");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Receiver { child, port, lines }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    /// The spans received within `d`.
    fn spans_within(&self, d: Duration) -> Vec<serde_json::Value> {
        let end = Instant::now() + d;
        let mut got = Vec::new();
        while let Ok(v) = (self.lines).recv_timeout(end.saturating_duration_since(Instant::now())) {
            assert!(
                v.get("error").is_none(),
                "the receiver could not decode: {v}"
            );
            got.push(v);
        }
        got
    }
}

fn hash_request(id: i64, attachments: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut args = Vec::new();
    hessian2::write_string(&mut args, "hello");
    let mut out = Vec::new();
    dubbo::encode_request(
        &mut out,
        &Request {
            id,
            serialization: Serialization::Hessian2,
            two_way: true,
            dubbo_version: "2.0.2",
            path: SERVICE,
            version: Some("0.0.0"),
            group: None,
            method: "hash",
            descriptor: "Ljava/lang/String;",
            args: &args,
            attachments: Attachments::Standard(attachments),
        },
    )
    .expect("encode");
    out
}

/// Sends `req` and reads its answer: (status, body).
fn call(s: &mut TcpStream, req: &[u8]) -> (u8, Vec<u8>) {
    s.write_all(req).expect("send");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Decoded::Complete { msg, .. }) = dubbo::decode_frame(&buf) {
            return (msg.status(), msg.body.to_vec());
        }
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "provider-agent closed the Dubbo connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The attachments of a request frame the provider received.
fn attachments_of(frame: &[u8]) -> Vec<(String, String)> {
    let Ok(Decoded::Complete { msg, .. }) = dubbo::decode_frame(frame) else {
        panic!("not a frame")
    };
    let body = dubbo::decode_request_body(msg.serialization_id(), msg.body).expect("request body");
    assert_eq!(
        (body.path.as_str(), body.method.as_str()),
        (SERVICE, "hash")
    );
    assert_eq!(body.args, [hessian2::Value::String("hello".into())]);
    body.attachments
        .iter()
        .filter_map(|(k, v)| match v {
            hessian2::Value::String(s) => Some((k.clone(), s.to_string())),
            _ => None,
        })
        .collect()
}

#[track_caller]
fn wait_lines(path: &Path, count: usize) -> Vec<serde_json::Value> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= count || Instant::now() > end {
            assert_eq!(text.lines().count(), count, "lines in {path:?}:\n{text}");
            return text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_dubbo_consumers_trace_is_continued_with_a_provider_agent_span() {
    init_log();
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    let mut cfg = agent_config(
        provider.addr,
        agent_provider::config::SerializationArg::Hessian2,
    );
    cfg.dubbo_listen = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.otlp_endpoint = Some(receiver.endpoint());
    cfg.access_log = Some(log.to_str().expect("utf-8 path").to_owned());
    let running = agent_provider::start(cfg).expect("start provider-agent");
    let m = running.metrics().clone();
    test_support::wait::assert_eventually("provider connection", SOON, || m.provider_up());

    let mut d = TcpStream::connect(running.dubbo_addr().expect("dubbo listener")).expect("connect");
    d.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let consumer = d.local_addr().expect("local addr");
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let traced = hash_request(
        7,
        &[
            ("traceparent", Some(&traceparent)),
            ("tracestate", Some("vendor=1")),
            ("x-custom", Some("kept")),
        ],
    );
    let (status, body) = call(&mut d, &traced);
    assert_eq!(status, dubbo::status::OK, "{body:?}");
    // Without a context (the sample rate is 0): as it came.
    let untraced = hash_request(8, &[("x-custom", Some("also kept"))]);
    assert_eq!(call(&mut d, &untraced).0, dubbo::status::OK);

    // One span, the provider-agent's, a child of the consumer's.
    let spans = receiver.spans_within(Duration::from_secs(4));
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span["service"], "provider-agent");
    assert_eq!(span["trace_id"], CALLER_TRACE);
    assert_eq!(span["parent_span_id"], CALLER_SPAN);
    assert_eq!(span["kind"], 2, "SPAN_KIND_SERVER");
    assert_eq!(span["name"], format!("{SERVICE}/hash").as_str());
    let attrs = &span["attributes"];
    assert_eq!(attrs["mesh.front"], "dubbo");
    assert_eq!(attrs["rpc.method"], "hash");
    assert_eq!(attrs["rpc.service"], SERVICE);
    assert_eq!(attrs["mesh.status"], "ok");
    assert_eq!(attrs["client.address"], consumer.to_string().as_str());
    assert_eq!(attrs["server.address"], provider.addr.to_string().as_str());
    assert!(span["start"].as_u64() <= span["end"].as_u64());
    let ours = span["span_id"].as_str().expect("span id").to_owned();

    // The provider got our context (in the caller's format, its tracestate kept) and
    // the consumer's other attachments; the untraced call got what was sent.
    let received = provider.received.lock().expect("received").clone();
    assert_eq!(received.len(), 2);
    let first = attachments_of(&received[0]);
    let get = |a: &[(String, String)], k: &str| {
        a.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        get(&first, "traceparent"),
        format!("00-{CALLER_TRACE}-{ours}-01")
    );
    assert_eq!(get(&first, "tracestate"), "vendor=1");
    assert_eq!(get(&first, "x-custom"), "kept");
    assert_eq!(get(&first, "path"), SERVICE);
    assert_eq!(
        first.iter().filter(|(k, _)| k == "traceparent").count(),
        1,
        "{first:?}"
    );
    let second = attachments_of(&received[1]);
    assert_eq!(get(&second, "x-custom"), "also kept");
    assert!(second.iter().all(|(k, _)| k != "traceparent"), "{second:?}");
    assert_eq!(received[1][16..], untraced[16..], "relayed byte for byte");

    // The access log names the trace of the traced call only.
    let lines = wait_lines(&log, 2);
    assert_eq!(lines[0]["trace_id"], CALLER_TRACE);
    assert!(lines[1]["trace_id"].is_null(), "{}", lines[1]);
    for l in &lines {
        assert_eq!(l["front"], "dubbo");
        assert_eq!(l["outcome"], "ok");
    }
    running.stop();
    provider.kill();
}
