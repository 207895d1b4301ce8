//! ZooKeeper backend against a real ZooKeeper (Debian's `zookeeperd`, run by
//! [`test_support::zk`]; missing, the tests fail and name `.ci/setup`).
//!
//! Only with the `zookeeper` feature (on by default).
#![cfg(feature = "zookeeper")]

mod util;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use registry::Instance;
use util::zk::{param, url_decode, url_encode, Direct, Zk};
use util::{addrs, init_log, Collector, Proxy};

const SVC: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";
const PROVIDERS: &str =
    "/dubbo/com.alibaba.dubbo.performance.demo.provider.IHelloService/providers";
const CONSUMERS: &str =
    "/dubbo/com.alibaba.dubbo.performance.demo.provider.IHelloService/consumers";
const SOON: Duration = Duration::from_secs(3);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn meta<'a>(i: &'a Instance, k: &str) -> Option<&'a str> {
    i.meta.get(k).map(String::as_str)
}

/// Waits until `path`'s children (read directly) satisfy `pred`; returns them.
fn wait_children(
    d: &Direct,
    path: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let end = Instant::now() + within;
    loop {
        let c = d.children(path);
        if pred(&c) {
            return c;
        }
        assert!(
            Instant::now() < end,
            "timed out after {within:?} waiting for {what}; children of {path}: {c:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn register_watch_deregister_in_dubbos_layout() {
    init_log();
    let zk = Zk::start();
    let reg = registry::open(Some(&zk.url())).unwrap();
    let d = Direct::connect(&zk.connect_string());
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(SOON, "initial empty list", |l| l.is_empty());

    let before = now_ms();
    let a = reg
        .register(
            Instance::new(SVC, "127.0.0.1:30000")
                .with_weight(300)
                .with_meta("dubbo.addr", "127.0.0.1:20880")
                .with_meta("version", "1.0.0")
                .with_meta("group", "blue"),
        )
        .unwrap();
    let after = now_ms();
    // register() returned after the create: the node is there, named as Dubbo names it
    let names = d.children(PROVIDERS);
    assert_eq!(names.len(), 1, "{names:?}");
    let url = url_decode(&names[0]);
    let ts: u64 = param(&url, "timestamp").unwrap().parse().unwrap();
    assert!(
        (before..=after).contains(&ts),
        "{ts} not in {before}..={after}"
    );
    let expected = format!(
        "dubbo://127.0.0.1:20880/{SVC}?anyhost=true&group=blue&interface={SVC}\
         &mesh.agent=127.0.0.1:30000&side=provider&timestamp={ts}&version=1.0.0&weight=300"
    );
    assert_eq!(url, expected);
    assert_eq!(
        names[0],
        url_encode(&expected),
        "URLEncoder's encoding exactly"
    );
    assert!(names[0].starts_with("dubbo%3A%2F%2F127.0.0.1%3A20880%2Fcom.alibaba."));
    // ephemeral, empty; the parents persistent
    let stat = d.stat(&format!("{PROVIDERS}/{}", names[0])).unwrap();
    assert_ne!(stat.ephemeral_owner, 0);
    assert_eq!(stat.data_length, 0);
    for p in ["/dubbo", &PROVIDERS[..PROVIDERS.len() - 10], PROVIDERS] {
        assert_eq!(d.stat(p).expect(p).ephemeral_owner, 0, "{p} persistent");
    }

    let list = w.wait_for(SOON, "a", |l| l.len() == 1);
    let i = &list[0];
    assert_eq!(
        (i.service.as_str(), i.addr.as_str(), i.weight),
        (SVC, "127.0.0.1:30000", 300)
    );
    assert_eq!(meta(i, "protocol"), Some("agent"));
    assert_eq!(meta(i, "dubbo.addr"), Some("127.0.0.1:20880"));
    assert_eq!(meta(i, "version"), Some("1.0.0"));
    assert_eq!(meta(i, "group"), Some("blue"));

    // no dubbo.addr: a dubbomesh:// URL
    let b = reg.register(Instance::new(SVC, "127.0.0.1:30001")).unwrap();
    let list = w.wait_for(SOON, "a and b", |l| l.len() == 2);
    assert_eq!(addrs(&list), ["127.0.0.1:30000", "127.0.0.1:30001"]);
    assert_eq!(list[1].weight, 100);
    assert_eq!(meta(&list[1], "protocol"), Some("agent"));
    let names = d.children(PROVIDERS);
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("dubbomesh%3A%2F%2F127.0.0.1%3A30001%2F")),
        "{names:?}"
    );

    let t = Instant::now();
    a.deregister().unwrap();
    assert!(t.elapsed() < Duration::from_millis(1500));
    let names = d.children(PROVIDERS);
    assert_eq!(names.len(), 1, "deleted on deregister: {names:?}");
    w.wait_for(SOON, "only b", |l| addrs(l) == ["127.0.0.1:30001"]);

    drop(b); // drop deletes too
    assert!(d.children(PROVIDERS).is_empty());
    w.wait_for(SOON, "empty", |l| l.is_empty());
    assert_eq!(reg.skipped_entries(), 0);
}

#[test]
fn a_plain_dubbo_provider_written_as_dubbo_java_writes_it() {
    init_log();
    let zk = Zk::start();
    let d = Direct::connect(&zk.connect_string());
    // What Dubbo 2.7's ZookeeperRegistry creates for a Java provider.
    let name = "dubbo%3A%2F%2F127.0.0.1%3A20880%2Fcom.foo.Hello%3Fanyhost%3Dtrue%26application\
                %3Ddemo-provider%26deprecated%3Dfalse%26dubbo%3D2.0.2%26dynamic%3Dtrue%26generic\
                %3Dfalse%26interface%3Dcom.foo.Hello%26methods%3DsayHello%2CsayHelloAsync%26pid\
                %3D4242%26release%3D2.7.23%26revision%3D1.0.0%26side%3Dprovider%26timestamp\
                %3D1690000000000%26version%3D1.0.0%26weight%3D50";
    d.create(&format!("/dubbo/com.foo.Hello/providers/{name}"), b"", true);
    let reg = registry::open(Some(&zk.url())).unwrap();
    let mut w = Collector::new(&reg, "com.foo.Hello");
    let list = w.wait_for(SOON, "the Java provider", |l| l.len() == 1);
    let i = &list[0];
    assert_eq!((i.addr.as_str(), i.weight), ("127.0.0.1:20880", 50));
    assert_eq!(meta(i, "protocol"), Some("dubbo"));
    assert_eq!(meta(i, "dubbo.addr"), None);
    assert_eq!(meta(i, "version"), Some("1.0.0"));
    assert_eq!(meta(i, "application"), Some("demo-provider"));
    assert_eq!(meta(i, "methods"), Some("sayHello,sayHelloAsync"));
    // The registry's own registration sits beside it.
    let _r = reg
        .register(Instance::new("com.foo.Hello", "127.0.0.1:30000"))
        .unwrap();
    let list = w.wait_for(SOON, "both", |l| l.len() == 2);
    assert_eq!(addrs(&list), ["127.0.0.1:20880", "127.0.0.1:30000"]);
    assert_eq!(reg.skipped_entries(), 0);
}

#[test]
fn each_version_and_group_is_a_node_of_its_own_and_one_instance_again() {
    init_log();
    let zk = Zk::start();
    let reg = registry::open(Some(&zk.url())).unwrap();
    let d = Direct::connect(&zk.connect_string());
    let mut w = Collector::new(&reg, SVC);
    let variants = [
        registry::Variant::new("1.0.0", ""),
        registry::Variant::new("2.0.0", "blue"),
    ];
    let _r = reg
        .register(
            Instance::new(SVC, "127.0.0.1:30000")
                .with_meta("dubbo.addr", "127.0.0.1:20880")
                .with_variants(&variants),
        )
        .unwrap();
    // As Dubbo registers one URL per service key, so Dubbo consumers (which match a
    // node by its version and group) find each.
    let names = wait_children(&d, PROVIDERS, SOON, "two nodes", |c| c.len() == 2);
    let mut keys: Vec<(String, String)> = names
        .iter()
        .map(|n| {
            let url = url_decode(n);
            assert_eq!(param(&url, "variants"), None, "{url}");
            let v = param(&url, "version").unwrap_or_default().to_owned();
            (param(&url, "group").unwrap_or_default().to_owned(), v)
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            (String::new(), "1.0.0".to_owned()),
            ("blue".to_owned(), "2.0.0".to_owned())
        ]
    );
    // A watcher sees one instance serving both.
    let list = w.wait_for(SOON, "one instance", |l| l.len() == 1);
    let mut got = list[0].variants();
    got.sort();
    let mut want = variants.to_vec();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_watch_keeps_a_consumer_node_while_it_lives() {
    init_log();
    let zk = Zk::start();
    let d = Direct::connect(&zk.connect_string());
    let reg = registry::open(Some(&zk.url())).unwrap();
    let before = now_ms();
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(SOON, "initial list", |l| l.is_empty());
    let names = wait_children(&d, CONSUMERS, SOON, "the consumer node", |c| c.len() == 1);
    let url = url_decode(&names[0]);
    assert!(
        url.starts_with(&format!("consumer://127.0.0.1/{SVC}?")),
        "{url}"
    );
    for (k, v) in [
        ("application", "dubbo-mesh"),
        ("category", "consumers"),
        ("check", "false"),
        ("interface", SVC),
        ("side", "consumer"),
    ] {
        assert_eq!(param(&url, k), Some(v), "{k} in {url}");
    }
    assert_eq!(
        param(&url, "pid"),
        Some(std::process::id().to_string().as_str())
    );
    let ts: u64 = param(&url, "timestamp").unwrap().parse().unwrap();
    assert!(ts >= before && ts <= now_ms(), "{ts}");
    let stat = d.stat(&format!("{CONSUMERS}/{}", names[0])).unwrap();
    assert_ne!(stat.ephemeral_owner, 0, "ephemeral");
    // someone deletes it: it comes back
    d.delete(&format!("{CONSUMERS}/{}", names[0]));
    wait_children(&d, CONSUMERS, SOON, "the consumer node back", |c| {
        c == names
    });
    drop(w);
    wait_children(
        &d,
        CONSUMERS,
        SOON,
        "no consumer node",
        <[String]>::is_empty,
    );
}

#[test]
fn zookeeper_restart_under_live_watch_and_registration() {
    init_log();
    let mut zk = Zk::start();
    // The session (5 s) outlives the outage: it carries on, nodes and all.
    let url = zk.url_with("?session_timeout_ms=5000");
    let reg = registry::open(Some(&url)).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let _a = reg.register(Instance::new(SVC, "127.0.0.1:30020")).unwrap();
    w.wait_for(SOON, "a", |l| addrs(l) == ["127.0.0.1:30020"]);

    zk.kill(0);
    // ZooKeeper down: the watcher keeps its last list, delivers nothing (no empty list)
    w.assert_quiet(
        Duration::from_millis(1500),
        "ZooKeeper down: keep the last list",
    );
    zk.restart(0).expect("ZooKeeper restart");

    // the node is still there (same data directory, same session)
    let d = Direct::connect(&zk.connect_string());
    let names = wait_children(&d, PROVIDERS, SOON, "a after restart", |c| c.len() == 1);
    assert!(names[0].contains("127.0.0.1%3A30020"), "{names:?}");

    // the watcher is live again: it sees a new instance
    let other = registry::open(Some(&url)).unwrap();
    let _b = other
        .register(Instance::new(SVC, "127.0.0.1:30021"))
        .unwrap();
    let list = w.wait_for(Duration::from_secs(8), "a and b after restart", |l| {
        l.len() == 2
    });
    assert_eq!(addrs(&list), ["127.0.0.1:30020", "127.0.0.1:30021"]);
    // nothing it delivered along the way was empty or lacked a
    while let Ok(l) = w.rx.recv_timeout(Duration::from_millis(300)) {
        assert!(addrs(&l).contains(&"127.0.0.1:30020"), "{l:?}");
    }
}

#[test]
fn a_long_outage_expires_the_session_and_everything_comes_back() {
    init_log();
    let mut zk = Zk::start();
    let url = zk.url_with("?session_timeout_ms=2000");
    let reg = registry::open(Some(&url)).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let _a = reg.register(Instance::new(SVC, "127.0.0.1:30030")).unwrap();
    w.wait_for(SOON, "a", |l| addrs(l) == ["127.0.0.1:30030"]);
    let path = {
        let d = Direct::connect(&zk.connect_string());
        format!("{PROVIDERS}/{}", d.children(PROVIDERS)[0])
    };
    let owner = |d: &Direct| d.stat(&path).map(|s| s.ephemeral_owner);
    let old = owner(&Direct::connect(&zk.connect_string())).expect("a");

    // Down for longer than the session timeout (the client gives up on the session
    // after 7/5 of it): after the restart the registration needs a new session.
    zk.kill(0);
    w.assert_quiet(
        Duration::from_millis(3500),
        "ZooKeeper down: keep the last list",
    );
    zk.restart(0).expect("ZooKeeper restart");
    let d = Direct::connect(&zk.connect_string());
    let deadline = Instant::now() + Duration::from_secs(8);
    while owner(&d).is_none_or(|o| o == old) {
        assert!(
            Instant::now() < deadline,
            "not registered again in a new session"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // the watch is set again in the new session: a change is seen
    let name = url_encode(&format!("dubbo://127.0.0.1:20881/{SVC}?interface={SVC}"));
    d.create(&format!("{PROVIDERS}/{name}"), b"", true);
    w.wait_for(Duration::from_secs(8), "a and the new provider", |l| {
        addrs(l) == ["127.0.0.1:20881", "127.0.0.1:30030"]
    });
}

#[test]
fn a_cut_connection_expires_the_session_server_side_and_it_is_renewed() {
    init_log();
    let zk = Zk::start();
    let proxy = Proxy::start(zk.addr(0).port());
    let reg = registry::open(Some(&proxy.zookeeper_url("?session_timeout_ms=2000"))).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let _a = reg.register(Instance::new(SVC, "127.0.0.1:30040")).unwrap();
    w.wait_for(SOON, "a", |l| addrs(l) == ["127.0.0.1:30040"]);
    let d = Direct::connect(&zk.connect_string());
    let names = d.children(PROVIDERS);
    let path = format!("{PROVIDERS}/{}", names[0]);
    let old = d.stat(&path).unwrap().ephemeral_owner;

    // ZooKeeper stays up, but this registry cannot reach it: the server expires the
    // session and removes its node.
    proxy.set_down();
    wait_children(
        &d,
        PROVIDERS,
        Duration::from_secs(6),
        "a gone with its session",
        |c| c.is_empty(),
    );
    // meanwhile the cut-off watcher keeps its last list
    assert!(
        w.rx.try_recv().is_err(),
        "a cut-off watcher delivered a list"
    );
    proxy.set_up();
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        if let Some(s) = d.stat(&path) {
            assert_ne!(s.ephemeral_owner, old, "a new session");
            break;
        }
        assert!(Instant::now() < deadline, "not registered again");
        std::thread::sleep(Duration::from_millis(50));
    }
    let name = url_encode(&format!("dubbo://127.0.0.1:20882/{SVC}?interface={SVC}"));
    d.create(&format!("{PROVIDERS}/{name}"), b"", true);
    w.wait_for(Duration::from_secs(5), "a and the new provider", |l| {
        addrs(l) == ["127.0.0.1:20882", "127.0.0.1:30040"]
    });
}

#[test]
fn a_node_deleted_under_a_live_session_comes_back() {
    init_log();
    let zk = Zk::start();
    let reg = registry::open(Some(&zk.url())).unwrap();
    let _a = reg.register(Instance::new(SVC, "127.0.0.1:30050")).unwrap();
    let d = Direct::connect(&zk.connect_string());
    let names = d.children(PROVIDERS);
    let path = format!("{PROVIDERS}/{}", names[0]);
    let owner = d.stat(&path).unwrap().ephemeral_owner;
    d.delete(&path);
    wait_children(&d, PROVIDERS, SOON, "a back", |c| c == names);
    assert_eq!(
        d.stat(&path).unwrap().ephemeral_owner,
        owner,
        "same session"
    );
    // and again (the guard is re-armed)
    d.delete(&path);
    wait_children(&d, PROVIDERS, SOON, "a back again", |c| c == names);
}

#[test]
fn an_ensemble_survives_the_loss_of_its_leader() {
    init_log();
    let mut zk = Zk::ensemble(3);
    let url = zk.url_with("?session_timeout_ms=4000");
    let reg = registry::open(Some(&url)).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let _a = reg.register(Instance::new(SVC, "127.0.0.1:30060")).unwrap();
    w.wait_for(SOON, "a", |l| addrs(l) == ["127.0.0.1:30060"]);

    let leader = zk.leader().expect("a leader");
    zk.kill(leader);
    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| zk.addr(i).to_string())
        .collect();
    let d = Direct::connect(&survivors.join(","));
    let names = wait_children(&d, PROVIDERS, Duration::from_secs(10), "a", |c| {
        c.len() == 1
    });
    assert!(names[0].contains("127.0.0.1%3A30060"));
    // new registrations and watches work
    let _b = reg.register(Instance::new(SVC, "127.0.0.1:30061")).unwrap();
    w.wait_for(Duration::from_secs(10), "a and b", |l| {
        addrs(l) == ["127.0.0.1:30060", "127.0.0.1:30061"]
    });
    let other = registry::open(Some(&url)).unwrap();
    let mut w2 = Collector::new(&other, SVC);
    w2.wait_for(Duration::from_secs(10), "a and b, new watch", |l| {
        l.len() == 2
    });
    wait_children(&d, PROVIDERS, SOON, "a and b", |c| {
        c.len() == 2 && c.contains(&names[0])
    });
}
