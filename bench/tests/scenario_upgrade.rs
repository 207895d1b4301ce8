//! `bench scenario upgrade` end to end: the classic mesh under 256 connections, its
//! consumer-agent and each provider-agent replaced by new processes in the middle
//! step. Checks the steps, that no call failed, and that every process is gone.

use std::path::PathBuf;
use std::time::Duration;

use bench::procs::live_children;
use bench::scenario::{self, ScenarioOpts, Which};

#[test]
fn the_upgrade_scenario_replaces_every_agent_without_an_error() {
    let out = tempfile::tempdir().expect("tempdir");
    let mut opts = ScenarioOpts::new(Which::Upgrade, true);
    opts.out = out.path().to_path_buf();
    opts.bench_exe = Some(PathBuf::from(env!("CARGO_BIN_EXE_bench")));
    opts.warmup = Duration::from_millis(500);
    opts.duration = Duration::from_secs(1);
    let r = scenario::run(&opts).expect("scenario");
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    let labels: Vec<&str> = r.steps.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(
        labels,
        ["steady, before", "upgrade window", "steady, after"],
        "{:?}",
        r.steps
    );
    for s in &r.steps {
        assert_eq!(s.scenario, "upgrade");
        assert!(s.requests > 0 && s.qps > 0.0, "{s:?}");
        assert!(s.errors.is_empty(), "no call failed: {s:?}");
        assert_eq!(s.agents.len(), 4, "the agents measured: {s:?}");
    }
    let window = &r.steps[1];
    assert_eq!(
        window.extra["upgrades"], 4.0,
        "the consumer-agent and 3 provider-agents"
    );
    assert!(window.extra["upgrade_secs"] > 0.0);
    // After the upgrades the agents measured are the new processes.
    assert!(
        r.steps[2]
            .agents
            .iter()
            .all(|a| a.name.contains("upgrade-1")),
        "{:?}",
        r.steps[2].agents
    );
    bench::report::write_all(&r, out.path()).expect("report");
    assert_eq!(
        live_children(),
        Vec::<String>::new(),
        "every process stopped"
    );
}
