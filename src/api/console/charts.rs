//! The overview's charts of the last hour (throughput and latency per minute), drawn on
//! the server as SVG: no chart library, no script, and the live poll swaps the markup.

use std::fmt::Write;

use super::pages::esc;
use crate::db::console::Minute;

/// Drawing area of a chart, in SVG units (the element scales to its container).
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 180.0;
/// Room for the y axis's labels on the left and the x axis's below.
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;

/// One line of a chart: its legend label, CSS class and one value per minute (None:
/// nothing to plot that minute, which breaks the line).
pub(crate) struct Series<'a> {
    pub(crate) label: &'a str,
    pub(crate) class: &'a str,
    pub(crate) values: Vec<Option<f64>>,
}

/// A round upper bound for the y axis (1, 2 or 5 times a power of ten), at least `max`.
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * power)
}

/// A y-axis label: whole numbers without decimals, small ones with one.
fn label(value: f64) -> String {
    if value >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// The polylines of one series: a gap (None) starts a new line.
fn polylines(values: &[Option<f64>], top: f64) -> Vec<String> {
    let step = (WIDTH - LEFT) / (values.len().max(2) - 1) as f64;
    let plot_h = HEIGHT - BOTTOM - TOP;
    let mut lines = Vec::new();
    let mut points = String::new();
    for (i, value) in values.iter().enumerate() {
        match value {
            Some(v) => {
                let x = LEFT + i as f64 * step;
                let y = TOP + plot_h - (v / top).clamp(0.0, 1.0) * plot_h;
                let _ = write!(points, "{x:.1},{y:.1} ");
            }
            None if !points.is_empty() => lines.push(std::mem::take(&mut points)),
            None => {}
        }
    }
    if !points.is_empty() {
        lines.push(points);
    }
    lines
}

/// A line chart of `series` over the last hour; `unit` follows the y axis's top label,
/// `span` labels the x axis's ends. `summary` is what a screen reader hears instead of
/// the lines.
pub(crate) fn line_chart(
    title: &str,
    summary: &str,
    unit: &str,
    span: (&str, &str),
    series: &[Series<'_>],
) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0f64, |a, b| a.max(*b));
    let top = nice_ceiling(max);
    let base = HEIGHT - BOTTOM;
    let mut svg = format!(
        "<figure class=\"linechart\"><figcaption>{}</figcaption>\
         <svg role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"100%\" \
         preserveAspectRatio=\"xMinYMin meet\" xmlns=\"http://www.w3.org/2000/svg\">\
         <line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{base}\"></line>\
         <line class=\"axis\" x1=\"{LEFT}\" y1=\"{base}\" x2=\"{WIDTH}\" y2=\"{base}\"></line>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"currentColor\">{} {}</text>\
         <text x=\"{}\" y=\"{base}\" font-size=\"11\" text-anchor=\"end\" fill=\"currentColor\">0</text>\
         <text x=\"{LEFT}\" y=\"{HEIGHT}\" font-size=\"11\" fill=\"currentColor\">{}</text>\
         <text x=\"{WIDTH}\" y=\"{HEIGHT}\" font-size=\"11\" text-anchor=\"end\" fill=\"currentColor\">{}</text>",
        esc(title),
        esc(summary),
        LEFT - 4.0,
        TOP + 10.0,
        label(top),
        esc(unit),
        LEFT - 4.0,
        esc(span.0),
        esc(span.1),
    );
    for s in series {
        for points in polylines(&s.values, top) {
            let _ = write!(
                svg,
                "<polyline class=\"line {}\" points=\"{}\"></polyline>",
                esc(s.class),
                points.trim_end()
            );
        }
    }
    svg.push_str("</svg><p class=\"legend\">");
    for s in series {
        let _ = write!(
            svg,
            "<span class=\"key {}\" aria-hidden=\"true\"></span>{} ",
            esc(s.class),
            esc(s.label)
        );
    }
    svg.push_str("</p></figure>");
    svg
}

/// The x axis's end labels: the first and last minute, `HH:MM UTC`.
fn span(minutes: &[Minute]) -> (String, String) {
    let at = |m: Option<&Minute>| {
        m.map(|m| m.minute.format("%H:%M").to_string())
            .unwrap_or_default()
    };
    (at(minutes.first()), format!("{} UTC", at(minutes.last())))
}

/// Completed and failed jobs per minute.
pub(crate) fn throughput(minutes: &[Minute]) -> String {
    let completed: i64 = minutes.iter().map(|m| m.completed).sum();
    let failed: i64 = minutes.iter().map(|m| m.failed).sum();
    let summary = format!("Last hour: {completed} completed, {failed} failed");
    let ends = span(minutes);
    line_chart(
        "Throughput (jobs finished per minute)",
        &summary,
        "/min",
        (&ends.0, &ends.1),
        &[
            Series {
                label: &format!("completed ({completed})"),
                class: "line-completed",
                values: minutes.iter().map(|m| Some(m.completed as f64)).collect(),
            },
            Series {
                label: &format!("failed ({failed})"),
                class: "line-failed",
                values: minutes.iter().map(|m| Some(m.failed as f64)).collect(),
            },
        ],
    )
}

/// Queue wait and run time, p50 and p95 per minute, in seconds.
pub(crate) fn latency(minutes: &[Minute]) -> String {
    let last = minutes.iter().rev().find(|m| m.wait_p50.is_some());
    let summary = match last {
        Some(m) => format!(
            "Latest minute with finished jobs: queue wait p50 {:.1} s, p95 {:.1} s; \
             run time p50 {:.1} s, p95 {:.1} s",
            m.wait_p50.unwrap_or_default(),
            m.wait_p95.unwrap_or_default(),
            m.run_p50.unwrap_or_default(),
            m.run_p95.unwrap_or_default()
        ),
        None => "No job finished in the last hour".to_string(),
    };
    let ends = span(minutes);
    let series = |label, class, pick: fn(&Minute) -> Option<f64>| Series {
        label,
        class,
        values: minutes.iter().map(pick).collect(),
    };
    line_chart(
        "Latency (seconds, per minute)",
        &summary,
        "s",
        (&ends.0, &ends.1),
        &[
            series("queue wait p50", "line-wait50", |m| m.wait_p50),
            series("queue wait p95", "line-wait95", |m| m.wait_p95),
            series("run time p50", "line-run50", |m| m.run_p50),
            series("run time p95", "line-run95", |m| m.run_p95),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(completed: i64, wait: Option<f64>) -> Minute {
        Minute {
            minute: chrono::Utc::now(),
            completed,
            failed: 1,
            wait_p50: wait,
            wait_p95: wait,
            run_p50: wait,
            run_p95: wait,
        }
    }

    #[test]
    fn the_axis_ends_at_a_round_number_above_the_largest_value() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
        assert_eq!(nice_ceiling(450.0), 500.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
    }

    #[test]
    fn a_minute_without_a_value_breaks_the_line() {
        let lines = polylines(&[Some(1.0), None, Some(2.0), Some(3.0)], 4.0);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].split_whitespace().count(), 2);
        assert!(polylines(&[None, None], 1.0).is_empty());
    }

    #[test]
    fn throughput_draws_two_lines_and_names_the_totals() {
        let minutes: Vec<Minute> = (0..60).map(|i| minute(i, None)).collect();
        let svg = throughput(&minutes);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("1770 completed, 60 failed"), "{svg}");
        assert!(svg.contains(">100 /min<"), "{svg}");
    }

    #[test]
    fn latency_skips_minutes_where_nothing_finished() {
        let mut minutes: Vec<Minute> = (0..60).map(|_| minute(0, Some(2.5))).collect();
        minutes[30].wait_p50 = None;
        let svg = latency(&minutes);
        // wait p50 is broken in two; the other three lines are whole.
        assert_eq!(svg.matches("<polyline").count(), 5);
        assert!(svg.contains("queue wait p50 2.5 s"), "{svg}");
        let empty = latency(&[minute(0, None)]);
        assert!(empty.contains("No job finished in the last hour"));
        assert_eq!(empty.matches("<polyline").count(), 0);
    }
}
