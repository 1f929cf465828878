//! Requests aggregated into L7 records, one interval at a time. Pure: the caller says what was
//! read when, and when an interval ends.
//!
//! Within an interval there is one record per distinct [`Key`] (source, destination, method,
//! URL, response code, user agent, protocol type, and the protocol, gRPC status and TLS server
//! name), after Felix's `L7LogsFileAggregation*` settings ([`Aggregation`]) have blanked the
//! fields they leave out of the key and trimmed the URL; `host`, the node's name, is the same
//! for everything one collector sees. A request belongs to the interval in which it was
//! **read** (not Envoy's `start_time`): a collector that falls behind and catches up reports
//! the requests late rather than rewriting intervals it already emitted.
//!
//! Each record carries, over its requests:
//! - `count`, `bytes_in` (request bytes received from the client), `bytes_out` (response bytes
//!   sent to it);
//! - `duration_mean` and `duration_max`: Envoy's `duration` (first request byte to last
//!   response byte), **in nanoseconds** as the reference product's L7 logs state (Envoy logs
//!   whole milliseconds, so these are multiples of 1 000 000);
//! - `latency`: the mean of `duration − upstream_service_time`, **in milliseconds** (rounded):
//!   the time spent outside the upstream's own handling (in the proxy and on the network).
//!   Requests without an upstream service time (no upstream answer, TCP connections) do not
//!   enter the mean; with none at all it is 0.
//!
//! `logRequestsPerInterval` caps the number of distinct records in an interval: once that many
//! keys are present, a request with a new key is added to a single extra record of
//! `type: "unlogged"` (every other string field `-`, ports 0) instead, so its count, bytes and
//! durations are still reported. Requests with a key already present keep adding to it.

use std::collections::HashMap;

use serde::Serialize;

use super::config::{Aggregation, Inclusion, TrimUrl};

/// The `type` of the record that sums the requests past the cap.
pub const UNLOGGED: &str = "unlogged";
/// A value that is not known or does not apply.
pub const NONE: &str = "-";

/// What makes two requests one record; serialised into the record under these names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Key {
    /// `src_name_aggr`.
    pub src_name_aggr: String,
    /// `src_namespace`.
    pub src_namespace: String,
    /// `src_type`.
    pub src_type: String,
    /// `dest_name_aggr`.
    pub dest_name_aggr: String,
    /// `dest_namespace`.
    pub dest_namespace: String,
    /// `dest_type`.
    pub dest_type: String,
    /// `dest_service_name`.
    pub dest_service_name: String,
    /// `dest_service_namespace`.
    pub dest_service_namespace: String,
    /// `dest_service_port`, 0 when there is no Service.
    pub dest_service_port: u16,
    /// `dest_port_num`: the port the client connected to.
    pub dest_port_num: u16,
    /// `method`.
    pub method: String,
    /// `user_agent`.
    pub user_agent: String,
    /// `url`: the request's authority and path, as the reference product writes it
    /// (`web.shop/users/1`), trimmed by [`Aggregation`]; before that, as sent (query string
    /// included).
    pub url: String,
    /// `response_code`.
    pub response_code: String,
    /// `type`: the protocol, such as `http/1.1`, or `unlogged`.
    #[serde(rename = "type")]
    pub protocol_type: String,
    /// `protocol`: what the connection carried: `http`, `grpc`, `websocket`, `connect`
    /// (an HTTP CONNECT tunnel), `tls` (passed through) or `tcp`.
    pub protocol: String,
    /// `grpc_status`: a gRPC call's status (`0` OK; a failed call still has HTTP 200), `-`
    /// for anything else.
    pub grpc_status: String,
    /// `tls_sni`: the server name a TLS client asked for, `-` when none.
    pub tls_sni: String,
}

impl Aggregation {
    /// Blanks the fields these settings leave out of the key and trims the URL, as Felix
    /// does (`-` for strings, 0 for ports).
    pub fn apply(&self, key: &mut Key) {
        let blank = |field: &mut String| NONE.clone_into(field);
        if self.http_header_info == Inclusion::Exclude {
            blank(&mut key.user_agent);
            blank(&mut key.protocol_type);
        }
        if self.http_method == Inclusion::Exclude {
            blank(&mut key.method);
        }
        if self.service_info == Inclusion::Exclude {
            blank(&mut key.dest_service_name);
            blank(&mut key.dest_service_namespace);
            key.dest_service_port = 0;
        }
        if self.destination_info == Inclusion::Exclude {
            blank(&mut key.dest_name_aggr);
            blank(&mut key.dest_namespace);
            blank(&mut key.dest_type);
            key.dest_port_num = 0;
        }
        if self.source_info == Inclusion::Exclude {
            blank(&mut key.src_name_aggr);
            blank(&mut key.src_namespace);
            blank(&mut key.src_type);
        }
        if self.response_code == Inclusion::Exclude {
            blank(&mut key.response_code);
            blank(&mut key.grpc_status);
        }
        if key.url != NONE {
            key.url = self.trim_url(&key.url);
        }
    }

    /// `authority` + path (the path starts at the first `/`) as the settings keep it.
    fn trim_url(&self, url: &str) -> String {
        let (domain, target) = url.split_at(url.find('/').unwrap_or(url.len()));
        let without_query = || target.split('?').next().unwrap_or_default();
        let path: &str = match self.trim_url {
            TrimUrl::IncludeFullUrl => match usize::try_from(self.num_url_path) {
                // Felix splits "/a/b/c" at '/' into "", "a", "b", "c" and keeps one part more
                // than the segments: up to the (segments + 1)th '/', without copying.
                Ok(segments) => {
                    let path = without_query();
                    path.match_indices('/')
                        .nth(segments)
                        .map_or(path, |(end, _)| &path[..end])
                }
                Err(_) => target,
            },
            TrimUrl::TrimQuery => without_query(),
            TrimUrl::TrimQueryAndPath => "",
            TrimUrl::Exclude => return NONE.to_string(),
        };
        // The character limit cuts the path first, then the authority.
        let limit = usize::try_from(self.url_char_limit).unwrap_or(usize::MAX);
        let domain = cut(domain, limit);
        let path = cut(path, limit - domain.len());
        let url = format!("{domain}{path}");
        if url.is_empty() {
            NONE.to_string()
        } else {
            url
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What one request adds to its record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Measure {
    /// Envoy's `duration`, in milliseconds.
    pub duration_ms: u64,
    /// `duration − upstream_service_time`, in milliseconds, when the upstream time is known.
    pub latency_ms: Option<u64>,
    /// Bytes received from the client.
    pub bytes_in: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
}

/// Sums over the requests of one record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    count: u64,
    bytes_in: u64,
    bytes_out: u64,
    duration_sum_ms: u64,
    duration_max_ms: u64,
    latency_sum_ms: u64,
    latency_count: u64,
}

impl Totals {
    fn add(&mut self, m: Measure) {
        self.count += 1;
        self.bytes_in = self.bytes_in.saturating_add(m.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(m.bytes_out);
        self.duration_sum_ms = self.duration_sum_ms.saturating_add(m.duration_ms);
        self.duration_max_ms = self.duration_max_ms.max(m.duration_ms);
        if let Some(latency) = m.latency_ms {
            self.latency_sum_ms = self.latency_sum_ms.saturating_add(latency);
            self.latency_count += 1;
        }
    }
}

/// An interval's bounds, in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    /// When it began.
    pub start: u64,
    /// When it ended.
    pub end: u64,
}

/// One L7 record, serialised as one JSON line: the interval and the measures, then the key's
/// fields, then the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    /// Start of the interval, Unix seconds.
    pub start_time: u64,
    /// End of the interval, Unix seconds.
    pub end_time: u64,
    /// Mean duration, nanoseconds.
    pub duration_mean: u64,
    /// Maximum duration, nanoseconds.
    pub duration_max: u64,
    /// Mean latency (duration − upstream service time), milliseconds.
    pub latency: u64,
    /// Request bytes from the clients.
    pub bytes_in: u64,
    /// Response bytes to the clients.
    pub bytes_out: u64,
    /// Number of requests.
    pub count: u64,
    /// Source, destination, request and protocol: what the requests have in common.
    #[serde(flatten)]
    pub key: Key,
    /// The node that collected the record.
    pub host: String,
}

/// The records of the current interval.
#[derive(Debug)]
pub struct Aggregator {
    max_records: Option<usize>,
    aggregation: Aggregation,
    /// Records in the order their first request was read.
    records: Vec<(Key, Totals)>,
    /// Where each key's record is. Hashed with foldhash, seeded at random per map: a key is
    /// 14 strings, and SipHash over them was the collector's hottest spot.
    index: HashMap<Key, usize, foldhash::fast::RandomState>,
    unlogged: Totals,
}

impl Aggregator {
    /// An empty interval; `max_records` is the `logRequestsPerInterval` cap (`None`: no cap);
    /// Felix's default aggregation.
    pub fn new(max_records: Option<usize>) -> Self {
        Self::with_aggregation(max_records, Aggregation::default())
    }

    /// [`Aggregator::new`] with these `L7LogsFileAggregation*` settings.
    pub fn with_aggregation(max_records: Option<usize>, aggregation: Aggregation) -> Self {
        Self {
            max_records,
            aggregation,
            records: Vec::new(),
            index: HashMap::default(),
            unlogged: Totals::default(),
        }
    }

    /// Adds one request read in this interval (its key as [`crate::collector::request`]
    /// makes it: the aggregation settings are applied here).
    pub fn add(&mut self, mut key: Key, measure: Measure) {
        self.aggregation.apply(&mut key);
        let next = self.records.len();
        let full = self.max_records.is_some_and(|max| next >= max);
        // One hash per request: the entry serves both the look-up and the insertion.
        match self.index.entry(key) {
            std::collections::hash_map::Entry::Occupied(at) => {
                self.records[*at.get()].1.add(measure);
            }
            std::collections::hash_map::Entry::Vacant(_) if full => self.unlogged.add(measure),
            std::collections::hash_map::Entry::Vacant(at) => {
                let mut totals = Totals::default();
                totals.add(measure);
                self.records.push((at.key().clone(), totals));
                at.insert(next);
            }
        }
    }

    /// Requests added since the last [`Aggregator::take`].
    pub fn requests(&self) -> u64 {
        self.records.iter().map(|(_, t)| t.count).sum::<u64>() + self.unlogged.count
    }

    /// Ends the interval: its records (the `unlogged` one last, if any), and an empty
    /// aggregator for the next. An interval without requests has no records.
    pub fn take(&mut self, interval: Interval, host: &str) -> Vec<Record> {
        let records = std::mem::take(&mut self.records);
        self.index.clear();
        let unlogged = std::mem::take(&mut self.unlogged);
        let mut out: Vec<Record> = records
            .into_iter()
            .map(|(key, totals)| record(key, totals, interval, host))
            .collect();
        if unlogged.count > 0 {
            let none = || NONE.to_string();
            let key = Key {
                src_name_aggr: none(),
                src_namespace: none(),
                src_type: none(),
                dest_name_aggr: none(),
                dest_namespace: none(),
                dest_type: none(),
                dest_service_name: none(),
                dest_service_namespace: none(),
                dest_service_port: 0,
                dest_port_num: 0,
                method: none(),
                url: none(),
                response_code: none(),
                user_agent: none(),
                protocol_type: UNLOGGED.into(),
                protocol: none(),
                grpc_status: none(),
                tls_sni: none(),
            };
            out.push(record(key, unlogged, interval, host));
        }
        out
    }
}

const NANOS_PER_MILLI: u128 = 1_000_000;

fn record(key: Key, t: Totals, interval: Interval, host: &str) -> Record {
    let count = u128::from(t.count.max(1));
    let to_u64 = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
    // Rounded to the nearest millisecond; 0 when no request had an upstream time.
    let latency = t
        .latency_sum_ms
        .saturating_add(t.latency_count / 2)
        .checked_div(t.latency_count)
        .unwrap_or(0);
    Record {
        start_time: interval.start,
        end_time: interval.end,
        duration_mean: to_u64(u128::from(t.duration_sum_ms) * NANOS_PER_MILLI / count),
        duration_max: to_u64(u128::from(t.duration_max_ms) * NANOS_PER_MILLI),
        latency,
        bytes_in: t.bytes_in,
        bytes_out: t.bytes_out,
        count: t.count,
        key,
        host: host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const FIRST: Interval = Interval {
        start: 1000,
        end: 1005,
    };

    fn key(url: &str, code: &str) -> Key {
        Key {
            src_name_aggr: "client-6b8d5-*".into(),
            src_namespace: "shop".into(),
            src_type: "wep".into(),
            dest_name_aggr: "web-5f7c9-*".into(),
            dest_namespace: "shop".into(),
            dest_type: "wep".into(),
            dest_service_name: "web".into(),
            dest_service_namespace: "shop".into(),
            dest_service_port: 80,
            dest_port_num: 80,
            method: "GET".into(),
            url: url.into(),
            response_code: code.into(),
            user_agent: "curl/8".into(),
            protocol_type: "http/1.1".into(),
            protocol: "http".into(),
            grpc_status: NONE.into(),
            tls_sni: NONE.into(),
        }
    }

    /// Every field in the key and the URL untouched: what the tests of the cap and the
    /// measures use, so that only what they test varies.
    fn keep_all() -> Aggregation {
        Aggregation {
            http_header_info: Inclusion::Include,
            num_url_path: -1,
            url_char_limit: u32::MAX,
            ..Aggregation::default()
        }
    }

    fn aggregator(max_records: Option<usize>) -> Aggregator {
        Aggregator::with_aggregation(max_records, keep_all())
    }

    fn measure(
        duration_ms: u64,
        upstream_ms: Option<u64>,
        bytes_in: u64,
        bytes_out: u64,
    ) -> Measure {
        Measure {
            duration_ms,
            latency_ms: upstream_ms.map(|u| duration_ms - u),
            bytes_in,
            bytes_out,
        }
    }

    #[test]
    fn repeats_add_up_into_one_record() {
        let mut a = aggregator(None);
        a.add(key("/a", "200"), measure(4, Some(1), 10, 100));
        a.add(key("/a", "200"), measure(10, Some(6), 20, 200));
        a.add(key("/a", "200"), measure(1, None, 0, 300));
        a.add(key("/status/404", "404"), measure(2, Some(1), 0, 50));
        assert_eq!(a.requests(), 4);
        let records = a.take(FIRST, "node-1");
        assert_eq!(records.len(), 2);
        let r = &records[0];
        assert_eq!(
            (r.key.url.as_str(), r.key.response_code.as_str()),
            ("/a", "200")
        );
        assert_eq!(r.count, 3);
        assert_eq!((r.bytes_in, r.bytes_out), (30, 600));
        assert_eq!(r.duration_mean, 5 * MS, "(4 + 10 + 1) / 3 ms");
        assert_eq!(r.duration_max, 10 * MS);
        assert_eq!(
            r.latency, 4,
            "(3 + 4) / 2 ms, rounded; the request without upstream time is left out"
        );
        assert_eq!((r.start_time, r.end_time), (1000, 1005));
        assert_eq!(r.host, "node-1");
        assert_eq!(r.key.protocol_type, "http/1.1");
        let r = &records[1];
        assert_eq!((r.key.url.as_str(), r.count), ("/status/404", 1));
        assert_eq!(
            (r.duration_mean, r.duration_max, r.latency),
            (2 * MS, 2 * MS, 1)
        );
    }

    #[test]
    fn every_key_field_separates_records() {
        let base = key("/a", "200");
        let variants = [
            Key {
                src_name_aggr: "other-*".into(),
                ..base.clone()
            },
            Key {
                dest_service_name: "api".into(),
                ..base.clone()
            },
            Key {
                dest_port_num: 8080,
                ..base.clone()
            },
            Key {
                method: "POST".into(),
                ..base.clone()
            },
            Key {
                url: "/b".into(),
                ..base.clone()
            },
            Key {
                response_code: "500".into(),
                ..base.clone()
            },
            Key {
                user_agent: "wget".into(),
                ..base.clone()
            },
            Key {
                protocol_type: "http/2".into(),
                ..base.clone()
            },
            Key {
                protocol: "grpc".into(),
                ..base.clone()
            },
            Key {
                grpc_status: "5".into(),
                ..base.clone()
            },
            Key {
                tls_sni: "web.shop".into(),
                ..base.clone()
            },
        ];
        let mut a = aggregator(None);
        a.add(base.clone(), Measure::default());
        for k in &variants {
            a.add(k.clone(), Measure::default());
        }
        assert_eq!(a.take(FIRST, "n").len(), variants.len() + 1);
    }

    #[test]
    fn mean_of_no_latency_is_zero() {
        let mut a = aggregator(None);
        a.add(key("/a", "200"), measure(3, None, 0, 0));
        assert_eq!(a.take(FIRST, "n")[0].latency, 0);
    }

    #[test]
    fn the_cap_sums_the_rest_into_one_unlogged_record() {
        let mut a = aggregator(Some(2));
        a.add(key("/a", "200"), measure(1, Some(0), 1, 10));
        a.add(key("/b", "200"), measure(2, Some(0), 2, 20));
        // Past the cap: new keys go to `unlogged`...
        a.add(key("/c", "200"), measure(3, Some(1), 3, 30));
        a.add(key("/d", "500"), measure(5, Some(1), 4, 40));
        a.add(key("/c", "200"), measure(7, Some(1), 5, 50));
        // ...while keys already present keep counting.
        a.add(key("/a", "200"), measure(1, Some(0), 1, 10));
        let records = a.take(FIRST, "n");
        assert_eq!(records.len(), 3);
        assert_eq!((records[0].key.url.as_str(), records[0].count), ("/a", 2));
        assert_eq!((records[1].key.url.as_str(), records[1].count), ("/b", 1));
        let u = &records[2];
        assert_eq!(u.key.protocol_type, UNLOGGED);
        assert_eq!(u.count, 3);
        assert_eq!((u.bytes_in, u.bytes_out), (12, 120));
        assert_eq!((u.duration_mean, u.duration_max), (5 * MS, 7 * MS));
        assert_eq!(u.latency, 4);
        assert_eq!(
            (
                u.key.url.as_str(),
                u.key.method.as_str(),
                u.key.src_name_aggr.as_str()
            ),
            (NONE, NONE, NONE)
        );
        assert_eq!((u.key.dest_service_port, u.key.dest_port_num), (0, 0));
        assert_eq!(
            (u.start_time, u.end_time, u.host.as_str()),
            (1000, 1005, "n")
        );
    }

    #[test]
    fn a_cap_of_one_keeps_the_first_key() {
        let mut a = aggregator(Some(1));
        for _ in 0..5 {
            a.add(key("/a", "200"), Measure::default());
        }
        for _ in 0..3 {
            a.add(key("/status/404", "404"), Measure::default());
        }
        let records = a.take(FIRST, "n");
        let counts: Vec<_> = records
            .iter()
            .map(|r| (r.key.url.as_str(), r.key.protocol_type.as_str(), r.count))
            .collect();
        assert_eq!(counts, [("/a", "http/1.1", 5), (NONE, UNLOGGED, 3)]);
    }

    #[test]
    fn no_unlogged_record_under_the_cap() {
        let mut a = aggregator(Some(2));
        a.add(key("/a", "200"), Measure::default());
        a.add(key("/a", "200"), Measure::default());
        let records = a.take(FIRST, "n");
        assert_eq!(records.len(), 1);
        assert!(records.iter().all(|r| r.key.protocol_type != UNLOGGED));
    }

    #[test]
    fn intervals_are_separate_and_the_cap_applies_to_each() {
        let mut a = aggregator(Some(1));
        a.add(key("/a", "200"), Measure::default());
        a.add(key("/b", "200"), Measure::default());
        let first = a.take(FIRST, "n");
        assert_eq!(first.len(), 2);
        assert_eq!(a.requests(), 0, "taking empties it");
        // The next interval starts where the first ended, with a fresh cap.
        let second_interval = Interval {
            start: FIRST.end,
            end: 1010,
        };
        a.add(key("/b", "200"), Measure::default());
        a.add(key("/b", "200"), Measure::default());
        let second = a.take(second_interval, "n");
        assert_eq!(
            second.len(),
            1,
            "/b has a record of its own now: {second:?}"
        );
        assert_eq!((second[0].key.url.as_str(), second[0].count), ("/b", 2));
        assert_eq!((second[0].start_time, second[0].end_time), (1005, 1010));
        assert!(
            a.take(
                Interval {
                    start: 1010,
                    end: 1015
                },
                "n"
            )
            .is_empty(),
            "nothing read, nothing emitted"
        );
    }

    #[test]
    fn records_serialise_with_the_reference_field_names_in_order() {
        let mut a = aggregator(None);
        a.add(key("/a", "200"), measure(2, Some(1), 5, 6));
        let json = serde_json::to_string(&a.take(FIRST, "node-1")[0]).unwrap();
        let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&json)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let mut expected = vec![
            "start_time",
            "end_time",
            "duration_mean",
            "duration_max",
            "latency",
            "bytes_in",
            "bytes_out",
            "count",
            "src_name_aggr",
            "src_namespace",
            "src_type",
            "dest_name_aggr",
            "dest_namespace",
            "dest_type",
            "dest_service_name",
            "dest_service_namespace",
            "dest_service_port",
            "dest_port_num",
            "method",
            "user_agent",
            "url",
            "response_code",
            "type",
            "protocol",
            "grpc_status",
            "tls_sni",
            "host",
        ];
        // serde_json's map is sorted; the order on the line is checked below.
        expected.sort_unstable();
        let mut names_sorted = names.clone();
        names_sorted.sort_unstable();
        assert_eq!(names_sorted, expected);
        assert!(
            json.starts_with(r#"{"start_time":1000,"end_time":1005,"duration_mean":2000000,"#),
            "{json}"
        );
        assert!(
            json.ends_with(
                r#""response_code":"200","type":"http/1.1","protocol":"http","grpc_status":"-","tls_sni":"-","host":"node-1"}"#
            ),
            "{json}"
        );
    }

    /// The key of a request to `url` after `aggregation`.
    fn applied(aggregation: Aggregation, url: &str) -> Key {
        let mut k = key(url, "200");
        aggregation.apply(&mut k);
        k
    }

    #[test]
    fn felix_defaults_leave_the_user_agent_out_and_trim_the_url() {
        let mut a = Aggregator::new(None);
        let mut wget = key("web.shop/a/b/c/d/e/f/g?token=secret", "200");
        wget.user_agent = "wget".into();
        a.add(key("web.shop/a/b/c/d/e/x?q=1", "200"), Measure::default());
        a.add(wget, Measure::default());
        let records = a.take(FIRST, "n");
        let keys: Vec<_> = records
            .iter()
            .map(|r| (r.key.url.as_str(), r.key.user_agent.as_str(), r.count))
            .collect();
        assert_eq!(
            keys,
            [("web.shop/a/b/c/d/e", NONE, 2)],
            "5 path segments, no query string, no user agent: one record"
        );
        assert_eq!(records[0].key.protocol_type, NONE, "Felix blanks type too");
        assert_eq!(records[0].key.method, "GET");
        assert_eq!(records[0].key.response_code, "200");
        assert_eq!(records[0].key.src_name_aggr, "client-6b8d5-*");
        assert_eq!(records[0].key.dest_service_port, 80);
        assert_eq!(records[0].key.protocol, "http", "not a header: kept");
    }

    #[test]
    fn http_header_info_included_keeps_user_agent_and_type() {
        let k = applied(
            Aggregation {
                http_header_info: Inclusion::Include,
                ..Aggregation::default()
            },
            "/a",
        );
        assert_eq!(
            (k.user_agent.as_str(), k.protocol_type.as_str()),
            ("curl/8", "http/1.1")
        );
    }

    #[test]
    fn each_exclusion_blanks_its_fields() {
        let exclude = Inclusion::Exclude;
        let k = applied(
            Aggregation {
                http_method: exclude,
                ..Aggregation::default()
            },
            "/a",
        );
        assert_eq!((k.method.as_str(), k.url.as_str()), (NONE, "/a"));

        let k = applied(
            Aggregation {
                service_info: exclude,
                ..Aggregation::default()
            },
            "/a",
        );
        assert_eq!(
            (
                k.dest_service_name.as_str(),
                k.dest_service_namespace.as_str(),
                k.dest_service_port
            ),
            (NONE, NONE, 0)
        );
        assert_eq!(
            (k.dest_name_aggr.as_str(), k.dest_port_num),
            ("web-5f7c9-*", 80)
        );

        let k = applied(
            Aggregation {
                destination_info: exclude,
                ..Aggregation::default()
            },
            "/a",
        );
        assert_eq!(
            (
                k.dest_name_aggr.as_str(),
                k.dest_namespace.as_str(),
                k.dest_type.as_str(),
                k.dest_port_num
            ),
            (NONE, NONE, NONE, 0)
        );
        assert_eq!(
            (k.dest_service_name.as_str(), k.dest_service_port),
            ("web", 80)
        );

        let k = applied(
            Aggregation {
                source_info: exclude,
                ..Aggregation::default()
            },
            "/a",
        );
        assert_eq!(
            (
                k.src_name_aggr.as_str(),
                k.src_namespace.as_str(),
                k.src_type.as_str()
            ),
            (NONE, NONE, NONE)
        );
        assert_eq!(k.dest_name_aggr, "web-5f7c9-*");

        let mut grpc = key("/svc/Call", "200");
        grpc.grpc_status = "5".into();
        Aggregation {
            response_code: exclude,
            ..Aggregation::default()
        }
        .apply(&mut grpc);
        assert_eq!(
            (grpc.response_code.as_str(), grpc.grpc_status.as_str()),
            (NONE, NONE)
        );
    }

    #[test]
    fn excluded_fields_merge_records() {
        let mut a = Aggregator::with_aggregation(
            None,
            Aggregation {
                response_code: Inclusion::Exclude,
                ..Aggregation::default()
            },
        );
        a.add(key("/a", "200"), Measure::default());
        a.add(key("/a", "500"), Measure::default());
        let records = a.take(FIRST, "n");
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].key.response_code.as_str(), records[0].count),
            (NONE, 2)
        );
    }

    #[test]
    fn trim_url_settings() {
        let url = "web.shop/a/b/c/d/e/f?x=1";
        let with = |trim_url| Aggregation {
            trim_url,
            ..Aggregation::default()
        };
        assert_eq!(
            applied(with(TrimUrl::IncludeFullUrl), url).url,
            "web.shop/a/b/c/d/e"
        );
        assert_eq!(
            applied(with(TrimUrl::TrimQuery), url).url,
            "web.shop/a/b/c/d/e/f"
        );
        assert_eq!(
            applied(with(TrimUrl::TrimQueryAndPath), url).url,
            "web.shop"
        );
        assert_eq!(applied(with(TrimUrl::Exclude), url).url, NONE);
        // Without an authority, trimming the path leaves nothing.
        assert_eq!(applied(with(TrimUrl::TrimQueryAndPath), "/a?x").url, NONE);
        // A CONNECT has an authority and no path.
        assert_eq!(
            applied(with(TrimUrl::IncludeFullUrl), "10.0.0.1:443").url,
            "10.0.0.1:443"
        );
    }

    #[test]
    fn num_url_path_counts_segments_and_negative_keeps_everything() {
        let with = |num_url_path| Aggregation {
            num_url_path,
            ..Aggregation::default()
        };
        assert_eq!(applied(with(2), "h/a/b/c?x=1").url, "h/a/b");
        assert_eq!(applied(with(0), "h/a/b?x=1").url, "h");
        assert_eq!(
            applied(with(2), "h/a/b/").url,
            "h/a/b",
            "as Felix: a trailing slash goes"
        );
        assert_eq!(
            applied(with(3), "h/a/b?x=1").url,
            "h/a/b",
            "fewer: whole path, no query"
        );
        assert_eq!(
            applied(with(-1), "h/a/b/c/d/e/f/g?x=1").url,
            "h/a/b/c/d/e/f/g?x=1"
        );
    }

    #[test]
    fn url_char_limit_cuts_the_path_then_the_authority() {
        let with = |url_char_limit| Aggregation {
            url_char_limit,
            ..Aggregation::default()
        };
        assert_eq!(applied(with(10), "web.shop/abcdef").url, "web.shop/a");
        assert_eq!(applied(with(4), "web.shop/abcdef").url, "web.");
        assert_eq!(applied(with(250), "web.shop/abcdef").url, "web.shop/abcdef");
        let long = format!("h/{}", "x".repeat(400));
        assert_eq!(applied(Aggregation::default(), &long).url.len(), 250);
        // Never in the middle of a character.
        assert_eq!(applied(with(3), "h/é").url, "h/");
    }
}
