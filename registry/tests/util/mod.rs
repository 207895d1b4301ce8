//! Test helpers: a real etcd server, a watch collector, and a child-process registrant.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use registry::{Instance, Registry, Watch};

#[cfg(feature = "zookeeper")]
pub mod zk;

pub fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

// ---------------------------------------------------------------- etcd server

/// A real etcd server ([`test_support::etcd::Etcd`]: free loopback ports, killed on
/// drop) with its data and log in a temporary directory; it derefs to that server for
/// its address, `kill`, `restart` and `restart_empty`.
pub struct Etcd {
    server: test_support::etcd::Etcd,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Etcd {
    type Target = test_support::etcd::Etcd;

    fn deref(&self) -> &Self::Target {
        &self.server
    }
}

impl std::ops::DerefMut for Etcd {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.server
    }
}

impl Etcd {
    /// Starts etcd and waits until it is healthy. Panics (fails the test) if the binary
    /// is missing (see [`test_support::etcd::Etcd::binary`]).
    pub fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let server =
            test_support::etcd::Etcd::start(&dir.path().join("data"), &dir.path().join("etcd.log"))
                .unwrap_or_else(|e| panic!("{e}"));
        Etcd { server, _dir: dir }
    }

    /// Registry URL for this server.
    pub fn url(&self, query: &str) -> String {
        format!("etcd://{}{query}", self.client_addr())
    }

    /// A direct etcd client call on a throwaway runtime.
    #[cfg(feature = "etcd")]
    pub fn with_client<T, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let ep = self.endpoint();
        rt.block_on(async move {
            let c = etcd_client::Client::connect([ep], None)
                .await
                .expect("connect");
            f(c).await
        })
    }

    /// Keys under a prefix (sorted).
    #[cfg(feature = "etcd")]
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let prefix = prefix.to_owned();
        self.with_client(|mut c| async move {
            let r = c
                .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
                .await
                .expect("get");
            let mut v: Vec<String> = r
                .kvs()
                .iter()
                .map(|kv| kv.key_str().unwrap().to_owned())
                .collect();
            v.sort();
            v
        })
    }
}

// ---------------------------------------------------------------- TCP proxy

/// A loopback TCP proxy that can cut every connection (and refuse new ones) on demand:
/// "etcd unreachable" for one client while etcd itself stays up.
pub struct Proxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (d, cs) = (down.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let mut list = cs.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(upstream.try_clone().unwrap());
                drop(list);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, down, conns }
    }

    /// Registry URL through this proxy.
    pub fn url(&self, query: &str) -> String {
        format!("etcd://127.0.0.1:{}{query}", self.port)
    }

    /// ZooKeeper registry URL (root `/dubbo`) through this proxy.
    pub fn zookeeper_url(&self, query: &str) -> String {
        format!("zookeeper://127.0.0.1:{}/dubbo{query}", self.port)
    }

    /// Cuts every connection and refuses new ones.
    pub fn set_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn set_up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------- watching

/// A watch whose lists arrive on a channel.
pub struct Collector {
    pub rx: Receiver<Vec<Instance>>,
    pub watch: Watch,
    pub last: Option<Vec<Instance>>,
}

impl Collector {
    pub fn new(reg: &Registry, service: &str) -> Collector {
        let (tx, rx) = mpsc::channel();
        let watch = reg
            .watch(service, move |list| {
                let _ = tx.send(list);
            })
            .expect("watch");
        Collector {
            rx,
            watch,
            last: None,
        }
    }

    /// Waits (deadline `within`) for a delivered list satisfying `pred`; returns it.
    pub fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        pred: impl Fn(&[Instance]) -> bool,
    ) -> Vec<Instance> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(list) => {
                    self.last = Some(list.clone());
                    if pred(&list) {
                        return list;
                    }
                }
                Err(_) => panic!(
                    "timed out after {within:?} waiting for {what}; last list: {:?}",
                    self.last
                ),
            }
        }
    }

    /// Asserts that no list arrives within `d`.
    pub fn assert_quiet(&mut self, d: Duration, why: &str) {
        if let Ok(list) = self.rx.recv_timeout(d) {
            panic!("unexpected delivery ({why}): {list:?}");
        }
    }
}

/// A rules watch whose deliveries arrive on a channel.
pub struct RulesCollector {
    pub rx: Receiver<Option<String>>,
    pub watch: Watch,
}

impl RulesCollector {
    pub fn new(reg: &Registry, service: &str) -> RulesCollector {
        let (tx, rx) = mpsc::channel();
        let watch = reg
            .watch_rules(service, move |doc| {
                let _ = tx.send(doc);
            })
            .expect("watch_rules");
        RulesCollector { rx, watch }
    }

    /// The next delivery, which must come within `within` and be `want`.
    #[track_caller]
    pub fn expect(&mut self, within: Duration, want: Option<&str>) {
        match self.rx.recv_timeout(within) {
            Ok(doc) => assert_eq!(
                doc.as_deref().map(short),
                want.map(short),
                "unexpected delivery"
            ),
            Err(_) => panic!(
                "no delivery within {within:?}, expected {:?}",
                want.map(short)
            ),
        }
    }

    /// Asserts that nothing is delivered within `d`.
    #[track_caller]
    pub fn assert_quiet(&mut self, d: Duration, why: &str) {
        if let Ok(doc) = self.rx.recv_timeout(d) {
            panic!(
                "unexpected delivery ({why}): {:?}",
                doc.as_deref().map(short)
            );
        }
    }
}

/// A document for a message: at most 80 bytes of it.
fn short(doc: &str) -> String {
    match doc.char_indices().nth(80) {
        Some((i, _)) => format!("{}...({} bytes)", &doc[..i], doc.len()),
        None => doc.to_owned(),
    }
}

/// Waits (3 s at most) until `reg.skipped_entries()` is `n`, and checks that it did not
/// go past.
#[track_caller]
pub fn wait_skipped(reg: &Registry, n: u64, what: &str) {
    let ok = test_support::wait::wait_until(Duration::from_secs(3), || reg.skipped_entries() >= n);
    assert!(
        ok,
        "{what}: skipped_entries is {}, expected {n}",
        reg.skipped_entries()
    );
    assert_eq!(reg.skipped_entries(), n, "{what}: counted once");
}

pub fn addrs(list: &[Instance]) -> Vec<&str> {
    list.iter().map(|i| i.addr.as_str()).collect()
}

// ---------------------------------------------------------------- child registrant

/// The `registrant` example (built by `cargo test` with the other examples; built here
/// if a narrower `cargo test` left it out, or left one older than this test binary).
fn registrant_exe() -> std::path::PathBuf {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(build_registrant).clone()
}

fn build_registrant() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    // target/<profile>/deps/<test binary> -> target/<profile>/examples/registrant
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary in target/<profile>/deps");
    let path = profile_dir.join("examples").join("registrant");
    if modified(&path).is_none_or(|built| Some(built) < modified(&exe)) {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "registry", "--example", "registrant"]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("run cargo to build the registrant example");
        assert!(status.success(), "building the registrant example failed");
    }
    path
}

/// A child process (the `registrant` example) holding a registration.
pub struct ChildRegistrant {
    child: Child,
}

impl ChildRegistrant {
    pub fn spawn(url: &str, service: &str, addr: &str) -> ChildRegistrant {
        let mut child = Command::new(registrant_exe())
            .args([url, service, addr])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child registrant");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("REGISTERED") {
                    let _ = tx.send(());
                }
            }
        });
        let mut c = ChildRegistrant { child };
        if rx.recv_timeout(Duration::from_secs(15)).is_err() {
            c.kill9();
            panic!("child registrant did not register within 15 s");
        }
        c
    }

    /// SIGKILL: no deregistration, no lease revoke.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildRegistrant {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the `registrant` example with `envs` set and waits (15 s at most) until it
/// registers (`Ok`, then it is killed) or exits (`Err` with its stderr).
pub fn registrant_outcome(
    url: &str,
    service: &str,
    addr: &str,
    envs: &[(&str, &std::path::Path)],
) -> Result<(), String> {
    let mut cmd = Command::new(registrant_exe());
    cmd.args([url, service, addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn child registrant");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("REGISTERED") {
                let _ = tx.send(());
            }
        }
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if rx.try_recv().is_ok() {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Err(err.join().unwrap_or_default());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child registrant neither registered nor exited within 15 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- hostile files

/// Makes a FIFO at `path` (with `mkfifo`).
pub fn mkfifo(path: &std::path::Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Samples this process's resident memory every 2 ms from a thread, so a short spike
/// (a large file read and freed within one poll) is seen too. Past `abort_kib` of growth
/// it aborts the whole test binary: a watcher reading an endless file would otherwise
/// take the host's memory with it.
pub struct RssSampler {
    base_kib: u64,
    base_hwm_kib: u64,
    max_kib: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(abort_kib: u64) -> RssSampler {
        let base_kib = status_kib("VmRSS");
        let max_kib = Arc::new(std::sync::atomic::AtomicU64::new(base_kib));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max_kib.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let now = status_kib("VmRSS");
                m.fetch_max(now, Ordering::Relaxed);
                if now.saturating_sub(base_kib) > abort_kib {
                    eprintln!(
                        "resident memory grew from {base_kib} KiB to {now} KiB: something reads \
                         without bound; aborting before it takes the host's memory"
                    );
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        RssSampler {
            base_kib,
            base_hwm_kib: status_kib("VmHWM"),
            max_kib,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the largest growth seen (KiB), sampled or by the peak (`VmHWM`).
    pub fn growth_kib(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let sampled = self
            .max_kib
            .load(Ordering::Relaxed)
            .saturating_sub(self.base_kib);
        let peak = status_kib("VmHWM").saturating_sub(self.base_hwm_kib);
        sampled.max(peak)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A fresh, live entry for `addr` as a registrant of this process would write it.
pub fn entry_json(addr: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!(
        r#"{{"addr":"{addr}","weight":100,"meta":{{}},"pid":{},"heartbeat_ms":{}}}"#,
        std::process::id(),
        now + 60_000
    )
}
