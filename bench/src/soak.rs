//! `bench soak`: the classic topology under steady load for a long time, with the
//! resident memory and open file descriptors of every agent and provider sampled every
//! second, judged flat or not at the end.
//!
//! Flat means: for each process, the highest value over the last `tail` window is no
//! more than the value at the end of the settling time (`settle`, the first minute of a
//! full run) plus a slack: [`RSS_SLACK_FRACTION`] of it plus [`RSS_SLACK_KB`] for the
//! resident set (allocator pools and buffers sized by load peaks may still grow a
//! little), [`FD_SLACK`] descriptors for open files (a connection being reopened). A
//! leak of a few bytes per request grows without bound and crosses both; noise does
//! not. Any load error, or a process that exits, fails the run too.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::chart::{self, TimeSeries};
use crate::load::{self, LoadOpts, LoadReport, Params};
use crate::procs::open_fds;
use crate::scenario::{self, ScenarioOpts, Topology, Which};

/// Allowed RSS growth over the settled value, as a fraction of it.
pub const RSS_SLACK_FRACTION: f64 = 0.10;
/// Allowed RSS growth over the settled value, absolute (KiB).
pub const RSS_SLACK_KB: u64 = 4 * 1024;
/// Allowed growth of open file descriptors over the settled count.
pub const FD_SLACK: u64 = 8;

/// Settings of a soak run.
#[derive(Debug, Clone)]
pub struct SoakOpts {
    /// The topology's settings (binaries, registry, agent loops, where reports go).
    pub scenario: ScenarioOpts,
    /// Load connections.
    pub connections: usize,
    /// How long the load runs.
    pub duration: Duration,
    /// Time between samples.
    pub every: Duration,
    /// Time after which a process counts as settled: its value then is the baseline.
    pub settle: Duration,
    /// The window at the end whose highest value is judged against the baseline.
    pub tail: Duration,
}

impl SoakOpts {
    /// 512 connections for `duration`, a sample a second; settling and the judged tail
    /// are a minute each, or a quarter of a shorter run.
    pub fn new(duration: Duration) -> Self {
        let quarter = duration / 4;
        let mut scenario = ScenarioOpts::new(Which::Classic, false);
        scenario.out = PathBuf::from("target/bench-soak");
        SoakOpts {
            scenario,
            connections: 512,
            duration,
            every: Duration::from_secs(1),
            settle: quarter.min(Duration::from_secs(60)),
            tail: quarter.min(Duration::from_secs(60)),
        }
    }
}

/// One process's samples.
#[derive(Debug, Clone, Default)]
pub struct ProcSeries {
    /// `consumer-agent`, `provider-agent-small`, `provider-small`, ...
    pub name: String,
    /// Seconds since the load started, of each sample.
    pub t: Vec<f64>,
    /// VmRSS, KiB.
    pub rss_kb: Vec<u64>,
    /// Entries of `/proc/PID/fd`.
    pub fds: Vec<u64>,
}

/// A value's verdict: settled baseline, the tail's highest, and whether within slack.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flatness {
    /// The value at the end of settling.
    pub base: u64,
    /// The highest value of the tail window.
    pub tail_max: u64,
    /// The most it may be.
    pub limit: u64,
}

impl Flatness {
    /// Whether the tail stays within the limit.
    pub fn flat(&self) -> bool {
        self.tail_max <= self.limit
    }
}

/// One process's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The process.
    pub name: String,
    /// Resident memory.
    pub rss: Flatness,
    /// Open file descriptors.
    pub fds: Flatness,
}

/// Everything a soak measured.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// Load connections.
    pub connections: usize,
    /// The load's figures (right answers, errors, latencies).
    pub load: Option<LoadReport>,
    /// Samples per process.
    pub series: Vec<ProcSeries>,
    /// Per-process verdicts.
    pub verdicts: Vec<Verdict>,
    /// Why the run failed (load errors, a process gone, growth), empty if it passed.
    pub failures: Vec<String>,
    /// Settling time and tail window, seconds.
    pub settle_secs: f64,
    /// The judged window at the end, seconds.
    pub tail_secs: f64,
}

impl SoakReport {
    /// Whether everything stayed flat and every request was answered right.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Judges one series: the value at (or first after) `settle` against the highest in
/// the last `tail` seconds. `None` if there are too few samples to judge.
pub fn judge(
    t: &[f64],
    values: &[u64],
    settle: f64,
    tail: f64,
    limit: impl Fn(u64) -> u64,
) -> Option<Flatness> {
    let end = *t.last()?;
    let base_at = t.iter().position(|&x| x >= settle)?;
    let base = *values.get(base_at)?;
    let tail_from = end - tail;
    let tail_max = t
        .iter()
        .zip(values)
        .filter(|(x, _)| **x >= tail_from && **x > t[base_at])
        .map(|(_, v)| *v)
        .max()?;
    Some(Flatness {
        base,
        tail_max,
        limit: limit(base),
    })
}

/// The RSS limit for a settled value (KiB).
pub fn rss_limit(base_kb: u64) -> u64 {
    base_kb + (base_kb as f64 * RSS_SLACK_FRACTION) as u64 + RSS_SLACK_KB
}

/// The open-fd limit for a settled count.
pub fn fd_limit(base: u64) -> u64 {
    base + FD_SLACK
}

/// Runs the soak: starts the classic topology, loads it, samples, judges, stops
/// everything.
///
/// # Errors
/// The binaries or the topology could not be started.
pub fn run(opts: &SoakOpts) -> io::Result<SoakReport> {
    let bins = scenario::find_bins(&opts.scenario)?;
    std::fs::create_dir_all(&opts.scenario.out)?;
    let specs = scenario::race_specs(50);
    let mut topo = Topology::start_retrying(&opts.scenario, &bins, &specs, "soak")?;
    let mut report = SoakReport {
        connections: opts.connections,
        settle_secs: opts.settle.as_secs_f64(),
        tail_secs: opts.tail.as_secs_f64(),
        ..SoakReport::default()
    };
    report.series = topo
        .procs
        .iter()
        .map(|p| ProcSeries {
            name: p.name.clone(),
            ..ProcSeries::default()
        })
        .collect();
    let lopts = LoadOpts {
        target: topo.consumer_addr,
        connections: opts.connections,
        loops: opts.scenario.load_loops,
        warmup: Duration::ZERO,
        duration: opts.duration,
        params: Params::Ascii,
        salt: None,
        timeout: Duration::from_millis(
            opts.scenario.agent_timeout_ms * u64::from(opts.scenario.agent_retries + 1) + 2_000,
        ),
        progress: false,
        protocol: load::Protocol::Http,
        stagger: topo.provider_latency,
    };
    eprintln!(
        "soak: {} connections for {:?}, sampling every {:?}",
        opts.connections, opts.duration, opts.every
    );
    let start = Instant::now();
    let worker = std::thread::spawn(move || load::run(&lopts));
    let mut next = start;
    let mut last_note = start;
    while !worker.is_finished() {
        let t = start.elapsed().as_secs_f64();
        for (p, s) in topo.procs.iter_mut().zip(&mut report.series) {
            let pid = p.pid();
            let rss = p.usage().rss_kb;
            if let Some(fds) = open_fds(pid) {
                s.t.push(t);
                s.rss_kb.push(rss);
                s.fds.push(fds);
            }
        }
        if let Err(e) = topo.check_alive() {
            report.failures.push(e.to_string());
            break;
        }
        if last_note.elapsed() >= Duration::from_secs(60) {
            last_note = Instant::now();
            eprintln!("soak: {t:.0} s{}", status_line(&report.series));
        }
        next += opts.every;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    match worker.join() {
        Ok(Ok(r)) => {
            if r.stats.error_count() > 0 {
                report
                    .failures
                    .push(format!("load errors: {:?}", r.stats.errors));
            }
            if r.stats.ok == 0 {
                report.failures.push("no right answer".into());
            }
            report.load = Some(r);
        }
        Ok(Err(e)) => report.failures.push(format!("load: {e}")),
        Err(_) => report.failures.push("the load thread panicked".into()),
    }
    drop(topo);
    judge_all(&mut report);
    Ok(report)
}

fn status_line(series: &[ProcSeries]) -> String {
    series
        .iter()
        .filter_map(|s| {
            Some(format!(
                "; {} {:.1} MiB {} fds",
                s.name,
                *s.rss_kb.last()? as f64 / 1024.0,
                s.fds.last()?
            ))
        })
        .collect()
}

/// Fills the verdicts and adds a failure for each process that grew.
pub fn judge_all(report: &mut SoakReport) {
    let (settle, tail) = (report.settle_secs, report.tail_secs);
    for s in &report.series {
        let rss = judge(&s.t, &s.rss_kb, settle, tail, rss_limit);
        let fds = judge(&s.t, &s.fds, settle, tail, fd_limit);
        let (Some(rss), Some(fds)) = (rss, fds) else {
            report.failures.push(format!(
                "{}: too few samples to judge ({})",
                s.name,
                s.t.len()
            ));
            continue;
        };
        if !rss.flat() {
            report.failures.push(format!(
                "{}: RSS grew from {} KiB to {} KiB (limit {} KiB)",
                s.name, rss.base, rss.tail_max, rss.limit
            ));
        }
        if !fds.flat() {
            report.failures.push(format!(
                "{}: open fds grew from {} to {} (limit {})",
                s.name, fds.base, fds.tail_max, fds.limit
            ));
        }
        report.verdicts.push(Verdict {
            name: s.name.clone(),
            rss,
            fds,
        });
    }
}

/// The report as JSON: settings, load figures, verdicts, every sample.
pub fn json(r: &SoakReport) -> serde_json::Value {
    serde_json::json!({
        "connections": r.connections,
        "settle_secs": r.settle_secs,
        "tail_secs": r.tail_secs,
        "thresholds": {
            "rss_slack_fraction": RSS_SLACK_FRACTION,
            "rss_slack_kb": RSS_SLACK_KB,
            "fd_slack": FD_SLACK,
        },
        "load": r.load.as_ref().map(LoadReport::to_json),
        "passed": r.passed(),
        "failures": r.failures,
        "verdicts": r.verdicts.iter().map(|v| serde_json::json!({
            "name": v.name,
            "rss_kb": {"base": v.rss.base, "tail_max": v.rss.tail_max, "limit": v.rss.limit, "flat": v.rss.flat()},
            "fds": {"base": v.fds.base, "tail_max": v.fds.tail_max, "limit": v.fds.limit, "flat": v.fds.flat()},
        })).collect::<Vec<_>>(),
        "samples": r.series.iter().map(|s| serde_json::json!({
            "name": s.name,
            "t": s.t,
            "rss_kb": s.rss_kb,
            "fds": s.fds,
        })).collect::<Vec<_>>(),
    })
}

/// The report as Markdown: the load's figures and a verdict row per process.
pub fn markdown(r: &SoakReport) -> String {
    use std::fmt::Write as _;
    let mut m = String::from("# dubbo-mesh soak report\n\n");
    let _ = writeln!(
        m,
        "{} connections; baseline at {:.0} s, judged over the last {:.0} s; RSS may grow {:.0}% + {} MiB, open fds {}.\n",
        r.connections,
        r.settle_secs,
        r.tail_secs,
        RSS_SLACK_FRACTION * 100.0,
        RSS_SLACK_KB / 1024,
        FD_SLACK
    );
    if let Some(l) = &r.load {
        let _ = writeln!(
            m,
            "Load: {:.0} s, {} right answers ({:.0} QPS), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {:?}.\n",
            l.duration_secs,
            l.stats.ok,
            l.qps(),
            l.latency_ms(0.5),
            l.latency_ms(0.99),
            l.stats.hist.max() as f64 / 1000.0,
            l.stats.errors
        );
    }
    m.push_str("| process | RSS settled MiB | RSS tail max MiB | limit MiB | fds settled | fds tail max | limit | flat |\n");
    m.push_str("|---|--:|--:|--:|--:|--:|--:|---|\n");
    let mib = |kb: u64| kb as f64 / 1024.0;
    for v in &r.verdicts {
        let _ = writeln!(
            m,
            "| {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |",
            v.name,
            mib(v.rss.base),
            mib(v.rss.tail_max),
            mib(v.rss.limit),
            v.fds.base,
            v.fds.tail_max,
            v.fds.limit,
            if v.rss.flat() && v.fds.flat() {
                "yes"
            } else {
                "**no**"
            }
        );
    }
    m.push_str(if r.passed() {
        "\nPassed.\n"
    } else {
        "\n## Failures\n\n"
    });
    for f in &r.failures {
        let _ = writeln!(m, "- `{}`", f.replace('\n', " "));
    }
    m.push_str("\n![RSS over time](soak-rss.svg)\n\n![Open fds over time](soak-fds.svg)\n");
    m
}

/// Writes `soak.json`, `soak.md`, `soak-rss.svg` and `soak-fds.svg` into `dir`.
///
/// # Errors
/// Creating the directory or a file failed.
pub fn write_all(r: &SoakReport, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_string_pretty(&json(r)).map_err(io::Error::other)?;
    std::fs::write(dir.join("soak.json"), text)?;
    std::fs::write(dir.join("soak.md"), markdown(r))?;
    let series = |f: &dyn Fn(&ProcSeries, usize) -> f64| -> Vec<TimeSeries> {
        r.series
            .iter()
            .map(|s| {
                let pts = (0..s.t.len()).map(|i| (s.t[i], f(s, i))).collect();
                (s.name.clone(), pts)
            })
            .collect()
    };
    let rss = series(&|s, i| s.rss_kb[i] as f64 / 1024.0);
    let fds = series(&|s, i| s.fds[i] as f64);
    std::fs::write(
        dir.join("soak-rss.svg"),
        chart::time_svg("Resident memory under load", "MiB", &rss),
    )?;
    std::fs::write(
        dir.join("soak-fds.svg"),
        chart::time_svg("Open file descriptors under load", "fds", &fds),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: usize) -> Vec<f64> {
        (0..n).map(|i| i as f64).collect()
    }

    #[test]
    fn a_steady_series_is_flat_and_a_growing_one_is_not() {
        let t = secs(20);
        let steady: Vec<u64> = (0..20).map(|i| 10_000 + (i % 3) * 100).collect();
        let f = judge(&t, &steady, 5.0, 5.0, rss_limit).expect("judged");
        assert_eq!(f.base, steady[5]);
        assert!(f.flat(), "{f:?}");
        // 1 MiB a second: a leak.
        let leak: Vec<u64> = (0..20).map(|i| 10_000 + i * 1024).collect();
        let f = judge(&t, &leak, 5.0, 5.0, rss_limit).expect("judged");
        assert!(!f.flat(), "{f:?}");
        let fds: Vec<u64> = (0..20).map(|i| 600 + i).collect();
        assert!(!judge(&t, &fds, 5.0, 5.0, fd_limit).expect("judged").flat());
    }

    #[test]
    fn too_few_samples_are_not_judged() {
        assert_eq!(judge(&[], &[], 1.0, 1.0, fd_limit), None);
        assert_eq!(judge(&[0.0, 0.5], &[1, 1], 1.0, 1.0, fd_limit), None);
    }
}
