//! Static lists and URL parsing.

use std::sync::mpsc;
use std::time::Duration;

use registry::{Error, Instance};

#[test]
fn static_list_is_delivered_once_per_watch() {
    let reg = registry::open(Some(
        "static://host-b:3,10.0.0.1:20000?weight=50,10.0.0.2:20001?weight=150&version=2",
    ))
    .unwrap();
    for svc in ["svc.A", "svc.B"] {
        let (tx, rx) = mpsc::channel();
        let _w = reg
            .watch(svc, move |l| {
                let _ = tx.send(l);
            })
            .unwrap();
        let list = rx.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!(
            list,
            vec![
                Instance::new(svc, "10.0.0.1:20000").with_weight(50),
                Instance::new(svc, "10.0.0.2:20001")
                    .with_weight(150)
                    .with_meta("version", "2"),
                Instance::new(svc, "host-b:3"),
            ]
        );
        // exactly once: the sender is dropped after the single delivery
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(300)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        ));
    }
}

#[test]
fn static_cannot_register() {
    let reg = registry::open(Some("static://127.0.0.1:1")).unwrap();
    match reg.register(Instance::new("s", "127.0.0.1:2")) {
        Err(e @ Error::Unsupported(_)) => assert!(e.to_string().contains("static")),
        other => panic!("{other:?}"),
    }
}

const GOOD_ETCD_URLS: [&str; 3] = [
    "etcd://127.0.0.1:2379",
    "etcd://h1:2379,h2:2379/",
    "etcd://h1:2379?ttl=3",
];

#[test]
fn good_urls() {
    for u in [
        "static://[::1]:8080",
        "static://a:1, b:2?weight=0",
        "file:///tmp/x",
        "file://",
        "",
    ] {
        registry::open(Some(u)).unwrap_or_else(|e| panic!("{u:?}: {e}"));
    }
    registry::open(None).unwrap();
}

#[cfg(feature = "etcd")]
#[test]
fn good_etcd_urls() {
    for u in GOOD_ETCD_URLS {
        registry::open(Some(u)).unwrap_or_else(|e| panic!("{u:?}: {e}"));
    }
    registry::Builder::new(Some("etcd://h:1"))
        .ttl(Duration::from_secs(4))
        .build()
        .unwrap();
}

const GOOD_ZOOKEEPER_URLS: &[&str] = &[
    "zookeeper://127.0.0.1:2181",
    "zookeeper://h1:2181,h2:2182,h3:2183/dubbo",
    "zookeeper://h1/mesh/dubbo?session_timeout_ms=2000",
    "zookeeper://h1:2181?backup=h2:2181,h3:2181",
];

/// A well-formed zookeeper URL opens without connecting (an unreachable ZooKeeper is
/// retried in the background).
#[cfg(feature = "zookeeper")]
#[test]
fn good_zookeeper_urls() {
    for u in GOOD_ZOOKEEPER_URLS {
        let reg = registry::open(Some(u)).unwrap_or_else(|e| panic!("{u:?}: {e}"));
        assert_eq!(reg.skipped_entries(), 0);
    }
}

/// Without the `zookeeper` feature a well-formed zookeeper URL is refused with an error
/// that says why and what to do.
#[cfg(not(feature = "zookeeper"))]
#[test]
fn zookeeper_urls_need_the_zookeeper_feature() {
    for u in GOOD_ZOOKEEPER_URLS {
        match registry::open(Some(u)) {
            Err(e @ Error::Unsupported(_)) => {
                let s = e.to_string();
                assert!(s.contains("no ZooKeeper support"), "{u:?}: {s:?}");
                assert!(s.contains("`zookeeper` feature"), "{u:?}: {s:?}");
            }
            other => panic!("{u:?}: expected Unsupported, got {other:?}"),
        }
    }
}

#[test]
fn other_backends_skip_nothing() {
    let reg = registry::open(Some("static://h:1")).unwrap();
    assert_eq!(reg.skipped_entries(), 0);
}

/// Without the `etcd` feature a well-formed etcd URL is refused with an error that says
/// why and what to do (malformed ones still get [`Error::InvalidUrl`], below).
#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_urls_need_the_etcd_feature() {
    for u in GOOD_ETCD_URLS {
        match registry::open(Some(u)) {
            Err(e @ Error::Unsupported(_)) => {
                let s = e.to_string();
                assert!(s.contains("no etcd support"), "{u:?}: {s:?}");
                assert!(s.contains("`etcd` feature"), "{u:?}: {s:?}");
            }
            other => panic!("{u:?}: expected Unsupported, got {other:?}"),
        }
    }
}

#[test]
fn bad_urls_have_clear_errors() {
    for (u, needle) in [
        ("static://", "empty entry"),
        ("static://host", "not host:port"),
        ("static://h:0", "port"),
        ("static://h:70000", "port"),
        ("static://h:1?weight=x", "weight"),
        ("static://h:1?weight=-1", "weight"),
        ("static://h:1,,h:2", "empty entry"),
        ("static://h:1,h:1", "twice"),
        ("static://h:1?weight", "key=value"),
        ("static://[zz]:1", "bad host"),
        ("etcd://", "empty etcd endpoint"),
        ("etcd://h:1?ttl=0", "ttl"),
        ("etcd://h:1?foo=1", "unknown etcd parameter"),
        ("etcd://h", "not host:port"),
        ("file://relative/dir", "absolute"),
        ("zk://h:1", "unknown scheme"),
        ("zookeeper://", "empty ZooKeeper server"),
        ("zookeeper://h:0", "port"),
        ("zookeeper://h:1/a//b", "empty"),
        (
            "zookeeper://h:1/dubbo?session_timeout_ms=0",
            "session_timeout_ms",
        ),
        ("zookeeper://h:1?group=x", "unknown zookeeper parameter"),
        ("127.0.0.1:2379", "expected etcd://"),
    ] {
        match registry::open(Some(u)) {
            Err(e @ Error::InvalidUrl(_)) => {
                let s = e.to_string();
                assert!(s.contains(needle), "{u:?}: {s:?} lacks {needle:?}");
                assert!(s.contains(u), "{u:?}: the message names the URL: {s:?}");
            }
            other => panic!("{u:?}: expected InvalidUrl, got {other:?}"),
        }
    }
}
