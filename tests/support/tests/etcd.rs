//! A real etcd: started healthy, killed, restarted on its data and empty. Needs the
//! etcd binary (`.ci/setup` installs it): without it these tests fail.

use std::time::Duration;

use test_support::etcd::Etcd;

#[test]
fn etcd_starts_stops_and_restarts_on_the_same_ports() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("logs/etcd.log"));
    let mut etcd = Etcd::start(&data, &log).unwrap_or_else(|e| panic!("{e}"));
    let client = etcd.client_addr();
    assert!(etcd.is_healthy());
    assert!(data.is_dir() && log.is_file());
    assert_eq!(etcd.endpoint(), format!("http://{client}"));

    etcd.kill();
    assert!(!etcd.is_healthy());
    assert!(etcd.pid().is_none());
    etcd.restart().unwrap();
    assert_eq!(etcd.client_addr(), client);
    assert!(etcd.is_healthy());

    etcd.stop(Duration::from_secs(3));
    assert!(!etcd.is_healthy());
    etcd.restart_empty().unwrap();
    assert!(etcd.is_healthy());
    etcd.check_alive().unwrap();
}

#[test]
fn etcd_exiting_at_start_is_an_error_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, "not a directory").unwrap();
    let err = Etcd::start(&data, &dir.path().join("etcd.log")).unwrap_err();
    assert!(err.to_string().contains("exited"), "{err}");
}
