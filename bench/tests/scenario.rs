//! The scenario runner end to end (needs the agent binaries; built on demand).
//! Ignored by default: `cargo test -p bench --release --test scenario -- --ignored`.

use std::path::PathBuf;
use std::time::Duration;

use bench::scenario::{self, ScenarioOpts, Which};

#[test]
#[ignore = "starts the whole mesh; slow"]
fn quick_classic_and_idle_run_clean() {
    let out = tempfile::tempdir().unwrap();
    let mut opts = ScenarioOpts::new(Which::Classic, true);
    opts.out = out.path().to_path_buf();
    opts.bench_exe = Some(PathBuf::from(env!("CARGO_BIN_EXE_bench")));
    opts.warmup = Duration::from_millis(500);
    opts.duration = Duration::from_secs(1);
    let r = scenario::run(&opts).unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(r.steps.len(), 2);
    for s in &r.steps {
        assert!(s.qps > 0.0, "{s:?}");
        assert!(!s.errors.contains_key("wrong"), "{s:?}");
        assert_eq!(s.agents.len(), 4);
    }
    bench::report::write_all(&r, out.path()).unwrap();
    assert!(out.path().join("qps.svg").exists());

    opts.which = Which::Idle;
    opts.idle_connections = 200;
    let r = scenario::run(&opts).unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert!(r.steps[0].extra.contains_key("bytes_per_conn_connected"));
}
