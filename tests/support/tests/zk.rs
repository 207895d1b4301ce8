//! The ZooKeeper harness starts a real server that serves, and restarts it on its data.

use std::time::Duration;

use test_support::zk::ZooKeeper;

#[test]
fn standalone_serves_restarts_and_is_killed_on_drop() {
    let mut zk = ZooKeeper::start().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(zk.len(), 1);
    assert_eq!(zk.four_letter(0, "ruok").unwrap(), "imok");
    assert_eq!(zk.mode(0).as_deref(), Some("standalone"));
    assert_eq!(zk.leader(), Some(0));
    let addr = zk.addr(0);
    assert_eq!(zk.connect_string(), addr.to_string());
    assert_eq!(zk.url(), format!("zookeeper://{addr}/dubbo"));
    zk.kill(0);
    assert!(!zk.is_serving(0));
    assert_eq!(zk.leader(), None);
    zk.restart(0).unwrap_or_else(|e| panic!("{e}"));
    assert!(zk.is_serving(0));
    drop(zk);
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
        "killed on drop"
    );
}

#[test]
fn an_ensemble_elects_a_new_leader_when_its_leader_is_killed() {
    let mut zk = ZooKeeper::ensemble(3).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(zk.len(), 3);
    assert_eq!(zk.connect_string().split(',').count(), 3);
    let leader = zk.leader().expect("a leader");
    let modes: Vec<Option<String>> = (0..3).map(|i| zk.mode(i)).collect();
    assert_eq!(
        modes
            .iter()
            .filter(|m| m.as_deref() == Some("follower"))
            .count(),
        2,
        "{modes:?}"
    );
    zk.kill(leader);
    assert!(
        test_support::wait::wait_until(Duration::from_secs(20), || zk
            .leader()
            .is_some_and(|l| l != leader)),
        "no new leader"
    );
    zk.restart(leader).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(zk.mode(leader).as_deref(), Some("follower"));
}
