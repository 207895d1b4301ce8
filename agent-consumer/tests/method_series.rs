//! Per-method metrics under a flood of distinct method names: the series stay within
//! `--max-method-series`, every other call is counted under `method="other"`, and the
//! agent's memory does not grow with the names.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use util::*;

const NAMES: usize = 100_000;
const MAX_SERIES: usize = 64;
const BATCH: usize = 100;

/// This process's resident set, from /proc (the agent runs in it).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Sends `names` calls, each of its own method, in pipelined batches.
fn flood(s: &mut TcpStream, names: std::ops::Range<usize>) {
    let mut burst = Vec::new();
    let mut pending = 0;
    for i in names {
        burst.extend_from_slice(&method_request(&format!("m{i}")));
        pending += 1;
        if pending == BATCH {
            s.write_all(&burst).expect("send");
            let answers = read_answers(s, pending, Duration::from_secs(20));
            assert!(answers.iter().all(|a| a.status == 200), "{:?}", answers[0]);
            burst.clear();
            pending = 0;
        }
    }
    if pending > 0 {
        s.write_all(&burst).expect("send");
        read_answers(s, pending, Duration::from_secs(20));
    }
}

#[test]
fn a_hundred_thousand_method_names_stay_within_the_series_bound() {
    let agent = fake_agent(Mode::Hash);
    let bound = MAX_SERIES.to_string();
    let running = consumer(&[agent.addr], &["--max-method-series", &bound]);
    wait_ready(&running);
    let mut s = TcpStream::connect(running.http_addr()).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    // Warm: the table fills, buffers and tables reach their working size.
    let warm = 10_000;
    flood(&mut s, 0..warm);
    let before = rss_kib();
    flood(&mut s, warm..NAMES);
    let after = rss_kib();
    let methods = running.metrics().methods();
    assert_eq!(methods.series(), MAX_SERIES);
    // The first names took the series; every later one is `other` (a name seen once is
    // never promoted over a series).
    assert_eq!(methods.other_requests(), (NAMES - MAX_SERIES) as u64);
    let text = running.metrics().render();
    assert!(
        text.contains(&format!(
            "consumer_method_requests_total{{service=\"other\",method=\"other\"}} {}\n",
            NAMES - MAX_SERIES
        )),
        "{}",
        text.lines()
            .filter(|l| l.contains("method=\"other\""))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let named = text
        .lines()
        .filter(|l| l.starts_with("consumer_method_requests_total{"))
        .count();
    assert_eq!(named, MAX_SERIES + 1, "the series and `other`");
    assert!(text.contains(&format!("consumer_method_series {MAX_SERIES}\n")));
    let grown = after.saturating_sub(before);
    eprintln!("RSS {before} KiB after warming, {after} KiB after {NAMES} names");
    assert!(
        grown < 4 * 1024,
        "RSS grew by {grown} KiB over {} new method names",
        NAMES - warm
    );
    running.stop();
}
