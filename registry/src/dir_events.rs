//! Wake-ups for the file registry's watchers when a directory they read changes (Linux
//! inotify), so that an idle watcher sleeps instead of polling every 50 ms.
//!
//! One inotify instance per process, read by one thread, however many services are
//! watched: an instance per watcher would run into the per-user limit
//! (`fs.inotify.max_user_instances`, 128 by default) on a host of many agents. A watcher
//! waits on its [`Wake`]; a change in one of its directories (an entry created, written,
//! renamed, removed or touched, the directory's own mode changed, the directory removed)
//! wakes it at once. It still rescans every [`RESCAN`], because a registrant that dies
//! leaves its file as it was: only a scan notices its process gone or its heartbeat
//! stale. Changes closer together than [`POLL`] are taken in one wake-up, so a busy
//! directory (many registrants' heartbeats) is scanned no more often than it was polled.
//! Where inotify is unavailable, or a directory cannot be watched (not created
//! yet), and on systems other than Linux, the watcher polls every [`POLL`] as before.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How often a watcher polls without inotify, or while one of its directories is missing.
pub(crate) const POLL: Duration = Duration::from_millis(50);
/// How often a watcher rescans with inotify: a dead registrant changes no file.
pub(crate) const RESCAN: Duration = Duration::from_secs(1);

/// A watcher's flag, raised by the reading thread.
#[derive(Debug, Default)]
struct Poke {
    raised: Mutex<bool>,
    cond: Condvar,
}

impl Poke {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn raise(&self) {
        if let Ok(mut r) = self.raised.lock() {
            *r = true;
            self.cond.notify_one();
        }
    }
}

/// The inotify side (Linux).
#[cfg(target_os = "linux")]
mod inotify {
    use std::collections::HashMap;
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, OnceLock, Weak};

    use super::Poke;

    /// Watches `dir` for `poke`'s watcher: false if it cannot be (no inotify, the
    /// directory missing).
    pub(super) fn subscribe(dir: &Path, poke: &Arc<Poke>) -> bool {
        notifier().is_some_and(|n| n.watch(dir, poke))
    }

    /// The changes that wake a directory's watchers.
    const MASK: u32 = libc::IN_CREATE
        | libc::IN_DELETE
        | libc::IN_MOVED_FROM
        | libc::IN_MOVED_TO
        | libc::IN_CLOSE_WRITE
        | libc::IN_ATTRIB
        | libc::IN_DELETE_SELF
        | libc::IN_MOVE_SELF
        | libc::IN_ONLYDIR
        | libc::IN_DONT_FOLLOW;

    /// The process's inotify instance and who waits on each of its watches.
    #[derive(Debug)]
    struct Notifier {
        fd: OwnedFd,
        /// Watch descriptor -> the watchers of that directory.
        subscribers: Mutex<HashMap<i32, Vec<Weak<Poke>>>>,
        /// The reading thread stopped (a read error): everyone polls.
        dead: AtomicBool,
    }

    /// The notifier, started on first use; `None` where inotify is unavailable.
    fn notifier() -> Option<&'static Notifier> {
        static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();
        NOTIFIER
            .get_or_init(|| match Notifier::start() {
                Ok(n) => Some(n),
                Err(e) => {
                    log::info!("file registry: no inotify ({e}); watchers poll every 50 ms");
                    None
                }
            })
            .as_ref()
            .filter(|n| !n.dead.load(Ordering::Relaxed))
    }

    impl Notifier {
        fn start() -> io::Result<Notifier> {
            // SAFETY: inotify_init1 takes flags only; a negative result is an error.
            let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let reader = fd.try_clone()?;
            let n = Notifier {
                fd,
                subscribers: Mutex::new(HashMap::new()),
                dead: AtomicBool::new(false),
            };
            std::thread::Builder::new()
                .name("registry-file-inotify".into())
                .spawn(move || read_events(reader))?;
            Ok(n)
        }

        /// Watches `dir` for `poke`: false if it cannot be watched (missing, not a directory).
        fn watch(&self, dir: &Path, poke: &Arc<Poke>) -> bool {
            let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
                return false;
            };
            // SAFETY: the descriptor is open for the notifier's lifetime (the process's) and
            // `path` is a NUL-terminated string that outlives the call.
            let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), MASK) };
            if wd < 0 {
                return false;
            }
            let Ok(mut subs) = self.subscribers.lock() else {
                return false;
            };
            let list = subs.entry(wd).or_default();
            list.retain(|w| w.strong_count() > 0);
            if !list.iter().any(|w| w.as_ptr() == Arc::as_ptr(poke)) {
                list.push(Arc::downgrade(poke));
            }
            true
        }

        /// Raises the flags of `wd`'s watchers (all of them for `None`: events were lost).
        fn wake(&self, wd: Option<i32>, removed: bool) {
            let Ok(mut subs) = self.subscribers.lock() else {
                return;
            };
            let raise = |list: &Vec<Weak<Poke>>| {
                list.iter()
                    .filter_map(Weak::upgrade)
                    .for_each(|p| p.raise())
            };
            match wd {
                None => subs.values().for_each(raise),
                Some(wd) if removed => {
                    // The watch is gone (its directory removed): its watchers add it again.
                    if let Some(list) = subs.remove(&wd) {
                        raise(&list);
                    }
                }
                Some(wd) => {
                    if let Some(list) = subs.get(&wd) {
                        raise(list);
                    }
                }
            }
        }
    }

    /// The reading thread: wakes the watchers of every directory an event names.
    fn read_events(fd: OwnedFd) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // SAFETY: `buf` is writable for its whole length, which is what read is given.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let Some(n) = usize::try_from(n).ok().filter(|n| *n > 0) else {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::warn!("file registry: reading inotify events: {e}; watchers poll every 50 ms");
                if let Some(n) = notifier() {
                    n.dead.store(true, Ordering::Relaxed);
                    n.wake(None, false);
                }
                return;
            };
            let Some(notifier) = notifier() else {
                return;
            };
            for (wd, mask) in events(buf.get(..n).unwrap_or_default()) {
                if mask & libc::IN_Q_OVERFLOW != 0 {
                    notifier.wake(None, false);
                } else {
                    notifier.wake(Some(wd), mask & libc::IN_IGNORED != 0);
                }
            }
        }
    }

    /// The (watch descriptor, mask) of each whole event in `bytes` (as read from inotify:
    /// `wd`, `mask`, `cookie`, `len`, then `len` bytes of name).
    pub(super) fn events(bytes: &[u8]) -> Vec<(i32, u32)> {
        let word = |at: usize| -> Option<[u8; 4]> { bytes.get(at..at + 4)?.try_into().ok() };
        let mut out = Vec::new();
        let mut at = 0;
        while let (Some(wd), Some(mask), Some(len)) = (word(at), word(at + 4), word(at + 12)) {
            out.push((i32::from_ne_bytes(wd), u32::from_ne_bytes(mask)));
            at += 16 + u32::from_ne_bytes(len) as usize;
        }
        out
    }
}

/// Without inotify: every watcher polls.
#[cfg(not(target_os = "linux"))]
mod inotify {
    use std::path::Path;
    use std::sync::Arc;

    use super::Poke;

    pub(super) fn subscribe(_dir: &Path, _poke: &Arc<Poke>) -> bool {
        false
    }
}

/// A watcher's sleep between scans of its directories.
#[derive(Debug)]
pub(crate) struct Wake {
    dirs: Vec<PathBuf>,
    poke: Arc<Poke>,
    /// Every directory is watched: sleep up to [`RESCAN`], not [`POLL`].
    watched: bool,
    /// When the last wait ended (the caller's last scan began).
    last: Instant,
}

impl Wake {
    /// Watches `dirs` (missing ones are tried again after every wait).
    pub(crate) fn new(dirs: &[&Path]) -> Wake {
        let mut w = Wake {
            dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
            poke: Arc::default(),
            watched: false,
            last: Instant::now(),
        };
        w.subscribe();
        w
    }

    fn subscribe(&mut self) {
        self.watched = self.dirs.iter().all(|d| inotify::subscribe(d, &self.poke));
    }

    /// Sleeps until a directory changes, or [`RESCAN`] passes ([`POLL`] while one of them
    /// is not watched), and at least [`POLL`] since the last wait ended; then watches them
    /// again, before the caller's next scan, so that a directory created or replaced
    /// meanwhile is watched from then on.
    pub(crate) fn wait(&mut self) {
        let timeout = if self.watched { RESCAN } else { POLL };
        if let Ok(raised) = self.poke.raised.lock() {
            let _ = self.poke.cond.wait_timeout_while(raised, timeout, |r| !*r);
        }
        // More changes in the next moment are covered by the same scan.
        std::thread::sleep(POLL.saturating_sub(self.last.elapsed()));
        if let Ok(mut raised) = self.poke.raised.lock() {
            *raised = false;
        }
        self.subscribe();
        self.last = Instant::now();
    }

    /// Whether a change in its directories will wake it (inotify works and they exist).
    #[cfg(test)]
    pub(crate) fn is_watching(&self) -> bool {
        self.watched
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn events_are_split_by_their_name_length() {
        let mut b = Vec::new();
        for (wd, mask, name) in [(1i32, libc::IN_CREATE, 16u32), (2, libc::IN_IGNORED, 0)] {
            b.extend(wd.to_ne_bytes());
            b.extend(mask.to_ne_bytes());
            b.extend(0u32.to_ne_bytes());
            b.extend(name.to_ne_bytes());
            b.extend(std::iter::repeat_n(0u8, name as usize));
        }
        assert_eq!(
            inotify::events(&b),
            [(1, libc::IN_CREATE), (2, libc::IN_IGNORED)]
        );
        // A torn tail is not an event.
        assert_eq!(inotify::events(&b[..10]), []);
    }

    /// How long `w` takes to notice `path` written 100 ms from now (wake-ups before it
    /// exists, left over from earlier changes, do not count).
    fn noticed_after(w: &mut Wake, path: PathBuf) -> Duration {
        let at = Instant::now() + Duration::from_millis(100);
        let file = path.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            std::fs::write(file, b"{}").unwrap();
        });
        loop {
            w.wait();
            if path.exists() {
                break;
            }
        }
        writer.join().unwrap();
        at.elapsed()
    }

    #[test]
    fn a_change_wakes_a_watcher_at_once_and_a_quiet_one_sleeps() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wake::new(&[dir.path()]);
        assert!(w.is_watching(), "inotify on this machine");
        // Nothing changes: it sleeps for the rescan time.
        let t = Instant::now();
        w.wait();
        assert!(
            t.elapsed() >= RESCAN - Duration::from_millis(10),
            "{:?}",
            t.elapsed()
        );
        // A file appears: it wakes well before.
        let late = noticed_after(&mut w, dir.path().join("a.json"));
        assert!(late < RESCAN / 2, "{late:?}");
    }

    #[test]
    fn a_burst_of_changes_takes_a_few_wake_ups() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wake::new(&[dir.path()]);
        assert!(w.is_watching(), "inotify on this machine");
        let d = dir.path().to_path_buf();
        let writer = std::thread::spawn(move || {
            for i in 0..100 {
                std::fs::write(d.join(format!("{i}.json")), b"{}").unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let t = Instant::now();
        let mut wakes = 0;
        while !writer.is_finished() {
            w.wait();
            wakes += 1;
        }
        writer.join().unwrap();
        // At most one a POLL over the burst, and one more for its tail.
        let most = t.elapsed().as_millis() / POLL.as_millis() + 2;
        assert!(
            wakes as u128 <= most,
            "{wakes} wake-ups in {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn a_missing_directory_is_polled_then_watched_once_created() {
        let top = tempfile::tempdir().unwrap();
        let sub = top.path().join("svc");
        let mut w = Wake::new(&[top.path(), &sub]);
        assert!(!w.is_watching());
        let t = Instant::now();
        w.wait();
        assert!(t.elapsed() < RESCAN / 2, "polls: {:?}", t.elapsed());
        std::fs::create_dir(&sub).unwrap();
        w.wait();
        assert!(w.is_watching());
        // Removed: polled again; created again: watched again.
        std::fs::remove_dir(&sub).unwrap();
        w.wait();
        assert!(!w.is_watching());
        std::fs::create_dir(&sub).unwrap();
        w.wait();
        assert!(w.is_watching());
        let late = noticed_after(&mut w, sub.join("b.json"));
        assert!(late < RESCAN / 2, "{late:?}");
    }
}
