//! Dubbo in: a Dubbo consumer calls through the consumer-agent's `--dubbo-listen` port,
//! with the real agents as child processes on loopback and a mock provider in this
//! process. Answers are checked (Java's hashCode of the argument), matched by id,
//! pipelined; heartbeats, one-way calls, the mesh's own errors and bad input are
//! checked on the same mesh.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bench::harness::{self, Bins};
use bench::procs::{self, live_children, Proc};
use bench::provider::{self, ProviderOpts, RunningProvider, SERVICE};
use codec::dubbo::{self, status, Attachments, Outcome, Request, Serialization};
use codec::hessian2::{self, Value};
use codec::java::string_hash_code;
use codec::Decoded;
use test_support::net::free_addr;

/// The tests share two busy cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A mock provider (in this process), a provider-agent and a consumer-agent taking
/// Dubbo on `dubbo`.
struct Mesh {
    consumer: Proc,
    agent: Proc,
    dubbo: SocketAddr,
    /// The consumer-agent's admin port (`/metrics`).
    admin: SocketAddr,
    _provider: RunningProvider,
    _dir: tempfile::TempDir,
}

impl Mesh {
    fn start() -> Mesh {
        Mesh::with_latency(Duration::from_millis(2))
    }

    fn with_latency(latency: Duration) -> Mesh {
        let dir = tempfile::Builder::new()
            .prefix("dubbo-mesh-dubbo-in")
            .tempdir()
            .expect("tempdir");
        let registry = format!("file://{}", dir.path().join("registry").display());
        let provider = provider::spawn(ProviderOpts {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            latency,
            threads: 400,
            ..ProviderOpts::default()
        })
        .expect("mock provider");
        let bins = Bins::for_test(env!("CARGO_BIN_EXE_bench"));
        let deadline = Duration::from_secs(20);
        let (agent_addr, agent_admin) = (free_addr().unwrap(), free_addr().unwrap());
        let args =
            harness::provider_agent_args(agent_addr, agent_admin, provider.local_addr(), &registry);
        let mut agent =
            Proc::start("provider-agent", &bins.provider, &args, dir.path()).expect("start");
        procs::wait_healthy(agent_admin, deadline, &mut agent).expect("healthy");
        let (http, admin, dubbo) = (
            free_addr().unwrap(),
            free_addr().unwrap(),
            free_addr().unwrap(),
        );
        let mut args = harness::consumer_agent_args(http, admin, &registry);
        args.extend([
            "--dubbo-listen".into(),
            dubbo.to_string(),
            "--max-body".into(),
            "65536".into(),
        ]);
        let mut consumer =
            Proc::start("consumer-agent", &bins.consumer, &args, dir.path()).expect("start");
        procs::wait_healthy(admin, deadline, &mut consumer).expect("healthy");
        harness::wait_routing(http, deadline, &mut consumer).expect("routing");
        Mesh {
            consumer,
            agent,
            dubbo,
            admin,
            _provider: provider,
            _dir: dir,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.dubbo, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        s
    }
}

/// A whole Dubbo request frame for `service.hash(arg)` (hessian2, as Java writes it).
fn request(id: i64, service: &str, arg: &str, two_way: bool, group: &[&str]) -> Vec<u8> {
    request_with(id, service, arg, two_way, group, &[])
}

/// [`request`] with more attachments.
fn request_with(
    id: i64,
    service: &str,
    arg: &str,
    two_way: bool,
    group: &[&str],
    extra: &[(&str, Option<&str>)],
) -> Vec<u8> {
    let mut args = Vec::new();
    hessian2::write_string(&mut args, arg);
    let mut out = Vec::new();
    dubbo::encode_request(
        &mut out,
        &Request {
            id,
            serialization: Serialization::Hessian2,
            two_way,
            dubbo_version: "2.0.2",
            path: service,
            version: Some("0.0.0"),
            group: group.first().copied(),
            method: "hash",
            descriptor: "Ljava/lang/String;",
            args: &args,
            attachments: Attachments::Standard(extra),
        },
    )
    .expect("encode");
    out
}

/// The next whole frame from `s` (header and body), or `None` once the peer closed.
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

/// A response frame: its id, status and decoded body.
fn answer(frame: &[u8]) -> (i64, u8, Outcome) {
    let Ok(Decoded::Complete { msg, .. }) = dubbo::decode_frame(frame) else {
        panic!("a frame");
    };
    assert!(!msg.is_request() && !msg.is_event(), "a response");
    let body = dubbo::decode_response_body(msg.serialization_id(), msg.status(), msg.body)
        .expect("a response body");
    (msg.id(), msg.status(), body.outcome)
}

#[test]
fn dubbo_consumers_call_through_the_consumer_agent() {
    let _serial = serial();
    let mut mesh = Mesh::start();
    let mut s = mesh.connect();
    let mut buf = Vec::new();

    // One call, answered with the caller's id.
    s.write_all(&request(42, SERVICE, "hello", true, &[]))
        .unwrap();
    let (id, st, out) = answer(&read_frame(&mut s, &mut buf).expect("an answer"));
    assert_eq!((id, st), (42, status::OK));
    assert_eq!(out, Outcome::Value(Value::Int(99162322)));

    // 1,000 pipelined on one connection, matched by id.
    let mut burst = Vec::new();
    for i in 0..1000i64 {
        burst.extend(request(1000 + i, SERVICE, &format!("p{i}"), true, &[]));
    }
    s.write_all(&burst).unwrap();
    let mut seen = vec![false; 1000];
    for _ in 0..1000 {
        let (id, st, out) = answer(&read_frame(&mut s, &mut buf).expect("an answer"));
        let i = usize::try_from(id - 1000).expect("a request id of ours");
        assert_eq!(st, status::OK);
        assert_eq!(
            out,
            Outcome::Value(Value::Int(string_hash_code(&format!("p{i}"))))
        );
        assert!(!std::mem::replace(&mut seen[i], true), "answered once");
    }

    // A heartbeat gets Dubbo's own reply: same id, event flag, null.
    let mut hb = Vec::new();
    dubbo::encode_heartbeat_request(&mut hb, 77);
    s.write_all(&hb).unwrap();
    let mut want = Vec::new();
    dubbo::encode_heartbeat_reply(&mut want, 77);
    assert_eq!(read_frame(&mut s, &mut buf).expect("a reply"), want);

    // One-way: no answer; the next two-way call is answered first.
    s.write_all(&request(5, SERVICE, "oneway", false, &[]))
        .unwrap();
    s.write_all(&request(6, SERVICE, "after", true, &[]))
        .unwrap();
    let (id, _, out) = answer(&read_frame(&mut s, &mut buf).expect("an answer"));
    assert_eq!(id, 6);
    assert_eq!(out, Outcome::Value(Value::Int(string_hash_code("after"))));

    // The mesh's own failures, as Dubbo statuses: no provider names the service.
    s.write_all(&request(7, "com.example.Nobody", "x", true, &[]))
        .unwrap();
    let (id, st, out) = answer(&read_frame(&mut s, &mut buf).expect("an answer"));
    assert_eq!((id, st), (7, status::SERVICE_NOT_FOUND));
    let Outcome::Error { message, .. } = out else {
        panic!("an error");
    };
    assert!(message.contains("com.example.Nobody"), "{message}");

    // A group nobody serves (Dubbo's `group` attachment routes): SERVICE_NOT_FOUND.
    s.write_all(&request(8, SERVICE, "v", true, &["nobody"]))
        .unwrap();
    let (id, st, _) = answer(&read_frame(&mut s, &mut buf).expect("an answer"));
    assert_eq!((id, st), (8, status::SERVICE_NOT_FOUND));

    mesh.consumer.assert_alive();
    mesh.agent.assert_alive();
    drop(mesh);
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}

/// What a connection that is not a good Dubbo consumer gets: an error answer or a
/// closed connection, and the other connections are unharmed.
#[test]
fn bad_dubbo_input_gets_an_error_or_a_close_and_harms_no_one() {
    let _serial = serial();
    let mut mesh = Mesh::start();
    let mut good = mesh.connect();
    let mut good_buf = Vec::new();
    let mut check_good = |what: &str, id: i64| {
        good.write_all(&request(id, SERVICE, what, true, &[]))
            .unwrap();
        let (got, st, out) = answer(&read_frame(&mut good, &mut good_buf).expect("an answer"));
        assert_eq!((got, st), (id, status::OK), "after {what}");
        assert_eq!(
            out,
            Outcome::Value(Value::Int(string_hash_code(what))),
            "after {what}"
        );
    };
    check_good("before", 1);

    let closed = |s: &mut TcpStream| {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    };

    // Wrong magic: closed.
    let mut s = mesh.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed(&mut s), "wrong magic closes");
    check_good("wrong magic", 2);

    // A header announcing a body over --max-body: BAD_REQUEST, then closed.
    let mut s = mesh.connect();
    let mut head = Vec::new();
    dubbo::write_header(
        &mut head,
        dubbo::FLAG_REQUEST | dubbo::FLAG_TWO_WAY | dubbo::SERIALIZATION_HESSIAN2,
        0,
        9,
        1 << 20,
    );
    s.write_all(&head).unwrap();
    let mut buf = Vec::new();
    let (id, st, _) = answer(&read_frame(&mut s, &mut buf).expect("an answer"));
    assert_eq!((id, st), (9, status::BAD_REQUEST));
    assert!(closed(&mut s), "then closed");
    check_good("oversized", 3);

    // Another serialization: BAD_REQUEST naming it; the connection goes on.
    let mut s = mesh.connect();
    let mut fastjson = request(10, SERVICE, "x", true, &[]);
    fastjson[2] = (fastjson[2] & !dubbo::SERIALIZATION_MASK) | dubbo::SERIALIZATION_FASTJSON;
    s.write_all(&fastjson).unwrap();
    let mut buf = Vec::new();
    let (id, st, out) = answer(&read_frame(&mut s, &mut buf).expect("an answer"));
    assert_eq!((id, st), (10, status::BAD_REQUEST));
    let Outcome::Error { message, .. } = out else {
        panic!("an error");
    };
    assert!(message.contains("serialization id 6"), "{message}");
    s.write_all(&request(11, SERVICE, "same conn", true, &[]))
        .unwrap();
    let (id, st, _) = answer(&read_frame(&mut s, &mut buf).expect("an answer"));
    assert_eq!((id, st), (11, status::OK));

    // A request flagged as a response: closed.
    let mut s = mesh.connect();
    let mut flipped = request(12, SERVICE, "x", true, &[]);
    flipped[2] &= !dubbo::FLAG_REQUEST;
    s.write_all(&flipped).unwrap();
    assert!(closed(&mut s), "a response from a consumer closes");
    check_good("flagged as response", 4);

    // Garbage after a valid frame: the frame is answered, then closed.
    let mut s = mesh.connect();
    let mut both = request(13, SERVICE, "valid", true, &[]);
    both.extend_from_slice(b"\x00garbage after the frame\xff");
    s.write_all(&both).unwrap();
    let mut buf = Vec::new();
    let (id, st, _) = answer(&read_frame(&mut s, &mut buf).expect("an answer"));
    assert_eq!((id, st), (13, status::OK));
    assert!(closed(&mut s), "then closed");

    // A truncated body, then the end of the stream: closed.
    let mut s = mesh.connect();
    let whole = request(14, SERVICE, "truncated", true, &[]);
    s.write_all(&whole[..whole.len() - 5]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed(&mut s), "a truncated frame then FIN closes");

    // A malformed body (framing intact): BAD_REQUEST, the connection goes on.
    let mut s = mesh.connect();
    let mut bad = Vec::new();
    dubbo::write_header(
        &mut bad,
        dubbo::FLAG_REQUEST | dubbo::FLAG_TWO_WAY | dubbo::SERIALIZATION_HESSIAN2,
        0,
        15,
        3,
    );
    bad.extend_from_slice(&[0x05, b'a', b'b']);
    s.write_all(&bad).unwrap();
    let mut buf = Vec::new();
    let (id, st, _) = answer(&read_frame(&mut s, &mut buf).expect("an answer"));
    assert_eq!((id, st), (15, status::BAD_REQUEST));

    // A client gone with calls in flight, and one that never reads its answers.
    let mut gone = mesh.connect();
    for i in 0..100 {
        gone.write_all(&request(100 + i, SERVICE, "gone", true, &[]))
            .unwrap();
    }
    drop(gone);
    let mut deaf = mesh.connect();
    let mut burst = Vec::new();
    for i in 0..2000 {
        burst.extend(request(200 + i, SERVICE, &"d".repeat(1000), true, &[]));
    }
    let _ = deaf.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = deaf.write_all(&burst);
    // Once the consumer-agent has answered every call of the two (the deaf one's
    // answers wait in its output), the good connection is served as before. (While the
    // burst holds the provider-agent's 200 places, a call may be refused for capacity.)
    let end = Instant::now() + Duration::from_secs(10);
    while harness::metric(mesh.admin, "consumer_inflight") != Some(0.0) {
        assert!(
            Instant::now() < end,
            "calls of gone and deaf clients still in flight after 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    check_good("gone and deaf clients", 5);
    drop(deaf);

    mesh.consumer.assert_alive();
    mesh.agent.assert_alive();
    drop(mesh);
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}

/// The `timeout` attachment bounds the call end to end: SERVER_TIMEOUT after it, not
/// after the consumer-agent's own (longer) timeout; without it the call is answered.
#[test]
fn the_timeout_attachment_bounds_the_call() {
    let _serial = serial();
    let mesh = Mesh::with_latency(Duration::from_millis(400));
    let mut s = mesh.connect();
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    s.write_all(&request_with(
        1,
        SERVICE,
        "slow",
        true,
        &[],
        &[("timeout", Some("100"))],
    ))
    .unwrap();
    let (id, st, _) = answer(&read_frame(&mut s, &mut buf).expect("an answer"));
    assert_eq!((id, st), (1, status::SERVER_TIMEOUT));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_millis(390),
        "answered after {took:?}"
    );
    s.write_all(&request(2, SERVICE, "slow", true, &[]))
        .unwrap();
    let (id, st, out) = answer(&read_frame(&mut s, &mut buf).expect("an answer"));
    assert_eq!((id, st), (2, status::OK));
    assert_eq!(out, Outcome::Value(Value::Int(string_hash_code("slow"))));
    drop(mesh);
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}

/// Someone else's Dubbo client through the mesh: PyPI's `dubbo-ssl-python` (installed
/// by .ci/setup), which reads result flags 0, 1 and 2 only and sends Dubbo version
/// 2.4.10: the provider answers it so, since the caller's version reaches it.
#[test]
fn a_python_dubbo_client_calls_through_the_consumer_agent() {
    let _serial = serial();
    let mesh = Mesh::start();
    let script = r#"
import sys
from dubbo_ssl.client import DubboClient
host = sys.argv[1]
c = DubboClient('com.alibaba.dubbo.performance.demo.provider.IHelloService', None, version='0.0.0', host=host)
for s in ['hello', 'dubbo', '', 'ünïcödé 漢字']:
    print('ok', c.call('hash', [s], timeout=5))
try:
    DubboClient('com.example.Nobody', None, version='0.0.0', host=host).call('hash', ['x'], timeout=5)
    print('no error')
except Exception as e:
    print('error', str(e).strip().replace('\n', ' '))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &mesh.dubbo.to_string()])
        .output()
        .expect("python3 (installed by .ci/setup)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let want: Vec<String> = ["hello", "dubbo", "", "ünïcödé 漢字"]
        .iter()
        .map(|s| format!("ok {}", string_hash_code(s)))
        .collect();
    assert_eq!(&lines[..4], &want[..], "{stdout}");
    assert!(
        lines[4].starts_with("error") && lines[4].contains("com.example.Nobody"),
        "{stdout}"
    );
    drop(mesh);
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}

/// A stopping consumer-agent tells its Dubbo consumers as Dubbo's own server does: the
/// read-only event, then the connection closes (a call in flight is answered first).
#[test]
fn a_stopping_consumer_agent_sends_its_dubbo_consumers_the_read_only_event() {
    let _serial = serial();
    let mesh = Mesh::with_latency(Duration::from_millis(300));
    let mut s = mesh.connect();
    let mut buf = Vec::new();
    s.write_all(&request(1, SERVICE, "warm", true, &[]))
        .unwrap();
    answer(&read_frame(&mut s, &mut buf).expect("an answer"));
    // A call in flight, then the stop.
    s.write_all(&request(2, SERVICE, "in flight", true, &[]))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let pid = mesh.consumer.pid().to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(st.success());
    let mut want = Vec::new();
    dubbo::encode_readonly_event(&mut want, 0);
    assert_eq!(read_frame(&mut s, &mut buf).expect("the event"), want);
    let (id, st, out) = answer(&read_frame(&mut s, &mut buf).expect("the answer"));
    assert_eq!((id, st), (2, status::OK));
    assert_eq!(
        out,
        Outcome::Value(Value::Int(string_hash_code("in flight")))
    );
    assert_eq!(read_frame(&mut s, &mut buf), None, "then closed");
    drop(mesh);
    assert_eq!(live_children(), Vec::<String>::new(), "every child stopped");
}
