//! Embedded file registry: zero configuration, one host.
//!
//! Layout: `<dir>/<service>/<host>:<port>.json`, each file written atomically (temp file +
//! rename) with `{"addr","weight","meta","pid","token","heartbeat_ms"}`; the registration's
//! thread refreshes `heartbeat_ms` every second. Watchers poll every 50 ms and drop (and
//! delete) entries whose process is gone (`/proc/<pid>` on Linux) or whose heartbeat is
//! older than 3 s. The pid check applies only to entries written from the watcher's own
//! PID namespace (each file names its writer's, `pid_ns`): from another container a pid
//! means nothing here, and the heartbeat check alone decides.
//!
//! Out of file descriptors (a connection flood on the agent's own port), neither side
//! forgets a live instance: a registrant that cannot write its file touches the file's
//! modification time through a descriptor it keeps open (watchers take the later of the
//! two as the heartbeat), and a watcher that cannot read the directory or a file keeps
//! the list it had.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::{Error, Instance, Sink};

const HEARTBEAT: Duration = Duration::from_secs(1);
const STALE_AFTER_MS: u64 = 3_000;
const POLL: Duration = Duration::from_millis(50);

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
    path: PathBuf,
    tmp: PathBuf,
    instance: Instance,
    token: String,
    /// The file last written, kept open so a heartbeat needs no new descriptor.
    held: Option<std::fs::File>,
}

impl Entry {
    /// Rewrites the file; if that fails (out of descriptors), refreshes its modification
    /// time instead through the held descriptor.
    fn heartbeat(&mut self) {
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

    fn write(&mut self) -> std::io::Result<()> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let body = json!({
            "addr": self.instance.addr,
            "weight": self.instance.weight,
            "meta": self.instance.meta,
            "pid": std::process::id(),
            "pid_ns": own_pid_namespace(),
            "token": self.token,
            "heartbeat_ms": now_ms(),
        });
        std::fs::write(&self.tmp, body.to_string())?;
        std::fs::rename(&self.tmp, &self.path)?;
        self.held = std::fs::File::open(&self.path).ok();
        Ok(())
    }

    /// Removes the file if it is still ours (another process may have taken the address over).
    fn remove(&self) {
        let _ = std::fs::remove_file(&self.tmp);
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
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
    pub(crate) fn new(dir: PathBuf) -> Self {
        FileBackend { dir }
    }

    pub(crate) fn register(&self, instance: Instance) -> Result<FileRegistration, Error> {
        let sdir = self.dir.join(&instance.service);
        let token = new_token();
        let mut entry = Entry {
            path: sdir.join(format!("{}.json", instance.addr)),
            tmp: sdir.join(format!(".{}.{token}.tmp", instance.addr)),
            instance,
            token,
            held: None,
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
        let service = service.to_owned();
        std::thread::Builder::new()
            .name("registry-file-watch".into())
            .spawn(move || {
                let mut last: Option<Vec<Instance>> = None;
                while !sink.is_stopped() {
                    let Some(list) = scan(&sdir, &service) else {
                        // Unreadable for now (out of descriptors): keep what we had.
                        std::thread::sleep(POLL);
                        continue;
                    };
                    if last.as_ref() != Some(&list) {
                        last = Some(list.clone());
                        sink.deliver(list);
                    }
                    std::thread::sleep(POLL);
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

/// EMFILE or ENFILE: a passing shortage, not a bad file.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
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

/// Reads one service directory, dropping (and deleting) dead or stale entries; `None`
/// (keep the last list) when the directory cannot be read or the process is out of
/// file descriptors. Any other file that cannot be read (a directory named `x.json`, a
/// file of another user's) is skipped: one bad file must not freeze the list.
fn scan(sdir: &Path, service: &str) -> Option<Vec<Instance>> {
    let rd = match std::fs::read_dir(sdir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Vec::new()),
        Err(e) => {
            log::warn!("registry scan {}: {e}", sdir.display());
            return None;
        }
    };
    let now = now_ms();
    let mut out = BTreeMap::new();
    for ent in rd.flatten() {
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let path = ent.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // removed meanwhile
            Err(e) if out_of_descriptors(&e) => {
                log::warn!("registry scan {}: {e}", path.display());
                return None;
            }
            Err(e) => {
                // Polled every 50 ms: at debug level, or it would flood the log.
                log::debug!("registry: skipping unreadable {}: {e}", path.display());
                continue;
            }
        };
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                log::warn!("registry: ignoring unreadable {}: {e}", path.display());
                continue;
            }
        };
        let pid = v.get("pid").and_then(Value::as_u64).unwrap_or(0);
        let touched = ent
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let hb = v
            .get("heartbeat_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .max(touched);
        // Files without `pid_ns` come from older writers, which assumed one namespace.
        let same_namespace = v
            .get("pid_ns")
            .and_then(Value::as_str)
            .is_none_or(|ns| ns == own_pid_namespace());
        let dead = same_namespace && !pid_alive(pid);
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
            continue;
        }
        let Some(addr) = v.get("addr").and_then(Value::as_str) else {
            continue;
        };
        let weight = v
            .get("weight")
            .and_then(Value::as_u64)
            .and_then(|w| u32::try_from(w).ok())
            .unwrap_or(crate::DEFAULT_WEIGHT);
        let meta = v
            .get("meta")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            addr.to_owned(),
            Instance {
                service: service.to_owned(),
                addr: addr.to_owned(),
                weight,
                meta,
            },
        );
    }
    Some(out.into_values().collect())
}
