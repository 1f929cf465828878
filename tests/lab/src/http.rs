//! HTTP for the end-to-end tests: a backend "pod" that answers HTTP/1.1 (keep-alive) and
//! records what it served, and a minimal client that speaks over one kept-alive connection.
//! The backend says `Server: backend`, so a response that says `server: envoy` came through the
//! proxy, whose `server_header_transformation: OVERWRITE` replaces it.

use std::{
    io::{BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex},
    thread,
};

use anyhow::{Context as _, Result, bail};

use crate::netns::Netns;

/// One request the backend served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Who connected to the backend.
    pub peer: SocketAddr,
    /// The User-Agent header, if any.
    pub user_agent: Option<String>,
}

/// The HTTP backend; stops accepting when dropped.
pub struct HttpBackend {
    listeners: Vec<Arc<TcpListener>>,
    served: Arc<Mutex<Vec<Served>>>,
}

impl HttpBackend {
    /// Serves on `addrs` inside `ns`. `GET /status/404` answers 404 (any code works), anything
    /// else 200.
    pub fn start(ns: &Netns, addrs: &[SocketAddr]) -> Result<Self> {
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut listeners = Vec::new();
        for &addr in addrs {
            let listener = Arc::new(
                ns.run(move || TcpListener::bind(addr))?
                    .with_context(|| format!("HTTP backend cannot listen on {addr}"))?,
            );
            let accept = Arc::clone(&listener);
            let log = Arc::clone(&served);
            thread::spawn(move || {
                while let Ok((stream, peer)) = accept.accept() {
                    let log = Arc::clone(&log);
                    thread::spawn(move || serve(stream, peer, &log));
                }
            });
            listeners.push(listener);
        }
        Ok(Self { listeners, served })
    }

    /// Every request served so far.
    pub fn served(&self) -> Vec<Served> {
        self.served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        for l in &self.listeners {
            // SAFETY: valid fd owned by the listener; wakes the blocked accept(2).
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

fn serve(stream: TcpStream, peer: SocketAddr, log: &Mutex<Vec<Served>>) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while let Ok(Some(request)) = read_head(&mut reader) {
        let (method, path) = {
            let mut parts = request.start.split_whitespace();
            (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            )
        };
        // Drain a request body so the next request on the connection parses.
        let mut body = vec![0u8; request.content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        log.lock().unwrap_or_else(|e| e.into_inner()).push(Served {
            method: method.clone(),
            path: path.clone(),
            peer,
            user_agent: request.header("user-agent").map(str::to_string),
        });
        let code: u16 = path
            .strip_prefix("/status/")
            .and_then(|c| c.parse().ok())
            .unwrap_or(200);
        let text = format!("hello from the backend; you are {}\n", peer.ip());
        let head = format!(
            "HTTP/1.1 {code} {}\r\nServer: backend\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n",
            if code == 200 { "OK" } else { "Status" },
            text.len()
        );
        let mut response = head.into_bytes();
        if method != "HEAD" {
            response.extend_from_slice(text.as_bytes());
        }
        if out.write_all(&response).is_err() {
            return;
        }
        if request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return;
        }
    }
}

/// A request or response head: start line and headers.
#[derive(Debug, Default)]
struct Head {
    start: String,
    headers: Vec<(String, String)>,
    content_length: usize,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one head; `None` at a clean end of stream.
fn read_head(reader: &mut impl std::io::BufRead) -> Result<Option<Head>> {
    let mut head = Head::default();
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    head.start = line.trim_end().to_string();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed inside a message head");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            head.headers
                .push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    head.content_length = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Some(head))
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl Response {
    /// The value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the proxy answered: `server: envoy`.
    pub fn via_envoy(&self) -> bool {
        self.header("server") == Some("envoy")
    }
}

/// One kept-alive HTTP/1.1 connection.
pub struct HttpConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

impl HttpConn {
    /// Wraps a connected stream (see [`crate::client::connect_stream`]); `host` goes in `Host:`.
    pub fn new(stream: TcpStream, host: &str) -> Result<Self> {
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            host: host.to_string(),
        })
    }

    /// Sends `method path` and reads the response; the connection stays open.
    pub fn request(&mut self, method: &str, path: &str) -> Result<Response> {
        // One write, as real clients do: `write!` on a bare stream would send each formatted
        // piece as its own segment, and Envoy's HTTP inspector, seeing only "GET", could send
        // the connection down its plain-TCP chain.
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: l7r-test/1\r\n\r\n",
            self.host
        );
        self.writer
            .write_all(head.as_bytes())
            .context("send request")?;
        let head = read_head(&mut self.reader)?.context("connection closed before a response")?;
        let status = head
            .start
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("bad status line {:?}", head.start))?;
        let mut body = vec![
            0u8;
            if method == "HEAD" {
                0
            } else {
                head.content_length
            }
        ];
        self.reader.read_exact(&mut body).context("read body")?;
        Ok(Response {
            status,
            headers: head
                .headers
                .into_iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v))
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}
