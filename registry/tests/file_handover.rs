//! The file registry during a binary upgrade: two live registrants of one address (the
//! old process and the new one) never take the entry from each other, and the old one's
//! deregistration leaves the new one's entry in place: watchers never see the address
//! disappear.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use registry::Instance;

#[test]
fn the_later_registrant_keeps_the_entry_and_the_earlier_deregisters_without_a_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().join("reg").display());
    let registry = registry::open(Some(&url)).expect("open");
    let inst = || Instance::new("com.example.Hello", "127.0.0.1:30000");
    let old = registry.register(inst().with_weight(1)).expect("old");
    let (tx, rx) = mpsc::channel();
    let _watch = registry
        .watch("com.example.Hello", move |list| {
            let _ = tx.send(list);
        })
        .expect("watch");
    // The new process registers the same address.
    std::thread::sleep(Duration::from_millis(200));
    let new = registry.register(inst().with_weight(2)).expect("new");
    // Heartbeats of both run a few times: the entry stays the new one's.
    std::thread::sleep(Duration::from_millis(2500));
    old.deregister().expect("old deregisters");
    let end = Instant::now() + Duration::from_millis(2500);
    let mut last_weight = 0;
    let mut seen_new = false;
    while Instant::now() < end {
        if let Ok(list) = rx.recv_timeout(Duration::from_millis(100)) {
            assert_eq!(list.len(), 1, "the address left the registry: {list:?}");
            last_weight = list[0].weight;
            seen_new |= last_weight == 2;
        }
    }
    assert!(seen_new, "the new registrant's entry was listed");
    assert_eq!(last_weight, 2, "the new registrant's entry stays");
    let file = dir
        .path()
        .join("reg")
        .join("com.example.Hello")
        .join("127.0.0.1:30000.json");
    assert!(
        file.exists(),
        "the entry is still there after the old deregistered"
    );
    new.deregister().expect("new deregisters");
    assert!(!file.exists(), "the last registrant removes it");
}
