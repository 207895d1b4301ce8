//! Authorization end to end: a provider-agent with `--authz FILE` behind a
//! consumer-agent, both real, in front of a mock Dubbo provider (std threads, answering
//! any method with the hash of its string argument).
//!
//! HTTP and Dubbo consumer -> consumer-agent -> provider-agent (--authz) -> provider
//! Dubbo consumer -> provider-agent (--dubbo-listen, --authz) -> provider
//!
//! A call the policy refuses is 403 over HTTP (the agent status FORBIDDEN, never
//! retried) and SERVICE_ERROR (70) over Dubbo, on either agent's Dubbo front-end; the
//! policy file rewritten while the agents run takes effect without a restart. Every
//! peer is anonymous here (no TLS yet).

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use codec::dubbo::{self, status, Attachments, Outcome, Request, Serialization};
use codec::hessian2::{self, Value};
use codec::java::string_hash_code;
use codec::Decoded;
use util::*;

const SERVICE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";

/// Anonymous peers may call `hash` only.
const HASH_ONLY: &str = r#"{"rules": [
  {"from": ["anonymous"], "services": ["com.alibaba.dubbo.performance.demo.provider.IHelloService"], "methods": ["hash"]}
]}"#;

/// Anonymous peers may call `hash` and `echo`.
const HASH_AND_ECHO: &str = r#"{"rules": [
  {"from": ["anonymous"], "services": ["com.alibaba.dubbo.performance.demo.provider.IHelloService"], "methods": ["hash", "echo"]}
]}"#;

/// Replaces the policy file as a deployment should: write another, rename it over.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write policy");
    std::fs::rename(&tmp, path).expect("rename policy");
}

/// POSTs a JSON invocation of SERVICE.`method`("x"): (status, content type, body).
fn http_json(addr: SocketAddr, method: &str) -> Answer {
    let body = format!(
        r#"{{"interface":"{SERVICE}","method":"{method}","parameterTypes":["java.lang.String"],"arguments":["x"]}}"#
    );
    let raw = format!(
        "POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, raw.as_bytes(), 1).remove(0)
}

/// POSTs the race's form call of SERVICE.`method`("x").
fn http_form(addr: SocketAddr, method: &str) -> Answer {
    let body = race_body("x").replace("method=hash", &format!("method={method}"));
    let raw = format!(
        "POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, raw.as_bytes(), 1).remove(0)
}

/// Calls SERVICE.`method`("x") over Dubbo on a fresh connection to `addr`: (status,
/// outcome).
fn dubbo_call(addr: SocketAddr, method: &str) -> (u8, Outcome) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = Vec::new();
    dubbo::encode_request(
        &mut out,
        &Request {
            id: 42,
            serialization: Serialization::Hessian2,
            two_way: true,
            dubbo_version: "2.0.2",
            path: SERVICE,
            version: Some("0.0.0"),
            group: None,
            method,
            descriptor: "Ljava/lang/String;",
            args: &{
                let mut a = Vec::new();
                hessian2::write_string(&mut a, "x");
                a
            },
            attachments: Attachments::Standard(&[]),
        },
    )
    .expect("encode");
    s.write_all(&out).expect("send");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Decoded::Complete { msg, .. }) = dubbo::decode_frame(&buf) {
            assert_eq!(msg.id(), 42);
            let body = dubbo::decode_response_body(msg.serialization_id(), msg.status(), msg.body)
                .expect("a response body");
            return (msg.status(), body.outcome);
        }
        let n = s.read(&mut chunk).expect("a Dubbo answer in time");
        assert!(n > 0, "the agent closed the Dubbo connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The value of a metric line `name value` in `text`.
fn metric(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .to_owned()
}

/// The mesh under test: the mock provider, a provider-agent with `--authz` (and
/// `--dubbo-listen`), a consumer-agent (HTTP and `--dubbo-listen`) in front of it.
struct Mesh {
    policy: std::path::PathBuf,
    provider_calls: Arc<AtomicUsize>,
    pa: agent_provider::Running,
    ca: agent_consumer::Running,
    _dir: tempfile::TempDir,
}

impl Mesh {
    /// Starts it with `policy` as the policy file's text.
    fn start(policy_text: &str) -> Mesh {
        let _ = env_logger::builder().is_test(true).try_init();
        let (provider, provider_calls) = mock_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = dir.path().join("authz.json");
        replace(&policy, policy_text);
        let registry = format!("file://{}", dir.path().join("registry").display());
        let pa = agent_provider::start(agent_provider::Config::parse_from([
            "provider-agent",
            "--listen",
            "127.0.0.1:0",
            "--dubbo-listen",
            "127.0.0.1:0",
            "--provider",
            &provider.to_string(),
            "--service",
            SERVICE,
            "--registry",
            &registry,
            "--authz",
            policy.to_str().expect("a UTF-8 path"),
        ]))
        .expect("provider-agent");
        let pm = pa.metrics().clone();
        let up = Instant::now() + Duration::from_secs(5);
        while !pm.provider_up() {
            assert!(
                Instant::now() < up,
                "the provider-agent never reached the provider"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let ca = consumer(&[pa.agent_addr()], &["--dubbo-listen", "127.0.0.1:0"]);
        wait_ready(&ca);
        Mesh {
            policy,
            provider_calls,
            pa,
            ca,
            _dir: dir,
        }
    }

    fn stop(self) {
        self.ca.stop();
        self.pa.stop();
    }
}

#[test]
fn the_policy_decides_end_to_end_and_follows_its_file() {
    let mesh = Mesh::start(HASH_ONLY);
    let (policy, provider_calls) = (&mesh.policy, &mesh.provider_calls);
    let (pa, ca) = (&mesh.pa, &mesh.ca);
    let pm = pa.metrics().clone();
    let http = ca.http_addr();
    let ca_dubbo = ca.dubbo_addr().expect("the consumer-agent's Dubbo address");
    let pa_dubbo = pa.dubbo_addr().expect("the provider-agent's Dubbo address");
    let hash_x = string_hash_code("x");
    let refusal = format!("forbidden: anonymous peer may not call {SERVICE}.echo");

    // HTTP: hash allowed, echo refused: 403 with the error body of its kind.
    let a = http_form(http, "hash");
    assert_eq!(
        (a.status, a.body.as_str()),
        (200, hash_x.to_string().as_str())
    );
    let a = http_json(http, "hash");
    assert_eq!((a.status, a.body), (200, hash_x.to_string()));
    let a = http_json(http, "echo");
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(a.content_type, "application/json");
    assert_eq!(
        a.body,
        format!(r#"{{"error":"forbidden","message":"{refusal}","status":403}}"#)
    );
    let a = http_form(http, "echo");
    assert_eq!(
        (a.status, a.body.as_str()),
        (403, refusal.as_str()),
        "{a:?}"
    );
    assert!(a.content_type.starts_with("text/plain"), "{a:?}");

    // Dubbo through the consumer-agent, and straight to the provider-agent:
    // SERVICE_ERROR with the same message.
    for addr in [ca_dubbo, pa_dubbo] {
        match dubbo_call(addr, "echo") {
            (status::SERVICE_ERROR, Outcome::Error { message, .. }) => {
                assert_eq!(message, refusal, "via {addr}")
            }
            other => panic!("via {addr}: not refused: {other:?}"),
        }
        match dubbo_call(addr, "hash") {
            (status::OK, Outcome::Value(Value::Int(h))) => assert_eq!(h, hash_x),
            other => panic!("via {addr}: not allowed: {other:?}"),
        }
    }
    assert_eq!(
        provider_calls.load(Ordering::SeqCst),
        4,
        "only allowed calls reach the provider"
    );

    // Counted on both sides, and never retried.
    let ct = ca.metrics().render();
    assert_eq!(
        metric(&ct, "consumer_responses_total{outcome=\"forbidden\"}"),
        "3"
    );
    assert_eq!(metric(&ct, "consumer_responses_total{outcome=\"ok\"}"), "3");
    assert_eq!(metric(&ct, "consumer_retries_total"), "0");
    let pt = pm.render();
    assert_eq!(metric(&pt, "provider_agent_forbidden_total"), "4");
    assert_eq!(
        metric(&pt, "provider_agent_errors_total{kind=\"forbidden\"}"),
        "3"
    );
    assert_eq!(
        metric(&pt, "provider_agent_dubbo_errors_total{kind=\"forbidden\"}"),
        "1"
    );
    assert_eq!(metric(&pt, "provider_agent_authz_rules"), "1");

    // Rewritten while running: echo is allowed within about two seconds (one check of
    // the file a second), no restart.
    let rewritten = Instant::now();
    replace(policy, HASH_AND_ECHO);
    loop {
        let a = http_json(http, "echo");
        if a.status == 200 {
            assert_eq!(a.body, hash_x.to_string());
            break;
        }
        assert_eq!(a.status, 403, "{a:?}");
        assert!(
            rewritten.elapsed() < Duration::from_secs(5),
            "the rewritten policy never took effect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = rewritten.elapsed();
    eprintln!("rewritten policy in force after {took:?}");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    for addr in [ca_dubbo, pa_dubbo] {
        assert_eq!(dubbo_call(addr, "echo").0, status::OK, "via {addr}");
    }
    assert_eq!(
        metric(
            &pm.render(),
            "provider_agent_authz_reloads_total{result=\"ok\"}"
        ),
        "1"
    );

    // A broken rewrite: the reload error is counted, the policy in force stays.
    replace(
        policy,
        r#"{"rules": [{"from": ["anonymous"], "services": ["#,
    );
    let broken = Instant::now();
    while pm.authz_reloads(false) == 0 {
        assert!(
            broken.elapsed() < Duration::from_secs(5),
            "the broken rewrite was never noticed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pt = pm.render();
    assert_eq!(
        metric(&pt, "provider_agent_authz_reloads_total{result=\"error\"}"),
        "1"
    );
    assert_eq!(metric(&pt, "provider_agent_authz_rules"), "1");
    assert_eq!(http_json(http, "echo").status, 200);
    assert_eq!(http_form(http, "hash").status, 200);

    mesh.stop();
}

/// Runs `node client.js addr` (`tests/peers`, the npm sofa-rpc-node Dubbo consumer)
/// with `steps`; its JSON lines once it exits 0.
fn run_client(addr: SocketAddr, steps: &serde_json::Value) -> Vec<serde_json::Value> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers");
    assert!(
        dir.join("node_modules/sofa-rpc-node").is_dir(),
        "the npm Dubbo peer is not installed: run `bash .ci/setup` (npm install in tests/peers)"
    );
    let mut child = std::process::Command::new("node")
        .arg("client.js")
        .arg(addr.to_string())
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node is required for this test: run `bash .ci/setup`");
    let mut input = child.stdin.take().expect("stdin");
    let text = steps.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().expect("client output");
    writer.join().expect("stdin writer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client.js against {addr} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Someone else's Dubbo consumer (sofa-rpc-node) gets the refusal as a failed call with
/// its message, through the consumer-agent and straight from the provider-agent.
#[test]
fn a_real_dubbo_consumer_sees_a_refusal_as_a_failed_call() {
    let mesh = Mesh::start(HASH_ONLY);
    let call = |method: &str| serde_json::json!({ "service": SERVICE, "version": "0.0.0", "group": "", "method": method, "args": ["x"] });
    let steps = serde_json::json!([call("hash"), call("echo")]);
    let refusal = format!("forbidden: anonymous peer may not call {SERVICE}.echo");
    let ca_dubbo = mesh
        .ca
        .dubbo_addr()
        .expect("the consumer-agent's Dubbo address");
    let pa_dubbo = mesh
        .pa
        .dubbo_addr()
        .expect("the provider-agent's Dubbo address");
    for addr in [ca_dubbo, pa_dubbo] {
        let got = run_client(addr, &steps);
        assert_eq!(got.len(), 2, "via {addr}: {got:?}");
        assert_eq!(
            got[0]["status"],
            serde_json::json!(20),
            "via {addr}: {}",
            got[0]
        );
        assert_eq!(got[0]["value"], serde_json::json!(string_hash_code("x")));
        assert_eq!(
            got[1]["status"],
            serde_json::json!(70),
            "via {addr}: {}",
            got[1]
        );
        assert_eq!(
            got[1]["value"],
            serde_json::Value::Null,
            "via {addr}: {}",
            got[1]
        );
        let message = got[1]["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&refusal), "via {addr}: {}", got[1]);
    }
    assert_eq!(mesh.provider_calls.load(Ordering::SeqCst), 2);
    mesh.stop();
}
