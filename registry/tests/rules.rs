//! Traffic rules documents (`put_rules`, `watch_rules`) with each backend: a real etcd, a
//! real ZooKeeper, the file registry, a static list.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use registry::{Error, Instance, Registry, MAX_RULES_BYTES};
use util::{init_log, wait_skipped, Collector, RulesCollector};

const SVC: &str = "com.example.IRulesService";
const SOON: Duration = Duration::from_secs(3);
/// How soon a stored document must be delivered.
const ONE_S: Duration = Duration::from_secs(1);
const R1: &str = r#"{"version":1,"routes":[{"match":{"method":"hello"},"to":"v1"}]}"#;
const R2: &str = r#"{"version":2,"routes":[{"match":{"method":"hello"},"to":"v2"}]}"#;
const R3: &str = r#"{"version":3}"#;

/// What every backend but static does: none at start, put, change, the same text again,
/// oversize refused, bad documents written behind the registry's back (by `behind`)
/// skipped and counted with the last good one kept, delete. The service's instance
/// watch sees none of it.
fn store_change_skip_delete(reg: &Registry, behind: &dyn Fn(&[u8])) {
    let mut instances = Collector::new(reg, SVC);
    instances.wait_for(SOON, "no instances", <[Instance]>::is_empty);
    let mut w = RulesCollector::new(reg, SVC);
    w.expect(SOON, None);

    let t = Instant::now();
    reg.put_rules(SVC, Some(R1)).unwrap();
    w.expect(ONE_S, Some(R1));
    eprintln!("put to delivery: {:?}", t.elapsed());
    reg.put_rules(SVC, Some(R2)).unwrap();
    w.expect(ONE_S, Some(R2));
    reg.put_rules(SVC, Some(R2)).unwrap();
    w.assert_quiet(Duration::from_millis(300), "the same text again");

    // The largest document there may be is stored and delivered; one byte more is refused.
    let largest = format!("{R3}{}", " ".repeat(MAX_RULES_BYTES - R3.len()));
    reg.put_rules(SVC, Some(&largest)).unwrap();
    w.expect(ONE_S, Some(&largest));
    let over = format!("{largest} ");
    match reg.put_rules(SVC, Some(&over)) {
        Err(Error::InvalidRules(m)) => assert!(m.contains("262145 bytes"), "{m}"),
        other => panic!("an oversize document stored: {other:?}"),
    }
    reg.put_rules(SVC, Some(R2)).unwrap();
    w.expect(ONE_S, Some(R2));

    // Behind the registry's back: too large, then not UTF-8. Neither is delivered: R2
    // stands, and each is counted once.
    let before = reg.skipped_entries();
    behind(over.as_bytes());
    wait_skipped(reg, before + 1, "an oversize document");
    behind(b"{\"version\":\xff}");
    wait_skipped(reg, before + 2, "a document that is not UTF-8");
    w.assert_quiet(
        Duration::from_millis(300),
        "bad documents are not delivered",
    );
    assert_eq!(reg.skipped_entries(), before + 2, "each counted once");

    reg.put_rules(SVC, Some(R3)).unwrap();
    w.expect(ONE_S, Some(R3));
    reg.put_rules(SVC, None).unwrap();
    w.expect(ONE_S, None);
    reg.put_rules(SVC, None).unwrap(); // deleting what is not there is fine
    w.assert_quiet(Duration::from_millis(200), "deleted again");
    instances.assert_quiet(Duration::ZERO, "the instance watch never sees the rules");
}

#[test]
fn static_lists_have_no_rules() {
    init_log();
    let reg = registry::open(Some("static://127.0.0.1:20880")).unwrap();
    let mut w = RulesCollector::new(&reg, SVC);
    w.expect(SOON, None);
    w.assert_quiet(Duration::from_millis(200), "once");
    assert!(matches!(
        reg.put_rules(SVC, Some(R1)),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        reg.put_rules("bad/name", Some(R1)),
        Err(Error::InvalidInstance(_))
    ));
}

// ---------------------------------------------------------------- file

#[test]
fn file_rules() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let reg = registry::open(Some(&format!("file://{}", dir.path().display()))).unwrap();
    let sdir = dir.path().join(SVC);
    let path = sdir.join("mesh-rules");
    // An operator's tool writing the file itself, atomically.
    let behind = |bytes: &[u8]| {
        let tmp = sdir.join(".behind.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    store_change_skip_delete(&reg, &behind);
    assert!(!path.exists(), "deleted");

    let mut w = RulesCollector::new(&reg, SVC);
    w.expect(SOON, None);
    reg.put_rules(SVC, Some(R1)).unwrap();
    w.expect(ONE_S, Some(R1));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let names: Vec<String> = std::fs::read_dir(&sdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["mesh-rules"], "no temporary file left");

    // Not a regular file: a link (not followed) and a FIFO (never opened to block on),
    // each skipped and counted once; the last good document stands. Each is renamed over
    // the document, so that the watch, woken by every change, never sees it missing.
    let before = reg.skipped_entries();
    let tmp = sdir.join(".odd.tmp");
    std::os::unix::fs::symlink("/dev/zero", &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wait_skipped(&reg, before + 1, "a link");
    util::mkfifo(&tmp);
    std::fs::rename(&tmp, &path).unwrap();
    wait_skipped(&reg, before + 2, "a FIFO");
    w.assert_quiet(Duration::from_millis(200), "not regular files");
    reg.put_rules(SVC, Some(R2)).unwrap(); // replaces the FIFO
    w.expect(ONE_S, Some(R2));

    // A directory that is not private: refused by put_rules; the watch keeps R2.
    std::fs::set_permissions(&sdir, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(matches!(
        reg.put_rules(SVC, Some(R3)),
        Err(Error::Insecure(_))
    ));
    std::fs::write(sdir.join("planted"), R3).unwrap();
    std::fs::rename(sdir.join("planted"), &path).unwrap();
    w.assert_quiet(Duration::from_millis(300), "directory refused: keep R2");
    std::fs::set_permissions(&sdir, std::fs::Permissions::from_mode(0o700)).unwrap();
    w.expect(ONE_S, Some(R3));

    // Persistent: another registry on the directory sees it.
    drop(w);
    drop(reg);
    let other = registry::open(Some(&format!("file://{}", dir.path().display()))).unwrap();
    RulesCollector::new(&other, SVC).expect(SOON, Some(R3));
}

#[test]
fn file_rules_file_is_not_an_instance_entry() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let reg = registry::open(Some(&format!("file://{}", dir.path().display()))).unwrap();
    reg.put_rules(SVC, Some(R1)).unwrap();
    let _a = reg.register(Instance::new(SVC, "127.0.0.1:20001")).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let list = w.wait_for(SOON, "a", |l| l.len() == 1);
    assert_eq!(list[0].addr, "127.0.0.1:20001");
    w.assert_quiet(Duration::from_millis(300), "nothing else");
    assert_eq!(reg.skipped_entries(), 0);
    assert!(Path::new(&dir.path().join(SVC).join("mesh-rules")).is_file());
}

// ---------------------------------------------------------------- etcd

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use util::{Etcd, Proxy};

    const KEY: &str = "/dubbomesh-rules/com.example.IRulesService";

    fn put(etcd: &Etcd, value: Vec<u8>) {
        etcd.with_client(|mut c| async move {
            c.put(KEY, value, None).await.unwrap();
        });
    }

    #[test]
    fn etcd_rules() {
        init_log();
        let etcd = Etcd::start();
        let reg = registry::open(Some(&etcd.url(""))).unwrap();
        store_change_skip_delete(&reg, &|bytes| put(&etcd, bytes.to_vec()));

        reg.put_rules(SVC, Some(R1)).unwrap();
        assert_eq!(etcd.keys("/dubbomesh-rules/"), [KEY]);
        assert!(
            etcd.keys("/dubbomesh/").is_empty(),
            "nothing under the instance prefix"
        );
        let (value, lease) = etcd.with_client(|mut c| async move {
            let r = c.get(KEY, None).await.unwrap();
            let kv = &r.kvs()[0];
            (kv.value_str().unwrap().to_owned(), kv.lease())
        });
        assert_eq!(value, R1);
        assert_eq!(lease, 0, "not on a lease");
        drop(reg);
        let other = registry::open(Some(&etcd.url(""))).unwrap();
        RulesCollector::new(&other, SVC).expect(SOON, Some(R1));
    }

    #[test]
    fn etcd_rules_watch_survives_a_restart_and_a_compaction() {
        init_log();
        let mut etcd = Etcd::start();
        let proxy = Proxy::start(etcd.client_addr().port());
        // The watch reaches etcd through the proxy, the writes go straight to it.
        let reg = registry::open(Some(&proxy.url(""))).unwrap();
        let direct = registry::open(Some(&etcd.url(""))).unwrap();
        let mut w = RulesCollector::new(&reg, SVC);
        w.expect(SOON, None);
        direct.put_rules(SVC, Some(R1)).unwrap();
        w.expect(ONE_S, Some(R1));

        etcd.kill();
        w.assert_quiet(
            Duration::from_millis(1500),
            "etcd down: keep the last document",
        );
        etcd.restart().expect("etcd restart");
        direct.put_rules(SVC, Some(R2)).unwrap();
        w.expect(Duration::from_secs(8), Some(R2));

        // Cut off while the document changes twice and the history is compacted: the
        // watch cannot resume where it was, reads the key again and gets the last one.
        proxy.set_down();
        w.assert_quiet(Duration::from_millis(300), "cut off");
        direct.put_rules(SVC, Some(R1)).unwrap();
        direct.put_rules(SVC, Some(R3)).unwrap();
        etcd.with_client(|mut c| async move {
            let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
            let physical = etcd_client::CompactionOptions::new().with_physical();
            c.compact(rev, Some(physical)).await.unwrap();
        });
        proxy.set_up();
        w.expect(Duration::from_secs(8), Some(R3));
        w.assert_quiet(Duration::from_millis(300), "only the last document");
    }
}

// ---------------------------------------------------------------- ZooKeeper

#[cfg(feature = "zookeeper")]
mod zookeeper {
    use super::*;
    use util::zk::{Direct, Zk};
    use util::Proxy;

    const NODE: &str = "/dubbo/com.example.IRulesService/mesh-rules";
    const PROVIDERS: &str = "/dubbo/com.example.IRulesService/providers";

    fn set(d: &Direct, data: &[u8]) {
        d.run(d.client.set_data(NODE, data, None))
            .unwrap_or_else(|e| panic!("setting {NODE}: {e}"));
    }

    fn data(d: &Direct) -> Option<Vec<u8>> {
        match d.run(d.client.get_data(NODE)) {
            Ok((data, _)) => Some(data),
            Err(zookeeper_client::Error::NoNode) => None,
            Err(e) => panic!("reading {NODE}: {e}"),
        }
    }

    #[test]
    fn zookeeper_rules_and_a_restart() {
        init_log();
        let mut zk = Zk::start();
        // The session (5 s) outlives the restart.
        let url = zk.url_with("?session_timeout_ms=5000");
        let reg = registry::open(Some(&url)).unwrap();
        let d = Direct::connect(&zk.connect_string());
        store_change_skip_delete(&reg, &|bytes| set(&d, bytes));
        assert_eq!(data(&d), None, "deleted");

        // Dubbo's layout: the node next to providers and consumers, persistent, holding
        // the document; the providers' children are those registered.
        let _a = reg.register(Instance::new(SVC, "127.0.0.1:30000")).unwrap();
        reg.put_rules(SVC, Some(R1)).unwrap();
        assert_eq!(data(&d).as_deref(), Some(R1.as_bytes()));
        assert_eq!(
            d.stat(NODE).map(|s| s.ephemeral_owner),
            Some(0),
            "persistent"
        );
        let service = "/dubbo/com.example.IRulesService";
        assert_eq!(
            d.children(service),
            ["consumers", "mesh-rules", "providers"]
        );
        assert_eq!(d.children(PROVIDERS).len(), 1);

        let mut w = RulesCollector::new(&reg, SVC);
        w.expect(SOON, Some(R1));
        zk.kill(0);
        w.assert_quiet(
            Duration::from_millis(1500),
            "ZooKeeper down: keep the last document",
        );
        zk.restart(0).expect("ZooKeeper restart");
        let d = Direct::connect(&zk.connect_string());
        set(&d, R2.as_bytes());
        w.expect(Duration::from_secs(8), Some(R2));
        // and the data watch is re-armed after that event
        set(&d, R3.as_bytes());
        w.expect(ONE_S, Some(R3));

        // Persistent: it outlives the registry's session.
        drop(w);
        drop(_a);
        drop(reg);
        let other = registry::open(Some(&url)).unwrap();
        RulesCollector::new(&other, SVC).expect(SOON, Some(R3));
    }

    #[test]
    fn zookeeper_rules_watch_survives_a_session_expiry() {
        init_log();
        let zk = Zk::start();
        let proxy = Proxy::start(zk.addr(0).port());
        let reg = registry::open(Some(&proxy.zookeeper_url("?session_timeout_ms=2000"))).unwrap();
        // Its node shows when the server expires the session.
        let _a = reg.register(Instance::new(SVC, "127.0.0.1:30040")).unwrap();
        let mut w = RulesCollector::new(&reg, SVC);
        w.expect(SOON, None);
        reg.put_rules(SVC, Some(R1)).unwrap();
        w.expect(ONE_S, Some(R1));
        let d = Direct::connect(&zk.connect_string());
        assert_eq!(d.children(PROVIDERS).len(), 1);

        // ZooKeeper stays up, this registry cannot reach it: the server expires its
        // session. The document changes meanwhile.
        proxy.set_down();
        let expired = test_support::wait::wait_until(Duration::from_secs(6), || {
            d.children(PROVIDERS).is_empty()
        });
        assert!(expired, "the session did not expire");
        set(&d, R2.as_bytes());
        w.assert_quiet(
            Duration::from_millis(200),
            "cut off: keep the last document",
        );
        proxy.set_up();
        // A new session reads the node again and sets the watch again.
        w.expect(Duration::from_secs(8), Some(R2));
        set(&d, R3.as_bytes());
        w.expect(ONE_S, Some(R3));
        d.delete(NODE);
        w.expect(ONE_S, None);
        // a watch for the node's creation, too
        d.create(NODE, R1.as_bytes(), false);
        w.expect(ONE_S, Some(R1));
    }
}
