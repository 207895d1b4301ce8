//! File backend: bad entries are logged once, not on every 50 ms poll.
//!
//! Its own test binary, because it installs its own logger (one per process) to count
//! the warnings.

mod util;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use registry::Instance;
use util::{addrs, mkfifo, Collector};

const SVC: &str = "com.example.IHelloService";
const SOON: Duration = Duration::from_secs(2);

/// Keeps every warning (and worse).
struct Warnings(Mutex<Vec<String>>);

static WARNINGS: Warnings = Warnings(Mutex::new(Vec::new()));

impl log::Log for Warnings {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let line = r.args().to_string();
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    }

    fn flush(&self) {}
}

fn init_log() {
    if log::set_logger(&WARNINGS).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// Warnings so far that mention `path`.
fn warnings_about(path: &Path) -> Vec<String> {
    let needle = path.display().to_string();
    WARNINGS
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|l| l.contains(&needle))
        .cloned()
        .collect()
}

fn open(dir: &Path) -> registry::Registry {
    registry::open(Some(&format!("file://{}", dir.display()))).expect("open")
}

/// Registers and deregisters `n` times, waiting for each change: the watcher has scanned
/// the directory (bad files included) at least `2n` times since.
fn rounds(reg: &registry::Registry, w: &mut Collector, n: u16) {
    for i in 0..n {
        let addr = format!("127.0.0.1:{}", 22000 + i);
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

#[test]
fn each_bad_entry_is_logged_once_until_it_changes() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let reg = open(dir.path());
    let sdir = dir.path().join(SVC);
    std::fs::create_dir(&sdir).unwrap();
    let garbage = sdir.join("garbage.json");
    std::fs::write(&garbage, "{not json").unwrap();
    let big = sdir.join("big.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let link = sdir.join("link.json");
    std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
    let fifo = sdir.join("fifo.json");
    mkfifo(&fifo);
    let subdir = sdir.join("dir.json");
    std::fs::create_dir(&subdir).unwrap();
    let bad = [&garbage, &big, &link, &fifo, &subdir];

    let mut w = Collector::new(&reg, SVC);
    w.wait_for(SOON, "the initial list", |l| l.is_empty());
    rounds(&reg, &mut w, 4);
    for path in bad {
        let lines = warnings_about(path);
        assert_eq!(lines.len(), 1, "{}: {lines:#?}", path.display());
    }
    let big_line = &warnings_about(&big)[0];
    assert!(big_line.contains("more than"), "says why: {big_line}");
    assert!(warnings_about(&link)[0].contains("symbolic link"));
    assert!(warnings_about(&fifo)[0].contains("FIFO"));

    // Changed, it is a new bad file: logged again, once.
    std::fs::write(&garbage, "{still not json, and longer").unwrap();
    rounds(&reg, &mut w, 3);
    assert_eq!(
        warnings_about(&garbage).len(),
        2,
        "{:#?}",
        warnings_about(&garbage)
    );
    for path in &bad[1..] {
        assert_eq!(warnings_about(path).len(), 1, "{}", path.display());
    }
}

#[test]
fn a_thousand_bad_entries_are_not_a_thousand_lines_per_poll() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let reg = open(dir.path());
    let sdir = dir.path().join(SVC);
    std::fs::create_dir(&sdir).unwrap();
    const N: usize = 1100;
    for i in 0..N {
        std::fs::write(sdir.join(format!("bad{i}.json")), "[").unwrap();
    }
    let mut w = Collector::new(&reg, SVC);
    w.wait_for(Duration::from_secs(10), "the initial list", |l| {
        l.is_empty()
    });
    rounds(&reg, &mut w, 4);
    let lines = warnings_about(&sdir);
    // each at most once, and the watcher remembers a bounded number (one more line says so)
    assert!(
        lines.len() <= N + 1,
        "{} warnings for {N} bad files; first: {:?}",
        lines.len(),
        lines.first()
    );
    assert!(lines.len() >= 1000, "they are reported: {}", lines.len());
}
