//! `provider-agent --authz FILE`: who may call what, on agent connections and on the
//! Dubbo front-end (`--dubbo-listen`), reloaded while running.
//!
//! Real sockets on loopback, the in-process mock provider of `common` (it answers any
//! method with the hash of its string argument). Every peer is anonymous here (no TLS
//! yet), so the policies name `anonymous`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use codec::agent::{self, Status};
use codec::dubbo::{self, status, Attachments, Outcome, Request, Serialization};
use codec::hessian2::{self, Value};
use codec::java::string_hash_code;
use codec::Decoded;
use common::{agent_config, init_log, Client, MockProvider, SERVICE, SOON};
use test_support::wait::assert_eventually;

/// Only `hash` of SERVICE, for anonymous peers.
const HASH_ONLY: &str = r#"{"rules": [
  {"name": "race", "from": ["anonymous"], "services": ["com.alibaba.dubbo.performance.demo.provider.IHelloService"], "methods": ["hash"]}
]}"#;

/// Every method of SERVICE, for anonymous peers.
const ALL_METHODS: &str = r#"{"rules": [
  {"from": ["anonymous"], "services": ["com.alibaba.dubbo.performance.demo.provider.IHelloService"], "methods": ["*"]}
]}"#;

/// Replaces the policy file as a deployment should: write another, rename it over.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write policy");
    std::fs::rename(&tmp, path).expect("rename policy");
}

/// A provider-agent with `--authz path` (and `--dubbo-listen`, 2 loops) in front of
/// `provider`.
fn agent(provider: SocketAddr, path: &Path) -> agent_provider::Running {
    let mut cfg = agent_config(provider, agent_provider::config::SerializationArg::Hessian2);
    cfg.authz = Some(path.to_owned());
    cfg.dubbo_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.loops = 2;
    let running = agent_provider::start(cfg).expect("provider-agent");
    let m = running.metrics().clone();
    assert_eventually("provider connection", SOON, || m.provider_up());
    running
}

fn string_arg(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    hessian2::write_string(&mut out, s);
    out
}

/// DEFINEs `call_id` = SERVICE.`method`(String).
fn define(c: &mut Client, call_id: u32, method: &str) {
    let mut out = Vec::new();
    common::define_method(&mut out, call_id, method);
    c.stream.write_all(&out).unwrap();
}

/// Calls `call_id` with one string argument.
fn call(c: &mut Client, id: u64, call_id: u32, arg: &str) -> common::Resp {
    let mut out = Vec::new();
    agent::encode_request(&mut out, id, call_id, 5000, &[], &string_arg(arg)).unwrap();
    c.stream.write_all(&out).unwrap();
    c.read()
}

/// A Dubbo request of SERVICE.`method`("x"), as Java writes one.
fn dubbo_request(id: i64, method: &str) -> Vec<u8> {
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
            method,
            descriptor: "Ljava/lang/String;",
            args: &string_arg("x"),
            attachments: Attachments::Standard(&[]),
        },
    )
    .unwrap();
    out
}

/// Sends a Dubbo call on `s` and reads its answer: (id, status, outcome).
fn dubbo_call(s: &mut TcpStream, id: i64, method: &str) -> (i64, u8, Outcome) {
    s.write_all(&dubbo_request(id, method)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Decoded::Complete { msg, .. }) = dubbo::decode_frame(&buf) {
            let body = dubbo::decode_response_body(msg.serialization_id(), msg.status(), msg.body)
                .expect("a response body");
            return (msg.id(), msg.status(), body.outcome);
        }
        let n = s.read(&mut chunk).expect("read a Dubbo answer");
        assert!(n > 0, "the provider-agent closed the Dubbo connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn dubbo_conn(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn forbidden_echo() -> String {
    format!("forbidden: anonymous peer may not call {SERVICE}.echo")
}

#[test]
fn a_policy_refuses_what_it_does_not_allow_and_follows_the_file() {
    init_log();
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authz.json");
    replace(&path, HASH_ONLY);
    let running = agent(provider.addr, &path);
    let m = running.metrics().clone();
    let hash_x = string_hash_code("x");

    // Agent protocol: hash is allowed, echo is refused before the provider sees it.
    let mut c = Client::connect(running.agent_addr());
    define(&mut c, 1, "hash");
    define(&mut c, 2, "echo");
    assert_eq!(call(&mut c, 10, 1, "x").int(), hash_x);
    let r = call(&mut c, 11, 2, "x");
    assert_eq!((r.id, r.status), (11, Status::Forbidden));
    assert_eq!(r.text(), forbidden_echo());
    // Remembered per call id, and decided again when the id names another call.
    assert_eq!(call(&mut c, 12, 2, "x").status, Status::Forbidden);
    define(&mut c, 2, "hash");
    assert_eq!(call(&mut c, 13, 2, "x").int(), hash_x);
    define(&mut c, 1, "echo");
    assert_eq!(call(&mut c, 14, 1, "x").status, Status::Forbidden);
    // A one-way call refused gets no answer (the next answer is the next call's).
    let mut out = Vec::new();
    let head = agent::RequestHead {
        one_way: true,
        ..agent::RequestHead::new(15, 1)
    };
    let mark = agent::begin_request(&mut out, &head).unwrap();
    out.extend_from_slice(&string_arg("x"));
    agent::finish(&mut out, mark).unwrap();
    c.stream.write_all(&out).unwrap();
    assert_eq!(call(&mut c, 16, 2, "x").id, 16);
    let seen = provider.received.lock().unwrap().len();
    assert_eq!(seen, 3, "only the allowed calls reached the provider");

    // The Dubbo front-end: SERVICE_ERROR (70) with the same message.
    let mut d = dubbo_conn(running.dubbo_addr().unwrap());
    match dubbo_call(&mut d, 7, "echo") {
        (7, status::SERVICE_ERROR, Outcome::Error { message, .. }) => {
            assert_eq!(message, forbidden_echo())
        }
        other => panic!("not refused: {other:?}"),
    }
    match dubbo_call(&mut d, 8, "hash") {
        (8, status::OK, Outcome::Value(Value::Int(h))) => assert_eq!(h, hash_x),
        other => panic!("not allowed: {other:?}"),
    }
    assert_eq!(provider.received.lock().unwrap().len(), 4);

    // Counted: agent calls 4 refused (the one-way one too), Dubbo calls 1.
    assert_eq!(m.forbidden(), 5);
    assert_eq!(m.responses(Status::Forbidden), 4);
    assert_eq!(m.dubbo_responses(Status::Forbidden), 1);
    let text = m.render();
    for line in [
        "provider_agent_forbidden_total 5\n",
        "provider_agent_errors_total{kind=\"forbidden\"} 4\n",
        "provider_agent_dubbo_errors_total{kind=\"forbidden\"} 1\n",
        "provider_agent_authz_enabled 1\n",
        "provider_agent_authz_rules 1\n",
        "provider_agent_authz_reloads_total{result=\"ok\"} 0\n",
        "provider_agent_authz_reloads_total{result=\"error\"} 0\n",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }

    // Rewritten while running: echo allowed, on every loop, without a restart. Several
    // connections, so both loops answer.
    let mut clients: Vec<Client> = (0..4)
        .map(|_| {
            let mut c = Client::connect(running.agent_addr());
            define(&mut c, 1, "echo");
            c
        })
        .collect();
    for c in &mut clients {
        assert_eq!(call(c, 1, 1, "x").status, Status::Forbidden);
    }
    let rewritten = Instant::now();
    replace(
        &path,
        &ALL_METHODS.replace("\"methods\"", "\"name\": \"all\", \"methods\""),
    );
    assert_eventually("the rewritten policy in force", SOON, || {
        clients
            .iter_mut()
            .all(|c| call(c, 2, 1, "x").status == Status::Ok)
    });
    let took = rewritten.elapsed();
    eprintln!("rewritten policy in force after {took:?}");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert_eq!(
        call(&mut c, 20, 1, "x").int(),
        hash_x,
        "cached denial dropped"
    );
    match dubbo_call(&mut d, 9, "echo") {
        (9, status::OK, Outcome::Value(Value::Int(h))) => assert_eq!(h, hash_x),
        other => panic!("not allowed after the reload: {other:?}"),
    }
    assert_eq!(m.authz_reloads(true), 1);

    // A broken rewrite: logged and counted, the policy in force stays.
    replace(&path, "{\"rules\": [ {\"from\": [\"anonymous\"]");
    assert_eventually("the reload error counted", SOON, || {
        m.authz_reloads(false) == 1
    });
    assert_eq!(call(&mut c, 21, 1, "x").int(), hash_x);
    assert!(m
        .render()
        .contains("provider_agent_authz_reloads_total{result=\"error\"} 1\n"));
    // Reported once, not at every check.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(m.authz_reloads(false), 1);

    // A file rewritten in place (not renamed) is seen too; an empty rule list refuses
    // everything.
    std::fs::write(&path, r#"{"rules": []}"#).unwrap();
    assert_eventually("the empty policy in force", SOON, || {
        call(&mut c, 22, 1, "x").status == Status::Forbidden
    });
    assert_eq!(call(&mut c, 23, 2, "x").status, Status::Forbidden);
    let r = call(&mut c, 24, 2, "x");
    assert_eq!(
        r.text(),
        format!("forbidden: anonymous peer may not call {SERVICE}.hash")
    );
    assert!(m.render().contains("provider_agent_authz_rules 0\n"));
    assert_eq!(m.authz_reloads(true), 2);

    running.stop();
    provider.kill();
}

#[test]
fn without_a_policy_every_peer_may_call() {
    init_log();
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    let mut cfg = agent_config(
        provider.addr,
        agent_provider::config::SerializationArg::Hessian2,
    );
    cfg.dubbo_listen = Some("127.0.0.1:0".parse().unwrap());
    let running = agent_provider::start(cfg).unwrap();
    let m = running.metrics().clone();
    assert_eventually("provider connection", SOON, || m.provider_up());
    let mut c = Client::connect(running.agent_addr());
    define(&mut c, 1, "echo");
    assert_eq!(call(&mut c, 1, 1, "x").int(), string_hash_code("x"));
    let mut d = dubbo_conn(running.dubbo_addr().unwrap());
    assert_eq!(dubbo_call(&mut d, 1, "anything").1, status::OK);
    let text = m.render();
    assert!(text.contains("provider_agent_authz_enabled 0\n"), "{text}");
    assert!(
        text.contains("provider_agent_forbidden_total 0\n"),
        "{text}"
    );
    running.stop();
    provider.kill();
}

#[test]
fn a_policy_that_does_not_parse_is_a_start_error() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authz.json");
    let start = |path: &Path| {
        let mut cfg = agent_config(
            "127.0.0.1:9".parse().unwrap(),
            agent_provider::config::SerializationArg::Hessian2,
        );
        cfg.authz = Some(path.to_owned());
        match agent_provider::start(cfg) {
            Ok(_) => panic!("started with {}", path.display()),
            Err(e) => e.to_string(),
        }
    };
    let e = start(&path);
    assert!(
        e.starts_with("--authz: ") && e.contains("authz.json") && e.contains("No such file"),
        "{e}"
    );
    std::fs::write(
        &path,
        r#"{"rules": [{"from": ["anonymous"], "services": ["a.B"], "methods": ["*"]},
                      {"from": ["cart"], "services": ["a.B"], "methods": ["*"]}]}"#,
    )
    .unwrap();
    let e = start(&path);
    assert!(
        e.contains("authz.json: rule 2: \"from\" entry 1 \"cart\": expected a URI identity"),
        "{e}"
    );
    std::fs::write(&path, "{\"rules\": [\n  {\"from\": [\"anonymous\"]\n").unwrap();
    let e = start(&path);
    assert!(e.contains("not JSON") && e.contains("line 3"), "{e}");
}
