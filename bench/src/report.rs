//! Scenario reports: a text table, JSON, Markdown, and SVG charts: QPS against
//! connections beside the ceiling, and each load step's latency against percentile.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use crate::scenario::{ScenarioReport, Step};

fn errors_text(s: &Step) -> String {
    if s.errors.is_empty() {
        return "-".into();
    }
    s.errors
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn agents_text(s: &Step) -> String {
    s.agents
        .iter()
        .map(|a| {
            let short = a
                .name
                .replace("consumer-agent", "C")
                .replace("provider-agent-", "P-");
            format!(
                "{short} {:.2}s/{:.1}MB",
                a.cpu_secs,
                a.peak_rss_kb as f64 / 1024.0
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn extra_text(s: &Step) -> String {
    s.extra
        .iter()
        .map(|(k, v)| {
            if v.abs() < 10.0 {
                format!("{k}={v:.3}")
            } else {
                format!("{k}={v:.0}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A step's numeric cells, formatted once for the text table and Markdown: QPS,
/// ceiling, ratio (one decimal, so 98.6% is not shown as 99%), p50, p99, max.
fn number_cells(s: &Step) -> [String; 6] {
    [
        format!("{:.0}", s.qps),
        s.ceiling.map_or("-".into(), |c| format!("{c:.0}")),
        s.ratio()
            .map_or("-".into(), |x| format!("{:.1}%", x * 100.0)),
        format!("{:.2}", s.p50_ms),
        format!("{:.2}", s.p99_ms),
        format!("{:.2}", s.max_ms),
    ]
}

/// The report as a fixed-width table.
pub fn table(r: &ScenarioReport) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<17} {:<15} {:>9} {:>9} {:>6} {:>8} {:>8} {:>8}  {:<24} agents (cpu s / peak RSS)",
        "scenario", "step", "qps", "ceiling", "ratio", "p50 ms", "p99 ms", "max ms", "errors"
    );
    for s in &r.steps {
        let [qps, ceiling, ratio, p50, p99, max] = number_cells(s);
        let _ = writeln!(
            t,
            "{:<17} {:<15} {qps:>9} {ceiling:>9} {ratio:>6} {p50:>8} {p99:>8} {max:>8}  {:<24} {}",
            s.scenario,
            s.label,
            errors_text(s),
            agents_text(s)
        );
        if !s.extra.is_empty() {
            let _ = writeln!(t, "{:<17}   {}", "", extra_text(s));
        }
    }
    for (name, why) in &r.failures {
        let _ = writeln!(t, "FAILED {name}: {why}");
    }
    t
}

/// The report as JSON.
pub fn json(r: &ScenarioReport) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = r
        .steps
        .iter()
        .map(|s| {
            serde_json::json!({
                "scenario": s.scenario,
                "step": s.label,
                "connections": s.connections,
                "qps": s.qps,
                "ceiling": s.ceiling,
                "ratio": s.ratio(),
                "latency_ms": { "p50": s.p50_ms, "p99": s.p99_ms, "max": s.max_ms },
                "requests": s.requests,
                "errors": s.errors,
                "agents": s.agents.iter().map(|a| serde_json::json!({
                    "name": a.name,
                    "cpu_secs": a.cpu_secs,
                    "peak_rss_kb": a.peak_rss_kb,
                })).collect::<Vec<_>>(),
                "extra": s.extra,
            })
        })
        .collect();
    serde_json::json!({
        "steps": steps,
        "failures": r.failures.iter().map(|(n, w)| serde_json::json!({"scenario": n, "error": w})).collect::<Vec<_>>(),
    })
}

/// The report as a Markdown table.
pub fn markdown(r: &ScenarioReport) -> String {
    let mut m = String::from("# dubbo-mesh bench report\n\n");
    m.push_str("| scenario | step | QPS | ceiling | ratio | p50 ms | p99 ms | max ms | errors | agents (CPU s / peak RSS) | other |\n");
    m.push_str("|---|---|--:|--:|--:|--:|--:|--:|---|---|---|\n");
    for s in &r.steps {
        let [qps, ceiling, ratio, p50, p99, max] = number_cells(s);
        let _ = writeln!(
            m,
            "| {} | {} | {qps} | {ceiling} | {ratio} | {p50} | {p99} | {max} | {} | {} | {} |",
            s.scenario,
            s.label,
            errors_text(s),
            agents_text(s),
            extra_text(s)
        );
    }
    if !r.failures.is_empty() {
        m.push_str("\n## Failures\n\n");
        for (n, w) in &r.failures {
            let _ = writeln!(m, "- **{n}**: `{}`", w.replace('\n', " "));
        }
    }
    m.push_str("\n![QPS against connections](qps.svg)\n");
    m.push_str("\n![Latency by percentile per step](latency.svg)\n");
    m
}

/// Writes `report.json`, `report.md`, `qps.svg` and `latency.svg` (latency against
/// percentile, one line per step that measured any) into `dir`.
///
/// # Errors
/// Creating the directory or a file failed.
pub fn write_all(r: &ScenarioReport, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_string_pretty(&json(r)).map_err(io::Error::other)?;
    std::fs::write(dir.join("report.json"), text)?;
    std::fs::write(dir.join("report.md"), markdown(r))?;
    std::fs::write(dir.join("qps.svg"), crate::chart::qps_svg(r))?;
    std::fs::write(dir.join("latency.svg"), crate::chart::latency_svg(r))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(scenario: &str, label: &str, connections: usize, ms: [f64; 3]) -> Step {
        Step {
            latency: Vec::new(),
            scenario: scenario.into(),
            label: label.into(),
            connections,
            qps: if ms[0] > 0.0 {
                1000.0 * connections as f64
            } else {
                0.0
            },
            ceiling: Some(1100.0 * connections as f64),
            p50_ms: ms[0],
            p99_ms: ms[1],
            max_ms: ms[2],
            requests: 50_000,
            errors: Default::default(),
            agents: Vec::new(),
            extra: Default::default(),
        }
    }

    #[test]
    fn writes_the_files_the_markdown_links() {
        let mut idle = step("idle", "2000 idle conns", 0, [0.0; 3]);
        idle.ceiling = None;
        let r = ScenarioReport {
            steps: vec![
                step("classic", "64 conns", 64, [1.25, 5.0, 12.0]),
                step("classic", "512 conns", 512, [9.5, 30.0, 80.0]),
                idle,
            ],
            failures: Vec::new(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        write_all(&r, dir.path()).expect("write");
        let md = std::fs::read_to_string(dir.path().join("report.md")).expect("report.md");
        for f in ["report.json", "report.md", "qps.svg", "latency.svg"] {
            assert!(dir.path().join(f).is_file(), "{f}");
        }
        assert!(
            md.contains("](qps.svg)") && md.contains("](latency.svg)"),
            "{md}"
        );
        let latency = std::fs::read_to_string(dir.path().join("latency.svg")).expect("svg");
        assert!(latency.starts_with("<svg"), "{latency}");
        assert!(latency.contains("classic 512 conns"), "{latency}");
        assert!(
            !latency.contains("idle"),
            "the idle step measured no latency"
        );
        for tick in [">\n50%\n<", ">\n99%\n<", ">\n99.9%\n<", ">\n99.99%\n<"] {
            assert!(latency.contains(tick), "{tick:?} in {latency}");
        }
        assert!(!latency.contains(".0\n<"), "no label ends in .0: {latency}");
        let qps = std::fs::read_to_string(dir.path().join("qps.svg")).expect("svg");
        assert!(
            qps.contains(">\n512\n<") || qps.contains(">\n500\n<"),
            "{qps}"
        );
        assert!(!qps.contains(".0\n<"), "no label ends in .0: {qps}");
    }
}
