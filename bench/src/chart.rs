//! The report's charts, drawn with `plotters` into SVG strings: QPS against
//! connections beside each scenario's ceiling, the latency of every load step against
//! percentile (HdrHistogram's percentile distribution), and values over time.

use std::ops::Range;

use plotters::coord::ranged1d::{AsRangedCoord, DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::hist::Histogram;
use crate::scenario::{ScenarioReport, Step};

const SIZE: (u32, u32) = (760, 440);
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
    RGBColor(127, 127, 127),
];

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// The legend mark of a line series drawn in `color`.
fn legend_line(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
}

/// An SVG drawn by `draw`; if drawing fails, what was drawn so far and a warning about
/// the `what` chart.
fn svg(what: &str, draw: impl FnOnce(&mut String) -> DrawResult) -> String {
    let mut out = String::new();
    if let Err(e) = draw(&mut out) {
        log::warn!("{what} chart: {e}");
    }
    out
}

/// A chart of [`SIZE`] on white into `out`: `caption` above axes over `x` and `y`, then
/// `draw` (the mesh and the series), then the legend box at `legend`.
fn plot<X: AsRangedCoord, Y: AsRangedCoord>(
    out: &mut String,
    caption: &str,
    (x, y): (X, Y),
    legend: SeriesLabelPosition,
    draw: impl FnOnce(&mut Chart<'_, '_, X, Y>) -> DrawResult,
) -> DrawResult {
    let root = SVGBackend::with_string(out, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        // Room for the last x label ("99.999%" at the axis end).
        .margin_right(28)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?;
    draw(&mut chart)?;
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .position(legend)
        .draw()?;
    root.present()?;
    Ok(())
}

/// What [`plot`] hands its `draw`.
type Chart<'a, 'b, X, Y> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<<X as AsRangedCoord>::CoordDescType, <Y as AsRangedCoord>::CoordDescType>,
>;

/// QPS against connections for the load scenarios, each ceiling dashed beside it.
pub fn qps_svg(r: &ScenarioReport) -> String {
    svg("QPS", |out| draw_qps(r, out))
}

fn draw_qps(r: &ScenarioReport, out: &mut String) -> DrawResult {
    let scenarios = [
        "classic",
        "classic-dubbo",
        "classic-unmeshed",
        "classic-mtls",
        "uneven",
    ];
    let steps: Vec<&Step> = r
        .steps
        .iter()
        .filter(|s| scenarios.contains(&s.scenario.as_str()) && s.connections > 0)
        // A step with nothing measured (no QPS, no ceiling) is not drawn.
        .filter(|s| s.qps > 0.0 || s.ceiling.is_some_and(|c| c > 0.0))
        .collect();
    let max_x = steps.iter().map(|s| s.connections).max().unwrap_or(512) as f64 * 1.05;
    let max_y = steps
        .iter()
        .map(|s| s.qps.max(s.ceiling.unwrap_or(0.0)))
        .fold(1000.0_f64, f64::max)
        * 1.1;
    let title = "QPS against connections (dashed: ceiling)";
    let axes = (0f64..max_x, 0f64..max_y);
    plot(out, title, axes, SeriesLabelPosition::UpperLeft, |chart| {
        chart
            .configure_mesh()
            .x_desc("connections")
            .y_desc("QPS")
            .x_label_formatter(&fmt_tick)
            .y_label_formatter(&fmt_tick)
            .draw()?;
        for (i, name) in scenarios.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<&Step> = steps
                .iter()
                .copied()
                .filter(|s| s.scenario == *name)
                .collect();
            if pts.is_empty() {
                continue;
            }
            let qps: Vec<(f64, f64)> = pts.iter().map(|s| (s.connections as f64, s.qps)).collect();
            chart
                .draw_series(LineSeries::new(qps.clone(), color.stroke_width(2)))?
                .label(*name)
                .legend(legend_line(color));
            chart.draw_series(qps.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            let ceiling: Vec<(f64, f64)> = pts
                .iter()
                .filter_map(|s| s.ceiling.map(|c| (s.connections as f64, c)))
                .collect();
            chart.draw_series(DashedLineSeries::new(ceiling, 6, 4, color.stroke_width(1)))?;
        }
        Ok(())
    })
}

/// Points per decade of 1 / (1 - p) in a latency curve drawn from a histogram.
const PER_DECADE: u32 = 8;

/// Where percentile `p` (0..=1) sits on the percentile axis: log10(1 / (1 - p)), so
/// 50% is at 0.3, 90% at 1, 99% at 2, 99.9% at 3 (p = 1 is held to 12 nines).
pub fn percentile_x(p: f64) -> f64 {
    -(1.0 - p).clamp(1e-12, 1.0).log10()
}

/// The percentile (in %) at `x` on the percentile axis: the inverse of [`percentile_x`].
fn x_percent(x: f64) -> f64 {
    100.0 * (1.0 - 10f64.powf(-x))
}

/// An axis label for `v`: integers without a decimal point, other values with the fewest
/// decimals that give them back (1 -> `1`, 2.5 -> `2.5`, 0.1 + 0.2 -> `0.3`).
pub fn tick_label(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let tolerance = 1e-9 * v.abs().max(1.0);
    if (v - v.round()).abs() <= tolerance {
        let r = v.round();
        return if r == 0.0 {
            "0".into()
        } else {
            format!("{r:.0}")
        };
    }
    (1..=12)
        .map(|d| format!("{v:.d$}"))
        .find(|s| s.parse::<f64>().is_ok_and(|x| (x - v).abs() <= tolerance))
        .unwrap_or_else(|| v.to_string())
}

/// [`tick_label`] in the shape `x_label_formatter` and `y_label_formatter` take.
fn fmt_tick(v: &f64) -> String {
    tick_label(*v)
}

/// A latency curve, (percentile 0..=1, ms) points, from a histogram of microseconds:
/// eight points per decade of 1 / (1 - p) as far as its count reaches, then
/// its max.
pub fn histogram_curve(h: &Histogram) -> Vec<(f64, f64)> {
    h.percentile_distribution(PER_DECADE)
        .into_iter()
        .map(|(p, us)| (p, us as f64 / 1000.0))
        .collect()
}

/// The latency curve of a step from what it keeps of its histogram: p50, p99 and the
/// max (at 1 - 1 / requests), each only where the request count reaches it.
pub fn step_curve(s: &Step) -> Vec<(f64, f64)> {
    let n = s.requests as f64;
    if n < 1.0 {
        return Vec::new();
    }
    let top = 1.0 - 1.0 / n;
    let mut pts: Vec<(f64, f64)> = [(0.5, s.p50_ms), (0.99, s.p99_ms)]
        .into_iter()
        .filter(|(p, _)| *p <= top)
        .collect();
    pts.push((top, s.max_ms));
    pts
}

/// Latency against percentile for every load step (HdrHistogram's percentile
/// distribution; log scales). Steps that measured no latency are left out.
pub fn latency_svg(r: &ScenarioReport) -> String {
    let curves: Vec<Curve> = r
        .steps
        .iter()
        .map(|s| {
            let curve = if s.latency.is_empty() {
                step_curve(s)
            } else {
                s.latency.clone()
            };
            (format!("{} {}", s.scenario, s.label), curve)
        })
        .collect();
    percentile_svg("Latency by percentile per step (ms)", &curves)
}

/// A named latency curve: (percentile 0..=1, ms) points.
pub type Curve = (String, Vec<(f64, f64)>);

/// Latency curves on a percentile axis (ticks 50%, 90%, 99%, 99.9%, ...; x =
/// log10(1 / (1 - p))) against milliseconds on a log scale. Curves whose values are all
/// zero (or that have none) are not drawn.
pub fn percentile_svg(title: &str, curves: &[Curve]) -> String {
    svg("latency", |out| draw_percentiles(title, curves, out))
}

/// 1-2-5 (or, over a narrow range, 1..9) steps of each decade within `lo..=hi`: the
/// labelled ticks of a log axis; and the 1..9 steps for its light grid lines.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let within = |mults: &[f64]| -> Vec<f64> {
        let (first, last) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (first..=last)
            .flat_map(|e| mults.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| *v >= lo * (1.0 - 1e-9) && *v <= hi * (1.0 + 1e-9))
            .collect()
    };
    let all = within(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    let mut bold = within(&[1.0, 2.0, 5.0]);
    if bold.len() < 3 {
        bold = all.clone();
    } else if bold.len() > 12 {
        bold = within(&[1.0]);
    }
    (bold, all)
}

/// The percentile axis: linear in x = [`percentile_x`], with its ticks (and grid lines)
/// at the given places only. (`with_key_points` would do, but its axis then has no
/// label formatter.)
struct PercentileAxis {
    inner: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ranged for PercentileAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.inner.range()
    }
}

fn draw_percentiles(title: &str, curves: &[Curve], out: &mut String) -> DrawResult {
    let curves: Vec<&Curve> = curves
        .iter()
        .filter(|(_, pts)| pts.iter().any(|&(_, ms)| ms > 0.0))
        .collect();
    let values = || curves.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.1));
    let max_y = values().fold(1.0_f64, f64::max) * 1.25;
    let min_y = (values().filter(|v| *v > 0.0).fold(max_y, f64::min) / 1.25).max(0.001);
    let last_x = curves
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| percentile_x(p.0)))
        .fold(2.0_f64, f64::max);
    let max_x = (last_x - 1e-9).ceil();
    let mut x_ticks = vec![0.0, percentile_x(0.5)];
    x_ticks.extend((1..=max_x as i32).map(f64::from));
    let (y_ticks, y_light) = log_ticks(min_y, max_y);
    let axes = (
        PercentileAxis {
            inner: (0f64..max_x).into(),
            ticks: x_ticks,
        },
        (min_y..max_y)
            .log_scale()
            .with_key_points(y_ticks)
            .with_light_points(y_light),
    );
    plot(out, title, axes, SeriesLabelPosition::UpperLeft, |chart| {
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("ms")
            .x_label_formatter(&|x| format!("{}%", tick_label(x_percent(*x))))
            .y_label_formatter(&fmt_tick)
            .draw()?;
        for (i, (name, pts)) in curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let xy: Vec<(f64, f64)> = pts
                .iter()
                .map(|&(p, ms)| (percentile_x(p), ms.max(min_y)))
                .collect();
            chart
                .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))?
                .label(name.as_str())
                .legend(legend_line(color));
            // Few points (a step's summary rather than its histogram): mark them.
            if xy.len() < 8 {
                chart.draw_series(xy.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            }
        }
        Ok(())
    })
}

/// A named line of a time chart: (seconds, value) points.
pub type TimeSeries = (String, Vec<(f64, f64)>);

/// Values over time, one line per series (the soak's RSS and open fds of each process).
pub fn time_svg(title: &str, y_desc: &str, series: &[TimeSeries]) -> String {
    svg(title, |out| draw_time(title, y_desc, series, out))
}

fn draw_time(title: &str, y_desc: &str, series: &[TimeSeries], out: &mut String) -> DrawResult {
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    let max_x = points().map(|p| p.0).fold(1.0_f64, f64::max);
    let max_y = points().map(|p| p.1).fold(1.0_f64, f64::max) * 1.15;
    let axes = (0f64..max_x, 0f64..max_y);
    plot(out, title, axes, SeriesLabelPosition::LowerRight, |chart| {
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(y_desc)
            .x_label_formatter(&fmt_tick)
            .y_label_formatter(&fmt_tick)
            .draw()?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(name.as_str())
                .legend(legend_line(color));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of every `<text>` element of an SVG.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim().to_owned())
            })
            .collect()
    }

    fn step(scenario: &str, label: &str, requests: u64, ms: [f64; 3]) -> Step {
        Step {
            latency: Vec::new(),
            scenario: scenario.into(),
            label: label.into(),
            connections: 64,
            qps: requests as f64 / 2.0,
            ceiling: None,
            p50_ms: ms[0],
            p99_ms: ms[1],
            max_ms: ms[2],
            requests,
            errors: Default::default(),
            agents: Vec::new(),
            extra: Default::default(),
        }
    }

    #[test]
    fn percentile_axis_is_log_of_one_over_the_tail() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(percentile_x(0.0), 0.0));
        assert!(close(percentile_x(0.5), 2f64.log10()));
        assert!(close(percentile_x(0.9), 1.0));
        assert!(close(percentile_x(0.99), 2.0));
        assert!(close(percentile_x(0.999), 3.0));
        assert!(close(percentile_x(0.9999), 4.0));
        assert!(close(percentile_x(1.0), 12.0), "p = 1 is held finite");
        for x in [0.0, 0.3, 1.0, 2.5, 4.0] {
            assert!(close(percentile_x(x_percent(x) / 100.0), x), "{x}");
        }
        let labels: Vec<String> = [percentile_x(0.5), 1.0, 2.0, 3.0, 4.0]
            .iter()
            .map(|&x| tick_label(x_percent(x)))
            .collect();
        assert_eq!(labels, ["50", "90", "99", "99.9", "99.99"]);
    }

    #[test]
    fn tick_labels_have_no_spurious_decimals() {
        for (v, s) in [
            (1.0, "1"),
            (2.5, "2.5"),
            (0.25, "0.25"),
            (1000.0, "1000"),
            (0.0, "0"),
            (-0.0, "0"),
            (-3.0, "-3"),
            (-0.5, "-0.5"),
            (0.1 + 0.2, "0.3"),
            (0.05, "0.05"),
            (0.001, "0.001"),
            (99.99000000000001, "99.99"),
            (12_500.0, "12500"),
            (1e20, "100000000000000000000"),
            (1.0 / 3.0, "0.333333333"),
        ] {
            assert_eq!(tick_label(v), s, "{v:?}");
        }
    }

    #[test]
    fn log_ticks_step_one_two_five() {
        let (bold, light) = log_ticks(0.3, 60.0);
        let bold: Vec<String> = bold.into_iter().map(tick_label).collect();
        assert_eq!(bold, ["0.5", "1", "2", "5", "10", "20", "50"]);
        assert_eq!(light.len(), 7 + 9 + 6, "{light:?}");
        // Within one decade, every step is labelled.
        let (bold, _) = log_ticks(1.1, 4.5);
        assert_eq!(
            bold.into_iter().map(tick_label).collect::<Vec<_>>(),
            ["2", "3", "4"]
        );
    }

    #[test]
    fn curves_from_histograms_and_steps() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let c = histogram_curve(&h);
        // k = 0..=32 (p up to 99.99%), then the max (at 99.99% too: 1 in 10 000).
        assert!((33..=34).contains(&c.len()), "{c:?}");
        assert!((percentile_x(c[32].0) - 4.0).abs() < 1e-9);
        let &(p, max) = c.last().unwrap();
        assert!((percentile_x(p) - 4.0).abs() < 1e-9 && max == 10.0, "{c:?}");
        assert!((percentile_x(c[8].0) - 1.0).abs() < 1e-9 && (8.9..=9.1).contains(&c[8].1));
        assert!(histogram_curve(&Histogram::new()).is_empty());

        let s = step("classic", "64 conns", 1000, [1.0, 4.0, 9.0]);
        assert_eq!(step_curve(&s), [(0.5, 1.0), (0.99, 4.0), (0.999, 9.0)]);
        let few = step("classic", "few", 10, [1.0, 4.0, 9.0]);
        assert_eq!(step_curve(&few).len(), 2, "no p99 from 10 requests");
        assert!(step_curve(&step("idle", "0", 0, [0.0; 3])).is_empty());
    }

    #[test]
    fn percentile_chart_skips_steps_without_latency() {
        let mut h = Histogram::new();
        for v in 1..=20_000u64 {
            h.record(300 + v * v / 20_000);
        }
        let curves = vec![
            ("from a histogram".to_string(), histogram_curve(&h)),
            (
                "all zero".to_string(),
                vec![(0.5, 0.0), (0.99, 0.0), (0.999, 0.0)],
            ),
            ("nothing".to_string(), Vec::new()),
            (
                "from a step".to_string(),
                vec![(0.5, 2.5), (0.99, 30.0), (0.999, 45.0)],
            ),
        ];
        let svg = percentile_svg("latency", &curves);
        let t = texts(&svg);
        assert!(t.iter().any(|x| x == "from a histogram"), "{t:?}");
        assert!(t.iter().any(|x| x == "from a step"), "{t:?}");
        assert!(
            !t.iter().any(|x| x == "all zero" || x == "nothing"),
            "{t:?}"
        );
        for tick in ["50%", "90%", "99%", "99.9%", "99.99%"] {
            assert!(t.iter().any(|x| x == tick), "{tick} in {t:?}");
        }
        for y in ["1", "10", "50"] {
            assert!(t.iter().any(|x| x == y), "{y} in {t:?}");
        }
        assert!(!t.iter().any(|x| x.ends_with(".0")), "{t:?}");
        // One line per drawn curve (and one per legend entry).
        let lines = svg.matches(r#"stroke-width="2" points="#).count();
        assert_eq!(lines, 4, "{svg}");
    }

    #[test]
    fn report_charts_draw_only_measured_steps() {
        let r = ScenarioReport {
            steps: vec![
                step("classic", "64 conns", 40_000, [1.5, 6.0, 20.0]),
                step("classic", "256 conns", 90_000, [4.0, 15.0, 60.0]),
                step("idle", "2000 idle conns", 2000, [0.0; 3]),
            ],
            ..Default::default()
        };
        let t = texts(&latency_svg(&r));
        assert!(t.iter().any(|x| x == "classic 256 conns"), "{t:?}");
        assert!(!t.iter().any(|x| x.contains("idle")), "{t:?}");
        assert!(t.iter().any(|x| x == "99.99%"), "{t:?}");
        let q = texts(&qps_svg(&r));
        assert!(q.iter().any(|x| x == "classic"), "{q:?}");
        assert!(!q.iter().any(|x| x.ends_with(".0")), "{q:?}");
    }
}
