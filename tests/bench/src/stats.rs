//! Pure statistics and table rendering for the benchmarks: percentiles of latency samples,
//! medians of per-round rates, ratios to a baseline, and Markdown tables. No I/O, so all of it
//! is unit-tested.

/// The `p`-th percentile (0 < p <= 100) of `sorted` by the nearest-rank method: the smallest
/// sample such that at least `p` percent of the samples are at or below it. Nearest rank
/// always answers a sample that was actually observed, which is what a latency report should
/// show (no interpolated values that never happened). `None` for no samples.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty
/// or when a value is NaN.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// p50 and p99 of a set of latency samples (nanoseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    /// How many samples.
    pub count: usize,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
}

impl Latency {
    /// Summarises `samples` (any order); `None` when there are none.
    pub fn of(samples: &[u64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Some(Self {
            count: sorted.len(),
            p50: percentile(&sorted, 50.0)?,
            p99: percentile(&sorted, 99.0)?,
        })
    }
}

/// The median of per-round values with their range: how a ratio measured round by round is
/// reported, so that one noisy round shows as a wide range instead of moving the figure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// Median of the values.
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Spread {
    /// Summarises `values`, skipping missing ones; `None` when none is left (or one is NaN).
    pub fn of(values: &[Option<f64>]) -> Option<Self> {
        let v: Vec<f64> = values.iter().flatten().copied().collect();
        Some(Self {
            median: median(&v)?,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// A ratio's spread: `"1.85 (1.80–1.92)"`, median then min–max.
pub fn fmt_ratio_spread(s: Option<Spread>) -> String {
    s.map_or_else(
        || "–".into(),
        |s| format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max),
    )
}

/// A spread of nanosecond values in microseconds: `"+12.3 (+10.1–+15.0)"`, signed, since it
/// is a difference.
pub fn fmt_us_spread(s: Option<Spread>) -> String {
    s.map_or_else(
        || "–".into(),
        |s| {
            format!(
                "{:+.1} ({:+.1}–{:+.1})",
                s.median / 1000.0,
                s.min / 1000.0,
                s.max / 1000.0
            )
        },
    )
}

/// `value / base`, or `None` when either is missing or the base is not positive.
pub fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 && v.is_finite() => Some(v / b),
        _ => None,
    }
}

/// Nanoseconds as microseconds with one decimal: `12345` → `"12.3"`.
pub fn fmt_us(ns: Option<u64>) -> String {
    ns.map_or_else(|| "–".into(), |ns| format!("{:.1}", ns as f64 / 1000.0))
}

/// Milliseconds with one decimal from nanoseconds: `12_345_678` → `"12.3"`.
pub fn fmt_ms(ns: Option<u64>) -> String {
    ns.map_or_else(|| "–".into(), |ns| format!("{:.1}", ns as f64 / 1e6))
}

/// A rate or size without decimals, with thin grouping: `12345.6` → `"12 346"`.
pub fn fmt_count(value: Option<f64>) -> String {
    let Some(v) = value.filter(|v| v.is_finite()) else {
        return "–".into();
    };
    let digits = format!("{:.0}", v.abs());
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(' ');
        }
        grouped.push(c);
    }
    if v < 0.0 && digits != "0" {
        grouped.insert(0, '-');
    }
    grouped
}

/// A ratio with two decimals: `1.0234` → `"1.02"`.
pub fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{r:.2}"))
}

/// How a column is aligned in Markdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A Markdown table.
#[derive(Clone, Debug)]
pub struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            columns: columns
                .iter()
                .map(|(h, a)| ((*h).to_string(), *a))
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are left empty, extra ones dropped, so a row can never break
    /// the table's shape.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// GitHub-flavoured Markdown, one line per row, `|` in cells escaped.
    pub fn to_markdown(&self) -> String {
        let escape = |s: &str| s.replace('|', "\\|");
        let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
        let mut out = line(self.columns.iter().map(|(h, _)| escape(h)).collect());
        out.push_str(&line(
            self.columns
                .iter()
                .map(|(_, a)| match a {
                    Align::Left => "---".to_string(),
                    Align::Right => "---:".to_string(),
                })
                .collect(),
        ));
        for row in &self.rows {
            out.push_str(&line(row.iter().map(|c| escape(c)).collect()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.5), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2], 50.0), Some(1));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&v, 0.0), None);
        assert_eq!(percentile(&v, 101.0), None);
        assert_eq!(percentile(&v, f64::NAN), None);
    }

    #[test]
    fn latency_summary_sorts_first() {
        let l = Latency::of(&[30, 10, 20]).unwrap();
        assert_eq!((l.count, l.p50, l.p99), (3, 20, 30));
        assert_eq!(Latency::of(&[]), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
    }

    #[test]
    fn spreads() {
        let s = Spread::of(&[Some(1.2), None, Some(1.0), Some(1.5)]).unwrap();
        assert_eq!((s.median, s.min, s.max), (1.2, 1.0, 1.5));
        assert_eq!(Spread::of(&[None]), None);
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(fmt_ratio_spread(Some(s)), "1.20 (1.00–1.50)");
        assert_eq!(fmt_ratio_spread(None), "–");
        let d = Spread::of(&[Some(12_345.0), Some(-500.0), Some(20_000.0)]).unwrap();
        assert_eq!(fmt_us_spread(Some(d)), "+12.3 (-0.5–+20.0)");
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_us(Some(12_345)), "12.3");
        assert_eq!(fmt_us(None), "–");
        assert_eq!(fmt_ms(Some(12_345_678)), "12.3");
        assert_eq!(fmt_count(Some(12_345.6)), "12 346");
        assert_eq!(fmt_count(Some(999.0)), "999");
        assert_eq!(fmt_count(Some(1_000.0)), "1 000");
        assert_eq!(fmt_count(Some(-1_500.0)), "-1 500");
        assert_eq!(fmt_count(Some(0.2)), "0");
        assert_eq!(fmt_count(Some(f64::INFINITY)), "–");
        assert_eq!(fmt_ratio(Some(1.0234)), "1.02");
        assert_eq!(fmt_ratio(None), "–");
    }

    #[test]
    fn markdown_table() {
        let mut t = Table::new(&[("name", Align::Left), ("value", Align::Right)]);
        assert!(t.is_empty());
        t.row(vec!["a|b".into(), "1".into()]);
        t.row(vec!["short".into()]);
        t.row(vec!["x".into(), "2".into(), "dropped".into()]);
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.to_markdown(),
            "| name | value |\n| --- | ---: |\n| a\\|b | 1 |\n| short |  |\n| x | 2 |\n"
        );
    }
}
