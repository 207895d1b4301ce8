//! The deployment files in `deploy/`: they parse, have the expected shape, and name only
//! flags the binaries have and ports they declare; and a multi-host mesh built from
//! network namespaces (three "hosts" on a bridge, a real etcd) serves the race's call.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bench::harness::Bins;
use serde_yaml::Value;

const RACE_SERVICE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";

// ---------------------------------------------------------------------------------------
// Files and YAML.

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every document of a YAML file (documents split at `---` lines), with merge keys
/// (`<<: *anchor`) applied.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut parts = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            parts.push(String::new());
        } else {
            let last = parts.last_mut().unwrap();
            last.push_str(line);
            last.push('\n');
        }
    }
    let mut docs = Vec::new();
    for part in parts {
        let mut v: Value = serde_yaml::from_str(&part)
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
        // One pass per level of merges within merges (an anchor that merges another).
        for _ in 0..4 {
            v.apply_merge()
                .unwrap_or_else(|e| panic!("{}: merge keys: {e}", path.display()));
        }
        if !v.is_null() {
            docs.push(v);
        }
    }
    docs
}

fn k8s_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(deploy().join("k8s"))
        .expect("deploy/k8s exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/k8s");
    files
}

/// Every k8s object (not the kustomization), with the file it came from.
fn k8s_objects() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for f in k8s_files() {
        for d in yaml_docs(&f) {
            if d["kind"].as_str() != Some("Kustomization") {
                out.push((f.clone(), d));
            }
        }
    }
    out
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], |s| s.as_slice())
}

/// A command given as a YAML list or a string, as a list of strings.
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Sequence(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => panic!("command item {other:?} is not a string"),
            })
            .collect(),
        Value::Null => Vec::new(),
        other => panic!("command {other:?} is neither a list nor a string"),
    }
}

/// The value of `--flag` in an argument list (`--flag=v` or `--flag v`).
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let words: Vec<&str> = args.iter().flat_map(|a| a.split_whitespace()).collect();
    let eq = format!("{flag}=");
    for (i, w) in words.iter().enumerate() {
        if let Some(v) = w.strip_prefix(&eq) {
            return Some(v.to_owned());
        }
        if *w == flag {
            return words.get(i + 1).map(|v| (*v).to_owned());
        }
    }
    None
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

// ---------------------------------------------------------------------------------------
// Flags: which binary each `--flag` in the files is given to.

/// The binaries (bench as `bench <subcommand>`) whose flags the files use.
const BINARIES: [&str; 2] = ["consumer-agent", "provider-agent"];

/// `(binary, flag, where)` for every `--flag` given to one of our binaries in `text`
/// (shell-ish: words, `\` continuations, `#` comments, `;`/`&&`/`|`/`&` separators).
fn flags_in(text: &str, origin: &str, out: &mut Vec<(String, String, String)>) {
    let mut current: Option<String> = None;
    let mut expect_sub = false;
    for line in text.lines() {
        for raw in line.split_whitespace() {
            if raw.starts_with('#') {
                break;
            }
            let w = raw.trim_matches(|c| c == '"' || c == '\'' || c == '`');
            let w = w.strip_prefix("ExecStart=").unwrap_or(w);
            if w == "\\" {
                continue;
            }
            if matches!(
                w,
                ";" | "&&" | "||" | "|" | "&" | "do" | "then" | "done" | "$" | "(" | ")"
            ) {
                current = None;
                expect_sub = false;
                continue;
            }
            let base = w.rsplit('/').next().unwrap_or(w);
            if expect_sub {
                expect_sub = false;
                if !w.starts_with('-') {
                    current = Some(format!("bench {w}"));
                    continue;
                }
            }
            if BINARIES.contains(&base) {
                current = Some(base.to_owned());
                continue;
            }
            if base == "bench" {
                current = Some("bench".to_owned());
                expect_sub = true;
                continue;
            }
            let flag = w.split('=').next().unwrap_or(w);
            let is_flag = flag.strip_prefix("--").is_some_and(|f| {
                f.starts_with(|c: char| c.is_ascii_lowercase())
                    && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
            if let (Some(bin), true) = (&current, is_flag) {
                out.push((bin.clone(), flag.to_owned(), origin.to_owned()));
            }
        }
        // A line ending in `\` continues the command; any other ends it.
        if !line.trim_end().ends_with('\\') {
            current = None;
            expect_sub = false;
        }
    }
}

/// Flags used by the compose file, the k8s manifests, the systemd units (and their
/// example env files) and the README's code blocks.
fn used_flags() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for file in ["docker-compose.yml", "docker-compose.mtls.yml"] {
        for doc in yaml_docs(&deploy().join(file)) {
            for (name, svc) in doc["services"].as_mapping().expect("services").iter() {
                let cmd = strings(&svc["command"]).join(" ");
                flags_in(&cmd, &format!("{file} {}", s(name)), &mut out);
            }
        }
    }
    for (file, obj) in k8s_objects() {
        for c in pod_containers(&obj) {
            let mut cmd = strings(&c["command"]);
            cmd.extend(strings(&c["args"]));
            // One word per list item; a script (bash -c) keeps its lines.
            let text = cmd
                .iter()
                .map(|a| {
                    if a.contains('\n') {
                        format!("\n{a}\n")
                    } else {
                        format!("{a} \\\n")
                    }
                })
                .collect::<String>();
            let origin = format!("{} {}", file.display(), s(&c["name"]));
            flags_in(&text, &origin, &mut out);
        }
    }
    for (unit, env) in systemd_units() {
        let text = read(&unit);
        for line in text.lines().filter(|l| l.starts_with("ExecStart=")) {
            // $EXTRA_OPTS stands for the env file's flags: put them in its place.
            let extra = env_vars(&env)
                .get("EXTRA_OPTS")
                .cloned()
                .unwrap_or_default();
            let line = line.replace("$EXTRA_OPTS", &extra);
            flags_in(&line, &unit.display().to_string(), &mut out);
        }
    }
    let readme = deploy().join("README.md");
    for block in code_blocks(&read(&readme)) {
        flags_in(&block, "deploy/README.md", &mut out);
    }
    out
}

fn code_blocks(md: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            match cur.take() {
                Some(b) => blocks.push(b),
                None => cur = Some(String::new()),
            }
        } else if let Some(b) = &mut cur {
            b.push_str(line);
            b.push('\n');
        }
    }
    blocks
}

// ---------------------------------------------------------------------------------------
// Binaries.

/// bench (built for this test) and the agents beside it, built with `cargo build`
/// (up to date with the sources).
fn bins() -> Bins {
    Bins::for_test(env!("CARGO_BIN_EXE_bench"))
}

/// The `--flags` a `--help` text lists.
fn help_flags(exe: &Path, sub: Option<&str>) -> BTreeSet<String> {
    let mut cmd = Command::new(exe);
    if let Some(s) = sub {
        cmd.arg(s);
    }
    let out = cmd.arg("--help").output().expect("running --help");
    assert!(
        out.status.success(),
        "{} {} --help failed: {}",
        exe.display(),
        sub.unwrap_or(""),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | '=' | '[' | ']' | '<'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_alphanumeric())
                .to_owned()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Shape.

/// The mTLS override replaces each agent's command (compose does not merge lists): it
/// must be the base file's command plus `--tls-cert/--tls-key/--tls-ca` of files in the
/// mounted `/certs`, for every agent, so the two files cannot drift apart.
#[test]
fn compose_mtls_override_is_the_race_plus_tls_on_every_agent() {
    let base = yaml_docs(&deploy().join("docker-compose.yml"));
    let over = yaml_docs(&deploy().join("docker-compose.mtls.yml"));
    assert_eq!(over.len(), 1, "docker-compose.mtls.yml: one document");
    let base = base[0]["services"].as_mapping().expect("services");
    let over = over[0]["services"].as_mapping().expect("services");
    let mut agents = 0;
    for (name, svc) in base.iter() {
        let cmd = strings(&svc["command"]);
        if !matches!(
            cmd.first().map(String::as_str),
            Some("consumer-agent" | "provider-agent")
        ) {
            continue;
        }
        agents += 1;
        let o = over
            .get(name)
            .unwrap_or_else(|| panic!("docker-compose.mtls.yml: no {}", s(name)));
        let tls = strings(&o["command"]);
        assert_eq!(
            tls[..cmd.len()],
            cmd[..],
            "{}: the base file's command first",
            s(name)
        );
        let extra = &tls[cmd.len()..];
        assert_eq!(extra.len(), 3, "{}: three TLS flags", s(name));
        for (flag, arg) in ["--tls-cert=", "--tls-key=", "--tls-ca="].iter().zip(extra) {
            let file = arg
                .strip_prefix(flag)
                .unwrap_or_else(|| panic!("{}: {arg} is not {flag}", s(name)));
            assert!(file.starts_with("/certs/"), "{}: {arg}", s(name));
        }
        let mounts = strings(&o["volumes"]);
        assert!(
            mounts.iter().any(|m| m.ends_with(":/certs:ro")),
            "{}: certificates mounted read-only at /certs: {mounts:?}",
            s(name)
        );
    }
    assert_eq!(agents, 4, "three provider-agents and a consumer-agent");
    assert_eq!(over.len(), agents, "the override touches the agents only");
}

#[test]
fn compose_file_reproduces_the_race() {
    let docs = yaml_docs(&deploy().join("docker-compose.yml"));
    assert_eq!(docs.len(), 1, "docker-compose.yml: one document");
    let services = docs[0]["services"].as_mapping().expect("services mapping");
    let svc = |name: &str| -> &Value {
        services
            .get(name)
            .unwrap_or_else(|| panic!("docker-compose.yml: no service {name}"))
    };
    let etcd_ip = s(&svc("etcd")["networks"]["mesh"]["ipv4_address"]).to_owned();
    assert!(!s(&svc("etcd")["image"]).is_empty(), "etcd has an image");

    let mut cpus = Vec::new();
    for (size, weight) in [("small", 100), ("medium", 200), ("large", 300)] {
        let prov = svc(&format!("provider-{size}"));
        let agent = svc(&format!("provider-agent-{size}"));
        for (n, v) in [("provider", prov), ("provider-agent", agent)] {
            assert_eq!(s(&v["image"]), "dubbo-mesh:latest", "{n}-{size}: image");
        }
        assert_eq!(
            s(&agent["network_mode"]),
            format!("service:provider-{size}"),
            "provider-agent-{size} shares its provider's network namespace"
        );
        cpus.push(prov["cpus"].as_f64().expect("provider cpus"));
        let p = strings(&prov["command"]);
        assert_eq!(p.get(..2), Some(&["bench".into(), "provider".into()][..]));
        let a = strings(&agent["command"]);
        assert_eq!(a.first().map(String::as_str), Some("provider-agent"));
        let ip = s(&prov["networks"]["mesh"]["ipv4_address"]);
        let listen = flag_value(&a, "--listen").expect("--listen");
        let advertise = flag_value(&a, "--advertise").expect("--advertise");
        assert_eq!(
            host_of(&advertise),
            ip,
            "{size}: advertises its provider's IP"
        );
        assert_eq!(
            port_of(&advertise),
            port_of(&listen),
            "{size}: advertised port"
        );
        let provider = flag_value(&a, "--provider").expect("--provider");
        assert_eq!(
            port_of(&provider),
            port_of(&flag_value(&p, "--listen").expect("provider --listen")),
            "{size}: the agent calls the port its provider listens on"
        );
        assert_eq!(
            flag_value(&a, "--registry"),
            Some(format!("etcd://{etcd_ip}:2379"))
        );
        assert_eq!(flag_value(&a, "--service").as_deref(), Some(RACE_SERVICE));
        assert_eq!(flag_value(&a, "--weight"), Some(weight.to_string()));
        let admin = flag_value(&a, "--admin").expect("provider-agent --admin");
        let check = strings(&agent["healthcheck"]["test"]).join(" ");
        assert!(
            check.contains(&format!("/{}", port_of(&admin))) && check.contains("/healthz"),
            "provider-agent-{size}: healthcheck on its admin port: {check}"
        );
    }
    // CPU 1:2:3, as in the race (0.6 / 1.2 / 1.8).
    assert!(
        (cpus[1] / cpus[0] - 2.0).abs() < 1e-9 && (cpus[2] / cpus[0] - 3.0).abs() < 1e-9,
        "provider cpus not 1:2:3: {cpus:?}"
    );

    let consumer = svc("consumer-agent");
    let c = strings(&consumer["command"]);
    assert_eq!(c.first().map(String::as_str), Some("consumer-agent"));
    let listen = flag_value(&c, "--listen").expect("consumer-agent --listen");
    assert_eq!(port_of(&listen), 20000);
    assert_eq!(
        flag_value(&c, "--registry"),
        Some(format!("etcd://{etcd_ip}:2379"))
    );
    let published: Vec<String> = seq(&consumer["ports"])
        .iter()
        .map(|p| s(p).to_owned())
        .collect();
    assert!(
        published.iter().any(|p| p.ends_with(":20000")),
        "consumer-agent publishes 20000: {published:?}"
    );
    let sg = consumer["stop_grace_period"]
        .as_str()
        .expect("stop_grace_period");
    let grace: u64 = sg
        .trim_end_matches('s')
        .parse()
        .expect("stop_grace_period in s");
    let drain_ms: u64 = flag_value(&c, "--drain-ms").map_or(5000, |v| v.parse().unwrap());
    assert!(
        grace * 1000 > drain_ms,
        "stop_grace_period {grace}s <= drain"
    );

    let load = svc("load");
    let l = strings(&load["command"]);
    assert_eq!(l.get(..2), Some(&["bench".into(), "load".into()][..]));
    assert_eq!(s(&load["network_mode"]), "service:consumer-agent");
    let target = flag_value(&l, "--target").expect("load --target");
    assert_eq!(
        port_of(&target),
        port_of(&listen),
        "load targets the consumer-agent"
    );
    let deps = load["depends_on"].as_mapping().expect("load depends_on");
    assert!(deps.contains_key("consumer-agent"));
}

/// The containers of a workload's pod template (none for other kinds).
fn pod_containers(obj: &Value) -> Vec<&Value> {
    let spec = &obj["spec"]["template"]["spec"];
    seq(&spec["initContainers"])
        .iter()
        .chain(seq(&spec["containers"]))
        .collect()
}

fn probe_port(c: &Value, probe: &str) -> u16 {
    let p = &c[probe];
    let port = if p["httpGet"].is_mapping() {
        &p["httpGet"]["port"]
    } else {
        &p["tcpSocket"]["port"]
    };
    resolve_port(c, port).unwrap_or_else(|| panic!("{}: {probe} port {port:?}", s(&c["name"])))
}

/// A container port given by number or by name.
fn resolve_port(c: &Value, port: &Value) -> Option<u16> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).ok();
    }
    seq(&c["ports"])
        .iter()
        .find(|p| p["name"].as_str() == port.as_str())
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
}

fn container_ports(c: &Value) -> BTreeSet<u16> {
    seq(&c["ports"])
        .iter()
        .filter_map(|p| p["containerPort"].as_u64())
        .filter_map(|n| u16::try_from(n).ok())
        .collect()
}

fn prestop_sleep(c: &Value) -> u64 {
    let cmd = strings(&c["lifecycle"]["preStop"]["exec"]["command"]);
    match cmd.as_slice() {
        [sleep, secs] if sleep == "sleep" => secs.parse().expect("preStop sleep seconds"),
        [] => 0,
        other => panic!("unexpected preStop {other:?}"),
    }
}

#[test]
fn k8s_manifests_have_the_expected_shape() {
    // The kustomization lists every manifest, and only existing ones.
    let kust = yaml_docs(&deploy().join("k8s/kustomization.yaml"));
    let listed: BTreeSet<String> = seq(&kust[0]["resources"])
        .iter()
        .map(|r| s(r).to_owned())
        .collect();
    let files: BTreeSet<String> = k8s_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, files,
        "kustomization resources vs files in deploy/k8s"
    );

    let objs = k8s_objects();
    for (f, o) in &objs {
        for key in ["apiVersion", "kind"] {
            assert!(
                o[key].is_string(),
                "{}: an object without {key}",
                f.display()
            );
        }
        assert!(
            o["metadata"]["name"].is_string(),
            "{}: unnamed object",
            f.display()
        );
    }
    let find = |kind: &str, name: &str| -> &Value {
        &objs
            .iter()
            .find(|(_, o)| s(&o["kind"]) == kind && s(&o["metadata"]["name"]) == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .1
    };

    // etcd: 3 members behind a headless Service.
    let etcd = find("StatefulSet", "etcd");
    assert_eq!(etcd["spec"]["replicas"].as_u64(), Some(3));
    let headless = find("Service", s(&etcd["spec"]["serviceName"]));
    assert_eq!(s(&headless["spec"]["clusterIP"]), "None");
    let etcd_c = pod_containers(etcd)[0];
    let etcd_args = strings(&etcd_c["args"]);
    let cluster = flag_value(&etcd_args, "--initial-cluster").expect("--initial-cluster");
    assert_eq!(
        cluster.split(',').count(),
        3,
        "3 initial members: {cluster}"
    );
    assert!(etcd["spec"]["volumeClaimTemplates"].is_sequence());

    // Workloads: every container has an image and ports; the agents have probes on their
    // admin port, resources, and a grace period longer than their drain.
    let mut agents = BTreeMap::new();
    for (f, o) in &objs {
        let containers = pod_containers(o);
        if containers.is_empty() {
            continue;
        }
        let name = s(&o["metadata"]["name"]).to_owned();
        let grace = o["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30);
        for c in &containers {
            let cname = s(&c["name"]);
            let at = format!("{} {name}/{cname}", f.display());
            assert!(!s(&c["image"]).is_empty(), "{at}: no image");
            assert!(c["resources"]["requests"].is_mapping(), "{at}: no requests");
            assert!(c["resources"]["limits"].is_mapping(), "{at}: no limits");
            if !container_ports(c).is_empty() {
                for probe in ["readinessProbe", "livenessProbe"] {
                    assert!(
                        c[probe].is_mapping(),
                        "{at}: serves ports but has no {probe}"
                    );
                }
            }
            let mut cmd = strings(&c["command"]);
            cmd.extend(strings(&c["args"]));
            let Some(bin) = cmd.first().filter(|b| BINARIES.contains(&b.as_str())) else {
                if cname != "app" {
                    assert!(!container_ports(c).is_empty(), "{at}: no ports");
                }
                continue;
            };
            let ports = container_ports(c);
            let listen = flag_value(&cmd, "--listen").expect("--listen");
            let admin = flag_value(&cmd, "--admin").expect("agents in k8s have --admin");
            assert!(
                ports.contains(&port_of(&listen)),
                "{at}: listen port not declared"
            );
            assert!(
                ports.contains(&port_of(&admin)),
                "{at}: admin port not declared"
            );
            assert_eq!(
                s(&c["readinessProbe"]["httpGet"]["path"]),
                "/healthz",
                "{at}"
            );
            assert_eq!(probe_port(c, "readinessProbe"), port_of(&admin), "{at}");
            assert!(c["livenessProbe"].is_mapping(), "{at}: no liveness probe");
            assert_eq!(probe_port(c, "livenessProbe"), port_of(&admin), "{at}");
            let drain_s = match bin.as_str() {
                "consumer-agent" => {
                    flag_value(&cmd, "--drain-ms").map_or(5000, |v| v.parse::<u64>().unwrap())
                        / 1000
                }
                _ => flag_value(&cmd, "--drain-secs").map_or(5, |v| v.parse().unwrap()),
            };
            let longest_prestop = containers.iter().map(|c| prestop_sleep(c)).max().unwrap();
            assert!(
                grace > drain_s + prestop_sleep(c) && grace > longest_prestop,
                "{at}: terminationGracePeriodSeconds {grace} too short for drain {drain_s} s"
            );
            let reg = flag_value(&cmd, "--registry").expect("--registry");
            assert!(reg.starts_with("etcd://"), "{at}: registry {reg}");
            for ep in reg.trim_start_matches("etcd://").split(',') {
                let member = ep.split('.').next().unwrap();
                assert!(
                    cluster.contains(&format!("{member}=")) && port_of(ep) == 2379,
                    "{at}: {ep} is not an etcd member's client address"
                );
            }
            agents.insert(bin.clone(), (name.clone(), cmd.clone()));
        }
    }
    let (prov_deploy, pcmd) = agents
        .get("provider-agent")
        .expect("a provider-agent sidecar");
    let (cons_deploy, _) = agents
        .get("consumer-agent")
        .expect("a consumer-agent sidecar");
    assert_eq!(s(&find("Deployment", prov_deploy)["kind"]), "Deployment");
    assert_eq!(s(&find("Deployment", cons_deploy)["kind"]), "Deployment");
    assert_eq!(
        flag_value(pcmd, "--advertise").as_deref(),
        Some("$(POD_IP):30000"),
        "provider-agent advertises its pod IP"
    );
    // The provider-agent's provider is a container of the same pod.
    let provider_pod = pod_containers(find("Deployment", prov_deploy));
    let dubbo = port_of(&flag_value(pcmd, "--provider").unwrap());
    assert!(
        provider_pod
            .iter()
            .any(|c| s(&c["name"]) != "provider-agent" && container_ports(c).contains(&dubbo)),
        "no container of {prov_deploy} declares the provider port {dubbo}"
    );

    // Every Service selects a workload and targets ports its pods declare.
    for (f, svc) in objs.iter().filter(|(_, o)| s(&o["kind"]) == "Service") {
        let sel = svc["spec"]["selector"].as_mapping().expect("selector");
        let pods: Vec<&Value> = objs
            .iter()
            .map(|(_, o)| o)
            .filter(|o| {
                let labels = &o["spec"]["template"]["metadata"]["labels"];
                labels.is_mapping() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect();
        let at = format!("{} Service {}", f.display(), s(&svc["metadata"]["name"]));
        assert!(!pods.is_empty(), "{at}: selects no workload");
        for p in seq(&svc["spec"]["ports"]) {
            let target = if p["targetPort"].is_null() {
                &p["port"]
            } else {
                &p["targetPort"]
            };
            let found = pods
                .iter()
                .flat_map(|o| pod_containers(o))
                .any(|c| resolve_port(c, target).is_some_and(|n| container_ports(c).contains(&n)));
            assert!(
                found,
                "{at}: target port {target:?} not declared by its pods"
            );
        }
    }
}

/// The systemd units with the example env file each reads.
fn systemd_units() -> Vec<(PathBuf, PathBuf)> {
    let dir = deploy().join("systemd");
    [
        "consumer-agent.service",
        "provider-agent.service",
        "provider-agent@.service",
    ]
    .iter()
    .map(|u| {
        let env = if u.starts_with("consumer") {
            "consumer-agent.env"
        } else {
            "provider-agent.env"
        };
        (dir.join(u), dir.join(env))
    })
    .collect()
}

fn env_vars(path: &Path) -> BTreeMap<String, String> {
    read(path)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.trim().to_owned(), v.trim().trim_matches('"').to_owned())
        })
        .collect()
}

#[test]
fn systemd_units_stop_gracefully_and_are_hardened() {
    for (unit, env) in systemd_units() {
        let text = read(&unit);
        let at = unit.display().to_string();
        let keys: BTreeMap<&str, &str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .collect();
        for section in ["[Unit]", "[Service]", "[Install]"] {
            assert!(text.contains(section), "{at}: no {section}");
        }
        assert_eq!(keys.get("KillSignal"), Some(&"SIGTERM"), "{at}");
        assert_eq!(keys.get("Restart"), Some(&"on-failure"), "{at}");
        assert_eq!(keys.get("NoNewPrivileges"), Some(&"yes"), "{at}");
        assert_eq!(keys.get("ProtectSystem"), Some(&"strict"), "{at}");
        assert!(
            keys.contains_key("EnvironmentFile"),
            "{at}: no EnvironmentFile"
        );
        let vars = env_vars(&env);
        let drain_s = vars
            .get("DRAIN_MS")
            .map(|v| v.parse::<u64>().unwrap() / 1000)
            .or_else(|| vars.get("DRAIN_SECS").map(|v| v.parse().unwrap()))
            .unwrap_or(5);
        let stop: u64 = keys["TimeoutStopSec"].parse().expect("TimeoutStopSec in s");
        assert!(
            stop > drain_s,
            "{at}: TimeoutStopSec {stop} <= drain {drain_s}"
        );
        let exec = keys.get("ExecStart").expect("ExecStart");
        let bin = exec.split_whitespace().next().unwrap();
        assert!(
            BINARIES.iter().any(|b| bin.ends_with(&format!("/{b}"))),
            "{at}: ExecStart runs {bin}"
        );
        // Every variable ExecStart uses is set in the example env file.
        for word in exec.split_whitespace() {
            let var = word.trim_start_matches("${").trim_start_matches('$');
            if word.starts_with('$') {
                let var = var.trim_end_matches('}');
                assert!(
                    vars.contains_key(var),
                    "{at}: {var} not in {}",
                    env.display()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. Flags.

#[test]
fn every_flag_the_files_use_exists_and_every_agent_flag_is_documented() {
    let bins = bins();
    let mut known: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    known.insert("consumer-agent".into(), help_flags(&bins.consumer, None));
    known.insert("provider-agent".into(), help_flags(&bins.provider, None));
    for sub in ["provider", "load", "scenario"] {
        known.insert(format!("bench {sub}"), help_flags(&bins.bench, Some(sub)));
    }
    for (bin, flags) in &known {
        assert!(
            flags.contains("--help"),
            "{bin} --help lists no flags: {flags:?}"
        );
    }

    let used = used_flags();
    let mut per_bin: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (bin, flag, origin) in &used {
        *per_bin.entry(bin.as_str()).or_default() += 1;
        match known.get(bin) {
            Some(flags) if flags.contains(flag) => {}
            Some(_) => unknown.push(format!("{origin}: {bin} {flag}")),
            None => unknown.push(format!("{origin}: unknown command {bin}")),
        }
    }
    assert!(
        unknown.is_empty(),
        "flags the binaries do not have:\n{}",
        unknown.join("\n")
    );
    // The scan found the commands (a broken scan would pass vacuously).
    for bin in [
        "consumer-agent",
        "provider-agent",
        "bench provider",
        "bench load",
    ] {
        assert!(
            per_bin.get(bin).copied().unwrap_or(0) >= 2,
            "no flags found for {bin}: {per_bin:?}"
        );
    }
    let origins: BTreeSet<&str> = used
        .iter()
        .map(|(_, _, o)| o.split_whitespace().next().unwrap())
        .collect();
    for o in ["docker-compose.yml", "deploy/README.md"] {
        assert!(
            origins.iter().any(|x| x.ends_with(o)),
            "no flags found in {o}"
        );
    }
    for o in ["/k8s/", "/systemd/"] {
        assert!(
            origins.iter().any(|x| x.contains(o)),
            "no flags found in {o}"
        );
    }

    // The operator's guide documents every flag of both agents.
    let readme = read(&deploy().join("README.md"));
    let mut missing = Vec::new();
    for bin in BINARIES {
        for flag in &known[bin] {
            if flag != "--help" && flag != "--version" && !readme.contains(&format!("`{flag}")) {
                missing.push(format!("{bin} {flag}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "deploy/README.md does not document: {}",
        missing.join(", ")
    );
}

// ---------------------------------------------------------------------------------------
// 3. Several hosts: network namespaces on one machine.

/// Everything the multi-host test started; dropping it stops the processes (SIGTERM,
/// then SIGKILL) and deletes the namespaces, also when the test fails.
#[derive(Debug)]
struct Hosts {
    namespaces: Vec<String>,
    procs: Vec<(String, Child)>,
    logs: Option<tempfile::TempDir>,
}

impl Hosts {
    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("running ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn add_netns(&mut self, name: &str) {
        // Recorded first, so a half-made namespace is deleted too.
        self.namespaces.push(name.to_owned());
        self.ip(&["netns", "add", name]);
        self.ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.logs
            .as_ref()
            .unwrap()
            .path()
            .join(format!("{name}.log"))
    }

    /// Starts `exe args` in namespace `ns` (`ip netns exec` execs it: same pid), output
    /// to a log file.
    fn spawn(&mut self, name: &str, ns: &str, exe: &Path, args: &[&str]) {
        let log = fs::File::create(self.log_path(name)).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.procs.push((name.to_owned(), child));
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Panics with the process's log if it has exited.
    fn check_running(&mut self, name: &str) {
        let logs = self.log(name);
        let (_, child) = self.procs.iter_mut().find(|(n, _)| n == name).unwrap();
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{name} exited ({st}); its log:\n{logs}");
        }
    }

    /// Sends SIGTERM to `name` and waits for it to exit; its exit status.
    fn terminate(&mut self, name: &str, within: Duration) -> Option<std::process::ExitStatus> {
        let (_, child) = self.procs.iter_mut().find(|(n, _)| n == name)?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        while let Some((_, mut child)) = self.procs.pop() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            // Anything still inside (it can only be ours), then the namespace; its veth
            // ends, and so the bridge's ports, go with it.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `GET path` from inside namespace `ns` (bash's /dev/tcp: no client needed there);
/// the status code and body, or None if nothing answered.
fn get_in(ns: &str, host: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let script = format!(
        "exec 3<>/dev/tcp/{host}/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let out: Output = Command::new("timeout")
        .args(["3", "ip", "netns", "exec", ns, "bash", "-c", &script])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// The value of an unlabelled Prometheus sample.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn is_root() -> bool {
    let mut status = String::new();
    fs::File::open("/proc/self/status")
        .and_then(|mut f| f.read_to_string(&mut status))
        .expect("reading /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0")
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits for `ok` to hold, polling; panics with `what` (and the logs) after `within`.
fn wait_for(hosts: &mut Hosts, what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if ok() {
            return;
        }
        let names: Vec<String> = hosts.procs.iter().map(|(n, _)| n.clone()).collect();
        for n in &names {
            hosts.check_running(n);
        }
        if Instant::now() > deadline {
            let logs: String = names
                .iter()
                .map(|n| format!("--- {n}\n{}\n", hosts.log(n)))
                .collect();
            panic!("timed out waiting for {what}; logs:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three "hosts" (network namespaces on a bridge, 10.77.0.0/24 inside them only): the
/// consumer host runs etcd and the consumer-agent, each provider host a mock provider
/// and a provider-agent registering its own address. The race's calls from the consumer
/// host are answered correctly, by both providers; SIGTERM stops every agent cleanly.
#[test]
fn mesh_across_network_namespaces() {
    let started = Instant::now();
    assert!(
        is_root(),
        "this test builds network namespaces and must run as root (CI does)"
    );
    for cmd in ["ip", "bash", "timeout"] {
        assert!(
            have(cmd),
            "`{cmd}` is missing: install iproute2 (ip), bash and coreutils"
        );
    }
    let etcd = Path::new("/usr/bin/etcd");
    let etcd = if etcd.exists() {
        etcd.to_path_buf()
    } else {
        assert!(have("etcd"), "etcd is missing: apt-get install etcd-server");
        PathBuf::from("etcd")
    };
    let bins = bins();

    let pid = std::process::id();
    let (br, c, p1, p2) = (
        format!("dm-br-{pid}"),
        format!("dm-c-{pid}"),
        format!("dm-p1-{pid}"),
        format!("dm-p2-{pid}"),
    );
    let mut hosts = Hosts {
        namespaces: Vec::new(),
        procs: Vec::new(),
        logs: Some(tempfile::tempdir().expect("temp dir")),
    };
    // The bridge lives in its own namespace; each host gets a veth into it.
    hosts.add_netns(&br);
    hosts.ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
    hosts.ip(&["-n", &br, "link", "set", "br0", "up"]);
    let plan = [(&c, "10.77.0.1"), (&p1, "10.77.0.2"), (&p2, "10.77.0.3")];
    for (i, (ns, addr)) in plan.iter().enumerate() {
        hosts.add_netns(ns);
        let port = format!("v{i}");
        hosts.ip(&[
            "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        hosts.ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"]);
        hosts.ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        hosts.ip(&["-n", ns, "link", "set", "eth0", "up"]);
    }

    // etcd on the consumer host, reachable from the others over the bridge.
    let data = hosts.logs.as_ref().unwrap().path().join("etcd-data");
    let data = data.to_str().unwrap().to_owned();
    hosts.spawn(
        "etcd",
        &c,
        &etcd,
        &[
            "--name",
            "dm",
            "--data-dir",
            &data,
            "--listen-client-urls",
            "http://10.77.0.1:2379,http://127.0.0.1:2379",
            "--advertise-client-urls",
            "http://10.77.0.1:2379",
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "dm=http://127.0.0.1:2380",
        ],
    );
    let registry = "etcd://10.77.0.1:2379";
    wait_for(
        &mut hosts,
        "etcd (from a provider host)",
        Duration::from_secs(15),
        || get_in(&p1, "10.77.0.1", 2379, "/health").is_some_and(|(code, _)| code == 200),
    );

    for (i, (ns, addr)) in plan.iter().enumerate().skip(1) {
        hosts.spawn(
            &format!("provider{i}"),
            ns,
            &bins.bench,
            &[
                "provider",
                "--listen",
                "127.0.0.1:20880",
                "--latency-ms",
                "0",
            ],
        );
        let advertise = format!("{addr}:30000");
        hosts.spawn(
            &format!("provider-agent{i}"),
            ns,
            &bins.provider,
            &[
                "--listen",
                "0.0.0.0:30000",
                "--provider",
                "127.0.0.1:20880",
                "--service",
                RACE_SERVICE,
                "--serialization",
                "hessian2",
                "--registry",
                registry,
                "--advertise",
                &advertise,
                "--admin",
                "127.0.0.1:30001",
                "--drain-secs",
                "2",
            ],
        );
    }
    hosts.spawn(
        "consumer-agent",
        &c,
        &bins.consumer,
        &[
            "--listen",
            "127.0.0.1:20000",
            "--registry",
            registry,
            "--service",
            RACE_SERVICE,
            "--admin",
            "127.0.0.1:20001",
            "--drain-ms",
            "2000",
        ],
    );
    for (ns, n) in [(&p1, 1), (&p2, 2)] {
        wait_for(
            &mut hosts,
            &format!("provider-agent{n} healthy"),
            Duration::from_secs(15),
            || get_in(ns, "127.0.0.1", 30001, "/healthz").is_some_and(|(code, _)| code == 200),
        );
    }
    wait_for(
        &mut hosts,
        "the consumer-agent to know both provider-agents",
        Duration::from_secs(15),
        || {
            get_in(&c, "127.0.0.1", 20001, "/metrics").is_some_and(|(_, m)| {
                m.contains("upstream=\"10.77.0.2:30000\"")
                    && m.contains("upstream=\"10.77.0.3:30000\"")
            })
        },
    );

    // The race's call, from the consumer host: bench load checks every answer.
    let report = hosts.logs.as_ref().unwrap().path().join("load.json");
    let mut load = Command::new("timeout")
        .args(["20", "ip", "netns", "exec", &c])
        .arg(&bins.bench)
        .args([
            "load",
            "--target",
            "127.0.0.1:20000",
            "--connections",
            "4",
            "--warmup-secs",
            "1",
            "--duration-secs",
            "2",
            "--timeout-ms",
            "3000",
            "--json",
        ])
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting bench load");
    let mut summary = String::new();
    load.stdout
        .take()
        .unwrap()
        .read_to_string(&mut summary)
        .unwrap();
    let out = load.wait_with_output().expect("bench load");
    assert!(
        out.status.success(),
        "bench load failed ({}): {summary}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&read(&report)).expect("bench load's JSON report");
    eprint!("bench load from the consumer host: {summary}");
    let ok = json["ok"].as_u64().unwrap_or(0);
    assert!(ok > 0, "no correct answers: {json}");
    assert_eq!(json["errors"], serde_json::json!({}), "errors: {summary}");

    // Both providers answered.
    for (ns, n) in [(&p1, 1), (&p2, 2)] {
        let (code, m) =
            get_in(ns, "127.0.0.1", 30001, "/metrics").expect("provider-agent /metrics");
        assert_eq!(code, 200);
        let served = sample(&m, "provider_agent_responses_ok_total").unwrap_or(0.0);
        eprintln!("provider-agent{n} answered {served} calls");
        assert!(
            served > 0.0,
            "provider-agent{n} served no call (load: {summary}); its metrics:\n{m}"
        );
    }

    // Graceful stop: every agent exits 0 on SIGTERM, within its drain.
    for name in ["consumer-agent", "provider-agent1", "provider-agent2"] {
        let st = hosts.terminate(name, Duration::from_secs(8));
        assert!(
            st.is_some_and(|s| s.success()),
            "{name} on SIGTERM: {st:?}; log:\n{}",
            hosts.log(name)
        );
    }
    drop(hosts);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the multi-host test took {:?}",
        started.elapsed()
    );
}
