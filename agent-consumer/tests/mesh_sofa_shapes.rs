//! Real Dubbo service shapes through the whole mesh, against the npm `sofa-rpc-node`
//! provider in `tests/peers/provider.js` (service `com.example.ShapeService`, hessian2):
//! POJOs, lists of POJOs, nested maps, null, no arguments, dates, enums, overloads chosen
//! by `parameterTypes`, provider errors, and malformed invocations that must never reach
//! the provider. Every value is checked against what the peer computed.
//!
//! consumer HTTP (JSON) -> consumer-agent -> provider-agent -> sofa-rpc-node provider.
//! `.ci/setup` installs node and the peer; without them this test fails, it never skips.

mod util;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Parser;
use codec::invocation::Invocation;
use test_support::net::free_port;
use util::*;

const SERVICE: &str = "com.example.ShapeService";

/// One HTTP answer with its content type.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    /// Every header as sent, in wire order.
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    /// The `x-dubbo-attachment-*` headers: (key as sent, value), sorted by key.
    fn attachments(&self) -> Vec<(&str, &str)> {
        const PREFIX: &str = "x-dubbo-attachment-";
        let mut found: Vec<(&str, &str)> = self
            .headers
            .iter()
            .filter(|(n, _)| n.to_ascii_lowercase().starts_with(PREFIX))
            .map(|(n, v)| (&n[PREFIX.len()..], v.as_str()))
            .collect();
        found.sort();
        found
    }
}

/// POSTs `body` with `content_type` on a fresh connection and reads one answer.
fn post(addr: SocketAddr, content_type: &str, body: &str) -> Reply {
    post_with(addr, content_type, &[], body)
}

/// As [`post`], with extra request headers.
fn post_with(addr: SocketAddr, content_type: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    let extra: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    let req = format!(
        "POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let end = Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
            let header = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let len: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .expect("content-length");
            if buf.len() >= head + len {
                return Reply {
                    status: resp.code.expect("code"),
                    content_type: header("content-type").unwrap_or_default(),
                    headers: resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    body: String::from_utf8_lossy(&buf[head..head + len]).into_owned(),
                };
            }
        }
        assert!(Instant::now() < end, "no answer to {body}");
        if !read_into(&mut s, &mut buf) {
            panic!("connection closed before an answer to {body}");
        }
    }
}

/// The JSON invocation body of `method(types) <- args` (args: a JSON array's items).
fn invocation(method: &str, types: &[&str], args: &str) -> String {
    let types: Vec<String> = types.iter().map(|t| format!("{t:?}")).collect();
    format!(
        r#"{{"interface":"{SERVICE}","method":"{method}","parameterTypes":[{}],"arguments":[{args}]}}"#,
        types.join(",")
    )
}

/// Parses JSON text (through the codec's own parser, the one the agent uses) so answers
/// are compared as values, not as text.
fn json(text: &str) -> Invocation {
    let wrapped =
        format!(r#"{{"interface":"j","method":"j","parameterTypes":["x"],"arguments":[{text}]}}"#);
    Invocation::from_json(wrapped.as_bytes()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn assert_json_eq(got: &str, want: &str, what: &str) {
    assert_eq!(
        json(got).arguments,
        json(want).arguments,
        "{what}: got {got}, want {want}"
    );
}

struct Mesh {
    running: agent_consumer::Running,
    provider_agent: agent_provider::Running,
    _peer: Peer,
    _registry: tempfile::TempDir,
}

impl Mesh {
    fn start() -> Mesh {
        Mesh::start_with(&[])
    }

    /// A mesh whose consumer-agent gets `consumer_flags` too.
    fn start_with(consumer_flags: &[&str]) -> Mesh {
        let port = free_port().expect("a free port");
        let peer = start_peer(port);
        let registry = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", registry.path().display());
        let provider_addr = format!("127.0.0.1:{port}");
        let listen = format!("127.0.0.1:{}", free_port().expect("a free port"));
        let provider_agent = agent_provider::start(agent_provider::Config::parse_from([
            "provider-agent",
            "--listen",
            &listen,
            "--provider",
            &provider_addr,
            "--registry",
            &url,
            "--service",
            SERVICE,
            "--service",
            "com.alibaba.dubbo.performance.demo.provider.IHelloService",
            "--dubbo-version",
            "2.0.2",
        ]))
        .expect("provider-agent");
        let mut flags = vec!["--service", SERVICE];
        flags.extend_from_slice(consumer_flags);
        let running = consumer_with(&url, &flags);
        wait_ready(&running);
        let mesh = Mesh {
            running,
            provider_agent,
            _peer: peer,
            _registry: registry,
        };
        // The registry lists each service on its own: wait until ShapeService's arrives.
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let r = mesh.call("calls", &[], "");
            if r.status == 200 {
                break mesh;
            }
            assert!(
                r.status == 503 && Instant::now() < end,
                "{SERVICE} never became reachable: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn call(&self, method: &str, types: &[&str], args: &str) -> Reply {
        post(
            self.running.http_addr(),
            "application/json",
            &invocation(method, types, args),
        )
    }

    /// Calls and expects 200 with a JSON answer equal to `want`; returns the answer.
    fn ok(&self, method: &str, types: &[&str], args: &str, want: &str) -> String {
        let r = self.call(method, types, args);
        let what = format!("{method}({types:?}) <- {args}");
        assert_eq!(r.status, 200, "{what}: {}", r.body);
        assert!(
            r.content_type.starts_with("application/json"),
            "{what}: {}",
            r.content_type
        );
        assert_json_eq(&r.body, want, &what);
        r.body
    }

    /// How many ShapeService calls reached the provider so far.
    fn provider_calls(&self) -> i64 {
        let r = self.call("calls", &[], "");
        assert_eq!(r.status, 200, "calls(): {}", r.body);
        r.body.parse().expect("calls() answers an int")
    }

    fn stop(self) {
        self.running.stop();
        self.provider_agent.stop();
    }
}

#[test]
fn real_service_shapes_through_both_agents_against_sofa_rpc_node() {
    let mesh = Mesh::start();
    let user = "com.example.User";

    // 1. A POJO in, a POJO out (with its class, so it can be sent back as is).
    let older = mesh.ok(
        "older",
        &[user],
        r#"{"name":"Ann 你好","age":41}"#,
        r#"{"class":"com.example.User","name":"Ann 你好","age":42}"#,
    );
    mesh.ok(
        "older",
        &[user],
        &older,
        r#"{"class":"com.example.User","name":"Ann 你好","age":43}"#,
    );

    // 2. Lists of POJOs in and out (elements typed by their "class").
    let by_age = mesh.ok(
        "byAge",
        &["java.util.List"],
        r#"[{"class":"com.example.User","name":"ann","age":30},
            {"class":"com.example.User","name":"bob","age":50},
            {"class":"com.example.User","name":"cy","age":40}]"#,
        r#"[{"class":"com.example.User","name":"BOB","age":50},
            {"class":"com.example.User","name":"CY","age":40},
            {"class":"com.example.User","name":"ANN","age":30}]"#,
    );
    mesh.ok(
        "byAge",
        &["java.util.List"],
        &by_age,
        r#"[{"class":"com.example.User","name":"BOB","age":50},
            {"class":"com.example.User","name":"CY","age":40},
            {"class":"com.example.User","name":"ANN","age":30}]"#,
    );
    mesh.ok("byAge", &["java.util.List"], "[]", "[]");

    // Nested maps in and out.
    mesh.ok(
        "describe",
        &["java.util.Map"],
        r#"{"a":{"b":{"c":1},"d":[1,"two",null]},"e":"x","f":true}"#,
        r#"{"keys":[{"a":[{"b":["c"]},"d"]},"e","f"],
            "echo":{"a":{"b":{"c":1},"d":[1,"two",null]},"e":"x","f":true}}"#,
    );

    // Null argument, null result; a method without arguments.
    mesh.ok("upper", &["java.lang.String"], "null", "null");
    mesh.ok(
        "upper",
        &["java.lang.String"],
        r#""mesh ok""#,
        r#""MESH OK""#,
    );
    let before = mesh.provider_calls();
    assert_eq!(mesh.provider_calls(), before + 1, "calls() counts itself");

    // A java.util.Date result: ISO 8601 UTC with milliseconds.
    mesh.ok(
        "dateOf",
        &["long"],
        "1527854400123",
        r#""2018-06-01T12:00:00.123Z""#,
    );
    mesh.ok("dateOf", &["long"], "0", r#""1970-01-01T00:00:00.000Z""#);

    // Enums: hessian's object with one field, `name`; sent back as is.
    let red = mesh.ok(
        "color",
        &["java.lang.String"],
        r#""RED""#,
        r#"{"class":"com.example.Color","name":"RED"}"#,
    );
    mesh.ok("paint", &["com.example.Color"], &red, r#""painted RED""#);
    mesh.ok(
        "paint",
        &["com.example.Color"],
        r#"{"name":"GREEN"}"#,
        r#""painted GREEN""#,
    );

    // 3. Overloads, chosen by parameterTypes.
    mesh.ok("add", &["int", "int"], "2, 40", "42");
    mesh.ok(
        "add",
        &["java.lang.String", "java.lang.String"],
        r#""2", "40""#,
        r#""240""#,
    );
    mesh.ok("add", &["long", "long"], "4294967296, 1", "4294967297");
    mesh.ok("add", &["java.util.List"], "[1, 2, 3]", "6");

    // 4. Provider errors: 502 with a JSON body, never an empty answer.
    let r = mesh.call("fail", &["java.lang.String"], r#""no such user""#);
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.content_type.starts_with("application/json"), "{r:?}");
    assert_json_eq(
        &r.body,
        r#"{"error":"provider_error","message":"no such user","status":502}"#,
        "thrown error (status 80)",
    );
    let r = mesh.call("reject", &["java.lang.String"], r#""bad shape""#);
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.content_type.starts_with("application/json"), "{r:?}");
    assert_json_eq(
        &r.body,
        r#"{"error":"provider_error","class":"com.example.ShapeException","message":"bad shape","status":502}"#,
        "exception object (flag 0)",
    );
    let r = mesh.call("rejectWithCause", &["java.lang.String"], r#""bad shape""#);
    assert_eq!(r.status, 502, "{}", r.body);
    assert_json_eq(
        &r.body,
        r#"{"error":"provider_error","class":"com.example.ShapeException","message":"bad shape",
            "cause":{"class":"java.io.IOException","message":"disk gone",
                     "cause":{"class":"java.net.ConnectException","message":"refused"}},
            "status":502}"#,
        "exception with causes",
    );
    let r = mesh.call("noSuchMethod", &[], "");
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.content_type.starts_with("application/json"), "{r:?}");
    let body = json(&r.body).arguments.remove(0);
    assert_eq!(body["error"], json(r#""provider_error""#).arguments[0]);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("noSuchMethod")),
        "{r:?}"
    );
    // The race's form requests keep their plain-text errors.
    let form = format!(
        "interface={SERVICE}&method=fail&parameterTypesString=Ljava%2Flang%2FString%3B&parameter=plain%20boom"
    );
    let r = post(
        mesh.running.http_addr(),
        "application/x-www-form-urlencoded",
        &form,
    );
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.content_type.starts_with("text/plain"), "{r:?}");
    assert_eq!(r.body, "plain boom");
    let form = format!(
        "interface={SERVICE}&method=rejectWithCause&parameterTypesString=\
         Ljava%2Flang%2FString%3B&parameter=outer"
    );
    let r = post(
        mesh.running.http_addr(),
        "application/x-www-form-urlencoded",
        &form,
    );
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(
        r.body,
        "com.example.ShapeException: outer\n\
         Caused by: java.io.IOException: disk gone\n\
         Caused by: java.net.ConnectException: refused"
    );

    // 5. Malformed invocations: 400 naming the problem; nothing reaches the provider.
    let before = mesh.provider_calls();
    let bad: &[(&str, &str)] = &[
        (
            &invocation("add", &["int", "int"], "1"),
            "`parameterTypes` has 2 entries but `arguments` has 1",
        ),
        (&invocation("add", &["int"], "1, 2"), "`arguments` has 2"),
        (&invocation("add", &["int", "int"], r#""1", 2"#), "int"),
        (&invocation("add", &["int", "int"], "1, 4294967296"), "int"),
        (&invocation("dateOf", &["long"], "1.5"), "long"),
        (&invocation("upper", &["java.lang.String"], "7"), "String"),
        (&invocation("older", &[user], r#""Ann""#), user),
        (&invocation("older", &[user], "[1]"), user),
        (&invocation("byAge", &["java.util.List"], "{}"), "List"),
        (&invocation("describe", &["java.util.Map"], "[]"), "Map"),
        (&invocation("add", &["int", "int"], "null, 1"), "int"),
        (
            &format!(r#"{{"interface":"{SERVICE}","method":"add","arguments":5}}"#),
            "arguments",
        ),
        (
            &format!(r#"{{"interface":"{SERVICE}","method":"add","arguments":[1]}}"#),
            "parameterTypes",
        ),
        (&format!(r#"{{"interface":"{SERVICE}"}}"#), "method"),
        (r#"["not", "an", "object"]"#, "object"),
        (r#"{"interface": "#, "JSON"),
    ];
    for (body, names) in bad {
        let r = post(mesh.running.http_addr(), "application/json", body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        // A JSON error body: {"error":"bad_request","message":...,"status":400}.
        assert_eq!(r.content_type, "application/json", "{body}: {r:?}");
        let answer = json(&r.body).arguments.remove(0);
        assert_eq!(answer["error"], "bad_request", "{body}: {r:?}");
        assert_eq!(answer["status"], 400, "{body}: {r:?}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{body}: {message} lacks {names:?}");
    }
    assert_eq!(
        mesh.provider_calls(),
        before + 1,
        "a malformed invocation reached the provider"
    );

    mesh.stop();
}

#[test]
fn attachments_from_headers_and_json_reach_sofa_rpc_node() {
    let mesh = Mesh::start();
    let addr = mesh.running.http_addr();
    let ask = |key: &str, attachments: &str| {
        format!(
            r#"{{"interface":"{SERVICE}","method":"attachment","parameterTypes":["java.lang.String"],"arguments":["{key}"]{attachments}}}"#
        )
    };
    let json_call = |key: &str, attachments: &str, headers: &[(&str, &str)]| {
        let r = post_with(addr, "application/json", headers, &ask(key, attachments));
        assert_eq!(r.status, 200, "attachment({key}): {r:?}");
        r.body
    };

    // The JSON `attachments` field.
    let field = r#","attachments":{"trace":"t-1","tenant":"акме"}"#;
    assert_eq!(json_call("trace", field, &[]), r#""t-1""#);
    assert_eq!(json_call("tenant", field, &[]), r#""акме""#);
    assert_eq!(json_call("absent", field, &[]), "null");

    // Headers, on a JSON call: the key as sent, the value trimmed.
    let headers = [
        ("X-Dubbo-Attachment-traceId", "  t-2 "),
        ("x-dubbo-attachment-trace", "from-header"),
        ("x-dubbo-attachment-trace", "second"),
    ];
    assert_eq!(json_call("traceId", "", &headers), r#""t-2""#);
    // The first of repeated headers wins; the JSON field wins over a header.
    assert_eq!(json_call("trace", "", &headers), r#""from-header""#);
    assert_eq!(json_call("trace", field, &headers), r#""t-1""#);
    assert_eq!(json_call("traceId", field, &headers), r#""t-2""#);

    // Routing keys are reserved: the call names them, never its attachments.
    for (headers, attachments, key, instead) in [
        (
            &[("x-dubbo-attachment-group", "evilgroup")][..],
            "",
            "group",
            "x-dubbo-group",
        ),
        (
            &[("X-Dubbo-Attachment-Timeout", "999999")][..],
            "",
            "Timeout",
            "x-dubbo-timeout",
        ),
        (
            &[][..],
            r#","attachments":{"version":"6.6.6"}"#,
            "version",
            "x-dubbo-version",
        ),
        (
            &[][..],
            r#","attachments":{"dubbo":"9.9.9"}"#,
            "dubbo",
            "Dubbo version",
        ),
        (
            &[][..],
            r#","attachments":{"path":"com.evil.Admin"}"#,
            "path",
            "interface",
        ),
    ] {
        let r = post_with(addr, "application/json", headers, &ask(key, attachments));
        assert_eq!(r.status, 400, "{key}: {r:?}");
        assert!(r.body.contains("is reserved"), "{key}: {r:?}");
        assert!(r.body.contains(instead), "{key}: {r:?}");
    }

    // Headers on the race's form call.
    let form = |key: &str| {
        format!(
            "interface={SERVICE}&method=attachment&parameterTypesString=Ljava%2Flang%2FString%3B&parameter={key}"
        )
    };
    let r = post_with(
        addr,
        "application/x-www-form-urlencoded",
        &[("x-dubbo-attachment-user", "u 7")],
        &form("user"),
    );
    assert_eq!((r.status, r.body.as_str()), (200, "u 7"), "{r:?}");
    // Request attachments are not echoed back as response headers.
    assert_eq!(r.attachments(), [], "{r:?}");

    // Response attachments (Dubbo flags 3..5) come back as headers; a key that is not an
    // HTTP token, a value with CR/LF, and Dubbo's own `dubbo` are dropped.
    let tagged = |arg: &str| {
        format!(
            r#"{{"interface":"{SERVICE}","method":"tagged","parameterTypes":["java.lang.String"],"arguments":[{arg}]}}"#
        )
    };
    let r = post(addr, "application/json", &tagged(r#""abc""#));
    assert_eq!((r.status, r.body.as_str()), (200, r#""ABC""#), "{r:?}");
    assert_eq!(
        r.attachments(),
        [("X-Trace", "t-9"), ("echo", "abc")],
        "{r:?}"
    );
    let r = post(addr, "application/json", &tagged("null"));
    assert_eq!((r.status, r.body.as_str()), (200, "null"), "flag 5: {r:?}");
    assert_eq!(
        r.attachments(),
        [("X-Trace", "t-9"), ("echo", "null")],
        "{r:?}"
    );
    let r = post(addr, "application/json", &tagged(r#""reject""#));
    assert_eq!(r.status, 502, "flag 3: {r:?}");
    assert!(r.body.contains("com.example.ShapeException"), "{r:?}");
    assert_eq!(
        r.attachments(),
        [("X-Trace", "t-9"), ("echo", "reject")],
        "{r:?}"
    );
    // On the race's form call too, beside its plain-text answer.
    let r = post(
        addr,
        "application/x-www-form-urlencoded",
        &format!(
            "interface={SERVICE}&method=tagged&parameterTypesString=Ljava%2Flang%2FString%3B&parameter=form"
        ),
    );
    assert_eq!((r.status, r.body.as_str()), (200, "FORM"), "{r:?}");
    assert!(r.content_type.starts_with("text/plain"), "{r:?}");
    assert_eq!(
        r.attachments(),
        [("X-Trace", "t-9"), ("echo", "form")],
        "{r:?}"
    );

    // A header without a key: 400 naming it; nothing reaches the provider.
    let before = mesh.provider_calls();
    let r = post_with(
        addr,
        "application/json",
        &[("x-dubbo-attachment-", "v")],
        &ask("x", ""),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("attachment key is missing"), "{r:?}");
    assert_eq!(
        mesh.provider_calls(),
        before + 1,
        "a bad header reached the provider"
    );

    mesh.stop();
}

/// A `java.util.Map` argument `levels` deep: maps inside maps around the int 7.
fn nested_map(levels: usize) -> String {
    (1..levels).fold("7".to_owned(), |inner, _| format!(r#"{{"k":{inner}}}"#))
}

/// Arguments up to --max-json-depth levels reach the provider intact (it measures their
/// depth); one level more is a 400 naming the limit, and nothing reaches the provider.
fn check_depth_limit(mesh: &Mesh, limit: usize) {
    let r = mesh.call("depth", &["java.util.Map"], &nested_map(limit));
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, limit.to_string().as_str()),
        "{r:?}"
    );
    let before = mesh.provider_calls();
    let r = mesh.call("depth", &["java.util.Map"], &nested_map(limit + 1));
    assert_eq!(r.status, 400, "{r:?}");
    let message = json(&r.body).arguments.remove(0)["message"].clone();
    let message = message.as_str().unwrap_or_default();
    let want = format!("`arguments[0]` is nested more than {limit} levels deep");
    assert!(message.contains(&want), "{message}");
    assert!(message.contains("--max-json-depth"), "{message}");
    assert_eq!(
        mesh.provider_calls(),
        before + 1,
        "a too deep call reached the provider"
    );
}

#[test]
fn json_nesting_is_bounded_by_max_json_depth() {
    let mesh = Mesh::start();
    check_depth_limit(&mesh, 64);
    mesh.stop();
    let mesh = Mesh::start_with(&["--max-json-depth", "5"]);
    check_depth_limit(&mesh, 5);
    mesh.stop();
}
