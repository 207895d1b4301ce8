//! The scenario runner end to end: the whole mesh (three mock providers, three
//! provider-agents, a consumer-agent, the embedded registry) as child processes, short
//! steps. Checks the report is consistent and every process it started is gone.

use std::path::PathBuf;
use std::time::Duration;

use bench::procs::live_children;
use bench::scenario::{self, ScenarioOpts, Which};

#[test]
fn quick_scenarios_run_clean_and_stop_everything() {
    let out = tempfile::tempdir().expect("tempdir");
    let mut opts = ScenarioOpts::new(Which::Classic, true);
    opts.out = out.path().to_path_buf();
    opts.bench_exe = Some(PathBuf::from(env!("CARGO_BIN_EXE_bench")));
    opts.warmup = Duration::from_millis(500);
    opts.duration = Duration::from_secs(1);
    let r = scenario::run(&opts).expect("scenario");
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    // 128 and 512 connections, over HTTP, from Dubbo consumers, and over HTTP to
    // providers outside the mesh.
    assert_eq!(r.steps.len(), 6);
    for (name, agents) in [
        ("classic", 4),
        ("classic-dubbo", 4),
        ("classic-unmeshed", 1),
    ] {
        let steps: Vec<_> = r.steps.iter().filter(|s| s.scenario == name).collect();
        assert_eq!(steps.len(), 2, "{name}");
        for s in steps {
            assert!(s.requests > 0 && s.qps > 0.0, "{s:?}");
            assert!(s.errors.is_empty(), "every request answered right: {s:?}");
            assert_eq!(s.agents.len(), agents, "{name}: the agents measured");
        }
    }
    bench::report::write_all(&r, out.path()).expect("report");
    for f in ["report.json", "report.md", "qps.svg", "latency.svg"] {
        let text = std::fs::read_to_string(out.path().join(f)).expect(f);
        assert!(text.len() > 200, "{f} written");
    }
    assert_eq!(
        live_children(),
        Vec::<String>::new(),
        "every process stopped"
    );

    // Overhead: the single-connection step also calls a provider directly over Dubbo,
    // and reports what the mesh adds to it.
    opts.which = Which::Overhead;
    let r = scenario::run(&opts).expect("overhead scenario");
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    // HTTP, Dubbo in, ten traffic rules, unmeshed, observed (access logs): one
    // connection and saturating each.
    assert_eq!(r.steps.len(), 10);
    for s in &r.steps {
        assert!(s.errors.is_empty(), "{s:?}");
    }
    // Observed, tracing too (every call sampled): its spans reached the bench's OTLP
    // sink.
    let observed = r
        .steps
        .iter()
        .rfind(|s| s.scenario == "overhead-observe")
        .expect("the overhead-observe steps");
    assert!(
        observed.extra.get("otlp_posts").is_some_and(|n| *n >= 1.0),
        "{observed:?}"
    );
    let one = &r.steps[0];
    let direct = one.extra["direct_p50_ms"];
    assert!(direct > 0.0 && direct < one.p50_ms, "{one:?}");
    assert!(one.extra["mesh_added_p50_us"] > 0.0, "{one:?}");
    assert_eq!(
        live_children(),
        Vec::<String>::new(),
        "every process stopped"
    );

    // Cost: each feature against the plain mesh, in three pairs of short windows.
    opts.which = Which::Cost;
    let r = scenario::run(&opts).expect("cost scenario");
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    let names: Vec<&str> = r.steps.iter().map(|s| s.scenario.as_str()).collect();
    assert_eq!(names, ["cost-dubbo", "cost-rules", "cost-observe"]);
    for s in &r.steps {
        assert!(s.errors.is_empty(), "{s:?}");
        for k in [
            "base_agent_cpu_us_per_request",
            "agent_cpu_us_per_request",
            "added_agent_cpu_us_per_request",
            "base_one_conn_p50_us",
            "one_conn_p50_us",
            "added_one_conn_p50_us",
        ] {
            assert!(s.extra.get(k).is_some_and(|v| v.is_finite()), "{k}: {s:?}");
        }
        assert!(s.extra["agent_cpu_us_per_request"] > 0.0, "{s:?}");
        assert!(s.extra["one_conn_p50_us"] > 0.0, "{s:?}");
    }
    // One feature, as many rounds as asked; a feature it does not know is refused.
    opts.cost_features = vec!["observe".into()];
    opts.cost_rounds = Some(1);
    let r = scenario::run(&opts).expect("cost scenario, one feature");
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    let names: Vec<&str> = r.steps.iter().map(|s| s.scenario.as_str()).collect();
    assert_eq!(names, ["cost-observe"]);
    assert_eq!(r.steps[0].extra["rounds"], 1.0);
    opts.cost_features = vec!["nope".into()];
    let r = scenario::run(&opts).expect("cost scenario, an unknown feature");
    assert!(r.steps.is_empty() && !r.failures.is_empty(), "{r:?}");
    opts.cost_features = Vec::new();
    opts.cost_rounds = None;
    assert_eq!(
        live_children(),
        Vec::<String>::new(),
        "every process stopped"
    );

    // Uneven: providers that queue rather than refuse, past their capacity at 512
    // connections; every call is still answered right (the balancer's latency caps
    // steer calls and refuse none). Long enough for the caps to be revised.
    opts.which = Which::Uneven;
    opts.warmup = Duration::from_secs(2);
    opts.duration = Duration::from_secs(3);
    let r = scenario::run(&opts).expect("uneven scenario");
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(r.steps.len(), 2, "{:?}", r.steps);
    for s in &r.steps {
        assert!(s.requests > 0, "{s:?}");
        assert!(s.errors.is_empty(), "every request answered right: {s:?}");
    }
    opts.warmup = Duration::from_millis(500);
    opts.duration = Duration::from_secs(1);
    assert_eq!(
        live_children(),
        Vec::<String>::new(),
        "every process stopped"
    );

    opts.which = Which::Idle;
    opts.idle_connections = 200;
    let r = scenario::run(&opts).expect("idle scenario");
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert!(r.steps[0].extra.contains_key("bytes_per_conn_connected"));
    assert_eq!(
        live_children(),
        Vec::<String>::new(),
        "every process stopped"
    );

    // With --tls, a second step over TLS (a consumer-agent with --http-tls-cert).
    opts.tls = true;
    let r = scenario::run(&opts).expect("idle scenario over TLS");
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(r.steps.len(), 2, "{:?}", r.steps);
    let tls = &r.steps[1];
    assert_eq!(tls.scenario, "idle-tls");
    assert!(tls.errors.is_empty(), "{tls:?}");
    assert_eq!(tls.requests, 200, "one call on each connection");
    assert!(
        tls.extra["bytes_per_tls_conn_after_a_call"] > 0.0,
        "{tls:?}"
    );
    assert_eq!(
        live_children(),
        Vec::<String>::new(),
        "every process stopped"
    );
}
