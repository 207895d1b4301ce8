//! Binary upgrades under checking load (`--upgrade-socket`, `--upgrade-from`), with the
//! real agents as child processes on loopback: the consumer-agent and each
//! provider-agent are replaced five times in a row while 256 keep-alive connections
//! call through them. Every answer is checked (Java `hashCode` of the parameter): no
//! error of any kind (no connect refused, no connection closed under a request, no
//! wrong answer), not one client connection closed (each is handed to the new process
//! between two requests), every old process exits and its descriptors are gone. A new
//! process that cannot start (a bad flag; a port it cannot bind after taking the
//! listeners over) leaves the old one serving as before. Dubbo consumers (the consumer-agent's
//! and a provider-agent's `--dubbo-listen`) keep their very connections through the
//! upgrades: each is handed to the new process between two calls.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bench::harness::{self, AgentAddrs, Bins};
use bench::load::{self, LoadOpts, LoadReport, Params};
use bench::procs::{self, Proc};
use test_support::net::free_addr;

/// The tests share two busy cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A provider-agent or the consumer-agent, with what it takes to start its successor.
struct Agent {
    name: String,
    bin: PathBuf,
    args: Vec<String>,
    socket: PathBuf,
    admin: SocketAddr,
    proc: Proc,
    generation: u32,
}

struct Mesh {
    bins: Bins,
    dir: tempfile::TempDir,
    registry: String,
    _providers: Vec<Proc>,
    agents: Vec<Agent>,
    consumer: Agent,
    http: SocketAddr,
    /// With Dubbo front-ends: the consumer-agent's `--dubbo-listen`, and the first
    /// provider-agent's.
    dubbo: Option<(SocketAddr, SocketAddr)>,
}

impl Mesh {
    /// Two mock providers (5 ms), a provider-agent before each and a consumer-agent,
    /// each agent with its `--upgrade-socket` and `loops` event loops (more than one:
    /// one listening socket per loop, `SO_REUSEPORT`, all handed over).
    fn start(loops: usize) -> Mesh {
        Mesh::start_with(loops, false)
    }

    /// The same, with `--dubbo-listen` on the consumer-agent and the first
    /// provider-agent when `dubbo`.
    fn start_with(loops: usize, dubbo: bool) -> Mesh {
        let loops = loops.to_string();
        let consumer_dubbo = free_addr().expect("port");
        let provider_dubbo = free_addr().expect("port");
        let bins = Bins::for_test(env!("CARGO_BIN_EXE_bench"));
        let dir = tempfile::Builder::new()
            .prefix("dubbo-mesh-upgrade")
            // UPGRADE_KEEP_LOGS=1 keeps the agents' logs for a look after a failure.
            .disable_cleanup(std::env::var_os("UPGRADE_KEEP_LOGS").is_some())
            .tempdir()
            .expect("tempdir");
        let registry = format!("file://{}", dir.path().join("registry").display());
        let mut providers = Vec::new();
        let mut agents = Vec::new();
        for i in 1..=2 {
            let p = free_addr().expect("port");
            let args = harness::provider_args(p, 5, 400);
            let mut proc = Proc::start(&format!("provider-{i}"), &bins.bench, &args, dir.path())
                .expect("provider");
            procs::wait_port(p, Duration::from_secs(20), &mut proc).expect("provider up");
            providers.push(proc);
            let a = AgentAddrs::free().expect("ports");
            let mut args = harness::provider_agent_args(a.listen, a.admin, p, &registry);
            args.extend(["--max-inflight".into(), "400".into()]);
            args.extend(["--loops".into(), loops.clone()]);
            if dubbo && i == 1 {
                args.extend(["--dubbo-listen".into(), provider_dubbo.to_string()]);
            }
            agents.push(Agent::start(
                &format!("provider-agent-{i}"),
                bins.provider.clone(),
                args,
                dir.path().join(format!("provider-agent-{i}.sock")),
                a.admin,
                dir.path(),
            ));
        }
        let (http, admin) = (free_addr().expect("port"), free_addr().expect("port"));
        let mut args = harness::consumer_agent_args(http, admin, &registry);
        args.extend(["--timeout-ms".into(), "5000".into()]);
        args.extend(["--loops".into(), loops.clone()]);
        if dubbo {
            args.extend(["--dubbo-listen".into(), consumer_dubbo.to_string()]);
        }
        let mut consumer = Agent::start(
            "consumer-agent",
            bins.consumer.clone(),
            args,
            dir.path().join("consumer-agent.sock"),
            admin,
            dir.path(),
        );
        harness::wait_routing(http, Duration::from_secs(20), &mut consumer.proc).expect("routing");
        Mesh {
            bins,
            dir,
            registry,
            _providers: providers,
            agents,
            consumer,
            http,
            dubbo: dubbo.then_some((consumer_dubbo, provider_dubbo)),
        }
    }
}

impl Agent {
    fn start(
        name: &str,
        bin: PathBuf,
        args: Vec<String>,
        socket: PathBuf,
        admin: SocketAddr,
        logs: &std::path::Path,
    ) -> Agent {
        let mut full = args.clone();
        full.extend(["--upgrade-socket".into(), socket.display().to_string()]);
        let mut proc = Proc::start(&format!("{name}-0"), &bin, &full, logs).expect("start");
        procs::wait_healthy(admin, Duration::from_secs(20), &mut proc).expect("healthy");
        wait_for(
            &format!("{name}'s upgrade socket"),
            Duration::from_secs(10),
            || socket.exists(),
        );
        Agent {
            name: name.to_owned(),
            bin,
            args,
            socket,
            admin,
            proc,
            generation: 0,
        }
    }

    /// Starts the successor (with `extra` flags), waits for the old process to exit and
    /// for the new one to offer its own upgrade socket.
    fn upgrade(&mut self, logs: &std::path::Path) {
        self.generation += 1;
        let mut args = self.args.clone();
        args.extend([
            "--upgrade-socket".into(),
            self.socket.display().to_string(),
            "--upgrade-from".into(),
            self.socket.display().to_string(),
        ]);
        let name = format!("{}-{}", self.name, self.generation);
        let mut new = Proc::start(&name, &self.bin, &args, logs).expect("start the successor");
        let old_pid = self.proc.pid();
        let end = Instant::now() + Duration::from_secs(20);
        while self.proc.check_alive().is_ok() {
            if let Err(e) = new.check_alive() {
                panic!("the successor {name} died: {e}");
            }
            assert!(
                Instant::now() < end,
                "{} (pid {old_pid}) did not exit after the handover; its log:\n{}",
                self.name,
                self.proc.tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Reaped: nothing of it is left, its descriptors included.
        assert!(
            procs::open_fds(old_pid).is_none(),
            "pid {old_pid} still has descriptors"
        );
        new.assert_alive();
        wait_for(
            &format!("{name}'s upgrade socket"),
            Duration::from_secs(10),
            || self.socket.exists(),
        );
        self.proc = new;
    }

    /// Starts a successor that must fail (with `extra` flags, its `--admin` moved to
    /// `admin` if given); the old process must go on.
    fn failed_upgrade(
        &mut self,
        extra: &[&str],
        admin: Option<&str>,
        logs: &std::path::Path,
        what: &str,
    ) {
        let mut args = self.args.clone();
        if let Some(admin) = admin {
            let i = args.iter().position(|a| a == "--admin").expect("--admin") + 1;
            args[i] = admin.to_owned();
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.extend([
            "--upgrade-socket".into(),
            self.socket.display().to_string(),
            "--upgrade-from".into(),
            self.socket.display().to_string(),
        ]);
        let name = format!("{}-failing-{what}", self.name);
        let mut bad = Proc::start(&name, &self.bin, &args, logs).expect("start");
        wait_for(&format!("{name} to fail"), Duration::from_secs(20), || {
            bad.check_alive().is_err()
        });
        self.proc.assert_alive();
        assert!(
            self.socket.exists(),
            "the old process still offers its sockets"
        );
        procs::wait_healthy(self.admin, Duration::from_secs(5), &mut self.proc)
            .expect("the old process still healthy");
    }
}

#[track_caller]
fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_load(target: SocketAddr, connections: usize, secs: u64) -> JoinHandle<LoadReport> {
    start_load_of(bench::load::Protocol::Http, target, connections, secs)
}

fn start_load_of(
    protocol: bench::load::Protocol,
    target: SocketAddr,
    connections: usize,
    secs: u64,
) -> JoinHandle<LoadReport> {
    let opts = LoadOpts {
        target,
        connections,
        loops: 2,
        warmup: Duration::from_millis(500),
        duration: Duration::from_secs(secs),
        params: Params::Ascii,
        salt: None,
        timeout: Duration::from_secs(8),
        progress: false,
        protocol,
        stagger: Duration::ZERO,
    };
    std::thread::spawn(move || load::run(&opts).expect("load run"))
}

/// Waits for the load run and checks it: answers, all right, and no error at all.
fn check(load: JoinHandle<LoadReport>, what: &str) -> LoadReport {
    let report = load.join().expect("load thread");
    eprintln!("{what}: {}", report.summary());
    assert!(
        report.stats.ok > 1000,
        "{what}: too few answers: {}",
        report.summary()
    );
    assert_eq!(
        report.stats.error_count(),
        0,
        "{what}: errors during the upgrades: {:?}",
        report.stats.errors
    );
    // Every keep-alive connection was handed to the new process, none closed.
    assert_eq!(
        report.stats.closed_by_server, 0,
        "{what}: client connections were closed, not handed over"
    );
    report
}

#[test]
fn five_upgrades_of_each_agent_under_load_fail_no_call() {
    let _serial = serial();
    let mut mesh = Mesh::start(1);
    let logs = mesh.dir.path().to_path_buf();
    let load = start_load(mesh.http, 256, 20);
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    // UPGRADE_ONLY=consumer (or provider) narrows a failure down.
    let only = std::env::var("UPGRADE_ONLY").unwrap_or_default();
    for round in 0..5 {
        if only != "provider" {
            mesh.consumer.upgrade(&logs);
        }
        if only != "consumer" {
            for a in &mut mesh.agents {
                a.upgrade(&logs);
            }
        }
        eprintln!("round {round} done at {:?}", started.elapsed());
    }
    assert!(
        started.elapsed() < Duration::from_secs(16),
        "the upgrades took {:?}: longer than the load run",
        started.elapsed()
    );
    check(load, "15 upgrades");
    // Still routing after it all, through the last generation of every agent.
    let (code, right) = harness::one_call(mesh.http, "after").expect("a call");
    assert!(code == 200 && right, "status {code}");
    let _ = (&mesh.bins, &mesh.registry);
}

/// Dubbo consumers through the consumer-agent's and a provider-agent's Dubbo
/// front-ends while each is upgraded three times: no error, and not one of their
/// connections closed (a READONLY event would count as a bad answer, too).
#[test]
fn dubbo_consumers_keep_their_connections_through_upgrades() {
    let _serial = serial();
    let mut mesh = Mesh::start_with(1, true);
    let logs = mesh.dir.path().to_path_buf();
    let (consumer_dubbo, provider_dubbo) = mesh.dubbo.expect("Dubbo front-ends");
    let protocol = bench::load::Protocol::Dubbo;
    let through_mesh = start_load_of(protocol, consumer_dubbo, 128, 14);
    let direct = start_load_of(protocol, provider_dubbo, 64, 14);
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    for round in 0..3 {
        mesh.consumer.upgrade(&logs);
        mesh.agents[0].upgrade(&logs);
        eprintln!("round {round} done at {:?}", started.elapsed());
    }
    assert!(
        started.elapsed() < Duration::from_secs(11),
        "the upgrades took {:?}: longer than the load run",
        started.elapsed()
    );
    for (load, what) in [
        (through_mesh, "through the consumer-agent"),
        (direct, "to the provider-agent"),
    ] {
        check(load, what);
    }
}

#[test]
fn a_successor_that_cannot_start_leaves_traffic_alone() {
    let _serial = serial();
    let mut mesh = Mesh::start(2);
    let logs = mesh.dir.path().to_path_buf();
    eprintln!("logs in {}", logs.display());
    let load = start_load(mesh.http, 256, 10);
    std::thread::sleep(Duration::from_secs(1));
    // A flag it does not know: it exits before it asks for anything.
    mesh.consumer
        .failed_upgrade(&["--no-such-flag"], None, &logs, "bad-flag");
    // It takes the listeners, then cannot bind its admin port (taken): it exits before
    // saying ready.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    mesh.consumer
        .failed_upgrade(&[], Some(&taken_addr), &logs, "admin-taken");
    let agent = &mut mesh.agents[0];
    agent.failed_upgrade(&["--no-such-flag"], None, &logs, "bad-flag");
    agent.failed_upgrade(&[], Some(&taken_addr), &logs, "admin-taken");
    // And a good one still goes through afterwards.
    mesh.agents[1].upgrade(&logs);
    mesh.consumer.upgrade(&logs);
    check(load, "failed upgrades");
    drop(taken);
}

/// The pid of the live process whose command line holds `needle` (from `/proc`).
fn pid_with_arg(needle: &str, not: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (pid != not && text.contains(needle)).then_some(pid)
    })
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}

#[test]
fn sigusr2_starts_the_new_binary_which_takes_over() {
    let _serial = serial();
    let mut mesh = Mesh::start(2);
    let load = start_load(mesh.http, 256, 8);
    std::thread::sleep(Duration::from_secs(1));
    // What `systemctl reload` does (ExecReload=/bin/kill -USR2 $MAINPID).
    let old = mesh.consumer.proc.pid();
    let needle = format!("--upgrade-from {}", mesh.consumer.socket.display());
    signal(old, "-USR2");
    wait_for(
        "the old consumer-agent to exit",
        Duration::from_secs(20),
        || mesh.consumer.proc.check_alive().is_err(),
    );
    let new = pid_with_arg(&needle, old).expect("the new consumer-agent runs");
    // It serves (its admin port taken over too) and offers its own upgrade socket.
    wait_for("the new upgrade socket", Duration::from_secs(10), || {
        mesh.consumer.socket.exists()
    });
    assert_eq!(
        procs::http_get_status(mesh.consumer.admin, "/healthz").ok(),
        Some(200)
    );
    check(load, "SIGUSR2 upgrade");
    // Not our child (the old one started it): stopped here.
    signal(new, "-TERM");
    wait_for(
        "the new consumer-agent to stop",
        Duration::from_secs(10),
        || procs::open_fds(new).is_none(),
    );
}

/// wrk (Debian's, which `.ci/setup` installs), someone else's HTTP client, sending the
/// race's request over 64 keep-alive connections while the consumer-agent and a
/// provider-agent are each upgraded: no socket error (connect, read, write, timeout)
/// and no answer other than 200.
#[test]
fn wrk_sees_no_error_through_upgrades() {
    let _serial = serial();
    let mut mesh = Mesh::start(1);
    let logs = mesh.dir.path().to_path_buf();
    let (request, _) = load::race_request(&mesh.http.to_string(), "wrk", None);
    let request = String::from_utf8(request).expect("ASCII");
    let body = request.split("\r\n\r\n").nth(1).expect("a body");
    let script = logs.join("race.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"{body}\"\n\
             wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n"
        ),
    )
    .expect("write the wrk script");
    let url = format!("http://{}/invoke", mesh.http);
    let args = ["-t1", "-c64", "-d8s", "--timeout", "5s", "-s"];
    let wrk = std::process::Command::new("wrk")
        .args(args)
        .arg(&script)
        .arg(&url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wrk (apt-get install wrk; .ci/setup installs it)");
    std::thread::sleep(Duration::from_secs(2));
    mesh.consumer.upgrade(&logs);
    mesh.agents[0].upgrade(&logs);
    let out = wrk.wait_with_output().expect("wrk ran");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(out.status.success(), "wrk failed: {text}");
    assert!(!text.contains("Socket errors"), "socket errors:\n{text}");
    assert!(!text.contains("Non-2xx"), "answers other than 200:\n{text}");
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(requests > 1000, "wrk made {requests} requests:\n{text}");
}
