//! The pieces every multi-process run shares: the scenario runner and the fault,
//! bad-input, flood and limit tests all start the same agents the same way, wait on the
//! same conditions, read the same admin metrics and check answers with the same reader.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::load;
use crate::procs::Proc;
use crate::provider::SERVICE;
use test_support::net::free_addr;

/// Where the agent binaries and `bench` are.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `bench` (re-executed as `bench provider`).
    pub bench: PathBuf,
    /// `consumer-agent`.
    pub consumer: PathBuf,
    /// `provider-agent`.
    pub provider: PathBuf,
}

impl Bins {
    /// The binaries in `bin_dir`, or next to this executable (a test binary lives in
    /// `target/<profile>/deps`: then one level up); the agents are built with cargo
    /// when missing. `bench` is this executable when it is `bench`, else `bench_exe`,
    /// else `bench` in that directory.
    ///
    /// # Errors
    /// A binary is missing and could not be built.
    pub fn find(bin_dir: Option<&Path>, bench_exe: Option<&Path>) -> io::Result<Bins> {
        let exe = std::env::current_exe()?;
        let exe_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = match bin_dir {
            Some(d) => d.to_path_buf(),
            None if exe_dir.ends_with("deps") => {
                exe_dir.parent().map(Path::to_path_buf).unwrap_or_default()
            }
            None => exe_dir,
        };
        let bench = match bench_exe {
            Some(b) => b.to_path_buf(),
            None if exe.file_stem().is_some_and(|s| s == "bench") => exe.clone(),
            None => dir.join("bench"),
        };
        let consumer = dir.join("consumer-agent");
        let provider = dir.join("provider-agent");
        if !consumer.exists() || !provider.exists() {
            build_agents(&dir)?;
        }
        for p in [&bench, &consumer, &provider] {
            if !p.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} not found", p.display()),
                ));
            }
        }
        Ok(Bins {
            bench,
            consumer,
            provider,
        })
    }

    /// For a test of this crate: `bench` from cargo, the agents next to it, built (once
    /// per test process) so that they are never older than the sources: `cargo test -p
    /// bench` alone does not rebuild other packages' binaries.
    ///
    /// # Panics
    /// The agents could not be built.
    pub fn for_test(bench: &str) -> Bins {
        static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        let built = BUILT.get_or_init(|| {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let profile = exe
                .parent()
                .and_then(Path::parent)
                .ok_or("no profile directory")?;
            build_agents(profile).map_err(|e| e.to_string())
        });
        if let Err(e) = built {
            panic!("building the agents: {e}");
        }
        Bins::find(None, Some(Path::new(bench))).expect("the agent binaries")
    }
}

/// `cargo build [--release] -p agent-consumer -p agent-provider` into the target dir
/// that holds `profile_dir`.
fn build_agents(profile_dir: &Path) -> io::Result<()> {
    let release = profile_dir.ends_with("release");
    let target = profile_dir.parent().unwrap_or(profile_dir);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    eprintln!(
        "building the agents ({}) into {}",
        if release { "release" } else { "debug" },
        target.display()
    );
    let mut cmd = std::process::Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    cmd.current_dir(workspace)
        .env("CARGO_TARGET_DIR", target)
        .args(["build", "-p", "agent-consumer", "-p", "agent-provider"]);
    if release {
        cmd.arg("--release");
    }
    let st = cmd.status()?;
    if st.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "building the agents failed: {st}"
        )))
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// `bench provider` arguments: the mock provider on `listen`.
pub fn provider_args(listen: SocketAddr, latency_ms: u64, threads: usize) -> Vec<String> {
    strings(&[
        "provider",
        "--listen",
        &listen.to_string(),
        "--latency-ms",
        &latency_ms.to_string(),
        "--threads",
        &threads.to_string(),
    ])
}

/// `provider-agent` arguments: on `listen` (also advertised), admin on `admin`, for the
/// race's service at `provider`, registered in `registry`. Callers append more flags.
pub fn provider_agent_args(
    listen: SocketAddr,
    admin: SocketAddr,
    provider: SocketAddr,
    registry: &str,
) -> Vec<String> {
    strings(&[
        "--listen",
        &listen.to_string(),
        "--advertise",
        &listen.to_string(),
        "--admin",
        &admin.to_string(),
        "--provider",
        &provider.to_string(),
        "--service",
        SERVICE,
        "--registry",
        registry,
    ])
}

/// `consumer-agent` arguments: HTTP on `listen`, admin on `admin`, the race's service
/// from `registry`. Callers append more flags.
pub fn consumer_agent_args(listen: SocketAddr, admin: SocketAddr, registry: &str) -> Vec<String> {
    strings(&[
        "--listen",
        &listen.to_string(),
        "--admin",
        &admin.to_string(),
        "--registry",
        registry,
        "--service",
        SERVICE,
    ])
}

/// A listening address and an admin address, both free.
#[derive(Debug, Clone, Copy)]
pub struct AgentAddrs {
    /// The agent's port (HTTP or agent protocol).
    pub listen: SocketAddr,
    /// Its admin port (`/healthz`, `/metrics`).
    pub admin: SocketAddr,
}

impl AgentAddrs {
    /// Two free loopback ports.
    ///
    /// # Errors
    /// No port could be bound.
    pub fn free() -> io::Result<AgentAddrs> {
        Ok(AgentAddrs {
            listen: free_addr()?,
            admin: free_addr()?,
        })
    }
}

/// The sum of a metric's samples (all label sets; `name` may include a label set) on
/// an admin port; `None` if unreachable or absent.
pub fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            sum = Some(sum.unwrap_or(0.0) + v);
        }
    }
    sum
}

/// [`metric`], 0 when unreachable or absent.
pub fn metric_or_zero(admin: SocketAddr, name: &str) -> f64 {
    metric(admin, name).unwrap_or(0.0)
}

/// The Content-Length of parsed headers (0 when absent or unreadable).
pub fn content_length(headers: &[httparse::Header<'_>]) -> usize {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
}

/// Reads one HTTP answer with a Content-Length body: (status, body).
///
/// # Errors
/// The connection failed or closed first.
pub fn read_answer(s: &mut TcpStream) -> io::Result<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
            let len = content_length(resp.headers);
            if let Some(body) = buf.get(head..head + len) {
                return Ok((resp.code.unwrap_or(0), body.to_vec()));
            }
        }
    }
}

/// Whether an answer is 200 with `expected` (the hash) as its body.
pub fn is_right(code: u16, body: &[u8], expected: i32) -> bool {
    code == 200
        && std::str::from_utf8(body)
            .ok()
            .and_then(|b| b.trim().parse::<i32>().ok())
            == Some(expected)
}

/// One race call on `s`: whether it came back 200 with the right hash.
///
/// # Errors
/// The connection failed or closed before the answer.
pub fn call_on(s: &mut TcpStream, addr: SocketAddr, param: &str) -> io::Result<bool> {
    let (req, expected) = load::race_request(&addr.to_string(), param, None);
    s.write_all(&req)?;
    let (code, body) = read_answer(s)?;
    Ok(is_right(code, &body, expected))
}

/// One race call on a fresh connection: (status, whether a 200 carried the right hash).
///
/// # Errors
/// No connection, or it closed before the answer.
pub fn one_call(addr: SocketAddr, param: &str) -> io::Result<(u16, bool)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (req, expected) = load::race_request(&addr.to_string(), param, None);
    s.write_all(&req)?;
    let (code, body) = read_answer(&mut s)?;
    Ok((code, is_right(code, &body, expected)))
}

/// Waits until a call through the consumer-agent at `addr` comes back right (providers
/// take a moment to show up in the registry), failing early if `proc` dies.
///
/// # Errors
/// Not within `deadline` (with the last failure), or `proc` died.
pub fn wait_routing(addr: SocketAddr, deadline: Duration, proc: &mut Proc) -> io::Result<()> {
    let end = Instant::now() + deadline;
    loop {
        let last = match one_call(addr, "hello") {
            Ok((200, true)) => return Ok(()),
            Ok((code, _)) => format!("status {code} or a wrong answer"),
            Err(e) => e.to_string(),
        };
        proc.check_alive()?;
        if Instant::now() > end {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no right answer through {addr} after {deadline:?}: {last}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PING on an agent-protocol connection; succeeds when the PONG with the same id comes
/// back first.
///
/// # Errors
/// The connection failed, or something else came back.
pub fn agent_ping(s: &mut TcpStream, id: u64) -> io::Result<()> {
    let mut out = Vec::new();
    codec::agent::encode_ping(&mut out, id);
    s.write_all(&out)?;
    let mut got = [0u8; codec::agent::HEADER_LEN];
    s.read_exact(&mut got)?;
    let mut want = Vec::new();
    codec::agent::encode_pong(&mut want, id);
    if got[..] == want[..] {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not the PONG {id}: {got:?}"),
        ))
    }
}

/// Whether etcd at `client` holds `key`, asked over its JSON gateway (`/v3/kv/range`),
/// not through the registry code under test.
///
/// # Errors
/// etcd did not answer, or not with JSON.
pub fn etcd_has_key(client: SocketAddr, key: &str) -> io::Result<bool> {
    let body = format!(
        r#"{{"key":"{}"}}"#,
        codec::hessian2::base64_encode(key.as_bytes())
    );
    let mut s = TcpStream::connect_timeout(&client, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(
        s,
        "POST /v3/kv/range HTTP/1.1\r\nHost: {client}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let (code, answer) = read_answer(&mut s)?;
    let v: serde_json::Value = serde_json::from_slice(&answer)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{code}: {e}")))?;
    Ok(v.get("kvs")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|kvs| !kvs.is_empty()))
}

/// A test CA and one certificate per agent `names` (trust domain `bench.mesh`),
/// issued with `deploy/tls/issue-certs.sh` (openssl) into `dir`.
pub fn issue_certs(dir: &Path, names: &[String]) -> io::Result<()> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/tls/issue-certs.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(dir)
        .arg("bench.mesh")
        .args(names)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// `--tls-cert/--tls-key/--tls-ca` for agent `name` of certificates in `dir`.
pub fn tls_args(dir: &Path, name: &str) -> Vec<String> {
    let path = |f: String| dir.join(f).display().to_string();
    vec![
        "--tls-cert".into(),
        path(format!("{name}.pem")),
        "--tls-key".into(),
        path(format!("{name}-key.pem")),
        "--tls-ca".into(),
        path("ca.pem".into()),
    ]
}
