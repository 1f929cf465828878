//! A minimal client of Envoy's admin API (plain HTTP/1.1 on the node's loopback): the few
//! calls the readiness check and the drain make, without an HTTP client dependency.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// The admin API's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminResponse {
    /// The status code.
    pub status: u16,
    /// The body (the admin answers are small text or JSON).
    pub body: String,
}

/// The answers above this size are cut: the endpoints used here answer a few bytes.
const MAX_RESPONSE: usize = 1 << 20;

/// `method path` on the admin API at `admin`, read until the admin closes the connection.
/// Errors are strings naming the admin address, for the caller's message.
pub async fn request(admin: SocketAddr, method: &str, path: &str) -> Result<AdminResponse, String> {
    let fail = |e: std::io::Error| format!("admin {admin}: {e}");
    let mut stream = TcpStream::connect(admin).await.map_err(fail)?;
    // `Connection: close`: the answer ends where the stream does.
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: envoy-admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.map_err(fail)?;
    let mut raw = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.map_err(fail)?;
        if n == 0 || raw.len() >= MAX_RESPONSE {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    parse(&raw).ok_or_else(|| {
        format!(
            "admin {admin} answered {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(80)])
        )
    })
}

/// The status and body of a whole HTTP/1.1 response (Envoy's admin answers with a
/// `content-length`; chunked bodies are not decoded, the callers only look for lines in them).
fn parse(raw: &[u8]) -> Option<AdminResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(AdminResponse {
        status,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_parses_into_status_and_body() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\nDRAINING\n";
        assert_eq!(
            parse(raw),
            Some(AdminResponse {
                status: 503,
                body: "DRAINING\n".into()
            })
        );
        assert_eq!(parse(b"garbage"), None);
        assert_eq!(parse(b""), None);
    }

    #[tokio::test]
    async fn a_request_reaches_the_admin_and_reads_its_answer() {
        use tokio::net::TcpListener;
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = admin.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = admin.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nOK\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let got = request(addr, "POST", "/healthcheck/fail").await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.body, "OK\n");
        let sent = server.await.unwrap();
        assert!(
            sent.starts_with("POST /healthcheck/fail HTTP/1.1\r\n"),
            "{sent}"
        );
    }
}
