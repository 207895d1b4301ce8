//! Embedded file registry: zero configuration, one host.
//!
//! Layout: `<dir>/<service>/<host>:<port>.json`, each file written atomically (temp file +
//! rename) with `{"addr","weight","meta","pid","token","heartbeat_ms"}`; the registration's
//! thread refreshes `heartbeat_ms` every second. Watchers poll every 50 ms and drop (and
//! delete) entries whose process is gone (`/proc/<pid>` on Linux) or whose heartbeat is
//! older than 3 s. Registrants and watchers must share a PID namespace for the pid check;
//! the heartbeat check works regardless.

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
}

impl Entry {
    fn write(&self) -> std::io::Result<()> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let body = json!({
            "addr": self.instance.addr,
            "weight": self.instance.weight,
            "meta": self.instance.meta,
            "pid": std::process::id(),
            "token": self.token,
            "heartbeat_ms": now_ms(),
        });
        std::fs::write(&self.tmp, body.to_string())?;
        std::fs::rename(&self.tmp, &self.path)
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
        let entry = Entry {
            path: sdir.join(format!("{}.json", instance.addr)),
            tmp: sdir.join(format!(".{}.{token}.tmp", instance.addr)),
            instance,
            token,
        };
        entry.write()?;
        let (stop, stop_rx) = mpsc::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("registry-file-hb".into())
            .spawn(move || {
                // a message or a disconnect both mean stop
                while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(HEARTBEAT) {
                    if let Err(e) = entry.write() {
                        log::warn!("registry heartbeat {}: {e}", entry.path.display());
                    }
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
                    let list = scan(&sdir, &service);
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

/// Reads one service directory, dropping (and deleting) dead or stale entries.
fn scan(sdir: &Path, service: &str) -> Vec<Instance> {
    let rd = match std::fs::read_dir(sdir) {
        Ok(rd) => rd,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("registry scan {}: {e}", sdir.display());
            }
            return Vec::new();
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
            Err(_) => continue, // removed meanwhile
        };
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                log::warn!("registry: ignoring unreadable {}: {e}", path.display());
                continue;
            }
        };
        let pid = v.get("pid").and_then(Value::as_u64).unwrap_or(0);
        let hb = v.get("heartbeat_ms").and_then(Value::as_u64).unwrap_or(0);
        let dead = !pid_alive(pid);
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
    out.into_values().collect()
}
