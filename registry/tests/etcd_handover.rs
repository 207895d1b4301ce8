//! etcd during a binary upgrade: the new process puts the same key on its own lease
//! before the old one revokes its own; the old one's revoke (and its keep-alive's check
//! of the key) leave the new one's key in place. Needs a real etcd (`/usr/bin/etcd`, or
//! `$ETCD_BIN`); only with the `etcd` feature.
#![cfg(feature = "etcd")]

mod util;

use std::time::Duration;

use registry::Instance;
use util::{init_log, Collector, Etcd};

const SVC: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";
const KEY: &str =
    "/dubbomesh/com.alibaba.dubbo.performance.demo.provider.IHelloService/127.0.0.1:30000";

#[test]
fn the_old_process_revoking_its_lease_leaves_the_new_one_registered() {
    init_log();
    let etcd = Etcd::start();
    // Two registries: two processes, each with its own connection and leases.
    let old_process = registry::open(Some(&etcd.url("?ttl=2"))).expect("open");
    let new_process = registry::open(Some(&etcd.url("?ttl=2"))).expect("open");
    let watcher = registry::open(Some(&etcd.url(""))).expect("open");
    let inst = |w| Instance::new(SVC, "127.0.0.1:30000").with_weight(w);
    let old = old_process.register(inst(1)).expect("old registers");
    let mut w = Collector::new(&watcher, SVC);
    w.wait_for(Duration::from_secs(3), "the old entry", |l| {
        l.len() == 1 && l[0].weight == 1
    });
    let new = new_process.register(inst(2)).expect("new registers");
    w.wait_for(Duration::from_secs(3), "the new entry", |l| {
        l.len() == 1 && l[0].weight == 2
    });
    // Both keep-alives run past their key checks (every TTL): neither takes it back.
    std::thread::sleep(Duration::from_secs(3));
    old.deregister().expect("old deregisters");
    assert_eq!(
        etcd.keys(KEY),
        [KEY],
        "the key survives the old lease's revoke"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(etcd.keys(KEY), [KEY], "and the old lease's expiry");
    // Every list delivered since the new registration holds the new entry.
    while let Ok(list) = w.rx.try_recv() {
        assert_eq!(list.len(), 1, "the address left the registry: {list:?}");
        assert_eq!(list[0].weight, 2);
    }
    new.deregister().expect("new deregisters");
    assert!(etcd.keys(KEY).is_empty());
}
