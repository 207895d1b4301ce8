//! Dubbo in, against a real Dubbo consumer written by someone else: the npm
//! `sofa-rpc-node` RpcClient with `dubbo-remoting` (hessian2), `tests/peers/client.js`,
//! calling the consumer-agent's `--dubbo-listen` port as it would call a provider.
//!
//! sofa-rpc-node client -> consumer-agent (Dubbo) -> provider-agent -> sofa-rpc-node
//! provider (`tests/peers/provider.js`).
//!
//! The same client also calls a second, identical provider directly: the mesh relays
//! the provider's answers byte for byte, so both runs must print the same lines (each
//! line carries the answer's raw body). `.ci/setup` installs node and the peers; without
//! them this test fails, it never skips.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clap::Parser;
use codec::java::string_hash_code;
use serde_json::{json, Value};
use test_support::net::free_port;
use util::*;

const RACE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";
const SHAPES: &str = "com.example.ShapeService";
const GREETER: &str = "com.example.Greeter";

/// The tests share two busy cores (and node): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers")
}

/// The arguments of a provider-agent in front of the peer on `port`, registering
/// `services` in `registry`.
fn provider_agent_args(port: u16, registry: &str, services: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "provider-agent",
        "--listen",
        "127.0.0.1:0",
        "--provider",
        &format!("127.0.0.1:{port}"),
        "--registry",
        registry,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for s in services {
        args.extend(["--service".to_owned(), s.to_string()]);
    }
    args
}

fn provider_agent(port: u16, registry: &str, services: &[&str]) -> agent_provider::Running {
    let args = provider_agent_args(port, registry, services);
    agent_provider::start(agent_provider::Config::parse_from(args)).expect("provider-agent")
}

/// A consumer-agent taking Dubbo on a free port, watching `services`.
fn dubbo_consumer(registry: &str, services: &[&str]) -> (agent_consumer::Running, SocketAddr) {
    let mut flags = vec!["--dubbo-listen", "127.0.0.1:0"];
    for s in services {
        flags.extend(["--service", s]);
    }
    let running = consumer_with(registry, &flags);
    let dubbo = running
        .dubbo_addr()
        .expect("--dubbo-listen gives a Dubbo address");
    (running, dubbo)
}

/// POSTs a JSON invocation to the consumer-agent's HTTP port: (status, body).
fn http_json(addr: SocketAddr, body: &str) -> (u16, String) {
    let raw = format!(
        "POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(addr, raw.as_bytes(), 1).remove(0);
    (answer.status, answer.body)
}

/// Waits until the consumer-agent routes calls of `service` (version, group) to a
/// provider: anything but 503. The probe calls `method`, which must not change what
/// the tests check afterwards (`ShapeService.calls()` counts only its own methods, so a
/// method the provider does not have is a harmless probe).
fn wait_routed(running: &agent_consumer::Running, service: &str, version: &str, group: &str) {
    let body = format!(
        r#"{{"interface":"{service}","method":"probeNoSuchMethod","parameterTypes":[],"arguments":[],"version":"{version}","group":"{group}"}}"#
    );
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = http_json(running.http_addr(), &body);
        if status != 503 {
            return;
        }
        assert!(
            Instant::now() < end,
            "{service} {version}/{group} never became reachable: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `node client.js addr args...` with `stdin`; its JSON lines once it exits 0.
fn run_client(addr: SocketAddr, args: &[&str], stdin: &str) -> Vec<Value> {
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
fn step(service: &str, version: &str, group: &str, method: &str, args: Value) -> Value {
    json!({ "service": service, "version": version, "group": group, "method": method, "args": args })
}

fn shape(method: &str, args: Value) -> Value {
    step(SHAPES, "0.0.0", "", method, args)
}

fn user(name: &str, age: i32) -> Value {
    json!({ "$class": "com.example.User", "$": { "name": name, "age": age } })
}

/// The calls both runs make: every shape of `tests/peers/provider.js`, exceptions,
/// versions and groups, attachments both ways, a heartbeat.
fn steps() -> Vec<Value> {
    let int = |v: i64| json!({ "$class": "int", "$": v });
    let long = |v: i64| json!({ "$class": "long", "$": v });
    let mut attach = shape("attachment", json!(["trace-id"]));
    attach["attachments"] = json!({ "trace-id": "t-42 你好", "other": "x" });
    let mut absent = shape("attachment", json!(["missing"]));
    absent["attachments"] = json!({ "trace-id": "t-43" });
    vec![
        // 0..3: the race's hash.
        step(RACE, "0.0.0", "", "hash", json!(["hello"])),
        step(RACE, "0.0.0", "", "hash", json!([""])),
        step(RACE, "0.0.0", "", "hash", json!(["mesh 你好 😀 +&=%"])),
        step(RACE, "0.0.0", "", "hash", json!(["abc123XYZ".repeat(200)])),
        // 4..5: a POJO in, a POJO out.
        shape("older", json!([user("Ann 你好", 41)])),
        shape("older", json!([user("Bo", 0)])),
        // 6..7: lists of POJOs.
        shape(
            "byAge",
            json!([{ "$class": "java.util.List", "$": [user("ann", 30), user("bob", 50), user("cy", 40)] }]),
        ),
        shape("byAge", json!([{ "$class": "java.util.List", "$": [] }])),
        // 8: nested maps.
        shape(
            "describe",
            json!([{ "$class": "java.util.Map", "$": { "a": { "b": { "c": 1 }, "d": [1, "two", null] }, "e": "x", "f": true } }]),
        ),
        // 9..10: null in, null out; a string.
        shape(
            "upper",
            json!([{ "$class": "java.lang.String", "$": null }]),
        ),
        shape("upper", json!(["mesh ok"])),
        // 11: no arguments.
        shape("calls", json!([])),
        // 12..13: dates.
        shape("dateOf", json!([long(1527854400123)])),
        shape("dateOf", json!([long(0)])),
        // 14..15: enums out and in.
        shape("color", json!(["RED"])),
        shape(
            "paint",
            json!([{ "$class": "com.example.Color", "$": { "name": "GREEN" }, "isEnum": true }]),
        ),
        // 16..19: overloads, chosen by the descriptor.
        shape("add", json!([int(2), int(3)])),
        shape("add", json!(["ab", "cd"])),
        shape("add", json!([long(4_000_000_000), long(5)])),
        shape(
            "add",
            json!([{ "$class": "java.util.List", "$": [int(1), int(2), int(3)] }]),
        ),
        // 20..22: exceptions: a thrown error (status 80), a returned exception, one with
        // causes.
        shape("fail", json!(["boom"])),
        shape("reject", json!(["no such shape"])),
        shape("rejectWithCause", json!(["deep"])),
        // 23..24: request attachments reach the provider.
        attach,
        absent,
        // 25..27: response attachments reach the client (value, exception, null).
        shape("tagged", json!(["hi"])),
        shape("tagged", json!(["reject"])),
        shape("tagged", json!([null])),
        // 28..30: versions and groups.
        step(GREETER, "1.0.0", "", "greet", json!(["ann"])),
        step(GREETER, "2.0.0", "", "greet", json!(["ann"])),
        step(GREETER, "2.0.0", "blue", "greet", json!(["ann"])),
        // 31: the library's heartbeat.
        json!({ "heartbeat": true }),
        // 32: after it, the connection still calls.
        step(RACE, "0.0.0", "", "hash", json!(["after heartbeat"])),
    ]
}

/// The services the provider-agent registers for [`steps`].
const SERVED: [&str; 5] = [
    RACE,
    SHAPES,
    "com.example.Greeter:1.0.0",
    "com.example.Greeter:2.0.0",
    "blue/com.example.Greeter:2.0.0",
];

#[test]
fn sofa_rpc_node_consumer_through_the_mesh_gets_what_the_provider_answers() {
    let _serial = serial();
    // Two identical providers: one called directly, one through the mesh.
    let direct_port = free_port().expect("a free port");
    let _direct = start_peer(direct_port);
    let mesh_port = free_port().expect("a free port");
    let _meshed = start_peer(mesh_port);
    let registry = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", registry.path().display());
    let agent = provider_agent(mesh_port, &url, &SERVED);
    let (running, dubbo) = dubbo_consumer(&url, &[RACE, SHAPES, GREETER]);
    wait_ready(&running);
    wait_routed(&running, RACE, "", "");
    wait_routed(&running, SHAPES, "", "");
    wait_routed(&running, GREETER, "1.0.0", "");
    wait_routed(&running, GREETER, "2.0.0", "blue");

    let all = steps();
    let input = serde_json::to_string(&all).expect("steps");
    let direct_addr = SocketAddr::from(([127, 0, 0, 1], direct_port));
    let want = run_client(direct_addr, &[], &input);
    let got = run_client(dubbo, &[], &input);
    assert_eq!(want.len(), all.len(), "one line per step: {want:#?}");
    assert_eq!(got.len(), want.len(), "one line per step: {got:#?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "through the mesh (left) vs directly (right)");
    }

    // What the lines say (the same either way, as checked above).
    let value = |i: usize| &got[i]["value"];
    let ok = |i: usize| {
        assert_eq!(got[i]["status"], json!(20), "step {i}: {}", got[i]);
        assert_eq!(got[i]["error"], Value::Null, "step {i}: {}", got[i]);
    };
    for i in (0..20).chain(23..26).chain(27..31).chain([32]) {
        ok(i);
    }
    assert_eq!(value(0), &json!(99162322));
    assert_eq!(value(1), &json!(0));
    assert_eq!(value(2), &json!(string_hash_code("mesh 你好 😀 +&=%")));
    assert_eq!(value(3), &json!(string_hash_code(&"abc123XYZ".repeat(200))));
    assert_eq!(value(4), &json!({ "name": "Ann 你好", "age": 42 }));
    assert_eq!(value(5), &json!({ "name": "Bo", "age": 1 }));
    assert_eq!(
        value(6),
        &json!([{ "name": "BOB", "age": 50 }, { "name": "CY", "age": 40 }, { "name": "ANN", "age": 30 }])
    );
    assert_eq!(value(7), &json!([]));
    assert_eq!(
        value(8),
        &json!({ "keys": [{ "a": [{ "b": ["c"] }, "d"] }, "e", "f"],
                 "echo": { "a": { "b": { "c": 1 }, "d": [1, "two", null] }, "e": "x", "f": true } })
    );
    assert_eq!(value(9), &Value::Null);
    assert_eq!(value(10), &json!("MESH OK"));
    assert_eq!(value(11), &json!(7), "calls() before it: steps 4..10");
    assert_eq!(value(12), &json!("2018-06-01T12:00:00.123Z"));
    assert_eq!(value(13), &json!("1970-01-01T00:00:00.000Z"));
    assert_eq!(value(14), &json!({ "name": "RED" }));
    assert_eq!(value(15), &json!("painted GREEN"));
    assert_eq!(value(16), &json!(5));
    assert_eq!(value(17), &json!("abcd"));
    assert_eq!(value(18), &json!(4_000_000_005i64));
    assert_eq!(value(19), &json!(6));

    // Exceptions: the provider's status and message, or its exception class, message and
    // causes.
    assert_eq!(got[20]["status"], json!(80), "{}", got[20]);
    assert_eq!(
        got[20]["error"],
        json!({ "name": "Error", "message": "boom" })
    );
    assert_eq!(got[21]["status"], json!(20), "{}", got[21]);
    assert_eq!(
        got[21]["error"],
        json!({ "name": "com.example.ShapeException", "message": "no such shape" })
    );
    assert_eq!(
        got[22]["error"],
        json!({ "name": "com.example.ShapeException", "message": "deep", "causes": [
            { "name": "java.io.IOException", "message": "disk gone" },
            { "name": "java.net.ConnectException", "message": "refused" },
        ] })
    );

    // Attachments: the client's reached the provider; the provider's reached the client.
    assert_eq!(value(23), &json!("t-42 你好"));
    assert_eq!(value(24), &Value::Null);
    let tags = |echo: &str| json!({ "X-Trace": "t-9", "bad key": "dropped", "crlf": "a\r\nb", "dubbo": "2.0.2", "echo": echo });
    assert_eq!(value(25), &json!("HI"));
    assert_eq!(got[25]["attachments"], tags("hi"));
    assert_eq!(
        got[26]["error"],
        json!({ "name": "com.example.ShapeException", "message": "tagged" })
    );
    assert_eq!(got[26]["attachments"], tags("reject"));
    assert_eq!(value(27), &Value::Null);
    assert_eq!(got[27]["attachments"], tags("null"));

    // Versions and groups.
    assert_eq!(value(28), &json!("1.0.0/: hello ann"));
    assert_eq!(value(29), &json!("2.0.0/: hello ann"));
    assert_eq!(value(30), &json!("2.0.0/blue: hello ann"));

    // The heartbeat got Dubbo's reply: same id, event flag, status OK, null.
    assert_eq!(got[31]["heartbeat"]["same_id"], json!(true), "{}", got[31]);
    // da bb | 22: event, hessian2 | 20: OK | id (zeroed here) | body length 1 | N
    assert_eq!(
        got[31]["heartbeat"]["frame"],
        json!("2rsiFAAAAAAAAAAAAAAAAU4="),
        "{}",
        got[31]
    );
    assert_eq!(value(32), &json!(string_hash_code("after heartbeat")));

    // What only the mesh answers: calls no provider serves, as Dubbo's SERVICE_NOT_FOUND
    // (60) naming what was asked. sofa-rpc-node's default group, SOFA, is such a call.
    let unserved = vec![
        step(GREETER, "3.0.0", "", "greet", json!(["ann"])),
        step(GREETER, "1.0.0", "blue", "greet", json!(["ann"])),
        step("com.example.Nobody", "0.0.0", "", "greet", json!(["ann"])),
        step(RACE, "0.0.0", "SOFA", "hash", json!(["hello"])),
        step(RACE, "0.0.0", "", "hash", json!(["still fine"])),
    ];
    let lines = run_client(dubbo, &[], &Value::from(unserved.clone()).to_string());
    assert_eq!(lines.len(), unserved.len(), "{lines:#?}");
    for (i, what) in ["3.0.0", "blue", "com.example.Nobody", "SOFA"]
        .iter()
        .enumerate()
    {
        let line = &lines[i];
        assert_eq!(line["status"], json!(60), "step {i}: {line}");
        let message = line["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(what), "step {i}: {line}");
    }
    assert_eq!(lines[4]["value"], json!(string_hash_code("still fine")));

    running.stop();
    agent.stop();
}

#[test]
fn a_thousand_calls_pipelined_on_one_sofa_connection_are_all_answered_right() {
    let _serial = serial();
    let port = free_port().expect("a free port");
    let _peer = start_peer(port);
    let registry = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", registry.path().display());
    let agent = provider_agent(port, &url, &[RACE]);
    let (running, dubbo) = dubbo_consumer(&url, &[RACE]);
    wait_ready(&running);
    wait_routed(&running, RACE, "", "");

    let lines = run_client(dubbo, &["pipeline", "1000"], "");
    let (summary, calls) = lines.split_last().expect("lines");
    assert_eq!(calls.len(), 1000, "{summary}");
    let mut seen = vec![false; 1000];
    for line in calls {
        let i = line["i"].as_u64().expect("i") as usize;
        assert_eq!(
            line["value"],
            json!(string_hash_code(&format!("p{i}"))),
            "{line}"
        );
        assert!(!std::mem::replace(&mut seen[i], true), "answered once: {i}");
    }
    let summary = &summary["pipeline"];
    assert_eq!(summary["ok"], json!(1000), "{summary}");
    // One connection, opened once; every call was sent on it before the first answer
    // was read.
    assert_eq!(summary["connects"], json!(1), "{summary}");
    assert_eq!(summary["connections"], json!(1), "{summary}");
    assert_eq!(summary["peak_outstanding"], json!(1000), "{summary}");

    running.stop();
    agent.stop();
}

/// The environment variable that makes [`provider_agent_child`] a provider-agent
/// process: the agent's arguments as a JSON array.
const CHILD_ENV: &str = "DUBBO_MESH_TEST_PROVIDER_AGENT_ARGS";

/// Not a test of its own: when this test binary is started with [`CHILD_ENV`] set, this
/// is a provider-agent that runs until it is killed (so a test can kill it with
/// SIGKILL, as a crash would); otherwise it does nothing.
#[test]
fn provider_agent_child() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let args: Vec<String> = serde_json::from_str(&args).expect("agent arguments");
    let running =
        agent_provider::start(agent_provider::Config::parse_from(args)).expect("provider-agent");
    println!("child provider-agent on {}", running.agent_addr());
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// A provider-agent in a child process, killed (SIGKILL) on drop if still running.
struct ChildAgent(Child);

impl ChildAgent {
    fn start(args: &[String]) -> ChildAgent {
        let exe = std::env::current_exe().expect("this test binary");
        let mut child = Command::new(exe)
            .args([
                "provider_agent_child",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(
                CHILD_ENV,
                serde_json::to_string(args).expect("agent arguments"),
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the child provider-agent");
        let stdout = child.stdout.take().expect("stdout");
        // Its output is read on a thread (to the end, so it never blocks on a full pipe);
        // the agent has started once it says so.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("child provider-agent on") {
                    let _ = tx.send(());
                }
            }
        });
        let mut agent = ChildAgent(child);
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            agent.kill();
            panic!("the child provider-agent did not start");
        }
        agent
    }

    /// SIGKILL, and reaped (so the file registry sees its process gone).
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the client's stream printed, as it came.
enum Line {
    Ok,
    Failed(Value),
    Summary(Value),
}

/// The stream's lines read so far.
struct Seen {
    rx: mpsc::Receiver<Line>,
    oks: usize,
    failed: Vec<Value>,
    end: Instant,
}

impl Seen {
    /// Reads lines until `done(answered so far)`; failures are collected.
    fn read_until(&mut self, what: &str, mut done: impl FnMut(usize) -> bool) {
        while !done(self.oks) {
            let left = self.end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.min(Duration::from_secs(10))) {
                Ok(Line::Ok) => self.oks += 1,
                Ok(Line::Failed(v)) => self.failed.push(v),
                Ok(Line::Summary(v)) => panic!("the stream ended early: {v}"),
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "{what}: no answers ({} so far, failed {:?})",
                    self.oks, self.failed
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("{what}: the client's output ended, or a value was wrong (see above)")
                }
            }
        }
    }
}

#[test]
fn a_provider_agent_killed_mid_run_fails_only_the_calls_in_flight_on_it() {
    let _serial = serial();
    const CALLERS: usize = 8;
    let port = free_port().expect("a free port");
    let _peer = start_peer(port);
    let registry = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", registry.path().display());
    // Agent A, in its own process, is the only one at first; B joins later.
    let mut a = ChildAgent::start(&provider_agent_args(port, &url, &[RACE]));
    let (running, dubbo) = dubbo_consumer(&url, &[RACE]);
    wait_ready(&running);
    wait_routed(&running, RACE, "", "");

    let mut client = Command::new("node")
        .arg("client.js")
        .arg(dubbo.to_string())
        .args(["stream", &CALLERS.to_string()])
        .current_dir(peers_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node is required for this test: run `bash .ci/setup`");
    let stdin = client.stdin.take().expect("stdin");
    let stdout = client.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            let msg = if v.get("stream").is_some() {
                Line::Summary(v)
            } else if v.get("error").is_some() {
                Line::Failed(v)
            } else {
                let i = v["i"].as_u64().expect("i") as usize;
                assert_eq!(v["value"], json!(string_hash_code(&format!("s{i}"))), "{v}");
                Line::Ok
            };
            if tx.send(msg).is_err() {
                break;
            }
        }
    });
    let mut seen = Seen {
        rx,
        oks: 0,
        failed: Vec::new(),
        end: Instant::now() + Duration::from_secs(60),
    };

    // Through A alone, then through A and B.
    seen.read_until("through A", |oks| oks >= 300);
    let b = provider_agent(port, &url, &[RACE]);
    seen.read_until("through B too", |_| b.metrics().requests() >= 300);
    let before_kill = seen.oks;
    let failed_before_kill = seen.failed.len();
    let b_before_kill = b.metrics().requests();
    a.kill();
    // After the kill: B takes every call.
    seen.read_until("after A was killed", |oks| oks >= before_kill + 2000);
    drop(stdin);
    let summary = loop {
        match seen.rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Line::Ok) => seen.oks += 1,
            Ok(Line::Failed(v)) => seen.failed.push(v),
            Ok(Line::Summary(v)) => break v,
            Err(_) => panic!("the client never finished its stream"),
        }
    };
    let status = client.wait().expect("client exit");
    assert!(status.success(), "client.js stream: {status}");
    reader.join().expect("reader");
    let Seen { oks, failed, .. } = seen;

    assert_eq!(
        failed_before_kill, 0,
        "nothing failed before the kill: {failed:#?}"
    );
    // At most the calls in flight when A died fail: no more than the client's callers.
    assert!(
        failed.len() <= CALLERS,
        "{} calls failed, more than the {CALLERS} that can be in flight: {failed:#?}",
        failed.len()
    );
    // Each failed call got an answer from the mesh: a Dubbo error status and a message
    // (not a client-side timeout or a closed connection).
    for f in &failed {
        let status = f["status"].as_u64().unwrap_or_default();
        assert!(status != 0 && status != 20, "{f}");
        let message = f["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{f}");
    }
    let summary = &summary["stream"];
    assert_eq!(summary["ok"], json!(oks), "{summary}");
    assert_eq!(summary["failed"], json!(failed.len()), "{summary}");
    assert_eq!(
        summary["connects"],
        json!(1),
        "one connection throughout: {summary}"
    );
    let b_after_kill = b.metrics().requests() - b_before_kill;
    assert!(
        b_after_kill >= 1000,
        "B took the calls after the kill: {b_after_kill}"
    );
    eprintln!(
        "killed A after {before_kill} calls answered; {} failed: {failed:?}",
        failed.len()
    );

    running.stop();
    b.stop();
}

/// A static registry entry for an unmeshed Dubbo provider on `port` (what the ZooKeeper
/// registry lists for a plain `dubbo://` node).
fn unmeshed(port: u16) -> String {
    format!("127.0.0.1:{port}?protocol=dubbo")
}

#[test]
fn an_unmeshed_provider_called_through_the_consumer_agent_answers_as_directly() {
    let _serial = serial();
    let direct_port = free_port().expect("a free port");
    let _direct = start_peer(direct_port);
    let out_port = free_port().expect("a free port");
    let _out = start_peer(out_port);
    let url = format!("static://{}", unmeshed(out_port));
    let (running, dubbo) = dubbo_consumer(&url, &[RACE, SHAPES]);
    wait_ready(&running);
    wait_routed(&running, RACE, "", "");

    // Every step but the versioned ones (a static entry lists one variant for all).
    let all: Vec<Value> = steps()
        .into_iter()
        .filter(|s| s["service"] != json!(GREETER))
        .collect();
    let input = serde_json::to_string(&all).expect("steps");
    let want = run_client(SocketAddr::from(([127, 0, 0, 1], direct_port)), &[], &input);
    let got = run_client(dubbo, &[], &input);
    assert_eq!(want.len(), all.len(), "one line per step: {want:#?}");
    assert_eq!(got.len(), want.len(), "one line per step: {got:#?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "through the mesh (left) vs directly (right)");
    }
    assert_eq!(got[0]["value"], json!(99162322));

    // HTTP callers reach it too: a value, and the provider's exception.
    let call = |method: &str, types: &str, args: &str| {
        let body = format!(
            r#"{{"interface":"{SHAPES}","method":"{method}","parameterTypes":[{types}],"arguments":[{args}]}}"#
        );
        http_json(running.http_addr(), &body)
    };
    let (status, body) = call("upper", r#""java.lang.String""#, r#""out of mesh""#);
    assert_eq!((status, body.as_str()), (200, r#""OUT OF MESH""#));
    let (status, body) = call("reject", r#""java.lang.String""#, r#""nope""#);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("com.example.ShapeException"), "{body}");
    running.stop();
}

#[test]
fn a_service_half_in_the_mesh_and_half_out_is_one_pool() {
    let _serial = serial();
    let meshed_port = free_port().expect("a free port");
    let _meshed = start_peer(meshed_port);
    let out_port = free_port().expect("a free port");
    let _out = start_peer(out_port);
    let agent_port = free_port().expect("a free port");
    // The provider-agent registers in a registry of its own; the consumer-agent's
    // static list names it and the unmeshed provider.
    let registry = tempfile::tempdir().expect("tempdir");
    let file = format!("file://{}", registry.path().display());
    let mut args = provider_agent_args(meshed_port, &file, &[SHAPES]);
    args[2] = format!("127.0.0.1:{agent_port}");
    let agent =
        agent_provider::start(agent_provider::Config::parse_from(args)).expect("provider-agent");
    let url = format!("static://127.0.0.1:{agent_port},{}", unmeshed(out_port));
    // Round-robin: one call at a time would all go to the faster one adaptively.
    let running = consumer_with(&url, &["--service", SHAPES, "--lb", "wrr"]);
    wait_ready(&running);
    wait_routed(&running, SHAPES, "", "");

    let body = format!(
        r#"{{"interface":"{SHAPES}","method":"upper","parameterTypes":["java.lang.String"],"arguments":["pool"]}}"#
    );
    for _ in 0..60 {
        let (status, text) = http_json(running.http_addr(), &body);
        assert_eq!((status, text.as_str()), (200, r#""POOL""#));
    }
    // Each provider counted its own calls: both took some, 60 in all.
    let calls = |port: u16| {
        let input = Value::from(vec![shape("calls", json!([]))]).to_string();
        let lines = run_client(SocketAddr::from(([127, 0, 0, 1], port)), &[], &input);
        lines[0]["value"].as_i64().expect("calls() is a number")
    };
    let (meshed, out) = (calls(meshed_port), calls(out_port));
    assert!(meshed > 0 && out > 0, "meshed {meshed}, unmeshed {out}");
    assert_eq!(meshed + out, 60);
    running.stop();
    agent.stop();
}
