//! The soak runner end to end, briefly: the classic topology under load for a few
//! seconds, every process sampled each second, judged, reported, everything stopped.

use std::path::PathBuf;
use std::time::Duration;

use bench::procs::live_children;
use bench::soak::{self, SoakOpts};

#[test]
fn a_short_soak_samples_judges_and_stops_everything() {
    let out = tempfile::tempdir().expect("tempdir");
    let mut opts = SoakOpts::new(Duration::from_secs(8));
    opts.connections = 64;
    opts.scenario.out = out.path().to_path_buf();
    opts.scenario.bench_exe = Some(PathBuf::from(env!("CARGO_BIN_EXE_bench")));
    let r = soak::run(&opts).expect("soak");
    // Three providers, three provider-agents, the consumer-agent.
    assert_eq!(r.series.len(), 7, "{:?}", r.series);
    for s in &r.series {
        assert!(s.t.len() >= 6, "{}: {} samples in 8 s", s.name, s.t.len());
        assert!(s.rss_kb.iter().all(|&kb| kb > 0), "{}: RSS read", s.name);
        assert!(s.fds.iter().all(|&n| n >= 3), "{}: fds counted", s.name);
    }
    assert!(r.series.iter().any(|s| s.name == "consumer-agent"));
    let consumer = r
        .series
        .iter()
        .find(|s| s.name == "consumer-agent")
        .unwrap();
    assert!(
        consumer.fds.last().is_some_and(|&n| n >= 64),
        "the consumer-agent holds the 64 load connections: {:?}",
        consumer.fds
    );
    assert_eq!(r.verdicts.len(), 7, "every process judged");
    let load = r.load.as_ref().expect("load report");
    assert!(load.stats.ok > 0, "right answers");
    assert!(r.passed(), "a short steady run is flat: {:?}", r.failures);
    soak::write_all(&r, out.path()).expect("report");
    for f in ["soak.json", "soak.md", "soak-rss.svg", "soak-fds.svg"] {
        let text = std::fs::read_to_string(out.path().join(f)).expect(f);
        assert!(text.len() > 200, "{f} written");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("soak.json")).unwrap())
            .expect("JSON");
    assert_eq!(json["passed"], true);
    assert_eq!(json["samples"].as_array().map(Vec::len), Some(7));
    assert_eq!(
        live_children(),
        Vec::<String>::new(),
        "every process stopped"
    );
}
