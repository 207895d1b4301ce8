//! A real etcd server for tests and the bench: one member on free loopback ports, its
//! data in a given directory, started healthy, and stopped, killed or restarted on the
//! same ports and data.
//!
//! The binary is `$ETCD_BIN`, else `/usr/bin/etcd`, else `etcd` on `PATH`. When there
//! is none, starting fails with an error that says so: a test needing etcd fails rather
//! than passing without having run.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::free_addr;
use crate::wait::wait_until;

/// How long [`Etcd::start`] and [`Etcd::restart`] wait for etcd to become healthy.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(20);

/// A running etcd (one member), killed when dropped.
#[derive(Debug)]
pub struct Etcd {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    client: SocketAddr,
    peer: SocketAddr,
    child: Option<Child>,
}

impl Etcd {
    /// The etcd binary: `$ETCD_BIN`, else `/usr/bin/etcd`, else `etcd` on `PATH`.
    ///
    /// # Errors
    /// None of them is a file (`NotFound`, saying how to install one).
    pub fn binary() -> io::Result<PathBuf> {
        if let Some(bin) = std::env::var_os("ETCD_BIN") {
            let bin = PathBuf::from(bin);
            return if bin.is_file() {
                Ok(bin)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "ETCD_BIN={} is not an etcd binary: point it at one, or unset it \
                         to use /usr/bin/etcd or etcd on PATH",
                        bin.display()
                    ),
                ))
            };
        }
        let on_path: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join("etcd")).collect())
            .unwrap_or_default();
        std::iter::once(PathBuf::from("/usr/bin/etcd"))
            .chain(on_path)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "etcd binary not found (not at $ETCD_BIN, /usr/bin/etcd nor on PATH): \
                     install it (Debian: apt-get install etcd-server; or bash .ci/setup) or set \
                     ETCD_BIN; what needs etcd cannot run without a real one",
                )
            })
    }

    /// Starts etcd on two free loopback ports (client and peer) with its data in `data`
    /// (created if missing) and its output appended to `log`, and waits until it is
    /// healthy (it has a leader).
    ///
    /// # Errors
    /// No binary ([`Etcd::binary`]), no free port, the log file could not be opened,
    /// or etcd exited or was not healthy within [`HEALTHY_WITHIN`] (the error carries
    /// the end of its log).
    pub fn start(data: &Path, log: &Path) -> io::Result<Etcd> {
        let mut etcd = Etcd {
            bin: Etcd::binary()?,
            data: data.to_path_buf(),
            log: log.to_path_buf(),
            client: free_addr()?,
            peer: free_addr()?,
            child: None,
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    /// Its client address (`127.0.0.1:port`).
    pub fn client_addr(&self) -> SocketAddr {
        self.client
    }

    /// Its client URL, `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last 3,000 bytes or so of its log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut start = s.len().saturating_sub(3000);
        while !s.is_char_boundary(start) {
            start += 1;
        }
        s[start..].to_owned()
    }

    /// Its process id while it runs (not killed or stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it answers `GET /health` with `"health":"true"` now.
    pub fn is_healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.client, Duration::from_millis(500)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.contains("\"health\":\"true\"")
    }

    /// Fails if it was started and has exited since, with the end of its log.
    ///
    /// # Errors
    /// The process has exited.
    pub fn check_alive(&mut self) -> io::Result<()> {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
            return Err(io::Error::other(format!(
                "etcd on {} exited ({status}); log {}:\n{}",
                self.client,
                self.log.display(),
                self.log_tail()
            )));
        }
        Ok(())
    }

    /// Waits until it is healthy.
    ///
    /// # Errors
    /// It exited, or was not healthy within `limit`; the error carries the end of its
    /// log.
    pub fn wait_healthy(&mut self, limit: Duration) -> io::Result<()> {
        let mut exited = None;
        let done = wait_until(limit, || match self.check_alive() {
            Ok(()) => self.is_healthy(),
            Err(e) => {
                exited = Some(e);
                true
            }
        });
        match exited {
            Some(e) => Err(e),
            None if done => Ok(()),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "etcd on {} not healthy within {limit:?}; log {}:\n{}",
                    self.client,
                    self.log.display(),
                    self.log_tail()
                ),
            )),
        }
    }

    /// SIGKILL and reap; the data stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; the data stays.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(c.id()) {
            // SAFETY: a plain syscall on our own child, not reaped yet (so the pid is
            // still its own).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let end = Instant::now() + grace;
            while Instant::now() < end {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Kills it if it runs, then starts it again on the same ports and data and waits
    /// until it is healthy.
    ///
    /// # Errors
    /// As [`Etcd::start`].
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn()
    }

    /// [`Etcd::restart`] with no data: its data directory is removed first, so that
    /// revisions start over.
    ///
    /// # Errors
    /// The data could not be removed, or as [`Etcd::start`].
    pub fn restart_empty(&mut self) -> io::Result<()> {
        self.kill();
        match std::fs::remove_dir_all(&self.data) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.spawn()
    }

    fn spawn(&mut self) -> io::Result<()> {
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let (client, peer) = (
            format!("http://{}", self.client),
            format!("http://{}", self.peer),
        );
        let child = Command::new(&self.bin)
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("starting {}: {e}", self.bin.display()))
            })?;
        self.child = Some(child);
        self.wait_healthy(HEALTHY_WITHIN)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
