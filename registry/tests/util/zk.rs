//! ZooKeeper helpers: a real server ([`test_support::zk::ZooKeeper`]) and a direct
//! `zookeeper-client` session to look at (and tamper with) what the registry wrote.

use std::future::Future;
use std::time::Duration;

use zookeeper_client as zk;

/// A real ZooKeeper, started (and serving) or the test fails, saying why (a missing
/// installation names `.ci/setup`). It derefs to the server for `kill`, `restart`,
/// `leader`, `connect_string` ...
pub struct Zk(pub test_support::zk::ZooKeeper);

impl std::ops::Deref for Zk {
    type Target = test_support::zk::ZooKeeper;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Zk {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Zk {
    pub fn start() -> Zk {
        Zk(test_support::zk::ZooKeeper::start().unwrap_or_else(|e| panic!("{e}")))
    }

    pub fn ensemble(n: usize) -> Zk {
        Zk(test_support::zk::ZooKeeper::ensemble(n).unwrap_or_else(|e| panic!("{e}")))
    }

    /// The registry URL with `query` (e.g. `?session_timeout_ms=2000`).
    pub fn url_with(&self, query: &str) -> String {
        format!("{}{query}", self.url())
    }
}

/// Runs zookeeper-client's session tasks on a tokio runtime (as the registry's
/// zookeeper.rs does: the client spawns through `spawns`).
struct Spawner(tokio::runtime::Handle);

impl spawns_core::Spawn for Spawner {
    fn spawn(&self, task: spawns_core::Task) {
        drop(self.0.spawn(Box::into_pin(task.future)));
    }
}

/// A direct ZooKeeper session (on its own runtime, whose worker thread keeps the session
/// alive between calls). Every call is bounded by 10 s.
pub struct Direct {
    rt: tokio::runtime::Runtime,
    pub client: zk::Client,
}

const CALL_LIMIT: Duration = Duration::from_secs(10);

impl Direct {
    pub fn connect(connect_string: &str) -> Direct {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let spawner = Spawner(rt.handle().clone());
        let client = {
            let _scope = spawns_core::enter(&spawner);
            rt.block_on(async {
                tokio::time::timeout(
                    CALL_LIMIT,
                    zk::Client::connector()
                        .with_session_timeout(Duration::from_secs(10))
                        .connect(connect_string),
                )
                .await
                .expect("direct connect timed out")
                .expect("direct connect")
            })
        };
        Direct { rt, client }
    }

    pub fn run<T, F: Future<Output = T>>(&self, f: F) -> T {
        self.rt.block_on(async {
            tokio::time::timeout(CALL_LIMIT, f)
                .await
                .expect("direct ZooKeeper call timed out")
        })
    }

    /// The children of `path`, sorted (none if it does not exist).
    pub fn children(&self, path: &str) -> Vec<String> {
        let mut v = match self.run(self.client.list_children(path)) {
            Ok(v) => v,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => panic!("listing {path}: {e}"),
        };
        v.sort();
        v
    }

    pub fn stat(&self, path: &str) -> Option<zk::Stat> {
        self.run(self.client.check_stat(path))
            .unwrap_or_else(|e| panic!("stat {path}: {e}"))
    }

    /// Creates `path` with `data` (ephemeral in this session, or persistent), and its
    /// missing parents (persistent).
    pub fn create(&self, path: &str, data: &[u8], ephemeral: bool) {
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        let mut end = 0;
        while let Some(i) = path[end + 1..].find('/') {
            end += 1 + i;
            match self.run(self.client.create(&path[..end], &[], &persistent)) {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => panic!("creating {}: {e}", &path[..end]),
            }
        }
        let mode = if ephemeral {
            zk::CreateMode::Ephemeral
        } else {
            zk::CreateMode::Persistent
        };
        self.run(
            self.client
                .create(path, data, &mode.with_acls(zk::Acls::anyone_all())),
        )
        .unwrap_or_else(|e| panic!("creating {path}: {e}"));
    }

    pub fn delete(&self, path: &str) {
        self.run(self.client.delete(path, None))
            .unwrap_or_else(|e| panic!("deleting {path}: {e}"));
    }
}

/// `java.net.URLEncoder.encode(s, "UTF-8")`, written again here so that the tests do not
/// trust the registry's own encoder.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'*' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `java.net.URLDecoder.decode(s, "UTF-8")` for well-formed input.
pub fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("hex"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("utf-8")
}

/// The `name=value` parameter of a decoded URL.
pub fn param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    url.split_once('?')?
        .1
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}
