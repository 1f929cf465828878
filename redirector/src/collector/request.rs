//! From one access log entry to what it adds to the aggregation: its [`Key`] (names from the
//! [`NameIndex`], method, URL path, response code, user agent, protocol type) and its
//! [`Measure`]. Pure.
//!
//! - `url` is the request's authority and target as the reference product builds it
//!   (`web.shop/users/1?x=1`; a CONNECT's is its authority alone): the aggregation trims it
//!   ([`super::config::Aggregation`]; by default to 5 path segments and 250 characters, without
//!   the query string, whose values, tokens and identifiers, would both split records without
//!   end and have no place in logs).
//! - `protocol` says what the request or connection carried: `grpc` (content type
//!   `application/grpc`), `websocket` (an `upgrade: websocket` request), `connect` (a CONNECT
//!   tunnel), `http`; `tls` (passed through, `tls_sni` the server name it asked for) or `tcp`.
//! - `grpc_status` is a gRPC call's status (`0` is OK; a failed call still answers HTTP 200),
//!   `-` for anything else.
//! - `type` is the protocol Envoy saw, lower-cased (`http/1.1`, `http/2`); a connection that
//!   was not HTTP is `tcp`, with method, URL, user agent and response code `-`.
//! - `response_code` is a string, as the reference product stores it (`"200"`; `"0"` when
//!   Envoy had no response to give).
//! - Latency is `duration − upstream_service_time` (never below 0), only when Envoy knows the
//!   upstream's time.

use super::{
    aggregate::{Key, Measure, NONE},
    names::NameIndex,
    parse::{Entry, Kind},
};

/// The key and measure of one entry.
pub fn request(entry: &Entry, names: &NameIndex) -> (Key, Measure) {
    let source = names.source(entry.source.map(|a| a.ip()));
    let destination = names.destination(entry.original_destination);
    let (service_name, service_namespace, service_port) = match destination.service {
        Some(s) => (s.service.name, s.service.namespace, s.port),
        None => (NONE.to_string(), NONE.to_string(), 0),
    };
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| NONE.to_string());
    let http = entry.kind == Kind::Http;
    let connect = http && entry.method.as_deref() == Some("CONNECT");
    let key = Key {
        src_name_aggr: source.name_aggr,
        src_namespace: source.namespace,
        src_type: source.kind.as_str().to_string(),
        dest_name_aggr: destination.endpoint.name_aggr,
        dest_namespace: destination.endpoint.namespace,
        dest_type: destination.endpoint.kind.as_str().to_string(),
        dest_service_name: service_name,
        dest_service_namespace: service_namespace,
        dest_service_port: service_port,
        dest_port_num: entry.original_destination.map_or(0, |a| a.port()),
        method: if http {
            text(&entry.method)
        } else {
            NONE.into()
        },
        url: match (http, &entry.authority, &entry.path) {
            (false, _, _) | (true, None, None) => NONE.into(),
            (true, authority, path) => format!(
                "{}{}",
                authority.as_deref().unwrap_or_default(),
                path.as_deref().unwrap_or_default()
            ),
        },
        response_code: if http {
            entry.response_code.to_string()
        } else {
            NONE.into()
        },
        user_agent: if http {
            text(&entry.user_agent)
        } else {
            NONE.into()
        },
        protocol_type: match (entry.kind, &entry.protocol) {
            (Kind::Tcp, _) => Kind::Tcp.to_string(),
            (Kind::Http, Some(p)) => p.to_ascii_lowercase(),
            (Kind::Http, None) => NONE.into(),
        },
        protocol: match entry.kind {
            Kind::Tcp if entry.tls => "tls",
            Kind::Tcp => "tcp",
            Kind::Http if connect => "connect",
            Kind::Http if entry.is_grpc() => "grpc",
            Kind::Http
                if entry
                    .upgrade
                    .as_deref()
                    .is_some_and(|u| u.eq_ignore_ascii_case("websocket")) =>
            {
                "websocket"
            }
            Kind::Http => "http",
        }
        .into(),
        grpc_status: entry
            .grpc_call_status()
            .map_or_else(|| NONE.to_string(), |s| s.to_string()),
        tls_sni: text(&entry.requested_server_name),
    };
    let measure = Measure {
        duration_ms: entry.duration_ms,
        latency_ms: entry
            .upstream_service_time_ms
            .map(|upstream| entry.duration_ms.saturating_sub(upstream)),
        bytes_in: entry.bytes_received,
        bytes_out: entry.bytes_sent,
    };
    (key, measure)
}

/// The path of a request target, without query string or fragment.
pub fn url_path(target: &str) -> &str {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    &target[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        collector::parse::parse_line,
        k8s::{
            sources::{Kinds, manifests},
            store::{Change, ObjectStore},
        },
    };

    const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8000}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.77.2.2]}]
ports: [{port: 8000}]
---
apiVersion: v1
kind: Pod
metadata:
  name: client-6b8d5-x7k2p
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: client-6b8d5, uid: u1, controller: true}]
status: {podIP: 10.77.1.2}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-5f7c9-abcde
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5f7c9, uid: u2, controller: true}]
status: {podIP: 10.77.2.2}
";

    fn names() -> NameIndex {
        let m = manifests::parse(SERVICES, Kinds::COLLECTOR).unwrap();
        let mut store = ObjectStore::default();
        store.apply(Change::ServicesReset(m.services));
        store.apply(Change::SlicesReset(m.slices));
        store.apply(Change::PodsReset(m.pods));
        NameIndex::build(&store, &["10.77.1.1".parse().unwrap()])
    }

    #[test]
    fn an_http_request_through_a_service() {
        let line = r#"{"type":"http","duration":9,"upstream_service_time":"2","method":"GET","path":"/status/404?debug=1#x","protocol":"HTTP/1.1","response_code":404,"bytes_received":12,"bytes_sent":34,"user_agent":"curl/8","authority":"web.shop","downstream_remote_address":"10.77.1.2:40000","downstream_local_address":"10.96.0.10:80"}"#;
        let (key, measure) = request(&parse_line(line).unwrap(), &names());
        assert_eq!(
            key,
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
                url: "web.shop/status/404?debug=1#x".into(),
                response_code: "404".into(),
                user_agent: "curl/8".into(),
                protocol_type: "http/1.1".into(),
                protocol: "http".into(),
                grpc_status: "-".into(),
                tls_sni: "-".into(),
            }
        );
        assert_eq!(
            measure,
            Measure {
                duration_ms: 9,
                latency_ms: Some(7),
                bytes_in: 12,
                bytes_out: 34,
            }
        );
    }

    #[test]
    fn a_tcp_connection_from_the_host_to_nowhere_known() {
        let line = r#"{"type":"tcp","duration":100,"upstream_service_time":null,"method":null,"path":null,"protocol":null,"response_code":0,"bytes_received":5,"bytes_sent":6,"user_agent":null,"downstream_remote_address":"10.77.1.1:5000","downstream_local_address":"10.1.2.3:443"}"#;
        let (key, measure) = request(&parse_line(line).unwrap(), &names());
        assert_eq!(
            (
                key.src_name_aggr.as_str(),
                key.src_namespace.as_str(),
                key.src_type.as_str()
            ),
            ("pvt", "-", "net")
        );
        assert_eq!(
            (
                key.dest_name_aggr.as_str(),
                key.dest_type.as_str(),
                key.dest_service_name.as_str()
            ),
            ("-", "-", "-")
        );
        assert_eq!((key.dest_service_port, key.dest_port_num), (0, 443));
        assert_eq!(
            (
                key.method.as_str(),
                key.url.as_str(),
                key.response_code.as_str(),
                key.protocol_type.as_str()
            ),
            ("-", "-", "-", "tcp")
        );
        assert_eq!(measure.latency_ms, None);
    }

    #[test]
    fn latency_never_goes_below_zero() {
        let line =
            r#"{"type":"http","duration":1,"upstream_service_time":"3","protocol":"HTTP/2"}"#;
        let (key, measure) = request(&parse_line(line).unwrap(), &names());
        assert_eq!(measure.latency_ms, Some(0));
        assert_eq!(key.protocol_type, "http/2");
        assert_eq!(
            (key.method.as_str(), key.url.as_str(), key.src_type.as_str()),
            ("-", "-", "-")
        );
    }

    #[test]
    fn grpc_websocket_connect_and_tls() {
        let n = names();
        let key = |line: &str| request(&parse_line(line).unwrap(), &n).0;
        let grpc = key(
            r#"{"type":"http","method":"POST","path":"/l7r.Echo/Fail","authority":"10.96.0.10:80","protocol":"HTTP/2","response_code":200,"content_type":"application/grpc","grpc_status":5}"#,
        );
        assert_eq!(
            (
                grpc.protocol.as_str(),
                grpc.response_code.as_str(),
                grpc.grpc_status.as_str(),
                grpc.url.as_str()
            ),
            ("grpc", "200", "5", "10.96.0.10:80/l7r.Echo/Fail")
        );
        let ws = key(
            r#"{"type":"http","method":"GET","path":"/chat","response_code":101,"upgrade":"WebSocket","grpc_status":"2"}"#,
        );
        assert_eq!(
            (
                ws.protocol.as_str(),
                ws.grpc_status.as_str(),
                ws.url.as_str()
            ),
            ("websocket", "-", "/chat")
        );
        let connect = key(
            r#"{"type":"http","method":"CONNECT","authority":"10.77.2.2:8000","response_code":200}"#,
        );
        assert_eq!(
            (
                connect.protocol.as_str(),
                connect.url.as_str(),
                connect.method.as_str()
            ),
            ("connect", "10.77.2.2:8000", "CONNECT")
        );
        let tls = key(
            r#"{"type":"tls","requested_server_name":"secure.shop","downstream_local_address":"10.96.0.10:443"}"#,
        );
        assert_eq!(
            (
                tls.protocol.as_str(),
                tls.tls_sni.as_str(),
                tls.protocol_type.as_str(),
                tls.url.as_str()
            ),
            ("tls", "secure.shop", "tcp", "-")
        );
        let plain = key(r#"{"type":"tcp"}"#);
        assert_eq!(
            (plain.protocol.as_str(), plain.tls_sni.as_str()),
            ("tcp", "-")
        );
    }

    #[test]
    fn url_paths() {
        assert_eq!(url_path("/a/b?x=1&y=2"), "/a/b");
        assert_eq!(url_path("/a#frag"), "/a");
        assert_eq!(url_path("/"), "/");
        assert_eq!(url_path("*"), "*");
    }
}
