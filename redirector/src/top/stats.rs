//! What `redirector top` shows: requests grouped by source, destination, method and path
//! (without its query string), with Linkerd top's columns (count, best, worst, last, success
//! rate) and latency percentiles. Pure.

use std::collections::HashMap;

use clap::ValueEnum;

use crate::observe::flow::Flow;

/// Durations kept per row for the percentiles: the newest ones.
const SAMPLES: usize = 1000;
/// Rows kept at most; requests of new kinds beyond it are counted in [`Table::dropped`].
const MAX_ROWS: usize = 10_000;

/// The columns a row is sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum SortBy {
    /// Most requests first.
    #[default]
    Count,
    /// Slowest (worst) first.
    Worst,
    /// Highest p99 first.
    P99,
    /// Lowest success rate first.
    Success,
}

impl SortBy {
    /// The next one, for the `s` key.
    pub fn next(self) -> Self {
        match self {
            Self::Count => Self::Worst,
            Self::Worst => Self::P99,
            Self::P99 => Self::Success,
            Self::Success => Self::Count,
        }
    }

    /// Its name, as `--sort` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Worst => "worst",
            Self::P99 => "p99",
            Self::Success => "success",
        }
    }
}

/// A row's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The client (Pod name, or address).
    pub source: String,
    /// The destination (Service, Pod or address).
    pub destination: String,
    /// The method (`TCP` for a connection).
    pub method: String,
    /// The path without its query string.
    pub path: String,
}

/// One row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// What it groups.
    pub key: Key,
    /// Requests.
    pub count: u64,
    /// Those answered without a 5xx (or, for a connection, at all).
    pub successes: u64,
    /// Fastest, in ms.
    pub best: u64,
    /// Slowest, in ms.
    pub worst: u64,
    /// The newest request's, in ms.
    pub last: u64,
    /// The newest durations, for the percentiles.
    samples: Vec<u64>,
    next: usize,
}

impl Row {
    /// Successes / count.
    pub fn success_rate(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.successes as f64 / self.count as f64
        }
    }

    /// The `q`-quantile (0..=1) of the kept durations, nearest rank.
    pub fn percentile(&self, q: f64) -> u64 {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return 0;
        }
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }
}

/// Every row so far.
#[derive(Debug, Default)]
pub struct Table {
    rows: HashMap<Key, Row>,
    /// Requests not shown because [`MAX_ROWS`] kinds were already there.
    pub dropped: u64,
    /// Requests counted in all.
    pub total: u64,
}

impl Table {
    /// Counts one request.
    pub fn add(&mut self, flow: &Flow) {
        self.total += 1;
        let key = Key {
            source: flow.source_label_short(),
            destination: flow.destination_label(),
            method: flow
                .method
                .clone()
                .unwrap_or_else(|| if flow.is_http() { "-" } else { "TCP" }.into()),
            path: flow
                .path
                .as_deref()
                .map_or("-", |p| p.split('?').next().unwrap_or(p))
                .to_string(),
        };
        let full = self.rows.len() >= MAX_ROWS;
        let row = match self.rows.get_mut(&key) {
            Some(row) => row,
            None if full => {
                self.dropped += 1;
                return;
            }
            None => self.rows.entry(key.clone()).or_insert(Row {
                key,
                count: 0,
                successes: 0,
                best: u64::MAX,
                worst: 0,
                last: 0,
                samples: Vec::new(),
                next: 0,
            }),
        };
        let d = flow.duration_ms;
        row.count += 1;
        if !flow.is_http() || (1..500).contains(&flow.status) {
            row.successes += 1;
        }
        row.best = row.best.min(d);
        row.worst = row.worst.max(d);
        row.last = d;
        if row.samples.len() < SAMPLES {
            row.samples.push(d);
        } else {
            row.samples[row.next] = d;
            row.next = (row.next + 1) % SAMPLES;
        }
    }

    /// The rows, sorted (ties by key, so the order is stable).
    pub fn sorted(&self, by: SortBy) -> Vec<&Row> {
        let mut rows: Vec<&Row> = self.rows.values().collect();
        rows.sort_by(|a, b| {
            let primary = match by {
                SortBy::Count => b.count.cmp(&a.count),
                SortBy::Worst => b.worst.cmp(&a.worst),
                SortBy::P99 => b.percentile(0.99).cmp(&a.percentile(0.99)),
                SortBy::Success => a.success_rate().total_cmp(&b.success_rate()),
            };
            primary.then_with(|| a.key.cmp(&b.key))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::flow::tests::{flow, tcp_flow};

    fn timed(method: &str, path: &str, status: u16, ms: u64) -> Flow {
        let mut f = flow(method, path, status);
        f.duration_ms = ms;
        f
    }

    #[test]
    fn rows_group_by_path_without_query_and_keep_linkerds_columns() {
        let mut t = Table::default();
        for (i, ms) in [5, 1, 9, 3].into_iter().enumerate() {
            t.add(&timed("GET", &format!("/users?id={i}"), 200, ms));
        }
        t.add(&timed("GET", "/users", 503, 20));
        t.add(&timed("POST", "/users", 201, 2));
        let rows = t.sorted(SortBy::Count);
        assert_eq!(rows.len(), 2);
        let get = rows[0];
        assert_eq!(
            (get.key.method.as_str(), get.key.path.as_str()),
            ("GET", "/users")
        );
        assert_eq!((get.count, get.best, get.worst, get.last), (5, 1, 20, 20));
        assert!((get.success_rate() - 0.8).abs() < 1e-9);
        assert_eq!(get.percentile(0.5), 5);
        assert_eq!(get.percentile(0.99), 20);
        assert_eq!(t.total, 6);
    }

    #[test]
    fn sorting_by_each_column() {
        let mut t = Table::default();
        t.add(&timed("GET", "/a", 200, 1));
        t.add(&timed("GET", "/a", 200, 1));
        t.add(&timed("GET", "/slow", 200, 90));
        t.add(&timed("GET", "/err", 500, 5));
        let first = |by| t.sorted(by)[0].key.path.clone();
        assert_eq!(first(SortBy::Count), "/a");
        assert_eq!(first(SortBy::Worst), "/slow");
        assert_eq!(first(SortBy::P99), "/slow");
        assert_eq!(first(SortBy::Success), "/err");
        assert_eq!(SortBy::Count.next().next().next().next(), SortBy::Count);
    }

    #[test]
    fn connections_are_rows_too_and_samples_stay_bounded() {
        let mut t = Table::default();
        t.add(&tcp_flow());
        let row = t.sorted(SortBy::Count)[0];
        assert_eq!(row.key.method, "TCP");
        assert_eq!(row.success_rate(), 1.0);
        for i in 0..(SAMPLES as u64 + 10) {
            t.add(&timed("GET", "/", 200, i));
        }
        let row = t.sorted(SortBy::Count)[0];
        assert_eq!(row.samples.len(), SAMPLES);
        assert_eq!(row.percentile(0.0), 10, "the oldest samples were replaced");
    }
}
