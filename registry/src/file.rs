//! Embedded file registry: zero configuration, one host.
//!
//! Layout: `<dir>/<service>/<host>:<port>.json`, each file written atomically (temp file +
//! rename) with `{"addr","weight","meta","pid","token","registered_ms","heartbeat_ms"}`; the
//! registration's thread refreshes `heartbeat_ms` every second. Two live registrants of
//! one address (a binary upgrade's old and new process, while they overlap) do not take
//! turns: the earlier leaves the entry to the later once it sees it (a live process, a
//! fresh heartbeat), and removes it on deregistering only if it is still its own, so the
//! instance never drops out of the registry. Watchers scan the service's directory when
//! it changes (inotify, [`crate::dir_events`]) and at least once a second, or every 50 ms
//! where inotify is unavailable, and drop (and delete) entries whose process is gone (`/proc/<pid>` on Linux) or whose heartbeat is
//! older than 3 s. The pid check applies only to entries written from the watcher's own
//! PID namespace (each file names its writer's, `pid_ns`): from another container a pid
//! means nothing here, and the heartbeat check alone decides.
//!
//! A service's traffic rules document is the file `<dir>/<service>/mesh-rules` (not
//! `*.json`, so never taken for an instance), written atomically by `put_rules` (a
//! `.mesh-rules.*.tmp` file renamed over it). A rules watch looks at it on the same
//! wake-ups, and reads it again only when its inode, size or times changed; it is held to the rules
//! below, as a regular file of at most [`MAX_RULES_BYTES`] (256 KiB), and a bad one is
//! logged once and counted in `skipped_entries`.
//!
//! Out of file descriptors (a connection flood on the agent's own port), neither side
//! forgets a live instance: a registrant that cannot write its file touches the file's
//! modification time through a descriptor it keeps open (watchers take the later of the
//! two as the heartbeat), and a watcher that cannot read the directory or a file keeps
//! the list it had.
//!
//! # What is refused, and why
//!
//! Whoever can write the registry directory decides where calls go, so it must be private
//! to the agents' user:
//!
//! * **Directories.** The registry directory (missing parents too) and each service
//!   directory are created with mode 0700. An existing one is refused with
//!   [`Error::Insecure`] (naming the path, its owner or mode, and what to do) if it is a
//!   symbolic link, is owned by another user (root excepted), or can be written by group
//!   or others (`mode & 0o022`). Otherwise another local user could create
//!   `<temp_dir>/dubbo-mesh-registry` first, in the world-writable temp directory, and
//!   plant entries that send the calls to them. `open` checks (so an agent refuses to
//!   start), `register` and `watch` check again, and a watcher checks on every scan: while
//!   the check fails it keeps the list it had, and warns once.
//! * **Entries.** Only regular files of at most [`MAX_ENTRY_BYTES`] (64 KiB; a real
//!   entry is a few hundred bytes) are read. Symbolic links are not followed, FIFOs,
//!   devices, sockets and directories are skipped, and so are larger files: a FIFO would
//!   block the watcher for good, a link to `/dev/zero` would be read until memory runs
//!   out, a 100 MB file re-read every scan costs most of a core. A file is opened with
//!   `O_NOFOLLOW | O_NONBLOCK` and judged by `fstat` on the open descriptor, so replacing
//!   it between a check and the open gains nothing.
//! * **Logging.** Each bad entry is logged once (again only if it changes: other inode,
//!   size, or times); a watcher remembers [`MAX_REMEMBERED`] of them, the ones beyond are
//!   logged at debug level after one warning saying so.
//! * **Re-reading.** An entry whose inode, size, modification and change times are those
//!   of the last scan is not read and parsed again.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{DirBuilder, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::dir_events::Wake;
use crate::rules::{self, Found};
use crate::{Error, Instance, RulesSink, Sink, MAX_RULES_BYTES};

const HEARTBEAT: Duration = Duration::from_secs(1);
const STALE_AFTER_MS: u64 = 3_000;
/// Largest entry file read; a real one is a few hundred bytes.
const MAX_ENTRY_BYTES: u64 = 64 * 1024;
/// Bad entries a watcher remembers (to log each once), and parsed entries it caches.
const MAX_REMEMBERED: usize = 1024;
/// Mode of the directories the file registry creates.
const DIR_MODE: u32 = 0o700;

// ---------------------------------------------------------------- directories

/// This process's effective uid.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why `dir` (described by its `symlink_metadata`) must not hold registry entries, or
/// `None` if it is private to this user.
fn refusal(dir: &Path, md: &Metadata) -> Option<String> {
    let me = euid();
    let path = dir.display();
    if md.file_type().is_symlink() {
        return Some(format!(
            "registry directory {path} is a symbolic link: refused, since whoever controls \
             the link decides where entries are read; remove it, or give the real directory \
             (owned by uid {me}, mode 0700) with --registry file:///real/dir"
        ));
    }
    if !md.is_dir() {
        return Some(format!(
            "registry directory {path} is not a directory; remove it, or give another \
             directory with --registry file:///some/dir"
        ));
    }
    let owner = md.uid();
    if owner != me && owner != 0 {
        return Some(format!(
            "registry directory {path} is owned by uid {owner}, not by this user (uid {me}): \
             refused, since its owner could plant entries that send calls to them; remove it \
             if it is not yours (the agents recreate it, mode 0700), or give a directory of \
             your own with --registry file:///some/dir"
        ));
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "registry directory {path} has mode {mode:04o}: refused, since group or others \
             can write it and could plant entries that send calls to them; run \
             `chmod 700 {path}`, or give another directory with --registry file:///some/dir"
        ));
    }
    None
}

/// An I/O error on `path`, with the path in its message.
fn io_error(what: &str, path: &Path, e: &io::Error) -> Error {
    Error::Io(io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    ))
}

/// Checks that `dir` exists and is private to this user (see the module docs).
fn check_private_dir(dir: &Path) -> Result<(), Error> {
    let md = std::fs::symlink_metadata(dir).map_err(|e| io_error("registry directory", dir, &e))?;
    match refusal(dir, &md) {
        Some(m) => Err(Error::Insecure(m)),
        None => Ok(()),
    }
}

/// Like [`check_private_dir`], but a missing `dir` is fine.
fn check_if_present(dir: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        _ => check_private_dir(dir),
    }
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist, then checks
/// that it is private to this user. Whatever got there first is checked, so a directory
/// another user creates in between is refused too.
fn ensure_private_dir(dir: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|e| io_error("creating registry directory", dir, &e))?;
        }
        Err(e) => return Err(io_error("registry directory", dir, &e)),
    }
    check_private_dir(dir)
}

// ---------------------------------------------------------------- reading entries

/// The identity of an entry's state: when it is unchanged, so is the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    mode: u32,
}

impl Stamp {
    fn of(md: &Metadata) -> Stamp {
        Stamp {
            dev: md.dev(),
            ino: md.ino(),
            len: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
            mode: md.mode(),
        }
    }
}

/// Why an entry was not read.
#[derive(Debug)]
enum ReadError {
    /// Removed meanwhile.
    Gone,
    /// EMFILE or ENFILE: a passing shortage, not a bad file.
    OutOfDescriptors(io::Error),
    /// A bad file: skipped (and logged once).
    Bad(String),
}

/// What kind of file, for messages.
fn kind(md: &Metadata) -> &'static str {
    let t = md.file_type();
    if t.is_symlink() {
        "a symbolic link (links are not followed)"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// What a file holds, for the size it may have and for messages.
#[derive(Debug, Clone, Copy)]
struct Holds {
    what: &'static str,
    max: u64,
}

/// An instance entry: at most [`MAX_ENTRY_BYTES`].
const ENTRY: Holds = Holds {
    what: "an entry",
    max: MAX_ENTRY_BYTES,
};

/// A rules document: at most [`MAX_RULES_BYTES`].
const RULES: Holds = Holds {
    what: "a rules document",
    max: MAX_RULES_BYTES as u64,
};

/// Why `md` (of a file holding `holds`) disqualifies it before reading, if it does.
fn bad_kind_or_size(md: &Metadata, holds: Holds) -> Option<String> {
    if !md.is_file() {
        return Some(format!("{}, not a regular file", kind(md)));
    }
    if md.len() > holds.max {
        return Some(format!(
            "{} bytes, more than {} may have ({})",
            md.len(),
            holds.what,
            holds.max
        ));
    }
    None
}

/// Reads an entry: a regular file (links not followed, never blocking on a FIFO) of at
/// most [`MAX_ENTRY_BYTES`]. Returns the open file's metadata and its bytes.
fn read_entry(path: &Path) -> Result<(Metadata, Vec<u8>), ReadError> {
    read_capped(path, ENTRY)
}

/// Reads a file as [`read_entry`] does, for what it `holds`.
fn read_capped(path: &Path, holds: Holds) -> Result<(Metadata, Vec<u8>), ReadError> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) => return Err(classify(e)),
    };
    let md = file.metadata().map_err(classify)?;
    if let Some(why) = bad_kind_or_size(&md, holds) {
        return Err(ReadError::Bad(why));
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    file.take(holds.max + 1)
        .read_to_end(&mut bytes)
        .map_err(classify)?;
    if bytes.len() as u64 > holds.max {
        return Err(ReadError::Bad(format!(
            "more than {} bytes (it grew while read)",
            holds.max
        )));
    }
    Ok((md, bytes))
}

fn classify(e: io::Error) -> ReadError {
    if e.kind() == io::ErrorKind::NotFound {
        ReadError::Gone
    } else if out_of_descriptors(&e) {
        ReadError::OutOfDescriptors(e)
    } else if e.raw_os_error() == Some(libc::ELOOP) {
        ReadError::Bad("a symbolic link (links are not followed)".into())
    } else {
        ReadError::Bad(e.to_string())
    }
}

/// An entry's content, as far as a watcher needs it.
#[derive(Debug, Clone)]
struct Parsed {
    addr: Option<String>,
    weight: u32,
    meta: BTreeMap<String, String>,
    pid: u64,
    pid_ns: Option<String>,
    heartbeat_ms: u64,
}

impl Parsed {
    fn from_bytes(bytes: &[u8]) -> Result<Parsed, ReadError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| ReadError::Bad(format!("not a registry entry (JSON: {e})")))?;
        Ok(Parsed {
            addr: v.get("addr").and_then(Value::as_str).map(str::to_owned),
            weight: v
                .get("weight")
                .and_then(Value::as_u64)
                .and_then(|w| u32::try_from(w).ok())
                .unwrap_or(crate::DEFAULT_WEIGHT),
            meta: v
                .get("meta")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                        .collect()
                })
                .unwrap_or_default(),
            pid: v.get("pid").and_then(Value::as_u64).unwrap_or(0),
            pid_ns: v.get("pid_ns").and_then(Value::as_str).map(str::to_owned),
            heartbeat_ms: v.get("heartbeat_ms").and_then(Value::as_u64).unwrap_or(0),
        })
    }
}

// ---------------------------------------------------------------- registering

#[derive(Debug)]
pub(crate) struct FileBackend {
    dir: PathBuf,
}

pub(crate) struct FileRegistration {
    stop: mpsc::Sender<()>,
    done: Mutex<mpsc::Receiver<()>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn new_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}-{n}", std::process::id())
}

struct Entry {
    /// The registry directory.
    top: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
    instance: Instance,
    token: String,
    /// The file last written, kept open so a heartbeat needs no new descriptor.
    held: Option<File>,
    /// Another live process wrote the entry since (a binary upgrade's new process): it
    /// is left alone.
    yielded: bool,
    /// When this registration began (ms since the epoch): of two live registrants of
    /// one address, the later keeps the entry.
    registered_ms: u64,
}

impl Entry {
    /// Rewrites the file; if that fails (out of descriptors), refreshes its modification
    /// time instead through the held descriptor.
    fn heartbeat(&mut self) {
        if self.taken_over() {
            if !self.yielded {
                log::info!(
                    "registry: {} was written by another live process (a new one replacing \
                     this one?); leaving the entry to it",
                    self.path.display()
                );
                self.yielded = true;
            }
            return;
        }
        self.yielded = false;
        let Err(e) = self.write() else { return };
        match self
            .held
            .as_ref()
            .map(|f| f.set_modified(SystemTime::now()))
        {
            Some(Ok(())) => log::debug!("registry heartbeat {}: {e}; touched", self.path.display()),
            _ => log::warn!("registry heartbeat {}: {e}", self.path.display()),
        }
    }

    fn write(&mut self) -> io::Result<()> {
        // Recreated (0700) if someone removed them; refused if no longer private.
        ensure_private_dir(&self.top).map_err(io::Error::other)?;
        if let Some(parent) = self.path.parent() {
            ensure_private_dir(parent).map_err(io::Error::other)?;
        }
        let body = json!({
            "addr": self.instance.addr,
            "weight": self.instance.weight,
            "meta": self.instance.meta,
            "pid": std::process::id(),
            "pid_ns": own_pid_namespace(),
            "token": self.token,
            "registered_ms": self.registered_ms,
            "heartbeat_ms": now_ms(),
        });
        std::fs::write(&self.tmp, body.to_string())?;
        std::fs::rename(&self.tmp, &self.path)?;
        self.held = File::open(&self.path).ok();
        Ok(())
    }

    /// Whether the entry now holds another, later registrant's token, whose process is
    /// alive and whose heartbeat is fresh: two processes registering one address (a binary
    /// upgrade's old and new process, for the moment they overlap) would otherwise
    /// overwrite each other every second, and the old one's last heartbeat, removed when
    /// it deregisters, would take the new one's entry with it until its next heartbeat.
    fn taken_over(&self) -> bool {
        let Ok((_, bytes)) = read_entry(&self.path) else {
            return false;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            return false;
        };
        let token = v.get("token").and_then(Value::as_str);
        let Some(token) = token.filter(|t| *t != self.token) else {
            return false;
        };
        // The later registration keeps the entry (ties: the greater token), so two
        // never both give way, nor both overwrite.
        let theirs = v.get("registered_ms").and_then(Value::as_u64).unwrap_or(0);
        if (theirs, token) < (self.registered_ms, self.token.as_str()) {
            return false;
        }
        let Ok(other) = Parsed::from_bytes(&bytes) else {
            return false;
        };
        let same_namespace = other
            .pid_ns
            .as_deref()
            .is_none_or(|ns| ns == own_pid_namespace());
        let alive = !same_namespace || pid_alive(other.pid);
        alive && now_ms().saturating_sub(other.heartbeat_ms) <= STALE_AFTER_MS
    }

    /// Removes the file if it is still ours (another process may have taken the address over).
    fn remove(&self) {
        let _ = std::fs::remove_file(&self.tmp);
        let ours = read_entry(&self.path)
            .ok()
            .and_then(|(_, bytes)| serde_json::from_slice::<Value>(&bytes).ok())
            .map(|v| v.get("token").and_then(Value::as_str) == Some(self.token.as_str()))
            .unwrap_or(false);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("removing {}: {e}", self.path.display());
            }
        }
    }
}

impl FileBackend {
    /// Creates `dir` (mode 0700) if missing; refuses it if it is not private to this user.
    pub(crate) fn new(dir: PathBuf) -> Result<Self, Error> {
        ensure_private_dir(&dir)?;
        Ok(FileBackend { dir })
    }

    pub(crate) fn register(&self, instance: Instance) -> Result<FileRegistration, Error> {
        let sdir = self.dir.join(&instance.service);
        ensure_private_dir(&self.dir)?;
        ensure_private_dir(&sdir)?;
        let token = new_token();
        let mut entry = Entry {
            top: self.dir.clone(),
            path: sdir.join(format!("{}.json", instance.addr)),
            tmp: sdir.join(format!(".{}.{token}.tmp", instance.addr)),
            instance,
            token,
            held: None,
            yielded: false,
            registered_ms: now_ms(),
        };
        entry.write()?;
        let (stop, stop_rx) = mpsc::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("registry-file-hb".into())
            .spawn(move || {
                // a message or a disconnect both mean stop
                while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(HEARTBEAT) {
                    entry.heartbeat();
                }
                entry.remove();
                let _ = done_tx.send(());
            })?;
        Ok(FileRegistration {
            stop,
            done: Mutex::new(done),
        })
    }

    pub(crate) fn watch(&self, service: &str, sink: Arc<Sink>) -> Result<(), Error> {
        let sdir = self.dir.join(service);
        check_private_dir(&self.dir)?;
        check_if_present(&sdir)?;
        let top = self.dir.clone();
        let service = service.to_owned();
        std::thread::Builder::new()
            .name("registry-file-watch".into())
            .spawn(move || {
                let mut wake = Wake::new(&[&top, &sdir]);
                let mut scanner = Scanner::new(top, sdir, service);
                let mut last: Option<Vec<Instance>> = None;
                while !sink.is_stopped() {
                    // None: unreadable for now (out of descriptors, refused): keep what we had.
                    if let Some(list) = scanner.scan() {
                        if last.as_ref() != Some(&list) {
                            last = Some(list.clone());
                            sink.deliver(list);
                        }
                    }
                    wake.wait();
                }
            })?;
        Ok(())
    }
}

impl FileRegistration {
    pub(crate) fn stop(self) -> Result<(), Error> {
        let _ = self.stop.send(());
        let done = self.done.lock().map_err(|_| Error::Shutdown)?;
        match done.recv_timeout(Duration::from_secs(2)) {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::Shutdown),
        }
    }
}

/// Whether the registry directory `top` and the service directory `sdir` in it are both
/// there (`false`: one is missing, so the service has nothing), or why one is refused or
/// cannot be looked at. Checked on every scan: one lstat each.
fn dirs_present(top: &Path, sdir: &Path) -> Result<bool, String> {
    for dir in [top, sdir] {
        match std::fs::symlink_metadata(dir) {
            Ok(md) => {
                if let Some(m) = refusal(dir, &md) {
                    return Err(m);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
    }
    Ok(true)
}

/// EMFILE or ENFILE: a passing shortage, not a bad file.
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// This process's PID namespace (`pid:[4026531836]` on Linux), `""` where unknown.
fn own_pid_namespace() -> &'static str {
    static NS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NS.get_or_init(|| {
        std::fs::read_link("/proc/self/ns/pid")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}

fn pid_alive(pid: u64) -> bool {
    if pid == u64::from(std::process::id()) {
        return true;
    }
    let proc = Path::new("/proc");
    if cfg!(target_os = "linux") && proc.join("self").exists() {
        proc.join(pid.to_string()).exists()
    } else {
        true // no way to tell: rely on the heartbeat
    }
}

// ---------------------------------------------------------------- watching

/// An entry parsed at its last change.
#[derive(Debug)]
struct Cached {
    stamp: Stamp,
    parsed: Parsed,
    /// The scan that last saw it.
    seen: u64,
}

/// A bad entry already logged.
#[derive(Debug)]
struct Reported {
    /// Its state when logged (`None`: it could not even be looked at).
    stamp: Option<Stamp>,
    /// The scan that last saw it.
    seen: u64,
}

/// One watcher's state between polls of a service directory.
#[derive(Debug)]
struct Scanner {
    top: PathBuf,
    sdir: PathBuf,
    service: String,
    /// Counts scans; entries not seen by the latest are forgotten.
    scan: u64,
    /// Good entries by file name, not read again while unchanged.
    cache: HashMap<OsString, Cached>,
    /// Bad entries by file name, logged once each.
    reported: HashMap<OsString, Reported>,
    /// Whether "too many bad entries to log each" has been said.
    overflow_said: bool,
    /// The directory-level problem last logged, until a scan succeeds.
    dir_problem: Option<String>,
}

impl Scanner {
    fn new(top: PathBuf, sdir: PathBuf, service: String) -> Scanner {
        Scanner {
            top,
            sdir,
            service,
            scan: 0,
            cache: HashMap::new(),
            reported: HashMap::new(),
            overflow_said: false,
            dir_problem: None,
        }
    }

    /// Logs a directory-level problem, once while it lasts.
    fn dir_problem(&mut self, m: String) {
        if self.dir_problem.as_ref() != Some(&m) {
            log::warn!("registry scan: {m}; keeping the last list");
            self.dir_problem = Some(m);
        } else {
            log::debug!("registry scan: {m}");
        }
    }

    /// Whether `name` was logged as bad in this very state (then it is not read again).
    fn known_bad(&mut self, name: &OsStr, stamp: Option<Stamp>) -> bool {
        match self.reported.get_mut(name) {
            Some(r) if r.stamp == stamp => {
                r.seen = self.scan;
                true
            }
            _ => false,
        }
    }

    /// Logs a bad entry, once per state of the file.
    fn bad(&mut self, name: &OsStr, stamp: Option<Stamp>, why: &str) {
        let path = self.sdir.join(name);
        if self.known_bad(name, stamp) {
            log::debug!("registry: skipping {}: {why}", path.display());
            return;
        }
        if !self.reported.contains_key(name) && self.reported.len() >= MAX_REMEMBERED {
            if !self.overflow_said {
                self.overflow_said = true;
                log::warn!(
                    "registry: more than {MAX_REMEMBERED} bad entries in {}; the others are \
                     skipped and logged at debug level only",
                    self.sdir.display()
                );
            }
            log::debug!("registry: skipping {}: {why}", path.display());
            return;
        }
        self.reported.insert(
            name.to_owned(),
            Reported {
                stamp,
                seen: self.scan,
            },
        );
        log::warn!("registry: skipping {}: {why}", path.display());
    }

    /// Reads the service directory, dropping (and deleting) dead or stale entries;
    /// `None` (keep the last list) when a directory is refused or cannot be read, or the
    /// process is out of file descriptors. A bad file (a directory named `x.json`, a
    /// FIFO, a link, a file of another user's, too large, not JSON) is skipped, and
    /// logged once: one bad file must not freeze the list.
    fn scan(&mut self) -> Option<Vec<Instance>> {
        match dirs_present(&self.top, &self.sdir) {
            Ok(true) => {}
            Ok(false) => {
                self.dir_problem = None;
                return Some(Vec::new());
            }
            Err(m) => {
                self.dir_problem(m);
                return None;
            }
        }
        let rd = match std::fs::read_dir(&self.sdir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(Vec::new()),
            Err(e) => {
                self.dir_problem(format!("{}: {e}", self.sdir.display()));
                return None;
            }
        };
        self.scan = self.scan.wrapping_add(1);
        let now = now_ms();
        let mut out = BTreeMap::new();
        for ent in rd.flatten() {
            let name = ent.file_name();
            {
                let s = name.to_string_lossy();
                if s.starts_with('.') || !s.ends_with(".json") {
                    continue;
                }
            }
            // Not following links.
            let md = match ent.metadata() {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.bad(&name, None, &e.to_string());
                    continue;
                }
            };
            let stamp = Stamp::of(&md);
            if self.known_bad(&name, Some(stamp)) {
                continue;
            }
            if let Some(why) = bad_kind_or_size(&md, ENTRY) {
                self.bad(&name, Some(stamp), &why);
                continue;
            }
            let parsed = match self.cache.get_mut(&name) {
                Some(c) if c.stamp == stamp => {
                    c.seen = self.scan;
                    c.parsed.clone()
                }
                _ => match read_entry(&ent.path())
                    .and_then(|(md, bytes)| Parsed::from_bytes(&bytes).map(|p| (Stamp::of(&md), p)))
                {
                    Ok((stamp, parsed)) => {
                        if self.cache.len() < MAX_REMEMBERED || self.cache.contains_key(&name) {
                            let seen = self.scan;
                            let c = Cached {
                                stamp,
                                parsed: parsed.clone(),
                                seen,
                            };
                            self.cache.insert(name.clone(), c);
                        }
                        self.reported.remove(&name);
                        parsed
                    }
                    Err(ReadError::Gone) => continue, // removed meanwhile
                    Err(ReadError::OutOfDescriptors(e)) => {
                        self.dir_problem(format!("{}: {e}", ent.path().display()));
                        return None;
                    }
                    Err(ReadError::Bad(why)) => {
                        self.bad(&name, Some(stamp), &why);
                        continue;
                    }
                },
            };
            let path = ent.path();
            let touched = md
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            let hb = parsed.heartbeat_ms.max(touched);
            // Files without `pid_ns` come from older writers, which assumed one namespace.
            let same_namespace = parsed
                .pid_ns
                .as_deref()
                .is_none_or(|ns| ns == own_pid_namespace());
            let dead = same_namespace && !pid_alive(parsed.pid);
            if dead || now.saturating_sub(hb) > STALE_AFTER_MS {
                log::info!(
                    "registry: dropping {} ({})",
                    path.display(),
                    if dead {
                        "process gone"
                    } else {
                        "heartbeat stale"
                    }
                );
                let _ = std::fs::remove_file(&path);
                self.cache.remove(&name);
                continue;
            }
            let Some(addr) = parsed.addr else {
                continue;
            };
            out.insert(
                addr.clone(),
                Instance {
                    service: self.service.clone(),
                    addr,
                    weight: parsed.weight,
                    meta: parsed.meta,
                },
            );
        }
        // Forget what is gone, so both maps stay as small as the directory.
        let scan = self.scan;
        self.cache.retain(|_, c| c.seen == scan);
        self.reported.retain(|_, r| r.seen == scan);
        self.dir_problem = None;
        Some(out.into_values().collect())
    }
}

// ---------------------------------------------------------------- rules

/// The name of a service's rules document in its directory: not `*.json` and not
/// starting with `.`, so that the instance scan passes over it.
pub(crate) const RULES_FILE: &str = "mesh-rules";

impl FileBackend {
    /// Watches `<dir>/<service>/mesh-rules` (on every change in that directory, and once a
    /// second), reading it again only when its inode, size or times changed.
    pub(crate) fn watch_rules(
        &self,
        service: &str,
        sink: Arc<RulesSink>,
        skipped: Arc<AtomicU64>,
    ) -> Result<(), Error> {
        let sdir = self.dir.join(service);
        check_private_dir(&self.dir)?;
        check_if_present(&sdir)?;
        let path = sdir.join(RULES_FILE);
        let mut poller = RulesPoller {
            top: self.dir.clone(),
            tracker: rules::Tracker::new(path.display().to_string(), sink, skipped),
            sdir,
            path,
            read: None,
            problem: None,
        };
        std::thread::Builder::new()
            .name("registry-file-rules".into())
            .spawn(move || {
                let mut wake = Wake::new(&[&poller.top, &poller.sdir]);
                while !poller.tracker.is_stopped() {
                    poller.poll();
                    wake.wait();
                }
            })?;
        Ok(())
    }

    /// Writes `<dir>/<service>/mesh-rules` atomically (a temporary file in the same
    /// directory, renamed over it), or removes it.
    pub(crate) fn put_rules(&self, service: &str, rules: Option<&str>) -> Result<(), Error> {
        let sdir = self.dir.join(service);
        let path = sdir.join(RULES_FILE);
        let Some(doc) = rules else {
            // Nothing there (no directory either) is nothing to delete.
            check_if_present(&self.dir)?;
            check_if_present(&sdir)?;
            return match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error("removing rules document", &path, &e)),
            };
        };
        ensure_private_dir(&self.dir)?;
        ensure_private_dir(&sdir)?;
        let tmp = sdir.join(format!(".{RULES_FILE}.{}.tmp", new_token()));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .and_then(|mut f| f.write_all(doc.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_error("writing rules document", &path, &e));
        }
        Ok(())
    }
}

/// One rules watch's state between polls.
struct RulesPoller {
    top: PathBuf,
    sdir: PathBuf,
    path: PathBuf,
    tracker: rules::Tracker,
    /// The state of the file when last looked at (`None`: absent, or not yet looked at).
    read: Option<Stamp>,
    /// The problem last logged, until a poll succeeds.
    problem: Option<String>,
}

impl RulesPoller {
    /// Looks at the file (reading it only if it changed) and delivers what changed. A
    /// refused directory or a shortage of descriptors keeps the last document.
    fn poll(&mut self) {
        match self.look() {
            Ok(()) => {
                self.problem = None;
                self.tracker.deliver();
            }
            Err(m) if self.problem.as_ref() != Some(&m) => {
                log::warn!("registry rules: {m}; keeping the last document");
                self.problem = Some(m);
            }
            Err(m) => log::debug!("registry rules: {m}"),
        }
    }

    fn look(&mut self) -> Result<(), String> {
        if !dirs_present(&self.top, &self.sdir)? {
            self.read = None;
            self.tracker.note(Found::Absent);
            return Ok(());
        }
        let md = match std::fs::symlink_metadata(&self.path) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.read = None;
                self.tracker.note(Found::Absent);
                return Ok(());
            }
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        let stamp = Stamp::of(&md);
        if self.read == Some(stamp) {
            return Ok(());
        }
        let bad = match bad_kind_or_size(&md, RULES) {
            Some(why) => why,
            None => match read_capped(&self.path, RULES) {
                Ok((md, bytes)) => {
                    let stamp = Stamp::of(&md);
                    self.read = Some(stamp);
                    let version = version_of(&stamp);
                    self.tracker.note(Found::Doc {
                        bytes: &bytes,
                        version,
                    });
                    return Ok(());
                }
                Err(ReadError::Gone) => {
                    self.read = None;
                    self.tracker.note(Found::Absent);
                    return Ok(());
                }
                Err(ReadError::OutOfDescriptors(e)) => {
                    return Err(format!("{}: {e}", self.path.display()))
                }
                Err(ReadError::Bad(why)) => why,
            },
        };
        self.read = Some(stamp);
        let version = version_of(&stamp);
        self.tracker.note(Found::Bad { why: bad, version });
        Ok(())
    }
}

/// A number for one state of a file, to log a bad document once.
fn version_of(stamp: &Stamp) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    stamp.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(r: Result<(Metadata, Vec<u8>), ReadError>) -> String {
        match r {
            Err(ReadError::Bad(why)) => why,
            Err(other) => panic!("expected a bad file, got {other:?}"),
            Ok((_, bytes)) => panic!("expected a bad file, read {} bytes", bytes.len()),
        }
    }

    // The watcher looks (lstat) before it opens; these are what the open itself refuses
    // when a file is swapped in between.
    #[test]
    fn read_entry_refuses_links_devices_fifos_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(bad(read_entry(&link)).contains("symbolic link"));
        assert!(bad(read_entry(Path::new("/dev/zero"))).contains("device"));

        let fifo = dir.path().join("fifo.json");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(ok.success());
        // O_NONBLOCK: does not wait for a writer
        assert!(bad(read_entry(&fifo)).contains("FIFO"));

        let big = dir.path().join("big.json");
        File::create(&big)
            .unwrap()
            .set_len(MAX_ENTRY_BYTES + 1)
            .unwrap();
        assert!(bad(read_entry(&big)).contains("more than"));

        let fine = dir.path().join("fine.json");
        std::fs::write(&fine, vec![b' '; MAX_ENTRY_BYTES as usize]).unwrap();
        assert_eq!(read_entry(&fine).unwrap().1.len() as u64, MAX_ENTRY_BYTES);

        assert!(matches!(
            read_entry(&dir.path().join("missing.json")),
            Err(ReadError::Gone)
        ));
    }
}
