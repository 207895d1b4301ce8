//! ZooKeeper backend: provider nodes that are not Dubbo URLs the mesh can use are
//! skipped (logged once, counted in `skipped_entries`), their valid neighbours delivered,
//! and node data is never read. Against a real ZooKeeper.
//!
//! Only with the `zookeeper` feature (on by default).
#![cfg(feature = "zookeeper")]

mod util;

use std::time::Duration;

use registry::Instance;
use util::zk::{url_encode, Direct, Zk};
use util::{addrs, init_log, wait_skipped, Collector};

const SVC: &str = "com.foo.Hello";
const PROVIDERS: &str = "/dubbo/com.foo.Hello/providers";
const SOON: Duration = Duration::from_secs(3);

#[test]
fn hostile_nodes_are_skipped_counted_and_their_neighbours_kept() {
    init_log();
    let zk = Zk::start();
    let d = Direct::connect(&zk.connect_string());
    let reg = registry::open(Some(&zk.url())).unwrap();

    // Valid neighbours: the registry's own registration, and a plain Dubbo provider with
    // 1 MB of node data (never read: the entry is kept all the same).
    let _own = reg.register(Instance::new(SVC, "127.0.0.1:30000")).unwrap();
    let big = url_encode(&format!(
        "dubbo://127.0.0.1:20880/{SVC}?interface={SVC}&weight=5"
    ));
    d.create(&format!("{PROVIDERS}/{big}"), &vec![b'x'; 1_000_000], true);
    let valid = ["127.0.0.1:20880", "127.0.0.1:30000"];

    let mut w = Collector::new(&reg, SVC);
    let list = w.wait_for(SOON, "the valid ones", |l| addrs(l) == valid);
    assert_eq!(list[0].weight, 5);
    assert_eq!(
        list[0].meta.get("protocol").map(String::as_str),
        Some("dubbo")
    );

    let e = url_encode;
    let hostile: Vec<(&str, String)> = vec![
        (
            "bad %-encoding",
            "dubbo%3A%2F%2F127.0.0.1%3A20881%2Fcom.foo.Hello%3F%ZZ".into(),
        ),
        (
            "not UTF-8 once decoded",
            "dubbo%3A%2F%2F127.0.0.1%3A20881%2Fcom.foo.Hello%FF".into(),
        ),
        (
            "unknown protocol",
            e("rest://127.0.0.1:8080/com.foo.Hello?interface=com.foo.Hello"),
        ),
        ("port 0", e("dubbo://127.0.0.1:0/com.foo.Hello")),
        ("port 70000", e("dubbo://127.0.0.1:70000/com.foo.Hello")),
        ("missing host", e("dubbo://:20882/com.foo.Hello")),
        ("missing port", e("dubbo://127.0.0.1/com.foo.Hello")),
        (
            "another interface",
            e("dubbo://127.0.0.1:20883/com.foo.Other"),
        ),
        (
            "bad mesh.agent",
            e("dubbo://127.0.0.1:20884/com.foo.Hello?mesh.agent=x:0"),
        ),
        (
            "a name over 16 KiB",
            e(&format!(
                "dubbo://127.0.0.1:20885/com.foo.Hello?x={}",
                "a".repeat(17_000)
            )),
        ),
        (
            "garbage: empty parameter name",
            e("dubbo://127.0.0.1:20886/com.foo.Hello?=x"),
        ),
        (
            "garbage: weight",
            e("dubbo://127.0.0.1:20887/com.foo.Hello?weight=heavy"),
        ),
        (
            "garbage: negative weight",
            e("dubbo://127.0.0.1:20888/com.foo.Hello?weight=-3"),
        ),
        (
            "garbage: bad escape in a value",
            e("dubbo://127.0.0.1:20889/com.foo.Hello?a=%zz"),
        ),
        (
            "garbage: control in a value",
            e("dubbo://127.0.0.1:20890/com.foo.Hello?a=%0Ab"),
        ),
        (
            "garbage: 65 parameters",
            e(&format!(
                "dubbo://127.0.0.1:20891/com.foo.Hello?{}",
                (0..65)
                    .map(|i| format!("k{i}=v"))
                    .collect::<Vec<_>>()
                    .join("&")
            )),
        ),
        (
            "garbage: a 5 KiB value",
            e(&format!(
                "dubbo://127.0.0.1:20892/com.foo.Hello?a={}",
                "v".repeat(5 * 1024)
            )),
        ),
        ("not a URL", "just-a-name".into()),
    ];
    for (n, (what, name)) in hostile.iter().enumerate() {
        d.create(&format!("{PROVIDERS}/{name}"), b"", true);
        wait_skipped(&reg, n as u64 + 1, what);
        // the watcher lives on, its list unchanged
        assert_eq!(w.last.as_deref().map(addrs), Some(valid.to_vec()), "{what}");
        w.assert_quiet(Duration::from_millis(100), what);
    }
    let counted = hostile.len() as u64;

    // A disabled provider is left out but is not malformed.
    let off = e(&format!("dubbo://127.0.0.1:20893/{SVC}?enabled=false"));
    d.create(&format!("{PROVIDERS}/{off}"), b"", true);
    // A valid newcomer among them is delivered; the bad ones are not counted again.
    let _more = reg.register(Instance::new(SVC, "127.0.0.1:30001")).unwrap();
    w.wait_for(SOON, "the newcomer", |l| {
        addrs(l) == ["127.0.0.1:20880", "127.0.0.1:30000", "127.0.0.1:30001"]
    });
    assert_eq!(reg.skipped_entries(), counted, "each bad node counted once");

    // A second watch counts them on its own.
    let mut w2 = Collector::new(&reg, SVC);
    w2.wait_for(SOON, "the second watch's list", |l| l.len() == 3);
    wait_skipped(&reg, 2 * counted, "a second watch");
}
