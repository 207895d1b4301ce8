//! Without an etcd binary, starting one fails and says why (its own test binary: it
//! sets `ETCD_BIN`).

use test_support::etcd::Etcd;

#[test]
fn a_missing_binary_is_an_error_that_says_so() {
    std::env::set_var("ETCD_BIN", "/nonexistent/etcd");
    let dir = tempfile::tempdir().unwrap();
    let err = Etcd::start(&dir.path().join("data"), &dir.path().join("etcd.log")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("/nonexistent/etcd"), "{err}");
}
