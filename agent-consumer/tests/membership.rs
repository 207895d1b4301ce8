//! Provider-agents joining and leaving the registry while calls are in flight.

mod util;

use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use codec::java::string_hash_code;
use registry::Instance;
use util::*;

const SERVICE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";

#[test]
fn a_leaving_provider_agent_finishes_its_calls_and_gets_no_new_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    let reg = registry::open(Some(&url)).expect("registry");
    let a = fake_agent(Mode::Delay(300));
    let b = fake_agent(Mode::Delay(10));
    let reg_a = reg
        .register(Instance::new(SERVICE, a.addr.to_string()))
        .expect("register a");
    let _reg_b = reg
        .register(Instance::new(SERVICE, b.addr.to_string()))
        .expect("register b");
    let running = consumer_with(&url, &["--lb", "wrr"]);
    wait_ready(&running);
    // Both connected: wait until b has been picked once and a once.
    let end = Instant::now() + Duration::from_secs(5);
    while running
        .metrics
        .render()
        .matches("consumer_upstream_up{")
        .count()
        < 2
        || !running
            .metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("consumer_upstream_up{"))
            .all(|l| l.ends_with(" 1"))
    {
        assert!(Instant::now() < end, "both provider-agents connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Eight calls in flight, half of them on a (300 ms each).
    let mut clients: Vec<(TcpStream, String)> = (0..8)
        .map(|i| {
            let p = format!("inflight{i}");
            let mut s = TcpStream::connect(running.http_addr).expect("connect");
            std::io::Write::write_all(&mut s, &race_request(&p)).expect("write");
            (s, p)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let a_calls = a.calls.load(Ordering::SeqCst);
    assert!(a_calls > 0, "a got some of the calls");
    reg_a.deregister().expect("deregister a");
    for (s, p) in clients.iter_mut() {
        let answers = read_answers(s, 1, Duration::from_secs(5));
        assert_eq!(answers[0].status, 200, "{p}: {}", answers[0].body);
        assert_eq!(answers[0].body, string_hash_code(p).to_string());
    }
    // Once the registry change has reached the loop, a gets nothing new.
    std::thread::sleep(Duration::from_millis(300));
    let before = a.calls.load(Ordering::SeqCst);
    for i in 0..10 {
        let p = format!("after{i}");
        let answers = exchange(running.http_addr, &race_request(&p), 1);
        assert_eq!(answers[0].body, string_hash_code(&p).to_string());
    }
    assert_eq!(
        a.calls.load(Ordering::SeqCst),
        before,
        "no new call reached the leaving agent"
    );
    running.stop();
}

#[test]
fn calls_reach_only_instances_of_their_version_and_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    let reg = registry::open(Some(&url)).expect("registry");
    let v1 = fake_agent(Mode::Hash);
    let v2 = fake_agent(Mode::Hash);
    let none = fake_agent(Mode::Hash);
    let v2_blue = fake_agent(Mode::Hash);
    let inst = |a: &FakeAgent| Instance::new(SERVICE, a.addr.to_string());
    let _r = [
        reg.register(inst(&v1).with_meta("version", "1.0")),
        reg.register(inst(&v2).with_meta("version", "2.0")),
        reg.register(inst(&none)),
        reg.register(
            inst(&v2_blue)
                .with_meta("version", "2.0")
                .with_meta("group", "blue"),
        ),
    ];
    let running = consumer_with(&url, &[]);
    wait_ready(&running);
    let end = Instant::now() + Duration::from_secs(5);
    while running
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("consumer_upstream_up{") && l.ends_with(" 1"))
        .count()
        < 4
    {
        assert!(Instant::now() < end, "all four provider-agents connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    let json = |version: &str, group: &str| {
        let body = format!(
            r#"{{"interface":"{SERVICE}","method":"hash","parameterTypes":["java.lang.String"],"arguments":["v"],"version":"{version}","group":"{group}"}}"#
        );
        let raw = format!(
            "POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        exchange(running.http_addr, raw.as_bytes(), 1).remove(0)
    };
    let counts = || [&v1, &v2, &none, &v2_blue].map(|a| a.calls.load(Ordering::SeqCst));
    for _ in 0..5 {
        assert_eq!(json("2.0", "").status, 200);
    }
    assert_eq!(counts(), [0, 5, 0, 0], "version 2.0, no group");
    for _ in 0..3 {
        assert_eq!(json("2.0", "blue").status, 200);
    }
    assert_eq!(counts(), [0, 5, 0, 3], "version 2.0, group blue");
    // The form request names its version in a header; "0.0.0" means none, as in Java.
    let mut form = race_request("v");
    let at = form
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head end");
    form.splice(at..at, b"\r\nx-dubbo-version: 1.0".iter().copied());
    for _ in 0..2 {
        assert_eq!(exchange(running.http_addr, &form, 1)[0].status, 200);
    }
    assert_eq!(json("0.0.0", "").status, 200);
    assert_eq!(
        exchange(running.http_addr, &race_request("v"), 1)[0].status,
        200
    );
    assert_eq!(
        counts(),
        [2, 5, 2, 3],
        "1.0 by header; none by 0.0.0 and by default"
    );
    let missing = json("3.0", "");
    assert_eq!(missing.status, 503);
    assert!(missing.body.contains("version 3.0"), "{}", missing.body);
    assert_eq!(
        counts(),
        [2, 5, 2, 3],
        "nothing sent for an unknown version"
    );
    running.stop();
}
