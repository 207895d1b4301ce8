//! File (embedded default) backend: behaviour tests.

mod util;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use registry::{Error, Instance};
use util::{
    addrs, entry_json, init_log, mkfifo, registrant_outcome, ChildRegistrant, Collector, RssSampler,
};

const SVC: &str = "com.example.IHelloService";
const SOON: Duration = Duration::from_secs(2);

fn open(dir: &tempfile::TempDir) -> (registry::Registry, String) {
    let url = format!("file://{}", dir.path().display());
    (registry::open(Some(&url)).expect("open"), url)
}

#[test]
fn register_watch_deregister() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(SOON, "initial empty list", |l| l.is_empty());

    let a = reg
        .register(
            Instance::new(SVC, "127.0.0.1:20001")
                .with_weight(200)
                .with_meta("version", "1.0.0"),
        )
        .unwrap();
    let list = w.wait_for(SOON, "a", |l| l.len() == 1);
    assert_eq!(list[0].service, SVC);
    assert_eq!(list[0].addr, "127.0.0.1:20001");
    assert_eq!(list[0].weight, 200);
    assert_eq!(
        list[0].meta.get("version").map(String::as_str),
        Some("1.0.0")
    );

    let b = reg.register(Instance::new(SVC, "127.0.0.1:20002")).unwrap();
    let list = w.wait_for(SOON, "a and b", |l| l.len() == 2);
    assert_eq!(addrs(&list), ["127.0.0.1:20001", "127.0.0.1:20002"]);
    assert_eq!(list[1].weight, 100);

    a.deregister().unwrap();
    // deregister waited: the file is already gone
    assert!(!dir.path().join(SVC).join("127.0.0.1:20001.json").exists());
    let list = w.wait_for(SOON, "only b", |l| l.len() == 1);
    assert_eq!(addrs(&list), ["127.0.0.1:20002"]);

    drop(b);
    w.wait_for(SOON, "empty after drop", |l| l.is_empty());
}

#[test]
fn delivers_only_on_change_and_stays_registered() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let _a = reg.register(Instance::new(SVC, "10.0.0.1:1")).unwrap();
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(SOON, "a", |l| l.len() == 1);
    // heartbeats rewrite the file every second; the list does not change: no delivery,
    // and the entry outlives the 3 s staleness limit
    w.assert_quiet(Duration::from_millis(4000), "nothing changed");
}

#[test]
fn two_watchers_see_the_same_lists() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, url) = open(&dir);
    let reg2 = registry::open(Some(&url)).unwrap();
    let mut w1 = Collector::new(&reg, SVC);
    let mut w2 = Collector::new(&reg2, SVC);
    w1.wait_for(SOON, "empty", |l| l.is_empty());
    w2.wait_for(SOON, "empty", |l| l.is_empty());
    let a = reg.register(Instance::new(SVC, "10.0.0.1:1")).unwrap();
    let l1 = w1.wait_for(SOON, "a", |l| l.len() == 1);
    let l2 = w2.wait_for(SOON, "a", |l| l.len() == 1);
    assert_eq!(l1, l2);
    drop(a);
    w1.wait_for(SOON, "empty", |l| l.is_empty());
    w2.wait_for(SOON, "empty", |l| l.is_empty());
}

#[test]
fn other_services_are_separate() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let _x = reg
        .register(Instance::new("other.Service", "10.0.0.9:9"))
        .unwrap();
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(SOON, "empty", |l| l.is_empty());
    w.assert_quiet(Duration::from_millis(300), "other service");
}

#[test]
fn crashed_registrant_is_dropped() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, url) = open(&dir);
    let mut w = Collector::new(&reg, SVC);
    let mut child = ChildRegistrant::spawn(&url, SVC, "127.0.0.1:20880");
    w.wait_for(SOON, "child's entry", |l| addrs(l) == ["127.0.0.1:20880"]);
    child.kill9();
    w.wait_for(Duration::from_secs(5), "child's entry dropped", |l| {
        l.is_empty()
    });
    assert!(
        !dir.path().join(SVC).join("127.0.0.1:20880.json").exists(),
        "stale file removed"
    );
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[test]
fn stale_or_dead_entries_are_dropped() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let sdir = dir.path().join(SVC);
    std::fs::create_dir_all(&sdir).unwrap();
    let me = std::process::id();
    // alive pid, old heartbeat
    let old = format!(
        r#"{{"addr":"10.0.0.1:1","weight":100,"meta":{{}},"pid":{me},"heartbeat_ms":{}}}"#,
        now_ms() - 10_000
    );
    // fresh heartbeat, dead pid
    let dead = format!(
        r#"{{"addr":"10.0.0.2:2","weight":100,"meta":{{}},"pid":4000000000,"heartbeat_ms":{}}}"#,
        now_ms()
    );
    // fresh and alive
    let ok = format!(
        r#"{{"addr":"10.0.0.3:3","weight":7,"meta":{{}},"pid":{me},"heartbeat_ms":{}}}"#,
        now_ms() + 60_000
    );
    std::fs::write(sdir.join("10.0.0.1:1.json"), old).unwrap();
    // A registrant that stopped long ago left its file untouched as long: the file's
    // modification time also counts as a heartbeat.
    std::fs::File::options()
        .write(true)
        .open(sdir.join("10.0.0.1:1.json"))
        .unwrap()
        .set_modified(SystemTime::now() - std::time::Duration::from_secs(10))
        .unwrap();
    std::fs::write(sdir.join("10.0.0.2:2.json"), dead).unwrap();
    std::fs::write(sdir.join("10.0.0.3:3.json"), ok).unwrap();
    std::fs::write(sdir.join("garbage.json"), "{not json").unwrap();
    let mut w = Collector::new(&reg, SVC);
    let list = w.wait_for(SOON, "only the live entry", |l| !l.is_empty());
    assert_eq!(addrs(&list), ["10.0.0.3:3"]);
    assert_eq!(list[0].weight, 7);
    assert!(!sdir.join("10.0.0.1:1.json").exists());
    assert!(!sdir.join("10.0.0.2:2.json").exists());
}

#[test]
fn dropping_the_watch_stops_callbacks() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let (tx, rx) = std::sync::mpsc::channel();
    let watch = reg
        .watch(SVC, move |l| {
            let _ = tx.send(l);
        })
        .unwrap();
    rx.recv_timeout(SOON).unwrap();
    drop(watch);
    std::thread::sleep(Duration::from_millis(100)); // let an in-flight poll finish
    while rx.try_recv().is_ok() {}
    let _a = reg.register(Instance::new(SVC, "10.0.0.1:1")).unwrap();
    // the watcher thread exits and drops the callback: the channel disconnects
    match rx.recv_timeout(Duration::from_millis(500)) {
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
        other => panic!("callback after drop: {other:?}"),
    }
}

#[test]
fn default_registry_works() {
    init_log();
    let reg = registry::open(None).unwrap();
    let svc = format!("test.default.{}", std::process::id());
    let mut w = Collector::new(&reg, &svc);
    w.wait_for(SOON, "empty", |l| l.is_empty());
    let r = reg.register(Instance::new(&svc, "127.0.0.1:4242")).unwrap();
    w.wait_for(SOON, "registered", |l| l.len() == 1);
    r.deregister().unwrap();
    w.wait_for(SOON, "gone", |l| l.is_empty());
    let _ = std::fs::remove_dir(std::env::temp_dir().join("dubbo-mesh-registry").join(&svc));
}

#[test]
fn invalid_instances_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    for (svc, addr) in [
        ("", "1.2.3.4:5"),
        ("a/b", "1.2.3.4:5"),
        ("s", "nohost"),
        ("s", "h:0"),
        ("s", "h:x"),
        ("s", ":80"),
    ] {
        match reg.register(Instance::new(svc, addr)) {
            Err(Error::InvalidInstance(m)) => assert!(!m.is_empty()),
            other => panic!("{svc:?} {addr:?}: {other:?}"),
        }
    }
    assert!(matches!(
        reg.watch("", |_| {}),
        Err(Error::InvalidInstance(_))
    ));
}

#[test]
fn an_unreadable_file_does_not_freeze_the_list() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    // A directory where an entry's file would be: reading it fails, every scan.
    std::fs::create_dir_all(dir.path().join(SVC).join("127.0.0.1:20009.json")).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let _a = reg.register(Instance::new(SVC, "127.0.0.1:20001")).unwrap();
    w.wait_for(SOON, "a, past the unreadable entry", |l| {
        addrs(l) == ["127.0.0.1:20001"]
    });
}

#[test]
fn a_pid_from_another_pid_namespace_is_judged_by_its_heartbeat_alone() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let sdir = dir.path().join(SVC);
    std::fs::create_dir_all(&sdir).unwrap();
    // Written from another container: its pid does not exist here, its heartbeat is fresh.
    let other_container = format!(
        r#"{{"addr":"10.0.0.4:4","weight":100,"meta":{{}},"pid":4000000000,"pid_ns":"pid:[1]","heartbeat_ms":{}}}"#,
        now_ms() + 60_000
    );
    std::fs::write(sdir.join("10.0.0.4:4.json"), other_container).unwrap();
    let mut w = Collector::new(&reg, SVC);
    let list = w.wait_for(SOON, "the other container's entry", |l| !l.is_empty());
    assert_eq!(addrs(&list), ["10.0.0.4:4"]);
    assert!(sdir.join("10.0.0.4:4.json").exists());
}

// ---------------------------------------------------------------- hostile entries

/// Registers and deregisters `n` times, waiting for each change: the watcher is alive, and
/// has scanned the directory (bad files included) at least `2n` times since.
fn rounds(reg: &registry::Registry, w: &mut Collector, n: u16) {
    for i in 0..n {
        let addr = format!("127.0.0.1:{}", 21000 + i);
        let r = reg.register(Instance::new(SVC, &addr)).unwrap();
        w.wait_for(SOON, "a new registration", |l| {
            addrs(l).contains(&addr.as_str())
        });
        r.deregister().unwrap();
        w.wait_for(SOON, "the registration gone", |l| {
            !addrs(l).contains(&addr.as_str())
        });
    }
}

/// Growth of resident memory a watcher may cause while skipping bad entries.
const RSS_LIMIT_KIB: u64 = 32 * 1024;

#[test]
fn a_fifo_entry_does_not_freeze_the_watcher() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let sdir = dir.path().join(SVC);
    std::fs::create_dir(&sdir).unwrap();
    // Opening a FIFO for reading waits for a writer: forever.
    mkfifo(&sdir.join("127.0.0.1:20066.json"));
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(SOON, "the initial list, past the FIFO", |l| l.is_empty());
    let a = reg.register(Instance::new(SVC, "127.0.0.1:20001")).unwrap();
    w.wait_for(SOON, "a new registration, past the FIFO", |l| {
        addrs(l) == ["127.0.0.1:20001"]
    });
    a.deregister().unwrap();
    w.wait_for(SOON, "the old one leaving", |l| l.is_empty());
    rounds(&reg, &mut w, 2);
}

#[test]
fn links_are_not_followed_and_dev_zero_is_not_read() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let sdir = dir.path().join(SVC);
    std::fs::create_dir(&sdir).unwrap();
    std::os::unix::fs::symlink("/dev/zero", sdir.join("127.0.0.1:20067.json")).unwrap();
    // A link to a good entry outside the directory is not followed either.
    let outside = dir.path().join("outside.json");
    std::fs::write(&outside, entry_json("10.6.6.6:666")).unwrap();
    std::os::unix::fs::symlink(&outside, sdir.join("10.6.6.6:666.json")).unwrap();
    let rss = RssSampler::start(1024 * 1024);
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(SOON, "the initial list, past the links", |l| l.is_empty());
    rounds(&reg, &mut w, 3);
    let grew = rss.growth_kib();
    assert!(
        grew < RSS_LIMIT_KIB,
        "resident memory grew by {grew} KiB while skipping a link to /dev/zero"
    );
    assert!(w.last.as_ref().is_some_and(|l| l.is_empty()));
}

#[test]
fn a_huge_entry_is_not_read() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let sdir = dir.path().join(SVC);
    std::fs::create_dir(&sdir).unwrap();
    // 100 MB, sparse: no disk used, but zeros to whoever reads it
    std::fs::File::create(sdir.join("127.0.0.1:20068.json"))
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let rss = RssSampler::start(1024 * 1024);
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(SOON, "the initial list", |l| l.is_empty());
    rounds(&reg, &mut w, 3);
    let grew = rss.growth_kib();
    assert!(
        grew < RSS_LIMIT_KIB,
        "resident memory grew by {grew} KiB while skipping a 100 MB entry"
    );
}

// ---------------------------------------------------------------- private directories

const NOBODY: u32 = 65534;

fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// The message of the refusal `r` must be, naming `dir`.
#[track_caller]
fn refusal<T: std::fmt::Debug>(r: Result<T, Error>, dir: &Path) -> String {
    match r {
        Err(e @ Error::Insecure(_)) => {
            let m = e.to_string();
            assert!(
                m.contains(&dir.display().to_string()),
                "the refusal names {}: {m}",
                dir.display()
            );
            m
        }
        other => panic!("{} not refused: {other:?}", dir.display()),
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Gives `path` to `nobody`; false (the test is skipped) when not running as root.
fn give_to_nobody(path: &Path) -> bool {
    match std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("skipped: chown needs root ({e})");
            false
        }
        Err(e) => panic!("chown {}: {e}", path.display()),
    }
}

/// A registry directory with an entry planted in it, as an attacker would leave it.
fn planted(parent: &Path) -> std::path::PathBuf {
    let reg_dir = parent.join("registry");
    std::fs::create_dir_all(reg_dir.join(SVC)).unwrap();
    std::fs::write(
        reg_dir.join(SVC).join("10.6.6.6:666.json"),
        entry_json("10.6.6.6:666"),
    )
    .unwrap();
    reg_dir
}

#[test]
fn a_registry_dir_of_another_user_is_refused() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let reg_dir = planted(dir.path());
    if !give_to_nobody(&reg_dir) {
        return;
    }
    let m = refusal(registry::open(Some(&file_url(&reg_dir))), &reg_dir);
    assert!(m.contains("uid 65534"), "names the owner: {m}");
    assert!(m.contains("--registry"), "says what to do: {m}");
}

#[test]
fn a_group_or_world_writable_registry_dir_is_refused() {
    init_log();
    for mode in [0o777, 0o1777, 0o770, 0o702] {
        let dir = tempfile::tempdir().unwrap();
        let reg_dir = planted(dir.path());
        set_mode(&reg_dir, mode);
        let m = refusal(registry::open(Some(&file_url(&reg_dir))), &reg_dir);
        assert!(m.contains(&format!("{mode:04o}")), "names the mode: {m}");
        assert!(m.contains("chmod 700"), "says what to do: {m}");
    }
    // Readable by others is fine; writable only by the owner is what counts.
    for mode in [0o755, 0o700] {
        let dir = tempfile::tempdir().unwrap();
        let reg_dir = planted(dir.path());
        set_mode(&reg_dir, mode);
        registry::open(Some(&file_url(&reg_dir))).unwrap();
    }
}

#[test]
fn a_symlinked_registry_dir_is_refused() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let real = planted(dir.path());
    set_mode(&real, 0o700);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let m = refusal(registry::open(Some(&file_url(&link))), &link);
    assert!(m.contains("symbolic link"), "{m}");
}

#[test]
fn a_service_dir_of_another_user_or_writable_by_others_is_refused() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let sdir = dir.path().join(SVC);
    std::fs::create_dir(&sdir).unwrap();
    set_mode(&sdir, 0o777);
    let m = refusal(reg.watch(SVC, |_| {}), &sdir);
    assert!(m.contains("0777"), "{m}");
    let m = refusal(reg.register(Instance::new(SVC, "127.0.0.1:20001")), &sdir);
    assert!(m.contains("0777"), "{m}");
    set_mode(&sdir, 0o755);
    if !give_to_nobody(&sdir) {
        return;
    }
    let m = refusal(reg.watch(SVC, |_| {}), &sdir);
    assert!(m.contains("uid 65534"), "{m}");
    refusal(reg.register(Instance::new(SVC, "127.0.0.1:20001")), &sdir);
}

#[test]
fn a_watcher_stops_trusting_a_dir_that_becomes_writable_by_others() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = open(&dir);
    let _a = reg.register(Instance::new(SVC, "127.0.0.1:20001")).unwrap();
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(SOON, "a", |l| addrs(l) == ["127.0.0.1:20001"]);
    set_mode(&dir.path().join(SVC), 0o777);
    std::fs::write(
        dir.path().join(SVC).join("10.6.6.6:666.json"),
        entry_json("10.6.6.6:666"),
    )
    .unwrap();
    // the planted entry is not delivered: the last list stands
    w.assert_quiet(Duration::from_millis(500), "directory writable by others");
    set_mode(&dir.path().join(SVC), 0o755);
    w.wait_for(SOON, "both, once the directory is private again", |l| {
        l.len() == 2
    });
}

#[test]
fn a_new_registry_dir_and_its_service_dirs_are_private() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let reg_dir = dir.path().join("a").join("registry");
    let reg = registry::open(Some(&file_url(&reg_dir))).unwrap();
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&reg_dir), 0o700, "{}", reg_dir.display());
    assert_eq!(mode(&dir.path().join("a")), 0o700, "a created parent");
    let _a = reg.register(Instance::new(SVC, "127.0.0.1:20001")).unwrap();
    assert_eq!(mode(&reg_dir.join(SVC)), 0o700, "the service directory");
}

#[test]
fn the_default_registry_dir_is_checked_too() {
    init_log();
    // The default is `<temp_dir>/dubbo-mesh-registry`; a child with its own TMPDIR.
    let tmp = tempfile::tempdir().unwrap();
    let reg_dir = tmp.path().join("dubbo-mesh-registry");
    std::fs::create_dir_all(reg_dir.join(SVC)).unwrap();
    std::fs::write(
        reg_dir.join(SVC).join("10.6.6.6:666.json"),
        entry_json("10.6.6.6:666"),
    )
    .unwrap();
    set_mode(&reg_dir, 0o777);
    let err = registrant_outcome("", SVC, "127.0.0.1:20001", &[("TMPDIR", tmp.path())])
        .expect_err("registered in a world-writable default directory");
    assert!(
        err.contains(&reg_dir.display().to_string()) && err.contains("0777"),
        "the registrant's error names the directory and its mode: {err}"
    );
    // Made private, the same directory is used.
    set_mode(&reg_dir, 0o700);
    registrant_outcome("", SVC, "127.0.0.1:20001", &[("TMPDIR", tmp.path())])
        .expect("registered in a private default directory");
}
