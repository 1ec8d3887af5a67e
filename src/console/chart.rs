//! The chart of accesses over time: stacked bars drawn on the server as inline SVG (no
//! script, nothing the Content-Security-Policy has to allow), from the hourly counts of
//! the `accesses_over_time` report. Each bar's parts carry a title with their count.

use std::collections::BTreeMap;

use maud::{html, Markup};
use serde_json::Value;

use crate::audit::ReportResult;

/// What the bars are split by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    Role,
    Purpose,
    Decision,
}

impl Grouping {
    pub const ALL: [Grouping; 3] = [Grouping::Role, Grouping::Purpose, Grouping::Decision];

    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("purpose") => Self::Purpose,
            Some("decision") => Self::Decision,
            _ => Self::Role,
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Self::Role => "role",
            Self::Purpose => "purpose",
            Self::Decision => "decision",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Role => "role",
            Self::Purpose => "purpose",
            Self::Decision => "allowed or denied",
        }
    }

    /// The report column the grouping reads.
    fn column(self) -> &'static str {
        match self {
            Self::Role => "actor_role",
            Self::Purpose => "purpose",
            Self::Decision => "decision",
        }
    }
}

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// Series drawn apart; the rest are summed as "other".
const SERIES: usize = 7;
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 8.0;

/// A bucket width that gives at most about 60 bars over `span` milliseconds.
fn bucket_for(span: i64) -> i64 {
    [HOUR, 6 * HOUR, DAY, 7 * DAY, 30 * DAY]
        .into_iter()
        .find(|b| span / b <= 60)
        .unwrap_or(90 * DAY)
}

fn millis(text: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn day_label(ms: i64, bucket: i64) -> String {
    let text = crate::store::rfc3339(ms);
    if bucket < DAY {
        text.get(..16).unwrap_or(&text).replace('T', " ")
    } else {
        text.get(..10).unwrap_or(&text).to_owned()
    }
}

/// Counts per bucket and series.
struct Binned {
    start: i64,
    bucket: i64,
    /// Series names, largest first; "other" last if any were folded.
    series: Vec<String>,
    /// counts[bucket][series]
    counts: Vec<Vec<i64>>,
}

fn bin(result: &ReportResult, group: Grouping) -> Option<Binned> {
    let (from, to) = (millis(&result.from)?, millis(&result.to)?);
    if to <= from {
        return None;
    }
    let bucket = bucket_for(to - from);
    let n = usize::try_from((to - from + bucket - 1) / bucket).ok()?;
    let col = |name: &str| result.columns.iter().position(|c| c == name);
    let (hour, key, events) = (col("hour")?, col(group.column())?, col("events")?);
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    let mut points: Vec<(usize, String, i64)> = Vec::new();
    for row in &result.rows {
        let (Some(at), Some(count)) = (
            row.get(hour).and_then(Value::as_i64),
            row.get(events).and_then(Value::as_i64),
        ) else {
            continue;
        };
        let name = row
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("(none)")
            .to_owned();
        let Ok(i) = usize::try_from((at.max(from) - from) / bucket) else {
            continue;
        };
        *totals.entry(name.clone()).or_default() += count;
        points.push((i.min(n - 1), name, count));
    }
    let mut ranked: Vec<(String, i64)> = totals.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut series: Vec<String> = ranked.into_iter().map(|(name, _)| name).collect();
    let folded = series.len() > SERIES;
    series.truncate(SERIES);
    if folded {
        series.push("other".into());
    }
    let mut counts = vec![vec![0i64; series.len()]; n];
    for (i, name, count) in points {
        let s = series
            .iter()
            .position(|x| *x == name)
            .unwrap_or(series.len() - 1);
        counts[i][s] += count;
    }
    Some(Binned {
        start: from,
        bucket,
        series,
        counts,
    })
}

/// One part of a bar, bottom up: series, top, height, title.
type Segment = (usize, f64, f64, String);

/// The chart, with its legend; a line saying so when there is nothing to draw.
pub fn accesses_over_time(result: &ReportResult, group: Grouping) -> Markup {
    let Some(b) = bin(result, group) else {
        return html! { p.empty { "No chart for this range." } };
    };
    let peak = b
        .counts
        .iter()
        .map(|c| c.iter().sum::<i64>())
        .max()
        .unwrap_or(0);
    if peak == 0 {
        return html! { p.empty { "No accesses in this range." } };
    }
    let plot_w = WIDTH - LEFT - 8.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = plot_w / b.counts.len() as f64;
    let bar_w = (slot * 0.8).max(1.0);
    let y = |v: i64| TOP + plot_h - plot_h * v as f64 / peak as f64;
    let last = b.counts.len() - 1;
    let labelled = [0, last / 2, last];
    let bars: Vec<(f64, i64, Vec<Segment>)> = b
        .counts
        .iter()
        .enumerate()
        .map(|(i, counts)| {
            let x = LEFT + slot * i as f64 + (slot - bar_w) / 2.0;
            let at = b.start + b.bucket * i as i64;
            let mut base = 0i64;
            let mut parts = Vec::new();
            for (s, count) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
                let top = base + count;
                let title = format!("{}: {} {count}", day_label(at, b.bucket), b.series[s]);
                parts.push((s, y(top), y(base) - y(top), title));
                base = top;
            }
            (x, at, parts)
        })
        .collect();
    html! {
        svg.chart viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img"
            aria-label=(format!("Accesses over time by {}", group.label())) {
            line.axis x1=(LEFT) y1=(TOP + plot_h) x2=(WIDTH - 8.0) y2=(TOP + plot_h) {}
            line.axis x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(TOP + plot_h) {}
            @for v in [0, peak / 2, peak] {
                text.tick x=(LEFT - 4.0) y=(y(v) + 4.0) text-anchor="end" { (v) }
            }
            @for (i, (x, at, parts)) in bars.iter().enumerate() {
                @for (s, top, height, title) in parts {
                    rect class=(format!("s{s}")) x=(format!("{x:.1}")) y=(format!("{top:.1}"))
                        width=(format!("{bar_w:.1}")) height=(format!("{height:.1}")) {
                        title { (title) }
                    }
                }
                @if labelled.contains(&i) {
                    @let anchor = if i == 0 { "start" } else if i == last { "end" } else { "middle" };
                    @let at_x = match anchor { "start" => *x, "end" => x + bar_w, _ => x + bar_w / 2.0 };
                    text.tick x=(format!("{at_x:.1}")) y=(HEIGHT - 6.0) text-anchor=(anchor) {
                        (day_label(*at, b.bucket))
                    }
                }
            }
        }
        ul.legend {
            @for (s, name) in b.series.iter().enumerate() {
                @let total: i64 = b.counts.iter().map(|c| c[s]).sum();
                li { span class=(format!("swatch s{s}")) {} (name) " (" (total) ")" }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(rows: Vec<Vec<Value>>) -> ReportResult {
        ReportResult {
            report: "accesses_over_time".into(),
            from: "2026-12-01T00:00:00Z".into(),
            to: "2026-12-03T00:00:00Z".into(),
            columns: ["hour", "actor_role", "purpose", "decision", "events"]
                .map(String::from)
                .to_vec(),
            rows,
        }
    }

    #[test]
    fn counts_land_in_their_bucket_and_series() {
        let day1 = millis("2026-12-01T00:00:00Z").unwrap();
        let r = result(vec![
            vec![
                json!(day1),
                json!("billing"),
                json!("billing"),
                json!("allow"),
                json!(3),
            ],
            vec![
                json!(day1 + 7 * HOUR),
                json!("dsr_handler"),
                json!("dsr"),
                json!("deny"),
                json!(2),
            ],
            vec![
                json!(day1 + 30 * HOUR),
                json!("billing"),
                json!("billing"),
                json!("deny"),
                json!(5),
            ],
        ]);
        let b = bin(&r, Grouping::Role).unwrap();
        // Two days: 48 hourly bars (at most about 60 are drawn).
        assert_eq!(b.bucket, HOUR);
        assert_eq!(b.counts.len(), 48);
        assert_eq!(b.series, vec!["billing", "dsr_handler"]);
        assert_eq!(b.counts[0], vec![3, 0]);
        assert_eq!(b.counts[7], vec![0, 2]);
        assert_eq!(b.counts[30], vec![5, 0]);
        assert_eq!(b.counts.iter().flatten().sum::<i64>(), 10);
        let d = bin(&r, Grouping::Decision).unwrap();
        assert_eq!(d.series, vec!["deny", "allow"]);
        let svg = accesses_over_time(&r, Grouping::Purpose).into_string();
        assert!(svg.contains("<rect"), "{svg}");
        assert!(svg.contains("billing (8)"), "{svg}");
    }

    #[test]
    fn longer_ranges_get_wider_bars() {
        assert_eq!(bucket_for(60 * HOUR), HOUR);
        assert_eq!(bucket_for(61 * HOUR), 6 * HOUR);
        assert_eq!(bucket_for(30 * DAY), DAY);
        assert_eq!(bucket_for(365 * DAY), 7 * DAY);
        assert_eq!(bucket_for(3 * 365 * DAY), 30 * DAY);
        assert_eq!(bucket_for(20 * 365 * DAY), 90 * DAY);
    }

    #[test]
    fn more_series_than_colours_fold_into_other() {
        let day1 = millis("2026-12-01T00:00:00Z").unwrap();
        let rows = (0..10)
            .map(|i| {
                vec![
                    json!(day1),
                    json!(format!("role{i}")),
                    json!("p"),
                    json!("allow"),
                    json!(10 - i),
                ]
            })
            .collect();
        let b = bin(&result(rows), Grouping::Role).unwrap();
        assert_eq!(b.series.len(), SERIES + 1);
        assert_eq!(b.series.last().unwrap(), "other");
        assert_eq!(b.counts[0].iter().sum::<i64>(), (1..=10).sum::<i64>());
    }

    #[test]
    fn an_empty_range_says_so() {
        let svg = accesses_over_time(&result(Vec::new()), Grouping::Role).into_string();
        assert!(svg.contains("No accesses"), "{svg}");
    }
}
