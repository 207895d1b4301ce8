//! `--access-log` and the per-method metrics of the provider-agent: one JSON line per
//! call of a consumer-agent (front `agent`) and of a Dubbo consumer (`--dubbo-listen`,
//! front `dubbo`), with every field; and a flood of distinct method names stays within
//! `--max-method-series`, counted under `method="other"`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use codec::agent::{self, Status};
use codec::dubbo::{self, Attachments, Request, Serialization};
use codec::hessian2;
use codec::Decoded;
use common::*;

const FIELDS: [&str; 16] = [
    "time",
    "caller",
    "caller_identity",
    "front",
    "service",
    "method",
    "version",
    "group",
    "trace_id",
    "upstream",
    "retries",
    "status",
    "outcome",
    "latency_us",
    "bytes_in",
    "bytes_out",
];

/// This process's resident set, from /proc (the agent runs in it).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[track_caller]
fn wait_lines(path: &Path, count: usize) -> Vec<serde_json::Value> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let n = text.lines().count();
        if n >= count || Instant::now() > end {
            assert_eq!(n, count, "lines in {path:?}:\n{text}");
            return text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A provider-agent in front of `provider`, with `extra` settings.
fn agent(
    provider: SocketAddr,
    extra: impl FnOnce(&mut agent_provider::Config),
) -> agent_provider::Running {
    init_log();
    let mut cfg = agent_config(provider, agent_provider::config::SerializationArg::Hessian2);
    extra(&mut cfg);
    let agent = agent_provider::start(cfg).expect("start provider-agent");
    let m = agent.metrics().clone();
    test_support::wait::assert_eventually("provider connection", SOON, || m.provider_up());
    agent
}

fn dubbo_hash(id: i64, arg: &str) -> Vec<u8> {
    let mut args = Vec::new();
    hessian2::write_string(&mut args, arg);
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
            attachments: Attachments::Standard(&[]),
        },
    )
    .expect("encode");
    out
}

fn dubbo_status(s: &mut TcpStream, req: &[u8]) -> u8 {
    s.write_all(req).expect("send");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Decoded::Complete { msg, .. }) = dubbo::decode_frame(&buf) {
            return msg.status();
        }
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "provider-agent closed the Dubbo connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn agent_and_dubbo_calls_are_logged_as_json_lines_with_every_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    let log = path.to_str().expect("utf-8 path").to_owned();
    let running = agent(provider.addr, |c| {
        c.dubbo_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.access_log = Some(log);
    });
    let mut c = Client::connect(running.agent_addr());
    let agent_local = c.stream.local_addr().expect("local addr");
    c.define_hash();
    for id in 1..=4 {
        assert_eq!(c.call_hash(id, "hello").int(), 99162322);
    }
    // Refused at once: an id never defined.
    let mut args = Vec::new();
    hessian2::write_string(&mut args, "x");
    let mut req = Vec::new();
    agent::encode_request(&mut req, 9, 42, 1000, &[], &args).expect("encode");
    c.stream.write_all(&req).expect("send");
    assert_eq!(c.read().status, Status::BadRequest);
    let mut d = TcpStream::connect(running.dubbo_addr().expect("dubbo listener")).expect("connect");
    d.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let dubbo_local = d.local_addr().expect("local addr");
    for id in 0..2 {
        assert_eq!(
            dubbo_status(&mut d, &dubbo_hash(id, "hello")),
            dubbo::status::OK
        );
    }
    let parsed = wait_lines(&path, 7);
    for v in &parsed {
        for f in FIELDS {
            assert!(v.get(f).is_some(), "no {f} in {v}");
        }
        assert!(v["trace_id"].is_null(), "{v}");
        // Plaintext: no verified identity.
        assert!(v["caller_identity"].is_null(), "{v}");
        assert_eq!(v["upstream"], provider.addr.to_string().as_str(), "{v}");
        assert_eq!(v["retries"].as_u64(), Some(0));
        assert!(v["bytes_in"].as_u64().expect("bytes_in") > 0, "{v}");
        assert!(v["bytes_out"].as_u64().expect("bytes_out") > 0, "{v}");
        assert!(v["time"].as_str().expect("time").ends_with('Z'));
    }
    let front = |f: &str| {
        parsed
            .iter()
            .filter(|v| v["front"] == f)
            .collect::<Vec<_>>()
    };
    let (agent_lines, dubbo_lines) = (front("agent"), front("dubbo"));
    assert_eq!((agent_lines.len(), dubbo_lines.len()), (5, 2));
    for v in &agent_lines {
        assert_eq!(v["caller"], agent_local.to_string().as_str());
    }
    let ok: Vec<_> = agent_lines
        .iter()
        .filter(|v| v["outcome"] == "ok")
        .collect();
    assert_eq!(ok.len(), 4);
    for v in &ok {
        assert_eq!(v["service"], SERVICE);
        assert_eq!(v["method"], "hash");
        assert_eq!(v["status"].as_u64(), Some(Status::Ok as u64));
        assert!(v["latency_us"].as_u64().expect("latency") > 0);
    }
    let refused: Vec<_> = agent_lines
        .iter()
        .filter(|v| v["outcome"] == "bad_request")
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["service"], "");
    for v in &dubbo_lines {
        assert_eq!(v["caller"], dubbo_local.to_string().as_str());
        assert_eq!(v["service"], SERVICE);
        assert_eq!(v["method"], "hash");
        assert_eq!(v["version"], "0.0.0");
        assert_eq!(v["status"].as_u64(), Some(u64::from(dubbo::status::OK)));
        assert_eq!(v["outcome"], "ok");
    }
    let text = running.metrics().render();
    assert!(
        text.contains(&format!(
            "provider_agent_method_requests_total{{service=\"{SERVICE}\",method=\"hash\"}} 6\n"
        )),
        "{text}"
    );
    assert!(text.contains(&format!(
        "provider_agent_method_latency_seconds_count{{service=\"{SERVICE}\",method=\"hash\"}} 6\n"
    )));
    assert!(text.contains("provider_agent_access_log_dropped_total 0\n"));
    running.stop();
    provider.kill();
}

/// A provider answering every call `1` at once, all the answers to one read in one
/// write (the mock provider's write per answer, with Nagle and delayed ACKs, takes
/// 40 ms a batch).
fn fast_provider() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind")
}

fn serve_fast(listener: TcpListener) {
    let (mut s, _) = listener.accept().expect("the agent's provider connection");
    s.set_nodelay(true).expect("nodelay");
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 65536];
        let one = hessian2::Value::Int(1);
        loop {
            let n = match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut out = Vec::new();
            let mut pos = 0;
            while let Ok(Decoded::Complete { msg, consumed }) = dubbo::decode_frame(&buf[pos..]) {
                pos += consumed;
                if msg.is_event() {
                    if msg.is_request() && msg.is_two_way() {
                        dubbo::encode_heartbeat_reply(&mut out, msg.id());
                    }
                    continue;
                }
                let reply = dubbo::Reply::Value(&one);
                dubbo::encode_response(
                    &mut out,
                    msg.id(),
                    Serialization::Hessian2,
                    20,
                    &reply,
                    &[],
                )
                .expect("encode");
            }
            buf.drain(..pos);
            if !out.is_empty() && s.write_all(&out).is_err() {
                return;
            }
        }
    });
}

#[test]
fn a_hundred_thousand_method_names_stay_within_the_series_bound() {
    const NAMES: usize = 100_000;
    const MAX: usize = 32;
    const IDS: u32 = 128;
    let provider = fast_provider();
    let addr = provider.local_addr().expect("addr");
    let accept = std::thread::spawn(move || serve_fast(provider));
    let running = agent(addr, |c| {
        c.max_method_series = MAX as u32;
        c.max_inflight = 1024;
    });
    accept.join().expect("provider");
    let mut c = Client::connect(running.agent_addr());
    let mut args = Vec::new();
    hessian2::write_string(&mut args, "x");
    // Each name gets one of a few call ids (redefined, as a consumer-agent does once
    // its table is full), and one call.
    let mut burst = Vec::new();
    let mut warm_rss = 0;
    for i in 0..NAMES {
        if i == 10_000 {
            warm_rss = rss_kib();
        }
        let id = (i as u32) % IDS;
        define_method(&mut burst, id, &format!("m{i}"));
        agent::encode_request(&mut burst, i as u64, id, 5000, &[], &args).expect("request");
        if id == IDS - 1 || i == NAMES - 1 {
            c.stream.write_all(&burst).expect("send");
            burst.clear();
            for _ in 0..=(i as u32 % IDS) {
                assert_eq!(c.read().status, Status::Ok);
            }
        }
    }
    let grown = rss_kib().saturating_sub(warm_rss);
    assert!(
        grown < 4 * 1024,
        "RSS grew by {grown} KiB over 90,000 new names"
    );
    let methods = running.metrics().methods();
    assert_eq!(methods.series(), MAX);
    assert_eq!(methods.other_requests(), (NAMES - MAX) as u64);
    let text = running.metrics().render();
    assert!(text.contains(&format!(
        "provider_agent_method_requests_total{{service=\"other\",method=\"other\"}} {}\n",
        NAMES - MAX
    )));
    assert!(text.contains(&format!("provider_agent_method_series {MAX}\n")));
    running.stop();
}

#[test]
fn lines_name_the_method_called_when_an_id_is_redefined() {
    // Ids defined again and again, as a consumer-agent does once its table is full:
    // each line names what its id named when the call came.
    const CALLS: usize = 300;
    const IDS: u32 = 5;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let log = path.to_str().expect("utf-8 path").to_owned();
    let provider = fast_provider();
    let addr = provider.local_addr().expect("addr");
    let accept = std::thread::spawn(move || serve_fast(provider));
    let running = agent(addr, |c| c.access_log = Some(log));
    accept.join().expect("provider");
    let mut c = Client::connect(running.agent_addr());
    let mut args = Vec::new();
    hessian2::write_string(&mut args, "x");
    for i in 0..CALLS {
        let id = (i as u32 * 7) % IDS;
        let mut burst = Vec::new();
        // Every third call reuses its id's signature as it stands.
        if i % 3 != 2 || i < IDS as usize * 3 {
            define_method(&mut burst, id, &format!("m{i}"));
        }
        agent::encode_request(&mut burst, i as u64, id, 5000, &[], &args).expect("request");
        c.stream.write_all(&burst).expect("send");
        assert_eq!(c.read().status, Status::Ok);
    }
    // What each id named at each call, worked out the same way.
    let mut named: Vec<String> = vec![String::new(); IDS as usize];
    let expected: Vec<String> = (0..CALLS)
        .map(|i| {
            let id = (i as u32 * 7 % IDS) as usize;
            if i % 3 != 2 || i < IDS as usize * 3 {
                named[id] = format!("m{i}");
            }
            named[id].clone()
        })
        .collect();
    let lines = wait_lines(&path, CALLS);
    for (v, method) in lines.iter().zip(&expected) {
        assert_eq!(v["method"], method.as_str(), "{v}");
        assert_eq!(v["service"], SERVICE);
    }
    running.stop();
}
