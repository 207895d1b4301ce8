//! Child processes of a scenario: started, watched (/proc), and always stopped.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// CPU time and memory of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// utime + stime, seconds.
    pub cpu_secs: f64,
    /// Peak resident set (VmHWM), KiB.
    pub peak_rss_kb: u64,
    /// Current resident set (VmRSS), KiB.
    pub rss_kb: u64,
}

/// Reads a process's usage; `None` if it is gone or `/proc` is unreadable.
pub fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(Usage {
        cpu_secs: (utime + stime) as f64 / 100.0,
        peak_rss_kb: kb("VmHWM:"),
        rss_kb: kb("VmRSS:"),
    })
}

/// Open file descriptors of a process (entries of `/proc/PID/fd`); `None` if it is
/// gone or `/proc` is unreadable.
pub fn open_fds(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(dir.count() as u64)
}

/// A started child process, stopped (SIGTERM, then SIGKILL after a grace period) when
/// dropped.
#[derive(Debug)]
pub struct Proc {
    /// A name for reports and logs.
    pub name: String,
    child: Option<Child>,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    /// Usage read just before it was stopped.
    pub last: Usage,
}

impl Proc {
    /// Starts `program args...`, output to `log_dir/name.log`.
    ///
    /// # Errors
    /// The log file or the process could not be created.
    pub fn start(name: &str, program: &Path, args: &[String], log_dir: &Path) -> io::Result<Proc> {
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("starting {}: {e}", program.display()))
            })?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            log,
            last: Usage::default(),
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its usage now (or the last one read).
    pub fn usage(&mut self) -> Usage {
        if let Some(u) = usage(self.pid()) {
            self.last = u;
        }
        self.last
    }

    /// Fails if it has exited, with the tail of its log.
    ///
    /// # Errors
    /// The process is gone.
    pub fn check_alive(&mut self) -> io::Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                return Err(io::Error::other(format!(
                    "{} exited ({st}); log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log)
                )));
            }
        }
        Ok(())
    }

    /// Panics with the tail of its log if it has exited: for tests.
    ///
    /// # Panics
    /// The process is gone.
    pub fn assert_alive(&mut self) {
        if let Err(e) = self.check_alive() {
            panic!("{e}");
        }
    }

    /// The last lines of its log.
    pub fn tail(&self) -> String {
        tail(&self.log)
    }

    /// `kill -9` and reap (a zombie would still look alive in `/proc`).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(u) = usage(c.id()) {
                self.last = u;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Some(u) = usage(c.id()) {
            self.last = u;
        }
        if matches!(c.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        log::warn!("{} ignored SIGTERM for {grace:?}: killing it", self.name);
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// The last lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Waits until `addr` accepts connections.
///
/// # Errors
/// Not within `deadline`, or `proc` died meanwhile.
pub fn wait_port(addr: SocketAddr, deadline: Duration, proc: &mut Proc) -> io::Result<()> {
    let end = Instant::now() + deadline;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        proc.check_alive()?;
        if Instant::now() > end {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} not listening on {addr} after {deadline:?}", proc.name),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `GET path` over HTTP/1.1; returns the status code.
pub fn http_get_status(addr: SocketAddr, path: &str) -> io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let n = s.read(&mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let line = std::str::from_utf8(&buf[..got]).unwrap_or("");
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP answer"))
}

/// Waits until `GET /healthz` on `admin` answers 200.
///
/// # Errors
/// Not within `deadline`, or `proc` died meanwhile.
pub fn wait_healthy(admin: SocketAddr, deadline: Duration, proc: &mut Proc) -> io::Result<()> {
    let end = Instant::now() + deadline;
    loop {
        if let Ok(200) = http_get_status(admin, "/healthz") {
            return Ok(());
        }
        proc.check_alive()?;
        if Instant::now() > end {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} not healthy on {admin} after {deadline:?}; log:\n{}",
                    proc.name,
                    tail(&proc.log)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Children of this process still alive (zombies excluded): what a test checks to be
/// sure everything it started was stopped.
pub fn live_children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.get(1) == Some(&me.as_str()) && fields.first() != Some(&"Z") {
            found.push(stat[..close + 1].to_owned());
        }
    }
    found
}
