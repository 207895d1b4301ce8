//! Without ZooKeeper, starting one fails and says what to do (its own test binary: it
//! sets `ZOOKEEPER_HOME`).

use test_support::zk::ZooKeeper;

#[test]
fn a_missing_installation_is_an_error_that_names_ci_setup() {
    std::env::set_var("ZOOKEEPER_HOME", "/nonexistent/zookeeper");
    let err = ZooKeeper::start().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/zookeeper"), "{msg}");
    assert!(msg.contains(".ci/setup"), "{msg}");
}
