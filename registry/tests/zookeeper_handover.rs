//! ZooKeeper during a binary upgrade: the new process registers the address the old one
//! holds (its own session, its own ephemeral node: Dubbo's node names carry the
//! registration's timestamp), then the old one deregisters. Watchers see the address
//! all along, and from the new registration on, the new process's entry. Needs a real
//! ZooKeeper (Debian's `zookeeperd`; `.ci/setup` installs it).
#![cfg(feature = "zookeeper")]

mod util;

use std::time::Duration;

use registry::Instance;
use util::zk::{Direct, Zk};
use util::{init_log, Collector};

const SVC: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";
const PROVIDERS: &str =
    "/dubbo/com.alibaba.dubbo.performance.demo.provider.IHelloService/providers";

#[test]
fn the_new_process_takes_the_address_over_without_a_gap() {
    init_log();
    let zk = Zk::start();
    // Two registries: two processes, each with its own session.
    let old_process = registry::open(Some(&zk.url())).expect("open");
    let new_process = registry::open(Some(&zk.url())).expect("open");
    let watcher = registry::open(Some(&zk.url())).expect("open");
    let d = Direct::connect(&zk.connect_string());
    let inst = |w| Instance::new(SVC, "127.0.0.1:30000").with_weight(w);
    let old = old_process.register(inst(1)).expect("old registers");
    let mut w = Collector::new(&watcher, SVC);
    w.wait_for(Duration::from_secs(3), "the old entry", |l| {
        l.len() == 1 && l[0].weight == 1
    });
    // Node names carry the time in milliseconds: the new one's is later.
    std::thread::sleep(Duration::from_millis(5));
    let new = new_process.register(inst(2)).expect("new registers");
    assert_eq!(d.children(PROVIDERS).len(), 2, "both nodes, side by side");
    w.wait_for(Duration::from_secs(3), "the new entry", |l| {
        l.len() == 1 && l[0].weight == 2
    });
    old.deregister().expect("old deregisters");
    let end = std::time::Instant::now() + Duration::from_secs(3);
    while d.children(PROVIDERS).len() != 1 {
        assert!(std::time::Instant::now() < end, "the old node stays");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // Every list delivered since the new registration holds the new entry, alone.
    while let Ok(list) = w.rx.try_recv() {
        assert_eq!(list.len(), 1, "the address left the registry: {list:?}");
        assert_eq!(list[0].weight, 2, "{list:?}");
    }
    new.deregister().expect("new deregisters");
    w.wait_for(Duration::from_secs(3), "the address gone", |l| l.is_empty());
}
