//! One line of Envoy's JSON access log (the `json_format` of `deploy/envoy.yaml`) as a typed
//! entry. Pure.
//!
//! The reader is lenient where Envoy's output varies and strict where a line would otherwise
//! be misread: numbers may come as JSON numbers or numeric strings, a value Envoy could not
//! fill may be `null`, `"-"` or absent; but a line that is not a JSON object, has no known
//! `type`, or holds a non-numeric duration or byte count is an error, which the caller counts
//! and skips.
//!
//! Speed: the collector parses every request's line, so the line is read straight into a short
//! list of fields that borrow their text from it (strings without escapes, which is all of
//! them in practice), not into a `serde_json::Value` that allocates every key and value.

use std::{borrow::Cow, fmt, net::SocketAddr};

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// What Envoy logged the line for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One HTTP request (the `http` filter chain).
    #[default]
    Http,
    /// One TCP connection that was not recognised as HTTP (the `tcp` chain, and the `tls`
    /// chain, whose lines say `"type": "tls"` and set [`Entry::tls`]).
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
    /// A TLS connection passed through untouched (the `tls` chain).
    pub tls: bool,
    /// `requested_server_name`: the SNI a TLS client sent.
    pub requested_server_name: Option<String>,
    /// `content_type`: the request's `content-type` (`application/grpc…` for gRPC).
    pub content_type: Option<String>,
    /// `grpc_status`: Envoy's `%GRPC_STATUS(NUMBER)%`, which Envoy also derives from the
    /// HTTP status of requests that are not gRPC: see [`Entry::grpc_call_status`].
    pub grpc_status: Option<u64>,
    /// `upgrade`: the request's `upgrade` header (`websocket`).
    pub upgrade: Option<String>,
}

impl Entry {
    /// Whether the request is a gRPC call (its content type is `application/grpc`, or
    /// `application/grpc+proto` and the like).
    pub fn is_grpc(&self) -> bool {
        self.content_type.as_deref().is_some_and(|t| {
            t.get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
        })
    }

    /// The gRPC status of a gRPC call, `None` for anything else.
    pub fn grpc_call_status(&self) -> Option<u64> {
        self.grpc_status.filter(|_| self.is_grpc())
    }
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
    let f = Fields::of(line.trim())
        .map_err(|e| ParseError::NotJson(e.to_string()))?
        .ok_or(ParseError::NotAnObject)?;
    let kind = match f.str("type") {
        Some("http") => Kind::Http,
        Some("tcp" | "tls") => Kind::Tcp,
        _ => {
            return Err(ParseError::UnknownType(match f.get("type") {
                Some(_) => f.raw("type"),
                None => "(none)".to_string(),
            }));
        }
    };
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
        tls: f.str("type") == Some("tls"),
        requested_server_name: f.text("requested_server_name"),
        content_type: f.text("content_type"),
        grpc_status: f.number("grpc_status")?,
        upgrade: f.text("upgrade"),
    })
}

/// One value of a line, borrowed from it where it can be.
#[derive(Debug)]
enum Raw<'a> {
    Str(Cow<'a, str>),
    Num(Number),
    Null,
    /// A boolean, array or object: nothing Envoy writes for the fields read here.
    Other(Value),
}

impl fmt::Display for Raw<'_> {
    /// As JSON, the way `serde_json::Value` shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Str(s) => write!(f, "{}", Value::String(s.to_string())),
            Self::Num(n) => write!(f, "{n}"),
            Self::Null => f.write_str("null"),
            Self::Other(v) => write!(f, "{v}"),
        }
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Raw::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Raw::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Raw::Str(Cow::Owned(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Raw::Num(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Raw::Num(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // JSON has no NaN or infinity, so this is always a number.
        Ok(Number::from_f64(v).map_or(Raw::Null, Raw::Num))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Raw::Other(Value::Bool(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Raw::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Value::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Raw::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Value::deserialize(de::value::MapAccessDeserializer::new(map)).map(Raw::Other)
    }
}

impl<'de> Deserialize<'de> for Raw<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

/// A key, borrowed where it can be.
struct Key<'a>(Cow<'a, str>);

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

/// The fields of a line's object, in order; `None` for JSON that is not an object.
struct LineVisitor;

impl<'de> Visitor<'de> for LineVisitor {
    type Value = Option<Vec<(Cow<'de, str>, Raw<'de>)>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(24);
        while let Some(Key(key)) = map.next_key()? {
            out.push((key, map.next_value()?));
        }
        Ok(Some(out))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Typed access to an entry's fields.
struct Fields<'a>(Vec<(Cow<'a, str>, Raw<'a>)>);

impl<'a> Fields<'a> {
    /// Reads `line`'s JSON: an error when it is not JSON, `None` when it is not an object.
    fn of(line: &'a str) -> Result<Option<Self>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(line);
        let fields = de.deserialize_any(LineVisitor)?;
        de.end()?;
        Ok(fields.map(Self))
    }

    /// A field's value; of a key given twice, the last (as `serde_json::Value` keeps it).
    fn get(&self, name: &str) -> Option<&Raw<'a>> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// A string field as it is, `None` for anything else.
    fn str(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            Raw::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A string field; `null`, `"-"`, empty or absent: `None`.
    fn text(&self, name: &str) -> Option<String> {
        match self.get(name)? {
            Raw::Str(s) if s.is_empty() || s == "-" => None,
            Raw::Str(s) => Some(s.to_string()),
            Raw::Null => None,
            Raw::Num(n) => Some(n.to_string()),
            Raw::Other(v) => Some(v.to_string()),
        }
    }

    /// A non-negative integer field, as a number or a numeric string; `null`, `"-"`, empty
    /// or absent: `None`.
    fn number(&self, name: &'static str) -> Result<Option<u64>, ParseError> {
        let bad = || ParseError::NotANumber {
            field: name,
            value: self.raw(name),
        };
        match self.get(name) {
            None | Some(Raw::Null) => Ok(None),
            Some(Raw::Num(n)) => n.as_u64().map(Some).ok_or_else(bad),
            Some(Raw::Str(s)) if s.is_empty() || s == "-" => Ok(None),
            Some(Raw::Str(s)) => s.trim().parse().map(Some).map_err(|_| bad()),
            Some(Raw::Other(_)) => Err(bad()),
        }
    }

    /// An `ip:port` (or `[ip6]:port`) field; anything else (a Unix socket path): `None`.
    fn address(&self, name: &str) -> Option<SocketAddr> {
        match self.get(name)? {
            Raw::Str(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A field as JSON text, empty when absent.
    fn raw(&self, name: &str) -> String {
        self.get(name).map_or_else(String::new, Raw::to_string)
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
    fn grpc_tls_and_upgrade_fields() {
        let grpc = r#"{"type":"http","method":"POST","path":"/l7r.Echo/Fail","protocol":"HTTP/2","response_code":200,"content_type":"application/grpc","grpc_status":"5"}"#;
        let e = parse_line(grpc).unwrap();
        assert!(e.is_grpc());
        assert_eq!((e.response_code, e.grpc_call_status()), (200, Some(5)));
        // Envoy derives a gRPC status from the HTTP status of any request: only a gRPC call
        // has one.
        let plain =
            r#"{"type":"http","response_code":200,"content_type":"text/plain","grpc_status":"0"}"#;
        assert_eq!(parse_line(plain).unwrap().grpc_call_status(), None);
        let ws = r#"{"type":"http","method":"GET","response_code":101,"upgrade":"websocket"}"#;
        assert_eq!(
            parse_line(ws).unwrap().upgrade.as_deref(),
            Some("websocket")
        );
        let tls = r#"{"type":"tls","duration":5,"requested_server_name":"secure.shop","bytes_received":517}"#;
        let e = parse_line(tls).unwrap();
        assert_eq!(e.kind, Kind::Tcp);
        assert!(e.tls);
        assert_eq!(e.requested_server_name.as_deref(), Some("secure.shop"));
        assert!(!parse_line(HTTP).unwrap().tls);
    }

    #[test]
    fn escapes_duplicates_and_nested_values_read_as_serde_json_would() {
        let line = r#"{"type":"http","path":"/a\"b\u00e9","path2":{"x":[1,2]},"method":"GET","method":"PUT","user_agent":true,"authority":12}"#;
        let e = parse_line(line).unwrap();
        assert_eq!(e.path.as_deref(), Some("/a\"bé"), "escapes are decoded");
        assert_eq!(
            e.method.as_deref(),
            Some("PUT"),
            "the last of a key given twice"
        );
        assert_eq!(e.user_agent.as_deref(), Some("true"));
        assert_eq!(e.authority.as_deref(), Some("12"));
        assert!(matches!(
            parse_line(r#"{"type":"http","duration":1.5}"#),
            Err(ParseError::NotANumber { field: "duration", value }) if value == "1.5"
        ));
        assert!(matches!(
            parse_line(r#"{"type":"http","duration":[1]}"#),
            Err(ParseError::NotANumber { field: "duration", value }) if value == "[1]"
        ));
        assert_eq!(
            parse_line(r#"{"type":7}"#),
            Err(ParseError::UnknownType("7".into()))
        );
        assert_eq!(
            parse_line(r#"{"type":"udp"}"#),
            Err(ParseError::UnknownType("\"udp\"".into()))
        );
        assert_eq!(parse_line("42"), Err(ParseError::NotAnObject));
        assert_eq!(parse_line(r#""text""#), Err(ParseError::NotAnObject));
        assert!(matches!(parse_line("{} {}"), Err(ParseError::NotJson(_))));
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
