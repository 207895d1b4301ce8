//! Test helpers: a minimal Dubbo provider on std threads, a raw agent-protocol client,
//! and an in-process provider-agent.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codec::agent::{self, SignatureRef, Status};
use codec::dubbo::{self, Reply, Serialization};
use codec::hessian2::{self, Value};
use codec::Decoded;

pub const SERVICE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";

/// Appends a DEFINE of call id `id` as `SERVICE.method(String)`.
#[allow(dead_code)] // Not every test file defines methods of its own.
pub fn define_method(out: &mut Vec<u8>, id: u32, method: &str) {
    let sig = SignatureRef {
        service: SERVICE,
        method,
        parameter_types: "Ljava/lang/String;",
        version: "",
        group: "",
    };
    agent::encode_define(out, id, sig).expect("define");
}

/// How long a test waits for what should happen soon (a connection, a call seen).
pub const SOON: Duration = Duration::from_secs(5);

/// How the mock provider answers.
#[derive(Debug, Clone)]
pub enum Mode {
    /// hashCode of the first string argument, after the delay.
    Hash,
    /// A header status with this error text.
    Status(u8, String),
    /// A RuntimeException with this message.
    Exception(String),
    /// Never answer.
    Silent,
    /// A result value given as hessian2 bytes, written as they are (flag 1).
    RawValue(Vec<u8>),
}

#[derive(Debug)]
pub struct Behaviour {
    pub mode: Mode,
    pub delay: Duration,
}

/// A Dubbo provider on std threads: one thread per connection, one per delayed answer.
pub struct MockProvider {
    pub addr: SocketAddr,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// Every request frame received, whole.
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Heartbeat requests received.
    pub heartbeats: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl MockProvider {
    pub fn start(addr: &str, ser: Serialization) -> MockProvider {
        let listener = bind_retry(addr);
        let addr = listener.local_addr().unwrap();
        let behaviour = Arc::new(Mutex::new(Behaviour {
            mode: Mode::Hash,
            delay: Duration::ZERO,
        }));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let heartbeats = Arc::new(AtomicUsize::new(0));
        let h = heartbeats.clone();
        let (b, r, s, c) = (
            behaviour.clone(),
            received.clone(),
            stop.clone(),
            conns.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                c.lock().unwrap().push(stream.try_clone().unwrap());
                let (b, r, h) = (b.clone(), r.clone(), h.clone());
                std::thread::spawn(move || serve(stream, ser, b, r, h));
            }
        });
        MockProvider {
            addr,
            behaviour,
            received,
            heartbeats,
            stop,
            conns,
        }
    }

    pub fn set(&self, mode: Mode, delay: Duration) {
        *self.behaviour.lock().unwrap() = Behaviour { mode, delay };
    }

    /// Closes the listener and every connection.
    pub fn kill(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn bind_retry(addr: &str) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

fn serve(
    mut stream: TcpStream,
    ser: Serialization,
    b: Arc<Mutex<Behaviour>>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    heartbeats: Arc<AtomicUsize>,
) {
    let writer = Arc::new(Mutex::new(stream.try_clone().unwrap()));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let (frame_bytes, consumed) = match dubbo::decode_frame(&buf) {
                Ok(Decoded::Complete { consumed, .. }) => (buf[..consumed].to_vec(), consumed),
                Ok(Decoded::Incomplete) => break,
                Err(e) => panic!("mock provider: bad frame {e}"),
            };
            buf.drain(..consumed);
            let Ok(Decoded::Complete { msg: frame, .. }) = dubbo::decode_frame(&frame_bytes) else {
                unreachable!()
            };
            let id = frame.id();
            if frame.is_event() {
                if frame.is_request() && frame.is_two_way() {
                    heartbeats.fetch_add(1, Ordering::SeqCst);
                    let mut out = Vec::new();
                    dubbo::encode_heartbeat_reply(&mut out, id);
                    let _ = writer.lock().unwrap().write_all(&out);
                }
                continue;
            }
            received.lock().unwrap().push(frame_bytes.clone());
            let body = dubbo::decode_request_body(frame.serialization_id(), frame.body).unwrap();
            let (mode, delay) = {
                let g = b.lock().unwrap();
                (g.mode.clone(), g.delay)
            };
            let w = writer.clone();
            let answer = move || {
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                let mut out = Vec::new();
                match mode {
                    Mode::Silent => return,
                    Mode::Hash => {
                        let s = body.args.first().and_then(Value::as_str).unwrap_or("");
                        let v = Value::Int(codec::java::string_hash_code(s));
                        dubbo::encode_response(
                            &mut out,
                            id,
                            ser,
                            dubbo::status::OK,
                            &Reply::Value(&v),
                            &[],
                        )
                        .unwrap();
                    }
                    Mode::Status(st, text) => {
                        dubbo::encode_response(&mut out, id, ser, st, &Reply::Error(&text), &[])
                            .unwrap();
                    }
                    Mode::RawValue(bytes) => {
                        // Encode a null result, then put the value in place of its flag.
                        dubbo::encode_response(
                            &mut out,
                            id,
                            ser,
                            dubbo::status::OK,
                            &Reply::Null,
                            &[],
                        )
                        .unwrap();
                        out.truncate(16);
                        out.push(0x91); // flag 1: a value
                        out.extend_from_slice(&bytes);
                        let len = (out.len() - 16) as u32;
                        out[12..16].copy_from_slice(&len.to_be_bytes());
                    }
                    Mode::Exception(msg) => {
                        dubbo::encode_response(
                            &mut out,
                            id,
                            ser,
                            dubbo::status::OK,
                            &Reply::Exception(&msg),
                            &[],
                        )
                        .unwrap();
                    }
                }
                let _ = w.lock().unwrap().write_all(&out);
            };
            if delay.is_zero() {
                answer();
            } else {
                std::thread::spawn(answer);
            }
        }
    }
}

/// A raw agent-protocol client.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// One decoded response.
#[derive(Debug, Clone, PartialEq)]
pub struct Resp {
    pub id: u64,
    pub status: Status,
    pub payload: Vec<u8>,
}

impl Resp {
    pub fn int(&self) -> i32 {
        assert_eq!(
            self.status,
            Status::Ok,
            "{:?}",
            String::from_utf8_lossy(&self.payload)
        );
        match hessian2::decode(&self.payload).unwrap() {
            Decoded::Complete {
                msg: Value::Int(i),
                consumed,
            } if consumed == self.payload.len() => i,
            other => panic!("not one int: {other:?}"),
        }
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
    /// The payload as one whole hessian2 value (an OK result or an exception summary).
    pub fn value(&self) -> Value {
        match hessian2::decode(&self.payload).unwrap() {
            Decoded::Complete { msg, consumed } if consumed == self.payload.len() => msg,
            other => panic!("not one value: {other:?}"),
        }
    }
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// DEFINE call id 1 = hash(String) of SERVICE.
    pub fn define_hash(&mut self) {
        let mut out = Vec::new();
        define_method(&mut out, 1, "hash");
        self.stream.write_all(&out).unwrap();
    }

    pub fn send_hash(&mut self, id: u64, s: &str, timeout_ms: u32) {
        let out = hash_request(id, s, timeout_ms);
        self.stream.write_all(&out).unwrap();
    }

    pub fn call_hash(&mut self, id: u64, s: &str) -> Resp {
        self.send_hash(id, s, 5000);
        self.read()
    }

    pub fn read(&mut self) -> Resp {
        let mut chunk = [0u8; 16384];
        loop {
            match agent::decode(&self.buf).unwrap() {
                Decoded::Complete { msg, consumed } => {
                    let r = match msg {
                        agent::Frame::Response(r) => Resp {
                            id: r.id,
                            status: r.status,
                            payload: r.payload.to_vec(),
                        },
                        other => panic!("unexpected frame {other:?}"),
                    };
                    self.buf.drain(..consumed);
                    return r;
                }
                Decoded::Incomplete => {
                    let n = self.stream.read(&mut chunk).expect("read response");
                    assert!(n > 0, "agent closed the connection");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    /// Whether the agent closed the connection (EOF or reset) within the timeout.
    pub fn is_closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    }
}

pub fn hash_request(id: u64, s: &str, timeout_ms: u32) -> Vec<u8> {
    let mut args = Vec::new();
    hessian2::write_string(&mut args, s);
    let mut out = Vec::new();
    agent::encode_request(&mut out, id, 1, timeout_ms, &[], &args).unwrap();
    out
}

/// An agent on port 0 in front of `provider`.
/// A provider-agent whose "provider" is a bare listener: the agent, and the connection
/// it opened to the listener, to play the provider's side by hand.
pub fn agent_with_bare_provider() -> (agent_provider::Running, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let agent = agent_provider::start(agent_config(
        listener.local_addr().unwrap(),
        agent_provider::config::SerializationArg::Hessian2,
    ))
    .unwrap();
    let (s, _) = listener.accept().unwrap();
    (agent, s)
}

pub fn agent_config(
    provider: SocketAddr,
    ser: agent_provider::config::SerializationArg,
) -> agent_provider::Config {
    let mut c = agent_provider::Config::new(provider, vec![SERVICE.into()]);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.serialization = ser;
    c.drain_secs = 2;
    c
}

pub fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A mock provider speaking `ser` and a provider-agent in front of it (speaking
/// `arg`), once the agent has its provider connection.
pub fn provider_and_agent(
    ser: Serialization,
    arg: agent_provider::config::SerializationArg,
) -> (MockProvider, agent_provider::Running) {
    init_log();
    let provider = MockProvider::start("127.0.0.1:0", ser);
    let agent = agent_provider::start(agent_config(provider.addr, arg)).unwrap();
    let m = agent.metrics().clone();
    test_support::wait::assert_eventually("provider connection", SOON, || m.provider_up());
    (provider, agent)
}
