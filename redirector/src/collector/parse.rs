//! One line of Envoy's JSON access log (the `json_format` of `deploy/envoy.yaml`) as a typed
//! entry. Pure.
//!
//! The reader is lenient where Envoy's output varies and strict where a line would otherwise
//! be misread: numbers may come as JSON numbers or numeric strings, a value Envoy could not
//! fill may be `null`, `"-"` or absent; but a line that is not a JSON object, has no known
//! `type`, or holds a non-numeric duration or byte count is an error, which the caller counts
//! and skips.

use std::{fmt, net::SocketAddr};

use serde_json::{Map, Value};

/// What Envoy logged the line for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One HTTP request (the `http` filter chain).
    #[default]
    Http,
    /// One TCP connection that was not recognised as HTTP (the `tcp` chain).
    Tcp,
}

/// One access log entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// HTTP request or TCP connection.
    pub kind: Kind,
    /// `start_time`, as Envoy wrote it (`%START_TIME%`, RFC 3339 in UTC).
    pub start_time: Option<String>,
    /// `method`.
    pub method: Option<String>,
    /// `path` (the original path, query string included).
    pub path: Option<String>,
    /// `protocol`, such as `HTTP/1.1`.
    pub protocol: Option<String>,
    /// `response_code`; 0 when there was no response.
    pub response_code: u16,
    /// `response_flags` (Envoy's `%RESPONSE_FLAGS%`, such as `UF,URX`); `None` when Envoy
    /// logged `-` (no flags).
    pub response_flags: Option<String>,
    /// `duration`, in milliseconds.
    pub duration_ms: u64,
    /// `upstream_service_time` (the `x-envoy-upstream-service-time` header), in milliseconds.
    pub upstream_service_time_ms: Option<u64>,
    /// `bytes_received`: request body bytes from the client.
    pub bytes_received: u64,
    /// `bytes_sent`: response body bytes to the client.
    pub bytes_sent: u64,
    /// `user_agent`.
    pub user_agent: Option<String>,
    /// `authority` (the `Host` header).
    pub authority: Option<String>,
    /// `downstream_remote_address`: the client.
    pub source: Option<SocketAddr>,
    /// `downstream_local_address`: with the `original_dst` listener filter, the address and
    /// port the client connected to (a Service's ClusterIP, say).
    pub original_destination: Option<SocketAddr>,
}

/// Why a line is not an entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// No `type`, or one other than `http` and `tcp`.
    #[error("unknown entry type {0}")]
    UnknownType(String),
    /// A field that must be a number is something else.
    #[error("field {field} is not a number: {value}")]
    NotANumber {
        /// The field.
        field: &'static str,
        /// What it held.
        value: String,
    },
}

/// Parses one line (without its newline).
pub fn parse_line(line: &str) -> Result<Entry, ParseError> {
    let value: Value =
        serde_json::from_str(line.trim()).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(ParseError::NotAnObject);
    };
    let kind = match fields.get("type") {
        Some(Value::String(t)) if t == "http" => Kind::Http,
        Some(Value::String(t)) if t == "tcp" => Kind::Tcp,
        other => {
            return Err(ParseError::UnknownType(
                other.map_or_else(|| "(none)".to_string(), Value::to_string),
            ));
        }
    };
    let f = Fields(&fields);
    Ok(Entry {
        kind,
        start_time: f.text("start_time"),
        method: f.text("method"),
        path: f.text("path"),
        protocol: f.text("protocol"),
        response_code: f
            .number("response_code")?
            .map_or(Ok(0), u16::try_from)
            .map_err(|_| ParseError::NotANumber {
                field: "response_code",
                value: f.raw("response_code"),
            })?,
        response_flags: f.text("response_flags"),
        duration_ms: f.number("duration")?.unwrap_or(0),
        upstream_service_time_ms: f.number("upstream_service_time")?,
        bytes_received: f.number("bytes_received")?.unwrap_or(0),
        bytes_sent: f.number("bytes_sent")?.unwrap_or(0),
        user_agent: f.text("user_agent"),
        authority: f.text("authority"),
        source: f.address("downstream_remote_address"),
        original_destination: f.address("downstream_local_address"),
    })
}

/// Typed access to an entry's fields.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    /// A string field; `null`, `"-"`, empty or absent: `None`.
    fn text(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            Value::String(s) if s.is_empty() || s == "-" => None,
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// A non-negative integer field, as a number or a numeric string; `null`, `"-"`, empty
    /// or absent: `None`.
    fn number(&self, name: &'static str) -> Result<Option<u64>, ParseError> {
        let bad = || ParseError::NotANumber {
            field: name,
            value: self.raw(name),
        };
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(bad),
            Some(Value::String(s)) if s.is_empty() || s == "-" => Ok(None),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad()),
            Some(_) => Err(bad()),
        }
    }

    /// An `ip:port` (or `[ip6]:port`) field; anything else (a Unix socket path): `None`.
    fn address(&self, name: &str) -> Option<SocketAddr> {
        self.text(name)?.parse().ok()
    }

    fn raw(&self, name: &str) -> String {
        self.0.get(name).map_or_else(String::new, Value::to_string)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as Envoy 1.40 writes it with `deploy/envoy.yaml`.
    const HTTP: &str = r#"{"type":"http","start_time":"2025-01-01T10:00:00.123Z","duration":3,"upstream_service_time":"1","method":"GET","path":"/a?x=1","protocol":"HTTP/1.1","response_code":200,"response_flags":"-","bytes_received":0,"bytes_sent":43,"user_agent":"l7r-test/1","authority":"web.shop","request_id":"0b6c","downstream_remote_address":"10.77.1.2:43210","downstream_local_address":"10.96.0.10:80","upstream_host":"10.96.0.10:80"}"#;

    #[test]
    fn an_http_line() {
        let e = parse_line(HTTP).unwrap();
        assert_eq!(e.kind, Kind::Http);
        assert_eq!(e.method.as_deref(), Some("GET"));
        assert_eq!(e.path.as_deref(), Some("/a?x=1"));
        assert_eq!(e.protocol.as_deref(), Some("HTTP/1.1"));
        assert_eq!(e.response_code, 200);
        assert_eq!(e.response_flags, None, "`-`: no flags");
        assert_eq!(e.duration_ms, 3);
        assert_eq!(e.upstream_service_time_ms, Some(1));
        assert_eq!((e.bytes_received, e.bytes_sent), (0, 43));
        assert_eq!(e.user_agent.as_deref(), Some("l7r-test/1"));
        assert_eq!(e.authority.as_deref(), Some("web.shop"));
        assert_eq!(e.source, Some("10.77.1.2:43210".parse().unwrap()));
        assert_eq!(
            e.original_destination,
            Some("10.96.0.10:80".parse().unwrap())
        );
    }

    #[test]
    fn a_tcp_line_with_nulls() {
        let line = r#"{"type":"tcp","duration":120,"upstream_service_time":null,"method":null,"path":null,"protocol":null,"response_code":0,"bytes_received":517,"bytes_sent":4096,"user_agent":null,"downstream_remote_address":"[fd77:1::2]:5000","downstream_local_address":"[fd00::10]:443"}"#;
        let e = parse_line(line).unwrap();
        assert_eq!(e.kind, Kind::Tcp);
        assert_eq!(e.method, None);
        assert_eq!(e.upstream_service_time_ms, None);
        assert_eq!(e.response_code, 0);
        assert_eq!(e.source, Some("[fd77:1::2]:5000".parse().unwrap()));
        assert_eq!(e.original_destination.map(|a| a.port()), Some(443));
    }

    #[test]
    fn lenient_where_envoy_varies() {
        let line = r#"{"type":"http","duration":"7","response_code":"503","response_flags":"UF,URX","bytes_sent":"-","user_agent":"-","downstream_remote_address":"/run/envoy.sock"}"#;
        let e = parse_line(line).unwrap();
        assert_eq!(e.duration_ms, 7);
        assert_eq!(e.response_code, 503);
        assert_eq!(e.response_flags.as_deref(), Some("UF,URX"));
        assert_eq!(e.bytes_sent, 0);
        assert_eq!(e.user_agent, None);
        assert_eq!(e.source, None, "a Unix socket has no address");
    }

    #[test]
    fn broken_lines_are_errors() {
        assert!(matches!(parse_line("garbage"), Err(ParseError::NotJson(_))));
        assert!(matches!(
            parse_line(r#"{"type":"http""#),
            Err(ParseError::NotJson(_))
        ));
        assert_eq!(parse_line("[1]"), Err(ParseError::NotAnObject));
        assert!(matches!(parse_line("{}"), Err(ParseError::UnknownType(_))));
        assert!(matches!(
            parse_line(r#"{"type":"udp"}"#),
            Err(ParseError::UnknownType(_))
        ));
        assert!(matches!(
            parse_line(r#"{"type":"http","duration":"slow"}"#),
            Err(ParseError::NotANumber {
                field: "duration",
                ..
            })
        ));
        assert!(matches!(
            parse_line(r#"{"type":"http","response_code":70000}"#),
            Err(ParseError::NotANumber {
                field: "response_code",
                ..
            })
        ));
        assert!(parse_line(r#"{"type":"http","bytes_sent":-1}"#).is_err());
    }
}
