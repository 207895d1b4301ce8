//! The real agents refuse a file registry that another local user could write: they
//! exit at start with a message naming the directory, instead of sending calls wherever
//! entries planted there say.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use bench::harness::{self, AgentAddrs, Bins};
use bench::procs::{self, Proc};
use bench::provider::SERVICE;
use test_support::net::free_addr;
use test_support::wait::wait_until;

const DEADLINE: Duration = Duration::from_secs(20);

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Starts both agents on `registry`; both must exit, their logs naming `dir` and each
/// of `needles`.
fn both_refuse(bins: &Bins, registry: &str, logs: &Path, dir: &Path, needles: &[&str]) {
    let c = AgentAddrs::free().unwrap();
    let p = AgentAddrs::free().unwrap();
    let provider = free_addr().unwrap();
    let mut agents = [
        Proc::start(
            "consumer-agent",
            &bins.consumer,
            &harness::consumer_agent_args(c.listen, c.admin, registry),
            logs,
        )
        .unwrap(),
        Proc::start(
            "provider-agent",
            &bins.provider,
            &harness::provider_agent_args(p.listen, p.admin, provider, registry),
            logs,
        )
        .unwrap(),
    ];
    for agent in &mut agents {
        assert!(
            wait_until(DEADLINE, || agent.check_alive().is_err()),
            "{} started on {}; log:\n{}",
            agent.name,
            dir.display(),
            agent.tail()
        );
        let log = std::fs::read_to_string(&agent.log).unwrap();
        for needle in [&dir.display().to_string()[..]].iter().chain(needles) {
            assert!(
                log.contains(needle),
                "{}'s log names {needle:?}:\n{log}",
                agent.name
            );
        }
    }
}

#[test]
fn agents_refuse_a_registry_dir_others_can_write() {
    let tmp = tempfile::Builder::new()
        .prefix("dubbo-mesh-hostile-registry")
        .tempdir()
        .unwrap();
    let logs = tmp.path().join("logs");
    let reg = tmp.path().join("registry");
    // What an attacker leaves: the directory, writable by all, with an entry in it.
    std::fs::create_dir_all(reg.join(SERVICE)).unwrap();
    std::fs::write(
        reg.join(SERVICE).join("127.0.0.1:9.json"),
        format!(
            r#"{{"addr":"127.0.0.1:9","weight":100,"meta":{{}},"pid":{},"heartbeat_ms":99999999999999}}"#,
            std::process::id()
        ),
    )
    .unwrap();
    set_mode(&reg, 0o777);
    let registry = format!("file://{}", reg.display());
    let bins = Bins::for_test(env!("CARGO_BIN_EXE_bench"));
    both_refuse(&bins, &registry, &logs, &reg, &["0777", "chmod 700"]);

    // Another user's directory, not writable by others.
    set_mode(&reg, 0o755);
    match std::os::unix::fs::chown(&reg, Some(65534), Some(65534)) {
        Ok(()) => both_refuse(&bins, &registry, &logs, &reg, &["uid 65534"]),
        Err(e) => eprintln!("not checking another user's directory: chown needs root ({e})"),
    }

    // Ours and private: the consumer-agent starts.
    let me = std::fs::metadata(tmp.path()).unwrap().uid();
    std::os::unix::fs::chown(&reg, Some(me), None).ok();
    set_mode(&reg, 0o700);
    let c = AgentAddrs::free().unwrap();
    let mut consumer = Proc::start(
        "consumer-agent-ok",
        &bins.consumer,
        &harness::consumer_agent_args(c.listen, c.admin, &registry),
        &logs,
    )
    .unwrap();
    procs::wait_port(c.listen, DEADLINE, &mut consumer).unwrap();
    consumer.assert_alive();
}
