//! What the collector is asked to do: the user guide's `logCollection` settings, from flags or
//! from an `ApplicationLayer` manifest (`operator.tigera.io/v1`, `spec.logCollection`), as
//! users of the reference product write it:
//!
//! ```yaml
//! apiVersion: operator.tigera.io/v1
//! kind: ApplicationLayer
//! metadata: {name: tigera-secure}
//! spec:
//!   logCollection:
//!     collectLogs: Enabled          # or Disabled: emit nothing
//!     logIntervalSeconds: 5         # at least 1
//!     logRequestsPerInterval: -1    # -1: no cap; else at least 1
//! ```
//!
//! A setting comes from the flag if one is given, else from the file, else from the default
//! above (so a file without `logCollection` means "enabled, every 5 s, no cap"). Values are
//! checked the same way whatever their origin, and a wrong one is an error that names the
//! field, never a silent fallback. Unknown keys under `logCollection` are errors too (a typo
//! there would otherwise be a setting quietly not applied); other parts of the manifest, such
//! as `sidecarInjection`, are not the collector's business and are ignored.
//!
//! What makes up a record's key is the reference product's Felix setting, not the
//! `ApplicationLayer`'s: [`Aggregation`] holds Felix's `L7LogsFileAggregation*` settings with
//! Felix's names, values and defaults (given as flags; applied in
//! [`super::aggregate`]). Pure.

use std::{fmt, num::NonZeroU32, time::Duration};

use serde_json::Value;

use crate::k8s::yaml;

/// `logIntervalSeconds` when nothing says otherwise.
pub const DEFAULT_INTERVAL_SECONDS: u32 = 5;

/// The `apiVersion` of the `ApplicationLayer` resource.
pub const API_VERSION: &str = "operator.tigera.io/v1";
/// The `kind` read from `--application-layer`.
pub const KIND: &str = "ApplicationLayer";
/// The name the user guide gives the resource; preferred when a file holds several.
pub const DEFAULT_NAME: &str = "tigera-secure";

/// Why a setting or the file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `collectLogs` is neither `Enabled` nor `Disabled`.
    #[error("collectLogs must be Enabled or Disabled, not {0}")]
    CollectLogs(String),
    /// `logIntervalSeconds` is not a whole number of seconds of at least 1.
    #[error("logIntervalSeconds must be a whole number of seconds, at least 1, not {0}")]
    Interval(String),
    /// `logRequestsPerInterval` is neither -1 nor a whole number of at least 1.
    #[error("logRequestsPerInterval must be -1 (no cap) or a whole number of at least 1, not {0}")]
    RequestLimit(String),
    /// A key under `spec.logCollection` that the resource does not define.
    #[error(
        "unknown field spec.logCollection.{0} (known: collectLogs, logIntervalSeconds, \
         logRequestsPerInterval)"
    )]
    UnknownField(String),
    /// The file is not a usable `ApplicationLayer` manifest.
    #[error("{0}")]
    Manifest(String),
    /// An `L7LogsFileAggregation*` setting with a value Felix does not define.
    #[error("{setting} must be one of {expected}, not {value}")]
    Aggregation {
        /// Felix's name of the setting.
        setting: &'static str,
        /// What was given.
        value: String,
        /// What it may be.
        expected: String,
    },
}

/// `collectLogs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CollectLogs {
    /// Aggregate and emit records.
    #[default]
    Enabled,
    /// Emit nothing.
    Disabled,
}

impl fmt::Display for CollectLogs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Enabled => "Enabled",
            Self::Disabled => "Disabled",
        })
    }
}

/// `logRequestsPerInterval`: how many distinct records one interval may hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RequestLimit {
    /// `-1`: no cap.
    #[default]
    Unlimited,
    /// At most this many distinct records; requests past it are summed into one `unlogged`
    /// record.
    AtMost(NonZeroU32),
}

impl RequestLimit {
    /// The cap as a count, `None` for no cap.
    pub fn max_records(self) -> Option<usize> {
        match self {
            Self::Unlimited => None,
            Self::AtMost(n) => usize::try_from(n.get()).ok(),
        }
    }
}

impl fmt::Display for RequestLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unlimited => f.write_str("-1"),
            Self::AtMost(n) => write!(f, "{n}"),
        }
    }
}

/// The settings in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogCollection {
    /// Whether to emit anything at all.
    pub collect_logs: CollectLogs,
    /// The aggregation interval, in seconds.
    pub interval_seconds: NonZeroU32,
    /// The cap on distinct records per interval.
    pub requests_per_interval: RequestLimit,
    /// Which fields make up a record's key (Felix's `L7LogsFileAggregation*`).
    pub aggregation: Aggregation,
}

impl Default for LogCollection {
    fn default() -> Self {
        Self {
            collect_logs: CollectLogs::Enabled,
            interval_seconds: NonZeroU32::new(DEFAULT_INTERVAL_SECONDS).unwrap_or(NonZeroU32::MIN),
            requests_per_interval: RequestLimit::Unlimited,
            aggregation: Aggregation::default(),
        }
    }
}

/// Whether a group of fields is part of the records' key; excluded fields are written as
/// `-` (or 0 for ports), so requests that differ only there share a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inclusion {
    /// Kept in the key.
    Include,
    /// Written as `-` and left out of the key.
    Exclude,
}

/// `L7LogsFileAggregationTrimURL`: how much of the URL (`authority` + path) a record keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrimUrl {
    /// `IncludeL7FullURL`: the authority and the path; with `NumURLPath` of 0 or more the
    /// query string is dropped and the path cut to that many segments (Felix does the same).
    #[default]
    IncludeFullUrl,
    /// `TrimURLQuery`: the authority and the whole path, without query string.
    TrimQuery,
    /// `TrimURLQueryAndPath`: the authority only.
    TrimQueryAndPath,
    /// `ExcludeL7URL`: no URL (`-`).
    Exclude,
}

/// Felix's L7 aggregation settings (`FelixConfiguration` `L7LogsFileAggregation*`), with
/// Felix's defaults: everything in the key but the HTTP header info (`user_agent`, and with it
/// `type`, as Felix does), the URL cut to 5 path segments and 250 characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aggregation {
    /// `L7LogsFileAggregationHTTPHeaderInfo` (`IncludeL7HTTPHeaderInfo`,
    /// `ExcludeL7HTTPHeaderInfo`): `user_agent` and `type`.
    pub http_header_info: Inclusion,
    /// `L7LogsFileAggregationHTTPMethod` (`IncludeL7HTTPMethod`, `ExcludeL7HTTPMethod`).
    pub http_method: Inclusion,
    /// `L7LogsFileAggregationServiceInfo` (`IncludeL7ServiceInfo`, `ExcludeL7ServiceInfo`):
    /// `dest_service_name`, `dest_service_namespace`, `dest_service_port`.
    pub service_info: Inclusion,
    /// `L7LogsFileAggregationDestinationInfo` (`IncludeL7DestinationInfo`,
    /// `ExcludeL7DestinationInfo`): `dest_name_aggr`, `dest_namespace`, `dest_type`,
    /// `dest_port_num`.
    pub destination_info: Inclusion,
    /// `L7LogsFileAggregationSourceInfo` (`IncludeL7SourceInfoNoPort`, the default,
    /// `IncludeL7SourceInfo`, `ExcludeL7SourceInfo`): `src_name_aggr`, `src_namespace`,
    /// `src_type`. Records never carry the source port, so both `Include` values mean the same.
    pub source_info: Inclusion,
    /// `L7LogsFileAggregationResponseCode` (`IncludeL7ResponseCode`,
    /// `ExcludeL7ResponseCode`): `response_code`, and `grpc_status`, the other status of a
    /// response.
    pub response_code: Inclusion,
    /// `L7LogsFileAggregationTrimURL`.
    pub trim_url: TrimUrl,
    /// `L7LogsFileAggregationNumURLPath`: with `IncludeL7FullURL`, at most this many path
    /// segments; negative: the path as sent, query string included.
    pub num_url_path: i32,
    /// `L7LogsFileAggregationURLCharLimit`: at most this many bytes of authority and path
    /// together (the path is cut first).
    pub url_char_limit: u32,
}

/// `L7LogsFileAggregationNumURLPath` when nothing says otherwise.
pub const DEFAULT_NUM_URL_PATH: i32 = 5;
/// `L7LogsFileAggregationURLCharLimit` when nothing says otherwise.
pub const DEFAULT_URL_CHAR_LIMIT: u32 = 250;

impl Default for Aggregation {
    fn default() -> Self {
        Self {
            http_header_info: Inclusion::Exclude,
            http_method: Inclusion::Include,
            service_info: Inclusion::Include,
            destination_info: Inclusion::Include,
            source_info: Inclusion::Include,
            response_code: Inclusion::Include,
            trim_url: TrimUrl::IncludeFullUrl,
            num_url_path: DEFAULT_NUM_URL_PATH,
            url_char_limit: DEFAULT_URL_CHAR_LIMIT,
        }
    }
}

/// A Felix setting that takes an `Include…`/`Exclude…` value.
struct Knob {
    setting: &'static str,
    include: &'static [&'static str],
    exclude: &'static str,
}

impl Knob {
    fn parse(&self, text: &str) -> Result<Inclusion, ConfigError> {
        let t = text.trim();
        if self.include.contains(&t) {
            Ok(Inclusion::Include)
        } else if t == self.exclude {
            Ok(Inclusion::Exclude)
        } else {
            let mut known = self.include.to_vec();
            known.push(self.exclude);
            Err(ConfigError::Aggregation {
                setting: self.setting,
                value: format!("{text:?}"),
                expected: known.join(", "),
            })
        }
    }
}

/// `L7LogsFileAggregationHTTPHeaderInfo`.
pub fn parse_http_header_info(text: &str) -> Result<Inclusion, ConfigError> {
    Knob {
        setting: "L7LogsFileAggregationHTTPHeaderInfo",
        include: &["IncludeL7HTTPHeaderInfo"],
        exclude: "ExcludeL7HTTPHeaderInfo",
    }
    .parse(text)
}

/// `L7LogsFileAggregationHTTPMethod`.
pub fn parse_http_method(text: &str) -> Result<Inclusion, ConfigError> {
    Knob {
        setting: "L7LogsFileAggregationHTTPMethod",
        include: &["IncludeL7HTTPMethod"],
        exclude: "ExcludeL7HTTPMethod",
    }
    .parse(text)
}

/// `L7LogsFileAggregationServiceInfo`.
pub fn parse_service_info(text: &str) -> Result<Inclusion, ConfigError> {
    Knob {
        setting: "L7LogsFileAggregationServiceInfo",
        include: &["IncludeL7ServiceInfo"],
        exclude: "ExcludeL7ServiceInfo",
    }
    .parse(text)
}

/// `L7LogsFileAggregationDestinationInfo`.
pub fn parse_destination_info(text: &str) -> Result<Inclusion, ConfigError> {
    Knob {
        setting: "L7LogsFileAggregationDestinationInfo",
        include: &["IncludeL7DestinationInfo"],
        exclude: "ExcludeL7DestinationInfo",
    }
    .parse(text)
}

/// `L7LogsFileAggregationSourceInfo`.
pub fn parse_source_info(text: &str) -> Result<Inclusion, ConfigError> {
    Knob {
        setting: "L7LogsFileAggregationSourceInfo",
        include: &["IncludeL7SourceInfoNoPort", "IncludeL7SourceInfo"],
        exclude: "ExcludeL7SourceInfo",
    }
    .parse(text)
}

/// `L7LogsFileAggregationResponseCode`.
pub fn parse_response_code(text: &str) -> Result<Inclusion, ConfigError> {
    Knob {
        setting: "L7LogsFileAggregationResponseCode",
        include: &["IncludeL7ResponseCode"],
        exclude: "ExcludeL7ResponseCode",
    }
    .parse(text)
}

/// `L7LogsFileAggregationTrimURL`.
pub fn parse_trim_url(text: &str) -> Result<TrimUrl, ConfigError> {
    match text.trim() {
        "IncludeL7FullURL" => Ok(TrimUrl::IncludeFullUrl),
        "TrimURLQuery" => Ok(TrimUrl::TrimQuery),
        "TrimURLQueryAndPath" => Ok(TrimUrl::TrimQueryAndPath),
        "ExcludeL7URL" => Ok(TrimUrl::Exclude),
        _ => Err(ConfigError::Aggregation {
            setting: "L7LogsFileAggregationTrimURL",
            value: format!("{text:?}"),
            expected: "IncludeL7FullURL, TrimURLQuery, TrimURLQueryAndPath, ExcludeL7URL".into(),
        }),
    }
}

/// `L7LogsFileAggregationNumURLPath`: a whole number; negative for no limit.
pub fn parse_num_url_path(text: &str) -> Result<i32, ConfigError> {
    text.trim().parse().map_err(|_| ConfigError::Aggregation {
        setting: "L7LogsFileAggregationNumURLPath",
        value: format!("{text:?}"),
        expected: "a whole number (negative: no limit)".into(),
    })
}

/// `L7LogsFileAggregationURLCharLimit`: a whole number of at least 0.
pub fn parse_url_char_limit(text: &str) -> Result<u32, ConfigError> {
    text.trim().parse().map_err(|_| ConfigError::Aggregation {
        setting: "L7LogsFileAggregationURLCharLimit",
        value: format!("{text:?}"),
        expected: "a whole number of at least 0".into(),
    })
}

impl LogCollection {
    /// The aggregation interval.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.interval_seconds.get()))
    }
}

/// Settings some source gives; `None` leaves the setting to the next source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `collectLogs`.
    pub collect_logs: Option<CollectLogs>,
    /// `logIntervalSeconds`.
    pub interval_seconds: Option<NonZeroU32>,
    /// `logRequestsPerInterval`.
    pub requests_per_interval: Option<RequestLimit>,
}

/// The settings in force: each from `flags` if set there, else from `file`, else the default.
pub fn resolve(flags: Settings, file: Option<Settings>) -> LogCollection {
    let file = file.unwrap_or_default();
    let default = LogCollection::default();
    LogCollection {
        aggregation: default.aggregation,
        collect_logs: flags
            .collect_logs
            .or(file.collect_logs)
            .unwrap_or(default.collect_logs),
        interval_seconds: flags
            .interval_seconds
            .or(file.interval_seconds)
            .unwrap_or(default.interval_seconds),
        requests_per_interval: flags
            .requests_per_interval
            .or(file.requests_per_interval)
            .unwrap_or(default.requests_per_interval),
    }
}

/// `Enabled` or `Disabled` (the resource's spelling; the lower-case forms are accepted on the
/// command line's behalf).
pub fn parse_collect_logs(text: &str) -> Result<CollectLogs, ConfigError> {
    match text.trim() {
        "Enabled" | "enabled" => Ok(CollectLogs::Enabled),
        "Disabled" | "disabled" => Ok(CollectLogs::Disabled),
        other => Err(ConfigError::CollectLogs(format!("{other:?}"))),
    }
}

/// A whole number of seconds, at least 1.
pub fn parse_interval(text: &str) -> Result<NonZeroU32, ConfigError> {
    text.trim()
        .parse::<u32>()
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| ConfigError::Interval(format!("{text:?}")))
}

/// `-1`, or a whole number of at least 1.
pub fn parse_request_limit(text: &str) -> Result<RequestLimit, ConfigError> {
    match text.trim() {
        "-1" => Ok(RequestLimit::Unlimited),
        t => t
            .parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .map(RequestLimit::AtMost)
            .ok_or_else(|| ConfigError::RequestLimit(format!("{text:?}"))),
    }
}

/// The `spec.logCollection` of the `ApplicationLayer` in `text` (YAML or JSON; one object, a
/// `List`, or a multi-document stream). When several `ApplicationLayer`s are present, the one
/// named `tigera-secure` is used.
pub fn parse_application_layer(text: &str) -> Result<Settings, ConfigError> {
    let mut found = Vec::new();
    let documents = yaml::documents(text).map_err(|e| {
        ConfigError::Manifest(match yaml::describe(&e) {
            (message, Some((line, column))) => format!("line {line}, column {column}: {message}"),
            (message, None) => message,
        })
    })?;
    for value in documents {
        collect_application_layers(value, &mut found);
    }
    let chosen = match found.len() {
        0 => {
            return Err(ConfigError::Manifest(format!(
                "no {KIND} ({API_VERSION}) in the file"
            )));
        }
        1 => found.remove(0),
        _ => {
            let position = found
                .iter()
                .position(|v| {
                    v.pointer("/metadata/name").and_then(Value::as_str) == Some(DEFAULT_NAME)
                })
                .ok_or_else(|| {
                    ConfigError::Manifest(format!(
                        "{} {KIND} objects in the file and none named {DEFAULT_NAME}",
                        found.len()
                    ))
                })?;
            found.swap_remove(position)
        }
    };
    let api_version = chosen.get("apiVersion").and_then(Value::as_str);
    if api_version != Some(API_VERSION) {
        return Err(ConfigError::Manifest(format!(
            "the {KIND} has apiVersion {api_version:?}; expected {API_VERSION}"
        )));
    }
    match chosen.pointer("/spec/logCollection") {
        None | Some(Value::Null) => Ok(Settings::default()),
        Some(Value::Object(fields)) => {
            let mut settings = Settings::default();
            for (key, value) in fields {
                match key.as_str() {
                    "collectLogs" => {
                        let text = value
                            .as_str()
                            .ok_or_else(|| ConfigError::CollectLogs(value.to_string()))?;
                        // The resource's enum is case-sensitive, unlike the flag.
                        settings.collect_logs = Some(match text {
                            "Enabled" => CollectLogs::Enabled,
                            "Disabled" => CollectLogs::Disabled,
                            _ => return Err(ConfigError::CollectLogs(value.to_string())),
                        });
                    }
                    "logIntervalSeconds" => {
                        settings.interval_seconds = Some(
                            whole_number(value)
                                .and_then(|n| u32::try_from(n).ok())
                                .and_then(NonZeroU32::new)
                                .ok_or_else(|| ConfigError::Interval(value.to_string()))?,
                        );
                    }
                    "logRequestsPerInterval" => {
                        let limit = match whole_number(value) {
                            Some(-1) => Some(RequestLimit::Unlimited),
                            Some(n) => u32::try_from(n)
                                .ok()
                                .and_then(NonZeroU32::new)
                                .map(RequestLimit::AtMost),
                            None => None,
                        };
                        settings.requests_per_interval = Some(
                            limit.ok_or_else(|| ConfigError::RequestLimit(value.to_string()))?,
                        );
                    }
                    other => return Err(ConfigError::UnknownField(other.to_string())),
                }
            }
            Ok(settings)
        }
        Some(other) => Err(ConfigError::Manifest(format!(
            "spec.logCollection must be a mapping, not {other}"
        ))),
    }
}

/// An integer JSON number (YAML `5`, not `5.5` nor `"5"`).
fn whole_number(value: &Value) -> Option<i64> {
    value.as_i64()
}

/// Every `ApplicationLayer` object in `value`, looking inside `List`s.
fn collect_application_layers(value: Value, out: &mut Vec<Value>) {
    match value.get("kind").and_then(Value::as_str) {
        Some(KIND) => out.push(value),
        Some(k) if k.ends_with("List") => {
            if let Some(Value::Array(items)) = value.get("items").cloned() {
                for item in items {
                    collect_application_layers(item, out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUIDE: &str = "\
apiVersion: operator.tigera.io/v1
kind: ApplicationLayer
metadata:
  name: tigera-secure
spec:
  # log collection is implemented via sidecar
  sidecarInjection: true
  logCollection:
    collectLogs: Enabled
    logIntervalSeconds: 5
    logRequestsPerInterval: -1
";

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap()
    }

    fn spec(log_collection: &str) -> String {
        format!(
            "apiVersion: operator.tigera.io/v1\nkind: ApplicationLayer\n\
             metadata: {{name: tigera-secure}}\nspec:\n  logCollection: {log_collection}\n"
        )
    }

    #[test]
    fn the_user_guide_example() {
        let s = parse_application_layer(GUIDE).unwrap();
        assert_eq!(
            s,
            Settings {
                collect_logs: Some(CollectLogs::Enabled),
                interval_seconds: Some(n(5)),
                requests_per_interval: Some(RequestLimit::Unlimited),
            }
        );
        assert_eq!(
            resolve(Settings::default(), Some(s)),
            LogCollection::default()
        );
    }

    #[test]
    fn values_from_the_file() {
        let s = parse_application_layer(&spec(
            "{collectLogs: Disabled, logIntervalSeconds: 30, logRequestsPerInterval: 100}",
        ))
        .unwrap();
        let c = resolve(Settings::default(), Some(s));
        assert_eq!(c.collect_logs, CollectLogs::Disabled);
        assert_eq!(c.interval(), Duration::from_secs(30));
        assert_eq!(c.requests_per_interval, RequestLimit::AtMost(n(100)));
        assert_eq!(c.requests_per_interval.max_records(), Some(100));
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file = parse_application_layer(&spec("{logIntervalSeconds: 30}")).unwrap();
        let flags = Settings {
            requests_per_interval: Some(RequestLimit::AtMost(n(1))),
            interval_seconds: Some(n(2)),
            ..Settings::default()
        };
        let c = resolve(flags, Some(file));
        assert_eq!(c.interval_seconds, n(2));
        assert_eq!(c.requests_per_interval, RequestLimit::AtMost(n(1)));
        assert_eq!(c.collect_logs, CollectLogs::Enabled, "the default");
        assert_eq!(
            resolve(Settings::default(), Some(file)).interval_seconds,
            n(30)
        );
    }

    #[test]
    fn missing_log_collection_means_the_defaults() {
        let text = "apiVersion: operator.tigera.io/v1\nkind: ApplicationLayer\n\
                    metadata: {name: tigera-secure}\nspec: {sidecarInjection: true}\n";
        assert_eq!(parse_application_layer(text).unwrap(), Settings::default());
    }

    #[test]
    fn invalid_values_are_rejected_naming_the_field() {
        for (field, expect) in [
            ("{logIntervalSeconds: 0}", "logIntervalSeconds"),
            ("{logIntervalSeconds: -5}", "logIntervalSeconds"),
            ("{logIntervalSeconds: 1.5}", "logIntervalSeconds"),
            ("{logIntervalSeconds: \"5\"}", "logIntervalSeconds"),
            ("{logRequestsPerInterval: 0}", "logRequestsPerInterval"),
            ("{logRequestsPerInterval: -2}", "logRequestsPerInterval"),
            ("{collectLogs: Yes}", "collectLogs"),
            ("{collectLogs: enabled}", "collectLogs"),
            ("{collectLogs: true}", "collectLogs"),
            ("{logIntervalSecond: 5}", "logIntervalSecond"),
            ("[1, 2]", "logCollection"),
        ] {
            let e = parse_application_layer(&spec(field)).unwrap_err();
            assert!(e.to_string().contains(expect), "{field}: {e}");
        }
    }

    #[test]
    fn the_file_must_hold_an_application_layer() {
        let e = parse_application_layer("apiVersion: v1\nkind: ConfigMap\n").unwrap_err();
        assert!(e.to_string().contains("no ApplicationLayer"), "{e}");
        let e = parse_application_layer(&GUIDE.replace("/v1", "/v2")).unwrap_err();
        assert!(e.to_string().contains("apiVersion"), "{e}");
        let e = parse_application_layer("kind: [unclosed\n").unwrap_err();
        assert!(e.to_string().starts_with("line "), "{e}");
    }

    #[test]
    fn several_objects_prefer_tigera_secure() {
        let other = GUIDE
            .replace("tigera-secure", "other")
            .replace("logIntervalSeconds: 5", "logIntervalSeconds: 9");
        let text = format!("{other}---\n{}", GUIDE.replace("Seconds: 5", "Seconds: 7"));
        let s = parse_application_layer(&text).unwrap();
        assert_eq!(s.interval_seconds, Some(n(7)));
        let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "operator.tigera.io/v1", "kind": "ApplicationLayer",
             "metadata": {"name": "x"}, "spec": {"logCollection": {"logIntervalSeconds": 3}}}]}"#;
        assert_eq!(
            parse_application_layer(list).unwrap().interval_seconds,
            Some(n(3))
        );
        let two_others = format!("{other}---\n{other}");
        assert!(parse_application_layer(&two_others).is_err());
    }

    #[test]
    fn aggregation_values_are_felixs() {
        let d = Aggregation::default();
        assert_eq!(
            (d.http_header_info, d.http_method, d.trim_url),
            (
                Inclusion::Exclude,
                Inclusion::Include,
                TrimUrl::IncludeFullUrl
            )
        );
        assert_eq!((d.num_url_path, d.url_char_limit), (5, 250));
        assert_eq!(LogCollection::default().aggregation, d);
        for (parse, include, exclude) in [
            (
                parse_http_header_info as fn(&str) -> Result<Inclusion, ConfigError>,
                "IncludeL7HTTPHeaderInfo",
                "ExcludeL7HTTPHeaderInfo",
            ),
            (
                parse_http_method,
                "IncludeL7HTTPMethod",
                "ExcludeL7HTTPMethod",
            ),
            (
                parse_service_info,
                "IncludeL7ServiceInfo",
                "ExcludeL7ServiceInfo",
            ),
            (
                parse_destination_info,
                "IncludeL7DestinationInfo",
                "ExcludeL7DestinationInfo",
            ),
            (
                parse_source_info,
                "IncludeL7SourceInfo",
                "ExcludeL7SourceInfo",
            ),
            (
                parse_response_code,
                "IncludeL7ResponseCode",
                "ExcludeL7ResponseCode",
            ),
        ] {
            assert_eq!(parse(include), Ok(Inclusion::Include));
            assert_eq!(parse(exclude), Ok(Inclusion::Exclude));
            let e = parse("Exclude").unwrap_err().to_string();
            assert!(
                e.contains(exclude) && e.contains("L7LogsFileAggregation"),
                "{e}"
            );
        }
        assert_eq!(
            parse_source_info("IncludeL7SourceInfoNoPort"),
            Ok(Inclusion::Include)
        );
        assert!(parse_http_method("ExcludeL7ResponseCode").is_err());
        assert_eq!(
            parse_trim_url("IncludeL7FullURL"),
            Ok(TrimUrl::IncludeFullUrl)
        );
        assert_eq!(parse_trim_url("TrimURLQuery"), Ok(TrimUrl::TrimQuery));
        assert_eq!(
            parse_trim_url("TrimURLQueryAndPath"),
            Ok(TrimUrl::TrimQueryAndPath)
        );
        assert_eq!(parse_trim_url("ExcludeL7URL"), Ok(TrimUrl::Exclude));
        assert!(parse_trim_url("IncludeL7FulURL").is_err());
        assert_eq!(parse_num_url_path("-1"), Ok(-1));
        assert_eq!(parse_num_url_path("0"), Ok(0));
        assert!(parse_num_url_path("five").is_err());
        assert_eq!(parse_url_char_limit("0"), Ok(0));
        assert!(parse_url_char_limit("-1").is_err());
    }

    #[test]
    fn flag_values() {
        assert_eq!(parse_collect_logs("Enabled"), Ok(CollectLogs::Enabled));
        assert_eq!(parse_collect_logs("disabled"), Ok(CollectLogs::Disabled));
        assert!(parse_collect_logs("on").is_err());
        assert_eq!(parse_interval("1"), Ok(n(1)));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("-1").is_err());
        assert!(parse_interval("5s").is_err());
        assert_eq!(parse_request_limit("-1"), Ok(RequestLimit::Unlimited));
        assert_eq!(parse_request_limit("1"), Ok(RequestLimit::AtMost(n(1))));
        assert!(parse_request_limit("0").is_err());
        assert!(parse_request_limit("-3").is_err());
        assert_eq!(RequestLimit::Unlimited.to_string(), "-1");
        assert_eq!(RequestLimit::Unlimited.max_records(), None);
    }
}
