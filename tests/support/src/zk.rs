//! A real ZooKeeper for tests: one standalone server or an ensemble, on free loopback
//! ports, in a temporary directory, killed when dropped.
//!
//! It runs the installed ZooKeeper's server class (`QuorumPeerMain`) with `java`, from a
//! generated `zoo.cfg`: `tickTime=500` (sessions may be as short as 1 s:
//! `minSessionTimeout=1000`), client port on 127.0.0.1, four-letter words allowed, no
//! admin server, no fsync. The classpath is Debian's ZooKeeper (`zookeeperd` /
//! `libzookeeper-java`: `/usr/share/java/zookeeper.jar`, whose manifest names its
//! dependencies) plus any jars in `/usr/share/zookeeper` and `/usr/share/zookeeper/lib`;
//! or, when `$ZOOKEEPER_HOME` is set, only the jars there and in its `lib/` (an Apache
//! tarball); `slf4j-simple` is added, when
//! installed, so that the server logs (to `zk<N>.log` in its directory).
//!
//! When there is no `java` or no ZooKeeper, starting fails with an error that says so and
//! names `.ci/setup`: a test needing ZooKeeper fails rather than passing without having run.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net::free_port;
use crate::wait::wait_until;

/// How long starting (or restarting) a server waits for it to serve.
pub const SERVING_WITHIN: Duration = Duration::from_secs(30);

/// The server's `tickTime` in ms: session timeouts are bounded by `minSessionTimeout`
/// (1000 ms here) and `maxSessionTimeout` (60 000 ms here).
pub const TICK_MS: u64 = 500;

const MISSING: &str = "install it with `bash .ci/setup` (Debian: apt-get install zookeeperd \
     default-jre-headless), or point $ZOOKEEPER_HOME at an Apache ZooKeeper; what needs \
     ZooKeeper cannot run without a real one";

/// One server of a [`ZooKeeper`].
#[derive(Debug)]
struct Server {
    /// `myid`, from 1.
    id: usize,
    client: SocketAddr,
    quorum: u16,
    election: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A running ZooKeeper (standalone or an ensemble), killed when dropped.
#[derive(Debug)]
pub struct ZooKeeper {
    java: PathBuf,
    classpath: String,
    servers: Vec<Server>,
    dir: tempfile::TempDir,
}

impl ZooKeeper {
    /// The `java` to run: `$JAVA_HOME/bin/java`, else `/usr/bin/java`, else `java` on PATH.
    ///
    /// # Errors
    /// None is a file (`NotFound`, naming `.ci/setup`).
    pub fn java() -> io::Result<PathBuf> {
        let home = std::env::var_os("JAVA_HOME").map(|h| PathBuf::from(h).join("bin/java"));
        let on_path: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join("java")).collect())
            .unwrap_or_default();
        home.into_iter()
            .chain(std::iter::once(PathBuf::from("/usr/bin/java")))
            .chain(on_path)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no java found for ZooKeeper (not at $JAVA_HOME/bin/java, /usr/bin/java nor on PATH): {MISSING}"),
                )
            })
    }

    /// The server's classpath (see the module docs).
    ///
    /// # Errors
    /// No ZooKeeper jar found (`NotFound`, naming `.ci/setup`).
    pub fn classpath() -> io::Result<String> {
        let mut jars: Vec<PathBuf> = Vec::new();
        let add_dir = |dir: &Path, jars: &mut Vec<PathBuf>| {
            if let Ok(rd) = std::fs::read_dir(dir) {
                let mut found: Vec<PathBuf> = rd
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "jar"))
                    .collect();
                found.sort();
                jars.extend(found);
            }
        };
        let home = std::env::var_os("ZOOKEEPER_HOME").map(PathBuf::from);
        if let Some(home) = &home {
            add_dir(home, &mut jars);
            add_dir(&home.join("lib"), &mut jars);
        } else {
            add_dir(Path::new("/usr/share/zookeeper"), &mut jars);
            add_dir(Path::new("/usr/share/zookeeper/lib"), &mut jars);
            for jar in ["zookeeper.jar", "zookeeper-jute.jar"] {
                let p = Path::new("/usr/share/java").join(jar);
                if p.is_file() {
                    jars.push(p);
                }
            }
        }
        let has_server = jars.iter().any(|j| {
            j.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("zookeeper") && !n.contains("jute"))
        });
        if !has_server {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                match &home {
                    Some(h) => format!(
                        "ZooKeeper not found: no zookeeper jar in ZOOKEEPER_HOME={} nor its \
                         lib/ (unset it to use Debian's); {MISSING}",
                        h.display()
                    ),
                    None => format!(
                        "ZooKeeper not found (no /usr/share/java/zookeeper.jar, no jars in \
                         /usr/share/zookeeper): {MISSING}"
                    ),
                },
            ));
        }
        // A logging backend, if none came with the jars (Debian's come without).
        let logs = jars.iter().any(|j| {
            j.to_str().is_some_and(|s| {
                s.contains("logback-classic")
                    || s.contains("slf4j-log4j")
                    || s.contains("slf4j-simple")
            })
        });
        let simple = Path::new("/usr/share/java/slf4j-simple.jar");
        if !logs && simple.is_file() {
            jars.push(simple.to_path_buf());
        }
        let cp: Vec<String> = jars.iter().map(|j| j.display().to_string()).collect();
        Ok(cp.join(":"))
    }

    /// Starts a standalone server and waits until it serves.
    ///
    /// # Errors
    /// No java or ZooKeeper, no free port, or the server did not serve within
    /// [`SERVING_WITHIN`] (the error carries the end of its log).
    pub fn start() -> io::Result<ZooKeeper> {
        ZooKeeper::new(1)
    }

    /// Starts an ensemble of `n` servers (`n` ≥ 2; 3 or 5 for a quorum that survives a
    /// loss) and waits until each serves (as leader or follower).
    ///
    /// # Errors
    /// As [`ZooKeeper::start`].
    pub fn ensemble(n: usize) -> io::Result<ZooKeeper> {
        if n < 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an ensemble has at least 2 servers; ZooKeeper::start() is the standalone one",
            ));
        }
        ZooKeeper::new(n)
    }

    fn new(n: usize) -> io::Result<ZooKeeper> {
        let java = ZooKeeper::java()?;
        let classpath = ZooKeeper::classpath()?;
        let dir = tempfile::Builder::new().prefix("zk-test-").tempdir()?;
        let mut servers = Vec::with_capacity(n);
        for id in 1..=n {
            let sdir = dir.path().join(format!("zk{id}"));
            std::fs::create_dir_all(sdir.join("data"))?;
            std::fs::write(sdir.join("data/myid"), format!("{id}\n"))?;
            servers.push(Server {
                id,
                client: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                quorum: free_port()?,
                election: free_port()?,
                dir: sdir,
                child: None,
            });
        }
        let mut zk = ZooKeeper {
            java,
            classpath,
            servers,
            dir,
        };
        for i in 0..n {
            zk.write_config(i)?;
        }
        // Start them all, then wait: an ensemble member serves only with a quorum.
        for i in 0..n {
            zk.spawn(i)?;
        }
        for i in 0..n {
            zk.wait_serving(i, SERVING_WITHIN)?;
        }
        Ok(zk)
    }

    fn write_config(&self, i: usize) -> io::Result<()> {
        let s = &self.servers[i];
        let mut cfg = format!(
            "tickTime={TICK_MS}\n\
             initLimit=20\n\
             syncLimit=10\n\
             dataDir={}\n\
             clientPort={}\n\
             clientPortAddress=127.0.0.1\n\
             minSessionTimeout=1000\n\
             maxSessionTimeout=60000\n\
             4lw.commands.whitelist=*\n\
             admin.enableServer=false\n\
             forceSync=no\n\
             preAllocSize=1024\n\
             maxClientCnxns=0\n",
            s.dir.join("data").display(),
            s.client.port()
        );
        if self.servers.len() > 1 {
            for o in &self.servers {
                cfg.push_str(&format!(
                    "server.{}=127.0.0.1:{}:{}\n",
                    o.id, o.quorum, o.election
                ));
            }
        }
        std::fs::write(s.dir.join("zoo.cfg"), cfg)
    }

    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let s = &self.servers[i];
        let log_path = s.dir.join(format!("zk{}.log", s.id));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = Command::new(&self.java)
            .args(["-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .arg(format!("-Dzookeeper.log.dir={}", s.dir.display()))
            .arg("-Dzookeeper.jmx.log4j.disable=true")
            .arg("-Dorg.slf4j.simpleLogger.showDateTime=true")
            .arg("-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS")
            .arg("-cp")
            .arg(&self.classpath)
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(s.dir.join("zoo.cfg"))
            .current_dir(&s.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("starting ZooKeeper with {}: {e}", self.java.display()),
                )
            })?;
        self.servers[i].child = Some(child);
        Ok(())
    }

    /// How many servers it has.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether it has no server (never: there is at least one).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Client address of server `i` (from 0).
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.servers[i].client
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,...`, ZooKeeper's connect string.
    pub fn connect_string(&self) -> String {
        let v: Vec<String> = self.servers.iter().map(|s| s.client.to_string()).collect();
        v.join(",")
    }

    /// The registry URL: `zookeeper://127.0.0.1:p1,.../dubbo`.
    pub fn url(&self) -> String {
        format!("zookeeper://{}/dubbo", self.connect_string())
    }

    /// Its temporary directory (one `zk<N>` directory per server, with `data`, `zoo.cfg`
    /// and `zk<N>.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last 3,000 bytes or so of server `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        let s = &self.servers[i];
        let text =
            std::fs::read_to_string(s.dir.join(format!("zk{}.log", s.id))).unwrap_or_default();
        let mut start = text.len().saturating_sub(3000);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_owned()
    }

    /// Sends the four-letter word `cmd` (`ruok`, `srvr`, `stat`, `mntr`, `cons`, ...) to
    /// server `i` and returns its answer.
    ///
    /// # Errors
    /// It could not be reached or did not answer within a second.
    pub fn four_letter(&self, i: usize, cmd: &str) -> io::Result<String> {
        let mut s =
            TcpStream::connect_timeout(&self.servers[i].client, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.set_write_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(cmd.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// Server `i`'s mode (`standalone`, `leader` or `follower`) if it serves now.
    pub fn mode(&self, i: usize) -> Option<String> {
        let srvr = self.four_letter(i, "srvr").ok()?;
        srvr.lines()
            .find_map(|l| l.strip_prefix("Mode: "))
            .map(|m| m.trim().to_owned())
    }

    /// Whether server `i` is serving: `ruok` answers `imok` and `srvr` a mode.
    pub fn is_serving(&self, i: usize) -> bool {
        self.four_letter(i, "ruok").is_ok_and(|r| r == "imok") && self.mode(i).is_some()
    }

    /// The server that leads the ensemble now (the standalone one for a single server).
    pub fn leader(&self) -> Option<usize> {
        (0..self.servers.len()).find(|&i| {
            self.servers[i].child.is_some()
                && self
                    .mode(i)
                    .is_some_and(|m| m == "leader" || m == "standalone")
        })
    }

    /// Waits until server `i` serves.
    ///
    /// # Errors
    /// It exited, or did not serve within `limit`; the error carries the end of its log.
    pub fn wait_serving(&mut self, i: usize, limit: Duration) -> io::Result<()> {
        let mut exited = None;
        let served = wait_until(limit, || {
            if let Some(Ok(Some(status))) = self.servers[i].child.as_mut().map(Child::try_wait) {
                exited = Some(status);
                return true;
            }
            self.is_serving(i)
        });
        let why = match exited {
            Some(status) => format!("exited ({status})"),
            None if served => return Ok(()),
            None => format!("not serving within {limit:?}"),
        };
        Err(io::Error::other(format!(
            "ZooKeeper server {} on {} {why}; log {}:\n{}",
            self.servers[i].id,
            self.servers[i].client,
            self.servers[i]
                .dir
                .join(format!("zk{}.log", self.servers[i].id))
                .display(),
            self.log_tail(i)
        )))
    }

    /// Kills server `i` (SIGKILL) and reaps it; its data stays.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether server `i` runs (was not killed).
    pub fn is_running(&self, i: usize) -> bool {
        self.servers[i].child.is_some()
    }

    /// Kills server `i` if it runs, starts it again on the same ports and data, and waits
    /// until it serves (in an ensemble: until it has rejoined a quorum).
    ///
    /// # Errors
    /// As [`ZooKeeper::start`].
    pub fn restart(&mut self, i: usize) -> io::Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_serving(i, SERVING_WITHIN)
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}
