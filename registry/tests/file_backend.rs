//! File (embedded default) backend: behaviour tests.

mod util;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use registry::{Error, Instance};
use util::{addrs, init_log, ChildRegistrant, Collector};

const SVC: &str = "com.example.IHelloService";
const SOON: Duration = Duration::from_secs(2);

fn open(dir: &tempfile::TempDir) -> (registry::Registry, String) {
    let url = format!("file://{}", dir.path().display());
    (registry::open(Some(&url)).expect("open"), url)
}

#[test]
fn register_watch_deregister() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(SOON, "initial empty list", |l| l.is_empty());

    let a = reg
        .register(
            Instance::new(SVC, "127.0.0.1:20001")
                .with_weight(200)
                .with_meta("version", "1.0.0"),
        )
        .unwrap();
    let list = w.wait_for(SOON, "a", |l| l.len() == 1);
    assert_eq!(list[0].service, SVC);
    assert_eq!(list[0].addr, "127.0.0.1:20001");
    assert_eq!(list[0].weight, 200);
    assert_eq!(
        list[0].meta.get("version").map(String::as_str),
        Some("1.0.0")
    );

    let b = reg.register(Instance::new(SVC, "127.0.0.1:20002")).unwrap();
    let list = w.wait_for(SOON, "a and b", |l| l.len() == 2);
    assert_eq!(addrs(&list), ["127.0.0.1:20001", "127.0.0.1:20002"]);
    assert_eq!(list[1].weight, 100);

    a.deregister().unwrap();
    // deregister waited: the file is already gone
    assert!(!dir.path().join(SVC).join("127.0.0.1:20001.json").exists());
    let list = w.wait_for(SOON, "only b", |l| l.len() == 1);
    assert_eq!(addrs(&list), ["127.0.0.1:20002"]);

    drop(b);
    w.wait_for(SOON, "empty after drop", |l| l.is_empty());
}

#[test]
fn delivers_only_on_change_and_stays_registered() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let _a = reg.register(Instance::new(SVC, "10.0.0.1:1")).unwrap();
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(SOON, "a", |l| l.len() == 1);
    // heartbeats rewrite the file every second; the list does not change: no delivery,
    // and the entry outlives the 3 s staleness limit
    w.assert_quiet(Duration::from_millis(4000), "nothing changed");
}

#[test]
fn two_watchers_see_the_same_lists() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, url) = open(&dir);
    let reg2 = registry::open(Some(&url)).unwrap();
    let mut w1 = Collector::new(&reg, SVC);
    let mut w2 = Collector::new(&reg2, SVC);
    w1.wait_for(SOON, "empty", |l| l.is_empty());
    w2.wait_for(SOON, "empty", |l| l.is_empty());
    let a = reg.register(Instance::new(SVC, "10.0.0.1:1")).unwrap();
    let l1 = w1.wait_for(SOON, "a", |l| l.len() == 1);
    let l2 = w2.wait_for(SOON, "a", |l| l.len() == 1);
    assert_eq!(l1, l2);
    drop(a);
    w1.wait_for(SOON, "empty", |l| l.is_empty());
    w2.wait_for(SOON, "empty", |l| l.is_empty());
}

#[test]
fn other_services_are_separate() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let _x = reg
        .register(Instance::new("other.Service", "10.0.0.9:9"))
        .unwrap();
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(SOON, "empty", |l| l.is_empty());
    w.assert_quiet(Duration::from_millis(300), "other service");
}

#[test]
fn crashed_registrant_is_dropped() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, url) = open(&dir);
    let mut w = Collector::new(&reg, SVC);
    let mut child = ChildRegistrant::spawn(&url, SVC, "127.0.0.1:20880");
    w.wait_for(SOON, "child's entry", |l| addrs(l) == ["127.0.0.1:20880"]);
    child.kill9();
    w.wait_for(Duration::from_secs(5), "child's entry dropped", |l| {
        l.is_empty()
    });
    assert!(
        !dir.path().join(SVC).join("127.0.0.1:20880.json").exists(),
        "stale file removed"
    );
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[test]
fn stale_or_dead_entries_are_dropped() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let sdir = dir.path().join(SVC);
    std::fs::create_dir_all(&sdir).unwrap();
    let me = std::process::id();
    // alive pid, old heartbeat
    let old = format!(
        r#"{{"addr":"10.0.0.1:1","weight":100,"meta":{{}},"pid":{me},"heartbeat_ms":{}}}"#,
        now_ms() - 10_000
    );
    // fresh heartbeat, dead pid
    let dead = format!(
        r#"{{"addr":"10.0.0.2:2","weight":100,"meta":{{}},"pid":4000000000,"heartbeat_ms":{}}}"#,
        now_ms()
    );
    // fresh and alive
    let ok = format!(
        r#"{{"addr":"10.0.0.3:3","weight":7,"meta":{{}},"pid":{me},"heartbeat_ms":{}}}"#,
        now_ms() + 60_000
    );
    std::fs::write(sdir.join("10.0.0.1:1.json"), old).unwrap();
    // A registrant that stopped long ago left its file untouched as long: the file's
    // modification time also counts as a heartbeat.
    std::fs::File::options()
        .write(true)
        .open(sdir.join("10.0.0.1:1.json"))
        .unwrap()
        .set_modified(SystemTime::now() - std::time::Duration::from_secs(10))
        .unwrap();
    std::fs::write(sdir.join("10.0.0.2:2.json"), dead).unwrap();
    std::fs::write(sdir.join("10.0.0.3:3.json"), ok).unwrap();
    std::fs::write(sdir.join("garbage.json"), "{not json").unwrap();
    let mut w = Collector::new(&reg, SVC);
    let list = w.wait_for(SOON, "only the live entry", |l| !l.is_empty());
    assert_eq!(addrs(&list), ["10.0.0.3:3"]);
    assert_eq!(list[0].weight, 7);
    assert!(!sdir.join("10.0.0.1:1.json").exists());
    assert!(!sdir.join("10.0.0.2:2.json").exists());
}

#[test]
fn dropping_the_watch_stops_callbacks() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let (tx, rx) = std::sync::mpsc::channel();
    let watch = reg
        .watch(SVC, move |l| {
            let _ = tx.send(l);
        })
        .unwrap();
    rx.recv_timeout(SOON).unwrap();
    drop(watch);
    std::thread::sleep(Duration::from_millis(100)); // let an in-flight poll finish
    while rx.try_recv().is_ok() {}
    let _a = reg.register(Instance::new(SVC, "10.0.0.1:1")).unwrap();
    // the watcher thread exits and drops the callback: the channel disconnects
    match rx.recv_timeout(Duration::from_millis(500)) {
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
        other => panic!("callback after drop: {other:?}"),
    }
}

#[test]
fn default_registry_works() {
    init_log();
    let reg = registry::open(None).unwrap();
    let svc = format!("test.default.{}", std::process::id());
    let mut w = Collector::new(&reg, &svc);
    w.wait_for(SOON, "empty", |l| l.is_empty());
    let r = reg.register(Instance::new(&svc, "127.0.0.1:4242")).unwrap();
    w.wait_for(SOON, "registered", |l| l.len() == 1);
    r.deregister().unwrap();
    w.wait_for(SOON, "gone", |l| l.is_empty());
    let _ = std::fs::remove_dir(std::env::temp_dir().join("dubbo-mesh-registry").join(&svc));
}

#[test]
fn invalid_instances_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    for (svc, addr) in [
        ("", "1.2.3.4:5"),
        ("a/b", "1.2.3.4:5"),
        ("s", "nohost"),
        ("s", "h:0"),
        ("s", "h:x"),
        ("s", ":80"),
    ] {
        match reg.register(Instance::new(svc, addr)) {
            Err(Error::InvalidInstance(m)) => assert!(!m.is_empty()),
            other => panic!("{svc:?} {addr:?}: {other:?}"),
        }
    }
    assert!(matches!(
        reg.watch("", |_| {}),
        Err(Error::InvalidInstance(_))
    ));
}

#[test]
fn an_unreadable_file_does_not_freeze_the_list() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    // A directory where an entry's file would be: reading it fails, every scan.
    std::fs::create_dir_all(dir.path().join(SVC).join("127.0.0.1:20009.json")).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let _a = reg.register(Instance::new(SVC, "127.0.0.1:20001")).unwrap();
    w.wait_for(SOON, "a, past the unreadable entry", |l| {
        addrs(l) == ["127.0.0.1:20001"]
    });
}

#[test]
fn a_pid_from_another_pid_namespace_is_judged_by_its_heartbeat_alone() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let sdir = dir.path().join(SVC);
    std::fs::create_dir_all(&sdir).unwrap();
    // Written from another container: its pid does not exist here, its heartbeat is fresh.
    let other_container = format!(
        r#"{{"addr":"10.0.0.4:4","weight":100,"meta":{{}},"pid":4000000000,"pid_ns":"pid:[1]","heartbeat_ms":{}}}"#,
        now_ms() + 60_000
    );
    std::fs::write(sdir.join("10.0.0.4:4.json"), other_container).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let list = w.wait_for(SOON, "the other container's entry", |l| !l.is_empty());
    assert_eq!(addrs(&list), ["10.0.0.4:4"]);
    assert!(sdir.join("10.0.0.4:4.json").exists());
}
