//! `--access-log`: one JSON line per call, for the HTTP and the Dubbo front-ends, with
//! every field; log rotation (move the file, SIGHUP) loses no line; and the per-method
//! metrics count the same calls.

mod util;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use codec::dubbo::{self, Attachments, Request, Serialization};
use codec::hessian2;
use codec::Decoded;
use util::*;

const SERVICE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";

/// Every field of a line.
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

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until the files hold `count` lines together.
#[track_caller]
fn wait_lines(paths: &[&Path], count: usize) -> Vec<String> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let all: Vec<String> = paths.iter().flat_map(|p| lines(p)).collect();
        if all.len() >= count || Instant::now() > end {
            assert_eq!(all.len(), count, "lines in {paths:?}");
            return all;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Dubbo request for `IHelloService.hash(arg)`.
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

/// Sends a Dubbo request and reads its answer's status byte.
fn dubbo_call(s: &mut TcpStream, req: &[u8]) -> u8 {
    use std::io::Read;
    s.write_all(req).expect("send");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Decoded::Complete { msg, .. }) = dubbo::decode_frame(&buf) {
            return msg.status();
        }
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "consumer-agent closed the Dubbo connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn http_and_dubbo_calls_are_logged_as_json_lines_with_every_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let agent = fake_agent(Mode::Hash);
    let running = consumer(
        &[agent.addr],
        &[
            "--dubbo-listen",
            "127.0.0.1:0",
            "--access-log",
            path.to_str().expect("utf-8 path"),
        ],
    );
    wait_ready(&running);
    let mut http = TcpStream::connect(running.http_addr()).expect("connect");
    let http_local = http.local_addr().expect("local addr");
    for i in 0..5 {
        http.write_all(&race_request(&format!("hello {i}")))
            .expect("send");
        let a = read_answers(&mut http, 1, Duration::from_secs(10));
        assert_eq!(a[0].status, 200, "{:?}", a[0]);
    }
    // A request refused before it is a call is logged too (no upstream).
    let bad =
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi";
    http.write_all(bad).expect("send");
    let a = read_answers(&mut http, 1, Duration::from_secs(10));
    assert_eq!(a[0].status, 400);
    let dubbo_addr: SocketAddr = running.dubbo_addr().expect("dubbo listener");
    let mut d = TcpStream::connect(dubbo_addr).expect("connect");
    d.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let dubbo_local = d.local_addr().expect("local addr");
    for i in 0..3 {
        assert_eq!(
            dubbo_call(&mut d, &dubbo_hash(i, "dubbo")),
            dubbo::status::OK
        );
    }
    let all = wait_lines(&[&path], 9);
    let parsed: Vec<serde_json::Value> = all
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for v in &parsed {
        for f in FIELDS {
            assert!(v.get(f).is_some(), "no {f} in {v}");
        }
        let time = v["time"].as_str().expect("time");
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
        assert!(v["trace_id"].is_null(), "{v}");
        assert!(v["caller_identity"].is_null(), "{v}");
        assert!(v["bytes_in"].as_u64().expect("bytes_in") > 0, "{v}");
        assert!(v["bytes_out"].as_u64().expect("bytes_out") > 0, "{v}");
        assert!(v["latency_us"].as_u64().is_some(), "{v}");
        assert_eq!(v["retries"].as_u64(), Some(0), "{v}");
    }
    let http_lines: Vec<_> = parsed.iter().filter(|v| v["front"] == "http").collect();
    let dubbo_lines: Vec<_> = parsed.iter().filter(|v| v["front"] == "dubbo").collect();
    assert_eq!((http_lines.len(), dubbo_lines.len()), (6, 3));
    let upstream = agent.addr.to_string();
    for v in http_lines.iter().filter(|v| v["status"] == 200) {
        assert_eq!(v["caller"], http_local.to_string().as_str());
        assert_eq!(v["service"], SERVICE);
        assert_eq!(v["method"], "hash");
        assert_eq!(v["version"], "");
        assert_eq!(v["group"], "");
        assert_eq!(v["upstream"], upstream.as_str());
        assert_eq!(v["outcome"], "ok");
    }
    let refused: Vec<_> = http_lines.iter().filter(|v| v["status"] == 400).collect();
    assert_eq!(refused.len(), 1);
    assert!(refused[0]["upstream"].is_null());
    assert_eq!(refused[0]["outcome"], "bad_request");
    for v in &dubbo_lines {
        assert_eq!(v["caller"], dubbo_local.to_string().as_str());
        assert_eq!(v["service"], SERVICE);
        assert_eq!(v["method"], "hash");
        assert_eq!(v["version"], "0.0.0");
        assert_eq!(v["upstream"], upstream.as_str());
        assert_eq!(v["status"].as_u64(), Some(u64::from(dubbo::status::OK)));
        assert_eq!(v["outcome"], "ok");
    }
    // The per-method metrics counted the same calls (refused ones are not calls).
    let text = running.metrics().render();
    let series =
        format!("consumer_method_requests_total{{service=\"{SERVICE}\",method=\"hash\"}} 8\n");
    assert!(text.contains(&series), "{text}");
    assert!(text.contains(&format!(
        "consumer_method_responses_total{{service=\"{SERVICE}\",method=\"hash\",status=\"ok\"}} 8\n"
    )));
    assert!(text.contains(&format!(
        "consumer_method_latency_seconds_count{{service=\"{SERVICE}\",method=\"hash\"}} 8\n"
    )));
    assert!(text.contains("consumer_access_log_dropped_total 0\n"));
    running.stop();
}

#[test]
fn rotation_by_move_and_sighup_loses_no_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let moved = dir.path().join("access.log.1");
    let agent = fake_agent(Mode::Hash);
    let running = consumer(
        &[agent.addr],
        &["--access-log", path.to_str().expect("path")],
    );
    wait_ready(&running);
    let mut s = TcpStream::connect(running.http_addr()).expect("connect");
    let request = race_request("rotate me");
    let mut calls = 0;
    // Pipelined batches, so that lines are in flight when the file moves.
    for batch in 0..40 {
        if batch == 20 {
            // The first 200 lines are in the file (the writer takes the queue every
            // few milliseconds); then it moves, and later lines go to a new file.
            wait_lines(&[&path], calls);
            std::fs::rename(&path, &moved).expect("rename");
            signal_hook::low_level::raise(signal_hook::consts::SIGHUP).expect("SIGHUP");
        }
        let mut burst = Vec::new();
        for _ in 0..10 {
            burst.extend_from_slice(&request);
        }
        s.write_all(&burst).expect("send");
        let answers = read_answers(&mut s, 10, Duration::from_secs(10));
        assert!(answers.iter().all(|a| a.status == 200));
        calls += answers.len();
    }
    let all = wait_lines(&[&moved, &path], calls);
    assert!(
        !lines(&path).is_empty(),
        "no line in the reopened file: SIGHUP did not reopen it"
    );
    assert!(
        lines(&moved).len() >= 200,
        "lines before the move are in the moved file"
    );
    for l in &all {
        let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
        assert_eq!(v["status"], 200);
    }
    assert_eq!(running.metrics().access_log_dropped(), 0);
    running.stop();
}

#[test]
fn lines_name_the_method_called_when_call_ids_are_given_to_new_methods() {
    // More methods than call ids (codec::agent::MAX_CALLS): the later ones take the ids
    // of earlier ones, whose names the log must not keep using.
    const METHODS: usize = codec::agent::MAX_CALLS + 400;
    const BATCH: usize = 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let agent = fake_agent(Mode::Hash);
    let running = consumer(
        &[agent.addr],
        &["--access-log", path.to_str().expect("utf-8 path")],
    );
    wait_ready(&running);
    let mut s = TcpStream::connect(running.http_addr()).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    // Each method twice, the second time a round later, after its id may have moved on.
    let order: Vec<usize> = (0..METHODS).chain(0..BATCH).collect();
    for batch in order.chunks(BATCH) {
        let burst: Vec<u8> = (batch.iter())
            .flat_map(|i| method_request(&format!("m{i}")))
            .collect();
        s.write_all(&burst).expect("send");
        let answers = read_answers(&mut s, batch.len(), Duration::from_secs(20));
        assert!(answers.iter().all(|a| a.status == 200), "{:?}", answers[0]);
    }
    let all = wait_lines(&[&path], order.len());
    // One connection, calls answered in order: the lines are in the order sent.
    for (line, i) in all.iter().zip(&order) {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        assert_eq!(v["method"], format!("m{i}").as_str(), "{line}");
        assert_eq!(v["service"], SERVICE);
    }
    running.stop();
}
