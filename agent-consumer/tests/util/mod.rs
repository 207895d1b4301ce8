//! Test helpers: a fake provider-agent speaking the agent protocol, an HTTP client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use codec::agent::{self, CallTable, Frame, Status};
use codec::dubbo::{self, Reply, Serialization};
use codec::hessian2::{self, Value};
use codec::java::string_hash_code;
use codec::Decoded;

/// How the fake provider-agent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// hashCode of the String argument.
    Hash,
    /// OVERLOADED to everything.
    Overloaded,
    /// OVERLOADED to every call for this many milliseconds from the connection's first
    /// call, hashCode after.
    OverloadedFor(u64),
    /// hashCode, one call at a time, each taking this many milliseconds: a provider
    /// whose CPU is its bottleneck (it queues rather than refuse).
    Serial(u64),
    /// Never answers.
    Silent,
    /// PROVIDER_ERROR "boom".
    Fail,
    /// hashCode, answered after this many milliseconds (concurrently).
    Delay(u64),
    /// A String of this many `x`, whatever the call (a large answer).
    Big(usize),
    /// hashCode for the first call; then it half-closes (finishes sending), answers
    /// nothing more, and holds the connection open for two seconds after the
    /// consumer-agent's FIN.
    HashThenFinish,
}

/// A fake provider-agent on a thread per connection.
pub struct FakeAgent {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
}

pub fn fake_agent(mode: Mode) -> FakeAgent {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let c = c.clone();
            std::thread::spawn(move || serve(stream, mode, &c));
        }
    });
    FakeAgent { addr, calls }
}

fn serve(mut stream: TcpStream, mode: Mode, calls: &AtomicUsize) {
    let writer = Arc::new(std::sync::Mutex::new(stream.try_clone().expect("clone")));
    let mut table = CallTable::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let mut finished = false;
    let mut answered = false;
    let mut first_call: Option<Instant> = None;
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) if finished => {
                std::thread::sleep(Duration::from_secs(2));
                return;
            }
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut pos = 0;
        while let Ok(Decoded::Complete { msg, consumed }) = agent::decode(&buf[pos..]) {
            pos += consumed;
            match msg {
                Frame::Define { call_id, signature } => {
                    table.define(call_id, signature.to_owned()).expect("define");
                }
                Frame::Request(r) => {
                    calls.fetch_add(1, Ordering::SeqCst);
                    assert!(table.get(r.call_id).is_some(), "call defined before use");
                    let since_first = first_call.get_or_insert_with(Instant::now).elapsed();
                    let mode = match mode {
                        Mode::OverloadedFor(ms) if since_first < Duration::from_millis(ms) => {
                            Mode::Overloaded
                        }
                        Mode::OverloadedFor(_) => Mode::Hash,
                        other => other,
                    };
                    match mode {
                        Mode::Delay(ms) => {
                            let payload = hash_of(r.args);
                            let (id, writer) = (r.id, writer.clone());
                            std::thread::spawn(move || {
                                std::thread::sleep(Duration::from_millis(ms));
                                let mut frame = Vec::new();
                                agent::encode_response(&mut frame, id, Status::Ok, &payload)
                                    .expect("encode");
                                if let Ok(mut w) = writer.lock() {
                                    let _ = w.write_all(&frame);
                                }
                            });
                        }
                        Mode::HashThenFinish if finished => {}
                        Mode::Hash | Mode::HashThenFinish => {
                            agent::encode_response(&mut out, r.id, Status::Ok, &hash_of(r.args))
                                .expect("encode");
                            answered = true;
                        }
                        Mode::Big(n) => {
                            let mut payload = Vec::new();
                            hessian2::ser::write_string(&mut payload, &"x".repeat(n));
                            agent::encode_response(&mut out, r.id, Status::Ok, &payload)
                                .expect("encode");
                        }
                        Mode::Overloaded => {
                            agent::encode_response(&mut out, r.id, Status::Overloaded, b"full")
                                .expect("encode")
                        }
                        Mode::Fail => {
                            agent::encode_response(&mut out, r.id, Status::ProviderError, b"boom")
                                .expect("encode")
                        }
                        Mode::Serial(ms) => {
                            std::thread::sleep(Duration::from_millis(ms));
                            let mut frame = Vec::new();
                            agent::encode_response(&mut frame, r.id, Status::Ok, &hash_of(r.args))
                                .expect("encode");
                            let Ok(mut w) = writer.lock() else { return };
                            if w.write_all(&frame).is_err() {
                                return;
                            }
                        }
                        Mode::Silent | Mode::OverloadedFor(_) => {}
                    }
                }
                Frame::Ping { id } => agent::encode_pong(&mut out, id),
                _ => {}
            }
        }
        buf.drain(..pos);
        if !out.is_empty() {
            let Ok(mut w) = writer.lock() else { return };
            if w.write_all(&out).is_err() {
                return;
            }
            // Finishes after its first answer to a call (not after a PONG).
            if mode == Mode::HashThenFinish && !finished && answered {
                finished = true;
                let _ = w.shutdown(std::net::Shutdown::Write);
            }
        }
    }
}

/// The answer's payload for a call of `args`: hashCode of its String argument (of ""
/// when it has none), as hessian2.
fn hash_of(args: &[u8]) -> Vec<u8> {
    let arg = match hessian2::decode(args) {
        Ok(Decoded::Complete {
            msg: Value::String(s),
            ..
        }) => s,
        _ => String::new(),
    };
    let mut payload = Vec::new();
    hessian2::ser::write_int(&mut payload, codec::java::string_hash_code(&arg));
    payload
}

/// Starts a consumer-agent on a free port with a static registry listing `agents`.
pub fn consumer(agents: &[SocketAddr], extra: &[&str]) -> agent_consumer::Running {
    let list: Vec<String> = agents.iter().map(|a| a.to_string()).collect();
    consumer_with(&format!("static://{}", list.join(",")), extra)
}

/// Starts a consumer-agent on a free port with the given registry URL.
pub fn consumer_with(registry: &str, extra: &[&str]) -> agent_consumer::Running {
    let mut args = vec![
        "consumer-agent",
        "--listen",
        "127.0.0.1:0",
        "--registry",
        registry,
    ];
    args.extend_from_slice(extra);
    let config = agent_consumer::Config::parse_from(args);
    agent_consumer::start(config).expect("start consumer-agent")
}

/// The race's form body for `param` (percent-encoded).
pub fn race_body(param: &str) -> String {
    let mut enc = String::new();
    for b in param.bytes() {
        if b.is_ascii_alphanumeric() {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    format!(
        "interface=com.alibaba.dubbo.performance.demo.provider.IHelloService&method=hash&parameterTypesString=Ljava%2Flang%2FString%3B&parameter={enc}"
    )
}

/// A form request for method `method` of the race's service (parameter `x`).
#[allow(dead_code)] // Not every test file calls other methods.
pub fn method_request(method: &str) -> Vec<u8> {
    let body = format!(
        "interface=com.alibaba.dubbo.performance.demo.provider.IHelloService&method={method}&parameterTypesString=Ljava%2Flang%2FString%3B&parameter=x"
    );
    format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn race_request(param: &str) -> Vec<u8> {
    let body = race_body(param);
    format!(
        "POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One HTTP response: status, content type and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// The whole response at the front of `buf`, taken out of it; `None` while incomplete.
pub fn take_answer(buf: &mut Vec<u8>) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = resp.parse(buf) else {
        return None;
    };
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .expect("content-length");
    let body = buf.get(head..head + len)?;
    let answer = Answer {
        status: resp.code.expect("code"),
        content_type: header("content-type").unwrap_or_default(),
        body: String::from_utf8_lossy(body).into_owned(),
    };
    buf.drain(..head + len);
    Some(answer)
}

/// Reads `count` responses from `stream`, with a deadline.
pub fn read_answers(stream: &mut TcpStream, count: usize, deadline: Duration) -> Vec<Answer> {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let end = Instant::now() + deadline;
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    while answers.len() < count {
        assert!(
            Instant::now() < end,
            "timed out after {} of {count} answers",
            answers.len()
        );
        while let Some(a) = take_answer(&mut buf) {
            answers.push(a);
        }
        if answers.len() >= count || !read_into(stream, &mut buf) {
            break;
        }
    }
    answers
}

/// Appends what one read of `stream` gets to `buf`; false once the peer has closed. A
/// read that times out adds nothing; any other error panics.
pub fn read_into(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 65536];
    match stream.read(&mut chunk) {
        Ok(0) => return false,
        Ok(n) => buf.extend_from_slice(&chunk[..n]),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        Err(e) => panic!("read: {e}"),
    }
    true
}

/// Sends raw bytes on a fresh connection and reads `count` answers.
pub fn exchange(addr: SocketAddr, raw: &[u8], count: usize) -> Vec<Answer> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(raw).expect("write");
    read_answers(&mut s, count, Duration::from_secs(10))
}

/// Waits until the consumer-agent reaches some provider-agent (its loops connect on
/// the registry's first list).
pub fn wait_ready(running: &agent_consumer::Running) {
    let end = Instant::now() + Duration::from_secs(10);
    while !running.metrics().has_upstream() {
        assert!(
            Instant::now() < end,
            "consumer-agent never connected to a provider-agent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The npm sofa-rpc-node Dubbo provider (`tests/peers/provider.js`), killed on drop.
pub struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the peer on `port`; fails (never skips) if node or the peer is missing.
pub fn start_peer(port: u16) -> Peer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers");
    assert!(
        dir.join("node_modules/sofa-rpc-node").is_dir(),
        "the npm Dubbo peer is not installed: run `bash .ci/setup` (npm install in tests/peers)"
    );
    let mut child = Command::new("node")
        .arg("provider.js")
        .arg(port.to_string())
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node is required for this test: run `bash .ci/setup`");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("peer output");
    assert!(line.starts_with("listening"), "peer said {line:?}");
    Peer(child)
}

/// A Dubbo provider (hessian2): any method's answer is the hash of its first string argument.
/// Counts the calls it got.
pub fn mock_provider() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counted = counted.clone();
            std::thread::spawn(move || serve_dubbo(stream, &counted));
        }
    });
    (addr, calls)
}

fn serve_dubbo(mut stream: TcpStream, calls: &AtomicUsize) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = match stream.read(&mut chunk) {
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
            calls.fetch_add(1, Ordering::SeqCst);
            let Ok(body) = dubbo::decode_request_body(msg.serialization_id(), msg.body) else {
                return;
            };
            let arg = body.args.first().and_then(Value::as_str).unwrap_or("");
            let v = Value::Int(string_hash_code(arg));
            let ser = Serialization::Hessian2;
            if dubbo::encode_response(
                &mut out,
                msg.id(),
                ser,
                dubbo::status::OK,
                &Reply::Value(&v),
                &[],
            )
            .is_err()
            {
                return;
            }
        }
        buf.drain(..pos);
        if !out.is_empty() && stream.write_all(&out).is_err() {
            return;
        }
    }
}

/// Sends a race request on a kept-alive connection and reads its whole answer
/// (Content-Length framed) into `buf`, asserting a 200: the body's length.
pub fn call_race(s: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> usize {
    s.write_all(request).unwrap();
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).unwrap();
        assert!(n > 0, "consumer-agent closed the connection");
        have += n;
        let text = &buf[..have];
        if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&text[..end]).unwrap();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("a Content-Length")
                .parse()
                .unwrap();
            if have >= end + 4 + len {
                return len;
            }
        }
    }
}

/// Allocations `counted` (a counting allocator's count) grows by during 1,000 race calls
/// on one kept-alive connection to `addr`, after 2,000 to warm up: buffers, tables and
/// lists at their working size, and the timer heap too (a call's cancelled timeout stays
/// in it until a sweep at about 1,024 entries).
pub fn allocations_in_race_calls(addr: SocketAddr, counted: impl Fn() -> usize) -> usize {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let request = race_request("hello, world");
    let mut buf = [0u8; 4096];
    for _ in 0..2000 {
        call_race(&mut s, &request, &mut buf);
    }
    let before = counted();
    assert!(
        before > 0,
        "no allocation counted while warming: wrong thread name?"
    );
    for _ in 0..1000 {
        call_race(&mut s, &request, &mut buf);
    }
    counted() - before
}

/// A consumer-agent (one loop) and a provider-agent in this process, with mutual TLS
/// between them (certificates from `deploy/tls/issue-certs.sh`), in front of
/// [`mock_provider`], on the embedded registry.
pub struct MtlsMesh {
    pub consumer: agent_consumer::Running,
    pub provider: agent_provider::Running,
    _dir: tempfile::TempDir,
}

impl MtlsMesh {
    pub fn start() -> MtlsMesh {
        const SERVICE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let st = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/tls/issue-certs.sh"
            ))
            .arg(&certs)
            .args(["mesh.test", "consumer", "provider"])
            .stdout(Stdio::null())
            .status()
            .expect("run issue-certs.sh (it needs openssl: bash .ci/setup)");
        assert!(st.success(), "issue-certs.sh failed");
        let file = |f: String| certs.join(f).to_str().expect("UTF-8 path").to_owned();
        let tls = |name: &str| {
            [
                "--tls-cert".to_owned(),
                file(format!("{name}.pem")),
                "--tls-key".to_owned(),
                file(format!("{name}-key.pem")),
                "--tls-ca".to_owned(),
                file("ca.pem".to_owned()),
            ]
        };
        let registry = format!("file://{}", dir.path().join("registry").display());
        let (provider_addr, _calls) = mock_provider();
        let provider_addr = provider_addr.to_string();
        let mut args = vec![
            "provider-agent",
            "--listen",
            "127.0.0.1:0",
            "--provider",
            &provider_addr,
            "--service",
            SERVICE,
            "--registry",
            &registry,
        ];
        let pa_tls = tls("provider");
        args.extend(pa_tls.iter().map(String::as_str));
        let provider = agent_provider::start(agent_provider::Config::parse_from(args))
            .expect("start provider-agent");
        let ca_tls = tls("consumer");
        let mut extra = vec!["--service", SERVICE, "--loops", "1"];
        extra.extend(ca_tls.iter().map(String::as_str));
        let consumer = consumer_with(&registry, &extra);
        wait_ready(&consumer);
        MtlsMesh {
            consumer,
            provider,
            _dir: dir,
        }
    }

    pub fn stop(self) {
        self.consumer.stop();
        self.provider.stop();
    }
}
