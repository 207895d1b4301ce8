//! etcd backend against a real etcd server (`/usr/bin/etcd`, or `$ETCD_BIN`).
//!
//! Only with the `etcd` feature (on by default).
#![cfg(feature = "etcd")]

mod util;

use std::time::{Duration, Instant};

use registry::Instance;
use util::{addrs, init_log, ChildRegistrant, Collector, Etcd, Proxy};

const SVC: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";
const SOON: Duration = Duration::from_secs(3);
const PREFIX: &str = "/dubbomesh/com.alibaba.dubbo.performance.demo.provider.IHelloService/";

fn key(addr: &str) -> String {
    format!("{PREFIX}{addr}")
}

#[test]
fn register_watch_deregister() {
    init_log();
    let etcd = Etcd::start();
    let reg = registry::open(Some(&etcd.url("?ttl=2"))).unwrap();
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(SOON, "initial empty list", |l| l.is_empty());

    let a = reg
        .register(
            Instance::new(SVC, "127.0.0.1:30000")
                .with_weight(300)
                .with_meta("serialization", "hessian2"),
        )
        .unwrap();
    // register() returned after the put: the key is there with the JSON value
    assert_eq!(etcd.keys(PREFIX), [key("127.0.0.1:30000")]);
    let value = etcd.with_client(|mut c| async move {
        let r = c.get(key("127.0.0.1:30000"), None).await.unwrap();
        r.kvs()[0].value_str().unwrap().to_owned()
    });
    let v: serde_json::Value = serde_json::from_str(&value).unwrap();
    assert_eq!(v["weight"].as_u64(), Some(300));
    assert_eq!(v["meta"]["serialization"].as_str(), Some("hessian2"));

    let list = w.wait_for(SOON, "a", |l| l.len() == 1);
    assert_eq!(list[0].service, SVC);
    assert_eq!(list[0].addr, "127.0.0.1:30000");
    assert_eq!(list[0].weight, 300);
    assert_eq!(
        list[0].meta.get("serialization").map(String::as_str),
        Some("hessian2")
    );

    let b = reg.register(Instance::new(SVC, "127.0.0.1:30001")).unwrap();
    let list = w.wait_for(SOON, "a and b", |l| l.len() == 2);
    assert_eq!(addrs(&list), ["127.0.0.1:30000", "127.0.0.1:30001"]);

    let t = Instant::now();
    a.deregister().unwrap();
    assert!(t.elapsed() < Duration::from_millis(1500));
    assert_eq!(
        etcd.keys(PREFIX),
        [key("127.0.0.1:30001")],
        "lease revoked on deregister"
    );
    w.wait_for(SOON, "only b", |l| addrs(l) == ["127.0.0.1:30001"]);

    drop(b); // drop revokes too
    assert!(etcd.keys(PREFIX).is_empty());
    w.wait_for(SOON, "empty", |l| l.is_empty());
}

#[test]
fn dead_agent_lease_expires() {
    init_log();
    let etcd = Etcd::start();
    let url = etcd.url("?ttl=2");
    let reg = registry::open(Some(&url)).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let mut child = ChildRegistrant::spawn(&url, SVC, "127.0.0.1:30010");
    w.wait_for(SOON, "child's entry", |l| addrs(l) == ["127.0.0.1:30010"]);
    // stays registered beyond its TTL while alive (keep-alive works)
    w.assert_quiet(Duration::from_millis(3000), "alive child stays registered");
    let t = Instant::now();
    child.kill9();
    w.wait_for(Duration::from_secs(6), "lease expiry", |l| l.is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "removed by expiry, not revoke"
    );
    assert!(etcd.keys(PREFIX).is_empty());
}

#[test]
fn etcd_restart_under_live_watch_and_registration() {
    init_log();
    let mut etcd = Etcd::start();
    let url = etcd.url("?ttl=2");
    let reg = registry::open(Some(&url)).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let _a = reg.register(Instance::new(SVC, "127.0.0.1:30020")).unwrap();
    w.wait_for(SOON, "a", |l| addrs(l) == ["127.0.0.1:30020"]);

    etcd.kill();
    // etcd down: the watcher keeps its last list, no empty delivery
    w.assert_quiet(Duration::from_millis(1500), "etcd down: keep the last list");
    etcd.restart().expect("etcd restart");

    // the watcher is live again: it sees a new instance
    let other = registry::open(Some(&url)).unwrap();
    let _b = other
        .register(Instance::new(SVC, "127.0.0.1:30021"))
        .unwrap();
    let list = w.wait_for(Duration::from_secs(8), "a and b after restart", |l| {
        l.len() == 2
    });
    assert_eq!(addrs(&list), ["127.0.0.1:30020", "127.0.0.1:30021"]);

    // the registration is alive again: after more than two TTLs, a is still there, once
    let deadline = Instant::now() + Duration::from_millis(5000);
    while Instant::now() < deadline {
        if let Ok(l) =
            w.rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            assert_eq!(
                addrs(&l),
                ["127.0.0.1:30020", "127.0.0.1:30021"],
                "list changed"
            );
        }
    }
    assert_eq!(
        etcd.keys(PREFIX),
        [key("127.0.0.1:30020"), key("127.0.0.1:30021")]
    );
}

#[test]
fn watch_started_while_etcd_is_down() {
    init_log();
    let mut etcd = Etcd::start();
    etcd.kill();
    let reg = registry::open(Some(&etcd.url(""))).unwrap();
    let mut w = Collector::new(&reg, SVC);
    // nothing known yet: no list at all (not an empty one) while etcd is down
    w.assert_quiet(Duration::from_millis(800), "etcd down from the start");
    etcd.restart().expect("etcd restart");
    w.wait_for(Duration::from_secs(8), "the list once etcd is up", |l| {
        l.is_empty()
    });
    let _a = reg.register(Instance::new(SVC, "127.0.0.1:30030")).unwrap();
    w.wait_for(SOON, "a", |l| l.len() == 1);
}

#[test]
fn lost_lease_is_re_registered() {
    init_log();
    let etcd = Etcd::start();
    let reg = registry::open(Some(&etcd.url("?ttl=2"))).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let _a = reg.register(Instance::new(SVC, "127.0.0.1:30040")).unwrap();
    w.wait_for(SOON, "a", |l| l.len() == 1);
    // someone revokes our lease: the key goes, the registration puts it back on a new
    // lease (so quickly that the watcher, delivering at most every 50 ms, may never
    // show the gap: etcd itself is asked)
    let lease_of = |etcd: &Etcd| {
        etcd.with_client(|mut c| async move {
            let r = c.get(key("127.0.0.1:30040"), None).await.unwrap();
            r.kvs().first().map(|kv| kv.lease())
        })
    };
    let old = lease_of(&etcd).expect("registered");
    assert_ne!(old, 0, "registered with a lease");
    etcd.with_client(|mut c| async move {
        c.lease_revoke(old).await.unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while lease_of(&etcd).is_none_or(|l| l == old) {
        assert!(
            Instant::now() < deadline,
            "not put back on a new lease in 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(etcd.keys(PREFIX), [key("127.0.0.1:30040")]);
    // Whatever the watcher showed meanwhile, its last list has a again (polled: its
    // delivery may lag etcd on a busy machine), and stays so.
    let again = test_support::wait::wait_until(SOON, || {
        while let Ok(l) = w.rx.try_recv() {
            w.last = Some(l);
        }
        w.last.as_deref().map(addrs) == Some(vec!["127.0.0.1:30040"])
    });
    assert!(again, "a listed again; last list: {:?}", w.last);
    let end = Instant::now() + Duration::from_millis(500);
    while let Ok(l) =
        w.rx.recv_timeout(end.saturating_duration_since(Instant::now()))
    {
        w.last = Some(l);
    }
    assert_eq!(w.last.as_deref().map(addrs), Some(vec!["127.0.0.1:30040"]));
}

#[test]
fn two_watchers_see_the_same_lists() {
    init_log();
    let etcd = Etcd::start();
    let url = etcd.url("");
    let r1 = registry::open(Some(&url)).unwrap();
    let r2 = registry::open(Some(&url)).unwrap();
    let mut w1 = Collector::new(&r1, SVC);
    let mut w2 = Collector::new(&r2, SVC);
    let mut w3 = Collector::new(&r1, SVC); // two watches on one registry too
    for w in [&mut w1, &mut w2, &mut w3] {
        w.wait_for(SOON, "empty", |l| l.is_empty());
    }
    let a = r1
        .register(Instance::new(SVC, "127.0.0.1:30050").with_weight(5))
        .unwrap();
    let _b = r2.register(Instance::new(SVC, "127.0.0.1:30051")).unwrap();
    let l1 = w1.wait_for(SOON, "a b", |l| l.len() == 2);
    let l2 = w2.wait_for(SOON, "a b", |l| l.len() == 2);
    let l3 = w3.wait_for(SOON, "a b", |l| l.len() == 2);
    assert_eq!(l1, l2);
    assert_eq!(l1, l3);
    drop(a);
    let l1 = w1.wait_for(SOON, "b", |l| l.len() == 1);
    let l2 = w2.wait_for(SOON, "b", |l| l.len() == 1);
    assert_eq!(l1, l2);
}

#[test]
fn race_entries_with_empty_values_get_the_default_weight() {
    init_log();
    let etcd = Etcd::start();
    etcd.with_client(|mut c| async move {
        c.put(key("10.10.10.3:30000"), "", None).await.unwrap();
        c.put(key("10.10.10.4:30000"), "not json", None)
            .await
            .unwrap();
        // not an instance of this service: nested key
        c.put(format!("{PREFIX}x/y"), "", None).await.unwrap();
    });
    let reg = registry::open(Some(&etcd.url(""))).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let list = w.wait_for(SOON, "race entries", |l| !l.is_empty());
    assert_eq!(addrs(&list), ["10.10.10.3:30000", "10.10.10.4:30000"]);
    assert!(list.iter().all(|i| i.weight == 100 && i.meta.is_empty()));
    // and through the watch stream, too
    etcd.with_client(|mut c| async move {
        c.put(key("10.10.10.5:30000"), "", None).await.unwrap();
    });
    let list = w.wait_for(SOON, "third", |l| l.len() == 3);
    assert_eq!(list[2].weight, 100);
}

#[test]
fn dropped_registry_handle_keeps_registration_and_watch() {
    init_log();
    let etcd = Etcd::start();
    let reg = registry::open(Some(&etcd.url("?ttl=2"))).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let a = reg.register(Instance::new(SVC, "127.0.0.1:30060")).unwrap();
    drop(reg); // the runtime lives on while a registration or a watch does
    w.wait_for(SOON, "a", |l| l.len() == 1);
    a.deregister().unwrap();
    w.wait_for(SOON, "empty", |l| l.is_empty());
}

#[test]
fn compacted_revision_falls_back_to_a_full_read() {
    init_log();
    let etcd = Etcd::start();
    let proxy = Proxy::start(etcd.client_addr().port());
    // the watcher reaches etcd through the proxy; the registrations directly
    let watcher_reg = registry::open(Some(&proxy.url(""))).unwrap();
    let direct = registry::open(Some(&etcd.url("?ttl=2"))).unwrap();
    let a = direct
        .register(Instance::new(SVC, "127.0.0.1:30070"))
        .unwrap();
    let mut w = Collector::new(&watcher_reg, SVC);
    w.wait_for(SOON, "a", |l| addrs(l) == ["127.0.0.1:30070"]);

    proxy.set_down();
    // unreachable: the watcher keeps its list
    w.assert_quiet(
        Duration::from_millis(700),
        "etcd unreachable: keep the last list",
    );
    // meanwhile: a goes, b comes, and the history is compacted
    a.deregister().unwrap();
    let _b = direct
        .register(Instance::new(SVC, "127.0.0.1:30071"))
        .unwrap();
    etcd.with_client(|mut c| async move {
        let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
        c.compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    });
    w.assert_quiet(Duration::from_millis(300), "still unreachable");
    proxy.set_up();
    // resuming at the compacted revision fails: the watcher reads everything anew
    let list = w.wait_for(Duration::from_secs(8), "b only", |l| {
        addrs(l) == ["127.0.0.1:30071"]
    });
    assert_eq!(list.len(), 1);
}

#[test]
fn broken_stream_resumes_from_the_last_revision() {
    init_log();
    let etcd = Etcd::start();
    let proxy = Proxy::start(etcd.client_addr().port());
    let watcher_reg = registry::open(Some(&proxy.url(""))).unwrap();
    let direct = registry::open(Some(&etcd.url("?ttl=2"))).unwrap();
    let mut w = Collector::new(&watcher_reg, SVC);
    w.wait_for(SOON, "empty", |l| l.is_empty());
    proxy.set_down();
    let a = direct
        .register(Instance::new(SVC, "127.0.0.1:30080"))
        .unwrap();
    let _b = direct
        .register(Instance::new(SVC, "127.0.0.1:30081"))
        .unwrap();
    a.deregister().unwrap();
    w.assert_quiet(Duration::from_millis(500), "unreachable");
    proxy.set_up();
    // the missed events are replayed from the last revision: a's put and delete, b's put
    w.wait_for(Duration::from_secs(8), "b", |l| {
        addrs(l) == ["127.0.0.1:30081"]
    });
}

#[test]
fn several_endpoints_one_of_them_dead() {
    init_log();
    let etcd = Etcd::start();
    let dead = test_support::net::free_port().unwrap();
    let url = format!(
        "etcd://127.0.0.1:{dead},127.0.0.1:{}?ttl=2",
        etcd.client_addr().port()
    );
    let reg = registry::open(Some(&url)).unwrap();
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(Duration::from_secs(6), "empty", |l| l.is_empty());
    let a = reg.register(Instance::new(SVC, "127.0.0.1:30090")).unwrap();
    w.wait_for(Duration::from_secs(6), "a", |l| l.len() == 1);
    assert_eq!(etcd.keys(PREFIX), [key("127.0.0.1:30090")]);
    // kept alive past its TTL through the live endpoint
    w.assert_quiet(Duration::from_millis(3000), "a stays");
    a.deregister().unwrap();
    w.wait_for(Duration::from_secs(6), "empty", |l| l.is_empty());
}

#[test]
fn watch_follows_an_etcd_that_lost_its_data() {
    init_log();
    let mut etcd = Etcd::start();
    // Writes elsewhere first: the watch starts at a revision above 100.
    etcd.with_client(|mut c| async move {
        for i in 0..100 {
            c.put(format!("/elsewhere/{i}"), "x", None).await.unwrap();
        }
    });
    let url = etcd.url("?ttl=2");
    let reg = registry::open(Some(&url)).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let _a = reg.register(Instance::new(SVC, "127.0.0.1:30030")).unwrap();
    w.wait_for(SOON, "a", |l| addrs(l) == ["127.0.0.1:30030"]);

    // A new, empty etcd on the same port: its revisions start again from 1, below the
    // watch's resume point, so resuming there would miss every event.
    etcd.restart_empty().expect("etcd restart, empty");
    let other = registry::open(Some(&url)).unwrap();
    let _b = other
        .register(Instance::new(SVC, "127.0.0.1:30031"))
        .unwrap();
    w.wait_for(Duration::from_secs(10), "a and b on the new etcd", |l| {
        addrs(l) == ["127.0.0.1:30030", "127.0.0.1:30031"]
    });
}

#[test]
fn a_key_deleted_under_a_live_lease_is_put_back() {
    init_log();
    let etcd = Etcd::start();
    let reg = registry::open(Some(&etcd.url("?ttl=2"))).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let _a = reg.register(Instance::new(SVC, "127.0.0.1:30050")).unwrap();
    w.wait_for(SOON, "a", |l| l.len() == 1);
    // An operator deletes the key; the lease lives on, so keep-alives alone never notice.
    etcd.with_client(|mut c| async move {
        c.delete(key("127.0.0.1:30050"), None).await.unwrap();
    });
    w.wait_for(SOON, "a gone", |l| l.is_empty());
    w.wait_for(Duration::from_secs(6), "a back", |l| {
        addrs(l) == ["127.0.0.1:30050"]
    });
    assert_eq!(etcd.keys(PREFIX), [key("127.0.0.1:30050")]);
}

#[test]
fn a_storm_of_registrations_is_delivered_in_a_few_lists() {
    init_log();
    let etcd = Etcd::start();
    let reg = registry::open(Some(&etcd.url(""))).unwrap();
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(SOON, "the empty list", |l| l.is_empty());
    // 300 instances appear one put at a time, as when every provider re-registers.
    etcd.with_client(|mut c| async move {
        for i in 0..300 {
            c.put(key(&format!("127.0.0.1:{}", 40_000 + i)), "", None)
                .await
                .unwrap();
        }
    });
    let lists = std::cell::Cell::new(0);
    w.wait_for(Duration::from_secs(10), "all 300", |l| {
        lists.set(lists.get() + 1);
        l.len() == 300
    });
    // Each list is a whole copy: one per event would be 300 copies of up to 300.
    assert!(lists.get() <= 100, "{} lists for 300 events", lists.get());
}
