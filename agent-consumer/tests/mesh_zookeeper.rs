//! The mesh in a ZooKeeper deployment, in Dubbo's layout, against someone else's code on
//! both sides: the npm `sofa-rpc-node` provider registering itself through its own
//! ZookeeperRegistry, and its client discovering through it (`tests/peers`, `--zk`).
//!
//! - A plain sofa provider registered in ZooKeeper is found and called by the
//!   consumer-agent (HTTP and Dubbo in), with no provider-agent.
//! - The sofa client reading ZooKeeper finds the provider-agent's Dubbo listener and gets
//!   the provider's own answers through it.
//! - A service half in the mesh and half out: callers see one pool.
//!
//! A real ZooKeeper (Debian's `zookeeperd`, installed by `.ci/setup`) runs on a free
//! loopback port; without it, or without node and the peers, these tests fail.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clap::Parser;
use codec::java::string_hash_code;
use serde_json::{json, Value};
use test_support::net::free_port;
use test_support::zk::ZooKeeper;
use util::*;

const RACE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";
const SHAPES: &str = "com.example.ShapeService";

/// The tests share two busy cores (node, java): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers")
}

fn zookeeper() -> ZooKeeper {
    ZooKeeper::start().expect("ZooKeeper (zookeeperd) is required: run `bash .ci/setup`")
}

/// `127.0.0.1:PORT/dubbo`: how sofa-rpc-node names a ZooKeeper and its root.
fn sofa_zk(zk: &ZooKeeper) -> String {
    format!("{}/dubbo", zk.connect_string())
}

/// The sofa provider on `port`, registered in ZooKeeper by its own registry code once it
/// says so. Killed on drop.
struct SofaProvider(Child);

impl Drop for SofaProvider {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sofa_provider_in(zk: &ZooKeeper, port: u16) -> SofaProvider {
    let mut child = Command::new("node")
        .args(["provider.js", &port.to_string(), "--zk", &sofa_zk(zk)])
        .current_dir(peers_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node is required for this test: run `bash .ci/setup`");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("provider output");
    assert!(line.contains("registered"), "provider said {line:?}");
    SofaProvider(child)
}

/// Runs `node client.js TARGET... args` with `stdin`; its JSON lines once it exits 0.
fn run_client(target: &[&str], args: &[&str], stdin: &str) -> Vec<Value> {
    let mut child = Command::new("node")
        .arg("client.js")
        .args(target)
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
        "client.js {target:?} {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn step(service: &str, method: &str, args: Value) -> Value {
    json!({ "service": service, "version": "0.0.0", "group": "", "method": method, "args": args })
}

/// Calls of every kind the tests compare: values, a POJO, an exception, attachments.
fn steps() -> Vec<Value> {
    let mut attach = step(SHAPES, "attachment", json!(["trace-id"]));
    attach["attachments"] = json!({ "trace-id": "t-zk" });
    vec![
        step(RACE, "hash", json!(["hello"])),
        step(RACE, "hash", json!(["zookeeper 你好"])),
        step(SHAPES, "upper", json!(["mesh"])),
        step(
            SHAPES,
            "older",
            json!([{ "$class": "com.example.User", "$": { "name": "Ann", "age": 41 } }]),
        ),
        step(SHAPES, "reject", json!(["no such shape"])),
        step(SHAPES, "tagged", json!(["hi"])),
        attach,
    ]
}

/// POSTs a JSON invocation of `method(String)` to the consumer-agent: (status, body).
fn http_call(addr: SocketAddr, service: &str, method: &str, arg: &str) -> (u16, String) {
    let body = format!(
        r#"{{"interface":"{service}","method":"{method}","parameterTypes":["java.lang.String"],"arguments":["{arg}"]}}"#
    );
    let raw = format!(
        "POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(addr, raw.as_bytes(), 1).remove(0);
    (answer.status, answer.body)
}

/// Calls until one is answered 200 (discovery is asynchronous), then returns it.
fn http_until_ok(addr: SocketAddr, service: &str, method: &str, arg: &str) -> String {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = http_call(addr, service, method, arg);
        if status == 200 {
            return body;
        }
        assert!(Instant::now() < end, "never answered: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn provider_agent(provider: u16, registry: &str, extra: &[&str]) -> agent_provider::Running {
    let provider = format!("127.0.0.1:{provider}");
    let mut args = vec![
        "provider-agent",
        "--listen",
        "127.0.0.1:0",
        "--provider",
        &provider,
        "--registry",
        registry,
        "--service",
        RACE,
        "--service",
        SHAPES,
    ];
    args.extend_from_slice(extra);
    agent_provider::start(agent_provider::Config::parse_from(args)).expect("provider-agent")
}

#[test]
fn a_sofa_provider_registered_in_zookeeper_is_called_by_the_consumer_agent() {
    let _serial = serial();
    let zk = zookeeper();
    let port = free_port().expect("a free port");
    let _provider = sofa_provider_in(&zk, port);
    // Zero-config: nothing but the registry is named; services are found on first call.
    let running = consumer_with(&zk.url(), &["--dubbo-listen", "127.0.0.1:0"]);
    wait_ready(&running);

    let body = http_until_ok(running.http_addr(), RACE, "hash", "hello");
    assert_eq!(body, string_hash_code("hello").to_string());
    let body = http_until_ok(running.http_addr(), SHAPES, "upper", "zk");
    assert_eq!(body, r#""ZK""#);

    // A Dubbo consumer through the consumer-agent gets what the provider answers itself.
    let input = Value::from(steps()).to_string();
    let direct = format!("127.0.0.1:{port}");
    let want = run_client(&[&direct], &[], &input);
    let dubbo = running.dubbo_addr().expect("dubbo listener").to_string();
    let got = run_client(&[&dubbo], &[], &input);
    assert_eq!(got, want, "through the mesh (left) vs directly (right)");
    assert_eq!(got[0]["value"], json!(99162322));
    assert_eq!(
        got[4]["error"]["name"],
        json!("com.example.ShapeException"),
        "{}",
        got[4]
    );
    assert_eq!(got[6]["value"], json!("t-zk"));
    running.stop();
}

#[test]
fn the_sofa_client_finds_the_provider_agent_in_zookeeper_and_calls_through_it() {
    let _serial = serial();
    let zk = zookeeper();
    // Two identical providers: one called directly, one behind a provider-agent that
    // registers its Dubbo listener in ZooKeeper (the provider itself registers nothing).
    let direct_port = free_port().expect("a free port");
    let _direct = start_peer(direct_port);
    let meshed_port = free_port().expect("a free port");
    let _meshed = start_peer(meshed_port);
    let agent = provider_agent(meshed_port, &zk.url(), &["--dubbo-listen", "127.0.0.1:0"]);

    let input = Value::from(steps()).to_string();
    let want = run_client(&[&format!("127.0.0.1:{direct_port}")], &[], &input);
    let got = run_client(&["--zk", &sofa_zk(&zk)], &[], &input);
    assert_eq!(got, want, "found in ZooKeeper (left) vs directly (right)");
    assert_eq!(got[1]["value"], json!(string_hash_code("zookeeper 你好")));
    agent.stop();
}

#[test]
fn a_service_half_in_the_mesh_and_half_out_of_it_is_one_pool_in_zookeeper() {
    let _serial = serial();
    let zk = zookeeper();
    // Out of the mesh: a sofa provider registering itself. In: a provider-agent in
    // front of another.
    let out_port = free_port().expect("a free port");
    let _out = sofa_provider_in(&zk, out_port);
    let meshed_port = free_port().expect("a free port");
    let _meshed = start_peer(meshed_port);
    let agent = provider_agent(meshed_port, &zk.url(), &[]);
    let running = consumer_with(&zk.url(), &["--service", SHAPES, "--lb", "wrr"]);
    wait_ready(&running);
    // Both members known (and the provider-agent's connection verified) before counting.
    let end = Instant::now() + Duration::from_secs(15);
    let up = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("consumer_upstream_up{") && l.ends_with(" 1"))
            .count()
    };
    while up(&running.metrics().render()) < 2 {
        assert!(Instant::now() < end, "{}", running.metrics().render());
        std::thread::sleep(Duration::from_millis(50));
    }
    http_until_ok(running.http_addr(), SHAPES, "upper", "warm");
    let base = |port: u16| {
        let input = Value::from(vec![step(SHAPES, "calls", json!([]))]).to_string();
        let lines = run_client(&[&format!("127.0.0.1:{port}")], &[], &input);
        lines[0]["value"].as_i64().expect("calls() is a number")
    };
    let (meshed0, out0) = (base(meshed_port), base(out_port));
    for _ in 0..40 {
        let (status, body) = http_call(running.http_addr(), SHAPES, "upper", "pool");
        assert_eq!((status, body.as_str()), (200, r#""POOL""#));
    }
    // Each count includes the earlier calls() itself.
    let (meshed, out) = (base(meshed_port) - meshed0 - 1, base(out_port) - out0 - 1);
    assert!(meshed > 0 && out > 0, "meshed {meshed}, unmeshed {out}");
    assert_eq!(meshed + out, 40);
    running.stop();
    agent.stop();
}
