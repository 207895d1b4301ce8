//! `provider-agent --dubbo-listen`: unmeshed Dubbo consumers call the provider through
//! the provider-agent and get the provider's own answers byte for byte.
//!
//! Real sockets on loopback. The provider is the npm `sofa-rpc-node` Dubbo provider
//! (`tests/peers/provider.js`, node) where its answers matter, the in-process mock
//! provider of `common` (or a bare listener played by hand) where timing does. The
//! consumers are written by hand with `codec::dubbo`, and one is someone else's: the
//! `sofa-rpc-node` client (`tests/peers/client.js`). `.ci/setup` installs node and the
//! peers; without them the node tests fail, they never skip.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use codec::dubbo::{self, status, Attachments, Outcome, Request, Response, Serialization};
use codec::hessian2::{self, Value};
use codec::java::string_hash_code;
use codec::Decoded;
use common::{init_log, MockProvider, Mode, SERVICE, SOON};
use serde_json::{json, Value as Json};
use test_support::net::free_port;
use test_support::wait::assert_eventually;

const SHAPES: &str = "com.example.ShapeService";
const GREETER: &str = "com.example.Greeter";
const STRING: &str = "Ljava/lang/String;";

/// What the provider-agent in front of `provider.js` serves.
const SERVED: [&str; 5] = [
    SERVICE,
    SHAPES,
    "com.example.Greeter:1.0.0",
    "com.example.Greeter:2.0.0",
    "blue/com.example.Greeter:2.0.0",
];

/// The tests share two busy cores (and node): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A provider-agent with `--dubbo-listen 127.0.0.1:0` in front of `provider`, with its
/// own file registry.
struct Agent {
    running: agent_provider::Running,
    registry: String,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(provider: SocketAddr, services: &[&str]) -> Agent {
        Agent::start_with(provider, services, |_| {})
    }

    fn start_with(
        provider: SocketAddr,
        services: &[&str],
        tweak: impl FnOnce(&mut agent_provider::Config),
    ) -> Agent {
        init_log();
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = format!("file://{}", dir.path().display());
        let mut cfg =
            agent_provider::Config::new(provider, services.iter().map(|s| s.to_string()).collect());
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.dubbo_listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.registry = Some(registry.clone());
        cfg.drain_secs = 2;
        tweak(&mut cfg);
        let running = agent_provider::start(cfg).expect("provider-agent");
        Agent {
            running,
            registry,
            _dir: dir,
        }
    }

    fn wait_provider(&self) {
        let m = self.running.metrics().clone();
        assert_eventually("provider connection", SOON, || m.provider_up());
    }

    fn dubbo(&self) -> SocketAddr {
        self.running
            .dubbo_addr()
            .expect("--dubbo-listen gives an address")
    }

    fn consumer(&self) -> Consumer {
        Consumer::connect(self.dubbo())
    }
}

/// A Dubbo consumer written by hand.
struct Consumer {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Consumer {
    fn connect(addr: SocketAddr) -> Consumer {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        Consumer { s, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send");
    }

    /// The next whole frame, or `None` once the peer closed.
    fn frame(&mut self) -> Option<Vec<u8>> {
        read_frame(&mut self.s, &mut self.buf)
    }

    fn call(&mut self, req: &[u8]) -> Vec<u8> {
        self.send(req);
        self.frame().expect("an answer")
    }

    /// Whether the peer closes the connection (EOF or reset) within the read timeout;
    /// whatever arrives before is discarded.
    fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }
            }
        }
    }
}

fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 65536];
    loop {
        if let Ok(Decoded::Complete { consumed, .. }) = dubbo::decode_frame(buf) {
            return Some(buf.drain(..consumed).collect());
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One argument, a string (or null), as hessian2.
fn string_arg(s: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    match s {
        Some(s) => hessian2::write_string(&mut out, s),
        None => hessian2::write_null(&mut out),
    }
    out
}

/// A whole request frame, as Java writes one.
#[allow(clippy::too_many_arguments)]
fn request(
    id: i64,
    service: &str,
    version: &str,
    group: Option<&str>,
    method: &str,
    args: &[u8],
    extra: &[(&str, Option<&str>)],
    two_way: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    dubbo::encode_request(
        &mut out,
        &Request {
            id,
            serialization: Serialization::Hessian2,
            two_way,
            dubbo_version: "2.0.2",
            path: service,
            version: Some(version),
            group,
            method,
            descriptor: STRING,
            args,
            attachments: Attachments::Standard(extra),
        },
    )
    .expect("encode");
    out
}

/// `IHelloService.hash(arg)`.
fn hash(id: i64, arg: &str) -> Vec<u8> {
    request(
        id,
        SERVICE,
        "0.0.0",
        None,
        "hash",
        &string_arg(Some(arg)),
        &[],
        true,
    )
}

/// `ShapeService.method(arg)`.
fn shape(id: i64, method: &str, arg: Option<&str>) -> Vec<u8> {
    request(
        id,
        SHAPES,
        "0.0.0",
        None,
        method,
        &string_arg(arg),
        &[],
        true,
    )
}

/// A response frame: its id, status and decoded body.
fn answer(frame: &[u8]) -> (i64, u8, Response) {
    let Ok(Decoded::Complete { msg, consumed }) = dubbo::decode_frame(frame) else {
        panic!("not a frame: {frame:02x?}");
    };
    assert_eq!(consumed, frame.len());
    assert!(!msg.is_request() && !msg.is_event(), "a response");
    let body = dubbo::decode_response_body(msg.serialization_id(), msg.status(), msg.body)
        .expect("a response body");
    (msg.id(), msg.status(), body)
}

/// An error answer: its id, status and message.
fn error(frame: &[u8]) -> (i64, u8, String) {
    let (id, st, body) = answer(frame);
    match body.outcome {
        Outcome::Error { message, .. } => (id, st, message),
        other => panic!("not an error: {other:?}"),
    }
}

fn value(frame: &[u8]) -> Value {
    let (_, st, body) = answer(frame);
    assert_eq!(st, status::OK);
    match body.outcome {
        Outcome::Value(v) => v,
        other => panic!("not a value: {other:?}"),
    }
}

/// The npm sofa-rpc-node Dubbo provider (`tests/peers/provider.js`), killed on drop.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers")
}

/// Starts `provider.js` on a free port; fails (never skips) if node or the peer is
/// missing.
fn start_peer() -> (Peer, SocketAddr) {
    let dir = peers_dir();
    assert!(
        dir.join("node_modules/sofa-rpc-node").is_dir(),
        "the npm Dubbo peer is not installed: run `bash .ci/setup` (npm install in tests/peers)"
    );
    let port = free_port().expect("a free port");
    let mut child = Command::new("node")
        .arg("provider.js")
        .arg(port.to_string())
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node is required for this test: run `bash .ci/setup`");
    let stdout = child.stdout.take().expect("stdout");
    let peer = Peer(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("peer output");
    assert!(line.starts_with("listening"), "peer said {line:?}");
    (peer, SocketAddr::from(([127, 0, 0, 1], port)))
}

#[test]
fn a_dubbo_consumer_gets_the_providers_own_answers_through_the_provider_agent() {
    let _serial = serial();
    let started = Instant::now();
    let (_peer, provider) = start_peer();
    let agent = Agent::start(provider, &SERVED);
    agent.wait_provider();

    // Registered with the Dubbo listener's address, for the ZooKeeper registry to
    // publish as dubbo://...
    let (tx, rx) = mpsc::channel();
    let reg = registry::open(Some(&agent.registry)).expect("registry");
    let _watch = reg
        .watch(SERVICE, move |list| {
            let _ = tx.send(list);
        })
        .expect("watch");
    let listed = loop {
        let list = rx.recv_timeout(SOON).expect("a registry update");
        if let Some(i) = list.into_iter().next() {
            break i;
        }
    };
    assert_eq!(listed.addr, agent.running.agent_addr().to_string());
    assert_eq!(
        listed.meta.get(agent_provider::DUBBO_ADDR_META),
        Some(&agent.dubbo().to_string()),
        "{listed:?}"
    );

    // The same requests straight to the provider and through the agent: the same
    // answers, byte for byte (the ids are the same too).
    let mut direct = Consumer::connect(provider);
    let mut meshed = agent.consumer();
    let requests = [
        ("a value", hash(1, "hello")),
        ("a string", shape(2, "upper", Some("mesh ok"))),
        ("null", shape(3, "upper", None)),
        (
            "a returned exception",
            shape(4, "reject", Some("no such shape")),
        ),
        (
            "an exception with causes",
            shape(5, "rejectWithCause", Some("deep")),
        ),
        ("a thrown error", shape(6, "fail", Some("boom"))),
        ("response attachments", shape(7, "tagged", Some("hi"))),
        (
            "an exception with response attachments",
            shape(8, "tagged", Some("reject")),
        ),
        ("null with response attachments", shape(9, "tagged", None)),
        (
            "request attachments",
            request(
                10,
                SHAPES,
                "0.0.0",
                None,
                "attachment",
                &string_arg(Some("trace-id")),
                &[("trace-id", Some("t-42 你好"))],
                true,
            ),
        ),
        (
            "a version and a group",
            request(
                11,
                GREETER,
                "2.0.0",
                Some("blue"),
                "greet",
                &string_arg(Some("ann")),
                &[],
                true,
            ),
        ),
    ];
    let mut got = Vec::new();
    for (what, req) in &requests {
        let want = direct.call(req);
        let through = meshed.call(req);
        assert_eq!(
            through, want,
            "{what}: through the agent (left) vs directly (right)"
        );
        got.push(through);
    }
    // What they say.
    assert_eq!(value(&got[0]), Value::Int(99162322));
    assert_eq!(value(&got[1]), Value::String("MESH OK".into()));
    assert_eq!(answer(&got[2]).2.outcome, Outcome::Null);
    let (_, st, body) = answer(&got[3]);
    assert_eq!(st, status::OK);
    assert!(
        matches!(body.outcome, Outcome::Exception { .. }),
        "{:?}",
        body.outcome
    );
    let (_, st, message) = error(&got[5]);
    assert_ne!(st, status::OK);
    assert!(message.contains("boom"), "{message}");
    let (_, _, body) = answer(&got[6]);
    assert_eq!(body.outcome, Outcome::Value(Value::String("HI".into())));
    assert!(
        body.attachments
            .contains(&("echo".to_owned(), Value::String("hi".into()))),
        "{:?}",
        body.attachments
    );
    let (_, _, body) = answer(&got[7]);
    assert!(matches!(body.outcome, Outcome::Exception { .. }));
    assert!(body
        .attachments
        .contains(&("X-Trace".to_owned(), Value::String("t-9".into()))));
    assert_eq!(value(&got[9]), Value::String("t-42 你好".into()));
    assert_eq!(
        value(&got[10]),
        Value::String("2.0.0/blue: hello ann".into())
    );

    // 1,000 pipelined on one connection, answered by id.
    let mut burst = Vec::new();
    for i in 0..1000i64 {
        burst.extend(hash(1000 + i, &format!("p{i}")));
    }
    meshed.send(&burst);
    let mut seen = vec![false; 1000];
    for _ in 0..1000 {
        let frame = meshed.frame().expect("an answer");
        let (id, st, body) = answer(&frame);
        let i = usize::try_from(id - 1000).expect("a request id of ours");
        assert_eq!(st, status::OK);
        assert_eq!(
            body.outcome,
            Outcome::Value(Value::Int(string_hash_code(&format!("p{i}"))))
        );
        assert!(!std::mem::replace(&mut seen[i], true), "answered once: {i}");
    }

    // A heartbeat gets Dubbo's own reply: same id, event flag, response, null.
    let mut hb = Vec::new();
    dubbo::encode_heartbeat_request(&mut hb, 77);
    let reply = meshed.call(&hb);
    let mut want = Vec::new();
    dubbo::encode_heartbeat_reply(&mut want, 77);
    assert_eq!(reply, want);

    // What the agent does not serve: SERVICE_NOT_FOUND naming the service key.
    let nobody = request(
        20,
        "com.example.Nobody",
        "1.0",
        Some("g"),
        "greet",
        &string_arg(Some("x")),
        &[],
        true,
    );
    let (id, st, message) = error(&meshed.call(&nobody));
    assert_eq!((id, st), (20, status::SERVICE_NOT_FOUND));
    assert!(message.contains("g/com.example.Nobody:1.0"), "{message}");
    let other_version = request(
        21,
        GREETER,
        "3.0.0",
        None,
        "greet",
        &string_arg(Some("x")),
        &[],
        true,
    );
    let (id, st, message) = error(&meshed.call(&other_version));
    assert_eq!((id, st), (21, status::SERVICE_NOT_FOUND));
    assert!(message.contains("com.example.Greeter:3.0.0"), "{message}");

    // Another serialization (6, fastjson): BAD_REQUEST naming it; the connection goes on.
    let mut fastjson = hash(22, "x");
    fastjson[2] = (fastjson[2] & !dubbo::SERIALIZATION_MASK) | dubbo::SERIALIZATION_FASTJSON;
    let (id, st, message) = error(&meshed.call(&fastjson));
    assert_eq!((id, st), (22, status::BAD_REQUEST));
    assert!(message.contains("serialization id 6"), "{message}");
    let mut other = hash(23, "x");
    other[2] = (other[2] & !dubbo::SERIALIZATION_MASK) | 8;
    let (id, st, message) = error(&meshed.call(&other));
    assert_eq!((id, st), (23, status::BAD_REQUEST));
    assert!(message.contains("serialization id 8"), "{message}");

    // One-way: no answer; the next two-way call is answered first.
    let mut one_way = hash(24, "one way");
    one_way[2] &= !dubbo::FLAG_TWO_WAY;
    meshed.send(&one_way);
    let (id, _, body) = answer(&meshed.call(&hash(25, "after")));
    assert_eq!(id, 25);
    assert_eq!(
        body.outcome,
        Outcome::Value(Value::Int(string_hash_code("after")))
    );

    // Counted: every call but the heartbeat, by outcome.
    let m = agent.running.metrics();
    assert_eq!(m.dubbo_requests(), 11 + 1000 + 2 + 2 + 2);
    let text = m.render();
    assert!(
        text.contains("provider_agent_dubbo_errors_total{kind=\"unavailable\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("provider_agent_dubbo_errors_total{kind=\"bad_request\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("provider_agent_dubbo_connections 1\n"),
        "{text}"
    );
    eprintln!("took {:?}", started.elapsed());
    agent.running.stop();
}

/// Limits and input that is not Dubbo: an error answer or a closed connection, and the
/// other connections unharmed.
#[test]
fn limits_and_bad_input_get_an_error_or_a_close_and_harm_no_one() {
    let _serial = serial();
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    provider.set(Mode::Hash, Duration::from_millis(20));
    let agent = Agent::start_with(provider.addr, &[SERVICE], |c| {
        c.dubbo_max_body = 1024;
        c.dubbo_max_pipeline = 4;
    });
    agent.wait_provider();
    let mut good = agent.consumer();
    let mut check_good = |what: &str, id: i64| {
        let (got, st, body) = answer(&good.call(&hash(id, what)));
        assert_eq!((got, st), (id, status::OK), "after {what}");
        assert_eq!(
            body.outcome,
            Outcome::Value(Value::Int(string_hash_code(what))),
            "after {what}"
        );
    };
    check_good("before", 1);

    // More calls pipelined than --dubbo-max-pipeline: reading pauses and resumes, all
    // are answered.
    let mut c = agent.consumer();
    let mut burst = Vec::new();
    for i in 0..100i64 {
        burst.extend(hash(i, &format!("q{i}")));
    }
    c.send(&burst);
    let mut seen = [false; 100];
    for _ in 0..100 {
        let (id, st, body) = answer(&c.frame().expect("an answer"));
        let i = usize::try_from(id).expect("ours");
        assert_eq!(st, status::OK);
        assert_eq!(
            body.outcome,
            Outcome::Value(Value::Int(string_hash_code(&format!("q{i}"))))
        );
        assert!(!std::mem::replace(&mut seen[i], true));
    }

    // A header announcing a body over --dubbo-max-body: BAD_REQUEST naming the limit,
    // then closed.
    let mut s = agent.consumer();
    let mut head = Vec::new();
    dubbo::write_header(
        &mut head,
        dubbo::FLAG_REQUEST | dubbo::FLAG_TWO_WAY | dubbo::SERIALIZATION_HESSIAN2,
        0,
        9,
        2000,
    );
    s.send(&head);
    let (id, st, message) = error(&s.frame().expect("an answer"));
    assert_eq!((id, st), (9, status::BAD_REQUEST));
    assert!(message.contains("--dubbo-max-body 1024"), "{message}");
    assert!(s.closed(), "then closed");
    check_good("oversized", 2);

    // Garbage: closed.
    let mut s = agent.consumer();
    s.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(s.closed(), "wrong magic closes");
    check_good("garbage", 3);

    // A request flagged as a response: closed.
    let mut s = agent.consumer();
    let mut flipped = hash(12, "x");
    flipped[2] &= !dubbo::FLAG_REQUEST;
    s.send(&flipped);
    assert!(s.closed(), "a response from a consumer closes");
    check_good("flagged as response", 4);

    // Garbage after a valid frame: the frame is answered, then closed.
    let mut s = agent.consumer();
    let mut both = hash(13, "valid");
    both.extend_from_slice(b"\x00garbage after the frame\xff");
    s.send(&both);
    let (id, st, _) = answer(&s.frame().expect("an answer"));
    assert_eq!((id, st), (13, status::OK));
    assert!(s.closed(), "then closed");

    // A malformed body (framing intact): BAD_REQUEST, the connection goes on.
    let mut s = agent.consumer();
    let mut bad = Vec::new();
    dubbo::write_header(
        &mut bad,
        dubbo::FLAG_REQUEST | dubbo::FLAG_TWO_WAY | dubbo::SERIALIZATION_HESSIAN2,
        0,
        15,
        3,
    );
    bad.extend_from_slice(&[0x05, b'a', b'b']);
    let (id, st, _) = error(&s.call(&bad));
    assert_eq!((id, st), (15, status::BAD_REQUEST));
    let (id, st, _) = answer(&s.call(&hash(16, "same connection")));
    assert_eq!((id, st), (16, status::OK));

    // A truncated frame, then the end of the stream: closed.
    let mut s = agent.consumer();
    let whole = hash(17, "truncated");
    s.send(&whole[..whole.len() - 5]);
    s.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(s.closed(), "a truncated frame then FIN closes");

    // A consumer that sends its calls and finishes sending still gets every answer.
    let mut s = agent.consumer();
    s.send(&[hash(18, "a"), hash(19, "b")].concat());
    s.s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut ids = [
        answer(&s.frame().expect("an answer")).0,
        answer(&s.frame().expect("an answer")).0,
    ];
    ids.sort();
    assert_eq!(ids, [18, 19]);
    assert!(s.closed(), "then closed");

    check_good("after all", 5);
    agent.running.stop();
    provider.kill();
}

/// What the provider receives is the consumer's frame but for its id, and what the
/// consumer receives is the provider's but for its id; a provider that does not answer
/// in time gets the consumer SERVER_TIMEOUT within its `timeout` attachment, and its late
/// answer is dropped. The provider is played by hand.
#[test]
fn frames_pass_as_they_are_and_a_late_provider_gets_server_timeout() {
    let _serial = serial();
    init_log();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let agent = Agent::start(listener.local_addr().unwrap(), &[SERVICE]);
    let (mut p, _) = listener.accept().unwrap();
    p.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut pbuf = Vec::new();
    agent.wait_provider();
    let mut c = agent.consumer();

    // A call with a timeout of 300 ms and attachments of its own: the provider gets it
    // as it is, under an id of the agent's.
    let slow = request(
        5,
        SERVICE,
        "0.0.0",
        None,
        "hash",
        &string_arg(Some("slow")),
        &[("timeout", Some("300")), ("trace", Some("t-1"))],
        true,
    );
    let sent = Instant::now();
    c.send(&slow);
    let got = read_frame(&mut p, &mut pbuf).expect("the forwarded request");
    assert_eq!(got.len(), slow.len());
    assert_eq!(got[..4], slow[..4], "magic, flags, status");
    assert_eq!(got[12..], slow[12..], "length and body, byte for byte");
    let late_id = i64::from_be_bytes(got[4..12].try_into().unwrap());

    // No answer: SERVER_TIMEOUT after the 300 ms asked for.
    let (id, st, message) = error(&c.frame().expect("an answer"));
    let took = sent.elapsed();
    assert_eq!((id, st), (5, status::SERVER_TIMEOUT), "{message}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );

    // The late answer is dropped; the next call's answer comes back as the provider
    // wrote it (attachments and all), under the consumer's id.
    let mut late = Vec::new();
    dubbo::encode_response(
        &mut late,
        late_id,
        Serialization::Hessian2,
        status::OK,
        &dubbo::Reply::Value(&Value::Int(1)),
        &[],
    )
    .unwrap();
    p.write_all(&late).unwrap();
    let next = hash(6, "next");
    c.send(&next);
    let got = read_frame(&mut p, &mut pbuf).expect("the forwarded request");
    assert_eq!(got[12..], next[12..]);
    let provider_id = i64::from_be_bytes(got[4..12].try_into().unwrap());
    assert_ne!(provider_id, late_id, "a new id for a new call");
    let mut reply = Vec::new();
    dubbo::encode_response(
        &mut reply,
        provider_id,
        Serialization::Hessian2,
        status::OK,
        &dubbo::Reply::Value(&Value::String("v".into())),
        &[("k", "v"), ("dubbo", "2.0.2")],
    )
    .unwrap();
    p.write_all(&reply).unwrap();
    let answered = c.frame().expect("an answer");
    assert_eq!(answered.len(), reply.len());
    assert_eq!(answered[..4], reply[..4]);
    assert_eq!(answered[4..12], 6i64.to_be_bytes(), "the consumer's id");
    assert_eq!(
        answered[12..],
        reply[12..],
        "the provider's body, byte for byte"
    );

    // The provider's own error statuses pass too.
    c.send(&hash(7, "busy"));
    let got = read_frame(&mut p, &mut pbuf).expect("the forwarded request");
    let provider_id = i64::from_be_bytes(got[4..12].try_into().unwrap());
    let mut busy = Vec::new();
    dubbo::encode_response(
        &mut busy,
        provider_id,
        Serialization::Hessian2,
        status::SERVER_THREADPOOL_EXHAUSTED,
        &dubbo::Reply::Error("pool full"),
        &[],
    )
    .unwrap();
    p.write_all(&busy).unwrap();
    let (id, st, message) = error(&c.frame().expect("an answer"));
    assert_eq!(
        (id, st, message.as_str()),
        (7, status::SERVER_THREADPOOL_EXHAUSTED, "pool full")
    );

    // One-way: forwarded one-way (id 0), nothing pending.
    let mut one_way = hash(8, "one way");
    one_way[2] &= !dubbo::FLAG_TWO_WAY;
    c.send(&one_way);
    let got = read_frame(&mut p, &mut pbuf).expect("the forwarded request");
    assert_eq!(got[2], one_way[2], "still one-way");
    assert_eq!(got[4..12], [0; 8]);
    assert_eq!(got[12..], one_way[12..]);

    let m = agent.running.metrics();
    let text = m.render();
    assert!(
        text.contains("provider_agent_dubbo_errors_total{kind=\"timeout\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("provider_agent_dubbo_errors_total{kind=\"overloaded\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("provider_agent_dubbo_responses_ok_total 1\n"),
        "{text}"
    );
    assert_eq!(m.inflight(), 0);
    agent.running.stop();
}

/// In-flight limits apply to Dubbo consumers as to consumer-agents.
#[test]
fn the_in_flight_budget_refuses_with_thread_pool_exhausted() {
    let _serial = serial();
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    provider.set(Mode::Hash, Duration::from_millis(500));
    let agent = Agent::start_with(provider.addr, &[SERVICE], |c| c.max_inflight = 2);
    agent.wait_provider();
    let mut c = agent.consumer();
    c.send(&[hash(1, "a"), hash(2, "b"), hash(3, "c")].concat());
    let (id, st, message) = error(&c.frame().expect("an answer"));
    assert_eq!((id, st), (3, status::SERVER_THREADPOOL_EXHAUSTED));
    assert!(message.contains("in-flight limit"), "{message}");
    let mut ids = [
        answer(&c.frame().expect("an answer")).0,
        answer(&c.frame().expect("an answer")).0,
    ];
    ids.sort();
    assert_eq!(ids, [1, 2]);
    agent.running.stop();
    provider.kill();
}

#[test]
fn without_a_provider_connection_calls_get_service_not_found() {
    let _serial = serial();
    let nobody = test_support::net::free_addr().unwrap();
    let agent = Agent::start(nobody, &[SERVICE]);
    let mut c = agent.consumer();
    let (id, st, message) = error(&c.call(&hash(1, "x")));
    assert_eq!((id, st), (1, status::SERVICE_NOT_FOUND));
    assert!(message.contains("not connected"), "{message}");
    agent.running.stop();

    // The Dubbo listener relays hessian2 calls as they are: not to a fastjson provider.
    let mut cfg = agent_provider::Config::new(nobody, vec![SERVICE.into()]);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.dubbo_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.serialization = agent_provider::config::SerializationArg::Fastjson;
    match agent_provider::start(cfg) {
        Err(agent_provider::StartError::Config(e)) => {
            assert!(e.contains("--serialization hessian2"), "{e}")
        }
        other => panic!("started: {other:?}"),
    }
}

/// A stopping provider-agent tells its Dubbo consumers as Dubbo's own server does: the
/// read-only event; the call in flight is answered, a new one refused, then the
/// connection closes.
#[test]
fn a_stopping_provider_agent_sends_its_dubbo_consumers_the_read_only_event() {
    let _serial = serial();
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    let agent = Agent::start(provider.addr, &[SERVICE]);
    agent.wait_provider();
    let mut c = agent.consumer();
    assert_eq!(
        value(&c.call(&hash(1, "warm"))),
        Value::Int(string_hash_code("warm"))
    );
    provider.set(Mode::Hash, Duration::from_millis(400));
    c.send(&hash(2, "in flight"));
    // In flight only once the agent has sent it on (polled: a fixed pause may be too
    // short on a busy machine).
    let m = agent.running.metrics().clone();
    assert_eventually("the call in flight at the provider", SOON, || {
        m.inflight() > 0
    });
    let Agent { running, _dir, .. } = agent;
    let stopper = std::thread::spawn(move || running.stop());
    let mut want = Vec::new();
    dubbo::encode_readonly_event(&mut want, 0);
    assert_eq!(c.frame().expect("the read-only event"), want);
    // Sent after the event: it did not start, another provider may take it.
    let (id, st, message) = error(&c.call(&hash(3, "too late")));
    assert_eq!((id, st), (3, status::SERVICE_NOT_FOUND));
    assert!(message.contains("shutting down"), "{message}");
    let (id, st, body) = answer(&c.frame().expect("the answer in flight"));
    assert_eq!((id, st), (2, status::OK));
    assert_eq!(
        body.outcome,
        Outcome::Value(Value::Int(string_hash_code("in flight")))
    );
    assert_eq!(c.frame(), None, "then closed");
    stopper.join().expect("stopped");
    provider.kill();
}

/// Runs `node client.js addr args...` with `stdin`; its JSON lines once it exits 0.
fn run_client(addr: SocketAddr, args: &[&str], stdin: &str) -> Vec<Json> {
    let mut child = Command::new("node")
        .arg("client.js")
        .arg(addr.to_string())
        .args(args)
        .current_dir(peers_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is required for this test: run `bash .ci/setup`");
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().expect("client output");
    writer.join().expect("stdin writer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client.js {args:?} against {addr} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A client.js call step.
fn step(service: &str, version: &str, group: &str, method: &str, args: Json) -> Json {
    json!({ "service": service, "version": version, "group": group, "method": method, "args": args })
}

fn shape_step(method: &str, args: Json) -> Json {
    step(SHAPES, "0.0.0", "", method, args)
}

/// Someone else's Dubbo consumer, the npm sofa-rpc-node client (`tests/peers/client.js`),
/// pointed at the provider-agent's Dubbo listener gets what the same client gets from an
/// identical provider called directly, line for line (each line carries the answer's raw
/// body).
#[test]
fn the_sofa_rpc_node_client_through_the_provider_agent_gets_what_the_provider_answers() {
    let _serial = serial();
    let (_direct, direct) = start_peer();
    let (_meshed, meshed) = start_peer();
    let agent = Agent::start(meshed, &SERVED);
    agent.wait_provider();

    let user = |name: &str, age: i32| json!({ "$class": "com.example.User", "$": { "name": name, "age": age } });
    let int = |v: i64| json!({ "$class": "int", "$": v });
    let mut attach = shape_step("attachment", json!(["trace-id"]));
    attach["attachments"] = json!({ "trace-id": "t-42 你好", "other": "x" });
    let steps = vec![
        step(SERVICE, "0.0.0", "", "hash", json!(["hello"])),
        step(SERVICE, "0.0.0", "", "hash", json!(["mesh 你好 😀 +&=%"])),
        step(
            SERVICE,
            "0.0.0",
            "",
            "hash",
            json!(["abc123XYZ".repeat(200)]),
        ),
        shape_step("older", json!([user("Ann 你好", 41)])),
        shape_step(
            "byAge",
            json!([{ "$class": "java.util.List", "$": [user("ann", 30), user("bob", 50)] }]),
        ),
        shape_step(
            "describe",
            json!([{ "$class": "java.util.Map", "$": { "a": { "b": 1 }, "e": "x" } }]),
        ),
        shape_step(
            "upper",
            json!([{ "$class": "java.lang.String", "$": null }]),
        ),
        shape_step("calls", json!([])),
        shape_step(
            "dateOf",
            json!([{ "$class": "long", "$": 1527854400123i64 }]),
        ),
        shape_step("color", json!(["RED"])),
        shape_step("add", json!([int(2), int(3)])),
        shape_step("add", json!(["ab", "cd"])),
        shape_step("fail", json!(["boom"])),
        shape_step("reject", json!(["no such shape"])),
        shape_step("rejectWithCause", json!(["deep"])),
        attach,
        shape_step("tagged", json!(["hi"])),
        shape_step("tagged", json!(["reject"])),
        shape_step("tagged", json!([null])),
        step(GREETER, "1.0.0", "", "greet", json!(["ann"])),
        step(GREETER, "2.0.0", "blue", "greet", json!(["ann"])),
        json!({ "heartbeat": true }),
        step(SERVICE, "0.0.0", "", "hash", json!(["after heartbeat"])),
    ];
    let input = serde_json::to_string(&steps).expect("steps");
    let want = run_client(direct, &[], &input);
    let got = run_client(agent.dubbo(), &[], &input);
    assert_eq!(want.len(), steps.len(), "one line per step: {want:#?}");
    assert_eq!(got.len(), want.len(), "one line per step: {got:#?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            g, w,
            "through the provider-agent (left) vs directly (right)"
        );
    }
    let ok = |i: usize| assert_eq!(got[i]["status"], json!(20), "step {i}: {}", got[i]);
    for i in (0..12).chain(15..21).chain([22]) {
        ok(i);
    }
    assert_eq!(got[0]["value"], json!(99162322));
    assert_eq!(got[7]["value"], json!(4), "calls() before it: steps 3..6");
    assert_eq!(
        got[13]["error"],
        json!({ "name": "com.example.ShapeException", "message": "no such shape" })
    );
    assert_eq!(got[15]["value"], json!("t-42 你好"));
    assert_eq!(got[16]["attachments"]["echo"], json!("hi"), "{}", got[16]);
    assert_eq!(got[20]["value"], json!("2.0.0/blue: hello ann"));
    assert_eq!(got[21]["heartbeat"]["same_id"], json!(true), "{}", got[21]);

    // What only the agent answers: calls it does not serve, as SERVICE_NOT_FOUND (60)
    // naming them. sofa-rpc-node's default group, SOFA, is such a call.
    let unserved = vec![
        step(GREETER, "3.0.0", "", "greet", json!(["ann"])),
        step(GREETER, "1.0.0", "blue", "greet", json!(["ann"])),
        step("com.example.Nobody", "0.0.0", "", "greet", json!(["ann"])),
        step(SERVICE, "0.0.0", "SOFA", "hash", json!(["hello"])),
        step(SERVICE, "0.0.0", "", "hash", json!(["still fine"])),
    ];
    let lines = run_client(
        agent.dubbo(),
        &[],
        &Json::from(unserved.clone()).to_string(),
    );
    assert_eq!(lines.len(), unserved.len(), "{lines:#?}");
    for (i, what) in [
        "com.example.Greeter:3.0.0",
        "blue/com.example.Greeter:1.0.0",
        "com.example.Nobody",
        "SOFA/",
    ]
    .iter()
    .enumerate()
    {
        let line = &lines[i];
        assert_eq!(line["status"], json!(60), "step {i}: {line}");
        let message = line["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(what), "step {i}: {line}");
    }
    assert_eq!(lines[4]["value"], json!(string_hash_code("still fine")));

    // 1,000 calls pipelined on the client's one connection.
    let lines = run_client(agent.dubbo(), &["pipeline", "1000"], "");
    let (summary, calls) = lines.split_last().expect("lines");
    assert_eq!(calls.len(), 1000, "{summary}");
    for line in calls {
        let i = line["i"].as_u64().expect("i");
        assert_eq!(
            line["value"],
            json!(string_hash_code(&format!("p{i}"))),
            "{line}"
        );
    }
    assert_eq!(summary["pipeline"]["ok"], json!(1000), "{summary}");
    assert_eq!(summary["pipeline"]["connections"], json!(1), "{summary}");
    agent.running.stop();
}

#[test]
fn labels_are_registered_beside_the_versions_and_groups() {
    let _serial = serial();
    let (_peer, provider) = start_peer();
    let agent = Agent::start_with(provider, &SERVED, |cfg| {
        cfg.labels = vec![
            ("track".to_owned(), "canary".to_owned()),
            ("zone".to_owned(), "eu-1".to_owned()),
        ];
    });
    agent.wait_provider();
    let (tx, rx) = mpsc::channel();
    let reg = registry::open(Some(&agent.registry)).expect("registry");
    let _watch = reg
        .watch(SERVICE, move |list| {
            let _ = tx.send(list);
        })
        .expect("watch");
    let listed = loop {
        let list = rx.recv_timeout(SOON).expect("a registry update");
        if let Some(i) = list.into_iter().next() {
            break i;
        }
    };
    let label = |k: &str| listed.meta.get(&format!("label.{k}")).cloned();
    assert_eq!(label("track").as_deref(), Some("canary"), "{listed:?}");
    assert_eq!(label("zone").as_deref(), Some("eu-1"), "{listed:?}");
    // A bad label is a configuration error.
    for bad in ["track", "=x", "a b=c", "k=a,b"] {
        let parsed = <agent_provider::Config as clap::Parser>::try_parse_from([
            "provider-agent",
            "--label",
            bad,
        ]);
        assert!(parsed.is_err(), "--label {bad} was taken");
    }
}
