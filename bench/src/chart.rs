//! The report's charts, drawn with `plotters` into SVG strings: QPS against
//! connections beside each scenario's ceiling, and the latency distribution of every
//! load step.

use plotters::coord::ranged1d::AsRangedCoord;
use plotters::prelude::*;

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
    let scenarios = ["classic", "uneven"];
    let steps: Vec<&Step> = r
        .steps
        .iter()
        .filter(|s| scenarios.contains(&s.scenario.as_str()) && s.connections > 0)
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

/// Latency of every load step at p50, p99 and max (log scale, milliseconds).
pub fn latency_svg(r: &ScenarioReport) -> String {
    svg("latency", |out| draw_latency(r, out))
}

fn draw_latency(r: &ScenarioReport, out: &mut String) -> DrawResult {
    let steps: Vec<&Step> = r.steps.iter().filter(|s| s.requests > 0).collect();
    let max_y = steps.iter().map(|s| s.max_ms).fold(1.0_f64, f64::max) * 1.5;
    let min_y = steps
        .iter()
        .map(|s| s.p50_ms)
        .filter(|v| *v > 0.0)
        .fold(max_y, f64::min)
        .max(0.01)
        / 1.5;
    let title = "Latency distribution per step (ms, log scale)";
    let axes = (0f64..2.2f64, (min_y..max_y).log_scale());
    plot(out, title, axes, SeriesLabelPosition::UpperLeft, |chart| {
        chart
            .configure_mesh()
            .x_labels(3)
            .x_label_formatter(&|x| match x.round() as i64 {
                0 => "p50".into(),
                1 => "p99".into(),
                _ => "max".into(),
            })
            .y_desc("ms")
            .draw()?;
        for (i, s) in steps.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts = vec![
                (0.0, s.p50_ms.max(min_y)),
                (1.0, s.p99_ms.max(min_y)),
                (2.0, s.max_ms.max(min_y)),
            ];
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                .label(format!("{} {}", s.scenario, s.label))
                .legend(legend_line(color));
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
