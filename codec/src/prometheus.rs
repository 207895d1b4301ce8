//! The Prometheus text exposition format (version 0.0.4), written by both agents.
//!
//! A [`Writer`] appends metric families to one `String`: each family gets its `# HELP`
//! and `# TYPE` lines, then all its samples in one block, as the format asks. Label
//! values and help texts are escaped. Latency histograms share one bucket layout,
//! [`LATENCY_BUCKETS_US`], so the two agents' histograms can be compared and summed.
//!
//! # Examples
//!
//! ```
//! use codec::prometheus::{Histogram, Kind, Writer};
//!
//! let mut w = Writer::new();
//! w.counter("requests_total", "Requests received.", 5u64);
//! let mut f = w.family("errors_total", "Errors, by kind.", Kind::Counter);
//! f.sample(&[("kind", "timeout")], 1u64);
//! f.sample(&[("kind", "say \"hi\"")], 2u64);
//! let mut h = Histogram::new();
//! h.observe_us(700);
//! w.histogram("latency_seconds", "Call latency.", &h);
//! let text = w.finish();
//! assert!(text.starts_with("# HELP requests_total Requests received.\n# TYPE requests_total counter\n"));
//! assert!(text.contains("errors_total{kind=\"say \\\"hi\\\"\"} 2\n"));
//! assert!(text.contains("latency_seconds_bucket{le=\"0.001\"} 1\n"));
//! assert!(text.contains("latency_seconds_count 1\n"));
//! ```
//!
//! # Notes
//!
//! Metric and label names are the program's own constants, not input: they are checked
//! in debug builds only. Values print as integers when given as integers, and floats in
//! Rust's shortest round-trip form (`NaN`, `+Inf` and `-Inf` as the format spells them).

#![deny(missing_docs)]

use std::fmt::{self, Write as _};

/// Upper bounds (`le`) of the latency histogram buckets, in microseconds; a last,
/// implicit bucket is `+Inf`.
///
/// One layout for every latency the agents record: from 100 µs (a loopback round trip)
/// to 30 s (past any call timeout), about three buckets per decade, plus 75 ms next to
/// the 50 ms the race's provider takes per call.
pub const LATENCY_BUCKETS_US: [u64; 18] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 75_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// Number of latency buckets including the last, `+Inf`, one.
pub const LATENCY_SLOTS: usize = LATENCY_BUCKETS_US.len() + 1;

/// The bucket a latency of `us` microseconds falls in: the first whose bound is at
/// least `us`, or the last (`+Inf`) one, index [`LATENCY_BUCKETS_US`]`.len()`.
pub fn bucket_index(us: u64) -> usize {
    LATENCY_BUCKETS_US.partition_point(|&bound| bound < us)
}

/// The type of a metric family (the `# TYPE` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A count that only goes up (name it `..._total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations counted in buckets, with their sum and count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample value: an integer printed exactly, or a float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A signed integer (gauges that may go below zero).
    Int(i64),
    /// An unsigned integer (counters).
    Uint(u64),
    /// A float; `NaN` and the infinities print as `NaN`, `+Inf`, `-Inf`.
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Uint(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Uint(u64::from(v))
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Uint(v as u64)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Uint(u64::from(v))
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Uint(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v == f64::INFINITY => f.write_str("+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

/// Latency observations in the [`LATENCY_BUCKETS_US`] layout, as plain numbers.
///
/// The agents count into per-loop atomics on the request path and add them up into one
/// of these when scraped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), the last being `+Inf`.
    pub counts: [u64; LATENCY_SLOTS],
    /// The sum of all observations, in microseconds.
    pub sum_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// No observations.
    pub fn new() -> Self {
        Histogram {
            counts: [0; LATENCY_SLOTS],
            sum_us: 0,
        }
    }

    /// Records one observation of `us` microseconds.
    pub fn observe_us(&mut self, us: u64) {
        if let Some(c) = self.counts.get_mut(bucket_index(us)) {
            *c += 1;
        }
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// The number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Appends metric families in the text exposition format.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
}

impl Writer {
    /// An empty exposition.
    pub fn new() -> Self {
        Writer::default()
    }

    /// An empty exposition with room for `bytes` of text.
    pub fn with_capacity(bytes: usize) -> Self {
        Writer {
            out: String::with_capacity(bytes),
        }
    }

    /// Starts the family `name`: writes its `# HELP` and `# TYPE` lines. Its samples
    /// follow through the returned [`Family`]; write them all before the next family.
    pub fn family<'w>(&'w mut self, name: &'w str, help: &str, kind: Kind) -> Family<'w> {
        debug_assert!(is_metric_name(name), "bad metric name {name:?}");
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_help(&mut self.out, help);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
        Family {
            out: &mut self.out,
            name,
        }
    }

    /// A counter family with one unlabelled sample.
    pub fn counter(&mut self, name: &str, help: &str, value: impl Into<Value>) {
        self.family(name, help, Kind::Counter).sample(&[], value);
    }

    /// A gauge family with one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Into<Value>) {
        self.family(name, help, Kind::Gauge).sample(&[], value);
    }

    /// A histogram family with one unlabelled histogram, in seconds.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, help, Kind::Histogram).histogram(&[], h);
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        &self.out
    }

    /// The whole exposition.
    pub fn finish(self) -> String {
        self.out
    }
}

/// One family's samples, after its `# HELP` and `# TYPE` lines ([`Writer::family`]).
#[derive(Debug)]
pub struct Family<'w> {
    out: &'w mut String,
    name: &'w str,
}

impl Family<'_> {
    /// One sample: `name{labels} value`.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        write_sample(self.out, self.name, "", labels, None, value.into());
        self
    }

    /// One histogram (latencies in seconds): its cumulative `_bucket` lines, each with
    /// `labels` and its `le`, then `_sum` and `_count`.
    pub fn histogram(&mut self, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let mut cumulative = 0u64;
        for (i, count) in h.counts.iter().enumerate() {
            cumulative = cumulative.saturating_add(*count);
            let le = match LATENCY_BUCKETS_US.get(i) {
                Some(&us) => Value::Float(us as f64 / 1e6),
                None => Value::Float(f64::INFINITY),
            };
            write_sample(
                self.out,
                self.name,
                "_bucket",
                labels,
                Some(le),
                cumulative.into(),
            );
        }
        let sum = Value::Float(h.sum_us as f64 / 1e6);
        write_sample(self.out, self.name, "_sum", labels, None, sum);
        write_sample(
            self.out,
            self.name,
            "_count",
            labels,
            None,
            cumulative.into(),
        );
        self
    }
}

fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    le: Option<Value>,
    value: Value,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        for (label, v) in labels {
            debug_assert!(is_label_name(label), "bad label name {label:?}");
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, v);
            out.push('"');
        }
        if let Some(le) = le {
            if !first {
                out.push(',');
            }
            let _ = write!(out, "le=\"{le}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Appends a label value escaped as the format asks: `\` as `\\`, `"` as `\"`, and a
/// line feed as `\n`.
pub fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A help text escaped: `\` as `\\` and a line feed as `\n` (quotes stay as they are).
fn escape_help(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not `le` (the histogram's own).
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    name != "le"
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let mut w = Writer::new();
        w.counter("a_total", "A.", 3u64);
        w.gauge("b", "B.", -2i64);
        let text = w.finish();
        assert_eq!(
            text,
            "# HELP a_total A.\n# TYPE a_total counter\na_total 3\n\
             # HELP b B.\n# TYPE b gauge\nb -2\n"
        );
    }

    #[test]
    fn labels_are_escaped() {
        let mut w = Writer::new();
        w.family("g", "G.", Kind::Gauge)
            .sample(&[("a", "x\\y"), ("b", "say \"hi\"\nbye")], 1.5);
        assert!(
            w.as_str()
                .ends_with("g{a=\"x\\\\y\",b=\"say \\\"hi\\\"\\nbye\"} 1.5\n"),
            "{}",
            w.as_str()
        );
    }

    #[test]
    fn help_is_escaped_but_keeps_quotes() {
        let mut w = Writer::new();
        w.counter("c_total", "back\\slash \"q\"\nnext", 0u64);
        assert!(w
            .as_str()
            .starts_with("# HELP c_total back\\\\slash \"q\"\\nnext\n"));
    }

    #[test]
    fn floats_print_as_the_format_spells_them() {
        let cases = [
            (Value::Float(f64::NAN), "NaN"),
            (Value::Float(f64::INFINITY), "+Inf"),
            (Value::Float(f64::NEG_INFINITY), "-Inf"),
            (Value::Float(0.0005), "0.0005"),
            (Value::Float(2.0), "2"),
            (Value::Uint(u64::MAX), "18446744073709551615"),
            (Value::Int(-7), "-7"),
            (true.into(), "1"),
        ];
        for (v, want) in cases {
            assert_eq!(v.to_string(), want);
        }
    }

    #[test]
    fn bucket_bounds_are_inclusive() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(100), 0);
        assert_eq!(bucket_index(101), 1);
        assert_eq!(bucket_index(50_000), 8);
        assert_eq!(bucket_index(30_000_000), LATENCY_BUCKETS_US.len() - 1);
        assert_eq!(bucket_index(30_000_001), LATENCY_BUCKETS_US.len());
        assert_eq!(bucket_index(u64::MAX), LATENCY_BUCKETS_US.len());
        assert!(LATENCY_BUCKETS_US.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn histogram_is_cumulative_with_sum_and_count() {
        let mut h = Histogram::new();
        for us in [90, 700, 60_000, 40_000_000] {
            h.observe_us(us);
        }
        assert_eq!(h.count(), 4);
        let mut w = Writer::new();
        w.family("lat_seconds", "L.", Kind::Histogram)
            .histogram(&[("loop", "0")], &h);
        let text = w.finish();
        let line = |le: &str| format!("lat_seconds_bucket{{loop=\"0\",le=\"{le}\"}} ");
        for (le, n) in [
            ("0.0001", 1),
            ("0.00025", 1),
            ("0.001", 2),
            ("0.05", 2),
            ("0.075", 3),
            ("30", 3),
            ("+Inf", 4),
        ] {
            assert!(
                text.contains(&format!("{}{n}\n", line(le))),
                "{le}:\n{text}"
            );
        }
        assert!(
            text.contains("lat_seconds_sum{loop=\"0\"} 40.06079\n"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_count{loop=\"0\"} 4\n"), "{text}");
        let buckets = text.lines().filter(|l| l.contains("_bucket")).count();
        assert_eq!(buckets, LATENCY_SLOTS);
    }

    #[test]
    fn names_are_checked() {
        assert!(is_metric_name("a:b_c1"));
        assert!(!is_metric_name("1a"));
        assert!(!is_metric_name(""));
        assert!(!is_metric_name("a-b"));
        assert!(is_label_name("_x1"));
        assert!(!is_label_name("le"));
        assert!(!is_label_name("a:b"));
    }
}
