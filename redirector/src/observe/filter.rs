//! `redirector observe`'s filters, with Hubble's grammar (`hubble observe`): a flag given
//! several times matches any of its values (OR), different flags must all match (AND), and
//! `--not` turns the filter flag right after it into an exclusion; the exclusions combine the
//! same way among themselves, and a request they match is left out. Pure.

use std::fmt;

use regex::Regex;
use thiserror::Error;

use super::flow::Flow;

/// The filter flags, in the order `--help` lists them.
pub const FLAGS: [&str; 8] = [
    "--http-status",
    "--http-method",
    "--http-path",
    "--from-pod",
    "--to-pod",
    "--from-service",
    "--to-service",
    "--namespace",
];

/// Why a filter does not parse.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FilterError {
    /// A filter flag without a value.
    #[error("{flag} needs a value")]
    MissingValue {
        /// The flag.
        flag: String,
    },
    /// A value the flag cannot use.
    #[error("{flag} {value:?}: {why}")]
    BadValue {
        /// The flag.
        flag: String,
        /// Its value.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// `--not` not followed by a filter flag.
    #[error("--not must come right before a filter flag ({})", FLAGS.join(", "))]
    DanglingNot,
}

/// An HTTP status, or a prefix of one: `404`, `5+` (every 5xx), `40+` (400 to 409).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPattern {
    digits: String,
    prefix: bool,
}

impl StatusPattern {
    fn parse(text: &str) -> Result<Self, String> {
        let (digits, prefix) = match text.strip_suffix('+') {
            Some(d) => (d, true),
            None => (text, false),
        };
        let ok_len = if prefix {
            (1..=3).contains(&digits.len())
        } else {
            digits.len() == 3
        };
        if !ok_len || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("expected a status code such as 404, or a prefix such as 5+".into());
        }
        Ok(Self {
            digits: digits.to_string(),
            prefix,
        })
    }

    fn matches(&self, status: u16) -> bool {
        let code = format!("{status:03}");
        if self.prefix {
            code.starts_with(&self.digits)
        } else {
            code == self.digits
        }
    }
}

/// `[namespace/]name`: a namespace, if given, must match exactly; the name is a prefix of the
/// Pod's name as L7 records aggregate it (`web-5f7c9-*`: the owner's name), or an exact
/// Service name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    namespace: Option<String>,
    name: String,
}

impl NamePattern {
    fn parse(text: &str) -> Result<Self, String> {
        let (namespace, name) = match text.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, text),
        };
        if name.is_empty() || namespace.is_some_and(str::is_empty) {
            return Err("expected NAME or NAMESPACE/NAME".into());
        }
        Ok(Self {
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        })
    }

    fn namespace_ok(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }
}

/// One filter.
#[derive(Debug, Clone)]
pub enum Condition {
    /// `--http-status`.
    HttpStatus(StatusPattern),
    /// `--http-method`, case-insensitive.
    HttpMethod(String),
    /// `--http-path`, a regular expression searched in the path (query string included).
    HttpPath(Regex),
    /// `--from-pod`.
    FromPod(NamePattern),
    /// `--to-pod`.
    ToPod(NamePattern),
    /// `--from-service`: the client is one of the Service's endpoints.
    FromService(NamePattern),
    /// `--to-service`.
    ToService(NamePattern),
    /// `--namespace`: either end is in it.
    Namespace(String),
}

impl Condition {
    /// Parses `value` for `flag` (one of [`FLAGS`]); `None` for any other flag.
    fn parse(flag: &str, value: &str) -> Option<Result<Self, FilterError>> {
        let bad = |why: String| FilterError::BadValue {
            flag: flag.to_string(),
            value: value.to_string(),
            why,
        };
        Some(match flag {
            "--http-status" => StatusPattern::parse(value)
                .map(Self::HttpStatus)
                .map_err(bad),
            "--http-method" if value.is_empty() => Err(bad("empty".into())),
            "--http-method" => Ok(Self::HttpMethod(value.to_ascii_uppercase())),
            "--http-path" => Regex::new(value)
                .map(Self::HttpPath)
                .map_err(|e| bad(e.to_string())),
            "--from-pod" => NamePattern::parse(value).map(Self::FromPod).map_err(bad),
            "--to-pod" => NamePattern::parse(value).map(Self::ToPod).map_err(bad),
            "--from-service" => NamePattern::parse(value)
                .map(Self::FromService)
                .map_err(bad),
            "--to-service" => NamePattern::parse(value).map(Self::ToService).map_err(bad),
            "--namespace" if value.is_empty() => Err(bad("empty".into())),
            "--namespace" => Ok(Self::Namespace(value.to_string())),
            _ => return None,
        })
    }

    /// Which flag it came from: conditions of one flag are OR-ed.
    fn kind(&self) -> usize {
        match self {
            Self::HttpStatus(_) => 0,
            Self::HttpMethod(_) => 1,
            Self::HttpPath(_) => 2,
            Self::FromPod(_) => 3,
            Self::ToPod(_) => 4,
            Self::FromService(_) => 5,
            Self::ToService(_) => 6,
            Self::Namespace(_) => 7,
        }
    }

    fn matches(&self, flow: &Flow) -> bool {
        match self {
            Self::HttpStatus(p) => flow.is_http() && p.matches(flow.status),
            Self::HttpMethod(m) => flow.method.as_deref().is_some_and(|fm| fm == m),
            Self::HttpPath(re) => flow.path.as_deref().is_some_and(|p| re.is_match(p)),
            Self::FromPod(p) => flow
                .source_pod()
                .is_some_and(|(ns, name)| p.namespace_ok(ns) && name.starts_with(&p.name)),
            Self::ToPod(p) => flow
                .destination_pod()
                .is_some_and(|(ns, name)| p.namespace_ok(ns) && name.starts_with(&p.name)),
            Self::FromService(p) => flow
                .source_services
                .iter()
                .any(|s| p.namespace_ok(&s.namespace) && s.name == p.name),
            Self::ToService(p) => flow
                .service()
                .is_some_and(|(ns, name)| p.namespace_ok(ns) && name == p.name),
            Self::Namespace(ns) => flow.namespaces().contains(&ns.as_str()),
        }
    }
}

/// Conditions grouped by flag: every group must have a matching condition.
#[derive(Debug, Clone, Default)]
struct Groups(Vec<Vec<Condition>>);

impl Groups {
    fn add(&mut self, c: Condition) {
        match self.0.iter_mut().find(|g| g[0].kind() == c.kind()) {
            Some(group) => group.push(c),
            None => self.0.push(vec![c]),
        }
    }

    fn matches(&self, flow: &Flow) -> bool {
        self.0.iter().all(|g| g.iter().any(|c| c.matches(flow)))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The filters of one `observe` command line.
#[derive(Debug, Clone, Default)]
pub struct FilterSet {
    include: Groups,
    exclude: Groups,
}

impl FilterSet {
    /// Reads the filter flags from `args` (the command line after `observe`, in order; other
    /// flags and their values are skipped, `--flag value` and `--flag=value` alike).
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Self, FilterError> {
        let mut set = Self::default();
        let mut negate = false;
        let mut i = 0;
        while i < args.len() {
            let arg = args[i].as_ref();
            i += 1;
            if arg == "--not" {
                if negate {
                    return Err(FilterError::DanglingNot);
                }
                negate = true;
                continue;
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v)),
                _ => (arg, None),
            };
            if !FLAGS.contains(&flag) {
                if negate {
                    return Err(FilterError::DanglingNot);
                }
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => {
                    let v = args.get(i).map(AsRef::as_ref).ok_or_else(|| {
                        FilterError::MissingValue {
                            flag: flag.to_string(),
                        }
                    })?;
                    i += 1;
                    v
                }
            };
            let condition = Condition::parse(flag, value).unwrap_or_else(|| {
                unreachable!("FLAGS and Condition::parse name the same flags")
            })?;
            if std::mem::take(&mut negate) {
                set.exclude.add(condition);
            } else {
                set.include.add(condition);
            }
        }
        if negate {
            return Err(FilterError::DanglingNot);
        }
        Ok(set)
    }

    /// Whether `flow` passes.
    pub fn matches(&self, flow: &Flow) -> bool {
        self.include.matches(flow) && (self.exclude.is_empty() || !self.exclude.matches(flow))
    }
}

impl fmt::Display for StatusPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.digits, if self.prefix { "+" } else { "" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::flow::tests::{flow, tcp_flow};

    fn set(args: &[&str]) -> FilterSet {
        FilterSet::parse(args).unwrap()
    }

    #[test]
    fn status_patterns_are_codes_or_prefixes() {
        let p = |t| StatusPattern::parse(t).unwrap();
        assert!(p("5+").matches(503) && p("5+").matches(500) && !p("5+").matches(404));
        assert!(p("40+").matches(404) && !p("40+").matches(410));
        assert!(p("200").matches(200) && !p("200").matches(201));
        for bad in ["", "+", "5", "5000", "abc", "2x+", "1234+"] {
            assert!(StatusPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn one_flag_twice_is_or_two_flags_are_and() {
        let ok = flow("GET", "/a", 200);
        let err = flow("POST", "/b", 503);
        let s = set(&["--http-status", "5+", "--http-status", "200"]);
        assert!(s.matches(&ok) && s.matches(&err));
        let s = set(&["--http-status", "5+", "--http-method", "get"]);
        assert!(!s.matches(&ok) && !s.matches(&err));
        let s = set(&["--http-status=5+", "--http-method=POST"]);
        assert!(s.matches(&err) && !s.matches(&ok));
    }

    #[test]
    fn not_excludes_the_next_filter_only() {
        let ok = flow("GET", "/a", 200);
        let err = flow("GET", "/b", 503);
        let s = set(&["--not", "--http-status", "5+"]);
        assert!(s.matches(&ok) && !s.matches(&err));
        let s = set(&["--not", "--http-status", "5+", "--http-path", "^/b"]);
        assert!(!s.matches(&ok), "--http-path is not negated");
        assert!(!s.matches(&err), "excluded by status");
        // Exclusions combine like inclusions: only what matches all of them is left out.
        let s = set(&[
            "--not",
            "--http-status",
            "5+",
            "--not",
            "--http-path",
            "^/a",
        ]);
        assert!(s.matches(&ok) && s.matches(&err));
        let s = set(&[
            "--not",
            "--http-status",
            "5+",
            "--not",
            "--http-path",
            "^/b",
        ]);
        assert!(s.matches(&ok) && !s.matches(&err));
    }

    #[test]
    fn names_and_namespaces_match_both_ends() {
        let f = flow("GET", "/a", 200);
        assert!(set(&["--from-pod", "shop/client"]).matches(&f));
        assert!(set(&["--from-pod", "client"]).matches(&f));
        assert!(!set(&["--from-pod", "other/client"]).matches(&f));
        assert!(set(&["--to-pod", "shop/web"]).matches(&f));
        assert!(set(&["--to-service", "shop/web"]).matches(&f));
        assert!(set(&["--from-service", "shop/client"]).matches(&f));
        assert!(!set(&["--from-service", "shop/web"]).matches(&f));
        assert!(
            !set(&["--to-service", "we"]).matches(&f),
            "services match whole names"
        );
        assert!(set(&["--namespace", "shop"]).matches(&f));
        assert!(!set(&["--namespace", "kube-system"]).matches(&f));
    }

    #[test]
    fn http_filters_leave_tcp_connections_out() {
        let t = tcp_flow();
        assert!(!set(&["--http-status", "2+"]).matches(&t));
        assert!(!set(&["--http-method", "GET"]).matches(&t));
        assert!(set(&["--not", "--http-status", "2+"]).matches(&t));
        assert!(set(&[]).matches(&t));
    }

    #[test]
    fn other_flags_and_their_values_are_skipped() {
        let s = set(&[
            "--output",
            "json",
            "--last",
            "5",
            "--follow",
            "--http-status",
            "200",
        ]);
        assert!(s.matches(&flow("GET", "/", 200)) && !s.matches(&flow("GET", "/", 404)));
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        let e = |args: &[&str]| FilterSet::parse(args).unwrap_err();
        assert_eq!(
            e(&["--http-status"]),
            FilterError::MissingValue {
                flag: "--http-status".into()
            }
        );
        assert!(matches!(
            e(&["--http-status", "5xx"]),
            FilterError::BadValue { .. }
        ));
        assert!(matches!(
            e(&["--http-path", "("]),
            FilterError::BadValue { .. }
        ));
        assert!(matches!(
            e(&["--from-pod", "shop/"]),
            FilterError::BadValue { .. }
        ));
        assert_eq!(e(&["--not"]), FilterError::DanglingNot);
        assert_eq!(e(&["--not", "--follow"]), FilterError::DanglingNot);
        assert_eq!(
            e(&["--not", "--not", "--http-status", "200"]),
            FilterError::DanglingNot
        );
        assert!(e(&["--not"]).to_string().contains("--http-status"));
    }
}
