//! Scenario reports: a text table, JSON, Markdown, and an SVG chart of QPS against
//! connections beside the ceiling.

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

/// The report as a fixed-width table.
pub fn table(r: &ScenarioReport) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<9} {:<15} {:>9} {:>9} {:>6} {:>8} {:>8} {:>8}  {:<24} agents (cpu s / peak RSS)",
        "scenario", "step", "qps", "ceiling", "ratio", "p50 ms", "p99 ms", "max ms", "errors"
    );
    for s in &r.steps {
        let _ = writeln!(
            t,
            "{:<9} {:<15} {:>9.0} {:>9} {:>6} {:>8.2} {:>8.2} {:>8.2}  {:<24} {}",
            s.scenario,
            s.label,
            s.qps,
            s.ceiling.map_or("-".into(), |c| format!("{c:.0}")),
            s.ratio()
                .map_or("-".into(), |x| format!("{:.0}%", x * 100.0)),
            s.p50_ms,
            s.p99_ms,
            s.max_ms,
            errors_text(s),
            agents_text(s)
        );
        if !s.extra.is_empty() {
            let _ = writeln!(t, "{:<9}   {}", "", extra_text(s));
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
        let _ = writeln!(
            m,
            "| {} | {} | {:.0} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            s.scenario,
            s.label,
            s.qps,
            s.ceiling.map_or("-".into(), |c| format!("{c:.0}")),
            s.ratio()
                .map_or("-".into(), |x| format!("{:.0}%", x * 100.0)),
            s.p50_ms,
            s.p99_ms,
            s.max_ms,
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
    m
}

/// An SVG chart: QPS against connections per load scenario, with its ceiling dashed.
pub fn svg(r: &ScenarioReport) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 170.0, 30.0, 50.0);
    let series: Vec<(&str, &str)> = vec![("classic", "#1f77b4"), ("uneven", "#d62728")];
    let pts = |name: &str| -> Vec<&Step> {
        r.steps
            .iter()
            .filter(|s| s.scenario == name && s.connections > 0)
            .collect()
    };
    let max_x = r
        .steps
        .iter()
        .filter(|s| series.iter().any(|(n, _)| *n == s.scenario))
        .map(|s| s.connections)
        .max()
        .unwrap_or(512)
        .max(1) as f64;
    let max_y = r
        .steps
        .iter()
        .filter(|s| series.iter().any(|(n, _)| *n == s.scenario))
        .map(|s| s.qps.max(s.ceiling.unwrap_or(0.0)))
        .fold(1000.0_f64, f64::max)
        * 1.1;
    let x = |c: f64| left + c / max_x * (w - left - right);
    let y = |q: f64| h - bottom - q / max_y * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="18" font-size="14">QPS against connections (dashed: ceiling)</text>"#
    );
    // Axes and grid.
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"#,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for i in 0..=5 {
        let q = max_y / 5.0 * i as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4:.0}</text>"##,
            y(q),
            w - right,
            left - 6.0,
            y(q) + 4.0,
            q
        );
    }
    for i in 0..=4 {
        let c = max_x / 4.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{c:.0}</text>"#,
            x(c),
            h - bottom + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">connections</text>"#,
        (left + w - right) / 2.0,
        h - 10.0
    );
    for (i, (name, color)) in series.iter().enumerate() {
        let p = pts(name);
        if p.is_empty() {
            continue;
        }
        let line = |f: &dyn Fn(&Step) -> f64| {
            p.iter()
                .map(|st| format!("{:.1},{:.1}", x(st.connections as f64), y(f(st))))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            line(&|st| st.qps)
        );
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5" stroke-dasharray="6,4"/>"#,
            line(&|st| st.ceiling.unwrap_or(0.0))
        );
        for st in &p {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{} {}: {:.0} QPS</title></circle>"#,
                x(st.connections as f64),
                y(st.qps),
                st.scenario,
                st.label,
                st.qps
            );
        }
        let ly = top + 20.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{0}" y1="{ly}" x2="{1}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{2}" y="{3}">{name}</text>"#,
            w - right + 15.0,
            w - right + 40.0,
            w - right + 46.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Writes `report.json`, `report.md` and `qps.svg` into `dir`.
///
/// # Errors
/// Creating the directory or a file failed.
pub fn write_all(r: &ScenarioReport, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_string_pretty(&json(r)).map_err(io::Error::other)?;
    std::fs::write(dir.join("report.json"), text)?;
    std::fs::write(dir.join("report.md"), markdown(r))?;
    std::fs::write(dir.join("qps.svg"), svg(r))?;
    Ok(())
}
